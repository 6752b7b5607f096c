/**
 * No entry point makes a V8 map at each call.
 *
 * A generator function (or a class) made inside a function that runs per call gets a map of its
 * own when first called, allocated in the old generation; the dead map keeps the function's
 * closure, and so the call's objects, through every young collection until a full one. In the
 * gateway this was most of what each scavenge copied (its p99), in pipelines 4 MB a scavenge;
 * see docs/benchmarks/gateway.md. `test/fixtures/maps-driver.ts` runs each entry point `CALLS`
 * times under `node --log-maps` between two markers, and this counts the `InitialMap` events
 * each one logged: one made per call shows as `CALLS` or more.
 */
import { spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { assert, describe, it } from "@effect/vitest"

const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href
const DRIVER = fileURLToPath(new URL("fixtures/maps-driver.ts", import.meta.url))
const CALLS = 100
/** Maps an entry point may make while it runs CALLS times: what a first use makes lazily, never one a call. */
const ALLOWED = CALLS / 4
const ENTRIES = [
  "executor_execute",
  "executor_stream",
  "executor_embed",
  "router_execute",
  "router_stream",
  "router_embed",
  "router_hedge",
  "batch_run",
  "pipeline_run",
  "facade_execute",
  "facade_stream"
]

/** `InitialMap` events between the markers `Marker_<entry>_start` and `_end`, by entry. */
const countByEntry = (log: string): ReadonlyMap<string, number> => {
  const counts = new Map<string, number>()
  let current: string | undefined
  for (const line of log.split("\n")) {
    if (!line.startsWith("map,InitialMap,")) continue
    const name = line.slice(line.lastIndexOf(",") + 1)
    const marker = /^Marker_(\w+)_(start|end)$/.exec(name)
    if (marker !== null) {
      current = marker[2] === "start" ? marker[1] : undefined
      if (current !== undefined) counts.set(current, 0)
    } else if (current !== undefined) {
      counts.set(current, counts.get(current)! + 1)
    }
  }
  return counts
}

const runDriver = (logfile: string) =>
  new Promise<{ readonly code: number | null; readonly output: string }>((resolve) => {
    const child = spawn(
      process.execPath,
      ["--import", TSX, "--log-maps", "--no-logfile-per-isolate", `--logfile=${logfile}`, DRIVER, String(CALLS)],
      { stdio: ["ignore", "pipe", "pipe"] }
    )
    let output = ""
    const keep = (chunk: Buffer) => {
      if (output.length < 100_000) output += chunk.toString("utf8")
    }
    child.stdout.on("data", keep)
    child.stderr.on("data", keep)
    child.on("close", (code) => resolve({ code, output }))
  })

describe("V8 maps made per call", () => {
  it("no entry point makes a map at each call (a generator or class made per call)", { timeout: 120_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "orchestra-maps-"))
    try {
      const logfile = join(dir, "maps.log")
      const { code, output } = await runDriver(logfile)
      assert.strictEqual(code, 0, output)
      const counts = countByEntry(readFileSync(logfile, "latin1"))
      assert.deepStrictEqual([...counts.keys()], ENTRIES, "every entry point ran between its markers")
      const perCall = [...counts].filter(([, count]) => count >= ALLOWED).map(([entry, count]) => `${entry}: ${count}`)
      assert.deepStrictEqual(perCall, [], `maps made over ${CALLS} calls`)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
