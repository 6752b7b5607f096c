/**
 * Streams are inside the graceful shutdown (issue 13, item 9) with a real HTTP provider too:
 * `dispose()` lets running streams go on up to the executor's `shutdownDeadline`, then ends
 * them with `ShuttingDownError` and closes their upstream connections. (v0.1 cut an
 * OpenAI-compatible stream at once, and let a mock's run on for seconds past the deadline.)
 * Real clock and a loopback SSE server; no timing assertion beyond "chunks arrived while
 * draining".
 */
import { spawn } from "node:child_process"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { fileURLToPath } from "node:url"
import { Effect, Layer } from "effect"
import { createOrchestra, OrchestraError } from "../src/Facade.js"
import * as OpenAiCompat from "../src/Model/OpenAiCompat.js"
import * as Orchestra from "../src/Orchestra.js"

const chunk = (content: string | null, finish: string | null = null) =>
  `data: ${JSON.stringify({
    id: "c",
    object: "chat.completion.chunk",
    created: 1,
    model: "m",
    choices: [{ index: 0, delta: content === null ? {} : { content }, finish_reason: finish }]
  })}\n\n`

/** An SSE server sending a chunk every 50 ms, 200 in all; counts open answers. */
const slowServer = async () => {
  let open = 0
  const server: Server = createServer((req, res) => {
    req.resume()
    res.writeHead(200, { "content-type": "text/event-stream" })
    open++
    let i = 0
    const timer = setInterval(() => {
      if (i < 200) res.write(chunk(`w${i} `))
      else {
        res.end(`${chunk(null, "stop")}data: [DONE]\n\n`)
        clearInterval(timer)
      }
      i++
    }, 50)
    res.on("close", () => {
      clearInterval(timer)
      open--
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return { server, port: (server.address() as AddressInfo).port, open: () => open }
}

const until = async (check: () => boolean) => {
  for (let i = 0; i < 400 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 5))
  assert.isTrue(check(), "the condition was reached")
}

describe("createOrchestra: dispose and streams on an HTTP provider", () => {
  it("running streams drain up to shutdownDeadline, then end with ShuttingDownError; connections closed", async () => {
    const upstream = await slowServer()
    try {
      const provider = OpenAiCompat.layer({ baseUrl: `http://127.0.0.1:${upstream.port}/v1`, model: "m" }).pipe(
        Layer.provide(NodeHttpClient.layerUndici)
      )
      const orchestra = createOrchestra(
        Orchestra.layer({ providers: { main: provider }, executor: { shutdownDeadline: "400 millis" } })
      )
      const received = [0, 0, 0]
      let disposing = false
      const afterDispose = [0, 0, 0]
      const runs = received.map(async (_, i) => {
        try {
          for await (const part of orchestra.stream(`q${i}`, { domain: "support" })) {
            if (part._tag !== "TextDelta") continue
            received[i]!++
            if (disposing) afterDispose[i]!++
          }
          return "completed"
        } catch (error) {
          return error instanceof OrchestraError ? error.error._tag : String(error)
        }
      })
      await until(() => received.every((n) => n >= 2))
      disposing = true
      await orchestra.dispose()
      const endings = await Promise.all(runs)
      assert.deepStrictEqual(endings, ["ShuttingDownError", "ShuttingDownError", "ShuttingDownError"])
      assert.isTrue(
        afterDispose.every((n) => n > 0),
        `each stream went on while draining: ${afterDispose.join(", ")}`
      )
      await until(() => upstream.open() === 0)
    } finally {
      upstream.server.close()
    }
  })
})

describe("a facade that is never disposed", () => {
  it.live(
    "lets its process exit once the work is done (no deadline lane, breaker sweep or half-open timer holds it)",
    () =>
      Effect.callback<{ readonly code: number | null; readonly out: string }>((resume) => {
        const fixture = fileURLToPath(new URL("./fixtures/facade-undisposed.ts", import.meta.url))
        const child = spawn(process.execPath, ["--import", "tsx", fixture], {
          cwd: fileURLToPath(new URL("..", import.meta.url)),
          stdio: ["ignore", "pipe", "inherit"]
        })
        let out = ""
        child.stdout.on("data", (chunk: Buffer) => {
          out += chunk.toString()
        })
        // Generous for a loaded CI machine; before the fix it lived on for the breakers' hour-long sweep.
        const killer = setTimeout(() => child.kill("SIGKILL"), 45_000)
        child.once("exit", (code) => {
          clearTimeout(killer)
          resume(Effect.succeed({ code, out }))
        })
        return Effect.sync(() => {
          clearTimeout(killer)
          child.kill("SIGKILL")
        })
      }).pipe(
        Effect.tap(({ code, out }) =>
          Effect.sync(() => {
            assert.strictEqual(code, 0, `the script did not exit by itself: ${out}`)
            assert.deepStrictEqual(JSON.parse(out.trim()), { provider: "main", failed: "ModelError" })
          })
        )
      ),
    { timeout: 60_000 }
  )
})
