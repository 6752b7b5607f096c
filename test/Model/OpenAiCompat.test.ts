import { inspect } from "node:util"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it, layer } from "@effect/vitest"
import {
  Cause,
  Config,
  ConfigProvider,
  Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Logger,
  Option,
  Redacted,
  References,
  Stream,
  Tracer
} from "effect"
import { FetchHttpClient, HttpClient, HttpClientRequest } from "effect/http"
import { TestClock } from "effect/testing"
import { type AiError, isRetryable, ModelError, shouldFallback, TimeoutError } from "../../src/AiError.js"
import * as Model from "../../src/Model.js"
import * as OpenAiCompat from "../../src/Model/OpenAiCompat.js"
import * as UndiciHttpClient from "../../src/UndiciHttpClient.js"
import * as Server from "../utils/httpServer.js"
import { drainStalled } from "../utils/stalled.js"
import { recording } from "../utils/tracer.js"

const KEY = "sk-test-9f8e7d6c5b4a3210-SECRET"

const provider = (server: Server.TestServer, options: OpenAiCompat.Options = {}) =>
  OpenAiCompat.make({ baseUrl: `${server.url}/v1`, apiKey: Redacted.make(KEY), name: "oai", ...options })

const completion = (content: unknown, extra: Record<string, unknown> = {}) => ({
  id: "chatcmpl-1",
  object: "chat.completion",
  created: 1_700_000_000,
  model: "gpt-4o-mini-2024-07-18",
  choices: [{ index: 0, message: { role: "assistant", content }, logprobs: null, finish_reason: "stop" }],
  usage: { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 },
  ...extra
})

const chunk = (content: string | null, finish: string | null = null, delta: Record<string, unknown> = {}) => ({
  id: "chatcmpl-1",
  object: "chat.completion.chunk",
  created: 1_700_000_000,
  model: "gpt-4o-mini-2024-07-18",
  choices: [
    { index: 0, delta: content === null ? delta : { content, ...delta }, logprobs: null, finish_reason: finish }
  ]
})

const usageChunk = {
  id: "chatcmpl-1",
  object: "chat.completion.chunk",
  created: 1_700_000_000,
  model: "gpt-4o-mini-2024-07-18",
  choices: [],
  usage: { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13 }
}

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

const bodyOf = (request: Server.Recorded | undefined): Record<string, unknown> =>
  (request?.json ?? {}) as Record<string, unknown>
const promptOf = (request: Server.Recorded): string =>
  (bodyOf(request)["messages"] as Array<{ readonly content: string }>).at(-1)!.content

const UNICODE = "Héllo wörld 🌍, 日本語のテキスト!"
const events = [
  ": keep-alive",
  chunk(null),
  chunk("Héllo "),
  ": ping",
  chunk("wörld 🌍, "),
  chunk("日本語のテキスト"),
  chunk("!"),
  chunk(null, "stop"),
  usageChunk,
  "[DONE]"
]

// The same suite over effect's undici client and over this package's (the gateway's).
for (const [name, client] of [
  ["NodeHttpClient.layerUndici", NodeHttpClient.layerUndici],
  ["UndiciHttpClient.layer", UndiciHttpClient.layer]
] as const)
  layer(client)(`OpenAiCompat over ${name}`, (it) => {
    describe("generate", () => {
      it.effect("sends the documented request and reads the answer", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) => Server.json(res, 200, completion("Paris.")))
          const p = yield* provider(server, { organization: "org-42" })
          const answer = yield* p.generate({
            system: "Be brief.",
            prompt: "Capital of France?",
            maxTokens: 20,
            temperature: 0.2,
            topP: 0.9,
            seed: 3,
            stop: ["\n"]
          })
          assert.deepStrictEqual(answer, {
            text: "Paris.",
            finishReason: "stop",
            usage: { inputTokens: 12, outputTokens: 5, totalTokens: 17 },
            provider: "oai",
            model: "gpt-4o-mini-2024-07-18"
          })
          const [request] = yield* server.requests
          assert.strictEqual(request?.method, "POST")
          assert.strictEqual(request?.path, "/v1/chat/completions")
          assert.strictEqual(request?.headers.authorization, `Bearer ${KEY}`)
          assert.strictEqual(request?.headers["openai-organization"], "org-42")
          assert.deepStrictEqual(request?.json, {
            model: "gpt-4o-mini",
            messages: [
              { role: "system", content: "Be brief." },
              { role: "user", content: "Capital of France?" }
            ],
            max_tokens: 20,
            temperature: 0.2,
            top_p: 0.9,
            stop: ["\n"],
            seed: 3
          })
        })
      )

      it.effect(
        "estimates usage when the server reports none; sends no key when none is set; max_completion_tokens",
        () =>
          Effect.gen(function* () {
            const server = yield* Server.make((_, res) =>
              Server.json(res, 200, completion("12345678", { usage: null }))
            )
            const p = yield* OpenAiCompat.make({
              baseUrl: `${server.url}/v1`,
              model: "llama3",
              maxTokensField: "max_completion_tokens"
            })
            const answer = yield* p.generate({ prompt: "abcd", maxTokens: 9 })
            assert.deepStrictEqual(answer.usage, { inputTokens: 1, outputTokens: 2, totalTokens: 3 })
            const [request] = yield* server.requests
            assert.isUndefined(request?.headers.authorization)
            assert.strictEqual(bodyOf(request)["max_completion_tokens"], 9)
            assert.isUndefined(bodyOf(request)["max_tokens"])
          })
      )

      it.effect("content as an array of parts (Mistral) is the text of its text parts, other parts left out", () =>
        Effect.gen(function* () {
          const content: Record<string, unknown> = {
            parts: [
              { type: "thinking", thinking: [{ type: "text", text: "the user greets" }] },
              { type: "text", text: "Bonjour " },
              { type: "image_url", image_url: { url: "https://example.test/a.png" } },
              { type: "text", text: "le monde" }
            ],
            empty: [],
            bad: [{ type: "text", text: 42 }]
          }
          const server = yield* Server.make((req, res) =>
            Server.json(res, 200, completion(content[promptOf(req)], { usage: null }))
          )
          const p = yield* provider(server)
          const answer = yield* p.generate({ prompt: "parts" })
          assert.strictEqual(answer.text, "Bonjour le monde")
          assert.strictEqual(answer.finishReason, "stop")
          // The output estimate counts the text delivered, not the parts left out.
          assert.strictEqual(answer.usage.outputTokens, Math.ceil("Bonjour le monde".length / 4))
          assert.strictEqual((yield* p.generate({ prompt: "empty" })).text, "")
          const bad = yield* flipModel(p.generate({ prompt: "bad" }))
          assert.strictEqual(bad.reason, "Decode")
          assert.include(bad.field, "choices[0].message.content")
        })
      )

      it.effect("partial or invalid usage: what the server counted is kept, the rest estimated, never a Decode", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) =>
            Server.json(res, 200, completion("12345678", { usage: JSON.parse(promptOf(req)) }))
          )
          const p = yield* provider(server)
          const usageOf = (usage: unknown) =>
            Effect.map(p.generate({ prompt: JSON.stringify(usage) }), (answer) => answer.usage)
          // The prompts differ in length: estimates are a quarter of their characters.
          const noPrompt = { completion_tokens: 5 }
          assert.deepStrictEqual(yield* usageOf(noPrompt), {
            inputTokens: Math.ceil(JSON.stringify(noPrompt).length / 4),
            outputTokens: 5,
            totalTokens: Math.ceil(JSON.stringify(noPrompt).length / 4) + 5
          })
          assert.deepStrictEqual(yield* usageOf({ prompt_tokens: 3 }), {
            inputTokens: 3,
            outputTokens: 2,
            totalTokens: 5
          })
          const empty = {}
          assert.deepStrictEqual(yield* usageOf(empty), { inputTokens: 1, outputTokens: 2, totalTokens: 3 })
          const invalid = { prompt_tokens: -4, completion_tokens: 1.5, total_tokens: -2.5 }
          assert.deepStrictEqual(yield* usageOf(invalid), {
            inputTokens: Math.ceil(JSON.stringify(invalid).length / 4),
            outputTokens: 2,
            totalTokens: Math.ceil(JSON.stringify(invalid).length / 4) + 2
          })
        })
      )

      it.effect(
        "a 429 is RateLimited with retryAfter from Retry-After seconds, or an HTTP date read against the Clock",
        () =>
          Effect.gen(function* () {
            const now = Date.parse("2026-01-01T00:00:00Z")
            yield* TestClock.setTime(now)
            const server = yield* Server.make((req, res) =>
              Server.json(
                res,
                429,
                {
                  error: {
                    message: "Rate limit reached for gpt-4o-mini",
                    type: "requests",
                    code: "rate_limit_exceeded"
                  }
                },
                { "retry-after": promptOf(req) === "date" ? new Date(now + 42_000).toUTCString() : "7" }
              )
            )
            const p = yield* provider(server)
            const seconds = yield* flipModel(p.generate({ prompt: "seconds" }))
            assert.strictEqual(seconds.reason, "RateLimited")
            assert.strictEqual(seconds.status, 429)
            assert.deepStrictEqual(seconds.retryAfter, Duration.seconds(7))
            assert.include(seconds.message, "Rate limit reached")
            const date = yield* flipModel(p.generate({ prompt: "date" }))
            assert.deepStrictEqual(date.retryAfter, Duration.seconds(42))
          })
      )

      it.effect("maps statuses to reasons from data; the provider's message is kept", () =>
        Effect.gen(function* () {
          const answers: Record<string, readonly [number, unknown]> = {
            a: [500, { error: { message: "The server had an error", type: "server_error", code: null } }],
            b: [529, { type: "error", error: { type: "overloaded_error", message: "Overloaded" } }],
            c: [
              401,
              {
                error: { message: "Incorrect API key provided", type: "invalid_request_error", code: "invalid_api_key" }
              }
            ],
            d: [
              400,
              {
                error: { message: "'messages' too long", type: "invalid_request_error", param: "messages", code: null }
              }
            ],
            e: [404, { error: { message: "The model `nope` does not exist", param: null, code: "model_not_found" } }],
            f: [504, "<html>gateway timeout</html>"],
            g: [429, { error: { message: "You exceeded your current quota", code: "insufficient_quota" } }],
            h: [
              422,
              { object: "error", message: "max_tokens too large", type: "BadRequestError", param: null, code: 422 }
            ],
            i: [413, { error: { message: "Request too large" } }],
            j: [503, { error: { message: "Service unavailable" } }],
            k: [403, { error: { message: "Project does not have access" } }],
            l: [408, { error: { message: "Request timed out" } }],
            m: [502, "Bad gateway"],
            n: [409, { error: { message: "Another request is in progress", type: "conflict", code: null } }],
            // Ollama's /v1 and vLLM answer an unknown model with a 404 and no model_not_found code.
            o: [
              404,
              {
                error: {
                  message: 'model "nope" not found, try pulling it first',
                  type: "api_error",
                  param: null,
                  code: null
                }
              }
            ],
            p: [
              404,
              { object: "error", message: "The model `nope` does not exist.", type: "NotFoundError", code: 404 }
            ],
            // llama.cpp's server started without what the call needs: permanent for it, another may serve.
            q: [
              501,
              { error: { code: 501, message: "This server does not support tools.", type: "not_supported_error" } }
            ],
            // A server that echoes the key in `param` does not put it in the error's field.
            r: [400, { error: { message: "bad header", type: "invalid_request_error", param: `Bearer ${KEY}` } }]
          }
          const server = yield* Server.make((req, res) => {
            const [status, body] = answers[promptOf(req)]!
            Server.json(res, status, body)
          })
          const p = yield* provider(server)
          const reason = (key: string) => flipModel(p.generate({ prompt: key }))
          const expected: Record<string, string> = {
            a: "Overloaded",
            b: "Overloaded",
            c: "Unauthorized",
            d: "InvalidRequest",
            e: "InvalidRequest",
            f: "Timeout",
            g: "Unauthorized",
            h: "InvalidRequest",
            i: "TooLarge",
            j: "Unavailable",
            k: "Unauthorized",
            l: "Timeout",
            m: "Unavailable",
            n: "Unavailable",
            o: "InvalidRequest",
            p: "InvalidRequest",
            q: "InvalidRequest",
            r: "InvalidRequest"
          }
          for (const [key, want] of Object.entries(expected)) assert.strictEqual((yield* reason(key)).reason, want, key)
          assert.strictEqual((yield* reason("d")).field, "messages")
          assert.strictEqual((yield* reason("e")).field, "model")
          assert.strictEqual((yield* reason("o")).field, "model")
          assert.strictEqual((yield* reason("p")).field, "model")
          assert.isTrue(isRetryable(yield* reason("n")))
          const notImplemented = yield* reason("q")
          assert.strictEqual(notImplemented.field, "model")
          assert.isFalse(isRetryable(notImplemented))
          assert.isTrue(shouldFallback(notImplemented))
          assert.strictEqual((yield* reason("r")).field, "Bearer <redacted>")
          assert.include((yield* reason("f")).message, "gateway timeout")
          assert.include((yield* reason("a")).message, "The server had an error")
        })
      )

      it.effect("a malformed body is Decode naming the field; broken JSON is Decode at the root", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) =>
            promptOf(req) === "json" ? Server.json(res, 200, '{"choices": [') : Server.json(res, 200, completion(42))
          )
          const p = yield* provider(server)
          const bad = yield* flipModel(p.generate({ prompt: "field" }))
          assert.strictEqual(bad.reason, "Decode")
          assert.strictEqual(bad.field, "choices[0].message.content")
          const notJson = yield* flipModel(p.generate({ prompt: "json" }))
          assert.strictEqual(notJson.reason, "Decode")
          assert.strictEqual(notJson.field, "(root)")
        })
      )

      it.effect("an invalid request fails before any HTTP call", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) => Server.json(res, 200, completion("x")))
          const p = yield* provider(server)
          const both = yield* flipModel(p.generate({ prompt: "a", messages: [{ role: "user", content: "b" }] }))
          assert.strictEqual(both.reason, "InvalidRequest")
          const orphan = yield* flipModel(p.generate({ messages: [{ role: "tool", content: "42" }] }))
          assert.strictEqual(orphan.field, "messages[0].toolCallId")
          assert.lengthOf(yield* server.requests, 0)
        })
      )

      it.effect("a tool name given twice is InvalidRequest naming the second, before any call", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) => Server.json(res, 200, completion("x")))
          const p = yield* provider(server)
          // OpenAI and Gemini answer a 400 after the call; a server that takes it could not say which was called.
          const tools = [{ name: "weather" }, { name: "time" }, { name: "weather", description: "another" }]
          const error = yield* flipModel(p.generate({ prompt: "x", tools }))
          assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "tools[2].name"])
          assert.include(error.message, "tools[0]")
          assert.lengthOf(yield* server.requests, 0)
          yield* p.generate({ prompt: "x", tools: tools.slice(0, 2) })
        })
      )

      it.effect("an assistant's tool call without a name is InvalidRequest naming it, before any call", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) => Server.json(res, 200, completion("x")))
          const p = yield* provider(server)
          // OpenAI and Gemini refuse it after the call; no provider's answer carries one (each is Decode there).
          const conversation = (name: string) => [
            { role: "user" as const, content: "weather?" },
            { role: "assistant" as const, content: "", toolCalls: [{ id: "call_0", name, arguments: "{}" }] },
            { role: "tool" as const, content: "sunny", toolCallId: "call_0" }
          ]
          const error = yield* flipModel(p.generate({ messages: conversation("") }))
          assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "messages[1].toolCalls[0].name"])
          assert.lengthOf(yield* server.requests, 0)
          yield* p.generate({ messages: conversation("weather") })
        })
      )

      it.effect("a refused connection is Transport", () =>
        Effect.gen(function* () {
          const url = yield* Effect.scoped(Effect.map(Server.make(Server.hang), (s) => s.url))
          const p = yield* OpenAiCompat.make({ baseUrl: `${url}/v1`, apiKey: Redacted.make(KEY) })
          const error = yield* flipModel(p.generate({ prompt: "hi" }))
          assert.strictEqual(error.reason, "Transport")
          assert.isTrue(isRetryable(error))
        })
      )

      it.effect("a server that never answers ends with a request TimeoutError at the default 10 minutes", () =>
        Effect.gen(function* () {
          const server = yield* Server.make(Server.hang)
          const p = yield* provider(server)
          const fiber = yield* Effect.forkChild(Effect.flip(p.generate({ prompt: "hi" })))
          yield* server.awaitRequests(1)
          yield* TestClock.adjust("10 minutes")
          const error = yield* Fiber.join(fiber)
          assert.instanceOf(error, TimeoutError)
          assert.strictEqual((error as TimeoutError).limit, "request")
          assert.strictEqual((error as TimeoutError).provider, "oai")
          yield* server.awaitAborted(1)
        })
      )

      it.effect("an endless 200 body ends with TooLarge and the connection is closed", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.endless(res, { contentType: "application/json", prefix: '{"choices":[{"message":{"content":"' })
          )
          const p = yield* provider(server, { maxResponseBytes: 1024 * 1024 })
          const error = yield* flipModel(p.generate({ prompt: "hi" }))
          assert.strictEqual(error.reason, "TooLarge")
          assert.include(error.message, "maxResponseBytes")
          yield* server.awaitAborted(1)
        })
      )
    })

    describe("spans", () => {
      it.effect(
        "generate, stream and embed make their span when a tracer is provided, as a root too; none otherwise",
        () =>
          Effect.gen(function* () {
            const server = yield* Server.make((req, res) => {
              if (req.path.endsWith("/embeddings")) {
                return Server.json(res, 200, { data: [{ index: 0, embedding: [1, 0] }], model: "e" })
              }
              if (bodyOf(req)["stream"] === true) {
                return Server.text(res, 200, Server.sse([chunk("hi"), chunk(null, "stop"), "[DONE]"]), {
                  "content-type": "text/event-stream"
                })
              }
              return Server.json(res, 200, completion("Paris."))
            })
            // What span the HTTP request runs under, seen by the user's middleware.
            const seen: Array<string> = []
            const p = yield* provider(server, {
              transformClient: HttpClient.transform((effect) =>
                Effect.flatMap(Effect.option(Effect.currentSpan), (span) => {
                  seen.push(Option.isSome(span) ? span.value.name : "none")
                  return effect
                })
              )
            })
            const spans: Array<Tracer.NativeSpan> = []
            const recording = Tracer.make({
              span(options) {
                const span = new Tracer.NativeSpan(options)
                spans.push(span)
                return span
              }
            })
            const all = Effect.gen(function* () {
              yield* p.generate({ prompt: "q" })
              const streamed = yield* collect(p.stream({ prompt: "q" }))
              assert.isTrue(Exit.isSuccess(streamed.exit))
              yield* p.embed({ texts: ["a"] })
            })

            // Effect's default tracer: spans would reach nobody, so none is made (and none is paid for).
            yield* all
            assert.deepStrictEqual(seen, ["none", "none", "none"])
            // A tracer provided, tracing switched off: none either.
            yield* all.pipe(
              Effect.provideService(Tracer.Tracer, recording),
              Effect.provideService(References.TracerEnabled, false)
            )
            assert.deepStrictEqual(spans, [])

            // A tracer provided and no span around the calls: each operation is a root span, the
            // HTTP client's span its child.
            seen.length = 0
            yield* all.pipe(Effect.provideService(Tracer.Tracer, recording))
            assert.deepStrictEqual(seen, ["POST", "POST", "POST"])
            const named = (name: string) => spans.find((span) => span.name === name)!
            for (const [name, operation] of [
              ["OpenAiCompat.generate", "chat"],
              ["OpenAiCompat.stream", undefined],
              ["OpenAiCompat.embed", "embeddings"]
            ] as const) {
              const span = named(name)
              assert.isDefined(span, name)
              assert.isTrue(Option.isNone(span.parent), `${name} is a root`)
              assert.strictEqual(span.attributes.get("gen_ai.provider.name"), "oai")
              assert.strictEqual(span.attributes.get("gen_ai.operation.name"), operation)
              assert.isTrue(span.status._tag === "Ended" && Exit.isSuccess(span.status.exit), name)
              const children = spans.filter(
                (s) => s.name === "POST" && Option.isSome(s.parent) && s.parent.value === span
              )
              assert.lengthOf(children, 1, `${name} has its HTTP span`)
            }
          })
      )
    })

    describe("secrets", () => {
      it.effect("the key never appears in errors, causes, inspections, options or spans", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) => {
            const echoed = String(req.headers.authorization).slice(7)
            const headers = { "x-echo": echoed, "x-request-id": "req-1" }
            if (req.path.endsWith("/embeddings"))
              return Server.text(res, 200, `oops ${echoed}`, { "content-type": "text/html", ...headers })
            return Server.json(
              res,
              401,
              { error: { message: `Incorrect API key provided: ${echoed}`, code: "invalid_api_key" } },
              headers
            )
          })
          const { spans, tracer } = recording()
          const options: OpenAiCompat.Options = { baseUrl: `${server.url}/v1`, apiKey: Redacted.make(KEY) }
          const p = yield* OpenAiCompat.make(options)
          const lines: Array<string> = []
          const capture = Logger.make((options) => {
            lines.push(String(Logger.formatLogFmt.log(options)))
            lines.push(JSON.stringify(Logger.formatStructured.log(options)))
          })
          const traced = <A, E>(effect: Effect.Effect<A, E>) =>
            effect.pipe(
              Effect.provideService(HttpClient.TracerHeaderFilter, () => true),
              Effect.provideService(Tracer.Tracer, tracer),
              Effect.provideService(References.MinimumLogLevel, "All"),
              Effect.provide(Logger.layer([capture]))
            )
          const generated = yield* traced(Effect.exit(p.generate({ prompt: "hi" })))
          const streamed = yield* traced(collect(p.stream({ prompt: "hi" })))
          const embedded = yield* traced(Effect.exit(p.embed({ texts: ["a"] })))
          const unauthorized = modelErrorOf(generated)
          assert.strictEqual(unauthorized.reason, "Unauthorized")
          assert.include(unauthorized.message, "Incorrect API key provided")
          assert.strictEqual(modelErrorOf(embedded).field, "content-type")
          const exits: ReadonlyArray<Exit.Exit<unknown, AiError>> = [generated, streamed.exit, embedded]
          for (const exit of exits) {
            const error = failureOf(exit)
            const texts = [JSON.stringify(error), String(error), error.message, inspect(error, { depth: 10 })]
            if (Exit.isFailure(exit)) {
              texts.push(Cause.pretty(exit.cause))
              yield* traced(Effect.logError("call failed", exit.cause))
            }
            for (const text of texts) assert.notInclude(text, KEY)
          }
          assert.isAbove(lines.length, 0)
          for (const line of lines) assert.notInclude(line, KEY)
          assert.notInclude(JSON.stringify(options), KEY)
          assert.notInclude(inspect(options, { depth: 10 }), KEY)
          assert.isAbove(spans.length, 3)
          // What an exporter sends (OtlpTracer): attributes, events, and the pretty errors of a failed exit.
          for (const span of spans) {
            assert.notInclude(inspect(Object.fromEntries(span.attributes), { depth: 10 }), KEY)
            assert.notInclude(inspect(span.events, { depth: 10 }), KEY)
            if (span.status._tag === "Ended" && Exit.isFailure(span.status.exit)) {
              for (const error of Cause.prettyErrors(span.status.exit.cause)) {
                assert.notInclude(`${error.message}\n${error.stack}`, KEY, span.name)
              }
            }
          }
          const http = spans.find((s) => s.name === "POST")!
          assert.strictEqual(http.attributes.get("http.response.header.x-echo"), "<redacted>")
          assert.strictEqual(http.attributes.get("http.response.header.x-request-id"), "req-1")
        })
      )
    })

    describe("echoed key at the edge of a quoted snippet", () => {
      it.effect("an answer that is not JSON or not an event stream quotes its start without any part of the key", () =>
        Effect.gen(function* () {
          // The key straddles the 200th character, where the quoted start of the body is cut.
          const page = `${"x".repeat(190)}${KEY} and more text after it`
          const server = yield* Server.make((_, res) => Server.text(res, 200, page, { "content-type": "text/html" }))
          const p = yield* provider(server)
          const embedded = yield* flipModel(p.embed({ texts: ["a"] }))
          assert.strictEqual(embedded.field, "content-type")
          const sseServer = yield* Server.make((_, res) =>
            Server.text(res, 200, page, { "content-type": "text/event-stream" })
          )
          const streamed = modelErrorOf((yield* collect((yield* provider(sseServer)).stream({ prompt: "hi" }))).exit)
          assert.strictEqual(streamed.field, "content-type")
          for (const error of [embedded, streamed]) {
            assert.include(error.message, "xxxxx")
            assert.notInclude(error.message, KEY.slice(0, 6))
          }
        })
      )
    })

    describe("secret headers", () => {
      const AZURE = "azure-key-5e4d3c2b1a-SECRET"
      it.effect("a key given in `headers` as Redacted is sent, and never appears in errors, logs or options", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) =>
            Server.json(res, 401, { error: { message: `Access denied for key ${String(req.headers["api-key"])}` } })
          )
          const lines: Array<string> = []
          const capture = Logger.make((options) => {
            lines.push(String(Logger.formatLogFmt.log(options)))
            lines.push(JSON.stringify(Logger.formatStructured.log(options)))
          })
          const options: OpenAiCompat.Options = {
            baseUrl: `${server.url}/v1`,
            headers: { "api-key": Redacted.make(AZURE), "x-tenant": "t-1" },
            transformClient: (client) => HttpClient.tapRequest(client, (request) => Effect.log("sending", request))
          }
          const p = yield* OpenAiCompat.make(options)
          const generated = yield* Effect.exit(p.generate({ prompt: "hi" })).pipe(
            Effect.provide(Logger.layer([capture]))
          )
          const streamed = yield* collect(p.stream({ prompt: "hi" })).pipe(Effect.provide(Logger.layer([capture])))
          const [request] = yield* server.requests
          assert.strictEqual(request?.headers["api-key"], AZURE)
          assert.strictEqual(request?.headers["x-tenant"], "t-1")
          for (const exit of [generated, streamed.exit]) {
            const error = modelErrorOf(exit)
            assert.strictEqual(error.reason, "Unauthorized")
            assert.include(error.message, "Access denied for key <redacted>")
            for (const text of [
              JSON.stringify(error),
              inspect(error, { depth: 10 }),
              Cause.pretty((exit as Exit.Failure<unknown, unknown>).cause)
            ]) {
              assert.notInclude(text, AZURE)
            }
          }
          assert.isTrue(lines.some((line) => line.includes("api-key")))
          for (const line of lines) assert.notInclude(line, AZURE)
          assert.notInclude(inspect(options, { depth: 10 }), AZURE)
        })
      )

      it.effect("a Redacted header value with CR or LF is refused naming it, without quoting it", () =>
        Effect.gen(function* () {
          const error = yield* Effect.flip(
            OpenAiCompat.make({ headers: { "api-key": Redacted.make(`${AZURE}\r\nx: y`) } })
          )
          assert.strictEqual(error.path, 'headers["api-key"]')
          assert.notInclude(error.message, AZURE)
        })
      )
    })

    describe("stream", () => {
      it.effect("SSE split inside CRLF pairs and UTF-8 characters, with comments and a usage chunk", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) => Server.chunked(res, Server.splitAwkward(Server.sse(events))))
          const p = yield* provider(server)
          const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
          assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
          assert.strictEqual(text, UNICODE)
          assert.lengthOf(
            parts.filter((x) => x._tag === "Finish"),
            1
          )
          assert.deepStrictEqual(parts.at(-1), {
            _tag: "Finish",
            finishReason: "stop",
            usage: { inputTokens: 9, outputTokens: 4, totalTokens: 13 },
            provider: "oai",
            model: "gpt-4o-mini-2024-07-18"
          })
          const [request] = yield* server.requests
          assert.strictEqual(bodyOf(request)["stream"], true)
          assert.deepStrictEqual(bodyOf(request)["stream_options"], { include_usage: true })
          assert.strictEqual(request?.headers.accept, "text/event-stream")
        })
      )

      it.effect("the same stream cut every 7 bytes with LF line ends, and with bare CR line ends", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) =>
            Server.chunked(res, Server.splitBytes(Server.sse(events, promptOf(req) === "cr" ? "\r" : "\n"), 7), {
              pauseMs: 0
            })
          )
          const p = yield* provider(server)
          for (const eol of ["lf", "cr"]) {
            const { exit, parts, text } = yield* collect(p.stream({ prompt: eol }))
            assert.isTrue(Exit.isSuccess(exit), eol)
            assert.strictEqual(text, UNICODE, eol)
            assert.lengthOf(
              parts.filter((x) => x._tag === "Finish"),
              1
            )
          }
        })
      )

      it.effect("an `event: error` mid-stream fails with the provider's own message after the delivered text", () =>
        Effect.gen(function* () {
          const body =
            Server.sse([chunk("Hel"), chunk("lo")]) +
            Server.sse([
              { event: "error", data: { error: { message: "Upstream overloaded", type: "overloaded_error" } } }
            ])
          const server = yield* Server.make((_, res) => Server.chunked(res, Server.splitAwkward(body), { end: "hang" }))
          const p = yield* provider(server)
          const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
          assert.strictEqual(text, "Hello")
          assert.isFalse(parts.some((x) => x._tag === "Finish"))
          const error = modelErrorOf(exit)
          assert.strictEqual(error.reason, "Overloaded")
          assert.include(error.message, "Upstream overloaded")
          yield* server.awaitAborted(1)
        })
      )

      it.effect("an error event with plain text data keeps that text; a vLLM error object keeps its status", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) =>
            Server.chunked(
              res,
              [
                Server.sse([chunk("partial")]),
                promptOf(req) === "text"
                  ? Server.sse([{ event: "error", data: "Upstream overloaded" }])
                  : Server.sse([
                      { object: "error", message: "context length exceeded", type: "BadRequestError", code: 400 }
                    ])
              ],
              { end: "hang" }
            )
          )
          const p = yield* provider(server)
          const text = yield* collect(p.stream({ prompt: "text" }))
          assert.strictEqual(text.text, "partial")
          assert.include(modelErrorOf(text.exit).message, "Upstream overloaded")
          const vllm = yield* collect(p.stream({ prompt: "vllm" }))
          assert.strictEqual(modelErrorOf(vllm.exit).reason, "InvalidRequest")
          assert.strictEqual(modelErrorOf(vllm.exit).status, 400)
        })
      )

      it.effect(
        "a connection cut mid-stream is Transport after the delivered text; a clean end without finish too",
        () =>
          Effect.gen(function* () {
            const server = yield* Server.make((req, res) =>
              Server.chunked(res, [Server.sse([chunk("one ")]), Server.sse([chunk("two")])], {
                end: promptOf(req) === "cut" ? "destroy" : "end"
              })
            )
            const p = yield* provider(server)
            const cut = yield* collect(p.stream({ prompt: "cut" }))
            assert.strictEqual(cut.text, "one two")
            assert.isFalse(cut.parts.some((x) => x._tag === "Finish"))
            assert.strictEqual(modelErrorOf(cut.exit).reason, "Transport")
            const ended = yield* collect(p.stream({ prompt: "end" }))
            assert.strictEqual(ended.text, "one two")
            assert.include(modelErrorOf(ended.exit).message, "ended before")
          })
      )

      it.effect("a connection cut after the finish_reason (before usage and [DONE]) finishes, usage estimated", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.chunked(res, [Server.sse([chunk("one ")]), Server.sse([chunk("two", "stop")])], { end: "destroy" })
          )
          const p = yield* provider(server)
          const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
          assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
          assert.strictEqual(text, "one two")
          const finish = parts.at(-1)
          assert.strictEqual(finish?._tag === "Finish" ? finish.finishReason : undefined, "stop")
        })
      )

      it.effect("a finish_reason without [DONE] or usage still finishes, usage estimated", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.chunked(res, [Server.sse([chunk("abcdefgh"), chunk(null, "length")])])
          )
          const p = yield* provider(server, { streamUsage: false })
          const { exit, parts } = yield* collect(p.stream({ prompt: "abcd" }))
          assert.isTrue(Exit.isSuccess(exit))
          assert.deepStrictEqual(parts.at(-1), {
            _tag: "Finish",
            finishReason: "length",
            usage: { inputTokens: 1, outputTokens: 2, totalTokens: 3 },
            provider: "oai",
            model: "gpt-4o-mini-2024-07-18"
          })
          assert.isUndefined(bodyOf((yield* server.requests)[0])["stream_options"])
        })
      )

      it.effect("delta content as an array of parts (Mistral) streams the text of its text parts", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.chunked(res, [
              Server.sse([
                chunk(null, null, { role: "assistant", content: [] }),
                chunk(null, null, { content: [{ type: "thinking", thinking: [{ type: "text", text: "hmm" }] }] }),
                chunk(null, null, { content: [{ type: "text", text: "Héllo " }] }),
                chunk(null, null, {
                  content: [
                    { type: "text", text: "wörld" },
                    { type: "reference", reference_ids: [1] },
                    { type: "text", text: "!" }
                  ]
                }),
                chunk(null, "stop"),
                "[DONE]"
              ])
            ])
          )
          const p = yield* provider(server, { streamUsage: false })
          const { exit, parts, text } = yield* collect(p.stream({ prompt: "abcd" }))
          assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
          assert.strictEqual(text, "Héllo wörld!")
          assert.deepStrictEqual(
            parts.map((part) => part._tag),
            ["TextDelta", "TextDelta", "Finish"]
          )
          const finish = parts.at(-1)
          assert.strictEqual(finish?._tag === "Finish" ? finish.usage.outputTokens : -1, Math.ceil(12 / 4))
        })
      )

      it.effect(
        "a usage chunk without a choices field (Fireworks, Bedrock) is read; a chunk with neither is Decode",
        () =>
          Effect.gen(function* () {
            const { choices: _, ...usageOnly } = usageChunk
            const server = yield* Server.make((req, res) =>
              Server.chunked(
                res,
                Server.splitBytes(
                  Server.sse(
                    bodyOf(req)["model"] === "bare"
                      ? [
                          chunk("Hi"),
                          { id: "chatcmpl-1", object: "chat.completion.chunk" },
                          chunk(null, "stop"),
                          "[DONE]"
                        ]
                      : [chunk("Hi"), chunk(null, "stop"), usageOnly, "[DONE]"]
                  ),
                  9
                ),
                { pauseMs: 0 }
              )
            )
            const p = yield* provider(server)
            const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
            assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
            assert.strictEqual(text, "Hi")
            const finish = parts.at(-1)
            assert.deepStrictEqual(finish?._tag === "Finish" ? finish.usage : undefined, {
              inputTokens: 9,
              outputTokens: 4,
              totalTokens: 13
            })
            const bare = modelErrorOf((yield* collect(p.stream({ prompt: "hi", model: "bare" }))).exit)
            assert.deepStrictEqual([bare.reason, bare.field], ["Decode", "choices"])
          })
      )

      it.effect("a usage chunk without prompt_tokens still finishes: the input estimated, the output counted", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.chunked(res, [
              Server.sse([
                chunk("abcdefgh"),
                chunk(null, "stop"),
                { ...usageChunk, usage: { completion_tokens: 4 } },
                "[DONE]"
              ])
            ])
          )
          const p = yield* provider(server)
          const { exit, parts } = yield* collect(p.stream({ prompt: "abcd" }))
          assert.isTrue(Exit.isSuccess(exit))
          assert.deepStrictEqual(parts.at(-1), {
            _tag: "Finish",
            finishReason: "stop",
            usage: { inputTokens: 1, outputTokens: 4, totalTokens: 5 },
            provider: "oai",
            model: "gpt-4o-mini-2024-07-18"
          })
        })
      )

      it.effect("a 429 before the stream starts is RateLimited with retryAfter and no parts", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.json(res, 429, { error: { message: "slow down" } }, { "retry-after": "3" })
          )
          const p = yield* provider(server)
          const { exit, parts } = yield* collect(p.stream({ prompt: "hi" }))
          assert.lengthOf(parts, 0)
          const error = modelErrorOf(exit)
          assert.strictEqual(error.reason, "RateLimited")
          assert.deepStrictEqual(error.retryAfter, Duration.seconds(3))
        })
      )

      it.effect("a stream that stalls after two chunks ends with an idle TimeoutError naming the provider", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.chunked(res, [Server.sse([chunk("one "), chunk("two")])], { end: "hang" })
          )
          const p = yield* provider(server, { streamIdleTimeout: "20 seconds" })
          const seen: Array<string> = []
          const fiber = yield* p.stream({ prompt: "hi" }).pipe(
            Stream.runForEach((part) => Effect.sync(() => part._tag === "TextDelta" && seen.push(part.text))),
            Effect.flip,
            Effect.forkChild
          )
          while (seen.length < 2) yield* Effect.promise(() => Server.pause(5))
          yield* TestClock.adjust("20 seconds")
          const error = yield* Fiber.join(fiber)
          assert.instanceOf(error, TimeoutError)
          if (!(error instanceof TimeoutError)) return
          assert.strictEqual(error.limit, "idle")
          assert.strictEqual(error.provider, "oai")
          assert.strictEqual(error.partialText, "one two")
          assert.include(error.message, "oai")
          yield* server.awaitAborted(1)
        })
      )

      it.effect("an endless event stream ends with TooLarge; one endless event too", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) =>
            promptOf(req) === "events"
              ? Server.endless(res, { chunk: Server.sse([chunk("x".repeat(1000))]) })
              : Server.endless(res, { prefix: "data: " })
          )
          const p = yield* provider(server, { maxResponseBytes: 2 * 1024 * 1024, maxEventBytes: 128 * 1024 })
          const many = yield* collect(p.stream({ prompt: "events" }))
          assert.isAbove(many.text.length, 1000)
          assert.strictEqual(modelErrorOf(many.exit).reason, "TooLarge")
          assert.include(modelErrorOf(many.exit).message, "maxResponseBytes")
          const one = yield* collect(p.stream({ prompt: "event" }))
          assert.strictEqual(modelErrorOf(one.exit).reason, "TooLarge")
          assert.include(modelErrorOf(one.exit).message, "maxEventBytes")
          yield* server.awaitAborted(2)
        })
      )

      it.effect("a 200 that is not an event stream is Decode naming what is wrong, not retryable", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) => {
            switch (promptOf(req)) {
              case "json":
                return Server.json(res, 200, completion("whole answer"))
              case "broken":
                return Server.json(res, 200, '{"choices": [')
              case "sse-broken":
                return Server.text(res, 200, '{"choices": [', { "content-type": "text/event-stream" })
              default:
                return Server.chunked(res, [Server.sse([{ id: "x", object: "chat.completion.chunk" }])])
            }
          })
          const p = yield* provider(server)
          const cases: Record<string, string> = {
            json: "content-type",
            broken: "content-type",
            "sse-broken": "content-type",
            "no-choices": "choices"
          }
          for (const [prompt, field] of Object.entries(cases)) {
            const { exit, parts } = yield* collect(p.stream({ prompt }))
            const error = modelErrorOf(exit)
            assert.strictEqual(error.reason, "Decode", prompt)
            assert.strictEqual(error.field, field, prompt)
            assert.isFalse(isRetryable(error), prompt)
            assert.lengthOf(parts, 0)
          }
          const json = modelErrorOf((yield* collect(p.stream({ prompt: "json" }))).exit)
          assert.include(json.message, "application/json")
          assert.include(json.message, "text/event-stream")
          assert.include(modelErrorOf((yield* collect(p.stream({ prompt: "broken" }))).exit).message, "broken JSON")
        })
      )
    })

    describe("tools", () => {
      const tools: Model.GenerateRequest["tools"] = [
        {
          name: "get_weather",
          description: "Weather of a city",
          parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
        }
      ]

      it.effect("an empty tools list is sent as no tools (OpenAI refuses tools: [])", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.json(res, 200, {
              model: "m",
              choices: [{ index: 0, message: { role: "assistant", content: "ok" }, finish_reason: "stop" }]
            })
          )
          const p = yield* provider(server)
          assert.strictEqual((yield* p.generate({ prompt: "x", tools: [] })).text, "ok")
          const body = bodyOf((yield* server.requests)[0])
          assert.isFalse("tools" in body)
        })
      )

      it.effect(
        "without tools no tool_choice is sent (OpenAI refuses it alone); one that asks for a call is refused",
        () =>
          Effect.gen(function* () {
            const server = yield* Server.make((req, res) =>
              bodyOf(req)["stream"] === true
                ? Server.text(res, 200, Server.sse([chunk("ok", "stop"), "[DONE]"]), {
                    "content-type": "text/event-stream"
                  })
                : Server.json(res, 200, {
                    model: "m",
                    choices: [{ index: 0, message: { role: "assistant", content: "ok" }, finish_reason: "stop" }]
                  })
            )
            const p = yield* provider(server)
            for (const toolChoice of ["auto", "none"] as const) {
              assert.strictEqual((yield* p.generate({ prompt: "x", tools: [], toolChoice })).text, "ok")
              const { parts } = yield* collect(p.stream({ prompt: "x", toolChoice }))
              assert.strictEqual(parts.at(-1)?._tag, "Finish")
            }
            const requests = yield* server.requests
            assert.lengthOf(requests, 4)
            for (const request of requests) assert.isFalse("tool_choice" in bodyOf(request))
            for (const toolChoice of ["required", { name: "get_weather" }] as const) {
              const error = yield* flipModel(p.generate({ prompt: "x", toolChoice }))
              assert.strictEqual(error.reason, "InvalidRequest")
              assert.strictEqual(error.field, "toolChoice")
            }
            // As Gemini's provider and the gateway refuse it: a named tool that is not among the tools.
            const unknown = yield* flipModel(
              p.generate({ prompt: "x", tools: [{ name: "get_time" }], toolChoice: { name: "get_weather" } })
            )
            assert.strictEqual(unknown.field, "toolChoice")
            assert.include(unknown.message, "get_weather")
            assert.lengthOf(yield* server.requests, 4)
          })
      )

      it.effect("tools, tool choice, response format and tool messages map to the wire; tool_calls come back", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.json(res, 200, {
              model: "m",
              choices: [
                {
                  index: 0,
                  message: {
                    role: "assistant",
                    content: null,
                    tool_calls: [
                      {
                        id: "call_1",
                        type: "function",
                        function: { name: "get_weather", arguments: '{"city":"Paris"}' }
                      },
                      // Some servers leave out a call's arguments when it has none, or send null.
                      { id: "call_2", type: "function", function: { name: "get_time" } },
                      { id: "call_3", type: "function", function: { name: "get_time", arguments: null } }
                    ]
                  },
                  finish_reason: "tool_calls"
                }
              ]
            })
          )
          const p = yield* provider(server)
          const answer = yield* p.generate({
            messages: [
              { role: "user", content: "Weather in Paris and Rome?" },
              {
                role: "assistant",
                content: "",
                toolCalls: [{ id: "call_0", name: "get_weather", arguments: '{"city":"Rome"}' }]
              },
              { role: "tool", content: "sunny", toolCallId: "call_0" }
            ],
            tools,
            toolChoice: { name: "get_weather" },
            responseFormat: { type: "json_schema", name: "w", schema: { type: "object" }, strict: true }
          })
          assert.strictEqual(answer.finishReason, "tool_calls")
          assert.strictEqual(answer.text, "")
          assert.deepStrictEqual(answer.toolCalls, [
            { id: "call_1", name: "get_weather", arguments: '{"city":"Paris"}' },
            { id: "call_2", name: "get_time", arguments: "{}" },
            { id: "call_3", name: "get_time", arguments: "{}" }
          ])
          const body = bodyOf((yield* server.requests)[0])
          assert.deepStrictEqual(body["tools"], [{ type: "function", function: tools![0] }])
          assert.deepStrictEqual(body["tool_choice"], { type: "function", function: { name: "get_weather" } })
          assert.deepStrictEqual(body["response_format"], {
            type: "json_schema",
            json_schema: { name: "w", schema: { type: "object" }, strict: true }
          })
          assert.deepStrictEqual((body["messages"] as Array<unknown>).slice(1), [
            {
              role: "assistant",
              content: null,
              tool_calls: [
                { id: "call_0", type: "function", function: { name: "get_weather", arguments: '{"city":"Rome"}' } }
              ]
            },
            { role: "tool", tool_call_id: "call_0", content: "sunny" }
          ])
        })
      )

      it.effect(
        "an upstream's error finish beside tool calls stays error (the calls may be cut), in answers and streams",
        () =>
          Effect.gen(function* () {
            const call = { id: "call_1", type: "function", function: { name: "get_time", arguments: '{"zone":"CE' } }
            const server = yield* Server.make((req, res) =>
              bodyOf(req)["stream"] === true
                ? Server.text(
                    res,
                    200,
                    Server.sse([
                      chunk(null, null, { tool_calls: [{ index: 0, ...call }] }),
                      chunk(null, "error"),
                      "[DONE]"
                    ]),
                    { "content-type": "text/event-stream" }
                  )
                : Server.json(res, 200, {
                    model: "m",
                    choices: [
                      {
                        index: 0,
                        message: { role: "assistant", content: null, tool_calls: [call] },
                        finish_reason: "error"
                      }
                    ]
                  })
            )
            const p = yield* provider(server)
            assert.strictEqual((yield* p.generate({ prompt: "time?", tools })).finishReason, "error")
            const { parts } = yield* collect(p.stream({ prompt: "time?", tools }))
            const finish = parts.find((part) => part._tag === "Finish")
            assert.strictEqual(finish?._tag === "Finish" && finish.finishReason, "error")
          })
      )

      it.effect(
        'blank call arguments ("" as OpenAI answers a tool without parameters) go out and come back as "{}"',
        () =>
          Effect.gen(function* () {
            const server = yield* Server.make((_, res) =>
              Server.json(res, 200, {
                model: "m",
                choices: [
                  {
                    index: 0,
                    message: {
                      role: "assistant",
                      content: null,
                      tool_calls: [{ id: "call_9", type: "function", function: { name: "get_time", arguments: " \n" } }]
                    },
                    finish_reason: "tool_calls"
                  }
                ]
              })
            )
            const p = yield* provider(server)
            const answer = yield* p.generate({
              messages: [
                { role: "user", content: "time?" },
                {
                  role: "assistant",
                  content: "",
                  toolCalls: [
                    { id: "call_0", name: "get_time", arguments: "" },
                    { id: "call_1", name: "get_time", arguments: "  " }
                  ]
                },
                { role: "tool", content: "12:00", toolCallId: "call_0" },
                { role: "tool", content: "12:00", toolCallId: "call_1" }
              ],
              tools
            })
            assert.deepStrictEqual(answer.toolCalls, [{ id: "call_9", name: "get_time", arguments: "{}" }])
            const sent = bodyOf((yield* server.requests)[0])["messages"] as ReadonlyArray<Record<string, unknown>>
            // Stricter servers of the protocol (Databricks-hosted Claude) refuse "" as not JSON; OpenAI takes "{}".
            assert.deepStrictEqual(sent[1]!["tool_calls"], [
              { id: "call_0", type: "function", function: { name: "get_time", arguments: "{}" } },
              { id: "call_1", type: "function", function: { name: "get_time", arguments: "{}" } }
            ])
          })
      )

      it.effect("streamed tool-call deltas are assembled into one ToolCall part per call before the Finish", () =>
        Effect.gen(function* () {
          const call = (index: number, fn: Record<string, unknown>, id?: string) =>
            chunk(null, null, {
              tool_calls: [{ index, ...(id === undefined ? {} : { id, type: "function" }), function: fn }]
            })
          const body = Server.sse([
            chunk(null, null, { role: "assistant" }),
            call(0, { name: "get_weather", arguments: "" }, "call_a"),
            call(0, { arguments: '{"ci' }),
            // A call without arguments: an empty object, as the other providers read it.
            call(1, { name: "get_time" }, "call_b"),
            call(0, { arguments: 'ty":"Paris"}' }),
            chunk(null, "tool_calls"),
            usageChunk,
            "[DONE]"
          ])
          const server = yield* Server.make((_, res) =>
            Server.chunked(res, Server.splitBytes(body, 11), { pauseMs: 0 })
          )
          const p = yield* provider(server)
          const { exit, parts } = yield* collect(p.stream({ prompt: "hi", tools }))
          assert.isTrue(Exit.isSuccess(exit))
          assert.deepStrictEqual(
            parts.map((x) => x._tag),
            ["ToolCall", "ToolCall", "Finish"]
          )
          assert.deepStrictEqual(parts.slice(0, 2), [
            { _tag: "ToolCall", call: { id: "call_a", name: "get_weather", arguments: '{"city":"Paris"}' } },
            { _tag: "ToolCall", call: { id: "call_b", name: "get_time", arguments: "{}" } }
          ])
          assert.strictEqual(parts[2]?._tag === "Finish" && parts[2].finishReason, "tool_calls")
        })
      )
      it.effect("parallel calls streamed all at index 0 (Ollama, SGLang) are told apart by their ids", () =>
        Effect.gen(function* () {
          const call = (fn: Record<string, unknown>, id?: string) =>
            chunk(null, null, {
              tool_calls: [{ index: 0, ...(id === undefined ? {} : { id, type: "function" }), function: fn }]
            })
          const body = Server.sse([
            call({ name: "get_weather", arguments: '{"city":' }, "call_a"),
            call({ arguments: '"Paris"}' }),
            call({ name: "get_time", arguments: '{"zone":' }, "call_b"),
            call({ arguments: '"CET"}' }),
            chunk(null, "tool_calls"),
            "[DONE]"
          ])
          const server = yield* Server.make((_, res) =>
            Server.chunked(res, Server.splitBytes(body, 13), { pauseMs: 0 })
          )
          const p = yield* provider(server)
          const { exit, parts } = yield* collect(p.stream({ prompt: "hi", tools }))
          assert.isTrue(Exit.isSuccess(exit))
          assert.deepStrictEqual(parts.slice(0, 2), [
            { _tag: "ToolCall", call: { id: "call_a", name: "get_weather", arguments: '{"city":"Paris"}' } },
            { _tag: "ToolCall", call: { id: "call_b", name: "get_time", arguments: '{"zone":"CET"}' } }
          ])
        })
      )
    })

    describe("embed", () => {
      const vectors = [
        [0.5, -2],
        [1.25, 3],
        [0, 0.75]
      ]
      const base64 = (values: ReadonlyArray<number>) => Buffer.from(new Float32Array(values).buffer).toString("base64")

      it.effect("orders vectors by index and asks for floats by default; base64 only when asked, and decoded", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) => {
            const asBase64 = bodyOf(req)["encoding_format"] === "base64"
            Server.json(res, 200, {
              object: "list",
              data: [2, 0, 1].map((index) => ({
                object: "embedding",
                index,
                embedding: asBase64 ? base64(vectors[index]!) : vectors[index]
              })),
              model: "text-embedding-3-small",
              usage: { prompt_tokens: 6, total_tokens: 6 }
            })
          })
          const floats = yield* provider(server)
          const answer = yield* floats.embed({ texts: ["a", "b", "c"] })
          assert.deepStrictEqual(answer.vectors, vectors)
          assert.deepStrictEqual(answer.usage, { inputTokens: 6, outputTokens: 0, totalTokens: 6 })
          const b64 = yield* provider(server, { embeddingEncoding: "base64" })
          assert.deepStrictEqual((yield* b64.embed({ texts: ["a", "b", "c"] })).vectors, vectors)
          const [first, second] = yield* server.requests
          assert.strictEqual(first?.path, "/v1/embeddings")
          assert.deepStrictEqual(first?.json, {
            model: "text-embedding-3-small",
            input: ["a", "b", "c"],
            encoding_format: "float"
          })
          assert.strictEqual(bodyOf(second)["encoding_format"], "base64")
        })
      )

      it.effect(
        "many texts go in batches of 256, each answer well within maxResponseBytes; vectors in input order, usage summed",
        () =>
          Effect.gen(function* () {
            // OpenAI pretty-prints ~28 bytes a float: 2048 texts of 1536 dimensions in one answer are ~88 MB.
            const server = yield* Server.make((req, res) => {
              const input = bodyOf(req)["input"] as ReadonlyArray<string>
              Server.json(res, 200, {
                data: input.map((_, i) => ({ index: i, embedding: [Number(input[i]), 1] })).reverse(),
                usage: { prompt_tokens: input.length, total_tokens: input.length }
              })
            })
            const p = yield* provider(server)
            const texts = Array.from({ length: 600 }, (_, i) => String(i))
            const answer = yield* p.embed({ texts: texts as [string, ...Array<string>] })
            assert.deepStrictEqual(
              answer.vectors,
              texts.map((t) => [Number(t), 1])
            )
            assert.deepStrictEqual(answer.usage, { inputTokens: 600, outputTokens: 0, totalTokens: 600 })
            const sizes = (yield* server.requests).map((r) => (bodyOf(r)["input"] as ReadonlyArray<string>).length)
            assert.deepStrictEqual(sizes, [256, 256, 88])
          })
      )

      it.effect(
        "vectors of a later batch shorter than the first's are named by their index in that answer and batch",
        () =>
          Effect.gen(function* () {
            const server = yield* Server.make((req, res) => {
              const input = bodyOf(req)["input"] as ReadonlyArray<string>
              Server.json(res, 200, {
                // Each answer is even; the second's vectors are shorter than the first's.
                data: input.map((t, i) => ({ index: i, embedding: Number(t) >= 256 ? [1] : [1, 2] })),
                usage: { prompt_tokens: input.length, total_tokens: input.length }
              })
            })
            const p = yield* provider(server)
            const texts = Array.from({ length: 600 }, (_, i) => String(i))
            const error = yield* flipModel(p.embed({ texts: texts as [string, ...Array<string>] }))
            assert.deepStrictEqual([error.reason, error.field], ["Decode", "data[0]"])
            assert.include(error.message, "batch 2")
            assert.include(error.message, "input text 256")
          })
      )

      it.effect("embeddings usage with total_tokens only counts it as input; a bogus count is no usage", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) =>
            Server.json(res, 200, {
              data: [{ index: 0, embedding: [1, 2] }],
              usage: bodyOf(req)["model"] === "total" ? { total_tokens: 6 } : { prompt_tokens: -1 }
            })
          )
          const p = yield* provider(server)
          const total = yield* p.embed({ texts: ["a"], model: "total" })
          assert.deepStrictEqual(total.usage, { inputTokens: 6, outputTokens: 0, totalTokens: 6 })
          const bogus = yield* p.embed({ texts: ["a"], model: "bogus" })
          assert.isUndefined(bogus.usage)
        })
      )

      it.effect("embeddingDimensions is sent as dimensions, and vectors of another length are Decode naming it", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) => {
            const length = bodyOf(req)["model"] === "ignores" ? 3 : Number(bodyOf(req)["dimensions"] ?? 4)
            Server.json(res, 200, {
              data: [0, 1].map((index) => ({ index, embedding: Array.from({ length }, (_, i) => index + i) }))
            })
          })
          const p = yield* provider(server, { embeddingDimensions: 2 })
          const answer = yield* p.embed({ texts: ["a", "b"] })
          assert.deepStrictEqual(answer.vectors, [
            [0, 1],
            [1, 2]
          ])
          assert.deepStrictEqual((yield* server.requests)[0]?.json, {
            model: "text-embedding-3-small",
            input: ["a", "b"],
            encoding_format: "float",
            dimensions: 2
          })
          // A server (or model) that ignores `dimensions` answers full-length vectors.
          const error = yield* flipModel(p.embed({ texts: ["a", "b"], model: "ignores" }))
          assert.strictEqual(error.reason, "Decode")
          assert.strictEqual(error.field, "data[0].embedding")
          assert.include(error.message, "embeddingDimensions")
          // Without the option, no dimensions are asked for and none are checked.
          const plain = yield* provider(server)
          assert.lengthOf((yield* plain.embed({ texts: ["a", "b"] })).vectors[0]!, 4)
          assert.notProperty((yield* server.requests)[2]?.json, "dimensions")
        })
      )

      it.effect(
        "a missing, duplicated or out-of-range index, bad base64, or vectors of different lengths is Decode",
        () =>
          Effect.gen(function* () {
            const answers: Record<string, unknown> = {
              dup: [
                { index: 0, embedding: [1] },
                { index: 0, embedding: [2] }
              ],
              range: [
                { index: 0, embedding: [1] },
                { index: 5, embedding: [2] }
              ],
              few: [{ index: 0, embedding: [1] }],
              b64: [
                { index: 0, embedding: "AAA" },
                { index: 1, embedding: [2] }
              ],
              // Float32 NaN and Infinity travel in base64; a vector holding one compares as nothing.
              nan: [
                { index: 0, embedding: base64([Number.NaN, 1]) },
                { index: 1, embedding: base64([2, Number.POSITIVE_INFINITY]) }
              ],
              // Vectors are compared dimension by dimension: all of one length, none empty.
              uneven: [
                { index: 0, embedding: [1, 1] },
                { index: 1, embedding: [2, 2, 2] }
              ],
              empty: [
                { index: 0, embedding: [] },
                { index: 1, embedding: [] }
              ]
            }
            const server = yield* Server.make((req, res) =>
              Server.json(res, 200, { data: answers[String(bodyOf(req)["model"])] })
            )
            const p = yield* provider(server)
            for (const model of Object.keys(answers)) {
              const error = yield* flipModel(p.embed({ texts: ["a", "b"], model }))
              assert.strictEqual(error.reason, "Decode", model)
              assert.match(error.field ?? "", /^data/, model)
            }
          })
      )
    })

    describe("options", () => {
      it.effect("an option whose getter throws is an OptionError naming it, not a defect", () =>
        Effect.gen(function* () {
          const options = Object.defineProperty({ model: "m" }, "apiKey", {
            enumerable: true,
            get: () => {
              throw new Error("no apiKey")
            }
          }) as OpenAiCompat.Options
          const error = yield* Effect.flip(Layer.build(OpenAiCompat.layer(options)))
          assert.deepStrictEqual([error._tag, (error as { readonly path?: string }).path], ["OptionError", "apiKey"])
        })
      )

      it.effect("a header whose getter throws is an OptionError naming the header, not a defect", () =>
        Effect.gen(function* () {
          const headers = Object.defineProperty({ "x-a": "b" }, "x-key", {
            enumerable: true,
            get: () => {
              throw new Error("no key")
            }
          }) as Record<string, string>
          const error = yield* Effect.flip(Layer.build(OpenAiCompat.layer({ headers })))
          assert.deepStrictEqual(
            [error._tag, (error as { readonly path?: string }).path],
            ["OptionError", 'headers["x-key"]']
          )
        })
      )

      it.effect(
        "a transformClient that throws or answers no HttpClient is an OptionError naming it, not a defect",
        () =>
          Effect.gen(function* () {
            const transforms: ReadonlyArray<(client: HttpClient.HttpClient) => HttpClient.HttpClient> = [
              () => {
                throw new Error("bad middleware")
              },
              () => undefined as unknown as HttpClient.HttpClient
            ]
            for (const transformClient of transforms) {
              const error = yield* Effect.flip(Layer.build(OpenAiCompat.layer({ transformClient })))
              assert.deepStrictEqual(
                [error._tag, (error as { readonly path?: string }).path],
                ["OptionError", "transformClient"]
              )
            }
          })
      )

      it.effect("bad options fail the layer with an OptionError naming the field", () =>
        Effect.gen(function* () {
          const cases: ReadonlyArray<readonly [string, OpenAiCompat.Options]> = [
            ["timeout", { timeout: Number.NaN }],
            ["streamIdleTimeout", { streamIdleTimeout: -5 }],
            ["maxResponseBytes", { maxResponseBytes: 0 }],
            ["maxEventBytes", { maxEventBytes: 2.5 }],
            ["baseUrl", { baseUrl: "localhost:8080" }],
            ["embeddingEncoding", { embeddingEncoding: "binary" as "float" }],
            ["embeddingDimensions", { embeddingDimensions: 0 }],
            ["embeddingDimensions", { embeddingDimensions: -256 }],
            ["embeddingDimensions", { embeddingDimensions: 65_537 }],
            ["embeddingDimensions", { embeddingDimensions: 25.5 }],
            ["embeddingDimensions", { embeddingDimensions: Number.NaN }],
            ["embeddingDimensions", { embeddingDimensions: "256" as never }],
            ["embeddingDimensions", { embeddingDimensions: null as never }],
            ["apiKey", { apiKey: KEY as unknown as Redacted.Redacted<string> }],
            ["name", { name: "" }],
            // A value JSON cannot write was quoted with JSON.stringify in the message, which threw.
            ["streamUsage", { streamUsage: 1n as never }],
            ["embeddingEncoding", { embeddingEncoding: 1n as never }],
            // A header that undici would refuse at every request (or that would inject another).
            ['headers["x-a"]', { headers: { "x-a": "b\r\nInjected: 1" } }],
            ['headers["bad name"]', { headers: { "bad name": "v" } }],
            ['headers["x-n"]', { headers: { "x-n": 5 as unknown as string } }],
            // Header names are not case-sensitive: one of the two was dropped, unsaid.
            ['headers["x-team"]', { headers: { "X-Team": "a", "x-team": "b" } }],
            // A header an option sets: one of the two was dropped, unsaid.
            ['headers["Authorization"]', { apiKey: Redacted.make(KEY), headers: { Authorization: "Bearer other" } }],
            ['headers["openai-project"]', { project: "p1", headers: { "openai-project": "p2" } }],
            // Headers the provider sets on each request, from what it sends and reads: the entry was replaced, unsaid.
            ['headers["Accept"]', { headers: { Accept: "application/json" } }],
            ['headers["content-type"]', { headers: { "content-type": "application/json; charset=utf-8" } }],
            ['headers["Content-Length"]', { headers: { "Content-Length": "5" } }],
            ["organization", { organization: "org\n" }],
            // Not a string: it was sent as a header anyway ("5", "null") instead of being refused.
            ["organization", { organization: 5 as never }],
            ["project", { project: null as never }],
            // OPENAI_ORG_ID / OPENAI_PROJECT_ID set but empty: sent as empty headers on every call.
            ["organization", { organization: "" }],
            ["organization", { organization: "  " }],
            ["project", { project: "" }],
            ["project", { project: "\t" }],
            ["apiKey", { apiKey: Redacted.make(`${KEY}\n`) }],
            // OPENAI_API_KEY set but empty: it was sent as "Bearer ", which OpenAI refuses at every call.
            ["apiKey", { apiKey: Redacted.make("") }],
            ["apiKey", { apiKey: Redacted.make("  ") }],
            // null is a wrong value, not the default.
            ["timeout", { timeout: null as never }],
            ["maxResponseBytes", { maxResponseBytes: null as never }],
            ["baseUrl", { baseUrl: null as never }],
            ["model", { model: null as never }],
            ["maxTokensField", { maxTokensField: null as never }],
            ["streamUsage", { streamUsage: null as never }],
            ["streamUsage", { streamUsage: "no" as never }],
            // Every API path would land inside a query or a fragment.
            ["baseUrl", { baseUrl: "http://127.0.0.1:8080/v1?api-version=2024" }],
            ["baseUrl", { baseUrl: "http://127.0.0.1:8080/v1#x" }],
            // A misspelt key is refused, not left at its default; so are options that are not an object.
            ["embedingModel", { embedingModel: "text-embedding-3-large" } as never],
            ["options", null as never],
            ["options", "gpt-4o" as never]
          ]
          for (const [path, options] of cases) {
            const error = yield* Effect.flip(Layer.build(OpenAiCompat.layer(options)))
            assert.strictEqual(error._tag, "OptionError", path)
            assert.strictEqual("path" in error ? error.path : undefined, path)
            assert.notInclude(error.message, KEY)
          }
        })
      )

      it.effect("layerConfig reads OPENAI_*; with explicit options no key is picked up", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) => Server.json(res, 200, completion("ok")))
          const env = ConfigProvider.layer(
            ConfigProvider.fromEnv({
              env: { OPENAI_API_KEY: KEY, OPENAI_BASE_URL: `${server.url}/v1`, OPENAI_MODEL: "from-env" }
            })
          )
          const call = Effect.gen(function* () {
            const p = yield* Model.ModelProvider
            return yield* p.generate({ prompt: "x" })
          })
          yield* call.pipe(Effect.provide(OpenAiCompat.layerConfig().pipe(Layer.provide(env))))
          yield* call.pipe(
            Effect.provide(
              OpenAiCompat.layerConfig({ baseUrl: Config.succeed(`${server.url}/v1`) }).pipe(Layer.provide(env))
            )
          )
          const [fromEnv, explicit] = yield* server.requests
          assert.strictEqual(fromEnv?.headers.authorization, `Bearer ${KEY}`)
          assert.strictEqual(bodyOf(fromEnv)["model"], "from-env")
          assert.isUndefined(explicit?.headers.authorization)
          assert.strictEqual(bodyOf(explicit)["model"], "gpt-4o-mini")
        })
      )

      it.effect("transformClient adds the user's middleware", () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) => Server.json(res, 200, completion("ok")))
          const p = yield* provider(server, {
            transformClient: HttpClient.mapRequest((request) => ({
              ...request,
              headers: { ...request.headers, "x-mine": "1" }
            }))
          })
          yield* p.generate({ prompt: "x" })
          assert.strictEqual((yield* server.requests)[0]?.headers["x-mine"], "1")
        })
      )
    })
  })

describe("OpenAiCompat interruption (live)", () => {
  it.live("a call interrupted by the caller's timeout closes its connection", () =>
    Effect.gen(function* () {
      const server = yield* Server.make(Server.hang)
      const p = yield* provider(server)
      const result = yield* Effect.result(Effect.timeout(p.generate({ prompt: "hi" }), "150 millis"))
      assert.isTrue(result._tag === "Failure" && Cause.isTimeoutError(result.failure))
      yield* server.awaitAborted(1).pipe(Effect.timeout("5 seconds"))
    }).pipe(Effect.provide(NodeHttpClient.layerUndici))
  )

  it.live("a consumer that takes 2 deltas and leaves closes the upstream connection", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) =>
        Server.chunked(res, [Server.sse([chunk("a"), chunk("b"), chunk("c")])], { end: "hang" })
      )
      const p = yield* provider(server)
      const taken = yield* Stream.runCollect(Stream.take(p.stream({ prompt: "hi" }), 2))
      assert.lengthOf(taken, 2)
      yield* server.awaitAborted(1).pipe(Effect.timeout("5 seconds"))
    }).pipe(Effect.provide(NodeHttpClient.layerUndici))
  )

  it.live("over FetchHttpClient: streams split awkwardly, a cut is Transport, a hang is closed on timeout", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((req, res) => {
        const mode = promptOf(req)
        if (mode === "ok") {
          return Server.chunked(
            res,
            Server.splitAwkward(Server.sse([chunk("Grüß "), chunk("🌍"), chunk(null, "stop"), "[DONE]"]))
          )
        }
        if (mode === "cut") return Server.chunked(res, [Server.sse([chunk("half")])], { end: "destroy" })
        return Server.hang(req, res)
      })
      const p = yield* provider(server)
      const ok = yield* collect(p.stream({ prompt: "ok" }))
      assert.isTrue(Exit.isSuccess(ok.exit))
      assert.strictEqual(ok.text, "Grüß 🌍")
      const cut = yield* collect(p.stream({ prompt: "cut" }))
      assert.strictEqual(cut.text, "half")
      assert.strictEqual(modelErrorOf(cut.exit).reason, "Transport")
      const hung = yield* Effect.result(Effect.timeout(p.generate({ prompt: "hang" }), "150 millis"))
      assert.strictEqual(hung._tag, "Failure")
      yield* server.awaitAborted(1).pipe(Effect.timeout("5 seconds"))
    }).pipe(Effect.provide(FetchHttpClient.layer))
  )
})

describe("OpenAiCompat over fetch with a key in headers", () => {
  it.live("a redirect is not followed: a key in a header of the user's own never reaches the other origin", () =>
    Effect.gen(function* () {
      const elsewhere = yield* Server.make((_, res) => Server.json(res, 200, completion("from elsewhere")))
      const redirecting = yield* Server.make((req, res) => {
        res.writeHead(307, { location: `${elsewhere.url}${req.path}` })
        res.end()
      })
      // As Azure OpenAI takes its key.
      const p = yield* provider(redirecting, { apiKey: undefined, headers: { "api-key": KEY } })
      const error = yield* Effect.flip(p.generate({ prompt: "hi" }))
      assert.strictEqual(error._tag, "ModelError")
      assert.strictEqual((yield* elsewhere.requests).length, 0)
    }).pipe(Effect.provide(FetchHttpClient.layer))
  )
})

describe("OpenAiCompat finish reasons", () => {
  it("an upstream's own error finish (OpenRouter's finish_reason: error) is an error finish, not unknown", () => {
    assert.strictEqual(OpenAiCompat.finishReasonOf("error"), "error")
    assert.strictEqual(OpenAiCompat.finishReasonOf("something-new"), "unknown")
  })

  it("Mistral's model_length (the model's context filled) is length, as max_tokens reached is", () => {
    assert.strictEqual(OpenAiCompat.finishReasonOf("model_length"), "length")
  })
})

layer(NodeHttpClient.layerUndici)("OpenAiCompat requestLimits", (it) => {
  it.effect("requestLimits bound requests before any call, and are checked, misspelt keys refused", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((req, res) => {
        const input = bodyOf(req)["input"] as ReadonlyArray<string> | undefined
        return input === undefined
          ? Server.json(res, 200, completion("ok"))
          : Server.json(res, 200, { data: input.map((_, index) => ({ index, embedding: [1, 2] })) })
      })
      const p = yield* provider(server, { requestLimits: { maxInputChars: 10, maxMessages: 2, maxEmbedTexts: 3 } })
      const long = yield* flipModel(p.generate({ prompt: "x".repeat(11) }))
      assert.deepStrictEqual([long.reason, long.field], ["InvalidRequest", "prompt"])
      const many = yield* flipModel(
        p.generate({
          messages: [
            { role: "user", content: "a" },
            { role: "assistant", content: "b" },
            { role: "user", content: "c" }
          ]
        })
      )
      assert.deepStrictEqual([many.reason, many.field], ["InvalidRequest", "messages"])
      const streamed = yield* collect(p.stream({ prompt: "x".repeat(11) }))
      assert.strictEqual(modelErrorOf(streamed.exit).field, "prompt")
      const texts = yield* flipModel(p.embed({ texts: ["a", "b", "c", "d"] }))
      assert.deepStrictEqual([texts.reason, texts.field], ["InvalidRequest", "texts"])
      assert.lengthOf(yield* server.requests, 0)
      assert.strictEqual((yield* p.generate({ prompt: "x".repeat(10) })).text, "ok")
      assert.lengthOf((yield* p.embed({ texts: ["a", "b", "c"] })).vectors, 3)
      // Raised above the default: a prompt the default would refuse is sent.
      const raised = yield* provider(server, { requestLimits: { maxInputChars: 2_000_000 } })
      assert.strictEqual((yield* raised.generate({ prompt: "x".repeat(1_500_000) })).text, "ok")
      const cases: ReadonlyArray<readonly [string, OpenAiCompat.Options]> = [
        ["requestLimits.maxMessages", { requestLimits: { maxMessages: 0 } }],
        ["requestLimits.maxInputChars", { requestLimits: { maxInputChars: Number.NaN } }],
        ["requestLimits.maxEmbedTexts", { requestLimits: { maxEmbedTexts: 2.5 } }],
        ["requestLimits.maxMessages", { requestLimits: { maxMessages: -1 } }],
        ["requestLimits.maxInputChar", { requestLimits: { maxInputChar: 5 } as never }],
        ["requestLimits", { requestLimits: null as never }]
      ]
      for (const [path, options] of cases) {
        const error = yield* Effect.flip(Layer.build(OpenAiCompat.layer(options)))
        assert.deepStrictEqual([error._tag, "path" in error ? error.path : undefined], ["OptionError", path])
      }
    })
  )
})

layer(NodeHttpClient.layerUndici)("OpenAiCompat choices and tool-call indices", (it) => {
  it.effect("generate reads the choice whose index is 0, wherever it sits; without one it is Decode on choices", () =>
    Effect.gen(function* () {
      const answers: Record<string, unknown> = {
        // A server answering several choices, choice 0 not first.
        several: [
          { index: 1, message: { role: "assistant", content: "second" }, finish_reason: "length" },
          { index: 0, message: { role: "assistant", content: "first" }, finish_reason: "stop" }
        ],
        // Without indices, position is the index.
        unnumbered: [{ message: { role: "assistant", content: "only" }, finish_reason: "stop" }],
        none: [
          { index: 1, message: { role: "assistant", content: "second" }, finish_reason: "stop" },
          { index: 2, message: { role: "assistant", content: "third" }, finish_reason: "stop" }
        ]
      }
      const server = yield* Server.make((req, res) =>
        Server.json(res, 200, completion("unused", { choices: answers[String(bodyOf(req)["model"])] }))
      )
      const p = yield* provider(server)
      const several = yield* p.generate({ prompt: "x", model: "several" })
      assert.deepStrictEqual([several.text, several.finishReason], ["first", "stop"])
      assert.strictEqual((yield* p.generate({ prompt: "x", model: "unnumbered" })).text, "only")
      const none = yield* flipModel(p.generate({ prompt: "x", model: "none" }))
      assert.deepStrictEqual([none.reason, none.field], ["Decode", "choices"])
    })
  )

  it.effect("a stream whose choices are never numbered 0 is Decode on choices, not an empty answer", () =>
    Effect.gen(function* () {
      const other = (content: string | null, finish: string | null) => ({
        model: "m",
        choices: [{ index: 1, delta: content === null ? {} : { content }, finish_reason: finish }]
      })
      const server = yield* Server.make((req, res) =>
        Server.chunked(
          res,
          [
            Server.sse(
              bodyOf(req)["model"] === "mixed"
                ? [other("skipped", null), chunk("kept"), other(null, "stop"), chunk(null, "stop"), "[DONE]"]
                : [other("second", null), other(null, "stop"), usageChunk, "[DONE]"]
            )
          ],
          { pauseMs: 0 }
        )
      )
      const p = yield* provider(server)
      const { exit, parts } = yield* collect(p.stream({ prompt: "x", model: "none" }))
      const error = modelErrorOf(exit)
      assert.deepStrictEqual([error.reason, error.field], ["Decode", "choices"])
      assert.notInclude(
        parts.map((x) => x._tag),
        "Finish"
      )
      // Choice 0 among others: its text is the answer, the others left out.
      const mixed = yield* collect(p.stream({ prompt: "x", model: "mixed" }))
      assert.isTrue(Exit.isSuccess(mixed.exit))
      assert.strictEqual(mixed.text, "kept")
    })
  )

  it.effect("an empty finish_reason is none: a stream cut after it is Transport, not a finished answer", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) =>
        Server.chunked(res, [Server.sse([chunk("half", ""), chunk(" an answer", "")])], { end: "end" })
      )
      const p = yield* provider(server)
      const { exit, text } = yield* collect(p.stream({ prompt: "x" }))
      assert.strictEqual(text, "half an answer")
      assert.strictEqual(modelErrorOf(exit).reason, "Transport")
    })
  )

  it.effect("a tool call with an empty name is Decode naming it; an empty id is no id, as in a stream", () =>
    Effect.gen(function* () {
      const calls: Record<string, unknown> = {
        // A stream refused a call without a name; the whole answer handed it on as a call of tool "".
        unnamed: [
          { id: "call_1", type: "function", function: { name: "get_weather", arguments: "{}" } },
          { id: "call_2", type: "function", function: { name: "", arguments: "{}" } }
        ],
        // Two calls of id "" could not be told apart when their results come back.
        unnumbered: [
          { id: "", type: "function", function: { name: "a", arguments: "{}" } },
          { id: "", type: "function", function: { name: "b", arguments: "{}" } }
        ]
      }
      const server = yield* Server.make((req, res) =>
        Server.json(res, 200, {
          model: "m",
          choices: [
            {
              index: 0,
              message: { role: "assistant", content: null, tool_calls: calls[String(bodyOf(req)["model"])] },
              finish_reason: "tool_calls"
            }
          ]
        })
      )
      const p = yield* provider(server)
      const error = yield* flipModel(p.generate({ prompt: "x", model: "unnamed" }))
      assert.deepStrictEqual([error.reason, error.field], ["Decode", "choices[0].message.tool_calls[1].function.name"])
      const answer = yield* p.generate({ prompt: "x", model: "unnumbered" })
      assert.deepStrictEqual(
        answer.toolCalls?.map((call) => call.id),
        ["call_0", "call_1"]
      )
    })
  )

  it.effect(
    "more than 128 choices, in an answer or a chunk, are Decode naming choices, counted before any is read",
    () =>
      Effect.gen(function* () {
        const choice = (index: number) => ({
          index,
          message: { role: "assistant", content: "hi" },
          finish_reason: "stop"
        })
        const choices = (model: string) => {
          if (model === "huge") {
            // Entries past any answer's, one that does not decode among them: the count is refused before they are read.
            const all: Array<unknown> = Array.from({ length: 100_000 }, (_, i) => choice(i))
            all[50_000] = { index: "x" }
            return all
          }
          return Array.from({ length: model === "bound" ? 128 : 129 }, (_, i) => choice(i))
        }
        const server = yield* Server.make((req, res) => {
          const model = String(bodyOf(req)["model"])
          if (bodyOf(req)["stream"] === true) {
            const deltas = choices(model).map((c) => ({
              index: (c as { index: number }).index,
              delta: { content: "hi" }
            }))
            return Server.text(
              res,
              200,
              Server.sse([
                { model: "m", choices: deltas },
                { model: "m", choices: [{ index: 0, delta: {}, finish_reason: "stop" }] },
                "[DONE]"
              ]),
              { "content-type": "text/event-stream" }
            )
          }
          return Server.json(res, 200, { model: "m", choices: choices(model) })
        })
        const p = yield* provider(server)
        assert.strictEqual((yield* p.generate({ prompt: "x", model: "bound" })).text, "hi")
        for (const model of ["over", "huge"]) {
          const error = yield* flipModel(p.generate({ prompt: "x", model }))
          assert.deepStrictEqual([error.reason, error.field], ["Decode", "choices"], model)
        }
        assert.strictEqual((yield* collect(p.stream({ prompt: "x", model: "bound" }))).text, "hi")
        for (const model of ["over", "huge"]) {
          const error = modelErrorOf((yield* collect(p.stream({ prompt: "x", model }))).exit)
          assert.deepStrictEqual([error.reason, error.field], ["Decode", "choices"], model)
        }
      })
  )

  it.effect("an id made up for a call that came without one is none of the answer's own ids", () =>
    Effect.gen(function* () {
      const fn = (name: string) => ({ type: "function", function: { name, arguments: "{}" } })
      const server = yield* Server.make((req, res) =>
        bodyOf(req)["stream"] === true
          ? Server.text(
              res,
              200,
              Server.sse([
                { model: "m", choices: [{ index: 0, delta: { tool_calls: [{ index: 0, ...fn("a") }] } }] },
                {
                  model: "m",
                  choices: [{ index: 0, delta: { tool_calls: [{ index: 1, id: "call_0", ...fn("b") }] } }]
                },
                { model: "m", choices: [{ index: 0, delta: {}, finish_reason: "tool_calls" }] },
                "[DONE]"
              ]),
              { "content-type": "text/event-stream" }
            )
          : Server.json(res, 200, {
              model: "m",
              choices: [
                {
                  index: 0,
                  message: {
                    role: "assistant",
                    content: null,
                    tool_calls: [
                      { id: "", ...fn("a") },
                      { id: "call_0", ...fn("b") }
                    ]
                  },
                  finish_reason: "tool_calls"
                }
              ]
            })
      )
      const p = yield* provider(server)
      const generated = (yield* p.generate({ prompt: "x" })).toolCalls ?? []
      const streamed = (yield* collect(p.stream({ prompt: "x" }))).parts.flatMap((part) =>
        part._tag === "ToolCall" ? [part.call] : []
      )
      for (const calls of [generated, streamed]) {
        assert.deepStrictEqual(
          calls.map((call) => call.name),
          ["a", "b"]
        )
        // The server's own id stays; the one made up is another.
        assert.strictEqual(calls[1]!.id, "call_0")
        assert.notStrictEqual(calls[0]!.id, "call_0")
        assert.match(calls[0]!.id, /^call_\d+$/)
      }
    })
  )

  it.effect("tool calls of one id are Decode naming the second, in an answer and in a stream", () =>
    Effect.gen(function* () {
      const call = (id: string, name: string) => ({ id, type: "function", function: { name, arguments: "{}" } })
      const server = yield* Server.make((req, res) =>
        bodyOf(req)["stream"] === true
          ? Server.text(
              res,
              200,
              Server.sse([
                {
                  model: "m",
                  choices: [{ index: 0, delta: { role: "assistant", tool_calls: [{ index: 0, ...call("c1", "a") }] } }]
                },
                { model: "m", choices: [{ index: 0, delta: { tool_calls: [{ index: 1, ...call("c2", "b") }] } }] },
                { model: "m", choices: [{ index: 0, delta: { tool_calls: [{ index: 2, ...call("c1", "c") }] } }] },
                { model: "m", choices: [{ index: 0, delta: {}, finish_reason: "tool_calls" }] },
                "[DONE]"
              ]),
              { "content-type": "text/event-stream" }
            )
          : Server.json(res, 200, {
              model: "m",
              choices: [
                {
                  index: 0,
                  message: {
                    role: "assistant",
                    content: null,
                    tool_calls: [call("c1", "a"), call("c2", "b"), call("c1", "c")]
                  },
                  finish_reason: "tool_calls"
                }
              ]
            })
      )
      const p = yield* provider(server)
      // Their results would answer both (a tool message names its call by id), and OpenAI refuses the next turn.
      const error = yield* flipModel(p.generate({ prompt: "x" }))
      assert.deepStrictEqual([error.reason, error.field], ["Decode", "choices[0].message.tool_calls[2].id"])
      const streamed = modelErrorOf((yield* collect(p.stream({ prompt: "x" }))).exit)
      assert.deepStrictEqual([streamed.reason, streamed.field], ["Decode", "tool_calls[2].id"])
    })
  )

  it.effect(
    "tool-call arguments sent as the object itself (llama.cpp's --tool-args-object, TGI) are its JSON text",
    () =>
      Effect.gen(function* () {
        const args = { city: "Paris", days: [1, 2] }
        const server = yield* Server.make((req, res) =>
          bodyOf(req)["stream"] === true
            ? Server.text(
                res,
                200,
                Server.sse([
                  chunk(null, null, {
                    tool_calls: [{ index: 0, id: "call_a", type: "function", function: { name: "get_weather" } }]
                  }),
                  chunk(null, null, { tool_calls: [{ index: 0, function: { arguments: args } }] }),
                  chunk(null, "tool_calls"),
                  "[DONE]"
                ]),
                { "content-type": "text/event-stream" }
              )
            : Server.json(
                res,
                200,
                // Written by hand: JSON.stringify would write 1e400 (Infinity) as null.
                `{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_a","type":"function","function":{"name":"get_weather","arguments":${
                  bodyOf(req)["model"] === "huge" ? '{"city":"Paris","n":1e400}' : JSON.stringify(args)
                }}}]},"finish_reason":"tool_calls"}]}`
              )
        )
        const p = yield* provider(server)
        const expected = { id: "call_a", name: "get_weather", arguments: '{"city":"Paris","days":[1,2]}' }
        assert.deepStrictEqual((yield* p.generate({ prompt: "x" })).toolCalls, [expected])
        const { parts } = yield* collect(p.stream({ prompt: "x" }))
        assert.deepStrictEqual(parts[0], { _tag: "ToolCall", call: expected })
        // A number JSON cannot write back is no argument: Decode naming it, never a silent null.
        const error = yield* flipModel(p.generate({ prompt: "x", model: "huge" }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "choices[0].message.tool_calls[0].function.arguments.n")
      })
  )

  it.effect('an answer naming its model "" is told as the model asked for, in generate, stream and embed', () =>
    Effect.gen(function* () {
      const server = yield* Server.make((req, res) => {
        if (req.path.endsWith("/embeddings")) {
          return Server.json(res, 200, { data: [{ index: 0, embedding: [1, 0] }], model: "" })
        }
        if (bodyOf(req)["stream"] === true) {
          const unnamed = (c: Record<string, unknown>) => ({ ...c, model: "" })
          return Server.text(
            res,
            200,
            Server.sse([unnamed(chunk("hi")), unnamed(chunk(null, "stop")), unnamed(usageChunk), "[DONE]"]),
            { "content-type": "text/event-stream" }
          )
        }
        return Server.json(res, 200, completion("Paris.", { model: "" }))
      })
      const p = yield* provider(server)
      assert.strictEqual((yield* p.generate({ prompt: "x", model: "asked" })).model, "asked")
      const parts = yield* Stream.runCollect(p.stream({ prompt: "x", model: "asked" }))
      const finish = parts.find((part) => part._tag === "Finish")
      assert.strictEqual(finish?._tag === "Finish" ? finish.model : undefined, "asked")
      assert.strictEqual((yield* p.embed({ texts: ["a"], model: "asked-e" })).model, "asked-e")
    })
  )

  it.effect("an answer with more tool calls than a stream may carry (1024) is Decode naming them, counted first", () =>
    Effect.gen(function* () {
      const calls = (n: number, bad = -1) =>
        Array.from({ length: n }, (_, i) => ({ function: { name: i === bad ? "" : "f" } }))
      const server = yield* Server.make((req, res) => {
        const model = String(bodyOf(req)["model"])
        // A call past the first 1,024 that does not decode: the count is refused before any call is read.
        const toolCalls = model === "bound" ? calls(1024) : model === "over" ? calls(1025) : calls(100_000, 5_000)
        return Server.json(res, 200, {
          model,
          choices: [{ index: 0, message: { role: "assistant", tool_calls: toolCalls }, finish_reason: "tool_calls" }]
        })
      })
      const p = yield* provider(server)
      assert.lengthOf((yield* p.generate({ prompt: "x", model: "bound" })).toolCalls ?? [], 1024)
      for (const model of ["over", "huge"]) {
        const error = yield* flipModel(p.generate({ prompt: "x", model }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "choices[0].message.tool_calls"], model)
        assert.include(error.message, "at most 1024", model)
      }
    })
  )

  it.effect(
    "an embeddings answer of more vectors than a batch's texts is Decode on data, counted before they are read",
    () =>
      Effect.gen(function* () {
        const data: Array<unknown> = Array.from({ length: 100_000 }, (_, index) => ({ index, embedding: [] }))
        data[5_000] = { index: 5_000, embedding: 7 }
        const server = yield* Server.make((_, res) => Server.json(res, 200, { model: "m", data }))
        const p = yield* provider(server)
        const error = yield* flipModel(p.embed({ texts: ["a", "b"] }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "data"])
        assert.include(error.message, "at most 256")
      })
  )

  it.effect(
    "a vector of more than 65,536 dimensions is Decode naming it, as floats or base64, counted before it is read",
    () =>
      Effect.gen(function* () {
        const vector = (model: string): unknown => {
          if (model === "base64") return Buffer.from(new Float32Array(65_537).buffer).toString("base64")
          const values: Array<unknown> = Array.from({ length: model === "bound" ? 65_536 : 1_000_000 }, () => 0)
          // One value that is no number, far in: the count is refused before it is read.
          if (model === "huge") values[500_000] = "x"
          return values
        }
        const server = yield* Server.make((req, res) =>
          Server.json(res, 200, { model: "m", data: [{ index: 0, embedding: vector(String(bodyOf(req)["model"])) }] })
        )
        const p = yield* provider(server)
        assert.lengthOf((yield* p.embed({ texts: ["a"], model: "bound" })).vectors[0]!, 65_536)
        for (const model of ["huge", "base64"]) {
          const error = yield* flipModel(p.embed({ texts: ["a"], model }))
          assert.deepStrictEqual([error.reason, error.field], ["Decode", "data[0].embedding"], model)
          assert.include(error.message, "65536", model)
        }
      })
  )

  it.effect("a streamed tool-call index that is not a small non-negative integer is Decode naming it", () =>
    Effect.gen(function* () {
      const first = `{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}`
      const second = (index: string) =>
        `{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}},{"index":${index},"id":"call_b","function":{"name":"g","arguments":"{}"}}]},"finish_reason":null}]}`
      // 1e400 reads as Infinity: the call after it without an index was merged into it ("gh", "{}{}").
      const indices = ["1e400", "-1e400", "-1", "0.5", "1024", "1e9"]
      // As many calls without an index as the bound, plus one: each new id opens the next.
      const unnumbered = JSON.stringify({
        choices: [
          {
            index: 0,
            delta: {
              tool_calls: Array.from({ length: 1025 }, (_, i) => ({ id: `c${i}`, function: { name: "f" } }))
            }
          }
        ]
      })
      const server = yield* Server.make((req, res) => {
        const model = String(bodyOf(req)["model"])
        const events =
          model === "unnumbered"
            ? [unnumbered, chunk(null, "tool_calls"), "[DONE]"]
            : [first, second(model === "ok" ? "1023" : indices[Number(model)]!), chunk(null, "tool_calls"), "[DONE]"]
        const body = Server.sse(events)
        return Server.chunked(res, model === "unnumbered" ? [body] : Server.splitBytes(body, 13), { pauseMs: 0 })
      })
      const p = yield* provider(server)
      for (let i = 0; i < indices.length; i++) {
        const { exit, parts } = yield* collect(p.stream({ prompt: "x", model: String(i) }))
        const error = modelErrorOf(exit)
        assert.deepStrictEqual(
          [error.reason, error.field],
          ["Decode", "choices[0].delta.tool_calls[1].index"],
          indices[i]
        )
        assert.notInclude(
          parts.map((x) => x._tag),
          "Finish"
        )
      }
      const many = modelErrorOf((yield* collect(p.stream({ prompt: "x", model: "unnumbered" }))).exit)
      assert.deepStrictEqual([many.reason, many.field], ["Decode", "choices[0].delta.tool_calls[1024]"])
      const ok = yield* collect(p.stream({ prompt: "x", model: "ok" }))
      assert.deepStrictEqual(
        ok.parts.flatMap((x) => (x._tag === "ToolCall" ? [x.call] : [])),
        [
          { id: "call_a", name: "f", arguments: "{}" },
          { id: "call_b", name: "g", arguments: "{}" }
        ]
      )
    })
  )

  it.effect(
    "a Gemini thought signature (extra_content.google.thought_signature) is read with its call, streamed or not, and sent back with it (sendThoughtSignatures)",
    () =>
      Effect.gen(function* () {
        const extra = (signature: unknown) => ({ google: { thought_signature: signature } })
        const call = (id: string, extra_content: unknown) => ({
          id,
          type: "function",
          function: { name: "f", arguments: "{}" },
          extra_content
        })
        // Gemini may send a call's signature on a later delta without an index: it belongs to the call being streamed.
        const events = [
          JSON.stringify({
            model: "m",
            choices: [{ index: 0, delta: { tool_calls: [{ index: 0, ...call("c1", null) }] } }]
          }),
          JSON.stringify({
            model: "m",
            choices: [{ index: 0, delta: { tool_calls: [{ extra_content: extra("sig-1") }] } }]
          }),
          JSON.stringify({
            model: "m",
            choices: [{ index: 0, delta: { tool_calls: [{ index: 1, ...call("c2", "x") }] } }]
          }),
          chunk(null, "tool_calls"),
          "[DONE]"
        ]
        const server = yield* Server.make((req, res) =>
          bodyOf(req)["stream"] === true
            ? Server.chunked(res, [Server.sse(events)], { pauseMs: 0 })
            : Server.json(res, 200, {
                model: "m",
                choices: [
                  {
                    index: 0,
                    message: {
                      role: "assistant",
                      content: null,
                      tool_calls: [call("c1", extra("sig-1")), call("c2", { google: "x" }), call("c3", extra(7))]
                    },
                    finish_reason: "tool_calls"
                  }
                ]
              })
        )
        const p = yield* provider(server, { sendThoughtSignatures: true })
        const answer = yield* p.generate({ prompt: "x" })
        assert.deepStrictEqual(answer.toolCalls, [
          { id: "c1", name: "f", arguments: "{}", signature: "sig-1" },
          { id: "c2", name: "f", arguments: "{}" },
          { id: "c3", name: "f", arguments: "{}" }
        ])
        const streamed = yield* collect(p.stream({ prompt: "x" }))
        assert.deepStrictEqual(
          streamed.parts.flatMap((x) => (x._tag === "ToolCall" ? [x.call] : [])),
          [
            { id: "c1", name: "f", arguments: "{}", signature: "sig-1" },
            { id: "c2", name: "f", arguments: "{}" }
          ]
        )
        yield* p.generate({
          messages: [
            { role: "user", content: "x" },
            { role: "assistant", content: "", toolCalls: answer.toolCalls! },
            { role: "tool", content: "1", toolCallId: "c1" },
            { role: "tool", content: "2", toolCallId: "c2" },
            { role: "tool", content: "3", toolCallId: "c3" }
          ]
        })
        const sent = bodyOf((yield* server.requests).at(-1)!)["messages"] as ReadonlyArray<{ tool_calls?: unknown }>
        assert.deepStrictEqual(sent[1]!.tool_calls, [
          call("c1", extra("sig-1")),
          { id: "c2", type: "function", function: { name: "f", arguments: "{}" } },
          { id: "c3", type: "function", function: { name: "f", arguments: "{}" } }
        ])
      })
  )
})

layer(NodeHttpClient.layerUndici)("OpenAiCompat parallel tool calls", (it) => {
  it.effect(
    "parallelToolCalls is sent as parallel_tool_calls with tools, streamed or not; without tools not at all (OpenAI refuses it there)",
    () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          bodyOf(req)["stream"] === true
            ? Server.chunked(res, [Server.sse([chunk("ok"), chunk(null, "stop"), "[DONE]"])], { pauseMs: 0 })
            : Server.json(res, 200, completion("ok"))
        )
        const p = yield* provider(server)
        const tools = [{ name: "f" }]
        yield* p.generate({ prompt: "x", tools, parallelToolCalls: false })
        yield* collect(p.stream({ prompt: "x", tools, parallelToolCalls: true }))
        yield* p.generate({ prompt: "x", parallelToolCalls: false })
        yield* p.generate({ prompt: "x", tools })
        const sent = (yield* server.requests).map((r) => bodyOf(r)["parallel_tool_calls"])
        assert.deepStrictEqual(sent, [false, true, undefined, undefined])
      })
  )
})

layer(NodeHttpClient.layerUndici)("OpenAiCompat thought signatures", (it) => {
  const signed = {
    messages: [
      { role: "user" as const, content: "x" },
      {
        role: "assistant" as const,
        content: "",
        toolCalls: [{ id: "c1", name: "f", arguments: "{}", signature: "sig-1" }]
      },
      { role: "tool" as const, content: "1", toolCallId: "c1" }
    ]
  }
  const sentCalls = (server: Server.TestServer) =>
    Effect.map(server.requests, (requests) => {
      const messages = bodyOf(requests.at(-1))["messages"] as ReadonlyArray<{ tool_calls?: unknown }>
      return messages[1]!.tool_calls
    })
  const unsigned = [{ id: "c1", type: "function", function: { name: "f", arguments: "{}" } }]
  const withSignature = [{ ...unsigned[0], extra_content: { google: { thought_signature: "sig-1" } } }]

  it.effect(
    "are sent back only to Gemini's OpenAI endpoint by default: a conversation that falls back to OpenAI carries no extra_content",
    () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_req, res) => Server.json(res, 200, completion("ok")))
        yield* (yield* provider(server)).generate(signed)
        assert.deepStrictEqual(yield* sentCalls(server), unsigned)
        yield* (yield* provider(server, { sendThoughtSignatures: false })).generate(signed)
        assert.deepStrictEqual(yield* sentCalls(server), unsigned)
        yield* (yield* provider(server, { sendThoughtSignatures: true })).generate(signed)
        assert.deepStrictEqual(yield* sentCalls(server), withSignature)
        // Google's host sends them unless told not to (the requests go to the loopback server all the same).
        const toServer = (client: HttpClient.HttpClient) =>
          HttpClient.mapRequest(client, (request) =>
            HttpClientRequest.setUrl(
              request,
              request.url.replace("https://generativelanguage.googleapis.com/v1beta/openai", `${server.url}/v1`)
            )
          )
        const google = { baseUrl: "https://generativelanguage.googleapis.com/v1beta/openai", transformClient: toServer }
        yield* (yield* provider(server, google)).generate(signed)
        assert.deepStrictEqual(yield* sentCalls(server), withSignature)
        yield* (yield* provider(server, { ...google, sendThoughtSignatures: false })).generate(signed)
        assert.deepStrictEqual(yield* sentCalls(server), unsigned)
        const bad = yield* Effect.flip(provider(server, { sendThoughtSignatures: "yes" as never }))
        assert.strictEqual(bad.path, "sendThoughtSignatures")
      })
  )
})

layer(NodeHttpClient.layerUndici)("OpenAiCompat stop sequences", (it) => {
  it.effect(
    "more than 4 are refused naming stop before a call to api.openai.com (its limit); other servers get every one",
    () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_req, res) => Server.json(res, 200, completion("ok")))
        const stop = ["a", "b", "c", "d", "e"]
        yield* (yield* provider(server)).generate({ prompt: "x", stop })
        assert.deepStrictEqual(bodyOf((yield* server.requests)[0])["stop"], stop)
        const toServer = (client: HttpClient.HttpClient) =>
          HttpClient.mapRequest(client, (request) =>
            HttpClientRequest.setUrl(request, request.url.replace("https://api.openai.com/v1", `${server.url}/v1`))
          )
        const openAi = yield* provider(server, { baseUrl: "https://api.openai.com/v1", transformClient: toServer })
        for (const call of [
          openAi.generate({ prompt: "x", stop }),
          Stream.runDrain(openAi.stream({ prompt: "x", stop }))
        ]) {
          const error = yield* flipModel(call)
          assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "stop"])
        }
        assert.strictEqual((yield* server.requests).length, 1, "no call for a refused request")
        yield* openAi.generate({ prompt: "x", stop: stop.slice(0, 4) })
        assert.deepStrictEqual(bodyOf((yield* server.requests)[1])["stop"], stop.slice(0, 4))
      })
  )

  it.effect("Azure OpenAI's hosts hold the same limit of 4, refused before any call", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_req, res) => Server.json(res, 200, completion("ok")))
      const azure = yield* provider(server, {
        baseUrl: "https://my-resource.openai.azure.com/openai/v1",
        transformClient: (client) => HttpClient.mapRequest(client, () => HttpClientRequest.post(`${server.url}/v1/x`))
      })
      const error = yield* flipModel(azure.generate({ prompt: "x", stop: ["a", "b", "c", "d", "e"] }))
      assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "stop"])
      assert.strictEqual((yield* server.requests).length, 0)
    })
  )
})

layer(NodeHttpClient.layerUndici)("OpenAiCompat tool_calls without tool calls", (it) => {
  it.effect(
    "finish_reason tool_calls with no tool calls is Decode naming the missing calls (generate and stream)",
    () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          bodyOf(req)["stream"] === true
            ? Server.chunked(res, [Server.sse([chunk("Let me check."), chunk(null, "tool_calls"), "[DONE]"])])
            : Server.json(
                res,
                200,
                completion("Let me check.", {
                  choices: [
                    { index: 0, message: { role: "assistant", content: "Let me check." }, finish_reason: "tool_calls" }
                  ]
                })
              )
        )
        const p = yield* provider(server)
        const error = yield* flipModel(p.generate({ prompt: "x" }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "choices[0].message.tool_calls"])
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "x" }))
        const streamed = modelErrorOf(exit)
        assert.deepStrictEqual([streamed.reason, streamed.field], ["Decode", "choices[0].delta.tool_calls"])
        assert.strictEqual(text, "Let me check.")
        assert.notInclude(
          parts.map((x) => x._tag),
          "Finish"
        )
      })
  )
})

layer(NodeHttpClient.layerUndici)("OpenAiCompat stream after its finish reason", (it) => {
  it.effect(
    "a server that stalls after its finish reason finishes after a short wait for usage, not idle-times out",
    () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [Server.sse([chunk("abcdefgh"), chunk(null, "stop")])], { end: "hang" })
        )
        const p = yield* provider(server, { streamIdleTimeout: "20 seconds" })
        const parts = yield* drainStalled(p.stream({ prompt: "abcd" }))
        assert.deepStrictEqual(parts.at(-1), {
          _tag: "Finish",
          finishReason: "stop",
          usage: { inputTokens: 1, outputTokens: 2, totalTokens: 3 },
          provider: "oai",
          model: "gpt-4o-mini-2024-07-18"
        })
        yield* server.awaitAborted(1)
      })
  )
})

describe("OpenAiCompat with a transformClient that follows redirects", () => {
  it.live("a 302 to another origin is not followed: a header given Redacted never reaches it", () =>
    Effect.gen(function* () {
      const elsewhere = yield* Server.make((_, res) => Server.json(res, 200, completion("from elsewhere")))
      const redirecting = yield* Server.make((req, res) => {
        res.writeHead(302, { location: `${elsewhere.url}${req.path}` })
        res.end()
      })
      const p = yield* provider(redirecting, {
        apiKey: undefined,
        headers: { "x-team-key": Redacted.make(KEY), "x-team": "search" },
        transformClient: HttpClient.followRedirects()
      })
      const error = yield* Effect.flip(p.generate({ prompt: "hi" }))
      assert.strictEqual(error._tag, "ModelError")
      assert.deepStrictEqual(
        (yield* elsewhere.requests).map((r) => r.headers["x-team-key"]),
        []
      )
      assert.strictEqual((yield* redirecting.requests)[0]?.headers["x-team-key"], KEY)
    }).pipe(Effect.provide(NodeHttpClient.layerUndici))
  )

  it.live("a 307 to another origin is not followed over fetch either: neither the key nor the prompt reaches it", () =>
    Effect.gen(function* () {
      const elsewhere = yield* Server.make((_, res) => Server.json(res, 200, completion("from elsewhere")))
      const redirecting = yield* Server.make((req, res) => {
        res.writeHead(307, { location: `${elsewhere.url}${req.path}` })
        res.end()
      })
      const p = yield* provider(redirecting, {
        headers: { "api-key": KEY },
        transformClient: HttpClient.followRedirects()
      })
      const error = yield* Effect.flip(p.generate({ prompt: "a private prompt" }))
      assert.strictEqual(error._tag, "ModelError")
      assert.strictEqual((yield* elsewhere.requests).length, 0)
    }).pipe(Effect.provide(FetchHttpClient.layer))
  )
})

layer(NodeHttpClient.layerUndici)("OpenAiCompat secrets over plain http", (it) => {
  const refusal = (options: OpenAiCompat.Options) =>
    Effect.map(Effect.flip(OpenAiCompat.make(options)), (error) => {
      assert.strictEqual(error._tag, "OptionError")
      assert.notInclude(error.message, KEY)
      return { path: error.path, message: error.message }
    })

  it.effect("a key or a Redacted header off loopback over http is an OptionError naming it and the host", () =>
    Effect.gen(function* () {
      const apiKey = Redacted.make(KEY)
      const key = yield* refusal({ baseUrl: "http://10.0.0.5:8000/v1", apiKey })
      assert.strictEqual(key.path, "apiKey")
      assert.include(key.message, "10.0.0.5:8000")
      assert.include(key.message, "allowPlainHttpSecrets")
      // As Azure OpenAI takes its key.
      const header = yield* refusal({ baseUrl: "http://vllm.internal/v1", headers: { "api-key": apiKey } })
      assert.strictEqual(header.path, 'headers["api-key"]')
      assert.include(header.message, "vllm.internal")
      assert.strictEqual((yield* refusal({ baseUrl: "http://127.0.0.1.nip.io/v1", apiKey })).path, "apiKey")
      assert.strictEqual((yield* refusal({ baseUrl: "http://[::2]:8000/v1", apiKey })).path, "apiKey")
      // A checked boolean.
      const notBoolean = yield* refusal({ allowPlainHttpSecrets: "yes" as never })
      assert.strictEqual(notBoolean.path, "allowPlainHttpSecrets")
      // Built: https anywhere, http on loopback, no secret at all, or the network said to be the application's own.
      for (const options of [
        { baseUrl: "https://10.0.0.5:8000/v1", apiKey },
        { baseUrl: "http://localhost:8000/v1", apiKey },
        { baseUrl: "http://127.0.0.2:8000/v1", apiKey },
        { baseUrl: "http://[::1]:8000/v1", apiKey },
        { baseUrl: "http://10.0.0.5:8000/v1", headers: { "x-team": "a" } },
        { baseUrl: "http://10.0.0.5:8000/v1", apiKey, allowPlainHttpSecrets: true }
      ] satisfies ReadonlyArray<OpenAiCompat.Options>) {
        yield* OpenAiCompat.make(options)
      }
    })
  )

  it.effect("with allowPlainHttpSecrets the key goes over plain http", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) => Server.json(res, 200, completion("ok")))
      const p = yield* OpenAiCompat.make({
        baseUrl: "http://model.internal:8000/v1",
        apiKey: Redacted.make(KEY),
        allowPlainHttpSecrets: true,
        // The host stands for another machine of the application's network: the request reaches the test's server.
        transformClient: HttpClient.mapRequest((request) =>
          HttpClientRequest.setUrl(request, request.url.replace("http://model.internal:8000", server.url))
        )
      })
      assert.strictEqual((yield* p.generate({ prompt: "hi" })).text, "ok")
      const [request] = yield* server.requests
      assert.strictEqual(request?.headers.authorization, `Bearer ${KEY}`)
    })
  )
})

layer(NodeHttpClient.layerUndici)("OpenAiCompat tool messages", (it) => {
  const user = (content: string) => ({ role: "user" as const, content })
  const calls = (...ids: ReadonlyArray<string>) => ({
    role: "assistant" as const,
    content: "",
    toolCalls: ids.map((id) => ({ id, name: "weather", arguments: "{}" }))
  })
  const tool = (id: string) => ({ role: "tool" as const, content: "sunny", toolCallId: id })

  it.effect("a tool message answering no earlier call is InvalidRequest naming it and the id, nothing sent", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) => Server.json(res, 200, completion("ok")))
      const p = yield* provider(server)
      const request = { messages: [user("a"), calls("call_1"), tool("call_2")] }
      for (const error of [
        yield* flipModel(p.generate(request)),
        modelErrorOf((yield* collect(p.stream(request))).exit)
      ]) {
        assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "messages[2].toolCallId"])
        assert.include(error.message, '"call_2"')
      }
      assert.lengthOf(yield* server.requests, 0)
      // Answered: sent.
      yield* p.generate({ messages: [user("a"), calls("call_1"), tool("call_1")] })
      assert.lengthOf(yield* server.requests, 1)
    })
  )

  it.effect(
    "to OpenAI's own API, an answer out of OpenAI's order is refused before it is sent; elsewhere it goes",
    () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, completion("ok")))
        const late = { messages: [user("a"), calls("c1"), tool("c1"), user("b"), tool("c1")] }
        const openAi = yield* provider(server, {
          baseUrl: "https://api.openai.com/v1",
          transformClient: HttpClient.mapRequest((request) =>
            HttpClientRequest.setUrl(request, request.url.replace("https://api.openai.com", server.url))
          )
        })
        const error = yield* flipModel(openAi.generate(late))
        assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "messages[4].toolCallId"])
        assert.lengthOf(yield* server.requests, 0)
        yield* openAi.generate({ messages: [user("a"), calls("c1"), tool("c1"), user("b")] })
        assert.lengthOf(yield* server.requests, 1)
        // vLLM, llama.cpp: their templates take it.
        yield* (yield* provider(server)).generate(late)
        assert.lengthOf(yield* server.requests, 2)
      })
  )
})

layer(NodeHttpClient.layerUndici)("OpenAiCompat usage estimates", (it) => {
  it.effect(
    "without the server's usage, a turn of tool calls is estimated from its calls, not as 0 output tokens",
    () =>
      Effect.gen(function* () {
        const args = JSON.stringify({ text: "x".repeat(800) })
        const fn = { type: "function", function: { name: "save", arguments: args } }
        const server = yield* Server.make((req, res) =>
          bodyOf(req)["stream"] === true
            ? Server.text(
                res,
                200,
                Server.sse([
                  { model: "m", choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: "c1", ...fn }] } }] },
                  { model: "m", choices: [{ index: 0, delta: {}, finish_reason: "tool_calls" }] },
                  "[DONE]"
                ]),
                { "content-type": "text/event-stream" }
              )
            : Server.json(res, 200, {
                model: "m",
                choices: [
                  {
                    index: 0,
                    message: { role: "assistant", content: null, tool_calls: [{ id: "c1", ...fn }] },
                    finish_reason: "tool_calls"
                  }
                ]
              })
        )
        const p = yield* provider(server, { streamUsage: false })
        const generated = yield* p.generate({ prompt: "x" })
        const { parts } = yield* collect(p.stream({ prompt: "x" }))
        const finish = parts.find((part) => part._tag === "Finish")
        for (const usage of [generated.usage, finish?._tag === "Finish" ? finish.usage : undefined]) {
          assert.isAtLeast(usage?.outputTokens ?? 0, Math.ceil(args.length / 4))
        }
      })
  )
})
