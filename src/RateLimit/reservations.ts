/**
 * Slots taken from the store and given back: a call's reservations (its requests, its tokens) on
 * the algorithm of their limits, fixed windows kept exact on any store, reservations revocable
 * when failing closed, and the give-back of a caller that leaves.
 *
 * @internal
 */
import { type Clock, Duration, Effect, type Result } from "effect"
import { RateLimiter } from "effect/persistence"
import type { RateLimitKind } from "../AiError.js"
import type { ResolvedLimits } from "../RateLimit.js"
import { type Guarded, mayHaveRun } from "./guarded.js"
import type * as RedisStore from "./Redis.js"

// The limiter's delays carry floating-point noise (a slot due now can come back as 1e-4 ms
// away, more so on Redis's microsecond clock): below this a slot counts as free.
const significant = (millis: number): number => (millis < 0.01 ? 0 : millis)

const oneMilli = Duration.millis(1)

export interface Reservation {
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
export interface Taken {
  readonly reservation: Reservation
  readonly delay: number
  readonly tokens: number
  readonly start: number
  readonly index: number
}

export interface Reservations {
  /** Both reservations of a call at once (Redis, `concurrent`: both round trips at once). */
  readonly reserveAll: (
    reservations: ReadonlyArray<Reservation>
  ) => Effect.Effect<ReadonlyArray<Result.Result<Taken, RateLimiter.RateLimiterError>>>
  readonly release: (taken: ReadonlyArray<Taken>) => Effect.Effect<void>
  readonly releaseLeaving: (taken: ReadonlyArray<Taken>) => Effect.Effect<void>
  readonly gone: (taken: ReadonlyArray<Taken>) => void
}

export const make = (
  limiter: RateLimiter.RateLimiter,
  { store: guarded, windows, revocable }: Guarded,
  clock: Clock.Clock,
  maxWaitMillis: number,
  concurrent: boolean
): Reservations => {
  // Unique across processes: a random tag per limiter, then a counter.
  const idTag = revocable === undefined ? "" : `${globalThis.crypto.randomUUID().slice(0, 13)}.`
  let idCount = 0

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

  // A reservation tagged for revocation (`guardStore`'s `revocable`): one whose store call failed after it may have
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

  const reserveAll = (
    reservations: ReadonlyArray<Reservation>
  ): Effect.Effect<ReadonlyArray<Result.Result<Taken, RateLimiter.RateLimiterError>>> => {
    const [first, second] = reservations as [Reservation, Reservation | undefined]
    if (second === undefined) return Effect.map(Effect.result(reserve(first)), (r) => [r])
    return concurrent
      ? Effect.all([Effect.result(reserve(first)), Effect.result(reserve(second))], { concurrency: 2 })
      : Effect.flatMap(Effect.result(reserve(first)), (a) => Effect.map(Effect.result(reserve(second)), (b) => [a, b]))
  }

  return { reserveAll, release, releaseLeaving, gone }
}

// Runs `effect` in a fiber of its own that the caller does not wait for. It starts at once, so a store
// that answers synchronously (memory) has done it before the caller goes on.
const inBackground = (effect: Effect.Effect<void>): Effect.Effect<void> =>
  Effect.asVoid(Effect.forkDetach(effect, { startImmediately: true }))
