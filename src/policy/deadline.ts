/**
 * Deadlines on lanes, and the register of running attempts that shutdown interrupts.
 *
 * An attempt runs in a child fiber started synchronously on the caller's fiber (same
 * Clock, services and span). If it completes without suspending, nothing more happens: no
 * timer, no link. Otherwise its node joins the FIFO *lane* of its timeout duration;
 * deadlines in one lane are monotone, so one sleeping fiber per distinct duration wakes at
 * the head's deadline, interrupts what expired, and sleeps again; finished attempts
 * unlink in O(1); an empty lane's sleeper stops, so no timer keeps the process alive.
 *
 * Why not `Effect.timeout`: it races the attempt against a sleeping fiber (two forks and a
 * timer per call): 2.8 µs per instant call against 1.5 µs here, measured on Effect 4.1.5
 * (bench/overhead.ts, docs/benchmarks.md).
 *
 * When a deadline passes, the waiting caller is woken at once with the timeout, even if
 * the attempt ignores its interruption (an uninterruptible provider call keeps running in
 * the background until it ends, and keeps its provider slot until then).
 *
 * @internal
 */
import { Clock, type Context, Duration, Effect, type Exit, type Fiber, type Scope } from "effect"
import * as Timers from "./timers.js"

/** Why a tracked attempt was cut short. */
export type Ending = "timeout" | "shutdown"

interface Node {
  deadline: number
  lane: Lane
  prev: Node | undefined
  next: Node | undefined
  linked: boolean
  ending: Ending | undefined
  /** Called once when the deadline passes or shutdown interrupts; the node is already unlinked. */
  expire: (ending: Ending) => void
}

/**
 * A node a caller keeps itself (one object per call, no closure apart): linked into a lane
 * by {@link Lanes.link}, `expire` is called once when its deadline passes or shutdown comes,
 * after it is unlinked.
 *
 * @internal
 */
export abstract class Tracked implements Node {
  deadline = 0
  lane: Lane = undefined as never
  prev: Node | undefined = undefined
  next: Node | undefined = undefined
  linked = false
  ending: Ending | undefined = undefined
  abstract expire(ending: Ending): void
}

interface Lane {
  /** Its timeout in milliseconds: its key in the map of lanes (`undefined`: the untimed lane). */
  readonly millis: number | undefined
  head: Node | undefined
  tail: Node | undefined
  sleeping: boolean
  /** The real timer the lane's sleeper waits on, if any: unref'ed while the lane is empty. */
  timer: Timers.Handle | undefined
  unrefd: boolean
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
  // An empty lane's sleeper still waits for the deadline of the node it last saw: its timer
  // must not keep the process alive for that long after the last call.
  if (lane.head === undefined && lane.timer !== undefined && !lane.unrefd) {
    lane.unrefd = true
    lane.timer.unref()
  }
}

/**
 * Runs attempts under deadlines and keeps them findable for shutdown.
 *
 * @internal
 */
export interface Lanes {
  /**
   * Runs `effect` in a child fiber with a deadline (`undefined`: none, but still
   * interruptible by `interruptAll`). Succeeds with the attempt's exit, or with the ending
   * that cut it short.
   */
  readonly run: <A, E, R>(
    effect: Effect.Effect<A, E, R>,
    timeout: Duration.Duration | undefined
  ) => Effect.Effect<Exit.Exit<A, E> | Ending, never, R>
  /**
   * `run` for the hot path: `settle` receives the attempt's exit, or the ending that cut it
   * short, and returns what the caller continues with (the exit itself on success: nothing
   * allocated). The attempt runs on its own fiber, started at once on the caller's context
   * and interrupted with the caller.
   */
  readonly attempt: <A, E, B, E2, C>(
    effect: Effect.Effect<A, E>,
    timeout: Duration.Duration | undefined,
    settle: (context: C, result: Exit.Exit<A, E> | Ending) => Effect.Effect<B, E2>,
    context: C
  ) => Effect.Effect<B, E2>
  /**
   * A re-armable watch for long operations (streams): `expire` is called once when the
   * armed deadline passes or shutdown comes (armed after the lanes closed: at once, from
   * `arm`). Arming relinks in O(1).
   */
  readonly watch: (expire: (ending: Ending) => void) => Watch
  /**
   * Tracks `node` under `timeout` from `now` (the clock's time when not given; `timeout`
   * `undefined`: none, but shutdown still finds it). After the lanes closed, it is not tracked
   * and its `ending` is `"shutdown"` at once (`expire` is not called): the caller reads it.
   */
  readonly link: (node: Tracked, timeout: Duration.Duration | undefined, now?: number) => void
  /** Stops tracking `node` (nothing is called afterwards); no-op when it is not linked. */
  readonly unlink: (node: Tracked) => void
  /** Interrupts every attempt running now; their callers see `"shutdown"`. */
  readonly interruptAll: Effect.Effect<void>
  /** Attempts being tracked now (for tests). */
  readonly size: () => number
  /** Lanes kept now, one per timeout duration in use (for tests). */
  readonly lanes: () => number
}

/**
 * @internal
 */
export interface Watch {
  /** Sets the deadline to now + `timeout` (`undefined`: none; shutdown still finds it). */
  readonly arm: (timeout: Duration.Duration | undefined) => void
  /** Stops watching (nothing is called afterwards). */
  readonly dispose: () => void
  /** True once expired. */
  readonly ended: () => Ending | undefined
}

/**
 * @internal
 */
export const make: Effect.Effect<Lanes, never, Scope.Scope> = Effect.gen(function* () {
  const context = yield* Effect.context<never>()
  const clock: Clock.Clock = yield* Clock.Clock
  const fork = Effect.runForkWith(context)
  const lanes = new Map<number, Lane>()
  const untimed: Lane = {
    millis: undefined,
    head: undefined,
    tail: undefined,
    sleeping: true,
    timer: undefined,
    unrefd: false
  }
  const sleepers = new Set<Fiber.Fiber<void>>()
  let closed = false
  let tracked = 0

  yield* Effect.addFinalizer(() =>
    Effect.suspend(() => {
      closed = true
      const all = Array.from(sleepers)
      sleepers.clear()
      for (const fiber of all) fiber.interruptUnsafe()
      return Effect.void
    })
  )

  // Ending a node resumes its caller at once, which may end or unlink others (a sibling its
  // caller cancels): the loops below collect their nodes first and skip those gone since.
  const end = (node: Node, ending: Ending): void => {
    if (!node.linked) return
    node.ending = ending
    unlink(node)
    tracked--
    node.expire(ending)
  }

  const sleeper = (lane: Lane): Effect.Effect<void> =>
    Effect.suspend(() => {
      const head = lane.head
      if (head === undefined || closed) {
        lane.sleeping = false
        // Nothing left in it: a lane per distinct duration (jittered backoffs, a caller's
        // remaining time) would otherwise stay in the map for ever.
        if (lane.millis !== undefined && lanes.get(lane.millis) === lane) lanes.delete(lane.millis)
        return Effect.void
      }
      const now = clock.currentTimeMillisUnsafe()
      if (head.deadline > now) {
        return Effect.flatMap(
          Timers.sleep(clock, head.deadline - now, true, (timer) => {
            lane.timer = timer
            lane.unrefd = false
          }),
          () => sleeper(lane)
        )
      }
      const expired: Array<Node> = []
      for (let node: Node | undefined = head; node !== undefined && node.deadline <= now; node = node.next) {
        expired.push(node)
      }
      for (const node of expired) end(node, "timeout")
      return sleeper(lane)
    })

  const laneFor = (millis: number): Lane => {
    let lane = lanes.get(millis)
    if (lane === undefined) {
      lane = { millis, head: undefined, tail: undefined, sleeping: false, timer: undefined, unrefd: false }
      lanes.set(millis, lane)
    }
    return lane
  }

  const place = (node: Node, timeout: Duration.Duration | undefined, now?: number): void => {
    const millis = timeout === undefined || !Duration.isFinite(timeout) ? undefined : Duration.toMillis(timeout)
    const lane = millis === undefined ? untimed : laneFor(millis)
    node.deadline = millis === undefined ? Number.POSITIVE_INFINITY : (now ?? clock.currentTimeMillisUnsafe()) + millis
    node.lane = lane
    node.prev = lane.tail
    node.next = undefined
    node.linked = true
    if (lane.tail) lane.tail.next = node
    else lane.head = node
    lane.tail = node
    if (lane.unrefd) {
      lane.unrefd = false
      lane.timer?.ref()
    }
    if (!lane.sleeping && !closed) {
      lane.sleeping = true
      const sleeperFiber = fork(sleeper(lane))
      if (sleeperFiber.pollUnsafe() === undefined) {
        sleepers.add(sleeperFiber)
        sleeperFiber.addObserver(() => sleepers.delete(sleeperFiber))
      }
    }
  }

  const link = (expire: (ending: Ending) => void, timeout: Duration.Duration | undefined): Node => {
    const node: Node = {
      deadline: 0,
      lane: untimed,
      prev: undefined,
      next: undefined,
      linked: false,
      ending: undefined,
      expire
    }
    tracked++
    place(node, timeout)
    return node
  }

  const settle = (node: Node): void => {
    if (node.linked) {
      unlink(node)
      tracked--
    }
  }

  const run = <A, E, R>(
    effect: Effect.Effect<A, E, R>,
    timeout: Duration.Duration | undefined
  ): Effect.Effect<Exit.Exit<A, E> | Ending, never, R> =>
    Effect.withFiber((parent) =>
      // A root fiber on the caller's context, as an attempt's (below): a child fiber is awaited by
      // its parent as the parent ends, so a caller cut by its deadline or interrupted while this ran
      // what ignores its interruption (a retry's hook, a rate limiter's store) never ended. Started
      // inside the callback's registration, where its cancellation (which unlinks its deadline and
      // interrupts it) is put in place in the same step: a caller interrupted at a yield in between
      // left it running, and its deadline tracked until it passed.
      Effect.callback<Exit.Exit<A, E> | Ending>((resume) => {
        const fiber = Effect.runForkWith(parent.context as Context.Context<R>)(effect)
        const done = fiber.pollUnsafe()
        if (done !== undefined) return resume(Effect.succeed(done))
        // Closed, the lanes have no sleeper left to end a deadline, nor a shutdown to come: a wait
        // linked now would never be cut. It is cut at once, as the shutdown cut the waits before it.
        if (closed) {
          fiber.interruptUnsafe()
          return resume(Effect.succeed("shutdown" as const))
        }
        const node = link((ending) => {
          fiber.interruptUnsafe()
          resume(Effect.succeed(ending))
        }, timeout)
        if (node.ending !== undefined) return resume(Effect.succeed(node.ending))
        const removeObserver = fiber.addObserver((exit) => {
          if (node.ending !== undefined) return
          settle(node)
          resume(Effect.succeed(exit))
        })
        return Effect.sync(() => {
          removeObserver()
          settle(node)
          fiber.interruptUnsafe()
        })
      })
    )

  // One attempt waiting on its fiber: the lane node itself (no node object and closure apart).
  class Attempt<A, E, B, E2, C> extends Tracked {
    resume: ((effect: Effect.Effect<B, E2>) => void) | undefined = undefined
    removeObserver: (() => void) | undefined = undefined
    constructor(
      readonly fiber: Fiber.Fiber<A, E>,
      readonly settleWith: (context: C, result: Exit.Exit<A, E> | Ending) => Effect.Effect<B, E2>,
      readonly context: C
    ) {
      super()
    }
    expire(ending: Ending): void {
      this.fiber.interruptUnsafe()
      this.removeObserver?.()
      const resume = this.resume
      this.resume = undefined
      resume?.(this.settleWith(this.context, ending))
    }
    observe(exit: Exit.Exit<A, E>): void {
      if (this.ending !== undefined) return
      settle(this)
      const resume = this.resume
      this.resume = undefined
      resume?.(this.settleWith(this.context, exit))
    }
    cancel(): void {
      this.removeObserver?.()
      this.resume = undefined
      settle(this)
      this.fiber.interruptUnsafe()
    }
  }

  const attempt = <A, E, B, E2, C>(
    effect: Effect.Effect<A, E>,
    timeout: Duration.Duration | undefined,
    settleWith: (context: C, result: Exit.Exit<A, E> | Ending) => Effect.Effect<B, E2>,
    context: C
  ): Effect.Effect<B, E2> =>
    Effect.withFiber((parent) =>
      // A root fiber on the caller's context (its Clock, services, span): cheaper than a child
      // fiber, and interrupted with the caller by the callback's cleanup. Started inside the
      // callback's registration, so that its cancellation is in place in the same step: started
      // one step before, a caller interrupted at a yield in between left it running.
      Effect.callback<B, E2>((resume) => {
        // As in `run`: an attempt the closed lanes could never cut does not start.
        if (closed) return resume(settleWith(context, "shutdown"))
        const fiber = Effect.runForkWith(parent.context)(effect)
        const done = fiber.pollUnsafe()
        if (done !== undefined) return resume(settleWith(context, done))
        const run = new Attempt(fiber, settleWith, context)
        tracked++
        place(run, timeout)
        if (run.ending !== undefined) return resume(settleWith(context, run.ending))
        run.resume = resume
        run.removeObserver = fiber.addObserver((exit) => run.observe(exit))
        return Effect.sync(() => run.cancel())
      })
    )

  const interruptAll = Effect.sync(() => {
    for (const lane of [untimed, ...lanes.values()]) {
      let node = lane.head
      const all: Array<Node> = []
      for (; node !== undefined; node = node.next) all.push(node)
      for (const each of all) end(each, "shutdown")
    }
  })

  const watch = (expire: (ending: Ending) => void): Watch => {
    const node = link(expire, undefined)
    let disposed = false
    return {
      arm: (timeout) => {
        if (disposed || node.ending !== undefined) return
        // As in `run`: closed, no sleeper is left to end the deadline nor a shutdown to come.
        if (closed) return end(node, "shutdown")
        unlink(node)
        place(node, timeout)
      },
      dispose: () => {
        if (disposed) return
        disposed = true
        settle(node)
      },
      ended: () => node.ending
    }
  }

  const linkTracked = (node: Tracked, timeout: Duration.Duration | undefined, now?: number): void => {
    // Closed, it would never be ended: it ends now, unlinked and without `expire` (its caller
    // links it while starting, not yet ready to be called back), which reads `ending` after.
    if (closed) {
      node.ending = "shutdown"
      return
    }
    tracked++
    place(node, timeout, now)
  }

  return {
    run,
    attempt,
    link: linkTracked,
    unlink: settle,
    watch,
    interruptAll,
    size: () => tracked,
    lanes: () => lanes.size
  } satisfies Lanes
})
