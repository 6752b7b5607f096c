/**
 * Circuit breakers: stop calling a provider (or an HTTP agent) that keeps failing, probe it
 * once its open time has passed, and close again once it answers.
 *
 * One {@link Breakers} service holds a circuit per key (a provider name, an agent URL) on
 * `effect/persistence`'s `CircuitBreakerStore`: {@link layerMemory} keeps the circuits in
 * this process; `CircuitBreaker/Redis`'s `layerRedis` shares them between processes. Both
 * add what the store lacks: half-open on the clock with no traffic, isolation and reset,
 * timestamped transitions, a state gauge and counters per key (for 100 keys held at once; the
 * others count together under `breaker="(other)"`), and idle keys evicted with their series.
 * See `docs/circuit-breaker.md`.
 *
 * ```
 * closed --(failMax consecutive failures, or failureRate over the last rolling.size calls)--> open
 * open --(resetTimeout, on the clock, with or without traffic)--> half-open
 * half-open --(the one probe succeeds)--> closed
 * half-open --(the probe fails)--> open   (resetTimeout × multiplier per consecutive opening, up to resetTimeoutMax)
 * any --isolate--> isolated --reset--> closed
 * ```
 *
 * @since 0.1.0
 */
import { Context, Effect, type Exit, Layer, Result, type Scope, type Stream } from "effect"
import * as Store from "effect/persistence/CircuitBreaker"
import type * as Redis from "effect/persistence/Redis"
import type { AiError, CircuitOpenError } from "./AiError.js"
import { make as makeCore, memoryBackend } from "./CircuitBreaker/core.js"
import { check, read } from "./CircuitBreaker/options.js"
import * as Input from "./Input.js"
import type { StoreError } from "./Redis.js"
import { makeRedis, type RedisOptions } from "./CircuitBreaker/Redis.js"

export {
  /**
   * The default classifier (see the table in `docs/circuit-breaker.md`): transient provider
   * failures (`RateLimited`, `Overloaded`, `Transport`, `Timeout`, `Unavailable`,
   * `Unknown`), `TimeoutError`s and streams the provider cut (`StreamInterruptedError`, not
   * of reason `ShuttingDown`: a stream its provider's own shutdown cut) count; the caller's
   * mistakes (`InvalidRequest`, `ContentFilter`, `TooLarge`) and answers that show the
   * provider is up (`Unauthorized`, `Decode`) do not.
   *
   * @since 0.1.0
   * @category predicates
   */
  defaultIsFailure
} from "./CircuitBreaker/classify.js"
export {
  /**
   * Breakers on Redis (see `layerRedis`).
   *
   * @since 0.2.0
   * @category constructors
   */
  makeRedis,
  /**
   * @since 0.2.0
   * @category models
   */
  type RedisOptions
} from "./CircuitBreaker/Redis.js"

/**
 * `closed`: calls pass. `open`: calls are refused until the open time has passed.
 * `half-open`: the next call is the one probe; its outcome closes or reopens the circuit.
 * `isolated`: refused until `reset`.
 *
 * @since 0.1.0
 * @category models
 */
export type State = "closed" | "open" | "half-open" | "isolated"

/**
 * One transition of one circuit as this process saw it. `at` is epoch milliseconds read
 * from the `Clock`.
 *
 * @since 0.1.0
 * @category models
 */
export interface StateChange {
  readonly key: string
  readonly from: State
  readonly to: State
  readonly at: number
}

/**
 * An admission to call under a key (see {@link Service.admit}). Exactly one `record`
 * counts; later ones do nothing.
 *
 * @since 0.2.0
 * @category models
 */
export interface Permit {
  readonly key: string
  /** This call is the half-open probe: its outcome closes or reopens the circuit. */
  readonly probe: boolean
  /**
   * Records the call's outcome, classified like `execute`'s. `"ignored"` (or closing the
   * permit's scope without a record) counts nothing and frees the probe.
   */
  readonly record: (outcome: Exit.Exit<unknown, AiError> | "ignored") => Effect.Effect<void>
}

/**
 * The breakers of an application, one circuit per key.
 *
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * Runs one attempt under `key` if its circuit admits it and records the outcome with the
   * classifier. Refusals fail at once with `CircuitOpenError` (state `"open"` with
   * `retryAfter`, `"half-open"` while the probe runs, or `"isolated"`) without running the
   * effect. Put the attempt's deadline inside, the retry outside. A `key` that is no string
   * (from JavaScript; the types forbid it) is a defect, a `ModelError` `InvalidRequest` of field
   * `key`, as it is for `admit`, `isolate` and `reset` (`state` reads it as closed).
   */
  readonly execute: <A, E extends AiError>(
    key: string,
    effect: Effect.Effect<A, E>
  ) => Effect.Effect<A, E | CircuitOpenError>
  /**
   * Admission now, the outcome later (streams): the permit's scope must stay open while the
   * call runs; closing it without a `record` counts as ignored and frees the probe.
   */
  readonly admit: (key: string) => Effect.Effect<Permit, CircuitOpenError, Scope.Scope>
  /**
   * The state of `key`'s circuit, read from the store as the next call's admission is:
   * `"half-open"` as soon as the open time has passed, with no traffic; `"closed"` once the
   * store has forgotten the key (idle past `idleTimeToLive`). With Redis, the store shared by
   * every process.
   */
  readonly state: (key: string) => Effect.Effect<State>
  /**
   * Every transition this process makes or sees, in order, from the moment the stream
   * starts; it ends when the layer closes. A consumer that never reads keeps them all.
   */
  readonly changes: Stream.Stream<StateChange>
  /** Refuses every call under `key` until `reset`. */
  readonly isolate: (key: string) => Effect.Effect<void, StoreError>
  /** Closes `key`'s circuit with cleared counts (and ends an isolation). */
  readonly reset: (key: string) => Effect.Effect<void, StoreError>
  /** Keys held by this process now (bounded by `maxKeys`; idle keys are evicted). */
  readonly size: Effect.Effect<number>
}

/**
 * @since 0.1.0
 * @category services
 */
export class Breakers extends Context.Service<Breakers, Service>()("effect-orchestra/CircuitBreaker/Breakers") {}

/**
 * Breaker options, checked when the layer is built (an `OptionError` names the wrong field).
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * Open after this many consecutive counted failures (a success in between restarts the
   * count). Default 5 when `rolling` is not given. Give `failMax` or `rolling`, not both.
   */
  readonly failMax?: number | undefined
  /**
   * Open when, over the last `size` recorded calls (at most 10,000; at least `minimumCalls`
   * of them, default `size`), the share of failures reaches `failureRate` (in (0, 1]).
   * Counted in calls, not time: the store offers no time-based window.
   */
  readonly rolling?:
    | { readonly size: number; readonly minimumCalls?: number | undefined; readonly failureRate: number }
    | undefined
  /** How long the circuit stays open before its probe. Default 30 seconds. */
  readonly resetTimeout?: Input.DurationInput | undefined
  /**
   * When given, each consecutive opening multiplies the open time by
   * `resetTimeoutMultiplier` (default 2) up to this bound. The count of openings restarts
   * once the circuit has stayed closed as long as it was last open.
   */
  readonly resetTimeoutMax?: Input.DurationInput | undefined
  readonly resetTimeoutMultiplier?: number | undefined
  /** Probes admitted at once while half-open. Only 1: the store runs a single probe. */
  readonly halfOpenMax?: number | undefined
  /** Probe successes needed to close. Only 1: the store closes on the first. */
  readonly successThreshold?: number | undefined
  /**
   * Which typed failures count ({@link defaultIsFailure} by default). A failure that does not
   * count is recorded as an answer (the provider is up). Defects always count;
   * interruption, `CircuitOpenError` and `ShuttingDownError` (a stream cut by a shutdown
   * included) never do. A classifier that throws counts the call as a failure.
   */
  readonly isFailure?: ((error: AiError) => boolean) | undefined
  /**
   * A key with no call for this long (past its open time when open) is forgotten: it reads
   * closed again, with fresh counts, and its metric series go. Default 1 hour.
   */
  readonly idleTimeToLive?: Input.DurationInput | undefined
  /**
   * Keys held at most (closed, idle-most keys make room first; in memory with `failMax`, a closed
   * key whose failures are still counted stays until idle). Default 10,000.
   */
  readonly maxKeys?: number | undefined
  /**
   * The `breakers` attribute of this layer's series (gauge and counters). Give each layer a
   * name when two may hold the same key (memory and Redis, or a second policy): series of
   * unnamed layers are told apart by key only, so the last layer to register one replaces
   * the other's. 1 to 256 characters (it is written whole in each series on every scrape). Default none (no attribute).
   *
   * @since 0.3.0
   */
  readonly name?: string | undefined
}

/**
 * Breakers kept in this process (`effect/persistence`'s memory store). The layer's scope
 * owns their timers and metric series.
 *
 * @since 0.2.0
 * @category constructors
 */
export const makeMemory = Effect.fnUntraced(function* (options: Options = {}) {
  const config = yield* Input.orOptionError(Result.flatMap(read(options), (given) => check(given)))
  const context = yield* Layer.build(Store.layerStoreMemory({ idleTimeToLive: config.idleTimeToLive }))
  return yield* makeCore(config, memoryBackend(Context.get(context, Store.CircuitBreakerStore)))
})

/**
 * {@link Breakers} kept in this process. Build it once and share it: a breaker protects
 * only the calls that go through the same layer.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as CircuitBreaker from "effect-orchestra/CircuitBreaker"
 * import { ModelProvider } from "effect-orchestra/Model"
 *
 * const program = Effect.gen(function* () {
 *   const breakers = yield* CircuitBreaker.Breakers
 *   const provider = yield* ModelProvider
 *   return yield* breakers.execute(provider.name, provider.generate({ prompt: "hello" }))
 * })
 *
 * export const breakers = CircuitBreaker.layerMemory({ failMax: 5, resetTimeout: "30 seconds" })
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layerMemory = (options: Options = {}): Layer.Layer<Breakers, Input.OptionError> =>
  Layer.effect(Breakers, makeMemory(options))

/**
 * {@link Breakers} shared by every process that uses the same Redis and `prefix`: a trip in
 * one is refused by the others' next call, and `isolate` / `reset` act on every process.
 * Needs `effect/persistence`'s `Redis` service (`Redis.layer` of this library builds one
 * that never queues commands while Redis is down). Each Redis call is bounded
 * (`redis.timeout`, default 500 ms); when Redis fails, calls run unrecorded (or are refused
 * with `onStoreError: "reject"`), counted in `orchestra_store_errors_total{store="breaker"}`.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import * as CircuitBreaker from "effect-orchestra/CircuitBreaker"
 * import * as Redis from "effect-orchestra/Redis"
 *
 * export const breakers = CircuitBreaker.layerRedis({ failMax: 5, redis: { timeout: "200 millis" } }).pipe(
 *   Layer.provide(Redis.layer({ url: "redis://127.0.0.1:6379" }))
 * )
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layerRedis = (options: RedisOptions = {}): Layer.Layer<Breakers, Input.OptionError, Redis.Redis> =>
  Layer.effect(Breakers, makeRedis(options))
