import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Schema, Stream } from "effect"
import { LanguageModel, type Response, Tool, Toolkit } from "effect/ai"
import type * as Model from "../src/Model.js"
import * as EffectAi from "../src/Model/EffectAi.js"

const Lookup = Tool.make("Lookup", {
  parameters: Schema.Struct({ city: Schema.String }),
  success: Schema.String
})

// Anthropic's `pause_turn` reaches effect/ai as `pause`, which effect/ai counts a complete answer (its tool
// handlers run, as for `stop` and `tool-calls`); `unknown` is one it does not.
const pausing = (parts: ReadonlyArray<Response.PartEncoded>) =>
  Layer.effect(
    LanguageModel.LanguageModel,
    LanguageModel.make({
      generateText: () =>
        Effect.succeed([
          ...parts,
          { type: "finish", reason: "pause", usage: { inputTokens: {}, outputTokens: {} } } as never
        ]),
      streamText: () =>
        Stream.fromIterable([
          ...parts.map((part) =>
            part.type === "text" ? ({ type: "text-delta", id: "t", delta: part.text } as const) : part
          ),
          { type: "finish", reason: "pause", usage: { inputTokens: {}, outputTokens: {} } } as never
        ]) as Stream.Stream<Response.StreamPartEncoded>
    })
  )

const lastFinish = (parts: ReadonlyArray<Model.StreamPart>) => {
  const last = parts.at(-1)
  return last?._tag === "Finish" ? last.finishReason : undefined
}

describe("EffectAi: effect/ai's pause finish is a complete answer", () => {
  it.effect("make: pause is stop (tool_calls with calls), in generate and stream", () =>
    Effect.gen(function* () {
      const text = yield* EffectAi.make().pipe(Effect.provide(pausing([{ type: "text", text: "partial" }])))
      assert.strictEqual((yield* text.generate({ prompt: "x" })).finishReason, "stop")
      assert.strictEqual(lastFinish(yield* Stream.runCollect(text.stream({ prompt: "x" }))), "stop")
      const call = { type: "tool-call", id: "c1", name: "Lookup", params: { city: "Oslo" } } as const
      const calls = yield* EffectAi.make().pipe(Effect.provide(pausing([call])))
      const request = { prompt: "x", tools: [{ name: "Lookup" }] }
      assert.strictEqual((yield* calls.generate(request)).finishReason, "tool_calls")
      assert.strictEqual(lastFinish(yield* Stream.runCollect(calls.stream(request))), "tool_calls")
    })
  )

  it.effect("round trip: an effect/ai model pausing, through make and languageModel, is a complete answer", () =>
    Effect.gen(function* () {
      const text = yield* EffectAi.make().pipe(Effect.provide(pausing([{ type: "text", text: "partial" }])))
      const said = yield* LanguageModel.generateText({ prompt: "x" }).pipe(
        Effect.provide(EffectAi.layerLanguageModel(text))
      )
      assert.deepStrictEqual([said.text, said.finishReason], ["partial", "stop"])
      // With a call: its handler runs (effect/ai runs none after an incomplete answer).
      const call = { type: "tool-call", id: "c1", name: "Lookup", params: { city: "Oslo" } } as const
      const provider = yield* EffectAi.make().pipe(Effect.provide(pausing([call])))
      const toolkit = Toolkit.make(Lookup)
      const answer = yield* LanguageModel.generateText({ prompt: "x", toolkit }).pipe(
        Effect.provide(toolkit.toLayer({ Lookup: ({ city }) => Effect.succeed(`sunny in ${city}`) })),
        Effect.provide(EffectAi.layerLanguageModel(provider))
      )
      assert.strictEqual(answer.finishReason, "tool-calls")
      assert.deepStrictEqual(
        answer.toolResults.map((result) => [result.isFailure, result.result]),
        [[false, "sunny in Oslo"]]
      )
    })
  )
})

describe("EffectAi.languageModel: a target's answer of tool calls without a known finish reason", () => {
  it.effect("reaches effect/ai as tool-calls, so its handlers run, as make reads such an answer", () =>
    Effect.gen(function* () {
      const call = { id: "c1", name: "Lookup", arguments: '{"city":"Oslo"}' }
      const usage = { inputTokens: 1, outputTokens: 1, totalTokens: 2 }
      const target: EffectAi.Target = {
        generate: () =>
          Effect.succeed({ text: "", finishReason: "unknown", usage, provider: "t", model: "m", toolCalls: [call] }),
        stream: () =>
          Stream.make(
            { _tag: "ToolCall", call },
            { _tag: "Finish", finishReason: "unknown", usage, provider: "t", model: "m" }
          )
      }
      const toolkit = Toolkit.make(Lookup)
      const layers = Layer.merge(
        toolkit.toLayer({ Lookup: ({ city }) => Effect.succeed(`sunny in ${city}`) }),
        EffectAi.layerLanguageModel(target)
      )
      const answer = yield* LanguageModel.generateText({ prompt: "x", toolkit }).pipe(Effect.provide(layers))
      assert.strictEqual(answer.finishReason, "tool-calls")
      assert.deepStrictEqual(
        answer.toolResults.map((result) => [result.isFailure, result.result]),
        [[false, "sunny in Oslo"]]
      )
      const streamed = yield* LanguageModel.streamText({ prompt: "x", toolkit }).pipe(
        Stream.runCollect,
        Effect.provide(layers)
      )
      assert.deepStrictEqual(
        streamed.flatMap((part) => (part.type === "tool-result" ? [[part.isFailure, part.result]] : [])),
        [[false, "sunny in Oslo"]]
      )
      assert.deepStrictEqual(
        streamed.flatMap((part) => (part.type === "finish" ? [part.reason] : [])),
        ["tool-calls"]
      )
    })
  )
})
