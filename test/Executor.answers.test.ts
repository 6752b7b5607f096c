/**
 * A provider's answer that is no answer at all (`null`, `undefined`, a string): a JavaScript
 * provider written by hand, an `effect/ai` adapter returning nothing. The call's typed error,
 * naming the provider, never a "success" its caller reads `.text` of.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Scope, Stream } from "effect"
import type { AiError } from "../src/AiError.js"
import * as Domain from "../src/Domain.js"
import * as Executor from "../src/Executor.js"
import { type GenerateResponse, ModelProvider, type Service as ProviderService } from "../src/Model.js"
import * as Router from "../src/Router.js"
import * as Stats from "../src/Stats.js"

const response = (provider: string): GenerateResponse => ({
  text: `from ${provider}`,
  finishReason: "stop",
  usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
  provider,
  model: "m"
})

const provider = (name: string, answer: unknown): ProviderService => ({
  name,
  defaultModel: "m",
  generate: () => Effect.succeed(answer as GenerateResponse),
  stream: () => Stream.die("not used"),
  embed: () => Effect.succeed(answer as never)
})

const build = <A>(layer: Layer.Layer<A, unknown>) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    return yield* Layer.buildWithScope(layer, scope)
  })

const described = (error: AiError) =>
  error._tag === "ModelError" ? `${error.reason} ${error.provider} ${error.field}` : error._tag

describe("a provider answering no response", () => {
  it.effect("execute, on the fused path and the full one, fails with a Decode error naming the provider", () =>
    Effect.gen(function* () {
      for (const answer of [null, undefined, "text"]) {
        const context = yield* build(
          Executor.layerWithStats().pipe(Layer.provideMerge(Layer.succeed(ModelProvider, provider("bare", answer))))
        )
        const executor = Context.get(context, Executor.Executor)
        const fused = yield* Effect.flip(executor.execute({ prompt: "x" }))
        assert.strictEqual(described(fused), "Decode bare response", `fused path, ${String(answer)}`)
        assert.include(fused.message, "bare")
        // A total deadline takes the full path.
        const full = yield* Effect.flip(executor.execute({ prompt: "x" }, { totalTimeout: "1 minute" }))
        assert.strictEqual(described(full), "Decode bare response", `full path, ${String(answer)}`)
        const embedded = yield* Effect.flip(executor.embed({ texts: ["x"] }))
        assert.strictEqual(described(embedded), "Decode bare response", `embed, ${String(answer)}`)
        const stats = yield* Context.get(context, Stats.Stats).snapshot()
        assert.strictEqual(stats.successes, 0)
        assert.deepStrictEqual(stats.failuresByReason, { Decode: 3 })
      }
    })
  )

  it.effect("a router's domain on such a provider falls back to the next, as on any malformed answer", () =>
    Effect.gen(function* () {
      const providers = yield* Domain.makeProviders({
        bare: provider("bare", null),
        good: provider("good", response("good"))
      })
      const context = yield* build(
        Router.layer.pipe(
          Layer.provideMerge(Executor.layer()),
          Layer.provideMerge(
            Layer.mergeAll(
              Stats.layer,
              Domain.layerDomains([
                { name: "first", provider: "bare", fallback: ["second"] },
                { name: "second", provider: "good" },
                { name: "alone", provider: "bare" }
              ]),
              Layer.succeed(Domain.Providers, providers),
              Layer.succeed(ModelProvider, provider("bare", null))
            )
          )
        )
      )
      const router = Context.get(context, Router.Router)
      const answer = yield* router.execute({ prompt: "x" }, "first")
      assert.strictEqual(answer.response.text, "from good")
      assert.isTrue(answer.fallbackUsed)
      const alone = yield* Effect.flip(router.execute({ prompt: "x" }, "alone"))
      assert.strictEqual(described(alone), "Decode bare response")
      const embedded = yield* Effect.flip(router.embed({ texts: ["x"] }, "alone"))
      assert.strictEqual(described(embedded), "Decode bare response")
    })
  )
})

describe("a provider answering another number of vectors than texts", () => {
  const vectors = (count: number) => ({
    vectors: Array.from({ length: count }, (_, i) => [i, i]),
    provider: "counting",
    model: "m"
  })

  it.effect("executor.embed and router.embed fail with a Decode error naming the provider", () =>
    Effect.gen(function* () {
      const answers: ReadonlyArray<readonly [string, unknown]> = [
        ["fewer vectors", vectors(1)],
        ["more vectors", vectors(3)],
        ["no vectors", vectors(0)],
        ["vectors that are no array", { vectors: { length: 2 }, provider: "counting", model: "m" }],
        ["no vectors field", { provider: "counting", model: "m" }]
      ]
      for (const [name, answer] of answers) {
        const counting = provider("counting", answer)
        const context = yield* build(
          Router.layer.pipe(
            Layer.provideMerge(Executor.layerWithStats()),
            Layer.provideMerge(
              Layer.mergeAll(
                Domain.layerDomains([{ name: "d", provider: "counting" }]),
                Layer.effect(Domain.Providers, Domain.makeProviders({ counting })),
                Layer.succeed(ModelProvider, counting)
              )
            )
          )
        )
        const executor = Context.get(context, Executor.Executor)
        const error = yield* Effect.flip(executor.embed({ texts: ["a", "b"] }))
        assert.strictEqual(described(error), "Decode counting response", `executor, ${name}: ${error.message}`)
        assert.include(error.message, "counting")
        const routed = yield* Effect.flip(Context.get(context, Router.Router).embed({ texts: ["a", "b"] }, "d"))
        assert.strictEqual(described(routed), "Decode counting response", `router, ${name}: ${routed.message}`)
      }
      // As many vectors as texts answer as they are.
      const counting = provider("counting", vectors(2))
      const context = yield* build(
        Executor.layerWithStats().pipe(Layer.provideMerge(Layer.succeed(ModelProvider, counting)))
      )
      const answer = yield* Context.get(context, Executor.Executor).embed({ texts: ["a", "b"] })
      assert.deepStrictEqual(answer.vectors, [
        [0, 0],
        [1, 1]
      ])
    })
  )
})
