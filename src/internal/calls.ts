/**
 * The executor's call machinery: deadlines, retries, metrics and shutdown around a provider
 * call, for one call (`call`) and for many over a worker pool (`callMany`).
 *
 * Why not `Effect.timeout`: it races each call against a sleeping fiber, two forks and a
 * timer per call (~25-40 µs here). Instead, calls that suspend join a FIFO *lane* of their
 * timeout duration: deadlines in one lane are monotone, so one timer fiber per distinct
 * duration sleeps until the head's deadline, interrupts what expired, and sleeps again.
 * Finished calls unlink themselves in O(1). A single call that completes without
 * suspending never enters a lane; a call in a pool links a node (no timer) and unlinks it.
 *
 * What a deadline interrupts must be a fiber that can die: Effect's interruption is sticky,
 * a fiber once interrupted cannot recover. A single `call` therefore runs the provider in a
 * child fiber, started synchronously on the caller's runtime (same Clock, spans, services).
 * In a pool the worker fiber *is* the call fiber: the worker links itself into the lane,
 * and when a deadline interrupts it the pool observes its death, gives the item its
 * `TimeoutError` (or retries it) and starts a replacement worker that carries on. Timeouts
 * are rare, so a fork per timeout is cheap; a fork per call is not (at 10k concurrent calls
 * it doubled the time and memory of the pool, bench/overhead.ts part C).
 *
 * @internal
 */
import {
  type Cause,
  Clock,
  Deferred,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  Random,
  Runtime,
  RuntimeFlags
} from "effect"
import type { Scope } from "effect"
import { type AiError, isRetryable, reasonOf, type ShuttingDownError, TimeoutError } from "../AiError.js"
import type { CallManyOptions, CallSpec, ExecuteOptions } from "../Executor.js"
import * as Metrics from "../Metrics.js"
import type { Service as ProviderService } from "../Model.js"
import { type RetryPolicy, retryDelayMillis } from "../Policy.js"
import type { Service as StatsService } from "../Stats.js"
import type { Ticket } from "./limiter.js"

/** A fiber linked into a deadline lane (or the untimed list, so that shutdown finds it). */
interface Node {
  readonly deadline: number
  readonly fiber: Fiber.RuntimeFiber<unknown, unknown>
  readonly lane: Lane
  prev: Node | undefined
  next: Node | undefined
  linked: boolean
  /** Set, with the fiber's interruption sent, when a deadline or the shutdown ends the call. */
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
   * Links the fiber running a call (a single call's child, or a pool worker) into the lane
   * of `timeout`: when the deadline passes, the fiber is interrupted and the returned
   * node's `ending` says why.
   */
  readonly track: (fiber: Fiber.RuntimeFiber<unknown, unknown>, timeout: Duration.Duration | undefined) => Node
  /**
   * Unlinks a node whose call completed. False when its fiber's interruption has already
   * been sent: the fiber is doomed, and its owner must treat the call as ended by `ending`.
   */
  readonly settle: (node: Node) => boolean
  /** Interrupts every tracked fiber, with `ending` set to `"shutdown"` on its node. */
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

  const track = (fiber: Fiber.RuntimeFiber<unknown, unknown>, timeout: Duration.Duration | undefined): Node => {
    const millis = timeout === undefined ? NO_DEADLINE : Duration.toMillis(timeout)
    const lane = millis === NO_DEADLINE ? untimed : laneFor(millis)
    const node: Node = {
      deadline: clock.unsafeCurrentTimeMillis() + millis,
      fiber,
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
    return node
  }

  const settle = (node: Node): boolean => {
    if (node.ending !== undefined) return false
    unlink(node)
    return true
  }

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

  return { track, settle, interruptAll }
})

// ---------------------------------------------------------------------------------------------
// The call engine
// ---------------------------------------------------------------------------------------------

/** What the engine needs from the executor that owns it. @internal */
export interface EngineEnv {
  readonly provider: ProviderService
  readonly stats: StatsService
  readonly clock: Clock.Clock
  readonly runner: CallRunner
  readonly timeoutOf: (options: ExecuteOptions) => Duration.Duration | undefined
  readonly policyOf: (options: ExecuteOptions) => RetryPolicy | undefined
  readonly isClosing: () => boolean
  /** Counts a started call (in-flight gauge, peak, the executor's drain count). */
  readonly begin: (labels: Metrics.Labels) => void
  readonly end: (labels: Metrics.Labels) => void
  /** Completed when the shutdown deadline passes: retry waits end at once. */
  readonly forced: Deferred.Deferred<void>
  readonly shuttingDown: () => ShuttingDownError
  readonly interruptedByShutdown: () => ShuttingDownError
}

/** @internal */
export interface Engine {
  readonly call: <A>(
    f: (provider: ProviderService) => Effect.Effect<A, AiError>,
    options?: ExecuteOptions
  ) => Effect.Effect<A, AiError>
  readonly callMany: <I, A>(
    items: Iterable<I>,
    options: CallManyOptions<A>,
    f: (item: I, index: number) => CallSpec<A> | Effect.Effect<CallSpec<A>, AiError>
  ) => Effect.Effect<Array<Either.Either<A, AiError>>>
}

/** One admitted call: counted as started, to be ended exactly once. */
class Call<A> {
  attempt = 1
  closed = false
  constructor(
    readonly f: (provider: ProviderService) => Effect.Effect<A, AiError>,
    readonly target: ProviderService,
    readonly labels: Metrics.Labels,
    readonly timeout: Duration.Duration | undefined,
    readonly policy: RetryPolicy | undefined,
    readonly onRetry: ExecuteOptions["onRetry"],
    readonly start: bigint
  ) {}
}

const retryAfterOf = (error: AiError): Duration.Duration | undefined =>
  error._tag === "ModelError" || error._tag === "CircuitOpenError" ? error.retryAfter : undefined

/** @internal */
export const engine = (env: EngineEnv): Engine => {
  const { clock, runner } = env

  // Batches pass one options object for every item, and callers tend to repeat the same
  // timeout and retry inputs: resolve them once (a string timeout is parsed on decode).
  let lastOptions: ExecuteOptions | undefined
  let lastTimeoutInput: ExecuteOptions["timeout"] | null = null
  let lastRetryInput: ExecuteOptions["retry"] | null = null
  let lastTimeout: Duration.Duration | undefined
  let lastPolicy: RetryPolicy | undefined

  const labelsOf = (options: ExecuteOptions): Metrics.Labels =>
    env.stats.labels({
      provider: (options.provider ?? env.provider).name,
      domain: options.domain,
      tags: options.tags
    })

  /** Admits a call (or refuses it while shutting down, counted as a request and a failure). */
  const open = <A>(
    f: (provider: ProviderService) => Effect.Effect<A, AiError>,
    options: ExecuteOptions
  ): Call<A> | ShuttingDownError => {
    const target = options.provider ?? env.provider
    const labels = labelsOf(options)
    if (env.isClosing()) {
      Metrics.requests.unsafeUpdate(1, labels.exact)
      Metrics.failures.unsafeUpdate(1, labels.withReason("ShuttingDown"))
      return env.shuttingDown()
    }
    if (options !== lastOptions) {
      if (options.timeout !== lastTimeoutInput) {
        lastTimeout = env.timeoutOf(options)
        lastTimeoutInput = options.timeout
      }
      if (options.retry !== lastRetryInput) {
        lastPolicy = env.policyOf(options)
        lastRetryInput = options.retry
      }
      lastOptions = options
    }
    env.begin(labels)
    return new Call(f, target, labels, lastTimeout, lastPolicy, options.onRetry, clock.unsafeCurrentTimeNanos())
  }

  const elapsedMillis = (call: Call<unknown>): number => Number(clock.unsafeCurrentTimeNanos() - call.start) / 1e6

  const succeeded = (call: Call<unknown>): void => {
    if (call.closed) return
    call.closed = true
    env.end(call.labels)
    Metrics.successes.unsafeUpdate(1, call.labels.exact)
    Metrics.latency.unsafeUpdate(elapsedMillis(call), call.labels.exact)
  }

  const failed = (call: Call<unknown>, error: AiError): void => {
    if (call.closed) return
    call.closed = true
    env.end(call.labels)
    Metrics.failures.unsafeUpdate(1, call.labels.withReason(reasonOf(error)))
    Metrics.latency.unsafeUpdate(elapsedMillis(call), call.labels.exact)
  }

  const interrupted = (call: Call<unknown>): void => {
    if (call.closed) return
    call.closed = true
    env.end(call.labels)
    Metrics.failures.unsafeUpdate(1, call.labels.withReason("Interrupted"))
  }

  const timeoutError = (call: Call<unknown>): TimeoutError =>
    new TimeoutError({ limit: "request", timeout: call.timeout!, provider: call.target.name })

  /** After a failed attempt: counts a timeout, and says whether the policy allows another attempt. */
  const mayRetry = (call: Call<unknown>, error: AiError): boolean => {
    if (error._tag === "TimeoutError") Metrics.timeouts.unsafeUpdate(1, call.labels.exact)
    const policy = call.policy
    return policy !== undefined && call.attempt < policy.maxAttempts && isRetryable(error) && !env.isClosing()
  }

  /**
   * The wait before the next attempt (after `mayRetry`): fails with the final error when a
   * Retry-After is longer than the policy accepts or the executor began to close, succeeds
   * with `call.attempt` advanced otherwise.
   */
  const backoff = (call: Call<unknown>, error: AiError): Effect.Effect<void, AiError> =>
    Effect.flatMap(Random.next, (u) => {
      const n = call.attempt
      const delay = retryDelayMillis(call.policy!, n, u, retryAfterOf(error))
      if (delay === undefined) return Effect.fail(error)
      Metrics.retries.unsafeUpdate(1, call.labels.exact)
      const wait = Effect.raceFirst(
        Effect.sleep(Duration.millis(delay)),
        Effect.zipRight(Deferred.await(env.forced), Effect.fail(env.interruptedByShutdown()))
      )
      const before =
        call.onRetry === undefined
          ? wait
          : Effect.zipRight(call.onRetry({ attempt: n, error, delay: Duration.millis(delay) }), wait)
      return Effect.flatMap(before, () => {
        if (env.isClosing()) return Effect.fail(env.shuttingDown())
        call.attempt = n + 1
        return Effect.void
      })
    })

  // A single call: the attempt runs in a child fiber (a deadline must be able to kill it
  // without killing the caller). Admission, the child's start and the caller's suspension
  // happen in one synchronous step (the `async` registration), so an interruption of the
  // caller always finds the call accounted for: no `onExit` frame is needed on the way.
  const start = <A>(
    parent: Fiber.RuntimeFiber<unknown, unknown>,
    flags: RuntimeFlags.RuntimeFlags,
    call: Call<A>,
    resume: (effect: Effect.Effect<A, AiError>) => void
  ): Effect.Effect<void> | undefined => {
    const child = Runtime.runFork(
      Runtime.make({
        context: parent.currentContext,
        fiberRefs: parent.getFiberRefs(),
        runtimeFlags: RuntimeFlags.enable(flags, RuntimeFlags.Interruption)
      })
    )(call.f(call.target))
    const polled = child.unsafePoll()
    if (polled !== null) {
      resume(settleCall(call, polled))
      return undefined
    }
    const node = runner.track(child as Fiber.RuntimeFiber<unknown, unknown>, call.timeout)
    let cancelled = false
    child.addObserver((exit) => {
      if (cancelled) return
      const ended = !runner.settle(node) && Exit.isInterrupted(exit)
      resume(
        settleCall(
          call,
          ended ? Exit.fail(node.ending === "timeout" ? timeoutError(call) : env.interruptedByShutdown()) : exit
        )
      )
    })
    return Effect.suspend(() => {
      cancelled = true
      runner.settle(node)
      // Counted once the provider's finalizers have run, as the shutdown's drain expects.
      return Effect.map(Fiber.interrupt(child), () => interrupted(call))
    })
  }

  const attempt = <A>(call: Call<A>): Effect.Effect<A, AiError> =>
    Effect.withFiberRuntime<A, AiError>((parent, status) =>
      Effect.async<A, AiError>((resume) =>
        start(parent as Fiber.RuntimeFiber<unknown, unknown>, status.runtimeFlags, call, resume)
      )
    )

  // Records the call's outcome, or continues with a retry guarded by an `onExit` (only
  // retries pay for it: the caller may be interrupted during the backoff).
  const settleCall = <A>(c: Call<A>, exit: Exit.Exit<A, AiError>): Effect.Effect<A, AiError> => {
    if (exit._tag === "Success") {
      succeeded(c)
      return exit
    }
    if (exit.cause._tag !== "Fail") {
      interrupted(c)
      return exit
    }
    const error = exit.cause.error
    if (!mayRetry(c, error)) {
      failed(c, error)
      return exit
    }
    return Effect.onExit(
      Effect.flatMap(backoff(c, error), () => attempt(c)),
      (exit) => {
        if (exit._tag === "Failure") {
          if (exit.cause._tag === "Fail") failed(c, exit.cause.error)
          else interrupted(c)
        }
        return Effect.void
      }
    )
  }

  const call = <A>(
    f: (provider: ProviderService) => Effect.Effect<A, AiError>,
    options: ExecuteOptions = {}
  ): Effect.Effect<A, AiError> =>
    Effect.withFiberRuntime<A, AiError>((parent, status) =>
      Effect.async<A, AiError>((resume) => {
        const opened = open(f, options)
        if (opened instanceof Call) {
          return start(parent as Fiber.RuntimeFiber<unknown, unknown>, status.runtimeFlags, opened, resume)
        }
        resume(Effect.fail(opened))
      })
    )

  const callMany = <I, A>(
    items: Iterable<I>,
    options: CallManyOptions<A>,
    f: (item: I, index: number) => CallSpec<A> | Effect.Effect<CallSpec<A>, AiError>
  ): Effect.Effect<Array<Either.Either<A, AiError>>> =>
    Effect.flatMap(Effect.runtime<never>(), (runtime) =>
      Effect.async<Array<Either.Either<A, AiError>>>((resume) => {
        const source: ReadonlyArray<I> = Array.isArray(items) ? items : Array.from(items)
        const n = source.length
        const results = new Array<Either.Either<A, AiError>>(n)
        if (n === 0) return resume(Effect.succeed(results))
        const { limiter, onStart, onOutcome } = options
        const fork = Runtime.runFork(runtime)
        const workers = new Set<Worker<A>>()
        let next = 0
        let live = 0
        let stopping = false
        let settled = false
        let failure: Cause.Cause<unknown> | undefined

        // Under tsx (esbuild keepNames) every *named* function expression created at run
        // time gets a `name` property defined on it (~250 bytes, a slower path): closures
        // made per worker are anonymous, returned from here.
        const bind =
          <T>(w: Worker<A>, f: (w: Worker<A>, value: T) => Effect.Effect<void>) =>
          (value: T): Effect.Effect<void> =>
            f(w, value)

        // Everything a worker needs per item is built once per worker: at 10k workers each
        // closure allocated per call shows up in the GC time (bench/overhead.ts part C).
        const makeWorker = (): Worker<A> => {
          const w = {
            fiber: undefined,
            index: -1,
            call: undefined,
            node: undefined,
            ticket: undefined,
            pending: undefined
          } as Worker<A>
          w.loop = Effect.suspend(() => nextItem(w))
          w.attempt = Effect.suspend(() => attemptInWorker(w))
          w.handlers = { onSuccess: bind(w, attemptSucceeded), onFailure: bind(w, attemptFailed) }
          w.specHandlers = { onSuccess: bind(w, admit), onFailure: bind(w, rejected) }
          w.retryHandlers = { onSuccess: bind<void>(w, retryNow), onFailure: bind(w, gaveUp) }
          return w
        }

        const attemptSucceeded = (w: Worker<A>, a: A): Effect.Effect<void> => {
          if (!runner.settle(w.node!)) return doomed(w, Exit.succeed(a))
          w.node = undefined
          return complete(w, Either.right(a))
        }

        const attemptFailed = (w: Worker<A>, cause: Cause.Cause<AiError>): Effect.Effect<void> => {
          if (!runner.settle(w.node!)) return doomed(w, Exit.failCause(cause))
          w.node = undefined
          return failedAttempt(w, cause)
        }

        const rejected = (w: Worker<A>, error: AiError): Effect.Effect<void> => {
          const labels = labelsOf(options)
          Metrics.requests.unsafeUpdate(1, labels.exact)
          Metrics.failures.unsafeUpdate(1, labels.withReason(reasonOf(error)))
          return complete(w, Either.left(error))
        }

        const retryNow = (w: Worker<A>, _: void): Effect.Effect<void> => w.attempt
        const gaveUp = (w: Worker<A>, error: AiError): Effect.Effect<void> => complete(w, Either.left(error))

        const nextItem = (w: Worker<A>): Effect.Effect<void> => {
          if (stopping || next >= n) return Effect.void
          const index = next++
          w.index = index
          const spec = f(source[index]!, index)
          return Effect.isEffect(spec) ? Effect.matchEffect(spec, w.specHandlers) : admit(w, spec)
        }

        const admit = (w: Worker<A>, spec: CallSpec<A>): Effect.Effect<void> => {
          if (limiter !== undefined) {
            const ticket = limiter.take()
            w.ticket = ticket
            if (!ticket.granted)
              return Effect.zipRight(
                ticket.await,
                Effect.suspend(() => begin(w, spec))
              )
          }
          return begin(w, spec)
        }

        const begin = (w: Worker<A>, spec: CallSpec<A>): Effect.Effect<void> => {
          const opened = open(spec.run, spec.options ?? options)
          if (!(opened instanceof Call)) return complete(w, Either.left(opened))
          w.call = opened
          return onStart === undefined ? w.attempt : Effect.zipRight(onStart(w.index), w.attempt)
        }

        // The provider runs in this worker; a deadline interrupts the worker itself.
        const attemptInWorker = (w: Worker<A>): Effect.Effect<void> => {
          const c = w.call!
          w.node = runner.track(w.fiber!, c.timeout)
          return Effect.matchCauseEffect(c.f(c.target), w.handlers)
        }

        const failedAttempt = (w: Worker<A>, cause: Cause.Cause<AiError>): Effect.Effect<void> =>
          // Defects (and a provider interrupting itself) end the pool, as they would end `forEach`.
          cause._tag !== "Fail"
            ? (Effect.failCause(cause) as Effect.Effect<never>)
            : mayRetry(w.call!, cause.error)
              ? Effect.matchEffect(backoff(w.call!, cause.error), w.retryHandlers)
              : complete(w, Either.left(cause.error))

        // The deadline fired while the call was completing: the interruption is in flight
        // and ends this worker at its next step. The replacement resumes from `exit`.
        const doomed = (w: Worker<A>, exit: Exit.Exit<A, AiError>): Effect.Effect<void> => {
          w.pending = exit
          return Effect.never
        }

        const complete = (w: Worker<A>, outcome: Either.Either<A, AiError>): Effect.Effect<void> => {
          const c = w.call
          if (c !== undefined) {
            if (outcome._tag === "Right") succeeded(c)
            else failed(c, outcome.left)
            w.call = undefined
          }
          if (w.ticket !== undefined) {
            w.ticket.close()
            w.ticket = undefined
          }
          results[w.index] = outcome
          return onOutcome === undefined ? w.loop : Effect.zipRight(onOutcome(w.index, outcome), w.loop)
        }

        const spawn = (w: Worker<A>, program: Effect.Effect<void>): void => {
          live++
          workers.add(w)
          const fiber = fork(
            Effect.interruptible(
              Effect.withFiberRuntime<void>((self) => {
                w.fiber = self as Fiber.RuntimeFiber<unknown, unknown>
                return program
              })
            )
          )
          fiber.addObserver((exit) => onWorkerExit(w, exit))
        }

        // Ends a call whose worker is gone without an outcome (the pool is stopping).
        const abandon = (w: Worker<A>): void => {
          if (w.node !== undefined) runner.settle(w.node)
          if (w.call !== undefined) interrupted(w.call)
          if (w.ticket !== undefined) w.ticket.close()
          w.call = undefined
          w.ticket = undefined
        }

        const stop = (): void => {
          stopping = true
          for (const other of workers) other.fiber?.unsafeInterruptAsFork(other.fiber.id())
        }

        const onWorkerExit = (w: Worker<A>, exit: Exit.Exit<void>): void => {
          live--
          workers.delete(w)
          if (exit._tag === "Failure") {
            const c = w.call
            const ending = w.node?.ending
            if (stopping) {
              abandon(w)
            } else if (c !== undefined && (w.pending !== undefined || ending !== undefined)) {
              // Ended by its deadline or by the shutdown: the item carries on in a new worker.
              const replacement = makeWorker()
              replacement.index = w.index
              replacement.call = c
              replacement.ticket = w.ticket
              const from: Exit.Exit<A, AiError> =
                w.pending ?? Exit.fail(ending === "timeout" ? timeoutError(c) : env.interruptedByShutdown())
              spawn(
                replacement,
                Effect.suspend(() =>
                  from._tag === "Success"
                    ? complete(replacement, Either.right(from.value))
                    : failedAttempt(replacement, from.cause)
                )
              )
            } else {
              abandon(w)
              failure = exit.cause
              stop()
            }
          }
          if (live === 0 && !settled) {
            settled = true
            resume(failure === undefined ? Effect.succeed(results) : Effect.failCause(failure as Cause.Cause<never>))
          }
        }

        const count = Math.max(1, Math.min(n, Math.floor(options.concurrency ?? 5)))
        for (let i = 0; i < count && !stopping && next < n; i++) {
          const w = makeWorker()
          spawn(w, w.loop)
        }

        return Effect.suspend(() => {
          settled = true
          stopping = true
          return Fiber.interruptAll(Array.from(workers, (w) => w.fiber!))
        })
      })
    )

  return { call, callMany }
}

interface Worker<A> {
  fiber: Fiber.RuntimeFiber<unknown, unknown> | undefined
  index: number
  call: Call<A> | undefined
  node: Node | undefined
  ticket: Ticket | undefined
  /** The exit of a call that completed after its deadline had fired. */
  pending: Exit.Exit<A, AiError> | undefined
  loop: Effect.Effect<void>
  attempt: Effect.Effect<void>
  handlers: {
    readonly onSuccess: (a: A) => Effect.Effect<void>
    readonly onFailure: (cause: Cause.Cause<AiError>) => Effect.Effect<void>
  }
  specHandlers: {
    readonly onSuccess: (spec: CallSpec<A>) => Effect.Effect<void>
    readonly onFailure: (error: AiError) => Effect.Effect<void>
  }
  retryHandlers: {
    readonly onSuccess: (_: void) => Effect.Effect<void>
    readonly onFailure: (error: AiError) => Effect.Effect<void>
  }
}
