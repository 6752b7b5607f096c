/**
 * One model call made safe: validation, deadlines, retries on an exponential schedule, the
 * shared breaker, rate limit and cache of its provider, metrics, and a graceful shutdown.
 * Every other component (domains, fallbacks, batches, pipelines, agents, the facade)
 * runs its calls through the executor's pipeline (`run`, documented in `Policy.ts`).
 *
 * @since 0.1.0
 */
import { Cause, Context, Duration, Effect, Exit, type Fiber, Layer, Option, Result, type Stream } from "effect"
import { type AiError, invalidRequest, ModelError } from "./AiError.js"
import { Breakers } from "./CircuitBreaker.js"
import * as Input from "./Input.js"
import {
  type EmbedRequest,
  type EmbedResponse,
  estimateInputTokens,
  type GenerateRequest,
  type GenerateResponse,
  ModelProvider,
  type RequestLimits,
  requestLimits,
  type Service as ProviderService,
  type StreamPart,
  checkGenerate,
  validateEmbed,
  validateGenerate
} from "./Model.js"
import { decodeRetry, defaultRetry, type RetryPolicy, type RetryPolicyInput } from "./Policy.js"
import { RateLimits } from "./RateLimit.js"
import { ResponseCache } from "./ResponseCache.js"
import * as Engine from "./policy/engine.js"
import type { Sink } from "./policy/fused.js"
import type * as CallPlan from "./policy/plan.js"
import { forEachPool, forEachStarted } from "./policy/pool.js"
import { isTraced, traced } from "./policy/span.js"
import * as StreamEngine from "./policy/stream.js"
import type * as StreamPlans from "./policy/stream-plan.js"
import { type ExecutionStats, type Filter, layer as statsLayer, Stats } from "./Stats.js"

/**
 * Called before each retry's wait, for progress reporting.
 *
 * @since 0.1.0
 * @category models
 */
export interface RetryInfo {
  readonly provider: string
  readonly domain?: string | undefined
  /** The attempt that failed (1 for the first). */
  readonly attempt: number
  readonly error: AiError
  readonly delay: Duration.Duration
}

/**
 * Options of one call. Every value is checked: a bad one fails the call with an
 * `InvalidRequest` naming it.
 *
 * @since 0.1.0
 * @category models
 */
export interface ExecuteOptions {
  /** Deadline of each attempt (default: the executor's, 30 s). `"none"` disables it. */
  readonly timeout?: Duration.Input | "none" | undefined
  /** Deadline of the whole call, retries and waits included. Default: none. */
  readonly totalTimeout?: Duration.Input | undefined
  /** `true` for the executor's policy, a policy (or its partial input), or `false` (the default for `execute`). */
  readonly retry?: boolean | RetryPolicy | RetryPolicyInput | undefined
  /** Domain dimension of the metrics. */
  readonly domain?: string | undefined
  /** Call this provider instead of the executor's own. */
  readonly provider?: ProviderService | undefined
  /** Use the response cache when the executor has one (default true). */
  readonly cache?: boolean | undefined
  /** When the call fails, answer from an expired cache entry within its grace (default false). */
  readonly allowStale?: boolean | undefined
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
 * The pipeline's own types, for modules that build plans (Router, HttpAgent, Pipeline).
 *
 * @since 0.2.0
 * @category models
 */
export type Step<T> = CallPlan.Step<T>

/**
 * @since 0.2.0
 * @category models
 */
export type Plan<T, A> = CallPlan.Plan<T, A>

/**
 * @since 0.2.0
 * @category models
 */
export type Answer<T, A> = CallPlan.Answer<T, A>

/**
 * @since 0.2.0
 * @category models
 */
export type StreamPlan = StreamPlans.StreamPlan

/**
 * @since 0.2.0
 * @category models
 */
export type StreamOptions = StreamPlans.StreamOptions

/**
 * The policies shared by every call of a provider: one breaker, one rate limit and one
 * cache per application, looked up by provider name.
 *
 * @since 0.2.0
 * @category models
 */
export interface Guards {
  readonly breaker?: CallPlan.BreakerGuard | undefined
  readonly rateLimit?: CallPlan.LimitGuard | undefined
  readonly cache?:
    | (CallPlan.CacheGuard<GenerateResponse> & {
        readonly key: (input: { readonly provider: string; readonly request: GenerateRequest }) => string
        readonly getParts?: StreamPlans.StreamCache["getParts"]
        readonly setParts?: StreamPlans.StreamCache["setParts"]
      })
    | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly execute: (request: GenerateRequest, options?: ExecuteOptions) => Effect.Effect<GenerateResponse, AiError>
  /** `execute` with the executor's retry policy unless `options.retry` says otherwise. */
  readonly executeWithRetry: (
    request: GenerateRequest,
    options?: ExecuteOptions
  ) => Effect.Effect<GenerateResponse, AiError>
  /**
   * One outcome per request, in input order; a failure never fails the others. Fails as a
   * whole only when the options themselves are invalid (an `InvalidRequest` naming them).
   */
  readonly executeMany: (
    requests: Iterable<GenerateRequest>,
    options?: ManyOptions
  ) => Effect.Effect<ReadonlyArray<Result.Result<GenerateResponse, AiError>>, ModelError>
  readonly embed: (request: EmbedRequest, options?: ExecuteOptions) => Effect.Effect<EmbedResponse, AiError>
  /**
   * A stream of text deltas and a final `Finish`, through the same pipeline: first-chunk,
   * idle and total deadlines, retries and fallbacks before the first chunk, typed
   * partial-text failures after it, the provider's breaker, rate limit and cache, and the
   * graceful shutdown.
   */
  readonly stream: (request: GenerateRequest, options?: StreamOptions) => Stream.Stream<StreamPart, AiError>
  /** The pipeline, for modules that build their own plans. */
  readonly run: <T, A>(
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
  ) => Effect.Effect<Answer<T, A>, AiError>
  /** The streaming pipeline, for modules that build their own plans. */
  readonly runStream: (plan: StreamPlan, request: GenerateRequest) => Stream.Stream<StreamPart, AiError>
  /** A step on a provider with the executor's defaults and shared guards, for building plans. */
  readonly stepFor: (
    provider: ProviderService,
    options?: {
      readonly domain?: string | undefined
      readonly timeout?: Duration.Duration | "none" | undefined
      readonly retry?: RetryPolicy | false | undefined
      readonly tokens?: number | undefined
    }
  ) => Step<ProviderService>
  /** Checks per-call options, resolving `retry: true` to the executor's policy. */
  readonly resolve: (options: ExecuteOptions) => Effect.Effect<ResolvedOptions, ModelError>
  readonly provider: ProviderService
  readonly guards: Guards
  readonly limits: RequestLimits
  readonly stats: (filter?: Filter) => Effect.Effect<ExecutionStats>
  /** True once the executor's scope has begun to close. */
  readonly isShuttingDown: Effect.Effect<boolean>
  /** Runs an effect as a tracked wait: the shutdown interrupts it with `ShuttingDownError`. */
  readonly tracked: <A, E>(
    effect: Effect.Effect<A, E>,
    timeout?: Duration.Duration | undefined
  ) => Effect.Effect<A, E | AiError>
}

/**
 * Per-call options after their checks.
 *
 * @since 0.2.0
 * @category models
 */
export interface ResolvedOptions {
  readonly timeout: Duration.Duration | undefined
  readonly totalTimeout: Duration.Duration | undefined
  readonly retry: RetryPolicy | undefined
}

/**
 * @since 0.1.0
 * @category services
 */
export class Executor extends Context.Service<Executor, Service>()("effect-orchestra/Executor") {}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Default deadline of an attempt. Default 30 seconds; `"none"` for no default. */
  readonly timeout?: Duration.Input | "none" | undefined
  /** Policy used when a call asks for `retry: true` (and by `executeWithRetry`). */
  readonly retry?: RetryPolicy | RetryPolicyInput | undefined
  /** On close: how long in-flight calls and streams may run before they are interrupted. Default 10 seconds. */
  readonly shutdownDeadline?: Duration.Input | undefined
  /** Bounds on requests. */
  readonly requestLimits?: Partial<RequestLimits> | undefined
  /** Stream deadlines by default (see `StreamOptions`). */
  readonly stream?:
    | {
        readonly firstChunkTimeout?: Duration.Input | "none" | undefined
        readonly idleTimeout?: Duration.Input | "none" | undefined
        readonly totalTimeout?: Duration.Input | "none" | undefined
      }
    | undefined
  /**
   * Shared policies of the providers. Default: the `CircuitBreaker.Breakers`,
   * `RateLimit.RateLimits` and `ResponseCache.ResponseCache` in context, when present.
   */
  readonly guards?: Guards | undefined
}

/**
 * Checks the executor's options (an `OptionError` naming the field).
 *
 * @since 0.2.0
 * @category constructors
 */
export const checkOptions = (options: Options) =>
  Input.all([
    Input.optionalDuration("timeout", options.timeout, Duration.seconds(30)),
    options.retry === undefined ? Result.succeed(defaultRetry) : decodeRetry(options.retry, "retry"),
    Input.duration("shutdownDeadline", options.shutdownDeadline ?? Duration.seconds(10), { allowZero: true }),
    requestLimits(options.requestLimits ?? {}, "requestLimits"),
    Input.optionalDuration("stream.firstChunkTimeout", options.stream?.firstChunkTimeout, Duration.seconds(30)),
    Input.optionalDuration("stream.idleTimeout", options.stream?.idleTimeout, Duration.seconds(30)),
    Input.optionalDuration("stream.totalTimeout", options.stream?.totalTimeout, Duration.minutes(10))
  ])

const tokensOf = (request: GenerateRequest): number => estimateInputTokens(request) + (request.maxTokens ?? 0)

/**
 * Builds an executor over the `ModelProvider` in context. Scoped: closing the scope stops
 * admitting calls, waits up to `shutdownDeadline` for the running calls and streams, then
 * interrupts them (their callers receive `ShuttingDownError`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (options: Options = {}) {
  const [defaultTimeout, basePolicy, shutdownDeadline, limits, firstChunk, idle, total] = yield* Input.orOptionError(
    checkOptions(options)
  )
  const provider = yield* ModelProvider
  const stats = yield* Stats
  // Without explicit guards, the shared ones in context (one breaker, limit and cache per application).
  const guards: Guards = options.guards ?? {
    breaker: Option.getOrUndefined(yield* Effect.serviceOption(Breakers)),
    rateLimit: Option.getOrUndefined(yield* Effect.serviceOption(RateLimits)),
    cache: Option.getOrUndefined(yield* Effect.serviceOption(ResponseCache))
  }
  const engine = yield* Engine.make({ stats, shutdownDeadline })
  const streams = StreamEngine.make({
    engine,
    defaults: { firstChunkTimeout: firstChunk, idleTimeout: idle, totalTimeout: total }
  })

  const resolveCache = new WeakMap<ExecuteOptions, Result.Result<ResolvedOptions, Input.Issue>>()
  const defaults: ResolvedOptions = { timeout: defaultTimeout, totalTimeout: undefined, retry: undefined }

  const resolveSync = (callOptions: ExecuteOptions): Result.Result<ResolvedOptions, Input.Issue> => {
    if (
      callOptions.timeout === undefined &&
      callOptions.retry === undefined &&
      callOptions.totalTimeout === undefined
    ) {
      return Result.succeed(defaults)
    }
    const cached = resolveCache.get(callOptions)
    if (cached !== undefined) return cached
    const retryInput = callOptions.retry
    const resolved = Result.map(
      Input.all([
        Input.optionalDuration("timeout", callOptions.timeout, defaultTimeout),
        callOptions.totalTimeout === undefined
          ? Result.succeed(undefined)
          : Input.duration("totalTimeout", callOptions.totalTimeout),
        retryInput === undefined || retryInput === false
          ? Result.succeed(undefined)
          : retryInput === true
            ? Result.succeed(basePolicy)
            : decodeRetry(retryInput, "retry")
      ]),
      ([timeout, totalTimeout, retry]): ResolvedOptions => ({ timeout, totalTimeout, retry })
    )
    resolveCache.set(callOptions, resolved)
    return resolved
  }

  const resolve = (callOptions: ExecuteOptions) => {
    const resolved = resolveSync(callOptions)
    return Result.isSuccess(resolved)
      ? Effect.succeed(resolved.success)
      : Effect.fail(invalidRequest(resolved.failure.path, resolved.failure.message))
  }

  const stepFor: Service["stepFor"] = (target, stepOptions = {}) => ({
    target,
    name: target.name,
    domain: stepOptions.domain,
    timeout: stepOptions.timeout === "none" ? undefined : (stepOptions.timeout ?? defaultTimeout),
    retry: stepOptions.retry === false ? undefined : stepOptions.retry,
    breaker: guards.breaker,
    rateLimit: guards.rateLimit,
    tokens: stepOptions.tokens,
    maxConcurrency: target.maxConcurrency
  })

  // A refused call is still counted: a request, and a failure with its reason.
  const refuse = (error: ModelError, target: ProviderService, domain: string | undefined): ModelError => {
    const series = stats.series(target.name, domain)
    series.requests++
    series.fail(error.reason)
    return error.provider === undefined ? withProvider(error, target.name) : error
  }
  const refused = (error: ModelError, target: ProviderService, domain: string | undefined) =>
    Effect.suspend(() => Effect.fail(refuse(error, target, domain)))

  const usageOf = (response: GenerateResponse) => response.usage

  const planFor = (
    target: ProviderService,
    request: GenerateRequest,
    callOptions: ExecuteOptions,
    resolved: ResolvedOptions
  ): Plan<ProviderService, GenerateResponse> => {
    const cache = guards.cache
    return {
      steps: [
        {
          ...stepFor(target, { domain: callOptions.domain, tokens: tokensOf(request) }),
          timeout: resolved.timeout,
          retry: resolved.retry
        }
      ],
      totalTimeout: resolved.totalTimeout,
      cache:
        cache === undefined || callOptions.cache === false
          ? undefined
          : {
              guard: cache,
              key: cache.key({ provider: target.name, request }),
              allowStale: callOptions.allowStale ?? false
            },
      onRetry:
        callOptions.onRetry === undefined
          ? undefined
          : (event) =>
              callOptions.onRetry!({
                provider: event.step.name,
                domain: event.step.domain,
                attempt: event.attempt,
                error: event.error,
                delay: event.delay
              }),
      usageOf
    }
  }

  // The plan of a call depends on its request only through the rate limit's token estimate
  // and the cache key: without those, calls with the same options share one plan.
  const plans = new WeakMap<ExecuteOptions, Map<ProviderService, Plan<ProviderService, GenerateResponse>>>()
  const sharedPlan = guards.rateLimit === undefined && guards.cache === undefined
  const planOf = (
    target: ProviderService,
    request: GenerateRequest,
    callOptions: ExecuteOptions,
    resolved: ResolvedOptions
  ): Plan<ProviderService, GenerateResponse> => {
    if (!sharedPlan) return planFor(target, request, callOptions, resolved)
    let byTarget = plans.get(callOptions)
    if (byTarget === undefined) {
      byTarget = new Map()
      plans.set(callOptions, byTarget)
    }
    let plan = byTarget.get(target)
    if (plan === undefined) {
      plan = planFor(target, request, callOptions, resolved)
      byTarget.set(target, plan)
    }
    return plan
  }

  const noOptions: ExecuteOptions = {}

  const executeAttributes = (target: ProviderService, request: GenerateRequest, domain: string | undefined) => ({
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": target.name,
    "gen_ai.request.model": request.model ?? target.defaultModel,
    "orchestra.domain": domain ?? "none"
  })

  const execute = (request: GenerateRequest, callOptions: ExecuteOptions = noOptions) =>
    Effect.withFiber((fiber) => {
      const target = callOptions.provider ?? provider
      const resolved = resolveSync(callOptions)
      if (Result.isFailure(resolved)) {
        return refused(invalidRequest(resolved.failure.path, resolved.failure.message), target, callOptions.domain)
      }
      const error = checkGenerate(request, limits)
      if (error !== undefined) return refused(error, target, callOptions.domain)
      const call = engine.runValueIn(fiber, planOf(target, request, callOptions, resolved.success), generateOf(request))
      // A span only for a traced caller (a span costs more than an instant call).
      return isTraced(fiber)
        ? Effect.withSpan(call, "Executor.execute", {
            attributes: executeAttributes(target, request, callOptions.domain)
          })
        : call
    })

  const withRetry: ExecuteOptions = { retry: true }
  const executeWithRetry = (request: GenerateRequest, callOptions: ExecuteOptions = noOptions) =>
    execute(
      request,
      callOptions.retry !== undefined
        ? callOptions
        : callOptions === noOptions
          ? withRetry
          : { ...callOptions, retry: true }
    )

  const generateOf = (request: GenerateRequest) => (p: ProviderService) => p.generate(request)

  // An item's outcome: its exit as a Result (a defect, which the pipeline does not let
  // through, would still be one item's typed error, never the whole batch's).
  const resultOf = (exit: Exit.Exit<unknown, AiError>): Result.Result<GenerateResponse, AiError> => {
    if (Exit.isSuccess(exit)) return Result.succeed(exit.value as GenerateResponse)
    const error = Cause.findErrorOption(exit.cause)
    return Result.fail(
      error._tag === "Some"
        ? error.value
        : new ModelError({
            reason: "Unknown",
            message: `the call ended without an answer: ${Cause.pretty(exit.cause)}`
          })
    )
  }

  // One request of `executeMany`, started from JavaScript on the pool's fiber (untraced).
  const startMany = (
    fiber: Fiber.Fiber<unknown, unknown>,
    request: GenerateRequest,
    manyOptions: ManyOptions,
    resolved: ResolvedOptions,
    sink: Sink,
    index: number
  ) => {
    const target = manyOptions.provider ?? provider
    const error = checkGenerate(request, limits)
    if (error !== undefined) {
      sink.done(index, Exit.fail(refuse(error, target, manyOptions.domain)))
      return undefined
    }
    return engine.start(fiber, planOf(target, request, manyOptions, resolved), generateOf(request), sink, index)
  }

  const executeMany = (requests: Iterable<GenerateRequest>, manyOptions: ManyOptions = {}) =>
    Effect.withFiber((fiber) => {
      const concurrency = Input.positiveInt("concurrency", manyOptions.concurrency ?? 5)
      if (Result.isFailure(concurrency)) {
        return Effect.fail(invalidRequest(concurrency.failure.path, concurrency.failure.message))
      }
      const resolved = resolveSync(manyOptions)
      if (Result.isFailure(resolved)) {
        return Effect.fail(invalidRequest(resolved.failure.path, resolved.failure.message))
      }
      const items = Array.from(requests)
      if (isTraced(fiber)) {
        return Effect.withSpan(
          forEachPool(items, concurrency.success, (request) =>
            Effect.map(Effect.exit(execute(request, manyOptions)), resultOf)
          ),
          "Executor.executeMany",
          { attributes: { "orchestra.items": items.length, "orchestra.concurrency": concurrency.success } }
        )
      }
      // Untraced: no worker fibers, one fiber per call in flight (policy/fused.ts).
      const options = resolved.success
      return Effect.map(
        forEachStarted(items, concurrency.success, (request, sink, index) =>
          startMany(fiber, request, manyOptions, options, sink, index)
        ),
        (exits) => exits.map(resultOf)
      )
    })

  const embed = (request: EmbedRequest, callOptions: ExecuteOptions = {}) =>
    Effect.suspend(() => {
      const target = callOptions.provider ?? provider
      const resolved = resolveSync(callOptions)
      if (Result.isFailure(resolved)) {
        return refused(invalidRequest(resolved.failure.path, resolved.failure.message), target, callOptions.domain)
      }
      return Effect.matchEffect(validateEmbed(request, limits), {
        onFailure: (error) => refused(error, target, callOptions.domain),
        onSuccess: (valid) => {
          // Embeddings skip the provider slot: a provider batches concurrent embed calls itself
          // (the local model gathers them into one inference), which a slot of one would serialise.
          const step: Step<ProviderService> = {
            ...stepFor(target, { domain: callOptions.domain }),
            timeout: resolved.success.timeout,
            retry: resolved.success.retry,
            maxConcurrency: undefined
          }
          return traced(
            "Executor.embed",
            () => ({
              "gen_ai.operation.name": "embeddings",
              "gen_ai.provider.name": target.name,
              "gen_ai.request.model": valid.model ?? target.defaultModel,
              "orchestra.domain": callOptions.domain ?? "none"
            }),
            engine.runValue({ steps: [step], totalTimeout: resolved.success.totalTimeout }, (p) => p.embed(valid))
          )
        }
      })
    })

  const stream = (request: GenerateRequest, streamOptions: StreamOptions = {}) =>
    streams.stream(request, {
      ...streamOptions,
      provider: streamOptions.provider ?? provider,
      validate: (r) => validateGenerate(r, limits),
      stepFor: (target, domain) => stepFor(target, { domain, tokens: tokensOf(request) }),
      basePolicy,
      cacheStore: guards.cache
    })

  const service = {
    execute,
    executeWithRetry,
    executeMany,
    embed,
    stream,
    run: engine.run,
    runStream: (plan, request) => streams.run(plan, request),
    stepFor,
    resolve,
    provider,
    guards,
    limits,
    stats: (filter?: Filter) => stats.snapshot(filter),
    isShuttingDown: Effect.sync(engine.isClosing),
    tracked: engine.tracked
  } satisfies Service
  startedBy.set(service, engine.start)
  return service
})

/**
 * The engine's `start` of each executor: a plan started from JavaScript on a fiber's context,
 * its exit reported to a sink (`policy/fused.ts`). For batches that start their items
 * without a fiber each.
 *
 * @internal
 */
export const startedBy = new WeakMap<Service, Engine.Engine["start"]>()

const withProvider = (error: ModelError, provider: string): ModelError =>
  new ModelError({ reason: error.reason, message: error.message, field: error.field, provider })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Executor, Input.OptionError, ModelProvider | Stats> =>
  Layer.effect(Executor, make(options))

/**
 * The executor with its own `Stats`, for applications that need nothing else.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerWithStats = (
  options: Options = {}
): Layer.Layer<Executor | Stats, Input.OptionError, ModelProvider> => Layer.provideMerge(layer(options), statsLayer)

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
): Effect.Effect<ReadonlyArray<Result.Result<GenerateResponse, AiError>>, ModelError, Executor> =>
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
