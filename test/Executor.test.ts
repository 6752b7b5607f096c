import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Duration, Effect, Either, Exit, Fiber, Layer, Option, Scope, TestClock } from "effect"
import * as Executor from "../src/Executor.js"
import * as Limiter from "../src/internal/limiter.js"
import { MockControl, Outcome } from "../src/Model/Mock.js"
import * as Mock from "../src/Model/Mock.js"
import * as Stats from "../src/Stats.js"

let counter = 0
const uniqueName = (base: string) => `${base}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const setup = (mock: Mock.Options, options?: Executor.Options) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(
      Layer.provideMerge(Executor.layerWithStats(options), Mock.layer({ name: uniqueName("mock"), ...mock })),
      scope
    )
    return {
      scope,
      ex: Context.get(context, Executor.Executor),
      stats: Context.get(context, Stats.Stats),
      control: Context.get(context, MockControl)
    }
  })

describe("Executor.execute", () => {
  it.effect("answers through the provider", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ respond: () => "hello" })
      const answer = yield* ex.execute({ prompt: "hi" })
      assert.strictEqual(answer.text, "hello")
      assert.strictEqual(answer.provider, control.name)
      assert.strictEqual(yield* control.calls, 1)
    })
  )

  it.effect("rejects a bad request with InvalidRequest naming the field, before any provider call", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({})
      const badTemperature = yield* Effect.flip(ex.execute({ prompt: "x", temperature: 5 }))
      assert.strictEqual(badTemperature._tag, "ModelError")
      if (badTemperature._tag !== "ModelError") return
      assert.strictEqual(badTemperature.reason, "InvalidRequest")
      assert.strictEqual(badTemperature.field, "temperature")
      const empty = yield* Effect.flip(ex.execute({}))
      assert.strictEqual(empty._tag === "ModelError" && empty.field, "prompt")
      const unknownField = yield* Effect.flip(ex.execute({ prompt: "x", temprature: 1 } as never))
      assert.strictEqual(unknownField._tag === "ModelError" && unknownField.field, "temprature")
      const badRole = yield* Effect.flip(ex.execute({ messages: [{ role: "robot", content: "x" }] } as never))
      assert.strictEqual(badRole._tag === "ModelError" && badRole.field, "messages.0.role")
      assert.strictEqual(yield* control.calls, 0)
    })
  )

  it.effect("times out after the deadline and interrupts the provider call", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ script: [Outcome.hang()] })
      const fiber = yield* Effect.fork(ex.execute({ prompt: "x" }, { timeout: "2 seconds" }))
      yield* TestClock.adjust("1999 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
      assert.strictEqual(yield* control.inFlight, 1)
      yield* TestClock.adjust("1 millis")
      const error = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(error._tag, "TimeoutError")
      if (error._tag === "TimeoutError") {
        assert.strictEqual(error.limit, "request")
        assert.strictEqual(Duration.toMillis(error.timeout), 2000)
      }
      assert.strictEqual(yield* control.interrupted, 1)
      assert.strictEqual(yield* control.inFlight, 0)
    })
  )

  it.effect("the default deadline is 30 seconds", () =>
    Effect.gen(function* () {
      const { ex } = yield* setup({ script: [Outcome.hang()] })
      const fiber = yield* Effect.fork(ex.execute({ prompt: "x" }))
      yield* TestClock.adjust("29999 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
      yield* TestClock.adjust("1 millis")
      const error = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(error._tag, "TimeoutError")
    })
  )

  it.effect("a caller's interruption interrupts the provider call", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ script: [Outcome.hang()] })
      const fiber = yield* Effect.fork(ex.execute({ prompt: "x" }))
      yield* TestClock.adjust("1 second")
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(yield* control.interrupted, 1)
      assert.strictEqual(yield* control.inFlight, 0)
    })
  )
})

describe("Executor.execute accounting", () => {
  it.effect(
    "a caller interrupted while the call runs, or during a retry's backoff, is counted once as Interrupted",
    () =>
      Effect.gen(function* () {
        const { ex, control } = yield* setup({ script: [Outcome.hang(), Outcome.fail("Overloaded"), Outcome.hang()] })
        const running = yield* Effect.fork(ex.execute({ prompt: "a" }, { timeout: "none" }))
        const backingOff = yield* Effect.fork(
          ex.execute({ prompt: "b" }, { retry: { maxAttempts: 3, initialDelay: "1 second", jitter: 0 } })
        )
        yield* TestClock.adjust("500 millis")
        assert.strictEqual(yield* control.calls, 2)
        assert.strictEqual((yield* ex.stats({ provider: control.name })).inFlight, 2)
        yield* Fiber.interrupt(running)
        yield* Fiber.interrupt(backingOff)
        assert.strictEqual(yield* control.interrupted, 1)
        yield* TestClock.adjust("5 seconds")
        assert.strictEqual(yield* control.calls, 2, "no retry after the caller left")
        const stats = yield* ex.stats({ provider: control.name })
        assert.strictEqual(stats.total, 2)
        assert.deepStrictEqual(stats.failuresByReason, { Interrupted: 2 })
        assert.strictEqual(stats.retries, 1)
        assert.strictEqual(stats.inFlight, 0)
      })
  )

  it.effect("an uninterruptible caller still gets its timeout: the provider runs interruptibly", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ script: [Outcome.hang()] })
      const fiber = yield* Effect.fork(Effect.uninterruptible(ex.execute({ prompt: "x" }, { timeout: "1 second" })))
      yield* TestClock.adjust("1 second")
      const error = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(error._tag, "TimeoutError")
      assert.strictEqual(yield* control.interrupted, 1)
    })
  )
})

describe("Executor retries", () => {
  it.effect("waits the exact exponential delays, and at least Retry-After", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({
        script: [
          Outcome.fail("Overloaded"),
          Outcome.fail("Transport"),
          Outcome.fail("RateLimited", { retryAfter: "5 seconds" }),
          Outcome.succeed("finally")
        ]
      })
      const delays: Array<number> = []
      const fiber = yield* Effect.fork(
        ex.execute(
          { prompt: "x" },
          {
            retry: { maxAttempts: 5, initialDelay: 100, factor: 2, jitter: 0 },
            onRetry: (info) => Effect.sync(() => delays.push(Duration.toMillis(info.delay)))
          }
        )
      )
      yield* TestClock.adjust("99 millis")
      assert.strictEqual(yield* control.calls, 1)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* control.calls, 2)
      yield* TestClock.adjust("199 millis")
      assert.strictEqual(yield* control.calls, 2)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* control.calls, 3)
      // backoff says 400 ms, the provider said 5 s: 5 s wins
      yield* TestClock.adjust("4999 millis")
      assert.strictEqual(yield* control.calls, 3)
      yield* TestClock.adjust("1 millis")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.text, "finally")
      assert.deepStrictEqual(delays, [100, 200, 5000])
      const stats = yield* ex.stats({ provider: control.name })
      assert.strictEqual(stats.retries, 3)
      assert.strictEqual(stats.total, 1)
      assert.strictEqual(stats.successes, 1)
    })
  )

  it.effect("caps the delay at maxDelay and stops after maxAttempts", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ random: { seed: 1, succeed: 0, fail: { Overloaded: 1 } } })
      const delays: Array<number> = []
      const fiber = yield* Effect.fork(
        ex.execute(
          { prompt: "x" },
          {
            retry: { maxAttempts: 4, initialDelay: "1 second", factor: 10, maxDelay: "5 seconds", jitter: 0 },
            onRetry: (info) => Effect.sync(() => delays.push(Duration.toMillis(info.delay)))
          }
        )
      )
      yield* TestClock.adjust("1 minute")
      const error = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(error._tag === "ModelError" && error.reason, "Overloaded")
      assert.deepStrictEqual(delays, [1000, 5000, 5000])
      assert.strictEqual(yield* control.calls, 4)
    })
  )

  it.effect("jitter keeps delays within [base × (1 − jitter), base]", () =>
    Effect.gen(function* () {
      const { ex } = yield* setup({ random: { seed: 3, succeed: 0, fail: { Transport: 1 } } })
      const delays: Array<number> = []
      const fiber = yield* Effect.fork(
        ex.execute(
          { prompt: "x" },
          {
            retry: { maxAttempts: 6, initialDelay: 1000, factor: 2, maxDelay: 60_000, jitter: 0.5 },
            onRetry: (info) => Effect.sync(() => delays.push(Duration.toMillis(info.delay)))
          }
        )
      )
      yield* TestClock.adjust("5 minutes")
      yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(delays.length, 5)
      delays.forEach((d, i) => {
        const base = 1000 * 2 ** i
        assert.isTrue(d <= base && d >= base * 0.5, `delay ${i} = ${d} outside [${base / 2}, ${base}]`)
      })
      assert.isTrue(new Set(delays.map((d, i) => d / 2 ** i)).size > 1, "jitter varies the delays")
    })
  )

  it.effect("does not retry a non-retryable error", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ script: [Outcome.fail("Unauthorized"), Outcome.succeed()] })
      const error = yield* Effect.flip(ex.executeWithRetry({ prompt: "x" }))
      assert.strictEqual(error._tag === "ModelError" && error.reason, "Unauthorized")
      assert.strictEqual(yield* control.calls, 1)
      assert.strictEqual((yield* ex.stats({ provider: control.name })).retries, 0)
    })
  )

  it.effect("retries a timeout, and gives up when Retry-After exceeds maxRetryAfter", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({
        script: [Outcome.hang(), Outcome.fail("RateLimited", { retryAfter: "10 minutes" }), Outcome.succeed()]
      })
      const fiber = yield* Effect.fork(
        ex.execute({ prompt: "x" }, { timeout: "1 second", retry: { initialDelay: 10, jitter: 0 } })
      )
      yield* TestClock.adjust("1010 millis")
      assert.strictEqual(yield* control.calls, 2)
      const error = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(error._tag === "ModelError" && error.reason, "RateLimited")
      assert.strictEqual(yield* control.calls, 2)
      const stats = yield* ex.stats({ provider: control.name })
      assert.strictEqual(stats.timeouts, 1)
      assert.strictEqual(stats.retries, 1)
    })
  )
})

describe("Executor.executeMany", () => {
  it.effect("keeps input order and isolates failures", () =>
    Effect.gen(function* () {
      const { ex } = yield* setup({
        script: [
          Outcome.succeed("a", { latency: "300 millis" }),
          Outcome.fail("Overloaded", { latency: "10 millis" }),
          Outcome.succeed("c", { latency: "100 millis" }),
          Outcome.hang(),
          Outcome.succeed("e", { latency: "1 millis" })
        ]
      })
      const fiber = yield* Effect.fork(
        ex.executeMany(
          ["a", "b", "c", "d", "e"].map((prompt) => ({ prompt })),
          { concurrency: 5, timeout: "1 second" }
        )
      )
      yield* TestClock.adjust("1 second")
      const results = yield* Fiber.join(fiber)
      assert.strictEqual(results.length, 5)
      assert.deepStrictEqual(
        results.map((r) =>
          Either.match(r, {
            onLeft: (e) => `error:${e._tag === "ModelError" ? e.reason : e._tag}`,
            onRight: (a) => a.text
          })
        ),
        ["a", "error:Overloaded", "c", "error:TimeoutError", "e"]
      )
    })
  )

  it.effect("never runs more than the concurrency limit (peak 5 with 10 calls)", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ latency: "1500 millis" })
      const fiber = yield* Effect.fork(
        ex.executeMany(
          Array.from({ length: 10 }, (_, i) => ({ prompt: `q${i}` })),
          { concurrency: 5 }
        )
      )
      yield* TestClock.adjust("3 seconds")
      const results = yield* Fiber.join(fiber)
      assert.isTrue(results.every(Either.isRight))
      assert.strictEqual(yield* control.peak, 5)
      const stats = yield* ex.stats({ provider: control.name })
      assert.strictEqual(stats.concurrencyPeak, 5)
      assert.strictEqual(stats.inFlight, 0)
    })
  )

  for (const [n, expected] of [
    [1, 1500],
    [3, 1500],
    [5, 1500],
    [10, 3000]
  ] as const) {
    it.effect(
      `${n} queries of 1.5 s with 5 concurrent take ${expected / 1000} s (the Python version: 1.5/1.8/2.2/3.5 s)`,
      () =>
        Effect.gen(function* () {
          const { ex } = yield* setup({ latency: "1500 millis" })
          const fiber = yield* Effect.fork(
            ex.executeMany(
              Array.from({ length: n }, (_, i) => ({ prompt: `q${i}` })),
              { concurrency: 5 }
            )
          )
          yield* TestClock.adjust(expected - 1)
          assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)), "not done a millisecond early")
          yield* TestClock.adjust(1)
          const done = yield* Fiber.poll(fiber)
          assert.isTrue(Option.isSome(done) && Exit.isSuccess(done.value), "done exactly on time")
        })
    )
  }
})

describe("Executor stats", () => {
  it.effect("reports the figures of a known script, filtered and reset", () =>
    Effect.gen(function* () {
      const { ex, control, stats } = yield* setup({
        script: [
          Outcome.succeed("1", { latency: "100 millis" }),
          Outcome.succeed("2", { latency: "300 millis" }),
          Outcome.fail("Overloaded", { latency: "200 millis" }),
          Outcome.hang()
        ]
      })
      const fiber = yield* Effect.fork(
        Effect.all(
          [
            ex.execute({ prompt: "a" }, { domain: "support" }),
            ex.execute({ prompt: "b" }, { domain: "support" }),
            ex.execute({ prompt: "c" }, { domain: "finance" }),
            ex.execute({ prompt: "d" }, { domain: "finance", timeout: "1 second" })
          ].map(Effect.either),
          { concurrency: "unbounded" }
        )
      )
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      const all = yield* ex.stats({ provider: control.name })
      assert.strictEqual(all.total, 4)
      assert.strictEqual(all.successes, 2)
      assert.strictEqual(all.failures, 2)
      assert.deepStrictEqual(all.failuresByReason, { Overloaded: 1, Timeout: 1 })
      assert.strictEqual(all.successRate, 50)
      assert.strictEqual(all.timeouts, 1)
      assert.strictEqual(all.concurrencyPeak, 4)
      assert.strictEqual(all.latency.min, 100)
      assert.strictEqual(all.latency.max, 1000)
      assert.strictEqual(all.latency.avg, 400)
      assert.strictEqual(all.throughput, 4)
      const support = yield* ex.stats({ provider: control.name, domain: "support" })
      assert.strictEqual(support.total, 2)
      assert.strictEqual(support.successRate, 100)
      assert.strictEqual(support.latency.avg, 200)
      assert.strictEqual(support.concurrencyPeak, 2)
      const finance = yield* stats.snapshot({ domain: "finance", provider: control.name })
      assert.strictEqual(finance.failures, 2)
      yield* stats.reset
      const after = yield* ex.stats({ provider: control.name })
      assert.strictEqual(after.total, 0)
      assert.strictEqual(after.concurrencyPeak, 0)
    })
  )
})

describe("Executor shutdown", () => {
  it.effect("lets in-flight calls finish, refuses new ones, interrupts the rest at the deadline", () =>
    Effect.gen(function* () {
      const { ex, control, scope } = yield* setup(
        { script: [Outcome.succeed("quick", { latency: "1 second" }), Outcome.hang()] },
        { shutdownDeadline: "5 seconds" }
      )
      const quick = yield* Effect.fork(ex.execute({ prompt: "quick" }, { timeout: "none" }))
      const stuck = yield* Effect.fork(ex.execute({ prompt: "stuck" }, { timeout: "none" }))
      yield* TestClock.adjust("10 millis")
      const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
      yield* TestClock.adjust("10 millis")
      assert.isTrue(yield* ex.isShuttingDown)
      const refused = yield* Effect.flip(ex.execute({ prompt: "late" }))
      assert.strictEqual(refused._tag, "ShuttingDownError")
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(quick)).text, "quick")
      assert.isTrue(Option.isNone(yield* Fiber.poll(closing)))
      yield* TestClock.adjust("5 seconds")
      yield* Fiber.join(closing)
      const stuckError = yield* Effect.flip(Fiber.join(stuck))
      assert.strictEqual(stuckError._tag, "ShuttingDownError")
      assert.strictEqual(yield* control.inFlight, 0)
      assert.strictEqual(yield* control.interrupted, 1)
    })
  )
})

describe("Executor.executeMany deadlines and retries (the worker is the call fiber)", () => {
  const text = (r: Either.Either<{ readonly text: string }, { readonly _tag: string }>) =>
    Either.match(r, {
      onLeft: (e) => `error:${e._tag === "ModelError" && "reason" in e ? e.reason : e._tag}`,
      onRight: (a) => a.text
    })

  it.effect("a timed-out item is retried after its backoff, and the pool carries on with the next items", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({
        script: [
          Outcome.hang(),
          Outcome.succeed("a", { latency: "50 millis" }),
          Outcome.succeed("b", { latency: "50 millis" })
        ]
      })
      const fiber = yield* Effect.fork(
        ex.executeMany([{ prompt: "a" }, { prompt: "b" }], {
          concurrency: 1,
          timeout: "1 second",
          retry: { maxAttempts: 2, initialDelay: 100, jitter: 0 }
        })
      )
      yield* TestClock.adjust("999 millis")
      assert.strictEqual(yield* control.calls, 1)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* control.interrupted, 1, "the provider call was interrupted at the deadline")
      assert.strictEqual(yield* control.inFlight, 0)
      yield* TestClock.adjust("99 millis")
      assert.strictEqual(yield* control.calls, 1, "no retry before the backoff")
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* control.calls, 2)
      yield* TestClock.adjust("50 millis")
      assert.strictEqual(yield* control.calls, 3, "the next item runs after the retried one")
      yield* TestClock.adjust("49 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
      yield* TestClock.adjust("1 millis")
      const results = yield* Fiber.join(fiber)
      assert.deepStrictEqual(results.map(text), ["a", "b"])
      const stats = yield* ex.stats({ provider: control.name })
      assert.strictEqual(stats.total, 2)
      assert.strictEqual(stats.successes, 2)
      assert.strictEqual(stats.timeouts, 1)
      assert.strictEqual(stats.retries, 1)
      assert.strictEqual(stats.inFlight, 0)
      assert.strictEqual(stats.latency.max, 1150)
    })
  )

  it.effect("every item gets exactly one outcome when deadlines fire across several workers", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({
        script: [
          Outcome.hang(),
          Outcome.succeed("1", { latency: "300 millis" }),
          Outcome.hang(),
          Outcome.fail("Unauthorized", { latency: "10 millis" }),
          Outcome.succeed("4", { latency: "200 millis" }),
          Outcome.hang(),
          Outcome.succeed("6", { latency: "100 millis" })
        ]
      })
      const fiber = yield* Effect.fork(
        ex.executeMany(
          Array.from({ length: 7 }, (_, i) => ({ prompt: `${i}` })),
          { concurrency: 3, timeout: "500 millis" }
        )
      )
      yield* TestClock.adjust("2 seconds")
      const results = yield* Fiber.join(fiber)
      assert.deepStrictEqual(results.map(text), [
        "error:TimeoutError",
        "1",
        "error:TimeoutError",
        "error:Unauthorized",
        "4",
        "error:TimeoutError",
        "6"
      ])
      assert.strictEqual(yield* control.interrupted, 3)
      assert.strictEqual(yield* control.inFlight, 0)
      assert.strictEqual(yield* control.peak, 3)
      const stats = yield* ex.stats({ provider: control.name })
      assert.strictEqual(stats.total, 7)
      assert.strictEqual(stats.successes, 3)
      assert.deepStrictEqual(stats.failuresByReason, { Timeout: 3, Unauthorized: 1 })
      assert.strictEqual(stats.timeouts, 3)
      assert.strictEqual(stats.inFlight, 0)
      assert.strictEqual(stats.concurrencyPeak, 3)
    })
  )

  it.effect("an invalid request is its item's InvalidRequest outcome, without a provider call", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ respond: (request) => request.prompt ?? "" })
      const results = yield* ex.executeMany([{ prompt: "ok" }, { prompt: "x", temperature: 9 }, { prompt: "ok2" }])
      assert.deepStrictEqual(results.map(text), ["ok", "error:InvalidRequest", "ok2"])
      const bad = results[1]!
      assert.isTrue(Either.isLeft(bad) && bad.left._tag === "ModelError" && bad.left.provider === control.name)
      assert.strictEqual(yield* control.calls, 2)
      const stats = yield* ex.stats({ provider: control.name })
      assert.strictEqual(stats.total, 3)
      assert.deepStrictEqual(stats.failuresByReason, { InvalidRequest: 1 })
    })
  )

  it.effect("interrupting executeMany interrupts the running calls; started calls are counted as interrupted", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ script: [Outcome.hang(), Outcome.hang(), Outcome.hang()] })
      const fiber = yield* Effect.fork(
        ex.executeMany(
          Array.from({ length: 10 }, (_, i) => ({ prompt: `${i}` })),
          { concurrency: 3, timeout: "none" }
        )
      )
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* control.inFlight, 3)
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(yield* control.interrupted, 3)
      assert.strictEqual(yield* control.inFlight, 0)
      assert.strictEqual(yield* control.calls, 3, "items not started never start")
      const stats = yield* ex.stats({ provider: control.name })
      assert.strictEqual(stats.total, 3)
      assert.deepStrictEqual(stats.failuresByReason, { Interrupted: 3 })
      assert.strictEqual(stats.inFlight, 0)
    })
  )

  it.effect("a provider defect fails executeMany (as it would forEach) and interrupts the other calls", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ latency: "1 second" })
      const defect = control.name
      const results = yield* Effect.fork(
        ex.callMany([0, 1, 2], { concurrency: 3 }, (i) => ({
          run: (p) =>
            i === 1
              ? Effect.zipRight(Effect.sleep("10 millis"), Effect.dieMessage(defect))
              : p.generate({ prompt: `${i}` })
        }))
      )
      yield* TestClock.adjust("10 millis")
      const exit = yield* Fiber.await(results)
      assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause))
      assert.strictEqual(yield* control.interrupted, 2)
      assert.strictEqual((yield* ex.stats({ provider: control.name })).inFlight, 0)
    })
  )

  it.effect(
    "shutdown during executeMany: running calls end with ShuttingDownError at the deadline, the rest are refused",
    () =>
      Effect.gen(function* () {
        const { ex, control, scope } = yield* setup(
          { script: [Outcome.hang(), Outcome.succeed("quick", { latency: "200 millis" }), Outcome.hang()] },
          { shutdownDeadline: "1 second" }
        )
        const fiber = yield* Effect.fork(
          ex.executeMany(
            Array.from({ length: 5 }, (_, i) => ({ prompt: `${i}` })),
            { concurrency: 2, retry: true }
          )
        )
        yield* TestClock.adjust("100 millis")
        const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
        yield* TestClock.adjust("100 millis")
        // item 1 finished during the drain; its worker found the executor closing for item 2
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(closing)
        const results = yield* Fiber.join(fiber)
        assert.deepStrictEqual(results.map(text), [
          "error:ShuttingDownError",
          "quick",
          "error:ShuttingDownError",
          "error:ShuttingDownError",
          "error:ShuttingDownError"
        ])
        assert.strictEqual(yield* control.calls, 2)
        assert.strictEqual(yield* control.interrupted, 1)
        assert.strictEqual(yield* control.inFlight, 0)
        const stats = yield* ex.stats({ provider: control.name })
        assert.strictEqual(stats.total, 5)
        assert.deepStrictEqual(stats.failuresByReason, { ShuttingDown: 4 })
        assert.strictEqual(stats.retries, 0, "no retry once the executor is closing")
      })
  )
})

describe("Executor.callMany", () => {
  it.effect("two batches sharing a limiter never exceed its permits, and the hooks see every item once", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ latency: "100 millis" })
      const limiter = Limiter.unsafeMake(2)
      const started: Array<string> = []
      const outcomes: Array<string> = []
      const batch = (name: string) =>
        ex.callMany(
          [0, 1, 2, 3],
          {
            concurrency: 4,
            limiter,
            onStart: (i) => Effect.sync(() => started.push(`${name}${i}`)),
            onOutcome: (i, outcome) => Effect.sync(() => outcomes.push(`${name}${i}:${Either.isRight(outcome)}`))
          },
          (i) => ({ run: (p) => p.generate({ prompt: `${name}${i}` }) })
        )
      const fiber = yield* Effect.fork(Effect.all([batch("a"), batch("b")], { concurrency: "unbounded" }))
      yield* TestClock.adjust("399 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
      yield* TestClock.adjust("1 millis")
      const [a, b] = yield* Fiber.join(fiber)
      assert.isTrue([...a, ...b].every(Either.isRight))
      assert.strictEqual(yield* control.peak, 2)
      assert.strictEqual(started.length, 8)
      assert.strictEqual(new Set(started).size, 8)
      assert.strictEqual(outcomes.length, 8)
      assert.strictEqual(limiter.available(), 2)
      assert.strictEqual(limiter.waiting(), 0)
    })
  )

  it.effect("a permit held by a timed-out item passes to its replacement worker and is released once", () =>
    Effect.gen(function* () {
      const { ex, control } = yield* setup({ script: [Outcome.hang(), Outcome.succeed("retried")] })
      const limiter = Limiter.unsafeMake(1)
      const fiber = yield* Effect.fork(
        ex.callMany(
          [0, 1],
          { concurrency: 2, limiter, timeout: "1 second", retry: { maxAttempts: 2, initialDelay: 10, jitter: 0 } },
          (i) => ({ run: (p) => p.generate({ prompt: `${i}` }) })
        )
      )
      yield* TestClock.adjust("1 second")
      assert.strictEqual(limiter.available(), 0, "the retrying item keeps its permit during the backoff")
      assert.strictEqual(limiter.waiting(), 1)
      yield* TestClock.adjust("10 millis")
      const results = yield* Fiber.join(fiber)
      assert.isTrue(results.every(Either.isRight))
      assert.strictEqual(yield* control.calls, 3)
      assert.strictEqual(limiter.available(), 1)
    })
  )

  it.effect("interrupting a batch that waits on the limiter leaves no permit taken and no waiter queued", () =>
    Effect.gen(function* () {
      const { ex } = yield* setup({ script: [Outcome.hang(), Outcome.hang()] })
      const limiter = Limiter.unsafeMake(1)
      const fiber = yield* Effect.fork(
        ex.callMany([0, 1, 2], { concurrency: 3, limiter, timeout: "none" }, (i) => ({
          run: (p) => p.generate({ prompt: `${i}` })
        }))
      )
      yield* TestClock.adjust("1 second")
      assert.strictEqual(limiter.waiting(), 2)
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(limiter.available(), 1)
      assert.strictEqual(limiter.waiting(), 0)
    })
  )
})
