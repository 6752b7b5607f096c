/**
 * Who is calling (the {@link CallContext} every error is made with) and what of the other
 * side's text an error may carry: scrubbed of the call's secrets, then truncated.
 *
 * @since 0.3.0
 */
import { Redacted } from "effect"

/**
 * Who is calling, for error messages and for scrubbing secrets out of them.
 *
 * @since 0.2.0
 * @category models
 */
export interface CallContext {
  readonly provider: string
  readonly model?: string | undefined
  /** Secrets that must never appear in an error message (keys, tokens). */
  readonly secrets?: ReadonlyArray<Redacted.Redacted> | undefined
  /**
   * The request field a 404 with a JSON error body points at: `"model"` where such a 404
   * can only mean an unknown model (Ollama's `/api/chat`).
   */
  readonly notFoundField?: string | undefined
  /**
   * A 200 answer goes to its decoder first, and is read as an error object (`{"error": …}`)
   * only when the decoder refuses it: for HTTP agents, whose answers may carry an `error`
   * field of their own. Providers' answers are checked for an error object first.
   */
  readonly answerFirst?: boolean | undefined
}

const MAX_MESSAGE = 500
/** A request field's name as the server gave it (`param`): a path, never a paragraph. */
const MAX_FIELD = 120

/**
 * Replaces the value of every secret (4 characters or more) in `text` by `<redacted>`.
 *
 * @since 0.2.0
 * @category utils
 */
export const scrub = (text: string, secrets: ReadonlyArray<Redacted.Redacted> | undefined): string => {
  if (secrets === undefined) return text
  let out = text
  for (const secret of secrets) {
    const value = Redacted.value(secret)
    if (typeof value === "string" && value.length >= 4) out = out.split(value).join("<redacted>")
  }
  return out
}

/**
 * The length of the longest secret (of 4 characters or more): how far past a cut a text must
 * reach for {@link scrubbedHead} to see whole every secret that starts before the cut.
 *
 * @since 0.3.0
 * @category utils
 */
export const longestSecret = (secrets: ReadonlyArray<Redacted.Redacted> | undefined): number => {
  let longest = 0
  for (const secret of secrets ?? []) {
    const value = Redacted.value(secret)
    if (typeof value === "string" && value.length >= 4 && value.length > longest) longest = value.length
  }
  return longest
}

/**
 * The first `max` characters of `text` with every secret that starts among them replaced
 * whole by `<redacted>`: cutting first and scrubbing after would leave the start of a secret
 * that straddles the cut. `text` should reach {@link longestSecret} characters past `max`.
 *
 * @since 0.3.0
 * @category utils
 */
export const scrubbedHead = (
  text: string,
  max: number,
  secrets: ReadonlyArray<Redacted.Redacted> | undefined
): string => {
  const values: Array<string> = []
  for (const secret of secrets ?? []) {
    const value = Redacted.value(secret)
    if (typeof value === "string" && value.length >= 4) values.push(value)
  }
  if (values.length === 0) return text.slice(0, max)
  let out = ""
  let i = 0
  while (i < max && i < text.length) {
    const found = values.find((value) => text.startsWith(value, i))
    if (found === undefined) {
      out += text[i]
      i += 1
    } else {
      out += "<redacted>"
      i += found.length
    }
  }
  return out
}

const truncate = (text: string, max = MAX_MESSAGE): string => (text.length > max ? `${text.slice(0, max)}…` : text)

/**
 * A message of the other side's, as errors carry it: scrubbed of `ctx`'s secrets, then
 * truncated (so a secret cut in two by the truncation leaks no part of it).
 *
 * @since 0.2.0
 * @category utils
 */
export const clean = (text: string, ctx: CallContext): string => truncate(scrub(text, ctx.secrets))

/**
 * The request field an error names (the body's `param`), as errors carry it: scrubbed of
 * `ctx`'s secrets, then truncated, as {@link clean} does a message.
 *
 * @since 0.3.0
 * @category utils
 */
export const cleanField = (field: string, ctx: CallContext): string => truncate(scrub(field, ctx.secrets), MAX_FIELD)
