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
import { type AiError, isAiError } from "./AiError.js"
import { Batch, type BatchResult, type Item, type RunOptions } from "./Batch.js"
import { Executor } from "./Executor.js"
import type { GenerateRequest, StreamPart } from "./Model.js"
import type { Services } from "./Orchestra.js"
import { type Answer, type CallOptions, type DomainOutcome, type HedgeOptions, Router } from "./Router.js"
import { type ExecutionStats, type Filter, Stats } from "./Stats.js"

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
  /** One call through a domain (or the default provider without one). */
  readonly execute: (
    prompt: string | GenerateRequest,
    options?: CallOptions & { readonly domain?: string | undefined; readonly signal?: AbortSignal | undefined }
  ) => Promise<Answer>
  readonly executeWithFallback: (
    prompt: string | GenerateRequest,
    domains: ReadonlyArray<string>,
    options?: CallOptions & { readonly signal?: AbortSignal | undefined }
  ) => Promise<Answer>
  readonly executeParallelDomains: (
    prompt: string | GenerateRequest,
    domains: ReadonlyArray<string>
  ) => Promise<ReadonlyArray<DomainOutcome>>
  readonly hedge: (
    prompt: string | GenerateRequest,
    domains: ReadonlyArray<string>,
    options: HedgeOptions
  ) => Promise<Answer>
  /** Never rejects because an item failed; `signal` cancels the batch (the result says which items never ran). */
  readonly batch: (
    items: ReadonlyArray<Item>,
    options?: Omit<RunOptions, "cancel" | "onEvent"> & { readonly signal?: AbortSignal | undefined }
  ) => Promise<BatchResult>
  /** Text deltas and the final event, as an async iterable; leaving the loop early cancels the call. */
  readonly stream: (prompt: string | GenerateRequest) => AsyncIterable<StreamPart>
  readonly stats: (filter?: Filter) => ExecutionStats
  readonly resetStats: () => void
  /** Graceful shutdown: in-flight calls finish up to the deadline, then everything is released. */
  readonly dispose: () => Promise<void>
}

const toRequest = (prompt: string | GenerateRequest): GenerateRequest =>
  typeof prompt === "string" ? { prompt } : prompt

/**
 * @since 0.1.0
 * @category constructors
 */
export const createOrchestra = <E>(layer: Layer.Layer<Services, E, never>): Orchestra => {
  const runtime = ManagedRuntime.make(layer)

  const run = <A>(effect: Effect.Effect<A, AiError, Services>, signal?: AbortSignal): Promise<A> =>
    runtime.runPromiseExit(effect, signal === undefined ? undefined : { signal }).then((exit) => {
      if (Exit.isSuccess(exit)) return exit.value
      const failure = Cause.failureOption(exit.cause)
      if (failure._tag === "Some") {
        throw isAiError(failure.value) ? new OrchestraError(failure.value) : failure.value
      }
      throw Cause.squash(exit.cause)
    })

  return {
    execute: (prompt, options = {}) =>
      run(
        options.domain === undefined
          ? Effect.flatMap(Executor, (executor) =>
              Effect.map(
                executor.execute(toRequest(prompt), { tags: options.tags }),
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
    executeParallelDomains: (prompt, domains) =>
      run(Effect.flatMap(Router, (router) => router.executeParallelDomains(toRequest(prompt), domains, "all"))),
    hedge: (prompt, domains, options) =>
      run(Effect.flatMap(Router, (router) => router.hedge(toRequest(prompt), domains, options))),
    batch: (items, options = {}) => {
      const { signal, ...rest } = options
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
    stream: (prompt) => ({
      async *[Symbol.asyncIterator]() {
        const rt = await runtime.runtime()
        const stream = Stream.unwrap(Effect.map(Executor, (executor) => executor.stream(toRequest(prompt)))).pipe(
          Stream.mapError((error) => new OrchestraError(error))
        )
        yield* Stream.toAsyncIterableRuntime(stream, rt)
      }
    }),
    stats: (filter) => runtime.runSync(Effect.flatMap(Stats, (stats) => stats.snapshot(filter))),
    resetStats: () => runtime.runSync(Effect.flatMap(Stats, (stats) => stats.reset)),
    dispose: () => runtime.dispose()
  }
}
