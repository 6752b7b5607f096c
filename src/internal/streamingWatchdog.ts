/**
 * Deadlines of streams (first chunk, idle gap, total) without a timer per chunk or per stream.
 *
 * Why not `Effect.timeout` per chunk: each costs a race, two forks and a timer (~25 µs here).
 * Timers are grouped in lanes by duration. A timer armed at `now` expires at `now + duration`,
 * and `now` never goes back, so appending to its lane's tail keeps every lane sorted: arming
 * and re-arming (the next chunk's gap) are O(1) relinks, disarming only clears a flag. One
 * sleeper fiber per non-empty lane sleeps until the head's deadline and fires it if armed; a
 * disarmed head goes back to the tail at `now + duration`, the soonest it could fire if armed
 * again. A lane's sleeper is interrupted when its last timer is removed, so no timer outlives
 * the streams (a pending sleep would keep a process alive). Sleepers run on the `Clock` of the
 * streams they serve (one watchdog per clock), so `TestClock` drives them.
 *
 * @internal
 */
import { Duration, Effect, FiberId, Runtime } from "effect"
import type { Clock, Fiber } from "effect"

interface Lane {
  readonly millis: number
  head: Timer | undefined
  tail: Timer | undefined
  sleeper: Fiber.RuntimeFiber<void, never> | undefined
  generation: number
}

/** @internal */
export interface Timer {
  readonly lane: Lane
  readonly onFire: () => void
  deadline: number
  armed: boolean
  prev: Timer | undefined
  next: Timer | undefined
  linked: boolean
}

/** @internal */
export interface Watchdog {
  /** A timer that fires `millis` after each arming, unless disarmed or removed first. */
  readonly timer: (millis: number, onFire: () => void) => Timer
  /** (Re)starts the countdown from now. */
  readonly arm: (timer: Timer) => void
  /** Stops the countdown; the timer stays registered for a later `arm`. */
  readonly disarm: (timer: Timer) => void
  /** Unregisters the timer (it may be armed again later). */
  readonly remove: (timer: Timer) => void
}

const unlink = (timer: Timer): void => {
  if (!timer.linked) return
  const lane = timer.lane
  timer.linked = false
  if (timer.prev) timer.prev.next = timer.next
  else lane.head = timer.next
  if (timer.next) timer.next.prev = timer.prev
  else lane.tail = timer.prev
  timer.prev = undefined
  timer.next = undefined
}

const append = (timer: Timer, deadline: number): void => {
  const lane = timer.lane
  timer.deadline = deadline
  timer.linked = true
  timer.prev = lane.tail
  if (lane.tail) lane.tail.next = timer
  else lane.head = timer
  lane.tail = timer
}

/** @internal */
export const make = (clock: Clock.Clock, runtime: Runtime.Runtime<never>): Watchdog => {
  const lanes = new Map<number, Lane>()
  const fork = Runtime.runFork(runtime)

  const loop = (lane: Lane, generation: number): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (generation !== lane.generation) return Effect.void
      const now = clock.unsafeCurrentTimeMillis()
      let head = lane.head
      while (head !== undefined && head.deadline <= now) {
        unlink(head)
        if (head.armed) {
          head.armed = false
          head.onFire()
        } else {
          append(head, now + lane.millis)
        }
        head = lane.head
      }
      if (head === undefined) {
        lane.sleeper = undefined
        return Effect.void
      }
      return Effect.zipRight(Effect.sleep(Duration.millis(head.deadline - now)), loop(lane, generation))
    })

  const ensureSleeper = (lane: Lane): void => {
    if (lane.sleeper !== undefined) return
    const generation = ++lane.generation
    const fiber = fork(loop(lane, generation))
    if (fiber.unsafePoll() === null && generation === lane.generation) lane.sleeper = fiber
  }

  return {
    timer: (millis, onFire) => {
      let lane = lanes.get(millis)
      if (lane === undefined) {
        lane = { millis, head: undefined, tail: undefined, sleeper: undefined, generation: 0 }
        lanes.set(millis, lane)
      }
      return { lane, onFire, deadline: 0, armed: false, prev: undefined, next: undefined, linked: false }
    },
    arm: (timer) => {
      unlink(timer)
      timer.armed = true
      append(timer, clock.unsafeCurrentTimeMillis() + timer.lane.millis)
      ensureSleeper(timer.lane)
    },
    disarm: (timer) => {
      timer.armed = false
    },
    remove: (timer) => {
      timer.armed = false
      unlink(timer)
      const lane = timer.lane
      if (lane.head === undefined && lane.sleeper !== undefined) {
        const sleeper = lane.sleeper
        lane.sleeper = undefined
        lane.generation++
        sleeper.unsafeInterruptAsFork(FiberId.none)
      }
    }
  }
}
