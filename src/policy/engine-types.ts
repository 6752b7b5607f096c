/**
 * The engine's interface (`engine.ts` builds it): what the executor, streams and batches call.
 *
 * @internal
 */
import type { Duration, Effect, Fiber } from "effect"
import type { AiError, ShuttingDownError } from "../AiError.js"
import type * as Input from "../Input.js"
import type { Service as StatsService } from "../Stats.js"
import type { Series } from "../stats/series.js"
import type * as Deadline from "./deadline.js"
import type * as Fused from "./fused.js"
import type { Answer, Plan, Step } from "./plan.js"
import type { ProviderSlots } from "./slots.js"

/**
 * @internal
 */
export interface Engine {
  readonly run: <T, A>(
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
  ) => Effect.Effect<Answer<T, A>, AiError>
  /** `run`, answering with the value only. */
  readonly runValue: <T, A>(
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
  ) => Effect.Effect<A, AiError>
  /** `runValue` for a caller that holds its fiber. */
  readonly runValueIn: <T, A>(
    fiber: Fiber.Fiber<unknown, unknown>,
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>
  ) => Effect.Effect<A, AiError>
  /**
   * A call started from JavaScript: reports to `sink` under `index` its value, or with `full`
   * its `Answer` (at once when it ends at once: then it answers `undefined`), else answers
   * its handle.
   */
  readonly start: <T, A>(
    fiber: Fiber.Fiber<unknown, unknown>,
    plan: Plan<T, A>,
    call: (target: T, step: Step<T>) => Effect.Effect<A, AiError>,
    sink: Fused.Sink,
    index: number,
    full?: boolean
  ) => Fused.Running | undefined
  /** Runs `effect` as a tracked wait: shutdown interrupts it (the caller gets `ShuttingDownError`). */
  readonly tracked: <A, E>(
    effect: Effect.Effect<A, E>,
    timeout?: Duration.Duration | undefined
  ) => Effect.Effect<A, E | AiError>
  readonly lanes: Deadline.Lanes
  /** Fails with `ShuttingDownError` once closing. */
  readonly admit: Effect.Effect<void, ShuttingDownError>
  /** Counts a call (or stream) as running until `leave`, for the drain on shutdown. */
  readonly enter: () => void
  readonly leave: () => void
  readonly isClosing: () => boolean
  readonly series: (step: Step<unknown>) => Series
  /** The limit of the provider slots a step of `name` stating `max` queues for, if any (nothing taken). */
  readonly slotLimit: (name: string, max: number | undefined) => number | undefined
  /** The provider slots of `name`, taken for one use until its `leave` (`undefined`: no limit applies). */
  readonly slot: (name: string, max: number | undefined) => ProviderSlots | undefined
  /**
   * Answers the issue (under `path`) of `max` for `name` while the name has another limit: its
   * executor's provider's, or that of its calls running. Called where providers and plans enter,
   * so that calls running at once never meet two limits for one name.
   */
  readonly claimSlot: (name: string, max: number | undefined, path: string) => Input.Issue | undefined
  /** Takes `max` as the limit of `name` for the engine's life (its executor's own provider). */
  readonly pinSlot: (name: string, max: number | undefined) => void
}

/**
 * @internal
 */
export interface Options {
  readonly stats: StatsService
  readonly shutdownDeadline: Duration.Duration
}
