import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit } from "effect"
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
