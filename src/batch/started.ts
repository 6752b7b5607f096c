/**
 * The pool of a silent batch (no `onProgress`, no `onEvent`): its items started from
 * JavaScript through the engine's `start`, as `executeMany` does. No worker fiber and no
 * Effect per item, only each call's own fiber; an item that ends starts the next at once.
 *
 * - Permits: an item takes one of the manager's (`gate.ts`) at once when one is free and
 *   nobody waits; otherwise the batch's fiber queues for one. Each item gives its permit back
 *   exactly once: when it ends, or when a cancellation stops it.
 * - Waits: an item's wait for its permit counts from when a place in the batch's own
 *   concurrency opened for it, as it would for a worker fiber taking it then.
 * - Interrupted (the batch's `cancel`, the caller, shutdown): nothing more starts; the calls
 *   in flight are cancelled and give their permits back once they have ended.
 *
 * @internal
 */
import { type Clock, Effect, Exit, Fiber } from "effect"
import { type AiError, ModelError } from "../AiError.js"
import type { Answer, Routed } from "../Router.js"
import type { Engine } from "../policy/engine.js"
import type { Running, Sink } from "../policy/fused.js"
import type { Gate } from "./gate.js"

/**
 * The engine's `start` of the batch's executor.
 *
 * @internal
 */
export type Start = Engine["start"]

/**
 * What the pool needs of its batch.
 *
 * @internal
 */
export interface Batch {
  readonly total: number
  readonly concurrency: number
  readonly gate: Gate
  readonly clock: Clock.Clock
  /** The item starts, a permit held, after waiting since `takenAt`. */
  readonly started: (index: number, takenAt: number) => void
  /** The item's outcome; called at most once per item. */
  readonly settle: (index: number, exit: Exit.Exit<Answer, AiError>) => void
  /** Whether the item has its outcome. */
  readonly settled: (index: number) => boolean
  /**
   * The item's call: its plan (started from JavaScript), its refusal, or an Effect of the
   * whole call when its route is not resolved yet (run on a fiber of its own).
   */
  readonly call: (index: number) => Routed | ModelError | Effect.Effect<Answer, AiError>
}

/**
 * Runs every item of `batch`, each to its outcome.
 *
 * @internal
 */
export const run = (batch: Batch, start: Start): Effect.Effect<void> =>
  Effect.withFiber((fiber) => {
    const { total, concurrency, gate, clock } = batch
    const handles = new Array<Running | undefined>(total)
    const answers = new Array<((value: never) => Answer) | undefined>(total)
    // 1 while an item holds a permit: given back once, by its end or by its cancellation.
    const holding = new Uint8Array(total)
    // When each free place of the batch's concurrency opened, oldest first.
    let freedAt: Array<number> = []
    let freedHead = 0
    const start0 = clock.currentTimeMillisUnsafe()
    for (let i = 0; i < Math.min(concurrency, total); i++) freedAt.push(start0)
    let next = 0
    let inFlight = 0
    let finished = 0
    let pumping = false
    let blocked = false
    let stopped = false
    let wake: (() => void) | undefined
    const canStart = () => !stopped && inFlight < concurrency && next < total

    const takenAt = (): number => {
      const at = freedHead < freedAt.length ? freedAt[freedHead++]! : clock.currentTimeMillisUnsafe()
      if (freedHead > 1024 && freedHead * 2 > freedAt.length) {
        freedAt = freedAt.slice(freedHead)
        freedHead = 0
      }
      return at
    }

    const giveBack = (index: number): void => {
      if (holding[index] !== 1) return
      holding[index] = 0
      inFlight--
      freedAt.push(clock.currentTimeMillisUnsafe())
      gate.release()
    }

    const sink: Sink = {
      done: (index, exit) => {
        const answer = answers[index]
        answers[index] = undefined
        handles[index] = undefined
        if (!batch.settled(index)) {
          const outcome =
            Exit.isSuccess(exit) && answer !== undefined ? Exit.succeed(answer(exit.value as never)) : exit
          batch.settle(index, outcome as Exit.Exit<Answer, AiError>)
          finished++
        }
        giveBack(index)
        if (pumping || stopped) return
        if (wake !== undefined) pump(64)
        const w = wake
        if (w !== undefined && (finished === total || canStart())) {
          wake = undefined
          w()
        }
      }
    }

    // Starts one item, its permit taken.
    const startItem = (index: number): void => {
      holding[index] = 1
      inFlight++
      batch.started(index, takenAt())
      let handle: Running | undefined
      try {
        const call = batch.call(index)
        if (call instanceof ModelError) {
          sink.done(index, Exit.fail(call))
          return
        }
        if (Effect.isEffect(call)) {
          const child = Effect.runForkWith(fiber.context)(Effect.exit(call))
          const exit = child.pollUnsafe()
          if (exit !== undefined) {
            sink.done(index, Exit.isSuccess(exit) ? exit.value : exit)
            return
          }
          let cancelled = false
          child.addObserver((end) => {
            if (!cancelled) sink.done(index, Exit.isSuccess(end) ? end.value : end)
          })
          handle = {
            cancel: () => {
              cancelled = true
              child.interruptUnsafe()
              return child
            }
          }
        } else {
          answers[index] = call.answer as (value: never) => Answer
          handle = start(fiber, call.plan, call.call, sink, index, true)
        }
      } catch (defect) {
        // A request whose reading throws (a getter): that item's defect, as on a worker fiber.
        sink.done(index, Exit.die(defect))
        return
      }
      // Ended at once: its `sink.done` has settled it and given its permit back.
      if (handle === undefined) return
      if (stopped) {
        // Interrupted while this item was starting (from inside its own start, with the
        // batch's results perhaps already filled in): it stops too.
        handle.cancel()
        giveBack(index)
        return
      }
      handles[index] = handle
    }

    // Starts items while there is room and a free permit, at most `budget` of them.
    const pump = (budget: number): void => {
      pumping = true
      try {
        while (canStart() && budget-- > 0) {
          if (!gate.tryTake()) {
            blocked = true
            return
          }
          startItem(next++)
        }
      } finally {
        pumping = false
      }
    }

    // No permit free: queue for one (in arrival order, behind other batches), then start the
    // next item with it. Uninterruptible once granted, so the permit reaches the item.
    const queued: Effect.Effect<void> = Effect.uninterruptibleMask((restore) =>
      Effect.map(restore(gate.take), () => {
        if (!canStart()) {
          gate.release()
          return
        }
        pumping = true
        try {
          startItem(next++)
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
          const handle = handles[index]
          if (handle === undefined) continue
          handles[index] = undefined
          cancelled.push(index)
          const fiber = handle.cancel()
          if (fiber !== undefined) ending.push(fiber)
        }
        const giveAllBack = Effect.sync(() => {
          for (const index of cancelled) giveBack(index)
        })
        return ending.length === 0 ? giveAllBack : Effect.andThen(Fiber.awaitAll(ending), giveAllBack)
      })
    )
  })
