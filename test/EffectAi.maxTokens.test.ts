/**
 * `max_tokens` through an effect/ai LanguageModel: its interface carries no such setting, so only `context`
 * can hand it to the provider package's config. Without `context` a request that sets it is refused, never
 * answered uncapped: a caller counting on the cap (a gateway's budget reserved from it) would be overspent.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Stream } from "effect"
import { LanguageModel } from "effect/ai"
import * as EffectAi from "../src/Model/EffectAi.js"

const finish = {
  type: "finish",
  reason: "stop",
  usage: { inputTokens: { total: 3 }, outputTokens: { total: 2 } }
} as const

const counted = Effect.gen(function* () {
  let calls = 0
  const lm = yield* LanguageModel.make({
    generateText: () =>
      Effect.sync(() => {
        calls++
        return [{ type: "text", text: "hello" }, finish]
      }),
    streamText: () =>
      Stream.suspend(() => {
        calls++
        return Stream.make({ type: "text-delta", id: "t", delta: "hello" }, finish)
      })
  })
  return { layer: Layer.succeed(LanguageModel.LanguageModel, lm), calls: () => calls }
})

class Cap extends Context.Service<Cap, { readonly maxTokens: number | undefined }>()("test/Cap") {}

describe("EffectAi.make: maxTokens", () => {
  it.effect("without context, a request that sets it is refused (InvalidRequest, field maxTokens), unsent", () =>
    Effect.gen(function* () {
      const { layer, calls } = yield* counted
      const provider = yield* EffectAi.make({ name: "ai" }).pipe(Effect.provide(layer))
      const request = { prompt: "hi", maxTokens: 5 }
      for (const error of [
        yield* Effect.flip(provider.generate(request)),
        yield* Effect.flip(Stream.runCollect(provider.stream(request)))
      ]) {
        assert.strictEqual(error._tag, "ModelError")
        if (error._tag !== "ModelError") continue
        assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "maxTokens"])
        assert.include(error.message, "context")
      }
      assert.strictEqual(calls(), 0)
      // Without it, answered as before.
      assert.strictEqual((yield* provider.generate({ prompt: "hi" })).text, "hello")
    })
  )

  it.effect("with context, it is handed to the context function and the request is answered", () =>
    Effect.gen(function* () {
      const { layer } = yield* counted
      const seen: Array<number | undefined> = []
      const provider = yield* EffectAi.make({
        context: (request) => {
          seen.push(request.maxTokens)
          return Context.make(Cap, { maxTokens: request.maxTokens })
        }
      }).pipe(Effect.provide(layer))
      assert.strictEqual((yield* provider.generate({ prompt: "hi", maxTokens: 5 })).text, "hello")
      assert.deepStrictEqual(seen, [5])
    })
  )
})
