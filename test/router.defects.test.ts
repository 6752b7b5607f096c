import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, Stream, Tracer } from "effect"
import type { AiError } from "../src/AiError.js"
import { TestClock } from "effect/testing"
import { Outcome } from "../src/Model/Mock.js"
import { captureLogs } from "./utils/logs.js"
import { makeManager } from "./utils/manager.js"

const ask = { prompt: "q" }
const collecting = Tracer.make({ span: (options) => new Tracer.NativeSpan(options) })

const invalidField = (error: AiError) =>
  error._tag === "ModelError" && error.reason === "InvalidRequest" ? error.field : `${error._tag}: ${error.message}`

describe('Router.hedge after: "p95"', () => {
  it.effect("a first domain that answers in under a millisecond does not start a backup at once on every call", () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager({
        // 20 instant answers (a cache, a local model: a p95 of 0 ms), then one 3 ms late, then one that stalls.
        primary: {
          script: [
            ...Array.from({ length: 20 }, () => Outcome.succeed("primary")),
            Outcome.succeed("primary", { latency: "3 millis" }),
            Outcome.succeed("primary", { latency: "1 second" })
          ]
        },
        backup: { latency: "5 millis", respond: () => "backup" }
      })
      for (let i = 0; i < 20; i++) yield* router.execute(ask, "d-primary")
      assert.strictEqual((yield* stats.snapshot({ provider: "primary" })).serviceTime.p95, 0)
      const hedge = router.hedge(ask, ["d-primary", "d-backup"], { after: "p95", defaultAfter: "2 seconds" })
      // 3 ms late is no tail worth a second call: the primary answers, no backup started.
      const quick = yield* Effect.forkChild(hedge)
      yield* Effect.yieldNow
      const atOnce = yield* controls.backup!.calls
      yield* TestClock.adjust("3 millis")
      const answer = yield* Fiber.join(quick)
      assert.strictEqual(atOnce, 0, "a p95 of 0 ms started the backup at once")
      assert.strictEqual(answer.response.text, "primary")
      assert.isUndefined(answer.hedgeWon)
      assert.strictEqual(yield* controls.backup!.calls, 0)
      // A primary that stalls still gets its backup, after the floor (10 ms), not after defaultAfter.
      const stalled = yield* Effect.forkChild(hedge)
      yield* TestClock.adjust("9 millis")
      const early = yield* controls.backup!.calls
      yield* TestClock.adjust("1 millis")
      const onTime = yield* controls.backup!.calls
      yield* TestClock.adjust("5 millis")
      const backup = yield* Fiber.join(stalled)
      assert.deepStrictEqual([early, onTime], [0, 1])
      assert.strictEqual(backup.response.text, "backup")
      assert.isTrue(backup.hedgeWon)
      assert.deepStrictEqual((yield* stats.snapshot()).hedges, { started: 1, won: 1, lost: 0 })
    })
  )
})

describe('Router.hedge after: "p95" on a domain that also streams', () => {
  it.effect("reads the p95 of the domain's calls: its streams, seconds long, do not delay every backup", () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager({
        // 30 streams of ten words (100 ms + 9 x 1 s each), 20 calls answered in 100 ms, then one that stalls.
        primary: {
          script: [...Array.from({ length: 50 }, () => Outcome.succeed("a b c d e f g h i j")), Outcome.hang()],
          latency: "100 millis",
          chunkDelay: "1 second"
        },
        backup: { latency: "5 millis", respond: () => "backup" }
      })
      const streams = yield* Effect.forkChild(
        Effect.forEach(
          Array.from({ length: 30 }, (_, i) => i),
          () => Stream.runDrain(router.stream(ask, "d-primary")),
          {
            concurrency: "unbounded"
          }
        )
      )
      yield* TestClock.adjust("20 seconds")
      yield* Fiber.join(streams)
      for (let i = 0; i < 20; i++) {
        const call = yield* Effect.forkChild(router.execute(ask, "d-primary"))
        yield* TestClock.adjust("100 millis")
        yield* Fiber.join(call)
      }
      // Every attempt served, streams included, is still in the domain's service time.
      assert.isAbove((yield* stats.snapshot({ provider: "primary" })).serviceTime.p95, 9_000)
      const hedged = yield* Effect.forkChild(
        router.hedge(ask, ["d-primary", "d-backup"], { after: "p95", defaultAfter: "2 seconds" })
      )
      yield* TestClock.adjust("99 millis")
      assert.strictEqual(yield* controls.backup!.calls, 0, "no backup before the calls' p95")
      yield* TestClock.adjust("11 millis")
      assert.strictEqual(
        yield* controls.backup!.calls,
        1,
        "the backup starts at the calls' p95 (100 ms), not the streams'"
      )
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(hedged)
    })
  )
})

describe("Router.hedge options", () => {
  it.effect("a bad defaultAfter is refused naming it even when after is a duration, before any call", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({ a: {}, b: {} })
      for (const defaultAfter of [-5, Number.NaN, "soon", null]) {
        const error = yield* Effect.flip(router.hedge(ask, ["d-a", "d-b"], { after: 100, defaultAfter } as never))
        assert.strictEqual(invalidField(error), "defaultAfter", String(defaultAfter))
      }
      assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
    })
  )
})

describe("Router: a call whose every domain failed fails once", () => {
  it.effect("hedge and executeParallelDomains first: one FallbackExhaustedError in the cause, not one per racer", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager({
        a: { random: { success: 0, failures: { Overloaded: 1 } }, latency: "2 seconds" },
        b: { random: { success: 0, failures: { Unauthorized: 1 } }, latency: "1 second" }
      })
      const calls = [
        ["hedge", router.hedge(ask, ["d-a", "d-b"], { after: "500 millis" })],
        ["first", router.executeParallelDomains(ask, ["d-a", "d-b"], "first")]
      ] as const
      for (const [name, call] of calls) {
        const fiber = yield* Effect.forkChild(Effect.exit(call))
        yield* TestClock.adjust("2 seconds")
        const exit = yield* Fiber.join(fiber)
        assert.isTrue(Exit.isFailure(exit), name)
        if (Exit.isFailure(exit)) {
          assert.deepStrictEqual(
            exit.cause.reasons.map((r) => (r._tag === "Fail" ? r.error._tag : r._tag)),
            ["FallbackExhaustedError"],
            `${name}: ${String(exit.cause)}`
          )
        }
      }
    })
  )
})

describe('Router.executeParallelDomains "first": the domains the winner cuts', () => {
  it.effect("lost the race: no failure of their providers, as a hedge's loser is not (both call paths)", () =>
    Effect.gen(function* () {
      const { router, stats } = yield* makeManager({
        fast: { latency: "10 millis", respond: () => "fast" },
        slow: { latency: "1 second", respond: () => "slow" }
      })
      for (const traced of [false, true]) {
        yield* stats.reset
        const call = router.executeParallelDomains(ask, ["d-fast", "d-slow"], "first")
        const fiber = yield* Effect.forkChild(
          traced ? Effect.withSpan(call, "caller").pipe(Effect.provideService(Tracer.Tracer, collecting)) : call
        )
        yield* TestClock.adjust("10 millis")
        const winner = yield* Fiber.join(fiber)
        assert.strictEqual(winner.response.text, "fast")
        const slow = yield* stats.snapshot({ provider: "slow" })
        assert.deepStrictEqual([slow.failures, slow.failuresByReason], [0, {}], `traced: ${traced}`)
        assert.strictEqual((yield* stats.snapshot()).inFlight, 0)
      }
    })
  )
})

describe("Router: a refused request names the provider it was meant for, at every entry point", () => {
  it.effect("execute, executeWithFallback, plan, prepare and embed, as stream and the executor do", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        { a: {}, b: {} },
        {
          domains: [
            { name: "d-a", provider: "a", fallback: ["d-b"] },
            { name: "d-b", provider: "b" }
          ]
        }
      )
      const empty = { prompt: " " }
      const prepared = yield* router.prepare("d-a")
      const cases: ReadonlyArray<readonly [string, Effect.Effect<unknown, AiError>]> = [
        ["execute", router.execute(empty, "d-a")],
        ["executeWithFallback", router.executeWithFallback(empty, ["d-a", "d-b"])],
        ["executeParallelDomains", router.executeParallelDomains(empty, ["d-a", "d-b"], "all")],
        ["hedge", router.hedge(empty, ["d-a", "d-b"], { after: 100 })],
        ["plan", router.plan(empty, "d-a")],
        ["prepare", prepared(empty)],
        ["embed", router.embed({ texts: [] } as never, "d-a")],
        ["stream", Stream.runDrain(router.stream(empty, "d-a"))]
      ]
      for (const [name, call] of cases) {
        const error = yield* Effect.flip(call)
        assert.strictEqual(error._tag === "ModelError" && error.reason, "InvalidRequest", name)
        assert.strictEqual(error._tag === "ModelError" && error.provider, "a", name)
      }
      assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
    })
  )
})

describe("Router: a domain with cache: false is not cached, whichever entry point calls it", () => {
  it.effect("a stream asked for cache: true neither keeps nor replays its fallback's answer, as execute does not", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        { a: { random: { success: 0, failures: { Overloaded: 1 } } }, b: { respond: () => "from b" } },
        {
          breakers: false,
          cache: { ttl: "1 hour" },
          domains: [
            { name: "private", provider: "a", cache: false, fallback: ["d-b"] },
            { name: "d-b", provider: "b" }
          ]
        }
      )
      for (let i = 0; i < 2; i++) {
        const answer = yield* router.execute(ask, "private", { cache: true })
        assert.deepStrictEqual([answer.response.text, answer.source], ["from b", "provider"])
      }
      assert.strictEqual(yield* controls.b!.calls, 2, "execute")
      for (let i = 0; i < 2; i++) yield* Stream.runDrain(router.stream(ask, "private", { cache: true }))
      assert.strictEqual(yield* controls.b!.calls, 4, "the second stream was replayed from the cache")
    })
  )
})

describe("Router: a domain named twice in one list is refused, as in a domain's fallback", () => {
  it.effect("every entry point that takes a list fails naming the repeat, before any call", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({ a: {}, b: {} })
      const twice = ["d-a", "d-b", "d-a"]
      const cases: ReadonlyArray<readonly [string, Effect.Effect<unknown, AiError>]> = [
        ["executeWithFallback", router.executeWithFallback(ask, twice)],
        ["hedge", router.hedge(ask, twice, { after: 100 })],
        ["all", router.executeParallelDomains(ask, twice, "all")],
        ["first", router.executeParallelDomains(ask, twice, "first")],
        ["stream", Stream.runDrain(router.stream(ask, twice))],
        ["plan", router.plan(ask, twice)],
        ["prepare", router.prepare(twice)],
        ["chain", router.chain(twice)]
      ]
      for (const [name, call] of cases) {
        const error = yield* Effect.flip(call)
        assert.strictEqual(invalidField(error), "domains[2]", name)
        assert.include(error.message, '"d-a" is already in the list', name)
      }
      assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
    })
  )
})

describe("Router: a list holding the same value that is no name twice", () => {
  it.effect("is refused for what it is (no domain name), not as a repeat", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager({ a: {} })
      for (const list of [
        [undefined, undefined],
        ["d-a", 7, 7]
      ] as ReadonlyArray<ReadonlyArray<unknown>>) {
        const error = yield* Effect.flip(router.executeWithFallback(ask, list as ReadonlyArray<string>))
        // Said as any domain that is no name is (the lookup's field, as an unknown name's).
        assert.strictEqual(invalidField(error), "domain", error.message)
        assert.include(error.message, "expected a domain name, got")
        assert.notInclude(error.message, "already in the list")
      }
    })
  )
})

describe("Router: a revoked Proxy given as the list of domains", () => {
  it.effect(
    "every entry point that takes a list fails with the InvalidRequest of domains, never a defect or a throw",
    () =>
      Effect.gen(function* () {
        const { router, controls } = yield* makeManager({ a: {} })
        const revoked = () => {
          const { proxy, revoke } = Proxy.revocable([] as Array<string>, {})
          revoke()
          return proxy
        }
        // Made inside the Effect: a method that threw as it was called would fail the test as a defect too.
        const cases: ReadonlyArray<readonly [string, () => Effect.Effect<unknown, AiError>]> = [
          ["executeWithFallback", () => router.executeWithFallback(ask, revoked())],
          ["hedge", () => router.hedge(ask, revoked(), { after: 100 })],
          ["all", () => router.executeParallelDomains(ask, revoked(), "all")],
          ["first", () => router.executeParallelDomains(ask, revoked(), "first")],
          ["stream", () => Stream.runDrain(router.stream(ask, revoked()))],
          ["plan", () => router.plan(ask, revoked())],
          ["prepare", () => router.prepare(revoked())],
          ["chain", () => router.chain(revoked())]
        ]
        for (const [name, call] of cases) {
          const exit = yield* Effect.exit(Effect.suspend(call))
          assert.isTrue(Exit.isFailure(exit), name)
          const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : undefined
          assert.strictEqual(error?._tag === "Some" ? invalidField(error.value) : String(exit), "domains", name)
        }
        assert.strictEqual(yield* controls.a!.calls, 0)
      })
  )
})

describe("Router.hedge on one domain", () => {
  it.effect("is refused naming domains, as a domain's hedgeAfter without a fallback is: it would hedge nothing", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({ a: {}, b: {} })
      for (const after of [100, "p95"] as const) {
        const error = yield* Effect.flip(router.hedge(ask, ["d-a"], { after }))
        assert.strictEqual(invalidField(error), "domains", String(after))
        assert.include(error.message, "at least two")
      }
      assert.strictEqual(yield* controls.a!.calls, 0)
    })
  )
})

describe("Router: a long list of domains is read in time proportional to its length", () => {
  it.effect(
    "100,000 distinct names (a caller's input) are refused at the first unknown one, not after a quadratic scan",
    () =>
      Effect.gen(function* () {
        const { router } = yield* makeManager({ a: {}, b: {} })
        const names = Array.from({ length: 100_000 }, (_, i) => `d-${i}`)
        const started = performance.now()
        for (const call of [
          router.executeWithFallback(ask, names),
          router.hedge(ask, names, { after: 100 }),
          Stream.runDrain(router.stream(ask, names))
        ]) {
          assert.strictEqual(invalidField(yield* Effect.flip(call)), "domain")
        }
        // Linear: tens of milliseconds. The quadratic scan took about 45 seconds a call (3 minutes for 200,000).
        assert.isBelow(performance.now() - started, 3_000)
      })
  )
})

describe("Router.executeParallelDomains: a list longer than the domains there are", () => {
  it.effect(
    "is refused naming domains before any call: its fan-out and its outcomes would grow with the caller's list",
    () =>
      Effect.gen(function* () {
        const { router, controls } = yield* makeManager({ a: {}, b: {} })
        const names = ["d-a", "d-b", ...Array.from({ length: 10_000 }, (_, i) => `x-${i}`)]
        for (const mode of ["all", "first"] as const) {
          const exit = yield* Effect.exit(router.executeParallelDomains(ask, names, mode as "all"))
          assert.isTrue(Exit.isFailure(exit), mode)
          const error = yield* Effect.flip(router.executeParallelDomains(ask, names, mode as "all"))
          assert.strictEqual(invalidField(error), "domains", mode)
          assert.include(error.message, "10002 names, more than the 2 domains")
          assert.isBelow(error.message.length, 300)
        }
        assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
        // A list within the registry keeps each unknown domain as its own outcome.
        const outcomes = yield* router.executeParallelDomains(ask, ["nope", "d-a"], "all")
        assert.deepStrictEqual(
          outcomes.map((o) => o.result._tag),
          ["Failure", "Success"]
        )
      })
  )
})

describe("Router.executeParallelDomains: a mode that is no string", () => {
  it.effect("is an InvalidRequest naming mode and what it got, never a TypeError defect", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager({ a: {} })
      // String(mode) threw for an object without a prototype (a TypeError defect), and said
      // "[object Object]" for any other object.
      for (const [mode, got] of [
        [Object.create(null), "got an object"],
        [{ mode: "all" }, "got an object"],
        ["al", 'got "al"'],
        [Symbol("first"), "got a symbol"]
      ] as const) {
        const exit = yield* Effect.exit(router.executeParallelDomains(ask, ["d-a"], mode as never))
        assert.isTrue(Exit.isFailure(exit) && Cause.hasFails(exit.cause), String(got))
        const error = yield* Effect.flip(router.executeParallelDomains(ask, ["d-a"], mode as never))
        assert.strictEqual(invalidField(error), "mode")
        assert.strictEqual(error.message, `invalid mode: expected "all" or "first", ${got}`)
      }
    })
  )
})

describe("Router.executeParallelDomains: a refused request whose first domain is unknown", () => {
  it.effect("still fails the whole call once, counted on the first known domain, before any domain runs", () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager({ a: {}, b: {} })
      for (const mode of ["all", "first"] as const) {
        const exit = yield* Effect.exit(router.executeParallelDomains({ prompt: "" }, ["nope", "d-a"], mode as "all"))
        assert.isTrue(Exit.isFailure(exit), `${mode}: ${Exit.isSuccess(exit) ? JSON.stringify(exit.value) : ""}`)
        const error = yield* Effect.flip(router.executeParallelDomains({ prompt: "" }, ["nope", "d-b"], mode as "all"))
        assert.strictEqual(invalidField(error), "prompt", mode)
      }
      assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
      assert.strictEqual((yield* stats.snapshot({ domain: "d-a" })).failuresByReason.InvalidRequest, 2)
      assert.strictEqual((yield* stats.snapshot({ domain: "d-b" })).failuresByReason.InvalidRequest, 2)
    })
  )
})

describe("Router: a call refused for its options", () => {
  it.effect("is counted on its chain's first domain, as a refused request is, at every entry point", () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager({ a: {}, b: {} })
      const prepared = yield* router.prepare("d-a")
      const cases: ReadonlyArray<readonly [string, Effect.Effect<unknown, AiError>]> = [
        ["timeout", router.execute(ask, "d-a", { timeout: -1 })],
        ["cache", router.execute(ask, "d-a", { cache: "no" as never })],
        ["timout", router.execute(ask, "d-a", { timout: 1 } as never)],
        ["onRetry", router.execute(ask, "d-a", { onRetry: 5 } as never)],
        ["options", router.execute(ask, "d-a", 5 as never)],
        ["allowStale", router.executeWithFallback(ask, ["d-a", "d-b"], { allowStale: 1 as never })],
        ["timout", router.executeParallelDomains(ask, ["d-a", "d-b"], "all", { timout: 1 } as never)],
        ["timeout", router.executeParallelDomains(ask, ["d-a", "d-b"], "first", { timeout: Number.NaN })],
        ["after", router.hedge(ask, ["d-a", "d-b"], { after: -1 })],
        ["defaultAfter", router.hedge(ask, ["d-a", "d-b"], { after: "p95", defaultAfter: "soon" as never })],
        ["aftr", router.hedge(ask, ["d-a", "d-b"], { after: 100, aftr: 1 } as never)],
        ["options", router.hedge(ask, ["d-a", "d-b"], null as never)],
        ["timeout", router.embed({ texts: ["x"] }, "d-a", { timeout: -1 })],
        ["timout", router.embed({ texts: ["x"] }, "d-a", { timout: 1 } as never)],
        ["cache", router.embed({ texts: ["x"] }, "d-a", { cache: "no" as never })],
        ["timeout", router.plan(ask, "d-a", { timeout: -1 })],
        ["timout", router.plan(ask, "d-a", { timout: 1 } as never)],
        ["timeout", prepared(ask, { timeout: -1 })],
        ["timout", prepared(ask, { timout: 1 } as never)]
      ]
      for (const [field, effect] of cases) {
        const error = yield* Effect.flip(effect)
        assert.strictEqual(invalidField(error as AiError), field)
        // Named after the provider it was meant for, as a refused request is.
        assert.strictEqual((error as { provider?: string }).provider, "a", field)
      }
      assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
      const first = yield* stats.snapshot({ domain: "d-a" })
      assert.deepStrictEqual(
        [first.total, first.failures, first.failuresByReason],
        [
          cases.length,
          cases.length,
          {
            InvalidRequest: cases.length
          }
        ]
      )
      assert.strictEqual((yield* stats.snapshot({ domain: "d-b" })).total, 0)
      // On an unknown domain there is no series to count it on: a misspelt key is still named first.
      const unknown = yield* Effect.flip(router.execute(ask, "nope", { timout: 1 } as never))
      assert.strictEqual(invalidField(unknown), "timout")
      const embedded = yield* Effect.flip(router.embed({ texts: ["x"] }, "nope", { timout: 1 } as never))
      assert.strictEqual(invalidField(embedded), "timout")
      const hedged = yield* Effect.flip(router.hedge(ask, ["nope", "d-a"], { after: -1 }))
      assert.strictEqual(invalidField(hedged), "after")
      assert.strictEqual((yield* stats.snapshot()).total, cases.length)
    })
  )
})

describe("Router.stream: a stream refused for its options", () => {
  it.effect("is counted on its chain's first domain, as a stream refused for its request is", () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager({ a: {}, b: {} })
      const cases: ReadonlyArray<readonly [string, Record<string, unknown>]> = [
        ["idleTimout", { idleTimout: 1 }],
        ["cache", { cache: "no" }],
        ["onRetry", { onRetry: 5 }],
        ["idleTimeout", { idleTimeout: -1 }],
        ["totalTimeout", { totalTimeout: null }],
        ["resume.maxResumes", { resume: { maxResumes: 0 } }]
      ]
      for (const [field, options] of cases) {
        const error = yield* Effect.flip(Stream.runDrain(router.stream(ask, ["d-a", "d-b"], options as never)))
        assert.strictEqual(invalidField(error), field)
        assert.strictEqual((error as { provider?: string }).provider, "a", field)
      }
      // The request refused, as it already was.
      const refused = yield* Effect.flip(Stream.runDrain(router.stream({ prompt: "" }, "d-a")))
      assert.strictEqual(invalidField(refused), "prompt")
      assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
      const first = yield* stats.snapshot({ domain: "d-a" })
      const n = cases.length + 1
      assert.deepStrictEqual([first.total, first.failuresByReason], [n, { InvalidRequest: n }])
      assert.strictEqual((yield* stats.snapshot({ domain: "d-b" })).total, 0)
    })
  )
})

describe("Router: a failing onRetry is logged once per callback", () => {
  it.effect("on execute with a cache (a plan per call) and on embed, as the executor does", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager(
        {
          a: {
            script: [
              Outcome.fail("Overloaded"),
              Outcome.succeed("first"),
              Outcome.fail("Overloaded"),
              Outcome.succeed("second"),
              Outcome.fail("Overloaded"),
              Outcome.succeed("x"),
              Outcome.fail("Overloaded"),
              Outcome.succeed("y")
            ]
          }
        },
        {
          breakers: false,
          cache: { ttl: "1 hour" },
          domains: [{ name: "d-a", provider: "a", retry: { initialDelay: 100, jitter: 0 } }]
        }
      )
      const logs = yield* captureLogs
      const options = { onRetry: () => Effect.die(new Error("progress bar broke")) }
      const fiber = yield* Effect.forkChild(
        Effect.all([
          router.execute(ask, "d-a", options),
          router.execute({ prompt: "other" }, "d-a", options),
          router.embed({ texts: ["x"] }, "d-a", options),
          router.embed({ texts: ["y"] }, "d-a", options)
        ]).pipe(Effect.provide(logs.layer))
      )
      yield* TestClock.adjust("1 second")
      const [first, second] = yield* Fiber.join(fiber)
      assert.deepStrictEqual([first.response.text, second.response.text], ["first", "second"])
      const warnings = logs.lines.filter((line) => line.includes("onRetry callback failed"))
      assert.strictEqual(warnings.length, 1, logs.lines.join("\n"))
    })
  )
})

describe("A failing onRetry is logged once per callback, whatever calls it is given to", () => {
  it.effect("two streams, and the same callback on the executor and the router", () =>
    Effect.gen(function* () {
      const { router, executor } = yield* makeManager(
        {
          a: {
            script: [
              Outcome.fail("Overloaded"),
              Outcome.succeed("s1"),
              Outcome.fail("Overloaded"),
              Outcome.succeed("s2"),
              Outcome.fail("Overloaded"),
              Outcome.succeed("e1")
            ]
          }
        },
        { breakers: false, domains: [{ name: "d-a", provider: "a", retry: { initialDelay: 100, jitter: 0 } }] }
      )
      const logs = yield* captureLogs
      const onRetry = () => Effect.die(new Error("progress bar broke"))
      const fiber = yield* Effect.forkChild(
        Effect.all([
          Stream.runDrain(router.stream(ask, "d-a", { onRetry })),
          Stream.runDrain(router.stream(ask, "d-a", { onRetry })),
          executor.execute(ask, { onRetry, retry: { initialDelay: 100, jitter: 0 } })
        ]).pipe(Effect.provide(logs.layer))
      )
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      const warnings = logs.lines.filter((line) => line.includes("onRetry callback failed"))
      assert.strictEqual(warnings.length, 1, logs.lines.join("\n"))
    })
  )
})

describe("Router.stream: options changed in place between two calls are checked again", () => {
  it.effect("a deadline fixed after a refusal is taken; one made invalid after a success is refused", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({ a: { respond: () => "ok" } }, { breakers: false })
      const options: { idleTimeout: unknown } = { idleTimeout: -1 }
      const bad = yield* Effect.flip(Stream.runDrain(router.stream(ask, "d-a", options as never)))
      assert.strictEqual(invalidField(bad), "idleTimeout")
      options.idleTimeout = "5 seconds"
      yield* Stream.runDrain(router.stream(ask, "d-a", options as never))
      assert.strictEqual(yield* controls.a!.calls, 1)
      options.idleTimeout = Number.NaN
      const again = yield* Effect.flip(Stream.runDrain(router.stream(ask, "d-a", options as never)))
      assert.strictEqual(invalidField(again), "idleTimeout")
      assert.strictEqual(yield* controls.a!.calls, 1)
    })
  )
})

describe("Router: call options that throw when read", () => {
  const throwing = (field: string) =>
    Object.defineProperty({}, field, {
      enumerable: true,
      get() {
        throw new Error(`${field} getter`)
      }
    })

  it.effect("a getter that throws is an InvalidRequest naming the option at every entry point, as the executor's", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({ a: {}, b: {} }, { breakers: false })
      const prepared = yield* router.prepare("d-a")
      for (const field of ["timeout", "cache", "allowStale", "onRetry"]) {
        const streamField = field === "timeout" ? "idleTimeout" : field === "allowStale" ? "resume" : field
        const calls: ReadonlyArray<readonly [string, string, () => Effect.Effect<unknown, AiError>]> = [
          ["execute", field, () => router.execute(ask, "d-a", throwing(field))],
          ["executeWithFallback", field, () => router.executeWithFallback(ask, ["d-a", "d-b"], throwing(field))],
          ["all", field, () => router.executeParallelDomains(ask, ["d-a", "d-b"], "all", throwing(field))],
          ["first", field, () => router.executeParallelDomains(ask, ["d-a", "d-b"], "first", throwing(field))],
          ["hedge", field, () => router.hedge(ask, ["d-a", "d-b"], Object.assign(throwing(field), { after: 10 }))],
          ["embed", field, () => router.embed({ texts: ["x"] }, "d-a", throwing(field))],
          ["plan", field, () => router.plan(ask, "d-a", throwing(field))],
          ["prepare", field, () => prepared(ask, throwing(field))],
          ["stream", streamField, () => Stream.runDrain(router.stream(ask, "d-a", throwing(streamField)))]
        ]
        for (const [name, named, call] of calls) {
          // Built and run: neither a throw out of the entry point nor a defect of the call.
          const exit = yield* Effect.exit(Effect.suspend(call))
          const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : undefined
          assert.isTrue(error?._tag === "Some", `${name} ${named}: a typed failure, not a defect`)
          const value = error?._tag === "Some" ? (error.value as AiError) : undefined
          assert.strictEqual(value && invalidField(value), named, `${name} ${named}`)
          assert.include(value?.message, `${named} getter`)
        }
      }
      assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
    })
  )
})

describe("Router.plan's lead step", () => {
  it.effect("is sent the request as given, as documented: a prepare it carries (a stream step's) is not applied", () =>
    Effect.gen(function* () {
      const { router, executor, controls } = yield* makeManager(
        { main: {}, backup: {} },
        { domains: [{ name: "d-backup", provider: "backup", model: "domain-model", system: "be brief" }] }
      )
      let prepared = 0
      const lead = {
        ...executor.stepFor(executor.provider),
        // Before, the router called it at each attempt: unchecked, its throw an Unknown failure of the
        // provider, and the request sent was not the one the cache key was made of.
        prepare: (request: { readonly prompt?: string }) => {
          prepared++
          return { ...request, model: "lead-model" }
        }
      }
      const routed = yield* router.plan({ prompt: "q", model: undefined }, ["d-backup"], { lead })
      yield* executor.run(routed.plan, routed.call)
      const sent = yield* controls.main!.requests
      assert.strictEqual(prepared, 0)
      assert.isUndefined(sent.at(-1)!.request.model)
      // The domains' own steps still get their domain's model and system prompt.
      const second = yield* router.plan({ prompt: "q" }, ["d-backup"])
      yield* executor.run(second.plan, second.call)
      const backup = (yield* controls.backup!.requests).at(-1)!.request as { model?: string; system?: string }
      assert.deepStrictEqual([backup.model, backup.system], ["domain-model", "be brief"])
    })
  )
})
