/**
 * `npm run bench`: every benchmark, one after another, each in its own process.
 * `npm run bench -- overhead batch` runs only those; `--quick` (and `--only C` for
 * bench/batch.ts) is passed through.
 *
 * Each benchmark is bundled with esbuild first (`.cache/bench/<name>.mjs`, dependencies left
 * external) and run with plain node: tsx's transform wraps every closure of this repository's
 * code in a `__name` call (keepNames), which costs on hot paths and would be measured as ours;
 * a user runs the compiled package, without it.
 */
import { spawnSync } from "node:child_process"
import { mkdirSync, readdirSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { buildSync } from "esbuild"

const dir = fileURLToPath(new URL(".", import.meta.url))
const out = fileURLToPath(new URL("../.cache/bench/", import.meta.url))
const args = process.argv.slice(2)
// Flags pass through to every benchmark; `--only X` (bench/batch.ts) takes a value.
const valued = new Set(["--only"])
const flags: Array<string> = []
const wanted: Array<string> = []
for (let i = 0; i < args.length; i++) {
  const arg = args[i]!
  if (!arg.startsWith("--")) wanted.push(arg)
  else {
    flags.push(arg)
    if (valued.has(arg) && i + 1 < args.length) flags.push(args[++i]!)
  }
}
const all = readdirSync(dir)
  .filter((f) => f.endsWith(".ts") && f !== "run.ts" && f !== "util.ts")
  .map((f) => f.replace(/\.ts$/, ""))
  .sort()
const selected = wanted.length > 0 ? all.filter((name) => wanted.includes(name)) : all

mkdirSync(out, { recursive: true })
let failed = 0
for (const name of selected) {
  console.log(`\n=== bench/${name}.ts ${flags.join(" ")}`)
  const bundle = `${out}${name}.mjs`
  buildSync({
    entryPoints: [`${dir}${name}.ts`],
    outfile: bundle,
    bundle: true,
    packages: "external",
    platform: "node",
    format: "esm",
    target: "node22",
    logLevel: "warning"
  })
  const result = spawnSync(process.execPath, ["--expose-gc", bundle, ...flags], { stdio: "inherit" })
  if (result.status !== 0) {
    failed++
    console.log(`bench/${name}.ts exited with ${result.status}`)
  }
}
process.exit(failed === 0 ? 0 : 1)
