/**
 * The manager layer (`Orchestra.layer`) over named mocks, built in its own scope with a
 * private metric registry, with every mock's control at hand. Mock `a` is named `"a"`, so
 * it is also the provider name in stats and the breaker key.
 */
import { Context, Effect, Exit, Layer, Metric, Scope } from "effect"
import * as Batch from "../../src/Batch.js"
import * as CircuitBreaker from "../../src/CircuitBreaker.js"
import * as Executor from "../../src/Executor.js"
import { ModelProvider } from "../../src/Model.js"
import * as Mock from "../../src/Model/Mock.js"
import * as Orchestra from "../../src/Orchestra.js"
import * as Router from "../../src/Router.js"
import * as Stats from "../../src/Stats.js"

export type OrchestraOptions = Omit<Orchestra.Options<Record<string, Layer.Layer<ModelProvider>>>, "providers">

export interface Built {
  readonly batch: Batch.Service
  readonly router: Router.Service
  readonly executor: Executor.Service
  readonly stats: Stats.Service
  readonly breakers: CircuitBreaker.Service | undefined
  readonly controls: Readonly<Record<string, Mock.Control>>
  readonly context: Context.Context<Orchestra.Services>
  readonly scope: Scope.Closeable
  readonly registry: Metric.MetricRegistry
}

export const makeOrchestra = (mocks: Readonly<Record<string, Mock.Options>>, options: OrchestraOptions = {}) =>
  Effect.gen(function* () {
    const built = yield* Effect.forEach(Object.entries(mocks), ([key, mock]) =>
      Effect.map(Mock.make({ name: key, ...mock }), (m) => [key, m] as const)
    )
    const providers = Object.fromEntries(built.map(([key, m]) => [key, Layer.succeed(ModelProvider, m.provider)]))
    const scope = yield* Scope.make()
    const registry: Metric.MetricRegistry = new Map()
    const context = yield* Layer.buildWithScope(Orchestra.layer({ ...options, providers }), scope).pipe(
      Effect.provideService(Metric.MetricRegistry, registry)
    )
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    return {
      batch: Context.get(context, Batch.Batch),
      router: Context.get(context, Router.Router),
      executor: Context.get(context, Executor.Executor),
      stats: Context.get(context, Stats.Stats),
      breakers: Context.getOrUndefined(context, CircuitBreaker.Breakers),
      controls: Object.fromEntries(built.map(([key, m]) => [key, m.control])),
      context,
      scope,
      registry
    } satisfies Built
  })
