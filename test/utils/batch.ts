/**
 * What the batch tests share: a provider made of one `generate` function, and a manager over
 * it built in a scope of the test.
 */
import { Context, Effect, Exit, Layer, Metric, Scope, Stream } from "effect"
import * as Batch from "../../src/Batch.js"
import { Executor } from "../../src/Executor.js"
import { ModelProvider, type Service as ProviderService } from "../../src/Model.js"
import * as Orchestra from "../../src/Orchestra.js"
import { Router } from "../../src/Router.js"

/** A provider whose `generate` is the given function (defects and self-interruptions included). */
export const custom = (name: string, generate: ProviderService["generate"]): ProviderService => ({
  name,
  defaultModel: "m",
  generate,
  stream: () => Stream.die("unused"),
  embed: () => Effect.die("unused")
})

/** A manager over one provider `p` (no breakers, its own metrics), in a scope of the test. */
export const managerOver = (
  provider: ProviderService,
  options: {
    readonly maxConcurrent?: number
    readonly domains?: Orchestra.Options<Record<string, never>>["domains"]
  } = {}
) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(
      Orchestra.layer({ breakers: false, ...options, providers: { p: Layer.succeed(ModelProvider, provider) } }),
      scope
    ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    return {
      batch: Context.get(context, Batch.Batch),
      executor: Context.get(context, Executor),
      router: Context.get(context, Router)
    }
  })
