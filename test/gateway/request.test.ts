/**
 * Reading OpenAI requests: each mistake names the OpenAI parameter; what the pipeline
 * cannot honour is refused, not dropped; and the error mapping of every failure.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Result } from "effect"
import {
  CircuitOpenError,
  FallbackExhaustedError,
  ModelError,
  ShuttingDownError,
  StreamInterruptedError,
  TimeoutError
} from "../../src/AiError.js"
import { gatewayError, toWire } from "../../src/gateway/errors.js"
import * as Request from "../../src/gateway/request.js"
import * as Wire from "../../src/gateway/response.js"
import * as Model from "../../src/Model.js"

const chat = (body: Record<string, unknown>) =>
  Request.parseChat({ model: "m", messages: [{ role: "user", content: "hi" }], ...body })

const paramOf = (result: Result.Result<unknown, { readonly param?: string | undefined }>) =>
  Result.isFailure(result) ? result.failure.param : "accepted"

describe("gateway wire: chat requests", () => {
  it("a tool's function.name is 1 to 64 characters of a-z, A-Z, 0-9, _ and -, starting with a letter or _ (OpenAI's and Gemini's rules): else a 400 naming it", () => {
    const withName = (name: unknown) =>
      chat({
        tools: [
          { type: "function", function: { name: "ok" } },
          { type: "function", function: { name } }
        ]
      })
    for (const name of [
      "get weather",
      "",
      "a".repeat(65),
      "get.weather",
      "café",
      "a/b",
      "x\n",
      42,
      null,
      ["f"],
      "3d",
      "-f"
    ]) {
      const result = withName(name)
      assert.strictEqual(paramOf(result), "tools[1].function.name", JSON.stringify(name))
      if (Result.isFailure(result))
        assert.match(result.failure.message, /1 to 64 characters of a-z, A-Z, 0-9, _ or -, starting with a letter or _/)
    }
    const huge = withName("f".repeat(4_000_000))
    assert.isTrue(Result.isFailure(huge) && huge.failure.message.length < 300)
    for (const name of ["get_weather", "a", "A-9_z", "x".repeat(64), "_f"])
      assert.strictEqual(paramOf(withName(name)), "accepted")
  })

  it("parallel_tool_calls is read as parallelToolCalls (null as absent); another value than a boolean is a 400 naming it", () => {
    const tools = [{ type: "function", function: { name: "f" } }]
    const read = chat({ tools, parallel_tool_calls: false })
    assert.isTrue(Result.isSuccess(read) && read.success.request.parallelToolCalls === false)
    const absent = chat({ tools, parallel_tool_calls: null })
    assert.isTrue(Result.isSuccess(absent) && absent.success.request.parallelToolCalls === undefined)
    assert.strictEqual(paramOf(chat({ tools, parallel_tool_calls: "no" })), "parallel_tool_calls")
    assert.strictEqual(Request.openAiParam("parallelToolCalls", 0), "parallel_tool_calls")
  })

  it("a function name given twice in tools is a 400 naming the second, as OpenAI refuses it", () => {
    const tool = (name: string) => ({ type: "function", function: { name } })
    const twice = chat({ tools: [tool("a"), tool("b"), tool("a")] })
    assert.strictEqual(paramOf(twice), "tools[2].function.name")
    if (Result.isFailure(twice))
      assert.include(twice.failure.message, 'duplicate function name "a" (first at tools[0])')
    assert.strictEqual(paramOf(chat({ tools: [tool("a"), tool("A"), tool("a_")] })), "accepted")
  })

  it("a tool message answers a call of the assistant message before it, and every call is answered before the conversation goes on: else a 400 naming tool_call_id or tool_calls", () => {
    const call = (id: string) => ({ id, type: "function", function: { name: "f", arguments: "{}" } })
    const assistant = (...ids: Array<string>) => ({ role: "assistant", content: null, tool_calls: ids.map(call) })
    const tool = (id: string) => ({ role: "tool", tool_call_id: id, content: "42" })
    const user = { role: "user", content: "hi" }
    const system = { role: "system", content: "be brief" }
    // Answered calls, several at once, after hoisted system messages.
    const answered = [system, user, assistant("c1", "c2"), tool("c2"), tool("c1"), user, assistant("c3"), tool("c3")]
    assert.strictEqual(paramOf(chat({ messages: answered })), "accepted")
    for (const [messages, param] of [
      [[user, tool("c1")], "messages[1].tool_call_id"],
      [[system, user, assistant("c1"), tool("c9")], "messages[3].tool_call_id"],
      // A call of an earlier turn is not the one the assistant is waiting on.
      [[user, assistant("c1"), tool("c1"), user, tool("c1")], "messages[4].tool_call_id"],
      [[user, assistant("c1"), tool("c1"), assistant("c2"), tool("c1")], "messages[4].tool_call_id"]
    ] as const) {
      const result = chat({ messages })
      assert.strictEqual(paramOf(result), param, JSON.stringify(messages))
    }
    // A call left unanswered before the conversation goes on, as OpenAI refuses it.
    const unanswered = chat({ messages: [system, user, assistant("c1", "c2"), tool("c1"), user] })
    assert.strictEqual(paramOf(unanswered), "messages[2].tool_calls")
    if (Result.isFailure(unanswered)) assert.include(unanswered.failure.message, '"c2"')
    assert.strictEqual(paramOf(chat({ messages: [user, assistant("c1"), user] })), "messages[1].tool_calls")
    // The last message may still be the assistant's calls (a conversation replayed up to them).
    assert.strictEqual(paramOf(chat({ messages: [user, assistant("c1")] })), "accepted")
    const unknown = chat({ messages: [user, assistant("c1"), tool("x".repeat(100_000))] })
    assert.isTrue(Result.isFailure(unknown) && unknown.failure.message.length < 300)
    if (Result.isFailure(unknown)) assert.include(unknown.failure.message, "no tool call")
  })

  it("a message's name is a string without spaces or <|\\/>, of at most 256 characters, as OpenAI's pattern: else a 400 naming it", () => {
    const named = (name: unknown) =>
      chat({
        messages: [
          { role: "user", content: "hi" },
          { role: "user", content: "ho", name }
        ]
      })
    for (const name of [42, true, {}, ["me"], "", "a b", "x<y", "a|b", "a/b", "a\\b", "a>b", "n".repeat(257)]) {
      const result = named(name)
      assert.strictEqual(paramOf(result), "messages[1].name", JSON.stringify(name))
      if (Result.isFailure(result)) assert.isBelow(result.failure.message.length, 300)
    }
    for (const name of ["me", "Ana_B-2", "n".repeat(256), "café", null])
      assert.strictEqual(paramOf(named(name)), "accepted")
  })

  it('an assistant message\'s tool call has type "function": else a 400 naming messages[i].tool_calls[j].type', () => {
    const call = (type: unknown) => ({ id: "c2", type, function: { name: "f", arguments: "{}" } })
    const conversation = (type: unknown) => [
      { role: "system", content: "s" },
      { role: "user", content: "hi" },
      { role: "user", content: "ho" },
      {
        role: "assistant",
        content: null,
        tool_calls: [{ id: "c1", type: "function", function: { name: "f" } }, call(type)]
      },
      { role: "tool", tool_call_id: "c1", content: "1" },
      { role: "tool", tool_call_id: "c2", content: "2" }
    ]
    for (const type of ["custom", "Function", undefined, null, 1]) {
      const result = chat({ messages: conversation(type) })
      assert.strictEqual(paramOf(result), "messages[3].tool_calls[1].type", String(type))
    }
    assert.strictEqual(paramOf(chat({ messages: conversation("function") })), "accepted")
  })

  it("a refusal part is an assistant's: in a system, developer, user or tool message it is a 400 naming the part", () => {
    const refusal = [{ type: "refusal", refusal: "no" }]
    const call = { id: "c1", type: "function", function: { name: "f", arguments: "{}" } }
    for (const [messages, param] of [
      [
        [
          { role: "system", content: refusal },
          { role: "user", content: "hi" }
        ],
        "messages[0].content[0].type"
      ],
      [[{ role: "developer", content: refusal }], "messages[0].content[0].type"],
      [[{ role: "user", content: [{ type: "text", text: "a" }, ...refusal] }], "messages[0].content[1].type"],
      [
        [
          { role: "user", content: "hi" },
          { role: "assistant", content: null, tool_calls: [call] },
          { role: "tool", tool_call_id: "c1", content: refusal }
        ],
        "messages[2].content[0].type"
      ]
    ] as const) {
      assert.strictEqual(paramOf(chat({ messages })), param, JSON.stringify(messages))
    }
    const replayed = chat({
      messages: [
        { role: "user", content: "hi" },
        { role: "assistant", content: refusal },
        { role: "user", content: "why" }
      ]
    })
    assert.strictEqual(paramOf(replayed), "accepted")
  })

  it("a tool call answered twice is a 400 naming the second answer's tool_call_id", () => {
    const call = (id: string) => ({ id, type: "function", function: { name: "f", arguments: "{}" } })
    const tool = (id: string) => ({ role: "tool", tool_call_id: id, content: "42" })
    const result = chat({
      messages: [
        { role: "system", content: "s" },
        { role: "user", content: "hi" },
        { role: "assistant", content: null, tool_calls: [call("c1"), call("c2")] },
        tool("c1"),
        tool("c2"),
        tool("c1")
      ]
    })
    assert.strictEqual(paramOf(result), "messages[5].tool_call_id")
    if (Result.isFailure(result)) assert.include(result.failure.message, '"c1"')
  })

  it("a conversation that ends with some calls of its last assistant message answered and others not is a 400 naming its tool_calls", () => {
    const call = (id: string) => ({ id, type: "function", function: { name: "f", arguments: "{}" } })
    const tool = (id: string) => ({ role: "tool", tool_call_id: id, content: "42" })
    const user = { role: "user", content: "hi" }
    const assistant = { role: "assistant", content: null, tool_calls: [call("c1"), call("c2")] }
    const partly = chat({ messages: [{ role: "system", content: "s" }, user, assistant, tool("c1")] })
    assert.strictEqual(paramOf(partly), "messages[2].tool_calls")
    if (Result.isFailure(partly)) assert.include(partly.failure.message, '"c2"')
    // Every call answered, or none yet (a conversation replayed up to the calls): accepted.
    assert.strictEqual(paramOf(chat({ messages: [user, assistant, tool("c2"), tool("c1")] })), "accepted")
    assert.strictEqual(paramOf(chat({ messages: [user, assistant] })), "accepted")
  })

  it("two calls of one id in an assistant message is a 400 naming the second's id: their answers could not be told apart", () => {
    const call = (id: string) => ({ id, type: "function", function: { name: "f", arguments: "{}" } })
    const result = chat({
      messages: [
        { role: "user", content: "hi" },
        { role: "assistant", content: null, tool_calls: [call("c1"), call("c2"), call("c1")] },
        { role: "tool", tool_call_id: "c1", content: "1" },
        { role: "tool", tool_call_id: "c2", content: "2" }
      ]
    })
    assert.strictEqual(paramOf(result), "messages[1].tool_calls[2].id")
    if (Result.isFailure(result)) assert.include(result.failure.message, '"c1"')
  })

  it("an assistant message's refusal field is a string read as what it said; in another role it is a 400 naming it", () => {
    const user = { role: "user", content: "hi" }
    const replayed = chat({
      messages: [user, { role: "assistant", content: null, refusal: "I can't help with that." }, user]
    })
    assert.deepStrictEqual(Result.getOrThrow(replayed).request.messages?.[1], {
      role: "assistant",
      content: "I can't help with that."
    })
    for (const [messages, param] of [
      [[{ ...user, refusal: "no" }], "messages[0].refusal"],
      [[{ role: "system", content: "s", refusal: "no" }, user], "messages[0].refusal"],
      [[user, { role: "assistant", content: null, refusal: 42 }, user], "messages[1].refusal"]
    ] as const) {
      assert.strictEqual(paramOf(chat({ messages })), param, JSON.stringify(messages))
    }
    // null says nothing, in any role (clients that write every field).
    assert.strictEqual(paramOf(chat({ messages: [{ ...user, refusal: null }] })), "accepted")
    const both = chat({ messages: [user, { role: "assistant", content: "Sorry.", refusal: null }, user] })
    assert.strictEqual(Result.getOrThrow(both).request.messages?.[1]?.content, "Sorry.")
  })

  it("reads a tool call's Gemini thought signature (extra_content.google.thought_signature), checked", () => {
    const withExtra = (extra: unknown) =>
      chat({
        messages: [
          { role: "user", content: "hi" },
          {
            role: "assistant",
            content: null,
            tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "{}" }, extra_content: extra }]
          },
          { role: "tool", tool_call_id: "c1", content: "42" }
        ]
      })
    const read = withExtra({ google: { thought_signature: "c2lnbmF0dXJl" } })
    assert.isTrue(Result.isSuccess(read))
    assert.deepStrictEqual(Result.getOrThrow(read).request.messages?.[1]?.toolCalls, [
      { id: "c1", name: "f", arguments: "{}", signature: "c2lnbmF0dXJl" }
    ])
    for (const extra of [null, {}, { google: {} }, { google: null }, { google: { thought_signature: null } }]) {
      const result = withExtra(extra)
      assert.strictEqual(paramOf(result), "accepted", JSON.stringify(extra))
      assert.deepStrictEqual(Result.getOrThrow(result).request.messages?.[1]?.toolCalls, [
        { id: "c1", name: "f", arguments: "{}" }
      ])
    }
    for (const [extra, param] of [
      [42, "messages[1].tool_calls[0].extra_content"],
      [{ google: "x" }, "messages[1].tool_calls[0].extra_content.google"],
      [{ google: { thought_signature: 7 } }, "messages[1].tool_calls[0].extra_content.google.thought_signature"],
      [{ google: { thought_signature: "" } }, "messages[1].tool_calls[0].extra_content.google.thought_signature"],
      [
        { google: { thought_signature: "s".repeat(1_048_577) } },
        "messages[1].tool_calls[0].extra_content.google.thought_signature"
      ]
    ] as const) {
      const result = withExtra(extra)
      assert.strictEqual(paramOf(result), param, JSON.stringify(extra).slice(0, 80))
      if (Result.isFailure(result)) assert.isBelow(result.failure.message.length, 300)
    }
  })

  it("response_format.json_schema.name is 1 to 64 characters of a-z, A-Z, 0-9, _ and -, as OpenAI's: else a 400 naming it", () => {
    const withName = (name: unknown) =>
      chat({ response_format: { type: "json_schema", json_schema: { name, schema: { type: "object" } } } })
    for (const name of ["my schema", "", "a".repeat(65), "a.b", "café", 42, null]) {
      const result = withName(name)
      assert.strictEqual(paramOf(result), "response_format.json_schema.name", JSON.stringify(name))
    }
    for (const name of ["answer", "A-9_z", "x".repeat(64)]) assert.strictEqual(paramOf(withName(name)), "accepted")
  })

  it("reads the conversation: leading system/developer messages become the system prompt", () => {
    const read = Request.parseChat({
      model: "support",
      messages: [
        { role: "system", content: "one" },
        { role: "developer", content: [{ type: "text", text: "two" }] },
        {
          role: "user",
          content: [
            { type: "text", text: "a" },
            { type: "text", text: "b" }
          ],
          name: "me"
        },
        {
          role: "assistant",
          content: null,
          tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "{}" } }]
        },
        { role: "tool", tool_call_id: "c1", content: "42" },
        { role: "system", content: "late" }
      ],
      max_completion_tokens: 9,
      temperature: 0,
      top_p: 1,
      seed: 7,
      stop: "END",
      user: "someone",
      metadata: { a: "b" }
    })
    assert.isTrue(Result.isSuccess(read))
    const call = Result.getOrThrow(read)
    assert.strictEqual(call.model, "support")
    assert.isFalse(call.stream)
    assert.deepStrictEqual(call.request, {
      system: "one\n\ntwo",
      messages: [
        { role: "user", content: "ab", name: "me" },
        { role: "assistant", content: "", toolCalls: [{ id: "c1", name: "f", arguments: "{}" }] },
        { role: "tool", content: "42", toolCallId: "c1" },
        { role: "system", content: "late" }
      ],
      maxTokens: 9,
      temperature: 0,
      topP: 1,
      seed: 7,
      stop: ["END"]
    })
  })

  it('stop: [] and stop: "" are no stop sequence (OpenAI accepts an empty list as none); an empty string in a list is left out', () => {
    for (const stop of [[], "", [""], ["", ""]]) {
      const call = Result.getOrThrow(chat({ stop }))
      assert.isFalse("stop" in call.request, JSON.stringify(stop))
    }
    assert.deepStrictEqual(Result.getOrThrow(chat({ stop: ["", "END"] })).request.stop, ["END"])
    assert.deepStrictEqual(Result.getOrThrow(chat({ stop: ["A", "B"] })).request.stop, ["A", "B"])
  })

  it("response_format.json_schema.description is checked (a string) and passed on", () => {
    const format = (description: unknown) =>
      chat({ response_format: { type: "json_schema", json_schema: { name: "s", description, schema: {} } } })
    assert.deepStrictEqual(Result.getOrThrow(format("what the answer is")).request.responseFormat, {
      type: "json_schema",
      name: "s",
      description: "what the answer is",
      schema: {}
    })
    assert.deepStrictEqual(Result.getOrThrow(format(null)).request.responseFormat, {
      type: "json_schema",
      name: "s",
      schema: {}
    })
    // It is input the provider reads: reserved against budgets, and counted by the input estimate.
    const long = Result.getOrThrow(format("x".repeat(30_000))).request
    const short = Result.getOrThrow(format("x")).request
    assert.isAtLeast(Model.reserveInputTokens(long) - Model.reserveInputTokens(short), 9_999)
    assert.isAtLeast(Model.estimateInputTokens(long) - Model.estimateInputTokens(short), 7_499)
    for (const description of [5, {}, ["x"], true]) {
      assert.strictEqual(paramOf(format(description)), "response_format.json_schema.description")
    }
  })

  it("reads tools, tool_choice, response_format and stream options", () => {
    const call = Result.getOrThrow(
      chat({
        tools: [{ type: "function", function: { name: "weather", description: "d", parameters: { type: "object" } } }],
        tool_choice: { type: "function", function: { name: "weather" } },
        response_format: { type: "json_schema", json_schema: { name: "s", schema: { type: "object" }, strict: true } },
        stream: true,
        stream_options: { include_usage: true }
      })
    )
    assert.deepStrictEqual(call.request.tools, [{ name: "weather", description: "d", parameters: { type: "object" } }])
    assert.deepStrictEqual(call.request.toolChoice, { name: "weather" })
    assert.deepStrictEqual(call.request.responseFormat, {
      type: "json_schema",
      name: "s",
      schema: { type: "object" },
      strict: true
    })
    assert.isTrue(call.stream)
    assert.isTrue(call.includeUsage)
  })

  it("names the OpenAI parameter of each mistake", () => {
    assert.strictEqual(paramOf(Request.parseChat(null)), "body")
    assert.strictEqual(paramOf(Request.parseChat({ messages: [] })), "model")
    assert.strictEqual(paramOf(Request.parseChat({ model: "m" })), "messages")
    assert.strictEqual(paramOf(Request.parseChat({ model: "m", messages: [] })), "messages")
    assert.strictEqual(paramOf(chat({ messages: [{ role: "user" }] })), "messages[0].content")
    assert.strictEqual(paramOf(chat({ messages: [{ role: "robot", content: "x" }] })), "messages[0].role")
    assert.strictEqual(
      paramOf(chat({ messages: [{ role: "user", content: [{ type: "image_url", image_url: {} }] }] })),
      "messages[0].content[0].type"
    )
    assert.strictEqual(paramOf(chat({ messages: [{ role: "tool", content: "x" }] })), "messages[0].tool_call_id")
    assert.strictEqual(paramOf(chat({ messages: [{ role: "user", content: "x", audio: {} }] })), "messages[0].audio")
    assert.strictEqual(paramOf(chat({ max_tokens: 0 })), "max_tokens")
    assert.strictEqual(paramOf(chat({ max_tokens: 1.5 })), "max_tokens")
    assert.strictEqual(paramOf(chat({ max_tokens: "10" })), "max_tokens")
    assert.strictEqual(paramOf(chat({ max_tokens: 5, max_completion_tokens: 6 })), "max_completion_tokens")
    assert.strictEqual(paramOf(chat({ temperature: 2.5 })), "temperature")
    assert.strictEqual(paramOf(chat({ temperature: Number.NaN })), "temperature")
    assert.strictEqual(paramOf(chat({ top_p: -0.1 })), "top_p")
    assert.strictEqual(paramOf(chat({ seed: 1.5 })), "seed")
    assert.strictEqual(paramOf(chat({ stop: [1] })), "stop")
    assert.strictEqual(paramOf(chat({ stream: "yes" })), "stream")
    assert.strictEqual(paramOf(chat({ stream_options: { include_usage: true } })), "stream_options")
    assert.strictEqual(paramOf(chat({ stream: true, stream_options: { verbose: 1 } })), "stream_options.verbose")
    assert.strictEqual(paramOf(chat({ tools: [{ type: "function", function: {} }] })), "tools[0].function.name")
    assert.strictEqual(
      paramOf(chat({ tools: [{ type: "function", function: { name: "f", strict: "yes" } }] })),
      "tools[0].function.strict"
    )
    assert.strictEqual(paramOf(chat({ tool_choice: "sometimes" })), "tool_choice")
    // As OpenAI answers: a tool call cannot be forced without tools, nor one of a tool not given.
    assert.strictEqual(paramOf(chat({ tool_choice: "required" })), "tool_choice")
    assert.strictEqual(paramOf(chat({ tool_choice: "required", tools: [] })), "tool_choice")
    assert.strictEqual(paramOf(chat({ tool_choice: { type: "function", function: { name: "f" } } })), "tool_choice")
    assert.strictEqual(
      paramOf(
        chat({
          tools: [{ type: "function", function: { name: "g" } }],
          tool_choice: { type: "function", function: { name: "f" } }
        })
      ),
      "tool_choice.function.name"
    )
    assert.strictEqual(paramOf(chat({ tool_choice: "auto" })), "accepted")
    assert.strictEqual(paramOf(chat({ tool_choice: "none" })), "accepted")
    assert.strictEqual(paramOf(chat({ response_format: { type: "xml" } })), "response_format.type")
    assert.strictEqual(paramOf(chat({ temprature: 1 })), "temprature")
  })

  it("says back at most 64 characters of a name or value the client made up", () => {
    const long = "x".repeat(10_000)
    const refusals: ReadonlyArray<
      Result.Result<unknown, { readonly message: string; readonly param?: string | undefined }>
    > = [
      chat({ [long]: 1 }),
      chat({ messages: [{ role: "user", content: "hi", [long]: 1 }] }),
      chat({ messages: [{ role: long, content: "hi" }] }),
      chat({ messages: [{ role: "user", content: [{ type: long }] }] }),
      chat({ stream: true, stream_options: { [long]: true } }),
      chat({
        tools: [{ type: "function", function: { name: "f" } }],
        tool_choice: { type: "function", function: { name: long } }
      }),
      Request.parseEmbed({ model: "e", input: "x", [long]: 1 })
    ]
    for (const refused of refusals) {
      assert.isTrue(Result.isFailure(refused))
      if (Result.isFailure(refused)) {
        assert.isBelow(refused.failure.message.length, 250, refused.failure.message.slice(0, 80))
        assert.isBelow(refused.failure.param?.length ?? 0, 100)
      }
    }
  })

  it("bounds the model's name, which the gateway keeps and says back", () => {
    const long = `a/${"x".repeat(300)}`
    assert.strictEqual(
      paramOf(Request.parseChat({ model: long, messages: [{ role: "user", content: "hi" }] })),
      "model"
    )
    assert.strictEqual(paramOf(Request.parseEmbed({ model: long, input: "x" })), "model")
    const refused = Request.parseChat({ model: long, messages: [{ role: "user", content: "hi" }] })
    assert.isTrue(Result.isFailure(refused) && !refused.failure.message.includes(long))
    const longest = `a/${"x".repeat(254)}`
    assert.strictEqual(
      paramOf(Request.parseChat({ model: longest, messages: [{ role: "user", content: "hi" }] })),
      "accepted"
    )
  })

  it("says the value it refused, as written", () => {
    const messageOf = (result: Result.Result<unknown, { readonly message: string }>) =>
      Result.isFailure(result) ? result.failure.message : "accepted"
    assert.strictEqual(messageOf(chat({ seed: 1.5 })), "invalid seed: expected an integer, got 1.5")
    assert.strictEqual(messageOf(chat({ seed: "7" })), "invalid seed: expected an integer, got a string")
    assert.strictEqual(
      messageOf(chat({ max_tokens: -3 })),
      "invalid max_tokens: expected an integer from 1 to 1000000, got -3"
    )
  })

  it("names a refused field of the library's request by the client's parameter", () => {
    const named = (field: string, hoisted = 0) => Request.openAiParam(field, hoisted)
    assert.strictEqual(named("toolChoice"), "tool_choice")
    assert.strictEqual(named("responseFormat.schema"), "response_format.json_schema.schema")
    assert.strictEqual(named("tools[3].parameters"), "tools[3].function.parameters")
    assert.strictEqual(named("messages[1].toolCalls[0].arguments", 2), "messages[3].tool_calls[0].function.arguments")
    assert.strictEqual(named("messages[0].toolCallId", 1), "messages[1].tool_call_id")
    assert.strictEqual(named("messages"), "messages")
  })

  it("refuses what it cannot honour and accepts its neutral values", () => {
    assert.strictEqual(paramOf(chat({ n: 2 })), "n")
    assert.strictEqual(paramOf(chat({ n: 1 })), "accepted")
    assert.strictEqual(paramOf(chat({ presence_penalty: 0.5 })), "presence_penalty")
    assert.strictEqual(paramOf(chat({ frequency_penalty: 0 })), "accepted")
    assert.strictEqual(paramOf(chat({ logprobs: true })), "logprobs")
    assert.strictEqual(paramOf(chat({ logit_bias: { "1": 2 } })), "logit_bias")
    assert.strictEqual(paramOf(chat({ logit_bias: {} })), "accepted")
    assert.strictEqual(paramOf(chat({ max_tokens: null, temperature: null, tools: null })), "accepted")
    // OpenAI's default, which some clients write out.
    assert.strictEqual(paramOf(chat({ modalities: ["text"] })), "accepted")
    assert.strictEqual(paramOf(chat({ modalities: ["text", "audio"] })), "modalities")
    assert.strictEqual(paramOf(chat({ modalities: [] })), "modalities")
  })
})

describe("gateway wire: what the gateway cannot honour", () => {
  const codeOf = (result: Result.Result<unknown, Parameters<typeof toWire>[0]>) =>
    Result.isFailure(result) ? toWire(result.failure).body.error.code : "accepted"

  it("is refused with OpenAI's code unsupported_parameter, which a client can tell from a mistake without reading the message", () => {
    for (const body of [
      { n: 3 },
      { presence_penalty: 0.5 },
      { frequency_penalty: 1 },
      { logit_bias: { "1": 2 } },
      { logprobs: true },
      { top_logprobs: 2 },
      { modalities: ["text", "audio"] },
      { reasoning_effort: "high" },
      { audio: { voice: "alloy", format: "mp3" } },
      { messages: [{ role: "user", content: "hi", audio: { id: "a" } }] },
      { messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "https://x/y.png" } }] }] }
    ]) {
      assert.strictEqual(codeOf(chat(body)), "unsupported_parameter", JSON.stringify(body))
    }
    assert.strictEqual(codeOf(Request.parseEmbed({ model: "e", input: "x", dimensions: 8 })), "unsupported_parameter")
    assert.strictEqual(codeOf(Request.parseEmbed({ model: "e", input: [[1, 2]] })), "unsupported_parameter")
    // A mistake stays one: a value out of range, a parameter OpenAI does not have.
    assert.strictEqual(codeOf(chat({ temperature: 3 })), "invalid_request")
    assert.strictEqual(codeOf(chat({ top_k: 3 })), "invalid_request")
    assert.strictEqual(codeOf(Request.parseEmbed({ model: "e", input: 3 })), "invalid_request")
  })
})

describe("gateway wire: embedding requests", () => {
  it("reads a string or strings, the encoding, and refuses token arrays and dimensions", () => {
    const one = Result.getOrThrow(Request.parseEmbed({ model: "e", input: "x" }))
    assert.deepStrictEqual(one.request.texts, ["x"])
    assert.strictEqual(one.encoding, "float")
    const many = Result.getOrThrow(Request.parseEmbed({ model: "e", input: ["a", "b"], encoding_format: "base64" }))
    assert.deepStrictEqual(many.request.texts, ["a", "b"])
    assert.strictEqual(many.encoding, "base64")
    assert.strictEqual(paramOf(Request.parseEmbed({ model: "e", input: [1, 2] })), "input")
    assert.strictEqual(paramOf(Request.parseEmbed({ model: "e", input: [] })), "input")
    assert.strictEqual(paramOf(Request.parseEmbed({ model: "e" })), "input")
    assert.strictEqual(paramOf(Request.parseEmbed({ model: "e", input: "x", dimensions: 8 })), "dimensions")
    // OpenAI refuses an empty string to embed, alone or in a list: it has no embedding to give back.
    assert.strictEqual(paramOf(Request.parseEmbed({ model: "e", input: "" })), "input")
    assert.strictEqual(paramOf(Request.parseEmbed({ model: "e", input: ["a", ""] })), "input[1]")
    assert.strictEqual(
      paramOf(Request.parseEmbed({ model: "e", input: "x", encoding_format: "hex" })),
      "encoding_format"
    )
  })

  it("writes base64 as little-endian float32, which decodes back to the vector", () => {
    const text = Wire.embeddings("e", { vectors: [[0.5, -2, 3.25]], provider: "p", model: "m" }, "base64", 3)
    const encoded = (JSON.parse(text) as { data: Array<{ embedding: string }> }).data[0]!.embedding
    const bytes = Buffer.from(encoded, "base64")
    const floats = Array.from({ length: bytes.length / 4 }, (_, i) => bytes.readFloatLE(i * 4))
    assert.deepStrictEqual(floats, [0.5, -2, 3.25])
  })
})

describe("gateway errors: statuses and bodies", () => {
  const statusOf = (error: Parameters<typeof toWire>[0]) => toWire(error).status

  it("maps every failure to its status, with Retry-After on 429 and 503", () => {
    assert.strictEqual(statusOf(new ModelError({ reason: "InvalidRequest", message: "x", field: "prompt" })), 400)
    assert.strictEqual(statusOf(new ModelError({ reason: "Unauthorized", message: "x", status: 401 })), 502)
    assert.strictEqual(statusOf(new ModelError({ reason: "Transport", message: "x" })), 502)
    assert.strictEqual(statusOf(new ModelError({ reason: "Overloaded", message: "x", status: 503 })), 503)
    assert.strictEqual(statusOf(new TimeoutError({ limit: "request", timeout: Duration.seconds(1) })), 504)
    assert.strictEqual(statusOf(new ShuttingDownError({ message: "x" })), 503)
    assert.strictEqual(statusOf(new StreamInterruptedError({ partialText: "ab", reason: "Transport" })), 502)
    const upstream429 = toWire(
      new ModelError({ reason: "RateLimited", message: "x", status: 429, retryAfter: Duration.millis(2500) })
    )
    assert.strictEqual(upstream429.status, 429)
    assert.strictEqual(upstream429.retryAfterSeconds, 3)
    assert.strictEqual(upstream429.body.error.code, "upstream_rate_limited")
    const ours = toWire(new ModelError({ reason: "RateLimited", message: "x", retryAfter: Duration.millis(10) }))
    assert.strictEqual(ours.body.error.code, "rate_limit_exceeded")
    assert.strictEqual(ours.retryAfterSeconds, 1)
    const open = toWire(new CircuitOpenError({ breaker: "a", state: "open", retryAfter: Duration.seconds(4) }))
    assert.deepStrictEqual([open.status, open.retryAfterSeconds, open.body.error.code], [503, 4, "circuit_open"])
    // A breaker whose shared state could not be read (Redis down, failing closed) is no open circuit.
    const unreadable = toWire(
      new CircuitOpenError({ breaker: "a", state: "unavailable", store: "redis", retryAfter: Duration.seconds(2) })
    )
    assert.deepStrictEqual(
      [unreadable.status, unreadable.retryAfterSeconds, unreadable.body.error.code],
      [503, 2, "breaker_store_unavailable"]
    )
    assert.include(unreadable.body.error.message, "could not be read from Redis")
  })

  it("answers an exhausted fallback as its last step, naming every step", () => {
    const wire = toWire(
      new FallbackExhaustedError({
        attempts: [
          { provider: "a", error: new ModelError({ reason: "Overloaded", message: "busy" }) },
          { provider: "b", error: new TimeoutError({ limit: "request", timeout: Duration.seconds(1) }) }
        ]
      })
    )
    assert.strictEqual(wire.status, 504)
    assert.include(wire.body.error.message, "a: ModelError Overloaded")
    assert.strictEqual(wire.reason, "FallbackExhausted")
  })

  it("writes a budget refusal with its scope, spend and limit", () => {
    const wire = toWire(
      gatewayError("BudgetExceeded", "budget of team t exceeded", {
        scope: "team",
        scopeId: "t",
        unit: "usd",
        spent: 10.5,
        limit: 10
      })
    )
    assert.strictEqual(wire.status, 429)
    assert.deepStrictEqual(wire.body.error.budget, { scope: "team", id: "t", unit: "usd", spent: 10.5, limit: 10 })
    assert.strictEqual(wire.body.error.type, "insufficient_quota")
    assert.strictEqual(wire.body.error.code, "budget_exceeded")
    // Retrying cannot cure a spent budget before its reset: no Retry-After, and the official clients told not to.
    assert.strictEqual(wire.retryAfterSeconds, undefined)
    assert.strictEqual(wire.shouldRetry, false)
    const periodic = toWire(
      gatewayError("BudgetExceeded", "x", { scope: "key", spent: 1, limit: 1, retryAfter: Duration.minutes(5) })
    )
    // Back at the reset, but not within a client's automatic retries either.
    assert.deepStrictEqual([periodic.retryAfterSeconds, periodic.shouldRetry], [300, false])
  })
})
