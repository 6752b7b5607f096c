/**
 * The in-process table both response-cache backends share: `effect`'s core `Cache` used as
 * the table of computations (single-flight, waiter counting, LRU capacity, `Clock` expiry),
 * with each caller's own computation handed to the lookup, and stale-if-error on top.
 *
 * - Memory backend: the table is the cache (an entry lives `ttl + staleFor`).
 * - Redis backend: the table holds running computations and, briefly, their answers while
 *   the Redis write is under way, so a caller arriving meanwhile finds it instead of missing.
 *
 * @internal
 */
import { Cache, Clock, Context, Duration, Effect, Exit, Fiber, MutableHashMap, Option } from "effect"
import type { ModelError } from "../AiError.js"
import type { GenerateResponse, StreamPart } from "../Model.js"
import type { Origin } from "../ResponseCache.js"
import * as Checks from "./checks.js"

// The computations the current fiber runs within (a fiber it starts inherits them): a table's
// computation of a key it would join is its own, and joining it waited for itself. One that has ended
// is no longer: a fiber it left behind (a refresh a minute later) asking for its key waits for nothing of its own.
interface Computing {
  readonly table: object
  readonly key: string
  readonly parent: Computing | undefined
  ended: boolean
}

const Computing = Context.Reference<Computing | undefined>("effect-orchestra/ResponseCache/Computing", {
  defaultValue: () => undefined
})

const isComputing = (computing: Computing | undefined, table: object, key: string): boolean => {
  for (let at = computing; at !== undefined; at = at.parent) {
    if (at.table === table && at.key === key && !at.ended) return true
  }
  return false
}

// The innermost of a table's computations still running that the current fiber runs within.
const innermost = (computing: Computing | undefined, table: object): Computing | undefined => {
  for (let at = computing; at !== undefined; at = at.parent) {
    if (at.table === table && !at.ended) return at
  }
  return undefined
}

// The key of a table's entry as a caller named it (without its `r:` or `s:`).
const callerKey = (key: string): string => key.slice(key.indexOf(":") + 1)

/**
 * A cached value: a whole answer or the parts of a completed stream.
 *
 * @internal
 */
export type Cached =
  | { readonly _tag: "Response"; readonly response: GenerateResponse; readonly origin?: Origin }
  | { readonly _tag: "Stream"; readonly parts: ReadonlyArray<StreamPart> }

/**
 * An entry: fresh until `freshUntil`, servable as stale until `staleUntil` (epoch ms from the `Clock`).
 *
 * @internal
 */
export interface Stored {
  readonly value: Cached
  readonly freshUntil: number
  readonly staleUntil: number
  /** How long the table keeps the entry from when it is put in. */
  readonly keepFor: number
}

/** @internal */
export type Peeked =
  | { readonly _tag: "None" }
  | { readonly _tag: "Running" }
  | { readonly _tag: "Done"; readonly stored: Stored }

/**
 * The table of entries and running computations.
 *
 * @internal
 */
export interface Table {
  readonly cache: Cache.Cache<string, Stored, unknown>
  /** What the table holds for `key`, without touching its LRU position. */
  readonly peek: (key: string, now: number) => Peeked
  /**
   * Joins the computation of `key`, or starts `compute`. `refreshing`: the stale entry this
   * computation replaces, put back if it fails or its answer is not kept (so later callers
   * within its grace still find it) and offered to callers that join meanwhile; ignored when the
   * table has since started a computation of `key` or put another answer under it (joined, or
   * answered with, as without it).
   */
  readonly run: <E>(
    key: string,
    compute: Effect.Effect<Stored, E>,
    refreshing?: Stored
  ) => Effect.Effect<{ readonly stored: Stored; readonly leader: boolean }, E | ModelError>
  /** The stale entry a running computation of `key` replaces, if any. */
  readonly refreshingOf: (key: string) => Stored | undefined
  /** Puts `stored` under `key`; a refresh running for it no longer puts back the entry it replaced. */
  readonly put: (key: string, stored: Stored) => Effect.Effect<void>
  /** Puts each entry as `put` does, in order, then makes room once (one scan of the table, not one per entry). */
  readonly putMany: (entries: ReadonlyArray<readonly [string, Stored]>) => Effect.Effect<void>
  /** Marks `key` as just used (the LRU order), as a hit through `Cache.get` would. */
  readonly touch: (key: string) => void
  /** Removes `key`; a refresh running for it no longer puts back the entry it replaced. */
  readonly remove: (key: string) => void
  /** Drops the finished entry of `key` the caller found, superseding nothing (it is still the key's, in the store). */
  readonly drop: (key: string) => void
  /**
   * Whether the calling computation was taken out of the table (`remove`, or a value `put` under
   * its key) while it ran: its answer is no longer the key's.
   */
  readonly takenOut: Effect.Effect<boolean>
  /**
   * Runs `f` given whether `key` was superseded (a `remove`, or a value `put` under it) since it
   * started: the entry a caller found past its ttl is then no longer one to answer with stale.
   */
  readonly watch: <A, E, R>(
    key: string,
    f: (superseded: () => boolean) => Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E, R>
  /** Interrupts every running computation (the layer is closing). */
  readonly interruptAll: Effect.Effect<void>
}

/**
 * A table of at most `capacity` finished entries (and, given `maxBytes`, at most that many
 * bytes of their values), least recently used evicted first, plus the computations running
 * (never evicted: a caller arriving later joins them). A `run` of a key from within its own
 * computation (or a fiber it started) fails with `Checks.recursion`: it waited for itself; one from
 * within a computation that the key's computation waits for (through the keys it runs or joins) fails
 * with `Checks.cycle`. Only cycles within one table are seen.
 *
 * @internal
 */
export const makeTable = Effect.fnUntraced(function* (capacity: number, maxBytes?: number) {
  // The computation a caller brings, handed to the lookup the `Cache.get` right after starts.
  const computes = new Map<string, Effect.Effect<Stored, unknown>>()
  const refreshing = new Map<string, Stored>()
  // Every computation running, in the table or not: `invalidate` or a value put under its key
  // takes one out of the table while callers still wait for it, and closing must stop it too.
  const running = new Set<Fiber.Fiber<unknown, unknown>>()
  const cache = yield* Cache.makeWith(
    (key: string) =>
      Effect.withFiber((fiber): Effect.Effect<Stored, unknown> => {
        const compute = computes.get(key)
        computes.delete(key)
        if (compute === undefined) return Effect.die(`no computation for cache key ${key}`)
        const computing: Computing = { table: computes, key, parent: fiber.getRef(Computing), ended: false }
        running.add(fiber)
        fiber.addObserver((exit) => {
          running.delete(fiber)
          computing.ended = true
          // Counted as it made room, then interrupted before it ended: the core `Cache` drops the entry itself.
          if (Exit.isFailure(exit) && counted.get(key)?.entry.fiber === fiber) uncount(key)
        })
        return Effect.provideService(compute, Computing, computing).pipe(Effect.tap((stored) => makeRoom(key, stored)))
      }),
    {
      // The core `Cache` evicts by insertion order whatever the entry: a running computation
      // too, and a caller arriving later then started a second one. `evict` below keeps them.
      capacity: Number.POSITIVE_INFINITY,
      // A value larger than maxBytes on its own is not kept: it would push out every other.
      timeToLive: (exit) =>
        Exit.isSuccess(exit) && (maxBytes === undefined || sizeOf(exit.value) <= maxBytes)
          ? Duration.millis(exit.value.keepFor)
          : Duration.zero
    }
  )

  // Removes the least recently used finished entries until at most `limit` remain; running
  // computations are neither evicted (they leave when they end) nor counted, so the table holds at
  // most `capacity` entries plus the computations running. Counted, each computation started took an
  // answer out to make room for its own, and computations that failed (a provider down) emptied the
  // cache of the answers stale-if-error is there to serve. Every computation running is taken to be
  // in the table (those an `invalidate` took out are not: as many more finished ones may stay), so
  // that the scan stops at the excess, as it did.
  const evict = (limit: number, now: number): void => {
    if (MutableHashMap.size(cache.map) - running.size - limit <= 0) return
    dropExpired(now)
    let excess = MutableHashMap.size(cache.map) - running.size - limit
    if (excess <= 0) return
    const finished: Array<string> = []
    for (const [key, entry] of cache.map) {
      if (entry.fiber.pollUnsafe() === undefined) continue
      finished.push(key)
      if (--excess === 0) break
    }
    for (const key of finished) removeKey(key)
    evicted += finished.length
  }

  // Expiry is lazy (an entry past it stays until asked for), and the scans above go by use: counted, an entry used
  // a minute ago and expired since kept its place while an older one still valid went. Expired ones go first, the
  // whole table scanned only once one may be: `nextExpiry` is at or before the earliest expiry of the entries held.
  // And at most once per 1/16 of the table evicted since the last scan: where an entry expires about as often as one
  // is added (ttl × rate ≈ capacity), one was found expired on each addition, and the whole table scanned for it.
  let nextExpiry = Number.POSITIVE_INFINITY
  let evicted = Number.POSITIVE_INFINITY
  const expiresAt = (at: number): void => {
    if (at < nextExpiry) nextExpiry = at
  }
  const dropExpired = (now: number): void => {
    if (now < nextExpiry || evicted * 16 < MutableHashMap.size(cache.map)) return
    nextExpiry = Number.POSITIVE_INFINITY
    evicted = 0
    const expired: Array<string> = []
    for (const [key, entry] of cache.map) {
      const at = entry.expiresAt
      if (at === undefined) continue
      if (now >= at) expired.push(key)
      else expiresAt(at)
    }
    for (const key of expired) removeKey(key)
    evicted += expired.length
  }

  // Bytes of an entry's value in its JSON encoding (UTF-8), measured once per value: a stale entry put back (a copy
  // of the entry, holding its value) was encoded again. One JSON cannot encode (a field of a caller's own answer
  // holding a bigint or a cycle) cannot be bounded, so it is not kept: thrown here, it failed its callers, and every
  // later scan met it again and failed every computation after it.
  const sizes = new WeakMap<Cached, number>()
  const sizeOf = (stored: Stored): number => {
    const value = stored.value
    let size = sizes.get(value)
    if (size === undefined) {
      try {
        size = Buffer.byteLength(JSON.stringify(value), "utf8")
      } catch {
        size = Number.POSITIVE_INFINITY
      }
      sizes.set(value, size)
    }
    return size
  }

  // The bytes of the finished entries kept, by key (only with maxBytes): the entry counted and its size. Every
  // removal of a counted entry subtracts it (`removeKey`), so that an entry added checks the bound in O(1): a scan
  // of the table per entry added cost a cache of 100,000 entries as many reads on every miss.
  const counted = new Map<string, { readonly entry: Cache.Entry<Stored, unknown>; readonly size: number }>()
  let totalBytes = 0
  const uncount = (key: string): void => {
    const entry = counted.get(key)
    if (entry === undefined) return
    counted.delete(key)
    totalBytes -= entry.size
  }
  const count = (key: string, size: number): void => {
    uncount(key)
    const entry = MutableHashMap.get(cache.map, key)
    if (Option.isNone(entry)) return
    counted.set(key, { entry: entry.value, size })
    totalBytes += size
  }
  const removeKey = (key: string): void => {
    MutableHashMap.remove(cache.map, key)
    uncount(key)
  }

  // The values kept fit in maxBytes (one larger on its own is never kept: it would push out every other): expired
  // ones, then the least recently used, go until the rest fit. The table is walked only when over the bound, as far
  // as the entries it evicts.
  const evictBytes = (now: number): void => {
    if (maxBytes === undefined || totalBytes <= maxBytes) return
    dropExpired(now)
    let over = totalBytes - maxBytes
    if (over <= 0) return
    const finished: Array<string> = []
    for (const [key, entry] of cache.map) {
      const kept = counted.get(key)
      if (kept === undefined || kept.entry !== entry || entry.fiber.pollUnsafe() === undefined) continue
      finished.push(key)
      over -= kept.size
      if (over <= 0) break
    }
    for (const key of finished) removeKey(key)
    evicted += finished.length
  }

  const peek = (key: string, now: number): Peeked => {
    const entry = MutableHashMap.get(cache.map, key)
    if (Option.isNone(entry)) return { _tag: "None" }
    const exit = entry.value.fiber.pollUnsafe()
    if (exit === undefined) return { _tag: "Running" }
    if (Exit.isFailure(exit) || (entry.value.expiresAt !== undefined && now >= entry.value.expiresAt)) {
      return { _tag: "None" }
    }
    return { _tag: "Done", stored: exit.value }
  }

  // Bytes first: a value not kept (larger than maxBytes on its own) is gone before the entries are counted, so it
  // pushes none out (counted, it took the least recently used entry with it).
  const trim = Effect.clockWith((clock) => {
    const now = clock.currentTimeMillisUnsafe()
    evictBytes(now)
    evict(capacity, now)
    return Effect.void
  })

  // Notes when the entry put at `now` expires (a put of `keepFor` 0 is not held, nor one larger than maxBytes on its
  // own). The key's entry goes first: the map keeps a key set again where it was, so a value just written kept its
  // old place in the LRU order, and was the first evicted.
  const set = (key: string, stored: Stored): Effect.Effect<void> =>
    Effect.clockWith((clock) => {
      const keepFor = stored.keepFor
      removeKey(key)
      if (keepFor <= 0) return Effect.void
      const size = maxBytes === undefined ? 0 : sizeOf(stored)
      if (maxBytes !== undefined && size > maxBytes) return Effect.void
      expiresAt(clock.currentTimeMillisUnsafe() + keepFor)
      return Effect.andThen(
        Cache.set(cache, key, stored),
        Effect.sync(() => {
          if (maxBytes !== undefined) count(key, size)
        })
      )
    })

  const put = (key: string, stored: Stored): Effect.Effect<void> => Effect.andThen(set(key, stored), trim)

  // An answer kept makes room for itself as its computation ends (still running: not counted); a
  // computation that fails, whose answer is not kept (larger than maxBytes alone too), or that was taken out of
  // the table, takes no other out.
  // Its entry goes last in the LRU order, as the answer is first used: left where the computation started it,
  // a slow answer went before the answers that ended meanwhile, the first evicted.
  const makeRoom = (key: string, stored: Stored): Effect.Effect<void> =>
    stored.keepFor > 0 && (maxBytes === undefined || sizeOf(stored) <= maxBytes)
      ? Effect.withFiber((fiber) => {
          if (takenOut.has(fiber)) return Effect.void
          // The table sets its expiry as the computation ends, from this time or later.
          const now = fiber.getRef(Clock.Clock).currentTimeMillisUnsafe()
          expiresAt(now + stored.keepFor)
          evict(capacity - 1, now)
          const entry = MutableHashMap.get(cache.map, key)
          if (Option.isSome(entry) && entry.value.fiber === fiber) {
            MutableHashMap.remove(cache.map, key)
            MutableHashMap.set(cache.map, key, entry.value)
            if (maxBytes !== undefined) {
              count(key, sizeOf(stored))
              evictBytes(now)
            }
          }
          return Effect.void
        })
      : Effect.void

  // Computations a `remove` or a `put` took out of the table while they ran.
  const takenOut = new WeakSet<Fiber.Fiber<unknown, unknown>>()

  // The keys callers wait on that may answer stale, each with how many times it was superseded
  // since: held only while one waits, so the map holds the keys waited on.
  const watched = new Map<string, { superseded: number; watchers: number }>()

  const watch = <A, E, R>(
    key: string,
    f: (superseded: () => boolean) => Effect.Effect<A, E, R>
  ): Effect.Effect<A, E, R> =>
    Effect.suspend(() => {
      let watching = watched.get(key)
      if (watching === undefined) {
        watching = { superseded: 0, watchers: 0 }
        watched.set(key, watching)
      }
      const record = watching
      const at = record.superseded
      record.watchers++
      return Effect.ensuring(
        f(() => record.superseded !== at),
        Effect.sync(() => {
          if (--record.watchers === 0 && watched.get(key) === record) watched.delete(key)
        })
      )
    })

  // A value put under the key, or its removal, supersedes the entry a running refresh replaced,
  // the computation running for the key, and the entry its callers found past its ttl.
  const supersede = (key: string): void => {
    const watching = watched.get(key)
    if (watching !== undefined) watching.superseded++
    refreshing.delete(key)
    const entry = MutableHashMap.get(cache.map, key)
    if (Option.isSome(entry) && entry.value.fiber.pollUnsafe() === undefined) takenOut.add(entry.value.fiber)
  }

  // Whether the table holds, under `key`, a computation running or an answer other than `stale`: one
  // put there since the caller found `stale` (the Redis backend reads it, a wait), which a refresh
  // must join or answer with instead of taking it out (every caller made its own provider call).
  const supersededSince = (key: string, stale: Stored): boolean => {
    const entry = MutableHashMap.get(cache.map, key)
    if (Option.isNone(entry)) return false
    const exit = entry.value.fiber.pollUnsafe()
    return exit === undefined || (Exit.isSuccess(exit) && exit.value !== stale)
  }

  // What the computations of this table wait for (by key, how many of their fibers): the keys they
  // run or join from within. Only computations that ask this cache again appear here.
  const waits = new Map<string, Map<string, number>>()

  const addWait = (from: string, to: string): void => {
    let targets = waits.get(from)
    if (targets === undefined) {
      targets = new Map()
      waits.set(from, targets)
    }
    targets.set(to, (targets.get(to) ?? 0) + 1)
  }

  const removeWait = (from: string, to: string): void => {
    const targets = waits.get(from)
    if (targets === undefined) return
    const count = (targets.get(to) ?? 1) - 1
    if (count > 0) targets.set(to, count)
    else if (targets.delete(to) && targets.size === 0) waits.delete(from)
  }

  // Whether the computation of `key` waits, through the computations it waits for, for one that
  // `computing` runs within: joining it, each would wait for the other.
  const waitsOn = (key: string, computing: Computing): boolean => {
    const seen = new Set<string>()
    const next = [key]
    for (let at = next.pop(); at !== undefined; at = next.pop()) {
      if (seen.has(at)) continue
      seen.add(at)
      if (isComputing(computing, computes, at)) return true
      const targets = waits.get(at)
      if (targets !== undefined) for (const to of targets.keys()) next.push(to)
    }
    return false
  }

  // Runs or joins the computation of `key` (see `run`, which checks the caller first).
  const runOrJoin = <E>(
    key: string,
    compute: Effect.Effect<Stored, E>,
    found: Stored | undefined
  ): Effect.Effect<{ readonly stored: Stored; readonly leader: boolean }, E | ModelError> => {
    const stale = found === undefined || supersededSince(key, found) ? undefined : found
    // Whoever's computation the lookup runs led the flight; the others joined it.
    let leader = false
    // The computation starts once `Cache.get` has put its entry in the map (after the lookup first
    // waits): run at once, a compute that wakes another fiber before it waits (a queue, a signal) let an
    // `invalidate` or a value put under the key in, which found no entry to take out, and the entry put
    // after it then kept (or wrote) the answer over them. The wait is within `own`, so that a refresh
    // interrupted there (its callers all left) still puts back the entry it took out.
    const started = Effect.andThen(
      Effect.yieldNow,
      Effect.suspend(() => {
        leader = true
        return compute
      })
    )
    const own: Effect.Effect<Stored, unknown> =
      stale === undefined
        ? started
        : started.pipe(
            Effect.onExit((exit) =>
              Effect.suspend(() => {
                // Superseded meanwhile (an `invalidate`, or a value put under the key): the
                // entry this refresh replaced is gone for good, and putting it back brought an
                // invalidated answer back as stale, or a fresh one put meanwhile went.
                if (refreshing.get(key) !== stale) return Effect.void
                refreshing.delete(key)
                // An answer not kept (keepFor 0: finished in error, or refused by `keep`) replaces
                // nothing: the entry stays for the failures to come within its grace.
                if (Exit.isSuccess(exit) && exit.value.keepFor > 0) return Effect.void
                return Effect.clockWith((clock) => {
                  const left = stale.staleUntil - clock.currentTimeMillisUnsafe()
                  return left > 0 ? put(key, { ...stale, keepFor: left }) : Effect.void
                })
              })
            )
          )
    computes.set(key, own)
    if (stale !== undefined) {
      refreshing.set(key, stale)
      removeKey(key)
    }
    // An expired entry `Cache.get` would drop is dropped here first, so that its bytes no longer count.
    const got = Effect.withFiber((fiber) => {
      const entry = MutableHashMap.get(cache.map, key)
      const at = Option.isSome(entry) ? entry.value.expiresAt : undefined
      if (at !== undefined && fiber.getRef(Clock.Clock).currentTimeMillisUnsafe() >= at) removeKey(key)
      return Cache.get(cache, key) as Effect.Effect<Stored, E>
    })
    return got.pipe(
      Effect.map((stored) => ({ stored, leader })),
      Effect.ensuring(
        Effect.sync(() => {
          if (computes.get(key) === own) computes.delete(key)
        })
      )
    )
  }

  const run = <E>(
    key: string,
    compute: Effect.Effect<Stored, E>,
    found?: Stored
  ): Effect.Effect<{ readonly stored: Stored; readonly leader: boolean }, E | ModelError> =>
    Effect.withFiber((fiber): Effect.Effect<{ readonly stored: Stored; readonly leader: boolean }, E | ModelError> => {
      // One reference read per computation run or joined (a hit never comes here): outside any
      // computation it is undefined.
      const computing = fiber.getRef(Computing)
      if (computing === undefined) return runOrJoin(key, compute, found)
      if (isComputing(computing, computes, key)) return Effect.fail(Checks.recursion(callerKey(key)))
      const within = innermost(computing, computes)
      if (within === undefined) return runOrJoin(key, compute, found)
      // From within a computation of this table, which waits for `key`'s while this runs: `key`'s must
      // not wait for it. Checked and noted at once (no other fiber runs between), and forgotten on exit.
      let waiting = false
      return Effect.ensuring(
        Effect.suspend(() => {
          if (waitsOn(key, computing)) return Effect.fail(Checks.cycle(callerKey(key), callerKey(within.key)))
          waiting = true
          addWait(within.key, key)
          return runOrJoin(key, compute, found)
        }),
        Effect.sync(() => {
          if (waiting) removeWait(within.key, key)
        })
      )
    })

  const interruptAll: Effect.Effect<void> = Effect.suspend(() => {
    const fibers = Array.from(running)
    running.clear()
    MutableHashMap.clear(cache.map)
    counted.clear()
    totalBytes = 0
    return Fiber.interruptAll(fibers)
  })

  return {
    cache,
    peek,
    run,
    refreshingOf: (key) => refreshing.get(key),
    put: (key, stored) =>
      Effect.andThen(
        Effect.sync(() => supersede(key)),
        put(key, stored)
      ),
    putMany: (entries) =>
      Effect.andThen(
        Effect.forEach(
          entries,
          ([key, stored]) =>
            Effect.andThen(
              Effect.sync(() => supersede(key)),
              set(key, stored)
            ),
          { discard: true }
        ),
        trim
      ),
    touch: (key) => {
      const entry = MutableHashMap.get(cache.map, key)
      if (Option.isSome(entry)) {
        MutableHashMap.remove(cache.map, key)
        MutableHashMap.set(cache.map, key, entry.value)
      }
    },
    remove: (key) => {
      supersede(key)
      removeKey(key)
    },
    drop: removeKey,
    takenOut: Effect.withFiber((fiber) => Effect.succeed(takenOut.has(fiber))),
    watch,
    interruptAll
  } satisfies Table
})

/** @internal */
export const responseKey = (key: string): string => `r:${key}`
/** @internal */
export const partsKey = (key: string): string => `s:${key}`

/**
 * An entry computed at `now`; `keepFor` (default `ttl + staleFor`) is how long the table keeps it.
 *
 * @internal
 */
export const storedOf = (
  value: Cached,
  now: number,
  ttl: number,
  staleFor: number,
  keepFor = ttl + staleFor
): Stored => ({ value, freshUntil: now + ttl, staleUntil: now + ttl + staleFor, keepFor })
