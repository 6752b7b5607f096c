/**
 * Ollama's native API over `@effect/platform`'s `HttpClient`: `/api/chat` (or
 * `/api/generate` for plain prompts), NDJSON streaming, and `/api/embed`.
 *
 * @since 0.1.0
 */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import { Config, type ConfigError, Effect, Layer, type Redacted, Schema, Stream } from "effect"
import type { ModelError } from "../AiError.js"
import * as Http from "../internal/http.js"
import * as Model from "../Model.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Server URL. Default `http://127.0.0.1:11434`. */
  readonly host?: string | undefined
  /** Default model. Default `llama3.2`. */
  readonly model?: string | undefined
  /** Default embedding model. Default `nomic-embed-text`. */
  readonly embeddingModel?: string | undefined
  /**
   * `chat` (default) sends every request to `/api/chat`; `generate` sends plain-prompt
   * requests to `/api/generate` (conversations still go to `/api/chat`).
   */
  readonly api?: "chat" | "generate" | undefined
  /** How long the server keeps the model loaded after a call (`keep_alive`, e.g. `"5m"`). */
  readonly keepAlive?: string | undefined
  /** A bearer token, for Ollama behind an authenticating proxy or ollama.com. */
  readonly apiKey?: Redacted.Redacted | undefined
  /** Provider name in errors, metrics and provenance. Default `ollama`. */
  readonly name?: string | undefined
  readonly headers?: Readonly<Record<string, string>> | undefined
}

const Counts = {
  done_reason: Schema.optional(Schema.String),
  prompt_eval_count: Schema.optional(Schema.Number),
  eval_count: Schema.optional(Schema.Number)
}

const ChatAnswer = Schema.Struct({
  model: Schema.optional(Schema.String),
  message: Schema.Struct({ role: Schema.optional(Schema.String), content: Schema.String }),
  done: Schema.Boolean,
  ...Counts
})

const GenerateAnswer = Schema.Struct({
  model: Schema.optional(Schema.String),
  response: Schema.String,
  done: Schema.Boolean,
  ...Counts
})

const ChatLine = Schema.Struct({
  model: Schema.optional(Schema.String),
  message: Schema.optional(Schema.Struct({ content: Schema.optionalWith(Schema.String, { default: () => "" }) })),
  done: Schema.Boolean,
  ...Counts
})

const GenerateLine = Schema.Struct({
  model: Schema.optional(Schema.String),
  response: Schema.optionalWith(Schema.String, { default: () => "" }),
  done: Schema.Boolean,
  ...Counts
})

const EmbedAnswer = Schema.Struct({
  model: Schema.optional(Schema.String),
  embeddings: Schema.Array(Schema.Array(Schema.Number)),
  prompt_eval_count: Schema.optional(Schema.Number)
})

interface Line {
  readonly text: string
  readonly done: boolean
  readonly model?: string | undefined
  readonly done_reason?: string | undefined
  readonly prompt_eval_count?: number | undefined
  readonly eval_count?: number | undefined
}

const decodeChat = Http.jsonDecoder(ChatAnswer)
const decodeGenerate = Http.jsonDecoder(GenerateAnswer)
const decodeChatLine = Http.valueDecoder(ChatLine)
const decodeGenerateLine = Http.valueDecoder(GenerateLine)
const decodeEmbed = Http.jsonDecoder(EmbedAnswer)

/**
 * Ollama's `done_reason` as ours.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = (reason: string | undefined): Model.FinishReason => {
  switch (reason) {
    case "stop":
      return "stop"
    case "length":
      return "length"
    default:
      return "unknown"
  }
}

/** `OLLAMA_HOST` is often written without a scheme (`0.0.0.0:11434`). */
const hostUrl = (host: string): string => (/^https?:\/\//i.test(host) ? host : `http://${host}`)

/**
 * Builds the provider from an `HttpClient` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (options: Options = {}) {
  const client = yield* HttpClient.HttpClient
  const name = options.name ?? "ollama"
  const host = hostUrl(options.host ?? "http://127.0.0.1:11434")
  const defaultModel = options.model ?? "llama3.2"
  const embeddingModel = options.embeddingModel ?? "nomic-embed-text"
  const secrets = options.apiKey === undefined ? [] : [options.apiKey]

  const post = (path: string, body: unknown): HttpClientRequest.HttpClientRequest => {
    const request = HttpClientRequest.post(Http.joinUrl(host, path)).pipe(
      HttpClientRequest.setHeaders({ ...options.headers }),
      HttpClientRequest.acceptJson,
      HttpClientRequest.bodyUnsafeJson(body)
    )
    return options.apiKey === undefined ? request : HttpClientRequest.bearerToken(request, options.apiKey)
  }

  const ctxOf = (model: string): Http.CallContext => ({ provider: name, model, secrets, notFoundField: "model" })

  const modelOptions = (request: Model.GenerateRequest): Record<string, unknown> | undefined => {
    const out: Record<string, unknown> = {}
    if (request.maxTokens !== undefined) out["num_predict"] = request.maxTokens
    if (request.temperature !== undefined) out["temperature"] = request.temperature
    if (request.topP !== undefined) out["top_p"] = request.topP
    if (request.stop !== undefined) out["stop"] = request.stop
    if (request.seed !== undefined) out["seed"] = request.seed
    return Object.keys(out).length === 0 ? undefined : out
  }

  const usesGenerate = (request: Model.GenerateRequest): boolean =>
    options.api === "generate" && request.prompt !== undefined

  const bodyOf = (request: Model.GenerateRequest, model: string, stream: boolean) => {
    const body: Record<string, unknown> = usesGenerate(request)
      ? { model, prompt: request.prompt, ...(request.system === undefined ? {} : { system: request.system }) }
      : { model, messages: Model.toMessages(request).map((m) => ({ role: m.role, content: m.content })) }
    body["stream"] = stream
    const modelOpts = modelOptions(request)
    if (modelOpts !== undefined) body["options"] = modelOpts
    if (options.keepAlive !== undefined) body["keep_alive"] = options.keepAlive
    return body
  }

  const usageOf = (
    counts: { readonly prompt_eval_count?: number | undefined; readonly eval_count?: number | undefined },
    request: Model.GenerateRequest,
    outputChars: number
  ): Model.Usage =>
    Model.usage(
      counts.prompt_eval_count ?? Http.estimateInput(Model.toMessages(request)),
      counts.eval_count ?? Math.ceil(outputChars / 4)
    )

  const generate = Effect.fn("Ollama.generate")(function* (request: Model.GenerateRequest) {
    const valid = yield* Model.validateGenerate(request)
    const model = valid.model ?? defaultModel
    yield* Effect.annotateCurrentSpan({ "gen_ai.system": name, "gen_ai.request.model": model })
    const ctx = ctxOf(model)
    const answer = usesGenerate(valid)
      ? yield* Effect.map(
          Http.executeJson(client, post("api/generate", bodyOf(valid, model, false)), decodeGenerate, ctx),
          (a) => ({ ...a, text: a.response })
        )
      : yield* Effect.map(
          Http.executeJson(client, post("api/chat", bodyOf(valid, model, false)), decodeChat, ctx),
          (a) => ({ ...a, text: a.message.content })
        )
    return {
      text: answer.text,
      finishReason: finishReasonOf(answer.done_reason),
      usage: usageOf(answer, valid, answer.text.length),
      provider: name,
      model: answer.model ?? model
    } satisfies Model.GenerateResponse
  })

  const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, ModelError> =>
    Stream.unwrap(
      Effect.map(Model.validateGenerate(request), (valid) => {
        const model = valid.model ?? defaultModel
        const ctx = ctxOf(model)
        const viaGenerate = usesGenerate(valid)
        return Stream.suspend(() => {
          let outputChars = 0
          const lines = Http.ndjsonLines(
            Http.executeStream(client, post(viaGenerate ? "api/generate" : "api/chat", bodyOf(valid, model, true)), ctx)
          )
          return Http.assemble(
            lines,
            (line) =>
              Effect.flatMap(Http.parseJson(line, ctx), (payload) => {
                if (typeof payload === "object" && payload !== null && "error" in payload) {
                  return Effect.fail(Http.errorFromPayload(payload, ctx))
                }
                const decoded: Effect.Effect<Line, ModelError> = viaGenerate
                  ? Effect.map(decodeGenerateLine(payload, ctx), (l) => ({ ...l, text: l.response }))
                  : Effect.map(decodeChatLine(payload, ctx), (l) => ({ ...l, text: l.message?.content ?? "" }))
                return Effect.map(decoded, (l) => {
                  const parts: Array<Model.StreamPart> = []
                  if (l.text.length > 0) {
                    outputChars += l.text.length
                    parts.push({ _tag: "TextDelta", text: l.text })
                  }
                  if (l.done) {
                    parts.push({
                      _tag: "Finish",
                      finishReason: finishReasonOf(l.done_reason),
                      usage: usageOf(l, valid, outputChars),
                      provider: name,
                      model: l.model ?? model
                    })
                  }
                  return parts
                })
              }),
            () => Effect.fail(Http.endedEarly(ctx))
          )
        })
      })
    ).pipe(Stream.withSpan("Ollama.stream", { attributes: { "gen_ai.system": name } }))

  const embed = Effect.fn("Ollama.embed")(function* (request: Model.EmbedRequest) {
    const valid = yield* Model.validateEmbed(request)
    const model = valid.model ?? embeddingModel
    yield* Effect.annotateCurrentSpan({ "gen_ai.system": name, "gen_ai.request.model": model })
    const ctx = ctxOf(model)
    const answer = yield* Http.executeJson(client, post("api/embed", { model, input: valid.texts }), decodeEmbed, ctx)
    if (answer.embeddings.length !== valid.texts.length) {
      return yield* Effect.fail(
        Http.malformed(ctx, "embeddings", `expected ${valid.texts.length} embeddings, got ${answer.embeddings.length}`)
      )
    }
    return {
      vectors: answer.embeddings,
      usage: answer.prompt_eval_count === undefined ? undefined : Model.usage(answer.prompt_eval_count, 0),
      provider: name,
      model: answer.model ?? model
    } satisfies Model.EmbedResponse
  })

  return { name, defaultModel, generate, stream, embed } satisfies Model.Service
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Model.ModelProvider, never, HttpClient.HttpClient> =>
  Layer.effect(Model.ModelProvider, make(options))

/**
 * Options from the environment: `OLLAMA_HOST` (a URL; default `http://127.0.0.1:11434`),
 * `OLLAMA_MODEL`, `OLLAMA_EMBEDDING_MODEL`, `OLLAMA_API_KEY` (optional).
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  host: Http.optionalString("OLLAMA_HOST"),
  model: Http.optionalString("OLLAMA_MODEL"),
  embeddingModel: Http.optionalString("OLLAMA_EMBEDDING_MODEL"),
  apiKey: Http.optionalRedacted("OLLAMA_API_KEY")
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
