/**
 * IBM watsonx.ai over `effect/http`'s `HttpClient`: chat (`/ml/v1/text/chat`, streamed by
 * `/ml/v1/text/chat_stream`), text generation (`/ml/v1/text/generation`, streamed by
 * `/ml/v1/text/generation_stream`) and embeddings (`/ml/v1/text/embeddings`), in a project
 * or a deployment space.
 *
 * Calls carry an IAM bearer token obtained from the API key (see `watsonx/Iam.ts`): cached
 * until shortly before it expires (and used until it expires when that early refresh fails),
 * fetched once however many calls need it at the same moment, fetched again after a 401 (the call is retried once with it), every fetch
 * bounded. Neither the key nor a token appears in any error, whatever path it took
 * (generate, stream, embed, token fetch, a failure of the HTTP client itself).
 *
 * Tools are not mapped: a request with tools is refused (`InvalidRequest`, field `tools`).
 *
 * @since 0.1.0
 */
import { Config, Effect, Layer, Redacted, Result, type Scope, Stream } from "effect"
import type { Sse } from "effect/encoding"
import type { HttpClient } from "effect/http"
import { HttpClientRequest } from "effect/http"
import { type AiError, ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import * as Model from "../Model.js"
import * as Assemble from "./http/assemble.js"
import * as Client from "./http/client.js"
import * as Decode from "./http/decode.js"
import * as Errors from "./http/errors.js"
import * as Http from "./http/options.js"
import * as Iam from "./watsonx/Iam.js"
import * as Wire from "./watsonx/Wire.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options extends Http.Options {
  /** An IBM Cloud API key, exchanged for IAM bearer tokens. */
  readonly apiKey: Redacted.Redacted<string>
  /** The watsonx project the calls run in. Give this or `spaceId`. */
  readonly projectId?: string | undefined
  /** A deployment space instead of a project. */
  readonly spaceId?: string | undefined
  /** Regional endpoint. Default `https://us-south.ml.cloud.ibm.com`. `http` only on loopback (tokens go there), unless `allowPlainHttpSecrets`. */
  readonly url?: string | undefined
  /** Token endpoint. Default `https://iam.cloud.ibm.com/identity/token`. `http` only on loopback (the key goes there), unless `allowPlainHttpSecrets`. */
  readonly iamUrl?: string | undefined
  /** The API `version` date (`YYYY-MM-DD`, a day of the calendar). Default `2024-05-31`. */
  readonly version?: string | undefined
  /** Default `ibm/granite-3-8b-instruct`. */
  readonly model?: string | undefined
  /** Default `ibm/slate-125m-english-rtrvr-v2`. */
  readonly embeddingModel?: string | undefined
  /**
   * `chat` (default) sends messages to the chat API; `generation` sends one prompt text to
   * the text-generation API (a conversation is flattened into `Role: text` paragraphs).
   */
  readonly api?: Wire.Api | undefined
  /** Fetch the token again this long before it expires (at most half its lifetime). Default 60 seconds. */
  readonly refreshMargin?: Input.DurationInput | undefined
  /**
   * How long one IAM token request may take before it fails with a `ModelError` of reason
   * `Timeout` (the next call then asks again). Default 30 seconds.
   */
  readonly tokenTimeout?: Input.DurationInput | undefined
  /** Provider name in errors, metrics and provenance. Default `watsonx`. */
  readonly name?: string | undefined
  /** Bounds on requests, checked before any call. Default `Model.defaultRequestLimits`. */
  readonly requestLimits?: Partial<Model.RequestLimits> | undefined
  /**
   * Sends the key and its tokens over a plain `http` URL off loopback: for a network that is the application's
   * own (a service mesh that encrypts between services, a private link). Default false: such a
   * URL is refused when the provider is built (an `OptionError` naming it (`url` or `iamUrl`) and its host).
   *
   * @since 0.3.0
   */
  readonly allowPlainHttpSecrets?: boolean | undefined
}

const VERSION = /^(\d{4})-(\d{2})-(\d{2})$/

const daysIn = (year: number, month: number): number =>
  month === 2
    ? (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0
      ? 29
      : 28
    : month === 4 || month === 6 || month === 9 || month === 11
      ? 30
      : 31

// A day that is not in the calendar (2024-02-30) is a 400 on every call.
const versionOf = (input: unknown): Input.Checked<string> => {
  const parts = typeof input === "string" ? VERSION.exec(input) : null
  const year = Number(parts?.[1])
  const month = Number(parts?.[2])
  const day = Number(parts?.[3])
  return parts !== null && month >= 1 && month <= 12 && day >= 1 && day <= daysIn(year, month)
    ? Result.succeed(input as string)
    : Result.fail({
        path: "version",
        message: `expected a date such as "2024-05-31", got ${Input.shown(input)}`
      })
}

const EMBED_BATCH = Wire.embedBatch

const optionKeys = Http.knownKeys<Options>({
  apiKey: true,
  projectId: true,
  spaceId: true,
  url: true,
  iamUrl: true,
  version: true,
  model: true,
  embeddingModel: true,
  api: true,
  refreshMargin: true,
  tokenTimeout: true,
  name: true,
  requestLimits: true,
  allowPlainHttpSecrets: true
})

// Never shown: a key read from a file with its newline says so, IAM would refuse it after a call.
const apiKeyOf = (input: unknown): Input.Checked<Redacted.Redacted<string>> => {
  if (!Redacted.isRedacted(input)) {
    return Result.fail({ path: "apiKey", message: "expected a Redacted secret (Redacted.make or Config.Redacted)" })
  }
  const key = Redacted.value(input)
  if (typeof key !== "string" || key.trim().length === 0)
    return Result.fail({ path: "apiKey", message: "expected a non-empty key" })
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it looks for
  if (/[\u0000-\u001f\u007f]/.test(key)) {
    return Result.fail({
      path: "apiKey",
      message: "a key cannot hold control characters (CR, LF, NUL...): a newline read from a file with it?"
    })
  }
  return Result.succeed(input as Redacted.Redacted<string>)
}

const checkOptions = (options: Options) =>
  Input.all([
    Http.settings(options),
    apiKeyOf(options.apiKey),
    (options.projectId === undefined) === (options.spaceId === undefined)
      ? Result.fail({
          path: options.projectId === undefined ? "projectId" : "spaceId",
          message: "give exactly one of projectId and spaceId"
        })
      : options.projectId !== undefined
        ? Result.map(Http.nonEmpty("projectId", options.projectId), (id) => ({ project_id: id }))
        : Result.map(Http.nonEmpty("spaceId", options.spaceId), (id) => ({ space_id: id })),
    Result.flatMap(Http.rootUrl("url", Input.orDefault(options.url, "https://us-south.ml.cloud.ibm.com")), (url) =>
      Http.plainHttpSecrets(url, [["url", options.apiKey]], options.allowPlainHttpSecrets)
    ),
    Result.flatMap(
      Http.baseUrl("iamUrl", Input.orDefault(options.iamUrl, "https://iam.cloud.ibm.com/identity/token")),
      (url) => Http.plainHttpSecrets(url, [["iamUrl", options.apiKey]], options.allowPlainHttpSecrets)
    ),
    versionOf(Input.orDefault(options.version, "2024-05-31")),
    Http.nonEmpty("model", Input.orDefault(options.model, "ibm/granite-3-8b-instruct")),
    Http.nonEmpty("embeddingModel", Input.orDefault(options.embeddingModel, "ibm/slate-125m-english-rtrvr-v2")),
    Input.oneOf("api", Input.orDefault(options.api, "chat"), ["chat", "generation"] as const),
    Input.duration("refreshMargin", Input.orDefault(options.refreshMargin, "60 seconds"), { allowZero: true }),
    Input.duration("tokenTimeout", Input.orDefault(options.tokenTimeout, "30 seconds")),
    Http.nonEmpty("name", Input.orDefault(options.name, "watsonx")),
    Model.requestLimits(options.requestLimits)
  ])

/**
 * The error as it leaves the provider: its message scrubbed of the key and of every token
 * this call used, and no cause that could hold a request. Every path ends here, so a path
 * that forgot a secret in its own context (the stream path once did) still leaks nothing.
 */
const scrubbed = (error: AiError, secrets: ReadonlyArray<Redacted.Redacted>): AiError => {
  if (error._tag !== "ModelError") return error
  const message = Errors.scrub(error.message, secrets)
  if (message === error.message && error.cause === undefined) return error
  return new ModelError({
    reason: error.reason,
    message,
    provider: error.provider,
    model: error.model,
    status: error.status,
    retryAfter: error.retryAfter,
    field: error.field,
    code: error.code
  })
}

/**
 * Builds the provider from the `HttpClient` in context. Every option is checked here (a
 * `OptionError` naming the field). Token fetches run in the scope of the provider: a caller
 * that is interrupted does not cancel a fetch others wait on; closing the scope does.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (
  options: Options
) => Effect.Effect<Model.Service, Input.OptionError, HttpClient.HttpClient | Scope.Scope> = Effect.fnUntraced(
  function* (given: Options) {
    yield* Input.orOptionError(optionKeys(given))
    // Read once: a getter that throws is an OptionError naming its field, not a defect out of the layer.
    const options = (yield* Input.orOptionError(Input.readFields(given))) as unknown as Options
    const [
      settings,
      apiKey,
      scopeFields,
      url,
      iamUrl,
      version,
      defaultModel,
      embeddingModel,
      api,
      margin,
      tokenTimeout,
      name,
      limits
    ] = yield* Input.orOptionError(checkOptions(options))
    const client = yield* Client.make(settings, options.transformClient)

    // The key as sent (form-encoded) too: an IAM error that echoes the request body quotes it so.
    const formEncoded = new URLSearchParams({ k: Redacted.value(apiKey) }).toString().slice(2)
    const iamCtx: Errors.CallContext = {
      provider: `${name} IAM`,
      secrets: formEncoded === Redacted.value(apiKey) ? [apiKey] : [apiKey, Redacted.make(formEncoded)]
    }
    const iamRequest = HttpClientRequest.post(iamUrl).pipe(
      HttpClientRequest.acceptJson,
      HttpClientRequest.bodyUrlParams({
        grant_type: "urn:ibm:params:oauth:grant-type:apikey",
        apikey: Redacted.value(apiKey)
      })
    )
    const decodeToken = Decode.valueDecoder(Wire.IamToken, { quiet: true })
    const tokens = yield* Iam.make({
      fetch: client.json(iamRequest, decodeToken, iamCtx).pipe(
        Effect.map(Wire.issued),
        // IAM answers a refused key with 400 (BXNIM0415E): for us, a refused key.
        Effect.mapError((error) =>
          error._tag === "ModelError"
            ? new ModelError({
                reason: error.reason === "InvalidRequest" ? "Unauthorized" : error.reason,
                // A 2xx body that is not a token may still hold one (or a refresh token), which no scrubbing knows:
                // JSON.parse quotes the text before where it stopped, a body of another type is quoted from its start.
                message:
                  error.reason === "Decode"
                    ? `${name} IAM: the answer is not a token (${error.field ?? "(root)"})`
                    : error.message,
                provider: name,
                field: error.reason === "Decode" ? error.field : undefined,
                status: error.status,
                retryAfter: error.retryAfter,
                code: error.code
              })
            : new ModelError({ reason: "Timeout", message: `${name} IAM: no token within the timeout`, provider: name })
        )
      ),
      refreshMargin: margin,
      timeout: tokenTimeout,
      provider: name
    })

    const post = (path: string, body: Record<string, unknown>, bearer: Redacted.Redacted<string>, accept: string) =>
      HttpClientRequest.post(Http.joinUrl(url, path)).pipe(
        HttpClientRequest.setUrlParam("version", version),
        HttpClientRequest.bearerToken(bearer),
        HttpClientRequest.setHeader("accept", accept),
        HttpClientRequest.bodyJsonUnsafe({ ...body, ...scopeFields })
      )

    const ctxOf = (model: string, secrets: ReadonlyArray<Redacted.Redacted>): Errors.CallContext => ({
      provider: name,
      model,
      secrets,
      notFoundField: "model"
    })

    /** Runs a call with a token; its errors leave scrubbed of the key and of every token it used. */
    const call = <A>(
      model: string,
      run: (bearer: Redacted.Redacted<string>, ctx: Errors.CallContext) => Effect.Effect<A, AiError>
    ): Effect.Effect<A, AiError> =>
      Effect.suspend(() => {
        const secrets: Array<Redacted.Redacted> = [apiKey]
        return tokens
          .authorized((bearer) => {
            secrets.push(bearer)
            return run(bearer, ctxOf(model, secrets))
          })
          .pipe(
            // `timeout` bounds the whole call: token, first attempt and the retry after a 401.
            Effect.timeoutOrElse({
              duration: settings.timeout,
              orElse: () => Effect.fail(Errors.requestTimeout(ctxOf(model, secrets), settings.timeout))
            }),
            Effect.mapError((error) => scrubbed(error, secrets))
          )
      })

    const prepare = Effect.fnUntraced(function* (request: Model.GenerateRequest) {
      const valid = yield* Model.validateGenerate(request, limits)
      const refused = Wire.unsupported(valid, api, name)
      if (refused !== undefined) return yield* Effect.fail(refused)
      const model = valid.model ?? defaultModel
      const body = api === "chat" ? Wire.chatBody(valid, model) : Wire.generationBody(valid, model)
      return { body, model, inputEstimate: Model.estimateInputTokens(valid) }
    })

    const decodeChat = Decode.valueDecoder(Wire.ChatAnswer)
    const decodeGeneration = Decode.valueDecoder(Wire.GenerationAnswer)
    const decodeChatChunk = Decode.valueDecoder(Wire.ChatChunk)
    const decodeEmbeddings = Decode.valueDecoder(Wire.EmbeddingsAnswer)

    const generate = Client.operation(
      "WatsonX.generate",
      Effect.fnUntraced(function* (request: Model.GenerateRequest) {
        const { body, inputEstimate, model } = yield* prepare(request)
        yield* Effect.annotateCurrentSpan(Client.spanAttributes(name, "chat", model))
        if (api === "chat") {
          const answer = yield* call(model, (bearer, ctx) =>
            Effect.flatMap(
              client.json(post("ml/v1/text/chat", body, bearer, "application/json"), decodeChat, ctx),
              (answer) => {
                // Choice 0 is the answer wherever it sits; unnumbered, by position.
                const choice = answer.choices.find((c, i) => (c.index ?? i) === 0)
                return choice === undefined
                  ? Effect.fail(Errors.malformed(ctx, "choices", "no choice with index 0"))
                  : choice.finish_reason === "tool_calls"
                    ? Effect.fail(Errors.malformed(ctx, "choices[0].message.tool_calls", noToolCalls))
                    : Effect.succeed({ ...answer, choices: [choice] as const })
              }
            )
          )
          return Wire.chatResponse(answer, name, model, inputEstimate)
        }
        const answer = yield* call(model, (bearer, ctx) =>
          client.json(post("ml/v1/text/generation", body, bearer, "application/json"), decodeGeneration, ctx)
        )
        return Wire.generationResponse(answer, name, model, inputEstimate)
      })
    )

    const settledWait = Assemble.settledWait(settings.streamIdleTimeout)

    const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, AiError> =>
      Client.streamOperation(
        "WatsonX.stream",
        name,
        Stream.unwrap(
          Effect.map(prepare(request), ({ body, inputEstimate, model }) => {
            const secrets: Array<Redacted.Redacted> = [apiKey]
            const ctx = ctxOf(model, secrets)
            const state = Wire.streamState(name, model, inputEstimate)
            const path = api === "chat" ? "ml/v1/text/chat_stream" : "ml/v1/text/generation_stream"
            const events = tokens.authorizedStream((bearer) => {
              secrets.push(bearer)
              return client.sse(post(path, body, bearer, "text/event-stream"), ctx)
            })
            const end = Effect.suspend(() =>
              state.noChoiceZero()
                ? Effect.fail(Errors.malformed(ctx, "choices", "no choice with index 0"))
                : Effect.succeed([state.finish()])
            )
            const chatChunk = (
              value: typeof Wire.ChatChunk.Type
            ): Effect.Effect<ReadonlyArray<Model.StreamPart>, ModelError> =>
              value.choices.some((choice) => (choice.index ?? 0) === 0 && choice.finish_reason === "tool_calls")
                ? Effect.fail(Errors.malformed(ctx, "choices[0].delta.tool_calls", noToolCalls))
                : Effect.succeed(state.chat(value))
            const chunk = (value: unknown): Effect.Effect<ReadonlyArray<Model.StreamPart>, ModelError> => {
              if (Errors.isErrorPayload(value) || hasErrors(value)) {
                return Effect.fail(Errors.errorFromPayload(value, ctx))
              }
              return api === "chat"
                ? Effect.flatMap(decodeChatChunk(value, ctx), chatChunk)
                : Effect.map(decodeGeneration(value, ctx), state.generation)
            }
            const step = (event: Sse.Event): Effect.Effect<ReadonlyArray<Model.StreamPart>, ModelError> => {
              if (event.data.trim() === "[DONE]") return end
              if (event.event === "error") {
                return Effect.fail(Errors.errorFromPayload(Errors.parseJsonOrUndefined(event.data) ?? event.data, ctx))
              }
              // watsonx's terminator, as [DONE] is OpenAI's: its data is `{}`, or a last chunk (the usage) to read first.
              if (event.event === "close") {
                const value = Errors.parseJsonOrUndefined(event.data)
                return isChunk(value)
                  ? Effect.flatMap(chunk(value), (parts) => Effect.map(end, (last) => [...parts, ...last]))
                  : end
              }
              return Effect.flatMap(Decode.parseJson(event.data, ctx), chunk)
            }
            return Assemble.assemble(events, {
              ctx,
              idleTimeout: settings.streamIdleTimeout,
              step,
              onEnd: () => Effect.succeed(state.finished() ? [state.finish()] : []),
              // The answer is whole at its finish reason: only a usage event and `[DONE]` may follow.
              settled: { done: state.finished, wait: settledWait }
            }).pipe(Stream.mapError((error) => scrubbed(error, secrets)))
          })
        )
      )

    const embed = Client.operation(
      "WatsonX.embed",
      Effect.fnUntraced(function* (request: Model.EmbedRequest) {
        const valid = yield* Model.validateEmbed(request, limits)
        const model = valid.model ?? embeddingModel
        yield* Effect.annotateCurrentSpan(Client.spanAttributes(name, "embeddings", model))
        const batches: Array<ReadonlyArray<string>> = []
        for (let i = 0; i < valid.texts.length; i += EMBED_BATCH) batches.push(valid.texts.slice(i, i + EMBED_BATCH))
        const embedBatch = (texts: ReadonlyArray<string>) =>
          call(model, (bearer, ctx) =>
            Effect.flatMap(
              client.json(
                post("ml/v1/text/embeddings", { model_id: model, inputs: texts }, bearer, "application/json"),
                decodeEmbeddings,
                ctx
              ),
              (answer) =>
                answer.results.length === texts.length
                  ? Effect.succeed(answer)
                  : Effect.fail(
                      Errors.malformed(
                        ctx,
                        "results",
                        `expected ${texts.length} embeddings, got ${answer.results.length}`
                      )
                    )
            )
          )
        const answers = yield* Effect.forEach(batches, embedBatch).pipe(
          // Each batch is bounded by `timeout`; the call as a whole too.
          Effect.timeoutOrElse({
            duration: settings.timeout,
            orElse: () => Effect.fail(Errors.requestTimeout(ctxOf(model, []), settings.timeout))
          })
        )
        // Counted only when every batch was: a sum of some is an undercount taken for the whole.
        let inputTokens: number | undefined = 0
        for (const answer of answers) {
          const counted = Decode.tokenCount(answer.input_token_count)
          inputTokens = counted === undefined || inputTokens === undefined ? undefined : inputTokens + counted
        }
        const vectors = answers.flatMap((answer) => answer.results.map((r) => r.embedding))
        const uneven = Errors.unevenVectors(vectors, ctxOf(model, []), "results", EMBED_BATCH)
        if (uneven !== undefined) return yield* Effect.fail(uneven)
        return {
          vectors,
          ...(inputTokens === undefined ? {} : { usage: Model.usage(inputTokens, 0) }),
          provider: name,
          model: Decode.answeredModel(answers[0]?.model_id, model)
        } satisfies Model.EmbedResponse
      })
    )

    return { name, defaultModel, generate, stream, embed } satisfies Model.Service
  }
)

// Tools are refused here and an answer's calls are not read: a turn that says it ended in calls leaves nothing to run.
const noToolCalls =
  "the finish reason is tool_calls, but watsonx answers here carry no tool call (tools are not mapped)"

/** Does a `close` event's data carry anything to read: a chunk, or an error? */
const isChunk = (value: unknown): boolean =>
  typeof value === "object" &&
  value !== null &&
  ("choices" in value || "results" in value || "errors" in value || "error" in value)

/** watsonx sends errors inside a stream as `{"errors": [...], "status_code": n}`. */
const hasErrors = (value: unknown): boolean =>
  typeof value === "object" && value !== null && Array.isArray((value as { readonly errors?: unknown }).errors)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<Model.ModelProvider, Input.OptionError, HttpClient.HttpClient> =>
  Layer.effect(Model.ModelProvider, make(options))

/**
 * Options from the environment: `WATSONX_API_KEY` (required), `WATSONX_PROJECT_ID` or
 * `WATSONX_SPACE_ID`, `WATSONX_URL`, `WATSONX_IAM_URL`, `WATSONX_VERSION`, `WATSONX_MODEL`,
 * `WATSONX_EMBEDDING_MODEL`.
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  apiKey: Config.Redacted("WATSONX_API_KEY"),
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
  options: Config.Wrap<Options> = config
): Layer.Layer<Model.ModelProvider, Config.ConfigError | Input.OptionError, HttpClient.HttpClient> =>
  Layer.unwrap(Effect.map(Config.unwrap(options), layer))

/**
 * A watsonx `stop_reason` or chat `finish_reason` as ours.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = Wire.finishReasonOf
