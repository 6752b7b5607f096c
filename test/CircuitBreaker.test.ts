import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  Chunk,
  Deferred,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  Metric,
  Option,
  ParseResult,
  Queue,
  Ref,
  Schema,
  TestClock
} from "effect"
import { CircuitOpenError, modelError, TimeoutError } from "../src/AiError.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Policy from "../src/Policy.js"
import { circuitRejected, circuitState, circuitTransitions } from "../src/internal/resilienceMetrics.js"

let counter = 0
const uniqueName = (label: string) => `test-${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const overloaded = Effect.fail(modelError("Overloaded", "busy"))
const invalid = Effect.fail(modelError("InvalidRequest", "bad request"))
const ok = Effect.succeed("ok")

const gaugeOf = (name: string) => Effect.map(Metric.value(Metric.tagged(circuitState, "breaker", name)), (s) => s.value)

const rejectedOf = (name: string) =>
  Effect.map(Metric.value(Metric.tagged(circuitRejected, "breaker", name)), (s) => s.count)

/** Runs `effect` through the breaker `times` times, ignoring the outcome. */
const repeat = <A, E>(breaker: CircuitBreaker.CircuitBreaker, effect: Effect.Effect<A, E>, times: number) =>
  Effect.forEach(Array.from({ length: times }), () => Effect.exit(breaker.run(effect)), { discard: true })

/** Open a breaker built with failMax 1. */
const trip = (breaker: CircuitBreaker.CircuitBreaker) => Effect.exit(breaker.run(overloaded))

const expectRejected = (breaker: CircuitBreaker.CircuitBreaker, state: "open" | "half-open" | "isolated") =>
  Effect.gen(function* () {
    const ran = yield* Ref.make(false)
    const error = yield* Effect.flip(breaker.run(Ref.set(ran, true)))
    assert.instanceOf(error, CircuitOpenError)
    assert.strictEqual(error._tag, "CircuitOpenError")
    assert.strictEqual(error.state, state)
    assert.strictEqual(error.breaker, breaker.name)
    assert.isFalse(yield* Ref.get(ran), "a refused call must not run")
    return error
  })

describe("CircuitBreaker", () => {
  it.scoped("opens after failMax consecutive failures; a success in between resets the count", () =>
    Effect.gen(function* () {
      const breaker = yield* CircuitBreaker.make(uniqueName("failmax"), { failMax: 3, resetTimeout: "10 seconds" })
      yield* repeat(breaker, overloaded, 2)
      yield* breaker.run(ok)
      yield* repeat(breaker, overloaded, 2)
      assert.strictEqual(yield* breaker.state, "closed")
      const last = yield* Effect.flip(breaker.run(overloaded))
      assert.strictEqual(last._tag, "ModelError", "the tripping call keeps its own error")
      assert.strictEqual(yield* breaker.state, "open")
      const error = yield* expectRejected(breaker, "open")
      assert.deepStrictEqual(
        error.retryAfter?.pipe((d) => d.value),
        { _tag: "Millis", millis: 10_000 }
      )
      assert.strictEqual(yield* rejectedOf(breaker.name), 1)
    })
  )

  it.scoped("rolling window: does not open below the volume threshold, opens once the rate is reached", () =>
    Effect.gen(function* () {
      const breaker = yield* CircuitBreaker.make(uniqueName("rolling"), {
        rolling: { window: "10 seconds", minimumCalls: 10, failureRate: 0.5 }
      })
      // 9 calls, all failures: 100% but below the volume threshold of 10.
      yield* repeat(breaker, overloaded, 9)
      assert.strictEqual(yield* breaker.state, "closed")
      // Those calls leave the window; the next failure sees 1 call.
      yield* TestClock.adjust("12 seconds")
      yield* repeat(breaker, overloaded, 1)
      assert.strictEqual(yield* breaker.state, "closed")
      assert.strictEqual((yield* breaker.snapshot).windowCalls, 1)
      // 6 successes + 3 more failures: 10 calls, 40% -> stays closed (failMax is off with rolling alone).
      yield* repeat(breaker, ok, 6)
      yield* repeat(breaker, overloaded, 3)
      const snap = yield* breaker.snapshot
      assert.strictEqual(snap.windowCalls, 10)
      assert.strictEqual(snap.windowFailures, 4)
      assert.strictEqual(yield* breaker.state, "closed")
      // 11 calls, 5 failures (45%): closed. 12 calls, 6 failures (50%): open.
      yield* repeat(breaker, overloaded, 1)
      assert.strictEqual(yield* breaker.state, "closed")
      yield* repeat(breaker, overloaded, 1)
      assert.strictEqual(yield* breaker.state, "open")
    })
  )

  it.scoped("the gauge moves open -> half-open with no traffic, driven by the clock", () =>
    Effect.gen(function* () {
      const breaker = yield* CircuitBreaker.make(uniqueName("gauge"), { failMax: 1, resetTimeout: "30 seconds" })
      assert.strictEqual(yield* gaugeOf(breaker.name), 0)
      yield* trip(breaker)
      assert.strictEqual(yield* gaugeOf(breaker.name), 1)
      yield* TestClock.adjust("29 seconds")
      assert.strictEqual(yield* gaugeOf(breaker.name), 1)
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* breaker.state, "half-open")
      assert.strictEqual(yield* gaugeOf(breaker.name), 2)
      yield* breaker.isolate
      assert.strictEqual(yield* gaugeOf(breaker.name), 3)
      yield* breaker.reset
      assert.strictEqual(yield* gaugeOf(breaker.name), 0)
      const toOpen = yield* Metric.value(
        Metric.tagged(Metric.tagged(circuitTransitions, "breaker", breaker.name), "to", "open")
      )
      assert.strictEqual(toOpen.count, 1)
    })
  )

  it.scoped("half-open admits exactly halfOpenMax probes and rejects the rest; enough successes close", () =>
    Effect.gen(function* () {
      const breaker = yield* CircuitBreaker.make(uniqueName("probes"), {
        failMax: 1,
        resetTimeout: "5 seconds",
        halfOpenMax: 2,
        successThreshold: 2
      })
      yield* trip(breaker)
      yield* TestClock.adjust("5 seconds")
      assert.strictEqual(yield* breaker.state, "half-open")
      const gate = yield* Deferred.make<void>()
      const started = yield* Ref.make(0)
      const probe = Effect.zipRight(
        Ref.update(started, (n) => n + 1),
        Deferred.await(gate)
      )
      const probes = yield* Effect.fork(Effect.all([breaker.run(probe), breaker.run(probe)], { concurrency: 2 }))
      yield* Effect.yieldNow().pipe(Effect.repeat({ until: () => Effect.map(Ref.get(started), (n) => n === 2) }))
      yield* expectRejected(breaker, "half-open")
      yield* expectRejected(breaker, "half-open")
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(probes)
      assert.strictEqual(yield* breaker.state, "closed")
      yield* breaker.run(ok)
    })
  )

  it.scoped("a probe failure reopens; the reset timeout grows on repeated trips and resets on close", () =>
    Effect.gen(function* () {
      const breaker = yield* CircuitBreaker.make(uniqueName("growth"), {
        failMax: 1,
        resetTimeout: "10 seconds",
        resetTimeoutMax: "35 seconds",
        resetTimeoutMultiplier: 2
      })
      const openFor = Effect.map(breaker.snapshot, (s) =>
        Option.map(s.retryAfter, (d) => d.pipe((x) => (x.value._tag === "Millis" ? x.value.millis : -1)))
      )
      yield* trip(breaker)
      assert.deepStrictEqual(yield* openFor, Option.some(10_000))
      yield* TestClock.adjust("10 seconds")
      assert.strictEqual(yield* breaker.state, "half-open")
      yield* trip(breaker) // the probe fails
      assert.strictEqual(yield* breaker.state, "open")
      assert.deepStrictEqual(yield* openFor, Option.some(20_000))
      yield* TestClock.adjust("19 seconds")
      assert.strictEqual(yield* breaker.state, "open")
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* breaker.state, "half-open")
      yield* trip(breaker)
      assert.deepStrictEqual(yield* openFor, Option.some(35_000), "capped at resetTimeoutMax")
      yield* TestClock.adjust("35 seconds")
      yield* breaker.run(ok)
      assert.strictEqual(yield* breaker.state, "closed")
      yield* trip(breaker)
      assert.deepStrictEqual(yield* openFor, Option.some(10_000), "closing resets the growth")
    })
  )

  it.scoped("after the reset timeout the next call is a probe, and its success closes the breaker", () =>
    Effect.gen(function* () {
      const breaker = yield* CircuitBreaker.make(uniqueName("lazy"), { failMax: 1, resetTimeout: "1 second" })
      yield* trip(breaker)
      yield* TestClock.setTime(Date.UTC(2030, 0, 1))
      assert.strictEqual(yield* breaker.run(ok), "ok")
      assert.strictEqual(yield* breaker.state, "closed")
    })
  )

  it.scoped("publishes every transition in order, with the clock's time", () =>
    Effect.gen(function* () {
      const breaker = yield* CircuitBreaker.make(uniqueName("stream"), { failMax: 1, resetTimeout: "1 second" })
      const queue = yield* breaker.subscribe
      const t0 = yield* TestClock.currentTimeMillis
      yield* trip(breaker)
      yield* TestClock.adjust("1 second")
      yield* trip(breaker)
      yield* TestClock.adjust("1 second")
      yield* breaker.run(ok)
      yield* breaker.isolate
      yield* breaker.reset
      const changes = Chunk.toReadonlyArray(yield* Queue.takeAll(queue))
      assert.deepStrictEqual(
        changes.map((c) => [c.from, c.to, c.at - t0]),
        [
          ["closed", "open", 0],
          ["open", "half-open", 1000],
          ["half-open", "open", 1000],
          ["open", "half-open", 2000],
          ["half-open", "closed", 2000],
          ["closed", "isolated", 2000],
          ["isolated", "closed", 2000]
        ]
      )
      assert.isTrue(changes.every((c) => c.name === breaker.name))
    })
  )

  it.scoped("concurrent transitions reach the stream in the order they happened", () =>
    Effect.gen(function* () {
      const breaker = yield* CircuitBreaker.make(uniqueName("order"), { failMax: 1, resetTimeout: "1 second" })
      const queue = yield* breaker.subscribe
      yield* Effect.forEach(Array.from({ length: 200 }), (_, i) => (i % 2 === 0 ? breaker.isolate : breaker.reset), {
        concurrency: "unbounded",
        discard: true
      })
      const changes = Chunk.toReadonlyArray(yield* Queue.takeAll(queue))
      assert.strictEqual(changes.length, 200)
      for (let i = 1; i < changes.length; i++) assert.strictEqual(changes[i]!.from, changes[i - 1]!.to)
    })
  )

  it.scoped("isolate refuses every call until reset", () =>
    Effect.gen(function* () {
      const breaker = yield* CircuitBreaker.make(uniqueName("isolate"), { failMax: 1, resetTimeout: "1 second" })
      yield* breaker.isolate
      yield* expectRejected(breaker, "isolated")
      yield* TestClock.adjust("1 hour")
      yield* expectRejected(breaker, "isolated")
      yield* breaker.reset
      assert.strictEqual(yield* breaker.run(ok), "ok")
      // isolate while open cancels the pending probe timer
      yield* trip(breaker)
      yield* breaker.isolate
      yield* TestClock.adjust("2 seconds")
      assert.strictEqual(yield* breaker.state, "isolated")
    })
  )

  it.scoped("which outcomes count: InvalidRequest and interruptions do not, timeouts and defects do", () =>
    Effect.gen(function* () {
      const breaker = yield* CircuitBreaker.make(uniqueName("filter"), { failMax: 2 })
      yield* repeat(breaker, invalid, 10)
      yield* repeat(breaker, Effect.interrupt, 10)
      yield* repeat(breaker, Effect.fail(modelError("Unauthorized", "no")), 10)
      assert.strictEqual(yield* breaker.state, "closed")
      yield* repeat(breaker, Effect.fail(new TimeoutError({ limit: "request", timeout: Duration.seconds(1) })), 1)
      yield* repeat(breaker, Effect.dieMessage("boom"), 1)
      assert.strictEqual(yield* breaker.state, "open")

      const custom = yield* CircuitBreaker.make(uniqueName("custom"), {
        failMax: 1,
        isFailure: (e) => e === "counts"
      })
      yield* repeat(custom, Effect.fail("ignored"), 3)
      assert.strictEqual(yield* custom.state, "closed")
      yield* repeat(custom, Effect.fail("counts"), 1)
      assert.strictEqual(yield* custom.state, "open")
    })
  )

  it.scoped("a late failure of a call admitted before the trip does not affect the probe", () =>
    Effect.gen(function* () {
      const breaker = yield* CircuitBreaker.make(uniqueName("late"), { failMax: 1, resetTimeout: "1 second" })
      const gate = yield* Deferred.make<void>()
      const slow = yield* Effect.fork(breaker.run(Effect.zipRight(Deferred.await(gate), overloaded)))
      yield* Effect.yieldNow()
      yield* trip(breaker)
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* breaker.state, "half-open")
      yield* Deferred.succeed(gate, undefined)
      assert.isTrue(Exit.isFailure(yield* Fiber.await(slow)))
      assert.strictEqual(yield* breaker.state, "half-open")
      yield* breaker.run(ok)
      assert.strictEqual(yield* breaker.state, "closed")
    })
  )

  it.scoped("invalid options are refused when the breaker is built", () =>
    Effect.gen(function* () {
      const exit = yield* Effect.exit(
        CircuitBreaker.make(uniqueName("invalid"), {
          rolling: { window: "10 seconds", minimumCalls: 5, failureRate: 2 }
        })
      )
      assert.isTrue(Exit.isFailure(exit))
    })
  )
})

describe("durations (Policy.DurationInput)", () => {
  const decode = Schema.decodeUnknownEither(Policy.DurationInput)
  const messageOf = (either: Either.Either<unknown, ParseResult.ParseError>) =>
    Either.isLeft(either) ? ParseResult.TreeFormatter.formatErrorSync(either.left) : "accepted"

  it("negative durations are refused, as numbers and as strings", () => {
    assert.include(messageOf(decode("-5 seconds")), 'a duration cannot be negative, got "-5 seconds"')
    assert.include(messageOf(decode(" -1 millis")), "cannot be negative")
    assert.isTrue(Either.isLeft(decode(-5)))
    assert.isTrue(Either.isLeft(decode("5s")))
    assert.deepStrictEqual(decode("1.5 minutes"), Either.right(Duration.seconds(90)))
    assert.deepStrictEqual(decode(250), Either.right(Duration.millis(250)))
    assert.deepStrictEqual(decode(Duration.seconds(2)), Either.right(Duration.seconds(2)))
    assert.deepStrictEqual(decode("0 millis"), Either.right(Duration.zero))
  })

  it("breaker options in data decode to Durations; a negative resetTimeout is refused", () => {
    const decodeOptions = Schema.decodeUnknownEither(CircuitBreaker.Options)
    assert.include(messageOf(decodeOptions({ resetTimeout: "-30 seconds" })), "cannot be negative")
    assert.include(
      messageOf(decodeOptions({ rolling: { window: "-1 minute", minimumCalls: 1, failureRate: 0.5 } })),
      "cannot be negative"
    )
    const decoded = decodeOptions({ resetTimeout: "30 seconds", resetTimeoutMax: 120_000 })
    assert.deepStrictEqual(
      decoded,
      Either.right({ resetTimeout: Duration.seconds(30), resetTimeoutMax: Duration.minutes(2) })
    )
  })

  it.scoped("make refuses a negative resetTimeout (it would never stay open)", () =>
    Effect.gen(function* () {
      const exit = yield* Effect.exit(CircuitBreaker.make(uniqueName("negative"), { resetTimeout: "-30 seconds" }))
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) assert.include(Cause.pretty(exit.cause), "cannot be negative")
    })
  )

  it.scoped("make takes any Duration.DurationInput for code: a Duration, a [seconds, nanos] pair", () =>
    Effect.gen(function* () {
      for (const resetTimeout of [
        Duration.seconds(2),
        [2, 0],
        "2 seconds",
        2000
      ] satisfies Array<Duration.DurationInput>) {
        const breaker = yield* CircuitBreaker.make(uniqueName("forms"), { failMax: 1, resetTimeout })
        yield* trip(breaker)
        const error = yield* expectRejected(breaker, "open")
        assert.deepStrictEqual(error.retryAfter, Duration.seconds(2))
        yield* TestClock.adjust("2 seconds")
        assert.strictEqual(yield* Effect.exit(breaker.run(ok)).pipe(Effect.map((e) => e._tag)), "Success")
      }
    })
  )
})

describe("CircuitBreaker.Registry", () => {
  it.scoped("returns the one shared breaker per key, created with the layer defaults", () =>
    Effect.gen(function* () {
      const registry = yield* CircuitBreaker.Registry
      const name = uniqueName("registry")
      const [a, b] = yield* Effect.all([registry.get(name), registry.get(name, { failMax: 100 })], {
        concurrency: 2
      })
      assert.strictEqual(a, b)
      const other = yield* registry.get(uniqueName("other"))
      assert.notStrictEqual(a, other)
      // defaults (failMax 2) apply; later options are ignored
      yield* repeat(b, overloaded, 2)
      assert.strictEqual(yield* a.state, "open")
      const all = yield* registry.all
      assert.deepStrictEqual(
        all.map((s) => s.state),
        [...all].map((s) => (s.name === name ? "open" : "closed"))
      )
      assert.strictEqual(all.length, 2)
    }).pipe(Effect.provide(CircuitBreaker.layer({ failMax: 2, resetTimeout: "1 second" })))
  )

  it.scoped("merges the changes of every breaker in order, and withBreaker uses the shared breaker", () =>
    Effect.gen(function* () {
      const registry = yield* CircuitBreaker.Registry
      const queue = yield* registry.subscribe
      const first = uniqueName("merged-a")
      const second = uniqueName("merged-b")
      yield* Effect.exit(overloaded.pipe(CircuitBreaker.withBreaker(first)))
      yield* TestClock.adjust("500 millis")
      yield* Effect.exit(overloaded.pipe(CircuitBreaker.withBreaker(second)))
      yield* TestClock.adjust("1 second")
      const changes = Chunk.toReadonlyArray(yield* Queue.takeAll(queue))
      assert.deepStrictEqual(
        changes.map((c) => `${c.name}:${c.to}`),
        [`${first}:open`, `${second}:open`, `${first}:half-open`, `${second}:half-open`]
      )
      const error = yield* Effect.flip(ok.pipe(CircuitBreaker.withBreaker(first), Effect.zipRight(Effect.fail("x"))))
      assert.strictEqual(error, "x")
      assert.strictEqual(yield* (yield* registry.get(first)).state, "closed")
    }).pipe(Effect.provide(CircuitBreaker.layer({ failMax: 1, resetTimeout: "1 second" })))
  )
})
