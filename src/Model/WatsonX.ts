/**
 * IBM watsonx.ai over `@effect/platform`'s `HttpClient`: chat (`/ml/v1/text/chat`, streamed
 * by `/ml/v1/text/chat_stream`), text generation (`/ml/v1/text/generation`, streamed by
 * `/ml/v1/text/generation_stream`) and embeddings (`/ml/v1/text/embeddings`).
 *
 * Calls carry an IAM bearer token obtained from the API key. The token is cached until
 * shortly before it expires (by the `Clock`), fetched once however many calls need it at
 * the same moment, and fetched again after a 401 (the call is retried once with it).
 *
 * @since 0.1.0
 */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import {
  Clock,
  Config,
  type ConfigError,
  Deferred,
  Duration,
  Effect,
  Layer,
  Redacted,
  Schema,
  type Scope,
  Stream,
  SynchronizedRef
} from "effect"
import { ModelError } from "../AiError.js"
import * as Http from "../internal/http.js"
import * as Model from "../Model.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** An IBM Cloud API key, exchanged for IAM bearer tokens. */
  readonly apiKey: Redacted.Redacted
  /** The watsonx project the calls run in (give this or `spaceId`). */
  readonly projectId?: string | undefined
  /** A deployment space instead of a project. */
  readonly spaceId?: string | undefined
  /** Regional endpoint. Default `https://us-south.ml.cloud.ibm.com`. */
  readonly url?: string | undefined
  /** Token endpoint. Default `https://iam.cloud.ibm.com/identity/token`. */
  readonly iamUrl?: string | undefined
  /** The API `version` date. Default `2024-05-31`. */
  readonly version?: string | undefined
  /** Default `ibm/granite-3-8b-instruct`. */
  readonly model?: string | undefined
  /** Default `ibm/slate-125m-english-rtrvr-v2`. */
  readonly embeddingModel?: string | undefined
  /**
   * `chat` (default) sends messages to the chat API; `generation` sends one prompt text to
   * the text-generation API (a conversation is flattened into `Role: text` lines).
   */
  readonly api?: "chat" | "generation" | undefined
  /** Refresh the token this long before it expires (at most half its lifetime). Default 60 seconds. */
  readonly refreshMargin?: Duration.DurationInput | undefined
  /**
   * How long one IAM token request may take before it fails with a `ModelError` of reason
   * `Timeout` (the next call then asks again). Default 30 seconds.
   */
  readonly tokenTimeout?: Duration.DurationInput | undefined
  /** Provider name in errors, metrics and provenance. Default `watsonx`. */
  readonly name?: string | undefined
}

const IamToken = Schema.Struct({
  access_token: Schema.String,
  expires_in: Schema.Number,
  expiration: Schema.optional(Schema.Number),
  token_type: Schema.optional(Schema.String)
})

const ChatUsage = Schema.Struct({
  prompt_tokens: Schema.optional(Schema.Number),
  completion_tokens: Schema.optional(Schema.Number),
  total_tokens: Schema.optional(Schema.Number)
})

const ChatAnswer = Schema.Struct({
  model_id: Schema.optional(Schema.String),
  choices: Schema.NonEmptyArray(
    Schema.Struct({
      message: Schema.Struct({ content: Schema.optionalWith(Schema.String, { nullable: true }) }),
      finish_reason: Schema.optionalWith(Schema.String, { nullable: true })
    })
  ),
  usage: Schema.optional(ChatUsage)
})

const ChatChunk = Schema.Struct({
  model_id: Schema.optional(Schema.String),
  choices: Schema.Array(
    Schema.Struct({
      index: Schema.optional(Schema.Number),
      delta: Schema.optional(Schema.Struct({ content: Schema.optionalWith(Schema.String, { nullable: true }) })),
      finish_reason: Schema.optionalWith(Schema.String, { nullable: true })
    })
  ),
  usage: Schema.optional(ChatUsage)
})

const GenerationResult = Schema.Struct({
  generated_text: Schema.String,
  generated_token_count: Schema.optional(Schema.Number),
  input_token_count: Schema.optional(Schema.Number),
  stop_reason: Schema.optional(Schema.String)
})

const GenerationAnswer = Schema.Struct({
  model_id: Schema.optional(Schema.String),
  results: Schema.NonEmptyArray(GenerationResult)
})

const EmbeddingsAnswer = Schema.Struct({
  model_id: Schema.optional(Schema.String),
  results: Schema.Array(Schema.Struct({ embedding: Schema.Array(Schema.Number) })),
  input_token_count: Schema.optional(Schema.Number)
})

const decodeToken = Http.jsonDecoder(IamToken, { quiet: true })
const decodeChat = Http.jsonDecoder(ChatAnswer)
const decodeChatChunk = Http.valueDecoder(ChatChunk)
const decodeGeneration = Http.jsonDecoder(GenerationAnswer)
const decodeGenerationChunk = Http.valueDecoder(GenerationAnswer)
const decodeEmbeddings = Http.jsonDecoder(EmbeddingsAnswer)

/**
 * A watsonx `stop_reason` or chat `finish_reason` as ours.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = (reason: string | undefined): Model.FinishReason => {
  switch (reason) {
    case "stop":
    case "eos_token":
    case "stop_sequence":
      return "stop"
    case "length":
    case "max_tokens":
    case "token_limit":
      return "length"
    case "content_filter":
      return "content_filter"
    case "tool_calls":
      return "tool_calls"
    case "error":
    case "cancelled":
      return "error"
    default:
      return "unknown"
  }
}

interface Token {
  readonly value: Redacted.Redacted
  readonly generation: number
  readonly refreshAt: number
}

type TokenState =
  | { readonly _tag: "Empty"; readonly generation: number }
  | { readonly _tag: "Pending"; readonly generation: number; readonly deferred: Deferred.Deferred<Token, ModelError> }
  | { readonly _tag: "Ready"; readonly token: Token }

const generationOf = (state: TokenState): number => (state._tag === "Ready" ? state.token.generation : state.generation)

/**
 * Builds the provider from an `HttpClient` in context. Token fetches run in the scope of
 * the provider (a caller that is interrupted does not cancel a fetch others wait for).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (options: Options) => Effect.Effect<Model.Service, never, HttpClient.HttpClient | Scope.Scope> =
  Effect.fnUntraced(function* (options: Options) {
    const client = yield* HttpClient.HttpClient
    const scope = yield* Effect.scope
    const name = options.name ?? "watsonx"
    const url = options.url ?? "https://us-south.ml.cloud.ibm.com"
    const iamUrl = options.iamUrl ?? "https://iam.cloud.ibm.com/identity/token"
    const version = options.version ?? "2024-05-31"
    const defaultModel = options.model ?? "ibm/granite-3-8b-instruct"
    const embeddingModel = options.embeddingModel ?? "ibm/slate-125m-english-rtrvr-v2"
    const api = options.api ?? "chat"
    const refreshMargin = Duration.toMillis(Duration.decode(options.refreshMargin ?? "60 seconds"))
    const tokenTimeout = Duration.decode(options.tokenTimeout ?? "30 seconds")
    const iamCtx: Http.CallContext = { provider: `${name} IAM`, secrets: [options.apiKey] }

    // --- IAM token: cached by Clock, single flight, refreshed after a 401 -----------------
    const state = yield* SynchronizedRef.make<TokenState>({ _tag: "Empty", generation: 0 })

    const iamRequest = HttpClientRequest.post(iamUrl).pipe(
      HttpClientRequest.acceptJson,
      HttpClientRequest.bodyUrlParams({
        grant_type: "urn:ibm:params:oauth:grant-type:apikey",
        apikey: Redacted.value(options.apiKey)
      })
    )

    const fetchToken = (generation: number): Effect.Effect<Token, ModelError> =>
      Http.executeJson(client, iamRequest, decodeToken, iamCtx).pipe(
        // IAM answers a bad key with 400 (BXNIM0415E): for us that is a refused key.
        Effect.mapError((error) =>
          error.reason === "InvalidRequest"
            ? new ModelError({ ...errorFields(error), reason: "Unauthorized", message: error.message })
            : error
        ),
        // Every caller waits on this one fetch: a request that never answers must not hold them forever.
        Effect.timeoutFail({
          duration: tokenTimeout,
          onTimeout: () =>
            new ModelError({
              reason: "Timeout",
              provider: iamCtx.provider,
              message: `no IAM token within ${Duration.format(tokenTimeout)}`
            })
        }),
        Effect.flatMap((answer) =>
          Effect.map(Clock.currentTimeMillis, (now) => {
            const lifetime = answer.expires_in * 1000
            return {
              value: Redacted.make(answer.access_token),
              generation,
              refreshAt: now + lifetime - Math.min(refreshMargin, lifetime / 2)
            }
          })
        ),
        Effect.withSpan("WatsonX.iamToken")
      )

    /** The current token; `rejected` names a token generation the server refused (a 401). */
    const token = (rejected?: number): Effect.Effect<Token, ModelError> =>
      Effect.flatten(
        SynchronizedRef.modifyEffect(state, (current) =>
          Effect.gen(function* () {
            if (current._tag === "Pending") return [Deferred.await(current.deferred), current] as const
            if (current._tag === "Ready" && current.token.generation !== rejected) {
              const now = yield* Clock.currentTimeMillis
              if (now < current.token.refreshAt) return [Effect.succeed(current.token), current] as const
            }
            const generation = generationOf(current) + 1
            const deferred = yield* Deferred.make<Token, ModelError>()
            // On any exit (failure, timeout, interruption) the state leaves `Pending`, so the next call asks again.
            yield* fetchToken(generation).pipe(
              Effect.onExit((exit) =>
                Effect.zipRight(
                  SynchronizedRef.set(
                    state,
                    exit._tag === "Success" ? { _tag: "Ready", token: exit.value } : { _tag: "Empty", generation }
                  ),
                  Deferred.done(deferred, exit)
                )
              ),
              Effect.forkIn(scope)
            )
            return [Deferred.await(deferred), { _tag: "Pending", generation, deferred }] as const
          })
        )
      )

    /** Runs `call` with a token; after a 401, once more with a fresh one. */
    const authorized = <A>(
      call: (token: Redacted.Redacted) => Effect.Effect<A, ModelError>
    ): Effect.Effect<A, ModelError> =>
      Effect.flatMap(token(), (first) =>
        Effect.catchIf(
          call(first.value),
          (error) => error.status === 401,
          () => Effect.flatMap(token(first.generation), (fresh) => call(fresh.value))
        )
      )

    // --- requests -------------------------------------------------------------------------
    const scopeFields: Record<string, string> = {}
    if (options.projectId !== undefined) scopeFields["project_id"] = options.projectId
    if (options.spaceId !== undefined) scopeFields["space_id"] = options.spaceId

    const post = (path: string, body: unknown, bearer: Redacted.Redacted, accept = "application/json") =>
      HttpClientRequest.post(Http.joinUrl(url, path)).pipe(
        HttpClientRequest.setUrlParam("version", version),
        HttpClientRequest.bearerToken(bearer),
        HttpClientRequest.setHeader("accept", accept),
        HttpClientRequest.bodyUnsafeJson({ ...(body as Record<string, unknown>), ...scopeFields })
      )

    const ctxOf = (model: string, bearer?: Redacted.Redacted): Http.CallContext => ({
      provider: name,
      model,
      secrets: bearer === undefined ? [options.apiKey] : [options.apiKey, bearer],
      notFoundField: "model"
    })

    const chatBody = (request: Model.GenerateRequest, model: string): Record<string, unknown> => {
      const body: Record<string, unknown> = {
        model_id: model,
        messages: Model.toMessages(request).map((m) =>
          m.role === "user" ? { role: "user", content: [{ type: "text", text: m.content }] } : m
        )
      }
      if (request.maxTokens !== undefined) body["max_tokens"] = request.maxTokens
      if (request.temperature !== undefined) body["temperature"] = request.temperature
      if (request.topP !== undefined) body["top_p"] = request.topP
      if (request.stop !== undefined) body["stop"] = request.stop
      if (request.seed !== undefined) body["seed"] = request.seed
      return body
    }

    const generationBody = (request: Model.GenerateRequest, model: string): Record<string, unknown> => {
      const input =
        request.messages === undefined
          ? `${request.system === undefined ? "" : `${request.system}\n\n`}${request.prompt ?? ""}`
          : Model.toMessages(request)
              .map((m) => `${m.role[0]!.toUpperCase()}${m.role.slice(1)}: ${m.content}`)
              .join("\n\n")
      const parameters: Record<string, unknown> = {
        decoding_method: request.temperature === undefined || request.temperature === 0 ? "greedy" : "sample"
      }
      if (request.maxTokens !== undefined) parameters["max_new_tokens"] = request.maxTokens
      if (request.temperature !== undefined) parameters["temperature"] = request.temperature
      if (request.topP !== undefined) parameters["top_p"] = request.topP
      if (request.stop !== undefined) parameters["stop_sequences"] = request.stop
      if (request.seed !== undefined) parameters["random_seed"] = request.seed
      return { model_id: model, input, parameters }
    }

    const generate = Effect.fn("WatsonX.generate")(function* (request: Model.GenerateRequest) {
      const valid = yield* Model.validateGenerate(request)
      const model = valid.model ?? defaultModel
      yield* Effect.annotateCurrentSpan({ "gen_ai.system": name, "gen_ai.request.model": model })
      const inputEstimate = Http.estimateInput(Model.toMessages(valid))
      if (api === "chat") {
        const answer = yield* authorized((bearer) =>
          Http.executeJson(
            client,
            post("ml/v1/text/chat", chatBody(valid, model), bearer),
            decodeChat,
            ctxOf(model, bearer)
          )
        )
        const choice = answer.choices[0]
        const text = choice.message.content ?? ""
        return {
          text,
          finishReason: finishReasonOf(choice.finish_reason),
          usage: Model.usage(
            answer.usage?.prompt_tokens ?? inputEstimate,
            answer.usage?.completion_tokens ?? Model.estimateTokens(text)
          ),
          provider: name,
          model: answer.model_id ?? model
        } satisfies Model.GenerateResponse
      }
      const answer = yield* authorized((bearer) =>
        Http.executeJson(
          client,
          post("ml/v1/text/generation", generationBody(valid, model), bearer),
          decodeGeneration,
          ctxOf(model, bearer)
        )
      )
      const result = answer.results[0]
      return {
        text: result.generated_text,
        finishReason: finishReasonOf(result.stop_reason),
        usage: Model.usage(
          result.input_token_count ?? inputEstimate,
          result.generated_token_count ?? Model.estimateTokens(result.generated_text)
        ),
        provider: name,
        model: answer.model_id ?? model
      } satisfies Model.GenerateResponse
    })

    const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, ModelError> =>
      Stream.unwrap(
        Effect.map(Model.validateGenerate(request), (valid) => {
          const model = valid.model ?? defaultModel
          const ctx = ctxOf(model)
          const inputEstimate = Http.estimateInput(Model.toMessages(valid))
          return Stream.suspend(() => {
            let finishReason: string | undefined
            let answeredModel: string | undefined
            let inputTokens: number | undefined
            let outputTokens: number | undefined
            let outputChars = 0
            const finish = (): Model.StreamPart => ({
              _tag: "Finish",
              finishReason: finishReasonOf(finishReason),
              usage: Model.usage(inputTokens ?? inputEstimate, outputTokens ?? Math.ceil(outputChars / 4)),
              provider: name,
              model: answeredModel ?? model
            })
            const delta = (text: string | null | undefined): ReadonlyArray<Model.StreamPart> => {
              if (text === undefined || text === null || text.length === 0) return []
              outputChars += text.length
              return [{ _tag: "TextDelta", text }]
            }
            const bytes = Stream.unwrap(
              authorized((bearer) =>
                api === "chat"
                  ? Http.openStream(
                      client,
                      post("ml/v1/text/chat_stream", chatBody(valid, model), bearer, "text/event-stream"),
                      ctxOf(model, bearer)
                    )
                  : Http.openStream(
                      client,
                      post("ml/v1/text/generation_stream", generationBody(valid, model), bearer, "text/event-stream"),
                      ctxOf(model, bearer)
                    )
              )
            )
            return Http.assemble(
              Http.sseEvents(bytes, ctx),
              (event) => {
                if (event.data.trim() === "[DONE]") return Effect.succeed([finish()])
                return Effect.flatMap(Http.parseJson(event.data, ctx), (payload) => {
                  if (
                    event.event === "error" ||
                    (typeof payload === "object" && payload !== null && ("errors" in payload || "error" in payload))
                  ) {
                    return Effect.fail(Http.errorFromPayload(payload, ctx))
                  }
                  if (api === "chat") {
                    return Effect.map(decodeChatChunk(payload, ctx), (chunk) => {
                      if (chunk.model_id !== undefined) answeredModel = chunk.model_id
                      if (chunk.usage?.prompt_tokens !== undefined) inputTokens = chunk.usage.prompt_tokens
                      if (chunk.usage?.completion_tokens !== undefined) outputTokens = chunk.usage.completion_tokens
                      const parts: Array<Model.StreamPart> = []
                      for (const choice of chunk.choices) {
                        if ((choice.index ?? 0) !== 0) continue
                        parts.push(...delta(choice.delta?.content))
                        if (choice.finish_reason !== undefined) finishReason = choice.finish_reason
                      }
                      return parts
                    })
                  }
                  return Effect.map(decodeGenerationChunk(payload, ctx), (chunk) => {
                    if (chunk.model_id !== undefined) answeredModel = chunk.model_id
                    const result = chunk.results[0]
                    if (result.input_token_count !== undefined && result.input_token_count > 0) {
                      inputTokens = result.input_token_count
                    }
                    if (result.generated_token_count !== undefined) outputTokens = result.generated_token_count
                    if (result.stop_reason !== undefined && result.stop_reason !== "not_finished") {
                      finishReason = result.stop_reason
                    }
                    return delta(result.generated_text)
                  })
                })
              },
              () => (finishReason === undefined ? Effect.fail(Http.endedEarly(ctx)) : Effect.succeed([finish()]))
            )
          })
        })
      ).pipe(Stream.withSpan("WatsonX.stream", { attributes: { "gen_ai.system": name } }))

    const embed = Effect.fn("WatsonX.embed")(function* (request: Model.EmbedRequest) {
      const valid = yield* Model.validateEmbed(request)
      const model = valid.model ?? embeddingModel
      yield* Effect.annotateCurrentSpan({ "gen_ai.system": name, "gen_ai.request.model": model })
      const answer = yield* authorized((bearer) =>
        Http.executeJson(
          client,
          post("ml/v1/text/embeddings", { model_id: model, inputs: valid.texts }, bearer),
          decodeEmbeddings,
          ctxOf(model, bearer)
        )
      )
      if (answer.results.length !== valid.texts.length) {
        return yield* Effect.fail(
          Http.malformed(
            ctxOf(model),
            "results",
            `expected ${valid.texts.length} embeddings, got ${answer.results.length}`
          )
        )
      }
      return {
        vectors: answer.results.map((r) => r.embedding),
        usage: answer.input_token_count === undefined ? undefined : Model.usage(answer.input_token_count, 0),
        provider: name,
        model: answer.model_id ?? model
      } satisfies Model.EmbedResponse
    })

    return { name, defaultModel, generate, stream, embed } satisfies Model.Service
  })

const errorFields = (error: ModelError) => ({
  provider: error.provider,
  model: error.model,
  status: error.status,
  retryAfter: error.retryAfter,
  field: error.field
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<Model.ModelProvider, never, HttpClient.HttpClient> =>
  Layer.scoped(Model.ModelProvider, make(options))

/**
 * Options from the environment: `WATSONX_API_KEY` (required), `WATSONX_PROJECT_ID`,
 * `WATSONX_SPACE_ID`, `WATSONX_URL`, `WATSONX_IAM_URL`, `WATSONX_VERSION`, `WATSONX_MODEL`,
 * `WATSONX_EMBEDDING_MODEL`.
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  apiKey: Config.redacted("WATSONX_API_KEY"),
  projectId: Http.optionalString("WATSONX_PROJECT_ID"),
  spaceId: Http.optionalString("WATSONX_SPACE_ID"),
  url: Http.optionalString("WATSONX_URL"),
  iamUrl: Http.optionalString("WATSONX_IAM_URL"),
  version: Http.optionalString("WATSONX_VERSION"),
  model: Http.optionalString("WATSONX_MODEL"),
  embeddingModel: Http.optionalString("WATSONX_EMBEDDING_MODEL")
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
