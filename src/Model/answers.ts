/**
 * The checks of a provider's answer, which a provider written in JavaScript (a `ModelProvider`
 * of the caller's own functions) gives undecoded: each field of a `generate` or `embed`
 * answer, named where it is wrong. A few `typeof`s an answer, each field read once (a getter
 * may answer differently on a second read); the schema's decoding would cost more. Every
 * issue reads after "the provider <name>": `answered usage.inputTokens -1, not ...`.
 *
 * @internal
 */
import * as Input from "../Input.js"

const finishReasons: ReadonlySet<unknown> = new Set([
  "stop",
  "length",
  "content_filter",
  "tool_calls",
  "error",
  "unknown"
])

const wrong = (field: string, value: unknown, expected: string) =>
  `answered ${field} ${Input.shown(value)}, not ${expected}`

const isCount = (value: unknown) => Number.isSafeInteger(value) && (value as number) >= 0

const usageIssue = (usage: unknown, field: string): string | undefined => {
  if (typeof usage !== "object" || usage === null) return wrong(field, usage, "token counts")
  const fields = usage as Record<string, unknown>
  const inputTokens = fields.inputTokens
  if (!isCount(inputTokens)) return wrong(`${field}.inputTokens`, inputTokens, "a whole number of tokens")
  const outputTokens = fields.outputTokens
  if (!isCount(outputTokens)) return wrong(`${field}.outputTokens`, outputTokens, "a whole number of tokens")
  const totalTokens = fields.totalTokens
  if (!isCount(totalTokens)) return wrong(`${field}.totalTokens`, totalTokens, "a whole number of tokens")
  return undefined
}

const toolCallKeys = ["id", "name", "arguments"] as const

const toolCallsIssue = (calls: unknown): string | undefined => {
  if (!Array.isArray(calls)) return wrong("toolCalls", calls, "an array")
  for (let i = 0; i < calls.length; i++) {
    const call: unknown = calls[i]
    if (typeof call !== "object" || call === null) return wrong(`toolCalls[${i}]`, call, "a tool call")
    const fields = call as Record<string, unknown>
    for (const key of toolCallKeys) {
      const value = fields[key]
      if (typeof value !== "string") return wrong(`toolCalls[${i}].${key}`, value, "a string")
    }
    const signature = fields.signature
    if (signature !== undefined && typeof signature !== "string") {
      return wrong(`toolCalls[${i}].signature`, signature, "a string")
    }
  }
  return undefined
}

const namesIssue = (fields: Record<string, unknown>): string | undefined => {
  const provider = fields.provider
  if (typeof provider !== "string") return wrong("provider", provider, "a string")
  const model = fields.model
  if (typeof model !== "string") return wrong("model", model, "a string")
  return undefined
}

/**
 * What is wrong with a `generate` answer: no object, or a field that breaks `GenerateResponse`
 * (a text that is no string, a finish reason not among the known ones, token counts that are
 * no non-negative safe integers, tool calls without string fields); `undefined` when sound.
 *
 * @internal
 */
export const generateAnswerIssue = (value: unknown): string | undefined => {
  if (typeof value !== "object" || value === null) return `answered ${Input.shown(value)}, not a response`
  const fields = value as Record<string, unknown>
  const text = fields.text
  if (typeof text !== "string") return wrong("text", text, "a string")
  const finishReason = fields.finishReason
  if (!finishReasons.has(finishReason)) {
    return wrong("finishReason", finishReason, "one of stop, length, content_filter, tool_calls, error, unknown")
  }
  const usage = usageIssue(fields.usage, "usage")
  if (usage !== undefined) return usage
  const names = namesIssue(fields)
  if (names !== undefined) return names
  const toolCalls = fields.toolCalls
  if (toolCalls !== undefined) {
    const issue = toolCallsIssue(toolCalls)
    if (issue !== undefined) return issue
  }
  const refusal = fields.refusal
  if (refusal !== undefined && typeof refusal !== "string") return wrong("refusal", refusal, "a string")
  return undefined
}

/**
 * What is wrong with the vectors of an embeddings answer for `count` texts: no array, another
 * number of vectors than texts (a caller's text would get another's vector), a vector that is
 * no array, empty, of another length than the first, or holding a value that is no finite
 * number (what uses vectors compares them dimension by dimension); `undefined` when sound.
 *
 * @internal
 */
export const vectorsIssue = (vectors: unknown, count: number): string | undefined => {
  if (!Array.isArray(vectors)) return `answered vectors ${Input.shown(vectors)}, not an array`
  if (vectors.length !== count) return `answered ${vectors.length} vectors for ${count} texts`
  let size = 0
  for (let i = 0; i < vectors.length; i++) {
    const vector: unknown = vectors[i]
    if (!Array.isArray(vector)) return wrong(`vectors[${i}]`, vector, "an array of numbers")
    if (vector.length === 0) return `answered vectors[${i}] empty, not a vector`
    if (i === 0) size = vector.length
    else if (vector.length !== size) {
      return `answered vectors[${i}] of ${vector.length} dimensions, where vectors[0] has ${size}`
    }
    for (let j = 0; j < vector.length; j++) {
      const number: unknown = vector[j]
      if (typeof number !== "number" || !Number.isFinite(number)) {
        return wrong(`vectors[${i}]`, number, `a finite number at index ${j}`)
      }
    }
  }
  return undefined
}

/**
 * What is wrong with an `embed` answer for `count` texts: no object, unsound vectors
 * ({@link vectorsIssue}), usage that is no token counts, or names that are no strings;
 * `undefined` when sound.
 *
 * @internal
 */
export const embedAnswerIssue = (value: unknown, count: number): string | undefined => {
  if (typeof value !== "object" || value === null) return `answered ${Input.shown(value)}, not a response`
  const fields = value as Record<string, unknown>
  const vectors = vectorsIssue(fields.vectors, count)
  if (vectors !== undefined) return vectors
  const usage = fields.usage
  if (usage !== undefined) {
    const issue = usageIssue(usage, "usage")
    if (issue !== undefined) return issue
  }
  return namesIssue(fields)
}
