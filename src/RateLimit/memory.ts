/**
 * The in-memory fixed window of `layerMemory`, with the same decisions as the Redis store's
 * script (`AlignedFixedWindow`). The store's own `fixedWindow` stays effect's (a running counter
 * that lasts `window / limit` per token taken, so a window used at 60% ended after 60% of its
 * length and two 60-token calls 40 s apart went in one 100-token minute); the token bucket and
 * the adaptive limiter stay effect's own.
 *
 * @internal
 */
import { Duration, Effect } from "effect"
import { RateLimiter } from "effect/persistence"
import type { AlignedFixedWindow } from "./Redis.js"

interface Windows {
  /** When window 0 started: the first call after the windows before had all ended. */
  readonly start: number
  /** The length of each window (the latest call's). */
  windowMillis: number
  /** Windows before this one have ended and their counts are dropped. */
  head: number
  /** The last window holding a reservation (the ones after it are empty). */
  tail: number
  /** No window from `head` before this one has room: the search for one starts here. */
  open: number
  /** Tokens reserved in each window from `start`, by its index. */
  readonly counts: Map<number, number>
}

// Whether every window of `state` holding a reservation has ended: the key is then as one never seen.
const ended = (state: Windows, windowMillis: number, now: number): boolean =>
  now >= state.start + (state.tail + 1) * windowMillis

// Below this many keys, the store looks over them no more often than once per this many calls.
const minSweep = 64

/**
 * The `maxKeys` of `layerMemory` when not given.
 *
 * @internal
 */
export const defaultMaxKeys = 100_000

/**
 * Why the store refused a key (the cause of its `RateLimitStoreError`): it holds `maxKeys` keys,
 * none of whose windows has ended. `retryAfter`: when the first of them ends, in milliseconds.
 *
 * @internal
 */
export class KeysFull {
  constructor(
    readonly maxKeys: number,
    readonly retryAfter: number
  ) {}
}

/**
 * `store` with fixed windows kept here beside it, one entry per limited key (a provider's
 * requests and tokens, a virtual key's, a user's). A key whose windows holding a reservation
 * have all ended is as one never seen: it starts afresh when used again, and is dropped by a
 * look over the keys made once the calls since the last one are as many as the keys
 * (O(1) a call, amortised), so the store holds the keys used within their windows, not
 * every key ever seen. Those and the keys of effect's token buckets are at most `maxKeys`: a new
 * key past it fails with a `RateLimitStoreError` whose cause is a `KeysFull` (which `RateLimit`
 * refuses as `RateLimited`, never lets through). `size` is the number of fixed-window keys held.
 *
 * @internal
 */
export const withAlignedFixedWindow = (
  store: RateLimiter.RateLimiterStore["Service"],
  maxKeys: number = defaultMaxKeys
): RateLimiter.RateLimiterStore["Service"] &
  AlignedFixedWindow & { readonly size: number; readonly forget: (key: string) => void } => {
  const windows = new Map<string, Windows>()
  // The token buckets of effect's store, by key: when each is full again (then as one never seen).
  const buckets = new Map<string, number>()
  let callsSinceSweep = 0
  // No key held ends before this: the earliest end at the last look over the keys, lowered by every
  // change since. A full store looks again only once it has passed, so a burst of new keys is not a
  // look each.
  let firstEnd = 0

  const sweep = (now: number) => {
    callsSinceSweep = 0
    firstEnd = Number.POSITIVE_INFINITY
    for (const [key, state] of windows) {
      if (ended(state, state.windowMillis, now)) windows.delete(key)
      else firstEnd = Math.min(firstEnd, state.start + (state.tail + 1) * state.windowMillis)
    }
    for (const [key, full] of buckets) {
      if (full <= now) buckets.delete(key)
      else firstEnd = Math.min(firstEnd, full)
    }
  }

  // Whether a new key finds no room (after a look over the keys, when one may have ended since).
  const isFull = (now: number): boolean => {
    if (windows.size + buckets.size < maxKeys) return false
    if (now >= firstEnd) sweep(now)
    return windows.size + buckets.size >= maxKeys
  }

  const keysFull = (now: number) =>
    Effect.fail(
      new RateLimiter.RateLimiterError({
        reason: new RateLimiter.RateLimitStoreError({
          message: `the store holds maxKeys ${maxKeys} keys, none of whose windows has ended`,
          cause: new KeysFull(maxKeys, Math.max(firstEnd - now, 1))
        })
      })
    )

  const place = (key: string, tokens: number, windowMillis: number, limit: number, now: number) => {
    if (++callsSinceSweep >= Math.max(minSweep, windows.size + buckets.size)) sweep(now)
    let state = windows.get(key)
    // Refused, not let through: a key the store cannot hold would be a key without limit.
    if (state === undefined && isFull(now)) return undefined
    if (state === undefined || ended(state, windowMillis, now)) {
      state = { start: now, windowMillis, head: 0, tail: 0, open: 0, counts: new Map() }
      windows.set(key, state)
    }
    state.windowMillis = windowMillis
    // A clock set back (an NTP step) stays in the window it was in: no window opens before the first.
    const current = Math.max(state.head, Math.floor((now - state.start) / windowMillis))
    for (; state.head < current; state.head++) state.counts.delete(state.head)
    // The first window from now with room: a give-back can leave room in any of them, not only in the last.
    const from = Math.max(current, state.open)
    let index = from
    let used = state.counts.get(index) ?? 0
    while (used > 0 && used + tokens > limit) used = state.counts.get(++index) ?? 0
    state.counts.set(index, used + tokens)
    if (index > state.tail) state.tail = index
    firstEnd = Math.min(firstEnd, state.start + (state.tail + 1) * windowMillis)
    // Full windows are passed over once, not by every call after (a long queue waiting at `maxWait: Infinity`).
    let open = from
    while ((state.counts.get(open) ?? 0) >= limit) open++
    state.open = open
    const delay = state.start + index * windowMillis - now
    return [Math.max(delay, 0), state.start, index] as const
  }

  const release = (key: string, tokens: number, start: number, index: number) => {
    const state = windows.get(key)
    if (state === undefined || state.start !== start) return
    const left = (state.counts.get(index) ?? 0) - tokens
    if (left > 0) state.counts.set(index, left)
    else state.counts.delete(index)
    if (index < state.open) state.open = index
    // Last windows emptied by give-backs are free again (a call refused for its wait must not push the next ones back).
    while (state.tail > state.head && !state.counts.has(state.tail)) state.tail--
    firstEnd = Math.min(firstEnd, state.start + (state.tail + 1) * state.windowMillis)
  }

  return {
    ...store,
    get size() {
      return windows.size
    },
    fixedWindowAligned: (o) =>
      Effect.clockWith((clock) => {
        const now = clock.currentTimeMillisUnsafe()
        const placed = place(o.key, o.tokens, Duration.toMillis(o.window), o.limit, now)
        return placed === undefined ? keysFull(now) : Effect.succeed(placed)
      }),
    tokenBucket: (o) =>
      Effect.clockWith((clock) => {
        const now = clock.currentTimeMillisUnsafe()
        if (++callsSinceSweep >= Math.max(minSweep, windows.size + buckets.size)) sweep(now)
        const known = buckets.get(o.key)
        if ((known === undefined || known <= now) && isFull(now)) return keysFull(now)
        return Effect.map(store.tokenBucket(o), (answer) => {
          // As effect's store: full again once the tokens taken have been refilled.
          const [remaining, elapsed] = answer
          const full = now - elapsed + Math.ceil(o.limit - remaining) * Duration.toMillis(o.refillRate)
          buckets.set(o.key, full)
          if (full < firstEnd) firstEnd = full
          return answer
        })
      }),
    fixedWindowRelease: (o) => Effect.sync(() => release(o.key, o.tokens, o.start, o.index)),
    // A key whose owner is gone (a deleted virtual key): one of the same name starts afresh.
    forget: (key) => {
      windows.delete(key)
    }
  }
}
