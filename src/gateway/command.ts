/**
 * The handler of `orchestra serve`: the config's providers and domains (checked as every
 * command checks them), the gateway file's server, keys, admin routes and Redis, then the
 * gateway until SIGTERM / SIGINT, which drains it.
 *
 * The gateway file (`orchestra.gateway.json`; secrets only as names of environment
 * variables):
 *
 * ```json
 * {
 *   "server": { "host": "0.0.0.0", "port": 4000 },
 *   "gateway": { "drainTimeout": "20 seconds", "stream": { "idleTimeout": "30 seconds" } },
 *   "redis": { "urlEnv": "REDIS_URL" },
 *   "keys": { "keys": [{ "id": "team-a", "sha256": "...", "rpm": 60 }], "prices": {} },
 *   "admin": { "keyEnv": "ORCHESTRA_ADMIN_KEY" },
 *   "metrics": { "tokenEnv": "ORCHESTRA_METRICS_TOKEN" }
 * }
 * ```
 *
 * With `redis`, the breakers, rate limits, response cache and keys are shared by every
 * replica on that Redis; without it they are this process's own.
 *
 * @internal
 */
import * as NodePath from "node:path"
import { Console, Context, Effect, Layer, Option, Result } from "effect"
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
import { type Common, ExitCode, exitCodes, failWith, integerOf, printJson } from "../cli/Common.js"
import { formatPath } from "../cli/Config.js"
import { prepare } from "../cli/Manager.js"
import * as Providers from "../cli/Providers.js"
import type { Args } from "../cli/Serve.js"
import type { Checked } from "../cli/Setup.js"
import * as Admin from "./admin.js"
import { shown } from "./checks.js"
import { gatewayError } from "./errors.js"
import * as KeyStore from "./keys/KeyStore.js"
import * as KeyOptions from "./keys/options.js"
import * as GatewayOptions from "./options.js"
import type * as Server from "./server.js"
import {
  type FileIssue,
  issuesOf,
  loadFile,
  placed,
  redisTls,
  redisTlsField,
  refuseAll,
  secret,
  under
} from "./file.js"

const loopback = (host: string) => host === "127.0.0.1" || host === "::1" || host === "localhost"

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

/** The gateway's options that the `server` section (or a flag) gives, not the `gateway` one. */
const serverFields: ReadonlySet<string> = new Set([
  "maxHeaderBytes",
  "requestTimeout",
  "keepAliveTimeout",
  "writeTimeout",
  "logRequests"
])

/** Where the file (or a flag) has a field of the gateway's options that is not in its `gateway` section. */
const gatewayField = (args: Args, path: string): string | undefined => {
  // The key store's keys and prices, checked as the gateway starts against the models it serves.
  if (path.startsWith("keys[") || path.startsWith("prices.")) return `keys.${path}`
  if (path === "metricsToken") return "metrics.tokenEnv"
  if (path === "host") return Option.isSome(args.host) ? "--host" : "server.host"
  if (path === "port") return Option.isSome(args.port) ? "--port" : "server.port"
  return serverFields.has(path) ? `server.${path}` : undefined
}

/**
 * @internal
 */
export const run = Effect.fnUntraced(function* (args: Args) {
  const common: Common = { json: args.json, config: args.config }
  const portFlag = Option.isSome(args.port) ? yield* integerOf(common, "--port", args.port.value) : undefined
  const checked = yield* prepare(common)
  const { file, config } = yield* loadFile(common, args.gateway)
  const server = config.server ?? {}
  const host = Option.getOrElse(args.host, () => server.host ?? "127.0.0.1")
  const port = portFlag ?? server.port ?? 4000
  if (typeof host === "string" && host.trim() === "") {
    const where = Option.isSome(args.host) ? "--host" : "server.host"
    return yield* failWith(common, exitCodes.usage, `${where} is empty: give an address such as 127.0.0.1`, {
      kind: "usage"
    })
  }
  if (file === undefined && !loopback(host)) {
    return yield* failWith(
      common,
      exitCodes.usage,
      `without a gateway file the gateway is open (no keys): it listens on loopback only, not ${Input.shown(host)}; give --gateway with keys (or allowAnonymous: true)`,
      { kind: "usage" }
    )
  }
  // The mistakes of the file found here are said all at once, as its mistakes of shape are (without a file
  // there is no section to find one in).
  const issues: Array<FileIssue> = []
  const given = <A>(checked: Result.Result<A, FileIssue>): A | undefined => {
    if (Result.isSuccess(checked)) return checked.success
    issues.push(checked.failure)
    return undefined
  }
  const redisUrl =
    config.redis === undefined ? undefined : given(yield* secret(config.redis.urlEnv ?? "REDIS_URL", "redis.urlEnv"))
  const adminKey =
    config.admin === undefined
      ? undefined
      : given(yield* secret(config.admin.keyEnv ?? "ORCHESTRA_ADMIN_KEY", "admin.keyEnv"))
  if (config.gateway !== undefined && Object.hasOwn(config.gateway, "metricsToken")) {
    issues.push({
      path: "gateway.metricsToken",
      message: "a secret is not written in the gateway file: name its environment variable in metrics.tokenEnv"
    })
  }
  const metricsToken =
    config.metrics === undefined
      ? undefined
      : given(yield* secret(config.metrics.tokenEnv ?? "ORCHESTRA_METRICS_TOKEN", "metrics.tokenEnv"))
  // Read here, so that a file missing is said with the file's other mistakes; relative to the gateway file.
  const redisTlsRead =
    config.redis?.tls === undefined || file === undefined
      ? undefined
      : yield* redisTls(NodePath.dirname(file), config.redis.tls)
  if (redisTlsRead !== undefined) issues.push(...redisTlsRead.issues)
  if (config.admin !== undefined && config.keys === undefined) {
    issues.push({ path: "admin", message: "the admin routes manage keys: add a `keys` section" })
  } else if (file !== undefined && config.keys === undefined && config.allowAnonymous !== true) {
    // Said here: the layer's own refusal would name `gateway.keys`, a field the `gateway` section refuses.
    issues.push({
      path: "keys",
      message:
        'the gateway file has no `keys` section: add one (`"keys": { "keys": [] }` for keys an admin creates), or `"allowAnonymous": true` to admit every request'
    })
  }
  const prefix = config.redis?.prefix ?? "orchestra:"
  const shared =
    config.redis === undefined
      ? undefined
      : {
          prefix,
          guard: {
            timeout: config.redis.timeout ?? config.redis.commandTimeout ?? 500,
            reportAfter: config.redis.reportAfter,
            probeInterval: config.redis.probeInterval
          }
        }
  // The key store on Redis takes its prefix and guard from the `redis` section: given under `keys` too, they
  // were replaced unsaid (in memory the store refuses them as unknown fields).
  if (shared !== undefined && config.keys !== undefined) {
    for (const [field, instead] of [
      ["prefix", "redis.prefix (the key store's is it plus gateway:)"],
      ["redis", "redis.timeout, redis.reportAfter and redis.probeInterval"]
    ] as const) {
      if (Object.hasOwn(config.keys, field)) {
        issues.push({
          path: `keys.${field}`,
          message: `on Redis the key store's is set by the redis section: use ${instead}`
        })
      }
    }
  }
  // Checked here: the stores given it would name their own `redis.timeout` (`policies.redis.timeout`).
  const guard = shared === undefined ? undefined : Redis.guardSettings(shared.guard, "redis.")
  if (guard !== undefined && Result.isFailure(guard)) {
    const { message } = guard.failure
    // Without `redis.timeout` the guard's deadline is `redis.commandTimeout`: named as the file gives it.
    const path =
      guard.failure.path === "redis.timeout" && config.redis?.timeout === undefined
        ? "redis.commandTimeout"
        : guard.failure.path
    issues.push({ path, message, line: `invalid ${path}: ${message}` })
  }
  // Each section's values, checked as its layer will check them: a layer says its own mistakes only, and the
  // first to fail ends the start, so a file with mistakes in several sections took a start for each.
  const keyOptions = (config.keys ?? {}) as KeyStore.Options
  const keysOnRedis: KeyStore.RedisOptions | undefined =
    shared === undefined ? undefined : { ...keyOptions, prefix: `${prefix}gateway:`, redis: shared.guard }
  const gatewayOptions: Gateway.Options = {
    ...(config.gateway as Gateway.Options | undefined),
    allowAnonymous: config.allowAnonymous ?? file === undefined,
    metricsToken
  }
  let unlisted = 0
  const sectionIssues = (checked: Input.Checked<unknown>, rename: (path: string) => string) => {
    if (Result.isSuccess(checked)) return
    const { path, message, others } = Input.renamed(checked.failure, rename)
    issues.push({ path, message, line: `invalid ${path}: ${message}` }, ...(others?.shown ?? []))
    unlisted += others?.unshown ?? 0
  }
  sectionIssues(GatewayOptions.check(gatewayOptions), (path) => gatewayField(args, path) ?? `gateway.${path}`)
  if (config.keys !== undefined) {
    sectionIssues(
      keysOnRedis === undefined ? KeyOptions.check(keyOptions) : KeyOptions.check(keysOnRedis, KeyOptions.redisFields),
      (path) => `keys.${path}`
    )
  }
  if (adminKey !== undefined) {
    sectionIssues(Admin.check({ key: adminKey, path: config.admin?.path }), (path) =>
      path === "key" ? "admin.keyEnv" : `admin.${path}`
    )
  }
  if (file !== undefined && issues.length > 0) return yield* refuseAll(common, file, issues, unlisted)
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
  ).pipe(under("gateway", (path) => gatewayField(args, path), file))
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

export { ExitCode, formatPath }
