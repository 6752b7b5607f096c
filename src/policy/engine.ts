/**
 * The one policy pipeline for calls (the order is documented in `Policy.ts`): admission,
 * total deadline, cache, fallback (on `ExecutionPlan`) or hedge, then per step the retry
 * driver, and per attempt the rate limit, the breaker, the deadline and the provider slot,
 * with the call metrics recorded on the way.
 *
 * The retry driver steps `Policy.schedule` only after a failure, so a call that succeeds
 * at once pays nothing for its retry policy (`Effect.retry` builds its schedule up front:
 * 3.9 µs per instant call here). Every wait (an attempt, a rate-limit slot, a backoff, the
 * whole call) runs on the deadline lanes, which shutdown interrupts.
 *
 * A single-step plan without total deadline, cache, rate limit, provider slot or span (most
 * calls) runs on the fused path (`fused.ts`): the same order as plain JavaScript around
 * the attempt's fiber, until a retry hands over to the driver here.
 *
 * @internal
 */
import {
  Cause,
  Clock,
  Context,
  type Fiber,
  Deferred,
  Duration,
  Effect,
  ExecutionPlan,
  Exit,
  Schedule,
  Semaphore,
  type Scope
} from "effect"
import {
  type AiError,
  type CircuitOpenError,
  type FailedAttempt,
  FallbackExhaustedError,
  isRetryable,
  ModelError,
  reasonOf,
  ShuttingDownError,
  shouldFallback,
  TimeoutError
} from "../AiError.js"
import { type RetryPolicy, schedule as retrySchedule } from "../Policy.js"
import type { Service as StatsService } from "../Stats.js"
import type { Series } from "../stats/series.js"
import * as Deadline from "./deadline.js"
import * as Fused from "./fused.js"
import { isTraced, tracedWith } from "./span.js"

/**
 * What the pipeline needs of a circuit breaker (the `CircuitBreaker` service provides it).
 *
 * @internal
 */
export interface BreakerGuard {
  readonly execute: <A, E extends AiError>(
    key: string,
    effect: Effect.Effect<A, E>
  ) => Effect.Effect<A, E | CircuitOpenError>
  readonly admit: (key: string) => Effect.Effect<BreakerPermit, CircuitOpenError, Scope.Scope>
}

/**
 * @internal
 */
export interface BreakerPermit {
  readonly record: (outcome: Exit.Exit<unknown, AiError> | "ignored") => Effect.Effect<void>
}

/**
 * What the pipeline needs of a rate limit (the `RateLimit` service provides it).
 *
 * @internal
 */
export interface LimitGuard {
  readonly acquire: (key: string, cost?: { readonly tokens?: number | undefined }) => Effect.Effect<void, ModelError>
}

/**
 * What the pipeline needs of a cache (the `ResponseCache` service provides it for answers).
 *
 * @internal
 */
export interface CacheGuard<A> {
  readonly getOrCompute: <E>(
    key: string,
    compute: Effect.Effect<A, E>,
    options?: { readonly allowStale?: boolean | undefined }
  ) => Effect.Effect<{ readonly value: A; readonly source: "hit" | "miss" | "stale" | "shared" }, E>
}

/**
 * One target of a call (a provider, an agent) with its policies.
 *
 * @internal
 */
export interface Step<T> {
  readonly target: T
  /** Metrics `provider` dimension, breaker and rate-limit key. */
  readonly name: string
  readonly domain?: string | undefined
  /** Deadline of each attempt; `undefined`: none. */
  readonly timeout: Duration.Duration | undefined
  /** `undefined`: one attempt. */
  readonly retry: RetryPolicy | undefined
  readonly breaker?: BreakerGuard | undefined
  readonly rateLimit?: LimitGuard | undefined
  /** Estimated tokens of one attempt, for token rate limits. */
  readonly tokens?: number | undefined
  /** Calls the target serves at once; more queue (measured apart). */
  readonly maxConcurrency?: number | undefined
}

/**
 * @internal
 */
export interface RetryEvent<T> {
  readonly step: Step<T>
  /** The attempt that failed (1 for the first). */
  readonly attempt: number
  readonly error: AiError
  readonly delay: Duration.Duration
}

/**
 * A call's steps and whole-call policies.
 *
 * @internal
 */
export interface Plan<T, A> {
  readonly steps: readonly [Step<T>, ...Array<Step<T>>]
  readonly totalTimeout?: Duration.Duration | undefined
  /** Start the next step after this long without an answer (hedging), besides on failure. */
  readonly hedgeAfter?: Duration.Duration | undefined
  readonly cache?: { readonly guard: CacheGuard<A>; readonly key: string; readonly allowStale: boolean } | undefined
  readonly onRetry?: ((event: RetryEvent<T>) => Effect.Effect<void>) | undefined
  /** Tokens of an answer, for the token metrics. */
  readonly usageOf?:
    | ((value: A) => { readonly inputTokens: number; readonly outputTokens: number } | undefined)
    | undefined
}

/**
 * Where an answer came from.
 *
 * @internal
 */
export interface Answer<T, A> {
  readonly value: A
  readonly step: Step<T>
  /** Attempts made in all, retries and every step tried included (0 for a cache hit). */
  readonly attempts: number
  /** Steps tried, the answering one included. */
  readonly stepsTried: number
  readonly source: "provider" | "cache" | "stale-cache"
  /** Set when hedging started a backup: whether a backup answered. */
  readonly hedgeWon?: boolean | undefined
}

/**
 * @internal
 */
export interface Engine {
  readonly run: <T, A>(
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
  ) => Effect.Effect<Answer<T, A>, AiError>
  /** `run`, answering with the value only. */
  readonly runValue: <T, A>(
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
  ) => Effect.Effect<A, AiError>
  /** `runValue` for a caller that holds its fiber. */
  readonly runValueIn: <T, A>(
    fiber: Fiber.Fiber<unknown, unknown>,
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
  ) => Effect.Effect<A, AiError>
  /**
   * A call started from JavaScript: reports to `sink` under `index` its value, or with `full`
   * its `Answer` (at once when it ends at once: then it answers `undefined`), else answers
   * its handle.
   */
  readonly start: <T, A>(
    fiber: Fiber.Fiber<unknown, unknown>,
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
    sink: Fused.Sink,
    index: number,
    full?: boolean
  ) => Fused.Running | undefined
  /** Runs `effect` as a tracked wait: shutdown interrupts it (the caller gets `ShuttingDownError`). */
  readonly tracked: <A, E>(
    effect: Effect.Effect<A, E>,
    timeout?: Duration.Duration | undefined
  ) => Effect.Effect<A, E | AiError>
  readonly lanes: Deadline.Lanes
  /** Fails with `ShuttingDownError` once closing. */
  readonly admit: Effect.Effect<void, ShuttingDownError>
  /** Counts a call (or stream) as running until `release`, for the drain on shutdown. */
  readonly enter: () => void
  readonly leave: () => void
  readonly isClosing: () => boolean
  readonly series: (step: Step<unknown>) => Series
  readonly slot: (name: string, max: number | undefined) => Semaphore.Semaphore | undefined
}

/**
 * @internal
 */
export interface Options {
  readonly stats: StatsService
  readonly shutdownDeadline: Duration.Duration
}

const shuttingDown = () => new ShuttingDownError({ message: "the executor is shutting down and admits no new calls" })
const cutByShutdown = () => new ShuttingDownError({ message: "interrupted: the executor's shutdown deadline passed" })

const describeDefect = (defect: unknown): string =>
  defect instanceof Error ? `${defect.name}: ${defect.message}` : typeof defect === "string" ? defect : String(defect)

/** A provider call that died or interrupted itself: that call's typed error, never a defect. */
const unexpected = (cause: Cause.Cause<unknown>, provider: string): AiError => {
  const died = cause.reasons.find((reason) => reason._tag === "Die")
  if (died === undefined) {
    return new ModelError({ reason: "Unknown", message: "the provider call was interrupted", provider })
  }
  return new ModelError({
    reason: "Unknown",
    message: `the provider call failed unexpectedly: ${describeDefect(died.defect)}`,
    provider,
    cause: died.defect
  })
}

const answerValue = <T, A>(answer: Answer<T, A>): A => answer.value

const attemptAttributes = (step: Step<unknown>) => ({
  "gen_ai.provider.name": step.name,
  "orchestra.domain": step.domain ?? "none"
})

class CurrentStep extends Context.Service<CurrentStep, Step<unknown>>()("effect-orchestra/policy/CurrentStep") {}

/**
 * Why a caller cut its own call short, set just before it interrupts the call (the Promise
 * facade, when an `AbortSignal.timeout` fires): the steps and streams it cut are counted
 * under this error's reason (a `TimeoutError` in `timeouts` too) instead of `Interrupted`.
 *
 * @internal
 */
export interface Cut {
  error: AiError | undefined
}

/**
 * The {@link Cut} of the calls run in this context, if their caller keeps one.
 *
 * @internal
 */
export const CurrentCut = Context.Reference<Cut | undefined>("effect-orchestra/policy/CurrentCut", {
  defaultValue: () => undefined
})

/** Where a step's retry driver is. */
interface RetryState {
  attemptNo: number
  stepper: ((now: number, error: AiError) => Effect.Effect<[Duration.Duration, Duration.Duration], unknown>) | undefined
}

/** Attempts of one call so far, and why it was cut if it was (a reason, or undefined). */
interface Counter {
  attempts: number
  readonly cut: () => string | undefined
  /** Whether the caller is traced (known once per call), or undefined: look at each attempt. */
  readonly traced?: boolean | undefined
}

/** A single-step call's counter: its caller's cut and total deadline, read only when it is interrupted. */
class CallCounter implements Counter {
  attempts = 0
  constructor(
    readonly clock: Clock.Clock,
    readonly external: Cut | undefined,
    readonly deadlineAt: number | undefined,
    readonly traced: boolean
  ) {}
  cut(): string | undefined {
    if (this.external?.error !== undefined) return reasonOf(this.external.error)
    return this.deadlineAt !== undefined && this.clock.currentTimeMillisUnsafe() >= this.deadlineAt
      ? "Timeout"
      : undefined
  }
}

/**
 * Builds the engine; closing its scope stops admitting calls, waits up to the shutdown
 * deadline for the running ones, then interrupts them (their callers get `ShuttingDownError`).
 *
 * @internal
 */
export const make = (options: Options): Effect.Effect<Engine, never, Scope.Scope> =>
  Effect.gen(function* () {
    const lanes = yield* Deadline.make
    const clock = yield* Clock.Clock
    const stats = options.stats
    const slots = new Map<string, Semaphore.Semaphore>()
    let closing = false
    let active = 0
    let drained: Deferred.Deferred<void> | undefined

    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        closing = true
        if (active > 0) {
          drained = Deferred.makeUnsafe<void>()
          yield* Deferred.await(drained).pipe(Effect.timeoutOption(options.shutdownDeadline))
        }
        if (active > 0) {
          yield* lanes.interruptAll
          drained ??= Deferred.makeUnsafe<void>()
          yield* Deferred.await(drained).pipe(Effect.timeoutOption(Duration.seconds(5)))
        }
      })
    )

    const enter = () => {
      active++
    }
    const leave = () => {
      active--
      if (active === 0 && drained !== undefined) Deferred.doneUnsafe(drained, Exit.void)
    }

    const leaveEffect = Effect.sync(leave)

    const admit = Effect.suspend(() => (closing ? Effect.fail(shuttingDown()) : Effect.void))

    const slot = (name: string, max: number | undefined): Semaphore.Semaphore | undefined => {
      if (max === undefined || !Number.isFinite(max)) return undefined
      let found = slots.get(name)
      if (found === undefined) {
        found = Semaphore.makeUnsafe(max)
        slots.set(name, found)
      }
      return found
    }

    const seriesOf = (step: Step<unknown>): Series => stats.series(step.name, step.domain)

    const tracked = <A, E>(effect: Effect.Effect<A, E>, timeout?: Duration.Duration | undefined) =>
      Effect.flatMap(lanes.run(effect, timeout), (result): Effect.Effect<A, E | AiError> => {
        if (result === "shutdown") return Effect.fail(cutByShutdown())
        if (result === "timeout") {
          return Effect.fail(new TimeoutError({ limit: "total", timeout: timeout ?? Duration.zero }))
        }
        return result
      })

    // How an attempt's fiber ended becomes the attempt's outcome; a success passes through as is.
    const settleAttempt = <A>(
      step: Pick<Step<unknown>, "name" | "timeout">,
      result: Exit.Exit<A, AiError> | Deadline.Ending
    ): Exit.Exit<A, AiError> => {
      if (result === "timeout") {
        seriesOf(step as Step<unknown>).timeouts++
        return Exit.fail(new TimeoutError({ limit: "request", timeout: step.timeout!, provider: step.name }))
      }
      if (result === "shutdown") return Exit.fail(cutByShutdown())
      if (Exit.isSuccess(result)) return result
      const error = Cause.findErrorOption(result.cause)
      if (error._tag === "Some") return result
      return Exit.fail(unexpected(result.cause, step.name))
    }

    // One attempt: rate limit (outside the deadline), breaker, deadline, provider slot, call.
    const attempt = <T, A>(
      step: Step<T>,
      series: Series,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
      traced: boolean | undefined
    ): Effect.Effect<A, AiError> => {
      const gauges = series.gauges
      const semaphore = slot(step.name, step.maxConcurrency)
      const serve = Effect.suspend(() => {
        const started = clock.currentTimeMillisUnsafe()
        let provided: Effect.Effect<A, AiError>
        try {
          provided = call(step.target, step)
        } catch (defect) {
          // A provider that throws instead of returning an Effect: that attempt's defect
          // (and its gauges, entered below, are left on exit as for any other).
          provided = Effect.die(defect)
        }
        for (const g of gauges) g.enter()
        return Effect.onExit(provided, () => {
          for (const g of gauges) g.exit()
          series.service.record(clock.currentTimeMillisUnsafe() - started)
          return Effect.void
        })
      })
      const body =
        semaphore === undefined
          ? serve
          : Effect.suspend(() => {
              const queuedAt = clock.currentTimeMillisUnsafe()
              for (const g of gauges) g.queued++
              let waiting = true
              const leaveQueue = () => {
                if (!waiting) return
                waiting = false
                for (const g of gauges) g.queued--
                series.queueWait.record(clock.currentTimeMillisUnsafe() - queuedAt)
              }
              return semaphore
                .withPermit(
                  Effect.suspend(() => {
                    leaveQueue()
                    return serve
                  })
                )
                .pipe(Effect.onExit(() => Effect.sync(leaveQueue)))
            })
      const deadlined: Effect.Effect<A, AiError> = lanes.attempt(body, step.timeout, settleAttempt, step)
      const breakered = step.breaker === undefined ? deadlined : step.breaker.execute(step.name, deadlined)
      const guarded =
        traced === undefined
          ? tracedWith("Policy.attempt", attemptAttributes, step, breakered)
          : traced
            ? Effect.withSpan(breakered, "Policy.attempt", { attributes: attemptAttributes(step) })
            : breakered
      if (step.rateLimit === undefined) return guarded
      const limit = step.rateLimit
      return Effect.flatMap(tracked(limit.acquire(step.name, { tokens: step.tokens })), () => guarded)
    }

    // A step's outcome in its metrics (`undefined`: interrupted, by a deadline of the call or cancelled).
    const stepEnded = (
      series: Series,
      started: number,
      usageOf:
        | ((value: never) => { readonly inputTokens: number; readonly outputTokens: number } | undefined)
        | undefined,
      counter: Counter,
      exit: Exit.Exit<unknown, AiError> | undefined,
      now: number
    ): void => {
      series.latency.record(now - started)
      if (exit !== undefined && Exit.isSuccess(exit)) {
        series.successes++
        const usage = usageOf?.(exit.value as never)
        if (usage !== undefined) {
          series.inputTokens += usage.inputTokens
          series.outputTokens += usage.outputTokens
        }
        return
      }
      const error = exit === undefined ? undefined : Cause.findErrorOption(exit.cause)
      if (error !== undefined && error._tag === "Some") {
        series.fail(reasonOf(error.value))
      } else {
        const cut = counter.cut()
        if (cut === "Timeout") series.timeouts++
        series.fail(cut ?? "Interrupted")
      }
    }

    // The retry driver: after a failed attempt, the next one when the policy says so.
    const retryOrFail = <T, A>(
      step: Step<T>,
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
      counter: Counter,
      series: Series,
      state: RetryState,
      error: AiError
    ): Effect.Effect<A, AiError> => {
      const policy = step.retry
      if (policy === undefined || closing || !isRetryable(error)) return Effect.fail(error)
      const next =
        state.stepper === undefined
          ? Effect.map(Schedule.toStep(retrySchedule(policy)), (s) => {
              state.stepper = s as never
              return s as NonNullable<RetryState["stepper"]>
            })
          : Effect.succeed(state.stepper)
      return Effect.flatMap(next, (s) =>
        Effect.flatMap(Effect.exit(s(clock.currentTimeMillisUnsafe(), error)), (decision) => {
          if (Exit.isFailure(decision)) return Effect.fail(error)
          const delay = decision.value[1]
          series.retries++
          const notify =
            plan.onRetry === undefined ? Effect.void : plan.onRetry({ step, attempt: state.attemptNo, error, delay })
          return Effect.flatMap(notify, () =>
            Effect.flatMap(tracked(Effect.sleep(delay)), () => attempts(step, plan, call, counter, series, state))
          )
        })
      )
    }

    const attempts = <T, A>(
      step: Step<T>,
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
      counter: Counter,
      series: Series,
      state: RetryState
    ): Effect.Effect<A, AiError> =>
      Effect.suspend(() => {
        state.attemptNo++
        counter.attempts++
        return Effect.catch(attempt(step, series, call, counter.traced), (error: AiError) =>
          retryOrFail(step, plan, call, counter, series, state, error)
        )
      })

    // One step: the retry driver around attempts, and the step's metrics.
    const runStep = <T, A>(
      step: Step<T>,
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
      counter: Counter
    ): Effect.Effect<A, AiError> =>
      Effect.suspend(() => {
        const series = seriesOf(step)
        let started: number | undefined
        const state: RetryState = { attemptNo: 0, stepper: undefined }
        // The request is counted inside the region whose exit records it: a caller interrupted
        // just before (at an auto-yield) leaves neither a request nor an outcome.
        return Effect.onExit(
          Effect.suspend(() => {
            series.requests++
            started = clock.currentTimeMillisUnsafe()
            return attempts(step, plan, call, counter, series, state)
          }),
          (exit) => {
            if (started !== undefined) {
              stepEnded(series, started, plan.usageOf as never, counter, exit, clock.currentTimeMillisUnsafe())
            }
            return Effect.void
          }
        )
      })

    const fallback = <T, A>(
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
      cut: () => string | undefined
    ): Effect.Effect<Answer<T, A>, AiError> =>
      Effect.suspend(() => {
        const counter: Counter = { attempts: 0, cut }
        const [first, ...rest] = plan.steps
        if (rest.length === 0) {
          return Effect.map(runStep(first, plan, call, counter), (value) => ({
            value,
            step: first,
            attempts: counter.attempts,
            stepsTried: 1,
            source: "provider" as const
          }))
        }
        const failed: Array<FailedAttempt> = []
        let index = -1
        const attemptStep = Effect.flatMap(CurrentStep, (current) => {
          const step = current as Step<T>
          index = plan.steps.indexOf(step)
          if (index > 0) seriesOf(step).fallbacks++
          return Effect.tapError(runStep(step, plan, call, counter), (error) =>
            Effect.sync(() => {
              failed.push({ domain: step.domain, provider: step.name, error })
            })
          )
        })
        const executionPlan = ExecutionPlan.make(
          { provide: Context.make(CurrentStep, first as Step<unknown>) },
          ...rest.map((step) => ({
            provide: Context.make(CurrentStep, step as Step<unknown>),
            while: (error: AiError) => Effect.succeed(shouldFallback(error))
          }))
        )
        const planned = Effect.withExecutionPlan(attemptStep, executionPlan) as Effect.Effect<A, AiError>
        return planned.pipe(
          Effect.map((value) => ({
            value,
            step: plan.steps[index]!,
            attempts: counter.attempts,
            stepsTried: index + 1,
            source: "provider" as const
          })),
          Effect.mapError((error: AiError) =>
            failed.length === plan.steps.length && shouldFallback(error)
              ? new FallbackExhaustedError({ attempts: failed })
              : error
          )
        ) as Effect.Effect<Answer<T, A>, AiError>
      })

    const hedge = <T, A>(
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
      cut: () => string | undefined
    ): Effect.Effect<Answer<T, A>, AiError> =>
      Effect.suspend(() => {
        const steps = plan.steps
        const delay = plan.hedgeAfter ?? Duration.zero
        const counter: Counter = { attempts: 0, cut }
        const started = steps.map(() => Deferred.makeUnsafe<void>())
        const failedAt = steps.map(() => Deferred.makeUnsafe<void>())
        const fatal = Deferred.makeUnsafe<never, AiError>()
        const failures: Array<FailedAttempt> = []
        const didStart = steps.map(() => false)
        const racers = steps.map((step, i) => {
          const go = Effect.suspend(() => {
            didStart[i] = true
            if (i > 0) seriesOf(step).hedgesStarted++
            Deferred.doneUnsafe(started[i]!, Exit.void)
            return runStep(step, plan, call, counter).pipe(
              Effect.map((value) => ({ value, index: i })),
              Effect.tapError((error) => {
                failures.push({ domain: step.domain, provider: step.name, error })
                return shouldFallback(error) ? Deferred.succeed(failedAt[i]!, undefined) : Deferred.fail(fatal, error)
              })
            )
          })
          if (i === 0) return go
          const wait = Effect.raceFirst(
            Effect.andThen(Deferred.await(started[i - 1]!), Effect.sleep(delay)),
            Deferred.await(failedAt[i - 1]!)
          )
          return Effect.andThen(wait, go)
        })
        return Effect.raceFirst(Effect.raceAll(racers), Deferred.await(fatal)).pipe(
          Effect.map(({ index, value }): Answer<T, A> => {
            const backups = didStart.slice(1).some(Boolean)
            if (backups) {
              steps.forEach((step, i) => {
                if (i === 0 || !didStart[i]) return
                if (i === index) seriesOf(step).hedgesWon++
                else seriesOf(step).hedgesLost++
              })
            }
            return {
              value,
              step: steps[index]!,
              attempts: counter.attempts,
              stepsTried: didStart.filter(Boolean).length,
              source: "provider",
              hedgeWon: backups ? index > 0 : undefined
            }
          }),
          Effect.mapError((error: AiError) =>
            failures.length === steps.length && shouldFallback(error)
              ? new FallbackExhaustedError({ attempts: failures })
              : error
          )
        )
      })

    const runFull = <T, A>(
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
    ): Effect.Effect<Answer<T, A>, AiError> => {
      if (closing) return Effect.fail(shuttingDown())
      // Set when the call starts: its caller's cut, and the instant its total deadline passes.
      let external: Cut | undefined
      let deadlineAt: number | undefined
      const cut = (): string | undefined => {
        if (external?.error !== undefined) return reasonOf(external.error)
        return deadlineAt !== undefined && clock.currentTimeMillisUnsafe() >= deadlineAt ? "Timeout" : undefined
      }
      let body: Effect.Effect<Answer<T, A>, AiError> = plan.hedgeAfter !== undefined && plan.steps.length > 1
        ? hedge(plan, call, cut)
        : fallback(plan, call, cut)
      const cache = plan.cache
      if (cache !== undefined) {
        const inner = body
        let answered: Answer<T, A> | undefined
        body = Effect.map(
          cache.guard.getOrCompute(
            cache.key,
            Effect.map(inner, (answer) => {
              answered = answer
              return answer.value
            }),
            { allowStale: cache.allowStale }
          ),
          ({ source, value }): Answer<T, A> =>
            answered !== undefined && source === "miss"
              ? answered
              : {
                  value,
                  step: plan.steps[0],
                  attempts: answered?.attempts ?? 0,
                  stepsTried: answered?.stepsTried ?? 0,
                  source: source === "stale" ? "stale-cache" : source === "miss" ? "provider" : "cache"
                }
        )
      }
      if (plan.totalTimeout !== undefined) body = tracked(body, plan.totalTimeout)
      return Effect.withFiber((fiber) => {
        external = fiber.getRef(CurrentCut)
        if (plan.totalTimeout !== undefined) {
          deadlineAt = clock.currentTimeMillisUnsafe() + Duration.toMillis(plan.totalTimeout)
        }
        active++
        return Effect.ensuring(body, leaveEffect)
      })
    }

    const runFullIn = <T, A>(
      _fiber: Fiber.Fiber<unknown, unknown>,
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
    ) => runFull(plan, call)

    // A single-step plan answers from the fused path when it can (see `fused` below).
    const run = <T, A>(
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
    ): Effect.Effect<Answer<T, A>, AiError> => {
      if (closing) return Effect.fail(shuttingDown())
      if (!fusable(plan)) return runFull(plan, call)
      return Effect.withFiber((fiber) =>
        isTraced(fiber)
          ? runFull(plan, call)
          : awaitFused(fiber, plan, call, runFullIn, (exit, started) =>
              Effect.map(
                exit as Exit.Exit<A, AiError>,
                (value): Answer<T, A> => ({
                  value,
                  step: plan.steps[0],
                  attempts: started.attempts,
                  stepsTried: 1,
                  source: "provider"
                })
              )
            )
      )
    }

    // The call on the fused path, awaited: it is taken in and started inside the callback's
    // registration (with its cancellation in place), or `full` runs it when the breaker has no
    // fast lane open now. `answer` maps its exit (the exit itself when not given).
    const awaitFused = <T, A, B>(
      fiber: Fiber.Fiber<unknown, unknown>,
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
      full: (
        fiber: Fiber.Fiber<unknown, unknown>,
        plan: Plan<T, A>,
        call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
      ) => Effect.Effect<B, AiError>,
      answer?: (exit: Exit.Exit<unknown, AiError>, started: Fused.Fused) => Effect.Effect<B, AiError>
    ): Effect.Effect<B, AiError> =>
      Effect.callback<B, AiError>((resume) => {
        const started = closing ? undefined : fused(fiber, plan, call)
        if (started === undefined) return resume(full(fiber, plan, call))
        return started.register(
          answer === undefined
            ? (resume as (exit: Exit.Exit<unknown, AiError>) => void)
            : (exit) => resume(answer(exit, started))
        )
      })

    const fusedEnv: Fused.Env = {
      clock,
      lanes,
      settle: (call, result) => settleAttempt(call.step, result),
      rest: (call, error) => {
        if (call.step.retry === undefined || closing || !isRetryable(error)) return undefined
        const state: RetryState = { attemptNo: 1, stepper: undefined }
        return retryOrFail(call.step, call.plan, call.call, call, call.series, state, error)
      },
      ended: (call, exit, now) => stepEnded(call.series, call.started, call.plan.usageOf as never, call, exit, now),
      leave
    }

    // The fused path (policy/fused.ts) takes a single-step plan without total deadline, cache,
    // rate limit, provider slot or span, whose breaker (if any) has a fast lane open now.
    // What the plan alone decides (no side effect; the caller checks `isTraced` apart):
    const fusable = <T, A>(plan: Plan<T, A>): boolean => {
      if (plan.steps.length > 1 || plan.cache !== undefined || plan.totalTimeout !== undefined) return false
      const step = plan.steps[0]
      return step.rateLimit === undefined && slot(step.name, step.maxConcurrency) === undefined
    }

    // Takes the call in (counted, admitted by the breaker's fast lane), or answers undefined
    // (the full path) when the breaker has no fast lane open now. Call it where the call
    // starts at once: inside a callback's registration, or from JavaScript.
    const fused = <T, A>(
      fiber: Fiber.Fiber<unknown, unknown>,
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
    ): Fused.Fused | undefined => {
      const step = plan.steps[0]
      const now = clock.currentTimeMillisUnsafe()
      let fast: Fused.FastBreaker | undefined
      let ticket: Fused.FastTicket | undefined
      if (step.breaker !== undefined) {
        fast = Fused.fastBreakers.get(step.breaker)
        if (fast === undefined) return undefined
        ticket = fast.enter(step.name, clock, now)
        if (ticket === undefined) return undefined
      }
      const series = seriesOf(step)
      series.requests++
      const started = new Fused.Fused(
        fusedEnv,
        fiber,
        plan as Plan<unknown, unknown>,
        call as (target: unknown, step: Step<unknown>) => Effect.Effect<unknown, AiError>,
        series,
        now,
        fast,
        fiber.getRef(CurrentCut)
      )
      started.ticket = ticket
      active++
      return started
    }

    // `run` for callers that want only the value: a single-step plan without cache or hedge
    // (most calls) skips building its Answer. `runValueIn` is for callers that already hold
    // their fiber (one `withFiber` fewer per call).
    const runValueIn = <T, A>(
      fiber: Fiber.Fiber<unknown, unknown>,
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
    ): Effect.Effect<A, AiError> => {
      if (plan.steps.length > 1 || plan.cache !== undefined) return Effect.map(runFull(plan, call), answerValue)
      if (closing) return Effect.fail(shuttingDown())
      if (!fusable(plan) || isTraced(fiber)) return runStepValue(fiber, plan, call)
      return awaitFused(fiber, plan, call, runStepValue)
    }

    // The full path of a single-step plan without cache, answering its value.
    const runStepValue = <T, A>(
      fiber: Fiber.Fiber<unknown, unknown>,
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
    ): Effect.Effect<A, AiError> => {
      if (closing) return Effect.fail(shuttingDown())
      const deadlineAt =
        plan.totalTimeout === undefined
          ? undefined
          : clock.currentTimeMillisUnsafe() + Duration.toMillis(plan.totalTimeout)
      const counter = new CallCounter(clock, fiber.getRef(CurrentCut), deadlineAt, isTraced(fiber))
      const body = runStep(plan.steps[0], plan, call, counter)
      active++
      return Effect.ensuring(plan.totalTimeout === undefined ? body : tracked(body, plan.totalTimeout), leaveEffect)
    }

    // A fused call's value reported as the Answer `run` gives (one step, its attempts).
    const answering = <T>(sink: Fused.Sink, step: Step<T>, started: Fused.Fused): Fused.Sink => ({
      done: (index, exit) =>
        sink.done(
          index,
          Exit.map(exit, (value) => ({ value, step, attempts: started.attempts, stepsTried: 1, source: "provider" }))
        )
    })

    // A call started from JavaScript (the pools of `executeMany` and `Batch.run`): reports to
    // `sink` under `index` its value, or with `full` its Answer (as `run`); answers undefined
    // when it already has, else its handle.
    const start = <T, A>(
      fiber: Fiber.Fiber<unknown, unknown>,
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
      sink: Fused.Sink,
      index: number,
      full = false
    ): Fused.Running | undefined => {
      const fusedCall = closing || !fusable(plan) || isTraced(fiber) ? undefined : fused(fiber, plan, call)
      if (fusedCall !== undefined) {
        fusedCall.sink = full ? answering(sink, plan.steps[0], fusedCall) : sink
        fusedCall.index = index
        const exit = fusedCall.begin()
        if (exit === undefined) return fusedCall
        fusedCall.sink.done(index, exit)
        return undefined
      }
      const child = Effect.runForkWith(fiber.context)<unknown, AiError>(
        full ? runFull(plan, call) : runValueIn(fiber, plan, call)
      )
      const exit = child.pollUnsafe()
      if (exit !== undefined) {
        sink.done(index, exit)
        return undefined
      }
      let cancelled = false
      child.addObserver((end) => {
        if (!cancelled) sink.done(index, end)
      })
      return {
        cancel: () => {
          cancelled = true
          child.interruptUnsafe()
          return child
        }
      }
    }

    const runValue = <T, A>(
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
    ): Effect.Effect<A, AiError> => Effect.withFiber((fiber) => runValueIn(fiber, plan, call))

    return {
      run,
      runValue,
      runValueIn,
      start,
      tracked,
      lanes,
      admit,
      enter,
      leave,
      isClosing: () => closing,
      series: seriesOf,
      slot
    } satisfies Engine
  })
