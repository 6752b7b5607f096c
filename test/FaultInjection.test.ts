import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Ref, Stream } from "effect"
import { TestClock } from "effect/testing"
import type * as Batch from "../src/Batch.js"
import { Outcome } from "../src/Model/Mock.js"
import * as Policy from "../src/Policy.js"
import { setup } from "./utils/executor.js"
import { makeOrchestra } from "./utils/orchestra.js"

const countBy = <A>(items: ReadonlyArray<A>, key: (a: A) => string): Record<string, number> => {
  const counts: Record<string, number> = {}
  for (const item of items) counts[key(item)] = (counts[key(item)] ?? 0) + 1
  return counts
}

describe("fault injection", () => {
  // A stress test of outcomes, not of timing: it runs on the live clock with millisecond
  // latencies, because TestClock wakes sleepers one at a time (sorting every pending sleep
  // and waiting for all fibers to suspend each time), which is quadratic at 1,000 calls.
  it.live(
    "1,000 requests against a provider failing 30% and hanging 5%: exactly one outcome each, in order, and stats that agree",
    () =>
      Effect.gen(function* () {
        const { batch, breakers, controls, stats } = yield* makeOrchestra(
          {
            flaky: {
              seed: 42,
              latency: { uniform: ["1 millis", "8 millis"] },
              random: {
                success: 0.65,
                hang: 0.05,
                failures: { Overloaded: 0.2, RateLimited: 0.05, Transport: 0.05 }
              }
            },
            backup: { seed: 7, latency: { uniform: ["1 millis", "4 millis"] } }
          },
          {
            domains: [
              {
                name: "primary",
                provider: "flaky",
                timeout: "150 millis",
                retry: Policy.retry({ maxAttempts: 2, initialDelay: 5, jitter: 0.5 })
              },
              { name: "backup", provider: "backup" }
            ],
            maxConcurrent: 50,
            // One circuit per provider, shared by every item; it records each attempt (retries are outside it).
            breakers: { rolling: { size: 20, minimumCalls: 10, failureRate: 0.4 }, resetTimeout: "20 millis" }
          }
        )
        assert.isDefined(breakers)
        const trips = yield* Ref.make(0)
        const watcher = yield* Effect.forkChild(
          Stream.runForEach(breakers!.changes, (change) =>
            change.key === "flaky" && change.to === "open" ? Ref.update(trips, (n) => n + 1) : Effect.void
          ),
          { startImmediately: true }
        )

        const items = Array.from({ length: 1000 }, (_, i) => ({ query: `request ${i}`, domain: "primary" }))
        const endings = new Array<number>(items.length).fill(0)
        const onProgress = (event: Batch.ProgressEvent) => {
          if (event._tag === "Succeeded" || event._tag === "Failed") endings[event.index]! += 1
        }
        const result = yield* batch
          .run(items, { fallback: ["backup"], id: "fault-injection", onProgress })
          .pipe(Effect.timeout("60 seconds"))
        yield* Fiber.interrupt(watcher)

        // One outcome per request, in input order, none lost or doubled.
        assert.strictEqual(result.results.length, items.length)
        assert.deepStrictEqual(
          result.results.map((r) => r.index),
          items.map((_, i) => i)
        )
        assert.isTrue(
          endings.every((n) => n === 1),
          "exactly one terminal progress event per request"
        )
        assert.isFalse(result.cancelled)
        assert.deepStrictEqual(result.notRun, [])

        const byStatus = countBy(result.results, (r) => r.status)
        const byDomain = countBy(
          result.results.filter((r) => r.answer !== undefined),
          (r) => r.answer!.domain
        )
        const fallbacks = result.results.filter((r) => r.answer?.fallbackUsed === true).length
        const primary = yield* stats.snapshot({ domain: "primary" })
        const backup = yield* stats.snapshot({ domain: "backup" })
        const flaky = yield* controls.flaky!.counts
        const reliable = yield* controls.backup!.counts
        console.log(
          `fault injection: ${JSON.stringify(byStatus)}, answered by ${JSON.stringify(byDomain)}, ` +
            `breaker trips ${yield* Ref.get(trips)}, flaky ${JSON.stringify(flaky)}, backup calls ${reliable.calls}, ` +
            `primary failures ${JSON.stringify(primary.failuresByReason)}, attempt timeouts ${primary.timeouts}, ` +
            `retries ${primary.retries}, ${result.elapsedMs} ms`
        )

        // The reliable backup answers whatever the flaky provider does.
        assert.deepStrictEqual(byStatus, { success: items.length })
        assert.isAbove(fallbacks, 0, "some requests fell back")
        assert.isAbove(yield* Ref.get(trips), 0, "the breaker tripped")
        assert.isAbove(primary.failuresByReason.CircuitOpen ?? 0, 0, "the open breaker refused calls")
        assert.isAbove(primary.timeouts, 0, "hangs were cut by the deadline")
        assert.isAbove(primary.retries, 0, "transient failures were retried")

        // Nothing left running.
        assert.strictEqual(flaky.inFlight, 0, "no flaky call left running")
        assert.strictEqual(reliable.inFlight, 0, "no backup call left running")
        assert.strictEqual((yield* stats.snapshot()).inFlight, 0)
        assert.strictEqual((yield* stats.snapshot()).queued, 0)

        // The stats read back from the metrics agree with the outcomes.
        assert.strictEqual(primary.total, items.length, "every request started on the primary domain")
        assert.strictEqual(primary.successes, byDomain.primary ?? 0)
        assert.strictEqual(primary.failures, items.length - (byDomain.primary ?? 0))
        assert.strictEqual(backup.total, fallbacks, "every fallback is one call on the backup")
        assert.strictEqual(backup.successes, fallbacks)
        assert.strictEqual(backup.fallbacks, fallbacks)
        assert.strictEqual(byDomain.backup ?? 0, fallbacks)
        assert.strictEqual(flaky.succeeded, primary.successes, "the provider's answers are the domain's successes")
        assert.strictEqual(reliable.calls, fallbacks)
        assert.strictEqual(flaky.interrupted, primary.timeouts, "every interrupted call is a hang cut by its deadline")
        assert.strictEqual(primary.retries, result.stats.retries, "the batch counts the retries the metrics count")
        assert.strictEqual(result.stats.total, items.length)
        assert.strictEqual(result.stats.successes, items.length)
        assert.strictEqual(result.stats.fallbacks, fallbacks)
      }),
    120_000
  )

  // Found while writing examples/streaming.ts: a stream cut by its total deadline was not
  // counted in `timeouts` (an attempt ended by one of our deadlines), while a call was.
  it.effect("an attempt cut by the total deadline counts as a timeout, for a stream as for a call", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({
        name: "chatty",
        respond: () => "one two three four five six seven eight nine ten",
        chunkDelay: "100 millis",
        script: [Outcome.succeed(), Outcome.hang()]
      })
      const streamed = yield* Effect.forkChild(
        Effect.flip(
          Stream.runDrain(executor.stream({ prompt: "x" }, { idleTimeout: "1 second", totalTimeout: "350 millis" }))
        )
      )
      yield* TestClock.adjust("1 second")
      const streamError = yield* Fiber.join(streamed)
      assert.strictEqual(streamError._tag, "TimeoutError")
      if (streamError._tag === "TimeoutError") assert.strictEqual(streamError.limit, "total")
      const afterStream = yield* executor.stats()
      assert.deepStrictEqual(afterStream.failuresByReason, { Timeout: 1 })
      assert.strictEqual(afterStream.timeouts, 1)

      const called = yield* Effect.forkChild(
        Effect.flip(executor.execute({ prompt: "x" }, { timeout: "none", totalTimeout: "350 millis" }))
      )
      yield* TestClock.adjust("1 second")
      const callError = yield* Fiber.join(called)
      assert.strictEqual(callError._tag, "TimeoutError")
      if (callError._tag === "TimeoutError") assert.strictEqual(callError.limit, "total")
      const afterCall = yield* executor.stats()
      assert.deepStrictEqual(afterCall.failuresByReason, { Timeout: 2 })
      assert.strictEqual(afterCall.timeouts, 2)
    })
  )
})
