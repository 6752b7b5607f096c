import * as AiError from "@effect/ai/AiError"
import * as EmbeddingModel from "@effect/ai/EmbeddingModel"
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as AiModel from "@effect/ai/Model"
import type * as Prompt from "@effect/ai/Prompt"
import type * as Response from "@effect/ai/Response"
import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Duration, Effect, Exit, Layer, Option, Stream, TestClock } from "effect"
import type { ModelError } from "../../src/AiError.js"
import * as Model from "../../src/Model.js"
import * as EffectAi from "../../src/Model/EffectAi.js"

const KEY = "sk-effect-ai-TEST-SECRET-123456"

/** A provider-specific setting, the way @effect/ai provider packages read their config. */
class Temperature extends Context.Tag("test/Temperature")<Temperature, number>() {}

interface Script {
  readonly generate?: Effect.Effect<Array<Response.PartEncoded>, AiError.AiError>
  readonly stream?: Stream.Stream<Response.StreamPartEncoded, AiError.AiError>
}

const finish = (reason: Response.FinishReason = "stop") =>
  ({ type: "finish", reason, usage: { inputTokens: 7, outputTokens: 3, totalTokens: 10 } }) as const

/** A scripted `LanguageModel` built with `LanguageModel.make`, recording the prompts and settings it saw. */
const scripted = (script: Script) =>
  Effect.gen(function* () {
    const seen: Array<{ readonly prompt: Prompt.Prompt; readonly temperature: Option.Option<number> }> = []
    const service = yield* LanguageModel.make({
      generateText: (options) =>
        Effect.gen(function* () {
          seen.push({ prompt: options.prompt, temperature: yield* Effect.serviceOption(Temperature) })
          return yield* script.generate ??
            Effect.succeed<Array<Response.PartEncoded>>([
              { type: "response-metadata", modelId: "gpt-test-2025" },
              { type: "text", text: "Hello there" },
              finish()
            ])
        }),
      streamText: (options) =>
        Stream.unwrap(
          Effect.gen(function* () {
            seen.push({ prompt: options.prompt, temperature: yield* Effect.serviceOption(Temperature) })
            return (
              script.stream ??
              Stream.make<Array<Response.StreamPartEncoded>>(
                { type: "response-metadata", modelId: "gpt-test-2025" },
                { type: "text-start", id: "t" },
                { type: "text-delta", id: "t", delta: "Hel" },
                { type: "reasoning-delta", id: "r", delta: "(thinking)" },
                { type: "text-delta", id: "t", delta: "lo 🌍" },
                { type: "text-end", id: "t" },
                finish()
              )
            )
          })
        )
    })
    return { layer: Layer.succeed(LanguageModel.LanguageModel, service), seen }
  })

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

const request = {
  method: "POST",
  url: "https://api.example.com/v1/responses",
  urlParams: [],
  hash: Option.none(),
  headers: { authorization: `Bearer ${KEY}` }
} as const

const statusError = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new AiError.HttpResponseError({
    module: "OpenAiClient",
    method: "createResponse",
    reason: "StatusCode",
    request,
    response: { status, headers },
    body: JSON.stringify(body)
  })

const providerWith = (script: Script, options: EffectAi.Options = {}) =>
  Effect.gen(function* () {
    const { layer, seen } = yield* scripted(script)
    const provider = yield* EffectAi.make(options).pipe(Effect.provide(layer))
    return { provider, seen }
  })

describe("EffectAi", () => {
  it.effect("generate: the conversation goes in as a Prompt, text/finish/usage/model come back", () =>
    Effect.gen(function* () {
      const { provider, seen } = yield* providerWith({}, { name: "oai" })
      const answer = yield* provider.generate({
        system: "Be brief.",
        messages: [
          { role: "user", content: "hi" },
          { role: "assistant", content: "hello" },
          { role: "user", content: "again" }
        ]
      })
      assert.deepStrictEqual(answer, {
        text: "Hello there",
        finishReason: "stop",
        usage: { inputTokens: 7, outputTokens: 3, totalTokens: 10 },
        provider: "oai",
        model: "gpt-test-2025"
      })
      const roles = seen[0]?.prompt.content.map((m) => m.role)
      assert.deepStrictEqual(roles, ["system", "user", "assistant", "user"])
    })
  )

  it.effect("stream: text deltas (reasoning skipped) then exactly one Finish", () =>
    Effect.gen(function* () {
      const { provider } = yield* providerWith({}, { name: "oai" })
      const { exit, parts, text } = yield* collect(provider.stream({ prompt: "hi" }))
      assert.isTrue(Exit.isSuccess(exit))
      assert.strictEqual(text, "Hello 🌍")
      assert.deepStrictEqual(
        parts.filter((p) => p._tag === "Finish"),
        [
          {
            _tag: "Finish",
            finishReason: "stop",
            usage: { inputTokens: 7, outputTokens: 3, totalTokens: 10 },
            provider: "oai",
            model: "gpt-test-2025"
          }
        ]
      )
    })
  )

  it.effect("`context` passes request settings to the @effect/ai provider, in generate and stream", () =>
    Effect.gen(function* () {
      const { provider, seen } = yield* providerWith(
        {},
        { context: (r) => (r.temperature === undefined ? Context.empty() : Context.make(Temperature, r.temperature)) }
      )
      yield* provider.generate({ prompt: "x", temperature: 0.3 })
      yield* Stream.runDrain(provider.stream({ prompt: "x", temperature: 0.7 }))
      yield* provider.generate({ prompt: "x" })
      assert.deepStrictEqual(
        seen.map((s) => s.temperature),
        [Option.some(0.3), Option.some(0.7), Option.none()]
      )
    })
  )

  it.effect("the name defaults to the @effect/ai ProviderName", () =>
    Effect.gen(function* () {
      const { layer } = yield* scripted({})
      const provider = yield* EffectAi.make().pipe(
        Effect.provide(Layer.merge(layer, Layer.succeed(AiModel.ProviderName, "anthropic")))
      )
      assert.strictEqual(provider.name, "anthropic")
      assert.strictEqual((yield* provider.generate({ prompt: "x" })).provider, "anthropic")
    })
  )

  describe("AiError mapping", () => {
    it.effect("429 with Retry-After (seconds and HTTP-date) is RateLimited; the request's key never leaks", () =>
      Effect.gen(function* () {
        const now = Date.parse("2026-03-01T12:00:00Z")
        yield* TestClock.setTime(now)
        const seconds = yield* providerWith({
          generate: Effect.fail(
            statusError(429, { error: { message: "Rate limit reached", type: "requests" } }, { "Retry-After": "12" })
          )
        })
        const exit = yield* Effect.exit(seconds.provider.generate({ prompt: "x" }))
        const error = failureOf(exit)
        assert.strictEqual(error.reason, "RateLimited")
        assert.strictEqual(error.status, 429)
        assert.deepStrictEqual(error.retryAfter, Duration.seconds(12))
        assert.include(error.message, "Rate limit reached")
        if (Exit.isFailure(exit)) {
          for (const text of [JSON.stringify(error), String(error), Cause.pretty(exit.cause)])
            assert.notInclude(text, KEY)
        }
        const date = yield* providerWith({
          generate: Effect.fail(statusError(429, {}, { "retry-after": new Date(now + 90_000).toUTCString() }))
        })
        const dated = yield* Effect.flip(date.provider.generate({ prompt: "x" }))
        assert.deepStrictEqual((dated as ModelError).retryAfter, Duration.seconds(90))
      })
    )

    it.effect("statuses, transport, malformed output and unknown errors map to our reasons", () =>
      Effect.gen(function* () {
        const reasonOf = (error: AiError.AiError) =>
          Effect.flatMap(providerWith({ generate: Effect.fail(error) }), ({ provider }) =>
            Effect.map(Effect.flip(provider.generate({ prompt: "x" })), (e) => (e as ModelError).reason)
          )
        assert.strictEqual(yield* reasonOf(statusError(401, { error: { message: "bad key" } })), "Unauthorized")
        assert.strictEqual(
          yield* reasonOf(statusError(529, { type: "error", error: { type: "overloaded_error" } })),
          "Overloaded"
        )
        assert.strictEqual(yield* reasonOf(statusError(503, {})), "Overloaded")
        assert.strictEqual(yield* reasonOf(statusError(400, { error: { message: "bad" } })), "InvalidRequest")
        assert.strictEqual(yield* reasonOf(statusError(504, {})), "Timeout")
        assert.strictEqual(
          yield* reasonOf(
            new AiError.HttpRequestError({
              module: "OpenAiClient",
              method: "createResponse",
              reason: "Transport",
              request
            })
          ),
          "Transport"
        )
        assert.strictEqual(
          yield* reasonOf(
            new AiError.MalformedOutput({ module: "OpenAiClient", method: "createResponse", description: "x" })
          ),
          "Decode"
        )
        assert.strictEqual(
          yield* reasonOf(
            new AiError.MalformedInput({ module: "OpenAiClient", method: "createResponse", description: "x" })
          ),
          "InvalidRequest"
        )
        assert.strictEqual(
          yield* reasonOf(
            new AiError.UnknownError({ module: "OpenAiClient", method: "createResponse", description: "x" })
          ),
          "Unknown"
        )
      })
    )

    it.effect("a stream failing mid-way fails after the delivered text; one without a finish is Transport", () =>
      Effect.gen(function* () {
        const broken = yield* providerWith({
          stream: Stream.concat(
            Stream.make<Array<Response.StreamPartEncoded>>({ type: "text-delta", id: "t", delta: "partial" }),
            Stream.fail(statusError(500, { error: { message: "upstream died" } }))
          )
        })
        const failed = yield* collect(broken.provider.stream({ prompt: "x" }))
        assert.strictEqual(failed.text, "partial")
        assert.strictEqual(failureOf(failed.exit).reason, "Overloaded")
        const unfinished = yield* providerWith({
          stream: Stream.make<Array<Response.StreamPartEncoded>>({ type: "text-delta", id: "t", delta: "half" })
        })
        const ended = yield* collect(unfinished.provider.stream({ prompt: "x" }))
        assert.strictEqual(ended.text, "half")
        assert.strictEqual(failureOf(ended.exit).reason, "Transport")
        const errorPart = yield* providerWith({
          stream: Stream.make<Array<Response.StreamPartEncoded>>(
            { type: "text-delta", id: "t", delta: "a" },
            { type: "error", error: statusError(429, {}, { "retry-after": "1" }) }
          )
        })
        const errored = yield* collect(errorPart.provider.stream({ prompt: "x" }))
        assert.strictEqual(errored.text, "a")
        assert.strictEqual(failureOf(errored.exit).reason, "RateLimited")
      })
    )
  })

  describe("embed", () => {
    it.effect("uses the EmbeddingModel in context, in input order", () =>
      Effect.gen(function* () {
        const { layer } = yield* scripted({})
        const embeddings = yield* EmbeddingModel.make({
          embedMany: (inputs) =>
            Effect.succeed(inputs.map((input, index) => ({ index, embeddings: [input.length, index] })).reverse())
        })
        const provider = yield* EffectAi.make({ model: "emb" }).pipe(
          Effect.provide(Layer.merge(layer, Layer.succeed(EmbeddingModel.EmbeddingModel, embeddings)))
        )
        const answer = yield* provider.embed({ texts: ["a", "bbb", "cc"] })
        assert.deepStrictEqual(answer.vectors, [
          [1, 0],
          [3, 1],
          [2, 2]
        ])
      })
    )

    it.effect("without an EmbeddingModel, embed is InvalidRequest", () =>
      Effect.gen(function* () {
        const { provider } = yield* providerWith({})
        const error = yield* Effect.flip(provider.embed({ texts: ["a"] }))
        assert.strictEqual((error as ModelError).reason, "InvalidRequest")
      })
    )
  })

  it.effect("layer provides a ModelProvider", () =>
    Effect.gen(function* () {
      const { layer } = yield* scripted({})
      const answer = yield* Effect.flatMap(Model.ModelProvider, (p) => p.generate({ prompt: "x" })).pipe(
        Effect.provide(EffectAi.layer({ name: "via-layer" }).pipe(Layer.provide(layer)))
      )
      assert.strictEqual(answer.provider, "via-layer")
    })
  )
})
