/**
 * Circuit breakers: stop calling a provider (or an HTTP agent) that keeps failing, probe it
 * after a pause, and close again once it answers.
 *
 * A breaker protects only the calls that go through *the same* breaker, so breakers are
 * looked up by key in the {@link Registry} (one per provider, or per agent URL), created once
 * and shared. {@link make} exists for tests and special cases; prefer `Registry.get`.
 *
 * @since 0.1.0
 */
import {
  Cause,
  Clock,
  Context,
  Duration,
  Effect,
  Exit,
  FiberHandle,
  Layer,
  Metric,
  MetricLabel,
  Option,
  PubSub,
  Ref,
  Schema,
  Stream,
  SynchronizedRef
} from "effect"
import { Scope } from "effect"
import type { Queue } from "effect"
import { CircuitOpenError, isAiError, isRetryable } from "./AiError.js"
import { circuitRejected, circuitState, circuitTransitions } from "./internal/resilienceMetrics.js"
import { DurationInput } from "./Policy.js"

/**
 * `closed`: calls pass. `open`: calls are refused until the reset timeout has passed.
 * `half-open`: a few probe calls pass; their outcome closes or reopens the breaker.
 * `isolated`: refused until `reset` (manual).
 *
 * @since 0.1.0
 * @category models
 */
export type State = "closed" | "open" | "half-open" | "isolated"

/**
 * The gauge value of each state.
 *
 * @since 0.1.0
 * @category models
 */
export const stateValue: { readonly [S in State]: number } = {
  closed: 0,
  open: 1,
  "half-open": 2,
  isolated: 3
}

/**
 * One transition of one breaker. `at` is epoch milliseconds read from the `Clock`.
 *
 * @since 0.1.0
 * @category models
 */
export interface StateChange {
  readonly name: string
  readonly from: State
  readonly to: State
  readonly at: number
}

/**
 * Trip when, within the last `window`, at least `minimumCalls` calls were recorded (the
 * volume threshold) and the share of failures among them reached `failureRate`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const RollingWindow = Schema.Struct({
  window: DurationInput,
  minimumCalls: Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)),
  failureRate: Schema.Number.pipe(Schema.between(0, 1))
})

/**
 * @since 0.1.0
 * @category models
 */
export type RollingWindow = typeof RollingWindow.Type

/**
 * Breaker options as plain data (a configuration file can hold them). Durations are
 * `Policy.DurationInput`s (milliseconds, `"30 seconds"`, never negative) and decode to
 * `Duration`s.
 *
 * - `failMax`: trip after this many consecutive failures. Default 5 when no `rolling` policy
 *   is given; with `rolling` alone only the rolling policy applies.
 * - `rolling`: failure-rate policy over a rolling time window with a volume threshold.
 * - `resetTimeout`: how long the breaker stays open before probing. Default 30 seconds.
 * - `resetTimeoutMax`: when set, each trip from half-open multiplies the open time by
 *   `resetTimeoutMultiplier` (default 2) up to this bound; closing resets it.
 * - `halfOpenMax`: probe calls admitted at once in half-open. Default 1.
 * - `successThreshold`: probe successes needed to close. Default 1.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Options = Schema.Struct({
  failMax: Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))),
  rolling: Schema.optional(RollingWindow),
  resetTimeout: Schema.optional(DurationInput),
  resetTimeoutMax: Schema.optional(DurationInput),
  resetTimeoutMultiplier: Schema.optional(Schema.Number.pipe(Schema.greaterThanOrEqualTo(1))),
  halfOpenMax: Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))),
  successThreshold: Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)))
})

/**
 * @since 0.1.0
 * @category models
 */
export type Options = typeof Options.Type

/**
 * What code passes to {@link make}, {@link layer} and `Registry.get`: the {@link Options}
 * with durations in any `Duration.DurationInput` form (decoded, and refused when negative,
 * by `Policy.DurationInput` when the breaker is built), plus the one option that is not
 * data: which typed failures count against the breaker. Defects always count;
 * interruptions never do. Failures that do not count are treated as answers (the
 * dependency is up): they reset the consecutive count like a success.
 *
 * @since 0.1.0
 * @category models
 */
export interface MakeOptions {
  readonly failMax?: number | undefined
  readonly rolling?:
    | {
        readonly window: Duration.DurationInput
        readonly minimumCalls: number
        readonly failureRate: number
      }
    | undefined
  readonly resetTimeout?: Duration.DurationInput | undefined
  readonly resetTimeoutMax?: Duration.DurationInput | undefined
  readonly resetTimeoutMultiplier?: number | undefined
  readonly halfOpenMax?: number | undefined
  readonly successThreshold?: number | undefined
  readonly isFailure?: ((error: unknown) => boolean) | undefined
}

/**
 * The default failure filter: timeouts and retryable `AiError`s (rate limited, overloaded,
 * transport, unavailable) count; invalid requests, refused keys, content filters, decode
 * failures and `CircuitOpenError`s of other breakers do not. Errors that are not `AiError`s
 * (an HTTP agent's own failures) count.
 *
 * @since 0.1.0
 * @category predicates
 */
export const defaultIsFailure = (error: unknown): boolean =>
  isAiError(error) ? error._tag === "TimeoutError" || isRetryable(error) : true

/**
 * Counts and state of a breaker at one moment.
 *
 * @since 0.1.0
 * @category models
 */
export interface Snapshot {
  readonly name: string
  readonly state: State
  readonly consecutiveFailures: number
  /** Calls and failures inside the rolling window (0 without a rolling policy). */
  readonly windowCalls: number
  readonly windowFailures: number
  /** While open: time left before probing. */
  readonly retryAfter: Option.Option<Duration.Duration>
}

/**
 * A circuit breaker.
 *
 * @since 0.1.0
 * @category models
 */
export interface CircuitBreaker {
  readonly name: string
  readonly state: Effect.Effect<State>
  readonly snapshot: Effect.Effect<Snapshot>
  /**
   * Runs the effect if the breaker admits it, and records its outcome. Refused calls fail
   * with `CircuitOpenError` (without running the effect).
   */
  readonly run: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | CircuitOpenError, R>
  /** Every transition from the moment the stream starts, in order. */
  readonly changes: Stream.Stream<StateChange>
  /** Subscribes now (no transition after this call is missed); for tests and listeners. */
  readonly subscribe: Effect.Effect<Queue.Dequeue<StateChange>, never, Scope.Scope>
  /** Refuse every call until `reset`. */
  readonly isolate: Effect.Effect<void>
  /** Back to closed with cleared counts. */
  readonly reset: Effect.Effect<void>
}

interface Bucket {
  readonly start: number
  readonly calls: number
  readonly failures: number
}

interface Internal {
  readonly state: State
  /** Changes with every transition; outcomes of calls admitted under another generation are ignored. */
  readonly generation: number
  readonly consecutive: number
  readonly buckets: ReadonlyArray<Bucket>
  readonly openedAt: number
  readonly openFor: number
  /** Trips since the breaker last closed (drives the growing reset timeout). */
  readonly trips: number
  readonly probes: number
  readonly probeSuccesses: number
}

interface Ticket {
  readonly generation: number
  readonly probe: boolean
}

type Outcome = "success" | "failure" | "interrupted"

interface Resolved {
  readonly failMax: number | undefined
  readonly rolling:
    | { readonly window: number; readonly bucket: number; readonly minimumCalls: number; readonly failureRate: number }
    | undefined
  readonly resetTimeout: number
  readonly resetTimeoutMax: number | undefined
  readonly multiplier: number
  readonly halfOpenMax: number
  readonly successThreshold: number
  readonly isFailure: (error: unknown) => boolean
}

const decodeOptions = Schema.decodeUnknownSync(Options)

// `Policy.DurationInput` takes numbers, strings and `Duration`s; the rarer forms become `Duration`s first.
const durationData = (input: Duration.DurationInput | undefined): unknown =>
  typeof input === "bigint" || Array.isArray(input) ? Duration.decode(input) : input

/** Decodes the data options (throws a `ParseError` on invalid ones) and resolves the defaults. */
const resolve = (input: MakeOptions): Resolved => {
  const { isFailure, ...data } = input
  const options = decodeOptions({
    ...data,
    resetTimeout: durationData(data.resetTimeout),
    resetTimeoutMax: durationData(data.resetTimeoutMax),
    rolling: data.rolling === undefined ? undefined : { ...data.rolling, window: durationData(data.rolling.window) }
  })
  const rolling =
    options.rolling === undefined
      ? undefined
      : (() => {
          const window = Math.max(1, Duration.toMillis(options.rolling.window))
          return {
            window,
            bucket: Math.max(1, Math.floor(window / 10)),
            minimumCalls: options.rolling.minimumCalls,
            failureRate: options.rolling.failureRate
          }
        })()
  return {
    failMax: options.failMax ?? (rolling === undefined ? 5 : undefined),
    rolling,
    resetTimeout: Duration.toMillis(options.resetTimeout ?? Duration.seconds(30)),
    resetTimeoutMax: options.resetTimeoutMax === undefined ? undefined : Duration.toMillis(options.resetTimeoutMax),
    multiplier: options.resetTimeoutMultiplier ?? 2,
    halfOpenMax: options.halfOpenMax ?? 1,
    successThreshold: options.successThreshold ?? 1,
    isFailure: isFailure ?? defaultIsFailure
  }
}

const initial: Internal = {
  state: "closed",
  generation: 0,
  consecutive: 0,
  buckets: [],
  openedAt: 0,
  openFor: 0,
  trips: 0,
  probes: 0,
  probeSuccesses: 0
}

const outcomeOf = <A, E>(exit: Exit.Exit<A, E>, isFailure: (error: unknown) => boolean): Outcome => {
  if (Exit.isSuccess(exit)) return "success"
  const cause = exit.cause
  if (Cause.isInterruptedOnly(cause)) return "interrupted"
  if (Option.isSome(Cause.dieOption(cause))) return "failure"
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) return isFailure(failure.value) ? "failure" : "success"
  return "interrupted"
}

const addToWindow = (
  buckets: ReadonlyArray<Bucket>,
  now: number,
  rolling: NonNullable<Resolved["rolling"]>,
  failed: boolean
): ReadonlyArray<Bucket> => {
  const kept = inWindow(buckets, now, rolling)
  const start = now - (now % rolling.bucket)
  const last = kept[kept.length - 1]
  if (last !== undefined && last.start === start) {
    return [...kept.slice(0, -1), { start, calls: last.calls + 1, failures: last.failures + (failed ? 1 : 0) }]
  }
  return [...kept, { start, calls: 1, failures: failed ? 1 : 0 }]
}

const inWindow = (
  buckets: ReadonlyArray<Bucket>,
  now: number,
  rolling: NonNullable<Resolved["rolling"]>
): ReadonlyArray<Bucket> => {
  const first = buckets[0]
  return first === undefined || first.start + rolling.bucket > now - rolling.window
    ? buckets
    : buckets.filter((b) => b.start + rolling.bucket > now - rolling.window)
}

type Admission =
  | { readonly _tag: "Admitted"; readonly ticket: Ticket }
  | { readonly _tag: "Rejected"; readonly state: "open" | "half-open" | "isolated"; readonly retryAfter?: number }

/**
 * Builds a breaker that also publishes its changes to `sinks` (the registry's merged stream).
 *
 * @internal
 */
export const makeWith = Effect.fnUntraced(function* (
  name: string,
  options: MakeOptions,
  sinks: ReadonlyArray<PubSub.PubSub<StateChange>>
) {
  const config = resolve(options)
  const ref = yield* Ref.make(initial)
  const pubsub = yield* Effect.acquireRelease(PubSub.unbounded<StateChange>(), PubSub.shutdown)
  const timer = yield* FiberHandle.make<void, never>()
  const labels = [MetricLabel.make("breaker", name)]
  const rejected = Metric.tagged(circuitRejected, "breaker", name)
  yield* Metric.set(Metric.tagged(circuitState, "breaker", name), stateValue.closed)

  const announce = (change: StateChange): void => {
    circuitState.unsafeUpdate(stateValue[change.to], labels)
    circuitTransitions.unsafeUpdate(1, [...labels, MetricLabel.make("to", change.to)])
    pubsub.unsafeOffer(change)
    for (const sink of sinks) sink.unsafeOffer(change)
  }

  // The change is published inside the same atomic step as the state update: two fibers that
  // each cause a transition cannot publish them out of order.
  const transact = <B>(f: (s: Internal, now: number) => readonly [B, Internal]): Effect.Effect<B> =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Ref.modify(ref, (s) => {
        const [result, next] = f(s, now)
        if (next.state !== s.state) announce({ name, from: s.state, to: next.state, at: now })
        return [result, next] as const
      })
    )

  const openTime = (trips: number): number =>
    config.resetTimeoutMax === undefined
      ? config.resetTimeout
      : Math.min(
          config.resetTimeout * config.multiplier ** trips,
          Math.max(config.resetTimeout, config.resetTimeoutMax)
        )

  const opened = (s: Internal, now: number, trips: number): Internal => ({
    ...initial,
    state: "open",
    generation: s.generation + 1,
    openedAt: now,
    openFor: openTime(trips),
    trips
  })

  const halfOpened = (s: Internal): Internal => ({
    ...s,
    state: "half-open",
    generation: s.generation + 1,
    probes: 0,
    probeSuccesses: 0
  })

  const expire = (generation: number): Effect.Effect<void> =>
    transact((s) => [undefined, s.state === "open" && s.generation === generation ? halfOpened(s) : s])

  const schedule = (next: Option.Option<Internal>): Effect.Effect<void> =>
    Option.match(next, {
      onNone: () => Effect.void,
      onSome: (s) =>
        FiberHandle.run(timer, Effect.zipRight(Effect.sleep(Duration.millis(s.openFor)), expire(s.generation))).pipe(
          Effect.asVoid
        )
    })

  const admit: Effect.Effect<Admission> = transact((s, now): readonly [Admission, Internal] => {
    switch (s.state) {
      case "closed":
        return [{ _tag: "Admitted", ticket: { generation: s.generation, probe: false } }, s]
      case "open": {
        const left = s.openedAt + s.openFor - now
        if (left > 0) return [{ _tag: "Rejected", state: "open", retryAfter: left }, s]
        const next = halfOpened(s)
        return [
          { _tag: "Admitted", ticket: { generation: next.generation, probe: true } },
          { ...next, probes: 1 }
        ]
      }
      case "half-open":
        return s.probes < config.halfOpenMax
          ? [
              { _tag: "Admitted", ticket: { generation: s.generation, probe: true } },
              { ...s, probes: s.probes + 1 }
            ]
          : [{ _tag: "Rejected", state: "half-open" }, s]
      case "isolated":
        return [{ _tag: "Rejected", state: "isolated" }, s]
    }
  })

  const record = (ticket: Ticket, outcome: Outcome): Effect.Effect<void> =>
    Effect.flatMap(
      transact((s, now): readonly [Option.Option<Internal>, Internal] => {
        if (ticket.generation !== s.generation) return [Option.none(), s]
        if (ticket.probe) {
          if (outcome === "interrupted") return [Option.none(), { ...s, probes: s.probes - 1 }]
          if (outcome === "failure") {
            const next = opened(s, now, s.trips + 1)
            return [Option.some(next), next]
          }
          const successes = s.probeSuccesses + 1
          if (successes >= config.successThreshold) return [Option.none(), { ...initial, generation: s.generation + 1 }]
          return [Option.none(), { ...s, probes: s.probes - 1, probeSuccesses: successes }]
        }
        if (s.state !== "closed" || outcome === "interrupted") return [Option.none(), s]
        const failed = outcome === "failure"
        const consecutive = failed ? s.consecutive + 1 : 0
        const rolling = config.rolling
        const buckets = rolling === undefined ? s.buckets : addToWindow(s.buckets, now, rolling, failed)
        if (failed) {
          const byCount = config.failMax !== undefined && consecutive >= config.failMax
          let byRate = false
          if (rolling !== undefined) {
            let calls = 0
            let failures = 0
            for (const b of buckets) {
              calls += b.calls
              failures += b.failures
            }
            byRate = calls >= rolling.minimumCalls && failures / calls >= rolling.failureRate
          }
          if (byCount || byRate) {
            const next = opened(s, now, 0)
            return [Option.some(next), next]
          }
        }
        return [Option.none(), { ...s, consecutive, buckets }]
      }),
      schedule
    )

  const run = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | CircuitOpenError, R> =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(
        admit,
        (admission): Effect.Effect<A, E | CircuitOpenError, R> =>
          admission._tag === "Rejected"
            ? Effect.zipRight(
                Metric.increment(rejected),
                Effect.fail(
                  new CircuitOpenError({
                    breaker: name,
                    state: admission.state,
                    retryAfter: admission.retryAfter === undefined ? undefined : Duration.millis(admission.retryAfter)
                  })
                )
              )
            : restore(effect).pipe(Effect.onExit((exit) => record(admission.ticket, outcomeOf(exit, config.isFailure))))
      )
    )

  const snapshot: Effect.Effect<Snapshot> = Effect.flatMap(Clock.currentTimeMillis, (now) =>
    Effect.map(Ref.get(ref), (s) => {
      const buckets = config.rolling === undefined ? [] : inWindow(s.buckets, now, config.rolling)
      return {
        name,
        state: s.state,
        consecutiveFailures: s.consecutive,
        windowCalls: buckets.reduce((n, b) => n + b.calls, 0),
        windowFailures: buckets.reduce((n, b) => n + b.failures, 0),
        retryAfter:
          s.state === "open" ? Option.some(Duration.millis(Math.max(0, s.openedAt + s.openFor - now))) : Option.none()
      }
    })
  )

  const breaker: CircuitBreaker = {
    name,
    state: Effect.map(Ref.get(ref), (s) => s.state),
    snapshot,
    run,
    changes: Stream.fromPubSub(pubsub),
    subscribe: PubSub.subscribe(pubsub),
    isolate: Effect.zipRight(
      transact((s) => [undefined, { ...initial, state: "isolated", generation: s.generation + 1 }]),
      FiberHandle.clear(timer)
    ),
    reset: Effect.zipRight(
      transact((s) => [undefined, { ...initial, generation: s.generation + 1 }]),
      FiberHandle.clear(timer)
    )
  }
  return breaker
})

/**
 * Builds a breaker that is *not* registered anywhere: it protects only the calls made
 * through this very value. Prefer {@link Registry}`.get`, which shares one breaker per key.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (name: string, options: MakeOptions = {}): Effect.Effect<CircuitBreaker, never, Scope.Scope> =>
  makeWith(name, options, [])

/**
 * The shared breakers of an application, one per key.
 *
 * @since 0.1.0
 * @category models
 */
export interface RegistryService {
  /**
   * The breaker for `name`, created on first use with the layer's defaults overridden by
   * `options`. Later calls return the same breaker; their `options` are ignored.
   */
  readonly get: (name: string, options?: MakeOptions) => Effect.Effect<CircuitBreaker>
  /** Transitions of every breaker, in order. */
  readonly changes: Stream.Stream<StateChange>
  readonly subscribe: Effect.Effect<Queue.Dequeue<StateChange>, never, Scope.Scope>
  /** Snapshots of all breakers created so far, by name. */
  readonly all: Effect.Effect<ReadonlyArray<Snapshot>>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Registry extends Context.Tag("effect-orchestra/CircuitBreaker/Registry")<Registry, RegistryService>() {}

/**
 * Builds a registry. Its breakers (and their timers) live as long as the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeRegistry = Effect.fnUntraced(function* (defaults: MakeOptions = {}) {
  const scope = yield* Effect.scope
  const hub = yield* Effect.acquireRelease(PubSub.unbounded<StateChange>(), PubSub.shutdown)
  const breakers = yield* SynchronizedRef.make<ReadonlyMap<string, CircuitBreaker>>(new Map())

  const get = (name: string, options?: MakeOptions): Effect.Effect<CircuitBreaker> =>
    Effect.flatMap(SynchronizedRef.get(breakers), (map) => {
      const found = map.get(name)
      if (found !== undefined) return Effect.succeed(found)
      return SynchronizedRef.modifyEffect(breakers, (current) => {
        const existing = current.get(name)
        if (existing !== undefined) return Effect.succeed([existing, current] as const)
        return makeWith(name, { ...defaults, ...options }, [hub]).pipe(
          Scope.extend(scope),
          Effect.map((breaker) => [breaker, new Map(current).set(name, breaker)] as const)
        )
      })
    })

  const registry: RegistryService = {
    get,
    changes: Stream.fromPubSub(hub),
    subscribe: PubSub.subscribe(hub),
    all: Effect.flatMap(SynchronizedRef.get(breakers), (map) =>
      Effect.forEach(
        [...map.values()].sort((a, b) => a.name.localeCompare(b.name)),
        (b) => b.snapshot
      )
    )
  }
  return registry
})

/**
 * A registry whose breakers use `defaults` unless `get` overrides them.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (defaults: MakeOptions = {}): Layer.Layer<Registry> =>
  Layer.scoped(Registry, makeRegistry(defaults))

/**
 * Runs an effect through the shared breaker `name` of the `Registry`.
 *
 * @since 0.1.0
 * @category combinators
 */
export const withBreaker =
  (name: string, options?: MakeOptions) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | CircuitOpenError, R | Registry> =>
    Effect.flatMap(Registry, (registry) =>
      Effect.flatMap(registry.get(name, options), (breaker) => breaker.run(effect))
    )
