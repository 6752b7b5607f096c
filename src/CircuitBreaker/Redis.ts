/**
 * Breakers shared between processes through Redis: `effect/persistence`'s Redis
 * `CircuitBreakerStore` (one hash per key, Redis time, a leased probe), every call bounded
 * by this library's Redis guard, and isolation and reset written to the same hash so every
 * process sees them.
 *
 * @since 0.2.0
 */
import { Context, Duration, Effect, Exit, Fiber, Layer, Predicate, References, Schedule, Scope } from "effect"
import * as Store from "effect/persistence/CircuitBreaker"
import * as Redis from "effect/persistence/Redis"
import type { Options } from "../CircuitBreaker.js"
import * as Input from "../Input.js"
import * as SharedRedis from "../Redis.js"
import { make as makeCore } from "./core.js"
import { check, millis, read } from "./options.js"

/**
 * Options of the Redis breakers: the breaker {@link Options} and the store's own.
 *
 * @since 0.2.0
 * @category models
 */
export interface RedisOptions extends Options {
  /**
   * Prefix of the Redis keys (one hash per breaker key). Processes share a circuit when they
   * use the same Redis, prefix and key. Default `"orchestra:breaker:"`; at most 100 characters.
   */
  readonly prefix?: string | undefined
  /**
   * The probe holds a lease this long, renewed while it runs: a process that dies while
   * probing frees the probe after at most this. Default 10 seconds. A probe granted after its
   * caller stopped waiting (an answer later than `redis.timeout`) is given back at once. At least 1.5 times
   * `redis.timeout` (750 ms by default): it is renewed every third of it, each renewal answered within that.
   */
  readonly probeLease?: Input.DurationInput | undefined
  /**
   * When Redis fails or is slower than `redis.timeout`: `"allow"` (default) runs the call
   * unrecorded, `"reject"` refuses it with a `CircuitOpenError` of state `"unavailable"`
   * (`store` `"redis"`, `retryAfter` `redis.probeInterval`): the executor falls back as for
   * an open circuit, and does not retry.
   */
  readonly onStoreError?: "allow" | "reject" | undefined
  /** Deadline of each Redis call (default 500 ms) and outage reporting: see `Redis.GuardOptions`. */
  readonly redis?: SharedRedis.GuardOptions | undefined
}

const redisKeys: ReadonlySet<string> = new Set(["prefix", "probeLease", "onStoreError", "redis"])

/**
 * The open-until time an isolation writes (2^50 ms, the largest the store's scripts take):
 * every process reads the key as open for ~35,000 years, which the breakers report as
 * `isolated`.
 */
const isolatedUntil = "1125899906842624"

// Opens the circuit until `isolatedUntil` under a new generation (so outcomes of calls
// admitted before it change nothing), and keeps the hash until a reset deletes it.
const isolateScript = Redis.script((key: string, until: string) => [key, until], {
  numberOfKeys: 1,
  lua: `
local key = KEYS[1]
local time = redis.call("TIME")
local nowMicros = tonumber(time[1]) * 1000000 + tonumber(time[2])
local generation = string.format("%.0f", math.max((tonumber(redis.call("HGET", key, "generation")) or 0) + 1, nowMicros))
redis.call("HSET", key, "state", "Open", "generation", generation, "openUntil", ARGV[1], "leaseUntil", 0,
  "streak", 0, "ring", "", "failures", 0)
redis.call("PERSIST", key)
return 1
`
}).withReturnType<number>()

const isRejection = (error: Store.CircuitBreakerError): boolean => error.reason._tag !== "CircuitBreakerStoreError"

// A command carries a lone surrogate as U+FFFD: keys differing only there (a user's key under a
// circuit per key) shared one circuit. Such a key is written with each lone surrogate as NUL and its
// code, and each NUL as NUL "0"; a well-formed key without NUL keeps its name (no NUL: none encoded).
// biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is the escape's own marker
const needsEscape = /[\u0000\uD800-\uDFFF]/u
// biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is the escape's own marker
const escaped = /[\u0000\uD800-\uDFFF]/gu
const escapeChar = (char: string): string =>
  char === "\u0000" ? "\u00000" : `\u0000${char.charCodeAt(0).toString(16).toUpperCase()}`
const redisKey = (key: string): string => (needsEscape.test(key) ? key.replace(escaped, escapeChar) : key)

/**
 * Breakers on Redis. Every Redis call goes through a guard (`store="breaker"` in
 * `orchestra_store_errors_total`): bounded by `redis.timeout`, and skipped while an outage
 * is reported, so nothing waits on a dead Redis.
 *
 * @since 0.2.0
 * @category constructors
 */
export const makeRedis = Effect.fnUntraced(function* (given: RedisOptions = {}) {
  const options = yield* Input.orOptionError(read(given, redisKeys))
  const config = yield* Input.orOptionError(check(options, redisKeys))
  if (config.tripPolicy._tag === "Consecutive" && config.tripPolicy.failures > Input.maxRedisMillis) {
    // The store's scripts refuse a count above 2^50: every record would be a store error, and
    // the circuit would never open.
    return yield* Input.toOptionError({
      path: "failMax",
      message: `expected at most 2^50 (${Input.maxRedisMillis}) with Redis, got ${config.tripPolicy.failures}`
    })
  }
  const prefix = yield* Input.orOptionError(SharedRedis.prefixOf(options.prefix, "orchestra:breaker:"))
  const onStoreError = Input.orDefault(options.onStoreError, "allow")
  if (onStoreError !== "allow" && onStoreError !== "reject") {
    return yield* new Input.OptionError({
      path: "onStoreError",
      message: `invalid onStoreError: expected "allow" or "reject", got ${Input.shown(onStoreError)}`
    })
  }
  const probeLease = yield* Input.orOptionError(millis("probeLease", Input.orDefault(options.probeLease, "10 seconds")))
  if (options.redis !== undefined && !Predicate.isObject(options.redis)) {
    return yield* new Input.OptionError({ path: "redis", message: "invalid redis: expected an object" })
  }
  const settings = yield* Input.orOptionError(SharedRedis.guardSettings(options.redis, "redis."))
  // The store renews the lease every third of it while the probe runs, each renewal answered within redis.timeout:
  // a shorter lease lapsed before its renewal landed (another process probed too), and one of a few milliseconds
  // was renewed in a loop, a Redis command every millisecond for as long as the probe ran.
  const minLease = Math.ceil(1.5 * Duration.toMillis(settings.timeout))
  if (probeLease < minLease) {
    return yield* Input.toOptionError({
      path: "probeLease",
      message: `expected at least 1.5 times redis.timeout (${minLease} ms): the lease is renewed every third of it, each renewal answered within redis.timeout; got ${probeLease} ms`
    })
  }
  const guard = yield* SharedRedis.makeGuard({ store: "breaker", settings })
  const redis = yield* Redis.Redis
  const context = yield* Layer.build(
    Store.layerStoreRedis({ prefix, probeLease, idleTimeToLive: config.idleTimeToLive })
  )
  const store = Context.get(context, Store.CircuitBreakerStore)
  const isolate = redis.eval(isolateScript)
  const layerScope = yield* Effect.scope
  // A probe's lease is renewed (every third of probeLease) by a fiber the store forks in the admission, outside the
  // guard, which logged every failed renewal as an error with its cause: a Redis down while a probe ran said so
  // three times a lease, where the guard says an outage once (the probe's record goes through it). Debug level.
  const storeAdmit = (key: string, scope: Scope.Scope) =>
    Scope.provide(store.admit(key), scope).pipe(
      Effect.provideService(References.UnhandledLogLevel, "Debug"),
      Effect.catchIf(isRejection, (rejection) => Effect.succeed(rejection))
    )

  // A probe Redis granted after its caller stopped waiting (the guard's deadline, shorter than the
  // client's, cut the call whose answer still came) is run and recorded by nobody: it held the probe
  // slot until probeLease ended, every process refused half-open meanwhile. It is given back (an
  // "Ignored" record frees the slot), best effort within the guard's deadline, in the layer's scope.
  // With the client's own deadline the answer never comes late, so the call is made in place.
  const clientDeadline = yield* SharedRedis.ClientDeadline
  const lateAnswers = clientDeadline === undefined || clientDeadline > Duration.toMillis(settings.timeout)
  const giveBack = (key: string, exit: Exit.Exit<Store.Admission | Store.CircuitBreakerError, unknown>) =>
    Exit.isSuccess(exit) && !(exit.value instanceof Store.CircuitBreakerError) && exit.value.probe
      ? Effect.ignore(
          guard.call(
            "release",
            store.record({
              key,
              generation: exit.value.generation,
              outcome: "Ignored",
              tripPolicy: config.tripPolicy,
              openFor: Duration.zero
            })
          )
        )
      : Effect.void
  const admitted = (
    key: string,
    scope: Scope.Scope
  ): Effect.Effect<Store.Admission | Store.CircuitBreakerError, SharedRedis.StoreError> =>
    lateAnswers
      ? Effect.suspend(() => {
          // Forked within the guard: skipped during a reported outage, nothing is sent.
          let sent: Fiber.Fiber<Store.Admission | Store.CircuitBreakerError, unknown> | undefined
          const call = Effect.flatMap(Effect.forkIn(storeAdmit(key, scope), layerScope), (fiber) => {
            sent = fiber
            return Fiber.join(fiber)
          })
          return Effect.onExit(guard.call("admit", call), (exit) =>
            Exit.isSuccess(exit) || sent === undefined
              ? Effect.void
              : Effect.asVoid(
                  Effect.forkIn(
                    Effect.flatMap(Fiber.await(sent), (late) => giveBack(key, late)),
                    layerScope
                  )
                )
          )
        })
      : guard.call("admit", storeAdmit(key, scope))

  return yield* makeCore(config, {
    shared: true,
    scopedAdmit: true,
    onStoreError,
    storeName: "redis",
    storeRetryAfter: settings.probeInterval,
    admit: (key) =>
      Effect.flatMap(Effect.scope, (scope) =>
        Effect.flatMap(admitted(redisKey(key), scope), (admission) =>
          admission instanceof Store.CircuitBreakerError ? Effect.fail(admission) : Effect.succeed(admission)
        )
      ),
    record: (record) => {
      const key = redisKey(record.key)
      if (key === record.key) return guard.call("record", store.record(record))
      // The transition names the key as the core knows it.
      return Effect.map(guard.call("record", store.record({ ...record, key })), (transition) =>
        transition === undefined ? undefined : { ...transition, key: record.key }
      )
    },
    state: (key) => guard.call("state", store.state(redisKey(key))),
    isolate: (key) => Effect.asVoid(guard.call("isolate", isolate(`${prefix}${redisKey(key)}`, isolatedUntil))),
    reset: (key) => Effect.asVoid(guard.call("reset", redis.send("DEL", `${prefix}${redisKey(key)}`))),
    // Until the probe's lease would have freed its slot anyway; a lost failure matters no longer either.
    retryRecord: {
      schedule: Schedule.exponential("100 millis").pipe(
        Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.seconds(2)))),
        Schedule.upTo({ duration: Duration.millis(probeLease) })
      ),
      neverSent: SharedRedis.neverSent
    }
  })
})
