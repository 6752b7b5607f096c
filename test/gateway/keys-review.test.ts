/**
 * The key store's rate-limit series and its budget refusals, as a demanding user sees them.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Fiber, Layer, Metric, Redacted, Scope } from "effect"
import OpenAI from "openai"
import * as Gateway from "../../src/Gateway.js"
import type { GatewayError } from "../../src/gateway/errors.js"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import * as Limits from "../../src/gateway/keys/limits.js"
import * as Metrics from "../../src/Metrics.js"
import * as Redis from "../../src/Redis.js"
import * as Server from "../utils/httpServer.js"
import { healthyClient, healthyDeadline, skipRedis, startRedis } from "../utils/redis.js"
import * as Harness from "./harness.js"
import * as Up from "./upstream.js"

let counter = 0
const unique = (label: string) => `${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const key = (id: string, secret: string, policy: KeyStore.KeyPolicy = {}): KeyStore.KeyDefinition => ({
  id,
  sha256: KeyStore.hashSecret(secret),
  ...policy
})

const estimate = (inputTokens: number, maxOutputTokens: number) => ({ inputTokens, maxOutputTokens })

const failure = <A>(effect: Effect.Effect<A, GatewayError>) => Effect.flip(effect)

describe("KeyStore: the series of its keys' rate limits", () => {
  it.effect("leave the registry when the key store closes; a rebuilt store's counts start from zero", () =>
    Effect.gen(function* () {
      const registry: Metric.MetricRegistry = new Map()
      const [a, b] = [unique("series-a"), unique("series-b")]
      const [secretA, secretB] = [`sk-${a}-0123456789`, `sk-${b}-0123456789`]
      // Two (rpm, tpm) pairs: a limiter each.
      const options: KeyStore.Options = {
        keys: [key(a, secretA, { rpm: 100 }), key(b, secretB, { rpm: 50, tpm: 10_000 })]
      }
      const limitSeries = () =>
        Effect.map(Metric.snapshot, (all) =>
          all
            .filter((m) => m.id === Metrics.rateLimitAcquisitions.id || m.id === Metrics.rateLimitWait.id)
            .map((m) => String(m.attributes?.["limit"]))
        ).pipe(Effect.provideService(Metric.MetricRegistry, registry))
      const immediate = (id: string) =>
        Effect.map(
          Metric.value(
            Metric.withAttributes(Metrics.rateLimitAcquisitions, { limit: `key:${id}`, outcome: "immediate" })
          ),
          (state) => state.count
        ).pipe(Effect.provideService(Metric.MetricRegistry, registry))
      const run = (calls: number) =>
        Effect.gen(function* () {
          const scope = yield* Scope.make()
          const store = Context.get(
            yield* Layer.buildWithScope(KeyStore.layerMemory(options), scope),
            KeyStore.KeyAdmin
          )
          const alpha = yield* store.authenticate(Redacted.make(secretA))
          const beta = yield* store.authenticate(Redacted.make(secretB))
          for (let i = 0; i < calls; i++) {
            yield* store.release(yield* store.reserve(alpha, "m", estimate(1, 1)))
            yield* store.release(yield* store.reserve(beta, "m", estimate(1, 1)))
          }
          assert.deepStrictEqual(
            [...new Set(yield* limitSeries())].sort(),
            [`key:${a}`, `key:${b}`].sort(),
            "each key's series while the store is open"
          )
          assert.strictEqual(yield* immediate(a), calls)
          assert.strictEqual(yield* immediate(b), calls)
          yield* Scope.close(scope, Exit.void)
          assert.deepStrictEqual(yield* limitSeries(), [], "closing the key store removes its keys' series")
        }).pipe(Effect.provideService(Metric.MetricRegistry, registry))
      yield* run(3)
      // A rebuilt gateway: its figures are its own, not added onto the closed store's.
      yield* run(1)
    })
  )

  it.effect("keys of many distinct rpm/tpm keep at most maxLimiters limiters; an evicted one's counts stay", () =>
    Effect.gen(function* () {
      const store = Context.get(yield* Layer.build(KeyStore.layerMemory({})), KeyStore.KeyAdmin)
      const tag = unique("many")
      const contexts: Array<Gateway.KeyContext> = []
      // One more (rpm) pair than the store keeps limiters for.
      for (let i = 0; i <= Limits.maxLimiters; i++) {
        const created = yield* store.create({ id: `${tag}-${i}`, rpm: i + 1 })
        const context = yield* store.authenticate(created.secret)
        contexts.push(context)
        yield* store.release(yield* store.reserve(context, "m", estimate(1, 1)))
      }
      const series = new Set(
        (yield* Metric.snapshot)
          .filter((m) => m.id === Metrics.rateLimitAcquisitions.id)
          .map((m) => String(m.attributes?.["limit"]))
      )
      assert.strictEqual(series.size, Limits.maxLimiters, "the least recently used limiter was closed")
      assert.isFalse(series.has(`key:${tag}-0`))
      assert.isTrue(series.has(`key:${tag}-${Limits.maxLimiters}`))
      // The first key's rpm of 1 was used this minute: its rebuilt limiter still refuses a second request.
      const refused = yield* failure(store.reserve(contexts[0]!, "m", estimate(1, 1)))
      assert.deepStrictEqual([refused.reason, refused.code], ["RateLimited", "rate_limit_exceeded"])
    }).pipe(Effect.scoped, Effect.provideService(Metric.MetricRegistry, new Map()))
  )

  it.effect("a limiter first built after the key store closed (a request still running) enters no series", () =>
    Effect.gen(function* () {
      const id = unique("late")
      const secret = `sk-${id}-0123456789`
      const scope = yield* Scope.make()
      const store = Context.get(
        yield* Layer.buildWithScope(KeyStore.layerMemory({ keys: [key(id, secret, { rpm: 7 })] }), scope),
        KeyStore.KeyAdmin
      )
      const context = yield* store.authenticate(Redacted.make(secret))
      yield* Scope.close(scope, Exit.void)
      yield* store.release(yield* store.reserve(context, "m", estimate(1, 1)))
      const series = (yield* Metric.snapshot).filter((m) => m.attributes?.["limit"] === `key:${id}`)
      assert.deepStrictEqual(series, [], "nothing would remove them")
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
  )
})

type StoreBuild = (options: KeyStore.Options) => Effect.Effect<KeyStore.Service, never, Scope.Scope>

/**
 * A budget that only requests in flight hold is a short, retryable 429; one spent is the permanent
 * answer, at the period's reset or never.
 */
const heldOrSpent = (build: StoreBuild) =>
  Effect.gen(function* () {
    const [monthly, forever] = [unique("held-monthly"), unique("held-forever")]
    const [secretM, secretF] = [`sk-${monthly}-0123456789`, `sk-${forever}-0123456789`]
    const store = yield* build({
      keys: [
        key(monthly, secretM, { budget: { tokens: 300, period: "30 days" } }),
        key(forever, secretF, { budget: { tokens: 300 } })
      ]
    })
    for (const [id, secret, period] of [
      [monthly, secretM, true],
      [forever, secretF, false]
    ] as const) {
      const context = yield* store.authenticate(Redacted.make(secret))
      const first = yield* store.reserve(context, "m", estimate(50, 200))
      // 250 held of 300, none spent: the second fits once the first settles, typically within seconds.
      const held = yield* failure(store.reserve(context, "m", estimate(50, 200)))
      assert.strictEqual(held.reason, "BudgetExceeded", id)
      assert.strictEqual(held.code, "budget_held", id)
      assert.deepStrictEqual([held.scope, held.scopeId, held.spent, held.held, held.limit], ["key", id, 250, 250, 300])
      assert.include(held.message, "held by requests in flight")
      assert.include(held.message, `key "${id}"`)
      assert.isAtMost(Duration.toMillis(held.retryAfter!), 2000, id)
      const heldWire = Gateway.toWire(held)
      assert.strictEqual(heldWire.status, 429)
      assert.strictEqual(heldWire.body.error.type, "rate_limit_error")
      assert.strictEqual(heldWire.body.error.code, "budget_held")
      assert.notStrictEqual(heldWire.shouldRetry, false, "no x-should-retry: false")
      assert.strictEqual(heldWire.retryAfterSeconds, 1)
      assert.deepStrictEqual(heldWire.body.error.budget, {
        scope: "key",
        id,
        unit: "tokens",
        spent: 250,
        held: 250,
        limit: 300
      })
      // Once the first settles, it fits.
      yield* store.release(first)
      yield* store.settle(yield* store.reserve(context, "m", estimate(50, 200)), {
        inputTokens: 50,
        outputTokens: 200
      })
      // 250 spent: a request of 250 never fits before the reset, whatever runs.
      const spent = yield* failure(store.reserve(context, "m", estimate(50, 200)))
      assert.strictEqual(spent.code, "budget_exceeded", id)
      assert.strictEqual(spent.held ?? 0, 0)
      const spentWire = Gateway.toWire(spent)
      assert.strictEqual(spentWire.body.error.type, "insufficient_quota")
      assert.strictEqual(spentWire.shouldRetry, false)
      if (period) assert.isAbove(spentWire.retryAfterSeconds!, 24 * 3600, id)
      else assert.isUndefined(spentWire.retryAfterSeconds, id)
      // 30 more fit (280 of 300); then 30 held, 280 used: the next 30 fit once they settle.
      const small = yield* store.reserve(context, "m", estimate(10, 20))
      const heldAgain = yield* failure(store.reserve(context, "m", estimate(10, 20)))
      assert.deepStrictEqual(
        [heldAgain.code, heldAgain.spent, heldAgain.held, heldWireSeconds(heldAgain)],
        ["budget_held", 280, 30, 1]
      )
      yield* store.release(small)
      yield* store.release(yield* store.reserve(context, "m", estimate(10, 20)))
    }
  })

const heldWireSeconds = (error: GatewayError) => Gateway.toWire(error).retryAfterSeconds

describe("KeyStore: a budget held by requests in flight is no spent budget", () => {
  it.effect("in memory", () =>
    heldOrSpent((options) =>
      Effect.map(Effect.orDie(Layer.build(KeyStore.layerMemory(options))), Context.get(KeyStore.KeyAdmin))
    )
  )

  it.live.skipIf(skipRedis)("on Redis", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        yield* heldOrSpent((options) =>
          Effect.map(
            Effect.orDie(
              Layer.build(
                KeyStore.layerRedis({
                  prefix: `${unique("held")}:`,
                  ...options,
                  redis: { timeout: healthyDeadline }
                }).pipe(Layer.provide(Redis.layer({ url: server.url, ...healthyClient })))
              )
            ),
            Context.get(KeyStore.KeyAdmin)
          )
        )
      })
    )
  )
})

describe("Gateway: a budget held by requests in flight, through the official client", () => {
  it.live("a 429 budget_held with Retry-After 1 and no x-should-retry: false; the client's retry gets through", () =>
    Effect.gen(function* () {
      let answer: () => void = () => {}
      const answered = new Promise<void>((resolve) => {
        answer = resolve
      })
      let calls = 0
      // The first call is answered when the test says so; the others at once.
      const upstream = yield* Server.make(async (_, response) => {
        if (++calls === 1) await answered
        return Server.json(response, 200, Up.completion("words"))
      })
      const id = unique("held-wire")
      const secret = `sk-${id}-0123456789`
      const store = Context.get(
        yield* Layer.build(
          KeyStore.layerMemory({ keys: [key(id, secret, { budget: { tokens: 300, period: "30 days" } })] })
        ),
        KeyStore.KeyAdmin
      )
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: store })
      const ask = (client: OpenAI) => () =>
        client.chat.completions.create({ model: "d-a", messages: [{ role: "user", content: "hi" }], max_tokens: 150 })
      const refusals = () =>
        Effect.map(gw.metrics, (text) => {
          const series = 'orchestra_gateway_requests_total{route="chat",status="429"} '
          const line = text.split("\n").find((l) => l.startsWith(series))
          return line === undefined ? 0 : Number(line.slice(series.length))
        })
      const first = yield* Effect.forkChild(Harness.call(ask(gw.client(secret))), { startImmediately: true })
      yield* upstream.awaitRequests(1)
      const refused = yield* Harness.failing(ask(gw.client(secret)))
      assert.strictEqual(refused.status, 429)
      assert.strictEqual(refused.type, "rate_limit_error")
      assert.strictEqual(refused.code, "budget_held")
      assert.include(refused.message, "held by requests in flight")
      assert.notStrictEqual(refused.headers?.get("x-should-retry"), "false")
      assert.strictEqual(refused.headers?.get("retry-after"), "1")
      const budget = (refused.body as { budget?: { scope: string; held?: number; limit: number } }).budget
      assert.deepStrictEqual([budget?.scope, budget?.limit], ["key", 300])
      assert.isAbove(budget?.held ?? 0, 150)
      // The official client (2 retries) honours Retry-After: its retry gets through once the first settled.
      const retrying = new OpenAI({ apiKey: secret, baseURL: `${gw.url}/v1`, maxRetries: 2 })
      const second = yield* Effect.forkChild(Harness.call(ask(retrying)), { startImmediately: true })
      yield* Effect.promise(async () => {
        for (let i = 0; i < 2000; i++) {
          if ((await Effect.runPromise(refusals())) >= 2) return
          await new Promise((resolve) => setTimeout(resolve, 5))
        }
      })
      assert.strictEqual(yield* refusals(), 2, "the retrying client's first attempt was refused")
      answer()
      yield* Fiber.join(first)
      yield* Fiber.join(second)
      assert.strictEqual(yield* refusals(), 2)
      assert.strictEqual(calls, 2, "the first and the retried second reached the upstream")
    })
  )
})
