import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Duration, Effect, Exit, Fiber, Layer, Metric, Option, Ref, TestClock } from "effect"
import { rateLimitDelayed } from "../src/internal/resilienceMetrics.js"
import * as RateLimit from "../src/RateLimit.js"
import { skipRedis, skipReason, startRedis } from "./utils/redis.js"

let counter = 0
const uniqueName = (label: string) => `rl-${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const service = (options: RateLimit.MakeOptions) => Effect.provide(RateLimit.RateLimits, RateLimit.layerMemory(options))

/** Builds a scoped layer in the test's scope (Effect.provide would close it right away). */
const scopedLayer = (layer: Layer.Layer<RateLimit.RateLimits>) =>
  Effect.map(Layer.build(layer), Context.get(RateLimit.RateLimits))

const waits = (limits: RateLimit.Service, provider: string, times: number, tokens = 0) =>
  Effect.forEach(Array.from({ length: times }), () => Effect.map(limits.acquire(provider, tokens), Duration.toMillis))

describe("RateLimit (memory, TestClock)", () => {
  it.effect("requests per minute: the 61st request of a minute waits until the window frees", () =>
    Effect.gen(function* () {
      const provider = uniqueName("rpm")
      const limits = yield* service({ providers: { [provider]: { requestsPerMinute: 60 } } })
      yield* TestClock.adjust("10 seconds")
      assert.deepStrictEqual(yield* waits(limits, provider, 60), Array(60).fill(0))
      yield* TestClock.adjust("20 seconds")
      const sixtyFirst = yield* Effect.fork(limits.acquire(provider))
      yield* TestClock.adjust("39 seconds")
      assert.isTrue(Option.isNone(yield* Fiber.poll(sixtyFirst)), "still waiting 59 s into the window")
      yield* TestClock.adjust("1 second")
      const waited = yield* Fiber.join(sixtyFirst)
      assert.strictEqual(Duration.toMillis(waited), 40_000)
      const delayed = yield* Metric.value(
        Metric.tagged(Metric.tagged(rateLimitDelayed, "provider", provider), "limit", "rpm")
      )
      assert.strictEqual(delayed.count, 1)
    })
  )

  it.effect("tokens per minute: a request that does not fit waits for the next window", () =>
    Effect.gen(function* () {
      const provider = uniqueName("tpm")
      const limits = yield* service({ providers: { [provider]: { tokensPerMinute: 1000 } } })
      assert.deepStrictEqual(yield* waits(limits, provider, 2, 500), [0, 0])
      const third = yield* Effect.fork(limits.acquire(provider, 100))
      yield* TestClock.adjust("59 seconds")
      assert.isTrue(Option.isNone(yield* Fiber.poll(third)))
      yield* TestClock.adjust("1 second")
      assert.strictEqual(Duration.toMillis(yield* Fiber.join(third)), 60_000)
      // A request larger than the whole budget still goes once a window is empty.
      yield* TestClock.adjust("2 minutes")
      assert.deepStrictEqual(yield* waits(limits, provider, 1, 5000), [0])
    })
  )

  it.effect("token-bucket: slots refill evenly (one a second at 60 rpm)", () =>
    Effect.gen(function* () {
      const provider = uniqueName("bucket")
      const limits = yield* service({
        providers: { [provider]: { requestsPerMinute: 60, algorithm: "token-bucket" } }
      })
      yield* waits(limits, provider, 60)
      const next = yield* Effect.fork(limits.acquire(provider))
      yield* TestClock.adjust("1 second")
      assert.strictEqual(Duration.toMillis(yield* Fiber.join(next)), 1000)
    })
  )

  it.effect("limits are per provider; `default` covers unlisted providers; no limits means no wait", () =>
    Effect.gen(function* () {
      const a = uniqueName("a")
      const b = uniqueName("b")
      const limits = yield* service({ providers: { [a]: { requestsPerMinute: 1 } } })
      assert.deepStrictEqual(yield* waits(limits, a, 1), [0])
      assert.deepStrictEqual(yield* waits(limits, b, 100), Array(100).fill(0))
      assert.strictEqual(limits.limitsOf(b), undefined)

      const withDefault = yield* service({ default: { requestsPerMinute: 2 } })
      assert.deepStrictEqual(yield* waits(withDefault, a, 2), [0, 0])
      assert.deepStrictEqual(yield* waits(withDefault, b, 2), [0, 0], "each provider has its own counter")
      const third = yield* Effect.fork(withDefault.acquire(b))
      yield* TestClock.adjust("1 minute")
      assert.strictEqual(Duration.toMillis(yield* Fiber.join(third)), 60_000)
    })
  )

  it.effect("provider names like constructor or __proto__ are plain names, not prototype members", () =>
    Effect.gen(function* () {
      const names = ["constructor", "toString", "__proto__", "hasOwnProperty"]
      const none = yield* service({ providers: { listed: { requestsPerMinute: 1 } } })
      for (const name of names) assert.strictEqual(none.limitsOf(name), undefined, name)
      const fallback = { requestsPerMinute: 1 }
      const withDefault = yield* service({ default: fallback })
      for (const name of names) assert.deepStrictEqual(withDefault.limitsOf(name), fallback, name)
      assert.deepStrictEqual(yield* waits(withDefault, "constructor", 1), [0])
      const second = yield* Effect.fork(withDefault.acquire("constructor"))
      yield* TestClock.adjust("1 minute")
      assert.strictEqual(Duration.toMillis(yield* Fiber.join(second)), 60_000, "the default limit applies")
    })
  )

  it.effect("withLimit runs the effect only after the wait; the wait happens before the effect's own time", () =>
    Effect.gen(function* () {
      const provider = uniqueName("with")
      const limits = yield* service({ providers: { [provider]: { requestsPerMinute: 1 } } })
      const started = yield* Ref.make<ReadonlyArray<number>>([])
      const call = limits.withLimit(
        provider,
        10,
        Effect.flatMap(TestClock.currentTimeMillis, (now) => Ref.update(started, (all) => [...all, now]))
      )
      const t0 = yield* TestClock.currentTimeMillis
      const fiber = yield* Effect.fork(Effect.all([call, call, call], { concurrency: "unbounded" }))
      yield* TestClock.adjust("2 minutes")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual(
        (yield* Ref.get(started)).map((t) => t - t0),
        [0, 60_000, 120_000]
      )
    })
  )

  it.effect("invalid limits are refused when the layer is built", () =>
    Effect.gen(function* () {
      const exit = yield* Effect.exit(service({ default: { requestsPerMinute: 0 } }))
      assert.isTrue(exit._tag === "Failure")
      const negative = yield* Effect.exit(service({ default: { requestsPerMinute: 1, window: "-1 minute" } }))
      assert.isTrue(Exit.isFailure(negative))
      if (Exit.isFailure(negative)) assert.include(Cause.pretty(negative.cause), "cannot be negative")
    })
  )

  it.effect("window takes any Duration.DurationInput and decodes to a Duration", () =>
    Effect.gen(function* () {
      const provider = uniqueName("window")
      const limits = yield* service({
        providers: { [provider]: { requestsPerMinute: 1, window: Duration.seconds(10) } }
      })
      assert.deepStrictEqual(limits.limitsOf(provider)?.window, Duration.seconds(10))
      assert.deepStrictEqual(yield* waits(limits, provider, 1), [0])
      const second = yield* Effect.fork(limits.acquire(provider))
      yield* TestClock.adjust("10 seconds")
      assert.strictEqual(Duration.toMillis(yield* Fiber.join(second)), 10_000)
      const fromText = yield* service({ default: { window: "2 seconds" } })
      assert.deepStrictEqual(fromText.limitsOf("any")?.window, Duration.seconds(2))
    })
  )
})

describe.skipIf(skipRedis)(
  `RateLimit (Redis store; needs redis-server; ${skipRedis ? skipReason : "apt-get install -y redis-server if missing"})`,
  () => {
    it.live("two processes (two clients) share one limit through Redis", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const prefix = `${uniqueName("shared")}:`
          const options: RateLimit.MakeOptions = { default: { requestsPerMinute: 2, window: "500 millis" } }
          const one = yield* scopedLayer(RateLimit.layerRedis(options, { url: server.url, prefix }))
          const two = yield* scopedLayer(RateLimit.layerRedis(options, { url: server.url, prefix }))
          assert.deepStrictEqual(yield* waits(one, "p", 2), [0, 0])
          const [elapsed, waited] = yield* Effect.timed(two.acquire("p"))
          const ms = Duration.toMillis(waited)
          assert.isTrue(ms > 300 && ms <= 500, `the other process waited ${ms} ms`)
          assert.isTrue(Duration.toMillis(elapsed) >= 300)
          // another process with another prefix has its own counters
          const other = yield* scopedLayer(
            RateLimit.layerRedis(options, { url: server.url, prefix: `${prefix}other:` })
          )
          assert.deepStrictEqual(yield* waits(other, "p", 2), [0, 0])
        })
      )
    )

    it.live("with Redis down the limiter fails open, fast", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const limits = yield* scopedLayer(
            RateLimit.layerRedis(
              { default: { requestsPerMinute: 1 } },
              { url: server.url, prefix: `${uniqueName("down")}:`, storeTimeout: "50 millis" }
            )
          )
          assert.deepStrictEqual(yield* waits(limits, "p", 1), [0])
          const limited = yield* Effect.timeoutOption(limits.acquire("p"), "200 millis")
          assert.isTrue(Option.isNone(limited), "with Redis up the second request of the minute waits")
          yield* server.kill
          const [elapsed, results] = yield* Effect.timed(waits(limits, "p", 5))
          assert.deepStrictEqual(results, [0, 0, 0, 0, 0])
          // Fails open: each call gives up on the store after 50 ms instead of waiting out the
          // minute. The bound leaves room for a loaded CI machine.
          assert.isTrue(Duration.toMillis(elapsed) < 2000, `took ${Duration.toMillis(elapsed)} ms`)
        })
      )
    )
  }
)
