/**
 * The scoped path: a request under `HttpClient.withScope`, untraced, with no query string, goes
 * straight to undici, given up by its scope's finalizer instead of an `AbortController`.
 *
 * @internal
 */
import { NodeHttpClient } from "@effect/platform-node"
import { Context, Effect, type Fiber, Option, References, Scope, Tracer } from "effect"
import { HttpClient, type HttpClientError, type HttpClientRequest, type HttpClientResponse } from "effect/http"
import type * as Undici from "undici"
import { type Exchange, scopeClosed } from "./exchange.js"
import type { UndiciResponse } from "./response.js"
import { type Redirected, send, type Target, targetOf } from "./send.js"

/**
 * A request's link to the scope it belongs to (`HttpClient.withScope`) on the scoped path:
 * closing the scope aborts its exchange, with a reason made once.
 */
export class ScopeLink {
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

// The most URLs the scoped path keeps parsed.
const maxTargets = 256

/**
 * The scoped path's `postprocess` step; any request it does not take goes to `general`.
 *
 * @internal
 */
export const makeScoped = (
  dispatcher: Undici.Dispatcher,
  FormData: typeof Undici.FormData,
  general: HttpClient.HttpClient
): ((
  request: HttpClientRequest.HttpClientRequest
) => Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>) => {
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
  // A provider sends to a few URLs: each is parsed once (`new URL`: ~5 µs a request in the
  // gateway's profile), `null` for one that does not parse. Bounded: emptied when full.
  const targets = new Map<string, Target | null>()
  const targetFor = (url: string): Target | null => {
    let target = targets.get(url)
    if (target !== undefined) return target
    try {
      target = targetOf(new URL(url))
    } catch {
      target = null
    }
    if (targets.size >= maxTargets) targets.clear()
    targets.set(url, target)
    return target
  }
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
      const target = targetFor(request.url)
      // One that does not parse: effect's own error for it (InvalidUrlError).
      if (target === null) return general.postprocess(Effect.succeed(request))
      const link = new ScopeLink()
      // Registered before the dispatch, so that a scope already closed gives the request up first.
      return Effect.flatMap(Scope.addFinalizer(scope, link.close), () =>
        send(
          dispatcher,
          FormData,
          request,
          target,
          fiber.getRef(NodeHttpClient.UndiciOptions),
          undefined,
          link,
          redirected
        )
      )
    })
  return scoped
}
