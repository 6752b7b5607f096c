import { Context, Effect, Layer, Scope } from "effect"
import { Batch } from "../../src/Batch.js"
import type { Domain } from "../../src/Domain.js"
import { Executor } from "../../src/Executor.js"
import { ModelProvider } from "../../src/Model.js"
import * as Mock from "../../src/Model/Mock.js"
import * as Orchestra from "../../src/Orchestra.js"
import { Router } from "../../src/Router.js"
import { Stats } from "../../src/Stats.js"

let counter = 0

/** A provider name no other test uses (the metric registry is global). */
export const uniqueName = (base: string): string => `${base}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

/**
 * Builds a manager over mock providers in a scope the test can close. Domain `d-<key>`
 * exists for every provider key.
 */
export const makeOrchestra = (
  mocks: Readonly<Record<string, Mock.Options>>,
  options: Omit<Orchestra.Options<Record<string, Layer.Layer<ModelProvider>>>, "providers"> = {}
) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    const controls: Record<string, Mock.Control> = {}
    const layers: Record<string, Layer.Layer<ModelProvider>> = {}
    for (const [key, mockOptions] of Object.entries(mocks)) {
      const { provider, control } = yield* Mock.make({ name: uniqueName(key), ...mockOptions })
      controls[key] = control
      layers[key] = Layer.succeed(ModelProvider, provider)
    }
    const domains: Array<Domain> = Object.keys(mocks).map((key) => ({ name: `d-${key}`, provider: key }))
    const context = yield* Layer.buildWithScope(
      Orchestra.layer({ providers: layers, domains: options.domains ?? domains, ...options }),
      scope
    )
    return {
      scope,
      controls,
      router: Context.get(context, Router),
      batch: Context.get(context, Batch),
      executor: Context.get(context, Executor),
      stats: Context.get(context, Stats),
      context
    }
  })
