/**
 * The hand-written checks that let an OpenAI answer or chunk skip its schema's decoding
 * (`DecodeOptions.accept`): they must take nothing the schema refuses, and what they take must
 * read as the schema's decoding of it would. Checked on answers as servers send them and on
 * thousands of mutations of them (a seeded generator: the same cases every run).
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Result, Schema } from "effect"
import * as Decode from "../../src/Model/http/decode.js"
import * as Wire from "../../src/Model/http/openAiWire.js"

const completions: ReadonlyArray<unknown> = [
  {
    id: "chatcmpl-1",
    object: "chat.completion",
    created: 1,
    model: "gpt-4o-mini",
    choices: [{ index: 0, message: { role: "assistant", content: "Paris." }, logprobs: null, finish_reason: "stop" }],
    usage: { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15, prompt_tokens_details: { cached_tokens: 0 } }
  },
  {
    model: "m",
    choices: [
      {
        index: 0,
        message: {
          role: "assistant",
          content: null,
          refusal: null,
          tool_calls: [
            {
              id: "call_1",
              type: "function",
              function: { name: "weather", arguments: '{"city":"Paris"}' },
              extra_content: { google: { thought_signature: "sig" } }
            }
          ]
        },
        finish_reason: "tool_calls"
      }
    ],
    usage: null
  },
  {
    model: "mistral",
    choices: [
      {
        message: {
          content: [
            { type: "thinking", thinking: [] },
            { type: "text", text: "Hi" }
          ]
        },
        finish_reason: "stop"
      },
      { index: 1, message: { content: "other" }, finish_reason: null }
    ]
  },
  { choices: [{ index: 0, message: { role: "assistant", refusal: "I cannot." }, finish_reason: "stop" }] }
]

const chunks: ReadonlyArray<unknown> = [
  {
    id: "c",
    object: "chat.completion.chunk",
    created: 1,
    model: "m",
    choices: [{ index: 0, delta: { role: "assistant", content: "tok " }, logprobs: null, finish_reason: null }]
  },
  { model: "m", choices: [], usage: { prompt_tokens: 3, completion_tokens: 7, total_tokens: 10 } },
  { choices: [{ index: 0, delta: {}, finish_reason: "stop" }] },
  {
    choices: [
      {
        index: 0,
        delta: {
          tool_calls: [
            { index: 0, id: "call_1", type: "function", function: { name: "weather", arguments: "" } },
            { index: 0, function: { arguments: '{"city":' } },
            { index: 0, function: null, extra_content: { google: { thought_signature: "s" } } }
          ]
        }
      }
    ]
  },
  {
    choices: [
      { delta: null, finish_reason: "" },
      { index: 1, delta: { content: [{ type: "text", text: null }] } }
    ]
  }
]

// A small seeded generator (mulberry32): the same mutations every run.
const random = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const replacements: ReadonlyArray<() => unknown> = [
  () => undefined,
  () => null,
  () => 0,
  () => -1.5,
  () => Number.POSITIVE_INFINITY,
  () => "",
  () => "x",
  () => true,
  () => [],
  () => [{}],
  () => ({}),
  () => ({ type: "text", text: "t" }),
  () => ({ name: "", arguments: 1 })
]

type Json = unknown
const clone = (value: Json): Json => (value === undefined ? undefined : structuredClone(value))

// Every place in a value: the root, each key of each object (present or one of the schema's
// keys that may be absent), each element of each array.
const places = (value: Json, path: Array<string | number> = [], out: Array<Array<string | number>> = []) => {
  out.push(path)
  if (Array.isArray(value)) for (let i = 0; i < value.length; i++) places(value[i], [...path, i], out)
  else if (typeof value === "object" && value !== null) {
    for (const key of new Set([...Object.keys(value), "index", "content", "function", "name", "usage", "delta"])) {
      places((value as Record<string, Json>)[key], [...path, key], out)
    }
  }
  return out
}

const mutate = (value: Json, next: () => number): Json => {
  const copy = clone(value)
  const all = places(copy)
  const path = all[Math.floor(next() * all.length)]!
  const replacement = replacements[Math.floor(next() * replacements.length)]!()
  if (path.length === 0) return replacement
  let parent = copy as Record<string | number, Json>
  for (const step of path.slice(0, -1)) parent = parent[step] as Record<string | number, Json>
  if (typeof parent !== "object" || parent === null) return copy
  const last = path[path.length - 1]!
  if (replacement === undefined && next() < 0.5 && !Array.isArray(parent)) delete parent[last]
  else parent[last] = replacement
  return copy
}

const check = (
  name: string,
  schema: Schema.Codec<unknown, unknown>,
  accept: (value: unknown) => boolean,
  seeds: ReadonlyArray<unknown>
) =>
  describe(name, () => {
    const decode = Schema.decodeUnknownResult(schema)
    // The schema's fields of a value: what a caller of the decoder reads.
    const fields = Schema.encodeUnknownSync(schema)

    it("takes the answers servers send, as the schema reads them", () => {
      for (const seed of seeds) {
        assert.isTrue(accept(seed), JSON.stringify(seed))
        const decoded = decode(seed)
        assert.isTrue(Result.isSuccess(decoded))
        if (Result.isSuccess(decoded)) assert.deepStrictEqual(fields(seed), fields(decoded.success))
      }
    })

    it("takes nothing the schema refuses, in 20,000 mutations of them", () => {
      const next = random(42)
      let taken = 0
      let refused = 0
      for (let i = 0; i < 20_000; i++) {
        let value = seeds[i % seeds.length]
        const times = 1 + Math.floor(next() * 3)
        for (let j = 0; j < times; j++) value = mutate(value, next)
        const decoded = decode(value)
        if (Result.isFailure(decoded)) refused++
        if (!accept(value)) continue
        taken++
        assert.isTrue(Result.isSuccess(decoded), `taken, but the schema refuses: ${JSON.stringify(value)}`)
        if (Result.isSuccess(decoded)) assert.deepStrictEqual(fields(value), fields(decoded.success))
      }
      // Both sides were exercised: many mutations are still answers, many are not.
      assert.isAbove(taken, 2_000)
      assert.isAbove(refused, 2_000)
    })

    it("leaves what it refuses to the schema, whose error names the field", () => {
      const decoder = Decode.resultDecoder(schema, { accept })
      const bad = clone(seeds[0]) as { choices: Array<Record<string, unknown>> }
      bad.choices[0]!.index = "0"
      assert.isFalse(accept(bad))
      const result = decoder(bad, { provider: "p" })
      assert.isTrue(Result.isFailure(result))
      if (Result.isFailure(result)) assert.include(result.failure.message, "choices[0].index")
    })
  })

check("ChatCompletion", Wire.ChatCompletion as never, Wire.isChatCompletion, completions)
check("ChatChunk", Wire.ChatChunk as never, Wire.isChatChunk, chunks)

describe("parseJson", () => {
  it("says where a text stops being JSON, never a piece of it (V8's message quotes the body: a token may be in it)", () => {
    const cases: ReadonlyArray<readonly [string, string]> = [
      ["sk-secret-abcdef-ghijkl", "invalid JSON"],
      ['{"token":"sk-secret-abcdef', "invalid JSON (at position 26)"],
      ['{"a":1} sk-secret', "invalid JSON (at position 8)"],
      ["", "invalid JSON (the text ends too soon)"]
    ]
    for (const [text, said] of cases) {
      const exit = Effect.runSyncExit(Decode.parseJson(text, { provider: "p" }))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
      const message = (error as Error).message
      assert.include(message, said)
      assert.notInclude(message, "sk-secret")
      assert.notInclude(message, "token")
    }
  })
})

describe("chatBody", () => {
  const options: Wire.ChatBodyOptions = {
    model: "m",
    stream: false,
    streamUsage: false,
    maxTokensField: "max_tokens",
    provider: "p"
  }
  const format = (name: string) => ({ type: "json_schema" as const, name, schema: { type: "object" } })

  it.effect("a response format's name outside OpenAI's ^[a-zA-Z0-9_-]{1,64}$ is refused naming it, before a call", () =>
    Effect.gen(function* () {
      for (const name of ["", "my schema", "a.b", "x".repeat(65), "naïve"]) {
        const error = yield* Effect.flip(Wire.chatBody({ prompt: "hi", responseFormat: format(name) }, options))
        assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "responseFormat.name"], name)
      }
      for (const name of ["w", "Answer_v2-1", "x".repeat(64)]) {
        const body = yield* Wire.chatBody({ prompt: "hi", responseFormat: format(name) }, options)
        assert.strictEqual((body["response_format"] as { json_schema: { name: string } }).json_schema.name, name)
      }
    })
  )
})

describe("chatBody participant names", () => {
  it.effect("a system, user or assistant message's name is sent as OpenAI's `name`; a tool message's is not", () =>
    Effect.gen(function* () {
      const body = yield* Wire.chatBody(
        {
          messages: [
            { role: "system", content: "s", name: "rules" },
            { role: "user", content: "hi", name: "alice" },
            { role: "assistant", content: "", name: "bot", toolCalls: [{ id: "c1", name: "f", arguments: "{}" }] },
            { role: "tool", content: "42", toolCallId: "c1", name: "f" },
            { role: "assistant", content: "it is 42", name: "bot" },
            { role: "user", content: "thanks" }
          ]
        },
        { model: "m", stream: false, streamUsage: false, maxTokensField: "max_tokens", provider: "p" }
      )
      const names = (body["messages"] as ReadonlyArray<Record<string, unknown>>).map((m) => m["name"])
      assert.deepStrictEqual(names, ["rules", "alice", "bot", undefined, "bot", undefined])
      assert.isFalse("name" in (body["messages"] as ReadonlyArray<Record<string, unknown>>)[5]!)
    })
  )
})

describe("chatBody tool messages", () => {
  const options: Wire.ChatBodyOptions = {
    model: "m",
    stream: false,
    streamUsage: false,
    maxTokensField: "max_tokens",
    provider: "p"
  }
  const conversation = (toolCallId: string | undefined) => ({
    messages: [
      { role: "user" as const, content: "weather?" },
      { role: "assistant" as const, content: "", toolCalls: [{ id: "call_0", name: "weather", arguments: "{}" }] },
      { role: "tool" as const, content: "sunny", ...(toolCallId === undefined ? {} : { toolCallId }) }
    ]
  })

  it.effect(
    "a tool message or a tool call with an empty id names no call: refused naming it, as a missing one is",
    () =>
      Effect.gen(function* () {
        for (const id of [undefined, ""]) {
          const error = yield* Effect.flip(Wire.chatBody(conversation(id), options))
          assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "messages[2].toolCallId"], String(id))
        }
        // The call it would answer cannot have an empty id either: OpenAI refuses one, after a call.
        const unnamed = {
          messages: [
            { role: "user" as const, content: "weather?" },
            { role: "assistant" as const, content: "", toolCalls: [{ id: "", name: "weather", arguments: "{}" }] }
          ]
        }
        const call = yield* Effect.flip(Wire.chatBody(unnamed, options))
        assert.deepStrictEqual([call.reason, call.field], ["InvalidRequest", "messages[1].toolCalls[0].id"])
        const body = yield* Wire.chatBody(conversation("call_0"), options)
        assert.deepStrictEqual((body["messages"] as Array<unknown>)[2], {
          role: "tool",
          tool_call_id: "call_0",
          content: "sunny"
        })
      })
  )
  it.effect(
    "a tool message answering a call no earlier assistant message made is refused naming its index and id",
    () =>
      Effect.gen(function* () {
        const error = yield* Effect.flip(Wire.chatBody(conversation("call_9"), options))
        assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "messages[2].toolCallId"])
        assert.include(error.message, '"call_9"')
        // A call made later is no call it answers; the index is the request's own, the system prompt aside.
        const later = {
          system: "be brief",
          messages: [
            { role: "user" as const, content: "weather?" },
            { role: "tool" as const, content: "sunny", toolCallId: "c1" },
            { role: "assistant" as const, content: "", toolCalls: [{ id: "c1", name: "weather", arguments: "{}" }] }
          ]
        }
        const early = yield* Effect.flip(Wire.chatBody(later, options))
        assert.deepStrictEqual([early.reason, early.field], ["InvalidRequest", "messages[1].toolCallId"])
      })
  )

  it.effect("OpenAI's order: a tool message right after the calls it answers, every call answered", () =>
    Effect.gen(function* () {
      const openAi = { ...options, toolTurnsInOrder: true }
      const user = (content: string) => ({ role: "user" as const, content })
      const calls = (...ids: ReadonlyArray<string>) => ({
        role: "assistant" as const,
        content: "",
        toolCalls: ids.map((id) => ({ id, name: "weather", arguments: "{}" }))
      })
      const tool = (id: string) => ({ role: "tool" as const, content: "sunny", toolCallId: id })
      // In order: built by both.
      const ordered = { messages: [user("a"), calls("c1", "c2"), tool("c2"), tool("c1"), user("b")] }
      yield* Wire.chatBody(ordered, openAi)
      // An answer after another turn: servers of the protocol take it, OpenAI answers a 400.
      const late = { messages: [user("a"), calls("c1"), tool("c1"), user("b"), tool("c1")] }
      yield* Wire.chatBody(late, options)
      const lateError = yield* Effect.flip(Wire.chatBody(late, openAi))
      assert.deepStrictEqual([lateError.reason, lateError.field], ["InvalidRequest", "messages[4].toolCallId"])
      assert.include(lateError.message, '"c1"')
      // A call of an earlier assistant message, answered after a later one's.
      const crossed = { messages: [user("a"), calls("c1"), user("b"), calls("c2"), tool("c2"), tool("c1")] }
      const crossedError = yield* Effect.flip(Wire.chatBody(crossed, openAi))
      assert.deepStrictEqual(crossedError.field, "messages[1].toolCalls[0]")
      // A call left without an answer before the next turn, or at the end.
      const unanswered = { messages: [user("a"), calls("c1", "c2"), tool("c1"), user("b")] }
      yield* Wire.chatBody(unanswered, options)
      const open = yield* Effect.flip(Wire.chatBody(unanswered, openAi))
      assert.deepStrictEqual([open.reason, open.field], ["InvalidRequest", "messages[1].toolCalls[1]"])
      assert.include(open.message, '"c2"')
      const atEnd = yield* Effect.flip(Wire.chatBody({ messages: [user("a"), calls("c1")] }, openAi))
      assert.deepStrictEqual(atEnd.field, "messages[1].toolCalls[0]")
    })
  )
})
