/**
 * One step of a call: the retry driver around its attempts, each attempt under its
 * policies (the rate limit, outside the deadline; the breaker; the attempt's deadline; the
 * provider slot), and the step's metrics. The engine (`engine.ts`) builds one driver and
 * runs every step through it; the fused path (`fused.ts`) hands over to it from a call's
 * second attempt on.
 *
 * The retry driver steps `Policy.schedule` only after a failure, so a call that succeeds
 * at once pays nothing for its retry policy (`Effect.retry` builds its schedule up front:
 * 3.9 µs per instant call here). Every wait (an attempt, a rate-limit slot, a backoff) runs
 * on the deadline lanes, which shutdown interrupts.
 *
 * @internal
 */
import { Cause, type Clock, Duration, Effect, Exit, Schedule } from "effect"
import type { ProviderSlots } from "./slots.js"
import { notAnEffect, notAnEffectError, observe, threwOnce } from "./callback.js"
import { type AiError, isRetryable, reasonOf, TimeoutError } from "../AiError.js"
import * as Input from "../Input.js"
import { schedule as retrySchedule } from "../Policy.js"
import type { Series } from "../stats/series.js"
import {
  cutByShutdown,
  executeOf,
  guardDefect,
  guardInterrupted,
  guardThrew,
  isGuardDefect,
  malformedAnswer,
  notAnAiError,
  unexpected
} from "./failure.js"
import type * as Deadline from "./deadline.js"
import { type BreakerGuard, type Cut, type Plan, selfBounded, type Step, type Telemetry } from "./plan.js"
import { breakered, type Queued } from "./queued.js"
import { isTraced } from "./span.js"

/**
 * The attributes of an attempt's span on `step`: its provider and domain, and what is known
 * of the call before it runs (its operation, the model it asks for).
 *
 * @internal
 */
export const attemptAttributes = (
  step: Step<unknown>,
  operation: string | undefined,
  requestModel: string | undefined
): Record<string, unknown> => {
  const attributes: Record<string, unknown> = {
    "gen_ai.provider.name": step.name,
    "orchestra.domain": step.domain ?? "none"
  }
  if (operation !== undefined) attributes["gen_ai.operation.name"] = operation
  if (requestModel !== undefined) attributes["gen_ai.request.model"] = requestModel
  return attributes
}

// An attempt in its span, which its answer's attributes or its error's type complete.
// A plan's telemetry (`Executor.run`'s, a caller's) is bookkeeping of a call that answers as it
// does: a throw of it is logged once (`threwOnce`) and the span goes without what it would have told.
const spanned = <T, A>(
  step: Step<T>,
  telemetry: Telemetry<T, A> | undefined,
  effect: Effect.Effect<A, AiError>
): Effect.Effect<A, AiError> => {
  let model: string | undefined
  let threw: Effect.Effect<void> | undefined
  try {
    model = telemetry?.requestModel(step)
  } catch (defect) {
    threw = threwOnce("telemetry.requestModel", telemetry!.requestModel, defect)
  }
  const span = Effect.withSpan(
    effect.pipe(
      Effect.tap((value) => {
        if (telemetry === undefined) return Effect.void
        let attributes: Record<string, unknown>
        try {
          attributes = telemetry.response(value)
        } catch (defect) {
          return threwOnce("telemetry.response", telemetry.response, defect)
        }
        return Effect.annotateCurrentSpan(attributes)
      }),
      Effect.tapError((error) => Effect.annotateCurrentSpan("error.type", reasonOf(error)))
    ),
    "Policy.attempt",
    { attributes: attemptAttributes(step, telemetry?.operation, model) }
  )
  return threw === undefined ? span : Effect.andThen(threw, span)
}

/**
 * Where a step's retry driver is, and whether its attempt under way holds its slot.
 *
 * @internal
 */
export interface RetryState extends Queued {
  attemptNo: number
  stepper: ((now: number, error: AiError) => Effect.Effect<[Duration.Duration, Duration.Duration], unknown>) | undefined
  /** What the attempt under way answered, once it has: a user's breaker must answer that, not its own. */
  answered: Exit.Success<unknown, unknown> | undefined
}

/**
 * Attempts of one call so far, and why it was cut if it was (a reason, or undefined).
 *
 * @internal
 */
export interface Counter {
  attempts: number
  /** Steps started so far. */
  steps: number
  /** Of them, hedges (started on the delay), and whether one answered: set by a hedge once it ended. */
  hedges?: number | undefined
  hedgeWon?: boolean | undefined
  readonly cut: () => string | undefined
  /** The instant the call's total deadline passes, if it has one: no retry waits past it. */
  readonly deadlineAt?: number | undefined
  /** Whether the caller is traced (known once per call), or undefined: look at each attempt. */
  readonly traced?: boolean | undefined
  /**
   * Set by a hedge once its race is decided (a step answered, or failed so that the call ends):
   * the steps it then cuts lost the race, which is no failure of their providers.
   */
  raceOver?: boolean | undefined
  /** The caller's cut, if it keeps one: a call it marks `lost` lost a race between calls. */
  readonly external?: Cut | undefined
}

/**
 * A single-step call's counter: its caller's cut and total deadline, read only when it is interrupted.
 *
 * @internal
 */
export class CallCounter implements Counter {
  attempts = 0
  steps = 0
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
 * A step's outcome in its metrics (`undefined`: interrupted, by a deadline of the call or cancelled;
 * a defect, which only a user's guard leaves past its attempt: `Unknown`).
 * A step cut because its hedge's race was decided is neither answered nor failed: it stays
 * counted as a request only.
 *
 * @internal
 */
export const stepEnded = (
  series: Series,
  started: number,
  usageOf: ((value: never) => { readonly inputTokens: number; readonly outputTokens: number } | undefined) | undefined,
  counter: Counter,
  exit: Exit.Exit<unknown, AiError> | undefined,
  now: number
): void => {
  if (exit !== undefined && Exit.isSuccess(exit)) {
    series.latency.record(now - started)
    series.successes++
    if (usageOf === undefined) return
    // The answer is the provider's: one breaking its contract (no response, a usage getter that
    // throws) must not throw out of the bookkeeping, which the fused path runs as plain JavaScript
    // (out of a pool, leaving the call counted as running). A try costs nothing until it throws.
    try {
      const usage = usageOf(exit.value as never)
      if (usage !== undefined && usage !== null) series.addUsage(usage)
    } catch {
      // No usage to count.
    }
    return
  }
  const error = exit === undefined ? undefined : Cause.findErrorOption(exit.cause)
  if (error !== undefined && error._tag === "Some") {
    series.latency.record(now - started)
    series.fail(reasonOf(error.value))
  } else if (exit !== undefined && Cause.hasDies(exit.cause)) {
    // A defect past the attempt (a user's breaker or rate limit that threw): nobody interrupted it.
    series.latency.record(now - started)
    series.fail("Unknown")
  } else {
    // Not its provider's failure, and not a latency anyone waited for.
    if (counter.raceOver === true || counter.external?.lost === true) return
    series.latency.record(now - started)
    const cut = counter.cut()
    if (cut === "Timeout") series.timeouts++
    series.fail(cut ?? "Interrupted")
  }
}

const notRunError = (step: string, value: unknown): TypeError =>
  new TypeError(
    `the circuit breaker's execute answered without running the call (step ${step}): it must answer what the call it was given answers, got ${Input.kindOf(value)}`
  )

/**
 * What a step's driver needs of its engine.
 *
 * @internal
 */
export interface Env {
  readonly clock: Clock.Clock
  readonly lanes: Deadline.Lanes
  readonly seriesOf: (step: Step<unknown>) => Series
  /** The limit of a step's provider slots, if it has one (nothing taken). */
  readonly slotLimit: (name: string, max: number | undefined) => number | undefined
  /** A step's provider slots, taken for one attempt until their `leave`. */
  readonly slot: (name: string, max: number | undefined) => ProviderSlots | undefined
  /** Runs a wait on the deadline lanes (shutdown interrupts it). */
  readonly tracked: <A, E>(
    effect: Effect.Effect<A, E>,
    timeout?: Duration.Duration | undefined
  ) => Effect.Effect<A, E | AiError>
  /** Whether the engine is closing: a failed attempt is then not retried. */
  readonly isClosing: () => boolean
}

/**
 * What the multi-step strategies (`fallback.ts`, `hedge.ts`) need: a step run by the
 * driver, and a step's metrics.
 *
 * @internal
 */
export interface Runner {
  readonly runStep: <T, A>(
    step: Step<T>,
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
    counter: Counter
  ) => Effect.Effect<A, AiError>
  readonly seriesOf: (step: Step<unknown>) => Series
}

/**
 * A step's driver, built once per engine.
 *
 * @internal
 */
export interface Driver extends Runner {
  /** How an attempt's fiber ended, as the attempt's outcome (a timeout counted). */
  readonly settleAttempt: <A>(
    step: Pick<Step<unknown>, "name" | "timeout" | "answerIssue">,
    result: Exit.Exit<A, AiError> | Deadline.Ending
  ) => Exit.Exit<A, AiError>
  /** After a failed attempt, the next one when the policy says so, else the failure. */
  readonly retryOrFail: <T, A>(
    step: Step<T>,
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
    counter: Counter,
    series: Series,
    state: RetryState,
    error: AiError
  ) => Effect.Effect<A, AiError>
}

/**
 * Builds the driver of an engine's steps.
 *
 * @internal
 */
export const make = (env: Env): Driver => {
  const { clock, lanes, seriesOf, slot, slotLimit, tracked, isClosing } = env

  // How an attempt's fiber ended becomes the attempt's outcome; a success passes through as is.
  const settleAttempt = <A>(
    step: Pick<Step<unknown>, "name" | "timeout" | "answerIssue">,
    result: Exit.Exit<A, AiError> | Deadline.Ending
  ): Exit.Exit<A, AiError> => {
    if (result === "timeout") {
      seriesOf(step as Step<unknown>).timeouts++
      return Exit.fail(new TimeoutError({ limit: "request", timeout: step.timeout!, provider: step.name }))
    }
    if (result === "shutdown") return Exit.fail(cutByShutdown())
    if (Exit.isSuccess(result)) {
      const check = step.answerIssue
      if (check === undefined) return result
      let issue: string | undefined
      try {
        issue = check(result.value)
      } catch (defect) {
        // Run in plain JavaScript on the fused path: a throw out of here left the call hanging.
        return Exit.fail(unexpected(Cause.die(defect), step.name))
      }
      return issue === undefined ? result : Exit.fail(malformedAnswer(step.name, issue))
    }
    const error = Cause.findErrorOption(result.cause)
    if (error._tag === "None")
      return isGuardDefect(result.cause) ? result : Exit.fail(unexpected(result.cause, step.name))
    const replaced = notAnAiError(error.value, step.name)
    return replaced === undefined ? result : Exit.fail(replaced)
  }

  // A user's breaker whose record ignores its interruption (in an `onExit`) and never ends would hold
  // a cancelled call for ever: it runs on the lanes, which let the caller go as from an attempt that
  // ignores its interruption. This library's breakers bound their own records, and run as they are.
  // One that returns no Effect is named (not "Not a valid effect" from the run loop).
  // A user's breaker answers what its attempt answered: one that answers anything else (its own value, the
  // attempt never run) would hand its caller an answer no provider gave, past the check of `answerIssue`.
  const letGo = <A>(
    breaker: BreakerGuard,
    guarded: Effect.Effect<A, AiError>,
    name: string,
    state: RetryState
  ): Effect.Effect<A, AiError> =>
    selfBounded.has(breaker)
      ? guarded
      : Effect.flatMap(
          userGuard(
            Effect.isEffect(guarded) ? guarded : notAnEffect("the circuit breaker's execute", guarded),
            "the circuit breaker",
            name
          ),
          (value): Effect.Effect<A, AiError> => {
            const answered = state.answered
            return answered !== undefined && answered.value === value
              ? (answered as Exit.Exit<A>)
              : Effect.die(guardDefect(notRunError(name, value)))
          }
        )

  // A guard's wait on the lanes (the shutdown cuts it, and the caller is let go of one ignoring its
  // interruption); a failure of its own that is no AiError (a user's `Effect.fail("store down")`)
  // becomes one naming it: the retry predicate, the stats and the callers only ever see an AiError.
  const userGuard = <A>(effect: Effect.Effect<A, AiError>, what: string, name: string): Effect.Effect<A, AiError> =>
    Effect.flatMap(lanes.run(effect, undefined), (result): Effect.Effect<A, AiError> => {
      if (result === "shutdown" || result === "timeout") return Effect.fail(cutByShutdown())
      if (Exit.isSuccess(result)) return result
      const error = Cause.findErrorOption(result.cause)
      const replaced =
        error._tag === "Some"
          ? notAnAiError(error.value, name, what)
          : Cause.hasInterruptsOnly(result.cause)
            ? guardInterrupted(what, name)
            : undefined
      return replaced === undefined ? result : Effect.fail(replaced)
    })

  // One attempt: rate limit (outside the deadline), breaker, deadline, provider slot, call.
  const attempt = <T, A>(
    step: Step<T>,
    plan: Plan<T, A>,
    series: Series,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
    counter: Counter,
    state: RetryState
  ): Effect.Effect<A, AiError> => {
    const gauges = series.gauges
    state.answered = undefined
    const own =
      step.slot === undefined && step.noSlot !== true && slotLimit(step.name, step.maxConcurrency) !== undefined
    // The gauges are entered inside the region whose exit leaves them (`started`, `queuedAt` set
    // once they are): entered one step before it, a caller interrupted at a yield in between left
    // them entered for ever. The same objects as before, wrapped the other way round.
    let started: number | undefined
    const serve = Effect.onExit(
      Effect.suspend(() => {
        const now = clock.currentTimeMillisUnsafe()
        let provided: Effect.Effect<A, AiError>
        try {
          provided = call(step.target, step)
        } catch (defect) {
          // A provider that throws instead of returning an Effect: that attempt's defect
          // (and its gauges, entered below, are left on exit as for any other).
          provided = Effect.die(defect)
        }
        // Anything else handed to the run loop ends the fiber past every handler (`callback.ts`):
        // the gauges below would stay entered for ever. A property read, nothing allocated.
        if (!Effect.isEffect(provided)) provided = notAnEffect("the provider call", provided)
        for (const g of gauges) g.enter()
        started = now
        return provided
      }),
      (exit) => {
        if (started === undefined) return Effect.void
        if (exit._tag === "Success") state.answered = exit
        for (const g of gauges) g.exit()
        // An attempt its hedge's race (or its caller's) cut was not served: its time would raise
        // the p95 that `after: "p95"` reads.
        if (exit._tag === "Success" || (counter.raceOver !== true && counter.external?.lost !== true)) {
          series.service.record(clock.currentTimeMillisUnsafe() - started)
        }
        return Effect.void
      }
    )
    if (step.slot === undefined && !own) {
      const deadlined = lanes.attempt(serve, step.timeout, settleAttempt, step)
      return guard(
        step,
        plan,
        counter,
        step.breaker === undefined
          ? deadlined
          : letGo(step.breaker, executeOf(step.breaker, step.name, deadlined), step.name, state)
      )
    }
    // Queued for its slot: the attempt's deadline covers the wait, and its breaker
    // counts it only once it was served (`queued.ts`).
    state.reached = false
    let queuedAt: number | undefined
    // The provider's slots, taken as the attempt starts to queue (not when it is built: the name's
    // last call may let them go in between) and left as it ends.
    let held: ProviderSlots | undefined
    const leaveQueue = (): void => {
      if (queuedAt === undefined) return
      for (const g of gauges) g.queued--
      series.queueWait.record(clock.currentTimeMillisUnsafe() - queuedAt)
      queuedAt = undefined
    }
    const body = Effect.onExit(
      Effect.suspend(() => {
        for (const g of gauges) g.queued++
        queuedAt = clock.currentTimeMillisUnsafe()
        // A user's slot that throws or returns no Effect: the call's defect naming it, which the
        // attempt's end passes on (not its provider's failure: retried, fallen back) and no breaker sees.
        let permitted: Effect.Effect<A, AiError>
        const semaphore = own ? (held = slot(step.name, step.maxConcurrency))?.semaphore : step.slot
        if (semaphore === undefined) {
          state.reached = true
          leaveQueue()
          return serve
        }
        try {
          permitted = semaphore.withPermit(
            Effect.suspend(() => {
              state.reached = true
              leaveQueue()
              return serve
            })
          )
        } catch (defect) {
          return Effect.die(guardDefect(guardThrew("the slot's withPermit", step.name, defect)))
        }
        return Effect.isEffect(permitted)
          ? permitted
          : Effect.die(guardDefect(notAnEffectError("the slot's withPermit", permitted)))
      }),
      () => {
        leaveQueue()
        if (held !== undefined) {
          held.leave()
          held = undefined
        }
        return Effect.void
      }
    )
    const deadlined: Effect.Effect<A, AiError> = lanes.attempt(body, step.timeout, settleAttempt, step)
    return guard(
      step,
      plan,
      counter,
      step.breaker === undefined
        ? deadlined
        : letGo(step.breaker, breakered(step.breaker, step.name, state, deadlined), step.name, state)
    )
  }

  // The attempt under its breaker: its span when traced, then the rate limit's wait outside it.
  const guard = <T, A>(
    step: Step<T>,
    plan: Plan<T, A>,
    counter: Counter,
    breakered: Effect.Effect<A, AiError>
  ): Effect.Effect<A, AiError> => {
    const traced = counter.traced
    const guarded =
      traced === undefined
        ? Effect.withFiber((fiber) => (isTraced(fiber) ? spanned(step, plan.telemetry, breakered) : breakered))
        : traced
          ? spanned(step, plan.telemetry, breakered)
          : breakered
    if (step.rateLimit === undefined) return guarded
    const limit = step.rateLimit
    // No wait past the call's total deadline: a fallback gets the time that is left.
    let acquired: Effect.Effect<void, AiError>
    try {
      acquired = limit.acquire(step.name, { tokens: step.tokens, waitUntil: counter.deadlineAt })
    } catch (defect) {
      throw guardThrew("the rate limit's acquire", step.name, defect)
    }
    // A user's limit that returns no Effect (a Promise): named, its rejection handled (`callback.ts`).
    return Effect.flatMap(
      userGuard(
        Effect.isEffect(acquired) ? acquired : notAnEffect("the rate limit's acquire", acquired),
        "the rate limit",
        step.name
      ),
      () => guarded
    )
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
    if (policy === undefined || isClosing() || !isRetryable(error)) return Effect.fail(error)
    const next =
      state.stepper === undefined
        ? Effect.map(Schedule.toStep(retrySchedule(policy)), (s) => {
            state.stepper = s as never
            return s as NonNullable<RetryState["stepper"]>
          })
        : Effect.succeed(state.stepper)
    const now = clock.currentTimeMillisUnsafe()
    return Effect.flatMap(next, (s) =>
      Effect.flatMap(Effect.exit(s(now, error)), (decision) => {
        if (Exit.isFailure(decision)) return Effect.fail(error)
        const delay = decision.value[1]
        // A wait the call's total deadline would cut (a long Retry-After) is not waited for: the
        // step fails with its error now, and a fallback gets the time that is left.
        const deadlineAt = counter.deadlineAt
        if (deadlineAt !== undefined && now + Duration.toMillis(delay) >= deadlineAt) return Effect.fail(error)
        // The callback waits on the deadline lanes with the backoff: one that never ends is cut
        // by the shutdown as the backoff is, and its caller answered.
        const wait =
          plan.onRetry === undefined
            ? Effect.sleep(delay)
            : Effect.andThen(
                observe("onRetry", plan.onRetry, () => plan.onRetry!({ step, attempt: state.attemptNo, error, delay })),
                Effect.sleep(delay)
              )
        return Effect.flatMap(tracked(wait), () => {
          // Counted once the backoff is over: a deadline that cuts it leaves no retry made.
          series.retries++
          return attempts(step, plan, call, counter, series, state)
        })
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
      return Effect.catch(attempt(step, plan, series, call, counter, state), (error: AiError) =>
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
      const state: RetryState = { attemptNo: 0, stepper: undefined, reached: false, answered: undefined }
      // The request is counted inside the region whose exit records it: a caller interrupted
      // just before (at an auto-yield) leaves neither a request nor an outcome.
      return Effect.onExit(
        Effect.suspend(() => {
          series.requests++
          counter.steps++
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

  return { runStep, seriesOf, settleAttempt, retryOrFail }
}
