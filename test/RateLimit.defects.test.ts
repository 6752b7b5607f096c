import { assert, describe, it } from "@effect/vitest"
import { Clock, Context, Duration, Effect, Exit, Fiber, Layer, Scheduler } from "effect"
import { RateLimiter, Redis as PersistenceRedis } from "effect/persistence"
import { TestClock } from "effect/testing"
import * as RateLimit from "../src/RateLimit.js"
import { withAlignedFixedWindow } from "../src/RateLimit/memory.js"
import * as RateLimitRedis from "../src/RateLimit/Redis.js"
import * as Redis from "../src/Redis.js"
import { effectMemoryStore, placements, rejection, service, waitOf } from "./utils/rateLimit.js"
import { healthyClient, skipRedis, skipReason, startRedis } from "./utils/redis.js"

let counter = 0
const uniqueName = (label: string) => `rld-${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const waiting = (limits: RateLimit.Service, key: string, tokens?: number) =>
  Effect.forkChild(limits.acquire(key, { tokens }), { startImmediately: true })

describe("RateLimit: give-backs free their own window, wherever it is", () => {
  it.effect("a waiter interrupted in a middle window frees that window for the next caller", () =>
    Effect.gen(function* () {
      const key = uniqueName("middle")
      const limits = yield* service({ providers: { [key]: { requestsPerMinute: 1 } }, maxWait: "3 minutes" })
      yield* limits.acquire(key)
      const second = yield* waiting(limits, key) // the window from 60 s
      const third = yield* waiting(limits, key) // the window from 120 s
      yield* Effect.yieldNow
      yield* Fiber.interrupt(second)
      // The window from 60 s is empty again: the next caller goes there, not after the third.
      assert.strictEqual(yield* waitOf(limits, key), 60_000)
      yield* TestClock.adjust("5 minutes")
      yield* Fiber.join(third)
    })
  )

  it.effect("tokens given back in a middle window are taken by a later call that fits there", () =>
    Effect.gen(function* () {
      const key = uniqueName("middle-tokens")
      const limits = yield* service({ providers: { [key]: { tokensPerMinute: 100 } }, maxWait: "3 minutes" })
      yield* limits.acquire(key, { tokens: 100 })
      const sixty = yield* waiting(limits, key, 60) // the next window: 60 of 100
      const forty = yield* waiting(limits, key, 40) // the next window: 100
      const last = yield* waiting(limits, key, 60) // the window after
      yield* Effect.yieldNow
      yield* Fiber.interrupt(sixty)
      // 60 of the next window are free again: 60 tokens wait for it (60 s), not for the one after the last (180 s).
      assert.strictEqual(yield* waitOf(limits, key, 60), 60_000)
      yield* TestClock.adjust("5 minutes")
      yield* Fiber.joinAll([forty, last])
    })
  )
})

describe("RateLimit: a token bucket's rate holds when a waiter in the middle of its queue leaves", () => {
  it.effect("a bucket of 1 every 3 s: the waiter behind an interrupted one and the next caller never go at once", () =>
    Effect.gen(function* () {
      const key = uniqueName("bucket-middle")
      const limits = yield* service({
        providers: { [key]: { requestsPerMinute: 1, window: "3 seconds", algorithm: "token-bucket" } },
        maxWait: "1 minute"
      })
      const sent: Array<number> = []
      const timed = Effect.andThen(
        limits.acquire(key),
        Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sync(() => sent.push(now)))
      )
      yield* timed
      const middle = yield* Effect.forkChild(timed, { startImmediately: true }) // its slot at 3 s
      const behind = yield* Effect.forkChild(timed, { startImmediately: true }) // its slot at 6 s
      yield* Effect.yieldNow
      yield* Fiber.interrupt(middle)
      const next = yield* Effect.forkChild(timed, { startImmediately: true })
      yield* TestClock.adjust("1 minute")
      yield* Fiber.joinAll([behind, next])
      sent.sort((a, b) => a - b)
      for (let i = 1; i < sent.length; i++) {
        assert.isAtLeast(sent[i]! - sent[i - 1]!, 3_000, `two calls within 3 s on a bucket of 1: ${sent.join(", ")}`)
      }
      // The last one's give-back is exact: a refused caller leaves the next slot free.
      const last = uniqueName("bucket-last")
      const refusing = yield* service({
        providers: { [last]: { requestsPerMinute: 1, window: "3 seconds", algorithm: "token-bucket" } },
        maxWait: "1 second"
      })
      yield* refusing.acquire(last)
      for (let i = 0; i < 3; i++) {
        const refused = yield* rejection(refusing, last)
        assert.strictEqual(refused.retryAfter && Duration.toMillis(refused.retryAfter), 3_000)
      }
    })
  )
})

describe("RateLimit.make on a store of its own: exact fixed windows", () => {
  it.effect("60 tokens at 0 s and at 40 s of a 100-token minute: the second waits for the next minute", () =>
    Effect.gen(function* () {
      const key = uniqueName("own-store")
      const limits = yield* RateLimit.make(
        { providers: { [key]: { tokensPerMinute: 100 } }, maxWait: "5 minutes" },
        yield* effectMemoryStore
      )
      yield* limits.acquire(key, { tokens: 60 })
      yield* TestClock.adjust("40 seconds")
      // effect's counter ended the window after 36 s (60 tokens' share) and both went in one minute.
      assert.strictEqual(yield* waitOf(limits, key, 60, "100 millis"), 20_000)
    })
  )

  it.effect("requests: 60 at 0 s and 40 at 40 s fill a 100-request minute; the 101st waits for the next", () =>
    Effect.gen(function* () {
      const key = uniqueName("own-store-requests")
      const limits = yield* RateLimit.make(
        { providers: { [key]: { requestsPerMinute: 100 } }, maxWait: "5 minutes" },
        yield* effectMemoryStore
      )
      for (let i = 0; i < 60; i++) yield* limits.acquire(key)
      yield* TestClock.adjust("40 seconds")
      for (let i = 0; i < 40; i++) yield* limits.acquire(key)
      assert.strictEqual(yield* waitOf(limits, key, undefined, "100 millis"), 20_000)
      // The minute from 60 s holds 99 more, then the next waits for the minute after.
      for (let i = 0; i < 99; i++) yield* limits.acquire(key)
      assert.strictEqual(yield* waitOf(limits, key, undefined, "100 millis"), 60_000)
    })
  )
  it.effect("concurrent calls that yield anywhere: no two 60-token calls in one 100-token window", () =>
    Effect.gen(function* () {
      const key = uniqueName("own-store-concurrent")
      const limits = yield* RateLimit.make(
        { providers: { [key]: { tokensPerMinute: 100, window: "1 second" } }, maxWait: "1 minute" },
        yield* effectMemoryStore
      )
      const windows: Array<number> = []
      const fiber = yield* Effect.forkChild(
        Effect.forEach(
          Array.from({ length: 8 }),
          () =>
            Effect.flatMap(limits.acquire(key, { tokens: 60 }), () =>
              Effect.map(Clock.currentTimeMillis, (now) => windows.push(Math.floor(now / 1000)))
            ),
          { concurrency: "unbounded" }
        ).pipe(Effect.provideService(Scheduler.MaxOpsBeforeYield, 1))
      )
      for (let i = 0; i < 1000 && fiber.pollUnsafe() === undefined; i++) yield* TestClock.adjust("100 millis")
      yield* Fiber.join(fiber)
      windows.sort((a, b) => a - b)
      assert.strictEqual(windows.length, 8)
      assert.deepStrictEqual(windows, [...new Set(windows)], `windows of the calls: ${windows.join(", ")}`)
    })
  )

  it.effect(
    "a store whose fixedWindow answers no number is a store failure, not a search through windows forever",
    () =>
      Effect.gen(function* () {
        const memory = yield* effectMemoryStore
        const key = uniqueName("own-store-nonsense")
        const options = { providers: { [key]: { requestsPerMinute: 10 } }, maxWait: Number.POSITIVE_INFINITY }
        for (const answer of [Number.NaN, undefined as never]) {
          const broken: RateLimiter.RateLimiterStore["Service"] = {
            ...memory,
            fixedWindow: () => Effect.succeed([answer, 0] as const)
          }
          const open = yield* RateLimit.make(options, broken)
          const closed = yield* RateLimit.make(options, broken, { onStoreError: "reject" })
          const opened = yield* Effect.forkChild(Effect.exit(open.acquire(key)))
          const refused = yield* Effect.forkChild(rejection(closed, key))
          yield* Effect.yieldNow
          yield* Effect.yieldNow
          assert.isDefined(opened.pollUnsafe(), `${answer}: answered at once`)
          assert.isDefined(refused.pollUnsafe(), `${answer}: answered at once`)
          assert.isTrue(Exit.isSuccess(yield* Fiber.join(opened)), "onStoreError allow: the call goes through")
          const refusal = yield* Fiber.join(refused)
          assert.strictEqual(refusal.reason, "RateLimited")
          // Told from a limit's refusal (the key store answers it 503, not 429): no limit named, the store's failure as cause.
          assert.isUndefined(refusal.rateLimit)
          assert.instanceOf(refusal.cause, RateLimiter.RateLimiterError)
        }
      })
  )

  it.effect("a call refused or interrupted gives its tokens back to its own window", () =>
    Effect.gen(function* () {
      const key = uniqueName("own-store-give-back")
      const store = yield* effectMemoryStore
      const now = yield* RateLimit.make({ providers: { [key]: { tokensPerMinute: 100 } }, maxWait: 0 }, store)
      const later = yield* RateLimit.make(
        { providers: { [key]: { tokensPerMinute: 100 } }, maxWait: "5 minutes" },
        store
      )
      yield* TestClock.adjust("15 seconds")
      yield* now.acquire(key, { tokens: 50 })
      const refused = yield* rejection(now, key, { tokens: 60 })
      assert.strictEqual(refused.reason, "RateLimited")
      assert.deepStrictEqual(refused.retryAfter, Duration.seconds(45), "the next window starts at 60 s")
      yield* now.acquire(key, { tokens: 50 })
      const waiter = yield* waiting(later, key, 100)
      yield* Effect.yieldNow
      yield* Fiber.interrupt(waiter)
      // The interrupted waiter's window (from 60 s) is empty again: a full one waits 45 s for it, not 105 s.
      assert.strictEqual(yield* waitOf(later, key, 100), 45_000)
    })
  )
})

describe("RateLimit: every number a call or a policy gives is checked", () => {
  it.effect(
    "a waitUntil that is not a number or NaN is InvalidRequest naming waitUntil, not a wait without deadline",
    () =>
      Effect.gen(function* () {
        const key = uniqueName("wait-until")
        const limits = yield* service({ providers: { [key]: { requestsPerMinute: 1 } }, maxWait: "5 minutes" })
        yield* limits.acquire(key)
        for (const waitUntil of [Number.NaN, "10" as never, null as never]) {
          const fiber = yield* Effect.forkChild(rejection(limits, key, { waitUntil }))
          yield* Effect.yieldNow
          assert.isDefined(fiber.pollUnsafe(), `${waitUntil} is answered at once, not waited on`)
          const error = yield* Fiber.join(fiber)
          assert.strictEqual(error.reason, "InvalidRequest", String(waitUntil))
          assert.strictEqual(error.field, "waitUntil")
        }
        // A deadline past the next window still lets the call wait for it; one before refuses it at once.
        const refused = yield* rejection(limits, key, { waitUntil: 30_000 })
        assert.strictEqual(refused.reason, "RateLimited")
        assert.deepStrictEqual(refused.retryAfter, Duration.minutes(1))
        assert.strictEqual(yield* waitOf(limits, key), 60_000)
      })
  )

  it.effect("make refuses an onStoreError it does not know, naming it (it was read as allow)", () =>
    Effect.gen(function* () {
      const store = yield* effectMemoryStore
      const options = { default: { requestsPerMinute: 1 } }
      for (const onStoreError of ["rejct", null, 1]) {
        const error = yield* Effect.flip(RateLimit.make(options, store, { onStoreError: onStoreError as never }))
        assert.strictEqual(error.path, "onStoreError", String(onStoreError))
      }
      yield* RateLimit.make(options, store, { onStoreError: "reject" })
      yield* RateLimit.make(options, store, { onStoreError: undefined })
    })
  )
})

describe("RateLimit: waitUntil", () => {
  it.effect(
    "a slot given back during the wait for a later one: the wait still ends at that slot, within waitUntil",
    () =>
      Effect.gen(function* () {
        const memory = yield* effectMemoryStore
        // A store whose give-backs take 5 s to answer (a slow store without a guard).
        const slow: RateLimiter.RateLimiterStore["Service"] = {
          ...memory,
          fixedWindow: (o) =>
            o.tokens < 0 ? Effect.tap(memory.fixedWindow(o), () => Effect.sleep("5 seconds")) : memory.fixedWindow(o)
        }
        const key = uniqueName("wait-until-give-back")
        const limits = yield* RateLimit.make(
          { providers: { [key]: { requestsPerMinute: 10, tokensPerMinute: 100 } }, maxWait: "5 minutes" },
          slow
        )
        yield* limits.acquire(key, { tokens: 100 })
        // Its request slot is now, its tokens' at 60 s: the request slot is given back meanwhile (5 s).
        const fiber = yield* Effect.forkChild(
          Effect.flatMap(limits.acquire(key, { tokens: 100, waitUntil: 61_000 }), () => Clock.currentTimeMillis)
        )
        for (let i = 0; i < 200 && fiber.pollUnsafe() === undefined; i++) yield* TestClock.adjust("1 second")
        assert.strictEqual(yield* Fiber.join(fiber), 60_000, "sent when its tokens' window starts, not 5 s after")
      })
  )
})

describe("RateLimit: a clock set back", () => {
  it.effect("a clock set back (an NTP step) never opens a window before the first: the limit still holds", () =>
    Effect.gen(function* () {
      const key = uniqueName("clock-back")
      const limits = yield* service({ providers: { [key]: { requestsPerMinute: 1 } }, maxWait: 0 })
      yield* TestClock.adjust("2 minutes")
      yield* limits.acquire(key)
      yield* TestClock.setTime(90_000)
      // Before, the call went in a window "before window 0", admitted at once: two in a window of one.
      const refused = yield* rejection(limits, key)
      assert.strictEqual(refused.reason, "RateLimited")
      assert.isTrue(Duration.toMillis(refused.retryAfter!) > 0)
    })
  )
})

describe.skipIf(skipRedis)(`RateLimit: Redis give-backs (${skipRedis ? skipReason : "needs redis-server"})`, () => {
  it.live("the Redis store and the memory store both reuse a middle window emptied or lowered by a give-back", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const context = yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient }))
        const redisStore = yield* RateLimitRedis.makeStore({ prefix: `${uniqueName("p")}:` }).pipe(
          Effect.provide(context)
        )
        const memoryStore = withAlignedFixedWindow(yield* effectMemoryStore)
        const run = (store: RateLimitRedis.AlignedFixedWindow) =>
          placements(store, ({ place, giveBack }) =>
            Effect.gen(function* () {
              const steps: Array<string> = []
              for (let i = 0; i < 3; i++) steps.push(yield* place("r", 1, 1))
              steps.push(yield* giveBack("r", 1, 1), yield* place("r", 1, 1), yield* place("r", 1, 1))
              steps.push(yield* place("t", 50, 100), yield* place("t", 60, 100), yield* place("t", 30, 100))
              steps.push(yield* place("t", 60, 100), yield* giveBack("t", 60, 6), yield* place("t", 70, 100))
              return steps
            })
          )
        const inRedis = yield* run(redisStore)
        assert.deepStrictEqual(inRedis, yield* run(memoryStore))
        assert.deepStrictEqual(inRedis, [
          ...["0@0", "1@1", "2@2", "-", "1@1", "3@3"],
          ...["0@0", "1@1", "0@0", "2@2", "-", "1@1"]
        ])
      })
    )
  )

  it.live("make on effect's own Redis store: a window holds its limit for its whole length", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const context = yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient }))
        const store = yield* RateLimiter.makeStoreRedis({ prefix: `${uniqueName("p")}:` }).pipe(Effect.provide(context))
        const key = uniqueName("effect-redis")
        const limits = yield* RateLimit.make(
          { providers: { [key]: { tokensPerMinute: 100, window: "6 seconds" } }, maxWait: 0 },
          store
        )
        // Windows are on the clock: start just after one begins.
        const now = yield* Clock.currentTimeMillis
        yield* Effect.sleep(Duration.millis(6_000 - (now % 6_000) + 50))
        yield* limits.acquire(key, { tokens: 60 })
        // Past 60% of the window (3.6 s), when effect's counter ended it, and 2.15 s before its end (a 2 s window
        // left a loaded machine 550 ms for the first call and the sleeps' lateness).
        yield* Effect.sleep("3800 millis")
        const refused = yield* rejection(limits, key, { tokens: 60 })
        assert.strictEqual(refused.reason, "RateLimited")
        const retryAfter = Duration.toMillis(refused.retryAfter!)
        assert.isTrue(retryAfter > 0 && retryAfter <= 2150, `retryAfter ${retryAfter} ms: the next window's start`)
      })
    )
  )

  it.live("Redis's clock set back never opens a window before the first one either", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const context = yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient }))
        const redis = Context.get(context, PersistenceRedis.Redis)
        const prefix = `${uniqueName("p")}:`
        const store = yield* RateLimitRedis.makeStore({ prefix }).pipe(Effect.provide(context))
        const [seconds] = yield* redis.send<ReadonlyArray<string>>("TIME")
        // Window 0 started 30 s from Redis's now, and holds its one request: as after a clock stepped back 30 s.
        const start = String(Number(seconds) * 1000 + 30_000)
        yield* redis.send("HSET", `${prefix}{r}:window`, "start", start, "head", "0", "tail", "0", "c0", "1")
        const [delay, , index] = yield* store.fixedWindowAligned({
          key: "r",
          tokens: 1,
          window: Duration.minutes(1),
          limit: 1
        })
        assert.strictEqual(index, 1, "the call goes in the window after the full one, not in one before it")
        assert.isTrue(delay > 60_000, `its wait: ${delay} ms`)
      })
    )
  )
})
