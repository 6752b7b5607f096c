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
import { Config, Context, Effect, Layer, type Stream } from "effect"
import { type AiError as Ai, EmbeddingModel, LanguageModel, Model as AiModel, type Response } from "effect/ai"
import type { AiError, ModelError } from "../AiError.js"
import type * as Input from "../Input.js"
import * as Model from "../Model.js"
import * as Convert from "./EffectAi/convert.js"
import * as Errors from "./EffectAi/errors.js"
import * as From from "./EffectAi/fromLanguageModel.js"
import * as To from "./EffectAi/toLanguageModel.js"
import type { CallContext } from "./http/errors.js"

export {
  /**
   * Per-call settings for a {@link languageModel}, the way `effect/ai` provider packages take
   * theirs: `Effect.provideService(EffectAi.GenerationConfig, { temperature: 0 })` around a
   * `LanguageModel.generateText`. Fields given here win over the layer's `settings`; a field
   * set to `undefined` or `null` is one not given.
   *
   * @since 0.2.0
   * @category services
   */
  GenerationConfig
} from "./EffectAi/toLanguageModel.js"

// ---------------------------------------------------------------------------
// effect/ai LanguageModel -> ModelProvider
// ---------------------------------------------------------------------------

/**
 * Options of {@link make}: checked when the provider is built (an `OptionError` naming the
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
   * The model the `EmbeddingModel` in context serves (effect/ai does not name it): what
   * embeddings report, and the only `model` an embedding request may ask for. Default:
   * `model`.
   *
   * @since 0.3.0
   */
  readonly embeddingModel?: string | undefined
  /**
   * Services added to every call, built from the request: the way to hand the settings
   * `LanguageModel` does not carry (model, temperature, max tokens, stop, seed) to your
   * provider package's config service. Without it those settings are not sent, and a
   * request for another model than `Model.ModelName` or `model` (any model, when neither is
   * given) is refused (`InvalidRequest`, field `model`), as is one that sets `maxTokens`
   * (field `maxTokens`: a cap that is not sent would leave the answer, and its cost, unbounded). If it throws, or answers something
   * that is not a `Context`, the call fails `InvalidRequest` with field `context`.
   */
  readonly context?: ((request: Model.GenerateRequest) => Context.Context<never>) | undefined
  /** Longest `generate` call. Default 10 minutes. */
  readonly timeout?: Input.DurationInput | undefined
  /** Longest wait for a stream's next part, the first one included. Default 60 seconds. */
  readonly streamIdleTimeout?: Input.DurationInput | undefined
  /**
   * Characters of answer text, refusals and tool calls' arguments (as JSON text) and signatures
   * accepted from one call (`TooLarge` past it). Default 1,000,000.
   */
  readonly maxOutputChars?: number | undefined
  /** Calls the provider serves at once, declared on the service. Default: unbounded. */
  readonly maxConcurrency?: number | undefined
  /**
   * Bounds on requests (`maxInputChars`, `maxMessages`, `maxEmbedTexts`, positive integers),
   * checked before any call. Default `Model.defaultRequestLimits`.
   *
   * @since 0.3.0
   */
  readonly requestLimits?: Partial<Model.RequestLimits> | undefined
}

/**
 * An `effect/ai` finish reason as ours: `content-filter` is `content_filter`, `tool-calls`
 * `tool_calls`, `pause` (Anthropic's `pause_turn`, a complete answer to `effect/ai`) `stop`,
 * `other` `unknown`.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf: (reason: Response.FinishReason) => Model.FinishReason = Convert.finishReasonOf

/**
 * The longest tool-call signature (Gemini's thought signature) taken from `effect/ai` parts,
 * in either direction: a signature travels in a tool-call part's `metadata` (a response) or
 * `options` (a prompt) as `google.thoughtSignature`, the Google provider packages' key; one
 * that is no string or longer is refused naming it.
 *
 * @since 0.3.0
 * @category constants
 */
export const maxSignatureChars: number = Convert.maxSignatureChars

/**
 * Maps an `effect/ai` `AiError` to our `ModelError` from its reason class and HTTP status:
 * rate limits keep `retryAfter`, quota and credentials are `Unauthorized`, provider
 * failures go by status (500 `Overloaded`, 503 `Unavailable`, 504 `Timeout`), malformed
 * answers are `Decode`, bad input `InvalidRequest` with the parameter as `field`. One that
 * {@link toAiError} made from a `ModelError` maps back to its reason, field and status (so a
 * round trip keeps a `Timeout`, and a `TooLarge` answer still falls back). Request
 * details are never copied (the error keeps no cause; URLs lose their query string). The
 * provider {@link make} builds also maps a `ShuttingDownError` of {@link toAiError} back to
 * a `ShuttingDownError` (here it is `Unknown`, as this returns a `ModelError`).
 *
 * @since 0.1.0
 * @category errors
 */
export const fromAiError: (error: Ai.AiError, ctx: CallContext) => ModelError = Errors.fromAiError

/**
 * Builds the provider from the `LanguageModel` (and, when present, `EmbeddingModel`) in
 * context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (options?: Options) => Effect.Effect<Model.Service, Input.OptionError, LanguageModel.LanguageModel> =
  From.make

/**
 * A `ModelProvider` from the `LanguageModel` (and optional `EmbeddingModel`) the given
 * layers provide, e.g. `EffectAi.layer().pipe(Layer.provide(OpenAiLanguageModel.model("gpt-5.2")))`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<Model.ModelProvider, Input.OptionError, LanguageModel.LanguageModel> =>
  Layer.effect(Model.ModelProvider, make(options))

/**
 * The provider with its options from `Config`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Wrap<Options>
): Layer.Layer<Model.ModelProvider, Config.ConfigError | Input.OptionError, LanguageModel.LanguageModel> =>
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
 * Options of {@link languageModel}: checked when it is built (an `OptionError` naming the
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
  /**
   * Bounds on a request (`maxInputChars`, `maxMessages`, `maxEmbedTexts`, positive integers),
   * checked before the target sees it. Default `Model.defaultRequestLimits`.
   *
   * @since 0.3.0
   */
  readonly requestLimits?: Partial<Model.RequestLimits> | undefined
  /**
   * The former name of `requestLimits`, still read. Giving both with different values is an
   * `OptionError` naming `limits`.
   *
   * @deprecated Use `requestLimits`, as every provider's options name it.
   */
  readonly limits?: Partial<Model.RequestLimits> | undefined
}

/**
 * Options of {@link embeddingModel}: checked when it is built (an `OptionError` naming the
 * field).
 *
 * @since 0.3.0
 * @category models
 */
export interface EmbeddingModelOptions {
  /** The model every request names. Default: none (the target's default). */
  readonly model?: string | undefined
  /**
   * Bounds on a request (`maxInputChars`, `maxEmbedTexts`, positive integers), checked before
   * the target sees it. Default `Model.defaultRequestLimits`.
   *
   * @since 0.3.0
   */
  readonly requestLimits?: Partial<Model.RequestLimits> | undefined
  /**
   * The former name of `requestLimits`, still read. Giving both with different values is an
   * `OptionError` naming `limits`.
   *
   * @deprecated Use `requestLimits`, as every provider's options name it.
   */
  readonly limits?: Partial<Model.RequestLimits> | undefined
}

/**
 * Maps one of our failures to `effect/ai`'s `AiError`, keeping the original as the cause of
 * the reason (`error.reason.cause`): rate limits keep `retryAfter`; `Overloaded`,
 * `Unavailable`, `Timeout`, a retryable `TimeoutError` and an open circuit are
 * `InternalProviderError` (retryable); `Transport` is a `NetworkError`; `InvalidRequest` and
 * `TooLarge` an `InvalidRequestError` (the field as `parameter`); `Unauthorized` an
 * `AuthenticationError` (a `QuotaExhaustedError` with status 402 or 429, an account's quota);
 * `ContentFilter` a `ContentPolicyError`; `Decode` an
 * `InvalidResponseError`; the rest `UnknownError`. An exhausted fallback chain maps its last
 * error. The reason's `metadata["effect-orchestra"]` names our error, reason, provider, status
 * and field.
 *
 * @since 0.2.0
 * @category errors
 */
export const toAiError: (error: AiError, method: string) => Ai.AiError = Errors.toAiError

/**
 * An `effect/ai` `LanguageModel` whose calls go to `target`: `effect/ai` code
 * (`LanguageModel.generateText`, `streamText`, `generateObject`, tool calling with a
 * `Toolkit`, `Chat`) runs unchanged and gains the target's policies. The prompt becomes
 * our request (system, user, assistant tool calls, tool results; files are refused), tools
 * their JSON Schemas, `generateObject`'s schema a `json_schema` response format; the
 * request is checked before the target sees it. Answers come back as `effect/ai` parts with
 * the finish reason, usage and model (a refusal as `metadata["effect-orchestra"].refusal` of the
 * `response-metadata` part); failures as `effect/ai` `AiError`s ({@link toAiError}).
 *
 * @since 0.2.0
 * @category constructors
 */
export const languageModel: (
  target: Target,
  options?: LanguageModelOptions
) => Effect.Effect<LanguageModel.LanguageModel, Input.OptionError> = To.languageModel

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
): Layer.Layer<LanguageModel.LanguageModel | AiModel.ProviderName, Input.OptionError> =>
  Layer.effectContext(
    // The name as it was checked: `options` is read once.
    Effect.map(To.languageModelNamed(target, options), ({ name, service }) =>
      Context.make(LanguageModel.LanguageModel, service).pipe(Context.add(AiModel.ProviderName, name))
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
): Layer.Layer<LanguageModel.LanguageModel | AiModel.ProviderName, Input.OptionError, Model.ModelProvider> =>
  Layer.unwrap(
    Effect.gen(function* () {
      return layerLanguageModel(yield* Model.ModelProvider, options)
    })
  )

/**
 * An `effect/ai` `EmbeddingModel` whose calls go to `target.embed` (checked first; the
 * model from `model` when given). Concurrent `embed` calls, which effect/ai batches, are
 * checked one by one and sent in requests within `requestLimits`: each gets its own outcome.
 * An answer's vectors are of one length, that of the `EmbeddingModel.Dimensions` in context
 * when there is one (an `InvalidOutputError` naming the vector otherwise).
 *
 * @since 0.2.0
 * @category constructors
 */
export const embeddingModel: (
  target: EmbeddingTarget,
  options?: EmbeddingModelOptions
) => Effect.Effect<EmbeddingModel.EmbeddingModel, Input.OptionError> = To.embeddingModel

/**
 * A layer with an `effect/ai` `EmbeddingModel` whose calls go to `target.embed`.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerEmbeddingModel = (
  target: EmbeddingTarget,
  options: EmbeddingModelOptions = {}
): Layer.Layer<EmbeddingModel.EmbeddingModel, Input.OptionError> =>
  Layer.effect(EmbeddingModel.EmbeddingModel, embeddingModel(target, options))
