/**
 * Resumption of a stream after a mid-stream failure (`StreamOptions.resume`): the request
 * the next step receives, which failures allow it, and the removal of the text the
 * continuation repeats. Used by the stream's consumer (`stream.ts`).
 *
 * @internal
 */
import { type AiError, shouldFallback } from "../AiError.js"
import { estimateTokens, type GenerateRequest, type Message, type StreamPart } from "../Model.js"

/**
 * Resumption after a mid-stream failure. Lossy by nature: the next step receives the
 * conversation plus the partial answer as an assistant message and an instruction to
 * continue exactly where it stopped; text it repeats (the longest suffix of the delivered
 * text, starting at a word boundary and at least `minOverlap` characters long, that the
 * continuation starts with) is removed before delivery.
 *
 * @internal
 */
export interface ResumeOptions {
  /** Resumptions per stream at most. Default 1. */
  readonly maxResumes?: number | undefined
  /** The user message asking to continue. */
  readonly instruction?: string | undefined
  /** Shortest repeated prefix that is removed. Default 4 characters. */
  readonly minOverlap?: number | undefined
}

/**
 * The user message asking to continue when `ResumeOptions.instruction` is not given.
 *
 * @internal
 */
export const defaultInstruction =
  "Your previous answer was cut off. Continue it exactly where it stopped: do not repeat any text already " +
  "written, do not add a preamble, start with the next characters of the answer."

/**
 * Removes from the start of a resumed continuation the text the consumer already has.
 *
 * @internal
 */
export class Dedupe {
  private pending = ""
  private decided = false
  constructor(
    private readonly delivered: string,
    private readonly minOverlap: number
  ) {}

  feed(parts: ReadonlyArray<StreamPart>): Array<StreamPart> {
    if (this.decided) return parts as Array<StreamPart>
    const out: Array<StreamPart> = []
    for (const part of parts) {
      if (this.decided) {
        out.push(part)
      } else if (part._tag === "TextDelta") {
        this.pending += part.text
        const text = this.decide(false)
        if (text !== undefined && text.length > 0) out.push({ _tag: "TextDelta", text })
      } else {
        const text = this.decide(true)
        if (text !== undefined && text.length > 0) out.push({ _tag: "TextDelta", text })
        out.push(part)
      }
    }
    return out
  }

  private decide(final: boolean): string | undefined {
    const tail = this.delivered
    const pending = this.pending
    if (!final) {
      const at = tail.indexOf(pending)
      if (at !== -1 && at < tail.length - pending.length) return undefined
    }
    this.decided = true
    this.pending = ""
    let overlap = 0
    for (let k = Math.min(pending.length, tail.length); k >= this.minOverlap; k--) {
      const start = tail.length - k
      if ((start === 0 || /\s/.test(tail[start - 1]!)) && tail.endsWith(pending.slice(0, k))) {
        overlap = k
        break
      }
    }
    let rest = pending.slice(overlap)
    if (/\s$/.test(tail) || tail.length === 0) rest = rest.replace(/^\s+/, "")
    return rest
  }
}

/**
 * The request of a resumed stream: the conversation, the partial answer as an assistant
 * message, the instruction as a user message; `maxTokens` less the partial answer's.
 *
 * @internal
 */
export const resumeRequest = (original: GenerateRequest, partial: string, instruction: string): GenerateRequest => {
  const { messages, prompt, ...rest } = original
  const conversation: ReadonlyArray<Message> = messages ?? [{ role: "user", content: prompt ?? "" }]
  const resumed: GenerateRequest = {
    ...rest,
    messages: [...conversation, { role: "assistant", content: partial }, { role: "user", content: instruction }]
  }
  return rest.maxTokens === undefined
    ? resumed
    : { ...resumed, maxTokens: Math.max(1, rest.maxTokens - estimateTokens(partial)) }
}

/**
 * Whether a mid-stream failure may be resumed on the next step: a failure that falls back, a missed
 * first-chunk or idle deadline; never the total deadline. As a call does not fall back then, neither
 * the answer a content filter stopped is continued elsewhere nor a request every provider would
 * refuse (`InvalidRequest` but about the model, `TooLarge` but about the answer) is sent again, longer.
 *
 * @internal
 */
export const resumable = (error: AiError): boolean =>
  error._tag === "TimeoutError" ? error.limit !== "total" : shouldFallback(error)
