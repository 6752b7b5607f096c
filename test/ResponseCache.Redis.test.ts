import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Logger, Metric, Option, Ref, Schedule } from "effect"
import { Redis } from "ioredis"
import { cacheErrors } from "../src/internal/resilienceMetrics.js"
import type { GenerateRequest, GenerateResponse } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as RedisCache from "../src/ResponseCache/Redis.js"
import { type RedisServer, skipRedis, skipReason, startRedis } from "./utils/redis.js"

let counter = 0
const uniqueName = (label: string) => `redis-${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const response = (text: string): GenerateResponse => ({
  text,
  finishReason: "stop",
  usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
  provider: "mock",
  model: "mock-model"
})

/** A plain client to look inside the server. */
const admin = (server: RedisServer) =>
  Effect.acquireRelease(
    Effect.sync(() => new Redis(server.url, { lazyConnect: false })),
    (client) => Effect.sync(() => client.disconnect())
  )

const errorsOf = (name: string) => Effect.map(Metric.value(Metric.tagged(cacheErrors, "cache", name)), (s) => s.count)

/** Builds the cache in the current scope, capturing log lines. */
const redisCache = (server: RedisServer, options: RedisCache.Options = {}) =>
  Effect.gen(function* () {
    const name = options.name ?? uniqueName("cache")
    const store = yield* RedisCache.makeStore({ url: server.url, prefix: `${name}:`, ...options, name })
    const cache = yield* ResponseCache.make(store, options)
    return { cache, name }
  })

const captureLogs = Effect.gen(function* () {
  const lines = yield* Ref.make<ReadonlyArray<string>>([])
  const logger = Logger.make(({ logLevel, message }) => {
    const text = Array.isArray(message) ? message.join(" ") : String(message)
    Effect.runSync(Ref.update(lines, (all) => [...all, `${logLevel.label}: ${text}`]))
  })
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
})

const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.map(Effect.timed(effect), ([d, a]) => [Duration.toMillis(d), a] as const)

describe.skipIf(skipRedis)(
  `ResponseCache.Redis (needs redis-server; ${skipRedis ? skipReason : "apt-get install -y redis-server if missing"})`,
  () => {
    it.live("round trip: a stored answer comes back, with the TTL set through Redis expiry", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          // A generous command timeout: this test is about the round trip, not the bounded wait
          // (a loaded CI machine can take more than the default 50 ms for the first commands).
          const { cache, name } = yield* redisCache(server, {
            ttl: "2 seconds",
            staleFor: "1 second",
            timeout: "2 seconds"
          })
          yield* cache.set("k", response("hello"))
          const found = yield* cache.get("k")
          assert.deepStrictEqual(found, Option.some({ value: response("hello"), stale: false }))
          const client = yield* admin(server)
          const ttl = yield* Effect.promise(() => client.pttl(`${name}:r:k`))
          assert.isTrue(ttl > 2000 && ttl <= 3000, `PX covers ttl + staleFor, got ${ttl}`)
          const raw = yield* Effect.promise(() => client.get(`${name}:r:k`))
          assert.strictEqual(JSON.parse(raw ?? "{}").value.response.text, "hello")
          yield* cache.invalidate("k")
          assert.isTrue(Option.isNone(yield* cache.get("k")))
          assert.strictEqual(yield* errorsOf(name), 0)
          // A value that does not decode (another version wrote it) is a miss, counted as an error.
          yield* Effect.promise(() => client.set(`${name}:r:bad`, JSON.stringify({ value: { _tag: "Response" } })))
          assert.isTrue(Option.isNone(yield* cache.get("bad")))
          assert.strictEqual(yield* errorsOf(name), 1)
        })
      )
    )

    it.live("batch get/set: one MGET for many keys, one pipeline for many writes", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const { cache } = yield* redisCache(server, { timeout: "2 seconds" })
          const client = yield* admin(server)
          yield* Effect.promise(() => client.config("RESETSTAT"))
          yield* cache.setMany(Array.from({ length: 20 }, (_, i) => ({ key: `k${i}`, value: response(`v${i}`) })))
          const found = yield* cache.getMany(["k3", "nope", "k0", "k19"])
          assert.deepStrictEqual(
            found.map((o) => Option.map(o, (h) => h.value.text)),
            [Option.some("v3"), Option.none(), Option.some("v0"), Option.some("v19")]
          )
          const stats = yield* Effect.promise(() => client.info("commandstats"))
          assert.match(stats, /cmdstat_mget:calls=1,/)
          assert.match(stats, /cmdstat_set:calls=20,/)
          assert.notMatch(stats, /cmdstat_get:/)
        })
      )
    )

    it.live("single-flight per process: 10 concurrent identical requests make one provider call", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const { cache } = yield* redisCache(server)
          const { control, provider } = yield* Mock.make({ latency: "30 millis" })
          const request: GenerateRequest = { prompt: "same" }
          const key = ResponseCache.key({ provider: provider.name, request })
          const results = yield* Effect.all(
            Array.from({ length: 10 }, () => cache.getOrCompute(key, provider.generate(request))),
            { concurrency: "unbounded" }
          )
          assert.strictEqual(yield* control.calls, 1)
          assert.strictEqual(new Set(results.map((r) => r.text)).size, 1)
          // Right after the answer the write may still be under way: the next call joins the
          // finished flight ("shared") or reads Redis ("hit"); either way no provider call.
          assert.include(["hit", "shared"], (yield* cache.getOrComputeDetailed(key, provider.generate(request))).source)
          assert.strictEqual(yield* control.calls, 1)
        })
      )
    )

    it.live("Redis killed mid-run: requests still succeed, one warning, and the cache comes back on restart", () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        const body = Effect.gen(function* () {
          const server = yield* startRedis
          const { cache, name } = yield* redisCache(server, { reconnectMax: "100 millis" })
          const { control, provider } = yield* Mock.make({ latency: "5 millis" })
          const ask = (prompt: string) => {
            const request: GenerateRequest = { prompt }
            return cache.getOrComputeDetailed(
              ResponseCache.key({ provider: provider.name, request }),
              provider.generate(request)
            )
          }
          assert.strictEqual((yield* ask("a")).source, "computed")
          assert.include(["hit", "shared"], (yield* ask("a")).source)
          assert.strictEqual(yield* control.calls, 1)

          yield* server.kill
          const during = yield* Effect.forEach(["a", "b", "c", "a", "b"], (p) => timed(ask(p)))
          for (const [ms, result] of during) {
            assert.strictEqual(result.source, "computed", "without Redis every call goes to the provider")
            assert.isTrue(ms < 500, `a call waited ${ms} ms for a dead Redis`)
          }
          assert.strictEqual(yield* control.calls, 6)
          assert.isTrue((yield* errorsOf(name)) >= 5)
          const warnings = (yield* Ref.get(logs.lines)).filter((l) => l.includes("unavailable"))
          assert.strictEqual(warnings.length, 1, `one warning per outage, got ${JSON.stringify(warnings)}`)

          yield* server.start
          // ioredis reconnects in the background; the cache works again without any action.
          yield* cache.set("probe", response("p")).pipe(
            Effect.zipRight(cache.get("probe")),
            Effect.flatMap((o) => (Option.isSome(o) ? Effect.void : Effect.fail("not yet"))),
            Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("5 seconds")))
          )
          assert.strictEqual((yield* ask("d")).source, "computed")
          const callsBefore = yield* control.calls
          assert.include(["hit", "shared"], (yield* ask("d")).source)
          assert.strictEqual(yield* control.calls, callsBefore)
          const lines = yield* Ref.get(logs.lines)
          assert.isTrue(
            lines.some((l) => l.includes("is back")),
            JSON.stringify(lines)
          )
        })
        yield* Effect.scoped(body).pipe(Effect.provide(logs.layer))
      })
    )

    it.live("a hung Redis costs a call at most the bounded wait of one lookup", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const { cache, name } = yield* redisCache(server, { timeout: "50 millis" })
          const { provider } = yield* Mock.make()
          yield* server.pause
          const request: GenerateRequest = { prompt: "hung" }
          const [ms, result] = yield* timed(
            cache.getOrComputeDetailed(
              ResponseCache.key({ provider: provider.name, request }),
              provider.generate(request)
            )
          )
          // The write happens after the answer was delivered; give it its 50 ms, then resume.
          yield* Effect.sleep("150 millis")
          yield* server.resume
          assert.strictEqual(result.source, "computed")
          assert.isTrue(ms >= 45 && ms < 300, `the lookup is bounded by 50 ms, the call took ${ms} ms`)
          assert.strictEqual(yield* errorsOf(name), 2, "lookup and write both timed out")
        })
      )
    )

    it.live("closing the scope releases the client", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const client = yield* admin(server)
          const clients = Effect.map(
            Effect.promise(() => client.client("LIST") as Promise<string>),
            (list) => list.trim().split("\n").length
          )
          const before = yield* clients
          yield* Effect.scoped(
            Effect.gen(function* () {
              const { cache } = yield* redisCache(server)
              yield* cache.set("k", response("x"))
              assert.strictEqual(yield* clients, before + 1)
            })
          )
          yield* Effect.sleep("50 millis")
          assert.strictEqual(yield* clients, before)
        })
      )
    )
  }
)
