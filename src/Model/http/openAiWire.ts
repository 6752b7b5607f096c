/**
 * The OpenAI chat-completions and embeddings wire format, as OpenAI-compatible servers speak
 * it (OpenAI, vLLM, llama.cpp, LM Studio, Ollama's `/v1`, watsonx's chat API): here the
 * answer and chunk schemas (with the hand checks of their common shapes) and usage; the
 * request body from a `GenerateRequest` in `openAiRequest.ts`, the embeddings answer in
 * `openAiEmbeddings.ts`, both exported from here too.
 *
 * @since 0.2.0
 */
import { Schema } from "effect"
import * as Model from "../../Model.js"
import { maxToolCalls } from "./assemble.js"
import { boundedArray, boundedNonEmptyArray, finite, maxChoices, shallow, tokenCount } from "./decode.js"

export { decodeBase64Floats, Embeddings, embedBatch, embedUsageOf, vectorsByIndex } from "./openAiEmbeddings.js"
export { type ChatBodyOptions, chatBody, extraContentOf, toolsBody } from "./openAiRequest.js"

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
