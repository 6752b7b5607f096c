/**
 * Named domains (a provider, a model, a system prompt, and the policies of their calls)
 * and the registry of named providers they refer to. Providers are built once per
 * application; their breaker, rate limit and cache are shared by every domain on them.
 *
 * @since 0.1.0
 */
import { Context, Duration, Effect, Layer, Result, Schema, type Scope } from "effect"
import { invalidRequest, ModelError } from "./AiError.js"
import * as Input from "./Input.js"
import { agentDomain, noDomain, otherSeries, pipelineDomain } from "./Metrics.js"
import { type GenerateRequest, ModelProvider, type Service as ProviderService } from "./Model.js"
import { RetryPolicy, retry as retryPolicy } from "./Policy.js"
import { lengthIssue, providerNameIssue, textIssue } from "./stats/labels.js"

const Name = Schema.String.check(Schema.isTrimmed(), Schema.isMinLength(1))

/**
 * A domain: where its calls go and the policies they run with.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Domain = Schema.Struct({
  name: Name,
  /** Name of a provider in the `Providers` registry. */
  provider: Name,
  model: Schema.optional(Name),
  system: Schema.optional(Schema.String),
  description: Schema.optional(Schema.String),
  /** Deadline of each attempt (default: the executor's). */
  timeout: Schema.optional(Input.DurationFromInput),
  /** Deadline of a whole call on this domain, retries and fallbacks included. */
  totalTimeout: Schema.optional(Input.DurationFromInput),
  /** Retries on this domain's provider (none when absent). */
  retry: Schema.optional(RetryPolicy),
  temperature: Schema.optional(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 2 }))),
  maxTokens: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1_000_000 }))),
  /** Domains tried in order when this one fails in a way that falls back. */
  fallback: Schema.optional(Schema.Array(Name)),
  /** With `fallback`: start the next domain after this long without an answer (hedging); above zero. */
  hedgeAfter: Schema.optional(Input.DurationFromInput),
  /**
   * Use the response cache when the application has one (default true). `false`: its calls
   * are not cached, and what it answers as another domain's fallback is not kept either.
   */
  cache: Schema.optional(Schema.Boolean)
})

/**
 * @since 0.1.0
 * @category models
 */
export type Domain = typeof Domain.Type

/**
 * What a config file holds: durations as numbers (ms) or strings.
 *
 * @since 0.1.0
 * @category models
 */
export type DomainInput = typeof Domain.Encoded

/**
 * The built-in domains, on the provider named `defaultProvider`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const predefined = (defaultProvider = "default"): ReadonlyArray<Domain> => [
  {
    name: "support",
    provider: defaultProvider,
    description: "Customer support: friendly, short, actionable",
    system:
      "You are a customer support agent. Answer kindly and briefly, give concrete next steps, and say when a human should take over.",
    retry: retryPolicy({ maxAttempts: 3 })
  },
  {
    name: "technical",
    provider: defaultProvider,
    description: "Engineering questions: precise, with code where it helps",
    system:
      "You are a senior software engineer. Answer precisely, state assumptions, and include a minimal code example when it helps.",
    retry: retryPolicy({ maxAttempts: 3 })
  },
  {
    name: "finance",
    provider: defaultProvider,
    description: "Finance questions: careful, with figures and caveats",
    system:
      "You are a careful financial analyst. Show the figures you rely on, separate facts from estimates, and never give personal investment advice.",
    retry: retryPolicy({ maxAttempts: 2 }),
    temperature: 0.2
  }
]

/**
 * The built-in domain names.
 *
 * @since 0.2.0
 * @category constants
 */
export const predefinedNames: ReadonlyArray<string> = ["support", "technical", "finance"]

// reportInput: a value out of range is quoted (`got 3`), as every other option's is; a domain holds no secret.
const decodeDomain = Schema.decodeUnknownResult(Domain, { onExcessProperty: "error", reportInput: true })

// The schema's words (`Missing key`, `Expected number`) in the form of the library's own messages and the config
// file's checks: lower case, `missing (required)`, `unknown field`.
const domainIssue = (error: Schema.SchemaError, at: string): Input.Issue => {
  const issue = Input.issueOf(error, at, Input.leafHook)
  return { path: issue.path, message: issue.message.replace(/^Expected /, "expected ") }
}

// Domain names that label other series; `Object.create(null)`: "toString" is a fine domain name.
const reserved: Readonly<Record<string, string>> = Object.assign(Object.create(null), {
  [noDomain]: "the calls made without a domain",
  [pipelineDomain]: "the steps of pipelines",
  [agentDomain]: "the calls of HTTP agents",
  [otherSeries]: "the calls past the series bound (Stats.maxSeries)"
})

const positive = (path: string, d: Duration.Duration | undefined): Input.Checked<void> =>
  d !== undefined && Duration.isZero(d)
    ? Result.fail({ path, message: "expected a duration above zero, got 0" })
    : Result.succeed(undefined)

// The longest list domains are read from, or a domain holds (its `fallback`): a sparse `new Array(2 ** 32 - 1)`
// costs nothing to make, and copying (then decoding) it held the build for minutes.
const maxListLength = 1_000_000

/**
 * How {@link check} and {@link fromConfig} read a list of domains.
 *
 * @since 0.3.0
 * @category models
 */
export interface CheckOptions {
  /** The path of the list in messages. Default `"domains"`. */
  readonly path?: string | undefined
  /**
   * Domains outside the list that its fallbacks may name: the list is added to others
   * (`extraDomains` falling back to the predefined `support`, say `Domain.predefinedNames`).
   */
  readonly fallbackTo?: ReadonlyArray<string> | undefined
}

const checkOptionKeys: ReadonlySet<string> = new Set(["path", "fallbackTo"])

// A string `fallbackTo` would match parts of names (`"support".includes("sup")`); a misspelt key
// would be ignored. `null` is no value, as `undefined` is.
const checkOptionsIssue = (given: CheckOptions): Input.Issue | undefined => {
  const unknown = Input.unknownKey(given, checkOptionKeys, "options.")
  if (unknown !== undefined) return unknown
  const { path, fallbackTo } = given
  if (path !== undefined && path !== null && (typeof path !== "string" || path.length === 0)) {
    return {
      path: "options.path",
      message: 'expected the non-empty path of the list in messages, such as "extraDomains"'
    }
  }
  if (fallbackTo === undefined || fallbackTo === null) return undefined
  if (!Array.isArray(fallbackTo)) return { path: "options.fallbackTo", message: "expected an array of domain names" }
  const at = fallbackTo.findIndex((name) => typeof name !== "string")
  return at === -1 ? undefined : { path: `options.fallbackTo[${at}]`, message: "expected a domain name" }
}

/**
 * Checks domains (a config value or domains built in code). A bad value fails with the
 * path of the first wrong field, e.g. `domains[1].retry.maxAttempts`; duplicate names,
 * fallbacks to domains neither in the list nor in `fallbackTo`, and the name `"none"` (the
 * `domain` of calls made without one, `Metrics.noDomain`), `"pipeline"` and `"agent"` (the
 * `domain` of a pipeline's steps and of the HTTP agents' calls: a domain of either name would
 * add its figures to theirs) and `"(other)"` (`Metrics.otherSeries`, the calls past
 * `Stats.maxSeries` pairs) are refused, as is a name holding a lone surrogate (`"\uD800"`, no
 * UTF-8 form: its metric label would print as another's) or longer than 256 characters (its
 * calls would count under `"(other)"`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const check = (input: unknown, options: string | CheckOptions = {}): Input.Checked<ReadonlyArray<Domain>> => {
  if (typeof options !== "string" && (typeof options !== "object" || options === null || Array.isArray(options))) {
    return Result.fail({
      path: "options",
      message: `expected a path or { path, fallbackTo }, got ${Input.kindOf(options)}`
    })
  }
  const given: CheckOptions = typeof options === "string" ? { path: options } : options
  const wrong = checkOptionsIssue(given)
  if (wrong !== undefined) return Result.fail(wrong)
  const path = given.path ?? "domains"
  const fallbackTo = given.fallbackTo ?? []
  // Read once, all of it: a getter (or a `Proxy` trap) that throws is the issue of its field, not an exception.
  const read = Input.snapshot(input, path, path, maxListLength)
  if (Result.isFailure(read)) return Result.fail(read.failure)
  const list: unknown = read.success
  if (!Array.isArray(list)) return Result.fail({ path, message: "expected an array of domains" })
  const domains: Array<Domain> = []
  const names = new Set<string>()
  for (const [i, raw] of list.entries()) {
    const at = `${path}[${i}]`
    const decoded = decodeDomain(encodeDurations(raw))
    if (Result.isFailure(decoded)) return Result.fail(domainIssue(decoded.failure, at))
    const domain = decoded.success
    if (names.has(domain.name)) return Result.fail({ path: `${at}.name`, message: `duplicate domain "${domain.name}"` })
    const reservedFor = reserved[domain.name]
    if (reservedFor !== undefined) {
      return Result.fail({
        path: `${at}.name`,
        message: `"${domain.name}" is reserved: it names ${reservedFor} in stats and metrics; give the domain another name`
      })
    }
    const text = textIssue(domain.name, `${at}.name`)
    if (text !== undefined) return Result.fail(text)
    const long = lengthIssue(domain.name, `${at}.name`)
    if (long !== undefined) return Result.fail(long)
    const zero = Input.all([
      positive(`${at}.timeout`, domain.timeout),
      positive(`${at}.totalTimeout`, domain.totalTimeout),
      // A zero delay would start the whole chain at once, every call (`router.hedge` refuses it too).
      positive(`${at}.hedgeAfter`, domain.hedgeAfter)
    ])
    if (Result.isFailure(zero)) return Result.fail(zero.failure)
    names.add(domain.name)
    domains.push(domain)
  }
  for (const [i, domain] of domains.entries()) {
    // A hedge starts the next domain of the fallback: without one the delay would do nothing.
    if (domain.hedgeAfter !== undefined && (domain.fallback ?? []).length === 0) {
      return Result.fail({
        path: `${path}[${i}].hedgeAfter`,
        message: "hedging starts the domain's fallback: give it a fallback, or leave hedgeAfter out"
      })
    }
    for (const [j, next] of (domain.fallback ?? []).entries()) {
      if (!names.has(next) && !fallbackTo.includes(next)) {
        return Result.fail({ path: `${path}[${i}].fallback[${j}]`, message: `unknown domain "${next}"` })
      }
      if (next === domain.name) {
        return Result.fail({ path: `${path}[${i}].fallback[${j}]`, message: "a domain cannot fall back to itself" })
      }
      if (domain.fallback!.indexOf(next) < j) {
        return Result.fail({ path: `${path}[${i}].fallback[${j}]`, message: `"${next}" is already in the chain` })
      }
    }
  }
  return Result.succeed(domains)
}

// Domains built in code may hold decoded values (Durations, a decoded RetryPolicy): encode them back.
const encodeDurations = (raw: unknown): unknown => {
  if (typeof raw !== "object" || raw === null) return raw
  const out: Record<string, unknown> = { ...(raw as Record<string, unknown>) }
  for (const key of ["timeout", "totalTimeout", "hedgeAfter"]) {
    const v = out[key]
    if (Duration.isDuration(v) && Duration.isFinite(v)) out[key] = Duration.toMillis(v)
  }
  const retry = out.retry
  if (typeof retry === "object" && retry !== null) {
    const r: Record<string, unknown> = { ...(retry as Record<string, unknown>) }
    for (const [k, v] of Object.entries(r))
      if (Duration.isDuration(v) && Duration.isFinite(v)) r[k] = Duration.toMillis(v)
    out.retry = r
  }
  return out
}

/**
 * Validates domains from a config value (an `OptionError` naming the field). Domains meant
 * for `extraDomains` that fall back to predefined ones name them in `fallbackTo`.
 *
 * @example
 * ```ts
 * import * as Domain from "effect-orchestra/Domain"
 *
 * const extra = Domain.fromConfig([{ name: "triage", provider: "main", fallback: ["support"] }], {
 *   path: "extraDomains",
 *   fallbackTo: Domain.predefinedNames
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromConfig = (
  input: unknown,
  options: string | CheckOptions = {}
): Effect.Effect<ReadonlyArray<Domain>, Input.OptionError> => Input.orOptionError(check(input, options))

// A request brings its own system prompt as `system` or as a system message of its
// conversation (effect/ai prompts, OpenAI-style `messages`, the facade's `context`).
const hasSystem = (request: GenerateRequest): boolean => {
  if (request.system !== undefined) return true
  if (request.messages !== undefined) for (const message of request.messages) if (message.role === "system") return true
  return false
}

/**
 * Applies a domain to a request: its system prompt (unless the request has one, as `system`
 * or as a system message), model and sampling defaults.
 *
 * @since 0.1.0
 * @category utils
 */
export const applyTo = (domain: Domain, request: GenerateRequest): GenerateRequest => ({
  ...request,
  ...(domain.system !== undefined && !hasSystem(request) ? { system: domain.system } : {}),
  ...(request.model === undefined && domain.model !== undefined ? { model: domain.model } : {}),
  ...(request.temperature === undefined && domain.temperature !== undefined ? { temperature: domain.temperature } : {}),
  ...(request.maxTokens === undefined && domain.maxTokens !== undefined ? { maxTokens: domain.maxTokens } : {})
})

/**
 * @since 0.1.0
 * @category models
 */
export interface DomainsService {
  /** Fails with an `InvalidRequest` naming the field `domain` and the known names. */
  readonly get: (name: string) => Effect.Effect<Domain, ModelError>
  readonly all: ReadonlyArray<Domain>
}

/**
 * @since 0.1.0
 * @category services
 */
export class Domains extends Context.Service<Domains, DomainsService>()("effect-orchestra/Domains") {}

/**
 * The registry of domains, checked as {@link fromConfig} checks them (duplicate names,
 * fallbacks to domains not in the list, reserved names, bad fields): an `OptionError`
 * naming the field, e.g. `domains[1].name`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeDomains = (
  domains: ReadonlyArray<Domain | DomainInput>
): Effect.Effect<DomainsService, Input.OptionError> => Effect.map(fromConfig(domains), registry)

// The names an unknown-name message shows (a gateway answers it to its client): some, not thousands.
const KNOWN_SHOWN = 20

// A name a caller gave, as a message says it: quoted as JSON, so a quote or a line break in it cannot
// forge the rest of the message or a log line, and cut short (it may be a megabyte of a client's input).
const quotedName = Input.shown

const registry = (domains: ReadonlyArray<Domain>): DomainsService => {
  const byName = new Map(domains.map((d) => [d.name, d] as const))
  const all = Array.from(byName.keys())
  const names = all.length > KNOWN_SHOWN ? [...all.slice(0, KNOWN_SHOWN), `and ${all.length - KNOWN_SHOWN} more`] : all
  return {
    all: Array.from(byName.values()),
    get: (name) => {
      if (typeof name !== "string")
        return Effect.fail(invalidRequest("domain", `expected a domain name, got ${Input.kindOf(name)}`))
      const found = byName.get(name)
      return found === undefined
        ? Effect.fail(invalidRequest("domain", `unknown domain ${quotedName(name)} (known: ${names.join(", ")})`))
        : Effect.succeed(found)
    }
  }
}

/**
 * Domains given in code, checked (an `OptionError` naming the field).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDomains = (domains: ReadonlyArray<Domain | DomainInput>): Layer.Layer<Domains, Input.OptionError> =>
  Layer.effect(Domains, makeDomains(domains))

/**
 * Domains from a config value (e.g. parsed JSON), validated.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDomainsFromConfig = (input: unknown): Layer.Layer<Domains, Input.OptionError> =>
  Layer.effect(Domains, Effect.map(fromConfig(input), registry))

/**
 * @since 0.1.0
 * @category models
 */
export interface ProvidersService {
  readonly get: (name: string) => Effect.Effect<ProviderService, ModelError>
  readonly names: ReadonlyArray<string>
}

/**
 * The application's named providers, each built once.
 *
 * @since 0.1.0
 * @category services
 */
export class Providers extends Context.Service<Providers, ProvidersService>()("effect-orchestra/Providers") {}

// Breakers, rate limits, provider slots, cache keys, stats and metrics go by a provider's own
// name: one that is no name labelled every series of its calls (each call of a router over it was
// refused naming `steps[0].name`), and two providers of one name would share them all, unseen.
const providersIssue = (entries: ReadonlyArray<readonly [string, unknown]>): Input.Issue | undefined => {
  const keyOf = new Map<string, string>()
  for (const [key, provider] of entries) {
    if (typeof provider !== "object" || provider === null) {
      return { path: `providers.${key}`, message: `expected a provider, got ${Input.kindOf(provider)}` }
    }
    let name: string
    let maxConcurrency: unknown
    let field = "name"
    try {
      name = (provider as { readonly name: string }).name
      field = "maxConcurrency"
      maxConcurrency = (provider as { readonly maxConcurrency?: unknown }).maxConcurrency
    } catch (thrown) {
      // A provider of a class whose getter throws (no config), or a revoked `Proxy`: its field's issue, not a defect.
      return { path: `providers.${key}.${field}`, message: `reading it threw: ${Input.thrownMessage(thrown)}` }
    }
    const reserved = providerNameIssue(name, `providers.${key}.name`)
    if (reserved !== undefined) return reserved
    const other = keyOf.get(name)
    if (other !== undefined) {
      return {
        path: `providers.${key}.name`,
        message: `"${name}" is already the name of providers.${other}: two providers of one name would share its breaker, rate limits, cache entries and stats; give each its own name`
      }
    }
    keyOf.set(name, key)
    // Its calls' steps claim it as its name's limit: 0 refused each of them, 1.5 was 1.
    if (maxConcurrency !== undefined) {
      const slots = Input.positiveInt(`providers.${key}.maxConcurrency`, maxConcurrency)
      if (Result.isFailure(slots)) return slots.failure
    }
  }
  return undefined
}

const providersRegistry = (providers: Readonly<Record<string, ProviderService>>): ProvidersService => {
  const names = Object.keys(providers)
  return {
    names,
    get: (name) => {
      const found = Object.hasOwn(providers, name) ? providers[name] : undefined
      return found === undefined
        ? Effect.fail(
            new ModelError({
              reason: "Unavailable",
              message: `no provider named ${quotedName(name)} (registered: ${names.join(", ")})`,
              provider: name
            })
          )
        : Effect.succeed(found)
    }
  }
}

/**
 * The registry of providers given in code, checked as {@link layerProviders} checks its own: a
 * value that is no provider, a provider's `name` that is no non-empty string (or is reserved), two
 * providers of one name, a `maxConcurrency` that is no positive integer: an `OptionError` naming
 * the field, e.g. `providers.main.name`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeProviders = (
  providers: Readonly<Record<string, ProviderService>>
): Effect.Effect<ProvidersService, Input.OptionError> =>
  Effect.suspend(() => {
    if (typeof providers !== "object" || providers === null) {
      return Effect.fail(
        new Input.OptionError({ path: "providers", message: `expected an object, got ${Input.kindOf(providers)}` })
      )
    }
    // Copied: a record changed after its check would register what no check saw.
    let entries: ReadonlyArray<readonly [string, ProviderService]>
    try {
      entries = Object.entries(providers)
    } catch (thrown) {
      return Effect.fail(
        new Input.OptionError({ path: "providers", message: `reading it threw: ${Input.thrownMessage(thrown)}` })
      )
    }
    const issue = providersIssue(entries)
    return issue === undefined
      ? Effect.succeed(providersRegistry(Object.fromEntries(entries)))
      : Effect.fail(Input.toOptionError(issue))
  })

/**
 * Builds each provider layer once, in the registry's scope, and registers it by name.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerProviders = <const L extends Record<string, Layer.Layer<ModelProvider, unknown, unknown>>>(
  layers: L
): Layer.Layer<
  Providers,
  { [K in keyof L]: Layer.Error<L[K]> }[keyof L] | Input.OptionError,
  { [K in keyof L]: Layer.Services<L[K]> }[keyof L]
> =>
  Layer.effect(
    Providers,
    Effect.flatMap(
      Effect.forEach(Object.entries(layers), ([name, layer]) =>
        Effect.map(
          Effect.flatMap(Effect.scope, (scope: Scope.Scope) =>
            // A provider's option is named under its key: `providers.main.latency`.
            Effect.mapError(Layer.buildWithScope(layer, scope), (error) => Input.underPath(error, `providers.${name}.`))
          ),
          (context) => [name, Context.get(context, ModelProvider)] as const
        )
      ),
      (entries) => {
        const issue = providersIssue(entries)
        return issue === undefined
          ? Effect.succeed(providersRegistry(Object.fromEntries(entries)))
          : Effect.fail(Input.toOptionError(issue))
      }
    )
  ) as never
