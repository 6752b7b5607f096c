/**
 * A model provider for tests, examples, benchmarks and the CLI's offline mode: outcomes
 * scripted call by call or drawn from a seeded random mix, latencies fixed or uniform,
 * failures of every reason, hangs, and streams that pace, stall or drop. Time passes only
 * through `Effect.sleep`, so `TestClock` drives it. `MockControl` counts calls and keeps
 * the last requests.
 *
 * @since 0.1.0
 */
import { Context, type Duration, Effect, Layer } from "effect"
import type { Reason } from "../AiError.js"
import type { OptionError } from "../Input.js"
import {
  type EmbedRequest,
  type FinishReason,
  type GenerateRequest,
  ModelProvider,
  type Service,
  type ToolCall
} from "../Model.js"
import * as Behaviour from "./Mock/behaviour.js"
import { compile } from "./Mock/options.js"

/**
 * A latency: a fixed duration (`150`, `"150 millis"`), or a duration drawn uniformly
 * between two bounds with the mock's seeded random (`{ uniform: [100, 300] }`).
 *
 * @since 0.1.0
 * @category models
 */
export type Latency = Duration.Input | { readonly uniform: readonly [min: Duration.Input, max: Duration.Input] }

/**
 * The call answers. For streams, the text arrives in `chunks` (default: one word a
 * chunk), the first after `latency`, the next ones `chunkDelay` apart, then the tool
 * calls and the `Finish`.
 *
 * @since 0.2.0
 * @category models
 */
export interface Succeed {
  readonly _tag: "Succeed"
  /** The answer. Default: `respond(request)`. Give `text` or `chunks`, not both. */
  readonly text?: string | undefined
  /** The stream's chunks, in order; the answer of `generate` is their concatenation. */
  readonly chunks?: ReadonlyArray<string> | undefined
  readonly toolCalls?: ReadonlyArray<ToolCall> | undefined
  /** Default `tool_calls` when there are tool calls, else `stop`. */
  readonly finishReason?: FinishReason | undefined
  readonly latency?: Latency | undefined
  readonly chunkDelay?: Latency | undefined
}

/**
 * The call fails with a `ModelError` of this `reason`, after `latency`. A stream first
 * delivers `afterChunks` chunks of the answer, then drops.
 *
 * @since 0.2.0
 * @category models
 */
export interface Fail {
  readonly _tag: "Fail"
  readonly reason: Reason
  /** The error's message. Default: `mock <name> failed: <reason>`. */
  readonly message?: string | undefined
  /** Default: the status a real provider sends for the reason (429, 503, 401, ...). */
  readonly status?: number | undefined
  readonly retryAfter?: Duration.Input | undefined
  readonly latency?: Latency | undefined
  /** For streams: chunks delivered before the failure. Default 0. */
  readonly afterChunks?: number | undefined
  readonly chunkDelay?: Latency | undefined
  /** For streams: the answer whose first chunks are delivered. Default: `respond(request)`. */
  readonly text?: string | undefined
}

/**
 * The call never answers (until interrupted). A stream first delivers `afterChunks`
 * chunks, then stalls.
 *
 * @since 0.2.0
 * @category models
 */
export interface Hang {
  readonly _tag: "Hang"
  /** For streams: chunks delivered before the stall. Default 0. */
  readonly afterChunks?: number | undefined
  readonly latency?: Latency | undefined
  readonly chunkDelay?: Latency | undefined
  readonly text?: string | undefined
}

/**
 * What one call does.
 *
 * @since 0.1.0
 * @category models
 */
export type Outcome = Succeed | Fail | Hang

/**
 * @since 0.1.0
 * @category constructors
 */
export const Outcome = {
  succeed: (text?: string, options?: Omit<Succeed, "_tag" | "text">): Outcome => ({
    _tag: "Succeed",
    text,
    ...options
  }),
  fail: (reason: Reason, options?: Omit<Fail, "_tag" | "reason">): Outcome => ({ _tag: "Fail", reason, ...options }),
  hang: (options?: Omit<Hang, "_tag">): Outcome => ({ _tag: "Hang", ...options })
} as const

/**
 * A seeded random mix of outcomes, for the calls the script does not cover. A call
 * succeeds with probability `success`, hangs with probability `hang`, and fails
 * otherwise, with a reason drawn by the `failures` weights.
 *
 * @since 0.1.0
 * @category models
 */
export interface RandomMix {
  /** In [0, 1]. */
  readonly success: number
  /** In [0, 1]; `success + hang` at most 1. Default 0. */
  readonly hang?: number | undefined
  /** Relative weights of the failure reasons. Default `{ Overloaded: 1 }`. */
  readonly failures?: Partial<Record<Reason, number>> | undefined
}

/**
 * Options of {@link make}. Every number is checked when the mock is built: a bad one
 * fails the layer with an `OptionError` naming the field.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Provider name (default `"mock"`). */
  readonly name?: string | undefined
  /** The model reported when a request names none (default `"mock-model"`). */
  readonly model?: string | undefined
  /** Outcomes of the 1st, 2nd, ... valid call (generate, stream and embed, by start order). */
  readonly script?: ReadonlyArray<Outcome> | undefined
  /** After the script (or without one): a seeded random mix. Otherwise every call succeeds. */
  readonly random?: RandomMix | undefined
  /**
   * Seeds every random draw (outcomes, uniform latencies). Call n draws the same numbers in every run. An
   * integer from 0 to 2^32-1 (4294967295). Default 0.
   */
  readonly seed?: number | undefined
  /** Default latency of a call (a stream's time to its first chunk). Default 0. */
  readonly latency?: Latency | undefined
  /** Default delay between stream chunks. Default 0. */
  readonly chunkDelay?: Latency | undefined
  /**
   * The answer to a request, called once per call that needs it. Default: `mock answer to: <last message>`. One that
   * throws or answers no string fails the call with an `InvalidRequest` on the field `respond`.
   */
  readonly respond?: ((request: GenerateRequest) => string) | undefined
  /** Dimensions of the deterministic embedding vectors. Default 8. */
  readonly dimensions?: number | undefined
  /** Declared on the service: calls the provider serves at once (the executor queues the rest). */
  readonly maxConcurrency?: number | undefined
  /** Requests kept for `MockControl.requests`: the last N. Default 1,000; 0 keeps none. Counts are kept apart. */
  readonly requestLogSize?: number | undefined
}

/**
 * A request as the mock saw it, numbered by start order from 0.
 *
 * @since 0.2.0
 * @category models
 */
export type LoggedRequest =
  | { readonly index: number; readonly kind: "generate" | "stream"; readonly request: GenerateRequest }
  | { readonly index: number; readonly kind: "embed"; readonly request: EmbedRequest }

/**
 * Counts since the mock was built. `calls = succeeded + failed + interrupted + inFlight`.
 *
 * @since 0.2.0
 * @category models
 */
export interface Counts {
  readonly calls: number
  readonly generate: number
  readonly stream: number
  readonly embed: number
  readonly succeeded: number
  readonly failed: number
  readonly interrupted: number
  readonly inFlight: number
  /** Highest number of calls running at once. */
  readonly peak: number
}

/**
 * What a test can observe of a mock.
 *
 * @since 0.1.0
 * @category models
 */
export interface Control {
  readonly name: string
  /** Calls started (generate, stream and embed), refused requests included. */
  readonly calls: Effect.Effect<number>
  /** Calls that ended with a success or a failure. */
  readonly completed: Effect.Effect<number>
  /** Calls interrupted (or streams left by their consumer) before they ended. */
  readonly interrupted: Effect.Effect<number>
  readonly inFlight: Effect.Effect<number>
  readonly peak: Effect.Effect<number>
  readonly counts: Effect.Effect<Counts>
  /** The last `requestLogSize` requests, oldest first. */
  readonly requests: Effect.Effect<ReadonlyArray<LoggedRequest>>
}

/**
 * @since 0.1.0
 * @category services
 */
export class MockControl extends Context.Service<MockControl, Control>()("effect-orchestra/Model/Mock/MockControl") {}

/**
 * Splits a text into stream chunks: one word (with the spaces after it) a chunk.
 *
 * @since 0.1.0
 * @category utils
 */
export const chunksOf: (text: string) => ReadonlyArray<string> = Behaviour.chunksOf

/**
 * A deterministic unit vector for a text (a hash spread over the dimensions): equal
 * texts get equal vectors, in every run.
 *
 * @since 0.1.0
 * @category utils
 */
export const embedText: (text: string, dimensions: number) => ReadonlyArray<number> = Behaviour.embedText

/**
 * Builds a mock provider and its control. Fails with an `OptionError` naming the first
 * bad option.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: Options = {}
): Effect.Effect<{ readonly provider: Service; readonly control: Control }, OptionError> =>
  Effect.map(compile(options), Behaviour.build)

/**
 * A layer with a mock `ModelProvider` and its `MockControl`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<ModelProvider | MockControl, OptionError> =>
  Layer.effectContext(
    Effect.map(make(options), ({ control, provider }) =>
      Context.make(ModelProvider, provider).pipe(Context.add(MockControl, control))
    )
  )
