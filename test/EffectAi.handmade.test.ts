import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Layer, Stream } from "effect"
import { LanguageModel, type Response } from "effect/ai"
import type { ModelError } from "../src/AiError.js"
import * as EffectAi from "../src/Model/EffectAi.js"

// A LanguageModel written by hand over another SDK (not built with LanguageModel.make): its parts are
// not decoded, so a field may be missing or of another type.
const handMade = (parts: ReadonlyArray<unknown>) =>
  Layer.succeed(LanguageModel.LanguageModel, {
    generateText: () => Effect.succeed(new LanguageModel.GenerateTextResponse(parts as never)),
    streamText: () => Stream.fromIterable(parts) as unknown as Stream.Stream<Response.StreamPart<{}>>
  } as unknown as LanguageModel.LanguageModel)

const finish = { type: "finish", reason: "stop" }
const request = { prompt: "x", tools: [{ name: "lookup" }] }

describe("EffectAi.make: malformed parts of a hand-made effect/ai LanguageModel", () => {
  it.effect("are a Decode ModelError naming the field, not a defect or an answer breaking our schemas", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [ReadonlyArray<unknown>, string, "stream" | "generate" | "both"]> = [
        [[{ type: "text-delta", id: "t" }, finish], "text", "stream"],
        [[{ type: "text-delta", id: "t", delta: 5 }, finish], "text", "stream"],
        [[{ type: "text", text: 5 }, finish], "text", "generate"],
        [[{ type: "text" }, finish], "text", "generate"],
        [[{ type: "tool-call", name: "lookup", params: {} }, finish], "toolCalls[0].id", "both"],
        [[{ type: "tool-call", id: "c1", name: 7, params: {} }, finish], "toolCalls[0].name", "both"]
      ]
      for (const [parts, field, where] of cases) {
        const provider = yield* EffectAi.make().pipe(Effect.provide(handMade(parts)))
        const exits: Array<Exit.Exit<unknown, unknown>> = []
        if (where !== "generate") exits.push(yield* Effect.exit(Stream.runCollect(provider.stream(request))))
        if (where !== "stream") exits.push(yield* Effect.exit(provider.generate(request)))
        for (const exit of exits) {
          const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : undefined
          assert.isTrue(error?._tag === "Some", `${JSON.stringify(parts[0])}: a typed failure, got ${String(exit)}`)
          const value = (error?._tag === "Some" ? error.value : undefined) as ModelError | undefined
          assert.deepStrictEqual([value?.reason, value?.field], ["Decode", field], JSON.stringify(parts[0]))
        }
      }
    })
  )

  it.effect("a model id that is no string is not reported: the model asked for is", () =>
    Effect.gen(function* () {
      const parts = [{ type: "response-metadata", modelId: 5 }, { type: "text-delta", id: "t", delta: "hi" }, finish]
      const provider = yield* EffectAi.make({ model: "served" }).pipe(Effect.provide(handMade(parts)))
      assert.strictEqual((yield* provider.generate({ prompt: "x" })).model, "served")
      const last = (yield* Stream.runCollect(provider.stream({ prompt: "x" }))).at(-1)
      assert.strictEqual(last?._tag === "Finish" ? last.model : undefined, "served")
    })
  )
})
