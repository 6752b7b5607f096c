/**
 * Every number a user gives (durations, limits, concurrency, sizes) is checked where it
 * enters. `NaN`, infinities, negative values, zero or fractions where they make no sense,
 * and strings that do not parse are refused with the path of the field; nothing falls back
 * to a default silently.
 *
 * Options given to a constructor or layer fail it with a {@link OptionError}; options given
 * per call fail the call with an `InvalidRequest` `ModelError` (see `AiError.invalidRequest`).
 *
 * @since 0.2.0
 */
import { Duration, Effect, Option, Result, Schema, type SchemaAST, SchemaIssue, SchemaTransformation } from "effect"
import { invalidRequest, ModelError } from "./AiError.js"

/**
 * An option or configuration value was refused. `path` names the field
 * (`"breaker.failMax"`, `"domains[1].retry.maxAttempts"`).
 *
 * @since 0.2.0
 * @category errors
 */
export class OptionError extends Schema.TaggedError<OptionError>("effect-orchestra/OptionError")("OptionError", {
  path: Schema.String,
  message: Schema.String,
  /** What reading the field threw (a getter or a `Proxy` trap), when that is why it was refused. */
  cause: Schema.optional(Schema.Defect()),
  /** The other fields refused with it, when a check tells several at once (`message` says them too). */
  others: Schema.optional(
    Schema.Struct({
      shown: Schema.Array(Schema.Struct({ path: Schema.String, message: Schema.String })),
      unshown: Schema.Number
    })
  )
}) {}

/**
 * What a check found wrong.
 *
 * @since 0.2.0
 * @category models
 */
export interface Issue {
  readonly path: string
  readonly message: string
  /** What was thrown while reading the field (a getter or a `Proxy` trap), when that is the issue. */
  readonly cause?: unknown
  /** The other issues found with it, when a check tells several at once. */
  readonly others?: OtherIssues | undefined
}

/**
 * The issues a check found besides its first: the first few, and how many more it did not keep.
 *
 * @since 0.3.0
 * @category models
 */
export interface OtherIssues {
  readonly shown: ReadonlyArray<{ readonly path: string; readonly message: string }>
  readonly unshown: number
}

/**
 * @since 0.2.0
 * @category models
 */
export type Checked<A> = Result.Result<A, Issue>

/**
 * A duration as users write it: milliseconds as a number, a string such as `"30 seconds"`,
 * `"200 millis"`, `"2 minutes"`, or a `Duration`.
 *
 * @since 0.2.0
 * @category models
 */
export type DurationInput = Duration.Input

// Each `typeof` as a message says it; `kindOf` and `notOfKind` both read it.
const kindNames = {
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
const isDuration = (input: unknown): input is Duration.Duration => {
  try {
    return Duration.isDuration(input)
  } catch {
    return false
  }
}

/**
 * What an object given for options is when it cannot be options: a class instance without fields
 * of its own (a signal passed bare instead of `{ signal }`, a `Map`), whose keys would be none, so
 * the call would run as if given no options. `undefined`: a plain object, or one with fields.
 *
 * @since 0.3.0
 * @category checks
 */
export const notOptions = (input: object): string | undefined => {
  try {
    if (input instanceof AbortSignal) return "an AbortSignal (pass it as { signal })"
    const proto: unknown = Object.getPrototypeOf(input)
    if (proto === Object.prototype || proto === null || Object.keys(input).length > 0) return undefined
    const maker: unknown = (proto as { readonly constructor?: unknown }).constructor
    const name = typeof maker === "function" ? maker.name : ""
    return name === "" ? "an object without fields of its own" : `an instance of ${name}`
  } catch {
    // A `Proxy` whose trap throws: reading its fields names it.
    return undefined
  }
}

/**
 * Options of {@link duration}.
 *
 * @since 0.2.0
 * @category models
 */
export interface DurationOptions {
  /** Accept a zero duration (default false: a zero deadline or delay is almost always a mistake). */
  readonly allowZero?: boolean | undefined
  /** Accept `Duration.infinity` (default false). */
  readonly allowInfinite?: boolean | undefined
}

/**
 * Checks a duration: a finite, non-negative number of milliseconds, a string that parses
 * (`"-5 seconds"` and `"soon"` are refused), or a `Duration`; at most {@link maxDurationMillis}.
 *
 * @since 0.2.0
 * @category checks
 */
// A call's options are checked per call, and most name their durations as strings ("30 seconds"):
// the strings already parsed are kept (a few hundred at most; Durations are immutable values).
const PARSED_STRINGS_MAX = 256
const parsedStrings = new Map<string, Duration.Duration>()

const DURATION_FIELDS = new Set([
  "weeks",
  "days",
  "hours",
  "minutes",
  "seconds",
  "milliseconds",
  "microseconds",
  "nanoseconds"
])

// `[seconds, nanos]` or `{ seconds: 30 }` with finite numbers only (Duration reads a NaN or an
// unknown field as zero).
const durationParts = (input: object | bigint): boolean => {
  if (typeof input === "bigint") return true
  if (Array.isArray(input)) return input.length === 2 && input.every((n) => typeof n === "number" && Number.isFinite(n))
  const entries = Object.entries(input)
  return (
    entries.length > 0 &&
    entries.every(
      ([k, n]) => DURATION_FIELDS.has(k) && (n === undefined || (typeof n === "number" && Number.isFinite(n)))
    )
  )
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

const threwWhile = (path: string, what: string, error: unknown): Issue => ({
  path,
  message: `${what} threw: ${thrownMessage(error)}`,
  cause: error
})

export const duration = (path: string, input: unknown, options: DurationOptions = {}): Checked<Duration.Duration> =>
  Result.flatMap(decodeDuration(path, input, options), (decoded) =>
    Duration.isFinite(decoded) && Duration.toMillis(decoded) > maxDurationMillis
      ? Result.fail({
          path,
          message: `expected at most ${maxDurationMillis} ms (${aboutMillis(maxDurationMillis)})${options.allowInfinite ? ", or Infinity for no bound" : ""}, got ${shown(input)}`
        })
      : Result.succeed(decoded)
  )

// `duration` but for its bound (`wholeMillis` checks a lower one of its own, naming it).
const decodeDuration = (path: string, input: unknown, options: DurationOptions): Checked<Duration.Duration> => {
  const fail = (why: string) => Result.fail({ path, message: `${why}, got ${shown(input)}` })
  let decoded: Duration.Duration
  if (typeof input === "number") {
    if (Number.isNaN(input)) return fail("expected a duration")
    if (input < 0) return fail("a duration cannot be negative")
    if (!Number.isFinite(input)) {
      if (!options.allowInfinite) return fail("expected a finite duration")
      decoded = Duration.infinity
    } else {
      decoded = Duration.millis(input)
    }
  } else if (typeof input === "string") {
    let parsed = parsedStrings.get(input)
    if (parsed === undefined) {
      if (input.trimStart().startsWith("-")) return fail("a duration cannot be negative")
      const option = Duration.fromInput(input as Duration.Input)
      if (option._tag === "None") return fail(`expected a duration such as 1500 or "30 seconds"`)
      parsed = option.value
      if (parsedStrings.size >= PARSED_STRINGS_MAX) parsedStrings.clear()
      parsedStrings.set(input, parsed)
    }
    decoded = parsed
  } else if (isDuration(input)) {
    decoded = input
  } else if (typeof input === "bigint" || (typeof input === "object" && input !== null)) {
    // The rest of `Duration.Input`, which the option types accept: nanoseconds as a bigint,
    // `[seconds, nanos]`, `{ seconds: 30 }`. Their fields are read here: a getter that throws is the field's issue.
    let option: ReturnType<typeof Duration.fromInput> | undefined
    try {
      option = durationParts(input) ? Duration.fromInput(input as Duration.Input) : undefined
    } catch (error) {
      return Result.fail(threwWhile(path, "reading it", error))
    }
    if (option === undefined || option._tag === "None") return fail(`expected a duration such as 1500 or "30 seconds"`)
    decoded = option.value
  } else {
    return fail(`expected a duration such as 1500 or "30 seconds"`)
  }
  if (Duration.isNegative(decoded)) return fail("a duration cannot be negative")
  if (!Duration.isFinite(decoded) && !options.allowInfinite) return fail("expected a finite duration")
  if (Duration.isZero(decoded) && !options.allowZero) {
    // A positive amount below a nanosecond is a Duration of zero: "above zero" did not say what was wrong with 1e-9.
    const positive = typeof input === "number" ? input > 0 : typeof input === "string" && /[1-9]/.test(input)
    return fail(
      positive
        ? "expected a duration of at least 1 nanosecond (the finest one holds)"
        : "expected a duration above zero"
    )
  }
  return Result.succeed(decoded)
}

/**
 * A deadline option: absent is `fallback`, `"none"` is no deadline (`undefined`), anything
 * else a {@link duration}.
 *
 * @since 0.2.0
 * @category checks
 */
export const optionalDuration = (
  path: string,
  input: Duration.Input | "none" | undefined,
  fallback: Duration.Duration | undefined
): Checked<Duration.Duration | undefined> =>
  input === undefined ? Result.succeed(fallback) : input === "none" ? Result.succeed(undefined) : duration(path, input)

/**
 * The longest finite duration an option takes: `Number.MAX_SAFE_INTEGER` ms (about 285,000
 * years). Past it the milliseconds are no longer exact integers, and a deadline or wait that
 * long is a mistake (an option that means "no bound" says so: `Infinity`, `"none"`). Waits
 * past Node's timer limit ({@link maxTimerMillis}) are chained, so they do not fire at once.
 *
 * @since 0.3.0
 * @category checks
 */
export const maxDurationMillis = Number.MAX_SAFE_INTEGER

/**
 * The longest delay Node's timers take (`setTimeout`, an HTTP server's `requestTimeout` and
 * `keepAliveTimeout`, a socket's timeout): 2^31-1 ms, about 24.9 days. Node refuses more,
 * or replaces it with 1 ms and a `TimeoutOverflowWarning`.
 *
 * @since 0.3.0
 * @category checks
 */
export const maxTimerMillis = 2 ** 31 - 1

/**
 * The longest time given to Redis (`PX`, `PEXPIRE`, a score of a Lua script): 2^50 ms, about
 * 35,678 years, as `effect/persistence`'s own Redis scripts bound theirs. Below it a time
 * stays an exact integer when added to the clock, and Lua writes it without an exponent
 * (which `PEXPIRE` would refuse).
 *
 * @since 0.3.0
 * @category checks
 */
export const maxRedisMillis = 2 ** 50

const aboutMillis = (ms: number): string => {
  const days = ms / 86_400_000
  return days < 365
    ? `about ${days.toFixed(1)} days`
    : `about ${Math.round(days / 365.25).toLocaleString("en-US")} years`
}

/**
 * Checks a duration (see {@link duration}) that goes to Node or Redis as whole milliseconds:
 * rounded up (`0.5` and `"1500 micros"` are 1 and 2 ms; a zero stays zero where allowed), and
 * refused above `max` ({@link maxTimerMillis}, {@link maxRedisMillis}).
 *
 * @since 0.3.0
 * @category checks
 */
export const wholeMillis = (
  path: string,
  input: unknown,
  max: number,
  options: Omit<DurationOptions, "allowInfinite"> = {}
): Checked<number> =>
  // A number is rounded up as given: as a Duration (whole nanoseconds), 1e-9 was zero, refused where 0.2 was 1 ms.
  Result.flatMap(
    decodeDuration(path, input, typeof input === "number" && input > 0 ? { allowZero: true } : options),
    (d) => {
      const ms = typeof input === "number" ? Math.ceil(input) : Math.ceil(Duration.toMillis(d))
      return ms > max
        ? Result.fail({ path, message: `expected at most ${max} ms (${aboutMillis(max)}), got ${shown(input)}` })
        : Result.succeed(ms)
    }
  )

/**
 * A user's value, or `fallback` when the field is absent (`undefined`). Unlike `??`, a `null`
 * is kept, so the field's check refuses it instead of the default standing in silently.
 *
 * @since 0.3.0
 * @category checks
 */
export const orDefault = <A, B>(input: A | undefined, fallback: B): A | B => (input === undefined ? fallback : input)

/**
 * Options of {@link int} and {@link number}.
 *
 * @since 0.2.0
 * @category models
 */
export interface RangeOptions {
  readonly min?: number | undefined
  /** Default `Number.MAX_SAFE_INTEGER`. */
  readonly max?: number | undefined
  /** `min` itself is refused. */
  readonly minExclusive?: boolean | undefined
}

// Without a `max` of its own, a number is bounded by the largest exact integer: a limit, a count or
// a size of 1e300 is a mistake, and the arithmetic on it (a rate's refill, a window's count) is not exact.
const range = (path: string, input: number, options: RangeOptions): Checked<number> => {
  if (options.min !== undefined) {
    if (options.minExclusive ? input <= options.min : input < options.min) {
      return Result.fail({
        path,
        message: `expected a value ${options.minExclusive ? "above" : "of at least"} ${options.min}, got ${input}`
      })
    }
  }
  const max = options.max ?? Number.MAX_SAFE_INTEGER
  if (input > max) return Result.fail({ path, message: `expected a value of at most ${max}, got ${input}` })
  return Result.succeed(input)
}

/**
 * Checks a finite number within a range.
 *
 * @since 0.2.0
 * @category checks
 */
export const number = (path: string, input: unknown, options: RangeOptions = {}): Checked<number> => {
  if (typeof input !== "number" || !Number.isFinite(input)) {
    return Result.fail({ path, message: `expected a finite number, got ${shown(input)}` })
  }
  return range(path, input, options)
}

/**
 * Checks an integer within a range.
 *
 * @since 0.2.0
 * @category checks
 */
export const int = (path: string, input: unknown, options: RangeOptions = {}): Checked<number> => {
  if (typeof input !== "number" || !Number.isInteger(input)) {
    return Result.fail({ path, message: `expected an integer, got ${shown(input)}` })
  }
  return range(path, input, options)
}

/**
 * Checks an integer of at least 1 (a concurrency, a count of attempts, a capacity).
 *
 * @since 0.2.0
 * @category checks
 */
export const positiveInt = (path: string, input: unknown, max?: number): Checked<number> =>
  int(path, input, { min: 1, max })

const routePathPattern = /^\/[A-Za-z0-9._~\-/]*$/

/**
 * Checks the path of a route a layer adds (`"/metrics"`, `"/v1"`): a leading `/`, then
 * letters, digits and `.` `_` `~` `-` `/`, without `//` nor a trailing `/` (`"/"` itself is
 * one). An empty path, a relative one, a query string or whitespace would be a route no
 * request reaches. `example` shows a good one in the message.
 *
 * @since 0.3.0
 * @category checks
 */
export const routePath = (path: string, input: unknown, example: `/${string}`): Checked<`/${string}`> =>
  typeof input === "string" &&
  routePathPattern.test(input) &&
  !input.includes("//") &&
  (input.length === 1 || !input.endsWith("/"))
    ? Result.succeed(input as `/${string}`)
    : Result.fail({ path, message: `expected a path such as ${JSON.stringify(example)}, got ${shown(input)}` })

/**
 * The fields of an options object or item read once, into a plain object without a prototype:
 * a getter (or a `Proxy` trap) that throws is an issue naming the field (`prefix.key`), not an
 * exception out of the check. `keys` are the fields to read (those present are copied, an
 * `undefined` value included); without it, the object's own enumerable keys.
 *
 * @since 0.3.0
 * @category checks
 */
export const readFields = (
  input: object,
  keys?: ReadonlyArray<string>,
  prefix?: string
): Checked<Readonly<Record<string, unknown>>> => {
  const named = (key: string) => (prefix === undefined ? key : `${prefix}.${key}`)
  const threw = (path: string, what: string, error: unknown) => Result.fail(threwWhile(path, what, error))
  let names: ReadonlyArray<string>
  try {
    names = keys ?? Object.keys(input)
  } catch (error) {
    return threw(prefix ?? "options", "listing its fields", error)
  }
  const out: Record<string, unknown> = Object.create(null)
  for (const key of names) {
    try {
      if (keys === undefined || key in input) out[key] = (input as Record<string, unknown>)[key]
    } catch (error) {
      return threw(named(key), "reading it", error)
    }
  }
  return Result.succeed(out)
}

/**
 * The own enumerable fields of a caller's object, read once into a plain copy that goes on past
 * a field whose getter (or `Proxy` trap) throws: that field is left out, and the first such one
 * is the `issue` (named bare; `whole` when listing the fields throws, with an empty copy). An own
 * `__proto__` (from `JSON.parse`) stays a field, for a key check to refuse by name. For values
 * whose every readable field still counts (a task's record is made from what could be read).
 *
 * @since 0.3.0
 * @category checks
 */
export const readOwnFields = (
  given: object,
  whole: string
): { readonly copy: Record<string, unknown>; readonly issue?: Issue | undefined } => {
  let keys: ReadonlyArray<string>
  try {
    keys = Object.keys(given)
  } catch (cause) {
    return { copy: {}, issue: { path: whole, message: `listing its fields threw: ${thrownMessage(cause)}` } }
  }
  const copy: Record<string, unknown> = {}
  let issue: Issue | undefined
  for (const key of keys) {
    try {
      const value: unknown = (given as Record<string, unknown>)[key]
      if (key === "__proto__") {
        Object.defineProperty(copy, key, { value, enumerable: true, writable: true, configurable: true })
      } else copy[key] = value
    } catch (cause) {
      issue ??= { path: key, message: `reading it threw: ${thrownMessage(cause)}` }
    }
  }
  return { copy, issue }
}

const isPlainObject = (u: object): boolean => {
  const proto = Object.getPrototypeOf(u)
  return proto === Object.prototype || proto === null
}

// How a read that threw leaves the recursion of `snapshot`, with the issue naming the field.
class Unreadable {
  constructor(readonly issue: Issue) {}
}

const fieldPath = (at: string, key: string): string => (at === "" ? key : `${at}.${key}`)

const copyOf = (
  value: unknown,
  at: string,
  whole: string,
  copies: Map<object, unknown>,
  maxLength: number
): unknown => {
  if (typeof value !== "object" || value === null) return value
  const known = copies.get(value)
  if (known !== undefined) return known
  let length: number | undefined
  let names: ReadonlyArray<string> | undefined
  let what = "listing its fields"
  try {
    if (Array.isArray(value)) {
      what = "reading its length"
      length = (value as ReadonlyArray<unknown>).length
    } else if (isPlainObject(value)) {
      names = Object.keys(value)
    }
  } catch (error) {
    throw new Unreadable(threwWhile(whole, what, error))
  }
  if (length !== undefined) {
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new Unreadable({ path: whole, message: `expected an array, got a length of ${String(length)}` })
    }
    if (length > maxLength)
      throw new Unreadable({ path: whole, message: `expected at most ${maxLength} items, got ${length}` })
    const out: Array<unknown> = []
    copies.set(value, out)
    for (let i = 0; i < length; i++) {
      const path = `${at}[${i}]`
      let element: unknown
      try {
        element = (value as ReadonlyArray<unknown>)[i]
      } catch (error) {
        throw new Unreadable(threwWhile(path, "reading it", error))
      }
      out.push(copyOf(element, path, path, copies, maxLength))
    }
    return out
  }
  // A class instance (a `Duration`, an `AbortSignal`, a `Layer`) is the caller's object, kept as it is.
  if (names === undefined) return value
  const out: Record<string, unknown> = {}
  copies.set(value, out)
  for (const key of names) {
    const path = fieldPath(at, key)
    let field: unknown
    try {
      field = (value as Record<string, unknown>)[key]
    } catch (error) {
      throw new Unreadable(threwWhile(path, "reading it", error))
    }
    const copied = copyOf(field, path, path, copies, maxLength)
    if (key === "__proto__") {
      Object.defineProperty(out, key, { value: copied, enumerable: true, writable: true, configurable: true })
    } else {
      out[key] = copied
    }
  }
  return out
}

/**
 * A copy of a caller's plain data, read once and all of it: arrays, and objects whose
 * prototype is `Object.prototype` or `null` (their own enumerable fields), at every level. A
 * getter (or a `Proxy` trap) that throws anywhere is an issue naming that field
 * (`messages[1].content`, with what it threw as `cause`), not an exception out of a check, and
 * nothing that reads the copy later can throw or see another value. Anything else (strings,
 * numbers, functions, class instances such as a `Duration`, an `AbortSignal` or a `Layer`) is
 * kept as it is; a cycle stays a cycle. `path` is the value's own path (`""`: its fields are
 * named bare, `prompt`, `messages[0].role`); `name` names the value when listing its fields
 * throws, or when it is nested too deep to be read (default: `path`). An array longer than
 * `maxLength` (default: none) is an issue naming it, before any of it is copied: a sparse
 * `messages.length = 2 ** 32 - 1` costs nothing to make and would take the memory to copy.
 *
 * @since 0.3.0
 * @category checks
 */
export const snapshot = <A>(
  input: A,
  path: string,
  name: string = path,
  maxLength: number = Number.POSITIVE_INFINITY
): Checked<A> => {
  if (typeof input !== "object" || input === null) return Result.succeed(input)
  try {
    return Result.succeed(copyOf(input, path, name === "" ? "(root)" : name, new Map(), maxLength) as A)
  } catch (error) {
    if (error instanceof Unreadable) return Result.fail(error.issue)
    // A value nested past the stack's depth (a `RangeError`): the whole value's issue.
    return Result.fail(threwWhile(name === "" ? "(root)" : name, "reading it", error))
  }
}

/**
 * The issue of a call's options (or another argument, `path`) that is not an object: `null`
 * where an options object belongs must be refused, not read (a `TypeError` out of the call).
 *
 * @since 0.3.0
 * @category checks
 */
export const notAnObject = (path: string, input: unknown): Issue | undefined =>
  typeof input === "object" && input !== null ? undefined : { path, message: `expected an object, got ${shown(input)}` }

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

/**
 * Checks a value only when it is given.
 *
 * @since 0.2.0
 * @category checks
 */
export const optional = <A, B>(input: A | undefined, check: (input: A) => Checked<B>): Checked<B | undefined> =>
  input === undefined ? Result.succeed(undefined) : check(input)

/**
 * The first failure of several checks, or their values.
 *
 * @since 0.2.0
 * @category checks
 */
export const all = <const T extends ReadonlyArray<Checked<unknown>>>(
  checks: T
): Checked<{ -readonly [K in keyof T]: T[K] extends Checked<infer A> ? A : never }> => {
  const values: Array<unknown> = []
  for (const check of checks) {
    if (Result.isFailure(check)) return Result.fail(check.failure)
    values.push(check.success)
  }
  return Result.succeed(values as never)
}

/**
 * A check's failure as a {@link OptionError}, for constructors and layers.
 *
 * @since 0.2.0
 * @category conversions
 */
export const toOptionError = (issue: Issue): OptionError => {
  const message = `invalid ${issue.path}: ${issue.message}${othersText(issue.others)}`
  return new OptionError({
    path: issue.path,
    message,
    ...("cause" in issue ? { cause: issue.cause } : {}),
    ...(issue.others === undefined ? {} : { others: issue.others })
  })
}

/** What an issue's message says of the others found with it: ` (3 problems in all; also a: ...; b: ...)`. */
const othersText = (others: OtherIssues | undefined): string =>
  others === undefined
    ? ""
    : ` (${1 + others.shown.length + others.unshown} problems in all; also ${others.shown
        .map((issue) => `${issue.path}: ${issue.message}`)
        .join("; ")}${others.unshown > 0 ? `; and ${others.unshown} more not shown` : ""})`

/**
 * The issue with its path, and those of the others found with it, renamed: the same issue
 * where a caller placed the options (a section of a file, a flag).
 *
 * @since 0.3.0
 * @category conversions
 */
export const renamed = (issue: Issue, rename: (path: string) => string): Issue => {
  const path = rename(issue.path)
  const others =
    issue.others === undefined
      ? undefined
      : {
          shown: issue.others.shown.map((other) => ({ path: rename(other.path), message: other.message })),
          unshown: issue.others.unshown
        }
  return others === undefined ? { ...issue, path } : { ...issue, path, others }
}

/**
 * The issue of the first of `fields` in `options` that is given but not a boolean
 * (`cache: 0` or `cache: "false"` would otherwise read as "on": only `false` turns it off).
 *
 * @since 0.3.0
 * @category checks
 */
export const notABoolean = (options: object, fields: ReadonlyArray<string>): Issue | undefined => {
  for (const field of fields) {
    const value = (options as Record<string, unknown>)[field]
    if (value !== undefined && typeof value !== "boolean") {
      return { path: field, message: `expected true or false, got ${shown(value)}` }
    }
  }
  return undefined
}

/**
 * The issue of the first `[field, kind]` of `fields` whose value in `options` is given but not
 * of that kind (`null` included): an `onRetry: null` would throw on the first retry, a
 * `domain: 5` would label the metrics `"5"`, a `provider: "openai"` would fail as a defect.
 *
 * @since 0.3.0
 * @category checks
 */
export const notOfKind = (
  options: object,
  fields: ReadonlyArray<readonly [field: string, kind: "function" | "string" | "object"]>
): Issue | undefined => {
  for (const [field, kind] of fields) {
    const value = (options as Record<string, unknown>)[field]
    if (value !== undefined && (typeof value !== kind || value === null)) {
      return { path: field, message: `expected ${kindNames[kind]}, got ${shown(value)}` }
    }
  }
  return undefined
}

/**
 * One of `values`, exactly; anything else (`null` included) is an issue listing them.
 *
 * @since 0.3.0
 * @category checks
 */
export const oneOf = <const A extends string>(path: string, input: unknown, values: ReadonlyArray<A>): Checked<A> =>
  values.includes(input as A)
    ? Result.succeed(input as A)
    : Result.fail({
        path,
        message: `expected one of ${values.map((v) => `"${v}"`).join(", ")}, got ${shown(input)}`
      })

/**
 * An error with `OptionError`s named under `prefix` (a layer built by another, whose options
 * are a section of the outer one's: `breaker.`, `providers.main.`); any other error as is.
 *
 * @since 0.3.0
 * @category conversions
 */
export const underPath = <E>(error: E, prefix: string): E => {
  if (!(error instanceof OptionError)) return error
  return toOptionError(renamed(issueOfError(error), (path) => `${prefix}${path}`)) as E
}

/**
 * An `OptionError` back as its issue: its path, and its message without the
 * `invalid <path>: ` that {@link toOptionError} put before it.
 *
 * @since 0.3.0
 * @category conversions
 */
export const issueOfError = (error: OptionError): Issue => {
  const own = `invalid ${error.path}: `
  const told = othersText(error.others)
  let message = error.message.startsWith(own) ? error.message.slice(own.length) : error.message
  if (told !== "" && message.endsWith(told)) message = message.slice(0, message.length - told.length)
  return {
    path: error.path,
    message,
    ...(error.cause === undefined ? {} : { cause: error.cause }),
    ...(error.others === undefined ? {} : { others: error.others })
  }
}

/**
 * Runs a check in a constructor or layer: its failure is a {@link OptionError}.
 *
 * @since 0.2.0
 * @category conversions
 */
export const orOptionError = <A>(checked: Checked<A>): Effect.Effect<A, OptionError> =>
  Result.isSuccess(checked) ? Effect.succeed(checked.success) : Effect.fail(toOptionError(checked.failure))

/**
 * Runs a check on a per-call option: its failure is an `InvalidRequest` naming the field.
 *
 * @since 0.2.0
 * @category conversions
 */
export const orInvalidRequest = <A>(checked: Checked<A>, provider?: string): Effect.Effect<A, ModelError> =>
  Result.isSuccess(checked) ? Effect.succeed(checked.success) : Effect.fail(toInvalidRequest(checked.failure, provider))

/**
 * A check's failure as an `InvalidRequest` naming the field, for per-call options; what a
 * getter threw (the issue's `cause`) is the error's `cause`.
 *
 * @since 0.3.0
 * @category conversions
 */
export const toInvalidRequest = (issue: Issue, provider?: string): ModelError =>
  "cause" in issue
    ? new ModelError({
        reason: "InvalidRequest",
        field: issue.path,
        message: `invalid ${issue.path}: ${issue.message}`,
        provider,
        cause: issue.cause
      })
    : invalidRequest(issue.path, issue.message, provider)

/**
 * A check's value, or a thrown `OptionError`; for plain constructors outside Effect code
 * (`Policy.retry({...})`).
 *
 * @since 0.2.0
 * @category conversions
 */
export const getOrThrow = <A>(checked: Checked<A>): A => {
  if (Result.isFailure(checked)) throw toOptionError(checked.failure)
  return checked.success
}

/**
 * A duration in a config file or Schema-validated options: see {@link duration}. Zero is
 * accepted here (a field's own check refuses it where it makes no sense).
 *
 * @since 0.2.0
 * @category schemas
 */
export const DurationFromInput = Schema.Union([Schema.Number, Schema.String, Schema.Duration]).pipe(
  Schema.decodeTo(
    Schema.Duration,
    SchemaTransformation.transformEffect<Duration.Duration, number | string | Duration.Duration>({
      decode: (input, options) => {
        const checked = duration("", input, { allowZero: true })
        return Result.isSuccess(checked)
          ? Effect.succeed(checked.success)
          : Effect.fail(new SchemaIssue.InvalidValue({ message: checked.failure.message }, input, options))
      },
      encode: (d) => Effect.succeed(Duration.isFinite(d) ? Duration.toMillis(d) : d)
    })
  )
)

/**
 * A Schema `LeafHook` wording a missing key and an excess one as the library's own messages and
 * the config file's checks do: `missing (required)`, `unknown field` (the schema's own words are
 * `Missing key`, `Expected no excess property`); other leaves as the schema says them.
 *
 * @since 0.3.0
 * @category conversions
 */
export const leafHook: SchemaIssue.LeafHook = (issue) =>
  issue._tag === "MissingKey"
    ? "missing (required)"
    : issue._tag === "UnexpectedKey"
      ? "unknown field"
      : SchemaIssue.defaultLeafHook(issue)

/**
 * The first issue of a Schema failure as a path (`domains[1].retry.maxAttempts`) and a
 * message, for config files. `leafHook` words the issues that are not checks (a missing key,
 * a wrong type) in place of the schema's own `Missing key`, `Expected number`.
 *
 * @since 0.2.0
 * @category conversions
 */
export const issueOf = (error: Schema.SchemaError, prefix = "", leafHook?: SchemaIssue.LeafHook): Issue => {
  const formatted = SchemaIssue.makeFormatterStandardSchemaV1({ leafHook })(error.issue)
  const first = formatted.issues[0]
  const keys = (first?.path ?? []).map((p) =>
    typeof p === "object" && p !== null && "key" in p ? (p as { key: PropertyKey }).key : p
  ) as ReadonlyArray<PropertyKey>
  const segments = keys.map((key) => (typeof key === "number" ? `[${key}]` : `.${String(key)}`))
  const joined = `${prefix}${segments.join("")}`.replace(/^\./, "")
  // `leafHook`'s unknown field, with the field it is likely a typo of (or the known ones), as the config file says it.
  const message =
    first?.message === "unknown field"
      ? unknownFieldMessage(keys.at(-1), knownFields(error.issue)(keys))
      : (first?.message ?? error.message)
  return { path: joined === "" ? "(root)" : joined, message }
}

// `Expected number` as the library says it.
const lowerFirst = (message: string): string =>
  message.startsWith("Expected ") || message.startsWith("Invalid ")
    ? `${message[0]!.toLowerCase()}${message.slice(1)}`
    : message

// What a type expects, as the schema's formatter says it (`number`, `{ readonly "n": number }`).
const expectedOf = (ast: SchemaAST.AST): string =>
  lowerFirst(
    SchemaIssue.makeFormatterStandardSchemaV1()(new SchemaIssue.InvalidType(ast, Option.none())).issues[0]!.message
  )

// A leaf of an answer as the library words it; a missing field's type is found by `answerIssueOf`.
const answerLeaf: SchemaIssue.LeafHook = (issue) =>
  issue._tag === "MissingKey" ? "missing" : lowerFirst(SchemaIssue.defaultLeafHook(issue))

// The value at `path` of a decoded input, when it is there.
const present = (input: unknown, path: ReadonlyArray<PropertyKey>): { readonly value: unknown } | undefined => {
  let value = input
  for (const key of path) {
    if (typeof value !== "object" || value === null || !Object.hasOwn(value, key)) return undefined
    value = (value as Record<PropertyKey, unknown>)[key]
  }
  return { value }
}

/**
 * The first issue of a Schema failure decoding `input` (an answer: a server's, an agent's), in
 * the library's words: its path (`data.items[2].n`, `(root)`) and `missing (expected number)`
 * for a missing field, `expected number, got a string` for a value of another type (its kind,
 * never the value: an answer may carry a token). Effect Schema says `Missing key`, `Expected
 * number`.
 *
 * @since 0.3.0
 * @category conversions
 */
export const answerIssueOf = (error: Schema.SchemaError, input: unknown): Issue => {
  const issue = issueOf(error, "", answerLeaf)
  if (issue.message === "missing") {
    const expected = missingTypes(error.issue).get(issue.path)
    return { path: issue.path, message: expected === undefined ? "missing (required)" : `missing (${expected})` }
  }
  if (!issue.message.startsWith("expected ") || issue.message.includes(", got ")) return issue
  const first = SchemaIssue.makeFormatterStandardSchemaV1({ leafHook: answerLeaf })(error.issue).issues[0]
  const keys = (first?.path ?? []).map((p) =>
    typeof p === "object" && p !== null && "key" in p ? (p as { key: PropertyKey }).key : p
  ) as ReadonlyArray<PropertyKey>
  const at = present(input, keys)
  return at === undefined ? issue : { path: issue.path, message: `${issue.message}, got ${kindOf(at.value)}` }
}

// The type each missing field of a failure was to have, by the field's path as `issueOf` writes it.
const missingTypes = (issue: SchemaIssue.Issue): ReadonlyMap<string, string> => {
  const found = new Map<string, string>()
  const walk = (issue: SchemaIssue.Issue, path: string): void => {
    switch (issue._tag) {
      case "Pointer":
        walk(
          issue.issue,
          `${path}${issue.path.map((key) => (typeof key === "number" ? `[${key}]` : `.${String(key)}`)).join("")}`
        )
        return
      case "Filter":
      case "Encoding":
        walk(issue.issue, path)
        return
      case "Composite":
        if (issue.ast._tag === "Objects") {
          for (const inner of issue.issues) {
            if (inner._tag !== "Pointer" || inner.issue._tag !== "MissingKey" || inner.path.length !== 1) continue
            const field = issue.ast.propertySignatures.find((p) => p.name === inner.path[0])
            if (field !== undefined)
              found.set(`${path}.${String(field.name)}`.replace(/^\./, ""), expectedOf(field.type))
          }
        }
        for (const inner of issue.issues) walk(inner, path)
        return
      case "AnyOf":
        for (const inner of issue.issues) walk(inner, path)
        return
    }
  }
  walk(issue, "")
  return found
}

const pathKey = (path: ReadonlyArray<PropertyKey>): string => path.map(String).join("\u0000")

/**
 * The fields of the object each unknown field of a Schema failure was found in, by the unknown
 * field's path (the path of the failure's issue, as its formatter gives it).
 *
 * @since 0.3.0
 * @category conversions
 */
export const knownFields = (
  issue: SchemaIssue.Issue
): ((path: ReadonlyArray<PropertyKey>) => ReadonlyArray<string> | undefined) => {
  const found = new Map<string, ReadonlyArray<string>>()
  const walk = (issue: SchemaIssue.Issue, path: ReadonlyArray<PropertyKey>): void => {
    switch (issue._tag) {
      case "Pointer":
        walk(issue.issue, [...path, ...issue.path])
        return
      case "Filter":
      case "Encoding":
        walk(issue.issue, path)
        return
      case "Composite":
      case "AnyOf":
        for (const inner of issue.issues) walk(inner, path)
        return
      case "UnexpectedKey":
        if (issue.ast._tag === "Objects") {
          found.set(
            pathKey(path),
            issue.ast.propertySignatures.map((field) => String(field.name))
          )
        }
        return
    }
  }
  walk(issue, [])
  return (path) => found.get(pathKey(path))
}

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
