/**
 * The one policy pipeline for calls (the order is documented in `Policy.ts`): admission,
 * cache, total deadline, fallback (on `ExecutionPlan`) or hedge, then per step the retry
 * driver, and per attempt the rate limit, the breaker, the deadline and the provider slot,
 * with the call metrics recorded on the way.
 *
 * This module is the engine itself: admission and the drain on shutdown, the provider
 * slots, the cache and the total deadline, and the entry points (`run`, `runValue`,
 * `runValueIn`, `start`). It wires the parts that live beside it: a plan's types
 * (`plan.ts`), one step with its retry driver and attempts (`step.ts`), fallback
 * (`fallback.ts`) and hedging (`hedge.ts`). Every wait (an attempt, a rate-limit slot and a
 * backoff in `step.ts`, the whole call here) runs on the deadline lanes, which shutdown
 * interrupts.
 *
 * A single-step plan without total deadline, cache, rate limit, provider slot or span (most
 * calls) runs on the fused path (`fused.ts`): the same order as plain JavaScript around
 * the attempt's fiber, until a retry hands over to the driver of `step.ts`.
 *
 * @internal
 */
import { Clock, type Fiber, Deferred, Duration, Effect, Exit, type Scope } from "effect"
import { type AiError, isRetryable, reasonOf, TimeoutError } from "../AiError.js"
import type { Series } from "../stats/series.js"
import * as Deadline from "./deadline.js"
import * as Fallback from "./fallback.js"
import * as Fused from "./fused.js"
import * as Hedge from "./hedge.js"
import { type Answer, CurrentCut, type Plan, type Step } from "./plan.js"
import { isTraced } from "./span.js"
import { cutByShutdown, shuttingDown } from "./failure.js"
import { makeCached } from "./cached.js"
import type { Engine, Options } from "./engine-types.js"
import { makeSlots } from "./slots.js"
import { CallCounter, type Counter, make as makeDriver, type RetryState, stepEnded } from "./step.js"

export type { Engine, Options } from "./engine-types.js"
export { ProviderSlots, slotLimitIssue } from "./slots.js"

const answerValue = <T, A>(answer: Answer<T, A>): A => answer.value

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

    // A call counted as running until it ends. Counted and guarded in one uninterruptible step:
    // a caller interrupted in between (at an auto-yield) would leave it counted for ever, and
    // the shutdown would wait its whole deadline for a call that is not running.
    const running = <A, E>(body: Effect.Effect<A, E>): Effect.Effect<A, E> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.suspend(() => {
          active++
          return Effect.ensuring(restore(body), leaveEffect)
        })
      )

    const admit = Effect.suspend(() => (closing ? Effect.fail(shuttingDown()) : Effect.void))

    const { slotLimit, slot, claimSlot, pinSlot } = makeSlots()

    const seriesOf = (step: Step<unknown>): Series => stats.series(step.statsName ?? step.name, step.domain)

    const tracked = <A, E>(effect: Effect.Effect<A, E>, timeout?: Duration.Duration | undefined) =>
      Effect.flatMap(lanes.run(effect, timeout), (result): Effect.Effect<A, E | AiError> => {
        if (result === "shutdown") return Effect.fail(cutByShutdown())
        if (result === "timeout") {
          return Effect.fail(new TimeoutError({ limit: "total", timeout: timeout ?? Duration.zero }))
        }
        return result
      })

    const cached = makeCached(lanes, tracked, seriesOf)

    // One step of a call (`step.ts`), and the strategies over a plan's steps.
    const isClosing = () => closing
    const driver = makeDriver({ clock, lanes, seriesOf, slot, slotLimit, tracked, isClosing })
    const { settleAttempt, retryOrFail, runStep } = driver
    const fallback = Fallback.make(driver)
    const hedge = Hedge.make(driver)

    const runFull = <T, A>(
      plan: Plan<T, A>,
      call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
    ): Effect.Effect<Answer<T, A>, AiError> =>
      // Admitted when it runs, not when it is built: an effect built before the shutdown (a
      // repeat, a stored program) and run after it is refused, as `runValueIn` refuses it.
      Effect.withFiber((fiber) => {
        if (closing) return Effect.fail(shuttingDown())
        // Its caller's cut, and the instant its total deadline passes.
        const external = fiber.getRef(CurrentCut)
        const deadlineAt =
          plan.totalTimeout === undefined
            ? undefined
            : clock.currentTimeMillisUnsafe() + Duration.toMillis(plan.totalTimeout)
        const cut = (): string | undefined => {
          if (external?.error !== undefined) return reasonOf(external.error)
          return deadlineAt !== undefined && clock.currentTimeMillisUnsafe() >= deadlineAt ? "Timeout" : undefined
        }
        // Read after a failure too: a stale answer tells the attempts its failed steps made.
        const counter: Counter = { attempts: 0, steps: 0, hedges: 0, hedgeWon: false, cut, deadlineAt, external }
        let body: Effect.Effect<Answer<T, A>, AiError> = plan.hedgeAfter !== undefined && plan.steps.length > 1
          ? hedge(plan, call, counter)
          : fallback(plan, call, counter)
        const cache = plan.cache
        const total = plan.totalTimeout
        if (cache === undefined) {
          if (total !== undefined) body = tracked(body, total)
        } else {
          body = cached(plan, cache, body, counter)
        }
        const onEnded = plan.onEnded
        if (onEnded !== undefined) {
          body = Effect.onExit(body, () =>
            Effect.sync(() => {
              // A caller's tally (`Executor.run`) that throws must not turn the call's outcome into its defect.
              try {
                onEnded(counter.steps, counter.hedges ?? 0, counter.hedgeWon ?? false)
              } catch {
                // Nothing told.
              }
            })
          )
        }
        return running(body)
      })

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
        const state: RetryState = { attemptNo: 1, stepper: undefined, reached: false, answered: undefined }
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
      return (
        step.rateLimit === undefined &&
        step.slot === undefined &&
        (step.noSlot === true || slotLimit(step.name, step.maxConcurrency) === undefined)
      )
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
      return running(plan.totalTimeout === undefined ? body : tracked(body, plan.totalTimeout))
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
      isClosing,
      series: seriesOf,
      slotLimit,
      slot,
      claimSlot,
      pinSlot
    } satisfies Engine
  })
