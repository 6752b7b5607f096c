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
import { Clock, Context, Duration, Effect, Layer, Result, Scope } from "effect"
import { RateLimiter, type Redis } from "effect/persistence"
import { ModelError, type RateLimitKind } from "./AiError.js"
import * as Timers from "./policy/timers.js"
import * as Input from "./Input.js"
import { defaultMaxKeys, KeysFull, withAlignedFixedWindow } from "./RateLimit/memory.js"
import { make as makeMetrics } from "./RateLimit/metrics.js"
import {
  checkMaxKeys,
  checkOnStoreError,
  checkPolicy,
  checkOptions,
  checkTokens,
  checkWaitUntil,
  type Config,
  memoryFields,
  redisFields
} from "./RateLimit/options.js"
import * as RedisStore from "./RateLimit/Redis.js"
import * as SharedRedis from "./Redis.js"
import { isTraced } from "./policy/span.js"

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

// The limiter's delays carry floating-point noise (a slot due now can come back as 1e-4 ms
// away, more so on Redis's microsecond clock): below this a slot counts as free.
const significant = (millis: number): number => (millis < 0.01 ? 0 : millis)

const oneMilli = Duration.millis(1)

interface Reservation {
  readonly key: string
  readonly kind: RateLimitKind
  readonly limit: number
  /** What the call costs under this limit. */
  readonly cost: number
  readonly limits: ResolvedLimits
}

// A reservation as the store took it: the wait for its slot (ms), the tokens taken (0: none, the call is
// refused), and for fixed windows the window they went in, which a give-back names (`start` and `index`
// on a store with `AlignedFixedWindow`, the window's number on the clock otherwise); `index` -1 otherwise.
interface Taken {
  readonly reservation: Reservation
  readonly delay: number
  readonly tokens: number
  readonly start: number
  readonly index: number
}

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

// `make` over options checked (`checkOptions`: the layers check theirs with their own fields and hand
// over the whole result, so no option of `make`'s is dropped on the way), and what removes its metric
// series from the registry (the layers call it when they close).
const makeWith = Effect.fnUntraced(function* (
  config: Config,
  store: RateLimiter.RateLimiterStore["Service"],
  policy: StorePolicy = {}
) {
  yield* Input.orOptionError(checkPolicy(policy))
  const onStoreError = yield* Input.orOptionError(checkOnStoreError(policy.onStoreError))
  const storeRetryAfter = yield* Input.orOptionError(
    Input.duration("retryAfter", Input.orDefault(policy.retryAfter, "1 second"))
  )
  const clock = yield* Clock.Clock
  const guard = policy.guard
  const guarded: RateLimiter.RateLimiterStore["Service"] =
    guard === undefined
      ? store
      : {
          ...store,
          fixedWindow: (o) => Effect.mapError(guard.call("fixedWindow", store.fixedWindow(o)), toLimiterError),
          tokenBucket: (o) => Effect.mapError(guard.call("tokenBucket", store.tokenBucket(o)), toLimiterError)
        }
  const limiter = yield* Effect.provideService(RateLimiter.make, RateLimiter.RateLimiterStore, guarded)
  // The stores of the layers keep fixed windows of their own (`AlignedFixedWindow`): effect's counter
  // lasts `window / limit` per token taken, so a window used at 60% ended after 60% of its length.
  const windows: RedisStore.AlignedFixedWindow | undefined =
    "fixedWindowAligned" in store && "fixedWindowRelease" in store
      ? guard === undefined
        ? (store as RedisStore.AlignedFixedWindow)
        : {
            fixedWindowAligned: (o) =>
              Effect.mapError(
                guard.call("fixedWindow", (store as RedisStore.AlignedFixedWindow).fixedWindowAligned(o)),
                toLimiterError
              ),
            fixedWindowRelease: (o) =>
              Effect.mapError(
                guard.call("fixedWindow", (store as RedisStore.AlignedFixedWindow).fixedWindowRelease(o)),
                toLimiterError
              )
          }
      : undefined
  const failClosed = onStoreError === "reject"
  // Failing closed, a call refused because its reservation's answer did not come in time took no slot,
  // yet the reservation may have run all the same (its answer only came late): on a store that can
  // revoke (the Redis store), each reservation is tagged, and one that may have run is revoked.
  const revocable: RedisStore.Revocable | undefined =
    failClosed && "revokeReservation" in store && "fixedWindowAlignedTagged" in store && "tokenBucketTagged" in store
      ? guardRevocable(store as unknown as RedisStore.Revocable, guard)
      : undefined
  // Unique across processes: a random tag per limiter, then a counter.
  const idTag = revocable === undefined ? "" : `${globalThis.crypto.randomUUID().slice(0, 13)}.`
  let idCount = 0
  const maxWaitMillis = Duration.toMillis(config.maxWait)
  const { metricsOf, release: releaseMetrics } = makeMetrics(yield* Effect.context<never>(), (key) =>
    config.providers.has(key)
  )

  const limitsOf = (key: string): ResolvedLimits | undefined => config.providers.get(key) ?? config.fallback

  const consume = (r: Reservation, tokens: number) =>
    limiter.consume({
      key: r.key,
      limit: r.limit,
      window: r.limits.window,
      tokens,
      onExceeded: "delay",
      algorithm: r.limits.algorithm
    })

  // The last reservation taken on each token bucket's key, while it has not gone nor been given back.
  // A bucket is one count: tokens given back by a waiter with others queued behind it come back now,
  // not in its slot, and the next caller would go at the instant of the waiter behind. Only the last
  // reservation's give-back is exact; an earlier one's tokens are kept (a slot lost, the rate held).
  const lastOnBucket = new Map<string, Taken>()

  const lastTaken = (taken: Taken): Taken => {
    if (taken.tokens > 0) lastOnBucket.set(taken.reservation.key, taken)
    return taken
  }

  // Reservations whose call goes: none of them is given back after.
  const gone = (taken: ReadonlyArray<Taken>): void => {
    if (lastOnBucket.size === 0) return
    for (let i = 0; i < taken.length; i++) {
      const key = taken[i]!.reservation.key
      if (lastOnBucket.get(key) === taken[i]) lastOnBucket.delete(key)
    }
  }

  const counted = (r: Reservation, result: RateLimiter.ConsumeResult, tokens: number): Taken =>
    lastTaken({
      reservation: r,
      delay: significant(Duration.toMillis(result.delay)),
      tokens,
      start: 0,
      index: -1
    })

  // A store without `AlignedFixedWindow`: windows on the clock (`window` apart from the epoch), each
  // counted under a key of its own with the store's capped fixed window (a refused call takes nothing;
  // the first admission opens the key for `refillRate * limit` and later ones do not extend it). The
  // running counter of effect's delay mode ended a window once `window / limit` per token taken had
  // passed, and let a second 60 tokens into a 100-token minute at 40 s.
  const clockWindowKey = (r: Reservation, index: number) => `${r.key}:${index}`

  const reserveOnClock = (r: Reservation): Effect.Effect<Taken, RateLimiter.RateLimiterError> => {
    const windowMillis = Math.max(Duration.toMillis(r.limits.window), 1)
    const now = clock.currentTimeMillisUnsafe()
    const first = Math.floor(now / windowMillis)
    const place = (index: number): Effect.Effect<Taken, RateLimiter.RateLimiterError> => {
      const delay = index === first ? 0 : significant(index * windowMillis - now)
      // A window past any wait is not asked for: its start refuses the call, which took nothing.
      if (delay > maxWaitMillis) return Effect.succeed({ reservation: r, delay, tokens: 0, start: 0, index })
      return Effect.flatMap(
        guarded.fixedWindow({
          key: clockWindowKey(r, index),
          tokens: r.cost,
          // Opened now, the key outlasts the end of its window.
          refillRate: Duration.millis(((index - first + 1) * windowMillis + 1) / r.limit),
          limit: r.limit
        }),
        ([count]): Effect.Effect<Taken, RateLimiter.RateLimiterError> => {
          if (count <= r.limit) return Effect.succeed({ reservation: r, delay, tokens: r.cost, start: 0, index })
          // A count that is no number is neither admitted nor refused: searching on would never end.
          if (!(count > r.limit)) {
            return Effect.fail(
              new RateLimiter.RateLimiterError({
                reason: new RateLimiter.RateLimitStoreError({
                  message: `the store's fixedWindow answered a count of ${count}`
                })
              })
            )
          }
          return place(index + 1)
        }
      )
    }
    return place(first)
  }

  // A reservation tagged for revocation (see `revocable`): one whose store call failed after it may have
  // run is revoked in the background, as soon as it failed.
  const reserveRevocable = (
    r: Reservation,
    store: RedisStore.Revocable
  ): Effect.Effect<Taken, RateLimiter.RateLimiterError> => {
    const id = `${idTag}${(idCount++).toString(36)}`
    const window = Duration.max(r.limits.window, oneMilli)
    const reserved: Effect.Effect<Taken, RateLimiter.RateLimiterError> =
      r.limits.algorithm === "fixed-window"
        ? Effect.map(
            store.fixedWindowAlignedTagged({ key: r.key, tokens: r.cost, window, limit: r.limit, id }),
            ([delay, start, index]): Taken => ({
              reservation: r,
              delay: significant(delay),
              tokens: r.cost,
              start,
              index
            })
          )
        : Effect.map(
            store.tokenBucketTagged({
              key: r.key,
              tokens: r.cost,
              limit: r.limit,
              refillRate: Duration.divideUnsafe(window, r.limit),
              allowOverflow: true,
              id
            }),
            ([remaining, elapsed]): Taken => {
              // As effect's limiter answers a token bucket's delay.
              const refillMillis = Duration.toMillis(Duration.divideUnsafe(window, r.limit))
              const delay = Math.max(0, Math.ceil(-remaining) * refillMillis - elapsed)
              return lastTaken({ reservation: r, delay: significant(delay), tokens: r.cost, start: 0, index: -1 })
            }
          )
    return Effect.tapError(reserved, (error) =>
      mayHaveRun(error)
        ? inBackground(
            Effect.ignore(
              store.revokeReservation({ key: r.key, id, algorithm: r.limits.algorithm, window, limit: r.limit })
            )
          )
        : Effect.void
    )
  }

  const reserve = (r: Reservation): Effect.Effect<Taken, RateLimiter.RateLimiterError> => {
    if (revocable !== undefined) return reserveRevocable(r, revocable)
    if (r.limits.algorithm !== "fixed-window") {
      return Effect.map(consume(r, r.cost), (result) => counted(r, result, r.cost))
    }
    if (windows === undefined) return reserveOnClock(r)
    return Effect.map(
      windows.fixedWindowAligned({
        key: r.key,
        tokens: r.cost,
        // As effect's limiter: a window under a millisecond counts as one.
        window: Duration.max(r.limits.window, oneMilli),
        limit: r.limit
      }),
      ([delay, start, index]): Taken => ({ reservation: r, delay: significant(delay), tokens: r.cost, start, index })
    )
  }

  // Each reservation back to where it was taken. Negative tokens undo one in effect's algorithms (the
  // bucket moves back) and in a capped window (which they never open).
  const giveBack = (t: Taken): Effect.Effect<void, RateLimiter.RateLimiterError> => {
    const r = t.reservation
    if (t.tokens === 0) return Effect.void
    if (r.limits.algorithm !== "fixed-window") {
      if (lastOnBucket.get(r.key) !== t) return Effect.void
      lastOnBucket.delete(r.key)
      return Effect.asVoid(consume(r, -t.tokens))
    }
    if (windows !== undefined) {
      return windows.fixedWindowRelease({ key: r.key, tokens: t.tokens, start: t.start, index: t.index })
    }
    return Effect.asVoid(
      guarded.fixedWindow({ key: clockWindowKey(r, t.index), tokens: -t.tokens, refillRate: oneMilli, limit: r.limit })
    )
  }

  const release = (taken: ReadonlyArray<Taken>): Effect.Effect<void> =>
    Effect.forEach(taken, (t) => Effect.ignore(giveBack(t)), { discard: true, concurrency: 2 })

  // The give-back of a caller that is leaving (refused, interrupted): it answers at once, and the store
  // takes the slots back in the background (a Redis give-back could hold it up to the guard's deadline
  // for each of its two reservations).
  const releaseLeaving = (taken: ReadonlyArray<Taken>): Effect.Effect<void> => {
    for (let i = 0; i < taken.length; i++) if (taken[i]!.tokens !== 0) return inBackground(release(taken))
    return Effect.void
  }

  // The request reservation of each listed key, made once. Keys under `default` (a user's, a virtual
  // key's) are as many as the callers: theirs are made per call, not kept for every key ever seen.
  const requestReservations = new Map<string, Reservation>()
  const requestReservation = (key: string, limits: ResolvedLimits, limit: number): Reservation => {
    let reservation = requestReservations.get(key)
    if (reservation === undefined) {
      reservation = { key: `${key}:rpm`, kind: "requests", limit, cost: 1, limits }
      if (config.providers.has(key)) requestReservations.set(key, reservation)
    }
    return reservation
  }

  // Both reservations of a call at once (Redis: both round trips at once).
  const reserveAll = (
    reservations: ReadonlyArray<Reservation>
  ): Effect.Effect<ReadonlyArray<Result.Result<Taken, RateLimiter.RateLimiterError>>> => {
    const [first, second] = reservations as [Reservation, Reservation | undefined]
    if (second === undefined) return Effect.map(Effect.result(reserve(first)), (r) => [r])
    return guard === undefined
      ? Effect.flatMap(Effect.result(reserve(first)), (a) => Effect.map(Effect.result(reserve(second)), (b) => [a, b]))
      : Effect.all([Effect.result(reserve(first)), Effect.result(reserve(second))], { concurrency: 2 })
  }

  // A call is sent once, when its latest slot comes. A reservation whose slot comes earlier
  // would count the call in a window it is not sent in: a request counted in this minute but
  // sent in the next, after waiting for tokens, and the next minute admitted its whole limit
  // besides. Such a reservation is given back during the wait and taken again after it.
  // `held`: reservations whose slot is now; `waited`: the time this call has waited so far.
  // Runs uninterruptibly (see `untraced`): `restore` makes a wait interruptible.
  const decide = (
    key: string,
    results: ReadonlyArray<Result.Result<Taken, RateLimiter.RateLimiterError>>,
    restore: <A, E>(effect: Effect.Effect<A, E>) => Effect.Effect<A, E>,
    held: ReadonlyArray<Taken> = [],
    waited = 0,
    waitUntil?: number
  ): Effect.Effect<void, ModelError> => {
    const metrics = metricsOf(key)
    const taken: Array<Taken> = [...held]
    let waitMillis = 0
    let storeFailure: RateLimiter.RateLimiterError | undefined
    for (let i = 0; i < results.length; i++) {
      const result = results[i]!
      if (Result.isSuccess(result)) {
        taken.push(result.success)
        waitMillis = Math.max(waitMillis, result.success.delay)
      } else {
        storeFailure = result.failure
      }
    }
    // The memory store full (`maxKeys`): refused whatever `onStoreError`, as letting it through would
    // leave the key unlimited.
    const full = storeFailure?.reason._tag === "RateLimitStoreError" ? storeFailure.reason.cause : undefined
    // Refused for the store's sake (full, or failing closed): what was taken is given back.
    const refuse = (message: string, retryAfter: Duration.Duration, cause?: unknown) => {
      metrics.rejected++
      return Effect.andThen(
        releaseLeaving(taken),
        Effect.fail(
          new ModelError({
            reason: "RateLimited",
            message,
            provider: key,
            retryAfter,
            ...(cause === undefined ? {} : { cause })
          })
        )
      )
    }
    if (full instanceof KeysFull) {
      return refuse(
        `the rate limit of "${key}" cannot be kept: the limiter holds maxKeys ${full.maxKeys} keys, none of whose windows has ended`,
        Duration.millis(Math.ceil(full.retryAfter))
      )
    }
    if (storeFailure !== undefined && failClosed) {
      return refuse(
        `the rate limit of "${key}" cannot be checked (store unavailable) and onStoreError is "reject"`,
        storeRetryAfter,
        // What tells this refusal from a limit's (which names it in `rateLimit`): the store failed.
        storeFailure
      )
    }
    // A wait the caller's deadline would cut is not made: it fails now, and a fallback gets the time left.
    const now = clock.currentTimeMillisUnsafe()
    const pastDeadline = waitMillis > 0 && waitUntil !== undefined && now + waitMillis >= waitUntil
    if (waited + waitMillis > maxWaitMillis || pastDeadline) {
      const retryAfter = Duration.millis(Math.ceil(waitMillis))
      // The limit whose slot is furthest (of those just asked: `held` ones are due now) is the one that
      // refused, and the one retryAfter waits for; requests on a tie.
      let refusing: Taken | undefined
      for (let i = held.length; i < taken.length; i++) {
        if (refusing === undefined || taken[i]!.delay > refusing.delay) refusing = taken[i]
      }
      const limit = refusing?.reservation
      const limitText =
        limit === undefined ? "" : ` (${limit.limit} ${limit.kind} per ${Duration.format(limit.limits.window)})`
      metrics.rejected++
      return Effect.andThen(
        releaseLeaving(taken),
        Effect.fail(
          new ModelError({
            reason: "RateLimited",
            message: `rate limit of "${key}" reached${limitText}: the next slot is in ${Duration.format(retryAfter)}, beyond ${pastDeadline ? "the call's total deadline" : `maxWait ${Duration.format(config.maxWait)}`}`,
            provider: key,
            retryAfter,
            ...(limit === undefined ? {} : { rateLimit: limit.kind, limit: limit.limit })
          })
        )
      )
    }
    if (waitMillis <= 0) {
      // A caller interrupted while the store counted it is not sent: it gives back what it took.
      return Effect.matchCauseEffect(restore(Effect.void), {
        onFailure: (cause) => Effect.andThen(releaseLeaving(taken), Effect.failCause(cause)),
        onSuccess: () => {
          gone(taken)
          metrics.wait.record(waited)
          if (waited > 0) metrics.delayed++
          else metrics.immediate++
          return Effect.void
        }
      })
    }
    // `held` ones are due now.
    const kept: Array<Taken> = []
    const early: Array<Taken> = []
    for (let i = 0; i < taken.length; i++)
      (i < held.length || taken[i]!.delay < waitMillis ? early : kept).push(taken[i]!)
    const sleep = Effect.sleep(Duration.millis(waitMillis))
    if (early.length === 0) {
      metrics.wait.record(waited + waitMillis)
      metrics.delayed++
      return Effect.all(
        [
          Effect.annotateCurrentSpan({ "orchestra.rate_limit.wait_ms": waited + waitMillis }),
          Effect.onInterrupt(restore(sleep), () => releaseLeaving(kept)),
          Effect.sync(() => gone(kept))
        ],
        { discard: true }
      )
    }
    // The give-back is a store call: the wait ends at the slot all the same (and so within `waitUntil`).
    const sleepToSlot = Effect.suspend(() =>
      Effect.sleep(Duration.millis(Math.max(0, now + waitMillis - clock.currentTimeMillisUnsafe())))
    )
    return Effect.andThen(
      release(early),
      Effect.matchCauseEffect(restore(sleepToSlot), {
        onFailure: (cause) => Effect.andThen(releaseLeaving(kept), Effect.failCause(cause)),
        onSuccess: () =>
          Effect.flatMap(reserveAll(early.map((t) => t.reservation)), (again) =>
            decide(key, again, restore, kept, waited + waitMillis, waitUntil)
          )
      })
    )
  }

  // Plain code rather than a generator: this runs for every attempt.
  const untraced = (key: string, cost?: AcquireCost): Effect.Effect<void, ModelError> => {
    let tokens = 0
    if (cost?.tokens !== undefined) {
      const checked = checkTokens(cost.tokens)
      if (Result.isFailure(checked)) return Input.orInvalidRequest(checked, key).pipe(Effect.asVoid)
      tokens = checked.success
    }
    let waitUntil: number | undefined
    if (cost?.waitUntil !== undefined) {
      const checked = checkWaitUntil(cost.waitUntil)
      if (Result.isFailure(checked)) return Input.orInvalidRequest(checked, key).pipe(Effect.asVoid)
      waitUntil = checked.success
    }
    const limits = limitsOf(key)
    if (limits === undefined) return Effect.void
    const reservations: Array<Reservation> = []
    if (limits.requestsPerMinute !== undefined) {
      reservations.push(requestReservation(key, limits, limits.requestsPerMinute))
    }
    // A request larger than the whole budget waits for an empty window, then goes.
    if (limits.tokensPerMinute !== undefined && tokens > 0) {
      const cost = Math.min(tokens, limits.tokensPerMinute)
      reservations.push({ key: `${key}:tpm`, kind: "tokens", limit: limits.tokensPerMinute, cost, limits })
    }
    if (reservations.length === 0) return Effect.void
    // Uninterruptible but for the waits: a caller interrupted while the store counts it (a
    // Redis round trip in flight) kept its slot, which the store had counted and no one gave
    // back. Store calls are bounded (the guard's deadline), so an interruption waits at most that.
    return Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(reserveAll(reservations), (all) => decide(key, all, restore, [], 0, waitUntil))
    )
  }

  // A span only for traced callers: one costs more than a whole in-memory acquire.
  const acquire: Service["acquire"] = (key, cost) =>
    Effect.withFiber((fiber) =>
      isTraced(fiber) ? Effect.withSpan(untraced(key, cost), "RateLimits.acquire") : untraced(key, cost)
    )

  return { service: RateLimits.of({ acquire, limitsOf }), release: releaseMetrics }
})

// A layer's limiter: its series leave the registry when the layer closes. The finalizer is added to the
// scope as it is, not with the caller's context (`Effect.addFinalizer`): a limiter built by a request (the
// key store's) would keep that request's context until the scope closes, and run its release on that
// request's scheduler.
const scoped = (
  config: Config,
  store: RateLimiter.RateLimiterStore["Service"],
  policy?: StorePolicy
): Effect.Effect<Service, Input.OptionError, Scope.Scope> =>
  Effect.flatMap(makeWith(config, store, policy), ({ service, release }) =>
    Effect.flatMap(Effect.scope, (scope) => Effect.as(Scope.addFinalizer(scope, Effect.sync(release)), service))
  )

// A revocable store's calls, each bounded and counted by the guard as the others are.
const guardRevocable = (store: RedisStore.Revocable, guard: SharedRedis.Guard | undefined): RedisStore.Revocable =>
  guard === undefined
    ? store
    : {
        fixedWindowAlignedTagged: (o) =>
          Effect.mapError(guard.call("fixedWindow", store.fixedWindowAlignedTagged(o)), toLimiterError),
        tokenBucketTagged: (o) =>
          Effect.mapError(guard.call("tokenBucket", store.tokenBucketTagged(o)), toLimiterError),
        revokeReservation: (o) =>
          Effect.mapError(
            guard.call(o.algorithm === "fixed-window" ? "fixedWindow" : "tokenBucket", store.revokeReservation(o)),
            toLimiterError
          )
      }

// Whether a failed store call may have reached the store and run: all but one skipped during a
// reported outage or refused by the client before it was written (see `Redis.neverSent`).
const mayHaveRun = (error: RateLimiter.RateLimiterError): boolean => {
  const cause = error.reason._tag === "RateLimitStoreError" ? error.reason.cause : undefined
  return !SharedRedis.neverSent(
    cause instanceof SharedRedis.StoreError
      ? cause
      : new SharedRedis.StoreError({
          store: "ratelimit",
          operation: "reserve",
          reason: "Failed",
          message: error.message,
          cause: error
        })
  )
}

// Runs `effect` in a fiber of its own that the caller does not wait for. It starts at once, so a store
// that answers synchronously (memory) has done it before the caller goes on.
const inBackground = (effect: Effect.Effect<void>): Effect.Effect<void> =>
  Effect.asVoid(Effect.forkDetach(effect, { startImmediately: true }))

const toLimiterError = (error: SharedRedis.StoreError): RateLimiter.RateLimiterError =>
  new RateLimiter.RateLimiterError({
    reason: new RateLimiter.RateLimitStoreError({ message: error.message, cause: error })
  })

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
