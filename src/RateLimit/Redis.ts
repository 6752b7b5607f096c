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
import * as SharedRedis from "../Redis.js"

// Effect's stores' escaping ("%" and ":"); "}", which ended the hash tag the key is written in (a key
// "}x" made an empty tag, so its state and its records hashed to different Cluster slots); and each
// lone surrogate as "%u" and its code: a command carries it as U+FFFD, so keys differing only there
// shared one limit. Distinct keys never share Redis state.
const escapeChar = (char: string): string =>
  char === "%"
    ? "%25"
    : char === ":"
      ? "%3A"
      : char === "}"
        ? "%7D"
        : `%u${char.charCodeAt(0).toString(16).toUpperCase()}`
const escapeKey = (key: string): string => key.replace(/[%:}]|[\uD800-\uDFFF]/gu, escapeChar)

/**
 * The Redis key of a limited key's fixed windows in the store of {@link makeStore} under `prefix`.
 *
 * @internal
 */
export const windowKeyOf = (prefix: string, key: string): string => `${prefix}{${escapeKey(key)}}:window`

const fixedWindowScript = Redis.script(
  (key: string, tokens: number, refillMillis: number, limit: number | undefined) => [
    key,
    tokens,
    refillMillis,
    limit ?? ""
  ],
  {
    numberOfKeys: 1,
    lua: `
local key = KEYS[1]
local tokens = tonumber(ARGV[1])
local refillms = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
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
return { string.format("%.17g", count), string.format("%.17g", expires - now) }
`
  }
).withReturnType<readonly [count: string, ttl: string]>()

// The windows of \`AlignedFixedWindow\`, as the in-memory ones (RateLimit/memory.ts): window 0 starts
// at the first call after the windows before have all ended; a call goes in the first window from
// the current one that has room for it (a give-back can leave room before the last). Negative tokens
// give back what a call took from the window it took it in (ARGV[4] and ARGV[5] name it).
//
// A reservation tagged with an id (ARGV[6], KEYS[2] its record) records what it took for as long as its
// window lasts, so that a revocation (ARGV[7] "revoke") can give it back without knowing where it went:
// a reservation whose answer never reached its caller (\`Revocable\`). A revocation that finds no record
// leaves one saying so, and the reservation, should it run after all, takes nothing.
const windowsScript = Redis.script(
  (
    key: string,
    record: string,
    tokens: number,
    windowMillis: number,
    limit: number,
    start: string,
    index: number,
    id: string,
    mode: "" | "revoke"
  ) => [key, record, tokens, windowMillis, limit, start, index, id, mode],
  {
    numberOfKeys: 2,
    lua: `
local key = KEYS[1]
local tokens = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local givenStart = tonumber(ARGV[4])
local givenIndex = tonumber(ARGV[5])
local id = ARGV[6]
if ARGV[7] == "revoke" then
  local record = redis.call("GET", KEYS[2])
  if not record then
    redis.call("SET", KEYS[2], "revoked", "PX", string.format("%.0f", math.ceil(window)))
    return { "0", "0", 0 }
  end
  if record == "revoked" then
    return { "0", "0", 0 }
  end
  redis.call("DEL", KEYS[2])
  local s, i, t = string.match(record, "^(%S+) (%S+) (%S+)$")
  givenStart = tonumber(s)
  givenIndex = tonumber(i)
  tokens = -tonumber(t)
elseif id ~= "" and tokens > 0 and redis.call("EXISTS", KEYS[2]) == 1 then
  return redis.error_reply("REVOKED: this reservation was given back before it ran")
end
local start = tonumber(redis.call("HGET", key, "start"))
local head = tonumber(redis.call("HGET", key, "head"))
local tail = tonumber(redis.call("HGET", key, "tail"))
if tokens < 0 then
  if not start or not head or not tail or start ~= givenStart then
    return { "0", "0", 0 }
  end
  local field = string.format("c%d", givenIndex)
  local left = (tonumber(redis.call("HGET", key, field)) or 0) + tokens
  if left > 0 then
    redis.call("HSET", key, field, string.format("%.17g", left))
  else
    redis.call("HDEL", key, field)
  end
  if givenIndex < (tonumber(redis.call("HGET", key, "open")) or 0) then
    redis.call("HSET", key, "open", string.format("%d", givenIndex))
  end
  local last = tail
  while last > head and redis.call("HEXISTS", key, string.format("c%d", last)) == 0 do
    last = last - 1
  end
  if last ~= tail then
    redis.call("HSET", key, "tail", string.format("%d", last))
  end
  return { "0", "0", 0 }
end
local time = redis.call("TIME")
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
if not start or not head or not tail or now >= start + (tail + 1) * window then
  redis.call("DEL", key)
  start = now
  head = 0
  tail = 0
end
local current = math.max(head, math.floor((now - start) / window))
while head < current do
  redis.call("HDEL", key, string.format("c%d", head))
  head = head + 1
end
local from = math.max(current, tonumber(redis.call("HGET", key, "open")) or 0)
local index = from
local used = tonumber(redis.call("HGET", key, string.format("c%d", index))) or 0
while used > 0 and used + tokens > limit do
  index = index + 1
  used = tonumber(redis.call("HGET", key, string.format("c%d", index))) or 0
end
tail = math.max(tail, index)
redis.call("HSET", key, string.format("c%d", index), string.format("%.17g", used + tokens))
local open = from
while (tonumber(redis.call("HGET", key, string.format("c%d", open))) or 0) >= limit do
  open = open + 1
end
redis.call(
  "HSET", key,
  "start", string.format("%.17g", start),
  "head", string.format("%d", head),
  "tail", string.format("%d", tail),
  "open", string.format("%d", open)
)
redis.call("PEXPIRE", key, string.format("%.0f", math.ceil(start + (tail + 1) * window - now)))
if id ~= "" then
  redis.call(
    "SET", KEYS[2], string.format("%.17g %d %.17g", start, index, tokens),
    "PX", string.format("%.0f", math.ceil(start + (index + 1) * window - now))
  )
end
return { string.format("%.17g", math.max(0, start + index * window - now)), string.format("%.17g", start), index }
`
  }
).withReturnType<readonly [delay: string, start: string, index: number]>()

// The token bucket of effect's memory store. A reservation tagged with an id (ARGV[5], KEYS[2] its
// record) records its tokens until the bucket is full again; a revocation (ARGV[6] "revoke") gives them
// back (never beyond the limit), or, finding no record, leaves one so that the reservation takes nothing.
const tokenBucketScript = Redis.script(
  (
    key: string,
    record: string,
    tokens: number,
    refillMillis: number,
    limit: number,
    overflow: boolean,
    id: string,
    mode: "" | "revoke"
  ) => [key, record, tokens, refillMillis, limit, overflow ? 1 : 0, id, mode],
  {
    numberOfKeys: 2,
    lua: `
local key = KEYS[1]
local tokens = tonumber(ARGV[1])
local refillms = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local overflow = ARGV[4] == "1"
local id = ARGV[5]
local revoking = ARGV[6] == "revoke"
if revoking then
  local record = redis.call("GET", KEYS[2])
  if not record then
    redis.call("SET", KEYS[2], "revoked", "PX", string.format("%.0f", math.ceil(refillms * limit)))
    return { "0", "0" }
  end
  if record == "revoked" then
    return { "0", "0" }
  end
  redis.call("DEL", KEYS[2])
  tokens = -tonumber(record)
  overflow = true
elseif id ~= "" and tokens > 0 and redis.call("EXISTS", KEYS[2]) == 1 then
  return redis.error_reply("REVOKED: this reservation was given back before it ran")
end
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
if revoking then
  next = math.min(limit, next)
end
local took = overflow or next >= 0
if took then
  current = next
end
local ttl = last + math.ceil(limit - current) * refillms - now
if ttl > 0 then
  redis.call("HSET", key, "tokens", string.format("%.17g", current), "refilled", string.format("%.17g", last))
  redis.call("PEXPIRE", key, math.ceil(ttl))
  if id ~= "" and not revoking and took and tokens > 0 then
    redis.call("SET", KEYS[2], string.format("%.17g", tokens), "PX", string.format("%.0f", math.ceil(ttl)))
  end
else
  redis.call("DEL", key)
end
return { string.format("%.17g", next), string.format("%.17g", math.max(0, now - last)) }
`
  }
).withReturnType<readonly [remaining: string, elapsed: string]>()

/**
 * Fixed windows that hold at most `limit` tokens each (effect's store keeps a running counter
 * that lasts `window / limit` per token taken, so a window used at 60% ended after 60% of its
 * length). Window 0 starts at the first call after the windows before have all ended, and each
 * lasts `window`; a call's tokens all go in one window (the first from the current one with room
 * for them: a give-back frees room in its own window, wherever it is), placed in one step so
 * concurrent callers cannot land between two parts of it. `fixedWindowAligned` answers how long
 * until that window starts (ms) and which it is (`start`, `index`); `fixedWindowRelease` gives the
 * tokens back to it.
 *
 * A store given to `RateLimit.make` without these counts windows on the clock with its capped
 * `fixedWindow` instead (see `RateLimit.make`).
 *
 * @since 0.3.0
 * @category models
 */
export interface AlignedFixedWindow {
  readonly fixedWindowAligned: (options: {
    readonly key: string
    readonly tokens: number
    readonly window: Duration.Duration
    readonly limit: number
  }) => Effect.Effect<readonly [delay: number, start: number, index: number], RateLimiter.RateLimiterError>
  readonly fixedWindowRelease: (options: {
    readonly key: string
    readonly tokens: number
    readonly start: number
    readonly index: number
  }) => Effect.Effect<void, RateLimiter.RateLimiterError>
}

/**
 * Reservations that can be taken back without their answer: what `RateLimit.make` uses under
 * `onStoreError: "reject"`, where a call refused because its reservation's answer did not come in
 * time (the guard's deadline) must not keep the slot the reservation may have taken all the same.
 * A tagged reservation records what it took under `id` for as long as that matters (its window; the
 * bucket until full again); `revokeReservation` gives it back, or, when it finds no record (the
 * reservation has not run yet), leaves one that makes the reservation take nothing should it run.
 * Either way a reservation is given back at most once.
 *
 * @internal
 */
export interface Revocable {
  readonly fixedWindowAlignedTagged: (options: {
    readonly key: string
    readonly tokens: number
    readonly window: Duration.Duration
    readonly limit: number
    readonly id: string
  }) => Effect.Effect<readonly [delay: number, start: number, index: number], RateLimiter.RateLimiterError>
  readonly tokenBucketTagged: (options: {
    readonly key: string
    readonly tokens: number
    readonly limit: number
    readonly refillRate: Duration.Duration
    readonly allowOverflow: boolean
    readonly id: string
  }) => Effect.Effect<readonly [remaining: number, elapsedMillis: number], RateLimiter.RateLimiterError>
  readonly revokeReservation: (options: {
    readonly key: string
    readonly id: string
    readonly algorithm: "fixed-window" | "token-bucket"
    /** The limit's window (at least 1 ms) and limit, as the reservation had them. */
    readonly window: Duration.Duration
    readonly limit: number
  }) => Effect.Effect<void, RateLimiter.RateLimiterError>
}

const storeError = (operation: string) => (error: Redis.RedisError) =>
  new RateLimiter.RateLimiterError({
    reason: new RateLimiter.RateLimitStoreError({ message: `Redis ${operation} failed`, cause: error.cause })
  })

/**
 * Builds the store. State for a key lives under `<prefix><key>` (`%` and `:` in the key
 * escaped), `<prefix>{<key>}:window` for `AlignedFixedWindow`'s windows and `<prefix>{<key>}:bucket`
 * for the token bucket; a tagged reservation's record (`Revocable`) under `<that key>:r:<id>`, for
 * as long as its window lasts. `prefix` (default `"orchestra:ratelimit:"`) is 1 to 100 characters. `{<key>}` is the Redis Cluster hash tag that keeps a state and its
 * records, which one script touches together, in one slot. `adaptiveConsume` and
 * `adaptiveFeedback` are `effect`'s own.
 *
 * @since 0.2.0
 * @category constructors
 */
export const makeStore = Effect.fnUntraced(function* (options: { readonly prefix?: string | undefined } = {}) {
  const prefix = yield* Input.orOptionError(SharedRedis.prefixOf(options.prefix, "orchestra:ratelimit:"))
  const redis = yield* Redis.Redis
  const base = yield* RateLimiter.makeStoreRedis({ prefix })
  const fixedWindow = redis.eval(fixedWindowScript)
  const tokenBucket = redis.eval(tokenBucketScript)
  const windows = redis.eval(windowsScript)
  // The escaped key is the hash tag (`{...}`) of its state and of its reservations' records, which one
  // script touches together: on Redis Cluster every key of a script must hash to one slot.
  const windowKey = (key: string) => windowKeyOf(prefix, key)
  const bucketKey = (key: string) => `${prefix}{${escapeKey(key)}}:bucket`
  // A tagged reservation's record: escaped keys hold no ":", so no other key's state is named so.
  const recordKey = (state: string, id: string) => `${state}:r:${id}`
  const placed = ([delay, start, index]: readonly [string, string, number]) =>
    [Number(delay), Number(start), Number(index)] as const
  const bucketState = ([remaining, elapsed]: readonly [string, string]) => [Number(remaining), Number(elapsed)] as const
  const store: RateLimiter.RateLimiterStore["Service"] & AlignedFixedWindow & Revocable = {
    ...base,
    fixedWindowAligned: (o) => {
      const key = windowKey(o.key)
      return windows(key, key, o.tokens, Duration.toMillis(o.window), o.limit, "", 0, "", "").pipe(
        Effect.map(placed),
        Effect.mapError(storeError("fixedWindow"))
      )
    },
    fixedWindowAlignedTagged: (o) => {
      const key = windowKey(o.key)
      return windows(key, recordKey(key, o.id), o.tokens, Duration.toMillis(o.window), o.limit, "", 0, o.id, "").pipe(
        Effect.map(placed),
        Effect.mapError(storeError("fixedWindow"))
      )
    },
    fixedWindowRelease: (o) => {
      const key = windowKey(o.key)
      return windows(key, key, -o.tokens, 1, 1, String(o.start), o.index, "", "").pipe(
        Effect.asVoid,
        Effect.mapError(storeError("fixedWindow"))
      )
    },
    fixedWindow: (o) =>
      fixedWindow(`${prefix}${escapeKey(o.key)}`, o.tokens, Duration.toMillis(o.refillRate), o.limit).pipe(
        Effect.map(([count, ttl]) => [Number(count), Number(ttl)] as const),
        Effect.mapError(storeError("fixedWindow"))
      ),
    tokenBucket: (o) => {
      const key = bucketKey(o.key)
      return tokenBucket(key, key, o.tokens, Duration.toMillis(o.refillRate), o.limit, o.allowOverflow, "", "").pipe(
        Effect.map(bucketState),
        Effect.mapError(storeError("tokenBucket"))
      )
    },
    tokenBucketTagged: (o) => {
      const key = bucketKey(o.key)
      const record = recordKey(key, o.id)
      return tokenBucket(
        key,
        record,
        o.tokens,
        Duration.toMillis(o.refillRate),
        o.limit,
        o.allowOverflow,
        o.id,
        ""
      ).pipe(Effect.map(bucketState), Effect.mapError(storeError("tokenBucket")))
    },
    revokeReservation: (o) => {
      const windowMillis = Duration.toMillis(o.window)
      if (o.algorithm === "fixed-window") {
        const key = windowKey(o.key)
        return windows(key, recordKey(key, o.id), 0, windowMillis, o.limit, "", 0, o.id, "revoke").pipe(
          Effect.asVoid,
          Effect.mapError(storeError("fixedWindow"))
        )
      }
      const key = bucketKey(o.key)
      // The refill as the reservation had it (effect's limiter: the window divided by the limit).
      const refillMillis = Duration.toMillis(Duration.divideUnsafe(o.window, o.limit))
      return tokenBucket(key, recordKey(key, o.id), 0, refillMillis, o.limit, true, o.id, "revoke").pipe(
        Effect.asVoid,
        Effect.mapError(storeError("tokenBucket"))
      )
    }
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
