/**
 * A bounded worker pool: `min(concurrency, items)` fibers take items by index, so a batch
 * of 100k items never holds a fiber (or a closure) per waiting item, only the items
 * themselves. One outcome per item, in input order.
 *
 * @internal
 */
import { Effect, type Exit, Fiber } from "effect"
import type { AiError } from "../AiError.js"
import type { Running, Sink } from "./fused.js"

/**
 * Runs `f` over every item with at most `concurrency` running at once; `f` must not fail
 * (give each item its outcome as a value).
 *
 * @internal
 */
export const forEachPool = <I, A>(
  items: ArrayLike<I>,
  concurrency: number,
  f: (item: I, index: number) => Effect.Effect<A>
): Effect.Effect<Array<A>> =>
  Effect.suspend(() => {
    const out = new Array<A>(items.length)
    let next = 0
    const worker: Effect.Effect<void> = Effect.suspend(() => {
      if (next >= items.length) return Effect.void
      const index = next++
      return Effect.flatMap(f(items[index]!, index), (a) => {
        out[index] = a
        return worker
      })
    })
    const workers = Math.min(concurrency, items.length)
    if (workers <= 1) return Effect.as(worker, out)
    return Effect.as(
      Effect.forEach(Array.from({ length: workers }), () => worker, { concurrency: "unbounded", discard: true }),
      out
    )
  })

/**
 * Permits a started pool takes one per item, beside its own concurrency (a manager's limit
 * shared by several pools): `tryTake` when one is free and nobody waits, else the pool's
 * fiber waits in `take`; each item gives its permit back once, by its end or its cancellation.
 *
 * @internal
 */
export interface Permits {
  readonly tryTake: () => boolean
  readonly take: Effect.Effect<void>
  readonly release: () => void
}

/**
 * What a started pool runs: `total` items, at most `concurrency` at once.
 *
 * @internal
 */
export interface StartedItems {
  readonly total: number
  readonly concurrency: number
  /** Starts item `index`, reporting its exit to `sink` (at once, answering `undefined`, or later, answering its handle). */
  readonly start: (index: number, sink: Sink) => Running | undefined
  /** Item `index` ended with `exit`; called once per item. */
  readonly done: (index: number, exit: Exit.Exit<unknown, AiError>) => void
  readonly permits?: Permits | undefined
}

/**
 * Runs items started from JavaScript (`Engine.start`): no worker fiber at all, only each
 * call's own, so a pool of 10,000 calls in flight holds 10,000 fibers. A call that ends starts
 * its successor at once (as p-limit does); the pool's own fiber starts at most 1,024 before it
 * yields, and waits for permits when there are none free. When interrupted nothing more
 * starts (an item being started then is cancelled as soon as it has started); the calls in
 * flight are cancelled, and give their permits back once they have ended.
 *
 * @internal
 */
export const runStarted = (items: StartedItems): Effect.Effect<void> =>
  Effect.suspend(() => {
    const { total, concurrency, permits } = items
    const running = new Array<Running | undefined>(total)
    const ended = new Uint8Array(total)
    // 1 while an item holds a permit: given back once, by its end or by its cancellation.
    const holding = permits === undefined ? undefined : new Uint8Array(total)
    let next = 0
    let finished = 0
    let inFlight = 0
    let wake: (() => void) | undefined
    let pumping = false
    let blocked = false
    let stopped = false
    const canStart = () => !stopped && inFlight < concurrency && next < total

    const giveBack = (index: number): void => {
      if (holding === undefined || holding[index] !== 1) return
      holding[index] = 0
      permits!.release()
    }

    const sink: Sink = {
      done: (index, exit) => {
        if (ended[index] === 1) return
        ended[index] = 1
        running[index] = undefined
        inFlight--
        finished++
        items.done(index, exit)
        giveBack(index)
        if (pumping || stopped) return
        // A call ended on its own fiber: its successor starts at once, as p-limit's does,
        // without waiting for the pool's fiber to be scheduled.
        if (wake !== undefined) pump(64)
        const w = wake
        if (w !== undefined && (finished === total || canStart())) {
          wake = undefined
          w()
        }
      }
    }

    // Starts the next item (its permit, if any, taken).
    const startNext = (): void => {
      const index = next++
      inFlight++
      if (holding !== undefined) holding[index] = 1
      const handle = items.start(index, sink)
      if (handle === undefined || ended[index] === 1) return
      if (stopped) {
        // Interrupted while this item was starting (from inside its own start): it stops too.
        handle.cancel()
        giveBack(index)
        return
      }
      running[index] = handle
    }

    // Starts items while there is room (and a free permit), at most `budget` of them; a call
    // that ends at once reports inside and makes room for the next without recursion.
    const pump = (budget: number): void => {
      pumping = true
      try {
        while (canStart() && budget-- > 0) {
          if (permits !== undefined && !permits.tryTake()) {
            blocked = true
            return
          }
          startNext()
        }
      } finally {
        pumping = false
      }
    }

    // No permit free: wait for one (in arrival order), then start the next item with it.
    // Uninterruptible once granted, so the permit reaches the item.
    const queued: Effect.Effect<void> =
      permits === undefined
        ? Effect.void
        : Effect.uninterruptibleMask((restore) =>
            Effect.map(restore(permits.take), () => {
              if (!canStart()) {
                permits.release()
                return
              }
              pumping = true
              try {
                startNext()
              } finally {
                pumping = false
              }
            })
          )

    const loop: Effect.Effect<void> = Effect.suspend(() => {
      blocked = false
      pump(1024)
      if (finished === total) return Effect.void
      if (canStart()) return Effect.flatMap(blocked ? queued : Effect.yieldNow, () => loop)
      return Effect.flatMap(
        Effect.callback<void>((resume) => {
          if (canStart() || finished === total) return resume(Effect.void)
          wake = () => resume(Effect.void)
        }),
        () => loop
      )
    })

    return Effect.onInterrupt(loop, () =>
      Effect.suspend(() => {
        stopped = true
        wake = undefined
        const ending: Array<Fiber.Fiber<unknown, unknown>> = []
        const cancelled: Array<number> = []
        for (let index = 0; index < next; index++) {
          const handle = running[index]
          if (handle === undefined) continue
          running[index] = undefined
          cancelled.push(index)
          const fiber = handle.cancel()
          if (fiber !== undefined) ending.push(fiber)
        }
        const giveAllBack = Effect.sync(() => {
          for (const index of cancelled) giveBack(index)
        })
        if (holding === undefined) return ending.length === 0 ? Effect.void : Effect.asVoid(Fiber.awaitAll(ending))
        return ending.length === 0 ? giveAllBack : Effect.andThen(Fiber.awaitAll(ending), giveAllBack)
      })
    )
  })

/**
 * `forEachPool` for calls started from JavaScript ({@link runStarted}), answering each
 * item's exit in input order.
 *
 * @internal
 */
export const forEachStarted = <I>(
  items: ReadonlyArray<I>,
  concurrency: number,
  start: (item: I, sink: Sink, index: number) => Running | undefined
): Effect.Effect<Array<Exit.Exit<unknown, AiError>>> =>
  Effect.suspend(() => {
    const out = new Array<Exit.Exit<unknown, AiError>>(items.length)
    return Effect.as(
      runStarted({
        total: items.length,
        concurrency,
        start: (index, sink) => start(items[index]!, sink, index),
        done: (index, exit) => {
          out[index] = exit
        }
      }),
      out
    )
  })
