/**
 * Calls through named domains: one domain (with its own fallback chain), an explicit
 * fallback chain, every domain in parallel, a hedged race, a stream, or an embedding.
 * Every path builds the same plan from the domains (their provider, timeouts, retry
 * policy, and the provider's shared breaker, rate limit and cache) and runs it through the
 * executor's pipeline, so a domain has the same policies whichever entry point calls it.
 * Each answer says where it came from.
 *
 * @since 0.1.0
 */
import { Context, Duration, Effect, Layer, Result, Stream } from "effect"
import type { LanguageModel, Model as AiModel } from "effect/ai"
import { type AiError, invalidRequest, ModelError } from "./AiError.js"
import { applyTo, type Domain, Domains, Providers } from "./Domain.js"
import {
  type Answer as PlanAnswer,
  type ExecuteOptions,
  Executor,
  type Plan,
  type RetryInfo,
  type Step
} from "./Executor.js"
import * as Input from "./Input.js"
import type { OptionError } from "./Input.js"
import * as EffectAi from "./Model/EffectAi.js"
import {
  type EmbedRequest,
  type EmbedResponse,
  estimateInputTokens,
  type GenerateRequest,
  type GenerateResponse,
  type Service as ProviderService,
  type StreamPart,
  checkGenerate,
  validateEmbed
} from "./Model.js"
import { traced } from "./policy/span.js"
import type { StreamStep } from "./policy/stream-plan.js"
import { Stats } from "./Stats.js"

/**
 * Where an answer came from.
 *
 * @since 0.1.0
 * @category models
 */
export interface Answer {
  readonly response: GenerateResponse
  readonly domain: string
  readonly provider: string
  /** Attempts made in all: retries and every domain tried included (0 for a cache hit). */
  readonly attempts: number
  /** Domains tried, the answering one included. */
  readonly domainsTried: number
  readonly fallbackUsed: boolean
  readonly source: "provider" | "cache" | "stale-cache"
  /** Set by hedging: whether a backup answered. */
  readonly hedgeWon?: boolean | undefined
}

/**
 * Options of one routed call; every value is checked (an `InvalidRequest` naming it).
 *
 * @since 0.1.0
 * @category models
 */
export interface CallOptions {
  /** Deadline of the whole call, retries and fallbacks included (default: the domain's). */
  readonly timeout?: Duration.Input | undefined
  readonly onRetry?: ((info: RetryInfo) => Effect.Effect<void>) | undefined
  /** Use the response cache when the application has one (default: the domain's, true). */
  readonly cache?: boolean | undefined
  /** When every step fails (an open breaker included), answer from an expired cache entry within its grace. */
  readonly allowStale?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface HedgeOptions extends CallOptions {
  /** When to start the next domain: a duration, or `"p95"` of the first domain's service time so far. */
  readonly after: Duration.Input | "p95"
  /** Used by `"p95"` until the first domain has 20 answers. Default 2 seconds. */
  readonly defaultAfter?: Duration.Input | undefined
}

/**
 * Options of a routed stream.
 *
 * @since 0.2.0
 * @category models
 */
export interface StreamOptions {
  readonly firstChunkTimeout?: Duration.Input | "none" | undefined
  readonly idleTimeout?: Duration.Input | "none" | undefined
  readonly totalTimeout?: Duration.Input | "none" | undefined
  readonly resume?:
    | boolean
    | { readonly maxResumes?: number; readonly instruction?: string; readonly minOverlap?: number }
    | undefined
  readonly cache?: boolean | undefined
  readonly onRetry?: ((info: RetryInfo) => Effect.Effect<void>) | undefined
}

/**
 * Options of {@link Service.plan}.
 *
 * @since 0.2.0
 * @category models
 */
export interface PlanOptions extends CallOptions {
  /**
   * A step tried before the domains' own, with the request as given (its answers name the
   * domain `"none"`, as the metrics do), e.g. the executor's provider for a batch item that names no
   * domain. With it, `domains` may be an empty array. Its `tokens` are set from the request.
   */
  readonly lead?: Step<ProviderService> | undefined
}

/**
 * A routed call before it runs: `executor.run(routed.plan, routed.call)` runs it and
 * `routed.answer` says where its answer came from.
 *
 * @since 0.2.0
 * @category models
 */
export interface Routed {
  readonly plan: Plan<ProviderService, GenerateResponse>
  readonly call: (provider: ProviderService, step: Step<ProviderService>) => Effect.Effect<GenerateResponse, AiError>
  readonly answer: (answer: PlanAnswer<ProviderService, GenerateResponse>) => Answer
}

/**
 * A chain resolved by {@link Service.prepare}: the plan of one request on it, as `plan`
 * builds it.
 *
 * @since 0.2.0
 * @category models
 */
export type Prepared = (request: GenerateRequest, options?: CallOptions) => Effect.Effect<Routed, ModelError>

/**
 * The plan of a {@link Prepared} chain built at once, without an Effect: the plan, or the
 * request's refusal (already counted). For batches that start their items from JavaScript.
 *
 * @internal
 */
export const preparedNow = new WeakMap<
  Prepared,
  (request: GenerateRequest, options?: CallOptions) => Routed | ModelError
>()

/**
 * @since 0.1.0
 * @category models
 */
export interface DomainOutcome {
  readonly domain: string
  readonly result: Result.Result<Answer, AiError>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** One domain, then its own `fallback` chain when it has one. */
  readonly execute: (request: GenerateRequest, domain: string, options?: CallOptions) => Effect.Effect<Answer, AiError>
  /** Tries the domains in order, moving on only when `shouldFallback` says so; each uses its own policies. */
  readonly executeWithFallback: (
    request: GenerateRequest,
    domains: ReadonlyArray<string>,
    options?: CallOptions
  ) => Effect.Effect<Answer, AiError>
  /** Every domain's outcome, in the order given; each domain runs as `execute` runs it (its own fallback chain included). */
  readonly executeParallelDomains: {
    (
      request: GenerateRequest,
      domains: ReadonlyArray<string>,
      mode: "all",
      options?: CallOptions
    ): Effect.Effect<ReadonlyArray<DomainOutcome>, ModelError>
    /** The first success; the other calls are interrupted. Fails only when all fail. */
    (
      request: GenerateRequest,
      domains: ReadonlyArray<string>,
      mode: "first",
      options?: CallOptions
    ): Effect.Effect<Answer, AiError>
  }
  /**
   * Calls the first domain; if it has not answered after `after` (or failed in a way that
   * falls back), starts the next one. The first success wins; the others are interrupted.
   */
  readonly hedge: (
    request: GenerateRequest,
    domains: ReadonlyArray<string>,
    options: HedgeOptions
  ) => Effect.Effect<Answer, AiError>
  /** A stream on a domain (and its fallback chain) or an explicit chain, through every policy. */
  readonly stream: (
    request: GenerateRequest,
    domains: string | ReadonlyArray<string>,
    options?: StreamOptions
  ) => Stream.Stream<StreamPart, AiError>
  readonly embed: (
    request: EmbedRequest,
    domain: string,
    options?: CallOptions
  ) => Effect.Effect<EmbedResponse, AiError>
  /** The provider and domain a name resolves to. */
  readonly resolve: (
    domain: string
  ) => Effect.Effect<{ readonly domain: Domain; readonly provider: ProviderService }, ModelError>
  /** The chain a call on these domains runs (a single domain expands to its own fallback chain). */
  readonly chain: (domains: string | ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<Domain>, ModelError>
  /** The plan `execute` / `executeWithFallback` run for a request, for callers that run many (batches). */
  readonly plan: (
    request: GenerateRequest,
    domains: string | ReadonlyArray<string>,
    options?: PlanOptions
  ) => Effect.Effect<Routed, ModelError>
  /**
   * `plan` in two steps, for many requests on the same domains (a batch): the chain is
   * resolved once (an unknown domain fails here), then each request only gets its plan.
   */
  readonly prepare: (
    domains: string | ReadonlyArray<string>,
    options?: { readonly lead?: Step<ProviderService> | undefined }
  ) => Effect.Effect<Prepared, ModelError>
}

/**
 * @since 0.1.0
 * @category services
 */
export class Router extends Context.Service<Router, Service>()("effect-orchestra/Router") {}

interface DomainStep extends StreamStep {
  readonly domainConfig: Domain
  readonly cacheable: boolean
}

const noDomains = invalidRequest("domains", "give at least one domain")

/**
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.gen(function* () {
  const executor = yield* Executor
  const domains = yield* Domains
  const providers = yield* Providers
  const stats = yield* Stats
  const cache = executor.guards.cache

  const resolve = (name: string) =>
    Effect.flatMap(domains.get(name), (domain) =>
      Effect.map(providers.get(domain.provider), (provider) => ({ domain, provider }))
    )

  const chain = (names: string | ReadonlyArray<string>): Effect.Effect<ReadonlyArray<Domain>, ModelError> =>
    Effect.gen(function* () {
      if (typeof names === "string") {
        const first = yield* domains.get(names)
        const rest = yield* Effect.forEach(first.fallback ?? [], (name) => domains.get(name))
        return [first, ...rest]
      }
      if (!Array.isArray(names))
        return yield* Effect.fail(invalidRequest("domains", "expected an array of domain names"))
      if (names.length === 0) return yield* Effect.fail(noDomains)
      return yield* Effect.forEach(names, (name) => domains.get(name))
    })

  // A domain's step without the request's tokens, built once per chain.
  const templateOf = (domain: Domain) =>
    Effect.map(
      providers.get(domain.provider),
      (provider): DomainStep => ({
        ...executor.stepFor(provider, { domain: domain.name, timeout: domain.timeout, retry: domain.retry ?? false }),
        domainConfig: domain,
        prepare: (r: GenerateRequest) => applyTo(domain, r),
        cacheable: domain.cache !== false
      })
    )

  const checkTimeout = (timeout: Duration.Input | undefined, fallback: Duration.Duration | undefined) =>
    timeout === undefined ? Effect.succeed(fallback) : Input.orInvalidRequest(Input.duration("timeout", timeout))

  const tokensOf = (request: GenerateRequest) => estimateInputTokens(request) + (request.maxTokens ?? 0)

  // A refused call is counted on its first step's provider, as the executor counts its own.
  // A request refused before any step runs is counted on the chain's first step.
  const refusedNow = (error: ModelError, first: Step<ProviderService>): ModelError => {
    const series = stats.series(first.name, first.domain)
    series.requests++
    series.fail(error.reason)
    return error
  }

  // A request's plan, built without an Effect (a batch starts its items from JavaScript):
  // the plan, or the request's refusal.
  type Apply = (
    request: GenerateRequest,
    options: CallOptions,
    hedgeAfter: Duration.Duration | undefined
  ) => Routed | ModelError

  const applied = (routed: Routed | ModelError): Effect.Effect<Routed, ModelError> =>
    routed instanceof ModelError ? Effect.fail(routed) : Effect.succeed(routed)

  // Resolves the chain once; `apply` then builds a request's plan without resolving it again.
  const prepareWith = (
    names: string | ReadonlyArray<string>,
    lead: Step<ProviderService> | undefined
  ): Effect.Effect<Apply, ModelError> =>
    Effect.gen(function* () {
      const list = lead !== undefined && Array.isArray(names) && names.length === 0 ? [] : yield* chain(names)
      const templates = yield* Effect.forEach(list, templateOf)
      const firstDomain = lead === undefined ? templates[0] : undefined
      const head = lead ?? templates[0]!
      const ownHedge = typeof names === "string" ? firstDomain?.domainConfig.hedgeAfter : undefined
      const build = (
        valid: GenerateRequest,
        options: CallOptions,
        hedgeAfter: Duration.Duration | undefined
      ): Routed | ModelError => {
        let totalTimeout = firstDomain?.domainConfig.totalTimeout
        if (options.timeout !== undefined) {
          const checked = Input.duration("timeout", options.timeout)
          if (Result.isFailure(checked)) return invalidRequest("timeout", checked.failure.message)
          totalTimeout = checked.success
        }
        // Only a rate limit reads a step's token estimate: a step without one is shared by
        // every request as it is (no copy, no estimate per request).
        const steps: Array<Step<ProviderService>> = []
        if (lead !== undefined) steps.push(lead.rateLimit === undefined ? lead : { ...lead, tokens: tokensOf(valid) })
        for (const template of templates) {
          steps.push(
            template.rateLimit === undefined
              ? template
              : { ...template, tokens: tokensOf(applyTo(template.domainConfig, valid)) }
          )
        }
        const first = steps[0]!
        const useCache = cache !== undefined && options.cache !== false && (firstDomain?.cacheable ?? true)
        const onRetry = options.onRetry
        const plan: Plan<ProviderService, GenerateResponse> = {
          steps: steps as unknown as readonly [Step<ProviderService>, ...Array<Step<ProviderService>>],
          totalTimeout,
          hedgeAfter: hedgeAfter ?? ownHedge,
          cache: useCache
            ? {
                guard: cache!,
                key: cache!.key({
                  provider: first.name,
                  request: firstDomain === undefined ? valid : applyTo(firstDomain.domainConfig, valid)
                }),
                allowStale: options.allowStale ?? false
              }
            : undefined,
          onRetry:
            onRetry === undefined
              ? undefined
              : (event) =>
                  onRetry({
                    provider: event.step.name,
                    domain: event.step.domain,
                    attempt: event.attempt,
                    error: event.error,
                    delay: event.delay
                  }),
          usageOf: (response: GenerateResponse) => response.usage
        }
        return {
          plan,
          call: (provider, step) => provider.generate((step as Partial<DomainStep>).prepare?.(valid) ?? valid),
          answer: (answer) => ({
            response: answer.value,
            domain: answer.step.domain ?? "none",
            provider: answer.step.name,
            attempts: answer.attempts,
            domainsTried: answer.stepsTried,
            fallbackUsed: answer.step !== first,
            source: answer.source,
            hedgeWon: answer.hedgeWon
          })
        } satisfies Routed
      }
      // Validated before any step reads it: a null request is an InvalidRequest, not a defect.
      return (request, options, hedgeAfter) => {
        const error = checkGenerate(request, executor.limits)
        return error === undefined ? build(request, options, hedgeAfter) : refusedNow(error, head)
      }
    })

  // The chain of one domain name, resolved once: domains and providers are fixed for the
  // router's life, so `execute(request, "support")` does not look its chain and steps up on
  // every call (~10 µs and two allocations per step). Bounded by the domains that exist
  // (an unknown name fails and is not kept).
  const applies = new Map<string, Apply>()
  const applyOf = (
    names: string | ReadonlyArray<string>,
    lead: Step<ProviderService> | undefined
  ): Effect.Effect<Apply, ModelError> => {
    if (lead !== undefined || typeof names !== "string") return prepareWith(names, lead)
    const known = applies.get(names)
    if (known !== undefined) return Effect.succeed(known)
    return Effect.map(prepareWith(names, undefined), (apply) => {
      applies.set(names, apply)
      return apply
    })
  }

  const planWith = (
    request: GenerateRequest,
    names: string | ReadonlyArray<string>,
    options: PlanOptions,
    hedgeAfter: Duration.Duration | undefined
  ): Effect.Effect<Routed, ModelError> =>
    Effect.flatMap(applyOf(names, options.lead), (apply) => applied(apply(request, options, hedgeAfter)))

  const run = (
    request: GenerateRequest,
    names: string | ReadonlyArray<string>,
    options: CallOptions,
    hedgeAfter?: Duration.Duration | undefined
  ): Effect.Effect<Answer, AiError> =>
    Effect.flatMap(planWith(request, names, options, hedgeAfter), (routed) =>
      Effect.map(executor.run(routed.plan, routed.call), routed.answer)
    )

  const domainsOf = (names: string | ReadonlyArray<string>) => () => ({
    "orchestra.domains": typeof names === "string" ? names : Array.isArray(names) ? names.join(",") : String(names)
  })

  const execute = (request: GenerateRequest, domain: string, options: CallOptions = {}) =>
    typeof domain === "string"
      ? traced("Router.execute", domainsOf(domain), run(request, domain, options))
      : Effect.fail(invalidRequest("domain", `expected a domain name, got ${domain === null ? "null" : typeof domain}`))

  const executeWithFallback = (request: GenerateRequest, names: ReadonlyArray<string>, options: CallOptions = {}) =>
    traced("Router.executeWithFallback", domainsOf(names), run(request, names, options))

  const executeParallelDomains = ((
    request: GenerateRequest,
    names: ReadonlyArray<string>,
    mode: "all" | "first",
    options: CallOptions = {}
  ) => {
    if (!Array.isArray(names)) return Effect.fail(invalidRequest("domains", "expected an array of domain names"))
    if (names.length === 0) return Effect.fail(noDomains)
    if (mode === "all") {
      return Effect.forEach(
        names,
        (domain) => Effect.map(Effect.result(execute(request, domain, options)), (result) => ({ domain, result })),
        { concurrency: "unbounded" }
      )
    }
    if (mode !== "first") return Effect.fail(invalidRequest("mode", `expected "all" or "first", got ${String(mode)}`))
    return Effect.raceAll(names.map((domain) => execute(request, domain, options)))
  }) as Service["executeParallelDomains"]

  const hedgeDelay = (first: string, options: HedgeOptions): Effect.Effect<Duration.Duration, ModelError> =>
    Effect.gen(function* () {
      if (options === null || typeof options !== "object") {
        return yield* Effect.fail(invalidRequest("options", "give the hedge options, e.g. { after: 500 }"))
      }
      if (options.after !== "p95") return yield* Input.orInvalidRequest(Input.duration("after", options.after))
      const fallback = yield* Input.orInvalidRequest(
        Input.duration("defaultAfter", options.defaultAfter ?? Duration.seconds(2))
      )
      const { domain, provider } = yield* resolve(first)
      const s = yield* stats.snapshot({ provider: provider.name, domain: domain.name })
      return s.successes >= 20 ? Duration.millis(s.serviceTime.p95) : fallback
    })

  const hedge = (request: GenerateRequest, names: ReadonlyArray<string>, options: HedgeOptions) =>
    traced(
      "Router.hedge",
      domainsOf(names),
      Effect.gen(function* () {
        if (!Array.isArray(names) || names.length === 0) return yield* Effect.fail(noDomains)
        const delay = yield* hedgeDelay(names[0]!, options)
        return yield* run(request, names, options, delay)
      })
    )

  const stream = (request: GenerateRequest, names: string | ReadonlyArray<string>, options: StreamOptions = {}) =>
    Stream.unwrap(
      Effect.gen(function* () {
        const list = yield* chain(names)
        const steps = yield* Effect.forEach(list, (domain) =>
          Effect.map(resolve(domain.name), ({ provider }) => ({
            provider,
            domain: domain.name,
            retry: domain.retry ?? false,
            prepare: (r: GenerateRequest) => applyTo(domain, r)
          }))
        )
        const first = list[0]!
        return executor.stream(request, {
          steps,
          firstChunkTimeout: options.firstChunkTimeout ?? first.timeout,
          idleTimeout: options.idleTimeout,
          totalTimeout: options.totalTimeout ?? first.totalTimeout,
          resume: options.resume,
          cache: options.cache ?? first.cache,
          onRetry:
            options.onRetry === undefined ? undefined : (info) => options.onRetry!({ ...info, domain: undefined })
        })
      })
    )

  const embed = (request: EmbedRequest, name: string, options: CallOptions = {}) =>
    Effect.gen(function* () {
      const { domain, provider } = yield* resolve(name)
      const valid = yield* validateEmbed(request, executor.limits)
      const totalTimeout = yield* checkTimeout(options.timeout, domain.totalTimeout)
      const step: Step<ProviderService> = {
        ...executor.stepFor(provider, {
          domain: domain.name,
          timeout: domain.timeout,
          retry: domain.retry ?? false
        }),
        maxConcurrency: undefined
      }
      const answer = yield* executor.run({ steps: [step], totalTimeout }, (p) =>
        p.embed(domain.model === undefined || valid.model !== undefined ? valid : { ...valid, model: domain.model })
      )
      return answer.value
    })

  return {
    execute,
    executeWithFallback,
    executeParallelDomains,
    hedge,
    stream,
    embed,
    resolve,
    chain,
    plan: (request, names, options = {}) => planWith(request, names, options, undefined),
    prepare: (names, options = {}) =>
      Effect.map(applyOf(names, options.lead), (apply): Prepared => {
        const now = (request: GenerateRequest, callOptions: CallOptions = {}) => apply(request, callOptions, undefined)
        const prepared: Prepared = (request, callOptions) => Effect.suspend(() => applied(now(request, callOptions)))
        preparedNow.set(prepared, now)
        return prepared
      })
  } satisfies Service
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Router, never, Executor | Domains | Providers | Stats> = Layer.effect(Router, make)

export type { ExecuteOptions }

/**
 * A domain (or a fallback chain) as an `effect/ai` `LanguageModel`: an Effect 4 application
 * keeps its `effect/ai` code (`LanguageModel.generateText`, `streamText`, `generateObject`,
 * toolkits) and every call runs through the domain's policies (its chain, breaker, rate
 * limit, cache, deadlines and retries) as `Router.execute` and `Router.stream` do.
 *
 * @example
 * ```ts
 * import { Effect, Layer } from "effect"
 * import { LanguageModel } from "effect/ai"
 * import { Mock, Orchestra, Router } from "effect-orchestra"
 *
 * const Support = Router.layerLanguageModel("support").pipe(
 *   Layer.provide(Orchestra.layer({ providers: { mock: Mock.layer() } }))
 * )
 * const answer = LanguageModel.generateText({ prompt: "How do I reset my password?" }).pipe(Effect.provide(Support))
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layerLanguageModel = (
  domains: string | ReadonlyArray<string>,
  options: EffectAi.LanguageModelOptions & {
    readonly call?: CallOptions | undefined
    readonly stream?: StreamOptions | undefined
  } = {}
): Layer.Layer<LanguageModel.LanguageModel | AiModel.ProviderName, OptionError, Router> =>
  Layer.unwrap(
    Effect.map(Router, (router) => {
      const names = typeof domains === "string" ? domains : domains
      return EffectAi.layerLanguageModel(
        {
          generate: (request) =>
            Effect.map(
              typeof names === "string"
                ? router.execute(request, names, options.call)
                : router.executeWithFallback(request, names, options.call),
              (answer) => answer.response
            ),
          stream: (request) => router.stream(request, names, options.stream)
        },
        { ...options, name: options.name ?? (typeof names === "string" ? names : names.join(",")) }
      )
    })
  )
