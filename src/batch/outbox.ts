/**
 * The bounded hand-over of `Batch.stream`'s events to its consumer. Events are offered from the
 * batch's calls synchronously (`Batch.run`'s tap), where nothing can wait: an event that finds the
 * stream's queue full (or events already waiting) waits here, in order, and the outbox's own fiber
 * hands them over as the consumer takes. While any wait here, the batch starts no item (`room`,
 * `awaitRoom`): the events waiting are those of the items already running, so at most
 * `bufferSize` events in the queue plus a few per item in flight.
 *
 * The fast path (room in the queue, nothing waiting) is one `Queue.offerUnsafe`: no Effect per event.
 *
 * @internal
 */
import { Effect, Queue } from "effect"

/**
 * @internal
 */
export class Outbox<A> {
  private waiting: Array<A> = []
  private head = 0
  // The drainer parked for work, the batch's fibers parked for room, and its end parked until all is handed over.
  private wakeDrainer: (() => void) | undefined
  private readonly roomWaiters = new Set<() => void>()
  private readonly emptyWaiters = new Set<() => void>()

  constructor(private readonly queue: Queue.Enqueue<A, never>) {}

  /** Hands `event` over, or keeps it, in order, until the queue takes it. Never waits. */
  offer(event: A): void {
    if (this.head === this.waiting.length && Queue.offerUnsafe(this.queue, event)) return
    this.waiting.push(event)
    const wake = this.wakeDrainer
    if (wake !== undefined) {
      this.wakeDrainer = undefined
      wake()
    }
  }

  // Set once the batch no longer waits for its consumer (`release`).
  private released = false

  /** Whether the batch may start another item: no event waits here, or the outbox is released. */
  readonly room = (): boolean => this.released || this.head === this.waiting.length

  /** Waits until the batch may start another item (interruptible). */
  readonly awaitRoom: Effect.Effect<void> = Effect.callback<void>((resume) => {
    if (this.room()) return resume(Effect.void)
    return this.park(this.roomWaiters, resume)
  })

  /** Waits until no event waits here (interruptible): the consumer's queue has them all. */
  readonly awaitEmpty: Effect.Effect<void> = Effect.callback<void>((resume) => {
    if (this.head === this.waiting.length) return resume(Effect.void)
    return this.park(this.emptyWaiters, resume)
  })

  /**
   * The batch no longer waits for its consumer (its manager is closing): its items go on to their
   * outcomes at once, and their events wait here, in order, for a consumer that may never pull.
   */
  release(): void {
    if (this.released) return
    this.released = true
    for (const waiter of this.roomWaiters) waiter()
    this.roomWaiters.clear()
  }

  private park(waiters: Set<() => void>, resume: (effect: Effect.Effect<void>) => void): Effect.Effect<void> {
    const waiter = () => resume(Effect.void)
    waiters.add(waiter)
    return Effect.sync(() => {
      waiters.delete(waiter)
    })
  }

  private readonly work: Effect.Effect<void> = Effect.callback<void>((resume) => {
    if (this.head < this.waiting.length) return resume(Effect.void)
    this.wakeDrainer = () => resume(Effect.void)
    return Effect.sync(() => {
      this.wakeDrainer = undefined
    })
  })

  // An event leaves `waiting` only once the queue has it, so that one offered meanwhile queues behind it.
  private readonly next: Effect.Effect<void> = Effect.suspend(() =>
    Effect.map(Queue.offer(this.queue, this.waiting[this.head]!), () => {
      this.waiting[this.head++] = undefined as A
      if (this.head === this.waiting.length) {
        this.waiting = []
        this.head = 0
        for (const waiter of this.roomWaiters) waiter()
        this.roomWaiters.clear()
        for (const waiter of this.emptyWaiters) waiter()
        this.emptyWaiters.clear()
      }
    })
  )

  /** Hands the waiting events over as the queue takes them; run on a fiber of its own, forever. */
  readonly drain: Effect.Effect<never> = Effect.forever(Effect.andThen(this.work, this.next))
}
