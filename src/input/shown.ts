/**
 * A caller's value as a message writes it: its kind, a scalar bounded, what a caller's code threw.
 * Never the whole value (it may be a secret, or large), and never a throw.
 *
 * @internal
 */
import { Duration } from "effect"
import type { Issue } from "./issues.js"

// Each `typeof` as a message says it; `kindOf` and `notOfKind` both read it.
export const kindNames = {
  string: "a string",
  number: "a number",
  bigint: "a bigint",
  boolean: "a boolean",
  symbol: "a symbol",
  undefined: "undefined",
  object: "an object",
  function: "a function"
} as const

// `Array.isArray` throws for a revoked `Proxy`: such a value is no array a message could name.
const isArray = (input: object): boolean => {
  try {
    return Array.isArray(input)
  } catch {
    return false
  }
}

/**
 * What a wrong value is, for a message (`expected a string, got an array`): `"null"`,
 * `"an array"`, `"an object"`, `"a string"`, `"a number"`, `"a boolean"`, `"a function"`,
 * `"a bigint"`, `"a symbol"` or `"undefined"`. Never writes the value itself (it may be a secret,
 * or large: {@link shown} writes a scalar out), and never throws.
 *
 * @since 0.3.0
 * @category checks
 */
export const kindOf = (input: unknown): string =>
  input === null ? "null" : typeof input === "object" && isArray(input) ? "an array" : kindNames[typeof input]

// A value a message writes out: a prompt or a file's content given where a name belongs is not
// logged whole (a megabyte in every log line, and whatever it held).
const SHOWN_CHARS = 80

/**
 * A caller's value as an error message shows it: a string quoted (past 80 characters, its
 * first 80, an ellipsis and its length: `"xxxx"… (5,000 characters)`), a number, boolean or
 * `Duration` as it reads, anything else by its kind ({@link kindOf}: `null`, an array, an
 * object...). Never throws (a BigInt, a cycle or a getter are not written out, as
 * `JSON.stringify` would try to).
 *
 * @since 0.3.0
 * @category checks
 */
export const shown = (input: unknown): string => {
  if (typeof input === "string") {
    return input.length <= SHOWN_CHARS
      ? JSON.stringify(input)
      : `${JSON.stringify(wholePrefix(input, SHOWN_CHARS))}… (${input.length.toLocaleString("en-US")} characters)`
  }
  if (typeof input === "number" || typeof input === "boolean") return String(input)
  if (isDuration(input)) return Duration.format(input)
  return kindOf(input)
}

// `Duration.isDuration` asks `in`, which a revoked `Proxy` (or a throwing `has` trap) answers with a throw.
export const isDuration = (input: unknown): input is Duration.Duration => {
  try {
    return Duration.isDuration(input)
  } catch {
    return false
  }
}

/**
 * The first `max` UTF-16 units of `text`, one fewer when the last would be the first half of a
 * character outside the BMP (an emoji): a message cut short ends on a whole character.
 *
 * @since 0.3.0
 * @category checks
 */
export const wholePrefix = (text: string, max: number): string => {
  if (text.length <= max) return text
  const code = text.charCodeAt(max - 1)
  return text.slice(0, code >= 0xd800 && code <= 0xdbff ? max - 1 : max)
}

/**
 * What a caller's code threw, as text for a message, whatever it is: an `Error`'s message, a
 * string, or what `String` makes of it, bounded as {@link shown} bounds a string (past 80
 * characters, its first 80, an ellipsis and its length: `xxxx… (5,000 characters)`); never itself
 * a throw (a value without a prototype, a `message` getter that throws).
 *
 * @since 0.3.0
 * @category checks
 */
export const thrownMessage = (thrown: unknown): string => {
  let text: string
  try {
    text = thrown instanceof Error ? String(thrown.message) : String(thrown)
  } catch {
    return `a value that cannot be shown (${kindOf(thrown)})`
  }
  // A message holding a whole response body or file went into every log line and error message.
  return text.length <= SHOWN_CHARS
    ? text
    : `${wholePrefix(text, SHOWN_CHARS)}… (${text.length.toLocaleString("en-US")} characters)`
}

export const threwWhile = (path: string, what: string, error: unknown): Issue => ({
  path,
  message: `${what} threw: ${thrownMessage(error)}`,
  cause: error
})
