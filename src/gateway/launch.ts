/**
 * The start of `orchestra serve` once its flags and files are checked (`gateway/command.ts`): the gateway, its
 * key store, admin routes and Redis built and served until SIGTERM / SIGINT. A module of its own, loaded only
 * then: a refusal of a flag or of the gateway file does not load the gateway, its stores and the HTTP server.
 *
 * @internal
 */
import { Console, Context, Effect, Layer, type Redacted } from "effect"
import { HttpRouter, HttpServer, HttpServerError, HttpServerRequest } from "effect/http"
import { Redis as PersistedRedis } from "effect/persistence"
import * as CircuitBreaker from "../CircuitBreaker.js"
import type * as Domain from "../Domain.js"
import type * as Executor from "../Executor.js"
import * as Gateway from "../Gateway.js"
import * as Input from "../Input.js"
import type { ModelProvider } from "../Model.js"
import * as Orchestra from "../Orchestra.js"
import * as RateLimit from "../RateLimit.js"
import * as Redis from "../Redis.js"
import type * as ResponseCache from "../ResponseCache.js"
import { layerRedis as cacheOnRedis } from "../ResponseCache/Redis.js"
import { type Common, exitCodes, failWith, printJson } from "../cli/Common.js"
import * as Providers from "../cli/Providers.js"
import type { Checked } from "../cli/Setup.js"
import * as Admin from "./admin.js"
import { shown } from "./checks.js"
import { gatewayError } from "./errors.js"
import { type GatewayFile, issuesOf, placed, type redisTls, redisTlsField, refuseAll, under } from "./file.js"
import * as KeyStore from "./keys/KeyStore.js"
import type * as Server from "./server.js"

// The names this machine reaches a loopback server by, with any port (`*.localhost` browsers resolve themselves).
const loopbackName = /^(?:localhost|[a-z0-9-]+\.localhost|127(?:\.[0-9]{1,3}){3}|\[::1\])(?::[0-9]{1,5})?$/i

const otherHost = (host: string) =>
  gatewayError(
    "Forbidden",
    `this gateway has no keys and listens on loopback: it answers requests for localhost only, not for the host ${shown(host)}`,
    { code: "host_not_allowed" }
  )

/**
 * The open gateway of `orchestra serve` without a gateway file (no keys, on loopback) answers requests for its
 * loopback names only: a web page whose name is pointed at 127.0.0.1 (DNS rebinding) would reach it as its own
 * origin, send it JSON and read the answers, on the providers' keys. A request without `Host` (HTTP/1.0) comes from
 * no browser. The check wraps the router's handler once (no effect made per request); its refusal is the gateway's
 * (named, counted).
 */
const loopbackNamesOnly = Layer.effectDiscard(
  Effect.gen(function* () {
    const router = yield* HttpRouter.HttpRouter
    // `Gateway.serve` builds its `routes` with the gateway in context; the service is the server's handle.
    const gateway = (yield* Gateway.Gateway) as Server.Handle
    yield* router.addGlobalMiddleware((app) =>
      Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
        const name = request.headers.host
        return name === undefined || loopbackName.test(name) ? app : Effect.sync(() => gateway.refuse(otherHost(name)))
      })
    )
  })
)

/** The manager of the config, with its breakers, rate limits and cache on Redis when `redis` is given. */
const manager = (
  checked: Checked,
  shared: { readonly prefix: string; readonly guard: Redis.GuardOptions } | undefined
) => {
  const { config, dir } = checked.loaded
  const providers: Record<string, Layer.Layer<ModelProvider, Input.OptionError | Error>> = {}
  for (const [name, spec] of Object.entries(checked.providers)) {
    providers[name] = Providers.layer(name, spec, dir, checked.keys[name]) as never
  }
  const policies = config.policies ?? {}
  const onRedis = <A>(
    option: unknown,
    make: (options: Record<string, unknown>) => Layer.Layer<A, Input.OptionError, PersistedRedis.Redis>
  ) => (option === false || shared === undefined ? undefined : make((option ?? {}) as Record<string, unknown>))
  const breakers = onRedis(policies.breakers, (o) =>
    CircuitBreaker.layerRedis({ ...o, prefix: `${shared!.prefix}breaker:`, redis: shared!.guard })
  )
  const rateLimits =
    policies.rateLimits === undefined
      ? undefined
      : onRedis(policies.rateLimits, (o) =>
          RateLimit.layerRedis({ ...o, prefix: `${shared!.prefix}ratelimit:`, redis: shared!.guard })
        )
  const cache =
    policies.cache === undefined
      ? undefined
      : onRedis(policies.cache, (o) => cacheOnRedis({ ...o, prefix: `${shared!.prefix}cache`, redis: shared!.guard }))
  return Orchestra.layer({
    providers,
    defaultProvider: checked.defaultProvider,
    domains: config.domains as ReadonlyArray<Domain.DomainInput> | undefined,
    extraDomains: config.extraDomains as ReadonlyArray<Domain.DomainInput> | undefined,
    overrideDomains: config.overrideDomains as ReadonlyArray<Domain.DomainInput> | undefined,
    executor: policies.executor as Executor.Options | undefined,
    maxConcurrent: policies.maxConcurrent,
    breakers: breakers ?? (policies.breakers as CircuitBreaker.Options | false | undefined),
    rateLimits: rateLimits ?? (policies.rateLimits as RateLimit.Options | false | undefined),
    cache: cache ?? (policies.cache as ResponseCache.MemoryOptions | false | undefined)
  })
}

/**
 * What the checks of `gateway/command.ts` found and made, for the start.
 *
 * @internal
 */
export interface Start {
  readonly common: Common
  readonly checked: Checked
  readonly file: string | undefined
  readonly config: GatewayFile
  readonly server: NonNullable<GatewayFile["server"]>
  readonly host: string
  readonly port: number
  readonly redisUrl: Redacted.Redacted<string> | undefined
  readonly redisTlsRead: Effect.Success<ReturnType<typeof redisTls>> | undefined
  readonly shared: { readonly prefix: string; readonly guard: Redis.GuardOptions } | undefined
  readonly keyOptions: KeyStore.Options
  readonly keysOnRedis: KeyStore.RedisOptions | undefined
  readonly adminKey: Redacted.Redacted<string> | undefined
  readonly gatewayOptions: Gateway.Options
  /** Where the file (or a flag) has a field of the gateway's options that is not in its `gateway` section. */
  readonly gatewayField: (path: string) => string | undefined
}

/**
 * Builds and serves the gateway until interrupted; a layer's refusal is said as the checks say theirs.
 *
 * @internal
 */
export const launch = Effect.fnUntraced(function* (start: Start) {
  const {
    common,
    checked,
    file,
    config,
    server,
    host,
    port,
    redisUrl,
    redisTlsRead,
    shared,
    keyOptions,
    keysOnRedis,
    adminKey,
    gatewayOptions
  } = start
  const redis =
    redisUrl === undefined
      ? Layer.empty
      : Redis.layer({
          url: redisUrl,
          commandTimeout: config.redis?.commandTimeout ?? 500,
          connectTimeout: config.redis?.connectTimeout,
          reconnectMax: config.redis?.reconnectMax,
          onUnreachableAtStart: config.redis?.onUnreachableAtStart,
          tls: redisTlsRead?.tls
        }).pipe(under("redis", (path) => (path === "url" ? "redis.urlEnv" : redisTlsField(path)), file))
  const keys =
    config.keys === undefined
      ? Layer.empty
      : (keysOnRedis === undefined ? KeyStore.layerMemory(keyOptions) : KeyStore.layerRedis(keysOnRedis)).pipe(
          under("keys", undefined, file)
        )
  const admin =
    adminKey === undefined
      ? Layer.empty
      : Admin.layer({ key: adminKey, path: config.admin?.path }).pipe(
          under("admin", (path) => (path === "key" ? "admin.keyEnv" : undefined), file)
        )
  const gateway = Gateway.serve(
    {
      ...gatewayOptions,
      host,
      port,
      maxHeaderBytes: server.maxHeaderBytes,
      requestTimeout: server.requestTimeout,
      keepAliveTimeout: server.keepAliveTimeout,
      writeTimeout: server.writeTimeout,
      logRequests: server.logRequests
    },
    // Without a gateway file the gateway is open and on loopback (checked above): this machine's, reached by its
    // names. A file's `allowAnonymous` is the operator's choice, behind a proxy of theirs that may send any Host.
    file === undefined ? Layer.merge(admin, loopbackNamesOnly) : admin
  ).pipe(under("gateway", (path) => start.gatewayField(path), file))
  // The admin routes exist only with `keys` (checked above), Redis layers only with `redis`:
  // what the types cannot see, the checks above make true.
  const app = gateway.pipe(
    Layer.provide(Layer.merge(manager(checked, shared).pipe(under("policies")), keys)),
    Layer.provide(redis)
  ) as unknown as Layer.Layer<Gateway.Gateway | HttpServer.HttpServer, unknown>
  // This process is the gateway's: young collections must not fall into promoting every request.
  yield* Gateway.disableAllocationSitePretenuring
  yield* Effect.scoped(
    Effect.gen(function* () {
      const context = yield* Layer.build(app).pipe(
        Effect.catch((error: unknown) => {
          const message = startFailure(error, host, port, config.redis?.urlEnv ?? "REDIS_URL")
          if (!(error instanceof Input.OptionError))
            return failWith(common, exitCodes.failed, message, { kind: "start" })
          const where = placed.get(error)
          // A flag's value is a usage error said as every other command's (`--port: ...`, as `--port abc` is);
          // a field of the gateway file names the file.
          if (where?.flag === true) {
            const issue = Input.issueOfError(error)
            const said = error.others === undefined ? `${issue.path}: ${issue.message}` : message
            return failWith(common, exitCodes.usage, said, { kind: "usage" })
          }
          return where?.file === undefined
            ? failWith(common, exitCodes.usage, message, { kind: "config" })
            : refuseAll(common, where.file, issuesOf(error), error.others?.unshown ?? 0)
        })
      )
      const address = Context.get(context, HttpServer.HttpServer).address
      const url = address._tag === "UnixPathAddress" ? address.path : `http://${hostPort(host, address.port)}`
      // One line: a supervisor reads the first line of a process that goes on running.
      if (common.json) {
        const listening = { ok: true, url, config: checked.loaded.file ?? null, gateway: file ?? null }
        yield* printJson({ ...common, jsonLines: true }, listening)
      }
      yield* Console.error(`orchestra: gateway listening on ${url} (OpenAI base URL ${url}/v1)`)
      return yield* Effect.never
    })
  )
})

/** `host:port`, an IPv6 host in brackets (`[::1]:4000`), as a URL writes it. */
const hostPort = (host: string, port: number): string => `${host.includes(":") ? `[${host}]` : host}:${port}`

/**
 * What stopped the gateway from starting, as a sentence. effect/http's `ServeError` has an
 * empty message and keeps the listener's error as its cause: the port in use or refused is
 * said as such, naming the address. A `RedisError` (Redis unreachable at start) is said with
 * its client's error.
 *
 * @internal
 */
export const startFailure = (error: unknown, host: string, port: number, redisUrlEnv = "REDIS_URL"): string => {
  // A RedisError has no message of its own either: the client's is in its cause (never the URL, which may hold a password).
  if (error instanceof PersistedRedis.RedisError)
    return `cannot connect to Redis (${redisUrlEnv}): ${Redis.errorText(error)}`
  if (!(error instanceof HttpServerError.ServeError)) return Input.thrownMessage(error)
  const cause = error.cause
  const code = typeof cause === "object" && cause !== null && "code" in cause ? cause.code : undefined
  const address = hostPort(host, port)
  if (code === "EADDRINUSE") return `cannot listen on ${address}: the address is already in use`
  if (code === "EACCES") return `cannot listen on ${address}: permission denied`
  if (code === "EADDRNOTAVAIL") return `cannot listen on ${address}: the address is not available on this machine`
  const detail = Input.thrownMessage(cause)
  return `cannot listen on ${address}: ${detail}`
}
