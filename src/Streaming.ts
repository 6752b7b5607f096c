/**
 * Streams of text deltas through every policy: validation, metrics, a deadline for the first
 * chunk, for the gap between chunks and for the whole stream, retries and fallbacks before
 * the first chunk, typed failures (never a silent restart) after it, optional resumption on
 * the next provider, hedging, circuit breakers and a replay cache.
 *
 * The rule: **before** the first chunk reaches the consumer a stream is an ordinary call
 * (retried on the same provider, then handed to the next one, exactly as `Executor` does);
 * **after** it, text the consumer holds is never taken back or sent twice. A failure then
 * ends the stream with a `TimeoutError` (one of our deadlines fired) or a
 * `StreamInterruptedError` (the provider failed), both carrying `partialText`, unless
 * `resume` asks the next provider to continue the text (lossy; see `ResumeOptions`).
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Option, Stream } from "effect"
import type { Duration, Exit, Runtime } from "effect"
import type { AiError } from "./AiError.js"
import type { CircuitBreaker } from "./CircuitBreaker.js"
import * as internal from "./internal/streaming.js"
import {
  type Finish,
  type GenerateRequest,
  ModelProvider,
  type Service as ProviderService,
  type StreamPart
} from "./Model.js"
import type { RetryPolicy, RetryPolicyInput } from "./Policy.js"
import * as ResponseCache from "./ResponseCache.js"
import { Stats, type Service as StatsService } from "./Stats.js"

/**
 * Admission and outcome recording around one attempt (one upstream stream). `admit` runs
 * before the provider is called and may refuse (a `CircuitOpenError` falls back to the next
 * step). The function it returns is called exactly once, when the attempt ends: success
 * (the upstream ended), failure (its error, our timeouts included) or interruption (the
 * consumer left, a hedge rival won). A circuit breaker's `run` maps onto this directly:
 * see {@link guardFromBreaker}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Guard {
  readonly admit: Effect.Effect<(outcome: Exit.Exit<void, AiError>) => Effect.Effect<void>, AiError>
}

/**
 * How one attempt of a step ended, for `onOutcome`.
 *
 * @since 0.1.0
 * @category models
 */
export interface AttemptOutcome {
  readonly provider: string
  /** Index of the step in the fallback order. */
  readonly step: number
  readonly exit: Exit.Exit<void, AiError>
  /** Whether this attempt had delivered its first chunk. */
  readonly started: boolean
}

/**
 * One provider in the fallback order.
 *
 * @since 0.1.0
 * @category models
 */
export interface Step {
  readonly provider: ProviderService
  /** Domain tag for the metrics (default: the call's). */
  readonly domain?: string | undefined
  /** Retries before the first chunk on this step (default: the call's `retry`). */
  readonly retry?: boolean | RetryPolicy | RetryPolicyInput | undefined
  /** Model id sent to this provider (default: the request's). */
  readonly model?: string | undefined
  /** Rewrites the request for this provider (applied after `model`). */
  readonly prepare?: ((request: GenerateRequest) => GenerateRequest) | undefined
  /** A circuit breaker for this provider: admission at start, outcome at the end of the stream. */
  readonly breaker?: CircuitBreaker | undefined
  /** A custom admission/outcome hook (used after `breaker` when both are given). */
  readonly guard?: Guard | undefined
  /** Observes the end of every attempt on this step. */
  readonly onOutcome?: ((outcome: AttemptOutcome) => Effect.Effect<void>) | undefined
}

/**
 * A store for completed streams, replayed as streams on a hit. {@link cacheFrom} adapts
 * the `ResponseCache` service.
 *
 * @since 0.1.0
 * @category models
 */
export interface StreamCache {
  readonly get: (key: string) => Effect.Effect<Option.Option<ReadonlyArray<StreamPart>>>
  readonly set: (key: string, parts: ReadonlyArray<StreamPart>) => Effect.Effect<void>
}

/**
 * Resumption after a mid-stream failure. Lossy by nature: the next provider receives the
 * conversation plus the partial answer as an assistant message and an instruction to
 * continue exactly where it stopped. Its continuation is its own guess (wording, style and
 * facts may differ from what the first provider would have written). If it repeats text
 * already delivered (a restart from the beginning, or the last few words), the repeated
 * prefix is removed before delivery: the longest suffix of the delivered text that begins
 * at a word boundary and is at least `minOverlap` characters long, and that the
 * continuation starts with. A continuation starting with whitespace after delivered
 * whitespace loses that whitespace.
 *
 * @since 0.1.0
 * @category models
 */
export interface ResumeOptions {
  /** Resumptions per stream at most. Default 1. */
  readonly maxResumes?: number | undefined
  /** The user message asking to continue. */
  readonly instruction?: string | undefined
  /** Shortest repeated prefix that is removed. Default 4 characters. */
  readonly minOverlap?: number | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface HedgeOptions {
  /**
   * Start a backup stream on the next step if the first has not delivered its first chunk
   * after this long. Whichever delivers a first chunk first wins; the other is interrupted.
   */
  readonly after: Duration.DurationInput
}

/**
 * Called before each retry's wait.
 *
 * @since 0.1.0
 * @category models
 */
export interface RetryInfo {
  readonly provider: string
  readonly attempt: number
  readonly error: AiError
  readonly delay: Duration.Duration
}

/**
 * @since 0.1.0
 * @category models
 */
export interface StreamOptions {
  /** One provider (shorthand for `steps: [{ provider }]`). Default: the service's provider. */
  readonly provider?: ProviderService | undefined
  /** Providers in fallback order. Takes precedence over `provider`. */
  readonly steps?: ReadonlyArray<Step> | undefined
  /** Domain tag for the metrics. */
  readonly domain?: string | undefined
  /** Extra metric tags (low-cardinality values). */
  readonly tags?: Readonly<Record<string, string>> | undefined
  /** Retries before the first chunk: `true` (default policy), a policy, or `false` (default). */
  readonly retry?: boolean | RetryPolicy | RetryPolicyInput | undefined
  /** Deadline for the first chunk of each attempt. Default 30 seconds. */
  readonly firstChunkTimeout?: Duration.DurationInput | "none" | undefined
  /**
   * Longest wait for the next chunk while the consumer is waiting for it (a slow consumer
   * does not count). Default 30 seconds.
   */
  readonly idleTimeout?: Duration.DurationInput | "none" | undefined
  /** Deadline of the whole stream, retries, fallbacks and consumer time included. Default 10 minutes. */
  readonly totalTimeout?: Duration.DurationInput | "none" | undefined
  /** Continue on the next step after a mid-stream failure (lossy). Default off. */
  readonly resume?: boolean | ResumeOptions | undefined
  readonly hedge?: HedgeOptions | undefined
  /** Replay completed streams. The key defaults to `ResponseCache.key` of the first step's provider and the request. */
  readonly cache?: { readonly store: StreamCache; readonly key?: string | undefined } | undefined
  readonly onRetry?: ((info: RetryInfo) => Effect.Effect<void>) | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly stream: (request: GenerateRequest, options?: StreamOptions) => Stream.Stream<StreamPart, AiError>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Streaming extends Context.Tag("effect-orchestra/Streaming")<Streaming, Service>() {}

/**
 * Defaults of a `Streaming` service; every field can be overridden per call.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly firstChunkTimeout?: Duration.DurationInput | "none" | undefined
  readonly idleTimeout?: Duration.DurationInput | "none" | undefined
  readonly totalTimeout?: Duration.DurationInput | "none" | undefined
  /** Policy behind `retry: true`. Default `Policy.defaultRetry`. */
  readonly retry?: RetryPolicy | RetryPolicyInput | undefined
  /**
   * Checked before each stream starts; a failure refuses it (counted like any failure).
   * An executor passes its shutdown check here.
   */
  readonly admit?: Effect.Effect<void, AiError> | undefined
}

/**
 * Builds the service from its dependencies, synchronously: what an `Executor` calls to
 * delegate its `stream`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeWith = (deps: {
  readonly stats: StatsService
  readonly provider?: ProviderService | undefined
  readonly options?: Options | undefined
}): Service => internal.make(deps)

/**
 * Builds the service over the `ModelProvider` (the default provider) and `Stats` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service, never, ModelProvider | Stats> =>
  Effect.gen(function* () {
    const stats = yield* Stats
    const provider = yield* ModelProvider
    return makeWith({ stats, provider, options })
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Streaming, never, ModelProvider | Stats> =>
  Layer.effect(Streaming, make(options))

/**
 * Streams through the `Streaming` service in context.
 *
 * @example
 * ```ts
 * import { Effect, Stream } from "effect"
 * import * as Streaming from "effect-orchestra/Streaming"
 *
 * const program = Streaming.stream(
 *   { prompt: "Tell me a story" },
 *   { firstChunkTimeout: "5 seconds", idleTimeout: "2 seconds", totalTimeout: "2 minutes", retry: true }
 * ).pipe(
 *   Stream.runForEach((part) =>
 *     part._tag === "TextDelta" ? Effect.sync(() => process.stdout.write(part.text)) : Effect.void
 *   )
 * )
 * ```
 *
 * @since 0.1.0
 * @category accessors
 */
export const stream = (
  request: GenerateRequest,
  options?: StreamOptions
): Stream.Stream<StreamPart, AiError, Streaming> =>
  Stream.unwrap(Effect.map(Streaming, (service) => service.stream(request, options)))

/**
 * A guard from a circuit breaker: admission when the stream starts, the outcome recorded
 * when it ends (a stream failing mid-way counts as a failure of its provider). The breaker's
 * own `isFailure` decides what counts.
 *
 * @since 0.1.0
 * @category constructors
 */
export const guardFromBreaker = (breaker: CircuitBreaker): Guard => internal.guardFromBreaker(breaker)

/**
 * A `StreamCache` over the `ResponseCache` service (its `getStream` / `setStream`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const cacheFrom = (
  cache: ResponseCache.Service,
  options: { readonly ttl?: Duration.DurationInput | undefined; readonly allowStale?: boolean | undefined } = {}
): StreamCache => ({
  get: (key) =>
    Effect.map(
      cache.getStream(key, { allowStale: options.allowStale }),
      Option.map((hit) => hit.value)
    ),
  set: (key, parts) => cache.setStream(key, parts, options.ttl)
})

/**
 * The default cache key of a streamed request: `ResponseCache.key` of the provider and
 * request (streams and answers live in distinct namespaces of the cache).
 *
 * @since 0.1.0
 * @category utils
 */
export const cacheKey = (provider: string, request: GenerateRequest): string => ResponseCache.key({ provider, request })

/**
 * The concatenated text of a stream's deltas.
 *
 * @since 0.1.0
 * @category utils
 */
export const collectText = <E, R>(self: Stream.Stream<StreamPart, E, R>): Effect.Effect<string, E, R> =>
  Stream.runFold(self, "", (text, part) => (part._tag === "TextDelta" ? text + part.text : text))

/**
 * The text and the final `Finish` event of a stream (`undefined` when it ended without one).
 *
 * @since 0.1.0
 * @category utils
 */
export const collect = <E, R>(
  self: Stream.Stream<StreamPart, E, R>
): Effect.Effect<{ readonly text: string; readonly finish: Finish | undefined }, E, R> =>
  Stream.runFold(self, { text: "", finish: undefined as Finish | undefined }, (state, part) =>
    part._tag === "TextDelta"
      ? { text: state.text + part.text, finish: state.finish }
      : { text: state.text, finish: part }
  )

/**
 * An `AsyncIterable` over a stream, for Promise-based callers: `for await` yields the
 * parts; a failure is thrown as the typed error; leaving the loop early (`break`, `return`,
 * a throw) interrupts the stream, which interrupts the provider call.
 *
 * @since 0.1.0
 * @category conversions
 */
export const toAsyncIterable = <A, E, R>(self: Stream.Stream<A, E, R>, runtime: Runtime.Runtime<R>): AsyncIterable<A> =>
  Stream.toAsyncIterableRuntime(self, runtime)
