/**
 * An `effect/http` `HttpClient` over undici's `dispatch`: the response's head and its body's
 * chunks go from undici's handler to the fiber, with no Node `Readable`, no Promise and no
 * context merge in between. The gateway (`orchestra serve`) uses it; any application can
 * provide it where it would provide `NodeHttpClient.layerUndici`.
 *
 * `NodeHttpClient.layerUndici` reads every answer through undici's `request()` (a
 * `RequestHandler` that builds a `Readable` for the body and a Promise for the head) and its
 * layer merges its own context into every request's. In the gateway, every policy on, this
 * client costs ~15-20% less CPU a request (`docs/benchmarks/gateway.md`).
 *
 * It is an `HttpClient` built with `HttpClient.make`: URLs, tracing, header redaction,
 * `HttpClient.withScope` and the application's middleware work as with effect's clients.
 * `NodeHttpClient.UndiciOptions` apply to each request's dispatch (those only undici's
 * `request()` reads, such as `onInfo`, `highWaterMark`, `responseHeaders` or `opaque`, have no
 * effect). Without them undici puts no deadline on a request (its header timeout is an hour,
 * its body timeout off: the `Agent`'s are overridden); their `headersTimeout` and `bodyTimeout`
 * are undici's deadlines for that request. A body unread past 64 KiB pauses the socket until it is read. A body read whole
 * (`text`, `json`, `arrayBuffer`...) is kept: every later reader, a `stream` too, gets all of it;
 * a body read as a `stream` is not read again (that read fails with a `DecodeError`, not with
 * what is left). Interrupting a reader of the body gives the request up. It does not upgrade connections
 * (`HttpClientRequest.upgrade`): that request fails with a `TransportError` saying so.
 *
 * @since 0.3.0
 */
import { NodeHttpClient, NodeStream } from "@effect/platform-node"
import {
  Array as Arr,
  Cause,
  Context,
  Effect,
  type Fiber,
  Inspectable,
  Layer,
  Option,
  Pipeable,
  References,
  type Schema,
  Scope,
  Stream,
  Tracer
} from "effect"
import {
  Cookies,
  Headers,
  HttpClient,
  HttpClientError,
  type HttpClientRequest,
  HttpClientResponse,
  HttpIncomingMessage,
  UrlParams
} from "effect/http"
import * as Channel from "effect/Channel"
import type * as Pull from "effect/Pull"
import type { Readable } from "node:stream"
import type * as Undici from "undici"

/** Bytes a response body may hold unread before the socket is paused. */
const highWaterMark = 64 * 1024

/** A body's reader's wake-up: the next chunk arrived, the body ended or failed. */
type Wake = () => void

const noop = () => {}

/** Is this request body a Node stream (a `Stream` body's, or a `Raw` one)? */
const isReadable = (body: unknown): body is Readable =>
  typeof body === "object" && body !== null && typeof (body as Readable).pipe === "function"

/**
 * Releases a Node stream body of a request that failed before undici was done with it: an
 * Effect stream's fiber is interrupted (its finalizers run), a file's descriptor closed. undici
 * destroys a body it was writing, not one it never started or only peeked at (`read(0)`).
 */
const release = (body: Readable): void => {
  if (body.destroyed) return
  body.on("error", noop)
  body.destroy()
}

/**
 * One request's exchange with undici: the head, then the body's chunks, as they come. It
 * listens to the request's signal (its scope closed, its response was collected unread) until
 * the answer ended or failed.
 */
class Exchange implements Undici.Dispatcher.DispatchHandler, EventListenerObject {
  controller: Undici.Dispatcher.DispatchController | undefined = undefined
  status = 0
  headers: Record<string, string | Array<string> | undefined> = {}
  chunks: Array<Uint8Array> = []
  queued = 0
  ended = false
  error: Error | undefined = undefined
  /** The request was given up (interrupted, its scope closed): why, for undici. */
  aborted: Error | undefined = undefined
  onHead: ((error: Error | undefined) => void) | undefined
  /** Readers waiting for the body to move (one, unless a body is read twice at once). */
  waiters: Array<Wake> = []
  /** A wake-up of the readers is queued. */
  scheduled = false

  /**
   * The signal of `HttpClient.make`'s path; none on the scoped path, where the scope's finalizer
   * aborts (until a redirect's answer is handed to `HttpClient.make`, see `listen`).
   */
  signal: AbortSignal | undefined
  /** The request's body when it is a Node stream, released if the request fails. */
  readonly body: Readable | undefined

  constructor(signal: AbortSignal | undefined, body: Readable | undefined, onHead: (error: Error | undefined) => void) {
    this.signal = signal
    this.body = body
    this.onHead = onHead
  }

  handleEvent(): void {
    this.abort(this.signal?.reason instanceof globalThis.Error ? this.signal.reason : interrupted)
  }

  /** Listens to `signal` from now on: an answer already under way is given up when it fires. */
  listen(signal: AbortSignal): void {
    if (this.ended || this.error !== undefined) return
    this.signal = signal
    if (signal.aborted) this.handleEvent()
    else signal.addEventListener("abort", this)
  }

  abort(reason: Error): void {
    if (this.ended || this.error !== undefined) return
    this.aborted ??= reason
    this.controller?.abort(reason)
  }

  onRequestStart(controller: Undici.Dispatcher.DispatchController): void {
    // Given up while it waited for a connection: `controller.abort` would close the connection
    // it was just given, while a throw (undici fails the request with it) leaves it to the next.
    if (this.aborted !== undefined) throw this.aborted
    this.controller = controller
  }

  onResponseStart(
    _controller: Undici.Dispatcher.DispatchController,
    statusCode: number,
    headers: Record<string, string | Array<string> | undefined>
  ): void {
    // 1xx heads (100 Continue, 103 Early Hints) are not the answer.
    if (statusCode < 200) return
    this.status = statusCode
    this.headers = headers
    const onHead = this.onHead
    this.onHead = undefined
    // Resumed once undici has parsed the whole read, not inside its parser's callback: the
    // fiber then finds the body's first bytes of the same read already here, and the caller's
    // continuation does not run inside llhttp (that cost a gateway stream's first byte ~1.2 ms).
    if (onHead !== undefined) queueMicrotask(() => onHead(undefined))
  }

  onResponseData(controller: Undici.Dispatcher.DispatchController, chunk: Uint8Array): void {
    this.chunks.push(chunk)
    this.queued += chunk.byteLength
    if (this.queued >= highWaterMark) controller.pause()
    this.notify()
  }

  onResponseEnd(): void {
    this.ended = true
    this.signal?.removeEventListener("abort", this)
    this.notify()
  }

  onResponseError(_controller: Undici.Dispatcher.DispatchController, error: Error): void {
    this.error = error
    this.signal?.removeEventListener("abort", this)
    if (this.body !== undefined) release(this.body)
    const onHead = this.onHead
    this.onHead = undefined
    if (onHead !== undefined) onHead(error)
    else this.notify()
  }

  /** Wakes the readers once the current read is parsed: every chunk of it comes in one pull. */
  notify(): void {
    if (this.waiters.length === 0 || this.scheduled) return
    this.scheduled = true
    queueMicrotask(() => {
      this.scheduled = false
      const waiters = this.waiters
      this.waiters = []
      for (const wake of waiters) wake()
    })
  }

  /** The chunks read so far, handed over; the socket resumes if it was paused. */
  take(): Array<Uint8Array> {
    const chunks = this.chunks
    this.chunks = []
    this.queued = 0
    if (this.controller?.paused === true) this.controller.resume()
    return chunks
  }
}

const interrupted = new globalThis.Error("The request was interrupted")
const scopeClosed = new globalThis.Error("The request's scope was closed")
const released = new globalThis.Error("The response body was released before it was read")

/**
 * Waits for the exchange to move (a chunk, its end or its failure); interruption aborts it.
 * It looks again as it registers: the fiber may have yielded to the event loop between its
 * reader's look and this wait (every `maxOpsBeforeYield` instructions), and a move that came
 * then woke nobody.
 */
const awaitMove = (exchange: Exchange): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    if (exchange.chunks.length > 0 || exchange.ended || exchange.error !== undefined) return resume(Effect.void)
    const wake = () => resume(Effect.void)
    exchange.waiters.push(wake)
    return Effect.sync(() => {
      const at = exchange.waiters.indexOf(wake)
      if (at >= 0) exchange.waiters.splice(at, 1)
      exchange.abort(interrupted)
    })
  })

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

class UndiciResponse extends Inspectable.Class implements HttpClientResponse.HttpClientResponse {
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

const transportError = (request: HttpClientRequest.HttpClientRequest, cause: unknown, description?: string) =>
  new HttpClientError.HttpClientError({
    reason: new HttpClientError.TransportError({
      request,
      cause,
      ...(description === undefined ? {} : { description })
    })
  })

type UndiciBody = string | Uint8Array | Undici.FormData | NodeJS.ReadableStream | null

const convertBody = (
  request: HttpClientRequest.HttpClientRequest,
  FormData: typeof Undici.FormData
): Effect.Effect<{ readonly body: UndiciBody; readonly headers: Headers.Headers }> => {
  const body = request.body
  switch (body._tag) {
    case "Empty":
      return Effect.succeed({ body: null, headers: request.headers })
    case "Uint8Array":
    case "Raw":
      return Effect.succeed({ body: body.body as UndiciBody, headers: request.headers })
    case "FormData": {
      const converted = new FormData()
      for (const [key, value] of body.formData) converted.append(key, value)
      return Effect.succeed({ body: converted, headers: Headers.remove(request.headers, "content-type") })
    }
    case "Stream":
      return Effect.map(NodeStream.toReadable(body.stream), (readable) => ({
        body: readable,
        headers: request.headers
      })) as never
  }
}

/**
 * A request's link to the scope it belongs to (`HttpClient.withScope`) on the scoped path:
 * closing the scope aborts its exchange, with a reason made once.
 */
class ScopeLink {
  exchange: Exchange | undefined = undefined
  closed = false
  readonly close = Effect.sync(() => {
    this.closed = true
    this.exchange?.abort(scopeClosed)
  })
}

/**
 * `HttpClient.withScope`'s reference, read by its key: a request under it takes the scoped path.
 * The key is effect's own; `test/UndiciHttpClient.test.ts` checks that both paths see it.
 */
const RequestScope = Context.Reference<Scope.Scope | undefined>("effect/http/HttpClient/RequestScope", {
  defaultValue: () => undefined
})

/** Hands a redirect's answer, still being read, of the scoped path to `HttpClient.make`. */
type Redirected = (
  response: UndiciResponse
) => Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>

/**
 * Sends `request` through undici. The answer comes as soon as its head has; `signal` (the
 * `HttpClient.make` path) or `link` (the scoped path) gives it up when it fires. On the scoped
 * path, a redirect's answer whose body is still coming goes through `redirected`.
 */
const send = (
  dispatcher: Undici.Dispatcher,
  FormData: typeof Undici.FormData,
  request: HttpClientRequest.HttpClientRequest,
  url: URL,
  options: Partial<Undici.Dispatcher.RequestOptions>,
  signal: AbortSignal | undefined,
  link: ScopeLink | undefined,
  redirected: Redirected | undefined
): Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError> => {
  if (request.headers.upgrade !== undefined) {
    return Effect.fail(
      transportError(request, undefined, "this client does not upgrade connections: use NodeHttpClient.layerUndici")
    )
  }
  return Effect.flatMap(convertBody(request, FormData), ({ body, headers }) =>
    Effect.callback<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>((resume) => {
      const stream = isReadable(body) ? body : undefined
      if (signal?.aborted === true || link?.closed === true) {
        // Its scope closed before it was sent: dispatched, it would wait for a connection
        // (a pooled one, or a new one however long connecting takes), then close it.
        if (stream !== undefined) release(stream)
        resume(Effect.fail(transportError(request, signal === undefined ? scopeClosed : signal.reason)))
        return
      }
      const exchange = new Exchange(signal, stream, (error) => {
        if (error !== undefined) return resume(Effect.fail(transportError(request, error)))
        const response = new UndiciResponse(request, url.href.split("#")[0]!, exchange)
        resume(
          redirected !== undefined &&
            exchange.status >= 300 &&
            exchange.status < 400 &&
            exchange.headers.location !== undefined &&
            !exchange.ended &&
            exchange.error === undefined
            ? redirected(response)
            : Effect.succeed(response)
        )
      })
      signal?.addEventListener("abort", exchange)
      if (link !== undefined) link.exchange = exchange
      try {
        dispatcher.dispatch(
          {
            // Deadlines are the caller's (Effect.timeout and the like), unless the
            // UndiciOptions in context give undici's own.
            headersTimeout: 60 * 60 * 1000,
            bodyTimeout: 0,
            ...options,
            method: request.method,
            headers: headers as Record<string, string>,
            origin: url.origin,
            path: url.pathname + url.search,
            body: body as never
          },
          exchange
        )
      } catch (cause) {
        signal?.removeEventListener("abort", exchange)
        if (stream !== undefined) release(stream)
        resume(Effect.fail(transportError(request, cause)))
      }
      return Effect.sync(() => exchange.abort(interrupted))
    })
  )
}

/**
 * An `HttpClient` over the undici `Dispatcher` in context (`NodeHttpClient.Dispatcher`).
 *
 * A request under `HttpClient.withScope` (as every provider's of this library is), untraced and
 * with no query string, takes a scoped path: its scope's finalizer gives the exchange up, with
 * no `AbortController` (effect's `HttpClient.make` makes one a request and aborts it as the
 * scope closes, which makes a `DOMException` with its stack: ~2.4 KB a request kept through
 * young collections, `docs/benchmarks/gateway.md`). Any other request goes through
 * `HttpClient.make` (tracing, URL parameters and their redaction, an unread answer given up when
 * collected). A redirect's answer (3xx with a `location`) whose body is still coming when its
 * head arrives goes through `HttpClient.make` too, so that `HttpClient.followRedirects` gives it
 * up (closing its connection) as it follows the redirect, as with effect's clients.
 *
 * @since 0.3.0
 * @category constructors
 */
export const make: Effect.Effect<HttpClient.HttpClient, never, NodeHttpClient.Dispatcher> = Effect.gen(function* () {
  const dispatcher = yield* NodeHttpClient.Dispatcher
  const undici = yield* Effect.promise(() => import("undici"))
  const general = HttpClient.make((request, url, signal, fiber) =>
    send(
      dispatcher,
      undici.FormData,
      request,
      url,
      fiber.getRef(NodeHttpClient.UndiciOptions),
      signal,
      undefined,
      undefined
    )
  )
  // effect's `HttpClient.followRedirects` gives a discarded redirect's answer up through the
  // AbortController `HttpClient.make` made for it, which the scoped path has none of: a redirect
  // whose body is still coming is handed to `HttpClient.make` (which then registers its
  // controller), or its connection is held until the scope closes (a pool of one deadlocks).
  const handedOver = new WeakMap<Fiber.Fiber<unknown, unknown>, UndiciResponse>()
  const adopting = HttpClient.make((request, _url, signal, fiber) => {
    const response = handedOver.get(fiber)
    handedOver.delete(fiber)
    if (response === undefined || response.request !== request) {
      return Effect.die(new globalThis.Error("UndiciHttpClient: no redirect answer to hand over"))
    }
    response.exchange.listen(signal)
    return Effect.succeed(response)
  })
  const redirected: Redirected = (response) =>
    Effect.withFiber((fiber) => {
      handedOver.set(fiber, response)
      return adopting.postprocess(Effect.succeed(response.request))
    })
  const scoped = (request: HttpClientRequest.HttpClientRequest) =>
    Effect.withFiber<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>((fiber) => {
      const scope = fiber.getRef(RequestScope)
      if (
        scope === undefined ||
        request.urlParams.params.length > 0 ||
        Option.isSome(request.hash) ||
        request.url.includes("?") ||
        (fiber.getRef(References.TracerEnabled) &&
          !fiber.getRef(Tracer.DisablePropagation) &&
          !fiber.getRef(HttpClient.TracerDisabledWhen)(request))
      ) {
        return general.postprocess(Effect.succeed(request))
      }
      let url: URL
      try {
        url = new URL(request.url)
      } catch {
        // effect's own error for it (InvalidUrlError).
        return general.postprocess(Effect.succeed(request))
      }
      const link = new ScopeLink()
      // Registered before the dispatch, so that a scope already closed gives the request up first.
      return Effect.flatMap(Scope.addFinalizer(scope, link.close), () =>
        send(
          dispatcher,
          undici.FormData,
          request,
          url,
          fiber.getRef(NodeHttpClient.UndiciOptions),
          undefined,
          link,
          redirected
        )
      )
    })
  return HttpClient.makeWith<HttpClientError.HttpClientError, never, HttpClientError.HttpClientError, never>(
    (effect) => Effect.flatMap(effect, scoped),
    Effect.succeed
  )
})

/**
 * The client over `NodeHttpClient`'s default scoped undici `Agent`.
 *
 * @since 0.3.0
 * @category layers
 */
export const layer: Layer.Layer<HttpClient.HttpClient> = Layer.effect(HttpClient.HttpClient, make).pipe(
  Layer.provide(NodeHttpClient.layerDispatcher)
)

/**
 * The client over the `Dispatcher` in context: `NodeHttpClient.layerDispatcherOptions(...)` for
 * an undici `Agent` of your own settings, `NodeHttpClient.dispatcherLayerGlobal` for undici's
 * global one.
 *
 * @since 0.3.0
 * @category layers
 */
export const layerNoDispatcher: Layer.Layer<HttpClient.HttpClient, never, NodeHttpClient.Dispatcher> = Layer.effect(
  HttpClient.HttpClient,
  make
)
