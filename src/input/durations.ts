/**
 * Durations as users write them (milliseconds, `"30 seconds"`, a `Duration`), checked, and the
 * longest ones Node's timers and Redis take.
 *
 * @internal
 */
import { Duration, Effect, Result, Schema, SchemaIssue, SchemaTransformation } from "effect"
import type { Checked } from "./issues.js"
import { isDuration, shown, threwWhile } from "./shown.js"

/**
 * A duration as users write it: milliseconds as a number, a string such as `"30 seconds"`,
 * `"200 millis"`, `"2 minutes"`, or a `Duration`.
 *
 * @since 0.2.0
 * @category models
 */
export type DurationInput = Duration.Input

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
 * Checks a duration: a finite, non-negative number of milliseconds, a string that parses
 * (`"-5 seconds"` and `"soon"` are refused), or a `Duration`; at most {@link maxDurationMillis}.
 *
 * @since 0.2.0
 * @category checks
 */
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
