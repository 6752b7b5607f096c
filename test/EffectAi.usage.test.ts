import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Layer, Stream } from "effect"
import { LanguageModel, type Response } from "effect/ai"
import * as Model from "../src/Model.js"
import * as EffectAi from "../src/Model/EffectAi.js"

// A LanguageModel service written by hand (a test double, a wrapper of another SDK) rather than
// built with LanguageModel.make: its finish part is not decoded, so its usage may be missing or partial.
const handMade = (finish: Record<string, unknown>) =>
  Layer.succeed(LanguageModel.LanguageModel, {
    generateText: () =>
      Effect.succeed(
        new LanguageModel.GenerateTextResponse([{ type: "text", text: "hello" }, finish] as unknown as Array<
          Response.Part<{}>
        >)
      ),
    streamText: () =>
      Stream.make({ type: "text-delta", id: "t", delta: "hello" }, finish) as unknown as Stream.Stream<
        Response.StreamPart<{}>
      >
  } as unknown as LanguageModel.LanguageModel)

describe("EffectAi.make: the usage of a hand-made effect/ai LanguageModel", () => {
  it.effect("missing or partial usage is estimated where absent, kept where given: no defect, no NaN", () =>
    Effect.gen(function* () {
      const request = { prompt: "count my tokens" }
      const estimate = Model.estimateInputTokens(request)
      const cases = [
        [{ type: "finish", reason: "stop" }, estimate],
        [{ type: "finish", reason: "stop", usage: {} }, estimate],
        [{ type: "finish", reason: "stop", usage: { inputTokens: { total: 5 } } }, 5],
        [
          { type: "finish", reason: "stop", usage: { inputTokens: null, outputTokens: { total: Number.NaN } } },
          estimate
        ]
      ] as const
      for (const [finish, input] of cases) {
        const provider = yield* EffectAi.make().pipe(Effect.provide(handMade(finish)))
        const generated = yield* Effect.exit(provider.generate(request))
        assert.isTrue(Exit.isSuccess(generated), `generate ${JSON.stringify(finish)}: ${String(generated)}`)
        const parts = yield* Effect.exit(Stream.runCollect(provider.stream(request)))
        assert.isTrue(Exit.isSuccess(parts), `stream ${JSON.stringify(finish)}: ${String(parts)}`)
        if (Exit.isFailure(generated) || Exit.isFailure(parts)) continue
        const last = parts.value.at(-1)
        assert.strictEqual(last?._tag, "Finish")
        for (const usage of [generated.value.usage, last?._tag === "Finish" ? last.usage : undefined]) {
          assert.strictEqual(usage?.inputTokens, input, JSON.stringify(finish))
          assert.isTrue(Number.isSafeInteger(usage?.outputTokens) && (usage?.outputTokens ?? 0) > 0)
          assert.strictEqual(usage?.totalTokens, (usage?.inputTokens ?? 0) + (usage?.outputTokens ?? 0))
        }
      }
    })
  )
})

describe("EffectAi.make: usage given by its parts", () => {
  it.effect("a usage without totals (uncached + cache reads, text + reasoning) is the sum of its parts", () =>
    Effect.gen(function* () {
      const usage = {
        inputTokens: { uncached: 10, cacheRead: 90, cacheWrite: 5 },
        outputTokens: { text: 3, reasoning: 7 }
      }
      const finish = { type: "finish", reason: "stop", usage } as const
      const lm = yield* LanguageModel.make({
        generateText: () => Effect.succeed([{ type: "text", text: "hello" }, finish]),
        streamText: () => Stream.make({ type: "text-delta", id: "t", delta: "hello" }, finish)
      })
      const provider = yield* EffectAi.make().pipe(Effect.provide(Layer.succeed(LanguageModel.LanguageModel, lm)))
      const generated = yield* provider.generate({ prompt: "count my tokens" })
      const parts = yield* Stream.runCollect(provider.stream({ prompt: "count my tokens" }))
      const last = parts.at(-1)
      for (const got of [generated.usage, last?._tag === "Finish" ? last.usage : undefined]) {
        assert.deepStrictEqual(got, { inputTokens: 105, outputTokens: 10, totalTokens: 115 })
      }
    })
  )
})
