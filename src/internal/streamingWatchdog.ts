/**
 * One timer fiber per stream for all of its deadlines (first chunk, idle gap, total).
 *
 * Why not `Effect.timeout` per chunk: each costs a race, two forks and a timer (~25 µs here),
 * paid on every chunk. Here a deadline is a plain object: moving it later (a chunk arrived)
 * is a field write. The single sleeper fiber wakes at the earliest deadline it knows of,
 * fires what expired, and sleeps again until the next one; a deadline that moved meanwhile
 * only costs it an early wake-up. It is restarted only when a deadline *earlier* than its
 * wake-up time is armed (rare: a new attempt, a shorter idle limit after the first chunk).
 * It sleeps through the stream's own `Clock`, so `TestClock` drives it.
 *
 * @internal
 */
import { Duration, Effect, FiberId, Runtime } from "effect"
import type { Clock, Fiber } from "effect"

/** @internal */
export interface Timer {
  /** Clock millis at which it fires, while armed. */
  deadline: number
  armed: boolean
  /**
   * While disarmed: the shortest time it can take to fire once armed again (its limit), so
   * the sleeper never oversleeps a deadline armed later. `Infinity` when it has no period.
   */
  readonly period: number
  registered: boolean
  readonly onFire: () => void
}

/** @internal */
export interface Watchdog {
  /** A registered, disarmed timer. */
  readonly timer: (period: number, onFire: () => void) => Timer
  readonly arm: (timer: Timer, deadline: number) => void
  readonly disarm: (timer: Timer) => void
  readonly remove: (timer: Timer) => void
  /** Stops the sleeper; no timer fires after this. */
  readonly close: () => void
}

/** @internal */
export const make = (clock: Clock.Clock, runtime: Runtime.Runtime<never>): Watchdog => {
  const timers = new Set<Timer>()
  const fork = Runtime.runFork(runtime)
  let sleeper: Fiber.RuntimeFiber<void, never> | undefined
  let generation = 0
  let wakeAt = Number.POSITIVE_INFINITY
  let closed = false
  let inLoop = false

  const loop = (gen: number): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (gen !== generation || closed) return Effect.void
      inLoop = true
      const now = clock.unsafeCurrentTimeMillis()
      let next = Number.POSITIVE_INFINITY
      for (const timer of timers) {
        if (timer.armed && timer.deadline <= now) {
          // Stays registered, disarmed: the owner may arm it again (the next chunk's gap).
          timer.armed = false
          timer.onFire()
        }
        const due = timer.armed ? timer.deadline : now + timer.period
        if (due < next) next = due
      }
      inLoop = false
      if (next === Number.POSITIVE_INFINITY || closed) {
        sleeper = undefined
        wakeAt = Number.POSITIVE_INFINITY
        return Effect.void
      }
      wakeAt = next
      return Effect.zipRight(Effect.sleep(Duration.millis(next - now)), loop(gen))
    })

  const ensure = (due: number): void => {
    if (closed || inLoop) return
    if (sleeper !== undefined && due >= wakeAt) return
    const previous = sleeper
    const gen = ++generation
    sleeper = undefined
    wakeAt = due
    const fiber = fork(loop(gen))
    if (fiber.unsafePoll() === null && gen === generation) sleeper = fiber
    if (previous !== undefined) previous.unsafeInterruptAsFork(FiberId.none)
  }

  return {
    timer: (period, onFire) => {
      const timer: Timer = { deadline: Number.POSITIVE_INFINITY, armed: false, period, registered: true, onFire }
      timers.add(timer)
      if (period !== Number.POSITIVE_INFINITY) ensure(clock.unsafeCurrentTimeMillis() + period)
      return timer
    },
    arm: (timer, deadline) => {
      timer.deadline = deadline
      timer.armed = true
      if (timer.registered && deadline < wakeAt) ensure(deadline)
    },
    disarm: (timer) => {
      timer.armed = false
    },
    remove: (timer) => {
      timer.armed = false
      if (timer.registered) {
        timer.registered = false
        timers.delete(timer)
      }
    },
    close: () => {
      if (closed) return
      closed = true
      generation++
      timers.clear()
      const fiber = sleeper
      sleeper = undefined
      if (fiber !== undefined) fiber.unsafeInterruptAsFork(FiberId.none)
    }
  }
}
