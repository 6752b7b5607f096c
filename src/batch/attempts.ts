/**
 * The provider calls of a batch's items still running. A deadline or a cancellation interrupts
 * an item's call, and the engine gives the item its outcome at once, without waiting for the
 * provider's call to stop (an HTTP abort, a slow finalizer). An item's permit of the manager's
 * limit is given back only once its last call has stopped ({@link Attempts.whenStopped}), so
 * that `maxConcurrent` bounds the provider calls really running, stopping ones included; but
 * at most {@link stopGrace} after it was cut (logged): a provider call that never stops (an
 * uninterruptible hang) would otherwise take a permit for good, and every batch would wait.
 *
 * @internal
 */
import { type Context, Effect } from "effect"

/**
 * How long an item's permit waits for its cut call to stop.
 *
 * @internal
 */
export const stopGrace = "30 seconds"

/**
 * @internal
 */
export class Attempts {
  private readonly live = new Map<number, number>()
  private readonly waiting = new Map<number, Array<() => void>>()

  constructor(
    /** Where the grace's timers run (the batch's context: its clock and logger). */
    private readonly context: Context.Context<never>,
    private readonly batchId: string
  ) {}

  /** `call` with each of its runs counted under item `index` until it has stopped, however it ends. */
  track<T, S, A, E>(
    index: number,
    call: (target: T, step: S) => Effect.Effect<A, E>
  ): (target: T, step: S) => Effect.Effect<A, E> {
    return (target, step) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.suspend(() => {
          // Built before it is counted: a provider that throws instead of answering an Effect counts nothing.
          const effect = call(target, step)
          this.live.set(index, (this.live.get(index) ?? 0) + 1)
          return Effect.ensuring(
            restore(effect),
            Effect.sync(() => this.end(index))
          )
        })
      )
  }

  /**
   * Calls `then` once item `index` has no call running: at once, or when its last one stops,
   * or {@link stopGrace} from now if it has not stopped by then.
   */
  whenStopped(index: number, then: () => void): void {
    if (!this.live.has(index)) {
      then()
      return
    }
    let called = false
    const timer = Effect.runForkWith(this.context)(
      Effect.andThen(
        Effect.sleep(stopGrace),
        Effect.suspend(() => {
          if (called) return Effect.void
          called = true
          then()
          return Effect.logWarning(
            `Batch ${this.batchId}: the call of item ${index} has not stopped ${stopGrace} after it was cut; its permit is given back`
          )
        })
      )
    )
    const once = () => {
      if (called) return
      called = true
      timer.interruptUnsafe()
      then()
    }
    const waiting = this.waiting.get(index)
    if (waiting === undefined) this.waiting.set(index, [once])
    else waiting.push(once)
  }

  private end(index: number): void {
    const left = this.live.get(index)! - 1
    if (left > 0) {
      this.live.set(index, left)
      return
    }
    this.live.delete(index)
    const waiting = this.waiting.get(index)
    if (waiting === undefined) return
    this.waiting.delete(index)
    for (const then of waiting) then()
  }
}
