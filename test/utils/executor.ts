/**
 * An executor over a `Mock` provider, built in its own scope so a test can close it.
 */
import { Context, Effect, Exit, Layer, Metric, Scope } from "effect"
import * as Executor from "../../src/Executor.js"
import * as Mock from "../../src/Model/Mock.js"
import * as Stats from "../../src/Stats.js"

export interface Setup {
  readonly executor: Executor.Service
  readonly control: Mock.Control
  readonly stats: Stats.Service
  readonly scope: Scope.Closeable
  readonly close: Effect.Effect<void>
  readonly registry: Metric.MetricRegistry
}

/** Builds Stats + Executor over a mock, with a private metric registry. */
export const setup = (mock: Mock.Options = {}, options: Executor.Options = {}) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    const registry: Metric.MetricRegistry = new Map()
    const layer = Executor.layerWithStats(options).pipe(Layer.provideMerge(Mock.layer(mock)))
    const context = yield* Layer.buildWithScope(layer, scope).pipe(
      Effect.provideService(Metric.MetricRegistry, registry)
    )
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    return {
      executor: Context.get(context, Executor.Executor),
      control: Context.get(context, Mock.MockControl),
      stats: Context.get(context, Stats.Stats),
      scope,
      close: Scope.close(scope, Exit.void),
      registry
    } satisfies Setup
  })
