/**
 * `requestLimits`: the bounds on a request are the user's to set, checked where they enter,
 * and every call is held to them before a provider sees it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { setup } from "./utils/executor.js"

describe("requestLimits", () => {
  it.effect("a request over a configured limit is refused by field before the provider; one at the limit runs", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup(
        {},
        { requestLimits: { maxInputChars: 10, maxMessages: 2, maxEmbedTexts: 3 } }
      )
      const refused = [
        [executor.execute({ prompt: "x".repeat(11) }), "prompt"],
        [executor.execute({ messages: [{ role: "user", content: "x".repeat(11) }] }), "messages"],
        [
          executor.execute({
            messages: [
              { role: "user", content: "a" },
              { role: "assistant", content: "b" },
              { role: "user", content: "c" }
            ]
          }),
          "messages"
        ],
        [executor.embed({ texts: ["a", "b", "c", "d"] }), "texts"]
      ] as const
      for (const [call, field] of refused) {
        const error = yield* Effect.flip(
          call as Effect.Effect<unknown, { _tag: string; reason?: string; field?: string }>
        )
        assert.strictEqual(error._tag, "ModelError", field)
        assert.strictEqual(error.reason, "InvalidRequest", field)
        assert.strictEqual(error.field, field)
      }
      assert.strictEqual(yield* control.calls, 0, "no provider call for a refused request")
      yield* executor.execute({ prompt: "x".repeat(10) })
      yield* executor.embed({ texts: ["a", "b", "c"] })
      assert.strictEqual(yield* control.calls, 2)
    }).pipe(Effect.scoped)
  )

  it.effect("a limit that is not a positive whole number fails the executor with an OptionError naming it", () =>
    Effect.gen(function* () {
      for (const [limits, path] of [
        [{ maxInputChars: 0 }, "requestLimits.maxInputChars"],
        [{ maxInputChars: Number.NaN }, "requestLimits.maxInputChars"],
        [{ maxMessages: -1 }, "requestLimits.maxMessages"],
        [{ maxEmbedTexts: 2.5 }, "requestLimits.maxEmbedTexts"],
        [{ maxMessages: null }, "requestLimits.maxMessages"],
        // Not an object of limits at all: it was read as {} (every default).
        [5, "requestLimits"],
        [null, "requestLimits"]
      ] as const) {
        const error = yield* Effect.flip(setup({}, { requestLimits: limits as never }))
        assert.strictEqual(error._tag, "OptionError", path)
        assert.strictEqual(error._tag === "OptionError" && error.path, path)
      }
    }).pipe(Effect.scoped)
  )

  it.effect("the executor's stream options must be an object: 5 was read as {} (every default)", () =>
    Effect.gen(function* () {
      for (const stream of [5, "30 seconds", null]) {
        const error = yield* Effect.flip(setup({}, { stream: stream as never }))
        assert.strictEqual(error._tag === "OptionError" && error.path, "stream", String(stream))
      }
    }).pipe(Effect.scoped)
  )
})
