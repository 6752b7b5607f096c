/**
 * The steps of a lookup both response-cache backends share: how `getOrCompute` stores an
 * answer (`storeWith`), answers a failure from the stale entry (`answerOrStale`) and hands an
 * answer over (`computed`), the lookup counters, and a span for traced callers only.
 *
 * @internal
 */
import { Effect, type Metric, type Scope } from "effect"
import type { ModelError } from "../AiError.js"
import type * as Input from "../Input.js"
import * as Metrics from "../Metrics.js"
import type { GenerateResponse, StreamPart } from "../Model.js"
import { userEffect } from "../policy/callback.js"
import { isTraced } from "../policy/span.js"
import type { Computed, GetOrComputeOptions, Origin } from "../ResponseCache.js"
import * as Counters from "../stats/counters.js"
import * as Checks from "./checks.js"
import type { Cached, Stored } from "./table.js"

/** @internal */
export type Source = "hit" | "miss" | "stale" | "shared"

/**
 * The lookup counters of one cache, by outcome.
 *
 * @internal
 */
export const lookupCounters = (
  cache: string
): Effect.Effect<Readonly<Record<Source, Counters.Counter>>, never, Scope.Scope> => {
  const counter = (outcome: Source) =>
    Counters.scoped(Metrics.cacheLookups as Metric.Metric<number, unknown>, { cache, outcome })
  return Effect.all({ hit: counter("hit"), miss: counter("miss"), stale: counter("stale"), shared: counter("shared") })
}

/**
 * Counts `n` lookups on `counter`.
 *
 * @internal
 */
export const bump = (counter: Counters.Counter, n: number): Effect.Effect<void> => Effect.sync(() => counter.add(n))

/**
 * `effect` within a span named `name` when the caller is traced; as is otherwise (a span
 * costs several times a cache hit, so untraced callers do not pay for one).
 *
 * @internal
 */
export const traced = <A, E, R>(name: string, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) => (isTraced(fiber) ? Effect.withSpan(effect, name) : effect))

/**
 * An answer as `getOrCompute` hands it over: `origin` only when the entry has one.
 *
 * @internal
 */
export const computed = (
  stored: Stored,
  source: Source
): { readonly value: GenerateResponse; readonly source: Source; readonly origin?: Origin } => {
  const cached = stored.value as Extract<Cached, { readonly _tag: "Response" }>
  return cached.origin === undefined
    ? { value: cached.response, source }
    : { value: cached.response, source, origin: cached.origin }
}

/**
 * An answer to keep, with who produced it when that is not the request its key names.
 *
 * @internal
 */
export const responseOf = (response: GenerateResponse, origin: Origin | undefined): Cached =>
  origin === undefined ? { _tag: "Response", response } : { _tag: "Response", response, origin }

/**
 * Whether an answer may be kept: not one that finished in error (`finishReason: "error"`,
 * such as Gemini's malformed function call), which the next call may well not repeat.
 *
 * @internal
 */
export const keepable = (finishReason: GenerateResponse["finishReason"]): boolean => finishReason !== "error"

/**
 * Whether the parts of a stream, already checked to be parts, may be kept: a completed stream
 * (exactly one `Finish`, at the end) that did not finish in error ({@link keepable}).
 *
 * @internal
 */
export const keepableParts = (parts: ReadonlyArray<StreamPart>): boolean => {
  const last = parts.length - 1
  const finish = parts[last]
  return (
    finish !== undefined &&
    finish._tag === "Finish" &&
    parts.findIndex((part) => part._tag === "Finish") === last &&
    keepable(finish.finishReason)
  )
}

/**
 * How a cache says it did not store what a computation or a stream of the caller's own produced
 * (`what`): counted in `orchestra_cache_errors_total` (`errors`), and a warning naming the cache
 * and the field.
 *
 * @internal
 */
export const notStored =
  (name: string, errors: Counters.Counter, what: "answer" | "stream parts" = "answer") =>
  (issue: Input.Issue): Effect.Effect<void> =>
    Effect.andThen(
      Effect.sync(() => errors.add(1)),
      Effect.logWarning(`ResponseCache ${name}: ${what} not stored: ${issue.path} ${issue.message}`)
    )

/**
 * How `getOrCompute` stores an answer its computation produced: with who produced it (the
 * caller's `originOf`), kept if it may be ({@link keepable}) and the caller's `keep` does not
 * refuse it. A `keep` or `originOf` that throws, or answers what it may not (`keep: () => 0`
 * meant "do not keep"; an origin that is not one cannot be stored), fails the computation with
 * an `InvalidRequest` naming it (`Checks.threw`, `Checks.originRefusal`, `Checks.keepRefusal`),
 * as a step's `prepare` that throws does; it is not answered stale.
 *
 * What is not an answer (a caller's own compute answering `undefined`: its types say it may not,
 * a cast or plain JavaScript does) reaches the flight's callers as it is, as an uncached call
 * would have had it: a cache should not fail what ran without it. It is never kept, `keep` and
 * `originOf` (which take an answer) are not called, and `unstored` says it ({@link notStored}).
 *
 * @internal
 */
export const storeWith = (
  value: GenerateResponse,
  options: Pick<GetOrComputeOptions<never>, "originOf" | "keep">,
  store: (origin: Origin | undefined, keep: boolean) => Effect.Effect<Stored>,
  unstored: (issue: Input.Issue) => Effect.Effect<void>
): Effect.Effect<Stored, ModelError> => {
  const issue = Checks.notAnAnswer("answer", value)
  if (issue !== undefined) return Effect.andThen(unstored(issue), store(undefined, false))
  let origin: unknown
  let keep: unknown
  try {
    origin = options.originOf?.(value)
    const refused = Checks.originRefusal(origin)
    if (refused !== undefined) return Effect.fail(refused)
  } catch (thrown) {
    return Effect.fail(Checks.threw("originOf", thrown))
  }
  if (keepable(value.finishReason)) {
    try {
      keep = options.keep?.(value)
    } catch (thrown) {
      return Effect.fail(Checks.threw("keep", thrown))
    }
    const refused = Checks.keepRefusal(keep)
    if (refused !== undefined) return Effect.fail(refused)
  } else keep = false
  return store(origin as Origin | undefined, keep !== false)
}

/**
 * How both backends end a `getOrCompute` that did not hit at once: `wait` (the lookups, the
 * computation the caller runs or joins) under the caller's `bound`, its answer counted by
 * source; a failure answered from the stale entry (`staleOf`, read once `wait` has failed)
 * with `allowStale` while that entry is still within its grace, else counted as `failedAs`
 * and passed on.
 *
 * @internal
 */
export const answerOrStale = <E>(
  wait: Effect.Effect<Computed, E | ModelError>,
  options: GetOrComputeOptions<E>,
  counters: Readonly<Record<Source, Counters.Counter>>,
  staleOf: () => Stored | undefined,
  failedAs: () => Source
): Effect.Effect<Computed, E | ModelError> =>
  Effect.matchEffect(options.bound === undefined ? wait : userEffect("bound", () => options.bound!(wait)), {
    onSuccess: (found) => Effect.as(bump(counters[found.source], 1), found),
    onFailure: (error) => {
      const stale = staleOf()
      const failed = Effect.andThen(bump(counters[failedAs()], 1), Effect.fail(error))
      if (
        options.allowStale !== true ||
        stale === undefined ||
        stale.value._tag !== "Response" ||
        Checks.isRefusal(error)
      ) {
        return failed
      }
      // The entry was within its grace when the lookup found it; a computation (or a bound) that
      // failed after the grace ended must not answer with it.
      return Effect.clockWith((clock) =>
        clock.currentTimeMillisUnsafe() < stale.staleUntil
          ? Effect.as(bump(counters.stale, 1), computed(stale, "stale"))
          : failed
      )
    }
  })
