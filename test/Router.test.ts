import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber, Metric, Result, Stream, Tracer } from "effect"
import { TestClock } from "effect/testing"
import type { AiError } from "../src/AiError.js"
import type { StreamPart } from "../src/Model.js"
import { Outcome } from "../src/Model/Mock.js"
import * as Policy from "../src/Policy.js"
import * as Prometheus from "../src/Prometheus.js"
import * as Stats from "../src/Stats.js"
import type * as Router from "../src/Router.js"
import { captureLogs } from "./utils/logs.js"
import { makeManager } from "./utils/manager.js"
import { recording } from "./utils/tracer.js"

const ask = { prompt: "q" }
const retry3 = Policy.retry({ maxAttempts: 3, initialDelay: 100, jitter: 0 })
const textOf = (parts: ReadonlyArray<StreamPart>) => parts.map((p) => (p._tag === "TextDelta" ? p.text : "")).join("")
const systemOf = (logged: { readonly request: unknown }) => (logged.request as { readonly system?: string }).system

const invalidField = (error: AiError) =>
  error._tag === "ModelError" && error.reason === "InvalidRequest" ? error.field : `${error._tag}: ${error.message}`

describe("Router.executeWithFallback", () => {
  it.effect("tries domains in order and reports who answered", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({
        a: { script: [Outcome.fail("Overloaded")] },
        b: { script: [Outcome.fail("Unavailable")] },
        c: { respond: () => "from c" }
      })
      const answer = yield* router.executeWithFallback(ask, ["d-a", "d-b", "d-c"])
      assert.strictEqual(answer.response.text, "from c")
      assert.strictEqual(answer.domain, "d-c")
      assert.strictEqual(answer.provider, "c")
      assert.strictEqual(answer.attempts, 3)
      assert.strictEqual(answer.domainsTried, 3)
      assert.isTrue(answer.fallbackUsed)
      assert.deepStrictEqual([yield* controls.a!.calls, yield* controls.b!.calls, yield* controls.c!.calls], [1, 1, 1])
    })
  )

  it.effect("a rate-limit wait past the call's total deadline is not made: the next domain answers at once", () =>
    Effect.gen(function* () {
      // One request a minute on a, and callers may wait ten minutes for a slot; the call has 5 seconds.
      const { router, controls } = yield* makeManager(
        { a: {}, b: { respond: () => "from b" } },
        {
          domains: [
            { name: "d-a", provider: "a", fallback: ["d-b"] },
            { name: "d-b", provider: "b" }
          ],
          rateLimits: { providers: { a: { requestsPerMinute: 1 } }, maxWait: "10 minutes" }
        }
      )
      yield* router.execute(ask, "d-a", { timeout: "5 seconds" })
      const fiber = yield* Effect.forkChild(router.execute(ask, "d-a", { timeout: "5 seconds" }))
      yield* Effect.yieldNow
      const done = fiber.pollUnsafe()
      if (done === undefined) yield* Fiber.interrupt(fiber)
      assert.isDefined(done, "the call waited for a slot its total deadline cuts")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "from b")
      assert.strictEqual(answer.domain, "d-b")
      assert.deepStrictEqual([yield* controls.a!.calls, yield* controls.b!.calls], [1, 1])
      // Without a deadline, the caller waits for the slot as maxWait allows.
      const patient = yield* Effect.forkChild(router.execute(ask, "d-a"))
      yield* Effect.yieldNow
      assert.isUndefined(patient.pollUnsafe())
      yield* TestClock.adjust("1 minute")
      assert.strictEqual((yield* Fiber.join(patient)).domain, "d-a")
    })
  )

  it.effect("answers from the first domain without a fallback when it works", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({ a: {}, b: {} })
      const answer = yield* router.executeWithFallback(ask, ["d-a", "d-b"])
      assert.strictEqual(answer.domain, "d-a")
      assert.isFalse(answer.fallbackUsed)
      assert.strictEqual(answer.attempts, 1)
      assert.strictEqual(yield* controls.b!.calls, 0)
    })
  )

  it.effect("does not fall back on an error every provider would give (InvalidRequest)", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({ a: { script: [Outcome.fail("InvalidRequest")] }, b: {} })
      const error = yield* Effect.flip(router.executeWithFallback(ask, ["d-a", "d-b"]))
      assert.strictEqual(error._tag === "ModelError" && error.reason, "InvalidRequest")
      assert.strictEqual(yield* controls.b!.calls, 0)
    })
  )

  it.effect("each step uses its own retry policy before falling back; attempts count every retry", () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager(
        { a: { random: { success: 0, failures: { Overloaded: 1 } } }, b: { respond: () => "b" } },
        {
          domains: [
            { name: "d-a", provider: "a", retry: retry3 },
            { name: "d-b", provider: "b" }
          ]
        }
      )
      const fiber = yield* Effect.forkChild(router.executeWithFallback(ask, ["d-a", "d-b"]))
      yield* TestClock.adjust("10 seconds")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "b")
      assert.strictEqual(yield* controls.a!.calls, 3)
      assert.strictEqual(answer.attempts, 4)
      const s = yield* stats.snapshot()
      assert.strictEqual(s.retries, 2)
      assert.strictEqual(s.fallbacks, 1)
    })
  )

  it.effect("every domain failing ends with FallbackExhaustedError listing each step (issue 13 item 26)", () =>
    Effect.gen(function* () {
      const { router, stats } = yield* makeManager({
        a: { script: [Outcome.fail("Overloaded")] },
        b: { script: [Outcome.fail("Unavailable")] }
      })
      const error = yield* Effect.flip(router.executeWithFallback(ask, ["d-a", "d-b"]))
      assert.strictEqual(error._tag, "FallbackExhaustedError")
      if (error._tag === "FallbackExhaustedError") {
        assert.deepStrictEqual(
          error.attempts.map((a) => [a.domain, a.provider, a.error._tag === "ModelError" && a.error.reason]),
          [
            ["d-a", "a", "Overloaded"],
            ["d-b", "b", "Unavailable"]
          ]
        )
      }
      const s = yield* stats.snapshot()
      assert.strictEqual(s.fallbacks, 1)
      assert.deepStrictEqual(s.failuresByReason, { Overloaded: 1, Unavailable: 1 })
    })
  )

  it.effect("a call cut by its total deadline is counted as a Timeout, not as Interrupted (issue 13 item 24)", () =>
    Effect.gen(function* () {
      const { router, stats, controls } = yield* makeManager(
        { a: { script: [Outcome.hang()] } },
        { domains: [{ name: "d-a", provider: "a", totalTimeout: "3 seconds" }] }
      )
      const fiber = yield* Effect.forkChild(Effect.flip(router.execute(ask, "d-a")))
      yield* TestClock.adjust("3 seconds")
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      yield* Effect.yieldNow
      assert.strictEqual(yield* controls.a!.interrupted, 1)
      const s = yield* stats.snapshot()
      assert.deepStrictEqual(s.failuresByReason, { Timeout: 1 })
      assert.strictEqual(s.timeouts, 1)
    })
  )

  it.effect("a domain's own fallback chain applies to router.execute", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager(
        { a: { script: [Outcome.fail("Overloaded")] }, b: { respond: () => "b" } },
        {
          domains: [
            { name: "main", provider: "a", fallback: ["spare"] },
            { name: "spare", provider: "b" }
          ]
        }
      )
      const answer = yield* router.execute(ask, "main")
      assert.strictEqual(answer.domain, "spare")
      assert.isTrue(answer.fallbackUsed)
    })
  )
  it.effect("a fallback domain's own fallback is followed, depth first, each domain once", () =>
    Effect.gen(function* () {
      const failing = { random: { success: 0, failures: { Unavailable: 1 } } } as const
      const { router, controls } = yield* makeManager(
        { a: failing, b: failing, c: failing, d: { respond: () => "d" } },
        {
          domains: [
            // one → two → three (two's own), then four; three falls back to one again: not retried.
            { name: "one", provider: "a", fallback: ["two", "four"] },
            { name: "two", provider: "b", fallback: ["three"] },
            { name: "three", provider: "c", fallback: ["one"] },
            { name: "four", provider: "d" }
          ]
        }
      )
      const answer = yield* router.execute(ask, "one")
      assert.strictEqual(answer.domain, "four")
      assert.strictEqual(answer.domainsTried, 4)
      const calls = yield* Effect.forEach(["a", "b", "c", "d"], (name) => controls[name]!.calls)
      assert.deepStrictEqual(calls, [1, 1, 1, 1])
      // From another entry the chain is that domain's: two → three → one → four (two is not tried again).
      const again = yield* router.execute(ask, "two")
      assert.deepStrictEqual([again.domain, again.domainsTried], ["four", 4])
      const after = yield* Effect.forEach(["a", "b", "c", "d"], (name) => controls[name]!.calls)
      assert.deepStrictEqual(after, [2, 2, 2, 2])
    })
  )
})

describe("Router: bad input is a typed InvalidRequest naming the field, never a defect (issue 13 item 12)", () => {
  it.effect("requests, domains, modes and options", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({ a: {}, b: {} })
      const cases: ReadonlyArray<readonly [string, Effect.Effect<unknown, AiError>]> = [
        ["request", router.execute(null as never, "d-a")],
        ["request", router.executeWithFallback(undefined as never, ["d-a"])],
        ["request", router.hedge(7 as never, ["d-a", "d-b"], { after: 100 })],
        ["prompt", router.execute({ prompt: " " }, "d-a")],
        ["temprature", router.execute({ prompt: "x", temprature: 1 } as never, "d-a")],
        ["domain", router.execute(ask, "nope")],
        ["domain", router.execute(ask, null as never)],
        ["domains", router.executeWithFallback(ask, null as never)],
        ["domains", router.executeWithFallback(ask, [])],
        ["domains", router.executeWithFallback(ask, "d-a" as never)],
        ["domains", router.hedge(ask, "d-a" as never, { after: 100 })],
        ["domain", router.executeWithFallback(ask, ["d-a", 3 as never])],
        ["domains", router.executeParallelDomains(ask, "d-a" as never, "all")],
        ["mode", router.executeParallelDomains(ask, ["d-a"], "bogus" as never)],
        ["options", router.hedge(ask, ["d-a", "d-b"], undefined as never)],
        ["after", router.hedge(ask, ["d-a", "d-b"], { after: -1 })],
        // A misspelt key is named as written, not as the `after` it leaves missing.
        ["aftr", router.hedge(ask, ["d-a", "d-b"], { aftr: 100 } as never)],
        ["timeout", router.execute(ask, "d-a", { timeout: Number.NaN })],
        ["cache", router.execute(ask, "d-a", { cache: 0 as never })],
        ["allowStale", router.executeWithFallback(ask, ["d-a"], { allowStale: "yes" as never })],
        ["cache", Stream.runDrain(router.stream(ask, "d-a", { cache: "no" as never }))],
        ["texts", router.embed({ texts: [] } as never, "d-a")]
      ]
      for (const [field, effect] of cases) {
        const exit = yield* Effect.exit(effect)
        assert.isTrue(Exit.isFailure(exit), field)
        if (Exit.isFailure(exit)) {
          const error = exit.cause.reasons.find((r) => r._tag === "Fail")
          assert.isDefined(error, `${field}: ${String(exit.cause)}`)
          assert.strictEqual(invalidField((error as { error: AiError }).error), field)
        }
      }
      const streamed = yield* Effect.flip(Stream.runCollect(router.stream(null as never, "d-a")))
      assert.strictEqual(invalidField(streamed), "request")
      // null is a wrong value, not the domain's deadline.
      for (const field of ["firstChunkTimeout", "totalTimeout"]) {
        const error = yield* Effect.flip(Stream.runCollect(router.stream(ask, "d-a", { [field]: null } as never)))
        assert.strictEqual(invalidField(error), field)
      }
      assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
    })
  )

  it.effect("a misspelt option key is refused naming it, at every entry point, before any provider call", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({ a: {}, b: {} })
      const prepared = yield* router.prepare("d-a")
      const cases: ReadonlyArray<readonly [string, Effect.Effect<unknown, AiError>]> = [
        ["timout", router.execute(ask, "d-a", { timout: 1 } as never)],
        ["timout", router.executeWithFallback(ask, ["d-a", "d-b"], { timout: 1 } as never)],
        ["timout", router.executeParallelDomains(ask, ["d-a", "d-b"], "all", { timout: 1 } as never)],
        ["aftr", router.hedge(ask, ["d-a", "d-b"], { after: 100, aftr: 1 } as never)],
        ["timout", router.embed({ texts: ["x"] }, "d-a", { timout: 1 } as never)],
        ["timout", router.plan(ask, "d-a", { timout: 1 } as never)],
        ["timout", prepared(ask, { timout: 1 } as never)],
        ["idleTimout", Stream.runDrain(router.stream(ask, "d-a", { idleTimout: 1 } as never))],
        ["resume.maxResume", Stream.runDrain(router.stream(ask, "d-a", { resume: { maxResume: 2 } } as never))]
      ]
      for (const [field, effect] of cases) {
        const error = yield* Effect.flip(effect)
        assert.strictEqual(invalidField(error as AiError), field)
        assert.include(error.message, "unknown option")
      }
      assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
    })
  )

  it.effect("an onRetry that is not a function is refused naming it, at every entry point, before any call", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({ a: {}, b: {} })
      const bad = { onRetry: null } as never
      const cases: ReadonlyArray<Effect.Effect<unknown, AiError>> = [
        router.execute(ask, "d-a", bad),
        router.executeWithFallback(ask, ["d-a", "d-b"], bad),
        router.executeParallelDomains(ask, ["d-a", "d-b"], "all", { onRetry: 5 } as never),
        router.executeParallelDomains(ask, ["d-a", "d-b"], "first", bad),
        router.hedge(ask, ["d-a", "d-b"], { after: 100, onRetry: "log" } as never),
        router.embed({ texts: ["x"] }, "d-a", bad),
        router.plan(ask, "d-a", bad),
        Stream.runDrain(router.stream(ask, "d-a", bad))
      ]
      for (const effect of cases) {
        const error = yield* Effect.flip(effect)
        assert.strictEqual(invalidField(error as AiError), "onRetry")
      }
      assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
    })
  )

  it.effect("plan and prepare refuse a misspelt option or a lead that is not a step, naming it, never dying", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager({ a: {}, b: {} })
      const cases: ReadonlyArray<readonly [string, Effect.Effect<unknown, AiError>]> = [
        ["laed", router.prepare("d-a", { laed: 1 } as never)],
        ["lead", router.prepare("d-a", { lead: null } as never)],
        ["lead", router.prepare("d-a", { lead: 5 } as never)],
        ["lead", router.plan(ask, "d-a", { lead: null } as never)]
      ]
      for (const [field, effect] of cases) {
        const exit = yield* Effect.exit(effect)
        const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail") : undefined
        assert.isDefined(error, `${field}: ${Exit.isFailure(exit) ? String(exit.cause) : "succeeded"}`)
        assert.strictEqual(invalidField((error as { error: AiError }).error), field)
      }
    })
  )

  it.effect("an unknown domain's message lists the known ones", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager({ a: {} })
      const error = yield* Effect.flip(router.execute(ask, "nope"))
      assert.include(error.message, "nope")
      assert.include(error.message, "d-a")
    })
  )

  it.effect("a domain naming a provider that is not registered fails the layer naming it (prototype names too)", () =>
    Effect.gen(function* () {
      for (const provider of ["toString", "nowhere"]) {
        const error = yield* Effect.flip(
          makeManager(
            { a: {} },
            {
              domains: [
                { name: "d-a", provider: "a", fallback: ["weird"] },
                { name: "weird", provider }
              ]
            }
          )
        )
        assert.strictEqual(error._tag === "OptionError" && error.path, "domains[1].provider", provider)
        assert.include(error.message, `no provider named "${provider}" (registered: a)`)
      }
    })
  )
})

describe("Router.executeParallelDomains", () => {
  it.effect("all: every domain's outcome in the order given, failures included", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager({ a: { respond: () => "a" }, b: { script: [Outcome.fail("Overloaded")] } })
      const outcomes = yield* router.executeParallelDomains(ask, ["d-a", "d-b"], "all")
      assert.deepStrictEqual(
        outcomes.map((o) => o.domain),
        ["d-a", "d-b"]
      )
      assert.isTrue(Result.isSuccess(outcomes[0]!.result))
      assert.isTrue(Result.isFailure(outcomes[1]!.result))
    })
  )

  it.effect("first: the first success wins and the others are interrupted", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({
        slow: { latency: "5 seconds" },
        fast: { latency: "1 second", respond: () => "fast" },
        stuck: { script: [Outcome.hang()] }
      })
      const fiber = yield* Effect.forkChild(
        router.executeParallelDomains(ask, ["d-slow", "d-fast", "d-stuck"], "first")
      )
      yield* TestClock.adjust("1 second")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "fast")
      yield* Effect.yieldNow
      assert.strictEqual(yield* controls.slow!.interrupted, 1)
      assert.strictEqual(yield* controls.stuck!.interrupted, 1)
      assert.strictEqual(yield* controls.slow!.inFlight, 0)
    })
  )

  it.effect("first: when every domain fails, each one's failure is kept, in the order given", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager({
        a: { script: [Outcome.fail("Overloaded", { latency: "2 seconds" })] },
        b: { script: [Outcome.fail("Unauthorized", { latency: "1 second" })] }
      })
      const fiber = yield* Effect.forkChild(router.executeParallelDomains(ask, ["d-a", "d-b"], "first"))
      yield* TestClock.adjust("2 seconds")
      const error = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(error._tag, "FallbackExhaustedError")
      if (error._tag === "FallbackExhaustedError") {
        assert.deepStrictEqual(
          error.attempts.map((a) => [a.domain, a.provider, a.error._tag === "ModelError" && a.error.reason]),
          [
            ["d-a", "a", "Overloaded"],
            ["d-b", "b", "Unauthorized"]
          ]
        )
      }
    })
  )

  it.effect("a refused request or option value fails the whole call once, in either mode, before any domain runs", () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager({ a: {}, b: {} })
      const cases: ReadonlyArray<readonly [string, Effect.Effect<unknown, AiError>]> = [
        ["timeout", router.executeParallelDomains(ask, ["d-a", "d-b"], "first", { timeout: Number.NaN })],
        ["timeout", router.executeParallelDomains(ask, ["d-a", "d-b"], "all", { timeout: -1 })],
        ["cache", router.executeParallelDomains(ask, ["d-a", "d-b"], "all", { cache: null as never })],
        ["prompt", router.executeParallelDomains({ prompt: "" }, ["d-a", "d-b"], "first")],
        ["prompt", router.executeParallelDomains({ prompt: "" }, ["d-a", "d-b"], "all")]
      ]
      for (const [field, effect] of cases) {
        const error = yield* Effect.flip(effect)
        assert.strictEqual(invalidField(error as AiError), field)
      }
      assert.strictEqual((yield* controls.a!.calls) + (yield* controls.b!.calls), 0)
      // Each refused call (its request or an option) counted once, on the first domain, as a chain's refusal is.
      assert.strictEqual((yield* stats.snapshot({ domain: "d-a" })).failuresByReason.InvalidRequest, cases.length)
      assert.strictEqual((yield* stats.snapshot({ domain: "d-b" })).total, 0)
      // An unknown domain is still that domain's own outcome.
      const outcomes = yield* router.executeParallelDomains(ask, ["nope", "d-a"], "all")
      assert.deepStrictEqual(
        outcomes.map((o) => [o.domain, o.result._tag]),
        [
          ["nope", "Failure"],
          ["d-a", "Success"]
        ]
      )
    })
  )

  it.effect("first: each failure names its domain's provider, whatever error it is", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager(
        {
          a: { script: [Outcome.fail("Overloaded")] },
          b: { script: [Outcome.fail("Unauthorized")] },
          c: { script: [Outcome.hang()] }
        },
        {
          breakers: { failMax: 1 },
          domains: [
            { name: "d-a", provider: "a" },
            { name: "d-b", provider: "b" },
            { name: "d-c", provider: "c", timeout: "1 second", fallback: ["d-b"] }
          ]
        }
      )
      // a's breaker opens: its next call is refused with a CircuitOpenError, which names no provider.
      yield* Effect.flip(router.execute(ask, "d-a"))
      const fiber = yield* Effect.forkChild(router.executeParallelDomains(ask, ["d-a", "d-c"], "first"))
      yield* TestClock.adjust("1 second")
      const error = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(error._tag, "FallbackExhaustedError")
      if (error._tag === "FallbackExhaustedError") {
        assert.deepStrictEqual(
          error.attempts.map((a) => [a.domain, a.provider, a.error._tag]),
          [
            ["d-a", "a", "CircuitOpenError"],
            ["d-c", "c", "FallbackExhaustedError"]
          ]
        )
      }
    })
  )

  it.effect("each domain keeps its own fallback chain (a domain's policies apply at every entry point)", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        { a: { script: [Outcome.fail("Overloaded")] }, b: { respond: () => "b" }, c: { respond: () => "c" } },
        {
          domains: [
            { name: "main", provider: "a", fallback: ["spare"] },
            { name: "spare", provider: "b" },
            { name: "other", provider: "c" }
          ]
        }
      )
      const outcomes = yield* router.executeParallelDomains(ask, ["main", "other"], "all")
      const main = outcomes[0]!.result
      assert.isTrue(Result.isSuccess(main))
      if (Result.isSuccess(main)) {
        assert.strictEqual(main.success.domain, "spare")
        assert.isTrue(main.success.fallbackUsed)
      }
      assert.strictEqual(yield* controls.b!.calls, 1)
    })
  )
})

describe("Router.hedge", () => {
  it.effect("starts the backup only after the delay; the loser it cuts is no failure of its provider", () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager(
        {
          primary: { latency: "3 seconds", respond: () => "primary" },
          backup: { latency: "500 millis", respond: () => "backup" }
        },
        { breakers: { failMax: 1, resetTimeout: "1 minute" } }
      )
      const fiber = yield* Effect.forkChild(router.hedge(ask, ["d-primary", "d-backup"], { after: "1 second" }))
      yield* TestClock.adjust("999 millis")
      assert.strictEqual(yield* controls.backup!.calls, 0)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* controls.backup!.calls, 1)
      yield* TestClock.adjust("500 millis")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "backup")
      assert.isTrue(answer.hedgeWon)
      yield* Effect.yieldNow
      assert.strictEqual(yield* controls.primary!.interrupted, 1)
      const s = yield* stats.snapshot()
      assert.deepStrictEqual(s.hedges, { started: 1, won: 1, lost: 0 })
      const primary = yield* stats.snapshot({ provider: "primary" })
      assert.deepStrictEqual(
        [primary.total, primary.successes, primary.failures, primary.failuresByReason],
        [1, 0, 0, {}],
        "cut because the backup answered: started, neither answered nor failed"
      )
      // Its breaker (failMax 1) did not count it either: the next call reaches the primary.
      const next = yield* Effect.forkChild(router.execute(ask, "d-primary"))
      yield* TestClock.adjust("3 seconds")
      assert.strictEqual((yield* Fiber.join(next)).response.text, "primary")
    })
  )

  it.effect("a backup cut because the primary answered first is lost, not failed", () =>
    Effect.gen(function* () {
      const { router, stats } = yield* makeManager({
        primary: { latency: "1500 millis", respond: () => "primary" },
        backup: { latency: "2 seconds", respond: () => "backup" }
      })
      const fiber = yield* Effect.forkChild(router.hedge(ask, ["d-primary", "d-backup"], { after: "1 second" }))
      yield* TestClock.adjust("1500 millis")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "primary")
      assert.isFalse(answer.hedgeWon)
      assert.deepStrictEqual((yield* stats.snapshot()).hedges, { started: 1, won: 0, lost: 1 })
      const backup = yield* stats.snapshot({ provider: "backup" })
      assert.deepStrictEqual([backup.total, backup.failures, backup.failuresByReason], [1, 0, {}])
    })
  )

  it.effect("a domain the hedge's failure started answering is the hedge's win: hedgeWon true", () =>
    Effect.gen(function* () {
      const { router, stats } = yield* makeManager({
        slow: { latency: "3 seconds", respond: () => "slow" },
        fastfail: { script: [Outcome.fail("Overloaded", { latency: "10 millis" })] },
        ok: { latency: "500 millis", respond: () => "ok" }
      })
      const fiber = yield* Effect.forkChild(router.hedge(ask, ["d-slow", "d-fastfail", "d-ok"], { after: "1 second" }))
      yield* TestClock.adjust("1510 millis")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "ok")
      // false would say the first domain won the race; it lost it to a domain the hedge led to.
      assert.isTrue(answer.hedgeWon)
      // The metric counts each hedge started on the delay by its own outcome: that one failed.
      assert.deepStrictEqual((yield* stats.snapshot()).hedges, { started: 1, won: 0, lost: 1 })
    })
  )

  it.effect("orchestra_hedges_total counts each hedge once, by its outcome: summed over outcome, the hedges made", () =>
    Effect.gen(function* () {
      const { router, registry } = yield* makeManager({
        primary: { latency: "1500 millis", respond: () => "primary" },
        backup: { latency: "2 seconds", respond: () => "backup" }
      })
      // The first race's backup loses; in the second, the domains swapped, the backup (primary) wins.
      const first = yield* Effect.forkChild(router.hedge(ask, ["d-primary", "d-backup"], { after: "1 second" }))
      yield* TestClock.adjust("1500 millis")
      yield* Fiber.join(first)
      const second = yield* Effect.forkChild(
        router.hedge({ prompt: "other" }, ["d-backup", "d-primary"], { after: "100 millis" })
      )
      yield* TestClock.adjust("1600 millis")
      assert.strictEqual((yield* Fiber.join(second)).response.text, "primary")
      const text = yield* Prometheus.text.pipe(Effect.provideService(Metric.MetricRegistry, registry))
      const hedges = text
        .split("\n")
        .filter((line) => line.startsWith("orchestra_hedges_total{"))
        .sort()
      // No `started` series beside them, which summed with them counted each hedge twice.
      assert.deepStrictEqual(hedges, [
        'orchestra_hedges_total{provider="backup",domain="d-backup",outcome="lost"} 1',
        'orchestra_hedges_total{provider="backup",domain="d-backup",outcome="won"} 0',
        'orchestra_hedges_total{provider="primary",domain="d-primary",outcome="lost"} 0',
        'orchestra_hedges_total{provider="primary",domain="d-primary",outcome="won"} 1'
      ])
      const help = text.split("\n").find((line) => line.startsWith("# HELP orchestra_hedges_total "))
      assert.include(help, "by outcome")
    })
  )

  it.effect("a backup failing in a way that falls back nowhere does not cut a primary still running", () =>
    Effect.gen(function* () {
      // The backup's model refuses the request (TooLarge: a smaller context); the primary may yet answer it.
      const { router, stats } = yield* makeManager({
        a: {
          script: [
            Outcome.succeed("primary", { latency: "2 seconds" }),
            Outcome.fail("Overloaded", { latency: "2 seconds" })
          ]
        },
        b: {
          script: [
            Outcome.fail("TooLarge", { latency: "100 millis" }),
            Outcome.fail("TooLarge", { latency: "100 millis" })
          ]
        },
        c: {}
      })
      const hedge = router.hedge(ask, ["d-a", "d-b", "d-c"], { after: "1 second" })
      const fiber = yield* Effect.forkChild(hedge)
      yield* TestClock.adjust("1100 millis")
      assert.isUndefined(fiber.pollUnsafe(), "the backup's TooLarge ended the call while the primary ran")
      yield* TestClock.adjust("900 millis")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "primary")
      // No later step starts once a step failed that way, and when no step answers the call
      // fails with that step's error.
      const failed = yield* Effect.forkChild(hedge)
      yield* TestClock.adjust("3 seconds")
      const error = yield* Effect.flip(Fiber.join(failed))
      assert.strictEqual(error._tag === "ModelError" && error.reason, "TooLarge")
      assert.strictEqual((yield* stats.snapshot({ provider: "c" })).total, 0)
      assert.deepStrictEqual((yield* stats.snapshot({ provider: "a" })).failuresByReason, { Overloaded: 1 })
      assert.deepStrictEqual((yield* stats.snapshot({ provider: "b" })).failuresByReason, { TooLarge: 2 })
    })
  )

  it.effect("no backup when the primary answers in time", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({
        primary: { latency: "200 millis", respond: () => "primary" },
        backup: {}
      })
      const fiber = yield* Effect.forkChild(router.hedge(ask, ["d-primary", "d-backup"], { after: "1 second" }))
      yield* TestClock.adjust("2 seconds")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "primary")
      assert.strictEqual(yield* controls.backup!.calls, 0)
    })
  )

  it.effect("a primary that fails in a way that falls back starts the backup at once", () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager({
        primary: { script: [Outcome.fail("Overloaded", { latency: "100 millis" })] },
        backup: { respond: () => "backup" }
      })
      const fiber = yield* Effect.forkChild(router.hedge(ask, ["d-primary", "d-backup"], { after: "5 seconds" }))
      yield* TestClock.adjust("100 millis")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "backup")
      assert.strictEqual(yield* controls.backup!.calls, 1)
      // Started because the primary failed, before the delay: a fallback, not a hedge.
      assert.isUndefined(answer.hedgeWon)
      const s = yield* stats.snapshot()
      assert.deepStrictEqual([s.hedges, s.fallbacks], [{ started: 0, won: 0, lost: 0 }, 1])
    })
  )

  it.effect("each backup starts a delay after the previous one started, and a bad request ends the hedge", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager({
        a: { script: [Outcome.hang()] },
        b: { script: [Outcome.hang()] },
        c: { latency: "100 millis", respond: () => "c" }
      })
      const fiber = yield* Effect.forkChild(router.hedge(ask, ["d-a", "d-b", "d-c"], { after: "1 second" }))
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual([yield* controls.b!.calls, yield* controls.c!.calls], [1, 0])
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* controls.c!.calls, 1)
      yield* TestClock.adjust("100 millis")
      assert.strictEqual((yield* Fiber.join(fiber)).response.text, "c")
      yield* Effect.yieldNow
      assert.strictEqual(yield* controls.a!.interrupted, 1)
      assert.strictEqual(yield* controls.b!.interrupted, 1)

      const bad = yield* makeManager({
        a: { script: [Outcome.fail("InvalidRequest", { latency: "10 millis" })] },
        b: {}
      })
      const badFiber = yield* Effect.forkChild(bad.router.hedge(ask, ["d-a", "d-b"], { after: "5 seconds" }))
      yield* TestClock.adjust("10 millis")
      const error = yield* Effect.flip(Fiber.join(badFiber))
      assert.strictEqual(error._tag === "ModelError" && error.reason, "InvalidRequest")
      assert.strictEqual(yield* bad.controls.b!.calls, 0, "the bad request never reached the backup")
    })
  )

  it.effect(
    "when every step fails, the exhausted error lists them in the plan's order, not the order they failed",
    () =>
      Effect.gen(function* () {
        const { router } = yield* makeManager({
          a: { script: [Outcome.fail("Overloaded", { latency: "3 seconds" })] },
          b: { script: [Outcome.fail("Unauthorized", { latency: "100 millis" })] }
        })
        const fiber = yield* Effect.forkChild(router.hedge(ask, ["d-a", "d-b"], { after: "1 second" }))
        yield* TestClock.adjust("3 seconds")
        const error = yield* Effect.flip(Fiber.join(fiber))
        assert.strictEqual(error._tag, "FallbackExhaustedError")
        if (error._tag === "FallbackExhaustedError") {
          assert.deepStrictEqual(
            error.attempts.map((a) => [a.domain, a.error._tag === "ModelError" && a.error.reason]),
            [
              ["d-a", "Overloaded"],
              ["d-b", "Unauthorized"]
            ]
          )
        }
      })
  )

  it.effect('after: "p95" waits defaultAfter until the primary has 20 answers, then its p95 service time', () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager({
        // 20 answers in 100 ms, then slow ones.
        primary: {
          script: Array.from({ length: 20 }, () => Outcome.succeed("primary", { latency: "100 millis" })),
          latency: "1 second"
        },
        backup: { latency: "10 millis", respond: () => "backup" }
      })
      const hedge = router.hedge(ask, ["d-primary", "d-backup"], { after: "p95", defaultAfter: "1 second" })
      const first = yield* Effect.forkChild(hedge)
      yield* TestClock.adjust("100 millis")
      assert.strictEqual((yield* Fiber.join(first)).response.text, "primary")
      assert.strictEqual(yield* controls.backup!.calls, 0)
      for (let i = 0; i < 19; i++) {
        const warm = yield* Effect.forkChild(router.execute(ask, "d-primary"))
        yield* TestClock.adjust("100 millis")
        yield* Fiber.join(warm)
      }
      // 20 answers in 100 ms: the backup now starts after 100 ms, not 1 second, and answers first.
      const hedged = yield* Effect.forkChild(hedge)
      yield* TestClock.adjust("99 millis")
      assert.strictEqual(yield* controls.backup!.calls, 0)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* controls.backup!.calls, 1)
      yield* TestClock.adjust("10 millis")
      const answer = yield* Fiber.join(hedged)
      assert.strictEqual(answer.response.text, "backup")
      assert.isTrue(answer.hedgeWon)
      // The primaries the backups cut were not served: their 110 ms do not raise the p95, which
      // would start each next backup later (one backup's latency more each time).
      for (let i = 0; i < 4; i++) {
        const again = yield* Effect.forkChild(hedge)
        yield* TestClock.adjust("110 millis")
        const done = again.pollUnsafe() !== undefined
        if (!done) yield* Fiber.interrupt(again)
        assert.isTrue(done, `hedged call ${i + 1} answered by the backup within 110 ms`)
        assert.strictEqual((yield* Fiber.join(again)).response.text, "backup")
      }
      const last = yield* Effect.forkChild(hedge)
      const before = yield* controls.backup!.calls
      yield* TestClock.adjust("100 millis")
      const backups = yield* controls.backup!.calls
      yield* Fiber.interrupt(last)
      assert.strictEqual(backups, before + 1, "the backup starts after the p95 of 100 ms")
      assert.strictEqual((yield* stats.snapshot({ provider: "primary" })).serviceTime.max, 100)
    })
  )

  it.effect('after: "p95" of a pair past Stats.maxSeries waits defaultAfter, not the p95 of the "(other)" series', () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager({
        primary: { latency: "1 second", respond: () => "primary" },
        backup: { latency: "10 millis", respond: () => "backup" }
      })
      for (let i = 0; stats.series(`filler-${i}`, "d").provider !== "(other)"; i++) {}
      // The pairs counted together, of other providers, answered in 5 seconds.
      const other = stats.series("someone-else", "d")
      for (let i = 0; i < 20; i++) other.service.record(5000)
      const hedged = yield* Effect.forkChild(
        router.hedge(ask, ["d-primary", "d-backup"], { after: "p95", defaultAfter: "50 millis" })
      )
      yield* TestClock.adjust("60 millis")
      const done = hedged.pollUnsafe()
      if (done === undefined) yield* Fiber.interrupt(hedged)
      assert.isDefined(done, "the backup started after defaultAfter (50 ms) and answered in 10 ms")
      assert.strictEqual((yield* Fiber.join(hedged)).response.text, "backup")
      assert.strictEqual(yield* controls.backup!.calls, 1)
    })
  )

  it.effect(
    'after: "p95" of a pair without a series reads none: a hedge refused before any call took a Stats.maxSeries slot',
    () =>
      Effect.gen(function* () {
        const { router, stats, registry } = yield* makeManager({ primary: {}, backup: {} })
        const refused = yield* Effect.flip(router.hedge(ask, ["d-primary", "d-nope"], { after: "p95" }))
        assert.strictEqual(invalidField(refused), "domain", refused.message)
        const text = yield* Prometheus.text.pipe(Effect.provideService(Metric.MetricRegistry, registry))
        assert.notInclude(text, 'provider="primary"', "the pair that served no call has no series")
        // Every slot is still free: the last pair of maxSeries gets its own series, not "(other)"'s.
        for (let i = 0; i < Stats.maxSeries - 1; i++) stats.series(`filler-${i}`, "d")
        assert.strictEqual(stats.series("late", "d").provider, "late")
      })
  )
})

describe("Router with breakers and a cache", () => {
  it.effect("a routed call naming no model is cached under the provider's default model (generate and stream)", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        { a: { model: "a-default", respond: (request) => `answered by ${request.model ?? "the default"}` } },
        { cache: {} }
      )
      const first = yield* router.execute(ask, "d-a")
      const named = yield* router.execute({ ...ask, model: "a-default" }, "d-a")
      assert.strictEqual(named.source, "cache", "the same request as the default one")
      assert.strictEqual(named.response.text, first.response.text)
      assert.strictEqual((yield* router.execute({ ...ask, model: "other" }, "d-a")).source, "provider")
      yield* Stream.runDrain(router.stream(ask, "d-a"))
      const calls = yield* controls.a!.calls
      yield* Stream.runDrain(router.stream({ ...ask, model: "a-default" }, "d-a"))
      assert.strictEqual(yield* controls.a!.calls, calls, "the stream was replayed from the default one's parts")
    })
  )

  it.effect("an open breaker answers from a stale cache entry when allowed, and fails with CircuitOpen otherwise", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        { a: { script: [Outcome.succeed("cached answer"), Outcome.fail("Overloaded"), Outcome.succeed("never")] } },
        { breakers: { failMax: 1, resetTimeout: "1 minute" }, cache: { ttl: "1 second", staleFor: "1 hour" } }
      )
      const first = yield* router.execute(ask, "d-a")
      assert.strictEqual(first.source, "provider")
      const hit = yield* router.execute(ask, "d-a")
      assert.strictEqual(hit.source, "cache")
      assert.strictEqual(hit.attempts, 0)
      assert.strictEqual(yield* controls.a!.calls, 1)
      yield* TestClock.adjust("2 seconds")
      // Expired: the provider is called, fails, and the breaker (failMax 1) opens.
      const failed = yield* Effect.flip(router.execute(ask, "d-a"))
      assert.strictEqual(failed._tag === "ModelError" && failed.reason, "Overloaded")
      const refused = yield* Effect.flip(router.execute(ask, "d-a"))
      assert.strictEqual(refused._tag, "CircuitOpenError")
      const stale = yield* router.execute(ask, "d-a", { allowStale: true })
      assert.strictEqual(stale.source, "stale-cache")
      assert.strictEqual(stale.response.text, "cached answer")
      assert.strictEqual(yield* controls.a!.calls, 2, "the open breaker kept the provider out")
    })
  )

  it.effect(
    "a stale answer after a provider failure: the failure stays the provider's, the call counts as a stale answer",
    () =>
      Effect.gen(function* () {
        const { router, stats, registry } = yield* makeManager(
          { a: { script: [Outcome.succeed("cached answer"), Outcome.fail("Overloaded"), Outcome.fail("Overloaded")] } },
          { breakers: { failMax: 3, resetTimeout: "1 minute" }, cache: { ttl: "1 second", staleFor: "1 hour" } }
        )
        yield* router.execute(ask, "d-a")
        yield* TestClock.adjust("2 seconds")
        const stale = yield* router.execute(ask, "d-a", { allowStale: true })
        assert.strictEqual(stale.source, "stale-cache")
        const failed = yield* Effect.flip(router.execute(ask, "d-a"))
        assert.strictEqual(failed._tag === "ModelError" && failed.reason, "Overloaded")
        const snapshot = yield* stats.snapshot({ provider: "a", domain: "d-a" })
        // Two provider failures (the stale answer's and the plain failure), one call answered stale.
        assert.deepStrictEqual(
          [snapshot.total, snapshot.successes, snapshot.failures, snapshot.failuresByReason, snapshot.staleAnswers],
          [3, 1, 2, { Overloaded: 2 }, 1]
        )
        assert.strictEqual((yield* stats.snapshot({ domain: "other" })).staleAnswers, 0)
        const text = yield* Prometheus.text.pipe(Effect.provideService(Metric.MetricRegistry, registry))
        assert.include(text, 'orchestra_stale_answers_total{provider="a",domain="d-a"} 1')
        assert.include(text, 'orchestra_failures_total{provider="a",domain="d-a",reason="Overloaded"} 2')
        assert.match(Stats.format(snapshot), /stale answers +1\n/)
        yield* stats.reset
        assert.strictEqual((yield* stats.snapshot()).staleAnswers, 0, "a new window starts from zero")
      })
  )

  it.effect("a stale answer tells the attempts and domains its failed call made, as any answer does", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        {
          a: { script: [Outcome.succeed("cached answer"), Outcome.fail("Overloaded"), Outcome.fail("Overloaded")] },
          b: { script: [Outcome.fail("Unavailable")] }
        },
        {
          breakers: false,
          cache: { ttl: "1 second", staleFor: "1 hour" },
          domains: [
            { name: "d-a", provider: "a", retry: { maxAttempts: 2, initialDelay: 100, jitter: 0 } },
            { name: "d-b", provider: "b" }
          ]
        }
      )
      yield* router.executeWithFallback(ask, ["d-a", "d-b"])
      yield* TestClock.adjust("2 seconds")
      const fiber = yield* Effect.forkChild(router.executeWithFallback(ask, ["d-a", "d-b"], { allowStale: true }))
      yield* TestClock.adjust("1 second")
      const stale = yield* Fiber.join(fiber)
      assert.strictEqual(stale.source, "stale-cache")
      assert.strictEqual(stale.response.text, "cached answer")
      assert.deepStrictEqual([yield* controls.a!.calls, yield* controls.b!.calls], [3, 1])
      assert.deepStrictEqual([stale.attempts, stale.domainsTried], [3, 2], "d-a twice, then d-b")
    })
  )

  it.effect("a stream's onRetry that throws does not end the stream: logged once, the retry answers", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager(
        { a: { script: [Outcome.fail("Overloaded"), Outcome.succeed("streamed")] } },
        { domains: [{ name: "d", provider: "a", retry: { maxAttempts: 2, initialDelay: 100, jitter: 0 } }] }
      )
      const logs = yield* captureLogs
      const fiber = yield* Effect.forkChild(
        Stream.runCollect(
          router.stream(ask, "d", {
            onRetry: () => {
              throw new Error("observer bug")
            }
          })
        ).pipe(Effect.provide(logs.layer))
      )
      yield* TestClock.adjust("1 second")
      assert.strictEqual(textOf(yield* Fiber.join(fiber)), "streamed")
      assert.strictEqual(logs.lines.filter((line) => line.includes("onRetry callback failed")).length, 1)
    })
  )

  it.effect("allowStale answers a call its total deadline cuts from the stale entry; without it, TimeoutError", () =>
    Effect.gen(function* () {
      const { router, controls, stats } = yield* makeManager(
        { a: { script: [Outcome.succeed("cached answer"), Outcome.hang(), Outcome.hang()] } },
        {
          breakers: false,
          cache: { ttl: "1 second", staleFor: "1 hour" },
          domains: [{ name: "d-a", provider: "a", timeout: "1 minute" }]
        }
      )
      yield* router.execute(ask, "d-a")
      yield* TestClock.adjust("2 seconds")
      const fiber = yield* Effect.forkChild(router.execute(ask, "d-a", { timeout: "5 seconds", allowStale: true }))
      yield* TestClock.adjust("5 seconds")
      const stale = yield* Fiber.join(fiber)
      assert.strictEqual(stale.source, "stale-cache")
      assert.strictEqual(stale.response.text, "cached answer")
      assert.deepStrictEqual([stale.domain, stale.attempts, stale.domainsTried], ["d-a", 1, 1])
      const cut = yield* Effect.forkChild(Effect.flip(router.execute(ask, "d-a", { timeout: "5 seconds" })))
      yield* TestClock.adjust("5 seconds")
      const error = yield* Fiber.join(cut)
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      assert.strictEqual(yield* controls.a!.calls, 3)
      const snapshot = yield* stats.snapshot({ provider: "a", domain: "d-a" })
      // Both cut calls count their timeout; one of them was answered stale.
      assert.deepStrictEqual([snapshot.timeouts, snapshot.staleAnswers], [2, 1])
    })
  )

  it.effect(
    "a caller joining a running refresh is held to its own total deadline, and answered stale when allowed",
    () =>
      Effect.gen(function* () {
        const { router, controls } = yield* makeManager(
          { a: { script: [Outcome.succeed("cached answer"), Outcome.succeed("fresh", { latency: "1 minute" })] } },
          {
            breakers: false,
            cache: { ttl: "1 second", staleFor: "1 hour" },
            domains: [{ name: "d-a", provider: "a", timeout: "10 minutes" }]
          }
        )
        yield* router.execute(ask, "d-a")
        yield* TestClock.adjust("2 seconds")
        // The refresh has no deadline of its own; the callers joining it have 5 seconds.
        const leader = yield* Effect.forkChild(router.execute(ask, "d-a"))
        yield* Effect.yieldNow
        const patient = yield* Effect.forkChild(Effect.flip(router.execute(ask, "d-a", { timeout: "5 seconds" })))
        const allowing = yield* Effect.forkChild(router.execute(ask, "d-a", { timeout: "5 seconds", allowStale: true }))
        yield* TestClock.adjust("5 seconds")
        const error = yield* Fiber.join(patient)
        assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
        const stale = yield* Fiber.join(allowing)
        assert.strictEqual(stale.source, "stale-cache")
        assert.strictEqual(stale.response.text, "cached answer")
        assert.isUndefined(leader.pollUnsafe(), "the refresh goes on for its own caller")
        yield* TestClock.adjust("1 minute")
        assert.strictEqual((yield* Fiber.join(leader)).response.text, "fresh")
        assert.strictEqual(yield* controls.a!.calls, 2)
      })
  )

  it.effect("a cached answer a fallback domain gave names that domain: joined, a hit, stale, from another chain", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        {
          a: { random: { success: 0, failures: { Overloaded: 1 } } },
          b: { script: [Outcome.succeed("from b", { latency: "100 millis" }), Outcome.fail("Unavailable")] },
          c: {}
        },
        {
          breakers: false,
          cache: { ttl: "1 second", staleFor: "1 hour" },
          domains: [
            { name: "d-a", provider: "a", fallback: ["d-b"] },
            { name: "d-b", provider: "b" },
            { name: "d-c", provider: "c" }
          ]
        }
      )
      const fellBack = (answer: Router.Answer) => [
        answer.response.text,
        answer.domain,
        answer.provider,
        answer.fallbackUsed,
        answer.source
      ]
      const leader = yield* Effect.forkChild(router.execute(ask, "d-a"))
      yield* Effect.yieldNow
      const joiner = yield* Effect.forkChild(router.execute(ask, "d-a"))
      yield* TestClock.adjust("100 millis")
      assert.deepStrictEqual(fellBack(yield* Fiber.join(leader)), ["from b", "d-b", "b", true, "provider"])
      assert.deepStrictEqual(fellBack(yield* Fiber.join(joiner)), ["from b", "d-b", "b", true, "cache"])
      const hit = yield* router.execute(ask, "d-a")
      assert.deepStrictEqual(fellBack(hit), ["from b", "d-b", "b", true, "cache"])
      assert.strictEqual(hit.attempts, 0)
      // Another chain from d-a shares the key: the answer is still d-b's, not its first domain's.
      const other = yield* router.executeWithFallback(ask, ["d-a", "d-c"])
      assert.deepStrictEqual(fellBack(other), ["from b", "d-b", "b", true, "cache"])
      yield* TestClock.adjust("2 seconds")
      const stale = yield* router.execute(ask, "d-a", { allowStale: true })
      assert.deepStrictEqual(fellBack(stale), ["from b", "d-b", "b", true, "stale-cache"])
      assert.deepStrictEqual([yield* controls.a!.calls, yield* controls.b!.calls, yield* controls.c!.calls], [2, 2, 0])
    })
  )

  it.effect("a fallback domain with cache: false answers its call, but its answer and its stream are not kept", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        {
          a: { random: { success: 0, failures: { Overloaded: 1 } } },
          b: { respond: () => "from b" },
          c: { respond: () => "from c" }
        },
        {
          breakers: false,
          cache: { ttl: "1 hour" },
          domains: [
            { name: "d-a", provider: "a", fallback: ["d-b"] },
            { name: "d-b", provider: "b", cache: false },
            { name: "d-c", provider: "c" }
          ]
        }
      )
      const first = yield* router.execute(ask, "d-a")
      const second = yield* router.execute(ask, "d-a")
      assert.deepStrictEqual(
        [first.response.text, first.domain, second.response.text, second.source],
        ["from b", "d-b", "from b", "provider"]
      )
      assert.strictEqual(yield* controls.b!.calls, 2, "d-b's answer was not kept under d-a's key")
      assert.strictEqual(textOf(yield* Stream.runCollect(router.stream(ask, "d-a"))), "from b")
      assert.strictEqual(textOf(yield* Stream.runCollect(router.stream(ask, "d-a"))), "from b")
      assert.strictEqual(yield* controls.b!.calls, 4, "nor was its stream")
      // A fallback domain that keeps the cache on still has its answer kept.
      yield* router.executeWithFallback(ask, ["d-a", "d-c"])
      const kept = yield* router.executeWithFallback(ask, ["d-a", "d-c"])
      assert.deepStrictEqual([kept.response.text, kept.source], ["from c", "cache"])
      assert.strictEqual(yield* controls.c!.calls, 1)
    })
  )

  it.effect("two domains on one provider never share cached answers (their system prompts differ)", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        { a: { respond: (r) => `as ${r.system}` } },
        {
          cache: {},
          domains: [
            { name: "lawyer", provider: "a", system: "lawyer" },
            { name: "poet", provider: "a", system: "poet" }
          ]
        }
      )
      assert.strictEqual((yield* router.execute(ask, "lawyer")).response.text, "as lawyer")
      assert.strictEqual((yield* router.execute(ask, "poet")).response.text, "as poet")
      const lawyer = yield* Stream.runCollect(router.stream(ask, "lawyer"))
      const poet = yield* Stream.runCollect(router.stream(ask, "poet"))
      assert.strictEqual(textOf(lawyer), "as lawyer")
      assert.strictEqual(textOf(poet), "as poet", "a stream is cached under its domain's request")
      assert.strictEqual(yield* controls.a!.calls, 4)
      const replay = yield* Stream.runCollect(router.stream(ask, "poet"))
      assert.strictEqual(textOf(replay), "as poet")
      assert.strictEqual(yield* controls.a!.calls, 4, "the second stream of a domain is replayed from the cache")
    })
  )
})

describe("Router.stream", () => {
  it.effect("a traced stream's fallback shows in its spans: Router.stream, Executor.stream, an attempt per step", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager(
        { a: { script: [Outcome.fail("Overloaded")] }, b: { script: [Outcome.succeed("from b")] } },
        {
          domains: [
            { name: "first", provider: "a", fallback: ["second"] },
            { name: "second", provider: "b", model: "b-large" }
          ]
        }
      )
      const { spans, tracer } = recording()
      const parts = yield* Stream.runCollect(router.stream(ask, "first")).pipe(
        Effect.withSpan("caller"),
        Effect.provideService(Tracer.Tracer, tracer)
      )
      assert.strictEqual(textOf(parts), "from b")
      assert.deepStrictEqual(
        spans.map((s) => s.name),
        ["caller", "Router.stream", "Executor.stream", "Policy.attempt", "Policy.attempt"]
      )
      const [, routed, stream, onA, onB] = spans
      const parentOf = (span: Tracer.NativeSpan) => (span.parent._tag === "Some" ? span.parent.value.spanId : undefined)
      assert.strictEqual(parentOf(stream!), routed!.spanId)
      assert.strictEqual(parentOf(onA!), stream!.spanId)
      assert.strictEqual(parentOf(onB!), stream!.spanId)
      assert.strictEqual(onA!.attributes.get("orchestra.domain"), "first")
      assert.strictEqual(onA!.attributes.get("error.type"), "Overloaded")
      assert.strictEqual(onB!.attributes.get("orchestra.domain"), "second")
      assert.strictEqual(onB!.attributes.get("gen_ai.request.model"), "b-large")
      for (const span of spans) assert.strictEqual(span.status._tag, "Ended", span.name)
    })
  )

  it.effect("applies the domain's system prompt and falls back along its chain before the first chunk", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        { a: { script: [Outcome.fail("Overloaded")] }, b: { respond: () => "one two" } },
        {
          domains: [
            { name: "main", provider: "a", system: "main system", fallback: ["spare"] },
            { name: "spare", provider: "b", system: "spare system" }
          ]
        }
      )
      const parts = yield* Stream.runCollect(router.stream(ask, "main"))
      assert.strictEqual(textOf(parts), "one two")
      const [toA] = yield* controls.a!.requests
      const [toB] = yield* controls.b!.requests
      assert.strictEqual(systemOf(toA!), "main system")
      assert.strictEqual(systemOf(toB!), "spare system")
    })
  )
})

describe("Router.stream resume options", () => {
  it.effect("take each field as the executor's do: a field left undefined is its default", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager({ a: { respond: () => "one two" } })
      // A configuration read field by field: what it leaves out is undefined (exactOptionalPropertyTypes).
      const config: { readonly maxResumes?: number | undefined; readonly instruction?: string | undefined } = {}
      const options: Router.StreamOptions = {
        resume: { maxResumes: config.maxResumes, instruction: config.instruction, minOverlap: undefined }
      }
      assert.strictEqual(textOf(yield* Stream.runCollect(router.stream(ask, "d-a", options))), "one two")
    })
  )
})

describe("Router.stream deadlines", () => {
  it.effect(
    "each step of the chain waits for its first chunk as long as its own domain's timeout, as execute does",
    () =>
      Effect.gen(function* () {
        const { router } = yield* makeManager(
          {
            a: { script: [Outcome.fail("Overloaded"), Outcome.fail("Overloaded")] },
            b: { latency: "3 seconds", respond: () => "slow but sure" }
          },
          {
            domains: [
              { name: "main", provider: "a", timeout: "1 second", fallback: ["local"] },
              { name: "local", provider: "b", timeout: "10 seconds" }
            ]
          }
        )
        const fiber = yield* Effect.forkChild(Stream.runCollect(router.stream(ask, "main")))
        yield* TestClock.adjust("3 seconds")
        assert.strictEqual(textOf(yield* Fiber.join(fiber)), "slow but sure")
        // The caller's own firstChunkTimeout still bounds every step.
        const bounded = yield* Effect.forkChild(
          Effect.flip(Stream.runCollect(router.stream(ask, "main", { firstChunkTimeout: "2 seconds" })))
        )
        yield* TestClock.adjust("2 seconds")
        const error = yield* Fiber.join(bounded)
        const last = error._tag === "FallbackExhaustedError" ? error.last : error
        assert.strictEqual(last._tag === "TimeoutError" && Duration.toMillis(last.timeout), 2000)
      })
  )
})

describe("Router.stream onRetry", () => {
  it.effect("names the domain that retried, along the chain, as execute's onRetry does", () =>
    Effect.gen(function* () {
      const { router } = yield* makeManager(
        {
          a: { script: [Outcome.fail("Overloaded"), Outcome.fail("Overloaded")] },
          b: { script: [Outcome.fail("Overloaded")] }
        },
        {
          domains: [
            {
              name: "main",
              provider: "a",
              retry: { maxAttempts: 2, initialDelay: 100, jitter: 0 },
              fallback: ["spare"]
            },
            { name: "spare", provider: "b", retry: { maxAttempts: 2, initialDelay: 100, jitter: 0 } }
          ]
        }
      )
      const seen: Array<[string, string | undefined]> = []
      const fiber = yield* Effect.forkChild(
        Stream.runCollect(
          router.stream(ask, "main", { onRetry: (info) => Effect.sync(() => seen.push([info.provider, info.domain])) })
        )
      )
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual(seen, [
        ["a", "main"],
        ["b", "spare"]
      ])
    })
  )
})

describe("Router.embed", () => {
  it.effect("calls onRetry on each retry of the domain's policy, and refuses a cache flag that is not a boolean", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        { a: { script: [Outcome.fail("Overloaded"), Outcome.fail("Overloaded")] } },
        { domains: [{ name: "vectors", provider: "a", retry: { maxAttempts: 3, initialDelay: 100, jitter: 0 } }] }
      )
      const seen: Array<[string | undefined, number]> = []
      const fiber = yield* Effect.forkChild(
        router.embed({ texts: ["x"] }, "vectors", {
          onRetry: (info) => Effect.sync(() => seen.push([info.domain, info.attempt]))
        })
      )
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      assert.strictEqual(yield* controls.a!.calls, 3)
      assert.deepStrictEqual(seen, [
        ["vectors", 1],
        ["vectors", 2]
      ])
      const error = yield* Effect.flip(router.embed({ texts: ["x"] }, "vectors", { cache: "no" as never }))
      assert.strictEqual(invalidField(error), "cache")
      assert.strictEqual(yield* controls.a!.calls, 3)
    })
  )

  it.effect("uses the domain's provider and model, and bounds the call by its timeout", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeManager(
        { a: {}, b: { script: [Outcome.hang()] } },
        {
          domains: [
            { name: "vectors", provider: "a", model: "embedder" },
            { name: "stuck", provider: "b" }
          ]
        }
      )
      const response = yield* router.embed({ texts: ["x", "y"] }, "vectors")
      assert.strictEqual(response.vectors.length, 2)
      assert.strictEqual(response.model, "embedder")
      assert.strictEqual(yield* controls.a!.calls, 1)
      const fiber = yield* Effect.forkChild(
        Effect.flip(router.embed({ texts: ["x"] }, "stuck", { timeout: "2 seconds" }))
      )
      yield* TestClock.adjust("2 seconds")
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
    })
  )
})
