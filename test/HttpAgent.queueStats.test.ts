import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import * as HttpAgent from "../src/HttpAgent.js"
import * as AgentServer from "./utils/agentServer.js"
import { agents, task } from "./utils/httpAgents.js"

describe("HttpAgent: Stats of tasks that timed out waiting for a connection slot", () => {
  it.effect(
    "they count as the calls' timeouts and Timeout failures, as the executor counts its own queue; no breaker",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make((t) =>
          t.task_id === "busy" ? { hang: true } : AgentServer.defaultReply(t)
        )
        const agent = HttpAgent.agent({ url: server.url, name: "queued-stats" })
        const service = yield* agents({ maxConnectionsPerHost: 1 }, { failMax: 2, resetTimeout: "1 hour" })
        assert.strictEqual((yield* service.call(task("ok", agent))).status, "success")
        const busy = yield* Effect.forkChild(service.call({ ...task("busy", agent), timeout: "1 minute" }))
        yield* server.awaitRequests(2)
        const queued = yield* Effect.forkChild(
          Effect.forEach(["q1", "q2"], (id) => service.call({ ...task(id, agent), timeout: "1 second" }), {
            concurrency: "unbounded"
          })
        )
        yield* Effect.yieldNow
        yield* TestClock.adjust("1 second")
        for (const record of yield* Fiber.join(queued)) assert.strictEqual(record.status, "timeout")
        const { statuses, calls } = yield* service.stats(agent)
        assert.strictEqual(statuses.timeout, 2)
        // The calls as their callers saw them (docs/http-agents.md, "Stats"): the wait is in their latency.
        // Four requests: "ok", the two queued out, and "busy" still in flight.
        assert.deepStrictEqual([calls.total, calls.successes, calls.timeouts, calls.failures], [4, 1, 2, 2])
        assert.deepStrictEqual(calls.failuresByReason, { Timeout: 2 })
        // The agent's health is its breaker's: two queued timeouts with failMax 2 left it closed.
        yield* Fiber.interrupt(busy)
        assert.strictEqual((yield* service.call(task("after", agent))).status, "success")
      })
  )

  it.effect(
    "a task's wait for a connection slot is its queueWait and its callers' latency, not the agent's serviceTime nor in flight",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make((t) =>
          t.task_id === "busy" ? { hang: true } : AgentServer.defaultReply(t)
        )
        // Two names of one host: one connection slot between them, a series each.
        const holder = HttpAgent.agent({ url: server.url, name: "slot-holder" })
        const waiter = HttpAgent.agent({ url: server.url, name: "slot-waiter" })
        const service = yield* agents({ maxConnectionsPerHost: 1 })
        const busy = yield* Effect.forkChild(service.call({ ...task("busy", holder), timeout: "10 seconds" }))
        yield* server.awaitRequests(1)
        const queued = yield* Effect.forkChild(service.call({ ...task("queued", waiter), timeout: "1 minute" }))
        yield* Effect.yieldNow
        // Read now, checked once both tasks have ended (the executor's close waits for calls in flight).
        const slots = yield* service.connections
        const waiting = (yield* service.stats(waiter)).calls
        yield* TestClock.adjust("10 seconds")
        assert.strictEqual((yield* Fiber.join(busy)).status, "timeout")
        // The holder's request aborted, the slot is the waiter's: the agent answers it at once.
        assert.strictEqual((yield* Fiber.join(queued)).status, "success")
        assert.strictEqual(slots.waiting, 1)
        assert.deepStrictEqual([waiting.queued, waiting.inFlight], [1, 0], "[queued, inFlight] while it waited")
        const { calls } = yield* service.stats(waiter)
        assert.deepStrictEqual(
          [calls.queueWait.max, calls.serviceTime.max, calls.latency.max],
          [10_000, 0, 10_000],
          "[queueWait, serviceTime, latency] of the task that waited"
        )
        const held = (yield* service.stats(holder)).calls
        assert.deepStrictEqual(
          [held.queueWait.max, held.serviceTime.max],
          [0, 10_000],
          "the agent served the holder 10 s"
        )
      })
  )
})
