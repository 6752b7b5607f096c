/**
 * One step of a pipeline. A step without policies runs its effect as it is. A step with
 * policies (a deadline, retries, a fallback, a breaker or rate-limit key, a stats name)
 * runs through the executor's one policy pipeline: the plan's first step is the step's
 * own effect (its deadline, `Policy.schedule` retries, breaker and rate limit), the second
 * its fallback; the whole is under `totalTimeout`. Its calls are counted in `Stats` under
 * its stats name, domain `"pipeline"`.
 *
 * The executor's pipeline speaks `AiError`: a step's own typed error travels through it as
 * an `Unknown` `ModelError` (never retried, falls back, counts on a breaker) and a defect
 * as an error that never falls back; both come out again as the step's original cause.
 *
 * @internal
 */
import { Cause, Duration, Effect, Exit, Fiber } from "effect"
import { userEffect } from "../policy/callback.js"
import {
  type AiError,
  type CircuitOpenError,
  isAiError,
  ModelError,
  StreamInterruptedError,
  type TimeoutError
} from "../AiError.js"
import type { Service as ExecutorService, Step } from "../Executor.js"
import * as Input from "../Input.js"
import { pipelineDomain } from "../Metrics.js"
import type { StepOutcome } from "../Pipeline.js"
import type { BreakerGuard, LimitGuard } from "../policy/plan.js"
import type { Context, Failure, StepDef } from "./definition.js"
import { monotonicMillis } from "../stats/clock.js"

type Outcome = StepOutcome<unknown, unknown>

/**
 * Runs a step; never fails (an interruption of the caller still interrupts). `startedAt` is the
 * wall clock's date of its start, `since` the monotonic clock's (`stats/clock.ts`).
 */
export type Runner = (def: StepDef, context: Context, startedAt: number, since: number) => Effect.Effect<Outcome>

/** The domain under which governed steps are counted in `Stats`. */
export const statsDomain = pipelineDomain

/**
 * The first line of what a cause says.
 *
 * @internal
 */
export const messageOf = (cause: Cause.Cause<unknown>): string => {
  // What a step failed with is the user's: an object without a prototype (`String` throws on it)
  // or a `message` getter that throws made the step's fiber die, and the run wait for it for ever.
  try {
    const failure = Cause.findErrorOption(cause)
    if (failure._tag === "Some") return cut(shown(failure.value))
    if (Cause.hasInterruptsOnly(cause)) return "interrupted"
    return cut(Cause.pretty(cause).split("\n")[0] ?? "defect")
  } catch {
    return "defect (it cannot be shown)"
  }
}

/** The longest message a step's outcome keeps of what it failed with (a record, a log line). */
const maxMessage = 1_000

const cut = (text: string): string =>
  text.length <= maxMessage ? text : `${Input.wholePrefix(text, maxMessage)}… (${text.length} characters)`

const shown = (error: unknown): string => {
  try {
    if (typeof error === "object" && error !== null && "message" in error && typeof error.message === "string") {
      return error.message
    }
    return String(error)
  } catch {
    return Object.prototype.toString.call(error)
  }
}

/**
 * What a step failed with, for a one-line summary: its message, bounded as {@link Input.shown} shows a
 * value (past 80 characters, its first 80, an ellipsis and its length); never a throw.
 *
 * @internal
 */
export const briefOf = (error: unknown): string => Input.thrownMessage(shown(error))

/**
 * A step's requirements are the run's: its fiber (and the executor's attempt fibers, which
 * start on the caller's fiber) carry the run's services, span and clock.
 */
const inherit = <A, E>(effect: Effect.Effect<A, E, unknown>): Effect.Effect<A, E> => effect as Effect.Effect<A, E>

const timing = (startedAt: number, since: number) =>
  Effect.clockWith((clock) =>
    Effect.succeed({
      startedAt,
      endedAt: clock.currentTimeMillisUnsafe(),
      durationMs: monotonicMillis(clock) - since
    })
  )

/**
 * The exit of a step's (or its fallback's) effect, run on a fiber of its own. Effect's run loop ends a
 * fiber at once when handed something that is not an Effect deep inside it (a `flatMap` returning `42`),
 * skipping every handler on its stack: on the executor's attempt fiber, the step's own handling was
 * skipped, and the defect fell back (as a timeout of 0 ms) or came out as the executor's provider error.
 * Interrupted (a deadline), it waits for the effect to stop, as it did on the attempt's fiber.
 */
const isolated = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<Exit.Exit<A, E>> =>
  Effect.flatMap(Effect.forkChild(effect, { startImmediately: true }), (fiber) =>
    Effect.onInterrupt(Fiber.await(fiber), () => Fiber.interrupt(fiber))
  )

const errorOf = (cause: Cause.Cause<unknown>): unknown => {
  const found = Cause.findErrorOption(cause)
  return found._tag === "Some" ? found.value : undefined
}

const direct = Effect.fnUntraced(function* (def: StepDef, context: Context, startedAt: number, since: number) {
  const exit = yield* Effect.exit(inherit(userEffect(`step "${def.name}": run`, () => def.run(context))))
  if (Exit.isSuccess(exit)) {
    return {
      status: "succeeded",
      step: def.name,
      output: exit.value,
      attempts: 1,
      ...(yield* timing(startedAt, since))
    } satisfies Outcome
  }
  return {
    status: "failed",
    step: def.name,
    error: errorOf(exit.cause),
    cause: exit.cause,
    message: messageOf(exit.cause),
    attempts: 1,
    ...(yield* timing(startedAt, since))
  } satisfies Outcome
})

/** One options object, so the executor's check of it is cached. */
const executorRetry = { retry: true } as const

type Primary =
  | { readonly _tag: "NotStarted" }
  | { readonly _tag: "Running" }
  | { readonly _tag: "Done" }
  | { readonly _tag: "Failed"; readonly error: unknown }

const governed = Effect.fnUntraced(function* (
  def: StepDef,
  context: Context,
  startedAt: number,
  since: number,
  executor: ExecutorService
) {
  // `{ retry: true }` only resolves to the executor's own, already checked, policy: it cannot fail.
  const retry = def.retry === "executor" ? (yield* Effect.orDie(executor.resolve(executorRetry))).retry : def.retry
  let attempts = 0
  let primary: Primary = { _tag: "NotStarted" }
  let fellBack: Failure | undefined
  // The fallback's own effect ended (answered or failed), rather than being cut by `totalTimeout`.
  let fallbackEnded = false
  // The step's own failures, kept as they were while their stand-ins travel the pipeline.
  const originals = new Map<AiError, Cause.Cause<unknown>>()
  const stepName = def.stats ?? def.name

  const settle = (effect: Effect.Effect<unknown, unknown, unknown>, own: boolean) =>
    Effect.flatMap(isolated(inherit(effect)), (exit): Effect.Effect<unknown, AiError> => {
      if (!own) fallbackEnded = true
      if (Exit.isSuccess(exit)) {
        if (own) primary = { _tag: "Done" }
        return Effect.succeed(exit.value)
      }
      const found = Cause.findErrorOption(exit.cause)
      if (own) primary = { _tag: "Failed", error: found._tag === "Some" ? found.value : undefined }
      if (found._tag === "Some" && isAiError(found.value)) return Effect.fail(found.value)
      const standIn: AiError =
        found._tag === "Some"
          ? new ModelError({ reason: "Unknown", message: messageOf(exit.cause), provider: stepName })
          : new StreamInterruptedError({ partialText: "", reason: "Defect", detail: messageOf(exit.cause) })
      originals.set(standIn, exit.cause)
      return Effect.fail(standIn)
    })

  const refusedBy = <E extends AiError>(effect: Effect.Effect<void, E>) =>
    Effect.tapError(effect, (error) =>
      Effect.sync(() => {
        primary = { _tag: "Failed", error }
      })
    )
  const breaker: BreakerGuard | undefined =
    def.breaker === undefined || executor.guards.breaker === undefined
      ? undefined
      : keyedBreaker(executor.guards.breaker, def.breaker, (error) => {
          primary = { _tag: "Failed", error }
        })
  const rateLimit: LimitGuard | undefined =
    def.rateLimit === undefined || executor.guards.rateLimit === undefined
      ? undefined
      : {
          acquire: (_key, cost) => refusedBy(executor.guards.rateLimit!.acquire(def.rateLimit!, cost))
        }

  const primaryFailure = (): Failure =>
    primary._tag === "Failed"
      ? { _tag: "Failed", error: primary.error }
      : { _tag: "TimedOut", timeout: def.timeout ?? Duration.zero }

  const steps: Array<Step<"own" | "fallback">> = [
    { target: "own", name: stepName, domain: statsDomain, timeout: def.timeout, retry, breaker, rateLimit }
  ]
  const fallback = def.fallback
  if (fallback !== undefined) {
    steps.push({ target: "fallback", name: stepName, domain: statsDomain, timeout: undefined, retry: undefined })
  }

  const call = (target: "own" | "fallback"): Effect.Effect<unknown, AiError> => {
    if (target === "own") {
      return Effect.suspend(() => {
        attempts++
        primary = { _tag: "Running" }
        return settle(
          userEffect(`step "${def.name}": run`, () => def.run(context)),
          true
        )
      })
    }
    return Effect.suspend(() => {
      const failure = primaryFailure()
      fellBack = failure
      if (fallback!._tag === "Value") return Effect.succeed(fallback!.value)
      const run = fallback!.run
      return settle(
        userEffect(`step "${def.name}": fallback`, () => run({ ...context, failure })),
        false
      )
    })
  }

  const exit = yield* Effect.exit(
    executor.run(
      {
        steps: steps as [Step<"own" | "fallback">, ...Array<Step<"own" | "fallback">>],
        totalTimeout: def.totalTimeout
      },
      call
    )
  )
  const times = yield* timing(startedAt, since)
  if (Exit.isSuccess(exit)) {
    const viaFallback = exit.value.step.target === "fallback" && fellBack !== undefined
    return {
      status: "succeeded",
      step: def.name,
      output: exit.value.value,
      attempts,
      ...(viaFallback ? { fallback: { kind: fallback!._tag === "Value" ? "value" : "step", failure: fellBack! } } : {}),
      ...times
    } satisfies Outcome
  }
  const found = Cause.findErrorOption(exit.cause)
  if (found._tag === "None") {
    return {
      status: "failed",
      step: def.name,
      cause: exit.cause,
      message: messageOf(exit.cause),
      attempts,
      ...times
    } satisfies Outcome
  }
  let error: AiError = found.value
  if (error._tag === "FallbackExhaustedError") error = error.last
  const original = originals.get(error)
  const cause: Cause.Cause<unknown> = original ?? Cause.fail(error)
  const prefix = fellBack === undefined ? "" : "fallback failed: "
  // A deadline with no fallback, or the step's `totalTimeout` cutting its fallback: the step timed out (the
  // fallback did not fail).
  if (original === undefined && error._tag === "TimeoutError" && (fellBack === undefined || !fallbackEnded)) {
    return {
      status: "timedOut",
      step: def.name,
      timeout: (error as TimeoutError).timeout,
      attempts,
      ...times
    } satisfies Outcome
  }
  return {
    status: "failed",
    step: def.name,
    error: original === undefined ? error : errorOf(original),
    cause,
    message: `${prefix}${messageOf(cause)}`,
    attempts,
    ...(fellBack === undefined ? {} : { primary: fellBack }),
    ...times
  } satisfies Outcome
})

/**
 * A breaker guard that keeps every step under one key, and reports refusals.
 *
 * @internal
 */
export const keyedBreaker = (
  guard: BreakerGuard,
  key: string,
  onRefused?: (error: CircuitOpenError) => void
): BreakerGuard => ({
  execute: (_name, effect) =>
    onRefused === undefined
      ? guard.execute(key, effect)
      : Effect.tapError(guard.execute(key, effect), (error) =>
          error._tag === "CircuitOpenError" ? Effect.sync(() => onRefused(error as CircuitOpenError)) : Effect.void
        ),
  admit: (_name) => guard.admit(key)
})

/**
 * The runner of a pipeline run: the executor is needed only by governed steps.
 *
 * @internal
 */
export const makeRunner =
  (executor: ExecutorService | undefined): Runner =>
  (def, context, startedAt, since) => {
    const outcome: Effect.Effect<Outcome> =
      def.governed && executor !== undefined
        ? governed(def, context, startedAt, since, executor)
        : direct(def, context, startedAt, since)
    return Effect.withSpan(outcome, "Pipeline.step", { attributes: { "pipeline.step": def.name } })
  }
