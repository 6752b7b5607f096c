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
import { Cause, Clock, type Fiber, Deferred, Duration, Effect, Exit, Semaphore, type Scope } from "effect"
import { type AiError, isRetryable, reasonOf, type ShuttingDownError, TimeoutError } from "../AiError.js"
import { userEffect } from "./callback.js"
import type { Service as StatsService } from "../Stats.js"
import * as Input from "../Input.js"
import type { Series } from "../stats/series.js"
import * as Deadline from "./deadline.js"
import * as Fallback from "./fallback.js"
import * as Fused from "./fused.js"
import * as Hedge from "./hedge.js"
import { type Answer, type CacheGuard, CurrentCut, type Origin, type Plan, selfBounded, type Step } from "./plan.js"
import { isTraced } from "./span.js"
import { cutByShutdown, notAnAiError, shuttingDown } from "./failure.js"
import { CallCounter, type Counter, make as makeDriver, type RetryState, stepEnded } from "./step.js"

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
  /** Counts a call (or stream) as running until `leave`, for the drain on shutdown. */
  readonly enter: () => void
  readonly leave: () => void
  readonly isClosing: () => boolean
  readonly series: (step: Step<unknown>) => Series
  /** The limit of the provider slots a step of `name` stating `max` queues for, if any (nothing taken). */
  readonly slotLimit: (name: string, max: number | undefined) => number | undefined
  /** The provider slots of `name`, taken for one use until its `leave` (`undefined`: no limit applies). */
  readonly slot: (name: string, max: number | undefined) => ProviderSlots | undefined
  /**
   * Answers the issue (under `path`) of `max` for `name` while the name has another limit: its
   * executor's provider's, or that of its calls running. Called where providers and plans enter,
   * so that calls running at once never meet two limits for one name.
   */
  readonly claimSlot: (name: string, max: number | undefined, path: string) => Input.Issue | undefined
  /** Takes `max` as the limit of `name` for the engine's life (its executor's own provider). */
  readonly pinSlot: (name: string, max: number | undefined) => void
}

/**
 * The provider slots of one name, shared by the calls and streams that use them at once: kept by
 * the engine while any does (queued or served), dropped by the last `leave`, so that the names of
 * providers built per tenant or per request are not kept for the engine's life.
 *
 * @internal
 */
export class ProviderSlots {
  users = 0
  readonly semaphore: Semaphore.Semaphore
  constructor(
    readonly name: string,
    readonly limit: number,
    private readonly owner: Map<string, ProviderSlots>
  ) {
    this.semaphore = Semaphore.makeUnsafe(limit)
  }

  /** One use of them ended (its permit, if it took one, given back or about to be). */
  leave(): void {
    if (--this.users === 0 && this.owner.get(this.name) === this) this.owner.delete(this.name)
  }
}

/**
 * The issue (under `path`) of `max` given for a provider `name` that has the limit `known`, if they differ.
 *
 * @internal
 */
export const slotLimitIssue = (name: string, known: number, max: number, path: string): Input.Issue | undefined =>
  known === max
    ? undefined
    : {
        path,
        message: `provider "${name}" already has maxConcurrency ${known}, got ${max}: one name is one provider, with one set of slots (give a provider of another limit a name of its own)`
      }

/**
 * @internal
 */
export interface Options {
  readonly stats: StatsService
  readonly shutdownDeadline: Duration.Duration
}

/**
 * How long past a call's total deadline its caller waits in a cache not of this library's, for
 * the stale answer of a cache that applies the deadline (`bound`) itself.
 *
 * @internal
 */
export const USER_CACHE_GRACE = Duration.seconds(1)

type CacheAnswer<A> = Effect.Success<ReturnType<CacheGuard<A>["getOrCompute"]>>

const answerValue = <T, A>(answer: Answer<T, A>): A => answer.value

// Who produced an answer to keep with it in the cache: nobody for the plan's first step, whose
// request the key names; a later step (a fallback, a hedge's backup) by its provider and domain.
const originOf = <T, A>(plan: Plan<T, A>, answer: Answer<T, A> | undefined): Origin | undefined => {
  if (answer === undefined || answer.step === plan.steps[0]) return undefined
  const { name, domain } = answer.step
  return domain === undefined ? { provider: name } : { provider: name, domain }
}

// The step a cached answer came from: the plan's own when it has that step, else (another
// plan sharing the key produced it) one naming its provider and domain, which no call is made on.
const stepOf = <T, A>(plan: Plan<T, A>, origin: Origin | undefined): Step<T> => {
  if (origin === undefined) return plan.steps[0]
  const found = plan.steps.find((step) => step.name === origin.provider && step.domain === origin.domain)
  return found ?? { ...plan.steps[0], name: origin.provider, domain: origin.domain }
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
    // The provider slots of the names in use (`ProviderSlots`), and the limits of names for the engine's life.
    const slots = new Map<string, ProviderSlots>()
    const pinned = new Map<string, number>()
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

    // By provider name, as its breaker, rate limit and metrics are: one provider, one set of slots, one
    // limit. A step that states no limit takes its name's (a plan's copy of the provider), and two limits
    // for one name are refused where they enter (`claimSlot`). A name's slots and limit are kept while its
    // calls use them (or for the engine's life, its executor's provider's): a name taken per tenant or per
    // request is let go with its last call. Without any limit known (most executors), a step stating none
    // costs two size reads.
    const slotLimit = (name: string, stated: number | undefined): number | undefined => {
      const max =
        stated ?? (pinned.size === 0 && slots.size === 0 ? undefined : (pinned.get(name) ?? slots.get(name)?.limit))
      return max === undefined || !Number.isFinite(max) ? undefined : max
    }

    const slot = (name: string, stated: number | undefined): ProviderSlots | undefined => {
      let found = slots.get(name)
      if (found === undefined) {
        const max = slotLimit(name, stated)
        if (max === undefined) return undefined
        found = new ProviderSlots(name, pinned.get(name) ?? max, slots)
        slots.set(name, found)
      }
      found.users++
      return found
    }

    const knownLimit = (name: string): number | undefined => pinned.get(name) ?? slots.get(name)?.limit

    const claimSlot = (name: string, max: number | undefined, path: string): Input.Issue | undefined => {
      if (max === undefined || !Number.isFinite(max)) return undefined
      const known = knownLimit(name)
      return known === undefined ? undefined : slotLimitIssue(name, known, max, path)
    }

    const pinSlot = (name: string, max: number | undefined): void => {
      if (max !== undefined && Number.isFinite(max) && !pinned.has(name)) pinned.set(name, max)
    }

    const seriesOf = (step: Step<unknown>): Series => stats.series(step.statsName ?? step.name, step.domain)

    const tracked = <A, E>(effect: Effect.Effect<A, E>, timeout?: Duration.Duration | undefined) =>
      Effect.flatMap(lanes.run(effect, timeout), (result): Effect.Effect<A, E | AiError> => {
        if (result === "shutdown") return Effect.fail(cutByShutdown())
        if (result === "timeout") {
          return Effect.fail(new TimeoutError({ limit: "total", timeout: timeout ?? Duration.zero }))
        }
        return result
      })

    // A user's cache may wait on its own (a lookup in a store that never answers) before it applies
    // `bound`, or never apply it: the caller's wait in it runs on the lanes, which the shutdown cuts,
    // and ends `USER_CACHE_GRACE` past the total deadline (the grace lets one that applies `bound`
    // answer stale as the deadline passes). This library's caches bound their own lookups.
    const userCache = <A>(
      guard: CacheGuard<A>,
      key: string,
      compute: Effect.Effect<A, AiError>,
      lookupOptions: {
        readonly allowStale: boolean
        readonly bound: (<B>(wait: Effect.Effect<B, AiError>) => Effect.Effect<B, AiError>) | undefined
        readonly originOf: (value: A) => Origin | undefined
        readonly keep: (value: A) => boolean
      },
      total: Duration.Duration | undefined,
      provider: string
    ) =>
      Effect.flatMap(
        lanes.run(
          userEffect("the cache's getOrCompute", () => guard.getOrCompute<AiError>(key, compute, lookupOptions)),
          total === undefined ? undefined : Duration.sum(total, USER_CACHE_GRACE)
        ),
        (result): Effect.Effect<CacheAnswer<A>, AiError> => {
          if (result === "shutdown") return Effect.fail(cutByShutdown())
          if (result === "timeout") return Effect.fail(new TimeoutError({ limit: "total", timeout: total! }))
          if (Exit.isSuccess(result)) {
            const found: unknown = result.value
            return typeof found === "object" && found !== null
              ? result
              : Effect.die(
                  new TypeError(`the cache's getOrCompute must answer { value, source }, got ${Input.shown(found)}`)
                )
          }
          // Its own failure that is no AiError (`Effect.fail("store down")`) becomes one naming it.
          const error = Cause.findErrorOption(result.cause)
          const replaced = error._tag === "None" ? undefined : notAnAiError(error.value, provider, "the cache")
          return replaced === undefined ? result : Effect.fail(replaced)
        }
      )

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
          // The total deadline bounds the caller's wait inside the cache (its lookup, the
          // computation it runs or joins), so that a call it cuts can be answered stale.
          let bounded = false
          const bound =
            total === undefined
              ? undefined
              : <B>(wait: Effect.Effect<B, AiError>) => {
                  bounded = true
                  return tracked(wait, total)
                }
          const inner = body
          let answered: Answer<T, A> | undefined
          const compute = Effect.map(inner, (answer) => {
            answered = answer
            return answer.value
          })
          const guard = cache.guard
          // A guard that left `bound` unused still has its computation under the deadline.
          const computed = bound === undefined ? compute : Effect.suspend(() => (bounded ? compute : bound(compute)))
          const lookupOptions = {
            allowStale: cache.allowStale,
            bound,
            originOf: () => originOf(plan, answered),
            keep: () => answered?.step.cacheable !== false
          }
          body = Effect.map(
            selfBounded.has(guard)
              ? guard.getOrCompute(cache.key, computed, lookupOptions)
              : userCache(guard, cache.key, computed, lookupOptions, total, plan.steps[0].name),
            ({ source, value, origin }): Answer<T, A> => {
              if (answered !== undefined && source === "miss") return answered
              // The steps' failures are counted as theirs; the call's own outcome is this answer.
              if (source === "stale") seriesOf(plan.steps[0]).staleAnswers++
              return {
                value,
                step: stepOf(plan, origin),
                attempts: counter.attempts,
                stepsTried: counter.steps,
                source: source === "stale" ? "stale-cache" : source === "miss" ? "provider" : "cache"
              }
            }
          )
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
