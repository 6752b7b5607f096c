/**
 * A Promise facade for callers that do not use Effect (the original "run async from sync"
 * helpers): `createOrchestra(layer)` builds the manager once, on a `ManagedRuntime`, and
 * returns plain async functions. Every call goes through the same router, executor and
 * shared policies as Effect code; `dispose()` is the manager's graceful shutdown.
 *
 * Failures reject with an {@link OrchestraError} whose `error` is typed: an `AiError`, an
 * {@link AbortedError}, or the `OptionError` of a manager that could not be built. Bad
 * input (a `null` prompt, an unknown option, `mode: "bogus"`) is an `InvalidRequest`
 * naming the field. A `signal` cancels a call: its rejection is a `TimeoutError` (limit
 * `total`) when the signal's reason is a `TimeoutError` (`AbortSignal.timeout(ms)`), an
 * `AbortedError` otherwise, and the stats count it the same way (see
 * `docs/orchestration.md`).
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
 * @since 0.1.0
 */
import {
  Cause,
  Clock,
  Context,
  Duration,
  Effect,
  Exit,
  type Fiber,
  type Layer,
  ManagedRuntime,
  Result,
  Schema,
  Stream
} from "effect"
import { type AiError, invalidRequest, isAiError, type ModelError, ShuttingDownError, TimeoutError } from "./AiError.js"
import type { BatchResult, Item, RunOptions } from "./Batch.js"
import * as Calls from "./facade/calls.js"
import { type Checked, check, isTimeoutReason, Keys, kind, none } from "./facade/input.js"
import * as Input from "./Input.js"
import type { EmbedRequest, EmbedResponse, GenerateRequest, Message, StreamPart } from "./Model.js"
import type { Services } from "./Orchestra.js"
import { CurrentCut, type Cut } from "./policy/plan.js"
import * as Prometheus from "./Prometheus.js"
import type { Answer, DomainOutcome } from "./Router.js"
import * as Stats from "./Stats.js"

/**
 * A call cancelled by its `signal` (for a reason other than a timeout). Its `cause` is the
 * signal's `reason`.
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
  /** Deadline of the whole call, retries and fallbacks included: a `TimeoutError` (limit `total`) when it passes. */
  readonly timeout?: Duration.Input | undefined
  /** Cancels the call when it aborts. */
  readonly signal?: AbortSignal | undefined
  /** Earlier messages of the conversation, sent before the prompt. */
  readonly context?: ReadonlyArray<Message> | undefined
  /** Use the response cache when the manager has one (default true). */
  readonly cache?: boolean | undefined
  /** When every step fails, answer from an expired cache entry within its grace. */
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
 * with `cancelled: true` and the items that never ran.
 *
 * @since 0.1.0
 * @category models
 */
export interface BatchOptions extends Omit<RunOptions, "cancel" | "onEvent"> {
  readonly signal?: AbortSignal | undefined
  readonly timeout?: Duration.Input | undefined
}

/**
 * What a prompt may be: a string, or a whole request.
 *
 * @since 0.2.0
 * @category models
 */
export type Prompt = string | GenerateRequest

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
  }
  readonly hedge: (prompt: Prompt, domains: ReadonlyArray<string>, options: HedgeOptions) => Promise<Answer>
  /** One outcome per item, in order; never rejects because an item failed. */
  readonly batch: (items: ReadonlyArray<Item>, options?: BatchOptions) => Promise<BatchResult>
  /**
   * Text deltas and the final `Finish`, as an async iterable. Leaving the loop early (or the
   * signal) cancels the call; a failure rejects the loop with an `OrchestraError`.
   */
  readonly stream: (prompt: Prompt, options?: StreamOptions) => AsyncIterable<StreamPart>
  /** Vectors of one text, several, or a whole request; in input order. */
  readonly embed: (
    input: string | ReadonlyArray<string> | EmbedRequest,
    options?: EmbedOptions
  ) => Promise<EmbedResponse>
  /** Synchronous; zeros before the manager is built, and the final figures after `dispose()`. */
  readonly stats: (filter?: Stats.Filter) => Stats.ExecutionStats
  readonly resetStats: () => void
  /** The library's metrics in the Prometheus text format (see `Prometheus.ts`). */
  readonly metrics: () => Promise<string>
  /**
   * Graceful shutdown: new calls are refused at once, running ones finish up to the
   * executor's shutdown deadline, then the rest end with `ShuttingDownError` and everything
   * is released. Idempotent.
   */
  readonly dispose: () => Promise<void>
}

/** What an aborted signal means: a timeout when its reason says so, otherwise a cancellation. */
const abortError = (signal: AbortSignal, elapsedMillis: number): AiError | AbortedError => {
  const reason: unknown = signal.reason
  if (isAiError(reason)) return reason
  if (isTimeoutReason(reason)) {
    return new TimeoutError({ limit: "total", timeout: Duration.millis(Math.max(0, elapsedMillis)) })
  }
  const why = reason instanceof Error ? `: ${reason.message}` : ""
  return new AbortedError({ message: `the call was aborted by its signal${why}`, cause: reason })
}

/** `promise`, or the abort's error if the signal aborts first (a manager still being built, say). */
const untilAborted = <A>(promise: Promise<A>, signal: AbortSignal | undefined, elapsed: () => number): Promise<A> =>
  signal === undefined
    ? promise
    : new Promise<A>((resolve, reject) => {
        const onAbort = () => reject(new OrchestraError(abortError(signal, elapsed())))
        signal.addEventListener("abort", onAbort, { once: true })
        promise.then(
          (value) => {
            signal.removeEventListener("abort", onAbort)
            resolve(value)
          },
          (error: unknown) => {
            signal.removeEventListener("abort", onAbort)
            reject(error)
          }
        )
      })

// The facade's own clock, read before the manager (and its context) exists.
const clock = Context.get(Context.empty() as Context.Context<never>, Clock.Clock)

const isFacadeError = (u: unknown): u is FacadeError =>
  isAiError(u) || u instanceof AbortedError || u instanceof Input.OptionError

const shuttingDown = () =>
  new OrchestraError(new ShuttingDownError({ message: "the orchestra has been disposed and admits no new calls" }))

/**
 * Builds the manager on first use and keeps it until `dispose()`. Share one per
 * application: its breakers, limits, cache and stats protect only the calls made through it.
 *
 * Rejections: an {@link OrchestraError} carrying the typed failure; a failure of a
 * provider layer that is not one of the library's errors is rejected as it is; a defect
 * (a bug) as its squashed error.
 *
 * @since 0.1.0
 * @category constructors
 */
export const createOrchestra = <E>(layer: Layer.Layer<Services, E, never>): Orchestra => {
  const runtime = ManagedRuntime.make(layer)
  let services: Context.Context<Services> | undefined
  let statsService: Stats.Service | undefined
  let building: Promise<Context.Context<Services>> | undefined
  let disposing: Promise<void> | undefined
  let emptyStats: Stats.ExecutionStats | undefined
  // Call fibers run outside the runtime's own fiber scope, so that dispose drains them
  // through the executor's shutdown instead of interrupting them at once.
  const running = new Set<Fiber.Fiber<unknown, unknown>>()

  const rejectionOf = (cause: Cause.Cause<unknown>, aborted: FacadeError | undefined): unknown => {
    const failure = Cause.findErrorOption(cause)
    if (failure._tag === "Some") return isFacadeError(failure.value) ? new OrchestraError(failure.value) : failure.value
    if (aborted !== undefined) return new OrchestraError(aborted)
    if (Cause.hasInterruptsOnly(cause)) {
      return disposing !== undefined
        ? shuttingDown()
        : new OrchestraError(new AbortedError({ message: "the call was interrupted" }))
    }
    return Cause.squash(cause)
  }

  const servicesOf = (): Promise<Context.Context<Services>> => {
    if (services !== undefined) return Promise.resolve(services)
    building ??= Effect.runPromiseExit(runtime.contextEffect).then((exit) => {
      if (Exit.isFailure(exit)) throw rejectionOf(exit.cause, undefined)
      services = exit.value
      statsService = Context.get(services, Stats.Stats)
      return services
    })
    return building
  }

  /** Runs a call's program on the manager; its signal interrupts it unless `cancels` is false. */
  const run = <A>(
    options: Result.Result<Checked, ModelError>,
    program: (checked: Checked) => Effect.Effect<A, unknown, Services>,
    cancels = true
  ): Promise<A> => {
    if (disposing !== undefined) return Promise.reject(shuttingDown())
    if (Result.isFailure(options)) return Promise.reject(new OrchestraError(options.failure))
    const checked = options.success
    const signal = cancels ? checked.signal : undefined
    if (signal?.aborted) return Promise.reject(new OrchestraError(abortError(signal, 0)))
    const started = clock.currentTimeMillisUnsafe()
    const elapsed = () => clock.currentTimeMillisUnsafe() - started
    return untilAborted(servicesOf(), signal, elapsed).then(
      (context) =>
        new Promise<A>((resolve, reject) => {
          if (disposing !== undefined) return reject(shuttingDown())
          if (signal?.aborted) return reject(new OrchestraError(abortError(signal, elapsed())))
          const cut: Cut = { error: undefined }
          let aborted: FacadeError | undefined
          const fiber = Effect.runForkWith(context)(Effect.provideService(program(checked), CurrentCut, cut))
          const onAbort = () => {
            const error = abortError(signal!, elapsed())
            aborted = error
            // Set before the interruption, so the cut steps are counted as what the caller sees.
            if (error._tag !== "AbortedError") cut.error = error
            fiber.interruptUnsafe()
          }
          running.add(fiber)
          signal?.addEventListener("abort", onAbort, { once: true })
          fiber.addObserver((exit) => {
            running.delete(fiber)
            signal?.removeEventListener("abort", onAbort)
            if (Exit.isSuccess(exit)) resolve(exit.value)
            else reject(rejectionOf(exit.cause, aborted))
          })
        })
    )
  }

  const stream = (prompt: Prompt, options?: StreamOptions): AsyncIterable<StreamPart> => ({
    async *[Symbol.asyncIterator]() {
      if (disposing !== undefined) throw shuttingDown()
      const checked = check(options, Keys.stream)
      if (Result.isFailure(checked)) throw new OrchestraError(checked.failure)
      const signal = checked.success.signal
      if (signal?.aborted) throw new OrchestraError(abortError(signal, 0))
      const started = clock.currentTimeMillisUnsafe()
      const elapsed = () => clock.currentTimeMillisUnsafe() - started
      const context = await untilAborted(servicesOf(), signal, elapsed)
      const cut: Cut = { error: undefined }
      let parts: Stream.Stream<StreamPart, FacadeError, Services> = Calls.stream(prompt, checked.success)
      if (signal !== undefined) {
        const aborted = Effect.callback<never, FacadeError>((resume) => {
          const onAbort = () => {
            const error = abortError(signal, elapsed())
            if (error._tag !== "AbortedError") cut.error = error
            resume(Effect.fail(error))
          }
          if (signal.aborted) onAbort()
          else signal.addEventListener("abort", onAbort, { once: true })
          return Effect.sync(() => signal.removeEventListener("abort", onAbort))
        })
        parts = parts.pipe(Stream.interruptWhen(aborted))
      }
      yield* Stream.toAsyncIterableWith(
        parts.pipe(
          Stream.provideService(CurrentCut, cut),
          Stream.mapError((error) => new OrchestraError(error))
        ),
        context
      )
    }
  })

  return {
    execute: (prompt, options) => run(check(options, Keys.execute), (c) => Calls.execute(prompt, c)),
    executeWithFallback: (prompt, domains, options) =>
      run(check(options, Keys.fallback), (c) => Calls.executeWithFallback(prompt, domains, c)),
    executeParallelDomains: ((prompt: Prompt, domains: ReadonlyArray<string>, options?: ParallelOptions) =>
      run(check(options, Keys.parallel), (c) =>
        Calls.executeParallelDomains(prompt, domains, c)
      )) as Orchestra["executeParallelDomains"],
    hedge: (prompt, domains, options) =>
      run(check(options, Keys.hedge), (c) => Calls.hedge(prompt, domains, options !== undefined, c)),
    // The signal and the timeout cancel the batch (its result names the items that never ran), not the promise.
    batch: (items, options) => run(check(options, Keys.batch), (c) => Calls.batch(items, c), false),
    stream,
    embed: (input, options) => run(check(options, Keys.embed), (c) => Calls.embed(input, c)),
    stats: (filter) => {
      if (filter !== undefined && (typeof filter !== "object" || filter === null)) {
        throw new OrchestraError(invalidRequest("filter", `expected { provider?, domain? }, got ${kind(filter)}`))
      }
      if (statsService !== undefined) return statsService.snapshotUnsafe(filter)
      emptyStats ??= Effect.runSync(Effect.scoped(Effect.map(Stats.make, (s) => s.snapshotUnsafe())))
      return emptyStats
    },
    resetStats: () => {
      if (statsService !== undefined) Effect.runSync(statsService.reset)
    },
    metrics: () => run(Result.succeed(none), () => Prometheus.text),
    dispose: () => {
      disposing ??= runtime.dispose().then(() => {
        // Nothing should be left once the executor has drained; anything that is ends now.
        for (const fiber of running) fiber.interruptUnsafe()
      })
      return disposing
    }
  }
}

export type { Answer, DomainOutcome }
