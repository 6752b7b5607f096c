import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Stream } from "effect"
import { LanguageModel, type Response } from "effect/ai"
import { type ModelError, isRetryable, shouldFallback } from "../src/AiError.js"
import * as EffectAi from "../src/Model/EffectAi.js"

const finish = { type: "finish", reason: "stop", usage: { inputTokens: {}, outputTokens: {} } } as never

// A model answering with an image (Gemini's image output through @effect/ai-google): effect/ai gives a file part.
const answering = (parts: ReadonlyArray<Response.PartEncoded>) =>
  Layer.effect(
    LanguageModel.LanguageModel,
    LanguageModel.make({
      generateText: () => Effect.succeed([...parts, finish]),
      streamText: () =>
        Stream.fromIterable([
          ...parts.map((part) =>
            part.type === "text" ? ({ type: "text-delta", id: "t", delta: part.text } as const) : part
          ),
          finish
        ]) as Stream.Stream<Response.StreamPartEncoded>
    })
  )

const image = { type: "file", mediaType: "image/png", data: "iVBORw0KGgo=" } as const

describe("EffectAi.make: an answer made only of files", () => {
  it.effect("is Decode naming the media type (falls back, not retried), not an empty stop answer", () =>
    Effect.gen(function* () {
      const provider = yield* EffectAi.make().pipe(Effect.provide(answering([image])))
      const errors = [
        (yield* Effect.flip(provider.generate({ prompt: "draw a cat" }))) as ModelError,
        (yield* Effect.flip(Stream.runCollect(provider.stream({ prompt: "draw a cat" })))) as ModelError
      ]
      for (const error of errors) {
        assert.deepStrictEqual([error._tag, error.reason, error.field], ["ModelError", "Decode", "content"])
        assert.include(error.message, "only files (image/png)")
        assert.isFalse(isRetryable(error))
        assert.isTrue(shouldFallback(error))
      }
      // With text beside it, the text is the answer (the file skipped, as documented).
      const captioned = yield* EffectAi.make().pipe(Effect.provide(answering([image, { type: "text", text: "a cat" }])))
      assert.strictEqual((yield* captioned.generate({ prompt: "draw a cat" })).text, "a cat")
      const streamed = yield* Stream.runCollect(captioned.stream({ prompt: "draw a cat" }))
      assert.deepStrictEqual(
        streamed.map((part) => part._tag),
        ["TextDelta", "Finish"]
      )
    })
  )
})
