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
import { Context, type Duration, Effect, Layer, Result, type Stream } from "effect"
import type { LanguageModel, Model as AiModel } from "effect/ai"
import type { AiError, ModelError } from "./AiError.js"
import { type Domain, Domains, type DomainsService, Providers } from "./Domain.js"
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
import type * as EffectAi from "./Model/EffectAi.js"
import type {
  EmbedRequest,
  EmbedResponse,
  GenerateRequest,
  GenerateResponse,
  Service as ProviderService,
  StreamPart
} from "./Model.js"
import { makeCalls } from "./router/calls.js"
import { languageModelLayer } from "./router/language-model.js"
import { applied, makePlanner, optionKeys, repeatIssue, streamValueIssue, unknownOption } from "./router/plan.js"
import { Stats } from "./Stats.js"

/**
 * Where an answer came from.
 *
 * @since 0.1.0
 * @category models
 */
export interface Answer {
  readonly response: GenerateResponse
  /**
   * The domain and provider that produced the response; for one from the cache, those that
   * produced it when it was stored (a fallback domain's answer names that domain, with `fallbackUsed`).
   */
  readonly domain: string
  readonly provider: string
  /**
   * Attempts made in all: retries and every domain tried included (0 for a cache hit; for a
   * `stale-cache` answer, the attempts that failed before it).
   */
  readonly attempts: number
  /** Domains tried, the answering one included (for a `stale-cache` answer: the ones that failed). */
  readonly domainsTried: number
  readonly fallbackUsed: boolean
  readonly source: "provider" | "cache" | "stale-cache"
  /**
   * Set by hedging once a backup started on its delay: whether a backup answered, or a step
   * that a backup's failure started (`false`: the first step, or a fallback of its own failure,
   * won the race). `undefined` when none started on the delay (the first step answered within
   * the delay, or failed and the next took over as a fallback) and outside hedging.
   */
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
  /**
   * Use the response cache when the application has one (default true). `false` skips it; `true`
   * does not turn it on for a first domain with `cache: false`.
   */
  readonly cache?: boolean | undefined
  /**
   * When every step fails (an open breaker included) or `timeout` passes, answer from an expired cache entry within
   * its grace.
   */
  readonly allowStale?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface HedgeOptions extends CallOptions {
  /**
   * When to start the next domain: a duration, or `"p95"` of the first domain's service time so
   * far, never less than 10 ms (a cache or a local model answering in under a millisecond has a
   * p95 of 0, which would start a backup on every call; give a duration to hedge sooner).
   */
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
  /** As `Executor.stream`'s: `true`, or the resumption's options (each left out or undefined is its default). */
  readonly resume?:
    | boolean
    | {
        readonly maxResumes?: number | undefined
        readonly instruction?: string | undefined
        readonly minOverlap?: number | undefined
      }
    | undefined
  /** As {@link CallOptions.cache}: `true` does not turn the cache on for a first domain with `cache: false`. */
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
  /** One domain, then its own `fallback` chain when it has one (each listed domain followed by its own, depth first, every domain once). */
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
    /**
     * The first success; the other calls are interrupted. Fails only when all fail: with a
     * `FallbackExhaustedError` listing each domain's failure in the order given.
     */
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
   * Takes at least two domains (an `InvalidRequest` naming `domains` otherwise).
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
  /** The chain a call on these domains runs (a single domain expands to its own fallback chain, depth first, every domain once; a list is the chain as given). */
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

/**
 * The router over the domains and providers in context. A domain naming a provider that is not
 * registered fails it with an `OptionError` at `domains[i].provider` (as `Orchestra.layer` refuses
 * it): a chain reaching that domain could never be planned, and each call would fail `Unavailable`,
 * a reason that reads as an outage.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.gen(function* () {
  const executor = yield* Executor
  const domains = yield* Domains
  const providers = yield* Providers
  const stats = yield* Stats
  yield* Input.orOptionError(unregisteredProvider(domains, providers.names))
  const planner = makePlanner({ executor, domains, providers, stats })
  const { resolve, chain, applyOf, planWith, refusedOn } = planner
  const { execute, executeWithFallback, executeParallelDomains, hedge, stream, embed } = makeCalls({
    executor,
    stats,
    planner
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
    plan: (request, names, options = {}) => {
      const unknown = unknownOption(options, optionKeys.plan)
      return unknown === undefined ? planWith(request, names, options, undefined) : refusedOn(names, unknown)
    },
    prepare: (names, options = {}) => {
      const unknown = unknownOption(options, optionKeys.prepare)
      return unknown !== undefined
        ? Effect.fail(unknown)
        : Effect.map(applyOf(names, options.lead), (apply): Prepared => {
            const now = (request: GenerateRequest, callOptions: CallOptions = {}) =>
              apply(request, callOptions, undefined)
            // The check is the public call's: a batch calls `now` itself, with options it built.
            const prepared: Prepared = (request, callOptions) =>
              Effect.suspend(() => {
                const unknown = callOptions === undefined ? undefined : unknownOption(callOptions, optionKeys.call)
                return unknown === undefined ? applied(now(request, callOptions)) : Effect.fail(apply.refuse(unknown))
              })
            preparedNow.set(prepared, now)
            return prepared
          })
    }
  } satisfies Service
})

const unregisteredProvider = (domains: DomainsService, registered: ReadonlyArray<string>): Input.Checked<void> => {
  const at = domains.all.findIndex((domain) => !registered.includes(domain.provider))
  return at === -1
    ? Result.void
    : Result.fail({
        path: `domains[${at}].provider`,
        message: `no provider named "${domains.all[at]!.provider}" (registered: ${registered.join(", ")})`
      })
}

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Router, OptionError, Executor | Domains | Providers | Stats> = Layer.effect(
  Router,
  make
)

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
    Effect.gen(function* () {
      const router = yield* Router
      const known = yield* Effect.serviceOption(Domains)
      // Copied once and the copy checked: the caller's array changed later would change the domains
      // of every call (an unknown one, one named twice), past the check.
      // Bounded: a sparse `new Array(2 ** 32 - 1)` costs nothing to make, and copying it held the event loop for minutes.
      const copied = yield* Input.orOptionError(Input.snapshot(domains, "domains", "domains", maxListLength))
      const served = Array.isArray(copied) ? Object.freeze(copied) : copied
      yield* checkDomainNames(served, known._tag === "Some" ? known.value : undefined)
      // Read once: a getter that throws is an OptionError naming its field, and the calls use what was checked.
      const read = yield* Input.orOptionError(Input.snapshot(options, "", "options", maxListLength))
      yield* Input.orOptionError(checkLanguageModelKeys(read))
      return languageModelLayer(router, served, read)
    })
  )

// The longest list a LanguageModel layer is given (its domains, one of its options).
const maxListLength = 1_000_000

const languageModelKeys: ReadonlySet<string> = new Set([
  "name",
  "settings",
  "requestLimits",
  "limits",
  "call",
  "stream"
])

// The options' keys, checked when the layer is built: a misspelt `call` or `stream` key would
// otherwise fail every call (or, for a stream, be ignored), and a misspelt top-level key would
// be ignored. So are the call's deadlines, flags and onRetry, which would fail every call; the
// other values are checked by EffectAi here and by the router per call.
const checkLanguageModelKeys = (options: unknown): Input.Checked<void> => {
  if (options === undefined) return Result.void
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    return Result.fail({ path: "options", message: "expected an object" })
  }
  const unknown = Input.unknownKey(options, languageModelKeys)
  if (unknown !== undefined) return Result.fail(unknown)
  for (const [field, known] of [
    ["call", optionKeys.call],
    ["stream", optionKeys.stream]
  ] as const) {
    const nested: unknown = (options as Record<string, unknown>)[field]
    if (nested === undefined) continue
    if (typeof nested !== "object" || nested === null || Array.isArray(nested)) {
      return Result.fail({ path: field, message: "expected an object of per-call options" })
    }
    const issue = Input.unknownKey(nested, known, `${field}.`)
    if (issue !== undefined) return Result.fail(issue)
    const value = valueIssue(nested as Record<string, unknown>)
    if (value !== undefined) return Result.fail({ ...value, path: `${field}.${value.path}` })
  }
  return Result.void
}

// The values a router call checks, checked once here: a bad one would fail every call.
const valueIssue = (options: Record<string, unknown>): Input.Issue | undefined => {
  if (options.timeout !== undefined) {
    const checked = Input.duration("timeout", options.timeout)
    if (Result.isFailure(checked)) return checked.failure
  }
  // A stream's deadlines, which take "none", and its resume.
  const stream = streamValueIssue(options as StreamOptions)
  if (stream !== undefined) return stream
  return Input.notABoolean(options, ["cache", "allowStale"]) ?? Input.notOfKind(options, [["onRetry", "function"]])
}

// The domains a LanguageModel layer serves, checked when it is built: a name, or a non-empty
// list of names, each known to the manager when its domains are in context.
const checkDomainNames = (domains: unknown, known: DomainsService | undefined): Effect.Effect<void, OptionError> => {
  const names = typeof domains === "string" ? [domains] : Array.isArray(domains) ? domains : undefined
  if (names === undefined || names.length === 0) {
    return Input.orOptionError(
      Result.fail({ path: "domains", message: "expected a domain name or a non-empty list of domain names" })
    )
  }
  for (let i = 0; i < names.length; i++) {
    const name: unknown = names[i]
    const path = typeof domains === "string" ? "domains" : `domains[${i}]`
    if (typeof name !== "string" || name.length === 0) {
      return Input.orOptionError(Result.fail({ path, message: "expected a non-empty domain name" }))
    }
    if (known !== undefined && !known.all.some((domain) => domain.name === name)) {
      const names = known.all.map((domain) => domain.name).join(", ")
      return Input.orOptionError(Result.fail({ path, message: `unknown domain "${name}" (known: ${names})` }))
    }
  }
  const repeated = repeatIssue(names)
  return repeated === undefined ? Effect.void : Input.orOptionError(Result.fail(repeated))
}
