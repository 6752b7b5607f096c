/**
 * The response cache in Redis, shared by every process using the same Redis and prefix.
 * Storage is `effect/persistence`'s Redis `BackingPersistence` (one script call for a batch of
 * lookups, which answers no value longer than `maxValueBytes` allows, one scripted round trip for a batch of writes, expiry by `PEXPIRE`); values are
 * encoded with the `ResponseCache.StoredEntry` schema.
 *
 * Redis is an optimisation, never a dependency: every call goes through this library's
 * Redis guard (a deadline, default 500 ms; failures counted in
 * `orchestra_cache_errors_total`; one warning once failures persist, naming the Redis
 * error). A lookup that fails is a miss, a write that fails is dropped, and the call goes
 * to the provider. Single-flight is per process; the answer reaches the waiting callers
 * before the write, and callers arriving while the write is under way find the answer in the
 * process (a hit, while it is fresh) instead of missing in Redis.
 *
 * @since 0.1.0
 */
import { Context, Duration, Effect, Exit, Fiber, Layer, type Metric, Option, Result, Schema, Scope } from "effect"
import { Persistence, Redis } from "effect/persistence"
import type { ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import * as Counters from "../stats/counters.js"
import * as Metrics from "../Metrics.js"
import type { GenerateResponse } from "../Model.js"
import * as SharedRedis from "../Redis.js"
import * as ResponseCache from "../ResponseCache.js"
import * as Checks from "./checks.js"
import * as Lookup from "./lookup.js"
import * as Table from "./table.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options extends ResponseCache.Options {
  /**
   * Namespace of every key: `<prefix>:r:<key>` (answers) and `<prefix>:s:<key>` (stream parts; a key holding
   * a lone surrogate, or starting with NUL, is written as NUL and its JSON text, which tells it from others),
   * where `%` and `:` in the prefix are written `%25` and `%3A` (`effect/persistence` escapes its
   * store id): `"app1:cache"` gives `app1%3Acache:r:<hash>`, so match `app1%3Acache:*` in `SCAN`
   * and ACL key patterns. 1 to 100 characters (`Redis.maxPrefixChars`); default `"orchestra-cache"`.
   */
  readonly prefix?: string | undefined
  /** Deadline of each Redis call and when an outage is reported; see `Redis.GuardOptions`. */
  readonly redis?: SharedRedis.GuardOptions | undefined
  /**
   * Longest value stored (an answer, or a stream's parts), in UTF-8 bytes of its JSON encoding; longer
   * ones are not stored (counted in `orchestra_cache_oversized_total`), and one found in Redis longer than
   * this and 4 KiB for its entry (written by a process with a larger bound) is not read: a miss, counted there too,
   * the first one said in a warning. The entry written around it
   * (its kind, origin and expiry times, about 100 bytes) is not counted, up to those 4 KiB: an answer whose
   * origin (`originOf`) makes it longer is not stored either (counted there), as it would not be read. Default 1 MiB. A large value holds the Redis connection
   * that every store shares while it is written and read: a larger bound needs a deadline that
   * covers the transfer, `redis.timeout` and `Redis.layer`'s `commandTimeout` both (the client
   * cuts each command at the shorter). The answers this process keeps while they are written
   * hold at most 16 times this many bytes (16 MiB by default), the least recently used going first.
   */
  readonly maxValueBytes?: number | undefined
  /**
   * Most bytes one `getMany` reads or one `setMany` writes, counted as Redis holds them: each value's JSON
   * and its entry around it (about 100 bytes), UTF-8, and the keys of the call. A `setMany` over it fails with
   * an `InvalidRequest` naming `entries` and stores none (store in smaller batches), a `getMany` of more bytes
   * of keys fails so naming `keys` (ask for fewer at a time); a `getMany` reads its keys in order while
   * their entries fit, and answers the rest as misses, not sent by Redis (counted in
   * `orchestra_cache_oversized_total`, the first time said in a warning). One entry alone is always
   * written and one key alone always read (a value is bounded by `maxValueBytes`).
   * An integer of at least `maxValueBytes`; default 4 MiB, or `maxValueBytes` when that is larger.
   *
   * @since 0.3.0
   */
  readonly maxBatchBytes?: number | undefined
}

// What a getOrCompute caller found on its way: whether it joined a computation, and an answer past its ttl.
interface Found {
  joining: boolean
  stale: Table.Stored | undefined
}

const notSuperseded = (): boolean => false

// A code unit of a lone surrogate (with the `u` flag, a pair is one code point and does not match).
const loneSurrogate = /[\uD800-\uDFFF]/u

// Redis takes keys as UTF-8, where a lone surrogate has no form (written as U+FFFD): "k\ud800" and
// "k\udc00" were one entry. Such a key is written as NUL and its JSON text (where a lone surrogate is its
// escape), and so is one starting with NUL, so that none meets a key written as it is given.
const keyOf = (key: string): string =>
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
const batchBytes = (input: number | undefined, maxValueBytes: number): Input.Checked<number> => {
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

/**
 * Builds the Redis-backed cache (see {@link layerRedis}).
 *
 * @since 0.2.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (options: Options = {}) {
  const config = yield* Input.orOptionError(
    ResponseCache.settings(options, "redis", ["prefix", "redis", "maxValueBytes", "maxBatchBytes"])
  )
  const maxValueBytes = yield* Input.orOptionError(
    Input.int("maxValueBytes", Input.orDefault(options.maxValueBytes, 1_048_576), { min: 1 })
  )
  const maxBatchBytes = yield* Input.orOptionError(batchBytes(options.maxBatchBytes, maxValueBytes))
  const guardSettings = yield* Input.orOptionError(SharedRedis.guardSettings(options.redis, "redis."))
  const prefix = yield* Input.orOptionError(SharedRedis.prefixOf(options.prefix, "orchestra-cache"))
  // Held by the layer: closing it removes the series (counted by `Metric.update`, it stayed for good).
  const errors = yield* Counters.scoped(Metrics.cacheErrors as Metric.Metric<number, unknown>, { cache: config.name })
  const guard = yield* SharedRedis.makeGuard({ store: `cache:${config.name}`, settings: guardSettings, errors })
  const backing = Context.get(yield* Layer.build(Persistence.layerBackingRedis), Persistence.BackingPersistence)
  const store = yield* backing.make(prefix)
  // The namespace `effect/persistence`'s store writes under (its store id with `%` and `:` escaped).
  const namespace = `${prefix.replace(/%/g, "%25").replace(/:/g, "%3A")}:`
  const redis = yield* Redis.Redis
  const readLimited = redis.eval(readBounded)
  // Background writes run in a scope of their own: closing, the layer first waits for those
  // under way (each bounded by the Redis deadline), so that none is dropped silently.
  const writes = yield* Scope.make()
  const pending = new Set<Fiber.Fiber<void>>()
  yield* Effect.addFinalizer(() => Effect.andThen(Fiber.awaitAll(pending), Scope.close(writes, Exit.void)))
  // Answers computed here stay in the process table while their write may be under way: at
  // most 1,000 and 16 values of the largest size written (1,000 of them were up to ~1 GB).
  const retain = Math.max(1000, 2 * Duration.toMillis(guardSettings.timeout))
  const table = yield* Table.makeTable(1000, 16 * maxValueBytes)
  yield* Effect.addFinalizer(() => table.interruptAll)
  const counters = yield* Lookup.lookupCounters(config.name)
  const oversized = yield* Counters.scoped(Metrics.cacheOversized as Metric.Metric<number, unknown>, {
    cache: config.name
  })
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
        `ResponseCache ${config.name}: a value of ${bytes} bytes in Redis is longer than maxValueBytes (${maxValueBytes}) allows: not read, a miss (written by a process with a larger bound?); counted in orchestra_cache_oversized_total, not said again`
    )
  const sayOverBatch = saidOnce()
  const overBatch = (count: number, asked: number): Effect.Effect<void> =>
    sayOverBatch(
      count,
      () =>
        `ResponseCache ${config.name}: a getMany of ${asked} keys found more than maxBatchBytes (${maxBatchBytes}) bytes in Redis: ${count} not read, misses (ask for fewer keys at a time); counted in orchestra_cache_oversized_total, not said again`
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

  const now = Effect.clockWith((clock) => Effect.succeed(clock.currentTimeMillisUnsafe()))

  // The background writes under way (answers and stream parts), by key: `invalidate` waits
  // for them, or one landing after its DEL brought the invalidated value back.
  const writing = new Map<string, Fiber.Fiber<void>>()

  // Writes `stored` to Redis in the background: the caller goes on at once (and keeps the
  // value in the process table meanwhile, so callers arriving during the write find it).
  const writeBehind = (
    k: string,
    stored: Table.Stored,
    at: number,
    writer: typeof write = write
  ): Effect.Effect<Table.Stored> =>
    Effect.map(Effect.forkIn(writer([[k, stored]], at), writes), (fiber) => {
      writing.set(k, fiber)
      pending.add(fiber)
      fiber.addObserver(() => {
        pending.delete(fiber)
        if (writing.get(k) === fiber) writing.delete(k)
      })
      return stored
    })

  // Background writes of keys a later command replaces (setMany) or deletes (invalidate): cut, not
  // waited for, so the caller waits one Redis deadline (its own command's), not the write's first.
  // The cut write was sent before that command on the same connection, or never: Redis runs it first
  // either way, and cannot bring back what the command removed.
  const supersede = (fibers: ReadonlyArray<Fiber.Fiber<void>>): Effect.Effect<void> => Fiber.interruptAll(fibers)

  const unstored = Lookup.notStored(config.name, errors)

  const computeAndWrite = <E>(
    k: string,
    compute: Effect.Effect<GenerateResponse, E | ModelError>,
    options: ResponseCache.GetOrComputeOptions<E>
  ) =>
    Effect.flatMap(compute, (response) =>
      Lookup.storeWith(
        response,
        options,
        (origin, keep) =>
          Effect.flatMap(now, (at) => {
            const value = Lookup.responseOf(response, origin)
            // An answer that finished in error (or that `keep` refuses) reaches the flight's callers,
            // and is neither kept nor written.
            const notKept = Effect.succeed(Table.storedOf(value, at, config.ttl, config.staleFor, 0))
            if (!keep) return notKept
            // A usage count JSON cannot carry (a caller's own compute: providers answer finite ones)
            // would be written as null and never read back. The flight's callers have their answer;
            // failing them for what only the cache cannot hold would turn a cache limit into an outage,
            // so it is neither kept nor written, counted as a cache error and said. (What is not an
            // answer at all never gets here: `storeWith` did not keep it.)
            const issue = Checks.usageIssue("answer", response.usage)
            if (issue !== undefined) return Effect.andThen(unstored(issue), notKept)
            // An `invalidate` or a `setMany` of the key while it was computed: written now, the answer
            // came back after the one or replaced the value of the other (the memory cache drops it).
            return Effect.flatMap(table.takenOut, (taken) =>
              taken ? notKept : writeBehind(k, Table.storedOf(value, at, config.ttl, config.staleFor, retain), at)
            )
          }),
        unstored
      )
    )

  const answer = (stored: Table.Stored): GenerateResponse =>
    stored.value._tag === "Response" ? stored.value.response : (undefined as never)

  // An entry this process computed and keeps while its write may be under way, while it is fresh.
  const local = (k: string, at: number): Table.Stored | undefined => {
    const found = table.peek(k, at)
    if (found._tag !== "Done" || at >= found.stored.freshUntil) return undefined
    table.touch(k)
    return found.stored
  }

  // What this caller waits for: the lookups, then the computation it runs or joins.
  const wait = Effect.fnUntraced(function* <E>(
    k: string,
    compute: Effect.Effect<GenerateResponse, E | ModelError>,
    options: ResponseCache.GetOrComputeOptions<E>,
    lookup: Found
  ) {
    const at = yield* now
    const kept = local(k, at)
    // An answer this process computed and keeps while its write may be under way: a hit
    // (no computation is joined), as the same answer read back from Redis would be.
    if (kept !== undefined) return Lookup.computed(kept, "hit")
    const running = table.peek(k, at)
    if (running._tag === "Running") {
      lookup.joining = true
      lookup.stale = table.refreshingOf(k)
    } else {
      // An answer this process keeps past its ttl (it keeps one at least a second for the
      // write) is not joined: it answered as "shared" after it expired.
      const held = running._tag === "Done" ? running.stored : undefined
      if (held !== undefined) table.drop(k)
      // With Redis failing, the entry past its ttl this process holds (one a failed refresh put
      // back) is the stale one: stale-if-error is there to survive outages. With Redis answering,
      // Redis decides (an entry another process invalidated is not served).
      const [found = Option.none()] = yield* held === undefined
        ? read([k], at, "Response")
        : Effect.orElseSucceed(readOrFail([k], at, "Response"), () => [Option.some(held)])
      if (Option.isSome(found)) {
        if (at < found.value.freshUntil) return Lookup.computed(found.value, "hit")
        lookup.stale = found.value
      }
    }
    const refreshing = lookup.joining ? undefined : lookup.stale
    // A caller joins unless its own computation starts: one started during its Redis read is
    // joined too, and a failure of it counts as "shared", as the memory cache counts it.
    lookup.joining = true
    const { leader, stored } = yield* table.run(
      k,
      Effect.suspend(() => {
        lookup.joining = false
        return computeAndWrite(k, compute, options)
      }),
      refreshing
    )
    return Lookup.computed(stored, leader ? "miss" : "shared")
  })

  const untraced = <E>(
    key: string,
    compute: Effect.Effect<GenerateResponse, E | ModelError>,
    options: ResponseCache.GetOrComputeOptions<E>
  ): Effect.Effect<ResponseCache.Computed, E | ModelError> =>
    Effect.suspend(() => {
      const k = Table.responseKey(keyOf(key))
      const lookup: Found = { joining: false, stale: undefined }
      const answer = (superseded: () => boolean) =>
        Lookup.answerOrStale(
          wait(k, compute, options, lookup),
          options,
          counters,
          () => (superseded() ? undefined : lookup.stale),
          () => (lookup.joining ? "shared" : "miss")
        )
      // An entry this process invalidated (or replaced by setMany) while the caller waited is not
      // answered stale. Watched from before the read: a DEL landing after it is an invalidate too.
      return options.allowStale === true ? table.watch(k, answer) : answer(notSuperseded)
    })

  const getOrCompute: ResponseCache.Service["getOrCompute"] = (key, compute, options) =>
    Lookup.traced("ResponseCache.getOrCompute", untraced(key, compute, options ?? {}))

  const fresh = (found: Option.Option<Table.Stored>, at: number) => Option.filter(found, (s) => at < s.freshUntil)

  const getMany = Effect.fnUntraced(function* (keys: ReadonlyArray<string>) {
    const issue = keysIssue(keys)
    if (issue !== undefined) return yield* Effect.fail(Input.toInvalidRequest(issue))
    const at = yield* now
    // Answers this process keeps while their write may be under way first, as getOrCompute
    // finds them: read from Redis alone, they missed (and waited on a slow Redis for it).
    const ks = keys.map((key) => Table.responseKey(keyOf(key)))
    const kept = ks.map((k) => local(k, at))
    const missing = ks.filter((_, i) => kept[i] === undefined)
    const remote = missing.length === 0 ? [] : yield* read(missing, at, "Response")
    let next = 0
    const found = kept.map((stored) =>
      stored !== undefined ? Option.some(answer(stored)) : Option.map(fresh(remote[next++]!, at), answer)
    )
    const hits = found.filter(Option.isSome).length
    if (hits > 0) yield* Lookup.bump(counters.hit, hits)
    if (hits < keys.length) yield* Lookup.bump(counters.miss, keys.length - hits)
    return found
  })

  const getParts = Effect.fnUntraced(function* (key: string) {
    const at = yield* now
    const k = Table.partsKey(keyOf(key))
    const kept = local(k, at)
    const found =
      kept !== undefined ? Option.some(kept) : fresh((yield* read([k], at, "Stream"))[0] ?? Option.none(), at)
    const parts = Option.flatMap(found, (s) => (s.value._tag === "Stream" ? Option.some(s.value.parts) : Option.none()))
    yield* Lookup.bump(Option.isSome(parts) ? counters.hit : counters.miss, 1)
    return parts
  })

  const service: ResponseCache.Service = {
    name: config.name,
    key: ResponseCache.key,
    getOrCompute,
    getMany,
    setMany: (entries) =>
      Effect.flatMap(now, (at) => {
        const written = entries.flatMap(({ key, value }) =>
          Lookup.keepable(value.finishReason)
            ? [
                [
                  Table.responseKey(keyOf(key)),
                  Table.storedOf({ _tag: "Response", response: value }, at, config.ttl, config.staleFor)
                ] as const
              ]
            : []
        )
        // Checked before anything is taken out or written: a batch refused stores none.
        const batch = encodeAll(written, at)
        const issue = batchIssue(batch.encoded)
        if (issue !== undefined) return Effect.fail(Input.toInvalidRequest(issue))
        // An answer this process keeps for its write would answer in place of the value set, and
        // its write, landing after this one, would replace it in Redis: both go first (see `supersede`).
        const underWay: Array<Fiber.Fiber<void>> = []
        for (const [k] of written) {
          // A computation running for the key is taken out too (one the table holds no entry of yet,
          // in its first step, as well): its answer must not be written after.
          table.remove(k)
          const fiber = writing.get(k)
          if (fiber !== undefined) underWay.push(fiber)
        }
        const sent = underWay.length === 0 ? send(batch) : Effect.andThen(supersede(underWay), send(batch))
        return batch.unwritten.length === 0 ? sent : Effect.andThen(sent, removeUnwritten(batch.unwritten))
      }),
    getParts,
    // Written in the background as answers are: a stream's end does not wait for Redis.
    setParts: (key, parts) =>
      Lookup.keepableParts(parts)
        ? Effect.flatMap(now, (at) => {
            const k = Table.partsKey(keyOf(key))
            return Effect.flatMap(
              writeBehind(
                k,
                Table.storedOf({ _tag: "Stream", parts }, at, config.ttl, config.staleFor, retain),
                at,
                replace
              ),
              (stored) => table.put(k, stored)
            )
          })
        : Effect.void,
    invalidate: (key) =>
      Effect.suspend(() => {
        const keys = [Table.responseKey(keyOf(key)), Table.partsKey(keyOf(key))]
        for (const k of keys) table.remove(k)
        const underWay = keys.flatMap((k) => {
          const fiber = writing.get(k)
          return fiber === undefined ? [] : [fiber]
        })
        // Not ignored: a DEL that did not happen leaves the answer to be served again.
        const remove = Effect.asVoid(
          guard.call(
            "DEL",
            Effect.all(
              keys.map((k) => store.remove(k)),
              { concurrency: 2 }
            )
          )
        )
        return underWay.length === 0 ? remove : Effect.andThen(supersede(underWay), remove)
      })
  }
  return ResponseCache.ResponseCache.of(Checks.checked(service, Lookup.notStored(config.name, errors, "stream parts")))
})

/**
 * A Redis-backed response cache. Needs `effect/persistence`'s `Redis` service (`Redis.layer`
 * of this library builds one). Invalid options fail the layer with an `OptionError` naming
 * the field.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRedis = (
  options: Options = {}
): Layer.Layer<ResponseCache.ResponseCache, Input.OptionError, Redis.Redis> =>
  Layer.effect(ResponseCache.ResponseCache, make(options))
