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
import type { RateLimiter } from "effect/persistence"
import type { AlignedFixedWindow } from "./Redis.js"

interface Windows {
  /** When window 0 started: the first call after the windows before had all ended. */
  readonly start: number
  /** Windows before this one have ended and their counts are dropped. */
  head: number
  /** The last window holding a reservation (the ones after it are empty). */
  tail: number
  /** No window from `head` before this one has room: the search for one starts here. */
  open: number
  /** Tokens reserved in each window from `start`, by its index. */
  readonly counts: Map<number, number>
}

/**
 * `store` with fixed windows kept here beside it. A key's windows are dropped once the last
 * one holding a reservation has ended and the key is used again; there is one entry per
 * limited key, a provider's requests and tokens.
 *
 * @internal
 */
export const withAlignedFixedWindow = (
  store: RateLimiter.RateLimiterStore["Service"]
): RateLimiter.RateLimiterStore["Service"] & AlignedFixedWindow => {
  const windows = new Map<string, Windows>()

  const place = (key: string, tokens: number, windowMillis: number, limit: number, now: number) => {
    let state = windows.get(key)
    if (state === undefined || now >= state.start + (state.tail + 1) * windowMillis) {
      state = { start: now, head: 0, tail: 0, open: 0, counts: new Map() }
      windows.set(key, state)
    }
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
  }

  return {
    ...store,
    fixedWindowAligned: (o) =>
      Effect.clockWith((clock) =>
        Effect.sync(() => place(o.key, o.tokens, Duration.toMillis(o.window), o.limit, clock.currentTimeMillisUnsafe()))
      ),
    fixedWindowRelease: (o) => Effect.sync(() => release(o.key, o.tokens, o.start, o.index))
  }
}
