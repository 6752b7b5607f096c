/**
 * A request of a key in flight when the key is deleted (`DELETE /admin/keys/:id`) settles after: its spend goes
 * to no key, neither re-creating the deleted key's counters (a leftover in Redis) nor charged to a new key of
 * the same id. Its team's budget is still charged: the team's request was answered. A replica that still
 * holds the deleted key in its cache reserves nothing on its budget. Memory and a real Redis.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { Redis as PersistenceRedis } from "effect/persistence"
import type { GatewayError } from "../../src/gateway/errors.js"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import * as Redis from "../../src/Redis.js"
import { type RedisServer, skipRedis, skipReason, startRedis } from "../utils/redis.js"

let counter = 0
const unique = (label: string) => `${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const failure = <A>(effect: Effect.Effect<A, GatewayError>) => Effect.flip(effect)

const options = { teams: { red: { budget: { tokens: 1000 } } } }
const policy = { team: "red", budget: { tokens: 100 }, modelBudgets: { m: { tokens: 50 } } }

const memory = () => Effect.map(Layer.build(KeyStore.layerMemory(options)), Context.get(KeyStore.KeyAdmin))

const onRedis = (server: RedisServer, prefix: string, cacheTtl: number) =>
  Effect.gen(function* () {
    const context = yield* Layer.build(
      KeyStore.layerRedis({ prefix, redis: { timeout: "2 seconds" }, cacheTtl, ...options }).pipe(
        Layer.provideMerge(Redis.layer({ url: server.url, commandTimeout: "2 seconds" }))
      )
    )
    return { store: Context.get(context, KeyStore.KeyAdmin), redis: Context.get(context, PersistenceRedis.Redis) }
  })

const spentOf = (store: KeyStore.Service, id: string) =>
  Effect.map(store.spend(id), (lines) => lines.map((line) => [line.id, line.spent, line.held]))

/** A request reserved by the key "k", then the key deleted (and created again, with `again`), then its settle. */
const lateSettle = (store: KeyStore.Service, again: boolean) =>
  Effect.gen(function* () {
    const first = yield* store.create({ id: "k", ...policy })
    const context = yield* store.authenticate(first.secret)
    const reservation = yield* store.reserve(context, "m", { inputTokens: 10, maxOutputTokens: 20 })
    yield* store.delete("k")
    if (again) {
      // The new key of the id spends 5 tokens first: its counters exist when the late settle comes.
      const next = yield* store.authenticate((yield* store.create({ id: "k", ...policy })).secret)
      const own = yield* store.reserve(next, "m", { inputTokens: 2, maxOutputTokens: 3 })
      yield* store.settle(own, { inputTokens: 2, outputTokens: 3 })
    }
    yield* store.settle(reservation, { inputTokens: 10, outputTokens: 15 })
  })

const chargedToNoNewKey = (store: KeyStore.Service) =>
  Effect.gen(function* () {
    yield* lateSettle(store, true)
    // The new key of the id is charged its own request only; the team both (answered to its keys).
    assert.deepStrictEqual(yield* spentOf(store, "k"), [
      ["k", 5, 0],
      ["red", 30, 0],
      ["k/m", 5, 0]
    ])
  })

describe("KeyStore: a late settle of a deleted key, in memory", () => {
  it.effect("a key deleted and created again is not charged its predecessor's request", () =>
    Effect.gen(function* () {
      yield* chargedToNoNewKey(yield* memory())
    })
  )

  it.effect("a KeyContext kept across a delete and a create of its id reserves nothing on the new key", () =>
    Effect.gen(function* () {
      const store = yield* memory()
      const first = yield* store.create({ id: "k", ...policy })
      const kept = yield* store.authenticate(first.secret)
      yield* store.delete("k")
      yield* store.create({ id: "k", ...policy })
      const refused = yield* failure(store.reserve(kept, "m", { inputTokens: 10, maxOutputTokens: 20 }))
      assert.strictEqual(refused.reason, "Unauthorized")
      assert.deepStrictEqual(yield* spentOf(store, "k"), [
        ["k", 0, 0],
        ["red", 0, 0],
        ["k/m", 0, 0]
      ])
    })
  )
})

describe.skipIf(skipRedis)(
  `KeyStore: a late settle of a deleted key, on Redis (${skipRedis ? skipReason : "needs redis-server"})`,
  () => {
    it.live("a settle after the delete leaves nothing of the key in Redis; its team is charged", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const prefix = `${unique("late")}:`
          const { store, redis } = yield* onRedis(server, prefix, 0)
          yield* lateSettle(store, false)
          const left = yield* redis.send<Array<string>>("KEYS", `${prefix}*`)
          assert.deepStrictEqual(left, [`${prefix}budget:team:red:tokens`])
          assert.strictEqual(yield* redis.send<string>("HGET", `${prefix}budget:team:red:tokens`, "spent"), "25")
        })
      )
    )

    it.live("a key deleted and created again is not charged its predecessor's request", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const { store } = yield* onRedis(server, `${unique("again")}:`, 0)
          yield* chargedToNoNewKey(store)
        })
      )
    )

    it.live("a replica that still caches a deleted key reserves nothing on its budget, nor on a new key's", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const prefix = `${unique("cached")}:`
          const { store: admin, redis } = yield* onRedis(server, prefix, 0)
          const { store: replica } = yield* onRedis(server, prefix, 60_000)
          const first = yield* admin.create({ id: "k", ...policy })
          const cached = yield* replica.authenticate(first.secret)
          yield* admin.delete("k")
          const refused = yield* failure(replica.reserve(cached, "m", { inputTokens: 10, maxOutputTokens: 20 }))
          assert.strictEqual(refused.reason, "Unauthorized")
          assert.deepStrictEqual(yield* redis.send<Array<string>>("KEYS", `${prefix}*`), [])
          // Nor once the id is created again.
          yield* admin.create({ id: "k", ...policy })
          const again = yield* failure(replica.reserve(cached, "m", { inputTokens: 10, maxOutputTokens: 20 }))
          assert.strictEqual(again.reason, "Unauthorized")
          assert.deepStrictEqual(yield* spentOf(admin, "k"), [
            ["k", 0, 0],
            ["red", 0, 0],
            ["k/m", 0, 0]
          ])
        })
      )
    )
  }
)
