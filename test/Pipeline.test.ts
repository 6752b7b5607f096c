import { assert, describe, it, vi } from "@effect/vitest"
import { Cause, Clock, Context, Duration, Effect, type Exit, Fiber, Layer, Metric, Ref } from "effect"
import { TestClock } from "effect/testing"
import { ModelError, TimeoutError } from "../src/AiError.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Domain from "../src/Domain.js"
import * as Executor from "../src/Executor.js"
import { ModelProvider } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import * as Pipeline from "../src/Pipeline.js"
import * as RateLimit from "../src/RateLimit.js"
import * as Router from "../src/Router.js"
import * as Stats from "../src/Stats.js"
import { captureLogs } from "./utils/logs.js"

class Greeter extends Context.Service<Greeter, { readonly greet: (name: string) => string }>()("test/Greeter") {}

const sleepThen = <A>(millis: number, value: A) => Effect.as(Effect.sleep(Duration.millis(millis)), value)

/** Runs to completion, moving the TestClock far enough for every sleep. */
const runClocked = <I, O, E, R>(p: Pipeline.Pipeline<I, O, E, R>, input: I, options?: Pipeline.RunOptions) =>
  Effect.gen(function* () {
    const fiber = yield* Effect.forkChild(Pipeline.run(p, input, options))
    yield* TestClock.adjust("1 hour")
    return yield* Fiber.join(fiber)
  })

const timingOf = (outcome: Pipeline.StepOutcome<unknown, unknown>) => {
  assert.notStrictEqual(outcome.status, "skipped")
  return outcome as Pipeline.Timing
}

/** An executor (with its own Stats and a private metric registry) over a mock, and optional guards. */
const executorContext = <G>(guards: Layer.Layer<G, unknown>) =>
  Layer.build(
    Executor.layerWithStats({ timeout: "none" }).pipe(
      Layer.provideMerge(Mock.layer()),
      Layer.provideMerge(guards)
    ) as Layer.Layer<Executor.Executor | Stats.Stats | G, unknown>
  ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))

/** A step name that an ordinary object would turn into its prototype. */
const PROTO = "__proto__"

const overloaded = () => new ModelError({ reason: "Overloaded", message: "busy" })

describe("Pipeline", () => {
  const diamond = (calls: Ref.Ref<Record<string, number>>) => {
    const count = (name: string) => Ref.update(calls, (c) => ({ ...c, [name]: (c[name] ?? 0) + 1 }))
    return Pipeline.make<{ readonly n: number }>()
      .step("a", [], ({ input }) => Effect.andThen(count("a"), sleepThen(10, input.n)))
      .step("b", ["a"], ({ deps }) => Effect.andThen(count("b"), sleepThen(30, `b${deps.a}`)))
      .step("c", ["a"], ({ deps }) => Effect.andThen(count("c"), sleepThen(50, deps.a * 2)))
      .step("d", ["b", "c"], ({ deps }) => Effect.andThen(count("d"), sleepThen(10, `${deps.b}+${deps.c}`)))
  }

  it.effect("diamond: b and c overlap, d runs once after both", () =>
    Effect.gen(function* () {
      const calls = yield* Ref.make<Record<string, number>>({})
      const result = yield* runClocked(diamond(calls), { n: 2 })
      assert.strictEqual(result.status, "succeeded")
      assert.deepStrictEqual(yield* Ref.get(calls), { a: 1, b: 1, c: 1, d: 1 })
      const [a, b, c, d] = (["a", "b", "c", "d"] as const).map((k) => timingOf(result.steps[k]))
      assert.deepStrictEqual([a!.startedAt, a!.endedAt], [0, 10])
      assert.deepStrictEqual([b!.startedAt, b!.endedAt], [10, 40])
      assert.deepStrictEqual([c!.startedAt, c!.endedAt], [10, 60])
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
      assert.strictEqual(timingOf(result.steps.slow).endedAt, 110)
      assert.strictEqual(result.wallMs, 110)
    })
  )

  it.effect("a cycle is rejected with the names of its steps, in order", () =>
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

  it.effect("a long cycle or many unknown dependencies: every name in steps, a message of bounded length", () =>
    Effect.gen(function* () {
      const n = 10_000
      const ring = Array.from({ length: n }, (_, i) => ({
        name: `s${i}`,
        dependsOn: [`s${(i + n - 1) % n}`],
        run: () => Effect.void
      }))
      const cycle = yield* Effect.flip(Pipeline.fromSteps(ring))
      assert.strictEqual(cycle.reason, "Cycle")
      assert.strictEqual(cycle.steps.length, n)
      assert.isBelow(cycle.message.length, 400, cycle.message.slice(0, 400))
      const [first] = cycle.steps
      assert.isTrue(cycle.message.startsWith(`dependency cycle: ${first} -> `), cycle.message)
      assert.isTrue(cycle.message.endsWith(` -> ${first}`), cycle.message)
      assert.include(cycle.message, `${n - 10} more`)
      const missing = Array.from({ length: 5_000 }, (_, i) => `gone${i}`)
      const unknown = yield* Effect.flip(
        Pipeline.fromSteps([{ name: "x", dependsOn: missing, run: () => Effect.void }])
      )
      assert.strictEqual(unknown.reason, "UnknownDependency")
      assert.deepStrictEqual(unknown.steps, ["x", ...missing])
      assert.isBelow(unknown.message.length, 400, unknown.message.slice(0, 400))
      assert.include(unknown.message, '"gone0"')
      assert.include(unknown.message, "4990 more")
    })
  )

  it.effect("a cycle of long step names: each name in the message cut, every name whole in steps", () =>
    Effect.gen(function* () {
      const names = Array.from({ length: 10 }, (_, i) => `${String(i).repeat(1_000)}`)
      const ring = names.map((name, i) => ({
        name,
        dependsOn: [names[(i + names.length - 1) % names.length]!],
        run: () => Effect.void
      }))
      const cycle = yield* Effect.flip(Pipeline.fromSteps(ring))
      assert.strictEqual(cycle.reason, "Cycle")
      assert.deepStrictEqual([...cycle.steps].sort(), names)
      assert.isBelow(cycle.message.length, 1_500, cycle.message.slice(0, 400))
      assert.include(cycle.message, "(1,000 characters)")
      const self = yield* Effect.flip(
        Pipeline.fromSteps([{ name: "y".repeat(1_000), dependsOn: ["y".repeat(1_000)], run: () => Effect.void }])
      )
      assert.deepStrictEqual(self.steps, ["y".repeat(1_000)])
      assert.isBelow(self.message.length, 300, self.message)
      assert.isTrue(
        self.message.startsWith(`dependency cycle: ${"y".repeat(80)}… (1,000 characters) -> `),
        self.message
      )
    })
  )

  it.effect(
    "a long step name defined twice or depending on long unknown names: each shown cut, as every check shows a value",
    () =>
      Effect.gen(function* () {
        const long = (c: string) => c.repeat(1_000)
        const duplicate = yield* Effect.flip(
          Pipeline.fromSteps([
            { name: long("a"), run: () => Effect.void },
            { name: long("a"), run: () => Effect.void }
          ])
        )
        assert.strictEqual(duplicate.reason, "DuplicateStep")
        assert.deepStrictEqual(duplicate.steps, [long("a")])
        assert.isBelow(duplicate.message.length, 200, duplicate.message)
        assert.include(duplicate.message, "(1,000 characters)")
        const missing = Array.from({ length: 10 }, (_, i) => long(String(i)))
        const unknown = yield* Effect.flip(
          Pipeline.fromSteps([{ name: long("x"), dependsOn: missing, run: () => Effect.void }])
        )
        assert.strictEqual(unknown.reason, "UnknownDependency")
        assert.deepStrictEqual(unknown.steps, [long("x"), ...missing])
        assert.isBelow(unknown.message.length, 1_500, unknown.message.slice(0, 400))
        assert.include(unknown.message, `${JSON.stringify("9".repeat(80))}… (1,000 characters)`)
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

  it.effect("the builder rules out unknown names statically; widened names fail run and validate, never throw", () =>
    Effect.gen(function* () {
      const p = Pipeline.make<string>().step("a", [], ({ input }) => Effect.succeed(input.length))
      // @ts-expect-error "b" is not a step yet
      const unknown = p.step("c", ["b"], () => Effect.void)
      // @ts-expect-error "a" is taken
      const taken = p.step("a", [], () => Effect.void)
      assert.strictEqual((yield* Effect.flip(Pipeline.run(unknown, "x"))).reason, "UnknownDependency")
      assert.strictEqual((yield* Effect.flip(Pipeline.validate(taken))).reason, "DuplicateStep")
      // the first error sticks: later steps do not hide it
      const later = unknown.step("d", [], () => Effect.void)
      assert.deepStrictEqual((yield* Effect.flip(Pipeline.run(later, "x"))).steps, ["c", "b"])
      const typed = p.step("b", ["a"], ({ deps }) => Effect.succeed(deps.a + 1))
      // @ts-expect-error deps only holds declared dependencies
      typed.step("c", ["b"], ({ deps }) => Effect.succeed(deps.a))
      assert.deepStrictEqual(typed.names, ["a", "b"])
    })
  )

  it.effect("a step's requirements become the run's requirements", () =>
    Effect.gen(function* () {
      const p = Pipeline.make<string>()
        .step("greet", [], ({ input }) =>
          Effect.gen(function* () {
            const greeter = yield* Greeter
            return greeter.greet(input)
          })
        )
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
        .step("boom", [], () => Effect.andThen(Effect.sleep("10 millis"), Effect.fail("broken" as const)))
        .step("sibling", [], () => sleepThen(100, "late").pipe(Effect.onInterrupt(() => Ref.set(interrupted, true))))
        .step("dependent", ["boom"], () => Effect.succeed(1))
      const result = yield* runClocked(p, undefined, { onFailure: "failFast" })
      assert.strictEqual(result.status, "failed")
      assert.isTrue(yield* Ref.get(interrupted))
      const boom = result.steps.boom
      assert.strictEqual(boom.status === "failed" && boom.error, "broken")
      const sibling = result.steps.sibling
      assert.deepStrictEqual(sibling.status === "interrupted" && [sibling.failedStep, sibling.endedAt], ["boom", 10])
      assert.strictEqual(result.steps.dependent.status, "skipped")
      assert.strictEqual(result.wallMs, 10)
      assert.deepStrictEqual(result.failedSteps, ["boom", "sibling"])
    })
  )

  it.effect("a skip or stop reason cuts a long step name as other messages do, and keeps short ones as they were", () =>
    Effect.gen(function* () {
      const root = "r".repeat(1_000)
      const middle = "m".repeat(1_000)
      const p = yield* Pipeline.fromSteps([
        { name: root, run: () => Effect.fail("broken") },
        { name: middle, dependsOn: [root], run: () => Effect.void },
        { name: "leaf", dependsOn: [middle], run: () => Effect.void },
        { name: "short", run: () => Effect.fail("broken") },
        { name: "after", dependsOn: ["short"], run: () => Effect.void }
      ])
      const continued = yield* runClocked(p, undefined, { onFailure: "continue", mode: "sequential" })
      const reasonOf = (result: { readonly steps: object }, name: string) => {
        const outcome = (result.steps as Record<string, Pipeline.StepOutcome<unknown, unknown> | undefined>)[name]
        return outcome?.status === "skipped" || outcome?.status === "interrupted" ? outcome.reason : outcome?.status
      }
      const cut = (name: string) => `"${name.slice(0, 80)}"… (1,000 characters)`
      assert.strictEqual(reasonOf(continued, middle), `dependency ${cut(root)} failed`)
      assert.strictEqual(
        reasonOf(continued, "leaf"),
        `dependency ${cut(middle)} skipped (step ${cut(root)} did not succeed)`
      )
      assert.strictEqual(reasonOf(continued, "after"), 'dependency "short" failed')
      const stopped = yield* runClocked(p, undefined, { onFailure: "failFast", mode: "sequential" })
      assert.strictEqual(reasonOf(stopped, "short"), `pipeline stopped: step ${cut(root)} failed`)
    })
  )

  it.effect("a step whose run returns no Effect (a Promise, a number) fails, named; the run completes", () =>
    Effect.gen(function* () {
      const p = yield* Pipeline.fromSteps<undefined, string, never, never>([
        { name: "fetch", run: (async () => "data") as never },
        { name: "count", run: (() => 42) as never },
        { name: "after", dependsOn: ["count"], run: () => Effect.succeed("never") }
      ])
      const result = yield* runClocked(p, undefined, { onFailure: "continue" })
      assert.strictEqual(result.status, "failed")
      const messageOf = (name: string) => {
        const outcome = result.steps[name]
        return outcome?.status === "failed" ? outcome.message : `not failed: ${outcome?.status}`
      }
      assert.include(messageOf("fetch"), 'step "fetch": run must return an Effect, got a Promise')
      assert.include(messageOf("count"), 'step "count": run must return an Effect, got a number')
      assert.strictEqual(result.steps.after?.status, "skipped")
    })
  )

  it.effect(
    "a step failing with a huge message keeps its first 1,000 characters, whole, and says how long it was",
    () =>
      Effect.gen(function* () {
        // 999 characters, then an emoji (two UTF-16 units) across the bound, then 1 MB more.
        const huge = `${"x".repeat(999)}\u{1F600}${"y".repeat(1_000_000)}`
        const p = yield* Pipeline.fromSteps<undefined, string, Error, never>([
          { name: "loud", run: () => Effect.fail(new Error(huge)) }
        ])
        const result = yield* runClocked(p, undefined, { onFailure: "continue" })
        const outcome = result.steps.loud
        const message = outcome?.status === "failed" ? outcome.message : ""
        assert.strictEqual(message, `${"x".repeat(999)}… (${huge.length} characters)`)
      })
  )

  it.effect("a step failing with something that cannot be written as a message (no prototype) fails; no hang", () =>
    Effect.gen(function* () {
      const bare = Object.create(null) as object
      const throwing = {
        get message(): string {
          throw new Error("a getter that throws")
        }
      }
      // Each of these made its step's fiber die: the run waited for its outcome for ever (or,
      // beside a failing step, called it "interrupted").
      const p = yield* Pipeline.fromSteps<undefined, unknown, unknown, never>([
        { name: "bare", run: () => Effect.fail(bare) },
        { name: "getter", run: () => Effect.fail(throwing) },
        { name: "dies", run: () => Effect.die(bare) },
        { name: "after", dependsOn: ["bare"], run: () => Effect.succeed(1) },
        { name: "governed", run: () => Effect.fail(bare), timeout: "1 second", fallback: { value: "stood in" } }
      ])
      const context = yield* executorContext(Layer.empty)
      const result = yield* runClocked(p, undefined, { onFailure: "continue" }).pipe(Effect.provide(context))
      const messages = ["bare", "getter", "dies"].map((name) => {
        const outcome = result.steps[name]
        return outcome?.status === "failed" ? outcome.message : `not failed: ${outcome?.status}`
      })
      assert.deepStrictEqual(messages, ["[object Object]", "[object Object]", "Error: {}"])
      assert.strictEqual((result.steps.bare as Pipeline.Failed<unknown>).error, bare)
      assert.strictEqual(result.steps.after?.status, "skipped")
      assert.deepStrictEqual([result.steps.governed?.status, result.outputs.governed], ["succeeded", "stood in"])
    })
  )

  it.effect("a step whose effect hands the run loop no Effect (deep inside) fails, named; no hang, no defect", () =>
    Effect.gen(function* () {
      // `run` returns an Effect, but its flatMap returns 42: Effect's run loop ends that fiber at
      // once with a defect, skipping every handler on its stack (the step's `Effect.exit` too).
      const broken = () => Effect.flatMap(Effect.sleep("10 millis"), (): Effect.Effect<never> => 42 as never)
      const p = yield* Pipeline.fromSteps<undefined, unknown, never, never>([
        { name: "broken", run: broken },
        { name: "slow", run: () => sleepThen(50, "late") },
        { name: "after", dependsOn: ["broken"], run: () => Effect.succeed("never") }
      ])
      for (const mode of ["parallel", "sequential"] as const) {
        for (const onFailure of ["continue", "failFast"] as const) {
          const fiber = yield* Effect.forkChild(Pipeline.run(p, undefined, { mode, onFailure }))
          yield* TestClock.adjust("1 hour")
          const exit = fiber.pollUnsafe()
          if (exit === undefined) yield* Fiber.interrupt(fiber)
          const label = `${mode}, ${onFailure}`
          assert.isDefined(exit, `${label}: the run ended`)
          assert.isTrue(exit!._tag === "Success", `${label}: the run did not die`)
          const result = (exit as Exit.Success<Pipeline.Result<Record<string, unknown>, never>>).value
          const broke = result.steps.broken
          assert.strictEqual(broke?.status, "failed", label)
          assert.include(broke?.status === "failed" ? broke.message : "", "Not a valid effect: 42", label)
          assert.deepStrictEqual(
            broke?.status === "failed" && [
              broke.error,
              broke.startedAt - result.startedAt,
              broke.endedAt - result.startedAt
            ],
            [undefined, 0, 10],
            label
          )
          assert.strictEqual(result.steps.after?.status, "skipped", label)
          const slow = result.steps.slow?.status
          assert.strictEqual(
            slow,
            onFailure === "continue" ? "succeeded" : mode === "parallel" ? "interrupted" : "skipped"
          )
          assert.deepStrictEqual(
            result.failedSteps,
            onFailure === "failFast" && mode === "parallel" ? ["broken", "slow"] : ["broken"]
          )
        }
      }
    })
  )

  it.effect("ready steps start in definition order, whatever order they became ready in", () =>
    Effect.gen(function* () {
      const order: Array<string> = []
      const step = (name: string) => () =>
        Effect.andThen(
          Effect.sync(() => order.push(name)),
          Effect.sleep("10 millis")
        )
      // A, then B; A's end readies D, B's end readies C, which is defined before D: C goes first.
      const p = Pipeline.make()
        .step("A", [], step("A"))
        .step("B", [], step("B"))
        .step("C", ["B"], step("C"))
        .step("D", ["A"], step("D"))
      yield* runClocked(p, undefined, { concurrency: 1 })
      assert.deepStrictEqual(order, ["A", "B", "C", "D"])
    })
  )

  it.effect("ready steps start in definition order in a large random DAG too (the ready steps' heap)", () =>
    Effect.gen(function* () {
      // A seeded DAG of 2,000 steps, each on up to 3 others, listed shuffled; run one at a time.
      let seed = 7
      const next = () => {
        seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648
        return seed / 2_147_483_648
      }
      const n = 2_000
      const deps = Array.from({ length: n }, (_, i) =>
        i === 0 ? [] : [...new Set(Array.from({ length: Math.floor(next() * 4) }, () => Math.floor(next() * i)))]
      )
      // The list's order (a shuffle): its place in the list is a step's place in the definition.
      const listed = Array.from({ length: n }, (_, i) => i)
      for (let i = n - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1))
        ;[listed[i], listed[j]] = [listed[j]!, listed[i]!]
      }
      const order: Array<number> = []
      const steps = listed.map((i) => ({
        name: `s${i}`,
        dependsOn: deps[i]!.map((d) => `s${d}`),
        run: () => Effect.sync(() => order.push(i))
      }))
      const p = yield* Pipeline.fromSteps<undefined, void, never, never>(steps)
      yield* Pipeline.run(p, undefined, { concurrency: 1 })
      // What definition order means: of the steps ready, the one listed first starts first.
      const expected: Array<number> = []
      const done = new Set<number>()
      while (expected.length < n) {
        const first = listed.find((i) => !done.has(i) && deps[i]!.every((d) => done.has(d)))!
        expected.push(first)
        done.add(first)
      }
      assert.deepStrictEqual(order, expected)
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
      const fiber = yield* Effect.forkChild(Pipeline.run(p, undefined))
      yield* TestClock.adjust("50 millis")
      yield* Fiber.interrupt(fiber)
      assert.deepStrictEqual([...(yield* Ref.get(interrupted))].sort(), ["x", "y"])
      // One at a time (each step on a fiber of its own), the running one too.
      yield* Ref.set(interrupted, [])
      const sequential = yield* Effect.forkChild(Pipeline.run(p, undefined, { mode: "sequential" }))
      yield* TestClock.adjust("150 millis")
      yield* Fiber.interrupt(sequential)
      assert.deepStrictEqual(yield* Ref.get(interrupted), ["y"])
    })
  )

  it.effect("continue mode skips only the dependents of a failed step", () =>
    Effect.gen(function* () {
      const p = Pipeline.make()
        .step("a", [], () => Effect.andThen(Effect.sleep("10 millis"), Effect.fail(new Error("a broke"))))
        .step("b", [], () => sleepThen(50, "b"))
        .step("c", ["a"], () => Effect.succeed("c"))
        .step("d", ["c"], () => Effect.succeed("d"))
        .step("e", ["b"], ({ deps }) => sleepThen(10, `${deps.b}e`))
      const result = yield* runClocked(p, undefined, { onFailure: "continue" })
      assert.strictEqual(result.steps.a.status, "failed")
      assert.strictEqual(result.outputs.e, "be")
      const c = result.steps.c
      const d = result.steps.d
      assert.isTrue(c.status === "skipped" && c.dependency === "a" && c.failedStep === "a")
      assert.isTrue(d.status === "skipped" && d.dependency === "c" && d.failedStep === "a")
      assert.strictEqual(result.wallMs, 60)
      assert.deepStrictEqual(result.failedSteps, ["a"])
    })
  )

  it.effect("concurrency limit is respected; sequential mode runs one at a time in order", () =>
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
      const p = yield* Pipeline.fromSteps(Array.from({ length: 5 }, (_, i) => ({ name: `s${i}`, run: () => tracked })))
      const result = yield* runClocked(p, undefined, { concurrency: 2 })
      assert.strictEqual(yield* Ref.get(peak), 2)
      assert.strictEqual(result.wallMs, 30)
      const calls = yield* Ref.make<Record<string, number>>({})
      const sequential = yield* runClocked(diamond(calls), { n: 1 }, { mode: "sequential" })
      assert.strictEqual(sequential.strategy, "sequential")
      assert.deepStrictEqual(sequential.started, ["a", "b", "c", "d"])
      assert.strictEqual(sequential.wallMs, 100)
      assert.strictEqual(sequential.parallelism, 1)
    })
  )

  it.effect(
    "parallel mode runs at most Pipeline.defaultConcurrency steps at once unless told otherwise; all at once only with Infinity",
    () =>
      Effect.gen(function* () {
        assert.strictEqual(Pipeline.defaultConcurrency, 100)
        const startedWith = (options?: Pipeline.RunOptions, defaults?: Pipeline.RunOptions) =>
          Effect.gen(function* () {
            const started = yield* Ref.make(0)
            // Each step starts at once, then never ends: what started is what runs at once.
            const p = yield* Pipeline.fromSteps(
              Array.from({ length: 250 }, (_, i) => ({
                name: `s${i}`,
                run: () =>
                  Effect.andThen(
                    Ref.update(started, (n) => n + 1),
                    Effect.never
                  )
              })),
              defaults
            )
            const fiber = yield* Effect.forkChild(Pipeline.run(p, undefined, options))
            yield* TestClock.adjust("1 hour")
            yield* Fiber.interrupt(fiber)
            return yield* Ref.get(started)
          })
        assert.strictEqual(yield* startedWith(), 100)
        assert.strictEqual(yield* startedWith({ concurrency: 7 }), 7)
        assert.strictEqual(yield* startedWith(undefined, { concurrency: 7 }), 7)
        assert.strictEqual(yield* startedWith({ concurrency: Number.POSITIVE_INFINITY }), 250)
        assert.strictEqual(yield* startedWith(undefined, { concurrency: Number.POSITIVE_INFINITY }), 250)
      })
  )

  it.effect("outputs: all outputs, or the steps that did not succeed", () =>
    Effect.gen(function* () {
      const ok = yield* Pipeline.run(
        Pipeline.make().step("one", [], () => Effect.succeed(1)),
        undefined
      )
      assert.deepStrictEqual({ ...(yield* Pipeline.outputs(ok)) }, { one: 1 })
      const failing = yield* Pipeline.run(
        Pipeline.make().step("one", [], () => Effect.fail("x")),
        undefined
      )
      const error = yield* Effect.flip(Pipeline.outputs(failing))
      assert.deepStrictEqual(error.failedSteps, ["one"])
      assert.strictEqual(error.message, "one: failed (x)")
      // 5,000 steps that did not succeed: the message names some (the failed first), not all
      const wide = yield* Pipeline.fromSteps([
        { name: "root", run: () => Effect.fail("boom") },
        ...Array.from({ length: 4_999 }, (_, i) => ({ name: `s${i}`, dependsOn: ["root"], run: () => Effect.void }))
      ])
      const many = yield* Effect.flip(Pipeline.outputs(yield* Pipeline.run(wide, undefined)))
      assert.deepStrictEqual(many.failedSteps, ["root"])
      assert.isTrue(many.message.startsWith("root: failed (boom); s0: skipped"), many.message.slice(0, 200))
      assert.include(many.message, "and 4990 more")
      assert.isBelow(many.message.length, 2_000)
    })
  )

  it.effect("renders as Mermaid, annotated with a result", () =>
    Effect.gen(function* () {
      const calls = yield* Ref.make<Record<string, number>>({})
      const p = diamond(calls)
      assert.strictEqual(
        Pipeline.toMermaid(p),
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

  it.effect("a step with only a description is not governed: it needs no Executor, in its type or when run", () =>
    Effect.gen(function* () {
      const p = Pipeline.make()
        .step("fetch", [], () => Effect.succeed(2), { description: "Fetch the sources" })
        .step("double", ["fetch"], ({ deps }) => Effect.succeed(deps.fetch * 2), { description: undefined })
      // No Executor in context (nor in the type: `it.effect` takes no requirement of it).
      const result = yield* Pipeline.run(p, undefined)
      assert.strictEqual(result.outputs.double, 4)
      assert.include(Pipeline.toMermaid(p), '0["Fetch the sources"]')
    })
  )

  it.effect("toMermaid: null options (or fields) are no options, as undefined ones are; it threw a TypeError", () =>
    Effect.gen(function* () {
      const p = diamond(yield* Ref.make<Record<string, number>>({}))
      const plain = Pipeline.toMermaid(p)
      assert.strictEqual(Pipeline.toMermaid(p, null as never), plain)
      assert.strictEqual(Pipeline.toMermaid(p, { direction: null, result: null } as never), plain)
    })
  )

  it.effect(
    "toMermaid: a direction other than TB, TD, BT, RL or LR is a PipelineError naming it; it went into the text",
    () =>
      Effect.gen(function* () {
        const p = diamond(yield* Ref.make<Record<string, number>>({}))
        for (const direction of ["TB", "TD", "BT", "RL", "LR"] as const) {
          assert.isTrue(Pipeline.toMermaid(p, { direction }).startsWith(`flowchart ${direction}\n`), direction)
        }
        for (const direction of ["bogus", "lr", "LR\n  0 --> 3", "", 1]) {
          let thrown: unknown
          try {
            Pipeline.toMermaid(p, { direction } as never)
          } catch (error) {
            thrown = error
          }
          assert.instanceOf(thrown, Pipeline.PipelineError, JSON.stringify(direction))
          const error = thrown as Pipeline.PipelineError
          assert.strictEqual(error.reason, "InvalidOption")
          assert.strictEqual(error.field, "direction")
          assert.include(error.message, '"TB", "TD", "BT", "RL" or "LR"')
          assert.notInclude(error.message, "\n")
        }
      })
  )

  it.effect(
    "toMermaid: options that are no object, an unknown option or a result that is no run's result are a PipelineError naming it",
    () =>
      Effect.gen(function* () {
        const p = diamond(yield* Ref.make<Record<string, number>>({}))
        const refused = (options: unknown) => {
          try {
            Pipeline.toMermaid(p, options as never)
          } catch (error) {
            assert.instanceOf(error, Pipeline.PipelineError, JSON.stringify(options))
            return error as Pipeline.PipelineError
          }
          assert.fail(`${JSON.stringify(options)} was drawn`)
        }
        for (const [options, field] of [
          ["TD", "options"],
          [5, "options"],
          [[], "options"],
          [{ direction: "TD", dirction: "LR" }, "dirction"],
          [{ results: {} }, "results"],
          [{ result: "done" }, "result"],
          [{ result: [] }, "result"],
          [{ result: {} }, "result"],
          [{ result: { steps: "a" } }, "result"]
        ] as const) {
          const error = refused(options)
          assert.strictEqual(error.reason, "InvalidOption", JSON.stringify(options))
          assert.strictEqual(error.field, field, JSON.stringify(options))
          assert.include(error.message, field)
        }
        assert.include(refused({ dirction: "LR" }).message, "unknown option (did you mean direction?)")
        assert.include(refused({ colour: "red" }).message, "unknown option (expected one of direction, result)")
        const result = yield* runClocked(p, { n: 1 })
        assert.include(Pipeline.toMermaid(p, { result }), '2["c: succeeded 50 ms"]')
      })
  )

  it.effect(
    "toMermaid of a pipeline whose definition was refused throws its PipelineError; it drew the steps before it",
    () =>
      Effect.gen(function* () {
        const p = Pipeline.make()
          .step("a", [], () => Effect.succeed(1))
          .step("b", ["a"], () => Effect.succeed(2), { timeout: -1 })
          .step("c", ["b"] as never, () => Effect.succeed(3))
        const issue = yield* Effect.flip(Pipeline.validate(p))
        let thrown: unknown
        try {
          Pipeline.toMermaid(p)
        } catch (error) {
          thrown = error
        }
        assert.strictEqual(thrown, issue)
        assert.deepStrictEqual([issue.reason, issue.field], ["InvalidStep", "steps[1].timeout"])
      })
  )

  it.effect(
    "toMermaid of a pipeline whose defaults were refused draws its steps: it threw the defaults' error (and the steps were dropped)",
    () =>
      Effect.gen(function* () {
        const p = Pipeline.make({ concurrency: 0 })
          .step("a", [], () => Effect.succeed(1))
          .step("b", ["a"], () => Effect.succeed(2))
        assert.deepStrictEqual(Pipeline.toMermaid(p).split("\n"), ["flowchart LR", '  0["a"]', '  1["b"]', "  0 --> 1"])
        // Running it still fails with the defaults' error, as validate does.
        const issue = yield* Effect.flip(Pipeline.validate(p))
        assert.deepStrictEqual([issue.reason, issue.field], ["InvalidOption", "concurrency"])
        // A step refused after them is still the definition's: drawing throws it.
        const refused = p.step("c", ["nope"] as never, () => Effect.succeed(3))
        let thrown: unknown
        try {
          Pipeline.toMermaid(refused)
        } catch (error) {
          thrown = error
        }
        assert.instanceOf(thrown, Pipeline.PipelineError)
        assert.strictEqual((thrown as Pipeline.PipelineError).reason, "UnknownDependency")
      })
  )

  it.effect(
    "toMermaid: a result whose step outcome is no outcome is a PipelineError naming result.steps; null threw a TypeError, others drew 'undefined undefined ms'",
    () =>
      Effect.gen(function* () {
        const p = Pipeline.make()
          .step("a", [], () => Effect.void)
          .step("b", ["a"], () => Effect.void)
        for (const outcome of [
          null,
          5,
          {},
          { status: "done", durationMs: 1 },
          { status: "succeeded\n  0 --> 1", durationMs: 1 },
          { status: "succeeded", durationMs: "x" },
          { status: "succeeded", durationMs: Number.NaN },
          { status: "failed", durationMs: -1 }
        ]) {
          let thrown: unknown
          try {
            Pipeline.toMermaid(p, { result: { steps: { a: outcome } } } as never)
          } catch (error) {
            thrown = error
          }
          assert.instanceOf(thrown, Pipeline.PipelineError, JSON.stringify(outcome))
          const error = thrown as Pipeline.PipelineError
          assert.deepStrictEqual([error.reason, error.field], ["InvalidOption", "result.steps"])
          assert.include(error.message, '"a"')
        }
        // Outcomes of every kind are drawn; a step the result lacks is drawn plain.
        const drawn = Pipeline.toMermaid(p, {
          result: { steps: { a: { status: "timedOut", durationMs: 5 } } }
        } as never)
        assert.include(drawn, '0["a: timedOut 5 ms"]')
        assert.include(drawn, '1["b"]')
      })
  )

  it.effect("toMermaid: a step name in backticks is drawn as its text, not as Mermaid markdown", () =>
    Effect.gen(function* () {
      const p = Pipeline.make()
        .step("`**bold**`", [], () => Effect.void)
        .step("b", ["`**bold**`"], () => Effect.void, { description: "`_x_`" })
      assert.deepStrictEqual(Pipeline.toMermaid(p).split("\n"), [
        "flowchart LR",
        '  0["#96;**bold**#96;"]',
        '  1["#96;_x_#96;"]',
        "  0 --> 1"
      ])
    })
  )

  it.effect("toMermaid: a step name or description with quotes, brackets or line breaks stays in its label", () =>
    Effect.gen(function* () {
      const p = Pipeline.make()
        .step('a"] --> x["b', [], () => Effect.void)
        .step("c\n  0 --> 0\n%% d", ['a"] --> x["b'], () => Effect.void, { description: "e]\r\nf(g){h}|<i>#j" })
      const lines = Pipeline.toMermaid(p).split("\n")
      assert.deepStrictEqual(lines, [
        "flowchart LR",
        '  0["a#quot;#93; --#gt; x#91;#quot;b"]',
        '  1["e#93;<br/>f#40;g#41;#123;h#125;#124;#lt;i#gt;#35;j"]',
        "  0 --> 1"
      ])
      const named = Pipeline.make().step("c\n  0 --> 0", [], () => Effect.void)
      assert.deepStrictEqual(Pipeline.toMermaid(named).split("\n"), ["flowchart LR", '  0["c<br/>  0 --#gt; 0"]'])
    })
  )
})

describe("Pipeline definitions are checked (issues 10, 12, 13)", () => {
  const ok = () => Effect.succeed(1)

  it.effect(
    "a step, its options, the defaults or a run's options whose getter (or Proxy trap) throws: a PipelineError naming the field; it threw out of .step, make and toMermaid, and fromSteps and run died",
    () =>
      Effect.gen(function* () {
        const throwing = (field: string, rest: object = {}) =>
          Object.defineProperty({ ...rest }, field, {
            enumerable: true,
            get: () => {
              throw new Error(`${field} getter`)
            }
          })
        const built = Pipeline.make()
          .step("first", [], ok)
          .step("a", [], ok, throwing("timeout") as never)
        const step = yield* Effect.flip(Pipeline.validate(built))
        assert.deepStrictEqual([step.reason, step.field, step.steps], ["InvalidStep", "steps[1].timeout", ["a"]])
        assert.include(step.message, "timeout getter")
        const spec = yield* Effect.flip(
          Pipeline.fromSteps([{ name: "a", run: ok }, throwing("dependsOn", { name: "b", run: ok })] as never)
        )
        assert.deepStrictEqual([spec.reason, spec.field], ["InvalidStep", "steps[1].dependsOn"])
        const trap = new Proxy(
          {},
          {
            ownKeys: () => {
              throw new Error("keys trap")
            }
          }
        )
        const proxied = yield* Effect.flip(Pipeline.fromSteps([trap] as never))
        assert.deepStrictEqual([proxied.reason, proxied.field], ["InvalidStep", "steps[0]"])
        assert.include(proxied.message, "keys trap")
        const defaults = yield* Effect.flip(Pipeline.fromSteps([{ name: "a", run: ok }], throwing("mode") as never))
        assert.deepStrictEqual([defaults.reason, defaults.option], ["InvalidOption", "mode"])
        assert.strictEqual(Pipeline.make(throwing("mode") as never).issue?.option, "mode")
        const p = Pipeline.make().step("a", [], ok)
        const run = yield* Effect.flip(Pipeline.run(p, undefined, throwing("concurrency") as never))
        assert.deepStrictEqual([run.reason, run.option], ["InvalidOption", "concurrency"])
        let thrown: unknown
        try {
          Pipeline.toMermaid(p, throwing("direction") as never)
        } catch (error) {
          thrown = error
        }
        assert.instanceOf(thrown, Pipeline.PipelineError)
        assert.strictEqual((thrown as Pipeline.PipelineError).field, "direction")
      })
  )

  it.effect(
    "the steps list, a dependsOn list or a fallback whose element, getter or trap throws: a PipelineError naming it; fromSteps died and .step threw",
    () =>
      Effect.gen(function* () {
        const failing = (message: string) => () => {
          throw new Error(message)
        }
        // An array whose element `at` cannot be read (a Proxy's get trap that throws).
        const unreadable = <A>(items: ReadonlyArray<A>, at: number) =>
          new Proxy([...items], {
            get: (target, key, receiver) =>
              key === String(at) ? failing(`element ${at} trap`)() : Reflect.get(target, key, receiver)
          })
        const steps = yield* Effect.flip(
          Pipeline.fromSteps(
            unreadable(
              [
                { name: "a", run: ok },
                { name: "b", run: ok }
              ],
              1
            )
          )
        )
        assert.deepStrictEqual([steps.reason, steps.field, steps.steps], ["InvalidStep", "steps[1]", []])
        assert.include(steps.message, "element 1 trap")
        const length = new Proxy([], {
          get: (target, key) => (key === "length" ? failing("length trap")() : Reflect.get(target, key))
        })
        const lengthError = yield* Effect.flip(Pipeline.fromSteps(length))
        assert.deepStrictEqual([lengthError.reason, lengthError.field], ["InvalidStep", "steps"])
        assert.include(lengthError.message, "length trap")

        const dependsOn = unreadable(["a", "b"], 1)
        const spec = yield* Effect.flip(
          Pipeline.fromSteps([
            { name: "a", run: ok },
            { name: "b", run: ok },
            { name: "c", dependsOn, run: ok }
          ])
        )
        assert.deepStrictEqual([spec.reason, spec.field, spec.steps], ["InvalidStep", "steps[2].dependsOn[1]", ["c"]])
        assert.include(spec.message, "element 1 trap")
        const built = Pipeline.make()
          .step("a", [], ok)
          .step("b", unreadable(["a"], 0) as never, ok)
        const step = yield* Effect.flip(Pipeline.validate(built))
        assert.deepStrictEqual([step.reason, step.field], ["InvalidStep", "steps[1].dependsOn[0]"])

        const getter = (field: string) =>
          Object.defineProperty({}, field, { enumerable: true, get: failing(`${field} getter`) })
        const keys = new Proxy({}, { ownKeys: failing("keys trap") })
        for (const [fallback, field, message] of [
          [getter("value"), "steps[0].fallback.value", "value getter"],
          [getter("step"), "steps[0].fallback.step", "step getter"],
          [keys, "steps[0].fallback", "keys trap"]
        ] as const) {
          const error = yield* Effect.flip(Pipeline.fromSteps([{ name: "a", run: ok, fallback: fallback as never }]))
          assert.deepStrictEqual([error.reason, error.field, error.steps], ["InvalidStep", field, ["a"]])
          assert.include(error.message, message)
          const viaBuilder = yield* Effect.flip(
            Pipeline.validate(Pipeline.make().step("a", [], ok, { fallback } as never))
          )
          assert.strictEqual(viaBuilder.field, field)
        }
      })
  )

  it.effect(
    "a step or its options as a class (fields as getters or methods on its prototype) are read; a Map, which has none, is refused by name, not read as none",
    () =>
      Effect.gen(function* () {
        class Step {
          readonly dependsOn = []
          get name() {
            return "a"
          }
          run() {
            return Effect.succeed(7)
          }
        }
        class Options {
          get description() {
            return "Fetch the sources"
          }
        }
        const fromData = yield* Pipeline.fromSteps<void, number, never, never>([new Step()] as never)
        assert.strictEqual((yield* Pipeline.run(fromData, undefined)).outputs.a, 7)
        const built = Pipeline.make().step("a", [], ok, new Options() as never)
        assert.include(Pipeline.toMermaid(yield* Pipeline.validate(built)), '0["Fetch the sources"]')
        const map = Pipeline.make().step("a", [], ok, new Map([["timeout", "1 second"]]) as never)
        const error = yield* Effect.flip(Pipeline.validate(map))
        assert.deepStrictEqual([error.reason, error.field, error.steps], ["InvalidStep", "steps[0]", ["a"]])
        assert.include(error.message, "an instance of Map")
        const mapped = yield* Effect.flip(Pipeline.fromSteps([new Map([["name", "a"]])] as never))
        assert.deepStrictEqual([mapped.reason, mapped.field], ["InvalidStep", "steps[0]"])
      })
  )

  it.effect(
    "defaults given as a class (getters on its prototype) stay the defaults when a run gives options of its own",
    () =>
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
        class OneAtATime {
          get concurrency() {
            return 1
          }
        }
        const p = Pipeline.make(new OneAtATime())
          .step("a", [], () => tracked)
          .step("b", [], () => tracked)
          .step("c", [], () => tracked)
        const result = yield* runClocked(p, undefined, { onFailure: "continue" })
        assert.strictEqual(result.status, "succeeded")
        assert.strictEqual(yield* Ref.get(peak), 1)
      })
  )

  it.effect(
    "fromSteps: steps null, dependsOn a string, a typo, run not a function: PipelineError naming the field",
    () =>
      Effect.gen(function* () {
        const cases: ReadonlyArray<readonly [unknown, string]> = [
          [null, "steps"],
          [
            [
              { name: "a", run: ok },
              { name: "b", dependsOn: "a", run: ok }
            ],
            "steps[1].dependsOn"
          ],
          [[{ name: "a", dependOn: [], run: ok }], "steps[0].dependOn"],
          [[{ name: "a", run: "go" }], "steps[0].run"],
          [[{ name: "", run: ok }], "steps[0].name"],
          [[{ name: "a", dependsOn: [1], run: ok }], "steps[0].dependsOn[0]"],
          [[{ name: "a", run: ok, fallback: "cached" }], "steps[0].fallback"],
          [[{ name: "a", run: ok, retry: { maxAttempts: 0 } }], "steps[0].retry.maxAttempts"],
          [[{ name: "a", run: ok, breaker: 3 }], "steps[0].breaker"],
          // The name of the series that names past a bound count in: a step's figures would add to theirs.
          [[{ name: "a", run: ok, stats: "(other)" }], "steps[0].stats"],
          [[{ name: "a", run: ok, breaker: "(other)" }], "steps[0].breaker"],
          [[{ name: "a", run: ok, rateLimit: "(other)" }], "steps[0].rateLimit"],
          // It ran the step with no dependencies, while every other field refuses null.
          [
            [
              { name: "a", run: ok },
              { name: "b", dependsOn: null, run: ok }
            ],
            "steps[1].dependsOn"
          ]
        ]
        for (const [steps, field] of cases) {
          const error = yield* Effect.flip(Pipeline.fromSteps(steps as never))
          assert.strictEqual(error._tag, "PipelineError")
          assert.strictEqual(error.reason, "InvalidStep")
          assert.strictEqual(error.field, field)
          assert.include(error.message, field)
        }
        const built = Pipeline.make()
          .step("a", [], ok)
          .step("b", null as never, ok)
        const error = yield* Effect.flip(Pipeline.validate(built))
        assert.deepStrictEqual([error.reason, error.field, error.steps], ["InvalidStep", "steps[1].dependsOn", ["b"]])
      })
  )

  it.effect(
    'a governed step named "(other)" without a stats name is refused naming it: its series mixed with the overflow\'s',
    () =>
      Effect.gen(function* () {
        for (const policy of [{ timeout: "1 second" }, { retry: true }, { breaker: "b" }] as const) {
          const fromData = yield* Effect.flip(
            Pipeline.fromSteps([
              { name: "a", run: ok },
              { name: "(other)", run: ok, ...policy }
            ])
          )
          assert.deepStrictEqual(
            [fromData._tag, fromData.reason, fromData.field],
            ["PipelineError", "InvalidStep", "steps[1].name"]
          )
          assert.include(fromData.message, "stats")
          const built = Pipeline.make().step("a", [], ok).step("(other)", [], ok, policy)
          const error = yield* Effect.flip(Pipeline.validate(built))
          assert.deepStrictEqual(
            [error.reason, error.field, error.steps],
            ["InvalidStep", "steps[1].name", ["(other)"]]
          )
        }
        // Ungoverned (no series), or counted under a stats name of its own: a step name like any other.
        const plain = yield* Pipeline.fromSteps([{ name: "(other)", run: ok }])
        assert.deepStrictEqual(plain.names, ["(other)"])
        const named = Pipeline.make().step("(other)", [], ok, { timeout: "1 second", stats: "overflow-step" })
        assert.deepStrictEqual((yield* Pipeline.validate(named)).names, ["(other)"])
      })
  )

  it.effect(
    "durations: -1, NaN, '-5 seconds', 'soon' and 0 are refused in fromSteps and the builder; nothing throws",
    () =>
      Effect.gen(function* () {
        for (const timeout of [-1, Number.NaN, "-5 seconds", "soon", 0, Number.POSITIVE_INFINITY]) {
          const fromData = yield* Effect.flip(Pipeline.fromSteps([{ name: "a", run: ok, timeout: timeout as never }]))
          assert.strictEqual(fromData.reason, "InvalidStep")
          assert.strictEqual(fromData.field, "steps[0].timeout")
          const built = Pipeline.make()
            .step("first", [], ok)
            .step("a", [], ok, { totalTimeout: timeout as never })
          const error = yield* Effect.flip(Pipeline.validate(built))
          assert.strictEqual(error.field, "steps[1].totalTimeout")
          assert.deepStrictEqual(error.steps, ["a"])
        }
      })
  )

  it.effect(
    "a misspelt key of a step, run options or toMermaid's names the one it is likely a typo of, quoted and bounded: each had its own wording, the key raw",
    () =>
      Effect.gen(function* () {
        const step = yield* Effect.flip(Pipeline.fromSteps([{ name: "a", dependOn: [], run: ok }] as never))
        assert.strictEqual(step.field, "steps[0].dependOn")
        assert.include(step.message, "unknown field (did you mean dependsOn?)")
        const p = Pipeline.make().step("a", [], () => Effect.void)
        const run = yield* Effect.flip(Pipeline.run(p, undefined, { concurency: 2 } as Pipeline.RunOptions))
        assert.strictEqual(run.option, "concurency")
        assert.include(run.message, "unknown option (did you mean concurrency?)")
        const long = "k".repeat(100_000)
        const bounded = yield* Effect.flip(Pipeline.run(p, undefined, { [long]: 1 } as Pipeline.RunOptions))
        assert.include(bounded.field, "(100,000 characters)")
        assert.isBelow(bounded.field!.length, 200)
        assert.isBelow(bounded.message.length, 1_000)
        const forged = yield* Effect.flip(Pipeline.fromSteps([{ name: "a", run: ok, "time\nout": 1 }] as never))
        assert.strictEqual(forged.field, 'steps[0]."time\\nout"')
        const drawn = (() => {
          try {
            Pipeline.toMermaid(p, { dirction: "LR" } as never)
          } catch (error) {
            return error as Pipeline.PipelineError
          }
          return assert.fail("drawn")
        })()
        assert.strictEqual(drawn.field, "dirction")
        assert.include(drawn.message, "unknown option (did you mean direction?)")
      })
  )

  it.effect(
    "run options: mode, onFailure, concurrency, fallbackToSequential and unknown options are refused by name",
    () =>
      Effect.gen(function* () {
        const runs = yield* Ref.make(0)
        const p = Pipeline.make().step("a", [], () => Ref.update(runs, (n) => n + 1))
        const cases: ReadonlyArray<readonly [Record<string, unknown>, string]> = [
          [{ mode: "bogus" }, "mode"],
          [{ onFailure: "bogus" }, "onFailure"],
          [{ concurrency: 0 }, "concurrency"],
          [{ concurrency: -1 }, "concurrency"],
          [{ concurrency: 1.5 }, "concurrency"],
          [{ concurrency: Number.NaN }, "concurrency"],
          [{ concurrency: "2" }, "concurrency"],
          [{ fallbackToSequential: "yes" }, "fallbackToSequential"],
          [{ concurency: 2 }, "concurency"],
          // null is a wrong value, not the default.
          [{ mode: null }, "mode"],
          [{ onFailure: null }, "onFailure"],
          [{ concurrency: null }, "concurrency"]
        ]
        for (const [options, option] of cases) {
          const error = yield* Effect.flip(Pipeline.run(p, undefined, options as Pipeline.RunOptions))
          assert.strictEqual(error.reason, "InvalidOption")
          assert.strictEqual(error.option, option)
          assert.deepStrictEqual(error.steps, [])
        }
        const fromDefaults = yield* Effect.flip(
          Pipeline.fromSteps([{ name: "a", run: ok }], { mode: "bogus" as "parallel" })
        )
        assert.strictEqual(fromDefaults.option, "mode")
        const madeBad = Pipeline.make({ concurrency: 0 }).step("a", [], () => Ref.update(runs, (n) => n + 1))
        assert.strictEqual((yield* Effect.flip(Pipeline.run(madeBad, undefined))).option, "concurrency")
        assert.strictEqual(yield* Ref.get(runs), 0)
        for (const concurrency of [1, 3, Number.POSITIVE_INFINITY]) {
          assert.strictEqual((yield* Pipeline.run(p, undefined, { concurrency })).status, "succeeded")
        }
        assert.strictEqual(yield* Ref.get(runs), 3)
      })
  )

  it.effect(
    "run options, defaults and toMermaid options that are an array or an object without fields (a Map) are refused; they ran as no options",
    () =>
      Effect.gen(function* () {
        const runs = yield* Ref.make(0)
        const p = Pipeline.make().step("a", [], () => Ref.update(runs, (n) => n + 1))
        for (const options of [[], [{ concurrency: 0 }], new Map([["concurrency", 0]]), AbortSignal.abort()]) {
          const error = yield* Effect.flip(Pipeline.run(p, undefined, options as never))
          assert.deepStrictEqual([error.reason, error.option], ["InvalidOption", "options"], String(options))
          const defaults = yield* Effect.flip(Pipeline.fromSteps([{ name: "a", run: ok }], options as never))
          assert.deepStrictEqual([defaults.reason, defaults.option], ["InvalidOption", "options"], String(options))
          assert.strictEqual(Pipeline.make(options as never).issue?.option, "options")
          let thrown: unknown
          try {
            Pipeline.toMermaid(p, options as never)
          } catch (error) {
            thrown = error
          }
          assert.strictEqual((thrown as Pipeline.PipelineError | undefined)?.field, "options", String(options))
        }
        assert.strictEqual(yield* Ref.get(runs), 0)
      })
  )

  it.effect("run options: null is refused by name; an option given as undefined keeps the pipeline's default", () =>
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
      const build = (defaults: Pipeline.RunOptions) =>
        Array.from({ length: 6 }, (_, i) => `s${i}`).reduce<Pipeline.Pipeline<void, {}>>(
          (p, name) => p.step(name, [], () => tracked),
          Pipeline.make(defaults)
        )
      const two = build({ concurrency: 2 })
      for (const option of ["mode", "concurrency", "onFailure"] as const) {
        const error = yield* Effect.flip(runClocked(two, undefined, { [option]: null } as Pipeline.RunOptions))
        assert.strictEqual(error.reason, "InvalidOption")
        assert.strictEqual(error.option, option)
        const made = yield* Effect.flip(runClocked(build({ [option]: null } as Pipeline.RunOptions), undefined))
        assert.strictEqual(made.option, option)
      }
      assert.strictEqual(yield* Ref.get(peak), 0)
      const result = yield* runClocked(two, undefined, { concurrency: undefined, mode: undefined })
      assert.strictEqual(result.strategy, "parallel")
      assert.strictEqual(yield* Ref.get(peak), 2)
      const sequential = yield* runClocked(build({ mode: "sequential" }), undefined, { mode: undefined })
      assert.strictEqual(sequential.strategy, "sequential")
      const typo = yield* Effect.flip(Pipeline.run(two, undefined, { concurency: undefined } as Pipeline.RunOptions))
      assert.strictEqual(typo.option, "concurency")
    })
  )

  it.effect("builder: each step checks only what it adds; the pipeline is the one fromSteps defines", () =>
    Effect.gen(function* () {
      /** A builder pipeline with names widened to `string`, as configuration code builds one. */
      interface Loose {
        readonly names: ReadonlyArray<string>
        step(name: string, dependsOn: ReadonlyArray<string>, run: () => Effect.Effect<number>, options?: object): Loose
      }
      const typed = (p: Loose) => p as unknown as Pipeline.Pipeline<void, {}>
      const refused = (p: Loose) => Effect.flip(Pipeline.validate(typed(p)))
      const shape = (p: Pipeline.Pipeline<void, {}>) => p.definition.order.map((def) => [def.name, def.deps])
      const n = 1000
      const names = Array.from({ length: n }, (_, i) => `w${i}`)
      // Each `.step` used to rebuild and re-check the whole graph (a Map of every name, the
      // graph, its order): about n²/2 `Map.set`s for n steps.
      const sets = vi.spyOn(Map.prototype, "set")
      let built: Loose
      let calls: number
      try {
        built = names
          .reduce(
            (p, name) => p.step(name, ["root"], () => Effect.succeed(1)),
            (Pipeline.make() as unknown as Loose).step("root", [], () => Effect.succeed(0))
          )
          .step("join", names, () => Effect.succeed(2))
      } finally {
        calls = sets.mock.calls.length
        sets.mockRestore()
      }
      assert.isBelow(calls, 4 * n)
      const fromSteps = yield* Pipeline.fromSteps([
        { name: "root", run: () => Effect.succeed(0) },
        ...names.map((name) => ({ name, dependsOn: ["root"], run: () => Effect.succeed(1) })),
        { name: "join", dependsOn: names, run: () => Effect.succeed(2) }
      ])
      assert.deepStrictEqual(built.names, fromSteps.names)
      assert.deepStrictEqual(shape(typed(built)), shape(fromSteps as Pipeline.Pipeline<void, {}>))
      assert.strictEqual((yield* Pipeline.run(typed(built), undefined)).status, "succeeded")

      // Every refusal is still the builder's, at the step that makes it, with the same fields.
      const base = (Pipeline.make() as unknown as Loose).step("a", [], () => Effect.succeed(1))
      const duplicate = yield* refused(base.step("a", [], () => Effect.succeed(2)))
      assert.deepStrictEqual([duplicate.reason, duplicate.steps], ["DuplicateStep", ["a"]])
      const unknown = yield* refused(base.step("x", ["a", "zz", "x", "yy"], () => Effect.succeed(2)))
      assert.deepStrictEqual([unknown.reason, unknown.steps], ["UnknownDependency", ["x", "zz", "yy"]])
      const self = yield* refused(base.step("x", ["a", "x"], () => Effect.succeed(2)))
      assert.deepStrictEqual([self.reason, self.steps, self.message], ["Cycle", ["x"], "dependency cycle: x -> x"])
      const option = yield* refused(base.step("x", [], () => Effect.succeed(2), { timeout: "soon" }))
      assert.deepStrictEqual([option.reason, option.field], ["InvalidStep", "steps[1].timeout"])
      const later = yield* refused(base.step("a", [], () => Effect.succeed(2)).step("b", [], () => Effect.succeed(3)))
      assert.strictEqual(later.reason, "DuplicateStep")

      // Pipelines built from one another stay independent: a branch never sees its sibling's steps.
      const left = base.step("b", [], () => Effect.succeed(2))
      const right = base.step("c", ["a"], () => Effect.succeed(3)).step("b", ["c"], () => Effect.succeed(4))
      const leftMore = left.step("c", ["b"], () => Effect.succeed(5))
      assert.deepStrictEqual(
        [base.names, left.names, right.names, leftMore.names],
        [["a"], ["a", "b"], ["a", "c", "b"], ["a", "b", "c"]]
      )
      const unseen = yield* refused(left.step("d", ["c"], () => Effect.succeed(6)))
      assert.deepStrictEqual(unseen.steps, ["d", "c"])
      assert.deepStrictEqual({ ...(yield* Pipeline.run(typed(right), undefined)).outputs }, { a: 1, c: 3, b: 4 })
    })
  )

  it.effect(
    "a step with 150,000 dependencies runs and its run is summed up (the critical path took them as arguments)",
    () =>
      Effect.gen(function* () {
        const names = Array.from({ length: 150_000 }, (_, i) => `s${i}`)
        const p = yield* Pipeline.fromSteps<void, number, never, never>([
          ...names.map((name) => ({ name, run: () => Effect.succeed(1) })),
          { name: "all", dependsOn: names, run: ({ deps }) => Effect.succeed(Object.keys(deps).length) }
        ])
        const result = yield* Pipeline.run(p, undefined, { mode: "sequential" })
        assert.deepStrictEqual([result.status, result.outputs.all], ["succeeded", 150_000])
      }),
    60_000
  )

  it.effect(
    "any name works: __proto__, constructor and toString are in steps, outputs and their dependents' deps",
    () =>
      Effect.gen(function* () {
        const p = yield* Pipeline.fromSteps<void, unknown, never, never>([
          { name: "__proto__", run: () => Effect.succeed("proto") },
          { name: "constructor", run: () => Effect.succeed("ctor") },
          {
            name: "toString",
            dependsOn: ["__proto__", "constructor"],
            run: ({ deps }) => Effect.succeed(`${deps[PROTO]}+${deps["constructor"]}`)
          }
        ])
        const result = yield* Pipeline.run(p, undefined)
        assert.strictEqual(result.status, "succeeded")
        assert.deepStrictEqual(Object.keys(result.steps).sort(), ["__proto__", "constructor", "toString"])
        assert.strictEqual(result.steps[PROTO]?.status, "succeeded")
        assert.strictEqual(result.outputs[PROTO], "proto")
        assert.strictEqual(result.outputs["toString"], "proto+ctor")
        assert.strictEqual(
          JSON.stringify(result.outputs),
          JSON.stringify(
            Object.fromEntries([
              ["__proto__", "proto"],
              ["constructor", "ctor"],
              ["toString", "proto+ctor"]
            ])
          )
        )
      })
  )
})

describe("Pipeline steps through the executor's policy pipeline", () => {
  it.effect("a step with policies and no Executor is refused by name before anything runs", () =>
    Effect.gen(function* () {
      const p = Pipeline.make().step("a", [], () => Effect.succeed(1), { timeout: "1 second" })
      const error = yield* Effect.flip(Pipeline.run(p, undefined) as Effect.Effect<unknown, Pipeline.PipelineError>)
      assert.strictEqual(error.reason, "InvalidStep")
      assert.include(error.message, "Executor")
    })
  )

  it.effect("per-attempt timeout, fallback value and fallback step", () =>
    Effect.gen(function* () {
      const context = yield* executorContext(Layer.empty)
      const p = Pipeline.make()
        .step("hangs", [], () => sleepThen(1_000, "never"), { timeout: "100 millis" })
        .step("hangsWithValue", [], () => sleepThen(1_000, "never"), {
          timeout: "100 millis",
          fallback: { value: "cached" }
        })
        .step("failsWithStep", [], () => Effect.fail("nope" as const), {
          fallback: {
            step: ({ failure }) =>
              sleepThen(5, failure._tag === "Failed" ? `recovered from ${String(failure.error)}` : "timeout")
          }
        })
      const result = yield* runClocked(p, undefined, { onFailure: "continue" }).pipe(Effect.provideContext(context))
      const hangs = result.steps.hangs
      assert.deepStrictEqual(
        hangs.status === "timedOut" && [hangs.endedAt, Duration.toMillis(hangs.timeout)],
        [100, 100]
      )
      const value = result.steps.hangsWithValue
      assert.strictEqual(result.outputs.hangsWithValue, "cached")
      assert.deepStrictEqual(value.status === "succeeded" && value.fallback?.kind, "value")
      assert.deepStrictEqual(value.status === "succeeded" && value.fallback?.failure._tag, "TimedOut")
      assert.strictEqual(result.outputs.failsWithStep, "recovered from nope")
      assert.strictEqual(timingOf(result.steps.failsWithStep).durationMs, 5)
      assert.deepStrictEqual(result.failedSteps, ["hangs"])
    })
  )

  it.effect("a governed step (timeout, fallback step) whose run or fallback returns no Effect fails, named", () =>
    Effect.gen(function* () {
      const context = yield* executorContext(Layer.empty)
      const p = Pipeline.make()
        .step("own", [], (() => undefined) as never, { timeout: "1 second" })
        .step("fallsBack", [], () => Effect.fail("nope" as const), {
          fallback: { step: (() => "not an effect") as never }
        })
      const result = yield* runClocked(p, undefined, { onFailure: "continue" }).pipe(Effect.provideContext(context))
      const own = result.steps.own
      assert.include(own.status === "failed" ? own.message : "", 'step "own": run must return an Effect, got undefined')
      const fallsBack = result.steps.fallsBack
      assert.include(
        fallsBack.status === "failed" ? fallsBack.message : "",
        'step "fallsBack": fallback must return an Effect, got a string'
      )
    })
  )

  it.effect("retries follow Policy.schedule: retryable AiErrors and timeouts only; totalTimeout bounds the step", () =>
    Effect.gen(function* () {
      const context = yield* executorContext(Layer.empty)
      const tries = yield* Ref.make(0)
      const flaky = Effect.flatMap(
        Ref.updateAndGet(tries, (n) => n + 1),
        (n) => (n < 3 ? Effect.fail(overloaded()) : Effect.succeed(`ok after ${n}`))
      )
      const p = Pipeline.make()
        .step("flaky", [], () => flaky, { retry: { maxAttempts: 5, initialDelay: 20, factor: 1, jitter: 0 } })
        .step("hopeless", [], () => Effect.fail("always"), { retry: { maxAttempts: 3 } })
        .step("slow", [], () => sleepThen(50, "slow"), {
          timeout: "30 millis",
          totalTimeout: "100 millis",
          retry: { maxAttempts: 10, initialDelay: 10, factor: 1, jitter: 0 }
        })
      const result = yield* runClocked(p, undefined, { onFailure: "continue" }).pipe(Effect.provideContext(context))
      const flakyOutcome = result.steps.flaky
      assert.deepStrictEqual(
        flakyOutcome.status === "succeeded" && [flakyOutcome.output, flakyOutcome.attempts, flakyOutcome.endedAt],
        ["ok after 3", 3, 40]
      )
      const hopeless = result.steps.hopeless
      assert.deepStrictEqual(hopeless.status === "failed" && [hopeless.attempts, hopeless.error], [1, "always"])
      // 30 ms attempts, 10 ms apart: the third is cut by the 100 ms total
      const slow = result.steps.slow
      assert.deepStrictEqual(
        slow.status === "timedOut" && [slow.attempts, slow.endedAt, Duration.toMillis(slow.timeout)],
        [3, 100, 100]
      )
    })
  )

  it.effect("totalTimeout cuts a fallback still running: the step is timedOut, not a fallback that failed", () =>
    Effect.gen(function* () {
      const context = yield* executorContext(Layer.empty)
      const p = Pipeline.make()
        .step("cut", [], () => Effect.fail("x"), {
          totalTimeout: "100 millis",
          fallback: { step: () => sleepThen(500, 1) }
        })
        // A fallback that fails with a TimeoutError of its own (a model call's) did fail: its error is kept.
        .step("own", [], () => Effect.fail("x"), {
          totalTimeout: "1 second",
          fallback: {
            step: () =>
              Effect.andThen(
                Effect.sleep("20 millis"),
                Effect.fail(new TimeoutError({ limit: "request", timeout: Duration.millis(20), provider: "model" }))
              )
          }
        })
      const result = yield* runClocked(p, undefined, { onFailure: "continue" }).pipe(Effect.provideContext(context))
      const cut = result.steps.cut
      assert.deepStrictEqual(
        cut.status === "timedOut" && [Duration.toMillis(cut.timeout), cut.endedAt, cut.attempts],
        [100, 100, 1],
        Pipeline.describeOutcome(cut)
      )
      const own = result.steps.own
      assert.deepStrictEqual(
        own.status === "failed" && [own.message, own.primary],
        ["fallback failed: request timeout after 20ms (model)", { _tag: "Failed", error: "x" }],
        Pipeline.describeOutcome(own)
      )
    })
  )

  it.effect("a governed step is counted in Stats under its name (or `stats`), domain pipeline", () =>
    Effect.gen(function* () {
      const context = yield* executorContext(Layer.empty)
      const p = Pipeline.make()
        .step("fetch", [], () => sleepThen(20, 1), { timeout: "1 second" })
        .step("score", ["fetch"], () => Effect.fail(overloaded()), { stats: "scorer" })
        .step("plain", [], () => Effect.succeed(3))
      yield* runClocked(p, undefined, { onFailure: "continue" }).pipe(Effect.provideContext(context))
      const stats = Context.get(context, Stats.Stats)
      const fetch = yield* stats.snapshot({ provider: "fetch", domain: "pipeline" })
      assert.deepStrictEqual([fetch.total, fetch.successes, fetch.latency.max], [1, 1, 20])
      const scorer = yield* stats.snapshot({ provider: "scorer", domain: "pipeline" })
      assert.deepStrictEqual(scorer.failuresByReason, { Overloaded: 1 })
      assert.strictEqual((yield* stats.snapshot({ provider: "plain" })).total, 0)
    })
  )

  it.effect(
    "a step gets its breaker: an open circuit refuses the step without running it, and the fallback answers",
    () =>
      Effect.gen(function* () {
        const context = yield* executorContext(CircuitBreaker.layerMemory({ failMax: 2, resetTimeout: "1 minute" }))
        const runs = yield* Ref.make(0)
        const p = Pipeline.make().step(
          "lookup",
          [],
          () =>
            Effect.andThen(
              Ref.update(runs, (n) => n + 1),
              Effect.fail(overloaded())
            ),
          {
            breaker: "lookup-service",
            fallback: { step: ({ failure }) => Effect.succeed(failure._tag === "Failed" ? failure.error : undefined) }
          }
        )
        const first = yield* Pipeline.run(p, undefined).pipe(Effect.provideContext(context))
        const second = yield* Pipeline.run(p, undefined).pipe(Effect.provideContext(context))
        assert.strictEqual(yield* Ref.get(runs), 2)
        const third = yield* Pipeline.run(p, undefined).pipe(Effect.provideContext(context))
        assert.strictEqual(yield* Ref.get(runs), 2, "an open breaker runs nothing")
        for (const result of [first, second, third]) assert.strictEqual(result.status, "succeeded")
        const refused = third.steps.lookup
        assert.strictEqual(refused.status === "succeeded" && refused.fallback?.kind, "step")
        // `attempts` counts runs of the step's own effect: the refused try ran nothing.
        assert.deepStrictEqual(
          [first, third].map(({ steps }) => steps.lookup.status === "succeeded" && steps.lookup.attempts),
          [1, 0]
        )
        const output = third.outputs.lookup as { readonly _tag: string } | undefined
        assert.strictEqual(output?._tag, "CircuitOpenError")
        const breakers = Context.get(context, CircuitBreaker.Breakers)
        assert.strictEqual(yield* breakers.state("lookup-service"), "open")
        assert.strictEqual(first.outputs.lookup && (first.outputs.lookup as ModelError).reason, "Overloaded")
      })
  )

  it.effect("a step takes a slot of its rate limit per attempt; a refused slot falls back without running it", () =>
    Effect.gen(function* () {
      const context = yield* executorContext(
        RateLimit.layerMemory({ providers: { "search-api": { requestsPerMinute: 2 } }, maxWait: 0 })
      )
      const runs = yield* Ref.make(0)
      const p = Pipeline.make().step(
        "search",
        [],
        () =>
          Effect.as(
            Ref.update(runs, (n) => n + 1),
            "hits"
          ),
        {
          rateLimit: "search-api",
          fallback: { step: ({ failure }) => Effect.succeed(failure._tag === "Failed" ? `limited` : "timed out") }
        }
      )
      const outputs: Array<unknown> = []
      const attempts: Array<unknown> = []
      for (let i = 0; i < 3; i++) {
        const result = yield* Pipeline.run(p, undefined).pipe(Effect.provideContext(context))
        outputs.push(result.outputs.search)
        attempts.push(result.steps.search.status === "succeeded" && result.steps.search.attempts)
      }
      assert.deepStrictEqual(outputs, ["hits", "hits", "limited"])
      assert.deepStrictEqual(attempts, [1, 1, 0])
      assert.strictEqual(yield* Ref.get(runs), 2)
      const missing = Pipeline.make().step("x", [], () => Effect.void, { breaker: "nowhere" })
      const context2 = yield* executorContext(Layer.empty)
      const error = yield* Effect.flip(Pipeline.run(missing, undefined).pipe(Effect.provideContext(context2)))
      assert.deepStrictEqual([error.reason, error.field], ["InvalidStep", "steps[0].breaker"])
    })
  )

  it.effect("a rateLimit key the rate limits have no request limit for is refused by name, not run unlimited", () =>
    Effect.gen(function* () {
      const context = yield* executorContext(
        RateLimit.layerMemory({
          providers: { "search-api": { requestsPerMinute: 2 }, "tokens-only": { tokensPerMinute: 1_000 } },
          maxWait: 0
        })
      )
      const runs = yield* Ref.make(0)
      const step = (rateLimit: string) =>
        Pipeline.make()
          .step("first", [], () => Effect.void)
          .step("search", ["first"], () => Ref.update(runs, (n) => n + 1), { rateLimit })
      for (const key of ["search-apj", "tokens-only"]) {
        const error = yield* Effect.flip(Pipeline.run(step(key), undefined).pipe(Effect.provideContext(context)))
        assert.deepStrictEqual(
          [error.reason, error.field, error.steps],
          ["InvalidStep", "steps[1].rateLimit", ["search"]]
        )
        assert.include(error.message, `"${key}"`)
        assert.include(error.message, "requestsPerMinute")
      }
      assert.strictEqual(yield* Ref.get(runs), 0, "nothing ran")
      // A long key (names go up to 1,000 characters) is cut in the message, as other names are.
      const long = yield* Effect.flip(
        Pipeline.run(step("k".repeat(1_000)), undefined).pipe(Effect.provideContext(context))
      )
      assert.strictEqual(long.field, "steps[1].rateLimit")
      assert.include(long.message, `"${"k".repeat(80)}"… (1,000 characters)`)
      assert.isBelow(long.message.length, 400, long.message)
      // a default limit covers every key
      const withDefault = yield* executorContext(
        RateLimit.layerMemory({ providers: {}, default: { requestsPerMinute: 1 }, maxWait: 0 })
      )
      const result = yield* Pipeline.run(step("any-key"), undefined).pipe(Effect.provideContext(withDefault))
      assert.strictEqual(result.status, "succeeded")
    })
  )

  it.effect(
    "a rate limits service of one's own: its limitsOf is called as a method, and one that throws is the step's InvalidStep",
    () =>
      Effect.gen(function* () {
        class Limits {
          readonly limits = new Map([["search-api", { requestsPerMinute: 2 }]])
          acquire() {
            return Effect.void
          }
          limitsOf(key: string) {
            return this.limits.get(key) as RateLimit.ResolvedLimits | undefined
          }
        }
        const step = Pipeline.make().step("search", [], () => Effect.succeed("ok"), { rateLimit: "search-api" })
        const own = yield* executorContext(Layer.succeed(RateLimit.RateLimits, new Limits()))
        // `this` is the service: called bare, `this.limits` was a TypeError, a defect of the run.
        const result = yield* Pipeline.run(step, undefined).pipe(Effect.provideContext(own))
        assert.strictEqual(result.status, "succeeded")
        const throwing = yield* executorContext(
          Layer.succeed(RateLimit.RateLimits, {
            acquire: () => Effect.void,
            limitsOf: () => {
              throw new Error("no config loaded")
            }
          })
        )
        const error = yield* Effect.flip(Pipeline.run(step, undefined).pipe(Effect.provideContext(throwing)))
        assert.deepStrictEqual(
          [error.reason, error.field, error.steps],
          ["InvalidStep", "steps[0].rateLimit", ["search"]]
        )
        assert.include(error.message, "no config loaded")
      })
  )

  it.effect("a defect does not fall back; a step's own typed error does", () =>
    Effect.gen(function* () {
      const context = yield* executorContext(Layer.empty)
      const p = Pipeline.make()
        .step("dies", [], () => Effect.die("bug"), { fallback: { value: "x" } })
        .step("fails", [], () => Effect.fail({ code: 7 }), { fallback: { value: "y" } })
      const result = yield* Pipeline.run(p, undefined, { onFailure: "continue" }).pipe(Effect.provideContext(context))
      const dies = result.steps.dies
      assert.strictEqual(dies.status, "failed")
      assert.isUndefined(dies.status === "failed" ? dies.error : "")
      assert.include(dies.status === "failed" ? dies.message : "", "bug")
      const fails = result.steps.fails
      assert.deepStrictEqual(fails.status === "succeeded" && fails.fallback?.failure, {
        _tag: "Failed",
        error: { code: 7 }
      })
    })
  )

  it.effect(
    "a governed step (or fallback) whose effect hands the run loop no Effect deep inside is a defect: no fallback, no provider's error",
    () =>
      Effect.gen(function* () {
        const context = yield* executorContext(Layer.empty)
        // Effect's run loop ends the fiber at once, skipping the step's own handlers: it fell back as a
        // timeout of 0 ms, or failed with the executor's "provider call failed unexpectedly" ModelError.
        const broken = () => Effect.flatMap(Effect.void, (): Effect.Effect<string> => 42 as never)
        const p = Pipeline.make()
          .step("value", [], broken, { fallback: { value: "x" } })
          .step("timeout", [], broken, { timeout: "1 second" })
          .step("fallback", [], () => Effect.fail("own"), { fallback: { step: broken } })
        const result = yield* runClocked(p, undefined, { onFailure: "continue" }).pipe(Effect.provideContext(context))
        for (const name of ["value", "timeout", "fallback"] as const) {
          const outcome = result.steps[name]
          assert.strictEqual(outcome.status, "failed", name)
          const failed = outcome as Pipeline.Failed<unknown>
          assert.isUndefined(failed.error, name)
          assert.include(failed.message, "Not a valid effect: 42", name)
          assert.isTrue(Cause.hasDies(failed.cause), name)
        }
        assert.deepStrictEqual((result.steps.fallback as Pipeline.Failed<unknown>).primary, {
          _tag: "Failed",
          error: "own"
        })
      })
  )

  it.effect("falls back to sequential when concurrency made steps fail", () =>
    Effect.gen(function* () {
      const inFlight = yield* Ref.make(0)
      const call = (value: string) =>
        Effect.acquireUseRelease(
          Ref.updateAndGet(inFlight, (n) => n + 1),
          (n) => (n > 1 ? Effect.fail(overloaded()) : Effect.as(Effect.sleep("10 millis"), value)),
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
      const bad = Pipeline.make().step("bad", [], () =>
        Effect.fail(new ModelError({ reason: "InvalidRequest", message: "no" }))
      )
      assert.strictEqual((yield* runClocked(bad, undefined, { fallbackToSequential: true })).strategy, "parallel")
    })
  )

  it.effect("a fallbackToSequential predicate that throws counts as no; the run's result is kept", () =>
    Effect.gen(function* () {
      const p = Pipeline.make()
        .step("slow", [], () => Effect.never, { timeout: "1 second" })
        .step("wrong", [], () => Effect.delay(Effect.fail(overloaded()), "2 seconds"))
        .step("fine", [], () => Effect.succeed(1))
      // A TimedOut failure has no error: a predicate reading `failure.error.reason` throws on it.
      const wantsOverloaded = (failure: Pipeline.Failure<unknown>) =>
        (failure as { readonly error: ModelError }).error.reason === "Overloaded"
      const result = yield* runClocked(p, undefined, { onFailure: "continue", fallbackToSequential: wantsOverloaded })
      assert.deepStrictEqual(
        [result.strategy, result.steps.slow.status, result.steps.fine.status],
        ["parallelThenSequential", "timedOut", "succeeded"]
      )
      const never = yield* runClocked(p, undefined, {
        onFailure: "continue",
        fallbackToSequential: () => {
          throw new Error("predicate bug")
        }
      })
      assert.deepStrictEqual([never.strategy, never.outputs.fine], ["parallel", 1])
    }).pipe(Effect.provide(Executor.layerWithStats({ timeout: "none" }).pipe(Layer.provideMerge(Mock.layer()))))
  )

  it.effect(
    "a fallbackToSequential predicate that answers no boolean (an async one's Promise) counts as no, with a warning; it ran every failed step again",
    () =>
      Effect.gen(function* () {
        const unhandled: Array<unknown> = []
        const trap = (reason: unknown) => unhandled.push(reason)
        process.on("unhandledRejection", trap)
        yield* Effect.addFinalizer(() => Effect.sync(() => process.off("unhandledRejection", trap)))
        let runs = 0
        const p = Pipeline.make().step("send", [], () =>
          Effect.andThen(
            Effect.sync(() => runs++),
            Effect.fail(overloaded())
          )
        )
        const predicates: ReadonlyArray<readonly [string, (failure: Pipeline.Failure<unknown>) => unknown]> = [
          ["async, false", async () => false],
          ["async, rejecting", async () => Promise.reject(new Error("async predicate bug"))],
          ["a string", () => "no"]
        ]
        for (const [name, predicate] of predicates) {
          runs = 0
          const logs = yield* captureLogs
          const result = yield* runClocked(p, undefined, { fallbackToSequential: predicate as never }).pipe(
            Effect.provide(logs.layer)
          )
          assert.deepStrictEqual([result.strategy, runs], ["parallel", 1], name)
          assert.strictEqual(
            logs.lines.filter((line) => line.includes("fallbackToSequential predicate")).length,
            1,
            `${name}: ${logs.lines.join("\n")}`
          )
        }
        // Unhandled rejections are reported once the microtasks have run.
        yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
        assert.deepStrictEqual(unhandled.map(String), [])
      })
  )

  it.effect("after a sequential fallback, steps kept from the parallel run count once", () =>
    Effect.gen(function* () {
      const bRuns = yield* Ref.make(0)
      const p = Pipeline.make()
        .step("a", [], () => sleepThen(1000, "a"))
        .step("c", ["a"], () => sleepThen(100, "c"))
        .step("b", [], () =>
          Effect.flatMap(
            Ref.updateAndGet(bRuns, (n) => n + 1),
            (n) => Effect.andThen(Effect.sleep("200 millis"), n === 1 ? Effect.fail(overloaded()) : Effect.succeed("b"))
          )
        )
      const result = yield* runClocked(p, undefined, { onFailure: "continue", fallbackToSequential: true })
      assert.strictEqual(result.strategy, "parallelThenSequential")
      assert.strictEqual(result.steps.a, result.parallelAttempt?.a)
      assert.deepStrictEqual([timingOf(result.steps.b).startedAt, timingOf(result.steps.b).endedAt], [1100, 1300])
      assert.strictEqual(result.busyMs, 1000 + 100 + 200 + 200)
      assert.strictEqual(result.criticalPathMs, 1100)
    })
  )
})

describe("Pipeline steps that call models keep their domain's policies (entry points)", () => {
  /** Two mocks, `primary` (failing) and `backup`, a domain on each, primary falling back to backup. */
  const routed = Effect.gen(function* () {
    const primary = yield* Mock.make({ name: "primary", script: [Mock.Outcome.fail("Overloaded")] })
    const backup = yield* Mock.make({ name: "backup" })
    const providers = yield* Domain.makeProviders({ primary: primary.provider, backup: backup.provider })
    const layer = Router.layer.pipe(
      Layer.provideMerge(Executor.layer({ timeout: "none" })),
      Layer.provideMerge(
        Layer.mergeAll(
          Stats.layer,
          Domain.layerDomains([
            { name: "main", provider: "primary", fallback: ["spare"] },
            { name: "spare", provider: "backup" }
          ]),
          Layer.succeed(Domain.Providers, providers),
          Layer.succeed(ModelProvider, primary.provider)
        )
      ),
      Layer.provideMerge(CircuitBreaker.layerMemory({ failMax: 1, resetTimeout: "1 minute" }))
    )
    const context = yield* Layer.build(layer).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
    return { context, primary: primary.control, backup: backup.control }
  })

  it.effect("Pipeline.route: the step's call trips the provider's breaker and falls back to the next domain", () =>
    Effect.gen(function* () {
      const { context, primary, backup } = yield* routed
      const p = Pipeline.make<string>().step(
        "answer",
        [],
        Pipeline.route("main", ({ input }) => ({ prompt: input }))
      )
      const first = yield* Pipeline.run(p, "hello").pipe(Effect.provideContext(context))
      const second = yield* Pipeline.run(p, "again").pipe(Effect.provideContext(context))
      for (const result of [first, second]) {
        assert.strictEqual(result.status, "succeeded")
        assert.strictEqual(result.outputs.answer?.domain, "spare")
        assert.isTrue(result.outputs.answer?.fallbackUsed)
      }
      assert.strictEqual(yield* primary.calls, 1, "the open breaker kept the second call off the primary")
      assert.strictEqual(yield* backup.calls, 2)
      const breakers = Context.get(context, CircuitBreaker.Breakers)
      assert.strictEqual(yield* breakers.state("primary"), "open")
    })
  )

  it.effect("Pipeline.generate: the executor's model, its errors as the step's", () =>
    Effect.gen(function* () {
      const { context } = yield* routed
      const p = Pipeline.make<string>().step(
        "direct",
        [],
        Pipeline.generate(({ input }) => ({ prompt: input }))
      )
      const result = yield* Pipeline.run(p, "hello").pipe(Effect.provideContext(context))
      const outcome = result.steps.direct
      assert.strictEqual(outcome.status, "failed")
      assert.strictEqual(outcome.status === "failed" && (outcome.error as ModelError).reason, "Overloaded")
    })
  )
})

/**
 * The entry-point checks (as in test/EntryPoints.test.ts) for a pipeline step that calls a
 * domain, on a real manager: mocks `a` and `b`, domain `main` on a falling back to `spare`
 * on b, one attempt per call.
 */
describe("Pipeline entry point: a step on a domain gets its breaker, rate limit, cache and fallback", () => {
  const manager = (
    a: Mock.Options,
    policies: Pick<Orchestra.Options<Record<string, never>>, "breakers" | "rateLimits" | "cache">
  ) =>
    Effect.gen(function* () {
      const ma = yield* Mock.make({ ...a, name: "a" })
      const mb = yield* Mock.make({ name: "b" })
      const layer = Orchestra.layer({
        ...policies,
        executor: { retry: { maxAttempts: 1 } },
        providers: { a: Layer.succeed(ModelProvider, ma.provider), b: Layer.succeed(ModelProvider, mb.provider) },
        domains: [
          { name: "main", provider: "a", fallback: ["spare"] },
          { name: "spare", provider: "b" }
        ]
      })
      const services = yield* Layer.build(layer).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
      return { a: ma.control, b: mb.control, services }
    })

  const asking = Pipeline.make<string>().step(
    "ask",
    [],
    Pipeline.route("main", ({ input }) => ({ prompt: input }))
  )
  const run = (services: Context.Context<Orchestra.Services>, prompt: string) =>
    Effect.map(Pipeline.run(asking, prompt).pipe(Effect.provideContext(services)), (result) => {
      assert.strictEqual(result.status, "succeeded")
      return result.outputs.ask!
    })

  it.effect("breaker: a tripped provider is not called again; the step falls back to the next domain", () =>
    Effect.gen(function* () {
      const { a, b, services } = yield* manager(
        { script: [Mock.Outcome.fail("Overloaded")] },
        { breakers: { failMax: 1, resetTimeout: "1 minute" } }
      )
      yield* run(services, "one")
      const second = yield* run(services, "two")
      assert.deepStrictEqual([second.provider, second.domain, second.fallbackUsed], ["b", "spare", true])
      assert.deepStrictEqual([yield* a.calls, yield* b.calls], [1, 2])
    })
  )

  it.effect("rate limit: a provider out of slots is skipped at once for the next domain", () =>
    Effect.gen(function* () {
      const { a, b, services } = yield* manager(
        {},
        { breakers: false, rateLimits: { default: { requestsPerMinute: 1 }, maxWait: 0 } }
      )
      assert.strictEqual((yield* run(services, "one")).provider, "a")
      assert.strictEqual((yield* run(services, "two")).provider, "b")
      assert.deepStrictEqual([yield* a.calls, yield* b.calls], [1, 1])
    })
  )

  it.effect("cache: the same request in a second run is answered from the cache", () =>
    Effect.gen(function* () {
      const { a, b, services } = yield* manager({}, { breakers: false, cache: {} })
      assert.strictEqual((yield* run(services, "same")).source, "provider")
      assert.strictEqual((yield* run(services, "same")).source, "cache")
      assert.deepStrictEqual([yield* a.calls, yield* b.calls], [1, 0])
    })
  )

  it.effect("fallback: a provider failure is answered by the next domain", () =>
    Effect.gen(function* () {
      const { b, services } = yield* manager({ script: [Mock.Outcome.fail("Overloaded")] }, { breakers: false })
      const answer = yield* run(services, "one")
      assert.deepStrictEqual([answer.provider, answer.fallbackUsed], ["b", true])
      assert.strictEqual(yield* b.calls, 1)
    })
  )
})

describe("Pipeline step names are bounded where they enter, as HTTP agent task ids are", () => {
  const ok = () => Effect.succeed(1)
  const long = "n".repeat(1_001)
  it.effect("a name or a dependency past 1,000 characters is an InvalidStep naming its index and the bound", () =>
    Effect.gen(function* () {
      const named = yield* Effect.flip(
        Pipeline.fromSteps([
          { name: "a", run: ok },
          { name: long, run: ok }
        ])
      )
      assert.deepStrictEqual([named.reason, named.field, named.steps], ["InvalidStep", "steps[1].name", []])
      assert.strictEqual(named.message, "invalid steps[1].name: expected at most 1,000 characters, got 1,001")
      const built = yield* Effect.flip(Pipeline.validate(Pipeline.make().step("a", [], ok).step(long, [], ok)))
      assert.deepStrictEqual([built.field, built.message], ["steps[1].name", named.message])
      const dependency = yield* Effect.flip(Pipeline.fromSteps([{ name: "a", dependsOn: ["b", long], run: ok }]))
      assert.deepStrictEqual(
        [dependency.reason, dependency.field, dependency.steps],
        ["InvalidStep", "steps[0].dependsOn[1]", ["a"]]
      )
      assert.strictEqual(
        dependency.message,
        "invalid steps[0].dependsOn[1]: expected a step name of at most 1,000 characters, got 1,001"
      )
    })
  )

  it.effect(
    "a stats, breaker or rateLimit name past 1,000 characters is an InvalidStep naming the field and the bound",
    () =>
      Effect.gen(function* () {
        for (const field of ["stats", "breaker", "rateLimit"] as const) {
          const given = yield* Effect.flip(
            Pipeline.fromSteps([
              { name: "a", run: ok },
              { name: "b", run: ok, [field]: long }
            ])
          )
          assert.deepStrictEqual([given.reason, given.field, given.steps], ["InvalidStep", `steps[1].${field}`, ["b"]])
          assert.strictEqual(given.message, `invalid steps[1].${field}: expected at most 1,000 characters, got 1,001`)
          const built = yield* Effect.flip(
            Pipeline.validate(
              Pipeline.make()
                .step("a", [], ok)
                .step("b", [], ok, { [field]: long })
            )
          )
          assert.deepStrictEqual([built.field, built.message], [given.field, given.message])
        }
        // 1,000 characters are taken.
        const longest = "s".repeat(1_000)
        const taken = yield* Pipeline.fromSteps([{ name: "a", run: ok, stats: longest }])
        const context = yield* executorContext(Layer.empty)
        const result = yield* Pipeline.run(taken, undefined).pipe(Effect.provideContext(context))
        assert.strictEqual(result.status, "succeeded")
      })
  )

  it.effect("a governed step of 1,000 characters runs, counted under (other): no label past 256 characters", () =>
    Effect.gen(function* () {
      const context = yield* executorContext(Layer.empty)
      const longest = "m".repeat(1_000)
      const pipeline = yield* Pipeline.fromSteps([
        { name: longest, run: () => Effect.fail("down"), timeout: "1 second" },
        { name: "after", dependsOn: [longest], run: ok }
      ])
      const result = yield* Pipeline.run(pipeline, undefined, { onFailure: "continue" }).pipe(
        Effect.provideContext(context)
      )
      assert.strictEqual(result.steps.after!.status, "skipped")
      const stats = Context.get(context, Stats.Stats)
      const other = yield* stats.snapshot({ provider: "(other)", domain: "pipeline" })
      assert.deepStrictEqual([other.total, other.failures], [1, 1])
      assert.deepStrictEqual((yield* stats.snapshot({ provider: longest })).series, {
        provider: "(other)",
        domain: "(other)"
      })
    })
  )
})

describe("Pipeline durations are on the monotonic clock", () => {
  /** The TestClock, whose wall time `stepBack` moves back an hour (an NTP step); its monotonic time goes on. */
  const steppable = Effect.clockWith((clock) => {
    let offset = 0
    const stepped: Clock.Clock = {
      currentTimeMillisUnsafe: () => clock.currentTimeMillisUnsafe() + offset,
      currentTimeMillis: Effect.sync(() => clock.currentTimeMillisUnsafe() + offset),
      currentTimeNanosUnsafe: () => clock.currentTimeNanosUnsafe() + BigInt(offset) * 1_000_000n,
      currentTimeNanos: Effect.sync(() => clock.currentTimeNanosUnsafe() + BigInt(offset) * 1_000_000n),
      monotonicTimeNanosUnsafe: () => clock.monotonicTimeNanosUnsafe(),
      monotonicTimeNanos: clock.monotonicTimeNanos,
      sleep: (duration) => clock.sleep(duration)
    }
    const stepBack = Effect.sync(() => {
      offset -= 3_600_000
    })
    return Effect.succeed({ stepped, stepBack })
  })

  /** `runClocked`, the run (not the TestClock's driver) on the clock given. */
  const runOn = <I, O, E, R>(
    clock: Clock.Clock,
    p: Pipeline.Pipeline<I, O, E, R>,
    input: I,
    options?: Pipeline.RunOptions
  ) =>
    Effect.gen(function* () {
      const fiber = yield* Effect.forkChild(Effect.provideService(Pipeline.run(p, input, options), Clock.Clock, clock))
      yield* TestClock.adjust("1 hour")
      return yield* Fiber.join(fiber)
    })

  for (const mode of ["parallel", "sequential"] as const) {
    it.effect(`a wall clock stepped back mid-step leaves durations and wallMs as they were (${mode})`, () =>
      Effect.gen(function* () {
        const { stepBack, stepped } = yield* steppable
        const context = yield* executorContext(Layer.empty)
        const p = Pipeline.make()
          .step("direct", [], () => Effect.andThen(stepBack, sleepThen(1_000, 1)))
          .step("governed", ["direct"], () => Effect.andThen(stepBack, sleepThen(1_000, 2)), { timeout: "1 minute" })
        const result = yield* runOn(stepped, p, undefined, { mode }).pipe(Effect.provideContext(context))
        assert.strictEqual(result.status, "succeeded")
        const direct = timingOf(result.steps.direct)
        const governed = timingOf(result.steps.governed)
        assert.deepStrictEqual([direct.durationMs, governed.durationMs], [1_000, 1_000])
        assert.deepStrictEqual([result.wallMs, result.busyMs, result.criticalPathMs], [2_000, 2_000, 2_000])
        assert.strictEqual(result.parallelism, 1)
        // startedAt and endedAt stay dates: the wall clock's.
        assert.deepStrictEqual([direct.startedAt, direct.endedAt], [0, 1_000 - 3_600_000])
        assert.deepStrictEqual([result.startedAt, result.endedAt], [0, 2_000 - 7_200_000])
      })
    )
  }

  it.effect("a step interrupted by a fail-fast stop is timed on the monotonic clock too", () =>
    Effect.gen(function* () {
      const { stepBack, stepped } = yield* steppable
      const p = Pipeline.make()
        .step("boom", [], () => Effect.andThen(sleepThen(1_000, 1), Effect.andThen(stepBack, Effect.fail("broken"))))
        .step("slow", [], () => sleepThen(10_000, 1))
      const result = yield* runOn(stepped, p, undefined)
      assert.deepStrictEqual([result.steps.boom.status, result.steps.slow.status], ["failed", "interrupted"])
      assert.deepStrictEqual(
        [timingOf(result.steps.boom).durationMs, timingOf(result.steps.slow).durationMs],
        [1_000, 1_000]
      )
      assert.strictEqual(result.wallMs, 1_000)
    })
  )

  it.effect("a step whose fiber ends without an outcome is timed on the monotonic clock too", () =>
    Effect.gen(function* () {
      const { stepBack, stepped } = yield* steppable
      const p = Pipeline.make().step("lost", [], () =>
        Effect.flatMap(Effect.andThen(stepBack, sleepThen(1_000, 1)), () => 42 as unknown as Effect.Effect<number>)
      )
      for (const mode of ["parallel", "sequential"] as const) {
        const result = yield* runOn(stepped, p, undefined, { mode })
        assert.strictEqual(result.steps.lost.status, "failed")
        assert.strictEqual(timingOf(result.steps.lost).durationMs, 1_000)
        assert.strictEqual(result.wallMs, 1_000)
      }
    })
  )
})

describe("Pipeline.describeOutcome of a step that fell back says what it failed with", () => {
  it.effect("the failure's message, bounded as values are shown; a timeout still says its deadline", () =>
    Effect.gen(function* () {
      const context = yield* executorContext(Layer.empty)
      const p = Pipeline.make()
        .step("retrieve", [], () => Effect.fail(overloaded()), { fallback: { value: "cached" } })
        .step("plain", [], () => Effect.fail("index down"), { fallback: { step: () => Effect.succeed(1) } })
        .step("huge", [], () => Effect.fail("e".repeat(5_000)), { fallback: { value: 2 } })
        .step("hangs", [], () => sleepThen(1_000, 3), { timeout: "100 millis", fallback: { value: 4 } })
      const result = yield* runClocked(p, undefined).pipe(Effect.provideContext(context))
      assert.strictEqual(result.status, "succeeded")
      assert.strictEqual(
        Pipeline.describeOutcome(result.steps.retrieve),
        "retrieve: succeeded with the fallback value (failed: busy)"
      )
      assert.strictEqual(
        Pipeline.describeOutcome(result.steps.plain),
        "plain: succeeded with the fallback step (failed: index down)"
      )
      assert.strictEqual(
        Pipeline.describeOutcome(result.steps.huge),
        `huge: succeeded with the fallback value (failed: ${"e".repeat(80)}… (5,000 characters))`
      )
      assert.strictEqual(
        Pipeline.describeOutcome(result.steps.hangs),
        "hangs: succeeded with the fallback value (timed out after 100ms)"
      )
    })
  )
})
