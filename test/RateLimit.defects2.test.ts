import { assert, describe, it } from "@effect/vitest"
import { Clock, Context, Duration, Effect, Exit, Fiber, Layer, type Scope } from "effect"
import { RateLimiter, Redis as PersistenceRedis } from "effect/persistence"
import { TestClock } from "effect/testing"
import type { ModelError } from "../src/AiError.js"
import * as RateLimit from "../src/RateLimit.js"
import { withAlignedFixedWindow } from "../src/RateLimit/memory.js"
import { optionFields as makeOptionFields } from "../src/RateLimit/options.js"
import * as RateLimitRedis from "../src/RateLimit/Redis.js"
import * as Redis from "../src/Redis.js"
import { effectMemoryStore, rejection, service, waitOf } from "./utils/rateLimit.js"
import { healthyClient, healthyDeadline, type RedisServer, skipRedis, skipReason, startRedis } from "./utils/redis.js"

let counter = 0
const uniqueName = (label: string) => `rld2-${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

describe("RateLimit memory store: keys whose windows have all ended are dropped", () => {
  it.effect("maxKeys bounds the keys held: a new key past it is refused naming it, no key goes unlimited", () =>
    Effect.gen(function* () {
      const limits = yield* service({
        default: { requestsPerMinute: 1, window: "1 day" },
        maxWait: "1 minute",
        maxKeys: 2
      } as RateLimit.MemoryOptions)
      const a = uniqueName("a")
      yield* limits.acquire(a)
      yield* limits.acquire(uniqueName("b"))
      const full = yield* rejection(limits, uniqueName("c"))
      assert.strictEqual(full.reason, "RateLimited")
      assert.include(full.message, "maxKeys 2")
      assert.isFalse(RateLimit.isStoreRefusal(full))
      // When the first key held is free again: its window's end.
      assert.strictEqual(full.retryAfter && Duration.toMillis(full.retryAfter), 86_400_000)
      // A key held is still limited by its own limit.
      const own = yield* rejection(limits, a)
      assert.strictEqual(own.rateLimit, "requests")
      yield* TestClock.adjust("1 day")
      // The windows ended: both keys are dropped, and new ones are taken.
      yield* limits.acquire(uniqueName("d"))
      yield* limits.acquire(uniqueName("e"))
      assert.include((yield* rejection(limits, uniqueName("f"))).message, "maxKeys")
    })
  )

  it.effect("maxKeys bounds token buckets' keys too", () =>
    Effect.gen(function* () {
      const limits = yield* service({
        default: { requestsPerMinute: 1, window: "1 day", algorithm: "token-bucket" },
        maxKeys: 2
      } as RateLimit.MemoryOptions)
      yield* limits.acquire(uniqueName("a"))
      yield* limits.acquire(uniqueName("b"))
      const full = yield* rejection(limits, uniqueName("c"))
      assert.include(full.message, "maxKeys 2")
      assert.strictEqual(full.retryAfter && Duration.toMillis(full.retryAfter), 86_400_000)
      yield* TestClock.adjust("1 day")
      yield* limits.acquire(uniqueName("d"))
    })
  )

  it.effect(
    "an algorithm that is neither is shown bounded, as every other check shows a value: a BigInt threw out of the check, a long string went whole in",
    () =>
      Effect.gen(function* () {
        for (const algorithm of [10n, "a".repeat(100_000), { name: "fixed-window" }]) {
          const exit = yield* Effect.exit(
            service({ default: { requestsPerMinute: 1, algorithm } } as unknown as RateLimit.MemoryOptions)
          )
          assert.isTrue(Exit.isFailure(exit) && Exit.hasFails(exit), typeof algorithm)
          const error = yield* Effect.flip(
            service({ default: { requestsPerMinute: 1, algorithm } } as unknown as RateLimit.MemoryOptions)
          )
          assert.deepStrictEqual(
            [error._tag, error._tag === "OptionError" && error.path],
            ["OptionError", "default.algorithm"]
          )
          assert.isBelow(error.message.length, 300, error.message.slice(0, 400))
        }
      })
  )

  it.effect(
    "a misspelt option or limit names the one it is likely a typo of: it said a bare 'unknown option' / 'unknown field'",
    () =>
      Effect.gen(function* () {
        const cases: ReadonlyArray<readonly [unknown, string, string]> = [
          [{ defualt: { requestsPerMinute: 1 } }, "defualt", "unknown option (did you mean default?)"],
          [
            { default: { requestsPerMinut: 1 } },
            "default.requestsPerMinut",
            "unknown field (did you mean requestsPerMinute?)"
          ],
          [{ default: { requestsPerMinute: 1 }, maxKey: 5 }, "maxKey", "unknown option (did you mean maxKeys?)"]
        ]
        for (const [options, path, message] of cases) {
          const error = yield* Effect.flip(service(options as RateLimit.MemoryOptions))
          assert.deepStrictEqual([error._tag, error._tag === "OptionError" && error.path], ["OptionError", path])
          assert.include(error.message, message)
        }
      })
  )

  it.effect("maxKeys that is no positive integer is refused naming it", () =>
    Effect.gen(function* () {
      for (const maxKeys of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, "5", null]) {
        const error = yield* Effect.flip(
          service({ default: { requestsPerMinute: 1 }, maxKeys } as unknown as RateLimit.MemoryOptions)
        )
        assert.strictEqual(error._tag, "OptionError")
        assert.strictEqual(error.path, "maxKeys", String(maxKeys))
        assert.notInclude(error.message, "unknown option")
      }
    })
  )

  it.effect("many keys, then the clock past their windows: the store holds only the keys still in a window", () =>
    Effect.gen(function* () {
      // Token buckets are effect's store's own, which drops a full bucket's key by a sweep every minute.
      const store = withAlignedFixedWindow(yield* effectMemoryStore)
      const limits = yield* RateLimit.make(
        { default: { requestsPerMinute: 10, tokensPerMinute: 1_000 }, maxWait: "10 minutes" },
        store
      )
      const buckets = yield* RateLimit.make({ default: { requestsPerMinute: 10, algorithm: "token-bucket" } }, store)
      // A key with a caller waiting in its next window: its windows must outlive the sweep.
      const busy = uniqueName("busy")
      const one = yield* RateLimit.make(
        { providers: { [busy]: { requestsPerMinute: 1 } }, maxWait: "10 minutes" },
        store
      )
      yield* one.acquire(busy)
      const waiter = yield* Effect.forkChild(one.acquire(busy), { startImmediately: true })
      for (let i = 0; i < 1_000; i++) {
        yield* limits.acquire(`user-${i}`, { tokens: 5 })
        yield* buckets.acquire(`bucket-${i}`)
      }
      // Each user: its requests and its tokens; the busy key's requests.
      assert.strictEqual(store.size, 2_001)
      yield* TestClock.adjust("30 seconds")
      // Other keys' calls: the store looks over its keys as it grows, at O(1) a call amortised.
      for (let i = 0; i < 1_000; i++) yield* limits.acquire(`later-${i}`)
      assert.strictEqual(store.size, 3_001, "at 30 s every key is still in its window")
      yield* TestClock.adjust("2 minutes")
      const wide = yield* RateLimit.make({ default: { requestsPerMinute: 1_000_000 } }, store)
      for (let i = 0; i < 3_100; i++) yield* wide.acquire("last")
      // Every key but the last one has ended: before, every key ever seen stayed (3,002 here).
      assert.strictEqual(store.size, 1)
      yield* Fiber.join(waiter)
    })
  )

  it.effect("a key still in a window keeps its count while the keys around it are dropped", () =>
    Effect.gen(function* () {
      const store = withAlignedFixedWindow(yield* effectMemoryStore)
      const key = uniqueName("kept")
      const limits = yield* RateLimit.make({ default: { requestsPerMinute: 1 }, maxWait: "10 minutes" }, store)
      const short = yield* RateLimit.make({ default: { requestsPerMinute: 5, window: "10 seconds" } }, store)
      yield* limits.acquire(key)
      // Its window from 60 s holds a second caller; other keys' 10-second windows end meanwhile.
      const second = yield* Effect.forkChild(limits.acquire(key), { startImmediately: true })
      for (let i = 0; i < 500; i++) yield* short.acquire(`other-${i}`)
      yield* TestClock.adjust("70 seconds")
      yield* Fiber.join(second)
      // As many calls as keys held: the store has looked over them by then.
      for (let i = 0; i < 1_200; i++) yield* short.acquire(`again-${i % 600}`)
      assert.isAtMost(store.size, 601, "the other keys' ended windows are dropped")
      // At 70 s the key's window from 60 s still holds the second call: a third waits for the one at 120 s.
      assert.strictEqual(yield* waitOf(limits, key), 50_000)
    })
  )
})

/** `store` whose give-backs take `delay` to answer (a slow store, no guard). */
const slowGiveBacks = (delay: Duration.Input) =>
  Effect.map(effectMemoryStore, (memory) => {
    const aligned = withAlignedFixedWindow(memory)
    return {
      ...aligned,
      fixedWindowRelease: (o: Parameters<typeof aligned.fixedWindowRelease>[0]) =>
        Effect.andThen(Effect.sleep(delay), aligned.fixedWindowRelease(o))
    }
  })

describe("RateLimit: a refusal answers at once; its give-back runs in the background", () => {
  it.effect("refused for maxWait: the caller does not wait for the store to take the slot back", () =>
    Effect.gen(function* () {
      const key = uniqueName("refused")
      const store = yield* slowGiveBacks("5 seconds")
      const now = yield* RateLimit.make({ providers: { [key]: { tokensPerMinute: 100 } }, maxWait: 0 }, store)
      const later = yield* RateLimit.make(
        { providers: { [key]: { tokensPerMinute: 100 } }, maxWait: "5 minutes" },
        store
      )
      yield* now.acquire(key, { tokens: 50 })
      const refused = yield* Effect.forkChild(rejection(now, key, 60), { startImmediately: true })
      yield* Effect.yieldNow
      assert.isDefined(refused.pollUnsafe(), "answered before the give-back (5 s) ended")
      assert.strictEqual((yield* Fiber.join(refused)).reason, "RateLimited")
      // The give-back still lands: the next window (from 60 s) is empty again, so 100 tokens go there.
      yield* TestClock.adjust("5 seconds")
      assert.strictEqual(yield* waitOf(later, key, 100), 55_000)
    })
  )

  it.effect('onStoreError "reject": one reservation failed, the other\'s give-back does not hold the refusal', () =>
    Effect.gen(function* () {
      const key = uniqueName("store-failed")
      const slow = yield* slowGiveBacks("5 seconds")
      const store = {
        ...slow,
        fixedWindowAligned: (o: Parameters<typeof slow.fixedWindowAligned>[0]) =>
          o.key.endsWith(":tpm")
            ? Effect.fail(
                new RateLimiter.RateLimiterError({ reason: new RateLimiter.RateLimitStoreError({ message: "down" }) })
              )
            : slow.fixedWindowAligned(o)
      }
      const limits = yield* RateLimit.make(
        { providers: { [key]: { requestsPerMinute: 1, tokensPerMinute: 100 } } },
        store,
        { onStoreError: "reject" }
      )
      const refused = yield* Effect.forkChild(rejection(limits, key, 10), { startImmediately: true })
      yield* Effect.yieldNow
      assert.isDefined(refused.pollUnsafe(), "answered before the give-back (5 s) ended")
      assert.strictEqual((yield* Fiber.join(refused)).reason, "RateLimited")
      // The request slot it took is back once the give-back has run.
      yield* TestClock.adjust("5 seconds")
      const open = yield* RateLimit.make({ providers: { [key]: { requestsPerMinute: 1 } }, maxWait: 0 }, slow)
      yield* open.acquire(key)
    })
  )

  it.effect("a waiter interrupted: the interruption does not wait for the give-back either", () =>
    Effect.gen(function* () {
      const key = uniqueName("interrupted")
      const store = yield* slowGiveBacks("5 seconds")
      const limits = yield* RateLimit.make(
        { providers: { [key]: { requestsPerMinute: 1 } }, maxWait: "5 minutes" },
        store
      )
      yield* limits.acquire(key)
      const waiter = yield* Effect.forkChild(limits.acquire(key), { startImmediately: true })
      yield* Effect.yieldNow
      const interrupting = yield* Effect.forkChild(Fiber.interrupt(waiter), { startImmediately: true })
      yield* Effect.yieldNow
      assert.isDefined(interrupting.pollUnsafe(), "interrupted before the give-back (5 s) ended")
      yield* TestClock.adjust("5 seconds")
      // Its window (from 60 s) is free again.
      assert.strictEqual(yield* waitOf(limits, key), 55_000)
    })
  )
})

/**
 * The service and the Redis client it uses, built in the test's scope. The deadlines not given (`redis.timeout`,
 * the client's) are ones a healthy Redis meets on a loaded machine: with the defaults (500 ms) a call that waited
 * for a core went through unlimited (fail open).
 */
const build = (
  server: RedisServer,
  options: RateLimit.RedisOptions,
  clock?: Clock.Clock,
  connection?: Omit<Redis.Options, "url">
) =>
  Effect.gen(function* () {
    const layer = RateLimit.layerRedis({ ...options, redis: { timeout: healthyDeadline, ...options.redis } }).pipe(
      Layer.provideMerge(Redis.layer({ ...healthyClient, ...connection, url: server.url }))
    )
    const context = yield* Layer.build(
      clock === undefined ? layer : layer.pipe(Layer.provide(Layer.succeed(Clock.Clock, clock)))
    )
    return { limits: Context.get(context, RateLimit.RateLimits), redis: Context.get(context, PersistenceRedis.Redis) }
  })

/** The real clock moved by `offset` ms: a replica whose clock is off. */
const skewed = (offset: number): Effect.Effect<Clock.Clock> =>
  Effect.clockWith((clock) =>
    Effect.succeed({
      currentTimeMillisUnsafe: () => clock.currentTimeMillisUnsafe() + offset,
      currentTimeMillis: Effect.sync(() => clock.currentTimeMillisUnsafe() + offset),
      currentTimeNanosUnsafe: () => clock.currentTimeNanosUnsafe() + BigInt(offset) * 1_000_000n,
      currentTimeNanos: Effect.sync(() => clock.currentTimeNanosUnsafe() + BigInt(offset) * 1_000_000n),
      monotonicTimeNanosUnsafe: () => clock.monotonicTimeNanosUnsafe(),
      monotonicTimeNanos: clock.monotonicTimeNanos,
      sleep: (duration) => clock.sleep(duration)
    })
  )

describe.skipIf(skipRedis)(
  `RateLimit on Redis: timeouts and clocks (${skipRedis ? skipReason : "needs redis-server"})`,
  () => {
    // The reservation is made late on purpose (Redis stopped, SIGSTOP), and only it: every other call is given far
    // more time than a loaded machine needs. The guard's deadline is TestClock's; the client's is a real timer, of
    // 3 s, waited once for the three limits together.
    const limitsOf = [
      { requestsPerMinute: 1 },
      { tokensPerMinute: 100 },
      { requestsPerMinute: 1, algorithm: "token-bucket" as const }
    ]
    const tokensOf = (limit: (typeof limitsOf)[number]) => (limit.tokensPerMinute === undefined ? undefined : 100)

    it.effect(
      'onStoreError "reject": a reservation whose answer came too late (the guard\'s deadline) is given back, not lost for its window',
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            for (const limit of limitsOf) {
              const key = uniqueName("late")
              const warm = uniqueName("warm")
              const { limits, redis } = yield* build(
                server,
                {
                  providers: { [key]: limit, [warm]: limit },
                  maxWait: 0,
                  onStoreError: "reject",
                  redis: { timeout: "1 second", reportAfter: "1 minute" }
                },
                undefined,
                { commandTimeout: "1 day" }
              )
              const tokens = tokensOf(limit)
              // Redis holds the script: its first EVALSHA would find none (NOSCRIPT) and take nothing.
              yield* limits.acquire(warm, { tokens })
              // Redis stops answering: the reservation is sent, the call refused at the deadline.
              yield* server.pause
              const late = yield* Effect.forkChild(Effect.flip(limits.acquire(key, { tokens })), {
                startImmediately: true
              })
              yield* TestClock.adjust("1 second")
              const refused = yield* Fiber.join(late)
              assert.strictEqual((refused as ModelError).reason, "RateLimited")
              assert.include(refused.message, "store unavailable")
              // Back: Redis runs the reservation it had been sent, then the give-back sent after it.
              yield* server.resume
              // Answered after both: one connection, answers in order.
              yield* redis.send("PING")
              // The window's one slot was lost to a call that never went; now it is free.
              const exit = yield* Effect.exit(limits.acquire(key, { tokens }))
              assert.strictEqual(exit._tag, "Success", `${JSON.stringify(limit)}: ${String(exit)}`)
              assert.strictEqual((yield* rejection(limits, key, tokens)).reason, "RateLimited")
            }
          })
        )
    )

    it.live(
      'onStoreError "reject": a reservation whose answer came too late (the client\'s deadline) is given back, not lost for its window',
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const keys = limitsOf.map(() => uniqueName("late"))
            const warms = limitsOf.map(() => uniqueName("warm"))
            const providers = Object.fromEntries(
              limitsOf.flatMap((limit, i) => [
                [keys[i]!, limit],
                [warms[i]!, limit]
              ])
            )
            // The client's deadline (3 s) cuts the call: the guard's (1 minute) sets no timer of its own.
            const { limits, redis } = yield* build(
              server,
              {
                providers,
                maxWait: 0,
                onStoreError: "reject",
                redis: { timeout: "1 minute", reportAfter: "1 minute" }
              },
              undefined,
              { commandTimeout: "3 seconds" }
            )
            // Redis holds the scripts: a first EVALSHA would find none (NOSCRIPT) and take nothing.
            for (const [i, limit] of limitsOf.entries()) yield* limits.acquire(warms[i]!, { tokens: tokensOf(limit) })
            yield* server.pause
            const refused = yield* Effect.forEach(
              limitsOf,
              (limit, i) => Effect.flip(limits.acquire(keys[i]!, { tokens: tokensOf(limit) })),
              { concurrency: "unbounded" }
            )
            for (const error of refused) {
              assert.strictEqual((error as ModelError).reason, "RateLimited")
              assert.include(error.message, "store unavailable")
            }
            yield* server.resume
            yield* redis.send("PING")
            for (const [i, limit] of limitsOf.entries()) {
              const tokens = tokensOf(limit)
              const exit = yield* Effect.exit(limits.acquire(keys[i]!, { tokens }))
              assert.strictEqual(exit._tag, "Success", `${JSON.stringify(limit)}: ${String(exit)}`)
              assert.strictEqual((yield* rejection(limits, keys[i]!, tokens)).reason, "RateLimited")
            }
          })
        ),
      30_000
    )

    it.live("a give-back that reaches Redis before its reservation: the reservation takes nothing", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const context = yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient }))
          const store = yield* RateLimitRedis.makeStore({ prefix: `${uniqueName("p")}:` }).pipe(Effect.provide(context))
          const window = Duration.minutes(1)
          yield* store.revokeReservation({ key: "w", id: "a", algorithm: "fixed-window", window, limit: 1 })
          const late = yield* Effect.flip(
            store.fixedWindowAlignedTagged({ key: "w", tokens: 1, window, limit: 1, id: "a" })
          )
          assert.include(Redis.errorText(late), "REVOKED")
          // Nothing was taken: the window's one slot is there.
          const [delay] = yield* store.fixedWindowAligned({ key: "w", tokens: 1, window, limit: 1 })
          assert.strictEqual(delay, 0)
          const refillRate = Duration.seconds(60)
          yield* store.revokeReservation({ key: "b", id: "a", algorithm: "token-bucket", window, limit: 1 })
          yield* Effect.flip(
            store.tokenBucketTagged({ key: "b", tokens: 1, limit: 1, refillRate, allowOverflow: true, id: "a" })
          )
          const [remaining] = yield* store.tokenBucket({
            key: "b",
            tokens: 1,
            limit: 1,
            refillRate,
            allowOverflow: true
          })
          assert.strictEqual(remaining, 0)
          // Revoked after it ran: taken back once, however often it is revoked.
          yield* store.fixedWindowAlignedTagged({ key: "x", tokens: 1, window, limit: 1, id: "b" })
          yield* store.revokeReservation({ key: "x", id: "b", algorithm: "fixed-window", window, limit: 1 })
          yield* store.revokeReservation({ key: "x", id: "b", algorithm: "fixed-window", window, limit: 1 })
          assert.strictEqual((yield* store.fixedWindowAligned({ key: "x", tokens: 1, window, limit: 1 }))[0], 0)
          assert.isAbove((yield* store.fixedWindowAligned({ key: "x", tokens: 1, window, limit: 1 }))[0], 0)
        })
      )
    )

    it.live("replicas whose clocks are minutes apart share one window: Redis's clock (TIME) decides", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const prefix = `${uniqueName("p")}:`
          for (const algorithm of ["fixed-window", "token-bucket"] as const) {
            const key = uniqueName(`skew-${algorithm}`)
            const options: RateLimit.RedisOptions = {
              prefix,
              // 20 s: the five calls must all be in the window (2 s was close on a loaded machine).
              providers: { [key]: { requestsPerMinute: 2, window: "20 seconds", algorithm } },
              maxWait: 0
            }
            const ahead = yield* build(server, options, yield* skewed(90_000))
            const behind = yield* build(server, options, yield* skewed(-150_000))
            const exact = yield* build(server, options)
            yield* ahead.limits.acquire(key)
            yield* behind.limits.acquire(key)
            // The window's two slots are taken, whatever each replica's clock says.
            for (const replica of [ahead, behind, exact]) {
              const refused = (yield* Effect.flip(replica.limits.acquire(key))) as ModelError
              assert.strictEqual(refused.reason, "RateLimited", algorithm)
              const retryAfter = Duration.toMillis(refused.retryAfter!)
              assert.isTrue(retryAfter > 0 && retryAfter <= 20_000, `${algorithm}: retryAfter ${retryAfter} ms`)
            }
          }
        })
      )
    )
  }
)

describe("RateLimit.make's options", () => {
  it.effect("are read when its Effect runs, not when it is made", () =>
    Effect.gen(function* () {
      const store = yield* effectMemoryStore
      let reads = 0
      const options: RateLimit.Options = {
        get default() {
          reads++
          return { requestsPerMinute: 2 }
        }
      }
      const making = RateLimit.make(options, store)
      assert.strictEqual(reads, 0)
      const limits = yield* making
      assert.isAbove(reads, 0)
      assert.strictEqual(limits.limitsOf(uniqueName("read"))?.requestsPerMinute, 2)
    })
  )
})

describe("RateLimit.make's store policy", () => {
  it.effect("a misspelt key, a policy that is no object or a guard without call is refused naming it", () =>
    Effect.gen(function* () {
      const store = yield* effectMemoryStore
      const options = { default: { requestsPerMinute: 1 } }
      // A misspelt `onStoreError: "reject"` left the limiter failing open, unseen.
      for (const [policy, path] of [
        [{ onStoreErorr: "reject" }, "onStoreErorr"],
        [null, "policy"],
        ["reject", "policy"],
        [{ guard: {} }, "guard.call"]
      ] as const) {
        const error = yield* Effect.flip(RateLimit.make(options, store, policy as never))
        assert.deepStrictEqual([error._tag, error.path], ["OptionError", path], JSON.stringify(policy))
      }
      const fine = yield* RateLimit.make(options, store, { onStoreError: "reject", retryAfter: "2 seconds" })
      yield* fine.acquire(uniqueName("policy"))
    })
  )
})

describe.skipIf(skipRedis)(
  `RateLimit layers pass make every option it takes (${skipRedis ? skipReason : "needs redis-server"})`,
  () => {
    // One case per option `make` takes, each seen on the limiter built: an option a layer accepted
    // (its check knows the field) and did not hand to `make` would be dropped, unseen.
    const cases: Record<
      string,
      (key: string) => {
        readonly options: RateLimit.Options
        readonly check: (limits: RateLimit.Service, label: string) => Effect.Effect<void, unknown>
      }
    > = {
      providers: (key) => ({
        options: { providers: { [key]: { requestsPerMinute: 3 } } },
        check: (limits, label) =>
          Effect.sync(() => assert.strictEqual(limits.limitsOf(key)?.requestsPerMinute, 3, label))
      }),
      default: (key) => ({
        options: { default: { tokensPerMinute: 7 } },
        check: (limits, label) => Effect.sync(() => assert.strictEqual(limits.limitsOf(key)?.tokensPerMinute, 7, label))
      }),
      maxWait: (key) => ({
        // Without it (30 s), the second call would wait for the next window instead of being refused.
        options: { providers: { [key]: { requestsPerMinute: 1, window: "10 seconds" } }, maxWait: 0 },
        check: (limits, label) =>
          Effect.gen(function* () {
            yield* limits.acquire(key)
            // A bound (a refusal answers at once), not a measure: 2 s could pass on a loaded machine.
            const refused = yield* Effect.flip(Effect.timeout(limits.acquire(key), "20 seconds"))
            assert.strictEqual((refused as ModelError).reason, "RateLimited", `${label}: ${String(refused)}`)
          })
      })
    }

    it.live("each option of make's is in effect through make, layerMemory and layerRedis", () =>
      Effect.scoped(
        Effect.gen(function* () {
          assert.deepStrictEqual(Object.keys(cases).sort(), [...makeOptionFields].sort(), "a case per option of make's")
          const server = yield* startRedis
          const store = yield* effectMemoryStore
          const builders: ReadonlyArray<
            readonly [string, (options: RateLimit.Options) => Effect.Effect<RateLimit.Service, unknown, Scope.Scope>]
          > = [
            ["make", (options) => RateLimit.make(options, store)],
            ["layerMemory", (options) => service(options)],
            [
              "layerRedis",
              (options) =>
                Effect.map(
                  Layer.build(
                    RateLimit.layerRedis({ ...options, redis: { timeout: healthyDeadline } }).pipe(
                      Layer.provide(Redis.layer({ url: server.url, ...healthyClient }))
                    )
                  ),
                  Context.get(RateLimit.RateLimits)
                )
            ]
          ]
          for (const [field, make] of Object.entries(cases)) {
            for (const [name, build] of builders) {
              const { options, check } = make(uniqueName(field))
              const label = `${name}, ${field}`
              yield* Effect.mapError(
                Effect.flatMap(build(options), (limits) => check(limits, label)),
                (error) => new Error(`${label}: ${String(error)}`)
              )
            }
          }
        })
      )
    )
  }
)
