/**
 * Starting a run: the pipeline's own refusal, the run's options over its defaults, the
 * `Executor` that steps with policies need (with breakers and rate limits when a step
 * names one), each refusal a `PipelineError` before any step starts; then the scheduler.
 *
 * @internal
 */
import { Effect, Result as R } from "effect"
import { isAiError, isRetryable } from "../AiError.js"
import { Executor } from "../Executor.js"
import * as Input from "../Input.js"
import type { Failure, Pipeline, PipelineError, Result, RunOptions } from "../Pipeline.js"
import type { RateLimits } from "../RateLimit.js"
import * as Internal from "./definition.js"
import * as Errors from "./errors.js"
import { execute } from "./scheduler.js"
import { makeRunner } from "./step.js"

export const isConcurrencyRelated = (failure: Failure<unknown>): boolean =>
  failure._tag === "TimedOut" || (isAiError(failure.error) && isRetryable(failure.error))

const policyKeys = ["timeout", "totalTimeout", "retry", "fallback", "breaker", "rateLimit", "stats"] as const

const noService = (def: Internal.StepDef, index: number, field: string, what: string): PipelineError =>
  Errors.invalidStep(`steps[${index}].${field}`, what, def.name)

// A step takes one request slot per attempt and no tokens: a key with no `requestsPerMinute` of its
// own (nor a default) would limit nothing, silently (a misspelt key). Only the `RateLimits` service
// says what it limits; another guard is trusted. A service of one's own is a method's `this` (a
// class's `this.limits`), and one that throws is said as the step's issue, not a defect of the run.
const requestLimitMissing = (guard: object, key: string): string | undefined => {
  let limits: ReturnType<RateLimits["Service"]["limitsOf"]>
  try {
    const limitsOf = (guard as Partial<RateLimits["Service"]>).limitsOf
    if (typeof limitsOf !== "function") return undefined
    limits = limitsOf.call(guard, key)
  } catch (cause) {
    return `the rate limits' limitsOf(${Input.shown(key)}) threw: ${Input.thrownMessage(cause)}`
  }
  if (limits?.requestsPerMinute !== undefined) return undefined
  return `the rate limits have no requestsPerMinute for ${Input.shown(key)} (nor a default): a step takes one request slot per attempt, so it would run unlimited`
}

// An option given as `undefined` is not given: the pipeline's own default stays. The key is kept
// (as `undefined`), so a misspelt one is still refused by name.
const overDefaults = (defaults: RunOptions, options: Readonly<Record<string, unknown>>): Record<string, unknown> => {
  const merged = Internal.record<unknown>()
  Object.assign(merged, defaults)
  for (const [key, value] of Object.entries(options)) {
    merged[key] = value === undefined ? (defaults as Record<string, unknown>)[key] : value
  }
  return merged
}

// Made once (see `execute` in scheduler.ts).
const runUnknown = Effect.fnUntraced(function* (
  self: Pipeline<unknown, unknown, unknown, unknown>,
  input: unknown,
  options: RunOptions | undefined
) {
  if (self.issue !== undefined) return yield* Effect.fail(self.issue)
  let merged: unknown = self.defaults
  if (options !== undefined) {
    // Read once: what is merged is what was checked.
    const given = Internal.optionsOf(options)
    if (R.isFailure(given)) return yield* Effect.fail(given.failure)
    merged = overDefaults(self.defaults, given.success)
  }
  const settings = Internal.checkRunOptions(
    merged,
    isConcurrencyRelated as (f: Internal.Failure) => boolean,
    Internal.defaultConcurrency
  )
  if (R.isFailure(settings)) return yield* Effect.fail(settings.failure)
  const steps = self.definition.steps
  const first = steps.findIndex((def) => def.governed)
  const found = first === -1 ? undefined : yield* Effect.serviceOption(Executor)
  if (found?._tag === "None") {
    const def = steps[first]!
    const policy = policyKeys.find((key) => def[key] !== undefined) ?? "timeout"
    return yield* Effect.fail(
      noService(def, first, policy, "a step with policies runs through the Executor: provide one (Executor.layer)")
    )
  }
  const executor = found?._tag === "Some" ? found.value : undefined
  for (const [i, def] of steps.entries()) {
    if (def.breaker !== undefined && executor?.guards.breaker === undefined) {
      return yield* Effect.fail(
        noService(def, i, "breaker", "the executor has no breakers (CircuitBreaker.layerMemory)")
      )
    }
    if (def.rateLimit !== undefined) {
      const guard = executor?.guards.rateLimit
      if (guard === undefined) {
        return yield* Effect.fail(
          noService(def, i, "rateLimit", "the executor has no rate limits (RateLimit.layerMemory)")
        )
      }
      const unlimited = requestLimitMissing(guard, def.rateLimit)
      if (unlimited !== undefined) return yield* Effect.fail(noService(def, i, "rateLimit", unlimited))
    }
  }
  return yield* execute(self.definition, input, settings.success, makeRunner(executor))
})

export const run = <I, O, E, R>(
  self: Pipeline<I, O, E, R>,
  input: I,
  options?: RunOptions
): Effect.Effect<Result<O, E>, PipelineError, R> =>
  runUnknown(self as Pipeline<unknown, unknown, unknown, unknown>, input, options) as unknown as Effect.Effect<
    Result<O, E>,
    PipelineError,
    R
  >
