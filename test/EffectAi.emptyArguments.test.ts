import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Stream } from "effect"
import { LanguageModel, type Prompt, type Response, Tool, Toolkit } from "effect/ai"
import * as EffectAi from "../src/Model/EffectAi.js"

// OpenAI answers a call of a tool without parameters with arguments "" (strict tools, several compatible
// servers always), takes it back in the conversation, and clients send it so: it says "no arguments".
const Now = Tool.make("Now", {})

describe('EffectAi: tool-call arguments "" are no arguments', () => {
  it.effect('make: a conversation with a call of arguments "" reaches the LanguageModel with params {}', () =>
    Effect.gen(function* () {
      const seen: Array<Prompt.Prompt> = []
      const lm = yield* LanguageModel.make({
        generateText: (options) =>
          Effect.sync(() => {
            seen.push(options.prompt)
            return [
              { type: "text", text: "noon" },
              { type: "finish", reason: "stop", usage: { inputTokens: {}, outputTokens: {} } }
            ] satisfies Array<Response.PartEncoded>
          }),
        streamText: () => Stream.empty
      })
      const provider = yield* EffectAi.make().pipe(Effect.provide(Layer.succeed(LanguageModel.LanguageModel, lm)))
      const answer = yield* provider.generate({
        messages: [
          { role: "user", content: "time?" },
          { role: "assistant", content: "", toolCalls: [{ id: "c1", name: "Now", arguments: "" }] },
          { role: "tool", toolCallId: "c1", content: "12:00" }
        ],
        tools: [{ name: "Now" }]
      })
      assert.strictEqual(answer.text, "noon")
      const call = seen[0]?.content[1]?.content[0]
      assert.deepStrictEqual(typeof call === "object" && call.type === "tool-call" ? [call.name, call.params] : call, [
        "Now",
        {}
      ])
    })
  )

  it.effect('languageModel: a target answering a call of arguments "" reaches effect/ai with params {}', () =>
    Effect.gen(function* () {
      const call = { id: "c1", name: "Now", arguments: "" }
      const target: EffectAi.Target = {
        generate: () =>
          Effect.succeed({
            text: "",
            finishReason: "tool_calls",
            usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
            provider: "t",
            model: "m",
            toolCalls: [call]
          }),
        stream: () =>
          Stream.make(
            { _tag: "ToolCall", call },
            {
              _tag: "Finish",
              finishReason: "tool_calls",
              usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
              provider: "t",
              model: "m"
            }
          )
      }
      const toolkit = Toolkit.make(Now)
      const layers = Layer.merge(
        toolkit.toLayer({ Now: () => Effect.succeed(undefined) }),
        EffectAi.layerLanguageModel(target)
      )
      const generated = yield* LanguageModel.generateText({
        prompt: "time?",
        toolkit,
        disableToolCallResolution: true
      }).pipe(Effect.provide(layers))
      assert.deepStrictEqual(
        generated.toolCalls.map((part) => [part.name, part.params]),
        [["Now", {}]]
      )
      const streamed = yield* LanguageModel.streamText({
        prompt: "time?",
        toolkit,
        disableToolCallResolution: true
      }).pipe(Stream.runCollect, Effect.provide(layers))
      assert.deepStrictEqual(
        streamed.flatMap((part) => (part.type === "tool-call" ? [[part.name, part.params]] : [])),
        [["Now", {}]]
      )
    })
  )
})
