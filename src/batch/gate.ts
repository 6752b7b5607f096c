/**
 * The manager's shared limit: `limit` permits, handed over in arrival order. A batch whose
 * items are started from JavaScript takes a permit with {@link Gate.tryTake} when one is free
 * (no fiber, no Effect), and otherwise queues its fiber with {@link Gate.take}; a batch on
 * fibers holds one with {@link Gate.withPermit}. A release hands the permit straight to the
 * first waiter, so nobody overtakes a queued batch: while anyone waits, no permit is free.
 *
 * Why not Effect's `Semaphore`: it can be taken only as an Effect (a fiber's turn per item),
 * and a released permit is free for anyone until the woken waiter runs, so a batch that
 * retakes at once from JavaScript would starve the batches queued behind it.
 *
 * @internal
 */
import { Effect } from "effect"

interface Waiter {
  resume: ((effect: Effect.Effect<void>) => void) | undefined
  granted: boolean
}

/**
 * @internal
 */
export class Gate {
  private taken = 0
  private readonly waiters = new Set<Waiter>()

  constructor(readonly limit: number) {}

  /** Takes a permit if one is free (never while a fiber waits for one). */
  tryTake(): boolean {
    if (this.taken >= this.limit || this.waiters.size > 0) return false
    this.taken++
    return true
  }

  /**
   * Gives a permit back: to the first waiter if any (it keeps the count), else to the pool.
   * The waiter's fiber is resumed on a microtask, not inside this call: resuming it here would
   * run it inline, and a chain of batches that each end at once and hand over to the next
   * would grow the stack until it overflows.
   */
  release(): void {
    for (const waiter of this.waiters) {
      this.waiters.delete(waiter)
      waiter.granted = true
      const resume = waiter.resume
      waiter.resume = undefined
      if (resume !== undefined) queueMicrotask(() => resume(Effect.void))
      return
    }
    this.taken--
  }

  /**
   * Waits for a permit, in arrival order. Interrupted while waiting, it leaves the queue; a
   * permit granted to a fiber interrupted at that instant is given back.
   */
  readonly take: Effect.Effect<void> = Effect.callback<void>((resume) => {
    if (this.tryTake()) return resume(Effect.void)
    const waiter: Waiter = { resume, granted: false }
    this.waiters.add(waiter)
    return Effect.sync(() => {
      if (this.waiters.delete(waiter)) return
      if (waiter.granted) this.release()
    })
  })

  /** Runs `effect` holding a permit, taken in arrival order and given back however it ends. */
  withPermit<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
    return Effect.uninterruptibleMask((restore) =>
      Effect.suspend(() => {
        const run = Effect.ensuring(restore(effect), this.released)
        // A free permit is taken without the callback that `take` waits in.
        return this.tryTake() ? run : Effect.flatMap(restore(this.take), () => run)
      })
    )
  }

  private readonly released = Effect.sync(() => this.release())
}
