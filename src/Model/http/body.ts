/**
 * Bounded response bodies: a JSON answer is read up to `maxResponseBytes` and no further
 * (an endless body fails `TooLarge` without memory growing), a stream counts its bytes, an
 * error body is read only up to its first 64 KiB. Media types are read from `content-type`.
 *
 * @since 0.2.0
 */
import { Duration, Effect, Stream } from "effect"
import type { HttpClientResponse } from "effect/http"
import type { ModelError } from "../../AiError.js"
import { type CallContext, tooLarge, transportError } from "./errors.js"

/**
 * How much of an error body is read: enough for any provider's error object, little enough
 * that an HTML error page of a proxy costs nothing.
 *
 * @since 0.2.0
 * @category constants
 */
export const errorBodyBytes = 64 * 1024

/**
 * The media type of a response (`application/json`), lowercase, without parameters;
 * `undefined` when there is no `content-type`.
 *
 * @since 0.2.0
 * @category utils
 */
export const mediaType = (headers: Readonly<Record<string, string | undefined>>): string | undefined => {
  const value = headers["content-type"]
  if (value === undefined) return undefined
  const type = value.split(";")[0]!.trim().toLowerCase()
  return type.length === 0 ? undefined : type
}

/**
 * Is this media type JSON (`application/json`, `application/*+json`, `text/json`)?
 *
 * @since 0.2.0
 * @category utils
 */
export const isJsonType = (type: string): boolean =>
  type === "application/json" || type === "text/json" || (type.startsWith("application/") && type.endsWith("+json"))

/**
 * The body of a response as bytes; a body that breaks fails with `Transport`.
 *
 * @since 0.2.0
 * @category streaming
 */
export const bodyBytes = (
  response: HttpClientResponse.HttpClientResponse,
  ctx: CallContext
): Stream.Stream<Uint8Array, ModelError> =>
  Stream.mapError(response.stream, (error) => transportError("reading the response body failed", error.cause, ctx))

/**
 * Fails a byte stream with `TooLarge` as soon as its total passes `limit`; the bytes past the
 * limit are never handed on.
 *
 * @since 0.2.0
 * @category streaming
 */
export const boundBytes = (
  bytes: Stream.Stream<Uint8Array, ModelError>,
  limit: number,
  what: string,
  option: string,
  ctx: CallContext
): Stream.Stream<Uint8Array, ModelError> =>
  Stream.suspend(() => {
    let total = 0
    return Stream.mapArrayEffect(bytes, (chunks) => {
      for (const chunk of chunks) total += chunk.byteLength
      return total > limit ? Effect.fail(tooLarge(ctx, what, limit, option)) : Effect.succeed(chunks)
    })
  })

const declaredLength = (response: HttpClientResponse.HttpClientResponse): number | undefined => {
  const value = response.headers["content-length"]
  if (value === undefined || !/^\s*\d+\s*$/.test(value)) return undefined
  return Number(value)
}

/** A body sent as is: a compressed one (which `fetch` inflates) can be larger than its declared length. */
const isIdentity = (encoding: string | undefined): boolean =>
  encoding === undefined || encoding.trim() === "" || encoding.trim().toLowerCase() === "identity"

const decodeUtf8 = (chunks: ReadonlyArray<Uint8Array>, total: number): string => {
  const all = new Uint8Array(total)
  let offset = 0
  for (const chunk of chunks) {
    all.set(chunk.subarray(0, Math.min(chunk.byteLength, total - offset)), offset)
    offset += chunk.byteLength
    if (offset >= total) break
  }
  return new TextDecoder().decode(all)
}

/**
 * Reads a whole body as text, failing with `TooLarge` when it declares or reaches more than
 * `limit` bytes (reading stops there: the rest is never buffered).
 *
 * @since 0.2.0
 * @category reading
 */
export const readText = (
  response: HttpClientResponse.HttpClientResponse,
  limit: number,
  ctx: CallContext
): Effect.Effect<string, ModelError> => {
  const declared = declaredLength(response)
  if (declared !== undefined && declared > limit) {
    return Effect.fail(tooLarge(ctx, "the response body", limit, "maxResponseBytes"))
  }
  // A declared length of a body sent as is bounds it: the client fails a body that goes past it.
  // One read of the whole body then costs a fraction of collecting it through a bounded stream.
  if (declared !== undefined && isIdentity(response.headers["content-encoding"])) {
    return Effect.mapError(response.text, (error) =>
      transportError("reading the response body failed", error.cause, ctx)
    )
  }
  return Effect.map(
    Stream.runCollect(boundBytes(bodyBytes(response, ctx), limit, "the response body", "maxResponseBytes", ctx)),
    (chunks) =>
      decodeUtf8(
        chunks,
        chunks.reduce((n, c) => n + c.byteLength, 0)
      )
  )
}

/**
 * How long an error body (or an unexpected answer's) is read: its status and headers
 * already say what failed; a body that stalls after them must not turn, say, a 401 into a
 * request timeout.
 *
 * @since 0.3.0
 * @category reading
 */
export const errorBodyTimeout: Duration.Duration = Duration.seconds(2)

/**
 * Reads at most the first `limit` bytes of a body as text (for error bodies and for
 * describing an unexpected answer), for at most {@link errorBodyTimeout}; a body that
 * breaks or stalls gives what was read.
 *
 * @since 0.2.0
 * @category reading
 */
export const readPrefix = (
  response: HttpClientResponse.HttpClientResponse,
  ctx: CallContext,
  limit: number = errorBodyBytes
): Effect.Effect<string> =>
  Effect.suspend(() => {
    const chunks: Array<Uint8Array> = []
    let total = 0
    return bodyBytes(response, ctx).pipe(
      Stream.takeWhile((chunk) => {
        if (total >= limit) return false
        chunks.push(chunk)
        total += chunk.byteLength
        return true
      }),
      Stream.runDrain,
      Effect.ignore,
      Effect.timeoutOption(errorBodyTimeout),
      Effect.map(() => decodeUtf8(chunks, Math.min(total, limit)))
    )
  })
