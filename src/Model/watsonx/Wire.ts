/**
 * The watsonx.ai REST API as the provider speaks it: request bodies for chat
 * (`/ml/v1/text/chat`), text generation (`/ml/v1/text/generation`) and embeddings, the
 * schemas of their answers and stream events, and their mapping to ours. Pure: no HTTP.
 *
 * @since 0.2.0
 */
import { Duration, Redacted, Schema } from "effect"
import { invalidRequest, type ModelError } from "../../AiError.js"
import * as Model from "../../Model.js"
import { answeredModel, boundedArray, boundedNonEmptyArray, maxChoices, tokenCount, Vector } from "../http/decode.js"
import { responseFormatNamePattern } from "../schemas.js"

/**
 * Which API a generation request goes to.
 *
 * @since 0.2.0
 * @category models
 */
export type Api = "chat" | "generation"

/**
 * @since 0.2.0
 * @category schemas
 */
export const IamToken = Schema.Struct({
  // Sent as `Bearer <token>`: a token with CR, LF or a space cannot be a header value, and would fail every call.
  access_token: Schema.String.check(
    Schema.isPattern(/^[\x21-\x7e]+$/, { message: "expected a token of visible ASCII characters" })
  ),
  expires_in: Schema.Number.check(Schema.isFinite(), Schema.isGreaterThan(0)),
  token_type: Schema.optional(Schema.String)
})

const Count = Schema.optional(Schema.NullOr(Schema.Number))
const Text = Schema.optional(Schema.NullOr(Schema.String))

const ChatUsage = Schema.Struct({ prompt_tokens: Count, completion_tokens: Count, total_tokens: Count })

/**
 * @since 0.2.0
 * @category schemas
 */
export const ChatAnswer = Schema.Struct({
  model_id: Schema.optional(Schema.String),
  choices: boundedNonEmptyArray(
    maxChoices,
    Schema.Struct({ index: Count, message: Schema.Struct({ content: Text }), finish_reason: Text })
  ),
  usage: Schema.optional(ChatUsage)
})

/**
 * One event of `/ml/v1/text/chat_stream`.
 *
 * @since 0.2.0
 * @category schemas
 */
export const ChatChunk = Schema.Struct({
  model_id: Schema.optional(Schema.String),
  choices: boundedArray(
    maxChoices,
    Schema.Struct({
      index: Schema.optional(Schema.Number),
      delta: Schema.optional(Schema.Struct({ content: Text })),
      finish_reason: Text
    })
  ),
  usage: Schema.optional(ChatUsage)
})

const GenerationResult = Schema.Struct({
  generated_text: Schema.String,
  generated_token_count: Count,
  input_token_count: Count,
  stop_reason: Text
})

/**
 * The answer of `/ml/v1/text/generation`, and each event of its stream.
 *
 * @since 0.2.0
 * @category schemas
 */
export const GenerationAnswer = Schema.Struct({
  model_id: Schema.optional(Schema.String),
  results: boundedNonEmptyArray(maxChoices, GenerationResult)
})

/**
 * `/ml/v1/text/embeddings` takes at most 1,000 inputs.
 *
 * @since 0.3.0
 * @category constants
 */
export const embedBatch = 1000

/**
 * The answer of `/ml/v1/text/embeddings`: at most {@link embedBatch} vectors, counted before any is read.
 *
 * @since 0.2.0
 * @category schemas
 */
export const EmbeddingsAnswer = Schema.Struct({
  model_id: Schema.optional(Schema.String),
  results: boundedArray(embedBatch, Schema.Struct({ embedding: Vector })),
  input_token_count: Count
})

/**
 * The token of an IAM answer, wrapped at once so that it is never held as a plain string.
 *
 * @since 0.2.0
 * @category utils
 */
export const issued = (
  answer: typeof IamToken.Type
): { readonly token: Redacted.Redacted<string>; readonly expiresIn: Duration.Duration } => ({
  token: Redacted.make(answer.access_token),
  expiresIn: Duration.seconds(answer.expires_in)
})

/**
 * A watsonx `stop_reason` or chat `finish_reason` as ours.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = (reason: string | null | undefined): Model.FinishReason => {
  switch (reason) {
    case "stop":
    case "eos_token":
    case "stop_sequence":
      return "stop"
    case "length":
    case "max_tokens":
    case "token_limit":
    case "time_limit":
      return "length"
    case "content_filter":
      return "content_filter"
    case "tool_calls":
      return "tool_calls"
    case "error":
    case "cancelled":
      return "error"
    default:
      return "unknown"
  }
}

/**
 * What watsonx cannot take from a request here, refused before any call: tools (not
 * mapped), a tool choice other than `"auto"` or `"none"`, tool messages, on the chat API a JSON schema format's name
 * outside `^[a-zA-Z0-9_-]{1,64}$`, and on the text-generation API a response format, more than 6
 * stop sequences or a seed outside its `random_seed` range (1 to 2^32 - 1).
 *
 * @since 0.2.0
 * @category validation
 */
export const unsupported = (request: Model.GenerateRequest, api: Api, provider: string): ModelError | undefined => {
  // `tools: []` is no tools (as the cache key and the gateway read it).
  if (request.tools !== undefined && request.tools.length > 0) {
    return invalidRequest("tools", "watsonx does not take tools here", provider)
  }
  // Without tools, "auto" and "none" ask for nothing more than an answer: a call asked for cannot be honoured.
  const choice = request.toolChoice
  if (choice !== undefined && choice !== "auto" && choice !== "none") {
    return invalidRequest("toolChoice", "watsonx does not take tools here", provider)
  }
  const messages = request.messages ?? []
  for (let i = 0; i < messages.length; i++) {
    const message = messages[i]!
    if (message.role === "tool") {
      return invalidRequest(`messages[${i}].role`, "watsonx does not take tool messages here", provider)
    }
    // `toolCalls: []` made no calls, as `tools: []` is no tools.
    if (message.toolCalls !== undefined && message.toolCalls.length > 0) {
      return invalidRequest(`messages[${i}].toolCalls`, "watsonx does not take tool calls here", provider)
    }
  }
  const format = request.responseFormat
  // The chat API takes OpenAI's rule for `json_schema.name`, and refuses another name with a 400 after a call.
  if (api === "chat" && format?.type === "json_schema" && !responseFormatNamePattern.test(format.name)) {
    return invalidRequest(
      "responseFormat.name",
      "expected a name of 1 to 64 characters of a-z, A-Z, 0-9, _ or -",
      provider
    )
  }
  if (api === "generation") {
    if (request.responseFormat !== undefined && request.responseFormat.type !== "text") {
      return invalidRequest(
        "responseFormat",
        'the text-generation API has no response format; use api: "chat"',
        provider
      )
    }
    // The text-generation API's own bounds: past them it answers a 400 after the call.
    if (request.stop !== undefined && request.stop.length > 6) {
      return invalidRequest(
        "stop",
        `the text-generation API takes at most 6 stop sequences, got ${request.stop.length}`,
        provider
      )
    }
    if (request.seed !== undefined && (request.seed < 1 || request.seed > 2 ** 32 - 1)) {
      return invalidRequest(
        "seed",
        `the text-generation API takes a random_seed from 1 to 2^32 - 1, got ${request.seed}`,
        provider
      )
    }
  }
  return undefined
}

/**
 * The body of `/ml/v1/text/chat` (and `chat_stream`): user turns as text content parts, a
 * message's `name` (since 0.3.0) sent as the API's.
 *
 * @since 0.2.0
 * @category utils
 */
export const chatBody = (request: Model.GenerateRequest, model: string): Record<string, unknown> => {
  const messages = Model.toMessages(request).map((m) => {
    const message: Record<string, unknown> =
      m.role === "user"
        ? { role: "user", content: [{ type: "text", text: m.content }] }
        : { role: m.role, content: m.content }
    // The chat API's system, user and assistant messages take a participant's name, as OpenAI's do.
    if (m.name !== undefined && m.role !== "tool") message["name"] = m.name
    return message
  })
  const body: Record<string, unknown> = { model_id: model, messages }
  if (request.maxTokens !== undefined) body["max_tokens"] = request.maxTokens
  if (request.temperature !== undefined) body["temperature"] = request.temperature
  if (request.topP !== undefined) body["top_p"] = request.topP
  if (request.stop !== undefined) body["stop"] = request.stop
  if (request.seed !== undefined) body["seed"] = request.seed
  const format = request.responseFormat
  if (format !== undefined && format.type !== "text") {
    body["response_format"] =
      format.type === "json_object"
        ? { type: "json_object" }
        : {
            type: "json_schema",
            json_schema: {
              name: format.name,
              ...(format.description === undefined ? {} : { description: format.description }),
              schema: format.schema,
              ...(format.strict === undefined ? {} : { strict: format.strict })
            }
          }
  }
  return body
}

const capitalized = (role: string): string => `${role[0]!.toUpperCase()}${role.slice(1)}`

/**
 * The body of `/ml/v1/text/generation` (and `generation_stream`): one input text (a
 * conversation flattened into `Role: text` paragraphs); greedy decoding unless a
 * temperature above zero asks for sampling.
 *
 * @since 0.2.0
 * @category utils
 */
export const generationBody = (request: Model.GenerateRequest, model: string): Record<string, unknown> => {
  const input =
    request.messages === undefined
      ? `${request.system === undefined ? "" : `${request.system}\n\n`}${request.prompt ?? ""}`
      : Model.toMessages(request)
          .map((m) => `${capitalized(m.role)}: ${m.content}`)
          .join("\n\n")
  const parameters: Record<string, unknown> = {
    decoding_method: request.temperature === undefined || request.temperature === 0 ? "greedy" : "sample"
  }
  if (request.maxTokens !== undefined) parameters["max_new_tokens"] = request.maxTokens
  if (request.temperature !== undefined) parameters["temperature"] = request.temperature
  if (request.topP !== undefined) parameters["top_p"] = request.topP
  if (request.stop !== undefined) parameters["stop_sequences"] = request.stop
  if (request.seed !== undefined) parameters["random_seed"] = request.seed
  return { model_id: model, input, parameters }
}

/**
 * @since 0.2.0
 * @category utils
 */
export const chatResponse = (
  answer: typeof ChatAnswer.Type,
  provider: string,
  model: string,
  inputEstimate: number
): Model.GenerateResponse => {
  const choice = answer.choices[0]
  const text = choice.message.content ?? ""
  return {
    text,
    finishReason: finishReasonOf(choice.finish_reason),
    usage: Model.usage(
      tokenCount(answer.usage?.prompt_tokens) ?? inputEstimate,
      tokenCount(answer.usage?.completion_tokens) ?? Model.estimateTokens(text)
    ),
    provider,
    model: answeredModel(answer.model_id, model)
  }
}

/**
 * @since 0.2.0
 * @category utils
 */
export const generationResponse = (
  answer: typeof GenerationAnswer.Type,
  provider: string,
  model: string,
  inputEstimate: number
): Model.GenerateResponse => {
  const result = answer.results[0]
  return {
    text: result.generated_text,
    finishReason: finishReasonOf(result.stop_reason),
    usage: Model.usage(
      tokenCount(result.input_token_count) ?? inputEstimate,
      tokenCount(result.generated_token_count) ?? Model.estimateTokens(result.generated_text)
    ),
    provider,
    model: answeredModel(answer.model_id, model)
  }
}

/**
 * Gathers a stream's events into `StreamPart`s: text deltas as they come, the finish
 * reason, usage and model from whichever event carries them, and one `Finish` at the end.
 * One per stream (it holds that stream's state).
 *
 * @since 0.2.0
 * @category models
 */
export interface StreamState {
  readonly chat: (chunk: typeof ChatChunk.Type) => ReadonlyArray<Model.StreamPart>
  readonly generation: (chunk: typeof GenerationAnswer.Type) => ReadonlyArray<Model.StreamPart>
  /** A finish reason arrived: the stream may end here. */
  readonly finished: () => boolean
  /**
   * Chat choices came, but none numbered 0: no answer (as `generate` reads it), not an empty one.
   *
   * @since 0.3.0
   */
  readonly noChoiceZero: () => boolean
  readonly finish: () => Model.StreamPart
}

/**
 * @since 0.2.0
 * @category constructors
 */
export const streamState = (provider: string, model: string, inputEstimate: number): StreamState => {
  let finishReason: string | undefined
  let streamedModel: string | undefined
  let inputTokens: number | undefined
  let outputTokens: number | undefined
  let outputChars = 0
  let sawChoice = false
  let sawOther = false
  const delta = (text: string | null | undefined): ReadonlyArray<Model.StreamPart> => {
    if (text === undefined || text === null || text.length === 0) return []
    outputChars += text.length
    return [{ _tag: "TextDelta", text }]
  }
  return {
    chat: (chunk) => {
      if (chunk.model_id !== undefined) streamedModel = chunk.model_id
      inputTokens = tokenCount(chunk.usage?.prompt_tokens) ?? inputTokens
      outputTokens = tokenCount(chunk.usage?.completion_tokens) ?? outputTokens
      const parts: Array<Model.StreamPart> = []
      for (const choice of chunk.choices) {
        if ((choice.index ?? 0) !== 0) {
          sawOther = true
          continue
        }
        sawChoice = true
        parts.push(...delta(choice.delta?.content))
        // "" is no reason: a stream cut after it is no answer.
        if (typeof choice.finish_reason === "string" && choice.finish_reason.length > 0) {
          finishReason = choice.finish_reason
        }
      }
      return parts
    },
    generation: (chunk) => {
      if (chunk.model_id !== undefined) streamedModel = chunk.model_id
      const result = chunk.results[0]
      // Only the first event counts the input; later ones say 0.
      const input = tokenCount(result.input_token_count)
      if (input !== undefined && input > 0) inputTokens = input
      outputTokens = tokenCount(result.generated_token_count) ?? outputTokens
      if (
        typeof result.stop_reason === "string" &&
        result.stop_reason !== "not_finished" &&
        result.stop_reason !== ""
      ) {
        finishReason = result.stop_reason
      }
      return delta(result.generated_text)
    },
    finished: () => finishReason !== undefined,
    noChoiceZero: () => sawOther && !sawChoice,
    finish: () => ({
      _tag: "Finish",
      finishReason: finishReasonOf(finishReason),
      usage: Model.usage(inputTokens ?? inputEstimate, outputTokens ?? Math.ceil(outputChars / 4)),
      provider,
      model: answeredModel(streamedModel, model)
    })
  }
}
