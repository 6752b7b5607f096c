/**
 * The response cache's entries in Redis: the keys they are written under, their encoding, the
 * bounded script that reads a batch of them back, and the batched writes, each bounded by
 * `maxValueBytes` and `maxBatchBytes` (oversized values counted, the first one said).
 *
 * @internal
 */
import { Duration, Effect, Exit, Option, Result, Schema } from "effect"
import type { Persistence } from "effect/persistence"
import { Redis } from "effect/persistence"
import * as Input from "../Input.js"
import type * as Counters from "../stats/counters.js"
import type * as SharedRedis from "../Redis.js"
import * as ResponseCache from "../ResponseCache.js"
import * as Lookup from "./lookup.js"
import type * as Table from "./table.js"

// A code unit of a lone surrogate (with the `u` flag, a pair is one code point and does not match).
const loneSurrogate = /[\uD800-\uDFFF]/u

// Redis takes keys as UTF-8, where a lone surrogate has no form (written as U+FFFD): "k\ud800" and
// "k\udc00" were one entry. Such a key is written as NUL and its JSON text (where a lone surrogate is its
// escape), and so is one starting with NUL, so that none meets a key written as it is given.
export const keyOf = (key: string): string =>
  key.charCodeAt(0) !== 0 && !loneSurrogate.test(key) ? key : `\u0000${JSON.stringify(key)}`

const encode = Schema.encodeSync(ResponseCache.StoredEntry)
const decode = Schema.decodeUnknownExit(ResponseCache.StoredEntry)

// The entry written around a value (its kind, origin, expiry times), which maxValueBytes does not count: a value
// this process may write is read back whole with it.
const entryBytes = 4096

// Reads the values of KEYS no longer than ARGV[1] bytes, at most ARGV[2] bytes of them in all (the first one read
// whatever its length). A longer one (a process with a larger maxValueBytes wrote it) is answered as its length, and
// one past the batch's bound as its length negated, never sent: read whole, they held the connection every store
// shares for their transfer and were decoded in full. A key of another type is nil, as MGET answers it.
const readBounded = Redis.script(
  (keys: ReadonlyArray<string>, limit: number, batch: number) => [...keys, limit, batch],
  {
    numberOfKeys: (keys) => keys.length,
    lua: `local limit = tonumber(ARGV[1])
local batch = tonumber(ARGV[2])
local total = 0
local out = {}
for i = 1, #KEYS do
  local n = redis.pcall("STRLEN", KEYS[i])
  if type(n) ~= "number" or n == 0 then
    out[i] = false
  elseif n > limit then
    out[i] = n
  elseif total > 0 and total + n > batch then
    out[i] = -n
  else
    out[i] = redis.call("GET", KEYS[i])
    total = total + n
  end
end
return out`
  }
).withReturnType<ReadonlyArray<string | number | null>>()

// At least one value: a bound below it refused a setMany of a single value that maxValueBytes lets through.
export const batchBytes = (input: number | undefined, maxValueBytes: number): Input.Checked<number> => {
  if (input === undefined) return Input.int("maxBatchBytes", Math.max(4 * 1_048_576, maxValueBytes))
  const checked = Input.int("maxBatchBytes", input, { min: 1 })
  return Result.isSuccess(checked) && checked.success < maxValueBytes
    ? Result.fail({
        path: "maxBatchBytes",
        message: `expected at least maxValueBytes (${maxValueBytes}), got ${input}`
      })
    : checked
}

// What a cache of this library writes: another writer's stream that did not complete (replayed, it ended as if whole)
// or answer that finished in error (served as a fresh answer until its ttl) is no entry, as one that does not decode.
const kept = (value: Table.Cached): boolean =>
  value._tag === "Response" ? Lookup.keepable(value.response.finishReason) : Lookup.keepableParts(value.parts)

const parsed = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** What the entries' reads and writes need of the cache: its bounds, its Redis and its counters. */
export interface EntriesOptions {
  readonly name: string
  readonly maxValueBytes: number
  readonly maxBatchBytes: number
  readonly guard: SharedRedis.Guard
  readonly redis: Redis.Redis["Service"]
  readonly store: Persistence.BackingPersistenceStore
  /** The namespace `effect/persistence`'s store writes under (its store id with `%` and `:` escaped). */
  readonly namespace: string
  readonly errors: Counters.Counter
  readonly oversized: Counters.Counter
}

/** The cache's reads and writes of its entries in Redis. */
export const makeEntries = (options: EntriesOptions) => {
  const { name, maxValueBytes, maxBatchBytes, guard, redis, store, namespace, errors, oversized } = options
  const readLimited = redis.eval(readBounded)
  // The value the caller stored (an answer, a stream's parts), as documented: not the entry around
  // it, whose tag and expiry times (~80 bytes) refused a value just under the bound. UTF-8 takes 1
  // to 3 bytes per UTF-16 unit: measure only when the length alone does not decide.
  const limit = maxValueBytes + entryBytes
  const fits = (encoded: ReturnType<typeof encode>): boolean => {
    const cached = encoded.value
    const json = JSON.stringify(cached._tag === "Response" ? cached.response : cached.parts)
    if (json.length > maxValueBytes) return false
    if (cached._tag === "Stream" || cached.origin === undefined) {
      return json.length * 3 <= maxValueBytes || Buffer.byteLength(json, "utf8") <= maxValueBytes
    }
    const bytes = Buffer.byteLength(json, "utf8")
    if (bytes > maxValueBytes) return false
    // An origin is the caller's (`originOf`), of any length: the entry is bounded as it is read back (`limit`),
    // or one written around a value near maxValueBytes was missed by every lookup. The entry with the value
    // written as `0` is the rest of it, one byte for the value.
    const rest = Buffer.byteLength(JSON.stringify({ ...encoded, value: { ...cached, response: 0 } }), "utf8")
    return bytes + rest - 1 <= limit
  }

  // Each said once: the metric counts them all.
  const saidOnce = () => {
    let said = false
    return (count: number, message: () => string): Effect.Effect<void> => {
      const counted = Lookup.bump(oversized, count)
      if (said) return counted
      said = true
      return Effect.andThen(counted, Effect.logWarning(message()))
    }
  }
  const sayTooLong = saidOnce()
  const tooLong = (count: number, bytes: number): Effect.Effect<void> =>
    sayTooLong(
      count,
      () =>
        `ResponseCache ${name}: a value of ${bytes} bytes in Redis is longer than maxValueBytes (${maxValueBytes}) allows: not read, a miss (written by a process with a larger bound?); counted in orchestra_cache_oversized_total, not said again`
    )
  const sayOverBatch = saidOnce()
  const overBatch = (count: number, asked: number): Effect.Effect<void> =>
    sayOverBatch(
      count,
      () =>
        `ResponseCache ${name}: a getMany of ${asked} keys found more than maxBatchBytes (${maxBatchBytes}) bytes in Redis: ${count} not read, misses (ask for fewer keys at a time); counted in orchestra_cache_oversized_total, not said again`
    )

  /**
   * Entries of kind `tag` still within their grace, by key; `None` for a miss, a failure, a
   * value that does not decode (JSON or not), one of the other kind (an answer's key holding stream parts) or one no
   * cache keeps (stream parts that did not complete, an answer that finished in error),
   * and one longer than `maxValueBytes` allows, which is not read. `readOrFail` passes on a failure of Redis
   * (`read`: a miss).
   */
  const readOrFail = (
    keys: ReadonlyArray<string>,
    now: number,
    tag: Table.Stored["value"]["_tag"]
  ): Effect.Effect<ReadonlyArray<Option.Option<Table.Stored>>, unknown> => {
    const [first, ...rest] = keys
    if (first === undefined) return Effect.succeed([])
    const prefixed = [namespace + first, ...rest.map((k) => namespace + k)] as const
    return guard.call("GET", readLimited(prefixed, limit, maxBatchBytes)).pipe(
      Effect.flatMap((values) => {
        let corrupt = 0
        let oversize = 0
        let bytes = 0
        let unsent = 0
        const found = keys.map((_, i): Option.Option<Table.Stored> => {
          const value = values[i]
          if (value === null || value === undefined) return Option.none()
          if (typeof value === "number") {
            if (value < 0) unsent++
            else {
              oversize++
              bytes = value
            }
            return Option.none()
          }
          const decoded = decode(parsed(value))
          if (Exit.isFailure(decoded) || decoded.value.value._tag !== tag || !kept(decoded.value.value)) {
            corrupt++
            return Option.none()
          }
          const entry = decoded.value
          return now < entry.staleUntil ? Option.some({ ...entry, keepFor: entry.staleUntil - now }) : Option.none()
        })
        if (corrupt === 0 && oversize === 0 && unsent === 0) return Effect.succeed(found)
        const counted = corrupt === 0 ? Effect.void : Effect.sync(() => errors.add(corrupt))
        const long = oversize === 0 ? counted : Effect.andThen(counted, tooLong(oversize, bytes))
        return Effect.as(unsent === 0 ? long : Effect.andThen(long, overBatch(unsent, keys.length)), found)
      })
    )
  }

  const read = (
    keys: ReadonlyArray<string>,
    now: number,
    tag: Table.Stored["value"]["_tag"]
  ): Effect.Effect<ReadonlyArray<Option.Option<Table.Stored>>> =>
    Effect.orElseSucceed(readOrFail(keys, now, tag), () => keys.map(() => Option.none<Table.Stored>()))

  // The entries to write (those longer than maxValueBytes left out, counted in `tooLarge`), and the keys whose last
  // value in the batch is so left out (`unwritten`).
  const encodeAll = (entries: ReadonlyArray<readonly [string, Table.Stored]>, now: number) => {
    let tooLarge = 0
    let last: Map<string, boolean> | undefined
    const encoded = entries.flatMap(([k, stored]) => {
      if (stored.staleUntil <= now) return []
      const value = encode(stored)
      const fit = fits(value)
      if (!fit) tooLarge++
      if (!fit || last !== undefined) (last ??= new Map()).set(k, fit)
      return fit ? [[k, value, Duration.millis(stored.staleUntil - now)] as const] : []
    })
    const unwritten: Array<string> = []
    if (last !== undefined) for (const [k, fit] of last) if (!fit) unwritten.push(k)
    return { encoded, tooLarge, unwritten }
  }

  const send = ({ encoded, tooLarge }: ReturnType<typeof encodeAll>): Effect.Effect<void> => {
    const counted = tooLarge === 0 ? Effect.void : Lookup.bump(oversized, tooLarge)
    const [first, ...rest] = encoded
    if (first === undefined) return counted
    return Effect.andThen(counted, Effect.ignore(guard.call("SET", store.setMany([first, ...rest]))))
  }

  const write = (entries: ReadonlyArray<readonly [string, Table.Stored]>, now: number): Effect.Effect<void> =>
    send(encodeAll(entries, now))

  // A value set (setMany, setParts) that is too long to store replaces the key's value all the same, as in memory:
  // left in Redis, the one before answered every lookup in place of it.
  const removeUnwritten = (keys: ReadonlyArray<string>): Effect.Effect<void> =>
    keys.length === 0
      ? Effect.void
      : Effect.ignore(guard.call("DEL", redis.send("DEL", ...keys.map((k) => namespace + k))))

  const replace = (entries: ReadonlyArray<readonly [string, Table.Stored]>, now: number): Effect.Effect<void> =>
    Effect.suspend(() => {
      const batch = encodeAll(entries, now)
      return Effect.andThen(send(batch), removeUnwritten(batch.unwritten))
    })

  // The bytes a batch of entries takes in Redis (the JSON the store writes, UTF-8), checked against
  // maxBatchBytes; a batch writes as many bytes as one getMany reads back. One entry alone is taken, as
  // one key alone is read: its value is bounded by maxValueBytes, and the entry around it is a little longer.
  // Its keys count too: the command carries them (a getMany of a million keys sent ~100 MB before any value).
  const batchIssue = (encoded: ReturnType<typeof encodeAll>["encoded"]): Input.Issue | undefined => {
    if (encoded.length <= 1) return undefined
    let bytes = 0
    for (const [k, value] of encoded) {
      bytes += Buffer.byteLength(k, "utf8") + Buffer.byteLength(JSON.stringify(value), "utf8")
    }
    return bytes <= maxBatchBytes
      ? undefined
      : {
          path: "entries",
          message: `expected at most maxBatchBytes (${maxBatchBytes}) bytes of keys and entries in all, got ${bytes} (${encoded.length} entries): store them in smaller batches`
        }
  }

  const keysIssue = (keys: ReadonlyArray<string>): Input.Issue | undefined => {
    if (keys.length <= 1) return undefined
    let bytes = 0
    for (const key of keys) bytes += Buffer.byteLength(key, "utf8")
    return bytes <= maxBatchBytes
      ? undefined
      : {
          path: "keys",
          message: `expected at most maxBatchBytes (${maxBatchBytes}) bytes of keys in all, got ${bytes} (${keys.length} keys): ask for fewer at a time`
        }
  }

  return { readOrFail, read, encodeAll, send, write, removeUnwritten, replace, batchIssue, keysIssue }
}
