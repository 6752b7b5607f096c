/**
 * Runs provider calls in child fibers with deadlines, and lets a closing executor find and
 * interrupt every call still running.
 *
 * Why not `Effect.timeout`: it races each call against a sleeping fiber, two forks and a
 * timer per call (~25-40 µs here). Here a call runs in a child fiber started *immediately*
 * (synchronously, on the caller's runtime, so it sees the same Clock, spans and services).
 * A call that completes without suspending costs no timer and no bookkeeping at all. A call
 * that suspends joins a FIFO lane of its timeout duration: deadlines in one lane are
 * monotone, so one timer fiber per distinct duration sleeps until the head's deadline,
 * interrupts what expired, and sleeps again. Finished calls unlink themselves in O(1).
 *
 * @internal
 */
import { Clock, Duration, Effect, Exit, Fiber, Runtime } from "effect"
import type { Scope } from "effect"

interface Node {
  readonly deadline: number
  readonly fiber: Fiber.RuntimeFiber<unknown, unknown>
  readonly lane: Lane
  prev: Node | undefined
  next: Node | undefined
  linked: boolean
  ending: "timeout" | "shutdown" | undefined
}

interface Lane {
  head: Node | undefined
  tail: Node | undefined
  timerRunning: boolean
}

/** @internal */
export interface CallRunner {
  /**
   * Runs `effect` in a tracked child fiber. With a `timeout`, `onTimeout()` is the failure
   * when the deadline fires (the call has been interrupted and its finalizers have run by
   * then). When the runner is shut down, still-running calls end with `onShutdown()`.
   */
  readonly run: <A, E, R, E2, E3>(
    effect: Effect.Effect<A, E, R>,
    timeout: Duration.Duration | undefined,
    onTimeout: () => E2,
    onShutdown: () => E3
  ) => Effect.Effect<A, E | E2 | E3, R>
  /** Interrupts every running call; each caller receives its `onShutdown()` failure. */
  readonly interruptAll: Effect.Effect<void>
}

const unlink = (node: Node): void => {
  if (!node.linked) return
  const lane = node.lane
  node.linked = false
  if (node.prev) node.prev.next = node.next
  else lane.head = node.next
  if (node.next) node.next.prev = node.prev
  else lane.tail = node.prev
  node.prev = undefined
  node.next = undefined
}

const NO_DEADLINE = Number.POSITIVE_INFINITY

/** @internal */
export const make: Effect.Effect<CallRunner, never, Scope.Scope> = Effect.gen(function* () {
  const clock = yield* Effect.clock
  const timerRuntime = yield* Effect.runtime<never>()
  const lanes = new Map<number, Lane>()
  // Calls without a deadline are linked here only so that shutdown can find them.
  const untimed: Lane = { head: undefined, tail: undefined, timerRunning: true }
  const timers = new Set<Fiber.RuntimeFiber<void, never>>()
  let closed = false

  yield* Effect.addFinalizer(() =>
    Effect.suspend(() => {
      closed = true
      const all = Array.from(timers)
      timers.clear()
      return Fiber.interruptAll(all)
    })
  )

  const timerLoop = (lane: Lane): Effect.Effect<void> =>
    Effect.suspend(() => {
      const head = lane.head
      if (head === undefined || closed) {
        lane.timerRunning = false
        return Effect.void
      }
      const now = clock.unsafeCurrentTimeMillis()
      if (head.deadline > now) {
        return Effect.zipRight(Clock.sleep(Duration.millis(head.deadline - now)), timerLoop(lane))
      }
      let node: Node | undefined = lane.head
      while (node !== undefined && node.deadline <= now) {
        const next: Node | undefined = node.next
        node.ending = "timeout"
        unlink(node)
        node.fiber.unsafeInterruptAsFork(node.fiber.id())
        node = next
      }
      return timerLoop(lane)
    })

  const laneFor = (millis: number): Lane => {
    let lane = lanes.get(millis)
    if (lane === undefined) {
      lane = { head: undefined, tail: undefined, timerRunning: false }
      lanes.set(millis, lane)
    }
    return lane
  }

  // Call after linking the node: the timer starts synchronously and stops on an empty lane.
  const ensureTimer = (lane: Lane): void => {
    if (lane.timerRunning || closed) return
    lane.timerRunning = true
    const fiber = Runtime.runFork(timerRuntime)(timerLoop(lane))
    if (fiber.unsafePoll() === null) {
      timers.add(fiber)
      fiber.addObserver(() => timers.delete(fiber))
    }
  }

  const run = <A, E, R, E2, E3>(
    effect: Effect.Effect<A, E, R>,
    timeout: Duration.Duration | undefined,
    onTimeout: () => E2,
    onShutdown: () => E3
  ): Effect.Effect<A, E | E2 | E3, R> =>
    Effect.flatMap(Effect.runtime<R>(), (runtime) => {
      const fiber = Runtime.runFork(runtime)(Effect.interruptible(effect))
      const polled = fiber.unsafePoll()
      if (polled !== null) return polled
      const millis = timeout === undefined ? NO_DEADLINE : Duration.toMillis(timeout)
      const lane = millis === NO_DEADLINE ? untimed : laneFor(millis)
      const node: Node = {
        deadline: clock.unsafeCurrentTimeMillis() + millis,
        fiber: fiber as Fiber.RuntimeFiber<unknown, unknown>,
        lane,
        prev: lane.tail,
        next: undefined,
        linked: true,
        ending: undefined
      }
      if (lane.tail) lane.tail.next = node
      else lane.head = node
      lane.tail = node
      ensureTimer(lane)
      return Effect.async<A, E | E2 | E3>((resume) => {
        fiber.addObserver((exit) => {
          unlink(node)
          if (node.ending !== undefined && Exit.isInterrupted(exit)) {
            resume(Effect.fail(node.ending === "timeout" ? onTimeout() : onShutdown()))
          } else {
            resume(exit)
          }
        })
        return Effect.suspend(() => {
          unlink(node)
          return Fiber.interrupt(fiber)
        })
      })
    })

  const interruptAll = Effect.suspend(() => {
    const fibers: Array<Fiber.RuntimeFiber<unknown, unknown>> = []
    for (const lane of [untimed, ...lanes.values()]) {
      let node = lane.head
      while (node !== undefined) {
        const next: Node | undefined = node.next
        node.ending = "shutdown"
        unlink(node)
        fibers.push(node.fiber)
        node = next
      }
    }
    return Fiber.interruptAll(fibers)
  })

  return { run, interruptAll }
})
