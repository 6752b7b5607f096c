/**
 * What a batch accepts: its items (each checked on its own, so one bad item fails alone)
 * and its options (checked once: a bad one fails the whole run, naming the field).
 *
 * @internal
 */
import { Effect, Result } from "effect"
import { type AiError, invalidRequest, type ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import type { ProgressEvent } from "../Batch.js"
import type { GenerateRequest } from "../Model.js"
import type { Service as RouterService } from "../Router.js"
import { renamed } from "../policy/failure.js"

/** An item made into a request, with the domain it names (if any) and the form it came in. */
export interface Parsed {
  readonly request: GenerateRequest
  readonly domain: string | undefined
  readonly via: "string" | "query" | "request"
}

/**
 * The longest array a `{ request }` item's request may hold anywhere (its `messages`, a
 * content's parts, a schema's `enum`): far above any request a provider takes, low enough that
 * a sparse `messages.length = 2 ** 32 - 1` is refused before it is copied.
 */
export const maxRequestArray = 1_000_000

const expected = "expected a string, { query } or { request }"

const itemFields = ["domain", "query", "request"]
const itemFieldSet: ReadonlySet<string> = new Set(itemFields)

/** An item whose own reading threw (a trap of an items `Proxy`): that item's error, not the batch's. */
class UnreadableItem {
  constructor(readonly error: unknown) {}
}

const threw = (path: string, what: string, error: unknown): ModelError =>
  Input.toInvalidRequest({
    path,
    message: `${what} threw: ${Input.thrownMessage(error)}`,
    cause: error
  })

/**
 * Item `index` of a batch's items, read when the batch reaches it (a batch reads only the items
 * it has reached): an element whose reading throws (a trap of an items `Proxy`) is that item's
 * error, not the batch's.
 */
export const itemAt = (items: ReadonlyArray<unknown>, index: number): unknown => {
  try {
    return items[index]
  } catch (error) {
    return new UnreadableItem(error)
  }
}

// Walks the keys without building an array (one item at a time, up to 100k a batch); a
// `Proxy` whose key listing throws is that item's error, as a throwing getter is.
const unknownField = (item: object, index: number): ModelError | undefined => {
  try {
    const unknown = Input.unknownKey(item, itemFieldSet, "", "field")
    if (unknown !== undefined) return invalidRequest(`items[${index}].${unknown.path}`, unknown.message)
  } catch (error) {
    return threw(`items[${index}]`, "listing its fields", error)
  }
  return undefined
}

/**
 * An item as a request, or the `InvalidRequest` of that item alone (`items[3]`,
 * `items[3].query`, `items[3].domain`, an unknown `items[3].domian`). The request itself is checked by the pipeline.
 */
export const parse = (item: unknown, index: number): Parsed | ModelError => {
  if (typeof item === "string") return { request: { prompt: item }, domain: undefined, via: "string" }
  if (typeof item !== "object" || item === null) {
    return invalidRequest(`items[${index}]`, `${expected}, got ${Input.kindOf(item)}`)
  }
  let array: boolean
  try {
    if (item instanceof UnreadableItem) return threw(`items[${index}]`, "reading it", item.error)
    array = Array.isArray(item)
  } catch (error) {
    // A revoked `Proxy`: even asking what it is throws.
    return threw(`items[${index}]`, "reading it", error)
  }
  if (array) return invalidRequest(`items[${index}]`, `${expected}, got an array`)
  const read = Input.readFields(item, itemFields, `items[${index}]`)
  if (Result.isFailure(read)) return Input.toInvalidRequest(read.failure)
  // A misspelt `domian` would run the item on the default provider: refused, as a misspelt option is.
  const unknown = unknownField(item, index)
  if (unknown !== undefined) return unknown
  const fields = read.success as { readonly query?: unknown; readonly request?: unknown; readonly domain?: unknown }
  if ("query" in fields && "request" in fields) {
    return invalidRequest(`items[${index}]`, "expected either query or request, got both")
  }
  const domain = fields.domain
  if (domain !== undefined && typeof domain !== "string") {
    return invalidRequest(`items[${index}].domain`, `expected a domain name, got ${Input.kindOf(domain)}`)
  }
  if ("query" in fields) {
    if (typeof fields.query !== "string") {
      return invalidRequest(`items[${index}].query`, `expected a string, got ${Input.kindOf(fields.query)}`)
    }
    return { request: { prompt: fields.query }, domain, via: "query" }
  }
  if ("request" in fields) {
    // The request read once, all of it: a getter that throws is its field's error
    // (`items[2].request.prompt`), and the pipeline and the provider read the copy.
    const request = Input.snapshot(fields.request, "", "request", maxRequestArray)
    if (Result.isFailure(request)) return underItem(Input.toInvalidRequest(request.failure), index, "request")
    return { request: request.success as GenerateRequest, domain, via: "request" }
  }
  return invalidRequest(`items[${index}]`, `${expected}, got an object with neither`)
}

/**
 * A refusal of item `index` before it ran, named under the item as `parse` names its own:
 * its request's check (`from` is the item's form: `prompt` of `{ request }` is
 * `items[2].request.prompt`, of `{ query }` `items[2].query`, of a string `items[2]`) or its
 * domain's lookup (`from: "domain"`: `items[4].domain`). Only an `InvalidRequest` is renamed;
 * only the error paths call it.
 */
export const underItem = <E extends AiError>(error: E, index: number, from: Parsed["via"] | "domain"): E => {
  if (error._tag !== "ModelError" || error.reason !== "InvalidRequest") return error
  const field = error.field
  const named = itemField(`items[${index}]`, field === "(root)" ? undefined : field, from)
  return named === undefined ? error : renamed(error, named)
}

const itemField = (item: string, field: string | undefined, from: Parsed["via"] | "domain"): string | undefined => {
  switch (from) {
    case "domain":
      return field === "domain" ? `${item}.domain` : undefined
    case "request":
      return field === undefined || field === "request" ? `${item}.request` : `${item}.request.${field}`
    case "query":
      return field === undefined ? item : field === "prompt" ? `${item}.query` : `${item}.${field}`
    case "string":
      return field === undefined || field === "prompt" ? item : `${item}.${field}`
  }
}

/** A run's options after their checks. */
export interface Checked {
  readonly concurrency: number | undefined
  readonly domain: string | undefined
  readonly fallback: ReadonlyArray<string>
  readonly onProgress: ((event: ProgressEvent) => void) | undefined
  readonly onEvent: ((event: ProgressEvent) => Effect.Effect<void>) | undefined
  readonly cancel: Effect.Effect<void> | undefined
  readonly id: string | undefined
}

interface RawOptions {
  readonly concurrency?: unknown
  readonly domain?: unknown
  readonly fallback?: unknown
  readonly onProgress?: unknown
  readonly onEvent?: unknown
  readonly cancel?: unknown
  readonly id?: unknown
  readonly bufferSize?: unknown
}

const optionNames = ["concurrency", "domain", "fallback", "onProgress", "onEvent", "cancel", "id", "bufferSize"]
const optionFields: ReadonlySet<string> = new Set(optionNames)

/** The most domains a batch's `fallback` lists (a chain longer than this is a mistake, not a plan). */
const maxFallback = 1_000

/** The longest batch `id`, as an HTTP agent's task id (`agent/checks.ts`). */
const maxIdLength = 1_000

const fail = (field: string, message: string) => Effect.fail(invalidRequest(field, message))

const isFunction = (u: unknown): u is (...args: ReadonlyArray<never>) => unknown => typeof u === "function"

/**
 * Checks the items' container (an array of at most `maxItems`) and a run's options; the
 * batch's `domain` and `fallback` must be known domains. Fails with an `InvalidRequest` naming the field.
 */
export const check: (
  items: unknown,
  input: unknown,
  router: RouterService,
  resolved: ReadonlyMap<string | undefined, unknown>,
  maxItems: number,
  /** `Batch.stream`'s options: `bufferSize` is one of them; `run` keeps no buffer and refuses it. */
  streamed: boolean
) => Effect.Effect<
  { readonly items: ReadonlyArray<unknown>; readonly total: number; readonly options: Checked },
  ModelError
> = Effect.fnUntraced(function* (container, input, router, resolved, maxItems, streamed) {
  let array: boolean
  try {
    array = Array.isArray(container)
  } catch (error) {
    // A revoked `Proxy`: the batch's bad input, not a defect of its run.
    return yield* Effect.fail(threw("items", "reading it", error))
  }
  if (!array) return yield* fail("items", `expected an array of items, got ${Input.kindOf(container)}`)
  const items = container as ReadonlyArray<unknown>
  if (input === null || typeof input !== "object") {
    return yield* fail("options", `expected an object, got ${Input.kindOf(input)}`)
  }
  const read = Input.readFields(input, optionNames)
  if (Result.isFailure(read)) return yield* Effect.fail(Input.toInvalidRequest(read.failure))
  let unknown: Input.Issue | undefined
  try {
    unknown = Input.unknownKey(input, optionFields)
  } catch (error) {
    // A `Proxy` whose key listing throws.
    return yield* Effect.fail(threw("options", "listing its fields", error))
  }
  if (unknown !== undefined) return yield* fail(unknown.path, unknown.message)
  const options = read.success as RawOptions
  const concurrency = Input.optional(options.concurrency, (n) => Input.positiveInt("concurrency", n))
  if (Result.isFailure(concurrency)) return yield* fail(concurrency.failure.path, concurrency.failure.message)
  if (!streamed && options.bufferSize !== undefined) {
    return yield* fail("bufferSize", "a Batch.stream option: Batch.run keeps no events to buffer (remove it)")
  }
  const bufferSize = Input.optional(options.bufferSize, (n) => Input.positiveInt("bufferSize", n))
  if (Result.isFailure(bufferSize)) return yield* fail(bufferSize.failure.path, bufferSize.failure.message)
  const domain = options.domain
  if (domain !== undefined) {
    if (typeof domain !== "string") return yield* fail("domain", `expected a domain name, got ${Input.kindOf(domain)}`)
    if (!resolved.has(domain)) yield* router.chain(domain)
  }
  const given = Input.orDefault(options.fallback, [])
  if (!Array.isArray(given)) return yield* fail("fallback", `expected an array of domain names`)
  // Read once, into a list of our own, and bounded: a `Proxy` may claim any length, and throw.
  let length: number
  try {
    length = given.length
  } catch (error) {
    return yield* Effect.fail(threw("fallback", "reading its length", error))
  }
  if (!Number.isSafeInteger(length) || length > maxFallback) {
    const got = typeof length === "number" ? length : typeof length
    return yield* fail("fallback", `expected at most ${maxFallback} domain names, got ${got}`)
  }
  const fallback: Array<string> = []
  const listed = new Set<string>()
  for (let i = 0; i < length; i++) {
    let name: unknown
    try {
      name = given[i]
    } catch (error) {
      return yield* Effect.fail(threw(`fallback[${i}]`, "reading it", error))
    }
    const found = yield* Effect.result(router.chain([name as string]))
    if (Result.isFailure(found)) return yield* fail(`fallback[${i}]`, found.failure.message)
    // Once each, here for the whole batch: a domain listed twice would be called twice by items without a domain.
    if (!listed.has(name as string)) {
      listed.add(name as string)
      fallback.push(name as string)
    }
  }
  for (const field of ["onProgress", "onEvent"] as const) {
    const f = options[field]
    if (f !== undefined && !isFunction(f)) return yield* fail(field, `expected a function, got ${Input.kindOf(f)}`)
  }
  if (options.cancel !== undefined && !Effect.isEffect(options.cancel)) {
    return yield* fail("cancel", `expected an Effect that completes when the batch should stop`)
  }
  const id = options.id
  if (id !== undefined && (typeof id !== "string" || id.trim().length === 0)) {
    return yield* fail("id", `expected a non-empty string, got ${typeof id === "string" ? '""' : Input.kindOf(id)}`)
  }
  // Echoed into the span, the warnings and the result: bounded as an HTTP agent's task id is.
  if (id !== undefined && id.length > maxIdLength) {
    return yield* fail(
      "id",
      `expected at most ${maxIdLength.toLocaleString("en-US")} characters, got ${id.length.toLocaleString("en-US")}`
    )
  }
  // Read once, here: a length that cannot be read is `items`' error, not a defect of the run.
  let total: number
  try {
    total = items.length
  } catch (error) {
    return yield* Effect.fail(threw("items", "reading its length", error))
  }
  // An array's length is a whole number, but a `Proxy`'s may be anything: `-1` or `1.5` would
  // be a `RangeError` where the run allocates, and a huge one would allocate (and walk) it all.
  if (!Number.isSafeInteger(total) || total < 0) {
    return yield* fail(
      "items",
      `expected an array, got a length of ${typeof total === "number" ? total : typeof total}`
    )
  }
  if (total > maxItems) return yield* fail("items", `expected at most ${maxItems} items (maxItems), got ${total}`)
  return {
    items,
    total,
    options: {
      concurrency: concurrency.success,
      domain,
      fallback,
      onProgress: options.onProgress as Checked["onProgress"],
      onEvent: options.onEvent as Checked["onEvent"],
      cancel: options.cancel as Effect.Effect<void> | undefined,
      id
    }
  }
})
