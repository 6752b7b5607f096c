import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Fiber, Ref, Schedule, TestClock } from "effect"
import { ModelError } from "../src/AiError.js"
import * as Pipeline from "../src/Pipeline.js"

class Greeter extends Context.Tag("test/Greeter")<Greeter, { readonly greet: (name: string) => string }>() {}

const sleepThen = <A>(millis: number, value: A) => Effect.as(Effect.sleep(Duration.millis(millis)), value)

/** Runs to completion, moving the TestClock far enough for every sleep. */
const runClocked = <I, O, E, R>(p: Pipeline.Pipeline<I, O, E, R>, input: I, options?: Pipeline.RunOptions) =>
  Effect.gen(function* () {
    const fiber = yield* Effect.fork(Pipeline.run(p, input, options))
    yield* TestClock.adjust("1 hour")
    return yield* Fiber.join(fiber)
  })

const timingOf = (outcome: Pipeline.StepOutcome<unknown, unknown>) => {
  assert.notStrictEqual(outcome.status, "skipped")
  return outcome as Pipeline.Timing
}

describe("Pipeline", () => {
  const diamond = (calls: Ref.Ref<Record<string, number>>) => {
    const count = (name: string) => Ref.update(calls, (c) => ({ ...c, [name]: (c[name] ?? 0) + 1 }))
    return Pipeline.make<{ readonly n: number }>()
      .step("a", [], ({ input }) => Effect.zipRight(count("a"), sleepThen(10, input.n)))
      .step("b", ["a"], ({ deps }) => Effect.zipRight(count("b"), sleepThen(30, `b${deps.a}`)))
      .step("c", ["a"], ({ deps }) => Effect.zipRight(count("c"), sleepThen(50, deps.a * 2)))
      .step("d", ["b", "c"], ({ deps }) => Effect.zipRight(count("d"), sleepThen(10, `${deps.b}+${deps.c}`)))
  }

  it.effect("diamond: b and c overlap, d runs once after both", () =>
    Effect.gen(function* () {
      const calls = yield* Ref.make<Record<string, number>>({})
      const result = yield* runClocked(diamond(calls), { n: 2 })
      assert.strictEqual(result.status, "succeeded")
      assert.deepStrictEqual(yield* Ref.get(calls), { a: 1, b: 1, c: 1, d: 1 })
      const [a, b, c, d] = (["a", "b", "c", "d"] as const).map((k) => timingOf(result.steps[k]))
      assert.deepStrictEqual([a!.startedAt, a!.endedAt], [0, 10])
      // b and c start together when a ends and run side by side
      assert.deepStrictEqual([b!.startedAt, b!.endedAt], [10, 40])
      assert.deepStrictEqual([c!.startedAt, c!.endedAt], [10, 60])
      assert.isTrue(b!.startedAt < c!.endedAt && c!.startedAt < b!.endedAt)
      assert.deepStrictEqual([d!.startedAt, d!.endedAt], [60, 70])
      assert.strictEqual(result.wallMs, 70)
      assert.strictEqual(result.outputs.d, "b2+4")
      assert.strictEqual(result.busyMs, 100)
      assert.closeTo(result.parallelism, 100 / 70, 1e-9)
      assert.strictEqual(result.criticalPathMs, 70)
      assert.deepStrictEqual(result.started, ["a", "b", "c", "d"])
    })
  )

  it.effect("a step starts when its own dependencies are done, not when its level is", () =>
    Effect.gen(function* () {
      const p = Pipeline.make()
        .step("a", [], () => sleepThen(10, 1))
        .step("slow", ["a"], () => sleepThen(100, 2))
        .step("fast", ["a"], () => sleepThen(10, 3))
        .step("afterFast", ["fast"], ({ deps }) => sleepThen(10, deps.fast + 1))
      const result = yield* runClocked(p, undefined)
      assert.strictEqual(timingOf(result.steps.afterFast).startedAt, 20)
      assert.strictEqual(timingOf(result.steps.afterFast).endedAt, 30)
      assert.strictEqual(timingOf(result.steps.slow).endedAt, 110)
      assert.strictEqual(result.wallMs, 110)
    })
  )

  it.effect("a cycle is rejected with the names of its steps", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        Pipeline.fromSteps([
          { name: "start", run: () => Effect.succeed(0) },
          { name: "a", dependsOn: ["start", "c"], run: () => Effect.succeed(1) },
          { name: "b", dependsOn: ["a"], run: () => Effect.succeed(2) },
          { name: "c", dependsOn: ["b"], run: () => Effect.succeed(3) }
        ])
      )
      assert.strictEqual(error._tag, "PipelineError")
      assert.strictEqual(error.reason, "Cycle")
      assert.deepStrictEqual([...error.steps].sort(), ["a", "b", "c"])
      assert.match(error.message, /dependency cycle: (a|b|c) -> (a|b|c) -> (a|b|c) -> (a|b|c)/)
      const self = yield* Effect.flip(Pipeline.fromSteps([{ name: "me", dependsOn: ["me"], run: () => Effect.void }]))
      assert.strictEqual(self.reason, "Cycle")
      assert.deepStrictEqual(self.steps, ["me"])
    })
  )

  it.effect("an unknown dependency and a duplicate name are rejected with the names", () =>
    Effect.gen(function* () {
      const unknown = yield* Effect.flip(
        Pipeline.fromSteps([
          { name: "retrieve", run: () => Effect.succeed(1) },
          { name: "reason", dependsOn: ["retrieve", "recal"], run: () => Effect.succeed(2) }
        ])
      )
      assert.strictEqual(unknown.reason, "UnknownDependency")
      assert.deepStrictEqual(unknown.steps, ["reason", "recal"])
      assert.include(unknown.message, '"recal"')
      const duplicate = yield* Effect.flip(
        Pipeline.fromSteps([
          { name: "x", run: () => Effect.succeed(1) },
          { name: "x", run: () => Effect.succeed(2) }
        ])
      )
      assert.strictEqual(duplicate.reason, "DuplicateStep")
      assert.deepStrictEqual(duplicate.steps, ["x"])
    })
  )

  it("the builder rules out unknown dependencies and duplicate names statically", () => {
    const p = Pipeline.make<string>().step("a", [], ({ input }) => Effect.succeed(input.length))
    // @ts-expect-error "b" is not a step yet
    assert.throws(() => p.step("c", ["b"], () => Effect.void))
    // @ts-expect-error "a" is taken
    assert.throws(() => p.step("a", [], () => Effect.void))
    const typed = p.step("b", ["a"], ({ deps }) => Effect.succeed(deps.a + 1))
    // @ts-expect-error deps only holds declared dependencies
    typed.step("c", ["b"], ({ deps }) => Effect.succeed(deps.a))
    assert.deepStrictEqual(typed.names, ["a", "b"])
  })

  it.effect("a step's requirements become the run's requirements", () =>
    Effect.gen(function* () {
      const p = Pipeline.make<string>()
        .step("greet", [], ({ input }) => Effect.map(Greeter, (g) => g.greet(input)))
        .step("shout", ["greet"], ({ deps }) => Effect.succeed(deps.greet.toUpperCase()))
      const program: Effect.Effect<
        Pipeline.Result<{ readonly greet: string; readonly shout: string }, never>,
        Pipeline.PipelineError,
        Greeter
      > = Pipeline.run(p, "ada")
      const result = yield* program.pipe(Effect.provideService(Greeter, { greet: (name) => `hello ${name}` }))
      assert.strictEqual(result.outputs.shout, "HELLO ADA")
    })
  )

  it.effect("fail fast interrupts running siblings and skips the rest", () =>
    Effect.gen(function* () {
      const interrupted = yield* Ref.make(false)
      const p = Pipeline.make()
        .step("boom", [], () => Effect.zipRight(Effect.sleep("10 millis"), Effect.fail("broken" as const)))
        .step("sibling", [], () => sleepThen(100, "late").pipe(Effect.onInterrupt(() => Ref.set(interrupted, true))))
        .step("dependent", ["boom"], () => Effect.succeed(1))
      const result = yield* runClocked(p, undefined, { onFailure: "failFast" })
      assert.strictEqual(result.status, "failed")
      assert.isTrue(yield* Ref.get(interrupted))
      assert.strictEqual(result.steps.boom.status, "failed")
      assert.strictEqual(result.steps.boom.status === "failed" && result.steps.boom.error, "broken")
      const sibling = result.steps.sibling
      assert.strictEqual(sibling.status, "interrupted")
      assert.deepStrictEqual(sibling.status === "interrupted" && [sibling.failedStep, sibling.endedAt], ["boom", 10])
      assert.strictEqual(result.steps.dependent.status, "skipped")
      assert.strictEqual(result.wallMs, 10)
      assert.deepStrictEqual(result.failedSteps, ["boom", "sibling"])
    })
  )

  it.effect("interrupting a run interrupts its running steps", () =>
    Effect.gen(function* () {
      const interrupted = yield* Ref.make<ReadonlyArray<string>>([])
      const slow = (name: string) =>
        sleepThen(100, name).pipe(Effect.onInterrupt(() => Ref.update(interrupted, (all) => [...all, name])))
      const p = Pipeline.make()
        .step("x", [], () => slow("x"))
        .step("y", [], () => slow("y"))
        .step("z", ["x"], () => slow("z"))
      const fiber = yield* Effect.fork(Pipeline.run(p, undefined))
      yield* TestClock.adjust("50 millis")
      yield* Fiber.interrupt(fiber)
      assert.deepStrictEqual([...(yield* Ref.get(interrupted))].sort(), ["x", "y"])
    })
  )

  it.effect("continue mode skips only the dependents of a failed step", () =>
    Effect.gen(function* () {
      const p = Pipeline.make()
        .step("a", [], () => Effect.zipRight(Effect.sleep("10 millis"), Effect.fail(new Error("a broke"))))
        .step("b", [], () => sleepThen(50, "b"))
        .step("c", ["a"], () => Effect.succeed("c"))
        .step("d", ["c"], () => Effect.succeed("d"))
        .step("e", ["b"], ({ deps }) => sleepThen(10, `${deps.b}e`))
      const result = yield* runClocked(p, undefined, { onFailure: "continue" })
      assert.strictEqual(result.steps.a.status, "failed")
      assert.strictEqual(result.steps.b.status, "succeeded")
      assert.strictEqual(result.outputs.e, "be")
      const c = result.steps.c
      const d = result.steps.d
      assert.isTrue(c.status === "skipped" && c.dependency === "a" && c.failedStep === "a")
      assert.isTrue(d.status === "skipped" && d.dependency === "c" && d.failedStep === "a")
      assert.include(d.status === "skipped" ? d.reason : "", '"a"')
      assert.strictEqual(result.wallMs, 60)
      assert.deepStrictEqual(result.failedSteps, ["a"])
    })
  )

  it.effect("per-step timeout, fallback value and fallback step", () =>
    Effect.gen(function* () {
      const p = Pipeline.make()
        .step("hangs", [], () => sleepThen(1_000, "never"), { timeout: "100 millis" })
        .step("hangsWithValue", [], () => sleepThen(1_000, "never"), {
          timeout: "100 millis",
          fallback: { value: "cached" }
        })
        .step("failsWithStep", [], () => Effect.fail("nope" as const), {
          fallback: {
            step: ({ failure }) =>
              sleepThen(5, failure._tag === "Failed" ? `recovered from ${failure.error}` : "timeout")
          }
        })
      const result = yield* runClocked(p, undefined, { onFailure: "continue" })
      const hangs = result.steps.hangs
      assert.strictEqual(hangs.status, "timedOut")
      assert.deepStrictEqual(
        hangs.status === "timedOut" && [hangs.endedAt, Duration.toMillis(hangs.timeout)],
        [100, 100]
      )
      const value = result.steps.hangsWithValue
      assert.strictEqual(value.status, "succeeded")
      assert.strictEqual(result.outputs.hangsWithValue, "cached")
      assert.deepStrictEqual(value.status === "succeeded" && value.fallback?.kind, "value")
      assert.deepStrictEqual(value.status === "succeeded" && value.fallback?.failure._tag, "TimedOut")
      assert.strictEqual(result.outputs.failsWithStep, "recovered from nope")
      assert.strictEqual(timingOf(result.steps.failsWithStep).durationMs, 5)
      assert.deepStrictEqual(result.failedSteps, ["hangs"])
    })
  )

  it.effect("retries follow the step's schedule", () =>
    Effect.gen(function* () {
      const tries = yield* Ref.make(0)
      const flaky = Effect.flatMap(
        Ref.updateAndGet(tries, (n) => n + 1),
        (n) => (n < 3 ? Effect.fail(`try ${n}`) : Effect.succeed(`ok after ${n}`))
      )
      const p = Pipeline.make()
        .step("flaky", [], () => flaky, {
          retry: Schedule.spaced("20 millis").pipe(Schedule.intersect(Schedule.recurs(5)))
        })
        .step("hopeless", [], () => Effect.fail("always"), { retry: Schedule.recurs(2) })
      const result = yield* runClocked(p, undefined, { onFailure: "continue" })
      const flakyOutcome = result.steps.flaky
      assert.strictEqual(flakyOutcome.status, "succeeded")
      assert.deepStrictEqual(
        flakyOutcome.status === "succeeded" && [flakyOutcome.output, flakyOutcome.attempts, flakyOutcome.endedAt],
        ["ok after 3", 3, 40]
      )
      const hopeless = result.steps.hopeless
      assert.deepStrictEqual(hopeless.status === "failed" && [hopeless.attempts, hopeless.error], [3, "always"])
    })
  )

  it.effect("the concurrency limit is respected", () =>
    Effect.gen(function* () {
      const inFlight = yield* Ref.make(0)
      const peak = yield* Ref.make(0)
      const tracked = Effect.acquireUseRelease(
        Effect.flatMap(
          Ref.updateAndGet(inFlight, (n) => n + 1),
          (n) => Ref.update(peak, (p) => Math.max(p, n))
        ),
        () => Effect.sleep("10 millis"),
        () => Ref.update(inFlight, (n) => n - 1)
      )
      const specs = Array.from({ length: 5 }, (_, i) => ({ name: `s${i}`, run: () => tracked }))
      const p = yield* Pipeline.fromSteps(specs)
      const result = yield* runClocked(p, undefined, { concurrency: 2 })
      assert.strictEqual(yield* Ref.get(peak), 2)
      assert.strictEqual(result.wallMs, 30)
      assert.closeTo(result.parallelism, 50 / 30, 1e-9)
    })
  )

  it.effect("sequential mode runs in topological order one at a time", () =>
    Effect.gen(function* () {
      const calls = yield* Ref.make<Record<string, number>>({})
      const result = yield* runClocked(diamond(calls), { n: 1 }, { mode: "sequential" })
      assert.strictEqual(result.strategy, "sequential")
      assert.deepStrictEqual(result.started, ["a", "b", "c", "d"])
      assert.strictEqual(result.wallMs, 100)
      assert.strictEqual(result.parallelism, 1)
      assert.strictEqual(timingOf(result.steps.c).startedAt, 40)
      assert.strictEqual(result.outputs.d, "b1+2")
    })
  )

  it.effect("concurrency 0, negative, fractional or NaN is refused with a PipelineError naming it; no step runs", () =>
    Effect.gen(function* () {
      const runs = yield* Ref.make(0)
      const p = Pipeline.make().step("a", [], () => Ref.update(runs, (n) => n + 1))
      for (const concurrency of [0, -1, 1.5, Number.NaN, Number.NEGATIVE_INFINITY]) {
        const error = yield* Effect.flip(Pipeline.run(p, undefined, { concurrency }))
        assert.strictEqual(error._tag, "PipelineError")
        assert.strictEqual(error.reason, "InvalidOption")
        assert.strictEqual(error.option, "concurrency")
        assert.include(error.message, `got ${concurrency}`)
        assert.deepStrictEqual(error.steps, [])
      }
      const fromDefaults = yield* Effect.flip(
        Pipeline.run(
          Pipeline.make({ concurrency: 0 }).step("a", [], () => Ref.update(runs, (n) => n + 1)),
          undefined
        )
      )
      assert.strictEqual(fromDefaults.option, "concurrency")
      assert.strictEqual(yield* Ref.get(runs), 0)
      for (const concurrency of [1, 3, Number.POSITIVE_INFINITY]) {
        const result = yield* Pipeline.run(p, undefined, { concurrency })
        assert.strictEqual(result.status, "succeeded")
      }
      assert.strictEqual(yield* Ref.get(runs), 3)
    })
  )

  it.effect("falls back to sequential when concurrency made steps fail", () =>
    Effect.gen(function* () {
      const inFlight = yield* Ref.make(0)
      // a provider that is overloaded by more than one call at a time
      const call = (value: string) =>
        Effect.acquireUseRelease(
          Ref.updateAndGet(inFlight, (n) => n + 1),
          (n) =>
            n > 1
              ? Effect.fail(new ModelError({ reason: "Overloaded", message: "busy" }))
              : Effect.as(Effect.sleep("10 millis"), value),
          () => Ref.update(inFlight, (n) => n - 1)
        )
      const p = Pipeline.make()
        .step("x", [], () => call("x"))
        .step("y", [], () => call("y"))
        .step("z", ["x", "y"], ({ deps }) => call(deps.x + deps.y))
      const parallelOnly = yield* runClocked(p, undefined, { onFailure: "continue" })
      assert.strictEqual(parallelOnly.status, "failed")
      const result = yield* runClocked(p, undefined, { onFailure: "continue", fallbackToSequential: true })
      assert.strictEqual(result.status, "succeeded")
      assert.strictEqual(result.strategy, "parallelThenSequential")
      assert.strictEqual(result.outputs.z, "xy")
      assert.strictEqual(result.parallelAttempt?.y.status, "failed")
      // a non-retryable failure does not trigger the fallback
      const bad = Pipeline.make().step("bad", [], () =>
        Effect.fail(new ModelError({ reason: "InvalidRequest", message: "no" }))
      )
      const badResult = yield* runClocked(bad, undefined, { fallbackToSequential: true })
      assert.strictEqual(badResult.strategy, "parallel")
    })
  )

  it.effect(
    "after a sequential fallback, steps kept from the parallel run count once in busyMs and criticalPathMs",
    () =>
      Effect.gen(function* () {
        const bRuns = yield* Ref.make(0)
        const p = Pipeline.make()
          .step("a", [], () => sleepThen(1000, "a"))
          .step("c", ["a"], () => sleepThen(100, "c"))
          .step("b", [], () =>
            Effect.flatMap(
              Ref.updateAndGet(bRuns, (n) => n + 1),
              (n) =>
                Effect.zipRight(
                  Effect.sleep("200 millis"),
                  n === 1 ? Effect.fail(new ModelError({ reason: "Overloaded", message: "busy" })) : Effect.succeed("b")
                )
            )
          )
        const result = yield* runClocked(p, undefined, { onFailure: "continue", fallbackToSequential: true })
        assert.strictEqual(result.strategy, "parallelThenSequential")
        assert.strictEqual(result.status, "succeeded")
        // a 0-1000 and c 1000-1100 kept from the parallel run; b 0-200 failed, then 1100-1300
        assert.strictEqual(result.steps.a, result.parallelAttempt?.a)
        assert.deepStrictEqual([timingOf(result.steps.b).startedAt, timingOf(result.steps.b).endedAt], [1100, 1300])
        assert.strictEqual(result.wallMs, 1300)
        assert.strictEqual(result.busyMs, 1000 + 100 + 200 + 200)
        assert.strictEqual(result.criticalPathMs, 1100)
        assert.strictEqual(result.parallelism, 1500 / 1300)
      })
  )

  it.effect("outputs: all outputs, or the steps that did not succeed", () =>
    Effect.gen(function* () {
      const ok = yield* Pipeline.run(
        Pipeline.make().step("one", [], () => Effect.succeed(1)),
        undefined
      )
      assert.deepStrictEqual(yield* Pipeline.outputs(ok), { one: 1 })
      const failing = yield* Pipeline.run(
        Pipeline.make().step("one", [], () => Effect.fail("x")),
        undefined
      )
      const error = yield* Effect.flip(Pipeline.outputs(failing))
      assert.deepStrictEqual(error.failedSteps, ["one"])
    })
  )

  it.effect("renders as Mermaid, annotated with a result", () =>
    Effect.gen(function* () {
      const calls = yield* Ref.make<Record<string, number>>({})
      const p = diamond(calls)
      const chart = Pipeline.toMermaid(p)
      assert.strictEqual(
        chart,
        [
          "flowchart LR",
          '  0["a"]',
          '  1["b"]',
          '  2["c"]',
          '  3["d"]',
          "  0 --> 1",
          "  0 --> 2",
          "  1 --> 3",
          "  2 --> 3"
        ].join("\n")
      )
      const result = yield* runClocked(p, { n: 1 })
      assert.include(Pipeline.toMermaid(p, { result, direction: "TD" }), '2["c: succeeded 50 ms"]')
    })
  )
})
