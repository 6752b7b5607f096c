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
export const Reason = Schema.Literal(
  "RateLimited",
  "Overloaded",
  "Transport",
  "Timeout",
  "InvalidRequest",
  "Unauthorized",
  "Decode",
  "Unavailable",
  "ContentFilter",
  "Unknown"
)

/**
 * @since 0.1.0
 * @category models
 */
export type Reason = typeof Reason.Type

/**
 * A failure reported by (or on the way to) a model provider.
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
  retryAfter: Schema.optional(Schema.DurationFromSelf),
  /** The request field that was wrong (InvalidRequest) or the response field that failed to decode (Decode). */
  field: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * Which deadline fired: the whole call (`request`), a stream's first chunk (`firstChunk`),
 * the gap between two chunks (`idle`), or a stream's total time (`total`).
 *
 * @since 0.1.0
 * @category models
 */
export const TimeoutLimit = Schema.Literal("request", "firstChunk", "idle", "total")

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
  timeout: Schema.DurationFromSelf,
  provider: Schema.optional(Schema.String),
  /** For streams: the text already delivered to the consumer before the limit fired. */
  partialText: Schema.optional(Schema.String)
}) {
  override get message(): string {
    return `${this.limit} timeout after ${Duration.format(this.timeout)}${this.provider ? ` (${this.provider})` : ""}`
  }
}

/**
 * A circuit breaker refused the call. Falls back, never retries.
 *
 * @since 0.1.0
 * @category errors
 */
export class CircuitOpenError extends Schema.TaggedError<CircuitOpenError>("effect-orchestra/CircuitOpenError")(
  "CircuitOpenError",
  {
    breaker: Schema.String,
    state: Schema.Literal("open", "half-open", "isolated"),
    retryAfter: Schema.optional(Schema.DurationFromSelf)
  }
) {
  override get message(): string {
    return `circuit "${this.breaker}" is ${this.state}`
  }
}

/**
 * The service is closing and admits no new work.
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
 * carries what was delivered and the failure that ended it.
 *
 * @since 0.1.0
 * @category errors
 */
export class StreamInterruptedError extends Schema.TaggedError<StreamInterruptedError>(
  "effect-orchestra/StreamInterruptedError"
)("StreamInterruptedError", {
  partialText: Schema.String,
  provider: Schema.optional(Schema.String),
  reason: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {
  override get message(): string {
    return `stream interrupted after ${this.partialText.length} characters: ${this.reason}`
  }
}

/**
 * Every failure a model call can end with.
 *
 * @since 0.1.0
 * @category models
 */
export type AiError = ModelError | TimeoutError | CircuitOpenError | ShuttingDownError | StreamInterruptedError

/**
 * @since 0.1.0
 * @category guards
 */
export const isAiError = (u: unknown): u is AiError =>
  Predicate.isTagged(u, "ModelError") ||
  Predicate.isTagged(u, "TimeoutError") ||
  Predicate.isTagged(u, "CircuitOpenError") ||
  Predicate.isTagged(u, "ShuttingDownError") ||
  Predicate.isTagged(u, "StreamInterruptedError")

const retryableReasons: ReadonlySet<Reason> = new Set<Reason>([
  "RateLimited",
  "Overloaded",
  "Transport",
  "Timeout",
  "Unavailable"
])

/**
 * Try the same provider again? Transient failures only. A `CircuitOpenError` never retries
 * (the breaker said no), a stream that already delivered text is never restarted.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isRetryable = (error: AiError): boolean => {
  switch (error._tag) {
    case "ModelError":
      return retryableReasons.has(error.reason)
    case "TimeoutError":
      return error.partialText === undefined || error.partialText.length === 0
    default:
      return false
  }
}

/**
 * Try another provider? Everything transient, plus failures specific to this provider
 * (its breaker is open, its key is refused, its answer did not decode, it has no such model).
 * Not a bad request (every provider would refuse it), not shutdown, not a stream that
 * already delivered text.
 *
 * @since 0.1.0
 * @category predicates
 */
export const shouldFallback = (error: AiError): boolean => {
  switch (error._tag) {
    case "ModelError":
      // A model this provider does not have is specific to it: another may serve the request.
      if (error.reason === "InvalidRequest") return error.field === "model"
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
 * The label a failure is counted under in the metrics.
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
      return "StreamInterrupted"
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
