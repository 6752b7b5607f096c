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
import { Context, Duration, Effect, Exit, Fiber, Layer, type Metric, Option, Scope } from "effect"
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
import { batchBytes, keyOf, makeEntries } from "./redisEntries.js"
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
  const namespace = `${prefix.replace(/%/g, "%25").replace(/:/g, "%3A")}:`
  const redis = yield* Redis.Redis
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
  const { readOrFail, read, encodeAll, send, write, removeUnwritten, replace, batchIssue, keysIssue } = makeEntries({
    name: config.name,
    maxValueBytes,
    maxBatchBytes,
    guard,
    redis,
    store,
    namespace,
    errors,
    oversized
  })

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
