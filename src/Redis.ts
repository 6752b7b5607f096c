/**
 * The Redis connection shared by this library's Redis-backed stores (rate limits, the
 * response cache, circuit breakers), and the guard every one of their Redis calls goes
 * through.
 *
 * - {@link layer} builds `effect/persistence`'s `Redis` service on `@effect/platform-node`'s
 *   `NodeRedis` with settings that never leave a caller waiting on a dead Redis: commands
 *   are refused at once while disconnected (`disableOfflineQueue`), every command has a
 *   client-side deadline (sent or not), a script's `eval` (one EVALSHA, and one EVAL after a
 *   NOSCRIPT) shares one such deadline, connections time out, and the client reconnects
 *   in the background for as long as the layer lives. A Redis unreachable as it is built
 *   fails it, or with `onUnreachableAtStart: "start"` it builds and connects in the background.
 * - {@link makeGuard} bounds one Redis call with a deadline, counts its failures in a
 *   metric, and reports an outage once failures persist (one warning naming the Redis
 *   error, one info line when the store is back), so a single slow reply under load
 *   does not log "unavailable" / "is back" pairs while Redis is up. While an outage is
 *   reported, every call skips Redis at once (the store's fail-open or fail-closed choice)
 *   and a PING in the background, one per `probeInterval`, finds when it is back: once
 *   reported, a hung Redis costs a caller nothing. Until then, each call pays at most the
 *   deadline.
 *
 * Stores take the `Redis` service as a requirement, so an application may also provide
 * its own (`NodeRedis.layer` with other options); the guard bounds calls either way.
 *
 * @since 0.2.0
 */
import { createHash } from "node:crypto"
import type * as NodeRedis from "@effect/platform-node/NodeRedis"
import {
  Clock,
  Config,
  Context,
  Deferred,
  Duration,
  Effect,
  Exit,
  FiberHandle,
  Layer,
  Metric,
  Option,
  Predicate,
  Queue,
  Redacted,
  References,
  Result,
  Schema,
  Scope
} from "effect"
import { Redis } from "effect/persistence"
import * as Input from "./Input.js"
import * as Metrics from "./Metrics.js"
import { wellFormed } from "./stats/labels.js"

/**
 * Connection options.
 *
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /**
   * `redis://[[user]:password@]host:port[/db]` (user and password percent-encoded, `db` a whole number).
   * Default `redis://127.0.0.1:6379`. Pass a URL
   * that carries a password as `Redacted` (`Config.Redacted("REDIS_URL")`).
   */
  readonly url?: string | Redacted.Redacted<string> | undefined
  /**
   * Longest wait for one connection attempt (the first one and every reconnection), its handshake included:
   * a Redis that accepts connections but never answers fails the layer (with `onUnreachableAtStart: "start"`,
   * the layer starts without it), and a reconnection to one is dropped and tried again after the usual backoff,
   * so the client connects to the Redis that answers later. Default 2 seconds.
   * This and the other durations here are rounded up to whole milliseconds and are at most 2^31-1 ms
   * (about 24.9 days, the longest a Node timer takes).
   */
  readonly connectTimeout?: Input.DurationInput | undefined
  /**
   * The client's own deadline on every command, whether it was sent or not (node-redis
   * `timeout` with `rejectInFlight`). Guards whose `timeout` is not shorter rely on it
   * instead of a timer of their own per call (see {@link ClientDeadline}). Default 500 ms.
   */
  readonly commandTimeout?: Input.DurationInput | undefined
  /** Longest pause between reconnection attempts (exponential from 50 ms). Default 2 seconds. */
  readonly reconnectMax?: Input.DurationInput | undefined
  /**
   * What building the layer does when Redis cannot be reached (since 0.3.0): the first connection fails,
   * or has not completed within `connectTimeout`.
   * - `"fail"` (default): the layer fails with a `RedisError` naming the address and the error, so a wrong
   *   URL, port or password is found at start, where it is cheapest to find.
   * - `"start"`: the layer builds anyway and logs one warning naming the address and the error. Until the
   *   client connects (it keeps trying in the background, at most `reconnectMax` apart, and says so in an
   *   info line once it has) every command fails at once, as during any later outage: each store fails open
   *   or closed as configured, and never waits past its Redis deadline. A replica restarted while Redis is
   *   down then serves; a wrong URL is said only by that warning and the stores' outage warnings.
   *   Until then the `NodeRedis` service's `use` fails as a command does, and reading its `client` throws.
   */
  readonly onUnreachableAtStart?: "fail" | "start" | undefined
}

interface Settings {
  readonly url: string
  /** `host:port` of the URL, for messages: never its user or password. */
  readonly address: string
  readonly connectTimeout: number
  readonly commandTimeout: number
  readonly reconnectMax: number
  readonly onUnreachableAtStart: "fail" | "start"
}

// node-redis runs each of these on a Node timer (a command's deadline through AbortSignal.timeout,
// which throws above 2^32-1 ms): whole milliseconds within what a timer takes.
const wholeMillis = (path: string, input: unknown, fallback: Input.DurationInput): Input.Checked<number> =>
  Input.wholeMillis(path, Input.orDefault(input, fallback), Input.maxTimerMillis)

const decodes = (component: string): boolean => {
  try {
    decodeURIComponent(component)
    return true
  } catch {
    return false
  }
}

const optionKeys: ReadonlySet<string> = new Set([
  "url",
  "connectTimeout",
  "commandTimeout",
  "reconnectMax",
  "onUnreachableAtStart"
])

const settings = (options: Options): Input.Checked<Settings> => {
  // `null` (a JSON config's) would fail reading its first field; a misspelt `urll` would connect to the default.
  const issue = Array.isArray(options)
    ? { path: "options", message: "expected an object, got an array" }
    : (Input.notAnObject("options", options) ?? Input.unknownKey(options, optionKeys))
  if (issue !== undefined) return Result.fail(issue)
  const url = options.url === undefined ? "redis://127.0.0.1:6379" : options.url
  const plain = Redacted.isRedacted(url) ? Redacted.value(url) : url
  // node-redis parses it with `new URL`, which throws (a defect, not a failure) on one it cannot parse.
  if (typeof plain !== "string" || !/^rediss?:\/\//.test(plain) || !URL.canParse(plain)) {
    // Never echo the value: it may carry a password.
    return Result.fail({ path: "url", message: "expected a redis:// or rediss:// URL" })
  }
  // What node-redis reads of it next and throws on (a defect again): the database number in the
  // path, and the percent-decoded user and password. Redis refuses a database that is negative or
  // not whole only once connected.
  const parsed = new URL(plain)
  if (parsed.pathname.length > 1 && !/^\/\d+$/.test(parsed.pathname)) {
    return Result.fail({ path: "url", message: "expected a database number (a whole number) as the path" })
  }
  if (!decodes(parsed.username) || !decodes(parsed.password)) {
    return Result.fail({
      path: "url",
      message: "expected a user and password percent-encoded (a literal % is %25)"
    })
  }
  const onUnreachableAtStart = Input.orDefault(options.onUnreachableAtStart, "fail")
  if (onUnreachableAtStart !== "fail" && onUnreachableAtStart !== "start") {
    return Result.fail({
      path: "onUnreachableAtStart",
      message: `expected "fail" or "start", got ${Input.shown(onUnreachableAtStart)}`
    })
  }
  return Result.map(
    Input.all([
      wholeMillis("connectTimeout", options.connectTimeout, "2 seconds"),
      wholeMillis("commandTimeout", options.commandTimeout, "500 millis"),
      wholeMillis("reconnectMax", options.reconnectMax, "2 seconds")
    ]),
    ([connectTimeout, commandTimeout, reconnectMax]) => ({
      url: plain,
      address: `${parsed.hostname}:${parsed.port === "" ? "6379" : parsed.port}`,
      connectTimeout,
      commandTimeout,
      reconnectMax,
      onUnreachableAtStart
    })
  )
}

/**
 * The deadline, in milliseconds, that the `Redis` service's client puts on every command
 * by itself, when known ({@link layer} sets it). A guard whose `timeout` is at least this
 * long leaves the deadline to the client: an `Effect.timeout` per call forks two fibers and
 * a timer, which tripled the cost of a Redis round trip (bench/cache.ts, part B).
 *
 * @since 0.2.0
 * @category references
 */
export const ClientDeadline: Context.Reference<number | undefined> = Context.Reference<number | undefined>(
  "effect-orchestra/Redis/ClientDeadline",
  { defaultValue: () => undefined }
)

// effect's `RedisError` has no message of its own (its schema has only `cause`), so a failed
// connection said "" in a log or a rendering. The layer's errors say what failed and where.
const layerError = (message: string, cause: unknown): Redis.RedisError => {
  const error = new Redis.RedisError({ cause })
  Object.defineProperty(error, "message", { value: message, writable: true, configurable: true, enumerable: false })
  return error
}

const loadNodeRedis = Effect.tryPromise({
  try: () => import("@effect/platform-node/NodeRedis"),
  catch: (cause) => {
    const message = `the redis package could not be loaded (npm install redis): ${errorText(cause)}`
    return layerError(message, new Error(message))
  }
})

/**
 * `effect/persistence`'s `Redis` service (and `NodeRedis`, the node-redis client) for the
 * stores of this library. Connects when built. An unreachable Redis fails the layer with
 * a `RedisError` (after at most `connectTimeout`, also when it accepts the connection and
 * never answers), unless `onUnreachableAtStart: "start"`: then the layer builds, says so
 * in a warning, and connects in the background, its commands failing at once meanwhile.
 * Later outages are the stores' business (each fails open or closed as configured) while
 * the client reconnects in the background.
 * Invalid options fail it with an `OptionError` naming the field. Closed with the layer's scope.
 * The `redis` package (node-redis) is loaded when the layer is built, so modules that only
 * use the in-memory stores never need it.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import * as RateLimit from "effect-orchestra/RateLimit"
 * import * as Redis from "effect-orchestra/Redis"
 *
 * export const limits = RateLimit.layerRedis({ default: { requestsPerMinute: 60 } }).pipe(
 *   Layer.provide(Redis.layer({ url: "redis://127.0.0.1:6379" }))
 * )
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<Redis.Redis | NodeRedis.NodeRedis, Input.OptionError | Redis.RedisError> =>
  Layer.unwrap(
    Effect.gen(function* () {
      const s = yield* Input.orOptionError(settings(options))
      const NodeRedis = yield* loadNodeRedis
      // With "fail", a failure before the first connection fails the layer (a wrong URL should not
      // hang start-up); once connected, or with "start", the client never gives up reconnecting.
      const state: State = { connected: false, lastError: undefined }
      const client = NodeRedis.layer({
        url: s.url,
        disableOfflineQueue: true,
        commandOptions: { timeout: s.commandTimeout, rejectInFlight: true },
        socket: {
          connectTimeout: s.connectTimeout,
          reconnectStrategy: (retries: number, cause: Error) => {
            state.lastError = cause
            return state.connected || s.onUnreachableAtStart === "start" ? backoff(retries, s.reconnectMax) : cause
          }
        }
      }).pipe(
        // NodeRedis logs a warning with a stack trace on every failed reconnection attempt;
        // the stores' guards report an outage once instead.
        Layer.provide(Layer.succeed(References.MinimumLogLevel, "Error"))
      )
      const built =
        s.onUnreachableAtStart === "start"
          ? startUnconnected(s, client, state, NodeRedis.NodeRedis)
          : connect(s, client, state, NodeRedis.NodeRedis)
      return Layer.effectContext(built).pipe(Layer.merge(Layer.succeed(ClientDeadline, s.commandTimeout)))
    })
  )

interface State {
  connected: boolean
  /** The client's last connection error, for the warning of a layer that starts without Redis. */
  lastError: unknown
}

const backoff = (retries: number, max: number): number => Math.min(50 * 2 ** Math.min(retries, 16), max)

type Services = Context.Context<Redis.Redis | NodeRedis.NodeRedis>

const withEval = (s: Settings, context: Services): Services => {
  const redis = Context.get(context, Redis.Redis)
  return Context.add(context, Redis.Redis, { ...redis, eval: evalWithin(redis.send, s.commandTimeout) })
}

// node-redis bounds only the socket's connection by connectTimeout, not the handshake after
// it: a hung Redis (or another server on the port) that accepts the connection and never
// answered held the build for ever. The build's scope is the layer's: giving up closes the client.
const connect = (
  s: Settings,
  client: Layer.Layer<Redis.Redis | NodeRedis.NodeRedis, Redis.RedisError>,
  state: State,
  tag: typeof NodeRedis.NodeRedis
): Effect.Effect<Services, Redis.RedisError, Scope.Scope> =>
  Layer.build(client).pipe(
    Effect.mapError((error) =>
      layerError(`Redis at ${s.address}: connection failed: ${errorText(error)}`, error.cause)
    ),
    Effect.map((context) => withEval(s, context)),
    Effect.timeoutOrElse({
      duration: Duration.millis(s.connectTimeout),
      orElse: () => {
        const message = `Redis at ${s.address} did not answer the connection's handshake within ${s.connectTimeout} ms`
        return Effect.fail(layerError(message, new Error(message)))
      }
    }),
    Effect.tap((context) =>
      Effect.andThen(
        Effect.sync(() => {
          state.connected = true
        }),
        boundHandshakes(s, Context.get(context, tag))
      )
    )
  )

// A reconnection's handshake that did not end within connectTimeout (see boundHandshakes).
class HandshakeTimeoutError extends Error {}

// node-redis bounds a reconnection's TCP connection by connectTimeout, not the handshake after it: a server that
// accepted it and never answered (a Redis restarting behind a proxy) held the client for ever, commands refused,
// the Redis that answered later never tried. Each handshake gets connectTimeout; then node-redis drops that
// connection as after any socket error and tries again after the usual backoff. Only connection events: no cost per
// command. Set up once the client has connected: its first handshake is bounded by whoever waits for it.
const boundHandshakes = Effect.fnUntraced(function* (s: Settings, node: NodeRedis.NodeRedis["Service"]) {
  const client = node.client
  const run = yield* FiberHandle.makeRuntime<never>()
  const expired = Effect.sleep(Duration.millis(s.connectTimeout)).pipe(
    Effect.andThen(
      Effect.sync(() => {
        // An internal of node-redis (6.x): without it, the handshake stays unbounded as before.
        if (!client.isReady && typeof client._resetDesyncedConnection === "function") {
          client._resetDesyncedConnection(
            new HandshakeTimeoutError(
              `Redis at ${s.address} did not answer the handshake within ${s.connectTimeout} ms`
            )
          )
        }
      })
    )
  )
  // Each event replaces the fiber of the one before it.
  client.on("connect", () => run(expired))
  client.on("ready", () => run(Effect.void))
})

// Refused by the layer before its client has ever connected: never sent (see neverSent), as an offline client's.
class NotConnectedError extends Error {}

// onUnreachableAtStart "start": the client is built in the background (node-redis keeps trying to connect, and
// a build that fails, an AUTH refused, is tried again), and the services answer for it meanwhile: every
// command fails at once, as an offline client's do, until it has connected; then they are its own.
const startUnconnected = Effect.fnUntraced(function* (
  s: Settings,
  client: Layer.Layer<Redis.Redis | NodeRedis.NodeRedis, Redis.RedisError>,
  state: State,
  tag: typeof NodeRedis.NodeRedis
) {
  const scope = yield* Effect.scope
  let redis: Redis.Redis["Service"] | undefined
  let node: NodeRedis.NodeRedis["Service"] | undefined
  let warned = false
  const connected = yield* Deferred.make<void>()
  // node-redis's connectTimeout ends at the socket's connection: a server that accepts it and never answers the
  // handshake held the attempt, and the client with it, for ever. Each attempt gets connectTimeout, then another.
  const timedOut = layerError(
    `Redis at ${s.address}: no connection within ${s.connectTimeout} ms (its handshake included)`,
    new Error(`no connection within ${s.connectTimeout} ms`)
  )
  const attempt = (retries: number): Effect.Effect<void> =>
    Effect.flatMap(Scope.fork(scope), (child) =>
      Effect.matchEffect(
        Effect.timeoutOrElse(Layer.buildWithScope(client, child), {
          duration: Duration.millis(s.connectTimeout),
          orElse: () => Effect.fail(timedOut)
        }),
        {
          onSuccess: (context) => {
            const services = withEval(s, context)
            redis = Context.get(services, Redis.Redis)
            node = Context.get(services, tag)
            const said = warned ? Effect.logInfo(`Redis at ${s.address} connected: the stores use it`) : Effect.void
            return Deferred.succeed(connected, undefined).pipe(
              Effect.andThen(Scope.provide(boundHandshakes(s, node), child)),
              Effect.andThen(said)
            )
          },
          onFailure: (error) => {
            // The client's own error (a refused connection) says more than the deadline that cut it short.
            if (error !== timedOut || state.lastError === undefined) state.lastError = error
            return Scope.close(child, Exit.fail(error)).pipe(
              Effect.andThen(Effect.sleep(Duration.millis(backoff(retries, s.reconnectMax)))),
              Effect.andThen(Effect.suspend(() => attempt(retries + 1)))
            )
          }
        }
      )
    )
  yield* Effect.forkIn(attempt(0), scope)
  const first = yield* Effect.timeoutOption(Deferred.await(connected), Duration.millis(s.connectTimeout))
  if (Option.isNone(first) && redis === undefined) {
    warned = true
    const why = state.lastError === undefined ? `no answer within ${s.connectTimeout} ms` : errorText(state.lastError)
    yield* Effect.logWarning(
      `Redis at ${s.address} unreachable at start (${why}): started without it (onUnreachableAtStart: "start"); until it connects the stores fail open or closed as during an outage`
    )
  }
  const refusal = new Redis.RedisError({ cause: new NotConnectedError(`not connected to Redis at ${s.address} yet`) })
  const notConnected = Effect.fail(refusal)
  const send = <A = unknown>(command: string, ...args: ReadonlyArray<string>): Effect.Effect<A, Redis.RedisError> =>
    redis === undefined ? notConnected : redis.send<A>(command, ...args)
  const service: Redis.Redis["Service"] = {
    send,
    eval: evalWithin(send, s.commandTimeout),
    // A subscription's failures come through its queue: one that ends at once with the refusal.
    subscribe: (channel) =>
      Effect.suspend(() =>
        redis === undefined
          ? Effect.flatMap(Queue.make<Redis.RedisMessage, Redis.RedisError>(), (queue) =>
              Effect.as(Queue.fail(queue, refusal), queue)
            )
          : redis.subscribe(channel)
      ),
    reserve: Effect.suspend(() => (redis === undefined ? notConnected : redis.reserve))
  }
  const nodeService: NodeRedis.NodeRedis["Service"] = {
    get client() {
      if (node === undefined) throw new NotConnectedError(`not connected to Redis at ${s.address} yet`)
      return node.client
    },
    use: (f) => Effect.suspend(() => (node === undefined ? notConnected : node.use(f)))
  }
  return Context.make(tag, nodeService).pipe(Context.add(Redis.Redis, service))
})

// An EVAL that did not answer within what was left of its deadline (see evalWithin): sent, maybe run.
class EvalTimeoutError extends Error {}

const isNoScript = (error: Redis.RedisError): boolean =>
  error.cause instanceof Error && error.cause.message.startsWith("NOSCRIPT")

// effect's `eval` loads a script (SCRIPT LOAD) before its first EVALSHA and again after a
// NOSCRIPT (Redis restarted, SCRIPT FLUSH): up to three commands, each with the client's own
// deadline, so a guard relying on that deadline (see ClientDeadline) waited up to 3x it. Here
// the SHA-1 is known without asking Redis: one EVALSHA, and after a NOSCRIPT one EVAL (which
// loads the script too) within what is left of the first command's deadline.
const evalWithin =
  (send: Redis.Redis["Service"]["send"], deadline: number): Redis.Redis["Service"]["eval"] =>
  <Config extends { readonly params: ReadonlyArray<unknown>; readonly result: unknown }>(
    script: Redis.Script<Config>
  ) => {
    const sha = createHash("sha1").update(script.lua).digest("hex")
    return (...params: Config["params"]): Effect.Effect<Config["result"], Redis.RedisError> =>
      Effect.clockWith((clock) => {
        const started = clock.currentTimeMillisUnsafe()
        const args = [script.numberOfKeys(...params).toString(), ...script.params(...params).map(String)]
        return Effect.catchIf(send<Config["result"]>("EVALSHA", sha, ...args), isNoScript, () => {
          const left = deadline - (clock.currentTimeMillisUnsafe() - started)
          const timedOut = Effect.fail(
            new Redis.RedisError({ cause: new EvalTimeoutError(`EVAL did not answer within ${deadline} ms`) })
          )
          return left <= 0
            ? timedOut
            : Effect.timeoutOrElse(send<Config["result"]>("EVAL", script.lua, ...args), {
                duration: Duration.millis(left),
                orElse: () => timedOut
              })
        })
      })
  }

/**
 * {@link layer} from configuration: `Redis.layerConfig({ url: Config.Redacted("REDIS_URL") })`.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Wrap<Options>
): Layer.Layer<Redis.Redis | NodeRedis.NodeRedis, Input.OptionError | Config.ConfigError | Redis.RedisError> =>
  Layer.unwrap(Effect.map(Config.unwrap(options), layer))

/**
 * A store call that failed, timed out, or was skipped while the store is reported
 * unavailable. `message` carries the Redis error text.
 *
 * @since 0.2.0
 * @category errors
 */
export class StoreError extends Schema.TaggedError<StoreError>("effect-orchestra/StoreError")("StoreError", {
  store: Schema.String,
  operation: Schema.String,
  reason: Schema.Literals(["Failed", "Timeout", "Unavailable"]),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect())
}) {}

/**
 * The innermost message of a failure and its causes: the Redis error text
 * (`"ERR value is not an integer or out of range"`, `"The client is offline"`), not the
 * wrappers around it (`RedisError`, `RateLimiterError`, `PersistenceError`).
 *
 * @since 0.2.0
 * @category utils
 */
export const errorText = (failure: unknown): string => {
  let current: unknown = failure
  let text = ""
  for (let depth = 0; depth < 8 && current !== undefined && current !== null; depth++) {
    if (typeof current === "string") return current
    if (Predicate.hasProperty(current, "message") && typeof current.message === "string" && current.message !== "") {
      text = current.message
    }
    if (Predicate.hasProperty(current, "reason") && typeof current.reason === "object") current = current.reason
    else if (Predicate.hasProperty(current, "cause")) current = current.cause
    else break
  }
  if (text !== "") return text
  return Predicate.hasProperty(failure, "_tag") ? String(failure._tag) : String(failure)
}

// Whether a class named in `names` is somewhere in the chain of causes (node-redis's errors
// are told apart by class).
const hasCause = (failure: unknown, names: ReadonlySet<string>): boolean => {
  let current: unknown = failure
  for (let depth = 0; depth < 8 && typeof current === "object" && current !== null; depth++) {
    const name = (current as { readonly constructor?: { readonly name?: unknown } }).constructor?.name
    if (typeof name === "string" && names.has(name)) return true
    current =
      Predicate.hasProperty(current, "reason") && typeof current.reason === "object"
        ? current.reason
        : Predicate.hasProperty(current, "cause")
          ? current.cause
          : undefined
  }
  return false
}

// node-redis's own deadline (`TimeoutError`: never sent, `TimeoutReadError`: no reply), and evalWithin's.
const clientTimeouts: ReadonlySet<string> = new Set(["TimeoutError", "TimeoutReadError", "EvalTimeoutError"])
const isClientTimeout = (failure: unknown): boolean => hasCause(failure, clientTimeouts)

// node-redis refused the command before writing it: offline (commands are not queued), closed, or its
// deadline passed while still queued.
const unsent: ReadonlySet<string> = new Set([
  "ClientOfflineError",
  "ClientClosedError",
  "TimeoutError",
  "NotConnectedError"
])

/**
 * Whether the failed call certainly never reached Redis: skipped during a reported outage, or
 * refused by the client before it was written (offline, closed, its deadline passed while
 * queued). Such a write can be made again without running twice; any other failure (no reply,
 * a dropped connection, an error reply) may have run.
 *
 * @since 0.3.0
 * @category utils
 */
export const neverSent = (error: StoreError): boolean =>
  error.reason === "Unavailable" || (error.cause !== undefined && hasCause(error.cause, unsent))

/**
 * What a {@link Guard} does, checked (see {@link guardSettings}).
 *
 * @since 0.2.0
 * @category models
 */
export interface GuardSettings {
  /** Deadline of one call. */
  readonly timeout: Duration.Duration
  /** How long failures must last, with no success between them, before an outage is reported. */
  readonly reportAfter: Duration.Duration
  /**
   * While an outage is reported, calls skip Redis and one PING per interval (in the background, given
   * the `Redis` service and a scope; else one call per interval) probes it.
   */
  readonly probeInterval: Duration.Duration
}

/**
 * The guard options a store takes from its user, unchecked.
 *
 * @since 0.2.0
 * @category models
 */
export interface GuardOptions {
  /** Deadline of one Redis call. Default 500 ms. */
  readonly timeout?: Input.DurationInput | undefined
  /** Failures lasting this long (no success between) are an outage: one warning. Default 1 second; 0: at once. */
  readonly reportAfter?: Input.DurationInput | undefined
  /** During an outage, calls skip Redis and a background PING per interval probes it. Default 1 second. */
  readonly probeInterval?: Input.DurationInput | undefined
}

/**
 * The longest `prefix` a Redis-backed store of this library takes (breakers, rate limits, the
 * response cache, the gateway's key store): it is part of every key and sent with every call.
 *
 * @since 0.3.0
 * @category constants
 */
export const maxPrefixChars = 100

/**
 * A store's `prefix` option, `fallback` when not given: 1 to {@link maxPrefixChars} characters, no
 * lone surrogate (in a command it is U+FFFD, so two such prefixes would share their keys),
 * else an issue naming `prefix`.
 *
 * @since 0.3.0
 * @category constructors
 */
export const prefixOf = (input: unknown, fallback: string): Input.Checked<string> => {
  const prefix = Input.orDefault(input, fallback)
  return typeof prefix === "string" && prefix.length > 0 && prefix.length <= maxPrefixChars
    ? // In a Redis command a lone surrogate is U+FFFD: two such prefixes would share their keys.
      wellFormed(prefix, "prefix")
    : Result.fail({
        path: "prefix",
        message: `expected a string of 1 to ${maxPrefixChars} characters, got ${Input.shown(prefix)}`
      })
}

/**
 * Checks {@link GuardOptions} and fills in the defaults; `prefix` names the fields in
 * errors (`"redis.timeout"`).
 *
 * @since 0.2.0
 * @category constructors
 */
export const guardSettings = (options: GuardOptions = {}, prefix = ""): Input.Checked<GuardSettings> => {
  // `redis: null` would fail reading its first field; a misspelt `timout` would keep the default deadline unsaid.
  const where = prefix === "" ? "options" : prefix.slice(0, -1)
  const issue = Array.isArray(options)
    ? { path: where, message: "expected an object, got an array" }
    : (Input.notAnObject(where, options) ?? Input.unknownKey(options, guardKeys, prefix))
  if (issue !== undefined) return Result.fail(issue)
  return Result.map(
    Input.all([
      Input.duration(`${prefix}timeout`, Input.orDefault(options.timeout, "500 millis")),
      Input.duration(`${prefix}reportAfter`, Input.orDefault(options.reportAfter, "1 second"), { allowZero: true }),
      Input.duration(`${prefix}probeInterval`, Input.orDefault(options.probeInterval, "1 second"))
    ]),
    ([timeout, reportAfter, probeInterval]) => ({ timeout, reportAfter, probeInterval })
  )
}

const guardKeys: ReadonlySet<string> = new Set(["timeout", "reportAfter", "probeInterval"])

/**
 * Bounds and accounts the Redis calls of one store.
 *
 * @since 0.2.0
 * @category models
 */
export interface Guard {
  /** The store name, used in logs and as the metric attribute. */
  readonly store: string
  /**
   * Runs one Redis call within the deadline. Every failure (error, timeout, skipped while
   * an outage is reported) is a {@link StoreError} and is counted.
   */
  readonly call: <A, E>(operation: string, effect: Effect.Effect<A, E>) => Effect.Effect<A, StoreError>
  /** False while an outage is reported. */
  readonly available: Effect.Effect<boolean>
}

/**
 * Builds a guard for the store named `store`. Failures are counted in `errors` (default
 * `Metrics.storeErrors` with attribute `store`).
 *
 * @since 0.2.0
 * @category constructors
 */
export const makeGuard = (options: {
  readonly store: string
  readonly settings: GuardSettings
  readonly errors?: Metric.Metric<number, unknown> | undefined
}): Effect.Effect<Guard> =>
  Effect.gen(function* () {
    const clientDeadline = yield* Effect.service(ClientDeadline)
    // With a Redis service and a scope (a store's layer), the probe is a PING in the background.
    const redis = yield* Effect.serviceOption(Redis.Redis)
    const scope = yield* Effect.serviceOption(Scope.Scope)
    const { settings, store } = options
    const errors = options.errors ?? Metric.withAttributes(Metrics.storeErrors, { store })
    const timeoutMillis = Duration.toMillis(settings.timeout)
    // The client already fails every command by this deadline: no timer of our own per call.
    const clientBound = clientDeadline !== undefined && clientDeadline <= timeoutMillis
    const reportAfter = Duration.toMillis(settings.reportAfter)
    const probeInterval = Duration.toMillis(settings.probeInterval)
    // One store's health: plain fields in this closure, read and written synchronously.
    let failingSince: number | undefined
    let failures = 0
    let reported = false
    let nextProbe = 0

    const failed = (error: StoreError): Effect.Effect<never, StoreError> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        failures++
        if (failingSince === undefined) failingSince = now
        let count = Metric.update(errors, 1)
        if (reported || now - failingSince < reportAfter) return Effect.andThen(count, Effect.fail(error))
        reported = true
        nextProbe = now + probeInterval
        if (probing !== undefined) count = Effect.andThen(count, probing)
        const warning = Effect.logWarning(
          `Redis store "${store}" unavailable: ${failures} failed call${failures === 1 ? "" : "s"} in ${now - failingSince} ms, the last: ${error.message}`
        ).pipe(Effect.annotateLogs({ store, operation: error.operation }))
        return Effect.andThen(Effect.andThen(count, warning), Effect.fail(error))
      })

    const succeeded: Effect.Effect<void> = Effect.suspend(() => {
      const wasReported = reported
      failingSince = undefined
      failures = 0
      reported = false
      return wasReported
        ? Effect.logInfo(`Redis store "${store}" is back`).pipe(Effect.annotateLogs({ store }))
        : Effect.void
    })

    const run = <A, E>(operation: string, effect: Effect.Effect<A, E>): Effect.Effect<A, StoreError> => {
      const bounded: Effect.Effect<A, E | StoreError> = clientBound
        ? effect
        : Effect.timeoutOrElse(effect, {
            duration: settings.timeout,
            orElse: () =>
              Effect.fail(
                new StoreError({
                  store,
                  operation,
                  reason: "Timeout",
                  message: `${operation} timed out after ${timeoutMillis} ms`
                })
              )
          })
      return bounded.pipe(
        Effect.matchEffect({
          onFailure: (error) =>
            failed(
              error instanceof StoreError
                ? error
                : new StoreError({
                    store,
                    operation,
                    reason: isClientTimeout(error) ? "Timeout" : "Failed",
                    message: `${operation}: ${errorText(error)}`,
                    cause: error
                  })
            ),
          onSuccess: (value) => (failingSince === undefined ? Effect.succeed(value) : Effect.as(succeeded, value))
        })
      )
    }

    // While an outage is reported, one PING per probeInterval in the layer's scope until one
    // answers: callers never wait on the down Redis, and find it back as soon as it is.
    const probing: Effect.Effect<void> | undefined =
      Option.isSome(redis) && Option.isSome(scope)
        ? Effect.suspend(() => {
            const loop: Effect.Effect<void> = Effect.suspend(() =>
              reported
                ? Effect.sleep(settings.probeInterval).pipe(
                    Effect.andThen(Effect.ignore(run("PING", redis.value.send("PING")))),
                    Effect.andThen(loop)
                  )
                : Effect.void
            )
            return Effect.asVoid(Effect.forkIn(loop, scope.value))
          })
        : undefined

    const skipped = (operation: string) =>
      Effect.andThen(
        Metric.update(errors, 1),
        Effect.fail(
          new StoreError({
            store,
            operation,
            reason: "Unavailable",
            message: `Redis store "${store}" is unavailable`
          })
        )
      )

    const call = <A, E>(operation: string, effect: Effect.Effect<A, E>): Effect.Effect<A, StoreError> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        if (!reported) return run(operation, effect)
        if (probing !== undefined || now < nextProbe) return skipped(operation)
        // Without a Redis service and a scope to probe on its own, this call is the probe.
        nextProbe = now + probeInterval
        return run(operation, effect)
      })

    return { store, call, available: Effect.sync(() => !reported) }
  })
