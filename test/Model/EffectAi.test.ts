import { assert, describe, it } from "@effect/vitest"
import { inspect } from "node:util"
import { Cause, Context, Duration, Effect, Exit, Fiber, Layer, Option, Schema, Stream } from "effect"
import {
  AiError as Ai,
  EmbeddingModel,
  LanguageModel,
  Model as AiModel,
  type Prompt,
  Response,
  Tool,
  Toolkit
} from "effect/ai"
import { TestClock } from "effect/testing"
import {
  type AiError,
  CircuitOpenError,
  FallbackExhaustedError,
  isRetryable,
  ModelError,
  ShuttingDownError,
  shouldFallback,
  StreamInterruptedError,
  TimeoutError
} from "../../src/AiError.js"
import * as Model from "../../src/Model.js"
import * as EffectAi from "../../src/Model/EffectAi.js"
import * as Mock from "../../src/Model/Mock.js"

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/** A provider-specific setting, the way effect/ai provider packages read their config. */
class Temperature extends Context.Service<Temperature, number>()("test/Temperature") {}

interface Script {
  readonly generate?: Effect.Effect<Array<Response.PartEncoded>, Ai.AiError>
  readonly stream?: Stream.Stream<Response.StreamPartEncoded, Ai.AiError>
}

const usage = { inputTokens: { total: 7 }, outputTokens: { total: 3 } }
const finish = (reason: Response.FinishReason = "stop") => ({ type: "finish", reason, usage }) as const

interface Seen {
  readonly options: LanguageModel.ProviderOptions
  readonly temperature: Option.Option<number>
}

/** A scripted effect/ai LanguageModel (built with LanguageModel.make), recording what it was asked. */
const scripted = (script: Script) =>
  Effect.gen(function* () {
    const seen: Array<Seen> = []
    const record = (options: LanguageModel.ProviderOptions) =>
      Effect.map(Effect.serviceOption(Temperature), (temperature) => void seen.push({ options, temperature }))
    const service = yield* LanguageModel.make({
      generateText: (options) =>
        Effect.andThen(
          record(options),
          script.generate ??
            Effect.succeed<Array<Response.PartEncoded>>([
              { type: "response-metadata", modelId: "gpt-test-2026" },
              { type: "text", text: "Hello there" },
              finish()
            ])
        ),
      streamText: (options) =>
        Stream.unwrap(
          Effect.as(
            record(options),
            script.stream ??
              Stream.make<Array<Response.StreamPartEncoded>>(
                { type: "response-metadata", modelId: "gpt-test-2026" },
                { type: "text-start", id: "t" },
                { type: "text-delta", id: "t", delta: "Hel" },
                { type: "reasoning-delta", id: "r", delta: "(thinking)" },
                { type: "text-delta", id: "t", delta: "lo 🌍" },
                { type: "text-end", id: "t" },
                finish()
              )
          )
        )
    })
    return { layer: Layer.succeed(LanguageModel.LanguageModel, service), seen }
  })

const providerWith = (script: Script, options: EffectAi.Options = {}) =>
  Effect.gen(function* () {
    const { layer, seen } = yield* scripted(script)
    const provider = yield* EffectAi.make(options).pipe(Effect.provide(layer))
    return { provider, seen }
  })

const collect = (stream: Stream.Stream<Model.StreamPart, AiError>) =>
  Effect.gen(function* () {
    const parts: Array<Model.StreamPart> = []
    const exit = yield* Effect.exit(Stream.runForEach(stream, (part) => Effect.sync(() => void parts.push(part))))
    const text = parts.flatMap((p) => (p._tag === "TextDelta" ? [p.text] : [])).join("")
    return { parts, exit, text }
  })

const failureOf = <E>(exit: Exit.Exit<unknown, E>): E => {
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  const reason = exit.cause.reasons[0]
  if (reason?._tag !== "Fail") throw new Error(`expected a typed failure, got ${reason?._tag}`)
  return reason.error
}

const aiError = (reason: Ai.AiErrorReason) => Ai.make({ module: "OpenAiClient", method: "createResponse", reason })

const http = (status: number) => ({ response: { status, headers: {} } })

const userText = (message: Prompt.Message | undefined): string =>
  message?.role === "user" ? message.content.map((part) => (part.type === "text" ? part.text : "")).join("") : ""

// ---------------------------------------------------------------------------
// effect/ai LanguageModel -> ModelProvider
// ---------------------------------------------------------------------------

describe("EffectAi.make (effect/ai LanguageModel as a ModelProvider)", () => {
  it.effect("generate: the conversation goes in as a Prompt; text, finish reason, usage and model come back", () =>
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
        model: "gpt-test-2026"
      })
      const prompt = seen[0]!.options.prompt.content
      assert.deepStrictEqual(
        prompt.map((m) => m.role),
        ["system", "user", "assistant", "user"]
      )
      assert.strictEqual(userText(prompt[3]), "again")
      assert.deepStrictEqual(seen[0]!.options.tools, [])
    })
  )

  it.effect("negative token counts are estimated, not summed into usage", () =>
    Effect.gen(function* () {
      const { provider } = yield* providerWith({
        generate: Effect.succeed<Array<Response.PartEncoded>>([
          { type: "text", text: "12345678" },
          { type: "finish", reason: "stop", usage: { inputTokens: { total: -7 }, outputTokens: { total: -2 } } }
        ])
      })
      const answer = yield* provider.generate({ prompt: "abcd" })
      assert.deepStrictEqual(answer.usage, { inputTokens: 1, outputTokens: 2, totalTokens: 3 })
    })
  )

  it.effect("stream: text deltas (reasoning skipped), then exactly one Finish with usage and model", () =>
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
            model: "gpt-test-2026"
          }
        ]
      )
    })
  )

  it.effect(
    "parallelToolCalls: false with tools, which LanguageModel cannot carry, is refused naming it; with context, context gets it",
    () =>
      Effect.gen(function* () {
        const script = { generate: Effect.succeed([{ type: "text", text: "ok" } as const, finish()]) }
        const request: Model.GenerateRequest = { prompt: "x", tools: [{ name: "lookup" }], parallelToolCalls: false }
        const { provider, seen } = yield* providerWith(script)
        const error = yield* Effect.flip(provider.generate(request))
        assert.deepStrictEqual(
          [error._tag === "ModelError" && error.reason, error._tag === "ModelError" && error.field],
          ["InvalidRequest", "parallelToolCalls"]
        )
        assert.lengthOf(seen, 0)
        const given: Array<boolean | undefined> = []
        const withContext = yield* providerWith(script, {
          context: (r) => {
            given.push(r.parallelToolCalls)
            return Context.empty()
          }
        })
        yield* withContext.provider.generate(request)
        assert.deepStrictEqual(given, [false])
      })
  )

  it.effect("a tool choice no declared tool can meet is refused on toolChoice, not dropped or sent on", () =>
    Effect.gen(function* () {
      const { provider, seen } = yield* providerWith({
        generate: Effect.succeed([{ type: "text", text: "no tool" }, finish()]),
        stream: Stream.make({ type: "text-delta", id: "t", delta: "no tool" }, finish())
      })
      const tool = { name: "lookup", parameters: { type: "object", properties: {} } }
      const requests: ReadonlyArray<Model.GenerateRequest> = [
        { prompt: "x", toolChoice: "required" },
        { prompt: "x", toolChoice: { name: "lookup" } },
        { prompt: "x", tools: [tool], toolChoice: { name: "lokup" } }
      ]
      for (const request of requests) {
        const generated = (yield* Effect.flip(provider.generate(request))) as ModelError
        const streamed = failureOf((yield* collect(provider.stream(request))).exit) as ModelError
        for (const error of [generated, streamed]) {
          assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "toolChoice"], JSON.stringify(request))
        }
      }
      assert.strictEqual(seen.length, 0)
      // What a model does without tools anyway is no contradiction.
      for (const toolChoice of ["auto", "none"] as const) {
        assert.strictEqual((yield* provider.generate({ prompt: "x", toolChoice })).text, "no tool")
      }
    })
  )

  it.effect("tools go in as JSON-Schema tools; tool calls come back unresolved, in generate and stream", () =>
    Effect.gen(function* () {
      const call: Response.StreamPartEncoded = {
        type: "tool-call",
        id: "call_1",
        name: "lookup",
        params: { city: "Oslo" }
      }
      const { provider, seen } = yield* providerWith({
        generate: Effect.succeed([call as Response.PartEncoded, finish("tool-calls")]),
        stream: Stream.make(call, finish("tool-calls"))
      })
      const parameters = { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
      const request: Model.GenerateRequest = {
        prompt: "weather in Oslo?",
        tools: [{ name: "lookup", description: "Weather by city", parameters }],
        toolChoice: { name: "lookup" }
      }
      const answer = yield* provider.generate(request)
      assert.deepStrictEqual(answer.toolCalls, [{ id: "call_1", name: "lookup", arguments: '{"city":"Oslo"}' }])
      assert.strictEqual(answer.finishReason, "tool_calls")
      const tools = seen[0]!.options.tools
      assert.deepStrictEqual(
        tools.map((tool) => [tool.name, Tool.getDescription(tool), Tool.getJsonSchema(tool)]),
        [["lookup", "Weather by city", parameters]]
      )
      assert.deepStrictEqual(seen[0]!.options.toolChoice, { tool: "lookup" })
      const { parts } = yield* collect(provider.stream(request))
      assert.deepStrictEqual(
        parts.map((p) => p._tag),
        ["ToolCall", "Finish"]
      )
    })
  )

  it.effect(
    'tool calls finishing "stop" (Gemini\'s way) finish "tool_calls", as the HTTP providers say; not when cut',
    () =>
      Effect.gen(function* () {
        const call: Response.StreamPartEncoded = { type: "tool-call", id: "call_1", name: "lookup", params: {} }
        const request: Model.GenerateRequest = { prompt: "x", tools: [{ name: "lookup" }] }
        const finishing = (reason: Response.FinishReason) =>
          providerWith({
            generate: Effect.succeed([call as Response.PartEncoded, finish(reason)]),
            stream: Stream.make(call, finish(reason))
          })
        const stop = (yield* finishing("stop")).provider
        assert.strictEqual((yield* stop.generate(request)).finishReason, "tool_calls")
        const streamed = (yield* collect(stop.stream(request))).parts.at(-1)
        assert.strictEqual(streamed?._tag === "Finish" ? streamed.finishReason : undefined, "tool_calls")
        const cut = (yield* finishing("length")).provider
        assert.strictEqual((yield* cut.generate(request)).finishReason, "length")
      })
  )

  it.effect("an assistant's tool calls and the tool's answers go in as tool-call and tool-result parts", () =>
    Effect.gen(function* () {
      const { provider, seen } = yield* providerWith({})
      yield* provider.generate({
        messages: [
          { role: "user", content: "weather?" },
          { role: "assistant", content: "", toolCalls: [{ id: "c1", name: "lookup", arguments: '{"city":"Oslo"}' }] },
          { role: "tool", toolCallId: "c1", content: "3 °C" }
        ]
      })
      const [, assistant, tool] = seen[0]!.options.prompt.content
      assert.deepStrictEqual(
        assistant?.role === "assistant"
          ? assistant.content.map((p) => (p.type === "tool-call" ? p.params : p.type))
          : [],
        [{ city: "Oslo" }]
      )
      const result = tool?.role === "tool" ? tool.content[0] : undefined
      assert.deepStrictEqual(result?.type === "tool-result" ? [result.id, result.name, result.result] : [], [
        "c1",
        "lookup",
        "3 °C"
      ])
      const orphan = (yield* Effect.flip(
        provider.generate({
          messages: [
            { role: "user", content: "x" },
            { role: "tool", toolCallId: "nope", content: "y" }
          ]
        })
      )) as ModelError
      assert.deepStrictEqual([orphan.reason, orphan.field], ["InvalidRequest", "messages[1].toolCallId"])
    })
  )

  it.effect("`context` hands request settings to the provider package's config, in generate and stream", () =>
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

  it.effect("name and model default to the effect/ai ProviderName and ModelName; another model is refused", () =>
    Effect.gen(function* () {
      const { layer, seen } = yield* scripted({
        generate: Effect.succeed([{ type: "text", text: "ok" }, finish()])
      })
      const names = Layer.succeedContext(
        Context.make(AiModel.ProviderName, "anthropic").pipe(Context.add(AiModel.ModelName, "claude-test"))
      )
      const provider = yield* EffectAi.make().pipe(Effect.provide(Layer.merge(layer, names)))
      assert.deepStrictEqual([provider.name, provider.defaultModel], ["anthropic", "claude-test"])
      const answer = yield* provider.generate({ prompt: "x" })
      assert.deepStrictEqual([answer.provider, answer.model], ["anthropic", "claude-test"])
      const other = (yield* Effect.flip(provider.generate({ prompt: "x", model: "gpt-x" }))) as ModelError
      assert.deepStrictEqual([other.reason, other.field], ["InvalidRequest", "model"])
      const json = (yield* Effect.flip(
        provider.generate({ prompt: "x", responseFormat: { type: "json_object" } })
      )) as ModelError
      assert.deepStrictEqual([json.reason, json.field], ["InvalidRequest", "responseFormat"])
      assert.strictEqual(seen.length, 1)
    })
  )

  it.effect(
    "without ModelName, the model option names the model served: another is refused, not reported as served",
    () =>
      Effect.gen(function* () {
        const { layer, seen } = yield* scripted({
          generate: Effect.succeed([{ type: "text", text: "ok" }, finish()])
        })
        const provider = yield* EffectAi.make({ model: "gpt-4o" }).pipe(Effect.provide(layer))
        const other = (yield* Effect.flip(provider.generate({ prompt: "x", model: "gpt-5" }))) as ModelError
        assert.deepStrictEqual([other.reason, other.field], ["InvalidRequest", "model"])
        const streamed = (yield* Effect.flip(
          Stream.runDrain(provider.stream({ prompt: "x", model: "gpt-5" }))
        )) as ModelError
        assert.deepStrictEqual([streamed.reason, streamed.field], ["InvalidRequest", "model"])
        assert.strictEqual(seen.length, 0)
        assert.strictEqual((yield* provider.generate({ prompt: "x", model: "gpt-4o" })).model, "gpt-4o")
        // Neither ModelName nor the option: which model answers is unknown, so none can be asked for by name.
        const unnamed = yield* EffectAi.make().pipe(Effect.provide(layer))
        const unknown = (yield* Effect.flip(unnamed.generate({ prompt: "x", model: "gpt-5" }))) as ModelError
        assert.deepStrictEqual([unknown.reason, unknown.field], ["InvalidRequest", "model"])
        assert.include(unknown.message, "model option")
        assert.strictEqual(seen.length, 1)
      })
  )

  describe("effect/ai errors map to our reasons from their class and status", () => {
    it.effect("each reason class", () =>
      Effect.gen(function* () {
        const mapped = (reason: Ai.AiErrorReason) =>
          Effect.flatMap(providerWith({ generate: Effect.fail(aiError(reason)) }), ({ provider }) =>
            Effect.map(Effect.flip(provider.generate({ prompt: "x" })), (e) => e as ModelError)
          )
        const limited = yield* mapped(new Ai.RateLimitError({ retryAfter: Duration.seconds(12), http: http(429) }))
        assert.deepStrictEqual([limited.reason, limited.status], ["RateLimited", 429])
        assert.deepStrictEqual(limited.retryAfter, Duration.seconds(12))
        const cases: ReadonlyArray<readonly [Ai.AiErrorReason, string, string | undefined]> = [
          [new Ai.AuthenticationError({ kind: "InvalidKey", http: http(401) }), "Unauthorized", undefined],
          [new Ai.QuotaExhaustedError({}), "Unauthorized", undefined],
          [new Ai.ContentPolicyError({ description: "no" }), "ContentFilter", undefined],
          [new Ai.InvalidRequestError({ parameter: "model", http: http(404) }), "InvalidRequest", "model"],
          [new Ai.InvalidRequestError({ http: http(413) }), "TooLarge", undefined],
          [new Ai.InternalProviderError({ description: "x" }), "Overloaded", undefined],
          [new Ai.InternalProviderError({ description: "x", http: http(503) }), "Unavailable", undefined],
          [new Ai.InternalProviderError({ description: "x", http: http(504) }), "Timeout", undefined],
          [new Ai.NetworkError({ reason: "TransportError", method: "POST", url: "https://x" }), "Transport", undefined],
          [new Ai.NetworkError({ reason: "InvalidUrlError", method: "POST", url: "x" }), "InvalidRequest", "request"],
          [new Ai.InvalidResponseError({ description: "x" }), "Decode", undefined],
          [new Ai.InvalidOutputError({ description: "x" }), "Decode", undefined],
          [new Ai.UnsupportedSchemaError({ description: "x" }), "InvalidRequest", "responseFormat"],
          [new Ai.UnknownError({}), "Unknown", undefined],
          [new Ai.UnknownError({ http: http(502) }), "Unavailable", undefined],
          // What this provider does not implement: not retried, and the next provider is tried (as over HTTP).
          [new Ai.InternalProviderError({ description: "x", http: http(501) }), "InvalidRequest", "model"],
          [new Ai.UnknownError({ http: http(501) }), "InvalidRequest", "model"],
          // effect/ai's reason for every 404 says no more: it may be an API's answer about the request (an id
          // it does not know), which every provider would give, so no fallback (a bare 404 over HTTP falls back).
          [new Ai.UnknownError({ http: http(404) }), "InvalidRequest", "request"]
        ]
        for (const [reason, expected, field] of cases) {
          const error = yield* mapped(reason)
          assert.deepStrictEqual([error.reason, error.field], [expected, field], reason._tag)
        }
        assert.isFalse(shouldFallback(yield* mapped(new Ai.UnknownError({ http: http(404) }))))
      })
    )

    it.effect("a hand-made LanguageModel failing with something that is no AiError fails Unknown, not a defect", () =>
      Effect.gen(function* () {
        const thrown = new Error("sdk blew up at https://api.example/v1?key=SECRET-KEY-9")
        const handMade = Layer.succeed(LanguageModel.LanguageModel, {
          generateText: () => Effect.fail(thrown),
          streamText: () => Stream.fail(thrown)
        } as unknown as LanguageModel.LanguageModel)
        const embedder = Layer.succeed(EmbeddingModel.EmbeddingModel, {
          embedMany: () => Effect.fail("not an error at all")
        } as unknown as EmbeddingModel.EmbeddingModel)
        const provider = yield* EffectAi.make({ name: "sdk" }).pipe(Effect.provide(Layer.merge(handMade, embedder)))
        const exits = [
          yield* Effect.exit(provider.generate({ prompt: "x" })),
          yield* Effect.exit(Stream.runCollect(provider.stream({ prompt: "x" }))),
          yield* Effect.exit(provider.embed({ texts: ["x"] }))
        ]
        for (const exit of exits) {
          const error = failureOf(exit) as ModelError
          assert.deepStrictEqual([error?._tag, error?.reason, error?.provider], ["ModelError", "Unknown", "sdk"])
          assert.notInclude(error.message, "SECRET-KEY-9")
        }
        assert.include((failureOf(exits[0]!) as ModelError).message, "sdk blew up")
      })
    )

    it.effect("a URL's query string (which may carry a key) never reaches the message", () =>
      Effect.gen(function* () {
        const { provider } = yield* providerWith({
          generate: Effect.fail(
            aiError(
              new Ai.NetworkError({
                reason: "TransportError",
                method: "POST",
                url: "https://generativelanguage.example/v1/models:generate?key=SECRET-KEY-123",
                description: "socket hang up"
              })
            )
          )
        })
        const exit = yield* Effect.exit(provider.generate({ prompt: "x" }))
        const error = failureOf(exit) as ModelError
        assert.include(error.message, "socket hang up")
        const renderings = [error.message, JSON.stringify(error), String(error), inspect(error, { depth: 10 })]
        if (Exit.isFailure(exit)) renderings.push(Cause.pretty(exit.cause))
        for (const text of renderings) assert.notInclude(text, "SECRET-KEY-123")
      })
    )

    it.effect(
      "a stream failing mid-way fails after its text; an error part maps; one without a finish is Transport",
      () =>
        Effect.gen(function* () {
          const broken = yield* providerWith({
            stream: Stream.concat(
              Stream.make<Array<Response.StreamPartEncoded>>({ type: "text-delta", id: "t", delta: "partial" }),
              Stream.fail(aiError(new Ai.InternalProviderError({ description: "died", http: http(500) })))
            )
          })
          const failed = yield* collect(broken.provider.stream({ prompt: "x" }))
          assert.strictEqual(failed.text, "partial")
          assert.strictEqual((failureOf(failed.exit) as ModelError).reason, "Overloaded")
          const errorPart = yield* providerWith({
            stream: Stream.make<Array<Response.StreamPartEncoded>>(
              { type: "text-delta", id: "t", delta: "a" },
              { type: "error", error: aiError(new Ai.RateLimitError({})) }
            )
          })
          const errored = yield* collect(errorPart.provider.stream({ prompt: "x" }))
          assert.strictEqual(errored.text, "a")
          assert.strictEqual((failureOf(errored.exit) as ModelError).reason, "RateLimited")
          const unfinished = yield* providerWith({
            stream: Stream.make<Array<Response.StreamPartEncoded>>({ type: "text-delta", id: "t", delta: "half" })
          })
          const ended = yield* collect(unfinished.provider.stream({ prompt: "x" }))
          assert.strictEqual(ended.text, "half")
          assert.strictEqual((failureOf(ended.exit) as ModelError).reason, "Transport")
        })
    )
  })

  describe("bounds", () => {
    it.effect("a stream that stalls fails with an idle TimeoutError carrying the text so far", () =>
      Effect.gen(function* () {
        const { provider } = yield* providerWith(
          {
            stream: Stream.concat(
              Stream.make<Array<Response.StreamPartEncoded>>({ type: "text-delta", id: "t", delta: "so far" }),
              Stream.never
            )
          },
          { streamIdleTimeout: "5 seconds" }
        )
        const fiber = yield* collect(provider.stream({ prompt: "x" })).pipe(
          Effect.forkChild({ startImmediately: true })
        )
        yield* TestClock.adjust("4999 millis")
        assert.isUndefined(fiber.pollUnsafe())
        yield* TestClock.adjust("1 millis")
        const { exit, text } = yield* Fiber.join(fiber)
        const error = failureOf(exit) as TimeoutError
        assert.deepStrictEqual(
          [text, error._tag, error.limit, error.partialText],
          ["so far", "TimeoutError", "idle", "so far"]
        )
      })
    )

    it.effect("a generate that never answers fails with a request TimeoutError", () =>
      Effect.gen(function* () {
        const { provider } = yield* providerWith({ generate: Effect.never }, { timeout: "30 seconds" })
        const fiber = yield* Effect.forkChild(Effect.flip(provider.generate({ prompt: "x" })))
        yield* TestClock.adjust("30 seconds")
        const error = (yield* Fiber.join(fiber)) as TimeoutError
        assert.deepStrictEqual([error._tag, error.limit], ["TimeoutError", "request"])
      })
    )

    it.effect("text past maxOutputChars fails TooLarge (generate and stream)", () =>
      Effect.gen(function* () {
        const { provider } = yield* providerWith({}, { maxOutputChars: 4 })
        const generated = (yield* Effect.flip(provider.generate({ prompt: "x" }))) as ModelError
        assert.strictEqual(generated.reason, "TooLarge")
        const streamed = yield* collect(provider.stream({ prompt: "x" }))
        assert.strictEqual(streamed.text, "Hel")
        assert.strictEqual((failureOf(streamed.exit) as ModelError).reason, "TooLarge")
      })
    )

    it.effect("options are checked when the provider is built", () =>
      Effect.gen(function* () {
        const { layer } = yield* scripted({})
        const paths: Array<string> = []
        for (const options of [
          { timeout: Number.NaN },
          { streamIdleTimeout: -1 },
          { maxOutputChars: 0 },
          { maxConcurrency: 1.5 }
        ] satisfies ReadonlyArray<EffectAi.Options>) {
          paths.push((yield* Effect.flip(EffectAi.make(options).pipe(Effect.provide(layer)))).path)
        }
        // A misspelt option, a `context` that is not a function, no options object at all; null is a
        // wrong value, not the default.
        for (const options of [
          { streamIdelTimeout: "1 second" },
          { context: 5 },
          null,
          { timeout: null },
          { maxOutputChars: null },
          { model: null }
        ]) {
          paths.push((yield* Effect.flip(EffectAi.make(options as never).pipe(Effect.provide(layer)))).path)
        }
        assert.deepStrictEqual(paths, [
          "timeout",
          "streamIdleTimeout",
          "maxOutputChars",
          "maxConcurrency",
          "streamIdelTimeout",
          "context",
          "options",
          "timeout",
          "maxOutputChars",
          "model"
        ])
        const limited = yield* EffectAi.make({ maxConcurrency: 4 }).pipe(Effect.provide(layer))
        assert.strictEqual(limited.maxConcurrency, 4)
      })
    )
    it.effect(
      "a misspelt option names the one it is likely a typo of, the key quoted and bounded: it said a bare 'unknown option', the key raw",
      () =>
        Effect.gen(function* () {
          const { layer } = yield* scripted({})
          const refused = (options: object) => Effect.flip(EffectAi.make(options as never).pipe(Effect.provide(layer)))
          const typo = yield* refused({ streamIdelTimeout: "1 second" })
          assert.deepStrictEqual(
            [typo.path, typo.message],
            ["streamIdelTimeout", "invalid streamIdelTimeout: unknown option (did you mean streamIdleTimeout?)"]
          )
          const long = yield* refused({ ["k".repeat(100_000)]: 1 })
          assert.isBelow(long.path.length, 200)
          assert.include(long.path, "(100,000 characters)")
          assert.strictEqual((yield* refused({ "time\nout": 1 })).path, '"time\\nout"')
        })
    )
  })

  describe("embed", () => {
    it.effect("uses the EmbeddingModel in context, in input order, with its usage", () =>
      Effect.gen(function* () {
        const { layer } = yield* scripted({})
        const embeddings = yield* EmbeddingModel.make({
          embedMany: ({ inputs }) =>
            Effect.succeed({ results: inputs.map((input, i) => [input.length, i]), usage: { inputTokens: 9 } })
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
        assert.deepStrictEqual([answer.usage?.inputTokens, answer.model], [9, "emb"])
        // Another model's vectors are not comparable: refused, not answered under its name.
        const other = (yield* Effect.flip(provider.embed({ texts: ["a"], model: "emb-large" }))) as ModelError
        assert.deepStrictEqual([other.reason, other.field], ["InvalidRequest", "model"])
        assert.strictEqual((yield* provider.embed({ texts: ["a"], model: "emb" })).model, "emb")
        // The embedding model named apart from the language model.
        const apart = yield* EffectAi.make({ model: "chat", embeddingModel: "emb" }).pipe(
          Effect.provide(Layer.merge(layer, Layer.succeed(EmbeddingModel.EmbeddingModel, embeddings)))
        )
        assert.strictEqual((yield* apart.embed({ texts: ["a"], model: "emb" })).model, "emb")
        assert.strictEqual((yield* apart.embed({ texts: ["a"] })).model, "emb")
      })
    )

    it.effect("requestLimits are the user's: a long conversation and 3000 texts pass a raised bound", () =>
      Effect.gen(function* () {
        const { layer } = yield* scripted({})
        const embeddings = yield* EmbeddingModel.make({
          embedMany: ({ inputs }) =>
            Effect.succeed({ results: inputs.map((_, i) => [i, 1]), usage: { inputTokens: 1 } })
        })
        const both = Layer.merge(layer, Layer.succeed(EmbeddingModel.EmbeddingModel, embeddings))
        const texts = Array.from({ length: 3000 }, (_, i) => `t${i}`) as unknown as readonly [string, ...Array<string>]
        const messages = Array.from({ length: 1500 }, (_, i) => ({
          role: i % 2 === 0 ? ("user" as const) : ("assistant" as const),
          content: `m${i}`
        }))
        const roomy = yield* EffectAi.make({ requestLimits: { maxEmbedTexts: 5000, maxMessages: 2000 } }).pipe(
          Effect.provide(both)
        )
        assert.lengthOf((yield* roomy.embed({ texts })).vectors, 3000)
        assert.strictEqual((yield* roomy.generate({ messages })).text, "Hello there")
        const strict = yield* EffectAi.make({ requestLimits: { maxInputChars: 10 } }).pipe(Effect.provide(both))
        const long = (yield* Effect.flip(strict.generate({ prompt: "x".repeat(11) }))) as ModelError
        assert.deepStrictEqual([long.reason, long.field], ["InvalidRequest", "prompt"])
        const bad = yield* Effect.flip(EffectAi.make({ requestLimits: { maxMessages: 0 } }).pipe(Effect.provide(both)))
        assert.strictEqual(bad.path, "requestLimits.maxMessages")
      })
    )

    it.effect("a negative or fractional input token count of the EmbeddingModel is estimated, as in generate", () =>
      Effect.gen(function* () {
        const { layer } = yield* scripted({})
        for (const inputTokens of [-5, 2.5]) {
          const embeddings = yield* EmbeddingModel.make({
            embedMany: ({ inputs }) => Effect.succeed({ results: inputs.map(() => [1, 2]), usage: { inputTokens } })
          })
          const provider = yield* EffectAi.make({ model: "emb" }).pipe(
            Effect.provide(Layer.merge(layer, Layer.succeed(EmbeddingModel.EmbeddingModel, embeddings)))
          )
          const answer = yield* provider.embed({ texts: ["abcdefgh"] })
          assert.deepStrictEqual(answer.usage, { inputTokens: 2, outputTokens: 0, totalTokens: 2 }, `${inputTokens}`)
        }
      })
    )

    it.effect("vectors of different lengths, or empty, are Decode naming the vector, as for the HTTP providers", () =>
      Effect.gen(function* () {
        const { layer } = yield* scripted({})
        const answering = (results: Array<Array<number>>) =>
          Effect.flatMap(
            EmbeddingModel.make({ embedMany: () => Effect.succeed({ results, usage: { inputTokens: 1 } }) }),
            (embeddings) =>
              EffectAi.make({ model: "emb" }).pipe(
                Effect.provide(Layer.merge(layer, Layer.succeed(EmbeddingModel.EmbeddingModel, embeddings)))
              )
          )
        const uneven = yield* answering([[1, 2], [3]])
        const error = (yield* Effect.flip(uneven.embed({ texts: ["a", "b"] }))) as ModelError
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "embeddings[1]"])
        const empty = yield* answering([[]])
        const none = (yield* Effect.flip(empty.embed({ texts: ["a"] }))) as ModelError
        assert.deepStrictEqual([none.reason, none.field], ["Decode", "embeddings[0]"])
      })
    )

    it.effect("a hand-made EmbeddingModel answering another count of vectors than texts is Decode on embeddings", () =>
      Effect.gen(function* () {
        const { layer } = yield* scripted({})
        const service = {
          embed: () => Effect.die("unused"),
          embedMany: () => Effect.succeed({ embeddings: [{ vector: [1, 2] }], usage: { inputTokens: 1 } })
        } as never
        const provider = yield* EffectAi.make({ model: "emb" }).pipe(
          Effect.provide(Layer.merge(layer, Layer.succeed(EmbeddingModel.EmbeddingModel, service)))
        )
        const error = (yield* Effect.flip(provider.embed({ texts: ["a", "b"] }))) as ModelError
        assert.deepStrictEqual([error.reason, error.field], ["Decode", "embeddings"])
      })
    )

    it.effect("without an EmbeddingModel, embed is InvalidRequest", () =>
      Effect.gen(function* () {
        const { provider } = yield* providerWith({})
        const error = (yield* Effect.flip(provider.embed({ texts: ["a"] }))) as ModelError
        assert.strictEqual(error.reason, "InvalidRequest")
      })
    )
  })

  it.effect("layer provides a ModelProvider", () =>
    Effect.gen(function* () {
      const { layer } = yield* scripted({})
      const context = yield* Layer.build(EffectAi.layer({ name: "via-layer" }).pipe(Layer.provide(layer)))
      const answer = yield* Context.get(context, Model.ModelProvider).generate({ prompt: "x" })
      assert.strictEqual(answer.provider, "via-layer")
    })
  )
})

// ---------------------------------------------------------------------------
// target (here: the Mock provider) -> effect/ai LanguageModel
// ---------------------------------------------------------------------------

const modelOver = (mock: Mock.Options, options: EffectAi.LanguageModelOptions = {}) =>
  Effect.gen(function* () {
    const { provider, control } = yield* Mock.make(mock)
    const context = yield* Layer.build(EffectAi.layerLanguageModel(provider, options))
    const run = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provide(effect, context)
    const runStream = <A, E>(stream: Stream.Stream<A, E, LanguageModel.LanguageModel>) =>
      Stream.provideContext(stream, context)
    const lastRequest = Effect.map(control.requests, (log) => log[log.length - 1]?.request as Model.GenerateRequest)
    return { provider, control, context, run, runStream, lastRequest }
  })

const GetWeather = Tool.make("GetWeather", {
  description: "Weather by city",
  parameters: Schema.Struct({ city: Schema.String }),
  success: Schema.Struct({ celsius: Schema.Number })
})
const WeatherToolkit = Toolkit.make(GetWeather)
const WeatherHandlers = WeatherToolkit.toLayer({ GetWeather: ({ city }) => Effect.succeed({ celsius: city.length }) })

describe("EffectAi.languageModel (a target as an effect/ai LanguageModel)", () => {
  it.effect("generateText: the prompt reaches the target as our request; text, finish, usage and model come back", () =>
    Effect.gen(function* () {
      const m = yield* modelOver({ name: "mocked", respond: () => "Bonjour" }, { settings: { temperature: 0.2 } })
      const response = yield* m.run(
        LanguageModel.generateText({
          prompt: [
            { role: "system", content: "Answer in French." },
            { role: "user", content: "Hello" }
          ]
        }).pipe(Effect.provideService(EffectAi.GenerationConfig, { maxTokens: 64, model: "mock-large" }))
      )
      assert.strictEqual(response.text, "Bonjour")
      assert.strictEqual(response.finishReason, "stop")
      assert.deepStrictEqual([response.usage.inputTokens.total, response.usage.outputTokens.total], [6, 2])
      const metadata = response.content.find((part) => part.type === "response-metadata")
      assert.strictEqual(metadata?.type === "response-metadata" ? metadata.modelId : undefined, "mock-large")
      assert.deepStrictEqual(yield* m.lastRequest, {
        messages: [
          { role: "system", content: "Answer in French." },
          { role: "user", content: "Hello" }
        ],
        temperature: 0.2,
        maxTokens: 64,
        model: "mock-large"
      })
      assert.strictEqual(Context.get(m.context, AiModel.ProviderName), "effect-orchestra")
    })
  )

  it.effect("a GenerationConfig field set to undefined leaves the layer's setting in place", () =>
    Effect.gen(function* () {
      const m = yield* modelOver({ respond: () => "ok" }, { settings: { temperature: 0.2, maxTokens: 10 } })
      const asked: { readonly temperature?: number | undefined } = {}
      yield* m.run(
        LanguageModel.generateText({ prompt: "x" }).pipe(
          Effect.provideService(EffectAi.GenerationConfig, { temperature: asked.temperature, maxTokens: 20 })
        )
      )
      const request = yield* m.lastRequest
      assert.strictEqual(request.temperature, 0.2)
      assert.strictEqual(request.maxTokens, 20)
    })
  )

  it.effect("streamText: text-start, deltas, text-end, metadata and one finish, paced by the target", () =>
    Effect.gen(function* () {
      const m = yield* modelOver({ respond: () => "one two three", chunkDelay: 10 })
      const fiber = yield* Effect.forkChild(Stream.runCollect(m.runStream(LanguageModel.streamText({ prompt: "x" }))))
      yield* TestClock.adjust(100)
      const parts = yield* Fiber.join(fiber)
      assert.deepStrictEqual(
        parts.map((part) => part.type),
        ["text-start", "text-delta", "text-delta", "text-delta", "text-end", "response-metadata", "finish"]
      )
      assert.strictEqual(parts.map((part) => (part.type === "text-delta" ? part.delta : "")).join(""), "one two three")
      const end = parts[parts.length - 1]
      assert.deepStrictEqual(end?.type === "finish" ? [end.reason, end.usage.outputTokens.total] : [], ["stop", 4])
    })
  )

  it.effect("tools: the target sees JSON-Schema tools, effect/ai resolves its tool calls with the toolkit", () =>
    Effect.gen(function* () {
      const call = { id: "call_7", name: "GetWeather", arguments: '{"city":"Oslo"}' }
      const m = yield* modelOver({ script: [Mock.Outcome.succeed("", { toolCalls: [call] })] })
      const response = yield* m
        .run(
          LanguageModel.generateText({ prompt: "weather in Oslo?", toolkit: WeatherToolkit, toolChoice: "required" })
        )
        .pipe(Effect.provide(WeatherHandlers))
      assert.deepStrictEqual(
        response.toolCalls.map((c) => [c.id, c.name, c.params]),
        [["call_7", "GetWeather", { city: "Oslo" }]]
      )
      assert.deepStrictEqual(
        response.toolResults.map((r) => [r.id, r.result]),
        [["call_7", { celsius: 4 }]]
      )
      assert.strictEqual(response.finishReason, "tool-calls")
      const seen = yield* m.lastRequest
      assert.deepStrictEqual(seen.toolChoice, "required")
      assert.deepStrictEqual(
        seen.tools?.map((tool) => [tool.name, tool.description, (tool.parameters as { type?: string }).type]),
        [["GetWeather", "Weather by city", "object"]]
      )
    })
  )

  it.effect("a second turn carries the tool call and its result as our assistant and tool messages", () =>
    Effect.gen(function* () {
      const m = yield* modelOver({ respond: () => "It is 4 °C." })
      const response = yield* m.run(
        LanguageModel.generateText({
          prompt: [
            { role: "user", content: "weather in Oslo?" },
            {
              role: "assistant",
              content: [{ type: "tool-call", id: "c1", name: "GetWeather", params: { city: "Oslo" } }]
            },
            {
              role: "tool",
              content: [{ type: "tool-result", id: "c1", name: "GetWeather", isFailure: false, result: { celsius: 4 } }]
            }
          ]
        })
      )
      assert.strictEqual(response.text, "It is 4 °C.")
      assert.deepStrictEqual((yield* m.lastRequest).messages, [
        { role: "user", content: "weather in Oslo?" },
        { role: "assistant", content: "", toolCalls: [{ id: "c1", name: "GetWeather", arguments: '{"city":"Oslo"}' }] },
        { role: "tool", toolCallId: "c1", content: '{"celsius":4}' }
      ])
    })
  )

  it.effect("generateObject: the schema goes to the target as a json_schema format; its JSON answer decodes", () =>
    Effect.gen(function* () {
      const m = yield* modelOver({ respond: () => '{"name":"Ada","age":36}' })
      const Person = Schema.Struct({ name: Schema.String, age: Schema.Number })
      const response = yield* m.run(
        LanguageModel.generateObject({ prompt: "who?", schema: Person, objectName: "person" })
      )
      assert.deepStrictEqual(response.value, { name: "Ada", age: 36 })
      const format = (yield* m.lastRequest).responseFormat
      assert.deepStrictEqual(format?.type === "json_schema" ? [format.name, format.schema["type"]] : [], [
        "person",
        "object"
      ])
    })
  )

  describe("our failures as effect/ai AiErrors, the original kept as the cause", () => {
    it.effect("a rate limit keeps retryAfter; Unauthorized 401 is an invalid key; the cause is our error", () =>
      Effect.gen(function* () {
        const m = yield* modelOver({
          script: [Mock.Outcome.fail("RateLimited", { retryAfter: "3 seconds" }), Mock.Outcome.fail("Unauthorized")]
        })
        const limited = yield* Effect.flip(m.run(LanguageModel.generateText({ prompt: "x" })))
        assert.strictEqual(limited._tag, "AiError")
        assert.strictEqual(limited.reason._tag, "RateLimitError")
        assert.deepStrictEqual(limited.retryAfter, Duration.seconds(3))
        assert.isTrue(limited.isRetryable)
        const cause = (limited.reason as { readonly cause?: unknown }).cause
        assert.instanceOf(cause, ModelError)
        assert.strictEqual((cause as ModelError).reason, "RateLimited")
        assert.deepStrictEqual((limited.reason as Ai.RateLimitError).metadata["effect-orchestra"], {
          error: "ModelError",
          reason: "RateLimited",
          provider: "mock",
          status: 429
        })
        const denied = yield* Effect.flip(m.run(LanguageModel.generateText({ prompt: "x" })))
        assert.deepStrictEqual(
          denied.reason._tag === "AuthenticationError" ? [denied.reason.kind, denied.isRetryable] : [],
          ["InvalidKey", false]
        )
      })
    )

    it.effect("a bad setting is an InvalidRequestError naming it, and the target is never called", () =>
      Effect.gen(function* () {
        const m = yield* modelOver({})
        const error = yield* Effect.flip(
          m.run(
            LanguageModel.generateText({ prompt: "x" }).pipe(
              Effect.provideService(EffectAi.GenerationConfig, { temperature: 5 })
            )
          )
        )
        assert.deepStrictEqual(
          error.reason._tag === "InvalidRequestError" ? error.reason.parameter : undefined,
          "temperature"
        )
        assert.strictEqual(yield* m.control.calls, 0)
        const file = yield* Effect.flip(
          m.run(
            LanguageModel.generateText({
              prompt: [{ role: "user", content: [{ type: "file", mediaType: "image/png", data: "AAAA" }] }]
            })
          )
        )
        assert.deepStrictEqual(file.reason._tag === "InvalidRequestError" ? file.reason.parameter : undefined, "prompt")
      })
    )

    it.effect("a stream that drops delivers its deltas, then fails with the mapped error", () =>
      Effect.gen(function* () {
        const m = yield* modelOver({
          respond: () => "a b c",
          script: [Mock.Outcome.fail("Overloaded", { afterChunks: 2 })]
        })
        const deltas: Array<string> = []
        const exit = yield* Effect.exit(
          Stream.runForEach(m.runStream(LanguageModel.streamText({ prompt: "x" })), (part) =>
            Effect.sync(() => void (part.type === "text-delta" && deltas.push(part.delta)))
          )
        )
        assert.deepStrictEqual(deltas, ["a ", "b "])
        const error = failureOf(exit)
        assert.deepStrictEqual([error.reason._tag, error.isRetryable], ["InternalProviderError", true])
      })
    )

    it("timeouts, open circuits and exhausted fallbacks map by what they mean", () => {
      const retryable = EffectAi.toAiError(new TimeoutError({ limit: "request", timeout: Duration.seconds(1) }), "m")
      assert.deepStrictEqual([retryable.reason._tag, retryable.isRetryable], ["InternalProviderError", true])
      const total = EffectAi.toAiError(new TimeoutError({ limit: "total", timeout: Duration.seconds(1) }), "m")
      assert.deepStrictEqual([total.reason._tag, total.isRetryable], ["UnknownError", false])
      const open = EffectAi.toAiError(new CircuitOpenError({ breaker: "b", state: "open" }), "m")
      assert.strictEqual(open.reason._tag, "InternalProviderError")
      const last = new ModelError({ reason: "ContentFilter", message: "no", provider: "p2" })
      const exhausted = EffectAi.toAiError(
        new FallbackExhaustedError({
          attempts: [
            { provider: "p1", error: new ModelError({ reason: "Overloaded", message: "busy" }) },
            { provider: "p2", error: last }
          ]
        }),
        "m"
      )
      assert.strictEqual(exhausted.reason._tag, "ContentPolicyError")
      const cut = EffectAi.toAiError(
        new StreamInterruptedError({ partialText: "ab", reason: "Transport", provider: "p" }),
        "streamText"
      )
      assert.strictEqual(cut.reason._tag, "NetworkError")
      assert.notInclude(JSON.stringify(exhausted), '"_tag":"ModelError"')
    })

    it("round trip: an AiError made by toAiError maps back to the reason and field it was made from", () => {
      const ctx = { provider: "bridge", model: "m" }
      const back = (error: AiError) => EffectAi.fromAiError(EffectAi.toAiError(error, "generateText"), ctx)
      const cases: ReadonlyArray<ModelError> = [
        new ModelError({ reason: "Timeout", message: "slow" }),
        new ModelError({ reason: "Unavailable", message: "down" }),
        // An answer past its bound is that provider's: another is tried. Through the bridge it still is.
        new ModelError({ reason: "TooLarge", message: "endless", field: "response" }),
        new ModelError({ reason: "TooLarge", message: "huge" }),
        new ModelError({ reason: "Decode", message: "bad", field: "toolCalls" }),
        new ModelError({ reason: "InvalidRequest", message: "no such model", field: "model", status: 404 }),
        new ModelError({ reason: "RateLimited", message: "slow down", status: 429, retryAfter: Duration.seconds(3) })
      ]
      for (const error of cases) {
        const mapped = back(error)
        assert.deepStrictEqual(
          [mapped.reason, mapped.field, mapped.status, isRetryable(mapped), shouldFallback(mapped)],
          [error.reason, error.field, error.status, isRetryable(error), shouldFallback(error)],
          `${error.reason} ${error.field ?? ""}`
        )
      }
      assert.deepStrictEqual(back(cases[6]!).retryAfter, Duration.seconds(3))
      // Only a ModelError's reason is read back: a total deadline stays final.
      const total = back(new TimeoutError({ limit: "total", timeout: Duration.seconds(1) }))
      assert.deepStrictEqual([isRetryable(total), total.reason], [false, "Unknown"])
      // Another module's error with the same metadata is read by its class and status, as any.
      const forged = EffectAi.fromAiError(
        Ai.make({
          module: "Other",
          method: "x",
          reason: new Ai.InternalProviderError({
            description: "x",
            metadata: { "effect-orchestra": { error: "ModelError", reason: "TooLarge", field: "response" } }
          })
        }),
        ctx
      )
      assert.strictEqual(forged.reason, "Overloaded")
    })
  })

  it.effect(
    'a refusal reaches effect/ai code: metadata["effect-orchestra"].refusal, in generateText and streamText',
    () =>
      Effect.gen(function* () {
        const refusal = "I can't help with that."
        const usage = { inputTokens: 3, outputTokens: 5, totalTokens: 8 }
        const target: EffectAi.Target = {
          generate: () =>
            Effect.succeed({ text: "", finishReason: "stop", usage, provider: "openai", model: "gpt", refusal }),
          stream: () =>
            Stream.make({ _tag: "Finish", finishReason: "stop", usage, provider: "openai", model: "gpt", refusal })
        }
        const context = yield* Layer.build(EffectAi.layerLanguageModel(target))
        const refusalOf = (parts: ReadonlyArray<{ readonly type: string; readonly metadata?: unknown }>) =>
          parts.flatMap((part) => {
            const mine = (part.metadata as Record<string, Record<string, unknown>> | undefined)?.["effect-orchestra"]
            return part.type === "response-metadata" && mine?.["refusal"] !== undefined ? [mine["refusal"]] : []
          })
        const answer = yield* Effect.provideContext(LanguageModel.generateText({ prompt: "x" }), context)
        assert.deepStrictEqual(refusalOf(answer.content), [refusal])
        const parts = yield* Stream.runCollect(
          Stream.provideContext(LanguageModel.streamText({ prompt: "x" }), context)
        )
        assert.deepStrictEqual(refusalOf(parts), [refusal])
      })
  )

  it.effect("round trip: a ModelProvider through languageModel and back answers the same", () =>
    Effect.gen(function* () {
      const { provider } = yield* Mock.make({ name: "inner", respond: () => "same answer" })
      const back = yield* EffectAi.make({ name: "outer" }).pipe(Effect.provide(EffectAi.layerLanguageModel(provider)))
      const answer = yield* back.generate({ prompt: "x" })
      assert.deepStrictEqual([answer.text, answer.model, answer.finishReason], ["same answer", "mock-model", "stop"])
      const { text } = yield* collect(back.stream({ prompt: "x" }))
      assert.strictEqual(text, "same answer")
    })
  )

  it.effect("layerLanguageModelFromProvider uses the ModelProvider in context", () =>
    Effect.gen(function* () {
      const context = yield* Layer.build(
        EffectAi.layerLanguageModelFromProvider({ name: "from-context" }).pipe(
          Layer.provide(Mock.layer({ respond: () => "ctx" }))
        )
      )
      const response = yield* Effect.provideContext(LanguageModel.generateText({ prompt: "x" }), context)
      assert.strictEqual(response.text, "ctx")
      assert.strictEqual(Context.get(context, AiModel.ProviderName), "from-context")
    })
  )

  it.effect("options are checked when it is built", () =>
    Effect.gen(function* () {
      const { provider } = yield* Mock.make()
      const paths: Array<string> = []
      for (const options of [
        { name: "" },
        { settings: { temperature: 3 } },
        { settings: { maxTokens: 0 } },
        { settings: { temprature: 1 } as EffectAi.GenerationSettings },
        { limits: { maxMessages: -1 } }
      ] satisfies ReadonlyArray<EffectAi.LanguageModelOptions>) {
        paths.push((yield* Effect.flip(EffectAi.languageModel(provider, options))).path)
      }
      // null is a wrong value, not the default.
      for (const options of [{ name: null }, { settings: null }]) {
        paths.push((yield* Effect.flip(EffectAi.languageModel(provider, options as never))).path)
      }
      // A misspelt option is refused, not ignored; so are options that are not an object.
      for (const options of [{ setings: { temperature: 0 } }, null]) {
        paths.push((yield* Effect.flip(EffectAi.languageModel(provider, options as never))).path)
      }
      assert.deepStrictEqual(paths, [
        "name",
        "settings.temperature",
        "settings.maxTokens",
        "settings.temprature",
        "limits.maxMessages",
        "name",
        "settings",
        "setings",
        "options"
      ])
    })
  )

  it.effect(
    "a misspelt key of its settings names the setting it is likely a typo of, quoted and bounded: it said a bare 'unknown setting', the key raw",
    () =>
      Effect.gen(function* () {
        const { provider } = yield* Mock.make()
        const refused = (settings: object) =>
          Effect.flip(EffectAi.languageModel(provider, { settings: settings as EffectAi.GenerationSettings }))
        const typo = yield* refused({ temprature: 1 })
        assert.deepStrictEqual(
          [typo.path, typo.message],
          ["settings.temprature", "invalid settings.temprature: unknown option (did you mean temperature?)"]
        )
        const long = yield* refused({ ["k".repeat(100_000)]: 1 })
        assert.isBelow(long.path.length, 200)
        assert.include(long.path, "(100,000 characters)")
      })
  )

  it.effect("embeddingModel's options are checked when it is built: null and a misspelt key too", () =>
    Effect.gen(function* () {
      const { provider } = yield* Mock.make()
      const paths: Array<string> = []
      for (const options of [{ model: "" }, { limits: { maxEmbedTexts: 0 } }, { modle: "m" }, null]) {
        const built = Effect.suspend(() => EffectAi.embeddingModel(provider, options as never))
        paths.push((yield* Effect.flip(built)).path)
      }
      assert.deepStrictEqual(paths, ["model", "limits.maxEmbedTexts", "modle", "options"])
    })
  )

  it.effect("embeddingModel: effect/ai embeddings from the target, in order, with usage", () =>
    Effect.gen(function* () {
      const { provider } = yield* Mock.make({ dimensions: 4 })
      const context = yield* Layer.build(EffectAi.layerEmbeddingModel(provider))
      const model = Context.get(context, EmbeddingModel.EmbeddingModel)
      const response = yield* model.embedMany(["alpha", "beta"])
      assert.deepStrictEqual(
        response.embeddings.map((e) => e.vector),
        [Mock.embedText("alpha", 4), Mock.embedText("beta", 4)]
      )
      assert.strictEqual(response.usage.inputTokens, 3)
      const single = yield* model.embed("alpha")
      assert.deepStrictEqual(single.vector, Mock.embedText("alpha", 4))
    })
  )
})

describe("EffectAi.embeddingModel: a target answering numbers effect/ai refuses", () => {
  it.effect(
    "a NaN or infinite vector entry is an InvalidOutputError naming it (embed and embedMany), not a defect",
    () =>
      Effect.gen(function* () {
        const answers: ReadonlyArray<ReadonlyArray<number>> = [
          [0.5, 0.5],
          [0.25, Number.NaN]
        ]
        const target: EffectAi.EmbeddingTarget = {
          embed: (request) =>
            Effect.succeed({
              vectors: request.texts.length === 1 ? [[Number.POSITIVE_INFINITY, 0]] : answers,
              usage: Model.usage(2, 0),
              provider: "odd",
              model: "odd-embed"
            })
        }
        const model = yield* EffectAi.embeddingModel(target)
        const many = yield* Effect.exit(model.embedMany(["alpha", "beta"]))
        const single = yield* Effect.exit(model.embed("alpha"))
        const described = [failureOf(many), failureOf(single)].map((error) => [
          error.reason._tag,
          error.reason._tag === "InvalidOutputError" ? error.reason.description : ""
        ])
        assert.deepStrictEqual(
          described.map(([tag]) => tag),
          ["InvalidOutputError", "InvalidOutputError"]
        )
        assert.include(described[0]![1], "vectors[1][1]")
        assert.include(described[1]![1], "vectors[0][0]")
      })
  )

  it.effect("concurrent embed calls batched together: a NaN vector fails its own caller, not the others", () =>
    Effect.gen(function* () {
      const calls: Array<ReadonlyArray<string>> = []
      const target: EffectAi.EmbeddingTarget = {
        embed: (request) =>
          Effect.sync(() => {
            calls.push(request.texts)
            return {
              vectors: request.texts.map((text) => (text === "poison" ? [0.5, Number.NaN] : [0.5, 0.5])),
              usage: Model.usage(request.texts.length, 0),
              provider: "odd",
              model: "odd-embed"
            }
          })
      }
      const model = yield* EffectAi.embeddingModel(target)
      const exits = yield* Effect.forEach(["alpha", "poison", "beta"], (input) => Effect.exit(model.embed(input)), {
        concurrency: "unbounded"
      })
      // One request for the three (effect/ai batched them).
      assert.deepStrictEqual(calls, [["alpha", "poison", "beta"]])
      assert.deepStrictEqual(
        exits.map((exit) => (Exit.isSuccess(exit) ? exit.value.vector : failureOf(exit).reason._tag)),
        [[0.5, 0.5], "InvalidOutputError", [0.5, 0.5]]
      )
    })
  )

  it.effect("a NaN or infinite input token count is left out of the usage, not a defect", () =>
    Effect.gen(function* () {
      const target: EffectAi.EmbeddingTarget = {
        embed: (request) =>
          Effect.succeed({
            vectors: request.texts.map(() => [1, 0]),
            usage: { inputTokens: Number.NaN, outputTokens: 0, totalTokens: Number.NaN },
            provider: "odd",
            model: "odd-embed"
          })
      }
      const model = yield* EffectAi.embeddingModel(target)
      const many = yield* model.embedMany(["alpha", "beta"])
      assert.deepStrictEqual(
        many.embeddings.map((e) => e.vector),
        [
          [1, 0],
          [1, 0]
        ]
      )
      assert.strictEqual(many.usage.inputTokens, undefined)
    })
  )
})

describe("EffectAi.embeddingModel: concurrent embed calls batched by effect/ai", () => {
  it.effect(
    "each input gets its own outcome: one bad input, or more callers than one request's limits, fails no other",
    () =>
      Effect.gen(function* () {
        const { provider, control } = yield* Mock.make({ dimensions: 4 })
        const context = yield* Layer.build(
          EffectAi.layerEmbeddingModel(provider, { limits: { maxEmbedTexts: 2, maxInputChars: 10 } })
        )
        const model = Context.get(context, EmbeddingModel.EmbeddingModel)
        const inputs = ["alpha", "far too long a text", "beta", "gamma", "delta"]
        const exits = yield* Effect.forEach(inputs, (input) => Effect.exit(model.embed(input)), {
          concurrency: "unbounded"
        })
        assert.deepStrictEqual(
          exits.map((exit) => (Exit.isSuccess(exit) ? exit.value.vector : failureOf(exit).reason._tag)),
          [
            Mock.embedText("alpha", 4),
            "InvalidRequestError",
            Mock.embedText("beta", 4),
            Mock.embedText("gamma", 4),
            Mock.embedText("delta", 4)
          ]
        )
        // The four valid inputs went in two requests of two texts (maxEmbedTexts), within maxInputChars.
        assert.strictEqual(yield* control.calls, 2)
      })
  )
})

describe("EffectAi: what a caller hands in fails typed, and a refusal is read back", () => {
  it.effect("a `context` option that throws, or answers no Context, is InvalidRequest naming context", () =>
    Effect.gen(function* () {
      const { provider, seen } = yield* providerWith(
        {},
        {
          context: () => {
            throw new Error("no config")
          }
        }
      )
      const thrown = failureOf(yield* Effect.exit(provider.generate({ prompt: "x" }))) as ModelError
      assert.deepStrictEqual([thrown._tag, thrown.reason, thrown.field], ["ModelError", "InvalidRequest", "context"])
      assert.include(thrown.message, "no config")
      const streamed = failureOf(yield* Effect.exit(Stream.runDrain(provider.stream({ prompt: "x" })))) as ModelError
      assert.deepStrictEqual([streamed.reason, streamed.field], ["InvalidRequest", "context"])
      const notContext = yield* providerWith(
        {},
        { context: () => ({ temperature: 1 }) as unknown as Context.Context<never> }
      )
      const wrong = failureOf(yield* Effect.exit(notContext.provider.generate({ prompt: "x" }))) as ModelError
      assert.deepStrictEqual([wrong.reason, wrong.field], ["InvalidRequest", "context"])
      assert.strictEqual(seen.length + notContext.seen.length, 0)
    })
  )

  it.effect("a null GenerationConfig, or one whose getter throws, is an InvalidRequestError, not a defect", () =>
    Effect.gen(function* () {
      const m = yield* modelOver({ respond: () => "ok" })
      const nullConfig = failureOf(
        yield* Effect.exit(
          m.run(
            LanguageModel.generateText({ prompt: "x" }).pipe(
              Effect.provideService(EffectAi.GenerationConfig, null as unknown as EffectAi.GenerationSettings)
            )
          )
        )
      )
      assert.deepStrictEqual(
        nullConfig.reason._tag === "InvalidRequestError" ? nullConfig.reason.parameter : undefined,
        "GenerationConfig"
      )
      const throwing = {
        get temperature(): number {
          throw new Error("getter")
        }
      }
      const thrown = failureOf(
        yield* Effect.exit(
          m.run(
            LanguageModel.generateText({ prompt: "x" }).pipe(Effect.provideService(EffectAi.GenerationConfig, throwing))
          )
        )
      )
      assert.deepStrictEqual(
        thrown.reason._tag === "InvalidRequestError" ? thrown.reason.parameter : undefined,
        "GenerationConfig"
      )
      assert.strictEqual(yield* m.control.calls, 0)
    })
  )

  it.effect("a GenerationConfig field set to null is one not given, as undefined is", () =>
    Effect.gen(function* () {
      const m = yield* modelOver({ respond: () => "ok" }, { settings: { temperature: 0.2, maxTokens: 10 } })
      const response = yield* m.run(
        LanguageModel.generateText({ prompt: "x" }).pipe(
          Effect.provideService(EffectAi.GenerationConfig, {
            temperature: null,
            maxTokens: 20
          } as unknown as EffectAi.GenerationSettings)
        )
      )
      assert.strictEqual(response.text, "ok")
      const request = yield* m.lastRequest
      assert.deepStrictEqual([request.temperature, request.maxTokens], [0.2, 20])
    })
  )

  it.effect("a refusal in effect/ai parts (an empty text part's metadata) is our response's refusal", () =>
    Effect.gen(function* () {
      const refusal = "I can't help with that."
      const { provider } = yield* providerWith({
        generate: Effect.succeed([
          { type: "response-metadata", modelId: "gpt" },
          { type: "text", text: "", metadata: { openai: { refusal } } },
          finish()
        ]),
        stream: Stream.make<Array<Response.StreamPartEncoded>>(
          { type: "text-start", id: "t", metadata: { openai: { refusal } } },
          { type: "text-end", id: "t" },
          finish()
        )
      })
      const answer = yield* provider.generate({ prompt: "x" })
      assert.deepStrictEqual([answer.text, answer.refusal], ["", refusal])
      const { parts } = yield* collect(provider.stream({ prompt: "x" }))
      const last = parts[parts.length - 1]
      assert.strictEqual(last?._tag === "Finish" ? last.refusal : undefined, refusal)
    })
  )

  it.effect("round trip: a refusal through languageModel and back is still the refusal", () =>
    Effect.gen(function* () {
      const refusal = "I can't help with that."
      const usage = Model.usage(1, 1)
      const target: EffectAi.Target = {
        generate: () => Effect.succeed({ text: "", finishReason: "stop", usage, provider: "p", model: "m", refusal }),
        stream: () => Stream.make({ _tag: "Finish", finishReason: "stop", usage, provider: "p", model: "m", refusal })
      }
      const back = yield* EffectAi.make({ name: "outer" }).pipe(Effect.provide(EffectAi.layerLanguageModel(target)))
      assert.strictEqual((yield* back.generate({ prompt: "x" })).refusal, refusal)
      const { parts } = yield* collect(back.stream({ prompt: "x" }))
      const last = parts[parts.length - 1]
      assert.strictEqual(last?._tag === "Finish" ? last.refusal : undefined, refusal)
    })
  )
})

describe("EffectAi.languageModel: a target that breaks its contract", () => {
  it.effect("a target stream that ends without a Finish fails streamText (Transport), not a clean short answer", () =>
    Effect.gen(function* () {
      const usage = Model.usage(1, 1)
      const target: EffectAi.Target = {
        generate: () => Effect.succeed({ text: "", finishReason: "stop", usage, provider: "p", model: "m" }),
        stream: () => Stream.make({ _tag: "TextDelta", text: "half an ans" })
      }
      const context = yield* Layer.build(EffectAi.layerLanguageModel(target, { name: "custom" }))
      const deltas: Array<string> = []
      const exit = yield* Effect.exit(
        Stream.runForEach(LanguageModel.streamText({ prompt: "x" }), (part) =>
          Effect.sync(() => {
            if (part.type === "text-delta") deltas.push(part.delta)
          })
        ).pipe(Effect.provideContext(context))
      )
      assert.deepStrictEqual(deltas, ["half an ans"])
      const error = failureOf(exit)
      assert.strictEqual(error.reason._tag, "NetworkError")
      assert.strictEqual(error.isRetryable, true)
    })
  )

  it.effect("parts a target sends after its Finish are not passed on: one finish part", () =>
    Effect.gen(function* () {
      const usage = Model.usage(1, 1)
      const finishPart = { _tag: "Finish", finishReason: "stop", usage, provider: "p", model: "m" } as const
      const target: EffectAi.Target = {
        generate: () => Effect.succeed({ text: "", finishReason: "stop", usage, provider: "p", model: "m" }),
        stream: () =>
          Stream.make({ _tag: "TextDelta", text: "ok" }, finishPart, { _tag: "TextDelta", text: "late" }, finishPart)
      }
      const context = yield* Layer.build(EffectAi.layerLanguageModel(target))
      const parts = yield* Stream.runCollect(LanguageModel.streamText({ prompt: "x" })).pipe(
        Effect.provideContext(context)
      )
      const types = Array.from(parts).map((part) => part.type)
      assert.deepStrictEqual(
        types.filter((type) => type === "finish" || type === "text-delta"),
        ["text-delta", "finish"]
      )
    })
  )

  it.effect(
    "a misspelt GenerationConfig key names the setting it is likely a typo of, the key quoted and bounded: it listed every setting, the key raw",
    () =>
      Effect.gen(function* () {
        const m = yield* modelOver({ respond: () => "ok" })
        const refused = (settings: object) =>
          Effect.flip(
            m.run(
              LanguageModel.generateText({ prompt: "x" }).pipe(
                Effect.provideService(EffectAi.GenerationConfig, settings as EffectAi.GenerationSettings)
              )
            )
          ).pipe(
            Effect.map((error) =>
              error.reason._tag === "InvalidRequestError"
                ? [error.reason.parameter, error.reason.description]
                : [error.reason._tag, ""]
            )
          )
        assert.deepStrictEqual(yield* refused({ temprature: 0.5 }), [
          "GenerationConfig.temprature",
          "unknown option (did you mean temperature?)"
        ])
        const [parameter] = yield* refused({ ["k".repeat(100_000)]: 1 })
        assert.isBelow(parameter!.length, 200)
        assert.include(parameter, "(100,000 characters)")
        assert.strictEqual((yield* refused({ "top\nP": 1 }))[0], 'GenerationConfig."top\\nP"')
        assert.strictEqual(yield* m.control.calls, 0)
      })
  )

  it.effect("a GenerationConfig key that is no setting is refused naming it; it cannot replace the prompt", () =>
    Effect.gen(function* () {
      const m = yield* modelOver({ respond: () => "ok" })
      const error = yield* Effect.flip(
        m.run(
          LanguageModel.generateText({ prompt: "the real question" }).pipe(
            Effect.provideService(EffectAi.GenerationConfig, {
              messages: [{ role: "user", content: "another question" }]
            } as unknown as EffectAi.GenerationSettings)
          )
        )
      )
      assert.deepStrictEqual(
        error.reason._tag === "InvalidRequestError" ? error.reason.parameter : undefined,
        "GenerationConfig.messages"
      )
      assert.strictEqual(yield* m.control.calls, 0)
    })
  )
})

describe("EffectAi: options whose fields throw when read", () => {
  it.effect("make, languageModel and embeddingModel: an OptionError naming the field, not a defect", () =>
    Effect.gen(function* () {
      const throwing = <K extends string>(key: K) =>
        Object.defineProperty({}, key, {
          enumerable: true,
          get: () => {
            throw new Error(`no ${key}`)
          }
        })
      const { layer } = yield* scripted({})
      const made = failureOf(yield* Effect.exit(EffectAi.make(throwing("timeout")).pipe(Effect.provide(layer))))
      assert.deepStrictEqual([made._tag, made.path], ["OptionError", "timeout"])
      const { provider } = yield* Mock.make({})
      const lm = failureOf(yield* Effect.exit(EffectAi.languageModel(provider, throwing("settings"))))
      assert.deepStrictEqual([lm._tag, lm.path], ["OptionError", "settings"])
      const em = failureOf(yield* Effect.exit(EffectAi.embeddingModel(provider, throwing("model"))))
      assert.deepStrictEqual([em._tag, em.path], ["OptionError", "model"])
    })
  )
})

describe("EffectAi: a shutdown across the bridge stays a shutdown", () => {
  it.effect(
    "round trip: toAiError of a ShuttingDownError, through EffectAi.make, is a ShuttingDownError (no fallback)",
    () =>
      Effect.gen(function* () {
        const shutdown = new ShuttingDownError({ message: "the executor is shutting down" })
        const bridged = EffectAi.toAiError(shutdown, "generateText")
        const { provider } = yield* providerWith({
          generate: Effect.fail(bridged),
          stream: Stream.fail(bridged)
        })
        const generated = yield* Effect.flip(provider.generate({ prompt: "x" }))
        assert.deepStrictEqual(
          [generated._tag, generated.message, shouldFallback(generated), isRetryable(generated)],
          ["ShuttingDownError", shutdown.message, false, false]
        )
        const streamed = failureOf((yield* collect(provider.stream({ prompt: "x" }))).exit)
        assert.deepStrictEqual([streamed._tag, shouldFallback(streamed)], ["ShuttingDownError", false])
        // Another module's error naming a shutdown in its metadata is read by its class, as any.
        const forged = Ai.make({
          module: "Other",
          method: "x",
          reason: new Ai.UnknownError({ metadata: { "effect-orchestra": { error: "ShuttingDownError" } } })
        })
        const other = yield* providerWith({ generate: Effect.fail(forged) })
        const unknown = yield* Effect.flip(other.provider.generate({ prompt: "x" }))
        assert.deepStrictEqual(
          [unknown._tag, unknown._tag === "ModelError" ? unknown.reason : ""],
          ["ModelError", "Unknown"]
        )
      })
  )
})

describe("EffectAi.layerLanguageModel: the options are read once", () => {
  it.effect("the ProviderName is the name that was checked, not a second read of options.name", () =>
    Effect.gen(function* () {
      const { provider } = yield* Mock.make({})
      let reads = 0
      const options = Object.defineProperty({}, "name", {
        enumerable: true,
        get: () => (reads++ === 0 ? "checked" : "")
      })
      const context = yield* Layer.build(EffectAi.layerLanguageModel(provider, options))
      assert.deepStrictEqual([Context.get(context, AiModel.ProviderName), reads], ["checked", 1])
    })
  )
})

describe("EffectAi.languageModel: a prompt that cannot become our request", () => {
  it.effect(
    "a tool result JSON cannot write (a BigInt) is an InvalidRequestError naming the prompt, not a defect",
    () =>
      Effect.gen(function* () {
        const m = yield* modelOver({ respond: () => "ok" })
        const exit = yield* Effect.exit(
          m.run(
            LanguageModel.generateText({
              prompt: [
                { role: "user", content: "weather?" },
                { role: "assistant", content: [{ type: "tool-call", id: "c1", name: "GetWeather", params: {} }] },
                {
                  role: "tool",
                  content: [{ type: "tool-result", id: "c1", name: "GetWeather", isFailure: false, result: { n: 1n } }]
                }
              ]
            })
          )
        )
        const error = failureOf(exit)
        assert.deepStrictEqual(
          error.reason._tag === "InvalidRequestError" ? error.reason.parameter : undefined,
          "prompt"
        )
        assert.strictEqual(yield* m.control.calls, 0)
      })
  )
})

describe("EffectAi: tool calls that JSON cannot write, and their size", () => {
  const request: Model.GenerateRequest = { prompt: "x", tools: [{ name: "lookup" }] }
  const calling = (params: unknown) => {
    const call = { type: "tool-call", id: "call_1", name: "lookup", params } as Response.StreamPartEncoded
    return providerWith({
      generate: Effect.succeed([call as Response.PartEncoded, finish("tool-calls")]),
      stream: Stream.make(call, finish("tool-calls"))
    })
  }

  it.effect("arguments JSON cannot hold (a BigInt, a cycle) from LanguageModel.make are a Decode ModelError", () =>
    Effect.gen(function* () {
      const cycle: Record<string, unknown> = {}
      cycle["self"] = cycle
      for (const params of [{ n: 1n }, cycle]) {
        const { provider } = yield* calling(params)
        const generated = failureOf(yield* Effect.exit(provider.generate(request))) as ModelError
        assert.deepStrictEqual([generated._tag, generated.reason], ["ModelError", "Decode"])
        const streamed = failureOf((yield* collect(provider.stream(request))).exit) as ModelError
        assert.deepStrictEqual([streamed._tag, streamed.reason], ["ModelError", "Decode"])
      }
    })
  )

  it.effect("arguments JSON cannot write from a hand-made LanguageModel are a Decode ModelError naming the call", () =>
    Effect.gen(function* () {
      const cycle: Record<string, unknown> = {}
      cycle["self"] = cycle
      for (const params of [{ n: 1n }, cycle]) {
        const parts = [
          { type: "tool-call", id: "call_0", name: "lookup", params: {} },
          { type: "tool-call", id: "call_1", name: "lookup", params },
          { type: "finish", reason: "tool-calls", usage: new Response.Usage(usage as never) }
        ] as unknown as Array<Response.Part<Record<string, never>, "encoded">>
        const service = {
          generateText: () => Effect.succeed(new LanguageModel.GenerateTextResponse(parts)),
          streamText: () => Stream.fromIterable(parts)
        } as never
        const provider = yield* EffectAi.make().pipe(Effect.provideService(LanguageModel.LanguageModel, service))
        const generated = failureOf(yield* Effect.exit(provider.generate(request))) as ModelError
        assert.deepStrictEqual(
          [generated._tag, generated.reason, generated.field],
          ["ModelError", "Decode", "toolCalls[1].arguments"]
        )
        const streamed = yield* collect(provider.stream(request))
        assert.deepStrictEqual(
          streamed.parts.map((p) => p._tag),
          ["ToolCall"]
        )
        const error = failureOf(streamed.exit) as ModelError
        assert.deepStrictEqual(
          [error._tag, error.reason, error.field],
          ["ModelError", "Decode", "toolCalls[1].arguments"]
        )
      }
    })
  )

  it.effect("tool-call arguments count toward maxOutputChars (generate and stream)", () =>
    Effect.gen(function* () {
      const { layer } = yield* scripted({
        generate: Effect.succeed([
          { type: "tool-call", id: "call_1", name: "lookup", params: { city: "x".repeat(100) } },
          finish("tool-calls")
        ]),
        stream: Stream.make(
          { type: "tool-call", id: "call_1", name: "lookup", params: { city: "x".repeat(100) } },
          finish("tool-calls")
        )
      })
      const provider = yield* EffectAi.make({ maxOutputChars: 50 }).pipe(Effect.provide(layer))
      const generated = (yield* Effect.flip(provider.generate(request))) as ModelError
      assert.deepStrictEqual([generated._tag, generated.reason], ["ModelError", "TooLarge"])
      const streamed = yield* collect(provider.stream(request))
      assert.deepStrictEqual(
        streamed.parts.map((p) => p._tag),
        []
      )
      assert.strictEqual((failureOf(streamed.exit) as ModelError).reason, "TooLarge")
      // Under the bound, the same call passes.
      const roomy = yield* EffectAi.make({ maxOutputChars: 200 }).pipe(Effect.provide(layer))
      assert.strictEqual((yield* roomy.generate(request)).toolCalls?.length, 1)
    })
  )
})

describe("EffectAi.languageModel: an assistant's tool call JSON cannot write", () => {
  it.effect("is an InvalidRequestError naming the prompt, not a defect", () =>
    Effect.gen(function* () {
      const m = yield* modelOver({ respond: () => "ok" })
      const exit = yield* Effect.exit(
        m.run(
          LanguageModel.generateText({
            prompt: [
              { role: "user", content: "weather?" },
              {
                role: "assistant",
                content: [{ type: "tool-call", id: "c1", name: "GetWeather", params: { n: 1n } }]
              },
              {
                role: "tool",
                content: [{ type: "tool-result", id: "c1", name: "GetWeather", isFailure: false, result: "sunny" }]
              }
            ]
          })
        )
      )
      const error = failureOf(exit)
      assert.deepStrictEqual(error.reason._tag === "InvalidRequestError" ? error.reason.parameter : undefined, "prompt")
      assert.strictEqual(yield* m.control.calls, 0)
    })
  )
})

describe("EffectAi: a tool call's signature (Gemini's thought signature) crosses the adapter both ways", () => {
  const signature = "CiQBcsjafE3z+thought/signature=="
  const call = { id: "c1", name: "lookup", arguments: '{"city":"Oslo"}', signature }
  const google = (part: { readonly options?: unknown; readonly metadata?: unknown } | undefined) =>
    ((part?.options ?? part?.metadata) as Record<string, Record<string, unknown>> | undefined)?.["google"]?.[
      "thoughtSignature"
    ]

  it.effect("round trip: a ModelProvider's signed call through languageModel and back keeps it, both turns", () =>
    Effect.gen(function* () {
      const { provider, control } = yield* Mock.make({
        script: [Mock.Outcome.succeed("", { toolCalls: [call] }), Mock.Outcome.succeed("", { toolCalls: [call] })],
        respond: () => "4 °C"
      })
      const back = yield* EffectAi.make({ name: "outer" }).pipe(Effect.provide(EffectAi.layerLanguageModel(provider)))
      const request: Model.GenerateRequest = { prompt: "weather?", tools: [{ name: "lookup" }] }
      assert.deepStrictEqual((yield* back.generate(request)).toolCalls, [call])
      const streamed = (yield* collect(back.stream(request))).parts.find((p) => p._tag === "ToolCall")
      assert.deepStrictEqual(streamed?._tag === "ToolCall" ? streamed.call : undefined, call)
      // The next turn sends the signed call back: the inner provider sees the signature.
      yield* back.generate({
        messages: [
          { role: "user", content: "weather?" },
          { role: "assistant", content: "", toolCalls: [call] },
          { role: "tool", toolCallId: "c1", content: "4 °C" }
        ]
      })
      const log = yield* control.requests
      const last = log[log.length - 1]?.request as Model.GenerateRequest
      assert.deepStrictEqual(last.messages?.[1], { role: "assistant", content: "", toolCalls: [call] })
    })
  )

  it.effect("as effect/ai sees it: metadata.google.thoughtSignature on the answer, options on the prompt", () =>
    Effect.gen(function* () {
      const weather = { ...call, name: "GetWeather" }
      const m = yield* modelOver({ script: [Mock.Outcome.succeed("", { toolCalls: [weather] })] })
      const response = yield* m.run(
        LanguageModel.generateText({ prompt: "weather?", toolkit: WeatherToolkit, disableToolCallResolution: true })
      )
      assert.strictEqual(google(response.content.find((p) => p.type === "tool-call")), signature)
      const { provider, seen } = yield* providerWith({})
      yield* provider.generate({
        messages: [
          { role: "user", content: "weather?" },
          { role: "assistant", content: "", toolCalls: [call] },
          { role: "tool", toolCallId: "c1", content: "4 °C" }
        ]
      })
      const assistant = seen[0]!.options.prompt.content[1]
      assert.strictEqual(google(assistant?.role === "assistant" ? assistant.content[0] : undefined), signature)
    })
  )

  it.effect("a signature that is not a string, or past the bound, is refused naming it (both directions)", () =>
    Effect.gen(function* () {
      for (const bad of [42, "x".repeat(EffectAi.maxSignatureChars + 1)]) {
        const part = {
          type: "tool-call",
          id: "call_1",
          name: "lookup",
          params: {},
          metadata: { google: { thoughtSignature: bad } }
        } as Response.StreamPartEncoded
        const { provider } = yield* providerWith({
          generate: Effect.succeed([part as Response.PartEncoded, finish("tool-calls")]),
          stream: Stream.make(part, finish("tool-calls"))
        })
        const request: Model.GenerateRequest = { prompt: "x", tools: [{ name: "lookup" }] }
        const generated = (yield* Effect.flip(provider.generate(request))) as ModelError
        assert.deepStrictEqual([generated.reason, generated.field], ["Decode", "toolCalls[0].signature"])
        const streamed = failureOf((yield* collect(provider.stream(request))).exit) as ModelError
        assert.deepStrictEqual([streamed.reason, streamed.field], ["Decode", "toolCalls[0].signature"])
        const m = yield* modelOver({ respond: () => "ok" })
        const exit = yield* Effect.exit(
          m.run(
            LanguageModel.generateText({
              prompt: [
                { role: "user", content: "weather?" },
                {
                  role: "assistant",
                  content: [
                    {
                      type: "tool-call",
                      id: "c1",
                      name: "lookup",
                      params: {},
                      options: { google: { thoughtSignature: bad } }
                    }
                  ]
                }
              ]
            })
          )
        )
        const error = failureOf(exit)
        assert.strictEqual(error.reason._tag, "InvalidRequestError")
        assert.include(error.reason._tag === "InvalidRequestError" ? error.reason.description : "", "signature")
        assert.strictEqual(yield* m.control.calls, 0)
      }
    })
  )
})

describe("EffectAi: requestLimits, as every provider's options name them", () => {
  it.effect(
    "languageModel and embeddingModel take requestLimits; limits, its former name, still holds; both disagreeing is refused",
    () =>
      Effect.gen(function* () {
        const { provider } = yield* Mock.make({ dimensions: 4 })
        const twoMessages = LanguageModel.generateText({
          prompt: [
            { role: "user", content: "a" },
            { role: "user", content: "b" }
          ]
        })
        const one = { maxMessages: 1, maxEmbedTexts: 1 }
        for (const options of [{ requestLimits: one }, { limits: one }, { requestLimits: one, limits: { ...one } }]) {
          const lm = yield* EffectAi.languageModel(provider, options)
          const refused = yield* Effect.flip(Effect.provideService(twoMessages, LanguageModel.LanguageModel, lm))
          assert.strictEqual(refused.reason._tag, "InvalidRequestError", JSON.stringify(options))
          const em = yield* EffectAi.embeddingModel(provider, options)
          const tooMany = yield* Effect.flip(em.embedMany(["a", "b"]))
          assert.strictEqual(tooMany.reason._tag, "InvalidRequestError", JSON.stringify(options))
        }
        const paths: Array<string> = []
        for (const options of [
          { requestLimits: { maxMessages: -1 } },
          { requestLimits: { maxMessages: 1 }, limits: { maxMessages: 2 } }
        ]) {
          paths.push((yield* Effect.flip(EffectAi.languageModel(provider, options))).path)
          paths.push((yield* Effect.flip(EffectAi.embeddingModel(provider, options))).path)
        }
        assert.deepStrictEqual(paths, ["requestLimits.maxMessages", "requestLimits.maxMessages", "limits", "limits"])
      })
  )
})
