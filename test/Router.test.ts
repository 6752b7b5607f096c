import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Exit, Fiber, Metric, type MetricState, Option, Scope, TestClock } from "effect"
import * as Policy from "../src/Policy.js"
import { Outcome } from "../src/Model/Mock.js"
import { makeOrchestra } from "./utils/orchestra.js"

describe("Router.executeWithFallback", () => {
  it.effect("tries domains in order and reports who answered", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeOrchestra({
        a: { script: [Outcome.fail("Overloaded")] },
        b: { script: [Outcome.fail("Unavailable")] },
        c: { respond: () => "from c" }
      })
      const answer = yield* router.executeWithFallback({ prompt: "q" }, ["d-a", "d-b", "d-c"])
      assert.strictEqual(answer.response.text, "from c")
      assert.strictEqual(answer.domain, "d-c")
      assert.strictEqual(answer.provider, controls.c!.name)
      assert.strictEqual(answer.attempts, 3)
      assert.isTrue(answer.fallbackUsed)
      assert.deepStrictEqual([yield* controls.a!.calls, yield* controls.b!.calls, yield* controls.c!.calls], [1, 1, 1])
    })
  )

  it.effect("answers from the first domain without a fallback when it works", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeOrchestra({ a: {}, b: {} })
      const answer = yield* router.executeWithFallback({ prompt: "q" }, ["d-a", "d-b"])
      assert.strictEqual(answer.domain, "d-a")
      assert.isFalse(answer.fallbackUsed)
      assert.strictEqual(answer.attempts, 1)
      assert.strictEqual(yield* controls.b!.calls, 0)
    })
  )

  it.effect("does not fall back on an error every provider would give (InvalidRequest)", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeOrchestra({
        a: { script: [Outcome.fail("InvalidRequest")] },
        b: {}
      })
      const error = yield* Effect.flip(router.executeWithFallback({ prompt: "q" }, ["d-a", "d-b"]))
      assert.strictEqual(error._tag === "ModelError" && error.reason, "InvalidRequest")
      assert.strictEqual(yield* controls.b!.calls, 0)
    })
  )

  it.effect("each step uses its own retry policy before falling back", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeOrchestra(
        { a: { random: { seed: 1, succeed: 0, fail: { Overloaded: 1 } } }, b: { respond: () => "b" } },
        {
          domains: [
            { name: "d-a", provider: "a", retry: retry3 },
            { name: "d-b", provider: "b" }
          ]
        }
      )
      const fiber = yield* Effect.fork(router.executeWithFallback({ prompt: "q" }, ["d-a", "d-b"]))
      yield* TestClock.adjust("10 seconds")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "b")
      assert.strictEqual(yield* controls.a!.calls, 3)
    })
  )

  it.effect("an unknown domain is an InvalidRequest naming the field", () =>
    Effect.gen(function* () {
      const { router } = yield* makeOrchestra({ a: {} })
      const error = yield* Effect.flip(router.execute({ prompt: "q" }, "nope"))
      assert.strictEqual(error._tag === "ModelError" && error.field, "domain")
      assert.include(error.message, "nope")
    })
  )
})

const retry3 = Policy.retry({ maxAttempts: 3, initialDelay: 100, jitter: 0 })

describe("Router.executeParallelDomains", () => {
  it.effect("all: every domain's outcome, failures included", () =>
    Effect.gen(function* () {
      const { router } = yield* makeOrchestra({
        a: { respond: () => "a" },
        b: { script: [Outcome.fail("Overloaded")] }
      })
      const outcomes = yield* router.executeParallelDomains({ prompt: "q" }, ["d-a", "d-b"], "all")
      assert.strictEqual(outcomes.length, 2)
      assert.isTrue(Either.isRight(outcomes[0]!.result))
      assert.isTrue(Either.isLeft(outcomes[1]!.result))
    })
  )

  it.effect("first: the first success wins and the others are interrupted", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeOrchestra({
        slow: { latency: "5 seconds" },
        fast: { latency: "1 second", respond: () => "fast" },
        stuck: { script: [Outcome.hang()] }
      })
      const fiber = yield* Effect.fork(
        router.executeParallelDomains({ prompt: "q" }, ["d-slow", "d-fast", "d-stuck"], "first")
      )
      yield* TestClock.adjust("1 second")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "fast")
      assert.strictEqual(yield* controls.slow!.interrupted, 1)
      assert.strictEqual(yield* controls.stuck!.interrupted, 1)
      assert.strictEqual(yield* controls.slow!.inFlight, 0)
    })
  )
})

describe("Router.hedge", () => {
  it.effect("starts the backup only after the delay, and counts the interrupted loser", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeOrchestra({
        primary: { latency: "3 seconds", respond: () => "primary" },
        backup: { latency: "500 millis", respond: () => "backup" }
      })
      const fiber = yield* Effect.fork(router.hedge({ prompt: "q" }, ["d-primary", "d-backup"], { after: "1 second" }))
      yield* TestClock.adjust("999 millis")
      assert.strictEqual(yield* controls.backup!.calls, 0)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* controls.backup!.calls, 1)
      yield* TestClock.adjust("500 millis")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "backup")
      assert.isTrue(answer.hedgeWon)
      assert.strictEqual(yield* controls.primary!.interrupted, 1)
      const hedges = (yield* Metric.snapshot).filter((pair) => pair.metricKey.name === "orchestra_hedges_total")
      const count = (provider: string, outcome: string) =>
        hedges
          .filter(
            (pair) =>
              pair.metricKey.tags.some((t) => t.key === "provider" && t.value === provider) &&
              pair.metricKey.tags.some((t) => t.key === "outcome" && t.value === outcome)
          )
          .reduce((n, pair) => n + Number((pair.metricState as MetricState.MetricState.Counter<number>).count), 0)
      assert.strictEqual(count(controls.primary!.name, "lost"), 1)
      assert.strictEqual(count(controls.backup!.name, "won"), 1)
      assert.strictEqual(count(controls.backup!.name, "started"), 1)
    })
  )

  it.effect("no backup when the primary answers in time", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeOrchestra({
        primary: { latency: "200 millis", respond: () => "primary" },
        backup: {}
      })
      const fiber = yield* Effect.fork(router.hedge({ prompt: "q" }, ["d-primary", "d-backup"], { after: "1 second" }))
      yield* TestClock.adjust("2 seconds")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "primary")
      assert.strictEqual(yield* controls.backup!.calls, 0)
    })
  )

  it.effect("a primary that fails in a way that falls back starts the backup at once", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeOrchestra({
        primary: { script: [Outcome.fail("Overloaded", { latency: "100 millis" })] },
        backup: { respond: () => "backup" }
      })
      const fiber = yield* Effect.fork(router.hedge({ prompt: "q" }, ["d-primary", "d-backup"], { after: "5 seconds" }))
      yield* TestClock.adjust("100 millis")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.response.text, "backup")
      assert.strictEqual(yield* controls.backup!.calls, 1)
    })
  )
})

describe("Orchestra lifecycle", () => {
  it.effect("closing the scope drains, refuses new work, interrupts the rest and every caller gets an outcome", () =>
    Effect.gen(function* () {
      const { router, controls, scope } = yield* makeOrchestra(
        { a: { script: [Outcome.succeed("done", { latency: "1 second" }), Outcome.hang()] } },
        { executor: { shutdownDeadline: "3 seconds", timeout: "1 minute" } }
      )
      const finishing = yield* Effect.fork(router.execute({ prompt: "1" }, "d-a"))
      const stuck = yield* Effect.fork(router.execute({ prompt: "2" }, "d-a"))
      yield* TestClock.adjust("10 millis")
      const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
      yield* TestClock.adjust("10 millis")
      const refused = yield* Effect.flip(router.execute({ prompt: "3" }, "d-a"))
      assert.strictEqual(refused._tag, "ShuttingDownError")
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(finishing)).response.text, "done")
      assert.isTrue(Option.isNone(yield* Fiber.poll(closing)))
      yield* TestClock.adjust("3 seconds")
      yield* Fiber.join(closing)
      const stuckError = yield* Effect.flip(Fiber.join(stuck))
      assert.strictEqual(stuckError._tag, "ShuttingDownError")
      assert.strictEqual(yield* controls.a!.inFlight, 0)
    })
  )
})

describe("Router with breakers and a cache", () => {
  it.effect("an open breaker answers from a stale cache entry when allowed, and fails with CircuitOpen otherwise", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeOrchestra(
        {
          a: {
            script: [Outcome.succeed("cached answer"), Outcome.fail("Overloaded"), Outcome.succeed("never reached")]
          }
        },
        { breakers: { failMax: 1, resetTimeout: "1 minute" }, cache: { ttl: "1 second", staleFor: "1 hour" } }
      )
      const first = yield* router.execute({ prompt: "q" }, "d-a")
      assert.strictEqual(first.source, "provider")
      const hit = yield* router.execute({ prompt: "q" }, "d-a")
      assert.strictEqual(hit.source, "cache")
      assert.strictEqual(yield* controls.a!.calls, 1)
      yield* TestClock.adjust("2 seconds")
      // Expired: the provider is called, fails, and the breaker (failMax 1) opens.
      const failed = yield* Effect.flip(router.execute({ prompt: "q" }, "d-a"))
      assert.strictEqual(failed._tag === "ModelError" && failed.reason, "Overloaded")
      const refused = yield* Effect.flip(router.execute({ prompt: "q" }, "d-a"))
      assert.strictEqual(refused._tag, "CircuitOpenError")
      const stale = yield* router.execute({ prompt: "q" }, "d-a", { allowStale: true })
      assert.strictEqual(stale.source, "stale-cache")
      assert.strictEqual(stale.response.text, "cached answer")
      assert.strictEqual(yield* controls.a!.calls, 2, "the open breaker kept the provider out")
    })
  )
})

describe("Router.hedge, more", () => {
  it.effect("each backup starts a delay after the previous one started, and a bad request ends the hedge", () =>
    Effect.gen(function* () {
      const { router, controls } = yield* makeOrchestra({
        a: { script: [Outcome.hang()] },
        b: { script: [Outcome.hang()] },
        c: { latency: "100 millis", respond: () => "c" }
      })
      const fiber = yield* Effect.fork(router.hedge({ prompt: "q" }, ["d-a", "d-b", "d-c"], { after: "1 second" }))
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual([yield* controls.b!.calls, yield* controls.c!.calls], [1, 0])
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* controls.c!.calls, 1)
      yield* TestClock.adjust("100 millis")
      assert.strictEqual((yield* Fiber.join(fiber)).response.text, "c")
      assert.strictEqual(yield* controls.a!.interrupted, 1)
      assert.strictEqual(yield* controls.b!.interrupted, 1)

      const bad = yield* makeOrchestra({
        a: { script: [Outcome.fail("InvalidRequest", { latency: "10 millis" })] },
        b: {}
      })
      const badFiber = yield* Effect.fork(bad.router.hedge({ prompt: "q" }, ["d-a", "d-b"], { after: "5 seconds" }))
      yield* TestClock.adjust("10 millis")
      const error = yield* Effect.flip(Fiber.join(badFiber))
      assert.strictEqual(error._tag === "ModelError" && error.reason, "InvalidRequest")
      assert.strictEqual(yield* bad.controls.b!.calls, 0, "the bad request never reached the backup")
    })
  )

  it.effect("a domain naming a provider that is not registered fails with Unavailable, even for prototype names", () =>
    Effect.gen(function* () {
      const { router } = yield* makeOrchestra(
        { a: {} },
        {
          domains: [
            { name: "weird", provider: "toString" },
            { name: "d-a", provider: "a" }
          ]
        }
      )
      const error = yield* Effect.flip(router.execute({ prompt: "q" }, "weird"))
      assert.strictEqual(error._tag === "ModelError" && error.reason, "Unavailable")
    })
  )
})
