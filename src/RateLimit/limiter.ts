/**
 * The limiter over checked options: a call's reservations, the wait for its latest slot (a
 * reservation whose slot comes earlier is given back and taken again), and the refusals (the next
 * slot past `maxWait` or the call's deadline, the memory store full, the store failing closed).
 *
 * @internal
 */
import { Clock, Duration, Effect, Result, Scope } from "effect"
import { RateLimiter } from "effect/persistence"
import { ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import { isTraced } from "../policy/span.js"
import type { AcquireCost, ResolvedLimits, Service, StorePolicy } from "../RateLimit.js"
import { guardStore } from "./guarded.js"
import { KeysFull } from "./memory.js"
import { make as makeMetrics } from "./metrics.js"
import { checkOnStoreError, checkPolicy, checkTokens, checkWaitUntil, type Config } from "./options.js"
import { make as makeReservations, type Reservation, type Taken } from "./reservations.js"

// `make` over options checked (`checkOptions`: the layers check theirs with their own fields and hand
// over the whole result, so no option of `make`'s is dropped on the way), and what removes its metric
// series from the registry (the layers call it when they close).
export const makeWith = Effect.fnUntraced(function* (
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
  const failClosed = onStoreError === "reject"
  const guarded = guardStore(store, guard, failClosed)
  const limiter = yield* Effect.provideService(RateLimiter.make, RateLimiter.RateLimiterStore, guarded.store)
  const maxWaitMillis = Duration.toMillis(config.maxWait)
  const { metricsOf, release: releaseMetrics } = makeMetrics(yield* Effect.context<never>(), (key) =>
    config.providers.has(key)
  )

  const limitsOf = (key: string): ResolvedLimits | undefined => config.providers.get(key) ?? config.fallback

  // Both reservations of a call at once on Redis (behind a guard): both round trips at once.
  const { reserveAll, release, releaseLeaving, gone } = makeReservations(
    limiter,
    guarded,
    clock,
    maxWaitMillis,
    guard !== undefined
  )

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

  const service: Service = { acquire, limitsOf }
  return { service, release: releaseMetrics }
})

// A layer's limiter: its series leave the registry when the layer closes. The finalizer is added to the
// scope as it is, not with the caller's context (`Effect.addFinalizer`): a limiter built by a request (the
// key store's) would keep that request's context until the scope closes, and run its release on that
// request's scheduler.
export const scoped = (
  config: Config,
  store: RateLimiter.RateLimiterStore["Service"],
  policy?: StorePolicy
): Effect.Effect<Service, Input.OptionError, Scope.Scope> =>
  Effect.flatMap(makeWith(config, store, policy), ({ service, release }) =>
    Effect.flatMap(Effect.scope, (scope) => Effect.as(Scope.addFinalizer(scope, Effect.sync(release)), service))
  )
