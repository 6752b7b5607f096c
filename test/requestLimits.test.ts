/**
 * `requestLimits`: the bounds on a request are the user's to set, checked where they enter,
 * and every call is held to them before a provider sees it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Model from "../src/Model.js"
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

describe("maxInputChars counts every character a request sends", () => {
  const limits = { maxInputChars: 100, maxMessages: 10, maxEmbedTexts: 10 }
  const fieldOf = (request: Model.GenerateRequest) =>
    Effect.map(Effect.flip(Model.validateGenerate(request, limits)), (error) => [error.reason, error.field])
  const big = "x".repeat(200)

  it.effect("tool calls, tool results, tool definitions, a response schema and stop sequences", () =>
    Effect.gen(function* () {
      const call = (extra: Partial<Model.ToolCall>) => ({ id: "c1", name: "lookup", arguments: "{}", ...extra })
      const conversation = (calls: ReadonlyArray<Model.ToolCall>, result = "ok"): Model.GenerateRequest => ({
        messages: [
          { role: "user", content: "weather?" },
          { role: "assistant", content: "", toolCalls: calls },
          { role: "tool", toolCallId: "c1", content: result }
        ]
      })
      assert.deepStrictEqual(yield* fieldOf(conversation([call({ arguments: JSON.stringify({ city: big }) })])), [
        "InvalidRequest",
        "messages"
      ])
      assert.deepStrictEqual(yield* fieldOf(conversation([call({ signature: big })])), ["InvalidRequest", "messages"])
      assert.deepStrictEqual(yield* fieldOf(conversation([call({ name: big })])), ["InvalidRequest", "messages"])
      assert.deepStrictEqual(yield* fieldOf(conversation([call({})], big)), ["InvalidRequest", "messages"])
      assert.deepStrictEqual(yield* fieldOf({ prompt: "x", tools: [{ name: "lookup", description: big }] }), [
        "InvalidRequest",
        "tools"
      ])
      assert.deepStrictEqual(
        yield* fieldOf({ prompt: "x", tools: [{ name: "lookup", parameters: { type: "object", description: big } }] }),
        ["InvalidRequest", "tools"]
      )
      assert.deepStrictEqual(
        yield* fieldOf({
          prompt: "x",
          responseFormat: { type: "json_schema", name: "answer", schema: { type: "object", description: big } }
        }),
        ["InvalidRequest", "responseFormat"]
      )
      assert.deepStrictEqual(yield* fieldOf({ prompt: "x", stop: [big] }), ["InvalidRequest", "stop"])
      assert.deepStrictEqual(
        yield* fieldOf({
          messages: [
            { role: "user", content: "weather?" },
            { role: "tool", toolCallId: big, content: "ok" }
          ]
        }),
        ["InvalidRequest", "messages"]
      )
      // Under the bound, the same shapes pass.
      yield* Model.validateGenerate(conversation([call({ arguments: '{"city":"Oslo"}', signature: "sig" })]), limits)
      yield* Model.validateGenerate({ prompt: "x", tools: [{ name: "lookup", description: "d" }] }, limits)
    })
  )

  it.effect("empty tool calls count their wire overhead: 50,000 of them are not a request of no size", () =>
    Effect.gen(function* () {
      // A name is the least a call has (an empty one is refused for every provider); id and arguments may be empty.
      const empty = { id: "", name: "f", arguments: "" }
      const request = (calls: number): Model.GenerateRequest => ({
        messages: [
          { role: "user", content: "go" },
          { role: "assistant", content: "", toolCalls: Array.from({ length: calls }, () => empty) }
        ]
      })
      const error = yield* Effect.flip(Model.validateGenerate(request(50_000)))
      assert.strictEqual(error.reason, "InvalidRequest")
      assert.strictEqual(error.field, "messages")
      assert.deepStrictEqual(yield* fieldOf(request(10)), ["InvalidRequest", "messages"])
      yield* Model.validateGenerate(request(1), limits)
    })
  )

  it.effect("an assistant tool call with an empty name is refused naming it, for every provider", () =>
    Effect.gen(function* () {
      const request: Model.GenerateRequest = {
        system: "s",
        messages: [
          { role: "user", content: "go" },
          {
            role: "assistant",
            content: "",
            toolCalls: [
              { id: "c1", name: "lookup", arguments: "{}" },
              { id: "c2", name: "", arguments: "{}" }
            ]
          },
          { role: "tool", toolCallId: "c1", content: "ok" }
        ]
      }
      assert.deepStrictEqual(yield* fieldOf(request), ["InvalidRequest", "messages[1].toolCalls[1].name"])
    })
  )

  it.effect("tool parameters JSON cannot write (a BigInt) are refused naming them, not a defect", () =>
    Effect.gen(function* () {
      assert.deepStrictEqual(yield* fieldOf({ prompt: "x", tools: [{ name: "lookup", parameters: { n: 1n } }] }), [
        "InvalidRequest",
        "tools[0].parameters"
      ])
    })
  )
})
