/**
 * Retry and timeout settings as plain data (Schemas), so a config file can hold them,
 * and the backoff arithmetic they imply.
 *
 * @since 0.1.0
 */
import { Duration, Either, ParseResult, Schema } from "effect"

/**
 * A duration in config or options: milliseconds as a number, a string such as
 * `"30 seconds"`, `"200 millis"`, `"2 minutes"`, or a `Duration`. Decodes to a `Duration`.
 * Negative durations are refused, as numbers and as strings (`"-5 seconds"` would
 * otherwise silently become zero).
 *
 * @since 0.1.0
 * @category schemas
 */
export const DurationInput = Schema.transformOrFail(
  Schema.Union(Schema.DurationFromSelf, Schema.Number.pipe(Schema.nonNegative()), Schema.String),
  Schema.DurationFromSelf,
  {
    strict: true,
    decode: (input, _, ast) => {
      if (Duration.isDuration(input)) return ParseResult.succeed(input)
      if (typeof input === "number") return ParseResult.succeed(Duration.millis(input))
      if (input.trimStart().startsWith("-")) {
        return ParseResult.fail(new ParseResult.Type(ast, input, `a duration cannot be negative, got "${input}"`))
      }
      const decoded = Duration.decodeUnknown(input)
      return decoded._tag === "Some"
        ? ParseResult.succeed(decoded.value)
        : ParseResult.fail(
            new ParseResult.Type(ast, input, `expected a duration such as 1500 or "30 seconds", got ${input}`)
          )
    },
    encode: (duration) => ParseResult.succeed(Duration.toMillis(duration))
  }
).annotations({ identifier: "DurationInput" })

/**
 * Exponential backoff with jitter and a cap.
 *
 * delay(n) = min(maxDelay, initialDelay × factor^(n-1)) × (1 − jitter × u), u uniform in [0, 1):
 * `jitter: 0` gives exact delays, `jitter: 1` is "full jitter".
 * A `retryAfter` from the provider is a floor on the delay; one longer than `maxRetryAfter`
 * ends the retries (another provider may take over through a fallback).
 *
 * @since 0.1.0
 * @category schemas
 */
export const RetryPolicy = Schema.Struct({
  /** Total attempts, the first included. */
  maxAttempts: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 100)), { default: () => 3 }),
  initialDelay: Schema.optionalWith(DurationInput, { default: () => Duration.millis(200) }),
  factor: Schema.optionalWith(Schema.Number.pipe(Schema.between(1, 10)), { default: () => 2 }),
  maxDelay: Schema.optionalWith(DurationInput, { default: () => Duration.seconds(10) }),
  jitter: Schema.optionalWith(Schema.Number.pipe(Schema.between(0, 1)), { default: () => 0.2 }),
  respectRetryAfter: Schema.optionalWith(Schema.Boolean, { default: () => true }),
  maxRetryAfter: Schema.optionalWith(DurationInput, { default: () => Duration.seconds(60) })
})

/**
 * @since 0.1.0
 * @category models
 */
export type RetryPolicy = typeof RetryPolicy.Type

/**
 * What a user writes: every field optional, durations as numbers or strings.
 *
 * @since 0.1.0
 * @category models
 */
export type RetryPolicyInput = typeof RetryPolicy.Encoded | Partial<RetryPolicy>

/**
 * Timeout and retry for one call.
 *
 * @since 0.1.0
 * @category schemas
 */
export const CallPolicy = Schema.Struct({
  timeout: Schema.optional(DurationInput),
  retry: Schema.optional(RetryPolicy)
})

/**
 * @since 0.1.0
 * @category models
 */
export type CallPolicy = typeof CallPolicy.Type

const decodeRetry = Schema.decodeUnknownEither(RetryPolicy)

/**
 * The default retry policy: 3 attempts, 200 ms doubling to at most 10 s, 20% jitter.
 *
 * @since 0.1.0
 * @category constructors
 */
export const defaultRetry: RetryPolicy = Either.getOrThrow(decodeRetry({}))

/**
 * Builds a `RetryPolicy` from partial input; durations may be `Duration`s, numbers of
 * milliseconds or strings. Throws on invalid input: use `Schema.decodeUnknown(RetryPolicy)`
 * for untrusted data.
 *
 * @since 0.1.0
 * @category constructors
 */
export const retry = (input: RetryPolicyInput = {}): RetryPolicy => {
  const normalised: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(input)) {
    normalised[key] = Duration.isDuration(value) ? Duration.toMillis(value) : value
  }
  const result = decodeRetry(normalised)
  if (Either.isLeft(result)) {
    throw new TypeError(`invalid retry policy: ${ParseResult.TreeFormatter.formatErrorSync(result.left)}`)
  }
  return result.right
}

/**
 * The delay before retry number `retry` (1 for the first retry), before any Retry-After floor.
 *
 * @since 0.1.0
 * @category utils
 */
export const backoffMillis = (policy: RetryPolicy, retry: number, random: number): number => {
  const base = Math.min(
    Duration.toMillis(policy.maxDelay),
    Duration.toMillis(policy.initialDelay) * policy.factor ** (retry - 1)
  )
  return base * (1 - policy.jitter * random)
}

/**
 * The delay before retry number `retry`, honouring a provider's Retry-After; `undefined`
 * when the Retry-After is longer than the policy accepts to wait.
 *
 * @since 0.1.0
 * @category utils
 */
export const retryDelayMillis = (
  policy: RetryPolicy,
  retry: number,
  random: number,
  retryAfter: Duration.Duration | undefined
): number | undefined => {
  const backoff = backoffMillis(policy, retry, random)
  if (retryAfter === undefined || !policy.respectRetryAfter) return backoff
  const floor = Duration.toMillis(retryAfter)
  if (floor > Duration.toMillis(policy.maxRetryAfter)) return undefined
  return Math.max(backoff, floor)
}
