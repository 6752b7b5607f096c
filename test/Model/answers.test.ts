/**
 * A provider written in JavaScript (a `ModelProvider` service of the caller's own functions) is
 * not decoded: what its `generate` and `embed` answer is checked field by field, and a wrong
 * field is a `Decode` error naming the provider and the field, never a "success" whose caller
 * reads a `NaN` token count or compares vectors of another length.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Scope, Stream } from "effect"
import type { AiError } from "../../src/AiError.js"
import * as Executor from "../../src/Executor.js"
import { type GenerateResponse, ModelProvider, type Service as ProviderService } from "../../src/Model.js"

const good: GenerateResponse = {
  text: "hi",
  finishReason: "stop",
  usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
  provider: "js",
  model: "m"
}

const provider = (answer: unknown): ProviderService => ({
  name: "js",
  defaultModel: "m",
  generate: () => Effect.succeed(answer as GenerateResponse),
  stream: () => Stream.die("not used"),
  embed: () => Effect.succeed(answer as never)
})

const executorOf = (answer: unknown) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    const context = yield* Layer.buildWithScope(
      Executor.layerWithStats().pipe(Layer.provideMerge(Layer.succeed(ModelProvider, provider(answer)))),
      scope
    )
    return Context.get(context, Executor.Executor)
  })

const described = (error: AiError) => (error._tag === "ModelError" ? `${error.reason} ${error.provider}` : error._tag)

describe("a JavaScript provider's generate answer", () => {
  it.effect("with a wrong field is a Decode error naming the provider and the field", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [string, Record<string, unknown>]> = [
        ["text", { text: 5 }],
        ["text", { text: undefined }],
        ["finishReason", { finishReason: "done" }],
        ["finishReason", { finishReason: undefined }],
        ["usage", { usage: undefined }],
        ["usage", { usage: 7 }],
        ["usage.inputTokens", { usage: { inputTokens: Number.NaN, outputTokens: 1, totalTokens: 2 } }],
        ["usage.outputTokens", { usage: { inputTokens: 1, outputTokens: -1, totalTokens: 2 } }],
        ["usage.totalTokens", { usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2.5 } }],
        ["usage.totalTokens", { usage: { inputTokens: 1, outputTokens: 1, totalTokens: Infinity } }],
        ["usage.inputTokens", { usage: { inputTokens: "1", outputTokens: 1, totalTokens: 2 } }],
        ["provider", { provider: 3 }],
        ["model", { model: null }],
        ["toolCalls", { toolCalls: "call" }],
        ["toolCalls[1]", { toolCalls: [{ id: "a", name: "f", arguments: "{}" }, null] }],
        ["toolCalls[0].arguments", { toolCalls: [{ id: "a", name: "f", arguments: {} }] }],
        ["toolCalls[0].signature", { toolCalls: [{ id: "a", name: "f", arguments: "{}", signature: 1 }] }],
        ["refusal", { refusal: false }]
      ]
      for (const [field, change] of cases) {
        const executor = yield* executorOf({ ...good, ...change })
        const error = yield* Effect.flip(executor.execute({ prompt: "x" }))
        assert.strictEqual(described(error), "Decode js", `${field}: ${error.message}`)
        assert.include(error.message, `${field} `, JSON.stringify(change))
      }
    })
  )

  it.effect("that is sound answers as it is, optional fields absent or present", () =>
    Effect.gen(function* () {
      const full = { ...good, toolCalls: [{ id: "a", name: "f", arguments: "{}", signature: "s" }], refusal: "no" }
      for (const answer of [good, full, { ...good, usage: { inputTokens: 0, outputTokens: 0, totalTokens: 0 } }]) {
        const executor = yield* executorOf(answer)
        assert.deepStrictEqual(yield* executor.execute({ prompt: "x" }), answer)
      }
    })
  )
})

describe("a JavaScript provider's embeddings answer", () => {
  const answer = (vectors: unknown, rest: Record<string, unknown> = {}) => ({
    vectors,
    provider: "js",
    model: "m",
    ...rest
  })

  it.effect("with a vector that is wrong is a Decode error naming the provider and the vector", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [string, unknown]> = [
        [
          "vectors[1]",
          answer([
            [1, 2],
            [1, Number.NaN]
          ])
        ],
        [
          "vectors[0]",
          answer([
            [Infinity, 2],
            [1, 2]
          ])
        ],
        [
          "vectors[1]",
          answer([
            [1, 2],
            [1, "2"]
          ])
        ],
        [
          "vectors[1]",
          answer([
            [1, 2],
            [1, 2, 3]
          ])
        ],
        ["vectors[0]", answer([[], []])],
        ["vectors[1]", answer([[1, 2], "1,2"])],
        ["vectors[0]", answer([null, [1, 2]])],
        ["usage", answer([[1], [2]], { usage: 5 })],
        ["usage.inputTokens", answer([[1], [2]], { usage: { inputTokens: -3, outputTokens: 0, totalTokens: 0 } })],
        ["provider", answer([[1], [2]], { provider: undefined })],
        ["model", answer([[1], [2]], { model: 1 })]
      ]
      for (const [field, value] of cases) {
        const executor = yield* executorOf(value)
        const error = yield* Effect.flip(executor.embed({ texts: ["a", "b"] }))
        assert.strictEqual(described(error), "Decode js", `${field}: ${error.message}`)
        assert.include(error.message, `${field} `, JSON.stringify(value))
      }
    })
  )

  it.effect("that is sound answers as it is", () =>
    Effect.gen(function* () {
      const sound = answer([
        [0.5, -1],
        [0, 2]
      ])
      assert.deepStrictEqual(yield* (yield* executorOf(sound)).embed({ texts: ["a", "b"] }), sound)
      const counted = answer([[1], [2]], { usage: { inputTokens: 2, outputTokens: 0, totalTokens: 2 } })
      assert.deepStrictEqual(yield* (yield* executorOf(counted)).embed({ texts: ["a", "b"] }), counted)
    })
  )
})
