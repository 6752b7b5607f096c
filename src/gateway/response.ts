/**
 * OpenAI answers on the gateway's side: `chat.completion`, the chunks of a
 * `chat.completion.chunk` stream (built from a per-stream prefix), embeddings as floats or
 * base64 (little-endian float32, as OpenAI encodes them), and the model list.
 *
 * @internal
 */
import type * as Model from "../Model.js"
import { extraContentOf } from "../Model/http/openAiWire.js"

const finishReasons: Readonly<Record<Model.FinishReason, string>> = {
  stop: "stop",
  length: "length",
  content_filter: "content_filter",
  tool_calls: "tool_calls",
  error: "stop",
  unknown: "stop"
}

/**
 * An OpenAI `finish_reason` for ours.
 *
 * @internal
 */
export const finishReasonOf = (reason: Model.FinishReason): string => finishReasons[reason] ?? "stop"

// A count as OpenAI's clients read it (an integer: Python's SDK refuses null, Go's 2.5): a provider of one's own
// may report NaN (written null), a negative or a fractional count, which the executor passes on.
const wholeCount = (n: number): number => (Number.isFinite(n) && n > 0 ? Math.floor(n) : 0)

/**
 * An OpenAI `usage` object: whole counts of 0 or more (a count that is none is 0; a total that is
 * none is the sum of the others).
 *
 * @internal
 */
export const usageOf = (usage: Model.Usage) => {
  const prompt = wholeCount(usage.inputTokens)
  const completion = wholeCount(usage.outputTokens)
  const total = usage.totalTokens
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: Number.isFinite(total) && total >= 0 ? Math.floor(total) : prompt + completion
  }
}

// A call's signature (Gemini's thought signature) goes to the client where Gemini's own OpenAI-compatible API puts
// it, so that a client sending the call back sends it too (Gemini refuses the next turn without it).
const toolCallWire = (call: Model.ToolCall) => ({
  id: call.id,
  type: "function",
  function: { name: call.name, arguments: call.arguments },
  ...extraContentOf(call)
})

/**
 * The body of a `chat.completion` answer.
 *
 * @internal
 */
export const chatCompletion = (id: string, created: number, model: string, response: Model.GenerateResponse): string =>
  JSON.stringify({
    id,
    object: "chat.completion",
    created,
    model,
    choices: [
      {
        index: 0,
        message: {
          role: "assistant",
          content:
            (response.toolCalls !== undefined || response.refusal !== undefined) && response.text.length === 0
              ? null
              : response.text,
          refusal: response.refusal ?? null,
          ...(response.toolCalls === undefined ? {} : { tool_calls: response.toolCalls.map(toolCallWire) })
        },
        logprobs: null,
        finish_reason: finishReasonOf(response.finishReason)
      }
    ],
    usage: usageOf(response.usage)
  })

/**
 * The fields every chunk of one stream shares, as the start of its JSON text.
 *
 * @internal
 */
export const chunkPrefix = (id: string, created: number, model: string): string =>
  `{"id":${JSON.stringify(id)},"object":"chat.completion.chunk","created":${created},"model":${JSON.stringify(model)},`

/**
 * A chunk's SSE event: `prefix` from {@link chunkPrefix}, then its choices (and usage).
 *
 * @internal
 */
export const chunkEvent = (prefix: string, rest: string): string => `data: ${prefix}${rest}}\n\n`

/**
 * The `choices` of a chunk carrying a delta (and no finish).
 *
 * @internal
 */
export const deltaChoices = (delta: Record<string, unknown>): string =>
  `"choices":[{"index":0,"delta":${JSON.stringify(delta)},"logprobs":null,"finish_reason":null}]`

/**
 * The `choices` of the chunk that finishes the answer.
 *
 * @internal
 */
export const finishChoices = (reason: Model.FinishReason): string =>
  `"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"${finishReasonOf(reason)}"}]`

/**
 * The delta of a complete tool call (sent as one piece: the pipeline assembles them).
 *
 * @internal
 */
export const toolCallDelta = (index: number, call: Model.ToolCall) => ({
  tool_calls: [{ index, ...toolCallWire(call) }]
})

const base64Of = (vector: ReadonlyArray<number>): string => {
  const floats = new Float32Array(vector.length)
  for (let i = 0; i < vector.length; i++) floats[i] = vector[i]!
  // Float32Array is little-endian on every platform Node runs on, as OpenAI's encoding is.
  return Buffer.from(floats.buffer, floats.byteOffset, floats.byteLength).toString("base64")
}

/**
 * The body of an embeddings answer, vectors in input order; `inputTokens` is what the request
 * was charged (the provider's count, or the estimate when it reported none).
 *
 * @internal
 */
export const embeddings = (
  model: string,
  response: Model.EmbedResponse,
  encoding: "float" | "base64",
  inputTokens: number
): string =>
  JSON.stringify({
    object: "list",
    data: response.vectors.map((vector, index) => ({
      object: "embedding",
      index,
      embedding: encoding === "base64" ? base64Of(vector) : vector
    })),
    model,
    usage: { prompt_tokens: wholeCount(inputTokens), total_tokens: wholeCount(inputTokens) }
  })

/**
 * One entry of `GET /v1/models`.
 *
 * @internal
 */
export const modelEntry = (id: string, ownedBy: string) => ({ id, object: "model", created: 0, owned_by: ownedBy })
