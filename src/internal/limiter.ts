/**
 * A FIFO hand-off limiter shared by every caller of one manager.
 *
 * `release` gives the permit straight to the oldest waiter, so a release wakes exactly one
 * fiber (Effect's semaphore wakes every waiter on each release and all but one re-queue:
 * DESIGN.md, facts). A free permit is taken synchronously, without suspending.
 *
 * Ownership is tracked by a `Ticket`, not by a fiber's stack: the hand-off marks the ticket
 * granted synchronously, inside `release`, so whoever closes the ticket (a finalizer, or a
 * pool that outlives the fiber) knows exactly whether it holds a permit. An interrupted
 * waiter therefore never leaks a permit, even when it was handed one between its wake-up
 * and its next step.
 *
 * @internal
 */
import { Effect } from "effect"

/**
 * One request for a permit. Queued tickets form a doubly linked list, so leaving the queue
 * is O(1) however many wait.
 *
 * @internal
 */
export interface Ticket {
  /** True while this ticket holds a permit. */
  readonly granted: boolean
  /** Completes once the ticket holds a permit (at once if it already does). Interruption leaves the ticket as it is. */
  readonly await: Effect.Effect<void>
  /** Gives the permit back if held, or leaves the queue. Idempotent. */
  readonly close: () => void
}

/** @internal */
export interface Limiter {
  readonly permits: number
  /** A ticket, granted at once when a permit is free, queued otherwise. The caller must `close` it. */
  readonly take: () => Ticket
  /** Runs `effect` holding one permit; interruption at any point gives the permit back. */
  readonly withPermit: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  readonly available: () => number
  readonly waiting: () => number
}

const QUEUED = 0
const GRANTED = 1
const CLOSED = 2

class TicketImpl implements Ticket {
  state: number
  prev: TicketImpl | undefined = undefined
  next: TicketImpl | undefined = undefined
  resume: ((effect: Effect.Effect<void>) => void) | undefined = undefined
  readonly await: Effect.Effect<void>

  constructor(
    readonly owner: State,
    granted: boolean
  ) {
    this.state = granted ? GRANTED : QUEUED
    this.await = granted
      ? Effect.void
      : Effect.async<void>((resume) => {
          if (this.state === GRANTED) return resume(Effect.void)
          if (this.state === CLOSED) return resume(Effect.dieMessage("Limiter: awaiting a closed ticket"))
          this.resume = resume
          return Effect.sync(() => {
            this.resume = undefined
          })
        })
  }

  get granted(): boolean {
    return this.state === GRANTED
  }

  close(): void {
    const state = this.state
    this.state = CLOSED
    if (state === GRANTED) release(this.owner)
    else if (state === QUEUED) unlink(this.owner, this)
    this.resume = undefined
  }
}

interface State {
  free: number
  waiting: number
  head: TicketImpl | undefined
  tail: TicketImpl | undefined
}

const unlink = (state: State, ticket: TicketImpl): void => {
  if (ticket.prev) ticket.prev.next = ticket.next
  else state.head = ticket.next
  if (ticket.next) ticket.next.prev = ticket.prev
  else state.tail = ticket.prev
  ticket.prev = undefined
  ticket.next = undefined
  state.waiting--
}

const release = (state: State): void => {
  const oldest = state.head
  if (oldest === undefined) {
    state.free++
    return
  }
  unlink(state, oldest)
  oldest.state = GRANTED
  const resume = oldest.resume
  oldest.resume = undefined
  if (resume !== undefined) resume(Effect.void)
}

/**
 * A limiter that is not an Effect: for constructors that already run inside one.
 *
 * @internal
 */
export const unsafeMake = (permits: number): Limiter => {
  const max = Math.max(1, Math.floor(permits))
  const state: State = { free: max, waiting: 0, head: undefined, tail: undefined }

  const take = (): Ticket => {
    if (state.free > 0) {
      state.free--
      return new TicketImpl(state, true)
    }
    const ticket = new TicketImpl(state, false)
    ticket.prev = state.tail
    if (state.tail) state.tail.next = ticket
    else state.head = ticket
    state.tail = ticket
    state.waiting++
    return ticket
  }

  const withPermit = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.acquireUseRelease(
      Effect.sync(take),
      (ticket) => (ticket.granted ? effect : Effect.zipRight(ticket.await, effect)),
      (ticket) => Effect.sync(() => ticket.close())
    )

  return {
    permits: max,
    take,
    withPermit,
    available: () => state.free,
    waiting: () => state.waiting
  }
}

/** @internal */
export const make = (permits: number): Effect.Effect<Limiter> => Effect.sync(() => unsafeMake(permits))
