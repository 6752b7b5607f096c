/**
 * The executor's entry checks and bookkeeping: refusals counted and named, options changed in
 * place, hooks that end themselves, plans and steps built in code.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Fiber, Layer, Stream, Tracer } from "effect"
import { TestClock } from "effect/testing"
import { type AiError, ModelError } from "../src/AiError.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Domain from "../src/Domain.js"
import * as Executor from "../src/Executor.js"
import { type GenerateRequest, ModelProvider, type Service, type StreamPart, usage } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import { Outcome } from "../src/Model/Mock.js"
import * as Policy from "../src/Policy.js"
import * as Refusal from "../src/executor/refusal.js"
import { setup } from "./utils/executor.js"
import { captureLogs } from "./utils/logs.js"
import { recording } from "./utils/tracer.js"

const ask = { prompt: "hello" }
const fieldOf = (error: AiError) => (error._tag === "ModelError" ? `${error.reason} ${error.field}` : error._tag)

describe("executor refusals", () => {
  it.effect("an executeMany refused for its options or requests is counted, as execute's refusals are", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      const refusals = [
        executor.executeMany([ask], { concurrency: 0 }),
        executor.executeMany([ask], { timeout: -1 as never }),
        executor.executeMany([ask], { maxRequests: 1.5 }),
        executor.executeMany([ask, ask], { maxRequests: 1 }),
        executor.executeMany(5 as never)
      ]
      for (const refusal of refusals) {
        const error = yield* Effect.flip(refusal)
        assert.strictEqual(error.reason, "InvalidRequest")
        assert.strictEqual(error.provider, "mock", "named after the provider it was meant for, as execute's")
      }
      assert.strictEqual(yield* control.calls, 0)
      const stats = yield* executor.stats()
      assert.strictEqual(stats.total, refusals.length)
      assert.deepStrictEqual(stats.failuresByReason, { InvalidRequest: refusals.length })
    })
  )

  it.effect("a refusal named after its provider keeps the error's model, status, retryAfter, limit and cause", () =>
    Effect.gen(function* () {
      const { executor, stats } = yield* setup()
      const { refuse } = Refusal.make(stats, executor.provider)
      const cause = new Error("underneath")
      const error = new ModelError({
        reason: "RateLimited",
        message: "full",
        model: "m-1",
        status: 429,
        retryAfter: Duration.seconds(3),
        field: "x",
        rateLimit: "requests",
        limit: 10,
        cause
      })
      const refused = refuse(error, executor.provider, undefined)
      assert.strictEqual(refused.provider, "mock")
      assert.strictEqual(refused.reason, "RateLimited")
      assert.strictEqual(refused.message, "full")
      assert.strictEqual(refused.model, "m-1")
      assert.strictEqual(refused.status, 429)
      assert.strictEqual(Duration.toMillis(refused.retryAfter!), 3000)
      assert.strictEqual(refused.field, "x")
      assert.strictEqual(refused.rateLimit, "requests")
      assert.strictEqual(refused.limit, 10)
      assert.strictEqual(refused.cause, cause)
    })
  )
})

describe("per-call options", () => {
  it.effect("options that throw when read are refused naming the field, with what was thrown as the cause", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      const thrown = new Error("vault unavailable")
      const options = {
        get timeout(): number {
          throw thrown
        }
      }
      const refusals: ReadonlyArray<Effect.Effect<unknown, AiError>> = [
        executor.execute(ask, options),
        executor.executeWithRetry(ask, options),
        executor.embed({ texts: ["x"] }, options),
        executor.executeMany([ask], options)
      ]
      for (const refusal of refusals) {
        const error = yield* Effect.flip(refusal)
        assert.strictEqual(fieldOf(error), "InvalidRequest timeout")
        assert.strictEqual(error._tag === "ModelError" && error.cause, thrown)
      }
      assert.strictEqual(yield* control.calls, 0)
    })
  )

  it.effect("a stream's or resolve's options that throw when read keep what was thrown as the refusal's cause", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      const thrown = new Error("vault unavailable")
      const options = {
        get timeout(): number {
          throw thrown
        }
      }
      const streamOptions = {
        get idleTimeout(): number {
          throw thrown
        }
      }
      const refusals: ReadonlyArray<[Effect.Effect<unknown, AiError>, string]> = [
        [Stream.runDrain(executor.stream(ask, streamOptions)), "idleTimeout"],
        [executor.resolve(options), "timeout"]
      ]
      for (const [refusal, field] of refusals) {
        const error = yield* Effect.flip(refusal)
        assert.strictEqual(fieldOf(error), `InvalidRequest ${field}`)
        assert.strictEqual(error._tag === "ModelError" && error.cause, thrown)
      }
      assert.strictEqual(yield* control.calls, 0)
    })
  )

  it.effect("a retry object changed in place between two calls is read again", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({
        script: [
          Outcome.fail("Overloaded"),
          Outcome.fail("Overloaded"),
          Outcome.fail("Overloaded"),
          Outcome.fail("Overloaded"),
          Outcome.succeed("third try")
        ]
      })
      const retry: { maxAttempts: number; initialDelay: number; jitter: number } = {
        maxAttempts: 2,
        initialDelay: 100,
        jitter: 0
      }
      const options: Executor.ExecuteOptions = { retry }
      const first = yield* Effect.forkChild(Effect.flip(executor.execute(ask, options)))
      yield* TestClock.adjust("1 second")
      const failed = yield* Fiber.join(first)
      assert.strictEqual(failed._tag === "ModelError" && failed.reason, "Overloaded")
      assert.strictEqual(yield* control.calls, 2)
      retry.maxAttempts = 3
      const second = yield* Effect.forkChild(executor.execute(ask, options))
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(second)).text, "third try")
      assert.strictEqual(yield* control.calls, 5, "the second call made 3 attempts, as its policy now says")
      // And a change that makes it wrong is refused, naming the field.
      retry.maxAttempts = 0
      const error = yield* Effect.flip(executor.execute(ask, options))
      assert.strictEqual(error._tag === "ModelError" && error.field, "retry.maxAttempts")
    })
  )
})

describe("onRetry", () => {
  it.effect("an onRetry that interrupts itself does not interrupt the call: logged once, the retry goes on", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({
        script: [Outcome.fail("Overloaded"), Outcome.fail("Overloaded"), Outcome.succeed("third try")]
      })
      const logs = yield* captureLogs
      const fiber = yield* Effect.forkChild(
        executor
          .execute(ask, { retry: { maxAttempts: 3, initialDelay: 100, jitter: 0 }, onRetry: () => Effect.interrupt })
          .pipe(Effect.provide(logs.layer))
      )
      yield* TestClock.adjust("1 second")
      const exit = yield* Fiber.await(fiber)
      assert.strictEqual(exit._tag, "Success", String(exit))
      const warnings = logs.lines.filter((line) => line.includes("onRetry callback failed"))
      assert.strictEqual(warnings.length, 1, logs.lines.join("\n"))
    })
  )
})

describe("plans built in code", () => {
  it.effect(
    "a step's timeout, tokens or retry, a total deadline or hedgeAfter that is no valid value is refused naming it",
    () =>
      Effect.gen(function* () {
        const { executor, control } = yield* setup({ respond: () => "hi" })
        const p = executor.provider
        const a = executor.stepFor({ ...p, name: "a" })
        const b = executor.stepFor({ ...p, name: "b" })
        const cases: ReadonlyArray<readonly [Executor.Plan<typeof p, unknown>, string]> = [
          [{ steps: [executor.stepFor(p, { timeout: Duration.millis(-5) })] }, "steps[0].timeout"],
          [{ steps: [a, executor.stepFor(p, { timeout: Duration.zero })] }, "steps[1].timeout"],
          [{ steps: [executor.stepFor(p, { timeout: Duration.millis(Number.NaN) })] }, "steps[0].timeout"],
          [{ steps: [executor.stepFor(p, { timeout: 5000 as never })] }, "steps[0].timeout"],
          [{ steps: [executor.stepFor(p, { tokens: Number.NaN })] }, "steps[0].tokens"],
          [{ steps: [a, executor.stepFor(p, { tokens: -1 })] }, "steps[1].tokens"],
          [
            { steps: [executor.stepFor(p, { retry: { ...Policy.retry(), maxAttempts: 0 } })] },
            "steps[0].retry.maxAttempts"
          ],
          [{ steps: [a], totalTimeout: Duration.millis(-5) }, "totalTimeout"],
          [{ steps: [a], totalTimeout: Duration.zero }, "totalTimeout"],
          [{ steps: [a, b], hedgeAfter: Duration.millis(-5) }, "hedgeAfter"],
          // (`Duration.millis(NaN)` is zero: a hedge after zero starts the backups with the first step.)
          [{ steps: [a, b], hedgeAfter: 100 as never }, "hedgeAfter"],
          [{ steps: [] as never }, "steps"],
          [{ steps: [a, null] as never }, "steps[1]"],
          [{ steps: [{ ...a, name: undefined }] as never }, "steps[0].name"],
          // Labels of the step's series: a number there ended every Prometheus scrape of the registry
          // with a TypeError, for as long as the series lived.
          [{ steps: [{ ...a, name: "" }] }, "steps[0].name"],
          [{ steps: [a, { ...b, domain: 5 as never }] }, "steps[1].domain"],
          [{ steps: [{ ...a, domain: "" }] }, "steps[0].domain"],
          [{ steps: [{ ...a, statsName: {} as never }] }, "steps[0].statsName"],
          // Hooks and a cache the engine calls: one that is no function was a defect of the call.
          // A primitive is frozen: taken for a policy this library had checked, it reached the retry driver.
          [{ steps: [executor.stepFor(p, { retry: true as never })] }, "steps[0].retry"],
          [{ steps: [executor.stepFor(p, { retry: 3 as never })] }, "steps[0].retry"],
          // Guards the engine calls at each attempt: one without its method was a defect of the call.
          [{ steps: [{ ...a, rateLimit: {} as never }] }, "steps[0].rateLimit.acquire"],
          [{ steps: [{ ...a, breaker: { execute: () => Effect.void } as never }] }, "steps[0].breaker.admit"],
          [{ steps: [{ ...a, slot: null as never }] }, "steps[0].slot"],
          // Claimed as the name's limit unchecked: 0 queued every call of that name for ever after.
          [{ steps: [{ ...a, name: "zero-slots", maxConcurrency: 0 }] }, "steps[0].maxConcurrency"],
          [{ steps: [{ ...a, name: "negative-slots", maxConcurrency: -1 }] }, "steps[0].maxConcurrency"],
          [{ steps: [{ ...a, name: "fractional-slots", maxConcurrency: 1.5 }] }, "steps[0].maxConcurrency"],
          // Called where each attempt settles, in plain JavaScript on the fused path.
          [{ steps: [{ ...a, answerIssue: "no" as never }] }, "steps[0].answerIssue"],
          [{ steps: [a], onEnded: 5 as never }, "onEnded"],
          [{ steps: [a], onRetry: "log" as never }, "onRetry"],
          [{ steps: [a], usageOf: {} as never }, "usageOf"],
          [{ steps: [a], cache: { key: "k", allowStale: false } as never }, "cache"],
          [
            { steps: [a], cache: { guard: { getOrCompute: () => Effect.void }, key: 5, allowStale: false } as never },
            "cache"
          ]
        ]
        for (const [plan, field] of cases) {
          const error = yield* Effect.flip(executor.run(plan, (target) => target.generate(ask)))
          assert.strictEqual(fieldOf(error), `InvalidRequest ${field}`)
        }
        // One that throws is its attempt's typed failure, on the fused path too: it left the call hanging.
        const throwing = {
          ...a,
          answerIssue: () => {
            throw new Error("check bug")
          }
        }
        const thrown = yield* Effect.flip(executor.run({ steps: [throwing] }, (target) => target.generate(ask)))
        assert.deepStrictEqual(thrown._tag === "ModelError" && [thrown.reason, thrown.provider], ["Unknown", "a"])
        // A call that is no function would fail every attempt as its provider's failure (tripping its breaker).
        const noCall = yield* Effect.flip(executor.run({ steps: [a] }, undefined as never))
        assert.strictEqual(fieldOf(noCall), "InvalidRequest call")
        assert.strictEqual(yield* control.calls, 1, "the throwing check's call only")
        // The names refused above took no limit: a later step on them runs.
        const later = yield* executor.run({ steps: [{ ...a, name: "zero-slots" }] }, (target) => target.generate(ask))
        assert.strictEqual(later.value.text, "hi")
        // Valid ones still run: no deadline, an infinite one, a checked policy, whole tokens.
        const fine = executor.stepFor(p, { timeout: "none", retry: Policy.retry({ maxAttempts: 2 }), tokens: 12 })
        const answer = yield* executor.run(
          { steps: [fine, executor.stepFor(p, { timeout: Duration.infinity })], totalTimeout: Duration.seconds(5) },
          (target) => target.generate(ask)
        )
        assert.strictEqual(answer.value.text, "hi")
      })
  )
})

describe("provider slots by name", () => {
  // An embed's step states no limit (`maxConcurrency: undefined`, to skip the slot), which the engine took
  // as "the name's limit": every embed queued on the slots of its provider's generations, one by one.
  it.effect("embeddings skip the provider's slots: they run beside its generations, and beside each other", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ latency: "1 second", maxConcurrency: 1 })
      const calls = yield* Effect.forkChild(
        Effect.all(
          [
            executor.execute(ask),
            executor.embed({ texts: ["a"] }),
            executor.embed({ texts: ["b"] }),
            executor.embed({ texts: ["c"] })
          ],
          { concurrency: "unbounded" }
        ),
        { startImmediately: true }
      )
      yield* TestClock.adjust("10 millis")
      assert.strictEqual(yield* control.inFlight, 4, "one generation and three embeddings at once")
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(calls)).length, 4)
    })
  )

  it.effect(
    "one name given two maxConcurrency limits is refused naming both; a step stating none shares the name's",
    () =>
      Effect.gen(function* () {
        const { executor, control } = yield* setup({ latency: "1 second", maxConcurrency: 1 })
        const p = executor.provider
        // Another provider object under the executor's provider's name, with another limit.
        const wider = { ...p, maxConcurrency: 5 }
        const viaOption = yield* Effect.flip(executor.execute(ask, { provider: wider }))
        assert.strictEqual(fieldOf(viaOption), "InvalidRequest provider.maxConcurrency")
        assert.include(viaOption.message, "5")
        assert.include(viaOption.message, "1")
        const viaPlan = yield* Effect.flip(
          executor.run({ steps: [executor.stepFor({ ...p, name: "other" }), executor.stepFor(wider)] }, (target) =>
            target.generate(ask)
          )
        )
        assert.strictEqual(fieldOf(viaPlan), "InvalidRequest steps[1].maxConcurrency")
        assert.strictEqual(yield* control.calls, 0)

        // A step on that name stating no limit queues on the name's one slot, not beside it.
        const unstated = { ...p, maxConcurrency: undefined }
        const fiber = yield* Effect.forkChild(
          Effect.all(
            [executor.execute(ask), executor.run({ steps: [executor.stepFor(unstated)] }, (t) => t.generate(ask))],
            { concurrency: "unbounded" }
          )
        )
        yield* TestClock.adjust("1 second")
        assert.isUndefined(fiber.pollUnsafe(), "the two calls ran at once on a provider serving one")
        yield* TestClock.adjust("1 second")
        assert.strictEqual((yield* Fiber.join(fiber)).length, 2)
      })
  )

  // Every name given a limit was kept for the executor's life, its slots with it: an application building a
  // provider per tenant (or per request) grew the engine's maps for ever, and a tenant's provider rebuilt
  // with another limit was refused until the process restarted.
  it.effect(
    "a name's limit and slots are held while its calls run, then let go: the name may come back with another",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ latency: "1 second" })
        const tenant = (maxConcurrency: number) => ({ ...executor.provider, name: "tenant-1", maxConcurrency })
        const first = yield* Effect.forkChild(executor.execute(ask, { provider: tenant(1) }), {
          startImmediately: true
        })
        yield* TestClock.adjust("10 millis")
        // One name, one set of slots, one limit, while a call of it runs.
        const refused = yield* Effect.flip(executor.execute(ask, { provider: tenant(2) }))
        assert.strictEqual(fieldOf(refused), "InvalidRequest provider.maxConcurrency")
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(first)
        // Its calls ended: the name comes back with a limit of 2, which applies.
        const three = yield* Effect.forkChild(
          Effect.all(
            [1, 2, 3].map(() => executor.execute(ask, { provider: tenant(2) })),
            { concurrency: "unbounded" }
          ),
          { startImmediately: true }
        )
        yield* TestClock.adjust("1 second")
        assert.isUndefined(three.pollUnsafe(), "two at once, the third queued")
        yield* TestClock.adjust("1 second")
        assert.strictEqual((yield* Fiber.join(three)).length, 3)
        // A stream's slots as well: held while it streams, let go once it has ended.
        const streaming = yield* Effect.forkChild(Stream.runDrain(executor.stream(ask, { provider: tenant(3) })), {
          startImmediately: true
        })
        yield* TestClock.adjust("10 millis")
        const whileStreaming = yield* Effect.flip(Stream.runDrain(executor.stream(ask, { provider: tenant(4) })))
        assert.strictEqual(fieldOf(whileStreaming), "InvalidRequest provider.maxConcurrency")
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(streaming)
        const after = yield* Effect.forkChild(Stream.runDrain(executor.stream(ask, { provider: tenant(4) })))
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(after)
      })
  )

  it.effect("one plan, or one stream, naming one provider with two limits is refused naming the second", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup()
      const twin = (maxConcurrency: number) => ({ ...executor.provider, name: "twin", maxConcurrency })
      const viaPlan = yield* Effect.flip(
        executor.run(
          {
            steps: [
              executor.stepFor(twin(1)),
              executor.stepFor({ ...executor.provider, name: "other" }),
              executor.stepFor(twin(2))
            ]
          },
          (target) => target.generate(ask)
        )
      )
      assert.strictEqual(fieldOf(viaPlan), "InvalidRequest steps[2].maxConcurrency")
      const viaStream = yield* Effect.flip(
        Stream.runDrain(executor.stream(ask, { steps: [{ provider: twin(1) }, { provider: twin(2) }] }))
      )
      assert.strictEqual(fieldOf(viaStream), "InvalidRequest steps[1].provider.maxConcurrency")
      assert.strictEqual(yield* control.calls, 0)
      // The same limit twice is one provider tried twice.
      yield* executor.run({ steps: [executor.stepFor(twin(1)), executor.stepFor(twin(1))] }, (target) =>
        target.generate(ask)
      )
    })
  )

  it.effect("a stream's provider, or a step's, under a name given another maxConcurrency is refused naming it", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ maxConcurrency: 1 })
      const p = executor.provider
      const wider = { ...p, maxConcurrency: 5 }
      const cases: ReadonlyArray<[Executor.StreamOptions, string]> = [
        [{ provider: wider }, "provider.maxConcurrency"],
        [{ provider: { ...p, maxConcurrency: 0 } }, "provider.maxConcurrency"],
        [{ steps: [{ provider: { ...p, name: "other" } }, { provider: wider }] }, "steps[1].provider.maxConcurrency"],
        [{ steps: [{ provider: { ...p, name: "other", maxConcurrency: 1.5 } }] }, "steps[0].provider.maxConcurrency"]
      ]
      for (const [options, field] of cases) {
        const error = yield* Effect.flip(Stream.runDrain(executor.stream(ask, options)))
        assert.strictEqual(fieldOf(error), `InvalidRequest ${field}`)
      }
      assert.include((yield* Effect.flip(Stream.runDrain(executor.stream(ask, { provider: wider })))).message, "5")
      assert.strictEqual(yield* control.calls, 0)
      // The same limit, or none stated, streams.
      yield* Stream.runDrain(executor.stream(ask, { provider: { ...p } }))
      yield* Stream.runDrain(executor.stream(ask, { steps: [{ provider: { ...p, maxConcurrency: undefined } }] }))
      assert.strictEqual(yield* control.calls, 2)
    })
  )
})

describe("stream plans built in code (runStream)", () => {
  const streamPlan = (
    executor: Executor.Service,
    fields: Partial<Record<keyof Executor.StreamPlan, unknown>> = {}
  ): Executor.StreamPlan =>
    ({
      steps: [executor.stepFor(executor.provider)],
      firstChunkTimeout: undefined,
      idleTimeout: undefined,
      totalTimeout: undefined,
      ...fields
    }) as Executor.StreamPlan

  it.effect("an empty plan, a bad deadline, step, resume or hook, or a bad request is refused naming it", () =>
    Effect.gen(function* () {
      const { executor, control } = yield* setup({ respond: () => "hi" })
      const p = executor.provider
      const cases: ReadonlyArray<readonly [Executor.StreamPlan, string]> = [
        [streamPlan(executor, { steps: [] }), "steps"],
        [streamPlan(executor, { steps: undefined }), "steps"],
        [streamPlan(executor, { firstChunkTimeout: Duration.millis(-5) }), "firstChunkTimeout"],
        [streamPlan(executor, { idleTimeout: Duration.zero }), "idleTimeout"],
        [streamPlan(executor, { totalTimeout: 5000 }), "totalTimeout"],
        [streamPlan(executor, { steps: [executor.stepFor(p, { timeout: Duration.millis(-1) })] }), "steps[0].timeout"],
        [streamPlan(executor, { steps: [executor.stepFor(p, { tokens: Number.NaN })] }), "steps[0].tokens"],
        [
          streamPlan(executor, { steps: [executor.stepFor(p, { retry: { ...Policy.retry(), maxAttempts: 0 } })] }),
          "steps[0].retry.maxAttempts"
        ],
        [streamPlan(executor, { steps: [{ ...executor.stepFor(p), prepare: "model-b" }] }), "steps[0].prepare"],
        [streamPlan(executor, { resume: { maxResumes: 0, minOverlap: 4, instruction: "go on" } }), "resume.maxResumes"],
        [
          streamPlan(executor, { resume: { maxResumes: 1, minOverlap: Number.NaN, instruction: "go on" } }),
          "resume.minOverlap"
        ],
        [streamPlan(executor, { resume: { maxResumes: 1, minOverlap: 4 } }), "resume.instruction"],
        [streamPlan(executor, { onRetry: "log" }), "onRetry"]
      ]
      for (const [plan, field] of cases) {
        const error = yield* Effect.flip(Stream.runCollect(executor.runStream(plan, ask)))
        assert.strictEqual(fieldOf(error), `InvalidRequest ${field}`)
      }
      const empty = yield* Effect.flip(Stream.runCollect(executor.runStream(streamPlan(executor), { prompt: "" })))
      assert.strictEqual(empty._tag === "ModelError" && empty.reason, "InvalidRequest")
      assert.strictEqual(yield* control.calls, 0)
      // A valid plan still streams.
      const parts = yield* Stream.runCollect(
        executor.runStream(streamPlan(executor, { totalTimeout: Duration.seconds(5) }), ask)
      )
      assert.strictEqual(parts.at(-1)?._tag, "Finish")
    })
  )

  it.effect("a step's prepare answering no valid request ends the attempt naming it, as stream's does", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({}, { requestLimits: { maxInputChars: 100 } })
      const sent: Array<unknown> = []
      const other: Service = {
        name: "other",
        defaultModel: "m",
        generate: () => Effect.die("unused"),
        embed: () => Effect.die("unused"),
        stream: (request: GenerateRequest) => {
          sent.push(request)
          return Stream.make<[StreamPart, StreamPart]>(
            { _tag: "TextDelta", text: "ok" },
            { _tag: "Finish", finishReason: "stop", usage: usage(1, 1), provider: "other", model: "m" }
          )
        }
      }
      const answers: ReadonlyArray<readonly [string, () => unknown]> = [
        ["nothing", () => undefined],
        ["a prompt that is no string", () => ({ prompt: 42 })],
        ["no conversation", () => ({})],
        ["a misspelt field", () => ({ prompt: "hi", temprature: 1 })],
        ["a request over the limits", () => ({ prompt: "x".repeat(1_000) })]
      ]
      const planWith = (prepare: (r: GenerateRequest) => GenerateRequest) =>
        streamPlan(executor, { steps: [{ ...executor.stepFor(other), prepare }] })
      for (const [name, prepare] of answers) {
        // Traced too: its span read the answer's model, a TypeError on `undefined`.
        for (const traced of [false, true]) {
          const run = Stream.runCollect(executor.runStream(planWith(prepare as never), ask))
          const error = yield* Effect.flip(traced ? Effect.withSpan(run, "caller") : run)
          assert.strictEqual(fieldOf(error), "InvalidRequest steps[0].prepare", `${name}: ${error.message}`)
        }
      }
      assert.deepStrictEqual(sent, [])
      // A valid answer is sent as it is.
      const parts = yield* Stream.runCollect(
        executor.runStream(
          planWith((r) => ({ ...r, system: "be brief" })),
          ask
        )
      )
      assert.strictEqual(parts.at(-1)?._tag, "Finish")
      assert.deepStrictEqual(sent, [{ ...ask, system: "be brief" }])
    })
  )
})

describe("providers without a name", () => {
  it.effect("an executor's provider, or a registry's, whose name is no non-empty string is refused naming it", () =>
    Effect.gen(function* () {
      const { provider } = yield* Mock.make()
      // Its name labels every series of its calls: `undefined` or a number there made every later
      // Prometheus scrape of the registry die with a TypeError; "" is no name to key its breaker by.
      for (const name of [undefined, 5, ""]) {
        const nameless = Layer.succeed(ModelProvider, { ...provider, name } as never)
        const executor = yield* Effect.flip(Layer.build(Executor.layerWithStats().pipe(Layer.provide(nameless))))
        assert.deepStrictEqual([executor._tag, executor.path], ["OptionError", "provider.name"], String(name))
        const registry = yield* Effect.flip(Layer.build(Domain.layerProviders({ main: nameless })))
        assert.deepStrictEqual([registry._tag, registry.path], ["OptionError", "providers.main.name"], String(name))
      }
    })
  )
})

describe("tracked", () => {
  it.effect("an effect that is no Effect, or a timeout no positive Duration, is refused naming it, not a defect", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup()
      const wait = Effect.as(Effect.sleep("1 second"), "done")
      for (const timeout of [
        Duration.millis(-5),
        Duration.zero,
        Duration.millis(Number.NaN),
        5000,
        "5 seconds",
        null
      ]) {
        const error = yield* Effect.flip(executor.tracked(wait, timeout as never))
        assert.strictEqual(fieldOf(error as AiError), "InvalidRequest timeout", String(timeout))
      }
      // Something that is no Effect ended the caller's fiber past every handler ("Not a valid effect").
      for (const effect of [42, null, Promise.resolve(1)]) {
        const error = yield* Effect.flip(executor.tracked(effect as never))
        assert.strictEqual(fieldOf(error as AiError), "InvalidRequest effect", String(effect))
      }
      const fiber = yield* Effect.forkChild(executor.tracked(wait, Duration.seconds(5)))
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* Fiber.join(fiber), "done")
      const none = yield* Effect.forkChild(executor.tracked(wait))
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* Fiber.join(none), "done")
    })
  )
})

describe("plans built in code: an onEnded that throws", () => {
  // It ran in the call's finalizer: its throw became a defect of a call that had answered.
  it.effect("the call still answers, and one that fails keeps its own error", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup({ script: [Outcome.fail("Overloaded"), Outcome.succeed("second")] })
      const p = executor.provider
      const plan: Executor.Plan<typeof p, unknown> = {
        steps: [executor.stepFor({ ...p, name: "ended-a" }), executor.stepFor({ ...p, name: "ended-b" })],
        onEnded: () => {
          throw new Error("tally broke")
        }
      }
      const answer = yield* executor.run(plan, (target) => target.generate(ask))
      assert.strictEqual((answer.value as { text: string }).text, "second")
      const failing: Executor.Plan<typeof p, unknown> = {
        ...plan,
        steps: [executor.stepFor({ ...p, name: "ended-c" }), executor.stepFor({ ...p, name: "ended-d" })]
      }
      const error = yield* Effect.flip(
        executor.run(failing, () => Effect.fail(new ModelError({ reason: "ContentFilter", message: "no" })))
      )
      assert.strictEqual(error._tag === "ModelError" && error.reason, "ContentFilter")
    })
  )
})

describe("plans built in code: a step's slot that throws or returns no Effect", () => {
  // Its defect ran inside the attempt, which made it a ModelError Unknown "the provider call failed unexpectedly":
  // the provider blamed (its breaker counting it), the step retried, the next step tried.
  const slots = [
    [
      "throws",
      () => {
        throw new Error("slot bug")
      },
      "the slot's withPermit threw (step slot-a): Error: slot bug"
    ],
    ["returns no Effect", () => 42, "the slot's withPermit must return an Effect, got a number"]
  ] as const
  for (const [name, withPermit, message] of slots) {
    it.effect(`one that ${name} is the call's defect naming it: not retried, no fallback, no provider call`, () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "hi" })
        const breaker = yield* CircuitBreaker.makeMemory({ failMax: 1 })
        const p = executor.provider
        let calls = 0
        const a = executor.stepFor({ ...p, name: "slot-a" })
        const plan: Executor.Plan<typeof p, unknown> = {
          steps: [
            { ...a, slot: { withPermit } as never, breaker, retry: { ...a.retry!, maxAttempts: 3 } },
            executor.stepFor({ ...p, name: "slot-b" })
          ]
        }
        const exit = yield* Effect.exit(
          executor.run(plan, (target) => {
            calls++
            return target.generate(ask)
          })
        )
        assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause), "the call did not die")
        if (Exit.isFailure(exit)) assert.include((Cause.squash(exit.cause) as Error).message, message)
        assert.strictEqual(calls, 0)
        assert.deepStrictEqual((yield* executor.stats()).failuresByReason, { Unknown: 1 })
        assert.strictEqual(yield* breaker.state("slot-a"), "closed", "the provider's breaker counted the slot's bug")
      })
    )
  }
})

describe("plans built in code: a telemetry that throws", () => {
  // Read for a traced caller's attempt span, its throw was a defect of a call that had answered.
  const broken = {
    requestModel: [
      "requestModel",
      {
        operation: "chat",
        requestModel: () => {
          throw new Error("telemetry bug")
        },
        response: () => ({})
      }
    ],
    response: [
      "response",
      {
        operation: "chat",
        requestModel: () => "m",
        response: () => {
          throw new Error("telemetry bug")
        }
      }
    ]
  } as const
  for (const [name, telemetry] of Object.values(broken)) {
    it.effect(`one whose ${name} throws: the call keeps its answer, the throw logged once`, () =>
      Effect.gen(function* () {
        const { executor } = yield* setup({ respond: () => "hi" })
        const p = executor.provider
        const plan: Executor.Plan<typeof p, unknown> = {
          steps: [executor.stepFor({ ...p, name: `telemetry-${name}` })],
          telemetry
        }
        const { spans, tracer } = recording()
        const logs = yield* captureLogs
        const answers = yield* Effect.forEach([1, 2], () =>
          executor
            .run(plan, (target) => target.generate(ask))
            .pipe(Effect.withSpan("caller"), Effect.provideService(Tracer.Tracer, tracer))
        ).pipe(Effect.provide(logs.layer))
        assert.deepStrictEqual(
          answers.map((answer) => (answer.value as { text: string }).text),
          ["hi", "hi"]
        )
        assert.isTrue(spans.some((span) => span.name === "Policy.attempt"))
        assert.strictEqual(logs.lines.filter((line) => line.includes("telemetry")).length, 1, logs.lines.join("\n"))
      })
    )
  }
})
