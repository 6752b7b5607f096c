/**
 * The manager: one layer that builds the providers once and wires stats, executor,
 * domains, router, shared breakers and batches together. Closing its scope (or SIGINT /
 * SIGTERM under `NodeRuntime.runMain`) stops admitting work, lets in-flight calls finish
 * up to the shutdown deadline, interrupts the rest and releases the providers.
 *
 * @since 0.1.0
 */
import { Effect, Layer } from "effect"
import type { ModelError } from "./AiError.js"
import * as Batch from "./Batch.js"
import * as CircuitBreaker from "./CircuitBreaker.js"
import { type Domain, type Domains, layerDomains, layerProviders, predefined, Providers } from "./Domain.js"
import * as Executor from "./Executor.js"
import { ModelProvider } from "./Model.js"
import * as ResponseCache from "./ResponseCache.js"
import * as Router from "./Router.js"
import * as Stats from "./Stats.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<Providers extends Record<string, Layer.Layer<ModelProvider, unknown, unknown>>> {
  /** Named provider layers; each is built once. */
  readonly providers: Providers
  /** The provider of the predefined domains and of calls without a domain. Default: the first. */
  readonly defaultProvider?: (keyof Providers & string) | undefined
  /** Domains; default: `support`, `technical`, `finance` on the default provider. */
  readonly domains?: ReadonlyArray<Domain> | undefined
  /** Added to the predefined domains instead of replacing them. */
  readonly extraDomains?: ReadonlyArray<Domain> | undefined
  readonly executor?: Executor.Options | undefined
  /** Calls running at once across all batches. Default 5. */
  readonly maxConcurrent?: number | undefined
  /** Shared breakers, one per provider (default on); `false` disables them. */
  readonly breakers?: CircuitBreaker.MakeOptions | false | undefined
  /** An in-memory response cache (default off). */
  readonly cache?: ResponseCache.MemoryOptions | false | undefined
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
  | CircuitBreaker.Registry

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = <const P extends Record<string, Layer.Layer<ModelProvider, unknown, unknown>>>(
  options: Options<P>
): Layer.Layer<
  Services,
  ModelError | { [K in keyof P]: Layer.Layer.Error<P[K]> }[keyof P],
  { [K in keyof P]: Layer.Layer.Context<P[K]> }[keyof P]
> => {
  const names = Object.keys(options.providers)
  const defaultProvider = options.defaultProvider ?? names[0] ?? "default"
  const domains = [...(options.domains ?? predefined(defaultProvider)), ...(options.extraDomains ?? [])]
  const providers = layerProviders(options.providers)
  const defaultModel = Layer.effect(
    ModelProvider,
    Effect.flatMap(Providers, (registry) => registry.get(defaultProvider))
  )
  // The registry is always in the output (its state stream, isolate/reset); the router uses
  // it only when breakers are on.
  const registry = CircuitBreaker.layer(options.breakers === false ? {} : (options.breakers ?? {}))
  const resilience = Layer.mergeAll(
    options.breakers === false ? Layer.empty : registry,
    options.cache === undefined || options.cache === false ? Layer.empty : ResponseCache.layerMemory(options.cache)
  )
  const core = Executor.layer(options.executor).pipe(
    Layer.provideMerge(Layer.mergeAll(Stats.layer, layerDomains(domains))),
    Layer.provideMerge(defaultModel),
    Layer.provideMerge(providers)
  )
  const router = Router.layer.pipe(Layer.provide(resilience))
  const batch = Batch.layer({ maxConcurrent: options.maxConcurrent })
  return batch.pipe(
    Layer.provideMerge(router),
    Layer.provideMerge(core),
    Layer.provideMerge(options.breakers === false ? registry : resilience)
  ) as never
}
