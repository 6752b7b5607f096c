/**
 * Fallback over a plan's steps, on `ExecutionPlan`: each step runs under the retry driver
 * (`step.ts`) and a failure that `shouldFallback` hands the call to the next step; when
 * every step failed so, the call fails with `FallbackExhaustedError`. A single-step plan
 * runs its step alone. The engine's full path (`engine.ts`) runs every plan without hedging
 * here.
 *
 * @internal
 */
import { Context, Effect, ExecutionPlan } from "effect"
import { type AiError, type FailedAttempt, shouldFallback } from "../AiError.js"
import { exhaustedOr } from "./failure.js"
import type { Answer, Plan, Step } from "./plan.js"
import type { Counter, Runner } from "./step.js"

class CurrentStep extends Context.Service<CurrentStep, Step<unknown>>()("effect-orchestra/policy/CurrentStep") {}

/**
 * Builds the engine's fallback: `counter` is the call's (its attempts, and why it was cut, if it was).
 *
 * @internal
 */
export const make = (runner: Runner) => {
  const { runStep, seriesOf } = runner
  return <T, A>(
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
    counter: Counter
  ): Effect.Effect<Answer<T, A>, AiError> =>
    Effect.suspend(() => {
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
        // Each step runs once, in the plan's order: counted, not found by identity (a plan may
        // name one step twice, to try it again, which `indexOf` took for the first).
        index++
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
        Effect.mapError((error: AiError) => exhaustedOr(failed, plan.steps.length, error))
      ) as Effect.Effect<Answer<T, A>, AiError>
    })
}
