/**
 * Turns any `@effect/ai` `LanguageModel` (and optionally an `EmbeddingModel`) into a
 * `ModelProvider`, so the `@effect/ai` provider packages (OpenAI, Anthropic, Google,
 * Bedrock, OpenRouter, ...) run under every executor, breaker, cache and batch here.
 *
 * This is the only module that imports `@effect/ai`: it is an optional peer dependency,
 * needed only by applications that import `effect-orchestra/Model/EffectAi`.
 *
 * @since 0.1.0
 */
import * as AiError from "@effect/ai/AiError"
import * as EmbeddingModel from "@effect/ai/EmbeddingModel"
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as AiModel from "@effect/ai/Model"
import type * as Prompt from "@effect/ai/Prompt"
import type * as Response from "@effect/ai/Response"
import { Clock, Config, type ConfigError, Context, Effect, Layer, Option, ParseResult, Stream } from "effect"
import { ModelError } from "../AiError.js"
import * as Http from "../internal/http.js"
import * as Model from "../Model.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Provider name. Default: the `@effect/ai` model's `ProviderName` (e.g. `openai`), else `effect-ai`. */
  readonly name?: string | undefined
  /** The model reported when the answer names none. Default `unknown`. */
  readonly model?: string | undefined
  /**
   * Services added to every call, built from the request: the way to pass settings that
   * `LanguageModel` does not carry (temperature, max tokens, stop, model), through your
   * provider's config tag, e.g.
   * `(r) => Context.make(OpenAiLanguageModel.Config, { temperature: r.temperature })`.
   */
  readonly context?: ((request: Model.GenerateRequest) => Context.Context<never>) | undefined
}

/**
 * An `@effect/ai` finish reason as ours.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = (reason: Response.FinishReason): Model.FinishReason => {
  switch (reason) {
    case "stop":
      return "stop"
    case "length":
      return "length"
    case "content-filter":
      return "content_filter"
    case "tool-calls":
      return "tool_calls"
    case "error":
      return "error"
    default:
      return "unknown"
  }
}

const headerRecord = (headers: Readonly<Record<string, string>>): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const [key, value] of Object.entries(headers)) out[key.toLowerCase()] = value
  return out
}

const parseBody = (body: string | undefined): unknown => {
  if (body === undefined) return undefined
  try {
    return JSON.parse(body)
  } catch {
    return undefined
  }
}

/**
 * Maps an `@effect/ai` `AiError` to our `ModelError`: statuses as every HTTP provider here
 * maps them (with `Retry-After`), transport failures as `Transport`, bad output as
 * `Decode`, bad input as `InvalidRequest`. Request details (headers carry keys) are never
 * copied into the error.
 *
 * @since 0.1.0
 * @category errors
 */
export const fromAiError = (error: AiError.AiError, ctx: Http.CallContext, nowMillis: number): ModelError => {
  switch (error._tag) {
    case "HttpRequestError":
      return error.reason === "Transport"
        ? Http.transportError(`${error.module}.${error.method} failed`, { message: error.description }, ctx)
        : new ModelError({
            reason: "InvalidRequest",
            message: `${ctx.provider}: could not build the request (${error.reason})`,
            provider: ctx.provider,
            model: ctx.model
          })
    case "HttpResponseError": {
      if (error.reason === "StatusCode") {
        const headers = headerRecord(error.response.headers)
        const body = parseBody(error.body)
        const detail = Http.errorInfo(body).message ?? error.description
        return Http.errorFromStatus(
          error.response.status,
          headers,
          body === undefined ? (detail ?? "") : JSON.stringify(body),
          nowMillis,
          ctx
        )
      }
      return new ModelError({
        reason: "Decode",
        message: `${ctx.provider} sent an unreadable response (${error.reason})${error.description ? `: ${error.description}` : ""}`,
        provider: ctx.provider,
        model: ctx.model,
        status: error.response.status
      })
    }
    case "MalformedInput":
      return new ModelError({
        reason: "InvalidRequest",
        message: `${ctx.provider}: ${error.description ?? "malformed input"}`,
        provider: ctx.provider,
        model: ctx.model
      })
    case "MalformedOutput":
      return ParseResult.isParseError(error.cause)
        ? Http.decodeFailure(error.cause, ctx)
        : new ModelError({
            reason: "Decode",
            message: `${ctx.provider} sent a malformed response${error.description ? `: ${error.description}` : ""}`,
            provider: ctx.provider,
            model: ctx.model
          })
    case "UnknownError":
      return new ModelError({
        reason: "Unknown",
        message: `${ctx.provider}: ${error.description ?? error.message}`,
        provider: ctx.provider,
        model: ctx.model
      })
  }
}

const toPrompt = (request: Model.GenerateRequest): Prompt.RawInput =>
  Model.toMessages(request).map((m) => ({ role: m.role, content: m.content }))

const usageOf = (usage: Response.Usage, input: number, output: number): Model.Usage => {
  const inputTokens = usage.inputTokens ?? input
  const outputTokens = usage.outputTokens ?? output
  return { inputTokens, outputTokens, totalTokens: usage.totalTokens ?? inputTokens + outputTokens }
}

/**
 * Builds the provider from the `LanguageModel` (and, when present, `EmbeddingModel`) in
 * context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (options: Options = {}) {
  const lm = yield* LanguageModel.LanguageModel
  const embedder = yield* Effect.serviceOption(EmbeddingModel.EmbeddingModel)
  const providerName = yield* Effect.serviceOption(AiModel.ProviderName)
  const name = options.name ?? Option.getOrElse(providerName, () => "effect-ai")
  const defaultModel = options.model ?? "unknown"

  const mapError = <A, R>(effect: Effect.Effect<A, AiError.AiError, R>, ctx: Http.CallContext) =>
    Effect.catchIf(effect, AiError.isAiError, (error) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.fail(fromAiError(error, ctx, now)))
    )

  const withContext = (request: Model.GenerateRequest) =>
    options.context === undefined ? undefined : options.context(request)

  const generate = Effect.fn("EffectAi.generate")(function* (request: Model.GenerateRequest) {
    const valid = yield* Model.validateGenerate(request)
    const model = valid.model ?? defaultModel
    yield* Effect.annotateCurrentSpan({ "gen_ai.system": name })
    const ctx: Http.CallContext = { provider: name, model }
    const extra = withContext(valid)
    const call = lm.generateText({ prompt: toPrompt(valid) })
    const response = yield* mapError(
      extra === undefined ? call : Effect.mapInputContext(call, (c: Context.Context<never>) => Context.merge(c, extra)),
      ctx
    )
    let answeredModel: string | undefined
    for (const part of response.content) {
      if (part.type === "response-metadata" && Option.isSome(part.modelId)) answeredModel = part.modelId.value
    }
    const text = response.text
    return {
      text,
      finishReason: finishReasonOf(response.finishReason),
      usage: usageOf(response.usage, Http.estimateInput(Model.toMessages(valid)), Model.estimateTokens(text)),
      provider: name,
      model: answeredModel ?? model
    } satisfies Model.GenerateResponse
  })

  const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, ModelError> =>
    Stream.unwrap(
      Effect.map(Model.validateGenerate(request), (valid) => {
        const model = valid.model ?? defaultModel
        const ctx: Http.CallContext = { provider: name, model }
        return Stream.suspend(() => {
          let answeredModel: string | undefined
          let outputChars = 0
          const extra = withContext(valid)
          const raw = lm.streamText({ prompt: toPrompt(valid) })
          const parts = (
            extra === undefined
              ? raw
              : Stream.mapInputContext(raw, (c: Context.Context<never>) => Context.merge(c, extra))
          ).pipe(
            Stream.catchAll((error) =>
              Stream.fromEffect(
                Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.fail(fromAiError(error, ctx, now)))
              )
            )
          )
          return Http.assemble(
            parts,
            (part): Effect.Effect<ReadonlyArray<Model.StreamPart>, ModelError> => {
              switch (part.type) {
                case "text-delta":
                  if (part.delta.length === 0) return Effect.succeed([])
                  outputChars += part.delta.length
                  return Effect.succeed([{ _tag: "TextDelta", text: part.delta }])
                case "response-metadata":
                  if (Option.isSome(part.modelId)) answeredModel = part.modelId.value
                  return Effect.succeed([])
                case "finish":
                  return Effect.succeed([
                    {
                      _tag: "Finish",
                      finishReason: finishReasonOf(part.reason),
                      usage: usageOf(
                        part.usage,
                        Http.estimateInput(Model.toMessages(valid)),
                        Math.ceil(outputChars / 4)
                      ),
                      provider: name,
                      model: answeredModel ?? model
                    }
                  ])
                case "error":
                  return Effect.flatMap(Clock.currentTimeMillis, (now) =>
                    Effect.fail(
                      AiError.isAiError(part.error)
                        ? fromAiError(part.error, ctx, now)
                        : new ModelError({
                            reason: "Unknown",
                            message: `${name} stream failed: ${part.error instanceof Error ? part.error.message : "error part"}`,
                            provider: name,
                            model
                          })
                    )
                  )
                default:
                  return Effect.succeed([])
              }
            },
            () => Effect.fail(Http.endedEarly(ctx))
          )
        })
      })
    ).pipe(Stream.withSpan("EffectAi.stream", { attributes: { "gen_ai.system": name } }))

  const embed = Effect.fn("EffectAi.embed")(function* (request: Model.EmbedRequest) {
    const valid = yield* Model.validateEmbed(request)
    const model = valid.model ?? defaultModel
    const ctx: Http.CallContext = { provider: name, model }
    if (Option.isNone(embedder)) {
      return yield* Effect.fail(
        new ModelError({
          reason: "InvalidRequest",
          message: `${name}: no @effect/ai EmbeddingModel was provided to this adapter`,
          provider: name,
          model
        })
      )
    }
    const vectors = yield* mapError(embedder.value.embedMany(valid.texts), ctx)
    if (vectors.length !== valid.texts.length) {
      return yield* Effect.fail(
        Http.malformed(ctx, "embeddings", `expected ${valid.texts.length} embeddings, got ${vectors.length}`)
      )
    }
    return { vectors, provider: name, model } satisfies Model.EmbedResponse
  })

  return { name, defaultModel, generate, stream, embed } satisfies Model.Service
})

/**
 * A `ModelProvider` from the `LanguageModel` (and optional `EmbeddingModel`) the given
 * layers provide, e.g. `layer().pipe(Layer.provide(OpenAiLanguageModel.model("gpt-4o")))`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Model.ModelProvider, never, LanguageModel.LanguageModel> =>
  Layer.effect(Model.ModelProvider, make(options))

/**
 * The provider with `name` / `model` from `Config`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config.Wrap<Options>
): Layer.Layer<Model.ModelProvider, ConfigError.ConfigError, LanguageModel.LanguageModel> =>
  Layer.unwrapEffect(Effect.map(Config.unwrap(options), layer))
