/**
 * A data loader: items submitted by concurrent callers run as one call; each caller gets
 * back exactly the results of its own items. While a batch runs, new callers queue up and
 * form the next batch, so batches grow with the load without any timer. A batch takes the
 * callers that are ready when it starts (the worker yields while each yield brings more),
 * then, with a `window`, waits up to that long for more unless the batch is full.
 *
 * Why not `Effect.request` + `RequestResolver`: a resolver runs a batch as soon as its
 * delay ends, even while the previous batch still holds the model, so under load batches
 * stay as small as the delay and queue behind each other on the instance; here the next
 * batch forms while the model is busy. A caller costs one `Effect.callback` and an array
 * push; the worker, one wake-up per batch.
 *
 * @internal
 */
import { Duration, Effect, Exit, Fiber, Latch, type Scope } from "effect"

interface Job<I, A, E> {
  readonly items: ReadonlyArray<I>
  readonly resume: (effect: Effect.Effect<ReadonlyArray<A>, E>) => void
  /** Set when the caller left: the job is skipped if it has not run yet. */
  cancelled: boolean
}

export interface Batcher<I, A, E> {
  /** Results for `items`, in order. Items beyond `maxBatchSize` are split over several batches. */
  readonly submit: (items: ReadonlyArray<I>) => Effect.Effect<ReadonlyArray<A>, E>
  /** Stops the batcher (interrupting the batch that runs) and fails every waiting caller with `error`. */
  readonly abort: (error: E) => Effect.Effect<void>
}

/** How many times a starting batch yields to let callers that are ready join it. */
const MAX_GATHER_YIELDS = 16

export const makeBatcher = Effect.fnUntraced(function* <I, A, E>(options: {
  readonly maxBatchSize: number
  readonly window: Duration.Duration
  /** Runs one batch; must return one result per item, in order. */
  readonly run: (items: ReadonlyArray<I>) => Effect.Effect<ReadonlyArray<A>, E>
}): Effect.fn.Return<Batcher<I, A, E>, never, Scope.Scope> {
  const max = options.maxBatchSize
  const windowed = Duration.isGreaterThan(options.window, Duration.zero)
  let queue: Array<Job<I, A, E>> = []
  // Items of the queued jobs (cancelled ones included until the worker drops them).
  let queuedItems = 0
  let running: ReadonlyArray<Job<I, A, E>> = []
  let aborted: { readonly error: E } | undefined
  const ready = Latch.makeUnsafe(false)
  const full = Latch.makeUnsafe(false)

  const take = (): Array<Job<I, A, E>> => {
    const batch: Array<Job<I, A, E>> = []
    let count = 0
    let i = 0
    for (; i < queue.length; i++) {
      const job = queue[i]!
      if (job.cancelled) {
        queuedItems -= job.items.length
        continue
      }
      if (count + job.items.length > max) break
      batch.push(job)
      count += job.items.length
      queuedItems -= job.items.length
    }
    queue = i === queue.length ? [] : queue.slice(i)
    if (queue.length === 0) ready.closeUnsafe()
    if (queuedItems < max) full.closeUnsafe()
    return batch
  }

  const answer = (batch: ReadonlyArray<Job<I, A, E>>, exit: Exit.Exit<ReadonlyArray<A>, E>): void => {
    let offset = 0
    for (const job of batch) {
      const start = offset
      offset += job.items.length
      job.resume(Exit.isSuccess(exit) ? Effect.succeed(exit.value.slice(start, offset)) : exit)
    }
  }

  const worker = Effect.gen(function* () {
    while (true) {
      yield* ready.await
      // Let callers that are ready right now join: yield while each yield brings more items.
      let seen = queuedItems
      for (let i = 0; i < MAX_GATHER_YIELDS && seen < max; i++) {
        yield* Effect.yieldNow
        if (queuedItems === seen) break
        seen = queuedItems
      }
      if (windowed && queuedItems < max) yield* Effect.timeoutOption(full.await, options.window)
      const batch = take()
      if (batch.length === 0) continue
      running = batch
      const exit = yield* Effect.exit(options.run(batch.flatMap((job) => job.items)))
      running = []
      answer(batch, exit)
    }
  })
  const workerFiber = yield* Effect.forkScoped(worker)

  const enqueue = (items: ReadonlyArray<I>): Effect.Effect<ReadonlyArray<A>, E> =>
    Effect.callback<ReadonlyArray<A>, E>((resume) => {
      if (aborted !== undefined) return resume(Effect.fail(aborted.error))
      const job: Job<I, A, E> = { items, resume, cancelled: false }
      queue.push(job)
      queuedItems += items.length
      ready.openUnsafe()
      if (queuedItems >= max) full.openUnsafe()
      return Effect.sync(() => {
        job.cancelled = true
      })
    })

  const submit = (items: ReadonlyArray<I>): Effect.Effect<ReadonlyArray<A>, E> => {
    if (items.length <= max) return enqueue(items)
    const chunks: Array<ReadonlyArray<I>> = []
    for (let i = 0; i < items.length; i += max) chunks.push(items.slice(i, i + max))
    return Effect.map(Effect.forEach(chunks, enqueue, { concurrency: "unbounded" }), (results) => results.flat())
  }

  const abort = (error: E): Effect.Effect<void> =>
    Effect.suspend(() => {
      aborted = { error }
      return Fiber.interrupt(workerFiber)
    }).pipe(
      Effect.andThen(
        Effect.sync(() => {
          const waiting = [...running, ...queue]
          running = []
          queue = []
          queuedItems = 0
          for (const job of waiting) if (!job.cancelled) job.resume(Effect.fail(error))
        })
      )
    )

  return { submit, abort }
})
