/**
 * Bounds of an agent's answer that the scripted agent server cannot play: an answer whose
 * headers come and whose body then stalls, and one that trickles for ever below the size
 * bound. Each ends at the request's deadline, its connection closed (real servers on
 * 127.0.0.1, port 0; the deadline on the TestClock).
 */
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import * as AgentServer from "./utils/agentServer.js"
import * as HttpAgents from "./utils/httpAgents.js"

const agents = HttpAgents.agents({ timeout: "1 minute" })

type Mode = "stall" | "trickle"

const server = (mode: Mode) =>
  Effect.acquireRelease(
    Effect.callback<{
      readonly server: http.Server
      readonly url: string
      readonly state: { sent: number; closed: number }
    }>((resume) => {
      const state = { sent: 0, closed: 0 }
      const server = http.createServer((req, res) => {
        res.on("close", () => state.closed++)
        req.resume()
        req.on("end", () => {
          res.writeHead(200, { "content-type": "application/json" })
          res.write('{"task_id":"t","result":"')
          state.sent++
          if (mode === "stall") return
          const timer = setInterval(() => {
            if (res.destroyed) return clearInterval(timer)
            res.write("x")
            state.sent++
          }, 2)
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as AddressInfo
        resume(Effect.succeed({ server, url: `http://127.0.0.1:${port}/task`, state }))
      })
    }),
    ({ server }) =>
      Effect.callback<void>((resume) => {
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  )

describe("HttpAgent: an answer's body has a deadline", () => {
  for (const mode of ["stall", "trickle"] as const) {
    it.effect(
      mode === "stall"
        ? "headers, then a body that stalls: a timeout record at the deadline, the connection closed"
        : "a body that trickles for ever below the size bound: a timeout record at the deadline, the connection closed",
      () =>
        Effect.gen(function* () {
          const agent = yield* server(mode)
          const service = yield* agents
          const fiber = yield* Effect.forkChild(
            service.call({ id: "t", agent: agent.url, intent: "i", concept: "c", timeout: "2 seconds" })
          )
          // The headers and the start of the body arrived (and, trickling, more of it since).
          yield* AgentServer.poll(() => agent.state.sent >= (mode === "stall" ? 1 : 10))
          yield* TestClock.adjust("1999 millis")
          assert.isUndefined(fiber.pollUnsafe(), "no outcome before the deadline")
          yield* TestClock.adjust("1 millis")
          const record = yield* Fiber.join(fiber)
          assert.deepStrictEqual([record.status, record.error?.reason, record.durationMs], ["timeout", "Timeout", 2000])
          yield* AgentServer.poll(() => agent.state.closed === 1)
          const connections = yield* service.connections
          assert.deepStrictEqual([connections.active, connections.waiting], [0, 0])
        })
    )
  }
})
