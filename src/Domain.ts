/**
 * Named domains (a provider, a model, a system prompt and a policy) and the registry of
 * named providers they refer to. Providers are built once per application.
 *
 * @since 0.1.0
 */
import { Context, Effect, Either, Layer, ParseResult, Schema } from "effect"
import type { Scope } from "effect"
import { ModelError } from "./AiError.js"
import { type GenerateRequest, ModelProvider, type Service as ProviderService } from "./Model.js"
import { DurationInput, RetryPolicy } from "./Policy.js"

/**
 * @since 0.1.0
 * @category schemas
 */
export const Domain = Schema.Struct({
  name: Schema.NonEmptyTrimmedString,
  /** Name of a provider in the `Providers` registry. */
  provider: Schema.NonEmptyTrimmedString,
  model: Schema.optional(Schema.NonEmptyTrimmedString),
  system: Schema.optional(Schema.String),
  description: Schema.optional(Schema.String),
  timeout: Schema.optional(DurationInput),
  retry: Schema.optional(RetryPolicy),
  temperature: Schema.optional(Schema.Number.pipe(Schema.between(0, 2))),
  maxTokens: Schema.optional(Schema.Int.pipe(Schema.between(1, 1_000_000)))
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
 * A domain configuration that failed validation.
 *
 * @since 0.1.0
 * @category errors
 */
export class DomainConfigError extends Schema.TaggedError<DomainConfigError>("effect-orchestra/DomainConfigError")(
  "DomainConfigError",
  { message: Schema.String, path: Schema.String }
) {}

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
    retry: Schema.decodeSync(RetryPolicy)({ maxAttempts: 3 })
  },
  {
    name: "technical",
    provider: defaultProvider,
    description: "Engineering questions: precise, with code where it helps",
    system:
      "You are a senior software engineer. Answer precisely, state assumptions, and include a minimal code example when it helps.",
    retry: Schema.decodeSync(RetryPolicy)({ maxAttempts: 3 })
  },
  {
    name: "finance",
    provider: defaultProvider,
    description: "Finance questions: careful, with figures and caveats",
    system:
      "You are a careful financial analyst. Show the figures you rely on, separate facts from estimates, and never give personal investment advice.",
    retry: Schema.decodeSync(RetryPolicy)({ maxAttempts: 2 }),
    temperature: 0.2
  }
]

const DomainList = Schema.Array(Domain)
const decodeDomains = Schema.decodeUnknownEither(DomainList, { onExcessProperty: "error", errors: "first" })

/**
 * Validates domains from a config value. A bad value fails with the path of the first
 * wrong field, e.g. `[1].retry.maxAttempts`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromConfig = (input: unknown): Effect.Effect<ReadonlyArray<Domain>, DomainConfigError> => {
  const result = decodeDomains(input)
  if (Either.isRight(result)) return Effect.succeed(result.right)
  const issue = ParseResult.ArrayFormatter.formatErrorSync(result.left)[0]
  const path = (issue?.path ?? []).map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("")
  return Effect.fail(
    new DomainConfigError({
      path: path.replace(/^\./, "") || "(root)",
      message: `invalid domain config at ${path.replace(/^\./, "") || "(root)"}: ${issue?.message ?? "invalid"}`
    })
  )
}

/**
 * Applies a domain to a request: its system prompt (unless the request has one), model
 * and sampling defaults.
 *
 * @since 0.1.0
 * @category utils
 */
export const applyTo = (domain: Domain, request: GenerateRequest): GenerateRequest => ({
  ...request,
  ...(request.system === undefined && domain.system !== undefined ? { system: domain.system } : {}),
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
 * @category tags
 */
export class Domains extends Context.Tag("effect-orchestra/Domains")<Domains, DomainsService>() {}

/**
 * @since 0.1.0
 * @category constructors
 */
export const makeDomains = (domains: ReadonlyArray<Domain>): DomainsService => {
  const byName = new Map(domains.map((d) => [d.name, d] as const))
  const names = Array.from(byName.keys())
  return {
    all: Array.from(byName.values()),
    get: (name) => {
      const found = byName.get(name)
      return found === undefined
        ? Effect.fail(
            new ModelError({
              reason: "InvalidRequest",
              field: "domain",
              message: `unknown domain "${name}" (known: ${names.join(", ")})`
            })
          )
        : Effect.succeed(found)
    }
  }
}

/**
 * Domains given in code; later entries replace earlier ones of the same name.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDomains = (domains: ReadonlyArray<Domain>): Layer.Layer<Domains> =>
  Layer.succeed(Domains, makeDomains(domains))

/**
 * Domains from a config value (e.g. parsed JSON), validated.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDomainsFromConfig = (input: unknown): Layer.Layer<Domains, DomainConfigError> =>
  Layer.effect(Domains, Effect.map(fromConfig(input), makeDomains))

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
 * @category tags
 */
export class Providers extends Context.Tag("effect-orchestra/Providers")<Providers, ProvidersService>() {}

/**
 * @since 0.1.0
 * @category constructors
 */
export const makeProviders = (providers: Readonly<Record<string, ProviderService>>): ProvidersService => {
  const names = Object.keys(providers)
  return {
    names,
    get: (name) => {
      const found = Object.hasOwn(providers, name) ? providers[name] : undefined
      return found === undefined
        ? Effect.fail(
            new ModelError({
              reason: "Unavailable",
              message: `no provider named "${name}" (registered: ${names.join(", ")})`,
              provider: name
            })
          )
        : Effect.succeed(found)
    }
  }
}

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
  { [K in keyof L]: Layer.Layer.Error<L[K]> }[keyof L],
  { [K in keyof L]: Layer.Layer.Context<L[K]> }[keyof L]
> =>
  Layer.scoped(
    Providers,
    Effect.map(
      Effect.forEach(Object.entries(layers), ([name, layer]) =>
        Effect.map(
          Effect.flatMap(Effect.scope, (scope: Scope.Scope) => Layer.buildWithScope(layer, scope)),
          (context) => [name, Context.get(context, ModelProvider)] as const
        )
      ),
      (entries) => makeProviders(Object.fromEntries(entries))
    )
  ) as never
