/**
 * Batches of queries: one outcome per item in input order, a concurrency limit shared by
 * every caller of the same manager, progress as a `Stream` or a plain callback, and
 * cancellation that reports which items never ran.
 *
 * @since 0.1.0
 */
import { Clock, Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Option, Queue, Stream } from "effect"
import type { AiError } from "./AiError.js"
import { Executor } from "./Executor.js"
import * as Limiter from "./internal/limiter.js"
import type { GenerateRequest } from "./Model.js"
import { type Answer, Router } from "./Router.js"
import type { ExecutionStats } from "./Stats.js"

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
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly run: (items: ReadonlyArray<Item>, options?: RunOptions) => Effect.Effect<BatchResult>
  /** Progress events, then the result as the last element. */
  readonly stream: (
    items: ReadonlyArray<Item>,
    options?: Omit<RunOptions, "onEvent">
  ) => Stream.Stream<ProgressEvent | { readonly _tag: "Done"; readonly result: BatchResult }>
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

/**
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}) =>
  Effect.gen(function* () {
    const executor = yield* Executor
    const router = yield* Router
    const limit = Math.max(1, Math.floor(options.maxConcurrent ?? 5))
    const limiter = yield* Limiter.make(limit)
    let batches = 0

    const run = (items: ReadonlyArray<Item>, runOptions: RunOptions = {}): Effect.Effect<BatchResult> =>
      Effect.gen(function* () {
        const id = runOptions.id ?? `batch-${++batches}`
        const tags = { batch: id }
        const total = items.length
        const start = yield* Clock.currentTimeMillis
        const results = new Array<ItemResult | undefined>(total)
        const startedAt = new Array<number | undefined>(total)
        const retries = new Array<number>(total).fill(0)
        let done = 0
        let next = 0
        const emit = (event: ProgressEvent): Effect.Effect<void> => {
          runOptions.onProgress?.(event)
          return runOptions.onEvent === undefined ? Effect.void : runOptions.onEvent(event)
        }
        const elapsed = Effect.map(Clock.currentTimeMillis, (now) => now - start)

        const callOne = (index: number) => {
          const { request, domain } = toRequest(items[index]!)
          const target = domain ?? runOptions.domain
          const onRetry = (info: { readonly attempt: number; readonly delay: Duration.Duration }) =>
            Effect.flatMap(elapsed, (elapsedMs) => {
              retries[index]! += 1
              return emit({
                _tag: "Retried",
                index,
                attempt: info.attempt,
                delayMs: Duration.toMillis(info.delay),
                done,
                total,
                elapsedMs
              })
            })
          if (target === undefined) {
            return Effect.map(
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
          }
          const chain = [target, ...(runOptions.fallback ?? [])]
          return chain.length === 1
            ? router.execute(request, target, { tags, onRetry })
            : router.executeWithFallback(request, chain, { tags, onRetry })
        }

        const runItem = (index: number): Effect.Effect<void> =>
          limiter.withPermit(
            Effect.gen(function* () {
              const t0 = yield* Clock.currentTimeMillis
              startedAt[index] = t0
              yield* emit({ _tag: "Started", index, done, total, elapsedMs: t0 - start })
              const exit = yield* Effect.exit(callOne(index))
              const t1 = yield* Clock.currentTimeMillis
              if (Exit.isSuccess(exit)) {
                results[index] = {
                  index,
                  status: "success",
                  answer: exit.value,
                  ran: true,
                  durationMs: t1 - t0,
                  retries: retries[index]!
                }
                done++
                yield* emit({ _tag: "Succeeded", index, done, total, elapsedMs: t1 - start, durationMs: t1 - t0 })
              } else if (exit.cause._tag === "Fail") {
                const error = exit.cause.error
                const status = statusOf(error)
                results[index] = { index, status, error, ran: true, durationMs: t1 - t0, retries: retries[index]! }
                done++
                yield* emit({ _tag: "Failed", index, status, error, done, total, elapsedMs: t1 - start })
              } else {
                return yield* Effect.failCause(exit.cause)
              }
            })
          ) as Effect.Effect<void>

        const worker: Effect.Effect<void> = Effect.suspend(() => {
          if (next >= total) return Effect.void
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
          const finished = yield* Deferred.make<void>()
          const poolFiber = yield* Effect.fork(Effect.ensuring(pool, Deferred.succeed(finished, undefined)))
          const winner = yield* Effect.raceFirst(
            Effect.as(Deferred.await(finished), "done" as const),
            Effect.as(runOptions.cancel, "cancel" as const)
          )
          if (winner === "cancel") {
            cancelled = true
            yield* Fiber.interrupt(poolFiber)
          } else {
            yield* Fiber.join(poolFiber)
          }
        }

        const end = yield* Clock.currentTimeMillis
        const notRun: Array<number> = []
        const final: Array<ItemResult> = results.map((r, index) => {
          if (r !== undefined) return r
          const ran = startedAt[index] !== undefined
          if (!ran) notRun.push(index)
          return {
            index,
            status: "cancelled",
            ran,
            durationMs: ran ? end - startedAt[index]! : 0,
            retries: retries[index]!
          }
        })
        if (cancelled) yield* emit({ _tag: "Cancelled", notRun, done, total, elapsedMs: end - start })
        const stats = yield* executor.stats({ tags })
        return { id, results: final, elapsedMs: end - start, cancelled, notRun, stats }
      })

    const stream = (items: ReadonlyArray<Item>, runOptions: Omit<RunOptions, "onEvent"> = {}) =>
      Stream.unwrapScoped(
        Effect.gen(function* () {
          const queue = yield* Queue.unbounded<
            ProgressEvent | { readonly _tag: "Done"; readonly result: BatchResult }
          >()
          yield* run(items, { ...runOptions, onEvent: (event) => Queue.offer(queue, event) }).pipe(
            Effect.flatMap((result) => Queue.offer(queue, { _tag: "Done", result })),
            Effect.forkScoped
          )
          return Stream.fromQueue(queue).pipe(Stream.takeUntil((event) => event._tag === "Done"))
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
