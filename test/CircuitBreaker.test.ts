import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  Clock,
  Context,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Metric,
  Ref,
  Scheduler,
  Result,
  Scope,
  Stream
} from "effect"
import { TestClock } from "effect/testing"
import {
  type AiError,
  CircuitOpenError,
  FallbackExhaustedError,
  ModelError,
  modelError,
  ShuttingDownError,
  StreamInterruptedError,
  TimeoutError
} from "../src/AiError.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import type { OptionError } from "../src/Input.js"
import * as Metrics from "../src/Metrics.js"
import { maxOwnLabelChars } from "../src/stats/labels.js"
import * as BreakerCore from "../src/CircuitBreaker/core.js"
import { check } from "../src/CircuitBreaker/options.js"
import * as Store from "effect/persistence/CircuitBreaker"
import * as PersistenceRedis from "effect/persistence/Redis"

let counter = 0
const uniqueKey = (label: string) => `test-${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const overloaded = Effect.fail(modelError("Overloaded", "busy"))
const ok = Effect.succeed("ok")

/** Runs a test body with its own breakers and its own metric registry. */
const withBreakers = <A, E>(
  options: CircuitBreaker.Options,
  body: (breakers: CircuitBreaker.Service) => Effect.Effect<A, E, Scope.Scope>
) =>
  Effect.gen(function* () {
    const breakers = yield* CircuitBreaker.makeMemory(options)
    return yield* body(breakers)
  }).pipe(Effect.scoped, Effect.provideService(Metric.MetricRegistry, new Map()))

const run = <A, E extends AiError>(breakers: CircuitBreaker.Service, key: string, effect: Effect.Effect<A, E>) =>
  Effect.exit(breakers.execute(key, effect))

const repeat = <A, E extends AiError>(
  breakers: CircuitBreaker.Service,
  key: string,
  effect: Effect.Effect<A, E>,
  times: number
) => Effect.forEach(Array.from({ length: times }), () => run(breakers, key, effect), { discard: true })

const expectRejected = (breakers: CircuitBreaker.Service, key: string, state: CircuitOpenError["state"]) =>
  Effect.gen(function* () {
    const ran = yield* Ref.make(false)
    const error = yield* Effect.flip(breakers.execute(key, Ref.set(ran, true)))
    assert.instanceOf(error, CircuitOpenError)
    assert.strictEqual(error.state, state)
    assert.strictEqual(error.breaker, key)
    assert.isFalse(yield* Ref.get(ran), "a refused call must not run")
    return error
  })

const gauge = (key: string) =>
  Effect.map(Metric.value(Metric.withAttributes(Metrics.breakerState, { breaker: key })), (s) => s.value)

const rejections = (key: string) =>
  Effect.map(Metric.value(Metric.withAttributes(Metrics.breakerRejections, { breaker: key })), (s) => s.count)

const transitions = (key: string, from: string, to: string) =>
  Effect.map(
    Metric.value(Metric.withAttributes(Metrics.breakerTransitions, { breaker: key, from, to })),
    (s) => s.count
  )

/** The series of `id` in the current registry with attribute breaker=key, without creating one. */
const series = (id: string, key?: string) =>
  Effect.map(Metric.snapshot, (all) =>
    all.filter((m) => m.id === id && (key === undefined || m.attributes?.["breaker"] === key))
  )

/** Starts collecting `n` changes now (the subscription is in place when this returns). */
const collect = (breakers: CircuitBreaker.Service, n: number) =>
  Effect.forkChild(Stream.runCollect(Stream.take(breakers.changes, n)), { startImmediately: true })

const millisOf = (d: Duration.Duration | undefined) => (d === undefined ? undefined : Duration.toMillis(d))

describe("CircuitBreaker (memory)", () => {
  it.effect("opens after failMax consecutive failures; a success in between restarts the count", () =>
    withBreakers({ failMax: 3, resetTimeout: "10 seconds" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("failmax")
        yield* repeat(breakers, key, overloaded, 2)
        yield* breakers.execute(key, ok)
        yield* repeat(breakers, key, overloaded, 2)
        assert.strictEqual(yield* breakers.state(key), "closed")
        const last = yield* Effect.flip(breakers.execute(key, overloaded))
        assert.strictEqual(last._tag, "ModelError", "the tripping call keeps its own error")
        assert.strictEqual(yield* breakers.state(key), "open")
        const error = yield* expectRejected(breakers, key, "open")
        assert.strictEqual(millisOf(error.retryAfter), 10_000)
        yield* TestClock.adjust("4 seconds")
        assert.strictEqual(millisOf((yield* expectRejected(breakers, key, "open")).retryAfter), 6_000)
        assert.strictEqual(yield* rejections(key), 2)
        assert.strictEqual(yield* transitions(key, "closed", "open"), 1)
      })
    )
  )

  it.effect("rolling: the last `size` calls, below minimumCalls never opens; the rate opens it", () =>
    withBreakers({ rolling: { size: 10, minimumCalls: 10, failureRate: 0.5 } }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("rolling")
        // 9 calls, all failures: 100%, but below the 10 calls needed.
        yield* repeat(breakers, key, overloaded, 9)
        assert.strictEqual(yield* breakers.state(key), "closed")
        // failMax is off with rolling alone: 9 consecutive failures did not trip it either.
        // The 10th call, a success, makes 9 failures in 10 calls: a success can trip a rate.
        yield* breakers.execute(key, ok)
        assert.strictEqual(yield* breakers.state(key), "open")

        const sliding = uniqueKey("sliding")
        // size 4 (minimumCalls defaults to size), 50%: F S S S -> 25%; S drops the F -> 0%; F F -> 50%.
        const small = yield* CircuitBreaker.makeMemory({ rolling: { size: 4, failureRate: 0.5 } })
        yield* run(small, sliding, overloaded)
        yield* repeat(small, sliding, ok, 3)
        assert.strictEqual(yield* small.state(sliding), "closed")
        yield* run(small, sliding, ok)
        yield* run(small, sliding, overloaded)
        assert.strictEqual(yield* small.state(sliding), "closed")
        yield* run(small, sliding, overloaded)
        assert.strictEqual(yield* small.state(sliding), "open")
      })
    )
  )

  it.effect("open -> half-open on the clock with no traffic: state, gauge and changes", () =>
    withBreakers({ failMax: 1, resetTimeout: "30 seconds" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("clock")
        const changes = yield* collect(breakers, 4)
        yield* run(breakers, key, overloaded)
        assert.strictEqual(yield* gauge(key), 1)
        yield* TestClock.adjust("29 seconds")
        assert.strictEqual(yield* breakers.state(key), "open")
        assert.strictEqual(yield* gauge(key), 1)
        yield* TestClock.adjust("1 second")
        assert.strictEqual(yield* breakers.state(key), "half-open")
        assert.strictEqual(yield* gauge(key), 2)
        yield* breakers.isolate(key)
        assert.strictEqual(yield* gauge(key), 3)
        yield* breakers.reset(key)
        assert.strictEqual(yield* gauge(key), 0)
        const seen = yield* Fiber.join(changes)
        assert.deepStrictEqual(
          seen.map((c) => [c.key, c.from, c.to, c.at]),
          [
            [key, "closed", "open", 0],
            [key, "open", "half-open", 30_000],
            [key, "half-open", "isolated", 30_000],
            [key, "isolated", "closed", 30_000]
          ]
        )
        assert.strictEqual(yield* transitions(key, "open", "half-open"), 1)
      })
    )
  )

  it.effect("half-open admits exactly one probe and rejects the others at once; its success closes", () =>
    withBreakers({ failMax: 1, resetTimeout: "5 seconds" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("probe")
        yield* run(breakers, key, overloaded)
        yield* TestClock.adjust("5 seconds")
        const gate = yield* Deferred.make<void>()
        const probe = yield* Effect.forkChild(breakers.execute(key, Effect.as(Deferred.await(gate), "probed")), {
          startImmediately: true
        })
        const rejected = yield* expectRejected(breakers, key, "half-open")
        assert.isUndefined(rejected.retryAfter)
        yield* expectRejected(breakers, key, "half-open")
        yield* Deferred.succeed(gate, undefined)
        assert.strictEqual(yield* Fiber.join(probe), "probed")
        assert.strictEqual(yield* breakers.state(key), "closed")
        assert.strictEqual(yield* breakers.execute(key, ok), "ok")
      })
    )
  )

  it.effect("a failed probe reopens and restarts the timer; the open time grows, capped, per opening", () =>
    withBreakers(
      { failMax: 1, resetTimeout: "10 seconds", resetTimeoutMax: "35 seconds", resetTimeoutMultiplier: 2 },
      (breakers) =>
        Effect.gen(function* () {
          const key = uniqueKey("growth")
          const openFor = Effect.map(expectRejected(breakers, key, "open"), (e) => millisOf(e.retryAfter))
          yield* run(breakers, key, overloaded)
          assert.strictEqual(yield* openFor, 10_000)
          yield* TestClock.adjust("10 seconds")
          assert.strictEqual(yield* breakers.state(key), "half-open")
          yield* run(breakers, key, overloaded) // the probe fails
          assert.strictEqual(yield* breakers.state(key), "open")
          assert.strictEqual(yield* openFor, 20_000)
          yield* TestClock.adjust("19 seconds")
          assert.strictEqual(yield* breakers.state(key), "open")
          yield* TestClock.adjust("1 second")
          assert.strictEqual(yield* breakers.state(key), "half-open")
          yield* run(breakers, key, overloaded)
          assert.strictEqual(yield* openFor, 35_000, "capped at resetTimeoutMax")
          yield* TestClock.adjust("35 seconds")
          yield* breakers.execute(key, ok)
          assert.strictEqual(yield* breakers.state(key), "closed")
          // Tripped again before it stayed closed as long as it was last open: still long.
          yield* run(breakers, key, overloaded)
          assert.strictEqual(yield* openFor, 35_000)
          yield* TestClock.adjust("35 seconds")
          yield* breakers.execute(key, ok)
          // Closed for as long as it was last open: the growth starts again.
          yield* TestClock.adjust("35 seconds")
          yield* run(breakers, key, overloaded)
          assert.strictEqual(yield* openFor, 10_000)
        })
    )
  )

  it.effect("after the open time the next call is the probe, and its success closes the circuit", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 second" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("lazy")
        yield* run(breakers, key, overloaded)
        // Jump past the open time (not past the idle time: a key idle that long is forgotten, closed).
        yield* TestClock.setTime((yield* Clock.currentTimeMillis) + 5_000)
        const scope = yield* Scope.make()
        const permit = yield* breakers.admit(key).pipe(Scope.provide(scope))
        assert.isTrue(permit.probe)
        yield* permit.record(Exit.succeed("ok"))
        yield* Scope.close(scope, Exit.void)
        assert.strictEqual(yield* breakers.state(key), "closed")
      })
    )
  )

  it.effect("publishes every transition in order, with the clock's time", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 second" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("stream")
        const changes = yield* collect(breakers, 7)
        yield* run(breakers, key, overloaded)
        yield* TestClock.adjust("1 second")
        yield* run(breakers, key, overloaded)
        yield* TestClock.adjust("1 second")
        yield* breakers.execute(key, ok)
        yield* breakers.isolate(key)
        yield* breakers.reset(key)
        const seen = yield* Fiber.join(changes)
        assert.deepStrictEqual(
          seen.map((c) => [c.from, c.to, c.at]),
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
      })
    )
  )

  it.effect("concurrent isolate and reset reach the stream as a chain (each from is the previous to)", () =>
    withBreakers({ failMax: 1 }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("order")
        const changes = yield* collect(breakers, 200)
        yield* Effect.forEach(
          Array.from({ length: 200 }),
          (_, i) => (i % 2 === 0 ? breakers.isolate(key) : breakers.reset(key)),
          { concurrency: "unbounded", discard: true }
        )
        const seen = yield* Fiber.join(changes)
        assert.strictEqual(seen.length, 200)
        for (let i = 1; i < seen.length; i++) assert.strictEqual(seen[i]!.from, seen[i - 1]!.to)
      })
    )
  )

  it.effect("isolate refuses every call until reset; it cancels a pending half-open timer", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 second" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("isolate")
        yield* breakers.isolate(key)
        yield* expectRejected(breakers, key, "isolated")
        yield* TestClock.adjust("1 hour")
        yield* expectRejected(breakers, key, "isolated")
        assert.strictEqual(yield* breakers.state(key), "isolated")
        yield* breakers.reset(key)
        assert.strictEqual(yield* breakers.execute(key, ok), "ok")
        yield* run(breakers, key, overloaded)
        yield* breakers.isolate(key)
        yield* TestClock.adjust("2 seconds")
        assert.strictEqual(yield* breakers.state(key), "isolated")
        yield* expectRejected(breakers, key, "isolated")
      })
    )
  )

  it.effect("reset closes an open circuit at once, and outcomes of calls admitted before it no longer count", () =>
    withBreakers({ failMax: 2, resetTimeout: "1 minute" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("reset")
        const gate = yield* Deferred.make<void>()
        const slow = yield* Effect.forkChild(breakers.execute(key, Effect.andThen(Deferred.await(gate), overloaded)), {
          startImmediately: true
        })
        yield* repeat(breakers, key, overloaded, 2)
        yield* expectRejected(breakers, key, "open")
        yield* breakers.reset(key)
        assert.strictEqual(yield* breakers.state(key), "closed")
        yield* run(breakers, key, overloaded)
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.await(slow)
        // One failure since the reset: the slow call's failure (admitted before it) did not count.
        assert.strictEqual(yield* breakers.state(key), "closed")
        yield* run(breakers, key, overloaded)
        assert.strictEqual(yield* breakers.state(key), "open")
      })
    )
  )

  it.effect("which outcomes count: caller's faults, interruptions and other breakers' refusals do not", () =>
    withBreakers({ failMax: 2 }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("filter")
        const notCounted: ReadonlyArray<Effect.Effect<never, AiError>> = [
          Effect.fail(modelError("InvalidRequest", "bad")),
          Effect.fail(modelError("ContentFilter", "no")),
          Effect.fail(modelError("TooLarge", "big")),
          Effect.fail(modelError("Unauthorized", "key")),
          Effect.fail(new CircuitOpenError({ breaker: "other", state: "open" })),
          Effect.fail(new ShuttingDownError({ message: "closing" })),
          // a stream its provider's shutdown cut after text (the local provider's)
          Effect.fail(new StreamInterruptedError({ partialText: "Hel", reason: "ShuttingDown" })),
          // a stream whose resumption another breaker refused (the executor wraps the refusal after text)
          Effect.fail(
            new StreamInterruptedError({
              partialText: "Hel",
              reason: "CircuitOpen",
              cause: new CircuitOpenError({ breaker: "other", state: "open" })
            })
          ),
          Effect.interrupt
        ]
        for (const effect of notCounted) {
          yield* run(breakers, key, overloaded)
          yield* repeat(breakers, key, effect, 3)
          if ((yield* breakers.state(key)) !== "closed") assert.fail(`${key} opened`)
          yield* breakers.execute(key, ok)
        }
        const counted: ReadonlyArray<Effect.Effect<never, AiError>> = [
          Effect.fail(new TimeoutError({ limit: "request", timeout: Duration.seconds(1) })),
          Effect.fail(modelError("Unknown", "?")),
          Effect.fail(new StreamInterruptedError({ partialText: "Hel", reason: "Transport" })),
          Effect.fail(modelError("RateLimited", "slow down")),
          Effect.die("boom")
        ]
        for (const effect of counted) {
          const one = uniqueKey("counted")
          yield* repeat(breakers, one, effect, 2)
          assert.strictEqual(yield* breakers.state(one), "open", String(effect))
        }
      })
    )
  )

  it.effect("a failure that does not count is an answer (restarts the count); an ignored one is nothing", () =>
    withBreakers({ failMax: 2 }, (breakers) =>
      Effect.gen(function* () {
        const answered = uniqueKey("answered")
        yield* run(breakers, answered, overloaded)
        yield* run(breakers, answered, Effect.fail(modelError("Unauthorized", "key")))
        yield* run(breakers, answered, overloaded)
        assert.strictEqual(yield* breakers.state(answered), "closed")

        const ignoredOutcomes: ReadonlyArray<Effect.Effect<never, AiError>> = [
          Effect.interrupt,
          Effect.fail(new ShuttingDownError({ message: "closing" })),
          Effect.fail(
            new FallbackExhaustedError({
              attempts: [{ provider: "other", error: new CircuitOpenError({ breaker: "other", state: "open" }) }]
            })
          )
        ]
        for (const ignored of ignoredOutcomes) {
          const key = uniqueKey("ignored")
          yield* run(breakers, key, overloaded)
          yield* run(breakers, key, ignored)
          yield* run(breakers, key, overloaded)
          assert.strictEqual(yield* breakers.state(key), "open", String(ignored))
        }

        const exhausted = uniqueKey("exhausted")
        const lastOverloaded = new FallbackExhaustedError({
          attempts: [{ provider: "p", error: modelError("Overloaded", "busy") }]
        })
        yield* repeat(breakers, exhausted, Effect.fail(lastOverloaded), 2)
        assert.strictEqual(yield* breakers.state(exhausted), "open")
      })
    )
  )

  it.effect("a custom classifier decides; one that throws counts the call as a failure and frees the probe", () =>
    withBreakers(
      {
        failMax: 1,
        resetTimeout: "1 second",
        isFailure: (error) => {
          if (error._tag === "ModelError" && error.reason === "Decode") throw new Error("classifier bug")
          return error._tag === "ModelError" && error.reason === "InvalidRequest"
        }
      },
      (breakers) =>
        Effect.gen(function* () {
          const key = uniqueKey("custom")
          yield* repeat(breakers, key, overloaded, 3)
          assert.strictEqual(yield* breakers.state(key), "closed")
          yield* run(breakers, key, Effect.fail(modelError("InvalidRequest", "counts here")))
          assert.strictEqual(yield* breakers.state(key), "open")

          const throwing = uniqueKey("throwing")
          const decode = modelError("Decode", "garbled")
          const exit = yield* run(breakers, throwing, Effect.fail(decode))
          assert.deepStrictEqual(exit, Exit.fail(decode), "the caller gets its own error, not a defect")
          assert.strictEqual(yield* breakers.state(throwing), "open")
          yield* TestClock.adjust("1 second")
          // The probe's classifier throws too: the probe counts as failed, the circuit reopens...
          const again = yield* run(breakers, throwing, Effect.fail(decode))
          assert.isTrue(Exit.isFailure(again) && !Cause.hasDies(again.cause))
          assert.strictEqual(yield* breakers.state(throwing), "open")
          // ...and the probe slot is free: after the open time the next call is the probe.
          yield* TestClock.adjust("1 second")
          assert.strictEqual(yield* breakers.execute(throwing, ok), "ok")
          assert.strictEqual(yield* breakers.state(throwing), "closed")
        })
    )
  )

  it.effect("a late failure of a call admitted before the trip changes nothing", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 second" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("late")
        const gate = yield* Deferred.make<void>()
        const slow = yield* Effect.forkChild(breakers.execute(key, Effect.andThen(Deferred.await(gate), overloaded)), {
          startImmediately: true
        })
        yield* run(breakers, key, overloaded)
        yield* TestClock.adjust("1 second")
        assert.strictEqual(yield* breakers.state(key), "half-open")
        yield* Deferred.succeed(gate, undefined)
        assert.isTrue(Exit.isFailure(yield* Fiber.await(slow)))
        assert.strictEqual(yield* breakers.state(key), "half-open")
        yield* breakers.execute(key, ok)
        assert.strictEqual(yield* breakers.state(key), "closed")
      })
    )
  )

  it.effect("an interrupted probe frees the slot: the next call is the probe", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 second" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("interrupted")
        yield* run(breakers, key, overloaded)
        yield* TestClock.adjust("1 second")
        const probe = yield* Effect.forkChild(breakers.execute(key, Effect.never), { startImmediately: true })
        yield* expectRejected(breakers, key, "half-open")
        yield* Fiber.interrupt(probe)
        assert.strictEqual(yield* breakers.execute(key, ok), "ok")
        assert.strictEqual(yield* breakers.state(key), "closed")
      })
    )
  )
})

describe("CircuitBreaker.admit (permits, streams)", () => {
  it.effect("exactly one record counts; closing the scope without one is ignored and frees the probe", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 second" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("permit")
        yield* Effect.scoped(
          Effect.gen(function* () {
            const permit = yield* breakers.admit(key)
            assert.isFalse(permit.probe)
            yield* permit.record(Exit.fail(modelError("Overloaded", "busy")))
            yield* permit.record(Exit.succeed("late")) // ignored: one record per permit
          })
        )
        assert.strictEqual(yield* breakers.state(key), "open")
        yield* TestClock.adjust("1 second")
        // A probe whose scope closes without a record: ignored, the slot is free again.
        yield* Effect.scoped(
          Effect.gen(function* () {
            const permit = yield* breakers.admit(key)
            assert.isTrue(permit.probe)
            const refused = yield* Effect.flip(Effect.scoped(breakers.admit(key)))
            assert.strictEqual(refused.state, "half-open")
          })
        )
        assert.strictEqual(yield* breakers.state(key), "half-open")
        const next = yield* Effect.scoped(
          Effect.gen(function* () {
            const permit = yield* breakers.admit(key)
            yield* permit.record(Exit.succeed("ok"))
            return permit.probe
          })
        )
        assert.isTrue(next)
        assert.strictEqual(yield* breakers.state(key), "closed")
      })
    )
  )

  it.effect("a provider that keeps dropping streams after the first chunk trips its breaker (item 5)", () =>
    withBreakers({ failMax: 3, resetTimeout: "30 seconds" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("drops")
        const dropping = Stream.make("Hel").pipe(
          Stream.concat(
            Stream.fail(
              new StreamInterruptedError({ partialText: "Hel", reason: "Unknown", detail: "connection reset" })
            )
          )
        )
        const guarded = Stream.unwrap(
          Effect.map(breakers.admit(key), (permit) =>
            dropping.pipe(Stream.onExit((exit) => permit.record(exit as Exit.Exit<unknown, AiError>)))
          )
        )
        for (let i = 0; i < 3; i++) {
          const result = yield* Effect.result(Stream.runCollect(guarded))
          assert.isTrue(Result.isFailure(result))
        }
        assert.strictEqual(yield* breakers.state(key), "open")
        const refused = yield* Effect.flip(Stream.runCollect(guarded))
        assert.strictEqual(refused._tag, "CircuitOpenError")
      })
    )
  )
})

describe("CircuitBreaker registry: memory and series (item 17)", () => {
  it.effect('10,000 keys: the first 100 have series, the others count in breaker="(other)"; evicted when idle', () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const breakers = yield* CircuitBreaker.makeMemory({
        failMax: 1,
        resetTimeout: "1 minute",
        idleTimeToLive: "10 minutes",
        maxKeys: 20_000
      }).pipe(Scope.provide(scope))
      const prefix = uniqueKey("many")
      yield* Effect.forEach(Array.from({ length: 10_000 }), (_, i) => breakers.execute(`${prefix}-${i}`, ok), {
        discard: true
      })
      yield* run(breakers, `${prefix}-7`, overloaded)
      yield* run(breakers, `${prefix}-5000`, overloaded)
      yield* run(breakers, `${prefix}-6000`, overloaded)
      yield* expectRejected(breakers, `${prefix}-5000`, "open")
      assert.strictEqual(yield* breakers.size, 10_000)
      assert.strictEqual((yield* series("orchestra_breaker_state")).length, 100)
      assert.strictEqual(yield* gauge(`${prefix}-7`), 1)
      assert.strictEqual(yield* gauge(`${prefix}-8`), 0)
      assert.strictEqual(yield* transitions(`${prefix}-7`, "closed", "open"), 1)
      assert.strictEqual(yield* transitions("(other)", "closed", "open"), 2)
      assert.strictEqual(yield* rejections("(other)"), 1)
      assert.deepStrictEqual(yield* series("orchestra_breaker_state", `${prefix}-5000`), [])
      assert.deepStrictEqual(yield* series("orchestra_breaker_state", "(other)"), [], "no gauge of mixed keys")
      assert.isAtMost((yield* Metric.snapshot).length, 110)
      // Idle keys go with their series; an evicted key's place goes to the next new key.
      yield* TestClock.adjust("10 minutes")
      assert.deepStrictEqual(
        (yield* series("orchestra_breaker_state")).map((m) => m.attributes?.["breaker"]),
        [`${prefix}-7`]
      )
      yield* breakers.execute(`${prefix}-new`, ok)
      assert.strictEqual(yield* gauge(`${prefix}-new`), 0)
      assert.strictEqual((yield* series("orchestra_breaker_state")).length, 2)
      yield* Scope.close(scope, Exit.void)
      assert.deepStrictEqual(yield* Metric.snapshot, [], "closing the layer removes every series")
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
  )

  it.effect('a key named "(other)" has no series of its own: it counts with the keys past the bound', () =>
    withBreakers({ failMax: 1, resetTimeout: "1 minute" }, (breakers) =>
      Effect.gen(function* () {
        yield* breakers.execute("(other)", ok)
        yield* run(breakers, "(other)", overloaded)
        assert.strictEqual(yield* breakers.state("(other)"), "open")
        assert.deepStrictEqual(yield* series("orchestra_breaker_state", "(other)"), [])
        assert.strictEqual(yield* transitions("(other)", "closed", "open"), 1)
        // It took no place: 100 more keys all have series.
        const k = uniqueKey("after-other")
        yield* Effect.forEach(Array.from({ length: 100 }), (_, i) => breakers.execute(`${k}-${i}`, ok), {
          discard: true
        })
        assert.strictEqual((yield* series("orchestra_breaker_state")).length, 100)
      })
    )
  )

  it.effect('an empty key is a circuit of its own, its series counted under (other): breaker="" is no label', () =>
    withBreakers({ failMax: 1, resetTimeout: "1 minute" }, (breakers) =>
      Effect.gen(function* () {
        // Prometheus reads an empty label value as no label: the gauge of the key "" was a series
        // without its breaker, and added up with any other such series in a `sum by (breaker)`.
        yield* run(breakers, "", overloaded)
        yield* expectRejected(breakers, "", "open")
        assert.strictEqual(yield* breakers.state(""), "open")
        assert.deepStrictEqual(yield* series("orchestra_breaker_state", ""), [])
        assert.deepStrictEqual(yield* series("orchestra_breaker_transitions_total", ""), [])
        assert.deepStrictEqual(yield* series("orchestra_breaker_rejections_total", ""), [])
        assert.strictEqual(yield* transitions("(other)", "closed", "open"), 1)
        assert.strictEqual(yield* rejections("(other)"), 1)
      })
    )
  )

  it.effect("a very long key is a circuit of its own, its series counted under (other)", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 minute" }, (breakers) =>
      Effect.gen(function* () {
        // A key of a megabyte was the label of its gauge and counters: every scrape carried it whole.
        const long = `${uniqueKey("long")}-${"x".repeat(1_000_000)}`
        yield* run(breakers, long, overloaded)
        yield* expectRejected(breakers, long, "open")
        assert.strictEqual(yield* breakers.state(`${long}y`), "closed")
        const labels = (yield* Metric.snapshot).map((m) => String(m.attributes?.["breaker"] ?? ""))
        assert.isTrue(
          labels.every((label) => label.length <= maxOwnLabelChars),
          "no label past the bound"
        )
        assert.strictEqual(yield* transitions("(other)", "closed", "open"), 1)
        assert.strictEqual(yield* rejections("(other)"), 1)
      })
    )
  )

  it.effect("maxKeys bounds the registry: closed keys make room, open and isolated ones stay", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 minute", maxKeys: 3 }, (breakers) =>
      Effect.gen(function* () {
        const k = uniqueKey("bounded")
        yield* run(breakers, `${k}-open`, overloaded)
        yield* breakers.isolate(`${k}-isolated`)
        yield* breakers.execute(`${k}-a`, ok)
        yield* breakers.execute(`${k}-b`, ok)
        yield* breakers.execute(`${k}-c`, ok)
        assert.strictEqual(yield* breakers.size, 3)
        assert.strictEqual(yield* breakers.state(`${k}-open`), "open")
        assert.strictEqual(yield* breakers.state(`${k}-isolated`), "isolated")
        yield* expectRejected(breakers, `${k}-isolated`, "isolated")
        yield* expectRejected(breakers, `${k}-open`, "open")
        assert.deepStrictEqual(
          (yield* series("orchestra_breaker_state")).map((m) => m.attributes?.["breaker"]).sort(),
          [`${k}-c`, `${k}-isolated`, `${k}-open`]
        )
      })
    )
  )

  it.effect("a key maxKeys evicted with a failure streak: a success still restarts the count", () =>
    withBreakers({ failMax: 3, maxKeys: 2 }, (breakers) =>
      Effect.gen(function* () {
        const k = uniqueKey("evicted-streak")
        yield* repeat(breakers, k, overloaded, 2)
        // Other keys do not push it out of the registry while the store keeps its streak of 2.
        for (const other of ["x", "y", "z"]) yield* breakers.execute(`${k}-${other}`, ok)
        yield* breakers.execute(k, ok)
        yield* run(breakers, k, overloaded)
        assert.strictEqual(yield* breakers.state(k), "closed", "fail, fail, success, fail: no three in a row")
        yield* repeat(breakers, k, overloaded, 2)
        assert.strictEqual(yield* breakers.state(k), "open")
      })
    )
  )

  it.effect("resets of keys never seen create nothing maxKeys cannot evict: the registry stays bounded", () =>
    withBreakers({ failMax: 2, maxKeys: 5 }, (breakers) =>
      Effect.gen(function* () {
        const k = uniqueKey("reset-unknown")
        for (let i = 0; i < 200; i++) yield* breakers.reset(`${k}-${i}`)
        assert.isAtMost(yield* breakers.size, 5)
        // Calls still make room, and a key reset unseen works as any.
        for (let i = 0; i < 20; i++) yield* breakers.execute(`${k}-call-${i}`, ok)
        assert.isAtMost(yield* breakers.size, 5)
        assert.strictEqual(yield* breakers.state(`${k}-3`), "closed")
        yield* repeat(breakers, `${k}-3`, overloaded, 2)
        assert.strictEqual(yield* breakers.state(`${k}-3`), "open")
        yield* breakers.reset(`${k}-3`)
        assert.strictEqual(yield* breakers.state(`${k}-3`), "closed")
        assert.strictEqual(yield* breakers.execute(`${k}-3`, ok), "ok")
      })
    )
  )

  // A rolling window's reset made an entry for a key it did not hold, at a fresh store key that
  // maxKeys never evicts: each reset of an unknown key held one for an hour, past maxKeys.
  it.effect(
    "rolling: resets of keys never seen hold nothing; a key maxKeys evicted with failures is still cleared",
    () =>
      withBreakers({ rolling: { size: 4, failureRate: 0.5 }, maxKeys: 5 }, (breakers) =>
        Effect.gen(function* () {
          const k = uniqueKey("rolling-reset")
          for (let i = 0; i < 200; i++) yield* breakers.reset(`${k}-${i}`)
          assert.strictEqual(yield* breakers.size, 0, "nothing held for keys never seen")
          // Two failures in the window of a key, which maxKeys then evicts: its reset must still clear them.
          yield* repeat(breakers, `${k}-w`, overloaded, 2)
          for (let i = 0; i < 10; i++) yield* breakers.execute(`${k}-call-${i}`, ok)
          yield* breakers.reset(`${k}-w`)
          yield* repeat(breakers, `${k}-w`, ok, 2)
          assert.strictEqual(yield* breakers.state(`${k}-w`), "closed", "F F S S before the reset would be 50%: open")
          yield* repeat(breakers, `${k}-w`, overloaded, 2)
          assert.strictEqual(yield* breakers.state(`${k}-w`), "open")
        })
      )
  )

  it.effect("keys that only ever succeed never reach the store: memory is maxKeys, not every key seen", () =>
    Effect.gen(function* () {
      const context = yield* Layer.build(Store.layerStoreMemory({ idleTimeToLive: "1 hour" }))
      const store = Context.get(context, Store.CircuitBreakerStore)
      // The store holds every key it admits until idle an hour: 10,000 users an hour were 10,000
      // entries there, whatever maxKeys said.
      const admitted = new Set<string>()
      const counted: typeof store = {
        ...store,
        admit: (key) =>
          Effect.andThen(
            Effect.sync(() => admitted.add(key)),
            store.admit(key)
          )
      }
      const config = Result.getOrThrow(check({ failMax: 2, maxKeys: 100 }))
      const breakers = yield* BreakerCore.make(config, BreakerCore.memoryBackend(counted))
      const k = uniqueKey("users")
      for (let i = 0; i < 10_000; i++) yield* breakers.execute(`${k}-${i}`, ok)
      assert.strictEqual(yield* breakers.size, 100)
      assert.strictEqual(admitted.size, 0)
      // A failure still reaches it, and a success after it restarts the count.
      yield* run(breakers, `${k}-7`, overloaded)
      yield* breakers.execute(`${k}-7`, ok)
      yield* run(breakers, `${k}-7`, overloaded)
      assert.strictEqual(yield* breakers.state(`${k}-7`), "closed")
      yield* run(breakers, `${k}-7`, overloaded)
      assert.strictEqual(yield* breakers.state(`${k}-7`), "open")
    }).pipe(Effect.scoped, Effect.provideService(Metric.MetricRegistry, new Map()))
  )

  it.effect("a shared store's state read answered after the view moved on does not move it back", () =>
    Effect.gen(function* () {
      const context = yield* Layer.build(Store.layerStoreMemory({ idleTimeToLive: "1 hour" }))
      const store = Context.get(context, Store.CircuitBreakerStore)
      // A shared store (Redis) answers a read a round trip later: this one read the key open
      // just before its open end and answers after the view's timer moved it to half-open.
      let held: Deferred.Deferred<void> | undefined
      const backend: BreakerCore.Backend = {
        ...BreakerCore.memoryBackend(store),
        shared: true,
        state: (key) =>
          Effect.flatMap(store.state(key), (state) =>
            held === undefined ? Effect.succeed(state) : Effect.as(Deferred.await(held), state)
          )
      }
      const config = Result.getOrThrow(check({ failMax: 1, resetTimeout: "1 second" }))
      const breakers = yield* BreakerCore.make(config, backend)
      const key = uniqueKey("stale-read")
      const changes = yield* collect(breakers, 2)
      yield* run(breakers, key, overloaded)
      yield* TestClock.adjust("900 millis")
      held = yield* Deferred.make<void>()
      const read = yield* Effect.forkChild(breakers.state(key), { startImmediately: true })
      yield* TestClock.adjust("200 millis")
      yield* Deferred.succeed(held, undefined)
      held = undefined
      assert.strictEqual(yield* Fiber.join(read), "half-open")
      assert.strictEqual(yield* breakers.state(key), "half-open")
      assert.deepStrictEqual(
        (yield* Fiber.join(changes)).map((c) => `${c.from}>${c.to}`),
        ["closed>open", "open>half-open"]
      )
      const more = yield* collect(breakers, 1)
      yield* TestClock.adjust("1 second")
      yield* run(breakers, key, ok)
      assert.deepStrictEqual(
        (yield* Fiber.join(more)).map((c) => `${c.from}>${c.to}`),
        ["half-open>closed"],
        "no flicker back to open, and the probe closes it"
      )
    }).pipe(Effect.scoped, Effect.provideService(Metric.MetricRegistry, new Map()))
  )

  it.effect("the layer's timers stop with it: no state change after close", () =>
    Effect.gen(function* () {
      const key = uniqueKey("close")
      const seen = yield* Effect.scoped(
        Effect.gen(function* () {
          const breakers = yield* CircuitBreaker.makeMemory({ failMax: 1, resetTimeout: "1 second" })
          const changes = yield* collect(breakers, 10)
          yield* run(breakers, key, overloaded)
          return changes
        })
      )
      yield* TestClock.adjust("1 minute")
      const all = yield* Fiber.join(seen)
      assert.deepStrictEqual(
        all.map((c) => c.to),
        ["open"],
        "the stream ends when the layer closes"
      )
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
  )
})

describe("CircuitBreaker options (item 11)", () => {
  const refused = (options: unknown, path: string, includes?: string) =>
    Effect.gen(function* () {
      const error: OptionError = yield* Effect.flip(
        Layer.build(CircuitBreaker.layerMemory(options as CircuitBreaker.Options))
      )
      assert.strictEqual(error._tag, "OptionError")
      assert.strictEqual(error.path, path, error.message)
      if (includes !== undefined) assert.include(error.message, includes)
    }).pipe(Effect.scoped)

  it.effect("every wrong number is an OptionError naming the field when the layer is built", () =>
    Effect.gen(function* () {
      yield* refused({ failMax: 0 }, "failMax")
      yield* refused({ failMax: Number.NaN }, "failMax")
      yield* refused({ failMax: 1.5 }, "failMax")
      yield* refused({ halfOpenMax: 0 }, "halfOpenMax")
      yield* refused({ resetTimeout: Number.NaN }, "resetTimeout")
      yield* refused({ resetTimeout: "-30 seconds" }, "resetTimeout", "negative")
      yield* refused({ resetTimeout: 0 }, "resetTimeout")
      yield* refused({ resetTimeout: "soon" }, "resetTimeout")
      yield* refused({ resetTimeout: "10 seconds", resetTimeoutMax: "5 seconds" }, "resetTimeoutMax")
      yield* refused({ resetTimeoutMax: "1 minute", resetTimeoutMultiplier: 0.5 }, "resetTimeoutMultiplier")
      yield* refused({ rolling: { size: 10, failureRate: 2 } }, "rolling.failureRate")
      yield* refused({ rolling: { size: 10, failureRate: 0 } }, "rolling.failureRate")
      yield* refused({ rolling: { size: 0, failureRate: 0.5 } }, "rolling.size")
      yield* refused({ rolling: { size: 10, minimumCalls: 11, failureRate: 0.5 } }, "rolling.minimumCalls")
      yield* refused({ idleTimeToLive: -1 }, "idleTimeToLive")
      yield* refused({ maxKeys: 0 }, "maxKeys")
    })
  )

  it.effect(
    "a name past 256 characters is refused, naming name: it labels every series of the layer, written whole on each scrape",
    () =>
      Effect.gen(function* () {
        yield* refused({ name: "b".repeat(257) }, "name", "at most 256 characters")
        yield* refused({ name: "b".repeat(100_000) }, "name", "got 100,000")
        yield* Layer.build(CircuitBreaker.layerMemory({ name: "b".repeat(256) })).pipe(Effect.scoped)
      })
  )

  it.effect("a name holding a lone surrogate is refused: as the breakers label it would be another such name", () =>
    Effect.gen(function* () {
      yield* refused({ name: "b-\uD800" }, "name", "surrogate")
      yield* refused({ name: "b-\uDC00" }, "name", "surrogate")
    })
  )

  it.effect(
    "a name that is no string is shown bounded, as every other check shows a value: an array of a 100,000-character string went whole into the message, a BigInt threw",
    () =>
      Effect.gen(function* () {
        yield* refused({ name: ["n".repeat(100_000)] }, "name", "expected a non-empty string, got an array")
        yield* refused({ name: { secret: "s" } }, "name", "expected a non-empty string, got an object")
        yield* refused({ name: 10n }, "name", "expected a non-empty string, got a bigint")
        yield* refused({ name: "" }, "name", 'expected a non-empty string, got ""')
        yield* refused({ name: 3 }, "name", "expected a non-empty string, got 3")
      })
  )

  it.effect("an option whose getter throws is an OptionError naming it, never a defect out of the layer", () =>
    Effect.gen(function* () {
      const throwing = (field: string) =>
        Object.defineProperty({}, field, {
          enumerable: true,
          get: () => {
            throw new Error(`no ${field}`)
          }
        })
      yield* refused(throwing("failMax"), "failMax", "no failMax")
      yield* refused(throwing("resetTimeout"), "resetTimeout", "no resetTimeout")
      yield* refused({ rolling: throwing("size") }, "rolling.size", "no size")
      const redis = yield* Effect.flip(
        Layer.build(
          CircuitBreaker.layerRedis(throwing("prefix") as CircuitBreaker.RedisOptions).pipe(
            Layer.provide(Layer.succeed(PersistenceRedis.Redis, {} as PersistenceRedis.Redis["Service"]))
          )
        )
      )
      assert.strictEqual(redis._tag, "OptionError")
      assert.strictEqual((redis as OptionError).path, "prefix")
      // Options whose fields are getters of their class are read as before (own fields are not the only ones).
      class Settings {
        get failMax() {
          return 1
        }
        get rolling() {
          return undefined
        }
      }
      const breakers = yield* CircuitBreaker.makeMemory(new Settings())
      yield* run(breakers, "settings", overloaded)
      assert.strictEqual(yield* breakers.state("settings"), "open")
    }).pipe(Effect.scoped)
  )

  it.effect("null is refused like any other wrong value, never read as the default", () =>
    Effect.gen(function* () {
      for (const field of ["failMax", "halfOpenMax", "successThreshold", "maxKeys"]) {
        yield* refused({ [field]: null }, field, "expected an integer, got null")
      }
      yield* refused(
        { resetTimeoutMax: "1 minute", resetTimeoutMultiplier: null },
        "resetTimeoutMultiplier",
        "got null"
      )
      for (const field of ["resetTimeout", "idleTimeToLive"]) {
        yield* refused({ [field]: null }, field, 'expected a duration such as 1500 or "30 seconds", got null')
      }
      yield* refused(
        { rolling: { size: 10, minimumCalls: null, failureRate: 0.5 } },
        "rolling.minimumCalls",
        "got null"
      )
    })
  )

  it.effect("options the store cannot honour are refused, saying why", () =>
    Effect.gen(function* () {
      yield* refused({ halfOpenMax: 2 }, "halfOpenMax", "one probe")
      yield* refused({ successThreshold: 2 }, "successThreshold", "first success")
      yield* refused(
        { rolling: { window: "10 seconds", minimumCalls: 5, failureRate: 0.5 } },
        "rolling.window",
        "time-based"
      )
      yield* refused({ failMax: 3, rolling: { size: 10, failureRate: 0.5 } }, "failMax", "not both")
      yield* refused({ resetTimeoutMultiplier: 3 }, "resetTimeoutMultiplier", "resetTimeoutMax")
      yield* refused({ failmax: 3 }, "failmax", "unknown")
      yield* refused({ isFailure: "yes" }, "isFailure")
    })
  )

  it.effect(
    "a misspelt key names the option it is likely a typo of, and is quoted as every other check writes a key: it said a bare 'unknown option', the key raw",
    () =>
      Effect.gen(function* () {
        yield* refused({ failmax: 3 }, "failmax", "unknown option (did you mean failMax?)")
        yield* refused(
          { rolling: { size: 10, minimumCall: 2, failureRate: 0.5 } },
          "rolling.minimumCall",
          "unknown option (did you mean minimumCalls?)"
        )
        // A key with a line break forged a line of the log the message went to.
        yield* refused({ "fail\nMax": 3 }, '"fail\\nMax"', "unknown option")
      })
  )

  it.effect("durations in any form: milliseconds, text, a Duration", () =>
    Effect.gen(function* () {
      for (const resetTimeout of [2000, "2 seconds", Duration.seconds(2)] as const) {
        yield* withBreakers({ failMax: 1, resetTimeout }, (breakers) =>
          Effect.gen(function* () {
            const key = uniqueKey("forms")
            yield* run(breakers, key, overloaded)
            const error = yield* expectRejected(breakers, key, "open")
            assert.strictEqual(millisOf(error.retryAfter), 2000)
            yield* TestClock.adjust("2 seconds")
            assert.strictEqual(yield* breakers.execute(key, ok), "ok")
          })
        )
      }
    })
  )

  it.effect("two layers holding the same key: each named one keeps its own series; a wrong name is refused", () =>
    Effect.gen(function* () {
      const key = uniqueKey("two-layers")
      const a = yield* CircuitBreaker.makeMemory({ failMax: 1, name: "a" })
      const b = yield* CircuitBreaker.makeMemory({ failMax: 1, name: "b" })
      yield* run(a, key, overloaded)
      yield* run(b, key, ok)
      const of = (name: string) =>
        Effect.map(
          Metric.value(Metric.withAttributes(Metrics.breakerState, { breaker: key, breakers: name })),
          (s) => s.value
        )
      // Layer b's series replaced layer a's: the open circuit of a read closed.
      assert.strictEqual(yield* of("a"), 1)
      assert.strictEqual(yield* of("b"), 0)
      const opened = yield* Metric.value(
        Metric.withAttributes(Metrics.breakerTransitions, { breaker: key, breakers: "a", from: "closed", to: "open" })
      )
      assert.strictEqual(opened.count, 1)
      for (const name of ["", 3, null]) {
        const error = yield* Effect.flip(CircuitBreaker.makeMemory({ name } as unknown as CircuitBreaker.Options))
        assert.strictEqual(error.path, "name")
      }
    }).pipe(Effect.scoped, Effect.provideService(Metric.MetricRegistry, new Map()))
  )

  it.effect("the Breakers service from layerMemory is one shared registry", () =>
    Effect.gen(function* () {
      const key = uniqueKey("layer")
      const a = yield* CircuitBreaker.Breakers
      const b = yield* CircuitBreaker.Breakers
      yield* run(a, key, overloaded)
      const error = yield* Effect.flip(b.execute(key, ok))
      assert.instanceOf(error, CircuitOpenError)
      assert.instanceOf(modelError("Overloaded", "x"), ModelError)
    }).pipe(Effect.provide(CircuitBreaker.layerMemory({ failMax: 1 })))
  )
})

describe("CircuitBreaker fast path (memory store, consecutive policy)", () => {
  it.effect("a success completing after a concurrent failure still resets the streak, as the store counts", () =>
    withBreakers({ failMax: 2, resetTimeout: "1 second" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("order")
        const gate = yield* Deferred.make<void>()
        // admitted while the streak is 0, completes after the first failure
        const slow = yield* Effect.forkChild(breakers.execute(key, Effect.andThen(Deferred.await(gate), ok)), {
          startImmediately: true
        })
        yield* run(breakers, key, overloaded)
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(slow)
        yield* run(breakers, key, overloaded)
        assert.strictEqual(yield* breakers.state(key), "closed", "fail, success, fail: no two in a row")
        yield* run(breakers, key, overloaded)
        assert.strictEqual(yield* breakers.state(key), "open")
      })
    )
  )
})

describe("CircuitBreaker: a key the store has forgotten reads as closed", () => {
  it.effect("tripped, then idle past its open time + idleTimeToLive: state, gauge, changes and execute agree", () =>
    withBreakers({ failMax: 2, resetTimeout: "1 second", idleTimeToLive: "10 seconds" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("forgotten")
        const changes = yield* collect(breakers, 3)
        yield* repeat(breakers, key, overloaded, 2)
        assert.strictEqual(yield* breakers.state(key), "open")
        yield* TestClock.adjust("1 second")
        assert.strictEqual(yield* breakers.state(key), "half-open")
        // The store keeps an open key idleTimeToLive past its open time: still half-open just before.
        yield* TestClock.adjust("9999 millis")
        assert.strictEqual(yield* breakers.state(key), "half-open")
        assert.strictEqual(yield* gauge(key), 2)
        yield* TestClock.adjust("1 millis")
        assert.strictEqual(yield* breakers.state(key), "closed", "the store forgot the key: a fresh breaker")
        assert.strictEqual(yield* gauge(key), 0)
        const seen = yield* Fiber.join(changes)
        assert.deepStrictEqual(
          seen.map((c) => [c.from, c.to, c.at]),
          [
            ["closed", "open", 0],
            ["open", "half-open", 1000],
            ["half-open", "closed", 11_000]
          ]
        )
        // What execute does next agrees: not a probe, and a fresh count (one failure of failMax 2).
        const probe = yield* Effect.scoped(Effect.map(breakers.admit(key), (permit) => permit.probe))
        assert.isFalse(probe, "a forgotten key's next call is not a probe")
        yield* run(breakers, key, overloaded)
        assert.strictEqual(yield* breakers.state(key), "closed")
        yield* run(breakers, key, overloaded)
        assert.strictEqual(yield* breakers.state(key), "open")
      })
    )
  )

  it.effect("a probe ignored, then idle past idleTimeToLive: forgotten as well", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 second", idleTimeToLive: "10 seconds" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("forgotten-probe")
        yield* run(breakers, key, overloaded)
        yield* TestClock.adjust("5 seconds")
        // The probe gives up (interrupted): the slot is free, the key half-open, idle from now.
        const probe = yield* Effect.forkChild(breakers.execute(key, Effect.never), { startImmediately: true })
        yield* Fiber.interrupt(probe)
        assert.strictEqual(yield* breakers.state(key), "half-open")
        const changes = yield* collect(breakers, 1)
        yield* TestClock.adjust("9999 millis")
        assert.strictEqual(yield* breakers.state(key), "half-open")
        yield* TestClock.adjust("1 millis")
        assert.strictEqual(yield* breakers.state(key), "closed")
        assert.strictEqual(yield* gauge(key), 0)
        assert.deepStrictEqual(
          (yield* Fiber.join(changes)).map((c) => [c.from, c.to, c.at]),
          [["half-open", "closed", 15_000]]
        )
        const next = yield* Effect.scoped(Effect.map(breakers.admit(key), (permit) => permit.probe))
        assert.isFalse(next)
      })
    )
  )
})

describe("CircuitBreaker: a probe's record once started always reaches the store", () => {
  it.effect("a probe failing with a FallbackExhaustedError without steps: recorded as a failure, never stuck", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 second" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("empty-exhausted")
        yield* run(breakers, key, overloaded)
        yield* TestClock.adjust("1 second")
        const empty = new FallbackExhaustedError({ attempts: [] })
        // The caller gets its own error (no defect from the classification)...
        assert.deepStrictEqual(yield* run(breakers, key, Effect.fail(empty)), Exit.fail(empty))
        // ...and the probe counted as failed: reopened, then the next probe runs.
        assert.strictEqual(yield* breakers.state(key), "open")
        yield* TestClock.adjust("1 second")
        assert.strictEqual(yield* breakers.execute(key, ok), "ok")
        assert.strictEqual(yield* breakers.state(key), "closed")
        assert.isTrue(CircuitBreaker.defaultIsFailure(empty))
      })
    )
  )

  it.effect("a permit's record interrupted midway: the probe does not hold half-open for ever", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 second" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("record-interrupted")
        yield* run(breakers, key, overloaded)
        yield* TestClock.adjust("1 second")
        const scope = yield* Scope.make()
        const permit = yield* breakers.admit(key).pipe(Scope.provide(scope))
        assert.isTrue(permit.probe)
        // The consumer that records is interrupted while its record runs (it yields after each step).
        const recording = yield* Effect.forkChild(permit.record(Exit.succeed("ok")), { startImmediately: true }).pipe(
          Effect.provideService(Scheduler.MaxOpsBeforeYield, 1)
        )
        yield* Fiber.interrupt(recording)
        yield* Scope.close(scope, Exit.void)
        yield* TestClock.adjust("1 hour")
        // Whatever the record did, the probe is over: the next call runs (closed, or the probe).
        assert.strictEqual(yield* breakers.execute(key, ok), "ok")
        assert.strictEqual(yield* breakers.state(key), "closed")
      })
    )
  )
})

describe("CircuitBreaker: reset and isolate racing calls in flight", () => {
  it.effect("a call admitted before a reset that trips the old circuit later: the key stays closed, even idle", () =>
    withBreakers({ failMax: 2, resetTimeout: "1 minute", idleTimeToLive: "10 seconds" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("reset-late-trip")
        const gate = yield* Deferred.make<void>()
        const slow = yield* Effect.forkChild(breakers.execute(key, Effect.andThen(Deferred.await(gate), overloaded)), {
          startImmediately: true
        })
        yield* run(breakers, key, overloaded)
        yield* breakers.reset(key)
        // The slow call fails after the reset: the second failure in a row of the old circuit.
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.await(slow)
        assert.strictEqual(yield* breakers.state(key), "closed")
        // Idle long enough for this registry to let the key go, not for the old circuit to be forgotten.
        yield* TestClock.adjust("20 seconds")
        assert.strictEqual(yield* breakers.state(key), "closed")
        assert.strictEqual(yield* breakers.execute(key, ok), "ok", "the reset key must not come back open")
      })
    )
  )

  it.effect("a probe that fails while the key is isolated, then a reset: the key stays closed, even idle", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 minute", idleTimeToLive: "10 seconds" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("isolate-probe")
        yield* run(breakers, key, overloaded)
        yield* TestClock.adjust("1 minute")
        const gate = yield* Deferred.make<void>()
        const probe = yield* Effect.forkChild(breakers.execute(key, Effect.andThen(Deferred.await(gate), overloaded)), {
          startImmediately: true
        })
        yield* breakers.isolate(key)
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.await(probe)
        assert.strictEqual(yield* breakers.state(key), "isolated")
        yield* breakers.reset(key)
        yield* TestClock.adjust("20 seconds")
        assert.strictEqual(yield* breakers.state(key), "closed")
        assert.strictEqual(yield* breakers.execute(key, ok), "ok", "the reset key must not come back open")
      })
    )
  )

  it.effect("a probe in flight across a reset that then fails: the key stays closed, even idle", () =>
    withBreakers({ failMax: 1, resetTimeout: "1 minute", idleTimeToLive: "10 seconds" }, (breakers) =>
      Effect.gen(function* () {
        const key = uniqueKey("reset-probe")
        yield* run(breakers, key, overloaded)
        yield* TestClock.adjust("1 minute")
        const gate = yield* Deferred.make<void>()
        const probe = yield* Effect.forkChild(breakers.execute(key, Effect.andThen(Deferred.await(gate), overloaded)), {
          startImmediately: true
        })
        yield* expectRejected(breakers, key, "half-open")
        yield* breakers.reset(key)
        assert.strictEqual(yield* breakers.execute(key, ok), "ok")
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.await(probe)
        assert.strictEqual(yield* breakers.state(key), "closed")
        yield* TestClock.adjust("20 seconds")
        assert.strictEqual(yield* breakers.state(key), "closed")
        assert.strictEqual(yield* breakers.execute(key, ok), "ok", "the reset key must not come back open")
      })
    )
  )
})

describe("CircuitBreaker: a key that is no string (from JavaScript)", () => {
  it.effect("execute, admit, state, isolate and reset die with an InvalidRequest naming the key, not a TypeError", () =>
    withBreakers({ failMax: 1 }, (breakers) =>
      Effect.gen(function* () {
        for (const key of [undefined, 42, null, { name: "x" }] as ReadonlyArray<unknown> as ReadonlyArray<string>) {
          const ran = yield* Ref.make(false)
          const exits: ReadonlyArray<Exit.Exit<unknown, unknown>> = [
            yield* Effect.exit(breakers.execute(key, Ref.set(ran, true))),
            yield* Effect.exit(Effect.scoped(breakers.admit(key))),
            // Not "closed": a shared store would answer for the key it reads as a string ("42").
            yield* Effect.exit(breakers.state(key)),
            yield* Effect.exit(breakers.isolate(key)),
            yield* Effect.exit(breakers.reset(key))
          ]
          for (const exit of exits) {
            const reason = Exit.isFailure(exit) ? exit.cause.reasons[0] : undefined
            const defect = reason?._tag === "Die" ? reason.defect : undefined
            assert.instanceOf(defect, ModelError, String(key))
            assert.deepStrictEqual([defect.reason, defect.field], ["InvalidRequest", "key"])
            assert.include(defect.message, "expected a string")
          }
          assert.isFalse(yield* Ref.get(ran), "a call under no key must not run")
        }
        assert.strictEqual(yield* breakers.size, 0)
      })
    )
  )
})
