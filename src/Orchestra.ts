/**
 * The manager: one layer that builds the providers once and wires the stats, the shared
 * policies of each provider (breaker, rate limit, cache), the executor, the domains, the
 * router and batches together. Closing its scope stops admitting work, lets running calls
 * and streams finish up to the shutdown deadline, interrupts the rest and releases the
 * providers. (SIGINT / SIGTERM under `NodeRuntime.runMain` interrupt the main fiber, and the
 * calls running on it, before the scope closes: docs/orchestration.md shows how to drain them.)
 *
 * @since 0.1.0
 */
import { Effect, Layer, Result } from "effect"
import * as Batch from "./Batch.js"
import * as CircuitBreaker from "./CircuitBreaker.js"
import { type Domain, type DomainInput, type Domains, layerDomains, layerProviders, Providers } from "./Domain.js"
import * as Executor from "./Executor.js"
import * as Input from "./Input.js"
import { ModelProvider } from "./Model.js"
import * as RateLimit from "./RateLimit.js"
import * as ResponseCache from "./ResponseCache.js"
import * as Router from "./Router.js"
import * as Stats from "./Stats.js"
import { domainsOf } from "./orchestra/domains.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<P extends Record<string, Layer.Layer<ModelProvider, unknown, unknown>>> {
  /** Named provider layers; each is built once. */
  readonly providers: P
  /** The provider of the predefined domains and of calls without a domain. Default: the first. */
  readonly defaultProvider?: (keyof P & string) | undefined
  /** Domains replacing the predefined `support`, `technical` and `finance`. */
  readonly domains?: ReadonlyArray<Domain | DomainInput> | undefined
  /** Domains added to the predefined ones; a predefined name is refused (use `overrideDomains`). */
  readonly extraDomains?: ReadonlyArray<Domain | DomainInput> | undefined
  /** Domains replacing predefined ones of the same name, explicitly. */
  readonly overrideDomains?: ReadonlyArray<Domain | DomainInput> | undefined
  readonly executor?: Executor.Options | undefined
  /** Calls running at once across every batch (a positive integer). Default 5. */
  readonly maxConcurrent?: number | undefined
  /**
   * The most items one batch takes (a positive integer). Default 1,000,000. A longer batch fails
   * its run with an `InvalidRequest` naming `items` (see `Batch.Options`).
   *
   * @since 0.3.0
   */
  readonly maxItems?: number | undefined
  /**
   * Shared breakers, one circuit per provider (default on, in memory); `false` disables
   * them; a layer (`CircuitBreaker.layerRedis(...)`) shares them across processes.
   */
  readonly breakers?:
    | CircuitBreaker.Options
    | false
    | Layer.Layer<CircuitBreaker.Breakers, unknown, unknown>
    | undefined
  /** Rate limits per provider (default off); a layer (`RateLimit.layerRedis(...)`) shares them. */
  readonly rateLimits?: RateLimit.Options | false | Layer.Layer<RateLimit.RateLimits, unknown, unknown> | undefined
  /** A response cache (default off); a layer (`ResponseCache.layerRedis(...)`) shares it. */
  readonly cache?:
    | ResponseCache.MemoryOptions
    | false
    | Layer.Layer<ResponseCache.ResponseCache, unknown, unknown>
    | undefined
}

/**
 * Everything the manager provides.
 *
 * @since 0.1.0
 * @category models
 */
export type Services =
  | Executor.Executor
  | Stats.Stats
  | Router.Router
  | Batch.Batch
  | Domains
  | Providers
  | ModelProvider
  | CircuitBreaker.Breakers

const optionKeys: ReadonlySet<string> = new Set([
  "providers",
  "defaultProvider",
  "domains",
  "extraDomains",
  "overrideDomains",
  "executor",
  "maxConcurrent",
  "maxItems",
  "breakers",
  "rateLimits",
  "cache"
])

// The longest list the options hold anywhere (`domains`, a domain's `fallback`), as `Domain.check` reads them: a
// sparse `new Array(2 ** 32 - 1)` costs nothing to make, and copying it held the build for half a minute.
const maxListLength = 1_000_000

const isLayer = (u: unknown): u is Layer.Layer<never, unknown, unknown> => Layer.isLayer(u)

const partOptions = [
  ["executor", "an object of executor options"],
  ["breakers", "an object of breaker options, false or a layer"],
  ["rateLimits", "an object of rate limits, false or a layer"],
  ["cache", "an object of cache options, false or a layer"]
] as const

/**
 * The domains of a manager: the predefined ones (or `domains`), plus `extraDomains`, with
 * `overrideDomains` replacing by name. Checked (an `OptionError` names the field).
 *
 * @since 0.2.0
 * @category constructors
 */
export { domainsOf } from "./orchestra/domains.js"

// A key a path may show as it is: short, without a quote, backslash or control character.
const plainName = (key: string): boolean => key.length <= 80 && !/["\\\p{Cc}]/u.test(key)

// A domain names its provider by key (a trimmed, non-empty name), and a gateway splits `provider/model` at
// the first "/": a key outside both could never be named, and the mistake was reported at a predefined
// domain's `provider`, which the user never wrote.
const providerKeyIssue = (key: string): Input.Issue | undefined =>
  key.length > 0 && key.trim() === key && !key.includes("/")
    ? undefined
    : {
        path: providerPath(key),
        message: `expected a provider key such as "main" (not empty, no leading or trailing spaces, no "/"), got ${Input.shown(key)}`
      }

const providerPath = (key: string): string => `providers.${plainName(key) ? key : Input.shown(key)}`

/**
 * Limits are kept under a provider's `name` (the one in answers, metrics and breakers), which
 * only the built provider knows: a key naming no provider would limit nothing, silently.
 */
const limitsNameProviders = (limits: RateLimit.Options): Layer.Layer<never, Input.OptionError, Providers> =>
  Layer.effectDiscard(
    Effect.gen(function* () {
      const keys =
        typeof limits.providers === "object" && limits.providers !== null ? Object.keys(limits.providers) : []
      if (keys.length === 0) return
      const registry = yield* Providers
      const named = new Map<string, string>()
      for (const key of registry.names) named.set(key, (yield* Effect.orDie(registry.get(key))).name)
      const names = new Set(named.values())
      const unknown = keys.find((key) => !names.has(key))
      if (unknown === undefined) return
      const renamed = named.get(unknown)
      return yield* Input.orOptionError(
        Result.fail({
          path: `rateLimits.providers.${plainName(unknown) ? unknown : Input.shown(unknown)}`,
          message:
            renamed === undefined
              ? `no provider named ${Input.shown(unknown)} (named: ${[...names].join(", ")})`
              : `provider ${Input.shown(unknown)} is named ${Input.shown(renamed)}: its limits go under that name`
        })
      )
    })
  )

// An OptionError of a layer built from the option `path` names the field under it (`executor.timeout`).
const under =
  (path: string) =>
  <A, R>(layer: Layer.Layer<A, Input.OptionError, R>): Layer.Layer<A, Input.OptionError, R> =>
    Layer.catchTag(
      layer,
      "OptionError",
      (error) =>
        Layer.effectDiscard(Effect.fail(Input.underPath(error, `${path}.`))) as unknown as Layer.Layer<
          A,
          Input.OptionError,
          R
        >
    )

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = <const P extends Record<string, Layer.Layer<ModelProvider, unknown, unknown>>>(
  given: Options<P>
): Layer.Layer<
  Services,
  Input.OptionError | { [K in keyof P]: Layer.Error<P[K]> }[keyof P],
  { [K in keyof P]: Layer.Services<P[K]> }[keyof P]
> =>
  Layer.unwrap(
    Effect.gen(function* () {
      // Read once, all of it: a getter that throws is an OptionError naming the field (not a
      // defect of the build), and no layer below reads the caller's objects again.
      const options = yield* Input.orOptionError(Input.snapshot(given, "", "options", maxListLength))
      if (typeof options !== "object" || options === null || Array.isArray(options)) {
        return yield* Input.orOptionError(
          Result.fail({ path: "options", message: `expected an object ({ providers }), got ${Input.kindOf(options)}` })
        )
      }
      const unknown = Input.unknownKey(options, optionKeys)
      if (unknown !== undefined) return yield* Effect.fail(Input.toOptionError(unknown))
      const providersGiven = options.providers as unknown
      if (typeof providersGiven !== "object" || providersGiven === null || Array.isArray(providersGiven)) {
        return yield* Effect.fail(
          new Input.OptionError({
            path: "providers",
            message: `expected an object of provider layers ({ main: Mock.layer() }), got ${Input.kindOf(providersGiven)}`
          })
        )
      }
      const names = Object.keys(options.providers)
      for (const name of names) {
        const key = providerKeyIssue(name)
        if (key !== undefined) return yield* Effect.fail(Input.toOptionError(key))
        const provider: unknown = options.providers[name]
        if (!isLayer(provider)) {
          return yield* Effect.fail(
            new Input.OptionError({
              path: providerPath(name),
              message: `expected a provider layer (Mock.layer(), OpenAiCompat.layer(...)), got ${Input.kindOf(provider)}`
            })
          )
        }
      }
      if (names.length === 0) {
        return yield* Effect.fail(
          new Input.OptionError({ path: "providers", message: "invalid providers: give at least one" })
        )
      }
      const givenDefault: unknown = options.defaultProvider
      if (givenDefault !== undefined && typeof givenDefault !== "string") {
        return yield* Input.orOptionError(
          Result.fail({
            path: "defaultProvider",
            message: `expected a provider name, got ${Input.kindOf(givenDefault)}`
          })
        )
      }
      const defaultProvider = givenDefault ?? names[0]!
      if (!names.includes(defaultProvider)) {
        return yield* Input.orOptionError(
          Result.fail({
            path: "defaultProvider",
            message: `no provider named ${Input.shown(defaultProvider)} (given: ${names.join(", ")})`
          })
        )
      }
      // A part's options that are not an object would be read key by key (`"yes"` as `cache.0`, an
      // array as no options at all): refused here, naming the part.
      for (const [part, expected] of partOptions) {
        const value: unknown = options[part]
        if (value === undefined || (part !== "executor" && (value === false || isLayer(value)))) continue
        if (typeof value !== "object" || value === null || Array.isArray(value)) {
          return yield* Input.orOptionError(
            Result.fail({ path: part, message: `expected ${expected}, got ${Input.kindOf(value)}` })
          )
        }
      }
      const domains = yield* Input.orOptionError(domainsOf({ ...options, defaultProvider, providerNames: names }))
      const providers = layerProviders(options.providers)
      const defaultModel = Layer.effect(
        ModelProvider,
        Effect.flatMap(Providers, (registry) => registry.get(defaultProvider))
      )
      const breakers =
        options.breakers === false
          ? Layer.empty
          : isLayer(options.breakers)
            ? options.breakers
            : under("breakers")(CircuitBreaker.layerMemory(options.breakers ?? {}))
      const limits =
        options.rateLimits === undefined || options.rateLimits === false
          ? Layer.empty
          : isLayer(options.rateLimits)
            ? options.rateLimits
            : under("rateLimits")(RateLimit.layerMemory(options.rateLimits))
      const cache =
        options.cache === undefined || options.cache === false
          ? Layer.empty
          : isLayer(options.cache)
            ? options.cache
            : under("cache")(ResponseCache.layerMemory(options.cache))
      const guards = Layer.mergeAll(breakers, limits, cache)
      const limitNames =
        options.rateLimits === undefined || options.rateLimits === false || isLayer(options.rateLimits)
          ? Layer.empty
          : limitsNameProviders(options.rateLimits)
      // `Stats.layer` and `Router.layer` are constants: a manager provided inside another one's region
      // would find them in the inherited memo map and reuse the outer manager's Stats and Router.
      const core = under("executor")(Executor.layer(options.executor)).pipe(
        Layer.provideMerge(Layer.mergeAll(Layer.fresh(Stats.layer), layerDomains(domains))),
        Layer.provideMerge(Layer.merge(defaultModel, limitNames)),
        Layer.provideMerge(providers),
        Layer.provideMerge(guards)
      )
      // Batch checks them (an OptionError naming `maxConcurrent` or `maxItems`, as given here).
      const batch = Batch.layer({ maxConcurrent: options.maxConcurrent, maxItems: options.maxItems })
      return batch.pipe(Layer.provideMerge(Layer.fresh(Router.layer)), Layer.provideMerge(core))
    })
  ) as never
