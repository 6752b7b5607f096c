import { FetchHttpClient } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, layer, it as vitest } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Redacted, Stream, TestClock } from "effect"
import type { ModelError } from "../../src/AiError.js"
import type * as Model from "../../src/Model.js"
import * as Http from "../../src/internal/http.js"
import * as OpenAiCompat from "../../src/Model/OpenAiCompat.js"
import * as Server from "../utils/httpServer.js"

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

const chunk = (content: string | null, finish: string | null = null) => ({
  id: "chatcmpl-1",
  object: "chat.completion.chunk",
  created: 1_700_000_000,
  model: "gpt-4o-mini-2024-07-18",
  choices: [{ index: 0, delta: content === null ? {} : { content }, logprobs: null, finish_reason: finish }]
})

const usageChunk = {
  id: "chatcmpl-1",
  object: "chat.completion.chunk",
  created: 1_700_000_000,
  model: "gpt-4o-mini-2024-07-18",
  choices: [],
  usage: { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13 }
}

const sse = (events: ReadonlyArray<unknown>, eol = "\r\n"): string =>
  events
    .map((e) =>
      typeof e === "string" && e.startsWith(":")
        ? `${e}${eol}${eol}`
        : `data: ${typeof e === "string" ? e : JSON.stringify(e)}${eol}${eol}`
    )
    .join("")

const collect = (stream: Stream.Stream<Model.StreamPart, Model.Service extends never ? never : unknown>) =>
  Effect.gen(function* () {
    const parts: Array<Model.StreamPart> = []
    const exit = yield* Effect.exit(Stream.runForEach(stream, (part) => Effect.sync(() => parts.push(part))))
    const text = parts.flatMap((p) => (p._tag === "TextDelta" ? [p.text] : [])).join("")
    return { parts, exit, text }
  })

const failureOf = (exit: Exit.Exit<unknown, unknown>): ModelError => {
  assert.isTrue(Exit.isFailure(exit))
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  const error = Cause.failureOption(exit.cause)
  assert.isTrue(error._tag === "Some", Cause.pretty(exit.cause))
  if (error._tag === "None") throw new Error("no failure")
  const e = error.value as ModelError
  assert.strictEqual(e._tag, "ModelError")
  return e
}

const bodyOf = (request: Server.Recorded | undefined): Record<string, unknown> =>
  (request?.json ?? {}) as Record<string, unknown>

const UNICODE = "Héllo wörld 🌍, 日本語のテキスト!"

layer(NodeHttpClient.layerUndici)("OpenAiCompat", (it) => {
  describe("generate", () => {
    it.scoped("sends the documented request and reads the answer", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, completion("Paris.")))
        const p = yield* provider(server, { organization: "org-42" })
        const answer = yield* p.generate({
          system: "Be brief.",
          prompt: "Capital of France?",
          maxTokens: 20,
          temperature: 0.2,
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
          stop: ["\n"]
        })
      })
    )

    it.scoped("estimates usage when the server reports none, and sends no key when none is set", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, completion("12345678", { usage: null })))
        const p = yield* OpenAiCompat.make({ baseUrl: `${server.url}/v1`, model: "llama3" })
        const answer = yield* p.generate({ prompt: "abcd" })
        assert.deepStrictEqual(answer.usage, { inputTokens: 1, outputTokens: 2, totalTokens: 3 })
        const [request] = yield* server.requests
        assert.isUndefined(request?.headers.authorization)
      })
    )

    it.scoped("a 429 is RateLimited with retryAfter from Retry-After seconds", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(
            res,
            429,
            { error: { message: "Rate limit reached for gpt-4o-mini", type: "requests", code: "rate_limit_exceeded" } },
            { "retry-after": "7" }
          )
        )
        const p = yield* provider(server)
        const error = yield* Effect.flip(p.generate({ prompt: "hi" }))
        assert.strictEqual(error._tag, "ModelError")
        if (error._tag !== "ModelError") return
        assert.strictEqual(error.reason, "RateLimited")
        assert.strictEqual(error.status, 429)
        assert.deepStrictEqual(error.retryAfter, Duration.seconds(7))
        assert.include(error.message, "Rate limit reached")
      })
    )

    it.scoped("Retry-After as an HTTP-date is relative to the Clock", () =>
      Effect.gen(function* () {
        const now = Date.parse("2026-01-01T00:00:00Z")
        yield* TestClock.setTime(now)
        const server = yield* Server.make((_, res) =>
          Server.json(
            res,
            429,
            { error: { message: "slow down" } },
            {
              "retry-after": new Date(now + 42_000).toUTCString()
            }
          )
        )
        const p = yield* provider(server)
        const error = yield* Effect.flip(p.generate({ prompt: "hi" }))
        assert.strictEqual(error._tag === "ModelError" && error.reason, "RateLimited")
        assert.deepStrictEqual(error._tag === "ModelError" ? error.retryAfter : undefined, Duration.millis(42_000))
      })
    )

    it.scoped(
      "maps statuses: 500/529 Overloaded, 401 Unauthorized, 400 InvalidRequest with the field, 404 model, 504 Timeout",
      () =>
        Effect.gen(function* () {
          const answers: Record<string, [number, unknown]> = {
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
            e: [
              404,
              {
                error: {
                  message: "The model `nope` does not exist",
                  type: "invalid_request_error",
                  param: null,
                  code: "model_not_found"
                }
              }
            ],
            f: [504, "<html>gateway timeout</html>"],
            g: [
              429,
              {
                error: {
                  message: "You exceeded your current quota",
                  type: "insufficient_quota",
                  code: "insufficient_quota"
                }
              }
            ],
            h: [
              422,
              { object: "error", message: "max_tokens too large", type: "BadRequestError", param: null, code: 422 }
            ]
          }
          const server = yield* Server.make((req, res) => {
            const [status, body] = answers[(req.json as { messages: Array<{ content: string }> }).messages[0]!.content]!
            Server.json(res, status, body)
          })
          const p = yield* provider(server)
          const reasonOf = (key: string) =>
            Effect.map(Effect.flip(p.generate({ prompt: key })), (e) => (e._tag === "ModelError" ? e : undefined))
          assert.strictEqual((yield* reasonOf("a"))?.reason, "Overloaded")
          assert.strictEqual((yield* reasonOf("b"))?.reason, "Overloaded")
          assert.strictEqual((yield* reasonOf("c"))?.reason, "Unauthorized")
          const d = yield* reasonOf("d")
          assert.strictEqual(d?.reason, "InvalidRequest")
          assert.strictEqual(d?.field, "messages")
          const e = yield* reasonOf("e")
          assert.strictEqual(e?.reason, "InvalidRequest")
          assert.strictEqual(e?.field, "model")
          const f = yield* reasonOf("f")
          assert.strictEqual(f?.reason, "Timeout")
          assert.include(f?.message, "gateway timeout")
          assert.strictEqual((yield* reasonOf("g"))?.reason, "Unauthorized")
          assert.strictEqual((yield* reasonOf("h"))?.reason, "InvalidRequest")
        })
    )

    it.scoped("a malformed body is Decode naming the field", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          (req.json as { messages: Array<{ content: string }> }).messages[0]!.content === "json"
            ? Server.json(res, 200, '{"choices": [')
            : Server.json(res, 200, completion(42))
        )
        const p = yield* provider(server)
        const bad = yield* Effect.flip(p.generate({ prompt: "field" }))
        assert.strictEqual(bad._tag === "ModelError" && bad.reason, "Decode")
        assert.strictEqual(bad._tag === "ModelError" && bad.field, "choices.0.message.content")
        const notJson = yield* Effect.flip(p.generate({ prompt: "json" }))
        assert.strictEqual(notJson._tag === "ModelError" && notJson.reason, "Decode")
        assert.strictEqual(notJson._tag === "ModelError" && notJson.field, "(root)")
      })
    )

    it.scoped("an invalid request fails before any HTTP call", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, completion("x")))
        const p = yield* provider(server)
        const error = yield* Effect.flip(p.generate({ prompt: "a", messages: [{ role: "user", content: "b" }] }))
        assert.strictEqual(error._tag === "ModelError" && error.reason, "InvalidRequest")
        assert.lengthOf(yield* server.requests, 0)
      })
    )

    it.scoped("a refused connection is Transport", () =>
      Effect.gen(function* () {
        const url = yield* Effect.scoped(
          Effect.map(
            Server.make(() => undefined),
            (s) => s.url
          )
        )
        const p = yield* OpenAiCompat.make({ baseUrl: `${url}/v1`, apiKey: Redacted.make(KEY) })
        const error = yield* Effect.flip(p.generate({ prompt: "hi" }))
        assert.strictEqual(error._tag === "ModelError" && error.reason, "Transport")
      })
    )

    it.scoped("the key never appears in an error, its Cause, or the options", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          Server.json(res, 401, {
            error: {
              message: `Incorrect API key provided: ${String(req.headers.authorization).slice(7)}`,
              type: "invalid_request_error",
              code: "invalid_api_key"
            }
          })
        )
        const options: OpenAiCompat.Options = { baseUrl: `${server.url}/v1`, apiKey: Redacted.make(KEY) }
        const p = yield* OpenAiCompat.make(options)
        const exit = yield* Effect.exit(p.generate({ prompt: "hi" }))
        const error = failureOf(exit)
        assert.strictEqual(error.reason, "Unauthorized")
        if (Exit.isSuccess(exit)) return
        for (const text of [JSON.stringify(error), String(error), Cause.pretty(exit.cause), error.message]) {
          assert.notInclude(text, KEY)
        }
        assert.include(error.message, "Incorrect API key provided")
        assert.notInclude(JSON.stringify(options), KEY)
        assert.notInclude(String(options.apiKey), KEY)
        const streamed = yield* collect(p.stream({ prompt: "hi" }))
        const streamError = failureOf(streamed.exit)
        if (Exit.isFailure(streamed.exit)) assert.notInclude(Cause.pretty(streamed.exit.cause), KEY)
        assert.notInclude(JSON.stringify(streamError), KEY)
      })
    )
  })

  describe("stream", () => {
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

    it.scoped("SSE split inside CRLF pairs and UTF-8 characters, with comments and a usage chunk", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.chunked(res, Server.splitAwkward(sse(events))))
        const p = yield* provider(server)
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.isTrue(Exit.isSuccess(exit))
        assert.strictEqual(text, UNICODE)
        const finishes = parts.filter((x) => x._tag === "Finish")
        assert.lengthOf(finishes, 1)
        assert.deepStrictEqual(parts[parts.length - 1], {
          _tag: "Finish",
          finishReason: "stop",
          usage: { inputTokens: 9, outputTokens: 4, totalTokens: 13 },
          provider: "oai",
          model: "gpt-4o-mini-2024-07-18"
        })
        const [request] = yield* server.requests
        assert.deepStrictEqual(bodyOf(request)["stream"], true)
        assert.deepStrictEqual(bodyOf(request)["stream_options"], { include_usage: true })
        assert.strictEqual(request?.headers.accept, "text/event-stream")
      })
    )

    it.scoped("the same stream cut every 7 bytes, LF line ends", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, Server.splitBytes(sse(events, "\n"), 7), { pauseMs: 0 })
        )
        const p = yield* provider(server)
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.isTrue(Exit.isSuccess(exit))
        assert.strictEqual(text, UNICODE)
        assert.strictEqual(parts.filter((x) => x._tag === "Finish").length, 1)
      })
    )

    it.scoped("an `event: error` mid-stream fails after the text already delivered", () =>
      Effect.gen(function* () {
        const body =
          sse([chunk("Hel"), chunk("lo")]) +
          'event: error\r\ndata: {"error":{"message":"The server had an error while processing your request","type":"server_error"}}\r\n\r\n'
        const server = yield* Server.make((_, res) => Server.chunked(res, Server.splitAwkward(body), { end: "hang" }))
        const p = yield* provider(server)
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(text, "Hello")
        assert.isFalse(parts.some((x) => x._tag === "Finish"))
        const error = failureOf(exit)
        assert.strictEqual(error.reason, "Overloaded")
        assert.include(error.message, "server had an error")
      })
    )

    it.scoped("an error object in a data line (vLLM style) fails with its status' reason", () =>
      Effect.gen(function* () {
        const body = sse([
          chunk("partial"),
          { object: "error", message: "context length exceeded", type: "BadRequestError", param: null, code: 400 }
        ])
        const server = yield* Server.make((_, res) => Server.chunked(res, [body], { end: "hang" }))
        const p = yield* provider(server)
        const { exit, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(text, "partial")
        const error = failureOf(exit)
        assert.strictEqual(error.reason, "InvalidRequest")
        assert.strictEqual(error.status, 400)
      })
    )

    it.scoped("a connection cut mid-stream is Transport after the delivered text", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [sse([chunk("one ")]), sse([chunk("two ")])], { end: "destroy" })
        )
        const p = yield* provider(server)
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(text, "one two ")
        assert.isFalse(parts.some((x) => x._tag === "Finish"))
        assert.strictEqual(failureOf(exit).reason, "Transport")
      })
    )

    it.scoped("a stream that ends cleanly without finish or [DONE] is an error, not a silent end", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.chunked(res, [sse([chunk("one "), chunk("two")])]))
        const p = yield* provider(server)
        const { exit, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(text, "one two")
        const error = failureOf(exit)
        assert.strictEqual(error.reason, "Transport")
        assert.include(error.message, "ended before")
      })
    )

    it.scoped("a finish_reason without [DONE] or usage still finishes, usage estimated", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [sse([chunk("abcdefgh"), chunk(null, "length")])])
        )
        const p = yield* provider(server, { streamUsage: false })
        const { exit, parts } = yield* collect(p.stream({ prompt: "abcd" }))
        assert.isTrue(Exit.isSuccess(exit))
        assert.deepStrictEqual(parts[parts.length - 1], {
          _tag: "Finish",
          finishReason: "length",
          usage: { inputTokens: 1, outputTokens: 2, totalTokens: 3 },
          provider: "oai",
          model: "gpt-4o-mini-2024-07-18"
        })
        const [request] = yield* server.requests
        assert.isUndefined(bodyOf(request)["stream_options"])
      })
    )

    it.scoped("a 429 before the stream starts is RateLimited with retryAfter", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 429, { error: { message: "slow down" } }, { "retry-after": "3" })
        )
        const p = yield* provider(server)
        const { exit, parts } = yield* collect(p.stream({ prompt: "hi" }))
        assert.lengthOf(parts, 0)
        const error = failureOf(exit)
        assert.strictEqual(error.reason, "RateLimited")
        assert.deepStrictEqual(error.retryAfter, Duration.seconds(3))
      })
    )
  })

  describe("interruption", () => {
    // `layer(...)` has no live variant: these use the top-level `it` and provide the client themselves.
    vitest.scopedLive("a hanging request is interrupted by a timeout and its connection closed", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.hang(res))
        const p = yield* provider(server)
        const result = yield* Effect.either(Effect.timeout(p.generate({ prompt: "hi" }), "150 millis"))
        assert.strictEqual(result._tag === "Left" && result.left._tag, "TimeoutException")
        yield* server.awaitAborted(1).pipe(Effect.timeout("2 seconds"))
        assert.strictEqual(yield* server.aborted, 1)
      }).pipe(Effect.provide(NodeHttpClient.layerUndici))
    )

    vitest.scopedLive("a consumer that takes 2 deltas and leaves closes the upstream connection", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [sse([chunk("a"), chunk("b"), chunk("c")])], { end: "hang" })
        )
        const p = yield* provider(server)
        const taken = yield* Stream.runCollect(Stream.take(p.stream({ prompt: "hi" }), 2))
        assert.strictEqual(taken.length, 2)
        yield* server.awaitAborted(1).pipe(Effect.timeout("2 seconds"))
        assert.strictEqual(yield* server.aborted, 1)
      }).pipe(Effect.provide(NodeHttpClient.layerUndici))
    )

    vitest.scopedLive("a stream that stalls after its first delta is interrupted by a timeout", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.chunked(res, [sse([chunk("first")])], { end: "hang" }))
        const p = yield* provider(server)
        const seen: Array<string> = []
        const result = yield* p.stream({ prompt: "hi" }).pipe(
          Stream.runForEach((part) => Effect.sync(() => part._tag === "TextDelta" && seen.push(part.text))),
          Effect.timeout("200 millis"),
          Effect.either
        )
        assert.strictEqual(result._tag, "Left")
        assert.deepStrictEqual(seen, ["first"])
        yield* server.awaitAborted(1).pipe(Effect.timeout("2 seconds"))
      }).pipe(Effect.provide(NodeHttpClient.layerUndici))
    )
  })

  describe("embed", () => {
    it.scoped("orders vectors by index and asks for floats", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, {
            object: "list",
            data: [
              { object: "embedding", index: 2, embedding: [0.3, 0.3] },
              { object: "embedding", index: 0, embedding: [0.1, 0.1] },
              { object: "embedding", index: 1, embedding: [0.2, 0.2] }
            ],
            model: "text-embedding-3-small",
            usage: { prompt_tokens: 6, total_tokens: 6 }
          })
        )
        const p = yield* provider(server)
        const answer = yield* p.embed({ texts: ["a", "b", "c"] })
        assert.deepStrictEqual(answer.vectors, [
          [0.1, 0.1],
          [0.2, 0.2],
          [0.3, 0.3]
        ])
        assert.deepStrictEqual(answer.usage, { inputTokens: 6, outputTokens: 0, totalTokens: 6 })
        const [request] = yield* server.requests
        assert.strictEqual(request?.path, "/v1/embeddings")
        assert.deepStrictEqual(request?.json, {
          model: "text-embedding-3-small",
          input: ["a", "b", "c"],
          encoding_format: "float"
        })
      })
    )

    it.scoped("accepts base64 float32 from servers that ignore encoding_format", () =>
      Effect.gen(function* () {
        const b64 = Buffer.from(new Float32Array([0.5, -2, 1.25]).buffer).toString("base64")
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, { data: [{ index: 0, embedding: b64 }], model: "m" })
        )
        const p = yield* provider(server)
        const answer = yield* p.embed({ texts: ["a"] })
        assert.deepStrictEqual(answer.vectors, [[0.5, -2, 1.25]])
      })
    )

    it.scoped("a missing or duplicated index is Decode on data", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.json(res, 200, {
            data: [
              { index: 0, embedding: [1] },
              { index: 0, embedding: [2] }
            ]
          })
        )
        const p = yield* provider(server)
        const error = yield* Effect.flip(p.embed({ texts: ["a", "b"] }))
        assert.strictEqual(error._tag === "ModelError" && error.reason, "Decode")
        assert.strictEqual(error._tag === "ModelError" && error.field, "data")
      })
    )
  })
})

describe("internal SSE framing", () => {
  const ctx = { provider: "t" }
  const bytes = (...parts: ReadonlyArray<string>) => Stream.fromIterable(parts.map((p) => new TextEncoder().encode(p)))

  vitest.effect("a CRLF split across reads keeps the event name and joins multi-line data", () =>
    Effect.gen(function* () {
      const events = yield* Stream.runCollect(
        Http.sseEvents(bytes("event: error\r", "\ndata: a\r", "\ndata: b\r\n\r", "\n: comment\r\n\r\ndata: c\r\r"), ctx)
      )
      assert.deepStrictEqual(
        Array.from(events, (e) => [e.event, e.data]),
        [
          ["error", "a\nb"],
          ["message", "c"]
        ]
      )
    })
  )

  vitest.effect("a multi-byte character split across reads is decoded whole", () =>
    Effect.gen(function* () {
      const encoded = new TextEncoder().encode("data: 🌍\n\n")
      const events = yield* Stream.runCollect(
        Http.sseEvents(Stream.make(encoded.subarray(0, 8), encoded.subarray(8)), ctx)
      )
      assert.deepStrictEqual(
        Array.from(events, (e) => e.data),
        ["🌍"]
      )
    })
  )
})

describe("OpenAiCompat over FetchHttpClient", () => {
  const fetchLayer = FetchHttpClient.layer

  vitest.scopedLive("streams, reports a cut as Transport, and closes a hanging request on timeout", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((req, res) => {
        const mode = (req.json as { messages: Array<{ content: string }> }).messages[0]!.content
        if (mode === "ok")
          return Server.chunked(
            res,
            Server.splitAwkward(sse([chunk("Grüß "), chunk("🌍"), chunk(null, "stop"), "[DONE]"]))
          )
        if (mode === "cut") return Server.chunked(res, [sse([chunk("half")])], { end: "destroy" })
        return Server.hang(res)
      })
      const p = yield* provider(server)
      const ok = yield* collect(p.stream({ prompt: "ok" }))
      assert.isTrue(Exit.isSuccess(ok.exit))
      assert.strictEqual(ok.text, "Grüß 🌍")
      const cut = yield* collect(p.stream({ prompt: "cut" }))
      assert.strictEqual(cut.text, "half")
      assert.strictEqual(failureOf(cut.exit).reason, "Transport")
      const hung = yield* Effect.either(Effect.timeout(p.generate({ prompt: "hang" }), "150 millis"))
      assert.strictEqual(hung._tag, "Left")
      yield* server.awaitAborted(1).pipe(Effect.timeout("2 seconds"))
    }).pipe(Effect.provide(fetchLayer))
  )
})

describe("internal Retry-After and status mapping", () => {
  vitest("parses seconds, retry-after-ms, HTTP-dates (past dates are zero) and ignores junk", () => {
    const now = Date.parse("2026-01-01T00:00:00Z")
    assert.deepStrictEqual(Http.parseRetryAfter({ "retry-after": "120" }, now), Duration.seconds(120))
    assert.deepStrictEqual(
      Http.parseRetryAfter({ "retry-after-ms": "250", "retry-after": "9" }, now),
      Duration.millis(250)
    )
    assert.deepStrictEqual(
      Http.parseRetryAfter({ "retry-after": "Thu, 01 Jan 2026 00:00:30 GMT" }, now),
      Duration.seconds(30)
    )
    assert.deepStrictEqual(Http.parseRetryAfter({ "retry-after": "Wed, 31 Dec 2025 23:00:00 GMT" }, now), Duration.zero)
    assert.isUndefined(Http.parseRetryAfter({ "retry-after": "soon" }, now))
    assert.isUndefined(Http.parseRetryAfter({}, now))
  })

  vitest("classifies from status and structured codes, never message text", () => {
    const info = (fields: Partial<Http.ErrorInfo> = {}): Http.ErrorInfo => ({ reasons: [], ...fields })
    assert.strictEqual(Http.classify(429, info()), "RateLimited")
    assert.strictEqual(Http.classify(429, info({ code: "insufficient_quota" })), "Unauthorized")
    assert.strictEqual(Http.classify(400, info({ reasons: ["API_KEY_INVALID"] })), "Unauthorized")
    assert.strictEqual(Http.classify(400, info({ code: "content_filter" })), "ContentFilter")
    assert.strictEqual(Http.classify(529, info()), "Overloaded")
    assert.strictEqual(Http.classify(503, info()), "Overloaded")
    assert.strictEqual(Http.classify(408, info()), "Timeout")
    assert.strictEqual(Http.classify(404, info()), "InvalidRequest")
    assert.strictEqual(Http.classify(undefined, info({ type: "overloaded_error" })), "Overloaded")
    assert.strictEqual(Http.classify(undefined, info({ message: "rate limit exceeded" })), "Unknown")
  })
})
