/**
 * What every route shares: the environment, the key check, the bounded body read, the
 * error answer (OpenAI-shaped, counted by reason), the metrics of an answer, and spans
 * with `gen_ai.*` attributes when the server is traced.
 *
 * @internal
 */
import { Cause, Clock, type Duration, Effect, Exit, Fiber, Option, Redacted, Scope, type Tracer } from "effect"
import * as ByteSize from "effect/ByteSize"
import { HttpIncomingMessage, HttpServerError, type HttpServerRequest, HttpServerResponse } from "effect/http"
import type { AiError } from "../AiError.js"
import type { Models } from "../Gateway.js"
import type { OptionError } from "../Input.js"
import type { Service as ExecutorService } from "../Executor.js"
import type { RetryPolicy } from "../Policy.js"
import { type GatewayError, gatewayError, toWire, withheldMessage } from "./errors.js"
import { shown } from "./checks.js"
import { jsonOf } from "./request.js"
import type { Entry, Lifecycle } from "./lifecycle.js"
import type { GatewayMetrics, Route } from "./metrics.js"
import type { Resolved } from "./options.js"
import { millis, type Upstream } from "./upstream.js"
import { endSpan, isTraced } from "../policy/span.js"

/**
 * The identity a key store gives a request's key (the `KeyContext` of the key store,
 * read structurally: the gateway needs only these fields).
 *
 * @internal
 */
export interface KeyIdentity {
  readonly id: string
  /** Domains or `provider/model` names (`provider/*` for all of a provider's); absent: every model. */
  readonly allowedModels?: ReadonlyArray<string> | undefined
  /**
   * The budgets of `gateway/keys` (the key's, its team's, its own by model): a request charged
   * to one is sent with the output it reserved as its `max_tokens`.
   */
  readonly budgets?:
    | {
        readonly key?: unknown
        readonly team?: unknown
        readonly models?: { readonly [model: string]: unknown } | undefined
      }
    | undefined
}

/**
 * What the gateway needs of the key store (`gateway/keys`): authenticate, then reserve
 * before a call and settle (or release) after it.
 *
 * @internal
 */
export interface Keys<K extends KeyIdentity = KeyIdentity, R = unknown> {
  readonly authenticate: (bearer: Redacted.Redacted<string> | undefined) => Effect.Effect<K, GatewayError>
  readonly reserve: (
    key: K,
    model: string,
    estimate: { readonly inputTokens: number; readonly maxOutputTokens: number },
    onHeld?: ((reservation: R) => void) | undefined
  ) => Effect.Effect<R, GatewayError>
  readonly settle: (
    reservation: R,
    usage: { readonly inputTokens: number; readonly outputTokens: number }
  ) => Effect.Effect<void>
  readonly release: (reservation: R) => Effect.Effect<void>
  /**
   * Whether one of `key`'s budgets by model is charged for a request on `model`, as `reserve` decides it
   * (`gateway/keys` looks it up in its index of the key's budgets); `undefined` for a key it did not give.
   * Without it, or with `undefined`, the gateway checks `key.budgets.models` against the names it serves.
   */
  readonly chargesModel?: ((key: K, model: string) => boolean | undefined) | undefined
  /** The names the gateway serves, told as it starts: a key store refuses names of its configuration that match none. */
  readonly useModels?: ((models: Models) => Effect.Effect<void, OptionError>) | undefined
  /** Keeps the reservations of running requests held (see `Gateway.KeyStoreService`). */
  readonly renew?:
    | {
        readonly every: Duration.Duration
        readonly run: (reservations: ReadonlyArray<R>) => Effect.Effect<void>
      }
    | undefined
}

/**
 * @internal
 */
export interface Env {
  readonly options: Resolved
  readonly executor: ExecutorService
  readonly upstream: Upstream
  readonly keys: Keys | undefined
  readonly metrics: GatewayMetrics
  readonly lifecycle: Lifecycle
  readonly clock: Clock.Clock
  /** Retries of `provider/model` calls: `true` for the executor's policy, `undefined` for none. */
  readonly retry: RetryPolicy | true | undefined
  /** The Prometheus text of the gateway's registry. */
  readonly metricsText: () => string
  /** A fresh id for an answer (`chatcmpl-...`). */
  readonly nextId: (prefix: string) => string
  /** The reservations of the requests running, kept held by the key store's `renew`. */
  readonly held: Set<unknown>
}

/**
 * A JSON answer.
 *
 * @internal
 */
export const json = (
  status: number,
  body: string,
  headers?: Record<string, string>
): HttpServerResponse.HttpServerResponse =>
  HttpServerResponse.text(body, { status, contentType: "application/json", headers })

const challenge = 'Bearer realm="orchestra"'

/**
 * The answer to a failure, counted under its reason.
 *
 * @internal
 */
export const failure = (
  env: Env,
  error: AiError | GatewayError,
  extraHeaders?: Record<string, string>
): HttpServerResponse.HttpServerResponse => {
  const wire = toWire(error)
  env.metrics.failed(wire.reason)
  const headers: Record<string, string> = { ...extraHeaders }
  // HTTP requires a 401 to say how to authenticate (`/metrics` gives its own).
  if (wire.status === 401) headers["www-authenticate"] ??= challenge
  if (wire.retryAfterSeconds !== undefined) headers["retry-after"] = String(wire.retryAfterSeconds)
  if (wire.retryAfterMs !== undefined) headers["retry-after-ms"] = String(wire.retryAfterMs)
  if (wire.shouldRetry === false) headers["x-should-retry"] = "false"
  return json(wire.status, JSON.stringify(wire.body), headers)
}

/**
 * Logs, as a warning, the whole message of a failure whose answer leaves part of it out (an
 * upstream's address, account or page: see `clientMessage`), so that the operator still reads it,
 * under the request id the client was answered with (its `x-request-id`).
 *
 * @internal
 */
export const logWithheld = (error: AiError | GatewayError, requestId: string): Effect.Effect<void> => {
  const message = withheldMessage(error)
  return message === undefined
    ? Effect.void
    : Effect.logWarning("gateway: a failed request, answered without the upstream's own message", message).pipe(
        Effect.annotateLogs("request_id", requestId)
      )
}

/**
 * The header naming an answer (`req_<process>_<n>`-like, unique across replicas), which the
 * official clients read as `_request_id` and the gateway's log lines about the request carry.
 * An id the client sends is not echoed: it may be anything, and need not be unique.
 *
 * @internal
 */
export const requestIdHeader = "x-request-id"

/**
 * Records an answer (its status, duration, and gateway share when known) and returns it,
 * named by a request id ({@link requestIdHeader}): `id` when the request has one already.
 *
 * @internal
 */
export const answered = (
  env: Env,
  route: Route,
  started: number,
  response: HttpServerResponse.HttpServerResponse,
  upstreamMs: number | undefined,
  id?: string | undefined
): HttpServerResponse.HttpServerResponse => {
  const elapsed = millis(env.clock) - started
  env.metrics.answered(route, response.status, elapsed, upstreamMs === undefined ? undefined : elapsed - upstreamMs)
  return HttpServerResponse.setHeader(response, requestIdHeader, id ?? env.nextId("req_"))
}

/**
 * The answer while draining: 503, and the connection closed after it.
 *
 * @internal
 */
export const draining = (env: Env): HttpServerResponse.HttpServerResponse =>
  failure(env, gatewayError("Unavailable", "the gateway is shutting down", { code: "shutting_down" }), {
    connection: "close"
  })

const bearerPattern = /^Bearer[ \t]+(\S+)[ \t]*$/i

/**
 * The request's key: `Authorization: Bearer <key>` (the secret is wrapped at once).
 *
 * @internal
 */
export const bearerOf = (request: HttpServerRequest.HttpServerRequest): Redacted.Redacted<string> | undefined => {
  const header = request.headers.authorization
  if (header === undefined) return undefined
  const match = bearerPattern.exec(header)
  return match === null ? undefined : Redacted.make(match[1]!)
}

/**
 * Authenticates a request: its key's identity, or `undefined` for an open gateway.
 *
 * @internal
 */
export const authenticate = (
  env: Env,
  request: HttpServerRequest.HttpServerRequest
): Effect.Effect<KeyIdentity | undefined, GatewayError> =>
  env.keys === undefined ? Effect.succeed(undefined) : env.keys.authenticate(bearerOf(request))

/**
 * Whether a key may use a model: listed, or its provider listed as `provider/*`, or `*`.
 *
 * @internal
 */
export const allows = (key: KeyIdentity | undefined, model: string): boolean => {
  const allowed = key?.allowedModels
  if (allowed === undefined) return true
  for (const entry of allowed) {
    if (entry === "*" || entry === model) return true
    if (entry.endsWith("/*") && model.startsWith(entry.slice(0, -1))) return true
  }
  return false
}

/**
 * Refuses a model the key may not use (403).
 *
 * @internal
 */
export const checkAllowed = (key: KeyIdentity | undefined, model: string): Effect.Effect<void, GatewayError> =>
  allows(key, model) ? Effect.void : notAllowed(model)

/**
 * The 403 of a model the key may not use.
 *
 * @internal
 */
export const notAllowed = (model: string): Effect.Effect<never, GatewayError> =>
  Effect.fail(
    gatewayError("Forbidden", `this key may not use the model "${model}"`, {
      param: "model",
      code: "model_not_allowed"
    })
  )

// `application/json` and its parameters (`; charset=utf-8`), in any case.
const jsonType = /^[ \t]*application\/json[ \t]*(?:;|$)/i

// A body of another type is refused unread: a web page may post `text/plain`, a form or a Blob without a type to
// the gateway without asking first (no CORS preflight), and an open gateway on loopback would serve any site its
// user visits. A body encoded (gzip) would be read as its compressed bytes.
const unsupported = (headers: HttpServerRequest.HttpServerRequest["headers"]): GatewayError | undefined => {
  const type = headers["content-type"]
  if (type === undefined || !jsonType.test(type)) {
    return gatewayError(
      "InvalidRequest",
      `the request body is sent as Content-Type: application/json, got ${type === undefined ? "none" : shown(type)}`,
      { status: 415, code: "unsupported_content_type" }
    )
  }
  const encoding = headers["content-encoding"]
  if (encoding !== undefined && encoding.trim().toLowerCase() !== "identity") {
    return gatewayError(
      "InvalidRequest",
      `the request body is sent without a Content-Encoding, got ${shown(encoding)}`,
      { status: 415, code: "unsupported_content_encoding" }
    )
  }
  return undefined
}

/**
 * Reads the body as JSON, at most `maxBodyBytes` (413 beyond; 400 when it is not JSON; 415 when it is
 * not sent as `application/json`).
 *
 * @internal
 */
export const readJson = (
  env: Env,
  request: HttpServerRequest.HttpServerRequest
): Effect.Effect<unknown, GatewayError> => {
  const headers = request.headers
  const refused = unsupported(headers)
  if (refused !== undefined) return Effect.fail(refused)
  // A declared length over the bound is refused at once, not after waiting for a body never read.
  return Number(headers["content-length"]) > env.options.maxBodyBytes
    ? Effect.fail(tooLarge(env))
    : readBody(env, request)
}

const tooLarge = (env: Env) =>
  gatewayError("TooLarge", `the request body is larger than ${env.options.maxBodyBytes} bytes`)

const readBody = (env: Env, request: HttpServerRequest.HttpServerRequest): Effect.Effect<unknown, GatewayError> =>
  request.arrayBuffer.pipe(
    Effect.provideService(HttpIncomingMessage.MaxBodySize, ByteSize.bytes(env.options.maxBodyBytes)),
    Effect.mapError((error) =>
      error.reason._tag === "RequestParseError" && error.reason.reason === "BodyTooLarge"
        ? tooLarge(env)
        : gatewayError("InvalidRequest", "the request body could not be read", { param: "body" })
    ),
    Effect.flatMap((bytes) => Effect.fromResult(jsonOf(bytes)))
  )

/**
 * The error of a failed exit, or the cause re-raised (an interruption, a defect).
 *
 * @internal
 */
export const errorOf = <E>(cause: Cause.Cause<E>): Effect.Effect<E, never> =>
  Option.match(Cause.findErrorOption(cause), {
    onNone: () => Effect.failCause(cause as Cause.Cause<never>),
    onSome: Effect.succeed
  })

/**
 * The span of a model request, which the request ends when its answer is known: a stream's
 * when its body ends (after the route's effect has returned), a failure answered with a
 * status as the error it is.
 *
 * @internal
 */
export interface RequestSpan {
  readonly span: Tracer.Span
  /** Ends the span with the request's outcome (once; later calls do nothing). */
  readonly end: (exit: Exit.Exit<unknown, AiError>) => void
}

/**
 * `effect` in a span named `name` with `attributes` when the server is traced (a parent
 * span exists); as is otherwise, so untraced servers pay nothing for it. `effect` ends the
 * span ({@link RequestSpan}); a failure or an interruption of `effect` ends it here.
 *
 * @internal
 */
export const traced = <A, E extends AiError, R>(
  name: string,
  attributes: Record<string, unknown>,
  effect: (span: RequestSpan | undefined) => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) => {
    if (!isTraced(fiber)) return effect(undefined)
    const clock = fiber.getRef(Clock.Clock)
    return Effect.flatMap(Effect.makeSpan(name, { attributes, kind: "internal" }), (span) => {
      const request: RequestSpan = { span, end: (exit) => endSpan(span, clock, exit) }
      return Effect.onExit(Effect.withParentSpan(effect(request), span, { captureStackTrace: false }), (exit) => {
        if (Exit.isFailure(exit)) request.end(exit)
        return Effect.void
      })
    })
  })

/**
 * Runs `finalizer` when the request's scope ends. Unlike `Effect.addFinalizer`, it does not
 * capture the caller's context to provide it again at the end: that merges two copies of
 * the request's context (~55 services) once a request.
 *
 * @internal
 */
export const onRequestEnd = (finalizer: Effect.Effect<void>): Effect.Effect<void, never, Scope.Scope> =>
  Effect.flatMap(Effect.scope, (scope) => Scope.addFinalizer(scope, finalizer))

/**
 * Runs a stage of a request (the request up to its call, then the call) in a child fiber
 * the drain can cut (its answer is then 503 `shutting_down`); the client leaving
 * interrupts it with the request, and waits for it. Once the stage ends nothing is cut
 * any more: after its call, a request's answer is ready and only its settling is left.
 *
 * @internal
 */
export const cuttable = <A, E, R>(
  entry: Entry,
  effect: Effect.Effect<A, E, R>
): Effect.Effect<Exit.Exit<A, E>, never, R> =>
  Effect.flatMap(Effect.forkChild(effect, { startImmediately: true }), (fiber) => {
    entry.fiber = fiber
    return Fiber.await(fiber).pipe(
      Effect.onInterrupt(() => Fiber.interrupt(fiber)),
      Effect.map((exit) => {
        entry.fiber = undefined
        return exit
      })
    )
  })

/**
 * A defect of a route (a bug) answered as an OpenAI-shaped 500 and logged, instead of an
 * empty 500; an interruption (the client left, the server closes) passes through.
 *
 * @internal
 */
export const orInternalError =
  (env: Env, route: Route, started: number) =>
  <E, R>(
    effect: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>
  ): Effect.Effect<HttpServerResponse.HttpServerResponse, E, R> =>
    Effect.catchCause(effect, (cause) => {
      if (Cause.hasInterruptsOnly(cause) || Option.isSome(Cause.findErrorOption(cause))) {
        return Effect.failCause(cause)
      }
      const id = env.nextId("req_")
      return Effect.as(
        Effect.logError("gateway: unexpected failure", Cause.pretty(cause)).pipe(Effect.annotateLogs("request_id", id)),
        answered(
          env,
          route,
          started,
          failure(env, gatewayError("Internal", "the gateway failed unexpectedly")),
          undefined,
          id
        )
      )
    })

// The server interrupts a request whose connection closed with this annotation (a shutdown does not).
const clientLeft = (cause: Cause.Cause<unknown>): boolean =>
  Cause.hasInterruptsOnly(cause) &&
  cause.reasons.some((reason) => reason._tag === "Interrupt" && reason.annotations.has(HttpServerError.ClientAbort.key))

/**
 * A model route's handler around its work: admitted by the lifecycle (503 while draining),
 * every failure answered and counted, a defect answered as a 500. The request leaves the
 * lifecycle when its answer is ready, or, for a streamed answer, when the body ends (the
 * work leaves it then). A request its client left before the answer is counted as 499.
 *
 * @internal
 */
export const handler =
  (
    env: Env,
    route: Route,
    handle: (
      request: HttpServerRequest.HttpServerRequest,
      started: number,
      entry: Entry
    ) => Effect.Effect<HttpServerResponse.HttpServerResponse, AiError | GatewayError, Scope.Scope>
  ) =>
  (
    request: HttpServerRequest.HttpServerRequest
  ): Effect.Effect<HttpServerResponse.HttpServerResponse, never, Scope.Scope> =>
    Effect.suspend(() => {
      const started = millis(env.clock)
      const entry = env.lifecycle.enter()
      if (entry === undefined) return Effect.succeed(answered(env, route, started, draining(env), undefined))
      // The whole request is cuttable until its call starts: one still reading its body (or
      // waiting on the key store) at the drain's deadline is answered 503 at once (one reading
      // its body loses its connection with the read: the rest of the body cannot be read).
      return cuttable(entry, handle(request, started, entry)).pipe(
        Effect.flatMap((exit) =>
          Exit.isSuccess(exit)
            ? Effect.succeed(exit.value)
            : entry.cut && Cause.hasInterruptsOnly(exit.cause)
              ? Effect.succeed(answered(env, route, started, draining(env), undefined))
              : Effect.failCause(exit.cause)
        ),
        Effect.catch((error: AiError | GatewayError) =>
          Effect.succeed(answered(env, route, started, failure(env, error), 0))
        ),
        orInternalError(env, route, started),
        Effect.onExit((exit) => {
          if (Exit.isFailure(exit) || exit.value.body._tag !== "Stream") env.lifecycle.leave(entry)
          if (Exit.isFailure(exit) && clientLeft(exit.cause)) {
            env.metrics.failed("ClientClosed")
            env.metrics.answered(route, 499, millis(env.clock) - started, undefined)
          }
          return Effect.void
        })
      )
    })
