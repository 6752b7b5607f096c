/**
 * The plan of a routed call: the chain a call on some domains runs (a single domain expands
 * to its own fallback chain), each domain's step built once per chain, and a request's plan
 * on it (the steps' token estimates, the total deadline, the cache key, the retry hook, the
 * hedge delay), built without an Effect: a batch starts its items from JavaScript. The chain
 * of one domain name is resolved once for the router's life.
 *
 * @internal
 */
import { type Duration, Effect, Result } from "effect"
import { invalidRequest, ModelError } from "../AiError.js"
import { applyTo, type Domain, type DomainsService, type ProvidersService } from "../Domain.js"
import type { Service as ExecutorService, Plan, Step } from "../Executor.js"
import { thrownIssue } from "../executor/options.js"
import * as Input from "../Input.js"
import {
  checkGenerate,
  estimateInputTokens,
  type GenerateRequest,
  type GenerateResponse,
  type Service as ProviderService
} from "../Model.js"
import { retryHookOf } from "../policy/callback.js"
import { resumeOf } from "../policy/stream-plan.js"
import { keyedRequest } from "../ResponseCache/key.js"
import type { CallOptions, PlanOptions, Routed, StreamOptions } from "../Router.js"
import type { Service as StatsService } from "../Stats.js"

/** What the planner needs from the router. */
// The per-call options that take true or false.
const callFlags = ["cache", "allowStale"] as const

export interface Env {
  readonly executor: ExecutorService
  readonly domains: DomainsService
  readonly providers: ProvidersService
  readonly stats: StatsService
}

interface DomainStep extends Step<ProviderService> {
  readonly domainConfig: Domain
  readonly cacheable: boolean
}

/**
 * The request a routed call's step sends: its domain applied on the router's own steps; on a
 * `lead`, the request as given (as `PlanOptions.lead` says), whatever else the step carries (a
 * stream step's `prepare` was applied at each attempt, unchecked, and the cache keyed on another request).
 */
export const requestFor = (step: Step<ProviderService>, request: GenerateRequest): GenerateRequest => {
  const domain = (step as Partial<DomainStep>).domainConfig
  return domain === undefined ? request : applyTo(domain, request)
}

export const noDomains = invalidRequest("domains", "give at least one domain")

/**
 * Whether a caller's `names` is a list: a revoked `Proxy`, on which `Array.isArray` throws, is none (the
 * InvalidRequest of `domains`, not a defect or a throw out of a method that answers an Effect).
 *
 * @internal
 */
export const isList = (names: unknown): names is ReadonlyArray<string> => {
  try {
    return Array.isArray(names)
  } catch {
    return false
  }
}

/**
 * A domain named twice in a list of domains, as its refusal: a chain (or a race) would run it
 * twice, its retries and its provider's load doubled, as a domain's `fallback` naming one twice
 * would (`Domain.check` refuses that).
 */
export const repeatedDomain = (names: ReadonlyArray<string>): ModelError | undefined => {
  const issue = repeatIssue(names)
  return issue === undefined ? undefined : invalidRequest(issue.path, issue.message)
}

/** {@link repeatedDomain} as a check's issue (a layer given such a list fails with it). */
export const repeatIssue = (names: ReadonlyArray<unknown>): Input.Issue | undefined => {
  const at = names.length <= SHORT_LIST ? repeatInShort(names) : repeatInLong(names)
  return at === -1
    ? undefined
    : { path: `domains[${at}]`, message: `${Input.shown(names[at])} is already in the list: name each domain once` }
}

// A chain of a few domains is scanned in place (no Set per call); a caller's long list in linear time.
const SHORT_LIST = 8

// Only names repeat: a value that is no name (a sparse list's holes) is left for the check that
// names it for what it is, at its first place.
const repeatInShort = (names: ReadonlyArray<unknown>): number => {
  for (let i = 1; i < names.length; i++) {
    const name = names[i]
    if (typeof name === "string" && names.indexOf(name) < i) return i
  }
  return -1
}

const repeatInLong = (names: ReadonlyArray<unknown>): number => {
  const seen = new Set<string>()
  for (let i = 0; i < names.length; i++) {
    const name = names[i]
    if (typeof name !== "string") continue
    if (seen.has(name)) return i
    seen.add(name)
  }
  return -1
}

/** The keys of the router's option types, each an entry point's. */
export const optionKeys = (() => {
  const call = ["timeout", "onRetry", "cache", "allowStale"]
  return {
    call: new Set(call),
    hedge: new Set([...call, "after", "defaultAfter"]),
    plan: new Set([...call, "lead"]),
    prepare: new Set(["lead"]),
    stream: new Set(["firstChunkTimeout", "idleTimeout", "totalTimeout", "resume", "cache", "onRetry"])
  } as const
})()

const streamDeadlines = ["firstChunkTimeout", "idleTimeout", "totalTimeout"] as const

// Checked once per options object, as the executor's call options are (the gateway gives
// every stream the same deadlines), with the values it was checked with: a field given another
// value since (`options.idleTimeout = 5000` between two streams) is checked again.
interface StreamChecked {
  readonly firstChunkTimeout: unknown
  readonly idleTimeout: unknown
  readonly totalTimeout: unknown
  readonly resume: unknown
  readonly issue: Input.Issue | undefined
}
const streamChecks = new WeakMap<StreamOptions, StreamChecked>()

/**
 * A stream's deadlines (which take `"none"`) and its `resume`, checked as the executor checks
 * them: the router refuses (and counts) a stream for them before the executor sees it.
 */
export const streamValueIssue = (options: StreamOptions): Input.Issue | undefined => {
  const { firstChunkTimeout, idleTimeout, totalTimeout, resume } = options
  if (
    firstChunkTimeout === undefined &&
    idleTimeout === undefined &&
    totalTimeout === undefined &&
    resume === undefined
  ) {
    return undefined
  }
  const known = streamChecks.get(options)
  if (
    known !== undefined &&
    known.firstChunkTimeout === firstChunkTimeout &&
    known.idleTimeout === idleTimeout &&
    known.totalTimeout === totalTimeout &&
    known.resume === resume
  ) {
    return known.issue
  }
  const issue = streamIssue(options)
  streamChecks.set(options, { firstChunkTimeout, idleTimeout, totalTimeout, resume, issue })
  return issue
}

const streamIssue = (options: StreamOptions): Input.Issue | undefined => {
  for (const key of streamDeadlines) {
    if (options[key] === undefined) continue
    const checked = Input.optionalDuration(key, options[key], undefined)
    if (Result.isFailure(checked)) return checked.failure
  }
  if (options.resume === undefined) return undefined
  const resume = resumeOf(options.resume)
  return Result.isFailure(resume) ? resume.failure : undefined
}

// A `lead` is a step, read as one when the plan is built.
const kinds = [
  ["onRetry", "function"],
  ["lead", "object"]
] as const

/**
 * A key of `options` the entry point does not take (a misspelt `timout`), or an `onRetry` that
 * is not a function (a `lead` not a step), as its refusal.
 */
export const unknownOption = (options: object, known: ReadonlySet<string>): ModelError | undefined => {
  let issue: Input.Issue | undefined
  try {
    issue =
      Input.notAnObject("options", options) ??
      Input.unknownKey(options, known) ??
      Input.notOfKind(options, kinds) ??
      unreadable(options)
  } catch (thrown) {
    // A getter (or a `Proxy` trap) that throws, as the executor refuses it: an issue naming the
    // field, not a throw out of the entry point or a defect of the call where it is read next.
    issue = thrownIssue(options, thrown)
  }
  return issue === undefined ? undefined : invalidRequest(issue.path, issue.message)
}

// Every field read once, here, where a throw is caught: the call reads them again outside any try.
const unreadable = (options: object): undefined => {
  for (const key in options) (options as Record<string, unknown>)[key]
  return undefined
}

// A request's plan, built without an Effect (a batch starts its items from JavaScript):
// the plan, or the request's refusal (counted).
export interface Apply {
  (request: GenerateRequest, options: CallOptions, hedgeAfter: Duration.Duration | undefined): Routed | ModelError
  /** A call on this chain refused before its plan (a misspelt option key), counted as `apply`'s refusals are. */
  readonly refuse: (error: ModelError) => ModelError
}

export const applied = (routed: Routed | ModelError): Effect.Effect<Routed, ModelError> =>
  routed instanceof ModelError ? Effect.fail(routed) : Effect.succeed(routed)

/**
 * A refusal naming the provider the call was meant for, as the executor's and a stream's do: a
 * caller told only "the prompt is empty" cannot tell which of its chains refused it.
 */
export const namingProvider = (error: ModelError, provider: string): ModelError =>
  error.provider !== undefined
    ? error
    : new ModelError({ reason: error.reason, message: error.message, field: error.field, cause: error.cause, provider })

/**
 * A call refused before it runs (its request or an option), counted under the provider and
 * domain it was meant for as the executor counts its own, and its error naming that provider.
 */
export const countedRefusal = (
  stats: StatsService,
  error: ModelError,
  provider: string,
  domain: string | undefined
): ModelError => {
  const series = stats.series(provider, domain)
  series.requests++
  series.fail(error.reason)
  return namingProvider(error, provider)
}

type Hook = NonNullable<Plan<ProviderService, unknown>["onRetry"]>

/**
 * A call's `onRetry` as its plans' hook: one per callback (`retryHookOf`).
 */
export const retryHook = (onRetry: CallOptions["onRetry"]): Hook | undefined =>
  onRetry === undefined ? undefined : retryHookOf(onRetry)

const tokensOf = (request: GenerateRequest) => estimateInputTokens(request) + (request.maxTokens ?? 0)

/** Builds the router's planner, once. */
export const makePlanner = (env: Env) => {
  const { executor, domains, providers, stats } = env
  const cache = executor.guards.cache

  const resolve = (name: string) =>
    Effect.flatMap(domains.get(name), (domain) =>
      Effect.map(providers.get(domain.provider), (provider) => ({ domain, provider }))
    )

  const chain: (names: string | ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<Domain>, ModelError> =
    Effect.fnUntraced(function* (names: string | ReadonlyArray<string>) {
      if (typeof names === "string") {
        // A domain's chain: its `fallback` list, each listed domain followed by its own (depth
        // first), every domain once: `support → ollama → offline` reaches `offline` from `support`.
        const first = yield* domains.get(names)
        const chain: Array<Domain> = [first]
        const seen = new Set([first.name])
        const follow = (domain: Domain): Effect.Effect<void, ModelError> =>
          Effect.forEach(
            domain.fallback ?? [],
            (name) =>
              seen.has(name)
                ? Effect.void
                : Effect.flatMap(domains.get(name), (next) => {
                    if (seen.has(next.name)) return Effect.void
                    seen.add(next.name)
                    chain.push(next)
                    return follow(next)
                  }),
            { discard: true }
          )
        yield* follow(first)
        return chain
      }
      if (!isList(names)) return yield* Effect.fail(invalidRequest("domains", "expected an array of domain names"))
      if (names.length === 0) return yield* Effect.fail(noDomains)
      const repeated = repeatedDomain(names)
      if (repeated !== undefined) return yield* Effect.fail(repeated)
      return yield* Effect.forEach(names, (name) => domains.get(name))
    })

  // A domain's step without the request's tokens, built once per chain.
  const templateOf = (domain: Domain) =>
    Effect.map(
      providers.get(domain.provider),
      (provider): DomainStep => ({
        ...executor.stepFor(provider, { domain: domain.name, timeout: domain.timeout, retry: domain.retry ?? false }),
        domainConfig: domain,
        cacheable: domain.cache !== false
      })
    )

  // A call refused before any step runs is counted on the chain's first step.
  const refusedNow = (error: ModelError, first: Step<ProviderService>): ModelError =>
    countedRefusal(stats, error, first.name, first.domain)

  // Resolves the chain once; `apply` then builds a request's plan without resolving it again.
  const prepareWith: (
    names: string | ReadonlyArray<string>,
    lead: Step<ProviderService> | undefined
  ) => Effect.Effect<Apply, ModelError> = Effect.fnUntraced(function* (
    names: string | ReadonlyArray<string>,
    lead: Step<ProviderService> | undefined
  ) {
    const list = lead !== undefined && isList(names) && names.length === 0 ? [] : yield* chain(names)
    const templates = yield* Effect.forEach(list, templateOf)
    const firstDomain = lead === undefined ? templates[0] : undefined
    const head = lead ?? templates[0]!
    const ownHedge = typeof names === "string" ? firstDomain?.domainConfig.hedgeAfter : undefined
    const build = (
      valid: GenerateRequest,
      options: CallOptions,
      hedgeAfter: Duration.Duration | undefined
    ): Routed | ModelError => {
      const flag = Input.notABoolean(options, callFlags)
      if (flag !== undefined) return refusedNow(invalidRequest(flag.path, flag.message), head)
      let totalTimeout = firstDomain?.domainConfig.totalTimeout
      if (options.timeout !== undefined) {
        const checked = Input.duration("timeout", options.timeout)
        if (Result.isFailure(checked)) return refusedNow(invalidRequest("timeout", checked.failure.message), head)
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
      const plan: Plan<ProviderService, GenerateResponse> = {
        steps: steps as unknown as readonly [Step<ProviderService>, ...Array<Step<ProviderService>>],
        totalTimeout,
        hedgeAfter: hedgeAfter ?? ownHedge,
        cache: useCache
          ? {
              guard: cache!,
              key: cache!.key({
                provider: first.name,
                request: keyedRequest(
                  firstDomain === undefined ? valid : applyTo(firstDomain.domainConfig, valid),
                  first.target.defaultModel
                )
              }),
              allowStale: options.allowStale ?? false
            }
          : undefined,
        onRetry: retryHook(options.onRetry),
        usageOf: (response: GenerateResponse) => response.usage
      }
      return {
        plan,
        call: (provider, step) => provider.generate(requestFor(step, valid)),
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
    const apply = (request: GenerateRequest, options: CallOptions, hedgeAfter: Duration.Duration | undefined) => {
      const error = checkGenerate(request, executor.limits)
      return error === undefined ? build(request, options, hedgeAfter) : refusedNow(error, head)
    }
    return Object.assign(apply, { refuse: (error: ModelError) => refusedNow(error, head) }) satisfies Apply
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

  // A call refused for its options before its plan is built (a misspelt key, a hedge's `after`):
  // counted on its chain as its request's refusal would be. On domains that resolve to no chain
  // (an unknown name) there is no series to count it on, and the options' error is the one told.
  const refusedOn = (names: string | ReadonlyArray<string>, error: ModelError): Effect.Effect<never, ModelError> =>
    Effect.matchEffect(applyOf(names, undefined), {
      onFailure: () => Effect.fail(error),
      onSuccess: (apply) => Effect.fail(apply.refuse(error))
    })

  return { resolve, chain, applyOf, planWith, refusedOn, domainCount: domains.all.length }
}

/** The router's planner, built once by {@link makePlanner}. */
export type Planner = ReturnType<typeof makePlanner>
