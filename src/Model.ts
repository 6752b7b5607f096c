/**
 * The model-provider service: `generate`, `stream` and `embed`, with the request and
 * response schemas every provider speaks, and the checks every request passes before any
 * provider sees it (shape, and size limits).
 *
 * @since 0.1.0
 */
import { Context, type Effect, Result, type Schema, type Stream } from "effect"
import { type AiError, ModelError } from "./AiError.js"
import * as Input from "./Input.js"
import * as Schemas from "./Model/schemas.js"
import * as Validate from "./Model/validate.js"

// The schemas are defined in `Model/schemas.ts`, so that the request checks (`Model/validate.ts`) build on them
// without importing this module; `typeof` keeps their field documentation in this module's declarations.

/**
 * @since 0.1.0
 * @category schemas
 */
export const Role: typeof Schemas.Role = Schemas.Role

/**
 * @since 0.1.0
 * @category models
 */
export type Role = typeof Role.Type

/**
 * A tool call the model asked for; `arguments` is the JSON text the model produced.
 * `signature` (since 0.3.0) is opaque, provider-specific data to send back with the call in
 * the assistant message of the next turn (Gemini 3 refuses a call without its thought
 * signature); providers that have none ignore it.
 *
 * @since 0.2.0
 * @category schemas
 */
export const ToolCall: typeof Schemas.ToolCall = Schemas.ToolCall

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
export const Message: typeof Schemas.Message = Schemas.Message

/**
 * @since 0.1.0
 * @category models
 */
export type Message = typeof Message.Type

/**
 * A tool the model may call: a name, a description and a JSON Schema of its parameters
 * (`strict`: the arguments must match it exactly, where the provider supports it). A name is 1
 * to 64 of `A-Z a-z 0-9 _ -`, a letter or `_` first: what every provider takes (refused
 * before any call otherwise, `field: "tools[i].name"`).
 * Passed through to providers that support tools; others refuse the request (`field: "tools"`).
 *
 * @since 0.2.0
 * @category schemas
 */
export const ToolDefinition: typeof Schemas.ToolDefinition = Schemas.ToolDefinition

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
export const ResponseFormat: typeof Schemas.ResponseFormat = Schemas.ResponseFormat

/**
 * @since 0.2.0
 * @category models
 */
export type ResponseFormat = typeof ResponseFormat.Type

/**
 * A generation request. Exactly one of `prompt` and `messages` carries the conversation.
 * `parallelToolCalls: false` asks for at most one tool call a turn: sent where the API has the
 * setting (OpenAI-compatible servers), refused with tools where it has not (Gemini, Ollama).
 *
 * @since 0.1.0
 * @category schemas
 */
export const GenerateRequest: typeof Schemas.GenerateRequest = Schemas.GenerateRequest

/**
 * @since 0.1.0
 * @category models
 */
export type GenerateRequest = typeof GenerateRequest.Type

/**
 * @since 0.1.0
 * @category schemas
 */
export const FinishReason: typeof Schemas.FinishReason = Schemas.FinishReason

/**
 * @since 0.1.0
 * @category models
 */
export type FinishReason = typeof FinishReason.Type

/**
 * @since 0.1.0
 * @category schemas
 */
export const Usage: typeof Schemas.Usage = Schemas.Usage

/**
 * @since 0.1.0
 * @category models
 */
export type Usage = typeof Usage.Type

/**
 * @since 0.1.0
 * @category schemas
 */
export const GenerateResponse: typeof Schemas.GenerateResponse = Schemas.GenerateResponse

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
export const StreamPart: typeof Schemas.StreamPart = Schemas.StreamPart

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
export const EmbedRequest: typeof Schemas.EmbedRequest = Schemas.EmbedRequest

/**
 * @since 0.1.0
 * @category models
 */
export type EmbedRequest = typeof EmbedRequest.Type

/**
 * @since 0.1.0
 * @category schemas
 */
export const EmbedResponse: typeof Schemas.EmbedResponse = Schemas.EmbedResponse

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
  /**
   * Characters of everything a generation request sends, together: the system prompt, the
   * prompt or every message's content (tool results and their `toolCallId` included), each
   * tool call's id, name, arguments and signature plus 32 for the call itself (so that calls with
   * every field empty still count), each tool's name, description and parameters
   * (as JSON text), a JSON response schema (its name, and the schema as JSON text) and the stop
   * sequences. Over it, the request is refused naming `prompt` or `messages`, else `tools`,
   * `responseFormat` or `stop`, whichever took it over. For an embedding request, the
   * characters of its texts. Default 1,000,000.
   */
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
export const defaultRequestLimits: RequestLimits = Validate.defaultRequestLimits

const requestLimitKeys: ReadonlySet<string> = new Set(["maxInputChars", "maxMessages", "maxEmbedTexts"])

/**
 * Checks user-given limits (positive integers), filling in the defaults.
 *
 * @since 0.2.0
 * @category constructors
 */
export const requestLimits = (
  given: Partial<RequestLimits> = {},
  path = "requestLimits"
): Input.Checked<RequestLimits> => {
  if (typeof given !== "object" || given === null || Array.isArray(given)) {
    return Result.fail({ path, message: "expected an object { maxInputChars, maxMessages, maxEmbedTexts }" })
  }
  // A misspelt limit would leave its default in place unseen; a getter that throws names its field.
  const unknown = Input.unknownKey(given, requestLimitKeys, `${path}.`)
  if (unknown !== undefined) return Result.fail(unknown)
  const read = Input.readFields(given, undefined, path)
  if (Result.isFailure(read)) return Result.fail(read.failure)
  const input = read.success as Partial<RequestLimits>
  return Result.map(
    Input.all([
      Input.positiveInt(
        `${path}.maxInputChars`,
        Input.orDefault(input.maxInputChars, defaultRequestLimits.maxInputChars)
      ),
      Input.positiveInt(`${path}.maxMessages`, Input.orDefault(input.maxMessages, defaultRequestLimits.maxMessages)),
      Input.positiveInt(
        `${path}.maxEmbedTexts`,
        Input.orDefault(input.maxEmbedTexts, defaultRequestLimits.maxEmbedTexts)
      )
    ]),
    ([maxInputChars, maxMessages, maxEmbedTexts]) => ({ maxInputChars, maxMessages, maxEmbedTexts })
  )
}

/**
 * Checks a generation request before any provider sees it: its shape (unknown fields are
 * refused, `temprature` included), that it carries a non-empty conversation, the size
 * limits, and that tool parameters and response schemas nest at most 64 levels deep. Fails
 * with an `InvalidRequest` naming the field.
 *
 * @since 0.1.0
 * @category validation
 */
export const validateGenerate: (
  request: GenerateRequest,
  limits?: RequestLimits
) => Effect.Effect<GenerateRequest, ModelError> = Validate.validateGenerate

/**
 * {@link validateGenerate} without an Effect, for hot paths: the error, or `undefined`
 * when the request is valid.
 *
 * @since 0.2.0
 * @category validation
 */
export const checkGenerate: (request: GenerateRequest, limits?: RequestLimits) => ModelError | undefined =
  Validate.checkGenerate

/**
 * Checks an embedding request before any provider sees it.
 *
 * @since 0.1.0
 * @category validation
 */
export const validateEmbed: (request: EmbedRequest, limits?: RequestLimits) => Effect.Effect<EmbedRequest, ModelError> =
  Validate.validateEmbed

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

// Everything of a request a provider reads as input: text, tool calls, tool definitions, the response schema and
// its description.
const inputChars = (request: GenerateRequest): number => {
  let chars = request.system?.length ?? 0
  if (request.prompt !== undefined) chars += request.prompt.length
  for (const message of request.messages ?? []) {
    chars += message.content.length + (message.toolCallId?.length ?? 0) + (message.name?.length ?? 0)
    for (const call of message.toolCalls ?? []) chars += call.id.length + call.name.length + call.arguments.length
  }
  if (request.tools !== undefined && request.tools.length > 0) chars += JSON.stringify(request.tools).length
  if (request.responseFormat?.type === "json_schema") {
    chars += request.responseFormat.name.length + JSON.stringify(request.responseFormat.schema).length
    chars += request.responseFormat.description?.length ?? 0
  }
  return chars
}

/**
 * The estimated input tokens of a request (4 characters a token): its text, tool calls,
 * tool definitions and response schema. For rate limits, and for the usage of providers
 * that report none.
 *
 * @since 0.2.0
 * @category utils
 */
export const estimateInputTokens = (request: GenerateRequest): number => Math.ceil(inputChars(request) / 4)

/**
 * A conservative count of a request's input tokens, for what must not be overspent
 * (budget reservations): 3 characters a token of everything
 * {@link estimateInputTokens} counts, plus 4 tokens a message, 12 a tool definition and
 * 8 a request for the framing providers add. Tokenizers spend fewer tokens than that on
 * ordinary text and code; text made to tokenize badly (one token a character) can exceed it.
 *
 * @since 0.3.0
 * @category utils
 */
export const reserveInputTokens = (request: GenerateRequest): number =>
  Math.ceil(inputChars(request) / 3) +
  8 +
  4 * ((request.messages?.length ?? 1) + (request.system === undefined ? 0 : 1)) +
  12 * (request.tools?.length ?? 0)

/**
 * @since 0.1.0
 * @category constructors
 */
export const usage = (inputTokens: number, outputTokens: number): Usage => ({
  inputTokens,
  outputTokens,
  totalTokens: inputTokens + outputTokens
})
