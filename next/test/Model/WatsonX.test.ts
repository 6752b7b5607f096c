import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber, Redacted, Ref, Scope } from "effect"
import { TestClock } from "effect/testing"
import { ModelError } from "../../src/AiError.js"
import * as Iam from "../../src/Model/watsonx/Iam.js"
import * as Protocol from "../../src/Model/watsonx/Protocol.js"

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

describe("WatsonX protocol", () => {
  it("tools, tool choices and tool messages are refused naming the field; a JSON format only on chat", () => {
    const field = (request: Parameters<typeof Protocol.unsupported>[0], api: Protocol.Api = "chat") =>
      Protocol.unsupported(request, api, "watsonx")?.field
    assert.strictEqual(field({ prompt: "x", tools: [{ name: "f" }] }), "tools")
    assert.strictEqual(field({ prompt: "x", toolChoice: "auto" }), "toolChoice")
    assert.strictEqual(field({ messages: [{ role: "tool", toolCallId: "c", content: "1" }] }), "messages")
    assert.strictEqual(field({ prompt: "x", responseFormat: { type: "json_object" } }, "generation"), "responseFormat")
    assert.isUndefined(field({ prompt: "x", responseFormat: { type: "json_object" } }))
    assert.strictEqual(Protocol.unsupported({ prompt: "x", tools: [] }, "chat", "watsonx")?.reason, "InvalidRequest")
  })

  it("chat body: user turns as text parts, the options by their watsonx names, a JSON schema format", () => {
    const schema = { type: "object" }
    assert.deepStrictEqual(
      Protocol.chatBody(
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
          responseFormat: { type: "json_schema", name: "s", schema, strict: true }
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
        response_format: { type: "json_schema", json_schema: { name: "s", schema, strict: true } }
      }
    )
  })

  it("generation body: a conversation flattened into Role: text paragraphs; sampling only with a temperature", () => {
    assert.deepStrictEqual(
      Protocol.generationBody(
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
    assert.deepStrictEqual(Protocol.generationBody({ system: "S", prompt: "q", seed: 3 }, "m"), {
      model_id: "m",
      input: "S\n\nq",
      parameters: { decoding_method: "greedy", random_seed: 3 }
    })
  })

  it("stream state: deltas, the first event's input count, the last finish reason, one Finish", () => {
    const state = Protocol.streamState("watsonx", "m", 99)
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
})
