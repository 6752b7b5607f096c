/**
 * The routes that call no model: `GET /v1/models` (the domains, and each provider's
 * default model as `provider/model`, filtered by what the key may use, and the
 * `provider/model` names of the key's `allowedModels`), `GET
 * /v1/models/{id}`, `/healthz` (the process is up), `/readyz` (it takes requests: 503 once
 * draining), `/metrics` (Prometheus text, behind a bearer token with `metricsToken`), and
 * OpenAI-shaped 404 / 405 answers for the rest of the gateway's paths.
 *
 * @internal
 */
import { Effect } from "effect"
import { HttpRouter, type HttpServerRequest, HttpServerResponse } from "effect/http"
import * as Prometheus from "../Prometheus.js"
import { clip } from "./checks.js"
import { type GatewayError, gatewayError } from "./errors.js"
import { matches } from "./keys/secret.js"
import {
  allows,
  answered,
  authenticate,
  bearerOf,
  type Env,
  failure,
  json,
  type KeyIdentity,
  orInternalError
} from "./routes.js"
import { maxModelLength } from "./request.js"
import { millis } from "./upstream.js"
import * as Wire from "./response.js"

const decodes = (path: string): boolean => {
  try {
    decodeURI(path)
    return true
  } catch {
    return false
  }
}

/**
 * @internal
 */
export const make = (env: Env) => {
  const { upstream, clock, lifecycle, options } = env

  const providerNames = new Set(upstream.providers.map((provider) => provider.name))

  const entries = (key: KeyIdentity | undefined) => {
    const out: Array<ReturnType<typeof Wire.modelEntry>> = []
    const listed = new Set<string>()
    const add = (id: string, owner: string) => {
      if (listed.has(id)) return
      listed.add(id)
      out.push(Wire.modelEntry(id, owner))
    }
    for (const domain of upstream.domains) {
      if (allows(key, domain.name)) add(domain.name, "orchestra")
    }
    for (const provider of upstream.providers) {
      const id = `${provider.name}/${provider.defaultModel}`
      if (allows(key, id)) add(id, provider.name)
    }
    // The provider models a key names are models it may use, though not their providers' defaults.
    for (const name of key?.allowedModels ?? []) {
      const slash = name.indexOf("/")
      if (slash <= 0 || name.endsWith("/*") || listed.has(name)) continue
      const provider = name.slice(0, slash)
      if (providerNames.has(provider)) add(name, provider)
    }
    return out
  }

  const withKey = <R>(
    request: HttpServerRequest.HttpServerRequest,
    f: (key: KeyIdentity | undefined) => Effect.Effect<HttpServerResponse.HttpServerResponse, GatewayError, R>
  ) =>
    Effect.suspend(() => {
      const started = millis(clock)
      return Effect.flatMap(authenticate(env, request), f).pipe(
        Effect.catch((error: GatewayError) => Effect.succeed(failure(env, error))),
        Effect.map((response) => answered(env, "models", started, response, undefined)),
        // A defect (a key store's bug) is answered as the model routes answer one, not as the router's empty 500.
        orInternalError(env, "models", started)
      )
    })

  const models = (request: HttpServerRequest.HttpServerRequest) =>
    withKey(request, (key) => Effect.succeed(json(200, JSON.stringify({ object: "list", data: entries(key) }))))

  const model = (request: HttpServerRequest.HttpServerRequest) =>
    withKey(request, (key) =>
      Effect.flatMap(HttpRouter.params, (params) => {
        const id = params["*"] ?? ""
        const found = entries(key).find((entry) => entry.id === id)
        if (found !== undefined) return Effect.succeed(json(200, JSON.stringify(found)))
        const missing = gatewayError("NotFound", `The model "${id.slice(0, 64)}" does not exist`, {
          param: "model",
          code: "model_not_found"
        })
        // A `provider/model` that chat serves though no list names it (not a provider's default).
        if (id.length > maxModelLength || !allows(key, id)) return Effect.fail(missing)
        return Effect.matchEffect(upstream.resolve(id), {
          onFailure: () => Effect.fail(missing),
          onSuccess: (target) =>
            target._tag === "Provider"
              ? Effect.succeed(json(200, JSON.stringify(Wire.modelEntry(id, target.provider.name))))
              : Effect.fail(missing)
        })
      })
    )

  const health = Effect.sync(() => answered(env, "health", millis(clock), json(200, '{"status":"ok"}'), undefined))

  const ready = Effect.map(env.executor.isShuttingDown, (closing) =>
    answered(
      env,
      "health",
      millis(clock),
      closing || lifecycle.isDraining()
        ? json(503, '{"status":"draining"}', { "retry-after": "1", "retry-after-ms": "1000" })
        : json(200, `{"status":"ready","inFlight":${lifecycle.inFlight()}}`),
      undefined
    )
  )

  const scrape = Effect.sync(() =>
    answered(
      env,
      "metrics",
      millis(clock),
      HttpServerResponse.text(env.metricsText(), { contentType: Prometheus.contentType }),
      undefined
    )
  )

  const tokenSha256 = options.metricsTokenSha256
  const metricsRefused = gatewayError(
    "Unauthorized",
    "This route needs the metrics token: 'Authorization: Bearer <metrics token>'",
    { code: "invalid_metrics_token" }
  )
  // RFC 6750: a challenge without an error code to a request that sent no credentials.
  const challenge = 'Bearer realm="metrics"'
  const invalidToken = `${challenge}, error="invalid_token"`

  const metrics =
    tokenSha256 === undefined
      ? scrape
      : (request: HttpServerRequest.HttpServerRequest) =>
          matches(bearerOf(request), tokenSha256)
            ? scrape
            : Effect.sync(() =>
                answered(
                  env,
                  "metrics",
                  millis(clock),
                  failure(env, metricsRefused, {
                    "www-authenticate": request.headers.authorization === undefined ? challenge : invalidToken
                  }),
                  undefined
                )
              )

  // Every path the gateway serves, so that another method on it is a 405 naming the right one, not a 404.
  const known = new Map<string, string>([
    [`${options.prefix}/chat/completions`, "POST"],
    [`${options.prefix}/embeddings`, "POST"],
    [`${options.prefix}/models`, "GET, HEAD"]
  ])
  for (const path of [options.livePath, options.readyPath, options.metricsPath]) {
    if (path !== undefined) known.set(path, "GET, HEAD")
  }
  const modelPath = `${options.prefix}/models/`

  const fallback = (request: HttpServerRequest.HttpServerRequest) =>
    Effect.sync(() => {
      const path = request.url.split("?")[0]!
      // The router serves a route's path with a trailing slash too.
      const route = path.length > 1 && path.endsWith("/") ? path.slice(0, -1) : path
      const method =
        known.get(route) ?? (route.length > modelPath.length && route.startsWith(modelPath) ? "GET, HEAD" : undefined)
      // The client's path said back clipped, as its other values are.
      const said = clip(path)
      const error =
        method !== undefined
          ? gatewayError("MethodNotAllowed", `${request.method} is not allowed on ${said}: use ${method}`, {
              status: 405
            })
          : gatewayError("NotFound", `no route ${request.method} ${said}`, { code: "unknown_url" })
      const answer = failure(env, error)
      return answered(
        env,
        "other",
        millis(clock),
        method === undefined ? answer : HttpServerResponse.setHeader(answer, "allow", method),
        undefined
      )
    })

  // The router finds no route for a path whose escapes do not decode (`%ZZ`, a cut UTF-8 sequence): under the
  // gateway's own server that is the only path no route takes.
  const unroutable = (request: HttpServerRequest.HttpServerRequest) => {
    const path = request.url.split("?")[0]!
    if (decodes(path)) return fallback(request)
    return Effect.sync(() =>
      answered(
        env,
        "other",
        millis(clock),
        failure(
          env,
          gatewayError(
            "InvalidRequest",
            `the path ${clip(path)} is not valid percent-encoding: each % must begin an escape of UTF-8 bytes, such as %2F`,
            { code: "invalid_url" }
          )
        ),
        undefined
      )
    )
  }

  return { models, model, health, ready, metrics, fallback, unroutable }
}
