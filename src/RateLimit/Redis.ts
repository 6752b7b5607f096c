/**
 * A Redis `RateLimiterStore` (the storage behind `effect/persistence`'s `RateLimiter`) that
 * keeps fractional rates exact, shared by every process using the same Redis and prefix.
 *
 * Why not `RateLimiter.layerStoreRedis`: when `window / limit` is not a whole number of
 * milliseconds (3,500 per minute, 7 per 2 seconds), its fixed-window script rounds each
 * admission's expiry up to the next millisecond, and the rounding adds up: at 3,500 per
 * minute the 3,500th request of a burst is told to wait 2.8 s instead of 0, and every
 * request of the first window waits 1 ms or more (so `maxWait: 0` refuses nearly all of
 * them). Its token bucket also takes the time from each process's clock and stores it with
 * Lua's 14 significant digits, dropping the fractions.
 *
 * These scripts keep the state in a hash with 17 significant digits, take the time from
 * the Redis server (`TIME`, one clock for every process), and make the same decisions as
 * the in-memory store; only the key's expiry is rounded up.
 *
 * @since 0.2.0
 */
import { Duration, Effect, Layer } from "effect"
import { RateLimiter, Redis } from "effect/persistence"
import * as Input from "../Input.js"

// Same escaping as effect's stores: distinct keys never share Redis state.
const escapeKey = (key: string): string => key.replace(/%/g, "%25").replace(/:/g, "%3A")

const fixedWindowScript = Redis.script(
  (key: string, tokens: number, refillMillis: number, limit: number | undefined, align: number | undefined) => [
    key,
    tokens,
    refillMillis,
    limit ?? "",
    align ?? ""
  ],
  {
    numberOfKeys: 1,
    lua: `
local key = KEYS[1]
local tokens = tonumber(ARGV[1])
local refillms = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local align = tonumber(ARGV[4])
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local count = tonumber(redis.call("HGET", key, "count"))
local expires = tonumber(redis.call("HGET", key, "expires"))
if not count or not expires or expires <= now then
  count = 0
  expires = now
end
if limit and count + tokens > limit then
  return { string.format("%.17g", count + tokens), string.format("%.17g", expires - now) }
end
-- Aligned (windows of align tokens): a reservation that would straddle a boundary also takes the
-- rest of the window before, so that all its tokens count in the window of its last one.
if align and not limit and tokens > 1 then
  local window = math.floor((count + tokens - 1) / align)
  if math.floor(count / align) ~= window then
    tokens = tokens + window * align - count
  end
end
count = count + tokens
if not limit then
  expires = expires + refillms * tokens
elseif expires == now and tokens > 0 then
  expires = now + refillms * limit
end
if expires <= now then
  redis.call("DEL", key)
  return { string.format("%.17g", count), "0" }
end
redis.call("HSET", key, "count", string.format("%.17g", count), "expires", string.format("%.17g", expires))
redis.call("PEXPIRE", key, math.ceil(expires - now))
return { string.format("%.17g", count), string.format("%.17g", expires - now), string.format("%.17g", tokens) }
`
  }
).withReturnType<readonly [count: string, ttl: string, taken?: string]>()

const tokenBucketScript = Redis.script(
  (key: string, tokens: number, refillMillis: number, limit: number, overflow: boolean) => [
    key,
    tokens,
    refillMillis,
    limit,
    overflow ? 1 : 0
  ],
  {
    numberOfKeys: 1,
    lua: `
local key = KEYS[1]
local tokens = tonumber(ARGV[1])
local refillms = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local overflow = ARGV[4] == "1"
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local current = tonumber(redis.call("HGET", key, "tokens"))
local last = tonumber(redis.call("HGET", key, "refilled"))
if not current or not last then
  current = limit
  last = now
end
local add = math.floor((now - last) / refillms)
if add > 0 then
  current = math.min(limit, current + add)
  last = last + add * refillms
end
if current >= limit then
  last = now
end
local next = current - tokens
if overflow or next >= 0 then
  current = next
end
local ttl = last + math.ceil(limit - current) * refillms - now
if ttl > 0 then
  redis.call("HSET", key, "tokens", string.format("%.17g", current), "refilled", string.format("%.17g", last))
  redis.call("PEXPIRE", key, math.ceil(ttl))
else
  redis.call("DEL", key)
end
return { string.format("%.17g", next), string.format("%.17g", math.max(0, now - last)) }
`
  }
).withReturnType<readonly [remaining: string, elapsed: string]>()

/**
 * A fixed window (delay mode: a running counter) that places a reservation atomically so that
 * all its tokens count in the window of its last one: one that would straddle a boundary also
 * takes the rest of the window before. Two store calls (take, then take the straddled part
 * again) let other callers' tokens land between them, and a call then ran in a window that
 * counted only part of its tokens. `windowLimit` is the tokens of one window; the answer is the
 * counter after the call, the time until it expires (ms), and the tokens taken.
 *
 * @since 0.3.0
 * @category models
 */
export interface AlignedFixedWindow {
  readonly fixedWindowAligned: (options: {
    readonly key: string
    readonly tokens: number
    readonly refillRate: Duration.Duration
    readonly windowLimit: number
  }) => Effect.Effect<readonly [count: number, ttl: number, taken: number], RateLimiter.RateLimiterError>
}

const storeError = (operation: string) => (error: Redis.RedisError) =>
  new RateLimiter.RateLimiterError({
    reason: new RateLimiter.RateLimitStoreError({ message: `Redis ${operation} failed`, cause: error.cause })
  })

/**
 * Builds the store. State for a key lives under `<prefix><key>` (`%` and `:` in the key
 * escaped). `adaptiveConsume` and `adaptiveFeedback` are `effect`'s own.
 *
 * @since 0.2.0
 * @category constructors
 */
export const makeStore = Effect.fnUntraced(function* (options: { readonly prefix?: string | undefined } = {}) {
  const prefix = Input.orDefault(options.prefix, "orchestra:ratelimit:")
  if (typeof prefix !== "string" || prefix.length === 0) {
    return yield* new Input.OptionError({ path: "prefix", message: "invalid prefix: expected a non-empty string" })
  }
  const redis = yield* Redis.Redis
  const base = yield* RateLimiter.makeStoreRedis({ prefix })
  const fixedWindow = redis.eval(fixedWindowScript)
  const tokenBucket = redis.eval(tokenBucketScript)
  const fixedWindowAligned: AlignedFixedWindow["fixedWindowAligned"] = (o) =>
    fixedWindow(
      `${prefix}${escapeKey(o.key)}`,
      o.tokens,
      Duration.toMillis(o.refillRate),
      undefined,
      o.windowLimit
    ).pipe(
      Effect.map(([count, ttl, taken]) => [Number(count), Number(ttl), Number(taken ?? o.tokens)] as const),
      Effect.mapError(storeError("fixedWindow"))
    )
  const store: RateLimiter.RateLimiterStore["Service"] & AlignedFixedWindow = {
    ...base,
    fixedWindowAligned,
    fixedWindow: (o) =>
      fixedWindow(`${prefix}${escapeKey(o.key)}`, o.tokens, Duration.toMillis(o.refillRate), o.limit, undefined).pipe(
        Effect.map(([count, ttl]) => [Number(count), Number(ttl)] as const),
        Effect.mapError(storeError("fixedWindow"))
      ),
    tokenBucket: (o) =>
      tokenBucket(
        `${prefix}${escapeKey(o.key)}:bucket`,
        o.tokens,
        Duration.toMillis(o.refillRate),
        o.limit,
        o.allowOverflow
      ).pipe(
        Effect.map(([remaining, elapsed]) => [Number(remaining), Number(elapsed)] as const),
        Effect.mapError(storeError("tokenBucket"))
      )
  }
  return store
})

/**
 * The store as a layer, for use with `effect/persistence`'s `RateLimiter` directly.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerStore = (
  options: { readonly prefix?: string | undefined } = {}
): Layer.Layer<RateLimiter.RateLimiterStore, Input.OptionError, Redis.Redis> =>
  Layer.effect(RateLimiter.RateLimiterStore, makeStore(options))
