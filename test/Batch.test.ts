import { assert, describe, it } from "@effect/vitest"
import { Chunk, Deferred, Duration, Effect, Exit, Fiber, Layer, Option, Scope, Stream, TestClock } from "effect"
import * as Batch from "../src/Batch.js"
import { ModelProvider, type Service as ProviderService } from "../src/Model.js"
import { Outcome } from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import * as Policy from "../src/Policy.js"
import { makeOrchestra, uniqueName } from "./utils/orchestra.js"

const noRetry = Policy.retry({ maxAttempts: 1 })
const retry3 = Policy.retry({ maxAttempts: 3, initialDelay: 100, jitter: 0 })

/** A compact trace of progress events: `tag:index@elapsed done/total`. */
const trace = (events: ReadonlyArray<Batch.ProgressEvent>): ReadonlyArray<string> =>
  events.map((e) =>
    e._tag === "Cancelled"
      ? `Cancelled:[${e.notRun.join(",")}]@${e.elapsedMs} ${e.done}/${e.total}`
      : `${e._tag}:${e.index}@${e.elapsedMs} ${e.done}/${e.total}`
  )

describe("Batch.run outcomes", () => {
  it.effect("one outcome per item in input order: success, error, timeout, rejected; the batch never fails", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra(
        {
          a: {
            script: [
              Outcome.succeed("first", { latency: "100 millis" }),
              Outcome.fail("InvalidRequest"),
              Outcome.succeed("third", { latency: "50 millis" }),
              Outcome.hang()
            ]
          },
          b: { script: [Outcome.fail("Overloaded")] }
        },
        {
          domains: [
            { name: "d-a", provider: "a", timeout: Duration.seconds(1), retry: noRetry },
            { name: "d-b", provider: "b", retry: noRetry }
          ],
          breakers: { failMax: 1, resetTimeout: "1 minute" }
        }
      )
      const fiber = yield* Effect.fork(
        batch.run(
          [
            "one",
            { query: "two", domain: "d-a" },
            { request: { prompt: "three" } },
            "four",
            { query: "five", domain: "d-b" },
            { query: "six", domain: "d-b" }
          ],
          { domain: "d-a", concurrency: 1 }
        )
      )
      yield* TestClock.adjust("5 seconds")
      const result = yield* Fiber.join(fiber)
      assert.deepStrictEqual(
        result.results.map((r) => r.index),
        [0, 1, 2, 3, 4, 5]
      )
      assert.deepStrictEqual(
        result.results.map((r) => r.status),
        ["success", "error", "success", "timeout", "error", "rejected"]
      )
      assert.strictEqual(result.results[0]!.answer?.response.text, "first")
      assert.strictEqual(result.results[0]!.durationMs, 100)
      assert.strictEqual(result.results[2]!.answer?.response.text, "third")
      const invalid = result.results[1]!.error
      assert.strictEqual(invalid?._tag === "ModelError" && invalid.reason, "InvalidRequest")
      assert.strictEqual(result.results[3]!.error?._tag, "TimeoutError")
      assert.strictEqual(result.results[3]!.durationMs, 1000)
      assert.strictEqual(result.results[5]!.error?._tag, "CircuitOpenError")
      assert.isTrue(result.results.every((r) => r.ran))
      assert.isFalse(result.cancelled)
      assert.deepStrictEqual(result.notRun, [])
      assert.strictEqual(yield* controls.a!.calls, 4)
      assert.strictEqual(yield* controls.b!.calls, 1, "the open breaker refused the sixth item without a call")
      assert.deepStrictEqual(
        Batch.successes(result).map((a) => a.response.text),
        ["first", "third"]
      )
      assert.strictEqual(Option.map(Batch.firstError(result), (e) => e._tag).pipe(Option.getOrNull), "ModelError")
    })
  )

  it.effect("a defect in one provider call becomes that item's error, not the batch's", () =>
    Effect.gen(function* () {
      const name = uniqueName("buggy")
      let calls = 0
      const buggy: ProviderService = {
        name,
        defaultModel: "m",
        generate: (request) =>
          Effect.suspend(() => {
            calls++
            return request.prompt === "boom"
              ? Effect.dieMessage("provider bug")
              : Effect.succeed({
                  text: `ok ${request.prompt}`,
                  finishReason: "stop" as const,
                  usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
                  provider: name,
                  model: "m"
                })
          }),
        stream: () => Stream.die("unused"),
        embed: () => Effect.dieMessage("unused")
      }
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Orchestra.layer({ providers: { buggy: Layer.succeed(ModelProvider, buggy) }, breakers: false }),
        scope
      )
      const batch = yield* Effect.provide(Batch.Batch, context)
      const result = yield* batch.run(["a", "boom", "c"], { domain: "support" })
      assert.deepStrictEqual(
        result.results.map((r) => r.status),
        ["success", "error", "success"]
      )
      const error = result.results[1]!.error
      assert.strictEqual(error?._tag === "ModelError" && error.reason, "Unknown")
      assert.include(error?.message, "provider bug")
      assert.strictEqual(calls, 3)
    })
  )

  it.effect("a throwing onProgress callback does not fail the batch", () =>
    Effect.gen(function* () {
      const { batch } = yield* makeOrchestra({ a: {} })
      const result = yield* batch.run(["x", "y"], {
        domain: "d-a",
        onProgress: () => {
          throw new Error("callback bug")
        }
      })
      assert.deepStrictEqual(
        result.results.map((r) => r.status),
        ["success", "success"]
      )
    })
  )

  it.effect("an empty batch completes at once", () =>
    Effect.gen(function* () {
      const { batch } = yield* makeOrchestra({ a: {} })
      const result = yield* batch.run([], { domain: "d-a" })
      assert.deepStrictEqual(result.results, [])
      assert.strictEqual(result.stats.total, 0)
    })
  )
})

describe("Batch items", () => {
  it.effect("strings, {query, domain} and {request} reach the right domain with its system prompt", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra(
        { a: {}, b: {} },
        {
          domains: [
            { name: "d-a", provider: "a", system: "You are A." },
            { name: "d-b", provider: "b", system: "You are B." }
          ]
        }
      )
      const result = yield* batch.run(
        [
          "plain",
          { query: "routed", domain: "d-b" },
          { request: { prompt: "full", system: "Own system", maxTokens: 7 } },
          { request: { prompt: "full-b" }, domain: "d-b" }
        ],
        { domain: "d-a" }
      )
      assert.deepStrictEqual(
        result.results.map((r) => r.answer?.domain),
        ["d-a", "d-b", "d-a", "d-b"]
      )
      const toA = (yield* controls.a!.requests) as ReadonlyArray<{
        prompt?: string
        system?: string
        maxTokens?: number
      }>
      const toB = (yield* controls.b!.requests) as ReadonlyArray<{ prompt?: string; system?: string }>
      assert.deepStrictEqual(
        toA.map((r) => [r.prompt, r.system]),
        [
          ["plain", "You are A."],
          ["full", "Own system"]
        ]
      )
      assert.strictEqual(toA[1]!.maxTokens, 7)
      assert.deepStrictEqual(
        toB.map((r) => [r.prompt, r.system]),
        [
          ["routed", "You are B."],
          ["full-b", "You are B."]
        ]
      )
    })
  )

  it.effect("items without any domain go to the default provider", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: { respond: () => "default" } })
      const result = yield* batch.run(["x"])
      assert.strictEqual(result.results[0]!.answer?.domain, "default")
      assert.strictEqual(result.results[0]!.answer?.provider, controls.a!.name)
    })
  )
})

describe("Batch fallback", () => {
  it.effect("fallback domains per batch: items move on only when the error falls back", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra(
        {
          a: { script: [Outcome.fail("Overloaded"), Outcome.fail("InvalidRequest"), Outcome.succeed("a")] },
          b: { respond: () => "b" }
        },
        {
          domains: [
            { name: "d-a", provider: "a", retry: noRetry },
            { name: "d-b", provider: "b", retry: noRetry }
          ]
        }
      )
      const result = yield* batch.run(["1", "2", "3"], { domain: "d-a", fallback: ["d-b"], concurrency: 1 })
      assert.deepStrictEqual(
        result.results.map((r) => r.status),
        ["success", "error", "success"]
      )
      assert.strictEqual(result.results[0]!.answer?.domain, "d-b")
      assert.isTrue(result.results[0]!.answer?.fallbackUsed)
      assert.strictEqual(result.results[0]!.answer?.attempts, 2)
      assert.strictEqual(result.results[2]!.answer?.domain, "d-a")
      assert.isFalse(result.results[2]!.answer?.fallbackUsed)
      assert.strictEqual(yield* controls.b!.calls, 1, "InvalidRequest did not fall back")
      assert.strictEqual(result.stats.fallbacks, 1)
    })
  )

  it.effect("items without a domain fall back from the default provider to the batch's fallback domains", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra(
        { a: { script: [Outcome.fail("Unavailable")] }, b: { respond: () => "b" } },
        {
          executor: { retry: { maxAttempts: 1 } },
          domains: [{ name: "d-b", provider: "b", retry: noRetry }]
        }
      )
      const result = yield* batch.run(["x"], { fallback: ["d-b"] })
      const answer = result.results[0]!.answer
      assert.strictEqual(answer?.response.text, "b")
      assert.isTrue(answer?.fallbackUsed)
      assert.strictEqual(answer?.attempts, 2)
      assert.strictEqual(yield* controls.a!.calls, 1)
      assert.strictEqual(result.stats.fallbacks, 1)
    })
  )
})

const modes = [
  { name: "through the router (items with a domain)", domain: "d-a" as string | undefined },
  { name: "straight to the executor's pool (items without a domain)", domain: undefined as string | undefined }
] as const

for (const mode of modes) {
  describe(`Batch progress, ${mode.name}`, () => {
    it.effect("onProgress: events in order with done/total counts and elapsed time", () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra(
          {
            a: {
              script: [
                Outcome.succeed("0", { latency: "100 millis" }),
                Outcome.succeed("1", { latency: "300 millis" }),
                Outcome.fail("InvalidRequest", { latency: "100 millis" })
              ]
            }
          },
          { domains: [{ name: "d-a", provider: "a", retry: noRetry }], executor: { retry: noRetry } }
        )
        const events: Array<Batch.ProgressEvent> = []
        const fiber = yield* Effect.fork(
          batch.run(["0", "1", "2"], { domain: mode.domain, concurrency: 2, onProgress: (e) => events.push(e) })
        )
        yield* TestClock.adjust("1 second")
        const result = yield* Fiber.join(fiber)
        assert.deepStrictEqual(trace(events), [
          "Started:0@0 0/3",
          "Started:1@0 0/3",
          "Succeeded:0@100 1/3",
          "Started:2@100 1/3",
          "Failed:2@200 2/3",
          "Succeeded:1@300 3/3"
        ])
        const failed = events[4]
        assert.strictEqual(failed?._tag === "Failed" && failed.status, "error")
        const succeeded = events[5]
        assert.strictEqual(succeeded?._tag === "Succeeded" && succeeded.durationMs, 300)
        assert.strictEqual(result.elapsedMs, 300)
      })
    )

    it.effect("Batch.stream: the same events as a Stream, then the result", () =>
      Effect.gen(function* () {
        // distinct latencies: calls ending at the same instant may complete in either order
        const { batch } = yield* makeOrchestra({
          a: {
            script: [
              Outcome.succeed("0", { latency: "200 millis" }),
              Outcome.succeed("1", { latency: "300 millis" }),
              Outcome.succeed("2", { latency: "250 millis" }),
              Outcome.succeed("3", { latency: "300 millis" })
            ]
          }
        })
        const fiber = yield* Effect.fork(
          Stream.runCollect(batch.stream(["0", "1", "2", "3"], { domain: mode.domain, concurrency: 2 }))
        )
        yield* TestClock.adjust("1 second")
        const all = Chunk.toReadonlyArray(yield* Fiber.join(fiber))
        const last = all[all.length - 1]
        assert.strictEqual(last?._tag, "Done")
        const events = all.slice(0, -1) as ReadonlyArray<Batch.ProgressEvent>
        assert.deepStrictEqual(trace(events), [
          "Started:0@0 0/4",
          "Started:1@0 0/4",
          "Succeeded:0@200 1/4",
          "Started:2@200 1/4",
          "Succeeded:1@300 2/4",
          "Started:3@300 2/4",
          "Succeeded:2@450 3/4",
          "Succeeded:3@600 4/4"
        ])
        if (last?._tag === "Done") {
          assert.strictEqual(last.result.results.length, 4)
          assert.isTrue(last.result.results.every((r) => r.status === "success"))
          assert.strictEqual(last.result.elapsedMs, 600)
        }
      })
    )

    it.effect("leaving Batch.stream early interrupts the batch's calls", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 3 })
        const fiber = yield* Effect.fork(
          batch.stream(["0", "1", "2", "3", "4", "5"], { domain: mode.domain }).pipe(
            Stream.takeUntil((e) => e._tag === "Succeeded"),
            Stream.runCollect
          )
        )
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(fiber)
        assert.strictEqual(yield* controls.a!.inFlight, 0)
        assert.isAtLeast(yield* controls.a!.interrupted, 1)
        yield* TestClock.adjust("10 seconds")
        assert.isBelow(yield* controls.a!.calls, 6, "no new item started after the consumer left")
      })
    )

    it.effect("Retried events appear for retried items, and the item counts its retries", () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra(
          {
            a: {
              script: [
                Outcome.fail("Overloaded", { latency: "10 millis" }),
                Outcome.fail("RateLimited", { latency: "10 millis" }),
                Outcome.succeed("finally", { latency: "10 millis" })
              ]
            }
          },
          { domains: [{ name: "d-a", provider: "a", retry: retry3 }], executor: { retry: retry3 } }
        )
        const events: Array<Batch.ProgressEvent> = []
        const fiber = yield* Effect.fork(batch.run(["q"], { domain: mode.domain, onProgress: (e) => events.push(e) }))
        yield* TestClock.adjust("5 seconds")
        const result = yield* Fiber.join(fiber)
        assert.deepStrictEqual(trace(events), [
          "Started:0@0 0/1",
          "Retried:0@10 0/1",
          "Retried:0@120 0/1",
          "Succeeded:0@330 1/1"
        ])
        const retried = events.filter((e) => e._tag === "Retried")
        assert.deepStrictEqual(
          retried.map((e) => (e._tag === "Retried" ? [e.attempt, e.delayMs] : [])),
          [
            [1, 100],
            [2, 200]
          ]
        )
        assert.strictEqual(result.results[0]!.retries, 2)
        assert.strictEqual(result.results[0]!.answer?.response.text, "finally")
        assert.strictEqual(result.stats.retries, 2)
      })
    )
  })

  describe(`Batch concurrency, ${mode.name}`, () => {
    it.effect("two concurrent batches of one manager share its limit: peak never above it, both progress", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 3 })
        const startsA: Array<number> = []
        const startsB: Array<number> = []
        const items = Array.from({ length: 10 }, (_, i) => `q${i}`)
        const a = yield* Effect.fork(
          batch.run(items, {
            domain: mode.domain,
            onProgress: (e) => e._tag === "Started" && startsA.push(e.elapsedMs)
          })
        )
        const b = yield* Effect.fork(
          batch.run(items, {
            domain: mode.domain,
            onProgress: (e) => e._tag === "Started" && startsB.push(e.elapsedMs)
          })
        )
        yield* TestClock.adjust("1 minute")
        const [ra, rb] = [yield* Fiber.join(a), yield* Fiber.join(b)]
        assert.strictEqual(yield* controls.a!.peak, 3)
        assert.strictEqual(yield* controls.a!.calls, 20)
        assert.isTrue(ra.results.every((r) => r.status === "success"))
        assert.isTrue(rb.results.every((r) => r.status === "success"))
        // 20 calls of 1 s through 3 permits: ceil(20 / 3) = 7 s for both together
        assert.strictEqual(Math.max(ra.elapsedMs, rb.elapsedMs), 7000)
        // FIFO hand-off: B is not starved until A is done
        assert.isBelow(startsB[2]!, 3000)
        assert.isBelow(startsA[startsA.length - 1]!, 7000)
        assert.isAtMost(ra.stats.concurrencyPeak, 3)
      })
    )

    it.effect("per-batch concurrency below the shared limit", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 10 })
        assert.strictEqual(batch.limit, 10)
        const fiber = yield* Effect.fork(batch.run(["0", "1", "2", "3", "4"], { domain: mode.domain, concurrency: 2 }))
        yield* TestClock.adjust("10 seconds")
        const result = yield* Fiber.join(fiber)
        assert.strictEqual(yield* controls.a!.peak, 2)
        assert.strictEqual(result.elapsedMs, 3000)
      })
    )

    it.effect("a per-batch concurrency above the shared limit is capped by it", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 2 })
        const fiber = yield* Effect.fork(batch.run(["0", "1", "2", "3"], { domain: mode.domain, concurrency: 50 }))
        yield* TestClock.adjust("10 seconds")
        yield* Fiber.join(fiber)
        assert.strictEqual(yield* controls.a!.peak, 2)
      })
    )
  })

  describe(`Batch cancellation, ${mode.name}`, () => {
    it.effect("cancel interrupts in-flight calls and reports the items that never ran", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 2 })
        const stop = yield* Deferred.make<void>()
        const events: Array<Batch.ProgressEvent> = []
        const items = Array.from({ length: 8 }, (_, i) => `q${i}`)
        const fiber = yield* Effect.fork(
          batch.run(items, { domain: mode.domain, cancel: Deferred.await(stop), onProgress: (e) => events.push(e) })
        )
        yield* TestClock.adjust("1500 millis")
        assert.strictEqual(yield* controls.a!.inFlight, 2)
        yield* Deferred.succeed(stop, undefined)
        const result = yield* Fiber.join(fiber)
        assert.isTrue(result.cancelled)
        assert.deepStrictEqual(
          result.results.map((r) => [r.status, r.ran]),
          [
            ["success", true],
            ["success", true],
            ["cancelled", true],
            ["cancelled", true],
            ["cancelled", false],
            ["cancelled", false],
            ["cancelled", false],
            ["cancelled", false]
          ]
        )
        assert.deepStrictEqual(result.notRun, [4, 5, 6, 7])
        assert.strictEqual(result.results[2]!.durationMs, 500)
        assert.strictEqual(yield* controls.a!.interrupted, 2)
        assert.strictEqual(yield* controls.a!.inFlight, 0)
        assert.strictEqual(yield* controls.a!.calls, 4)
        const last = events[events.length - 1]
        assert.strictEqual(last?._tag, "Cancelled")
        if (last?._tag === "Cancelled") {
          assert.deepStrictEqual(last.notRun, [4, 5, 6, 7])
          assert.strictEqual(last.done, 2)
          assert.strictEqual(last.elapsedMs, 1500)
        }
        // the permits came back: a later batch runs at full width
        const next = yield* Effect.fork(batch.run(["x", "y"], { domain: mode.domain }))
        yield* TestClock.adjust("1 second")
        assert.isTrue((yield* Fiber.join(next)).results.every((r) => r.status === "success"))
      })
    )

    it.effect("a cancel that has already happened runs nothing", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } })
        const result = yield* batch.run(["0", "1", "2"], { domain: mode.domain, cancel: Effect.void })
        assert.isTrue(result.cancelled)
        assert.deepStrictEqual(result.notRun, [0, 1, 2])
        assert.strictEqual(yield* controls.a!.calls, 0)
      })
    )

    it.effect("a cancel that never fires lets the batch finish", () =>
      Effect.gen(function* () {
        const { batch } = yield* makeOrchestra({ a: { latency: "1 second" } })
        const fiber = yield* Effect.fork(batch.run(["0", "1"], { domain: mode.domain, cancel: Effect.never }))
        yield* TestClock.adjust("1 second")
        const result = yield* Fiber.join(fiber)
        assert.isFalse(result.cancelled)
        assert.deepStrictEqual(result.notRun, [])
      })
    )

    it.effect("interrupting the batch fiber interrupts its calls and frees the permits", () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 2 })
        const fiber = yield* Effect.fork(batch.run(["0", "1", "2", "3"], { domain: mode.domain }))
        yield* TestClock.adjust("500 millis")
        yield* Fiber.interrupt(fiber)
        assert.strictEqual(yield* controls.a!.interrupted, 2)
        assert.strictEqual(yield* controls.a!.inFlight, 0)
        const next = yield* Effect.fork(batch.run(["x", "y"], { domain: mode.domain }))
        yield* TestClock.adjust("1 second")
        assert.strictEqual((yield* Fiber.join(next)).elapsedMs, 1000)
      })
    )
  })

  describe(`Batch shutdown, ${mode.name}`, () => {
    it.effect("closing the manager mid-batch: the batch returns and every item has an outcome", () =>
      Effect.gen(function* () {
        const { batch, controls, scope } = yield* makeOrchestra(
          { a: { latency: "1 second" } },
          { maxConcurrent: 2, executor: { shutdownDeadline: "500 millis", retry: noRetry } }
        )
        const fiber = yield* Effect.fork(batch.run(["0", "1", "2", "3", "4", "5"], { domain: mode.domain }))
        yield* TestClock.adjust("100 millis")
        const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
        yield* TestClock.adjust("500 millis")
        yield* Fiber.join(closing)
        const result = yield* Fiber.join(fiber)
        assert.deepStrictEqual(
          result.results.map((r) => r.status),
          ["rejected", "rejected", "rejected", "rejected", "rejected", "rejected"]
        )
        assert.isTrue(result.results.every((r) => r.error?._tag === "ShuttingDownError"))
        assert.deepStrictEqual(result.notRun, [])
        assert.strictEqual(result.results[0]!.durationMs, 600, "in flight until the shutdown deadline")
        assert.strictEqual(yield* controls.a!.calls, 2, "queued items never reached the provider")
        assert.strictEqual(yield* controls.a!.interrupted, 2)
        assert.strictEqual(yield* controls.a!.inFlight, 0)
      })
    )
  })

  describe(`Batch stats, ${mode.name}`, () => {
    it.effect("result.stats counts this batch only, even with another batch running at the same time", () =>
      Effect.gen(function* () {
        const { batch, stats } = yield* makeOrchestra(
          { a: { latency: "100 millis" } },
          { maxConcurrent: 4, domains: [{ name: "d-a", provider: "a", retry: noRetry }], executor: { retry: noRetry } }
        )
        const invalid = { request: { prompt: "bad", maxTokens: -1 } }
        const a = yield* Effect.fork(batch.run(["a0", invalid, "a2"], { domain: mode.domain, concurrency: 1 }))
        const b = yield* Effect.fork(
          batch.run(["b0", "b1", "b2", "b3", "b4"], { domain: mode.domain, id: "other-batch" })
        )
        yield* TestClock.adjust("5 seconds")
        const ra = yield* Fiber.join(a)
        const rb = yield* Fiber.join(b)
        assert.strictEqual(rb.id, "other-batch")
        assert.notStrictEqual(ra.id, rb.id)
        assert.deepStrictEqual(
          ra.results.map((r) => r.status),
          ["success", "error", "success"]
        )
        assert.strictEqual(ra.stats.total, 3)
        assert.strictEqual(ra.stats.successes, 2)
        assert.strictEqual(ra.stats.failures, 1)
        assert.deepStrictEqual(ra.stats.failuresByReason, { InvalidRequest: 1 })
        assert.strictEqual(ra.stats.concurrencyPeak, 1)
        assert.strictEqual(rb.stats.total, 5)
        assert.strictEqual(rb.stats.successes, 5)
        assert.strictEqual(rb.stats.failures, 0)
        assert.strictEqual(rb.stats.latency.avg, 100)
        assert.isAbove(rb.stats.concurrencyPeak, 1)
        const all = yield* stats.snapshot()
        assert.strictEqual(all.total, 8)
        assert.strictEqual(
          ra.results.filter((r) => r.status === "success").length +
            rb.results.filter((r) => r.status === "success").length,
          all.successes
        )
      })
    )
  })
}

describe("Batch, items without a domain (the executor's pool)", () => {
  it.effect(
    "outcomes in input order: success, error, timeout, invalid request; answers name the default provider",
    () =>
      Effect.gen(function* () {
        const { batch, controls } = yield* makeOrchestra(
          {
            a: {
              script: [
                Outcome.succeed("first", { latency: "100 millis" }),
                Outcome.fail("Unauthorized"),
                Outcome.hang(),
                Outcome.succeed("last")
              ]
            }
          },
          { executor: { timeout: "1 second", retry: noRetry } }
        )
        const events: Array<Batch.ProgressEvent> = []
        const fiber = yield* Effect.fork(
          batch.run(["one", "two", "three", { request: { prompt: "bad", maxTokens: -1 } }, "four"], {
            concurrency: 1,
            onProgress: (e) => events.push(e)
          })
        )
        yield* TestClock.adjust("5 seconds")
        const result = yield* Fiber.join(fiber)
        assert.deepStrictEqual(
          result.results.map((r) => r.status),
          ["success", "error", "timeout", "error", "success"]
        )
        assert.strictEqual(result.results[0]!.answer?.domain, "default")
        assert.strictEqual(result.results[0]!.answer?.provider, controls.a!.name)
        assert.strictEqual(result.results[2]!.durationMs, 1000)
        const invalid = result.results[3]!.error
        assert.strictEqual(invalid?._tag === "ModelError" && invalid.reason, "InvalidRequest")
        assert.strictEqual(invalid?._tag === "ModelError" && invalid.provider, controls.a!.name)
        assert.strictEqual(yield* controls.a!.calls, 4, "the invalid request never reached the provider")
        // the refused item still reports a start before its failure
        assert.deepStrictEqual(trace(events).slice(6, 8), ["Started:3@1100 3/5", "Failed:3@1100 4/5"])
        assert.strictEqual(result.stats.total, 5)
        assert.deepStrictEqual(result.stats.failuresByReason, { Unauthorized: 1, Timeout: 1, InvalidRequest: 1 })
      })
  )

  it.effect("a defect in one call becomes that item's error; the pool carries on", () =>
    Effect.gen(function* () {
      const name = uniqueName("buggy")
      const buggy: ProviderService = {
        name,
        defaultModel: "m",
        generate: (request) =>
          request.prompt === "boom"
            ? Effect.dieMessage("provider bug")
            : Effect.as(Effect.sleep("10 millis"), {
                text: `ok ${request.prompt}`,
                finishReason: "stop" as const,
                usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
                provider: name,
                model: "m"
              }),
        stream: () => Stream.die("unused"),
        embed: () => Effect.dieMessage("unused")
      }
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Orchestra.layer({ providers: { buggy: Layer.succeed(ModelProvider, buggy) }, maxConcurrent: 2 }),
        scope
      )
      const batch = yield* Effect.provide(Batch.Batch, context)
      const fiber = yield* Effect.fork(batch.run(["a", "boom", "c", "d"]))
      yield* TestClock.adjust("1 second")
      const result = yield* Fiber.join(fiber)
      assert.deepStrictEqual(
        result.results.map((r) => r.status),
        ["success", "error", "success", "success"]
      )
      assert.include(result.results[1]!.error?.message, "provider bug")
    })
  )

  it.effect("a batch through the router and one straight to the executor share the limit", () =>
    Effect.gen(function* () {
      const { batch, controls } = yield* makeOrchestra({ a: { latency: "1 second" } }, { maxConcurrent: 3 })
      const items = Array.from({ length: 9 }, (_, i) => `q${i}`)
      const routed = yield* Effect.fork(batch.run(items, { domain: "d-a" }))
      const direct = yield* Effect.fork(batch.run(items))
      yield* TestClock.adjust("1 minute")
      const [r, d] = [yield* Fiber.join(routed), yield* Fiber.join(direct)]
      assert.strictEqual(yield* controls.a!.peak, 3)
      assert.strictEqual(Math.max(r.elapsedMs, d.elapsedMs), 6000)
      assert.strictEqual(r.results[0]!.answer?.domain, "d-a")
      assert.strictEqual(d.results[0]!.answer?.domain, "default")
      assert.strictEqual(r.stats.total, 9)
      assert.strictEqual(d.stats.total, 9)
    })
  )
})

describe("Batch, a provider that interrupts itself", () => {
  it.effect("is that item's error on both paths, never a cancelled batch", () =>
    Effect.gen(function* () {
      const name = uniqueName("self-interrupting")
      const provider: ProviderService = {
        name,
        defaultModel: "m",
        generate: (request) =>
          request.prompt === "quit"
            ? Effect.interrupt
            : Effect.succeed({
                text: "ok",
                finishReason: "stop" as const,
                usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
                provider: name,
                model: "m"
              }),
        stream: () => Stream.die("unused"),
        embed: () => Effect.dieMessage("unused")
      }
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Orchestra.layer({ providers: { p: Layer.succeed(ModelProvider, provider) }, breakers: false }),
        scope
      )
      const batch = yield* Effect.provide(Batch.Batch, context)
      for (const domain of ["support", undefined]) {
        const result = yield* batch.run(["a", "quit", "c"], { domain })
        assert.deepStrictEqual(
          result.results.map((r) => r.status),
          ["success", "error", "success"],
          `domain ${domain}`
        )
        assert.isFalse(result.cancelled)
        assert.include(result.results[1]!.error?.message, "interrupted itself")
      }
    })
  )
})
