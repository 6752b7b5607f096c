/**
 * A config file made usable: every value checked by the library's own checks (domains,
 * executor options, breakers, rate limits, cache, each provider's options) and every key
 * read from the environment, before anything is built; then the manager layer
 * (`Orchestra.layer`) for it. Every command runs the same checks, so `stats` and `test`
 * agree on what a bad config is.
 *
 * @since 0.1.0
 */
import { Effect, Layer, type Redacted, Result, Schema } from "effect"
import type { ModelError } from "../AiError.js"
import type * as CircuitBreaker from "../CircuitBreaker.js"
import * as Domain from "../Domain.js"
import type * as Executor from "../Executor.js"
import * as Input from "../Input.js"
import type { ModelProvider } from "../Model.js"
import type * as Orchestra from "../Orchestra.js"
import { domainsOf } from "../orchestra/domains.js"
import type * as RateLimit from "../RateLimit.js"
import type * as ResponseCache from "../ResponseCache.js"
import { bundledProviderName, ConfigFileError, formatPath, type Issue, type Loaded, tidy } from "./Config.js"
import type { Provider } from "./ConfigSchema.js"
import * as Providers from "./Providers.js"

/**
 * A config that passed every check, with the keys its providers read.
 *
 * @since 0.2.0
 * @category models
 */
export interface Checked {
  readonly loaded: Loaded
  readonly providers: Readonly<Record<string, Provider>>
  readonly keys: Readonly<Record<string, Redacted.Redacted<string> | undefined>>
  readonly defaultProvider: string
}

/**
 * The providers a config declares (without `providers`: the bundled local model).
 *
 * @since 0.2.0
 * @category utils
 */
export const providersOf = (loaded: Loaded): Readonly<Record<string, Provider>> => {
  const providers: unknown = loaded.config.providers
  if (providers === undefined) return { [bundledProviderName]: { type: "local" } }
  // Not a map: a shape issue already says so.
  return typeof providers === "object" && providers !== null && !Array.isArray(providers)
    ? (providers as Readonly<Record<string, Provider>>)
    : {}
}

const defaultProviderOf = (loaded: Loaded): string => {
  const declared = Object.keys(providersOf(loaded))
  const given: unknown = loaded.config.defaultProvider
  // A wrong one is an issue of its own already; meanwhile the domains are checked on a declared provider, so
  // the predefined ones do not report it again at a `domains[0]` the file does not have.
  return typeof given === "string" && declared.includes(given) ? given : (declared[0] ?? bundledProviderName)
}

/**
 * The names of the domains a config declares, known without building anything.
 *
 * @since 0.1.0
 * @category utils
 */
export const domainNames = (loaded: Loaded): ReadonlyArray<string> => {
  const merged = domainsOf({ ...loaded.config, defaultProvider: defaultProviderOf(loaded) } as never)
  return Result.isSuccess(merged) ? merged.success.map((d) => d.name) : []
}

const sections = ["domains", "extraDomains", "overrideDomains"] as const

/**
 * The paths of some issues, indexed: whether one is at a path, or overlaps it (is at it, under
 * it, above it, or at the root), in the time of the path's length, not of the number of
 * issues (a file may hold a hundred thousand, and each provider and domain is looked up).
 */
interface IssueIndex {
  readonly at: (path: string) => boolean
  readonly overlaps: (path: string) => boolean
}

const indexIssues = (issues: ReadonlyArray<Issue>): IssueIndex => {
  const exact = new Set<string>()
  // Every path an issue lies under: its prefixes that end before a "." or a "[".
  const above = new Set<string>()
  for (const { path } of issues) {
    exact.add(path)
    for (let i = 1; i < path.length; i++) if (path[i] === "." || path[i] === "[") above.add(path.slice(0, i))
  }
  return {
    at: (path) => exact.has(path),
    overlaps: (path) => {
      if (exact.has("(root)") || exact.has(path) || above.has(path)) return true
      for (let i = 1; i < path.length; i++) {
        if ((path[i] === "." || path[i] === "[") && exact.has(path.slice(0, i))) return true
      }
      return false
    }
  }
}

/** Each domain alone (`Domain.check`), duplicates within a section, then the merged list's references. */
const domainIssues = (loaded: Loaded, shape: IssueIndex, defaultProvider: string): ReadonlyArray<Issue> => {
  const { config } = loaded
  const issues: Array<Issue> = []
  const origin = new Map<string, string>()
  for (const section of sections) {
    const list: unknown = config[section]
    if (!Array.isArray(list) || shape.at(section) || shape.at("(root)")) continue
    const seen = new Map<string, number>()
    list.forEach((raw: unknown, i) => {
      if (shape.at(`${section}[${i}]`)) return
      // Alone, a domain's fallback names nothing: they (and the hedge along them) are checked on the merged list below.
      const alone =
        typeof raw === "object" && raw !== null ? { ...raw, fallback: undefined, hedgeAfter: undefined } : raw
      const checked = Domain.check([alone], section)
      if (Result.isFailure(checked)) {
        const { path, message } = checked.failure
        issues.push({ path: path.replace(`${section}[0]`, `${section}[${i}]`), message: tidy(message) })
        return
      }
      const name = checked.success[0]!.name
      const first = seen.get(name)
      if (first !== undefined) {
        issues.push({
          path: `${section}[${i}].name`,
          message: `duplicate domain "${name}" (first at ${section}[${first}])`
        })
        return
      }
      seen.set(name, i)
      if (section === "overrideDomains" || !origin.has(name)) origin.set(name, `${section}[${i}]`)
    })
  }
  // With the providers' names, as the manager checks them: a domain named `provider/model` is refused here too.
  const providerNames = Object.keys(providersOf(loaded))
  // No provider (an issue of its own already): every domain would be refused again for naming none.
  if (issues.length > 0 || sections.some(shape.overlaps) || providerNames.length === 0) return issues
  const merged = domainsOf({ ...config, defaultProvider, providerNames } as never)
  if (Result.isFailure(merged)) return [merged.failure]
  const all = Domain.check(merged.success)
  if (Result.isFailure(all)) {
    // The merged list's index back to where the domain was written.
    const { path, message } = all.failure
    const at = /^domains\[(\d+)\]/.exec(path)
    const domain = at === null ? undefined : merged.success[Number(at[1])]
    const where = domain === undefined ? undefined : (origin.get(domain.name) ?? `(predefined ${domain.name})`)
    return [{ path: at === null || where === undefined ? path : path.replace(at[0], where), message: tidy(message) }]
  }
  return []
}

const prefixed = (prefix: string) => (error: Input.OptionError) => Providers.issueOf(prefix, error)

/**
 * The shared policies through the checks and layers that would take them (each layer alone, in a scope closed at
 * once). Each check's module is loaded only for a policy the file gives: a refusal loads no more than it checks.
 */
const policyIssues = (loaded: Loaded, shape: IssueIndex): Effect.Effect<ReadonlyArray<Issue>> =>
  Effect.gen(function* () {
    const policies = loaded.config.policies ?? {}
    const open = (path: string) => !shape.overlaps(path)
    const issues: Array<Issue> = []
    if (policies.executor !== undefined && open("policies.executor")) {
      const { checkOptions } = yield* Effect.promise(() => import("../Executor.js"))
      const checked = checkOptions(policies.executor as Executor.Options)
      if (Result.isFailure(checked)) issues.push(prefixed("policies.executor")(Input.toOptionError(checked.failure)))
    }
    for (const field of ["maxConcurrent", "maxItems"] as const) {
      const value = policies[field]
      if (value !== undefined && open(`policies.${field}`)) {
        const checked = Input.positiveInt(`policies.${field}`, value)
        if (Result.isFailure(checked)) issues.push(checked.failure)
      }
    }
    const build = <A>(path: string, layer: Layer.Layer<A, Input.OptionError>) =>
      Layer.build(layer).pipe(
        Effect.scoped,
        Effect.as(undefined),
        Effect.catch((error) => Effect.succeed(prefixed(path)(error)))
      )
    const builds: Array<Effect.Effect<Issue | undefined>> = []
    const on = <A>(value: A | false | undefined, path: string): value is A =>
      value !== undefined && value !== false && open(path)
    if (on(policies.breakers, "policies.breakers")) {
      const { layerMemory } = yield* Effect.promise(() => import("../CircuitBreaker.js"))
      builds.push(build("policies.breakers", layerMemory(policies.breakers as CircuitBreaker.Options)))
    }
    if (on(policies.rateLimits, "policies.rateLimits")) {
      const { layerMemory } = yield* Effect.promise(() => import("../RateLimit.js"))
      builds.push(build("policies.rateLimits", layerMemory(policies.rateLimits as RateLimit.Options)))
    }
    if (on(policies.cache, "policies.cache")) {
      const { layerMemory } = yield* Effect.promise(() => import("../ResponseCache.js"))
      builds.push(build("policies.cache", layerMemory(policies.cache as ResponseCache.MemoryOptions)))
    }
    const built = yield* Effect.all(builds)
    return [...issues, ...built.filter((issue) => issue !== undefined)]
  })

/** Issues in the order their sections appear in the file. */
const inFileOrder = (loaded: Loaded, issues: ReadonlyArray<Issue>): ReadonlyArray<Issue> => {
  // A rank per top-level field, looked up once per issue: a file may hold a hundred thousand unknown ones.
  const order = new Map<string, number>()
  for (const key of [...Object.keys(loaded.config), "providers", "defaultProvider", ...sections, "policies"]) {
    if (!order.has(key)) order.set(key, order.size)
  }
  const rank = (issue: Issue) => order.get(/^[^.[]*/.exec(issue.path)![0]) ?? order.size
  const seen = new Set<string>()
  return issues
    .map((issue, i) => ({ issue, i, rank: rank(issue) }))
    .sort((a, b) => a.rank - b.rank || a.i - b.i)
    .map(({ issue }) => issue)
    .filter((issue) => {
      const key = `${issue.path}\u0000${issue.message}`
      if (seen.has(key)) return false
      seen.add(key)
      return true
    })
}

/**
 * Checks a loaded config with the library's checks and reads its keys, on top of the
 * shape issues `Config.load` found. Every issue is reported with its path in the file:
 * each wrong field of the shape, and the first wrong value of each provider, domain and
 * policy (the library's checks stop at the first); a part whose shape is wrong is not
 * checked further.
 *
 * @since 0.2.0
 * @category constructors
 */
export const check = Effect.fnUntraced(function* (loaded: Loaded) {
  const providers = providersOf(loaded)
  const defaultProvider = defaultProviderOf(loaded)
  const shape = indexIssues(loaded.issues)
  const issues: Array<Issue> = [
    ...loaded.issues,
    ...domainIssues(loaded, shape, defaultProvider),
    ...(yield* policyIssues(loaded, shape))
  ]
  const keys: Record<string, Redacted.Redacted<string> | undefined> = {}
  for (const [name, spec] of Object.entries(providers)) {
    const at = formatPath(["providers", name])
    if (typeof spec !== "object" || spec === null || shape.overlaps(`${at}.type`)) continue
    const key = shape.overlaps(`${at}.apiKeyEnv`) ? Result.succeed(undefined) : yield* Providers.readKey(name, spec)
    if (Result.isFailure(key)) issues.push(key.failure)
    else keys[name] = key.success
    if (!shape.overlaps(at)) {
      issues.push(...(yield* Providers.check(name, spec, loaded.dir, Result.getOrUndefined(key))))
    }
  }
  if (issues.length > 0) {
    return yield* new ConfigFileError({
      file: loaded.file ?? "(built-in default)",
      issues: inFileOrder(loaded, issues)
    })
  }
  return { loaded, providers, keys, defaultProvider } satisfies Checked
})

/**
 * A provider that could not be built (a local model that does not load), or an option
 * the checks let through and a layer refused.
 *
 * @since 0.1.0
 * @category errors
 */
export class SetupError extends Schema.TaggedError<SetupError>("effect-orchestra/cli/SetupError")("SetupError", {
  provider: Schema.String,
  kind: Schema.Literals(["config", "provider"]),
  detail: Schema.String,
  /** An option refused: the field of the config file it came from, and why. */
  issue: Schema.optional(Schema.Struct({ path: Schema.String, message: Schema.String }))
}) {
  override get message(): string {
    return `provider "${this.provider}": ${this.detail}`
  }
}

/**
 * Overrides a command applies on top of the file's policies.
 *
 * @since 0.1.0
 * @category models
 */
export interface Overrides {
  readonly maxConcurrent?: number | undefined
}

const mapLayerError = <A, E, E2, R>(layer: Layer.Layer<A, E, R>, f: (error: E) => E2): Layer.Layer<A, E2, R> =>
  Layer.catch(layer, (error) => Layer.unwrap(Effect.fail(f(error)) as Effect.Effect<Layer.Layer<A>, E2>))

const setupError =
  (provider: string) =>
  (error: Input.OptionError | ModelError): SetupError =>
    error._tag === "OptionError"
      ? new SetupError({
          provider,
          kind: "config",
          detail: error.message,
          issue: Providers.issueOf(formatPath(["providers", provider]), error)
        })
      : new SetupError({ provider, kind: "provider", detail: withoutProvider(provider, error) })

// The library's provider errors start with the provider's name (`l: model "x" not found`), which SetupError says already.
const withoutProvider = (provider: string, error: ModelError): string => {
  const prefix = `${provider}: `
  return error.provider === provider && error.message.startsWith(prefix) && error.message.length > prefix.length
    ? error.message.slice(prefix.length)
    : error.message
}

/** The manager's options that the file holds under `policies`. */
const policyOptions = /^(?:executor|maxConcurrent|maxItems|breakers|rateLimits|cache)(?:$|[.[])/

/**
 * The manager for a checked config: every declared provider built once, the domains, the
 * executor, the shared breakers, rate limits and cache, and batches.
 *
 * @since 0.1.0
 * @category layers
 */
export const orchestraLayer = (
  checked: Checked,
  overrides: Overrides = {}
): Layer.Layer<Orchestra.Services, SetupError> => {
  const { config, dir } = checked.loaded
  const providers: Record<string, Layer.Layer<ModelProvider, SetupError>> = {}
  for (const [name, spec] of Object.entries(checked.providers)) {
    providers[name] = mapLayerError(Providers.layer(name, spec, dir, checked.keys[name]), setupError(name))
  }
  const policies = config.policies ?? {}
  // The library's manager, loaded only now: every check passed.
  const manager = Layer.unwrap(
    Effect.map(
      Effect.promise(() => import("../Orchestra.js")),
      (Orchestra) =>
        Orchestra.layer({
          providers,
          defaultProvider: checked.defaultProvider,
          domains: config.domains as ReadonlyArray<Domain.DomainInput> | undefined,
          extraDomains: config.extraDomains as ReadonlyArray<Domain.DomainInput> | undefined,
          overrideDomains: config.overrideDomains as ReadonlyArray<Domain.DomainInput> | undefined,
          executor: policies.executor as Executor.Options | undefined,
          maxConcurrent: overrides.maxConcurrent ?? policies.maxConcurrent,
          maxItems: policies.maxItems,
          breakers: policies.breakers as CircuitBreaker.Options | false | undefined,
          rateLimits: policies.rateLimits as RateLimit.Options | false | undefined,
          cache: policies.cache as ResponseCache.MemoryOptions | false | undefined
        })
    )
  )
  return mapLayerError(manager, (error) =>
    error._tag === "SetupError"
      ? error
      : new SetupError({
          provider: "(manager)",
          kind: "config",
          detail: error.message,
          issue: policyOptions.test(error.path)
            ? Providers.issueOf("policies", error)
            : { path: error.path || "(root)", message: tidy(Input.issueOfError(error).message) }
        })
  )
}
