/**
 * A cache of model answers keyed by a stable hash of the normalised request, with
 * single-flight: concurrent identical requests make one provider call and share its result.
 * Failures are never cached. Entries expire after their TTL and may be served for a grace
 * period (`staleFor`) when the caller allows stale answers.
 *
 * The in-memory backend is here (`layerMemory`); `ResponseCache/Redis.ts` has `layerRedis`.
 *
 * @since 0.1.0
 */
import { createHash } from "node:crypto"
import { Clock, Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Metric, Option, Ref, Schema } from "effect"
import { cacheErrors, cacheHits, cacheMisses, cacheStale } from "./internal/resilienceMetrics.js"
import { type GenerateRequest, GenerateResponse, StreamPart, toMessages } from "./Model.js"

/**
 * A cache key: the hex sha256 of the normalised request.
 *
 * @since 0.1.0
 * @category models
 */
export type Key = string

/**
 * The key of a request to a provider. Covers what changes the answer: provider name, model,
 * the messages (system prompt first, as `Model.toMessages` builds them), temperature, topP,
 * maxTokens, stop and seed. Object key order and `prompt` vs a single user message do not
 * change the key.
 *
 * @since 0.1.0
 * @category keys
 */
export const key = (input: { readonly provider: string; readonly request: GenerateRequest }): Key => {
  const { provider, request } = input
  const normalised = [
    "v1",
    provider,
    request.model ?? null,
    toMessages(request).map((m) => [m.role, m.content]),
    request.temperature ?? null,
    request.topP ?? null,
    request.maxTokens ?? null,
    request.stop ?? null,
    request.seed ?? null
  ]
  return createHash("sha256").update(JSON.stringify(normalised)).digest("hex")
}

/**
 * A cached value: a whole answer, or the parts of a completed stream (replayed as a stream).
 * The two live in distinct key namespaces, so a request's answer and its stream replay
 * never overwrite each other.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Cached = Schema.Union(
  Schema.TaggedStruct("Response", { response: GenerateResponse }),
  Schema.TaggedStruct("Stream", { parts: Schema.Array(StreamPart) })
)

/**
 * @since 0.1.0
 * @category models
 */
export type Cached = typeof Cached.Type

/**
 * What a backend stores: the value and two instants (epoch millis from the `Clock`):
 * fresh until `expiresAt`, servable as stale until `staleUntil`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const StoredEntry = Schema.Struct({
  value: Cached,
  expiresAt: Schema.Number,
  staleUntil: Schema.Number
})

/**
 * @since 0.1.0
 * @category models
 */
export type StoredEntry = typeof StoredEntry.Type

/**
 * A storage backend. Its operations never fail: a backend that cannot answer reports a miss
 * (or drops the write), counts the error and logs, so a call never fails because of the cache.
 *
 * @since 0.1.0
 * @category backends
 */
export interface Store {
  /** Backend name, the `cache` tag of the metrics. */
  readonly name: string
  readonly getMany: (keys: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<Option.Option<StoredEntry>>>
  readonly setMany: (
    entries: ReadonlyArray<{ readonly key: string; readonly entry: StoredEntry }>
  ) => Effect.Effect<void>
  readonly delete: (keys: ReadonlyArray<string>) => Effect.Effect<void>
}

/**
 * A value found in the cache; `stale` when it expired but is within its grace period.
 *
 * @since 0.1.0
 * @category models
 */
export interface Hit<A> {
  readonly value: A
  readonly stale: boolean
}

/**
 * Where `getOrComputeDetailed` found its answer: the cache (`hit`), an expired entry served
 * because the computation failed (`stale`), a computation of its own (`computed`), or one
 * already running for the same key (`shared`).
 *
 * @since 0.1.0
 * @category models
 */
export type Source = "hit" | "stale" | "computed" | "shared"

/**
 * @since 0.1.0
 * @category models
 */
export interface ComputeOptions {
  readonly ttl?: Duration.DurationInput | undefined
  /**
   * When the computation fails and an expired entry within its grace period exists, answer
   * with that entry instead of the failure (stale-if-error).
   */
  readonly allowStale?: boolean | undefined
}

/**
 * The response cache.
 *
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly backend: string
  /** A fresh entry; with `allowStale`, also an expired one within its grace, flagged `stale`. */
  readonly get: (
    key: Key,
    options?: { readonly allowStale?: boolean | undefined }
  ) => Effect.Effect<Option.Option<Hit<GenerateResponse>>>
  /** Several lookups in one backend round trip, in the order of `keys`. */
  readonly getMany: (
    keys: ReadonlyArray<Key>,
    options?: { readonly allowStale?: boolean | undefined }
  ) => Effect.Effect<ReadonlyArray<Option.Option<Hit<GenerateResponse>>>>
  readonly set: (key: Key, value: GenerateResponse, ttl?: Duration.DurationInput) => Effect.Effect<void>
  /** Several writes in one backend round trip. */
  readonly setMany: (
    entries: ReadonlyArray<{
      readonly key: Key
      readonly value: GenerateResponse
      readonly ttl?: Duration.DurationInput | undefined
    }>
  ) => Effect.Effect<void>
  /**
   * The cached answer, or the result of `compute` (cached on success). Concurrent calls for
   * the same key share one computation; its failure reaches every waiter and is not cached.
   * A waiter that is interrupted leaves; the computation stops only when every waiter left.
   * Calls sharing a key must be interchangeable (the first caller's effect runs for all).
   */
  readonly getOrCompute: <E, R>(
    key: Key,
    compute: Effect.Effect<GenerateResponse, E, R>,
    options?: ComputeOptions
  ) => Effect.Effect<GenerateResponse, E, R>
  /** As `getOrCompute`, also telling where the answer came from. */
  readonly getOrComputeDetailed: <E, R>(
    key: Key,
    compute: Effect.Effect<GenerateResponse, E, R>,
    options?: ComputeOptions
  ) => Effect.Effect<{ readonly value: GenerateResponse; readonly source: Source }, E, R>
  /** Removes the answer and the stream replay of `key`. */
  readonly invalidate: (key: Key) => Effect.Effect<void>
  /** The parts of a completed stream cached under `key`. */
  readonly getStream: (
    key: Key,
    options?: { readonly allowStale?: boolean | undefined }
  ) => Effect.Effect<Option.Option<Hit<ReadonlyArray<StreamPart>>>>
  /** Caches the parts of a stream; store only streams that completed (ended with a `Finish`). */
  readonly setStream: (key: Key, parts: ReadonlyArray<StreamPart>, ttl?: Duration.DurationInput) => Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class ResponseCache extends Context.Tag("effect-orchestra/ResponseCache")<ResponseCache, Service>() {}

/**
 * Options shared by every backend.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Default time to live of an entry. Default 1 hour. */
  readonly ttl?: Duration.DurationInput | undefined
  /** Grace after expiry during which an entry may be served as stale. Default 0. */
  readonly staleFor?: Duration.DurationInput | undefined
}

const responseKey = (key: Key) => `r:${key}`
const streamKey = (key: Key) => `s:${key}`

interface Flight {
  readonly deferred: Deferred.Deferred<Exit.Exit<GenerateResponse, unknown>>
  /** Set by the leader right after forking, before any waiter can leave. */
  readonly runner: { fiber: Fiber.RuntimeFiber<unknown> | undefined }
  waiters: number
}

/**
 * Builds the cache service on a backend store. Computations run in fibers of the current
 * scope (so a leaving caller does not cancel them for the others).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (store: Store, options: Options = {}) {
  const scope = yield* Effect.scope
  const defaultTtl = Duration.toMillis(Duration.decode(options.ttl ?? "1 hour"))
  const staleFor = Duration.toMillis(Duration.decode(options.staleFor ?? 0))
  const flights = yield* Ref.make(new Map<string, Flight>())
  const hits = Metric.tagged(cacheHits, "cache", store.name)
  const misses = Metric.tagged(cacheMisses, "cache", store.name)
  const stales = Metric.tagged(cacheStale, "cache", store.name)

  const ttlOf = (ttl: Duration.DurationInput | undefined): number =>
    ttl === undefined ? defaultTtl : Duration.toMillis(Duration.decode(ttl))

  const entryOf = (value: Cached, ttl: Duration.DurationInput | undefined, now: number): StoredEntry => {
    const expiresAt = now + ttlOf(ttl)
    return { value, expiresAt, staleUntil: expiresAt + staleFor }
  }

  /** Classifies a stored entry at `now`: fresh, stale (within grace) or gone. */
  const classify = (entry: Option.Option<StoredEntry>, now: number): Option.Option<Hit<Cached>> => {
    if (Option.isNone(entry)) return Option.none()
    const { expiresAt, staleUntil, value } = entry.value
    if (now < expiresAt) return Option.some({ value, stale: false })
    if (now < staleUntil) return Option.some({ value, stale: true })
    return Option.none()
  }

  /** Every entry still within its grace, fresh or stale; nothing counted yet. */
  const read = <A>(
    storeKeys: ReadonlyArray<string>,
    pick: (cached: Cached) => Option.Option<A>
  ): Effect.Effect<ReadonlyArray<Option.Option<Hit<A>>>> =>
    Effect.flatMap(store.getMany(storeKeys), (entries) =>
      Effect.map(Clock.currentTimeMillis, (now) =>
        entries.map((entry) =>
          Option.flatMap(classify(entry, now), (h) =>
            Option.map(pick(h.value), (value): Hit<A> => ({ value, stale: h.stale }))
          )
        )
      )
    )

  /** Keeps what the caller may use and counts hits, stale hits and misses. */
  const served = <A>(
    found: ReadonlyArray<Option.Option<Hit<A>>>,
    allowStale: boolean
  ): Effect.Effect<ReadonlyArray<Option.Option<Hit<A>>>> => {
    let hit = 0
    let miss = 0
    let stale = 0
    const results = found.map((entry) => {
      if (Option.isNone(entry) || (entry.value.stale && !allowStale)) {
        miss++
        return Option.none<Hit<A>>()
      }
      if (entry.value.stale) stale++
      else hit++
      return entry
    })
    const counts: Array<Effect.Effect<void>> = []
    if (hit > 0) counts.push(Metric.incrementBy(hits, hit))
    if (miss > 0) counts.push(Metric.incrementBy(misses, miss))
    if (stale > 0) counts.push(Metric.incrementBy(stales, stale))
    return Effect.as(Effect.all(counts, { discard: true }), results)
  }

  const lookup = <A>(
    storeKeys: ReadonlyArray<string>,
    allowStale: boolean,
    pick: (cached: Cached) => Option.Option<A>
  ): Effect.Effect<ReadonlyArray<Option.Option<Hit<A>>>> =>
    Effect.flatMap(read(storeKeys, pick), (found) => served(found, allowStale))

  const pickResponse = (cached: Cached): Option.Option<GenerateResponse> =>
    cached._tag === "Response" ? Option.some(cached.response) : Option.none()
  const pickStream = (cached: Cached): Option.Option<ReadonlyArray<StreamPart>> =>
    cached._tag === "Stream" ? Option.some(cached.parts) : Option.none()

  const getMany = (keys: ReadonlyArray<Key>, options?: { readonly allowStale?: boolean | undefined }) =>
    lookup(keys.map(responseKey), options?.allowStale === true, pickResponse)

  const get = (key: Key, options?: { readonly allowStale?: boolean | undefined }) =>
    Effect.map(getMany([key], options), (results) => results[0] ?? Option.none())

  const setMany: Service["setMany"] = (entries) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      store.setMany(
        entries.map(({ key, ttl, value }) => ({
          key: responseKey(key),
          entry: entryOf({ _tag: "Response", response: value }, ttl, now)
        }))
      )
    )

  const set: Service["set"] = (key, value, ttl) => setMany([{ key, value, ttl }])

  /** Joins the running computation for `key`, or registers a new one (returned with `leader`). */
  // The map and the flights' waiter counts are mutated in place inside `Ref.modify` (atomic:
  // nothing else runs during it); copying them on every call cost more than the calls.
  const join = (storeKey: string, fresh: Flight) =>
    Ref.modify(
      flights,
      (map): readonly [{ readonly flight: Flight; readonly leader: boolean }, Map<string, Flight>] => {
        const running = map.get(storeKey)
        if (running !== undefined) {
          running.waiters++
          return [{ flight: running, leader: false }, map]
        }
        map.set(storeKey, fresh)
        return [{ flight: fresh, leader: true }, map]
      }
    )

  /** A waiter leaves; the last one to leave cancels the computation and waits for it to stop. */
  const leave = (storeKey: string, flight: Flight) =>
    Effect.flatMap(
      Ref.modify(flights, (map) => {
        if (map.get(storeKey) !== flight) return [false, map] as const
        if (--flight.waiters > 0) return [false, map] as const
        map.delete(storeKey)
        return [true, map] as const
      }),
      // The last waiter to leave waits until the computation has stopped, as if it had run it itself.
      (last) =>
        last ? (flight.runner.fiber === undefined ? Effect.void : Fiber.interrupt(flight.runner.fiber)) : Effect.void
    )

  const finish = (storeKey: string, flight: Flight) =>
    Ref.update(flights, (map) => {
      if (map.get(storeKey) === flight) map.delete(storeKey)
      return map
    })

  const compute = <E, R>(
    key: Key,
    effect: Effect.Effect<GenerateResponse, E, R>,
    ttl: Duration.DurationInput | undefined
  ): Effect.Effect<{ readonly value: GenerateResponse; readonly shared: boolean }, E, R> =>
    Effect.uninterruptibleMask((restore) =>
      Effect.gen(function* () {
        const storeKey = responseKey(key)
        const fresh: Flight = {
          deferred: yield* Deferred.make<Exit.Exit<GenerateResponse, unknown>>(),
          runner: { fiber: undefined },
          waiters: 1
        }
        const { flight, leader } = yield* join(storeKey, fresh)
        if (leader) {
          // Forked from an uninterruptible region: the flight itself must stay interruptible
          // (the last waiter leaving, scope close).
          // Waiters get the answer before the cache write; the flight stays registered until the
          // write is done, so a newcomer joins it (and gets the answer at once) instead of missing.
          flight.runner.fiber = yield* Effect.interruptible(
            Effect.exit(effect).pipe(
              Effect.onExit((exit) =>
                Deferred.succeed(flight.deferred, Exit.isSuccess(exit) ? exit.value : (exit as Exit.Exit<never, never>))
              ),
              Effect.flatMap((result) => (Exit.isSuccess(result) ? set(key, result.value, ttl) : Effect.void)),
              Effect.ensuring(finish(storeKey, flight))
            )
          ).pipe(Effect.forkIn(scope))
        }
        const exit = yield* restore(Deferred.await(flight.deferred)).pipe(
          Effect.onInterrupt(() => leave(storeKey, flight))
        )
        // Every caller of a key computes the same thing, so the shared failure has this caller's error type.
        const result = yield* exit as Exit.Exit<GenerateResponse, E>
        return { value: result, shared: !leader }
      })
    )

  const getOrComputeDetailed: Service["getOrComputeDetailed"] = (key, effect, options) =>
    Effect.gen(function* () {
      const computed = Effect.map(compute(key, effect, options?.ttl), (r) => ({
        value: r.value,
        source: (r.shared ? "shared" : "computed") as Source
      }))
      // A computation of this key is running (or writing its answer): join it without a store
      // round trip. Otherwise a lookup sent just before its write lands would miss and call
      // the provider a second time.
      if (options?.allowStale !== true && (yield* Ref.get(flights)).has(responseKey(key))) {
        yield* Metric.increment(misses)
        return yield* computed
      }
      const [found = Option.none()] = yield* read([responseKey(key)], pickResponse)
      yield* served([found], false)
      if (Option.isSome(found) && !found.value.stale) return { value: found.value.value, source: "hit" as Source }
      if (options?.allowStale !== true || Option.isNone(found)) return yield* computed
      const stale = found.value.value
      return yield* Effect.catchAll(computed, () =>
        Effect.as(Metric.increment(stales), { value: stale, source: "stale" as Source })
      )
    }).pipe(
      Effect.withSpan("ResponseCache.getOrCompute", {
        attributes: { "cache.backend": store.name },
        captureStackTrace: false
      })
    )

  const service: Service = {
    backend: store.name,
    get: Effect.fn("ResponseCache.get")(function* (key: Key, options?: { readonly allowStale?: boolean | undefined }) {
      return yield* get(key, options)
    }),
    getMany: Effect.fn("ResponseCache.getMany")(function* (
      keys: ReadonlyArray<Key>,
      options?: { readonly allowStale?: boolean | undefined }
    ) {
      return yield* getMany(keys, options)
    }),
    set,
    setMany,
    getOrCompute: (key, effect, options) => Effect.map(getOrComputeDetailed(key, effect, options), (r) => r.value),
    getOrComputeDetailed,
    invalidate: (key) => store.delete([responseKey(key), streamKey(key)]),
    getStream: (key, options) =>
      Effect.map(lookup([streamKey(key)], options?.allowStale === true, pickStream), (r) => r[0] ?? Option.none()),
    setStream: (key, parts, ttl) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        store.setMany([{ key: streamKey(key), entry: entryOf({ _tag: "Stream", parts }, ttl, now) }])
      )
  }
  return service
})

/**
 * @since 0.1.0
 * @category models
 */
export interface MemoryOptions extends Options {
  /** Most entries kept; the least recently used go first. Default 1,000. */
  readonly capacity?: number | undefined
  /** The `cache` tag of the metrics. Default `"memory"`. */
  readonly name?: string | undefined
}

/**
 * An in-process store: a map in insertion order doubles as the LRU list (a read moves the
 * entry to the end, eviction takes the first). Entries past their grace are dropped on read.
 *
 * @since 0.1.0
 * @category backends
 */
export const makeMemoryStore = Effect.fnUntraced(function* (
  options: { readonly capacity?: number | undefined; readonly name?: string | undefined } = {}
) {
  const capacity = Math.max(1, options.capacity ?? 1000)
  const entries = yield* Ref.make(new Map<string, StoredEntry>())
  const store: Store = {
    name: options.name ?? "memory",
    getMany: (keys) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        Ref.modify(entries, (map) => {
          const found = keys.map((key) => {
            const entry = map.get(key)
            if (entry === undefined) return Option.none<StoredEntry>()
            map.delete(key)
            if (entry.staleUntil <= now) return Option.none<StoredEntry>()
            map.set(key, entry)
            return Option.some(entry)
          })
          return [found, map] as const
        })
      ),
    setMany: (items) =>
      Ref.update(entries, (map) => {
        for (const { entry, key } of items) {
          map.delete(key)
          map.set(key, entry)
        }
        for (const key of map.keys()) {
          if (map.size <= capacity) break
          map.delete(key)
        }
        return map
      }),
    delete: (keys) =>
      Ref.update(entries, (map) => {
        for (const key of keys) map.delete(key)
        return map
      })
  }
  return store
})

/**
 * An in-memory response cache.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (options: MemoryOptions = {}): Layer.Layer<ResponseCache> =>
  Layer.scoped(
    ResponseCache,
    Effect.flatMap(makeMemoryStore(options), (store) => make(store, options))
  )

/**
 * Counts a backend failure. Used by backends.
 *
 * @since 0.1.0
 * @category backends
 */
export const countError = (backend: string): Effect.Effect<void> =>
  Metric.increment(Metric.tagged(cacheErrors, "cache", backend))
