/**
 * The bridge between this library and `effect/ai`, both ways.
 *
 * - {@link layer}: any `effect/ai` `LanguageModel` (and optionally `EmbeddingModel`) in
 *   context becomes a `ModelProvider`, so the `effect/ai` provider packages run under every
 *   executor, breaker, cache and batch here.
 * - {@link layerLanguageModel}: anything with `generate` and `stream` (a `ModelProvider`,
 *   or a domain's policy-wrapped calls) becomes an `effect/ai` `LanguageModel`, so an
 *   application keeps its `LanguageModel.generateText` / `streamText` code and gains this
 *   library's policies.
 *
 * Errors cross in both directions from data (the `effect/ai` reason class and HTTP status,
 * our `reason`), never from message text.
 *
 * @since 0.1.0
 */
import { Config, Context, type Duration, Effect, type JsonSchema, Layer, Option, Result, Schema, Stream } from "effect"
import {
  AiError as Ai,
  EmbeddingModel,
  LanguageModel,
  Model as AiModel,
  Prompt,
  type Response,
  Tool,
  type Toolkit
} from "effect/ai"
import { type AiError, invalidRequest, isRetryable, ModelError, Reason, reasonOf } from "../AiError.js"
import * as Input from "../Input.js"
import * as Model from "../Model.js"
import { assemble } from "./http/assemble.js"
import { type CallContext, classify, requestTimeout } from "./http/errors.js"
import { defaults } from "./http/options.js"

// ---------------------------------------------------------------------------
// effect/ai LanguageModel -> ModelProvider
// ---------------------------------------------------------------------------

/**
 * Options of {@link make}: checked when the provider is built (a `ConfigError` naming the
 * field).
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Provider name. Default: the `effect/ai` `Model.ProviderName` in context, else `effect-ai`. */
  readonly name?: string | undefined
  /** The model reported when the answer names none. Default: `Model.ModelName` in context, else `unknown`. */
  readonly model?: string | undefined
  /**
   * Services added to every call, built from the request: the way to hand the settings
   * `LanguageModel` does not carry (model, temperature, max tokens, stop, seed) to your
   * provider package's config service. Without it those settings are not sent, and a
   * request for another model than `Model.ModelName` is refused (`InvalidRequest`, field `model`).
   */
  readonly context?: ((request: Model.GenerateRequest) => Context.Context<never>) | undefined
  /** Longest `generate` call. Default 10 minutes. */
  readonly timeout?: Input.DurationInput | undefined
  /** Longest wait for a stream's next part, the first one included. Default 60 seconds. */
  readonly streamIdleTimeout?: Input.DurationInput | undefined
  /** Characters of answer text accepted from one call (`TooLarge` past it). Default 1,000,000. */
  readonly maxOutputChars?: number | undefined
  /** Calls the provider serves at once, declared on the service. Default: unbounded. */
  readonly maxConcurrency?: number | undefined
}

/**
 * An `effect/ai` finish reason as ours.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = (reason: Response.FinishReason): Model.FinishReason => {
  switch (reason) {
    case "content-filter":
      return "content_filter"
    case "tool-calls":
      return "tool_calls"
    case "stop":
    case "length":
    case "error":
      return reason
    default:
      return "unknown"
  }
}

const nonEmpty = (path: string, input: unknown): Input.Checked<string> =>
  typeof input === "string" && input.trim().length > 0
    ? Result.succeed(input)
    : Result.fail({ path, message: "expected a non-empty string" })

const MAX_MESSAGE = 500

// effect/ai descriptions name the request URL; a query string may carry a key.
const safeText = (text: string): string => {
  const cleaned = text.replace(/(https?:\/\/[^\s?#)]+)\?[^\s)#]*/g, "$1?<redacted>")
  return cleaned.length > MAX_MESSAGE ? `${cleaned.slice(0, MAX_MESSAGE)}…` : cleaned
}

/**
 * Maps an `effect/ai` `AiError` to our `ModelError` from its reason class and HTTP status:
 * rate limits keep `retryAfter`, quota and credentials are `Unauthorized`, provider
 * failures go by status (500 `Overloaded`, 503 `Unavailable`, 504 `Timeout`), malformed
 * answers are `Decode`, bad input `InvalidRequest` with the parameter as `field`. Request
 * details are never copied (the error keeps no cause; URLs lose their query string).
 *
 * @since 0.1.0
 * @category errors
 */
export const fromAiError = (error: Ai.AiError, ctx: CallContext): ModelError => {
  const reason = error.reason
  const status = "http" in reason ? reason.http?.response?.status : undefined
  const make = (
    kind: Reason,
    extra: { readonly field?: string | undefined; readonly retryAfter?: Duration.Duration } = {}
  ) =>
    new ModelError({
      reason: kind,
      message: safeText(`${ctx.provider}: ${error.module}.${error.method}: ${reason.message}`),
      provider: ctx.provider,
      model: ctx.model,
      status,
      ...extra
    })
  switch (reason._tag) {
    case "RateLimitError":
      return make("RateLimited", reason.retryAfter === undefined ? {} : { retryAfter: reason.retryAfter })
    case "QuotaExhaustedError":
    case "AuthenticationError":
      return make("Unauthorized")
    case "ContentPolicyError":
      return make("ContentFilter")
    case "InvalidRequestError":
      return status === 413 ? make("TooLarge") : make("InvalidRequest", { field: reason.parameter })
    case "InternalProviderError":
      return make(status === undefined ? "Overloaded" : classify(status, { reasons: [] }))
    case "UnknownError":
      return make(status === undefined ? "Unknown" : classify(status, { reasons: [] }))
    case "NetworkError":
      return reason.reason === "TransportError" ? make("Transport") : make("InvalidRequest", { field: "request" })
    case "InvalidResponseError":
    case "InvalidOutputError":
    case "StructuredOutputError":
      return make("Decode")
    case "ToolNotFoundError":
    case "ToolParameterValidationError":
      return make("Decode", { field: "toolCalls" })
    case "UnsupportedSchemaError":
      return make("InvalidRequest", { field: "responseFormat" })
    case "InvalidUserInputError":
      return make("InvalidRequest", { field: "messages" })
    case "InvalidToolResultError":
    case "ToolResultEncodingError":
    case "ToolConfigurationError":
    case "ToolkitRequiredError":
      return make("InvalidRequest", { field: "tools" })
  }
}

const parseArguments = (text: string): Result.Result<unknown, string> => {
  try {
    return Result.succeed(Tool.unsafeSecureJsonParse(text))
  } catch {
    return Result.fail("not JSON")
  }
}

/** Our conversation as an effect/ai Prompt. Tool results need the tool's name: found from the call they answer. */
const toPrompt = (request: Model.GenerateRequest, provider: string): Result.Result<Prompt.Prompt, ModelError> => {
  const names = new Map<string, string>()
  const messages: Array<Prompt.Message> = []
  const conversation = Model.toMessages(request)
  const offset = request.system === undefined ? 0 : 1
  for (const [i, message] of conversation.entries()) {
    const path = `messages[${i - offset}]`
    switch (message.role) {
      case "system":
        messages.push(Prompt.makeMessage("system", { content: message.content }))
        break
      case "user":
        messages.push(Prompt.makeMessage("user", { content: [Prompt.makePart("text", { text: message.content })] }))
        break
      case "assistant": {
        const content: Array<Prompt.AssistantMessagePart> = []
        if (message.content.length > 0) content.push(Prompt.makePart("text", { text: message.content }))
        for (const [j, call] of (message.toolCalls ?? []).entries()) {
          const params = parseArguments(call.arguments)
          if (Result.isFailure(params)) {
            return Result.fail(invalidRequest(`${path}.toolCalls[${j}].arguments`, "not JSON", provider))
          }
          names.set(call.id, call.name)
          content.push(
            Prompt.makePart("tool-call", {
              id: call.id,
              name: call.name,
              params: params.success,
              providerExecuted: false
            })
          )
        }
        messages.push(Prompt.makeMessage("assistant", { content }))
        break
      }
      case "tool": {
        const name = message.toolCallId === undefined ? undefined : names.get(message.toolCallId)
        if (name === undefined || message.toolCallId === undefined) {
          return Result.fail(
            invalidRequest(`${path}.toolCallId`, "does not answer a tool call of an earlier message", provider)
          )
        }
        const part = Prompt.makePart("tool-result", {
          id: message.toolCallId,
          name,
          isFailure: false,
          result: message.content,
          providerExecuted: false
        })
        messages.push(Prompt.makeMessage("tool", { content: [part] }))
        break
      }
    }
  }
  return Result.succeed(Prompt.fromMessages(messages))
}

type AnyTools = Record<string, Tool.Any>
type AnyToolkit = Toolkit.WithHandler<AnyTools>

// Tool calls are returned to the caller, never run here: the toolkit has no handlers.
const toolkitOf = (tools: ReadonlyArray<Model.ToolDefinition>): AnyToolkit => {
  const record: Record<string, Tool.Any> = {}
  for (const tool of tools) {
    record[tool.name] = Tool.dynamic(tool.name, {
      description: tool.description,
      parameters: (tool.parameters ?? { type: "object", properties: {} }) as JsonSchema.JsonSchema
    })
  }
  return { tools: record, handle: () => Effect.die("effect-orchestra: tool calls are returned, not run") }
}

const usageOf = (usage: Response.Usage, input: number, output: number): Model.Usage => {
  const inputTokens = usage.inputTokens.total ?? input
  const outputTokens = usage.outputTokens.total ?? output
  return { inputTokens, outputTokens, totalTokens: inputTokens + outputTokens }
}

const settingKeys = ["temperature", "maxTokens", "topP", "stop", "seed", "responseFormat"] as const

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
  const modelName = yield* Effect.serviceOption(AiModel.ModelName)
  const checked = yield* Input.orConfigError(
    Input.all([
      Input.duration("timeout", options.timeout ?? defaults.timeout),
      Input.duration("streamIdleTimeout", options.streamIdleTimeout ?? defaults.streamIdleTimeout),
      Input.positiveInt("maxOutputChars", options.maxOutputChars ?? 1_000_000),
      Input.optional(options.maxConcurrency, (n) => Input.positiveInt("maxConcurrency", n)),
      nonEmpty("name", options.name ?? Option.getOrElse(providerName, () => "effect-ai")),
      nonEmpty("model", options.model ?? Option.getOrElse(modelName, () => "unknown"))
    ])
  )
  const [timeout, streamIdleTimeout, maxOutputChars, maxConcurrency, name, defaultModel] = checked

  /** What every call needs: the prompt, the toolkit, and the model to report. */
  const prepare = (request: Model.GenerateRequest) =>
    Effect.gen(function* () {
      const valid = yield* Model.validateGenerate(request)
      if (options.context === undefined) {
        if (valid.model !== undefined && Option.isSome(modelName) && valid.model !== modelName.value) {
          return yield* invalidRequest("model", `${name} serves ${modelName.value}, not ${valid.model}`, name)
        }
        if (valid.responseFormat !== undefined && valid.responseFormat.type !== "text") {
          return yield* invalidRequest(
            "responseFormat",
            "effect/ai generateText has no JSON mode; use generateObject",
            name
          )
        }
      }
      const prompt = toPrompt(valid, name)
      if (Result.isFailure(prompt)) return yield* Effect.fail(prompt.failure)
      const ignored = settingKeys.filter((key) => valid[key] !== undefined)
      const model = valid.model ?? defaultModel
      yield* Effect.annotateCurrentSpan({
        "gen_ai.provider.name": name,
        "gen_ai.request.model": model,
        ...(options.context === undefined && ignored.length > 0 ? { "orchestra.settings_not_sent": ignored } : {})
      })
      const tools = valid.tools ?? []
      const choice = valid.toolChoice
      const toolChoice = choice === undefined || typeof choice === "string" ? (choice ?? "auto") : { tool: choice.name }
      return {
        valid,
        ctx: { provider: name, model },
        prompt: prompt.success,
        toolkit: tools.length === 0 ? undefined : toolkitOf(tools),
        toolChoice
      }
    })

  const tooLarge = (ctx: CallContext) =>
    new ModelError({
      reason: "TooLarge",
      message: `${ctx.provider}: the answer exceeded ${maxOutputChars} characters (maxOutputChars)`,
      provider: ctx.provider,
      model: ctx.model
    })

  const generate = Effect.fn("EffectAi.generate")(function* (request: Model.GenerateRequest) {
    const { valid, ctx, prompt, toolkit, toolChoice } = yield* prepare(request)
    // The toolkit only declares tools (no handlers), so both calls answer the same part shapes.
    const call = (toolkit === undefined
      ? lm.generateText({ prompt })
      : lm.generateText({ prompt, toolkit, toolChoice, disableToolCallResolution: true })) as unknown as Effect.Effect<
      LanguageModel.GenerateTextResponse<AnyTools, "encoded">,
      Ai.AiError
    >
    const extra = options.context?.(valid)
    const response = yield* (
      extra === undefined ? call : Effect.updateContext(call, (c: Context.Context<never>) => Context.merge(c, extra))
    ).pipe(
      Effect.mapError((error) => fromAiError(error, ctx)),
      Effect.timeoutOrElse({ duration: timeout, orElse: () => Effect.fail(requestTimeout(ctx, timeout)) })
    )
    const text = response.text
    if (text.length > maxOutputChars) return yield* tooLarge(ctx)
    let answered: string | undefined
    const toolCalls: Array<Model.ToolCall> = []
    for (const part of response.content) {
      if (part.type === "response-metadata" && part.modelId !== undefined) answered = part.modelId
      if (part.type === "tool-call" && !part.providerExecuted) {
        toolCalls.push({ id: part.id, name: part.name, arguments: JSON.stringify(part.params ?? {}) })
      }
    }
    return {
      text,
      finishReason: finishReasonOf(response.finishReason),
      usage: usageOf(response.usage, Model.estimateInputTokens(valid), Model.estimateTokens(text)),
      provider: name,
      model: answered ?? ctx.model,
      ...(toolCalls.length === 0 ? {} : { toolCalls })
    } satisfies Model.GenerateResponse
  })

  const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, AiError> =>
    Stream.unwrap(
      Effect.map(prepare(request), ({ valid, ctx, prompt, toolkit, toolChoice }) => {
        let answered: string | undefined
        let chars = 0
        const raw = (toolkit === undefined
          ? lm.streamText({ prompt })
          : lm.streamText({
              prompt,
              toolkit,
              toolChoice,
              disableToolCallResolution: true
            })) as unknown as Stream.Stream<Response.StreamPart<AnyTools, "encoded">, Ai.AiError>
        const extra = options.context?.(valid)
        const parts = (
          extra === undefined ? raw : Stream.updateContext(raw, (c: Context.Context<never>) => Context.merge(c, extra))
        ).pipe(Stream.mapError((error) => fromAiError(error, ctx)))
        return assemble(parts, {
          ctx,
          idleTimeout: streamIdleTimeout,
          step: (part): Effect.Effect<ReadonlyArray<Model.StreamPart>, ModelError> => {
            switch (part.type) {
              case "text-delta":
                if (part.delta.length === 0) return Effect.succeed([])
                chars += part.delta.length
                if (chars > maxOutputChars) return Effect.fail(tooLarge(ctx))
                return Effect.succeed([{ _tag: "TextDelta", text: part.delta }])
              case "tool-call":
                if (part.providerExecuted) return Effect.succeed([])
                return Effect.succeed([
                  {
                    _tag: "ToolCall",
                    call: { id: part.id, name: part.name, arguments: JSON.stringify(part.params ?? {}) }
                  }
                ])
              case "response-metadata":
                if (part.modelId !== undefined) answered = part.modelId
                return Effect.succeed([])
              case "finish":
                return Effect.succeed([
                  {
                    _tag: "Finish",
                    finishReason: finishReasonOf(part.reason),
                    usage: usageOf(part.usage, Model.estimateInputTokens(valid), Math.ceil(chars / 4)),
                    provider: name,
                    model: answered ?? ctx.model
                  }
                ])
              case "error":
                return Effect.fail(
                  Ai.isAiError(part.error)
                    ? fromAiError(part.error, ctx)
                    : new ModelError({
                        reason: "Unknown",
                        message: `${name}: the stream sent an error part`,
                        provider: name,
                        model: ctx.model
                      })
                )
              default:
                return Effect.succeed([])
            }
          },
          onEnd: () => Effect.succeed([])
        })
      })
    ).pipe(Stream.withSpan("EffectAi.stream", { attributes: { "gen_ai.provider.name": name } }))

  const embed = Effect.fn("EffectAi.embed")(function* (request: Model.EmbedRequest) {
    const valid = yield* Model.validateEmbed(request)
    const ctx = { provider: name, model: valid.model ?? defaultModel }
    if (Option.isNone(embedder)) {
      return yield* invalidRequest("texts", `no effect/ai EmbeddingModel was provided to ${name}`, name)
    }
    const response = yield* embedder.value.embedMany(valid.texts).pipe(
      Effect.mapError((error) => fromAiError(error, ctx)),
      Effect.timeoutOrElse({ duration: timeout, orElse: () => Effect.fail(requestTimeout(ctx, timeout)) })
    )
    let estimate = 0
    for (const text of valid.texts) estimate += Model.estimateTokens(text)
    return {
      vectors: response.embeddings.map((embedding) => embedding.vector),
      usage: Model.usage(response.usage.inputTokens ?? estimate, 0),
      provider: name,
      model: ctx.model
    } satisfies Model.EmbedResponse
  })

  return {
    name,
    defaultModel,
    generate,
    stream,
    embed,
    ...(maxConcurrency === undefined ? {} : { maxConcurrency })
  } satisfies Model.Service
})

/**
 * A `ModelProvider` from the `LanguageModel` (and optional `EmbeddingModel`) the given
 * layers provide, e.g. `EffectAi.layer().pipe(Layer.provide(OpenAiLanguageModel.model("gpt-5.2")))`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<Model.ModelProvider, Input.ConfigError, LanguageModel.LanguageModel> =>
  Layer.effect(Model.ModelProvider, make(options))

/**
 * The provider with its options from `Config`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Wrap<Options>
): Layer.Layer<Model.ModelProvider, Config.ConfigError | Input.ConfigError, LanguageModel.LanguageModel> =>
  Layer.unwrap(Effect.map(Config.unwrap(options), layer))

// ---------------------------------------------------------------------------
// generate/stream target -> effect/ai LanguageModel (and EmbeddingModel)
// ---------------------------------------------------------------------------

/**
 * What {@link languageModel} calls, in this library's request and response shapes. A
 * `ModelProvider` is one; so is a domain's policy-wrapped `generate` / `stream`.
 *
 * @since 0.2.0
 * @category models
 */
export interface Target {
  readonly generate: (request: Model.GenerateRequest) => Effect.Effect<Model.GenerateResponse, AiError>
  readonly stream: (request: Model.GenerateRequest) => Stream.Stream<Model.StreamPart, AiError>
}

/**
 * What {@link embeddingModel} calls.
 *
 * @since 0.2.0
 * @category models
 */
export interface EmbeddingTarget {
  readonly embed: (request: Model.EmbedRequest) => Effect.Effect<Model.EmbedResponse, AiError>
}

/**
 * Settings of a generation that `effect/ai`'s `LanguageModel` does not carry. Checked like
 * every request (`temperature` in [0, 2], `maxTokens` a positive integer, ...).
 *
 * @since 0.2.0
 * @category models
 */
export interface GenerationSettings {
  readonly model?: string | undefined
  readonly maxTokens?: number | undefined
  readonly temperature?: number | undefined
  readonly topP?: number | undefined
  readonly stop?: ReadonlyArray<string> | undefined
  readonly seed?: number | undefined
}

/**
 * Per-call settings for a {@link languageModel}, the way `effect/ai` provider packages take
 * theirs: `Effect.provideService(EffectAi.GenerationConfig, { temperature: 0 })` around a
 * `LanguageModel.generateText`. Fields given here win over the layer's `settings`.
 *
 * @since 0.2.0
 * @category services
 */
export class GenerationConfig extends Context.Service<GenerationConfig, GenerationSettings>()(
  "effect-orchestra/Model/EffectAi/GenerationConfig"
) {}

/**
 * Options of {@link languageModel}: checked when it is built (a `ConfigError` naming the
 * field).
 *
 * @since 0.2.0
 * @category models
 */
export interface LanguageModelOptions {
  /** The provider name `effect/ai` code sees (`Model.ProviderName`, `gen_ai.provider.name`). Default `effect-orchestra`. */
  readonly name?: string | undefined
  /** Settings of every call; a `GenerationConfig` in context overrides them field by field. */
  readonly settings?: GenerationSettings | undefined
  /** Bounds on a request, checked before the target sees it. */
  readonly limits?: Partial<Model.RequestLimits> | undefined
}

const MODULE = "EffectOrchestra"

const statusCodes = (status: number | undefined) =>
  status === undefined ? {} : { http: { response: { status, headers: {} } } }

const metadataOf = (error: AiError): Ai.ProviderMetadata => {
  const info: Record<string, string | number> = { error: error._tag, reason: reasonOf(error) }
  if ("provider" in error && error.provider !== undefined) info["provider"] = error.provider
  if (error._tag === "ModelError" && error.status !== undefined) info["status"] = error.status
  return { "effect-orchestra": info }
}

const reasonOfModelError = (
  kind: Reason,
  error: AiError,
  method: string,
  extra: {
    readonly status?: number | undefined
    readonly field?: string | undefined
    readonly retryAfter?: Duration.Duration | undefined
  }
): Ai.AiErrorReason => {
  const metadata = metadataOf(error)
  const description = error.message
  const http = statusCodes(extra.status)
  switch (kind) {
    case "RateLimited":
      return new Ai.RateLimitError({
        metadata,
        ...http,
        ...(extra.retryAfter === undefined ? {} : { retryAfter: extra.retryAfter })
      })
    case "Overloaded":
    case "Unavailable":
    case "Timeout":
      return new Ai.InternalProviderError({ description, metadata, ...http })
    case "Transport":
      return new Ai.NetworkError({
        reason: "TransportError",
        method,
        url: `effect-orchestra:${"provider" in error ? (error.provider ?? "") : ""}`,
        description
      })
    case "InvalidRequest":
      return new Ai.InvalidRequestError({
        description,
        metadata,
        ...http,
        ...(extra.field === undefined ? {} : { parameter: extra.field })
      })
    case "TooLarge":
      return new Ai.InvalidRequestError({ description, constraint: "too large", metadata, ...http })
    case "Unauthorized":
      return new Ai.AuthenticationError({
        kind: extra.status === 401 ? "InvalidKey" : extra.status === 403 ? "InsufficientPermissions" : "Unknown",
        description,
        metadata,
        ...http
      })
    case "ContentFilter":
      return new Ai.ContentPolicyError({ description, metadata, ...http })
    case "Decode":
      return new Ai.InvalidResponseError({ description, metadata, ...http })
    case "Unknown":
      return new Ai.UnknownError({ description, metadata, ...http })
  }
}

const isReason = Schema.is(Reason)

const aiReasonOf = (error: AiError, method: string): Ai.AiErrorReason => {
  switch (error._tag) {
    case "ModelError":
      return reasonOfModelError(error.reason, error, method, error)
    case "TimeoutError":
    case "CircuitOpenError":
      return isRetryable(error) || error._tag === "CircuitOpenError"
        ? new Ai.InternalProviderError({ description: error.message, metadata: metadataOf(error) })
        : new Ai.UnknownError({ description: error.message, metadata: metadataOf(error) })
    case "ShuttingDownError":
      return new Ai.UnknownError({ description: error.message, metadata: metadataOf(error) })
    case "StreamInterruptedError":
      return isReason(error.reason)
        ? reasonOfModelError(error.reason, error, method, {})
        : new Ai.UnknownError({ description: error.message, metadata: metadataOf(error) })
    case "FallbackExhaustedError":
      return aiReasonOf(error.last, method)
  }
}

/**
 * Maps one of our failures to `effect/ai`'s `AiError`, keeping the original as the cause of
 * the reason (`error.reason.cause`): rate limits keep `retryAfter`; `Overloaded`,
 * `Unavailable`, `Timeout`, a retryable `TimeoutError` and an open circuit are
 * `InternalProviderError` (retryable); `Transport` is a `NetworkError`; `InvalidRequest` and
 * `TooLarge` an `InvalidRequestError` (the field as `parameter`); `Unauthorized` an
 * `AuthenticationError`; `ContentFilter` a `ContentPolicyError`; `Decode` an
 * `InvalidResponseError`; the rest `UnknownError`. An exhausted fallback chain maps its last
 * error. The reason's `metadata["effect-orchestra"]` names our error, reason, provider and status.
 *
 * @since 0.2.0
 * @category errors
 */
export const toAiError = (error: AiError, method: string): Ai.AiError => {
  const reason = aiReasonOf(error, method)
  Object.defineProperty(reason, "cause", { value: error, enumerable: false, configurable: true, writable: true })
  return Ai.make({ module: MODULE, method, reason })
}

const finishOf = (reason: Model.FinishReason): Response.FinishReason => {
  switch (reason) {
    case "content_filter":
      return "content-filter"
    case "tool_calls":
      return "tool-calls"
    default:
      return reason
  }
}

const count = (n: number): { readonly total?: number } => (Number.isSafeInteger(n) && n >= 0 ? { total: n } : {})

const usageEncoded = (usage: Model.Usage): typeof Response.Usage.Encoded => ({
  inputTokens: count(usage.inputTokens),
  outputTokens: count(usage.outputTokens)
})

const textOfParts = (parts: ReadonlyArray<{ readonly type: string; readonly text?: string }>): string =>
  parts.flatMap((part) => (part.type === "text" && part.text !== undefined ? [part.text] : [])).join("\n")

const resultText = (part: Prompt.ToolResultPart): string =>
  part.modelOutput !== undefined
    ? Prompt.toolModelOutputToText(part.modelOutput)
    : typeof part.result === "string"
      ? part.result
      : (JSON.stringify(part.result) ?? "")

const unsupported = (parameter: string, description: string): Ai.AiErrorReason =>
  new Ai.InvalidRequestError({ parameter, description })

/** An effect/ai Prompt as our conversation. */
const toMessages = (prompt: Prompt.Prompt): Result.Result<Array<Model.Message>, Ai.AiErrorReason> => {
  const messages: Array<Model.Message> = []
  for (const message of prompt.content) {
    switch (message.role) {
      case "system":
        messages.push({ role: "system", content: message.content })
        break
      case "user":
        if (message.content.some((part) => part.type === "file")) {
          return Result.fail(unsupported("prompt", "file parts are not supported by effect-orchestra providers"))
        }
        messages.push({ role: "user", content: textOfParts(message.content) })
        break
      case "assistant": {
        if (message.content.some((part) => part.type === "file")) {
          return Result.fail(unsupported("prompt", "file parts are not supported by effect-orchestra providers"))
        }
        const toolCalls: Array<Model.ToolCall> = []
        const results: Array<Model.Message> = []
        for (const part of message.content) {
          if (part.type === "tool-call" && !part.providerExecuted) {
            toolCalls.push({ id: part.id, name: part.name, arguments: JSON.stringify(part.params ?? {}) })
          } else if (part.type === "tool-result" && !part.providerExecuted) {
            results.push({ role: "tool", toolCallId: part.id, content: resultText(part) })
          }
        }
        const content = textOfParts(message.content)
        if (content.length > 0 || toolCalls.length > 0) {
          messages.push({ role: "assistant", content, ...(toolCalls.length === 0 ? {} : { toolCalls }) })
        }
        messages.push(...results)
        break
      }
      case "tool":
        for (const part of message.content) {
          if (part.type === "tool-result")
            messages.push({ role: "tool", toolCallId: part.id, content: resultText(part) })
        }
        break
    }
  }
  return Result.succeed(messages)
}

const toolsOf = (
  options: LanguageModel.ProviderOptions
): Result.Result<Pick<Model.GenerateRequest, "tools" | "toolChoice" | "responseFormat">, Ai.AiErrorReason> => {
  const out: {
    tools?: Array<Model.ToolDefinition>
    toolChoice?: Model.GenerateRequest["toolChoice"]
    responseFormat?: Model.ResponseFormat
  } = {}
  try {
    if (options.tools.length > 0) {
      const tools: Array<Model.ToolDefinition> = []
      for (const tool of options.tools) {
        if (Tool.isProviderDefined(tool)) {
          return Result.fail(
            unsupported(
              "tools",
              `${tool.name} is a provider-defined tool; effect-orchestra targets run user tools only`
            )
          )
        }
        const description = Tool.getDescription(tool)
        tools.push({
          name: tool.name,
          ...(description === undefined ? {} : { description }),
          parameters: Tool.getJsonSchema(tool) as Record<string, unknown>
        })
      }
      const choice = options.toolChoice
      out.tools = tools
      out.toolChoice =
        typeof choice === "string"
          ? choice
          : "tool" in choice
            ? { name: choice.tool }
            : choice.mode === "required"
              ? "required"
              : "auto"
    }
    if (options.responseFormat.type === "json") {
      out.responseFormat = {
        type: "json_schema",
        name: options.responseFormat.objectName,
        schema: Tool.getJsonSchemaFromSchema(options.responseFormat.schema) as Record<string, unknown>
      }
    }
  } catch (cause) {
    return Result.fail(
      new Ai.UnsupportedSchemaError({ description: cause instanceof Error ? cause.message : String(cause) })
    )
  }
  return Result.succeed(out)
}

const settingKeysOf: ReadonlySet<string> = new Set(["model", "maxTokens", "temperature", "topP", "stop", "seed"])
const decodeRequest = Schema.decodeUnknownResult(Model.GenerateRequest, { onExcessProperty: "error" })

const checkSettings = (path: string, settings: GenerationSettings): Input.Checked<GenerationSettings> => {
  for (const key of Object.keys(settings)) {
    if (!settingKeysOf.has(key)) return Result.fail({ path: `${path}.${key}`, message: "unknown setting" })
  }
  const decoded = decodeRequest({ prompt: "settings", ...settings })
  return Result.isSuccess(decoded) ? Result.succeed(settings) : Result.fail(Input.issueOf(decoded.failure, path))
}

const requestOf = (
  options: LanguageModel.ProviderOptions,
  settings: GenerationSettings
): Result.Result<Model.GenerateRequest, Ai.AiErrorReason> =>
  Result.flatMap(toMessages(options.prompt), (messages) =>
    Result.map(toolsOf(options), (tools) => ({ messages, ...settings, ...tools }))
  )

const partsOf = (response: Model.GenerateResponse): Result.Result<Array<Response.PartEncoded>, Ai.AiErrorReason> => {
  const parts: Array<Response.PartEncoded> = [
    {
      type: "response-metadata",
      modelId: response.model,
      metadata: { "effect-orchestra": { provider: response.provider } }
    }
  ]
  if (response.text.length > 0) parts.push({ type: "text", text: response.text })
  for (const call of response.toolCalls ?? []) {
    const params = parseArguments(call.arguments)
    if (Result.isFailure(params)) {
      return Result.fail(
        new Ai.InvalidOutputError({ description: `tool call ${call.id} (${call.name}): arguments are not JSON` })
      )
    }
    parts.push({ type: "tool-call", id: call.id, name: call.name, params: params.success })
  }
  parts.push({ type: "finish", reason: finishOf(response.finishReason), usage: usageEncoded(response.usage) })
  return Result.succeed(parts)
}

type Span = LanguageModel.ProviderOptions["span"]

// Attribute names as effect/ai's Telemetry writes them, set directly: its key conversion costs
// more than the rest of the adapter.
const annotateRequest = (span: Span, name: string, request: Model.GenerateRequest): void => {
  span.attribute("gen_ai.provider.name", name)
  if (request.model !== undefined) span.attribute("gen_ai.request.model", request.model)
  if (request.temperature !== undefined) span.attribute("gen_ai.request.temperature", request.temperature)
  if (request.topP !== undefined) span.attribute("gen_ai.request.top_p", request.topP)
  if (request.maxTokens !== undefined) span.attribute("gen_ai.request.max_tokens", request.maxTokens)
  if (request.seed !== undefined) span.attribute("gen_ai.request.seed", request.seed)
  if (request.stop !== undefined) span.attribute("gen_ai.request.stop_sequences", request.stop)
}

const annotateResponse = (
  span: Span,
  finish: { readonly model: string; readonly finishReason: Model.FinishReason; readonly usage: Model.Usage }
): void => {
  span.attribute("gen_ai.response.model", finish.model)
  span.attribute("gen_ai.response.finish_reasons", [finish.finishReason])
  span.attribute("gen_ai.usage.input_tokens", finish.usage.inputTokens)
  span.attribute("gen_ai.usage.output_tokens", finish.usage.outputTokens)
}

/**
 * An `effect/ai` `LanguageModel` whose calls go to `target`: `effect/ai` code
 * (`LanguageModel.generateText`, `streamText`, `generateObject`, tool calling with a
 * `Toolkit`, `Chat`) runs unchanged and gains the target's policies. The prompt becomes
 * our request (system, user, assistant tool calls, tool results; files are refused), tools
 * their JSON Schemas, `generateObject`'s schema a `json_schema` response format; the
 * request is checked before the target sees it. Answers come back as `effect/ai` parts with
 * the finish reason, usage and model; failures as `effect/ai` `AiError`s ({@link toAiError}).
 *
 * @since 0.2.0
 * @category constructors
 */
export const languageModel = Effect.fnUntraced(function* (target: Target, options: LanguageModelOptions = {}) {
  const [name, defaults, limits] = yield* Input.orConfigError(
    Input.all([
      nonEmpty("name", options.name ?? "effect-orchestra"),
      checkSettings("settings", options.settings ?? {}),
      Model.requestLimits(options.limits, "limits")
    ])
  )

  const prepare = (method: string, providerOptions: LanguageModel.ProviderOptions) =>
    Effect.gen(function* () {
      const scoped = yield* Effect.serviceOption(GenerationConfig)
      const settings = Option.isNone(scoped) ? defaults : { ...defaults, ...scoped.value }
      const built = requestOf(providerOptions, settings)
      if (Result.isFailure(built)) return yield* Ai.make({ module: MODULE, method, reason: built.failure })
      const request = yield* Model.validateGenerate(built.success, limits).pipe(
        Effect.mapError((error) => toAiError(error, method))
      )
      annotateRequest(providerOptions.span, name, request)
      return request
    })

  return yield* LanguageModel.make({
    generateText: (providerOptions) =>
      Effect.gen(function* () {
        const request = yield* prepare("generateText", providerOptions)
        const response = yield* Effect.mapError(target.generate(request), (error) => toAiError(error, "generateText"))
        annotateResponse(providerOptions.span, response)
        const parts = partsOf(response)
        if (Result.isFailure(parts))
          return yield* Ai.make({ module: MODULE, method: "generateText", reason: parts.failure })
        return parts.success
      }),
    streamText: (providerOptions) =>
      Stream.unwrap(
        Effect.map(prepare("streamText", providerOptions), (request) => {
          let open = false
          let blocks = 0
          const close = (): Array<Response.StreamPartEncoded> => {
            if (!open) return []
            open = false
            return [{ type: "text-end", id: `text-${blocks}` }]
          }
          const step = (
            part: Model.StreamPart
          ): Effect.Effect<ReadonlyArray<Response.StreamPartEncoded>, Ai.AiError> => {
            switch (part._tag) {
              case "TextDelta": {
                if (part.text.length === 0) return Effect.succeed([])
                const start: Array<Response.StreamPartEncoded> = open
                  ? []
                  : [{ type: "text-start", id: `text-${++blocks}` }]
                open = true
                return Effect.succeed([...start, { type: "text-delta", id: `text-${blocks}`, delta: part.text }])
              }
              case "ToolCall": {
                const params = parseArguments(part.call.arguments)
                if (Result.isFailure(params)) {
                  return Effect.fail(
                    Ai.make({
                      module: MODULE,
                      method: "streamText",
                      reason: new Ai.InvalidOutputError({
                        description: `tool call ${part.call.id} (${part.call.name}): arguments are not JSON`
                      })
                    })
                  )
                }
                return Effect.succeed([
                  ...close(),
                  { type: "tool-call", id: part.call.id, name: part.call.name, params: params.success }
                ])
              }
              case "Finish":
                annotateResponse(providerOptions.span, part)
                return Effect.succeed([
                  ...close(),
                  {
                    type: "response-metadata",
                    modelId: part.model,
                    metadata: { "effect-orchestra": { provider: part.provider } }
                  },
                  { type: "finish", reason: finishOf(part.finishReason), usage: usageEncoded(part.usage) }
                ])
            }
          }
          return target.stream(request).pipe(
            Stream.mapError((error) => toAiError(error, "streamText")),
            Stream.mapEffect(step),
            Stream.flattenIterable
          )
        })
      )
  })
})

/**
 * A layer with an `effect/ai` `LanguageModel` (and its `Model.ProviderName`) whose calls go
 * to `target`.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerLanguageModel = (
  target: Target,
  options: LanguageModelOptions = {}
): Layer.Layer<LanguageModel.LanguageModel | AiModel.ProviderName, Input.ConfigError> =>
  Layer.effectContext(
    Effect.map(languageModel(target, options), (service) =>
      Context.make(LanguageModel.LanguageModel, service).pipe(
        Context.add(AiModel.ProviderName, options.name ?? "effect-orchestra")
      )
    )
  )

/**
 * {@link layerLanguageModel} over the `ModelProvider` in context.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerLanguageModelFromProvider = (
  options: LanguageModelOptions = {}
): Layer.Layer<LanguageModel.LanguageModel | AiModel.ProviderName, Input.ConfigError, Model.ModelProvider> =>
  Layer.unwrap(
    Effect.gen(function* () {
      return layerLanguageModel(yield* Model.ModelProvider, options)
    })
  )

/**
 * An `effect/ai` `EmbeddingModel` whose calls go to `target.embed` (checked first; the
 * model from `model` when given).
 *
 * @since 0.2.0
 * @category constructors
 */
export const embeddingModel = (
  target: EmbeddingTarget,
  options: { readonly model?: string | undefined; readonly limits?: Partial<Model.RequestLimits> | undefined } = {}
): Effect.Effect<EmbeddingModel.EmbeddingModel, Input.ConfigError> =>
  Effect.flatMap(
    Input.orConfigError(
      Input.all([
        Input.optional(options.model, (model) => nonEmpty("model", model)),
        Model.requestLimits(options.limits, "limits")
      ])
    ),
    ([model, limits]) =>
      EmbeddingModel.make({
        embedMany: ({ inputs }) =>
          Model.validateEmbed(
            { texts: inputs as Model.EmbedRequest["texts"], ...(model === undefined ? {} : { model }) },
            limits
          ).pipe(
            Effect.flatMap(target.embed),
            Effect.map((response) => ({
              results: response.vectors.map((vector) => [...vector]),
              usage: { inputTokens: response.usage?.inputTokens }
            })),
            Effect.mapError((error) => toAiError(error, "embedMany"))
          )
      })
  )

/**
 * A layer with an `effect/ai` `EmbeddingModel` whose calls go to `target.embed`.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerEmbeddingModel = (
  target: EmbeddingTarget,
  options: { readonly model?: string | undefined; readonly limits?: Partial<Model.RequestLimits> | undefined } = {}
): Layer.Layer<EmbeddingModel.EmbeddingModel, Input.ConfigError> =>
  Layer.effect(EmbeddingModel.EmbeddingModel, embeddingModel(target, options))
