/**
 * The in-memory fixed window of `layerMemory`, placing a token reservation in one step as the
 * Redis store's script does (`AlignedFixedWindow`): one that would straddle a window boundary
 * also takes the rest of the window before, so all its tokens count in the window of its last
 * one. With effect's memory store that took two store calls, and a fiber yields between any
 * two steps (its scheduler's op budget): another call's tokens landed between them, and two
 * 60-token calls ran in one 100-token window. The token bucket and the adaptive limiter stay
 * effect's own.
 *
 * @internal
 */
import { Duration, Effect } from "effect"
import type { RateLimiter } from "effect/persistence"
import type { AlignedFixedWindow } from "./Redis.js"

interface Counter {
  count: number
  expiresAt: number
}

/**
 * `store` with its fixed window kept here (the same decisions as effect's memory store), and the
 * aligned placement beside it on the same counters. A counter is dropped once it has expired
 * and is read again; there is one per limited key, a provider's requests and tokens.
 *
 * @internal
 */
export const withAlignedFixedWindow = (
  store: RateLimiter.RateLimiterStore["Service"]
): RateLimiter.RateLimiterStore["Service"] & AlignedFixedWindow => {
  const counters = new Map<string, Counter>()

  // As the Redis store's script: `limit` caps the window (fail mode), `align` places a reservation
  // in the window of its last token (delay mode). Answers the count, the time to expiry and the tokens taken.
  const place = (
    key: string,
    requested: number,
    refillMillis: number,
    limit: number | undefined,
    align: number | undefined,
    now: number
  ): readonly [count: number, ttl: number, taken: number] => {
    let counter = counters.get(key)
    if (counter === undefined || counter.expiresAt <= now) {
      counter = { count: 0, expiresAt: now }
      counters.set(key, counter)
    }
    if (limit !== undefined && counter.count + requested > limit) {
      return [counter.count + requested, counter.expiresAt - now, 0]
    }
    let tokens = requested
    if (align !== undefined && limit === undefined && tokens > 1) {
      const window = Math.floor((counter.count + tokens - 1) / align)
      if (Math.floor(counter.count / align) !== window) tokens += window * align - counter.count
    }
    counter.count += tokens
    if (limit === undefined) counter.expiresAt += refillMillis * tokens
    else if (counter.expiresAt === now && tokens > 0) counter.expiresAt = now + refillMillis * limit
    if (counter.expiresAt <= now) counters.delete(key)
    return [counter.count, Math.max(0, counter.expiresAt - now), tokens]
  }

  return {
    ...store,
    fixedWindow: (o) =>
      Effect.clockWith((clock) =>
        Effect.sync(() => {
          const [count, ttl] = place(
            o.key,
            o.tokens,
            Duration.toMillis(o.refillRate),
            o.limit,
            undefined,
            clock.currentTimeMillisUnsafe()
          )
          return [count, ttl] as const
        })
      ),
    fixedWindowAligned: (o) =>
      Effect.clockWith((clock) =>
        Effect.sync(() =>
          place(
            o.key,
            o.tokens,
            Duration.toMillis(o.refillRate),
            undefined,
            o.windowLimit,
            clock.currentTimeMillisUnsafe()
          )
        )
      )
  }
}
