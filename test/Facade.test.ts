import { getEventListeners } from "node:events"
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Layer, Stream, Tracer } from "effect"
import type * as Batch from "../src/Batch.js"
import { AbortedError, createOrchestra, OrchestraError } from "../src/Facade.js"
import { type GenerateRequest, ModelProvider, type StreamPart } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { rejection, typed } from "./utils/facade.js"
import { recording } from "./utils/tracer.js"

// A Promise API: these tests run on the real clock, with short latencies and no timing assertions.
let mocks = 0
const mock = (options: Mock.Options = {}) => {
  const { control, provider } = Effect.runSync(Mock.make({ name: `facade-${++mocks}`, ...options }))
  return { control, name: control.name, layer: Layer.succeed(ModelProvider, provider) }
}

const fieldOf = async (promise: Promise<unknown>) => {
  const error = await typed(promise)
  return error._tag === "ModelError" && error.reason === "InvalidRequest" ? error.field : `${error._tag}`
}

/** Options whose `field` throws when read. */
const hostile = (field: string) =>
  Object.defineProperty({}, field, {
    enumerable: true,
    get() {
      throw new Error(`${field} getter`)
    }
  })

const requestsOf = (control: Mock.Control) =>
  Effect.runSync(control.requests).map((logged) => logged.request as GenerateRequest)

const collect = async (iterable: AsyncIterable<StreamPart>): Promise<Array<StreamPart>> => {
  const parts: Array<StreamPart> = []
  for await (const part of iterable) parts.push(part)
  return parts
}

const textOf = (parts: ReadonlyArray<StreamPart>) => parts.map((p) => (p._tag === "TextDelta" ? p.text : "")).join("")

const settle = async (check: () => boolean) => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 5))
}

describe("createOrchestra", () => {
  it("execute: answers through a domain with provenance, and without one on the default provider", async () => {
    const m = mock({ respond: (r) => `echo ${r.prompt ?? r.messages?.at(-1)?.content}` })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const answer = await orchestra.execute("hello", { domain: "support" })
      assert.strictEqual(answer.response.text, "echo hello")
      assert.strictEqual(answer.domain, "support")
      assert.strictEqual(answer.provider, m.name)
      assert.strictEqual(answer.attempts, 1)
      assert.isFalse(answer.fallbackUsed)
      assert.include(requestsOf(m.control)[0]!.system, "customer support")
      const direct = await orchestra.execute({ prompt: "no domain" })
      assert.strictEqual(direct.domain, "none")
      assert.strictEqual(direct.provider, m.name)
      assert.isUndefined(requestsOf(m.control)[1]!.system)
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
      const failure = (error as OrchestraError).error
      assert.strictEqual(failure._tag === "ModelError" && failure.reason, "InvalidRequest")
      assert.strictEqual((error as OrchestraError).name, "OrchestraError(ModelError)")
      assert.strictEqual((error as Error).cause, failure)
    } finally {
      await orchestra.dispose()
    }
  })

  it("executeWithFallback, executeParallelDomains (all and first) and hedge", async () => {
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
      assert.strictEqual(fallback.attempts, 2)
      const all = await orchestra.executeParallelDomains("q", ["da", "db"])
      assert.deepStrictEqual(
        all.map((o) => [o.domain, o.result._tag]),
        [
          ["da", "Success"],
          ["db", "Success"]
        ]
      )
      const first = await orchestra.executeParallelDomains("q", ["da", "db"], { mode: "first" })
      assert.strictEqual(first.response.text, "a")
      const hedged = await orchestra.hedge("q", ["da", "db"], { after: "1 second" })
      assert.strictEqual(hedged.response.text, "a")
    } finally {
      await orchestra.dispose()
    }
  })

  it("execute without a domain retries with the executor's policy and reports the real attempts (issue 13 item 25)", async () => {
    const m = mock({ script: [Mock.Outcome.fail("Overloaded"), Mock.Outcome.succeed("second try")] })
    const orchestra = createOrchestra(
      Orchestra.layer({ providers: { main: m.layer }, executor: { retry: { maxAttempts: 2, initialDelay: 5 } } })
    )
    try {
      const answer = await orchestra.execute("q")
      assert.strictEqual(answer.response.text, "second try")
      assert.strictEqual(answer.attempts, 2)
      assert.strictEqual(Effect.runSync(m.control.calls), 2)
      assert.strictEqual(orchestra.stats().retries, 1)
    } finally {
      await orchestra.dispose()
    }
  })

  it("an exhausted fallback chain reaches the caller as FallbackExhaustedError, and stats show the fallbacks (item 26)", async () => {
    const a = mock({ random: { success: 0, failures: { Overloaded: 1 } } })
    const b = mock({ random: { success: 0, failures: { Unavailable: 1 } } })
    const orchestra = createOrchestra(
      Orchestra.layer({
        providers: { a: a.layer, b: b.layer },
        domains: [
          { name: "da", provider: "a" },
          { name: "db", provider: "b" }
        ],
        breakers: false
      })
    )
    try {
      const error = await typed(orchestra.executeWithFallback("q", ["da", "db"]))
      assert.strictEqual(error._tag, "FallbackExhaustedError")
      if (error._tag === "FallbackExhaustedError") {
        assert.deepStrictEqual(
          error.attempts.map((s) => [s.domain, s.provider, s.error._tag === "ModelError" && s.error.reason]),
          [
            ["da", a.name, "Overloaded"],
            ["db", b.name, "Unavailable"]
          ]
        )
      }
      const stats = orchestra.stats()
      assert.strictEqual(stats.fallbacks, 1)
      assert.deepStrictEqual(stats.failuresByReason, { Overloaded: 1, Unavailable: 1 })
    } finally {
      await orchestra.dispose()
    }
  })

  it("bad input is an OrchestraError with an InvalidRequest naming the field, never a TypeError (item 12)", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const o = orchestra as unknown as Record<string, (...args: ReadonlyArray<unknown>) => Promise<unknown>>
      const cases: ReadonlyArray<readonly [string, Promise<unknown>]> = [
        ["prompt", o.execute!(null, { domain: "support" })],
        ["prompt", o.execute!(undefined)],
        ["prompt", o.executeWithFallback!(42, ["support"])],
        ["temprature", o.execute!({ prompt: "x", temprature: 1 }, { domain: "support" })],
        ["domain", o.execute!("x", { domain: "nope" })],
        ["domain", o.execute!("x", { domain: 7 })],
        ["domains", o.executeWithFallback!("x", null)],
        ["domains", o.executeWithFallback!("x", "support")],
        ["domains", o.hedge!("x", "support", { after: 100 })],
        ["domains", o.executeParallelDomains!("x", undefined)],
        ["mode", o.executeParallelDomains!("x", ["support"], { mode: "bogus" })],
        ["options", o.hedge!("x", ["support", "technical"], undefined)],
        ["after", o.hedge!("x", ["support", "technical"], { after: Number.NaN })],
        ["options", o.execute!("x", "support")],
        ["timout", o.execute!("x", { timout: 5 })],
        ["timeout", o.execute!("x", { timeout: -1 })],
        ["timeout", o.executeWithFallback!("x", ["support"], { timeout: "soon" })],
        ["signal", o.execute!("x", { signal: "stop" })],
        // An AbortSignal by its prototype only: reading its state throws (a TypeError out of the call, before).
        ["signal", o.execute!("x", { signal: Object.create(AbortSignal.prototype) })],
        ["signal", o.embed!("x", { signal: Object.create(AbortSignal.prototype) })],
        ["signal", o.batch!(["a"], { signal: Object.create(AbortSignal.prototype) })],
        ["signal", collect(orchestra.stream("x", { signal: Object.create(AbortSignal.prototype) }))],
        ["cache", o.execute!("x", { cache: "no" })],
        ["context[0].role", o.execute!("x", { context: [{ role: "robot", content: "hi" }] })],
        ["context", o.execute!("x", { context: "hi" })],
        ["input", o.embed!(null)],
        ["texts", o.embed!([])],
        ["items", o.batch!(null)],
        ["concurrency", o.batch!(["a"], { concurrency: 0 })],
        // A getter that throws is the field's InvalidRequest, not a plain Error out of the call.
        ["timeout", o.execute!("x", hostile("timeout"))],
        ["concurrency", o.batch!(["a"], hostile("concurrency"))]
      ]
      for (const [field, promise] of cases) assert.strictEqual(await fieldOf(promise), field)
      const streamed = await rejection(collect(orchestra.stream(null as never)))
      assert.strictEqual(
        (streamed as OrchestraError).error._tag === "ModelError" && (streamed as OrchestraError).error.message,
        "invalid prompt: expected a string or a request object, got null"
      )
      assert.throws(() => orchestra.stats("x" as never), OrchestraError)
      for (const [filter, field] of [
        [{ provder: "m" }, "filter.provder"],
        [{ provider: 5 }, "filter.provider"],
        [new Map(), "filter"],
        [["support"], "filter"]
      ] as const) {
        const thrown = (() => {
          try {
            orchestra.stats(filter as never)
            return undefined
          } catch (error) {
            return error
          }
        })()
        assert.instanceOf(thrown, OrchestraError, field)
        const error = (thrown as OrchestraError).error
        assert.strictEqual(error._tag === "ModelError" && error.field, field)
      }
      assert.strictEqual(orchestra.stats({ provider: m.name, domain: undefined }).total, orchestra.stats().total)
      assert.strictEqual(Effect.runSync(m.control.calls), 0)
    } finally {
      await orchestra.dispose()
    }
  })

  it("an unknown option key is named bounded and quoted, as every other check names one: a key of 100,000 characters went whole in", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const long = "k".repeat(100_000)
      // A key holding a line break forged a log line of its own in the error's message.
      const forged = "timout\nERROR payments down"
      for (const [key, call] of [
        [long, (options: object) => orchestra.execute("x", options as never)],
        [forged, (options: object) => orchestra.batch(["a"], options as never)],
        [forged, (options: object) => collect(orchestra.stream("x", options as never))]
      ] as const) {
        const error = await typed(call({ [key]: 1 }))
        assert.strictEqual(error._tag === "ModelError" && error.reason, "InvalidRequest")
        assert.isBelow(error.message.length, 400, error.message.slice(0, 200))
        assert.notInclude(error.message, "\n")
        assert.isBelow(String(error._tag === "ModelError" && error.field).length, 200)
      }
      // A plain key is still named as written.
      assert.strictEqual(await fieldOf(orchestra.execute("x", { timout: 5 } as never)), "timout")
      assert.strictEqual(Effect.runSync(m.control.calls), 0)
    } finally {
      await orchestra.dispose()
    }
  })

  it("stats(null) and null filter fields are no filter, as Stats.snapshot reads them: stats(null) threw", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      await orchestra.execute("a", { domain: "support" })
      await orchestra.execute("b")
      const all = orchestra.stats()
      assert.strictEqual(all.total, 2)
      assert.strictEqual(orchestra.stats(null as never).total, 2)
      assert.strictEqual(orchestra.stats({ provider: null, domain: null } as never).total, 2)
      assert.strictEqual(orchestra.stats({ provider: m.name, domain: null } as never).total, 2)
      assert.strictEqual(orchestra.stats({ provider: null, domain: "support" } as never).total, 1)
    } finally {
      await orchestra.dispose()
    }
  })

  it("a getter (or a Proxy trap) that throws anywhere in what a call is given is that field's InvalidRequest, its cause kept, as a rejection", async () => {
    // Found in review: a request, a context message, an embed request, a duration object or a
    // domains list whose getter throws rejected with the raw Error (a context's threw out of the call).
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    const o = orchestra as unknown as Record<string, (...args: ReadonlyArray<unknown>) => Promise<unknown>>
    const throwingLength = new Proxy(["support"], {
      get: (target, key, receiver) => {
        if (key === "length") throw new Error("length getter")
        return Reflect.get(target, key, receiver)
      }
    })
    try {
      const cases: ReadonlyArray<readonly [string, string, () => unknown]> = [
        ["prompt", "prompt getter", () => o.execute!(hostile("prompt"), { domain: "support" })],
        ["prompt", "prompt getter", () => o.execute!(hostile("prompt"))],
        ["messages", "messages getter", () => o.executeWithFallback!(hostile("messages"), ["support"])],
        [
          "messages[1].content",
          "content getter",
          () => o.execute!({ messages: [{ role: "user", content: "a" }, hostile("content")] })
        ],
        ["prompt", "prompt getter", () => o.execute!(hostile("prompt"), { context: [{ role: "user", content: "a" }] })],
        ["context[0].content", "content getter", () => o.execute!("x", { context: [hostile("content")] })],
        ["timeout.seconds", "seconds getter", () => o.execute!("x", { timeout: hostile("seconds") })],
        [
          "after.seconds",
          "seconds getter",
          () => o.hedge!("x", ["support", "technical"], { after: hostile("seconds") })
        ],
        ["prompt", "prompt getter", () => o.executeParallelDomains!(hostile("prompt"), ["support"])],
        ["domains", "length getter", () => o.executeWithFallback!("x", throwingLength)],
        ["domains", "length getter", () => o.hedge!("x", throwingLength, { after: 10 })],
        ["texts", "texts getter", () => o.embed!(hostile("texts"))],
        ["items", "length getter", () => o.batch!(throwingLength)],
        ["concurrency", "concurrency getter", () => o.batch!(["a"], hostile("concurrency"))]
      ]
      for (const [field, thrown, call] of cases) {
        let promise: unknown
        assert.doesNotThrow(() => {
          promise = call()
        }, field)
        assert.instanceOf(promise, Promise, field)
        const error = await typed(promise as Promise<unknown>)
        assert.strictEqual(error._tag === "ModelError" && error.reason === "InvalidRequest" && error.field, field)
        assert.include(error.message, `reading`)
        const cause = error._tag === "ModelError" ? error.cause : undefined
        assert.strictEqual(cause instanceof Error && cause.message, thrown, field)
      }
      const streamed = await typed(collect(orchestra.stream(hostile("prompt") as never)))
      assert.strictEqual(streamed._tag === "ModelError" && streamed.field, "prompt")
      // A batch item's own request: that item's error, the batch goes on.
      const batch = await orchestra.batch([{ request: hostile("prompt") as never }, "fine"])
      const itemError = batch.results[0]!.error
      assert.strictEqual(itemError?._tag === "ModelError" && itemError.field, "items[0].request.prompt")
      assert.strictEqual(batch.results[1]!.status, "success")
      // stats() is synchronous: it throws the OrchestraError.
      const thrown = (() => {
        try {
          orchestra.stats(hostile("provider") as never)
          return undefined
        } catch (error) {
          return error
        }
      })()
      assert.instanceOf(thrown, OrchestraError)
      const statsError = (thrown as OrchestraError).error
      assert.strictEqual(statsError._tag === "ModelError" && statsError.field, "filter.provider")
      assert.strictEqual(Effect.runSync(m.control.calls), 1, "only the batch's good item called the provider")
    } finally {
      await orchestra.dispose()
    }
    // The manager's options given to createOrchestra: an OptionError naming the field, the build's own failure.
    for (const [options, path] of [
      [hostile("providers"), "providers"],
      [
        Object.defineProperty({ providers: { main: m.layer } }, "executor", {
          enumerable: true,
          value: hostile("timeout")
        }),
        "executor.timeout"
      ]
    ] as const) {
      const broken = createOrchestra(Orchestra.layer(options as unknown as { providers: { main: typeof m.layer } }))
      try {
        const error = await typed(broken.execute("x"))
        assert.strictEqual(error._tag === "OptionError" && error.path, path)
        assert.include(error.message, "reading it threw")
        const cause = error._tag === "OptionError" ? error.cause : undefined
        assert.instanceOf(cause, Error, path)
      } finally {
        await broken.dispose()
      }
    }
  })

  it("what a getter throws need not print, and a request may be nested past the stack: still the field's InvalidRequest", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    const o = orchestra as unknown as Record<string, (...args: ReadonlyArray<unknown>) => Promise<unknown>>
    // A thrown value that `String()` cannot convert (no prototype, so no toString).
    const unprintable = Object.create(null)
    const throwing = (field: string, fields: Record<string, unknown> = {}) =>
      Object.defineProperty(fields, field, {
        enumerable: true,
        get() {
          throw unprintable
        }
      })
    let deep: Record<string, unknown> = {}
    const nested = deep
    for (let i = 0; i < 100_000; i++) {
      const next: Record<string, unknown> = {}
      deep.x = next
      deep = next
    }
    try {
      const cases: ReadonlyArray<readonly [string, () => unknown]> = [
        ["prompt", () => o.execute!(throwing("prompt"))],
        ["timeout", () => o.execute!("x", throwing("timeout"))],
        ["context[0].content", () => o.execute!("x", { context: [throwing("content", { role: "user" })] })],
        ["timeout.seconds", () => o.execute!("x", { timeout: throwing("seconds") })],
        ["texts", () => o.embed!(throwing("texts"))],
        ["prompt", () => o.execute!({ prompt: "x", tools: [nested] })],
        ["input", () => o.embed!({ texts: ["x"], nested })],
        ["context", () => o.execute!("x", { context: [nested] })]
      ]
      for (const [field, call] of cases) {
        let promise: unknown
        try {
          promise = call()
        } catch (error) {
          assert.fail(`${field}: the call threw ${typeof error}`)
        }
        const error = await typed(promise as Promise<unknown>)
        assert.strictEqual(error._tag === "ModelError" && error.reason === "InvalidRequest" && error.field, field)
      }
      const thrown = (() => {
        try {
          orchestra.stats(throwing("provider") as never)
          return undefined
        } catch (error) {
          return error
        }
      })()
      assert.instanceOf(thrown, OrchestraError)
      assert.strictEqual(Effect.runSync(m.control.calls), 0)
    } finally {
      await orchestra.dispose()
    }
  })

  it("context: the conversation's earlier messages are sent before the prompt (item 36)", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const context = [
        { role: "user", content: "My order is 1234." },
        { role: "assistant", content: "Thanks, noted." }
      ] as const
      await orchestra.execute("Where is it?", { domain: "support", context })
      await orchestra.execute({ prompt: "And now?", maxTokens: 10 }, { context })
      const [first, second] = requestsOf(m.control)
      assert.deepStrictEqual(first!.messages, [...context, { role: "user", content: "Where is it?" }])
      assert.include(first!.system, "customer support")
      assert.deepStrictEqual(second!.messages, [...context, { role: "user", content: "And now?" }])
      assert.strictEqual(second!.maxTokens, 10)
      await collect(orchestra.stream("Stream it", { context }))
      assert.deepStrictEqual(requestsOf(m.control)[2]!.messages, [...context, { role: "user", content: "Stream it" }])
    } finally {
      await orchestra.dispose()
    }
  })

  it("context: a request refused without it is refused with it, naming the same field, never a TypeError", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const context = [{ role: "user", content: "My order is 1234." }] as const
      const requests: ReadonlyArray<[unknown, string]> = [
        // merged, the prompt was dropped
        [{ prompt: "Where is my parcel?", messages: [{ role: "user", content: "Hello" }] }, "messages"],
        // merged, a TypeError ("own is not iterable")
        [{ messages: 5 }, "messages"],
        [{ messages: {} }, "messages"],
        // merged, the context alone was sent
        [{}, "prompt"],
        [{ messages: null }, "messages"],
        [{ prompt: "  " }, "prompt"],
        // merged, named as the context's next message
        [{ prompt: 5 }, "prompt"],
        [
          {
            messages: [
              { role: "user", content: "a" },
              { role: "robot", content: "b" }
            ]
          },
          "messages[1].role"
        ]
      ]
      for (const [request, field] of requests) {
        const label = JSON.stringify(request)
        assert.strictEqual(await fieldOf(orchestra.execute(request as GenerateRequest)), field, label)
        assert.strictEqual(
          await fieldOf(orchestra.execute(request as GenerateRequest, { domain: "support", context })),
          field,
          label
        )
        assert.strictEqual(await fieldOf(collect(orchestra.stream(request as GenerateRequest, { context }))), field)
      }
      assert.strictEqual(Effect.runSync(m.control.calls), 0)
    } finally {
      await orchestra.dispose()
    }
  })
})

describe("createOrchestra: deadlines and signals (item 24)", () => {
  it("timeout bounds the whole call and rejects with the library's TimeoutError (limit total), counted as a timeout", async () => {
    const m = mock({ script: [Mock.Outcome.hang(), Mock.Outcome.hang()] })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    try {
      // Built first: on a loaded machine the build alone can outlast 30 ms, and the call then never reaches the provider.
      await orchestra.metrics()
      const error = await typed(orchestra.execute("slow", { domain: "support", timeout: 30 }))
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      const direct = await typed(orchestra.execute("slow", { timeout: "30 millis" }))
      assert.strictEqual(direct._tag, "TimeoutError")
      await settle(() => Effect.runSync(m.control.inFlight) === 0)
      assert.strictEqual(Effect.runSync(m.control.interrupted), 2)
      const stats = orchestra.stats()
      assert.deepStrictEqual(stats.failuresByReason, { Timeout: 2 })
      assert.strictEqual(stats.timeouts, 2)
    } finally {
      await orchestra.dispose()
    }
  })

  it("AbortSignal.timeout rejects with a TimeoutError and is counted as one, like the timeout option", async () => {
    const m = mock({ script: [Mock.Outcome.hang()] })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    try {
      const error = await typed(orchestra.execute("slow", { domain: "support", signal: AbortSignal.timeout(30) }))
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      await settle(() => Effect.runSync(m.control.inFlight) === 0)
      assert.strictEqual(Effect.runSync(m.control.interrupted), 1)
      const stats = orchestra.stats()
      assert.deepStrictEqual(stats.failuresByReason, { Timeout: 1 })
      assert.strictEqual(stats.timeouts, 1)
    } finally {
      await orchestra.dispose()
    }
  })

  it("abort() rejects with an AbortedError carrying the reason, interrupts the call and counts it Interrupted", async () => {
    const m = mock({ latency: "10 seconds" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    try {
      const controller = new AbortController()
      const pending = orchestra.execute("slow", { domain: "support", signal: controller.signal })
      setTimeout(() => controller.abort(new Error("user left")), 20)
      const error = await typed(pending)
      assert.instanceOf(error, AbortedError)
      assert.include(error.message, "user left")
      assert.strictEqual((error as AbortedError).cause instanceof Error && (error.cause as Error).message, "user left")
      await settle(() => Effect.runSync(m.control.inFlight) === 0)
      assert.strictEqual(Effect.runSync(m.control.interrupted), 1)
      assert.deepStrictEqual(orchestra.stats().failuresByReason, { Interrupted: 1 })
      assert.strictEqual(orchestra.stats().timeouts, 0)

      const already = await typed(orchestra.execute("x", { signal: AbortSignal.abort() }))
      assert.strictEqual(already._tag, "AbortedError")
      // `controller.abort("user left")`: a string reason is named in the message too, not only kept as `cause`.
      const said = await typed(orchestra.execute("x", { signal: AbortSignal.abort("user left") }))
      assert.strictEqual(said.message, 'the call was aborted by its signal: "user left"')
      assert.strictEqual(said._tag === "AbortedError" && said.cause, "user left")
      const timedOut = await typed(
        orchestra.execute("x", { signal: AbortSignal.abort(new DOMException("t", "TimeoutError")) })
      )
      assert.strictEqual(timedOut._tag, "TimeoutError")
      assert.strictEqual(Effect.runSync(m.control.calls), 1, "an aborted signal never reaches the provider")
    } finally {
      await orchestra.dispose()
    }
  })

  it("an abort reason that throws when read still cancels the call with an AbortedError carrying it, never a throw", async () => {
    const within = <A>(promise: Promise<A>) =>
      Promise.race([promise, new Promise<"still waiting">((resolve) => setTimeout(resolve, 2_000, "still waiting"))])
    // A reason whose every read throws (a revoked or hostile Proxy, a getter on `name`).
    const hostile = new Proxy(
      {},
      {
        get() {
          throw new Error("reason getter")
        },
        getPrototypeOf() {
          throw new Error("reason prototype")
        }
      }
    )
    const m = mock({ latency: "10 seconds" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    try {
      let made: Promise<unknown> | undefined
      assert.doesNotThrow(() => {
        made = orchestra.execute("x", { signal: AbortSignal.abort(hostile) })
      })
      const already = await typed(made!)
      assert.strictEqual(already._tag, "AbortedError")
      assert.strictEqual((already as AbortedError).cause, hostile)

      const controller = new AbortController()
      const pending = orchestra.execute("slow", { signal: controller.signal })
      setTimeout(() => controller.abort(hostile), 20)
      const cut = await within(typed(pending))
      assert.strictEqual(typeof cut === "object" && cut._tag, "AbortedError")

      const streaming = new AbortController()
      const streamed = collect(orchestra.stream("slow", { signal: streaming.signal }))
      setTimeout(() => streaming.abort(hostile), 20)
      const streamCut = await within(typed(streamed))
      assert.strictEqual(typeof streamCut === "object" && streamCut._tag, "AbortedError")
      await settle(() => Effect.runSync(m.control.inFlight) === 0)
      assert.strictEqual(Effect.runSync(m.control.interrupted), 2)
    } finally {
      await orchestra.dispose()
    }
  })

  it("a signal (a Proxy of one) whose reason cannot be read still cancels the call: no throw out of its listener", async () => {
    const within = <A>(promise: Promise<A>) =>
      Promise.race([promise, new Promise<"still waiting">((resolve) => setTimeout(resolve, 2_000, "still waiting"))])
    const m = mock({ latency: "10 seconds" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    const thrown: Array<unknown> = []
    const onUncaught = (error: unknown) => thrown.push(error)
    process.prependListener("uncaughtException", onUncaught)
    try {
      const controllers: Array<AbortController> = []
      // Reads through to the signal (it passes as one), but its `reason` throws.
      const signal = () => {
        const controller = new AbortController()
        controllers.push(controller)
        return new Proxy(controller.signal, {
          get(target, key) {
            if (key === "reason") throw new Error("reason trap")
            const value: unknown = Reflect.get(target, key, target)
            return typeof value === "function" ? value.bind(target) : value
          }
        })
      }
      const call = orchestra.execute("slow", { signal: signal() })
      const streamed = collect(orchestra.stream("slow", { signal: signal() }))
      setTimeout(() => {
        for (const controller of controllers) controller.abort()
      }, 20)
      for (const cut of [await within(typed(call)), await within(typed(streamed))]) {
        assert.strictEqual(typeof cut === "object" && cut._tag, "AbortedError")
      }
      assert.deepStrictEqual(thrown, [])
      await settle(() => Effect.runSync(m.control.inFlight) === 0)
      assert.strictEqual(Effect.runSync(m.control.interrupted), 2)
    } finally {
      process.removeListener("uncaughtException", onUncaught)
      await orchestra.dispose()
    }
  })

  it("a signal also bounds the wait for a manager that is still being built", async () => {
    const never = Layer.effect(ModelProvider, Effect.never)
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: never } }))
    try {
      const error = await typed(orchestra.execute("x", { signal: AbortSignal.timeout(30) }))
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      const streamed = await typed(collect(orchestra.stream("x", { signal: AbortSignal.timeout(30) })))
      assert.strictEqual(streamed._tag, "TimeoutError")
    } finally {
      await orchestra.dispose()
    }
  })

  it("the timeout option bounds the wait for a manager that is still being built, as a signal does", async () => {
    const within = <A>(promise: Promise<A>) =>
      Promise.race([promise, new Promise<"still waiting">((resolve) => setTimeout(resolve, 2_000, "still waiting"))])
    const never = Layer.effect(ModelProvider, Effect.never)
    const stuck = createOrchestra(Orchestra.layer({ providers: { main: never } }))
    try {
      for (const call of [
        stuck.execute("x", { timeout: 30 }),
        stuck.embed("x", { timeout: 30 }),
        collect(stuck.stream("x", { timeout: 30 }))
      ]) {
        const error = await within(typed(call))
        assert.strictEqual(typeof error === "object" && error._tag === "TimeoutError" && error.limit, "total")
      }
    } finally {
      await stuck.dispose()
    }

    // A batch's timeout counts from the call too: passed while the manager is being built, it
    // rejects then (no manager, no outcomes to give), and nothing runs once the build ends.
    const late = Effect.runSync(Mock.make({ name: `facade-${++mocks}`, latency: "200 millis" }))
    const slow = Layer.effect(ModelProvider, Effect.as(Effect.sleep("300 millis"), late.provider))
    const building = createOrchestra(Orchestra.layer({ providers: { main: slow } }))
    try {
      const error = await within(typed(building.batch(["a", "b"], { timeout: 100 })))
      assert.strictEqual(typeof error === "object" && error._tag === "TimeoutError" && error.limit, "total")
      await new Promise((resolve) => setTimeout(resolve, 400))
      assert.strictEqual(Effect.runSync(late.control.calls), 0)
    } finally {
      await building.dispose()
    }
    // A build that never ends: the batch's timeout or signal still settles its promise.
    const stuckAgain = createOrchestra(Orchestra.layer({ providers: { main: never } }))
    try {
      const timedOut = await within(typed(stuckAgain.batch(["a"], { timeout: 30 })))
      assert.strictEqual(typeof timedOut === "object" && timedOut._tag, "TimeoutError")
      const aborted = await within(typed(stuckAgain.batch(["a"], { signal: AbortSignal.timeout(30) })))
      assert.notStrictEqual(aborted, "still waiting")
    } finally {
      await stuckAgain.dispose()
    }
  })

  it("a batch whose signal had already aborted, made while the manager is being built, rejects at once", async () => {
    const within = <A>(promise: Promise<A>) =>
      Promise.race([promise, new Promise<"still waiting">((resolve) => setTimeout(resolve, 2_000, "still waiting"))])
    const never = Layer.effect(ModelProvider, Effect.never)
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: never } }))
    try {
      // As a call with an aborted signal does: the abort event never fires again, so nothing else would end the wait.
      const error = await within(typed(orchestra.batch(["x"], { signal: AbortSignal.abort(new Error("gone")) })))
      assert.strictEqual(typeof error === "object" && error._tag, "AbortedError")
      const timedOut = await within(
        typed(orchestra.batch(["x"], { signal: AbortSignal.abort(new DOMException("t", "TimeoutError")) }))
      )
      assert.strictEqual(typeof timedOut === "object" && timedOut._tag === "TimeoutError" && timedOut.limit, "total")
    } finally {
      await orchestra.dispose()
    }
  })

  it("a call whose timeout passes after a slow build reports the timeout it was given, not what was left of it", async () => {
    // The build takes 150 ms, the provider never answers: the call's 400 ms run out 250 ms after the build.
    const hanging = Effect.runSync(
      Mock.make({ name: `facade-${++mocks}`, script: [Mock.Outcome.hang(), Mock.Outcome.hang()] })
    )
    const slow = Layer.effect(ModelProvider, Effect.as(Effect.sleep("150 millis"), hanging.provider))
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: slow } }))
    try {
      const [called, streamed] = await Promise.all([
        typed(orchestra.execute("x", { timeout: 400 })),
        typed(collect(orchestra.stream("x", { timeout: "400 millis" })))
      ])
      for (const error of [called, streamed]) {
        assert.strictEqual(error._tag, "TimeoutError")
        if (error._tag !== "TimeoutError") continue
        assert.deepStrictEqual([error.limit, Duration.toMillis(error.timeout)], ["total", 400])
        assert.match(error.message, /^total timeout after 400ms/)
      }
    } finally {
      await orchestra.dispose()
    }
  })

  it("a call whose timeout passed while the manager is being built keeps no listener on its signal", async () => {
    const never = Layer.effect(ModelProvider, Effect.never)
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: never } }))
    try {
      // A long-lived signal (a server's shutdown signal, say) shared by the calls of a build that takes long.
      const controller = new AbortController()
      for (const call of [
        () => orchestra.execute("x", { signal: controller.signal, timeout: 20 }),
        () => orchestra.batch(["x"], { signal: controller.signal, timeout: 20 }),
        () => collect(orchestra.stream("x", { signal: controller.signal, timeout: 20 }))
      ]) {
        const error = await typed(call())
        assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
        assert.strictEqual(getEventListeners(controller.signal, "abort").length, 0)
      }
    } finally {
      await orchestra.dispose()
    }
  })

  it("a stream cut by AbortSignal.timeout rejects the loop with a TimeoutError (its partial text) counted as one", async () => {
    const m = mock({ script: [Mock.Outcome.hang({ afterChunks: 1, text: "one two three" })] })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    try {
      const parts: Array<StreamPart> = []
      const error = await typed(
        (async () => {
          for await (const part of orchestra.stream("go", { domain: "support", signal: AbortSignal.timeout(50) })) {
            parts.push(part)
          }
        })()
      )
      assert.strictEqual(error._tag === "TimeoutError" && error.limit, "total")
      assert.strictEqual(textOf(parts), "one ")
      // What was delivered, as the `timeout` option's error carries it.
      assert.strictEqual(error._tag === "TimeoutError" && error.partialText, "one ")
      await settle(() => Effect.runSync(m.control.inFlight) === 0)
      const stats = orchestra.stats()
      assert.deepStrictEqual(stats.failuresByReason, { Timeout: 1 })
      assert.strictEqual(stats.timeouts, 1)
    } finally {
      await orchestra.dispose()
    }
  })
})

describe("createOrchestra: a stream's signal listener", () => {
  it("a signal shared by many streams keeps no listener once each ended, however it ended, or was dropped", async () => {
    const m = mock({
      script: [
        Mock.Outcome.succeed("a b c"),
        Mock.Outcome.fail("InvalidRequest"),
        Mock.Outcome.succeed("a b c"),
        Mock.Outcome.succeed("a b c"),
        Mock.Outcome.hang({ afterChunks: 1, text: "one two" }),
        Mock.Outcome.hang({ afterChunks: 1, text: "one two" })
      ]
    })
    const orchestra = createOrchestra(
      Orchestra.layer({ providers: { main: m.layer }, breakers: false, executor: { shutdownDeadline: "50 millis" } })
    )
    const shared = new AbortController().signal
    const listeners = (signal: AbortSignal = shared) => getEventListeners(signal, "abort").length
    const open = () => orchestra.stream("q", { domain: "support", signal: shared })[Symbol.asyncIterator]()
    try {
      assert.strictEqual(textOf(await collect(orchestra.stream("q", { domain: "support", signal: shared }))), "a b c")
      assert.strictEqual(listeners(), 0, "completed")
      const failed = await typed(collect(orchestra.stream("q", { domain: "support", signal: shared })))
      assert.strictEqual(failed._tag === "ModelError" && failed.reason, "InvalidRequest")
      assert.strictEqual(listeners(), 0, "failed")
      for await (const _ of orchestra.stream("q", { domain: "support", signal: shared })) break
      assert.strictEqual(listeners(), 0, "left early")
      // Dropped after its first part, without return(): nothing may stay behind on the signal.
      const dropped = open()
      assert.isFalse((await dropped.next()).done)
      assert.strictEqual(listeners(), 0, "dropped")
      open()
      assert.strictEqual(listeners(), 0, "never iterated")

      const controller = new AbortController()
      const cancelled = orchestra.stream("q", { domain: "support", signal: controller.signal })[Symbol.asyncIterator]()
      await cancelled.next()
      const pending = typed(cancelled.next())
      await settle(() => listeners(controller.signal) === 1)
      assert.strictEqual(listeners(controller.signal), 1, "listened to while a part is awaited")
      controller.abort(new Error("user left"))
      assert.strictEqual((await pending)._tag, "AbortedError")
      assert.strictEqual(listeners(controller.signal), 0, "cancelled")

      const disposed = open()
      await disposed.next()
      const cut = typed(disposed.next())
      await settle(() => listeners() === 1)
      assert.strictEqual(listeners(), 1, "listened to while a part is awaited")
      await orchestra.dispose()
      assert.strictEqual((await cut)._tag, "ShuttingDownError")
      assert.strictEqual(listeners(), 0, "disposed")
    } finally {
      await orchestra.dispose()
    }
  })

  it("an abort between two parts ends the stream at the next next(), with the signal's error", async () => {
    const m = mock({ script: [Mock.Outcome.succeed("one two three")] })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    try {
      const controller = new AbortController()
      const parts = orchestra.stream("q", { domain: "support", signal: controller.signal })[Symbol.asyncIterator]()
      const first = await parts.next()
      assert.strictEqual(!first.done && first.value._tag === "TextDelta" && first.value.text, "one ")
      controller.abort(new DOMException("t", "TimeoutError"))
      const error = await typed(parts.next())
      assert.strictEqual(error._tag === "TimeoutError" && error.partialText, "one ")
      assert.isTrue((await parts.next()).done)
      assert.deepStrictEqual(orchestra.stats().failuresByReason, { Timeout: 1 })
    } finally {
      await orchestra.dispose()
    }
  })
  it("an abort after the Finish part was handed over leaves the stream a success: there is nothing left to cut", async () => {
    const m = mock({ script: [Mock.Outcome.succeed("one two")] })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    try {
      const controller = new AbortController()
      const tags: Array<string> = []
      for await (const part of orchestra.stream("q", { domain: "support", signal: controller.signal })) {
        tags.push(part._tag)
        // e.g. the client of a server leaving right after the last chunk was written to it.
        if (part._tag === "Finish") controller.abort(new DOMException("t", "TimeoutError"))
      }
      assert.deepStrictEqual(tags, ["TextDelta", "TextDelta", "Finish"])
      const stats = orchestra.stats()
      assert.deepStrictEqual([stats.successes, stats.failuresByReason], [1, {}])
    } finally {
      await orchestra.dispose()
    }
  })
})

describe("createOrchestra: batch, stats, streams", () => {
  it("a stream is in a Facade.stream span when a tracer would receive it, and makes none otherwise", async () => {
    const m = mock()
    const { spans, tracer } = recording()
    const providers = { providers: { main: m.layer } }
    const traced = createOrchestra(Layer.merge(Orchestra.layer(providers), Layer.succeed(Tracer.Tracer, tracer)))
    const untraced = createOrchestra(Orchestra.layer(providers))
    try {
      assert.isAbove((await collect(traced.stream("a"))).length, 1)
      const span = spans.find((s) => s.name === "Facade.stream")
      assert.isDefined(span, spans.map((s) => s.name).join(", "))
      assert.strictEqual(span!.status._tag, "Ended", "it covers the whole stream")
      const before = spans.length
      assert.isAbove((await collect(untraced.stream("b"))).length, 1)
      assert.strictEqual(spans.length, before)
    } finally {
      await traced.dispose()
      await untraced.dispose()
    }
  })

  it("batch: one outcome per item; a signal cancels part-way and the result says which items never ran", async () => {
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
      const succeeded = result.results.filter((r) => r.status === "success").length
      assert.isAtLeast(succeeded, 4)
      assert.isTrue(result.results.every((r) => r.status === "success" || r.status === "cancelled"))
      assert.isAtLeast(result.notRun.length, 12)
      assert.isTrue(result.notRun.every((i) => result.results[i]!.ran === false))
      assert.strictEqual(events[events.length - 1]?._tag, "Cancelled")
      await settle(() => Effect.runSync(m.control.inFlight) === 0)
      assert.strictEqual(Effect.runSync(m.control.calls), 3 + 20 - result.notRun.length)

      const aborted = await orchestra.batch(["x", "y"], { domain: "support", signal: AbortSignal.abort() })
      assert.deepStrictEqual(aborted.notRun, [0, 1])
      const timed = await orchestra.batch(
        Array.from({ length: 10 }, (_, i) => `t ${i}`),
        { domain: "support", timeout: 30 }
      )
      assert.isTrue(timed.cancelled)
      assert.isAbove(timed.notRun.length, 0)
    } finally {
      await orchestra.dispose()
    }
  })

  it("batch: a signal aborted from onProgress on items answered at once starts no item after it", async () => {
    // Found in review: the abort was seen only once up to 1,024 more items had started.
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, maxConcurrent: 4 }))
    try {
      for (const domain of [undefined, "support"]) {
        // Resolves the route first, so that the items are started from JavaScript.
        await orchestra.batch(["warm", "up"], { domain })
        const before = Effect.runSync(m.control.calls)
        const controller = new AbortController()
        let started = 0
        let startedAfter = 0
        const items = Array.from({ length: 3000 }, (_, i) => `q${i}`)
        const result = await orchestra.batch(items, {
          domain,
          signal: controller.signal,
          onProgress: (event) => {
            if (event._tag === "Started") {
              started++
              if (controller.signal.aborted) startedAfter++
            }
            if (event._tag === "Succeeded" && event.done === 10) controller.abort()
          }
        })
        assert.isTrue(result.cancelled)
        assert.strictEqual(startedAfter, 0, `no item started after the abort (${domain})`)
        assert.strictEqual(result.results.length, items.length)
        assert.isTrue(result.results.every((r, i) => r.index === i && ["success", "cancelled"].includes(r.status)))
        assert.strictEqual(result.notRun.length, items.length - started)
        assert.isAtMost(started, 10 + 4)
        await settle(() => Effect.runSync(m.control.inFlight) === 0)
        assert.strictEqual(Effect.runSync(m.control.calls) - before, started, "a provider call per started item only")
      }
    } finally {
      await orchestra.dispose()
    }
  })

  it("stats(): the figures of every call so far, filterable, zeros before anything ran", async () => {
    const m = mock({ script: [Mock.Outcome.succeed(), Mock.Outcome.fail("Unauthorized"), Mock.Outcome.succeed()] })
    const orchestra = createOrchestra(
      Orchestra.layer({ providers: { main: m.layer }, domains: [{ name: "plain", provider: "main" }] })
    )
    try {
      const before = orchestra.stats()
      assert.strictEqual(before.total, 0)
      assert.strictEqual(before.latency.p99, 0)
      await orchestra.execute("1", { domain: "plain" })
      await rejection(orchestra.execute("2", { domain: "plain" }))
      await orchestra.execute("3")
      const stats = orchestra.stats()
      assert.strictEqual(stats.total, 3)
      assert.strictEqual(stats.successes, 2)
      assert.deepStrictEqual(stats.failuresByReason, { Unauthorized: 1 })
      assert.strictEqual(orchestra.stats({ domain: "plain" }).total, 2)
      assert.strictEqual(orchestra.stats({ provider: m.name }).total, 3)
      orchestra.resetStats()
      assert.strictEqual(orchestra.stats().total, 0)
    } finally {
      await orchestra.dispose()
    }
  })

  it("stream: text deltas and the Finish of a domain's stream, with its system prompt", async () => {
    const m = mock({ respond: () => "one two three", chunkDelay: "2 millis" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const parts = await collect(orchestra.stream("go", { domain: "technical" }))
      assert.deepStrictEqual(
        parts.map((p) => p._tag),
        ["TextDelta", "TextDelta", "TextDelta", "Finish"]
      )
      assert.strictEqual(textOf(parts), "one two three")
      assert.include(requestsOf(m.control)[0]!.system, "software engineer")
    } finally {
      await orchestra.dispose()
    }
  })

  it("stream: nothing starts before the loop, and each loop over the same iterable is a call of its own", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const parts = orchestra.stream("one two")
      await orchestra.metrics()
      assert.strictEqual(Effect.runSync(m.control.calls), 0)
      const first = await collect(parts)
      const second = await collect(parts)
      assert.strictEqual(textOf(second), textOf(first))
      assert.strictEqual(Effect.runSync(m.control.calls), 2)
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
      await settle(() => Effect.runSync(m.control.inFlight) === 0)
      assert.strictEqual(Effect.runSync(m.control.inFlight), 0)
      assert.strictEqual(Effect.runSync(m.control.interrupted), 1)
    } finally {
      await orchestra.dispose()
    }
  })

  it("stream: return() while a next() waits cancels the call at once; the waiting next() ends the stream", async () => {
    const within = <A>(promise: Promise<A>) =>
      Promise.race([promise, new Promise<"still waiting">((resolve) => setTimeout(resolve, 2_000, "still waiting"))])
    const m = mock({ script: [Mock.Outcome.hang({ afterChunks: 1, text: "one two" })] })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    try {
      const parts = orchestra.stream("go", { domain: "support" })[Symbol.asyncIterator]()
      assert.isFalse((await parts.next()).done)
      // e.g. a Stop button, or the caller's own idle timer: the provider sends nothing more.
      const waiting = parts.next()
      await settle(() => Effect.runSync(m.control.inFlight) === 1)
      assert.deepStrictEqual(await within(parts.return!()), { done: true, value: undefined })
      assert.deepStrictEqual(await within(waiting), { done: true, value: undefined })
      await settle(() => Effect.runSync(m.control.inFlight) === 0)
      assert.strictEqual(Effect.runSync(m.control.interrupted), 1)
      assert.deepStrictEqual(orchestra.stats().failuresByReason, { Interrupted: 1 })
    } finally {
      await orchestra.dispose()
    }

    // Closed while the manager is still being built: the stream never starts.
    const late = Effect.runSync(Mock.make({ name: `facade-${++mocks}` }))
    const slow = Layer.effect(ModelProvider, Effect.as(Effect.sleep("50 millis"), late.provider))
    const building = createOrchestra(Orchestra.layer({ providers: { main: slow } }))
    try {
      const parts = building.stream("go")[Symbol.asyncIterator]()
      const waiting = parts.next()
      assert.deepStrictEqual(await within(parts.return!()), { done: true, value: undefined })
      assert.deepStrictEqual(await within(waiting), { done: true, value: undefined })
      assert.strictEqual(Effect.runSync(late.control.calls), 0)
    } finally {
      await building.dispose()
    }

    // A build that takes long (a local model loading) or never ends: return() does not wait for it,
    // and the wait leaves nothing on the signal.
    const never = Layer.effect(ModelProvider, Effect.never)
    const stuck = createOrchestra(Orchestra.layer({ providers: { main: never } }))
    try {
      const controller = new AbortController()
      const parts = stuck.stream("go", { signal: controller.signal })[Symbol.asyncIterator]()
      const waiting = parts.next()
      await new Promise((resolve) => setTimeout(resolve, 10))
      assert.deepStrictEqual(await within(parts.return!()), { done: true, value: undefined })
      assert.deepStrictEqual(await within(waiting), { done: true, value: undefined })
      assert.strictEqual(getEventListeners(controller.signal, "abort").length, 0)
    } finally {
      await stuck.dispose()
    }
  })

  it("stream: a failure after text rejects the loop with an OrchestraError carrying what was delivered", async () => {
    const m = mock({ script: [Mock.Outcome.fail("Unauthorized", { afterChunks: 1 })], respond: () => "x y z" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const parts: Array<StreamPart> = []
      const error = await typed(
        (async () => {
          for await (const part of orchestra.stream("go")) parts.push(part)
        })()
      )
      assert.strictEqual(error._tag, "StreamInterruptedError")
      if (error._tag === "StreamInterruptedError") {
        assert.strictEqual(error.partialText, "x ")
        assert.strictEqual(error.reason, "Unauthorized")
      }
      assert.strictEqual(parts.length, 1)
    } finally {
      await orchestra.dispose()
    }
  })

  it("embed: vectors in input order, on a domain's provider or the default one", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      const many = await orchestra.embed(["a", "b", "c"])
      assert.strictEqual(many.vectors.length, 3)
      const one = await orchestra.embed("a", { domain: "support" })
      assert.deepStrictEqual(one.vectors[0], many.vectors[0])
    } finally {
      await orchestra.dispose()
    }
  })

  it("metrics(): Prometheus text with the call series by provider and domain, and the breaker states (item 35)", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    try {
      await orchestra.execute("hi", { domain: "support" })
      const text = await orchestra.metrics()
      assert.include(text, "# TYPE orchestra_requests_total counter")
      assert.match(text, new RegExp(`orchestra_requests_total\\{provider="${m.name}",domain="support"\\} 1`))
      assert.match(text, new RegExp(`orchestra_breaker_state\\{breaker="${m.name}"\\} 0`))
    } finally {
      await orchestra.dispose()
    }
    // The final metrics, as stats() gives the final figures (Facade.lifecycle.test.ts).
    assert.match(
      await orchestra.metrics(),
      new RegExp(`orchestra_requests_total\\{provider="${m.name}",domain="support"\\} 1`)
    )
  })

  it("a provider that dies with a value String() cannot convert: each call, stream and item still gets its typed error", async () => {
    const within = <A>(promise: Promise<A>) =>
      Promise.race([promise, new Promise<"still waiting">((resolve) => setTimeout(resolve, 2_000, "still waiting"))])
    // A defect without a prototype (so no toString): describing it threw, the stream never ended.
    const unprintable = () => Object.create(null)
    const { provider } = Effect.runSync(Mock.make({ name: `facade-${++mocks}` }))
    const dying = Layer.succeed(ModelProvider, {
      ...provider,
      generate: () => Effect.die(unprintable()),
      stream: () => Stream.die(unprintable()),
      embed: () => Effect.die(unprintable())
    })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: dying }, breakers: false }))
    try {
      const expected = "a value that cannot be shown (an object)"
      for (const call of [
        () => orchestra.execute("x"),
        () => orchestra.embed("x"),
        () => collect(orchestra.stream("x"))
      ]) {
        const error = await within(typed(call()))
        assert.strictEqual(typeof error === "object" && error._tag === "ModelError" && error.reason, "Unknown")
        assert.include(typeof error === "object" ? error.message : "", expected)
      }
      const batch = await orchestra.batch(["x", "y"])
      assert.include(batch.results[0]!.error?.message, expected)
    } finally {
      await orchestra.dispose()
    }
  })

  it("a manager that cannot be built rejects every call with its OptionError", async () => {
    const m = mock()
    const orchestra = createOrchestra(
      Orchestra.layer({ providers: { main: m.layer }, extraDomains: [{ name: "support", provider: "main" }] })
    )
    try {
      const error = await typed(orchestra.execute("x", { domain: "support" }))
      assert.strictEqual(error._tag === "OptionError" && error.path, "extraDomains[0].name")
      assert.strictEqual(orchestra.stats().total, 0)
    } finally {
      await orchestra.dispose()
    }
  })
})

describe("createOrchestra: what it is given", () => {
  it("something other than a Layer (the manager's options themselves) rejects every call with an OptionError naming it", async () => {
    // A revoked Proxy throws at any look at it: still a wrong argument, not a throw of createOrchestra.
    const revoked = Proxy.revocable({}, {})
    revoked.revoke()
    for (const given of [{ providers: { main: Mock.layer() } }, null, undefined, revoked.proxy]) {
      const orchestra = createOrchestra(given as never)
      try {
        const error = await typed(orchestra.execute("x"))
        assert.strictEqual(error._tag === "OptionError" && error.path, "layer", String(error.message))
        assert.include(error.message, "Orchestra.layer")
        assert.strictEqual((await typed(collect(orchestra.stream("x"))))._tag, "OptionError")
        assert.strictEqual(orchestra.stats().total, 0)
      } finally {
        await orchestra.dispose()
      }
    }
  })
})

describe("createOrchestra: dispose", () => {
  it("in-flight calls finish, later calls are refused with ShuttingDownError, stats stay readable", async () => {
    const m = mock({ latency: "30 millis" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    await orchestra.execute("warm up", { domain: "support" })
    const inFlight = orchestra.execute("in flight", { domain: "support" })
    await settle(() => Effect.runSync(m.control.inFlight) === 1)
    const disposed = orchestra.dispose()
    assert.strictEqual((await typed(orchestra.execute("late", { domain: "support" })))._tag, "ShuttingDownError")
    assert.strictEqual((await typed(orchestra.batch(["x"])))._tag, "ShuttingDownError")
    const answer = await inFlight
    assert.strictEqual(answer.response.text, "mock answer to: in flight")
    await disposed
    await orchestra.dispose()
    assert.strictEqual(orchestra.stats().successes, 2)
    const streamError = await typed(collect(orchestra.stream("x")))
    assert.strictEqual(streamError._tag, "ShuttingDownError")
  })

  it("a call made just before dispose(), in the same tick, is admitted and drained", async () => {
    const m = mock({ latency: "30 millis" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer } }))
    await orchestra.execute("warm up", { domain: "support" })
    const made = [orchestra.execute("just before", { domain: "support" }), orchestra.execute("and without a domain")]
    const disposed = orchestra.dispose()
    const answers = await Promise.all(made)
    assert.deepStrictEqual(
      answers.map((a) => a.response.text),
      ["mock answer to: just before", "mock answer to: and without a domain"]
    )
    await disposed
    assert.strictEqual((await typed(orchestra.execute("after")))._tag, "ShuttingDownError")
  })

  it("a large batch running when dispose() is called resolves with an outcome per item, never rejects", async () => {
    const items = Array.from({ length: 5_000 }, (_, i) => `q${i}`)
    for (const options of [{}, { signal: new AbortController().signal }, { onProgress: () => undefined }]) {
      const m = mock({ latency: "20 millis" })
      const orchestra = createOrchestra(
        Orchestra.layer({ providers: { main: m.layer }, maxConcurrent: 4, executor: { shutdownDeadline: "1 second" } })
      )
      await orchestra.execute("warm up")
      const pending = orchestra.batch(items, { domain: "support", ...options })
      await settle(() => Effect.runSync(m.control.inFlight) > 0)
      await orchestra.dispose()
      // The queued items are refused by the closed executor (`rejected`), the running ones drained.
      const result = await pending
      assert.strictEqual(result.results.length, items.length)
      assert.isTrue(
        result.results.every((r, i) => r.index === i && (r.status === "success" || r.status === "rejected")),
        JSON.stringify(Object.keys(options))
      )
      assert.isAbove(result.results.filter((r) => r.status === "rejected").length, 0)
    }
  })

  it("a finalizer that fails: everything else is released, then dispose() rejects with a typed ModelError carrying it", async () => {
    // Found in review: dispose() rejected with the finalizer's raw Error.
    const m = mock()
    const released: Array<string> = []
    const releasing = (name: string) =>
      Layer.effectDiscard(Effect.addFinalizer(() => Effect.sync(() => released.push(name))))
    // A function: the same layer value twice would be built once (layers are memoized).
    const failingLayer = () =>
      Layer.effectDiscard(
        Effect.addFinalizer(() =>
          Effect.sync(() => {
            released.push("failing")
            throw new Error("pool would not close")
          })
        )
      )
    const failing = failingLayer()
    const orchestra = createOrchestra(
      Layer.mergeAll(
        Orchestra.layer({ providers: { main: m.layer } }),
        releasing("before"),
        failing,
        releasing("after")
      )
    )
    await orchestra.execute("x", { domain: "support" })
    const disposed = orchestra.dispose()
    const error = await typed(disposed)
    assert.strictEqual(error._tag === "ModelError" && error.reason, "Unknown")
    assert.include(error.message, "dispose: releasing the manager failed")
    assert.include(error.message, "Error: pool would not close")
    const cause = error._tag === "ModelError" ? error.cause : undefined
    assert.instanceOf(cause, Error)
    assert.strictEqual((cause as Error).message, "pool would not close")
    assert.sameMembers(released, ["before", "failing", "after"], "every other finalizer ran")
    // Idempotent, and shut all the same: the same rejection, new calls refused, stats readable.
    assert.strictEqual(orchestra.dispose(), disposed)
    assert.strictEqual((await typed(orchestra.execute("late")))._tag, "ShuttingDownError")
    assert.strictEqual(orchestra.stats().successes, 1)

    // Two that fail: both are in the message, and the cause is an AggregateError of them.
    const twice = createOrchestra(
      Layer.mergeAll(Orchestra.layer({ providers: { main: m.layer } }), failingLayer(), failingLayer())
    )
    await twice.execute("x")
    const both = await typed(twice.dispose())
    const aggregate = both._tag === "ModelError" ? both.cause : undefined
    assert.instanceOf(aggregate, AggregateError)
    assert.lengthOf((aggregate as AggregateError).errors, 2)
  })

  it("a call still running at the shutdown deadline is interrupted and rejected with ShuttingDownError", async () => {
    const m = mock({ script: [Mock.Outcome.hang()] })
    const orchestra = createOrchestra(
      Orchestra.layer({ providers: { main: m.layer }, executor: { shutdownDeadline: "50 millis" } })
    )
    const stuck = orchestra.execute("stuck", { domain: "support" })
    await settle(() => Effect.runSync(m.control.inFlight) === 1)
    await orchestra.dispose()
    assert.strictEqual((await typed(stuck))._tag, "ShuttingDownError")
    assert.strictEqual(Effect.runSync(m.control.interrupted), 1)
    assert.strictEqual(Effect.runSync(m.control.inFlight), 0)
  })
})
