/**
 * A call's plan as the pipeline reads it: its steps (a target and its policies), the
 * guards the services provide (breaker, rate limit, cache), the whole-call policies, the
 * answer and where it came from, the retry event, and the caller's cut. Plans are built by
 * the executor and the router (`Executor.Plan`) and run by `engine.ts`; `stream.ts` runs
 * streams on the same steps.
 *
 * @internal
 */
import { Context, type Duration, type Effect, type Exit, type Scope } from "effect"
import type { AiError, CircuitOpenError, ModelError } from "../AiError.js"
import type { RetryPolicy } from "../Policy.js"

/**
 * What the pipeline needs of a circuit breaker (the `CircuitBreaker` service provides it).
 *
 * @internal
 */
export interface BreakerGuard {
  readonly execute: <A, E extends AiError>(
    key: string,
    effect: Effect.Effect<A, E>
  ) => Effect.Effect<A, E | CircuitOpenError>
  readonly admit: (key: string) => Effect.Effect<BreakerPermit, CircuitOpenError, Scope.Scope>
}

/**
 * The breakers whose permits' records bound themselves (this library's own: the memory store
 * answers at once, Redis within its timeout), and the caches that bound their lookups and apply
 * the caller's `bound` (this library's own). A record of any other breaker is waited for up to a
 * grace, then left to end in the background (`stream-attempt.ts`); the caller's wait in any
 * other cache runs on the deadline lanes (`engine.ts`).
 *
 * @internal
 */
export const selfBounded = new WeakSet<object>()

/**
 * @internal
 */
export interface BreakerPermit {
  readonly record: (outcome: Exit.Exit<unknown, AiError> | "ignored") => Effect.Effect<void>
}

/**
 * A slot an attempt queues for before it reaches its target, held while the target serves it
 * (a `Semaphore` is one).
 *
 * @internal
 */
export interface Slot {
  readonly withPermit: <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
}

/**
 * What the pipeline needs of a rate limit (the `RateLimit` service provides it).
 *
 * @internal
 */
export interface LimitGuard {
  readonly acquire: (
    key: string,
    cost?: { readonly tokens?: number | undefined; readonly waitUntil?: number | undefined }
  ) => Effect.Effect<void, ModelError>
}

/**
 * What the pipeline needs of a cache (the `ResponseCache` service provides it for answers).
 * `bound` carries the call's total deadline: the guard must apply it to everything the
 * caller waits for, so that with `allowStale` a call the deadline cuts is answered stale.
 * `originOf` names the step that produced an answer when it is not the plan's first (a
 * fallback's): kept with the answer, it is handed back (`origin`) to every call it answers.
 * `keep` false: the answer reaches the callers of its computation but is not kept (its step
 * is not `cacheable`).
 *
 * @internal
 */
export interface CacheGuard<A> {
  readonly getOrCompute: <E>(
    key: string,
    compute: Effect.Effect<A, E | ModelError>,
    options?: {
      readonly allowStale?: boolean | undefined
      readonly bound?: (<B>(wait: Effect.Effect<B, E | ModelError>) => Effect.Effect<B, E | ModelError>) | undefined
      readonly originOf?: ((value: A) => Origin | undefined) | undefined
      readonly keep?: ((value: A) => boolean) | undefined
    }
  ) => Effect.Effect<
    {
      readonly value: A
      readonly source: "hit" | "miss" | "stale" | "shared"
      readonly origin?: Origin | undefined
    },
    E | ModelError
  >
}

/**
 * The step that produced a cached answer, by its provider (`Step.name`) and domain.
 *
 * @internal
 */
export interface Origin {
  readonly provider: string
  readonly domain?: string
}

/**
 * One target of a call (a provider, an agent) with its policies.
 *
 * @internal
 */
export interface Step<T> {
  readonly target: T
  /** Metrics `provider` dimension, breaker and rate-limit key. */
  readonly name: string
  /** The `provider` of its `Stats` series when not `name` (HTTP agents past their series bound: `"(other)"`). */
  readonly statsName?: string | undefined
  readonly domain?: string | undefined
  /** Deadline of each attempt; `undefined`: none. */
  readonly timeout: Duration.Duration | undefined
  /** `undefined`: one attempt. */
  readonly retry: RetryPolicy | undefined
  readonly breaker?: BreakerGuard | undefined
  readonly rateLimit?: LimitGuard | undefined
  /** Estimated tokens of one attempt, for token rate limits. */
  readonly tokens?: number | undefined
  /**
   * Calls the target serves at once; more queue (measured apart). Not stated: the limit its name
   * has, if any (the executor's provider's, or that of its calls running).
   */
  readonly maxConcurrency?: number | undefined
  /**
   * `true`: the step's calls take none of its name's provider slots, whatever its limit (embeddings:
   * a provider batches concurrent embed calls itself, which a slot of one would serialise).
   */
  readonly noSlot?: boolean | undefined
  /**
   * The slot of the step's own its calls queue for instead of `maxConcurrency`'s (an HTTP agent's
   * connection slot), measured apart the same way: queue wait, not service time. `withPermit` is
   * applied as each attempt starts to queue, under its deadline. Streams queue for `maxConcurrency` only.
   */
  readonly slot?: Slot | undefined
  /**
   * `false`: what this step answers is not kept in the cache (a domain with `cache: false`
   * reached as a fallback); it still answers the callers of its call. Default: kept.
   */
  readonly cacheable?: boolean | undefined
  /**
   * What is wrong with an answer of its target, if anything (a provider breaking its contract:
   * `null` for a response). An attempt answering one it names fails with a `Decode` error naming
   * the step, which falls back as any malformed answer does, instead of answering its caller.
   */
  readonly answerIssue?: ((value: unknown) => string | undefined) | undefined
}

/**
 * @internal
 */
export interface RetryEvent<T> {
  readonly step: Step<T>
  /** The attempt that failed (1 for the first). */
  readonly attempt: number
  readonly error: AiError
  readonly delay: Duration.Duration
}

/**
 * A call's steps and whole-call policies.
 *
 * @internal
 */
export interface Plan<T, A> {
  readonly steps: readonly [Step<T>, ...Array<Step<T>>]
  readonly totalTimeout?: Duration.Duration | undefined
  /** Start the next step after this long without an answer (hedging), besides on failure. */
  readonly hedgeAfter?: Duration.Duration | undefined
  /**
   * Told once a call of a plan of several steps ended (answered, failed or cut): the steps it
   * started, how many of them as hedges (on the delay, not after a failure; the others after the
   * first are fallbacks), and whether a hedge answered, as the steps' `orchestra_fallbacks_total`
   * and `orchestra_hedges_total` count them. A batch's own stats read it.
   */
  readonly onEnded?: ((steps: number, hedges: number, hedgeWon: boolean) => void) | undefined
  readonly cache?: { readonly guard: CacheGuard<A>; readonly key: string; readonly allowStale: boolean } | undefined
  readonly onRetry?: ((event: RetryEvent<T>) => Effect.Effect<void>) | undefined
  /** Tokens of an answer, for the token metrics. */
  readonly usageOf?:
    | ((value: A) => { readonly inputTokens: number; readonly outputTokens: number } | undefined)
    | undefined
  /** What the attempts' spans say of the call; set only for a traced caller. */
  readonly telemetry?: Telemetry<T, A> | undefined
}

/**
 * The `gen_ai.*` attributes of a call's attempts (OpenTelemetry's GenAI conventions), read
 * only when an attempt has a span.
 *
 * @internal
 */
export interface Telemetry<T, A> {
  /** `gen_ai.operation.name`: `chat`, `embeddings`. */
  readonly operation: string
  /** `gen_ai.request.model`: the model an attempt on `step` asks for. */
  readonly requestModel: (step: Step<T>) => string | undefined
  /** What an answer tells: `gen_ai.response.model`, `gen_ai.usage.*`, `gen_ai.response.finish_reasons`. */
  readonly response: (value: A) => Record<string, unknown>
}

/**
 * Where an answer came from.
 *
 * @internal
 */
export interface Answer<T, A> {
  readonly value: A
  readonly step: Step<T>
  /** Attempts made in all, retries and every step tried included (0 for a cache hit; a stale answer's failed ones). */
  readonly attempts: number
  /** Steps tried, the answering one included. */
  readonly stepsTried: number
  readonly source: "provider" | "cache" | "stale-cache"
  /** Set when hedging started a backup on its delay (not after a failure): whether a backup answered. */
  readonly hedgeWon?: boolean | undefined
}

/**
 * Why a caller cut its own call short, set just before it interrupts the call (the Promise
 * facade, when an `AbortSignal.timeout` fires): the steps and streams it cut are counted
 * under this error's reason (a `TimeoutError` in `timeouts` too) instead of `Interrupted`.
 *
 * @internal
 */
export interface Cut {
  error: AiError | undefined
  /** The streams running under this cut: each ends at once with the error it is given. */
  stops?: Set<(error: AiError) => void> | undefined
  /** Set by {@link stopStreams}: a stream opened under this cut afterwards fails with it at once. */
  stopped?: AiError | undefined
  /**
   * Set by a race between calls (`executeParallelDomains(..., "first")`) once one has won:
   * the calls it then cuts lost the race, which is no failure of their providers.
   */
  lost?: boolean | undefined
}

/**
 * Ends the streams running under `cut` with `error`, as their total deadline would (their
 * consumers get the failure, their steps count it), and fails with it any stream opened
 * under `cut` later. Without a fiber: the gateway's drain ends its streams this way, where
 * `Stream.interruptWhen` would run every stream through a merge (two fibers, and a
 * hand-over between them for every chunk).
 *
 * @internal
 */
export const stopStreams = (cut: Cut, error: AiError): void => {
  cut.stopped ??= error
  if (cut.stops === undefined) return
  for (const stop of Array.from(cut.stops)) stop(error)
}

/**
 * The {@link Cut} of the calls run in this context, if their caller keeps one.
 *
 * @internal
 */
export const CurrentCut = Context.Reference<Cut | undefined>("effect-orchestra/policy/CurrentCut", {
  defaultValue: () => undefined
})
