/**
 * What a provider's error body says, whatever its shape (OpenAI, vLLM, Anthropic, Gemini,
 * Ollama, watsonx, IBM IAM), and the reason of a failure decided from its status and the
 * body's structured fields (codes and types, never message text).
 *
 * @since 0.3.0
 */
import { type Duration, Predicate } from "effect"
import type { Reason } from "../../AiError.js"
import { delay } from "./retryAfter.js"

/**
 * What a provider's error body says, whatever its shape (OpenAI, vLLM, Anthropic, Gemini,
 * Ollama, watsonx, IBM IAM).
 *
 * @since 0.2.0
 * @category models
 */
export interface ErrorInfo {
  readonly message?: string | undefined
  readonly type?: string | undefined
  readonly code?: string | undefined
  readonly status?: number | undefined
  readonly param?: string | undefined
  readonly reasons: ReadonlyArray<string>
  readonly retryDelay?: Duration.Duration | undefined
}

/** @internal */
export const str = (u: unknown): string | undefined => (typeof u === "string" && u.length > 0 ? u : undefined)
const num = (u: unknown): number | undefined => (typeof u === "number" && Number.isFinite(u) ? u : undefined)

const parseGoogleDuration = (u: unknown): Duration.Duration | undefined => {
  if (typeof u !== "string") return undefined
  const match = /^(\d+(?:\.\d+)?)s$/.exec(u.trim())
  return match?.[1] === undefined ? undefined : delay(Number(match[1]) * 1000)
}

/**
 * Reads the error fields of a parsed JSON error body (anything else gives no fields). Google's
 * streaming methods send theirs as an array of one error object (`[{"error": {...}}]`): its
 * first element is read.
 *
 * @since 0.2.0
 * @category utils
 */
export const errorInfo = (body: unknown): ErrorInfo => {
  const value = Array.isArray(body) && body.length > 0 ? body[0] : body
  if (!Predicate.isObject(value) || Array.isArray(value)) return { reasons: [] }
  const record = value as Record<string, unknown>
  const nested = record["error"]
  if (typeof nested === "string") return { message: nested, reasons: [] }
  if (Predicate.isObject(nested) && !Array.isArray(nested)) {
    const error = nested as Record<string, unknown>
    const reasons: Array<string> = []
    let retryDelay: Duration.Duration | undefined
    const details = error["details"]
    if (Array.isArray(details)) {
      for (const detail of details) {
        if (!Predicate.isObject(detail)) continue
        const entry = detail as Record<string, unknown>
        const reason = str(entry["reason"])
        if (reason !== undefined) reasons.push(reason)
        retryDelay = retryDelay ?? parseGoogleDuration(entry["retryDelay"])
      }
    }
    return {
      message: str(error["message"]),
      type: str(error["type"]) ?? str(error["status"]),
      code: str(error["code"]),
      status: num(error["code"]) ?? num(record["status_code"]),
      param: str(error["param"]),
      reasons,
      retryDelay
    }
  }
  const errors = record["errors"]
  if (Array.isArray(errors) && Predicate.isObject(errors[0])) {
    const first = errors[0] as Record<string, unknown>
    return { message: str(first["message"]), code: str(first["code"]), status: num(record["status_code"]), reasons: [] }
  }
  return {
    message: str(record["message"]) ?? str(record["errorMessage"]) ?? str(record["detail"]),
    type: str(record["type"]),
    code: str(record["code"]) ?? str(record["errorCode"]),
    status: num(record["code"]) ?? num(record["status_code"]),
    param: str(record["param"]),
    reasons: []
  }
}

const typeReasons: Readonly<Record<string, Reason>> = {
  rate_limit_error: "RateLimited",
  rate_limit_exceeded: "RateLimited",
  RESOURCE_EXHAUSTED: "RateLimited",
  overloaded_error: "Overloaded",
  server_error: "Overloaded",
  api_error: "Overloaded",
  INTERNAL: "Overloaded",
  UNAVAILABLE: "Unavailable",
  invalid_request_error: "InvalidRequest",
  INVALID_ARGUMENT: "InvalidRequest",
  NOT_FOUND: "InvalidRequest",
  FAILED_PRECONDITION: "Unauthorized",
  authentication_error: "Unauthorized",
  permission_error: "Unauthorized",
  UNAUTHENTICATED: "Unauthorized",
  PERMISSION_DENIED: "Unauthorized",
  authentication_token_expired: "Unauthorized",
  DEADLINE_EXCEEDED: "Timeout",
  request_too_large: "TooLarge",
  context_length_exceeded: "InvalidRequest"
}

/**
 * What this provider (this model, as served there) does not implement: `InvalidRequest` of
 * field `model`, so that another provider is tried instead of this one again.
 *
 * @internal
 */
export const NOT_IMPLEMENTED = 501

/**
 * The reason of an HTTP status, refined by the structured fields of the error body (codes
 * and types, never message text): 429 `RateLimited`, 401/402/403/407 (and Google's `FAILED_PRECONDITION`,
 * a caller the service will not serve) `Unauthorized`, 408/504
 * `Timeout`, 409 `Unavailable`, 413 (and a 4xx of code `context_length_exceeded`) `TooLarge`, 500/529
 * `Overloaded`, 501 `InvalidRequest` (what this server does not implement, retrying cannot
 * change), 502/503 and other 5xx `Unavailable`, other 4xx `InvalidRequest`. Without a
 * status (an error inside a stream), the body's type or code decides, else `Unknown`.
 *
 * @since 0.2.0
 * @category utils
 */
export const classify = (status: number | undefined, info: ErrorInfo): Reason => {
  const code = info.code
  if (code === "insufficient_quota" || info.type === "insufficient_quota") return "Unauthorized"
  if (info.reasons.includes("API_KEY_INVALID") || info.reasons.includes("API_KEY_SERVICE_BLOCKED")) {
    return "Unauthorized"
  }
  // Google's 400 for a caller this service will not serve (its region, a free tier not offered there): this
  // account's failure at this provider, as a refused key is; another provider may serve the request.
  if (info.type === "FAILED_PRECONDITION") return "Unauthorized"
  if (code === "content_filter" || code === "content_policy_violation") return "ContentFilter"
  if (status === 529 || info.type === "overloaded_error") return "Overloaded"
  if (status !== undefined && status > 0) {
    if (status === 429) return "RateLimited"
    if (status === 401 || status === 402 || status === 403 || status === 407) return "Unauthorized"
    if (status === 408 || status === 504) return "Timeout"
    // A conflict with another request in flight: OpenAI's and Anthropic's own clients retry it.
    if (status === 409) return "Unavailable"
    // OpenAI answers a conversation over the model's context with a 400 of this code: a request over its bound.
    if (status === 413 || (status < 500 && code === "context_length_exceeded")) return "TooLarge"
    if (status === 500) return "Overloaded"
    // llama.cpp answers a feature it was not started with (embeddings) so: permanent for this server.
    if (status === NOT_IMPLEMENTED) return "InvalidRequest"
    if (status >= 500) return "Unavailable"
    if (status >= 400) return "InvalidRequest"
    return "Unknown"
  }
  return (info.type !== undefined ? typeReasons[info.type] : undefined) ?? typeReasons[code ?? ""] ?? "Unknown"
}

/**
 * Parses a JSON text, or gives `undefined`.
 *
 * @since 0.2.0
 * @category utils
 */
export const parseJsonOrUndefined = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/**
 * Is this parsed payload an error object (`{"error": ...}`, vLLM's `{"object": "error"}`)?
 *
 * @since 0.2.0
 * @category utils
 */
export const isErrorPayload = (payload: unknown): boolean => {
  if (!Predicate.isObject(payload) || Array.isArray(payload)) return false
  const record = payload as Record<string, unknown>
  return (record["error"] !== undefined && record["error"] !== null) || record["object"] === "error"
}
