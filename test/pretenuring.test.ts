/**
 * `Gateway.disableAllocationSitePretenuring` turns V8's allocation-site pretenuring off for the
 * process (why: src/gateway/heap.ts). Checked on V8's own trace of its pretenuring decisions:
 * objects of one site that all survive young collections get their site pretenured ("=> tenure")
 * by default, and never once it has run.
 */
import { spawn } from "node:child_process"
import { createRequire } from "node:module"
import { fileURLToPath, pathToFileURL } from "node:url"
import { assert, describe, it } from "@effect/vitest"

const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href
const DRIVER = fileURLToPath(new URL("fixtures/pretenuring-driver.ts", import.meta.url))

/** The driver's output between its markers (V8 prints its trace on stdout). */
const traceAfterStart = (mode: "on" | "off") =>
  new Promise<{ readonly code: number | null; readonly trace: string }>((resolve) => {
    const child = spawn(process.execPath, ["--import", TSX, "--trace-pretenuring-statistics", DRIVER, mode], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      output += chunk
    })
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      output += chunk
    })
    child.on("close", (code) => {
      const start = output.indexOf("MARKER_START")
      const end = output.indexOf("MARKER_END")
      resolve({ code, trace: start === -1 || end === -1 ? output : output.slice(start, end) })
    })
  })

const tenured = (trace: string): number => trace.split("\n").filter((line) => line.includes("=> tenure")).length

describe("Gateway.disableAllocationSitePretenuring", () => {
  it("V8 pretenures a site whose objects all survive, and does not once it has run", { timeout: 180_000 }, async () => {
    const [on, off] = await Promise.all([traceAfterStart("on"), traceAfterStart("off")])
    assert.strictEqual(on.code, 0, on.trace)
    assert.strictEqual(off.code, 0, off.trace)
    assert.isAbove(tenured(on.trace), 0, "by default V8 pretenures the site: the check below could fail")
    assert.strictEqual(tenured(off.trace), 0, off.trace.slice(0, 2000))
  })
})
