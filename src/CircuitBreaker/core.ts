/**
 * The breakers of one layer on a `CircuitBreakerStore`: admission and recording through the
 * store, with the classifier, and what the store lacks (isolation and reset) on top of the
 * registry of keys (`registry.ts`).
 *
 * The store decides (admission, the trip policy, the single probe, generation fencing);
 * every answer it gives is also applied to this process's view of the key, which drives
 * the half-open timer, the gauge and the transitions stream.
 *
 * @internal
 */
import { Cause, Duration, Effect, type Schedule, Scope } from "effect"
import type * as Store from "effect/persistence/CircuitBreaker"
import { type AiError, type CircuitOpenError, invalidRequest } from "../AiError.js"
import * as Input from "../Input.js"
import type { Permit, Service, State } from "../CircuitBreaker.js"
import type { StoreError } from "../Redis.js"
import { type FastBreaker, fastBreakers } from "../policy/fused.js"
import { selfBounded } from "../policy/plan.js"
import { type Outcome, outcomeOf } from "./classify.js"
import { type Config, openTime } from "./options.js"
import { type Entry, makeRegistry } from "./registry.js"

// A key from JavaScript may be anything: refused by name before the registry reads it as a string.
// A defect, as the types forbid it: failing would add an error to every caller's type.
const badKey = (key: unknown): Effect.Effect<never> =>
  Effect.die(invalidRequest("key", `expected a string, got ${Input.kindOf(key)}`))

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
  /**
   * Names the store in the refusal `onStoreError: "reject"` makes (`"redis"`), whose
   * `retryAfter` is `storeRetryAfter` (when the store is probed again).
   */
  readonly storeName?: string | undefined
  readonly storeRetryAfter?: Duration.Duration | undefined
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
  /**
   * A record the store did not take is tried again in the background on this schedule: a
   * probe's always (the store ignores a repeat: the probe's record moved its generation), any
   * other only when `neverSent` says it never reached the store (a repeat would count twice);
   * for one that may have run, the key's state is read back instead.
   */
  readonly retryRecord?:
    | {
        readonly schedule: Schedule.Schedule<unknown, Store.CircuitBreakerError | StoreError>
        readonly neverSent: (error: StoreError) => boolean
      }
    | undefined
}

/**
 * The backend of `makeMemory`: effect's memory store, this process its only client.
 *
 * @internal
 */
export const memoryBackend = (store: Store.CircuitBreakerStore["Service"]): Backend => ({
  shared: false,
  scopedAdmit: false,
  onStoreError: "allow",
  admit: store.admit,
  record: store.record,
  state: store.state,
  isolate: () => Effect.void,
  reset: () => Effect.void
})

/**
 * An open time this long or longer is an isolation (written by a shared backend's
 * `isolate`); real open times are at most a year.
 *
 * @internal
 */
export const isolatedMillis = 2 ** 49

const zero = Duration.zero

/**
 * Builds the service on a backend. The layer's scope owns the timers and the series.
 *
 * @internal
 */
export const make = Effect.fnUntraced(function* (config: Config, backend: Backend) {
  const scope = yield* Effect.scope
  const registry = yield* makeRegistry(config, backend.shared, (entry) => readStore(entry))
  const { clock, entryFor, observe, reject, setView } = registry
  const { tripPolicy, isFailure } = config
  const consecutive = tripPolicy._tag === "Consecutive"

  // What a store's state reads as here, and its open end (a key the store forgot reads Closed).
  const viewOf = (state: Store.State, now: number): { readonly to: State; readonly until: number } => {
    switch (state._tag) {
      case "Closed":
        return { to: "closed", until: 0 }
      case "HalfOpen":
        return { to: "half-open", until: 0 }
      case "Open": {
        const left = Duration.toMillis(state.retryAfter)
        return { to: left >= isolatedMillis ? "isolated" : left > 0 ? "open" : "half-open", until: now + left }
      }
    }
  }

  const fromStore = (entry: Entry | undefined, state: Store.State, now: number): Effect.Effect<State> => {
    const { to, until } = viewOf(state, now)
    const timer = entry === undefined ? undefined : observe(entry, to, now, until)
    return timer === undefined ? Effect.succeed(to) : Effect.as(timer, to)
  }

  // The watcher's read (registry.ts): a key the store forgot closes the view; one still there
  // (another process used it, or this read raced a change) is waited on again from now.
  const readStore = (entry: Entry): Effect.Effect<void> => {
    const seq = entry.seq
    const storeKey = entry.storeKey
    return Effect.match(backend.state(storeKey), {
      onFailure: () => {
        entry.quietSince = clock.currentTimeMillisUnsafe()
      },
      onSuccess: (state) => {
        const now = clock.currentTimeMillisUnsafe()
        entry.quietSince = now
        if (entry.seq !== seq || entry.storeKey !== storeKey || entry.isolated) return
        const { to, until } = viewOf(state, now)
        if (to === "open") {
          entry.openUntil = until
          if (until > entry.holdUntil) entry.holdUntil = until
          entry.seq++
        }
        setView(entry, to, now)
      }
    })
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
        const timer = observe(entry, "half-open", now)
        const rejection = reject(entry, "half-open")
        return timer === undefined ? rejection : Effect.andThen(timer, rejection)
      }
    }
    return backend.onStoreError === "reject"
      ? reject(entry, "unavailable", backend.storeRetryAfter, backend.storeName)
      : undefined
  }

  // In memory this process is the store's only client, so its view is exact: an open key
  // (until its open time ends) and a running probe are refused here, without the store's
  // own refusal (two more errors, each with a stack trace, per refused call).
  const refusedHere = (entry: Entry, now: number): Effect.Effect<never, CircuitOpenError> | undefined => {
    if (entry.isolated) return reject(entry, "isolated")
    if (backend.shared) return undefined
    if (entry.view === "open" && now < entry.openUntil) {
      return reject(entry, "open", Duration.millis(entry.openUntil - now))
    }
    return entry.probing ? reject(entry, "half-open") : undefined
  }

  const admitted = (entry: Entry, admission: Store.Admission, now: number) => {
    entry.inflight++
    if (admission.probe && !backend.shared) entry.probing = true
    if (admission.probe) observe(entry, "half-open", now)
    else if (entry.view !== "closed") observe(entry, "closed", now)
  }

  // One handler for every record (no closure per call): the transition names the store key,
  // which leads back to the entry unless a reset moved the key since.
  const recorded = {
    onFailure: (): Effect.Effect<void> => Effect.void,
    onSuccess: (transition: Store.Transition | undefined): Effect.Effect<void> => {
      if (transition === undefined) return Effect.void
      const now = clock.currentTimeMillisUnsafe()
      if (transition.to === "Open") {
        // Kept whatever the view: a store key a reset left behind (a call admitted before it
        // tripped it), or the key of an isolated circuit (its probe failed), holds this open end,
        // and the key must not be let go, and come back on that store key, before the store
        // forgets it.
        registry.hold(transition.key, now + Duration.toMillis(transition.retryAfter))
      }
      const entry = registry.entryOfStoreKey(transition.key)
      if (entry === undefined) return Effect.void
      switch (transition.to) {
        case "Open":
          return observe(entry, "open", now, now + Duration.toMillis(transition.retryAfter)) ?? Effect.void
        case "HalfOpen":
          return observe(entry, "half-open", now) ?? Effect.void
        case "Closed":
          observe(entry, "closed", now)
          return Effect.void
      }
    }
  }

  const record = (entry: Entry, storeKey: string, admission: Store.Admission, outcome: Outcome) => {
    entry.inflight--
    if (storeKey === entry.storeKey) {
      if (outcome === "Success") entry.clean = true
      else if (outcome === "Failure") entry.clean = false
    }
    if (admission.probe && storeKey === entry.storeKey) entry.probing = false
    entry.lastActivity = clock.currentTimeMillisUnsafe()
    // A success can open a rate policy (the failures already in the window reach the rate).
    const openFor =
      outcome === "Ignored" || (outcome === "Success" && (admission.probe || consecutive))
        ? zero
        : Duration.millis(openTime(config, admission.consecutiveOpenings + 1))
    const options = { key: storeKey, generation: admission.generation, outcome, tripPolicy, openFor }
    const recording = Effect.matchCauseEffect(
      backend.record(options),
      retryRecord === undefined
        ? recorded
        : { onFailure: (cause) => recordLater(options, admission.probe, cause), onSuccess: recorded.onSuccess }
    )
    return admission.probe
      ? Effect.andThen(
          recording,
          Effect.suspend(() => probeEnded(entry, storeKey))
        )
      : recording
  }

  // Cut by its deadline or refused, the record is lost to every process unless made again: a
  // failure never counted, or (a probe's) the store's probe slot held until its lease ends, every
  // call refused half-open meanwhile. Made again in the layer's scope; its answer updates the view.
  const retryRecord = backend.retryRecord
  const recordLater = (
    options: Parameters<Backend["record"]>[0],
    probe: boolean,
    cause: Cause.Cause<Store.CircuitBreakerError | StoreError>
  ): Effect.Effect<void> => {
    const found = Cause.findErrorOption(cause)
    if (retryRecord === undefined || found._tag === "None") return Effect.void
    const error = found.value
    if (!probe && (error._tag !== "StoreError" || !retryRecord.neverSent(error))) {
      return readBack(options.key, retryRecord.schedule)
    }
    return backend
      .record(options)
      .pipe(Effect.retry(retryRecord.schedule), Effect.matchCauseEffect(recorded), Effect.forkIn(scope), Effect.asVoid)
  }

  // A record that may have run without its answer reaching here (it may have tripped the
  // circuit): the view follows what the store holds once it answers a read.
  const readBack = (
    storeKey: string,
    schedule: Schedule.Schedule<unknown, Store.CircuitBreakerError | StoreError>
  ): Effect.Effect<void> =>
    backend.state(storeKey).pipe(
      Effect.retry(schedule),
      Effect.matchCauseEffect({
        onFailure: () => Effect.void,
        onSuccess: (state) => {
          const entry = registry.entryOfStoreKey(storeKey)
          return entry === undefined
            ? Effect.void
            : Effect.asVoid(fromStore(entry, state, clock.currentTimeMillisUnsafe()))
        }
      }),
      Effect.forkIn(scope),
      Effect.asVoid
    )

  // A probe whose record left the key half-open (ignored, or the store failed): the store counts
  // the key idle from now, so its watcher waits from now.
  const probeEnded = (entry: Entry, storeKey: string): Effect.Effect<void> => {
    if (storeKey !== entry.storeKey || entry.view !== "half-open" || entry.isolated) return Effect.void
    entry.quietSince = clock.currentTimeMillisUnsafe()
    return registry.arm(entry)
  }

  // The fast path (memory store, consecutive policy): a closed circuit whose failure streak is
  // 0 is left as it is by a success, so the call runs without the store's admission; a
  // failure, or a success after a failure recorded meanwhile, is taken to the store when the
  // call ends (admitted and recorded then, in order of completion as the store counts). A
  // circuit that opened in the meantime refuses that late admission: the outcome then changes
  // nothing, as for any call admitted before a trip. The store's admission and record cost
  // ~2 us of CPU per call (bench/breaker.ts, bench/overhead.ts).
  const fast = !backend.shared && consecutive
  const late = (entry: Entry, storeKey: string, outcome: "Success" | "Failure"): Effect.Effect<void> =>
    // Only while the circuit is still closed: an outcome after a trip changes nothing (and must
    // never become the half-open probe's outcome).
    entry.view !== "closed" || storeKey !== entry.storeKey
      ? Effect.void
      : Effect.matchCauseEffect(Scope.provide(backend.admit(storeKey), scope), {
          onFailure: () => Effect.void,
          onSuccess: (admission) => {
            admitted(entry, admission, clock.currentTimeMillisUnsafe())
            return record(entry, storeKey, admission, admission.probe ? "Ignored" : outcome)
          }
        })

  // The same fast path for the engine's fused calls (`policy/fused.ts`), without an Effect
  // around the call: `enter` admits (or says to take the full path), `leave` records.
  const fastLane: FastBreaker | undefined = fast
    ? {
        enter: (key, callerClock, callerNow) => {
          const now = callerClock === clock ? callerNow : clock.currentTimeMillisUnsafe()
          const entry = entryFor(key, now)
          if (entry.isolated || !entry.clean || entry.view !== "closed" || entry.probing) return undefined
          entry.lastActivity = now
          entry.inflight++
          return { entry, storeKey: entry.storeKey }
        },
        leave: (ticket, exit, callerClock, callerNow) => {
          const entry = ticket.entry as Entry
          entry.inflight--
          entry.lastActivity = callerClock === clock ? callerNow : clock.currentTimeMillisUnsafe()
          if (exit === undefined) return undefined
          const outcome = outcomeOf(exit, isFailure)
          if (outcome === "Failure") return late(entry, ticket.storeKey, "Failure")
          if (outcome === "Success" && !entry.clean) return late(entry, ticket.storeKey, "Success")
          return undefined
        }
      }
    : undefined

  const run = <A, E extends AiError>(
    key: string,
    effect: Effect.Effect<A, E>,
    admitScope: Scope.Scope
  ): Effect.Effect<A, E | CircuitOpenError> =>
    Effect.uninterruptibleMask((restore): Effect.Effect<A, E | CircuitOpenError> => {
      const now = clock.currentTimeMillisUnsafe()
      const entry = entryFor(key, now)
      const refusal = refusedHere(entry, now)
      if (refusal !== undefined) return refusal
      if (fast && entry.clean && entry.view === "closed" && !entry.probing) {
        entry.lastActivity = now
        entry.inflight++
        const storeKey = entry.storeKey
        return Effect.onExit(restore(effect), (exit) => {
          entry.inflight--
          entry.lastActivity = clock.currentTimeMillisUnsafe()
          const outcome = outcomeOf(exit, isFailure)
          // A success matters only when a failure was recorded since this call began (it resets
          // the streak, in order of completion as the store counts).
          if (outcome === "Failure") return late(entry, storeKey, "Failure")
          if (outcome === "Success" && !entry.clean) return late(entry, storeKey, "Success")
          return Effect.void
        })
      }
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
    ? (key, effect) =>
        typeof key === "string" ? Effect.scopedWith((admitScope) => run(key, effect, admitScope)) : badKey(key)
    : (key, effect) => (typeof key === "string" ? run(key, effect, scope) : badKey(key))

  const unrecorded = (key: string): Permit => ({ key, probe: false, record: () => Effect.void })

  const admit: Service["admit"] = (key) =>
    typeof key !== "string"
      ? badKey(key)
      : Effect.uninterruptible(
          Effect.flatMap(Effect.scope, (permitScope) =>
            Effect.suspend(() => {
              const now = clock.currentTimeMillisUnsafe()
              const entry = entryFor(key, now)
              const refusal = refusedHere(entry, now)
              if (refusal !== undefined) return refusal
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
                    // Uninterruptible: once a record has begun (and made later ones no-ops), it reaches
                    // the store. Cut midway, a probe's record left the memory store's probe slot held
                    // for ever, every other call refused half-open.
                    record: (outcome) =>
                      Effect.uninterruptible(
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
                      )
                  }
                  return Effect.as(Scope.addFinalizer(permitScope, permit.record("ignored")), permit)
                }
              })
            })
          )
        )

  const state: Service["state"] = Effect.fn("CircuitBreaker.state")(function* (key: string) {
    if (typeof key !== "string") return yield* badKey(key)
    const entry = registry.get(key)
    if (entry?.isolated === true) return "isolated"
    // Read from the store, as the next call's admission is: a key it has forgotten (idle past
    // idleTimeToLive) reads closed, and the view follows. In memory, a key this registry does not
    // hold is one the store has forgotten (or a closed one).
    if (backend.shared || entry !== undefined) {
      const seq = entry?.seq
      const storeKey = entry?.storeKey ?? key
      const read = yield* Effect.result(backend.state(storeKey))
      // A shared store answers a round trip later: when the view moved meanwhile (its timer
      // half-opened it, a call's answer changed it), the read is older than the view and
      // would turn it back (half-open > open > half-open), as the watcher's read would.
      const moved = entry !== undefined && (entry.seq !== seq || entry.storeKey !== storeKey || entry.isolated)
      if (read._tag === "Success" && !moved) {
        return yield* fromStore(entry, read.success, clock.currentTimeMillisUnsafe())
      }
    }
    if (entry === undefined) return "closed"
    if (entry.isolated) return "isolated"
    const now = clock.currentTimeMillisUnsafe()
    return entry.view === "open" && now >= entry.openUntil ? "half-open" : entry.view
  })

  const isolate: Service["isolate"] = Effect.fn("CircuitBreaker.isolate")(function* (key: string) {
    if (typeof key !== "string") return yield* badKey(key)
    const entry = entryFor(key, clock.currentTimeMillisUnsafe())
    if (backend.shared) yield* backend.isolate(entry.storeKey)
    else entry.isolated = true
    yield* registry.cancelTimer(key)
    setView(entry, "isolated", clock.currentTimeMillisUnsafe())
  })

  const reset: Service["reset"] = Effect.fn("CircuitBreaker.reset")(function* (key: string) {
    if (typeof key !== "string") return yield* badKey(key)
    // In memory the store may still count failures of a key this registry evicted: the entry
    // comes back to move it to a fresh store key. Only then: an entry made here, at a new store key,
    // is one maxKeys can never evict (resets of unknown keys would grow the registry for an hour).
    // Not on the fast path: only a clean key is let go there (its store streak is 0, nothing to clear).
    const now = clock.currentTimeMillisUnsafe()
    const entry =
      registry.get(key) ?? (backend.shared || fast || !registry.mayCountUnheld(now) ? undefined : entryFor(key, now))
    if (backend.shared) yield* backend.reset(entry?.storeKey ?? key)
    if (entry === undefined) return
    yield* registry.cancelTimer(key)
    // The memory store cannot be told to forget a key: move the circuit to a fresh one. Calls
    // admitted under the old key record there, and their outcomes no longer reach the view.
    if (!backend.shared) registry.moveStoreKey(entry)
    entry.openUntil = 0
    setView(entry, "closed", clock.currentTimeMillisUnsafe())
  })

  const service: Service = {
    execute,
    admit,
    state,
    changes: registry.changes,
    isolate,
    reset,
    size: registry.size
  }
  if (fastLane !== undefined) fastBreakers.set(service, fastLane)
  selfBounded.add(service)
  return service
})
