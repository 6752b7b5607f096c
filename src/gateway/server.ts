/**
 * The gateway built on an `HttpRouter`: options checked, the routes registered, the
 * metrics registered in the layer's registry, and the drain on the layer's close.
 *
 * @internal
 */
import { Cause, Clock, Effect, References, Tracer } from "effect"
import { HttpRouter, HttpServerError, type HttpServerRequest, type HttpServerResponse } from "effect/http"
import { Executor } from "../Executor.js"
import * as Input from "../Input.js"
import * as Prometheus from "../Prometheus.js"
import * as Chat from "./chat.js"
import * as Embeddings from "./embeddings.js"
import * as Info from "./info.js"
import * as Lifecycle from "./lifecycle.js"
import { GatewayMetrics } from "./metrics.js"
import type { Options } from "../Gateway.js"
import { check } from "./options.js"
import type { GatewayError } from "./errors.js"
import { answered, type Env, failure, type Keys } from "./routes.js"
import * as Upstream from "./upstream.js"
import { millis } from "./upstream.js"

/**
 * What the running gateway offers its owner.
 *
 * @internal
 */
export interface Handle {
  /** Refuse new requests, wait for the running ones up to `drainTimeout`, cut the rest. Idempotent. */
  readonly drain: Effect.Effect<void>
  readonly isDraining: () => boolean
  readonly inFlight: () => number
  /**
   * The answer to a request refused before any route (`orchestra serve`'s host check), named
   * and counted under route `other` as the routes' own refusals are.
   */
  readonly refuse: (error: GatewayError) => HttpServerResponse.HttpServerResponse
}

type RouteNotFound = HttpServerError.HttpServerError & { readonly reason: HttpServerError.RouteNotFound }

const isRouteNotFound = (error: unknown): error is RouteNotFound =>
  HttpServerError.isHttpServerError(error) && error.reason._tag === "RouteNotFound"

const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"

/**
 * A maker of answer ids unique across replicas (`req_...`, `chatcmpl-...`): the kind, a random
 * prefix of its own, then a counter. The gateway's routes and the admin routes have one each.
 *
 * @internal
 */
export const makeIds = (): ((kind: string) => string) => {
  let counter = 0
  let prefix = ""
  for (let i = 0; i < 8; i++) prefix += alphabet[Math.floor(Math.random() * alphabet.length)]
  return (kind) => `${kind}${prefix}${(counter++).toString(36)}`
}

/**
 * Builds the gateway on the `HttpRouter` in context. `keys`: the key store, or `undefined`
 * for an open gateway (refused unless `allowAnonymous`). `catchAll`: answer every path no
 * route takes with the gateway's OpenAI-shaped 404 (its own server), not only those under
 * the prefix (a router the application shares, where the rest of the paths are its own).
 * `onMetrics`: handed the gateway's metrics, for the server's own refusals (`Gateway.serve`).
 *
 * @internal
 */
export const make = Effect.fnUntraced(function* (
  input: Options,
  keys: Keys | undefined,
  catchAll = false,
  onMetrics?: ((metrics: GatewayMetrics) => void) | undefined
) {
  const options = yield* Input.orOptionError(check(input))
  if (keys === undefined && !options.allowAnonymous) {
    return yield* Effect.fail(
      Input.toOptionError({
        path: "keys",
        message:
          "no key store in context: provide one (gateway/keys), or set allowAnonymous: true for a gateway that admits every request"
      })
    )
  }
  const executor = yield* Executor
  const clock = yield* Clock.Clock
  const router = yield* HttpRouter.HttpRouter
  const upstream = yield* Upstream.make(clock, options.providerModels)
  if (keys?.useModels !== undefined) yield* keys.useModels(upstream.models)
  const context = yield* Effect.context<never>()
  const metrics = new GatewayMetrics(context)
  yield* Effect.addFinalizer(() => Effect.sync(() => metrics.remove()))
  onMetrics?.(metrics)
  const lifecycle = yield* Lifecycle.make({
    drainTimeout: options.drainTimeout,
    drainDelay: options.drainDelay,
    onCount: (n) => {
      metrics.inFlight = n
    }
  })
  // Reservations of running requests, held past the store's own lease by its `renew`; forked
  // before the drain's finalizer, so that requests draining stay held until they end.
  const held = new Set<unknown>()
  const renew = keys?.renew
  if (renew !== undefined) {
    // An application's store says how often: a zero or negative one would spin.
    const every = yield* Input.orOptionError(Input.duration("keys.renew.every", renew.every))
    // A renewal that dies (a store's bug) must not end the loop: every reservation would then lapse at its lease's end.
    const run = Effect.suspend(() => (held.size === 0 ? Effect.void : renew.run([...held]))).pipe(
      Effect.catchCause((cause) =>
        Cause.hasInterruptsOnly(cause)
          ? Effect.failCause(cause)
          : Effect.logWarning("gateway: the key store's renew failed; tried again at the next", Cause.pretty(cause))
      )
    )
    yield* Effect.sleep(every).pipe(Effect.andThen(run), Effect.forever, Effect.forkScoped)
  }
  // Closing the layer drains (a no-op when the owner drained first, as `Gateway.serve` does).
  yield* Effect.addFinalizer(() => lifecycle.drain)

  const env: Env = {
    options,
    executor,
    upstream,
    keys,
    metrics,
    lifecycle,
    clock,
    retry: options.retry === "executor" ? true : options.retry === false ? undefined : options.retry,
    metricsText: () => Prometheus.formatUnsafe(context, { buckets: options.metricsBuckets }),
    nextId: makeIds(),
    held
  }
  // Without a tracer (the native one records nowhere), the spans of every call below would
  // be built for nobody: a third of a call's CPU on the HTTP client path. Turn them off.
  const tracing = (yield* Tracer.Tracer) !== Tracer.nativeTracer
  const untraced = <A, E, R>(handler: (request: HttpServerRequest.HttpServerRequest) => Effect.Effect<A, E, R>) =>
    tracing
      ? handler
      : (request: HttpServerRequest.HttpServerRequest) =>
          Effect.provideService(handler(request), References.TracerEnabled, false)
  const chat = untraced(Chat.make(env))
  const embeddings = untraced(Embeddings.make(env))
  const info = Info.make(env)
  const api = options.prefix
  // Each GET route answers HEAD too (Node sends no body for it): the router's own HEAD-as-GET applies
  // only where no route takes HEAD, and the fallback's wildcard takes every method.
  const get = <E, R>(
    path: `/${string}`,
    handler:
      | Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>
      | ((request: HttpServerRequest.HttpServerRequest) => Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>)
  ) => [HttpRouter.route("GET", path, handler), HttpRouter.route("HEAD", path, handler)] as const
  yield* router.addAll([
    HttpRouter.route("POST", `${api}/chat/completions`, chat),
    HttpRouter.route("POST", `${api}/embeddings`, embeddings),
    ...get(`${api}/models`, info.models),
    ...get(`${api}/models/*`, info.model),
    HttpRouter.route("*", `${api}/*`, info.fallback)
  ])
  // The router prefers any other route to a wildcard, so routes added later (`Gateway.serve`'s
  // `routes`, the health paths below) still win over this one.
  if (catchAll && api !== "") yield* router.add("*", "/*", info.fallback)
  // A path the router cannot decode (`%ZZ`) matches no route, not even the wildcards above: its refusal is the
  // gateway's too, not the router's empty 404, on the paths the gateway answers for (every path on its own server,
  // those under its prefix in an application's router). Built once: a request pays one frame for it.
  // Without regard to case, as the router matches paths.
  const lowerApi = api.toLowerCase()
  const owns = (url: string) =>
    catchAll ||
    api === "" ||
    (url.length >= api.length &&
      url.slice(0, api.length).toLowerCase() === lowerApi &&
      (url.length === api.length || "/?;".includes(url[api.length]!)))
  const unroutable = (error: unknown): error is RouteNotFound =>
    isRouteNotFound(error) && owns(error.reason.request.url)
  // Typed as a middleware that handles no error (effect/http's rule): this one handles only what the router raised.
  yield* router.addGlobalMiddleware(
    (app) =>
      Effect.catchIf(app as Effect.Effect<HttpServerResponse.HttpServerResponse, unknown>, unroutable, (error) =>
        info.unroutable(error.reason.request)
      ) as never
  ) as Effect.Effect<void>
  const own = [
    ...(options.livePath === undefined ? [] : get(options.livePath, info.health)),
    ...(options.readyPath === undefined ? [] : get(options.readyPath, info.ready)),
    ...(options.metricsPath === undefined ? [] : get(options.metricsPath, info.metrics))
  ]
  if (own.length > 0) yield* router.addAll(own)
  return {
    drain: lifecycle.drain,
    isDraining: lifecycle.isDraining,
    inFlight: lifecycle.inFlight,
    refuse: (error) => answered(env, "other", millis(clock), failure(env, error), undefined)
  } satisfies Handle
})
