/**
 * An OpenAI-compatible gateway: every policy of the pipeline behind one URL, for clients
 * in any language (any OpenAI SDK). `POST /v1/chat/completions` (with SSE streams),
 * `POST /v1/embeddings`, `GET /v1/models`, `/healthz`, `/readyz` and `/metrics` on
 * `effect/http`, mounted in an application's own `HttpRouter` ({@link layer}) or served
 * on its own ({@link serve}, and the `orchestra serve` command).
 *
 * A request's `model` names a domain (its fallback chain and policies) or
 * `provider/model`; every request runs through the executor's one pipeline: deadlines,
 * retries, breaker, rate limit, cache, fallback, hedging. Streams fall back before their
 * first chunk; after it, a failure ends the stream with an OpenAI-style error event,
 * never a clean `[DONE]`; the first-chunk, idle and total deadlines apply; a client that
 * leaves cancels the upstream call. Errors are OpenAI-shaped bodies with the right status
 * (400, 401, 403, 404, 413, 429 with `Retry-After`, 500, 502, 503, 504; under {@link serve},
 * also what Node's server would answer on its own: 408, 417, 431). A tool call's
 * Gemini thought signature travels as Gemini's own OpenAI-compatible API carries it
 * (`tool_calls[i].extra_content.google.thought_signature`), out and back.
 *
 * Keys, budgets and per-key limits come from a {@link KeyStore} in context (`gateway/keys`:
 * in memory or on Redis); without one the gateway refuses to build unless
 * `allowAnonymous: true`. Shutdown drains: `/readyz` turns 503, after `drainDelay` new requests get 503,
 * the running ones get up to `drainTimeout`, then calls are answered 503 and streams end
 * with an error event. See `docs/gateway.md`.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import * as Gateway from "effect-orchestra/Gateway"
 * import * as Orchestra from "effect-orchestra/Orchestra"
 * import * as Mock from "effect-orchestra/Model/Mock"
 *
 * export const server = Gateway.serve({ port: 4000, allowAnonymous: true }).pipe(
 *   Layer.provide(Orchestra.layer({ providers: { mock: Mock.layer({ respond: () => "hi" }) } }))
 * )
 * ```
 *
 * @since 0.2.0
 */
import type { Server as HttpNodeServer } from "node:http"
import { NodeHttpServer } from "@effect/platform-node"
import { Context, type Duration, Effect, Layer, Option, type Redacted } from "effect"
import { HttpRouter, HttpServer, type HttpServerError } from "effect/http"
import type { Domains, Providers } from "./Domain.js"
import type { Executor } from "./Executor.js"
import * as Input from "./Input.js"
import type { RetryPolicy, RetryPolicyInput } from "./Policy.js"
import type { Stats } from "./Stats.js"
import type { GatewayError } from "./gateway/errors.js"
import { KeyStore } from "./gateway/contract.js"
import * as Heap from "./gateway/heap.js"
import * as NodeServer from "./gateway/node.js"
import type { GatewayMetrics } from "./gateway/metrics.js"
import type { Keys } from "./gateway/routes.js"
import * as Server from "./gateway/server.js"

export {
  /**
   * A request the gateway refused (its key, budget, body, route), with what its answer needs.
   *
   * @since 0.2.0
   * @category errors
   */
  GatewayError,
  /**
   * @since 0.2.0
   * @category constructors
   */
  gatewayError,
  /**
   * @since 0.2.0
   * @category models
   */
  type BudgetScope,
  /**
   * @since 0.2.0
   * @category models
   */
  type GatewayReason,
  /**
   * How any failure of a request is answered: status, OpenAI-shaped body, `Retry-After`. An
   * upstream's own message is in the body only when it is about the client's request (since 0.3.0:
   * see {@link withheldMessage}).
   *
   * @since 0.2.0
   * @category conversions
   */
  toWire,
  /**
   * The whole message of a failure whose answer ({@link toWire}) leaves part of it out (an
   * upstream's address, account or page), for the application's log; `undefined` when the
   * answer says all of it.
   *
   * @since 0.3.0
   * @category conversions
   */
  withheldMessage,
  /**
   * @since 0.2.0
   * @category models
   */
  type WireError
} from "./gateway/errors.js"

/**
 * Virtual keys (`layerMemory`, `layerRedis`, `hashSecret`, the `KeyAdmin` service): the
 * {@link KeyStore} of this module, with keys, budgets and per-key limits, in this process
 * or shared through Redis.
 *
 * @since 0.2.0
 * @category key store
 */
export * as Keys from "./gateway/keys/KeyStore.js"

/**
 * The admin routes of the key store (create, list, disable keys, read their spend) behind
 * an admin key: `Gateway.serve(options, Admin.layer({ key }))`.
 *
 * @since 0.2.0
 * @category key store
 */
export * as Admin from "./gateway/admin.js"

/**
 * The identity and policy of a request's key, as the key store gives it. The gateway reads
 * `id` (metrics, spans) and `allowedModels`; the rest is the key store's.
 *
 * @since 0.2.0
 * @category models
 */
export interface KeyContext {
  /** The key's public id (a prefix shown to admins), never its secret. */
  readonly id: string
  readonly name?: string | undefined
  readonly team?: string | undefined
  /**
   * Domains and `provider/model` names the key may use (`provider/*`: every model of a
   * provider; `*`: all). Absent: every model.
   */
  readonly allowedModels?: ReadonlyArray<string> | undefined
}

/**
 * What a request's reservation is to the gateway: an opaque value it hands back to
 * `settle` or `release`.
 *
 * @since 0.2.0
 * @category models
 */
export type Reservation = unknown

/**
 * The names a request's `model` may take on a gateway: a domain, or `provider/model` with
 * one of `providers`.
 *
 * @since 0.3.0
 * @category models
 */
export interface Models {
  readonly domains: ReadonlyArray<string>
  /** The providers a `model` may name as `provider/model`: none when `providerModels` is false. */
  readonly providers: ReadonlyArray<string>
  /**
   * By domain, the upstream models its chain may call, as `provider/model`: a budget by model
   * caps them whichever name a request reaches them by.
   *
   * @since 0.3.0
   */
  readonly upstreams?: Readonly<Record<string, ReadonlyArray<string>>> | undefined
}

/**
 * The key store the gateway calls: authenticate a request's bearer token; before the call
 * reserve its estimated cost against every budget (atomically); after it settle with the
 * real usage, or release on failure, cancellation or shutdown. Implemented by
 * `gateway/keys` (memory, Redis) or by an application.
 *
 * @since 0.2.0
 * @category models
 */
export interface KeyStoreService {
  /** The key of a bearer token (`undefined`: none sent), or a 401/403 `GatewayError`. */
  readonly authenticate: (bearer: Redacted.Redacted<string> | undefined) => Effect.Effect<KeyContext, GatewayError>
  /**
   * A 429 `GatewayError` naming the budget (scope, spent, limit) when one is exceeded, or the key's rate limit.
   * `gateway/keys` goes by the key's record as its store has it, not by the `KeyContext`'s fields: a
   * disabled key is the 401 `authenticate` gives, a model its record does not allow a 403.
   *
   * `onHeld` (since 0.3.0), when given, is called with the reservation as soon as the store holds
   * it, before `reserve` ends: the gateway registers its release before calling `reserve`, so a
   * request interrupted (its client gone) after the hold was made, however late, still releases it
   * rather than leaving it held until the store's lease ends. A store that never calls it is
   * released from what `reserve` returns. Releasing or settling a reservation twice must change
   * nothing (the gateway may be handed it both ways).
   */
  readonly reserve: (
    key: KeyContext,
    model: string,
    estimate: { readonly inputTokens: number; readonly maxOutputTokens: number },
    onHeld?: ((reservation: Reservation) => void) | undefined
  ) => Effect.Effect<Reservation, GatewayError>
  /**
   * Run uninterruptibly (a client leaving as its answer is settled does not cut it, or the usage
   * would go uncharged and the reservation stay held): keep it bounded, as `gateway/keys` does with
   * its store's deadline. So is `release`.
   */
  readonly settle: (
    reservation: Reservation,
    usage: { readonly inputTokens: number; readonly outputTokens: number }
  ) => Effect.Effect<void>
  readonly release: (reservation: Reservation) => Effect.Effect<void>
  /**
   * Called by the gateway as it starts, with the names its requests' `model` may take. A key
   * store whose keys, budgets or prices name models refuses here, with an `OptionError` naming
   * the field, a name that matches none (a misspelt one would lock a key out, or leave a budget
   * or price that never applies); `gateway/keys` also refuses such names in the keys an admin
   * creates from then on. Optional.
   */
  readonly useModels?: ((models: Models) => Effect.Effect<void, Input.OptionError>) | undefined
  /**
   * Keeps reservations held while their requests run: every `every`, the gateway calls `run`
   * with the reservations of its requests still running (none settled or released), so that a
   * store whose reservations end after a time (`gateway/keys`: `reservationTtl`) does not end
   * one whose request runs longer, which would let other requests spend its budget again.
   * Optional: without it a reservation is held as the store holds it. A `run` that fails or dies is logged, and
   * the next goes on as planned.
   *
   * @since 0.3.0
   */
  readonly renew?:
    | {
        readonly every: Duration.Duration
        readonly run: (reservations: ReadonlyArray<Reservation>) => Effect.Effect<void>
      }
    | undefined
}

/**
 * The service key of the {@link KeyStoreService} the gateway calls (defined beside this module, so that
 * the key store of `gateway/keys` need not load this one).
 *
 * @since 0.2.0
 * @category services
 */
export { KeyStore } from "./gateway/contract.js"

/**
 * Options of {@link layer}. Every value is checked when the layer is built (a
 * `OptionError` naming the field).
 *
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /** Path prefix of the OpenAI routes. Default `"/v1"`; `""` for none. */
  readonly prefix?: string | undefined
  /** Largest request body, in bytes (413 beyond). Default 4 MiB; from 1 KiB to 1 GiB. */
  readonly maxBodyBytes?: number | undefined
  /** Whether `model` may name `provider/model` besides the domains. Default true. */
  readonly providerModels?: boolean | undefined
  /**
   * Retries of `provider/model` calls: `true` (default) for the executor's policy, a
   * policy, or `false`. Domains use their own.
   */
  readonly retry?: boolean | RetryPolicy | RetryPolicyInput | undefined
  /**
   * Output tokens reserved against budgets for a request without `max_tokens`, and sent as its
   * `max_tokens` when a budget of its key applies (so that no answer is charged past what was
   * reserved). Default 4,096.
   */
  readonly defaultMaxTokens?: number | undefined
  /** Stream deadlines of every gateway stream (default: the domain's, then the executor's). */
  readonly stream?:
    | {
        readonly firstChunkTimeout?: Duration.Input | "none" | undefined
        readonly idleTimeout?: Duration.Input | "none" | undefined
        readonly totalTimeout?: Duration.Input | "none" | undefined
      }
    | undefined
  /**
   * On shutdown, how long running requests and streams may finish before they are cut.
   * Default 10 s. `serve` stops at most 3 seconds after it (and `drainDelay` before it), whatever the clients do.
   */
  readonly drainTimeout?: Duration.Input | undefined
  /**
   * On shutdown, how long `/readyz` answers 503 while new requests are still served, before they are
   * refused (503) and the drain starts: give it at least the time your load balancer takes to see a
   * failing `/readyz` (its check interval times its failure threshold), so that it stops sending before
   * any request is refused. Default 0 (refused at once); the shutdown takes this much longer.
   *
   * @since 0.3.0
   */
  readonly drainDelay?: Duration.Input | undefined
  /**
   * Path of the Prometheus metrics, or `false`. Default `"/metrics"`. Without `metricsToken`
   * the route is open to every client of the port: the series name providers, domains, key
   * ids and teams, and what each budget has left.
   */
  readonly metricsPath?: string | false | undefined
  /**
   * The token the metrics route needs, as `Authorization: Bearer <token>` (what Prometheus
   * sends with `authorization.credentials_file`): without it, or with another, the route
   * answers 401 with `WWW-Authenticate: Bearer`. At least 16 visible ASCII characters
   * (`Config.Redacted("ORCHESTRA_METRICS_TOKEN")`); compared by SHA-256 in constant time.
   * The health routes stay open. Default none: the route is open.
   */
  readonly metricsToken?: Redacted.Redacted<string> | undefined
  /**
   * The buckets of the latency histograms on the metrics route, `+Inf` counted: `"all"` (default: 176
   * a histogram, in 10% steps) or `"coarse"` (22, see `Prometheus.coarseBuckets`; counts stay exact).
   */
  readonly metricsBuckets?: "all" | "coarse" | undefined
  /** Paths of the liveness and readiness checks, or `false`. Default `/healthz` and `/readyz`. */
  readonly healthPaths?: { readonly live?: string | undefined; readonly ready?: string | undefined } | false | undefined
  /** Admit requests without a key when no `KeyStore` is in context. Default false (the layer fails). */
  readonly allowAnonymous?: boolean | undefined
  /** `x-orchestra-*` headers saying which domain and provider answered. Default true. */
  readonly provenanceHeaders?: boolean | undefined
}

/**
 * The running gateway.
 *
 * @since 0.2.0
 * @category models
 */
export interface Service {
  /**
   * Turns `/readyz` 503, after `drainDelay` refuses new requests (503), waits for the running ones up to
   * `drainTimeout`, then cuts the rest. Idempotent; closing the layer runs it too. Interrupted (every caller of
   * it interrupted), the drain is cancelled: `/readyz` answers 200 and requests are admitted again, and the next
   * drain starts over.
   */
  readonly drain: Effect.Effect<void>
  /** Whether the drain has started (`/readyz` answers 503), its `drainDelay` included. */
  readonly isDraining: () => boolean
  /** Requests and streams being served now. */
  readonly inFlight: () => number
}

/**
 * @since 0.2.0
 * @category services
 */
export class Gateway extends Context.Service<Gateway, Service>()("effect-orchestra/Gateway") {}

/**
 * Turns off V8's allocation-site pretenuring for this process (`--no-allocation-site-pretenuring`).
 * `orchestra serve` does it as it starts; an application that serves the gateway in its own
 * process should run this once before the traffic comes, or start node with
 * `--no-allocation-site-pretenuring` (`NODE_OPTIONS` refuses that flag).
 *
 * Why: when a young collection runs while many requests are in flight (a burst as the process
 * starts), V8 can decide that the allocation sites of their objects hold long-lived objects and
 * allocate them in the old generation from then on. Each request's objects born old then keep its
 * young ones through every young collection: the process falls into a state where each request's
 * objects are promoted (4.8-6.3 KB a request on a Mock provider at 1,000 requests a second,
 * against 0.16-0.28 with pretenuring off, `docs/benchmarks/gateway.md`), with longer pauses and
 * more full collections, until it exits. It affects the whole process: V8 has no setting per
 * module.
 *
 * @since 0.3.0
 * @category process
 */
export const disableAllocationSitePretenuring: Effect.Effect<void> = Effect.sync(Heap.disablePretenuring)

/**
 * What the gateway needs: the manager's services (`Orchestra.layer` provides them all)
 * and an `HttpRouter` to add its routes to.
 *
 * @since 0.2.0
 * @category models
 */
export type Requirements = HttpRouter.HttpRouter | Executor | Domains | Providers | Stats

/**
 * The gateway's routes on the `HttpRouter` in context, for an application that serves
 * its own `HttpRouter`. The `KeyStore` comes from context when there is one.
 *
 * @since 0.2.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Gateway, Input.OptionError, Requirements> =>
  layerWith(options, false)

const layerWith = (
  options: Options,
  catchAll: boolean,
  onMetrics?: ((metrics: GatewayMetrics) => void) | undefined
): Layer.Layer<Gateway, Input.OptionError, Requirements> =>
  Layer.effect(
    Gateway,
    Effect.flatMap(Effect.serviceOption(KeyStore), (keys) =>
      Server.make(options, Option.getOrUndefined(keys) as Keys | undefined, catchAll, onMetrics)
    )
  )

/**
 * Drains the gateway before the HTTP server closes: build it after the server (it needs
 * both), so that it is closed first.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerDrain: Layer.Layer<never, never, Gateway | HttpServer.HttpServer> = Layer.effectDiscard(
  Effect.gen(function* () {
    const gateway = yield* Gateway
    yield* HttpServer.HttpServer
    yield* Effect.addFinalizer(() => gateway.drain)
  })
)

/**
 * Options of {@link serve}: the gateway's and the server's.
 *
 * @since 0.2.0
 * @category models
 */
export interface ServeOptions extends Options {
  /** Default `"127.0.0.1"` (give `"0.0.0.0"` to listen on every interface). */
  readonly host?: string | undefined
  /** Default 4000; 0 for any free port. */
  readonly port?: number | undefined
  /** Largest request head (request line and headers), in bytes. Default 16 KiB. */
  readonly maxHeaderBytes?: number | undefined
  /**
   * Longest time to receive a whole request, headers and body. Default 30 seconds. Rounded up
   * to whole milliseconds; at most 2^31-1 ms (about 24.9 days, the longest Node's timers take).
   */
  readonly requestTimeout?: Duration.Input | undefined
  /**
   * How long an idle keep-alive connection is kept. Default 65 seconds (above common load
   * balancers' 60). Rounded up to whole milliseconds; at most 2^31-1 ms less 1 second (Node's
   * idle timer adds its `keepAliveTimeoutBuffer`).
   */
  readonly keepAliveTimeout?: Duration.Input | undefined
  /**
   * Longest time a response may wait on a client that reads none of it (its connection's
   * buffers full, nothing more taken): the connection is then closed, which ends its request
   * as a client that leaves does (a stream's upstream call cancelled, its reservation released).
   * A client that stops reading a stream otherwise holds it for good: nothing pulls the stream,
   * so none of its deadlines fires. Default 30 seconds; checked about every quarter of it (at
   * most every second). Waiting for an answer is not writing: a slow upstream is its own
   * deadlines' to bound. Rounded up to whole milliseconds.
   */
  readonly writeTimeout?: Duration.Input | undefined
  /** Log each request (effect/http's logger). Default false. */
  readonly logRequests?: boolean | undefined
}

/**
 * The gateway on its own Node HTTP server: listens on `host:port`, bounds every request
 * head (`maxHeaderBytes`) and body (`maxBodyBytes`), and on close (SIGTERM under
 * `NodeRuntime.runMain`) drains the gateway before the server stops. Provides the
 * `HttpServer` (its `address` tells the port chosen for `port: 0`). A request the Node server
 * refuses itself (slower than `requestTimeout` 408, a head over `maxHeaderBytes` 431, not
 * HTTP 400, an HTTP/1.1 request without `Host` 400, an `Expect` it cannot meet 417, a `CONNECT` it would drop 405) is answered
 * OpenAI-shaped too, with an `x-request-id` and `Connection: close`, and counted in the gateway's metrics under route
 * `other`. `routes` are served beside the gateway's (the key store's admin routes, `gateway/admin`),
 * built with the `Gateway` in context; any other path is the gateway's OpenAI-shaped 404
 * (`code: "unknown_url"`), counted in its metrics.
 *
 * @since 0.2.0
 * @category layers
 */
export const serve = <E = never, R = never>(
  options: ServeOptions = {},
  routes?: Layer.Layer<never, E, R>
): Layer.Layer<
  Gateway | HttpServer.HttpServer,
  Input.OptionError | HttpServerError.ServeError | E,
  Exclude<Requirements | R, HttpRouter.HttpRouter | Gateway>
> =>
  Layer.unwrap(
    Effect.gen(function* () {
      const settings = yield* Input.orOptionError(NodeServer.check(options))
      const gatewayOptions: Record<string, unknown> = {}
      for (const [key, value] of Object.entries(options)) if (!NodeServer.keys.has(key)) gatewayOptions[key] = value
      let nodeServer: HttpNodeServer | undefined
      let metrics: GatewayMetrics | undefined
      const server = NodeHttpServer.layer(
        () => {
          nodeServer = NodeServer.make(settings, () => metrics)
          return nodeServer
        },
        {
          host: settings.host,
          port: settings.port,
          // Our own drain (and its cut) then `closeConnections` have stopped the server and closed
          // every connection by the time it closes: nothing is left to wait for.
          gracefulShutdownTimeout: NodeServer.closeGrace
        }
      )
      // Built after the server, so closed before it: drain, then close the connections, so that
      // the whole shutdown takes at most drainTimeout + the drain's cut grace + closeGrace.
      const drainFirst = Layer.effectDiscard(
        Effect.gen(function* () {
          const gateway = yield* Gateway
          yield* HttpServer.HttpServer
          yield* Effect.addFinalizer(() => Effect.andThen(gateway.drain, NodeServer.closeConnections(nodeServer)))
        })
      )
      // `routes` after the gateway's (not merged, which builds both at once): a path of theirs that
      // collides with the gateway's is then their OptionError (`Admin.layer`'s `path`), whatever the timing.
      return drainFirst.pipe(
        Layer.provideMerge(
          HttpRouter.serve(
            Layer.provideMerge(
              routes ?? Layer.empty,
              layerWith(gatewayOptions as Options, true, (built) => {
                metrics = built
              })
            ),
            {
              disableLogger: !settings.logRequests,
              disableListenLog: true
            }
          )
        ),
        Layer.provideMerge(server)
      )
    })
    // effect/http types a route layer's needs as request markers; `routes` needs what R says.
  ) as never
