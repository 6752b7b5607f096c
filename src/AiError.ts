/**
 * Typed failures of model calls, and the two decisions every policy makes from them:
 * try the same provider again (`isRetryable`) or try another one (`shouldFallback`).
 *
 * @since 0.1.0
 */
import { Duration, Predicate, Schema } from "effect"

/**
 * Why a provider call failed. Decided once, at the provider boundary, from data
 * (HTTP status, error codes), never from message text.
 *
 * @since 0.1.0
 * @category models
 */
export const Reason = Schema.Literals([
  "RateLimited",
  "Overloaded",
  "Transport",
  "Timeout",
  "InvalidRequest",
  "Unauthorized",
  "Decode",
  "Unavailable",
  "ContentFilter",
  "TooLarge",
  "Unknown"
])

/**
 * @since 0.1.0
 * @category models
 */
export type Reason = typeof Reason.Type

/**
 * Which limit of a rate limit refused a call: its requests or its tokens per window.
 *
 * @since 0.3.0
 * @category models
 */
export const RateLimitKind = Schema.Literals(["requests", "tokens"])

/**
 * @since 0.3.0
 * @category models
 */
export type RateLimitKind = typeof RateLimitKind.Type

/**
 * A failure reported by (or on the way to) a model provider, or a request refused before
 * any provider saw it (`InvalidRequest`, with the `field` that was wrong). A call our own
 * rate limit refused (`RateLimited` without a `status`) names the limit that refused it in
 * `rateLimit`, and its value per window in `limit`.
 *
 * @since 0.1.0
 * @category errors
 */
export class ModelError extends Schema.TaggedError<ModelError>("effect-orchestra/ModelError")("ModelError", {
  reason: Reason,
  message: Schema.String,
  provider: Schema.optional(Schema.String),
  model: Schema.optional(Schema.String),
  status: Schema.optional(Schema.Number),
  retryAfter: Schema.optional(Schema.Duration),
  /** The request field or option that was wrong (InvalidRequest), or the response field that failed to decode (Decode). */
  field: Schema.optional(Schema.String),
  /** Our own rate limit's refusal: which of its limits was full for longer than the call may wait. */
  rateLimit: Schema.optional(RateLimitKind),
  /** With `rateLimit`: that limit's value per window. */
  limit: Schema.optional(Schema.Number),
  /**
   * The provider's own code of the failure, as its error body gave it (OpenAI's `error.code`:
   * `context_length_exceeded`, `rate_limit_exceeded`, `insufficient_quota`; watsonx's `errors[0].code`):
   * 1 to 64 of `A-Z a-z 0-9 _ . : -`, else left out. To branch on; `reason` is what the library decides by.
   *
   * @since 0.3.0
   */
  code: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect())
}) {}

// The model errors whose message holds an upstream's own words that are no API error object about
// the request (a proxy's page, a stream's error event, an effect/ai error without a status): the
// gateway keeps them from its clients whatever their reason (a 429's organization id, a host name).
const upstreamWorded = new WeakSet<ModelError>()

/**
 * Marks a model error as carrying an upstream's own words (see {@link hasUpstreamWords}).
 *
 * @internal
 */
export const withUpstreamWords = (error: ModelError): ModelError => {
  upstreamWorded.add(error)
  return error
}

/**
 * Whether a model error's message holds an upstream's own words that are no API error object about
 * the request: what the gateway never passes on to its clients.
 *
 * @internal
 */
export const hasUpstreamWords = (error: ModelError): boolean => upstreamWorded.has(error)

/**
 * Which deadline fired: one attempt (`request`), a stream's first chunk (`firstChunk`),
 * the gap between two chunks (`idle`), or the whole call or stream, retries and
 * fallbacks included (`total`).
 *
 * @since 0.1.0
 * @category models
 */
export const TimeoutLimit = Schema.Literals(["request", "firstChunk", "idle", "total"])

/**
 * @since 0.1.0
 * @category models
 */
export type TimeoutLimit = typeof TimeoutLimit.Type

/**
 * A deadline of ours fired. The provider call was interrupted, not left running.
 *
 * @since 0.1.0
 * @category errors
 */
export class TimeoutError extends Schema.TaggedError<TimeoutError>("effect-orchestra/TimeoutError")("TimeoutError", {
  limit: TimeoutLimit,
  timeout: Schema.Duration,
  provider: Schema.optional(Schema.String),
  /** For streams: the text already delivered to the consumer before the limit fired. */
  partialText: Schema.optional(Schema.String)
}) {
  override get message(): string {
    return `${this.limit} timeout after ${Duration.format(this.timeout)}${this.provider ? ` (${this.provider})` : ""}`
  }
}

/**
 * A circuit breaker refused the call. Falls back, never retries. State `"unavailable"`
 * (since 0.3.0): the breaker's shared state could not be read from its `store` (`"redis"`)
 * and it was configured to refuse then (`onStoreError: "reject"`); `retryAfter` is when
 * the store is probed again.
 *
 * @since 0.1.0
 * @category errors
 */
export class CircuitOpenError extends Schema.TaggedError<CircuitOpenError>("effect-orchestra/CircuitOpenError")(
  "CircuitOpenError",
  {
    breaker: Schema.String,
    state: Schema.Literals(["open", "half-open", "isolated", "unavailable"]),
    retryAfter: Schema.optional(Schema.Duration),
    /** With state `"unavailable"`: the store that could not be read (`"redis"`). @since 0.3.0 */
    store: Schema.optional(Schema.String)
  }
) {
  override get message(): string {
    if (this.state === "unavailable") {
      const store = this.store === "redis" ? "Redis" : (this.store ?? "its store")
      return `circuit "${this.breaker}" is unavailable: its state could not be read from ${store}`
    }
    return `circuit "${this.breaker}" is ${this.state}`
  }
}

/**
 * The service is closing and admits no new work, or its shutdown deadline passed while
 * the call was running.
 *
 * @since 0.1.0
 * @category errors
 */
export class ShuttingDownError extends Schema.TaggedError<ShuttingDownError>("effect-orchestra/ShuttingDownError")(
  "ShuttingDownError",
  { message: Schema.String }
) {}

/**
 * A stream failed after it had delivered text. It is never silently restarted: the error
 * carries what was delivered, the provider's own message and the failure that ended it.
 *
 * @since 0.1.0
 * @category errors
 */
export class StreamInterruptedError extends Schema.TaggedError<StreamInterruptedError>(
  "effect-orchestra/StreamInterruptedError"
)("StreamInterruptedError", {
  partialText: Schema.String,
  provider: Schema.optional(Schema.String),
  /** The reason of the failure that cut the stream (a `ModelError` reason, `Timeout`, ...). */
  reason: Schema.String,
  /** The message of the failure that cut the stream, as the provider gave it. */
  detail: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect())
}) {
  override get message(): string {
    const detail = this.detail === undefined ? "" : `: ${this.detail}`
    const where = this.provider === undefined ? "" : ` (${this.provider})`
    return `stream interrupted after ${this.partialText.length} characters${where}: ${this.reason}${detail}`
  }
}

/**
 * One step of a fallback chain that failed, in the order tried.
 *
 * @since 0.2.0
 * @category models
 */
export interface FailedAttempt {
  readonly domain?: string | undefined
  readonly provider: string
  readonly error: AiError
}

/**
 * Every step of a fallback chain failed. Lists each step tried with its error, in order;
 * `last` is the error of the last step (the one a single-step call would have failed with).
 *
 * @since 0.2.0
 * @category errors
 */
export class FallbackExhaustedError extends Schema.TaggedError<FallbackExhaustedError>(
  "effect-orchestra/FallbackExhaustedError"
)("FallbackExhaustedError", {
  attempts: Schema.Array(
    Schema.Struct({
      domain: Schema.optional(Schema.String),
      provider: Schema.String,
      error: Schema.suspend((): Schema.Codec<AiError> => AiErrorSchema)
    })
  )
}) {
  get last(): AiError {
    return this.attempts[this.attempts.length - 1]!.error
  }
  override get message(): string {
    const steps = this.attempts.map((a) => `${a.domain ?? a.provider}: ${a.error._tag} ${errorSummary(a.error)}`)
    return `all ${this.attempts.length} fallback steps failed (${steps.join("; ")})`
  }
}

const errorSummary = (error: AiError): string => (error._tag === "ModelError" ? error.reason : error.message)

/**
 * Every failure a model call can end with.
 *
 * @since 0.1.0
 * @category models
 */
export type AiError =
  | ModelError
  | TimeoutError
  | CircuitOpenError
  | ShuttingDownError
  | StreamInterruptedError
  | FallbackExhaustedError

/**
 * The schema of every `AiError`.
 *
 * @since 0.2.0
 * @category schemas
 */
export const AiErrorSchema: Schema.Codec<AiError> = Schema.Union([
  ModelError,
  TimeoutError,
  CircuitOpenError,
  ShuttingDownError,
  StreamInterruptedError,
  FallbackExhaustedError
]) as unknown as Schema.Codec<AiError>

const tags: ReadonlySet<string> = new Set([
  "ModelError",
  "TimeoutError",
  "CircuitOpenError",
  "ShuttingDownError",
  "StreamInterruptedError",
  "FallbackExhaustedError"
])

/**
 * @since 0.1.0
 * @category guards
 */
export const isAiError = (u: unknown): u is AiError =>
  Predicate.hasProperty(u, "_tag") && typeof u._tag === "string" && tags.has(u._tag) && u instanceof Error

const retryableReasons: ReadonlySet<Reason> = new Set<Reason>([
  "RateLimited",
  "Overloaded",
  "Transport",
  "Timeout",
  "Unavailable"
])

/**
 * Try the same provider again? Transient failures only. A `CircuitOpenError` never retries
 * (the breaker said no), a stream that already delivered text is never restarted, and an
 * exhausted fallback chain is final.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isRetryable = (error: AiError): boolean => {
  switch (error._tag) {
    case "ModelError":
      return retryableReasons.has(error.reason)
    case "TimeoutError":
      return error.limit !== "total" && (error.partialText === undefined || error.partialText.length === 0)
    default:
      return false
  }
}

/**
 * Try another provider? Everything transient, plus failures specific to this provider
 * (its breaker is open, its key is refused, its answer did not decode or passed its size bound
 * (`TooLarge` with `field` `"response"`), it has no such model, or it answered a 404 naming no
 * field: its base URL is wrong).
 * Not a bad request (every provider would refuse it), not shutdown, not a stream that
 * already delivered text, not the call's total deadline.
 *
 * @since 0.1.0
 * @category predicates
 */
export const shouldFallback = (error: AiError): boolean => {
  switch (error._tag) {
    case "ModelError":
      // A model this provider does not have is specific to it: another may serve the request. So is a 404 that names
      // no field (no API error: a wrong base URL's page, a proxy's): the request has no part in the URL it went to.
      if (error.reason === "InvalidRequest") {
        return error.field === "model" || (error.status === 404 && error.field === undefined)
      }
      // An answer past its bound is this provider's (an endless body); a request too large is every one's.
      if (error.reason === "TooLarge") return error.field === "response"
      return error.reason !== "ContentFilter"
    case "CircuitOpenError":
      return true
    case "TimeoutError":
      return isRetryable(error)
    default:
      return false
  }
}

/**
 * The label a failure is counted under in the metrics. A `StreamInterruptedError` of reason
 * `"ShuttingDown"` (a stream its provider's own shutdown cut after text, as the local
 * provider's layer closing does) is `"ShuttingDown"`, as the executor's own shutdown is;
 * any other is `"StreamInterrupted"`.
 *
 * @since 0.1.0
 * @category utils
 */
export const reasonOf = (error: AiError): string => {
  switch (error._tag) {
    case "ModelError":
      return error.reason
    case "TimeoutError":
      return "Timeout"
    case "CircuitOpenError":
      return "CircuitOpen"
    case "ShuttingDownError":
      return "ShuttingDown"
    case "StreamInterruptedError":
      return error.reason === "ShuttingDown" ? "ShuttingDown" : "StreamInterrupted"
    case "FallbackExhaustedError":
      return "FallbackExhausted"
  }
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const modelError = (
  reason: Reason,
  message: string,
  fields?: Omit<ConstructorParameters<typeof ModelError>[0], "reason" | "message">
): ModelError => new ModelError({ reason, message, ...fields })

/**
 * A request or call option refused before any provider ran: `InvalidRequest` naming the field.
 *
 * @since 0.2.0
 * @category constructors
 */
export const invalidRequest = (field: string, message: string, provider?: string): ModelError =>
  new ModelError({ reason: "InvalidRequest", field, message: `invalid ${field}: ${message}`, provider })
