/**
 * The embedded default provider: transformers.js models run in-process. Model instances
 * live in a scoped pool (one pool per model id, idle instances released after a TTL),
 * concurrent `embed` calls are coalesced into batched inferences, and closing the scope
 * drains calls up to a deadline, interrupts the rest and disposes every instance.
 *
 * Without options it serves the tiny models bundled in `models/`, offline. Those models
 * have random weights: their output is NOT meaningful text (see docs/local-model.md for
 * pointing the provider at a real model).
 *
 * @since 0.1.0
 */
import type { Config, ConfigError, Duration, Scope } from "effect"
import { Effect, Layer } from "effect"
import { Config as ConfigModule } from "effect"
import type { ModelError } from "../AiError.js"
import * as internal from "../internal/local/provider.js"
import { ModelProvider, type Service } from "../Model.js"

/**
 * Where the bundled tiny models live: `models/` at the package root.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultModelPath: URL = new URL("../../models/", import.meta.url)

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Provider name in responses, metrics and breaker keys. Default `"local"`. */
  readonly name?: string | undefined
  /**
   * Model for `generate`/`stream` when a request names none. A folder under `modelPath`
   * (or, with `allowRemoteModels`, a Hugging Face id such as `Xenova/distilgpt2`).
   * Encoder-decoder models (T5, BART) run as text2text generation. Default `"tiny-gpt2"`.
   */
  readonly generationModel?: string | undefined
  /** Model for `embed` (mean pooling + L2 normalisation). Default `"tiny-bert"`. */
  readonly embeddingModel?: string | undefined
  /** Further models requests may select with `model`; all are loaded when the layer is built. */
  readonly models?:
    | {
        readonly generation?: ReadonlyArray<string> | undefined
        readonly embedding?: ReadonlyArray<string> | undefined
      }
    | undefined
  /** Directory with one folder per local model. Default: the bundled `models/`. */
  readonly modelPath?: string | URL | undefined
  /** Download missing models from the Hugging Face hub into `cacheDir`. Default `false` (offline). */
  readonly allowRemoteModels?: boolean | undefined
  /** Where downloaded models are cached. Default: transformers.js's own (`node_modules/@xenova/transformers/.cache`). */
  readonly cacheDir?: string | undefined
  /** Hub to download from (a mirror, say). Default `https://huggingface.co/`. */
  readonly remoteHost?: string | undefined
  /** Load `*_quantized.onnx` files (the transformers.js default). Default `true`. */
  readonly quantized?: boolean | undefined
  /** Instances per model, at most (each call holds one for its duration). Default 1. */
  readonly poolSize?: number | undefined
  /** Instances per model kept loaded even when idle. Default 0. */
  readonly minInstances?: number | undefined
  /** Idle instances above `minInstances` are released after this long. Default 10 minutes. */
  readonly idleTimeToLive?: Duration.DurationInput | undefined
  /** Most texts in one batched embedding inference. Default 32. */
  readonly maxBatchSize?: number | undefined
  /**
   * How long a batch waits for more texts before it runs (unless it fills first). Default 0:
   * a batch takes the callers that are ready when it starts, without a timer.
   */
  readonly batchWindow?: Duration.DurationInput | undefined
  /** On scope close, how long in-flight calls may finish before they are interrupted. Default 10 s. */
  readonly shutdownDeadline?: Duration.DurationInput | undefined
  /** New tokens per generation when a request sets no `maxTokens`. Default 128. */
  readonly maxTokens?: number | undefined
}

/**
 * Builds the provider in a scope: sets transformers.js's (process-wide) environment from
 * the options, loads every configured model once (a missing or broken model fails here
 * with a `ModelError` of reason `"Unavailable"` naming the path it looked in), and releases
 * every instance when the scope closes.
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
export const make = (options: Options = {}): Effect.Effect<Service, ModelError, Scope.Scope> =>
  internal.makeWith({ ...options, modelPath: options.modelPath ?? defaultModelPath })

/**
 * The local provider as the `ModelProvider` service.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<ModelProvider, ModelError> =>
  Layer.scoped(ModelProvider, make(options))

/**
 * The local provider with its options read from `Config`.
 *
 * @example
 * ```ts
 * import { Config } from "effect"
 * import * as Local from "effect-orchestra/Model/Local"
 *
 * const LocalLive = Local.layerConfig({
 *   generationModel: Config.string("LOCAL_GENERATION_MODEL").pipe(Config.withDefault("tiny-gpt2")),
 *   allowRemoteModels: Config.boolean("LOCAL_ALLOW_REMOTE").pipe(Config.withDefault(false))
 * })
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Config.Wrap<Options>
): Layer.Layer<ModelProvider, ModelError | ConfigError.ConfigError> =>
  Layer.scoped(ModelProvider, Effect.flatMap(ConfigModule.unwrap(config), make))
