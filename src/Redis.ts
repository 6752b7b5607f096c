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
 *   deadline. A Redis that answers the store's calls with an error (OOM, READONLY) answers a PING
 *   all the same: then one of the store's own calls per `probeInterval` goes to it instead, and only
 *   its success says the store is back.
 *
 * Stores take the `Redis` service as a requirement, so an application may also provide
 * its own (`NodeRedis.layer` with other options); the guard bounds calls either way.
 *
 * @since 0.2.0
 */
import type * as NodeRedis from "@effect/platform-node/NodeRedis"
import { Config, type Duration, Effect, Layer, type Redacted } from "effect"
import type { Redis } from "effect/persistence"
import type * as Input from "./Input.js"
import * as Connection from "./redis/connection.js"
import type { StoreError } from "./redis/errors.js"

/**
 * Connection options.
 *
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /**
   * `redis://[[user]:password@]host:port[/db]` (user and password percent-encoded, `db` a whole number up to 2^31-1).
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
  /** Longest pause between reconnection attempts (exponential from 50 ms, so at least 50 ms). Default 2 seconds. */
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
   *
   * Either way, a Redis that answers and refuses the URL's credentials (`WRONGPASS`, `NOAUTH`) is not
   * unreachable: the layer fails at once with a `RedisError` naming the address and the refusal (never the
   * password). Refused only after the build (Redis came up later), they are tried again as any failure.
   */
  readonly onUnreachableAtStart?: "fail" | "start" | undefined
  /**
   * TLS settings of a `rediss://` URL (since 0.3.0): a Redis whose certificate a CA of its own signed, one
   * that asks for a client certificate, or one reached by a name its certificate does not carry. Given with
   * `redis://`, an `OptionError` naming `tls`. The certificate is always verified.
   */
  readonly tls?: TlsOptions | undefined
}

/**
 * TLS settings of {@link Options}.
 *
 * @since 0.3.0
 * @category models
 */
export interface TlsOptions {
  /** PEM certificate(s) of the CAs to trust, in place of Node's own list. */
  readonly ca?: string | ReadonlyArray<string> | undefined
  /** PEM client certificate, for a Redis that asks for one (`tls-auth-clients yes`); with `key`. */
  readonly cert?: string | undefined
  /** PEM private key of `cert`. Pass it as `Redacted` (`Config.redacted("REDIS_TLS_KEY")`). */
  readonly key?: string | Redacted.Redacted<string> | undefined
  /**
   * The passphrase `key` is encrypted with (since 0.3.0); with `key`. Pass it as `Redacted`
   * (`Config.redacted("REDIS_TLS_PASSPHRASE")`). A wrong one fails the connection with a `RedisError`.
   */
  readonly passphrase?: string | Redacted.Redacted<string> | undefined
  /** The name the server's certificate must carry, when not the URL's host (a tunnel, an address). */
  readonly servername?: string | undefined
}

export {
  /**
   * The deadline, in milliseconds, that the `Redis` service's client puts on every command
   * by itself, when known ({@link layer} sets it). A guard whose `timeout` is at least this
   * long leaves the deadline to the client: an `Effect.timeout` per call forks two fibers and
   * a timer, which tripled the cost of a Redis round trip (bench/cache.ts, part B).
   *
   * @since 0.2.0
   * @category references
   */
  ClientDeadline,
  /**
   * `effect/persistence`'s `Redis` service (and `NodeRedis`, the node-redis client) for the
   * stores of this library. Connects when built. An unreachable Redis fails the layer with
   * a `RedisError` (after at most `connectTimeout`, also when it accepts the connection and
   * never answers), unless `onUnreachableAtStart: "start"`: then the layer builds, says so
   * in a warning, and connects in the background, its commands failing at once meanwhile.
   * Later outages are the stores' business (each fails open or closed as configured) while
   * the client reconnects in the background. The service's `reserve` waits at most `connectTimeout` for a
   * connection (a new one's handshake, or one of the pool's to be freed; a new one not ready by then is closed, not
   * left to hold the pool; one of the pool's that closed while idle, its Redis restarted, is not handed out), and
   * `subscribe` at most
   * `connectTimeout` plus `commandTimeout` (its queue then fails with the `RedisError`, and its connection is closed;
   * one whose first connection Redis refuses, a password rotated, fails so at once with the refusal). A subscription
   * reconnects as the client does (each handshake within `connectTimeout`, at most `reconnectMax` apart) and
   * subscribes again: messages published meanwhile are not delivered; a reconnection an ACL refuses (NOPERM: its
   * channel taken from the user) fails its queue with the refusal, said in a warning naming the channel. A reserved
   * connection's `eval` shares one deadline as the shared one's does. After a failover, a connection left on the
   * old primary (a replica now, refusing writes with READONLY) is dropped by the first guarded call it refuses (at
   * most once per `reconnectMax`), so the client reconnects to the primary its address (a DNS name) names now; so is a
   * connection whose guarded calls have all timed out for `connectTimeout` (one a proxy, a NAT or a vanished host lost
   * without closing it, which a command's deadline leaves open), with an info line.
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
  layer
} from "./redis/connection.js"

/**
 * {@link layer} from configuration: `Redis.layerConfig({ url: Config.Redacted("REDIS_URL") })`.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Wrap<Options>
): Layer.Layer<Redis.Redis | NodeRedis.NodeRedis, Input.OptionError | Config.ConfigError | Redis.RedisError> =>
  Layer.unwrap(Effect.map(Config.unwrap(options), Connection.layer))

export {
  /**
   * A store call that failed, timed out, or was skipped while the store is reported
   * unavailable. `message` carries the Redis error text.
   *
   * @since 0.2.0
   * @category errors
   */
  StoreError,
  /**
   * The innermost message of a failure and its causes: the Redis error text
   * (`"ERR value is not an integer or out of range"`, `"The client is offline"`), not the
   * wrappers around it (`RedisError`, `RateLimiterError`, `PersistenceError`).
   *
   * @since 0.2.0
   * @category utils
   */
  errorText,
  /**
   * Whether the failed call certainly never reached Redis: skipped during a reported outage, or
   * refused by the client before it was written (offline, closed, its deadline passed while
   * queued). Such a write can be made again without running twice; any other failure (no reply,
   * a dropped connection, an error reply) may have run.
   *
   * @since 0.3.0
   * @category utils
   */
  neverSent
} from "./redis/errors.js"

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

export {
  /**
   * The longest `prefix` a Redis-backed store of this library takes (breakers, rate limits, the
   * response cache, the gateway's key store): it is part of every key and sent with every call.
   *
   * @since 0.3.0
   * @category constants
   */
  maxPrefixChars,
  /**
   * A store's `prefix` option, `fallback` when not given: 1 to {@link maxPrefixChars} characters, no
   * lone surrogate (in a command it is U+FFFD, so two such prefixes would share their keys), and
   * no empty first hash tag (`{}`: Redis Cluster would hash each whole key, splitting a store's
   * related keys across slots), else an issue naming `prefix`.
   *
   * @since 0.3.0
   * @category constructors
   */
  prefixOf,
  /**
   * Checks {@link GuardOptions} and fills in the defaults; `prefix` names the fields in
   * errors (`"redis.timeout"`).
   *
   * @since 0.2.0
   * @category constructors
   */
  guardSettings,
  /**
   * Builds a guard for the store named `store`. Failures are counted in `errors` (default
   * `Metrics.storeErrors` with attribute `store`, a series of the scope the guard is built in:
   * closing it, the store's layer, removes the series).
   *
   * @since 0.2.0
   * @category constructors
   */
  makeGuard
} from "./redis/guard.js"
