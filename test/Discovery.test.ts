import { inspect } from "node:util"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Deferred, Effect, Exit, Fiber, Layer, Metric, Ref, Tracer } from "effect"
import { TestClock } from "effect/testing"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Discovery from "../src/Discovery.js"
import * as Executor from "../src/Executor.js"
import * as HttpAgent from "../src/HttpAgent.js"
import type * as Input from "../src/Input.js"
import * as Mock from "../src/Model/Mock.js"
import * as AgentServer from "./utils/agentServer.js"
import * as Server from "./utils/httpServer.js"
import { recording } from "./utils/tracer.js"

const resolver = (layer: Layer.Layer<Discovery.Discovery, unknown>) =>
  Effect.map(Layer.build(layer), (context) => Context.get(context, Discovery.Discovery))

const httpDiscovery = (options: Discovery.HttpOptions) =>
  resolver(Discovery.layerHttp(options).pipe(Layer.provide(NodeHttpClient.layerUndici)))

/** The agents service over an executor and a mock model, with this discovery. */
const agentsWith = (discovery: Layer.Layer<Discovery.Discovery, unknown>) =>
  Layer.build(
    HttpAgent.layer().pipe(
      Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
      Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({ failMax: 1 }), discovery)),
      Layer.provide(NodeHttpClient.layerUndici)
    )
  ).pipe(
    Effect.provideService(Metric.MetricRegistry, new Map()),
    Effect.map((context) => Context.get(context, HttpAgent.HttpAgents))
  )

const query = { concept: "weather", intent: "forecast" }

describe("Discovery.layerStatic", () => {
  it.effect("resolves a (concept, intent), falls back to the concept's '*' entry, and says NotFound otherwise", () =>
    Effect.gen(function* () {
      const discovery = yield* resolver(
        Discovery.layerStatic([
          { concept: "weather", intent: "forecast", agents: [{ url: "http://127.0.0.1:1/a", name: "a" }] },
          { concept: "weather", intent: "*", agents: { url: "http://127.0.0.1:1/any" } }
        ])
      )
      assert.deepStrictEqual(
        (yield* discovery.resolve(query)).map((e) => e.url),
        ["http://127.0.0.1:1/a"]
      )
      assert.deepStrictEqual(
        (yield* discovery.resolve({ concept: "weather", intent: "history" })).map((e) => e.url),
        ["http://127.0.0.1:1/any"]
      )
      const missing = yield* Effect.flip(discovery.resolve({ concept: "stocks", intent: "forecast" }))
      assert.deepStrictEqual([missing._tag, missing.reason, missing.concept], ["DiscoveryError", "NotFound", "stocks"])
    })
  )

  it.effect("entries are checked into OptionErrors naming the field", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [ReadonlyArray<Discovery.Entry>, string]> = [
        [[{ concept: "", intent: "x", agents: { url: "http://127.0.0.1:1" } }], "entries[0].concept"],
        [[{ concept: "c", intent: "x", agents: [] }], "entries[0].agents"],
        [[{ concept: "c", intent: "x", agents: { url: "ftp://x" } }], "entries[0].agents[0].url"],
        [[{ concept: "c", intent: "x", agents: { url: "http://u:p@127.0.0.1:1" } }], "entries[0].agents[0].url"],
        [
          [{ concept: "c", intent: "x", agents: { url: "http://127.0.0.1:1", timeout: -1 } }],
          "entries[0].agents[0].timeout"
        ],
        [
          [{ concept: "c", intent: "x", agents: { url: "http://127.0.0.1:1", timout: 500 } as never }],
          "entries[0].agents[0].timout"
        ],
        [[{ concept: "c", intent: "x", agent: { url: "http://127.0.0.1:1" } } as never], "entries[0].agent"],
        // These named entries[0].agents[0], an agent that is not there.
        [[{ concept: "c", intent: "x", agents: null } as never], "entries[0].agents"],
        [[{ concept: "c", intent: "x" } as never], "entries[0].agents"],
        [[{ concept: "c", intent: "x", agents: "http://127.0.0.1:1" } as never], "entries[0].agents"],
        // No query can name them (a query's concept and intent are 1 to 1,000 characters): never served.
        [[{ concept: "c".repeat(1_001), intent: "x", agents: { url: "http://127.0.0.1:1" } }], "entries[0].concept"],
        [[{ concept: "c", intent: "x".repeat(1_001), agents: { url: "http://127.0.0.1:1" } }], "entries[0].intent"],
        // The names the agents' own records and series take, or one no label can hold: the agent could not be named so.
        ...["unknown", "(other)", "discovery:static", "discovery:", "a-\uD800"].map(
          (name) =>
            [
              [
                { concept: "c", intent: "x", agents: { url: "http://127.0.0.1:1" } },
                {
                  concept: "c",
                  intent: "y",
                  agents: [{ url: "http://127.0.0.1:1" }, { url: "http://127.0.0.1:2", name }]
                }
              ],
              "entries[1].agents[1].name"
            ] as const
        )
      ]
      for (const [entries, path] of cases) {
        const error = yield* Effect.flip(resolver(Discovery.layerStatic(entries)))
        assert.strictEqual((error as { readonly path: string }).path, path)
      }
      for (const [options, path] of [
        [null, "options"],
        [{ nmae: "registry" }, "nmae"],
        [{ name: "r-\uDBFF" }, "name"]
      ] as const) {
        const error = yield* Effect.flip(resolver(Discovery.layerStatic([], options as never)))
        assert.strictEqual((error as { readonly path: string }).path, path)
      }
    })
  )
})

describe("Discovery queries", () => {
  it.effect(
    "an invalid query fails with a DiscoveryError naming the field, from every layer; never a throw or a defect",
    () =>
      Effect.gen(function* () {
        const agents = [{ url: "http://127.0.0.1:1/a" }]
        const fixed = yield* resolver(Discovery.layerStatic([{ concept: "weather", intent: "*", agents }]))
        const looked = yield* resolver(Discovery.layer(() => Effect.succeed(agents)))
        const throwing = {
          intent: "forecast",
          get concept(): string {
            throw new Error("a getter that throws")
          }
        }
        for (const [given, field] of [
          [null, "query"],
          [{ concept: 7, intent: "forecast" }, "query.concept"],
          [{ concept: "weather" }, "query.intent"],
          // String() throws on a value without a prototype: the static layer's resolve threw it at the caller.
          [{ concept: Object.create(null), intent: "forecast" }, "query.concept"],
          [throwing, "query.concept"]
        ] as const) {
          for (const discovery of [fixed, looked]) {
            const exit = yield* Effect.exit(Effect.suspend(() => discovery.resolve(given as never)))
            assert.isTrue(Exit.isFailure(exit) && Cause.hasFails(exit.cause), `${discovery.name} ${field}: ${exit}`)
            const error = yield* Effect.flip(Effect.suspend(() => discovery.resolve(given as never)))
            assert.strictEqual(error.reason, "NotFound")
            assert.include(error.message, `invalid ${field}: expected`, discovery.name)
          }
        }
      })
  )

  it.effect(
    "a query's concept and intent take 1 to 1,000 characters: a larger one never becomes a lookup or a key",
    () =>
      Effect.gen(function* () {
        const calls = yield* Ref.make(0)
        const looked = yield* resolver(
          Discovery.layer(() =>
            Effect.as(
              Ref.update(calls, (n) => n + 1),
              [{ url: "http://127.0.0.1:1/a" }]
            )
          )
        )
        const fixed = yield* resolver(
          Discovery.layerStatic([{ concept: "weather", intent: "*", agents: { url: "http://127.0.0.1:1/a" } }])
        )
        // Each would be a key of the cache (capacity keys, of any size) and the registry's URL.
        for (const [given, field, length] of [
          [{ concept: "x".repeat(1_000_001), intent: "forecast" }, "concept", 1_000_001],
          [{ concept: "weather", intent: "y".repeat(1_001) }, "intent", 1_001],
          [{ concept: "", intent: "forecast" }, "concept", 0]
        ] as const) {
          for (const discovery of [looked, fixed]) {
            const error = yield* Effect.flip(discovery.resolve(given))
            assert.strictEqual(error.reason, "NotFound")
            assert.include(error.message, `invalid query.${field}: expected 1 to 1000 characters, got ${length}`)
            assert.isBelow(error.message.length + error.concept.length + error.intent.length, 2_200)
          }
        }
        assert.strictEqual(yield* Ref.get(calls), 0)
        assert.strictEqual((yield* looked.resolve({ concept: "c".repeat(1_000), intent: "i" })).length, 1)
      })
  )

  it.effect("a NotFound message writes the query quoted and escaped: a quote or a line break cannot forge it", () =>
    Effect.gen(function* () {
      const looked = yield* resolver(Discovery.layer(() => Effect.succeed([])))
      const fixed = yield* resolver(
        Discovery.layerStatic([{ concept: "weather", intent: "forecast", agents: { url: "http://127.0.0.1:1/a" } }])
      )
      const tricky = { concept: 'stocks" and intent "none', intent: "x\nlevel=INFO msg=all good" }
      for (const discovery of [looked, fixed]) {
        const error = yield* Effect.flip(discovery.resolve(tricky))
        assert.strictEqual(
          error.message,
          `no agent for concept ${JSON.stringify(tricky.concept)} and intent ${JSON.stringify(tricky.intent)}`
        )
      }
    })
  )
})

describe("Discovery.layer (your own lookup)", () => {
  it.effect("lookups in flight are bounded (maxConcurrentLookups, default 10): other queries wait their turn", () =>
    Effect.gen(function* () {
      for (const [options, bound] of [
        [{}, 10],
        [{ maxConcurrentLookups: 3 }, 3]
      ] as const) {
        let inFlight = 0
        let most = 0
        const discovery = yield* resolver(
          Discovery.layer(
            () =>
              Effect.sync(() => {
                inFlight++
                most = Math.max(most, inFlight)
              }).pipe(
                Effect.andThen(Effect.sleep("100 millis")),
                Effect.andThen(
                  Effect.sync(() => {
                    inFlight--
                    return [{ url: "http://127.0.0.1:1/a" }]
                  })
                )
              ),
            options
          )
        )
        // A batch of tasks on distinct concepts: as many registry requests at once, unbounded.
        const queries = Array.from({ length: 50 }, (_, i) => ({ concept: `c${i}`, intent: "x" }))
        const fiber = yield* Effect.forkChild(
          Effect.forEach(queries, (q) => discovery.resolve(q), { concurrency: "unbounded" })
        )
        yield* TestClock.adjust("10 seconds")
        assert.strictEqual((yield* Fiber.join(fiber)).length, 50)
        assert.strictEqual(most, bound)
      }
      for (const maxConcurrentLookups of [0, 1.5, -1, Number.NaN, null, "4"]) {
        const error = yield* Effect.flip(
          resolver(Discovery.layer(() => Effect.succeed([]), { maxConcurrentLookups: maxConcurrentLookups as number }))
        )
        assert.strictEqual((error as { readonly path: string }).path, "maxConcurrentLookups")
      }
    })
  )

  it.effect("concurrent lookups of one query share one call; answers are kept for ttl; failures are not", () =>
    Effect.gen(function* () {
      const calls = yield* Ref.make(0)
      const gate = yield* Deferred.make<void>()
      const discovery = yield* resolver(
        Discovery.layer(
          () =>
            Effect.andThen(
              Effect.andThen(
                Ref.update(calls, (n) => n + 1),
                Deferred.await(gate)
              ),
              Effect.succeed([{ url: "http://127.0.0.1:1/a" }])
            ),
          { ttl: "1 minute" }
        )
      )
      const fibers = yield* Effect.forEach([1, 2, 3], () => Effect.forkChild(discovery.resolve(query)))
      yield* Effect.yieldNow
      yield* Deferred.succeed(gate, undefined)
      for (const fiber of fibers) assert.strictEqual((yield* Fiber.join(fiber)).length, 1)
      yield* discovery.resolve(query)
      assert.strictEqual(yield* Ref.get(calls), 1)
      yield* TestClock.adjust("1 minute")
      yield* discovery.resolve(query)
      assert.strictEqual(yield* Ref.get(calls), 2)
    })
  )

  it.effect("stale-if-error: past its ttl a query keeps its last agents for staleFor while lookups fail", () =>
    Effect.gen(function* () {
      const up = yield* Ref.make(true)
      const calls = yield* Ref.make(0)
      const lookup = (q: Discovery.Query) =>
        Effect.flatMap(
          Ref.updateAndGet(calls, (n) => n + 1),
          () =>
            Effect.flatMap(Ref.get(up), (isUp) =>
              isUp ? Effect.succeed([{ url: `http://127.0.0.1:1/${q.intent}` }]) : Effect.fail(new Error("down"))
            )
        )
      const discovery = yield* resolver(
        Discovery.layer(lookup, { ttl: "1 minute", staleFor: "5 minutes", breaker: { failMax: 100 } })
      )
      const other = { concept: query.concept, intent: "never-asked" }
      assert.strictEqual((yield* discovery.resolve(query))[0]!.url, `http://127.0.0.1:1/${query.intent}`)
      yield* Ref.set(up, false)
      yield* TestClock.adjust("2 minutes")
      // past ttl, lookups failing: the last answer, after a real attempt
      const stale = yield* discovery.resolve(query)
      assert.strictEqual(stale[0]!.url, `http://127.0.0.1:1/${query.intent}`)
      assert.strictEqual(yield* Ref.get(calls), 2, "the stale answer came after a lookup was tried")
      // a query never answered has nothing to fall back on
      assert.strictEqual((yield* Effect.flip(discovery.resolve(other))).reason, "Unavailable")
      // past ttl + staleFor: Unavailable
      yield* TestClock.adjust("5 minutes")
      assert.strictEqual((yield* Effect.flip(discovery.resolve(query))).reason, "Unavailable")
      // back up: a fresh answer again
      yield* Ref.set(up, true)
      assert.strictEqual((yield* discovery.resolve(query)).length, 1)
    })
  )

  it.effect(
    "stale-if-error serves the last answer: after a 'none' answer, a failing lookup does not bring the agents back",
    () =>
      Effect.gen(function* () {
        const script = yield* Ref.make<ReadonlyArray<"agents" | "none" | "down">>(["agents", "none", "down"])
        const discovery = yield* resolver(
          Discovery.layer(
            () =>
              Effect.flatMap(
                Ref.modify(script, ([next, ...rest]) => [next ?? "down", rest]),
                (answer) =>
                  answer === "agents"
                    ? Effect.succeed([{ url: "http://127.0.0.1:1/a" }])
                    : answer === "none"
                      ? Effect.succeed([])
                      : Effect.fail("down")
              ),
            { ttl: "1 minute", staleFor: "10 minutes" }
          )
        )
        assert.strictEqual((yield* discovery.resolve(query)).length, 1)
        yield* TestClock.adjust("2 minutes")
        // the registry now says no agent serves the query (deregistered)
        assert.strictEqual((yield* Effect.flip(discovery.resolve(query))).reason, "NotFound")
        yield* TestClock.adjust("1 second")
        // then it is down: the last answer was "none", so the deregistered agent is not served
        const down = yield* Effect.flip(discovery.resolve(query))
        assert.strictEqual(down.reason, "Unavailable")
      })
  )

  it.effect("staleFor: 0 turns stale-if-error off", () =>
    Effect.gen(function* () {
      const up = yield* Ref.make(true)
      const discovery = yield* resolver(
        Discovery.layer(
          () =>
            Effect.flatMap(Ref.get(up), (isUp) =>
              isUp ? Effect.succeed([{ url: "http://127.0.0.1:1/a" }]) : Effect.fail("down")
            ),
          { ttl: "1 minute", staleFor: 0 }
        )
      )
      yield* discovery.resolve(query)
      yield* Ref.set(up, false)
      yield* TestClock.adjust("61 seconds")
      assert.strictEqual((yield* Effect.flip(discovery.resolve(query))).reason, "Unavailable")
    })
  )

  it.effect("a failing or hanging lookup is Unavailable; its own breaker then stops calling it", () =>
    Effect.gen(function* () {
      const calls = yield* Ref.make(0)
      const discovery = yield* resolver(
        Discovery.layer(
          () =>
            Effect.andThen(
              Ref.update(calls, (n) => n + 1),
              Effect.never
            ),
          {
            timeout: "2 seconds",
            breaker: { failMax: 2, resetTimeout: "1 minute" }
          }
        )
      )
      for (let i = 0; i < 2; i++) {
        const fiber = yield* Effect.forkChild(Effect.flip(discovery.resolve(query)))
        yield* TestClock.adjust("2 seconds")
        const error = yield* Fiber.join(fiber)
        assert.strictEqual(error.reason, "Unavailable")
        assert.include(error.message, "timeout")
      }
      const refused = yield* Effect.flip(discovery.resolve(query))
      assert.strictEqual(refused.reason, "Unavailable")
      assert.include(refused.message, "open")
      assert.strictEqual(yield* Ref.get(calls), 2)
    })
  )

  it.effect("an empty answer is NotFound (not a breaker failure); an invalid endpoint is Unavailable", () =>
    Effect.gen(function* () {
      const empty = yield* resolver(Discovery.layer(() => Effect.succeed([]), { breaker: { failMax: 1 } }))
      for (let i = 0; i < 3; i++) assert.strictEqual((yield* Effect.flip(empty.resolve(query))).reason, "NotFound")
      const invalid = yield* resolver(Discovery.layer(() => Effect.succeed({ url: "nope" })))
      const error = yield* Effect.flip(invalid.resolve(query))
      assert.strictEqual(error.reason, "Unavailable")
      assert.include(error.message, "agents[0].url")
    })
  )

  it.effect("an answer is kept as it was checked: the lookup's own objects changed later change nothing", () =>
    Effect.gen(function* () {
      // A lookup answering the entries of an in-memory catalog, which is updated in place.
      const entry: { url: string; name: string; weight: number } = {
        url: "http://127.0.0.1:1/a",
        name: "meteo",
        weight: 3
      }
      let reads = 0
      const flipping = {
        get url() {
          reads++
          return reads === 1 ? "http://127.0.0.1:1/b" : "ftp://127.0.0.1/b"
        }
      }
      const discovery = yield* resolver(Discovery.layer(() => Effect.succeed([entry, flipping])))
      const found = yield* discovery.resolve(query)
      entry.url = "http://user:secret@127.0.0.1:1/a"
      const cached = yield* discovery.resolve(query)
      for (const answer of [found, cached]) {
        assert.deepStrictEqual(
          answer.map((e) => ({ ...e })),
          [{ url: "http://127.0.0.1:1/a", name: "meteo" }, { url: "http://127.0.0.1:1/b" }]
        )
      }
    })
  )

  it.effect("a lookup that throws, dies or answers a Promise is Unavailable naming it, never a defect", () =>
    Effect.gen(function* () {
      const calls = yield* Ref.make(0)
      const boom = new Error("registry client bug")
      const thrower = yield* resolver(
        Discovery.layer(
          () => {
            Effect.runSync(Ref.update(calls, (n) => n + 1))
            throw boom
          },
          { name: "registry", breaker: { failMax: 2, resetTimeout: "1 minute" } }
        )
      )
      const thrown = yield* Effect.flip(thrower.resolve(query))
      assert.deepStrictEqual(
        [thrown._tag, thrown.reason, thrown.concept, thrown.intent],
        ["DiscoveryError", "Unavailable", "weather", "forecast"]
      )
      assert.include(thrown.message, "registry: the lookup threw (registry client bug)")
      assert.strictEqual(thrown.cause, boom, "what the lookup threw is the cause")
      // It counts on the lookups' breaker, as a failing lookup does.
      yield* Effect.flip(thrower.resolve(query))
      const refused = yield* Effect.flip(thrower.resolve(query))
      assert.include(refused.message, "open")
      assert.strictEqual(yield* Ref.get(calls), 2)

      const inside = new Error("inside the effect")
      const dying = yield* resolver(
        Discovery.layer(
          () =>
            Effect.sync(() => {
              throw inside
            }),
          { name: "registry" }
        )
      )
      const died = yield* Effect.flip(dying.resolve(query))
      assert.deepStrictEqual([died.reason, died.cause], ["Unavailable", inside])
      assert.include(died.message, "registry: the lookup threw (inside the effect)")

      const failing = yield* resolver(Discovery.layer(() => Effect.fail(boom), { name: "registry" }))
      const failed = yield* Effect.flip(failing.resolve(query))
      assert.deepStrictEqual([failed.reason, failed.cause], ["Unavailable", boom])
      assert.include(failed.message, "registry: the lookup failed (registry client bug)")
      // A lookup failing with a string (or an object with a message) is named by it too, not just "failed".
      for (const [reason, shown] of [
        ["registry said no", "registry said no"],
        [{ _tag: "RegistryError", message: "quota exhausted" }, "quota exhausted"]
      ] as const) {
        const said = yield* resolver(Discovery.layer(() => Effect.fail(reason), { name: "registry" }))
        const saidError = yield* Effect.flip(said.resolve(query))
        assert.include(saidError.message, `registry: the lookup failed (${shown})`)
      }

      // Not an Effect (a JavaScript caller's async function): refused by name, its rejection handled.
      const promised = yield* resolver(
        Discovery.layer((() => Promise.reject(new Error("async lookup"))) as never, { name: "registry" })
      )
      const promise = yield* Effect.flip(promised.resolve(query))
      assert.strictEqual(promise.reason, "Unavailable")
      assert.include(promise.message, "registry: the lookup answered a Promise")
    })
  )

  it.effect("what a lookup failed with is cut short on a whole character, with a lone surrogate nowhere", () =>
    Effect.gen(function* () {
      // 299 units, then an emoji (two units) across the bound of 300, then more.
      const long = `${"x".repeat(299)}\u{1F600}${"y".repeat(1_000)}`
      const failing = yield* resolver(Discovery.layer(() => Effect.fail(new Error(long)), { name: "registry" }))
      const failed = yield* Effect.flip(failing.resolve(query))
      assert.include(failed.message, `registry: the lookup failed (${"x".repeat(299)}…)`)
      const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/
      assert.isFalse(
        loneSurrogate.test(failed.message),
        "a message written as UTF-8 (a log, a record) keeps every character"
      )
    })
  )

  it.effect(
    "an answer is bounded: the first maxAgents agents (default 10), best first, not thousands of fallbacks",
    () =>
      Effect.gen(function* () {
        const many = Array.from({ length: 5_000 }, (_, i) => ({ url: `http://127.0.0.1:1/${i}` }))
        const byDefault = yield* resolver(Discovery.layer(() => Effect.succeed(many)))
        const found = yield* byDefault.resolve(query)
        assert.deepStrictEqual(
          found.map((e) => e.url),
          many.slice(0, 10).map((e) => e.url)
        )
        const three = yield* resolver(Discovery.layer(() => Effect.succeed(many), { maxAgents: 3 }))
        assert.strictEqual((yield* three.resolve(query)).length, 3)
        for (const maxAgents of [0, 1.5, Number.NaN, -1, "3"]) {
          const error = yield* Effect.flip(
            resolver(Discovery.layer(() => Effect.succeed(many), { maxAgents: maxAgents as number }))
          )
          assert.strictEqual((error as { readonly path: string }).path, "maxAgents", String(maxAgents))
        }
      })
  )

  it.effect("options are checked into OptionErrors", () =>
    Effect.gen(function* () {
      for (const [options, path] of [
        [{ ttl: -1 }, "ttl"],
        [{ timeout: "soon" }, "timeout"],
        [{ capacity: 0 }, "capacity"],
        [{ staleFor: -1 }, "staleFor"],
        [{ staleFor: "soon" }, "staleFor"],
        [{ staleFor: Number.NaN }, "staleFor"],
        // The breaker's options are named under `breaker.` (Discovery has a timeout of its own).
        [{ breaker: { resetTimeout: -1 } }, "breaker.resetTimeout"],
        [{ breaker: { failureThreshold: 3 } }, "breaker.failureThreshold"],
        // Not silently the default breaker (null), nor named `breaker.(root)` (a number).
        [{ breaker: null }, "breaker"],
        [{ breaker: 5 }, "breaker"],
        [{ tll: "1 second" }, "tll"],
        [{ url: "http://127.0.0.1:1" }, "url"],
        // The label `agent="discovery:<name>"` and the breaker key: without a UTF-8 form, another's.
        [{ name: "d-\uD800" }, "name"],
        [null, "options"]
      ] as const) {
        const error = yield* Effect.flip(resolver(Discovery.layer(() => Effect.succeed([]), options as never)))
        assert.strictEqual((error as { readonly path: string }).path, path)
      }
      // No lookup: refused when built, not an Unavailable (counted on the breaker) at every query.
      for (const lookup of [undefined, null, { lookup: () => Effect.succeed([]) }]) {
        const error = yield* Effect.flip(resolver(Discovery.layer(lookup as never)))
        assert.strictEqual((error as { readonly path: string }).path, "lookup")
      }
    })
  )
})

describe("a discovery's name", () => {
  it.effect(
    "is refused when discovery:<name> would be too long to label series of its own (it counted under (other))",
    () =>
      Effect.gen(function* () {
        const longest = "d".repeat(246)
        const layers = (name: string) => [
          Discovery.layer(() => Effect.succeed([]), { name }),
          Discovery.layerStatic([], { name }),
          Discovery.layerHttp({ url: "http://127.0.0.1:1/discover", name }).pipe(
            Layer.provide(NodeHttpClient.layerUndici)
          )
        ]
        for (const layer of layers(`${longest}d`)) {
          const error = (yield* Effect.flip(resolver(layer))) as Input.OptionError
          assert.strictEqual(error.path, "name")
          assert.include(error.message, "at most 246 characters")
        }
        // `discovery:` and 246 characters: 256, a label of its own.
        for (const layer of layers(longest)) assert.strictEqual((yield* resolver(layer)).name, longest)
      })
  )
})

describe("Discovery.layerHttp", () => {
  it.effect("GET ?concept&intent; a 404 is NotFound, a 500 or a dead endpoint Unavailable; bodies are bounded", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((request, response) => {
        const concept = request.search.get("concept")
        if (concept === "weather") {
          return Server.json(response, 200, { agents: [{ url: "http://127.0.0.1:1/w", name: "meteo", timeout: 500 }] })
        }
        if (concept === "missing") return Server.json(response, 404, { error: "no such concept" })
        if (concept === "huge")
          return Server.endless(response, { contentType: "application/json", prefix: '{"agents":"' })
        return Server.json(response, 500, { error: "registry down" })
      })
      const discovery = yield* httpDiscovery({ url: `${server.url}/agents`, maxResponseBytes: 64 * 1024 })
      const found = yield* discovery.resolve(query)
      assert.deepStrictEqual(found, [{ url: "http://127.0.0.1:1/w", name: "meteo", timeout: 500 }])
      const [first] = yield* server.requests
      assert.strictEqual(first?.path, "/agents")
      assert.strictEqual(first?.search.get("intent"), "forecast")
      assert.strictEqual(
        (yield* Effect.flip(discovery.resolve({ concept: "missing", intent: "x" }))).reason,
        "NotFound"
      )
      assert.strictEqual(
        (yield* Effect.flip(discovery.resolve({ concept: "broken", intent: "x" }))).reason,
        "Unavailable"
      )
      const huge = yield* Effect.flip(discovery.resolve({ concept: "huge", intent: "x" }))
      assert.strictEqual(huge.reason, "Unavailable")
      assert.include(huge.message, "maxResponseBytes")
      const closed = yield* Effect.scoped(
        Effect.map(
          Server.make(() => undefined),
          (s) => s.url
        )
      )
      const dead = yield* httpDiscovery({ url: `${closed}/agents` })
      assert.strictEqual((yield* Effect.flip(dead.resolve(query))).reason, "Unavailable")
    })
  )

  it.effect(
    "a query the registry refuses (a 400, a 414) is that query's failure: it does not open the breaker for others",
    () =>
      Effect.gen(function* () {
        const server = yield* Server.make((request, response) => {
          const concept = request.search.get("concept")
          if (concept === "bad") return Server.json(response, 400, { error: "invalid concept" })
          if (concept === "down") return Server.json(response, 503, { error: "registry down" })
          return Server.json(response, 200, { agents: [{ url: "http://127.0.0.1:1/w" }] })
        })
        const discovery = yield* httpDiscovery({ url: `${server.url}/agents`, breaker: { failMax: 2 } })
        for (let i = 0; i < 3; i++) {
          const refused = yield* Effect.flip(discovery.resolve({ concept: "bad", intent: `x${i}` }))
          assert.strictEqual(refused.reason, "Unavailable")
          assert.include(refused.message, "HTTP 400")
          assert.strictEqual((refused.cause as { readonly reason: string }).reason, "InvalidRequest")
        }
        assert.strictEqual((yield* discovery.resolve(query)).length, 1, "the breaker is still closed")
        // the registry's own failures still open it
        for (let i = 0; i < 2; i++) yield* Effect.flip(discovery.resolve({ concept: "down", intent: `x${i}` }))
        const open = yield* Effect.flip(discovery.resolve({ concept: "other", intent: "x" }))
        assert.include(open.message, "open")
      })
  )

  it.effect("the registry is asked at its URL as given: a trailing slash is kept, and its query string", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((request, response) =>
        // A registry mounted at `/discover/` (as Django's APPEND_SLASH has it) knows no `/discover`.
        request.path === "/discover/"
          ? Server.json(response, 200, { agents: [{ url: "http://127.0.0.1:1/w" }] })
          : Server.json(response, 404, { error: "no such route" })
      )
      const slash = yield* httpDiscovery({ url: `${server.url}/discover/` })
      assert.strictEqual((yield* slash.resolve(query)).length, 1)
      const tenant = yield* httpDiscovery({ url: `${server.url}/discover/?tenant=a` })
      assert.strictEqual((yield* tenant.resolve(query)).length, 1)
      const [first, second] = yield* server.requests
      assert.deepStrictEqual(
        [first?.path, first?.search.get("concept"), first?.search.get("intent")],
        ["/discover/", "weather", "forecast"]
      )
      assert.deepStrictEqual([second?.path, second?.search.get("tenant")], ["/discover/", "a"])
    })
  )

  it.effect("options are checked into OptionErrors naming the field", () =>
    Effect.gen(function* () {
      for (const [options, path] of [
        [{ url: "http://user:pw@127.0.0.1:1" }, "url"],
        [{ url: "http://127.0.0.1:1", timeout: -1 }, "timeout"],
        [{ url: "http://127.0.0.1:1", maxResponseBytes: Number.NaN }, "maxResponseBytes"],
        [{ url: "http://127.0.0.1:1", tll: "1 second" }, "tll"],
        [{ url: "http://127.0.0.1:1", maxResponseByte: 1024 }, "maxResponseByte"]
      ] as const) {
        const error = yield* Effect.flip(httpDiscovery(options as Discovery.HttpOptions))
        assert.strictEqual((error as { readonly path: string }).path, path)
      }
    })
  )

  it.effect("a token in the registry URL's query reaches the registry but no span nor error message", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((request, response) =>
        Server.json(response, 500, { error: `bad token ${request.search.get("token")}` })
      )
      const { spans, tracer } = recording()
      const discovery = yield* httpDiscovery({ url: `${server.url}/agents?token=s3cret-token` })
      const error = yield* Effect.flip(discovery.resolve(query).pipe(Effect.provideService(Tracer.Tracer, tracer)))
      assert.strictEqual(error.reason, "Unavailable")
      const [first] = yield* server.requests
      assert.deepStrictEqual(
        [first?.search.get("token"), first?.search.get("concept"), first?.search.get("intent")],
        ["s3cret-token", "weather", "forecast"]
      )
      assert.notInclude(error.message, "s3cret")
      assert.notInclude(Cause.pretty(Cause.fail(error)), "s3cret")
      assert.notInclude(inspect(error, { depth: 20 }), "s3cret")
      assert.notInclude(JSON.stringify(error), "s3cret")
      const http = spans.find((s) => s.name === "GET")
      assert.isDefined(http)
      for (const span of spans) {
        assert.notInclude(inspect(Object.fromEntries(span.attributes), { depth: 10 }), "s3cret", span.name)
        if (span.status._tag === "Ended" && Exit.isFailure(span.status.exit)) {
          assert.notInclude(Cause.pretty(span.status.exit.cause), "s3cret", span.name)
        }
      }
    })
  )
})

describe("HttpAgent tasks by (concept, intent)", () => {
  it.effect("a task without an agent is sent to the discovered agent, and falls back along the discovered list", () =>
    Effect.gen(function* () {
      const down = yield* AgentServer.make(() => ({ status: 503 }))
      const meteo = yield* AgentServer.make()
      const agents = yield* agentsWith(
        Discovery.layerStatic([
          { concept: "weather", intent: "forecast", agents: [{ url: meteo.url, name: "meteo" }] },
          {
            concept: "weather",
            intent: "history",
            agents: [
              { url: down.url, name: "archive" },
              { url: meteo.url, name: "meteo" }
            ]
          }
        ])
      )
      const forecast = yield* agents.call({ id: "f", intent: "forecast", concept: "weather" })
      assert.deepStrictEqual([forecast.status, forecast.agent], ["success", "meteo"])
      const history = yield* agents.call({ id: "h", intent: "history", concept: "weather" })
      assert.deepStrictEqual([history.status, history.agent, history.fallbackUsed], ["success", "meteo", true])
      assert.strictEqual(down.requests(), 1)
    })
  )

  it.effect("a task's own fallback agents follow the agents discovery found", () =>
    Effect.gen(function* () {
      const down = yield* AgentServer.make(() => ({ status: 503 }))
      const spare = yield* AgentServer.make()
      const agents = yield* agentsWith(
        Discovery.layerStatic([{ concept: "weather", intent: "*", agents: [{ url: down.url, name: "archive" }] }])
      )
      // The fallback was dropped: the task ended with the discovered agent's 503.
      const record = yield* agents.call({
        id: "h",
        intent: "history",
        concept: "weather",
        fallback: [HttpAgent.agent({ url: spare.url, name: "spare" }), down.url]
      })
      assert.deepStrictEqual(
        [record.status, record.agent, record.fallbackUsed, record.attempts],
        ["success", "spare", true, 2]
      )
      assert.deepStrictEqual([down.requests(), spare.requests()], [1, 1])
    })
  )

  it.effect("an agent discovered twice is sent the task once", () =>
    Effect.gen(function* () {
      // A malformed answer falls back without counting on the breaker (which opens at one failure here).
      const down = yield* AgentServer.make(() => ({ raw: "not json", contentType: "application/json" }))
      const meteo = yield* AgentServer.make()
      const agents = yield* agentsWith(
        Discovery.layerStatic([
          { concept: "weather", intent: "*", agents: [{ url: down.url, name: "archive" }] },
          { concept: "weather", intent: "*", agents: [{ url: down.url, name: "archive" }, { url: meteo.url }] }
        ])
      )
      const record = yield* agents.call({ id: "h", intent: "history", concept: "weather" })
      assert.deepStrictEqual([record.status, record.attempts, record.fallbackUsed], ["success", 2, true])
      assert.strictEqual(down.requests(), 1)
      const looked = yield* agentsWith(Discovery.layer(() => Effect.succeed([{ url: down.url }, { url: down.url }])))
      const again = yield* looked.call({ id: "h2", intent: "history", concept: "weather" })
      assert.deepStrictEqual([again.status, again.error?.reason, again.attempts], ["error", "Decode", 1])
      assert.strictEqual(down.requests(), 2)
    })
  )

  it.effect("a discovered endpoint's fields of the registry's own do not make an invalid agent", () =>
    Effect.gen(function* () {
      const meteo = yield* AgentServer.make()
      const agents = yield* agentsWith(
        Discovery.layer(() => Effect.succeed([{ url: meteo.url, name: "meteo", weight: 3, healthy: true }]))
      )
      const record = yield* agents.call({ id: "f", intent: "forecast", concept: "weather" })
      assert.deepStrictEqual([record.status, record.agent], ["success", "meteo"])
    })
  )

  it.effect("nothing found, or discovery down: a service_unavailable record; nothing is sent", () =>
    Effect.gen(function* () {
      const meteo = yield* AgentServer.make()
      const agents = yield* agentsWith(
        Discovery.layerStatic([{ concept: "weather", intent: "forecast", agents: { url: meteo.url } }])
      )
      const record = yield* agents.call({ id: "s", intent: "quote", concept: "stocks" })
      assert.strictEqual(record.status, "service_unavailable")
      assert.strictEqual(record.error?.reason, "DiscoveryNotFound")
      assert.strictEqual(record.agent, "discovery:static")
      const closed = yield* Effect.scoped(
        Effect.map(
          Server.make(() => undefined),
          (s) => s.url
        )
      )
      const downAgents = yield* agentsWith(
        Discovery.layerHttp({ url: `${closed}/agents` }).pipe(Layer.provide(NodeHttpClient.layerUndici))
      )
      const down = yield* downAgents.call({ id: "d", intent: "forecast", concept: "weather" })
      assert.deepStrictEqual([down.status, down.error?.reason], ["service_unavailable", "DiscoveryUnavailable"])
      assert.strictEqual(meteo.requests(), 0)
      const stats = yield* agents.stats("discovery:static")
      assert.strictEqual(stats.statuses.service_unavailable, 1)
      // A task skipped before discovery ran is labelled as discovery's records are.
      const batch = yield* agents.dispatch([
        { id: "root", intent: "quote", concept: "stocks" },
        { id: "child", intent: "forecast", concept: "weather", dependsOn: ["root"] }
      ])
      assert.deepStrictEqual(
        batch.map((r) => [r.status, r.agent, r.url]),
        [
          ["service_unavailable", "discovery:static", ""],
          ["skipped", "discovery:static", ""]
        ]
      )
    })
  )

  it.effect(
    "a Discovery service of your own that answers no agent, throws or dies ends the task unavailable, not in a defect",
    () =>
      Effect.gen(function* () {
        const spare = yield* AgentServer.make()
        const agents = yield* agentsWith(
          Layer.succeed(
            Discovery.Discovery,
            Discovery.Discovery.of({ name: "custom", resolve: () => Effect.succeed([]) })
          )
        )
        // The call died (the first agent of none was read).
        const record = yield* agents.call({ id: "e", intent: "forecast", concept: "weather" })
        assert.deepStrictEqual(
          [record.status, record.agent, record.error?.reason],
          ["service_unavailable", "discovery:custom", "DiscoveryNotFound"]
        )
        const withFallback = yield* agents.call({
          id: "f",
          intent: "forecast",
          concept: "weather",
          fallback: [spare.url]
        })
        assert.deepStrictEqual([withFallback.status, withFallback.agent], ["success", spare.url])
        // One that throws, or dies, made the call die: a call never fails.
        for (const resolve of [
          () => {
            throw new Error("registry client bug")
          },
          () => Effect.die(new Error("registry client bug"))
        ]) {
          const broken = yield* agentsWith(
            Layer.succeed(Discovery.Discovery, Discovery.Discovery.of({ name: "custom", resolve }))
          )
          const record = yield* broken.call({ id: "t", intent: "forecast", concept: "weather" })
          assert.deepStrictEqual(
            [record.status, record.agent, record.error?.reason],
            ["service_unavailable", "discovery:custom", "DiscoveryUnavailable"]
          )
          assert.include(record.error?.message, "registry client bug")
        }
      })
  )

  it.effect("a lookup that throws ends the task with a service_unavailable record naming it, not a defect", () =>
    Effect.gen(function* () {
      const agents = yield* agentsWith(
        Discovery.layer(
          () => {
            throw new Error("registry client bug")
          },
          { name: "registry" }
        )
      )
      const record = yield* agents.call({ id: "t", intent: "forecast", concept: "weather" })
      assert.deepStrictEqual(
        [record.status, record.agent, record.error?.reason],
        ["service_unavailable", "discovery:registry", "DiscoveryUnavailable"]
      )
      assert.include(record.error?.message, "registry: the lookup threw (registry client bug)")
    })
  )
})
