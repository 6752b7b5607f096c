/**
 * What the Promise facade accepts, checked before anything runs: the options of each call
 * (unknown keys refused, every value typed), the prompt and the conversation before it.
 * Every failure is an `InvalidRequest` naming the field, never a `TypeError`.
 *
 * @internal
 */
import { type Duration, Result, Schema } from "effect"
import { invalidRequest, type ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import { checkGenerate, type EmbedRequest, type GenerateRequest, Message, type RequestLimits } from "../Model.js"
import { maxRequestArray } from "../batch/items.js"

// The longest array a call's argument may hold anywhere (its domains, context, messages, texts), as a batch
// item's request: a sparse `new Array(2 ** 32 - 1)` costs nothing to make, and copying it held the event
// loop for half a minute before failing.
const maxArray = maxRequestArray

/** A call's options after their checks; the rest are checked by the router, executor or batch. @internal */
export interface Checked {
  readonly timeout: Duration.Duration | undefined
  readonly signal: AbortSignal | undefined
  readonly context: ReadonlyArray<Message> | undefined
  readonly raw: Readonly<Record<string, unknown>>
}

/** No options given. @internal */
export const none: Checked = { timeout: undefined, signal: undefined, context: undefined, raw: {} }

const common = ["timeout", "signal", "context", "cache", "allowStale"]

/** The options each call takes. @internal */
export const Keys = {
  execute: new Set([...common, "domain"]),
  fallback: new Set(common),
  parallel: new Set([...common, "mode"]),
  hedge: new Set([...common, "after", "defaultAfter"]),
  stream: new Set(["timeout", "signal", "context", "cache", "domain", "firstChunkTimeout", "idleTimeout"]),
  embed: new Set(["timeout", "signal", "domain"]),
  batch: new Set(["timeout", "signal", "domain", "fallback", "concurrency", "onProgress", "id"])
} as const

// `Object.create(AbortSignal.prototype)` passes `instanceof`, but reading its state throws (a
// TypeError out of the call): only a signal itself is taken (a `Proxy` of one reads through to it).
const isRealSignal = (signal: AbortSignal): boolean => {
  try {
    return typeof signal.aborted === "boolean"
  } catch {
    return false
  }
}

const decodeContext = Schema.decodeUnknownResult(Schema.Array(Message), { onExcessProperty: "error" })

/** Checks a call's options against the keys it takes; a failure names the field. @internal */
export const check = (options: unknown, allowed: ReadonlySet<string>): Result.Result<Checked, ModelError> => {
  if (options === undefined) return Result.succeed(none)
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    return Result.fail(invalidRequest("options", `expected an object, got ${Input.kindOf(options)}`))
  }
  const foreign = Input.notOptions(options)
  if (foreign !== undefined)
    return Result.fail(invalidRequest("options", `expected an object of options, got ${foreign}`))
  const read = Input.readFields(options)
  if (Result.isFailure(read)) return Result.fail(Input.toInvalidRequest(read.failure))
  // Each value read once, all of it (a `context`'s messages, a `{ seconds }` duration): a getter
  // that throws is the field's InvalidRequest, and nothing later reads the caller's objects.
  // Named as every check names a key: a long one bounded, one with a line break quoted (it forged a log line).
  const unknown = Input.unknownKey(read.success, allowed)
  if (unknown !== undefined) return Result.fail(Input.toInvalidRequest(unknown))
  const raw: Record<string, unknown> = Object.create(null)
  for (const key of Object.keys(read.success)) {
    const value = Input.snapshot(read.success[key], key, key, maxArray)
    if (Result.isFailure(value)) return Result.fail(Input.toInvalidRequest(value.failure))
    raw[key] = value.success
  }
  for (const key of ["cache", "allowStale"]) {
    if (raw[key] !== undefined && typeof raw[key] !== "boolean") {
      return Result.fail(invalidRequest(key, `expected a boolean, got ${Input.kindOf(raw[key])}`))
    }
  }
  const domain = raw.domain
  if (domain !== undefined && typeof domain !== "string" && !(allowed === Keys.stream && Array.isArray(domain))) {
    return Result.fail(invalidRequest("domain", `expected a domain name, got ${Input.kindOf(domain)}`))
  }
  const signal = raw.signal
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    return Result.fail(invalidRequest("signal", `expected an AbortSignal, got ${Input.kindOf(signal)}`))
  }
  if (signal !== undefined && !isRealSignal(signal)) {
    return Result.fail(invalidRequest("signal", "expected an AbortSignal, got an object that only inherits from one"))
  }
  const timeout = raw.timeout === undefined ? Result.succeed(undefined) : Input.duration("timeout", raw.timeout)
  if (Result.isFailure(timeout)) return Result.fail(Input.toInvalidRequest(timeout.failure))
  let context: ReadonlyArray<Message> | undefined
  if (raw.context !== undefined) {
    const decoded = decodeContext(raw.context)
    if (Result.isFailure(decoded)) {
      const issue = Input.issueOf(decoded.failure, "context")
      return Result.fail(invalidRequest(issue.path, issue.message))
    }
    context = decoded.success
  }
  return Result.succeed({ timeout: timeout.success, signal, context, raw })
}

const unbounded: RequestLimits = { maxInputChars: Infinity, maxMessages: Infinity, maxEmbedTexts: Infinity }

/**
 * The request of a prompt, the conversation's earlier messages first. Read when the call is made
 * (as the domains and an embedding's input are), not once the manager is built: a caller that
 * goes on changing its objects changes nothing of the call. @internal
 */
export const requestOf = (
  prompt: unknown,
  context: ReadonlyArray<Message> | undefined
): Result.Result<GenerateRequest, ModelError> => {
  let array: boolean
  try {
    array = Array.isArray(prompt)
  } catch {
    // A revoked `Proxy`: its snapshot names `prompt`.
    array = false
  }
  if (typeof prompt !== "string" && (typeof prompt !== "object" || prompt === null || array)) {
    return Result.fail(invalidRequest("prompt", `expected a string or a request object, got ${Input.kindOf(prompt)}`))
  }
  // A request object is read once, all of it: a getter that throws is the field's InvalidRequest
  // (`prompt`, `messages[1].content`), and the pipeline and the provider read the copy.
  const read = Input.snapshot(prompt, "", "prompt", maxArray)
  if (Result.isFailure(read)) return Result.fail(Input.toInvalidRequest(read.failure))
  const request: GenerateRequest = typeof prompt === "string" ? { prompt } : (read.success as GenerateRequest)
  if (context === undefined || context.length === 0) return Result.succeed(request)
  // The request is checked as given first (its size is checked with the context, by the pipeline):
  // merged, a wrong `prompt` or `messages` would be named as a message of the context's (or pass,
  // when the context alone is a conversation), and a prompt beside messages dropped unseen.
  const refused = checkGenerate(request, unbounded)
  if (refused !== undefined) return Result.fail(refused)
  const { prompt: text, messages, ...rest } = request
  const own: ReadonlyArray<Message> = messages ?? (text === undefined ? [] : [{ role: "user", content: text }])
  return Result.succeed({ ...rest, messages: [...context, ...own] })
}

/** The embedding request of one text, several, or a whole request (checked by the pipeline). @internal */
export const embedRequestOf = (input: unknown): Result.Result<EmbedRequest, ModelError> => {
  if (typeof input === "string") return Result.succeed({ texts: [input] })
  if (typeof input !== "object" || input === null) {
    return Result.fail(
      invalidRequest("input", `expected a string, an array of strings or a request, got ${Input.kindOf(input)}`)
    )
  }
  // Read once, as a prompt's request is: the texts of an array are the request's `texts`.
  let array: boolean
  try {
    array = Array.isArray(input)
  } catch {
    // A revoked `Proxy`: its snapshot names `input`.
    array = false
  }
  const read = array ? Input.snapshot(input, "texts", "texts", maxArray) : Input.snapshot(input, "", "input", maxArray)
  if (Result.isFailure(read)) return Result.fail(Input.toInvalidRequest(read.failure))
  return Result.succeed(
    array ? { texts: read.success as unknown as EmbedRequest["texts"] } : (read.success as EmbedRequest)
  )
}

/** The domains of a call, read once (a `Proxy` or a getter that throws is `domains`' InvalidRequest). @internal */
export const domainsOf = (domains: unknown): Result.Result<ReadonlyArray<string>, ModelError> => {
  const read = Input.snapshot(domains, "domains", "domains", maxArray)
  return Result.isFailure(read)
    ? Result.fail(Input.toInvalidRequest(read.failure))
    : Result.succeed(read.success as ReadonlyArray<string>)
}

/** A call's request and its domains, read in that order. @internal */
export const withDomains = (
  prompt: unknown,
  domains: unknown,
  checked: Checked
): Result.Result<readonly [GenerateRequest, ReadonlyArray<string>], ModelError> =>
  Result.flatMap(requestOf(prompt, checked.context), (request) =>
    Result.map(domainsOf(domains), (names) => [request, names] as const)
  )

/**
 * Whether an abort reason says the caller's deadline passed (`AbortSignal.timeout` gives a
 * `TimeoutError` DOMException).
 *
 * @internal
 */
export const isTimeoutReason = (reason: unknown): boolean =>
  typeof reason === "object" && reason !== null && (reason as { readonly name?: unknown }).name === "TimeoutError"
