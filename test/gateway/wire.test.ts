/**
 * Wire compatibility with the official client: what it sends reaches the upstream as
 * OpenAI would read it, and what the upstream answers reaches the client, nothing dropped.
 */
import { connect } from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Redacted } from "effect"
import type OpenAI from "openai"
import * as Server from "../utils/httpServer.js"
import * as Gemini from "../../src/Model/Gemini.js"
import * as UndiciHttpClient from "../../src/UndiciHttpClient.js"
import * as Harness from "./harness.js"
import * as Up from "./upstream.js"

const hi = [{ role: "user" as const, content: "hi" }]

/** One request of raw bytes over a loopback connection, closed by the server's answer: its status line and body. */
const raw = (url: string, path: string, body: Uint8Array) =>
  Effect.callback<{ readonly status: string; readonly body: string }>((resume) => {
    const socket = connect(Number(new URL(url).port), "127.0.0.1")
    const chunks: Array<Buffer> = []
    socket.on("data", (data: Buffer) => void chunks.push(data))
    socket.on("close", () => {
      const answer = Buffer.concat(chunks).toString("utf8")
      const head = answer.indexOf("\r\n\r\n")
      resume(Effect.succeed({ status: answer.slice(0, answer.indexOf("\r\n")), body: answer.slice(head + 4) }))
    })
    const head =
      `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n`
    socket.write(Buffer.concat([Buffer.from(head, "latin1"), body]))
    return Effect.sync(() => socket.destroy())
  })

describe("Gateway: what the client sends", () => {
  it.live("a strict tool stays strict upstream", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const tools: Array<OpenAI.ChatCompletionTool> = [
        {
          type: "function",
          function: {
            name: "weather",
            parameters: {
              type: "object",
              properties: { city: { type: "string" } },
              required: ["city"],
              additionalProperties: false
            },
            strict: true
          }
        }
      ]
      yield* Harness.call(() => gw.client().chat.completions.create({ model: "d-a", messages: hi, tools }))
      const [sent] = yield* upstream.requests
      assert.deepStrictEqual((sent!.json as { tools: unknown }).tools, tools)
    })
  )

  it.live("a json_schema response format keeps its description upstream (what the answer is for)", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi(['{"city":"Rome"}']))
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const response_format = {
        type: "json_schema" as const,
        json_schema: {
          name: "place",
          description: "the city the user is asking about",
          schema: { type: "object", properties: { city: { type: "string" } } },
          strict: true
        }
      }
      yield* Harness.call(() => gw.client().chat.completions.create({ model: "d-a", messages: hi, response_format }))
      const [sent] = yield* upstream.requests
      assert.deepStrictEqual((sent!.json as { response_format: unknown }).response_format, response_format)
    })
  )
})

describe("Gateway: a message's name", () => {
  it.live("reaches an OpenAI-compatible upstream on each message that had one", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      yield* Harness.call(() =>
        gw.client().chat.completions.create({
          model: "d-a",
          messages: [
            { role: "user", content: "hi", name: "alice" },
            { role: "assistant", content: "hello", name: "bot" },
            { role: "system", content: "be brief", name: "moderator" },
            { role: "user", content: "hi again", name: "Zo\u00eb" },
            { role: "user", content: "and me" }
          ]
        })
      )
      const [sent] = yield* upstream.requests
      const messages = (sent!.json as { messages: ReadonlyArray<Record<string, unknown>> }).messages
      assert.deepStrictEqual(
        messages.map((m) => [m["role"], m["name"]]),
        [
          ["user", "alice"],
          ["assistant", "bot"],
          ["system", "moderator"],
          ["user", "Zo\u00eb"],
          ["user", undefined]
        ]
      )
    })
  )

  it.live("of a conversation of system messages only (sent as messages, not one system prompt) reaches it too", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      yield* Harness.call(() =>
        gw.client().chat.completions.create({
          model: "d-a",
          messages: [
            { role: "system", content: "You write haikus.", name: "editor" },
            { role: "developer", content: "Write one about the sea." }
          ]
        })
      )
      const [sent] = yield* upstream.requests
      assert.deepStrictEqual((sent!.json as { messages: unknown }).messages, [
        { role: "system", content: "You write haikus.", name: "editor" },
        { role: "system", content: "Write one about the sea." }
      ])
    })
  )

  it.live("keys the response cache: two conversations differing only by a name do not share an answer", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, cache: { ttl: "1 minute" } })
      const ask = (name: string) =>
        Harness.call(() =>
          gw.client().chat.completions.create({ model: "d-a", messages: [{ role: "user", content: "hi", name }] })
        )
      yield* ask("alice")
      yield* ask("bob")
      yield* ask("alice")
      assert.deepStrictEqual(
        (yield* upstream.requests).map(
          (r) => (r.json as { messages: ReadonlyArray<{ name?: string }> }).messages[0]!.name
        ),
        ["alice", "bob"]
      )
    })
  )
})

describe("Gateway: parallel_tool_calls", () => {
  const tools: Array<OpenAI.ChatCompletionTool> = [
    { type: "function", function: { name: "weather", parameters: { type: "object", properties: {} } } }
  ]

  it.live(
    "false reaches an OpenAI upstream; one that cannot honour it (Gemini) is a 400 naming it, not a call ignoring it",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const gemini = yield* Server.make((_request, response) => Server.json(response, 500, {}))
        const geminiLayer = Gemini.layer({ baseUrl: gemini.url, apiKey: Redacted.make("gemini-key"), name: "g" }).pipe(
          Layer.provide(UndiciHttpClient.layer)
        )
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, localProviders: { g: geminiLayer } })
        const client = gw.client()
        yield* Harness.call(() =>
          client.chat.completions.create({ model: "d-a", messages: hi, tools, parallel_tool_calls: false })
        )
        const [sent] = yield* upstream.requests
        assert.strictEqual((sent!.json as { parallel_tool_calls?: unknown }).parallel_tool_calls, false)
        const refused = yield* Harness.failing(() =>
          client.chat.completions.create({ model: "d-g", messages: hi, tools, parallel_tool_calls: false })
        )
        assert.deepStrictEqual([refused.status, refused.param], [400, "parallel_tool_calls"])
        assert.lengthOf(yield* gemini.requests, 0)
      })
  )
})

describe("Gateway: what the client sends, continued", () => {
  it.live("OpenAI parameters given as null (as clients that write every field send them) read as absent", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const nulls = {
        audio: null,
        modalities: null,
        prediction: null,
        reasoning_effort: null,
        web_search_options: null,
        verbosity: null,
        functions: null,
        function_call: null
      }
      const answer = yield* Effect.promise(async () => {
        const response = await fetch(`${gw.url}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "d-a", messages: hi, ...nulls })
        })
        return { status: response.status, body: await response.text() }
      })
      assert.strictEqual(answer.status, 200, answer.body)
      const refused = yield* Harness.failing(() =>
        gw.client().chat.completions.create({ model: "d-a", messages: hi, reasoning_effort: "high" })
      )
      assert.deepStrictEqual([refused.status, refused.param], [400, "reasoning_effort"])
    })
  )

  it.live("a conversation of system or developer messages only is answered, as OpenAI answers it", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const answer = yield* Harness.call(() =>
        gw.client().chat.completions.create({
          model: "d-a",
          messages: [
            { role: "system", content: "You write haikus." },
            { role: "developer", content: "Write one about the sea." }
          ]
        })
      )
      assert.strictEqual(answer.choices[0]!.message.content, "Hello wörld!")
      const [sent] = yield* upstream.requests
      assert.deepStrictEqual((sent!.json as { messages: unknown }).messages, [
        { role: "system", content: "You write haikus." },
        { role: "system", content: "Write one about the sea." }
      ])
    })
  )
})

describe("Gateway: a body that is not UTF-8", () => {
  it.live("is a 400 naming the body, not read with U+FFFD in place of its bytes and sent upstream", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const json = (content: string) =>
        Buffer.from(JSON.stringify({ model: "d-a", messages: [{ role: "user", content }] }), "utf8")
      // A Latin-1 "é" (0xe9) where UTF-8 has two bytes, and a lone continuation byte.
      for (const bad of [0xe9, 0x80]) {
        const body = json("caf_")
        body[body.indexOf("caf_") + 3] = bad
        const answer = yield* raw(gw.url, "/v1/chat/completions", body)
        assert.strictEqual(answer.status, "HTTP/1.1 400 Bad Request", answer.body)
        const error = (JSON.parse(answer.body) as { error: Record<string, unknown> }).error
        assert.strictEqual(error.param, "body")
        assert.strictEqual(error.type, "invalid_request_error")
        assert.include(String(error.message), "UTF-8")
      }
      assert.strictEqual((yield* upstream.requests).length, 0)
      const good = yield* raw(gw.url, "/v1/chat/completions", json("café"))
      assert.strictEqual(good.status, "HTTP/1.1 200 OK", good.body)
      const [sent] = yield* upstream.requests
      assert.strictEqual((sent!.json as { messages: Array<{ content: string }> }).messages[0]!.content, "café")
    })
  )
})

describe("Gateway: what the client replays", () => {
  it.live("an assistant message with OpenAI's null audio and function_call is read as without them", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      // Fields the official client's own type declares nullable, as a replayed answer may carry them.
      const replayed: OpenAI.ChatCompletionAssistantMessageParam = {
        role: "assistant",
        content: "Hello",
        refusal: null,
        audio: null,
        function_call: null
      }
      const answer = yield* Harness.call(() =>
        gw.client().chat.completions.create({
          model: "d-a",
          messages: [...hi, replayed, { role: "user", content: "again" }]
        })
      )
      assert.strictEqual(answer.choices[0]!.message.content, "Hello wörld!")
      const [sent] = yield* upstream.requests
      assert.deepStrictEqual((sent!.json as { messages: unknown }).messages, [
        { role: "user", content: "hi" },
        { role: "assistant", content: "Hello" },
        { role: "user", content: "again" }
      ])
      const audio = yield* Harness.failing(() =>
        gw.client().chat.completions.create({
          model: "d-a",
          messages: [...hi, { ...replayed, audio: { id: "audio_1" } }, { role: "user", content: "again" }]
        })
      )
      assert.deepStrictEqual([audio.status, audio.param], [400, "messages[1].audio"])
    })
  )

  it.live(
    "an answer of OpenAI's own sent back as it came (annotations: [] included) is read, its annotations left out",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
        // What `completion.choices[0].message` of OpenAI's API is today, pushed back onto the messages as its guides do.
        const cited = {
          type: "url_citation",
          url_citation: { start_index: 0, end_index: 5, title: "t", url: "https://example.com" }
        }
        const send = (annotations: unknown) =>
          Effect.promise(async () => {
            const response = await fetch(`${gw.url}/v1/chat/completions`, {
              method: "POST",
              headers: { "content-type": "application/json" },
              body: JSON.stringify({
                model: "d-a",
                messages: [
                  ...hi,
                  { role: "assistant", content: "Hello", refusal: null, annotations },
                  { role: "user", content: "again" }
                ]
              })
            })
            return { status: response.status, body: await response.text() }
          })
        for (const annotations of [[], [cited], null]) {
          const answer = yield* send(annotations)
          assert.strictEqual(answer.status, 200, answer.body)
        }
        const [sent] = yield* upstream.requests
        assert.deepStrictEqual((sent!.json as { messages: ReadonlyArray<unknown> }).messages[1], {
          role: "assistant",
          content: "Hello"
        })
        const wrong = yield* send("cited")
        assert.strictEqual(wrong.status, 400)
        assert.strictEqual(JSON.parse(wrong.body).error.param, "messages[1].annotations")
      })
  )
})

describe("Gateway: what the upstream answers", () => {
  const refusal = "I'm sorry, I can't help with that."
  const schema = {
    type: "json_schema" as const,
    json_schema: {
      name: "answer",
      strict: true,
      schema: { type: "object", properties: { a: { type: "number" } }, required: ["a"], additionalProperties: false }
    }
  }

  it.live("a refusal reaches the client as its refusal, streamed or not, not as an empty answer", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((request, res) => {
        if ((request.json as { stream?: boolean }).stream !== true) {
          return Server.json(res, 200, {
            ...Up.completion(null),
            choices: [{ index: 0, message: { role: "assistant", content: null, refusal }, finish_reason: "stop" }]
          })
        }
        const delta = (fields: Record<string, unknown>) => ({
          ...Up.chunk(null),
          choices: [{ index: 0, delta: fields, logprobs: null, finish_reason: null }]
        })
        return Server.chunked(res, [
          Server.sse([
            delta({ role: "assistant", content: null, refusal: "" }),
            delta({ refusal: refusal.slice(0, 10) }),
            delta({ refusal: refusal.slice(10) }),
            Up.chunk(null, "stop"),
            Up.usageChunk(),
            "[DONE]"
          ])
        ])
      })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const answer = yield* Harness.call(() =>
        gw.client().chat.completions.parse({ model: "d-a", messages: hi, response_format: schema })
      )
      const message = answer.choices[0]!.message
      assert.deepStrictEqual([message.content, message.refusal, message.parsed], [null, refusal, null])
      const streamed = yield* Harness.call(() =>
        gw.client().chat.completions.stream({ model: "d-a", messages: hi, response_format: schema }).finalMessage()
      )
      assert.deepStrictEqual([streamed.content, streamed.refusal], [null, refusal])
    })
  )

  it.live("embeddings without the upstream's usage (or with 0) report the estimate the key was charged, not 0", () =>
    Effect.gen(function* () {
      let usage: unknown
      const upstream = yield* Server.make((request, res) =>
        Server.json(res, 200, {
          object: "list",
          model: "upstream-embed",
          data: (request.json as { input: ReadonlyArray<string> }).input.map((_, index) => ({
            object: "embedding",
            index,
            embedding: [index, 0.5]
          })),
          ...(usage === undefined ? {} : { usage })
        })
      )
      const { service, log } = Harness.keyStore({ "sk-a": { id: "a" } })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service })
      for (const [n, answered] of [
        [1, undefined],
        [2, { prompt_tokens: 0, total_tokens: 0 }]
      ] as const) {
        usage = answered
        const answer = yield* Harness.call(() =>
          gw.client("sk-a").embeddings.create({ model: "d-a", input: ["hello world", "a longer text to embed"] })
        )
        yield* Harness.eventually(() => log.settled.length === n)
        const charged = log.settled[n - 1]!.inputTokens
        assert.isAbove(charged, 0, `${n}`)
        assert.deepStrictEqual(answer.usage, { prompt_tokens: charged, total_tokens: charged })
      }
    })
  )

  it.live("a streamed tool call whose name the upstream repeats in every delta keeps its name once", () =>
    Effect.gen(function* () {
      const delta = (fields: Record<string, unknown>) => ({
        ...Up.chunk(null),
        choices: [{ index: 0, delta: { tool_calls: [{ index: 0, ...fields }] }, logprobs: null, finish_reason: null }]
      })
      // As MiniMax behind NVIDIA NIM streams: the whole name again with each piece of the arguments.
      const upstream = yield* Server.make((_, res) =>
        Server.chunked(res, [
          Server.sse([
            delta({ id: "call_1", type: "function", function: { name: "read_file", arguments: "" } }),
            delta({ function: { name: "read_file", arguments: '{"path":' } }),
            delta({ function: { name: "read_file", arguments: '"a.txt"}' } }),
            Up.chunk(null, "tool_calls"),
            "[DONE]"
          ])
        ])
      )
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const message = yield* Harness.call(() =>
        gw.client().chat.completions.stream({ model: "d-a", messages: hi }).finalMessage()
      )
      assert.deepStrictEqual(message.tool_calls, [
        { id: "call_1", type: "function", function: { name: "read_file", arguments: '{"path":"a.txt"}' } }
      ])
    })
  )

  it.live("streamed tool calls without an index (Gemini's OpenAI endpoint) arrive, each whole, not as a 502", () =>
    Effect.gen(function* () {
      const call = (id: string, name: string, args: string) => ({
        ...Up.chunk(null),
        choices: [
          {
            index: 0,
            delta: { role: "assistant", tool_calls: [{ id, type: "function", function: { name, arguments: args } }] },
            finish_reason: null
          }
        ]
      })
      const upstream = yield* Server.make((_, res) =>
        Server.chunked(res, [
          Server.sse([
            call("call_a", "read", '{"path":"a.txt"}'),
            call("call_b", "list", '{"dir":"."}'),
            Up.chunk(null, "stop"),
            "[DONE]"
          ])
        ])
      )
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const answer = yield* Harness.call(() =>
        gw.client().chat.completions.stream({ model: "d-a", messages: hi }).finalChatCompletion()
      )
      assert.strictEqual(answer.choices[0]!.finish_reason, "tool_calls")
      assert.deepStrictEqual(answer.choices[0]!.message.tool_calls, [
        { id: "call_a", type: "function", function: { name: "read", arguments: '{"path":"a.txt"}' } },
        { id: "call_b", type: "function", function: { name: "list", arguments: '{"dir":"."}' } }
      ])
    })
  )
})

describe("Gateway: Gemini thought signatures", () => {
  // Gemini's OpenAI-compatible wire: a call's thought signature rides in extra_content, and must come back with it.
  const extra = (signature: string) => ({ google: { thought_signature: signature } })
  const geminiLike: Server.Handler = (request, response) => {
    const body = request.json as { readonly stream?: boolean; readonly messages: ReadonlyArray<{ role: string }> }
    if (body.messages.some((m) => m.role === "tool")) return Server.json(response, 200, Up.completion("sunny"))
    const call = (id: string, signature: string) => ({
      id,
      type: "function",
      function: { name: "weather", arguments: '{"city":"Oslo"}' },
      extra_content: extra(signature)
    })
    if (body.stream === true) {
      const delta = (index: number, id: string, signature: string) => ({
        ...Up.chunk(null),
        choices: [
          {
            index: 0,
            delta: { role: "assistant", tool_calls: [{ index, ...call(id, signature) }] },
            logprobs: null,
            finish_reason: null
          }
        ]
      })
      return Server.chunked(
        response,
        [
          Server.sse([
            delta(0, "c1", "c2lnLTE="),
            delta(1, "c2", "c2lnLTI="),
            Up.chunk(null, "tool_calls"),
            Up.usageChunk(),
            "[DONE]"
          ])
        ],
        { pauseMs: 0 }
      )
    }
    return Server.json(
      response,
      200,
      Up.completion(null, { toolCalls: [call("c1", "c2lnLTE="), call("c2", "c2lnLTI=")], finish: "tool_calls" })
    )
  }
  const tools: Array<OpenAI.ChatCompletionTool> = [
    { type: "function", function: { name: "weather", parameters: { type: "object", properties: {} } } }
  ]

  const replayed = (upstream: Server.TestServer, calls: ReadonlyArray<unknown>) =>
    Effect.gen(function* () {
      const requests = yield* upstream.requests
      const messages = (requests.at(-1)!.json as { messages: ReadonlyArray<{ role: string; tool_calls?: unknown }> })
        .messages
      assert.deepStrictEqual(messages.find((m) => m.role === "assistant")?.tool_calls, calls)
    })

  it.live(
    "reach the client in tool_calls[i].extra_content.google.thought_signature and go back upstream with the call (an upstream told to take them)",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(geminiLike)
        // A loopback server stands for Gemini's endpoint, which gets them by default.
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, provider: { sendThoughtSignatures: true } })
        const client = gw.client()
        const first = yield* Harness.call(() => client.chat.completions.create({ model: "d-a", messages: hi, tools }))
        const message = first.choices[0]!.message
        const calls = message.tool_calls as ReadonlyArray<unknown>
        assert.deepStrictEqual(
          calls.map((call) => (call as { extra_content?: unknown }).extra_content),
          [extra("c2lnLTE="), extra("c2lnLTI=")]
        )
        yield* Harness.call(() =>
          client.chat.completions.create({
            model: "d-a",
            tools,
            messages: [
              ...hi,
              message,
              { role: "tool", tool_call_id: "c1", content: "12C" },
              { role: "tool", tool_call_id: "c2", content: "13C" }
            ]
          })
        )
        yield* replayed(upstream, calls)
      })
  )

  it.live("reach a streaming client in the tool-call deltas", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(geminiLike)
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const deltas = yield* Harness.call(async () => {
        const stream = await gw.client().chat.completions.create({ model: "d-a", messages: hi, tools, stream: true })
        const out: Array<unknown> = []
        for await (const chunk of stream) out.push(...(chunk.choices[0]?.delta.tool_calls ?? []))
        return out
      })
      assert.deepStrictEqual(
        deltas.map((d) => {
          const delta = d as { index: number; id: string; extra_content?: unknown }
          return [delta.index, delta.id, delta.extra_content]
        }),
        [
          [0, "c1", extra("c2lnLTE=")],
          [1, "c2", extra("c2lnLTI=")]
        ]
      )
    })
  )
})

describe("Gateway: a Gemini tool conversation", () => {
  it.live("goes on past its first tool call: the thought signature Gemini sent reaches it again on the next turn", () =>
    Effect.gen(function* () {
      const signature = `CiQB0e2Kb+/sig==${"x".repeat(3000)}`
      const server = yield* Server.make((request, response) => {
        const contents = (request.json as { contents: ReadonlyArray<unknown> }).contents
        const parts =
          contents.length === 1
            ? [{ functionCall: { name: "weather", args: { city: "Oslo" } }, thoughtSignature: signature }]
            : [{ text: "12C in Oslo." }]
        return Server.json(response, 200, {
          candidates: [{ content: { role: "model", parts }, finishReason: "STOP" }],
          usageMetadata: { promptTokenCount: 5, candidatesTokenCount: 3 }
        })
      })
      const gemini = Gemini.layer({ baseUrl: server.url, apiKey: Redacted.make("gemini-key"), name: "g" }).pipe(
        Layer.provide(UndiciHttpClient.layer)
      )
      const gw = yield* Harness.make({ upstreams: {}, localProviders: { g: gemini } })
      const tools: Array<OpenAI.ChatCompletionTool> = [
        { type: "function", function: { name: "weather", parameters: { type: "object", properties: {} } } }
      ]
      const client = gw.client()
      const first = yield* Harness.call(() => client.chat.completions.create({ model: "d-g", messages: hi, tools }))
      const message = first.choices[0]!.message
      const call = message.tool_calls![0]!
      const second = yield* Harness.call(() =>
        client.chat.completions.create({
          model: "d-g",
          tools,
          messages: [...hi, message, { role: "tool", tool_call_id: call.id, content: "12C" }]
        })
      )
      assert.strictEqual(second.choices[0]!.message.content, "12C in Oslo.")
      const [, sent] = yield* server.requests
      const contents = (sent!.json as { contents: ReadonlyArray<{ parts: ReadonlyArray<unknown> }> }).contents
      assert.deepStrictEqual(contents[1]!.parts, [
        { functionCall: { name: "weather", args: { city: "Oslo" } }, thoughtSignature: signature }
      ])
    })
  )
})

describe("Gateway: an upstream's 400 naming a message", () => {
  it.live("names the message the client sent, counted as the client counts them (system messages included)", () =>
    Effect.gen(function* () {
      // The upstream names the message it was sent at index 1: the request's first after its system prompt.
      const upstream = yield* Server.make((_request, response) =>
        Server.json(response, 400, {
          error: {
            message: "Invalid 'messages[1].content': string too long.",
            type: "invalid_request_error",
            param: "messages[1].content",
            code: "string_above_max_length"
          }
        })
      )
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        domains: [
          { name: "d-a", provider: "a" },
          { name: "d-sys", provider: "a", system: "the domain's own system prompt" }
        ]
      })
      const client = gw.client()
      const paramOf = (model: string, messages: Array<OpenAI.ChatCompletionMessageParam>) =>
        Effect.map(
          Harness.failing(() => client.chat.completions.create({ model, messages })),
          (refused) => refused.param
        )
      const system = { role: "system" as const, content: "be brief" }
      const user = { role: "user" as const, content: "hi" }
      // One system message: sent as the upstream's messages[0], so its messages[1] is the client's.
      assert.strictEqual(yield* paramOf("d-a", [system, user]), "messages[1].content")
      // Two, sent as one system prompt: the upstream's messages[1] is the client's third.
      assert.strictEqual(yield* paramOf("d-a", [system, system, user]), "messages[2].content")
      // None: the domain's system prompt went first, the upstream's messages[1] is the client's first.
      assert.strictEqual(yield* paramOf("d-sys", [user, user]), "messages[0].content")
      // None, and no system prompt sent: the indices are the client's.
      assert.strictEqual(yield* paramOf("d-a", [user, user]), "messages[1].content")
      assert.strictEqual(yield* paramOf("a/a-model", [system, user]), "messages[1].content")
      // Streamed, refused before its first chunk: the same.
      const streamed = yield* Harness.failing(() =>
        client.chat.completions.create({ model: "d-sys", messages: [user, user], stream: true })
      )
      assert.deepStrictEqual([streamed.status, streamed.param], [400, "messages[0].content"])
    })
  )
})

describe("Gateway: a provider's refusal of an embedding request", () => {
  it.live(
    "names the client's input, not the library's texts (a provider's own limits, stricter than the gateway's)",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const gw = yield* Harness.make({
          upstreams: { a: upstream.url },
          provider: { requestLimits: { maxEmbedTexts: 1 } }
        })
        const refused = yield* Harness.failing(() =>
          gw.client().embeddings.create({ model: "d-a", input: ["one", "two"] })
        )
        assert.deepStrictEqual([refused.status, refused.param], [400, "input"])
        assert.match(refused.message, /^400 invalid input: 2 texts exceed the limit of 1/)
        assert.lengthOf(yield* upstream.requests, 0)
      })
  )
})
