/**
 * OpenAI-compatible chat completions and embeddings over `@effect/platform`'s `HttpClient`:
 * one layer for OpenAI, Ollama's `/v1`, vLLM, LM Studio and llama.cpp's server (set
 * `baseUrl`). Streams are SSE with `stream_options.include_usage`; embeddings are asked for
 * as floats and put back in input order by their `index`.
 *
 * @since 0.1.0
 */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import { Config, type ConfigError, Effect, Layer, Option, type Redacted, Schema, Stream } from "effect"
import type { ModelError } from "../AiError.js"
import * as Http from "../internal/http.js"
import * as Model from "../Model.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Base URL including the version prefix. Default `https://api.openai.com/v1`. */
  readonly baseUrl?: string | undefined
  /** Sent as `Authorization: Bearer ...`; omit for local servers that need none. */
  readonly apiKey?: Redacted.Redacted | undefined
  /** Sent as `OpenAI-Organization`. */
  readonly organization?: string | undefined
  /** Sent as `OpenAI-Project`. */
  readonly project?: string | undefined
  /** Default chat model. Default `gpt-4o-mini`. */
  readonly model?: string | undefined
  /** Default embedding model. Default `text-embedding-3-small`. */
  readonly embeddingModel?: string | undefined
  /** Provider name in errors, metrics and provenance. Default `openai`. */
  readonly name?: string | undefined
  /** Ask for a final usage chunk when streaming (`stream_options.include_usage`). Default true; some older servers reject it. */
  readonly streamUsage?: boolean | undefined
  /** Extra headers on every request. */
  readonly headers?: Readonly<Record<string, string>> | undefined
}

const ChatMessage = Schema.Struct({
  role: Schema.optional(Schema.String),
  content: Schema.optionalWith(Schema.String, { nullable: true })
})

const UsageWire = Schema.Struct({
  prompt_tokens: Schema.Number,
  completion_tokens: Schema.optionalWith(Schema.Number, { default: () => 0 }),
  total_tokens: Schema.optional(Schema.Number)
})

const ChatCompletion = Schema.Struct({
  model: Schema.optional(Schema.String),
  choices: Schema.NonEmptyArray(
    Schema.Struct({
      index: Schema.optional(Schema.Number),
      message: ChatMessage,
      finish_reason: Schema.optionalWith(Schema.String, { nullable: true })
    })
  ),
  usage: Schema.optionalWith(UsageWire, { nullable: true })
})

const ChatChunk = Schema.Struct({
  model: Schema.optional(Schema.String),
  choices: Schema.Array(
    Schema.Struct({
      index: Schema.optional(Schema.Number),
      delta: Schema.optionalWith(ChatMessage, { nullable: true }),
      finish_reason: Schema.optionalWith(Schema.String, { nullable: true })
    })
  ),
  usage: Schema.optionalWith(UsageWire, { nullable: true })
})

const Embeddings = Schema.Struct({
  model: Schema.optional(Schema.String),
  data: Schema.Array(
    Schema.Struct({
      index: Schema.Number,
      embedding: Schema.Union(Schema.Array(Schema.Number), Schema.String)
    })
  ),
  usage: Schema.optionalWith(
    Schema.Struct({ prompt_tokens: Schema.Number, total_tokens: Schema.optional(Schema.Number) }),
    { nullable: true }
  )
})

const decodeCompletion = Http.jsonDecoder(ChatCompletion)
const decodeChunk = Http.valueDecoder(ChatChunk)
const decodeEmbeddings = Http.jsonDecoder(Embeddings)

/**
 * An OpenAI `finish_reason` as ours.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = (reason: string | undefined): Model.FinishReason => {
  switch (reason) {
    case "stop":
    case "eos":
      return "stop"
    case "length":
      return "length"
    case "content_filter":
      return "content_filter"
    case "tool_calls":
    case "function_call":
      return "tool_calls"
    default:
      return "unknown"
  }
}

const usageOf = (
  wire: typeof UsageWire.Type | undefined,
  fallbackInput: number,
  fallbackOutput: number
): Model.Usage =>
  wire === undefined
    ? Model.usage(fallbackInput, fallbackOutput)
    : {
        inputTokens: wire.prompt_tokens,
        outputTokens: wire.completion_tokens,
        totalTokens: wire.total_tokens ?? wire.prompt_tokens + wire.completion_tokens
      }

/**
 * Builds the provider from an `HttpClient` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (options: Options = {}) {
  const client = yield* HttpClient.HttpClient
  const name = options.name ?? "openai"
  const baseUrl = options.baseUrl ?? "https://api.openai.com/v1"
  const defaultModel = options.model ?? "gpt-4o-mini"
  const embeddingModel = options.embeddingModel ?? "text-embedding-3-small"
  const secrets = options.apiKey === undefined ? [] : [options.apiKey]
  const streamUsage = options.streamUsage ?? true

  const headers: Record<string, string> = { ...options.headers }
  if (options.organization !== undefined) headers["OpenAI-Organization"] = options.organization
  if (options.project !== undefined) headers["OpenAI-Project"] = options.project

  const post = (path: string, body: unknown, accept: string): HttpClientRequest.HttpClientRequest => {
    const request = HttpClientRequest.post(Http.joinUrl(baseUrl, path)).pipe(
      HttpClientRequest.setHeaders(headers),
      HttpClientRequest.setHeader("accept", accept),
      HttpClientRequest.bodyUnsafeJson(body)
    )
    return options.apiKey === undefined ? request : HttpClientRequest.bearerToken(request, options.apiKey)
  }

  const ctxOf = (model: string): Http.CallContext => ({ provider: name, model, secrets })

  const chatBody = (request: Model.GenerateRequest, model: string, stream: boolean) => {
    const body: Record<string, unknown> = {
      model,
      messages: Model.toMessages(request).map((m) => ({ role: m.role, content: m.content }))
    }
    if (request.maxTokens !== undefined) body["max_tokens"] = request.maxTokens
    if (request.temperature !== undefined) body["temperature"] = request.temperature
    if (request.topP !== undefined) body["top_p"] = request.topP
    if (request.stop !== undefined) body["stop"] = request.stop
    if (request.seed !== undefined) body["seed"] = request.seed
    if (stream) {
      body["stream"] = true
      if (streamUsage) body["stream_options"] = { include_usage: true }
    }
    return body
  }

  const generate = Effect.fn("OpenAiCompat.generate")(function* (request: Model.GenerateRequest) {
    const valid = yield* Model.validateGenerate(request)
    const model = valid.model ?? defaultModel
    yield* Effect.annotateCurrentSpan({ "gen_ai.system": name, "gen_ai.request.model": model })
    const ctx = ctxOf(model)
    const answer = yield* Http.executeJson(
      client,
      post("chat/completions", chatBody(valid, model, false), "application/json"),
      decodeCompletion,
      ctx
    )
    const choice = answer.choices[0]
    const text = choice.message.content ?? ""
    return {
      text,
      finishReason: finishReasonOf(choice.finish_reason),
      usage: usageOf(answer.usage, Http.estimateInput(Model.toMessages(valid)), Model.estimateTokens(text)),
      provider: name,
      model: answer.model ?? model
    } satisfies Model.GenerateResponse
  })

  const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, ModelError> =>
    Stream.unwrap(
      Effect.map(Model.validateGenerate(request), (valid) => {
        const model = valid.model ?? defaultModel
        const ctx = ctxOf(model)
        return Stream.suspend(() => {
          let finishReason: Model.FinishReason | undefined
          let usage: typeof UsageWire.Type | undefined
          let answeredModel: string | undefined
          let outputChars = 0
          const finish = (): Model.StreamPart => ({
            _tag: "Finish",
            finishReason: finishReason ?? "unknown",
            usage: usageOf(usage, Http.estimateInput(Model.toMessages(valid)), Math.ceil(outputChars / 4)),
            provider: name,
            model: answeredModel ?? model
          })
          const events = Http.sseEvents(
            Http.executeStream(
              client,
              post("chat/completions", chatBody(valid, model, true), "text/event-stream"),
              ctx
            ),
            ctx
          )
          return Http.assemble(
            events,
            (event) => {
              if (event.data.trim() === "[DONE]") return Effect.succeed([finish()])
              return Effect.flatMap(Http.parseJson(event.data, ctx), (payload) => {
                if (event.event === "error" || isErrorPayload(payload)) {
                  return Effect.fail(Http.errorFromPayload(payload, ctx))
                }
                return Effect.map(decodeChunk(payload, ctx), (chunk) => {
                  if (chunk.model !== undefined) answeredModel = chunk.model
                  if (chunk.usage !== undefined) usage = chunk.usage
                  const parts: Array<Model.StreamPart> = []
                  for (const choice of chunk.choices) {
                    if ((choice.index ?? 0) !== 0) continue
                    const text = choice.delta?.content
                    if (text !== undefined && text.length > 0) {
                      outputChars += text.length
                      parts.push({ _tag: "TextDelta", text })
                    }
                    if (choice.finish_reason !== undefined) finishReason = finishReasonOf(choice.finish_reason)
                  }
                  return parts
                })
              })
            },
            // No `[DONE]`: a server that sent its finish reason has finished; otherwise the stream broke.
            () => (finishReason === undefined ? Effect.fail(Http.endedEarly(ctx)) : Effect.succeed([finish()]))
          )
        })
      })
    ).pipe(Stream.withSpan("OpenAiCompat.stream", { attributes: { "gen_ai.system": name } }))

  const embed = Effect.fn("OpenAiCompat.embed")(function* (request: Model.EmbedRequest) {
    const valid = yield* Model.validateEmbed(request)
    const model = valid.model ?? embeddingModel
    yield* Effect.annotateCurrentSpan({ "gen_ai.system": name, "gen_ai.request.model": model })
    const ctx = ctxOf(model)
    const answer = yield* Http.executeJson(
      client,
      post("embeddings", { model, input: valid.texts, encoding_format: "float" }, "application/json"),
      decodeEmbeddings,
      ctx
    )
    const vectors: Array<ReadonlyArray<number> | undefined> = Array.from(
      { length: valid.texts.length },
      () => undefined
    )
    for (const item of answer.data) {
      if (!Number.isInteger(item.index) || item.index < 0 || item.index >= vectors.length) {
        return yield* Effect.fail(Http.malformed(ctx, "data.index", `index ${item.index} out of range`))
      }
      const values =
        typeof item.embedding === "string" ? Http.decodeBase64Floats(item.embedding) : Option.some(item.embedding)
      if (Option.isNone(values)) {
        return yield* Effect.fail(Http.malformed(ctx, "data.embedding", "not a float array nor base64 float32"))
      }
      vectors[item.index] = values.value
    }
    const missing = vectors.indexOf(undefined)
    if (missing !== -1 || answer.data.length !== valid.texts.length) {
      return yield* Effect.fail(
        Http.malformed(ctx, "data", `expected ${valid.texts.length} embeddings, got ${answer.data.length}`)
      )
    }
    return {
      vectors: vectors as Array<ReadonlyArray<number>>,
      usage: answer.usage === undefined ? undefined : Model.usage(answer.usage.prompt_tokens, 0),
      provider: name,
      model: answer.model ?? model
    } satisfies Model.EmbedResponse
  })

  return { name, defaultModel, generate, stream, embed } satisfies Model.Service
})

const isErrorPayload = (payload: unknown): boolean =>
  typeof payload === "object" &&
  payload !== null &&
  ("error" in payload || (payload as { readonly object?: unknown }).object === "error")

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Model.ModelProvider, never, HttpClient.HttpClient> =>
  Layer.effect(Model.ModelProvider, make(options))

/**
 * The options read from the environment the way the official OpenAI clients read them:
 * `OPENAI_API_KEY` (optional), `OPENAI_BASE_URL`, `OPENAI_ORG_ID`, `OPENAI_PROJECT_ID`,
 * plus `OPENAI_MODEL` and `OPENAI_EMBEDDING_MODEL`.
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  apiKey: Http.optionalRedacted("OPENAI_API_KEY"),
  baseUrl: Http.optionalString("OPENAI_BASE_URL"),
  organization: Http.optionalString("OPENAI_ORG_ID"),
  project: Http.optionalString("OPENAI_PROJECT_ID"),
  model: Http.optionalString("OPENAI_MODEL"),
  embeddingModel: Http.optionalString("OPENAI_EMBEDDING_MODEL")
})

/**
 * The provider with options from `Config`. Without arguments it reads {@link config}; when
 * options are given, only what they name is read (no key is picked up implicitly, so a key
 * meant for OpenAI is never sent to another server).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config.Wrap<Options> = config
): Layer.Layer<Model.ModelProvider, ConfigError.ConfigError, HttpClient.HttpClient> =>
  Layer.unwrapEffect(Effect.map(Config.unwrap(options), layer))
