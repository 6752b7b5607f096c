import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, layer, it as vitest } from "@effect/vitest"
import { Cause, ConfigProvider, Duration, Effect, Exit, Layer, Stream } from "effect"
import type { ModelError } from "../../src/AiError.js"
import * as Model from "../../src/Model.js"
import * as Ollama from "../../src/Model/Ollama.js"
import * as Server from "../utils/httpServer.js"

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

const chatLine = (content: string) => ({
  model: "llama3.2",
  created_at: "2024-07-22T20:33:28.123648Z",
  message: { role: "assistant", content },
  done: false
})

const ndjson = (lines: ReadonlyArray<unknown>): string => lines.map((l) => `${JSON.stringify(l)}\n`).join("")

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
  const e = error.value as ModelError
  assert.strictEqual(e._tag, "ModelError")
  return e
}

const modelError = (effect: Effect.Effect<unknown, unknown>) => Effect.map(Effect.flip(effect), (e) => e as ModelError)

layer(NodeHttpClient.layerUndici)("Ollama", (it) => {
  describe("generate", () => {
    it.scoped("/api/chat: the documented request and answer", () =>
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

    it.scoped("api: generate sends prompts to /api/generate and conversations to /api/chat", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          req.path === "/api/generate"
            ? Server.json(res, 200, { ...final({ done_reason: "length" }), response: "The sky is blue." })
            : Server.json(res, 200, { ...final(), message: { role: "assistant", content: "chat" } })
        )
        const p = yield* provider(server, { api: "generate", model: "mistral" })
        const answer = yield* p.generate({ prompt: "Why is the sky blue?", system: "Short." })
        assert.strictEqual(answer.text, "The sky is blue.")
        assert.strictEqual(answer.finishReason, "length")
        const chat = yield* p.generate({ messages: [{ role: "user", content: "x" }] })
        assert.strictEqual(chat.text, "chat")
        const [first, second] = yield* server.requests
        assert.strictEqual(first?.path, "/api/generate")
        assert.deepStrictEqual(first?.json, {
          model: "mistral",
          prompt: "Why is the sky blue?",
          system: "Short.",
          stream: false
        })
        assert.strictEqual(second?.path, "/api/chat")
      })
    )

    it.scoped(
      "404 (model not pulled) is InvalidRequest on `model`; 500/503 Overloaded; 429 with Retry-After; 401",
      () =>
        Effect.gen(function* () {
          const answers: Record<string, [number, unknown, Record<string, string>?]> = {
            nope: [404, { error: 'model "nope" not found, try pulling it first' }],
            crash: [500, { error: "llama runner process has terminated: signal: killed" }],
            busy: [503, { error: "server busy, please try again.  maximum pending requests exceeded" }],
            rate: [429, { error: "too many requests" }, { "retry-after": "2" }],
            auth: [401, { error: "unauthorized" }]
          }
          const server = yield* Server.make((req, res) => {
            const [status, body, headers] = answers[String(bodyOf(req)["model"])]!
            Server.json(res, status, body, headers)
          })
          const p = yield* provider(server)
          const nope = yield* modelError(p.generate({ prompt: "x", model: "nope" }))
          assert.strictEqual(nope.reason, "InvalidRequest")
          assert.strictEqual(nope.field, "model")
          assert.include(nope.message, "try pulling it first")
          assert.strictEqual((yield* modelError(p.generate({ prompt: "x", model: "crash" }))).reason, "Overloaded")
          assert.strictEqual((yield* modelError(p.generate({ prompt: "x", model: "busy" }))).reason, "Overloaded")
          const rate = yield* modelError(p.generate({ prompt: "x", model: "rate" }))
          assert.strictEqual(rate.reason, "RateLimited")
          assert.deepStrictEqual(rate.retryAfter, Duration.seconds(2))
          assert.strictEqual((yield* modelError(p.generate({ prompt: "x", model: "auth" }))).reason, "Unauthorized")
        })
    )

    it.scoped("a malformed body is Decode naming the field", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, { ...final(), message: { content: 5 } }))
        const p = yield* provider(server)
        const error = yield* modelError(p.generate({ prompt: "x" }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "message.content")
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

    it.scoped("NDJSON lines split across reads (inside characters too) end in one Finish with the counts", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, Server.splitBytes(ndjson(lines), 7), { contentType: "application/x-ndjson", pauseMs: 0 })
        )
        const p = yield* provider(server)
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
        assert.strictEqual(text, "Héllo wörld 🌍, 日本語!")
        assert.deepStrictEqual(
          parts.filter((p) => p._tag === "Finish"),
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
        assert.strictEqual(bodyOf((yield* server.requests)[0])["stream"], true)
      })
    )

    it.scoped("/api/generate streams `response` fields, CRLF line ends", () =>
      Effect.gen(function* () {
        const body = [
          { model: "llama3.2", response: "The", done: false },
          { model: "llama3.2", response: " sky", done: false },
          { response: "", ...final({ done_reason: "length" }) }
        ]
          .map((l) => `${JSON.stringify(l)}\r\n`)
          .join("")
        const server = yield* Server.make((_, res) => Server.chunked(res, Server.splitAwkward(body)))
        const p = yield* provider(server, { api: "generate" })
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "Why?" }))
        assert.isTrue(Exit.isSuccess(exit))
        assert.strictEqual(text, "The sky")
        assert.strictEqual(parts.at(-1)?._tag, "Finish")
        assert.strictEqual((yield* server.requests)[0]?.path, "/api/generate")
      })
    )

    it.scoped("an error line mid-stream fails after the delivered text", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.chunked(
            res,
            [
              ndjson([chatLine("par"), chatLine("tial")]),
              ndjson([{ error: "an unknown error was encountered while running the model" }])
            ],
            {
              end: "hang"
            }
          )
        )
        const p = yield* provider(server)
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(text, "partial")
        assert.isFalse(parts.some((p) => p._tag === "Finish"))
        const error = failureOf(exit)
        assert.include(error.message, "unknown error was encountered")
      })
    )

    it.scoped("a connection cut mid-stream is Transport; a clean end without done is too", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) =>
          Server.chunked(res, [ndjson([chatLine("one ")]), ndjson([chatLine("two")])], {
            end: bodyOf(req)["model"] === "cut" ? "destroy" : "end"
          })
        )
        const p = yield* provider(server)
        const cut = yield* collect(p.stream({ prompt: "hi", model: "cut" }))
        assert.strictEqual(cut.text, "one two")
        assert.strictEqual(failureOf(cut.exit).reason, "Transport")
        const ended = yield* collect(p.stream({ prompt: "hi", model: "end" }))
        assert.strictEqual(ended.text, "one two")
        assert.strictEqual(failureOf(ended.exit).reason, "Transport")
      })
    )
  })

  describe("embed", () => {
    it.scoped("/api/embed with every text in one call", () =>
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

    it.scoped("a wrong number of vectors is Decode on embeddings", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, { model: "m", embeddings: [[1]] }))
        const p = yield* provider(server)
        const error = yield* modelError(p.embed({ texts: ["a", "b"] }))
        assert.strictEqual(error.reason, "Decode")
        assert.strictEqual(error.field, "embeddings")
      })
    )
  })

  it.scoped("layerConfig reads OLLAMA_HOST without a scheme", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) =>
        Server.json(res, 200, { ...final(), message: { role: "assistant", content: "ok" } })
      )
      const host = server.url.replace("http://", "")
      const answer = yield* Effect.flatMap(Model.ModelProvider, (p) => p.generate({ prompt: "x" })).pipe(
        Effect.provide(
          Ollama.layerConfig().pipe(
            Layer.provide(
              Layer.setConfigProvider(
                ConfigProvider.fromMap(
                  new Map([
                    ["OLLAMA_HOST", host],
                    ["OLLAMA_MODEL", "qwen3"]
                  ])
                )
              )
            )
          )
        )
      )
      assert.strictEqual(answer.text, "ok")
      assert.strictEqual(bodyOf((yield* server.requests)[0])["model"], "qwen3")
    })
  )
})

describe("Ollama interruption", () => {
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
