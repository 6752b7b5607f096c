/**
 * A Promise facade for callers that do not use Effect: the equivalent of the original
 * "run async from sync" helpers. Built on `ManagedRuntime`; `dispose()` closes the
 * manager gracefully.
 *
 * @example
 * ```ts
 * import { createOrchestra } from "effect-orchestra/Facade"
 * import * as Orchestra from "effect-orchestra/Orchestra"
 * import * as Mock from "effect-orchestra/Model/Mock"
 *
 * const orchestra = createOrchestra(Orchestra.layer({ providers: { mock: Mock.layer() } }))
 * const answer = await orchestra.execute("How do I reset my password?", { domain: "support" })
 * console.log(answer.response.text, orchestra.stats().successRate)
 * await orchestra.dispose()
 * ```
 *
 * @since 0.1.0
 */
import { Cause, Deferred, Effect, Exit, type Layer, ManagedRuntime, Stream } from "effect"
import { type AiError, isAiError, ShuttingDownError } from "./AiError.js"
import { Batch, type BatchResult, type Item, type RunOptions } from "./Batch.js"
import { applyTo } from "./Domain.js"
import { Executor } from "./Executor.js"
import type { GenerateRequest, StreamPart } from "./Model.js"
import type { Services } from "./Orchestra.js"
import { type Answer, type CallOptions, type DomainOutcome, type HedgeOptions, Router } from "./Router.js"
import * as Stats from "./Stats.js"

/**
 * A failure of a facade call: the typed `AiError` is in `error`.
 *
 * @since 0.1.0
 * @category errors
 */
export class OrchestraError extends Error {
  constructor(readonly error: AiError) {
    super(error.message)
    this.name = `OrchestraError(${error._tag})`
  }
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Orchestra {
  /**
   * One call through a domain, or without one on the default provider with the executor's
   * retry policy (as a batch item without a domain).
   */
  readonly execute: (
    prompt: string | GenerateRequest,
    options?: CallOptions & { readonly domain?: string | undefined; readonly signal?: AbortSignal | undefined }
  ) => Promise<Answer>
  readonly executeWithFallback: (
    prompt: string | GenerateRequest,
    domains: ReadonlyArray<string>,
    options?: CallOptions & { readonly signal?: AbortSignal | undefined }
  ) => Promise<Answer>
  /** Every domain's outcome (mode `all`); never rejects because a domain failed. */
  readonly executeParallelDomains: (
    prompt: string | GenerateRequest,
    domains: ReadonlyArray<string>,
    options?: CallOptions & { readonly signal?: AbortSignal | undefined }
  ) => Promise<ReadonlyArray<DomainOutcome>>
  readonly hedge: (
    prompt: string | GenerateRequest,
    domains: ReadonlyArray<string>,
    options: HedgeOptions & { readonly signal?: AbortSignal | undefined }
  ) => Promise<Answer>
  /** Never rejects because an item failed; `signal` cancels the batch (the result says which items never ran). */
  readonly batch: (
    items: ReadonlyArray<Item>,
    options?: Omit<RunOptions, "cancel" | "onEvent"> & { readonly signal?: AbortSignal | undefined }
  ) => Promise<BatchResult>
  /**
   * Text deltas and the final event, as an async iterable; leaving the loop early (or the
   * signal) cancels the call. With a `domain`, its provider, system prompt, timeout (of the
   * first chunk) and retry policy apply.
   */
  readonly stream: (
    prompt: string | GenerateRequest,
    options?: { readonly domain?: string | undefined; readonly signal?: AbortSignal | undefined }
  ) => AsyncIterable<StreamPart>
  /** Synchronous; keeps answering after `dispose()` (the final figures). Zeros before anything ran. */
  readonly stats: (filter?: Stats.Filter) => Stats.ExecutionStats
  readonly resetStats: () => void
  /**
   * Graceful shutdown: new calls are refused at once, in-flight calls finish up to the
   * executor's deadline, then everything is released. Idempotent.
   */
  readonly dispose: () => Promise<void>
}

const toRequest = (prompt: string | GenerateRequest): GenerateRequest =>
  typeof prompt === "string" ? { prompt } : prompt

type StatsService = Stats.Service

const emptyStats: Stats.ExecutionStats = {
  total: 0,
  successes: 0,
  failures: 0,
  failuresByReason: {},
  successRate: 0,
  latency: { avg: 0, min: 0, max: 0, p50: 0, p95: 0, p99: 0 },
  concurrencyPeak: 0,
  inFlight: 0,
  timeouts: 0,
  retries: 0,
  fallbacks: 0,
  throughput: 0,
  windowMs: 0
}

const abortReason = (signal: AbortSignal): unknown =>
  signal.reason ?? new DOMException("This operation was aborted", "AbortError")

/**
 * Builds the manager on first use (or `stats()`), and keeps it until `dispose()`.
 *
 * Rejections: an `OrchestraError` carrying the typed error for every failed call (a call
 * made after `dispose()` began carries a `ShuttingDownError`); the signal's `reason` (an
 * `AbortError` by default) for a call cancelled by its `signal`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const createOrchestra = <E>(layer: Layer.Layer<Services, E, never>): Orchestra => {
  const runtime = ManagedRuntime.make(layer)
  let disposing: Promise<void> | undefined
  // Stats read the global metric registry, so the service keeps answering after dispose.
  let statsService: StatsService | undefined
  const captureStats = Effect.map(Stats.Stats, (service) => {
    statsService = service
  })

  const shuttingDown = () =>
    new OrchestraError(new ShuttingDownError({ message: "the orchestra has been disposed and admits no new calls" }))

  const run = <A>(effect: Effect.Effect<A, AiError, Services>, signal?: AbortSignal): Promise<A> => {
    if (disposing !== undefined) return Promise.reject(shuttingDown())
    if (signal?.aborted) return Promise.reject(abortReason(signal))
    const program = statsService === undefined ? Effect.zipRight(captureStats, effect) : effect
    return runtime.runPromiseExit(program, signal === undefined ? undefined : { signal }).then((exit) => {
      if (Exit.isSuccess(exit)) return exit.value
      const failure = Cause.failureOption(exit.cause)
      if (failure._tag === "Some") {
        throw isAiError(failure.value) ? new OrchestraError(failure.value) : failure.value
      }
      if (signal?.aborted && Cause.isInterruptedOnly(exit.cause)) throw abortReason(signal)
      throw Cause.squash(exit.cause)
    })
  }

  const getStats = (): StatsService | undefined => {
    if (statsService === undefined && disposing === undefined) {
      // Builds the manager when its layers build synchronously; otherwise nothing has run yet.
      const exit = runtime.runSyncExit(captureStats)
      if (Exit.isFailure(exit)) return undefined
    }
    return statsService
  }

  const streamOf = (
    prompt: string | GenerateRequest,
    domain: string | undefined
  ): Stream.Stream<StreamPart, OrchestraError, Services> =>
    Stream.unwrap(
      Effect.gen(function* () {
        const executor = yield* Executor
        if (domain === undefined) return executor.stream(toRequest(prompt))
        const router = yield* Router
        const resolved = yield* router.resolve(domain)
        return executor.stream(applyTo(resolved.domain, toRequest(prompt)), {
          provider: resolved.provider,
          domain: resolved.domain.name,
          firstChunkTimeout: resolved.domain.timeout,
          retry: resolved.domain.retry ?? false
        })
      })
    ).pipe(Stream.mapError((error) => new OrchestraError(error)))

  return {
    execute: (prompt, options = {}) =>
      run(
        options.domain === undefined
          ? Effect.flatMap(Executor, (executor) =>
              Effect.map(
                executor.execute(toRequest(prompt), { tags: options.tags, retry: true }),
                (response): Answer => ({
                  response,
                  domain: "default",
                  provider: response.provider,
                  attempts: 1,
                  fallbackUsed: false,
                  source: "provider"
                })
              )
            )
          : Effect.flatMap(Router, (router) => router.execute(toRequest(prompt), options.domain!, options)),
        options.signal
      ),
    executeWithFallback: (prompt, domains, options = {}) =>
      run(
        Effect.flatMap(Router, (router) => router.executeWithFallback(toRequest(prompt), domains, options)),
        options.signal
      ),
    executeParallelDomains: (prompt, domains, options = {}) =>
      run(
        Effect.flatMap(Router, (router) => router.executeParallelDomains(toRequest(prompt), domains, "all", options)),
        options.signal
      ),
    hedge: (prompt, domains, options) =>
      run(
        Effect.flatMap(Router, (router) => router.hedge(toRequest(prompt), domains, options)),
        options.signal
      ),
    batch: (items, options = {}) => {
      const { signal, ...rest } = options
      // The signal cancels the batch (a result naming the items that never ran), not the promise.
      return run(
        Effect.gen(function* () {
          const batch = yield* Batch
          if (signal === undefined) return yield* batch.run(items, rest)
          const cancel = yield* Deferred.make<void>()
          const onAbort = () => Deferred.unsafeDone(cancel, Exit.void)
          if (signal.aborted) onAbort()
          else signal.addEventListener("abort", onAbort, { once: true })
          return yield* batch
            .run(items, { ...rest, cancel: Deferred.await(cancel) })
            .pipe(Effect.ensuring(Effect.sync(() => signal.removeEventListener("abort", onAbort))))
        })
      )
    },
    stream: (prompt, options = {}) => ({
      async *[Symbol.asyncIterator]() {
        if (disposing !== undefined) throw shuttingDown()
        const rt = await runtime.runtime()
        let stream: Stream.Stream<StreamPart, unknown, Services> = streamOf(prompt, options.domain)
        const signal = options.signal
        if (signal !== undefined) {
          if (signal.aborted) throw abortReason(signal)
          const aborted = Effect.async<never, unknown>((resume) => {
            const onAbort = () => resume(Effect.fail(abortReason(signal)))
            signal.addEventListener("abort", onAbort, { once: true })
            return Effect.sync(() => signal.removeEventListener("abort", onAbort))
          })
          stream = stream.pipe(Stream.interruptWhen(aborted))
        }
        yield* Stream.toAsyncIterableRuntime(stream, rt)
      }
    }),
    stats: (filter) => {
      const service = getStats()
      return service === undefined ? emptyStats : Effect.runSync(service.snapshot(filter))
    },
    resetStats: () => {
      const service = getStats()
      if (service !== undefined) Effect.runSync(service.reset)
    },
    dispose: () => {
      if (disposing === undefined) disposing = runtime.dispose()
      return disposing
    }
  }
}
