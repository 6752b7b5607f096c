/**
 * One model call made safe: validation, a deadline, retries on an exponential schedule,
 * metrics, and a graceful shutdown. Every other component (batches, fallbacks, hedging,
 * pipelines) is built on `execute`.
 *
 * @since 0.1.0
 */
import { Context, Deferred, Duration, Effect, type Either, Layer, type Stream } from "effect"
import type { Scope } from "effect"
import { type AiError, ModelError, ShuttingDownError } from "./AiError.js"
import * as Calls from "./internal/calls.js"
import * as Streaming from "./Streaming.js"
import type { Limiter } from "./internal/limiter.js"
import * as Metrics from "./Metrics.js"
import {
  type EmbedRequest,
  type EmbedResponse,
  type GenerateRequest,
  type GenerateResponse,
  ModelProvider,
  type Service as ProviderService,
  type StreamPart,
  validateEmbed,
  validateGenerate
} from "./Model.js"
import { defaultRetry, type RetryPolicy, type RetryPolicyInput, retry as makeRetry } from "./Policy.js"
import { type ExecutionStats, type Filter, layer as statsLayer, Stats } from "./Stats.js"

/**
 * Called before each retry's wait, for progress reporting.
 *
 * @since 0.1.0
 * @category models
 */
export interface RetryInfo {
  /** The attempt that failed (1 for the first). */
  readonly attempt: number
  readonly error: AiError
  readonly delay: Duration.Duration
}

/**
 * @since 0.1.0
 * @category models
 */
export interface ExecuteOptions {
  /** Deadline of each attempt (default: the executor's, 30 s). `"none"` disables it. */
  readonly timeout?: Duration.DurationInput | "none" | undefined
  /** `true` for the default policy, a policy (or its partial input), or `false` (default for `execute`). */
  readonly retry?: boolean | RetryPolicy | RetryPolicyInput | undefined
  /** Domain tag for the metrics. */
  readonly domain?: string | undefined
  /** Extra metric tags (e.g. a batch id). Keep their values low-cardinality. */
  readonly tags?: Readonly<Record<string, string>> | undefined
  /** Call this provider instead of the executor's own. */
  readonly provider?: ProviderService | undefined
  readonly onRetry?: ((info: RetryInfo) => Effect.Effect<void>) | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface ManyOptions extends ExecuteOptions {
  /** How many calls run at once (default 5). Only this many fibers are started. */
  readonly concurrency?: number | undefined
}

/**
 * One item of `callMany`: the provider call, and its options (the batch's when absent).
 *
 * @since 0.1.0
 * @category models
 */
export interface CallSpec<A> {
  readonly run: (provider: ProviderService) => Effect.Effect<A, AiError>
  readonly options?: ExecuteOptions | undefined
}

/**
 * Options of `callMany`. The `ExecuteOptions` fields are the defaults of every item.
 *
 * @since 0.1.0
 * @category models
 */
export interface CallManyOptions<A> extends ManyOptions {
  /**
   * A limit shared with other callers: each item holds one permit from before its call
   * starts until its outcome (retries and their waits included). Waiting is FIFO.
   */
  readonly limiter?: Limiter | undefined
  /** Runs in the worker when an item's call has been admitted, before its first attempt. */
  readonly onStart?: ((index: number) => Effect.Effect<void>) | undefined
  /** Runs in the worker once an item has its outcome (metrics already recorded). */
  readonly onOutcome?: ((index: number, outcome: Either.Either<A, AiError>) => Effect.Effect<void>) | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly execute: (request: GenerateRequest, options?: ExecuteOptions) => Effect.Effect<GenerateResponse, AiError>
  /** `execute` with the default retry policy unless `options.retry` says otherwise. */
  readonly executeWithRetry: (
    request: GenerateRequest,
    options?: ExecuteOptions
  ) => Effect.Effect<GenerateResponse, AiError>
  /** One outcome per request, in input order; a failure never fails the others. */
  readonly executeMany: (
    requests: Iterable<GenerateRequest>,
    options?: ManyOptions
  ) => Effect.Effect<ReadonlyArray<Either.Either<GenerateResponse, AiError>>>
  readonly embed: (request: EmbedRequest, options?: ExecuteOptions) => Effect.Effect<EmbedResponse, AiError>
  /**
   * A stream of text deltas and a final `Finish`, through every policy: first-chunk, idle
   * and total deadlines, retries and fallbacks before the first chunk, typed partial-text
   * failures after it (see `Streaming`).
   */
  readonly stream: (request: GenerateRequest, options?: Streaming.StreamOptions) => Stream.Stream<StreamPart, AiError>
  /**
   * The generic path every call takes: admission, deadline, retries and metrics around
   * `f(provider)`. Other modules build on it.
   */
  readonly call: <A>(
    f: (provider: ProviderService) => Effect.Effect<A, AiError>,
    options?: ExecuteOptions
  ) => Effect.Effect<A, AiError>
  /**
   * `call` for many items over a pool of `concurrency` worker fibers: one outcome per item,
   * in input order. Each worker runs its items' provider calls itself (no fiber per call);
   * a deadline interrupts the worker, and a replacement carries on with the item's retry
   * and the next items. `f` may fail (the item's outcome, counted as a failed request
   * without calling the provider), e.g. when the item does not validate. Interrupting the
   * returned effect interrupts the running calls; items not started get no outcome.
   */
  readonly callMany: <I, A>(
    items: Iterable<I>,
    options: CallManyOptions<A>,
    f: (item: I, index: number) => CallSpec<A> | Effect.Effect<CallSpec<A>, AiError>
  ) => Effect.Effect<ReadonlyArray<Either.Either<A, AiError>>>
  readonly provider: ProviderService
  readonly stats: (filter?: Filter) => Effect.Effect<ExecutionStats>
  /** True once the executor's scope has begun to close. */
  readonly isShuttingDown: Effect.Effect<boolean>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Executor extends Context.Tag("effect-orchestra/Executor")<Executor, Service>() {}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Default deadline of an attempt. Default 30 seconds. */
  readonly timeout?: Duration.DurationInput | undefined
  /** Policy used when a call asks for `retry: true` (and by `executeWithRetry`). */
  readonly retry?: RetryPolicy | RetryPolicyInput | undefined
  /** On close: how long in-flight calls may run before they are interrupted. Default 10 seconds. */
  readonly shutdownDeadline?: Duration.DurationInput | undefined
}

const resolveRetry = (
  option: ExecuteOptions["retry"],
  fallback: RetryPolicy | undefined,
  base: RetryPolicy
): RetryPolicy | undefined => {
  if (option === undefined) return fallback
  if (option === false) return undefined
  if (option === true) return base
  return "maxAttempts" in option && Duration.isDuration(option.initialDelay) && Duration.isDuration(option.maxDelay)
    ? (option as RetryPolicy)
    : makeRetry(option as RetryPolicyInput)
}

/**
 * Builds an executor over the `ModelProvider` in context. Scoped: closing the scope stops
 * admitting calls, waits up to `shutdownDeadline` for the running ones, then interrupts them
 * (their callers receive `ShuttingDownError`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service, never, ModelProvider | Stats | Scope.Scope> =>
  Effect.gen(function* () {
    const provider = yield* ModelProvider
    const stats = yield* Stats
    const clock = yield* Effect.clock
    const runner = yield* Calls.make
    const defaultTimeout = Duration.decode(options.timeout ?? Duration.seconds(30))
    const basePolicy =
      options.retry === undefined ? defaultRetry : resolveRetry(options.retry, undefined, defaultRetry)!
    const shutdownDeadline = Duration.decode(options.shutdownDeadline ?? Duration.seconds(10))

    let closing = false
    let active = 0
    const drained = yield* Deferred.make<void>()
    const forced = yield* Deferred.make<void>()

    const shuttingDown = (): ShuttingDownError =>
      new ShuttingDownError({ message: "the executor is shutting down and admits no new calls" })
    const interruptedByShutdown = (): ShuttingDownError =>
      new ShuttingDownError({ message: "interrupted: the executor's shutdown deadline passed" })

    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        closing = true
        if (active > 0) {
          yield* Deferred.await(drained).pipe(Effect.interruptible, Effect.timeoutOption(shutdownDeadline))
        }
        if (active > 0) {
          yield* Deferred.succeed(forced, undefined)
          yield* runner.interruptAll
          yield* Deferred.await(drained).pipe(Effect.interruptible, Effect.timeoutOption(Duration.seconds(5)))
        }
      })
    )

    const begin = (labels: Metrics.Labels): void => {
      active++
      Metrics.requests.unsafeUpdate(1, labels.exact)
      for (const tags of labels.aggregates) {
        Metrics.inFlight.unsafeModify(1, tags)
        const now = Metrics.inFlight.unsafeValue(tags).value
        if (now > Metrics.inFlightPeak.unsafeValue(tags).value) Metrics.inFlightPeak.unsafeUpdate(now, tags)
      }
    }

    const end = (labels: Metrics.Labels): void => {
      for (const tags of labels.aggregates) Metrics.inFlight.unsafeModify(-1, tags)
      active--
      if (active === 0 && closing) Deferred.unsafeDone(drained, Effect.void)
    }

    const engine = Calls.engine({
      provider,
      stats,
      clock,
      runner,
      timeoutOf: (callOptions) =>
        callOptions.timeout === "none"
          ? undefined
          : callOptions.timeout === undefined
            ? defaultTimeout
            : Duration.decode(callOptions.timeout),
      policyOf: (callOptions) => resolveRetry(callOptions.retry, undefined, basePolicy),
      isClosing: () => closing,
      begin,
      end,
      forced,
      shuttingDown,
      interruptedByShutdown
    })
    const call = engine.call
    const callMany = engine.callMany

    const invalid = (error: ModelError, callOptions: ExecuteOptions): Effect.Effect<never, AiError> => {
      const target = callOptions.provider ?? provider
      const labels = stats.labels({ provider: target.name, domain: callOptions.domain, tags: callOptions.tags })
      Metrics.requests.unsafeUpdate(1, labels.exact)
      Metrics.failures.unsafeUpdate(1, labels.withReason(error.reason))
      return Effect.fail(error.provider === undefined ? withProvider(error, target.name) : error)
    }

    const execute = (request: GenerateRequest, callOptions: ExecuteOptions = {}) =>
      Effect.catchAll(validateGenerate(request), (error) => invalid(error, callOptions)).pipe(
        Effect.flatMap((valid) => call((p) => p.generate(valid), callOptions))
      )

    const executeWithRetry = (request: GenerateRequest, callOptions: ExecuteOptions = {}) =>
      execute(request, callOptions.retry === undefined ? { ...callOptions, retry: true } : callOptions)

    const executeMany = (requests: Iterable<GenerateRequest>, manyOptions: ManyOptions = {}) => {
      const target = manyOptions.provider ?? provider
      // Per-item closures are anonymous (returned), see internal/calls.ts on tsx's keepNames.
      const generate =
        (valid: GenerateRequest): CallSpec<GenerateResponse>["run"] =>
        (p) =>
          p.generate(valid)
      const spec = {
        onFailure: (error: ModelError): AiError =>
          error.provider === undefined ? withProvider(error, target.name) : error,
        onSuccess: (valid: GenerateRequest): CallSpec<GenerateResponse> => ({ run: generate(valid) })
      }
      return callMany(requests, manyOptions, (request: GenerateRequest) =>
        Effect.mapBoth(validateGenerate(request), spec)
      )
    }

    const embed = (request: EmbedRequest, callOptions: ExecuteOptions = {}) =>
      Effect.catchAll(validateEmbed(request), (error) => invalid(error, callOptions)).pipe(
        Effect.flatMap((valid) => call((p) => p.embed(valid), callOptions))
      )

    // Streams share the executor's stats, default provider and retry policy, and are
    // refused (ShuttingDownError) once the executor closes.
    const streaming = Streaming.makeWith({
      stats,
      provider,
      options: {
        retry: basePolicy,
        admit: Effect.suspend(() => (closing ? Effect.fail(shuttingDown()) : Effect.void))
      }
    })
    const stream = (request: GenerateRequest, streamOptions?: Streaming.StreamOptions) =>
      streaming.stream(request, streamOptions)

    return {
      execute,
      executeWithRetry,
      executeMany,
      embed,
      stream,
      call,
      callMany,
      provider,
      stats: (filter?: Filter) => stats.snapshot(filter),
      isShuttingDown: Effect.sync(() => closing)
    } satisfies Service
  })

const withProvider = (error: ModelError, provider: string): ModelError =>
  new ModelError({ reason: error.reason, message: error.message, field: error.field, provider })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Executor, never, ModelProvider | Stats> =>
  Layer.scoped(Executor, make(options))

/**
 * The executor with its own `Stats`, for applications that need nothing else.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerWithStats = (options: Options = {}): Layer.Layer<Executor | Stats, never, ModelProvider> =>
  Layer.provideMerge(layer(options), statsLayer)

/**
 * @since 0.1.0
 * @category accessors
 */
export const execute = (
  request: GenerateRequest,
  options?: ExecuteOptions
): Effect.Effect<GenerateResponse, AiError, Executor> =>
  Effect.flatMap(Executor, (executor) => executor.execute(request, options))

/**
 * @since 0.1.0
 * @category accessors
 */
export const executeWithRetry = (
  request: GenerateRequest,
  options?: ExecuteOptions
): Effect.Effect<GenerateResponse, AiError, Executor> =>
  Effect.flatMap(Executor, (executor) => executor.executeWithRetry(request, options))

/**
 * @since 0.1.0
 * @category accessors
 */
export const executeMany = (
  requests: Iterable<GenerateRequest>,
  options?: ManyOptions
): Effect.Effect<ReadonlyArray<Either.Either<GenerateResponse, AiError>>, never, Executor> =>
  Effect.flatMap(Executor, (executor) => executor.executeMany(requests, options))

/**
 * @since 0.1.0
 * @category accessors
 */
export const embed = (
  request: EmbedRequest,
  options?: ExecuteOptions
): Effect.Effect<EmbedResponse, AiError, Executor> =>
  Effect.flatMap(Executor, (executor) => executor.embed(request, options))
