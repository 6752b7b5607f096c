/**
 * The pool of a batch without `onEvent` (silent, or with only `onProgress`): its items started from
 * JavaScript through the engine's `start`, as `executeMany` does (`policy/pool.ts`
 * `runStarted`): no worker fiber and no Effect per item, only each call's own fiber; an item
 * that ends starts the next at once. Each item holds a permit of the manager's limit
 * (`gate.ts`) while it runs; its wait for it counts from when a place in the batch's own
 * concurrency opened for it, as it would for a worker fiber taking it then.
 *
 * @internal
 */
import { type Clock, Effect, Exit } from "effect"
import { type AiError, ModelError, ShuttingDownError } from "../AiError.js"
import type { Answer, Routed } from "../Router.js"
import type { Engine } from "../policy/engine.js"
import type { Running } from "../policy/fused.js"
import { runStarted } from "../policy/pool.js"
import type { Gate } from "./gate.js"
import type { Room } from "./runner.js"
import { monotonicMillis } from "../stats/clock.js"

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
  readonly started: (index: number, takenAt: number) => unknown
  /** The item's outcome; called at most once per item. */
  readonly settle: (index: number, exit: Exit.Exit<Answer, AiError>) => unknown
  /** Whether the item has its outcome (a cancelled batch fills in those it stopped). */
  readonly settled: (index: number) => boolean
  /**
   * Whether the batch was cancelled: from then on no item starts, even inside the loop that is
   * starting items (an `onProgress` that aborts the batch's signal is called from it), before
   * the pool's fiber sees its interruption.
   */
  readonly halted: () => boolean
  /** While it answers false, no item starts (the pool waits in `awaitRoom`): a consumer's buffer is full. */
  readonly room?: Room | undefined
  /**
   * The item's call: its plan (started from JavaScript), its refusal (its own, or the closing manager's), or an
   * Effect of the whole call when its route is not resolved yet (run on a fiber of its own).
   */
  readonly call: (index: number) => Routed | ModelError | ShuttingDownError | Effect.Effect<Answer, AiError>
}

/**
 * Runs every item of `batch`, each to its outcome.
 *
 * @internal
 */
export const run = (batch: Batch, start: Start): Effect.Effect<void> =>
  Effect.withFiber((fiber) => {
    const { total, concurrency, gate, clock, room } = batch
    const answers = new Array<((value: never) => Answer) | undefined>(total)
    // When each free place of the batch's concurrency opened, oldest first.
    let freedAt: Array<number> = []
    let freedHead = 0
    const startedAt = monotonicMillis(clock)
    for (let i = 0; i < Math.min(concurrency, total); i++) freedAt.push(startedAt)
    const takenAt = (): number => {
      const at = freedHead < freedAt.length ? freedAt[freedHead++]! : monotonicMillis(clock)
      if (freedHead > 1024 && freedHead * 2 > freedAt.length) {
        freedAt = freedAt.slice(freedHead)
        freedHead = 0
      }
      return at
    }

    // Time held back by the consumer is not a wait for the shared limit: the places free meanwhile open now.
    const heldBack = Effect.sync(() => {
      const now = monotonicMillis(clock)
      for (let i = freedHead; i < freedAt.length; i++) freedAt[i] = Math.max(freedAt[i]!, now)
    })

    return runStarted({
      total,
      concurrency,
      // A halted batch takes no more permits: the pool stops starting items at once (it waits
      // for one instead, where the interruption that follows the halt reaches it).
      permits: {
        tryTake:
          room === undefined
            ? () => !batch.halted() && gate.tryTake()
            : () => !batch.halted() && room.room() && gate.tryTake(),
        take: Effect.suspend(() =>
          batch.halted()
            ? Effect.never
            : room === undefined || room.room()
              ? gate.take
              : Effect.andThen(Effect.andThen(room.awaitRoom, heldBack), gate.take)
        ),
        release: () => {
          freedAt.push(monotonicMillis(clock))
          gate.release()
        }
      },
      done: (index, exit) => {
        const answer = answers[index]
        answers[index] = undefined
        if (batch.settled(index)) return
        const outcome = Exit.isSuccess(exit) && answer !== undefined ? Exit.succeed(answer(exit.value as never)) : exit
        batch.settle(index, outcome as Exit.Exit<Answer, AiError>)
      },
      start: (index, sink): Running | undefined => {
        batch.started(index, takenAt())
        try {
          const call = batch.call(index)
          if (call instanceof ModelError || call instanceof ShuttingDownError) {
            sink.done(index, Exit.fail(call))
            return undefined
          }
          if (!Effect.isEffect(call)) {
            answers[index] = call.answer as (value: never) => Answer
            return start(fiber, call.plan, call.call, sink, index, true)
          }
          const child = Effect.runForkWith(fiber.context)(Effect.exit(call))
          const exit = child.pollUnsafe()
          if (exit !== undefined) {
            sink.done(index, Exit.isSuccess(exit) ? exit.value : exit)
            return undefined
          }
          let cancelled = false
          child.addObserver((end) => {
            if (!cancelled) sink.done(index, Exit.isSuccess(end) ? end.value : end)
          })
          return {
            cancel: () => {
              cancelled = true
              child.interruptUnsafe()
              return child
            }
          }
        } catch (defect) {
          // A request whose reading throws (a getter): that item's defect, as on a worker fiber.
          sink.done(index, Exit.die(defect))
          return undefined
        }
      }
    })
  })
