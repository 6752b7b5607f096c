/**
 * The `orchestra.config.json` file: providers, domains and policies, validated by a
 * Schema. A bad file is reported field by field (`domains[1].retry.maxAttempts: ...`).
 * API keys never live in the file: each provider names the environment variable it reads.
 *
 * @since 0.1.0
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import { Config, Data, Effect, Either, Option, ParseResult, Schema } from "effect"
import { Reason } from "../AiError.js"
import * as CircuitBreaker from "../CircuitBreaker.js"
import { Domain } from "../Domain.js"
import { DurationInput, RetryPolicy } from "../Policy.js"

const Name = Schema.NonEmptyTrimmedString
const Count = Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))
const Headers = Schema.Record({ key: Schema.String, value: Schema.String })
const EnvName = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z_][A-Za-z0-9_]*$/, { message: () => "Expected an environment variable name such as MY_KEY" })
)

/**
 * The bundled transformers.js provider. `modelPath` is relative to the config file.
 *
 * @since 0.1.0
 * @category schemas
 */
export const LocalProvider = Schema.Struct({
  type: Schema.Literal("local"),
  name: Schema.optional(Name),
  generationModel: Schema.optional(Name),
  embeddingModel: Schema.optional(Name),
  models: Schema.optional(
    Schema.Struct({
      generation: Schema.optional(Schema.Array(Name)),
      embedding: Schema.optional(Schema.Array(Name))
    })
  ),
  modelPath: Schema.optional(Name),
  allowRemoteModels: Schema.optional(Schema.Boolean),
  cacheDir: Schema.optional(Name),
  quantized: Schema.optional(Schema.Boolean),
  poolSize: Schema.optional(Count),
  minInstances: Schema.optional(Schema.Int.pipe(Schema.nonNegative())),
  idleTimeToLive: Schema.optional(DurationInput),
  maxBatchSize: Schema.optional(Count),
  batchWindow: Schema.optional(DurationInput),
  shutdownDeadline: Schema.optional(DurationInput),
  maxTokens: Schema.optional(Count)
})

/**
 * Any server speaking OpenAI's chat completions (OpenAI, vLLM, LM Studio, llama.cpp,
 * Ollama's `/v1`). Without `apiKeyEnv` no key is sent.
 *
 * @since 0.1.0
 * @category schemas
 */
export const OpenAiCompatibleProvider = Schema.Struct({
  type: Schema.Literal("openai-compatible"),
  name: Schema.optional(Name),
  baseUrl: Schema.optional(Name),
  model: Schema.optional(Name),
  embeddingModel: Schema.optional(Name),
  organization: Schema.optional(Name),
  project: Schema.optional(Name),
  apiKeyEnv: Schema.optional(EnvName),
  headers: Schema.optional(Headers),
  streamUsage: Schema.optional(Schema.Boolean)
})

/**
 * Ollama's native API. Without `apiKeyEnv` no key is sent.
 *
 * @since 0.1.0
 * @category schemas
 */
export const OllamaProvider = Schema.Struct({
  type: Schema.Literal("ollama"),
  name: Schema.optional(Name),
  host: Schema.optional(Name),
  model: Schema.optional(Name),
  embeddingModel: Schema.optional(Name),
  api: Schema.optional(Schema.Literal("chat", "generate")),
  keepAlive: Schema.optional(Name),
  apiKeyEnv: Schema.optional(EnvName),
  headers: Schema.optional(Headers)
})

/**
 * Google Gemini. The key is read from `apiKeyEnv` (default `GEMINI_API_KEY`).
 *
 * @since 0.1.0
 * @category schemas
 */
export const GeminiProvider = Schema.Struct({
  type: Schema.Literal("gemini"),
  name: Schema.optional(Name),
  model: Schema.optional(Name),
  embeddingModel: Schema.optional(Name),
  embeddingDimensions: Schema.optional(Count),
  baseUrl: Schema.optional(Name),
  apiVersion: Schema.optional(Name),
  apiKeyEnv: Schema.optional(EnvName),
  headers: Schema.optional(Headers)
})

/**
 * IBM watsonx.ai. The IBM Cloud key is read from `apiKeyEnv` (default `WATSONX_API_KEY`).
 *
 * @since 0.1.0
 * @category schemas
 */
export const WatsonXProvider = Schema.Struct({
  type: Schema.Literal("watsonx"),
  name: Schema.optional(Name),
  projectId: Schema.optional(Name),
  spaceId: Schema.optional(Name),
  url: Schema.optional(Name),
  iamUrl: Schema.optional(Name),
  version: Schema.optional(Name),
  model: Schema.optional(Name),
  embeddingModel: Schema.optional(Name),
  api: Schema.optional(Schema.Literal("chat", "generation")),
  refreshMargin: Schema.optional(DurationInput),
  apiKeyEnv: Schema.optional(EnvName)
})

/**
 * A scripted in-process provider for demos and dry runs: a fixed or uniform latency, an
 * optional fixed reply (default: echoes the prompt), and an optional seeded failure mix.
 *
 * @since 0.1.0
 * @category schemas
 */
export const MockProvider = Schema.Struct({
  type: Schema.Literal("mock"),
  name: Schema.optional(Name),
  model: Schema.optional(Name),
  latency: Schema.optional(
    Schema.Union(DurationInput, Schema.Struct({ uniform: Schema.Tuple(DurationInput, DurationInput) })).annotations({
      message: () => ({
        message: 'Expected a duration (milliseconds, or a string such as "150 millis") or { "uniform": [min, max] }',
        override: true
      })
    })
  ),
  reply: Schema.optional(Schema.String),
  random: Schema.optional(
    Schema.Struct({
      seed: Schema.Int,
      succeed: Schema.Number.pipe(Schema.nonNegative()),
      fail: Schema.optional(
        Schema.partialWith(Schema.Record({ key: Reason, value: Schema.Number.pipe(Schema.nonNegative()) }), {
          exact: true
        })
      ),
      hang: Schema.optional(Schema.Number.pipe(Schema.nonNegative()))
    })
  )
})

/**
 * @since 0.1.0
 * @category schemas
 */
export const Provider = Schema.Union(
  LocalProvider,
  OpenAiCompatibleProvider,
  OllamaProvider,
  GeminiProvider,
  WatsonXProvider,
  MockProvider
)

/**
 * @since 0.1.0
 * @category models
 */
export type Provider = typeof Provider.Type

/**
 * Executor defaults, the shared concurrency limit, breakers and the response cache.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Policies = Schema.Struct({
  executor: Schema.optional(
    Schema.Struct({
      timeout: Schema.optional(DurationInput),
      retry: Schema.optional(RetryPolicy),
      shutdownDeadline: Schema.optional(DurationInput)
    })
  ),
  maxConcurrent: Schema.optional(Schema.Int.pipe(Schema.between(1, 10_000))),
  breakers: Schema.optional(Schema.Union(Schema.Literal(false), CircuitBreaker.Options)),
  cache: Schema.optional(
    Schema.Union(
      Schema.Literal(false),
      Schema.Struct({
        ttl: Schema.optional(DurationInput),
        staleFor: Schema.optional(DurationInput),
        capacity: Schema.optional(Count)
      })
    )
  )
})

/**
 * The whole file. `domains` replaces the predefined `support`, `technical` and `finance`
 * domains; `extraDomains` adds to them.
 *
 * @since 0.1.0
 * @category schemas
 */
export const ConfigFile = Schema.Struct({
  $schema: Schema.optional(Schema.String),
  providers: Schema.optional(Schema.Record({ key: Name, value: Provider })),
  defaultProvider: Schema.optional(Name),
  domains: Schema.optional(Schema.Array(Domain)),
  extraDomains: Schema.optional(Schema.Array(Domain)),
  policies: Schema.optional(Policies)
})

/**
 * @since 0.1.0
 * @category models
 */
export type ConfigFile = typeof ConfigFile.Type

/**
 * One thing wrong with a config file: where (`domains[1].retry.maxAttempts`) and what.
 *
 * @since 0.1.0
 * @category models
 */
export interface Issue {
  readonly path: string
  readonly message: string
}

/**
 * A config file that cannot be used: missing, not JSON, or invalid.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConfigFileError extends Data.TaggedError("ConfigFileError")<{
  readonly file: string
  readonly issues: ReadonlyArray<Issue>
}> {
  override get message(): string {
    return [`invalid config ${this.file}`, ...this.issues.map((i) => `  ${i.path}: ${i.message}`)].join("\n")
  }
}

/**
 * A validated config and where it came from (`file` is undefined for the built-in default).
 *
 * @since 0.1.0
 * @category models
 */
export interface Loaded {
  readonly file: string | undefined
  /** Relative paths in the file (a local `modelPath`) are resolved against this. */
  readonly dir: string
  readonly config: ConfigFile
}

/**
 * The file looked for in the working directory.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultFileName = "orchestra.config.json"

/**
 * The name of the provider used when the file declares none.
 *
 * @since 0.1.0
 * @category constants
 */
export const bundledProviderName = "local"

/**
 * Formats a parse path as `domains[1].retry.maxAttempts`.
 *
 * @since 0.1.0
 * @category utils
 */
export const formatPath = (path: ReadonlyArray<PropertyKey>): string => {
  let out = ""
  for (const key of path) {
    if (typeof key === "number") out += `[${key}]`
    else {
      const name = String(key)
      out += /^[A-Za-z_$][\w$-]*$/.test(name) ? (out === "" ? name : `.${name}`) : `[${JSON.stringify(name)}]`
    }
  }
  return out === "" ? "(root)" : out
}

const describe = (u: unknown): string =>
  u === null ? "null" : Array.isArray(u) ? "an array" : typeof u === "object" ? "an object" : JSON.stringify(u)

/** Schema's own wording for a struct or array is its whole type; say what kind of value was expected instead. */
const simplify = (message: string): string =>
  message
    .replace(/^Expected \{[\s\S]*\}, actual ([\s\S]*)$/, "Expected an object, actual $1")
    .replace(/^Expected ReadonlyArray<[\s\S]*>, actual ([\s\S]*)$/, "Expected an array, actual $1")

/**
 * Keeps the most specific issues: an optional field's "Expected undefined" alternative,
 * and an issue at a path that has a deeper issue below it, say nothing the deeper one
 * does not. Alternatives of a union at the same path are joined.
 */
const toIssues = (raw: ReadonlyArray<ParseResult.ArrayFormatterIssue>): ReadonlyArray<Issue> => {
  const relevant = raw.filter((issue) => !issue.message.startsWith("Expected undefined, actual"))
  const deeper = (a: ReadonlyArray<PropertyKey>, b: ReadonlyArray<PropertyKey>) =>
    b.length > a.length && a.every((key, i) => key === b[i])
  const kept = relevant.filter((issue) => !relevant.some((other) => deeper(issue.path, other.path)))
  const byPath = new Map<string, Array<string>>()
  for (const issue of kept) {
    const path = formatPath(issue.path)
    const messages = byPath.get(path) ?? []
    const message = simplify(issue.message)
    if (!messages.includes(message)) messages.push(message)
    byPath.set(path, messages)
  }
  return Array.from(byPath, ([path, messages]) => ({ path, message: messages.join("; or ") }))
}

const decode = Schema.decodeUnknownEither(ConfigFile, { errors: "all", onExcessProperty: "error" })

/** Checks that need the whole file: references between sections and duplicates. */
const crossCheck = (config: ConfigFile): ReadonlyArray<Issue> => {
  const issues: Array<Issue> = []
  const declared = config.providers === undefined ? [bundledProviderName] : Object.keys(config.providers)
  if (config.providers !== undefined && declared.length === 0) {
    issues.push({
      path: "providers",
      message: "declare at least one provider (or leave `providers` out to use the bundled local model)"
    })
  }
  const known = `declared: ${declared.join(", ") || "none"}`
  if (config.defaultProvider !== undefined && !declared.includes(config.defaultProvider)) {
    issues.push({ path: "defaultProvider", message: `unknown provider "${config.defaultProvider}" (${known})` })
  }
  const seen = new Map<string, string>()
  for (const section of ["domains", "extraDomains"] as const) {
    config[section]?.forEach((domain, i) => {
      if (!declared.includes(domain.provider)) {
        issues.push({ path: `${section}[${i}].provider`, message: `unknown provider "${domain.provider}" (${known})` })
      }
      const first = seen.get(domain.name)
      if (first !== undefined) {
        issues.push({ path: `${section}[${i}].name`, message: `duplicate domain "${domain.name}" (first at ${first})` })
      } else {
        seen.set(domain.name, `${section}[${i}]`)
      }
    })
  }
  return issues
}

/**
 * Validates a parsed JSON value. Every problem is reported, each with its path.
 *
 * @since 0.1.0
 * @category constructors
 */
export const validate = (input: unknown, file = "(config)"): Either.Either<ConfigFile, ConfigFileError> => {
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    return Either.left(
      new ConfigFileError({
        file,
        issues: [{ path: "(root)", message: `Expected a JSON object, actual ${describe(input)}` }]
      })
    )
  }
  const result = decode(input)
  if (Either.isLeft(result)) {
    return Either.left(
      new ConfigFileError({ file, issues: toIssues(ParseResult.ArrayFormatter.formatErrorSync(result.left)) })
    )
  }
  const issues = crossCheck(result.right)
  return issues.length === 0 ? Either.right(result.right) : Either.left(new ConfigFileError({ file, issues }))
}

/**
 * Parses and validates the text of a config file.
 *
 * @since 0.1.0
 * @category constructors
 */
export const parse = (text: string, file = "(config)"): Either.Either<ConfigFile, ConfigFileError> => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (error) {
    return Either.left(
      new ConfigFileError({
        file,
        issues: [
          { path: "(root)", message: `not valid JSON: ${error instanceof Error ? error.message : String(error)}` }
        ]
      })
    )
  }
  return validate(json, file)
}

/**
 * Finds and loads the config: the `--config` path, else `ORCHESTRA_CONFIG`, else
 * `orchestra.config.json` in the working directory if it exists, else the built-in default
 * (the bundled local model with the predefined domains). A path that was asked for
 * explicitly must exist.
 *
 * @since 0.1.0
 * @category constructors
 */
export const load = (
  flag: Option.Option<string>
): Effect.Effect<Loaded, ConfigFileError, FileSystem.FileSystem | Path.Path> =>
  Effect.gen(function* () {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const fromEnv = yield* Config.option(Config.nonEmptyString("ORCHESTRA_CONFIG")).pipe(
      Effect.orElseSucceed(() => Option.none<string>())
    )
    const explicit = Option.orElse(flag, () => fromEnv)
    const cwd = path.resolve(".")
    const candidate = path.resolve(Option.getOrElse(explicit, () => defaultFileName))
    const exists = yield* fs.exists(candidate).pipe(Effect.orElseSucceed(() => false))
    if (!exists) {
      if (Option.isSome(explicit)) {
        return yield* new ConfigFileError({
          file: candidate,
          issues: [{ path: "(file)", message: "no such file" }]
        })
      }
      return { file: undefined, dir: cwd, config: {} }
    }
    const text = yield* fs
      .readFileString(candidate)
      .pipe(
        Effect.mapError(
          (error) => new ConfigFileError({ file: candidate, issues: [{ path: "(file)", message: error.message }] })
        )
      )
    const config = yield* parse(text, candidate)
    return { file: candidate, dir: path.dirname(candidate), config }
  })
