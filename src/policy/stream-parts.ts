/**
 * The parts of a provider's stream as the attempt checks them: a part that is no `StreamPart`,
 * a cache's answer that is no whole stream, a stream that ends before its `Finish`.
 *
 * @internal
 */
import { Effect } from "effect"
import { ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import type { StreamPart } from "../Model.js"

// What is wrong with a part a provider's stream gave (a caller's own provider can give anything),
// or undefined. A few `typeof`s a part: the schema's decoding would cost more than the hand-over.
const usageKeys = ["inputTokens", "outputTokens", "totalTokens"] as const

export const partIssue = (part: unknown): string | undefined => {
  if (typeof part !== "object" || part === null) return `${Input.shown(part)} is not a StreamPart`
  const fields = part as Record<string, unknown>
  switch (fields._tag) {
    case "TextDelta":
      return typeof fields.text === "string"
        ? undefined
        : `a TextDelta's text is ${Input.shown(fields.text)}, not a string`
    case "ToolCall": {
      const call = fields.call as Record<string, unknown> | null | undefined
      return typeof call === "object" &&
        call !== null &&
        typeof call.id === "string" &&
        typeof call.name === "string" &&
        typeof call.arguments === "string"
        ? undefined
        : `a ToolCall's call is ${Input.shown(call)}, not { id, name, arguments } strings`
    }
    case "Finish": {
      const usage = fields.usage as Record<string, unknown> | null | undefined
      if (typeof usage !== "object" || usage === null) {
        return `a Finish's usage is ${Input.shown(usage)}, not token counts`
      }
      // As a `generate` answer's (Model/answers.ts): whole counts of 0 or more, each read once.
      for (const key of usageKeys) {
        const count = usage[key]
        if (!Number.isSafeInteger(count) || (count as number) < 0) {
          return `a Finish's usage.${key} is ${Input.shown(count)}, not a whole number of tokens`
        }
      }
      return typeof fields.finishReason === "string" &&
        typeof fields.provider === "string" &&
        typeof fields.model === "string"
        ? undefined
        : "a Finish's finishReason, provider and model are not all strings"
    }
    default:
      return `_tag ${Input.shown(fields._tag)} is not TextDelta, ToolCall or Finish`
  }
}

/**
 * Whether a cache's answer is a whole stream: stream parts, ending with their one `Finish`.
 * A custom cache can answer anything; a live provider's parts are checked as they come.
 *
 * @internal
 */
export const isWholeStream = (parts: unknown): parts is readonly [StreamPart, ...Array<StreamPart>] => {
  if (!Array.isArray(parts) || parts.length === 0) return false
  try {
    for (let i = 0; i < parts.length; i++) {
      if (partIssue(parts[i]) !== undefined) return false
      if ((parts[i]._tag === "Finish") !== (i === parts.length - 1)) return false
    }
  } catch {
    // A part's getter that throws.
    return false
  }
  return true
}

// A provider's part that is not a StreamPart: the attempt's failure (a Decode error falls back
// as one on a generation does), never a defect in the consumer's fiber.
export const malformed = (provider: string, position: number, issue: string) =>
  Effect.fail(
    new ModelError({
      reason: "Decode",
      message: `the provider ${provider} streamed a malformed part ${position}: ${issue}`,
      provider,
      field: `stream part ${position}`
    })
  )

export const NoFinish = (provider: string) =>
  new ModelError({ reason: "Transport", message: "the stream ended before its final event", provider })
