/**
 * A bounded worker pool: `min(concurrency, items)` fibers take items by index, so a batch
 * of 100k items never holds a fiber (or a closure) per waiting item, only the items
 * themselves. One outcome per item, in input order.
 *
 * @internal
 */
import { Effect } from "effect"

/**
 * Runs `f` over every item with at most `concurrency` running at once; `f` must not fail
 * (give each item its outcome as a value).
 *
 * @internal
 */
export const forEachPool = <I, A>(
  items: ReadonlyArray<I>,
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
