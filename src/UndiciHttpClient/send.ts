/**
 * A request's dispatch to undici, shared by both paths, and the path through `HttpClient.make`
 * (tracing, URL parameters and their redaction, an unread answer given up when collected).
 *
 * @internal
 */
import { NodeHttpClient, NodeStream } from "@effect/platform-node"
import { Effect } from "effect"
import { Headers, HttpClient, HttpClientError, type HttpClientRequest, type HttpClientResponse } from "effect/http"
import type * as Undici from "undici"
import { Exchange, isReadable, release, scopeClosed, interrupted } from "./exchange.js"
import { UndiciResponse } from "./response.js"
import type { ScopeLink } from "./scoped.js"

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

/** Hands a redirect's answer, still being read, of the scoped path to `HttpClient.make`. */
export type Redirected = (
  response: UndiciResponse
) => Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>

/**
 * Where a request goes, read off its URL once: the answer's URL (`href`, without a fragment),
 * undici's `origin` and `path`.
 *
 * @internal
 */
export interface Target {
  readonly href: string
  readonly origin: string
  readonly path: string
}

/**
 * The {@link Target} of a parsed URL.
 *
 * @internal
 */
export const targetOf = (url: URL): Target => ({
  href: url.href.split("#")[0]!,
  origin: url.origin,
  path: url.pathname + url.search
})

/**
 * Sends `request` through undici. The answer comes as soon as its head has; `signal` (the
 * `HttpClient.make` path) or `link` (the scoped path) gives it up when it fires. On the scoped
 * path, a redirect's answer whose body is still coming goes through `redirected`.
 */
export const send = (
  dispatcher: Undici.Dispatcher,
  FormData: typeof Undici.FormData,
  request: HttpClientRequest.HttpClientRequest,
  target: Target,
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
        const response = new UndiciResponse(request, target.href, exchange)
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
            origin: target.origin,
            path: target.path,
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
 * The client of every request the scoped path does not take: `HttpClient.make` over {@link send}.
 *
 * @internal
 */
export const makeGeneral = (dispatcher: Undici.Dispatcher, FormData: typeof Undici.FormData): HttpClient.HttpClient =>
  HttpClient.make((request, url, signal, fiber) =>
    send(
      dispatcher,
      FormData,
      request,
      targetOf(url),
      fiber.getRef(NodeHttpClient.UndiciOptions),
      signal,
      undefined,
      undefined
    )
  )
