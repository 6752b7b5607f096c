/**
 * The admin routes of the key store, behind an admin key (`Authorization: Bearer <admin
 * key>`, compared by SHA-256 in constant time):
 *
 * | route | answer |
 * |---|---|
 * | `POST {path}/keys` | 201: the key and its `secret` (shown this once; `Cache-Control: no-store`) |
 * | `GET {path}/keys?limit=&after=` | a page: `{ object: "list", data: [key...], has_more, first_id, last_id }` (the configuration's keys, then the created ones by id; `limit` 1 to 1,000, default 100; `after` the last id of the page before), with `incomplete: true` while the Redis store's index of ids misses keys |
 * | `GET {path}/keys/:id` | the key |
 * | `DELETE {path}/keys/:id` | `{ id, object: "key", deleted: true }`: the key, its budgets (not its team's) and its rate limits are gone, and its id may be created again from nothing |
 * | `POST {path}/keys/:id/disable`, `.../enable` | the key after the change |
 * | `GET {path}/keys/:id/spend` | `{ id, budgets: [{ scope, id, unit, spent, held, limit, remaining, resetsAt }] }` |
 *
 * Each `GET` route answers `HEAD` as that `GET` without its body. A key never shows its secret again nor its hash:
 * only its `prefix`. Failures are
 * OpenAI-shaped bodies (401 without the admin key, 400 naming the field, 404, 405 with
 * `Allow` for a wrong method, 409 for an id taken or a store that holds its `maxKeys`, 403 for a key of the
 * configuration, 503 when the store is down). Bodies are
 * bounded (`maxBodyBytes`). Every answer is counted in `orchestra_gateway_admin_requests_total` by route and status,
 * and carries an `x-request-id` (`req_...`), which the log line of an unexpected failure carries too.
 *
 * @since 0.2.0
 */
import { Cause, Effect, Exit, Layer, type Metric, Redacted, Scope } from "effect"
import * as ByteSize from "effect/ByteSize"
import { HttpIncomingMessage, HttpRouter, type HttpServerRequest, HttpServerResponse } from "effect/http"
import * as Input from "../Input.js"
import * as Metrics from "../Metrics.js"
import * as Counters from "../stats/counters.js"
import { clip } from "./checks.js"
import { type GatewayError, gatewayError, toWire } from "./errors.js"
import { KeyAdmin, type KeyInfo, type ListOptions } from "./keys/KeyStore.js"
import { jsonOf } from "./request.js"
import { requestIdHeader } from "./routes.js"
import { makeIds } from "./server.js"
import { check } from "./adminOptions.js"
import { matches } from "./keys/secret.js"

/**
 * Options of {@link layer}.
 *
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /** The admin key (`Config.Redacted("ORCHESTRA_ADMIN_KEY")`), or the SHA-256 of it in hex. */
  readonly key: Redacted.Redacted<string> | { readonly sha256: string }
  /** Path of the admin routes. Default `"/admin"`. */
  readonly path?: string | undefined
  /** Largest request body, in bytes. Default 64 KiB. */
  readonly maxBodyBytes?: number | undefined
}

/**
 * The options of {@link make} checked as it checks them (the first wrong field), without building the routes.
 *
 * @internal
 */
export { check }

const json = (status: number, body: unknown, headers?: Record<string, string>) =>
  HttpServerResponse.text(JSON.stringify(body), { status, contentType: "application/json", headers })

const answerError = (error: GatewayError) => {
  const wire = toWire(error)
  const headers: Record<string, string> = {}
  // HTTP requires a 401 to say how to authenticate.
  if (wire.status === 401) headers["www-authenticate"] = 'Bearer realm="admin"'
  if (wire.retryAfterSeconds !== undefined) headers["retry-after"] = String(wire.retryAfterSeconds)
  if (wire.retryAfterMs !== undefined) headers["retry-after-ms"] = String(wire.retryAfterMs)
  // The official clients retry a 409 (and obey this header): a taken id or a full store stays so.
  if (wire.shouldRetry === false || wire.status === 409) headers["x-should-retry"] = "false"
  return json(wire.status, wire.body, headers)
}

const bearerPattern = /^Bearer[ \t]+(\S+)[ \t]*$/i

/** `limit` and `after` of the listing's query (each at most once); the store checks their values. */
const listOptions = (url: string): Effect.Effect<ListOptions, GatewayError> => {
  const at = url.indexOf("?")
  const query = new URLSearchParams(at === -1 ? "" : url.slice(at + 1))
  const options: { limit?: unknown; after?: unknown } = {}
  for (const name of ["limit", "after"] as const) {
    const values = query.getAll(name)
    if (values.length > 1) {
      return Effect.fail(gatewayError("InvalidRequest", `invalid ${name}: given more than once`, { param: name }))
    }
    if (values.length === 1) options[name] = values[0]
  }
  // A number only when all digits: "1.5", "1e3", " 7" and "" are left as text, which the store refuses.
  if (typeof options.limit === "string" && /^[0-9]{1,7}$/.test(options.limit)) options.limit = Number(options.limit)
  return Effect.succeed(options)
}

/** The methods of the admin route at `rest` (the path after the admin prefix), `undefined` for none: 404. */
const allowed = (rest: string): string | undefined => {
  // The router serves a route's path with a trailing slash too.
  const [empty, keys, id, action, ...more] = (rest.endsWith("/") ? rest.slice(0, -1) : rest).split("/")
  if (empty !== "" || keys !== "keys" || more.length > 0 || id === "" || action === "") return undefined
  if (id === undefined) return "GET, HEAD, POST"
  if (action === undefined) return "GET, HEAD, DELETE"
  if (action === "spend") return "GET, HEAD"
  return action === "disable" || action === "enable" ? "POST" : undefined
}

/** The `route` attribute of `orchestra_gateway_admin_requests_total`. */
type AdminRoute =
  | "keys_create"
  | "keys_list"
  | "key"
  | "key_delete"
  | "key_disable"
  | "key_enable"
  | "key_spend"
  | "other"

/**
 * Adds the admin routes to the `HttpRouter` in context, over the `KeyAdmin` in context.
 * Invalid options fail with an `OptionError` naming the field.
 *
 * @since 0.2.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (options: Options) {
  const [sha256, path, maxBodyBytes] = yield* Input.orOptionError(check(options))
  const store = yield* KeyAdmin
  const nextId = makeIds()
  const router = yield* HttpRouter.HttpRouter

  const authorized = (request: HttpServerRequest.HttpServerRequest): Effect.Effect<void, GatewayError> => {
    const match = bearerPattern.exec(request.headers.authorization ?? "")
    return match !== null && matches(Redacted.make(match[1]!), sha256)
      ? Effect.void
      : Effect.fail(
          gatewayError("Unauthorized", "This route needs the admin key: 'Authorization: Bearer <admin key>'", {
            code: "invalid_admin_key"
          })
        )
  }

  const tooLarge = () => gatewayError("TooLarge", `the request body is larger than ${maxBodyBytes} bytes`)
  const readBody = (request: HttpServerRequest.HttpServerRequest): Effect.Effect<unknown, GatewayError> =>
    // A declared length over the bound is refused at once, as on the gateway's routes, not after reading up to it.
    Number(request.headers["content-length"]) > maxBodyBytes
      ? Effect.fail(tooLarge())
      : request.arrayBuffer.pipe(
          Effect.provideService(HttpIncomingMessage.MaxBodySize, ByteSize.bytes(maxBodyBytes)),
          Effect.mapError((error) =>
            error.reason._tag === "RequestParseError" && error.reason.reason === "BodyTooLarge"
              ? tooLarge()
              : gatewayError("InvalidRequest", "the request body could not be read", { param: "body" })
          ),
          Effect.flatMap((bytes) => Effect.fromResult(jsonOf(bytes)))
        )

  // One series per (route, status): `route` names a declared route, never the path asked for.
  // Counters of the routes' scope, made at the first answer of each: they leave the registry with
  // the routes (`Metric.update` kept them in it for good, and a rebuilt gateway added onto them).
  const scope = yield* Effect.scope
  const series = new Map<string, Counters.Counter>()
  const count = (route: AdminRoute, status: number): Effect.Effect<void> => {
    const name = `${route} ${status}`
    const counter = series.get(name)
    if (counter !== undefined) return Effect.sync(() => counter.add(1))
    const attributes = { route, status: String(status) }
    return Effect.map(
      Scope.provide(Counters.scoped(Metrics.gatewayAdminRequests as Metric.Metric<number, unknown>, attributes), scope),
      (made) => {
        // Two first answers at once share one counter (series of one id are shared).
        if (!series.has(name)) series.set(name, made)
        made.add(1)
      }
    )
  }

  // Every route: the admin key first, then the handler; every failure an OpenAI-shaped answer;
  // every answer counted (a defect as the router's 500, a client that left as 499).
  const route =
    (
      name: AdminRoute,
      handler: (
        request: HttpServerRequest.HttpServerRequest,
        id: string
      ) => Effect.Effect<HttpServerResponse.HttpServerResponse, GatewayError>
    ) =>
    (request: HttpServerRequest.HttpServerRequest) =>
      Effect.flatMap(HttpRouter.params, (params) => {
        const id = nextId("req_")
        return authorized(request).pipe(
          Effect.andThen(handler(request, params.id ?? "")),
          Effect.catch((error: GatewayError) => Effect.succeed(answerError(error))),
          // A defect is answered as the gateway's routes answer one (the router's own 500 has no body).
          Effect.catchCause((cause) =>
            Cause.hasInterruptsOnly(cause)
              ? Effect.failCause(cause)
              : Effect.as(
                  Effect.logError("gateway: unexpected failure of an admin route", Cause.pretty(cause)).pipe(
                    Effect.annotateLogs("request_id", id)
                  ),
                  answerError(gatewayError("Internal", "the gateway failed unexpectedly"))
                )
          ),
          Effect.map((response) => HttpServerResponse.setHeader(response, requestIdHeader, id)),
          Effect.onExit((exit) =>
            count(name, Exit.isSuccess(exit) ? exit.value.status : Cause.hasInterruptsOnly(exit.cause) ? 499 : 500)
          )
        )
      })

  const keyBody = (key: KeyInfo) => ({ object: "key", ...key })

  // Each GET route answers HEAD too (Node sends no body for it): the router's own HEAD-as-GET applies only where
  // no route takes HEAD, and the wildcard below takes every method.
  const get = (
    path: `/${string}`,
    handler: (
      request: HttpServerRequest.HttpServerRequest
    ) => Effect.Effect<HttpServerResponse.HttpServerResponse, never, HttpRouter.RouteContext>
  ) => [HttpRouter.route("GET", path, handler), HttpRouter.route("HEAD", path, handler)] as const

  const routes = [
    HttpRouter.route(
      "POST",
      `${path}/keys`,
      route("keys_create", (request) =>
        readBody(request).pipe(
          Effect.flatMap(store.create),
          Effect.map((created) =>
            json(
              201,
              { ...keyBody(created.key), secret: Redacted.value(created.secret) },
              { "cache-control": "no-store" }
            )
          )
        )
      )
    ),
    ...get(
      `${path}/keys`,
      route("keys_list", (request) =>
        Effect.flatMap(listOptions(request.url), (options) =>
          Effect.map(store.list(options), (page) => {
            const data = page.data.map(keyBody)
            const ends = data.length === 0 ? {} : { first_id: data[0]!.id, last_id: data.at(-1)!.id }
            const incomplete = page.incomplete === true ? { incomplete: true } : {}
            return json(200, { object: "list", data, has_more: page.hasMore, ...ends, ...incomplete })
          })
        )
      )
    ),
    ...get(
      `${path}/keys/:id`,
      route("key", (_, id) => Effect.map(store.get(id), (key) => json(200, keyBody(key))))
    ),
    HttpRouter.route(
      "DELETE",
      `${path}/keys/:id`,
      route("key_delete", (_, id) => Effect.as(store.delete(id), json(200, { id, object: "key", deleted: true })))
    ),
    HttpRouter.route(
      "POST",
      `${path}/keys/:id/disable`,
      route("key_disable", (_, id) => Effect.map(store.setDisabled(id, true), (key) => json(200, keyBody(key))))
    ),
    HttpRouter.route(
      "POST",
      `${path}/keys/:id/enable`,
      route("key_enable", (_, id) => Effect.map(store.setDisabled(id, false), (key) => json(200, keyBody(key))))
    ),
    ...get(
      `${path}/keys/:id/spend`,
      route("key_spend", (_, id) =>
        Effect.map(store.spend(id), (budgets) => json(200, { object: "spend", id, budgets }))
      )
    ),
    HttpRouter.route(
      "*",
      `${path}/*`,
      route("other", (request) => {
        const url = request.url.split("?")[0]!
        const allow = allowed(url.slice(path.length))
        if (allow === undefined)
          return Effect.fail(gatewayError("NotFound", "No such admin route", { code: "not_found" }))
        // A method the path's route takes reaches this one only when the router did not take the id: longer than its
        // parameters may be (100 characters), so no key's (at most 64).
        if (allow.split(", ").includes(request.method)) {
          const id = url.slice(path.length).split("/")[2] ?? ""
          return Effect.fail(
            gatewayError("NotFound", `No key with the id "${clip(id)}"`, { param: "id", code: "key_not_found" })
          )
        }
        const refused = gatewayError(
          "MethodNotAllowed",
          `${request.method} is not allowed on ${clip(url)}: use ${allow}`,
          {
            status: 405
          }
        )
        return Effect.succeed(HttpServerResponse.setHeader(answerError(refused), "allow", allow))
      })
    )
  ]
  // The router throws when a route is already declared (the gateway's `/v1/*` under `path: "/v1"`):
  // a wrong option, not a defect of the server.
  yield* router.addAll(routes).pipe(
    Effect.catchDefect((defect) =>
      Effect.fail(
        Input.toOptionError({
          path: "path",
          message: `expected a path of the admin routes' own: "${path}" collides with routes already on the router (the gateway's prefix, health or metrics paths): ${Input.thrownMessage(defect)}`
        })
      )
    )
  )
})

/**
 * The admin routes as a layer beside the gateway's, on the same `HttpRouter`.
 *
 * @example
 * ```ts
 * import { Redacted } from "effect"
 * import * as Gateway from "effect-orchestra/Gateway"
 *
 * // Beside Gateway.layer, with a KeyStore layer providing KeyAdmin.
 * export const admin = Gateway.Admin.layer({ key: Redacted.make("an admin key of 16+ characters") })
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<never, Input.OptionError, HttpRouter.HttpRouter | KeyAdmin> =>
  Layer.effectDiscard(make(options))
