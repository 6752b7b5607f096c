/**
 * What the key store does in the background when the store failed to take a settle or a reserve: tries
 * again until it answers or the lease is over (a settle counted once), gives back what a reserve whose
 * answer never came may hold, sums usage let through unreserved, and says in the log what was lost.
 *
 * @internal
 */
import { Duration, Effect, Schedule, type Scope } from "effect"
import { neverSent, type StoreError } from "../../Redis.js"
import { amountText } from "./budget-text.js"
import type { Held } from "./held.js"
import { type Backend, type Charge, type Counter, type Level, UnreadableCounter } from "./ledger.js"
import type { Resolved } from "./options.js"
import * as Unrecorded from "./unrecorded.js"

/**
 * @internal
 */
export const make = (deps: {
  readonly resolved: Resolved
  readonly backend: Backend
  readonly now: () => number
  readonly scope: Scope.Scope
  readonly nextId: () => string
  readonly reportCounter: (error: UnreadableCounter) => Effect.Effect<void>
  readonly gauge: (keyId: string, counter: Counter, level: Level) => void
}) => {
  const { resolved, backend, now, scope, reportCounter, gauge } = deps

  // The levels a settle left: each to its gauge; a counter that cannot be read (left as it was) is said in the log.
  const settled = (
    keyId: string,
    charges: ReadonlyArray<Charge>,
    levels: ReadonlyArray<Level | UnreadableCounter | undefined>
  ): Effect.Effect<void> =>
    Effect.suspend(() => {
      const unreadable: Array<UnreadableCounter> = []
      for (let i = 0; i < charges.length; i++) {
        const level = levels[i]
        if (level instanceof UnreadableCounter) unreadable.push(level)
        else if (level !== undefined) gauge(keyId, charges[i]!.counter, level)
      }
      return unreadable.length === 0 ? Effect.void : Effect.forEach(unreadable, reportCounter, { discard: true })
    })

  // A settle that failed runs again in the background, in the layer's scope, until Redis answers
  // or the lease is over (reservationTtl).
  const laterSchedule = Schedule.exponential("100 millis").pipe(
    Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.seconds(5)))),
    Schedule.upTo({ duration: Duration.millis(resolved.reservationTtlMs) })
  )
  const chargesText = (charges: ReadonlyArray<Charge>, actual: ReadonlyArray<number>): string =>
    charges
      .map(({ counter }, i) => `${amountText(counter, actual[i] ?? 0)} to the ${counter.scope} "${counter.scopeId}"`)
      .join(", ")
  const lostUsage = (keyId: string, charges: ReadonlyArray<Charge>, actual: ReadonlyArray<number>, why: string) =>
    Effect.logError(
      `gateway: the usage of a request of the key "${keyId}" was not recorded: ${why}; not charged: ${chargesText(charges, actual)}`
    )
  // A settle tried again, its lease perhaps ended and swept meanwhile, that found nothing of the reservation:
  // the earlier attempt that may have reached the store charged it, or none did and it is lost.
  const maybeLostUsage = (keyId: string, charges: ReadonlyArray<Charge>, actual: ReadonlyArray<number>) =>
    Effect.logWarning(
      `gateway: the usage of a request of the key "${keyId}" may not have been recorded: its settle failed after it may have reached the key store, and when the store answered again the reservation's lease (reservationTtl ${resolved.reservationTtlMs} ms) had ended; charged only if that first attempt ran: ${chargesText(charges, actual)}`
    )
  // Usage let through unreserved during an outage (budgets "allow"): summed by counter, settled in batches.
  const addUnrecorded = Unrecorded.make({
    nextId: deps.nextId,
    settle: backend.settle,
    retryLater: (effect) => Effect.retry(effect, laterSchedule),
    now,
    reservationTtlMs: resolved.reservationTtlMs,
    reportCounter,
    gauge,
    amountText,
    scope
  })

  const settleLater = (
    held: Held,
    charges: ReadonlyArray<Charge>,
    actual: ReadonlyArray<number>,
    error: StoreError
  ): Effect.Effect<void> => {
    if (!held.recorded && neverSent(error)) return addUnrecorded(held.keyId, charges, actual)
    // Counted once, by its lease (or an unrecorded one's mark), only once an attempt may have reached
    // Redis (which runs it late, a hung Redis, or not): one skipped for an outage, or refused by an
    // offline client, never did. A lease that ended meanwhile is swept by the next reserve of its
    // counter, and a settle counted once by it would find nothing to settle: charged, then, whatever
    // its lease, while no attempt was sent.
    let reached = !neverSent(error)
    const leaseEnd = held.renewedAt + resolved.reservationTtlMs
    const charged = actual.some((amount) => amount > 0)
    return Effect.suspend(() => backend.settle(held.id, charges, actual, now(), !held.recorded || reached)).pipe(
      Effect.tapError((failed) =>
        Effect.sync(() => {
          if (!neverSent(failed)) reached = true
        })
      ),
      Effect.retry(laterSchedule),
      Effect.matchEffect({
        // Spend the budgets will never show: said, so that an operator knows they undercount.
        onFailure: () =>
          charged
            ? lostUsage(
                held.keyId,
                charges,
                actual,
                `the key store did not take its settle within reservationTtl (${resolved.reservationTtlMs} ms)`
              )
            : Effect.void,
        onSuccess: ({ levels, applied }) =>
          !applied && held.recorded && now() >= leaseEnd && charged
            ? Effect.andThen(maybeLostUsage(held.keyId, charges, actual), settled(held.keyId, charges, levels))
            : settled(held.keyId, charges, levels)
      }),
      // Closed (the gateway shut down) before the store took it: said as well.
      Effect.onInterrupt(() =>
        charged
          ? lostUsage(held.keyId, charges, actual, "the key store closed before Redis took its settle")
          : Effect.void
      ),
      Effect.forkIn(scope),
      Effect.asVoid
    )
  }

  // A reserve that failed after it may have been sent (a timeout, a dropped connection) can still
  // hold its amounts once Redis runs it, until the lease ends: give them back, in the background until
  // Redis answers or the lease is over. The store finds the window it held them in (Redis: of its own
  // time then, whatever this replica's clock says). Giving back an id that holds nothing changes nothing.
  const giveBack = (id: string, keyId: string, charges: ReadonlyArray<Charge>): Effect.Effect<void> =>
    Effect.suspend(() => backend.giveBack(id, charges, resolved.reservationTtlMs, now())).pipe(
      Effect.retry(laterSchedule),
      Effect.matchEffect({
        onFailure: () => Effect.void,
        onSuccess: (found) =>
          Effect.suspend(() => {
            const unreadable: Array<UnreadableCounter> = []
            for (const back of found) {
              if (back instanceof UnreadableCounter) unreadable.push(back)
              else if (back !== undefined) gauge(keyId, back.counter, back.level)
            }
            return unreadable.length === 0 ? Effect.void : Effect.forEach(unreadable, reportCounter, { discard: true })
          })
      }),
      Effect.forkIn(scope),
      Effect.asVoid
    )

  return { settled, settleLater, giveBack }
}
