import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Fiber, Queue } from "effect"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Policy from "../src/Policy.js"
import { makeOrchestra } from "./utils/orchestra.js"

describe("fault injection", () => {
  // A stress test of outcomes, not of timing: it runs on the live clock with millisecond
  // latencies, because TestClock wakes sleepers one at a time (sorting every pending sleep
  // and waiting for all fibers to suspend each time), which is quadratic at 1,000 calls.
  it.scopedLive(
    "1,000 requests against a provider failing 30% and hanging 5%: every request gets exactly one outcome",
    () =>
      Effect.gen(function* () {
        const { batch, controls, context, stats } = yield* makeOrchestra(
          {
            flaky: {
              latency: { uniform: ["1 millis", "8 millis"] },
              random: {
                seed: 42,
                succeed: 0.65,
                fail: { Overloaded: 0.2, RateLimited: 0.05, Transport: 0.05 },
                hang: 0.05
              }
            },
            backup: { latency: { uniform: ["1 millis", "4 millis"] }, random: { seed: 7, succeed: 1 } }
          },
          {
            domains: [
              {
                name: "primary",
                provider: "flaky",
                timeout: Duration.millis(150),
                retry: Policy.retry({ maxAttempts: 2, initialDelay: 5, jitter: 0.5 })
              },
              { name: "backup", provider: "backup" }
            ],
            maxConcurrent: 50,
            // The breaker wraps a whole call (its retries included): trip on the failure rate.
            breakers: {
              rolling: { window: "1 second", minimumCalls: 10, failureRate: 0.05 },
              resetTimeout: "50 millis"
            }
          }
        )
        const registry = Context.get(context, CircuitBreaker.Registry)
        const transitions = yield* registry.subscribe
        const items = Array.from({ length: 1000 }, (_, i) => ({ query: `request ${i}`, domain: "primary" }))
        const fiber = yield* Effect.fork(batch.run(items, { fallback: ["backup"], id: "fault-injection" }))
        const result = yield* Fiber.join(fiber).pipe(Effect.timeout("60 seconds"))

        assert.strictEqual(result.results.length, items.length)
        assert.deepStrictEqual(
          result.results.map((r) => r.index),
          items.map((_, i) => i),
          "one outcome per request, in input order"
        )
        const byStatus = result.results.reduce<Record<string, number>>((acc, r) => {
          acc[r.status] = (acc[r.status] ?? 0) + 1
          return acc
        }, {})
        const fallbacks = result.results.filter((r) => r.answer?.fallbackUsed).length
        const changes = Array.from(yield* Queue.takeAll(transitions))
        const trips = changes.filter((c) => c.to === "open").length
        const primaryCalls = yield* controls.flaky!.calls
        const backupCalls = yield* controls.backup!.calls
        console.log(
          `fault injection: ${JSON.stringify(byStatus)}, fallbacks ${fallbacks}, breaker trips ${trips}, ` +
            `flaky calls ${primaryCalls} (interrupted ${yield* controls.flaky!.interrupted}), backup calls ${backupCalls}, ` +
            `${result.elapsedMs} ms, batch stats: ${result.stats.successes}/${result.stats.total} ok, ` +
            `${result.stats.timeouts} timeouts, ${result.stats.retries} retries`
        )
        assert.strictEqual(
          byStatus.success,
          items.length,
          "the reliable backup answers whatever the flaky provider does"
        )
        assert.isTrue(fallbacks > 0, "some requests fell back")
        assert.isTrue(trips > 0, "the breaker tripped")
        assert.isTrue(result.stats.timeouts > 0, "hangs were cut by the deadline")
        assert.strictEqual(yield* controls.flaky!.inFlight, 0, "no call left running")
        assert.strictEqual(yield* controls.backup!.inFlight, 0)
        const all = yield* stats.snapshot({ tags: { batch: "fault-injection" } })
        assert.strictEqual(all.inFlight, 0)
      }),
    120_000
  )
})
