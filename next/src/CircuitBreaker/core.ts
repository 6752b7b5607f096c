/**
 * The breakers of one layer on a `CircuitBreakerStore`: a registry of the keys in use (this
 * process's view of each circuit, its timer and its metric series), admission and
 * recording through the store, and the transitions stream.
 *
 * The store decides (admission, the trip policy, the single probe, generation fencing);
 * the registry adds what the store lacks: half-open on the clock with no traffic (one
 * sleeping fiber per open key), isolation and reset, transitions with timestamps, the
 * gauge and counters per key, and eviction of idle keys with their series.
 *
 * @internal
 */
import { Cause, Clock, Duration, Effect, Exit, FiberMap, Metric, PubSub, Scope, Stream } from "effect"
import type * as Store from "effect/persistence/CircuitBreaker"
import type * as Take from "effect/Take"
import { type AiError, CircuitOpenError } from "../AiError.js"
import type { Permit, Service, State, StateChange } from "../CircuitBreaker.js"
import * as Metrics from "../Metrics.js"
import type { StoreError } from "../Redis.js"
import { type Outcome, outcomeOf } from "./classify.js"
import { type Config, openTime } from "./options.js"

/**
 * The store operations a backend offers, already bounded (Redis: through its guard).
 * `admit` fails with the store's rejections (`CircuitOpen`, `CircuitHalfOpen`) as they are.
 *
 * @internal
 */
export interface Backend {
  /** State shared with other processes: read the store for `state`, isolate and reset there. */
  readonly shared: boolean
  /** `admit` uses its scope (the Redis probe lease), so every call needs its own. */
  readonly scopedAdmit: boolean
  readonly onStoreError: "allow" | "reject"
  readonly admit: (
    storeKey: string
  ) => Effect.Effect<Store.Admission, Store.CircuitBreakerError | StoreError, Scope.Scope>
  readonly record: (options: {
    readonly key: string
    readonly generation: number
    readonly outcome: Outcome
    readonly tripPolicy: Store.TripPolicy
    readonly openFor: Duration.Duration
  }) => Effect.Effect<Store.Transition | undefined, Store.CircuitBreakerError | StoreError>
  readonly state: (storeKey: string) => Effect.Effect<Store.State, Store.CircuitBreakerError | StoreError>
  /** Shared backends only. */
  readonly isolate: (storeKey: string) => Effect.Effect<void, StoreError>
  /** Shared backends only. */
  readonly reset: (storeKey: string) => Effect.Effect<void, StoreError>
}

/**
 * An open time this long or longer is an isolation (written by a shared backend's
 * `isolate`); real open times are at most a year.
 *
 * @internal
 */
export const isolatedMillis = 2 ** 49

/**
 * Gauge value of each state.
 *
 * @internal
 */
export const stateValue: { readonly [S in State]: number } = { closed: 0, open: 1, "half-open": 2, isolated: 3 }

interface Entry {
  readonly key: string
  /** Memory backend: bumped by `reset`, which moves the circuit to a fresh store key. */
  epoch: number
  storeKey: string
  view: State
  openUntil: number
  /** Memory backend: the latest open end a store key left behind by `reset` may still hold. */
  holdUntil: number
  /** Memory backend: refused until `reset`. */
  isolated: boolean
  inflight: number
  lastActivity: number
  /** Used since the last eviction scan passed it (second chance). */
  touched: boolean
  rejections: number
  transitions: Map<string, { count: number }> | undefined
  readonly series: Array<Metric.Registration>
}

const noop = () => {}
const zero = Duration.zero

/**
 * Builds the service on a backend. The layer's scope owns the timers and the series.
 *
 * @internal
 */
export const make = Effect.fnUntraced(function* (config: Config, backend: Backend) {
  const scope = yield* Effect.scope
  const context = yield* Effect.context<never>()
  const clock = yield* Clock.Clock
  const sleepers = yield* FiberMap.make<string>()
  const pubsub = yield* PubSub.unbounded<Take.Take<StateChange>>()
  const entries = new Map<string, Entry>()
  const { tripPolicy, isFailure, idleTimeToLive, maxKeys } = config
  const consecutive = tripPolicy._tag === "Consecutive"
  // A shared store keeps one circuit per key. In memory, `reset` moves a key to a fresh
  // store key: `${epoch}:${key}`, one-to-one with (epoch, key).
  const storeKeyOf = (key: string, epoch: number): string => (backend.shared ? key : `${epoch}:${key}`)
  const keyOf = (storeKey: string): string => (backend.shared ? storeKey : storeKey.slice(storeKey.indexOf(":") + 1))

  const register = <S>(metric: Metric.Metric<number, S>, entry: Entry, attributes: object, get: () => S) => {
    const tagged = Metric.withAttributes(metric, { breaker: entry.key, ...attributes })
    entry.series.push(Metric.registerUnsafe(tagged, context, { get, update: noop, modify: noop }))
  }

  const removeSeries = (entry: Entry) => {
    for (const registration of entry.series) registration.remove()
    entry.series.length = 0
  }

  const evict = (entry: Entry) => {
    entries.delete(entry.key)
    removeSeries(entry)
  }

  const idle = (entry: Entry, now: number) =>
    entry.inflight === 0 &&
    !entry.isolated &&
    entry.view !== "isolated" &&
    now - Math.max(entry.lastActivity, entry.openUntil, entry.holdUntil) >= idleTimeToLive

  // A closed key the store can forget without losing more than its counts.
  const spare = (entry: Entry) => entry.inflight === 0 && entry.view === "closed" && entry.epoch === 0

  const sweep = (now: number) => {
    for (const entry of entries.values()) if (idle(entry, now)) evict(entry)
  }

  // Second chance: a key used since the last scan moves to the back once; a full
  // registry of keys that cannot go (open, isolated, in flight) grows past maxKeys.
  const makeRoom = () => {
    let budget = entries.size
    for (const entry of entries.values()) {
      if (budget-- <= 0) return
      if (!entry.touched && spare(entry)) return evict(entry)
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
    const entry: Entry = {
      key,
      epoch: 0,
      storeKey: storeKeyOf(key, 0),
      view: "closed",
      openUntil: 0,
      holdUntil: 0,
      isolated: false,
      inflight: 0,
      lastActivity: now,
      touched: false,
      rejections: 0,
      transitions: undefined,
      series: []
    }
    register(Metrics.breakerState, entry, {}, () => ({ value: stateValue[entry.view] }))
    entries.set(key, entry)
    return entry
  }

  const setView = (entry: Entry, to: State, now: number) => {
    const from = entry.view
    if (from === to) return
    entry.view = to
    const name = `${from}>${to}`
    entry.transitions ??= new Map()
    let counter = entry.transitions.get(name)
    if (counter === undefined) {
      const created = { count: 0 }
      counter = created
      entry.transitions.set(name, created)
      register(Metrics.breakerTransitions, entry, { from, to }, () => ({ count: created.count, incremental: true }))
    }
    counter.count++
    PubSub.publishUnsafe(pubsub, [{ key: entry.key, from, to, at: now }])
  }

  const sleeper = (entry: Entry, until: number, now: number): Effect.Effect<void> =>
    FiberMap.run(
      sleepers,
      entry.key,
      Effect.provideContext(
        Effect.andThen(
          Effect.sleep(Duration.millis(until - now)),
          Effect.sync(() => {
            if (entry.view === "open" && entry.openUntil === until && entries.get(entry.key) === entry) {
              setView(entry, "half-open", clock.currentTimeMillisUnsafe())
            }
          })
        ),
        context
      )
    ).pipe(Effect.asVoid)

  // Applies what the store said about a key; returns the timer to start when it opened.
  const observe = (entry: Entry, to: State, now: number, openUntil = 0): Effect.Effect<void> | undefined => {
    if (entry.isolated) return undefined
    if (to !== "open") {
      setView(entry, to, now)
      return undefined
    }
    const known = entry.view === "open" && entry.openUntil === openUntil
    entry.openUntil = openUntil
    if (openUntil > entry.holdUntil) entry.holdUntil = openUntil
    setView(entry, "open", now)
    return known || openUntil <= now ? undefined : sleeper(entry, openUntil, now)
  }

  const fromStore = (entry: Entry | undefined, state: Store.State, now: number): Effect.Effect<State> => {
    let to: State
    let until = 0
    switch (state._tag) {
      case "Closed":
        to = "closed"
        break
      case "HalfOpen":
        to = "half-open"
        break
      case "Open": {
        const left = Duration.toMillis(state.retryAfter)
        to = left >= isolatedMillis ? "isolated" : left > 0 ? "open" : "half-open"
        until = now + left
      }
    }
    const timer = entry === undefined ? undefined : observe(entry, to, now, until)
    return timer === undefined ? Effect.succeed(to) : Effect.as(timer, to)
  }

  const reject = (
    entry: Entry,
    state: CircuitOpenError["state"],
    retryAfter?: Duration.Duration
  ): Effect.Effect<never, CircuitOpenError> => {
    if (entry.rejections++ === 0) {
      register(Metrics.breakerRejections, entry, {}, () => ({ count: entry.rejections, incremental: true }))
    }
    return Effect.fail(new CircuitOpenError({ breaker: entry.key, state, retryAfter }))
  }

  // A store refusal updates the view and fails the call; a store failure (the Redis guard
  // counted it) runs the call unrecorded (`undefined`), or refuses it when configured to.
  const refused = (
    entry: Entry,
    cause: Cause.Cause<Store.CircuitBreakerError | StoreError>
  ): Effect.Effect<never, CircuitOpenError> | undefined => {
    const found = Cause.findErrorOption(cause)
    if (found._tag === "None") return Effect.failCause(cause as Cause.Cause<never>)
    const error = found.value
    const now = clock.currentTimeMillisUnsafe()
    if (error._tag === "CircuitBreakerError") {
      const reason = error.reason
      if (reason._tag === "CircuitOpen") {
        const left = Duration.toMillis(reason.retryAfter)
        if (left >= isolatedMillis) {
          observe(entry, "isolated", now)
          return reject(entry, "isolated")
        }
        const timer = observe(entry, "open", now, now + left)
        const rejection = reject(entry, "open", reason.retryAfter)
        return timer === undefined ? rejection : Effect.andThen(timer, rejection)
      }
      if (reason._tag === "CircuitHalfOpen") {
        observe(entry, "half-open", now)
        return reject(entry, "half-open")
      }
    }
    return backend.onStoreError === "reject" ? reject(entry, "open") : undefined
  }

  const admitted = (entry: Entry, admission: Store.Admission, now: number) => {
    entry.inflight++
    if (admission.probe) observe(entry, "half-open", now)
    else if (entry.view !== "closed") observe(entry, "closed", now)
  }

  // One handler for every record (no closure per call): the transition names the store key,
  // which leads back to the entry unless a reset moved the key since.
  const recorded = {
    onFailure: (): Effect.Effect<void> => Effect.void,
    onSuccess: (transition: Store.Transition | undefined): Effect.Effect<void> => {
      if (transition === undefined) return Effect.void
      const entry = entries.get(keyOf(transition.key))
      if (entry === undefined || entry.storeKey !== transition.key) return Effect.void
      const now = clock.currentTimeMillisUnsafe()
      switch (transition.to) {
        case "Open":
          return observe(entry, "open", now, now + Duration.toMillis(transition.retryAfter)) ?? Effect.void
        case "HalfOpen":
          observe(entry, "half-open", now)
          return Effect.void
        case "Closed":
          observe(entry, "closed", now)
          return Effect.void
      }
    }
  }

  const record = (entry: Entry, storeKey: string, admission: Store.Admission, outcome: Outcome) => {
    entry.inflight--
    entry.lastActivity = clock.currentTimeMillisUnsafe()
    // A success can open a rate policy (the failures already in the window reach the rate).
    const openFor =
      outcome === "Ignored" || (outcome === "Success" && (admission.probe || consecutive))
        ? zero
        : Duration.millis(openTime(config, admission.consecutiveOpenings + 1))
    return Effect.matchCauseEffect(
      backend.record({ key: storeKey, generation: admission.generation, outcome, tripPolicy, openFor }),
      recorded
    )
  }

  const run = <A, E extends AiError>(
    key: string,
    effect: Effect.Effect<A, E>,
    admitScope: Scope.Scope
  ): Effect.Effect<A, E | CircuitOpenError> =>
    Effect.uninterruptibleMask((restore): Effect.Effect<A, E | CircuitOpenError> => {
      const now = clock.currentTimeMillisUnsafe()
      const entry = entryFor(key, now)
      if (entry.isolated) return reject(entry, "isolated")
      entry.lastActivity = now
      const storeKey = entry.storeKey
      return Effect.matchCauseEffect(Scope.provide(backend.admit(storeKey), admitScope), {
        onFailure: (cause): Effect.Effect<A, E | CircuitOpenError> => refused(entry, cause) ?? restore(effect),
        onSuccess: (admission) => {
          admitted(entry, admission, now)
          return Effect.onExit(restore(effect), (exit) =>
            record(entry, storeKey, admission, outcomeOf(exit, isFailure))
          )
        }
      })
    })

  const execute: Service["execute"] = backend.scopedAdmit
    ? (key, effect) => Effect.scopedWith((admitScope) => run(key, effect, admitScope))
    : (key, effect) => run(key, effect, scope)

  const unrecorded = (key: string): Permit => ({ key, probe: false, record: () => Effect.void })

  const admit: Service["admit"] = (key) =>
    Effect.uninterruptible(
      Effect.flatMap(Effect.scope, (permitScope) =>
        Effect.suspend(() => {
          const now = clock.currentTimeMillisUnsafe()
          const entry = entryFor(key, now)
          if (entry.isolated) return reject(entry, "isolated")
          entry.lastActivity = now
          const storeKey = entry.storeKey
          return Effect.matchCauseEffect(Scope.provide(backend.admit(storeKey), permitScope), {
            onFailure: (cause) => refused(entry, cause) ?? Effect.succeed(unrecorded(key)),
            onSuccess: (admission) => {
              admitted(entry, admission, now)
              let done = false
              const permit: Permit = {
                key,
                probe: admission.probe,
                record: (outcome) =>
                  Effect.suspend(() => {
                    if (done) return Effect.void
                    done = true
                    return record(
                      entry,
                      storeKey,
                      admission,
                      outcome === "ignored" ? "Ignored" : outcomeOf(outcome, isFailure)
                    )
                  })
              }
              return Effect.as(Scope.addFinalizer(permitScope, permit.record("ignored")), permit)
            }
          })
        })
      )
    )

  const state: Service["state"] = Effect.fn("CircuitBreaker.state")(function* (key: string) {
    const now = clock.currentTimeMillisUnsafe()
    const entry = entries.get(key)
    if (backend.shared && entry?.isolated !== true) {
      const read = yield* Effect.result(backend.state(entry?.storeKey ?? key))
      if (read._tag === "Success") return yield* fromStore(entry, read.success, now)
    }
    if (entry === undefined) return "closed"
    return entry.view === "open" && now >= entry.openUntil ? "half-open" : entry.view
  })

  const isolate: Service["isolate"] = Effect.fn("CircuitBreaker.isolate")(function* (key: string) {
    const entry = entryFor(key, clock.currentTimeMillisUnsafe())
    if (backend.shared) yield* backend.isolate(entry.storeKey)
    else entry.isolated = true
    yield* FiberMap.remove(sleepers, key)
    setView(entry, "isolated", clock.currentTimeMillisUnsafe())
  })

  const reset: Service["reset"] = Effect.fn("CircuitBreaker.reset")(function* (key: string) {
    const entry = entries.get(key)
    if (backend.shared) yield* backend.reset(entry?.storeKey ?? key)
    if (entry === undefined) return
    yield* FiberMap.remove(sleepers, key)
    if (!backend.shared) {
      // The store cannot be told to forget a key: move the circuit to a fresh one. Calls
      // admitted under the old key record there, and their outcomes no longer reach the view.
      entry.isolated = false
      entry.epoch++
      entry.storeKey = storeKeyOf(key, entry.epoch)
    }
    entry.openUntil = 0
    setView(entry, "closed", clock.currentTimeMillisUnsafe())
  })

  yield* Effect.forkIn(
    Effect.forever(
      Effect.andThen(
        Effect.sleep(Duration.millis(idleTimeToLive)),
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
        entries.clear()
      }),
      PubSub.end(pubsub, Exit.void)
    )
  )

  const service: Service = {
    execute,
    admit,
    state,
    changes: Stream.fromPubSubTake(pubsub),
    isolate,
    reset,
    size: Effect.sync(() => entries.size)
  }
  return service
})
