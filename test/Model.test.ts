import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Result, Schema } from "effect"
import { GenerateRequest, validateEmbed, validateGenerate } from "../src/Model.js"

// A seeded generator of request-like values: mostly valid shapes, with every way to be wrong.
const rng = (seed: number) => () => {
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed / 2147483648
}

const pick = <A>(next: () => number, values: ReadonlyArray<A>): A => values[Math.floor(next() * values.length)]!

const randomRequest = (next: () => number): unknown => {
  const r: Record<string, unknown> = {}
  if (next() < 0.6) r.prompt = pick(next, ["hi", "", " ", "x".repeat(5), 3, null])
  if (next() < 0.4) {
    r.messages = Array.from({ length: Math.floor(next() * 3) }, () => {
      const m: Record<string, unknown> = {
        role: pick(next, ["user", "system", "assistant", "tool", "robot", 1]),
        content: pick(next, ["a", "", 2, null])
      }
      if (next() < 0.1) m.extra = 1
      if (next() < 0.15) m.name = pick(next, ["alice", "Zo\u00eb", "", "a b", "a/b", 3, "x".repeat(257)])
      return m
    })
  }
  if (next() < 0.3) r.system = pick(next, ["be brief", 1])
  if (next() < 0.3) r.model = pick(next, ["m", "", " m", "m ", 4])
  if (next() < 0.3) r.maxTokens = pick(next, [1, 0, 1.5, 1_000_001, Number.NaN, Number.POSITIVE_INFINITY, "5"])
  if (next() < 0.3) r.temperature = pick(next, [0, 1.2, 2, 2.1, -0.1, Number.NaN])
  if (next() < 0.3) r.topP = pick(next, [0, 0.5, 1, 1.1, Number.NaN])
  if (next() < 0.2) r.seed = pick(next, [1, 1.5, -3, Number.NaN, 2 ** 53, -(2 ** 60)])
  if (next() < 0.1) r.temprature = 1
  if (next() < 0.1) r.stop = pick(next, [["x"], [1]])
  return r
}

const decodeStrict = Schema.decodeUnknownResult(GenerateRequest, { onExcessProperty: "error" })

describe("Model.validateGenerate", () => {
  it.effect("its fast path never accepts a shape the Schema refuses (5,000 seeded cases)", () =>
    Effect.gen(function* () {
      const next = rng(42)
      let accepted = 0
      for (let i = 0; i < 5_000; i++) {
        const request = randomRequest(next)
        const exit = yield* Effect.exit(validateGenerate(request as never))
        if (Exit.isSuccess(exit)) {
          accepted++
          assert.isTrue(Result.isSuccess(decodeStrict(request)), JSON.stringify(request))
        }
      }
      assert.isAbove(accepted, 100)
    })
  )

  it.effect(
    "a tool's parameters or a response schema nested too deep is refused naming the field, not a stack overflow",
    () =>
      Effect.gen(function* () {
        const nested = (depth: number): Record<string, unknown> => {
          let value: unknown = {}
          for (let i = 2; i < depth; i++) value = [value]
          return { a: value }
        }
        const messages = [{ role: "user" as const, content: "hi" }]
        const tool = yield* Effect.flip(
          validateGenerate({ messages, tools: [{ name: "f" }, { name: "g", parameters: nested(5000) }] })
        )
        assert.strictEqual(tool.reason, "InvalidRequest")
        assert.strictEqual(tool.field, "tools[1].parameters")
        const schema = yield* Effect.flip(
          validateGenerate({ messages, responseFormat: { type: "json_schema", name: "x", schema: nested(65) } })
        )
        assert.strictEqual(schema.field, "responseFormat.schema")
        const cyclic: Record<string, unknown> = {}
        cyclic.self = cyclic
        assert.strictEqual(
          (yield* Effect.flip(validateGenerate({ messages, tools: [{ name: "f", parameters: cyclic }] }))).field,
          "tools[0].parameters"
        )
        // 64 levels pass, a real schema with them.
        yield* validateGenerate({ messages, responseFormat: { type: "json_schema", name: "x", schema: nested(64) } })
      })
  )

  it.effect("a tool name outside what every provider accepts is refused naming tools[i].name, before any call", () =>
    Effect.gen(function* () {
      const messages = [{ role: "user" as const, content: "hi" }]
      // OpenAI takes ^[a-zA-Z0-9_-]{1,64}$; Gemini a first letter or underscore (then also . and :).
      for (const name of ["get weather", "3d", "a.b", "ns:f", "caf\u00e9", "", "x".repeat(65), "-f"]) {
        const error = yield* Effect.flip(validateGenerate({ messages, tools: [{ name: "ok" }, { name }] }))
        assert.strictEqual(error.reason, "InvalidRequest", name)
        assert.strictEqual(error.field, "tools[1].name", name)
      }
      for (const name of ["get_weather", "_f", "Get-Weather2", `a${"x".repeat(63)}`]) {
        yield* validateGenerate({ messages, tools: [{ name }] })
      }
    })
  )

  it.effect(
    "a message's name is 1 to 256 characters without spaces or < | \\ / > (OpenAI's rule): else refused naming it",
    () =>
      Effect.gen(function* () {
        for (const name of ["", "alice smith", "a/b", "a<b", "x".repeat(257), "tab\there"]) {
          const error = yield* Effect.flip(
            validateGenerate({
              messages: [
                { role: "user", content: "hi" },
                { role: "user", content: "yo", name }
              ]
            })
          )
          assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "messages[1].name"], name)
        }
        for (const name of ["alice", "Zo\u00eb", "bot_2-b", "x".repeat(256)]) {
          yield* validateGenerate({ messages: [{ role: "user", content: "hi", name }] })
        }
      })
  )

  it.effect("parallelToolCalls is a boolean: anything else is refused naming it", () =>
    Effect.gen(function* () {
      const messages = [{ role: "user" as const, content: "hi" }]
      const error = yield* Effect.flip(validateGenerate({ messages, parallelToolCalls: "no" as never }))
      assert.strictEqual(error.field, "parallelToolCalls")
      yield* validateGenerate({ messages, tools: [{ name: "f" }], parallelToolCalls: false })
    })
  )

  it.effect("an embedding request with too many texts is refused naming texts", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        validateEmbed({ texts: ["a", "b", "c"] }, { maxEmbedTexts: 2, maxInputChars: 10, maxMessages: 1 })
      )
      assert.strictEqual(error.field, "texts")
    })
  )

  it.effect("an empty stop sequence is refused naming it: Ollama and vLLM would stop every answer at its start", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(validateGenerate({ prompt: "hi", stop: ["END", ""] }))
      assert.strictEqual(error.reason, "InvalidRequest")
      assert.strictEqual(error.field, "stop[1]")
      yield* validateGenerate({ prompt: "hi", stop: ["END", " "] })
      yield* validateGenerate({ prompt: "hi", stop: [] })
    })
  )

  it.effect("an empty text to embed is refused naming its index, as OpenAI and the gateway refuse it", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(validateEmbed({ texts: ["a", ""] }))
      assert.strictEqual(error.reason, "InvalidRequest")
      assert.strictEqual(error.field, "texts[1]")
      yield* validateEmbed({ texts: ["a", " "] })
    })
  )

  it.effect("an empty embedding request says so, naming texts (not a missing texts[0])", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(validateEmbed({ texts: [] as never }))
      assert.strictEqual(error.field, "texts")
      assert.include(error.message, "at least one text")
    })
  )
})

describe("Model.validateGenerate: a refusal in the library's words", () => {
  // A request written as OpenAI's (`max_tokens`) said `Expected no excess property`, a missing content `Missing key`,
  // and a value out of range never said what it got: not the words of every other check (`unknown option (did you
  // mean timeout?)`, `expected a value of at least 1, got 0`).
  const refusal = (request: unknown) =>
    Effect.flip(validateGenerate(request as never)).pipe(Effect.map((error) => [error.field, error.message] as const))

  it.effect("a misspelt field is an unknown field with the field it is likely a typo of", () =>
    Effect.gen(function* () {
      const [field, message] = yield* refusal({ prompt: "hi", max_tokens: 64 })
      assert.strictEqual(field, "max_tokens")
      assert.strictEqual(message, "invalid max_tokens: unknown field (did you mean maxTokens?) (in the request)")
      const [, embed] = yield* Effect.flip(validateEmbed({ texts: ["a"], modl: "m" } as never)).pipe(
        Effect.map((error) => [error.field, error.message] as const)
      )
      assert.strictEqual(embed, "invalid modl: unknown field (did you mean model?) (in the embedding request)")
    })
  )

  it.effect("a missing field is missing (required)", () =>
    Effect.gen(function* () {
      const [field, message] = yield* refusal({ messages: [{ role: "user" }] })
      assert.strictEqual(field, "messages[0].content")
      assert.strictEqual(message, "invalid messages[0].content: missing (required) (in the request)")
    })
  )

  it.effect("a wrong value says what was expected and what it got, a long string cut", () =>
    Effect.gen(function* () {
      assert.deepStrictEqual(yield* refusal({ prompt: "hi", temperature: 3 }), [
        "temperature",
        "invalid temperature: expected a value between 0 and 2, got 3 (in the request)"
      ])
      assert.deepStrictEqual(yield* refusal({ prompt: "hi", maxTokens: 1.5 }), [
        "maxTokens",
        "invalid maxTokens: expected an integer, got 1.5 (in the request)"
      ])
      const [, role] = yield* refusal({ messages: [{ role: "usr", content: "x" }] })
      assert.match(role, /^invalid messages\[0\]\.role: expected .*"user".*, got "usr" \(in the request\)$/)
      const [, model] = yield* refusal({ prompt: "hi", model: 7 })
      assert.match(model, /^invalid model: expected string.*, got 7 \(in the request\)$/)
      const [, long] = yield* refusal({ prompt: "hi", temperature: "x".repeat(100_000) })
      assert.isBelow(long.length, 300)
      assert.include(long, "(100,000 characters)")
    })
  )
})
