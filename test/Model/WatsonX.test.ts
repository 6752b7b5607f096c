import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, layer, it as vitest } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Fiber, Option, Redacted, Stream, TestClock } from "effect"
import type { ModelError } from "../../src/AiError.js"
import type * as Model from "../../src/Model.js"
import * as WatsonX from "../../src/Model/WatsonX.js"
import * as Server from "../utils/httpServer.js"

const KEY = "ibm-apikey-TEST-abcdef0123456789-SECRET"

interface Script {
  /** IAM answers: access tokens handed out in order. */
  iamCalls: number
  iamStatus: number
  iamDelayMs: number
  /** IAM never answers while set. */
  iamHang: boolean
  /** Called when an IAM request arrives. */
  onIam: () => void
  expiresIn: number
  /** Tokens the API refuses with 401. */
  rejected: Set<string>
  handler: Server.Handler
}

const chatAnswer = (content: string) => ({
  id: "chat-1",
  model_id: "ibm/granite-3-8b-instruct",
  model: "ibm/granite-3-8b-instruct",
  choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
  created: 1_728_000_000,
  model_version: "1.1.0",
  created_at: "2024-10-04T10:00:00.000Z",
  usage: { completion_tokens: 3, prompt_tokens: 11, total_tokens: 14 }
})

const generationAnswer = (text: string, stop = "eos_token") => ({
  model_id: "ibm/granite-13b-instruct-v2",
  created_at: "2024-10-04T10:00:00.000Z",
  results: [{ generated_text: text, generated_token_count: 4, input_token_count: 9, stop_reason: stop }]
})

/** A watsonx + IAM server: IAM hands out `tok-1`, `tok-2`, ...; the API refuses tokens in `rejected`. */
const makeServer = (handler: Server.Handler) =>
  Effect.gen(function* () {
    const script: Script = {
      iamCalls: 0,
      iamStatus: 200,
      iamDelayMs: 0,
      iamHang: false,
      onIam: () => {},
      expiresIn: 3600,
      rejected: new Set(),
      handler
    }
    const server = yield* Server.make(async (req, res) => {
      if (req.path === "/identity/token") {
        script.iamCalls++
        const n = script.iamCalls
        script.onIam()
        if (script.iamHang) return Server.hang(res)
        if (script.iamDelayMs > 0) await new Promise((r) => setTimeout(r, script.iamDelayMs))
        if (script.iamStatus !== 200) {
          return Server.json(res, script.iamStatus, {
            errorCode: "BXNIM0415E",
            errorMessage: "Provided API key could not be found.",
            context: { requestId: "r1" }
          })
        }
        return Server.json(res, 200, {
          access_token: `tok-${n}`,
          refresh_token: "not_supported",
          token_type: "Bearer",
          expires_in: script.expiresIn,
          expiration: 1_728_000_000 + script.expiresIn,
          scope: "ibm openid"
        })
      }
      const token = String(req.headers.authorization).replace("Bearer ", "")
      if (script.rejected.has(token)) {
        return Server.json(res, 401, {
          errors: [
            {
              code: "authentication_token_expired",
              message: "Failed to authenticate the request due to an expired token",
              more_info: "https://cloud.ibm.com/apidocs/watsonx-ai"
            }
          ],
          trace: "t1",
          status_code: 401
        })
      }
      return script.handler(req, res)
    })
    const provider = (options: Partial<WatsonX.Options> = {}) =>
      WatsonX.make({
        apiKey: Redacted.make(KEY),
        projectId: "proj-1",
        url: server.url,
        iamUrl: `${server.url}/identity/token`,
        ...options
      })
    const apiRequests = Effect.map(server.requests, (all) => all.filter((r) => r.path.startsWith("/ml/")))
    return { server, script, provider, apiRequests }
  })

const sse = (events: ReadonlyArray<unknown>): string =>
  events.map((e, i) => `id: ${i + 1}\r\nevent: message\r\ndata: ${JSON.stringify(e)}\r\n\r\n`).join("")

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

layer(NodeHttpClient.layerUndici)("WatsonX", (it) => {
  describe("IAM token", () => {
    it.scoped("the token request is the documented form; chat carries the bearer, version and project", () =>
      Effect.gen(function* () {
        const { server, provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("Hello!")))
        const p = yield* provider({ version: "2024-10-08" })
        const answer = yield* p.generate({ system: "Be nice.", prompt: "hi", maxTokens: 30 })
        assert.deepStrictEqual(answer, {
          text: "Hello!",
          finishReason: "stop",
          usage: { inputTokens: 11, outputTokens: 3, totalTokens: 14 },
          provider: "watsonx",
          model: "ibm/granite-3-8b-instruct"
        })
        const [iam, chat] = yield* server.requests
        assert.strictEqual(iam?.method, "POST")
        assert.strictEqual(iam?.headers["content-type"], "application/x-www-form-urlencoded")
        assert.deepStrictEqual(Object.fromEntries(new URLSearchParams(iam?.body ?? "")), {
          grant_type: "urn:ibm:params:oauth:grant-type:apikey",
          apikey: KEY
        })
        assert.strictEqual(chat?.path, "/ml/v1/text/chat")
        assert.strictEqual(chat?.search.get("version"), "2024-10-08")
        assert.strictEqual(chat?.headers.authorization, "Bearer tok-1")
        assert.deepStrictEqual(chat?.json, {
          model_id: "ibm/granite-3-8b-instruct",
          messages: [
            { role: "system", content: "Be nice." },
            { role: "user", content: [{ type: "text", text: "hi" }] }
          ],
          max_tokens: 30,
          project_id: "proj-1"
        })
      })
    )

    it.scoped("50 concurrent calls fetch the token once", () =>
      Effect.gen(function* () {
        const { script, provider, apiRequests } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        script.iamDelayMs = 30
        const p = yield* provider()
        const answers = yield* Effect.forEach(
          Array.from({ length: 50 }, (_, i) => i),
          (i) => p.generate({ prompt: `q${i}` }),
          {
            concurrency: "unbounded"
          }
        )
        assert.lengthOf(answers, 50)
        assert.strictEqual(script.iamCalls, 1)
        const api = yield* apiRequests
        assert.lengthOf(api, 50)
        assert.isTrue(api.every((r) => r.headers.authorization === "Bearer tok-1"))
      })
    )

    it.scoped("the token is reused until shortly before expiry (Clock), then refreshed", () =>
      Effect.gen(function* () {
        const { script, provider, apiRequests } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        const p = yield* provider({ refreshMargin: "60 seconds" })
        yield* p.generate({ prompt: "1" })
        yield* TestClock.adjust(Duration.seconds(3600 - 60 - 1))
        yield* p.generate({ prompt: "2" })
        assert.strictEqual(script.iamCalls, 1)
        yield* TestClock.adjust(Duration.seconds(2))
        yield* p.generate({ prompt: "3" })
        assert.strictEqual(script.iamCalls, 2)
        const api = yield* apiRequests
        assert.deepStrictEqual(
          api.map((r) => r.headers.authorization),
          ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
        )
      })
    )

    it.scoped("a short-lived token refreshes at half its lifetime", () =>
      Effect.gen(function* () {
        const { script, provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        script.expiresIn = 20
        const p = yield* provider()
        yield* p.generate({ prompt: "1" })
        yield* TestClock.adjust("9 seconds")
        yield* p.generate({ prompt: "2" })
        assert.strictEqual(script.iamCalls, 1)
        yield* TestClock.adjust("2 seconds")
        yield* p.generate({ prompt: "3" })
        assert.strictEqual(script.iamCalls, 2)
      })
    )

    it.scoped("a 401 refreshes the token and retries the call once", () =>
      Effect.gen(function* () {
        const { script, provider, apiRequests } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        script.rejected.add("tok-1")
        const p = yield* provider()
        const answer = yield* p.generate({ prompt: "hi" })
        assert.strictEqual(answer.text, "ok")
        assert.strictEqual(script.iamCalls, 2)
        assert.deepStrictEqual(
          (yield* apiRequests).map((r) => r.headers.authorization),
          ["Bearer tok-1", "Bearer tok-2"]
        )
      })
    )

    it.scoped("10 concurrent 401s share one refresh; a refused fresh token is Unauthorized after one retry", () =>
      Effect.gen(function* () {
        const { script, provider, apiRequests } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        const p = yield* provider()
        yield* p.generate({ prompt: "warm" })
        script.rejected.add("tok-1")
        script.iamDelayMs = 20
        yield* Effect.forEach(Array.from({ length: 10 }), () => p.generate({ prompt: "x" }), {
          concurrency: "unbounded"
        })
        assert.strictEqual(script.iamCalls, 2)
        script.rejected.add("tok-2")
        script.rejected.add("tok-3")
        const before = (yield* apiRequests).length
        const error = yield* modelError(p.generate({ prompt: "y" }))
        assert.strictEqual(error.reason, "Unauthorized")
        assert.strictEqual(error.status, 401)
        assert.include(error.message, "expired token")
        assert.strictEqual((yield* apiRequests).length - before, 2)
        assert.strictEqual(script.iamCalls, 3)
      })
    )

    it.scoped(
      "a hanging IAM request fails every waiter with Timeout after tokenTimeout (30 s); the next call asks again",
      () =>
        Effect.gen(function* () {
          const { server, script, provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
          script.iamHang = true
          const arrived = Effect.async<void>((resume) => {
            script.onIam = () => resume(Effect.void)
          })
          const p = yield* provider()
          const calls = yield* Effect.fork(
            Effect.all([modelError(p.generate({ prompt: "1" })), modelError(p.generate({ prompt: "2" }))], {
              concurrency: "unbounded"
            })
          )
          yield* arrived
          yield* TestClock.adjust("29 seconds")
          assert.isTrue(Option.isNone(yield* Fiber.poll(calls)))
          yield* TestClock.adjust("1 second")
          const errors = yield* Fiber.join(calls)
          for (const error of errors) {
            assert.strictEqual(error.reason, "Timeout")
            assert.strictEqual(error.provider, "watsonx IAM")
            assert.include(error.message, "IAM token")
          }
          assert.strictEqual(script.iamCalls, 1)
          yield* server.awaitAborted(1)
          script.iamHang = false
          const answer = yield* p.generate({ prompt: "3" })
          assert.strictEqual(answer.text, "ok")
          assert.strictEqual(script.iamCalls, 2)
        })
    )

    it.scoped("tokenTimeout bounds the IAM request", () =>
      Effect.gen(function* () {
        const { script, provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        script.iamHang = true
        const arrived = Effect.async<void>((resume) => {
          script.onIam = () => resume(Effect.void)
        })
        const p = yield* provider({ tokenTimeout: "2 seconds" })
        const call = yield* Effect.fork(modelError(p.generate({ prompt: "1" })))
        yield* arrived
        yield* TestClock.adjust("2 seconds")
        const error = yield* Fiber.join(call)
        assert.strictEqual(error.reason, "Timeout")
        assert.include(error.message, "2s")
      })
    )

    it.scoped("a refused API key is Unauthorized, not cached, and never in the error", () =>
      Effect.gen(function* () {
        const { script, provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        script.iamStatus = 400
        const p = yield* provider()
        const exit = yield* Effect.exit(p.generate({ prompt: "hi" }))
        const error = failureOf(exit)
        assert.strictEqual(error.reason, "Unauthorized")
        assert.include(error.message, "could not be found")
        if (Exit.isFailure(exit)) {
          for (const text of [JSON.stringify(error), String(error), Cause.pretty(exit.cause)])
            assert.notInclude(text, KEY)
        }
        script.iamStatus = 200
        const answer = yield* p.generate({ prompt: "hi" })
        assert.strictEqual(answer.text, "ok")
        assert.strictEqual(script.iamCalls, 2)
      })
    )
  })

  describe("generation", () => {
    it.scoped("text generation: documented body and answer", () =>
      Effect.gen(function* () {
        const { apiRequests, provider } = yield* makeServer((_, res) =>
          Server.json(res, 200, generationAnswer(" Paris.", "max_tokens"))
        )
        const p = yield* provider({ api: "generation", model: "ibm/granite-13b-instruct-v2" })
        const answer = yield* p.generate({ prompt: "Capital of France?", maxTokens: 4, stop: ["\n"] })
        assert.deepStrictEqual(answer, {
          text: " Paris.",
          finishReason: "length",
          usage: { inputTokens: 9, outputTokens: 4, totalTokens: 13 },
          provider: "watsonx",
          model: "ibm/granite-13b-instruct-v2"
        })
        const [request] = yield* apiRequests
        assert.strictEqual(request?.path, "/ml/v1/text/generation")
        assert.strictEqual(request?.search.get("version"), "2024-05-31")
        assert.deepStrictEqual(request?.json, {
          model_id: "ibm/granite-13b-instruct-v2",
          input: "Capital of France?",
          parameters: { decoding_method: "greedy", max_new_tokens: 4, stop_sequences: ["\n"] },
          project_id: "proj-1"
        })
      })
    )

    it.scoped("generation_stream SSE (split at awkward bytes) ends in one Finish", () =>
      Effect.gen(function* () {
        const events = [
          {
            model_id: "m",
            results: [
              { generated_text: "", generated_token_count: 0, input_token_count: 9, stop_reason: "not_finished" }
            ]
          },
          {
            model_id: "m",
            results: [
              {
                generated_text: "Bonjour ",
                generated_token_count: 2,
                input_token_count: 0,
                stop_reason: "not_finished"
              }
            ]
          },
          {
            model_id: "m",
            results: [
              { generated_text: "à tous 👋", generated_token_count: 5, input_token_count: 0, stop_reason: "eos_token" }
            ]
          }
        ]
        const { apiRequests, provider } = yield* makeServer((_, res) =>
          Server.chunked(res, Server.splitAwkward(`${sse(events)}event: close\r\n\r\n`))
        )
        const p = yield* provider({ api: "generation" })
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "Say hi" }))
        assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
        assert.strictEqual(text, "Bonjour à tous 👋")
        assert.deepStrictEqual(
          parts.filter((p) => p._tag === "Finish"),
          [
            {
              _tag: "Finish",
              finishReason: "stop",
              usage: { inputTokens: 9, outputTokens: 5, totalTokens: 14 },
              provider: "watsonx",
              model: "m"
            }
          ]
        )
        assert.strictEqual((yield* apiRequests)[0]?.path, "/ml/v1/text/generation_stream")
      })
    )

    it.scoped("chat_stream: a 401 before the stream refreshes and retries; deltas then Finish", () =>
      Effect.gen(function* () {
        const chunk = (content: string, finish: string | null = null, usage?: unknown) => ({
          id: "c1",
          model_id: "ibm/granite-3-8b-instruct",
          choices: [{ index: 0, finish_reason: finish, delta: content === "" ? {} : { role: "assistant", content } }],
          ...(usage ? { usage } : {})
        })
        const { script, apiRequests, provider } = yield* makeServer((_, res) =>
          Server.chunked(res, [
            sse([
              chunk("Hi"),
              chunk(" there"),
              chunk("", "stop", { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 })
            ])
          ])
        )
        script.rejected.add("tok-1")
        const p = yield* provider()
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
        assert.strictEqual(text, "Hi there")
        assert.deepStrictEqual(parts.at(-1), {
          _tag: "Finish",
          finishReason: "stop",
          usage: { inputTokens: 5, outputTokens: 2, totalTokens: 7 },
          provider: "watsonx",
          model: "ibm/granite-3-8b-instruct"
        })
        const api = yield* apiRequests
        assert.deepStrictEqual(
          api.map((r) => [r.path, r.headers.authorization]),
          [
            ["/ml/v1/text/chat_stream", "Bearer tok-1"],
            ["/ml/v1/text/chat_stream", "Bearer tok-2"]
          ]
        )
      })
    )

    it.scoped("a stream cut mid-way is Transport after its text; an error event is typed", () =>
      Effect.gen(function* () {
        const partial = {
          model_id: "m",
          results: [
            { generated_text: "half", generated_token_count: 1, input_token_count: 3, stop_reason: "not_finished" }
          ]
        }
        const { provider } = yield* makeServer((req, res) =>
          (req.json as { input: string }).input === "cut"
            ? Server.chunked(res, [sse([partial])], { end: "destroy" })
            : Server.chunked(
                res,
                [
                  sse([partial]) +
                    `event: error\r\ndata: ${JSON.stringify({ errors: [{ code: "model_error", message: "downstream failure" }], status_code: 500 })}\r\n\r\n`
                ],
                { end: "hang" }
              )
        )
        const p = yield* provider({ api: "generation" })
        const cut = yield* collect(p.stream({ prompt: "cut" }))
        assert.strictEqual(cut.text, "half")
        assert.strictEqual(failureOf(cut.exit).reason, "Transport")
        const failed = yield* collect(p.stream({ prompt: "err" }))
        assert.strictEqual(failed.text, "half")
        const error = failureOf(failed.exit)
        assert.strictEqual(error.reason, "Overloaded")
        assert.include(error.message, "downstream failure")
      })
    )

    it.scoped("429 with Retry-After, 500, 404 model and a malformed body", () =>
      Effect.gen(function* () {
        const { provider } = yield* makeServer((req, res) => {
          const model = (req.json as { model_id: string }).model_id
          if (model === "rate")
            return Server.json(
              res,
              429,
              { errors: [{ code: "rate_limit", message: "Too many" }], status_code: 429 },
              { "retry-after": "4" }
            )
          if (model === "crash")
            return Server.json(res, 500, { errors: [{ code: "internal", message: "boom" }], status_code: 500 })
          if (model === "missing")
            return Server.json(res, 404, {
              errors: [{ code: "model_not_supported", message: "Model 'missing' is not supported" }],
              status_code: 404
            })
          return Server.json(res, 200, { model_id: "m", choices: [{ message: { content: ["not", "text"] } }] })
        })
        const p = yield* provider()
        const rate = yield* modelError(p.generate({ prompt: "x", model: "rate" }))
        assert.strictEqual(rate.reason, "RateLimited")
        assert.deepStrictEqual(rate.retryAfter, Duration.seconds(4))
        assert.strictEqual((yield* modelError(p.generate({ prompt: "x", model: "crash" }))).reason, "Overloaded")
        const missing = yield* modelError(p.generate({ prompt: "x", model: "missing" }))
        assert.strictEqual(missing.reason, "InvalidRequest")
        assert.strictEqual(missing.field, "model")
        const bad = yield* modelError(p.generate({ prompt: "x", model: "bad" }))
        assert.strictEqual(bad.reason, "Decode")
        assert.strictEqual(bad.field, "choices.0.message.content")
      })
    )

    it.scoped("embeddings", () =>
      Effect.gen(function* () {
        const { apiRequests, provider } = yield* makeServer((_, res) =>
          Server.json(res, 200, {
            model_id: "ibm/slate-125m-english-rtrvr-v2",
            results: [{ embedding: [0.1, 0.2] }, { embedding: [0.3, 0.4] }],
            created_at: "2024-10-04T10:00:00.000Z",
            input_token_count: 6
          })
        )
        const p = yield* provider()
        const answer = yield* p.embed({ texts: ["a", "b"] })
        assert.deepStrictEqual(answer.vectors, [
          [0.1, 0.2],
          [0.3, 0.4]
        ])
        const [request] = yield* apiRequests
        assert.strictEqual(request?.path, "/ml/v1/text/embeddings")
        assert.deepStrictEqual(request?.json, {
          model_id: "ibm/slate-125m-english-rtrvr-v2",
          inputs: ["a", "b"],
          project_id: "proj-1"
        })
      })
    )
  })
})

describe("WatsonX interruption", () => {
  vitest.scopedLive("a hanging call is interrupted by a timeout and its connection closed", () =>
    Effect.gen(function* () {
      const { server, provider } = yield* makeServer((_, res) => Server.hang(res))
      const p = yield* provider()
      const result = yield* Effect.either(Effect.timeout(p.generate({ prompt: "hi" }), "300 millis"))
      assert.strictEqual(result._tag === "Left" && result.left._tag, "TimeoutException")
      yield* server.awaitAborted(1).pipe(Effect.timeout("2 seconds"))
      assert.strictEqual(yield* server.aborted, 1)
    }).pipe(Effect.provide(NodeHttpClient.layerUndici))
  )
})
