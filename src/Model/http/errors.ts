/**
 * How HTTP providers fail: the reason of a status (refined by the structured fields of the
 * provider's error body, never its message text), `Retry-After`, errors sent inside a
 * stream, broken connections, and bodies too large.
 *
 * Nothing here ever puts a request (URL query, headers, body) into an error: only the
 * provider's own message, truncated and scrubbed of the secrets named in the
 * {@link CallContext}.
 *
 * @since 0.2.0
 */
import { Duration, Predicate, Redacted } from "effect"
import { ModelError, type Reason, TimeoutError } from "../../AiError.js"

/**
 * Who is calling, for error messages and for scrubbing secrets out of them.
 *
 * @since 0.2.0
 * @category models
 */
export interface CallContext {
  readonly provider: string
  readonly model?: string | undefined
  /** Secrets that must never appear in an error message (keys, tokens). */
  readonly secrets?: ReadonlyArray<Redacted.Redacted> | undefined
  /**
   * The request field a 404 with a JSON error body points at: `"model"` where such a 404
   * can only mean an unknown model (Ollama's `/api/chat`).
   */
  readonly notFoundField?: string | undefined
  /**
   * A 200 answer goes to its decoder first, and is read as an error object (`{"error": …}`)
   * only when the decoder refuses it: for HTTP agents, whose answers may carry an `error`
   * field of their own. Providers' answers are checked for an error object first.
   */
  readonly answerFirst?: boolean | undefined
}

const MAX_MESSAGE = 500
/** A request field's name as the server gave it (`param`): a path, never a paragraph. */
const MAX_FIELD = 120

/**
 * Replaces the value of every secret (4 characters or more) in `text` by `<redacted>`.
 *
 * @since 0.2.0
 * @category utils
 */
export const scrub = (text: string, secrets: ReadonlyArray<Redacted.Redacted> | undefined): string => {
  if (secrets === undefined) return text
  let out = text
  for (const secret of secrets) {
    const value = Redacted.value(secret)
    if (typeof value === "string" && value.length >= 4) out = out.split(value).join("<redacted>")
  }
  return out
}

/**
 * The length of the longest secret (of 4 characters or more): how far past a cut a text must
 * reach for {@link scrubbedHead} to see whole every secret that starts before the cut.
 *
 * @since 0.3.0
 * @category utils
 */
export const longestSecret = (secrets: ReadonlyArray<Redacted.Redacted> | undefined): number => {
  let longest = 0
  for (const secret of secrets ?? []) {
    const value = Redacted.value(secret)
    if (typeof value === "string" && value.length >= 4 && value.length > longest) longest = value.length
  }
  return longest
}

/**
 * The first `max` characters of `text` with every secret that starts among them replaced
 * whole by `<redacted>`: cutting first and scrubbing after would leave the start of a secret
 * that straddles the cut. `text` should reach {@link longestSecret} characters past `max`.
 *
 * @since 0.3.0
 * @category utils
 */
export const scrubbedHead = (
  text: string,
  max: number,
  secrets: ReadonlyArray<Redacted.Redacted> | undefined
): string => {
  const values: Array<string> = []
  for (const secret of secrets ?? []) {
    const value = Redacted.value(secret)
    if (typeof value === "string" && value.length >= 4) values.push(value)
  }
  if (values.length === 0) return text.slice(0, max)
  let out = ""
  let i = 0
  while (i < max && i < text.length) {
    const found = values.find((value) => text.startsWith(value, i))
    if (found === undefined) {
      out += text[i]
      i += 1
    } else {
      out += "<redacted>"
      i += found.length
    }
  }
  return out
}

const truncate = (text: string, max = MAX_MESSAGE): string => (text.length > max ? `${text.slice(0, max)}…` : text)

/**
 * A message of the other side's, as errors carry it: scrubbed of `ctx`'s secrets, then
 * truncated (so a secret cut in two by the truncation leaks no part of it).
 *
 * @since 0.2.0
 * @category utils
 */
export const clean = (text: string, ctx: CallContext): string => truncate(scrub(text, ctx.secrets))

/**
 * The request field an error names (the body's `param`), as errors carry it: scrubbed of
 * `ctx`'s secrets, then truncated, as {@link clean} does a message.
 *
 * @since 0.3.0
 * @category utils
 */
export const cleanField = (field: string, ctx: CallContext): string => truncate(scrub(field, ctx.secrets), MAX_FIELD)

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

const str = (u: unknown): string | undefined => (typeof u === "string" && u.length > 0 ? u : undefined)
const num = (u: unknown): number | undefined => (typeof u === "number" && Number.isFinite(u) ? u : undefined)

/** A delay past what a number holds (`9` four hundred times) is a very long wait, not an infinite one. */
const delay = (millis: number): Duration.Duration =>
  Duration.millis(Math.min(Math.round(millis), Number.MAX_SAFE_INTEGER))

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
 */
const NOT_IMPLEMENTED = 501

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

const DELAY_SECONDS = /^\d+$/
const MS = /^\d+(?:\.\d+)?$/
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
const MONTH = "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
const TIME = "(\\d\\d):(\\d\\d):(\\d\\d)"
// RFC 9110 5.6.7: IMF-fixdate, then the obsolete RFC 850 and asctime forms, which a recipient must read too.
const IMF_FIXDATE = new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\\d\\d) ${MONTH} (\\d{4}) ${TIME} GMT$`)
const RFC_850 = new RegExp(
  `^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\\d\\d)-${MONTH}-(\\d\\d) ${TIME} GMT$`
)
const ASCTIME = new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ${MONTH} ( \\d|\\d\\d) ${TIME} (\\d{4})$`)

/** The time of a day of the calendar, or `undefined` for one that is not (31 February, 24:00:00). */
const utc = (year: number, month: number, day: number, hour: number, minute: number, second: number) => {
  // A leap second (60) is one past 59; nothing else past 59 is a time.
  if (hour > 23 || minute > 59 || second > 60) return undefined
  const midnight = new Date(Date.UTC(year, month, day))
  return midnight.getUTCFullYear() === year && midnight.getUTCMonth() === month && midnight.getUTCDate() === day
    ? midnight.getTime() + ((hour * 60 + minute) * 60 + second) * 1000
    : undefined
}

/**
 * An HTTP-date (RFC 9110 5.6.7) in any of its three forms, as milliseconds since the epoch; `undefined` for anything
 * else. `Date.parse` took far more: "Mon 1" (as 2001), 31 February (as 3 March), other zones.
 */
const httpDate = (value: string, nowMillis: number): number | undefined => {
  const fix = IMF_FIXDATE.exec(value)
  if (fix !== null) {
    return utc(Number(fix[3]), MONTHS.indexOf(fix[2]!), Number(fix[1]), Number(fix[4]), Number(fix[5]), Number(fix[6]))
  }
  const old = RFC_850.exec(value)
  if (old !== null) {
    // A two-digit year more than 50 years ahead is the most recent past year of those digits.
    const current = new Date(nowMillis).getUTCFullYear()
    let year = current - (current % 100) + Number(old[3])
    if (year > current + 50) year -= 100
    return utc(year, MONTHS.indexOf(old[2]!), Number(old[1]), Number(old[4]), Number(old[5]), Number(old[6]))
  }
  const asc = ASCTIME.exec(value)
  if (asc !== null) {
    return utc(
      Number(asc[6]),
      MONTHS.indexOf(asc[1]!),
      Number(asc[2]!.trim()),
      Number(asc[3]),
      Number(asc[4]),
      Number(asc[5])
    )
  }
  return undefined
}

/**
 * `Retry-After` as a duration: delay-seconds (digits only), or an HTTP-date relative to
 * `nowMillis` (the `Clock`'s time; a date in the past is zero), read strictly as RFC 9110
 * writes them: anything else is ignored. `retry-after-ms` (OpenAI's, milliseconds, a
 * fraction allowed) wins when present; a Google `RetryInfo` detail is the last resort.
 *
 * @since 0.2.0
 * @category utils
 */
export const parseRetryAfter = (
  headers: Readonly<Record<string, string | undefined>>,
  nowMillis: number,
  info?: ErrorInfo
): Duration.Duration | undefined => {
  const ms = firstValue(headers["retry-after-ms"])
  if (ms !== undefined && MS.test(ms)) return delay(Number(ms))
  const value = firstValue(headers["retry-after"])
  if (value !== undefined && value.length > 0) {
    if (DELAY_SECONDS.test(value)) return delay(Number(value) * 1000)
    const date = httpDate(value, nowMillis)
    if (date !== undefined) return Duration.millis(Math.max(0, date - nowMillis))
  }
  return info?.retryDelay
}

// A header sent twice reaches us joined by ", " (undici, node): "120, 120". The first value is the one taken; an
// IMF-fixdate ("Thu, 01 Jan 2026 00:00:30 GMT") and an RFC 850 date hold a comma of their own, after the day's name.
const JOINED = /^(\d+(?:\.\d+)?|[A-Za-z]{3,9}, [^,]*|[^,]*)\s*,/

const firstValue = (header: string | undefined): string | undefined => {
  const value = header?.trim()
  if (value === undefined || !value.includes(",")) return value
  if (/^[A-Za-z]{3,9}, [^,]*$/.test(value)) return value
  return JOINED.exec(value)?.[1]?.trim() ?? value
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

// A code is a token of the provider's vocabulary (`insufficient_quota`, `model_not_supported`): anything else (a
// sentence, a body's worth of text, a secret echoed and scrubbed to `<redacted>`) is no code to branch on.
const CODE = /^[A-Za-z0-9_.:-]{1,64}$/

/** The provider's code of an error, as errors carry it (see `ModelError.code`). */
const codeOf = (info: ErrorInfo, ctx: CallContext): string | undefined => {
  if (info.code === undefined || !CODE.test(info.code)) return undefined
  const code = scrub(info.code, ctx.secrets)
  return code === info.code ? code : undefined
}

/** The request field an error names: what the server does not implement is the model; else the body's. */
const fieldOf = (status: number | undefined, info: ErrorInfo, ctx: CallContext): string | undefined =>
  status === NOT_IMPLEMENTED
    ? "model"
    : info.param !== undefined
      ? cleanField(info.param, ctx)
      : info.code === "model_not_found"
        ? "model"
        : status === 404 && info.message !== undefined
          ? ctx.notFoundField
          : undefined

/** A URL's path as an error writes it: bounded, the API's paths are short. */
const MAX_PATH = 120

// The paths an OpenAI-compatible provider appends to its base URL: one of them right at the root is a base URL without
// its `/v1` (`http://localhost:8000` for vLLM, `https://api.openai.com`), the most common reason of a 404 there.
const rootApiPaths: ReadonlySet<string> = new Set([
  "/chat/completions",
  "/completions",
  "/embeddings",
  "/models",
  "/responses"
])

/**
 * Where a 404 or 405 came from (` for POST http://host:8000/chat/completions`): the method, scheme, host and path
 * only (no query, no userinfo: either may hold a key), the path bounded. A wrong base URL is the usual cause of
 * either, and the server's own message (`Not Found`) does not say which URL it was. Not for an API's own error (a
 * body with a type, code or param: `model_not_found`), which says what was not found, and which a gateway passes
 * on to its clients, who have no use for the upstream's address.
 */
const requestPlace = (
  status: number,
  info: ErrorInfo,
  request: { readonly method: string; readonly url: string } | undefined
) => {
  if (request === undefined || (status !== 404 && status !== 405)) return ""
  if (info.type !== undefined || info.code !== undefined || info.param !== undefined) return ""
  let url: URL
  try {
    url = new URL(request.url)
  } catch {
    return ""
  }
  const path =
    url.pathname.length > MAX_PATH
      ? `${url.pathname.slice(0, MAX_PATH)}… (${url.pathname.length} characters)`
      : url.pathname
  const hint = rootApiPaths.has(url.pathname) ? " (no /v1 before the API's path: does the base URL lack it?)" : ""
  return ` for ${request.method} ${url.origin}${path}${hint}`
}

/**
 * The error of a non-2xx answer, from its status, headers and (the start of) its body, with
 * the body's error code (since 0.3.0, see `ModelError.code`). Given the `request` (since
 * 0.3.0), a 404 or 405 that is not an API's own error (no type, code or param in its body)
 * names its method and URL (scheme, host and path only: no query, no userinfo), with a hint
 * when the path lacks an OpenAI-compatible API's `/v1`.
 *
 * @since 0.2.0
 * @category errors
 */
export const errorFromStatus = (
  status: number,
  headers: Readonly<Record<string, string | undefined>>,
  bodyText: string,
  nowMillis: number,
  ctx: CallContext,
  request?: { readonly method: string; readonly url: string } | undefined
): ModelError => {
  const body = parseJsonOrUndefined(bodyText)
  const info = errorInfo(body)
  const reason = classify(status, info)
  const trimmed = bodyText.trim()
  const detail = info.message ?? (trimmed.length > 0 ? trimmed : undefined)
  const field = fieldOf(status, info, ctx)
  return new ModelError({
    reason,
    message: clean(
      `${ctx.provider} answered HTTP ${status}${requestPlace(status, info, request)}${detail === undefined ? "" : `: ${detail}`}`,
      ctx
    ),
    provider: ctx.provider,
    model: ctx.model,
    status,
    retryAfter: parseRetryAfter(headers, nowMillis, info),
    field: reason === "InvalidRequest" ? field : undefined,
    code: codeOf(info, ctx)
  })
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

/**
 * The error of an error delivered inside a stream (an SSE `error` event, an NDJSON
 * `{"error": ...}` line, a 200 answer that is an error object). `payload` is the parsed
 * JSON, or the raw text when it was not JSON. The provider's own message is kept, and
 * Google's `RetryInfo` as `retryAfter`.
 *
 * @since 0.2.0
 * @category errors
 */
export const errorFromPayload = (
  payload: unknown,
  ctx: CallContext,
  where: "stream" | "answer" = "stream"
): ModelError => {
  const info = typeof payload === "string" ? { message: str(payload.trim()), reasons: [] } : errorInfo(payload)
  const status = info.status !== undefined && info.status >= 400 && info.status < 600 ? info.status : undefined
  const what = where === "stream" ? "stream failed" : "answered with an error"
  const reason = classify(status, info)
  return new ModelError({
    reason,
    message: clean(
      `${ctx.provider} ${what}: ${info.message ?? (where === "stream" ? "error event" : "no message")}`,
      ctx
    ),
    provider: ctx.provider,
    model: ctx.model,
    status,
    retryAfter: info.retryDelay,
    // As the same body of a status error: an unknown model (`model_not_found`) then falls back as it does.
    field: reason === "InvalidRequest" ? fieldOf(status, info, ctx) : undefined,
    code: codeOf(info, ctx)
  })
}

const describeCause = (cause: unknown): string | undefined => {
  const parts: Array<string> = []
  let current: unknown = cause
  for (let depth = 0; depth < 4 && Predicate.isObject(current); depth++) {
    const record = current as Record<string, unknown>
    const message = str(record["message"])
    const code = str(record["code"])
    if (message !== undefined && !parts.includes(message)) parts.push(message)
    if (code !== undefined && !parts.some((p) => p.includes(code))) parts.push(code)
    current = record["cause"]
  }
  return parts.length === 0 ? undefined : parts.join(": ")
}

/**
 * The error of a connection that failed or broke (`Transport`). Only the messages and codes
 * of the low-level cause are kept, never the cause itself (it holds the request).
 *
 * @since 0.2.0
 * @category errors
 */
export const transportError = (what: string, cause: unknown, ctx: CallContext): ModelError => {
  const detail = describeCause(cause)
  return new ModelError({
    reason: "Transport",
    message: clean(`${ctx.provider}: ${what}${detail === undefined ? "" : ` (${detail})`}`, ctx),
    provider: ctx.provider,
    model: ctx.model
  })
}

/**
 * A `Decode` failure found in an answer: `field` names what is wrong (a response field, or
 * `content-type`).
 *
 * @since 0.2.0
 * @category errors
 */
export const malformed = (ctx: CallContext, field: string, detail: string): ModelError =>
  new ModelError({
    reason: "Decode",
    message: clean(`${ctx.provider} sent a malformed response: ${field}: ${detail}`, ctx),
    provider: ctx.provider,
    model: ctx.model,
    field
  })

/**
 * The `Decode` error of a vector (at `field`) whose length is not the `embeddingDimensions`
 * asked for: a server that ignored the option. `undefined` when none was asked for, or it fits.
 *
 * @since 0.3.0
 * @category errors
 */
export const unaskedDimensions = (
  ctx: CallContext,
  field: string,
  length: number,
  dimensions: number | undefined
): ModelError | undefined =>
  dimensions === undefined || length === dimensions
    ? undefined
    : malformed(ctx, field, `${length} dimensions where embeddingDimensions asked for ${dimensions}`)

/**
 * The `Decode` error of an embeddings answer whose vectors are not all of one length, or
 * empty, or hold a value that is not a finite number (what uses them compares them dimension
 * by dimension; base64 float32 carries NaN and Infinity, and JSON's `1e400` reads as
 * Infinity); `undefined` when they are sound. With `batchSize`, the vectors of several answers
 * (batches of that many texts, in order) are named by their index in the answer that had
 * them, the batch and the input text's index in the message.
 *
 * @since 0.3.0
 * @category errors
 */
export const unevenVectors = (
  vectors: ReadonlyArray<ReadonlyArray<number>>,
  ctx: CallContext,
  field: string,
  batchSize?: number | undefined
): ModelError | undefined => {
  const size = vectors[0]?.length
  // Named where it sits on the wire: its index in the answer that had it, and which batch that was.
  const bad = (i: number, detail: string) => {
    if (batchSize === undefined || vectors.length <= batchSize) return malformed(ctx, `${field}[${i}]`, detail)
    const batch = Math.floor(i / batchSize)
    return malformed(
      ctx,
      `${field}[${i - batch * batchSize}]`,
      `${detail} (in the answer to batch ${batch + 1}, of ${batchSize} texts each: input text ${i})`
    )
  }
  for (let i = 0; i < vectors.length; i++) {
    const length = vectors[i]!.length
    if (length === 0) return bad(i, "an empty vector")
    if (length !== size) return bad(i, `${length} dimensions where the first has ${size}`)
    for (const value of vectors[i]!) {
      if (!Number.isFinite(value)) return bad(i, "a value that is not a finite number")
    }
  }
  return undefined
}

/**
 * The failure of a stream whose body ended cleanly before its final event (`Transport`).
 *
 * @since 0.2.0
 * @category errors
 */
export const endedEarly = (ctx: CallContext): ModelError =>
  new ModelError({
    reason: "Transport",
    message: `${ctx.provider}: the stream ended before its final event`,
    provider: ctx.provider,
    model: ctx.model
  })

/**
 * A response body, a stream, or one event of it passed its bound (`TooLarge`, `field`
 * `"response"`: the answer was too large, not the request, so another provider may take the
 * call). `option` names the option that sets the bound.
 *
 * @since 0.2.0
 * @category errors
 */
export const tooLarge = (ctx: CallContext, what: string, limit: number, option: string): ModelError =>
  new ModelError({
    reason: "TooLarge",
    field: "response",
    message: `${ctx.provider}: ${what} exceeded ${limit} bytes (${option})`,
    provider: ctx.provider,
    model: ctx.model
  })

/**
 * A whole call passed its `timeout` (limit `request`: one attempt).
 *
 * @since 0.2.0
 * @category errors
 */
export const requestTimeout = (ctx: CallContext, timeout: Duration.Duration): TimeoutError =>
  new TimeoutError({ limit: "request", timeout, provider: ctx.provider })

/**
 * A stream waited longer than its `streamIdleTimeout` for its next event (limit `idle`),
 * with the text it had already delivered.
 *
 * @since 0.2.0
 * @category errors
 */
export const idleTimeout = (ctx: CallContext, timeout: Duration.Duration, partialText: string): TimeoutError =>
  new TimeoutError({ limit: "idle", timeout, provider: ctx.provider, partialText })
