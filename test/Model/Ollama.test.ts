import { inspect } from "node:util"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it, layer } from "@effect/vitest"
import { Cause, Config, ConfigProvider, Duration, Effect, Exit, Fiber, Layer, Option, Redacted, Stream } from "effect"
import { FetchHttpClient, HttpClient, HttpClientError } from "effect/http"
import { TestClock } from "effect/testing"
import { type AiError, isRetryable, ModelError, shouldFallback, TimeoutError } from "../../src/AiError.js"
import * as Model from "../../src/Model.js"
import * as Ollama from "../../src/Model/Ollama.js"
import * as Server from "../utils/httpServer.js"

const KEY = "ollama-key-7f3a9c2e51d0"

const provider = (server: Server.TestServer, options: Ollama.Options = {}) =>
  Ollama.make({ host: server.url, ...options })

const final = (extra: Record<string, unknown> = {}) => ({
  model: "llama3.2",
  created_at: "2024-07-22T20:33:28.123648Z",
  done: true,
  done_reason: "stop",
  total_duration: 5191566416,
  load_duration: 2154458,
  prompt_eval_count: 26,
  prompt_eval_duration: 383809000,
  eval_count: 298,
  eval_duration: 4799921000,
  ...extra
})

const chatLine = (content: string, extra: Record<string, unknown> = {}) => ({
  model: "llama3.2",
  created_at: "2024-07-22T20:33:28.123648Z",
  message: { role: "assistant", content, ...extra },
  done: false
})

const bodyOf = (request: Server.Recorded | undefined): Record<string, unknown> =>
  (request?.json ?? {}) as Record<string, unknown>

const collect = (stream: Stream.Stream<Model.StreamPart, AiError>) =>
  Effect.gen(function* () {
    const parts: Array<Model.StreamPart> = []
    const exit = yield* Effect.exit(Stream.runForEach(stream, (part) => Effect.sync(() => parts.push(part))))
    const text = parts.flatMap((p) => (p._tag === "TextDelta" ? [p.text] : [])).join("")
    return { parts, exit, text }
  })

const failureOf = (exit: Exit.Exit<unknown, unknown>): AiError => {
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  const error = Cause.findErrorOption(exit.cause)
  if (Option.isNone(error)) throw new Error(Cause.pretty(exit.cause))
  return error.value as AiError
}

const modelErrorOf = (exit: Exit.Exit<unknown, unknown>): ModelError => {
  const error = failureOf(exit)
  assert.instanceOf(error, ModelError, String(error))
  return error as ModelError
}

const flipModel = <A>(effect: Effect.Effect<A, AiError>) =>
  Effect.map(Effect.flip(effect), (error) => {
    assert.instanceOf(error, ModelError, String(error))
    return error as ModelError
  })

const tools: Model.GenerateRequest["tools"] = [
  {
    name: "get_weather",
    description: "Weather of a city",
    parameters: { type: "object", properties: { city: { type: "string" } } }
  }
]

layer(NodeHttpClient.layerUndici)("Ollama", (it) => {
  describe("generate", () => {
    it.effect("/api/chat: the documented request and answer", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, { ...final(), message: { role: "assistant", content: "Hello! How are you today?" } })
        )
        const p = yield* provider(server, { keepAlive: "10m" })
        const answer = yield* p.generate({
          system: "Be kind.",
          messages: [{ role: "user", content: "hi" }],
          maxTokens: 64,
          temperature: 0.5,
          seed: 7
        })
        assert.deepStrictEqual(answer, {
          text: "Hello! How are you today?",
          finishReason: "stop",
          usage: { inputTokens: 26, outputTokens: 298, totalTokens: 324 },
          provider: "ollama",
          model: "llama3.2"
        })
        const [request] = yield* server.requests
        assert.strictEqual(request?.path, "/api/chat")
        assert.deepStrictEqual(request?.json, {
          model: "llama3.2",
          messages: [
            { role: "system", content: "Be kind." },
            { role: "user", content: "hi" }
          ],
          stream: false,
          options: { num_predict: 64, temperature: 0.5, seed: 7 },
          keep_alive: "10m"
        })
      })
    )

    it.effect("eval counts that are no counts (negative, fractional) are estimated, not summed into usage", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, {
            ...final({ prompt_eval_count: -3, eval_count: 2.5 }),
            message: { role: "assistant", content: "12345678" }
          })
        )
        const p = yield* provider(server)
        const answer = yield* p.generate({ prompt: "abcd" })
        assert.deepStrictEqual(answer.usage, { inputTokens: 1, outputTokens: 2, totalTokens: 3 })
      })
    )

    it.effect("api: generate sends prompts to /api/generate, conversations and tool requests to /api/chat", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          req.path === "/api/generate"
            ? Server.json(res, 200, { ...final({ done_reason: "length" }), response: "The sky is blue." })
            : Server.json(res, 200, { ...final(), message: { role: "assistant", content: "chat" } })
        )
        const p = yield* provider(server, { api: "generate", model: "mistral", keepAlive: "2 minutes" })
        const answer = yield* p.generate({
          prompt: "Why is the sky blue?",
          system: "Short.",
          responseFormat: { type: "json_object" }
        })
        assert.strictEqual(answer.text, "The sky is blue.")
        assert.strictEqual(answer.finishReason, "length")
        assert.strictEqual((yield* p.generate({ messages: [{ role: "user", content: "x" }] })).text, "chat")
        assert.strictEqual((yield* p.generate({ prompt: "x", tools })).text, "chat")
        // An empty tools list is no tools: a plain prompt, to /api/generate.
        assert.strictEqual((yield* p.generate({ prompt: "x", tools: [] })).text, "The sky is blue.")
        const [first, second, third, fourth] = yield* server.requests
        assert.strictEqual(first?.path, "/api/generate")
        assert.deepStrictEqual(first?.json, {
          model: "mistral",
          prompt: "Why is the sky blue?",
          system: "Short.",
          stream: false,
          format: "json",
          keep_alive: "120000ms"
        })
        assert.strictEqual(second?.path, "/api/chat")
        assert.strictEqual(third?.path, "/api/chat")
        assert.strictEqual(fourth?.path, "/api/generate")
        assert.isFalse("tools" in (fourth!.json as object))
      })
    )

    it.effect("api: generate refuses a tool choice it cannot honour, as /api/chat does, instead of ignoring it", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, { ...final(), response: "no tool was called" })
        )
        const p = yield* provider(server, { api: "generate" })
        for (const request of [
          { prompt: "x", toolChoice: "required" },
          { prompt: "x", tools: [], toolChoice: { name: "get_weather" } }
        ] satisfies ReadonlyArray<Model.GenerateRequest>) {
          const error = yield* flipModel(p.generate(request))
          assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "toolChoice"])
          const streamed = modelErrorOf((yield* collect(p.stream(request))).exit)
          assert.deepStrictEqual([streamed.reason, streamed.field], ["InvalidRequest", "toolChoice"])
        }
        assert.lengthOf(yield* server.requests, 0)
      })
    )

    it.effect(
      "an assistant tool call of no name is refused naming it before a call, not sent as a call of no tool",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.json(res, 200, { ...final(), message: chatLine("ok").message })
          )
          const p = yield* provider(server)
          const request: Model.GenerateRequest = {
            messages: [
              { role: "user", content: "weather?" },
              { role: "assistant", content: "", toolCalls: [{ id: "c1", name: "", arguments: '{"city":"Oslo"}' }] },
              { role: "tool", toolCallId: "c1", content: "sunny" }
            ],
            tools
          }
          const error = yield* flipModel(p.generate(request))
          assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "messages[1].toolCalls[0].name"])
          const streamed = modelErrorOf((yield* collect(p.stream(request))).exit)
          assert.deepStrictEqual([streamed.reason, streamed.field], ["InvalidRequest", "messages[1].toolCalls[0].name"])
          assert.lengthOf(yield* server.requests, 0)
        })
    )

    it.effect(
      "404, with an error body or a page, is InvalidRequest (falls back), on `model` with the body; 500, 503, 429, 401",
      () =>
        Effect.gen(function* () {
          const answers: Record<string, readonly [number, unknown, Record<string, string>?]> = {
            nope: [404, { error: 'model "nope" not found, try pulling it first' }],
            page: [404, "404 page not found"],
            crash: [500, { error: "llama runner process has terminated: signal: killed" }],
            busy: [503, { error: "server busy, please try again.  maximum pending requests exceeded" }],
            rate: [429, { error: "too many requests" }, { "retry-after": "2" }],
            auth: [401, { error: "unauthorized" }]
          }
          const server = yield* Server.make((req, res) => {
            const [status, body, headers] = answers[String(bodyOf(req)["model"])]!
            if (typeof body === "string") return Server.text(res, status, body)
            Server.json(res, status, body, headers)
          })
          const p = yield* provider(server)
          const call = (model: string) => flipModel(p.generate({ prompt: "x", model }))
          const nope = yield* call("nope")
          assert.strictEqual(nope.reason, "InvalidRequest")
          assert.strictEqual(nope.field, "model")
          assert.isTrue(shouldFallback(nope))
          assert.include(nope.message, "try pulling it first")
          // A 404 page (a base URL that is not Ollama's, a proxy in front of it): this provider cannot serve the model.
          const page = yield* call("page")
          assert.deepStrictEqual([page.reason, page.field], ["InvalidRequest", undefined])
          assert.isTrue(shouldFallback(page))
          assert.strictEqual((yield* call("crash")).reason, "Overloaded")
          assert.strictEqual((yield* call("busy")).reason, "Unavailable")
          const rate = yield* call("rate")
          assert.strictEqual(rate.reason, "RateLimited")
          assert.deepStrictEqual(rate.retryAfter, Duration.seconds(2))
          assert.strictEqual((yield* call("auth")).reason, "Unauthorized")
        })
    )

    it.effect("a malformed body is Decode naming the field", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, { ...final(), message: { content: 5 } }))
        const p = yield* provider(server)
        const error = yield* flipModel(p.generate({ prompt: "x" }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "message.content")
      })
    )

    it.effect("tool-call arguments nested too deeply to serialise are Decode naming them, in answers and streams", () =>
      Effect.gen(function* () {
        const deep = `${"[".repeat(100_000)}${"]".repeat(100_000)}`
        const call = `{"function":{"name":"f","arguments":{"a":${deep}}}}`
        const server = yield* Server.make((req, res) =>
          bodyOf(req)["stream"] === true
            ? Server.text(res, 200, `{"model":"m","message":{"content":"","tool_calls":[${call}]},"done":false}\n`, {
                "content-type": "application/x-ndjson"
              })
            : Server.json(res, 200, `{"model":"m","message":{"role":"assistant","tool_calls":[${call}]},"done":true}`)
        )
        const p = yield* provider(server)
        const error = yield* flipModel(p.generate({ prompt: "x" }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "message.tool_calls[0].function.arguments")
        const { exit } = yield* collect(p.stream({ prompt: "x" }))
        assert.strictEqual(modelErrorOf(exit).field, "message.tool_calls[0].function.arguments")
      })
    )

    it.effect(
      "more than 1,024 tool calls (an answer's, or a stream's in all) are Decode naming them, counted first",
      () =>
        Effect.gen(function* () {
          const calls = (n: number, bad = -1) =>
            Array.from({ length: n }, (_, i) => ({ function: { name: i === bad ? "" : "f", arguments: {} } }))
          const server = yield* Server.make((req, res) => {
            const model = String(bodyOf(req)["model"])
            if (bodyOf(req)["stream"] === true) {
              // One call a line: each line is small, the stream's calls are not.
              const count = model === "bound" ? 1024 : 1025
              const lines = Array.from({ length: count }, (_, i) => ({
                model,
                message: { content: "", tool_calls: [{ id: `c${i}`, function: { name: "f", arguments: {} } }] },
                done: false
              }))
              return Server.text(res, 200, Server.ndjson([...lines, final({ model })]), {
                "content-type": "application/x-ndjson"
              })
            }
            // A call past the first 1,024 that does not decode: the count is refused before any call is read.
            const toolCalls = model === "bound" ? calls(1024) : model === "over" ? calls(1025) : calls(100_000, 5_000)
            return Server.json(res, 200, { ...final({ model }), message: { role: "assistant", tool_calls: toolCalls } })
          })
          const p = yield* provider(server)
          assert.lengthOf((yield* p.generate({ prompt: "x", model: "bound" })).toolCalls ?? [], 1024)
          for (const model of ["over", "huge"]) {
            const error = yield* flipModel(p.generate({ prompt: "x", model }))
            assert.deepStrictEqual([error.reason, error.field], ["Decode", "message.tool_calls"], model)
            assert.include(error.message, "1024", model)
          }
          const bound = yield* collect(p.stream({ prompt: "x", model: "bound" }))
          assert.isTrue(Exit.isSuccess(bound.exit))
          assert.lengthOf(
            bound.parts.filter((part) => part._tag === "ToolCall"),
            1024
          )
          const over = yield* collect(p.stream({ prompt: "x", model: "over" }))
          assert.deepStrictEqual(
            [modelErrorOf(over.exit).reason, modelErrorOf(over.exit).field],
            ["Decode", "message.tool_calls"]
          )
          assert.notInclude(
            over.parts.map((part) => part._tag),
            "Finish"
          )
        })
    )

    it.effect("tool-call arguments that are not an object are Decode naming them; JSON text of an object is kept", () =>
      Effect.gen(function* () {
        // The prompt is the JSON of the arguments the server answers with.
        const argsOf = (req: Server.Recorded): unknown =>
          JSON.parse((bodyOf(req)["messages"] as ReadonlyArray<{ readonly content: string }>)[0]!.content)
        const server = yield* Server.make((req, res) => {
          const call = { function: { name: "f", arguments: argsOf(req) } }
          return bodyOf(req)["stream"] === true
            ? Server.text(
                res,
                200,
                `${JSON.stringify({ model: "m", message: { content: "", tool_calls: [call] }, done: false })}\n`,
                {
                  "content-type": "application/x-ndjson"
                }
              )
            : Server.json(res, 200, { model: "m", message: { role: "assistant", tool_calls: [call] }, done: true })
        })
        const p = yield* provider(server)
        for (const args of [[1, 2], "not json", "[1]", "42", 7, true]) {
          const prompt = JSON.stringify(args)
          const error = yield* flipModel(p.generate({ prompt }))
          assert.deepStrictEqual(
            [error.reason, error.field],
            ["Decode", "message.tool_calls[0].function.arguments"],
            prompt
          )
          const { exit } = yield* collect(p.stream({ prompt }))
          assert.strictEqual(modelErrorOf(exit).field, "message.tool_calls[0].function.arguments", prompt)
        }
        const text = yield* p.generate({ prompt: JSON.stringify('{"city":"Oslo"}') })
        assert.deepStrictEqual(
          text.toolCalls?.map((c) => c.arguments),
          ['{"city":"Oslo"}']
        )
        const object = yield* p.generate({ prompt: JSON.stringify({ city: "Oslo" }) })
        assert.deepStrictEqual(
          object.toolCalls?.map((c) => c.arguments),
          ['{"city":"Oslo"}']
        )
      })
    )

    it.effect(
      "tool-call arguments holding a number JSON cannot write back (1e400) are Decode naming it, not null",
      () =>
        Effect.gen(function* () {
          // Written by hand: JSON.parse reads 1e400 as Infinity, which JSON.stringify wrote back as null, silently.
          const call = '{"function":{"name":"f","arguments":{"city":"Oslo","n":[1,1e400]}}}'
          const server = yield* Server.make((req, res) =>
            bodyOf(req)["stream"] === true
              ? Server.text(res, 200, `{"model":"m","message":{"content":"","tool_calls":[${call}]},"done":false}\n`, {
                  "content-type": "application/x-ndjson"
                })
              : Server.json(res, 200, `{"model":"m","message":{"role":"assistant","tool_calls":[${call}]},"done":true}`)
          )
          const p = yield* provider(server)
          const field = "message.tool_calls[0].function.arguments.n[1]"
          const error = yield* flipModel(p.generate({ prompt: "x" }))
          assert.deepStrictEqual([error.reason, error.field], ["Decode", field])
          const { exit } = yield* collect(p.stream({ prompt: "x" }))
          assert.strictEqual(modelErrorOf(exit).field, field)
        })
    )

    it.effect("a server that never answers ends with a request TimeoutError at `timeout`", () =>
      Effect.gen(function* () {
        const server = yield* Server.make(Server.hang)
        const p = yield* provider(server, { timeout: "2 minutes" })
        const fiber = yield* Effect.forkChild(Effect.flip(p.generate({ prompt: "hi" })))
        yield* server.awaitRequests(1)
        yield* TestClock.adjust("2 minutes")
        const error = yield* Fiber.join(fiber)
        assert.instanceOf(error, TimeoutError)
        assert.strictEqual((error as TimeoutError).limit, "request")
        yield* server.awaitAborted(1)
      })
    )

    it.effect("a key echoed by the server never appears in the error", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          Server.json(res, 401, { error: `invalid token ${String(req.headers.authorization).slice(7)}` })
        )
        const options: Ollama.Options = { host: server.url, apiKey: Redacted.make(KEY) }
        const p = yield* Ollama.make(options)
        const exit = yield* Effect.exit(p.generate({ prompt: "x" }))
        const error = modelErrorOf(exit)
        assert.strictEqual(error.reason, "Unauthorized")
        assert.include(error.message, "invalid token")
        const texts = [
          JSON.stringify(error),
          String(error),
          error.message,
          inspect(error, { depth: 10 }),
          inspect(options)
        ]
        if (Exit.isFailure(exit)) texts.push(Cause.pretty(exit.cause))
        for (const text of texts) assert.notInclude(text, KEY)
        assert.strictEqual((yield* server.requests)[0]?.headers.authorization, `Bearer ${KEY}`)
      })
    )
    it.effect("a proxy's token given in `headers` as Redacted is sent, and an echo of it is scrubbed", () =>
      Effect.gen(function* () {
        const TOKEN = "proxy-token-0a1b2c3d4e5f"
        const server = yield* Server.make((req, res) =>
          Server.json(res, 401, { error: `bad proxy token ${String(req.headers["x-proxy-token"])}` })
        )
        const p = yield* provider(server, { headers: { "x-proxy-token": Redacted.make(TOKEN) } })
        const error = yield* flipModel(p.generate({ prompt: "x" }))
        assert.include(error.message, "bad proxy token <redacted>")
        assert.notInclude(inspect(error, { depth: 10 }), TOKEN)
        assert.strictEqual((yield* server.requests)[0]?.headers["x-proxy-token"], TOKEN)
      })
    )
  })

  describe("stream", () => {
    const lines = [
      chatLine("Héllo "),
      chatLine("wörld 🌍, "),
      chatLine("日本語"),
      chatLine("!"),
      { ...final(), message: { role: "assistant", content: "" } }
    ]

    it.effect("NDJSON lines split across reads (inside characters too) end in one Finish with the counts", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, Server.splitBytes(Server.ndjson(lines), 7), {
            contentType: "application/x-ndjson",
            pauseMs: 0
          })
        )
        const p = yield* provider(server)
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
        assert.strictEqual(text, "Héllo wörld 🌍, 日本語!")
        assert.deepStrictEqual(
          parts.filter((part) => part._tag === "Finish"),
          [
            {
              _tag: "Finish",
              finishReason: "stop",
              usage: { inputTokens: 26, outputTokens: 298, totalTokens: 324 },
              provider: "ollama",
              model: "llama3.2"
            }
          ]
        )
        const [request] = yield* server.requests
        assert.strictEqual(bodyOf(request)["stream"], true)
        assert.strictEqual(request?.headers.accept, "application/x-ndjson")
      })
    )

    it.effect("/api/generate streams `response` fields, CRLF line ends", () =>
      Effect.gen(function* () {
        const body = Server.ndjson(
          [
            { model: "llama3.2", response: "The", done: false },
            { model: "llama3.2", response: " sky", done: false },
            { response: "", ...final({ done_reason: "length" }) }
          ],
          "\r\n"
        )
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, Server.splitAwkward(body), { contentType: "application/x-ndjson" })
        )
        const p = yield* provider(server, { api: "generate" })
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "Why?" }))
        assert.isTrue(Exit.isSuccess(exit))
        assert.strictEqual(text, "The sky")
        assert.strictEqual(parts.at(-1)?._tag === "Finish" && parts.at(-1)?._tag, "Finish")
        assert.strictEqual((yield* server.requests)[0]?.path, "/api/generate")
      })
    )

    it.effect("an error line mid-stream fails with the provider's message after the delivered text", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(
            res,
            [
              Server.ndjson([chatLine("par"), chatLine("tial")]),
              Server.ndjson([{ error: "an unknown error was encountered while running the model" }])
            ],
            { contentType: "application/x-ndjson", end: "hang" }
          )
        )
        const p = yield* provider(server)
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(text, "partial")
        assert.isFalse(parts.some((part) => part._tag === "Finish"))
        assert.include(modelErrorOf(exit).message, "unknown error was encountered")
        yield* server.awaitAborted(1)
      })
    )

    it.effect("a connection cut mid-stream is Transport; a clean end without done is too", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          Server.chunked(res, [Server.ndjson([chatLine("one ")]), Server.ndjson([chatLine("two")])], {
            contentType: "application/x-ndjson",
            end: bodyOf(req)["model"] === "cut" ? "destroy" : "end"
          })
        )
        const p = yield* provider(server)
        const cut = yield* collect(p.stream({ prompt: "hi", model: "cut" }))
        assert.strictEqual(cut.text, "one two")
        assert.strictEqual(modelErrorOf(cut.exit).reason, "Transport")
        const ended = yield* collect(p.stream({ prompt: "hi", model: "end" }))
        assert.strictEqual(ended.text, "one two")
        assert.strictEqual(modelErrorOf(ended.exit).reason, "Transport")
        assert.isTrue(isRetryable(modelErrorOf(ended.exit)))
      })
    )

    it.effect("a body that ends cleanly inside a line broke off: Transport after the text, as an SSE stream's", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [Server.ndjson([chatLine("one ")]), '{"model":"llama3.2","message":{"content":"tw'], {
            contentType: "application/x-ndjson",
            end: "end"
          })
        )
        const p = yield* provider(server)
        const { exit, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(text, "one ")
        const error = modelErrorOf(exit)
        assert.strictEqual(error.reason, "Transport")
        assert.isTrue(isRetryable(error))
      })
    )

    it.effect("a stream that stalls after two lines ends with an idle TimeoutError naming the provider", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [Server.ndjson([chatLine("one "), chatLine("two")])], {
            contentType: "application/x-ndjson",
            end: "hang"
          })
        )
        const p = yield* provider(server, { name: "local-ollama" })
        const seen: Array<string> = []
        const fiber = yield* p.stream({ prompt: "hi" }).pipe(
          Stream.runForEach((part) => Effect.sync(() => part._tag === "TextDelta" && seen.push(part.text))),
          Effect.flip,
          Effect.forkChild
        )
        while (seen.length < 2) yield* Effect.promise(() => Server.pause(5))
        yield* TestClock.adjust("60 seconds")
        const error = yield* Fiber.join(fiber)
        assert.instanceOf(error, TimeoutError)
        if (!(error instanceof TimeoutError)) return
        assert.strictEqual(error.limit, "idle")
        assert.strictEqual(error.provider, "local-ollama")
        assert.strictEqual(error.partialText, "one two")
        yield* server.awaitAborted(1)
      })
    )

    it.effect("a server that stalls after its done line (no close) finishes at once, not at the idle deadline", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [Server.ndjson([chatLine("one ")]), Server.ndjson([final()])], {
            contentType: "application/x-ndjson",
            end: "hang"
          })
        )
        const p = yield* provider(server, { streamIdleTimeout: "20 seconds" })
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
        assert.strictEqual(text, "one ")
        assert.strictEqual(parts.at(-1)?._tag, "Finish")
        yield* server.awaitAborted(1)
      })
    )

    it.effect("an endless line and an endless stream end with TooLarge; an SSE or HTML answer is Decode", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) => {
          switch (bodyOf(req)["model"]) {
            case "line":
              return Server.endless(res, { contentType: "application/x-ndjson" })
            case "lines":
              return Server.endless(res, { contentType: "application/x-ndjson", chunk: Server.ndjson([chatLine("x")]) })
            case "sse":
              return Server.chunked(res, [Server.sse([chatLine("x")])])
            default:
              return Server.text(res, 200, "<html>proxy login</html>", { "content-type": "text/html" })
          }
        })
        const p = yield* provider(server, { maxResponseBytes: 1024 * 1024, maxEventBytes: 64 * 1024 })
        const line = modelErrorOf((yield* collect(p.stream({ prompt: "x", model: "line" }))).exit)
        assert.strictEqual(line.reason, "TooLarge")
        assert.include(line.message, "maxEventBytes")
        const many = yield* collect(p.stream({ prompt: "x", model: "lines" }))
        assert.isAbove(many.text.length, 0)
        assert.strictEqual(modelErrorOf(many.exit).reason, "TooLarge")
        assert.include(modelErrorOf(many.exit).message, "maxResponseBytes")
        yield* server.awaitAborted(2)
        for (const model of ["sse", "html"]) {
          const error = modelErrorOf((yield* collect(p.stream({ prompt: "x", model }))).exit)
          assert.strictEqual(error.reason, "Decode", model)
          assert.strictEqual(error.field, "content-type", model)
        }
      })
    )
  })

  describe("tools", () => {
    it.effect("a tool call without a name is Decode naming it (generate and stream), as on the other providers", () =>
      Effect.gen(function* () {
        const calls = [{ function: { name: "", arguments: { city: "Oslo" } } }]
        const server = yield* Server.make((req, res) =>
          bodyOf(req)["stream"] === true
            ? Server.chunked(res, [Server.ndjson([chatLine("", { tool_calls: calls }), final()])], {
                contentType: "application/x-ndjson"
              })
            : Server.json(res, 200, { ...final(), message: { role: "assistant", content: "", tool_calls: calls } })
        )
        const p = yield* provider(server)
        const generated = yield* flipModel(p.generate({ prompt: "x", tools }))
        assert.deepStrictEqual([generated.reason, generated.field], ["Decode", "message.tool_calls[0].function.name"])
        const streamed = modelErrorOf((yield* collect(p.stream({ prompt: "x", tools }))).exit)
        assert.deepStrictEqual([streamed.reason, streamed.field], ["Decode", "message.tool_calls[0].function.name"])
      })
    )

    it.effect("an id made up for a call that came without one is none of the answer's own ids, in a stream too", () =>
      Effect.gen(function* () {
        const call = (city: string, id?: string) => ({
          ...(id === undefined ? {} : { id }),
          function: { name: "get_weather", arguments: { city } }
        })
        const server = yield* Server.make((req, res) =>
          bodyOf(req)["stream"] === true
            ? Server.chunked(
                res,
                [
                  Server.ndjson([
                    chatLine("", { tool_calls: [call("Oslo")] }),
                    // The server's own id, the one made up for the call before.
                    chatLine("", { tool_calls: [call("Rome", "call_0")] }),
                    final()
                  ])
                ],
                { contentType: "application/x-ndjson" }
              )
            : Server.json(res, 200, {
                ...final(),
                message: { role: "assistant", content: "", tool_calls: [call("Oslo"), call("Rome", "call_0")] }
              })
        )
        const p = yield* provider(server)
        const generated = (yield* p.generate({ prompt: "x", tools })).toolCalls ?? []
        assert.strictEqual(generated[1]!.id, "call_0")
        assert.notStrictEqual(generated[0]!.id, "call_0")
        const { parts, exit } = yield* collect(p.stream({ prompt: "x", tools }))
        assert.isTrue(Exit.isSuccess(exit))
        const streamed = parts.flatMap((part) => (part._tag === "ToolCall" ? [part.call] : []))
        assert.deepStrictEqual(
          streamed.map((call) => JSON.parse(call.arguments).city),
          ["Oslo", "Rome"]
        )
        assert.strictEqual(new Set(streamed.map((call) => call.id)).size, 2)
      })
    )

    it.effect("tool calls of one id are Decode naming the second, in an answer and across a stream's lines", () =>
      Effect.gen(function* () {
        const call = (id: string, city: string) => ({ id, function: { name: "get_weather", arguments: { city } } })
        const server = yield* Server.make((req, res) =>
          bodyOf(req)["stream"] === true
            ? Server.chunked(
                res,
                [
                  Server.ndjson([
                    chatLine("", { tool_calls: [call("call_ab12cd34", "Oslo")] }),
                    chatLine("", { tool_calls: [call("call_ab12cd34", "Rome")] }),
                    final()
                  ])
                ],
                { contentType: "application/x-ndjson" }
              )
            : Server.json(res, 200, {
                ...final(),
                message: {
                  role: "assistant",
                  content: "",
                  tool_calls: [call("call_ab12cd34", "Oslo"), call("call_ab12cd34", "Rome")]
                }
              })
        )
        const p = yield* provider(server)
        // A tool message names its call by id: the two results could not be told apart.
        const generated = yield* flipModel(p.generate({ prompt: "x", tools }))
        assert.deepStrictEqual([generated.reason, generated.field], ["Decode", "message.tool_calls[1].id"])
        const streamed = modelErrorOf((yield* collect(p.stream({ prompt: "x", tools }))).exit)
        assert.deepStrictEqual([streamed.reason, streamed.field], ["Decode", "message.tool_calls[0].id"])
      })
    )

    it.effect("tools, JSON schema format and tool messages map to /api/chat; tool calls come back with ids", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, {
            ...final(),
            message: {
              role: "assistant",
              content: "",
              tool_calls: [{ function: { name: "get_weather", arguments: { city: "Paris" } } }]
            }
          })
        )
        const p = yield* provider(server)
        const answer = yield* p.generate({
          messages: [
            { role: "user", content: "Weather in Paris and Rome?" },
            {
              role: "assistant",
              content: "",
              toolCalls: [{ id: "c0", name: "get_weather", arguments: '{"city":"Rome"}' }]
            },
            { role: "tool", content: "sunny", toolCallId: "c0" }
          ],
          tools,
          responseFormat: { type: "json_schema", name: "w", schema: { type: "object" } }
        })
        assert.strictEqual(answer.finishReason, "tool_calls")
        assert.deepStrictEqual(answer.toolCalls, [{ id: "call_0", name: "get_weather", arguments: '{"city":"Paris"}' }])
        const body = bodyOf((yield* server.requests)[0])
        assert.deepStrictEqual(body["tools"], [{ type: "function", function: tools![0] }])
        assert.deepStrictEqual(body["format"], { type: "object" })
        assert.deepStrictEqual((body["messages"] as Array<unknown>).slice(1), [
          {
            role: "assistant",
            content: "",
            tool_calls: [{ id: "c0", function: { name: "get_weather", arguments: { city: "Rome" } } }]
          },
          { role: "tool", content: "sunny", tool_name: "get_weather", tool_call_id: "c0" }
        ])
      })
    )

    it.effect(
      "Ollama's tool-call ids round-trip: on the assistant's tool_calls and as the tool message's tool_call_id",
      () =>
        Effect.gen(function* () {
          let turn = 0
          const server = yield* Server.make((_, res) =>
            turn++ === 0
              ? Server.json(res, 200, {
                  ...final(),
                  message: {
                    role: "assistant",
                    content: "",
                    tool_calls: [
                      {
                        id: "call_k3x9q2mz",
                        function: { index: 0, name: "get_weather", arguments: { city: "Paris" } }
                      },
                      // No id from an older server (or an empty one from a compatible one): made up here.
                      { id: "", function: { index: 1, name: "get_weather", arguments: { city: "Rome" } } },
                      // Ollama's ids are call_ and 8 random letters or digits: all digits is still Ollama's own.
                      { id: "call_20481234", function: { index: 2, name: "get_weather", arguments: { city: "Oslo" } } }
                    ]
                  }
                })
              : Server.json(res, 200, { ...final(), message: { role: "assistant", content: "Sunny." } })
          )
          const p = yield* provider(server)
          const first = yield* p.generate({ prompt: "Weather in Paris and Rome?", tools })
          assert.deepStrictEqual(
            first.toolCalls?.map((c) => c.id),
            ["call_k3x9q2mz", "call_1", "call_20481234"]
          )
          yield* p.generate({
            tools,
            messages: [
              { role: "user", content: "Weather in Paris and Rome?" },
              { role: "assistant", content: "", toolCalls: first.toolCalls! },
              { role: "tool", content: "rainy", toolCallId: "call_1" },
              { role: "tool", content: "sunny", toolCallId: "call_k3x9q2mz" },
              { role: "tool", content: "snow", toolCallId: "call_20481234" }
            ]
          })
          const body = bodyOf((yield* server.requests)[1])
          // Ollama's own id goes back; an id made up here (none given) is not sent.
          assert.deepStrictEqual((body["messages"] as Array<unknown>).slice(1), [
            {
              role: "assistant",
              content: "",
              tool_calls: [
                { id: "call_k3x9q2mz", function: { name: "get_weather", arguments: { city: "Paris" } } },
                { function: { name: "get_weather", arguments: { city: "Rome" } } },
                { id: "call_20481234", function: { name: "get_weather", arguments: { city: "Oslo" } } }
              ]
            },
            { role: "tool", content: "rainy", tool_name: "get_weather" },
            { role: "tool", content: "sunny", tool_name: "get_weather", tool_call_id: "call_k3x9q2mz" },
            { role: "tool", content: "snow", tool_name: "get_weather", tool_call_id: "call_20481234" }
          ])
        })
    )

    it.effect("streamed tool calls are ToolCall parts before the Finish, whose reason is tool_calls", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(
            res,
            Server.splitBytes(
              Server.ndjson([
                chatLine("", { tool_calls: [{ function: { name: "get_weather", arguments: { city: "Paris" } } }] }),
                chatLine("", { tool_calls: [{ id: "t2", function: { name: "get_time", arguments: {} } }] }),
                { ...final(), message: { role: "assistant", content: "" } }
              ]),
              13
            ),
            { contentType: "application/x-ndjson", pauseMs: 0 }
          )
        )
        const p = yield* provider(server)
        const { exit, parts } = yield* collect(p.stream({ prompt: "hi", tools }))
        assert.isTrue(Exit.isSuccess(exit))
        assert.deepStrictEqual(parts.slice(0, 2), [
          { _tag: "ToolCall", call: { id: "call_0", name: "get_weather", arguments: '{"city":"Paris"}' } },
          { _tag: "ToolCall", call: { id: "t2", name: "get_time", arguments: "{}" } }
        ])
        assert.strictEqual(parts[2]?._tag === "Finish" && parts[2].finishReason, "tool_calls")
        assert.lengthOf(parts, 3)
      })
    )

    it.effect(
      "parallelToolCalls: false with tools is refused naming it before any call: Ollama cannot ask for one call at a time",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.json(res, 200, { ...final(), message: { role: "assistant", content: "ok" } })
          )
          const p = yield* provider(server)
          const error = yield* flipModel(p.generate({ prompt: "x", tools, parallelToolCalls: false }))
          assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "parallelToolCalls"])
          assert.lengthOf(yield* server.requests, 0)
          yield* p.generate({ prompt: "x", tools, parallelToolCalls: true })
          yield* p.generate({ prompt: "x", parallelToolCalls: false })
          yield* p.generate({ prompt: "x", tools, toolChoice: "none", parallelToolCalls: false })
          assert.lengthOf(yield* server.requests, 3)
        })
    )

    it.effect("a tool choice Ollama cannot honour is refused before any call; `none` sends no tools", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, { ...final(), message: { role: "assistant", content: "ok" } })
        )
        const p = yield* provider(server)
        const required = yield* flipModel(p.generate({ prompt: "x", tools, toolChoice: "required" }))
        assert.strictEqual(required.reason, "InvalidRequest")
        assert.strictEqual(required.field, "toolChoice")
        const named = yield* flipModel(p.generate({ prompt: "x", tools, toolChoice: { name: "get_weather" } }))
        assert.strictEqual(named.field, "toolChoice")
        const badArgs = yield* flipModel(
          p.generate({
            messages: [{ role: "assistant", content: "", toolCalls: [{ id: "a", name: "f", arguments: "not json" }] }]
          })
        )
        assert.strictEqual(badArgs.field, "messages[0].toolCalls[0].arguments")
        assert.lengthOf(yield* server.requests, 0)
        yield* p.generate({ prompt: "x", tools, toolChoice: "none" })
        assert.isUndefined(bodyOf((yield* server.requests)[0])["tools"])
      })
    )

    it.effect('blank call arguments ("", as OpenAI answers a tool without parameters) go as {}, both ways', () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, {
            ...final(),
            message: { role: "assistant", content: "", tool_calls: [{ function: { name: "now", arguments: "" } }] }
          })
        )
        const p = yield* provider(server)
        const answer = yield* p.generate({
          messages: [
            { role: "user", content: "x" },
            {
              role: "assistant",
              content: "",
              toolCalls: [
                { id: "a", name: "now", arguments: "" },
                { id: "b", name: "now", arguments: " \n" }
              ]
            },
            { role: "tool", toolCallId: "a", content: "12:00" },
            { role: "tool", toolCallId: "b", content: "12:00" }
          ]
        })
        const sent = bodyOf((yield* server.requests)[0])["messages"] as ReadonlyArray<Record<string, unknown>>
        assert.deepStrictEqual(sent[1]!["tool_calls"], [
          { id: "a", function: { name: "now", arguments: {} } },
          { id: "b", function: { name: "now", arguments: {} } }
        ])
        // An answer's blank arguments are "{}", as OpenAiCompat reads them: JSON a caller can parse and send back.
        assert.deepStrictEqual(
          answer.toolCalls?.map((c) => c.arguments),
          ["{}"]
        )
      })
    )
  })

  describe("embed", () => {
    it.effect(
      "requestLimits are the user's: 3000 texts embed under a raised maxEmbedTexts, a lowered bound refuses",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) => {
            const input = bodyOf(req)["input"] as ReadonlyArray<string>
            return Server.json(res, 200, { model: "m", embeddings: input.map((text) => [Number(text), 0]) })
          })
          const texts = Array.from({ length: 3000 }, (_, i) => String(i)) as unknown as readonly [
            string,
            ...Array<string>
          ]
          const roomy = yield* provider(server, { requestLimits: { maxEmbedTexts: 5000 } })
          const answer = yield* roomy.embed({ texts })
          assert.deepStrictEqual(
            answer.vectors.map((v) => v[0]),
            texts.map(Number)
          )
          const strict = yield* provider(server, { requestLimits: { maxInputChars: 10, maxMessages: 1 } })
          const long = yield* flipModel(strict.generate({ prompt: "x".repeat(11) }))
          assert.deepStrictEqual([long.reason, long.field], ["InvalidRequest", "prompt"])
          const stream = modelErrorOf((yield* collect(strict.stream({ prompt: "x".repeat(11) }))).exit)
          assert.deepStrictEqual([stream.reason, stream.field], ["InvalidRequest", "prompt"])
          const bad = yield* Effect.flip(provider(server, { requestLimits: { maxEmbedTexts: 0 } }))
          assert.strictEqual(bad.path, "requestLimits.maxEmbedTexts")
        })
    )

    it.effect("/api/embed with every text in one call", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, {
            model: "all-minilm",
            embeddings: [
              [0.1, 0.2],
              [0.3, 0.4]
            ],
            total_duration: 14143917,
            load_duration: 1019500,
            prompt_eval_count: 8
          })
        )
        const p = yield* provider(server, { embeddingModel: "all-minilm" })
        const answer = yield* p.embed({ texts: ["a", "b"] })
        assert.deepStrictEqual(answer, {
          vectors: [
            [0.1, 0.2],
            [0.3, 0.4]
          ],
          usage: Model.usage(8, 0),
          provider: "ollama",
          model: "all-minilm"
        })
        const [request] = yield* server.requests
        assert.strictEqual(request?.path, "/api/embed")
        assert.deepStrictEqual(request?.json, { model: "all-minilm", input: ["a", "b"] })
      })
    )

    it.effect("a value past float range (1e400 reads as Infinity) is Decode naming the vector, not a vector", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, '{"model":"m","embeddings":[[0.5,1],[1e400,1]]}')
        )
        const p = yield* provider(server)
        const error = yield* flipModel(p.embed({ texts: ["a", "b"] }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "embeddings[1]")
      })
    )

    it.effect("many texts go in batches of 256 (an answer of 2048 long vectors passes 32 MiB); counts summed", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) => {
          const input = bodyOf(req)["input"] as ReadonlyArray<string>
          Server.json(res, 200, {
            model: "m",
            embeddings: input.map((t) => [Number(t), 1]),
            prompt_eval_count: input.length
          })
        })
        const p = yield* provider(server)
        const texts = Array.from({ length: 300 }, (_, i) => String(i))
        const answer = yield* p.embed({ texts: texts as [string, ...Array<string>] })
        assert.deepStrictEqual(
          answer.vectors,
          texts.map((t) => [Number(t), 1])
        )
        assert.deepStrictEqual(answer.usage, { inputTokens: 300, outputTokens: 0, totalTokens: 300 })
        const sizes = (yield* server.requests).map((r) => (bodyOf(r)["input"] as ReadonlyArray<string>).length)
        assert.deepStrictEqual(sizes, [256, 44])
      })
    )

    it.effect(
      "a bad vector in a later batch is named by its index in that answer, the batch and text in the message",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) => {
            const input = bodyOf(req)["input"] as ReadonlyArray<string>
            Server.json(res, 200, {
              model: "m",
              embeddings: input.map((t) => (t === "270" ? [1] : [1, 2])),
              prompt_eval_count: input.length
            })
          })
          const p = yield* provider(server)
          const texts = Array.from({ length: 300 }, (_, i) => String(i))
          const error = yield* flipModel(p.embed({ texts: texts as [string, ...Array<string>] }))
          assert.deepStrictEqual([error.reason, error.field], ["Decode", "embeddings[14]"])
          assert.include(error.message, "batch 2")
          assert.include(error.message, "input text 270")
        })
    )

    it.effect("embeddingDimensions is sent as dimensions; vectors of another length are Decode naming one", () =>
      Effect.gen(function* () {
        let length = 2
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, {
            model: "m",
            embeddings: [Array.from({ length }, () => 0.5), Array.from({ length }, () => 0.25)]
          })
        )
        const p = yield* provider(server, { embeddingDimensions: 2 })
        const answer = yield* p.embed({ texts: ["a", "b"] })
        assert.deepStrictEqual(answer.vectors, [
          [0.5, 0.5],
          [0.25, 0.25]
        ])
        const [request] = yield* server.requests
        assert.deepStrictEqual(request?.json, { model: "nomic-embed-text", input: ["a", "b"], dimensions: 2 })
        // A server too old for `dimensions` ignores it and answers the model's own length.
        length = 3
        const error = yield* flipModel(p.embed({ texts: ["a", "b"] }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "embeddings[0]"])
        assert.include(error.message, "embeddingDimensions")
        // Without the option, nothing is sent and any length is accepted.
        const plain = yield* provider(server)
        assert.strictEqual((yield* plain.embed({ texts: ["a", "b"] })).vectors[0]?.length, 3)
        const requests = yield* server.requests
        assert.notProperty(bodyOf(requests[requests.length - 1]), "dimensions")
      })
    )

    it.effect(
      "an answer of more vectors than a batch's texts is Decode on embeddings, counted before they are read",
      () =>
        Effect.gen(function* () {
          // 3 MB of empty vectors cost a second of decoding before their count was checked; one that is no vector
          // among them shows which came first.
          const embeddings: Array<unknown> = Array.from({ length: 100_000 }, () => [])
          embeddings[5_000] = "x"
          const server = yield* Server.make((_, res) => Server.json(res, 200, { model: "m", embeddings }))
          const p = yield* provider(server)
          const error = yield* flipModel(p.embed({ texts: ["a", "b"] }))
          assert.deepStrictEqual([error.reason, error.field], ["Decode", "embeddings"])
          assert.include(error.message, "at most 256")
        })
    )

    it.effect("a vector of more than 65,536 dimensions is Decode naming it, counted before it is read", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) => {
          const bound = bodyOf(req)["model"] === "bound"
          const values: Array<unknown> = Array.from({ length: bound ? 65_536 : 1_000_000 }, () => 0)
          // One value that is no number, far in: the count is refused before it is read.
          if (!bound) values[500_000] = "x"
          return Server.json(res, 200, { model: "m", embeddings: [values] })
        })
        const p = yield* provider(server)
        assert.lengthOf((yield* p.embed({ texts: ["a"], model: "bound" })).vectors[0]!, 65_536)
        const error = yield* flipModel(p.embed({ texts: ["a"], model: "huge" }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "embeddings[0]"])
        assert.include(error.message, "65536")
      })
    )

    it.effect("a wrong number of vectors is Decode on embeddings", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, { model: "m", embeddings: [[1]] }))
        const p = yield* provider(server)
        const error = yield* flipModel(p.embed({ texts: ["a", "b"] }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "embeddings")
      })
    )
  })

  describe("options", () => {
    it.effect("an option whose getter throws is an OptionError naming it, not a defect", () =>
      Effect.gen(function* () {
        const options = Object.defineProperty({ model: "m" }, "keepAlive", {
          enumerable: true,
          get: () => {
            throw new Error("no keepAlive")
          }
        }) as Ollama.Options
        const exit = yield* Effect.exit(Layer.build(Ollama.layer(options)))
        const error = failureOf(exit) as unknown as { readonly _tag: string; readonly path: string }
        assert.deepStrictEqual([error._tag, error.path], ["OptionError", "keepAlive"])
      })
    )

    it.effect("bad options fail the layer with an OptionError naming the field", () =>
      Effect.gen(function* () {
        const cases: ReadonlyArray<readonly [string, Ollama.Options]> = [
          ["host", { host: "http://" }],
          ["host", { host: "127.0.0.1:11434/?token=abc" }],
          ["keepAlive", { keepAlive: "soon" as Ollama.Options["keepAlive"] }],
          // -1 keeps the model loaded (Ollama's own); any other negative, NaN, or a positive time under a
          // millisecond (sent as 0, which unloads at once) says nothing Ollama can do as asked.
          ["keepAlive", { keepAlive: -5 }],
          ["keepAlive", { keepAlive: -0.5 }],
          ["keepAlive", { keepAlive: Number.NaN }],
          ["keepAlive", { keepAlive: Number.NEGATIVE_INFINITY }],
          ["keepAlive", { keepAlive: 0.4 }],
          ["keepAlive", { keepAlive: Duration.nanos(10n) }],
          ["keepAlive", { keepAlive: "0.5ns" as never }],
          ["keepAlive", { keepAlive: "-5m" }],
          ["keepAlive", { keepAlive: "-2" as never }],
          ["keepAlive", { keepAlive: "2562047h60m" as never }],
          ["keepAlive", { keepAlive: "1h30" as never }],
          // Past Go's time.Duration (int64 nanoseconds, ~292 years) Ollama refuses every call.
          ["keepAlive", { keepAlive: 1e21 }],
          ["keepAlive", { keepAlive: "20000 weeks" }],
          ["keepAlive", { keepAlive: "99999999999h" }],
          ["timeout", { timeout: 0 }],
          ["streamIdleTimeout", { streamIdleTimeout: Number.NaN }],
          ["maxResponseBytes", { maxResponseBytes: -1 }],
          ["api", { api: "completions" as "chat" }],
          ["embeddingDimensions", { embeddingDimensions: 0 }],
          ["embeddingDimensions", { embeddingDimensions: -8 }],
          ["embeddingDimensions", { embeddingDimensions: 65_537 }],
          ["embeddingDimensions", { embeddingDimensions: 1.5 }],
          ["embeddingDimensions", { embeddingDimensions: Number.NaN }],
          ["embeddingDimensions", { embeddingDimensions: null as never }],
          ["apiKey", { apiKey: KEY as unknown as Redacted.Redacted<string> }],
          ['headers["x-a"]', { headers: { "x-a": "\u0000" } }],
          // A header an option sets: one of the two was dropped, unsaid.
          ['headers["authorization"]', { apiKey: Redacted.make(KEY), headers: { authorization: "Bearer x" } }],
          // Headers the provider sets on each request, from what it sends and reads: the entry was replaced, unsaid.
          ['headers["accept"]', { headers: { accept: "application/json" } }],
          ['headers["Content-Type"]', { headers: { "Content-Type": "text/plain" } }],
          ['headers["content-length"]', { headers: { "content-length": "5" } }],
          // Headers the HTTP client refuses on every request (a retryable Transport error each time).
          ['headers["Transfer-Encoding"]', { headers: { "Transfer-Encoding": "chunked" } }],
          ['headers["keep-alive"]', { headers: { "keep-alive": "timeout=5" } }],
          ['headers["expect"]', { headers: { expect: "100-continue" } }],
          ['headers["upgrade"]', { headers: { upgrade: "websocket" } }],
          ['headers["connection"]', { headers: { connection: "upgrade" } }],
          ["apiKey", { apiKey: Redacted.make("k\n") }],
          // OLLAMA_API_KEY set but empty: it was sent as "Bearer ", which ollama.com refuses at every call.
          ["apiKey", { apiKey: Redacted.make("") }],
          ["apiKey", { apiKey: Redacted.make(" ") }],
          // null is a wrong value, not the default.
          ["host", { host: null as never }],
          ["timeout", { timeout: null as never }],
          ["api", { api: null as never }],
          // A misspelt key is refused, not left at its default; so are options that are not an object.
          ["keepAlve", { keepAlve: "10m" } as never],
          ["options", null as never]
        ]
        for (const [path, options] of cases) {
          const error = yield* Effect.flip(Layer.build(Ollama.layer(options)))
          assert.strictEqual(error._tag, "OptionError", path)
          assert.strictEqual("path" in error ? error.path : undefined, path)
          assert.notInclude(error.message, KEY)
        }
      })
    )

    it.effect("keepAlive: durations in milliseconds, zero unloads, forever is -1", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, { model: "m", embeddings: [[1]] }))
        for (const keepAlive of [Duration.minutes(1), 0, "forever", "2562047h", "100 weeks"] as const) {
          const p = yield* provider(server, { keepAlive })
          yield* p.embed({ texts: ["a"] })
        }
        const sent = (yield* server.requests).map((r) => bodyOf(r)["keep_alive"])
        assert.deepStrictEqual(sent, ["60000ms", "0ms", -1, "2562047h", "60480000000ms"])
      })
    )

    it.effect('keepAlive: Ollama\'s own -1 (and "-1m", or no bound at all) keeps the model loaded; "0" unloads', () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, { ...final(), message: { role: "assistant", content: "ok" } })
        )
        const given: ReadonlyArray<Ollama.Options["keepAlive"]> = [
          -1,
          "-1m",
          // As OLLAMA_KEEP_ALIVE is written.
          "-1" as never,
          Number.POSITIVE_INFINITY,
          Duration.infinity,
          "0" as never,
          "0s",
          // Go's durations as OLLAMA_KEEP_ALIVE takes them, units in a row.
          "1h30m" as never,
          "2m0.5s" as never
        ]
        for (const keepAlive of given) {
          const p = yield* provider(server, { keepAlive })
          yield* p.generate({ prompt: "x" })
        }
        const sent = (yield* server.requests).map((r) => bodyOf(r)["keep_alive"])
        assert.deepStrictEqual(sent, [-1, -1, -1, -1, -1, "0ms", "0s", "1h30m", "2m0.5s"])
      })
    )

    it.effect("layerConfig reads OLLAMA_HOST without a scheme; explicit options pick up no key", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, { ...final(), message: { role: "assistant", content: "ok" } })
        )
        const env = ConfigProvider.layer(
          ConfigProvider.fromEnv({
            env: { OLLAMA_HOST: server.url.replace("http://", ""), OLLAMA_MODEL: "qwen3", OLLAMA_API_KEY: KEY }
          })
        )
        const call = Effect.gen(function* () {
          const p = yield* Model.ModelProvider
          return yield* p.generate({ prompt: "x" })
        })
        assert.strictEqual((yield* call.pipe(Effect.provide(Ollama.layerConfig().pipe(Layer.provide(env))))).text, "ok")
        yield* call.pipe(
          Effect.provide(Ollama.layerConfig({ host: Config.succeed(server.url) }).pipe(Layer.provide(env)))
        )
        const [fromEnv, explicit] = yield* server.requests
        assert.strictEqual(bodyOf(fromEnv)["model"], "qwen3")
        assert.strictEqual(fromEnv?.headers.authorization, `Bearer ${KEY}`)
        assert.isUndefined(explicit?.headers.authorization)
        assert.strictEqual(bodyOf(explicit)["model"], "llama3.2")
      })
    )
  })
})

describe("Ollama host", () => {
  it.effect("a host without a scheme or a port is on Ollama's port 11434, as the ollama CLI reads OLLAMA_HOST", () =>
    Effect.gen(function* () {
      const urls: Array<string> = []
      // A client that records where each request goes and answers nothing.
      const recording = HttpClient.make((request) => {
        urls.push(request.url)
        return Effect.fail(
          new HttpClientError.HttpClientError({
            reason: new HttpClientError.TransportError({ request, description: "not sent" })
          })
        )
      })
      const hosts = ["0.0.0.0", "gpu-box", "gpu-box:8080", "[::1]", "::1", "http://gpu-box", "gpu-box/ollama", ":8080"]
      for (const host of hosts) {
        const p = yield* Ollama.make({ host }).pipe(Effect.provideService(HttpClient.HttpClient, recording))
        yield* Effect.exit(p.embed({ texts: ["a"] }))
      }
      assert.deepStrictEqual(urls, [
        "http://0.0.0.0:11434/api/embed",
        "http://gpu-box:11434/api/embed",
        "http://gpu-box:8080/api/embed",
        "http://[::1]:11434/api/embed",
        "http://[::1]:11434/api/embed",
        "http://gpu-box/api/embed",
        "http://gpu-box:11434/ollama/api/embed",
        // A port alone is this machine's, as the CLI dials it.
        "http://127.0.0.1:8080/api/embed"
      ])
    })
  )
})

describe("Ollama host credentials", () => {
  it.effect(
    "a host without a scheme but with credentials is refused as one with a scheme is, without the password",
    () =>
      Effect.gen(function* () {
        for (const host of ["user:s3cret-pw@gpu-box", "user:s3cret-pw@gpu-box:8080", "s3cret-pw@gpu-box/ollama"]) {
          const error = yield* Effect.flip(Effect.scoped(Ollama.make({ host })))
          assert.strictEqual(error.path, "host", host)
          assert.include(error.message, "credentials in the URL are refused", host)
          assert.include(error.message, "apiKey", host)
          assert.notInclude(error.message, "s3cret-pw", host)
        }
      }).pipe(Effect.provide(FetchHttpClient.layer))
  )
})

describe("Ollama interruption (live)", () => {
  it.live("a call interrupted by the caller's timeout closes its connection", () =>
    Effect.gen(function* () {
      const server = yield* Server.make(Server.hang)
      const p = yield* provider(server)
      const result = yield* Effect.result(Effect.timeout(p.generate({ prompt: "hi" }), "150 millis"))
      assert.isTrue(result._tag === "Failure" && Cause.isTimeoutError(result.failure))
      yield* server.awaitAborted(1).pipe(Effect.timeout("5 seconds"))
    }).pipe(Effect.provide(NodeHttpClient.layerUndici))
  )
})

layer(NodeHttpClient.layerUndici)("Ollama secrets over plain http", (it) => {
  it.effect("a key or a Redacted header off loopback over http is an OptionError naming it and the host", () =>
    Effect.gen(function* () {
      const apiKey = Redacted.make(KEY)
      const refusal = (options: Ollama.Options) =>
        Effect.map(Effect.flip(Ollama.make(options)), (error) => {
          assert.strictEqual(error._tag, "OptionError")
          assert.notInclude(error.message, KEY)
          return { path: error.path, message: error.message }
        })
      // OLLAMA_HOST without a scheme is plain http.
      const key = yield* refusal({ host: "gpu-box.lan", apiKey })
      assert.strictEqual(key.path, "apiKey")
      assert.include(key.message, "gpu-box.lan:11434")
      assert.include(key.message, "allowPlainHttpSecrets")
      const header = yield* refusal({ host: "http://10.1.2.3:11434", headers: { "x-proxy-token": apiKey } })
      assert.strictEqual(header.path, 'headers["x-proxy-token"]')
      assert.strictEqual((yield* refusal({ allowPlainHttpSecrets: 1 as never })).path, "allowPlainHttpSecrets")
      for (const options of [
        { host: "https://ollama.com", apiKey },
        { host: "127.0.0.1:11434", apiKey },
        { host: "localhost", apiKey },
        // The ollama CLI's own way to name this machine: nothing crosses a network.
        { host: "0.0.0.0", apiKey },
        { host: "gpu-box.lan" },
        { host: "gpu-box.lan", apiKey, allowPlainHttpSecrets: true }
      ] satisfies ReadonlyArray<Ollama.Options>) {
        yield* Ollama.make(options)
      }
    })
  )
})

layer(NodeHttpClient.layerUndici)("Ollama tool messages", (it) => {
  it.effect("a tool message answering no earlier call is InvalidRequest naming it and the id, nothing sent", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) =>
        Server.json(res, 200, { ...final(), message: chatLine("ok").message })
      )
      const p = yield* provider(server)
      const messages = (answered: string): ReadonlyArray<Model.Message> => [
        { role: "user", content: "weather?" },
        { role: "assistant", content: "", toolCalls: [{ id: "call_k3x9q2mz", name: "weather", arguments: "{}" }] },
        { role: "tool", content: "sunny", toolCallId: answered }
      ]
      const error = yield* flipModel(p.generate({ messages: messages("call_zzzz0000") }))
      assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "messages[2].toolCallId"])
      assert.include(error.message, '"call_zzzz0000"')
      assert.lengthOf(yield* server.requests, 0)
      yield* p.generate({ messages: messages("call_k3x9q2mz") })
      // Ollama's wire needs no id: a tool message without one still goes, as the tool's answer of the turn.
      yield* p.generate({
        messages: [
          { role: "user", content: "weather?" },
          { role: "tool", content: "sunny" }
        ]
      })
      assert.lengthOf(yield* server.requests, 2)
    })
  )
})

layer(NodeHttpClient.layerUndici)("Ollama usage estimates", (it) => {
  it.effect(
    "without the server's counts, a turn of tool calls is estimated from its calls, not as 0 output tokens",
    () =>
      Effect.gen(function* () {
        const city = "x".repeat(800)
        const call = { id: "call_ab12cd34", function: { name: "get_weather", arguments: { city } } }
        const { eval_count: _, ...uncounted } = final()
        const server = yield* Server.make((req, res) =>
          bodyOf(req)["stream"] === true
            ? Server.chunked(res, [Server.ndjson([chatLine("", { tool_calls: [call] }), uncounted])], {
                contentType: "application/x-ndjson"
              })
            : Server.json(res, 200, { ...uncounted, message: { role: "assistant", content: "", tool_calls: [call] } })
        )
        const p = yield* provider(server)
        const generated = yield* p.generate({ prompt: "x", tools })
        const { parts } = yield* collect(p.stream({ prompt: "x", tools }))
        const finish = parts.find((part) => part._tag === "Finish")
        for (const usage of [generated.usage, finish?._tag === "Finish" ? finish.usage : undefined]) {
          assert.isAtLeast(usage?.outputTokens ?? 0, Math.ceil(city.length / 4))
        }
      })
  )
})
