/**
 * The fused call path (src/policy/fused.ts) against the full one (src/policy/engine.ts):
 * the same requests through the same policies must give the same outcomes, the same
 * statistics and the same breaker transitions, whichever path runs them.
 *
 * An untraced caller takes the fused path; a traced one (in a span, with a tracer the
 * application provided) takes the full one. `Fused.prototype.begin` is counted to prove which path ran.
 */
import { assert, describe, it } from "@effect/vitest"
import {
  Clock,
  Context,
  Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Option,
  Result,
  Scheduler,
  Scope,
  Stream,
  Tracer
} from "effect"
import { TestClock } from "effect/testing"
import { vi } from "vitest"
import { type AiError, modelError } from "../src/AiError.js"
import * as Batch from "../src/Batch.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import { type GenerateRequest, type GenerateResponse, ModelProvider, type Service, usage } from "../src/Model.js"
import * as Orchestra from "../src/Orchestra.js"
import * as Policy from "../src/Policy.js"
import { Router } from "../src/Router.js"
import * as Engine from "../src/policy/engine.js"
import * as Deadline from "../src/policy/deadline.js"
import * as Fused from "../src/policy/fused.js"
import * as StatsModule from "../src/Stats.js"
import { type ExecutionStats, Stats } from "../src/Stats.js"
import { captureLogs } from "./utils/logs.js"

const answer = (text: string): GenerateResponse => ({
  text,
  finishReason: "stop",
  usage: usage(2, 3),
  provider: "scripted",
  model: "m"
})

/**
 * A provider whose prompt says what it does: `ok`, `sleep:<ms>`, `flaky` (fails retryably
 * the first time each prompt is seen), `overloaded` (always, retryably), `refused` (a
 * caller's fault, not retried), `hang`, `die`, `throw` (throws instead of answering an Effect),
 * `value` and `promise` (answer something that is not an Effect), `null` (answers no response).
 */
const scripted = (): Service => {
  const seen = new Set<string>()
  return {
    name: "scripted",
    defaultModel: "m",
    generate: (request: GenerateRequest) => {
      // A provider that throws instead of returning an Effect (a bug): the attempt's defect.
      if (request.prompt === "throw") throw new Error("provider threw")
      if (request.prompt === "value") return answer("not an Effect") as never
      if (request.prompt === "promise") return Promise.reject(new Error("async provider")) as never
      return Effect.suspend(() => {
        const prompt = request.prompt ?? ""
        const [kind, arg] = prompt.split(":")
        switch (kind) {
          case "sleep":
            return Effect.as(Effect.sleep(`${Number(arg)} millis`), answer(prompt))
          case "flaky":
            if (seen.has(prompt)) return Effect.succeed(answer(prompt))
            seen.add(prompt)
            return Effect.fail(modelError("Overloaded", "busy, try again"))
          case "overloaded":
            return Effect.fail(modelError("Overloaded", "busy"))
          case "refused":
            return Effect.fail(modelError("InvalidRequest", "bad prompt"))
          case "null":
            // A provider breaking its contract: no response at all.
            return Effect.succeed(null as never)
          case "hang":
            return Effect.never
          case "die":
            return Effect.die(new Error("provider bug"))
          default:
            return Effect.succeed(answer(prompt))
        }
      })
    },
    stream: () => Stream.die("not used"),
    embed: () => Effect.die("not used")
  }
}

const outcome = (result: Result.Result<GenerateResponse, AiError>): string =>
  Result.isSuccess(result)
    ? `ok ${result.success?.text}`
    : `${result.failure._tag} ${"reason" in result.failure ? String(result.failure.reason) : ""}`

/** A tracer the application provided (Effect's default one makes a caller untraced here). */
const collecting = Tracer.make({ span: (options) => new Tracer.NativeSpan(options) })

interface Run {
  readonly outcomes: ReadonlyArray<string>
  readonly stats: unknown
  readonly transitions: ReadonlyArray<string>
  readonly fusedCalls: number
}

/** Joins `fiber`, moving the test clock on 50 ms at a time until it has ended. */
const joinOnClock = <A, E>(fiber: Fiber.Fiber<A, E>) =>
  Effect.gen(function* () {
    for (let i = 0; i < 500 && fiber.pollUnsafe() === undefined; i++) yield* TestClock.adjust("50 millis")
    return yield* Fiber.join(fiber)
  })

/** A snapshot's counts, without its timings (which differ between any two runs). */
const countsOf = (snapshot: ExecutionStats) => {
  const { latency, serviceTime, queueWait, timeToFirstToken, throughput, windowMs, ...counts } = snapshot
  return counts
}

/** Runs `body`, answering its value and how many calls took the fused path meanwhile. */
const countingFused = <A, E, R>(body: Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    const begin = vi.spyOn(Fused.Fused.prototype, "begin")
    return body.pipe(
      Effect.map((value) => ({ value, fusedCalls: begin.mock.calls.length })),
      Effect.ensuring(Effect.sync(() => begin.mockRestore()))
    )
  })

/** Runs `requests` through `executeMany` on a fresh executor and breaker, under TestClock. */
const runOnce = (requests: ReadonlyArray<GenerateRequest>, concurrency: number, failMax: number, traced: boolean) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    const layer = Executor.layerWithStats().pipe(
      Layer.provideMerge(Layer.succeed(ModelProvider, scripted())),
      Layer.provideMerge(CircuitBreaker.layerMemory({ failMax, resetTimeout: "5 seconds" }))
    )
    const context = yield* Layer.buildWithScope(layer, scope)
    const executor = context.mapUnsafe.get(Executor.Executor.key) as Executor.Service
    const stats = context.mapUnsafe.get(Stats.key) as Stats["Service"]
    const breakers = context.mapUnsafe.get(CircuitBreaker.Breakers.key) as CircuitBreaker.Service
    const transitions: Array<string> = []
    yield* Effect.forkChild(
      Stream.runForEach(breakers.changes, (change) =>
        Effect.sync(() => transitions.push(`${change.from}>${change.to}`))
      )
    )
    yield* Effect.yieldNow
    const many = executor.executeMany(requests, {
      concurrency,
      timeout: "1 second",
      retry: { maxAttempts: 3, initialDelay: 100, jitter: 0 }
    })
    const { value: results, fusedCalls } = yield* countingFused(
      Effect.flatMap(
        Effect.forkChild(
          traced ? Effect.withSpan(many, "caller").pipe(Effect.provideService(Tracer.Tracer, collecting)) : many
        ),
        joinOnClock
      )
    )
    const counts = countsOf(yield* stats.snapshot())
    yield* Scope.close(scope, Exit.void)
    return {
      outcomes: results.map(outcome),
      stats: counts,
      transitions,
      fusedCalls
    } satisfies Run
  })

const sameOnBothPaths = (requests: ReadonlyArray<GenerateRequest>, concurrency: number, failMax: number) =>
  Effect.gen(function* () {
    const fused = yield* runOnce(requests, concurrency, failMax, false)
    const full = yield* runOnce(requests, concurrency, failMax, true)
    assert.isAbove(fused.fusedCalls, 0, "the untraced run took the fused path")
    assert.strictEqual(full.fusedCalls, 0, "the traced run took the full path")
    assert.deepStrictEqual(fused.outcomes, full.outcomes)
    assert.deepStrictEqual(fused.stats, full.stats)
    assert.deepStrictEqual(fused.transitions, full.transitions)
    return fused
  })

/** A step of a plan built by hand (engine tests). */
const step = (timeout: string | undefined) => ({
  target: "t",
  name: "edge",
  timeout: timeout === undefined ? undefined : Duration.fromInputUnsafe(timeout as Duration.Input),
  retry: undefined
})

describe("the fused call path gives what the full path gives", () => {
  it.effect("instant, slow, retried, refused, timed out and dying calls, one at a time, through a breaker", () =>
    Effect.gen(function* () {
      const prompts = ["ok:1", "sleep:200", "flaky:a", "refused", "die", "ok:2", "flaky:b", "hang", "ok:3", "sleep:10"]
      const run = yield* sameOnBothPaths(
        prompts.map((prompt) => ({ prompt })),
        1,
        3
      )
      assert.deepStrictEqual(run.outcomes, [
        "ok ok:1",
        "ok sleep:200",
        "ok flaky:a",
        "ModelError InvalidRequest",
        "ModelError Unknown",
        "ok ok:2",
        "ok flaky:b",
        // three attempts timed out: the breaker (failMax 3) opened
        "TimeoutError ",
        "CircuitOpenError ",
        "CircuitOpenError "
      ])
      assert.includeMembers([...run.transitions], ["closed>open"])
      const stats = run.stats as { total: number; retries: number; timeouts: number; inFlight: number }
      assert.strictEqual(stats.total, prompts.length)
      assert.strictEqual(stats.inFlight, 0)
      assert.isAbove(stats.retries, 0)
      assert.strictEqual(stats.timeouts, 3, "each of the three attempts of `hang` timed out")
    })
  )

  it.effect("500 mixed calls at concurrency 20: the same outcomes and counts on both paths", () =>
    Effect.gen(function* () {
      const kinds = ["ok", "sleep:30", "flaky", "refused", "sleep:1500", "ok", "sleep:5", "throw"]
      const requests = Array.from({ length: 500 }, (_, i) => {
        const kind = kinds[i % kinds.length]!
        return { prompt: kind === "flaky" ? `flaky:${i}` : kind === "ok" ? `ok:${i}` : kind }
      })
      // A breaker that stays closed: which of 20 concurrent calls a trip refuses depends on
      // the order calls end within one instant, which the two paths need not share.
      const run = yield* sameOnBothPaths(requests, 20, 10_000)
      assert.strictEqual(run.outcomes.length, 500)
      assert.strictEqual(run.outcomes[7], "ModelError Unknown", "a provider that throws fails its own request")
      assert.strictEqual((run.stats as { inFlight: number }).inFlight, 0)
      assert.strictEqual((run.stats as { total: number }).total, 500)
    })
  )
})

describe("found in review: providers that break their contract", () => {
  it.effect(
    "a provider answering something that is not an Effect: its own typed error, nothing left in flight, both paths",
    () =>
      Effect.gen(function* () {
        const run = yield* sameOnBothPaths(
          ["ok:1", "value", "promise", "ok:2"].map((prompt) => ({ prompt })),
          2,
          10_000
        )
        assert.deepStrictEqual(run.outcomes, ["ok ok:1", "ModelError Unknown", "ModelError Unknown", "ok ok:2"])
        // Before, the full path lost the attempt's exit handler with the fiber ("Not a valid effect"):
        // each such call stayed counted in flight for ever, and no service time was recorded.
        assert.strictEqual((run.stats as { inFlight: number }).inFlight, 0)
      })
  )
})

describe("found in review: a provider answering no response", () => {
  it.effect(
    "executeMany gives each request its outcome (that one a Decode error), on both paths, and leaves nothing running",
    () =>
      Effect.gen(function* () {
        // Before, the step's bookkeeping read the answer's usage and threw: on the fused path out of
        // the pool (a defect ending every request, the call left counted as running), on the full
        // path as the call's defect.
        const run = yield* sameOnBothPaths(
          ["ok:1", "null", "ok:2"].map((prompt) => ({ prompt })),
          2,
          10_000
        )
        // No response is no success: the caller would read `.text` of it (Executor.answers.test.ts).
        assert.deepStrictEqual(run.outcomes, ["ok ok:1", "ModelError Decode", "ok ok:2"])
        assert.strictEqual((run.stats as { inFlight: number }).inFlight, 0)
      })
  )
})

describe("found in review: executeWithRetry on the hot path", () => {
  it.effect("executeWithRetry with options of its own checks and plans them once, as execute does", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Executor.layerWithStats().pipe(Layer.provideMerge(Layer.succeed(ModelProvider, scripted()))),
        scope
      )
      const executor = context.mapUnsafe.get(Executor.Executor.key) as Executor.Service
      const plans: Array<unknown> = []
      const begin = Fused.Fused.prototype.begin
      const spy = vi.spyOn(Fused.Fused.prototype, "begin").mockImplementation(function (this: Fused.Fused) {
        plans.push(this.plan)
        return begin.call(this)
      })
      const options: Executor.ExecuteOptions = { timeout: "5 seconds", domain: "with-retry" }
      for (let i = 0; i < 3; i++) yield* executor.executeWithRetry({ prompt: `ok:${i}` }, options)
      spy.mockRestore()
      assert.strictEqual(plans.length, 3, "the calls took the fused path")
      // Before, each call copied its options to add \`retry: true\`: checked and planned anew every time.
      assert.strictEqual(new Set(plans).size, 1)
      const plan = plans[0] as { steps: ReadonlyArray<{ retry: unknown; domain: unknown }> }
      assert.strictEqual(plan.steps[0]!.retry, Policy.defaultRetry)
      assert.strictEqual(plan.steps[0]!.domain, "with-retry")
      yield* Scope.close(scope, Exit.void)
    })
  )
})

describe("the fused call path's own edges", () => {
  it.effect("a call built, then run after its caller yielded, starts only when run and answers", () =>
    Effect.gen(function* () {
      const stats = yield* Stats
      const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) })
      const begin = vi.spyOn(Fused.Fused.prototype, "begin")
      const pending = yield* Effect.withFiber((fiber) =>
        Effect.succeed(
          engine.runValueIn(fiber, { steps: [step("1 second")] }, () => Effect.as(Effect.yieldNow, "answer"))
        )
      )
      // Nothing may start while the effect is only built: the call starts (and can be
      // cancelled) inside its callback's registration, when the effect runs.
      for (let i = 0; i < 10; i++) yield* Effect.yieldNow
      assert.strictEqual(begin.mock.calls.length, 0, "nothing started before the effect ran")
      const waiting = yield* Effect.forkChild(Effect.timeoutOption(pending, "1 second"))
      yield* TestClock.adjust("1 second")
      const value = yield* Fiber.join(waiting)
      assert.strictEqual(begin.mock.calls.length, 1, "the fused path ran")
      begin.mockRestore()
      assert.deepStrictEqual(value, Option.some("answer"))
      const snapshot = yield* stats.snapshot()
      assert.strictEqual(snapshot.successes, 1)
      assert.strictEqual(snapshot.inFlight, 0)
    }).pipe(Effect.provide(StatsModule.layer))
  )

  it.effect("a caller interrupted during its attempt: the attempt is interrupted and counted once as Interrupted", () =>
    Effect.gen(function* () {
      const stats = yield* Stats
      const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) })
      let interrupted = 0
      const fiber = yield* Effect.forkChild(
        engine.runValue({ steps: [step("1 minute")] }, () =>
          Effect.onInterrupt(Effect.never, () => Effect.sync(() => interrupted++))
        )
      )
      yield* Effect.yieldNow
      assert.strictEqual((yield* stats.snapshot()).inFlight, 1)
      yield* Fiber.interrupt(fiber)
      for (let i = 0; i < 5; i++) yield* Effect.yieldNow
      const snapshot = yield* stats.snapshot()
      assert.strictEqual(interrupted, 1)
      assert.strictEqual(snapshot.inFlight, 0)
      assert.deepStrictEqual(snapshot.failuresByReason, { Interrupted: 1 })
      assert.strictEqual(engine.lanes.size(), 0, "its deadline is no longer tracked")
    }).pipe(Effect.provide(StatsModule.layer))
  )

  it.effect(
    "executeMany interrupted while its calls wait to retry: nothing is left running, shutdown does not wait",
    () =>
      Effect.gen(function* () {
        const scope = yield* Scope.make()
        let calls = 0
        const layer = Executor.layerWithStats({ shutdownDeadline: "1 hour" }).pipe(
          Layer.provideMerge(
            Layer.succeed(ModelProvider, {
              ...scripted(),
              generate: () =>
                Effect.suspend(() => {
                  calls++
                  return Effect.fail(modelError("Overloaded", "busy"))
                })
            })
          )
        )
        const context = yield* Layer.buildWithScope(layer, scope)
        const executor = context.mapUnsafe.get(Executor.Executor.key) as Executor.Service
        const stats = context.mapUnsafe.get(Stats.key) as Stats["Service"]
        const requests = Array.from({ length: 50 }, (_, i) => ({ prompt: `q${i}` }))
        const fiber = yield* Effect.forkChild(
          executor.executeMany(requests, {
            concurrency: 50,
            retry: { maxAttempts: 5, initialDelay: "10 minutes", jitter: 0 }
          })
        )
        for (let i = 0; i < 5; i++) yield* Effect.yieldNow
        const before = yield* stats.snapshot()
        assert.strictEqual(calls, 50, "every call failed once and waits to retry")
        assert.strictEqual(before.retries, 0, "no retry has run yet")
        yield* Fiber.interrupt(fiber)
        const after = yield* stats.snapshot()
        assert.strictEqual(after.total, 50)
        assert.deepStrictEqual(after.failuresByReason, { Interrupted: 50 })
        // With a call still counted as running, closing would wait for the 1-hour deadline,
        // which the test clock never reaches.
        const closed = yield* Scope.close(scope, Exit.void).pipe(Effect.timeoutOption("1 second"), Effect.forkChild)
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(yield* Fiber.join(closed), Option.some(undefined))
      })
  )
})

describe("the fused path under the manager (Router plans, Batch.run)", () => {
  const runBatch = (prompts: ReadonlyArray<string>, traced: boolean) =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Orchestra.layer({
          providers: { scripted: Layer.succeed(ModelProvider, scripted()) },
          domains: [
            {
              name: "d",
              provider: "scripted",
              timeout: "1 second",
              retry: { maxAttempts: 3, initialDelay: 100, jitter: 0 }
            }
          ],
          maxConcurrent: 4,
          // Open only after many failures, so that most items reach the provider.
          breakers: { failMax: 20 }
        }),
        scope
      )
      const batch = context.mapUnsafe.get(Batch.Batch.key) as Batch.Service
      const stats = context.mapUnsafe.get(Stats.key) as Stats["Service"]
      const run = batch.run(prompts, { domain: "d" })
      const { value: result, fusedCalls } = yield* countingFused(
        Effect.flatMap(
          Effect.forkChild(traced ? Effect.provideService(run, Tracer.Tracer, collecting) : run),
          joinOnClock
        )
      )
      const counts = countsOf(yield* stats.snapshot())
      yield* Scope.close(scope, Exit.void)
      return {
        fusedCalls,
        counts,
        items: result.results.map(
          (r) =>
            `${r.status} ${r.answer?.response.text ?? r.error?._tag ?? ""} retries=${r.retries} attempts=${r.answer?.attempts}`
        )
      }
    })

  it.effect("Batch.run with a domain: the same items, retries and counts on both paths", () =>
    Effect.gen(function* () {
      const kinds = ["ok", "flaky", "sleep:30", "refused", "hang"]
      const prompts = Array.from({ length: 60 }, (_, i) => (kinds[i % 5] === "flaky" ? `flaky:${i}` : kinds[i % 5]!))
      const fused = yield* runBatch(prompts, false)
      const full = yield* runBatch(prompts, true)
      assert.isAbove(fused.fusedCalls, 0, "an untraced Batch.run takes the fused path")
      assert.strictEqual(full.fusedCalls, 0, "a traced one takes the full path")
      assert.deepStrictEqual(fused.items, full.items)
      assert.deepStrictEqual(fused.counts, full.counts)
      const count = (prefix: string) => fused.items.filter((item) => item.startsWith(prefix)).length
      assert.isAbove(count("success flaky"), 0, "retried items answered")
      assert.isAbove(count("timeout"), 0, "hung items timed out")
      assert.isAbove(count("error ModelError"), 0, "refused items failed")
    })
  )
})

describe("Batch.run: items started from JavaScript against items on worker fibers", () => {
  // A silent batch starts its items from JavaScript (batch/runner.ts `startedPool`); one with
  // an onProgress callback runs them on worker fibers. Same items, same manager: the same
  // outcome per item, the same answers and the same statistics.
  const runMixed = (items: ReadonlyArray<Batch.Item>, options: Batch.RunOptions, onWorkers: boolean) =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Orchestra.layer({
          providers: {
            scripted: Layer.succeed(ModelProvider, scripted()),
            backup: Layer.succeed(ModelProvider, {
              ...scripted(),
              name: "backup",
              generate: (request: GenerateRequest) => Effect.succeed(answer(`backup ${request.prompt}`))
            })
          },
          domains: [
            {
              name: "d",
              provider: "scripted",
              timeout: "1 second",
              retry: { maxAttempts: 3, initialDelay: 100, jitter: 0 }
            },
            { name: "e", provider: "scripted", timeout: "500 millis", retry: { maxAttempts: 1 }, fallback: ["f"] },
            { name: "f", provider: "backup", timeout: "1 second", retry: { maxAttempts: 1 } }
          ],
          // Items without a domain run on the executor's provider, with its deadline.
          executor: { timeout: "1 second" },
          maxConcurrent: 3,
          breakers: { failMax: 1000 }
        }),
        scope
      )
      const batch = context.mapUnsafe.get(Batch.Batch.key) as Batch.Service
      const stats = context.mapUnsafe.get(Stats.key) as Stats["Service"]
      let events = 0
      const run = batch.run(items, onWorkers ? { ...options, onProgress: () => events++ } : options)
      const result = yield* Effect.flatMap(Effect.forkChild(run), joinOnClock)
      const counts = countsOf(yield* stats.snapshot())
      yield* Scope.close(scope, Exit.void)
      if (onWorkers) assert.isAbove(events, 0)
      return {
        counts,
        peak: result.stats.concurrencyPeak,
        items: result.results.map((r) =>
          [
            r.index,
            r.status,
            r.answer === undefined
              ? `${r.error?._tag} ${r.error?._tag === "ModelError" ? `${r.error.reason} ${r.error.field ?? ""}` : ""}`
              : `${r.answer.response.text} ${r.answer.domain}/${r.answer.provider} attempts=${r.answer.attempts} tried=${r.answer.domainsTried} fallback=${r.answer.fallbackUsed}`,
            `retries=${r.retries}`,
            `ran=${r.ran}`
          ].join(" ")
        )
      }
    })

  it.effect("a mixed batch (bad items, domains, fallbacks, retries, hangs) gives the same outcomes either way", () =>
    Effect.gen(function* () {
      const kinds = ["ok", "flaky", "sleep:30", "refused", "hang", "overloaded", "die"]
      const items: Array<Batch.Item> = []
      for (let i = 0; i < 70; i++) {
        const kind = kinds[i % kinds.length]!
        const prompt = kind === "flaky" ? `flaky:${i}` : kind
        if (i % 10 === 3) items.push(null as never)
        else if (i % 5 === 0) items.push({ query: prompt, domain: "e" })
        else if (i % 3 === 0) items.push({ request: { prompt } })
        else items.push(prompt)
      }
      for (const options of [{ domain: "d" }, { domain: "d", fallback: ["f"] }, {}] as const) {
        const started = yield* runMixed(items, options, false)
        const workers = yield* runMixed(items, options, true)
        assert.deepStrictEqual(started.items, workers.items, JSON.stringify(options))
        assert.deepStrictEqual(started.counts, workers.counts, JSON.stringify(options))
        assert.isAtMost(started.peak, 3)
        const has = (text: string) => started.items.some((item) => item.includes(text))
        assert.isTrue(has("InvalidRequest items["), "bad items have their own error")
        assert.isTrue(has("success flaky"), "retried items answered")
        if (!("fallback" in options)) assert.isTrue(has("timeout"), "hung items timed out")
        // Item 4 hangs on the batch's domain: its deadline passes, and the batch's fallback answers.
        else assert.include(started.items[4], "4 success backup hang f/backup", "the batch's fallback answered")
        if (options.domain !== undefined) assert.isTrue(has("fallback=true"), "items fell back")
      }
    })
  )
})

describe("executeMany: one outcome per request, whatever ends a call", () => {
  it.effect("a failing onRetry does not fail its call, on both paths: logged once, the retry answers", () =>
    Effect.gen(function* () {
      for (const traced of [false, true]) {
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(
          Executor.layerWithStats().pipe(Layer.provideMerge(Layer.succeed(ModelProvider, scripted()))),
          scope
        )
        const executor = context.mapUnsafe.get(Executor.Executor.key) as Executor.Service
        const logs = yield* captureLogs
        const many = executor.executeMany([{ prompt: "ok:1" }, { prompt: "flaky:x" }, { prompt: "ok:2" }], {
          concurrency: 3,
          retry: { maxAttempts: 2, initialDelay: 10, jitter: 0 },
          onRetry: () => Effect.die(new Error("onRetry bug"))
        })
        const fiber = yield* Effect.forkChild(
          (traced ? Effect.withSpan(many, "caller").pipe(Effect.provideService(Tracer.Tracer, collecting)) : many).pipe(
            Effect.provide(logs.layer)
          )
        )
        yield* TestClock.adjust("1 second")
        const results = yield* Fiber.join(fiber)
        assert.deepStrictEqual(results.map(outcome), ["ok ok:1", "ok flaky:x", "ok ok:2"], `traced: ${traced}`)
        const warnings = logs.lines.filter((line) => line.includes("onRetry callback failed"))
        assert.strictEqual(warnings.length, 1, `traced: ${traced}: ${logs.lines.join("\n")}`)
        assert.include(warnings[0]!, "onRetry bug")
        yield* Scope.close(scope, Exit.void)
      }
    })
  )
})

describe("found in review: interruptions at any point, and lanes ending together", () => {
  const hang = () => Effect.never

  it.effect("two calls of one Effect.all time out together: each ends once, the lane is empty (both paths)", () =>
    Effect.gen(function* () {
      for (const traced of [false, true]) {
        const stats = yield* Stats
        yield* stats.reset
        const scope = yield* Scope.make()
        const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) }).pipe(Scope.provide(scope))
        const plan = { steps: [step("1 second")] as const }
        const both = Effect.all([engine.runValue(plan, hang), engine.runValue(plan, hang)], { concurrency: 2 })
        const fiber = yield* Effect.forkChild(
          traced ? Effect.withSpan(both, "caller").pipe(Effect.provideService(Tracer.Tracer, collecting)) : both
        )
        yield* Effect.yieldNow
        assert.strictEqual(engine.lanes.size(), 2)
        yield* TestClock.adjust("2 seconds")
        yield* Fiber.await(fiber)
        // The first timeout interrupts its sibling: before, the lane then ended the sibling's
        // already-unlinked node a second time (size -1).
        assert.strictEqual(engine.lanes.size(), 0, `traced: ${traced}`)
        assert.strictEqual((yield* stats.snapshot()).inFlight, 0)
        yield* Scope.close(scope, Exit.void)
      }
    }).pipe(Effect.provide(StatsModule.layer))
  )

  it.effect("shutdown interrupts every call, also one linked after a pair whose first cancels the second", () =>
    Effect.gen(function* () {
      const stats = yield* Stats
      const scope = yield* Scope.make()
      const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) }).pipe(Scope.provide(scope))
      const plan = { steps: [step(undefined)] as const }
      const ab = yield* Effect.forkChild(
        Effect.all([engine.runValue(plan, hang), engine.runValue(plan, hang)], { concurrency: 2 })
      )
      yield* Effect.yieldNow
      const c = yield* Effect.forkChild(engine.runValue(plan, hang))
      yield* Effect.yieldNow
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
      yield* TestClock.adjust("10 seconds")
      assert.isDefined(closing.pollUnsafe(), "the engine closed")
      assert.isDefined(ab.pollUnsafe())
      assert.isDefined(c.pollUnsafe(), "the call linked after the pair was interrupted too")
      assert.strictEqual(engine.lanes.size(), 0)
    }).pipe(Effect.provide(StatsModule.layer))
  )

  it.effect("a caller interrupted wherever the runtime lets it yield: every call counted once, none left running", () =>
    Effect.gen(function* () {
      for (const withRetry of [false, true]) {
        for (let k = 1; k <= 40; k++) {
          const scope = yield* Scope.make()
          const context = yield* Layer.buildWithScope(
            Layer.mergeAll(StatsModule.layer, CircuitBreaker.layerMemory({ failMax: 1, resetTimeout: "5 seconds" })),
            scope
          )
          const stats = context.mapUnsafe.get(Stats.key) as Stats["Service"]
          const breakers = context.mapUnsafe.get(CircuitBreaker.Breakers.key) as CircuitBreaker.Service
          const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) }).pipe(Scope.provide(scope))
          const plan = {
            steps: [
              {
                ...step("1 second"),
                name: "p",
                breaker: breakers,
                retry: withRetry ? Policy.retry({ maxAttempts: 3, initialDelay: 100, jitter: 0 }) : undefined
              }
            ] as const
          }
          // The caller's fiber yields every k operations, and is interrupted at once.
          const base = Context.add(yield* Effect.context<never>(), Scheduler.MaxOpsBeforeYield, k)
          const caller = Effect.runForkWith(base)(
            engine.runValue(plan, () => Effect.fail(modelError("Overloaded", "busy")))
          )
          caller.interruptUnsafe()
          for (let i = 0; i < 100; i++) yield* Effect.yieldNow
          const snapshot = yield* stats.snapshot()
          const outcomes = Object.values(snapshot.failuresByReason).reduce((a, b) => a + b, 0) + snapshot.successes
          assert.strictEqual(
            outcomes,
            snapshot.total,
            `k=${k} retry=${withRetry}: every request counted has its outcome`
          )
          assert.strictEqual(snapshot.inFlight, 0)
          if (snapshot.failuresByReason.Overloaded !== undefined) {
            assert.strictEqual(yield* breakers.state("p"), "open", `k=${k}: the failure reached the breaker`)
          }
          const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
          for (let i = 0; i < 50; i++) yield* Effect.yieldNow
          assert.isDefined(closing.pollUnsafe(), `k=${k} retry=${withRetry}: closing did not wait for a call`)
        }
      }
    })
  )
})

describe("the full path under interruptions", () => {
  /** An engine whose breaker's fast lane one failure has shut, so that the next call of `plan` takes the full path. */
  const fullPathEngine = (timeout: string) =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Layer.mergeAll(StatsModule.layer, CircuitBreaker.layerMemory({ failMax: 2, resetTimeout: "5 seconds" })),
        scope
      )
      const stats = context.mapUnsafe.get(Stats.key) as Stats["Service"]
      const breakers = context.mapUnsafe.get(CircuitBreaker.Breakers.key) as CircuitBreaker.Service
      const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) }).pipe(Scope.provide(scope))
      const plan = { steps: [{ ...step(timeout), name: "p", breaker: breakers }] as const }
      yield* Effect.exit(engine.runValue(plan, () => Effect.fail(modelError("Overloaded", "busy"))))
      return { scope, engine, plan }
    })

  it.effect("a caller interrupted at any yield of the full path is not left counted as running", () =>
    Effect.gen(function* () {
      for (let k = 1; k <= 40; k++) {
        const { scope, engine, plan } = yield* fullPathEngine("1 second")
        const base = Context.add(yield* Effect.context<never>(), Scheduler.MaxOpsBeforeYield, k)
        const caller = Effect.runForkWith(base)(
          engine.runValue(plan, () => Effect.fail(modelError("Overloaded", "busy")))
        )
        caller.interruptUnsafe()
        for (let i = 0; i < 100; i++) yield* Effect.yieldNow
        // Counted as running, it made the shutdown wait its whole deadline for nothing.
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
        for (let i = 0; i < 50; i++) yield* Effect.yieldNow
        assert.isDefined(closing.pollUnsafe(), `k=${k}: closing waited for a call that is not running`)
      }
    })
  )

  it.effect("a caller interrupted at any yield of the full path leaves no attempt running", () =>
    Effect.gen(function* () {
      for (let k = 1; k <= 40; k++) {
        const { scope, engine, plan } = yield* fullPathEngine("1 minute")
        let running = 0
        const hanging = () =>
          Effect.suspend(() => {
            running++
            return Effect.never
          }).pipe(Effect.ensuring(Effect.sync(() => running--)))
        const base = Context.add(yield* Effect.context<never>(), Scheduler.MaxOpsBeforeYield, k)
        const caller = Effect.runForkWith(base)(engine.runValue(plan, hanging))
        for (let i = 0; i < k % 7; i++) yield* Effect.yieldNow
        caller.interruptUnsafe()
        for (let i = 0; i < 100; i++) yield* Effect.yieldNow
        assert.isDefined(caller.pollUnsafe(), `k=${k}: the caller ended`)
        // The attempt's fiber started in one step and its cancellation put in place in the next:
        // a caller interrupted between the two left the provider's call running until its deadline.
        assert.strictEqual(running, 0, `k=${k}: the provider's call was interrupted with its caller`)
        assert.strictEqual(engine.lanes.size(), 0, `k=${k}: its deadline is no longer tracked`)
        yield* Scope.close(scope, Exit.void)
      }
    })
  )
})

describe("found in review: the provider slot's gauges under interruptions", () => {
  it.effect(
    "callers interrupted at any yield of an attempt that queues for its slot leave nothing in flight or queued",
    () =>
      Effect.gen(function* () {
        const leaks: Array<string> = []
        for (let k = 1; k <= 20; k++) {
          for (let turns = 0; turns < 6; turns++) {
            const scope = yield* Scope.make()
            const stats = yield* Layer.buildWithScope(StatsModule.layer, scope).pipe(
              Effect.map((context) => context.mapUnsafe.get(Stats.key) as Stats["Service"])
            )
            const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) }).pipe(
              Scope.provide(scope)
            )
            const plan = {
              steps: [
                {
                  ...step("1 second"),
                  name: "p",
                  maxConcurrency: 1,
                  retry: Policy.retry({ maxAttempts: 3, initialDelay: 100, jitter: 0 })
                }
              ] as const
            }
            // Two callers (one served, one queued behind it) whose fibers yield every k operations.
            const base = Context.add(yield* Effect.context<never>(), Scheduler.MaxOpsBeforeYield, k)
            const callers = [0, 1].map(() =>
              Effect.runForkWith(base)(engine.runValue(plan, () => Effect.fail(modelError("Overloaded", "busy"))))
            )
            for (let i = 0; i < turns; i++) yield* Effect.yieldNow
            for (const caller of callers) caller.interruptUnsafe()
            for (let i = 0; i < 100; i++) yield* Effect.yieldNow
            const snapshot = yield* stats.snapshot()
            // The gauges were entered one step before the handler that leaves them was in place.
            if (snapshot.inFlight !== 0 || snapshot.queued !== 0) {
              leaks.push(`k=${k} turns=${turns}: inFlight ${snapshot.inFlight}, queued ${snapshot.queued}`)
            }
            yield* Scope.close(scope, Exit.void)
          }
        }
        assert.deepStrictEqual(leaks, [])
      })
  )
})

describe("the full path under interruptions: the total deadline", () => {
  it.effect("a caller interrupted at any yield of a call with a total deadline leaves no deadline tracked", () =>
    Effect.gen(function* () {
      for (let k = 1; k <= 12; k++) {
        for (let turns = 0; turns <= 10; turns++) {
          const scope = yield* Scope.make()
          const stats = yield* Layer.buildWithScope(StatsModule.layer, scope).pipe(
            Effect.map((context) => context.mapUnsafe.get(Stats.key) as Stats["Service"])
          )
          const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) }).pipe(Scope.provide(scope))
          const plan = { steps: [step("1 minute")] as const, totalTimeout: Duration.minutes(2) }
          const base = Context.add(yield* Effect.context<never>(), Scheduler.MaxOpsBeforeYield, k)
          const caller = Effect.runForkWith(base)(engine.runValue(plan, () => Effect.never))
          for (let i = 0; i < turns; i++) yield* Effect.yieldNow
          caller.interruptUnsafe()
          for (let i = 0; i < 100; i++) yield* Effect.yieldNow
          assert.isDefined(caller.pollUnsafe(), `k=${k}, ${turns} turns: the caller ended`)
          // The total deadline was linked in one step and its wait (whose cleanup unlinks it) put
          // in place in the next: a caller interrupted in between left its timer running 2 minutes.
          assert.strictEqual(engine.lanes.size(), 0, `k=${k}, ${turns} turns: no deadline is tracked any more`)
          yield* Scope.close(scope, Exit.void)
        }
      }
    })
  )
})

describe("Router steps and token rate limits", () => {
  it.effect(
    "a domain on a provider with a token limit estimates each request's tokens; one without shares its step",
    () =>
      Effect.gen(function* () {
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(
          Orchestra.layer({
            providers: {
              limited: Layer.succeed(ModelProvider, { ...scripted(), name: "limited" }),
              free: Layer.succeed(ModelProvider, { ...scripted(), name: "free" })
            },
            domains: [
              { name: "small", provider: "limited" },
              { name: "open", provider: "free" }
            ],
            rateLimits: { providers: { limited: { tokensPerMinute: 50 } }, maxWait: 0 }
          }),
          scope
        )
        const router = context.mapUnsafe.get(Router.key) as Router["Service"]
        const long = { prompt: `ok:${"word ".repeat(400)}` }
        // A request larger than the whole budget passes in an empty window; the next one finds
        // the window spent by the first's estimate and is refused (maxWait 0).
        const first = yield* router.execute(long, "small")
        assert.strictEqual(first.provider, "limited")
        const refused = yield* Effect.flip(router.execute(long, "small"))
        assert.strictEqual(refused._tag === "ModelError" ? refused.reason : refused._tag, "RateLimited")
        // No token limit on `free`: the same requests pass (its step is the domain's own).
        for (let i = 0; i < 3; i++) assert.strictEqual((yield* router.execute(long, "open")).provider, "free")
        yield* Scope.close(scope, Exit.void)
      })
  )
})

describe("fused path after the lanes closed", () => {
  it.effect("a call begun on closed lanes ends at once as shutdown instead of waiting for a deadline never cut", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const lanes = yield* Deadline.make.pipe(Scope.provide(scope))
      yield* Scope.close(scope, Exit.void)
      const clock = yield* Clock.Clock
      const fiber = yield* Effect.withFiber((f) => Effect.succeed(f))
      const settled: Array<unknown> = []
      let left = 0
      const env: Fused.Env = {
        clock,
        lanes,
        settle: (_call, result) => {
          settled.push(result)
          return typeof result === "string" ? Exit.fail(modelError("Unavailable", result)) : result
        },
        rest: () => undefined,
        ended: () => undefined,
        leave: () => {
          left++
        }
      }
      const series = { gauges: [], service: { record: () => undefined } } as never
      const step = { target: undefined, name: "closed", timeout: Duration.seconds(1) }
      const call = new Fused.Fused(
        env,
        fiber,
        { steps: [step] } as never,
        () => Effect.never,
        series,
        clock.currentTimeMillisUnsafe(),
        undefined,
        undefined
      )
      const exit = call.begin()
      assert.isDefined(exit, "the call waited on lanes that will never end its deadline")
      assert.deepStrictEqual(settled, ["shutdown"])
      assert.strictEqual(left, 1)
      assert.strictEqual(lanes.size(), 0)
    })
  )
})
