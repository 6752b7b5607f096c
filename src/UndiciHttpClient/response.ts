/**
 * The `HttpClientResponse` over an exchange: its head, and its body read whole (kept for every
 * later reader) or as a stream (read once).
 *
 * @internal
 */
import { Array as Arr, Cause, Effect, Inspectable, Option, Pipeable, type Schema, Scope, Stream } from "effect"
import * as Channel from "effect/Channel"
import {
  Cookies,
  Headers,
  HttpClientError,
  type HttpClientRequest,
  HttpClientResponse,
  HttpIncomingMessage,
  UrlParams
} from "effect/http"
import type * as Pull from "effect/Pull"
import { awaitMove, type Exchange, released } from "./exchange.js"

const decoder = new TextDecoder()

const concat = (chunks: ReadonlyArray<Uint8Array>): Uint8Array => {
  if (chunks.length === 1) return chunks[0]!
  let total = 0
  for (const chunk of chunks) total += chunk.byteLength
  const all = new Uint8Array(total)
  let offset = 0
  for (const chunk of chunks) {
    all.set(chunk, offset)
    offset += chunk.byteLength
  }
  return all
}

export class UndiciResponse extends Inspectable.Class implements HttpClientResponse.HttpClientResponse {
  readonly [HttpClientResponse.TypeId]: typeof HttpClientResponse.TypeId = HttpClientResponse.TypeId
  readonly [HttpIncomingMessage.TypeId]: typeof HttpIncomingMessage.TypeId = HttpIncomingMessage.TypeId
  readonly request: HttpClientRequest.HttpClientRequest
  readonly url: string
  readonly exchange: Exchange
  private cachedHeaders: Headers.Headers | undefined = undefined
  private cachedCookies: Cookies.Cookies | undefined = undefined
  private body: Effect.Effect<Uint8Array, HttpClientError.HttpClientError> | undefined = undefined

  constructor(request: HttpClientRequest.HttpClientRequest, url: string, exchange: Exchange) {
    super()
    this.request = request
    this.url = url
    this.exchange = exchange
  }

  get status(): number {
    return this.exchange.status
  }

  get headers(): Headers.Headers {
    return (this.cachedHeaders ??= Headers.fromInput(this.exchange.headers))
  }

  get cookies(): Cookies.Cookies {
    if (this.cachedCookies !== undefined) return this.cachedCookies
    const header = this.exchange.headers["set-cookie"]
    return (this.cachedCookies =
      header === undefined ? Cookies.empty : Cookies.fromSetCookie(typeof header === "string" ? [header] : header))
  }

  get remoteAddress(): Option.Option<string> {
    return Option.none()
  }

  private decodeError(cause: unknown, description?: string): HttpClientError.HttpClientError {
    return new HttpClientError.HttpClientError({
      reason: new HttpClientError.DecodeError({
        request: this.request,
        response: this,
        cause,
        ...(description === undefined ? {} : { description })
      })
    })
  }

  /** The whole body (read once: later reads get the same bytes). */
  get bytes(): Effect.Effect<Uint8Array, HttpClientError.HttpClientError> {
    return (this.body ??= Effect.suspend(() => this.readAll()))
  }

  private readonly collected: Array<Uint8Array> = []
  private whole: Uint8Array | undefined = undefined
  /** A `stream` took chunks: what is left is not the whole body. */
  private streamed = false
  /** The body is (being) read whole: a `stream` of it is those bytes, not what is left after them. */
  private readWhole = false

  private readAll(): Effect.Effect<Uint8Array, HttpClientError.HttpClientError> {
    if (this.whole !== undefined) return Effect.succeed(this.whole)
    if (this.streamed) return Effect.fail(this.decodeError(undefined, "the body was already read as a stream"))
    this.readWhole = true
    const exchange = this.exchange
    // Taking resumes a paused socket, whose buffered bytes (up to the body's end) arrive before
    // `take` returns: take again until nothing more came, or they are lost or never woken for.
    while (exchange.chunks.length > 0) for (const chunk of exchange.take()) this.collected.push(chunk)
    if (exchange.error !== undefined) return Effect.fail(this.decodeError(exchange.error))
    if (exchange.ended) {
      this.whole = concat(this.collected)
      this.collected.length = 0
      return Effect.succeed(this.whole)
    }
    return Effect.flatMap(awaitMove(exchange), () => this.readAll())
  }

  get arrayBuffer(): Effect.Effect<ArrayBuffer, HttpClientError.HttpClientError> {
    return Effect.map(this.bytes, (bytes) =>
      bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength
        ? (bytes.buffer as ArrayBuffer)
        : (bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer)
    )
  }

  get text(): Effect.Effect<string, HttpClientError.HttpClientError> {
    return Effect.map(this.bytes, (bytes) => decoder.decode(bytes))
  }

  get json(): Effect.Effect<Schema.Json, HttpClientError.HttpClientError> {
    return Effect.flatMap(this.text, (text) =>
      Effect.try({
        try: () => (text === "" ? null : (JSON.parse(text) as Schema.Json)),
        catch: (cause) => this.decodeError(cause)
      })
    )
  }

  get urlParamsBody(): Effect.Effect<UrlParams.UrlParams, HttpClientError.HttpClientError> {
    return Effect.flatMap(this.text, (text) =>
      Effect.try({
        // A leading "?" is form data; URLSearchParams would drop it as a query prefix.
        try: () => UrlParams.fromInput(new URLSearchParams(text.replace(/^\?/, "%3F"))),
        catch: (cause) => this.decodeError(cause)
      })
    )
  }

  get formData(): Effect.Effect<FormData, HttpClientError.HttpClientError> {
    return Effect.flatMap(this.arrayBuffer, (body) =>
      Effect.tryPromise({
        try: () => new globalThis.Response(body, { headers: this.headers }).formData(),
        catch: (cause) => this.decodeError(cause)
      })
    )
  }

  get upgrade(): HttpClientResponse.HttpClientResponse["upgrade"] {
    return Effect.fail(
      new HttpClientError.HttpClientError({
        reason: new HttpClientError.StatusCodeError({ request: this.request, response: this })
      })
    ) as never
  }

  get stream(): Stream.Stream<Uint8Array, HttpClientError.HttpClientError> {
    const exchange = this.exchange
    return Stream.fromChannel(
      Channel.fromTransform((_, scope) => {
        if (this.readWhole) {
          let pulled = false
          const whole: Pull.Pull<
            Arr.NonEmptyReadonlyArray<Uint8Array>,
            HttpClientError.HttpClientError
          > = Effect.suspend(() => {
            if (pulled) return Cause.done()
            pulled = true
            return Effect.flatMap(this.bytes, (bytes) =>
              bytes.byteLength === 0 ? Cause.done() : Effect.succeed([bytes])
            )
          })
          return Effect.succeed(whole)
        }
        // Its chunks were handed over: a second stream would end at once, as if the body were empty.
        if (this.streamed) return Effect.fail(this.decodeError(undefined, "the body was already read as a stream"))
        this.streamed = true
        const pull: Pull.Pull<Arr.NonEmptyReadonlyArray<Uint8Array>, HttpClientError.HttpClientError> = Effect.suspend(
          () => {
            const chunks = exchange.take()
            if (Arr.isArrayNonEmpty(chunks)) return Effect.succeed(chunks)
            if (exchange.error !== undefined) return Effect.fail(this.decodeError(exchange.error))
            if (exchange.ended) return Cause.done()
            return Effect.flatMap(awaitMove(exchange), () => pull)
          }
        )
        // A reader that stops early gives the rest of the body up.
        return Effect.as(
          Scope.addFinalizer(
            scope,
            Effect.sync(() => exchange.abort(released))
          ),
          pull
        )
      })
    )
  }

  toJSON(): unknown {
    return HttpIncomingMessage.inspect(this, {
      _id: "effect/http/HttpClientResponse",
      request: this.request.toJSON(),
      status: this.status
    })
  }

  pipe() {
    // biome-ignore lint/complexity/noArguments: Pipeable's own signature
    return Pipeable.pipeArguments(this, arguments)
  }
}
