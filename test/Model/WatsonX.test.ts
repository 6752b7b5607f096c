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
  Ref,
  Scope,
  Stream
} from "effect"
import { HttpClient, HttpClientError } from "effect/http"
import { TestClock } from "effect/testing"
import { type AiError, ModelError } from "../../src/AiError.js"
import * as Model from "../../src/Model.js"
import * as WatsonX from "../../src/Model/WatsonX.js"
import * as Iam from "../../src/Model/watsonx/Iam.js"
import * as WatsonXWire from "../../src/Model/watsonx/Wire.js"
import * as Server from "../utils/httpServer.js"
import { drainStalled } from "../utils/stalled.js"

/** A scripted IAM service: hands out `tok-1`, `tok-2`, ... after `delay`, or runs `outcome` when set. */
const scriptedIam = Effect.gen(function* () {
  const calls = yield* Ref.make(0)
  const delay = yield* Ref.make(Duration.zero)
  const expiresIn = yield* Ref.make(Duration.seconds(3600))
  const outcome = yield* Ref.make<"ok" | "fail" | "hang">("ok")
  const fetch: Effect.Effect<Iam.Issued, ModelError> = Effect.gen(function* () {
    const n = yield* Ref.updateAndGet(calls, (k) => k + 1)
    const wait = yield* Ref.get(delay)
    if (Duration.isGreaterThan(wait, Duration.zero)) yield* Effect.sleep(wait)
    const mode = yield* Ref.get(outcome)
    if (mode === "hang") return yield* Effect.never
    if (mode === "fail") {
      return yield* Effect.fail(new ModelError({ reason: "Unauthorized", message: "key refused", status: 400 }))
    }
    return { token: Redacted.make(`tok-${n}`), expiresIn: yield* Ref.get(expiresIn) }
  })
  const cache = (options: Partial<Omit<Iam.Options, "fetch">> = {}) =>
    Iam.make({
      fetch,
      refreshMargin: Duration.seconds(60),
      timeout: Duration.seconds(30),
      provider: "watsonx",
      ...options
    })
  return { calls, delay, expiresIn, outcome, cache }
})

const tokenOf = (cache: Iam.TokenCache) => Effect.map(cache.get(), (t) => Redacted.value(t.value))

describe("WatsonX IAM token cache", () => {
  it.effect("50 concurrent callers share one fetch", () =>
    Effect.gen(function* () {
      const iam = yield* scriptedIam
      yield* Ref.set(iam.delay, Duration.millis(30))
      const cache = yield* iam.cache()
      const all = yield* Effect.forkChild(
        Effect.forEach(Array.from({ length: 50 }), () => tokenOf(cache), { concurrency: "unbounded" })
      )
      yield* TestClock.adjust("30 millis")
      const tokens = yield* Fiber.join(all)
      assert.lengthOf(tokens, 50)
      assert.isTrue(tokens.every((t) => t === "tok-1"))
      assert.strictEqual(yield* Ref.get(iam.calls), 1)
    })
  )

  it.effect("the token is reused until refreshMargin before expiry, then fetched again", () =>
    Effect.gen(function* () {
      const iam = yield* scriptedIam
      const cache = yield* iam.cache()
      assert.strictEqual(yield* tokenOf(cache), "tok-1")
      yield* TestClock.adjust(Duration.seconds(3600 - 60 - 1))
      assert.strictEqual(yield* tokenOf(cache), "tok-1")
      yield* TestClock.adjust(Duration.seconds(1))
      assert.strictEqual(yield* tokenOf(cache), "tok-2")
      assert.strictEqual(yield* Ref.get(iam.calls), 2)
    })
  )

  it.effect("a short-lived token is fetched again at half its lifetime", () =>
    Effect.gen(function* () {
      const iam = yield* scriptedIam
      yield* Ref.set(iam.expiresIn, Duration.seconds(20))
      const cache = yield* iam.cache()
      yield* tokenOf(cache)
      yield* TestClock.adjust("9 seconds")
      assert.strictEqual(yield* tokenOf(cache), "tok-1")
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* tokenOf(cache), "tok-2")
    })
  )

  it.effect("a token's lifetime counts from when it was asked for: a slow answer is not cached past its expiry", () =>
    Effect.gen(function* () {
      const iam = yield* scriptedIam
      // IAM starts the token's clock when it issues it, before the answer's 20 seconds on the way back.
      yield* Ref.set(iam.delay, Duration.seconds(20))
      yield* Ref.set(iam.expiresIn, Duration.seconds(100))
      const cache = yield* iam.cache({ refreshMargin: Duration.zero })
      const first = yield* Effect.forkChild(tokenOf(cache))
      yield* TestClock.adjust("20 seconds")
      assert.strictEqual(yield* Fiber.join(first), "tok-1")
      yield* TestClock.adjust("79 seconds")
      assert.strictEqual(yield* tokenOf(cache), "tok-1")
      // 100 seconds after the request: expired, whatever the answer's latency.
      yield* TestClock.adjust("1 second")
      const next = yield* Effect.forkChild(tokenOf(cache))
      yield* TestClock.adjust("20 seconds")
      assert.strictEqual(yield* Fiber.join(next), "tok-2")
      assert.strictEqual(yield* Ref.get(iam.calls), 2)
    })
  )

  it.effect("a token said to live for years (expires_in huge) is still fetched again within an hour", () =>
    Effect.gen(function* () {
      const iam = yield* scriptedIam
      for (const seconds of [1e300, 10 * 365 * 86400]) {
        yield* Ref.set(iam.expiresIn, Duration.seconds(seconds))
        const cache = yield* iam.cache()
        const first = yield* tokenOf(cache)
        // IAM tokens live an hour: the cache trusts no more than that, less refreshMargin.
        yield* TestClock.adjust(Duration.seconds(3600 - 60 - 1))
        assert.strictEqual(yield* tokenOf(cache), first, String(seconds))
        yield* TestClock.adjust(Duration.seconds(1))
        assert.notStrictEqual(yield* tokenOf(cache), first, String(seconds))
      }
    })
  )

  it.effect("a hanging fetch fails every waiter with Timeout at the bound; the next call asks again", () =>
    Effect.gen(function* () {
      const iam = yield* scriptedIam
      yield* Ref.set(iam.outcome, "hang")
      const cache = yield* iam.cache({ timeout: Duration.seconds(2) })
      const waiters = yield* Effect.forkChild(
        Effect.all([Effect.flip(cache.get()), Effect.flip(cache.get())], { concurrency: "unbounded" })
      )
      yield* TestClock.adjust("1999 millis")
      assert.isUndefined(waiters.pollUnsafe())
      yield* TestClock.adjust("1 millis")
      const errors = yield* Fiber.join(waiters)
      for (const error of errors) {
        assert.strictEqual(error.reason, "Timeout")
        assert.strictEqual(error.provider, "watsonx")
        assert.include(error.message, "IAM")
        assert.include(error.message, "2s")
      }
      assert.strictEqual(yield* Ref.get(iam.calls), 1)
      yield* Ref.set(iam.outcome, "ok")
      assert.strictEqual(yield* tokenOf(cache), "tok-2")
    })
  )

  it.effect("a failed fetch is not cached", () =>
    Effect.gen(function* () {
      const iam = yield* scriptedIam
      yield* Ref.set(iam.outcome, "fail")
      const cache = yield* iam.cache()
      const error = yield* Effect.flip(cache.get())
      assert.strictEqual(error.reason, "Unauthorized")
      yield* Ref.set(iam.outcome, "ok")
      assert.strictEqual(yield* tokenOf(cache), "tok-2")
    })
  )

  it.effect("an early refresh that fails keeps the cached token until it expires, then the failure is the call's", () =>
    Effect.gen(function* () {
      const iam = yield* scriptedIam
      const cache = yield* iam.cache()
      assert.strictEqual(yield* tokenOf(cache), "tok-1")
      // Inside refreshMargin: IAM is down, but tok-1 is good for 50 more seconds.
      yield* TestClock.adjust(Duration.seconds(3550))
      yield* Ref.set(iam.outcome, "fail")
      assert.strictEqual(yield* tokenOf(cache), "tok-1")
      assert.strictEqual(yield* Ref.get(iam.calls), 2)
      // Each call in the window asks again; one that succeeds replaces the token.
      yield* TestClock.adjust(Duration.seconds(49))
      assert.strictEqual(yield* tokenOf(cache), "tok-1")
      assert.strictEqual(yield* Ref.get(iam.calls), 3)
      yield* TestClock.adjust(Duration.seconds(1))
      const error = yield* Effect.flip(cache.get())
      assert.strictEqual(error.reason, "Unauthorized")
      // A token the API refused is not fallen back to either.
      yield* Ref.set(iam.outcome, "ok")
      const fresh = yield* cache.get()
      assert.strictEqual(Redacted.value(fresh.value), "tok-5")
      yield* TestClock.adjust(Duration.seconds(3550))
      yield* Ref.set(iam.outcome, "fail")
      assert.strictEqual(Redacted.value((yield* cache.get()).value), "tok-5")
      assert.strictEqual((yield* Effect.flip(cache.get(fresh.generation))).reason, "Unauthorized")
    })
  )

  it.effect("once the API refused the cached token, an early refresh that fails falls back to it for no one", () =>
    Effect.gen(function* () {
      const iam = yield* scriptedIam
      const cache = yield* iam.cache()
      const first = yield* cache.get()
      yield* TestClock.adjust(Duration.seconds(3550))
      yield* Ref.set(iam.outcome, "fail")
      yield* Ref.set(iam.delay, Duration.seconds(1))
      // One caller refreshes early; another, whose call was just refused (401), waits on the same fetch.
      const early = yield* Effect.forkChild(Effect.flip(cache.get()))
      const refused = yield* Effect.forkChild(Effect.flip(cache.get(first.generation)))
      yield* TestClock.adjust("2 seconds")
      for (const error of [yield* Fiber.join(early), yield* Fiber.join(refused)]) {
        assert.strictEqual(error.reason, "Unauthorized")
        assert.strictEqual(error.message, "key refused")
      }
      // Nor later, while IAM is still down.
      const later = yield* Effect.forkChild(Effect.flip(cache.get()))
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(later)).reason, "Unauthorized")
      assert.strictEqual(yield* Ref.get(iam.calls), 3)
    })
  )

  it.effect("an interrupted caller does not cancel the fetch another caller waits on", () =>
    Effect.gen(function* () {
      const iam = yield* scriptedIam
      yield* Ref.set(iam.delay, Duration.seconds(1))
      const cache = yield* iam.cache()
      const first = yield* Effect.forkChild(tokenOf(cache))
      const second = yield* Effect.forkChild(tokenOf(cache))
      yield* Effect.yieldNow
      yield* Fiber.interrupt(first)
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* Fiber.join(second), "tok-1")
      assert.strictEqual(yield* Ref.get(iam.calls), 1)
    })
  )

  it.effect("closing the cache's scope interrupts a fetch in flight", () =>
    Effect.gen(function* () {
      const iam = yield* scriptedIam
      yield* Ref.set(iam.outcome, "hang")
      const scope = yield* Scope.make()
      const cache = yield* Scope.provide(iam.cache(), scope)
      const waiter = yield* Effect.forkChild(Effect.exit(cache.get()))
      yield* Effect.yieldNow
      yield* Scope.close(scope, Exit.void)
      const exit = yield* Fiber.join(waiter)
      assert.isTrue(Exit.hasInterrupts(exit))
    })
  )

  describe("authorized", () => {
    const unauthorized = new ModelError({ reason: "Unauthorized", message: "expired token", status: 401 })

    it.effect("a 401 fetches a fresh token and retries the call once", () =>
      Effect.gen(function* () {
        const iam = yield* scriptedIam
        const cache = yield* iam.cache()
        const seen: Array<string> = []
        const answer = yield* cache.authorized((token) => {
          seen.push(Redacted.value(token))
          return seen.length === 1 ? Effect.fail(unauthorized) : Effect.succeed("ok")
        })
        assert.strictEqual(answer, "ok")
        assert.deepStrictEqual(seen, ["tok-1", "tok-2"])
      })
    )

    it.effect("a second 401 is the call's failure; other failures are not retried", () =>
      Effect.gen(function* () {
        const iam = yield* scriptedIam
        const cache = yield* iam.cache()
        let calls = 0
        const error = yield* Effect.flip(
          cache.authorized(() => {
            calls++
            return Effect.fail(unauthorized)
          })
        )
        assert.strictEqual(error.status, 401)
        assert.strictEqual(calls, 2)
        calls = 0
        const other = yield* Effect.flip(
          cache.authorized(() => {
            calls++
            return Effect.fail(new ModelError({ reason: "Overloaded", message: "busy", status: 503 }))
          })
        )
        assert.strictEqual(other.status, 503)
        assert.strictEqual(calls, 1)
        // The refused fresh token was not marked refused by the retry's own 401: a later call starts from it.
        assert.strictEqual(yield* Ref.get(iam.calls), 2)
      })
    )

    it.effect("10 concurrent 401s on one token share one refresh", () =>
      Effect.gen(function* () {
        const iam = yield* scriptedIam
        const cache = yield* iam.cache()
        yield* tokenOf(cache)
        yield* Ref.set(iam.delay, Duration.millis(20))
        const calls = yield* Effect.forkChild(
          Effect.forEach(
            Array.from({ length: 10 }),
            () =>
              cache.authorized((token) =>
                Redacted.value(token) === "tok-1" ? Effect.fail(unauthorized) : Effect.succeed(Redacted.value(token))
              ),
            { concurrency: "unbounded" }
          )
        )
        yield* TestClock.adjust("20 millis")
        const tokens = yield* Fiber.join(calls)
        assert.isTrue(tokens.every((t) => t === "tok-2"))
        assert.strictEqual(yield* Ref.get(iam.calls), 2)
      })
    )
  })
})

describe("WatsonX wire", () => {
  it("tools, tool choices and tool messages are refused naming the field; a JSON format only on chat", () => {
    const field = (request: Parameters<typeof WatsonXWire.unsupported>[0], api: WatsonXWire.Api = "chat") =>
      WatsonXWire.unsupported(request, api, "watsonx")?.field
    assert.strictEqual(field({ prompt: "x", tools: [{ name: "f" }] }), "tools")
    assert.strictEqual(field({ prompt: "x", toolChoice: "required" }), "toolChoice")
    assert.strictEqual(field({ prompt: "x", tools: [], toolChoice: { name: "f" } }), "toolChoice")
    // Without tools, "auto" and "none" ask for nothing watsonx would not do: taken, as Gemini and Ollama take them,
    // so that a request one provider takes is not refused by its fallback.
    assert.isUndefined(field({ prompt: "x", toolChoice: "auto" }))
    assert.isUndefined(field({ prompt: "x", tools: [], toolChoice: "none" }, "generation"))
    assert.strictEqual(field({ messages: [{ role: "tool", toolCallId: "c", content: "1" }] }), "messages[0].role")
    assert.strictEqual(field({ prompt: "x", responseFormat: { type: "json_object" } }, "generation"), "responseFormat")
    assert.isUndefined(field({ prompt: "x", responseFormat: { type: "json_object" } }))
    // No tools is no tools, as the cache key and the gateway read it.
    assert.isUndefined(WatsonXWire.unsupported({ prompt: "x", tools: [] }, "chat", "watsonx"))
  })

  it("a JSON schema format's name outside ^[a-zA-Z0-9_-]{1,64}$ is refused naming it, before a call (chat API)", () => {
    const format = (name: string) => ({ type: "json_schema" as const, name, schema: { type: "object" } })
    // watsonx's chat API takes OpenAI's rule for `json_schema.name`, and answers a 400 after the call otherwise.
    for (const name of ["", "my schema", "a.b", "x".repeat(65), "naïve"]) {
      const error = WatsonXWire.unsupported({ prompt: "x", responseFormat: format(name) }, "chat", "watsonx")
      assert.deepStrictEqual([error?.reason, error?.field], ["InvalidRequest", "responseFormat.name"], name)
    }
    for (const name of ["w", "Answer_v2-1", "x".repeat(64)]) {
      assert.isUndefined(WatsonXWire.unsupported({ prompt: "x", responseFormat: format(name) }, "chat", "watsonx"))
    }
  })

  it("a message's name is sent in the chat API's `name` (as watsonx takes it); the text API has no place for it", () => {
    const conversation: Model.GenerateRequest = {
      messages: [
        { role: "system", content: "s", name: "rules" },
        { role: "user", content: "hi", name: "alice" },
        { role: "assistant", content: "hello", name: "bot" },
        { role: "user", content: "and?" }
      ]
    }
    const messages = WatsonXWire.chatBody(conversation, "m")["messages"] as ReadonlyArray<Record<string, unknown>>
    assert.deepStrictEqual(
      messages.map((m) => m["name"]),
      ["rules", "alice", "bot", undefined]
    )
    assert.isFalse("name" in messages[3]!)
    assert.notInclude(JSON.stringify(WatsonXWire.generationBody(conversation, "m")), "alice")
  })

  it("an assistant turn with an empty toolCalls list made no calls: sent as its text, not refused", () => {
    const conversation: Parameters<typeof WatsonXWire.unsupported>[0] = {
      messages: [
        { role: "user", content: "hi" },
        { role: "assistant", content: "hello", toolCalls: [] },
        { role: "user", content: "and?" }
      ]
    }
    assert.isUndefined(WatsonXWire.unsupported(conversation, "chat", "watsonx"))
    assert.deepStrictEqual((WatsonXWire.chatBody(conversation, "m")["messages"] as Array<unknown>)[1], {
      role: "assistant",
      content: "hello"
    })
    // A turn that did call tools is refused naming it.
    const called = WatsonXWire.unsupported(
      {
        messages: [
          { role: "user", content: "hi" },
          { role: "assistant", content: "", toolCalls: [{ id: "c", name: "f", arguments: "{}" }] }
        ]
      },
      "chat",
      "watsonx"
    )
    assert.strictEqual(called?.field, "messages[1].toolCalls")
  })

  it("text generation: more than 6 stop sequences, or a random_seed outside 1..2^32-1, are refused naming them", () => {
    const refusal = (request: Parameters<typeof WatsonXWire.unsupported>[0]) => {
      const error = WatsonXWire.unsupported(request, "generation", "watsonx")
      return error === undefined ? undefined : [error.reason, error.field]
    }
    const seven = ["a", "b", "c", "d", "e", "f", "g"]
    assert.deepStrictEqual(refusal({ prompt: "x", stop: seven }), ["InvalidRequest", "stop"])
    assert.isUndefined(refusal({ prompt: "x", stop: seven.slice(0, 6) }))
    for (const seed of [0, -1, 2 ** 32]) {
      assert.deepStrictEqual(refusal({ prompt: "x", seed }), ["InvalidRequest", "seed"], String(seed))
    }
    for (const seed of [1, 2 ** 32 - 1]) assert.isUndefined(refusal({ prompt: "x", seed }), String(seed))
  })

  it("chat body: user turns as text parts, the options by their watsonx names, a JSON schema format", () => {
    const schema = { type: "object" }
    assert.deepStrictEqual(
      WatsonXWire.chatBody(
        {
          system: "Be nice.",
          messages: [
            { role: "user", content: "hi" },
            { role: "assistant", content: "hello" }
          ],
          maxTokens: 5,
          temperature: 0.5,
          topP: 0.9,
          stop: ["x"],
          seed: 7,
          responseFormat: { type: "json_schema", name: "s", description: "a summary", schema, strict: true }
        },
        "m"
      ),
      {
        model_id: "m",
        messages: [
          { role: "system", content: "Be nice." },
          { role: "user", content: [{ type: "text", text: "hi" }] },
          { role: "assistant", content: "hello" }
        ],
        max_tokens: 5,
        temperature: 0.5,
        top_p: 0.9,
        stop: ["x"],
        seed: 7,
        response_format: {
          type: "json_schema",
          json_schema: { name: "s", description: "a summary", schema, strict: true }
        }
      }
    )
  })

  it("generation body: a conversation flattened into Role: text paragraphs; sampling only with a temperature", () => {
    assert.deepStrictEqual(
      WatsonXWire.generationBody(
        {
          system: "S",
          messages: [
            { role: "user", content: "q" },
            { role: "assistant", content: "a" }
          ],
          temperature: 0.7
        },
        "m"
      ),
      {
        model_id: "m",
        input: "System: S\n\nUser: q\n\nAssistant: a",
        parameters: { decoding_method: "sample", temperature: 0.7 }
      }
    )
    assert.deepStrictEqual(WatsonXWire.generationBody({ system: "S", prompt: "q", seed: 3 }, "m"), {
      model_id: "m",
      input: "S\n\nq",
      parameters: { decoding_method: "greedy", random_seed: 3 }
    })
  })

  it("stream state: deltas, the first event's input count, the last finish reason, one Finish", () => {
    const state = WatsonXWire.streamState("watsonx", "m", 99)
    const event = (text: string, input: number, output: number, stop: string) => ({
      results: [
        { generated_text: text, input_token_count: input, generated_token_count: output, stop_reason: stop }
      ] as const
    })
    assert.deepStrictEqual(state.generation(event("", 9, 0, "not_finished")), [])
    assert.isFalse(state.finished())
    assert.deepStrictEqual(state.generation(event("Hi", 0, 1, "not_finished")), [{ _tag: "TextDelta", text: "Hi" }])
    state.generation(event("!", 0, 2, "max_tokens"))
    assert.isTrue(state.finished())
    assert.deepStrictEqual(state.finish(), {
      _tag: "Finish",
      finishReason: "length",
      usage: { inputTokens: 9, outputTokens: 2, totalTokens: 11 },
      provider: "watsonx",
      model: "m"
    })
  })

  it("token counts that are no counts (negative, fractional) are estimated, in answers and streams alike", () => {
    const chat = WatsonXWire.chatResponse(
      {
        choices: [{ message: { content: "12345678" }, finish_reason: "stop" }],
        usage: { prompt_tokens: -5, completion_tokens: 1.5 }
      },
      "watsonx",
      "m",
      7
    )
    assert.deepStrictEqual(chat.usage, { inputTokens: 7, outputTokens: 2, totalTokens: 9 })
    const state = WatsonXWire.streamState("watsonx", "m", 7)
    state.chat({
      choices: [{ delta: { content: "12345678" }, finish_reason: "stop" }],
      usage: { prompt_tokens: -1, completion_tokens: 0.5 }
    })
    assert.deepStrictEqual((state.finish() as { readonly usage: Model.Usage }).usage, {
      inputTokens: 7,
      outputTokens: 2,
      totalTokens: 9
    })
  })
})

// ---------------------------------------------------------------------------------------
// Over HTTP, against a loopback watsonx + IAM server

const KEY = "ibm-apikey-TEST-abcdef0123456789-SECRET"
/** Tokens the server hands out: long and unmistakable, so a leak of any part shows. */
const tokenN = (n: number) => `eyJhbGciOiJSUzI1NiJ9.TOKEN-${n}-SECRET-abcdefghijklmnopqrstuvwxyz`

interface Script {
  iamCalls: number
  iamStatus: number
  iamDelayMs: number
  iamHang: boolean
  expiresIn: number
  /** Tokens the API refuses with 401. */
  rejected: Set<string>
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

const generationEvent = (text: string, stop = "not_finished", input = 0, output = 1) => ({
  model_id: "m",
  results: [{ generated_text: text, generated_token_count: output, input_token_count: input, stop_reason: stop }]
})

/** SSE as watsonx sends it: `id:`, `event: message`, CRLF. */
const wsse = (events: ReadonlyArray<unknown>): string =>
  events.map((e, i) => `id: ${i + 1}\r\nevent: message\r\ndata: ${JSON.stringify(e)}\r\n\r\n`).join("")

const bearerOf = (request: Server.Recorded): string => String(request.headers.authorization).replace("Bearer ", "")

/** A watsonx + IAM server: IAM hands out token 1, 2, ...; the API refuses the tokens in `rejected`. */
const makeServer = (handler: Server.Handler) =>
  Effect.gen(function* () {
    const script: Script = {
      iamCalls: 0,
      iamStatus: 200,
      iamDelayMs: 0,
      iamHang: false,
      expiresIn: 3600,
      rejected: new Set()
    }
    const server = yield* Server.make(async (req, res) => {
      if (req.path === "/identity/token") {
        script.iamCalls++
        const n = script.iamCalls
        if (script.iamHang) return Server.hang(res)
        if (script.iamDelayMs > 0) await Server.pause(script.iamDelayMs)
        if (script.iamStatus !== 200) {
          return Server.json(res, script.iamStatus, {
            errorCode: "BXNIM0415E",
            errorMessage: "Provided API key could not be found.",
            context: { requestId: "r1" }
          })
        }
        return Server.json(res, 200, {
          access_token: tokenN(n),
          refresh_token: "not_supported",
          token_type: "Bearer",
          expires_in: script.expiresIn,
          expiration: 1_728_000_000 + script.expiresIn,
          scope: "ibm openid"
        })
      }
      if (script.rejected.has(bearerOf(req))) {
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
      return handler(req, res)
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
    const iamArrived = (n: number) => Effect.flatMap(server.requests, () => server.awaitRequests(n))
    return { server, script, provider, apiRequests, iamArrived }
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
  if (error._tag !== "ModelError") throw new Error(`expected a ModelError, got ${error._tag}: ${error.message}`)
  return error
}

const failing = (effect: Effect.Effect<unknown, AiError>) => Effect.map(Effect.exit(effect), modelErrorOf)

/**
 * Every rendering of a failure: the error as JSON, through `util.inspect`, as a string, its
 * cause's message, the `Cause` pretty-printed, and the lines a logger writes for it.
 */
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

const assertNoSecret = (texts: ReadonlyArray<string>, secrets: ReadonlyArray<string>) => {
  assert.isAbove(texts.length, 5)
  for (const text of texts) {
    for (const secret of secrets) assert.notInclude(text, secret)
    // No fragment of a token either (a truncation that cut one in two).
    assert.notMatch(text, /TOKEN-\d+-SECRET|apikey-TEST/)
  }
}

layer(NodeHttpClient.layerUndici)("WatsonX over HTTP", (it) => {
  describe("IAM token", () => {
    it.effect("the token request is the documented form; chat carries the bearer, version and project", () =>
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
        assert.strictEqual(chat?.headers.authorization, `Bearer ${tokenN(1)}`)
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

    it.effect(
      "a token that cannot travel in a header (CR, LF, ...) is Decode at the fetch, not a Transport error per call",
      () =>
        Effect.gen(function* () {
          const server = yield* Server.make((req, res) =>
            req.path === "/identity/token"
              ? Server.json(res, 200, { access_token: "tok-1\r\nx-evil: 1", token_type: "Bearer", expires_in: 3600 })
              : Server.json(res, 200, chatAnswer("ok"))
          )
          const p = yield* WatsonX.make({
            apiKey: Redacted.make(KEY),
            projectId: "proj-1",
            url: server.url,
            iamUrl: `${server.url}/identity/token`
          })
          const error = yield* failing(p.generate({ prompt: "hi" }))
          assert.deepStrictEqual([error.reason, error.field], ["Decode", "access_token"])
          assert.notInclude(error.message, "tok-1")
          const requests = yield* server.requests
          assert.isFalse(requests.some((r) => r.path.startsWith("/ml/")))
        })
    )

    it.effect("50 concurrent calls fetch the token once", () =>
      Effect.gen(function* () {
        const { script, provider, apiRequests } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        script.iamDelayMs = 30
        const p = yield* provider()
        const answers = yield* Effect.forEach(
          Array.from({ length: 50 }, (_, i) => i),
          (i) => p.generate({ prompt: `q${i}` }),
          { concurrency: "unbounded" }
        )
        assert.lengthOf(answers, 50)
        assert.strictEqual(script.iamCalls, 1)
        const api = yield* apiRequests
        assert.lengthOf(api, 50)
        assert.isTrue(api.every((r) => bearerOf(r) === tokenN(1)))
      })
    )

    it.effect("the token is reused until refreshMargin before expiry (TestClock), then fetched again", () =>
      Effect.gen(function* () {
        const { script, provider, apiRequests } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        const p = yield* provider({ refreshMargin: "60 seconds" })
        yield* p.generate({ prompt: "1" })
        yield* TestClock.adjust(Duration.seconds(3600 - 60 - 1))
        yield* p.generate({ prompt: "2" })
        assert.strictEqual(script.iamCalls, 1)
        yield* TestClock.adjust(Duration.seconds(1))
        yield* p.generate({ prompt: "3" })
        assert.strictEqual(script.iamCalls, 2)
        assert.deepStrictEqual((yield* apiRequests).map(bearerOf), [tokenN(1), tokenN(1), tokenN(2)])
      })
    )

    it.effect("a 401 fetches a fresh token and retries once; a refused fresh token is the call's Unauthorized", () =>
      Effect.gen(function* () {
        const { script, provider, apiRequests } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        script.rejected.add(tokenN(1))
        const p = yield* provider()
        const answer = yield* p.generate({ prompt: "hi" })
        assert.strictEqual(answer.text, "ok")
        assert.strictEqual(script.iamCalls, 2)
        assert.deepStrictEqual((yield* apiRequests).map(bearerOf), [tokenN(1), tokenN(2)])
        script.rejected.add(tokenN(2))
        script.rejected.add(tokenN(3))
        const error = yield* failing(p.generate({ prompt: "y" }))
        assert.strictEqual(error.reason, "Unauthorized")
        assert.strictEqual(error.status, 401)
        assert.include(error.message, "expired token")
        assert.deepStrictEqual((yield* apiRequests).slice(2).map(bearerOf), [tokenN(2), tokenN(3)])
        assert.strictEqual(script.iamCalls, 3)
      })
    )

    it.effect("a hanging IAM request fails the waiters with Timeout at tokenTimeout; the next call asks again", () =>
      Effect.gen(function* () {
        const { server, script, provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        script.iamHang = true
        const p = yield* provider({ tokenTimeout: "2 seconds" })
        const calls = yield* Effect.forkChild(
          Effect.all([Effect.exit(p.generate({ prompt: "1" })), Effect.exit(p.generate({ prompt: "2" }))], {
            concurrency: "unbounded"
          })
        )
        yield* server.awaitRequests(1)
        yield* TestClock.adjust("1999 millis")
        assert.isUndefined(calls.pollUnsafe())
        yield* TestClock.adjust("1 millis")
        for (const exit of yield* Fiber.join(calls)) {
          const error = modelErrorOf(exit)
          assert.strictEqual(error.reason, "Timeout")
          assert.strictEqual(error.provider, "watsonx")
          assert.include(error.message, "IAM")
        }
        assert.strictEqual(script.iamCalls, 1)
        yield* server.awaitAborted(1)
        script.iamHang = false
        assert.strictEqual((yield* p.generate({ prompt: "3" })).text, "ok")
        assert.strictEqual(script.iamCalls, 2)
      })
    )

    it.effect("a refused API key is Unauthorized, not cached, and never in the error", () =>
      Effect.gen(function* () {
        const { script, provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        script.iamStatus = 400
        const p = yield* provider()
        const exit = yield* Effect.exit(p.generate({ prompt: "hi" }))
        const error = modelErrorOf(exit)
        assert.strictEqual(error.reason, "Unauthorized")
        assert.strictEqual(error.status, 400)
        assert.include(error.message, "could not be found")
        assertNoSecret(yield* renderings(exit), [KEY])
        script.iamStatus = 200
        assert.strictEqual((yield* p.generate({ prompt: "hi" })).text, "ok")
        assert.strictEqual(script.iamCalls, 2)
      })
    )

    it.effect("an IAM answer past maxResponseBytes is TooLarge", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) =>
          Server.endless(res, { contentType: "application/json", prefix: `{"access_token": "` })
        )
        const p = yield* WatsonX.make({
          apiKey: Redacted.make(KEY),
          projectId: "p",
          url: server.url,
          iamUrl: `${server.url}/identity/token`,
          maxResponseBytes: 64 * 1024
        })
        assert.strictEqual((yield* failing(p.generate({ prompt: "x" }))).reason, "TooLarge")
      })
    )
  })

  describe("generation", () => {
    it.effect("text generation: documented body and answer; a space instead of a project", () =>
      Effect.gen(function* () {
        const { apiRequests, provider } = yield* makeServer((_, res) =>
          Server.json(res, 200, generationAnswer(" Paris.", "max_tokens"))
        )
        const p = yield* provider({
          api: "generation",
          model: "ibm/granite-13b-instruct-v2",
          projectId: undefined,
          spaceId: "space-9"
        })
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
          space_id: "space-9"
        })
      })
    )

    it.effect("tools are refused before any request", () =>
      Effect.gen(function* () {
        const { server, provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        const p = yield* provider()
        const error = yield* failing(p.generate({ prompt: "x", tools: [{ name: "f" }] }))
        assert.strictEqual(error.reason, "InvalidRequest")
        assert.strictEqual(error.field, "tools")
        const streamed = yield* collect(p.stream({ prompt: "x", tools: [{ name: "f" }] }))
        assert.strictEqual(modelErrorOf(streamed.exit).field, "tools")
        assert.lengthOf(yield* server.requests, 0)
      })
    )

    it.effect("429 with Retry-After, 500, 404 model and a malformed body", () =>
      Effect.gen(function* () {
        const { provider } = yield* makeServer((req, res) => {
          const model = (req.json as { model_id: string }).model_id
          if (model === "rate") {
            return Server.json(
              res,
              429,
              { errors: [{ code: "rate_limit", message: "Too many" }], status_code: 429 },
              { "retry-after": "4" }
            )
          }
          if (model === "crash") {
            return Server.json(res, 500, { errors: [{ code: "internal", message: "boom" }], status_code: 500 })
          }
          if (model === "missing") {
            return Server.json(res, 404, {
              errors: [{ code: "model_not_supported", message: "Model 'missing' is not supported" }],
              status_code: 404
            })
          }
          return Server.json(res, 200, { model_id: "m", choices: [{ message: { content: ["not", "text"] } }] })
        })
        const p = yield* provider()
        const rate = yield* failing(p.generate({ prompt: "x", model: "rate" }))
        assert.strictEqual(rate.reason, "RateLimited")
        assert.deepStrictEqual(rate.retryAfter, Duration.seconds(4))
        assert.strictEqual((yield* failing(p.generate({ prompt: "x", model: "crash" }))).reason, "Overloaded")
        const missing = yield* failing(p.generate({ prompt: "x", model: "missing" }))
        assert.strictEqual(missing.reason, "InvalidRequest")
        assert.strictEqual(missing.field, "model")
        const bad = yield* failing(p.generate({ prompt: "x", model: "bad" }))
        assert.strictEqual(bad.reason, "Decode")
        assert.strictEqual(bad.field, "choices[0].message.content")
      })
    )

    it.effect("timeout bounds the whole call, token fetch included", () =>
      Effect.gen(function* () {
        const { server, provider } = yield* makeServer((_, res) => Server.hang(res))
        const p = yield* provider({ timeout: "3 seconds" })
        const call = yield* Effect.forkChild(Effect.exit(p.generate({ prompt: "x" })))
        yield* server.awaitRequests(2)
        yield* TestClock.adjust("3 seconds")
        const error = failureOf(yield* Fiber.join(call))
        assert.strictEqual(error._tag, "TimeoutError")
        yield* server.awaitAborted(1)
      })
    )

    it.effect(
      "embeddings: the documented body, batches of 1,000 in input order, a count that does not match is Decode",
      () =>
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
          assert.deepStrictEqual(answer, {
            vectors: [
              [0.1, 0.2],
              [0.3, 0.4]
            ],
            usage: { inputTokens: 6, outputTokens: 0, totalTokens: 6 },
            provider: "watsonx",
            model: "ibm/slate-125m-english-rtrvr-v2"
          })
          const [request] = yield* apiRequests
          assert.strictEqual(request?.path, "/ml/v1/text/embeddings")
          assert.deepStrictEqual(request?.json, {
            model_id: "ibm/slate-125m-english-rtrvr-v2",
            inputs: ["a", "b"],
            project_id: "proj-1"
          })
          const many = yield* makeServer((req, res) => {
            const inputs = (req.json as { inputs: ReadonlyArray<string> }).inputs
            Server.json(res, 200, {
              results: inputs.map((t) => ({ embedding: [Number(t)] })),
              input_token_count: inputs.length
            })
          })
          const texts = Array.from({ length: 2048 }, (_, i) => String(i)) as unknown as readonly [
            string,
            ...Array<string>
          ]
          const batched = yield* (yield* many.provider()).embed({ texts })
          assert.deepStrictEqual(
            batched.vectors.map((v) => v[0]),
            texts.map(Number)
          )
          assert.deepStrictEqual(batched.usage, { inputTokens: 2048, outputTokens: 0, totalTokens: 2048 })
          assert.deepStrictEqual(
            (yield* many.apiRequests).map((r) => (r.json as { inputs: ReadonlyArray<string> }).inputs.length),
            [1000, 1000, 48]
          )
          const short = yield* makeServer((_, res) => Server.json(res, 200, { results: [{ embedding: [1] }] }))
          const q = yield* short.provider()
          const error = yield* failing(q.embed({ texts: ["a", "b"] }))
          assert.strictEqual(error.reason, "Decode")
          assert.strictEqual(error.field, "results")
        })
    )
  })

  describe("embeddings: an answer of more vectors than a batch's texts", () => {
    it.effect("is Decode on results, counted before they are read", () =>
      Effect.gen(function* () {
        const results: Array<unknown> = Array.from({ length: 100_000 }, () => ({ embedding: [] }))
        results[5_000] = { embedding: "x" }
        const server = yield* makeServer((_, res) => Server.json(res, 200, { model_id: "m", results }))
        const p = yield* server.provider()
        const error = yield* failing(p.embed({ texts: ["a", "b"] }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "results"])
        assert.include(error.message, "at most 1000")
      })
    )
  })

  describe("embeddings: a vector of more than 65,536 dimensions", () => {
    it.effect("is Decode naming it, counted before it is read", () =>
      Effect.gen(function* () {
        const embedding: Array<unknown> = Array.from({ length: 1_000_000 }, () => 0)
        // One value that is no number, far in: the count is refused before it is read.
        embedding[500_000] = "x"
        const server = yield* makeServer((_, res) => Server.json(res, 200, { model_id: "m", results: [{ embedding }] }))
        const p = yield* server.provider()
        const error = yield* failing(p.embed({ texts: ["a"] }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "results[0].embedding"])
        assert.include(error.message, "65536")
      })
    )
  })

  describe("embeddings: a bad vector in a later batch", () => {
    it.effect("is named by its index in the answer that had it, with the batch and the input text in the message", () =>
      Effect.gen(function* () {
        const { provider } = yield* makeServer((req, res) => {
          const inputs = (req.json as { inputs: ReadonlyArray<string> }).inputs
          Server.json(res, 200, {
            results: inputs.map((t) => ({ embedding: t === "1003" ? [] : [1, 2] }))
          })
        })
        const texts = Array.from({ length: 1500 }, (_, i) => String(i)) as unknown as readonly [
          string,
          ...Array<string>
        ]
        const error = yield* failing((yield* provider()).embed({ texts }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "results[3]"])
        assert.include(error.message, "batch 2")
        assert.include(error.message, "input text 1003")
      })
    )
  })

  describe("chat choices", () => {
    it.effect("the answer is the choice whose index is 0, wherever it sits; without one it is Decode on choices", () =>
      Effect.gen(function* () {
        const choice = (index: number, content: string, finish: string) => ({
          index,
          message: { role: "assistant", content },
          finish_reason: finish
        })
        const { provider } = yield* makeServer((req, res) =>
          Server.json(res, 200, {
            ...chatAnswer("unused"),
            choices:
              (req.json as { model_id: string }).model_id === "none"
                ? [choice(1, "second", "stop")]
                : [choice(1, "second", "length"), choice(0, "first", "stop")]
          })
        )
        const p = yield* provider()
        const answer = yield* p.generate({ prompt: "x" })
        assert.deepStrictEqual([answer.text, answer.finishReason], ["first", "stop"])
        const error = yield* failing(p.generate({ prompt: "x", model: "none" }))
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "choices"])
      })
    )

    it.effect(
      "a finish reason tool_calls, of calls this provider never reads, is Decode, as OpenAiCompat's without calls",
      () =>
        Effect.gen(function* () {
          const { provider } = yield* makeServer((req, res) =>
            (req.json as { model_id: string }).model_id === "streamed"
              ? Server.text(
                  res,
                  200,
                  wsse([
                    { model_id: "m", choices: [{ index: 0, finish_reason: "tool_calls", delta: { content: "" } }] }
                  ]),
                  { "content-type": "text/event-stream" }
                )
              : Server.json(res, 200, {
                  ...chatAnswer(""),
                  choices: [{ index: 0, message: { role: "assistant", content: "" }, finish_reason: "tool_calls" }]
                })
          )
          const p = yield* provider()
          const error = yield* failing(p.generate({ prompt: "x" }))
          assert.deepStrictEqual([error.reason, error.field], ["Decode", "choices[0].message.tool_calls"])
          const { exit, parts } = yield* collect(p.stream({ prompt: "x", model: "streamed" }))
          assert.deepStrictEqual(
            [modelErrorOf(exit).reason, modelErrorOf(exit).field],
            ["Decode", "choices[0].delta.tool_calls"]
          )
          assert.notInclude(
            parts.map((part) => part._tag),
            "Finish"
          )
        })
    )
  })

  describe("answers of many choices or results", () => {
    it.effect("more than 128 choices or results are Decode naming them, counted before any is read", () =>
      Effect.gen(function* () {
        const choice = (index: number) => ({
          index,
          message: { role: "assistant", content: "hi" },
          finish_reason: "stop"
        })
        const result = {
          generated_text: "hi",
          generated_token_count: 1,
          input_token_count: 1,
          stop_reason: "eos_token"
        }
        const many = <A>(model: string, item: (i: number) => A): Array<unknown> => {
          const all: Array<unknown> = Array.from(
            { length: model === "bound" ? 128 : model === "over" ? 129 : 100_000 },
            (_, i) => item(i)
          )
          // One entry that does not decode, far in: the count is refused before it is read.
          if (model === "huge") all[50_000] = { index: "x", generated_text: 1 }
          return all
        }
        const { provider } = yield* makeServer((req, res) => {
          const model = String((req.json as { model_id: string }).model_id)
          return req.path.endsWith("/chat")
            ? Server.json(res, 200, { ...chatAnswer("unused"), choices: many(model, choice) })
            : Server.json(res, 200, { ...generationAnswer("unused"), results: many(model, () => result) })
        })
        for (const api of ["chat", "generation"] as const) {
          const p = yield* provider({ api })
          assert.strictEqual((yield* p.generate({ prompt: "x", model: "bound" })).text, "hi", api)
          for (const model of ["over", "huge"]) {
            const error = yield* failing(p.generate({ prompt: "x", model }))
            assert.deepStrictEqual(
              [error.reason, error.field],
              ["Decode", api === "chat" ? "choices" : "results"],
              `${api} ${model}`
            )
          }
        }
      })
    )
  })

  describe("embeddings usage", () => {
    it.effect("a batch the server did not count makes the call's usage unknown, not the sum of the others", () =>
      Effect.gen(function* () {
        const { provider } = yield* makeServer((req, res) => {
          const inputs = (req.json as { inputs: ReadonlyArray<string> }).inputs
          Server.json(res, 200, {
            results: inputs.map(() => ({ embedding: [1, 2] })),
            ...(inputs.length === 1000 ? { input_token_count: 1000 } : {})
          })
        })
        const texts = Array.from({ length: 1001 }, (_, i) => String(i)) as unknown as readonly [
          string,
          ...Array<string>
        ]
        // 1,000 tokens for 1,001 texts was an undercount taken for the whole: budgets and metrics summed it.
        const answer = yield* (yield* provider()).embed({ texts })
        assert.lengthOf(answer.vectors, 1001)
        assert.isUndefined(answer.usage)
      })
    )
  })

  describe("streaming", () => {
    it.effect("generation_stream SSE split at awkward bytes ends in one Finish", () =>
      Effect.gen(function* () {
        const events = [
          generationEvent("", "not_finished", 9, 0),
          generationEvent("Bonjour ", "not_finished", 0, 2),
          generationEvent("à tous 👋", "eos_token", 0, 5)
        ]
        const { apiRequests, provider } = yield* makeServer((_, res) =>
          Server.chunked(res, Server.splitAwkward(`${wsse(events)}event: close\r\n\r\n`))
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

    it.effect("a closing `event: close` ends the stream: its data `{}` is no chunk, a usage chunk in it counts", () =>
      Effect.gen(function* () {
        const chunk = (content: string, finish: string | null = null) => ({
          model_id: "ibm/granite-3-8b-instruct",
          choices: [{ index: 0, finish_reason: finish, delta: { role: "assistant", content } }]
        })
        const usage = {
          model_id: "ibm/granite-3-8b-instruct",
          choices: [],
          usage: { completion_tokens: 2, prompt_tokens: 5, total_tokens: 7 }
        }
        // As IBM's own SDK is tested against: the stream's last event is `event: close`, with `{}` or the usage.
        let close: unknown = {}
        let api: "chat" | "generation" = "chat"
        const { provider } = yield* makeServer((_, res) =>
          Server.chunked(res, [
            `${wsse(api === "chat" ? [chunk("Hi"), chunk(" there", "stop")] : [generationEvent("Hi there", "eos_token", 4, 2)])}id: 9\r\nevent: close\r\ndata: ${JSON.stringify(close)}\r\n\r\n`
          ])
        )
        const finishOf = (parts: ReadonlyArray<Model.StreamPart>) => parts.filter((p) => p._tag === "Finish")
        for (const [given, withUsage] of [
          [{}, false],
          [usage, true]
        ] as const) {
          close = given
          const p = yield* provider()
          const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
          assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
          assert.strictEqual(text, "Hi there")
          const finishes = finishOf(parts)
          assert.lengthOf(finishes, 1)
          assert.strictEqual(finishes[0]?._tag === "Finish" && finishes[0].finishReason, "stop")
          if (withUsage) {
            assert.deepStrictEqual(finishes[0]?._tag === "Finish" && finishes[0].usage, {
              inputTokens: 5,
              outputTokens: 2,
              totalTokens: 7
            })
          }
        }
        api = "generation"
        close = {}
        const p = yield* provider({ api: "generation" })
        const { exit, parts, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
        assert.strictEqual(text, "Hi there")
        assert.lengthOf(finishOf(parts), 1)
      })
    )

    it.effect("chat_stream: a 401 before the stream refreshes the token and retries; deltas then Finish", () =>
      Effect.gen(function* () {
        const chunk = (content: string, finish: string | null = null, usage?: unknown) => ({
          id: "c1",
          model_id: "ibm/granite-3-8b-instruct",
          choices: [{ index: 0, finish_reason: finish, delta: content === "" ? {} : { role: "assistant", content } }],
          ...(usage ? { usage } : {})
        })
        const { script, apiRequests, provider } = yield* makeServer((_, res) =>
          Server.chunked(res, [
            wsse([
              chunk("Hi"),
              chunk(" there"),
              chunk("", "stop", { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 })
            ])
          ])
        )
        script.rejected.add(tokenN(1))
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
        assert.deepStrictEqual(
          (yield* apiRequests).map((r) => [r.path, bearerOf(r)]),
          [
            ["/ml/v1/text/chat_stream", tokenN(1)],
            ["/ml/v1/text/chat_stream", tokenN(2)]
          ]
        )
      })
    )

    it.effect(
      "chat_stream whose choices are never numbered 0 ending in [DONE] is Decode on choices, as generate, not an empty answer",
      () =>
        Effect.gen(function* () {
          const chunk = (content: string, finish: string | null = null) => ({
            model_id: "m",
            choices: [{ index: 1, finish_reason: finish, delta: content === "" ? {} : { content } }]
          })
          let done = true
          const { provider } = yield* makeServer((_, res) =>
            Server.chunked(res, [`${wsse([chunk("Hi"), chunk("", "stop")])}${done ? "data: [DONE]\n\n" : ""}`])
          )
          const p = yield* provider()
          for (const withDone of [true, false]) {
            done = withDone
            const { exit, text } = yield* collect(p.stream({ prompt: "hi" }))
            const error = modelErrorOf(exit)
            // Without [DONE] and no finish reason for choice 0, the stream broke off (as OpenAiCompat reads it).
            assert.strictEqual(error.reason, withDone ? "Decode" : "Transport", `[DONE] ${withDone}: ${error.message}`)
            if (withDone) assert.strictEqual(error.field, "choices")
            assert.strictEqual(text, "")
          }
        })
    )

    it.effect("an empty finish_reason or stop_reason is none, so a stream cut after it is Transport", () =>
      Effect.gen(function* () {
        const chunk = (content: string) => ({
          model_id: "ibm/granite-3-8b-instruct",
          choices: [{ index: 0, finish_reason: "", delta: { role: "assistant", content } }]
        })
        const { provider } = yield* makeServer((req, res) =>
          Server.chunked(
            res,
            [
              req.path.endsWith("generation_stream")
                ? wsse([generationEvent("half", "", 1), generationEvent(" an answer", "", 3)])
                : wsse([chunk("half"), chunk(" an answer")])
            ],
            { end: "end" }
          )
        )
        for (const api of ["chat", "generation"] as const) {
          const p = yield* provider({ api })
          const { exit, text } = yield* collect(p.stream({ prompt: "hi" }))
          assert.strictEqual(text, "half an answer", api)
          assert.strictEqual(modelErrorOf(exit).reason, "Transport", api)
        }
      })
    )

    it.effect("a stream cut mid-way is Transport after its text; an error event is typed, never retried", () =>
      Effect.gen(function* () {
        const { provider, apiRequests } = yield* makeServer((req, res) =>
          (req.json as { input: string }).input === "cut"
            ? Server.chunked(res, [wsse([generationEvent("half", "not_finished", 3)])], { end: "destroy" })
            : Server.chunked(
                res,
                [
                  wsse([generationEvent("half", "not_finished", 3)]) +
                    `event: error\r\ndata: ${JSON.stringify({ errors: [{ code: "model_error", message: "downstream failure" }], status_code: 401 })}\r\n\r\n`
                ],
                { end: "hang" }
              )
        )
        const p = yield* provider({ api: "generation" })
        const cut = yield* collect(p.stream({ prompt: "cut" }))
        assert.strictEqual(cut.text, "half")
        assert.strictEqual(modelErrorOf(cut.exit).reason, "Transport")
        const failed = yield* collect(p.stream({ prompt: "err" }))
        assert.strictEqual(failed.text, "half")
        const error = modelErrorOf(failed.exit)
        assert.strictEqual(error.reason, "Unauthorized")
        assert.include(error.message, "downstream failure")
        // A 401 after text is the stream's failure, not a reason to start it again.
        assert.lengthOf(yield* apiRequests, 2)
      })
    )

    it.effect("an error event whose data is plain text fails with that text, not as a malformed answer", () =>
      Effect.gen(function* () {
        const { provider } = yield* makeServer((_, res) =>
          Server.chunked(
            res,
            [
              `${wsse([generationEvent("half", "not_finished", 3)])}event: error\r\ndata: model runtime crashed\r\n\r\n`
            ],
            { end: "hang" }
          )
        )
        const p = yield* provider({ api: "generation" })
        const { exit, text } = yield* collect(p.stream({ prompt: "x" }))
        assert.strictEqual(text, "half")
        const error = modelErrorOf(exit)
        assert.notStrictEqual(error.reason, "Decode")
        assert.include(error.message, "model runtime crashed")
      })
    )

    it.effect("a stall mid-stream ends with TimeoutError limit idle, with the text so far", () =>
      Effect.gen(function* () {
        const { provider, server } = yield* makeServer((_, res) =>
          Server.chunked(res, [wsse([generationEvent("half", "not_finished", 3)])], { end: "hang" })
        )
        const p = yield* provider({ api: "generation", streamIdleTimeout: "5 seconds" })
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

    it.effect("a server that stalls after its final event (no [DONE], no close) finishes after a short wait", () =>
      Effect.gen(function* () {
        const chat = (content: string, finish: string | null) => ({
          model_id: "m",
          choices: [{ index: 0, finish_reason: finish, delta: { role: "assistant", content } }]
        })
        const { provider, server } = yield* makeServer((req, res) =>
          Server.chunked(
            res,
            [
              req.path.endsWith("chat_stream")
                ? wsse([chat("done", null), chat("", "stop")])
                : wsse([generationEvent("done", "not_finished", 3), generationEvent("", "eos_token", 0, 2)])
            ],
            { end: "hang" }
          )
        )
        for (const api of ["chat", "generation"] as const) {
          const p = yield* provider({ api, streamIdleTimeout: "20 seconds" })
          const parts = yield* drainStalled(p.stream({ prompt: "hi" }), api)
          assert.deepStrictEqual(
            parts.map((part) => (part._tag === "Finish" ? part.finishReason : part._tag)),
            ["TextDelta", "stop"],
            api
          )
        }
        yield* server.awaitAborted(2)
      })
    )

    it.effect("an endless stream is TooLarge at maxResponseBytes", () =>
      Effect.gen(function* () {
        const { provider } = yield* makeServer((_, res) =>
          Server.endless(res, { chunk: wsse([generationEvent("x".repeat(1000))]) })
        )
        const p = yield* provider({ api: "generation", maxResponseBytes: 256 * 1024 })
        const { exit, text } = yield* collect(p.stream({ prompt: "hi" }))
        assert.strictEqual(modelErrorOf(exit).reason, "TooLarge")
        assert.isAbove(text.length, 0)
      })
    )
  })

  describe("secrets (issue 19)", () => {
    const echoToken = (req: Server.Recorded) =>
      `invalid header Authorization: Bearer ${bearerOf(req)} for apikey ${KEY}`

    it.effect("an error body echoing the token: no rendering of a generate or stream failure carries it", () =>
      Effect.gen(function* () {
        const { provider } = yield* makeServer((req, res) =>
          req.path.endsWith("_stream")
            ? Server.chunked(
                res,
                [
                  wsse([generationEvent("partial")]) +
                    `event: error\r\ndata: ${JSON.stringify({ errors: [{ code: "bad", message: echoToken(req) }], status_code: 400 })}\r\n\r\n`
                ],
                { end: "hang" }
              )
            : Server.json(res, 400, { errors: [{ code: "bad", message: echoToken(req) }], status_code: 400 })
        )
        const p = yield* provider({ api: "generation" })
        const generated = yield* Effect.exit(p.generate({ prompt: "x" }))
        assert.include(modelErrorOf(generated).message, "<redacted>")
        assertNoSecret(yield* renderings(generated), [KEY, tokenN(1)])
        const streamed = yield* collect(p.stream({ prompt: "x" }))
        assert.strictEqual(streamed.text, "partial")
        assert.include(modelErrorOf(streamed.exit).message, "<redacted>")
        assertNoSecret(yield* renderings(streamed.exit), [KEY, tokenN(1)])
      })
    )

    it.effect("an IAM error that echoes the form-encoded request body does not carry the key, encoded or not", () =>
      Effect.gen(function* () {
        const key = "wxKEY/abc+def=ghi-123456 SECRET"
        const server = yield* Server.make((req, res) =>
          Server.json(res, 400, { errorCode: "BXNIM0109E", errorMessage: `bad request: ${req.body}` })
        )
        const p = yield* WatsonX.make({
          apiKey: Redacted.make(key),
          projectId: "proj-1",
          url: server.url,
          iamUrl: `${server.url}/identity/token`
        })
        const generated = yield* Effect.exit(p.generate({ prompt: "x" }))
        const message = modelErrorOf(generated).message
        assert.include(message, "<redacted>")
        const encoded = new URLSearchParams({ k: key }).toString().slice(2)
        assertNoSecret(yield* renderings(generated), [key, encoded, encodeURIComponent(key)])
      })
    )

    it.effect("an IAM answer that is not quite JSON: no piece of the token in it reaches the error", () =>
      Effect.gen(function* () {
        // JSON.parse quotes the text just before where it stopped: here, the end of the token.
        const server = yield* Server.make((_, res) => {
          res.writeHead(200, { "content-type": "application/json" })
          res.end('{"token_type":"Bearer","access_token":"TOKEN-1-SECRET","refresh_token":"RT-SECRET","x":None}')
        })
        const p = yield* WatsonX.make({
          apiKey: Redacted.make(KEY),
          projectId: "proj-1",
          url: server.url,
          iamUrl: `${server.url}/identity/token`
        })
        const exit = yield* Effect.exit(p.generate({ prompt: "x" }))
        const error = modelErrorOf(exit)
        assert.strictEqual(error.reason, "Decode")
        assert.include(error.message, "IAM")
        for (const text of yield* renderings(exit)) assert.notMatch(text, /CRET|SECRET|TOKEN-1/)
      })
    )

    it.effect("a failure of the HTTP client itself, its description and cause holding the token: nothing leaks", () =>
      Effect.gen(function* () {
        const { provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        // A proxy layer that refuses API calls and repeats the request's credentials in its error.
        const leakyProxy = (client: HttpClient.HttpClient): HttpClient.HttpClient =>
          HttpClient.make((request, url) => {
            if (!url.pathname.startsWith("/ml/")) return client.execute(request)
            const auth = String(request.headers.authorization)
            return Effect.fail(
              new HttpClientError.HttpClientError({
                reason: new HttpClientError.TransportError({
                  request,
                  description: `proxy refused ${auth}`,
                  cause: new Error(`upstream said: ${auth} (key ${KEY})`, { cause: new Error(auth) })
                })
              })
            )
          })
        for (const api of ["chat", "generation"] as const) {
          const p = yield* provider({ api, transformClient: leakyProxy })
          const generated = yield* Effect.exit(p.generate({ prompt: "x" }))
          assert.strictEqual(modelErrorOf(generated).reason, "Transport")
          assertNoSecret(yield* renderings(generated), [KEY, tokenN(1), tokenN(2)])
          const streamed = yield* collect(p.stream({ prompt: "x" }))
          assert.strictEqual(modelErrorOf(streamed.exit).reason, "Transport")
          assertNoSecret(yield* renderings(streamed.exit), [KEY, tokenN(1), tokenN(2), tokenN(3)])
          const embedded = yield* Effect.exit(p.embed({ texts: ["a"] }))
          assertNoSecret(yield* renderings(embedded), [KEY, tokenN(1), tokenN(2), tokenN(3)])
        }
      })
    )
  })

  describe("options", () => {
    it.effect("an option whose getter throws is an OptionError naming it, not a defect", () =>
      Effect.gen(function* () {
        const options = Object.defineProperty({ apiKey: Redacted.make("k"), projectId: "p" }, "url", {
          enumerable: true,
          get: () => {
            throw new Error("no url")
          }
        }) as WatsonX.Options
        const error = yield* Effect.flip(Layer.build(WatsonX.layer(options)))
        assert.deepStrictEqual([error._tag, (error as { readonly path?: string }).path], ["OptionError", "url"])
      })
    )

    it.effect(
      "iamUrl and url over plain http are refused unless on loopback: the key and its tokens would cross in clear",
      () =>
        Effect.gen(function* () {
          const { provider, server } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
          const refusal = (options: Partial<WatsonX.Options>) =>
            Effect.map(Effect.flip(provider(options)), (error) => {
              assert.strictEqual(error._tag, "OptionError")
              assert.notInclude(error.message, KEY)
              return error.path
            })
          assert.strictEqual(yield* refusal({ iamUrl: "http://iam.cloud.ibm.com/identity/token" }), "iamUrl")
          assert.strictEqual(yield* refusal({ iamUrl: "http://10.0.0.5:8080/identity/token" }), "iamUrl")
          assert.strictEqual(yield* refusal({ iamUrl: "HTTP://127.0.0.1.nip.io/identity/token" }), "iamUrl")
          assert.strictEqual(yield* refusal({ url: "http://us-south.ml.cloud.ibm.com" }), "url")
          assert.strictEqual(yield* refusal({ url: "http://[::2]:8080" }), "url")
          // https anywhere, http on loopback (127.0.0.0/8, ::1, localhost): built.
          const port = new URL(server.url).port
          for (const options of [
            { iamUrl: "https://iam.cloud.ibm.com/identity/token", url: "https://eu-de.ml.cloud.ibm.com" },
            { iamUrl: `http://localhost:${port}/identity/token`, url: `http://127.0.0.1:${port}` },
            { iamUrl: `http://127.8.9.10:${port}/identity/token`, url: `http://[::1]:${port}` },
            { iamUrl: `http://LOCALHOST:${port}/identity/token` }
          ]) {
            yield* provider(options)
          }
          // Unless the network is said to be the application's own (a checked boolean).
          yield* provider({
            iamUrl: "http://iam.internal/identity/token",
            url: "http://10.0.0.5:8080",
            allowPlainHttpSecrets: true
          })
          assert.strictEqual(yield* refusal({ allowPlainHttpSecrets: null as never }), "allowPlainHttpSecrets")
        })
    )

    it.effect("version: an impossible date is an OptionError naming version, not a 400 on every call", () =>
      Effect.gen(function* () {
        const { provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        for (const version of ["2024-02-30", "2024-13-01", "2023-02-29", "2024-04-31", "2024-00-10", "2024-01-00"]) {
          const error = yield* Effect.flip(provider({ version }))
          assert.deepStrictEqual([error._tag, error.path], ["OptionError", "version"], version)
          assert.include(error.message, version)
        }
        // A leap day is a day.
        yield* provider({ version: "2024-02-29" })
        yield* provider({ version: "2000-02-29" })
      })
    )

    it.effect("version: a long value is shown bounded in the OptionError, as every check shows a value", () =>
      Effect.gen(function* () {
        const { provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        const error = yield* Effect.flip(provider({ version: `2024-${"9".repeat(5_000)}` }))
        assert.deepStrictEqual([error._tag, error.path], ["OptionError", "version"])
        // Its first 80 characters and its length (Input.shown), not the whole value in every log line.
        assert.include(error.message, `got "2024-${"9".repeat(75)}"… (5,005 characters)`)
        assert.isBelow(error.message.length, 200)
      })
    )

    it.effect("every option is checked at build: an OptionError naming the field", () =>
      Effect.gen(function* () {
        const { provider } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("ok")))
        const pathOf = (options: Partial<WatsonX.Options>) =>
          Effect.map(Effect.flip(provider(options)), (error) => {
            assert.strictEqual(error._tag, "OptionError")
            return error.path
          })
        assert.strictEqual(yield* pathOf({ timeout: Number.NaN }), "timeout")
        assert.strictEqual(yield* pathOf({ streamIdleTimeout: 0 }), "streamIdleTimeout")
        assert.strictEqual(yield* pathOf({ maxResponseBytes: -5 }), "maxResponseBytes")
        assert.strictEqual(yield* pathOf({ tokenTimeout: 0 }), "tokenTimeout")
        // A key read from a file with its newline, or an empty one: IAM would refuse it after a call.
        assert.strictEqual(yield* pathOf({ apiKey: Redacted.make("key\n") }), "apiKey")
        assert.strictEqual(yield* pathOf({ apiKey: Redacted.make("k\u0000ey") }), "apiKey")
        assert.strictEqual(yield* pathOf({ apiKey: Redacted.make("") }), "apiKey")
        // Blank: IAM would refuse it at the first call, as an empty one.
        assert.strictEqual(yield* pathOf({ apiKey: Redacted.make("   ") }), "apiKey")
        assert.strictEqual(yield* pathOf({ refreshMargin: -1 }), "refreshMargin")
        assert.strictEqual(yield* pathOf({ projectId: undefined }), "projectId")
        assert.strictEqual(yield* pathOf({ spaceId: "s" }), "spaceId")
        assert.strictEqual(yield* pathOf({ version: "yesterday" }), "version")
        // Values JSON cannot write were quoted with JSON.stringify in the message, which threw.
        assert.strictEqual(yield* pathOf({ version: 20240531n as never }), "version")
        assert.strictEqual(yield* pathOf({ version: ["2024-05-31"] as never }), "version")
        assert.strictEqual(yield* pathOf({ api: 1n as never }), "api")
        assert.strictEqual(yield* pathOf({ api: "completions" as never }), "api")
        assert.strictEqual(yield* pathOf({ iamUrl: "not a url" }), "iamUrl")
        assert.strictEqual(yield* pathOf({ url: "https://eu-de.ml.cloud.ibm.com?region=x" }), "url")
        // null is a wrong value, not the default.
        assert.strictEqual(yield* pathOf({ timeout: null as never }), "timeout")
        assert.strictEqual(yield* pathOf({ version: null as never }), "version")
        assert.strictEqual(yield* pathOf({ tokenTimeout: null as never }), "tokenTimeout")
        assert.strictEqual(yield* pathOf({ url: null as never }), "url")
        // A misspelt key is refused, not left at its default; so are options that are not an object.
        assert.strictEqual(yield* pathOf({ refreshMargn: "5 minutes" } as never), "refreshMargn")
        const notAnObject = yield* Effect.flip(Effect.scoped(WatsonX.make(null as never)))
        assert.strictEqual(notAnObject.path, "options")
      })
    )

    it.effect("layerConfig reads the key as a secret from Config", () =>
      Effect.gen(function* () {
        const { server, script } = yield* makeServer((_, res) => Server.json(res, 200, chatAnswer("configured")))
        const answer = yield* Effect.gen(function* () {
          const p = yield* Model.ModelProvider
          return yield* p.generate({ prompt: "x" })
        }).pipe(
          Effect.provide(
            WatsonX.layerConfig().pipe(
              Layer.provide(
                ConfigProvider.layer(
                  ConfigProvider.fromUnknown({
                    WATSONX_API_KEY: KEY,
                    WATSONX_PROJECT_ID: "p1",
                    WATSONX_URL: server.url,
                    WATSONX_IAM_URL: `${server.url}/identity/token`
                  })
                )
              )
            )
          )
        )
        assert.strictEqual(answer.text, "configured")
        assert.strictEqual(script.iamCalls, 1)
      })
    )
  })
})

describe("WatsonX interruption (live)", () => {
  it.live("a call or a stream the caller stops closes its connection", () =>
    Effect.gen(function* () {
      const { provider, server } = yield* makeServer((req, res) =>
        req.path.endsWith("generation_stream")
          ? Server.chunked(res, [wsse([generationEvent("half", "not_finished", 3)])], { end: "hang" })
          : Server.hang(res)
      )
      const p = yield* provider({ api: "generation" })
      const result = yield* Effect.result(Effect.timeout(p.generate({ prompt: "hi" }), "150 millis"))
      assert.isTrue(result._tag === "Failure" && Cause.isTimeoutError(result.failure))
      yield* server.awaitAborted(1).pipe(Effect.timeout("5 seconds"))
      const first = yield* p.stream({ prompt: "hi" }).pipe(Stream.take(1), Stream.runCollect)
      assert.strictEqual(first[0]?._tag, "TextDelta")
      yield* server.awaitAborted(2).pipe(Effect.timeout("5 seconds"))
    }).pipe(Effect.provide(NodeHttpClient.layerUndici))
  )
})
