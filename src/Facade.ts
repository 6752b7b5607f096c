/// <reference lib="esnext.disposable" preserve="true" />
/**
 * A Promise facade for callers that do not use Effect (the original "run async from sync"
 * helpers): `createOrchestra(layer)` builds the manager once, on a `ManagedRuntime`, and
 * returns plain async functions. Every call goes through the same router, executor and
 * shared policies as Effect code; `dispose()` is the manager's graceful shutdown.
 *
 * Failures reject with an {@link OrchestraError} whose `error` is typed: an `AiError`, an
 * {@link AbortedError}, or the `OptionError` of a manager that could not be built. Bad
 * input (a `null` prompt, an unknown option, `mode: "bogus"`, a getter that throws) is an
 * `InvalidRequest` naming the field; a call never throws, it rejects. A `signal` cancels a
 * call: its rejection is a `TimeoutError` (limit `total`) when the signal's reason is a
 * `TimeoutError` (`AbortSignal.timeout(ms)`), an `AbortedError` otherwise, and the stats count
 * it the same way (see `docs/orchestration.md`). A call reads its prompt, domains and input when it
 * is made (a stream: at its first `next()`), so changing them afterwards changes nothing of it; a
 * batch reads each item when it reaches it.
 *
 * @example
 * ```ts
 * import { createOrchestra } from "effect-orchestra/Facade"
 * import * as Mock from "effect-orchestra/Model/Mock"
 * import * as Orchestra from "effect-orchestra/Orchestra"
 *
 * const orchestra = createOrchestra(Orchestra.layer({ providers: { main: Mock.layer() } }))
 * const answer = await orchestra.execute("How do I reset my password?", { domain: "support", timeout: "10 seconds" })
 * console.log(answer.response.text, orchestra.stats().successRate)
 * await orchestra.dispose()
 * ```
 *
 * Or scoped to a block, disposed (gracefully, awaited) when the block is left:
 *
 * ```ts
 * import { createOrchestra } from "effect-orchestra/Facade"
 * import * as Mock from "effect-orchestra/Model/Mock"
 * import * as Orchestra from "effect-orchestra/Orchestra"
 *
 * {
 *   await using orchestra = createOrchestra(Orchestra.layer({ providers: { main: Mock.layer() } }))
 *   console.log((await orchestra.execute("Hello")).response.text)
 * }
 * ```
 *
 * @since 0.1.0
 */
import { type Duration, type Layer, Schema } from "effect"
import type { AiError } from "./AiError.js"
import type { BatchResult, Item, RunOptions } from "./Batch.js"
import { makeCreateOrchestra } from "./facade/orchestra.js"
import type * as Input from "./Input.js"
import type { EmbedRequest, EmbedResponse, GenerateRequest, Message, StreamPart } from "./Model.js"
import type { Services } from "./Orchestra.js"
import type { Answer, DomainOutcome } from "./Router.js"
import type * as Stats from "./Stats.js"

/**
 * A call cancelled by its `signal` (for a reason other than a timeout). Its `cause` is the
 * signal's `reason`; its message names the reason: its `message` (an `Error`'s, of any realm), or a string, number or
 * boolean reason itself.
 *
 * @since 0.2.0
 * @category errors
 */
export class AbortedError extends Schema.TaggedError<AbortedError>("effect-orchestra/AbortedError")("AbortedError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect())
}) {}

/**
 * What a facade call can fail with.
 *
 * @since 0.2.0
 * @category models
 */
export type FacadeError = AiError | AbortedError | Input.OptionError

/**
 * The rejection of a failed facade call: the typed failure is in `error`.
 *
 * @since 0.1.0
 * @category errors
 */
export class OrchestraError extends Error {
  readonly error: FacadeError
  constructor(error: FacadeError) {
    super(error.message, { cause: error })
    this.error = error
    this.name = `OrchestraError(${error._tag})`
  }
}

/**
 * Options every call takes. Every value is checked; an unknown key is refused too.
 *
 * @since 0.2.0
 * @category models
 */
export interface CallOptions {
  /**
   * Deadline of the whole call, retries, fallbacks and the wait for a manager still being built
   * included: a `TimeoutError` (limit `total`) when it passes.
   */
  readonly timeout?: Duration.Input | undefined
  /** Cancels the call when it aborts. */
  readonly signal?: AbortSignal | undefined
  /** Earlier messages of the conversation, sent before the prompt. */
  readonly context?: ReadonlyArray<Message> | undefined
  /** Use the response cache when the manager has one (default true). */
  readonly cache?: boolean | undefined
  /** When every step fails or `timeout` passes, answer from an expired cache entry within its grace. */
  readonly allowStale?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface ExecuteOptions extends CallOptions {
  /** The domain (and its fallback chain). Without one: the default provider with the executor's retry policy. */
  readonly domain?: string | undefined
}

/**
 * @since 0.2.0
 * @category models
 */
export interface ParallelOptions extends CallOptions {
  /** `all` (default): every domain's outcome; `first`: the first success, the others interrupted. */
  readonly mode?: "all" | "first" | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface HedgeOptions extends CallOptions {
  /** When to start the next domain: a duration, or `"p95"` of the first domain's service time. */
  readonly after: Duration.Input | "p95"
  /** Used by `"p95"` until the first domain has 20 answers. Default 2 seconds. */
  readonly defaultAfter?: Duration.Input | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface StreamOptions extends Omit<CallOptions, "allowStale"> {
  /** A domain (with its fallback chain) or a chain of domains. Without: the default provider. */
  readonly domain?: string | ReadonlyArray<string> | undefined
  readonly firstChunkTimeout?: Duration.Input | "none" | undefined
  readonly idleTimeout?: Duration.Input | "none" | undefined
}

/**
 * @since 0.2.0
 * @category models
 */
export interface EmbedOptions {
  readonly domain?: string | undefined
  readonly timeout?: Duration.Input | undefined
  readonly signal?: AbortSignal | undefined
}

/**
 * Options of a batch. `signal` and `timeout` cancel the batch: the promise still resolves,
 * with `cancelled: true` and the items that never ran (unless the manager is still being built
 * then, an already aborted signal included: with no manager, the batch rejects as a call does).
 *
 * @since 0.1.0
 * @category models
 */
export interface BatchOptions extends Omit<RunOptions, "cancel" | "onEvent"> {
  readonly signal?: AbortSignal | undefined
  readonly timeout?: Duration.Input | undefined
}

/**
 * Options of `createOrchestra` itself (the manager's own are its layer's). Each is checked: a value that
 * is not a duration (`NaN`, a negative one, `"soon"`, `null`), an unknown key or options that are no object
 * of fields (a `Map`, a `Date`) is an `OptionError` naming it, which every call rejects with (the manager is
 * never built), as for a layer's wrong options. Only own fields are read, each once.
 *
 * @since 0.3.0
 * @category models
 */
export interface FacadeOptions {
  /**
   * A build of the manager that failed (a Redis layer that could not connect, a model file briefly
   * unreadable) is tried again by the first call made this long after it; calls made sooner reject at
   * once with the same failure, and build nothing. The wait doubles with each failure in a row, up to
   * a minute (or this value, when longer). `0`: the next call builds again; `Infinity`: never. Default 1 second. A build
   * that failed with an `OptionError` (a wrong configuration) is final: never tried again.
   */
  readonly rebuildAfter?: Duration.Input | undefined
  /**
   * The bound of `dispose()` as a whole (the executor's drain, then every layer's release): once it has
   * passed, `dispose()` rejects with an {@link OrchestraError} whose `error` is a `ModelError` (reason
   * `Unknown`) naming what had not finished; the calls still running (streams included) end with
   * `ShuttingDownError`, a batch still running resolves with its running items `cancelled`, and a release
   * that never ends goes on in the background. Default 30 seconds (above the executor's default
   * `shutdownDeadline` of 10); `Infinity`: no bound.
   */
  readonly disposeTimeout?: Duration.Input | undefined
}

/**
 * What a prompt may be: a string, or a whole request.
 *
 * @since 0.2.0
 * @category models
 */
export type Prompt = string | GenerateRequest

/**
 * What `stream` answers: an async iterable of the stream's parts whose iterator can be held
 * with `await using` (leaving the block is its `return()`: the call is cancelled).
 *
 * @since 0.3.0
 * @category models
 */
export interface PartStream extends AsyncIterable<StreamPart> {
  [Symbol.asyncIterator](): AsyncIterableIterator<StreamPart> & AsyncDisposable
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Orchestra {
  readonly execute: (prompt: Prompt, options?: ExecuteOptions) => Promise<Answer>
  /** Tries the domains in order; when all fail, the rejection's error is a `FallbackExhaustedError`. */
  readonly executeWithFallback: (
    prompt: Prompt,
    domains: ReadonlyArray<string>,
    options?: CallOptions
  ) => Promise<Answer>
  readonly executeParallelDomains: {
    (
      prompt: Prompt,
      domains: ReadonlyArray<string>,
      options?: ParallelOptions & { readonly mode?: "all" | undefined }
    ): Promise<ReadonlyArray<DomainOutcome>>
    (
      prompt: Prompt,
      domains: ReadonlyArray<string>,
      options: ParallelOptions & { readonly mode: "first" }
    ): Promise<Answer>
    /**
     * A mode known only at run time (options of type `ParallelOptions`): the outcomes, or the answer.
     *
     * @since 0.3.0
     */
    (
      prompt: Prompt,
      domains: ReadonlyArray<string>,
      options?: ParallelOptions
    ): Promise<ReadonlyArray<DomainOutcome> | Answer>
  }
  readonly hedge: (prompt: Prompt, domains: ReadonlyArray<string>, options: HedgeOptions) => Promise<Answer>
  /** One outcome per item, in order; never rejects because an item failed. */
  readonly batch: (items: ReadonlyArray<Item>, options?: BatchOptions) => Promise<BatchResult>
  /**
   * Text deltas and the final `Finish`, as an async iterable. Nothing starts before the loop does, and
   * each loop over the same iterable (each `[Symbol.asyncIterator]()`) is a provider call of its own: keep
   * the parts to read them twice. Leaving the loop early (or the
   * signal) cancels the call, and so does its iterator's `return()` while a `next()` waits (that
   * `next()` answers done); a failure rejects the loop with an `OrchestraError`. The signal
   * is listened to only while the loop awaits a part: aborted between two parts, the stream
   * ends at the next `next()`, and a loop abandoned without `return()` leaves nothing on it.
   * An iterator dropped without `return()` (and no `next()` waiting) is cancelled once the garbage
   * collector reclaims it; until then the stream's total deadline (`timeout`, else the executor's
   * `stream.totalTimeout`) gives its provider slot back. Call `return()` to free everything at once, or
   * hold the iterator with `await using` (leaving the block is `return()`).
   * The text handed over is kept only with a `signal`, for the `partialText` of its abort's error.
   */
  readonly stream: (prompt: Prompt, options?: StreamOptions) => PartStream
  /** Vectors of one text, several, or a whole request; in input order. */
  readonly embed: (
    input: string | ReadonlyArray<string> | EmbedRequest,
    options?: EmbedOptions
  ) => Promise<EmbedResponse>
  /** Synchronous; zeros before the manager is built, and the final figures after `dispose()`. */
  readonly stats: (filter?: Stats.Filter) => Stats.ExecutionStats
  /**
   * Starts a new stats window. After `dispose()` (or during it) it throws an {@link OrchestraError} whose
   * `error` is a `ShuttingDownError`, as every call made then is refused: the final figures stay.
   */
  readonly resetStats: () => void
  /**
   * The library's metrics in the Prometheus text format (see `Prometheus.ts`). After `dispose()`
   * (asked during it: once it is over) the final metrics, the series of the closed layers and
   * the calls the shutdown drained included, as `stats()` gives the final figures; none (`""`)
   * when no manager was built. Before 0.3.0 it rejected with `ShuttingDownError` then.
   */
  readonly metrics: () => Promise<string>
  /**
   * Graceful shutdown: new calls are refused at once, running ones finish up to the
   * executor's shutdown deadline, then the rest end with `ShuttingDownError` and everything
   * is released; a running batch resolves, its items not drained `rejected`. Idempotent.
   *
   * A finalizer that fails (a layer's release) does not stop the others: once everything else
   * is released, the promise rejects with an {@link OrchestraError} whose `error` is a
   * `ModelError` with reason `Unknown` naming the failure, its `cause` what the finalizer threw
   * (an `AggregateError` of them when several did).
   *
   * It is bounded by `disposeTimeout` (see {@link FacadeOptions}, default 30 seconds): a layer whose
   * release never ends makes it reject then with a `ModelError` (reason `Unknown`) naming what had not
   * finished, instead of hanging for ever. Made while a failed build is being tried again, it cuts that
   * build: the calls waiting for it reject with `ShuttingDownError`.
   */
  readonly dispose: () => Promise<void>
  /**
   * `dispose()`, for `await using orchestra = createOrchestra(...)`: leaving the block waits for
   * the graceful shutdown (the same promise as `dispose()`, so it rejects as `dispose()` does).
   * There is no synchronous `Symbol.dispose`: a shutdown that drains running calls cannot end
   * before it returns.
   *
   * @since 0.3.0
   */
  readonly [Symbol.asyncDispose]: () => Promise<void>
}

/**
 * Builds the manager on first use and keeps it until `dispose()`. Share one per
 * application: its breakers, limits, cache and stats protect only the calls made through it.
 *
 * A build that fails rejects the calls waiting for it with its failure (each once); a later call
 * builds again once `options.rebuildAfter` has passed (a backoff that doubles), so a Redis that was
 * down at start needs no restart of the process. An `OptionError` (a wrong configuration) is final.
 *
 * Rejections: an {@link OrchestraError} carrying the typed failure; a failure of a
 * provider layer that is not one of the library's errors is rejected as it is; a defect
 * (a bug) of a call as its squashed error. Either one that is no `Error` (`Effect.fail("down")`) is an
 * `OrchestraError` whose `ModelError` (reason `Unknown`) carries it as `cause`: a call never rejects with a
 * bare value. `dispose()` rejects only with an `OrchestraError`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const createOrchestra: <E>(layer: Layer.Layer<Services, E, never>, options?: FacadeOptions) => Orchestra =
  makeCreateOrchestra({
    AbortedError,
    OrchestraError
  })

export type { Answer, DomainOutcome }
