/**
 * A bounded worker pool over an array: at most `concurrency` fibers, each pulling the next
 * index, results written in input order. `Effect.forEach` with `concurrency` forks a fiber
 * per element and keeps more state per fiber. The executor's own pool (`callMany` in
 * `calls.ts`) adds deadlines, retries and metrics; this one is the plain floor it is
 * measured against (bench/overhead.ts).
 *
 * @internal
 */
import { Effect } from "effect"

/** @internal */
export const forEachBounded = <A, B, E, R>(
  items: ReadonlyArray<A>,
  concurrency: number,
  f: (item: A, index: number) => Effect.Effect<B, E, R>
): Effect.Effect<Array<B>, E, R> =>
  Effect.suspend(() => {
    const n = items.length
    const results = new Array<B>(n)
    let next = 0
    const worker: Effect.Effect<void, E, R> = Effect.suspend(() => {
      if (next >= n) return Effect.void
      const index = next++
      return Effect.flatMap(f(items[index]!, index), (b) => {
        results[index] = b
        return worker
      })
    })
    const workers = Math.max(1, Math.min(n, Math.floor(concurrency)))
    if (n === 0) return Effect.succeed(results)
    if (workers === 1) return Effect.as(worker, results)
    return Effect.as(
      Effect.forEach(Array.from({ length: workers }), () => worker, { concurrency: "unbounded", discard: true }),
      results
    )
  })
