/**
 * The model-provider service: `generate`, `stream` and `embed`, with the request and
 * response schemas every provider speaks, and the checks every request passes before any
 * provider sees it (shape, and size limits).
 *
 * @since 0.1.0
 */
import { Context, Effect, Result, Schema, type Stream } from "effect"
import { type AiError, invalidRequest, ModelError } from "./AiError.js"
import * as Input from "./Input.js"

/**
 * @since 0.1.0
 * @category schemas
 */
export const Role = Schema.Literals(["system", "user", "assistant", "tool"])

/**
 * @since 0.1.0
 * @category models
 */
export type Role = typeof Role.Type

/**
 * A tool call the model asked for; `arguments` is the JSON text the model produced.
 *
 * @since 0.2.0
 * @category schemas
 */
export const ToolCall = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  arguments: Schema.String
})

/**
 * @since 0.2.0
 * @category models
 */
export type ToolCall = typeof ToolCall.Type

/**
 * One message of a conversation. `tool` messages answer the assistant's `toolCalls`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Message = Schema.Struct({
  role: Role,
  content: Schema.String,
  /** For `tool` messages: the id of the call answered. */
  toolCallId: Schema.optional(Schema.String),
  /** For `assistant` messages: the tool calls it made. */
  toolCalls: Schema.optional(Schema.Array(ToolCall))
})

/**
 * @since 0.1.0
 * @category models
 */
export type Message = typeof Message.Type

/**
 * A tool the model may call: a name, a description and a JSON Schema of its parameters.
 * Passed through to providers that support tools; others refuse the request (`field: "tools"`).
 *
 * @since 0.2.0
 * @category schemas
 */
export const ToolDefinition = Schema.Struct({
  name: Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(64)),
  description: Schema.optional(Schema.String),
  parameters: Schema.optional(Schema.Record(Schema.String, Schema.Unknown))
})

/**
 * @since 0.2.0
 * @category models
 */
export type ToolDefinition = typeof ToolDefinition.Type

/**
 * The shape of the answer: free text, any JSON object, or JSON matching a schema.
 *
 * @since 0.2.0
 * @category schemas
 */
export const ResponseFormat = Schema.Union([
  Schema.Struct({ type: Schema.Literal("text") }),
  Schema.Struct({ type: Schema.Literal("json_object") }),
  Schema.Struct({
    type: Schema.Literal("json_schema"),
    name: Schema.String,
    schema: Schema.Record(Schema.String, Schema.Unknown),
    strict: Schema.optional(Schema.Boolean)
  })
])

/**
 * @since 0.2.0
 * @category models
 */
export type ResponseFormat = typeof ResponseFormat.Type

const Temperature = Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 2 }))
const TopP = Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 1 }))
const MaxTokens = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1_000_000 }))
const ModelId = Schema.String.check(Schema.isTrimmed(), Schema.isMinLength(1))

/**
 * A generation request. Exactly one of `prompt` and `messages` carries the conversation.
 *
 * @since 0.1.0
 * @category schemas
 */
export const GenerateRequest = Schema.Struct({
  /** A plain prompt; sent as one user message. Give `prompt` or `messages`. */
  prompt: Schema.optional(Schema.String),
  messages: Schema.optional(Schema.Array(Message)),
  /** A system prompt, placed before the messages. */
  system: Schema.optional(Schema.String),
  /** Provider-specific model id; the provider's default when absent. */
  model: Schema.optional(ModelId),
  maxTokens: Schema.optional(MaxTokens),
  temperature: Schema.optional(Temperature),
  topP: Schema.optional(TopP),
  stop: Schema.optional(Schema.Array(Schema.String).check(Schema.isMaxLength(16))),
  seed: Schema.optional(Schema.Int),
  tools: Schema.optional(Schema.Array(ToolDefinition).check(Schema.isMaxLength(128))),
  toolChoice: Schema.optional(
    Schema.Union([Schema.Literals(["auto", "none", "required"]), Schema.Struct({ name: Schema.String })])
  ),
  responseFormat: Schema.optional(ResponseFormat)
})

/**
 * @since 0.1.0
 * @category models
 */
export type GenerateRequest = typeof GenerateRequest.Type

/**
 * @since 0.1.0
 * @category schemas
 */
export const FinishReason = Schema.Literals(["stop", "length", "content_filter", "tool_calls", "error", "unknown"])

/**
 * @since 0.1.0
 * @category models
 */
export type FinishReason = typeof FinishReason.Type

/**
 * @since 0.1.0
 * @category schemas
 */
export const Usage = Schema.Struct({
  inputTokens: Schema.Number,
  outputTokens: Schema.Number,
  totalTokens: Schema.Number
})

/**
 * @since 0.1.0
 * @category models
 */
export type Usage = typeof Usage.Type

/**
 * @since 0.1.0
 * @category schemas
 */
export const GenerateResponse = Schema.Struct({
  text: Schema.String,
  finishReason: FinishReason,
  usage: Usage,
  provider: Schema.String,
  model: Schema.String,
  toolCalls: Schema.optional(Schema.Array(ToolCall))
})

/**
 * @since 0.1.0
 * @category models
 */
export type GenerateResponse = typeof GenerateResponse.Type

/**
 * One event of a generation stream: text deltas (and complete tool calls), then exactly
 * one `Finish`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const StreamPart = Schema.Union([
  Schema.TaggedStruct("TextDelta", { text: Schema.String }),
  Schema.TaggedStruct("ToolCall", { call: ToolCall }),
  Schema.TaggedStruct("Finish", {
    finishReason: FinishReason,
    usage: Usage,
    provider: Schema.String,
    model: Schema.String
  })
])

/**
 * @since 0.1.0
 * @category models
 */
export type StreamPart = typeof StreamPart.Type

/**
 * @since 0.1.0
 * @category models
 */
export type TextDelta = Extract<StreamPart, { readonly _tag: "TextDelta" }>

/**
 * @since 0.1.0
 * @category models
 */
export type Finish = Extract<StreamPart, { readonly _tag: "Finish" }>

/**
 * @since 0.1.0
 * @category schemas
 */
export const EmbedRequest = Schema.Struct({
  texts: Schema.NonEmptyArray(Schema.String),
  model: Schema.optional(ModelId)
})

/**
 * @since 0.1.0
 * @category models
 */
export type EmbedRequest = typeof EmbedRequest.Type

/**
 * @since 0.1.0
 * @category schemas
 */
export const EmbedResponse = Schema.Struct({
  /** One vector per input text, in input order. */
  vectors: Schema.Array(Schema.Array(Schema.Number)),
  usage: Schema.optional(Usage),
  provider: Schema.String,
  model: Schema.String
})

/**
 * @since 0.1.0
 * @category models
 */
export type EmbedResponse = typeof EmbedResponse.Type

/**
 * What a model provider does. Implementations fail only with `AiError`s, map every
 * low-level failure at their boundary, bound every response body and every stream (an
 * idle deadline of their own), and are interrupted cleanly (an interrupted call releases
 * its connection or pool slot).
 *
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Provider name, used in metrics, provenance and breaker keys. */
  readonly name: string
  readonly defaultModel: string
  readonly generate: (request: GenerateRequest) => Effect.Effect<GenerateResponse, AiError>
  readonly stream: (request: GenerateRequest) => Stream.Stream<StreamPart, AiError>
  readonly embed: (request: EmbedRequest) => Effect.Effect<EmbedResponse, AiError>
  /**
   * Generations this provider serves at once (a pool of one local model instance: 1). The
   * executor queues `generate` and `stream` calls beyond it, so its latency and concurrency
   * figures separate the time queued from the time served. Not applied to `embed` (a
   * provider batches concurrent embed calls itself). Absent: unbounded.
   */
  readonly maxConcurrency?: number | undefined
}

/**
 * @since 0.1.0
 * @category services
 */
export class ModelProvider extends Context.Service<ModelProvider, Service>()("effect-orchestra/ModelProvider") {}

/**
 * The longest wait for a stream's next chunk (the first one included), in milliseconds,
 * that the code reading a provider's stream enforces itself; `undefined` when it enforces
 * none. The executor sets it while it reads a provider's stream under its first-chunk and
 * idle deadlines. A provider may then skip an idle timer of its own that is no stricter:
 * the built-in ones do, which saves a fiber and a hand-over per chunk (`Stream.timeout`
 * reads its stream on a fiber of its own).
 *
 * @since 0.2.0
 * @category references
 */
export const ChunkDeadline = Context.Reference<number | undefined>("effect-orchestra/Model/ChunkDeadline", {
  defaultValue: () => undefined
})

/**
 * Bounds on a request, checked before any provider sees it.
 *
 * @since 0.2.0
 * @category models
 */
export interface RequestLimits {
  /** Characters of prompt, system prompt and messages together. Default 1,000,000. */
  readonly maxInputChars: number
  /** Messages in a conversation. Default 1,000. */
  readonly maxMessages: number
  /** Texts in one embedding request. Default 2,048. */
  readonly maxEmbedTexts: number
}

/**
 * @since 0.2.0
 * @category constructors
 */
export const defaultRequestLimits: RequestLimits = {
  maxInputChars: 1_000_000,
  maxMessages: 1_000,
  maxEmbedTexts: 2_048
}

/**
 * Checks user-given limits (positive integers), filling in the defaults.
 *
 * @since 0.2.0
 * @category constructors
 */
export const requestLimits = (
  input: Partial<RequestLimits> = {},
  path = "requestLimits"
): Input.Checked<RequestLimits> =>
  Result.map(
    Input.all([
      Input.positiveInt(`${path}.maxInputChars`, input.maxInputChars ?? defaultRequestLimits.maxInputChars),
      Input.positiveInt(`${path}.maxMessages`, input.maxMessages ?? defaultRequestLimits.maxMessages),
      Input.positiveInt(`${path}.maxEmbedTexts`, input.maxEmbedTexts ?? defaultRequestLimits.maxEmbedTexts)
    ]),
    ([maxInputChars, maxMessages, maxEmbedTexts]) => ({ maxInputChars, maxMessages, maxEmbedTexts })
  )

const decodeGenerate = Schema.decodeUnknownResult(GenerateRequest, { onExcessProperty: "error" })
const decodeEmbed = Schema.decodeUnknownResult(EmbedRequest, { onExcessProperty: "error" })
const isGenerate = Schema.is(GenerateRequest)
const isEmbed = Schema.is(EmbedRequest)
const generateKeys: ReadonlySet<string> = new Set(Object.keys(GenerateRequest.fields))
const embedKeys: ReadonlySet<string> = new Set(Object.keys(EmbedRequest.fields))

const hasOnlyKeys = (value: object, keys: ReadonlySet<string>): boolean => {
  for (const key in value) if (!keys.has(key)) return false
  return true
}

const roles: ReadonlySet<string> = new Set(["system", "user", "assistant"])
const optionalString = (v: unknown) => v === undefined || typeof v === "string"
const inRange = (v: unknown, min: number, max: number) =>
  v === undefined || (typeof v === "number" && v >= min && v <= max)

// The common request shapes, checked by hand: `Schema.is` costs ~1.5 us a request on the hot
// path. Conservative: anything unusual (tools, tool messages, stop lists...) goes to the Schema,
// which stays the definition (a property test checks that this never accepts what it refuses).
const isPlainGenerate = (r: Record<string, unknown>): boolean => {
  for (const key in r) {
    const v = r[key]
    switch (key) {
      case "prompt":
      case "system":
        if (typeof v !== "string") return false
        break
      case "messages": {
        if (!Array.isArray(v)) return false
        for (const m of v) {
          if (typeof m !== "object" || m === null || !roles.has(m.role) || typeof m.content !== "string") return false
          for (const k in m) if (k !== "role" && k !== "content") return false
        }
        break
      }
      case "model":
        if (typeof v !== "string" || v.length === 0 || v.trim() !== v) return false
        break
      case "maxTokens":
        if (!Number.isInteger(v) || !inRange(v, 1, 1_000_000)) return false
        break
      case "temperature":
        if (!inRange(v, 0, 2) || Number.isNaN(v)) return false
        break
      case "topP":
        if (!inRange(v, 0, 1) || Number.isNaN(v)) return false
        break
      case "seed":
        if (!Number.isInteger(v)) return false
        break
      default:
        return false
    }
  }
  return optionalString(r.prompt)
}

const shapeError = (error: Schema.SchemaError, what: string): ModelError => {
  const issue = Input.issueOf(error)
  return invalidRequest(issue.path, `${issue.message} (in the ${what})`)
}

const invalid = (field: string, message: string) => invalidRequest(field, message)
const refuse = (field: string, message: string) => Effect.fail(invalid(field, message))

/**
 * Checks a generation request before any provider sees it: its shape (unknown fields are
 * refused, `temprature` included), that it carries a non-empty conversation, and the size
 * limits. Fails with an `InvalidRequest` naming the field.
 *
 * @since 0.1.0
 * @category validation
 */
export const validateGenerate = (
  request: GenerateRequest,
  limits: RequestLimits = defaultRequestLimits
): Effect.Effect<GenerateRequest, ModelError> => {
  const error = checkGenerate(request, limits)
  return error === undefined ? Effect.succeed(request) : Effect.fail(error)
}

/**
 * {@link validateGenerate} without an Effect, for hot paths: the error, or `undefined`
 * when the request is valid.
 *
 * @since 0.2.0
 * @category validation
 */
export const checkGenerate = (
  request: GenerateRequest,
  limits: RequestLimits = defaultRequestLimits
): ModelError | undefined => {
  if (typeof request !== "object" || request === null) {
    return invalid("request", `expected an object, got ${request === null ? "null" : typeof request}`)
  }
  if (
    !isPlainGenerate(request as Record<string, unknown>) &&
    (!isGenerate(request) || !hasOnlyKeys(request, generateKeys))
  ) {
    const decoded = decodeGenerate(request)
    if (Result.isFailure(decoded)) return shapeError(decoded.failure, "request")
  }
  if (request.prompt === undefined && request.messages === undefined) {
    return invalid("prompt", "give either `prompt` or `messages`")
  }
  if (request.prompt !== undefined && request.messages !== undefined) {
    return invalid("messages", "give either `prompt` or `messages`, not both")
  }
  let chars = request.system?.length ?? 0
  if (request.prompt !== undefined) {
    if (request.prompt.trim().length === 0) return invalid("prompt", "the prompt is empty")
    chars += request.prompt.length
  } else {
    const messages = request.messages!
    if (messages.length === 0) return invalid("messages", "`messages` must not be empty")
    if (messages.length > limits.maxMessages) {
      return invalid("messages", `${messages.length} messages exceed the limit of ${limits.maxMessages}`)
    }
    let anyContent = false
    for (const message of messages) {
      chars += message.content.length
      if (message.content.trim().length > 0 || message.toolCalls !== undefined) anyContent = true
    }
    if (!anyContent) return invalid("messages", "every message is empty")
  }
  if (chars > limits.maxInputChars) {
    return invalid("prompt", `the input has ${chars} characters, over the limit of ${limits.maxInputChars}`)
  }
  return undefined
}

/**
 * Checks an embedding request before any provider sees it.
 *
 * @since 0.1.0
 * @category validation
 */
export const validateEmbed = (
  request: EmbedRequest,
  limits: RequestLimits = defaultRequestLimits
): Effect.Effect<EmbedRequest, ModelError> => {
  if (typeof request !== "object" || request === null) {
    return refuse("request", `expected an object, got ${request === null ? "null" : typeof request}`)
  }
  if (!isEmbed(request) || !hasOnlyKeys(request, embedKeys)) {
    const decoded = decodeEmbed(request)
    if (Result.isFailure(decoded)) return Effect.fail(shapeError(decoded.failure, "embedding request"))
  }
  if (request.texts.length > limits.maxEmbedTexts) {
    return refuse("texts", `${request.texts.length} texts exceed the limit of ${limits.maxEmbedTexts}`)
  }
  let chars = 0
  for (const text of request.texts) chars += text.length
  if (chars > limits.maxInputChars) {
    return refuse("texts", `the input has ${chars} characters, over the limit of ${limits.maxInputChars}`)
  }
  return Effect.succeed(request)
}

/**
 * Turns a schema failure on a provider's answer into a `Decode` error naming the field.
 *
 * @since 0.1.0
 * @category errors
 */
export const decodeError = (error: Schema.SchemaError, provider: string): ModelError => {
  const issue = Input.issueOf(error)
  return new ModelError({
    reason: "Decode",
    message: `malformed response: ${issue.path}: ${issue.message}`,
    field: issue.path,
    provider
  })
}

/**
 * The conversation of a request as messages, system prompt first.
 *
 * @since 0.1.0
 * @category utils
 */
export const toMessages = (request: GenerateRequest): ReadonlyArray<Message> => {
  const conversation: ReadonlyArray<Message> = request.messages ?? [{ role: "user", content: request.prompt ?? "" }]
  return request.system === undefined ? conversation : [{ role: "system", content: request.system }, ...conversation]
}

/**
 * A rough token count (4 characters a token) for providers that report none.
 *
 * @since 0.1.0
 * @category utils
 */
export const estimateTokens = (text: string): number => Math.ceil(text.length / 4)

/**
 * The estimated input tokens of a request (for rate limits and budgets before the call).
 *
 * @since 0.2.0
 * @category utils
 */
export const estimateInputTokens = (request: GenerateRequest): number => {
  let chars = request.system?.length ?? 0
  if (request.prompt !== undefined) chars += request.prompt.length
  for (const message of request.messages ?? []) chars += message.content.length
  return Math.ceil(chars / 4)
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const usage = (inputTokens: number, outputTokens: number): Usage => ({
  inputTokens,
  outputTokens,
  totalTokens: inputTokens + outputTokens
})
