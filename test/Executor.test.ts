import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Metric, Result, Stream, Tracer } from "effect"
import { TestClock } from "effect/testing"
import type { AiError, ModelError } from "../src/AiError.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import * as Metrics from "../src/Metrics.js"
import { ModelProvider } from "../src/Model.js"
import { Outcome } from "../src/Model/Mock.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as Policy from "../src/Policy.js"
import { setup } from "./utils/executor.js"
import { captureLogs } from "./utils/logs.js"
import { recording } from "./utils/tracer.js"

const ask = { prompt: "hello" }

describe("Executor.execute", () => {
  it.effect("answers through the provider and counts the call", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ respond: () => "hi there" })
      const response = yield* executor.execute(ask)
      assert.strictEqual(response.text, "hi there")
      assert.strictEqual(response.provider, "mock")
      assert.strictEqual(yield* control.calls, 1)
      const stats = yield* executor.stats()
      assert.strictEqual(stats.total, 1)
      assert.strictEqual(stats.successes, 1)
      assert.strictEqual(stats.successRate, 100)
    })
  )

  it.effect("a deadline interrupts the provider call and fails with a TimeoutError naming the limit", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ script: [Outcome.hang()] }, { timeout: "2 seconds" })
      const fiber = yield* Effect.forkChild(Effect.flip(executor.execute(ask)))
      yield* TestClock.adjust("1999 millis")
      assert.isUndefined(fiber.pollUnsafe())
      yield* TestClock.adjust("1 millis")
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error._tag, "TimeoutError")
      if (error._tag === "TimeoutError") {
        assert.strictEqual(error.limit, "request")
        assert.strictEqual(Duration.toMillis(error.timeout), 2000)
        assert.strictEqual(error.provider, "mock")
      }
      yield* Effect.yieldNow
      assert.strictEqual(yield* control.interrupted, 1)
      const stats = yield* executor.stats()
      assert.strictEqual(stats.timeouts, 1)
      assert.deepStrictEqual(stats.failuresByReason, { Timeout: 1 })
    })
  )

  it.effect("retries transient failures on the exponential schedule, then answers", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({
        script: [Outcome.fail("Overloaded"), Outcome.fail("RateLimited"), Outcome.succeed("third time")]
      })
      const delays: Array<number> = []
      const fiber = yield* Effect.forkChild(
        executor.execute(ask, {
          retry: { maxAttempts: 3, initialDelay: "1 second", jitter: 0 },
          onRetry: (info) => Effect.sync(() => delays.push(Duration.toMillis(info.delay)))
        })
      )
      yield* TestClock.adjust("999 millis")
      assert.strictEqual(yield* control.calls, 1)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* control.calls, 2)
      yield* TestClock.adjust("2 seconds")
      const response = yield* Fiber.join(fiber)
      assert.strictEqual(response.text, "third time")
      assert.deepStrictEqual(delays, [1000, 2000])
      const stats = yield* executor.stats()
      assert.strictEqual(stats.total, 1)
      assert.strictEqual(stats.retries, 2)
      assert.strictEqual(stats.successes, 1)
    })
  )

  it.effect("an onRetry that throws or returns no Effect does not fail the call: logged once, the retry goes on", () =>
    Effect.gen(function* () {
      const callbacks = [
        () => {
          throw new Error("logging failed")
        },
        () => undefined
      ]
      for (const onRetry of callbacks) {
        const { executor } = yield* setup({
          script: [Outcome.fail("Overloaded"), Outcome.fail("Overloaded"), Outcome.succeed("third try")]
        })
        const logs = yield* captureLogs
        const fiber = yield* Effect.forkChild(
          executor
            .execute(ask, { retry: { maxAttempts: 3, initialDelay: 100, jitter: 0 }, onRetry: onRetry as never })
            .pipe(Effect.provide(logs.layer))
        )
        yield* TestClock.adjust("1 second")
        assert.strictEqual((yield* Fiber.join(fiber)).text, "third try")
        const warnings = logs.lines.filter((line) => line.includes("onRetry callback failed"))
        assert.strictEqual(warnings.length, 1, logs.lines.join("\n"))
      }
    })
  )

  it.effect(
    "a failing onRetry is logged once, also where each call has a plan of its own (a cache or rate limit)",
    () =>
      Effect.gen(function* () {
        const cache = yield* ResponseCache.makeMemory({ name: "onretry-once" })
        const { executor } = yield* setup(
          {
            script: [
              Outcome.fail("Overloaded"),
              Outcome.succeed("first"),
              Outcome.fail("Overloaded"),
              Outcome.succeed("second")
            ]
          },
          { guards: { cache } }
        )
        const logs = yield* captureLogs
        const options: Executor.ExecuteOptions = {
          retry: { initialDelay: 100, jitter: 0 },
          onRetry: () => Effect.die(new Error("progress bar broke"))
        }
        const fiber = yield* Effect.forkChild(
          Effect.all([executor.execute(ask, options), executor.execute({ prompt: "other" }, options)]).pipe(
            Effect.provide(logs.layer)
          )
        )
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(
          (yield* Fiber.join(fiber)).map((r) => r.text),
          ["first", "second"]
        )
        // Before, each call's plan wrapped the callback anew: every failure was "the first" of its callback.
        const warnings = logs.lines.filter((line) => line.includes("onRetry callback failed"))
        assert.strictEqual(warnings.length, 1, logs.lines.join("\n"))
      })
  )

  it.effect("embed calls onRetry before each retry's wait, as execute does", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ script: [Outcome.fail("Overloaded"), Outcome.succeed()] })
      const seen: Array<string> = []
      const fiber = yield* Effect.forkChild(
        executor.embed(
          { texts: ["x"] },
          {
            retry: { initialDelay: 100, jitter: 0 },
            domain: "vectors",
            onRetry: (info) =>
              Effect.sync(() =>
                seen.push(`${info.provider} ${info.domain} ${info.attempt} ${Duration.toMillis(info.delay)}`)
              )
          }
        )
      )
      yield* TestClock.adjust("100 millis")
      assert.lengthOf((yield* Fiber.join(fiber)).vectors, 1)
      // Before, embed's plan left the option out: it was checked, then never called.
      assert.deepStrictEqual(seen, ["mock vectors 1 100"])
    })
  )

  it.effect("a Retry-After longer than the backoff is the floor of the wait", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({
        script: [Outcome.fail("RateLimited", { retryAfter: "5 seconds" }), Outcome.succeed("ok")]
      })
      const fiber = yield* Effect.forkChild(executor.execute(ask, { retry: { initialDelay: 100, jitter: 0 } }))
      yield* TestClock.adjust("4999 millis")
      assert.strictEqual(yield* control.calls, 1)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual((yield* Fiber.join(fiber)).text, "ok")
    })
  )

  it.effect("errors that are not transient are not retried", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ script: [Outcome.fail("Unauthorized"), Outcome.succeed()] })
      const error = yield* Effect.flip(executor.execute(ask, { retry: true }))
      assert.strictEqual(error._tag, "ModelError")
      assert.strictEqual(yield* control.calls, 1)
    })
  )

  it.effect("a bad request fails with InvalidRequest naming the field, before the provider, and is counted", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      const bad = [
        [{ prompt: "x", temprature: 1 }, "temprature"],
        [{ messages: [{ role: "robot", content: "x" }] }, "messages[0].role"],
        [{ prompt: "" }, "prompt"],
        [null, "request"],
        [{ prompt: "x".repeat(1_000_001) }, "prompt"]
      ] as const
      for (const [request, field] of bad) {
        const error = yield* Effect.flip(executor.execute(request as never))
        assert.strictEqual(error._tag, "ModelError")
        if (error._tag === "ModelError") {
          assert.strictEqual(error.reason, "InvalidRequest")
          assert.strictEqual(error.field, field)
        }
      }
      assert.strictEqual(yield* control.calls, 0)
      const stats = yield* executor.stats()
      assert.strictEqual(stats.failuresByReason.InvalidRequest, bad.length)
    })
  )

  it.effect("bad per-call options are refused naming the option, never a 0 ms deadline (issue 13 item 10)", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      for (const timeout of [
        -1,
        Number.NaN,
        "-5 seconds",
        "soon",
        1e300,
        Duration.millis(2 ** 53),
        "999999999999999999 weeks"
      ]) {
        const error = yield* Effect.flip(executor.execute(ask, { timeout: timeout as never }))
        assert.strictEqual(error._tag === "ModelError" && error.field, "timeout", String(timeout))
      }
      const retry = yield* Effect.flip(executor.execute(ask, { retry: { maxAttempts: 0 } }))
      assert.strictEqual(retry._tag === "ModelError" && retry.field, "retry.maxAttempts")
      // Only `false` turns the cache off: anything but a boolean would have read as "on".
      for (const [field, options] of [
        ["cache", { cache: 0 }],
        ["cache", { cache: "false" }],
        ["allowStale", { allowStale: null }]
      ] as const) {
        const error = yield* Effect.flip(executor.execute(ask, options as never))
        assert.strictEqual(error._tag === "ModelError" && error.field, field, JSON.stringify(options))
      }
      assert.strictEqual(yield* control.calls, 0)
    })
  )

  it.effect("options changed between two calls are read again: the new deadline, domain and onRetry apply", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({
        latency: "2 seconds",
        script: [Outcome.succeed(), Outcome.fail("Overloaded"), Outcome.succeed()]
      })
      const seen: Array<string> = []
      const options: {
        timeout: number
        domain: string
        retry?: { jitter: number }
        onRetry?: () => Effect.Effect<void>
      } = { timeout: 1000, domain: "first" }
      const first = yield* Effect.forkChild(Effect.flip(executor.execute(ask, options)))
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(first))._tag, "TimeoutError")
      // The same object, changed: before, the first call's checked deadline and plan were used again.
      options.timeout = 5000
      options.domain = "second"
      options.retry = { jitter: 0 }
      options.onRetry = () => Effect.sync(() => seen.push("second"))
      const second = yield* Effect.forkChild(executor.execute(ask, options))
      yield* TestClock.adjust("10 seconds")
      assert.isString((yield* Fiber.join(second)).text)
      assert.deepStrictEqual(seen, ["second"])
      assert.strictEqual((yield* executor.stats({ domain: "second" })).successes, 1)
      // A value changed to a wrong one is refused, not hidden behind the first check.
      options.timeout = -1
      const refused = yield* Effect.flip(executor.execute(ask, options))
      assert.strictEqual(refused._tag === "ModelError" && refused.field, "timeout")
    })
  )

  it.effect(
    "a provider's maxConcurrency that is no positive integer is refused naming it, not a slot no call gets",
    () =>
      Effect.gen(function* () {
        const { executor, control } = yield* setup({ respond: () => "ok" })
        for (const maxConcurrency of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, "2"]) {
          // Before, 0 or -1 queued every call for a slot until its deadline (for ever with none), NaN bounded nothing.
          const provider = { ...executor.provider, name: "own", maxConcurrency } as never
          const error = yield* Effect.flip(executor.execute(ask, { provider, timeout: "none" }))
          assert.strictEqual(
            error._tag === "ModelError" && error.field,
            "provider.maxConcurrency",
            String(maxConcurrency)
          )
          const many = yield* Effect.flip(executor.executeMany([ask], { provider }))
          assert.strictEqual(many.field, "provider.maxConcurrency", String(maxConcurrency))
          const layer = Executor.layerWithStats().pipe(Layer.provide(Layer.succeed(ModelProvider, provider)))
          const built = yield* Effect.flip(Layer.build(layer).pipe(Effect.scoped))
          assert.strictEqual(
            built._tag === "OptionError" && built.path,
            "provider.maxConcurrency",
            String(maxConcurrency)
          )
        }
        assert.strictEqual(yield* control.calls, 0)
        const answer = yield* executor.execute(ask, { provider: { ...executor.provider, maxConcurrency: 2 } })
        assert.strictEqual(answer.text, "ok")
      })
  )

  it.effect("a misspelt option key is refused naming it, not run with the defaults", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      const cases: ReadonlyArray<readonly [string, Effect.Effect<unknown, AiError>]> = [
        ["timout", executor.execute(ask, { timout: "50 millis" } as never)],
        ["timout", executor.executeWithRetry(ask, { timout: "50 millis" } as never)],
        ["concurency", executor.executeMany([ask], { concurency: 1 } as never)],
        ["timout", executor.embed({ texts: ["x"] }, { timout: 1 } as never)],
        ["idleTimout", Stream.runDrain(executor.stream(ask, { idleTimout: 1 } as never))],
        ["resume.maxResume", Stream.runDrain(executor.stream(ask, { resume: { maxResume: 2 } } as never))]
      ]
      for (const [field, effect] of cases) {
        const error = yield* Effect.flip(effect)
        assert.strictEqual(error._tag === "ModelError" && error.field, field)
        assert.include(error.message, "unknown option")
      }
      // The per-call options name the key a typo was likely meant for.
      const typo = yield* Effect.flip(executor.execute(ask, { timout: "50 millis" } as never))
      assert.include(typo.message, "unknown option (did you mean timeout?)")
      assert.strictEqual(yield* control.calls, 0)
      // `concurrency` is executeMany's own: not refused by the calls it makes, traced or not.
      const traced = yield* executor.executeMany([ask, ask], { concurrency: 1 }).pipe(Effect.withSpan("test"))
      assert.deepStrictEqual(traced.map(Result.isSuccess), [true, true])
    })
  )

  it.effect("a domain, provider or onRetry of the wrong type is refused naming it, at every call", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      const cases: ReadonlyArray<readonly [string, Record<string, unknown>]> = [
        ["domain", { domain: 5 }],
        ["domain", { domain: null }],
        ["provider", { provider: "openai" }],
        ["provider", { provider: null }],
        ["onRetry", { onRetry: null }],
        ["onRetry", { onRetry: "log" }]
      ]
      for (const [field, options] of cases) {
        const calls: ReadonlyArray<Effect.Effect<unknown, AiError>> = [
          executor.execute(ask, options as never),
          executor.executeMany([ask], options as never),
          executor.embed({ texts: ["x"] }, options as never),
          Stream.runDrain(executor.stream(ask, options as never))
        ]
        for (const call of calls) {
          const error = yield* Effect.flip(call)
          assert.strictEqual(error._tag === "ModelError" && error.field, field, JSON.stringify(options))
        }
      }
      assert.strictEqual(yield* control.calls, 0)
    })
  )

  it.effect('domain "none" (the label of calls without a domain) and an empty domain are refused naming domain', () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      for (const domain of ["none", ""]) {
        const calls: ReadonlyArray<Effect.Effect<unknown, AiError>> = [
          executor.execute(ask, { domain }),
          executor.executeWithRetry(ask, { domain }),
          executor.executeMany([ask], { domain }),
          executor.embed({ texts: ["x"] }, { domain }),
          Stream.runDrain(executor.stream(ask, { domain }))
        ]
        for (const call of calls) {
          const error = yield* Effect.flip(call)
          assert.strictEqual(error._tag === "ModelError" && error.field, "domain", JSON.stringify(domain))
        }
      }
      assert.strictEqual(yield* control.calls, 0)
      // No series of a domain "none" or "" beside the calls without one.
      yield* executor.execute(ask)
      yield* executor.execute(ask, { domain: "labelled" })
      assert.strictEqual((yield* executor.stats({ domain: "none" })).successes, 1)
      assert.strictEqual((yield* executor.stats({ domain: "labelled" })).successes, 1)
      assert.strictEqual((yield* executor.stats({ domain: "" })).total, 0)
    })
  )

  it.effect(
    'domain "pipeline" or "agent" (the series of pipelines\' steps and HTTP agents) is refused naming domain',
    () =>
      Effect.gen(function* () {
        const { executor, control } = yield* setup()
        for (const domain of [Metrics.pipelineDomain, Metrics.agentDomain]) {
          const calls: ReadonlyArray<Effect.Effect<unknown, AiError>> = [
            executor.execute(ask, { domain }),
            executor.executeWithRetry(ask, { domain }),
            executor.executeMany([ask], { domain }),
            executor.embed({ texts: ["x"] }, { domain }),
            Stream.runDrain(executor.stream(ask, { domain })),
            Stream.runDrain(executor.stream(ask, { steps: [{ provider: executor.provider, domain }] }))
          ]
          for (const call of calls) {
            const error = yield* Effect.flip(call)
            assert.strictEqual(error._tag, "ModelError", domain)
            assert.strictEqual((error as ModelError).reason, "InvalidRequest", domain)
            assert.match((error as ModelError).field ?? "", /domain$/, domain)
            assert.include(error.message, `"${domain}" is reserved`)
          }
          // The refusals count under no domain: nothing joins the steps' or the agents' figures.
          assert.strictEqual((yield* executor.stats({ domain })).total, 0, domain)
        }
        assert.strictEqual(yield* control.calls, 0)
      })
  )

  it.effect("a misspelt key of the executor's options fails the layer naming it", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [Executor.Options, string]> = [
        [{ timout: 1 } as never, "timout"],
        [{ stream: { idleTimout: 1 } } as never, "stream.idleTimout"],
        [{ requestLimits: { maxMesages: 5 } } as never, "requestLimits.maxMesages"]
      ]
      for (const [options, path] of cases) {
        const error = yield* Effect.flip(Effect.scoped(setup({}, options)))
        assert.strictEqual(error._tag === "OptionError" && error.path, path)
      }
    })
  )

  it.effect(
    "options that are no object fail the layer naming options: null was a TypeError defect, 5 or [] taken",
    () =>
      Effect.gen(function* () {
        for (const options of [null, 5, "x", [], () => ({})]) {
          const exit = yield* Effect.exit(Effect.scoped(setup({}, options as never)))
          const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : undefined
          assert.deepStrictEqual(
            error?._tag === "Some" ? [error.value._tag, (error.value as { path?: string }).path] : String(exit),
            ["OptionError", "options"],
            String(options)
          )
        }
        yield* Effect.scoped(setup({}, {}))
      })
  )

  it.effect("an option whose getter throws fails the layer with an OptionError naming it, not a defect", () =>
    Effect.gen(function* () {
      const options = {
        get timeout(): number {
          throw new Error("vault unreachable")
        }
      }
      const exit = yield* Effect.exit(Effect.scoped(setup({}, options as never)))
      const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : undefined
      assert.deepStrictEqual(
        error?._tag === "Some" ? [error.value._tag, (error.value as { path?: string }).path] : String(exit),
        ["OptionError", "timeout"]
      )
      assert.include(error?._tag === "Some" ? error.value.message : "", "vault unreachable")
    })
  )

  it.effect("guards of the wrong shape fail the layer naming them, not every call", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [unknown, string]> = [
        [5, "guards"],
        [null, "guards"],
        [[], "guards"],
        [{ breakr: {} }, "guards.breakr"],
        [{ breaker: 5 }, "guards.breaker"],
        [{ rateLimit: {} }, "guards.rateLimit.acquire"],
        [{ cache: { getOrCompute: () => Effect.never } }, "guards.cache.key"]
      ]
      for (const [guards, path] of cases) {
        const error = yield* Effect.flip(Effect.scoped(setup({}, { guards } as never)))
        assert.strictEqual(error._tag === "OptionError" && error.path, path, JSON.stringify(guards))
      }
      // Guards with their methods are taken, none given included.
      yield* Effect.scoped(setup({}, { guards: { rateLimit: { acquire: () => Effect.void } } }))
      yield* Effect.scoped(setup({}, { guards: {} }))
    })
  )

  it.effect("every form of Duration.Input the option types accept is read; malformed ones are refused", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup()
      for (const timeout of [[1, 0] as const, { seconds: 1 }, 1_000_000_000n, { minutes: 1, seconds: 5 }]) {
        const answer = yield* executor.execute(ask, { timeout })
        assert.strictEqual(answer.provider, executor.provider.name, String(timeout))
      }
      for (const timeout of [{ foo: 1 }, {}, [1], [Number.NaN, 0], { seconds: Number.NaN }, [-1, 0], -5n]) {
        const error = yield* Effect.flip(executor.execute(ask, { timeout: timeout as never }))
        assert.strictEqual(error._tag === "ModelError" && error.field, "timeout", JSON.stringify(String(timeout)))
      }
    })
  )

  it.effect("a hand-built RetryPolicy (Durations in it) is checked too: no endless retries, no negative delays", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      const shaped = (over: Partial<Policy.RetryPolicy>): Policy.RetryPolicy => ({
        maxAttempts: 3,
        initialDelay: Duration.millis(1),
        factor: 2,
        maxDelay: Duration.millis(5),
        jitter: 0.2,
        respectRetryAfter: true,
        maxRetryAfter: Duration.seconds(1),
        ...over
      })
      const cases: ReadonlyArray<readonly [Partial<Policy.RetryPolicy>, string]> = [
        [{ maxAttempts: Number.POSITIVE_INFINITY }, "retry.maxAttempts"],
        [{ maxAttempts: Number.NaN }, "retry.maxAttempts"],
        [{ jitter: 5 }, "retry.jitter"],
        [{ factor: Number.NaN }, "retry.factor"],
        [{ initialDelay: Duration.millis(-100) }, "retry.initialDelay"]
      ]
      for (const [over, field] of cases) {
        const error = yield* Effect.flip(executor.execute(ask, { retry: shaped(over) }))
        assert.strictEqual(error._tag === "ModelError" && error.field, field, field)
        assert.throws(() => Policy.retry(shaped(over)), field)
      }
      assert.strictEqual(yield* control.calls, 0)
      // A checked policy stays what was checked.
      const policy = Policy.retry({ maxAttempts: 2 })
      assert.isTrue(Object.isFrozen(policy))
      assert.strictEqual(Policy.retry(policy), policy)
      // A hand-built one is decoded once while unchanged (a domain's policy is read every call)...
      const mutable = { ...shaped({}) } as { -readonly [K in keyof Policy.RetryPolicy]: Policy.RetryPolicy[K] }
      const once = Policy.retry(mutable)
      assert.strictEqual(Policy.retry(mutable), once)
      // ...and checked again once changed.
      mutable.maxAttempts = Number.POSITIVE_INFINITY
      assert.throws(() => Policy.retry(mutable), "retry.maxAttempts")
      mutable.maxAttempts = 5
      assert.strictEqual(Policy.retry(mutable).maxAttempts, 5)
    })
  )

  it.effect("a provider defect is that call's typed error, not a defect", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup()
      const broken = { ...executor.provider, name: "broken", generate: () => Effect.die(new Error("boom")) }
      const error = yield* Effect.flip(executor.execute(ask, { provider: broken }))
      assert.strictEqual(error._tag, "ModelError")
      if (error._tag === "ModelError") {
        assert.strictEqual(error.reason, "Unknown")
        assert.include(error.message, "boom")
        assert.strictEqual(error.provider, "broken")
      }
    })
  )

  it.effect(
    "a provider failing with a value that is not an AiError gets a typed ModelError naming it, not that value",
    () =>
      Effect.gen(function* () {
        const { executor, close } = yield* setup({}, { retry: Policy.retry({ maxAttempts: 1 }) })
        const hostile = {
          get _tag(): string {
            throw new Error("no tag")
          }
        }
        const values: ReadonlyArray<unknown> = [new Error("plain"), "bad", undefined, 7, Object.create(null), hostile]
        for (const value of values) {
          const broken = { ...executor.provider, name: "broken", generate: () => Effect.fail(value as AiError) }
          const error = yield* Effect.flip(executor.execute(ask, { provider: broken }))
          assert.deepStrictEqual(
            error._tag === "ModelError" && [error.reason, error.provider, error.cause],
            ["Unknown", "broken", value],
            typeof value
          )
          const many = yield* executor.executeMany([ask, ask], { provider: broken, concurrency: 2 })
          assert.deepStrictEqual(
            many.map((r) => Result.isFailure(r) && r.failure._tag === "ModelError" && r.failure.reason),
            ["Unknown", "Unknown"]
          )
        }
        const stats = yield* executor.stats()
        assert.strictEqual(stats.inFlight, 0)
        assert.deepStrictEqual(stats.failuresByReason, { Unknown: 18 })
        const closing = yield* Effect.forkChild(close)
        yield* Effect.yieldNow
        assert.isTrue(closing.pollUnsafe() !== undefined && Exit.isSuccess(closing.pollUnsafe()!))
      })
  )

  it.effect(
    "a defect that cannot be made a string (no prototype, a throwing toString) is still that call's typed error",
    () =>
      Effect.gen(function* () {
        const { executor, close } = yield* setup({}, { retry: Policy.retry({ maxAttempts: 1 }) })
        const defects: ReadonlyArray<unknown> = [
          Object.create(null),
          {
            toString: () => {
              throw new Error("no string")
            }
          }
        ]
        for (const defect of defects) {
          const broken = { ...executor.provider, name: "broken", generate: () => Effect.die(defect) }
          const error = yield* Effect.flip(executor.execute(ask, { provider: broken }))
          assert.strictEqual(error._tag === "ModelError" && error.reason, "Unknown")
          assert.strictEqual(error.cause, defect)
          const many = yield* executor.executeMany([ask, ask], { provider: broken, concurrency: 2 })
          assert.deepStrictEqual(
            many.map((r) => Result.isFailure(r) && r.failure._tag === "ModelError" && r.failure.reason),
            ["Unknown", "Unknown"]
          )
        }
        const stats = yield* executor.stats()
        assert.strictEqual(stats.inFlight, 0, "every call left the in-flight count")
        assert.deepStrictEqual(stats.failuresByReason, { Unknown: 6 })
        // Nothing left in flight: the shutdown does not wait for its deadline.
        const closing = yield* Effect.forkChild(close)
        yield* Effect.yieldNow
        assert.isDefined(closing.pollUnsafe())
      })
  )
})

describe("Executor.executeMany", () => {
  it.effect("ten 1.5 s queries, five at a time, take 3.0 s and keep their order", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ latency: "1500 millis", respond: (r) => `re: ${r.prompt}` })
      const requests = Array.from({ length: 10 }, (_, i) => ({ prompt: `q${i}` }))
      const fiber = yield* Effect.forkChild(executor.executeMany(requests, { concurrency: 5 }))
      yield* TestClock.adjust("2999 millis")
      assert.isUndefined(fiber.pollUnsafe())
      yield* TestClock.adjust("1 millis")
      const results = yield* Fiber.join(fiber)
      assert.deepStrictEqual(
        results.map((r) => (Result.isSuccess(r) ? r.success.text : "error")),
        requests.map((r) => `re: ${r.prompt}`)
      )
      assert.strictEqual((yield* executor.stats()).concurrencyPeak, 5)
    })
  )

  it.effect("one bad item gets its own error; the others run", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup()
      const results = yield* executor.executeMany([ask, { prompt: 1 } as never, ask])
      assert.deepStrictEqual(
        results.map((r) => Result.isSuccess(r)),
        [true, false, true]
      )
    })
  )

  it.effect(
    "a request whose getter threw a long Error was written whole into its InvalidRequest (reading it threw: Error: …): bounded",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "ok" })
        const long = `${"a".repeat(80)}${"b".repeat(10_000)}`
        const throwing = {
          get prompt(): string {
            throw new RangeError(long)
          }
        }
        const error = yield* Effect.flip(executor.execute(throwing))
        assert.strictEqual(
          error.message,
          // Named by the field that threw (the request's own check reads it first), the message cut.
          `invalid prompt: reading it threw: ${"a".repeat(80)}… (10,080 characters)`
        )
      })
  )

  it.effect(
    "a request whose field throws when read is its own InvalidRequest naming it (requests[1]), not a defect of all",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "ok" })
        const throwing = {
          get prompt(): string {
            throw new Error("prompt getter threw")
          }
        }
        const results = yield* executor.executeMany([ask, throwing, ask])
        assert.deepStrictEqual(
          results.map((r) => (Result.isSuccess(r) ? "ok" : r.failure._tag === "ModelError" && r.failure.field)),
          ["ok", "requests[1].prompt", "ok"]
        )
        const failure = results[1]!
        assert.include(Result.isFailure(failure) ? failure.failure.message : "", "prompt getter threw")
        const embedding = {
          get texts(): readonly [string] {
            throw new Error("texts getter threw")
          }
        }
        const errors = [
          yield* Effect.flip(executor.execute(throwing)),
          yield* Effect.flip(Stream.runDrain(executor.stream(throwing))),
          yield* Effect.flip(executor.embed(embedding))
        ]
        assert.deepStrictEqual(
          errors.map((error) => error._tag === "ModelError" && `${error.reason} ${error.field}`),
          ["InvalidRequest prompt", "InvalidRequest prompt", "InvalidRequest texts"]
        )
      })
  )

  it.effect(
    "requests that are not an iterable, or null options, are an InvalidRequest naming them, not [] or a defect",
    () =>
      Effect.gen(function* () {
        const { executor, control } = yield* setup()
        // A request without its array was taken as an array-like of no length: nothing ran, Success([]).
        for (const requests of [ask, null, undefined, "hi", 5, { 0: ask, length: 1 }]) {
          const error = yield* Effect.flip(executor.executeMany(requests as never))
          assert.strictEqual(error.reason === "InvalidRequest" && error.field, "requests", String(requests))
        }
        const throwing = {
          *[Symbol.iterator]() {
            yield ask
            throw new Error("boom")
          }
        }
        const threw = yield* Effect.flip(executor.executeMany(throwing))
        assert.deepStrictEqual(
          [threw.field, threw.message],
          ["requests", "invalid requests: iterating them threw: boom"]
        )
        // What the iteration throws is the caller's: a value without a string form is still this typed error.
        const throwingBare = {
          *[Symbol.iterator]() {
            yield ask
            throw Object.create(null)
          }
        }
        const bare = yield* Effect.flip(executor.executeMany(throwingBare))
        assert.deepStrictEqual([bare.reason, bare.field], ["InvalidRequest", "requests"])
        const cases: ReadonlyArray<Effect.Effect<unknown, AiError>> = [
          executor.executeMany([ask], null as never),
          executor.execute(ask, null as never),
          executor.executeWithRetry(ask, null as never),
          executor.embed({ texts: ["x"] }, null as never),
          Stream.runDrain(executor.stream(ask, null as never)),
          executor.execute(ask, "fast" as never)
        ]
        for (const effect of cases) {
          const error = yield* Effect.flip(effect)
          assert.strictEqual(error._tag === "ModelError" && error.reason === "InvalidRequest" && error.field, "options")
        }
        assert.strictEqual(yield* control.calls, 0)
        // Any iterable is still requests.
        const fromSet = yield* executor.executeMany(new Set([ask, { prompt: "two" }]))
        assert.deepStrictEqual(fromSet.map(Result.isSuccess), [true, true])
      })
  )

  it.effect("concurrency NaN, 0 or 1.5 fails at once with InvalidRequest naming it (issue 13 item 6)", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      for (const concurrency of [Number.NaN, 0, -1, 1.5, 1e300, 2 ** 53]) {
        const error = yield* Effect.flip(executor.executeMany([ask, ask], { concurrency }))
        assert.strictEqual(error.field, "concurrency")
      }
      assert.strictEqual(yield* control.calls, 0)
    })
  )
})

describe("provider slots: queue wait apart from service time (issue 13 item 28)", () => {
  it.effect("a provider serving one call at once reports a peak of 1 and the time queued", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ latency: "1 second", maxConcurrency: 1 })
      const fiber = yield* Effect.forkChild(
        executor.executeMany(
          Array.from({ length: 5 }, () => ask),
          { concurrency: 5 }
        )
      )
      yield* TestClock.adjust("1 second")
      const during = yield* executor.stats()
      assert.strictEqual(during.inFlight, 1)
      assert.strictEqual(during.queued, 3)
      yield* TestClock.adjust("4 seconds")
      yield* Fiber.join(fiber)
      const stats = yield* executor.stats()
      assert.strictEqual(stats.concurrencyPeak, 1)
      assert.closeTo(stats.serviceTime.avg, 1000, 1)
      assert.closeTo(stats.queueWait.max, 4000, 250)
      assert.closeTo(stats.latency.max, 5000, 250)
    })
  )
})

describe("graceful shutdown", () => {
  it.effect("closing drains running calls, refuses new ones, then interrupts at the deadline", () =>
    Effect.gen(function* () {
      const { executor, close } = yield* setup(
        { script: [Outcome.succeed("quick", { latency: "1 second" }), Outcome.hang()] },
        { shutdownDeadline: "3 seconds", timeout: "none" }
      )
      const quick = yield* Effect.forkChild(Effect.result(executor.execute(ask)))
      const stuck = yield* Effect.forkChild(Effect.result(executor.execute(ask)))
      yield* Effect.yieldNow
      const closing = yield* Effect.forkChild(close)
      yield* Effect.yieldNow
      const refused = yield* Effect.flip(executor.execute(ask))
      assert.strictEqual(refused._tag, "ShuttingDownError")
      yield* TestClock.adjust("1 second")
      const first = yield* Fiber.join(quick)
      assert.isTrue(Result.isSuccess(first))
      yield* TestClock.adjust("2 seconds")
      const second = yield* Fiber.join(stuck)
      assert.isTrue(Result.isFailure(second) && (second.failure as AiError)._tag === "ShuttingDownError")
      yield* Fiber.join(closing)
    })
  )

  it.effect("an onRetry that never ends is cut by the shutdown deadline as a backoff is: its caller is answered", () =>
    Effect.gen(function* () {
      const { executor, close } = yield* setup(
        { script: [Outcome.fail("Overloaded"), Outcome.succeed()] },
        { shutdownDeadline: "3 seconds" }
      )
      const fiber = yield* Effect.forkChild(
        Effect.flip(executor.execute(ask, { retry: { jitter: 0 }, onRetry: () => Effect.never }))
      )
      yield* Effect.yieldNow
      const closing = yield* Effect.forkChild(close)
      yield* TestClock.adjust("3 seconds")
      yield* TestClock.adjust("5 seconds")
      // Before, the callback ran on no deadline lane: the shutdown gave up on the call, which waited for ever.
      const done = fiber.pollUnsafe()
      if (done === undefined) yield* Fiber.interrupt(fiber)
      assert.isDefined(done, "the caller was never answered")
      assert.strictEqual((yield* Fiber.join(fiber))._tag, "ShuttingDownError")
      yield* Fiber.join(closing)
    })
  )

  it.effect("a call built before the executor closed and run after it is refused, whatever its plan", () =>
    Effect.gen(function* () {
      const { executor, close, control } = yield* setup({ respond: () => "late" })
      const p = executor.provider
      const a = executor.stepFor({ ...p, name: "a" })
      const b = executor.stepFor({ ...p, name: "b" })
      const call = (target: typeof p) => target.generate(ask)
      // Effects are values: built once, run later (a repeat, a retry, a stored program).
      const built = [
        executor.run({ steps: [a] }, call),
        executor.run({ steps: [a, b] }, call),
        executor.run({ steps: [a, b], hedgeAfter: Duration.seconds(1) }, call),
        executor.run({ steps: [a], totalTimeout: Duration.seconds(5) }, call),
        executor.execute(ask, { totalTimeout: "5 seconds" })
      ]
      yield* close
      for (const [i, effect] of built.entries()) {
        const error = yield* Effect.flip(effect as Effect.Effect<unknown, AiError>)
        assert.strictEqual(error._tag, "ShuttingDownError", `call ${i}`)
      }
      // Before, the plans the full path runs were admitted by a closed executor (whose deadlines no longer fire).
      assert.strictEqual(yield* control.calls, 0)
    })
  )

  it.effect("a tracked wait after the executor closed is refused, not run with a deadline that never fires", () =>
    Effect.gen(function* () {
      const { executor, close } = yield* setup()
      yield* close
      const fiber = yield* Effect.forkChild(Effect.flip(executor.tracked(Effect.never, Duration.seconds(1))))
      yield* TestClock.adjust("1 second")
      const done = fiber.pollUnsafe()
      if (done === undefined) yield* Fiber.interrupt(fiber)
      // Before, its deadline was linked into the closed lanes, whose sleepers no longer run: it waited for ever.
      assert.isDefined(done, "the wait outlived its deadline")
      assert.strictEqual((yield* Fiber.join(fiber))._tag, "ShuttingDownError")
    })
  )

  it.effect("closing removes the executor's metric series from the registry (issue 13 item 16)", () =>
    Effect.gen(function* () {
      const { executor, close, registry } = yield* setup()
      yield* executor.execute(ask)
      const before = Metric.snapshotUnsafe(Context.make(Metric.MetricRegistry, registry))
      assert.isAbove(before.length, 0)
      assert.isTrue(before.some((s) => s.id === "orchestra_requests_total"))
      yield* close
      assert.strictEqual(registry.size, 0)
    })
  )
})

describe("Executor.run: fallback and hedging", () => {
  const twoSteps = (executor: Executor.Service) => {
    const p = executor.provider
    const a = { ...p, name: "a" }
    const b = { ...p, name: "b" }
    return [executor.stepFor(a), executor.stepFor(b)] as const
  }

  it.effect(
    "every step failing gives a FallbackExhaustedError listing each step, and fallbacks are counted (item 26)",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ script: [Outcome.fail("Overloaded"), Outcome.fail("Unavailable")] })
        const [a, b] = twoSteps(executor)
        const error = yield* Effect.flip(executor.run({ steps: [a, b] }, (p) => p.generate(ask)))
        assert.strictEqual(error._tag, "FallbackExhaustedError")
        if (error._tag === "FallbackExhaustedError") {
          assert.deepStrictEqual(
            error.attempts.map((x) => [x.provider, x.error._tag === "ModelError" ? x.error.reason : ""]),
            [
              ["a", "Overloaded"],
              ["b", "Unavailable"]
            ]
          )
        }
        assert.strictEqual((yield* executor.stats()).fallbacks, 1)
      })
  )

  it.effect("the next step answers when the first falls back, with provenance", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ script: [Outcome.fail("Overloaded"), Outcome.succeed("from b")] })
      const [a, b] = twoSteps(executor)
      const answer = yield* executor.run({ steps: [a, b] }, (p) => p.generate(ask))
      assert.strictEqual(answer.value.text, "from b")
      assert.strictEqual(answer.step.name, "b")
      assert.strictEqual(answer.stepsTried, 2)
      assert.strictEqual(answer.attempts, 2)
    })
  )

  it.effect("a plan naming one step twice (try it again) counts the second try as a fallback and two steps tried", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ script: [Outcome.fail("Overloaded"), Outcome.succeed("again")] })
      const [a] = twoSteps(executor)
      const answer = yield* executor.run({ steps: [a, a] }, (p) => p.generate(ask))
      assert.strictEqual(answer.value.text, "again")
      // Before, the step was found by identity: the second try was the first step again.
      assert.strictEqual(answer.stepsTried, 2)
      assert.strictEqual(yield* control.calls, 2)
      assert.strictEqual((yield* executor.stats()).fallbacks, 1)
    })
  )

  it.effect("a failure that does not fall back ends the chain with that error", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ script: [Outcome.fail("ContentFilter"), Outcome.succeed()] })
      const [a, b] = twoSteps(executor)
      const error = yield* Effect.flip(executor.run({ steps: [a, b] }, (p) => p.generate(ask)))
      assert.strictEqual(error._tag === "ModelError" && error.reason, "ContentFilter")
      assert.strictEqual(yield* control.calls, 1)
    })
  )

  it.effect("hedging starts the backup after the delay and the first answer wins; the loser is interrupted", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({
        script: [Outcome.succeed("slow", { latency: "10 seconds" }), Outcome.succeed("backup", { latency: "1 second" })]
      })
      const [a, b] = twoSteps(executor)
      const fiber = yield* Effect.forkChild(
        executor.run({ steps: [a, b], hedgeAfter: Duration.seconds(2) }, (p) => p.generate(ask))
      )
      yield* TestClock.adjust("2999 millis")
      assert.isUndefined(fiber.pollUnsafe())
      yield* TestClock.adjust("1 millis")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.value.text, "backup")
      assert.isTrue(answer.hedgeWon)
      yield* Effect.yieldNow
      assert.strictEqual(yield* control.interrupted, 1)
      const stats = yield* executor.stats()
      assert.deepStrictEqual(stats.hedges, { started: 1, won: 1, lost: 0 })
    })
  )

  it.effect("a step started because the one before failed, answering while a hedge runs, is no hedge that won", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup(
        {
          script: [
            Outcome.fail("Overloaded", { latency: "1 second" }),
            Outcome.succeed("fallback", { latency: "10 seconds" }),
            Outcome.succeed("hedge", { latency: "20 seconds" })
          ]
        },
        { timeout: "none" }
      )
      const p = executor.provider
      const steps = [
        executor.stepFor({ ...p, name: "a" }),
        executor.stepFor({ ...p, name: "b" }),
        executor.stepFor({ ...p, name: "c" })
      ] as const
      // a fails at 1 s: b starts (a fallback); c starts 2 s after b (a hedge); b answers at 11 s.
      const fiber = yield* Effect.forkChild(
        executor.run({ steps, hedgeAfter: Duration.seconds(2) }, (provider) => provider.generate(ask))
      )
      yield* TestClock.adjust("11 seconds")
      const answer = yield* Fiber.join(fiber)
      assert.strictEqual(answer.value.text, "fallback")
      assert.deepStrictEqual((yield* executor.stats()).hedges, { started: 1, won: 0, lost: 1 })
      // Before, any answer but the first step's was a hedge that won, whatever started it.
      assert.isFalse(answer.hedgeWon)
    })
  )

  it.effect("a hedge whose delay ends as the total deadline passes is not started: the call has ended", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup(
        { script: [Outcome.hang(), Outcome.succeed("too late", { latency: "1 second" })] },
        { timeout: "none" }
      )
      const [a, b] = twoSteps(executor)
      const fiber = yield* Effect.forkChild(
        Effect.flip(
          executor.run({ steps: [a, b], hedgeAfter: Duration.seconds(2), totalTimeout: Duration.seconds(2) }, (p) =>
            p.generate(ask)
          )
        )
      )
      yield* TestClock.adjust("2 seconds")
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      yield* TestClock.adjust("2 seconds")
      // Before, the hedge's timer woke in the same instant, after the deadline had ended the call,
      // and called the second provider for a caller that was gone.
      assert.strictEqual(yield* control.calls, 1)
      assert.deepStrictEqual((yield* executor.stats()).hedges, { started: 0, won: 0, lost: 0 })
    })
  )

  it.effect("a Retry-After past the total deadline is not waited for: the next step answers at once", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({
        script: [Outcome.fail("RateLimited", { retryAfter: "30 seconds" }), Outcome.succeed("from b")]
      })
      const p = executor.provider
      const retry = Policy.retry({ initialDelay: 100, jitter: 0 })
      const a = executor.stepFor({ ...p, name: "a" }, { retry })
      const b = executor.stepFor({ ...p, name: "b" }, { retry })
      const retried: Array<number> = []
      const fiber = yield* Effect.forkChild(
        executor.run(
          {
            steps: [a, b],
            totalTimeout: Duration.seconds(10),
            onRetry: (event) => Effect.sync(() => retried.push(event.attempt))
          },
          (provider) => provider.generate(ask)
        )
      )
      yield* Effect.yieldNow
      const answer = fiber.pollUnsafe()
      if (answer === undefined) yield* Fiber.interrupt(fiber)
      assert.isDefined(answer, "the call waited for a Retry-After its total deadline cuts")
      const value = yield* Fiber.join(fiber)
      assert.strictEqual(value.value.text, "from b")
      assert.strictEqual(value.step.name, "b")
      assert.strictEqual(yield* control.calls, 2)
      assert.deepStrictEqual(retried, [])
      assert.strictEqual((yield* executor.stats()).retries, 0)
    })
  )

  it.effect(
    "a single step whose Retry-After ends past the total deadline fails at once with the provider's error",
    () =>
      Effect.gen(function* () {
        const { executor, control } = yield* setup({
          script: [Outcome.fail("RateLimited", { retryAfter: "30 seconds" }), Outcome.succeed("late")]
        })
        const fiber = yield* Effect.forkChild(
          Effect.flip(executor.execute(ask, { retry: { initialDelay: 100, jitter: 0 }, totalTimeout: "10 seconds" }))
        )
        yield* Effect.yieldNow
        const done = fiber.pollUnsafe()
        if (done === undefined) yield* Fiber.interrupt(fiber)
        assert.isDefined(done, "the call waited for a Retry-After its total deadline cuts")
        const error = yield* Fiber.join(fiber)
        assert.strictEqual(error._tag === "ModelError" && error.reason, "RateLimited")
        assert.strictEqual(yield* control.calls, 1)
        const stats = yield* executor.stats()
        assert.strictEqual(stats.retries, 0)
        assert.deepStrictEqual(stats.failuresByReason, { RateLimited: 1 })
      })
  )

  it.effect("a total deadline bounds retries and waits (limit total); a wait it would cut is not made", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({
        script: [Outcome.fail("Overloaded"), Outcome.fail("Overloaded"), Outcome.hang()]
      })
      const retry = { maxAttempts: 10, initialDelay: "1 second", jitter: 0 } as const
      // Attempts at 0 s and 1 s; the next wait (2 s) would end at the deadline: the call fails with its error then.
      const early = yield* Effect.forkChild(Effect.flip(executor.execute(ask, { retry, totalTimeout: "3 seconds" })))
      yield* TestClock.adjust("1 second")
      const error = yield* Fiber.join(early)
      assert.strictEqual(error._tag === "ModelError" && error.reason, "Overloaded")
      assert.strictEqual(yield* control.calls, 2)
      // An attempt running when the deadline passes is cut by it.
      const cut = yield* Effect.forkChild(Effect.flip(executor.execute(ask, { retry, totalTimeout: "3 seconds" })))
      yield* TestClock.adjust("3 seconds")
      const timeout = yield* Fiber.join(cut)
      assert.strictEqual(timeout._tag === "TimeoutError" && timeout.limit, "total")
    })
  )

  it.effect("with allowStale, a call its total deadline cuts is answered from the stale cache entry", () =>
    Effect.gen(function* () {
      const cache = yield* ResponseCache.makeMemory({ ttl: "1 second", staleFor: "1 hour" })
      const { executor, control } = yield* setup(
        { script: [Outcome.succeed("cached"), Outcome.hang(), Outcome.hang()] },
        { timeout: "none", guards: { cache } }
      )
      yield* executor.execute(ask)
      yield* TestClock.adjust("2 seconds")
      const stale = yield* Effect.forkChild(executor.execute(ask, { totalTimeout: "3 seconds", allowStale: true }))
      const cut = yield* Effect.forkChild(Effect.flip(executor.execute(ask, { totalTimeout: "3 seconds" })))
      yield* TestClock.adjust("3 seconds")
      assert.strictEqual((yield* Fiber.join(stale)).text, "cached")
      const error = yield* Fiber.join(cut)
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      assert.strictEqual(yield* control.calls, 2, "the second call joined the first one's refresh")
    })
  )

  it.effect("a request naming no model is cached under the provider's default model, so a new default asks again", () =>
    Effect.gen(function* () {
      const cache = yield* ResponseCache.makeMemory({ name: "default-model-key" })
      const before = yield* setup({ model: "m1", respond: () => "from m1" }, { guards: { cache } })
      assert.strictEqual((yield* before.executor.execute(ask)).text, "from m1")
      // The same provider redeployed with another default model, over the same (shared) cache.
      const after = yield* setup({ model: "m2", respond: () => "from m2" }, { guards: { cache } })
      assert.strictEqual((yield* after.executor.execute(ask)).text, "from m2")
      assert.strictEqual(yield* after.control.calls, 1)
      // Naming the model the default stands for is the same request: one entry answers both.
      assert.strictEqual((yield* after.executor.execute({ ...ask, model: "m2" })).text, "from m2")
      assert.strictEqual((yield* before.executor.execute({ ...ask, model: "m1" })).text, "from m1")
      assert.strictEqual(yield* after.control.calls, 1)
      assert.strictEqual(yield* before.control.calls, 1)
    })
  )

  it.effect(
    "a cache guard of one's own that does not apply the deadline it is given still has the call cut by it",
    () =>
      Effect.gen(function* () {
        const cache: NonNullable<Executor.Guards["cache"]> = {
          key: ResponseCache.key,
          getOrCompute: (_key, compute) => Effect.map(compute, (value) => ({ value, source: "miss" as const }))
        }
        const { executor } = yield* setup({ script: [Outcome.hang()] }, { timeout: "none", guards: { cache } })
        const fiber = yield* Effect.forkChild(Effect.flip(executor.execute(ask, { totalTimeout: "3 seconds" })))
        yield* TestClock.adjust("3 seconds")
        const done = fiber.pollUnsafe()
        if (done === undefined) yield* Fiber.interrupt(fiber)
        assert.isDefined(done, "the call outlived its total deadline")
        const error = yield* Fiber.join(fiber)
        assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      })
  )
})

describe("spans", () => {
  it.effect(
    "a traced caller gets Executor.execute and Policy.attempt spans with gen_ai attributes; an untraced one none",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ script: [Outcome.fail("Overloaded"), Outcome.succeed("ok")] })
        const { spans, tracer } = recording()
        yield* executor.execute(ask, { retry: { initialDelay: 1, jitter: 0 } }).pipe(
          Effect.withSpan("caller"),
          Effect.provideService(Tracer.Tracer, tracer),
          Effect.forkChild,
          Effect.flatMap((f) => Effect.andThen(TestClock.adjust(10), Fiber.join(f)))
        )
        const names = spans.map((s) => s.name)
        assert.deepStrictEqual(names, ["caller", "Executor.execute", "Policy.attempt", "Policy.attempt"])
        const execute = spans[1]!
        assert.strictEqual(execute.attributes.get("gen_ai.provider.name"), "mock")
        assert.strictEqual(spans[2]!.parent._tag === "Some" && spans[2]!.parent.value.spanId, execute.spanId)
        spans.length = 0
        yield* executor.execute(ask).pipe(Effect.provideService(Tracer.Tracer, tracer))
        assert.deepStrictEqual(spans.length, 0)
      })
  )

  const parentOf = (span: Tracer.NativeSpan) => (span.parent._tag === "Some" ? span.parent.value.spanId : undefined)
  const exitOf = (span: Tracer.NativeSpan) => {
    assert(span.status._tag === "Ended", `${span.name} ended`)
    return span.status.exit
  }

  it.effect("an attempt's span has the call's gen_ai.* attributes, its answer's, or its error's type", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ script: [Outcome.fail("Overloaded"), Outcome.succeed("ok")] })
      const { spans, tracer } = recording()
      yield* executor.execute(ask, { retry: { initialDelay: 1, jitter: 0 } }).pipe(
        Effect.withSpan("caller"),
        Effect.provideService(Tracer.Tracer, tracer),
        Effect.forkChild,
        Effect.flatMap((f) => Effect.andThen(TestClock.adjust(10), Fiber.join(f)))
      )
      const [failed, answered] = spans.filter((s) => s.name === "Policy.attempt")
      for (const attempt of [failed!, answered!]) {
        assert.strictEqual(attempt.attributes.get("gen_ai.operation.name"), "chat")
        assert.strictEqual(attempt.attributes.get("gen_ai.provider.name"), "mock")
        assert.strictEqual(attempt.attributes.get("gen_ai.request.model"), "mock-model")
      }
      assert.isTrue(Exit.isFailure(exitOf(failed!)))
      assert.strictEqual(failed!.attributes.get("error.type"), "Overloaded")
      assert.isUndefined(failed!.attributes.get("gen_ai.response.model"))
      assert.isTrue(Exit.isSuccess(exitOf(answered!)))
      assert.strictEqual(answered!.attributes.get("gen_ai.response.model"), "mock-model")
      assert.deepStrictEqual(answered!.attributes.get("gen_ai.response.finish_reasons"), ["stop"])
      assert.isNumber(answered!.attributes.get("gen_ai.usage.input_tokens"))
      assert.isNumber(answered!.attributes.get("gen_ai.usage.output_tokens"))

      spans.length = 0
      yield* executor
        .embed({ texts: ["a"] })
        .pipe(Effect.withSpan("caller"), Effect.provideService(Tracer.Tracer, tracer))
      const embedAttempt = spans.find((s) => s.name === "Policy.attempt")!
      assert.strictEqual(embedAttempt.attributes.get("gen_ai.operation.name"), "embeddings")
      assert.isDefined(embedAttempt.attributes.get("gen_ai.response.model"))
    })
  )

  it.effect("a traced stream gets an Executor.stream span and a Policy.attempt span per attempt; untraced, none", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ script: [Outcome.fail("Overloaded"), Outcome.succeed("streamed")] })
      const { spans, tracer } = recording()
      yield* Stream.runDrain(executor.stream(ask, { retry: { initialDelay: 1, jitter: 0 } })).pipe(
        Effect.withSpan("caller"),
        Effect.provideService(Tracer.Tracer, tracer),
        Effect.forkChild,
        Effect.flatMap((f) => Effect.andThen(TestClock.adjust(10), Fiber.join(f)))
      )
      assert.deepStrictEqual(
        spans.map((s) => s.name),
        ["caller", "Executor.stream", "Policy.attempt", "Policy.attempt"]
      )
      const [caller, stream, failed, answered] = spans
      assert.strictEqual(parentOf(stream!), caller!.spanId)
      assert.strictEqual(parentOf(failed!), stream!.spanId)
      assert.strictEqual(parentOf(answered!), stream!.spanId)
      assert.strictEqual(stream!.attributes.get("gen_ai.operation.name"), "chat")
      assert.strictEqual(stream!.attributes.get("gen_ai.provider.name"), "mock")
      assert.isTrue(Exit.isSuccess(exitOf(stream!)))
      assert.isTrue(Exit.isFailure(exitOf(failed!)))
      assert.strictEqual(failed!.attributes.get("error.type"), "Overloaded")
      assert.isTrue(Exit.isSuccess(exitOf(answered!)))
      assert.strictEqual(answered!.attributes.get("gen_ai.operation.name"), "chat")
      assert.strictEqual(answered!.attributes.get("gen_ai.request.model"), "mock-model")
      assert.strictEqual(answered!.attributes.get("gen_ai.response.model"), "mock-model")
      assert.isNumber(answered!.attributes.get("gen_ai.usage.output_tokens"))

      spans.length = 0
      yield* Stream.runDrain(executor.stream(ask)).pipe(Effect.provideService(Tracer.Tracer, tracer))
      assert.strictEqual(spans.length, 0)
    })
  )
})

describe("Executor.execute: an onRetry hook that ignores its interruption", () => {
  // The hook runs in the retry's backoff, on a fiber the caller's fiber awaited as it ended: its caller,
  // cut by the total deadline or interrupted, was answered but its fiber never ended.
  const stuckHook = () => Effect.uninterruptible(Effect.never)
  const options = {
    timeout: "none",
    retry: { maxAttempts: 3, initialDelay: 1, jitter: 0 },
    onRetry: stuckHook
  } as const

  it.effect("the total deadline still ends the call with its TimeoutError when due", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ script: [Outcome.fail("Overloaded")] })
      const fiber = yield* Effect.forkChild(
        Effect.flip(executor.execute(ask, { ...options, totalTimeout: "1 second" })),
        {
          startImmediately: true
        }
      )
      yield* TestClock.adjust("1 second")
      yield* Effect.yieldNow
      const done = fiber.pollUnsafe()
      assert.isDefined(done, "the call's fiber waited for its hook past the total deadline")
      const error = yield* Fiber.join(fiber)
      assert.deepStrictEqual(error._tag === "TimeoutError" && error.limit, "total")
    })
  )

  it.effect("a caller interrupted during the hook is let go at once", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ script: [Outcome.fail("Overloaded")] })
      const fiber = yield* Effect.forkChild(executor.execute(ask, options), { startImmediately: true })
      yield* Effect.yieldNow
      const stopping = yield* Effect.forkChild(Fiber.interrupt(fiber), { startImmediately: true })
      yield* Effect.yieldNow
      assert.isDefined(stopping.pollUnsafe(), "interrupting the call waited for its hook")
    })
  )

  it.effect("a batch interrupted during an item's hook is let go at once", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ script: [Outcome.fail("Overloaded"), Outcome.fail("Overloaded")] })
      const fiber = yield* Effect.forkChild(executor.executeMany([ask, ask], { ...options, concurrency: 2 }), {
        startImmediately: true
      })
      yield* Effect.yieldNow
      const stopping = yield* Effect.forkChild(Fiber.interrupt(fiber), { startImmediately: true })
      yield* Effect.yieldNow
      assert.isDefined(stopping.pollUnsafe(), "interrupting the batch waited for its items' hooks")
    })
  )
})

describe("Executor: a user breaker whose record does not end", () => {
  it.effect("a cancelled call is let go at once, as from an attempt that ignores its interruption", () => {
    // Let go when the test ends, pass or fail, so nothing is left waiting.
    const stuck = Deferred.makeUnsafe<void>()
    return Effect.gen(function* () {
      const memory = yield* CircuitBreaker.makeMemory()
      const breaker: CircuitBreaker.Service = {
        ...memory,
        // Its record (in an `onExit`, uninterruptible) never ends.
        execute: (key, effect) =>
          memory.execute(
            key,
            Effect.onExit(effect, () => Deferred.await(stuck))
          )
      }
      const { executor } = yield* setup({ respond: () => "hi" }, { guards: { breaker } })
      const call = yield* Effect.forkChild(executor.execute({ prompt: "x" }))
      yield* Effect.yieldNow
      assert.isUndefined(call.pollUnsafe())
      const cancelling = yield* Effect.forkChild(Fiber.interrupt(call))
      for (let i = 0; i < 10 && cancelling.pollUnsafe() === undefined; i++) yield* Effect.yieldNow
      assert.isDefined(cancelling.pollUnsafe(), "the cancelled call waited for ever for its breaker's record")
      assert.isTrue(Exit.hasInterrupts((yield* Fiber.await(call)) as Exit.Exit<unknown, unknown>))
      // The same breaker's calls that end still answer
      yield* Deferred.succeed(stuck, undefined)
      assert.strictEqual((yield* executor.execute({ prompt: "x" })).text, "hi")
    }).pipe(Effect.ensuring(Deferred.succeed(stuck, undefined)))
  })
})

describe("Executor: a user breaker whose execute never answers", () => {
  // Its `execute` never runs the attempt: the attempt's own deadline never starts, and only the call's
  // total deadline (or the shutdown) can end the call.
  const breakers = {
    never: { execute: () => Effect.never, admit: () => Effect.never },
    "uninterruptibly never": { execute: () => Effect.uninterruptible(Effect.never), admit: () => Effect.never }
  }
  for (const [name, breaker] of Object.entries(breakers)) {
    it.effect(`${name}: the total deadline ends the call with its TimeoutError when due`, () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "hi" }, { guards: { breaker: breaker as never } })
        const fiber = yield* Effect.forkChild(Effect.flip(executor.execute(ask, { totalTimeout: "1 second" })), {
          startImmediately: true
        })
        yield* TestClock.adjust("999 millis")
        assert.isUndefined(fiber.pollUnsafe())
        yield* TestClock.adjust("1 millis")
        yield* Effect.yieldNow
        assert.isDefined(fiber.pollUnsafe(), "the call waited for its breaker past the total deadline")
        const error = yield* Fiber.join(fiber)
        assert.deepStrictEqual(error._tag === "TimeoutError" && error.limit, "total")
      })
    )
  }
})

describe("Executor: a user breaker whose execute answers without running the call", () => {
  // Its answer went to the caller as the provider's: `execute` answered `undefined` as its response, past the
  // check every provider answer gets, with no call made and nothing counted as failed.
  it.effect("the call's defect naming the breaker's execute, with or without a provider slot", () =>
    Effect.gen(function* () {
      for (const maxConcurrency of [undefined, 2]) {
        for (const answer of [undefined, { text: "made up" }]) {
          const breaker = { execute: () => Effect.succeed(answer), admit: () => Effect.never }
          const { executor, control } = yield* setup(
            { respond: () => "hi", maxConcurrency },
            { guards: { breaker: breaker as never } }
          )
          const exit = yield* Effect.exit(executor.execute(ask, { retry: { maxAttempts: 3, jitter: 0 } }))
          const label = `${maxConcurrency} ${JSON.stringify(answer)}`
          assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause), `${label}: ${String(exit)}`)
          if (Exit.isFailure(exit)) {
            assert.include(
              (Cause.squash(exit.cause) as Error).message,
              "the circuit breaker's execute answered without running the call (step mock)"
            )
          }
          assert.strictEqual(yield* control.calls, 0, label)
          assert.deepStrictEqual((yield* executor.stats()).failuresByReason, { Unknown: 1 }, label)
        }
      }
      // A breaker that runs the call answers as ever.
      const passing = { execute: (_key: string, effect: Effect.Effect<unknown>) => effect, admit: () => Effect.never }
      const { executor } = yield* setup({ respond: () => "hi" }, { guards: { breaker: passing as never } })
      assert.strictEqual((yield* executor.execute(ask)).text, "hi")
    })
  )
})

describe("Executor: a user cache whose getOrCompute never answers", () => {
  // It never calls `bound`: the caller's wait in it was bounded by nothing, neither the total deadline
  // the docs promise ("bounds ... the caller's wait in the cache") nor the executor's shutdown.
  const caches = {
    never: { getOrCompute: () => Effect.never, key: () => "k" },
    "uninterruptibly never": { getOrCompute: () => Effect.uninterruptible(Effect.never), key: () => "k" }
  }
  for (const [name, cache] of Object.entries(caches)) {
    it.effect(`${name}: the total deadline ends the call with its TimeoutError, a grace past it`, () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "hi" }, { guards: { cache: cache as never } })
        const fiber = yield* Effect.forkChild(Effect.flip(executor.execute(ask, { totalTimeout: "1 second" })), {
          startImmediately: true
        })
        // The grace lets a cache that applies `bound` answer stale as the deadline passes.
        yield* TestClock.adjust("1 second")
        assert.isUndefined(fiber.pollUnsafe())
        yield* TestClock.adjust("1 second")
        yield* Effect.yieldNow
        assert.isDefined(fiber.pollUnsafe(), "the call waited for its cache past the total deadline")
        const error = yield* Fiber.join(fiber)
        assert.strictEqual(error._tag, "TimeoutError")
        if (error._tag === "TimeoutError") {
          assert.strictEqual(error.limit, "total")
          assert.strictEqual(Duration.toMillis(error.timeout), 1000)
        }
      })
    )

    it.effect(`${name}: the shutdown ends the call with ShuttingDownError`, () =>
      Effect.gen(function* () {
        const { executor, close } = yield* setup(
          { respond: () => "hi" },
          { guards: { cache: cache as never }, shutdownDeadline: "1 second" }
        )
        const fiber = yield* Effect.forkChild(Effect.flip(executor.execute(ask)), { startImmediately: true })
        const closing = yield* Effect.forkChild(close, { startImmediately: true })
        yield* TestClock.adjust("1 second")
        yield* Effect.yieldNow
        assert.isDefined(fiber.pollUnsafe(), "the shutdown left the call waiting for its cache")
        assert.strictEqual((yield* Fiber.join(fiber))._tag, "ShuttingDownError")
        yield* Fiber.join(closing)
      })
    )
  }

  it.effect("a user cache that applies `bound` still answers stale when the total deadline cuts its computation", () =>
    Effect.gen(function* () {
      // A minimal cache that keeps one stale answer and applies the caller's bound to its computation.
      const stale = { text: "stale" }
      const cache = {
        key: () => "k",
        getOrCompute: (
          _key: string,
          compute: Effect.Effect<unknown, AiError>,
          options?: { readonly bound?: (<B>(wait: Effect.Effect<B, AiError>) => Effect.Effect<B, AiError>) | undefined }
        ) =>
          (options?.bound === undefined ? compute : options.bound(compute)).pipe(
            Effect.map((value): { value: unknown; source: "miss" | "stale" } => ({ value, source: "miss" })),
            Effect.catch((error) =>
              error._tag === "TimeoutError"
                ? Effect.succeed({ value: stale, source: "stale" as const })
                : Effect.fail(error)
            )
          )
      }
      const { executor } = yield* setup({ script: [Outcome.hang()] }, { guards: { cache: cache as never } })
      const fiber = yield* Effect.forkChild(executor.execute(ask, { totalTimeout: "1 second", timeout: "none" }), {
        startImmediately: true
      })
      yield* TestClock.adjust("1 second")
      yield* Effect.yieldNow
      assert.strictEqual((yield* Fiber.join(fiber)).text, "stale")
    })
  )
})

describe("Executor: a user guard that returns no Effect", () => {
  // Handed to the run loop, it was "Fiber.runLoop: Not a valid effect: 42", naming neither the guard nor what it
  // returned (a cache's ended the caller's fiber past every handler); a Promise's rejection went unhandled.
  const rejected = () => {
    const promise = Promise.reject(new Error("store down"))
    return promise
  }
  const cases = [
    ["guards.breaker", { breaker: { execute: () => 42, admit: () => Effect.never } }, "the circuit breaker's execute"],
    ["guards.rateLimit", { rateLimit: { acquire: rejected } }, "the rate limit's acquire"],
    ["guards.cache", { cache: { getOrCompute: () => 42, key: () => "k" } }, "the cache's getOrCompute"]
  ] as const
  for (const [name, guards, named] of cases) {
    it.effect(`${name}: the call fails with a defect naming it and what it returned`, () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "hi" }, { guards: guards as never })
        const exit = yield* Effect.exit(executor.execute(ask))
        assert.isTrue(Exit.isFailure(exit))
        if (Exit.isFailure(exit)) {
          const defect = Cause.squash(exit.cause)
          assert.instanceOf(defect, TypeError)
          assert.include((defect as Error).message, `${named} must return an Effect`)
        }
      })
    )
  }
})

describe("Executor: a user guard that fails with a value that is not an AiError", () => {
  // The call failed with the string itself (no AiError a caller's `catchTag` or the Promise facade knows), its stats
  // counting a failure of reason "undefined"; `Effect.fail(undefined)` was a TypeError out of `isRetryable`.
  const cases = [
    [
      "guards.breaker",
      (failure: unknown) => ({ breaker: { execute: () => Effect.fail(failure), admit: () => Effect.never } }),
      "circuit breaker"
    ],
    ["guards.rateLimit", (failure: unknown) => ({ rateLimit: { acquire: () => Effect.fail(failure) } }), "rate limit"],
    [
      "guards.cache",
      (failure: unknown) => ({ cache: { getOrCompute: () => Effect.fail(failure), key: () => "k" } }),
      "cache"
    ]
  ] as const
  for (const [name, guardsOf, named] of cases) {
    for (const failure of ["store down", undefined]) {
      it.effect(`${name} failing with ${String(failure)}: a ModelError of reason Unknown naming it, counted so`, () =>
        Effect.gen(function* () {
          const { executor } = yield* setup({ respond: () => "hi" }, { guards: guardsOf(failure) as never })
          const error = yield* Effect.flip(executor.execute(ask, { retry: { maxAttempts: 3, jitter: 0 } }))
          assert.strictEqual(error._tag, "ModelError")
          if (error._tag === "ModelError") {
            assert.strictEqual(error.reason, "Unknown")
            assert.include(error.message, `the ${named} failed with a value that is not an AiError`)
            assert.strictEqual(error.cause, failure)
          }
          if (name !== "guards.cache") {
            assert.deepStrictEqual((yield* executor.stats()).failuresByReason, { Unknown: 1 })
          }
        })
      )
    }
  }
})

describe("Executor: a user guard that interrupts itself", () => {
  // The call ended with a bare interruption nobody asked for (counted Interrupted): a provider that interrupts
  // itself is its typed ModelError ("the provider call was interrupted"), and so is a guard now.
  const cases = [
    [{ rateLimit: { acquire: () => Effect.interrupt } }, "the rate limit"],
    [{ breaker: { execute: () => Effect.interrupt, admit: () => Effect.interrupt } }, "the circuit breaker"]
  ] as const
  for (const [guards, named] of cases) {
    it.effect(`${named}: a ModelError of reason Unknown naming it, counted so`, () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "hi" }, { guards: guards as never })
        const error = yield* Effect.flip(executor.execute(ask))
        assert.deepStrictEqual(error._tag === "ModelError" && [error.reason, error.message, error.provider], [
          "Unknown",
          `${named} was interrupted`,
          executor.provider.name
        ])
        assert.deepStrictEqual((yield* executor.stats()).failuresByReason, { Unknown: 1 })
      })
    )
  }
})

describe("Executor: a user cache that answers no { value, source }", () => {
  it.effect("the call fails with a defect naming the cache and what it answered", () =>
    Effect.gen(function* () {
      const cache = { getOrCompute: () => Effect.succeed(null), key: () => "k" }
      const { executor } = yield* setup({ respond: () => "hi" }, { guards: { cache: cache as never } })
      const exit = yield* Effect.exit(executor.execute(ask))
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) {
        const defect = Cause.squash(exit.cause)
        assert.instanceOf(defect, TypeError)
        // Before: "Cannot destructure property 'source' of 'object null' as it is null".
        assert.include((defect as Error).message, "the cache's getOrCompute must answer { value, source }, got null")
      }
    })
  )
})

describe("Executor: a user cache whose key throws", () => {
  // Its throw was the call's defect named only by its own message: no word of the cache or the step.
  it.effect("the call's defect names the cache's key and the step", () =>
    Effect.gen(function* () {
      const memory = yield* ResponseCache.makeMemory({ name: "key-throws" })
      const cache = {
        ...memory,
        key: () => {
          throw new Error("key bug")
        }
      }
      const { executor } = yield* setup({ respond: () => "hi" }, { guards: { cache } })
      const exit = yield* Effect.exit(executor.execute(ask))
      assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause))
      if (Exit.isFailure(exit)) {
        const defect = Cause.squash(exit.cause) as Error
        assert.include(defect.message, `the cache's key threw (step ${executor.provider.name}): Error: key bug`)
        assert.strictEqual((defect.cause as Error).message, "key bug")
      }
    })
  )
})

describe("Executor: a user guard that throws", () => {
  // Its throw is a defect of the call (the user's bug, not its provider's failure), which the step's stats counted
  // as "Interrupted" (and in no timeouts): nobody interrupted anything.
  const cases = [
    [
      "guards.breaker",
      {
        breaker: {
          execute: () => {
            throw new Error("breaker bug")
          },
          admit: () => Effect.never
        }
      },
      "the circuit breaker's execute threw (step mock): Error: breaker bug"
    ],
    [
      "guards.rateLimit",
      {
        rateLimit: {
          acquire: () => {
            throw new Error("limit bug")
          }
        }
      },
      "the rate limit's acquire threw (step mock): Error: limit bug"
    ]
  ] as const
  for (const [name, guards, message] of cases) {
    it.effect(`${name}: the call's defect naming it, counted as an Unknown failure, not Interrupted`, () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "hi" }, { guards: guards as never })
        const exit = yield* Effect.exit(executor.execute(ask))
        assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause))
        // It was the guard's own throw, naming neither the guard nor the step.
        if (Exit.isFailure(exit)) assert.include((Cause.squash(exit.cause) as Error).message, message)
        assert.deepStrictEqual((yield* executor.stats()).failuresByReason, { Unknown: 1 })
      })
    )
  }
})
