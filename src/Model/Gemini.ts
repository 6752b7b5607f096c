/**
 * Google Gemini (Generative Language API) over `@effect/platform`'s `HttpClient`:
 * `generateContent`, `streamGenerateContent` (`?alt=sse`), `embedContent` and
 * `batchEmbedContents`. The key travels in the `x-goog-api-key` header, never in the URL
 * (URLs end up in logs and span attributes).
 *
 * @since 0.1.0
 */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import { Config, type ConfigError, Effect, Layer, Redacted, Schema, Stream } from "effect"
import { ModelError } from "../AiError.js"
import * as Http from "../internal/http.js"
import * as Model from "../Model.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly apiKey: Redacted.Redacted
  /** Default `gemini-2.5-flash`. */
  readonly model?: string | undefined
  /** Default `gemini-embedding-001`. */
  readonly embeddingModel?: string | undefined
  /** Truncates embeddings to this many dimensions (`outputDimensionality`). */
  readonly embeddingDimensions?: number | undefined
  /** Default `https://generativelanguage.googleapis.com`. */
  readonly baseUrl?: string | undefined
  /** Default `v1beta`. */
  readonly apiVersion?: string | undefined
  /** Provider name in errors, metrics and provenance. Default `gemini`. */
  readonly name?: string | undefined
  readonly headers?: Readonly<Record<string, string>> | undefined
}

const Part = Schema.Struct({ text: Schema.optional(Schema.String), thought: Schema.optional(Schema.Boolean) })

const UsageMetadata = Schema.Struct({
  promptTokenCount: Schema.optional(Schema.Number),
  candidatesTokenCount: Schema.optional(Schema.Number),
  thoughtsTokenCount: Schema.optional(Schema.Number),
  totalTokenCount: Schema.optional(Schema.Number)
})

const GenerateContentResponse = Schema.Struct({
  candidates: Schema.optional(
    Schema.Array(
      Schema.Struct({
        content: Schema.optional(Schema.Struct({ parts: Schema.optional(Schema.Array(Part)) })),
        finishReason: Schema.optional(Schema.String)
      })
    )
  ),
  promptFeedback: Schema.optional(Schema.Struct({ blockReason: Schema.optional(Schema.String) })),
  usageMetadata: Schema.optional(UsageMetadata),
  modelVersion: Schema.optional(Schema.String)
})

type GenerateContentResponse = typeof GenerateContentResponse.Type

const Values = Schema.Struct({ values: Schema.Array(Schema.Number) })

const decodeGenerate = Http.jsonDecoder(GenerateContentResponse)
const decodeChunk = Http.valueDecoder(GenerateContentResponse)
const decodeEmbed = Http.jsonDecoder(Schema.Struct({ embedding: Values }))
const decodeBatchEmbed = Http.jsonDecoder(Schema.Struct({ embeddings: Schema.Array(Values) }))

/**
 * Gemini's `finishReason` as ours.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = (reason: string | undefined): Model.FinishReason => {
  switch (reason) {
    case "STOP":
      return "stop"
    case "MAX_TOKENS":
      return "length"
    case "SAFETY":
    case "RECITATION":
    case "BLOCKLIST":
    case "PROHIBITED_CONTENT":
    case "SPII":
    case "IMAGE_SAFETY":
      return "content_filter"
    case "MALFORMED_FUNCTION_CALL":
    case "UNEXPECTED_TOOL_CALL":
      return "tool_calls"
    default:
      return "unknown"
  }
}

const textOf = (response: GenerateContentResponse): string => {
  const parts = response.candidates?.[0]?.content?.parts ?? []
  let text = ""
  for (const part of parts) if (part.thought !== true && part.text !== undefined) text += part.text
  return text
}

/** Thinking tokens are billed as output. */
const usageOf = (
  metadata: typeof UsageMetadata.Type | undefined,
  fallbackInput: number,
  fallbackOutput: number
): Model.Usage => {
  if (metadata === undefined) return Model.usage(fallbackInput, fallbackOutput)
  const input = metadata.promptTokenCount ?? fallbackInput
  const output = (metadata.candidatesTokenCount ?? 0) + (metadata.thoughtsTokenCount ?? 0)
  return { inputTokens: input, outputTokens: output, totalTokens: metadata.totalTokenCount ?? input + output }
}

const modelPath = (model: string): string =>
  (model.startsWith("models/") || model.startsWith("tunedModels/") ? model : `models/${model}`)
    .split("/")
    .map(encodeURIComponent)
    .join("/")

/**
 * The request body of `generateContent`: system messages become `systemInstruction`,
 * assistant turns are role `model`.
 *
 * @since 0.1.0
 * @category utils
 */
export const requestBody = (request: Model.GenerateRequest): Record<string, unknown> => {
  const system: Array<string> = []
  const contents: Array<unknown> = []
  for (const message of Model.toMessages(request)) {
    if (message.role === "system") system.push(message.content)
    else contents.push({ role: message.role === "assistant" ? "model" : "user", parts: [{ text: message.content }] })
  }
  const body: Record<string, unknown> = { contents }
  if (system.length > 0) body["systemInstruction"] = { parts: [{ text: system.join("\n\n") }] }
  const config: Record<string, unknown> = {}
  if (request.maxTokens !== undefined) config["maxOutputTokens"] = request.maxTokens
  if (request.temperature !== undefined) config["temperature"] = request.temperature
  if (request.topP !== undefined) config["topP"] = request.topP
  if (request.stop !== undefined) config["stopSequences"] = request.stop
  if (request.seed !== undefined) config["seed"] = request.seed
  if (Object.keys(config).length > 0) body["generationConfig"] = config
  return body
}

/**
 * Builds the provider from an `HttpClient` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (options: Options) {
  const client = yield* HttpClient.HttpClient
  const name = options.name ?? "gemini"
  const baseUrl = Http.joinUrl(
    options.baseUrl ?? "https://generativelanguage.googleapis.com",
    options.apiVersion ?? "v1beta"
  )
  const defaultModel = options.model ?? "gemini-2.5-flash"
  const embeddingModel = options.embeddingModel ?? "gemini-embedding-001"
  const secrets = [options.apiKey]

  const post = (path: string, body: unknown, accept = "application/json"): HttpClientRequest.HttpClientRequest =>
    HttpClientRequest.post(Http.joinUrl(baseUrl, path)).pipe(
      HttpClientRequest.setHeaders({ ...options.headers }),
      HttpClientRequest.setHeader("x-goog-api-key", Redacted.value(options.apiKey)),
      HttpClientRequest.setHeader("accept", accept),
      HttpClientRequest.bodyUnsafeJson(body)
    )

  const ctxOf = (model: string): Http.CallContext => ({ provider: name, model, secrets, notFoundField: "model" })

  const blocked = (response: GenerateContentResponse, ctx: Http.CallContext): ModelError | undefined => {
    const reason = response.promptFeedback?.blockReason
    if (reason === undefined || (response.candidates !== undefined && response.candidates.length > 0)) return undefined
    return new ModelError({
      reason: "ContentFilter",
      message: `${ctx.provider} blocked the prompt: ${reason}`,
      provider: ctx.provider,
      model: ctx.model
    })
  }

  const generate = Effect.fn("Gemini.generate")(function* (request: Model.GenerateRequest) {
    const valid = yield* Model.validateGenerate(request)
    const model = valid.model ?? defaultModel
    yield* Effect.annotateCurrentSpan({ "gen_ai.system": name, "gen_ai.request.model": model })
    const ctx = ctxOf(model)
    const answer = yield* Http.executeJson(
      client,
      post(`${modelPath(model)}:generateContent`, requestBody(valid)),
      decodeGenerate,
      ctx
    )
    const refused = blocked(answer, ctx)
    if (refused !== undefined) return yield* Effect.fail(refused)
    const candidate = answer.candidates?.[0]
    if (candidate === undefined) return yield* Effect.fail(Http.malformed(ctx, "candidates", "no candidate"))
    const text = textOf(answer)
    return {
      text,
      finishReason: finishReasonOf(candidate.finishReason),
      usage: usageOf(answer.usageMetadata, Http.estimateInput(Model.toMessages(valid)), Model.estimateTokens(text)),
      provider: name,
      model: answer.modelVersion ?? model
    } satisfies Model.GenerateResponse
  })

  const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, ModelError> =>
    Stream.unwrap(
      Effect.map(Model.validateGenerate(request), (valid) => {
        const model = valid.model ?? defaultModel
        const ctx = ctxOf(model)
        const url = `${modelPath(model)}:streamGenerateContent?alt=sse`
        return Stream.suspend(() => {
          let finishReason: string | undefined
          let metadata: typeof UsageMetadata.Type | undefined
          let answeredModel: string | undefined
          let outputChars = 0
          const events = Http.sseEvents(
            Http.executeStream(client, post(url, requestBody(valid), "text/event-stream"), ctx),
            ctx
          )
          return Http.assemble(
            events,
            (event) =>
              Effect.flatMap(Http.parseJson(event.data, ctx), (payload) => {
                if (
                  event.event === "error" ||
                  (typeof payload === "object" && payload !== null && "error" in payload)
                ) {
                  return Effect.fail(Http.errorFromPayload(payload, ctx))
                }
                return Effect.flatMap(decodeChunk(payload, ctx), (chunk) => {
                  const refused = blocked(chunk, ctx)
                  if (refused !== undefined) return Effect.fail(refused)
                  if (chunk.usageMetadata !== undefined) metadata = chunk.usageMetadata
                  if (chunk.modelVersion !== undefined) answeredModel = chunk.modelVersion
                  const reason = chunk.candidates?.[0]?.finishReason
                  if (reason !== undefined) finishReason = reason
                  const text = textOf(chunk)
                  outputChars += text.length
                  return Effect.succeed(text.length === 0 ? [] : [{ _tag: "TextDelta", text } as const])
                })
              }),
            // Gemini's SSE has no terminator: the stream is complete when it ends after a finishReason.
            () =>
              finishReason === undefined
                ? Effect.fail(Http.endedEarly(ctx))
                : Effect.succeed([
                    {
                      _tag: "Finish",
                      finishReason: finishReasonOf(finishReason),
                      usage: usageOf(metadata, Http.estimateInput(Model.toMessages(valid)), Math.ceil(outputChars / 4)),
                      provider: name,
                      model: answeredModel ?? model
                    }
                  ])
          )
        })
      })
    ).pipe(Stream.withSpan("Gemini.stream", { attributes: { "gen_ai.system": name } }))

  const embed = Effect.fn("Gemini.embed")(function* (request: Model.EmbedRequest) {
    const valid = yield* Model.validateEmbed(request)
    const model = valid.model ?? embeddingModel
    yield* Effect.annotateCurrentSpan({ "gen_ai.system": name, "gen_ai.request.model": model })
    const ctx = ctxOf(model)
    const path = modelPath(model)
    const one = (text: string) => ({
      model: path,
      content: { parts: [{ text }] },
      ...(options.embeddingDimensions === undefined ? {} : { outputDimensionality: options.embeddingDimensions })
    })
    const vectors =
      valid.texts.length === 1
        ? yield* Effect.map(
            Http.executeJson(client, post(`${path}:embedContent`, one(valid.texts[0])), decodeEmbed, ctx),
            (answer) => [answer.embedding.values]
          )
        : yield* Effect.map(
            Http.executeJson(
              client,
              post(`${path}:batchEmbedContents`, { requests: valid.texts.map(one) }),
              decodeBatchEmbed,
              ctx
            ),
            (answer) => answer.embeddings.map((e) => e.values)
          )
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
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<Model.ModelProvider, never, HttpClient.HttpClient> =>
  Layer.effect(Model.ModelProvider, make(options))

/**
 * Options from the environment: `GEMINI_API_KEY` (required), `GEMINI_MODEL`,
 * `GEMINI_EMBEDDING_MODEL`, `GEMINI_BASE_URL`.
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  apiKey: Config.redacted("GEMINI_API_KEY"),
  model: Http.optionalString("GEMINI_MODEL"),
  embeddingModel: Http.optionalString("GEMINI_EMBEDDING_MODEL"),
  baseUrl: Http.optionalString("GEMINI_BASE_URL")
})

/**
 * The provider with options from `Config` (default: {@link config}).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config.Wrap<Options> = config
): Layer.Layer<Model.ModelProvider, ConfigError.ConfigError, HttpClient.HttpClient> =>
  Layer.unwrapEffect(Effect.map(Config.unwrap(options), layer))
