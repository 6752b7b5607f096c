/**
 * The input checks of the `ResponseCache` service, shared by both backends: the arguments of
 * every method (`getOrCompute`'s key, computation and options, `getMany`'s keys, `setMany`'s
 * entries, `getParts` / `setParts` / `invalidate`'s key and parts), refused with an
 * `InvalidRequest` naming the field before a backend sees them, and the refusals of what a
 * caller's `keep` and `originOf` answer.
 *
 * @internal
 */
import { Effect, Result, Schema } from "effect"
import type { ModelError } from "../AiError.js"
import { thrownIssue } from "../executor/options.js"
import * as Input from "../Input.js"
import { GenerateResponse, StreamPart } from "../Model.js"
import { selfBounded } from "../policy/plan.js"
import type { Origin, Service } from "../ResponseCache.js"

const callKeys: ReadonlySet<string> = new Set(["allowStale", "bound", "originOf", "keep"])
const callFlags: ReadonlyArray<string> = ["allowStale"]
const callKinds = [
  ["bound", "function"],
  ["originOf", "function"],
  ["keep", "function"]
] as const

/**
 * The issue of a `getOrCompute` call's arguments, or `undefined`: a key that is not a string, a
 * computation that is not an Effect, options that are not an object, a key they do not take (a
 * misspelt `alowStale` left stale-if-error off), a value of the wrong kind. The options are read
 * only when given, with no allocation: every cached call goes through this.
 *
 * @internal
 */
export const callIssue = (key: unknown, compute: unknown, options: unknown): Input.Issue | undefined => {
  if (typeof key !== "string") return { path: "key", message: `expected a string, got ${Input.shown(key)}` }
  if (!Effect.isEffect(compute)) return { path: "compute", message: `expected an Effect, got ${Input.shown(compute)}` }
  if (options === undefined) return undefined
  try {
    return (
      Input.notAnObject("options", options) ??
      Input.unknownKey(options as object, callKeys) ??
      Input.notABoolean(options as object, callFlags) ??
      Input.notOfKind(options as object, callKinds)
    )
  } catch (thrown) {
    return thrownIssue(options, thrown)
  }
}

const notAKey = (path: string, key: unknown): Input.Issue => ({
  path,
  message: `expected a string, got ${Input.shown(key)}`
})

const isAnswer = Schema.is(GenerateResponse)
const isPart = Schema.is(StreamPart)
const entryKeys: ReadonlySet<string> = new Set(["key", "value"])

const usageFields = ["inputTokens", "outputTokens", "totalTokens"] as const

/**
 * The issue of a usage count at `at` that is not a finite number, or `undefined`. The schema's
 * numbers take NaN and the infinities, which JSON writes as null: Redis stored such an answer and
 * never read it back (every lookup a miss counted as a Redis error).
 *
 * @internal
 */
export const usageIssue = (at: string, usage: GenerateResponse["usage"]): Input.Issue | undefined => {
  for (const field of usageFields) {
    const count = usage[field]
    if (!Number.isFinite(count)) {
      return { path: `${at}.usage.${field}`, message: `expected a finite number, got ${Input.shown(count)}` }
    }
  }
  return undefined
}

const decodeAnswer = Schema.decodeUnknownResult(GenerateResponse)

/**
 * The issue of what a caller's own computation produced when it is not an answer (`undefined`,
 * no `usage`, a `text` that is not a string: its field named), or `undefined` for an answer. The
 * types promise an answer, a cast or a plain JavaScript caller does not; reading it may throw (a
 * getter), which is its issue too.
 *
 * @internal
 */
export const notAnAnswer = (at: string, answer: unknown): Input.Issue | undefined => {
  try {
    if (isAnswer(answer)) return undefined
    const decoded = decodeAnswer(answer)
    return Result.isFailure(decoded)
      ? Input.issueOf(decoded.failure, at)
      : { path: at, message: `expected an answer, got ${Input.shown(answer)}` }
  } catch (thrown) {
    return { path: at, message: `reading it threw: ${Input.thrownMessage(thrown)}`, cause: thrown }
  }
}

const keysIssue = (keys: unknown): Input.Issue | undefined => {
  if (!Array.isArray(keys)) return { path: "keys", message: `expected an array of strings, got ${Input.shown(keys)}` }
  for (let i = 0; i < keys.length; i++) {
    if (typeof keys[i] !== "string") return notAKey(`keys[${i}]`, keys[i])
  }
  return undefined
}

const entriesIssue = (entries: unknown): Input.Issue | undefined => {
  if (!Array.isArray(entries)) {
    return { path: "entries", message: `expected an array of { key, value }, got ${Input.shown(entries)}` }
  }
  for (let i = 0; i < entries.length; i++) {
    const entry: unknown = entries[i]
    const at = `entries[${i}]`
    const issue = Input.notAnObject(at, entry) ?? Input.unknownKey(entry as object, entryKeys, `${at}.`)
    if (issue !== undefined) return issue
    const { key, value } = entry as { readonly key: unknown; readonly value: unknown }
    if (typeof key !== "string") return notAKey(`${at}.key`, key)
    if (!isAnswer(value)) return { path: `${at}.value`, message: `expected an answer, got ${Input.shown(value)}` }
    const usage = usageIssue(`${at}.value`, value.usage)
    if (usage !== undefined) return usage
  }
  return undefined
}

const decodePart = Schema.decodeUnknownResult(StreamPart)

// A part of a known kind names its field (`parts[1].finishReason`), as `notAnAnswer` does.
const notAPart = (at: string, part: unknown): Input.Issue => {
  const decoded = decodePart(part)
  const issue = Result.isFailure(decoded) ? Input.issueOf(decoded.failure, at) : undefined
  return issue !== undefined && issue.path !== at
    ? issue
    : { path: at, message: `expected a stream part, got ${Input.shown(part)}` }
}

const partsIssue = (parts: unknown): Input.Issue | undefined => {
  if (!Array.isArray(parts))
    return { path: "parts", message: `expected an array of stream parts, got ${Input.shown(parts)}` }
  for (let i = 0; i < parts.length; i++) {
    const part: unknown = parts[i]
    if (!isPart(part)) return notAPart(`parts[${i}]`, part)
    if (part._tag === "Finish") {
      const usage = usageIssue(`parts[${i}]`, part.usage)
      if (usage !== undefined) return usage
    }
  }
  return undefined
}

// A getter (or a `Proxy` trap) that throws while the input is checked is the issue of `path`.
const issueOf = (path: string, input: unknown, check: (input: unknown) => Input.Issue | undefined) => {
  try {
    return check(input)
  } catch (thrown) {
    return { path, message: `reading it threw: ${Input.thrownMessage(thrown)}`, cause: thrown }
  }
}

/**
 * The issue of `parts` that are not stream parts (the part named: `parts[2]`,
 * `parts[1].finishReason`), or `undefined`. Reading them may throw (a getter), which is their issue.
 *
 * @internal
 */
export const notParts = (parts: unknown): Input.Issue | undefined => issueOf("parts", parts, partsIssue)

const refuse = (issue: Input.Issue): Effect.Effect<never, ModelError> => Effect.fail(Input.toInvalidRequest(issue))

/**
 * A backend's service with its inputs checked: what is not a key, an answer or stream parts,
 * and options `getOrCompute` does not take (see {@link callIssue}), fail the call with an
 * `InvalidRequest` naming the field before the backend sees them (a `setMany` with one bad entry
 * stores none). Parts that are not stream parts are said by `partsNotStored` too: they are mostly
 * a caller's own stream's, whose executor answers the stream and ignores the refusal.
 *
 * @internal
 */
export const checked = (service: Service, partsNotStored: (issue: Input.Issue) => Effect.Effect<void>): Service => {
  const checkedService: Service = {
    ...service,
    getOrCompute: (key, compute, options) => {
      const issue = callIssue(key, compute, options)
      return issue === undefined ? service.getOrCompute(key, compute, options) : refuse(issue)
    },
    getMany: (keys) => {
      const issue = issueOf("keys", keys, keysIssue)
      return issue === undefined ? service.getMany(keys) : refuse(issue)
    },
    setMany: (entries) => {
      const issue = issueOf("entries", entries, entriesIssue)
      return issue === undefined ? service.setMany(entries) : refuse(issue)
    },
    getParts: (key) => (typeof key === "string" ? service.getParts(key) : refuse(notAKey("key", key))),
    setParts: (key, parts) => {
      if (typeof key !== "string") return refuse(notAKey("key", key))
      const issue = notParts(parts)
      return issue === undefined ? service.setParts(key, parts) : Effect.andThen(partsNotStored(issue), refuse(issue))
    },
    invalidate: (key) => (typeof key === "string" ? service.invalidate(key) : refuse(notAKey("key", key)))
  }
  // This library's caches bound their own lookups (the memory table answers at once, Redis within its
  // deadline) and apply the caller's `bound`: the engine runs them as they are (`policy/engine.ts`).
  selfBounded.add(checkedService)
  return checkedService
}

// The refusals of a caller's `keep` and `originOf`: the call's own mistake, never answered stale.
const refusals = new WeakSet<object>()

const refusal = (path: "keep" | "originOf" | "compute", message: string, cause?: unknown): ModelError => {
  const error = Input.toInvalidRequest(cause === undefined ? { path, message } : { path, message, cause })
  refusals.add(error)
  return error
}

/**
 * Whether `error` refused what a caller's `keep` or `originOf` did: never answered stale.
 *
 * @internal
 */
export const isRefusal = (error: unknown): boolean => refusals.has(error as object)

/**
 * The refusal of a caller's `keep` or `originOf` that threw.
 *
 * @internal
 */
export const threw = (path: "keep" | "originOf", thrown: unknown): ModelError =>
  refusal(path, `the ${path} option threw: ${Input.thrownMessage(thrown)}`, thrown)

const isOrigin = (u: unknown): boolean =>
  typeof u === "object" &&
  u !== null &&
  typeof (u as Origin).provider === "string" &&
  (!("domain" in u) || typeof (u as Origin).domain === "string")

/**
 * The refusal of what a caller's `originOf` answered, or `undefined` for `undefined` or an
 * origin (`{ provider, domain? }`, strings): anything else cannot be stored. Reading it may throw.
 *
 * @internal
 */
export const originRefusal = (origin: unknown): ModelError | undefined =>
  origin === undefined || isOrigin(origin)
    ? undefined
    : refusal("originOf", `expected it to answer { provider, domain? } or undefined, got ${Input.shown(origin)}`)

/**
 * The refusal of what a caller's `keep` answered, or `undefined` for a boolean or `undefined`
 * (`keep: () => 0` meant "do not keep").
 *
 * @internal
 */
export const keepRefusal = (keep: unknown): ModelError | undefined =>
  keep === undefined || typeof keep === "boolean"
    ? undefined
    : refusal("keep", `expected it to answer true or false, got ${Input.shown(keep)}`)

/**
 * The refusal of a `getOrCompute` of `key` from within the computation of that key (itself, or a
 * fiber it started): it would wait for itself, forever unless a `bound` cut it.
 *
 * @internal
 */
export const recursion = (key: string): ModelError =>
  refusal(
    "compute",
    `getOrCompute of key ${key} was called from within its own computation (a recursion): it would wait for itself`
  )

/**
 * The refusal of a `getOrCompute` of `key` from within the computation of `within`, when the
 * computation of `key` waits (through the keys its own computation asks for) for that of `within`:
 * each would wait for the other, forever unless a `bound` cut them.
 *
 * @internal
 */
export const cycle = (key: string, within: string): ModelError =>
  refusal(
    "compute",
    `getOrCompute of key ${key} was called from within the computation of key ${within}, which the computation of ${key} waits for (a recursion through other keys): it would wait for itself`
  )
