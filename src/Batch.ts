/**
 * Batches of queries: one outcome per item in input order, a concurrency limit shared by
 * every caller of the same manager, progress as a `Stream` or a plain callback, and
 * cancellation that reports which items never ran.
 *
 * @since 0.1.0
 */
import { Cause, Context, Deferred, Duration, Effect, Either, Exit, Fiber, Layer, Mailbox, Option, Stream } from "effect"
import { type AiError, ModelError, shouldFallback } from "./AiError.js"
import { type CallManyOptions, type CallSpec, Executor, type RetryInfo } from "./Executor.js"
import * as Limiter from "./internal/limiter.js"
import * as Metrics from "./Metrics.js"
import {
  type GenerateRequest,
  type GenerateResponse,
  type Service as ProviderService,
  validateGenerate
} from "./Model.js"
import { type Answer, Router } from "./Router.js"
import { type ExecutionStats, Stats } from "./Stats.js"

/**
 * A query with its domain, a full request, or a bare prompt (on the batch's domain).
 *
 * @since 0.1.0
 * @category models
 */
export type Item =
  | string
  | { readonly query: string; readonly domain?: string | undefined }
  | { readonly request: GenerateRequest; readonly domain?: string | undefined }

/**
 * @since 0.1.0
 * @category models
 */
export type Status = "success" | "error" | "timeout" | "rejected" | "cancelled"

/**
 * The outcome of one item.
 *
 * @since 0.1.0
 * @category models
 */
export interface ItemResult {
  readonly index: number
  readonly status: Status
  readonly answer?: Answer | undefined
  readonly error?: AiError | undefined
  /** False for items that never started (the batch was cancelled first). */
  readonly ran: boolean
  readonly durationMs: number
  readonly retries: number
}

/**
 * @since 0.1.0
 * @category models
 */
export type ProgressEvent =
  | {
      readonly _tag: "Started"
      readonly index: number
      readonly done: number
      readonly total: number
      readonly elapsedMs: number
    }
  | {
      readonly _tag: "Succeeded"
      readonly index: number
      readonly done: number
      readonly total: number
      readonly elapsedMs: number
      readonly durationMs: number
    }
  | {
      readonly _tag: "Failed"
      readonly index: number
      readonly status: Status
      readonly error: AiError | undefined
      readonly done: number
      readonly total: number
      readonly elapsedMs: number
    }
  | {
      readonly _tag: "Retried"
      readonly index: number
      readonly attempt: number
      readonly delayMs: number
      readonly done: number
      readonly total: number
      readonly elapsedMs: number
    }
  | {
      readonly _tag: "Cancelled"
      readonly notRun: ReadonlyArray<number>
      readonly done: number
      readonly total: number
      readonly elapsedMs: number
    }

/**
 * @since 0.1.0
 * @category models
 */
export interface BatchResult {
  readonly id: string
  /** One per item, in input order. */
  readonly results: ReadonlyArray<ItemResult>
  readonly elapsedMs: number
  readonly cancelled: boolean
  /** Items that never started. */
  readonly notRun: ReadonlyArray<number>
  /** The same figures as everywhere, filtered to this batch. */
  readonly stats: ExecutionStats
}

/**
 * @since 0.1.0
 * @category models
 */
export interface RunOptions {
  /**
   * Domain of items that name none. Items with a domain go through the router (domain
   * policy, breaker, cache, rate limits). When no item has one and there is no `fallback`,
   * the batch runs on the executor's worker pool against its own provider, with the
   * executor's retry policy and without breaker or cache.
   */
  readonly domain?: string | undefined
  /** At most this many items of this batch at once (never above the manager's shared limit). */
  readonly concurrency?: number | undefined
  /** Fallback domains tried in order after an item's own domain. */
  readonly fallback?: ReadonlyArray<string> | undefined
  /** Called synchronously for each event, on the batch's fibers: keep it quick. A throw is logged once and ignored. */
  readonly onProgress?: ((event: ProgressEvent) => void) | undefined
  /** The same events as an Effect (the batch waits for it). */
  readonly onEvent?: ((event: ProgressEvent) => Effect.Effect<void>) | undefined
  /** Completes when the batch should stop: in-flight calls are interrupted, the rest never start. */
  readonly cancel?: Effect.Effect<void> | undefined
  /** Batch id (metric tag); generated when absent. */
  readonly id?: string | undefined
}

/**
 * What `stream` emits: the progress events, then the result.
 *
 * @since 0.1.0
 * @category models
 */
export type StreamEvent = ProgressEvent | { readonly _tag: "Done"; readonly result: BatchResult }

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly run: (items: ReadonlyArray<Item>, options?: RunOptions) => Effect.Effect<BatchResult>
  /** Progress events, then the result as the last element. */
  readonly stream: (items: ReadonlyArray<Item>, options?: Omit<RunOptions, "onEvent">) => Stream.Stream<StreamEvent>
  /** The shared concurrency limit. */
  readonly limit: number
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Batch extends Context.Tag("effect-orchestra/Batch")<Batch, Service>() {}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Calls running at once across every batch of this manager. Default 5. */
  readonly maxConcurrent?: number | undefined
}

const statusOf = (error: AiError): Status => {
  switch (error._tag) {
    case "TimeoutError":
      return "timeout"
    case "ShuttingDownError":
    case "CircuitOpenError":
      return "rejected"
    default:
      return "error"
  }
}

const toRequest = (item: Item): { readonly request: GenerateRequest; readonly domain: string | undefined } =>
  typeof item === "string"
    ? { request: { prompt: item }, domain: undefined }
    : "query" in item
      ? { request: { prompt: item.query }, domain: item.domain }
      : { request: item.request, domain: item.domain }

// A defect in one item (a provider bug) must not fail the others: it becomes that item's error.
const defectError = (cause: Cause.Cause<unknown>): ModelError =>
  new ModelError({
    reason: "Unknown",
    message: `unexpected defect: ${Cause.pretty(cause).split("\n")[0] ?? "unknown"}`,
    cause: Cause.squash(cause)
  })

// A provider that interrupted itself (not interrupted by us: then nothing would observe it).
const selfInterrupted = (): ModelError =>
  new ModelError({ reason: "Unknown", message: "the provider call interrupted itself" })

const toFailure = (cause: Cause.Cause<AiError>): Effect.Effect<never, AiError> => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) return Effect.fail(failure.value)
  return Effect.fail(Cause.isInterruptedOnly(cause) ? selfInterrupted() : defectError(cause))
}

const direct = (response: GenerateResponse): Answer => ({
  response,
  domain: "default",
  provider: response.provider,
  attempts: 1,
  fallbackUsed: false,
  source: "provider"
})

const isDirect = (items: ReadonlyArray<Item>, options: RunOptions): boolean =>
  options.domain === undefined &&
  (options.fallback === undefined || options.fallback.length === 0) &&
  items.every((item) => typeof item === "string" || item.domain === undefined)

/**
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}) =>
  Effect.gen(function* () {
    const executor = yield* Executor
    const router = yield* Router
    const stats = yield* Effect.serviceOption(Stats)
    const clock = yield* Effect.clock
    const limit = Math.max(1, Math.floor(options.maxConcurrent ?? 5))
    const limiter = yield* Limiter.make(limit)
    let batches = 0

    const run = (items: ReadonlyArray<Item>, runOptions: RunOptions = {}): Effect.Effect<BatchResult> =>
      Effect.suspend(() => {
        const id = runOptions.id ?? `batch-${++batches}`
        const tags = { batch: id }
        const total = items.length
        const fallback = runOptions.fallback ?? []
        const start = clock.unsafeCurrentTimeMillis()
        const results: Array<ItemResult | undefined> = Array.from({ length: total }, () => undefined)
        const startedAt: Array<number | undefined> = Array.from({ length: total }, () => undefined)
        const retries = new Array<number>(total).fill(0)
        let done = 0
        let stopped = false
        let callbackFailed = false
        const onProgress = runOptions.onProgress
        const onEvent = runOptions.onEvent
        // A throwing callback is the caller's bug, not the batch's: it is logged once and ignored.
        const emit = (event: ProgressEvent): Effect.Effect<void> => {
          if (onProgress !== undefined) {
            try {
              onProgress(event)
            } catch (error) {
              if (!callbackFailed) {
                callbackFailed = true
                const warn = Effect.logWarning(
                  "Batch: the onProgress callback threw; later throws are not logged",
                  error
                )
                return onEvent === undefined ? warn : Effect.zipRight(warn, onEvent(event))
              }
            }
          }
          return onEvent === undefined ? Effect.void : onEvent(event)
        }
        const silent = onProgress === undefined && onEvent === undefined

        const started = (index: number): Effect.Effect<void> => {
          const now = clock.unsafeCurrentTimeMillis()
          startedAt[index] = now
          return silent ? Effect.void : emit({ _tag: "Started", index, done, total, elapsedMs: now - start })
        }

        const finished = (index: number, outcome: Either.Either<Answer, AiError>): Effect.Effect<void> => {
          const now = clock.unsafeCurrentTimeMillis()
          let began = startedAt[index]
          // An item refused before its call began (an invalid request) still reports a start.
          const before = began === undefined ? started(index) : Effect.void
          began ??= now
          const durationMs = now - began
          done++
          let event: ProgressEvent | undefined
          if (outcome._tag === "Right") {
            results[index] = {
              index,
              status: "success",
              answer: outcome.right,
              ran: true,
              durationMs,
              retries: retries[index]!
            }
            if (!silent) event = { _tag: "Succeeded", index, done, total, elapsedMs: now - start, durationMs }
          } else {
            const error = outcome.left
            const status = statusOf(error)
            results[index] = { index, status, error, ran: true, durationMs, retries: retries[index]! }
            if (!silent) event = { _tag: "Failed", index, status, error, done, total, elapsedMs: now - start }
          }
          return event === undefined ? before : Effect.zipRight(before, emit(event))
        }

        const onRetryFor =
          (index: number) =>
          (info: RetryInfo): Effect.Effect<void> => {
            retries[index]! += 1
            if (silent) return Effect.void
            return emit({
              _tag: "Retried",
              index,
              attempt: info.attempt,
              delayMs: Duration.toMillis(info.delay),
              done,
              total,
              elapsedMs: clock.unsafeCurrentTimeMillis() - start
            })
          }

        const workers = Math.max(0, Math.min(total, Math.floor(runOptions.concurrency ?? limit), limit))
        const pool = isDirect(items, runOptions) ? directPool() : routedPool()

        // Items that name no domain go straight to the executor's own provider: the executor's
        // worker pool runs them (no fiber per call), holding a permit of the shared limiter each.
        function directPool(): Effect.Effect<void> {
          const rejectedSpec = (error: ModelError): AiError =>
            error.provider === undefined
              ? new ModelError({
                  reason: error.reason,
                  message: error.message,
                  field: error.field,
                  provider: executor.provider.name
                })
              : error
          const guarded =
            (request: GenerateRequest) =>
            (provider: ProviderService): Effect.Effect<GenerateResponse, AiError> =>
              Effect.catchAllCause(provider.generate(request), toFailure)
          const manyOptions: CallManyOptions<GenerateResponse> = {
            concurrency: workers,
            limiter,
            tags,
            retry: true,
            onStart: started,
            onOutcome: (index, outcome) => finished(index, Either.map(outcome, direct))
          }
          return Effect.asVoid(
            executor.callMany(items, manyOptions, (item, index) => {
              // Cancelled before this item was admitted: park until the pool is interrupted.
              if (stopped) return Effect.never
              return Effect.mapBoth(validateGenerate(toRequest(item).request), {
                onFailure: rejectedSpec,
                onSuccess: (valid): CallSpec<GenerateResponse> => ({
                  run: guarded(valid),
                  options: { tags, retry: true, onRetry: onRetryFor(index) }
                })
              })
            })
          )
        }

        // Items with a domain go through the router (domain policy, breakers, cache, rate
        // limits, fallbacks), one call per item under a permit of the shared limiter.
        function routedPool(): Effect.Effect<void> {
          const withFallback = (
            request: GenerateRequest,
            first: Effect.Effect<Answer, AiError>
          ): Effect.Effect<Answer, AiError> =>
            Effect.catchIf(first, shouldFallback, () =>
              Effect.map(router.executeWithFallback(request, fallback, { tags }), (answer): Answer => {
                if (Option.isSome(stats) && answer.attempts === 1) {
                  const labels = stats.value.labels({ provider: answer.provider, domain: answer.domain, tags })
                  Metrics.fallbacks.unsafeUpdate(1, labels.exact)
                }
                return { ...answer, attempts: answer.attempts + 1, fallbackUsed: true }
              })
            )

          const callOne = (index: number): Effect.Effect<Answer, AiError> => {
            const { request, domain: own } = toRequest(items[index]!)
            const domain = own ?? runOptions.domain
            const onRetry = onRetryFor(index)
            if (domain === undefined) {
              const first = Effect.map(executor.execute(request, { tags, retry: true, onRetry }), direct)
              return fallback.length === 0 ? first : withFallback(request, first)
            }
            return fallback.length === 0
              ? router.execute(request, domain, { tags, onRetry })
              : router.executeWithFallback(request, [domain, ...fallback], { tags, onRetry })
          }

          const runItem = (index: number): Effect.Effect<void> =>
            limiter.withPermit(
              Effect.zipRight(
                started(index),
                Effect.matchCauseEffect(callOne(index), {
                  onSuccess: (answer) => finished(index, Either.right(answer)),
                  onFailure: (cause) => {
                    // Our own interruptions never get here: an interruption is the call's own doing.
                    const failure = Cause.failureOption(cause)
                    if (Option.isSome(failure)) return finished(index, Either.left(failure.value))
                    return finished(
                      index,
                      Either.left(Cause.isInterruptedOnly(cause) ? selfInterrupted() : defectError(cause))
                    )
                  }
                })
              )
            )

          let next = 0
          const worker: Effect.Effect<void> = Effect.suspend(() => {
            if (stopped || next >= total) return Effect.void
            return Effect.zipRight(runItem(next++), worker)
          })
          return Effect.forEach(Array.from({ length: workers }), () => worker, {
            concurrency: "unbounded",
            discard: true
          })
        }

        return Effect.gen(function* () {
          let cancelled = false
          if (runOptions.cancel === undefined) {
            yield* pool
          } else {
            // The watcher is forked before the pool, so a cancel that has already happened
            // stops the batch before its first item; the pools check `stopped` before each item.
            const outcome = yield* Deferred.make<"done" | "cancel">()
            const watcher = yield* Effect.fork(
              Effect.zipRight(
                runOptions.cancel,
                Effect.suspend(() => {
                  stopped = true
                  return Deferred.succeed(outcome, "cancel")
                })
              )
            )
            const poolFiber = yield* Effect.fork(Effect.zipRight(pool, Deferred.succeed(outcome, "done")))
            if ((yield* Deferred.await(outcome)) === "cancel") {
              cancelled = true
              yield* Fiber.interrupt(poolFiber)
            } else {
              yield* Fiber.join(poolFiber)
            }
            yield* Fiber.interrupt(watcher)
          }

          const end = clock.unsafeCurrentTimeMillis()
          const notRun: Array<number> = []
          const final: Array<ItemResult> = []
          for (let index = 0; index < total; index++) {
            const result = results[index]
            if (result !== undefined) {
              final.push(result)
              continue
            }
            const began = startedAt[index]
            if (began === undefined) notRun.push(index)
            final.push({
              index,
              status: "cancelled",
              ran: began !== undefined,
              durationMs: began === undefined ? 0 : end - began,
              retries: retries[index]!
            })
          }
          if (cancelled) yield* emit({ _tag: "Cancelled", notRun, done, total, elapsedMs: end - start })
          const batchStats = yield* executor.stats({ tags })
          const result: BatchResult = {
            id,
            results: final,
            elapsedMs: end - start,
            cancelled,
            notRun,
            stats: batchStats
          }
          return result
        })
      }).pipe(Effect.withSpan("Batch.run", { attributes: { "orchestra.batch.items": items.length } }))

    const stream = (items: ReadonlyArray<Item>, runOptions: Omit<RunOptions, "onEvent"> = {}) =>
      Stream.unwrapScoped(
        Effect.gen(function* () {
          const mailbox = yield* Mailbox.make<StreamEvent>()
          const user = runOptions.onProgress
          // A synchronous offer per event (the mailbox is unbounded): no Effect per event.
          const onProgress = (event: ProgressEvent): void => {
            mailbox.unsafeOffer(event)
            user?.(event)
          }
          yield* run(items, { ...runOptions, onProgress }).pipe(
            Effect.flatMap((result) => mailbox.offer({ _tag: "Done", result })),
            Effect.onExit((exit) => (Exit.isSuccess(exit) ? mailbox.end : mailbox.failCause(exit.cause))),
            Effect.forkScoped
          )
          return Mailbox.toStream(mailbox)
        })
      )

    return { run, stream, limit } satisfies Service
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Batch, never, Executor | Router> =>
  Layer.effect(Batch, make(options))

/**
 * Runs a batch on the manager's `Batch` service.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Batch from "effect-orchestra/Batch"
 *
 * const program = Effect.gen(function* () {
 *   const result = yield* Batch.run(["Where is my parcel?", { query: "Explain VAT", domain: "finance" }], {
 *     domain: "support",
 *     onProgress: (event) => console.log(event._tag, `${event.done}/${event.total}`)
 *   })
 *   return result.results.map((r) => r.status) // e.g. ["success", "timeout"]
 * })
 * ```
 *
 * @since 0.1.0
 * @category accessors
 */
export const run = (items: ReadonlyArray<Item>, options?: RunOptions): Effect.Effect<BatchResult, never, Batch> =>
  Effect.flatMap(Batch, (batch) => batch.run(items, options))

/**
 * Progress events of a batch as a `Stream`, then its result (`_tag: "Done"`). Leaving the
 * stream early interrupts the batch.
 *
 * @since 0.1.0
 * @category accessors
 */
export const stream = (
  items: ReadonlyArray<Item>,
  options?: Omit<RunOptions, "onEvent">
): Stream.Stream<StreamEvent, never, Batch> => Stream.unwrap(Effect.map(Batch, (batch) => batch.stream(items, options)))

/**
 * @since 0.1.0
 * @category utils
 */
export const successes = (result: BatchResult): ReadonlyArray<Answer> =>
  result.results.flatMap((r) => (r.answer === undefined ? [] : [r.answer]))

/**
 * @since 0.1.0
 * @category utils
 */
export const firstError = (result: BatchResult): Option.Option<AiError> =>
  Option.fromNullable(result.results.find((r) => r.error !== undefined)?.error)
