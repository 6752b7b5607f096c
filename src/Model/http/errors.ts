/**
 * How HTTP providers fail: the error of a status (its reason decided from the status and the
 * structured fields of the provider's error body, `errorBody.ts`, never its message text; its
 * `Retry-After`, `retryAfter.ts`), errors sent inside a stream, broken connections, malformed
 * answers, and bodies too large.
 *
 * Nothing here ever puts a request (URL query, headers, body) into an error: only the
 * provider's own message, truncated and scrubbed of the secrets named in the
 * {@link CallContext}.
 *
 * @since 0.2.0
 */
import { type Duration, Predicate } from "effect"
import { ModelError, TimeoutError, withUpstreamWords } from "../../AiError.js"
import { classify, type ErrorInfo, errorInfo, NOT_IMPLEMENTED, parseJsonOrUndefined, str } from "./errorBody.js"
import { type CallContext, clean, cleanField, scrub } from "./redact.js"
import { parseRetryAfter } from "./retryAfter.js"

export { classify, type ErrorInfo, errorInfo, isErrorPayload, parseJsonOrUndefined } from "./errorBody.js"
export { type CallContext, clean, cleanField, longestSecret, scrub, scrubbedHead } from "./redact.js"
export { parseRetryAfter } from "./retryAfter.js"

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
  const error = new ModelError({
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
  // A body that is no API error (a proxy's page, plain text): its words are the operator's, not the client's.
  return info.message === undefined ? withUpstreamWords(error) : error
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
  const error = new ModelError({
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
  // Without a status, the gateway would take its reason (a 429's, a request's) for the library's own.
  return status === undefined || typeof payload === "string" ? withUpstreamWords(error) : error
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
