/**
 * The provider calls of a batch's items still running. A deadline or a cancellation interrupts
 * an item's call, and the engine gives the item its outcome at once, without waiting for the
 * provider's call to stop (an HTTP abort, a slow finalizer). An item's permit of the manager's
 * limit is given back only once its last call has stopped ({@link Attempts.whenStopped}), so
 * that `maxConcurrent` bounds the provider calls really running, stopping ones included.
 *
 * @internal
 */
import { Effect } from "effect"

/**
 * @internal
 */
export class Attempts {
  private readonly live = new Map<number, number>()
  private readonly waiting = new Map<number, Array<() => void>>()

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

  /** Calls `then` once item `index` has no call running: at once, or when its last one stops. */
  whenStopped(index: number, then: () => void): void {
    if (!this.live.has(index)) {
      then()
      return
    }
    const waiting = this.waiting.get(index)
    if (waiting === undefined) this.waiting.set(index, [then])
    else waiting.push(then)
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
