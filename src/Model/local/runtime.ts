/**
 * The boundary with transformers.js 2.x: the optional package is imported dynamically when
 * a provider is built (nothing reachable from the package root imports it statically), its
 * process-wide settings are set, and models are loaded into instances.
 *
 * @internal
 */
import { access } from "node:fs/promises"
import * as path from "node:path"
import { type Clock, Effect } from "effect"
import { ModelError, ShuttingDownError } from "../../AiError.js"
import * as Input from "../../Input.js"
import type { PromptTokenizer } from "./decoding.js"
import type { TokenizerParts } from "./tokenizer.js"
import { type Instance, makeInstance, type PretrainedModelLike, type Task, type TensorLike } from "./instance.js"

/** The optional peer dependency, and how to install it. */
export const PACKAGE = "@xenova/transformers"
export const INSTALL = `npm install ${PACKAGE}`

// ---------------------------------------------------------------------------------------
// The parts of transformers.js used here, typed structurally (its own types are not needed
// to compile this package, so it stays optional)

export interface Encoded {
  readonly input_ids: TensorLike
  readonly attention_mask: TensorLike
  readonly token_type_ids?: TensorLike | undefined
}

export interface TokenizerLike extends PromptTokenizer, TokenizerParts {
  (
    text: string | ReadonlyArray<string>,
    options?: { readonly padding?: boolean; readonly truncation?: boolean; readonly add_special_tokens?: boolean }
  ): Encoded
  decode(
    ids: ReadonlyArray<number>,
    options?: { readonly skip_special_tokens?: boolean; readonly clean_up_tokenization_spaces?: boolean }
  ): string
  /** Where `truncation` cuts (transformers.js reads it on every call). */
  model_max_length?: number | undefined
}

interface PretrainedOptions {
  readonly quantized: boolean
  readonly local_files_only: boolean
  readonly cache_dir?: string | undefined
}

interface AutoClass<A> {
  from_pretrained(id: string, options: PretrainedOptions): Promise<A>
}

/** What this library needs from the `@xenova/transformers` module. */
export interface Transformers {
  readonly env: {
    allowRemoteModels: boolean
    allowLocalModels: boolean
    localModelPath: string
    cacheDir: string | null
    remoteHost: string
  }
  readonly AutoConfig: AutoClass<{ readonly is_encoder_decoder?: boolean }>
  readonly AutoTokenizer: AutoClass<TokenizerLike>
  readonly AutoModel: AutoClass<PretrainedModelLike>
  readonly AutoModelForCausalLM: AutoClass<PretrainedModelLike>
  readonly AutoModelForSeq2SeqLM: AutoClass<PretrainedModelLike>
  readonly mean_pooling: (hidden: TensorLike, mask: TensorLike) => TensorLike
}

/** Imports the transformers.js module; tests inject one that fails. */
export type Importer = () => Promise<unknown>

// A specifier in a variable: neither TypeScript nor a bundler resolves it statically.
const specifier: string = PACKAGE
export const importTransformers: Importer = () => import(specifier)

const codeOf = (u: unknown): string | undefined =>
  typeof u === "object" && u !== null && "code" in u && typeof u.code === "string" ? u.code : undefined

// Node's "Cannot find package 'x' imported from <path>": the path (this file's) tells a user nothing, and cut to the
// message bound it ended mid-word; which package is missing is what says what to do.
const whyNotLoaded = (cause: unknown, code: string | undefined): string => {
  const missing =
    code === "ERR_MODULE_NOT_FOUND" && cause instanceof Error && typeof cause.message === "string"
      ? /^Cannot find package '([^'\s]{1,214})'/.exec(cause.message)?.[1]
      : undefined
  if (missing === undefined) return Input.thrownMessage(cause)
  return missing === PACKAGE ? "it is not installed" : `its dependency '${missing}' is not installed`
}

const isTransformers = (u: unknown): u is Transformers => {
  if (typeof u !== "object" || u === null) return false
  const m = u as Record<string, unknown>
  return (
    typeof m.env === "object" &&
    m.env !== null &&
    typeof m.AutoTokenizer === "function" &&
    typeof m.AutoModel === "function" &&
    typeof m.AutoModelForCausalLM === "function" &&
    typeof m.AutoModelForSeq2SeqLM === "function" &&
    typeof m.AutoConfig === "function" &&
    typeof m.mean_pooling === "function"
  )
}

/**
 * Imports transformers.js. A missing (or broken) install fails with an `Unavailable`
 * `ModelError` that names the package and the command that installs it.
 */
export const loadTransformers = (importer: Importer, provider: string): Effect.Effect<Transformers, ModelError> =>
  Effect.tryPromise({
    try: importer,
    catch: (cause) => {
      const code = codeOf(cause)
      return new ModelError({
        reason: "Unavailable",
        provider,
        message: `${provider}: cannot load the optional peer dependency ${PACKAGE}${code === undefined ? "" : ` (${code})`}: ${whyNotLoaded(cause, code)}. Install it with \`${INSTALL}\``,
        cause
      })
    }
  }).pipe(
    Effect.flatMap((module) =>
      isTransformers(module)
        ? Effect.succeed(module)
        : Effect.fail(
            new ModelError({
              reason: "Unavailable",
              provider,
              message: `${provider}: ${PACKAGE} does not export what this library needs (transformers.js 2.x); install it with \`${INSTALL}\``
            })
          )
    )
  )

// ---------------------------------------------------------------------------------------
// Loading

/** What a model is loaded for: generation models are causal or encoder-decoder by their config. */
export type Purpose = "generation" | "embedding"

/**
 * Loads one instance of a model for a purpose. Interrupted, or stopped by the provider's
 * shutdown, it returns at once: the load it abandons goes on (transformers.js cannot stop it)
 * and what it loads is disposed when it arrives.
 */
export type Loader = (modelId: string, purpose: Purpose) => Effect.Effect<Instance, ModelError | ShuttingDownError>

export interface LoadOptions {
  readonly provider: string
  /** Directory holding one folder per local model id. */
  readonly modelPath: string
  readonly allowRemoteModels: boolean
  readonly cacheDir?: string | undefined
  readonly remoteHost: string
  readonly quantized: boolean
}

/**
 * transformers.js keeps its settings in one module-level `env` object: they apply to the
 * whole process, not to one provider.
 */
const configure = (lib: Transformers, options: LoadOptions, defaultCacheDir: string | null): void => {
  lib.env.allowLocalModels = true
  lib.env.allowRemoteModels = options.allowRemoteModels
  lib.env.localModelPath = options.modelPath.endsWith(path.sep) ? options.modelPath : `${options.modelPath}${path.sep}`
  lib.env.remoteHost = options.remoteHost
  lib.env.cacheDir = options.cacheDir ?? defaultCacheDir
}

/** The loads of one transformers.js module: those running share the settings of `key`. */
interface Settings {
  key: string
  running: number
  readonly waiting: Array<{ readonly key: string; readonly start: () => void }>
  /** The module's own cacheDir, before any provider set one: the cache of a provider without `cacheDir`. */
  readonly defaultCacheDir: string | null
}

// Keyed by the module's `env` (what its loads share): process-wide state is the only place
// that sees every provider's loads.
const settingsOf = new WeakMap<Transformers["env"], Settings>()

const settingsFor = (lib: Transformers): Settings => {
  let settings = settingsOf.get(lib.env)
  if (settings === undefined) {
    settings = { key: "", running: 0, waiting: [], defaultCacheDir: lib.env.cacheDir }
    settingsOf.set(lib.env, settings)
  }
  return settings
}

/**
 * Runs `start` (a load, which calls the returned `leave` once it has settled) when the
 * module's `env` can hold `options`: transformers.js reads it throughout a load (its files
 * one after the other), so a load with other settings (another provider's modelPath) waits
 * until the running ones have settled instead of switching them under their feet; loads with
 * the same settings overlap. Answers a cancel for a load still waiting.
 */
const withSettings = (lib: Transformers, options: LoadOptions, start: (leave: () => void) => void): (() => void) => {
  const key = JSON.stringify([
    options.modelPath,
    options.allowRemoteModels,
    options.remoteHost,
    options.cacheDir ?? null
  ])
  const s = settingsFor(lib)
  const leave = () => {
    s.running -= 1
    if (s.running > 0 || s.waiting.length === 0) return
    // The longest waiting settings go next, with every load waiting for the same.
    s.key = s.waiting[0]!.key
    const next = s.waiting.filter((w) => w.key === s.key)
    s.waiting.splice(0, s.waiting.length, ...s.waiting.filter((w) => w.key !== s.key))
    s.running += next.length
    for (const w of next) w.start()
  }
  const run = () => {
    configure(lib, options, s.defaultCacheDir)
    start(leave)
  }
  if (s.running === 0 || (s.key === key && s.waiting.length === 0)) {
    s.key = key
    s.running += 1
    run()
    return () => {}
  }
  const entry = { key, start: run }
  s.waiting.push(entry)
  return () => {
    const i = s.waiting.indexOf(entry)
    if (i >= 0) s.waiting.splice(i, 1)
  }
}

const unavailable = (options: LoadOptions, modelId: string, message: string, cause?: unknown): ModelError =>
  new ModelError({
    reason: "Unavailable",
    message: `${options.provider}: ${message}`,
    provider: options.provider,
    model: modelId,
    ...(cause === undefined ? {} : { cause })
  })

/**
 * The transformers.js loader: every instance gets its own sessions. `halt`, aborted by the
 * provider's shutdown, abandons the loads in progress: they fail with its reason (a
 * `ShuttingDownError`).
 */
export const makeLoader = (lib: Transformers, options: LoadOptions, clock: Clock.Clock, halt: AbortSignal): Loader =>
  Effect.fnUntraced(function* (modelId: string, purpose: Purpose) {
    const folder = path.join(options.modelPath, modelId)
    const cacheDir = options.cacheDir ?? settingsFor(lib).defaultCacheDir ?? undefined
    if (!options.allowRemoteModels) {
      // Offline, a model is either in modelPath or downloaded earlier into the cache.
      const candidates = [folder, ...(cacheDir === undefined ? [] : [path.join(cacheDir, modelId)])]
      // Each place is named with the setting it came from: a modelPath given and missing the
      // model is a misplaced model, not a modelPath to set.
      const places = [
        `${folder} (modelPath)`,
        ...(cacheDir === undefined
          ? []
          : [`${path.join(cacheDir, modelId)} (${options.cacheDir === undefined ? "cache" : "cacheDir"})`])
      ]
      yield* Effect.firstSuccessOf(
        candidates.map((dir) => Effect.tryPromise(() => access(path.join(dir, "config.json"))))
      ).pipe(
        Effect.mapError((cause) =>
          unavailable(
            options,
            modelId,
            `model "${modelId}" not found: no config.json in ${places.join(" or ")}, and remote models are disabled (allowRemoteModels: false), so it is not downloaded`,
            cause
          )
        )
      )
    }
    const pretrained: PretrainedOptions = {
      quantized: options.quantized,
      local_files_only: !options.allowRemoteModels,
      cache_dir: options.cacheDir
    }
    const where = options.allowRemoteModels
      ? `${folder} or ${options.remoteHost}${modelId} (cache: ${cacheDir ?? "none"})`
      : folder
    return yield* Effect.callback<Instance, ModelError | ShuttingDownError>((resume, interrupted) => {
      let settled = false
      // Given back once the load has settled or is abandoned: an abandoned load may still wait
      // (a stalled download) and its result is discarded, so it holds back no other settings.
      let leaveSettings: (() => void) | undefined
      const release = () => {
        const leave = leaveSettings
        leaveSettings = undefined
        leave?.()
      }
      const settle = (effect: Effect.Effect<Instance, ModelError | ShuttingDownError>) => {
        settled = true
        release()
        halt.removeEventListener("abort", onHalt)
        resume(effect)
      }
      const onHalt = () => {
        if (!settled) settle(Effect.fail(stoppedBy(halt, options, modelId)))
      }
      // Abandoned: interrupted (loadTimeout, a closing pool) or stopped by the shutdown.
      const abandoned = () => settled || interrupted.aborted
      if (halt.aborted) return onHalt()
      halt.addEventListener("abort", onHalt)
      const cancel = withSettings(lib, options, (leave) => {
        leaveSettings = leave
        // Stopped by the shutdown while it waited: nothing to load.
        if (abandoned()) return release()
        loadInstance(lib, modelId, purpose, pretrained, clock, abandoned)
          .finally(release)
          .then(
            (loaded) => {
              if (!abandoned()) return settle(Effect.succeed(loaded.instance))
              // Nobody will take it: its sessions are released now (a failure to do so has no one to report to).
              Promise.resolve()
                .then(loaded.release)
                .catch(() => undefined)
            },
            (cause: unknown) => {
              if (abandoned()) return
              settle(
                Effect.fail(
                  unavailable(
                    options,
                    modelId,
                    `cannot load model "${modelId}" from ${where}: ${Input.thrownMessage(cause)}`,
                    cause
                  )
                )
              )
            }
          )
      })
      return Effect.sync(() => {
        cancel()
        release()
        halt.removeEventListener("abort", onHalt)
      })
    })
  })

const stoppedBy = (halt: AbortSignal, options: LoadOptions, modelId: string): ShuttingDownError =>
  halt.reason instanceof ShuttingDownError
    ? halt.reason
    : new ShuttingDownError({
        message: `${options.provider}: the provider closed while model "${modelId}" was loading`
      })

class Abandoned extends Error {}

interface Loaded {
  readonly instance: Instance
  /** Releases the model's sessions (of an instance nobody took). */
  readonly release: () => Promise<unknown>
}

const loadInstance = async (
  lib: Transformers,
  modelId: string,
  purpose: Purpose,
  options: PretrainedOptions,
  clock: Clock.Clock,
  abandoned: () => boolean
): Promise<Loaded> => {
  const [config, tokenizer] = await Promise.all([
    lib.AutoConfig.from_pretrained(modelId, options),
    lib.AutoTokenizer.from_pretrained(modelId, options)
  ])
  // Nothing holds sessions yet: an abandoned load stops before its (largest) part.
  if (abandoned()) throw new Abandoned()
  const [task, auto]: readonly [Task, AutoClass<PretrainedModelLike>] =
    purpose === "embedding"
      ? ["feature-extraction", lib.AutoModel]
      : config.is_encoder_decoder === true
        ? ["text2text-generation", lib.AutoModelForSeq2SeqLM]
        : ["text-generation", lib.AutoModelForCausalLM]
  const model = await auto.from_pretrained(modelId, options)
  return {
    instance: makeInstance({ lib, modelId, task, tokenizer, model, clock }),
    release: () => model.dispose()
  }
}
