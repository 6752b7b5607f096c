/**
 * The HTTP client of a provider, on `effect/http`'s `HttpClient`: every failure mapped to a
 * typed `ModelError` at this boundary, every body bounded, every call bounded in time, every
 * connection released when its call or stream ends or is interrupted, and no secret in a
 * span: the client span is ours, ended with the scrubbed error (see {@link spanHeaderAllowList}).
 *
 * ```ts
 * const client = yield* Client.make(settings, options.transformClient)
 * const answer = yield* client.json(request, Decode.valueDecoder(Answer), ctx) // generate, embed
 * const events = client.sse(request, ctx) // then Assemble.assemble(events, ...)
 * ```
 *
 * @since 0.2.0
 */
import { Clock, Context, Effect, type Exit, Option, Result, Scope, Stream, Tracer } from "effect"
import { constTrue } from "effect/Function"
import {
  FetchHttpClient,
  Headers,
  HttpClient,
  HttpClientError,
  HttpClientRequest,
  type HttpClientResponse,
  HttpTraceContext as TraceContext,
  Url,
  UrlParams
} from "effect/http"
import { ModelError, type TimeoutError } from "../../AiError.js"
import * as Input from "../../Input.js"
import { bodyBytes, boundBytes, isJsonType, mediaType, readPrefix, readText } from "./body.js"
import type { Decoder } from "./decode.js"
import { parseJson } from "./decode.js"
import {
  type CallContext,
  errorFromPayload,
  errorFromStatus,
  isErrorPayload,
  malformed,
  parseJsonOrUndefined,
  requestTimeout,
  scrubbedHead,
  transportError
} from "./errors.js"
import { values } from "./ndjson.js"
import * as Deadline from "../../policy/deadline.js"
import { reachesTracer, tracedStream } from "../../policy/span.js"
import type { Settings } from "./options.js"
import { type Event, events } from "./sse.js"

/**
 * The `gen_ai.*` attributes of a provider operation's span (`chat`, `embeddings`).
 *
 * @internal
 */
export const spanAttributes = (provider: string, operation: string, model: string) => ({
  "gen_ai.provider.name": provider,
  "gen_ai.operation.name": operation,
  "gen_ai.request.model": model
})

/**
 * A provider operation (`generate`, `embed`) in a span named `name` when a tracer would
 * receive it, and as is otherwise. `Effect.fn` costs each call a captured stack, a span and a
 * stack frame that annotates every failure and interruption under it (~10 µs of CPU a call
 * in a gateway profile) even with tracing off; write the body with `Effect.fnUntraced`.
 *
 * @since 0.2.0
 * @category tracing
 */
export const operation =
  <Args extends ReadonlyArray<unknown>, A, E, R>(name: string, body: (...args: Args) => Effect.Effect<A, E, R>) =>
  (...args: Args): Effect.Effect<A, E, R> =>
    Effect.withFiber((fiber) => (reachesTracer(fiber) ? Effect.withSpan(body(...args), name) : body(...args)))

/**
 * {@link operation} for a provider's stream: the span (named `name`, with the provider's
 * name) covers the whole stream when a tracer would receive it. `Stream.withSpan` alone
 * captures a stack for every stream, traced or not.
 *
 * @since 0.2.0
 * @category tracing
 */
export const streamOperation = <A, E, R>(
  name: string,
  provider: string,
  stream: Stream.Stream<A, E, R>
): Stream.Stream<A, E, R> => tracedStream(name, stream, { "gen_ai.provider.name": provider })

/**
 * Headers whose values may appear in the HTTP client's spans. Every other request and
 * response header is recorded as `<redacted>` when header capture is on
 * (`HttpClient.TracerHeaderFilter`; a response header that echoes a key included); these
 * are recorded by default.
 *
 * @since 0.2.0
 * @category constants
 */
export const spanHeaderAllowList: ReadonlyArray<string> = [
  "accept",
  "content-type",
  "content-length",
  "content-encoding",
  "transfer-encoding",
  "cache-control",
  "date",
  "server",
  "user-agent",
  "x-request-id",
  "request-id",
  "retry-after",
  "retry-after-ms",
  "openai-processing-ms",
  "openai-version"
]

const allowed: ReadonlySet<string> = new Set(spanHeaderAllowList)
const isAllowed = (name: string): boolean => allowed.has(name.toLowerCase()) || /^x-ratelimit-/i.test(name)
const escapeRegExp = (name: string): string => name.replace(/[.*+?^${}()|[\]\\-]/g, "\\$&")
/** Matches every header name outside the allow-list (`Headers.isRedactedName` takes strings and patterns). */
const notAllowed = new RegExp(
  `^(?!(?:${spanHeaderAllowList.map(escapeRegExp).join("|")}|x-ratelimit-[a-z0-9-]+)$)`,
  "i"
)

const redactedParamNames = (
  request: HttpClientRequest.HttpClientRequest,
  names: ReadonlyArray<string | RegExp>
): ReadonlyArray<string | RegExp> => {
  const redacted = request.urlParams.params.filter(([, value]) => typeof value !== "string").map(([name]) => name)
  return redacted.length === 0 ? names : [...names, ...redacted]
}

const defaultPorts: Readonly<Record<string, number>> = { "http:": 80, "https:": 443 }

/** The `url.*` and `server.*` attributes `effect/http` records, query values of redacted names hidden. */
const urlAttributes = (span: Tracer.Span, request: HttpClientRequest.HttpClientRequest, names: RedactedNames) => {
  const built = Url.make(request.url, request.urlParams, Option.getOrUndefined(request.hash))
  if (Result.isFailure(built)) return
  const url = built.success
  const redacted = redactedParamNames(request, names)
  const query = UrlParams.redactUrl(url.search, redacted).slice(1)
  span.attribute("url.full", UrlParams.redactUrl(url.href, redacted))
  span.attribute("url.path", url.pathname)
  if (query !== "") span.attribute("url.query", query)
  span.attribute("url.scheme", url.protocol.slice(0, -1))
  if (url.hostname === "") return
  span.attribute("server.address", url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname)
  const port = url.port === "" ? defaultPorts[url.protocol] : Number(url.port)
  if (port !== undefined) span.attribute("server.port", port)
}

type RedactedNames = ReadonlyArray<string | RegExp>
type HeaderFilter = (name: string, phase: "request" | "response") => boolean

const headerAttributes = (
  span: Tracer.Span,
  phase: "request" | "response",
  headers: Headers.Headers,
  filter: HeaderFilter,
  names: RedactedNames
) => {
  for (const name in headers) {
    if (!filter(name, phase)) continue
    span.attribute(`http.${phase}.header.${name}`, Headers.isRedactedName(name, names) ? "<redacted>" : headers[name])
  }
}

/**
 * `effect/http` ends its client span with the raw `HttpClientError`, and a middleware's
 * error can repeat a key (a proxy that echoes the request's headers). So the client's own
 * span is turned off for our calls and this one is opened instead: the same name, kind and
 * attributes (headers through {@link spanHeaderAllowList}), the same trace propagation and
 * the same switches (`TracerDisabledWhen`, `TracerHeaderFilter`, `SpanNameGenerator`,
 * `TracerPropagationEnabled`), ended with our scrubbed error. Like the operations' spans, it
 * is made only when a tracer would receive it.
 */
const traced = <A, R>(
  request: HttpClientRequest.HttpClientRequest,
  ctx: CallContext,
  exchange: (
    request: HttpClientRequest.HttpClientRequest,
    onResponse: ((response: HttpClientResponse.HttpClientResponse) => void) | undefined
  ) => Effect.Effect<A, ModelError, R>
): Effect.Effect<A, ModelError, R> =>
  Effect.withFiber((fiber) => {
    if (
      !reachesTracer(fiber) ||
      fiber.getRef(Tracer.DisablePropagation) ||
      fiber.getRef(HttpClient.TracerDisabledWhen)(request)
    ) {
      return exchange(request, undefined)
    }
    const names: RedactedNames = [...fiber.getRef(Headers.CurrentRedactedNames), notAllowed]
    const userFilter = fiber.getRef(HttpClient.TracerHeaderFilter)
    const filter: HeaderFilter = (name, phase) => isAllowed(name) || userFilter(name, phase)
    return Effect.useSpan(fiber.getRef(HttpClient.SpanNameGenerator)(request), { kind: "client" }, (span) => {
      span.attribute("http.request.method", request.method)
      span.attribute("gen_ai.provider.name", ctx.provider)
      if (ctx.model !== undefined) span.attribute("gen_ai.request.model", ctx.model)
      urlAttributes(span, request, fiber.getRef(UrlParams.CurrentRedactedNames))
      headerAttributes(span, "request", request.headers, filter, names)
      const sent = fiber.getRef(HttpClient.TracerPropagationEnabled)
        ? HttpClientRequest.setHeaders(request, TraceContext.toHeaders(span))
        : request
      return exchange(sent, (response) => {
        span.attribute("http.response.status_code", response.status)
        headerAttributes(span, "response", response.headers, filter, names)
        if (response.status >= 400) span.attribute("error.type", String(response.status))
      }).pipe(
        Effect.tapError((error) =>
          Effect.sync(() => {
            if (!span.attributes.has("error.type")) span.attribute("error.type", error.reason)
          })
        ),
        Effect.withParentSpan(span, { captureStackTrace: false })
      )
    })
  })

/**
 * What a provider does over HTTP.
 *
 * @since 0.2.0
 * @category models
 */
export interface Client {
  readonly settings: Settings
  /**
   * Sends a request and decodes its JSON answer. A non-2xx status fails with its typed
   * error (reason from the status, the provider's message, `retryAfter`); a 2xx answer that
   * is an error object fails with the provider's error; a body that is not JSON, or is
   * larger than `maxResponseBytes`, fails `Decode` / `TooLarge`; the whole call is bounded
   * by `timeout`. The connection is released when the call ends or is interrupted.
   */
  readonly json: <A>(
    request: HttpClientRequest.HttpClientRequest,
    decode: Decoder<A, unknown>,
    ctx: CallContext
  ) => Effect.Effect<A, ModelError | TimeoutError>
  /**
   * Sends a request and streams the server-sent events of its answer. Status errors fail
   * before any event; a 2xx answer that is not `text/event-stream` fails `Decode` on
   * `content-type` (or with the provider's error, when it is an error object); the stream's
   * bytes are bounded by `maxResponseBytes`, one event by `maxEventBytes`. The connection
   * is released when the stream ends, fails or is interrupted. No deadline of its own: the
   * idle deadline is `Assemble.assemble`'s.
   */
  readonly sse: (request: HttpClientRequest.HttpClientRequest, ctx: CallContext) => Stream.Stream<Event, ModelError>
  /** {@link sse} for newline-delimited JSON answers: the parsed value of each line. */
  readonly ndjson: (
    request: HttpClientRequest.HttpClientRequest,
    ctx: CallContext
  ) => Stream.Stream<unknown, ModelError>
}

const isOk = (status: number): boolean => status >= 200 && status < 300

const statusFailure = (
  response: HttpClientResponse.HttpClientResponse,
  ctx: CallContext
): Effect.Effect<never, ModelError> =>
  Effect.flatMap(Effect.zip(readPrefix(response, ctx), Clock.currentTimeMillis), ([text, now]) =>
    Effect.fail(errorFromStatus(response.status, response.headers, text, now, ctx, response.request))
  )

const clientFailure = (error: HttpClientError.HttpClientError, ctx: CallContext): Effect.Effect<never, ModelError> => {
  const reason = error.reason
  switch (reason._tag) {
    case "TransportError":
      return Effect.fail(transportError(reason.description ?? "connection failed", reason.cause, ctx))
    case "StatusCodeError":
      return statusFailure(reason.response, ctx)
    case "EncodeError":
    case "InvalidUrlError":
      return Effect.fail(
        new ModelError({
          reason: "InvalidRequest",
          message: `${ctx.provider}: could not build the request (${reason._tag})`,
          provider: ctx.provider,
          model: ctx.model
        })
      )
    default:
      return Effect.fail(transportError("reading the response failed", reason.cause, ctx))
  }
}

const unexpectedType = (
  response: HttpClientResponse.HttpClientResponse,
  type: string,
  expected: string,
  ctx: CallContext
): Effect.Effect<never, ModelError> =>
  Effect.flatMap(readPrefix(response, ctx), (text) => {
    const payload = isJsonType(type) ? parseJsonOrUndefined(text) : undefined
    if (isErrorPayload(payload)) return Effect.fail(errorFromPayload(payload, ctx, "answer"))
    const what = isJsonType(type) ? (payload === undefined ? "broken JSON" : "a JSON document") : "a body"
    const snippet = scrubbedHead(text.trim(), 200, ctx.secrets)
    return Effect.fail(
      malformed(ctx, "content-type", `expected ${expected}, got ${type} (${what}${snippet ? `: ${snippet}` : ""})`)
    )
  })

const ndjsonTypes: ReadonlySet<string> = new Set([
  "application/x-ndjson",
  "application/ndjson",
  "application/jsonl",
  "application/x-jsonlines",
  "application/json",
  "text/plain"
])

const isRedirect = (status: number): boolean => status >= 300 && status < 400

// A redirect a middleware could follow to another origin: a follower above this client (effect's
// `followRedirects` drops only authorization, proxy-authorization and cookie) would send the
// provider's key headers and the prompt there.
const leavesOrigin = (response: HttpClientResponse.HttpClientResponse): boolean => {
  const location = response.headers.location
  if (location === undefined) return false
  const target = Url.fromString(location, response.request.url)
  if (Result.isFailure(target)) return true
  const from = Url.fromString(response.request.url)
  return Result.isFailure(from) || target.success.origin !== from.success.origin
}

const refuseCrossOrigin = (
  response: HttpClientResponse.HttpClientResponse
): Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError> =>
  isRedirect(response.status) && leavesOrigin(response)
    ? Effect.fail(
        new HttpClientError.HttpClientError({
          reason: new HttpClientError.StatusCodeError({
            request: response.request,
            response,
            description: "a redirect to another origin is not followed"
          })
        })
      )
    : Effect.succeed(response)

/**
 * The client under the application's middleware: a response redirecting to another origin than
 * the request's (the request as it reached the wire, so after a middleware pointed it at a proxy)
 * is a failure of that request, whatever middleware above would have done with it.
 */
const sameOriginRedirects = (client: HttpClient.HttpClient): HttpClient.HttpClient =>
  HttpClient.makeWith((request) => Effect.flatMap(client.postprocess(request), refuseCrossOrigin), client.preprocess)

// The application's own middleware: a throw, or an answer that is no client, names the option instead of dying.
const transform = (
  transformClient: (client: HttpClient.HttpClient) => HttpClient.HttpClient,
  base: HttpClient.HttpClient
): Effect.Effect<HttpClient.HttpClient, Input.OptionError> => {
  let out: unknown
  try {
    out = transformClient(base)
  } catch (error) {
    return Input.orOptionError(
      Result.fail({ path: "transformClient", message: `threw: ${Input.thrownMessage(error)}`, cause: error })
    )
  }
  return HttpClient.isHttpClient(out)
    ? Effect.succeed(out)
    : Input.orOptionError(
        Result.fail({
          path: "transformClient",
          message: `expected a function answering an HttpClient, got ${Input.kindOf(out)}`
        })
      )
}

/**
 * Builds the client from the `HttpClient` in context, with the user's middleware applied once.
 * `secretHeaders` names the headers besides `effect/http`'s defaults (`authorization`,
 * `x-api-key`...) that carry a secret (`x-goog-api-key`): they are rendered redacted when the
 * middleware logs or inspects a request.
 *
 * A `fetch`-based client does not follow a redirect either (undici's and Node's clients never
 * do): `fetch` drops only `Authorization` when it follows one to another origin, so a key in
 * another header (Gemini's, an HTTP agent's, one in a provider's `headers` option) would go to
 * wherever `Location` pointed. The 3xx is the call's failure instead. The middleware may follow
 * redirects itself (`HttpClient.followRedirects`, which keeps every header but three): under it,
 * once per build, a response redirecting to another origin than its request's fails that
 * request, so no follower sends the keys (or the prompt) anywhere else.
 *
 * @since 0.2.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (
  settings: Settings,
  transformClient?: ((client: HttpClient.HttpClient) => HttpClient.HttpClient) | undefined,
  secretHeaders?: ReadonlyArray<string> | undefined
) {
  const base = yield* HttpClient.HttpClient
  // A call's `timeout` on the deadline lanes the executor uses (one fiber a call, one timer a
  // duration), not `Effect.timeoutOrElse` (a race of two fibers and a timer a call: ~5 µs of CPU
  // a call against ~1.2, docs/benchmarks.md). The lanes' sleepers stop with the layer's scope, or
  // on their own once no call waits when `make` runs outside one.
  const lanes = yield* Effect.flatMap(Effect.serviceOption(Scope.Scope), (scope) =>
    Scope.provide(Deadline.make, Option.isSome(scope) ? scope.value : Scope.makeUnsafe())
  )
  const timedOut = <A>(
    ctx: CallContext,
    result: Exit.Exit<A, ModelError | TimeoutError> | Deadline.Ending
  ): Effect.Effect<A, ModelError | TimeoutError> =>
    typeof result === "string" ? Effect.fail(requestTimeout(ctx, settings.timeout)) : result
  // No middleware, no follower: the guard costs a call only when there is middleware to guard against.
  const transformed =
    transformClient === undefined ? base : yield* transform(transformClient, sameOriginRedirects(base))
  // Every request belongs to the scope of its call or stream: closing it aborts the request and its body.
  const client = HttpClient.withScope(transformed)
  const secrets = secretHeaders ?? []
  // What a request adds to its caller's context: no span of effect/http's own (or of a client the
  // middleware builds: ours is opened by `traced`), the secret headers' names, fetch's redirect
  // mode. Added, not merged (`Context.merge` copies the whole context, twice, per request); the
  // redacted names are made once per base list, fetch's init once.
  const manual = { redirect: "manual" as const }
  let redacted:
    | { readonly base: ReadonlyArray<string | RegExp>; readonly names: ReadonlyArray<string | RegExp> }
    | undefined
  const extend = (context: Context.Context<never>): Context.Context<never> => {
    let next = Context.add(context, HttpClient.TracerDisabledWhen, constTrue)
    if (secrets.length > 0) {
      const base = Context.get(context, Headers.CurrentRedactedNames)
      if (redacted?.base !== base) redacted = { base, names: [...base, ...secrets] }
      next = Context.add(next, Headers.CurrentRedactedNames, redacted.names)
    }
    const given = Context.getOrUndefined(context, FetchHttpClient.RequestInit)
    return Context.add(
      next,
      FetchHttpClient.RequestInit,
      given === undefined ? manual : { ...given, redirect: "manual" }
    )
  }

  const exchange = (
    request: HttpClientRequest.HttpClientRequest,
    ctx: CallContext,
    onResponse: ((response: HttpClientResponse.HttpClientResponse) => void) | undefined
  ) =>
    Effect.updateContext(client.execute(request), (context: Context.Context<never>) => extend(context) as never).pipe(
      Effect.catch((error) => clientFailure(error, ctx)),
      Effect.flatMap((response) => {
        onResponse?.(response)
        return isOk(response.status) ? Effect.succeed(response) : statusFailure(response, ctx)
      })
    )

  const open = (request: HttpClientRequest.HttpClientRequest, ctx: CallContext) =>
    traced(request, ctx, (sent, onResponse) => exchange(sent, ctx, onResponse))

  const bytesOf = (response: HttpClientResponse.HttpClientResponse, ctx: CallContext) =>
    boundBytes(bodyBytes(response, ctx), settings.maxResponseBytes, "the stream", "maxResponseBytes", ctx)

  // Generator functions made once, not per call: calling a generator function made per call
  // gives it a new map in the old generation, which keeps the call's objects (and the
  // request's) through every young collection until the next full one.
  const readJson = Effect.fnUntraced(function* <A>(
    request: HttpClientRequest.HttpClientRequest,
    decode: Decoder<A, unknown>,
    ctx: CallContext
  ) {
    const response = yield* open(request, ctx)
    const type = mediaType(response.headers)
    if (type !== undefined && !isJsonType(type) && type !== "text/plain") {
      return yield* unexpectedType(response, type, "a JSON body", ctx)
    }
    const value = yield* Effect.flatMap(readText(response, settings.maxResponseBytes, ctx), (text) =>
      parseJson(text, ctx)
    )
    if (ctx.answerFirst !== true) {
      if (isErrorPayload(value)) return yield* Effect.fail(errorFromPayload(value, ctx, "answer"))
      return yield* decode(value, ctx)
    }
    // An answer the decoder takes is the answer, even with an `error` field of its own (an HTTP
    // agent's `{ found: false, error: "no such city" }`); only one it refuses is read as an error object.
    return yield* Effect.catch(decode(value, ctx), (error) =>
      Effect.fail(isErrorPayload(value) ? errorFromPayload(value, ctx, "answer") : error)
    )
  })

  const json = <A>(
    request: HttpClientRequest.HttpClientRequest,
    decode: Decoder<A, unknown>,
    ctx: CallContext
  ): Effect.Effect<A, ModelError | TimeoutError> =>
    lanes.attempt(Effect.scoped(readJson(request, decode, ctx)), settings.timeout, timedOut, ctx)

  const openEvents = Effect.fnUntraced(function* (request: HttpClientRequest.HttpClientRequest, ctx: CallContext) {
    const response = yield* open(request, ctx)
    const type = mediaType(response.headers)
    if (type !== undefined && type !== "text/event-stream") {
      return yield* unexpectedType(response, type, "an event stream (text/event-stream)", ctx)
    }
    return events(bytesOf(response, ctx), ctx, settings)
  })

  const sse = (request: HttpClientRequest.HttpClientRequest, ctx: CallContext): Stream.Stream<Event, ModelError> =>
    Stream.unwrap(openEvents(request, ctx))

  const openValues = Effect.fnUntraced(function* (request: HttpClientRequest.HttpClientRequest, ctx: CallContext) {
    const response = yield* open(request, ctx)
    const type = mediaType(response.headers)
    if (type !== undefined && !ndjsonTypes.has(type)) {
      return yield* unexpectedType(response, type, "newline-delimited JSON (application/x-ndjson)", ctx)
    }
    return values(bytesOf(response, ctx), ctx, settings)
  })

  const ndjson = (request: HttpClientRequest.HttpClientRequest, ctx: CallContext): Stream.Stream<unknown, ModelError> =>
    Stream.unwrap(openValues(request, ctx))

  return { settings, json, sse, ndjson } satisfies Client
})
