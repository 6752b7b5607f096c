/**
 * A Redis backend for the response cache (`ioredis`). Expiry is Redis's (`PX`), batches are
 * one round trip (`MGET`, a pipeline of `SET ... PX`), values are JSON encoded with the
 * `StoredEntry` schema.
 *
 * Redis is an optimisation, never a dependency: every command has a bounded wait
 * (`timeout`, default 50 ms); when Redis is down or slow the lookup is a miss and the write
 * is dropped, the error counter goes up, one warning is logged per outage, and the call goes
 * straight to the provider. Commands are not queued while disconnected
 * (`enableOfflineQueue: false`), and ioredis reconnects in the background, so the cache
 * comes back by itself when Redis does.
 *
 * @since 0.1.0
 */
import { Clock, Duration, Effect, Layer, Option, Redacted, Ref, Schema } from "effect"
import { Redis } from "ioredis"
import * as ResponseCache from "../ResponseCache.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options extends ResponseCache.Options {
  /** Connection URL (`redis://[:password@]host:port[/db]`). Default `redis://127.0.0.1:6379`. */
  readonly url?: string | Redacted.Redacted<string> | undefined
  /** Prefix of every key. Default `"orchestra:cache:"`. */
  readonly prefix?: string | undefined
  /** Longest wait for one Redis command before the call goes on without the cache. Default 50 ms. */
  readonly timeout?: Duration.DurationInput | undefined
  /** Longest wait for the first connection when the layer is built. Default 1 second. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** Longest pause between reconnection attempts. Default 1 second. */
  readonly reconnectMax?: Duration.DurationInput | undefined
  /** The `cache` tag of the metrics. Default `"redis"`. */
  readonly name?: string | undefined
}

const Encoded = Schema.parseJson(ResponseCache.StoredEntry)
const encode = Schema.encodeSync(Encoded)
const decode = Schema.decodeUnknownOption(Encoded)

/**
 * A Redis store. The client is closed (bounded `QUIT`, then disconnect) with the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeStore = Effect.fnUntraced(function* (options: Options = {}) {
  const name = options.name ?? "redis"
  const prefix = options.prefix ?? "orchestra:cache:"
  const timeout = Duration.decode(options.timeout ?? "50 millis")
  const connectTimeout = Duration.decode(options.connectTimeout ?? "1 second")
  const reconnectMax = Duration.toMillis(Duration.decode(options.reconnectMax ?? "1 second"))
  const url = options.url === undefined ? "redis://127.0.0.1:6379" : options.url

  const client = yield* Effect.acquireRelease(
    Effect.sync(() => {
      const redis = new Redis(Redacted.isRedacted(url) ? Redacted.value(url) : url, {
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        // Commands issued in the same tick go out in one socket write (one syscall, not one each).
        enableAutoPipelining: true,
        // The bounded wait is the client's own per-command timer: an Effect-level timeout
        // (a fiber and a timer per call) tripled the cost of a cache hit under load.
        commandTimeout: Math.max(1, Duration.toMillis(timeout)),
        connectTimeout: Math.max(1, Duration.toMillis(connectTimeout)),
        retryStrategy: (times) => Math.min(50 * times, reconnectMax),
        lazyConnect: false
      })
      // Connection errors surface through the failed commands (counted and logged there).
      redis.on("error", () => {})
      return redis
    }),
    (redis) =>
      Effect.tryPromise(() => redis.quit()).pipe(
        Effect.interruptible,
        Effect.timeoutOption("1 second"),
        Effect.ignore,
        Effect.ensuring(Effect.sync(() => redis.disconnect()))
      )
  )

  yield* Effect.async<void>((resume) => {
    if (client.status === "ready") return resume(Effect.void)
    const ready = () => resume(Effect.void)
    client.once("ready", ready)
    return Effect.sync(() => client.off("ready", ready))
  }).pipe(
    Effect.timeoutOption(connectTimeout),
    Effect.flatMap(
      Option.match({
        onSome: () => Effect.void,
        onNone: () =>
          Effect.logWarning(
            `Redis cache "${name}" not reachable within ${Duration.format(connectTimeout)}; calls go to the provider until it is`
          )
      })
    )
  )

  const healthy = yield* Ref.make(true)

  const failed = (operation: string, cause: unknown): Effect.Effect<void> =>
    Effect.zipRight(
      ResponseCache.countError(name),
      Effect.flatMap(Ref.getAndSet(healthy, false), (wasHealthy) =>
        wasHealthy
          ? Effect.logWarning(
              `Redis cache "${name}" unavailable (${operation}); calls go straight to the provider`
            ).pipe(Effect.annotateLogs({ cause: cause instanceof Error ? cause.message : String(cause) }))
          : Effect.void
      )
    )

  const succeeded: Effect.Effect<void> = Effect.flatMap(Ref.getAndSet(healthy, true), (wasHealthy) =>
    wasHealthy ? Effect.void : Effect.logInfo(`Redis cache "${name}" is back`)
  )

  /** Runs a command with the bounded wait; `fallback` when Redis fails or is too slow. */
  const command = <A>(operation: string, run: () => Promise<A>, fallback: A): Effect.Effect<A> =>
    Effect.tryPromise(run).pipe(
      Effect.matchEffect({
        onFailure: (error) => Effect.as(failed(operation, error), fallback),
        onSuccess: (value) => Effect.as(succeeded, value)
      })
    )

  const store: ResponseCache.Store = {
    name,
    getMany: (keys) =>
      keys.length === 0
        ? Effect.succeed([])
        : Effect.flatMap(
            command(
              "MGET",
              () => client.mget(keys.map((k) => prefix + k)),
              keys.map((): string | null => null)
            ),
            (values) => {
              let corrupt = 0
              const entries = values.map((value) => {
                if (value === null) return Option.none()
                const entry = decode(value)
                if (Option.isNone(entry)) corrupt++
                return entry
              })
              return corrupt === 0 ? Effect.succeed(entries) : Effect.as(ResponseCache.countError(name), entries)
            }
          ),
    setMany: (entries) =>
      entries.length === 0
        ? Effect.void
        : Effect.flatMap(Clock.currentTimeMillis, (now) =>
            command(
              "SET",
              async () => {
                const pipeline = client.pipeline()
                for (const { entry, key } of entries) {
                  pipeline.set(prefix + key, encode(entry), "PX", Math.max(1, Math.ceil(entry.staleUntil - now)))
                }
                // A pipeline resolves even when its commands failed (e.g. while disconnected).
                const failure = (await pipeline.exec())?.find(([error]) => error !== null)
                if (failure !== undefined) throw failure[0]
              },
              undefined
            )
          ),
    delete: (keys) =>
      keys.length === 0
        ? Effect.void
        : Effect.asVoid(command("DEL", () => client.del(...keys.map((k) => prefix + k)), 0))
  }
  return store
})

/**
 * A Redis-backed response cache (single-flight per process, as in memory).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRedis = (options: Options = {}): Layer.Layer<ResponseCache.ResponseCache> =>
  Layer.scoped(
    ResponseCache.ResponseCache,
    Effect.flatMap(makeStore(options), (store) => ResponseCache.make(store, options))
  )
