import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Metric, Option, TestClock } from "effect"
import { modelError } from "../src/AiError.js"
import { cacheHits, cacheMisses, cacheStale } from "../src/internal/resilienceMetrics.js"
import type { GenerateRequest, GenerateResponse, StreamPart } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as ResponseCache from "../src/ResponseCache.js"

let counter = 0
const uniqueName = (label: string) => `test-${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const makeCache = (options: ResponseCache.MemoryOptions = {}) =>
  Effect.gen(function* () {
    const name = options.name ?? uniqueName("memory")
    const store = yield* ResponseCache.makeMemoryStore({ ...options, name })
    const cache = yield* ResponseCache.make(store, options)
    return cache
  })

const countOf = (metric: typeof cacheHits, cache: string) =>
  Effect.map(Metric.value(Metric.tagged(metric, "cache", cache)), (s) => s.count)

const response = (text: string): GenerateResponse => ({
  text,
  finishReason: "stop",
  usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
  provider: "mock",
  model: "mock-model"
})

const request: GenerateRequest = { prompt: "hello", temperature: 0 }

describe("ResponseCache.key", () => {
  it("is stable across key order and prompt vs one user message, and changes with what changes the output", () => {
    const base = ResponseCache.key({ provider: "p", request: { prompt: "hi", temperature: 0.5, maxTokens: 10 } })
    assert.match(base, /^[0-9a-f]{64}$/)
    assert.strictEqual(
      ResponseCache.key({ provider: "p", request: { maxTokens: 10, temperature: 0.5, prompt: "hi" } }),
      base
    )
    assert.strictEqual(
      ResponseCache.key({
        provider: "p",
        request: { messages: [{ role: "user", content: "hi" }], maxTokens: 10, temperature: 0.5 }
      }),
      base
    )
    const variants: ReadonlyArray<[string, GenerateRequest]> = [
      ["q", { prompt: "hi", temperature: 0.5, maxTokens: 10 }],
      ["p", { prompt: "hi!", temperature: 0.5, maxTokens: 10 }],
      ["p", { prompt: "hi", temperature: 0.6, maxTokens: 10 }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 11 }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, topP: 0.9 }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, seed: 1 }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, stop: ["\n"] }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, model: "other" }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, system: "be brief" }]
    ]
    const keys = new Set(variants.map(([provider, r]) => ResponseCache.key({ provider, request: r })))
    assert.strictEqual(keys.size, variants.length)
    assert.isFalse(keys.has(base))
  })
})

describe("ResponseCache (memory)", () => {
  it.scoped("single-flight: 10 concurrent identical requests make one provider call and share its result", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const { control, provider } = yield* Mock.make({ latency: "100 millis" })
      const key = ResponseCache.key({ provider: provider.name, request })
      const fibers = yield* Effect.fork(
        Effect.all(
          Array.from({ length: 10 }, () => cache.getOrComputeDetailed(key, provider.generate(request))),
          { concurrency: "unbounded" }
        )
      )
      yield* TestClock.adjust("100 millis")
      const results = yield* Fiber.join(fibers)
      assert.strictEqual(yield* control.calls, 1)
      assert.strictEqual(new Set(results.map((r) => r.value)).size, 1, "every waiter gets the same answer")
      assert.deepStrictEqual(results.map((r) => r.source).sort(), ["computed", ...Array(9).fill("shared")].sort())
      const again = yield* cache.getOrComputeDetailed(key, provider.generate(request))
      assert.strictEqual(again.source, "hit")
      assert.strictEqual(yield* control.calls, 1)
    })
  )

  it.scoped("failures are delivered to every waiter of the flight and never cached", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const { control, provider } = yield* Mock.make({
        latency: "10 millis",
        script: [Mock.Outcome.fail("Overloaded")]
      })
      const key = ResponseCache.key({ provider: provider.name, request })
      const fiber = yield* Effect.fork(
        Effect.all(
          Array.from({ length: 5 }, () => Effect.flip(cache.getOrCompute(key, provider.generate(request)))),
          { concurrency: "unbounded" }
        )
      )
      yield* TestClock.adjust("10 millis")
      const errors = yield* Fiber.join(fiber)
      assert.strictEqual(yield* control.calls, 1)
      for (const error of errors) {
        assert.strictEqual(error._tag, "ModelError")
        assert.strictEqual(error._tag === "ModelError" ? error.reason : "", "Overloaded")
      }
      assert.isTrue(Option.isNone(yield* cache.get(key)))
      const retry = yield* Effect.fork(cache.getOrCompute(key, provider.generate(request)))
      yield* TestClock.adjust("10 millis")
      const answer = yield* Fiber.join(retry)
      assert.strictEqual(yield* control.calls, 2)
      assert.strictEqual(answer.text, "mock answer to: hello")
    })
  )

  it.scoped("an interrupted waiter leaves the flight running for the others; when all leave it stops", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const { control, provider } = yield* Mock.make({ latency: "100 millis" })
      const key = ResponseCache.key({ provider: provider.name, request })
      const first = yield* Effect.fork(cache.getOrCompute(key, provider.generate(request)))
      const second = yield* Effect.fork(cache.getOrCompute(key, provider.generate(request)))
      yield* TestClock.adjust("50 millis")
      yield* Fiber.interrupt(first)
      yield* TestClock.adjust("50 millis")
      const answer = yield* Fiber.join(second)
      assert.strictEqual(answer.text, "mock answer to: hello")
      assert.strictEqual(yield* control.calls, 1)
      assert.strictEqual(yield* control.interrupted, 0)

      const other: GenerateRequest = { prompt: "bye" }
      const otherKey = ResponseCache.key({ provider: provider.name, request: other })
      const a = yield* Effect.fork(cache.getOrCompute(otherKey, provider.generate(other)))
      const b = yield* Effect.fork(cache.getOrCompute(otherKey, provider.generate(other)))
      yield* TestClock.adjust("10 millis")
      yield* Fiber.interrupt(a)
      yield* Fiber.interrupt(b)
      assert.strictEqual(yield* control.interrupted, 1, "the provider call was cancelled")
      assert.strictEqual(yield* control.inFlight, 0)
      // A new caller starts a new flight rather than joining the cancelled one.
      const c = yield* Effect.fork(cache.getOrCompute(otherKey, provider.generate(other)))
      yield* TestClock.adjust("100 millis")
      assert.strictEqual((yield* Fiber.join(c)).text, "mock answer to: bye")
      assert.strictEqual(yield* control.calls, 3)
    })
  )

  it.scoped("entries expire after their TTL (TestClock); a per-entry TTL overrides the default", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ ttl: "10 seconds" })
      yield* cache.set("a", response("A"))
      yield* cache.set("b", response("B"), "1 minute")
      yield* TestClock.adjust("9 seconds")
      assert.isTrue(Option.isSome(yield* cache.get("a")))
      yield* TestClock.adjust("1 second")
      assert.isTrue(Option.isNone(yield* cache.get("a")))
      assert.isTrue(Option.isSome(yield* cache.get("b")))
      yield* TestClock.adjust("50 seconds")
      assert.isTrue(Option.isNone(yield* cache.get("b")))
      const computed = yield* cache.getOrComputeDetailed("a", Effect.succeed(response("A2")), { ttl: "5 seconds" })
      assert.strictEqual(computed.source, "computed")
      yield* TestClock.adjust("4 seconds")
      assert.strictEqual((yield* cache.getOrComputeDetailed("a", Effect.succeed(response("A3")))).value.text, "A2")
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* cache.getOrComputeDetailed("a", Effect.succeed(response("A3")))).value.text, "A3")
    })
  )

  it.scoped("stale entries: served only when allowed, within the grace, and when the computation fails", () =>
    Effect.gen(function* () {
      const name = uniqueName("stale")
      const cache = yield* makeCache({ ttl: "10 seconds", staleFor: "5 seconds", name })
      yield* cache.set("k", response("old"))
      yield* TestClock.adjust("12 seconds")
      assert.isTrue(Option.isNone(yield* cache.get("k")))
      const stale = yield* cache.get("k", { allowStale: true })
      assert.deepStrictEqual(stale, Option.some({ value: response("old"), stale: true }))
      const failing = Effect.fail(modelError("Overloaded", "down"))
      const served = yield* cache.getOrComputeDetailed("k", failing, { allowStale: true })
      assert.deepStrictEqual(served, { value: response("old"), source: "stale" })
      const refused = yield* Effect.flip(cache.getOrCompute("k", failing))
      assert.strictEqual(refused.reason, "Overloaded")
      yield* TestClock.adjust("3 seconds")
      assert.isTrue(Option.isNone(yield* cache.get("k", { allowStale: true })))
      assert.strictEqual(yield* countOf(cacheStale, name), 2)
      assert.strictEqual(yield* countOf(cacheHits, name), 0)
      assert.strictEqual(yield* countOf(cacheMisses, name), 4)
    })
  )

  it.scoped("capacity: the least recently used entry is evicted", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ capacity: 2 })
      yield* cache.set("a", response("A"))
      yield* cache.set("b", response("B"))
      assert.isTrue(Option.isSome(yield* cache.get("a")))
      yield* cache.set("c", response("C"))
      const [a, b, c] = yield* cache.getMany(["a", "b", "c"])
      assert.isTrue(a !== undefined && Option.isSome(a))
      assert.isTrue(b !== undefined && Option.isNone(b), "b was the least recently used")
      assert.isTrue(c !== undefined && Option.isSome(c))
    })
  )

  it.scoped("getMany / setMany keep the order of the keys; hits and misses are counted", () =>
    Effect.gen(function* () {
      const name = uniqueName("batch")
      const cache = yield* makeCache({ name })
      yield* cache.setMany([
        { key: "x", value: response("X") },
        { key: "y", value: response("Y"), ttl: "1 second" }
      ])
      const found = yield* cache.getMany(["y", "missing", "x"])
      assert.deepStrictEqual(
        found.map((o) => Option.map(o, (h) => h.value.text)),
        [Option.some("Y"), Option.none(), Option.some("X")]
      )
      assert.strictEqual(yield* countOf(cacheHits, name), 2)
      assert.strictEqual(yield* countOf(cacheMisses, name), 1)
    })
  )

  it.scoped("stream replays live in their own namespace; invalidate removes both", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const parts: ReadonlyArray<StreamPart> = [
        { _tag: "TextDelta", text: "hi " },
        { _tag: "TextDelta", text: "there" },
        {
          _tag: "Finish",
          finishReason: "stop",
          usage: { inputTokens: 1, outputTokens: 2, totalTokens: 3 },
          provider: "mock",
          model: "m"
        }
      ]
      yield* cache.setStream("k", parts)
      assert.isTrue(Option.isNone(yield* cache.get("k")), "a stream replay is not an answer")
      yield* cache.set("k", response("whole"))
      assert.deepStrictEqual(yield* cache.getStream("k"), Option.some({ value: parts, stale: false }))
      assert.strictEqual(Option.map(yield* cache.get("k"), (h) => h.value.text).pipe(Option.getOrNull), "whole")
      yield* cache.invalidate("k")
      assert.isTrue(Option.isNone(yield* cache.get("k")))
      assert.isTrue(Option.isNone(yield* cache.getStream("k")))
    })
  )

  it.scoped("the layer provides the service; closing its scope interrupts running computations", () =>
    Effect.gen(function* () {
      const { control, provider } = yield* Mock.make({ latency: "1 minute" })
      const exit = yield* Effect.scoped(
        Effect.gen(function* () {
          const cache = yield* ResponseCache.ResponseCache
          assert.strictEqual(cache.backend, "memory")
          const fiber = yield* Effect.fork(cache.getOrCompute("k", provider.generate(request)))
          yield* TestClock.adjust("1 second")
          return fiber
        }).pipe(Effect.provide(ResponseCache.layerMemory()))
      ).pipe(Effect.flatMap(Fiber.await))
      assert.isTrue(Exit.isFailure(exit))
      assert.strictEqual(yield* control.interrupted, 1)
    })
  )
})
