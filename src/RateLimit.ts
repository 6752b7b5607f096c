/**
 * Per-provider rate limits: requests per minute and tokens per minute, kept in memory or in
 * Redis (so several processes share one limit). Built on `@effect/experimental`'s
 * `RateLimiter`: a call reserves its slot and sleeps until the slot's time, so waiting
 * callers are sleeping fibers, not a queue woken all at once.
 *
 * Waiting for a slot is not part of a call's time budget: call `acquire` (or `withLimit`)
 * *outside* the call's timeout, and inside the retried attempt (each attempt is a request to
 * the provider and takes a slot; the wait is not a retry delay).
 *
 * @since 0.1.0
 */
import * as RateLimiter from "@effect/experimental/RateLimiter"
import { Context, Duration, Effect, Layer, Metric, Redacted, Ref, Schema } from "effect"
import { Redis } from "ioredis"
import { rateLimitDelayed, rateLimitWait } from "./internal/resilienceMetrics.js"
import { DurationInput } from "./Policy.js"

/**
 * The limits of one provider. `window` (default one minute) is the period both limits count
 * over; change it only for tests or providers that count differently. It is a
 * `Policy.DurationInput` (milliseconds or `"30 seconds"`, never negative) and decodes to a
 * `Duration`.
 * `algorithm`: `fixed-window` (default: the 61st request of a 60 rpm minute waits for the
 * next window) or `token-bucket` (slots refill evenly: one a second at 60 rpm).
 *
 * @since 0.1.0
 * @category schemas
 */
export const Limits = Schema.Struct({
  requestsPerMinute: Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))),
  tokensPerMinute: Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))),
  window: Schema.optional(DurationInput),
  algorithm: Schema.optional(Schema.Literal("fixed-window", "token-bucket"))
})

/**
 * @since 0.1.0
 * @category models
 */
export type Limits = typeof Limits.Type

/**
 * Limits by provider name; `default` applies to providers not listed (none when absent).
 *
 * @since 0.1.0
 * @category schemas
 */
export const Options = Schema.Struct({
  providers: Schema.optional(Schema.Record({ key: Schema.String, value: Limits })),
  default: Schema.optional(Limits)
})

/**
 * @since 0.1.0
 * @category models
 */
export type Options = typeof Options.Type

/**
 * The limits of one provider as code passes them: `window` in any `Duration.DurationInput` form.
 *
 * @since 0.1.0
 * @category models
 */
export interface LimitsInput {
  readonly requestsPerMinute?: number | undefined
  readonly tokensPerMinute?: number | undefined
  readonly window?: Duration.DurationInput | undefined
  readonly algorithm?: "fixed-window" | "token-bucket" | undefined
}

/**
 * What {@link make}, {@link layerMemory} and {@link layerRedis} take: {@link Options} with
 * durations in any `Duration.DurationInput` form, decoded (and refused when invalid) when
 * the service is built.
 *
 * @since 0.1.0
 * @category models
 */
export interface MakeOptions {
  readonly providers?: { readonly [provider: string]: LimitsInput } | undefined
  readonly default?: LimitsInput | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * Waits until `provider` may receive one more request of about `tokens` tokens (0: count
   * the request only), and returns how long it waited. Call it outside the request timeout.
   * The slot is taken when `acquire` starts: a caller interrupted while waiting does not
   * give it back.
   */
  readonly acquire: (provider: string, tokens?: number) => Effect.Effect<Duration.Duration>
  /** `acquire`, then the effect. */
  readonly withLimit: <A, E, R>(
    provider: string,
    tokensEstimate: number,
    effect: Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E, R>
  /** The limits that apply to `provider`, if any. */
  readonly limitsOf: (provider: string) => Limits | undefined
}

/**
 * @since 0.1.0
 * @category tags
 */
export class RateLimits extends Context.Tag("effect-orchestra/RateLimits")<RateLimits, Service>() {}

/**
 * The storage of the counters: `@effect/experimental`'s `RateLimiterStore`.
 *
 * @since 0.1.0
 * @category models
 */
export type Store = Context.Tag.Service<RateLimiter.RateLimiterStore>

const decodeOptions = Schema.decodeUnknownSync(Options)

// `Policy.DurationInput` takes numbers, strings and `Duration`s; the rarer forms become `Duration`s first.
const limitsData = (limits: LimitsInput | undefined): unknown =>
  limits === undefined || (typeof limits.window !== "bigint" && !Array.isArray(limits.window))
    ? limits
    : { ...limits, window: Duration.decode(limits.window) }

/**
 * Builds the service on a store. `storeTimeout` (none by default; `layerRedis` uses 100 ms)
 * bounds each store call; a store that fails or is too slow lets the call through (fail open: the provider's own 429s still apply),
 * counted as a zero wait and logged once per outage.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (
  input: MakeOptions,
  store: Store,
  config: { readonly storeTimeout?: Duration.DurationInput | undefined; readonly storeName?: string | undefined } = {}
) {
  const options = decodeOptions({
    providers:
      input.providers === undefined
        ? undefined
        : Object.fromEntries(Object.entries(input.providers).map(([name, limits]) => [name, limitsData(limits)])),
    default: limitsData(input.default)
  })
  const limiter = yield* Effect.provideService(RateLimiter.make, RateLimiter.RateLimiterStore, store)
  const bounded = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E | "timed out"> =>
    config.storeTimeout === undefined
      ? effect
      : Effect.timeoutFail(effect, { duration: config.storeTimeout, onTimeout: () => "timed out" as const })
  const storeName = config.storeName ?? "memory"
  const healthy = yield* Ref.make(true)
  // A Map, not the record: a lookup on a plain object finds prototype members ("constructor").
  const providers = new Map(Object.entries(options.providers ?? {}))

  const limitsOf = (provider: string): Limits | undefined => providers.get(provider) ?? options.default

  const consume = (
    provider: string,
    kind: "rpm" | "tpm",
    limit: number,
    tokens: number,
    limits: Limits
  ): Effect.Effect<Duration.Duration> =>
    limiter
      .consume({
        key: `${provider}:${kind}`,
        limit,
        window: limits.window ?? Duration.minutes(1),
        // A request larger than the whole budget waits for an empty window, then goes.
        tokens: Math.min(tokens, limit),
        onExceeded: "delay",
        algorithm: limits.algorithm ?? "fixed-window"
      })
      .pipe(
        bounded,
        Effect.matchEffect({
          onFailure: (error) =>
            Effect.as(
              Effect.flatMap(Ref.getAndSet(healthy, false), (was) =>
                was
                  ? Effect.logWarning(
                      `rate-limit store "${storeName}" unavailable; calls to ${provider} go through unlimited`
                    ).pipe(Effect.annotateLogs({ cause: typeof error === "string" ? error : error.message }))
                  : Effect.void
              ),
              Duration.zero
            ),
          onSuccess: (result) =>
            Effect.as(
              Effect.flatMap(Ref.getAndSet(healthy, true), (was) =>
                was ? Effect.void : Effect.logInfo(`rate-limit store "${storeName}" is back`)
              ),
              result.delay
            )
        })
      )

  const acquire = Effect.fn("RateLimits.acquire")(function* (provider: string, tokens = 0) {
    const limits = limitsOf(provider)
    if (limits === undefined) return Duration.zero
    const [rpm, tpm] = yield* Effect.all(
      [
        limits.requestsPerMinute === undefined
          ? Effect.succeed(Duration.zero)
          : consume(provider, "rpm", limits.requestsPerMinute, 1, limits),
        limits.tokensPerMinute === undefined || tokens <= 0
          ? Effect.succeed(Duration.zero)
          : consume(provider, "tpm", limits.tokensPerMinute, Math.ceil(tokens), limits)
      ],
      { concurrency: 2 }
    )
    const wait = Duration.max(rpm, tpm)
    if (Duration.isZero(wait)) return wait
    const limit = Duration.greaterThanOrEqualTo(rpm, tpm) ? "rpm" : "tpm"
    yield* Metric.increment(Metric.tagged(Metric.tagged(rateLimitDelayed, "provider", provider), "limit", limit))
    yield* Metric.incrementBy(
      Metric.tagged(Metric.tagged(rateLimitWait, "provider", provider), "limit", limit),
      Duration.toMillis(wait)
    )
    yield* Effect.annotateCurrentSpan({ "orchestra.rate_limit.wait_ms": Duration.toMillis(wait), limit })
    yield* Effect.sleep(wait)
    return wait
  })

  const service: Service = {
    acquire,
    withLimit: (provider, tokensEstimate, effect) => Effect.zipRight(acquire(provider, tokensEstimate), effect),
    limitsOf
  }
  return service
})

/**
 * Counters in this process only (time from the `Clock`, so `TestClock` drives them).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (options: MakeOptions): Layer.Layer<RateLimits> =>
  Layer.effect(
    RateLimits,
    Effect.flatMap(Effect.provide(RateLimiter.RateLimiterStore, RateLimiter.layerStoreMemory), (store) =>
      make(options, store)
    )
  )

/**
 * @since 0.1.0
 * @category models
 */
export interface RedisOptions {
  /** Default `redis://127.0.0.1:6379`. */
  readonly url?: string | Redacted.Redacted<string> | undefined
  /** Default `"orchestra:ratelimit:"`. */
  readonly prefix?: string | undefined
  /** Longest wait for one store call before the request goes through unlimited. Default 100 ms. */
  readonly storeTimeout?: Duration.DurationInput | undefined
  /** Longest pause between reconnection attempts. Default 1 second. */
  readonly reconnectMax?: Duration.DurationInput | undefined
}

// The scripts of @effect/experimental's Redis RateLimiterStore. That store builds its own
// client with ioredis defaults (offline queue, 20 retries per command, unbounded QUIT on
// close), which hangs callers and shutdown while Redis is down; this one fails fast.
const fixedWindowScript = `
local key = KEYS[1]
local tokens = tonumber(ARGV[1])
local refillms = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local current = tonumber(redis.call("GET", key))
if not current then
  local nextpttl = refillms * tokens
  redis.call("SET", key, tokens, "PX", nextpttl)
  return { tokens, nextpttl }
end
local currentpttl = tonumber(redis.call("PTTL", key) or "0")
local next = current + tokens
if limit and next > limit then
  return { next, currentpttl }
end
local nextpttl = currentpttl + (refillms * tokens)
redis.call("SET", key, next, "PX", nextpttl)
return { next, nextpttl }
`

const tokenBucketScript = `
local key = KEYS[1]
local last_refill_key = key .. ":refill"
local tokens = tonumber(ARGV[1])
local refill_ms = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local overflow = ARGV[5] == "1"
local current = tonumber(redis.call("GET", key))
local last_refill = tonumber(redis.call("GET", last_refill_key))
if not current then
  current = limit
  last_refill = now
  redis.call("SET", key, current)
  redis.call("SET", last_refill_key, last_refill)
end
local elapsed = now - last_refill
local refill_amount = math.floor(elapsed / refill_ms)
if refill_amount > 0 then
  current = math.min(current + refill_amount, limit)
  last_refill = last_refill + (refill_amount * refill_ms)
  redis.call("SET", last_refill_key, last_refill)
end
local next = current - tokens
if next < 0 and not overflow then
  redis.call("SET", key, current)
  return next
end
redis.call("SET", key, next)
return next
`

interface Scripted {
  fixedWindow(key: string, tokens: number, refillMillis: number, limit: number | string): Promise<[number, number]>
  tokenBucket(
    key: string,
    tokens: number,
    refillMillis: number,
    limit: number,
    now: number,
    overflow: number
  ): Promise<number>
}

/**
 * A Redis store shared by every process using the same Redis and prefix. The client fails
 * fast while disconnected, reconnects in the background and is closed with the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeRedisStore = Effect.fnUntraced(function* (options: RedisOptions = {}) {
  const prefix = options.prefix ?? "orchestra:ratelimit:"
  const url = options.url ?? "redis://127.0.0.1:6379"
  const reconnectMax = Duration.toMillis(Duration.decode(options.reconnectMax ?? "1 second"))
  const client = yield* Effect.acquireRelease(
    Effect.sync(() => {
      const redis = new Redis(Redacted.isRedacted(url) ? Redacted.value(url) : url, {
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        // Commands issued in the same tick go out in one socket write (one syscall, not one each).
        enableAutoPipelining: true,
        retryStrategy: (times) => Math.min(50 * times, reconnectMax)
      })
      redis.on("error", () => {})
      redis.defineCommand("fixedWindow", { lua: fixedWindowScript, numberOfKeys: 1 })
      redis.defineCommand("tokenBucket", { lua: tokenBucketScript, numberOfKeys: 1 })
      return redis as Redis & Scripted
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
  }).pipe(Effect.timeoutOption("1 second"))

  const storeError = (cause: unknown) =>
    new RateLimiter.RateLimitStoreError({ message: "Redis rate-limit store failed", cause })

  const store: Store = {
    fixedWindow: (o) =>
      Effect.tryPromise({
        try: () => client.fixedWindow(prefix + o.key, o.tokens, Duration.toMillis(o.refillRate), o.limit ?? ""),
        catch: storeError
      }),
    tokenBucket: (o) =>
      Effect.clockWith((clock) =>
        Effect.tryPromise({
          try: () =>
            client.tokenBucket(
              prefix + o.key,
              o.tokens,
              Duration.toMillis(o.refillRate),
              o.limit,
              clock.unsafeCurrentTimeMillis(),
              o.allowOverflow ? 1 : 0
            ),
          catch: storeError
        })
      )
  }
  return store
})

/**
 * Limits shared through Redis by every process that uses the same Redis and prefix.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRedis = (options: MakeOptions, redis: RedisOptions = {}): Layer.Layer<RateLimits> =>
  Layer.scoped(
    RateLimits,
    Effect.flatMap(makeRedisStore(redis), (store) =>
      make(options, store, { storeTimeout: redis.storeTimeout ?? "100 millis", storeName: "redis" })
    )
  )
