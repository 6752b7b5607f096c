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
import { Effect, Option, Result } from "effect"
import type * as Gateway from "../Gateway.js"
import * as Input from "../Input.js"
import * as Redis from "../Redis.js"
import { type Common, ExitCode, exitCodes, failWith, integerOf } from "../cli/Common.js"
import { formatPath } from "../cli/Config.js"
import { prepare } from "../cli/Manager.js"
import type { Args } from "../cli/Serve.js"
import * as AdminOptions from "./adminOptions.js"
import { type FileIssue, loadFile, redisTls, refuseAll, secret } from "./file.js"
import type * as KeyStore from "./keys/KeyStore.js"
import * as KeyOptions from "./keys/options.js"
import * as GatewayOptions from "./options.js"

const loopback = (host: string) => host === "127.0.0.1" || host === "::1" || host === "localhost"

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
    sectionIssues(AdminOptions.check({ key: adminKey, path: config.admin?.path }), (path) =>
      path === "key" ? "admin.keyEnv" : `admin.${path}`
    )
  }
  if (file !== undefined && issues.length > 0) return yield* refuseAll(common, file, issues, unlisted)
  // Loaded only now: a refusal above does not load the gateway, its stores and the HTTP server.
  const { launch } = yield* Effect.promise(() => import("./launch.js"))
  return yield* launch({
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
    gatewayOptions,
    gatewayField: (path: string) => gatewayField(args, path)
  })
})

export { ExitCode, formatPath }
