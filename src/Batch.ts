/**
 * Batches of queries: one outcome per item in input order, a concurrency limit shared by
 * every caller of the same manager, progress as a `Stream` or a plain callback, and
 * cancellation that reports which items never ran.
 *
 * @since 0.1.0
 */
import { Cause, Clock, Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Mailbox, Option, Stream } from "effect"
import { type AiError, ModelError, shouldFallback } from "./AiError.js"
import { Executor } from "./Executor.js"
import * as Limiter from "./internal/limiter.js"
import * as Metrics from "./Metrics.js"
import type { GenerateRequest } from "./Model.js"
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
  /** Domain of items that name none. Without one, items go to the executor's own provider. */
  readonly domain?: string | undefined
  /** At most this many items of this batch at once (never above the manager's shared limit). */
  readonly concurrency?: number | undefined
  /** Fallback domains tried in order after an item's own domain. */
  readonly fallback?: ReadonlyArray<string> | undefined
  readonly onProgress?: ((event: ProgressEvent) => void) | undefined
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

type Outcome =
  | { readonly _tag: "Answer"; readonly answer: Answer }
  | { readonly _tag: "Error"; readonly error: AiError }
  | { readonly _tag: "Interrupted" }

const outcomeOf = (exit: Exit.Exit<Answer, AiError>): Outcome => {
  if (Exit.isSuccess(exit)) return { _tag: "Answer", answer: exit.value }
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) return { _tag: "Error", error: failure.value }
  if (Cause.isInterruptedOnly(exit.cause)) return { _tag: "Interrupted" }
  return { _tag: "Error", error: defectError(exit.cause) }
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}) =>
  Effect.gen(function* () {
    const executor = yield* Executor
    const router = yield* Router
    const stats = yield* Effect.serviceOption(Stats)
    const limit = Math.max(1, Math.floor(options.maxConcurrent ?? 5))
    const limiter = yield* Limiter.make(limit)
    let batches = 0

    const run = (items: ReadonlyArray<Item>, runOptions: RunOptions = {}): Effect.Effect<BatchResult> =>
      Effect.gen(function* () {
        const id = runOptions.id ?? `batch-${++batches}`
        const tags = { batch: id }
        const total = items.length
        const fallback = runOptions.fallback ?? []
        const start = yield* Clock.currentTimeMillis
        const results: Array<ItemResult | undefined> = Array.from({ length: total }, () => undefined)
        const startedAt: Array<number | undefined> = Array.from({ length: total }, () => undefined)
        const retries = new Array<number>(total).fill(0)
        let done = 0
        let next = 0
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
                return Effect.zipRight(
                  Effect.logWarning("Batch: the onProgress callback threw; later failures are not logged", error),
                  onEvent === undefined ? Effect.void : onEvent(event)
                )
              }
            }
          }
          return onEvent === undefined ? Effect.void : onEvent(event)
        }

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

        const callOne = (index: number, request: GenerateRequest, domain: string | undefined) => {
          const onRetry = (info: { readonly attempt: number; readonly delay: Duration.Duration }) =>
            Effect.flatMap(Clock.currentTimeMillis, (now) => {
              retries[index]! += 1
              return emit({
                _tag: "Retried",
                index,
                attempt: info.attempt,
                delayMs: Duration.toMillis(info.delay),
                done,
                total,
                elapsedMs: now - start
              })
            })
          if (domain === undefined) {
            const direct = Effect.map(
              executor.execute(request, { tags, retry: true, onRetry }),
              (response): Answer => ({
                response,
                domain: "default",
                provider: response.provider,
                attempts: 1,
                fallbackUsed: false,
                source: "provider"
              })
            )
            return fallback.length === 0 ? direct : withFallback(request, direct)
          }
          return fallback.length === 0
            ? router.execute(request, domain, { tags, onRetry })
            : router.executeWithFallback(request, [domain, ...fallback], { tags, onRetry })
        }

        const runItem = (index: number): Effect.Effect<void> =>
          limiter.withPermit(
            Effect.gen(function* () {
              const { request, domain } = toRequest(items[index]!)
              const t0 = yield* Clock.currentTimeMillis
              startedAt[index] = t0
              yield* emit({ _tag: "Started", index, done, total, elapsedMs: t0 - start })
              const outcome = outcomeOf(yield* Effect.exit(callOne(index, request, domain ?? runOptions.domain)))
              const t1 = yield* Clock.currentTimeMillis
              const durationMs = t1 - t0
              switch (outcome._tag) {
                case "Answer": {
                  done++
                  results[index] = {
                    index,
                    status: "success",
                    answer: outcome.answer,
                    ran: true,
                    durationMs,
                    retries: retries[index]!
                  }
                  return yield* emit({ _tag: "Succeeded", index, done, total, elapsedMs: t1 - start, durationMs })
                }
                case "Error": {
                  done++
                  const status = statusOf(outcome.error)
                  const error = outcome.error
                  results[index] = { index, status, error, ran: true, durationMs, retries: retries[index]! }
                  return yield* emit({ _tag: "Failed", index, status, error, done, total, elapsedMs: t1 - start })
                }
                case "Interrupted":
                  // Interrupted from inside (not by us: then this code would not run). Reported as cancelled.
                  return
              }
            })
          )

        let stopped = false
        const worker: Effect.Effect<void> = Effect.suspend(() => {
          if (stopped || next >= total) return Effect.void
          const index = next++
          return Effect.zipRight(runItem(index), worker)
        })
        const workers = Math.max(0, Math.min(total, Math.floor(runOptions.concurrency ?? limit), limit))
        const pool = Effect.forEach(Array.from({ length: workers }), () => worker, {
          concurrency: "unbounded",
          discard: true
        })

        let cancelled = false
        if (runOptions.cancel === undefined) {
          yield* pool
        } else {
          // The watcher is forked before the pool, so a cancel that has already happened
          // stops the batch before its first item; workers check `stopped` before each item.
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

        const end = yield* Clock.currentTimeMillis
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
        const result: BatchResult = { id, results: final, elapsedMs: end - start, cancelled, notRun, stats: batchStats }
        return result
      }).pipe(Effect.withSpan("Batch.run", { attributes: { "orchestra.batch.items": items.length } }))

    const stream = (items: ReadonlyArray<Item>, runOptions: Omit<RunOptions, "onEvent"> = {}) =>
      Stream.unwrapScoped(
        Effect.gen(function* () {
          const mailbox = yield* Mailbox.make<StreamEvent>()
          yield* run(items, { ...runOptions, onEvent: (event) => Effect.asVoid(mailbox.offer(event)) }).pipe(
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
 * @since 0.1.0
 * @category accessors
 */
export const run = (items: ReadonlyArray<Item>, options?: RunOptions): Effect.Effect<BatchResult, never, Batch> =>
  Effect.flatMap(Batch, (batch) => batch.run(items, options))

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
