import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Metric, Result, Scope } from "effect"
import { TestClock } from "effect/testing"
import * as Batch from "../src/Batch.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Domain from "../src/Domain.js"
import { ModelProvider } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { Router } from "../src/Router.js"
import * as Stats from "../src/Stats.js"
import * as Executor from "../src/Executor.js"

const ask = { prompt: "q" }

/** Builds a manager over named mocks in its own scope, with a private metric registry. */
const build = <const M extends Record<string, Mock.Options>>(
  mocks: M,
  options: Omit<Orchestra.Options<Record<string, never>>, "providers"> = {}
) =>
  Effect.gen(function* () {
    const made = yield* Effect.forEach(Object.entries(mocks), ([key, mock]) =>
      Effect.map(Mock.make({ name: key, ...mock }), (m) => [key, m] as const)
    )
    const providers = Object.fromEntries(made.map(([key, m]) => [key, Layer.succeed(ModelProvider, m.provider)]))
    const scope = yield* Scope.make()
    const registry: Metric.MetricRegistry = new Map()
    const context = yield* Layer.buildWithScope(Orchestra.layer({ ...options, providers }), scope).pipe(
      Effect.provideService(Metric.MetricRegistry, registry)
    )
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    return {
      context,
      router: Context.get(context, Router),
      controls: Object.fromEntries(made.map(([key, m]) => [key, m.control])) as Record<keyof M, Mock.Control>,
      scope,
      registry
    }
  })

const configError = (options: Orchestra.Options<Record<string, Layer.Layer<ModelProvider>>>) =>
  Effect.flip(Layer.build(Orchestra.layer(options)))

describe("Orchestra.layer: domains", () => {
  it.effect(
    "a name in an OptionError is quoted and bounded, as every other check shows one: a line break forged a log line, a long one went whole in",
    () =>
      Effect.gen(function* () {
        const main = Layer.succeed(ModelProvider, (yield* Mock.make({ name: "main" })).provider)
        const long = "x".repeat(100_000)
        const forged = "nope\nERROR payments down"
        for (const [options, path] of [
          [{ providers: { main }, defaultProvider: long as never }, "defaultProvider"],
          [{ providers: { main }, defaultProvider: forged as never }, "defaultProvider"],
          [{ providers: { main }, domains: [{ name: "d", provider: long }] }, "domains[0].provider"],
          [{ providers: { main }, domains: [{ name: "d", provider: forged }] }, "domains[0].provider"],
          [{ providers: { main }, domains: [{ name: `main/${long}`, provider: "main" }] }, "domains[0].name"],
          [{ providers: { main }, rateLimits: { providers: { [forged]: { requestsPerMinute: 5 } } } }, undefined],
          // A provider key no domain can name (a leading space), or no layer.
          [{ providers: { main, [` ${long}`]: main } }, undefined],
          [{ providers: { main, [forged]: "a layer" as never } }, undefined],
          // A domain named twice.
          [
            {
              providers: { main },
              domains: [{ name: forged, provider: "main" }],
              extraDomains: [{ name: forged, provider: "main" }]
            },
            "extraDomains[0].name"
          ],
          [
            {
              providers: { main },
              overrideDomains: [
                { name: long, provider: "main" },
                { name: long, provider: "main" }
              ]
            },
            "overrideDomains[1].name"
          ]
        ] as const) {
          const error = yield* configError(options as never)
          assert.strictEqual(error._tag, "OptionError")
          if (path !== undefined) assert.strictEqual((error as { readonly path: string }).path, path)
          assert.isBelow(error.message.length, 600, error.message.slice(0, 200))
          assert.notInclude(error.message, "\n", error.message)
        }
        // A plain name reads as before.
        const plain = yield* configError({ providers: { main }, defaultProvider: "nope" as never })
        assert.include(plain.message, 'no provider named "nope" (given: main)')
      })
  )

  it.effect("a manager without domains serves the predefined ones on its default provider", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* build({ main: {}, other: {} })
      for (const name of ["support", "technical", "finance"]) {
        const answer = yield* router.execute(ask, name)
        assert.strictEqual(answer.domain, name)
        assert.strictEqual(answer.provider, "main")
      }
      const requests = (yield* controls.main.requests).map(
        (r) => r.request as { system?: string; temperature?: number }
      )
      assert.include(requests[0]!.system, "customer support")
      assert.include(requests[2]!.system, "financial analyst")
      assert.strictEqual(requests[2]!.temperature, 0.2)
      assert.strictEqual(yield* controls.other.calls, 0)
    })
  )

  it.effect("defaultProvider picks the provider of the predefined domains and of calls without a domain", () =>
    Effect.gen(function* () {
      const { router, context, controls } = yield* build({ main: {}, other: {} }, { defaultProvider: "other" })
      assert.strictEqual((yield* router.execute(ask, "support")).provider, "other")
      assert.strictEqual(Context.get(context, ModelProvider).name, "other")
      assert.strictEqual(yield* controls.main.calls, 0)
    })
  )

  it.effect("extraDomains are added to the predefined ones", () =>
    Effect.gen(function* () {
      const { router } = yield* build({ a: {} }, { extraDomains: [{ name: "legal", provider: "a", system: "lawyer" }] })
      assert.strictEqual((yield* router.execute(ask, "support")).domain, "support")
      assert.strictEqual((yield* router.execute(ask, "legal")).domain, "legal")
    })
  )

  it.effect(
    "two providers of one name are refused naming the second: they would share breakers, caches and stats",
    () =>
      Effect.gen(function* () {
        // Both keep Mock's default name, "mock".
        const refused = yield* configError({
          providers: { first: Mock.layer() as never, second: Mock.layer({ latency: "5 millis" }) as never },
          domains: [{ name: "one", provider: "first" }]
        })
        assert.strictEqual(refused._tag, "OptionError")
        assert.strictEqual(refused.path, "providers.second.name")
        assert.include(refused.message, "providers.first")
        // Keys differ from names, names differ: accepted.
        const built = yield* Effect.exit(
          Effect.scoped(
            Layer.build(
              Orchestra.layer({
                providers: { first: Mock.layer({ name: "a" }), second: Mock.layer({ name: "b" }) },
                domains: [{ name: "one", provider: "first" }]
              })
            )
          )
        )
        assert.isTrue(Exit.isSuccess(built))
      })
  )

  it.effect(
    "extraDomains with a built-in name is refused naming it; overrideDomains replaces it (issue 13 item 27)",
    () =>
      Effect.gen(function* () {
        const main = Layer.succeed(ModelProvider, (yield* Mock.make({ name: "main" })).provider)
        const refused = yield* configError({
          providers: { main },
          extraDomains: [
            { name: "legal", provider: "main" },
            { name: "support", provider: "main", system: "mine" }
          ]
        })
        assert.strictEqual(refused._tag, "OptionError")
        assert.strictEqual(refused.path, "extraDomains[1].name")
        assert.include(refused.message, "overrideDomains")
        const duplicate = yield* configError({
          providers: { main },
          domains: [{ name: "only", provider: "main" }],
          extraDomains: [{ name: "only", provider: "main" }]
        })
        assert.strictEqual(duplicate.path, "extraDomains[0].name")
        // "none" is the domain of calls made without one (`Metrics.noDomain`), in every list.
        for (const list of ["domains", "extraDomains", "overrideDomains"] as const) {
          const reserved = yield* configError({ providers: { main }, [list]: [{ name: "none", provider: "main" }] })
          assert.strictEqual(reserved.path, `${list}[0].name`)
          assert.include(reserved.message, '"none" is reserved')
        }

        const { router, controls } = yield* build(
          { main: {} },
          {
            overrideDomains: [
              { name: "support", provider: "main", system: "our own support voice" },
              { name: "legal", provider: "main", system: "lawyer" }
            ]
          }
        )
        yield* router.execute(ask, "support")
        yield* router.execute(ask, "technical")
        yield* router.execute(ask, "legal")
        const systems = (yield* controls.main.requests).map((r) => (r.request as { system?: string }).system)
        assert.strictEqual(systems[0], "our own support voice")
        assert.include(systems[1], "software engineer")
        assert.strictEqual(systems[2], "lawyer")
      })
  )

  it.effect("a domain named as a provider's provider/model is refused: a gateway would read one as the other", () =>
    Effect.gen(function* () {
      const main = Layer.succeed(ModelProvider, (yield* Mock.make({ name: "main" })).provider)
      for (const list of ["domains", "extraDomains", "overrideDomains"] as const) {
        const refused = yield* configError({
          providers: { main },
          [list]: [{ name: "main/gpt-4o", provider: "main", model: "small" }]
        })
        assert.strictEqual(refused._tag === "OptionError" && refused.path, `${list}[0].name`)
        assert.include(refused.message, 'provider "main"')
      }
      // A slash is fine where no provider is named before it.
      const { router } = yield* build({ main: {} }, { domains: [{ name: "team/legal", provider: "main" }] })
      assert.strictEqual((yield* router.execute(ask, "team/legal")).domain, "team/legal")
    })
  )

  it.effect("a provider key that no domain could name, or a gateway could not split, is refused naming the key", () =>
    Effect.gen(function* () {
      const main = Layer.succeed(ModelProvider, (yield* Mock.make({ name: "main" })).provider)
      for (const key of ["", " main", "main ", "open/ai"]) {
        const refused = yield* configError({ providers: { [key]: main } })
        assert.strictEqual(refused._tag === "OptionError" && refused.path, `providers.${key}`, JSON.stringify(key))
        assert.include(refused.message, JSON.stringify(key))
      }
    })
  )

  it.effect("every other option is checked when the layer is built, naming the field as the options spell it", () =>
    Effect.gen(function* () {
      const main = Layer.succeed(ModelProvider, (yield* Mock.make({ name: "main" })).provider)
      const cases: ReadonlyArray<readonly [Orchestra.Options<Record<string, Layer.Layer<ModelProvider>>>, string]> = [
        [{ providers: {} }, "providers"],
        [{} as never, "providers"],
        [{ providers: null } as never, "providers"],
        [{ providers: [main] } as never, "providers"],
        [{ providers: { main, other: Mock.layer } } as never, "providers.other"],
        [{ providers: { main: undefined } } as never, "providers.main"],
        [{ providers: { main }, defaultProvider: "nope" as never }, "defaultProvider"],
        [{ providers: { main }, domains: [{ name: "x", provider: "main", timeout: -1 }] }, "domains[0].timeout"],
        [
          { providers: { main }, extraDomains: [{ name: "x", provider: "main", retry: { maxAttempts: 0 } }] },
          "extraDomains[0].retry.maxAttempts"
        ],
        [{ providers: { main }, extraDomains: {} as never }, "extraDomains"],
        [
          {
            providers: { main },
            extraDomains: [{ name: "legal", provider: "main", fallback: ["support", "nowhere"] }]
          },
          "extraDomains[0].fallback[1]"
        ],
        [
          { providers: { main }, overrideDomains: [{ name: "support", provider: "main", timeout: 0 }] },
          "overrideDomains[0].timeout"
        ],
        [
          {
            providers: { main },
            overrideDomains: [
              { name: "support", provider: "main" },
              { name: "support", provider: "main" }
            ]
          },
          "overrideDomains[1].name"
        ],
        [
          {
            providers: { main },
            extraDomains: [
              { name: "legal", provider: "mian" },
              { name: "triage", provider: "main", fallback: ["legal"] }
            ]
          },
          "extraDomains[0].provider"
        ],
        [
          { providers: { main }, overrideDomains: [{ name: "technical", provider: "other" }] },
          "overrideDomains[0].provider"
        ],
        [{ providers: { main }, overrideDomains: "support" as never }, "overrideDomains"],
        [{ providers: { main }, overrideDomains: [null as never] }, "overrideDomains[0]"],
        [{ providers: { main }, maxConcurent: 1 } as never, "maxConcurent"],
        [{ providers: { main }, executor: { timout: "1 second" } } as never, "executor.timout"],
        [{ providers: { main }, maxConcurrent: 0 }, "maxConcurrent"],
        [{ providers: { main }, maxConcurrent: Number.NaN }, "maxConcurrent"],
        [{ providers: { main }, maxItems: 0 }, "maxItems"],
        [{ providers: { main }, maxItems: -3 }, "maxItems"],
        [{ providers: { main }, maxItems: 2.5 }, "maxItems"],
        [{ providers: { main }, maxItems: Number.NaN }, "maxItems"],
        [{ providers: { main }, maxItems: "10" as never }, "maxItems"],
        [{ providers: { main }, executor: { timeout: "soon" as never } }, "executor.timeout"],
        [{ providers: { main }, breakers: { failMax: 1.5 } }, "breakers.failMax"],
        [
          { providers: { main }, rateLimits: { default: { requestsPerMinute: -1 } } },
          "rateLimits.default.requestsPerMinute"
        ],
        [{ providers: { main }, cache: { ttl: Number.NaN } }, "cache.ttl"],
        // Options of a part that are not an object: the part named, not `breakers.(root)`, `cache.0`,
        // `rateLimits.options` (and an array taken for empty options).
        [{ providers: { main }, breakers: "yes" as never }, "breakers"],
        [{ providers: { main }, breakers: [] as never }, "breakers"],
        [{ providers: { main }, rateLimits: "yes" as never }, "rateLimits"],
        [{ providers: { main }, rateLimits: null as never }, "rateLimits"],
        [{ providers: { main }, cache: "yes" as never }, "cache"],
        [{ providers: { main }, cache: [] as never }, "cache"],
        [{ providers: { main }, executor: "x" as never }, "executor"],
        [{ providers: { main }, executor: false as never }, "executor"],
        // From code without types: no options object at all, and a default provider that is no name.
        [null as never, "options"],
        [undefined as never, "options"],
        ["main" as never, "options"],
        [[{ providers: { main } }] as never, "options"],
        [{ providers: { main }, defaultProvider: null as never }, "defaultProvider"],
        [{ providers: { main }, defaultProvider: 1 as never }, "defaultProvider"]
      ]
      const paths: Array<string> = []
      for (const [options] of cases) {
        const error = yield* configError(options)
        paths.push(error._tag === "OptionError" ? error.path : `${error._tag}`)
      }
      assert.deepStrictEqual(
        paths,
        cases.map(([, path]) => path)
      )
    })
  )
})

describe("Orchestra.layer: lists of a huge length", () => {
  it.effect("a sparse or a Proxy's list of 2 ** 32 - 1 is refused naming it before any of it is read", () =>
    Effect.gen(function* () {
      let reads = 0
      // `new Array(2 ** 32 - 1)` costs nothing to make; the build copied it for half a minute (a domain's
      // `fallback`: for minutes), and then named `options`.
      const huge = () =>
        new Proxy([] as Array<never>, {
          get: (target, key) => {
            if (key === "length") return 2 ** 32 - 1
            if (typeof key === "string" && /^\d+$/.test(key)) reads++
            return Reflect.get(target, key)
          }
        })
      const providers = { main: Mock.layer() }
      for (const [options, path] of [
        [{ providers, domains: huge() }, "domains"],
        [{ providers, extraDomains: huge() }, "extraDomains"],
        [{ providers, domains: [{ name: "a", provider: "main", fallback: huge() }] }, "domains[0].fallback"]
      ] as const) {
        const error = yield* configError(options as never)
        assert.deepStrictEqual(
          [error._tag === "OptionError" && error.path, error.message],
          [path, `invalid ${path}: expected at most 1000000 items, got 4294967295`]
        )
      }
      const checked = Domain.check([{ name: "a", provider: "main", fallback: huge() }])
      assert.deepStrictEqual(Result.isFailure(checked) && checked.failure, {
        path: "domains[0].fallback",
        message: "expected at most 1000000 items, got 4294967295"
      })
      assert.strictEqual(reads, 0)
    })
  )
})

describe("Orchestra.layer: shared policies", () => {
  it.effect("one breaker per provider, shared by every domain on it; breakers: false disables them", () =>
    Effect.gen(function* () {
      const domains = [
        { name: "one", provider: "main" },
        { name: "two", provider: "main" }
      ]
      const { router, context, controls } = yield* build(
        { main: { script: [Mock.Outcome.fail("Overloaded")] } },
        { breakers: { failMax: 1, resetTimeout: "1 minute" }, domains }
      )
      yield* Effect.flip(router.execute(ask, "one"))
      const refused = yield* Effect.flip(router.execute(ask, "two"))
      assert.strictEqual(refused._tag, "CircuitOpenError")
      assert.strictEqual(yield* controls.main.calls, 1)
      assert.strictEqual(yield* Context.get(context, CircuitBreaker.Breakers).state("main"), "open")

      const off = yield* build({ main: { script: [Mock.Outcome.fail("Overloaded")] } }, { breakers: false, domains })
      assert.isUndefined(Context.getOrUndefined(off.context, CircuitBreaker.Breakers))
      yield* Effect.flip(off.router.execute(ask, "one"))
      assert.strictEqual((yield* off.router.execute(ask, "two")).response.text, "mock answer to: q")
    })
  )

  it.effect("maxConcurrent bounds the items running at once across batches", () =>
    Effect.gen(function* () {
      const { context, controls } = yield* build({ main: { latency: "1 second" } }, { maxConcurrent: 2 })
      const batch = Context.get(context, Batch.Batch)
      assert.strictEqual(batch.limit, 2)
      const fiber = yield* Effect.forkChild(
        Effect.all([batch.run(["a", "b", "c"], { domain: "support" }), batch.run(["d", "e"], { domain: "support" })], {
          concurrency: "unbounded"
        })
      )
      yield* TestClock.adjust("3 seconds")
      const [first, second] = yield* Fiber.join(fiber)
      assert.strictEqual(first.results.length + second.results.length, 5)
      assert.strictEqual(yield* controls.main.peak, 2)
    })
  )
  it.effect("maxItems caps the items of one batch: a longer batch fails its run naming items", () =>
    Effect.gen(function* () {
      const { context, controls } = yield* build({ main: {} }, { maxItems: 2 })
      const batch = Context.get(context, Batch.Batch)
      assert.strictEqual((yield* batch.run(["a", "b"], { domain: "support" })).results.length, 2)
      const refused = yield* Effect.flip(batch.run(["a", "b", "c"], { domain: "support" }))
      assert.strictEqual(refused.reason, "InvalidRequest")
      assert.strictEqual(refused.field, "items")
      assert.include(refused.message, "2")
      assert.strictEqual(yield* controls.main.calls, 2)
    })
  )
})

describe("Orchestra.layer: rate limits", () => {
  it.effect("limits go under the provider's name; a key that is no provider's name is refused, naming both", () =>
    Effect.gen(function* () {
      const mock = Layer.succeed(ModelProvider, (yield* Mock.make({ name: "rl-mock" })).provider)
      const main = Layer.succeed(ModelProvider, (yield* Mock.make({ name: "rl-main" })).provider)
      const renamed = yield* configError({
        providers: { "rl-main": mock },
        rateLimits: { providers: { "rl-main": { requestsPerMinute: 1 } }, maxWait: 0 }
      })
      assert.strictEqual(renamed._tag, "OptionError")
      assert.strictEqual(renamed._tag === "OptionError" && renamed.path, "rateLimits.providers.rl-main")
      assert.include(renamed.message, '"rl-mock"')
      const unknown = yield* configError({
        providers: { "rl-main": main },
        rateLimits: { providers: { "rl-other": { requestsPerMinute: 1 } } }
      })
      assert.strictEqual(unknown._tag === "OptionError" && unknown.path, "rateLimits.providers.rl-other")

      const { router } = yield* build(
        { "rl-named": {} },
        {
          domains: [{ name: "rl", provider: "rl-named" }],
          rateLimits: { providers: { "rl-named": { requestsPerMinute: 1 } }, maxWait: 0 }
        }
      )
      yield* router.execute(ask, "rl")
      const limited = yield* Effect.flip(router.execute(ask, "rl"))
      assert.strictEqual(limited._tag === "ModelError" && limited.reason, "RateLimited")
    })
  )
})

describe("Orchestra.layer: nested managers", () => {
  it.effect("a manager provided inside another one's region builds its own Router and Stats", () =>
    Effect.gen(function* () {
      const outer = Orchestra.layer({ providers: { "nest-a": Mock.layer({ name: "nest-a" }) } })
      const inner = Orchestra.layer({
        providers: { "nest-b": Mock.layer({ name: "nest-b" }) },
        extraDomains: [{ name: "legal", provider: "nest-b" }]
      })
      const ask2 = Effect.gen(function* () {
        const router = yield* Router
        const support = yield* router.execute(ask, "support")
        const legal = yield* Effect.exit(router.execute(ask, "legal"))
        const stats = yield* Stats.snapshot()
        const fromA = yield* Stats.snapshot({ provider: "nest-a" })
        return {
          support: support.provider,
          legal: Exit.isSuccess(legal) ? legal.value.provider : "refused",
          total: stats.total,
          fromA: fromA.total
        }
      })
      const [before, nested] = yield* Effect.all([ask2, ask2.pipe(Effect.provide(inner))]).pipe(Effect.provide(outer))
      assert.deepStrictEqual([before.support, before.legal], ["nest-a", "refused"])
      assert.deepStrictEqual([nested.support, nested.legal], ["nest-b", "nest-b"])
      // The inner manager's Stats saw only its own two calls, not the outer one's.
      assert.deepStrictEqual([nested.total, nested.fromA], [2, 0])
    })
  )

  it.effect("Executor.layerWithStats inside another one's region has its own Stats", () =>
    Effect.gen(function* () {
      const withStats = (name: string) => Executor.layerWithStats().pipe(Layer.provide(Mock.layer({ name })))
      const total = Effect.flatMap(Executor.Executor, (executor) => executor.execute(ask)).pipe(
        Effect.andThen(Stats.snapshot()),
        Effect.map((s) => s.total)
      )
      const [outer, inner] = yield* Effect.all([total, total.pipe(Effect.provide(withStats("nest-d")))]).pipe(
        Effect.provide(withStats("nest-c"))
      )
      assert.deepStrictEqual([outer, inner], [1, 1])
    })
  )
})

describe("Orchestra lifecycle", () => {
  it.effect("closing the scope drains, refuses new work, interrupts the rest and every caller gets an outcome", () =>
    Effect.gen(function* () {
      const { router, controls, scope } = yield* build(
        { a: { script: [Mock.Outcome.succeed("done", { latency: "1 second" }), Mock.Outcome.hang()] } },
        { executor: { shutdownDeadline: "3 seconds", timeout: "1 minute" }, domains: [{ name: "d-a", provider: "a" }] }
      )
      const finishing = yield* Effect.forkChild(router.execute({ prompt: "1" }, "d-a"))
      const stuck = yield* Effect.forkChild(router.execute({ prompt: "2" }, "d-a"))
      yield* TestClock.adjust("10 millis")
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
      yield* TestClock.adjust("10 millis")
      const refused = yield* Effect.flip(router.execute({ prompt: "3" }, "d-a"))
      assert.strictEqual(refused._tag, "ShuttingDownError")
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(finishing)).response.text, "done")
      assert.isUndefined(closing.pollUnsafe())
      yield* TestClock.adjust("3 seconds")
      yield* Fiber.join(closing)
      const stuckError = yield* Effect.flip(Fiber.join(stuck))
      assert.strictEqual(stuckError._tag, "ShuttingDownError")
      assert.strictEqual(yield* controls.a.inFlight, 0)
    })
  )

  it.effect("docs' Ctrl-C pattern: interrupting the main fiber drains the detached batch's running calls", () =>
    Effect.gen(function* () {
      const manager = Orchestra.layer({
        providers: { main: Mock.layer({ name: "ctrl-c", latency: "1 second" }) },
        executor: { shutdownDeadline: "5 seconds" }
      })
      const questions = Array.from({ length: 20 }, (_, i) => `question ${i}`)
      let reported: Batch.BatchResult | undefined
      const main = Effect.gen(function* () {
        const scope = yield* Scope.make()
        const built = yield* Layer.buildWithScope(manager, scope)
        const batch = yield* Effect.forkDetach(Batch.run(questions, { domain: "support" }).pipe(Effect.provide(built)))
        const report = (result: Batch.BatchResult) => Effect.sync(() => (reported = result))
        yield* Fiber.join(batch).pipe(
          Effect.flatMap(report),
          Effect.onInterrupt(() =>
            Scope.close(scope, Exit.void).pipe(Effect.andThen(Fiber.join(batch)), Effect.flatMap(report), Effect.ignore)
          ),
          Effect.ensuring(Scope.close(scope, Exit.void))
        )
      })
      const fiber = yield* Effect.forkChild(main)
      yield* TestClock.adjust("1500 millis")
      const interrupting = yield* Effect.forkChild(Fiber.interrupt(fiber))
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(interrupting)
      const statuses = reported!.results.map((r) => r.status)
      // Five answered in the first second, the five running at Ctrl-C finished; the rest were refused.
      assert.strictEqual(statuses.filter((s) => s === "success").length, 10)
      assert.strictEqual(reported!.results.length, 20)
    })
  )

  it.effect("closing the manager removes its metric series from the registry", () =>
    Effect.gen(function* () {
      const { router, scope, registry } = yield* build({ main: {} })
      yield* router.execute(ask, "support")
      const ours = () => Array.from(registry.values()).filter((m) => m.id.startsWith("orchestra_")).length
      assert.isAbove(ours(), 0)
      yield* Scope.close(scope, Exit.void)
      assert.strictEqual(ours(), 0)
    })
  )
})
