/**
 * The Promise facade's lifecycle as a TypeScript caller writes it: `await using`, and what a
 * caller sees around `dispose()`. A Promise API on the real clock, as `Facade.test.ts`: no
 * timing assertions.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { createOrchestra } from "../src/Facade.js"
import { ModelProvider } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { typed } from "./utils/facade.js"

let mocks = 0
const mock = (options: Mock.Options = {}) => {
  const { control, provider } = Effect.runSync(Mock.make({ name: `facade-lifecycle-${++mocks}`, ...options }))
  return { control, name: control.name, layer: Layer.succeed(ModelProvider, provider) }
}

const settle = async (check: () => boolean) => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 5))
}

describe("createOrchestra: await using", () => {
  it("leaving the block disposes gracefully: the call running then is drained, later calls are refused", async () => {
    const m = mock({ latency: "30 millis" })
    let kept: ReturnType<typeof createOrchestra> | undefined
    let inFlight: Promise<unknown> | undefined
    {
      await using orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
      kept = orchestra
      await orchestra.execute("warm up", { domain: "support" })
      inFlight = orchestra.execute("in flight", { domain: "support" })
      await settle(() => Effect.runSync(m.control.inFlight) === 1)
    }
    // The block waited for the shutdown, which drained the running call.
    assert.strictEqual(Effect.runSync(m.control.inFlight), 0)
    assert.strictEqual(((await inFlight) as { response: { text: string } }).response.text, "mock answer to: in flight")
    assert.strictEqual((await typed(kept.execute("late")))._tag, "ShuttingDownError")
    assert.strictEqual(kept.stats().successes, 2)
  })

  it("Symbol.asyncDispose is dispose(): the same promise, idempotent, either way round", async () => {
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: mock().layer } }))
    await orchestra.execute("x")
    const disposed = orchestra[Symbol.asyncDispose]()
    assert.strictEqual(orchestra.dispose(), disposed)
    assert.strictEqual(orchestra[Symbol.asyncDispose](), disposed)
    await disposed
  })
})

describe("createOrchestra: a stream's iterator with await using", () => {
  it("leaving the block after a part cancels the stream's call at once, as return() does", async () => {
    // Ten words, a second apart: the block leaves after the first.
    const m = mock({ chunkDelay: "1 second", respond: () => "a b c d e f g h i j" })
    await using orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    {
      await using parts = orchestra.stream("q")[Symbol.asyncIterator]()
      const first = await parts.next()
      assert.isFalse(first.done)
      assert.strictEqual(Effect.runSync(m.control.inFlight), 1)
    }
    await settle(() => Effect.runSync(m.control.inFlight) === 0)
    assert.strictEqual(Effect.runSync(m.control.inFlight), 0, "the provider's stream was cancelled")
  })
})

describe("createOrchestra: metrics() around dispose()", () => {
  it("after dispose() it answers the final metrics, the drained call counted, as stats() answers the final figures", async () => {
    const m = mock({ latency: "30 millis" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    await orchestra.execute("first", { domain: "support" })
    const inFlight = orchestra.execute("in flight", { domain: "support" })
    await settle(() => Effect.runSync(m.control.inFlight) === 1)
    const disposed = orchestra.dispose()
    // Asked during the shutdown: the figures once it is over.
    const during = orchestra.metrics()
    await disposed
    await inFlight
    const requests = new RegExp(`orchestra_requests_total\\{provider="${m.name}",domain="support"\\} 2\\n`)
    assert.match(await during, requests)
    const after = await orchestra.metrics()
    assert.match(after, requests)
    assert.match(after, new RegExp(`orchestra_breaker_state\\{breaker="${m.name}"\\} 0`))
    assert.strictEqual(orchestra.stats().successes, 2)
    assert.strictEqual((await typed(orchestra.execute("late")))._tag, "ShuttingDownError")
  })

  it("after dispose() of a manager never built it answers no series, as stats() answers zeros", async () => {
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: mock().layer } }))
    await orchestra.dispose()
    assert.strictEqual(await orchestra.metrics(), "")
    // The zeros name the series asked for, as a built manager's snapshot does (they said {}: all calls).
    assert.deepStrictEqual(orchestra.stats().series, {})
    assert.deepStrictEqual(orchestra.stats({ provider: "main", domain: "d" }).series, { provider: "main", domain: "d" })
    assert.deepStrictEqual(orchestra.stats({ domain: "d" }).series, { domain: "d" })
    assert.strictEqual(orchestra.stats({ domain: "d" }).total, 0)
    // Each answer is the caller's: changing one (from JavaScript) changed every later one.
    const first = orchestra.stats() as { total: number; latency: { p50: number } }
    first.total = 5
    first.latency.p50 = 5
    assert.deepStrictEqual([orchestra.stats().total, orchestra.stats().latency.p50], [0, 0])
  })
})
