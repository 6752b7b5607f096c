import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import type * as Batch from "../src/Batch.js"
import { createOrchestra, OrchestraError } from "../src/Facade.js"
import { type GenerateRequest, ModelProvider, type StreamPart } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { uniqueName } from "./utils/orchestra.js"

// A Promise API: these tests use real (short) latencies, not the TestClock.
const mock = (options: Mock.Options = {}) => {
  const { control, provider } = Effect.runSync(Mock.make({ name: uniqueName("facade"), ...options }))
  return { control, layer: Layer.succeed(ModelProvider, provider) }
}

const rejection = async (promise: Promise<unknown>): Promise<unknown> =>
  promise.then(
    () => assert.fail("expected a rejection"),
    (error: unknown) => error
  )

describe("createOrchestra", () => {
  it("execute: answers through a domain, with provenance", async () => {
    const m = mock({ latency: "5 millis", respond: (r) => `echo ${r.prompt}` })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const answer = await orchestra.execute("hello", { domain: "support" })
      assert.strictEqual(answer.response.text, "echo hello")
      assert.strictEqual(answer.domain, "support")
      assert.strictEqual(answer.provider, m.control.name)
      assert.isFalse(answer.fallbackUsed)
      const seen = Effect.runSync(m.control.requests) as ReadonlyArray<GenerateRequest>
      assert.include(seen[0]!.system, "customer support")
      const direct = await orchestra.execute({ prompt: "no domain" })
      assert.strictEqual(direct.domain, "default")
    } finally {
      await orchestra.dispose()
    }
  })

  it("a failing call rejects with an OrchestraError carrying the typed error", async () => {
    const m = mock({ script: [Mock.Outcome.fail("InvalidRequest")] })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const error = await rejection(orchestra.execute("bad", { domain: "technical" }))
      assert.instanceOf(error, OrchestraError)
      assert.instanceOf(error, Error)
      const typed = (error as OrchestraError).error
      assert.strictEqual(typed._tag, "ModelError")
      assert.strictEqual(typed._tag === "ModelError" && typed.reason, "InvalidRequest")
      assert.strictEqual((error as OrchestraError).name, "OrchestraError(ModelError)")
    } finally {
      await orchestra.dispose()
    }
  })

  it("executeWithFallback, executeParallelDomains and hedge", async () => {
    const a = mock({ script: [Mock.Outcome.fail("Overloaded")], respond: () => "a" })
    const b = mock({ latency: "5 millis", respond: () => "b" })
    const orchestra = createOrchestra(
      Orchestra.layer({
        providers: { a: a.layer, b: b.layer },
        domains: [
          { name: "da", provider: "a" },
          { name: "db", provider: "b" }
        ]
      })
    )
    try {
      const fallback = await orchestra.executeWithFallback("q", ["da", "db"])
      assert.strictEqual(fallback.domain, "db")
      assert.isTrue(fallback.fallbackUsed)
      const all = await orchestra.executeParallelDomains("q", ["da", "db"])
      assert.deepStrictEqual(
        all.map((o) => [o.domain, o.result._tag]),
        [
          ["da", "Right"],
          ["db", "Right"]
        ]
      )
      const hedged = await orchestra.hedge("q", ["da", "db"], { after: "1 second" })
      assert.strictEqual(hedged.response.text, "a")
    } finally {
      await orchestra.dispose()
    }
  })

  it("execute without a domain retries transient failures with the executor's policy, like a batch item", async () => {
    const m = mock({ script: [Mock.Outcome.fail("Overloaded"), Mock.Outcome.succeed("second try")] })
    const orchestra = createOrchestra(
      Orchestra.layer({ providers: { main: m.layer }, executor: { retry: { maxAttempts: 2, initialDelay: 5 } } })
    )
    try {
      const answer = await orchestra.execute("q")
      assert.strictEqual(answer.response.text, "second try")
      assert.strictEqual(Effect.runSync(m.control.calls), 2)
      assert.strictEqual(orchestra.stats().retries, 1)
    } finally {
      await orchestra.dispose()
    }
  })

  it("execute with an AbortSignal: rejects with the abort reason and interrupts the call", async () => {
    const m = mock({ latency: "10 seconds" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const controller = new AbortController()
      const pending = orchestra.execute("slow", { domain: "support", signal: controller.signal })
      setTimeout(() => controller.abort(), 20)
      const error = await rejection(pending)
      assert.strictEqual((error as Error).name, "AbortError")
      assert.strictEqual(Effect.runSync(m.control.interrupted), 1)
      assert.strictEqual(Effect.runSync(m.control.inFlight), 0)
      const already = await rejection(orchestra.execute("x", { signal: AbortSignal.abort(new Error("mine")) }))
      assert.strictEqual((already as Error).message, "mine")
    } finally {
      await orchestra.dispose()
    }
  })

  it("batch: one outcome per item; an AbortSignal cancels part-way and the result says which items never ran", async () => {
    const m = mock({ latency: "20 millis" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, maxConcurrent: 2 }))
    try {
      const full = await orchestra.batch(["a", "b", "c"], { domain: "support" })
      assert.deepStrictEqual(
        full.results.map((r) => r.status),
        ["success", "success", "success"]
      )

      const controller = new AbortController()
      const events: Array<Batch.ProgressEvent> = []
      const items = Array.from({ length: 20 }, (_, i) => `item ${i}`)
      const result = await orchestra.batch(items, {
        domain: "support",
        signal: controller.signal,
        onProgress: (event) => {
          events.push(event)
          if (event._tag === "Succeeded" && event.done === 4) controller.abort()
        }
      })
      assert.isTrue(result.cancelled)
      assert.strictEqual(result.results.length, 20)
      assert.deepStrictEqual(
        result.results.map((r) => r.index),
        items.map((_, i) => i)
      )
      const succeeded = result.results.filter((r) => r.status === "success").length
      assert.isAtLeast(succeeded, 4)
      assert.isAtMost(succeeded, 6)
      assert.isTrue(result.results.every((r) => r.status === "success" || r.status === "cancelled"))
      assert.isAtLeast(result.notRun.length, 12)
      assert.isTrue(result.notRun.every((i) => result.results[i]!.ran === false))
      assert.strictEqual(events[events.length - 1]?._tag, "Cancelled")
      assert.strictEqual(Effect.runSync(m.control.inFlight), 0)
      assert.strictEqual(Effect.runSync(m.control.calls), 3 + 20 - result.notRun.length)

      const aborted = await orchestra.batch(["x", "y"], { domain: "support", signal: AbortSignal.abort() })
      assert.deepStrictEqual(aborted.notRun, [0, 1])
    } finally {
      await orchestra.dispose()
    }
  })

  it("stats(): the figures of every call so far, filterable, zeros before anything ran", async () => {
    const m = mock({ script: [Mock.Outcome.succeed(), Mock.Outcome.fail("Overloaded"), Mock.Outcome.succeed()] })
    const orchestra = createOrchestra(
      Orchestra.layer({ providers: { main: m.layer }, domains: [{ name: "plain", provider: "main" }] })
    )
    try {
      assert.strictEqual(orchestra.stats().total, 0)
      await orchestra.execute("1", { domain: "plain" })
      await rejection(orchestra.execute("2", { domain: "plain" }))
      await orchestra.execute("3")
      const stats = orchestra.stats()
      assert.strictEqual(stats.total, 3)
      assert.strictEqual(stats.successes, 2)
      assert.strictEqual(stats.failures, 1)
      assert.deepStrictEqual(stats.failuresByReason, { Overloaded: 1 })
      assert.strictEqual(orchestra.stats({ domain: "plain" }).total, 2)
      orchestra.resetStats()
      assert.strictEqual(orchestra.stats().total, 0)
    } finally {
      await orchestra.dispose()
    }
  })

  it("stream: an async iterable of text deltas and the finish event", async () => {
    const m = mock({ respond: () => "one two three", chunkDelay: "2 millis" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const parts: Array<StreamPart> = []
      for await (const part of orchestra.stream("go", { domain: "technical" })) parts.push(part)
      assert.deepStrictEqual(
        parts.map((p) => p._tag),
        ["TextDelta", "TextDelta", "TextDelta", "Finish"]
      )
      assert.strictEqual(parts.map((p) => (p._tag === "TextDelta" ? p.text : "")).join(""), "one two three")
      const seen = Effect.runSync(m.control.requests) as ReadonlyArray<GenerateRequest>
      assert.include(seen[0]!.system, "software engineer")
    } finally {
      await orchestra.dispose()
    }
  })

  it("stream: breaking out of the loop early cancels the call", async () => {
    const m = mock({ respond: () => "a b c d e f g h", chunkDelay: "5 millis" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      let seen = 0
      for await (const part of orchestra.stream("go")) {
        if (part._tag === "TextDelta") seen++
        if (seen === 2) break
      }
      assert.strictEqual(seen, 2)
      // the consumer left: the stream's scope closes asynchronously
      for (let i = 0; i < 50 && Effect.runSync(m.control.inFlight) > 0; i++) await new Promise((r) => setTimeout(r, 5))
      assert.strictEqual(Effect.runSync(m.control.inFlight), 0)
      assert.strictEqual(Effect.runSync(m.control.interrupted), 1)
    } finally {
      await orchestra.dispose()
    }
  })

  it("stream: a failure rejects the loop with an OrchestraError", async () => {
    const m = mock({ script: [Mock.Outcome.fail("Unauthorized", { afterChunks: 1 })], respond: () => "x y z" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const parts: Array<StreamPart> = []
      const error = await rejection(
        (async () => {
          for await (const part of orchestra.stream("go")) parts.push(part)
        })()
      )
      assert.instanceOf(error, OrchestraError)
      // Text was delivered before the failure: the stream is never restarted, and the typed
      // error carries what the consumer already has.
      const typed = (error as OrchestraError).error
      assert.strictEqual(typed._tag, "StreamInterruptedError")
      if (typed._tag === "StreamInterruptedError") {
        assert.strictEqual(typed.partialText, "x ")
        assert.strictEqual(typed.reason, "Unauthorized")
      }
      assert.strictEqual(parts.length, 1)
    } finally {
      await orchestra.dispose()
    }
  })

  it("dispose(): in-flight calls finish, later calls are refused with ShuttingDownError, stats stay readable", async () => {
    const m = mock({ latency: "30 millis" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    await orchestra.execute("warm up", { domain: "support" })
    const inFlight = orchestra.execute("in flight", { domain: "support" })
    const disposed = orchestra.dispose()
    const refused = await rejection(orchestra.execute("late", { domain: "support" }))
    assert.instanceOf(refused, OrchestraError)
    assert.strictEqual((refused as OrchestraError).error._tag, "ShuttingDownError")
    const refusedBatch = await rejection(orchestra.batch(["x"]))
    assert.strictEqual((refusedBatch as OrchestraError).error._tag, "ShuttingDownError")
    const answer = await inFlight
    assert.strictEqual(answer.response.text, "mock answer to: in flight")
    await disposed
    await orchestra.dispose()
    assert.strictEqual(orchestra.stats().successes, 2)
    const streamError = await rejection(
      (async () => {
        for await (const _ of orchestra.stream("x")) void _
      })()
    )
    assert.strictEqual((streamError as OrchestraError).error._tag, "ShuttingDownError")
  })

  it("dispose(): a call still running at the shutdown deadline is interrupted and rejected", async () => {
    const m = mock({ script: [Mock.Outcome.hang()] })
    const orchestra = createOrchestra(
      Orchestra.layer({ providers: { main: m.layer }, executor: { shutdownDeadline: "50 millis" } })
    )
    const stuck = orchestra.execute("stuck", { domain: "support" })
    await new Promise((r) => setTimeout(r, 10))
    const started = performance.now()
    await orchestra.dispose()
    assert.isBelow(performance.now() - started, 2000)
    const error = await rejection(stuck)
    assert.strictEqual((error as OrchestraError).error._tag, "ShuttingDownError")
    assert.strictEqual(Effect.runSync(m.control.interrupted), 1)
    assert.strictEqual(Effect.runSync(m.control.inFlight), 0)
  })
})
