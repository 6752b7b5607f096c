/**
 * Hedging over a plan's steps (`Plan.hedgeAfter`): each step after the first starts
 * `hedgeAfter` after the one before it started, or as soon as that one failed so that
 * `shouldFallback`; the first answer wins and the other steps are interrupted. A failure
 * that does not fall back ends the call; when every step failed, it fails with
 * `FallbackExhaustedError`. Each step runs under the retry driver (`step.ts`); the backups
 * started, won and lost are counted on their steps' metrics.
 *
 * @internal
 */
import { Deferred, Duration, Effect, Exit } from "effect"
import { type AiError, type FailedAttempt, shouldFallback } from "../AiError.js"
import { exhaustedOr } from "./failure.js"
import type { Answer, Plan, Step } from "./plan.js"
import type { Counter, Runner } from "./step.js"

/**
 * Builds the engine's hedging: `counter` is the call's (its attempts, and why it was cut, if it was).
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
      const steps = plan.steps
      const delay = plan.hedgeAfter ?? Duration.zero
      const started = steps.map(() => Deferred.makeUnsafe<void>())
      const failedAt = steps.map(() => Deferred.makeUnsafe<void>())
      const fatal = Deferred.makeUnsafe<never, AiError>()
      // By step, so the exhausted error lists them in the plan's order, not the order they failed in.
      const failures: Array<FailedAttempt | undefined> = steps.map(() => undefined)
      const didStart = steps.map(() => false)
      const racers = steps.map((step, i) => {
        const go = Effect.suspend(() => {
          didStart[i] = true
          if (i > 0) seriesOf(step).hedgesStarted++
          Deferred.doneUnsafe(started[i]!, Exit.void)
          return runStep(step, plan, call, counter).pipe(
            Effect.map((value) => ({ value, index: i })),
            Effect.tapError((error) => {
              failures[i] = { domain: step.domain, provider: step.name, error }
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
      let winner = -1
      return Effect.raceFirst(Effect.raceAll(racers), Deferred.await(fatal)).pipe(
        Effect.map(({ index, value }): Answer<T, A> => {
          winner = index
          const backups = didStart.slice(1).some(Boolean)
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
          exhaustedOr(
            failures.filter((f) => f !== undefined),
            steps.length,
            error
          )
        ),
        // Every backup started is won or lost, whether the call answered, failed or was cut.
        Effect.onExit(() =>
          Effect.sync(() => {
            steps.forEach((step, i) => {
              if (i === 0 || !didStart[i]) return
              if (i === winner) seriesOf(step).hedgesWon++
              else seriesOf(step).hedgesLost++
            })
          })
        )
      )
    })
}
