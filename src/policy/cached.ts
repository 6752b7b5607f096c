/**
 * A call's answer through its cache (`Plan.cache`): the cache guard's lookup, or the caller's wait
 * in a cache not of this library's bounded on the deadline lanes, and the answer it gives as the
 * call's (`source`, the step it came from).
 *
 * @internal
 */
import { Cause, Duration, Effect, Exit } from "effect"
import { type AiError, TimeoutError } from "../AiError.js"
import * as Input from "../Input.js"
import type { Series } from "../stats/series.js"
import { userEffect } from "./callback.js"
import type * as Deadline from "./deadline.js"
import { cutByShutdown, notAnAiError } from "./failure.js"
import { type Answer, type CacheGuard, type Origin, type Plan, selfBounded, type Step } from "./plan.js"
import type { Counter } from "./step.js"

/**
 * How long past a call's total deadline its caller waits in a cache not of this library's, for
 * the stale answer of a cache that applies the deadline (`bound`) itself.
 *
 * @internal
 */
export const USER_CACHE_GRACE = Duration.seconds(1)

type CacheAnswer<A> = Effect.Success<ReturnType<CacheGuard<A>["getOrCompute"]>>

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
 * The cache stage of the engine's calls, built once per engine: `cached(plan, cache, body, counter)`
 * answers `body` (the call's fallback or hedge) through `cache`.
 *
 * @internal
 */
export const makeCached = (
  lanes: Deadline.Lanes,
  tracked: <A, E>(
    effect: Effect.Effect<A, E>,
    timeout?: Duration.Duration | undefined
  ) => Effect.Effect<A, E | AiError>,
  seriesOf: (step: Step<unknown>) => Series
) => {
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

  return <T, A>(
    plan: Plan<T, A>,
    cache: NonNullable<Plan<T, A>["cache"]>,
    body: Effect.Effect<Answer<T, A>, AiError>,
    counter: Counter
  ): Effect.Effect<Answer<T, A>, AiError> => {
    const total = plan.totalTimeout
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
    return Effect.map(
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
}
