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
import { NodeHttpClient } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { HttpClient, type HttpClientError } from "effect/http"
import { makeScoped } from "./UndiciHttpClient/scoped.js"
import { makeGeneral } from "./UndiciHttpClient/send.js"

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
  const general = makeGeneral(dispatcher, undici.FormData)
  const scoped = makeScoped(dispatcher, undici.FormData, general)
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
