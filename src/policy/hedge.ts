/**
 * Hedging over a plan's steps (`Plan.hedgeAfter`): each step after the first starts
 * `hedgeAfter` after the one before it started, or as soon as that one failed so that
 * `shouldFallback`; the first answer wins and the other steps are interrupted. After a failure
 * that does not fall back (`TooLarge` from a smaller backup model) no further step starts, but
 * a step still running may yet answer: a hedge never ends worse than its first step alone
 * would; with none left running the call fails with that error. When every step failed, it
 * fails with `FallbackExhaustedError`. Each step runs under the retry driver (`step.ts`). A step started
 * because the delay passed with the one before still running is a hedge (started, then won
 * or lost on its step's metrics); one started because the one before failed is a fallback. A
 * step cut because the race was decided is no failure of its provider (see `stepEnded`).
 *
 * @internal
 */
import { Deferred, Duration, Effect, Exit } from "effect"
import { type AiError, type FailedAttempt, shouldFallback, TimeoutError } from "../AiError.js"
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
      // Started because the delay passed with the step before still running (not because it failed).
      const hedged = steps.map(() => false)
      // A hedge, or started by the failure of a step that is one of these: the hedge's line.
      const ofHedge = steps.map(() => false)
      // Steps started and not ended yet, and the failure that falls back nowhere, once one has.
      let running = 0
      let halted: AiError | undefined
      const racers = steps.map((step, i) => {
        const go = (hedge: boolean) =>
          Effect.suspend(() => {
            // Nothing starts after a failure that falls back nowhere (not counted: never started).
            if (halted !== undefined) return Effect.fail(halted)
            // Nor once the call is cut (its total deadline passed, its caller cut it): a timer waking
            // in the instant the deadline passed would call a provider for a caller that is gone.
            // The interruption that ended the call reaches this racer next; its failure, what the
            // call would have failed with, only counts if nothing else ends the race.
            if (counter.cut() !== undefined) {
              return Effect.fail(
                counter.external?.error ??
                  new TimeoutError({ limit: "total", timeout: plan.totalTimeout ?? Duration.zero })
              )
            }
            didStart[i] = true
            running++
            hedged[i] = hedge
            ofHedge[i] = hedge || (i > 0 && ofHedge[i - 1]!)
            if (hedge) seriesOf(step).hedgesStarted++
            else if (i > 0) seriesOf(step).fallbacks++
            Deferred.doneUnsafe(started[i]!, Exit.void)
            return runStep(step, plan, call, counter).pipe(
              Effect.map((value) => {
                running--
                counter.raceOver = true
                return { value, index: i }
              }),
              Effect.tapError((error) => {
                running--
                failures[i] = { domain: step.domain, provider: step.name, error }
                if (!shouldFallback(error)) halted ??= error
                else if (halted === undefined) return Deferred.succeed(failedAt[i]!, undefined)
                // A step still running may yet answer.
                if (running > 0) return Effect.void
                counter.raceOver = true
                return Deferred.fail(fatal, halted)
              })
            )
          })
        if (i === 0) return go(false)
        const wait = Effect.raceFirst(
          Effect.as(Effect.andThen(Deferred.await(started[i - 1]!), Effect.sleep(delay)), true),
          Effect.as(Deferred.await(failedAt[i - 1]!), false)
        )
        return Effect.flatMap(wait, go)
      })
      let winner = -1
      return Effect.raceFirst(Effect.raceAll(racers), Deferred.await(fatal)).pipe(
        Effect.map(({ index, value }): Answer<T, A> => {
          winner = index
          const backups = hedged.some(Boolean)
          return {
            value,
            step: steps[index]!,
            attempts: counter.attempts,
            stepsTried: didStart.filter(Boolean).length,
            source: "provider",
            // A hedge's win when the answering step is a hedge or one that a hedge's failure led
            // to; a fallback of the first step's own failure is none (the metric below counts
            // each hedge by its own outcome).
            hedgeWon: backups ? ofHedge[index] : undefined
          }
        }),
        // `catch`, not `mapError`: when every step failed, the race's cause holds each step's
        // failure, and the call fails once, not once per step.
        Effect.catch((error: AiError) =>
          Effect.fail(
            exhaustedOr(
              failures.filter((f) => f !== undefined),
              steps.length,
              error
            )
          )
        ),
        // Every hedge started is won or lost, whether the call answered, failed or was cut.
        Effect.onExit(() =>
          Effect.sync(() => {
            steps.forEach((step, i) => {
              if (!hedged[i]) return
              counter.hedges = (counter.hedges ?? 0) + 1
              if (i === winner) {
                seriesOf(step).hedgesWon++
                counter.hedgeWon = true
              } else seriesOf(step).hedgesLost++
            })
          })
        )
      )
    })
}
