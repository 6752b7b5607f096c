/**
 * Bounds of an agent's answer that the scripted agent server cannot play: an answer whose
 * headers come and whose body then stalls, and one that trickles for ever below the size
 * bound. Each ends at the request's deadline, its connection closed (real servers on
 * 127.0.0.1, port 0; the deadline on the TestClock).
 */
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, Metric } from "effect"
import { TestClock } from "effect/testing"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as Mock from "../src/Model/Mock.js"

const agents = Layer.build(
  HttpAgent.layer({ timeout: "1 minute" }).pipe(
    Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
    Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}))),
    Layer.provide(NodeHttpClient.layerUndici)
  )
).pipe(
  Effect.provideService(Metric.MetricRegistry, new Map()),
  Effect.map((context) => Context.get(context, HttpAgent.HttpAgents))
)

/** Real time, polling: the server's side of the exchange runs on Node's timers. */
const until = (ready: () => boolean) =>
  Effect.callback<void>((resume) => {
    const timer = setInterval(() => {
      if (ready()) {
        clearInterval(timer)
        resume(Effect.void)
      }
    }, 2)
    return Effect.sync(() => clearInterval(timer))
  })

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
          yield* until(() => agent.state.sent >= (mode === "stall" ? 1 : 10))
          yield* TestClock.adjust("1999 millis")
          assert.isUndefined(fiber.pollUnsafe(), "no outcome before the deadline")
          yield* TestClock.adjust("1 millis")
          const record = yield* Fiber.join(fiber)
          assert.deepStrictEqual([record.status, record.error?.reason, record.durationMs], ["timeout", "Timeout", 2000])
          yield* until(() => agent.state.closed === 1)
          const connections = yield* service.connections
          assert.deepStrictEqual([connections.active, connections.waiting], [0, 0])
        })
    )
  }
})
