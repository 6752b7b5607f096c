/**
 * Timers of the library's own housekeeping (deadline lanes, the breakers' idle sweep and
 * half-open moves) that must not keep a process alive on their own: a script that never
 * closes its layer (a Promise facade not disposed) exits once its work is done, as it would
 * with p-limit or a breaker package. Only on the real clock; under any other (`TestClock`)
 * they sleep on that clock as usual.
 *
 * @internal
 */
import { Clock, Context, Duration, Effect, Layer } from "effect"

/**
 * The runtime's default clock (a singleton): only its sleeps are real timers.
 *
 * @internal
 */
export const realClock: Clock.Clock = Context.get(Context.empty(), Clock.Clock)

/** Node's largest timer delay; longer waits are chained. */
const MAX_TIMER_MILLIS = 2 ** 31 - 1

/**
 * A handle on a real timer, to tell whether it should keep the process alive.
 *
 * @internal
 */
export interface Handle {
  ref(): unknown
  unref(): unknown
}

/**
 * Sleeps `millis` on `clock`. On the real clock the timer is handed to `onTimer` (to be
 * `ref`ed / `unref`ed by its owner) and starts unref'ed when `keepAlive` is false.
 *
 * @internal
 */
export const sleep = (
  clock: Clock.Clock,
  millis: number,
  keepAlive: boolean,
  onTimer?: (handle: Handle | undefined) => void
): Effect.Effect<void> =>
  clock !== realClock || millis <= 0
    ? clock.sleep(Duration.millis(millis))
    : Effect.callback<void>((resume) => {
        const rest = millis - MAX_TIMER_MILLIS
        const handle = setTimeout(
          () => {
            onTimer?.(undefined)
            resume(rest > 0 ? sleep(clock, rest, keepAlive, onTimer) : Effect.void)
          },
          Math.min(millis, MAX_TIMER_MILLIS)
        )
        if (!keepAlive) handle.unref?.()
        onTimer?.(handle)
        return Effect.sync(() => {
          clearTimeout(handle)
          onTimer?.(undefined)
        })
      })

/**
 * `clock` for a layer's own background fibers (a store's periodic sweep): the same time, but
 * its sleeps do not keep the process alive on the real clock.
 *
 * @internal
 */
export const background = (clock: Clock.Clock): Clock.Clock =>
  clock !== realClock
    ? clock
    : Object.create(clock, {
        sleep: { value: (duration: Duration.Duration) => sleep(clock, Duration.toMillis(duration), false) }
      })

/**
 * Provides {@link background} of the clock in context, to a layer whose background fibers
 * are not ours to change (effect's in-memory rate-limiter store sweeps every minute).
 *
 * @internal
 */
export const layerBackground: Layer.Layer<never> = Layer.effect(
  Clock.Clock,
  Effect.map(Effect.service(Clock.Clock), background)
) as Layer.Layer<never>
