/**
 * Per-provider rate limits: requests and tokens per window (one minute unless told
 * otherwise), kept in memory (`layerMemory`, this process) or in Redis (`layerRedis`,
 * shared by every process using the same Redis and prefix). Built on `effect/persistence`'s
 * `RateLimiter`: a call reserves its slot and sleeps until the slot's time, so waiting
 * callers are sleeping fibers, not a queue woken all at once.
 *
 * A call waits at most `maxWait`. When the next slot is further away, `acquire` fails at
 * once with a `RateLimited` `ModelError` carrying `retryAfter` and gives the slot back (in the
 * background: the refusal does not wait for the store):
 * the policy pipeline then falls back to another provider (`shouldFallback`) instead of
 * queueing behind a full window.
 *
 * @since 0.1.0
 */
import { Context, type Duration, Effect, Layer, type Scope } from "effect"
import { RateLimiter, type Redis } from "effect/persistence"
import type { ModelError } from "./AiError.js"
import * as Input from "./Input.js"
import * as Timers from "./policy/timers.js"
import { makeWith, scoped } from "./RateLimit/limiter.js"
import { defaultMaxKeys, withAlignedFixedWindow } from "./RateLimit/memory.js"
import { checkMaxKeys, checkOnStoreError, checkOptions, memoryFields, redisFields } from "./RateLimit/options.js"
import * as RedisStore from "./RateLimit/Redis.js"
import * as SharedRedis from "./Redis.js"

/**
 * Whether a `RateLimited` refusal is this module's failing closed because its store did not
 * answer (an outage: `onStoreError: "reject"`), not a limit reached.
 *
 * @since 0.3.0
 * @category predicates
 */
export const isStoreRefusal = (error: ModelError): boolean =>
  error.reason === "RateLimited" && error.cause instanceof RateLimiter.RateLimiterError

/**
 * The limits of one key (a provider). Both limits count over `window`: with `window:
 * "2 seconds"`, `requestsPerMinute: 7` means 7 requests every 2 seconds. A key with
 * neither limit is not limited.
 *
 * `algorithm`: `fixed-window` (default: the 61st request of a 60-per-minute window waits
 * for the next window; a window starts at the first call after the ones before have ended and
 * lasts `window` whatever was used of it) or `token-bucket` (slots refill evenly: one a second at 60).
 *
 * @since 0.1.0
 * @category models
 */
export interface Limits {
  readonly requestsPerMinute?: number | undefined
  readonly tokensPerMinute?: number | undefined
  /** The period both limits count over. Default 1 minute; at least 1 ms, at most 2^50 ms (about 35,678 years). */
  readonly window?: Input.DurationInput | undefined
  readonly algorithm?: "fixed-window" | "token-bucket" | undefined
}

/**
 * Limits by key; `default` applies to keys not listed (none when absent).
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly providers?: { readonly [key: string]: Limits } | undefined
  readonly default?: Limits | undefined
  /**
   * Longest wait for a slot. Beyond it `acquire` fails at once with `RateLimited` (and
   * `retryAfter`). `0`: never wait; `Infinity`: wait as long as it takes. Default 30 seconds.
   */
  readonly maxWait?: Input.DurationInput | undefined
}

/**
 * Options of {@link layerMemory}.
 *
 * @since 0.3.0
 * @category models
 */
export interface MemoryOptions extends Options {
  /**
   * Most keys held at once: each limit of a key counts one (a user under `default` with both
   * limits, two). A key is held until its windows have ended, so a long window (a limit per day)
   * over many keys (one per user) would grow without bound. A call that needs a new key while
   * `maxKeys` are held is refused with `RateLimited` naming `maxKeys`, its `retryAfter` when the
   * first key held is free again; it is never let through unlimited. Keys already held keep their
   * limits. A positive integer; default 100,000.
   */
  readonly maxKeys?: number | undefined
}

/**
 * Options of {@link layerRedis}.
 *
 * @since 0.2.0
 * @category models
 */
export interface RedisOptions extends Options {
  /** Prefix of every Redis key, 1 to 100 characters (`Redis.maxPrefixChars`). Default `"orchestra:ratelimit:"`. */
  readonly prefix?: string | undefined
  /**
   * When Redis fails or is too slow: `"allow"` (default: fail open, the call goes through
   * unlimited and the provider's own 429s still apply) or `"reject"` (fail closed: the call
   * fails with `RateLimited`, its `retryAfter` the guard's `probeInterval`, its `cause` the
   * store's `RateLimiterError`, and no `rateLimit`). Failing closed, a
   * reservation whose answer came too late (it may have run) is revoked in the background, so the
   * refused call keeps no slot; each reservation then records what it took under a key of its own
   * for as long as its window lasts.
   */
  readonly onStoreError?: "allow" | "reject" | undefined
  /** Deadline of each Redis call, and when an outage is reported. See `Redis.GuardOptions`. */
  readonly redis?: SharedRedis.GuardOptions | undefined
}

/**
 * The limits that apply to a key, checked.
 *
 * @since 0.2.0
 * @category models
 */
export interface ResolvedLimits {
  readonly requestsPerMinute: number | undefined
  readonly tokensPerMinute: number | undefined
  readonly window: Duration.Duration
  readonly algorithm: "fixed-window" | "token-bucket"
}

/**
 * What one `acquire` takes and how long it may wait.
 *
 * @since 0.3.0
 * @category models
 */
export interface AcquireCost {
  /** Estimated tokens of the attempt (default 0: the request only). */
  readonly tokens?: number | undefined
  /** No wait ends past this instant (`Clock` milliseconds), whatever `maxWait` allows. */
  readonly waitUntil?: number | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * Waits for a slot for one attempt on `key`: one request and `cost.tokens` estimated
   * tokens (default 0: count the request only). Waits at most `maxWait`, and never past
   * `cost.waitUntil` (the clock's milliseconds: the executor gives a call's total deadline);
   * beyond either it fails at once with `RateLimited` and `retryAfter`, so a fallback can use
   * the time left. An invalid `tokens`, or a `waitUntil` that is `NaN` or no number, fails with
   * `InvalidRequest` naming the field. A caller interrupted while waiting gives its slot back.
   */
  readonly acquire: (key: string, cost?: AcquireCost) => Effect.Effect<void, ModelError>
  /** The limits that apply to `key`, if any. */
  readonly limitsOf: (key: string) => ResolvedLimits | undefined
}

/**
 * @since 0.1.0
 * @category services
 */
export class RateLimits extends Context.Service<RateLimits, Service>()("effect-orchestra/RateLimits") {}

/**
 * What {@link make} does when its store fails (`onStoreError`) and what bounds each store
 * call (`guard`).
 *
 * @since 0.3.0
 * @category models
 */
export interface StorePolicy {
  readonly onStoreError?: "allow" | "reject" | undefined
  readonly guard?: SharedRedis.Guard | undefined
  /**
   * The `retryAfter` of a call refused because the store failed and `onStoreError` is
   * `"reject"`: when trying again may find the store back. Default 1 second; `layerRedis`
   * gives its `redis.probeInterval` (how often a Redis reported down is probed).
   *
   * @since 0.3.0
   */
  readonly retryAfter?: Input.DurationInput | undefined
}

// What a store given to `make` adds to effect's `RateLimiterStore` to keep fixed windows exact;
// re-exported by name so that a type an application infers from it is nameable through this module.
export type { AlignedFixedWindow } from "./RateLimit/Redis.js"

/**
 * Builds the service on a `RateLimiterStore`. Store failures are handled by
 * `onStoreError` (default `"allow"`); `guard` bounds every store call (the Redis layers
 * pass one).
 *
 * Fixed windows hold at most the limit each for their whole length on any store. On one with
 * {@link AlignedFixedWindow}'s methods (the layers' stores) a window starts at the first call after
 * the ones before have ended. On one without them (effect's `layerStoreMemory` or `layerStoreRedis`,
 * or your own) windows are on the clock, `window` apart from the epoch, each counted under its own
 * key (`<key>:rpm:<n>`, `<key>:tpm:<n>`) with the store's capped `fixedWindow` (the one effect's
 * limiter uses with `onExceeded: "fail"`): a call finding a window full asks the next, one store call
 * each, up to the first that starts beyond `maxWait`.
 *
 * Its metric series stay in the registry for the life of the process: a limiter built more than
 * once (per configuration, per tenant) is built with {@link makeScoped}, whose series leave with its scope.
 *
 * @since 0.2.0
 * @category constructors
 */
export const make = (
  options: Options,
  store: RateLimiter.RateLimiterStore["Service"],
  policy: StorePolicy = {}
): Effect.Effect<Service, Input.OptionError> =>
  Effect.flatMap(
    Effect.suspend(() => Input.orOptionError(checkOptions(options))),
    (config) => Effect.map(makeWith(config, store, policy), (built) => built.service)
  )

/**
 * {@link make} whose metric series (`orchestra_rate_limit_*` of the keys it limits) leave the
 * registry when `Scope` closes, as the layers' do: use it for a limiter built for a while
 * (per configuration, per tenant) rather than once per process. Series shared with another
 * limiter still open on the same registry stay until that one closes too. A limiter whose scope
 * closed still limits; keys it first sees after count in no series.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { RateLimiter } from "effect/persistence"
 * import * as RateLimit from "effect-orchestra/RateLimit"
 *
 * const program = Effect.scoped(
 *   Effect.gen(function* () {
 *     const store = yield* RateLimiter.RateLimiterStore
 *     const limits = yield* RateLimit.makeScoped({ default: { requestsPerMinute: 60 } }, store)
 *     yield* limits.acquire("tenant-1")
 *   })
 * ).pipe(Effect.provide(RateLimiter.layerStoreMemory))
 * ```
 *
 * @since 0.3.0
 * @category constructors
 */
export const makeScoped = (
  options: Options,
  store: RateLimiter.RateLimiterStore["Service"],
  policy: StorePolicy = {}
): Effect.Effect<Service, Input.OptionError, Scope.Scope> =>
  Effect.flatMap(
    Effect.suspend(() => Input.orOptionError(checkOptions(options))),
    (config) => scoped(config, store, policy)
  )

/**
 * Limits kept in this process (time from the `Clock`, so `TestClock` drives them). A key's
 * state is dropped once its windows have ended, so limiting many keys (users, virtual keys)
 * holds those in use, not every key ever seen, and at most `maxKeys` of them. Invalid options
 * fail the layer with an `OptionError` naming the field.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (options: MemoryOptions): Layer.Layer<RateLimits, Input.OptionError> =>
  Layer.effect(
    RateLimits,
    Effect.gen(function* () {
      const config = yield* Input.orOptionError(checkOptions(options, memoryFields))
      const maxKeys = yield* Input.orOptionError(checkMaxKeys(options.maxKeys, defaultMaxKeys))
      const store = yield* RateLimiter.RateLimiterStore
      return yield* scoped(config, withAlignedFixedWindow(store, maxKeys))
    })
  ).pipe(
    // effect's store sweeps its keys every minute: that timer must not keep a process alive.
    Layer.provide(RateLimiter.layerStoreMemory.pipe(Layer.provide(Timers.layerBackground)))
  )

/**
 * Limits shared through Redis by every process using the same Redis and prefix. Needs
 * `effect/persistence`'s `Redis` service (`Redis.layer` of this library builds one). Each
 * Redis call is bounded (`redis.timeout`, default 500 ms) and counted in
 * `orchestra_store_errors_total{store="ratelimit"}` when it fails; see `onStoreError`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRedis = (options: RedisOptions): Layer.Layer<RateLimits, Input.OptionError, Redis.Redis> =>
  Layer.effect(
    RateLimits,
    Effect.gen(function* () {
      const config = yield* Input.orOptionError(checkOptions(options, redisFields))
      const settings = yield* Input.orOptionError(SharedRedis.guardSettings(options.redis, "redis."))
      const onStoreError = yield* Input.orOptionError(checkOnStoreError(options.onStoreError))
      const guard = yield* SharedRedis.makeGuard({ store: "ratelimit", settings })
      const store = yield* RedisStore.makeStore({ prefix: options.prefix })
      return yield* scoped(config, store, { onStoreError, guard, retryAfter: settings.probeInterval })
    })
  )
