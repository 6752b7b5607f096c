/**
 * HTTP plumbing shared by the remote providers: status -> reason mapping, provider error
 * bodies, `Retry-After`, JSON decoding that names the bad field, SSE and NDJSON framing,
 * and the assembly of `StreamPart`s with a guaranteed single `Finish` (or a typed failure).
 *
 * Nothing here ever puts a request (headers, body) into an error: only the provider's
 * own message, scrubbed of the secrets the caller names.
 *
 * @since 0.1.0
 */
import * as Sse from "@effect/experimental/Sse"
import * as Headers from "@effect/platform/Headers"
import type * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import type * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import {
  Chunk,
  Clock,
  Config,
  Duration,
  Effect,
  Either,
  Encoding,
  Option,
  type ParseResult,
  Predicate,
  Redacted,
  Schema,
  Stream
} from "effect"
import { ModelError, type Reason } from "../AiError.js"
import * as Model from "../Model.js"

/**
 * Who is calling, for error messages and for scrubbing secrets out of them.
 *
 * @since 0.1.0
 * @category models
 */
export interface CallContext {
  readonly provider: string
  readonly model?: string | undefined
  /** Secrets that must never appear in an error message (keys, tokens). */
  readonly secrets?: ReadonlyArray<Redacted.Redacted> | undefined
  /** The request field a 404 points at (`"model"` where a 404 can only mean an unknown model). */
  readonly notFoundField?: string | undefined
}

/**
 * Header names whose values are replaced by `<redacted>` in HTTP client spans, on top of
 * `@effect/platform`'s defaults (authorization, cookie, set-cookie, x-api-key).
 *
 * @since 0.1.0
 * @category constants
 */
export const secretHeaderNames: ReadonlyArray<string> = ["x-goog-api-key", "api-key", "x-ibm-api-key"]

/**
 * Runs an HTTP effect with our secret header names added to the redaction list, so the
 * client span's `http.request.header.*` attributes never carry a key.
 *
 * @since 0.1.0
 * @category utils
 */
export const withRedactedHeaders = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.locallyWith(effect, Headers.currentRedactedNames, (names) => [...names, ...secretHeaderNames])

const MAX_MESSAGE = 500

/**
 * Replaces every secret's value in `text`.
 *
 * @since 0.1.0
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

const truncate = (text: string): string => (text.length > MAX_MESSAGE ? `${text.slice(0, MAX_MESSAGE)}…` : text)

/**
 * What a provider's error body says, whatever its shape (OpenAI, Gemini, Anthropic, Ollama,
 * watsonx, IBM IAM, vLLM).
 *
 * @since 0.1.0
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

const parseGoogleDuration = (u: unknown): Duration.Duration | undefined => {
  if (typeof u !== "string") return undefined
  const match = /^(\d+(?:\.\d+)?)s$/.exec(u.trim())
  return match?.[1] === undefined ? undefined : Duration.millis(Math.round(Number(match[1]) * 1000))
}

/**
 * Reads the error fields of a parsed JSON error body.
 *
 * @since 0.1.0
 * @category utils
 */
export const errorInfo = (body: unknown): ErrorInfo => {
  if (!Predicate.isRecord(body)) return { reasons: [] }
  const nested = body["error"]
  if (typeof nested === "string") return { message: nested, reasons: [] }
  if (Predicate.isRecord(nested)) {
    const reasons: Array<string> = []
    let retryDelay: Duration.Duration | undefined
    const details = nested["details"]
    if (Array.isArray(details)) {
      for (const detail of details) {
        if (!Predicate.isRecord(detail)) continue
        const reason = str(detail["reason"])
        if (reason !== undefined) reasons.push(reason)
        retryDelay = retryDelay ?? parseGoogleDuration(detail["retryDelay"])
      }
    }
    const code = nested["code"]
    return {
      message: str(nested["message"]),
      type: str(nested["type"]) ?? str(nested["status"]),
      code: str(code),
      status: num(code) ?? num(body["status_code"]),
      param: str(nested["param"]),
      reasons,
      retryDelay
    }
  }
  const errors = body["errors"]
  if (Array.isArray(errors) && Predicate.isRecord(errors[0])) {
    const first = errors[0]
    return {
      message: str(first["message"]),
      code: str(first["code"]),
      status: num(body["status_code"]),
      reasons: []
    }
  }
  return {
    message: str(body["message"]) ?? str(body["errorMessage"]) ?? str(body["detail"]),
    type: str(body["type"]),
    code: str(body["code"]) ?? str(body["errorCode"]),
    status: num(body["code"]) ?? num(body["status_code"]),
    param: str(body["param"]),
    reasons: []
  }
}

const typeReasons: Record<string, Reason> = {
  rate_limit_error: "RateLimited",
  rate_limit_exceeded: "RateLimited",
  RESOURCE_EXHAUSTED: "RateLimited",
  overloaded_error: "Overloaded",
  server_error: "Overloaded",
  api_error: "Overloaded",
  UNAVAILABLE: "Overloaded",
  INTERNAL: "Overloaded",
  invalid_request_error: "InvalidRequest",
  INVALID_ARGUMENT: "InvalidRequest",
  NOT_FOUND: "InvalidRequest",
  FAILED_PRECONDITION: "InvalidRequest",
  authentication_error: "Unauthorized",
  permission_error: "Unauthorized",
  UNAUTHENTICATED: "Unauthorized",
  PERMISSION_DENIED: "Unauthorized",
  DEADLINE_EXCEEDED: "Timeout",
  authentication_token_expired: "Unauthorized"
}

/**
 * The reason for an HTTP status, refined by the structured fields of the error body
 * (codes and types, never message text).
 *
 * @since 0.1.0
 * @category utils
 */
export const classify = (status: number | undefined, info: ErrorInfo): Reason => {
  const code = info.code
  if (code === "insufficient_quota" || info.type === "insufficient_quota") return "Unauthorized"
  if (info.reasons.includes("API_KEY_INVALID") || info.reasons.includes("API_KEY_SERVICE_BLOCKED")) {
    return "Unauthorized"
  }
  if (code === "content_filter" || code === "content_policy_violation") return "ContentFilter"
  if (status === 529 || info.type === "overloaded_error") return "Overloaded"
  if (status !== undefined && status > 0) {
    if (status === 429) return "RateLimited"
    if (status === 401 || status === 402 || status === 403) return "Unauthorized"
    if (status === 408 || status === 504) return "Timeout"
    if (status >= 500) return "Overloaded"
    if (status >= 400) return "InvalidRequest"
    return "Unknown"
  }
  const byType = (info.type !== undefined ? typeReasons[info.type] : undefined) ?? typeReasons[code ?? ""]
  return byType ?? "Unknown"
}

/**
 * `Retry-After` as a duration: delay-seconds, or an HTTP-date relative to `nowMillis`
 * (the Clock's time). `retry-after-ms` (OpenAI) wins when present.
 *
 * @since 0.1.0
 * @category utils
 */
export const parseRetryAfter = (
  headers: Readonly<Record<string, string | undefined>>,
  nowMillis: number,
  info?: ErrorInfo
): Duration.Duration | undefined => {
  const ms = headers["retry-after-ms"]
  if (ms !== undefined && /^\s*\d+(\.\d+)?\s*$/.test(ms)) return Duration.millis(Math.round(Number(ms)))
  const value = headers["retry-after"]
  if (value !== undefined) {
    const trimmed = value.trim()
    if (/^\d+(\.\d+)?$/.test(trimmed)) return Duration.millis(Math.round(Number(trimmed) * 1000))
    const date = Date.parse(trimmed)
    if (!Number.isNaN(date)) return Duration.millis(Math.max(0, date - nowMillis))
  }
  return info?.retryDelay
}

const parseJsonSafe = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/**
 * Builds the error of a non-2xx answer.
 *
 * @since 0.1.0
 * @category errors
 */
export const errorFromStatus = (
  status: number,
  headers: Readonly<Record<string, string | undefined>>,
  bodyText: string,
  nowMillis: number,
  ctx: CallContext
): ModelError => {
  const info = errorInfo(parseJsonSafe(bodyText))
  const reason = classify(status, info)
  const detail = info.message ?? (bodyText.trim().length > 0 ? bodyText.trim() : undefined)
  const field =
    info.param ??
    (info.code === "model_not_found" ? "model" : status === 404 ? ctx.notFoundField : undefined) ??
    undefined
  return new ModelError({
    reason,
    message: scrub(truncate(`${ctx.provider} answered HTTP ${status}${detail ? `: ${detail}` : ""}`), ctx.secrets),
    provider: ctx.provider,
    model: ctx.model,
    status,
    retryAfter: parseRetryAfter(headers, nowMillis, info),
    field: reason === "InvalidRequest" ? field : undefined
  })
}

/**
 * Builds the error of an error object delivered inside a stream (an SSE `error` event, an
 * NDJSON `{"error": ...}` line).
 *
 * @since 0.1.0
 * @category errors
 */
export const errorFromPayload = (payload: unknown, ctx: CallContext): ModelError => {
  const info = errorInfo(payload)
  const status = info.status !== undefined && info.status >= 400 && info.status < 600 ? info.status : undefined
  return new ModelError({
    reason: classify(status, info),
    message: scrub(truncate(`${ctx.provider} stream failed: ${info.message ?? "error event"}`), ctx.secrets),
    provider: ctx.provider,
    model: ctx.model,
    status
  })
}

/**
 * The error of a connection that failed or broke.
 *
 * @since 0.1.0
 * @category errors
 */
export const transportError = (what: string, cause: unknown, ctx: CallContext): ModelError => {
  const detail = describeCause(cause)
  return new ModelError({
    reason: "Transport",
    message: scrub(truncate(`${ctx.provider}: ${what}${detail ? ` (${detail})` : ""}`), ctx.secrets),
    provider: ctx.provider,
    model: ctx.model
  })
}

const describeCause = (cause: unknown): string | undefined => {
  const parts: Array<string> = []
  let current: unknown = cause
  for (let depth = 0; depth < 3 && Predicate.isRecord(current); depth++) {
    const message = str(current["message"])
    const code = str(current["code"])
    if (message !== undefined && !parts.includes(message)) parts.push(message)
    if (code !== undefined && !parts.some((p) => p.includes(code))) parts.push(code)
    current = current["cause"]
  }
  return parts.length === 0 ? undefined : parts.join(": ")
}

/**
 * Maps a request that never got an answer.
 *
 * @since 0.1.0
 * @category errors
 */
export const fromRequestError = (error: HttpClientError.RequestError, ctx: CallContext): ModelError =>
  error.reason === "Transport"
    ? transportError("connection failed", error.cause, ctx)
    : new ModelError({
        reason: "InvalidRequest",
        message: scrub(`${ctx.provider}: could not build the request (${error.reason})`, ctx.secrets),
        provider: ctx.provider,
        model: ctx.model
      })

/**
 * A schema failure on an answer, as `Decode` naming the field. With `quiet`, the message
 * names only the field (for bodies that carry secrets, such as IAM tokens).
 *
 * @since 0.1.0
 * @category errors
 */
export const decodeFailure = (
  error: ParseResult.ParseError,
  ctx: CallContext,
  options?: { readonly quiet?: boolean }
): ModelError => {
  const decoded = Model.decodeError(error, ctx.provider)
  const field = decoded.field ?? "(root)"
  const message =
    options?.quiet === true
      ? `${ctx.provider} sent a malformed response: ${field}`
      : `${ctx.provider} sent a ${decoded.message}`
  return new ModelError({
    reason: "Decode",
    message: scrub(truncate(message), ctx.secrets),
    provider: ctx.provider,
    model: ctx.model,
    field
  })
}

/**
 * A JSON decoder for a response schema whose failures are `Decode` errors naming the field.
 *
 * @since 0.1.0
 * @category utils
 */
export const jsonDecoder = <A, I>(
  schema: Schema.Schema<A, I>,
  options?: { readonly quiet?: boolean }
): ((text: string, ctx: CallContext) => Effect.Effect<A, ModelError>) => {
  const decode = Schema.decodeUnknownEither(Schema.parseJson(schema))
  return (text, ctx) => {
    const result = decode(text)
    return Either.isRight(result) ? Effect.succeed(result.right) : Effect.fail(decodeFailure(result.left, ctx, options))
  }
}

/**
 * A decoder for an already-parsed JSON value.
 *
 * @since 0.1.0
 * @category utils
 */
export const valueDecoder = <A, I>(
  schema: Schema.Schema<A, I>
): ((value: unknown, ctx: CallContext) => Effect.Effect<A, ModelError>) => {
  const decode = Schema.decodeUnknownEither(schema)
  return (value, ctx) => {
    const result = decode(value)
    return Either.isRight(result) ? Effect.succeed(result.right) : Effect.fail(decodeFailure(result.left, ctx))
  }
}

/**
 * Parses a JSON text, failing with `Decode` at the root.
 *
 * @since 0.1.0
 * @category utils
 */
export const parseJson = (text: string, ctx: CallContext): Effect.Effect<unknown, ModelError> =>
  Effect.try({
    try: () => JSON.parse(text) as unknown,
    catch: () =>
      new ModelError({
        reason: "Decode",
        message: scrub(truncate(`${ctx.provider} sent invalid JSON: ${text}`), ctx.secrets),
        provider: ctx.provider,
        model: ctx.model,
        field: "(root)"
      })
  })

const statusError = (
  response: HttpClientResponse.HttpClientResponse,
  ctx: CallContext
): Effect.Effect<never, ModelError> =>
  Effect.flatMap(
    Effect.zip(
      Effect.orElseSucceed(response.text, () => ""),
      Clock.currentTimeMillis
    ),
    ([text, now]) => Effect.fail(errorFromStatus(response.status, response.headers, text, now, ctx))
  )

const isOk = (status: number): boolean => status >= 200 && status < 300

/**
 * Sends a request and returns the body text of a 2xx answer; any other status becomes its
 * typed error, any connection failure `Transport`.
 *
 * @since 0.1.0
 * @category utils
 */
export const executeText = (
  client: HttpClient.HttpClient,
  request: HttpClientRequest.HttpClientRequest,
  ctx: CallContext
): Effect.Effect<string, ModelError> =>
  client.execute(request).pipe(
    Effect.flatMap((response) =>
      isOk(response.status)
        ? Effect.catchTag(response.text, "ResponseError", (error) =>
            Effect.fail(transportError("reading the response body failed", error.cause, ctx))
          )
        : statusError(response, ctx)
    ),
    Effect.catchTags({
      RequestError: (error) => Effect.fail(fromRequestError(error, ctx)),
      ResponseError: (error) => Effect.fail(transportError("reading the response failed", error.cause, ctx))
    }),
    withRedactedHeaders
  )

/**
 * Sends a request and decodes the JSON answer.
 *
 * @since 0.1.0
 * @category utils
 */
export const executeJson = <A>(
  client: HttpClient.HttpClient,
  request: HttpClientRequest.HttpClientRequest,
  decode: (text: string, ctx: CallContext) => Effect.Effect<A, ModelError>,
  ctx: CallContext
): Effect.Effect<A, ModelError> => Effect.flatMap(executeText(client, request, ctx), (text) => decode(text, ctx))

/**
 * Sends a request and, once a 2xx answer's headers are in, returns its body as a stream. A
 * body that breaks fails with `Transport`; the connection is released when the stream ends
 * or is interrupted. Status errors fail the effect, before any stream exists (so a caller
 * can retry them without ever replaying delivered text).
 *
 * @since 0.1.0
 * @category utils
 */
export const openStream = (
  client: HttpClient.HttpClient,
  request: HttpClientRequest.HttpClientRequest,
  ctx: CallContext
): Effect.Effect<Stream.Stream<Uint8Array, ModelError>, ModelError> =>
  client.execute(request).pipe(
    Effect.flatMap((response) =>
      isOk(response.status)
        ? Effect.succeed(
            Stream.catchTag(response.stream, "ResponseError", (error) =>
              Stream.fail(transportError("the stream broke", error.cause, ctx))
            )
          )
        : statusError(response, ctx)
    ),
    Effect.catchTags({
      RequestError: (error) => Effect.fail(fromRequestError(error, ctx)),
      ResponseError: (error) => Effect.fail(transportError("reading the response failed", error.cause, ctx))
    }),
    withRedactedHeaders
  )

/**
 * {@link openStream} as one stream.
 *
 * @since 0.1.0
 * @category utils
 */
export const executeStream = (
  client: HttpClient.HttpClient,
  request: HttpClientRequest.HttpClientRequest,
  ctx: CallContext
): Stream.Stream<Uint8Array, ModelError> => Stream.unwrap(openStream(client, request, ctx))

const DEFAULT_MAX_EVENT = 8 * 1024 * 1024

/**
 * Server-sent events of a byte stream, parsed by `@effect/experimental`'s `Sse` parser.
 * Text is decoded with a streaming decoder (multi-byte characters split across reads stay
 * whole), and a CR that ends one read is held back until the next: the parser would
 * otherwise read a CRLF split across two reads as two line ends (an empty line), which
 * dispatches the event early and drops its `event:` name. `retry:` fields are ignored (we
 * never reconnect a model stream).
 *
 * @since 0.1.0
 * @category streaming
 */
export const sseEvents = (
  bytes: Stream.Stream<Uint8Array, ModelError>,
  ctx: CallContext,
  options?: { readonly maxEventSize?: number | undefined }
): Stream.Stream<Sse.Event, ModelError> =>
  Stream.suspend(() => {
    let events: Array<Sse.Event> = []
    const parser = Sse.makeParser(
      (event) => {
        if (event._tag === "Event") events.push(event)
      },
      { maxEventSize: options?.maxEventSize ?? DEFAULT_MAX_EVENT }
    )
    let heldCr = false
    const feed = (text: string): Effect.Effect<Chunk.Chunk<Sse.Event>, ModelError> => {
      const error = parser.feed(text)
      const out = events
      events = []
      return error === undefined
        ? Effect.succeed(Chunk.unsafeFromArray(out))
        : Effect.fail(
            new ModelError({
              reason: "Decode",
              message: `${ctx.provider}: ${error.message}`,
              provider: ctx.provider,
              model: ctx.model
            })
          )
    }
    const body = bytes.pipe(
      Stream.decodeText(),
      Stream.mapChunksEffect((chunk) => {
        let text = Chunk.join(chunk, "")
        if (heldCr) text = `\r${text}`
        heldCr = text.endsWith("\r")
        if (heldCr) text = text.slice(0, -1)
        return text.length === 0 ? Effect.succeed(Chunk.empty<Sse.Event>()) : feed(text)
      })
    )
    const flush = Stream.suspend(() => (heldCr ? Stream.flattenChunks(Stream.fromEffect(feed("\r"))) : Stream.empty))
    return Stream.concat(body, flush)
  })

/**
 * Non-empty lines of a newline-delimited JSON byte stream (lines split across reads are
 * joined; `\n`, `\r\n` and `\r` all end a line).
 *
 * @since 0.1.0
 * @category streaming
 */
export const ndjsonLines = (bytes: Stream.Stream<Uint8Array, ModelError>): Stream.Stream<string, ModelError> =>
  bytes.pipe(
    Stream.decodeText(),
    Stream.splitLines,
    Stream.filter((line) => line.trim().length > 0)
  )

/**
 * Turns provider chunks into `StreamPart`s: `step` maps a chunk to parts (and may fail with
 * an error delivered mid-stream, after the text before it); the stream stops at the first
 * `Finish`. When the chunks end without one, `onEnd` decides: a `Finish` from what was
 * seen, or the failure of a stream that broke off.
 *
 * @since 0.1.0
 * @category streaming
 */
export const assemble = <C>(
  chunks: Stream.Stream<C, ModelError>,
  step: (chunk: C) => Effect.Effect<ReadonlyArray<Model.StreamPart>, ModelError>,
  onEnd: () => Effect.Effect<ReadonlyArray<Model.StreamPart>, ModelError>
): Stream.Stream<Model.StreamPart, ModelError> =>
  chunks.pipe(
    Stream.mapConcatEffect(step),
    Stream.concat(Stream.flattenIterables(Stream.fromEffect(Effect.suspend(onEnd)))),
    Stream.takeUntil((part) => part._tag === "Finish")
  )

/**
 * The failure of a stream that ended without its final event.
 *
 * @since 0.1.0
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
 * A `Decode` failure found by checking a decoded answer (counts, indices).
 *
 * @since 0.1.0
 * @category errors
 */
export const malformed = (ctx: CallContext, field: string, detail: string): ModelError =>
  new ModelError({
    reason: "Decode",
    message: `${ctx.provider} sent a malformed response: ${field}: ${detail}`,
    provider: ctx.provider,
    model: ctx.model,
    field
  })

/**
 * Embedding values sent as base64 little-endian float32 (what OpenAI sends when
 * `encoding_format` is not `float`).
 *
 * @since 0.1.0
 * @category utils
 */
export const decodeBase64Floats = (text: string): Option.Option<ReadonlyArray<number>> => {
  const bytes = Encoding.decodeBase64(text)
  if (Either.isLeft(bytes) || bytes.right.byteLength % 4 !== 0) return Option.none()
  const view = new DataView(bytes.right.buffer, bytes.right.byteOffset, bytes.right.byteLength)
  const out: Array<number> = new Array(bytes.right.byteLength / 4)
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true)
  return Option.some(out)
}

/**
 * An optional secret read from the environment: absent is `undefined`, present is
 * `Redacted`.
 *
 * @since 0.1.0
 * @category config
 */
export const optionalRedacted = (name: string): Config.Config<Redacted.Redacted | undefined> =>
  Config.redacted(name).pipe(Config.option, Config.map(Option.getOrUndefined))

/**
 * An optional string read from the environment.
 *
 * @since 0.1.0
 * @category config
 */
export const optionalString = (name: string): Config.Config<string | undefined> =>
  Config.string(name).pipe(Config.option, Config.map(Option.getOrUndefined))

/**
 * Joins a base URL and a path with exactly one slash.
 *
 * @since 0.1.0
 * @category utils
 */
export const joinUrl = (base: string, path: string): string => `${base.replace(/\/+$/, "")}/${path.replace(/^\/+/, "")}`

/**
 * Input token estimate of a request's conversation (for providers that report none).
 *
 * @since 0.1.0
 * @category utils
 */
export const estimateInput = (messages: ReadonlyArray<Model.Message>): number =>
  messages.reduce((n, m) => n + Math.ceil(m.content.length / 4), 0)
