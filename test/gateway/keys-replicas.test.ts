/**
 * A key disabled or deleted through one replica of a Redis store, while another still caches it (a long
 * `cacheTtl`): the other's next budgeted request is refused at once, since its reserve checks the key in the
 * same script that holds the amounts; that replica reads the key again from then on, and its budget gauges of
 * the key go, as the replica that disabled or deleted it removes its own.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Context, Effect, Layer, Metric } from "effect"
import { TestClock } from "effect/testing"
import * as Prometheus from "../../src/Prometheus.js"
import type { GatewayError } from "../../src/gateway/errors.js"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import * as Redis from "../../src/Redis.js"
import { healthyClient, healthyDeadline, type RedisServer, skipRedis, skipReason, startRedis } from "../utils/redis.js"

const estimate = { inputTokens: 10, maxOutputTokens: 10 }

const onRedis = (server: RedisServer, prefix: string, registry: Metric.MetricRegistry) =>
  Effect.map(
    Layer.build(
      KeyStore.layerRedis({
        prefix,
        // Far longer than the test: only the reserve's own check can refuse the key.
        cacheTtl: "1 hour",
        teams: { blue: { budget: { tokens: 10_000 } } },
        redis: { timeout: healthyDeadline }
      }).pipe(Layer.provide(Redis.layer({ url: server.url, ...healthyClient })))
    ),
    Context.get(KeyStore.KeyAdmin)
  ).pipe(Effect.provideService(Metric.MetricRegistry, registry))

const seriesOf = (registry: Metric.MetricRegistry, id: string): ReadonlyArray<string> =>
  Prometheus.formatUnsafe(Context.add(Context.empty(), Metric.MetricRegistry, registry) as Context.Context<never>)
    .split("\n")
    .filter((l) => l.startsWith("orchestra_gateway_budget_remaining{") && l.includes(`key="${id}"`))

const failure = <A>(effect: Effect.Effect<A, GatewayError>) => Effect.flip(effect)

describe.skipIf(skipRedis)(`KeyStore on Redis: replicas (${skipRedis ? skipReason : "needs redis-server"})`, () => {
  it.live(
    "a key disabled through one replica is refused at once by another that caches it (its own budget or its team's only), its gauges gone; enabled again, it spends and shows again",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const prefix = `rep-${Math.random().toString(36).slice(2, 10)}:`
          const oneRegistry: Metric.MetricRegistry = new Map()
          const twoRegistry: Metric.MetricRegistry = new Map()
          const one = yield* onRedis(server, prefix, oneRegistry)
          const two = yield* onRedis(server, prefix, twoRegistry)
          const own = yield* one.create({ id: "own", budget: { tokens: 1000 } })
          const team = yield* one.create({ id: "team-only", team: "blue" })
          const keptOwn = yield* two.authenticate(own.secret)
          const keptTeam = yield* two.authenticate(team.secret)
          yield* two.release(yield* two.reserve(keptOwn, "d-a", estimate))
          yield* two.release(yield* two.reserve(keptTeam, "d-a", estimate))
          assert.lengthOf(seriesOf(twoRegistry, "own"), 1)
          assert.lengthOf(seriesOf(twoRegistry, "team-only"), 1)

          yield* one.setDisabled("own", true)
          yield* one.setDisabled("team-only", true)
          for (const [kept, made] of [
            [keptOwn, own],
            [keptTeam, team]
          ] as const) {
            const refused = yield* failure(two.reserve(kept, "d-a", estimate))
            assert.deepStrictEqual([refused.reason, refused.code], ["Unauthorized", "key_disabled"])
            // Read again from the store from then on: its secret too is refused at once.
            assert.strictEqual((yield* failure(two.authenticate(made.secret))).code, "key_disabled")
          }
          assert.deepStrictEqual(seriesOf(twoRegistry, "own"), [])
          assert.deepStrictEqual(seriesOf(twoRegistry, "team-only"), [])
          // Nothing was held for them.
          assert.deepStrictEqual(
            (yield* one.spend("own")).map((line) => [line.spent, line.held]),
            [[0, 0]]
          )

          // Enabled again (here through the replica itself: another's enable reaches it within cacheTtl).
          yield* two.setDisabled("own", false)
          const again = yield* two.authenticate(own.secret)
          yield* two.release(yield* two.reserve(again, "d-a", estimate))
          assert.lengthOf(seriesOf(twoRegistry, "own"), 1)
        })
      )
  )

  it.live(
    "a key deleted through one replica is refused at once by another that caches it, its gauges gone there too",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const prefix = `rep-${Math.random().toString(36).slice(2, 10)}:`
          const oneRegistry: Metric.MetricRegistry = new Map()
          const twoRegistry: Metric.MetricRegistry = new Map()
          const one = yield* onRedis(server, prefix, oneRegistry)
          const two = yield* onRedis(server, prefix, twoRegistry)
          const team = yield* one.create({ id: "gone", team: "blue" })
          const kept = yield* two.authenticate(team.secret)
          yield* two.release(yield* two.reserve(kept, "d-a", estimate))
          assert.lengthOf(seriesOf(twoRegistry, "gone"), 1)
          yield* one.delete("gone")
          const refused = yield* failure(two.reserve(kept, "d-a", estimate))
          assert.deepStrictEqual([refused.reason, refused.code], ["Unauthorized", "invalid_api_key"])
          assert.deepStrictEqual(seriesOf(twoRegistry, "gone"), [])
          assert.strictEqual((yield* failure(two.authenticate(team.secret))).code, "invalid_api_key")
        })
      )
  )

  it.live(
    "a key deleted or disabled through one replica, never used again on another, loses its gauges there within 30 s (TestClock)",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const prefix = `rep-${Math.random().toString(36).slice(2, 10)}:`
          const oneRegistry: Metric.MetricRegistry = new Map()
          const twoRegistry: Metric.MetricRegistry = new Map()
          const one = yield* onRedis(server, prefix, oneRegistry)
          const clock = yield* TestClock.make()
          const two = yield* Effect.provideService(onRedis(server, prefix, twoRegistry), Clock.Clock, clock)
          for (const id of ["deleted", "disabled", "kept"]) {
            const made = yield* one.create({ id, budget: { tokens: 1000 } })
            yield* two.release(yield* two.reserve(yield* two.authenticate(made.secret), "d-a", estimate))
            assert.lengthOf(seriesOf(twoRegistry, id), 1, id)
          }
          yield* one.delete("deleted")
          yield* one.setDisabled("disabled", true)
          yield* clock.adjust("29 seconds")
          assert.lengthOf(seriesOf(twoRegistry, "deleted"), 1, "not looked up yet")
          yield* clock.adjust("1 second")
          // The lookup is one Redis call: until its answer is seen (real time, a bound, not a measure).
          for (let i = 0; i < 500 && seriesOf(twoRegistry, "deleted").length > 0; i++) {
            yield* Effect.sleep("10 millis")
          }
          assert.deepStrictEqual(seriesOf(twoRegistry, "deleted"), [])
          assert.deepStrictEqual(seriesOf(twoRegistry, "disabled"), [])
          assert.lengthOf(seriesOf(twoRegistry, "kept"), 1)
        })
      )
  )
})
