/**
 * `npm run bench`: every benchmark, one after another, each in its own process.
 * `npm run bench -- overhead batch` runs only those; `--quick` is passed through.
 */
import { spawnSync } from "node:child_process"
import { readdirSync } from "node:fs"
import { fileURLToPath } from "node:url"

const dir = fileURLToPath(new URL(".", import.meta.url))
const args = process.argv.slice(2)
const flags = args.filter((a) => a.startsWith("--"))
const wanted = args.filter((a) => !a.startsWith("--"))
const all = readdirSync(dir)
  .filter((f) => f.endsWith(".ts") && f !== "run.ts" && f !== "util.ts")
  .map((f) => f.replace(/\.ts$/, ""))
  .sort()
const selected = wanted.length > 0 ? all.filter((name) => wanted.includes(name)) : all

let failed = 0
for (const name of selected) {
  console.log(`\n=== bench/${name}.ts ${flags.join(" ")}`)
  const result = spawnSync(process.execPath, ["--import", "tsx", `${dir}${name}.ts`, ...flags], { stdio: "inherit" })
  if (result.status !== 0) {
    failed++
    console.log(`bench/${name}.ts exited with ${result.status}`)
  }
}
process.exit(failed === 0 ? 0 : 1)
