import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Metric, Option, Scope, Stream } from "effect"
import { TestClock } from "effect/testing"
import { modelError } from "../src/AiError.js"
import { statsOf } from "../src/batch/stats.js"
import * as Executor from "../src/Executor.js"
import * as Metrics from "../src/Metrics.js"
import * as Mock from "../src/Model/Mock.js"
import { Outcome } from "../src/Model/Mock.js"
import type { Service as ProviderService } from "../src/Model.js"
import * as Orchestra from "../src/Orchestra.js"
import * as Prometheus from "../src/Prometheus.js"
import * as Stats from "../src/Stats.js"
import { setup } from "./utils/executor.js"
import { makeManager } from "./utils/manager.js"

const make = Stats.make.pipe(Effect.provideService(Metric.MetricRegistry, new Map()))

describe("Stats", () => {
  it.effect("percentiles of calls longer than the last latency bucket (~13 minutes) are not the slowest call's", () =>
    Effect.gen(function* () {
      const stats = yield* make
      const series = stats.series("p", "d")
      // 99 calls of 15 minutes and one of 10 hours: the median is 15 minutes, not 10 hours.
      for (let i = 0; i < 99; i++) series.latency.record(900_000)
      series.latency.record(36_000_000)
      const { latency } = yield* stats.snapshot()
      assert.strictEqual(latency.max, 36_000_000)
      assert.strictEqual(latency.p50, 900_000)
      assert.strictEqual(latency.p95, 900_000)
      // Every call is in a bucket the exporters see: the le="+Inf" bucket counts all 100.
      assert.strictEqual(series.latency.state().buckets.at(-1)![1], 100)
    })
  )

  it.effect(
    "a duration that is no number (NaN, Infinity) is ignored and counted: it made the average and max Infinity",
    () =>
      Effect.gen(function* () {
        const stats = yield* make
        const series = stats.series("p", "nonfinite")
        for (const ms of [100, Number.POSITIVE_INFINITY, 300, Number.NaN, Number.NEGATIVE_INFINITY, 200]) {
          series.latency.record(ms)
        }
        const { latency } = yield* stats.snapshot({ provider: "p", domain: "nonfinite" })
        assert.deepStrictEqual([latency.avg, latency.min, latency.max], [200, 100, 300])
        assert.isTrue(Number.isFinite(latency.p99) && latency.p99 <= 300, String(latency.p99))
        const state = series.latency.state()
        assert.deepStrictEqual([state.count, state.sum, state.min, state.max], [3, 600, 100, 300])
        assert.strictEqual(state.buckets.at(-1)![1], 3)
        assert.strictEqual(series.latency.ignored, 3)
        // A negative duration (a clock set back) is still a call: it counts as 0 ms.
        series.latency.record(-5)
        assert.deepStrictEqual([series.latency.state().count, series.latency.state().min], [4, 0])
      })
  )

  it.effect("a null filter (or null fields) is no filter, as an absent one is: snapshot died of a TypeError", () =>
    Effect.gen(function* () {
      const stats = yield* make
      stats.series("p", "d").requests += 2
      stats.series("q", undefined).requests += 1
      assert.strictEqual((yield* stats.snapshot(null as never)).total, 3)
      assert.strictEqual(stats.snapshotUnsafe(null as never).total, 3)
      assert.strictEqual((yield* stats.snapshot({ provider: null, domain: "d" } as never)).total, 2)
    })
  )

  it.effect("a filter with a misspelt key or a field that is no name is refused naming it, not read as no filter", () =>
    Effect.gen(function* () {
      const stats = yield* make
      stats.series("p", "d").requests += 2
      stats.series("q", undefined).requests += 1
      const refused = (filter: unknown) => Effect.flip(stats.snapshot(filter as Stats.Filter))
      for (const [filter, field] of [
        [{ provder: "p" }, "filter.provder"],
        [{ provider: 1 }, "filter.provider"],
        [{ domain: ["d"] }, "filter.domain"],
        ["p", "filter"],
        [["p"], "filter"]
      ] as const) {
        const error = yield* refused(filter)
        assert.strictEqual(error.reason, "InvalidRequest", JSON.stringify(filter))
        assert.strictEqual(error.field, field)
        assert.include(error.message, field)
        const thrown = (() => {
          try {
            stats.snapshotUnsafe(filter as Stats.Filter)
          } catch (error) {
            return error as { readonly field?: string }
          }
        })()
        assert.strictEqual(thrown?.field, field, "snapshotUnsafe refuses it too")
      }
      const getter = yield* refused({
        get provider(): string {
          throw new Error("boom")
        }
      })
      assert.strictEqual(getter.field, "filter.provider")
      assert.strictEqual((yield* stats.snapshot({ provider: "p" })).total, 2)
      assert.strictEqual(
        (yield* Stats.snapshot({ domain: "d" }).pipe(Effect.provideService(Stats.Stats, stats))).total,
        2
      )
    })
  )

  it.effect("a wrong filter is said by its kind, in the words every other check uses (Input.kindOf)", () =>
    Effect.gen(function* () {
      const stats = yield* make
      for (const [filter, message] of [
        [{ provider: 1 }, "invalid filter.provider: expected a name, got a number"],
        [{ domain: ["d"] }, "invalid filter.domain: expected a name, got an array"],
        [{ domain: () => "d" }, "invalid filter.domain: expected a name, got a function"],
        ["p", "invalid filter: expected { provider?, domain? }, got a string"],
        [true, "invalid filter: expected { provider?, domain? }, got a boolean"]
      ] as const) {
        const error = yield* Effect.flip(stats.snapshot(filter as never))
        assert.strictEqual(error.message, message)
      }
    })
  )

  it.effect(
    "a filter that is no object of fields (a signal, a Map) is refused naming filter, not read as no filter",
    () =>
      Effect.gen(function* () {
        const stats = yield* make
        stats.series("p", "d").requests += 2
        for (const [filter, shown] of [
          [new AbortController().signal, "an AbortSignal"],
          [new Map([["provider", "p"]]), "an instance of Map"]
        ] as const) {
          const error = yield* Effect.flip(stats.snapshot(filter as never))
          assert.strictEqual(error.field, "filter")
          assert.include(error.message, shown)
          assert.throws(() => stats.snapshotUnsafe(filter as never), shown)
        }
      })
  )

  it.effect(
    "a series keeps only the registry and metric attributes of the context Stats is built in, not its services",
    () =>
      Effect.gen(function* () {
        class App extends Context.Service<App, { readonly big: ReadonlyArray<number> }>()("test/Stats/App") {}
        const registry: Metric.MetricRegistry = new Map()
        const stats = yield* Stats.make.pipe(
          Effect.provideService(Metric.MetricRegistry, registry),
          Effect.provideService(App, { big: [1, 2, 3] })
        )
        const series = stats.series("kept", "d")
        const kept = (series as unknown as { readonly context: Context.Context<never> }).context
        assert.isTrue(Option.isNone(Context.getOption(kept, App)), "the series kept the application's services")
        assert.strictEqual(Context.get(kept, Metric.MetricRegistry), registry)
        series.requests++
        const text = yield* Prometheus.text.pipe(Effect.provideService(Metric.MetricRegistry, registry))
        assert.include(text, 'orchestra_requests_total{provider="kept",domain="d"} 1')
      })
  )

  it.effect("percentiles at the edges: no call, one call, calls all equal, calls of 0 ms", () =>
    Effect.gen(function* () {
      const stats = yield* make
      assert.deepStrictEqual((yield* stats.snapshot()).latency, { avg: 0, min: 0, max: 0, p50: 0, p95: 0, p99: 0 })
      stats.series("one", "d").latency.record(1234)
      const one = (yield* stats.snapshot({ provider: "one" })).latency
      assert.deepStrictEqual(one, { avg: 1234, min: 1234, max: 1234, p50: 1234, p95: 1234, p99: 1234 })
      for (let i = 0; i < 7; i++) stats.series("equal", "d").latency.record(42)
      const equal = (yield* stats.snapshot({ provider: "equal" })).latency
      assert.deepStrictEqual(equal, { avg: 42, min: 42, max: 42, p50: 42, p95: 42, p99: 42 })
      for (let i = 0; i < 3; i++) stats.series("zero", "d").latency.record(0)
      const zero = (yield* stats.snapshot({ provider: "zero" })).latency
      assert.deepStrictEqual(zero, { avg: 0, min: 0, max: 0, p50: 0, p95: 0, p99: 0 })
    })
  )

  it.effect("successRate is never rounded to 100 while a call failed, nor to 0 while one succeeded", () =>
    Effect.gen(function* () {
      const stats = yield* make
      const mostly = stats.series("mostly-ok", "d")
      mostly.successes += 19_999
      mostly.fail("Overloaded")
      const ok = yield* stats.snapshot({ provider: "mostly-ok" })
      assert.strictEqual(ok.failures, 1)
      assert.strictEqual(ok.successRate, 99.99)
      assert.include(Stats.format(ok), "99.99 %")
      const rare = stats.series("mostly-failing", "d")
      rare.successes += 1
      for (let i = 0; i < 19_999; i++) rare.fail("Overloaded")
      const bad = yield* stats.snapshot({ provider: "mostly-failing" })
      assert.strictEqual(bad.successRate, 0.01)
      assert.include(Stats.format(bad), "0.01 %")
      // Rates the rounding does not turn into another answer read as before.
      const half = stats.series("half", "d")
      half.successes += 1
      half.fail("Overloaded")
      const even = yield* stats.snapshot({ provider: "half" })
      assert.strictEqual(even.successRate, 50)
      assert.include(Stats.format(even), "50.0 %")
      const all = stats.series("all-ok", "d")
      all.successes += 3
      assert.strictEqual((yield* stats.snapshot({ provider: "all-ok" })).successRate, 100)
    })
  )

  it.effect("throughput keeps the rate of slow traffic: twelve calls an hour read 0 calls/s", () =>
    Effect.gen(function* () {
      const stats = yield* make
      const slow = stats.series("slow", "d")
      yield* TestClock.adjust("1 hour")
      slow.successes += 12
      const hourly = yield* stats.snapshot({ provider: "slow" })
      assert.strictEqual(hourly.windowMs, 3_600_000)
      assert.strictEqual(hourly.throughput, 0.00333)
      assert.include(Stats.format(hourly), "0.00333 /s")
      // From one call a second on, two decimals as before.
      slow.successes += 3_600 * 12 - 12
      const busy = yield* stats.snapshot({ provider: "slow" })
      assert.strictEqual(busy.throughput, 12)
      assert.include(Stats.format(busy), "12.00 /s")
    })
  )

  it.effect("format never shows a rate in exponent form: one call in twelve days is a rate per day", () =>
    Effect.gen(function* () {
      const stats = yield* make
      stats.series("rare", "d").successes += 1
      yield* TestClock.adjust("12 days")
      const rare = yield* stats.snapshot({ provider: "rare" })
      assert.strictEqual(rare.throughput, 9.65e-7)
      const line = (figures: Stats.ExecutionStats) =>
        Stats.format(figures)
          .split("\n")
          .find((l) => l.startsWith("throughput"))
      assert.match(line(rare)!, /throughput +0\.0834 \/day$/)
      assert.match(line({ ...rare, throughput: 1e-6 })!, /throughput +0\.000001 \/s$/)
      assert.match(line({ ...rare, throughput: 1e-15 })!, /throughput +under 0\.000001 \/day$/)
      assert.notMatch(Stats.format({ ...rare, throughput: 5e-324 }), /e-/)
    })
  )

  it.effect(
    "the window is timed on the monotonic clock: a wall clock set back an hour (an NTP step) made windowMs negative",
    () =>
      Effect.gen(function* () {
        const stats = yield* make
        const series = stats.series("stepped", "d")
        yield* TestClock.adjust("10 seconds")
        series.successes += 20
        // The wall clock set back an hour: a TestClock's monotonic time does not move with it.
        yield* TestClock.setTime(
          (yield* Effect.clockWith((clock) => Effect.succeed(clock.currentTimeMillisUnsafe()))) - 3_600_000
        )
        const stepped = yield* stats.snapshot({ provider: "stepped" })
        assert.strictEqual(stepped.windowMs, 10_000)
        assert.strictEqual(stepped.throughput, 2)
        // A window started after the step is timed from there.
        yield* stats.reset
        yield* TestClock.adjust("4 seconds")
        series.successes += 2
        const after = yield* stats.snapshot({ provider: "stepped" })
        assert.deepStrictEqual([after.windowMs, after.throughput], [4_000, 0.5])
      })
  )

  it("a batch's successRate and throughput are rounded as a window's: 1 failure in 20,000 read 100 %, slow ones 0/s", () => {
    const answer = { source: "cache", domainsTried: 1 }
    const error = modelError("Overloaded", "down")
    const results = Array.from({ length: 20_000 }, (_, index) =>
      index === 0
        ? { index, status: "error", error, ran: true, durationMs: 1, retries: 0 }
        : { index, status: "success", answer, ran: true, durationMs: 1, retries: 0 }
    )
    // One item every five minutes.
    const batch = statsOf(results as never, { elapsedMs: 20_000 * 300_000, peak: 1, waits: results.map(() => NaN) })
    assert.strictEqual(batch.failures, 1)
    assert.strictEqual(batch.successRate, 99.99)
    assert.strictEqual(batch.throughput, 0.00333)
  })

  it("a batch's latencies leave out durations that are no number and read a negative one as 0, as a window's do", () => {
    const answer = { source: "cache", domainsTried: 1 }
    const durations = [10, Number.NaN, -5, Number.POSITIVE_INFINITY, 20]
    const results = durations.map((durationMs, index) => ({
      index,
      status: "success",
      answer,
      ran: true,
      durationMs,
      retries: 0
    }))
    const waits = [1, Number.NaN, -3, Number.NEGATIVE_INFINITY, 3]
    const batch = statsOf(results as never, { elapsedMs: 1_000, peak: 1, waits })
    assert.deepStrictEqual(batch.latency, { avg: 10, min: 0, max: 20, p50: 10, p95: 20, p99: 20 })
    assert.deepStrictEqual([batch.queueWait.avg, batch.queueWait.min, batch.queueWait.max], [1.33, 0, 3])
    assert.strictEqual(batch.ignoredDurations, 3)
    assert.match(Stats.format(batch), /ignored durations +3 \(NaN or Infinity\)/)
    const clean = statsOf(results.slice(0, 1) as never, { elapsedMs: 1_000, peak: 1, waits: [1] })
    assert.strictEqual(clean.ignoredDurations, 0)
  })

  it.effect("a pair's inFlight and concurrencyPeak are its own, whatever its names hold", () =>
    Effect.gen(function* () {
      const stats = yield* make
      // Both names are allowed; joined by a NUL into one key, the two pairs shared one gauge.
      const busy = stats.series("a\u0000b", "c")
      stats.series("a", "b\u0000c").requests++
      for (const gauge of busy.gauges) gauge.enter()
      const idle = yield* stats.snapshot({ provider: "a", domain: "b\u0000c" })
      assert.deepStrictEqual([idle.total, idle.inFlight, idle.concurrencyPeak], [1, 0, 0])
      const own = yield* stats.snapshot({ provider: "a\u0000b", domain: "c" })
      assert.deepStrictEqual([own.inFlight, own.concurrencyPeak], [1, 1])
      assert.strictEqual((yield* stats.snapshot({ provider: "a", domain: "nothing" })).inFlight, 0)
    })
  )

  it.effect(
    "percentiles of a few calls are within ~5% as documented: a bucket's one call read at its top, 10% off",
    () =>
      Effect.gen(function* () {
        const stats = yield* make
        // Just above a bucket's lower bound: the bucket's top is 10% above the call.
        const fast = Metrics.latencyBoundaries[60]! * 1.0001
        const series = stats.series("few", "d")
        series.latency.record(fast)
        series.latency.record(1_000)
        const { latency } = yield* stats.snapshot({ provider: "few" })
        // Nearest rank: the median of two calls is the first.
        assert.isAtMost(Math.abs(latency.p50 - fast) / fast, 0.05, `p50 ${latency.p50} of ${fast}`)
        assert.strictEqual(latency.p99, 1_000)
        // Many calls spread through one bucket: within ~5% too.
        const spread = stats.series("spread", "d")
        const low = Metrics.latencyBoundaries[80]!
        for (let i = 1; i <= 100; i++) spread.latency.record(low * (1 + 0.1 * (i / 100)) * 0.99999)
        const many = (yield* stats.snapshot({ provider: "spread" })).latency
        for (const [q, p] of [
          [0.5, many.p50],
          [0.95, many.p95]
        ] as const) {
          const truth = low * (1 + 0.1 * q) * 0.99999
          assert.isAtMost(Math.abs(p - truth) / truth, 0.05, `p${q * 100} ${p} of ${truth}`)
        }
      })
  )

  it.effect("embeddings count the input tokens their provider reports, through the router and the executor", () =>
    Effect.gen(function* () {
      const { router, executor, stats } = yield* makeManager({ a: {} })
      const routed = yield* router.embed({ texts: ["the first text to embed", "a second one"] }, "d-a")
      const direct = yield* executor.embed({ texts: ["one more text"] })
      assert.isAbove(routed.usage!.inputTokens, 0)
      const { tokens } = yield* stats.snapshot({ provider: "a" })
      assert.deepStrictEqual(tokens, { input: routed.usage!.inputTokens + direct.usage!.inputTokens, output: 0 })
    })
  )

  it.effect("a retry whose backoff the call's deadline would cut is not made nor counted: it never ran", () =>
    Effect.gen(function* () {
      const { router, stats, controls } = yield* makeManager(
        { a: { script: [Outcome.fail("Overloaded"), Outcome.fail("Overloaded")] } },
        {
          breakers: false,
          domains: [
            {
              name: "d-a",
              provider: "a",
              totalTimeout: "100 millis",
              retry: { maxAttempts: 3, initialDelay: "1 second", jitter: 0 }
            }
          ]
        }
      )
      const call = yield* Effect.forkChild(Effect.flip(router.execute({ prompt: "q" }, "d-a")))
      const stream = yield* Effect.forkChild(Effect.flip(Stream.runCollect(router.stream({ prompt: "s" }, "d-a"))))
      yield* TestClock.adjust("10 seconds")
      // The 1 s backoff would end past the 100 ms deadline: each fails with the provider's own error.
      for (const error of [yield* Fiber.join(call), yield* Fiber.join(stream)]) {
        assert.deepStrictEqual([error._tag, error._tag === "ModelError" && error.reason], ["ModelError", "Overloaded"])
      }
      assert.strictEqual(yield* controls.a!.calls, 2)
      const figures = yield* stats.snapshot({ provider: "a" })
      assert.deepStrictEqual([figures.total, figures.failures, figures.retries], [2, 2, 0])
    })
  )

  it.effect("a stream's service time leaves out its wait for a provider slot, as a call's does", () =>
    Effect.gen(function* () {
      const { router, stats } = yield* makeManager({ a: { latency: 100, maxConcurrency: 1 } }, { breakers: false })
      const streams = yield* Effect.forkChild(
        Effect.forEach([1, 2], (i) => Stream.runCollect(router.stream({ prompt: `s${i}` }, "d-a")), {
          concurrency: "unbounded"
        })
      )
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(streams)
      const { queueWait, serviceTime } = yield* stats.snapshot({ provider: "a" })
      assert.deepStrictEqual([queueWait.min, queueWait.max], [0, 100])
      assert.deepStrictEqual([serviceTime.min, serviceTime.max], [100, 100])
    })
  )

  it.effect("a hedge's backups that did not win are lost, also when no domain answered", () =>
    Effect.gen(function* () {
      const { router, stats } = yield* makeManager(
        {
          a: { script: [Outcome.fail("Overloaded", { latency: 200 })] },
          b: { script: [Outcome.fail("Overloaded", { latency: 200 })] }
        },
        { breakers: false }
      )
      const hedged = yield* Effect.forkChild(Effect.flip(router.hedge({ prompt: "q" }, ["d-a", "d-b"], { after: 50 })))
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(hedged))._tag, "FallbackExhaustedError")
      const { hedges } = yield* stats.snapshot()
      assert.deepStrictEqual(hedges, { started: 1, won: 0, lost: 1 })
    })
  )

  it.effect("a request refused before it runs is counted on every entry point, streams and embeddings too", () =>
    Effect.gen(function* () {
      const { router, executor, stats } = yield* makeManager({ a: {} })
      const empty = { prompt: "" }
      const refusals: ReadonlyArray<readonly [string, Effect.Effect<unknown, unknown>]> = [
        ["router.execute", router.execute(empty, "d-a")],
        ["router.stream", Stream.runCollect(router.stream(empty, "d-a"))],
        ["router.embed", router.embed({ texts: [] as never }, "d-a")],
        ["executor.execute", executor.execute(empty)],
        ["executor.stream", Stream.runCollect(executor.stream(empty))],
        ["executor.embed", executor.embed({ texts: [] as never })]
      ]
      for (const [name, call] of refusals) {
        const before = yield* stats.snapshot({ provider: "a" })
        assert.strictEqual((yield* Effect.flip(call)) instanceof Error, true, name)
        const after = yield* stats.snapshot({ provider: "a" })
        assert.deepStrictEqual(
          [after.total - before.total, after.failures - before.failures, after.failuresByReason.InvalidRequest],
          [1, 1, (before.failuresByReason.InvalidRequest ?? 0) + 1],
          name
        )
      }
      // Under the domain the call named.
      assert.strictEqual((yield* stats.snapshot({ provider: "a", domain: "d-a" })).total, 3)
    })
  )

  it.effect(
    "a provider's usage that is negative, NaN or infinite is a Decode error and adds no tokens: the counters never go down nor turn NaN",
    () =>
      Effect.gen(function* () {
        const { executor, registry } = yield* setup()
        const usage = (inputTokens: number, outputTokens: number) => ({ inputTokens, outputTokens, totalTokens: 0 })
        const provider = (inputTokens: number, outputTokens: number): ProviderService => ({
          name: "odd",
          defaultModel: "m",
          generate: () =>
            Effect.succeed({
              text: "x",
              finishReason: "stop",
              usage: usage(inputTokens, outputTokens),
              provider: "odd",
              model: "m"
            }),
          stream: () =>
            Stream.make({
              _tag: "Finish",
              finishReason: "stop",
              usage: usage(inputTokens, outputTokens),
              provider: "odd",
              model: "m"
            }),
          embed: () => Effect.die("unused")
        })
        yield* executor.execute({ prompt: "q" }, { provider: provider(10, 20) })
        for (const [input, output] of [
          [-5, Number.NaN],
          [Number.POSITIVE_INFINITY, -1]
        ] as const) {
          // Such an answer is a Decode error naming the count (generate and stream alike), and counts nothing.
          const answered = yield* Effect.flip(executor.execute({ prompt: "q" }, { provider: provider(input, output) }))
          const streamed = yield* Effect.flip(
            Stream.runDrain(executor.stream({ prompt: "q" }, { provider: provider(input, output) }))
          )
          for (const error of [answered, streamed]) {
            assert.strictEqual(error._tag === "ModelError" ? error.reason : error._tag, "Decode")
            assert.include(error.message, "usage.inputTokens")
          }
        }
        assert.deepStrictEqual((yield* executor.stats({ provider: "odd" })).tokens, { input: 10, output: 20 })
        const text = yield* Prometheus.text.pipe(Effect.provideService(Metric.MetricRegistry, registry))
        assert.include(text, 'orchestra_input_tokens_total{provider="odd",domain="none"} 10\n')
        assert.include(text, 'orchestra_output_tokens_total{provider="odd",domain="none"} 20\n')
      })
  )

  it.effect("a series first used after its layer closed (a call refused then) never enters the registry", () =>
    Effect.gen(function* () {
      const { executor, registry, close } = yield* setup()
      yield* executor.execute({ prompt: "q" }, { domain: "before" })
      assert.isAbove(registry.size, 0)
      yield* close
      assert.strictEqual(registry.size, 0)
      // Refused before the executor's shutdown check: it is still counted, in a series of its own.
      const refused = yield* Effect.flip(executor.execute({ prompt: "" }, { domain: "late" }))
      assert.strictEqual(refused._tag, "ModelError")
      yield* Effect.exit(executor.execute({ prompt: "q" }, { domain: "later" }))
      // A series removed at the close: a failure of a reason it had not seen registers nothing either.
      yield* Effect.flip(executor.execute({ prompt: "" }, { domain: "before" }))
      assert.deepStrictEqual(
        [...registry.values()].map((metric) => `${metric.id} ${JSON.stringify(metric.attributes)}`),
        []
      )
    })
  )

  it.effect(
    'a provider named "(other)" is refused where it enters: its breaker, limit and stats would be the overflow\'s',
    () =>
      Effect.gen(function* () {
        const other = Mock.layer({ name: Metrics.otherSeries })
        const executor = yield* Effect.flip(
          Layer.build(Executor.layerWithStats().pipe(Layer.provide(other))).pipe(
            Effect.provideService(Metric.MetricRegistry, new Map())
          )
        )
        assert.deepStrictEqual([executor._tag, executor.path], ["OptionError", "provider.name"])
        const orchestra = yield* Effect.flip(
          Layer.build(Orchestra.layer({ providers: { main: Mock.layer(), spare: other } })).pipe(
            Effect.provideService(Metric.MetricRegistry, new Map())
          )
        )
        assert.deepStrictEqual([orchestra._tag, orchestra.path], ["OptionError", "providers.spare.name"])
        const { executor: running } = yield* setup()
        const given: ProviderService = { ...(yield* Mock.make()).provider, name: Metrics.otherSeries }
        const refused = yield* Effect.flip(running.execute({ prompt: "q" }, { provider: given }))
        assert.deepStrictEqual(
          [
            refused._tag,
            refused._tag === "ModelError" && refused.reason,
            refused._tag === "ModelError" && refused.field
          ],
          ["ModelError", "InvalidRequest", "provider.name"]
        )
      })
  )

  it.effect(
    "a provider name past 256 characters is refused where it enters, naming the field, as a domain's is: its calls were counted under (other), unseen",
    () =>
      Effect.gen(function* () {
        const name = "p".repeat(257)
        const long = Mock.layer({ name })
        const expected =
          "expected at most 256 characters, got 257: a longer name labels no series of its own in stats and metrics"
        const executor = yield* Effect.flip(
          Layer.build(Executor.layerWithStats().pipe(Layer.provide(long))).pipe(
            Effect.provideService(Metric.MetricRegistry, new Map())
          )
        )
        assert.deepStrictEqual(
          [executor._tag, executor.path, executor.message],
          ["OptionError", "provider.name", `invalid provider.name: ${expected}`]
        )
        const orchestra = yield* Effect.flip(
          Layer.build(Orchestra.layer({ providers: { main: Mock.layer(), spare: long } })).pipe(
            Effect.provideService(Metric.MetricRegistry, new Map())
          )
        )
        assert.deepStrictEqual([orchestra._tag, orchestra.path], ["OptionError", "providers.spare.name"])
        const { executor: running } = yield* setup()
        const given: ProviderService = { ...(yield* Mock.make()).provider, name }
        const refused = yield* Effect.flip(running.execute({ prompt: "q" }, { provider: given }))
        assert.deepStrictEqual(
          [
            refused._tag,
            refused._tag === "ModelError" && refused.reason,
            refused._tag === "ModelError" && refused.field
          ],
          ["ModelError", "InvalidRequest", "provider.name"]
        )
        // 256 characters still name a provider.
        const edge = { ...(yield* Mock.make()).provider, name: "e".repeat(256) }
        const fits = yield* Effect.exit(running.execute({ prompt: "q" }, { provider: edge }))
        assert.isTrue(Exit.isSuccess(fits))
      })
  )

  it.effect(
    'a domain (or provider) name past 256 characters labelled series of its own: it was written whole in each line of them on every scrape; it counts under "(other)"',
    () =>
      Effect.gen(function* () {
        const { executor, registry, stats } = yield* setup({ name: "long-labels" })
        // A prompt (or a whole user record) given as the call's domain: 100,000 characters.
        const long = "u".repeat(100_000)
        const answer = yield* executor.execute({ prompt: "q" }, { domain: long })
        assert.strictEqual(answer.provider, "long-labels")
        // A name of 256 characters still has series of its own.
        const edge = "e".repeat(256)
        yield* executor.execute({ prompt: "q" }, { domain: edge })
        const text = Prometheus.formatUnsafe(Context.make(Metric.MetricRegistry, registry) as Context.Context<never>)
        assert.notInclude(text, "u".repeat(257))
        // Counted as its provider's, past the domains of its own.
        assert.include(text, `orchestra_requests_total{provider="long-labels",domain="(other)"} 1`)
        assert.include(text, `orchestra_requests_total{provider="long-labels",domain="${edge}"} 1`)
        assert.isBelow(text.length, 1_000_000)
        // Its calls are read where they count, as those of the pairs past maxSeries are.
        const read = yield* stats.snapshot({ domain: long })
        assert.deepStrictEqual([read.total, read.successes], [1, 1])
        assert.deepStrictEqual(read.series, { domain: Metrics.otherSeries })
        assert.strictEqual((yield* stats.snapshot({ domain: edge })).total, 1)
        assert.strictEqual((yield* stats.snapshot({ provider: "long-labels" })).total, 2)
        // A provider of such a name too: its calls count under "(other)", with no provider.
        stats.series("p".repeat(300), "d").requests++
        assert.strictEqual((yield* stats.snapshot({ provider: Metrics.otherSeries })).total, 1)
      })
  )

  it.effect('a domain per call (a user id) made series for ever: past maxSeries pairs they count under "(other)"', () =>
    Effect.gen(function* () {
      const registry: Metric.MetricRegistry = new Map()
      const stats = yield* Stats.make.pipe(Effect.provideService(Metric.MetricRegistry, registry))
      const { executor } = yield* setup()
      for (let i = 0; i < Stats.maxSeries + 5; i++) stats.series("p", `user-${i}`).requests++
      const requests = [...registry.values()].filter((metric) => metric.id === "orchestra_requests_total")
      assert.strictEqual(requests.length, Stats.maxSeries + 1)
      assert.strictEqual((yield* stats.snapshot()).total, Stats.maxSeries + 5)
      assert.strictEqual((yield* stats.snapshot({ domain: Metrics.otherSeries })).total, 5)
      // p's own, past its domains of their own: every call of p is p's.
      assert.strictEqual((yield* stats.snapshot({ provider: "p", domain: Metrics.otherSeries })).total, 5)
      assert.strictEqual((yield* stats.snapshot({ provider: "p" })).total, Stats.maxSeries + 5)
      // A pair with series keeps it.
      stats.series("p", "user-0").requests++
      assert.strictEqual((yield* stats.snapshot({ provider: "p", domain: "user-0" })).total, 2)
      // The name of that series is no domain a call or a configuration may give.
      const refused = yield* Effect.flip(executor.execute({ prompt: "q" }, { domain: Metrics.otherSeries }))
      assert.deepStrictEqual(
        [refused._tag === "ModelError" && refused.reason, refused._tag === "ModelError" && refused.field],
        ["InvalidRequest", "domain"]
      )
      const config = yield* Effect.flip(
        Layer.build(
          Orchestra.layer({ providers: { main: Mock.layer() }, domains: [{ name: "(other)", provider: "main" }] })
        ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
      )
      assert.deepStrictEqual([config._tag, config.path], ["OptionError", "domains[0].name"])
    })
  )
  it.effect(
    'a provider per tenant, each past its first pair: at most one "(other)" per provider with series of its own, so at most 2 × maxSeries + 1 series',
    () =>
      Effect.gen(function* () {
        const registry: Metric.MetricRegistry = new Map()
        const stats = yield* Stats.make.pipe(Effect.provideService(Metric.MetricRegistry, registry))
        const tenants = Stats.maxSeries + 5
        // The worst case: every pair of its own is a provider's first, and each of them then has a later pair.
        for (const domain of ["first", "second", "third"]) {
          for (let i = 0; i < tenants; i++) stats.series(`tenant-${i}`, domain).requests++
        }
        const requests = [...registry.values()].filter((metric) => metric.id === "orchestra_requests_total")
        assert.strictEqual(requests.length, 2 * Stats.maxSeries + 1)
        assert.strictEqual((yield* stats.snapshot()).total, 3 * tenants)
        // Every call of a provider with series of its own is still its own.
        const last = yield* stats.snapshot({ provider: `tenant-${Stats.maxSeries - 1}` })
        assert.deepStrictEqual([last.total, last.series], [3, { provider: `tenant-${Stats.maxSeries - 1}` }])
        // A provider past them: the shared series.
        const late = yield* stats.snapshot({ provider: `tenant-${Stats.maxSeries}` })
        assert.deepStrictEqual(late.series, { provider: Metrics.otherSeries, domain: Metrics.otherSeries })
      })
  )
  it.effect(
    'past maxSeries, a provider with series of its own keeps the calls of its later pairs: a provider filter undercounted them, in "(other)" with no provider',
    () =>
      Effect.gen(function* () {
        const registry: Metric.MetricRegistry = new Map()
        const stats = yield* Stats.make.pipe(Effect.provideService(Metric.MetricRegistry, registry))
        for (let i = 0; i < Stats.maxSeries; i++) stats.series("p", `user-${i}`).requests++
        stats.series("p", "late").requests += 3
        stats.series("p", "d".repeat(300)).requests += 1
        stats.series("q", undefined).requests += 2
        // Every call of p, whichever its domain.
        const p = yield* stats.snapshot({ provider: "p" })
        assert.deepStrictEqual([p.total, p.series], [Stats.maxSeries + 4, { provider: "p" }])
        // A provider without a series of its own: all its calls are in the shared one.
        const q = yield* stats.snapshot({ provider: "q" })
        assert.deepStrictEqual([q.total, q.series], [2, { provider: Metrics.otherSeries, domain: Metrics.otherSeries }])
        // A pair of p without its own series: p's calls past the bound, named so.
        const late = yield* stats.snapshot({ provider: "p", domain: "late" })
        assert.deepStrictEqual([late.total, late.series], [4, { provider: "p", domain: Metrics.otherSeries }])
        // A domain without its own series may be any provider's: every call past the bound.
        const domain = yield* stats.snapshot({ domain: "late" })
        assert.deepStrictEqual([domain.total, domain.series], [6, { domain: Metrics.otherSeries }])
        assert.strictEqual((yield* stats.snapshot()).total, Stats.maxSeries + 6)
        const text = Prometheus.formatUnsafe(Context.make(Metric.MetricRegistry, registry) as Context.Context<never>)
        assert.include(text, `orchestra_requests_total{provider="p",domain="(other)"} 4`)
        assert.include(text, `orchestra_requests_total{provider="(other)",domain="(other)"} 2`)
        assert.include(Stats.format(late), "(other)")
      })
  )
  it.effect(
    'past maxSeries, a pair without a series of its own answered zeros in silence: it answers the "(other)" series and names it',
    () =>
      Effect.gen(function* () {
        const stats = yield* make
        // Under the bound, a pair that never served a call reads zeros, under its own names.
        assert.deepStrictEqual((yield* stats.snapshot({ provider: "p", domain: "unseen" })).series, {
          provider: "p",
          domain: "unseen"
        })
        for (let i = 0; i < Stats.maxSeries; i++) stats.series("p", `user-${i}`).requests++
        // The bound is reached but nothing counted past it: still zeros of its own.
        const before = yield* stats.snapshot({ provider: "p", domain: "late" })
        assert.deepStrictEqual([before.total, before.series], [0, { provider: "p", domain: "late" }])
        stats.series("p", "late").requests += 3
        stats.series("q", undefined).requests += 2
        // p has series of its own: its pairs past the bound are its "(other)" domain.
        const late = yield* stats.snapshot({ provider: "p", domain: "late" })
        assert.deepStrictEqual([late.total, late.series], [3, { provider: "p", domain: Metrics.otherSeries }])
        // The answer is the caller's: changing it (from JavaScript) changes no later read.
        ;(late.series as { domain?: string }).domain = "late"
        assert.strictEqual((yield* stats.snapshot({ provider: "p", domain: "late" })).total, 3)
        // A provider with no series of its own: the shared series, where all its calls are.
        const provider = yield* stats.snapshot({ provider: "q" })
        assert.deepStrictEqual(
          [provider.total, provider.series],
          [2, { provider: Metrics.otherSeries, domain: Metrics.otherSeries }]
        )
        // A domain with no series of its own: every provider's pairs past the bound.
        const domain = yield* stats.snapshot({ domain: "late" })
        assert.deepStrictEqual([domain.total, domain.series], [5, { domain: Metrics.otherSeries }])
        // A pair with a series of its own answers it, and says so.
        const own = yield* stats.snapshot({ provider: "p", domain: "user-7" })
        assert.deepStrictEqual([own.total, own.series], [1, { provider: "p", domain: "user-7" }])
        const whole = yield* stats.snapshot()
        assert.deepStrictEqual([whole.total, whole.series], [Stats.maxSeries + 5, {}])
        assert.include(Stats.format(yield* stats.snapshot({ provider: "p", domain: "late" })), "(other)")
      })
  )
  it.effect(
    "durations that are no number (NaN, Infinity) were only counted inside: the snapshot and /metrics show them, by window",
    () =>
      Effect.gen(function* () {
        const registry: Metric.MetricRegistry = new Map()
        const stats = yield* Stats.make.pipe(Effect.provideService(Metric.MetricRegistry, registry))
        const series = stats.series("p", "bogus")
        const clean = stats.series("p", "clean")
        clean.latency.record(10)
        const text = () => Prometheus.formatUnsafe(Context.make(Metric.MetricRegistry, registry))
        // No series until a provider reports one: a clean pair adds nothing to /metrics.
        assert.notInclude(text(), "orchestra_ignored_durations_total")
        assert.strictEqual((yield* stats.snapshot()).ignoredDurations, 0)
        series.latency.record(Number.NaN)
        series.latency.record(Number.POSITIVE_INFINITY)
        series.service.record(Number.NaN)
        series.streamService.record(Number.NEGATIVE_INFINITY)
        series.queueWait.record(Number.NaN)
        series.timeToFirstToken.record(Number.NaN)
        series.latency.record(20)
        assert.strictEqual((yield* stats.snapshot({ provider: "p", domain: "bogus" })).ignoredDurations, 6)
        assert.strictEqual((yield* stats.snapshot({ provider: "p", domain: "clean" })).ignoredDurations, 0)
        const lines = text()
        assert.include(lines, "# TYPE orchestra_ignored_durations_total counter")
        assert.include(
          lines,
          'orchestra_ignored_durations_total{provider="p",domain="bogus",metric="orchestra_request_duration_ms"} 2'
        )
        assert.include(
          lines,
          'orchestra_ignored_durations_total{provider="p",domain="bogus",metric="orchestra_service_duration_ms"} 2'
        )
        assert.include(
          lines,
          'orchestra_ignored_durations_total{provider="p",domain="bogus",metric="orchestra_queue_wait_ms"} 1'
        )
        assert.include(
          lines,
          'orchestra_ignored_durations_total{provider="p",domain="bogus",metric="orchestra_time_to_first_token_ms"} 1'
        )
        assert.notInclude(lines, 'orchestra_ignored_durations_total{provider="p",domain="clean"')
        assert.match(Stats.format(yield* stats.snapshot()), /ignored durations +6 \(NaN or Infinity\)/)
        // A new window counts from zero; the exported counter never goes back.
        yield* stats.reset
        assert.strictEqual((yield* stats.snapshot()).ignoredDurations, 0)
        series.latency.record(Number.NaN)
        assert.strictEqual((yield* stats.snapshot()).ignoredDurations, 1)
        assert.include(
          text(),
          'orchestra_ignored_durations_total{provider="p",domain="bogus",metric="orchestra_request_duration_ms"} 3'
        )
      })
  )
  it.effect(
    "a long name holding a lone surrogate was written whole into its InvalidRequest: bounded, with where the surrogate is",
    () =>
      Effect.gen(function* () {
        const { executor } = yield* setup()
        const domain = `${"u".repeat(100_000)}\uD800`
        const refused = yield* Effect.flip(executor.execute({ prompt: "q" }, { domain }))
        assert.strictEqual(refused._tag === "ModelError" && refused.field, "domain")
        assert.isBelow(refused.message.length, 400, refused.message.slice(0, 400))
        assert.include(refused.message, "(100,001 characters)")
        assert.include(refused.message, "at index 100,000")
        // A short one is written out, escaped.
        const short = yield* Effect.flip(executor.execute({ prompt: "q" }, { domain: "k\uD800" }))
        assert.include(short.message, 'got "k\\ud800"')
      })
  )
  it.effect(
    "two Stats sharing a pair: a failure reason (or ignored durations) only the closed one saw vanished from /metrics while its requests stayed",
    () =>
      Effect.gen(function* () {
        const registry: Metric.MetricRegistry = new Map()
        const text = () => Prometheus.formatUnsafe(Context.make(Metric.MetricRegistry, registry))
        const build = Effect.gen(function* () {
          const scope = yield* Scope.make()
          const stats = yield* Stats.make.pipe(
            Effect.provideService(Metric.MetricRegistry, registry),
            Effect.provideService(Scope.Scope, scope)
          )
          return { stats, close: Scope.close(scope, Exit.void) }
        })
        const a = yield* build
        const b = yield* build
        const early = a.stats.series("p", "shared")
        early.requests += 2
        early.fail("Overloaded")
        early.fail("Overloaded")
        early.latency.record(Number.NaN)
        const late = b.stats.series("p", "shared")
        late.requests++
        late.fail("Timeout")
        // A third joining after the reasons were first counted keeps them too.
        const c = yield* build
        c.stats.series("p", "shared").requests++
        yield* a.close
        yield* b.close
        const lines = text()
        assert.include(lines, 'orchestra_requests_total{provider="p",domain="shared"} 4')
        assert.include(lines, 'orchestra_failures_total{provider="p",domain="shared",reason="Overloaded"} 2')
        assert.include(lines, 'orchestra_failures_total{provider="p",domain="shared",reason="Timeout"} 1')
        assert.include(
          lines,
          'orchestra_ignored_durations_total{provider="p",domain="shared",metric="orchestra_request_duration_ms"} 1'
        )
        // The last one closing takes them all away.
        yield* c.close
        assert.notInclude(text(), 'domain="shared"')
      })
  )
  it.effect(
    'past maxSeries, an empty name in a filter (a form field left blank), which no call has, reads zeros under its name, not the "(other)" series',
    () =>
      Effect.gen(function* () {
        const stats = yield* make
        for (let i = 0; i <= Stats.maxSeries; i++) stats.series("p", `user-${i}`).requests++
        for (const filter of [{ provider: "" }, { domain: "" }, { provider: "p", domain: "" }]) {
          const read = yield* stats.snapshot(filter)
          assert.deepStrictEqual([read.total, read.series], [0, filter])
        }
      })
  )
  it.effect(
    "after its layer closed (the facade's final figures after dispose()), the window kept growing: windowMs and throughput drifted for ever",
    () =>
      Effect.gen(function* () {
        const scope = yield* Scope.make()
        const stats = yield* Stats.make.pipe(
          Effect.provideService(Metric.MetricRegistry, new Map()),
          Effect.provideService(Scope.Scope, scope)
        )
        const series = stats.series("p", "closing")
        series.requests += 2
        series.successes += 2
        yield* TestClock.adjust("2 seconds")
        yield* Scope.close(scope, Exit.void)
        yield* TestClock.adjust("1 minute")
        const final = yield* stats.snapshot()
        assert.deepStrictEqual([final.windowMs, final.throughput], [2_000, 1])
        // A new window after that is empty, not negative.
        yield* stats.reset
        yield* TestClock.adjust("1 second")
        const after = yield* stats.snapshot()
        assert.deepStrictEqual([after.windowMs, after.total], [0, 0])
      })
  )
  it.effect("a revoked Proxy as the filter died of a TypeError: it is refused naming filter", () =>
    Effect.gen(function* () {
      const stats = yield* make
      const { proxy, revoke } = Proxy.revocable({}, {})
      revoke()
      const error = yield* Effect.flip(stats.snapshot(proxy as Stats.Filter))
      assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "filter"])
      assert.throws(() => stats.snapshotUnsafe(proxy as Stats.Filter), /invalid filter/)
    })
  )
})
