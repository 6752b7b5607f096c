/**
 * The key store's rate-limit series and its budget refusals, as a demanding user sees them.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Metric, Redacted, Scope } from "effect"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import * as Metrics from "../../src/Metrics.js"

let counter = 0
const unique = (label: string) => `${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const key = (id: string, secret: string, policy: KeyStore.KeyPolicy = {}): KeyStore.KeyDefinition => ({
  id,
  sha256: KeyStore.hashSecret(secret),
  ...policy
})

const estimate = (inputTokens: number, maxOutputTokens: number) => ({ inputTokens, maxOutputTokens })

describe("KeyStore: the series of its keys' rate limits", () => {
  it.effect("leave the registry when the key store closes; a rebuilt store's counts start from zero", () =>
    Effect.gen(function* () {
      const registry: Metric.MetricRegistry = new Map()
      const [a, b] = [unique("series-a"), unique("series-b")]
      const [secretA, secretB] = [`sk-${a}-0123456789`, `sk-${b}-0123456789`]
      // Two (rpm, tpm) pairs: a limiter each.
      const options: KeyStore.Options = {
        keys: [key(a, secretA, { rpm: 100 }), key(b, secretB, { rpm: 50, tpm: 10_000 })]
      }
      const limitSeries = () =>
        Effect.map(Metric.snapshot, (all) =>
          all
            .filter((m) => m.id === Metrics.rateLimitAcquisitions.id || m.id === Metrics.rateLimitWait.id)
            .map((m) => String(m.attributes?.["limit"]))
        ).pipe(Effect.provideService(Metric.MetricRegistry, registry))
      const immediate = (id: string) =>
        Effect.map(
          Metric.value(
            Metric.withAttributes(Metrics.rateLimitAcquisitions, { limit: `key:${id}`, outcome: "immediate" })
          ),
          (state) => state.count
        ).pipe(Effect.provideService(Metric.MetricRegistry, registry))
      const run = (calls: number) =>
        Effect.gen(function* () {
          const scope = yield* Scope.make()
          const store = Context.get(
            yield* Layer.buildWithScope(KeyStore.layerMemory(options), scope),
            KeyStore.KeyAdmin
          )
          const alpha = yield* store.authenticate(Redacted.make(secretA))
          const beta = yield* store.authenticate(Redacted.make(secretB))
          for (let i = 0; i < calls; i++) {
            yield* store.release(yield* store.reserve(alpha, "m", estimate(1, 1)))
            yield* store.release(yield* store.reserve(beta, "m", estimate(1, 1)))
          }
          assert.deepStrictEqual(
            [...new Set(yield* limitSeries())].sort(),
            [`key:${a}`, `key:${b}`].sort(),
            "each key's series while the store is open"
          )
          assert.strictEqual(yield* immediate(a), calls)
          assert.strictEqual(yield* immediate(b), calls)
          yield* Scope.close(scope, Exit.void)
          assert.deepStrictEqual(yield* limitSeries(), [], "closing the key store removes its keys' series")
        }).pipe(Effect.provideService(Metric.MetricRegistry, registry))
      yield* run(3)
      // A rebuilt gateway: its figures are its own, not added onto the closed store's.
      yield* run(1)
    })
  )
})
