/**
 * The local provider's options, checked where they enter (an `OptionError` naming the field)
 * and resolved to their defaults.
 *
 * @internal
 */
import { fileURLToPath } from "node:url"
import { type Duration, Effect, Result } from "effect"
import * as Input from "../../Input.js"
import * as Model from "../../Model.js"
import type { Options } from "../Local.js"
import type { LoadOptions } from "./runtime.js"

export interface Resolved {
  readonly name: string
  readonly generationModel: string
  readonly embeddingModel: string
  readonly generationModels: ReadonlyArray<string>
  readonly embeddingModels: ReadonlyArray<string>
  readonly poolSize: number
  readonly minInstances: number
  readonly idleTimeToLive: Duration.Duration
  readonly maxBatchSize: number
  readonly batchWindow: Duration.Duration
  readonly shutdownDeadline: Duration.Duration
  readonly loadTimeout: Duration.Duration
  readonly maxTokens: number
  readonly limits: Model.RequestLimits
  readonly load: LoadOptions
}

/** Options with the model directory decided (the public module supplies the bundled one). */
export type ResolvableOptions = Options & { readonly modelPath: string | URL }

const HUGGING_FACE = "https://huggingface.co/"

const text = (path: string, input: unknown): Input.Checked<string> =>
  typeof input === "string" && input.trim().length > 0 && input.trim() === input
    ? Result.succeed(input)
    : Result.fail({
        path,
        message: `expected a non-empty string without surrounding spaces, got ${Input.shown(input)}`
      })

/**
 * A model id is a folder under `modelPath` (and under `cacheDir`, and a repository path on
 * the hub): transformers.js joins it to each as is, so an absolute id, a `..` segment or a
 * URL would read (and, downloading, write) outside them.
 */
const modelId = (path: string, input: unknown): Input.Checked<string> =>
  Result.flatMap(text(path, input), (id) => {
    const segments = id.split("/")
    const why = id.startsWith("/")
      ? "it is an absolute path"
      : id.includes("\\")
        ? "it has a backslash (a path separator on Windows)"
        : id.includes(":")
          ? "it has a colon (a drive letter or a URL)"
          : segments.includes("..")
            ? 'it has a ".." segment'
            : segments.includes(".") || segments.includes("")
              ? 'it has an empty or "." segment'
              : undefined
    return why === undefined
      ? Result.succeed(id)
      : Result.fail({
          path,
          message: `expected a model id under modelPath (a folder name, or org/name such as Xenova/distilgpt2), got ${Input.shown(id)}: ${why}`
        })
  })

const modelIds = (path: string, input: ReadonlyArray<unknown> | undefined): Input.Checked<ReadonlyArray<string>> => {
  if (input === undefined) return Result.succeed([])
  if (!Array.isArray(input)) return Result.fail({ path, message: "expected an array of model ids" })
  const out: Array<string> = []
  for (const [i, item] of input.entries()) {
    const checked = modelId(`${path}[${i}]`, item)
    if (Result.isFailure(checked)) return Result.fail(checked.failure)
    out.push(checked.success)
  }
  return Result.succeed(out)
}

const directory = (path: string, input: unknown): Input.Checked<string> => {
  if (input instanceof URL) {
    if (input.protocol !== "file:") return Result.fail({ path, message: `expected a file: URL, got ${input.href}` })
    return Result.succeed(fileURLToPath(input))
  }
  return text(path, input)
}

const hubUrl = (path: string, input: unknown): Input.Checked<string> => {
  if (typeof input !== "string" || !URL.canParse(input)) {
    return Result.fail({ path, message: `expected an http(s) URL, got ${Input.shown(input)}` })
  }
  const url = new URL(input)
  // fetch refuses a URL with credentials, and transformers.js appends each file's path to the host
  // as text, which a query or fragment would swallow: either failed only at the first download,
  // and the credentials or a token in the query were written into that load's error.
  if (url.username !== "" || url.password !== "") {
    return Result.fail({
      path,
      message: `expected an http(s) URL without credentials (fetch refuses them), got ${url.protocol}//<credentials>@${url.host}${url.pathname}`
    })
  }
  if (url.search !== "" || url.hash !== "") {
    return Result.fail({
      path,
      message: `expected an http(s) URL without a query or fragment (the file's path is appended to it), got ${url.origin}${url.pathname}`
    })
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return Result.fail({ path, message: `expected an http(s) URL, got ${input}` })
  }
  return Result.succeed(url.href.endsWith("/") ? url.href : `${url.href}/`)
}

const flag = (path: string, input: unknown, fallback: boolean): Input.Checked<boolean> =>
  input === undefined
    ? Result.succeed(fallback)
    : typeof input === "boolean"
      ? Result.succeed(input)
      : Result.fail({ path, message: `expected a boolean, got ${Input.shown(input)}` })

const optionKeys: ReadonlySet<string> = new Set(
  Object.keys({
    name: true,
    generationModel: true,
    embeddingModel: true,
    models: true,
    modelPath: true,
    allowRemoteModels: true,
    cacheDir: true,
    remoteHost: true,
    quantized: true,
    poolSize: true,
    minInstances: true,
    idleTimeToLive: true,
    maxBatchSize: true,
    batchWindow: true,
    shutdownDeadline: true,
    loadTimeout: true,
    maxTokens: true,
    requestLimits: true
  } satisfies Record<keyof Options, true>)
)
const modelsKeys: ReadonlySet<string> = new Set(["generation", "embedding"])

interface Models {
  readonly generation?: ReadonlyArray<unknown> | undefined
  readonly embedding?: ReadonlyArray<unknown> | undefined
}

// Read once: a getter that throws is an issue naming its field, not a defect. A misspelt key
// (`generaton`) would leave its default in place unseen.
const readModels = (models: unknown): Input.Checked<Models> => {
  if (models === undefined) return Result.succeed({})
  const notObject = Input.notAnObject("models", models)
  if (notObject !== undefined) return Result.fail(notObject)
  return Result.flatMap(Input.readFields(models as object, undefined, "models"), (read) => {
    const unknown = Input.unknownKey(read, modelsKeys, "models.")
    return unknown === undefined ? Result.succeed(read as Models) : Result.fail(unknown)
  })
}

/** Checks every option (an `OptionError` naming the first wrong one) and fills in the defaults. */
export const resolve = (options: ResolvableOptions): Effect.Effect<Resolved, Input.OptionError> => {
  // A misspelt key (`poolsize`) would leave its default in place unseen.
  const unknown = Input.unknownKey(options, optionKeys)
  if (unknown !== undefined) return Effect.fail(Input.toOptionError(unknown))
  const models = readModels(options.models)
  if (Result.isFailure(models)) return Effect.fail(Input.toOptionError(models.failure))
  const checked = Input.all([
    text("name", Input.orDefault(options.name, "local")),
    modelId("generationModel", Input.orDefault(options.generationModel, "tiny-gpt2")),
    modelId("embeddingModel", Input.orDefault(options.embeddingModel, "tiny-bert")),
    modelIds("models.generation", models.success.generation),
    modelIds("models.embedding", models.success.embedding),
    directory("modelPath", options.modelPath),
    flag("allowRemoteModels", options.allowRemoteModels, false),
    Input.optional(options.cacheDir, (dir) => text("cacheDir", dir)),
    hubUrl("remoteHost", Input.orDefault(options.remoteHost, HUGGING_FACE)),
    flag("quantized", options.quantized, true),
    Input.positiveInt("poolSize", Input.orDefault(options.poolSize, 1), 1_024),
    Input.int("minInstances", Input.orDefault(options.minInstances, 0), { min: 0 }),
    Input.duration("idleTimeToLive", Input.orDefault(options.idleTimeToLive, "10 minutes"), { allowInfinite: true }),
    Input.positiveInt("maxBatchSize", Input.orDefault(options.maxBatchSize, 32), 4_096),
    Input.duration("batchWindow", Input.orDefault(options.batchWindow, 0), { allowZero: true }),
    Input.duration("shutdownDeadline", Input.orDefault(options.shutdownDeadline, "10 seconds"), { allowZero: true }),
    Input.duration("loadTimeout", Input.orDefault(options.loadTimeout, "10 minutes")),
    Input.positiveInt("maxTokens", Input.orDefault(options.maxTokens, 128), 1_000_000),
    Model.requestLimits(options.requestLimits)
  ])
  if (Result.isFailure(checked)) return Effect.fail(Input.toOptionError(checked.failure))
  const [
    name,
    generationModel,
    embeddingModel,
    generationModels,
    embeddingModels,
    modelPath,
    allowRemoteModels,
    cacheDir,
    remoteHost,
    quantized,
    poolSize,
    minInstances,
    idleTimeToLive,
    maxBatchSize,
    batchWindow,
    shutdownDeadline,
    loadTimeout,
    maxTokens,
    limits
  ] = checked.success
  if (minInstances > poolSize) {
    return Effect.fail(
      Input.toOptionError({
        path: "minInstances",
        message: `expected at most poolSize (${poolSize}), got ${minInstances}`
      })
    )
  }
  return Effect.succeed({
    name,
    generationModel,
    embeddingModel,
    generationModels: [...new Set([generationModel, ...generationModels])],
    embeddingModels: [...new Set([embeddingModel, ...embeddingModels])],
    poolSize,
    minInstances,
    idleTimeToLive,
    maxBatchSize,
    batchWindow,
    shutdownDeadline,
    loadTimeout,
    maxTokens,
    limits,
    load: { provider: name, modelPath, allowRemoteModels, cacheDir, remoteHost, quantized }
  })
}
