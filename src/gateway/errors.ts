/**
 * The gateway's own failures (a request refused before or around the model call: its key,
 * its budget, its body, its route) as one tagged error with a reason, and how each failure,
 * ours or an `AiError`, is answered on the wire: an OpenAI-shaped JSON body
 * (`{ "error": { "message", "type", "param", "code" } }`) with the right status and, for
 * 429 and 503, a `Retry-After` header.
 *
 * @since 0.2.0
 */
import { Duration, Schema } from "effect"
import { type AiError, hasUpstreamWords, ModelError, RateLimitKind, reasonOf, type TimeoutLimit } from "../AiError.js"
import * as RateLimit from "../RateLimit.js"

/**
 * Why the gateway refused a request.
 *
 * @since 0.2.0
 * @category models
 */
export const GatewayReason = Schema.Literals([
  "Unauthorized",
  "Forbidden",
  "BudgetExceeded",
  "RateLimited",
  "InvalidRequest",
  "NotFound",
  "MethodNotAllowed",
  "TooLarge",
  "Unavailable",
  "Internal"
])

/**
 * @since 0.2.0
 * @category models
 */
export type GatewayReason = typeof GatewayReason.Type

/**
 * The scope of a budget: one key, every key of a team, or one model for a key.
 *
 * @since 0.2.0
 * @category models
 */
export const BudgetScope = Schema.Literals(["key", "team", "model"])

/**
 * @since 0.2.0
 * @category models
 */
export type BudgetScope = typeof BudgetScope.Type

/**
 * A request the gateway refused, with what its answer needs: `status` (default from the
 * reason), `retryAfter` (429, 503), `param` (the request field that was wrong), for
 * `BudgetExceeded` the `scope` (`key`, `team`, `model`), its id, the `unit` (`tokens` or
 * `usd`), the amount `spent` (settled and held), the part of it `held` by requests in flight, and
 * the `limit`, and for a key's `RateLimited` the `rateLimit` that refused (`requests` or `tokens`
 * per minute) and its `limit`. A `BudgetExceeded` with the code `budget_held` is refused only for
 * what requests in flight hold (the request fits once they settle): a retryable 429 with a short
 * `Retry-After`, not a spent budget's permanent one.
 *
 * @since 0.2.0
 * @category errors
 */
export class GatewayError extends Schema.TaggedError<GatewayError>("effect-orchestra/GatewayError")("GatewayError", {
  reason: GatewayReason,
  message: Schema.String,
  status: Schema.optional(Schema.Number),
  retryAfter: Schema.optional(Schema.Duration),
  param: Schema.optional(Schema.String),
  /** An OpenAI-style machine code (`invalid_api_key`, `budget_exceeded`, `model_not_found`); default from the reason. */
  code: Schema.optional(Schema.String),
  scope: Schema.optional(BudgetScope),
  scopeId: Schema.optional(Schema.String),
  unit: Schema.optional(Schema.Literals(["tokens", "usd"])),
  spent: Schema.optional(Schema.Number),
  /** Of `spent`, what requests in flight hold. */
  held: Schema.optional(Schema.Number),
  limit: Schema.optional(Schema.Number),
  rateLimit: Schema.optional(RateLimitKind),
  cause: Schema.optional(Schema.Defect())
}) {}

/**
 * The answer to a failed request: status, OpenAI-shaped body and headers.
 *
 * @since 0.2.0
 * @category models
 */
export interface WireError {
  readonly status: number
  readonly body: {
    readonly error: {
      readonly message: string
      readonly type: string
      readonly param: string | null
      readonly code: string | null
      /** For a budget: which one, how much of it is spent, and of that what requests in flight hold. */
      readonly budget?:
        | {
            readonly scope: BudgetScope
            readonly id?: string | undefined
            readonly unit: "tokens" | "usd"
            readonly spent: number
            readonly held?: number | undefined
            readonly limit: number
          }
        | undefined
      /** For a key's rate limit: which of its limits refused (`requests` or `tokens` per minute), and its value. */
      readonly rate_limit?: { readonly type: RateLimitKind; readonly limit: number } | undefined
      /**
       * For a failure the upstream answered: its own error code (`ModelError.code`: `insufficient_quota`,
       * `rate_limit_exceeded`, `context_length_exceeded`), beside `code`, which stays the gateway's.
       *
       * @since 0.3.0
       */
      readonly upstream_code?: string | undefined
    }
  }
  /** `Retry-After` in whole seconds (at least 1), for 429 and 503. */
  readonly retryAfterSeconds?: number | undefined
  /**
   * The same wait in whole milliseconds (at least 1), sent as `retry-after-ms` beside `Retry-After`:
   * the official clients read it first, so a 200 ms wait is not waited as 1 s.
   *
   * @since 0.3.0
   */
  readonly retryAfterMs?: number | undefined
  /**
   * `false` for a refusal that retrying cannot cure soon (an exhausted budget, even one
   * that resets later; not one only held by requests in flight; an upstream that refused the
   * gateway's own key): sent as `x-should-retry: false`, which the official clients obey.
   */
  readonly shouldRetry?: boolean | undefined
  /** The label the failure is counted under (`errors by reason`). */
  readonly reason: string
}

const statusOf: Readonly<Record<GatewayReason, number>> = {
  Unauthorized: 401,
  Forbidden: 403,
  BudgetExceeded: 429,
  RateLimited: 429,
  InvalidRequest: 400,
  NotFound: 404,
  MethodNotAllowed: 405,
  TooLarge: 413,
  Unavailable: 503,
  Internal: 500
}

const typeOf: Readonly<Record<GatewayReason, string>> = {
  Unauthorized: "authentication_error",
  Forbidden: "permission_error",
  BudgetExceeded: "insufficient_quota",
  RateLimited: "rate_limit_error",
  InvalidRequest: "invalid_request_error",
  NotFound: "invalid_request_error",
  MethodNotAllowed: "invalid_request_error",
  TooLarge: "invalid_request_error",
  Unavailable: "service_unavailable",
  Internal: "server_error"
}

const codeOf: Readonly<Record<GatewayReason, string>> = {
  Unauthorized: "invalid_api_key",
  Forbidden: "model_not_allowed",
  BudgetExceeded: "budget_exceeded",
  RateLimited: "rate_limit_exceeded",
  InvalidRequest: "invalid_request",
  NotFound: "not_found",
  MethodNotAllowed: "method_not_allowed",
  TooLarge: "request_too_large",
  Unavailable: "unavailable",
  Internal: "internal_error"
}

// The code of a budget refused only for what requests in flight hold (see `GatewayError`).
const heldCode = "budget_held"

// The longest wait sent (a year): a longer or infinite one is not a wait anyone keeps.
const maxWaitMs = 365 * 24 * 3600 * 1000

const millis = (d: Duration.Duration | undefined): number | undefined =>
  d === undefined ? undefined : Math.min(maxWaitMs, Math.max(1, Math.ceil(Duration.toMillis(d))))

/** `Retry-After` (whole seconds, at least 1) and `retry-after-ms` (the exact wait) of a wait in milliseconds. */
const wait = (ms: number | undefined) =>
  ms === undefined ? {} : { retryAfterSeconds: Math.ceil(ms / 1000), retryAfterMs: ms }

const body = (message: string, type: string, param: string | undefined, code: string | undefined) => ({
  error: { message, type, param: param ?? null, code: code ?? null }
})

/**
 * How a gateway failure is answered.
 *
 * @since 0.2.0
 * @category conversions
 */
export const fromGatewayError = (error: GatewayError): WireError => {
  const status = error.status ?? statusOf[error.reason]
  // A budget held by requests in flight is free again when they settle, seconds later: a limit
  // reached for now (OpenAI's rate_limit_error), which clients retry; `insufficient_quota` tells them not to.
  const held = error.reason === "BudgetExceeded" && error.code === heldCode
  const wire = body(
    error.message,
    held ? "rate_limit_error" : typeOf[error.reason],
    error.param,
    error.code ?? codeOf[error.reason]
  )
  const budget =
    error.reason === "BudgetExceeded" &&
    error.scope !== undefined &&
    error.spent !== undefined &&
    error.limit !== undefined
      ? {
          scope: error.scope,
          id: error.scopeId,
          unit: error.unit ?? "tokens",
          spent: error.spent,
          ...(error.held === undefined ? {} : { held: error.held }),
          limit: error.limit
        }
      : undefined
  // A spent budget comes back at its reset (its retryAfter, for whoever waits that long) or never: no
  // Retry-After of 1 s for it, and no client's automatic retry (seconds later) can succeed.
  const budgetRefusal = error.reason === "BudgetExceeded" && !held
  const retryAfter = budgetRefusal
    ? wait(millis(error.retryAfter))
    : status === 429 || status === 503
      ? wait(millis(error.retryAfter) ?? 1000)
      : {}
  const rateLimit =
    error.reason === "RateLimited" && error.rateLimit !== undefined && error.limit !== undefined
      ? { type: error.rateLimit, limit: error.limit }
      : undefined
  return {
    status,
    body:
      budget !== undefined
        ? { error: { ...wire.error, budget } }
        : rateLimit !== undefined
          ? { error: { ...wire.error, rate_limit: rateLimit } }
          : wire,
    ...retryAfter,
    shouldRetry: budgetRefusal ? false : undefined,
    reason: error.reason
  }
}

// An upstream refusing *our* key or model is not the client's fault: a bad gateway, not a 401.
const modelErrorStatus = (error: Extract<AiError, { _tag: "ModelError" }>): [number, string, string] => {
  switch (error.reason) {
    case "InvalidRequest":
      // A model the provider does not have: OpenAI's 404, as the gateway answers a model it does not know.
      if (error.field === "model") return [404, "invalid_request_error", "model_not_found"]
      // An upstream's 404 naming nothing (no error object: the page of a wrong base URL, a route the server lacks): the
      // gateway's provider is misconfigured, and the client's request is not at fault.
      if (error.status === 404 && error.field === undefined) return [502, "upstream_error", "upstream_not_found"]
      return [400, "invalid_request_error", "invalid_request"]
    case "ContentFilter":
      return [400, "invalid_request_error", "content_filter"]
    case "TooLarge":
      // Without a status, the bound passed is our own on the provider's answer (`maxResponseBytes`):
      // an upstream that answered too much, not a request too long.
      if (error.status === undefined) return [502, "upstream_error", "upstream_bad_response"]
      return [400, "invalid_request_error", "context_length_exceeded"]
    case "RateLimited":
      // Our own rate limit failing closed because its store did not answer: an outage, not a limit
      // reached (as a breaker's store and a key's limits are answered).
      if (error.status === undefined && RateLimit.isStoreRefusal(error)) {
        return [503, "service_unavailable", "rate_limit_store_unavailable"]
      }
      // Our own rate limit on the provider carries no status; the provider's 429 does.
      return [429, "rate_limit_error", error.status === undefined ? "rate_limit_exceeded" : "upstream_rate_limited"]
    case "Overloaded":
    case "Unavailable":
      // An upstream that answered 500 or 502 failed, rather than said it is busy: a bad gateway.
      if (error.status === 500 || error.status === 502) return [502, "upstream_error", "upstream_error"]
      return [
        503,
        "service_unavailable",
        error.reason === "Overloaded" ? "upstream_overloaded" : "upstream_unavailable"
      ]
    case "Timeout":
      return [504, "timeout", "upstream_timeout"]
    case "Unauthorized":
      return [502, "upstream_error", "upstream_unauthorized"]
    case "Decode":
      return [502, "upstream_error", "upstream_bad_response"]
    case "Transport":
      return [502, "upstream_error", "upstream_unreachable"]
    case "Unknown":
      return [502, "upstream_error", "upstream_error"]
  }
}

// A failure a client's retry seconds later cannot cure (answered with `x-should-retry: false`).
const isFinal = (error: AiError): boolean => error._tag === "ModelError" && error.reason === "Unauthorized"

const timeoutCodes: Readonly<Record<TimeoutLimit, string>> = {
  request: "request_timeout",
  firstChunk: "first_chunk_timeout",
  idle: "idle_timeout",
  total: "total_timeout"
}

// A failure the library made itself, without the upstream's words: a request it refused, its own rate limit or bound.
const ownReasons: ReadonlySet<string> = new Set(["InvalidRequest", "ContentFilter", "RateLimited", "TooLarge"])

const upstreamWhat: Readonly<Record<string, string>> = {
  Transport: "could not be reached, or broke the connection",
  Decode: "sent a malformed response",
  Unauthorized: "refused the gateway's credentials",
  Overloaded: "is overloaded",
  Unavailable: "is unavailable",
  Timeout: "timed out"
}

/**
 * Whether a model error's own message may go to the gateway's clients. An upstream's message is
 * the operator's, not theirs: its address (a 404's or 405's `for POST http://10.0.0.7:8000/v1/...`,
 * a refused connection's host and port), its account (a 429's organization), its pages and stack
 * traces. Sent as it is only when it tells the client what to change in its own request: an API's
 * refusal of it (a 400, a model it does not have), or the library's own refusal or bound.
 */
const sharedMessage = (error: ModelError, status: number): boolean =>
  // A proxy's page, a stream's error event, an effect/ai error: the upstream's words, whatever the reason.
  hasUpstreamWords(error)
    ? false
    : error.status === undefined
      ? ownReasons.has(error.reason)
      : (status === 400 || status === 404) &&
        ((error.status !== 404 && error.status !== 405) || error.code !== undefined)

const modelErrorMessage = (error: ModelError, status: number, code: string): string => {
  if (sharedMessage(error, status)) return error.message
  const who = `the upstream${error.provider === undefined ? "" : ` ${JSON.stringify(error.provider)}`}${error.model === undefined ? "" : ` (model ${JSON.stringify(error.model)})`}`
  const what = error.status === undefined ? (upstreamWhat[error.reason] ?? "failed") : `answered HTTP ${error.status}`
  return `${who} ${what} (${code}); the gateway's log has its message`
}

/**
 * A failure's message as the gateway's clients read it: a model error's as {@link fromAiError}
 * sends it (an upstream's message only when it is about the client's request), a cut stream's
 * without what cut it, a fallback chain's naming each step so; anything else as it is.
 *
 * @since 0.3.0
 * @category conversions
 */
export const clientMessage = (error: AiError): string => {
  switch (error._tag) {
    case "ModelError": {
      const [status, , code] = modelErrorStatus(error)
      return modelErrorMessage(error, status, code)
    }
    case "StreamInterruptedError": {
      const where = error.provider === undefined ? "" : ` (${error.provider})`
      return `stream interrupted after ${error.partialText.length} characters${where}: ${error.reason}`
    }
    case "FallbackExhaustedError": {
      const steps = error.attempts.map(
        (a) =>
          `${a.domain ?? a.provider}: ${a.error._tag} ${a.error._tag === "ModelError" ? a.error.reason : clientMessage(a.error)}`
      )
      return `all ${error.attempts.length} fallback steps failed (${steps.join("; ")})`
    }
    default:
      return error.message
  }
}

/**
 * The whole message of a failure whose client-facing one leaves something out (see
 * {@link clientMessage}), for the gateway's log; `undefined` when the client reads all of it.
 *
 * @since 0.3.0
 * @category conversions
 */
export const withheldMessage = (error: AiError | GatewayError): string | undefined => {
  if (error._tag === "GatewayError") return undefined
  // A chain's own message names each step's reason only: the log needs each step's whole message.
  if (error._tag === "FallbackExhaustedError") {
    if (error.attempts.every((step) => withheldMessage(step.error) === undefined)) return undefined
    const steps = error.attempts.map((step) => `${step.domain ?? step.provider}: ${step.error.message}`)
    return `${clientMessage(error)}: ${steps.join("; ")}`
  }
  return clientMessage(error) === error.message ? undefined : error.message
}

/**
 * How a model-call failure is answered: a bad request 400 (a model the provider does not
 * have 404), an upstream limit 429, an open breaker, overload or shutdown 503, a deadline
 * 504, any other upstream failure 502. An exhausted fallback chain is answered as its last
 * step's failure, naming every step. The upstream's own error code, when it gave one, is
 * passed on as `upstream_code` (since 0.3.0), a stream's cut by it too; `code` stays the gateway's.
 *
 * @since 0.2.0
 * @category conversions
 */
export const fromAiError = (error: AiError): WireError => {
  switch (error._tag) {
    case "ModelError": {
      const [status, type, code] = modelErrorStatus(error)
      const wire = body(
        modelErrorMessage(error, status, code),
        type,
        error.reason === "InvalidRequest" ? error.field : undefined,
        code
      )
      return {
        status,
        // The gateway's code is one vocabulary for every provider (clients branch on it); the upstream's is beside it.
        body: error.code === undefined ? wire : { error: { ...wire.error, upstream_code: error.code } },
        ...(status === 429 || status === 503 ? wait(millis(error.retryAfter) ?? 1000) : {}),
        // The upstream refused the gateway's own key (or will not serve its account): the official clients retry a
        // 502 within seconds, which cannot cure that and calls the upstream again for each.
        shouldRetry: isFinal(error) ? false : undefined,
        reason: error.reason
      }
    }
    case "TimeoutError":
      return {
        status: 504,
        body: body(error.message, "timeout", undefined, timeoutCodes[error.limit]),
        reason: "Timeout"
      }
    case "CircuitOpenError":
      return {
        status: 503,
        // A breaker whose shared state could not be read (its store down, failing closed) is no open circuit.
        body: body(
          error.message,
          "service_unavailable",
          undefined,
          error.state === "unavailable" ? "breaker_store_unavailable" : "circuit_open"
        ),
        ...wait(millis(error.retryAfter) ?? 1000),
        reason: "CircuitOpen"
      }
    case "ShuttingDownError":
      return {
        status: 503,
        body: body(error.message, "service_unavailable", undefined, "shutting_down"),
        ...wait(1000),
        reason: "ShuttingDown"
      }
    case "StreamInterruptedError": {
      const wire = body(clientMessage(error), "upstream_error", undefined, "stream_interrupted")
      // What cut the stream, when the upstream said it with a code of its own (an error event's).
      const cause = error.cause
      const code = cause instanceof ModelError ? cause.code : undefined
      return {
        status: 502,
        body: code === undefined ? wire : { error: { ...wire.error, upstream_code: code } },
        reason: "StreamInterrupted"
      }
    }
    case "FallbackExhaustedError": {
      const last = fromAiError(error.last)
      // Not to retry only when no step may answer a retry: a step that was busy may be free seconds later.
      const final = last.shouldRetry === false && error.attempts.every((step) => isFinal(step.error))
      return {
        ...last,
        body: { error: { ...last.body.error, message: clientMessage(error) } },
        shouldRetry: final ? false : undefined,
        reason: reasonOf(error)
      }
    }
  }
}

/**
 * How any failure of a request is answered.
 *
 * @since 0.2.0
 * @category conversions
 */
export const toWire = (error: AiError | GatewayError): WireError =>
  error._tag === "GatewayError" ? fromGatewayError(error) : fromAiError(error)

/**
 * A refusal, for the routes and the key store.
 *
 * @since 0.2.0
 * @category constructors
 */
export const gatewayError = (
  reason: GatewayReason,
  message: string,
  fields?: Omit<ConstructorParameters<typeof GatewayError>[0], "reason" | "message">
): GatewayError => new GatewayError({ reason, message, ...fields })

/**
 * A refusal naming the library's field (`texts[2]`, `messages[1]`), named as the client's parameter instead
 * (`input[2]`), its message too; everything else kept.
 *
 * @internal
 */
export const withParam = (error: ModelError, param: string): ModelError => {
  const prefix = `invalid ${error.field}: `
  return new ModelError({
    reason: error.reason,
    message: error.message.startsWith(prefix)
      ? `invalid ${param}: ${error.message.slice(prefix.length)}`
      : error.message,
    provider: error.provider,
    model: error.model,
    status: error.status,
    retryAfter: error.retryAfter,
    field: param,
    code: error.code,
    cause: error.cause
  })
}
