/**
 * A `KeyContext` is no ticket to spend: `reserve` goes by the key's record as the store has it
 * now. A context an application built itself, or one `authenticate` gave and the application
 * kept across a disable of its key, is refused as `authenticate` refuses the key (401
 * `key_disabled`), and a model its record does not allow is a 403, for keys of the
 * configuration, in memory and on Redis; on another replica within the documented bound.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Context, Effect, Layer, Redacted } from "effect"
import { TestClock } from "effect/testing"
import type { GatewayError } from "../../src/gateway/errors.js"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import { Redis as PersistenceRedis } from "effect/persistence"
import * as Redis from "../../src/Redis.js"
import { healthyClient, healthyDeadline, type RedisServer, skipRedis, skipReason, startRedis } from "../utils/redis.js"

const secretA = "sk-context-alpha-0123456789abcdef"
const secretB = "sk-context-beta-0123456789abcdef"

const failure = <A>(effect: Effect.Effect<A, GatewayError>) => Effect.flip(effect)
const estimate = { inputTokens: 10, maxOutputTokens: 10 }

const memory = (options: KeyStore.Options) =>
  Effect.map(Layer.build(KeyStore.layerMemory(options)), Context.get(KeyStore.KeyAdmin))

const onRedis = (server: RedisServer, options: KeyStore.RedisOptions) =>
  Effect.map(
    Layer.build(
      KeyStore.layerRedis({ ...options, redis: { timeout: healthyDeadline } }).pipe(
        Layer.provide(Redis.layer({ url: server.url, ...healthyClient }))
      )
    ),
    Context.get(KeyStore.KeyAdmin)
  )

const refusedAsDisabled = (error: GatewayError) => {
  assert.strictEqual(error.reason, "Unauthorized")
  assert.strictEqual(error.code, "key_disabled")
}

describe("KeyStore: reserve goes by the key's record now, not by the KeyContext it is given", () => {
  it.effect("a context built by the application for a disabled key of the configuration is refused", () =>
    Effect.gen(function* () {
      const store = yield* memory({
        keys: [
          { id: "off", sha256: KeyStore.hashSecret(secretB), disabled: true, budget: { tokens: 1000 } },
          { id: "on", sha256: KeyStore.hashSecret(secretA), allowedModels: ["d-a"], budget: { tokens: 1000 } }
        ]
      })
      refusedAsDisabled(yield* failure(store.reserve({ id: "off" }, "d-a", estimate)))
      // The record's allowedModels, not the context's.
      const forbidden = yield* failure(store.reserve({ id: "on", allowedModels: ["*"] }, "d-b", estimate))
      assert.deepStrictEqual([forbidden.reason, forbidden.code], ["Forbidden", "model_not_allowed"])
      yield* store.release(yield* store.reserve({ id: "on" }, "d-a", estimate))
      const unknown = yield* failure(store.reserve({ id: "nobody" }, "d-a", estimate))
      assert.strictEqual(unknown.code, "invalid_api_key")
    })
  )

  it.effect(
    "in memory: a created key disabled is refused at once, built or kept from authenticate; enabled again, spends",
    () =>
      Effect.gen(function* () {
        const store = yield* memory({})
        const created = yield* store.create({ id: "k1", allowedModels: ["d-a"], budget: { tokens: 1000 } })
        const kept = yield* store.authenticate(created.secret)
        yield* store.release(yield* store.reserve(kept, "d-a", estimate))
        yield* store.setDisabled("k1", true)
        refusedAsDisabled(yield* failure(store.reserve(kept, "d-a", estimate)))
        refusedAsDisabled(yield* failure(store.reserve({ id: "k1" }, "d-a", estimate)))
        const forbidden = yield* failure(store.reserve({ id: "k1", allowedModels: ["*"] }, "d-b", estimate))
        assert.strictEqual(forbidden.code, "key_disabled")
        yield* store.setDisabled("k1", false)
        yield* store.release(yield* store.reserve(kept, "d-a", estimate))
        assert.deepStrictEqual(
          (yield* store.spend("k1")).map((line) => [line.spent, line.held]),
          [[0, 0]]
        )
      })
  )
})

/**
 * Two replicas of one store on `server` (a fresh prefix, cacheTtl 2 s); the second's time is a
 * TestClock, so its cache and the bound of a disable move only when told.
 */
const replicas = (server: RedisServer) =>
  Effect.gen(function* () {
    const prefix = `ctx-${Math.random().toString(36).slice(2, 10)}:`
    const options: KeyStore.RedisOptions = { prefix, cacheTtl: "2 seconds" }
    const one = yield* onRedis(server, options)
    const clock = yield* TestClock.make()
    const two = yield* Effect.provideService(onRedis(server, options), Clock.Clock, clock)
    return { prefix, one, two, clock }
  })

describe.skipIf(skipRedis)(
  `KeyStore on Redis: a kept context (${skipRedis ? skipReason : "needs redis-server"})`,
  () => {
    it.live(
      "disabled through this replica: refused at once; through another: at once with a budget, else within cacheTtl + 1 s (TestClock)",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const { one, two, clock } = yield* replicas(server)

            const first = yield* one.create({ id: "r1", budget: { tokens: 1000 } })
            const second = yield* one.create({ id: "r2", budget: { tokens: 1000 } })
            const keptOne = yield* one.authenticate(first.secret)
            yield* one.release(yield* one.reserve(keptOne, "d-a", estimate))
            yield* one.setDisabled("r1", true)
            refusedAsDisabled(yield* failure(one.reserve(keptOne, "d-a", estimate)))
            refusedAsDisabled(yield* failure(one.reserve({ id: "r1" }, "d-a", estimate)))
            // Built by the application: read from Redis, refused at once on any replica.
            refusedAsDisabled(yield* failure(two.reserve({ id: "r1" }, "d-a", estimate)))

            const keptTwo = yield* two.authenticate(second.secret)
            yield* one.setDisabled("r2", true)
            // A budgeted request: its reserve, one script on Redis, finds the key disabled, at once.
            refusedAsDisabled(yield* failure(two.reserve(keptTwo, "d-a", estimate)))
            refusedAsDisabled(yield* failure(two.authenticate(second.secret)))

            // A key without a budget reserves nothing on Redis: within the bound, the replica that did not
            // disable it still trusts what it read.
            const third = yield* one.create({ id: "r3" })
            const keptThird = yield* two.authenticate(third.secret)
            yield* one.setDisabled("r3", true)
            yield* clock.adjust("2999 millis")
            yield* two.release(yield* two.reserve(keptThird, "d-a", estimate))
            yield* clock.adjust("1 millis")
            refusedAsDisabled(yield* failure(two.reserve(keptThird, "d-a", estimate)))
            refusedAsDisabled(yield* failure(two.authenticate(third.secret)))

            // Enabled again: the kept context spends again once the replica reads it.
            yield* one.setDisabled("r2", false)
            yield* clock.adjust("3 seconds")
            yield* two.release(yield* two.reserve(keptTwo, "d-a", estimate))
            const spend = yield* one.spend("r2")
            assert.deepStrictEqual(
              spend.map((line) => [line.spent, line.held]),
              [[0, 0]]
            )
          })
        )
    )

    it.live(
      "a created key whose id the configuration took later is refused, not spent on the configured key's counters",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const prefix = `ctx-${Math.random().toString(36).slice(2, 10)}:`
            const before = yield* onRedis(server, { prefix, cacheTtl: 0 })
            const created = yield* before.create({ id: "shared-id", budget: { tokens: 1_000_000 } })
            // The configuration defines the id afterwards, for another secret and a smaller budget.
            const after = yield* onRedis(server, {
              prefix,
              cacheTtl: 0,
              keys: [{ id: "shared-id", sha256: KeyStore.hashSecret(secretA), budget: { tokens: 100 } }]
            })
            // Admins cannot disable it there (a key of the configuration), nor see it: it must not spend.
            assert.strictEqual((yield* failure(after.setDisabled("shared-id", true))).reason, "Forbidden")
            refusedAsDisabled(yield* failure(after.authenticate(created.secret)))
            yield* after.authenticate(Redacted.make(secretA))
          })
        )
    )

    it.live("a stored record that says it is of the configuration is no less disabled for a kept context", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const { prefix, one, two, clock } = yield* replicas(server)
          const created = yield* one.create({ id: "edited", budget: { tokens: 1000 } })
          // Edited by hand (or by another version): its JSON says "source": "config".
          const redis = Context.get(
            yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
            PersistenceRedis.Redis
          )
          const json = yield* redis.send<string>("HGET", `${prefix}keys`, "edited")
          yield* redis.send(
            "HSET",
            `${prefix}keys`,
            "edited",
            JSON.stringify({ ...JSON.parse(json), source: "config" })
          )
          const kept = yield* two.authenticate(created.secret)
          yield* one.setDisabled("edited", true)
          yield* clock.adjust("3 seconds")
          refusedAsDisabled(yield* failure(two.reserve(kept, "d-a", estimate)))
        })
      )
    )
  }
)
