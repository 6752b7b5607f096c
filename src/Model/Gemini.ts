/**
 * Google Gemini (Generative Language API) over `effect/http`'s `HttpClient`:
 * `generateContent`, `streamGenerateContent` (`?alt=sse`) and `batchEmbedContents`. The
 * key travels in the `x-goog-api-key` header, never in the URL (URLs end up in logs and
 * span attributes). Tools map to `functionDeclarations` (JSON Schema parameters), tool
 * calls to `functionCall` parts and tool results to `functionResponse` parts.
 *
 * @since 0.1.0
 */
import { Config, Effect, Layer, Redacted, Result, Stream } from "effect"
import type { Sse } from "effect/encoding"
import type { HttpClient } from "effect/http"
import { HttpClientRequest } from "effect/http"
import { type AiError, invalidRequest, type ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import * as Model from "../Model.js"
import * as Assemble from "./http/assemble.js"
import * as Client from "./http/client.js"
import * as Decode from "./http/decode.js"
import * as Errors from "./http/errors.js"
import * as Http from "./http/options.js"
import * as Wire from "./gemini/Wire.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options extends Http.Options {
  readonly apiKey: Redacted.Redacted<string>
  /** Default `gemini-2.5-flash`. */
  readonly model?: string | undefined
  /** Default `gemini-embedding-001`. */
  readonly embeddingModel?: string | undefined
  /**
   * Truncates embeddings to this many dimensions (`outputDimensionality`); an answer whose
   * vectors have another length is `Decode` on `embeddings[0]`.
   */
  readonly embeddingDimensions?: number | undefined
  /**
   * Default `https://generativelanguage.googleapis.com`. `http` only on loopback (the key goes
   * there), unless `allowPlainHttpSecrets`.
   */
  readonly baseUrl?: string | undefined
  /** Default `v1beta`; one path segment. */
  readonly apiVersion?: string | undefined
  /** Provider name in errors, metrics and provenance. Default `gemini`. */
  readonly name?: string | undefined
  /**
   * Extra request headers (an `x-goog-api-key` among them is an `OptionError`: the key is
   * `apiKey`). A header that carries a secret takes a `Redacted` value: it is then scrubbed
   * from errors and shown redacted in logs.
   */
  readonly headers?: Http.HeadersOption | undefined
  /** Bounds on requests, checked before any call. Default `Model.defaultRequestLimits`. */
  readonly requestLimits?: Partial<Model.RequestLimits> | undefined
  /**
   * Sends the key over a plain `http` URL off loopback: for a network that is the application's
   * own (a service mesh that encrypts between services, a private link). Default false: such a
   * URL is refused when the provider is built (an `OptionError` naming it and its host).
   *
   * @since 0.3.0
   */
  readonly allowPlainHttpSecrets?: boolean | undefined
}

// One path segment: a query, a fragment or a `..` would take the key elsewhere.
const API_VERSION = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

const EMBED_BATCH = Wire.embedBatch

const decodeAnswer = Decode.valueDecoder(Wire.GenerateContentResponse)
const decodeEmbeddings = Decode.valueDecoder(Wire.BatchEmbedResponse)

// A function response names its call by id: two calls of one id could not both be answered.
const repeatedIdError = (
  ctx: Errors.CallContext,
  calls: ReadonlyArray<Model.ToolCall>,
  [at, first]: readonly [number, number]
) =>
  Errors.malformed(
    ctx,
    "candidates[0].content.parts",
    `the function call id "${calls[at]!.id}" is given twice (first at the answer's call ${first})`
  )

// A call without an id is read with id "": the provider makes one up that no call of the answer has.
const noId = () => ""

const optionKeys = Http.knownKeys<Options>({
  apiKey: true,
  model: true,
  embeddingModel: true,
  embeddingDimensions: true,
  baseUrl: true,
  apiVersion: true,
  name: true,
  headers: true,
  requestLimits: true,
  allowPlainHttpSecrets: true
})

const modelOption = (path: string, input: unknown): Input.Checked<string> =>
  Result.flatMap(Http.nonEmpty(path, input), (model) => {
    const issue = Wire.modelPathIssue(model)
    return issue === undefined ? Result.succeed(model) : Result.fail({ path, message: issue })
  })

const checkOptions = (options: Options) =>
  Input.all([
    Http.settings(options),
    !Redacted.isRedacted(options.apiKey)
      ? Result.fail({ path: "apiKey", message: "expected a Redacted secret (Redacted.make or Config.Redacted)" })
      : // GEMINI_API_KEY set but empty: every call would be refused as an unregistered caller's.
        String(Redacted.value(options.apiKey)).trim().length === 0
        ? Result.fail({ path: "apiKey", message: "expected a non-empty key (is GEMINI_API_KEY set but empty?)" })
        : Result.succeed(options.apiKey),
    Http.nonEmpty("name", Input.orDefault(options.name, "gemini")),
    modelOption("model", Input.orDefault(options.model, "gemini-2.5-flash")),
    modelOption("embeddingModel", Input.orDefault(options.embeddingModel, "gemini-embedding-001")),
    options.embeddingDimensions === undefined
      ? Result.succeed(undefined)
      : // No answer may hold a longer vector: past it, every call would be refused after the round trip.
        Input.positiveInt("embeddingDimensions", options.embeddingDimensions, Decode.maxDimensions),
    Result.flatMap(
      Http.rootUrl("baseUrl", Input.orDefault(options.baseUrl, "https://generativelanguage.googleapis.com")),
      (url) => Http.plainHttpSecrets(url, [["baseUrl", options.apiKey]], options.allowPlainHttpSecrets)
    ),
    Result.flatMap(Http.nonEmpty("apiVersion", Input.orDefault(options.apiVersion, "v1beta")), (version) =>
      API_VERSION.test(version)
        ? Result.succeed(version)
        : Result.fail({
            path: "apiVersion",
            message: `expected one path segment such as "v1beta", got ${Input.shown(version)}`
          })
    ),
    Model.requestLimits(options.requestLimits),
    Http.headers("headers", options.headers),
    Http.headerOption("apiKey", "x-goog-api-key", options.apiKey)
  ])

/**
 * Builds the provider from the `HttpClient` in context. Every option is checked here: a
 * wrong one fails with an `OptionError` naming it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (options: Options) => Effect.Effect<Model.Service, Input.OptionError, HttpClient.HttpClient> =
  Effect.fnUntraced(function* (given: Options) {
    yield* Input.orOptionError(optionKeys(given))
    // Read once: a getter that throws is an OptionError naming its field, not a defect out of the layer.
    const options = (yield* Input.orOptionError(Input.readFields(given))) as unknown as Options
    const [settings, apiKey, name, defaultModel, embeddingModel, dimensions, baseUrl, apiVersion, limits, headerSet] =
      yield* Input.orOptionError(checkOptions(options))
    yield* Input.orOptionError(Http.ownedHeaders("headers", headerSet.given, [["x-goog-api-key", "apiKey"]]))
    const client = yield* Client.make(settings, options.transformClient, ["x-goog-api-key", ...headerSet.secretNames])
    const root = Http.joinUrl(baseUrl, apiVersion)
    const secrets = [apiKey, ...headerSet.secrets]

    const post = (path: string, body: unknown, accept = "application/json") =>
      HttpClientRequest.post(Http.joinUrl(root, path)).pipe(
        HttpClientRequest.setHeaders(headerSet.values),
        HttpClientRequest.setHeader("x-goog-api-key", Redacted.value(apiKey)),
        HttpClientRequest.setHeader("accept", accept),
        HttpClientRequest.bodyJsonUnsafe(body)
      )

    const refusePath = (model: string): Effect.Effect<void, ModelError> => {
      const issue = Wire.modelPathIssue(model)
      return issue === undefined ? Effect.void : Effect.fail(invalidRequest("model", issue, name))
    }

    // Every call names its model in the URL: a 404 with an error body there is an unknown model.
    const ctxOf = (model: string): Errors.CallContext => ({ provider: name, model, secrets, notFoundField: "model" })

    const prepare = Effect.fnUntraced(function* (request: Model.GenerateRequest) {
      const valid = yield* Model.validateGenerate(request, limits)
      const model = valid.model ?? defaultModel
      yield* refusePath(model)
      const body = yield* Effect.fromResult(Wire.requestBody(valid, name))
      return { valid, body, model, ctx: ctxOf(model), inputEstimate: Model.estimateInputTokens(valid) }
    })

    const generate = Client.operation(
      "Gemini.generate",
      Effect.fnUntraced(function* (request: Model.GenerateRequest) {
        const { body, ctx, inputEstimate, model } = yield* prepare(request)
        yield* Effect.annotateCurrentSpan(Client.spanAttributes(name, "chat", model))
        const answer = yield* client.json(post(`${Wire.modelPath(model)}:generateContent`, body), decodeAnswer, ctx)
        if (answer.candidates === undefined || answer.candidates.length === 0) {
          const refused = Wire.blocked(answer, name, model)
          return yield* Effect.fail(refused ?? Errors.malformed(ctx, "candidates", "no candidate"))
        }
        const read = yield* Effect.fromResult(Wire.readAnswer(answer, name, model, noId))
        let n = 0
        const toolCalls =
          read.toolCalls.length === 0 ? read.toolCalls : Assemble.callIds().give(read.toolCalls, () => n++)
        const repeated = Assemble.repeatedId(toolCalls)
        if (repeated !== undefined) return yield* Effect.fail(repeatedIdError(ctx, toolCalls, repeated))
        return {
          text: read.text,
          finishReason: Wire.finalReason(read.finishReason, toolCalls.length > 0),
          usage: Wire.usageOf(
            answer.usageMetadata,
            inputEstimate,
            Math.ceil((read.text.length + Assemble.callChars(toolCalls)) / 4)
          ),
          provider: name,
          model: Decode.answeredModel(answer.modelVersion, model),
          ...(toolCalls.length > 0 ? { toolCalls } : {})
        } satisfies Model.GenerateResponse
      })
    )

    // After a finishReason, the longest wait for the stream to close (a last usage chunk may still come).
    const settledWait = Assemble.settledWait(settings.streamIdleTimeout)

    const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, AiError> =>
      Client.streamOperation(
        "Gemini.stream",
        name,
        Stream.unwrap(
          Effect.map(prepare(request), ({ body, ctx, inputEstimate, model }) => {
            let finishReason: string | undefined
            let metadata: typeof Wire.UsageMetadata.Type | undefined
            let answeredModel: string | undefined
            let outputChars = 0
            let madeIds = 0
            let toolCalls = 0
            // The ids of the stream's calls so far: made at the first call, as most streams carry none.
            let ids: Map<string, number> | undefined
            let callIds: Assemble.CallIds | undefined
            const nextMadeId = () => madeIds++
            const step = (event: Sse.Event): Effect.Effect<ReadonlyArray<Model.StreamPart>, ModelError> => {
              if (event.event === "error") {
                return Effect.fail(Errors.errorFromPayload(Errors.parseJsonOrUndefined(event.data) ?? event.data, ctx))
              }
              const payload = Decode.parseJson(event.data, ctx)
              return Effect.flatMap(payload, (value) => {
                if (Errors.isErrorPayload(value)) return Effect.fail(Errors.errorFromPayload(value, ctx))
                return Effect.flatMap(decodeAnswer(value, ctx), (chunk) => {
                  const read = Wire.readAnswer(chunk, name, model, noId, toolCalls)
                  if (Result.isFailure(read)) return Effect.fail(read.failure)
                  let calls = read.success.toolCalls
                  if (calls.length > 0) {
                    calls = (callIds ??= Assemble.callIds()).give(calls, nextMadeId)
                    ids ??= new Map()
                    const repeated = Assemble.repeatedId(calls, ids, toolCalls)
                    if (repeated !== undefined) return Effect.fail(repeatedIdError(ctx, calls, repeated))
                  }
                  if (chunk.usageMetadata !== undefined) metadata = chunk.usageMetadata
                  if (chunk.modelVersion !== undefined) answeredModel = chunk.modelVersion
                  if (read.success.finishReason !== undefined) finishReason = read.success.finishReason
                  outputChars += read.success.text.length + (calls.length === 0 ? 0 : Assemble.callChars(calls))
                  toolCalls += calls.length
                  const parts: Array<Model.StreamPart> = []
                  if (read.success.text.length > 0) parts.push({ _tag: "TextDelta", text: read.success.text })
                  for (const call of calls) parts.push({ _tag: "ToolCall", call })
                  return Effect.succeed(parts)
                })
              })
            }
            // Gemini's SSE has no terminator: the stream is complete when it ends after a finishReason.
            const onEnd = () =>
              Effect.succeed<ReadonlyArray<Model.StreamPart>>(
                finishReason === undefined
                  ? []
                  : [
                      {
                        _tag: "Finish",
                        finishReason: Wire.finalReason(finishReason, toolCalls > 0),
                        usage: Wire.usageOf(metadata, inputEstimate, Math.ceil(outputChars / 4)),
                        provider: name,
                        model: Decode.answeredModel(answeredModel, model)
                      }
                    ]
              )
            const url = `${Wire.modelPath(model)}:streamGenerateContent?alt=sse`
            return Assemble.assemble(client.sse(post(url, body, "text/event-stream"), ctx), {
              ctx,
              idleTimeout: settings.streamIdleTimeout,
              step,
              onEnd,
              settled: { done: () => finishReason !== undefined, wait: settledWait }
            })
          })
        )
      )

    const embed = Client.operation(
      "Gemini.embed",
      Effect.fnUntraced(function* (request: Model.EmbedRequest) {
        const valid = yield* Model.validateEmbed(request, limits)
        const model = valid.model ?? embeddingModel
        yield* refusePath(model)
        yield* Effect.annotateCurrentSpan(Client.spanAttributes(name, "embeddings", model))
        const ctx = ctxOf(model)
        const batches: Array<ReadonlyArray<string>> = []
        for (let i = 0; i < valid.texts.length; i += EMBED_BATCH) batches.push(valid.texts.slice(i, i + EMBED_BATCH))
        const answers = yield* Effect.forEach(batches, (texts) =>
          Effect.flatMap(
            client.json(
              post(`${Wire.modelPath(model)}:batchEmbedContents`, Wire.embedBody(texts, model, dimensions)),
              decodeEmbeddings,
              ctx
            ),
            (answer) =>
              answer.embeddings.length === texts.length
                ? Effect.succeed(answer.embeddings.map((e) => e.values))
                : Effect.fail(
                    Errors.malformed(
                      ctx,
                      "embeddings",
                      `expected ${texts.length} embeddings, got ${answer.embeddings.length}`
                    )
                  )
          )
        ).pipe(
          // Each batch is bounded by the client; `timeout` bounds the call as a whole too.
          Effect.timeoutOrElse({
            duration: settings.timeout,
            orElse: () => Effect.fail(Errors.requestTimeout(ctx, settings.timeout))
          })
        )
        const vectors = answers.flat()
        const uneven = Errors.unevenVectors(vectors, ctx, "embeddings", EMBED_BATCH)
        if (uneven !== undefined) return yield* Effect.fail(uneven)
        // All of one length now: a model or proxy that ignored `outputDimensionality` shows in the first.
        const unasked = Errors.unaskedDimensions(ctx, "embeddings[0]", vectors[0]!.length, dimensions)
        if (unasked !== undefined) return yield* Effect.fail(unasked)
        return { vectors, provider: name, model } satisfies Model.EmbedResponse
      })
    )

    return { name, defaultModel, generate, stream, embed } satisfies Model.Service
  })

/**
 * Gemini's `finishReason` as ours.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = Wire.finishReasonOf

/**
 * The request body of `generateContent` (see `gemini/Wire.ts`).
 *
 * @since 0.1.0
 * @category utils
 */
export const requestBody = Wire.requestBody

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<Model.ModelProvider, Input.OptionError, HttpClient.HttpClient> =>
  Layer.effect(Model.ModelProvider, make(options))

/**
 * Options from the environment: `GEMINI_API_KEY` (required), `GEMINI_MODEL`,
 * `GEMINI_EMBEDDING_MODEL`, `GEMINI_BASE_URL`.
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  apiKey: Config.Redacted("GEMINI_API_KEY"),
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
  options: Config.Wrap<Options> = config
): Layer.Layer<Model.ModelProvider, Config.ConfigError | Input.OptionError, HttpClient.HttpClient> =>
  Layer.unwrap(Effect.map(Config.unwrap(options), layer))
