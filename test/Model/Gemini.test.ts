import { inspect } from "node:util"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it, layer } from "@effect/vitest"
import {
  Cause,
  ConfigProvider,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Logger,
  Option,
  Redacted,
  Result,
  Stream,
  Tracer
} from "effect"
import { FetchHttpClient, HttpClient, HttpClientError, HttpClientRequest } from "effect/http"
import { TestClock } from "effect/testing"
import { type AiError, type ModelError, shouldFallback } from "../../src/AiError.js"
import * as Gemini from "../../src/Model/Gemini.js"
import * as GeminiWire from "../../src/Model/gemini/Wire.js"
import * as Model from "../../src/Model.js"
import * as Server from "../utils/httpServer.js"
import { drainStalled } from "../utils/stalled.js"

const bodyOf = (request: Model.GenerateRequest): Record<string, unknown> => {
  const body = Gemini.requestBody(request)
  if (Result.isFailure(body)) throw new Error(body.failure.message)
  return body.success
}

const refusalOf = (request: Model.GenerateRequest): ModelError => {
  const body = Gemini.requestBody(request)
  if (Result.isSuccess(body)) throw new Error("expected a refusal")
  return body.failure
}

const weather: Model.ToolDefinition = {
  name: "get_weather",
  description: "Weather in a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
}

describe("Gemini wire", () => {
  it("tools become functionDeclarations with JSON Schema parameters; toolChoice a functionCallingConfig", () => {
    const body = bodyOf({ prompt: "weather?", tools: [weather, { name: "now" }], toolChoice: { name: "get_weather" } })
    assert.deepStrictEqual(body["tools"], [
      {
        functionDeclarations: [
          { name: "get_weather", description: "Weather in a city", parametersJsonSchema: weather.parameters },
          { name: "now" }
        ]
      }
    ])
    assert.deepStrictEqual(body["toolConfig"], {
      functionCallingConfig: { mode: "ANY", allowedFunctionNames: ["get_weather"] }
    })
    assert.deepStrictEqual(bodyOf({ prompt: "x", tools: [weather], toolChoice: "required" })["toolConfig"], {
      functionCallingConfig: { mode: "ANY" }
    })
    assert.deepStrictEqual(bodyOf({ prompt: "x", tools: [weather], toolChoice: "none" })["toolConfig"], {
      functionCallingConfig: { mode: "NONE" }
    })
    const unknown = refusalOf({ prompt: "x", tools: [weather], toolChoice: { name: "nope" } })
    assert.strictEqual(unknown.reason, "InvalidRequest")
    assert.strictEqual(unknown.field, "toolChoice")
    // A call demanded with no tool to call cannot be honoured: refused, not sent as mode ANY without declarations.
    const required = refusalOf({ prompt: "x", toolChoice: "required" })
    assert.deepStrictEqual([required.reason, required.field], ["InvalidRequest", "toolChoice"])
    assert.isUndefined(bodyOf({ prompt: "x", toolChoice: "auto" })["toolConfig"])
    assert.isUndefined(bodyOf({ prompt: "x", toolChoice: "none" })["toolConfig"])
  })

  it("an assistant's tool call without a name is refused naming it (Gemini refuses a functionCall of no name)", () => {
    const error = refusalOf({
      messages: [
        { role: "user", content: "weather?" },
        { role: "assistant", content: "", toolCalls: [{ id: "c1", name: "", arguments: "{}" }] },
        { role: "tool", content: "sunny", toolCallId: "c1" }
      ]
    })
    assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "messages[1].toolCalls[0].name"])
  })

  it("a tool conversation: calls are functionCall parts, parallel answers one user turn of functionResponse parts", () => {
    const body = bodyOf({
      system: "Use tools.",
      messages: [
        { role: "user", content: "weather in Paris and Rome?" },
        {
          role: "assistant",
          content: "",
          toolCalls: [
            { id: "c1", name: "get_weather", arguments: `{"city":"Paris"}` },
            { id: "c2", name: "get_weather", arguments: `{"city":"Rome"}` }
          ]
        },
        { role: "tool", toolCallId: "c1", content: `{"celsius":21}` },
        { role: "tool", toolCallId: "c2", content: "sunny" },
        { role: "user", content: "thanks" }
      ],
      tools: [weather]
    })
    assert.deepStrictEqual(body["systemInstruction"], { parts: [{ text: "Use tools." }] })
    assert.deepStrictEqual(body["contents"], [
      { role: "user", parts: [{ text: "weather in Paris and Rome?" }] },
      {
        role: "model",
        parts: [
          { functionCall: { id: "c1", name: "get_weather", args: { city: "Paris" } } },
          { functionCall: { id: "c2", name: "get_weather", args: { city: "Rome" } } }
        ]
      },
      {
        role: "user",
        parts: [
          { functionResponse: { id: "c1", name: "get_weather", response: { celsius: 21 } } },
          { functionResponse: { id: "c2", name: "get_weather", response: { output: "sunny" } } }
        ]
      },
      { role: "user", parts: [{ text: "thanks" }] }
    ])
  })

  it("a turn with nothing in it (an assistant without text or calls, an empty user message) is left out, not sent as an empty text part Gemini refuses", () => {
    const body = bodyOf({
      messages: [
        { role: "user", content: "hi" },
        { role: "assistant", content: "" },
        { role: "user", content: "" },
        { role: "user", content: "still there?" }
      ]
    })
    assert.deepStrictEqual(body["contents"], [
      { role: "user", parts: [{ text: "hi" }] },
      { role: "user", parts: [{ text: "still there?" }] }
    ])
  })

  it("a conversation with no turn left (system messages alone, or only empty turns) is refused naming messages: Gemini refuses empty contents", () => {
    for (const messages of [
      [{ role: "system", content: "be brief" }],
      [
        { role: "system", content: "be brief" },
        { role: "user", content: "" }
      ]
    ] as const) {
      const refused = refusalOf({ messages })
      assert.strictEqual(refused.reason, "InvalidRequest")
      assert.strictEqual(refused.field, "messages")
    }
  })

  it("a tool message answering no call, or call arguments that are not a JSON object, are refused", () => {
    const orphan = refusalOf({
      messages: [
        { role: "user", content: "x" },
        { role: "tool", toolCallId: "zz", content: "1" }
      ]
    })
    assert.strictEqual(orphan.reason, "InvalidRequest")
    assert.strictEqual(orphan.field, "messages[1].toolCallId")
    const badArgs = refusalOf({
      system: "s",
      messages: [
        { role: "user", content: "x" },
        {
          role: "assistant",
          content: "",
          toolCalls: [
            { id: "a", name: "f", arguments: "{}" },
            { id: "c", name: "f", arguments: "[1]" }
          ]
        }
      ]
    })
    // Named where the caller wrote it: the request's own messages, not counting its `system`.
    assert.strictEqual(badArgs.field, "messages[1].toolCalls[1].arguments")
    assert.include(badArgs.message, '"c"')
  })

  it('blank call arguments ("", as OpenAI answers a tool without parameters and clients send back) are args {}', () => {
    const body = bodyOf({
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
    const contents = body["contents"] as ReadonlyArray<{ readonly parts: ReadonlyArray<Record<string, unknown>> }>
    assert.deepStrictEqual(contents[1]!.parts, [
      { functionCall: { id: "a", name: "now", args: {} } },
      { functionCall: { id: "b", name: "now", args: {} } }
    ])
  })

  it("a JSON response format asks for application/json, with the schema when given", () => {
    const schema = { type: "object", properties: { a: { type: "number" } } }
    assert.deepStrictEqual(
      bodyOf({ prompt: "x", responseFormat: { type: "json_schema", name: "s", schema } })["generationConfig"],
      { responseMimeType: "application/json", responseJsonSchema: schema }
    )
    assert.deepStrictEqual(bodyOf({ prompt: "x", responseFormat: { type: "json_object" } })["generationConfig"], {
      responseMimeType: "application/json"
    })
    assert.isUndefined(bodyOf({ prompt: "x", responseFormat: { type: "text" } })["generationConfig"])
  })

  it("an answer's functionCall parts are tool calls; ids from Gemini or made up; thoughts are not text", () => {
    let n = 0
    const read = GeminiWire.readAnswer(
      {
        candidates: [
          {
            content: {
              parts: [
                { text: "planning", thought: true },
                { text: "Let me check. " },
                { functionCall: { name: "get_weather", args: { city: "Paris" } } },
                { functionCall: { id: "g-7", name: "now" } },
                // An empty id is no id (proto3 JSON leaves one out): made up, or no tool message could answer it.
                { functionCall: { id: "", name: "now" } }
              ]
            },
            finishReason: "STOP"
          }
        ]
      },
      "gemini",
      "m",
      () => `call_${n++}`
    )
    assert.isTrue(Result.isSuccess(read))
    if (Result.isFailure(read)) return
    assert.strictEqual(read.success.text, "Let me check. ")
    assert.deepStrictEqual(read.success.toolCalls, [
      { id: "call_0", name: "get_weather", arguments: `{"city":"Paris"}` },
      { id: "g-7", name: "now", arguments: "{}" },
      { id: "call_1", name: "now", arguments: "{}" }
    ])
  })

  it("finish reasons; a blocked prompt is ContentFilter", () => {
    assert.strictEqual(Gemini.finishReasonOf("STOP"), "stop")
    assert.strictEqual(Gemini.finishReasonOf("MAX_TOKENS"), "length")
    assert.strictEqual(Gemini.finishReasonOf("SAFETY"), "content_filter")
    assert.strictEqual(Gemini.finishReasonOf("PROHIBITED_CONTENT"), "content_filter")
    assert.strictEqual(Gemini.finishReasonOf("MALFORMED_FUNCTION_CALL"), "error")
    assert.strictEqual(Gemini.finishReasonOf("SOMETHING_NEW"), "unknown")
    // Google's later reasons: image filters are filters; a malformed answer or a missing thought signature is no answer.
    assert.deepStrictEqual(
      ["IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MALFORMED_RESPONSE", "MISSING_THOUGHT_SIGNATURE"].map(
        Gemini.finishReasonOf
      ),
      ["content_filter", "content_filter", "error", "error"]
    )
    // Beside function calls (whole in each part), a complete turn is tool_calls: STOP, and a reason not known here
    // (OTHER, a later one), which read as unknown would be an incomplete turn whose calls effect/ai never runs.
    assert.deepStrictEqual(
      ["STOP", "OTHER", "SOMETHING_NEW", "MAX_TOKENS", "SAFETY", "MALFORMED_FUNCTION_CALL"].map((r) =>
        GeminiWire.finalReason(r, true)
      ),
      ["tool_calls", "tool_calls", "tool_calls", "length", "content_filter", "error"]
    )
    assert.strictEqual(GeminiWire.finalReason("OTHER", false), "unknown")
    const read = GeminiWire.readAnswer({ promptFeedback: { blockReason: "SAFETY" } }, "gemini", "m", () => "x")
    assert.isTrue(Result.isFailure(read))
    if (Result.isSuccess(read)) return
    assert.strictEqual(read.failure.reason, "ContentFilter")
  })

  it("model paths: a bare id gets models/, tuned models keep their prefix, segments are escaped", () => {
    assert.strictEqual(GeminiWire.modelPath("gemini-2.5-flash"), "models/gemini-2.5-flash")
    assert.strictEqual(GeminiWire.modelPath("tunedModels/my-model"), "tunedModels/my-model")
    assert.strictEqual(GeminiWire.modelPath("a b?c"), "models/a%20b%3Fc")
  })
})

const KEY = "AIzaSyTEST-0123456789abcdefSECRET"

const provider = (server: Server.TestServer, options: Partial<Gemini.Options> = {}) =>
  Gemini.make({ baseUrl: server.url, apiKey: Redacted.make(KEY), ...options })

const response = (text: string, extra: Record<string, unknown> = {}) => ({
  candidates: [
    {
      content: { parts: [{ text }], role: "model" },
      finishReason: "STOP",
      index: 0,
      safetyRatings: [{ category: "HARM_CATEGORY_HARASSMENT", probability: "NEGLIGIBLE" }]
    }
  ],
  usageMetadata: { promptTokenCount: 8, candidatesTokenCount: 5, totalTokenCount: 13 },
  modelVersion: "gemini-2.5-flash",
  responseId: "abc",
  ...extra
})

const streamChunk = (text: string, finishReason?: string) => ({
  candidates: [{ content: { parts: [{ text }], role: "model" }, index: 0, ...(finishReason ? { finishReason } : {}) }],
  usageMetadata: finishReason
    ? { promptTokenCount: 8, candidatesTokenCount: 6, thoughtsTokenCount: 2, totalTokenCount: 16 }
    : { promptTokenCount: 8, totalTokenCount: 8 },
  modelVersion: "gemini-2.5-flash"
})

const googleError = (code: number, status: string, message: string, details: ReadonlyArray<unknown> = []) => ({
  error: { code, message, status, details }
})

const collect = (stream: Stream.Stream<Model.StreamPart, AiError>) =>
  Effect.gen(function* () {
    const parts: Array<Model.StreamPart> = []
    const exit = yield* Effect.exit(Stream.runForEach(stream, (part) => Effect.sync(() => parts.push(part))))
    const text = parts.flatMap((p) => (p._tag === "TextDelta" ? [p.text] : [])).join("")
    return { parts, exit, text }
  })

const failureOf = (exit: Exit.Exit<unknown, AiError>): AiError => {
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  const error = Cause.findErrorOption(exit.cause)
  if (Option.isNone(error)) throw new Error(Cause.pretty(exit.cause))
  return error.value
}

const modelErrorOf = (exit: Exit.Exit<unknown, AiError>): ModelError => {
  const error = failureOf(exit)
  if (error._tag !== "ModelError") throw new Error(`expected a ModelError, got ${error._tag}`)
  return error
}

const failing = (effect: Effect.Effect<unknown, AiError>) => Effect.map(Effect.exit(effect), modelErrorOf)

/** Every rendering of a failure: JSON, `util.inspect`, string, its cause's message, the pretty `Cause`, logger lines. */
const renderings = (exit: Exit.Exit<unknown, AiError>) =>
  Effect.gen(function* () {
    if (Exit.isSuccess(exit)) return []
    const error = failureOf(exit)
    const lines: Array<string> = []
    const capture = Logger.make((options) => {
      lines.push(String(Logger.formatLogFmt.log(options)))
      lines.push(JSON.stringify(Logger.formatStructured.log(options)))
    })
    yield* Effect.logError("call failed", exit.cause).pipe(Effect.provide(Logger.layer([capture])))
    const cause = (error as { readonly cause?: unknown }).cause
    return [
      JSON.stringify(error),
      inspect(error, { depth: 10 }),
      String(error),
      cause instanceof Error ? cause.message : String(cause),
      Cause.pretty(exit.cause),
      ...lines
    ]
  })

const assertNoKey = (texts: ReadonlyArray<string>) => {
  assert.isAbove(texts.length, 5)
  for (const text of texts) {
    assert.notInclude(text, KEY)
    assert.notInclude(text, "0123456789abcdef")
  }
}

layer(NodeHttpClient.layerUndici)("Gemini over HTTP", (it) => {
  describe("generate", () => {
    it.effect("generateContent: documented body, key in the header and never in the URL", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, response("Hi there")))
        const p = yield* provider(server)
        const answer = yield* p.generate({
          system: "Be terse.",
          messages: [
            { role: "user", content: "hello" },
            { role: "assistant", content: "hey" },
            { role: "user", content: "again" }
          ],
          maxTokens: 50,
          temperature: 0.1,
          topP: 0.9,
          stop: ["END"]
        })
        assert.deepStrictEqual(answer, {
          text: "Hi there",
          finishReason: "stop",
          usage: { inputTokens: 8, outputTokens: 5, totalTokens: 13 },
          provider: "gemini",
          model: "gemini-2.5-flash"
        })
        const [request] = yield* server.requests
        assert.strictEqual(request?.path, "/v1beta/models/gemini-2.5-flash:generateContent")
        assert.strictEqual(request?.search.toString(), "")
        assert.strictEqual(request?.headers["x-goog-api-key"], KEY)
        assert.deepStrictEqual(request?.json, {
          contents: [
            { role: "user", parts: [{ text: "hello" }] },
            { role: "model", parts: [{ text: "hey" }] },
            { role: "user", parts: [{ text: "again" }] }
          ],
          systemInstruction: { parts: [{ text: "Be terse." }] },
          generationConfig: { maxOutputTokens: 50, temperature: 0.1, topP: 0.9, stopSequences: ["END"] }
        })
      })
    )

    it.effect(
      "thought parts are not answer text; a blocked prompt is ContentFilter; a SAFETY stop is content_filter",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) => {
            if (req.path.includes("blocked")) {
              return Server.json(res, 200, {
                promptFeedback: { blockReason: "SAFETY" },
                usageMetadata: { promptTokenCount: 3 }
              })
            }
            if (req.path.includes("unsafe")) {
              return Server.json(res, 200, { candidates: [{ finishReason: "SAFETY", index: 0 }] })
            }
            return Server.json(
              res,
              200,
              response("", {
                candidates: [
                  {
                    content: { parts: [{ text: "thinking...", thought: true }, { text: "42" }] },
                    finishReason: "MAX_TOKENS"
                  }
                ]
              })
            )
          })
          const p = yield* provider(server)
          const answer = yield* p.generate({ prompt: "?" })
          assert.strictEqual(answer.text, "42")
          assert.strictEqual(answer.finishReason, "length")
          const error = yield* failing(p.generate({ prompt: "?", model: "blocked" }))
          assert.strictEqual(error.reason, "ContentFilter")
          assert.include(error.message, "SAFETY")
          const unsafe = yield* p.generate({ prompt: "?", model: "unsafe" })
          assert.strictEqual(unsafe.text, "")
          assert.strictEqual(unsafe.finishReason, "content_filter")
        })
    )

    it.effect(
      "token counts that are no counts (negative, fractional) are estimated; a total below the parts is not kept",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.json(
              res,
              200,
              response("12345678", {
                usageMetadata: {
                  promptTokenCount: -8,
                  candidatesTokenCount: 2.5,
                  thoughtsTokenCount: 3,
                  totalTokenCount: 1
                }
              })
            )
          )
          const p = yield* provider(server)
          const answer = yield* p.generate({ prompt: "abcd" })
          assert.deepStrictEqual(answer.usage, { inputTokens: 1, outputTokens: 5, totalTokens: 6 })
        })
    )

    it.effect("errors: 429 RetryInfo and Retry-After, 400 API_KEY_INVALID, 503, 404 model, 400, 403", () =>
      Effect.gen(function* () {
        const answers: Record<string, [number, unknown, Record<string, string>?]> = {
          quota: [
            429,
            googleError(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota", [
              { "@type": "type.googleapis.com/google.rpc.QuotaFailure", violations: [] },
              { "@type": "type.googleapis.com/google.rpc.RetryInfo", retryDelay: "36s" }
            ])
          ],
          header: [429, googleError(429, "RESOURCE_EXHAUSTED", "slow down"), { "retry-after": "5" }],
          badkey: [
            400,
            googleError(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
              {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                reason: "API_KEY_INVALID",
                domain: "googleapis.com"
              }
            ])
          ],
          overloaded: [503, googleError(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")],
          missing: [404, googleError(404, "NOT_FOUND", "models/missing is not found for API version v1beta")],
          bad: [400, googleError(400, "INVALID_ARGUMENT", "Invalid value at 'generation_config.temperature'")],
          denied: [403, googleError(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers")]
        }
        const server = yield* Server.make((req, res) => {
          const model = req.path.split("/")[3]!.split(":")[0]!
          const [status, body, headers] = answers[model]!
          Server.json(res, status, body, headers)
        })
        const p = yield* provider(server)
        const call = (model: string) => failing(p.generate({ prompt: "x", model }))
        const quota = yield* call("quota")
        assert.strictEqual(quota.reason, "RateLimited")
        assert.deepStrictEqual(quota.retryAfter, Duration.seconds(36))
        assert.deepStrictEqual((yield* call("header")).retryAfter, Duration.seconds(5))
        const badKey = yield* call("badkey")
        assert.strictEqual(badKey.reason, "Unauthorized")
        assert.strictEqual(badKey.status, 400)
        const overloaded = yield* call("overloaded")
        assert.strictEqual(overloaded.reason, "Unavailable")
        assert.include(overloaded.message, "The model is overloaded")
        const missing = yield* call("missing")
        assert.strictEqual(missing.reason, "InvalidRequest")
        assert.strictEqual(missing.field, "model")
        const bad = yield* call("bad")
        assert.strictEqual(bad.reason, "InvalidRequest")
        assert.notStrictEqual(bad.field, "model")
        assert.strictEqual((yield* call("denied")).reason, "Unauthorized")
      })
    )

    it.effect(
      "a stream's error answer wrapped in an array ([{error}], as Google's streaming methods send) is read",
      () =>
        Effect.gen(function* () {
          const answers: Record<string, [number, unknown]> = {
            quota: [
              429,
              [
                googleError(429, "RESOURCE_EXHAUSTED", "Resource exhausted. Please try again later.", [
                  { "@type": "type.googleapis.com/google.rpc.RetryInfo", retryDelay: "21s" }
                ])
              ]
            ],
            badkey: [
              400,
              [
                googleError(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
                  { "@type": "type.googleapis.com/google.rpc.ErrorInfo", reason: "API_KEY_INVALID" }
                ])
              ]
            ],
            missing: [404, [googleError(404, "NOT_FOUND", "models/missing is not found for API version v1beta")]]
          }
          const server = yield* Server.make((req, res) => {
            const model = req.path.split("/")[3]!.split(":")[0]!
            const [status, body] = answers[model]!
            Server.json(res, status, body)
          })
          const p = yield* provider(server)
          const call = (model: string) =>
            Effect.map(collect(p.stream({ prompt: "x", model })), (r) => modelErrorOf(r.exit))
          const quota = yield* call("quota")
          assert.strictEqual(quota.reason, "RateLimited")
          assert.deepStrictEqual(quota.retryAfter, Duration.seconds(21))
          assert.strictEqual(quota.message, "gemini answered HTTP 429: Resource exhausted. Please try again later.")
          const badKey = yield* call("badkey")
          assert.strictEqual(badKey.reason, "Unauthorized")
          const missing = yield* call("missing")
          assert.strictEqual(missing.reason, "InvalidRequest")
          assert.strictEqual(missing.field, "model")
        })
    )

    it.effect("function-call args nested too deeply to serialise are Decode naming them, not a defect", () =>
      Effect.gen(function* () {
        const deep = `${"[".repeat(100_000)}${"]".repeat(100_000)}`
        const server = yield* Server.make((_, res) =>
          Server.json(
            res,
            200,
            `{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"a":${deep}}}}]},"finishReason":"STOP"}]}`
          )
        )
        const p = yield* provider(server)
        const error = yield* failing(p.generate({ prompt: "x" }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "candidates[0].content.parts[0].functionCall.args")
      })
    )

    it.effect("more than 128 candidates are Decode naming candidates, counted before any is read", () =>
      Effect.gen(function* () {
        const candidate = { content: { role: "model", parts: [{ text: "hi" }] }, finishReason: "STOP" }
        const server = yield* Server.make((req, res) => {
          const model = req.path.includes("/bound:") ? "bound" : req.path.includes("/over:") ? "over" : "huge"
          const all: Array<unknown> = Array.from(
            { length: model === "bound" ? 128 : model === "over" ? 129 : 100_000 },
            () => candidate
          )
          // One candidate that does not decode, far in: the count is refused before it is read.
          if (model === "huge") all[50_000] = { finishReason: 1 }
          return Server.json(res, 200, { candidates: all })
        })
        const p = yield* provider(server)
        assert.strictEqual((yield* p.generate({ prompt: "x", model: "bound" })).text, "hi")
        for (const model of ["over", "huge"]) {
          const error = yield* failing(p.generate({ prompt: "x", model }))
          assert.deepStrictEqual([error.reason, error.field], ["Decode", "candidates"], model)
        }
      })
    )

    it.effect("an id made up for a call that came without one is none of the answer's own ids, in a stream too", () =>
      Effect.gen(function* () {
        const call = (city: string, id?: string) => ({
          functionCall: { ...(id === undefined ? {} : { id }), name: "get_weather", args: { city } }
        })
        const server = yield* Server.make((req, res) =>
          req.search.get("alt") === "sse"
            ? Server.chunked(res, [
                Server.sse([
                  { candidates: [{ content: { role: "model", parts: [call("Oslo")] } }] },
                  {
                    candidates: [{ content: { role: "model", parts: [call("Rome", "call_0")] }, finishReason: "STOP" }]
                  }
                ])
              ])
            : Server.json(res, 200, {
                candidates: [
                  { content: { role: "model", parts: [call("Oslo"), call("Rome", "call_0")] }, finishReason: "STOP" }
                ]
              })
        )
        const p = yield* provider(server)
        const generated = (yield* p.generate({ prompt: "x" })).toolCalls ?? []
        assert.strictEqual(generated[1]!.id, "call_0")
        assert.notStrictEqual(generated[0]!.id, "call_0")
        const { parts, exit } = yield* collect(p.stream({ prompt: "x" }))
        assert.isTrue(Exit.isSuccess(exit))
        const streamed = parts.flatMap((part) => (part._tag === "ToolCall" ? [part.call] : []))
        assert.strictEqual(streamed.length, 2)
        assert.strictEqual(new Set(streamed.map((c) => c.id)).size, 2)
      })
    )

    it.effect("function calls of one id are Decode naming the parts, in an answer and across a stream's events", () =>
      Effect.gen(function* () {
        const call = (city: string) => ({ functionCall: { id: "fc1", name: "get_weather", args: { city } } })
        const server = yield* Server.make((req, res) =>
          req.search.get("alt") === "sse"
            ? Server.chunked(res, [
                Server.sse([
                  { candidates: [{ content: { role: "model", parts: [call("Oslo")] } }] },
                  { candidates: [{ content: { role: "model", parts: [call("Rome")] }, finishReason: "STOP" }] }
                ])
              ])
            : Server.json(res, 200, {
                candidates: [{ content: { role: "model", parts: [call("Oslo"), call("Rome")] }, finishReason: "STOP" }]
              })
        )
        const p = yield* provider(server)
        // A function response names its call by id: the two results could not be told apart.
        const error = yield* failing(p.generate({ prompt: "x" }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "candidates[0].content.parts"])
        assert.include(error.message, '"fc1"')
        const streamed = modelErrorOf((yield* collect(p.stream({ prompt: "x" }))).exit)
        assert.deepStrictEqual([streamed.reason, streamed.field], ["Decode", "candidates[0].content.parts"])
      })
    )

    it.effect("more than 1,024 function calls, in an answer or in a stream all told, are Decode naming the parts", () =>
      Effect.gen(function* () {
        const calls = (n: number) => Array.from({ length: n }, () => ({ functionCall: { name: "f" } }))
        const answer = (parts: ReadonlyArray<unknown>) => ({
          candidates: [{ content: { role: "model", parts }, finishReason: "STOP" }]
        })
        const server = yield* Server.make((req, res) => {
          const count = req.path.includes("/bound:") ? 1024 : 1025
          if (req.search.get("alt") === "sse") {
            // One call an event: each event is small, the stream's calls are not.
            const events = Array.from({ length: count }, (_, i) =>
              i === count - 1
                ? answer([{ functionCall: { name: "f" } }])
                : { candidates: [{ content: { parts: [{ functionCall: { name: "f" } }] } }] }
            )
            return Server.chunked(res, [Server.sse(events)])
          }
          if (req.path.includes("/huge:")) {
            // Parts past any answer's, one that does not decode among them: the count is refused before they are read.
            const parts = calls(100_000)
            parts[5_000] = { functionCall: { name: "" } }
            return Server.json(res, 200, answer(parts))
          }
          return Server.json(res, 200, answer(calls(count)))
        })
        const p = yield* provider(server)
        assert.lengthOf((yield* p.generate({ prompt: "x", model: "bound" })).toolCalls ?? [], 1024)
        for (const model of ["over", "huge"]) {
          const error = yield* failing(p.generate({ prompt: "x", model }))
          assert.deepStrictEqual([error.reason, error.field], ["Decode", "candidates[0].content.parts"], model)
        }
        const bound = yield* collect(p.stream({ prompt: "x", model: "bound" }))
        assert.isTrue(Exit.isSuccess(bound.exit))
        assert.lengthOf(
          bound.parts.filter((part) => part._tag === "ToolCall"),
          1024
        )
        const over = yield* collect(p.stream({ prompt: "x", model: "over" }))
        const error = modelErrorOf(over.exit)
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "candidates[0].content.parts"])
      })
    )

    it.effect("function-call args holding a number JSON cannot write (1e400) are Decode naming it, not null", () =>
      Effect.gen(function* () {
        // JSON.parse reads 1e400 as Infinity, which JSON.stringify wrote back as null: {"n":null}, silently.
        const call = `{"functionCall":{"name":"f","args":{"city":"Paris","n":[1,1e400]}}}`
        const body = `{"candidates":[{"content":{"parts":[${call}]},"finishReason":"STOP"}]}`
        const server = yield* Server.make((req, res) =>
          req.search.get("alt") === "sse" ? Server.chunked(res, [`data: ${body}\r\n\r\n`]) : Server.json(res, 200, body)
        )
        const p = yield* provider(server)
        const error = yield* failing(p.generate({ prompt: "x", tools: [weather] }))
        assert.deepStrictEqual(
          [error.reason, error.field],
          ["Decode", "candidates[0].content.parts[0].functionCall.args.n[1]"]
        )
        const streamed = yield* Effect.exit(Stream.runCollect(p.stream({ prompt: "x", tools: [weather] })))
        const streamError = modelErrorOf(streamed)
        assert.deepStrictEqual(
          [streamError.reason, streamError.field],
          ["Decode", "candidates[0].content.parts[0].functionCall.args.n[1]"]
        )
      })
    )

    it.effect(
      "parallelToolCalls: false with tools is refused naming it, before any request: Gemini has no way to ask for one call at a time",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) => Server.json(res, 200, response("ok")))
          const p = yield* provider(server)
          const serial = { prompt: "x", tools: [weather], parallelToolCalls: false }
          const error = yield* failing(p.generate(serial))
          assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "parallelToolCalls"])
          assert.strictEqual(
            modelErrorOf(yield* Effect.exit(Stream.runCollect(p.stream(serial)))).field,
            "parallelToolCalls"
          )
          assert.lengthOf(yield* server.requests, 0)
          // Nothing to honour: parallel calls allowed, no tools, or no tool call possible.
          yield* p.generate({ ...serial, parallelToolCalls: true })
          yield* p.generate({ prompt: "x", parallelToolCalls: false })
          yield* p.generate({ ...serial, toolChoice: "none" })
          assert.lengthOf(yield* server.requests, 3)
        })
    )

    it.effect("a model whose path has a . or .. segment is refused naming model, before any request", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, response("ok")))
        const p = yield* provider(server)
        // The URL resolved the dot segments: `models/../../x` posted the key to /x:generateContent.
        for (const model of ["../../x", "models/../files/f", "tunedModels/./t", ".."]) {
          const error = yield* failing(p.generate({ prompt: "x", model }))
          assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "model"], model)
          const streamed = yield* Effect.exit(Stream.runCollect(p.stream({ prompt: "x", model })))
          assert.strictEqual(modelErrorOf(streamed).field, "model", model)
          const embedded = yield* failing(p.embed({ texts: ["a"], model }))
          assert.strictEqual(embedded.field, "model", model)
        }
        assert.lengthOf(yield* server.requests, 0)
        // A dot inside a name is a name.
        assert.strictEqual((yield* p.generate({ prompt: "x", model: "gemini-2.5-flash..exp" })).text, "ok")
        assert.strictEqual((yield* server.requests)[0]?.path, "/v1beta/models/gemini-2.5-flash..exp:generateContent")
      })
    )

    it.effect("more than 5 stop sequences are InvalidRequest naming stop, before any request", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, response("ok")))
        const p = yield* provider(server)
        const six = ["a", "b", "c", "d", "e", "f"]
        const error = yield* failing(p.generate({ prompt: "x", stop: six }))
        assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "stop"])
        assert.include(error.message, "5")
        const streamed = yield* Effect.exit(Stream.runCollect(p.stream({ prompt: "x", stop: six })))
        assert.deepStrictEqual(
          [modelErrorOf(streamed).reason, modelErrorOf(streamed).field],
          ["InvalidRequest", "stop"]
        )
        assert.lengthOf(yield* server.requests, 0)
        assert.strictEqual((yield* p.generate({ prompt: "x", stop: six.slice(0, 5) })).text, "ok")
        const [request] = yield* server.requests
        assert.deepStrictEqual(
          (request?.json as { generationConfig?: { stopSequences?: unknown } } | undefined)?.generationConfig
            ?.stopSequences,
          six.slice(0, 5)
        )
      })
    )

    it.effect(
      "a seed Gemini cannot hold (its seed is an int32) is InvalidRequest naming seed, before any request",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) => Server.json(res, 200, response("ok")))
          const p = yield* provider(server)
          for (const seed of [2 ** 31, -(2 ** 31) - 1, 2 ** 40]) {
            const error = yield* failing(p.generate({ prompt: "x", seed }))
            assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "seed"], String(seed))
          }
          assert.lengthOf(yield* server.requests, 0)
          for (const seed of [2 ** 31 - 1, -(2 ** 31), 0]) {
            assert.strictEqual((yield* p.generate({ prompt: "x", seed })).text, "ok", String(seed))
          }
        })
    )

    it.effect("a function call without a name is Decode naming it, in answers and streams", () =>
      Effect.gen(function* () {
        const nameless = {
          candidates: [{ content: { parts: [{ functionCall: { name: "", args: {} } }] }, finishReason: "STOP" }]
        }
        const server = yield* Server.make((req, res) =>
          req.path.endsWith(":streamGenerateContent")
            ? Server.chunked(res, [Server.sse([nameless])])
            : Server.json(res, 200, nameless)
        )
        const p = yield* provider(server)
        const error = yield* failing(p.generate({ prompt: "x" }))
        assert.deepStrictEqual(
          [error.reason, error.field],
          ["Decode", "candidates[0].content.parts[0].functionCall.name"]
        )
        const { exit } = yield* collect(p.stream({ prompt: "x" }))
        assert.deepStrictEqual(
          [modelErrorOf(exit).reason, modelErrorOf(exit).field],
          ["Decode", "candidates[0].content.parts[0].functionCall.name"]
        )
      })
    )

    it.effect("a malformed body is Decode naming the field", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, response("x", { candidates: [{ content: { parts: [{ text: 7 }] } }] }))
        )
        const p = yield* provider(server)
        const error = yield* failing(p.generate({ prompt: "x" }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "candidates[0].content.parts[0].text")
      })
    )

    it.effect("a tool call answer: toolCalls, finish reason tool_calls, the tools in the request", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, {
            candidates: [
              {
                content: { role: "model", parts: [{ functionCall: { name: "get_weather", args: { city: "Paris" } } }] },
                finishReason: "STOP"
              }
            ],
            usageMetadata: { promptTokenCount: 20, candidatesTokenCount: 4, totalTokenCount: 24 }
          })
        )
        const p = yield* provider(server)
        const answer = yield* p.generate({ prompt: "weather in Paris?", tools: [weather] })
        assert.strictEqual(answer.finishReason, "tool_calls")
        assert.deepStrictEqual(answer.toolCalls, [{ id: "call_0", name: "get_weather", arguments: `{"city":"Paris"}` }])
        const [request] = yield* server.requests
        assert.deepStrictEqual((request!.json as Record<string, unknown>)["tools"], [
          {
            functionDeclarations: [
              { name: "get_weather", description: "Weather in a city", parametersJsonSchema: weather.parameters }
            ]
          }
        ])
      })
    )

    it.effect("a thought signature on a function call comes back on the call and is sent back with it, exactly", () =>
      Effect.gen(function* () {
        const signature = `CiQB0e2Kb+/sig==\u00e9${"x".repeat(3000)}`
        let turn = 0
        const server = yield* Server.make((_, res) =>
          turn++ === 0
            ? Server.json(res, 200, {
                candidates: [
                  {
                    content: {
                      role: "model",
                      parts: [
                        { functionCall: { name: "get_weather", args: { city: "Paris" } }, thoughtSignature: signature },
                        { functionCall: { name: "get_weather", args: { city: "Rome" } } }
                      ]
                    },
                    finishReason: "STOP"
                  }
                ]
              })
            : Server.json(res, 200, response("Sunny in both."))
        )
        const p = yield* provider(server)
        const first = yield* p.generate({ prompt: "weather in Paris and Rome?", tools: [weather] })
        assert.deepStrictEqual(first.toolCalls, [
          { id: "call_0", name: "get_weather", arguments: `{"city":"Paris"}`, signature },
          { id: "call_1", name: "get_weather", arguments: `{"city":"Rome"}` }
        ])
        yield* p.generate({
          tools: [weather],
          messages: [
            { role: "user", content: "weather in Paris and Rome?" },
            { role: "assistant", content: "", toolCalls: first.toolCalls! },
            { role: "tool", toolCallId: "call_0", content: `{"temp":20}` },
            { role: "tool", toolCallId: "call_1", content: `{"temp":25}` }
          ]
        })
        const [, second] = yield* server.requests
        const contents = (second!.json as { contents: ReadonlyArray<{ parts: ReadonlyArray<unknown> }> }).contents
        assert.deepStrictEqual(contents[1]!.parts, [
          { functionCall: { name: "get_weather", args: { city: "Paris" } }, thoughtSignature: signature },
          { functionCall: { name: "get_weather", args: { city: "Rome" } } }
        ])
      })
    )

    it.effect("Gemini's functionCall ids round-trip: sent back on the functionCall and its functionResponse", () =>
      Effect.gen(function* () {
        let turn = 0
        const server = yield* Server.make((_, res) =>
          turn++ === 0
            ? Server.json(res, 200, {
                candidates: [
                  {
                    content: {
                      role: "model",
                      parts: [
                        { functionCall: { id: "fc-paris", name: "get_weather", args: { city: "Paris" } } },
                        { functionCall: { name: "get_weather", args: { city: "Rome" } } }
                      ]
                    },
                    finishReason: "STOP"
                  }
                ]
              })
            : Server.json(res, 200, response("Sunny in both."))
        )
        const p = yield* provider(server)
        const first = yield* p.generate({ prompt: "weather in Paris and Rome?", tools: [weather] })
        assert.deepStrictEqual(
          first.toolCalls?.map((c) => c.id),
          ["fc-paris", "call_0"]
        )
        yield* p.generate({
          tools: [weather],
          messages: [
            { role: "user", content: "weather in Paris and Rome?" },
            { role: "assistant", content: "", toolCalls: first.toolCalls! },
            { role: "tool", toolCallId: "call_0", content: `{"temp":25}` },
            { role: "tool", toolCallId: "fc-paris", content: `{"temp":20}` }
          ]
        })
        const [, second] = yield* server.requests
        const contents = (second!.json as { contents: ReadonlyArray<{ parts: ReadonlyArray<unknown> }> }).contents
        // Gemini's own id goes back with its call and its answer; an id made up here (none given) is not sent.
        assert.deepStrictEqual(contents[1]!.parts, [
          { functionCall: { id: "fc-paris", name: "get_weather", args: { city: "Paris" } } },
          { functionCall: { name: "get_weather", args: { city: "Rome" } } }
        ])
        assert.deepStrictEqual(contents[2]!.parts, [
          { functionResponse: { name: "get_weather", response: { temp: 25 } } },
          { functionResponse: { id: "fc-paris", name: "get_weather", response: { temp: 20 } } }
        ])
      })
    )

    it.effect("an answer past maxResponseBytes is TooLarge; an endless one too, without reading it all", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          req.path.includes("endless")
            ? Server.endless(res, { contentType: "application/json", prefix: '{"candidates": "' })
            : Server.json(res, 200, response("x".repeat(5000)))
        )
        const p = yield* provider(server, { maxResponseBytes: 4096 })
        const large = yield* failing(p.generate({ prompt: "x" }))
        assert.deepStrictEqual([large.reason, large.field], ["TooLarge", "response"])
        // The answer was too large, not the request: another provider may answer it.
        assert.isTrue(shouldFallback(large))
        const endless = yield* failing(p.generate({ prompt: "x", model: "endless" }))
        assert.deepStrictEqual([endless.reason, endless.field], ["TooLarge", "response"])
        assert.isBelow(yield* server.bytesSent, 64 * 1024 * 1024)
      })
    )

    it.effect("timeout bounds a call that never answers: TimeoutError, and its connection is closed", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.hang(res))
        const p = yield* provider(server, { timeout: "2 seconds" })
        const call = yield* Effect.forkChild(Effect.exit(p.generate({ prompt: "hi" })))
        yield* server.awaitRequests(1)
        yield* TestClock.adjust("1999 millis")
        assert.isUndefined(call.pollUnsafe())
        yield* TestClock.adjust("1 millis")
        const error = failureOf(yield* Fiber.join(call))
        assert.strictEqual(error._tag, "TimeoutError")
        if (error._tag === "TimeoutError") assert.deepStrictEqual(error.timeout, Duration.seconds(2))
        yield* server.awaitAborted(1)
      })
    )

    it.effect("the key appears in no error, Cause, span attribute or options rendering", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          Server.json(
            res,
            400,
            googleError(400, "INVALID_ARGUMENT", `API key not valid: ${String(req.headers["x-goog-api-key"])}`, [
              { "@type": "type.googleapis.com/google.rpc.ErrorInfo", reason: "API_KEY_INVALID" }
            ]),
            { "x-echo-key": String(req.headers["x-goog-api-key"]) }
          )
        )
        const spans: Array<Tracer.Span> = []
        const native = yield* Effect.tracer
        const recording = Tracer.make({
          span(options) {
            const span = native.span(options)
            spans.push(span)
            return span
          },
          context: native.context
        })
        const options: Gemini.Options = { baseUrl: server.url, apiKey: Redacted.make(KEY) }
        const p = yield* Gemini.make(options)
        const exit = yield* Effect.exit(p.generate({ prompt: "x" }).pipe(Effect.withTracer(recording)))
        const error = modelErrorOf(exit)
        assert.strictEqual(error.reason, "Unauthorized")
        assert.include(error.message, "API key not valid")
        if (Exit.isSuccess(exit)) return
        for (const text of [
          JSON.stringify(error),
          String(error),
          inspect(error, { depth: 10 }),
          Cause.pretty(exit.cause),
          JSON.stringify(options),
          inspect(options)
        ]) {
          assert.notInclude(text, KEY)
        }
        assert.isAbove(spans.length, 1)
        for (const span of spans) {
          for (const value of span.attributes.values()) assert.notInclude(String(value), KEY)
        }
      })
    )
    it.effect("a transformClient that logs its requests logs the key header redacted, as an authorization", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, response("ok")))
        const lines: Array<string> = []
        const capture = Logger.make((options) => {
          lines.push(String(Logger.formatLogFmt.log(options)))
          lines.push(JSON.stringify(Logger.formatStructured.log(options)))
        })
        const p = yield* provider(server, {
          transformClient: (client) => HttpClient.tapRequest(client, (request) => Effect.log("sending", request))
        })
        yield* p.generate({ prompt: "x" }).pipe(Effect.provide(Logger.layer([capture])))
        assert.isTrue(lines.some((line) => line.includes("x-goog-api-key")))
        for (const line of lines) assert.notInclude(line, KEY)
      })
    )

    it.effect("the key in an error event, or in a failure of the HTTP client itself: no rendering carries it", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          Server.chunked(res, [
            Server.sse([
              streamChunk("partial "),
              googleError(400, "INVALID_ARGUMENT", `bad key ${String(req.headers["x-goog-api-key"])}`)
            ])
          ])
        )
        const p = yield* provider(server)
        const streamed = yield* collect(p.stream({ prompt: "x" }))
        assert.strictEqual(streamed.text, "partial ")
        assert.include(modelErrorOf(streamed.exit).message, "<redacted>")
        assertNoKey(yield* renderings(streamed.exit))
        // A proxy layer that fails and repeats the request's key in its error.
        const leaky = yield* provider(server, {
          transformClient: () =>
            HttpClient.make((request) => {
              const key = String(request.headers["x-goog-api-key"])
              return Effect.fail(
                new HttpClientError.HttpClientError({
                  reason: new HttpClientError.TransportError({
                    request,
                    description: `proxy refused key=${key}`,
                    cause: new Error(`upstream: ${key}`, { cause: new Error(key) })
                  })
                })
              )
            })
        })
        for (const exit of [
          yield* Effect.exit(leaky.generate({ prompt: "x" })),
          (yield* collect(leaky.stream({ prompt: "x" }))).exit,
          yield* Effect.exit(leaky.embed({ texts: ["x"] }))
        ]) {
          assert.strictEqual(modelErrorOf(exit).reason, "Transport")
          assertNoKey(yield* renderings(exit))
        }
      })
    )
  })

  describe("stream", () => {
    it.effect("streamGenerateContent?alt=sse split at awkward bytes ends in one Finish with usage", () =>
      Effect.gen(function* () {
        const body = Server.sse([
          streamChunk("Grüße "),
          ": keep-alive",
          streamChunk("aus 🇩🇪 "),
          streamChunk("und 日本", "STOP")
        ])
        const server = yield* Server.make((_, res) => Server.chunked(res, Server.splitAwkward(body)))
        const p = yield* provider(server)
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
        assert.strictEqual(text, "Grüße aus 🇩🇪 und 日本")
        assert.deepStrictEqual(
          parts.filter((p) => p._tag === "Finish"),
          [
            {
              _tag: "Finish",
              finishReason: "stop",
              usage: { inputTokens: 8, outputTokens: 8, totalTokens: 16 },
              provider: "gemini",
              model: "gemini-2.5-flash"
            }
          ]
        )
        const [request] = yield* server.requests
        assert.strictEqual(request?.path, "/v1beta/models/gemini-2.5-flash:streamGenerateContent")
        assert.strictEqual(request?.search.get("alt"), "sse")
        assert.isNull(request?.search.get("key") ?? null)
        assert.strictEqual(request?.headers["x-goog-api-key"], KEY)
      })
    )

    it.effect("a last chunk not followed by a blank line still finishes (Gemini has no terminator to wait for)", () =>
      Effect.gen(function* () {
        const body = `${Server.sse([streamChunk("Grüße ")])}data: ${JSON.stringify(streamChunk("aus Köln", "STOP"))}\r\n`
        const server = yield* Server.make((_, res) => Server.chunked(res, Server.splitAwkward(body)))
        const p = yield* provider(server)
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
        assert.strictEqual(text, "Grüße aus Köln")
        const finish = parts.at(-1)
        assert.strictEqual(finish?._tag, "Finish")
        assert.deepStrictEqual(finish?._tag === "Finish" ? finish.usage : undefined, {
          inputTokens: 8,
          outputTokens: 8,
          totalTokens: 16
        })
      })
    )

    it.effect("a streamed function call is a ToolCall part; the stream finishes with tool_calls", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [
            Server.sse([
              streamChunk("Checking. "),
              {
                candidates: [
                  {
                    content: { parts: [{ functionCall: { name: "get_weather", args: { city: "Rome" } } }] },
                    finishReason: "STOP"
                  }
                ]
              }
            ])
          ])
        )
        const p = yield* provider(server)
        const { exit, parts } = yield* collect(p.stream({ prompt: "weather?", tools: [weather] }))
        assert.isTrue(Exit.isSuccess(exit))
        assert.deepStrictEqual(
          parts.map((p) => p._tag),
          ["TextDelta", "ToolCall", "Finish"]
        )
        assert.deepStrictEqual(parts[1], {
          _tag: "ToolCall",
          call: { id: "call_0", name: "get_weather", arguments: `{"city":"Rome"}` }
        })
        assert.strictEqual(parts[2]?._tag === "Finish" && parts[2].finishReason, "tool_calls")
      })
    )

    it.effect("a streamed function call's thought signature rides on its ToolCall part", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [
            Server.sse([
              {
                candidates: [
                  {
                    content: {
                      parts: [
                        { functionCall: { name: "get_weather", args: { city: "Rome" } }, thoughtSignature: "s1g" }
                      ]
                    },
                    finishReason: "STOP"
                  }
                ]
              }
            ])
          ])
        )
        const p = yield* provider(server)
        const { exit, parts } = yield* collect(p.stream({ prompt: "weather?", tools: [weather] }))
        assert.isTrue(Exit.isSuccess(exit))
        assert.deepStrictEqual(parts[0], {
          _tag: "ToolCall",
          call: { id: "call_0", name: "get_weather", arguments: `{"city":"Rome"}`, signature: "s1g" }
        })
      })
    )

    it.effect("a streamed function call with Gemini's own id keeps it and still finishes with tool_calls", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [
            Server.sse([
              {
                candidates: [
                  {
                    content: {
                      parts: [{ functionCall: { id: "fc-7", name: "get_weather", args: { city: "Rome" } } }]
                    },
                    finishReason: "STOP"
                  }
                ]
              }
            ])
          ])
        )
        const p = yield* provider(server)
        const { exit, parts } = yield* collect(p.stream({ prompt: "weather?", tools: [weather] }))
        assert.isTrue(Exit.isSuccess(exit))
        assert.deepStrictEqual(parts[0], {
          _tag: "ToolCall",
          call: { id: "fc-7", name: "get_weather", arguments: `{"city":"Rome"}` }
        })
        assert.strictEqual(parts[1]?._tag === "Finish" && parts[1].finishReason, "tool_calls")
      })
    )

    it.effect("an error payload mid-stream fails after the delivered text", () =>
      Effect.gen(function* () {
        const body = Server.sse([streamChunk("Hello "), googleError(500, "INTERNAL", "An internal error has occurred")])
        const server = yield* Server.make((_, res) => Server.chunked(res, [body], { end: "hang" }))
        const p = yield* provider(server)
        const { exit, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(text, "Hello ")
        const error = modelErrorOf(exit)
        assert.strictEqual(error.reason, "Overloaded")
        assert.strictEqual(error.status, 500)
        assert.include(error.message, "An internal error has occurred")
      })
    )

    it.effect("a 429 error object in the stream keeps Google's RetryInfo as retryAfter, as a 429 status does", () =>
      Effect.gen(function* () {
        const quota = googleError(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota", [
          { "@type": "type.googleapis.com/google.rpc.RetryInfo", retryDelay: "36s" }
        ])
        const server = yield* Server.make((_, res) => Server.chunked(res, [Server.sse([quota])], { end: "hang" }))
        const p = yield* provider(server)
        const error = modelErrorOf((yield* collect(p.stream({ prompt: "hi" }))).exit)
        assert.strictEqual(error.reason, "RateLimited")
        assert.deepStrictEqual(error.retryAfter, Duration.seconds(36))
      })
    )

    it.effect("an error event whose data is plain text fails with that text, not as a malformed answer", () =>
      Effect.gen(function* () {
        const body = Server.sse([streamChunk("Hello "), { event: "error", data: "backend unavailable" }])
        const server = yield* Server.make((_, res) => Server.chunked(res, [body], { end: "hang" }))
        const p = yield* provider(server)
        const { exit, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(text, "Hello ")
        const error = modelErrorOf(exit)
        assert.notStrictEqual(error.reason, "Decode")
        assert.include(error.message, "backend unavailable")
      })
    )

    it.effect(
      "a connection cut after the finishReason chunk (no terminator to wait for) ends the stream finished",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.chunked(res, [Server.sse([streamChunk("a")]), Server.sse([streamChunk("b", "STOP")])], {
              end: "destroy"
            })
          )
          const p = yield* provider(server)
          const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
          assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
          assert.strictEqual(text, "ab")
          const finish = parts.at(-1)
          assert.strictEqual(finish?._tag === "Finish" ? finish.finishReason : undefined, "stop")
        })
    )

    it.effect("a stream that ends or is cut before a finishReason is Transport after its text", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          Server.chunked(res, [Server.sse([streamChunk("a")]), Server.sse([streamChunk("b")])], {
            end: req.path.includes("cut") ? "destroy" : "end"
          })
        )
        const p = yield* provider(server)
        const ended = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(ended.text, "ab")
        assert.strictEqual(modelErrorOf(ended.exit).reason, "Transport")
        const cut = yield* collect(p.stream({ prompt: "hi", model: "cut" }))
        assert.strictEqual(cut.text, "ab")
        assert.strictEqual(modelErrorOf(cut.exit).reason, "Transport")
      })
    )

    it.effect(
      "a stall mid-stream ends with TimeoutError limit idle after streamIdleTimeout, with the text so far",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((_, res) =>
            Server.chunked(res, [Server.sse([streamChunk("half")])], { end: "hang" })
          )
          const p = yield* provider(server, { streamIdleTimeout: "5 seconds" })
          const first = yield* Deferred.make<void>()
          const consumer = yield* Effect.forkChild(
            Effect.exit(Stream.runForEach(p.stream({ prompt: "hi" }), () => Deferred.succeed(first, undefined)))
          )
          yield* Deferred.await(first)
          yield* TestClock.adjust("4999 millis")
          assert.isUndefined(consumer.pollUnsafe())
          yield* TestClock.adjust("1 millis")
          const error = failureOf(yield* Fiber.join(consumer))
          assert.strictEqual(error._tag, "TimeoutError")
          if (error._tag !== "TimeoutError") return
          assert.strictEqual(error.limit, "idle")
          assert.strictEqual(error.partialText, "half")
          yield* server.awaitAborted(1)
        })
    )

    it.effect("a server that stalls after its final chunk (finishReason, no close) finishes after a short wait", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [Server.sse([streamChunk("done"), streamChunk("", "STOP")])], { end: "hang" })
        )
        const p = yield* provider(server, { streamIdleTimeout: "20 seconds" })
        const parts = yield* drainStalled(p.stream({ prompt: "hi" }))
        assert.deepStrictEqual(
          parts.map((part) => (part._tag === "Finish" ? part.finishReason : part._tag)),
          ["TextDelta", "stop"]
        )
        yield* server.awaitAborted(1)
      })
    )

    it.effect("an endless stream is TooLarge at maxResponseBytes", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.endless(res, { chunk: `data: ${JSON.stringify(streamChunk("x".repeat(1000)))}\r\n\r\n` })
        )
        const p = yield* provider(server, { maxResponseBytes: 256 * 1024 })
        const { exit, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(modelErrorOf(exit).reason, "TooLarge")
        assert.isAbove(text.length, 0)
      })
    )
  })

  describe("embed", () => {
    it.effect("a vector of more than 65,536 dimensions is Decode naming it, counted before it is read", () =>
      Effect.gen(function* () {
        const values: Array<unknown> = Array.from({ length: 1_000_000 }, () => 0)
        // One value that is no number, far in: the count is refused before it is read.
        values[500_000] = "x"
        const server = yield* Server.make((_, res) => Server.json(res, 200, { embeddings: [{ values }] }))
        const p = yield* provider(server)
        const error = yield* failing(p.embed({ texts: ["a"] }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "embeddings[0].values"])
        assert.include(error.message, "65536")
      })
    )

    it.effect("batchEmbedContents in batches of 100, vectors in input order, dimensions passed", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) => {
          const requests = (
            req.json as { requests: ReadonlyArray<{ content: { parts: ReadonlyArray<{ text: string }> } }> }
          ).requests
          Server.json(res, 200, {
            embeddings: requests.map((r) => ({ values: [Number(r.content.parts[0]!.text), 0] }))
          })
        })
        const p = yield* provider(server, { embeddingDimensions: 2 })
        const texts = Array.from({ length: 250 }, (_, i) => String(i)) as unknown as readonly [string, ...Array<string>]
        const answer = yield* p.embed({ texts })
        assert.deepStrictEqual(
          answer.vectors.map((v) => v[0]),
          texts.map(Number)
        )
        const requests = yield* server.requests
        assert.deepStrictEqual(
          requests.map((r) => (r.json as { requests: ReadonlyArray<unknown> }).requests.length),
          [100, 100, 50]
        )
        assert.strictEqual(requests[0]?.path, "/v1beta/models/gemini-embedding-001:batchEmbedContents")
        assert.deepStrictEqual((requests[2]!.json as { requests: ReadonlyArray<unknown> }).requests[0], {
          model: "models/gemini-embedding-001",
          content: { parts: [{ text: "200" }] },
          outputDimensionality: 2
        })
      })
    )

    it.effect(
      "a bad vector in a later batch is named by its index in that answer, the batch and text in the message",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) => {
            const requests = (
              req.json as { requests: ReadonlyArray<{ content: { parts: ReadonlyArray<{ text: string }> } }> }
            ).requests
            Server.json(res, 200, {
              embeddings: requests.map((r) => ({ values: r.content.parts[0]!.text === "205" ? [1] : [1, 2] }))
            })
          })
          const p = yield* provider(server)
          const texts = Array.from({ length: 250 }, (_, i) => String(i)) as unknown as readonly [
            string,
            ...Array<string>
          ]
          const error = yield* failing(p.embed({ texts }))
          assert.deepStrictEqual([error.reason, error.field], ["Decode", "embeddings[5]"])
          assert.include(error.message, "batch 3")
          assert.include(error.message, "input text 205")
        })
    )

    it.effect("vectors of another length than embeddingDimensions are Decode naming it", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, { embeddings: [{ values: [1, 2, 3] }, { values: [4, 5, 6] }] })
        )
        const p = yield* provider(server, { embeddingDimensions: 2 })
        const error = yield* failing(p.embed({ texts: ["a", "b"] }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "embeddings[0]")
        assert.include(error.message, "embeddingDimensions")
        const plain = yield* provider(server)
        assert.lengthOf((yield* plain.embed({ texts: ["a", "b"] })).vectors[1]!, 3)
      })
    )

    it.effect("an answer of more embeddings than a batch's texts is Decode, counted before they are read", () =>
      Effect.gen(function* () {
        const embeddings: Array<unknown> = Array.from({ length: 100_000 }, () => ({ values: [] }))
        embeddings[5_000] = { values: "x" }
        const server = yield* Server.make((_, res) => Server.json(res, 200, { embeddings }))
        const p = yield* provider(server)
        const error = yield* failing(p.embed({ texts: ["a", "b"] }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "embeddings"])
        assert.include(error.message, "at most 100")
      })
    )

    it.effect("a count of embeddings that does not match the texts is Decode", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, { embeddings: [{ values: [1] }] }))
        const p = yield* provider(server)
        const error = yield* failing(p.embed({ texts: ["a", "b"] }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "embeddings")
      })
    )
  })

  describe("options", () => {
    it.effect("an option whose getter throws is an OptionError naming it, not a defect", () =>
      Effect.gen(function* () {
        const options = Object.defineProperty({ apiKey: Redacted.make("k") }, "model", {
          enumerable: true,
          get: () => {
            throw new Error("no model")
          }
        }) as Gemini.Options
        const error = yield* Effect.flip(Layer.build(Gemini.layer(options)))
        assert.deepStrictEqual([error._tag, (error as { readonly path?: string }).path], ["OptionError", "model"])
      })
    )

    it.effect("every option is checked at build: an OptionError naming the field", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, response("x")))
        const pathOf = (options: Partial<Gemini.Options>) =>
          Effect.map(Effect.flip(provider(server, options)), (error) => {
            assert.strictEqual(error._tag, "OptionError")
            return error.path
          })
        assert.strictEqual(yield* pathOf({ timeout: Number.NaN }), "timeout")
        assert.strictEqual(yield* pathOf({ timeout: 0 }), "timeout")
        assert.strictEqual(yield* pathOf({ streamIdleTimeout: -1 }), "streamIdleTimeout")
        assert.strictEqual(yield* pathOf({ streamIdleTimeout: "soon" as Duration.Input }), "streamIdleTimeout")
        assert.strictEqual(yield* pathOf({ maxResponseBytes: 1.5 }), "maxResponseBytes")
        assert.strictEqual(yield* pathOf({ embeddingDimensions: 0 }), "embeddingDimensions")
        // Past the dimensions any answer may have (65,536): every vector would be refused after the call.
        assert.strictEqual(yield* pathOf({ embeddingDimensions: 65_537 }), "embeddingDimensions")
        assert.strictEqual(yield* pathOf({ baseUrl: "ftp://x" }), "baseUrl")
        // Paths are appended to it: a query or a fragment would swallow them.
        assert.strictEqual(yield* pathOf({ baseUrl: `${server.url}/?proxy-token=abc` }), "baseUrl")
        assert.strictEqual(yield* pathOf({ baseUrl: `${server.url}/#v1` }), "baseUrl")
        // The key goes there: plain http only on loopback, else it would cross the network in clear text.
        assert.strictEqual(yield* pathOf({ baseUrl: "http://generativelanguage.googleapis.com" }), "baseUrl")
        assert.strictEqual(yield* pathOf({ baseUrl: "http://192.168.1.10:8080" }), "baseUrl")
        // Unless the network is said to be the application's own (a checked boolean); the message says how.
        const refused = yield* Effect.flip(provider(server, { baseUrl: "http://192.168.1.10:8080" }))
        assert.include(refused.message, "192.168.1.10:8080")
        assert.include(refused.message, "allowPlainHttpSecrets")
        yield* provider(server, { baseUrl: "http://192.168.1.10:8080", allowPlainHttpSecrets: true })
        assert.strictEqual(yield* pathOf({ allowPlainHttpSecrets: "true" as never }), "allowPlainHttpSecrets")
        yield* provider(server, { baseUrl: "https://generativelanguage.googleapis.com" })
        yield* provider(server, { baseUrl: server.url.replace("127.0.0.1", "localhost") })
        // One path segment: the key would follow a query, a fragment or a `..` elsewhere.
        assert.strictEqual(yield* pathOf({ apiVersion: "v1beta?alt=x" }), "apiVersion")
        assert.strictEqual(yield* pathOf({ apiVersion: "../v1" }), "apiVersion")
        assert.strictEqual(yield* pathOf({ apiVersion: "v1/../../upload" }), "apiVersion")
        assert.strictEqual(yield* pathOf({ apiVersion: "" }), "apiVersion")
        yield* provider(server, { apiVersion: "v1" })
        assert.strictEqual(yield* pathOf({ model: " " }), "model")
        assert.strictEqual(yield* pathOf({ model: "../files" }), "model")
        assert.strictEqual(yield* pathOf({ embeddingModel: "models/.." }), "embeddingModel")
        // A value JSON cannot write was quoted with JSON.stringify in the message, which threw.
        assert.strictEqual(yield* pathOf({ model: 1n as never }), "model")
        // A misspelt limit left the default in place unseen; a getter that throws died.
        assert.strictEqual(yield* pathOf({ requestLimits: { maxInputChar: 5 } as never }), "requestLimits.maxInputChar")
        const throwing = Object.defineProperty({}, "maxMessages", {
          enumerable: true,
          get: () => {
            throw new Error("no limit")
          }
        })
        assert.strictEqual(yield* pathOf({ requestLimits: throwing }), "requestLimits.maxMessages")
        assert.strictEqual(yield* pathOf({ apiKey: KEY as unknown as Redacted.Redacted<string> }), "apiKey")
        assert.strictEqual(yield* pathOf({ requestLimits: { maxMessages: 0 } }), "requestLimits.maxMessages")
        assert.strictEqual(yield* pathOf({ headers: { "x-a": "b\nc" } }), 'headers["x-a"]')
        assert.strictEqual(yield* pathOf({ headers: { expect: "100-continue" } }), 'headers["expect"]')
        // The key's own header: it was replaced by the key, unsaid.
        assert.strictEqual(yield* pathOf({ headers: { "X-Goog-Api-Key": "other" } }), 'headers["X-Goog-Api-Key"]')
        // Headers the provider sets on each request, from what it sends and reads: the entry was replaced, unsaid.
        assert.strictEqual(yield* pathOf({ headers: { Accept: "application/json" } }), 'headers["Accept"]')
        assert.strictEqual(yield* pathOf({ headers: { "content-type": "text/plain" } }), 'headers["content-type"]')
        assert.strictEqual(yield* pathOf({ headers: { "Content-Length": "5" } }), 'headers["Content-Length"]')
        assert.strictEqual(yield* pathOf({ apiKey: Redacted.make("k\r\n") }), "apiKey")
        // GEMINI_API_KEY set but empty: every call would be refused as an unregistered caller.
        assert.strictEqual(yield* pathOf({ apiKey: Redacted.make("") }), "apiKey")
        assert.strictEqual(yield* pathOf({ apiKey: Redacted.make("  ") }), "apiKey")
        // null is a wrong value, not the default.
        assert.strictEqual(yield* pathOf({ streamIdleTimeout: null as never }), "streamIdleTimeout")
        assert.strictEqual(yield* pathOf({ model: null as never }), "model")
        assert.strictEqual(yield* pathOf({ apiVersion: null as never }), "apiVersion")
        // A misspelt key is refused, not left at its default; so are options that are not an object.
        assert.strictEqual(yield* pathOf({ embedingModel: "text-embedding-004" } as never), "embedingModel")
        const notAnObject = yield* Effect.flip(Gemini.make(null as never))
        assert.strictEqual(notAnObject.path, "options")
      })
    )

    it.effect("a long apiVersion or model is shown bounded in the OptionError, as every check shows a value", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, response("x")))
        const cases: ReadonlyArray<readonly [Partial<Gemini.Options>, string, string]> = [
          [{ apiVersion: `v1/${"x".repeat(5_000)}` }, "apiVersion", `"v1/${"x".repeat(77)}"… (5,003 characters)`],
          [{ model: `../${"m".repeat(5_000)}` }, "model", `"../${"m".repeat(77)}"… (5,003 characters)`]
        ]
        for (const [options, field, shown] of cases) {
          const error = yield* Effect.flip(provider(server, options))
          assert.strictEqual(error._tag, "OptionError")
          assert.strictEqual(error.path, field)
          // Its first 80 characters and its length (Input.shown): 120 of them, unsaid how many more, was not.
          assert.include(error.message, shown)
          assert.isBelow(error.message.length, 300)
        }
      })
    )

    it.effect("layerConfig reads the key as a secret from Config", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, response("configured")))
        const answer = yield* Effect.gen(function* () {
          const p = yield* Model.ModelProvider
          return yield* p.generate({ prompt: "x" })
        }).pipe(
          Effect.provide(
            Gemini.layerConfig().pipe(
              Layer.provide(
                ConfigProvider.layer(ConfigProvider.fromUnknown({ GEMINI_API_KEY: KEY, GEMINI_BASE_URL: server.url }))
              )
            )
          )
        )
        assert.strictEqual(answer.text, "configured")
        assert.strictEqual((yield* server.requests)[0]?.headers["x-goog-api-key"], KEY)
      })
    )

    it.effect("transformClient wraps the client once, at build", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, response("ok")))
        let built = 0
        const p = yield* provider(server, {
          transformClient: (client) => {
            built++
            return HttpClient.mapRequest(client, HttpClientRequest.setHeader("x-proxy", "yes"))
          }
        })
        yield* p.generate({ prompt: "1" })
        yield* p.generate({ prompt: "2" })
        assert.strictEqual(built, 1)
        assert.deepStrictEqual(
          (yield* server.requests).map((r) => r.headers["x-proxy"]),
          ["yes", "yes"]
        )
      })
    )
  })
})

describe("Gemini over fetch", () => {
  it.live("a redirect is not followed: the key header never reaches the other origin", () =>
    Effect.gen(function* () {
      const elsewhere = yield* Server.make((_, res) => Server.json(res, 200, response("from elsewhere")))
      const redirecting = yield* Server.make((req, res) => {
        res.writeHead(307, { location: `${elsewhere.url}${req.path}` })
        res.end()
      })
      const p = yield* provider(redirecting).pipe(Effect.provide(FetchHttpClient.layer))
      const error = yield* Effect.flip(p.generate({ prompt: "hi" }))
      assert.strictEqual(error._tag, "ModelError")
      assert.strictEqual((yield* elsewhere.requests).length, 0)
    })
  )
})

describe("Gemini with a transformClient that follows redirects", () => {
  it.live("a 302 to another origin is not followed: the key header never reaches it", () =>
    Effect.gen(function* () {
      const elsewhere = yield* Server.make((_, res) => Server.json(res, 200, response("from elsewhere")))
      const redirecting = yield* Server.make((req, res) => {
        res.writeHead(302, { location: `${elsewhere.url}${req.path}` })
        res.end()
      })
      const p = yield* provider(redirecting, { transformClient: HttpClient.followRedirects() })
      const error = yield* Effect.flip(p.generate({ prompt: "hi" }))
      assert.strictEqual(error._tag, "ModelError")
      assert.notInclude(String(error.message), KEY)
      assert.include(error.message, "HTTP 302")
      assert.deepStrictEqual(
        (yield* elsewhere.requests).map((r) => r.headers["x-goog-api-key"]),
        []
      )
      assert.strictEqual((yield* redirecting.requests)[0]?.headers["x-goog-api-key"], KEY)
    }).pipe(Effect.provide(NodeHttpClient.layerUndici))
  )

  it.live("a redirect on the same origin is followed, with the key", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((req, res) => {
        if (req.path.startsWith("/moved")) return Server.json(res, 200, response("moved"))
        res.writeHead(307, { location: `/moved${req.path}` })
        res.end()
      })
      const p = yield* provider(server, { transformClient: HttpClient.followRedirects() })
      const answer = yield* p.generate({ prompt: "hi" })
      assert.strictEqual(answer.text, "moved")
      assert.deepStrictEqual(
        (yield* server.requests).map((r) => r.headers["x-goog-api-key"]),
        [KEY, KEY]
      )
    }).pipe(Effect.provide(FetchHttpClient.layer))
  )

  it.live("a middleware that points the provider at a proxy's origin still sends it the key", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) => Server.json(res, 500, { error: "not here" }))
      const proxy = yield* Server.make((_, res) => Server.json(res, 200, response("via proxy")))
      const p = yield* provider(upstream, {
        transformClient: (client) =>
          client.pipe(
            HttpClient.mapRequest((request) =>
              HttpClientRequest.setUrl(request, request.url.replace(upstream.url, proxy.url))
            ),
            HttpClient.followRedirects()
          )
      })
      const answer = yield* p.generate({ prompt: "hi" })
      assert.strictEqual(answer.text, "via proxy")
      assert.deepStrictEqual(
        (yield* proxy.requests).map((r) => r.headers["x-goog-api-key"]),
        [KEY]
      )
      assert.strictEqual((yield* upstream.requests).length, 0)
    }).pipe(Effect.provide(NodeHttpClient.layerUndici))
  )
})

layer(NodeHttpClient.layerUndici)("Gemini usage estimates", (it) => {
  it.effect("without usageMetadata, a turn of function calls is estimated from its calls, not as 0 output tokens", () =>
    Effect.gen(function* () {
      const city = "x".repeat(800)
      const answer = {
        candidates: [
          {
            content: { role: "model", parts: [{ functionCall: { name: "get_weather", args: { city } } }] },
            finishReason: "STOP"
          }
        ]
      }
      const server = yield* Server.make((req, res) =>
        req.search.get("alt") === "sse" ? Server.chunked(res, [Server.sse([answer])]) : Server.json(res, 200, answer)
      )
      const p = yield* provider(server)
      const generated = yield* p.generate({ prompt: "x" })
      const { parts } = yield* collect(p.stream({ prompt: "x" }))
      const finish = parts.find((part) => part._tag === "Finish")
      for (const usage of [generated.usage, finish?._tag === "Finish" ? finish.usage : undefined]) {
        assert.isAtLeast(usage?.outputTokens ?? 0, Math.ceil(city.length / 4))
      }
    })
  )
})
