import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Ref, Schedule, Stream } from "effect"
import { type AiError as Ai, LanguageModel, type Response } from "effect/ai"
import { TestClock } from "effect/testing"
import * as EffectAi from "../src/Model/EffectAi.js"
import * as Orchestra from "../src/Orchestra.js"
import * as Router from "../src/Router.js"

/** An effect/ai model whose stream starts an answer and then thinks forever, one part a second. */
const endless = Effect.gen(function* () {
  const released = yield* Ref.make(0)
  const service = yield* LanguageModel.make({
    generateText: () => Effect.never,
    streamText: () =>
      Stream.concat(
        Stream.make<Array<Response.StreamPartEncoded>>({ type: "text-delta", id: "t", delta: "Let me think" }),
        Stream.fromSchedule(Schedule.spaced("1 second")).pipe(
          Stream.map((): Response.StreamPartEncoded => ({ type: "reasoning-delta", id: "r", delta: "hmm " }))
        )
      ).pipe(Stream.ensuring(Ref.update(released, (n) => n + 1)))
  })
  return { layer: Layer.succeed(LanguageModel.LanguageModel, service), released }
})

describe("EffectAi: a stream from an effect/ai model that never finishes", () => {
  it.effect("under a domain, streamText fails at the domain's totalTimeout and the model's stream is released", () =>
    Effect.gen(function* () {
      const model = yield* endless
      const domain = Router.layerLanguageModel("thinker").pipe(
        Layer.provide(
          Orchestra.layer({
            providers: { "eai-endless": EffectAi.layer({ name: "eai-endless" }).pipe(Layer.provide(model.layer)) },
            domains: [{ name: "thinker", provider: "eai-endless", totalTimeout: "30 seconds" }],
            breakers: false
          })
        )
      )
      const fiber = yield* LanguageModel.streamText({ prompt: "think" }).pipe(
        Stream.runCollect,
        Effect.flip,
        Effect.provide(domain),
        Effect.forkChild
      )
      yield* TestClock.adjust("31 seconds")
      const error: Ai.AiError = yield* Fiber.join(fiber)
      const ours = (error.reason as { readonly metadata?: Record<string, Record<string, unknown>> }).metadata
      assert.strictEqual(ours?.["effect-orchestra"]?.["error"], "TimeoutError")
      assert.strictEqual(yield* Ref.get(model.released), 1)
    })
  )

  it.effect("a consumer of the provider's stream that stops reading releases the model's stream", () =>
    Effect.gen(function* () {
      const model = yield* endless
      const provider = yield* EffectAi.make().pipe(Effect.provide(model.layer))
      const parts = yield* Stream.runCollect(Stream.take(provider.stream({ prompt: "think" }), 1))
      assert.deepStrictEqual(parts, [{ _tag: "TextDelta", text: "Let me think" }])
      assert.strictEqual(yield* Ref.get(model.released), 1)
    })
  )
})
