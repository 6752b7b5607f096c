/**
 * Batches of queries: one outcome per item in input order whatever happens (bad items,
 * provider defects, cancellation, shutdown), a concurrency limit shared by every batch of
 * the same manager, progress as a callback, an Effect or a `Stream`, cancellation that
 * reports which items never ran, and the batch's own stats.
 *
 * Every item runs through the one pipeline. An item with a domain (its own or the batch's)
 * gets the plan `Router.execute` builds for that domain: its provider, deadlines and retry
 * policy, the provider's shared breaker, rate limit and cache, and its fallback chain (or
 * the batch's `fallback`). An item without one runs on the executor's own provider with
 * the executor's retry policy (then the batch's `fallback` domains, if any).
 *
 * Concurrency: the manager's `maxConcurrent` permits are shared by every batch, handed over
 * in arrival order (an item holds a permit while it runs); a batch has at most
 * `min(concurrency, maxConcurrent)` items running. A batch without `onEvent` (no callback,
 * or only the synchronous `onProgress`) starts its items from JavaScript (one fiber per
 * call in flight, as `Executor.executeMany`); one with `onEvent` runs worker fibers that
 * take items by index, so that its events are Effects run in order; a batch of one item without
 * callbacks or `cancel` runs its call under a permit on its own fiber. Either way a batch of
 * 100k items never parks 100k fibers.
 *
 * Errors: an item's failure is that item's outcome (a bad item gets its own
 * `InvalidRequest`, a provider defect becomes a `ModelError` with reason `Unknown`). The
 * run itself fails only when the batch as a whole is invalid: `items` is not an array (or
 * is longer than the manager's `maxItems`), or an option is wrong (`concurrency: 0` or
 * `NaN`, an unknown `domain` or `fallback` domain, a `cancel` that is not an Effect): an
 * `InvalidRequest` naming the field, before any item runs.
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Option, Queue, Result, Stream } from "effect"
import { type AiError, ModelError } from "./AiError.js"
import { Executor } from "./Executor.js"
import * as Input from "./Input.js"
import type { GenerateRequest } from "./Model.js"
import { type Answer, Router } from "./Router.js"
import type { ExecutionStats } from "./Stats.js"
import { Gate } from "./batch/gate.js"
import { defaultMaxItems } from "./batch/limits.js"
import { Outbox } from "./batch/outbox.js"
import { type Room, run as runBatch } from "./batch/runner.js"

/**
 * A bare prompt (on the batch's domain), a query with its domain, or a full request. An
 * item that is none of these (`null`, a number, `{ query: 5 }`, an unknown key), or whose
 * request is refused or domain unknown, gets its own `InvalidRequest` naming it (`items[3]`,
 * `items[3].query`, `items[3].request.prompt`, `items[3].domain`, an array of its request
 * longer than 1,000,000: `items[3].request.messages`); the others run. Answers of items that
 * run without any domain name the domain `"none"`.
 *
 * @since 0.1.0
 * @category models
 */
export type Item =
  | string
  | { readonly query: string; readonly domain?: string | undefined }
  | { readonly request: GenerateRequest; readonly domain?: string | undefined }

/**
 * `timeout`: a deadline fired. `rejected`: refused without an answer by an open breaker or
 * by shutdown. `error`: any other failure (an exhausted fallback chain takes the status of
 * its last step). `cancelled`: the batch was cancelled before the item finished (`ran`
 * says whether it had started).
 *
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
  /**
   * False for items whose call never reached the executor, so no provider: the batch was cancelled before
   * they started (`notRun`), or their turn came once the manager was closing (status `rejected`, a
   * `ShuttingDownError`; their `Started` event may be what closed it). An item refused for its own sake (its
   * request, its domain, an open breaker) ran.
   */
  readonly ran: boolean
  /**
   * From the start of its call (a permit of the shared limit held) to its outcome, on the monotonic clock
   * (as every time of a batch: a wall clock stepped back or on by NTP does not change it).
   */
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
      readonly durationMs: number
    }
  | {
      readonly _tag: "Retried"
      readonly index: number
      /** The attempt that failed (1 for the first). */
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
  /**
   * Computed from this batch's own outcomes (totals, reasons, item latencies, waits for
   * the shared limit, retries, fallbacks, its concurrency peak); `serviceTime` and
   * `timeToFirstToken` are zeros here (see `Stats` per provider). `timeouts` counts the items
   * of status `timeout` (an exhausted fallback chain whose last step timed out included).
   */
  readonly stats: ExecutionStats
}

/**
 * @since 0.1.0
 * @category models
 */
export interface RunOptions {
  /** Domain of the items that name none. */
  readonly domain?: string | undefined
  /** At most this many items of this batch at once (a positive integer; never above the manager's shared limit). */
  readonly concurrency?: number | undefined
  /**
   * Domains tried in order after an item's own domain (or after the executor's provider, for items without one),
   * each once however often listed; at most 1,000.
   */
  readonly fallback?: ReadonlyArray<string> | undefined
  /**
   * Called synchronously for each event, on the batch's fibers: keep it quick. A throw (or an async
   * callback's rejection) is logged once and ignored.
   */
  readonly onProgress?: ((event: ProgressEvent) => void) | undefined
  /**
   * The same events as an Effect; the batch waits for it. A failure is logged once and ignored. An item's
   * permit of the shared limit is given back before its outcome's event: a slow one holds up this batch only.
   */
  readonly onEvent?: ((event: ProgressEvent) => Effect.Effect<void>) | undefined
  /**
   * Completes when the batch should stop: running calls are interrupted, the rest never start
   * (completed from a progress callback, no item starts after that callback). A cancel that
   * fails (or dies) never completes: the batch runs on, and the failure is logged as a warning.
   * Still pending when the items are done, it is interrupted, not waited for (an uninterruptible one included).
   */
  readonly cancel?: Effect.Effect<void> | undefined
  /** Batch id (in the span and the result): 1 to 1,000 characters, not only spaces; generated when absent. */
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
 * How many events `stream` keeps for a consumer slower than its batch when `bufferSize` is not given.
 *
 * @since 0.3.0
 * @category constants
 */
export const defaultBufferSize = 1_024

/**
 * The options of `stream`: those of `run` but `onEvent`, and the size of its buffer.
 *
 * @since 0.3.0
 * @category models
 */
export interface StreamOptions extends Omit<RunOptions, "onEvent"> {
  /**
   * The most events waiting for the consumer before the batch holds back (a positive integer; default
   * {@link defaultBufferSize}). While the buffer is full the batch starts no item; the items already running
   * go on, and their events (a few each) wait beyond it.
   *
   * @since 0.3.0
   */
  readonly bufferSize?: number | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * One outcome per item, in input order. Fails only when the batch as a whole is invalid
   * (`items` not an array or longer than `maxItems`, or a wrong option): an `InvalidRequest` naming the field.
   * Interrupted (rather than stopped with `cancel`), the run ends without a result: its running calls are
   * interrupted, and the outcomes of the items already done are not returned (`cancel` keeps them).
   */
  readonly run: (items: ReadonlyArray<Item>, options?: RunOptions) => Effect.Effect<BatchResult, ModelError>
  /**
   * Progress events, then the result as the last element. Leaving the stream early
   * interrupts the batch. Backpressured: at most `bufferSize` events (default 1,024) wait for a
   * slower consumer; while they do the batch starts no item, and the items already running go on
   * (their events, about two each plus one per retry, wait beyond the buffer). `cancel` and
   * interrupting the stream still end a batch that is held back, and so does closing the manager:
   * its items not started are refused at once (`ran: false`), their events waiting for the consumer.
   */
  readonly stream: (items: ReadonlyArray<Item>, options?: StreamOptions) => Stream.Stream<StreamEvent, ModelError>
  /** The shared concurrency limit (`maxConcurrent`). */
  readonly limit: number
}

/**
 * @since 0.1.0
 * @category services
 */
export class Batch extends Context.Service<Batch, Service>()("effect-orchestra/Batch") {}

/**
 * The most items one batch takes when the manager's `maxItems` is not given.
 *
 * @since 0.3.0
 * @category constants
 */
export { defaultMaxItems } from "./batch/limits.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Items running at once across every batch of this manager (a positive integer). Default 5. */
  readonly maxConcurrent?: number | undefined
  /**
   * The most items one batch takes (a positive integer). Default 1,000,000. A longer batch (a
   * sparse `new Array(2 ** 32 - 1)` included) fails its run with an `InvalidRequest` naming
   * `items`, before anything is allocated for its items.
   *
   * @since 0.3.0
   */
  readonly maxItems?: number | undefined
}

const optionKeys: ReadonlySet<string> = new Set(["maxConcurrent", "maxItems"])

/**
 * The stream's `bufferSize`, or its `InvalidRequest`. Options that cannot be read are left to the run's own check.
 */
const bufferSizeOf = (options: unknown): number | ModelError => {
  if (options === null || typeof options !== "object") return defaultBufferSize
  let given: unknown
  try {
    given = (options as { readonly bufferSize?: unknown }).bufferSize
  } catch {
    return defaultBufferSize
  }
  const size = Input.positiveInt("bufferSize", Input.orDefault(given, defaultBufferSize))
  return Result.isFailure(size) ? Input.toInvalidRequest(size.failure) : size.success
}

/**
 * Builds the batch service over the executor and router in context. A `maxConcurrent` or
 * `maxItems` that is not a positive integer fails with an `OptionError` naming it. Scoped: once
 * its scope closes, an item whose turn comes is refused before its call (`ran: false`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (options: Options = {}) {
  const unknown = Input.unknownKey(options, optionKeys)
  if (unknown !== undefined) return yield* Effect.fail(Input.toOptionError(unknown))
  const limit = yield* Input.orOptionError(
    Input.positiveInt("maxConcurrent", Input.orDefault(options.maxConcurrent, 5))
  )
  const maxItems = yield* Input.orOptionError(
    Input.positiveInt("maxItems", Input.orDefault(options.maxItems, defaultMaxItems))
  )
  const executor = yield* Executor
  const router = yield* Router
  const gate = new Gate(limit)
  let batches = 0
  // Set when the manager closes, before its executor is (this service is built on it): an item whose turn comes
  // then is refused before its call, so that its result can say it did not run.
  let closing = false
  // The outboxes of the streams running: a closing manager no longer holds their batches back for their consumers.
  const outboxes = new Set<Outbox<StreamEvent>>()
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      closing = true
      for (const outbox of outboxes) outbox.release()
    })
  )
  const deps = {
    executor,
    router,
    gate,
    limit,
    maxItems,
    nextId: () => `batch-${++batches}`,
    routes: new Map(),
    closing: () => closing
  }

  const runTapped = Effect.fn("Batch.run")(function* (
    items: ReadonlyArray<Item>,
    runOptions: RunOptions | undefined,
    tap: ((event: ProgressEvent) => void) | undefined,
    room: Room | undefined
  ) {
    return yield* runBatch(deps, items, runOptions, tap, room)
  })
  const run = (items: ReadonlyArray<Item>, runOptions?: RunOptions) =>
    runTapped(items, runOptions, undefined, undefined)

  // The options go to the run as they are, checked as `run` checks them (`onProgress: 5` is
  // refused, not called); the stream's own tap sees each event before them.
  const stream = (items: ReadonlyArray<Item>, runOptions?: StreamOptions) => {
    const size = bufferSizeOf(runOptions)
    if (size instanceof ModelError) return Stream.fail(size)
    return Stream.callback<StreamEvent, ModelError>(
      (queue) =>
        Effect.gen(function* () {
          const outbox = new Outbox<StreamEvent>(queue)
          yield* Effect.forkScoped(outbox.drain)
          // Registered inside the region that removes it: an interruption in between would leave it in the set.
          const result = yield* Effect.suspend(() => {
            if (closing) outbox.release()
            outboxes.add(outbox)
            return runTapped(items, runOptions, (event) => outbox.offer(event), outbox)
          }).pipe(Effect.ensuring(Effect.sync(() => outboxes.delete(outbox))))
          outbox.offer({ _tag: "Done", result })
          yield* outbox.awaitEmpty
          yield* Queue.end(queue)
        }),
      { bufferSize: size, strategy: "suspend" }
    )
  }

  return { run, stream, limit } satisfies Service
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Batch, Input.OptionError, Executor | Router> =>
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
export const run = (items: ReadonlyArray<Item>, options?: RunOptions): Effect.Effect<BatchResult, ModelError, Batch> =>
  Effect.flatMap(Batch, (batch) => batch.run(items, options))

/**
 * Progress events of a batch as a `Stream`, then its result (`_tag: "Done"`). Leaving the
 * stream early interrupts the batch. A consumer slower than the batch holds it back: once
 * `bufferSize` events wait for it, no item starts until it takes some (see `Service.stream`).
 *
 * @since 0.1.0
 * @category accessors
 */
export const stream = (
  items: ReadonlyArray<Item>,
  options?: StreamOptions
): Stream.Stream<StreamEvent, ModelError, Batch> =>
  Stream.unwrap(Effect.map(Batch, (batch) => batch.stream(items, options)))

/**
 * The answers of the items that succeeded, in input order.
 *
 * @since 0.1.0
 * @category utils
 */
export const successes = (result: BatchResult): ReadonlyArray<Answer> =>
  result.results.flatMap((r) => (r.answer === undefined ? [] : [r.answer]))

/**
 * The error of the first item that failed, in input order.
 *
 * @since 0.1.0
 * @category utils
 */
export const firstError = (result: BatchResult): Option.Option<AiError> =>
  Option.fromNullishOr(result.results.find((r) => r.error !== undefined)?.error)
