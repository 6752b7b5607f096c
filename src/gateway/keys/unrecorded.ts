/**
 * The usage of requests a key store let through unreserved (budgets `"allow"`) whose settle never reached the
 * store (an outage): summed by budget counter, and recorded by one settle of each batch of sums once the
 * store answers.
 *
 * @internal
 */
import { Effect, type Scope } from "effect"
import type { StoreError } from "../../Redis.js"
import { type Backend, type Charge, type Counter, type Level, type Owner, UnreadableCounter } from "./ledger.js"

/**
 * What the sums are recorded with: the store's settle, tried again by `retryLater` until `reservationTtlMs`,
 * in `scope` (the key store's); each level it leaves to its gauge.
 *
 * @internal
 */
export interface Host {
  readonly nextId: () => string
  readonly settle: Backend["settle"]
  readonly retryLater: <A>(effect: Effect.Effect<A, StoreError>) => Effect.Effect<A, StoreError>
  readonly now: () => number
  readonly reservationTtlMs: number
  readonly reportCounter: (error: UnreadableCounter) => Effect.Effect<void>
  readonly gauge: (keyId: string, counter: Counter, level: Level) => void
  readonly amountText: (counter: Counter, amount: number) => string
  readonly scope: Scope.Scope
}

// A settle tried again per request held a fiber and ~10 KB each, waking on its schedule, for up to
// reservationTtl: a gateway serving 100 requests a second through a 15-minute outage held 90,000 of them
// (about 1 GB) and spent its CPU retrying them. Nothing of such a request is held and no attempt of its
// settle ran, so a sum of them is charged once, by the mark of its batch's own settle.
interface Unrecorded {
  readonly keyId: string
  readonly counter: Counter
  readonly owner: Owner | undefined
  amount: number
}

/**
 * Adds a request's usage to the sums, and starts recording them if no recording runs.
 *
 * @internal
 */
export const make = (host: Host) => {
  const unrecorded = new Map<string, Unrecorded>()
  let flushing = false
  const unrecordedBatch = 128

  const unrecordedText = (batch: ReadonlyArray<Unrecorded>): string =>
    batch
      .map(({ counter, amount }) => `${host.amountText(counter, amount)} to the ${counter.scope} "${counter.scopeId}"`)
      .join(", ")
  const lostUnrecorded = (batch: ReadonlyArray<Unrecorded>, why: string): Effect.Effect<void> =>
    batch.length === 0
      ? Effect.void
      : Effect.logError(
          `gateway: the usage of requests let through while the key store was unavailable was not recorded: ${why}; not charged: ${unrecordedText(batch)}`
        )

  const settleBatch = (batch: ReadonlyArray<Unrecorded>): Effect.Effect<void> => {
    const id = host.nextId()
    const charges = batch.map(({ counter, owner }) => ({ counter, amount: 0, owner }))
    const actual = batch.map(({ amount }) => amount)
    return host.retryLater(Effect.suspend(() => host.settle(id, charges, actual, host.now(), true))).pipe(
      Effect.matchEffect({
        onFailure: () =>
          lostUnrecorded(
            batch,
            `the key store did not take its settle within reservationTtl (${host.reservationTtlMs} ms)`
          ),
        onSuccess: ({ levels }) =>
          Effect.forEach(
            batch,
            ({ keyId }, i) => {
              const level = levels[i]
              if (level instanceof UnreadableCounter) return host.reportCounter(level)
              if (level !== undefined) host.gauge(keyId, batch[i]!.counter, level)
              return Effect.void
            },
            { discard: true }
          )
      }),
      Effect.onInterrupt(() => lostUnrecorded(batch, "the key store closed before Redis took its settle"))
    )
  }

  const takeBatch = (): ReadonlyArray<Unrecorded> => {
    const batch: Array<Unrecorded> = []
    for (const [name, entry] of unrecorded) {
      if (batch.length >= unrecordedBatch) break
      unrecorded.delete(name)
      batch.push(entry)
    }
    return batch
  }

  const flushUnrecorded: Effect.Effect<void> = Effect.suspend(() => {
    const batch = takeBatch()
    if (batch.length === 0) {
      flushing = false
      return Effect.void
    }
    return Effect.andThen(settleBatch(batch), flushUnrecorded)
  })

  return (keyId: string, charges: ReadonlyArray<Charge>, actual: ReadonlyArray<number>): Effect.Effect<void> =>
    Effect.suspend(() => {
      for (let i = 0; i < charges.length; i++) {
        const amount = actual[i] ?? 0
        if (amount <= 0) continue
        const { counter, owner } = charges[i]!
        // A key deleted and created again under its id is another owner of the same counter: summed apart.
        const name = owner === undefined ? counter.name : `${counter.name}\u0000${owner.sha256}`
        const entry = unrecorded.get(name)
        if (entry === undefined) unrecorded.set(name, { keyId, counter, owner, amount })
        else entry.amount = Math.min(Number.MAX_SAFE_INTEGER, entry.amount + amount)
      }
      if (flushing || unrecorded.size === 0) return Effect.void
      flushing = true
      return flushUnrecorded.pipe(
        // Closed (the gateway shut down): what waits for the next batch is said too.
        Effect.onInterrupt(() =>
          Effect.suspend(() => {
            flushing = false
            const left = [...unrecorded.values()]
            unrecorded.clear()
            return lostUnrecorded(left, "the key store closed before Redis took its settle")
          })
        ),
        Effect.forkIn(host.scope),
        Effect.asVoid
      )
    })
}
