/**
 * Unknown keys of options (a misspelt `timout`), named with the known one they are likely a typo of.
 *
 * @internal
 */
import type { Issue } from "./issues.js"
import { shown } from "./shown.js"

/**
 * The first key of `input` that `known` lacks (a misspelt `timout`), as the issue naming it
 * (`prefix` + key) with the known one it is likely a typo of ({@link unknownFieldMessage}:
 * `unknown option (did you mean timeout?)`), else the known ones; or `undefined`. Walks the keys
 * without building an array: per-call options of the executor and router go through it on every call.
 *
 * @since 0.3.0
 * @category checks
 */
export const unknownKey = (
  input: object,
  known: ReadonlySet<string>,
  prefix = "",
  noun: "field" | "option" = "option"
): Issue | undefined => {
  for (const key in input) {
    if (!known.has(key)) return unknownKeyIssue(key, known, prefix, noun)
  }
  return undefined
}

/**
 * {@link unknownKey} over the own keys of `input` only.
 *
 * @since 0.3.0
 * @category checks
 */
export const misspeltKey = (
  input: object,
  known: ReadonlySet<string>,
  prefix = "",
  noun: "field" | "option" = "option"
): Issue | undefined => {
  for (const key of Object.keys(input)) {
    if (!known.has(key)) return unknownKeyIssue(key, known, prefix, noun)
  }
  return undefined
}

/**
 * {@link misspeltKey} for a check that tells every problem at once: an issue for each own key of
 * `input` that `known` lacks, in key order, each worded and bounded as `misspeltKey` words one.
 *
 * @since 0.3.0
 * @category checks
 */
export const misspeltKeys = (
  input: object,
  known: ReadonlySet<string>,
  prefix = "",
  noun: "field" | "option" = "option"
): Array<Issue> => {
  const issues: Array<Issue> = []
  for (const key of Object.keys(input)) {
    if (!known.has(key)) issues.push(unknownKeyIssue(key, known, prefix, noun))
  }
  return issues
}

const unknownKeyIssue = (key: string, known: ReadonlySet<string>, prefix: string, noun: "field" | "option"): Issue => ({
  path: `${prefix}${keyShown(key)}`,
  message: unknownFieldMessage(key, [...known], noun)
})

// A key as a path names it: as written when it is a plain name, else quoted and bounded as `shown`
// writes a string (a key with a line break forged a log line; one of a megabyte went whole in).
const plainKey = (key: string): boolean => {
  if (key.length === 0 || key.length > 80) return false
  for (let i = 0; i < key.length; i++) {
    const code = key.charCodeAt(i)
    // Control characters, DEL, a quote, a backslash, and surrogates (a lone one cannot be written).
    if (code < 0x20 || code === 0x7f || code === 0x22 || code === 0x5c || (code >= 0xd800 && code <= 0xdfff)) {
      return false
    }
  }
  return true
}
const keyShown = (key: string): string => (plainKey(key) ? key : shown(key))

const editDistance = (a: string, b: string): number => {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = current
  }
  return previous[b.length]!
}

/**
 * The known field `key` is likely a typo of (case aside, a letter or two off, or the start of it:
 * `token` for `tokenEnv`), if one is.
 */
const likelyField = (key: string, known: ReadonlyArray<string>): string | undefined => {
  if (key.length > 64) return undefined
  const typed = key.toLowerCase()
  const allowed = typed.length <= 4 ? 1 : 2
  let best: string | undefined
  let bestDistance = allowed + 1
  for (const field of known) {
    const lower = field.toLowerCase()
    const distance = typed.length >= 4 && lower.startsWith(typed) ? allowed : editDistance(typed, lower)
    if (distance < bestDistance) {
      best = field
      bestDistance = distance
    }
  }
  return best
}

// Known fields an unknown field's message lists: a provider has twenty, and the message is one line.
const SHOWN_FIELDS = 8

/**
 * The message of an unknown field (or option) `key` among `known`: `unknown field (did you mean
 * maxAttempts?)` for the known one it is likely a typo of (case aside, a letter or two off, or the
 * start of it), else `unknown field (expected one of ...)` with the first eight known.
 *
 * @since 0.3.0
 * @category conversions
 */
export const unknownFieldMessage = (
  key: PropertyKey | undefined,
  known: ReadonlyArray<string> | undefined,
  noun: "field" | "option" = "field"
): string => {
  if (known === undefined || known.length === 0) return `unknown ${noun}`
  const likely = typeof key === "string" ? likelyField(key, known) : undefined
  if (likely !== undefined) return `unknown ${noun} (did you mean ${likely}?)`
  const shown = known.slice(0, SHOWN_FIELDS).join(", ")
  const more = known.length > SHOWN_FIELDS ? `, and ${known.length - SHOWN_FIELDS} others` : ""
  return `unknown ${noun} (expected one of ${shown}${more})`
}
