/**
 * The model-provider service: `generate`, `stream` and `embed`, with the request and
 * response schemas every provider speaks.
 *
 * @since 0.1.0
 */
import { Context, Effect, Either, ParseResult, Schema } from "effect"
import type { Stream } from "effect"
import { type AiError, ModelError } from "./AiError.js"

/**
 * @since 0.1.0
 * @category schemas
 */
export const Role = Schema.Literal("system", "user", "assistant")

/**
 * @since 0.1.0
 * @category schemas
 */
export const Message = Schema.Struct({
  role: Role,
  content: Schema.String
})

/**
 * @since 0.1.0
 * @category models
 */
export type Message = typeof Message.Type

const GenerateRequestFields = Schema.Struct({
  /** A plain prompt; sent as one user message. Give `prompt` or `messages`. */
  prompt: Schema.optional(Schema.String),
  messages: Schema.optional(Schema.Array(Message)),
  /** A system prompt, placed before the messages. */
  system: Schema.optional(Schema.String),
  /** Provider-specific model id; the provider's default when absent. */
  model: Schema.optional(Schema.NonEmptyTrimmedString),
  maxTokens: Schema.optional(Schema.Int.pipe(Schema.between(1, 1_000_000))),
  temperature: Schema.optional(Schema.Number.pipe(Schema.between(0, 2))),
  topP: Schema.optional(Schema.Number.pipe(Schema.between(0, 1))),
  stop: Schema.optional(Schema.Array(Schema.String).pipe(Schema.maxItems(16))),
  seed: Schema.optional(Schema.Int)
})

/**
 * A generation request. Exactly one of `prompt` and `messages` carries the conversation.
 *
 * @since 0.1.0
 * @category schemas
 */
export const GenerateRequest = GenerateRequestFields.pipe(
  Schema.filter((r) => {
    if (r.prompt === undefined && r.messages === undefined) {
      return { path: ["prompt"], message: "give either `prompt` or `messages`" }
    }
    if (r.prompt !== undefined && r.messages !== undefined) {
      return { path: ["messages"], message: "give either `prompt` or `messages`, not both" }
    }
    if (r.messages !== undefined && r.messages.length === 0) {
      return { path: ["messages"], message: "`messages` must not be empty" }
    }
    return true
  })
)

/**
 * @since 0.1.0
 * @category models
 */
export type GenerateRequest = typeof GenerateRequest.Type

/**
 * @since 0.1.0
 * @category schemas
 */
export const FinishReason = Schema.Literal("stop", "length", "content_filter", "tool_calls", "error", "unknown")

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
  model: Schema.String
})

/**
 * @since 0.1.0
 * @category models
 */
export type GenerateResponse = typeof GenerateResponse.Type

/**
 * One event of a generation stream: text deltas, then exactly one `Finish`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const StreamPart = Schema.Union(
  Schema.TaggedStruct("TextDelta", { text: Schema.String }),
  Schema.TaggedStruct("Finish", {
    finishReason: FinishReason,
    usage: Usage,
    provider: Schema.String,
    model: Schema.String
  })
)

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
  model: Schema.optional(Schema.NonEmptyTrimmedString)
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
 * low-level failure at their boundary, and are interrupted cleanly (an interrupted
 * call releases its connection or pool slot).
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
}

/**
 * @since 0.1.0
 * @category tags
 */
export class ModelProvider extends Context.Tag("effect-orchestra/ModelProvider")<ModelProvider, Service>() {}

const fieldOf = (error: ParseResult.ParseError): { field: string; message: string } => {
  const issues = ParseResult.ArrayFormatter.formatErrorSync(error)
  const first = issues[0]
  if (first === undefined) return { field: "(root)", message: error.message }
  const field = first.path.length === 0 ? "(root)" : first.path.map(String).join(".")
  return { field, message: `${field}: ${first.message}` }
}

/**
 * Turns a schema failure into an `InvalidRequest` error naming the offending field.
 *
 * @since 0.1.0
 * @category errors
 */
export const invalidRequest = (error: ParseResult.ParseError, what = "request"): ModelError => {
  const { field, message } = fieldOf(error)
  return new ModelError({ reason: "InvalidRequest", message: `invalid ${what}: ${message}`, field })
}

/**
 * Turns a schema failure on a provider's answer into a `Decode` error naming the field.
 *
 * @since 0.1.0
 * @category errors
 */
export const decodeError = (error: ParseResult.ParseError, provider: string): ModelError => {
  const { field, message } = fieldOf(error)
  return new ModelError({ reason: "Decode", message: `malformed response: ${message}`, field, provider })
}

const validateGenerateSync = Schema.validateEither(GenerateRequest, { onExcessProperty: "error" })
const validateEmbedSync = Schema.validateEither(EmbedRequest, { onExcessProperty: "error" })
// `is` is twice as fast as building a result; the detailed path only runs for bad input.
const isGenerate = Schema.is(GenerateRequest, { onExcessProperty: "error" })
const isEmbed = Schema.is(EmbedRequest, { onExcessProperty: "error" })

/**
 * Checks a generation request before any provider sees it.
 *
 * @since 0.1.0
 * @category validation
 */
export const validateGenerate = (request: GenerateRequest): Effect.Effect<GenerateRequest, ModelError> => {
  if (isGenerate(request)) return Effect.succeed(request)
  const result = validateGenerateSync(request)
  return Either.isRight(result) ? Effect.succeed(result.right) : Effect.fail(invalidRequest(result.left))
}

/**
 * Checks an embedding request before any provider sees it.
 *
 * @since 0.1.0
 * @category validation
 */
export const validateEmbed = (request: EmbedRequest): Effect.Effect<EmbedRequest, ModelError> => {
  if (isEmbed(request)) return Effect.succeed(request)
  const result = validateEmbedSync(request)
  return Either.isRight(result) ? Effect.succeed(result.right) : Effect.fail(invalidRequest(result.left))
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
 * @since 0.1.0
 * @category constructors
 */
export const usage = (inputTokens: number, outputTokens: number): Usage => ({
  inputTokens,
  outputTokens,
  totalTokens: inputTokens + outputTokens
})
