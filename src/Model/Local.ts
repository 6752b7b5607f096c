/**
 * The embedded default provider: transformers.js models run in-process. Model instances
 * live in scoped pools (one per model id, idle instances released after a time to live),
 * concurrent `embed` calls are coalesced into batched inferences, generation streams token
 * by token and stops between two tokens when interrupted, and closing the scope drains
 * calls up to a deadline, stops the rest and disposes every instance.
 *
 * `@xenova/transformers` is an optional peer dependency: it is imported when a provider is
 * built (`npm install @xenova/transformers`), never by importing this module.
 *
 * Without options it serves the tiny models bundled in `models/`, offline. Those models
 * have random weights: their output is NOT meaningful text (see docs/local-model.md for
 * pointing the provider at a real model).
 *
 * @since 0.1.0
 */
import { Config, Effect, Layer, Result, type Scope } from "effect"
import type { ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import type { OptionError, DurationInput } from "../Input.js"
import { ModelProvider, type RequestLimits, type Service } from "../Model.js"
import * as internal from "./local/provider.js"

/**
 * Where the bundled tiny models live: `models/` at the package root.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultModelPath: URL = new URL("../../models/", import.meta.url)

/**
 * Options of the local provider. Every number is checked when the provider is built: a
 * wrong one fails it with an `OptionError` naming the field.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Provider name in responses, metrics and breaker keys. Default `"local"`. */
  readonly name?: string | undefined
  /**
   * Model for `generate`/`stream` when a request names none. A folder under `modelPath`
   * (or, with `allowRemoteModels`, a Hugging Face id such as `Xenova/distilgpt2`). An id
   * that would leave `modelPath` (absolute, a `..` or empty segment, a backslash, a colon)
   * is refused. Encoder-decoder models (T5, BART) run as text2text generation. Default `"tiny-gpt2"`.
   */
  readonly generationModel?: string | undefined
  /**
   * Model for `embed` (mean pooling + L2 normalisation). A text is truncated to the model's
   * positions; one longer than 16 characters a position is cut before it is tokenized (at a
   * space, tab or line break near the cut, if any) to a prefix whose tokens fill the positions,
   * searched up to 256 characters a position: a text whose first ones hold fewer tokens (long runs
   * of whitespace, say) is read from those alone. A huge text so costs no more than a long one.
   * Default `"tiny-bert"`.
   */
  readonly embeddingModel?: string | undefined
  /** Further models requests may select with `model`; all are loaded when the provider is built. */
  readonly models?:
    | {
        readonly generation?: ReadonlyArray<string> | undefined
        readonly embedding?: ReadonlyArray<string> | undefined
      }
    | undefined
  /** Directory with one folder per local model. Default: the bundled `models/` ({@link defaultModelPath}). */
  readonly modelPath?: string | URL | undefined
  /** Download missing models from the hub into `cacheDir`. Default `false` (offline). */
  readonly allowRemoteModels?: boolean | undefined
  /** Where downloaded models are cached. Default: transformers.js's own (`node_modules/@xenova/transformers/.cache`). */
  readonly cacheDir?: string | undefined
  /**
   * Hub to download from (a mirror, say): an http(s) URL, without credentials (fetch refuses
   * them), query or fragment (each file's path is appended to it). Default `https://huggingface.co/`.
   */
  readonly remoteHost?: string | undefined
  /** Load `*_quantized.onnx` files (the transformers.js default). Default `true`. */
  readonly quantized?: boolean | undefined
  /**
   * Instances per generation model, at most (each generation or stream holds one for its
   * duration); also the provider's `maxConcurrency`. Embedding models hold one instance,
   * shared by batches. Default 1.
   */
  readonly poolSize?: number | undefined
  /** Instances per model kept loaded even when idle (at most `poolSize`). Default 0. */
  readonly minInstances?: number | undefined
  /** Idle instances above `minInstances` are released after this long. Default 10 minutes. */
  readonly idleTimeToLive?: DurationInput | undefined
  /** Most texts in one batched embedding inference. Default 32. */
  readonly maxBatchSize?: number | undefined
  /**
   * How long a batch waits for more texts before it runs (unless it fills first). Default 0:
   * a batch takes the callers that are ready when it starts, without a timer.
   */
  readonly batchWindow?: DurationInput | undefined
  /** On scope close, how long calls in flight may finish before they are stopped. Default 10 seconds. */
  readonly shutdownDeadline?: DurationInput | undefined
  /**
   * Longest load of one model instance (a download included); past it the load fails with
   * a `"Timeout"` `ModelError` (the instance, if it arrives later, is disposed). Closing the
   * provider does not wait for a load in progress. Default 10 minutes.
   *
   * @since 0.2.0
   */
  readonly loadTimeout?: DurationInput | undefined
  /**
   * Bounds on requests (`maxInputChars`, `maxMessages`, `maxEmbedTexts`, positive integers),
   * checked before any call. Default `Model.defaultRequestLimits`. A prompt within them is still
   * refused when it cannot fit the model's context.
   *
   * @since 0.3.0
   */
  readonly requestLimits?: Partial<RequestLimits> | undefined
  /**
   * New tokens per generation when a request sets no `maxTokens`. Default 128. A generation is
   * cut (finish reason `"length"`) where the model's positions end, whatever it asks: a
   * decoder-only model's at what the prompt left of its context, an encoder-decoder's at its
   * decoder's positions less one (its start token's).
   */
  readonly maxTokens?: number | undefined
}

/**
 * Builds the provider in a scope: imports transformers.js (a missing install fails with a
 * `ModelError` of reason `"Unavailable"` naming the package and `npm install
 * @xenova/transformers`), checks the options (`OptionError`), sets transformers.js's
 * process-wide settings, loads every configured model once (a missing or broken model
 * fails here with an `"Unavailable"` `ModelError` naming the path it looked in), and
 * releases every instance when the scope closes.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Local from "effect-orchestra/Model/Local"
 *
 * const program = Effect.scoped(
 *   Effect.gen(function* () {
 *     const model = yield* Local.make()
 *     const answer = yield* model.generate({ prompt: "the river", maxTokens: 8 })
 *     const { vectors } = yield* model.embed({ texts: ["hello", "world"] })
 *     return [answer.text, vectors.length] as const
 *   })
 * )
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service, ModelError | OptionError, Scope.Scope> =>
  typeof options !== "object" || options === null
    ? Input.orOptionError(
        Result.fail({
          path: "options",
          message: `expected an object, got ${Input.kindOf(options)}`
        })
      )
    : Effect.flatMap(
        // Read once: a getter that throws is an OptionError naming its field, not an exception out of `make`.
        Input.orOptionError(Input.readFields(options)),
        (read) => {
          const given = read as Options
          return internal.makeWith({ ...given, modelPath: Input.orDefault(given.modelPath, defaultModelPath) })
        }
      )

/**
 * The local provider as the `ModelProvider` service.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ModelProvider } from "effect-orchestra/Model"
 * import * as Local from "effect-orchestra/Model/Local"
 *
 * const program = Effect.gen(function* () {
 *   const model = yield* ModelProvider
 *   return yield* model.generate({ prompt: "the river", maxTokens: 8 })
 * }).pipe(Effect.provide(Local.layer({ poolSize: 2 })))
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<ModelProvider, ModelError | OptionError> =>
  Layer.effect(ModelProvider, make(options))

/**
 * The local provider with its options read from `Config`.
 *
 * @example
 * ```ts
 * import { Config } from "effect"
 * import * as Local from "effect-orchestra/Model/Local"
 *
 * const LocalLive = Local.layerConfig({
 *   generationModel: Config.String("LOCAL_GENERATION_MODEL").pipe(Config.withDefault("tiny-gpt2")),
 *   allowRemoteModels: Config.Boolean("LOCAL_ALLOW_REMOTE").pipe(Config.withDefault(false))
 * })
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Wrap<Options>
): Layer.Layer<ModelProvider, ModelError | OptionError | Config.ConfigError> =>
  Layer.effect(ModelProvider, Effect.flatMap(Config.unwrap(config), make))
