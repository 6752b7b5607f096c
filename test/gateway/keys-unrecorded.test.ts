/**
 * Usage let through unreserved during an outage is summed by counter until the store answers: the sums of
 * a deleted key and of a new key of its id (the same counter's name) are kept apart, each with its owner,
 * so that the store charges the new key only its own.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Scope } from "effect"
import { type Charge, countersOf, type Settled } from "../../src/gateway/keys/ledger.js"
import * as Unrecorded from "../../src/gateway/keys/unrecorded.js"

describe("KeyStore: usage recorded after an outage", () => {
  it.effect("a deleted key's and its successor's sums on one counter are settled apart, each with its owner", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const gate = yield* Deferred.make<void>()
      const calls: Array<ReadonlyArray<readonly [string | undefined, number]>> = []
      let id = 0
      const add = Unrecorded.make({
        nextId: () => `u${id++}`,
        settle: (_id, charges, actual) =>
          Effect.andThen(
            Deferred.await(gate),
            Effect.sync((): Settled => {
              calls.push(charges.map((charge, i) => [charge.owner?.sha256, actual[i]!] as const))
              return { levels: charges.map(() => ({ spent: 0, held: 0 })), applied: true }
            })
          ),
        retryLater: (effect) => effect,
        now: () => 0,
        reservationTtlMs: 60_000,
        reportCounter: () => Effect.void,
        gauge: () => {},
        amountText: (_counter, amount) => `${amount}`,
        scope
      })
      const [counter] = countersOf("key", "k", undefined, { tokens: 100, usd: undefined, periodMs: undefined }, 0)
      const [other] = countersOf("team", "red", undefined, { tokens: 100, usd: undefined, periodMs: undefined }, 0)
      const charge = (owner: string | undefined): ReadonlyArray<Charge> => [
        owner === undefined
          ? { counter: other!, amount: 0 }
          : { counter: counter!, amount: 0, owner: { id: "k", sha256: owner } }
      ]
      // A first batch waits for the store: the next sums pile up meanwhile.
      yield* add("red", charge(undefined), [1])
      yield* Effect.yieldNow
      yield* add("k", charge("old"), [10])
      yield* add("k", charge("new"), [5])
      yield* add("k", charge("old"), [2])
      yield* Deferred.succeed(gate, undefined)
      for (let i = 0; i < 50 && calls.length < 2; i++) yield* Effect.yieldNow
      assert.deepStrictEqual(calls, [
        [[undefined, 1]],
        [
          ["old", 12],
          ["new", 5]
        ]
      ])
      yield* Scope.close(scope, Exit.void)
    })
  )
})
