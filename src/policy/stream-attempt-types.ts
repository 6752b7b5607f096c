/**
 * An attempt of a stream (`stream-attempt.ts` starts it, `stream-attempt-close.ts` ends it) and what
 * the attempts of one stream share with its consumer (`stream.ts`).
 *
 * @internal
 */
import type { AiError } from "../AiError.js"
import type { Clock, Effect, Exit, Fiber, Scope, Tracer } from "effect"
import type { Finish, StreamPart } from "../Model.js"
import type { Series } from "../stats/series.js"
import type { Watch } from "./deadline.js"
import type { Engine } from "./engine.js"
import type { BreakerPermit } from "./plan.js"
import type { StreamPlan, StreamStep } from "./stream-plan.js"
import type { Dedupe } from "./stream-resume.js"

/**
 * One upstream stream on one step.
 *
 * @internal
 */
export interface Attempt {
  readonly step: StreamStep
  readonly series: Series
  readonly scope: Scope.Closeable
  /**
   * The upstream's own (its stream's and its pulls' resources, a connection): forked from `scope`,
   * closed by the producer at its Finish, or else when the attempt closes; waited for up to `RELEASE_GRACE`.
   */
  readonly upstream: Scope.Closeable
  readonly watch: Watch
  /** The deadline its watch is armed with: the first chunk's until one arrives, then the idle one. */
  limit: "firstChunk" | "idle"
  readonly buffer: Array<StreamPart>
  /** When its provider began serving it, past the rate limit, the breaker and the slot queue. */
  started: number
  fiber: Fiber.Fiber<void, AiError> | undefined
  end: Exit.Exit<void, AiError> | undefined
  permit: BreakerPermit | undefined
  /** Gives the provider slot back, once: when the producer ends, or else when the attempt closes. */
  release: Effect.Effect<void> | undefined
  finish: Finish | undefined
  serving: boolean
  /** Whether its provider ever saw it: its breaker counts nothing of an attempt cut while it queued. */
  served: boolean
  /**
   * The user's guard the producer waits on ("the rate limit", "the circuit breaker"), else undefined: a
   * failure then is that guard's, named as a call names it, and never its provider's (`step.ts`).
   */
  guard: string | undefined
  space: (() => void) | undefined
  dedupe: Dedupe | undefined
  /** The attempt's span, when its stream has one. */
  readonly span: Tracer.Span | undefined
}

/**
 * A traced stream's span, the parent of its attempts' spans.
 *
 * @internal
 */
export interface StreamSpan {
  readonly span: Tracer.Span
  readonly clock: Clock.Clock
}

/**
 * What the attempts of one stream share with its consumer; one per stream.
 *
 * @internal
 */
export interface AttemptHost {
  readonly engine: Engine
  readonly plan: StreamPlan
  /** Each attempt's own scope is forked from it; it closes after the stream's finalizer has run. */
  readonly scope: Scope.Scope
  readonly now: () => number
  /** Wakes the consumer if it waits: parts were buffered or the attempt ended. */
  readonly signal: () => void
  /** Makes the attempt the stream's current one, before its producer starts. */
  readonly begin: (attempt: Attempt) => void
  /** The stream's span: undefined unless a tracer records it. */
  readonly span: StreamSpan | undefined
  /** When its total deadline passes (`Infinity`: none): no rate-limit wait ends past it. */
  readonly totalAt: () => number
}
