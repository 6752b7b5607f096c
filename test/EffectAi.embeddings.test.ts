import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Stream } from "effect"
import { EmbeddingModel, LanguageModel } from "effect/ai"
import type { ModelError } from "../src/AiError.js"
import * as Model from "../src/Model.js"
import * as EffectAi from "../src/Model/EffectAi.js"

// A target answering vectors of different lengths (or empty ones) in one answer: effect/ai would pass
// them on, and a vector store sized for one dimension would take the others, or fail far from here.
const answering = (vectorsOf: (texts: ReadonlyArray<string>) => Array<Array<number>>) =>
  EffectAi.embeddingModel({
    embed: (request) =>
      Effect.succeed({
        vectors: vectorsOf(request.texts),
        usage: Model.usage(1, 0),
        provider: "odd",
        model: "odd-embed"
      })
  })

const describedFailure = (exit: Exit.Exit<unknown, { readonly reason: { readonly _tag: string } }>) => {
  const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : undefined
  if (error?._tag !== "Some") return `no typed failure: ${String(exit)}`
  const reason = error.value.reason as { readonly _tag: string; readonly description?: string }
  return `${reason._tag}: ${reason.description ?? ""}`
}

describe("EffectAi.embeddingModel: vectors of one answer have one dimension", () => {
  it.effect("uneven or empty vectors are an InvalidOutputError naming the vector (embedMany and batched embed)", () =>
    Effect.gen(function* () {
      const uneven = yield* answering((texts) => texts.map((text) => (text === "short" ? [1] : [1, 2])))
      const many = describedFailure(yield* Effect.exit(uneven.embedMany(["long", "short"])))
      assert.include(many, "InvalidOutputError")
      assert.include(many, "vectors[1]")
      const exits = yield* Effect.forEach(["long", "short", "other"], (text) => Effect.exit(uneven.embed(text)), {
        concurrency: "unbounded"
      })
      for (const exit of exits) assert.include(describedFailure(exit), "InvalidOutputError")
      const empty = yield* answering((texts) => texts.map(() => []))
      assert.include(describedFailure(yield* Effect.exit(empty.embedMany(["a"]))), "vectors[0]")
      // One dimension throughout: answered.
      const even = yield* answering((texts) => texts.map(() => [0.5, 0.5]))
      assert.strictEqual((yield* even.embedMany(["a", "b"])).embeddings.length, 2)
    })
  )
})

// effect/ai's provider packages declare their vector size as EmbeddingModel.Dimensions beside the model
// (OpenAiEmbeddingModel.model(name, { dimensions })), and vector stores are sized from it; effect/ai itself
// never compares it with the vectors. An answer of another size would go into a store sized for the declared one.
describe("EmbeddingModel.Dimensions is the size of every vector", () => {
  it.effect(
    "embeddingModel: a vector of another length than Dimensions (built with it, or the caller's) is an InvalidOutputError naming both",
    () =>
      Effect.gen(function* () {
        const three = (texts: ReadonlyArray<string>) => texts.map(() => [1, 2, 3])
        const built = yield* answering(three).pipe(Effect.provideService(EmbeddingModel.Dimensions, 4))
        const many = describedFailure(yield* Effect.exit(built.embedMany(["a", "b"])))
        assert.include(many, "InvalidOutputError")
        assert.include(many, "vectors[0] has 3 dimensions where EmbeddingModel.Dimensions is 4")
        const batched = yield* Effect.forEach(["a", "b"], (text) => Effect.exit(built.embed(text)), {
          concurrency: "unbounded"
        })
        for (const exit of batched) assert.include(describedFailure(exit), "where EmbeddingModel.Dimensions is 4")
        // Declared by the caller (a layer beside the model), not when it was built.
        const plain = yield* answering(three)
        const declared = describedFailure(
          yield* Effect.exit(plain.embedMany(["a"]).pipe(Effect.provideService(EmbeddingModel.Dimensions, 2)))
        )
        assert.include(declared, "vectors[0] has 3 dimensions where EmbeddingModel.Dimensions is 2")
        // The size declared: answered.
        const fits = yield* plain.embedMany(["a"]).pipe(Effect.provideService(EmbeddingModel.Dimensions, 3))
        assert.deepStrictEqual(fits.embeddings[0]?.vector, [1, 2, 3])
        assert.lengthOf((yield* plain.embedMany(["a"])).embeddings, 1)
      })
  )

  it.effect(
    "make: vectors of the EmbeddingModel in context of another length than its Dimensions are Decode naming the vector",
    () =>
      Effect.gen(function* () {
        const lm = yield* LanguageModel.make({
          generateText: () => Effect.succeed([]),
          streamText: () => Stream.empty
        })
        const embeddings = yield* EmbeddingModel.make({
          embedMany: ({ inputs }) => Effect.succeed({ results: inputs.map(() => [1, 2, 3]), usage: { inputTokens: 1 } })
        })
        const providerWith = (dimensions: number) =>
          EffectAi.make({ model: "emb" }).pipe(
            Effect.provideService(LanguageModel.LanguageModel, lm),
            Effect.provideService(EmbeddingModel.EmbeddingModel, embeddings),
            Effect.provideService(EmbeddingModel.Dimensions, dimensions)
          )
        const wrong = yield* providerWith(1536)
        const error = (yield* Effect.flip(wrong.embed({ texts: ["a", "b"] }))) as ModelError
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "embeddings[0]"])
        assert.include(error.message, "3 dimensions where EmbeddingModel.Dimensions is 1536")
        assert.lengthOf((yield* (yield* providerWith(3)).embed({ texts: ["a"] })).vectors, 1)
      })
  )
})
