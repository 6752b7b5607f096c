/**
 * Durations are read on the monotonic clock: on the wall clock, an NTP step back of an hour while
 * something ran made its duration minus an hour. Dates (`startedAt`, `endedAt`) stay on the wall clock.
 *
 * @internal
 */
import type { Clock } from "effect"

/**
 * Now in whole milliseconds on `clock`'s monotonic clock (`TestClock` moves it with its wall time).
 *
 * @internal
 */
export const monotonicMillis = (clock: Clock.Clock): number =>
  Math.floor(Number(clock.monotonicTimeNanosUnsafe()) / 1_000_000)
