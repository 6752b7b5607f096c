import { assert, describe, it } from "@effect/vitest"
import { Cause, Clock, Context, Duration, Effect, Exit, Fiber, Layer, Metric, Scheduler, Scope } from "effect"
import { RateLimiter } from "effect/persistence"
import { TestClock } from "effect/testing"
import { isRetryable, shouldFallback } from "../src/AiError.js"
import type { OptionError } from "../src/Input.js"
import * as Metrics from "../src/Metrics.js"
import * as RateLimit from "../src/RateLimit.js"
import { maxOwnLabelChars } from "../src/stats/labels.js"
import { rejection, service, waitOf } from "./utils/rateLimit.js"

let counter = 0
const uniqueName = (label: string) => `rl-${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const outcomes = (key: string) =>
  Effect.gen(function* () {
    const count = (outcome: string) =>
      Effect.map(
        Metric.value(Metric.withAttributes(Metrics.rateLimitAcquisitions, { limit: key, outcome })),
        (s) => s.count
      )
    return {
      immediate: yield* count("immediate"),
      delayed: yield* count("delayed"),
      rejected: yield* count("rejected")
    }
  })

/** Runs `times` acquires one after another; all must pass without waiting (counted in `series`: the key's). */
const immediately = (limits: RateLimit.Service, key: string, times: number, tokens?: number, series = key) =>
  Effect.gen(function* () {
    const before = (yield* outcomes(series)).immediate
    for (let i = 0; i < times; i++) yield* limits.acquire(key, { tokens })
    assert.strictEqual((yield* outcomes(series)).immediate - before, times, "every acquire went through at once")
  })

const configError = (options: RateLimit.Options) =>
  Effect.gen(function* () {
    const exit = yield* Effect.exit(service(options))
    assert.isTrue(Exit.isFailure(exit), "the layer must fail")
    const error = Exit.findErrorOption(exit)
    assert.isTrue(error._tag === "Some", "a typed failure, not a defect")
    return (error as { readonly value: OptionError }).value
  })

describe("RateLimit (memory, TestClock)", () => {
  it.effect("requests per window: the 61st request of a minute waits until the window frees", () =>
    Effect.gen(function* () {
      const key = uniqueName("rpm")
      const limits = yield* service({ providers: { [key]: { requestsPerMinute: 60 } }, maxWait: "1 minute" })
      yield* TestClock.adjust("10 seconds")
      yield* immediately(limits, key, 60)
      yield* TestClock.adjust("20 seconds")
      const sixtyFirst = yield* Effect.forkChild(limits.acquire(key))
      yield* TestClock.adjust("39 seconds")
      assert.isUndefined(sixtyFirst.pollUnsafe(), "still waiting 59 s into the window")
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(sixtyFirst)
      assert.deepStrictEqual(yield* outcomes(key), { immediate: 60, delayed: 1, rejected: 0 })
      const wait = yield* Metric.value(Metric.withAttributes(Metrics.rateLimitWait, { limit: key }))
      assert.strictEqual(wait.count, 61)
      assert.strictEqual(wait.max, 40_000)
    })
  )

  it.effect("a limit's metrics add up across the limiters of one registry, as one series", () =>
    Effect.gen(function* () {
      const key = uniqueName("shared")
      const first = yield* service({ providers: { [key]: { requestsPerMinute: 100 } } })
      const second = yield* service({ providers: { [key]: { requestsPerMinute: 100 } } })
      for (let i = 0; i < 2; i++) yield* first.acquire(key)
      for (let i = 0; i < 3; i++) yield* second.acquire(key)
      assert.deepStrictEqual(yield* outcomes(key), { immediate: 5, delayed: 0, rejected: 0 })
      const wait = yield* Metric.value(Metric.withAttributes(Metrics.rateLimitWait, { limit: key }))
      assert.strictEqual(wait.count, 5)
    })
  )

  it.effect("a limiter counts in the metric registry it was built with, whatever the caller's", () =>
    Effect.gen(function* () {
      const key = uniqueName("registry")
      const registry: Metric.MetricRegistry = new Map()
      const limits = yield* service({ providers: { [key]: { requestsPerMinute: 100 } } }).pipe(
        Effect.provideService(Metric.MetricRegistry, registry)
      )
      yield* limits.acquire(key)
      yield* limits.acquire(key)
      const own = yield* outcomes(key).pipe(Effect.provideService(Metric.MetricRegistry, registry))
      assert.deepStrictEqual(own, { immediate: 2, delayed: 0, rejected: 0 })
      assert.deepStrictEqual(yield* outcomes(key), { immediate: 0, delayed: 0, rejected: 0 }, "not in the default one")
    })
  )

  it.effect("limiters built under different metric attributes keep separate series for one key", () =>
    Effect.gen(function* () {
      const key = uniqueName("attributes")
      const under = (app: string) => Effect.provideService(Metric.CurrentMetricAttributes, { app })
      const a = yield* service({ providers: { [key]: { requestsPerMinute: 100 } } }).pipe(under("a"))
      const b = yield* service({ providers: { [key]: { requestsPerMinute: 100 } } }).pipe(under("b"))
      yield* a.acquire(key)
      yield* b.acquire(key)
      yield* b.acquire(key)
      assert.strictEqual((yield* outcomes(key).pipe(under("a"))).immediate, 1)
      assert.strictEqual((yield* outcomes(key).pipe(under("b"))).immediate, 2)
    })
  )

  it.effect("7 requests per 2 seconds: 14 calls are spread over two windows", () =>
    Effect.gen(function* () {
      const key = uniqueName("seven")
      const limits = yield* service({ default: { requestsPerMinute: 7, window: "2 seconds" } })
      const start = yield* Clock.currentTimeMillis
      const finished: Array<number> = []
      const fiber = yield* Effect.forkChild(
        Effect.forEach(
          Array.from({ length: 14 }),
          () =>
            Effect.flatMap(limits.acquire(key), () =>
              Effect.map(Clock.currentTimeMillis, (now) => finished.push(now - start))
            ),
          { concurrency: "unbounded" }
        )
      )
      yield* TestClock.adjust("2 seconds")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual(finished, [...Array(7).fill(0), ...Array(7).fill(2000)])
    })
  )

  it.effect(
    "tokens per window: a request that does not fit waits; one larger than the budget waits for an empty window",
    () =>
      Effect.gen(function* () {
        const key = uniqueName("tpm")
        const limits = yield* service({ providers: { [key]: { tokensPerMinute: 1000 } }, maxWait: "2 minutes" })
        yield* immediately(limits, key, 2, 500)
        assert.strictEqual(yield* waitOf(limits, key, 100), 60_000)
        yield* TestClock.adjust("2 minutes")
        yield* immediately(limits, key, 1, 5000)
        // Without tokens only the request is counted: no token limit applies (and nothing waits).
        const noTokens = yield* service({ providers: { [key]: { tokensPerMinute: 1 } }, maxWait: 0 })
        for (let i = 0; i < 5; i++) yield* noTokens.acquire(key)
      })
  )

  it.effect("tokens per window: no window admits more than its budget (60-token calls, 100 a second)", () =>
    Effect.gen(function* () {
      const key = uniqueName("straddle")
      const limits = yield* service({
        providers: { [key]: { tokensPerMinute: 100, window: "1 second" } },
        maxWait: "1 minute"
      })
      const start = yield* Clock.currentTimeMillis
      const admitted: Array<number> = []
      const fiber = yield* Effect.forkChild(
        Effect.forEach(
          Array.from({ length: 6 }),
          () =>
            Effect.flatMap(limits.acquire(key, { tokens: 60 }), () =>
              Effect.map(Clock.currentTimeMillis, (now) => admitted.push(now - start))
            ),
          { concurrency: 1 }
        )
      )
      for (let i = 0; i < 10 && fiber.pollUnsafe() === undefined; i++) yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      // One 60-token call fits in a 100-token window; a second would make 120. (They went
      // 1, 2, 2, 1 a window when a call straddling a boundary left its first tokens behind.)
      assert.deepStrictEqual(admitted, [0, 1000, 2000, 3000, 4000, 5000])
    })
  )

  it.effect(
    "a window lasts its whole length however little was used: 60 tokens at 0 s and at 40 s of a 100-token minute",
    () =>
      Effect.gen(function* () {
        const key = uniqueName("window-length")
        const limits = yield* service({ providers: { [key]: { tokensPerMinute: 100 } }, maxWait: "5 minutes" })
        yield* TestClock.adjust("10 seconds")
        yield* immediately(limits, key, 1, 60)
        yield* TestClock.adjust("40 seconds")
        // The window ended when 60 tokens' share of it (36 s) had passed, and both went at once: 120 tokens in a minute.
        assert.strictEqual(yield* waitOf(limits, key, 60, "100 millis"), 20_000, "the second waits for the next window")
        yield* TestClock.adjust("59 seconds")
        assert.strictEqual(yield* waitOf(limits, key, 60, "100 millis"), 1_000, "and the third for the one after")
      })
  )

  it.effect("requests per window: 60 at 0 s leave 40 for the rest of the minute, not 100 after 36 s", () =>
    Effect.gen(function* () {
      const key = uniqueName("window-requests")
      const limits = yield* service({ providers: { [key]: { requestsPerMinute: 100 } }, maxWait: "5 minutes" })
      yield* immediately(limits, key, 60)
      yield* TestClock.adjust("40 seconds")
      yield* immediately(limits, key, 40)
      assert.strictEqual(yield* waitOf(limits, key, undefined, "100 millis"), 20_000)
      // The next window starts at 60 s and holds 100 with the one above.
      yield* immediately(limits, key, 99)
      assert.strictEqual(yield* waitOf(limits, key, undefined, "100 millis"), 60_000)
    })
  )

  it.effect("a waiter that gives its slot back frees it in its own window, not in a later caller's", () =>
    Effect.gen(function* () {
      const key = uniqueName("give-back")
      const limits = yield* service({ providers: { [key]: { requestsPerMinute: 2 } }, maxWait: "10 minutes" })
      const sent: Array<number> = []
      const send = Effect.forkChild(
        Effect.flatMap(limits.acquire(key), () => Effect.map(Clock.currentTimeMillis, (now) => sent.push(now))),
        { startImmediately: true }
      )
      yield* immediately(limits, key, 2)
      const [c, d, e] = [yield* send, yield* send, yield* send]
      yield* TestClock.adjust("10 seconds")
      yield* Fiber.interrupt(c)
      yield* TestClock.adjust("50 seconds")
      const [f, g] = [yield* send, yield* send]
      for (let i = 0; i < 10 && [d, e, f, g].some((x) => x.pollUnsafe() === undefined); i++) {
        yield* TestClock.adjust("1 minute")
      }
      yield* Fiber.joinAll([d, e, f, g])
      // With one running counter, the give-back moved e's slot into the second minute (where only d
      // went), and the third minute then sent e, f and g. c's place in the second minute goes to f,
      // the first caller after it (it went in the third minute, after e: the second sent d alone).
      assert.deepStrictEqual(sent, [60_000, 60_000, 120_000, 120_000])
    })
  )

  it.effect(
    "tokens per window hold under concurrent calls that yield anywhere: no two 60-token calls in one window",
    () =>
      Effect.gen(function* () {
        const key = uniqueName("straddle-concurrent")
        const limits = yield* service({
          providers: { [key]: { tokensPerMinute: 100, window: "1 second" } },
          maxWait: "1 minute"
        })
        const start = yield* Clock.currentTimeMillis
        const windows: Array<number> = []
        // A yield after every step: another call's tokens can land between any two store calls of one acquire.
        const fiber = yield* Effect.forkChild(
          Effect.forEach(
            Array.from({ length: 8 }),
            () =>
              Effect.flatMap(limits.acquire(key, { tokens: 60 }), () =>
                Effect.map(Clock.currentTimeMillis, (now) => windows.push(Math.floor((now - start) / 1000)))
              ),
            { concurrency: "unbounded" }
          ).pipe(Effect.provideService(Scheduler.MaxOpsBeforeYield, 1))
        )
        for (let i = 0; i < 1000 && fiber.pollUnsafe() === undefined; i++) yield* TestClock.adjust("100 millis")
        yield* Fiber.join(fiber)
        windows.sort((a, b) => a - b)
        assert.deepStrictEqual(windows, [...new Set(windows)], `windows of the calls: ${windows.join(", ")}`)
      })
  )

  it.effect(
    "requests and tokens: a call that waits for tokens is counted in the requests of the window it is sent in",
    () =>
      Effect.gen(function* () {
        const key = uniqueName("both")
        const limits = yield* service({
          providers: { [key]: { requestsPerMinute: 2, tokensPerMinute: 100 } },
          maxWait: "5 minutes"
        })
        const sent: Array<number> = []
        const send = (tokens: number) =>
          Effect.forkChild(
            Effect.flatMap(limits.acquire(key, { tokens }), () =>
              Effect.map(Clock.currentTimeMillis, (now) => sent.push(now))
            ),
            { startImmediately: true }
          )
        const start = yield* Clock.currentTimeMillis
        // The second call's request slot is free now, its tokens only in the next window.
        const calls = [yield* send(100), yield* send(100)]
        yield* TestClock.adjust("1 minute")
        calls.push(yield* send(0), yield* send(0))
        for (let i = 0; i < 5 && calls.some((f) => f.pollUnsafe() === undefined); i++)
          yield* TestClock.adjust("1 minute")
        yield* Fiber.joinAll(calls)
        // It went at 60 s with the two requests made then: three in one minute of two.
        assert.deepStrictEqual(
          sent.map((t) => t - start),
          [0, 60_000, 60_000, 120_000]
        )
      })
  )

  it.effect("token-bucket: slots refill evenly (one a second at 60 per minute)", () =>
    Effect.gen(function* () {
      const key = uniqueName("bucket")
      const limits = yield* service({ providers: { [key]: { requestsPerMinute: 60, algorithm: "token-bucket" } } })
      yield* immediately(limits, key, 60)
      assert.strictEqual(yield* waitOf(limits, key, undefined, "100 millis"), 1000)
    })
  )

  it.effect("limits are per key; `default` covers unlisted keys; no limits means no wait", () =>
    Effect.gen(function* () {
      const a = uniqueName("a")
      const b = uniqueName("b")
      const limits = yield* service({ providers: { [a]: { requestsPerMinute: 1 } } })
      yield* immediately(limits, a, 1)
      for (let i = 0; i < 100; i++) yield* limits.acquire(b)
      assert.strictEqual(limits.limitsOf(b), undefined)
      assert.deepStrictEqual(yield* outcomes(b), { immediate: 0, delayed: 0, rejected: 0 }, "no limit, nothing counted")

      const withDefault = yield* service({ default: { requestsPerMinute: 2 }, maxWait: "1 minute" })
      yield* immediately(withDefault, a, 2)
      yield* immediately(withDefault, b, 2)
      assert.strictEqual(yield* waitOf(withDefault, b), 60_000, "each key has its own counter")
    })
  )

  it.effect("keys like constructor or __proto__ are plain keys, not prototype members", () =>
    Effect.gen(function* () {
      const names = ["constructor", "toString", "__proto__", "hasOwnProperty"]
      const none = yield* service({ providers: { listed: { requestsPerMinute: 1 } } })
      for (const name of names) assert.strictEqual(none.limitsOf(name), undefined, name)
      const withDefault = yield* service({ default: { requestsPerMinute: 1 } })
      for (const name of names) assert.strictEqual(withDefault.limitsOf(name)?.requestsPerMinute, 1, name)
    })
  )

  it.effect("beyond maxWait: RateLimited at once with retryAfter, falls back, and the slot is given back", () =>
    Effect.gen(function* () {
      const key = uniqueName("maxwait")
      const limits = yield* service({ providers: { [key]: { requestsPerMinute: 2 } }, maxWait: "10 seconds" })
      yield* immediately(limits, key, 2)
      const error = yield* rejection(limits, key)
      assert.strictEqual(error.reason, "RateLimited")
      assert.strictEqual(error.provider, key)
      assert.strictEqual(Duration.toMillis(error.retryAfter!), 60_000)
      assert.isTrue(shouldFallback(error), "another provider takes the call")
      assert.isTrue(isRetryable(error))
      assert.deepStrictEqual(yield* outcomes(key), { immediate: 2, delayed: 0, rejected: 1 })
      // The refused call did not keep a reservation: the next window has both slots.
      yield* TestClock.adjust("1 minute")
      yield* immediately(limits, key, 2)
    })
  )

  it.effect("a refusal names the limit that refused it, requests or tokens, and its value (TestClock)", () =>
    Effect.gen(function* () {
      const key = uniqueName("which")
      const limits = yield* service({
        providers: { [key]: { requestsPerMinute: 3, tokensPerMinute: 100 } },
        maxWait: 0
      })
      yield* limits.acquire(key, { tokens: 80 })
      yield* TestClock.adjust("15 seconds")
      const tokens = yield* Effect.flip(limits.acquire(key, { tokens: 30 }))
      assert.deepStrictEqual([tokens.reason, tokens.rateLimit, tokens.limit], ["RateLimited", "tokens", 100])
      assert.strictEqual(Duration.toMillis(tokens.retryAfter!), 45_000)
      assert.include(tokens.message, "100 tokens per")
      yield* limits.acquire(key, { tokens: 10 })
      yield* limits.acquire(key, { tokens: 10 })
      // Both limits full: the requests' (a tie in wait) is named.
      const requests = yield* Effect.flip(limits.acquire(key, { tokens: 10 }))
      assert.deepStrictEqual([requests.rateLimit, requests.limit], ["requests", 3])
      assert.strictEqual(Duration.toMillis(requests.retryAfter!), 45_000)
    })
  )

  it.effect("maxWait 0 never waits; an interrupted waiter gives its slot back", () =>
    Effect.gen(function* () {
      const key = uniqueName("zero")
      const never = yield* service({ providers: { [key]: { requestsPerMinute: 1 } }, maxWait: 0 })
      yield* immediately(never, key, 1)
      assert.strictEqual((yield* rejection(never, key)).reason, "RateLimited")

      const other = uniqueName("interrupt")
      const limits = yield* service({ providers: { [other]: { requestsPerMinute: 1 } }, maxWait: "5 minutes" })
      yield* immediately(limits, other, 1)
      const waiting = yield* Effect.forkChild(limits.acquire(other))
      yield* TestClock.adjust("10 seconds")
      yield* Fiber.interrupt(waiting)
      // Had the interrupted call kept its slot, the next would wait for the window after it (110 s).
      assert.strictEqual(yield* waitOf(limits, other), 50_000)
    })
  )

  it.effect(
    "a store that fails with onStoreError reject refuses with a bounded retryAfter (the policy's, 1 s by default)",
    () =>
      Effect.gen(function* () {
        const memory = Context.get(yield* Layer.build(RateLimiter.layerStoreMemory), RateLimiter.RateLimiterStore)
        const down: RateLimiter.RateLimiterStore["Service"] = {
          ...memory,
          fixedWindow: () =>
            Effect.fail(
              new RateLimiter.RateLimiterError({ reason: new RateLimiter.RateLimitStoreError({ message: "down" }) })
            )
        }
        const key = uniqueName("down")
        const options = { providers: { [key]: { requestsPerMinute: 10 } } }
        const closed = yield* RateLimit.make(options, down, { onStoreError: "reject" })
        const error = yield* rejection(closed, key)
        assert.strictEqual(error.reason, "RateLimited")
        assert.deepStrictEqual(error.retryAfter, Duration.seconds(1))
        const own = yield* RateLimit.make(options, down, { onStoreError: "reject", retryAfter: "250 millis" })
        assert.deepStrictEqual((yield* rejection(own, key)).retryAfter, Duration.millis(250))
        for (const retryAfter of [-1, Number.NaN, 0, "soon"]) {
          const refused = yield* Effect.flip(
            RateLimit.make(options, down, { onStoreError: "reject", retryAfter: retryAfter as never })
          )
          assert.strictEqual(refused.path, "retryAfter", String(retryAfter))
        }
      })
  )

  it.effect("a caller interrupted during the store's round trip gives back what the store already counted", () =>
    Effect.gen(function* () {
      // A store whose answer arrives 10 ms after it has counted the call, as Redis's does.
      const memory = Context.get(yield* Layer.build(RateLimiter.layerStoreMemory), RateLimiter.RateLimiterStore)
      const slow: RateLimiter.RateLimiterStore["Service"] = {
        ...memory,
        fixedWindow: (o) => Effect.tap(memory.fixedWindow(o), () => Effect.sleep("10 millis"))
      }
      const key = uniqueName("round-trip")
      const limits = yield* RateLimit.make(
        { providers: { [key]: { requestsPerMinute: 1, tokensPerMinute: 100 } }, maxWait: 0 },
        slow
      )
      const interrupted = yield* Effect.forkChild(limits.acquire(key, { tokens: 100 }))
      yield* TestClock.adjust("5 millis")
      // The interruption waits for the store's answer (it is bounded), then gives the slots back.
      const interrupting = yield* Effect.forkChild(Fiber.interrupt(interrupted))
      yield* TestClock.adjust("100 millis")
      yield* Fiber.join(interrupting)
      assert.isTrue(Exit.hasInterrupts(yield* Fiber.await(interrupted)), "the interrupted call was not admitted")
      // The interrupted call was never sent: the window's request and tokens are still free.
      const next = yield* Effect.forkChild(Effect.exit(limits.acquire(key, { tokens: 100 })))
      yield* TestClock.adjust("100 millis")
      const exit = yield* Fiber.join(next)
      assert.isTrue(Exit.isSuccess(exit), String(Exit.isFailure(exit) && Cause.pretty(exit.cause)))
    })
  )

  it.effect(
    "a per-call token count is checked: NaN, negative or infinite tokens are InvalidRequest, and the limit still holds",
    () =>
      Effect.gen(function* () {
        const key = uniqueName("nan")
        const limits = yield* service({ providers: { [key]: { tokensPerMinute: 100 } }, maxWait: 0 })
        for (const tokens of [Number.NaN, -1, Number.POSITIVE_INFINITY, 1e300]) {
          const error = yield* rejection(limits, key, tokens)
          assert.strictEqual(error.reason, "InvalidRequest")
          assert.strictEqual(error.field, "tokens")
          assert.isFalse(shouldFallback(error))
        }
        yield* immediately(limits, key, 1, 100)
        assert.strictEqual(
          (yield* rejection(limits, key, 1)).reason,
          "RateLimited",
          "the token limit is still in force"
        )
      })
  )

  it.effect("invalid limits fail the layer with an OptionError naming the field", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [RateLimit.Options, string]> = [
        [{ default: { requestsPerMinute: 0 } }, "default.requestsPerMinute"],
        [{ default: { requestsPerMinute: 1.5 } }, "default.requestsPerMinute"],
        [{ default: { requestsPerMinute: Number.NaN } }, "default.requestsPerMinute"],
        [{ providers: { p: { tokensPerMinute: -5 } } }, "providers.p.tokensPerMinute"],
        [{ default: { requestsPerMinute: 1, window: 0 } }, "default.window"],
        [{ default: { requestsPerMinute: 1, window: "-1 minute" } }, "default.window"],
        [{ default: { requestsPerMinute: 1, window: Number.NaN } }, "default.window"],
        [{ default: { requestsPerMinute: 1, window: "soon" as Duration.Input } }, "default.window"],
        // Under a millisecond the limiter counts a window of one: 10 per 0.5 ms was 10 per 1 ms, said nowhere.
        [{ default: { requestsPerMinute: 1, window: 0.5 } }, "default.window"],
        [
          { providers: { p: { requestsPerMinute: 1, window: "999 micros", algorithm: "token-bucket" } } },
          "providers.p.window"
        ],
        [{ providers: { p: { requestPerMinute: 5 } as RateLimit.Limits } }, "providers.p.requestPerMinute"],
        [{ default: { requestsPerMinute: 1, algorithm: "leaky" as "token-bucket" } }, "default.algorithm"],
        [{ maxWait: -1 }, "maxWait"],
        [{ maxWait: Number.NaN }, "maxWait"],
        // null is a wrong value, not an absent one: it was read as the default (or threw, for providers).
        [{ maxWait: null } as never, "maxWait"],
        [{ default: { requestsPerMinute: 1, window: null } } as never, "default.window"],
        [{ default: { requestsPerMinute: 1, algorithm: null } } as never, "default.algorithm"],
        [{ providers: null } as never, "providers"],
        // An array is no map of keys (it limited keys "0", "1"...) nor limits (it limited nothing).
        [{ providers: [{ requestsPerMinute: 1 }] } as never, "providers"],
        [{ default: [] } as never, "default"],
        [{ providers: { p: [] } } as never, "providers.p"],
        // The name of the series the keys past the bound share: a listed key of that name would share it.
        [{ providers: { "(other)": { requestsPerMinute: 1 } } }, "providers.(other)"],
        // No options object at all was a defect (a TypeError from Object.keys).
        [null as never, "options"],
        [{ maxwait: 0 } as RateLimit.Options, "maxwait"],
        [{ prefix: "p:" } as RateLimit.Options, "prefix"],
        // Absurdly large: no exact integer, no wait anyone means (Infinity says "as long as it takes").
        [{ providers: { p: { requestsPerMinute: 1e300 } } }, "providers.p.requestsPerMinute"],
        [{ default: { tokensPerMinute: 2 ** 53 } }, "default.tokensPerMinute"],
        [{ maxWait: 1e300 }, "maxWait"],
        [{ maxWait: Duration.millis(1e300) }, "maxWait"],
        [{ maxWait: Duration.nanos(10n ** 30n) }, "maxWait"],
        [{ maxWait: "999999999999999999 weeks" }, "maxWait"]
      ]
      for (const [options, path] of cases) {
        const error = yield* configError(options)
        assert.strictEqual(error._tag, "OptionError")
        assert.strictEqual(error.path, path, JSON.stringify(options))
      }
    })
  )

  it.effect("make refuses the Redis layer's options too, naming the field (they were accepted and ignored)", () =>
    Effect.gen(function* () {
      for (const field of ["prefix", "onStoreError", "redis"]) {
        const options = {
          default: { requestsPerMinute: 1 },
          [field]: field === "redis" ? {} : "x"
        } as RateLimit.Options
        const exit = yield* Effect.exit(
          Effect.flatMap(RateLimiter.RateLimiterStore, (store) => RateLimit.make(options, store)).pipe(
            Effect.provide(RateLimiter.layerStoreMemory)
          )
        )
        assert.isTrue(Exit.isFailure(exit))
        const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : undefined
        assert.strictEqual(error?._tag === "Some" && error.value.path, field)
      }
    })
  )

  it.effect(
    "a key holding a lone surrogate is refused naming it: as a metric label or a Redis key it would be another such key",
    () =>
      Effect.gen(function* () {
        // In UTF-8 (a scrape, a Redis command) each lone surrogate is U+FFFD: these three were one key.
        for (const key of ["p-\uD800", "p-\uDC00", "p-\uDBFF\uDBFF"]) {
          const error = yield* configError({ providers: { [key]: { requestsPerMinute: 1 } } })
          assert.strictEqual(error.path, `providers.${key}`)
          assert.include(error.message, "surrogate")
          assert.include(error.message, JSON.stringify(key), "the message tells the keys apart")
        }
        // A pair is one character: it has its UTF-8 form.
        const paired = yield* service({ providers: { "p-😀": { requestsPerMinute: 1 } } })
        assert.strictEqual(paired.limitsOf("p-😀")?.requestsPerMinute, 1)
      })
  )

  it.effect("window and maxWait take any duration form", () =>
    Effect.gen(function* () {
      const key = uniqueName("window")
      const limits = yield* service({
        providers: { [key]: { requestsPerMinute: 1, window: Duration.seconds(10) } },
        maxWait: Number.POSITIVE_INFINITY
      })
      assert.deepStrictEqual(limits.limitsOf(key)?.window, Duration.seconds(10))
      yield* immediately(limits, key, 1)
      assert.strictEqual(yield* waitOf(limits, key), 10_000)
      const fromText = yield* service({ default: { requestsPerMinute: 1, window: "2 seconds" } })
      assert.deepStrictEqual(fromText.limitsOf("any")?.window, Duration.seconds(2))
    })
  )
})

describe("RateLimit: metric series and the layer's life", () => {
  it.effect("a closed layer's series leave the registry; a new layer's counts start from zero", () =>
    Effect.gen(function* () {
      const series = () =>
        Effect.map(Metric.snapshot, (all) =>
          all
            .filter((m) => m.id === Metrics.rateLimitAcquisitions.id)
            .map((m) => [m.attributes?.["limit"], m.attributes?.["outcome"], (m.state as { count: number }).count])
        )
      const use = (calls: number) =>
        Effect.gen(function* () {
          const limits = yield* RateLimit.RateLimits
          for (let i = 0; i < calls; i++) yield* limits.acquire("main")
          return yield* series()
        }).pipe(Effect.provide(RateLimit.layerMemory({ providers: { main: { requestsPerMinute: 100 } } })))
      assert.deepStrictEqual(yield* use(3), [
        ["main", "immediate", 3],
        ["main", "delayed", 0],
        ["main", "rejected", 0]
      ])
      assert.deepStrictEqual(yield* series(), [], "closing the layer removes its series")
      assert.deepStrictEqual((yield* use(1))[0], ["main", "immediate", 1])
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
  )

  it.effect("10,000 keys under `default` do not make 10,000 series: the first 32 have theirs, the rest one", () =>
    Effect.gen(function* () {
      const listed = uniqueName("listed")
      const limits = yield* service({
        providers: { [listed]: { requestsPerMinute: 100 } },
        default: { requestsPerMinute: 100 }
      })
      for (let i = 0; i < 10_000; i++) yield* limits.acquire(`user-${i}`)
      yield* limits.acquire(listed)
      const snapshot = yield* Metric.snapshot
      const limitsSeen = new Set(
        snapshot
          .filter((m) => m.id === Metrics.rateLimitAcquisitions.id || m.id === Metrics.rateLimitWait.id)
          .map((m) => m.attributes?.["limit"])
      )
      const first = Array.from({ length: 32 }, (_, i) => `user-${i}`)
      assert.deepStrictEqual([...limitsSeen].sort(), [...first, "(other)", listed].sort())
      assert.deepStrictEqual(yield* outcomes("user-31"), { immediate: 1, delayed: 0, rejected: 0 })
      assert.deepStrictEqual(yield* outcomes("(other)"), { immediate: 10_000 - 32, delayed: 0, rejected: 0 })
      assert.deepStrictEqual(yield* outcomes(listed), { immediate: 1, delayed: 0, rejected: 0 })
      // A key with series keeps them, and the others stay together.
      yield* limits.acquire("user-0")
      yield* limits.acquire("user-9999")
      assert.strictEqual((yield* outcomes("user-0")).immediate, 2)
      assert.strictEqual((yield* outcomes("(other)")).immediate, 10_000 - 32 + 1)
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
  )

  it.effect("a very long key under `default` is limited as any other, its series counted under (other)", () =>
    Effect.gen(function* () {
      const limits = yield* service({ default: { requestsPerMinute: 1 }, maxWait: 0 })
      // A user id of a megabyte was the label of its series: every scrape carried it whole.
      const long = `user-${"x".repeat(1_000_000)}`
      const longer = `${long}y`
      yield* limits.acquire(long)
      yield* limits.acquire(longer)
      const refused = yield* Effect.flip(limits.acquire(long))
      assert.strictEqual(refused.reason, "RateLimited")
      const labels = (yield* Metric.snapshot)
        .filter((m) => m.id === Metrics.rateLimitAcquisitions.id || m.id === Metrics.rateLimitWait.id)
        .map((m) => String(m.attributes?.["limit"]))
      assert.isTrue(
        labels.every((label) => label.length <= maxOwnLabelChars),
        "no label past the bound"
      )
      assert.deepStrictEqual(yield* outcomes("(other)"), { immediate: 2, delayed: 0, rejected: 1 })
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
  )

  it.effect("makeScoped: its series leave the registry with its scope; make's stay", () =>
    Effect.gen(function* () {
      const key = uniqueName("scoped")
      const store = yield* Effect.provide(Effect.service(RateLimiter.RateLimiterStore), RateLimiter.layerStoreMemory)
      const options = { default: { requestsPerMinute: 100 } }
      const scope = yield* Scope.make()
      const limits = yield* Scope.provide(RateLimit.makeScoped(options, store), scope)
      yield* limits.acquire(key)
      assert.deepStrictEqual(yield* outcomes(key), { immediate: 1, delayed: 0, rejected: 0 })
      yield* Scope.close(scope, Exit.void)
      const series = (yield* Metric.snapshot).filter((m) => m.attributes?.["limit"] === key)
      assert.deepStrictEqual(series, [], "closing its scope removes them")
      // Built again, its counts start from zero.
      const again = yield* Scope.provide(RateLimit.makeScoped(options, store), yield* Scope.make())
      yield* again.acquire(key)
      assert.deepStrictEqual(yield* outcomes(key), { immediate: 1, delayed: 0, rejected: 0 })
      const invalid = yield* Effect.flip(
        Effect.scoped(RateLimit.makeScoped({ default: { requestsPerMinute: -1 } }, store))
      )
      assert.strictEqual(invalid._tag, "OptionError")
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
  )

  it.effect("a key first used after its layer closed never enters the registry", () =>
    Effect.gen(function* () {
      const key = uniqueName("late")
      const scope = yield* Scope.make()
      const limits = yield* Scope.provide(service({ providers: { [key]: { requestsPerMinute: 100 } } }), scope)
      yield* Scope.close(scope, Exit.void)
      // A call still running when the layer closed (a disposed runtime's last request).
      yield* limits.acquire(key)
      const series = (yield* Metric.snapshot).filter((m) => m.attributes?.["limit"] === key)
      assert.deepStrictEqual(series, [], "nothing would remove it: exporters showed it for good")
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
  )
})
