/**
 * A manager whose build failed, a `dispose()` that does not end, and what is left after `dispose()`.
 * `createOrchestra` runs on the real clock: there a rebuild's backoff is either nothing (`rebuildAfter: 0`)
 * or far longer than the test, so no assertion hangs on time passing. The backoff's schedule itself is
 * timed on a `TestClock`, through the facade built over it (`makeCreateOrchestra`'s clock).
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Duration, Effect, Layer } from "effect"
import { TestClock } from "effect/testing"
import { ModelError } from "../src/AiError.js"
import { AbortedError, createOrchestra, type FacadeError, OrchestraError } from "../src/Facade.js"
import { makeCreateOrchestra } from "../src/facade/orchestra.js"
import * as Input from "../src/Input.js"
import type * as Batch from "../src/Batch.js"
import { ModelProvider } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { typed } from "./utils/facade.js"

const unhandled: Array<unknown> = []
process.on("unhandledRejection", (reason) => unhandled.push(reason))

let mocks = 0
/** A provider layer whose first `failures` builds fail (a server not up yet), each build counted. */
const flaky = (failures: number, failure: () => unknown = () => new Error("connect ECONNREFUSED 127.0.0.1:6379")) => {
  const { control, provider } = Effect.runSync(Mock.make({ name: `facade-rebuild-${++mocks}` }))
  const state = { builds: 0, released: 0 }
  const layer = Layer.effect(
    ModelProvider,
    Effect.gen(function* () {
      const attempt = ++state.builds
      yield* Effect.acquireRelease(Effect.void, () => Effect.sync(() => state.released++))
      if (attempt <= failures) return yield* Effect.fail(failure())
      return provider
    })
  )
  return { control, state, layer }
}

const answered = async (promise: Promise<{ readonly response: { readonly text: string } }>) =>
  (await promise).response.text

describe("createOrchestra: a build that failed", () => {
  it("is tried again by a later call once its backoff has passed: a layer that fails twice then builds", async () => {
    const f = flaky(2)
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: f.layer } }), { rebuildAfter: 0 })
    try {
      const first = await orchestra.execute("q").catch((error: unknown) => error)
      assert.include(String((first as Error).message), "ECONNREFUSED")
      const second = await orchestra.execute("q").catch((error: unknown) => error)
      assert.include(String((second as Error).message), "ECONNREFUSED")
      assert.strictEqual(await answered(orchestra.execute("q")), "mock answer to: q")
      assert.strictEqual(f.state.builds, 3)
      // What a failed build had acquired was released before the next build.
      assert.strictEqual(f.state.released, 2)
      assert.strictEqual(orchestra.stats().successes, 1)
    } finally {
      await orchestra.dispose()
    }
    assert.strictEqual(f.state.released, 3)
    assert.deepStrictEqual(unhandled, [])
  })

  it("within its backoff a call gets the build's failure at once and builds nothing; calls waiting on it each get it once", async () => {
    const f = flaky(1, () => new ModelError({ reason: "Transport", message: "redis down" }))
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: f.layer } }))
    try {
      const waiting = await Promise.all([typed(orchestra.execute("a")), typed(orchestra.execute("b"))])
      for (const error of waiting) assert.strictEqual(error.message, "redis down")
      // Default backoff (1 second, doubling): not rebuilt by a call made at once.
      assert.strictEqual((await typed(orchestra.execute("c"))).message, "redis down")
      assert.strictEqual(f.state.builds, 1)
    } finally {
      await orchestra.dispose()
    }
    assert.deepStrictEqual(unhandled, [])
  })

  it("an OptionError (a wrong configuration) is final: never built again, whatever the backoff", async () => {
    const f = flaky(Infinity, () => Input.toOptionError({ path: "url", message: "expected a redis:// URL" }))
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: f.layer } }), { rebuildAfter: 0 })
    try {
      for (let i = 0; i < 3; i++) {
        const error = await typed(orchestra.execute("q"))
        assert.strictEqual(error._tag === "OptionError" && error.path, "providers.main.url")
      }
      assert.strictEqual(f.state.builds, 1)
    } finally {
      await orchestra.dispose()
    }
  })

  it("a build that fails (or dies) with a value that is no Error rejects with an OrchestraError carrying it, never the bare value", async () => {
    for (const [how, layer] of [
      ["fails", flaky(1, () => "redis down").layer],
      ["dies", Layer.effect(ModelProvider, Effect.die({ code: 42 }))]
    ] as const) {
      const orchestra = createOrchestra(Orchestra.layer({ providers: { main: layer } }))
      try {
        const error = await orchestra.execute("q").catch((error: unknown) => error)
        assert.instanceOf(error, OrchestraError, how)
        const typedError = (error as OrchestraError).error
        assert.strictEqual(typedError._tag === "ModelError" && typedError.reason, "Unknown", how)
        assert.deepStrictEqual(typedError.cause, how === "fails" ? "redis down" : { code: 42 }, how)
      } finally {
        await orchestra.dispose()
      }
    }
    assert.deepStrictEqual(unhandled, [])
  })

  it("dispose() during a rebuild cuts it: the call waiting for it is told so, dispose() resolves", async () => {
    const { provider } = Effect.runSync(Mock.make({ name: `facade-rebuild-${++mocks}` }))
    let builds = 0
    const layer = Layer.effect(
      ModelProvider,
      Effect.suspend(() => (++builds === 1 ? Effect.fail(new Error("model file busy")) : Effect.never)).pipe(
        Effect.as(provider)
      )
    )
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: layer } }), { rebuildAfter: 0 })
    await orchestra.execute("q").catch(() => undefined)
    const waiting = typed(orchestra.execute("q"))
    const stream = typed(orchestra.stream("q")[Symbol.asyncIterator]().next())
    while (builds < 2) await new Promise((resolve) => setImmediate(resolve))
    await orchestra.dispose()
    for (const error of [await waiting, await stream]) {
      assert.strictEqual(error._tag, "ShuttingDownError")
      assert.include(error.message, "before the manager was built")
    }
    assert.deepStrictEqual(unhandled, [])
  })

  it("a call's signal during a rebuild: that call alone rejects with its AbortedError, once; the rebuild goes on", async () => {
    const { provider } = Effect.runSync(Mock.make({ name: `facade-rebuild-${++mocks}` }))
    let builds = 0
    let open: (() => void) | undefined
    const layer = Layer.effect(
      ModelProvider,
      Effect.suspend(() =>
        ++builds === 1
          ? Effect.fail(new Error("model file busy"))
          : Effect.callback<void>((resume) => {
              open = () => resume(Effect.void)
            })
      ).pipe(Effect.as(provider))
    )
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: layer } }), { rebuildAfter: 0 })
    try {
      await orchestra.execute("q").catch(() => undefined)
      const controller = new AbortController()
      const outcomes: Array<string> = []
      const aborted = orchestra.execute("a", { signal: controller.signal }).then(
        () => outcomes.push("resolved"),
        (error: unknown) => outcomes.push((error as OrchestraError).error._tag)
      )
      const other = orchestra.execute("b")
      while (open === undefined) await new Promise((resolve) => setImmediate(resolve))
      controller.abort("user left")
      await aborted
      open()
      assert.strictEqual(await answered(other), "mock answer to: b")
      assert.deepStrictEqual(outcomes, ["AbortedError"])
      assert.strictEqual(builds, 2)
    } finally {
      await orchestra.dispose()
    }
    assert.deepStrictEqual(unhandled, [])
  })

  it("its options are checked: a rebuildAfter or disposeTimeout that is not a duration is an OptionError naming it", async () => {
    const f = flaky(0)
    for (const [options, path] of [
      [{ rebuildAfter: Number.NaN }, "rebuildAfter"],
      [{ rebuildAfter: "-1 second" }, "rebuildAfter"],
      [{ rebuildAfter: "soon" }, "rebuildAfter"],
      [{ disposeTimeout: Number.NaN }, "disposeTimeout"],
      [{ disposeTimeout: -5 }, "disposeTimeout"],
      // A bound of nothing would fail every dispose() that has anything to release.
      [{ disposeTimeout: 0 }, "disposeTimeout"],
      [{ rebuildAfter: -1 }, "rebuildAfter"],
      [{ disposeTimeout: "soon" }, "disposeTimeout"],
      [{ disposeTimout: "1 second" }, "disposeTimout"],
      ["fast", "options"]
    ] as const) {
      const orchestra = createOrchestra(Orchestra.layer({ providers: { main: f.layer } }), options as never)
      const error = await typed(orchestra.execute("q"))
      assert.strictEqual(error._tag === "OptionError" && error.path, path, String(error.message))
      await orchestra.dispose()
    }
    assert.strictEqual(f.state.builds, 0)
  })

  it("options that are null, inherited or held by an object of no fields are refused naming them, not read as the defaults", async () => {
    const f = flaky(0)
    for (const [options, path] of [
      // null is no duration: a call's `timeout: null` is refused so, and so is every layer's numeric option.
      [{ rebuildAfter: null }, "rebuildAfter"],
      [{ disposeTimeout: null }, "disposeTimeout"],
      // A class instance without fields of its own (a Date, a Map, a signal) holds no options: a mistake.
      [new Date(0), "options"],
      [new Map([["rebuildAfter", 0]]), "options"],
      [new AbortController().signal, "options"]
    ] as const) {
      const orchestra = createOrchestra(Orchestra.layer({ providers: { main: f.layer } }), options as never)
      const error = await typed(orchestra.execute("q"))
      assert.strictEqual(error._tag === "OptionError" && error.path, path, String(error.message))
      await orchestra.dispose()
    }
    // Fields inherited from a prototype are none of the options, as a call's options read only their own.
    const inherited = createOrchestra(
      Orchestra.layer({ providers: { main: f.layer } }),
      Object.assign(Object.create({ rebuildAfter: Number.NaN }), { disposeTimeout: "5 seconds" })
    )
    assert.strictEqual(await answered(inherited.execute("q")), "mock answer to: q")
    await inherited.dispose()
    assert.strictEqual(f.state.builds, 1)
  })
})

describe("createOrchestra: the rebuild backoff, on a TestClock", () => {
  /** `createOrchestra` over the test's clock, and what a call made now gets: its answer, or the rejection's message. */
  const onTestClock = Effect.fnUntraced(function* (
    layer: Layer.Layer<Orchestra.Services, unknown>,
    options: Parameters<typeof createOrchestra>[1]
  ) {
    const clock = yield* TestClock.testClockWith(Effect.succeed)
    const orchestra = makeCreateOrchestra({ AbortedError, OrchestraError }, clock)(layer, options)
    yield* Effect.addFinalizer(() => Effect.promise(() => orchestra.dispose().catch(() => undefined)))
    const call = Effect.promise(() =>
      orchestra.execute("q").then(
        (answer) => answer.response.text,
        (error: unknown) => `rejected: ${(error as Error).message}`
      )
    )
    return { call }
  })

  it.effect(
    "the first rebuild is rebuildAfter after the failure, the next 2x, then 4x; a build that succeeds is kept",
    () =>
      Effect.gen(function* () {
        const f = flaky(3, () => new ModelError({ reason: "Transport", message: "redis down" }))
        const { call } = yield* onTestClock(Orchestra.layer({ providers: { main: f.layer } }), {
          rebuildAfter: "1 second"
        })
        const refused = "rejected: redis down"
        assert.strictEqual(yield* call, refused)
        assert.strictEqual(f.state.builds, 1)
        // Each wait: a call just before it ends is refused at once and builds nothing; one at its end builds.
        for (const [wait, builds] of [
          [1_000, 2],
          [2_000, 3],
          [4_000, 4]
        ] as const) {
          yield* TestClock.adjust(wait - 1)
          assert.strictEqual(yield* call, refused)
          assert.strictEqual(f.state.builds, builds - 1)
          yield* TestClock.adjust(1)
          assert.strictEqual(yield* call, builds === 4 ? "mock answer to: q" : refused)
          assert.strictEqual(f.state.builds, builds)
        }
        yield* TestClock.adjust("1 hour")
        assert.strictEqual(yield* call, "mock answer to: q")
        assert.strictEqual(f.state.builds, 4)
        // What each failed build had acquired was released before the next one.
        assert.strictEqual(f.state.released, 3)
      })
  )

  it.effect("the wait doubles up to a cap of 60 seconds; a rebuildAfter above it (90 seconds) is the wait itself", () =>
    Effect.gen(function* () {
      const waitsOf = Effect.fnUntraced(function* (rebuildAfter: Duration.Input, failures: number) {
        const f = flaky(Infinity)
        const { call } = yield* onTestClock(Orchestra.layer({ providers: { main: f.layer } }), { rebuildAfter })
        yield* call
        const waits: Array<number> = []
        let waited = 0
        while (waits.length < failures) {
          const builds = f.state.builds
          yield* TestClock.adjust("1 second")
          waited += 1_000
          yield* call
          if (f.state.builds > builds) {
            waits.push(waited)
            waited = 0
          }
        }
        return waits
      })
      assert.deepStrictEqual(yield* waitsOf("10 seconds", 5), [10_000, 20_000, 40_000, 60_000, 60_000])
      assert.deepStrictEqual(yield* waitsOf("90 seconds", 3), [90_000, 90_000, 90_000])
    })
  )

  it.effect("rebuildAfter: Infinity never builds again; an OptionError is final whatever the time", () =>
    Effect.gen(function* () {
      const never = flaky(Infinity)
      const option = flaky(Infinity, () => Input.toOptionError({ path: "url", message: "expected a redis:// URL" }))
      const first = yield* onTestClock(Orchestra.layer({ providers: { main: never.layer } }), {
        rebuildAfter: Infinity
      })
      const second = yield* onTestClock(Orchestra.layer({ providers: { main: option.layer } }), { rebuildAfter: 0 })
      assert.include(yield* first.call, "ECONNREFUSED")
      assert.include(yield* second.call, "invalid providers.main.url")
      yield* TestClock.adjust("365 days")
      assert.include(yield* first.call, "ECONNREFUSED")
      assert.include(yield* second.call, "invalid providers.main.url")
      assert.deepStrictEqual([never.state.builds, option.state.builds], [1, 1])
    })
  )

  it.effect(
    "the wait is measured on the monotonic clock: a wall clock set back an hour (an NTP step) does not stretch it",
    () =>
      Effect.gen(function* () {
        const f = flaky(1)
        const { call } = yield* onTestClock(Orchestra.layer({ providers: { main: f.layer } }), {
          rebuildAfter: "1 second"
        })
        yield* TestClock.setTime(86_400_000)
        assert.include(yield* call, "ECONNREFUSED")
        yield* TestClock.setTime(86_400_000 - 3_600_000)
        yield* TestClock.adjust("1 second")
        assert.strictEqual(yield* call, "mock answer to: q")
        assert.strictEqual(f.state.builds, 2)
      })
  )
})

describe("createOrchestra: a call's timeout counts the wait for the build on the monotonic clock (a TestClock)", () => {
  const turn = Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
  /** Turns of the event loop until `done` (at most 50: a test that waits for what never comes fails, not hangs). */
  const until = Effect.fnUntraced(function* (done: () => boolean) {
    for (let i = 0; i < 50 && !done(); i++) yield* turn
    return done()
  })

  // A TestClock's wall clock set forward moves its monotonic clock as far (time passed, to it): a step
  // forward is not told from a wait. A step back is: the wall clock's elapsed time went negative.

  /**
   * `createOrchestra` over the test's clock (its calls' own timers run on it too), its build held until
   * `open()`; the provider's first call never answers, so it ends only at its timeout.
   */
  const heldBuild = Effect.fnUntraced(function* () {
    const clock = yield* TestClock.testClockWith(Effect.succeed)
    const { control, provider } = yield* Mock.make({
      name: `facade-rebuild-${++mocks}`,
      script: [Mock.Outcome.hang()]
    })
    let opening: (() => void) | undefined
    const held = Layer.effect(
      ModelProvider,
      Effect.as(
        Effect.callback<void>((resume) => {
          opening = () => resume(Effect.void)
        }),
        provider
      )
    )
    const layer = Orchestra.layer({ providers: { main: held } }).pipe(
      Layer.provideMerge(Layer.succeed(Clock.Clock, clock))
    )
    const orchestra = makeCreateOrchestra({ AbortedError, OrchestraError }, clock)(layer)
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        const disposed = orchestra.dispose().catch(() => undefined)
        yield* TestClock.adjust("1 minute")
        yield* Effect.promise(() => disposed)
      })
    )
    return {
      clock,
      orchestra,
      building: until(() => opening !== undefined),
      open: () => opening?.(),
      providerCalls: () => Effect.runSync(control.calls)
    }
  })

  /** What a promise settled with, read without waiting for it: `undefined` while it is pending. */
  const outcomeOf = (promise: Promise<unknown>) => {
    const state: { settled: boolean; error: FacadeError | undefined } = { settled: false, error: undefined }
    promise.then(
      () => {
        state.settled = true
      },
      (error: unknown) => {
        state.settled = true
        state.error = error instanceof OrchestraError ? error.error : undefined
      }
    )
    return state
  }

  const assertTimedOutAt = Effect.fnUntraced(function* (
    call: ReturnType<typeof outcomeOf>,
    millis: number,
    given: number
  ) {
    yield* TestClock.adjust(millis - 1)
    assert.isFalse(yield* until(() => call.settled), "settled before its time")
    yield* TestClock.adjust(1)
    assert.isTrue(yield* until(() => call.settled), "not settled at its time")
    assert.strictEqual(call.error?._tag, "TimeoutError")
    const error = call.error as Extract<FacadeError, { readonly _tag: "TimeoutError" }>
    assert.strictEqual(error.limit, "total")
    assert.strictEqual(Duration.toMillis(error.timeout), given)
  })

  it.effect(
    "execute: a build taking 3 s of a 5 s timeout leaves 2 s; a wall clock set back an hour meanwhile does not stretch it",
    () =>
      Effect.gen(function* () {
        const { clock, orchestra, building, open, providerCalls } = yield* heldBuild()
        const call = outcomeOf(orchestra.execute("q", { timeout: "5 seconds" }))
        assert.isTrue(yield* building)
        yield* TestClock.adjust("3 seconds")
        yield* TestClock.setTime(clock.currentTimeMillisUnsafe() - 3_600_000)
        open()
        assert.isTrue(yield* until(() => providerCalls() === 1))
        yield* assertTimedOutAt(call, 2_000, 5_000)
      })
  )

  it.effect("stream: a build taking 3 s of a 5 s timeout leaves 2 s", () =>
    Effect.gen(function* () {
      const { orchestra, building, open, providerCalls } = yield* heldBuild()
      const call = outcomeOf(orchestra.stream("q", { timeout: "5 seconds" })[Symbol.asyncIterator]().next())
      assert.isTrue(yield* building)
      yield* TestClock.adjust("3 seconds")
      open()
      assert.isTrue(yield* until(() => providerCalls() === 1))
      yield* assertTimedOutAt(call, 2_000, 5_000)
    })
  )

  it.effect("a build that outlasts the timeout: the call times out at 5 s on the manager's clock, never calling", () =>
    Effect.gen(function* () {
      const { orchestra, building, open, providerCalls } = yield* heldBuild()
      const call = outcomeOf(orchestra.execute("q", { timeout: "5 seconds" }))
      const stream = outcomeOf(orchestra.stream("q", { timeout: "5 seconds" })[Symbol.asyncIterator]().next())
      assert.isTrue(yield* building)
      yield* assertTimedOutAt(call, 5_000, 5_000)
      assert.isTrue(yield* until(() => stream.settled))
      assert.strictEqual(stream.error?._tag, "TimeoutError")
      open()
      yield* turn
      assert.strictEqual(providerCalls(), 0)
    })
  )

  it.effect(
    "a signal's timeout reports the monotonic time waited (3 s), the wall clock set back an hour meanwhile",
    () =>
      Effect.gen(function* () {
        const { clock, orchestra, building, open, providerCalls } = yield* heldBuild()
        const timedOut = () => new DOMException("the caller's deadline", "TimeoutError")
        const waiting = new AbortController()
        const first = outcomeOf(orchestra.execute("q", { signal: waiting.signal }))
        assert.isTrue(yield* building)
        yield* TestClock.adjust("3 seconds")
        yield* TestClock.setTime(clock.currentTimeMillisUnsafe() - 3_600_000)
        waiting.abort(timedOut())
        assert.isTrue(yield* until(() => first.settled))
        assert.strictEqual(first.error?._tag, "TimeoutError")
        assert.strictEqual(Duration.toMillis((first.error as { readonly timeout: Duration.Duration }).timeout), 3_000)
        // Once built: the call's own wait, the wall clock set back an hour.
        open()
        const running = new AbortController()
        const second = outcomeOf(orchestra.execute("q", { signal: running.signal }))
        assert.isTrue(yield* until(() => providerCalls() === 1))
        yield* TestClock.adjust("3 seconds")
        yield* TestClock.setTime(clock.currentTimeMillisUnsafe() - 3_600_000)
        running.abort(timedOut())
        assert.isTrue(yield* until(() => second.settled))
        assert.strictEqual(second.error?._tag, "TimeoutError")
        assert.strictEqual(Duration.toMillis((second.error as { readonly timeout: Duration.Duration }).timeout), 3_000)
      })
  )
})

describe("createOrchestra: dispose() has a bound of its own", () => {
  it("a layer whose release never ends: dispose() rejects after disposeTimeout, naming what did not finish", async () => {
    const { provider } = Effect.runSync(Mock.make({ name: `facade-rebuild-${++mocks}` }))
    const stuck = Layer.effect(
      ModelProvider,
      Effect.as(
        Effect.acquireRelease(Effect.void, () => Effect.never),
        provider
      )
    )
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: stuck } }), { disposeTimeout: "50 millis" })
    await orchestra.execute("q")
    const error = await typed(orchestra.dispose())
    assert.strictEqual(error._tag, "ModelError")
    assert.include(error.message, "did not finish within 50ms")
    assert.include(error.message, "releasing the manager's layers")
    // Settled for good: the same promise, and calls are refused.
    assert.strictEqual((await typed(orchestra.dispose())).message, error.message)
    assert.strictEqual((await typed(orchestra.execute("late")))._tag, "ShuttingDownError")
    assert.deepStrictEqual(unhandled, [])
  })

  it("a call or stream still running when it passes ends then with ShuttingDownError saying so: a stream ran on up to shutdownDeadline", async () => {
    const { control, provider } = Effect.runSync(
      Mock.make({ name: `facade-rebuild-${++mocks}`, script: [Mock.Outcome.hang(), Mock.Outcome.hang()] })
    )
    const orchestra = createOrchestra(
      Orchestra.layer({
        providers: { main: Layer.succeed(ModelProvider, provider) },
        // The drain would wait a minute for them: longer than dispose() may take.
        executor: { shutdownDeadline: "1 minute" }
      }),
      { disposeTimeout: "50 millis" }
    )
    await orchestra.metrics()
    const call = typed(orchestra.execute("q"))
    const stream = (async () => {
      try {
        for await (const part of orchestra.stream("s")) void part
        return "ended"
      } catch (error) {
        return error as OrchestraError
      }
    })()
    // Both running (a provider call each) before dispose().
    for (let i = 0; i < 200 && Effect.runSync(control.calls) < 2; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    const disposed = await typed(orchestra.dispose())
    assert.include(disposed.message, "did not finish within 50ms")
    const cut = await call
    assert.strictEqual(cut._tag, "ShuttingDownError")
    // It was admitted and ran: not told it came after dispose() ("admits no new calls").
    assert.notInclude(cut.message, "no new calls")
    assert.include(cut.message, "still running when dispose() ended it")
    const ended = await Promise.race([
      stream,
      new Promise<"pending">((resolve) => setTimeout(() => resolve("pending"), 2_000).unref())
    ])
    assert.notStrictEqual(ended, "pending", "the stream ended with dispose()'s bound")
    assert.instanceOf(ended, OrchestraError)
    assert.strictEqual((ended as OrchestraError).error._tag, "ShuttingDownError")
    assert.include((ended as OrchestraError).message, "disposeTimeout")
    assert.deepStrictEqual(unhandled, [])
  })

  it("a batch still running when it passes resolves then, its running items cancelled: it ran on up to shutdownDeadline", async () => {
    const { control, provider } = Effect.runSync(
      Mock.make({ name: `facade-rebuild-${++mocks}`, script: [Mock.Outcome.hang(), Mock.Outcome.hang()] })
    )
    const orchestra = createOrchestra(
      Orchestra.layer({
        providers: { main: Layer.succeed(ModelProvider, provider) },
        executor: { shutdownDeadline: "1 minute" }
      }),
      { disposeTimeout: "50 millis" }
    )
    await orchestra.metrics()
    const batch = orchestra.batch(["a", "b"], { concurrency: 2 })
    for (let i = 0; i < 200 && Effect.runSync(control.calls) < 2; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    assert.include((await typed(orchestra.dispose())).message, "did not finish within 50ms")
    const result = await Promise.race([
      batch,
      new Promise<"pending">((resolve) => setTimeout(() => resolve("pending"), 2_000).unref())
    ])
    assert.notStrictEqual(result, "pending", "the batch resolved with dispose()'s bound")
    const { results } = result as Batch.BatchResult
    assert.deepStrictEqual(
      results.map((item) => [item.status, item.ran]),
      [
        ["cancelled", true],
        ["cancelled", true]
      ]
    )
    assert.deepStrictEqual(unhandled, [])
  })
})

describe("createOrchestra: resetStats() after dispose()", () => {
  it("refuses with a ShuttingDownError and keeps the final figures", async () => {
    const f = flaky(0)
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: f.layer } }))
    await orchestra.execute("q")
    await orchestra.dispose()
    let thrown: unknown
    try {
      orchestra.resetStats()
    } catch (error) {
      thrown = error
    }
    assert.instanceOf(thrown, OrchestraError)
    assert.strictEqual((thrown as OrchestraError).error._tag, "ShuttingDownError")
    assert.include((thrown as OrchestraError).message, "final figures")
    assert.strictEqual(orchestra.stats().successes, 1)
  })
})

describe("createOrchestra: dispose() called from a batch's onProgress", () => {
  it("the item whose Started event disposed says ran: false, and no item that says so reached the provider", async () => {
    const { control, provider } = Effect.runSync(Mock.make({ name: `facade-rebuild-${++mocks}` }))
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: Layer.succeed(ModelProvider, provider) } }))
    await orchestra.metrics()
    let disposing: Promise<void> | undefined
    const result = await orchestra.batch(["a", "b", "c"], {
      concurrency: 1,
      onProgress: (event) => {
        if (event._tag === "Started" && event.index === 1) disposing ??= orchestra.dispose()
      }
    })
    await disposing
    assert.deepStrictEqual(
      result.results.map((r) => [r.status, r.ran]),
      [
        ["success", true],
        ["rejected", false],
        ["rejected", false]
      ]
    )
    assert.strictEqual(Effect.runSync(control.calls), 1)
    assert.deepStrictEqual(unhandled, [])
  })
})
