/**
 * The keys one breaker layer holds: this process's view of each circuit, its half-open
 * timer, its metric series, and their eviction; and the transitions stream.
 *
 * Insertion is O(1) (a `Map`, never copied); idle keys go in a sweep every
 * `idleTimeToLive`, and `maxKeys` makes room with a second-chance scan from the oldest key.
 * The gauge and counters are series registered per key (`Metric.registerUnsafe`) whose
 * hooks read the entry, so a call updates plain fields, never a metric. Only
 * {@link maxKeySeries} held keys have series at once; the others count their transitions and
 * rejections in one `breaker="(other)"` series and have no gauge.
 *
 * @internal
 */
import { Clock, type Duration, Effect, Exit, FiberMap, Metric, PubSub, Scope, Stream } from "effect"
import type * as Take from "effect/Take"
import { CircuitOpenError } from "../AiError.js"
import type { State, StateChange } from "../CircuitBreaker.js"
import * as Metrics from "../Metrics.js"
import * as Timers from "../policy/timers.js"
import { isOwnSeriesLabel } from "../stats/labels.js"
import type { Config } from "./options.js"

/**
 * Gauge value of each state.
 *
 * @internal
 */
export const stateValue: { readonly [S in State]: number } = { closed: 0, open: 1, "half-open": 2, isolated: 3 }

/**
 * How many held keys of one layer have series of their own (a gauge, a counter per transition
 * seen, a rejection counter: a few each, ~1,000 series at most). Breakers keyed per HTTP agent
 * URL or per user would otherwise make that many per key for up to `maxKeys` (10,000) keys. 100
 * is the HTTP agents' series bound: a service with one agent per URL shows as many of each.
 * A key evicted gives its place to the next new key.
 *
 * @internal
 */
export const maxKeySeries = 100

/**
 * The `breaker` of the series the keys past {@link maxKeySeries} count in.
 *
 * @internal
 */
export const otherKeys = Metrics.otherSeries

/**
 * Where a key's transitions and rejections are counted: its own entry, or the layer's
 * `"(other)"` counts.
 *
 * @internal
 */
export interface Counts {
  readonly key: string
  rejections: number
  transitions: Map<string, { count: number }> | undefined
  readonly series: Array<Metric.Registration>
}

/**
 * One key.
 *
 * @internal
 */
export interface Entry extends Counts {
  readonly key: string
  /** Has series of its own (else counts in the layer's `"(other)"` ones). */
  readonly own: boolean
  /** Memory backend: bumped by `reset`, which moves the circuit to a fresh store key. */
  epoch: number
  storeKey: string
  view: State
  /** Bumped by every change of `view` or `openUntil` (a store read that raced one is dropped). */
  seq: number
  openUntil: number
  /**
   * While the view is open or half-open: the store counts the key idle from the later of this
   * and `openUntil` (an ignored probe, a read that found the key still there), and forgets it
   * `idleTimeToLive` later.
   */
  quietSince: number
  /** Memory backend: the latest open end a store key left behind by `reset` may still hold. */
  holdUntil: number
  /** Memory backend: refused until `reset`. */
  isolated: boolean
  /** Memory backend: the half-open probe is running (the store holds its slot until its record). */
  probing: boolean
  /**
   * Memory backend, consecutive policy: the store's failure streak is 0 (the last recorded
   * outcome while closed was a success), so a success changes nothing in the store. True
   * for a new entry: `maxKeys` evicts only clean keys, and an idle one the store forgot too.
   */
  clean: boolean
  inflight: number
  lastActivity: number
  /** Used since the last eviction scan passed it (second chance). */
  touched: boolean
}

const noop = () => {}

// How far apart two answers of a shared store may place the same open end: a round trip and its jitter.
const sameOpenEndMillis = 1_000

/**
 * Builds the registry; the layer's scope owns its timers, series and stream.
 *
 * @internal
 */
export const makeRegistry = Effect.fnUntraced(function* (
  config: Config,
  shared: boolean,
  /**
   * Reads the key's state from the store and applies it to the entry (without starting a
   * watcher): closed once the store has forgotten the key. Its failure is its own to handle.
   */
  readStore: (entry: Entry) => Effect.Effect<void>
) {
  const scope = yield* Effect.scope
  const context = yield* Effect.context<never>()
  const clock = yield* Clock.Clock
  const sleepers = yield* FiberMap.make<string>()
  const pubsub = yield* PubSub.unbounded<Take.Take<StateChange>>()
  const entries = new Map<string, Entry>()
  const { idleTimeToLive, maxKeys } = config
  // A shared store keeps one circuit per key. In memory, `reset` moves a key to a fresh
  // store key: `${epoch}:${key}`, one-to-one with (epoch, key).
  const storeKeyOf = (key: string, epoch: number): string => (shared ? key : `${epoch}:${key}`)
  const keyOf = (storeKey: string): string => (shared ? storeKey : storeKey.slice(storeKey.indexOf(":") + 1))

  // Two layers holding the same key register the same series, and the later replaced the other's:
  // a named layer's series carry its name.
  const layerAttributes = config.name === undefined ? {} : { breakers: config.name }
  const register = <S>(metric: Metric.Metric<number, S>, counts: Counts, attributes: object, get: () => S) => {
    const tagged = Metric.withAttributes(metric, { breaker: counts.key, ...layerAttributes, ...attributes })
    counts.series.push(Metric.registerUnsafe(tagged, context, { get, update: noop, modify: noop }))
  }

  const removeSeries = (counts: Counts) => {
    for (const registration of counts.series) registration.remove()
    counts.series.length = 0
  }

  const other: Counts = { key: otherKeys, rejections: 0, transitions: undefined, series: [] }
  let withSeries = 0

  const evict = (entry: Entry) => {
    entries.delete(entry.key)
    removeSeries(entry)
    if (entry.own) withSeries--
  }

  // Only a closed key goes: an open or half-open one is closed by its watcher once the store
  // has forgotten it (so the view, the gauge and the changes never disagree with the store).
  const idle = (entry: Entry, now: number) =>
    entry.inflight === 0 &&
    !entry.isolated &&
    entry.view === "closed" &&
    now - Math.max(entry.lastActivity, entry.openUntil, entry.holdUntil) >= idleTimeToLive

  // The memory store with a consecutive policy: a key's calls skip the store while its streak is 0
  // (core.ts), so a new key starts clean and only its failures reach the store, which holds every key
  // it saw until idle (a key that only ever succeeds took a store entry for an hour, whatever maxKeys).
  const fast = !shared && config.tripPolicy._tag === "Consecutive"

  // A closed key the store can forget without losing more than its counts. On the fast path, only a
  // clean one: back later, a new entry starts clean, and the store's streak must then be 0.
  const spare = (entry: Entry) =>
    entry.inflight === 0 && entry.view === "closed" && entry.epoch === 0 && (entry.clean || !fast)

  const sweep = (now: number) => {
    for (const entry of entries.values()) if (idle(entry, now)) evict(entry)
  }

  // When `makeRoom` last let a key go: the store may hold its counts until `idleTimeToLive` after.
  let roomMadeAt = Number.NEGATIVE_INFINITY

  // Second chance: a key used since the last scan moves to the back once; a full
  // registry of keys that cannot go (open, isolated, in flight) grows past maxKeys.
  const makeRoom = () => {
    let budget = entries.size
    for (const entry of entries.values()) {
      if (budget-- <= 0) return
      if (!entry.touched && spare(entry)) {
        roomMadeAt = clock.currentTimeMillisUnsafe()
        return evict(entry)
      }
      entry.touched = false
      entries.delete(entry.key)
      entries.set(entry.key, entry)
    }
  }

  const entryFor = (key: string, now: number): Entry => {
    const found = entries.get(key)
    if (found !== undefined) {
      found.touched = true
      return found
    }
    if (entries.size >= maxKeys) makeRoom()
    const own = withSeries < maxKeySeries && isOwnSeriesLabel(key)
    const entry: Entry = {
      key,
      own,
      epoch: 0,
      storeKey: storeKeyOf(key, 0),
      view: "closed",
      seq: 0,
      openUntil: 0,
      quietSince: 0,
      holdUntil: 0,
      isolated: false,
      probing: false,
      clean: fast,
      inflight: 0,
      lastActivity: now,
      touched: false,
      rejections: 0,
      transitions: undefined,
      series: []
    }
    if (own) {
      withSeries++
      register(Metrics.breakerState, entry, {}, () => ({ value: stateValue[entry.view] }))
    }
    entries.set(key, entry)
    return entry
  }

  const setView = (entry: Entry, to: State, now: number) => {
    const from = entry.view
    if (from === to) return
    entry.view = to
    entry.seq++
    const name = `${from}>${to}`
    const counts = entry.own ? entry : other
    counts.transitions ??= new Map()
    let counter = counts.transitions.get(name)
    if (counter === undefined) {
      const created = { count: 0 }
      counter = created
      counts.transitions.set(name, created)
      register(Metrics.breakerTransitions, counts, { from, to }, () => ({ count: created.count, incremental: true }))
    }
    counter.count++
    PubSub.publishUnsafe(pubsub, [{ key: entry.key, from, to, at: now }])
  }

  // The watcher of a key that is not closed: open -> half-open at the open end, with no
  // traffic; then, once the store should have forgotten the key (idle `idleTimeToLive` past
  // the later of its open end and `quietSince`), a read of the store, which closes the view
  // when the key is gone (or restarts the wait when it is still there: another process used
  // it, or the store failed). A running probe (memory) keeps the key: its record restarts it.
  const watch = (entry: Entry): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (entries.get(entry.key) !== entry || entry.isolated) return Effect.void
      const view = entry.view
      if (view === "closed" || view === "isolated" || (!shared && entry.probing)) return Effect.void
      const now = clock.currentTimeMillisUnsafe()
      if (view === "open") {
        if (now < entry.openUntil)
          return Effect.andThen(Timers.sleep(clock, entry.openUntil - now, false), watch(entry))
        setView(entry, "half-open", now)
      }
      const forgetAt = Math.max(entry.openUntil, entry.quietSince) + idleTimeToLive
      if (now < forgetAt) return Effect.andThen(Timers.sleep(clock, forgetAt - now, false), watch(entry))
      return Effect.andThen(readStore(entry), watch(entry))
    })

  /** (Re)starts the key's watcher. */
  const arm = (entry: Entry): Effect.Effect<void> =>
    FiberMap.run(sleepers, entry.key, Effect.provideContext(watch(entry), context)).pipe(Effect.asVoid)

  // Applies what the store said about a key; returns the watcher to start when there is a new
  // one to start (the caller runs it).
  const observe = (entry: Entry, to: State, now: number, openUntil = 0): Effect.Effect<void> | undefined => {
    if (entry.isolated) return undefined
    const from = entry.view
    if (to !== "open") {
      setView(entry, to, now)
      if (to !== "half-open") return undefined
      return from !== "half-open" || !FiberMap.hasUnsafe(sleepers, entry.key) ? arm(entry) : undefined
    }
    const known = from === "open" && entry.openUntil === openUntil
    // A shared store's refusals tell the same open end a round trip apart (its time, read here after
    // its answer): one a little earlier is that end; a later one, the running watcher waits for (it
    // sleeps on when it wakes before it). Restarted for each, it was a fiber forked per refused call.
    if (
      !known &&
      from === "open" &&
      openUntil > entry.openUntil - (shared ? sameOpenEndMillis : 0) &&
      FiberMap.hasUnsafe(sleepers, entry.key)
    ) {
      if (openUntil > entry.openUntil) {
        entry.openUntil = openUntil
        entry.seq++
      }
      if (openUntil > entry.holdUntil) entry.holdUntil = openUntil
      return undefined
    }
    if (entry.openUntil !== openUntil) {
      entry.openUntil = openUntil
      entry.seq++
    }
    if (openUntil > entry.holdUntil) entry.holdUntil = openUntil
    setView(entry, "open", now)
    return known ? undefined : arm(entry)
  }

  const reject = (
    entry: Entry,
    state: CircuitOpenError["state"],
    retryAfter?: Duration.Duration,
    store?: string
  ): Effect.Effect<never, CircuitOpenError> => {
    const counts = entry.own ? entry : other
    if (counts.rejections++ === 0) {
      register(Metrics.breakerRejections, counts, {}, () => ({ count: counts.rejections, incremental: true }))
    }
    return Effect.fail(new CircuitOpenError({ breaker: entry.key, state, retryAfter, store }))
  }

  /** The entry a store key names, unless a reset moved the key since. */
  const entryOfStoreKey = (storeKey: string): Entry | undefined => {
    const entry = entries.get(keyOf(storeKey))
    return entry !== undefined && entry.storeKey === storeKey ? entry : undefined
  }

  /** The held key of a store key (current or left by a reset) keeps it until `until`. */
  const hold = (storeKey: string, until: number) => {
    const entry = entries.get(keyOf(storeKey))
    if (entry !== undefined && until > entry.holdUntil) entry.holdUntil = until
  }

  /** Memory backend: moves the key to a fresh store key, closed. */
  const moveStoreKey = (entry: Entry) => {
    entry.isolated = false
    entry.probing = false
    entry.clean = true
    entry.epoch++
    entry.storeKey = storeKeyOf(entry.key, entry.epoch)
  }

  const cancelTimer = (key: string) => FiberMap.remove(sleepers, key)

  yield* Effect.forkIn(
    Effect.forever(
      Effect.andThen(
        Timers.sleep(clock, idleTimeToLive, false),
        Effect.sync(() => sweep(clock.currentTimeMillisUnsafe()))
      )
    ),
    scope
  )
  yield* Scope.addFinalizer(
    scope,
    Effect.andThen(
      Effect.sync(() => {
        for (const entry of entries.values()) removeSeries(entry)
        removeSeries(other)
        entries.clear()
        withSeries = 0
      }),
      PubSub.end(pubsub, Exit.void)
    )
  )

  return {
    clock,
    /** The key's entry, created (and registered) on first use. */
    entryFor,
    /** The key's entry if held. */
    get: (key: string): Entry | undefined => entries.get(key),
    /**
     * Whether the store may still count calls of a key this registry does not hold: only one
     * `maxKeys` let go less than `idleTimeToLive` ago (an idle key's the store has forgotten too).
     */
    mayCountUnheld: (now: number): boolean => now - roomMadeAt < idleTimeToLive,
    entryOfStoreKey,
    hold,
    moveStoreKey,
    setView,
    observe,
    arm,
    reject,
    cancelTimer,
    changes: Stream.fromPubSubTake(pubsub),
    size: Effect.sync(() => entries.size)
  }
})

/**
 * @internal
 */
export type Registry = Effect.Success<ReturnType<typeof makeRegistry>>
