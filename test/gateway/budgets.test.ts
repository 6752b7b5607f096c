/**
 * Budgets through the gateway: what a request reserved bounds what it can be charged.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Duration, Effect, Exit, Fiber, Layer, Redacted } from "effect"
import { TestClock } from "effect/testing"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import { indexModelBudgets } from "../../src/gateway/keys/ledger.js"
import { sharesUpstream } from "../../src/gateway/models.js"
import * as Server from "../utils/httpServer.js"
import * as Harness from "./harness.js"
import * as Up from "./upstream.js"

const secret = "sk-test-budget-0123456789abcdef"
const free = "sk-test-free-0123456789abcdef"
const hi = [{ role: "user" as const, content: "hi" }]

const memory = (options: KeyStore.Options) =>
  Effect.map(Layer.build(KeyStore.layerMemory(options)), Context.get(KeyStore.KeyAdmin))

/** An upstream that writes `max_tokens` tokens when asked for them, 2,000 otherwise, streamed or not. */
const verbose = () =>
  Server.make((request, response) => {
    const body = request.json as { readonly stream?: boolean; readonly max_tokens?: number }
    const output = body.max_tokens ?? 2_000
    if (body.stream === true) {
      return Server.chunked(
        response,
        [Server.sse([Up.chunk("words"), Up.chunk(null, "length"), Up.usageChunk(11, output), "[DONE]"])],
        { pauseMs: 0 }
      )
    }
    const answer = Up.completion("words", { finish: "length" })
    return Server.json(response, 200, {
      ...answer,
      usage: { prompt_tokens: 11, completion_tokens: output, total_tokens: 11 + output }
    })
  })

describe("Gateway: budgets", () => {
  it.live("a request without max_tokens is sent with the output it reserved, so it never spends past its budget", () =>
    Effect.gen(function* () {
      const upstream = yield* verbose()
      const store = yield* memory({
        keys: [
          { id: "capped", sha256: KeyStore.hashSecret(secret), budget: { tokens: 1_000 } },
          { id: "free", sha256: KeyStore.hashSecret(free) }
        ]
      })
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        domains: [
          { name: "d-a", provider: "a" },
          { name: "short", provider: "a", maxTokens: 50 },
          // Every domain of its chain has its own max_tokens: each is sent with its own.
          { name: "capped", provider: "a", maxTokens: 60, fallback: ["short"] }
        ],
        keys: store,
        gateway: { defaultMaxTokens: 100 }
      })
      const client = gw.client(secret)
      yield* Harness.call(() => client.chat.completions.create({ model: "d-a", messages: hi }))
      yield* Harness.call(() => client.chat.completions.create({ model: "a/a-model", messages: hi }))
      const stream = yield* Harness.call(() =>
        client.chat.completions.create({ model: "d-a", messages: hi, stream: true })
      )
      yield* Harness.call(async () => {
        for await (const _ of stream) {
          // read to the end
        }
      })
      // A domain's own max_tokens, and the client's, are sent as they were.
      yield* Harness.call(() => client.chat.completions.create({ model: "short", messages: hi }))
      yield* Harness.call(() => client.chat.completions.create({ model: "capped", messages: hi }))
      yield* Harness.call(() => client.chat.completions.create({ model: "d-a", messages: hi, max_tokens: 7 }))
      // A key without a budget: nothing reserved bounds its answer.
      yield* Harness.call(() => gw.client(free).chat.completions.create({ model: "d-a", messages: hi }))
      const sent = (yield* upstream.requests).map((r) => (r.json as { max_tokens?: number }).max_tokens)
      assert.deepStrictEqual(sent, [100, 100, 100, 50, 60, 7, undefined])
      const [level] = yield* store.spend("capped")
      assert.strictEqual(level!.held, 0)
      assert.strictEqual(level!.spent, 3 * (11 + 100) + (11 + 50) + (11 + 60) + (11 + 7))
    })
  )

  it.live("a per-model budget caps the upstream model behind its name, whichever name a request reaches it by", () =>
    Effect.gen(function* () {
      const upstream = yield* verbose()
      const other = yield* verbose()
      const store = yield* memory({
        keys: [
          {
            id: "support",
            sha256: KeyStore.hashSecret(secret),
            allowedModels: ["support", "triage", "a/*", "b/*"],
            modelBudgets: { support: { tokens: 150 } }
          },
          {
            id: "direct",
            sha256: KeyStore.hashSecret(free),
            allowedModels: ["support", "a/*"],
            modelBudgets: { "a/a-model": { tokens: 150 } }
          }
        ]
      })
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url, b: other.url },
        domains: [
          { name: "support", provider: "a", system: "You help customers." },
          // The same upstream model as support, under another name.
          { name: "triage", provider: "a", model: "a-model" },
          { name: "d-b", provider: "b" }
        ],
        keys: store,
        gateway: { defaultMaxTokens: 100 }
      })
      const spent = (id: string) =>
        Effect.map(store.spend(id), (lines) => lines.map((line) => [line.id, line.spent, line.held]))
      const refusal = (f: () => Promise<unknown>) => Effect.map(Effect.flip(Harness.call(f)), Harness.clientError)

      // Through provider/model, sent without max_tokens: charged to support's budget, and bounded by it.
      const client = gw.client(secret)
      yield* Harness.call(() => client.chat.completions.create({ model: "a/a-model", messages: hi }))
      assert.deepStrictEqual(yield* spent("support"), [["support/support", 11 + 100, 0]])
      // Another model of the same provider, and another provider, are not support's.
      yield* Harness.call(() => client.chat.completions.create({ model: "a/other", messages: hi, max_tokens: 5 }))
      yield* Harness.call(() => client.chat.completions.create({ model: "b/b-model", messages: hi, max_tokens: 5 }))
      assert.deepStrictEqual(yield* spent("support"), [["support/support", 11 + 100, 0]])
      // Another domain on the same upstream model is charged to it too: 111 spent, 50 more is over 150.
      const viaTriage = yield* refusal(() =>
        client.chat.completions.create({ model: "triage", messages: hi, max_tokens: 50 })
      )
      assert.strictEqual(viaTriage.status, 429)
      assert.strictEqual(viaTriage.code, "budget_exceeded")
      assert.include(viaTriage.message, `model "support/support"`)
      const sent = (yield* upstream.requests).map((r) => (r.json as { max_tokens?: number }).max_tokens)
      assert.deepStrictEqual(sent, [100, 5])

      // Conversely, a budget on provider/model is charged by the domain that calls that model.
      const direct = gw.client(free)
      yield* Harness.call(() => direct.chat.completions.create({ model: "support", messages: hi, max_tokens: 20 }))
      assert.deepStrictEqual(yield* spent("direct"), [["direct/a/a-model", 11 + 20, 0]])
      const viaDomain = yield* refusal(() =>
        direct.chat.completions.create({ model: "support", messages: hi, max_tokens: 200 })
      )
      assert.strictEqual(viaDomain.status, 429)
      assert.include(viaDomain.message, `model "direct/a/a-model"`)
    })
  )

  it.effect(
    "a key with 1,000 budgets by model: each request is charged to exactly the budgets capping its upstream",
    () =>
      Effect.gen(function* () {
        const modelBudgets: Record<string, { tokens: number }> = {}
        for (let i = 0; i < 996; i++) modelBudgets[`a/m${i}`] = { tokens: 1000 + i }
        modelBudgets.support = { tokens: 150 }
        modelBudgets["a/a-model"] = { tokens: 500 }
        modelBudgets["b/b-model"] = { tokens: 700 }
        modelBudgets.elsewhere = { tokens: 900 }
        const store = yield* memory({
          keys: [{ id: "many", sha256: KeyStore.hashSecret(secret), allowedModels: ["*"], modelBudgets }]
        })
        const models = {
          domains: ["support", "triage", "elsewhere"],
          providers: ["a", "b"],
          upstreams: { support: ["a/a-model"], triage: ["a/a-model", "a/m7"], elsewhere: ["b/b-model"] }
        }
        yield* store.useModels(models)
        const key = yield* store.authenticate(Redacted.make(secret))
        const held = (model: string) =>
          Effect.gen(function* () {
            const reservation = yield* store.reserve(key, model, { inputTokens: 10, maxOutputTokens: 10 })
            const lines = (yield* store.spend("many")).filter((line) => line.held > 0).map((line) => line.id)
            yield* store.release(reservation)
            return lines
          })
        assert.deepStrictEqual(yield* held("a/a-model"), ["many/support", "many/a/a-model"])
        assert.deepStrictEqual(yield* held("support"), ["many/support", "many/a/a-model"])
        assert.deepStrictEqual(yield* held("triage"), ["many/a/m7", "many/support", "many/a/a-model"])
        assert.deepStrictEqual(yield* held("a/m7"), ["many/a/m7"])
        assert.deepStrictEqual(yield* held("a/m995"), ["many/a/m995"])
        assert.deepStrictEqual(yield* held("elsewhere"), ["many/b/b-model", "many/elsewhere"])
        assert.deepStrictEqual(yield* held("a/other"), [])

        // The index answers what sharesUpstream answers, for every name a request may give.
        const index = indexModelBudgets("many", modelBudgets as never, models)
        for (const model of [...Object.keys(modelBudgets), "triage", "a/other", "c/x"]) {
          const expected = Object.keys(modelBudgets).filter((name) => sharesUpstream(models, name, model))
          assert.deepStrictEqual(
            (index.byModel.get(model) ?? []).map((entry) => entry.name),
            expected,
            model
          )
        }
      })
  )

  it.live(
    "a key with 1,000 budgets by model, served by two gateways: a request without max_tokens is bounded exactly when one of them is charged",
    () =>
      Effect.gen(function* () {
        const upstream = yield* verbose()
        const store = yield* memory({ keys: [] })
        // One store, two gateways: "support" is served by the first, "triage" (the same upstream model) by the second.
        const first = yield* Harness.make({
          upstreams: { a: upstream.url },
          domains: [{ name: "support", provider: "a" }],
          keys: store,
          gateway: { defaultMaxTokens: 100 }
        })
        const second = yield* Harness.make({
          upstreams: { a: upstream.url },
          domains: [{ name: "triage", provider: "a", model: "a-model" }],
          keys: store,
          gateway: { defaultMaxTokens: 100 }
        })
        const modelBudgets: Record<string, { tokens: number }> = {}
        for (let i = 0; i < 999; i++) modelBudgets[`a/m${i}`] = { tokens: 100_000 }
        modelBudgets.support = { tokens: 100_000 }
        const created = yield* store.create({ id: "many", modelBudgets })
        const secret = Redacted.value(created.secret)
        const ask = (gateway: Harness.Harness, model: string) =>
          Harness.call(() => gateway.client(secret).chat.completions.create({ model, messages: hi }))
        yield* ask(first, "support")
        // The second gateway knows no "support", but the store charges its budget to the upstream model behind it.
        yield* ask(second, "triage")
        yield* ask(second, "a/a-model")
        yield* ask(second, "a/m7")
        yield* ask(second, "a/m998")
        // No budget of the key caps a/other: nothing reserved bounds its answer.
        yield* ask(second, "a/other")
        const sent = (yield* upstream.requests).map((r) => (r.json as { max_tokens?: number }).max_tokens)
        assert.deepStrictEqual(sent, [100, 100, 100, 100, 100, undefined])
        const lines = (yield* store.spend("many")).filter((line) => line.spent > 0)
        assert.deepStrictEqual(
          lines.map((line) => [line.id, line.spent, line.held]),
          [
            ["many/a/m7", 11 + 100, 0],
            ["many/a/m998", 11 + 100, 0],
            ["many/support", 3 * (11 + 100), 0]
          ]
        )
      })
  )

  it.live("a chain whose domains' max_tokens differ sends every step with at most the output it reserved", () =>
    Effect.gen(function* () {
      const upstream = yield* verbose()
      const down = yield* Server.make((_, response) => Server.json(response, 503, { error: { message: "down" } }))
      const store = yield* memory({
        keys: [{ id: "capped", sha256: KeyStore.hashSecret(secret), budget: { tokens: 1_000 } }]
      })
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url, b: down.url },
        domains: [
          { name: "d-a", provider: "a" },
          // Its own cap is 60, its fallback has none: the request reserves 100 (defaultMaxTokens).
          { name: "mixed", provider: "b", maxTokens: 60, fallback: ["d-a"] },
          // Its own cap is 300, above defaultMaxTokens: 300 is reserved, and its fallback is sent no more.
          { name: "large", provider: "b", maxTokens: 300, fallback: ["d-a"] }
        ],
        keys: store,
        gateway: { defaultMaxTokens: 100 }
      })
      const client = gw.client(secret)
      yield* Harness.call(() => client.chat.completions.create({ model: "mixed", messages: hi }))
      const [afterMixed] = yield* store.spend("capped")
      yield* Harness.call(() => client.chat.completions.create({ model: "large", messages: hi }))
      const sent = (yield* upstream.requests).map((r) => (r.json as { max_tokens?: number }).max_tokens)
      assert.deepStrictEqual(sent, [100, 300])
      assert.strictEqual(afterMixed!.spent, 11 + 100)
      const [level] = yield* store.spend("capped")
      assert.strictEqual(level!.held, 0)
      assert.strictEqual(level!.spent, 11 + 100 + 11 + 300)
    })
  )

  it.effect(
    "a request that runs past reservationTtl keeps its hold: another cannot spend the same budget (TestClock)",
    () =>
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
        const store = yield* memory({
          reservationTtl: "10 seconds",
          keys: [{ id: "capped", sha256: KeyStore.hashSecret(secret), budget: { tokens: 300 } }]
        })
        // A call of several minutes (a long generation): no deadline of the executor cuts it.
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: store, executor: { timeout: "none" } })
        const client = gw.client(secret, { timeout: 600_000 })
        const ask = () => client.chat.completions.create({ model: "d-a", messages: hi, max_tokens: 150 })
        const first = yield* Effect.forkChild(Harness.call(ask), { startImmediately: true })
        yield* upstream.awaitRequests(1)
        const [reserved] = yield* store.spend("capped")
        // Six lease lengths later, the first request still runs: it still holds what it reserved.
        yield* TestClock.adjust("1 minute")
        const [running] = yield* store.spend("capped")
        const second = yield* Effect.exit(Harness.call(ask))
        // Told once nothing runs: an assertion failing while the first request ran would leave the gateway to drain it.
        answer()
        yield* Fiber.join(first)
        const [level] = yield* store.spend("capped")
        assert.isAbove(reserved!.held, 150)
        assert.strictEqual(running!.held, reserved!.held)
        assert.isTrue(Exit.isFailure(second))
        if (Exit.isFailure(second)) {
          const refused = Harness.clientError(Cause.squash(second.cause))
          assert.strictEqual(refused.status, 429)
          // Held by the running request, spent by none: it would fit once that one settles.
          assert.strictEqual(refused.code, "budget_held")
        }
        assert.deepStrictEqual([level!.spent, level!.held], [18, 0])
      })
  )
})

describe("Gateway: a key store's renew", () => {
  it.effect("a renewal that dies (a key store's bug) is logged, and the next ones still run (TestClock)", () =>
    Effect.gen(function* () {
      let answer: () => void = () => {}
      const answered = new Promise<void>((resolve) => {
        answer = resolve
      })
      const upstream = yield* Server.make(async (_, response) => {
        await answered
        return Server.json(response, 200, Up.completion("words"))
      })
      const { service } = Harness.keyStore({ "sk-a": { id: "a" } })
      const runs: Array<number> = []
      const keys: typeof service = {
        ...service,
        renew: {
          every: Duration.seconds(1),
          run: (reservations) =>
            Effect.suspend(() => {
              runs.push(reservations.length)
              return runs.length === 1 ? Effect.die(new Error("the store's bug")) : Effect.void
            })
        }
      }
      const logs: Array<string> = []
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys, executor: { timeout: "none" }, logs })
      const call = yield* Effect.forkChild(
        Harness.call(() => gw.client("sk-a").chat.completions.create({ model: "d-a", messages: hi })),
        { startImmediately: true }
      )
      yield* upstream.awaitRequests(1)
      yield* TestClock.adjust("1 second")
      yield* TestClock.adjust("1 second")
      yield* TestClock.adjust("1 second")
      // Told once the renewals are counted: an assertion failing while the call ran would leave the gateway to drain it.
      answer()
      yield* Fiber.join(call)
      assert.deepStrictEqual(runs, [1, 1, 1])
      assert.isTrue(
        logs.some((line) => line.includes("the store's bug")),
        logs.join("\n")
      )
    })
  )
})

describe("Gateway: a client that leaves as its answer is settled", () => {
  for (const [route, body] of [
    ["chat/completions", { model: "d-a", messages: hi }],
    ["embeddings", { model: "d-a", input: ["hi"] }]
  ] as const) {
    it.live(
      `/v1/${route}: the settle runs to its end, the usage charged once, not lost with the reservation held`,
      () =>
        Effect.gen(function* () {
          const upstream = yield* Server.make(Up.openAi())
          const double = Harness.keyStore({ "sk-leaving": { id: "k" } })
          const client = new AbortController()
          // The store's settle is a round trip (Redis); the client leaves as it starts.
          const keys = {
            ...double.service,
            settle: (reservation: unknown, usage: { readonly inputTokens: number; readonly outputTokens: number }) =>
              Effect.andThen(
                Effect.sync(() => client.abort()),
                Effect.andThen(Effect.sleep("200 millis"), double.service.settle(reservation, usage))
              )
          }
          const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys })
          const answer = yield* Effect.promise(() =>
            fetch(`${gw.url}/v1/${route}`, {
              method: "POST",
              headers: { authorization: "Bearer sk-leaving", "content-type": "application/json" },
              body: JSON.stringify(body),
              signal: client.signal
            }).then(
              (response) => response.text(),
              () => "aborted"
            )
          )
          assert.strictEqual(answer, "aborted")
          yield* Harness.eventually(() => gw.gateway.inFlight() === 0)
          yield* Harness.eventually(() => double.log.settled.length + double.log.released.length > 0)
          assert.strictEqual(double.log.settled.length, 1)
          assert.deepStrictEqual(double.log.released, [])
        })
    )
  }
})
