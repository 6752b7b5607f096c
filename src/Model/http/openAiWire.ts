/**
 * The OpenAI chat-completions and embeddings wire format, as OpenAI-compatible servers speak
 * it (OpenAI, vLLM, llama.cpp, LM Studio, Ollama's `/v1`, watsonx's chat API): request
 * bodies from a `GenerateRequest` (tools, tool choice, response format, tool messages),
 * answer and chunk schemas, usage, and embeddings put back in input order by `index`
 * (floats, or base64 little-endian float32).
 *
 * @since 0.2.0
 */
import { Effect, Result, Schema } from "effect"
import { Base64 } from "effect/encoding"
import { invalidRequest, type ModelError } from "../../AiError.js"
import * as Model from "../../Model.js"
import { responseFormatNamePattern } from "../schemas.js"
import { argumentsOrEmpty, maxToolCalls } from "./assemble.js"
import {
  boundedArray,
  boundedNonEmptyArray,
  finite,
  maxChoices,
  maxDimensions,
  shallow,
  tokenCount,
  Vector
} from "./decode.js"
import { type CallContext, malformed, unaskedDimensions, unevenVectors } from "./errors.js"

const Text = Schema.optional(Schema.NullOr(Schema.String))
const Count = Schema.optional(Schema.NullOr(Schema.Number))

/**
 * @since 0.2.0
 * @category schemas
 */
export const UsageWire = Schema.Struct({
  prompt_tokens: Count,
  completion_tokens: Count,
  total_tokens: Count
})

/**
 * @since 0.2.0
 * @category models
 */
export type UsageWire = typeof UsageWire.Type

/**
 * A message's content: a string, or (Mistral) an array of parts, of which only the `text`
 * ones are the answer's text; `thinking`, `reference` and other parts are left out.
 */
const Content = Schema.optional(
  Schema.NullOr(
    Schema.Union([
      Schema.String,
      Schema.Array(Schema.Struct({ type: Schema.String, text: Schema.optional(Schema.NullOr(Schema.String)) }))
    ])
  )
)

/**
 * @since 0.3.0
 * @category models
 */
export type Content = typeof Content.Type

/**
 * The text of a message's content: a string as it is, an array of parts as its `text` parts
 * joined (the others, such as Mistral's `thinking`, left out).
 *
 * @since 0.3.0
 * @category decoding
 */
export const contentText = (content: Content): string => {
  if (typeof content === "string") return content
  if (content === undefined || content === null) return ""
  let text = ""
  for (const part of content) {
    if (part.type === "text" && typeof part.text === "string") text += part.text
  }
  return text
}

// Read by hand (`signatureOf`): a shape other than Gemini's is no signature, not an answer that fails to decode.
const ExtraContent = Schema.optional(Schema.Unknown)

/**
 * A tool call's Gemini thought signature, as Gemini's OpenAI-compatible API carries it
 * (`extra_content.google.thought_signature`); `undefined` when there is none.
 *
 * @since 0.3.0
 * @category decoding
 */
export const signatureOf = (extra: unknown): string | undefined => {
  if (typeof extra !== "object" || extra === null) return undefined
  const google = (extra as { readonly google?: unknown }).google
  if (typeof google !== "object" || google === null) return undefined
  const signature = (google as { readonly thought_signature?: unknown }).thought_signature
  return typeof signature === "string" && signature.length > 0 ? signature : undefined
}

/**
 * A call's signature as Gemini's OpenAI-compatible API takes it back: `{ extra_content }`, or
 * nothing for a call without one (other servers may refuse a field they do not know).
 *
 * @since 0.3.0
 * @category encoding
 */
export const extraContentOf = (call: Model.ToolCall): { readonly extra_content?: unknown } =>
  call.signature === undefined ? {} : { extra_content: { google: { thought_signature: call.signature } } }

/**
 * A call's arguments: their JSON text, as OpenAI sends them, or the object itself (llama.cpp's
 * server with `--tool-args-object`, TGI), read as its JSON text. Written again with
 * `JSON.stringify`: too deep overflows it, and `1e400` (Infinity) it writes as null.
 */
const Arguments = Schema.optional(
  Schema.NullOr(Schema.Union([Schema.String, Schema.Record(Schema.String, Schema.Unknown).check(shallow, finite)]))
)

/**
 * The JSON text of a call's arguments as {@link Arguments} reads them (`undefined` for none).
 *
 * @since 0.3.0
 * @category decoding
 */
export const argumentsText = (
  args: string | { readonly [key: string]: unknown } | null | undefined
): string | undefined =>
  typeof args === "string" ? args : args === null || args === undefined ? undefined : JSON.stringify(args)

const ToolCallWire = Schema.Struct({
  id: Text,
  type: Text,
  // A call of no tool is refused, as a streamed call that never got a name is.
  function: Schema.Struct({ name: Schema.NonEmptyString, arguments: Arguments }),
  extra_content: ExtraContent
})

/**
 * A complete answer of `/chat/completions`.
 *
 * @since 0.2.0
 * @category schemas
 */
export const ChatCompletion = Schema.Struct({
  model: Text,
  choices: boundedNonEmptyArray(
    maxChoices,
    Schema.Struct({
      index: Count,
      message: Schema.Struct({
        role: Text,
        content: Content,
        refusal: Text,
        // As many as one stream may carry: an answer of a million calls is refused before they are read.
        tool_calls: Schema.optional(Schema.NullOr(boundedArray(maxToolCalls, ToolCallWire)))
      }),
      finish_reason: Text
    })
  ),
  usage: Schema.optional(Schema.NullOr(UsageWire))
})

/**
 * One chunk of a streamed answer. The final usage chunk has `choices` empty, or (Fireworks,
 * Bedrock) leaves it out: a chunk without it must carry `usage`, which the caller checks.
 *
 * @since 0.2.0
 * @category schemas
 */
export const ChatChunk = Schema.Struct({
  model: Text,
  choices: Schema.optional(
    Schema.NullOr(
      boundedArray(
        maxChoices,
        Schema.Struct({
          index: Count,
          delta: Schema.optional(
            Schema.NullOr(
              Schema.Struct({
                content: Content,
                refusal: Text,
                tool_calls: Schema.optional(
                  Schema.NullOr(
                    Schema.Array(
                      Schema.Struct({
                        index: Count,
                        id: Text,
                        function: Schema.optional(Schema.NullOr(Schema.Struct({ name: Text, arguments: Arguments }))),
                        extra_content: ExtraContent
                      })
                    )
                  )
                )
              })
            )
          ),
          finish_reason: Text
        })
      )
    )
  ),
  usage: Schema.optional(Schema.NullOr(UsageWire))
})

// --- The common shapes of `ChatCompletion` and `ChatChunk`, checked by hand (`DecodeOptions.accept`) ---
// Each check takes only what its schema takes; anything else is left to the schema, for its error.

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)
const isText = (value: unknown): boolean => value === undefined || value === null || typeof value === "string"
const isCount = (value: unknown): boolean => value === undefined || value === null || typeof value === "number"
const isContent = (value: unknown): boolean => {
  if (isText(value)) return true
  if (!Array.isArray(value)) return false
  for (const part of value) if (!isRecord(part) || typeof part.type !== "string" || !isText(part.text)) return false
  return true
}
const isUsage = (value: unknown): boolean =>
  value === undefined ||
  value === null ||
  (isRecord(value) && isCount(value.prompt_tokens) && isCount(value.completion_tokens) && isCount(value.total_tokens))
const isListOf = (value: unknown, each: (item: unknown) => boolean, max = Number.POSITIVE_INFINITY): boolean => {
  if (value === undefined || value === null) return true
  if (!Array.isArray(value) || value.length > max) return false
  for (const item of value) if (!each(item)) return false
  return true
}
const isToolCall = (value: unknown): boolean =>
  isRecord(value) &&
  isText(value.id) &&
  isText(value.type) &&
  isRecord(value.function) &&
  typeof value.function.name === "string" &&
  value.function.name.length > 0 &&
  isText(value.function.arguments)
const isChoice = (value: unknown): boolean =>
  isRecord(value) &&
  isCount(value.index) &&
  isText(value.finish_reason) &&
  isRecord(value.message) &&
  isText(value.message.role) &&
  isContent(value.message.content) &&
  isText(value.message.refusal) &&
  isListOf(value.message.tool_calls, isToolCall, maxToolCalls)
const isDeltaCall = (value: unknown): boolean =>
  isRecord(value) &&
  isCount(value.index) &&
  isText(value.id) &&
  (value.function === undefined ||
    value.function === null ||
    (isRecord(value.function) && isText(value.function.name) && isText(value.function.arguments)))
const isDelta = (value: unknown): boolean =>
  value === undefined ||
  value === null ||
  (isRecord(value) && isContent(value.content) && isText(value.refusal) && isListOf(value.tool_calls, isDeltaCall))
const isChunkChoice = (value: unknown): boolean =>
  isRecord(value) && isCount(value.index) && isText(value.finish_reason) && isDelta(value.delta)

/**
 * Whether `value` has the common shape of a {@link ChatCompletion} (a check by hand that
 * takes nothing the schema refuses).
 *
 * @since 0.3.0
 * @category decoding
 */
export const isChatCompletion = (value: unknown): boolean =>
  isRecord(value) &&
  isText(value.model) &&
  Array.isArray(value.choices) &&
  value.choices.length > 0 &&
  isListOf(value.choices, isChoice, maxChoices) &&
  isUsage(value.usage)

/**
 * Whether `value` has the common shape of a {@link ChatChunk} (a check by hand that takes
 * nothing the schema refuses).
 *
 * @since 0.3.0
 * @category decoding
 */
export const isChatChunk = (value: unknown): boolean =>
  isRecord(value) &&
  isText(value.model) &&
  Array.isArray(value.choices) &&
  isListOf(value.choices, isChunkChoice, maxChoices) &&
  isUsage(value.usage)

/**
 * Texts a request embeds at most: OpenAI pretty-prints ~28 bytes a float, so 256 vectors of
 * 3072 dimensions are ~22 MB, within the default `maxResponseBytes` where 2048 would be ~176 MB.
 *
 * @since 0.3.0
 * @category constants
 */
export const embedBatch = 256

/**
 * The answer of `/embeddings`: each vector as floats or as base64; at most {@link embedBatch}
 * of them, counted before any is read.
 *
 * @since 0.2.0
 * @category schemas
 */
export const Embeddings = Schema.Struct({
  model: Text,
  data: boundedArray(
    embedBatch,
    Schema.Struct({
      index: Schema.Number,
      embedding: Schema.Union([Vector, Schema.String])
    })
  ),
  usage: Schema.optional(Schema.NullOr(Schema.Struct({ prompt_tokens: Count, total_tokens: Count })))
})

/**
 * Usage from the wire, each count the server left out (or sent as no count: negative,
 * fractional) estimated; the server's total only when it counted both sides.
 *
 * @since 0.2.0
 * @category utils
 */
export const usageOf = (
  wire: UsageWire | null | undefined,
  fallbackInput: number,
  fallbackOutput: number
): Model.Usage => {
  const input = tokenCount(wire?.prompt_tokens)
  const output = tokenCount(wire?.completion_tokens)
  const total = tokenCount(wire?.total_tokens)
  if (input !== undefined && output !== undefined && total !== undefined && total >= input + output) {
    return { inputTokens: input, outputTokens: output, totalTokens: total }
  }
  return Model.usage(input ?? fallbackInput, output ?? fallbackOutput)
}

/**
 * The input tokens of an embeddings answer (`prompt_tokens`, else `total_tokens`: an
 * embedding has no output), `undefined` when the server counted none.
 *
 * @since 0.3.0
 * @category utils
 */
export const embedUsageOf = (
  wire:
    | { readonly prompt_tokens?: number | null | undefined; readonly total_tokens?: number | null | undefined }
    | null
    | undefined
): Model.Usage | undefined => {
  const input = tokenCount(wire?.prompt_tokens) ?? tokenCount(wire?.total_tokens)
  return input === undefined ? undefined : Model.usage(input, 0)
}

/**
 * What {@link chatBody} needs besides the request.
 *
 * @since 0.2.0
 * @category models
 */
export interface ChatBodyOptions {
  readonly model: string
  readonly stream: boolean
  /** Ask for the final usage chunk of a stream. */
  readonly streamUsage: boolean
  readonly maxTokensField: "max_tokens" | "max_completion_tokens"
  readonly provider: string
  /** Send tool calls' signatures as `extra_content` (only Gemini's endpoint takes them). Default false. */
  readonly sendSignatures?: boolean | undefined
  /** The most stop sequences the server takes (OpenAI's 4); more are refused naming `stop`. Default: any. */
  readonly maxStopSequences?: number | undefined
  /**
   * OpenAI's order of tool turns, which its own API answers with a 400 otherwise: the tool
   * messages answering an assistant message's calls come right after it, one for each call,
   * before any other message. Default false (servers of the protocol take any order).
   *
   * @since 0.3.0
   */
  readonly toolTurnsInOrder?: boolean | undefined
}

/**
 * What is wrong with the tool turns of a conversation, walked a message at a time: a tool
 * message answering a call no earlier assistant message made (every server is then left to
 * guess, and OpenAI answers a 400), and, in OpenAI's order, one that does not follow the
 * calls it answers, or a call left without an answer before the next turn.
 */
const toolTurns = (provider: string, inOrder: boolean) => {
  const made = new Set<string>()
  // In OpenAI's order: the calls of the assistant message the tool messages now follow, and those not yet answered.
  let open: { readonly at: number; readonly ids: ReadonlyArray<string>; readonly unanswered: Set<string> } | undefined
  const closeOpen = (): ModelError | undefined => {
    if (open === undefined) return undefined
    const { at, ids, unanswered } = open
    open = undefined
    const j = ids.findIndex((id) => unanswered.has(id))
    return j === -1
      ? undefined
      : invalidRequest(
          `messages[${at}].toolCalls[${j}]`,
          `the call "${ids[j]}" has no answer: OpenAI takes an assistant message's tool calls only when a tool message answering each follows it, before any other message`,
          provider
        )
  }
  return {
    message: (message: Model.Message, index: number): ModelError | undefined => {
      if (message.role === "tool") {
        const id = message.toolCallId!
        if (!made.has(id)) {
          return invalidRequest(
            `messages[${index}].toolCallId`,
            `the tool message answers the call "${id}", which no earlier assistant message made`,
            provider
          )
        }
        if (inOrder && !(open?.unanswered.delete(id) ?? false)) {
          return invalidRequest(
            `messages[${index}].toolCallId`,
            `the tool message answers the call "${id}" out of OpenAI's order: it takes the answers to an assistant message's calls right after it, one for each call`,
            provider
          )
        }
        return undefined
      }
      const unanswered = inOrder ? closeOpen() : undefined
      if (unanswered !== undefined) return unanswered
      if (message.role === "assistant" && message.toolCalls !== undefined && message.toolCalls.length > 0) {
        const ids = message.toolCalls.map((call) => call.id)
        for (const id of ids) made.add(id)
        if (inOrder) open = { at: index, ids, unanswered: new Set(ids) }
      }
      return undefined
    },
    end: (): ModelError | undefined => (inOrder ? closeOpen() : undefined)
  }
}

const messageOf = (
  message: Model.Message,
  index: number,
  provider: string,
  sendSignatures: boolean
): Result.Result<unknown, ModelError> => {
  switch (message.role) {
    case "tool":
      // An empty id names no call either: OpenAI refuses `tool_call_id: ""`, after a round trip.
      if (message.toolCallId === undefined || message.toolCallId.length === 0) {
        return Result.fail(
          invalidRequest(`messages[${index}].toolCallId`, "a tool message must name the call it answers", provider)
        )
      }
      return Result.succeed({ role: "tool", tool_call_id: message.toolCallId, content: message.content })
    case "assistant":
      if (message.toolCalls !== undefined && message.toolCalls.length > 0) {
        for (let j = 0; j < message.toolCalls.length; j++) {
          const call = message.toolCalls[j]!
          // OpenAI refuses either empty, after a call; no answer carries a call of no name (each is Decode there).
          if (call.id.length === 0 || call.name.length === 0) {
            return Result.fail(
              invalidRequest(
                `messages[${index}].toolCalls[${j}].${call.id.length === 0 ? "id" : "name"}`,
                call.id.length === 0
                  ? "a tool call needs an id for its result to name (OpenAI refuses an empty one)"
                  : "a tool call without a name",
                provider
              )
            )
          }
        }
        return Result.succeed({
          role: "assistant",
          content: message.content.length === 0 ? null : message.content,
          ...(message.name === undefined ? {} : { name: message.name }),
          tool_calls: message.toolCalls.map((call) => ({
            id: call.id,
            type: "function",
            function: { name: call.name, arguments: argumentsOrEmpty(call.arguments) },
            ...(sendSignatures ? extraContentOf(call) : {})
          }))
        })
      }
      return Result.succeed(
        message.name === undefined
          ? { role: "assistant", content: message.content }
          : { role: "assistant", content: message.content, name: message.name }
      )
    default:
      return Result.succeed(
        message.name === undefined
          ? { role: message.role, content: message.content }
          : { role: message.role, content: message.content, name: message.name }
      )
  }
}

/**
 * Tools as OpenAI's `tools` field (Ollama takes the same shape): functions, parameters an
 * empty object schema when none are given.
 *
 * @internal
 */
export const toolsBody = (tools: ReadonlyArray<Model.ToolDefinition>): Array<unknown> =>
  tools.map((tool) => ({
    type: "function",
    function: {
      name: tool.name,
      ...(tool.description === undefined ? {} : { description: tool.description }),
      parameters: tool.parameters ?? { type: "object", properties: {} },
      ...(tool.strict === undefined ? {} : { strict: tool.strict })
    }
  }))

/**
 * The JSON body of a `/chat/completions` request, each message's `name` (since 0.3.0) sent but a
 * tool message's (OpenAI's tool messages have none). A tool message without the id of the call
 * it answers (or with an empty one, or the id of no call an earlier assistant message made),
 * or a tool call with an empty id or name, is refused (`InvalidRequest` naming it), and so are
 * tool turns out of OpenAI's order when `toolTurnsInOrder`, as is a tool choice naming a tool that is
 * not among the tools, or asking for a call (`"required"`, a named tool) of a request without
 * tools (`"auto"` and `"none"` are then not sent), or a response format's name outside OpenAI's
 * `^[a-zA-Z0-9_-]{1,64}$`. A call's blank arguments (`""`, as OpenAI answers a tool without
 * parameters) go as `"{}"`: OpenAI takes either, stricter servers of the protocol only the JSON.
 *
 * @since 0.2.0
 * @category encoding
 */
export const chatBody = (
  request: Model.GenerateRequest,
  options: ChatBodyOptions
): Effect.Effect<Record<string, unknown>, ModelError> => {
  const messages: Array<unknown> = []
  const conversation = Model.toMessages(request)
  const turns = toolTurns(options.provider, options.toolTurnsInOrder === true)
  for (let i = 0; i < conversation.length; i++) {
    // Indices name the request's own messages: the system prompt placed first is not one of them.
    const index = request.system === undefined ? i : i - 1
    const message = conversation[i]!
    const wire = messageOf(message, index, options.provider, options.sendSignatures === true)
    if (Result.isFailure(wire)) return Effect.fail(wire.failure)
    const refused = turns.message(message, index)
    if (refused !== undefined) return Effect.fail(refused)
    messages.push(wire.success)
  }
  const unanswered = turns.end()
  if (unanswered !== undefined) return Effect.fail(unanswered)
  const body: Record<string, unknown> = { model: options.model, messages }
  if (request.maxTokens !== undefined) body[options.maxTokensField] = request.maxTokens
  if (request.temperature !== undefined) body["temperature"] = request.temperature
  if (request.topP !== undefined) body["top_p"] = request.topP
  if (request.stop !== undefined) {
    if (options.maxStopSequences !== undefined && request.stop.length > options.maxStopSequences) {
      return Effect.fail(
        invalidRequest(
          "stop",
          `${options.provider} takes at most ${options.maxStopSequences} stop sequences, got ${request.stop.length}`,
          options.provider
        )
      )
    }
    body["stop"] = request.stop
  }
  if (request.seed !== undefined) body["seed"] = request.seed
  // No tools is sent as no field: OpenAI refuses `tools: []` (an array too short).
  if (request.tools !== undefined && request.tools.length > 0) {
    body["tools"] = toolsBody(request.tools)
    // Only with tools: OpenAI refuses `parallel_tool_calls` without them.
    if (request.parallelToolCalls !== undefined) body["parallel_tool_calls"] = request.parallelToolCalls
  }
  const choice = request.toolChoice
  if (choice !== undefined) {
    if (body["tools"] !== undefined) {
      if (typeof choice === "object" && !request.tools!.some((tool) => tool.name === choice.name)) {
        return Effect.fail(invalidRequest("toolChoice", `no tool is named "${choice.name}"`, options.provider))
      }
      body["tool_choice"] = typeof choice === "string" ? choice : { type: "function", function: { name: choice.name } }
    } else if (choice === "required" || typeof choice === "object") {
      // OpenAI refuses a tool_choice without tools, after a call; "auto" and "none" are what it does without them.
      return Effect.fail(
        invalidRequest(
          "toolChoice",
          `${typeof choice === "string" ? '"required"' : `{ name: "${choice.name}" }`} asks for a tool call, but the request has no tools`,
          options.provider
        )
      )
    }
  }
  if (request.responseFormat !== undefined) {
    const format = request.responseFormat
    if (format.type === "json_schema" && !responseFormatNamePattern.test(format.name)) {
      // OpenAI refuses it with a 400, after a round trip.
      return Effect.fail(
        invalidRequest(
          "responseFormat.name",
          "expected a name of 1 to 64 characters of a-z, A-Z, 0-9, _ or -",
          options.provider
        )
      )
    }
    body["response_format"] =
      format.type === "json_schema"
        ? {
            type: "json_schema",
            json_schema: {
              name: format.name,
              ...(format.description === undefined ? {} : { description: format.description }),
              schema: format.schema,
              ...(format.strict === undefined ? {} : { strict: format.strict })
            }
          }
        : { type: format.type }
  }
  if (options.stream) {
    body["stream"] = true
    if (options.streamUsage) body["stream_options"] = { include_usage: true }
  }
  return Effect.succeed(body)
}

const maxBase64Chars = Math.ceil((maxDimensions * 4) / 3) * 4

/**
 * Embedding values sent as base64 little-endian float32, or `undefined` when the text is not
 * base64 of a whole number of float32s.
 *
 * @since 0.2.0
 * @category decoding
 */
export const decodeBase64Floats = (text: string): ReadonlyArray<number> | undefined => {
  const bytes = Base64.decode(text)
  if (Result.isFailure(bytes) || bytes.success.byteLength % 4 !== 0) return undefined
  const view = new DataView(bytes.success.buffer, bytes.success.byteOffset, bytes.success.byteLength)
  const out: Array<number> = new Array(bytes.success.byteLength / 4)
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true)
  return out
}

/**
 * The vectors of an embeddings answer in input order, by their `index` (not their position):
 * every index present once, none out of range, base64 decoded, each of `dimensions` values
 * when that many were asked for (`embeddingDimensions`); else `Decode` on `data`.
 *
 * @since 0.2.0
 * @category decoding
 */
export const vectorsByIndex = (
  data: ReadonlyArray<{ readonly index: number; readonly embedding: ReadonlyArray<number> | string }>,
  expected: number,
  ctx: CallContext,
  dimensions?: number | undefined
): Effect.Effect<ReadonlyArray<ReadonlyArray<number>>, ModelError> => {
  if (data.length !== expected) {
    return Effect.fail(malformed(ctx, "data", `expected ${expected} embeddings, got ${data.length}`))
  }
  const vectors: Array<ReadonlyArray<number> | undefined> = new Array(expected).fill(undefined)
  for (let i = 0; i < data.length; i++) {
    const item = data[i]!
    if (!Number.isInteger(item.index) || item.index < 0 || item.index >= expected) {
      return Effect.fail(malformed(ctx, `data[${i}].index`, `index ${item.index} out of range 0..${expected - 1}`))
    }
    if (vectors[item.index] !== undefined) {
      return Effect.fail(malformed(ctx, "data", `index ${item.index} appears twice`))
    }
    // Base64 float32 is 4 bytes a value: its length bounds the vector before it is decoded, as the array's does.
    if (typeof item.embedding === "string" && item.embedding.length > maxBase64Chars) {
      return Effect.fail(
        malformed(
          ctx,
          `data[${i}].embedding`,
          `expected at most ${maxDimensions} values, got some ${Math.floor((item.embedding.length * 3) / 16)}`
        )
      )
    }
    const values = typeof item.embedding === "string" ? decodeBase64Floats(item.embedding) : item.embedding
    if (values === undefined) {
      return Effect.fail(malformed(ctx, `data[${i}].embedding`, "neither a float array nor base64 float32"))
    }
    const unasked = unaskedDimensions(ctx, `data[${i}].embedding`, values.length, dimensions)
    if (unasked !== undefined) return Effect.fail(unasked)
    vectors[item.index] = values
  }
  const uneven = unevenVectors(vectors as ReadonlyArray<ReadonlyArray<number>>, ctx, "data")
  return uneven === undefined ? Effect.succeed(vectors as ReadonlyArray<ReadonlyArray<number>>) : Effect.fail(uneven)
}
