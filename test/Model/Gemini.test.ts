import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, layer, it as vitest } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Redacted, Stream, Tracer } from "effect"
import type { ModelError } from "../../src/AiError.js"
import type * as Model from "../../src/Model.js"
import * as Gemini from "../../src/Model/Gemini.js"
import * as Server from "../utils/httpServer.js"

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

const sse = (events: ReadonlyArray<unknown>): string =>
  events.map((e) => (typeof e === "string" ? `${e}\r\n\r\n` : `data: ${JSON.stringify(e)}\r\n\r\n`)).join("")

const bodyOf = (request: Server.Recorded | undefined): Record<string, unknown> =>
  (request?.json ?? {}) as Record<string, unknown>

const collect = (stream: Stream.Stream<Model.StreamPart, unknown>) =>
  Effect.gen(function* () {
    const parts: Array<Model.StreamPart> = []
    const exit = yield* Effect.exit(Stream.runForEach(stream, (part) => Effect.sync(() => parts.push(part))))
    const text = parts.flatMap((p) => (p._tag === "TextDelta" ? [p.text] : [])).join("")
    return { parts, exit, text }
  })

const failureOf = (exit: Exit.Exit<unknown, unknown>): ModelError => {
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  const error = Cause.failureOption(exit.cause)
  if (error._tag === "None") throw new Error(Cause.pretty(exit.cause))
  return error.value as ModelError
}

const modelError = (effect: Effect.Effect<unknown, unknown>) => Effect.map(Effect.flip(effect), (e) => e as ModelError)

const googleError = (code: number, status: string, message: string, details: ReadonlyArray<unknown> = []) => ({
  error: { code, message, status, details }
})

layer(NodeHttpClient.layerUndici)("Gemini", (it) => {
  describe("generate", () => {
    it.scoped("generateContent: documented body, key in the header and never in the URL", () =>
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

    it.scoped("thought parts are not answer text; a blocked prompt is ContentFilter", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          String(req.path).includes("blocked")
            ? Server.json(res, 200, {
                promptFeedback: { blockReason: "SAFETY" },
                usageMetadata: { promptTokenCount: 3 }
              })
            : Server.json(
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
        )
        const p = yield* provider(server)
        const answer = yield* p.generate({ prompt: "?" })
        assert.strictEqual(answer.text, "42")
        assert.strictEqual(answer.finishReason, "length")
        const error = yield* modelError(p.generate({ prompt: "?", model: "blocked" }))
        assert.strictEqual(error.reason, "ContentFilter")
      })
    )

    it.scoped("errors: 429 RetryInfo and Retry-After, 400 API_KEY_INVALID is Unauthorized, 503, 404 model, 400", () =>
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
        const call = (model: string) => modelError(p.generate({ prompt: "x", model }))
        const quota = yield* call("quota")
        assert.strictEqual(quota.reason, "RateLimited")
        assert.deepStrictEqual(quota.retryAfter, Duration.seconds(36))
        assert.deepStrictEqual((yield* call("header")).retryAfter, Duration.seconds(5))
        const badKey = yield* call("badkey")
        assert.strictEqual(badKey.reason, "Unauthorized")
        assert.strictEqual(badKey.status, 400)
        const overloaded = yield* call("overloaded")
        assert.strictEqual(overloaded.reason, "Overloaded")
        assert.include(overloaded.message, "The model is overloaded")
        const missing = yield* call("missing")
        assert.strictEqual(missing.reason, "InvalidRequest")
        assert.strictEqual(missing.field, "model")
        assert.strictEqual((yield* call("bad")).reason, "InvalidRequest")
        assert.strictEqual((yield* call("denied")).reason, "Unauthorized")
      })
    )

    it.scoped("a malformed body is Decode naming the field", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, response("x", { candidates: [{ content: { parts: [{ text: 7 }] } }] }))
        )
        const p = yield* provider(server)
        const error = yield* modelError(p.generate({ prompt: "x" }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "candidates.0.content.parts.0.text")
      })
    )

    it.scoped("the key appears in no error, Cause, span attribute or options rendering", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          Server.json(
            res,
            400,
            googleError(400, "INVALID_ARGUMENT", `API key not valid: ${String(req.headers["x-goog-api-key"])}`, [
              { "@type": "type.googleapis.com/google.rpc.ErrorInfo", reason: "API_KEY_INVALID" }
            ])
          )
        )
        const spans: Array<Tracer.Span> = []
        const native = yield* Effect.tracer
        const recording = Tracer.make({
          span: (...args) => {
            const span = native.span(...args)
            spans.push(span)
            return span
          },
          context: native.context
        })
        const options: Gemini.Options = { baseUrl: server.url, apiKey: Redacted.make(KEY) }
        const p = yield* Gemini.make(options)
        const exit = yield* Effect.exit(p.generate({ prompt: "x" }).pipe(Effect.withTracer(recording)))
        const error = failureOf(exit)
        assert.strictEqual(error.reason, "Unauthorized")
        assert.include(error.message, "API key not valid")
        if (Exit.isSuccess(exit)) return
        for (const text of [JSON.stringify(error), String(error), Cause.pretty(exit.cause), JSON.stringify(options)]) {
          assert.notInclude(text, KEY)
        }
        assert.isAbove(spans.length, 1)
        const http = spans.find((s) => s.attributes.has("url.full"))
        assert.isDefined(http)
        assert.strictEqual(http?.attributes.get("http.request.header.x-goog-api-key"), "<redacted>")
        for (const span of spans) {
          for (const value of span.attributes.values()) assert.notInclude(String(value), KEY)
        }
      })
    )
  })

  describe("stream", () => {
    it.scoped("streamGenerateContent?alt=sse split at awkward bytes ends in one Finish with usage", () =>
      Effect.gen(function* () {
        const body = sse([
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
        assert.deepStrictEqual(bodyOf(request)["contents"], [{ role: "user", parts: [{ text: "hi" }] }])
      })
    )

    it.scoped("an error payload mid-stream fails after the delivered text", () =>
      Effect.gen(function* () {
        const body = sse([streamChunk("Hello "), googleError(500, "INTERNAL", "An internal error has occurred")])
        const server = yield* Server.make((_, res) => Server.chunked(res, [body], { end: "hang" }))
        const p = yield* provider(server)
        const { exit, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(text, "Hello ")
        const error = failureOf(exit)
        assert.strictEqual(error.reason, "Overloaded")
        assert.strictEqual(error.status, 500)
      })
    )

    it.scoped("a stream that ends or is cut before a finishReason is Transport after its text", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          Server.chunked(res, [sse([streamChunk("a")]), sse([streamChunk("b")])], {
            end: req.path.includes("cut") ? "destroy" : "end"
          })
        )
        const p = yield* provider(server)
        const ended = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(ended.text, "ab")
        assert.strictEqual(failureOf(ended.exit).reason, "Transport")
        const cut = yield* collect(p.stream({ prompt: "hi", model: "cut" }))
        assert.strictEqual(cut.text, "ab")
        assert.strictEqual(failureOf(cut.exit).reason, "Transport")
      })
    )
  })

  describe("embed", () => {
    it.scoped("one text uses embedContent, many use batchEmbedContents", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          req.path.endsWith(":embedContent")
            ? Server.json(res, 200, { embedding: { values: [0.1, 0.2, 0.3] } })
            : Server.json(res, 200, { embeddings: [{ values: [1, 2] }, { values: [3, 4] }] })
        )
        const p = yield* provider(server, { embeddingDimensions: 2 })
        const single = yield* p.embed({ texts: ["one"] })
        assert.deepStrictEqual(single.vectors, [[0.1, 0.2, 0.3]])
        const batch = yield* p.embed({ texts: ["a", "b"] })
        assert.deepStrictEqual(batch.vectors, [
          [1, 2],
          [3, 4]
        ])
        const [first, second] = yield* server.requests
        assert.strictEqual(first?.path, "/v1beta/models/gemini-embedding-001:embedContent")
        assert.deepStrictEqual(first?.json, {
          model: "models/gemini-embedding-001",
          content: { parts: [{ text: "one" }] },
          outputDimensionality: 2
        })
        assert.strictEqual(second?.path, "/v1beta/models/gemini-embedding-001:batchEmbedContents")
        assert.deepStrictEqual(second?.json, {
          requests: [
            { model: "models/gemini-embedding-001", content: { parts: [{ text: "a" }] }, outputDimensionality: 2 },
            { model: "models/gemini-embedding-001", content: { parts: [{ text: "b" }] }, outputDimensionality: 2 }
          ]
        })
      })
    )
  })
})

describe("Gemini interruption", () => {
  vitest.scopedLive("a hanging call is interrupted by a timeout and its connection closed", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) => Server.hang(res))
      const p = yield* provider(server)
      const result = yield* Effect.either(Effect.timeout(p.generate({ prompt: "hi" }), "150 millis"))
      assert.strictEqual(result._tag === "Left" && result.left._tag, "TimeoutException")
      yield* server.awaitAborted(1).pipe(Effect.timeout("2 seconds"))
      assert.strictEqual(yield* server.aborted, 1)
    }).pipe(Effect.provide(NodeHttpClient.layerUndici))
  )
})
