/**
 * One model call made safe: validation, deadlines, retries on an exponential schedule, the
 * shared breaker, rate limit and cache of its provider, metrics, and a graceful shutdown.
 * Every other component (domains, fallbacks, batches, pipelines, agents, the facade)
 * runs its calls through the executor's pipeline (`run`, documented in `Policy.ts`).
 *
 * @since 0.1.0
 */
import { Context, Duration, Effect, Layer, Option, Result, Stream } from "effect"
import { type AiError, invalidRequest, type ModelError } from "./AiError.js"
import { Breakers } from "./CircuitBreaker.js"
import * as Input from "./Input.js"
import {
  type EmbedRequest,
  type EmbedResponse,
  type GenerateRequest,
  type GenerateResponse,
  ModelProvider,
  type RequestLimits,
  requestLimits,
  type Service as ProviderService,
  type StreamPart
} from "./Model.js"
import { decodeRetry, defaultRetry, type RetryPolicy, type RetryPolicyInput } from "./Policy.js"
import { RateLimits } from "./RateLimit.js"
import { ResponseCache } from "./ResponseCache.js"
import * as Embed from "./executor/embed.js"
import * as Generate from "./executor/generate.js"
import * as Many from "./executor/many.js"
import * as CallOptions from "./executor/options.js"
import * as Plans from "./executor/plan.js"
import * as Refusal from "./executor/refusal.js"
import * as StreamCall from "./executor/stream.js"
import { isThenable } from "./policy/callback.js"
import * as Engine from "./policy/engine.js"
import type * as CallPlan from "./policy/plan.js"
import type { Answer, Plan, Step } from "./policy/plan.js"
import * as StreamEngine from "./policy/stream.js"
import * as StreamPlans from "./policy/stream-plan.js"
import type { StreamOptions, StreamPlan } from "./policy/stream-plan.js"
import { layer as statsLayer, type Snapshot, Stats } from "./Stats.js"
import { providerNameIssue } from "./stats/labels.js"

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
  /**
   * Domain dimension of the metrics. Not `"none"` (`Metrics.noDomain`, the calls made without
   * a domain), `"pipeline"` or `"agent"` (`Metrics.pipelineDomain`, `Metrics.agentDomain`: the
   * pipelines' steps and the HTTP agents' calls), `"(other)"` (`Metrics.otherSeries`, the calls past
   * `Stats.maxSeries` pairs), empty, nor holding a lone surrogate (no UTF-8 form, so no label of
   * its own): each is an `InvalidRequest` naming `domain`.
   */
  readonly domain?: string | undefined
  /** Call this provider instead of the executor's own. */
  readonly provider?: ProviderService | undefined
  /** Use the response cache when the executor has one (default true). */
  readonly cache?: boolean | undefined
  /**
   * When the call fails (`totalTimeout` passing included), answer from an expired cache entry within its grace
   * (default false).
   */
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
  /**
   * The most requests one call takes (a positive integer, default 1,000,000): more is refused,
   * naming `requests`, before any is read. A wrong value is an `InvalidRequest` naming `maxRequests`.
   *
   * @since 0.3.0
   */
  readonly maxRequests?: number | undefined
}

// The pipeline's own types, for modules that build plans (Router, HttpAgent, Pipeline).
// Re-exported by name, not as aliases: a type an application infers from them (a declaration
// file it emits) must name them through this module, not the internal `policy/*.js`.
export type { Answer, Plan, Step, StreamOptions, StreamPlan }

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
  readonly stats: Snapshot
  /** True once the executor's scope has begun to close. */
  readonly isShuttingDown: Effect.Effect<boolean>
  /**
   * Runs an effect as a tracked wait: the shutdown interrupts it with `ShuttingDownError`, and
   * `timeout` (a positive `Duration`; an `InvalidRequest` naming it otherwise) with a `TimeoutError`.
   * Something that is no Effect is an `InvalidRequest` naming `effect`.
   */
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
export const checkOptions = (options: Options) => {
  // Before any field is read: `null` was a TypeError out of the layer's build, `5` or `[]` the defaults.
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    return Result.fail({ path: "options", message: `expected an object, got ${Input.kindOf(options)}` })
  }
  if (
    options.stream !== undefined &&
    (typeof options.stream !== "object" || options.stream === null || Array.isArray(options.stream))
  ) {
    return Result.fail({
      path: "stream",
      message: "expected an object { firstChunkTimeout, idleTimeout, totalTimeout }"
    })
  }
  const unknown =
    Input.unknownKey(options, optionKeys) ??
    nestedUnknownKey(options.stream, streamDefaultKeys, "stream.") ??
    nestedUnknownKey(options.requestLimits, requestLimitKeys, "requestLimits.") ??
    checkGuards(options.guards)
  if (unknown !== undefined) return Result.fail(unknown)
  return Input.all([
    Input.optionalDuration("timeout", options.timeout, Duration.seconds(30)),
    options.retry === undefined ? Result.succeed(defaultRetry) : decodeRetry(options.retry, "retry"),
    Input.duration("shutdownDeadline", Input.orDefault(options.shutdownDeadline, Duration.seconds(10)), {
      allowZero: true
    }),
    requestLimits(Input.orDefault(options.requestLimits, {}), "requestLimits"),
    Input.optionalDuration("stream.firstChunkTimeout", options.stream?.firstChunkTimeout, Duration.seconds(30)),
    Input.optionalDuration("stream.idleTimeout", options.stream?.idleTimeout, Duration.seconds(30)),
    Input.optionalDuration("stream.totalTimeout", options.stream?.totalTimeout, Duration.minutes(10))
  ])
}

// A getter (or `Proxy` trap) of the options that throws: an issue naming the field, not a defect of the build.
const checkOptionsRead = (options: Options): ReturnType<typeof checkOptions> => {
  try {
    return checkOptions(options)
  } catch (thrown) {
    return Result.fail(CallOptions.thrownIssue(options, thrown))
  }
}

const optionKeys: ReadonlySet<string> = new Set([
  "timeout",
  "retry",
  "shutdownDeadline",
  "requestLimits",
  "stream",
  "guards"
])
const streamDefaultKeys: ReadonlySet<string> = new Set(["firstChunkTimeout", "idleTimeout", "totalTimeout"])
const requestLimitKeys: ReadonlySet<string> = new Set(["maxInputChars", "maxMessages", "maxEmbedTexts"])
const nestedUnknownKey = (input: unknown, known: ReadonlySet<string>, prefix: string) =>
  typeof input === "object" && input !== null ? Input.unknownKey(input, known, prefix) : undefined

// Each guard's methods, as the call plans use them.
const guardMethods: Readonly<Record<string, ReadonlyArray<string>>> = {
  breaker: ["execute", "admit"],
  rateLimit: ["acquire"],
  cache: ["getOrCompute", "key"]
}
const guardKeys: ReadonlySet<string> = new Set(Object.keys(guardMethods))

// Guards are used unchecked at every call: a wrong one would be a defect there, or (a
// misspelt key, `null` instead of the shared guards from context) no guard at all.
const checkGuards = (guards: unknown): Input.Issue | undefined => {
  if (guards === undefined) return undefined
  if (typeof guards !== "object" || guards === null || Array.isArray(guards)) {
    return { path: "guards", message: "expected an object { breaker, rateLimit, cache }" }
  }
  const unknown = Input.unknownKey(guards, guardKeys, "guards.")
  if (unknown !== undefined) return unknown
  for (const [name, methods] of Object.entries(guardMethods)) {
    const guard: unknown = (guards as Record<string, unknown>)[name]
    if (guard === undefined) continue
    if (typeof guard !== "object" || guard === null) {
      return { path: `guards.${name}`, message: `expected an object with ${methods.join(", ")}` }
    }
    for (const method of methods) {
      if (typeof (guard as Record<string, unknown>)[method] !== "function") {
        return { path: `guards.${name}.${method}`, message: "expected a function" }
      }
    }
  }
  return undefined
}

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
    checkOptionsRead(options)
  )
  const provider = yield* ModelProvider
  const reserved =
    providerNameIssue(provider.name, "provider.name") ?? CallOptions.slotIssue(provider, "provider.maxConcurrency")
  if (reserved !== undefined) return yield* Effect.fail(Input.toOptionError(reserved))
  const stats = yield* Stats
  // Without explicit guards, the shared ones in context (one breaker, limit and cache per application).
  const guards: Guards = options.guards ?? {
    breaker: Option.getOrUndefined(yield* Effect.serviceOption(Breakers)),
    rateLimit: Option.getOrUndefined(yield* Effect.serviceOption(RateLimits)),
    cache: Option.getOrUndefined(yield* Effect.serviceOption(ResponseCache))
  }
  const engine = yield* Engine.make({ stats, shutdownDeadline })
  // The executor's provider's limit is its name's, whatever plan or option names it later.
  engine.pinSlot(provider.name, provider.maxConcurrency)
  const streams = StreamEngine.make({
    engine,
    defaults: { firstChunkTimeout: firstChunk, idleTimeout: idle, totalTimeout: total }
  })

  const { resolveSync, resolve } = CallOptions.make({ defaultTimeout, basePolicy, claimSlot: engine.claimSlot })
  const { refuse, refused } = Refusal.make(stats, provider)
  const { stepFor, planOf } = Plans.make({ defaultTimeout, guards })
  const { execute, executeWithRetry } = Generate.make({ provider, limits, engine, resolveSync, refused, planOf })
  const executeMany = Many.make({ provider, limits, engine, resolveSync, refuse, planOf })
  const embed = Embed.make({ provider, limits, engine, resolveSync, refused, stepFor })
  const stream = StreamCall.make({
    streams,
    provider,
    limits,
    basePolicy,
    guards,
    stepFor,
    refuse,
    refused,
    claimSlot: engine.claimSlot
  })
  // Plans built in code (`stepFor`, a router's) are checked where they enter: the executor's own
  // calls build theirs from checked options and go to the engine directly.
  const run: Service["run"] = (plan, call) => {
    const issue =
      Plans.planIssue(plan as Plan<unknown, unknown>, engine.claimSlot) ??
      (typeof call === "function"
        ? undefined
        : { path: "call", message: `expected a function, got ${Input.kindOf(call)}` })
    return issue === undefined ? engine.run(plan, call) : Effect.fail(invalidRequest(issue.path, issue.message))
  }

  // A stream plan built in code, checked as `run`'s plans are, and its request as `stream`'s is.
  const validateStream = (request: GenerateRequest) => Generate.checkRequest(request, limits)
  const runStream: Service["runStream"] = (plan, request) => {
    const issue = Plans.streamPlanIssue(plan, engine.claimSlot)
    if (issue !== undefined) return Stream.fail(invalidRequest(issue.path, issue.message))
    const invalid = Generate.checkRequest(request, limits)
    if (invalid !== undefined) return Stream.fail(invalid)
    // A resumed stream's continuation is checked as the request was, unless the plan checks its own;
    // a step's `prepare` answer as `stream`'s steps' are.
    return streams.run(StreamPlans.checkedStreamPlan(plan, validateStream), request)
  }

  // The engine's own waits are given checked deadlines; a caller's is checked here: a number or
  // a string was a defect of the wait, a negative one cut it at once as a TimeoutError.
  const tracked: Service["tracked"] = (effect, timeout) => {
    // Anything else handed to the run loop ended the caller's fiber past every handler (`policy/callback.ts`).
    const given: unknown = effect
    if (!Effect.isEffect(given)) {
      // A Promise's own rejection, handled: unhandled, it would end a Node process.
      if (isThenable(given)) given.then(undefined, () => undefined)
      return Effect.fail(invalidRequest("effect", `expected an Effect, got ${Input.kindOf(given)}`))
    }
    const issue = Plans.durationIssue("timeout", timeout, false)
    return issue === undefined
      ? engine.tracked(effect, timeout)
      : Effect.fail(invalidRequest(issue.path, issue.message))
  }

  const service = {
    execute,
    executeWithRetry,
    executeMany,
    embed,
    stream,
    run,
    runStream,
    stepFor,
    resolve,
    provider,
    guards,
    limits,
    stats: stats.snapshot,
    isShuttingDown: Effect.sync(engine.isClosing),
    tracked
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
): Layer.Layer<Executor | Stats, Input.OptionError, ModelProvider> =>
  // Fresh: the constant `Stats.layer` would otherwise be reused from an enclosing region's memo map.
  Layer.provideMerge(layer(options), Layer.fresh(statsLayer))

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
