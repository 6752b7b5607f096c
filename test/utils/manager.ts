/**
 * The routed stack (providers, domains, stats, shared breakers, rate limits and cache,
 * executor, router) over named mocks, built in its own scope with a private metric
 * registry. Mock `a` is named `"a"`, so breaker and rate-limit keys are the mock's key.
 */
import { Context, Effect, Exit, Layer, Metric, Scope } from "effect"
import * as CircuitBreaker from "../../src/CircuitBreaker.js"
import * as Domain from "../../src/Domain.js"
import * as Executor from "../../src/Executor.js"
import { ModelProvider } from "../../src/Model.js"
import * as Mock from "../../src/Model/Mock.js"
import * as RateLimit from "../../src/RateLimit.js"
import * as ResponseCache from "../../src/ResponseCache.js"
import * as Router from "../../src/Router.js"
import * as Stats from "../../src/Stats.js"

export interface ManagerOptions {
  /** Default: one domain `d-<key>` per mock. */
  readonly domains?: ReadonlyArray<Domain.Domain | Domain.DomainInput> | undefined
  readonly executor?: Executor.Options | undefined
  /** Default on (in memory, the layer's defaults); `false` disables them. */
  readonly breakers?: CircuitBreaker.Options | false | undefined
  readonly rateLimits?: RateLimit.Options | undefined
  readonly cache?: ResponseCache.MemoryOptions | undefined
}

export interface Manager {
  readonly router: Router.Service
  readonly executor: Executor.Service
  readonly stats: Stats.Service
  readonly breakers: CircuitBreaker.Service | undefined
  readonly controls: Readonly<Record<string, Mock.Control>>
  readonly scope: Scope.Closeable
  readonly registry: Metric.MetricRegistry
}

export const makeManager = (mocks: Readonly<Record<string, Mock.Options>>, options: ManagerOptions = {}) =>
  Effect.gen(function* () {
    const built = yield* Effect.forEach(Object.entries(mocks), ([key, mock]) =>
      Effect.map(Mock.make({ name: key, ...mock }), (m) => [key, m] as const)
    )
    const providers = yield* Domain.makeProviders(Object.fromEntries(built.map(([key, m]) => [key, m.provider])))
    const domains = options.domains ?? built.map(([key]) => ({ name: `d-${key}`, provider: key }))
    const guards = Layer.mergeAll(
      options.breakers === false ? Layer.empty : CircuitBreaker.layerMemory(options.breakers ?? {}),
      options.rateLimits === undefined ? Layer.empty : RateLimit.layerMemory(options.rateLimits),
      options.cache === undefined ? Layer.empty : ResponseCache.layerMemory(options.cache)
    )
    const layer = Router.layer.pipe(
      Layer.provideMerge(Executor.layer(options.executor)),
      Layer.provideMerge(
        Layer.mergeAll(
          Stats.layer,
          Domain.layerDomains(domains),
          Layer.succeed(Domain.Providers, providers),
          Layer.succeed(ModelProvider, built[0]![1].provider)
        )
      ),
      Layer.provideMerge(guards)
    )
    const scope = yield* Scope.make()
    const registry: Metric.MetricRegistry = new Map()
    const context = yield* Layer.buildWithScope(layer, scope).pipe(
      Effect.provideService(Metric.MetricRegistry, registry)
    )
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    return {
      router: Context.get(context, Router.Router),
      executor: Context.get(context, Executor.Executor),
      stats: Context.get(context, Stats.Stats),
      breakers: Context.getOrUndefined(context, CircuitBreaker.Breakers),
      controls: Object.fromEntries(built.map(([key, m]) => [key, m.control])),
      scope,
      registry
    } satisfies Manager
  })
