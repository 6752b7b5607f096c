/**
 * Turns a validated config into layers. Nothing here runs until a command provides the
 * layer, so `--help` never loads a model or reads a key; the local provider (and
 * transformers.js with it) is even imported only when a config uses it.
 *
 * @since 0.1.0
 */
import * as FetchHttpClient from "@effect/platform/FetchHttpClient"
import type * as HttpClient from "@effect/platform/HttpClient"
import * as NodePath from "node:path"
import { Config, ConfigError, Data, Effect, Layer, type Redacted } from "effect"
import type { ModelError } from "../AiError.js"
import type * as Executor from "../Executor.js"
import * as Gemini from "../Model/Gemini.js"
import * as Mock from "../Model/Mock.js"
import * as Ollama from "../Model/Ollama.js"
import * as OpenAiCompat from "../Model/OpenAiCompat.js"
import * as WatsonX from "../Model/WatsonX.js"
import { ModelProvider } from "../Model.js"
import * as Orchestra from "../Orchestra.js"
import { predefined } from "../Domain.js"
import { bundledProviderName, type Loaded, type Provider } from "./Config.js"

/**
 * A provider that could not be built: a missing key (`kind: "config"`) or a model that
 * failed to load or answer at start (`kind: "provider"`).
 *
 * @since 0.1.0
 * @category errors
 */
export class SetupError extends Data.TaggedError("SetupError")<{
  readonly provider: string
  readonly kind: "config" | "provider"
  readonly detail: string
}> {
  override get message(): string {
    return `provider "${this.provider}": ${this.detail}`
  }
}

/** The environment variables a config error is about (its own message may be redacted). */
const describeConfigError = (error: ConfigError.ConfigError): string => {
  switch (error._op) {
    case "And":
    case "Or":
      return `${describeConfigError(error.left)}; ${describeConfigError(error.right)}`
    case "MissingData":
      return `environment variable ${error.path.join("_")} is not set`
    case "InvalidData":
      return `environment variable ${error.path.join("_")} is invalid`
    default:
      return error.message
  }
}

const fail = (provider: string) => (error: ModelError | ConfigError.ConfigError) =>
  ConfigError.isConfigError(error)
    ? new SetupError({ provider, kind: "config", detail: describeConfigError(error) })
    : new SetupError({ provider, kind: "provider", detail: error.message })

const key = (env: string) => Config.redacted(env)
const optionalKey = (env: string | undefined): Config.Config<Redacted.Redacted | undefined> =>
  env === undefined ? Config.succeed(undefined) : Config.redacted(env)

/**
 * The layer of one declared provider. Keys are read from the environment variable the
 * provider names, through `Config.redacted`, when the layer is built.
 *
 * @since 0.1.0
 * @category layers
 */
export const providerLayer = (name: string, spec: Provider, dir: string): Layer.Layer<ModelProvider, SetupError> => {
  const providerName = spec.name ?? name
  const http = <E>(layer: Layer.Layer<ModelProvider, E, HttpClient.HttpClient>) =>
    layer.pipe(Layer.provide(FetchHttpClient.layer))
  switch (spec.type) {
    case "local": {
      const { type: _, modelPath, ...options } = spec
      return Layer.unwrapEffect(
        Effect.map(
          Effect.promise(() => import("../Model/Local.js")),
          (Local) =>
            Local.layer({
              ...options,
              name: providerName,
              ...(modelPath === undefined ? {} : { modelPath: NodePath.resolve(dir, modelPath) })
            })
        )
      ).pipe(Layer.mapError(fail(name)))
    }
    case "openai-compatible": {
      const { type: _, apiKeyEnv, ...options } = spec
      return http(
        OpenAiCompat.layerConfig(
          Config.map(optionalKey(apiKeyEnv), (apiKey) => ({ ...options, name: providerName, apiKey }))
        )
      ).pipe(Layer.mapError(fail(name)))
    }
    case "ollama": {
      const { type: _, apiKeyEnv, ...options } = spec
      return http(
        Ollama.layerConfig(Config.map(optionalKey(apiKeyEnv), (apiKey) => ({ ...options, name: providerName, apiKey })))
      ).pipe(Layer.mapError(fail(name)))
    }
    case "gemini": {
      const { type: _, apiKeyEnv, ...options } = spec
      return http(
        Gemini.layerConfig(
          Config.map(key(apiKeyEnv ?? "GEMINI_API_KEY"), (apiKey) => ({ ...options, name: providerName, apiKey }))
        )
      ).pipe(Layer.mapError(fail(name)))
    }
    case "watsonx": {
      const { type: _, apiKeyEnv, ...options } = spec
      return http(
        WatsonX.layerConfig(
          Config.map(key(apiKeyEnv ?? "WATSONX_API_KEY"), (apiKey) => ({ ...options, name: providerName, apiKey }))
        )
      ).pipe(Layer.mapError(fail(name)))
    }
    case "mock": {
      const { reply } = spec
      return Layer.effect(
        ModelProvider,
        Effect.map(
          Mock.make({
            name: providerName,
            model: spec.model,
            latency: spec.latency,
            random: spec.random,
            ...(reply === undefined ? {} : { respond: () => reply })
          }),
          ({ provider }) => provider
        )
      )
    }
  }
}

/**
 * The names of the domains a config declares, known without building anything.
 *
 * @since 0.1.0
 * @category utils
 */
export const domainNames = (loaded: Loaded): ReadonlyArray<string> => {
  const { config } = loaded
  const defaultProvider = config.defaultProvider ?? Object.keys(config.providers ?? {})[0] ?? bundledProviderName
  const base = config.domains ?? predefined(defaultProvider)
  return [...base, ...(config.extraDomains ?? [])].map((d) => d.name)
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

/**
 * The manager for a config: every declared provider (or the bundled local model), the
 * domains, and the policies.
 *
 * @since 0.1.0
 * @category layers
 */
export const orchestraLayer = (
  loaded: Loaded,
  overrides: Overrides = {}
): Layer.Layer<Orchestra.Services, SetupError> => {
  const { config } = loaded
  const specs: Record<string, Provider> = config.providers ?? { [bundledProviderName]: { type: "local" } }
  const providers: Record<string, Layer.Layer<ModelProvider, SetupError>> = {}
  for (const [name, spec] of Object.entries(specs)) providers[name] = providerLayer(name, spec, loaded.dir)
  const policies = config.policies ?? {}
  const executor: Executor.Options = {
    ...(policies.executor?.timeout === undefined ? {} : { timeout: policies.executor.timeout }),
    ...(policies.executor?.retry === undefined ? {} : { retry: policies.executor.retry }),
    ...(policies.executor?.shutdownDeadline === undefined
      ? {}
      : { shutdownDeadline: policies.executor.shutdownDeadline })
  }
  return Orchestra.layer({
    providers,
    defaultProvider: config.defaultProvider,
    domains: config.domains,
    extraDomains: config.extraDomains,
    executor,
    maxConcurrent: overrides.maxConcurrent ?? policies.maxConcurrent,
    breakers: policies.breakers,
    cache: policies.cache
  }).pipe(
    Layer.mapError((error) =>
      error._tag === "SetupError"
        ? error
        : new SetupError({ provider: "(default)", kind: "provider", detail: error.message })
    )
  )
}
