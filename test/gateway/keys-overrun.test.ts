/**
 * A request whose real usage is more than it reserved (a provider that did not keep to max_tokens, or an input
 * longer in tokens than estimated) is charged what it used, and said in the log: a budget is never overspent
 * unseen.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import { captureLogs } from "../utils/logs.js"

const memory = (options: KeyStore.Options) =>
  Effect.map(Layer.build(KeyStore.layerMemory(options)), Context.get(KeyStore.KeyAdmin))

describe("KeyStore: usage over the reservation", () => {
  it.effect("is charged in full and said in the log, naming the key, the budget and both amounts", () =>
    Effect.gen(function* () {
      const { lines: logs, layer } = yield* captureLogs
      yield* Effect.gen(function* () {
        const store = yield* memory({ teams: { red: { budget: { tokens: 1000 } } } })
        const made = yield* store.create({ id: "k", team: "red", budget: { tokens: 100 } })
        const context = yield* store.authenticate(made.secret)
        // Within the reservation: nothing said.
        const within = yield* store.reserve(context, "m", { inputTokens: 10, maxOutputTokens: 20 })
        yield* store.settle(within, { inputTokens: 10, outputTokens: 20 })
        assert.deepStrictEqual(logs, [])

        const over = yield* store.reserve(context, "m", { inputTokens: 10, maxOutputTokens: 20 })
        yield* store.settle(over, { inputTokens: 10, outputTokens: 200 })
        const spent = yield* store.spend("k")
        assert.deepStrictEqual(
          spent.map((line) => [line.id, line.spent]),
          [
            ["k", 240],
            ["red", 240]
          ]
        )
        assert.strictEqual(logs.length, 1, logs.join("\n"))
        assert.match(logs[0]!, /^Warn: /)
        assert.include(logs[0], 'the key "k" on the model "m"')
        assert.include(logs[0], '210 tokens to the key "k" (30 tokens reserved)')
        assert.include(logs[0], '210 tokens to the team "red" (30 tokens reserved)')
        assert.include(logs[0], "max_tokens")
        // Overspent, the key is refused from then on.
        const refused = yield* Effect.flip(store.reserve(context, "m", { inputTokens: 1, maxOutputTokens: 1 }))
        assert.strictEqual(refused.reason, "BudgetExceeded")
      }).pipe(Effect.provide(layer))
    })
  )
})
