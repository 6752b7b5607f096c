/**
 * Deleting a key (`KeyAdmin.delete`, `DELETE /admin/keys/:id`): the key, its secret's entry, its
 * budgets and its rate-limit windows go; its id can be created again, from zero. Memory and a real
 * Redis; the admin route over a loopback server.
 */
import { createServer } from "node:http"
import { NodeHttpServer } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Metric, Redacted, Scope } from "effect"
import { HttpRouter, HttpServer } from "effect/http"
import { Redis as PersistenceRedis } from "effect/persistence"
import * as Gateway from "../../src/Gateway.js"
import * as Admin from "../../src/gateway/admin.js"
import type { GatewayError } from "../../src/gateway/errors.js"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import { type Backend, countersOf } from "../../src/gateway/keys/ledger.js"
import * as MemoryBackend from "../../src/gateway/keys/memory.js"
import type { KeyRecord } from "../../src/gateway/keys/options.js"
import * as RedisBackend from "../../src/gateway/keys/redis.js"
import * as Prometheus from "../../src/Prometheus.js"
import * as Redis from "../../src/Redis.js"
import { healthyClient, healthyDeadline, type RedisServer, skipRedis, skipReason, startRedis } from "../utils/redis.js"

const adminSecret = "admin-secret-0123456789abcdef"
const configSecret = "sk-test-config-0123456789abcdef"

let counter = 0
const unique = (label: string) => `${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const failure = <A>(effect: Effect.Effect<A, GatewayError>) => Effect.flip(effect)

const memory = (options: KeyStore.Options) =>
  Effect.map(Layer.build(KeyStore.layerMemory(options)), Context.get(KeyStore.KeyAdmin))

const onRedis = (server: RedisServer, options: KeyStore.RedisOptions) =>
  Effect.gen(function* () {
    const context = yield* Layer.build(
      KeyStore.layerRedis({ prefix: `${unique("del")}:`, redis: { timeout: healthyDeadline }, ...options }).pipe(
        Layer.provideMerge(Redis.layer({ url: server.url, ...healthyClient }))
      )
    )
    return { store: Context.get(context, KeyStore.KeyAdmin), redis: Context.get(context, PersistenceRedis.Redis) }
  })

const policy = { rpm: 1, budget: { tokens: 100 }, modelBudgets: { m: { tokens: 50, period: "1 day" } } }
const configKey = { id: "cfg", sha256: KeyStore.hashSecret(configSecret) }

/** Spends 30 tokens (and the key's one request of this minute) through `secret`. */
const spend30 = (store: KeyStore.Service, secret: Redacted.Redacted<string>) =>
  Effect.gen(function* () {
    const context = yield* store.authenticate(secret)
    const reservation = yield* store.reserve(context, "m", { inputTokens: 10, maxOutputTokens: 20 })
    yield* store.settle(reservation, { inputTokens: 10, outputTokens: 20 })
    return context
  })

const spentOf = (store: KeyStore.Service, id: string) =>
  Effect.map(store.spend(id), (lines) => lines.map((line) => [line.id, line.spent, line.held]))

/** Deletes `k`, then checks it is gone everywhere and that its id starts again from nothing. */
const deletedAndCreatedAgain = (store: KeyStore.Service) =>
  Effect.gen(function* () {
    const first = yield* store.create({ id: "k", ...policy })
    const kept = yield* spend30(store, first.secret)
    assert.deepStrictEqual(yield* spentOf(store, "k"), [
      ["k", 30, 0],
      ["k/m", 30, 0]
    ])

    yield* store.delete("k")
    assert.strictEqual((yield* failure(store.authenticate(first.secret))).code, "invalid_api_key")
    // A KeyContext kept from before spends no more.
    const keptRefused = yield* failure(store.reserve(kept, "m", { inputTokens: 1, maxOutputTokens: 1 }))
    assert.strictEqual(keptRefused.reason, "Unauthorized")
    for (const refused of [
      yield* failure(store.get("k")),
      yield* failure(store.spend("k")),
      yield* failure(store.setDisabled("k", true)),
      yield* failure(store.delete("k"))
    ]) {
      assert.deepStrictEqual(
        [refused.reason, refused.code, Gateway.toWire(refused).status],
        ["NotFound", "key_not_found", 404]
      )
    }
    assert.notInclude(
      (yield* store.list()).data.map((k) => k.id),
      "k"
    )

    // Created again: no spend, and the old key's request of this minute does not count against its rpm of 1.
    const again = yield* store.create({ id: "k", ...policy })
    assert.deepStrictEqual(yield* spentOf(store, "k"), [
      ["k", 0, 0],
      ["k/m", 0, 0]
    ])
    yield* spend30(store, again.secret)
    assert.deepStrictEqual(yield* spentOf(store, "k"), [
      ["k", 30, 0],
      ["k/m", 30, 0]
    ])
    // The old secret stays refused.
    assert.strictEqual((yield* failure(store.authenticate(first.secret))).code, "invalid_api_key")

    const config = yield* failure(store.delete("cfg"))
    assert.deepStrictEqual(
      [config.reason, config.code, Gateway.toWire(config).status],
      ["Forbidden", "key_in_configuration", 403]
    )
    assert.strictEqual((yield* store.authenticate(Redacted.make(configSecret))).id, "cfg")
    for (const bad of ["", "no such id!", "x".repeat(65)]) {
      assert.strictEqual((yield* failure(store.delete(bad))).code, "key_not_found")
    }
  })

/**
 * A backend removes a key only while it is the one of the secret read: the counters it clears are that key's.
 * One deleted and created again meanwhile (another secret) is left with its budget, "changed".
 */
const removesOnlyTheKeyRead = (backend: Backend) =>
  Effect.gen(function* () {
    const record = (sha256: string): KeyRecord => ({
      id: "k",
      name: "k",
      sha256,
      prefix: undefined,
      team: undefined,
      allowedModels: undefined,
      rpm: undefined,
      tpm: undefined,
      budget: { tokens: 100, usd: undefined, periodMs: undefined },
      modelBudgets: undefined,
      disabled: false,
      createdAt: 1,
      source: "store"
    })
    const counters = countersOf("key", "k", undefined, { tokens: 100, usd: undefined, periodMs: undefined }, 0)
    const charge = counters.map((counter) => ({ counter, amount: 40 }))
    assert.strictEqual(yield* backend.insert(record("a".repeat(64)), 10, counters), "inserted")
    assert.strictEqual(yield* backend.remove("k", { sha256: "a".repeat(64) }, counters), "removed")
    assert.strictEqual(yield* backend.insert(record("b".repeat(64)), 10, counters), "inserted")
    yield* backend.reserve("r1", charge, 60_000, 0)
    yield* backend.settle("r1", charge, [40], 0, false)
    // A remove of the key deleted before: the new one, its secret and its spend stay.
    assert.strictEqual(yield* backend.remove("k", { sha256: "a".repeat(64) }, counters), "changed")
    assert.strictEqual((yield* backend.byId("k"))?.sha256, "b".repeat(64))
    assert.strictEqual((yield* backend.byHash("b".repeat(64)))?.id, "k")
    assert.deepStrictEqual((yield* backend.read(counters, 0)).levels, [{ spent: 40, held: 0 }])
    assert.strictEqual(yield* backend.remove("k", { sha256: "b".repeat(64) }, counters), "removed")
    assert.deepStrictEqual((yield* backend.read(counters, 0)).levels, [{ spent: 0, held: 0 }])
    assert.strictEqual(yield* backend.remove("k", { sha256: "b".repeat(64) }, counters), "missing")
  })

describe("KeyStore: deleting a key, in memory", () => {
  it.effect("the backend removes only the key it was asked for, not one created again since", () =>
    removesOnlyTheKeyRead(MemoryBackend.make())
  )

  it.effect("its secret, id, budgets and rate limits go; the id can be created again from zero", () =>
    Effect.gen(function* () {
      yield* deletedAndCreatedAgain(yield* memory({ keys: [configKey] }))
    })
  )

  it.effect('a key created without an id nor a name is named by the id made for it, not "unnamed"', () =>
    Effect.gen(function* () {
      const store = yield* memory({})
      const made = yield* store.create({})
      assert.match(made.key.id, /^key-/)
      assert.strictEqual(made.key.name, made.key.id)
      assert.strictEqual((yield* store.get(made.key.id)).name, made.key.id)
      assert.strictEqual((yield* store.create({ name: "Support bot" })).key.name, "Support bot")
      assert.strictEqual((yield* store.create({ id: "given" })).key.name, "given")
    })
  )

  it.effect("a request in flight that settles after its key was deleted or disabled brings back no series of it", () =>
    Effect.gen(function* () {
      const registry: Metric.MetricRegistry = new Map()
      const series = (id: string) =>
        Prometheus.formatUnsafe(Context.add(Context.empty(), Metric.MetricRegistry, registry) as Context.Context<never>)
          .split("\n")
          .filter((l) => l.startsWith("orchestra_gateway_budget_remaining{") && l.includes(`key="${id}"`))
      const store = yield* memory({}).pipe(Effect.provideService(Metric.MetricRegistry, registry))
      for (const [id, end] of [
        [unique("deleted"), (id: string) => store.delete(id)],
        [unique("disabled"), (id: string) => Effect.asVoid(store.setDisabled(id, true))]
      ] as const) {
        const made = yield* store.create({ id, budget: { tokens: 100 } })
        const context = yield* store.authenticate(made.secret)
        const reservation = yield* store.reserve(context, "m", { inputTokens: 10, maxOutputTokens: 20 })
        assert.strictEqual(series(id).length, 1)
        yield* end(id)
        assert.deepStrictEqual(series(id), [])
        yield* store.settle(reservation, { inputTokens: 10, outputTokens: 5 })
        assert.deepStrictEqual(series(id), [])
      }
      // Enabled again, its series comes back with its next request.
      const disabled = (yield* store.list()).data.find((k) => k.disabled)!.id
      yield* store.setDisabled(disabled, false)
      yield* store.reserve(yield* store.get(disabled).pipe(Effect.as({ id: disabled })), "m", {
        inputTokens: 1,
        maxOutputTokens: 1
      })
      assert.strictEqual(series(disabled).length, 1)
    })
  )

  it.effect("a deleted key frees its place under maxKeys", () =>
    Effect.gen(function* () {
      const store = yield* memory({ maxKeys: 1 })
      yield* store.create({ id: "a" })
      assert.strictEqual((yield* failure(store.create({ id: "b" }))).code, "too_many_keys")
      yield* store.delete("a")
      assert.strictEqual((yield* store.create({ id: "b" })).key.id, "b")
    })
  )
})

describe.skipIf(skipRedis)(
  `KeyStore: deleting a key, on Redis (${skipRedis ? skipReason : "needs redis-server"})`,
  () => {
    it.live("the backend removes only the key it was asked for, not one created again since", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const settings = yield* Effect.fromResult(Redis.guardSettings({ timeout: healthyDeadline }))
          const redis = yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient }))
          const backend = yield* Effect.gen(function* () {
            const guard = yield* Redis.makeGuard({ store: "test-keys", settings })
            return yield* RedisBackend.make({ prefix: `${unique("backend")}:`, guard, leaseMs: 60_000 })
          }).pipe(Effect.provideContext(redis))
          yield* removesOnlyTheKeyRead(backend)
        })
      )
    )

    it.live(
      "a stored key this version cannot read (a 500 for its holder) can be deleted, and its id created again",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const prefix = `${unique("unreadable")}:`
            const { store, redis } = yield* onRedis(server, { prefix, cacheTtl: 0 })
            const first = yield* store.create({ id: "k9", ...policy })
            yield* spend30(store, first.secret)
            // A newer version's record: its rpm is no longer a number.
            const json = yield* redis.send<string>("HGET", `${prefix}keys`, "k9")
            yield* redis.send("HSET", `${prefix}keys`, "k9", JSON.stringify({ ...JSON.parse(json), rpm: "lots" }))
            assert.strictEqual((yield* failure(store.get("k9"))).code, "key_record_unreadable")

            yield* store.delete("k9")
            assert.strictEqual((yield* failure(store.get("k9"))).code, "key_not_found")
            assert.strictEqual((yield* failure(store.authenticate(first.secret))).code, "invalid_api_key")
            assert.strictEqual((yield* failure(store.delete("k9"))).code, "key_not_found")
            assert.strictEqual(yield* redis.send<number>("HLEN", `${prefix}hashes`), 0)
            assert.strictEqual(yield* redis.send<number>("ZCARD", `${prefix}ids`), 0)
            yield* store.create({ id: "k9", ...policy })
            assert.deepStrictEqual(yield* spentOf(store, "k9"), [
              ["k9", 0, 0],
              ["k9/m", 0, 0]
            ])
          })
        )
    )

    it.live("a key whose record is not even JSON, deleted: its secret is not taken for a new key of its id", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const prefix = `${unique("corrupt")}:`
          const { store, redis } = yield* onRedis(server, { prefix, cacheTtl: 0 })
          const first = yield* store.create({ id: "k8", ...policy })
          yield* redis.send("HSET", `${prefix}keys`, "k8", "{ not json")
          yield* store.delete("k8")
          const again = yield* store.create({ id: "k8", ...policy })
          assert.strictEqual((yield* failure(store.authenticate(first.secret))).code, "invalid_api_key")
          assert.strictEqual((yield* store.authenticate(again.secret)).id, "k8")
        })
      )
    )

    it.live("a key deleted while a listing adds old keys to the index of ids is not added back to it", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const prefix = `${unique("index")}:`
          const settings = yield* Effect.fromResult(Redis.guardSettings({ timeout: healthyDeadline }))
          const context = yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient }))
          const real = Context.get(context, PersistenceRedis.Redis)
          const make = (redis: PersistenceRedis.Redis["Service"]) =>
            Effect.gen(function* () {
              const guard = yield* Redis.makeGuard({ store: "test-keys", settings })
              return yield* RedisBackend.make({ prefix, guard, leaseMs: 60_000 })
            }).pipe(Effect.provideService(PersistenceRedis.Redis, redis))
          const admin = yield* make(real)
          const sha = (id: string) => KeyStore.hashSecret(id)
          for (const id of ["a", "gone", "z"]) {
            const record: KeyRecord = {
              id,
              name: id,
              sha256: sha(id),
              prefix: undefined,
              team: undefined,
              allowedModels: undefined,
              rpm: undefined,
              tpm: undefined,
              budget: undefined,
              modelBudgets: undefined,
              disabled: false,
              createdAt: 1,
              source: "store"
            }
            assert.strictEqual(yield* admin.insert(record, 10, []), "inserted")
          }
          // Keys of a version that kept no index of ids.
          yield* real.send("DEL", `${prefix}ids`)
          // "gone" is deleted by another admin between the listing's HSCAN and its adding of what it found.
          const listing = yield* make({
            ...real,
            send: <A>(command: string, ...args: ReadonlyArray<string>) =>
              command === "HSCAN"
                ? Effect.tap(real.send<A>(command, ...args), () =>
                    Effect.orDie(admin.remove("gone", { sha256: sha("gone") }, []))
                  )
                : real.send<A>(command, ...args)
          })
          const page = yield* listing.page(undefined, 10)
          assert.deepStrictEqual(
            page.records.map((r) => r.id),
            ["a", "z"]
          )
          assert.deepStrictEqual(yield* real.send<Array<string>>("ZRANGE", `${prefix}ids`, "0", "-1"), ["a", "z"])
        })
      )
    )

    it.live("its secret, id, budgets and rate limits go; the id can be created again from zero", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const prefix = `${unique("gone")}:`
          const { store, redis } = yield* onRedis(server, { prefix, keys: [configKey], cacheTtl: 0 })
          yield* deletedAndCreatedAgain(store)
          yield* store.delete("k")
          // Nothing of the id is left in Redis: no record, no hash, no index entry, no budget, no rate-limit window.
          const left = yield* redis.send<Array<string>>("KEYS", `${prefix}*`)
          assert.deepStrictEqual(left, [])
        })
      )
    )

    it.live("a key removed by hand leaves its spend and its disabled mark: a new key of its id inherits neither", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const prefix = `${unique("hand")}:`
          const { store, redis } = yield* onRedis(server, { prefix, cacheTtl: 0 })
          const first = yield* store.create({ id: "k", ...policy })
          yield* spend30(store, first.secret)
          yield* store.setDisabled("k", true)
          yield* redis.send("HDEL", `${prefix}keys`, "k")
          yield* redis.send("HDEL", `${prefix}hashes`, KeyStore.hashSecret(first.secret))
          yield* redis.send("ZREM", `${prefix}ids`, "k")
          const again = yield* store.create({ id: "k", ...policy })
          assert.deepStrictEqual(yield* spentOf(store, "k"), [
            ["k", 0, 0],
            ["k/m", 0, 0]
          ])
          // Nor its being disabled (the answer said it was not), nor its minute's request against rpm 1.
          assert.strictEqual(again.key.disabled, false)
          assert.strictEqual((yield* store.get("k")).disabled, false)
          yield* spend30(store, again.secret)
        })
      )
    )

    it.live(
      "concurrent deletes of one key: one deletes it, the others answer 404; a disable racing them never revives it",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const prefix = `${unique("race")}:`
            const { store, redis } = yield* onRedis(server, { prefix, cacheTtl: 0 })
            const other = yield* onRedis(server, { prefix, cacheTtl: 0 })
            yield* store.create({ id: "k", ...policy })
            const outcomes = yield* Effect.all(
              Array.from({ length: 20 }, (_, i) =>
                Effect.exit(
                  i % 4 === 3 ? other.store.setDisabled("k", true) : (i % 2 === 0 ? store : other.store).delete("k")
                )
              ),
              { concurrency: "unbounded" }
            )
            const deletes = outcomes.filter((_, i) => i % 4 !== 3)
            assert.strictEqual(deletes.filter(Exit.isSuccess).length, 1)
            for (const exit of [...outcomes]) {
              if (Exit.isFailure(exit)) {
                const error = Exit.findErrorOption(exit)
                assert.strictEqual(error._tag === "Some" ? error.value.code : undefined, "key_not_found")
              }
            }
            assert.strictEqual((yield* failure(store.get("k"))).code, "key_not_found")
            assert.strictEqual(yield* redis.send<number>("HLEN", `${prefix}disabled`), 0)
            assert.strictEqual((yield* store.create({ id: "k" })).key.disabled, false)
          })
        )
    )
  }
)

/** The admin routes on their own server over `store`. */
const adminServer = (store: KeyStore.Service) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    const app = HttpRouter.serve(Admin.layer({ key: Redacted.make(adminSecret) }), {
      disableLogger: true,
      disableListenLog: true
    }).pipe(
      Layer.provide(Layer.succeed(KeyStore.KeyAdmin, store)),
      Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" }))
    )
    const context = yield* Layer.buildWithScope(app, scope).pipe(Effect.orDie)
    const address = Context.get(context, HttpServer.HttpServer).address as { readonly port: number }
    return (path: string, init: { method?: string; admin?: string | false } = {}) =>
      Effect.promise(async () => {
        const headers: Record<string, string> = {}
        if (init.admin !== false) headers.authorization = `Bearer ${init.admin ?? adminSecret}`
        const response = await fetch(`http://127.0.0.1:${address.port}${path}`, {
          method: init.method ?? "GET",
          headers
        })
        // biome-ignore lint/suspicious/noExplicitAny: the test reads whatever JSON the route answers
        return { status: response.status, headers: response.headers, body: (await response.json()) as any }
      })
  })

describe("Admin: DELETE /admin/keys/:id", () => {
  it.live(
    "deletes a created key (200, deleted: true); 404 for an unknown id, 403 for the configuration's, 401 without the admin key",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const store = yield* memory({ keys: [configKey] })
          const ask = yield* adminServer(store)
          const created = yield* store.create({ id: "k" })

          const unauthorized = yield* ask("/admin/keys/k", { method: "DELETE", admin: false })
          assert.strictEqual(unauthorized.status, 401)
          assert.strictEqual((yield* store.get("k")).id, "k")

          const deleted = yield* ask("/admin/keys/k", { method: "DELETE" })
          assert.deepStrictEqual([deleted.status, deleted.body], [200, { id: "k", object: "key", deleted: true }])
          assert.match(deleted.headers.get("x-request-id") ?? "", /^req_/)
          assert.strictEqual((yield* failure(store.authenticate(created.secret))).code, "invalid_api_key")

          const again = yield* ask("/admin/keys/k", { method: "DELETE" })
          assert.deepStrictEqual(
            [again.status, again.body.error.code, again.body.error.param],
            [404, "key_not_found", "id"]
          )
          const config = yield* ask("/admin/keys/cfg", { method: "DELETE" })
          assert.deepStrictEqual([config.status, config.body.error.code], [403, "key_in_configuration"])

          // The key's path takes DELETE: a wrong method there names it in Allow.
          const wrong = yield* ask("/admin/keys/k", { method: "PUT" })
          assert.deepStrictEqual([wrong.status, wrong.headers.get("allow")], [405, "GET, HEAD, DELETE"])
          // No DELETE of the whole collection.
          const collection = yield* ask("/admin/keys", { method: "DELETE" })
          assert.deepStrictEqual([collection.status, collection.headers.get("allow")], [405, "GET, HEAD, POST"])
        })
      )
  )
})
