/**
 * The package as a user installs it (issue 14): install size, `import("effect-orchestra")`
 * time and `orchestra --help` time, without and with the optional peers, in the consumer
 * project of test/consumer/run.mjs (packed from this checkout).
 *
 *   npm run bench -- package            pack, install, measure (median of 7 runs each)
 *   npm run bench -- package --quick    3 runs each
 */
import { spawnSync } from "node:child_process"
import { cpSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { loadavg, tmpdir } from "node:os"
import { join } from "node:path"
import { median, printTable, repoRoot } from "./util.js"

const root = repoRoot(import.meta.url)
const runs = process.argv.includes("--quick") ? 3 : 7

const sh = (cmd: string, args: ReadonlyArray<string>, cwd: string) => {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8" })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed:\n${r.stdout}${r.stderr}`)
  return r.stdout
}

const duMb = (dir: string): number => Number(sh("du", ["-sk", join(dir, "node_modules")], dir).split("\t")[0]) / 1024

const timeMs = (args: ReadonlyArray<string>, cwd: string): number => {
  const samples: Array<number> = []
  for (let i = 0; i < runs; i++) {
    const start = performance.now()
    sh(process.execPath, args, cwd)
    samples.push(performance.now() - start)
  }
  return median(samples)
}

const bare = mkdtempSync(join(tmpdir(), "orchestra-pkg-"))
sh(process.execPath, [join(root, "test/consumer/run.mjs"), "--dir", bare], root)
const withPeers = mkdtempSync(join(tmpdir(), "orchestra-pkg-peers-"))
cpSync(bare, withPeers, { recursive: true, verbatimSymlinks: true })
// As the README says: sharp 0.33 ships prebuilt binaries (transformers.js asks for ^0.32, whose install script downloads one).
const manifest = JSON.parse(readFileSync(join(withPeers, "package.json"), "utf8"))
writeFileSync(join(withPeers, "package.json"), JSON.stringify({ ...manifest, overrides: { sharp: "0.33.5" } }, null, 2))
sh("npm", ["install", "--no-audit", "--no-fund", "@xenova/transformers@^2.17.2"], withPeers)
if (!existsSync(join(withPeers, "node_modules/@xenova/transformers"))) throw new Error("peer not installed")

const importArgs = ["-e", 'import("effect-orchestra").then(() => {})']
const helpArgs = [join("node_modules", ".bin", "orchestra"), "--help"]
const rows = [bare, withPeers].map((dir, i) => [
  i === 0 ? "effect-orchestra + effect" : "+ @xenova/transformers (optional peer)",
  duMb(dir).toFixed(0),
  timeMs(importArgs, dir).toFixed(0),
  timeMs(helpArgs, dir).toFixed(0)
])
const nodeOnly = timeMs(["-e", "0"], bare)
console.log(
  `node ${process.version}, load average ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`
)
printTable(
  `The installed package (median of ${runs} runs, wall time; \`node -e 0\` alone: ${nodeOnly.toFixed(0)} ms)`,
  ["install", "node_modules MB", 'import("effect-orchestra") ms', "orchestra --help ms"],
  rows
)
