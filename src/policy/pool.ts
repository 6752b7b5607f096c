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

/**
 * `forEachPool` for calls started from JavaScript (`Engine.start`): no worker fiber at all,
 * only each call's own, so a pool of 10,000 calls in flight holds 10,000 fibers. `start`
 * reports each item's exit to the sink (at once, answering `undefined`, or later, answering
 * its handle). A call that ends starts its successor at once (as p-limit does); the pool's
 * own fiber starts at most 1,024 before it yields. When interrupted it cancels the calls in
 * flight and waits for those still ending.
 *
 * @internal
 */
export const forEachStarted = <I>(
  items: ReadonlyArray<I>,
  concurrency: number,
  start: (item: I, sink: Sink, index: number) => Running | undefined
): Effect.Effect<Array<Exit.Exit<unknown, AiError>>> =>
  Effect.suspend(() => {
    const n = items.length
    const out = new Array<Exit.Exit<unknown, AiError>>(n)
    const running = new Array<Running | undefined>(n)
    let next = 0
    let finished = 0
    let inFlight = 0
    let wake: (() => void) | undefined
    let pumping = false
    const canStart = () => inFlight < concurrency && next < n
    // Starts items while there is room, at most `budget` of them; a call that ends at once
    // reports inside and makes room for the next without recursion.
    const pump = (budget: number): void => {
      pumping = true
      try {
        while (canStart() && budget-- > 0) {
          const index = next++
          inFlight++
          const handle = start(items[index]!, sink, index)
          if (handle !== undefined && out[index] === undefined) running[index] = handle
        }
      } finally {
        pumping = false
      }
    }
    const sink: Sink = {
      done: (index, exit) => {
        if (out[index] !== undefined) return
        out[index] = exit
        running[index] = undefined
        inFlight--
        finished++
        if (pumping) return
        // A call ended on its own fiber: its successor starts at once, as p-limit's does,
        // without waiting for the pool's fiber to be scheduled.
        if (wake !== undefined) pump(64)
        const w = wake
        if (w !== undefined && (finished === n || canStart())) {
          wake = undefined
          w()
        }
      }
    }
    const loop: Effect.Effect<Array<Exit.Exit<unknown, AiError>>> = Effect.suspend(() => {
      pump(1024)
      if (finished === n) return Effect.succeed(out)
      if (canStart()) return Effect.flatMap(Effect.yieldNow, () => loop)
      return Effect.flatMap(
        Effect.callback<void>((resume) => {
          if (canStart() || finished === n) return resume(Effect.void)
          wake = () => resume(Effect.void)
        }),
        () => loop
      )
    })
    return Effect.onInterrupt(loop, () =>
      Effect.suspend(() => {
        wake = undefined
        const ending: Array<Fiber.Fiber<unknown, unknown>> = []
        for (let index = 0; index < next; index++) {
          const handle = running[index]
          if (handle === undefined) continue
          running[index] = undefined
          const fiber = handle.cancel()
          if (fiber !== undefined) ending.push(fiber)
        }
        return ending.length === 0 ? Effect.void : Effect.asVoid(Fiber.awaitAll(ending))
      })
    )
  })
