/**
 * OpenAI-compatible chat completions and embeddings over `effect/http`'s `HttpClient`: one
 * layer for OpenAI, Ollama's `/v1`, vLLM, LM Studio and llama.cpp's server (set `baseUrl`).
 * Streams are SSE with `stream_options.include_usage`; tool calls, tool choice and response
 * formats pass through; embeddings are put back in input order by their `index`, as floats or
 * decoded from base64.
 *
 * The layer needs an `HttpClient` (`NodeHttpClient.layerUndici` from `@effect/platform-node`,
 * or `FetchHttpClient.layer`). Every call is bounded (`timeout`), every stream has an idle
 * deadline (`streamIdleTimeout`), every body a size bound (`maxResponseBytes`).
 *
 * @since 0.1.0
 */
import { Config, Effect, Layer, type Redacted, Result, Stream } from "effect"
import type { HttpClient } from "effect/http"
import { HttpClientRequest } from "effect/http"
import type { AiError } from "../AiError.js"
import * as Input from "../Input.js"
import * as Model from "../Model.js"
import * as Assemble from "./http/assemble.js"
import * as Client from "./http/client.js"
import * as Decode from "./http/decode.js"
import * as Errors from "./http/errors.js"
import * as Http from "./http/options.js"
import * as Wire from "./http/openAiWire.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options extends Http.Options {
  /** Base URL including the version prefix. Default `https://api.openai.com/v1`. */
  readonly baseUrl?: string | undefined
  /** Sent as `Authorization: Bearer ...`; omit for local servers that need none. */
  readonly apiKey?: Redacted.Redacted<string> | undefined
  /** Sent as `OpenAI-Organization`. Not empty or blank: leave it out to send none. */
  readonly organization?: string | undefined
  /** Sent as `OpenAI-Project`. Not empty or blank: leave it out to send none. */
  readonly project?: string | undefined
  /** Default chat model. Default `gpt-4o-mini`. */
  readonly model?: string | undefined
  /** Default embedding model. Default `text-embedding-3-small`. */
  readonly embeddingModel?: string | undefined
  /** Provider name in errors, metrics and provenance. Default `openai`. */
  readonly name?: string | undefined
  /** Ask for a final usage chunk when streaming (`stream_options.include_usage`). Default true; some older servers reject it. */
  readonly streamUsage?: boolean | undefined
  /**
   * Extra headers on every request. A header that carries a secret takes a `Redacted` value: it
   * is then scrubbed from errors and shown redacted when middleware logs a request.
   */
  readonly headers?: Http.HeadersOption | undefined
  /**
   * How embeddings travel: `float` (JSON numbers, the default) or `base64` (little-endian
   * float32, a quarter of the size). Either answer is accepted whatever was asked.
   *
   * @since 0.2.0
   */
  readonly embeddingEncoding?: "float" | "base64" | undefined
  /**
   * The length of the vectors asked for, sent as `dimensions` (OpenAI's `text-embedding-3`
   * models shorten their vectors to it; older models and many servers refuse it). A positive
   * integer; an answer whose vectors have another length is `Decode` on `data[i].embedding`.
   * Default: none sent, the model's own length.
   *
   * @since 0.3.0
   */
  readonly embeddingDimensions?: number | undefined
  /**
   * The request field that carries `maxTokens`: `max_tokens` (default, what compatible
   * servers read) or `max_completion_tokens` (what OpenAI's reasoning models require).
   *
   * @since 0.2.0
   */
  readonly maxTokensField?: "max_tokens" | "max_completion_tokens" | undefined
  /**
   * Bounds on requests (`maxInputChars`, `maxMessages`, `maxEmbedTexts`, positive integers),
   * checked before any call; a misspelt key is an `OptionError`. Default `Model.defaultRequestLimits`.
   *
   * @since 0.3.0
   */
  readonly requestLimits?: Partial<Model.RequestLimits> | undefined
  /**
   * Send a tool call's `signature` (Gemini's thought signature) back as
   * `tool_calls[i].extra_content.google.thought_signature`, as Gemini's OpenAI-compatible API
   * requires. Default true only when `baseUrl` is on `generativelanguage.googleapis.com`: other
   * servers (OpenAI, a fallback given a conversation Gemini started) get the calls without it,
   * since they may refuse a field they do not know. Signatures are read from answers either way.
   *
   * @since 0.3.0
   */
  readonly sendThoughtSignatures?: boolean | undefined
  /**
   * Sends the key (and `Redacted` headers) over a plain `http` URL off loopback: for a network
   * that is the application's own (a service mesh that encrypts between services, a private
   * link). Default false: such a provider is refused when built (an `OptionError` naming the
   * secret's option and the host), since the key would travel in clear text. `http` on loopback
   * (127.0.0.0/8, `::1`, `localhost`, `0.0.0.0`) and `https` need nothing.
   *
   * @since 0.3.0
   */
  readonly allowPlainHttpSecrets?: boolean | undefined
}

/**
 * An OpenAI `finish_reason` as ours.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = (reason: string | null | undefined): Model.FinishReason => {
  switch (reason) {
    case "stop":
    case "eos":
      return "stop"
    case "length":
    // Mistral: the model's context window filled before max_tokens; cut all the same.
    case "model_length":
      return "length"
    case "content_filter":
      return "content_filter"
    case "tool_calls":
    case "function_call":
      return "tool_calls"
    // OpenRouter ends an answer its upstream failed this way: the gateway answers it as an error.
    case "error":
      return "error"
    default:
      return "unknown"
  }
}

const noToolCalls = "the finish reason is tool_calls, but the answer carries no tool call"

const callPartChars = (parts: ReadonlyArray<Model.StreamPart>): number => {
  let chars = 0
  for (const part of parts) if (part._tag === "ToolCall") chars += part.call.name.length + part.call.arguments.length
  return chars
}

const EMBED_BATCH = Wire.embedBatch

// Gemini's OpenAI-compatible endpoint: the one server known to want thought signatures back.
const googleOpenAiHost = "generativelanguage.googleapis.com"
// OpenAI's own API (and Azure's) takes at most 4 stop sequences; servers of its protocol (vLLM, llama.cpp) take more.
const isOpenAiHost = (host: string): boolean => host === "api.openai.com" || host.endsWith(".openai.azure.com")
const openAiMaxStop = 4

const decodeCompletion = Decode.valueDecoder(Wire.ChatCompletion, { accept: Wire.isChatCompletion })
const decodeChunk = Decode.resultDecoder(Wire.ChatChunk, { accept: Wire.isChatChunk })
const decodeEmbeddings = Decode.valueDecoder(Wire.Embeddings)

const optionKeys = Http.knownKeys<Options>({
  baseUrl: true,
  apiKey: true,
  organization: true,
  project: true,
  model: true,
  embeddingModel: true,
  name: true,
  streamUsage: true,
  headers: true,
  embeddingEncoding: true,
  embeddingDimensions: true,
  maxTokensField: true,
  requestLimits: true,
  sendThoughtSignatures: true,
  allowPlainHttpSecrets: true
})

// `describe`s the value: a BigInt or a cycle in the message would throw out of the check.
const notBoolean = (options: Options): Input.Checked<void> => {
  const issue = Input.notABoolean(options, ["streamUsage", "sendThoughtSignatures"])
  return issue === undefined ? Result.succeed(undefined) : Result.fail(issue)
}

const checkOptions = (options: Options) =>
  Input.all([
    Http.settings(options),
    Http.rootUrl("baseUrl", Input.orDefault(options.baseUrl, "https://api.openai.com/v1")),
    Http.nonEmpty("name", Input.orDefault(options.name, "openai")),
    Http.nonEmpty("model", Input.orDefault(options.model, "gpt-4o-mini")),
    Http.nonEmpty("embeddingModel", Input.orDefault(options.embeddingModel, "text-embedding-3-small")),
    Input.oneOf("embeddingEncoding", Input.orDefault(options.embeddingEncoding, "float"), ["float", "base64"]),
    // No answer may hold a longer vector: past it, every call would be refused after the round trip.
    Input.optional(options.embeddingDimensions, (d) =>
      Input.positiveInt("embeddingDimensions", d, Decode.maxDimensions)
    ),
    Input.oneOf("maxTokensField", Input.orDefault(options.maxTokensField, "max_tokens"), [
      "max_tokens",
      "max_completion_tokens"
    ]),
    Http.headers("headers", options.headers),
    Model.requestLimits(options.requestLimits),
    Http.nonBlankHeaderOption("organization", "OPENAI_ORG_ID", "OpenAI-Organization", options.organization),
    Http.nonBlankHeaderOption("project", "OPENAI_PROJECT_ID", "OpenAI-Project", options.project),
    Http.optionalBearerKey("apiKey", "OPENAI_API_KEY", options.apiKey),
    notBoolean(options)
  ])

/**
 * Builds the provider from an `HttpClient` in context. Options are checked here: a bad one
 * fails with an `OptionError` naming it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (given: Options = {}) {
  yield* Input.orOptionError(optionKeys(given))
  // Read once: a getter that throws is an OptionError naming its field, not a defect out of the layer.
  const options = (yield* Input.orOptionError(Input.readFields(given))) as Options
  const [
    settings,
    baseUrl,
    name,
    defaultModel,
    embeddingModel,
    embeddingEncoding,
    embeddingDimensions,
    maxTokensField,
    headerSet,
    limits
  ] = yield* Input.orOptionError(checkOptions(options))
  yield* Input.orOptionError(
    Http.ownedHeaders("headers", headerSet.given, [
      ...(options.apiKey === undefined ? [] : [["authorization", "apiKey"] as const]),
      ...(options.organization === undefined ? [] : [["openai-organization", "organization"] as const]),
      ...(options.project === undefined ? [] : [["openai-project", "project"] as const])
    ])
  )
  yield* Input.orOptionError(
    Http.plainHttpSecrets(
      baseUrl,
      [["apiKey", options.apiKey], ...Http.secretHeaders(headerSet.given)],
      options.allowPlainHttpSecrets
    )
  )
  const client = yield* Client.make(settings, options.transformClient, headerSet.secretNames)
  const apiKey = options.apiKey
  const secrets = apiKey === undefined ? headerSet.secrets : [apiKey, ...headerSet.secrets]
  const streamUsage = Input.orDefault(options.streamUsage, true)
  const host = new URL(baseUrl).hostname
  const sendSignatures = options.sendThoughtSignatures ?? host === googleOpenAiHost
  const maxStopSequences = isOpenAiHost(host) ? openAiMaxStop : undefined
  // OpenAI answers tool turns out of its order with a 400; servers of its protocol (vLLM, llama.cpp) take them.
  const toolTurnsInOrder = isOpenAiHost(host)

  const headers: Record<string, string> = { ...headerSet.values }
  if (options.organization !== undefined) headers["OpenAI-Organization"] = options.organization
  if (options.project !== undefined) headers["OpenAI-Project"] = options.project

  const post = (path: string, body: unknown, accept: string): HttpClientRequest.HttpClientRequest => {
    const request = HttpClientRequest.post(Http.joinUrl(baseUrl, path)).pipe(
      HttpClientRequest.setHeaders(headers),
      HttpClientRequest.setHeader("accept", accept),
      HttpClientRequest.bodyJsonUnsafe(body)
    )
    return apiKey === undefined ? request : HttpClientRequest.bearerToken(request, apiKey)
  }

  // Ollama's /v1, vLLM and LM Studio answer an unknown model with a 404 and an error body, without OpenAI's code.
  const ctxOf = (model: string): Errors.CallContext => ({ provider: name, model, secrets, notFoundField: "model" })

  const prepare = (request: Model.GenerateRequest, stream: boolean) =>
    Effect.flatMap(Model.validateGenerate(request, limits), (valid) => {
      const model = valid.model ?? defaultModel
      return Effect.map(
        Wire.chatBody(valid, {
          model,
          stream,
          streamUsage,
          maxTokensField,
          provider: name,
          sendSignatures,
          maxStopSequences,
          toolTurnsInOrder
        }),
        (body) => ({ valid, model, body, ctx: ctxOf(model) })
      )
    })

  const generate = Client.operation(
    "OpenAiCompat.generate",
    Effect.fnUntraced(function* (request: Model.GenerateRequest) {
      const { valid, model, body, ctx } = yield* prepare(request, false)
      yield* Effect.annotateCurrentSpan(Client.spanAttributes(name, "chat", model))
      const answer = yield* client.json(post("chat/completions", body, "application/json"), decodeCompletion, ctx)
      // Choice 0 is the answer wherever it sits (a server answering several, or out of order); unnumbered, by position.
      const choice = answer.choices.find((c, i) => (c.index ?? i) === 0)
      if (choice === undefined) {
        return yield* Effect.fail(Errors.malformed(ctx, "choices", "no choice with index 0"))
      }
      const text = Wire.contentText(choice.message.content)
      const refusal = choice.message.refusal ?? ""
      const wireCalls = (choice.message.tool_calls ?? []).map((call): Model.ToolCall => {
        const signature = Wire.signatureOf(call.extra_content)
        return {
          // An empty id is none, as in a stream: calls of id "" could not be told apart by their results.
          id: call.id || "",
          name: call.function.name,
          arguments: Assemble.argumentsOrEmpty(Wire.argumentsText(call.function.arguments)),
          ...(signature === undefined ? {} : { signature })
        }
      })
      const toolCalls = wireCalls.length === 0 ? wireCalls : Assemble.callIds().give(wireCalls, (i) => i)
      const repeated = Assemble.repeatedId(toolCalls)
      if (repeated !== undefined) {
        const [at, first] = repeated
        return yield* Effect.fail(
          Errors.malformed(
            ctx,
            `choices[0].message.tool_calls[${at}].id`,
            `the id "${toolCalls[at]!.id}" is given twice (first at tool_calls[${first}])`
          )
        )
      }
      const finishReason = finishReasonOf(choice.finish_reason)
      // A turn that says it ended in tool calls but carries none leaves the caller nothing to run.
      if (finishReason === "tool_calls" && toolCalls.length === 0) {
        return yield* Effect.fail(Errors.malformed(ctx, "choices[0].message.tool_calls", noToolCalls))
      }
      const response: Model.GenerateResponse = {
        text,
        finishReason: Assemble.withToolCalls(finishReason, toolCalls.length),
        usage: Wire.usageOf(
          answer.usage,
          Model.estimateInputTokens(valid),
          Math.ceil((text.length + refusal.length + Assemble.callChars(toolCalls)) / 4)
        ),
        provider: name,
        model: Decode.answeredModel(answer.model, model),
        ...(toolCalls.length > 0 ? { toolCalls } : {}),
        ...(refusal.length > 0 ? { refusal } : {})
      }
      return response
    })
  )

  // After the finish reason, the longest wait for the usage chunk (`include_usage`): then usage is estimated.
  const settledWait = Assemble.settledWait(settings.streamIdleTimeout)

  const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, AiError> =>
    Client.streamOperation(
      "OpenAiCompat.stream",
      name,
      Stream.unwrap(
        Effect.map(prepare(request, true), ({ valid, model, body, ctx }) =>
          Stream.suspend(() => {
            let finishReason: Model.FinishReason | undefined
            let usage: Wire.UsageWire | null | undefined
            let answeredModel: string | undefined
            let outputChars = 0
            let refusal = ""
            // Choices numbered otherwise but never 0: no answer, as `generate` reads it, not an empty one.
            let sawChoice = false
            let sawOther = false
            const calls = Assemble.toolCallAssembler()
            const finish = Effect.suspend(() =>
              !sawChoice && sawOther
                ? Effect.fail(Errors.malformed(ctx, "choices", "no choice with index 0"))
                : finishReason === "tool_calls" && calls.size() === 0
                  ? Effect.fail(Errors.malformed(ctx, "choices[0].delta.tool_calls", noToolCalls))
                  : Effect.map(
                      calls.parts(ctx),
                      (toolParts): ReadonlyArray<Model.StreamPart> => [
                        ...toolParts,
                        {
                          _tag: "Finish",
                          finishReason: Assemble.withToolCalls(finishReason ?? "unknown", calls.size()),
                          usage: Wire.usageOf(
                            usage,
                            Model.estimateInputTokens(valid),
                            Math.ceil((outputChars + callPartChars(toolParts)) / 4)
                          ),
                          provider: name,
                          model: Decode.answeredModel(answeredModel, model),
                          ...(refusal.length > 0 ? { refusal } : {})
                        }
                      ]
                    )
            )
            const step = (event: { readonly event: string; readonly data: string }) => {
              if (event.data.trim() === "[DONE]") return finish
              if (event.event === "error") {
                return Effect.fail(Errors.errorFromPayload(Errors.parseJsonOrUndefined(event.data) ?? event.data, ctx))
              }
              return Effect.flatMap(Decode.parseJson(event.data, ctx), (payload) => {
                if (Errors.isErrorPayload(payload)) return Effect.fail(Errors.errorFromPayload(payload, ctx))
                const decoded = decodeChunk(payload, ctx)
                if (Result.isFailure(decoded)) return Effect.fail(decoded.failure)
                const chunk = decoded.success
                if (chunk.model !== undefined && chunk.model !== null) answeredModel = chunk.model
                if (chunk.usage !== undefined && chunk.usage !== null) usage = chunk.usage
                const choices = chunk.choices
                if (choices === undefined || choices === null) {
                  // A usage chunk may leave `choices` out; a chunk with neither is no chunk of an answer.
                  return chunk.usage !== undefined && chunk.usage !== null
                    ? Effect.succeed([])
                    : Effect.fail(Errors.malformed(ctx, "choices", "a chunk with neither choices nor usage"))
                }
                const parts: Array<Model.StreamPart> = []
                for (let i = 0; i < choices.length; i++) {
                  const choice = choices[i]!
                  if ((choice.index ?? 0) !== 0) {
                    sawOther = true
                    continue
                  }
                  sawChoice = true
                  const content = choice.delta?.content
                  const text = typeof content === "string" ? content : Wire.contentText(content)
                  if (typeof text === "string" && text.length > 0) {
                    outputChars += text.length
                    parts.push({ _tag: "TextDelta", text })
                  }
                  const refused = choice.delta?.refusal
                  if (typeof refused === "string" && refused.length > 0) {
                    outputChars += refused.length
                    refusal += refused
                  }
                  const deltas = choice.delta?.tool_calls
                  for (let j = 0; deltas !== undefined && deltas !== null && j < deltas.length; j++) {
                    const delta = deltas[j]!
                    const issue = calls.add({
                      index: delta.index,
                      id: delta.id,
                      name: delta.function?.name,
                      arguments: Wire.argumentsText(delta.function?.arguments),
                      signature: Wire.signatureOf(delta.extra_content)
                    })
                    if (issue !== undefined) {
                      const at = `choices[${i}].delta.tool_calls[${j}]`
                      return Effect.fail(
                        Errors.malformed(ctx, typeof delta.index === "number" ? `${at}.index` : at, issue)
                      )
                    }
                  }
                  // "" (sent by some servers on every chunk before the last) is no reason: a cut stream is no answer.
                  const reason = choice.finish_reason
                  if (typeof reason === "string" && reason.length > 0) finishReason = finishReasonOf(reason)
                }
                return Effect.succeed(parts)
              })
            }
            return Assemble.assemble(client.sse(post("chat/completions", body, "text/event-stream"), ctx), {
              ctx,
              idleTimeout: settings.streamIdleTimeout,
              step,
              // Without `[DONE]`, a server that sent its finish reason has finished; otherwise the stream broke off.
              onEnd: () => (finishReason === undefined ? Effect.succeed([]) : finish),
              // The answer is whole at its finish reason: only the usage chunk and `[DONE]` may follow.
              settled: { done: () => finishReason !== undefined, wait: settledWait }
            })
          })
        )
      )
    )

  const embedBody = (model: string, texts: ReadonlyArray<string>) =>
    embeddingDimensions === undefined
      ? { model, input: texts, encoding_format: embeddingEncoding }
      : { model, input: texts, encoding_format: embeddingEncoding, dimensions: embeddingDimensions }

  const embed = Client.operation(
    "OpenAiCompat.embed",
    Effect.fnUntraced(function* (request: Model.EmbedRequest) {
      const valid = yield* Model.validateEmbed(request, limits)
      const model = valid.model ?? embeddingModel
      yield* Effect.annotateCurrentSpan(Client.spanAttributes(name, "embeddings", model))
      const ctx = ctxOf(model)
      const batches: Array<ReadonlyArray<string>> = []
      for (let i = 0; i < valid.texts.length; i += EMBED_BATCH) batches.push(valid.texts.slice(i, i + EMBED_BATCH))
      const answers = yield* Effect.forEach(batches, (texts) =>
        Effect.flatMap(
          client.json(post("embeddings", embedBody(model, texts), "application/json"), decodeEmbeddings, ctx),
          (answer) =>
            Effect.map(Wire.vectorsByIndex(answer.data, texts.length, ctx, embeddingDimensions), (vectors) => ({
              answer,
              vectors
            }))
        )
      ).pipe(
        // Each batch is bounded by the client; `timeout` bounds the call as a whole too.
        Effect.timeoutOrElse({
          duration: settings.timeout,
          orElse: () => Effect.fail(Errors.requestTimeout(ctx, settings.timeout))
        })
      )
      const vectors = answers.length === 1 ? answers[0]!.vectors : answers.flatMap((a) => a.vectors)
      const uneven = answers.length === 1 ? undefined : Errors.unevenVectors(vectors, ctx, "data", EMBED_BATCH)
      if (uneven !== undefined) return yield* Effect.fail(uneven)
      let inputTokens: number | undefined = 0
      for (const { answer } of answers) {
        const usage = Wire.embedUsageOf(answer.usage)
        inputTokens = usage === undefined || inputTokens === undefined ? undefined : inputTokens + usage.inputTokens
      }
      const response: Model.EmbedResponse = {
        vectors,
        usage: inputTokens === undefined ? undefined : Model.usage(inputTokens, 0),
        provider: name,
        model: Decode.answeredModel(answers[0]!.answer.model, model)
      }
      return response
    })
  )

  return { name, defaultModel, generate, stream, embed } satisfies Model.Service
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<Model.ModelProvider, Input.OptionError, HttpClient.HttpClient> =>
  Layer.effect(Model.ModelProvider)(make(options))

/**
 * The options read the way the official OpenAI clients read them: `OPENAI_API_KEY`
 * (optional), `OPENAI_BASE_URL`, `OPENAI_ORG_ID`, `OPENAI_PROJECT_ID`, plus `OPENAI_MODEL`
 * and `OPENAI_EMBEDDING_MODEL`.
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
  options: Config.Wrap<Options> = config
): Layer.Layer<Model.ModelProvider, Config.ConfigError | Input.OptionError, HttpClient.HttpClient> =>
  Layer.unwrap(Effect.map(Config.unwrap(options), layer))
