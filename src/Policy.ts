/**
 * The policies a call goes through, as values, and the one order they are applied in.
 *
 * Every entry point (`Executor.execute`, `stream`, `embed`, batch items, pipeline steps,
 * HTTP agents, the Promise facade, the gateway) runs its calls through the same pipeline
 * (`src/policy/`), outermost first:
 *
 * | # | policy | applies to | why here |
 * |---|---|---|---|
 * | 1 | validation | the call | a bad request or option fails with `InvalidRequest` naming the field before anything runs or is counted against a provider |
 * | 2 | admission | the call | a closing executor refuses new work (`ShuttingDownError`); admitted calls are drained on shutdown |
 * | 3 | cache | the call | a hit skips every provider; a miss stores the answer; `allowStale` answers from an expired entry when everything below fails, the total deadline included |
 * | 4 | total deadline | the call | bounds everything below, retries, waits and fallbacks included, and the caller's wait in the cache (its lookup, a computation it joins) (`TimeoutError` limit `total`) |
 * | 5 | fallback / hedge | the call | the next step starts when `shouldFallback(error)` (hedge: also after a delay); every step failed: `FallbackExhaustedError` |
 * | 6 | retry | each step | a `Schedule` (exponential, jittered, capped, `Retry-After` as a floor) over `isRetryable` errors; `CircuitOpen` never retries; no wait that would end past the total deadline |
 * | 7 | rate limit | each attempt | a slot per attempt, since each attempt is a real upstream call; waiting is outside the attempt's deadline, bounded by `maxWait` and never past the total deadline |
 * | 8 | breaker | each attempt | sees every attempt's outcome, so a failing provider trips during a retry loop, and an open one stops it at once |
 * | 9 | deadline | each attempt | the attempt's timeout covers queueing for the provider and the call; it interrupts the provider call |
 * | 10 | provider slot | each attempt | a provider that serves `maxConcurrency` calls at once queues the rest (queue wait and service time are measured apart) |
 *
 * Streams take the same path; before their first chunk they are ordinary attempts
 * (retried, falling back), after it they are never restarted (see `Executor.stream`).
 *
 * @since 0.1.0
 */
import { Cause, Duration, Effect, Random, Result, Schedule, Schema } from "effect"
import { type AiError, isRetryable } from "./AiError.js"
import * as Input from "./Input.js"

const Attempts = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 100 }))
const Factor = Schema.Number.check(Schema.isBetween({ minimum: 1, maximum: 10 }))
const Fraction = Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 1 }))

/**
 * Exponential backoff with jitter and a cap.
 *
 * delay(n) = min(maxDelay, initialDelay × factor^(n-1)) × (1 − jitter × u), u uniform in [0, 1):
 * `jitter: 0` gives exact delays, `jitter: 1` is "full jitter". A `retryAfter` from the
 * provider is a floor on the delay; one longer than `maxRetryAfter` ends the retries (a
 * fallback may take over).
 *
 * @since 0.1.0
 * @category schemas
 */
export const RetryPolicy = Schema.Struct({
  /** Total attempts, the first included. Default 3. */
  maxAttempts: Attempts.pipe(Schema.withDecodingDefaultKey(Effect.succeed(3))),
  /** Default 200 ms. */
  initialDelay: Input.DurationFromInput.pipe(Schema.withDecodingDefaultKey(Effect.succeed(200))),
  /** Default 2. */
  factor: Factor.pipe(Schema.withDecodingDefaultKey(Effect.succeed(2))),
  /** Default 10 s. */
  maxDelay: Input.DurationFromInput.pipe(Schema.withDecodingDefaultKey(Effect.succeed(10_000))),
  /** Default 0.2. */
  jitter: Fraction.pipe(Schema.withDecodingDefaultKey(Effect.succeed(0.2))),
  /** Default true. */
  respectRetryAfter: Schema.Boolean.pipe(Schema.withDecodingDefaultKey(Effect.succeed(true))),
  /** Default 60 s. */
  maxRetryAfter: Input.DurationFromInput.pipe(Schema.withDecodingDefaultKey(Effect.succeed(60_000)))
})

/**
 * @since 0.1.0
 * @category models
 */
export type RetryPolicy = typeof RetryPolicy.Type

/**
 * What a user writes: every field optional, durations as numbers of milliseconds, strings
 * or `Duration`s.
 *
 * @since 0.1.0
 * @category models
 */
export type RetryPolicyInput = typeof RetryPolicy.Encoded

// reportInput: a value out of range is quoted (`got 0`), as every other option's is; a policy holds no secret.
const decodeRetryPolicy = Schema.decodeUnknownResult(RetryPolicy, { onExcessProperty: "error", reportInput: true })

/**
 * Checks a retry policy's input, naming the wrong field under `path`.
 *
 * @since 0.2.0
 * @category constructors
 */
export const decodeRetry = (input: unknown, path = "retry"): Input.Checked<RetryPolicy> => {
  // A policy this module checked (from `retry`, `defaultRetry` or an earlier call) is taken
  // as is; anything else, a hand-built `RetryPolicy`-shaped object included, is checked:
  // its shape alone says nothing of `maxAttempts: Infinity` or `jitter: 5`.
  const isObject = typeof input === "object" && input !== null
  if (isObject) {
    if (checked.has(input)) return Result.succeed(input as RetryPolicy)
    // An object checked before and unchanged since (a domain's policy, decoded by the Domain
    // schema, is read for every routed call): its fields are compared, not decoded again.
    const seen = inputs.get(input)
    if (seen !== undefined && sameFields(seen.fields, input)) return Result.succeed(seen.policy)
  }
  // Only an absent policy is the default one: `null` is refused (it used to turn retries on).
  const decoded = decodeRetryPolicy(input === undefined ? {} : input)
  // leafHook: a misspelt field is an `unknown field`, as everywhere else, and its value is not echoed.
  if (Result.isFailure(decoded)) return Result.fail(Input.issueOf(decoded.failure, path, Input.leafHook))
  const policy = Object.freeze(decoded.success)
  checked.add(policy)
  if (isObject) inputs.set(input, { fields: fieldsOf(input), policy })
  return Result.succeed(policy)
}

// The policies this module decoded (frozen, so they stay what was checked).
const checked = new WeakSet<object>()
// Other inputs checked, with the field values they had then (an input is not frozen: if a
// field changed since, it is decoded again).
const inputs = new WeakMap<object, { readonly fields: ReadonlyArray<unknown>; readonly policy: RetryPolicy }>()
const FIELDS = [
  "maxAttempts",
  "initialDelay",
  "factor",
  "maxDelay",
  "jitter",
  "respectRetryAfter",
  "maxRetryAfter"
] as const
const fieldsOf = (input: object): ReadonlyArray<unknown> =>
  FIELDS.map((field) => (input as Record<string, unknown>)[field])
const sameFields = (fields: ReadonlyArray<unknown>, input: object): boolean => {
  let keys = 0
  for (const _ in input) if (++keys > FIELDS.length) return false
  for (let i = 0; i < FIELDS.length; i++) if ((input as Record<string, unknown>)[FIELDS[i]!] !== fields[i]) return false
  return true
}

/**
 * The default retry policy: 3 attempts, 200 ms doubling to at most 10 s, 20% jitter.
 *
 * @since 0.1.0
 * @category constructors
 */
export const defaultRetry: RetryPolicy = Input.getOrThrow(decodeRetry({}))

/**
 * Builds a `RetryPolicy` from partial input. Throws an `OptionError` naming the field on
 * invalid input; use {@link decodeRetry} for untrusted data.
 *
 * @since 0.1.0
 * @category constructors
 */
export const retry = (input: RetryPolicyInput | Partial<RetryPolicy> = {}): RetryPolicy =>
  Input.getOrThrow(decodeRetry(input))

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

const retryAfterOf = (error: AiError): Duration.Duration | undefined =>
  error._tag === "ModelError" || error._tag === "CircuitOpenError" ? error.retryAfter : undefined

/**
 * The policy as a `Schedule` over the failures of a call: it recurs only for
 * `isRetryable` errors, at most `maxAttempts - 1` times, waiting the jittered exponential
 * delay (the `Random` service draws the jitter) with the provider's `Retry-After` as a
 * floor. Its output is the delay. Usable with `Effect.retry` directly; the executor steps
 * it itself, so a call that succeeds at once pays nothing for it.
 *
 * @since 0.2.0
 * @category constructors
 */
export const schedule = (policy: RetryPolicy): Schedule.Schedule<Duration.Duration, AiError> =>
  Schedule.fromStepWithMetadata(
    Effect.succeed((meta: Schedule.InputMetadata<AiError>) => {
      const error = meta.input
      if (meta.attempt >= policy.maxAttempts || !isRetryable(error)) return Cause.done(Duration.zero)
      return Effect.flatMap(Random.next, (u) => {
        const millis = retryDelayMillis(policy, meta.attempt, u, retryAfterOf(error))
        if (millis === undefined) return Cause.done(Duration.zero)
        const delay = Duration.millis(millis)
        return Effect.succeed([delay, delay] as [Duration.Duration, Duration.Duration])
      })
    })
  )
