/**
 * The shape of `orchestra.config.json`: which fields exist and the type of each. Values
 * (ranges, durations, URLs, domains) are left to the library's own checks, so a number
 * in a file is refused with the same message as in code.
 *
 * @since 0.2.0
 */
import { Schema } from "effect"

const opt = Schema.optionalKey
const Text = Schema.String
/** Integer or range checks are the library's, so the messages are the same as in code. */
const Num = Schema.Number
const Duration = Schema.Union([Schema.Number, Schema.String]).annotate({
  expected: 'a duration (milliseconds, or a string such as "30 seconds")'
})
const Headers = Schema.Record(Schema.String, Schema.String)
const EnvName = Schema.String.check(
  Schema.isPattern(/^[A-Za-z_][A-Za-z0-9_]*$/, {
    message: "expected the name of an environment variable such as MY_API_KEY (the key itself never goes in the file)"
  })
)
const RequestLimits = Schema.Struct({ maxInputChars: opt(Num), maxMessages: opt(Num), maxEmbedTexts: opt(Num) })

const httpFields = {
  timeout: opt(Duration),
  streamIdleTimeout: opt(Duration),
  maxResponseBytes: opt(Num),
  maxEventBytes: opt(Num),
  allowPlainHttpSecrets: opt(Schema.Boolean)
}

/**
 * The bundled transformers.js provider (`Model/Local`). `modelPath` and `cacheDir` are relative to the
 * config file.
 *
 * @since 0.1.0
 * @category schemas
 */
export const LocalProvider = Schema.Struct({
  type: Schema.Literal("local"),
  name: opt(Text),
  generationModel: opt(Text),
  embeddingModel: opt(Text),
  models: opt(Schema.Struct({ generation: opt(Schema.Array(Text)), embedding: opt(Schema.Array(Text)) })),
  modelPath: opt(Text),
  allowRemoteModels: opt(Schema.Boolean),
  cacheDir: opt(Text),
  remoteHost: opt(Text),
  quantized: opt(Schema.Boolean),
  poolSize: opt(Num),
  minInstances: opt(Num),
  idleTimeToLive: opt(Duration),
  maxBatchSize: opt(Num),
  batchWindow: opt(Duration),
  shutdownDeadline: opt(Duration),
  loadTimeout: opt(Duration),
  maxTokens: opt(Num),
  requestLimits: opt(RequestLimits)
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
  name: opt(Text),
  baseUrl: opt(Text),
  model: opt(Text),
  embeddingModel: opt(Text),
  embeddingDimensions: opt(Num),
  organization: opt(Text),
  project: opt(Text),
  apiKeyEnv: opt(EnvName),
  headers: opt(Headers),
  streamUsage: opt(Schema.Boolean),
  embeddingEncoding: opt(Schema.Literals(["float", "base64"])),
  maxTokensField: opt(Schema.Literals(["max_tokens", "max_completion_tokens"])),
  sendThoughtSignatures: opt(Schema.Boolean),
  requestLimits: opt(RequestLimits),
  ...httpFields
})

/**
 * Ollama's native API. Without `apiKeyEnv` no key is sent.
 *
 * @since 0.1.0
 * @category schemas
 */
export const OllamaProvider = Schema.Struct({
  type: Schema.Literal("ollama"),
  name: opt(Text),
  host: opt(Text),
  model: opt(Text),
  embeddingModel: opt(Text),
  embeddingDimensions: opt(Num),
  api: opt(Schema.Literals(["chat", "generate"])),
  keepAlive: opt(Duration),
  apiKeyEnv: opt(EnvName),
  headers: opt(Headers),
  requestLimits: opt(RequestLimits),
  ...httpFields
})

/**
 * Google Gemini. The key is read from `apiKeyEnv` (default `GEMINI_API_KEY`).
 *
 * @since 0.1.0
 * @category schemas
 */
export const GeminiProvider = Schema.Struct({
  type: Schema.Literal("gemini"),
  name: opt(Text),
  model: opt(Text),
  embeddingModel: opt(Text),
  embeddingDimensions: opt(Num),
  baseUrl: opt(Text),
  apiVersion: opt(Text),
  apiKeyEnv: opt(EnvName),
  headers: opt(Headers),
  requestLimits: opt(RequestLimits),
  ...httpFields
})

/**
 * IBM watsonx.ai. The IBM Cloud key is read from `apiKeyEnv` (default `WATSONX_API_KEY`).
 *
 * @since 0.1.0
 * @category schemas
 */
export const WatsonXProvider = Schema.Struct({
  type: Schema.Literal("watsonx"),
  name: opt(Text),
  projectId: opt(Text),
  spaceId: opt(Text),
  url: opt(Text),
  iamUrl: opt(Text),
  version: opt(Text),
  model: opt(Text),
  embeddingModel: opt(Text),
  api: opt(Schema.Literals(["chat", "generation"])),
  refreshMargin: opt(Duration),
  tokenTimeout: opt(Duration),
  apiKeyEnv: opt(EnvName),
  requestLimits: opt(RequestLimits),
  ...httpFields
})

const Latency = Schema.Union([
  Schema.Number,
  Schema.String,
  Schema.Struct({ uniform: Schema.Tuple([Duration, Duration]) })
]).annotate({ expected: 'a duration (milliseconds, or a string such as "150 millis") or { "uniform": [min, max] }' })

/**
 * An in-process provider for demos and dry runs (`Model/Mock`): a fixed or uniform
 * latency, a fixed reply (default: `mock answer to: <prompt>`), a seeded random mix of
 * outcomes (`seed`, `random: { success, hang, failures }`), and a script of the first
 * calls' outcomes (`{ "_tag": "Fail", "reason": "Overloaded" }`, `Succeed`, `Hang`).
 *
 * @since 0.1.0
 * @category schemas
 */
export const MockProvider = Schema.Struct({
  type: Schema.Literal("mock"),
  name: opt(Text),
  model: opt(Text),
  latency: opt(Latency),
  chunkDelay: opt(Latency),
  reply: opt(Text),
  seed: opt(Num),
  random: opt(Schema.Struct({ success: Num, hang: opt(Num), failures: opt(Schema.Record(Schema.String, Num)) })),
  script: opt(Schema.Array(Schema.Record(Schema.String, Schema.Unknown))),
  dimensions: opt(Num),
  maxConcurrency: opt(Num)
})

/**
 * The schema of each provider type.
 *
 * @since 0.2.0
 * @category schemas
 */
export const providerSchemas = {
  local: LocalProvider,
  "openai-compatible": OpenAiCompatibleProvider,
  ollama: OllamaProvider,
  gemini: GeminiProvider,
  watsonx: WatsonXProvider,
  mock: MockProvider
} as const

/**
 * The provider types a config may declare.
 *
 * @since 0.2.0
 * @category constants
 */
export const providerTypes = Object.keys(providerSchemas) as ReadonlyArray<keyof typeof providerSchemas>

/**
 * @since 0.1.0
 * @category schemas
 */
export const Provider = Schema.Union([
  LocalProvider,
  OpenAiCompatibleProvider,
  OllamaProvider,
  GeminiProvider,
  WatsonXProvider,
  MockProvider
])

/**
 * @since 0.1.0
 * @category models
 */
export type Provider = typeof Provider.Type

const Options = Schema.Record(Schema.String, Schema.Unknown)
const OffOr = (what: string) =>
  Schema.Union([Schema.Literal(false), Options]).annotate({ expected: `false or an object of ${what}` })

/**
 * The executor's defaults, the shared concurrency limit, and the shared breakers, rate
 * limits and response cache. Their values are checked by the library (`Executor.checkOptions`,
 * the breaker, rate-limit and cache layers).
 *
 * @since 0.1.0
 * @category schemas
 */
export const Policies = Schema.Struct({
  executor: opt(
    Schema.Struct({
      timeout: opt(Duration),
      retry: opt(Options),
      shutdownDeadline: opt(Duration),
      requestLimits: opt(RequestLimits),
      stream: opt(
        Schema.Struct({ firstChunkTimeout: opt(Duration), idleTimeout: opt(Duration), totalTimeout: opt(Duration) })
      )
    })
  ),
  maxConcurrent: opt(Num),
  maxItems: opt(Num),
  breakers: opt(OffOr("breaker options")),
  rateLimits: opt(OffOr("rate limits")),
  cache: opt(OffOr("cache options"))
})

const Domains = Schema.Array(Options)

/**
 * The whole file. `domains` replaces the predefined `support`, `technical` and `finance`
 * domains; `extraDomains` adds to them; `overrideDomains` replaces some by name. Each
 * domain is the library's `Domain` (checked by `Domain.check`).
 *
 * @since 0.1.0
 * @category schemas
 */
export const ConfigFile = Schema.Struct({
  $schema: opt(Text),
  providers: opt(Schema.Record(Schema.String, Options)),
  defaultProvider: opt(Text),
  domains: opt(Domains),
  extraDomains: opt(Domains),
  overrideDomains: opt(Domains),
  policies: opt(Policies)
})

/**
 * The file after its shape was checked (providers typed by their `type`).
 *
 * @since 0.1.0
 * @category models
 */
export type ConfigFile = Omit<typeof ConfigFile.Type, "providers"> & {
  readonly providers?: Readonly<Record<string, Provider>> | undefined
}
