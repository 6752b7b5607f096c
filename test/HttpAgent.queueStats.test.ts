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
})
