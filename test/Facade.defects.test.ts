/**
 * The Promise facade as a JavaScript caller uses it: iterators abandoned in every way the
 * language allows, what a stream keeps while it runs, and input from code without types.
 * A Promise API on the real clock, as `Facade.test.ts`: no timing assertions.
 */
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Stream } from "effect"
import { createOrchestra, OrchestraError } from "../src/Facade.js"
import { ModelProvider, type StreamPart } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { typed } from "./utils/facade.js"

setFlagsFromString("--expose-gc")
const gc = runInNewContext("gc") as () => void

let mocks = 0
const mock = (options: Mock.Options = {}) => {
  const { control, provider } = Effect.runSync(Mock.make({ name: `facade-defects-${++mocks}`, ...options }))
  return { control, name: control.name, layer: Layer.succeed(ModelProvider, provider) }
}

const settle = async (check: () => boolean) => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 5))
}

/** A long answer: more parts than a stream reads ahead of its consumer, so its upstream stays open. */
const long = () => Array.from({ length: 300 }, (_, i) => `w${i}`).join(" ")

const inFlight = (control: Mock.Control) => Effect.runSync(control.inFlight)

describe("createOrchestra: a stream abandoned by its consumer", () => {
  it("an iterator dropped after a part, without return(), is cancelled once collected: upstream closed, slot freed", async () => {
    const m = mock({ respond: long, maxConcurrency: 1 })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    try {
      // In a function of its own, so that nothing in this frame keeps the iterator.
      const first = await (async () => {
        const parts = orchestra.stream("go")[Symbol.asyncIterator]()
        return (await parts.next()).value as StreamPart
      })()
      assert.strictEqual(first._tag, "TextDelta")
      await settle(() => inFlight(m.control) === 1)
      assert.strictEqual(inFlight(m.control), 1, "the upstream is open while the iterator may be resumed")
      await settle(() => {
        gc()
        return inFlight(m.control) === 0
      })
      assert.strictEqual(inFlight(m.control), 0, "the dropped iterator's upstream is closed")
      assert.strictEqual(Effect.runSync(m.control.interrupted), 1)
      // The provider's only slot is free again: a new stream runs to its end.
      let text = ""
      for await (const part of orchestra.stream("again")) if (part._tag === "TextDelta") text += part.text
      assert.strictEqual(text, long())
      assert.deepStrictEqual(orchestra.stats().failuresByReason, { Interrupted: 1 })
    } finally {
      await orchestra.dispose()
    }
  })

  it("an iterator nobody keeps while its next() waits still answers that next() with the part", async () => {
    const m = mock({ respond: long, latency: "100 millis" })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    try {
      // The one-shot "first part" pattern: only the promise of next() is kept.
      const first = orchestra.stream("go")[Symbol.asyncIterator]().next()
      let settled = false
      void first.finally(() => {
        settled = true
      })
      await settle(() => {
        gc()
        return settled
      })
      const result = await first
      assert.strictEqual(!result.done && result.value._tag === "TextDelta" && result.value.text, "w0 ")
      // Dropped once answered: cancelled when collected.
      await settle(() => {
        gc()
        return inFlight(m.control) === 0
      })
      assert.strictEqual(Effect.runSync(m.control.interrupted), 1)
    } finally {
      await orchestra.dispose()
    }
  })
})

describe("createOrchestra: what a stream keeps while it runs", () => {
  it("without a signal the facade keeps no copy of the delivered text (only an abort's error would carry it)", async () => {
    const words = 150_000
    const m = mock()
    // Many small parts, made as they are read: the copy costs a string node each.
    const provider = Effect.runSync(
      Effect.gen(function* () {
        return yield* ModelProvider
      }).pipe(Effect.provide(m.layer))
    )
    const many = Layer.succeed(ModelProvider, {
      ...provider,
      stream: () =>
        Stream.fromIterable(
          {
            *[Symbol.iterator]() {
              for (let i = 0; i < words; i++) yield { _tag: "TextDelta", text: `w${i % 10} ` } as StreamPart
            }
          },
          { chunkSize: 4096 }
        )
    })
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: many }, breakers: false }))
    // The heap grown by a stream read up to its last text part: what the engine and the facade
    // hold for it then. Measured on the same stream with and without a signal.
    const grownBy = async (options: { readonly signal?: AbortSignal }) => {
      const parts = orchestra.stream("go", options)[Symbol.asyncIterator]()
      gc()
      const before = process.memoryUsage().heapUsed
      for (let i = 0; i < words; i++) assert.isFalse((await parts.next()).done)
      gc()
      const grown = process.memoryUsage().heapUsed - before
      await parts.return!()
      return grown
    }
    try {
      const withSignal = await grownBy({ signal: new AbortController().signal })
      const without = await grownBy({})
      // A copy is a string node a part (32 bytes), on top of what both streams hold.
      assert.isBelow(without, withSignal - words * 16, `without a signal ${without} B, with one ${withSignal} B`)
    } finally {
      await orchestra.dispose()
    }
  })
})

const invalid = async (promise: Promise<unknown>) => {
  const error = await typed(promise)
  assert.isTrue(error._tag === "ModelError" && error.reason === "InvalidRequest", `${error._tag}: ${error.message}`)
  return error as { readonly field?: string | undefined; readonly message: string }
}

const drain = async (iterable: AsyncIterable<StreamPart>) => {
  for await (const _ of iterable);
}

describe("createOrchestra: input from code without types", () => {
  it("a signal (or another object that is not options) given for the options is refused, naming options, not ignored", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    const { signal } = new AbortController()
    const bare = signal as never
    try {
      for (const call of [
        () => orchestra.execute("q", bare),
        () => orchestra.executeWithFallback("q", ["support"], bare),
        () => orchestra.executeParallelDomains("q", ["support"], bare),
        () => orchestra.hedge("q", ["support"], bare),
        () => orchestra.batch(["q"], bare),
        () => orchestra.embed("q", bare),
        () => drain(orchestra.stream("q", bare))
      ]) {
        const error = await invalid(call())
        assert.strictEqual(error.field, "options")
        assert.include(error.message, "{ signal }")
      }
      for (const other of [new AbortController(), new Map([["domain", "support"]]), new Date()]) {
        assert.strictEqual((await invalid(orchestra.execute("q", other as never))).field, "options")
      }
      assert.throws(() => orchestra.stats(bare), OrchestraError, "filter")
      // Options built by a class, with fields of their own, are options.
      const answer = await orchestra.execute(
        "q",
        new (class {
          readonly domain = "support"
        })()
      )
      assert.strictEqual(answer.domain, "support")
      assert.strictEqual(Effect.runSync(m.control.calls), 1)
    } finally {
      await orchestra.dispose()
    }
  })

  it("a revoked Proxy given as the prompt is the prompt's InvalidRequest, not a TypeError", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    const { proxy, revoke } = Proxy.revocable({ prompt: "q" }, {})
    revoke()
    try {
      assert.strictEqual((await invalid(orchestra.execute(proxy))).field, "prompt")
      assert.strictEqual((await invalid(drain(orchestra.stream(proxy)))).field, "prompt")
      assert.strictEqual(Effect.runSync(m.control.calls), 0)
    } finally {
      await orchestra.dispose()
    }
  })

  it("an array of a huge length (a sparse one, a Proxy's) is refused naming it before any of it is read", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    let reads = 0
    // `new Array(2 ** 32 - 1)` costs nothing to make; copying it took the event loop for half a minute.
    const huge = () =>
      new Proxy([] as Array<never>, {
        get: (target, key) => {
          if (key === "length") return 2 ** 32 - 1
          if (typeof key === "string" && /^\d+$/.test(key)) reads++
          return Reflect.get(target, key)
        }
      })
    try {
      for (const [call, field] of [
        [() => orchestra.executeWithFallback("q", huge()), "domains"],
        [() => orchestra.executeParallelDomains("q", huge()), "domains"],
        [() => orchestra.hedge("q", huge(), { after: 10 }), "domains"],
        [() => orchestra.execute("q", { context: huge() }), "context"],
        [() => orchestra.execute({ messages: huge() }), "messages"],
        [() => orchestra.embed(huge()), "texts"],
        [() => orchestra.embed({ texts: huge() as never }), "texts"],
        [() => drain(orchestra.stream("q", { domain: huge() })), "domain"],
        [() => drain(orchestra.stream({ messages: huge() })), "messages"]
      ] as const) {
        const error = await invalid(call())
        assert.strictEqual(error.field, field, error.message)
        assert.include(error.message, "expected at most 1000000 items, got 4294967295")
      }
      assert.strictEqual(reads, 0)
      assert.strictEqual(Effect.runSync(m.control.calls), 0)
    } finally {
      await orchestra.dispose()
    }
  })

  it("mode: null is refused naming mode, as null is for every other option", async () => {
    const m = mock()
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: m.layer }, breakers: false }))
    try {
      const error = await invalid(orchestra.executeParallelDomains("q", ["support"], { mode: null as never }))
      assert.strictEqual(error.field, "mode")
      assert.strictEqual(Effect.runSync(m.control.calls), 0)
    } finally {
      await orchestra.dispose()
    }
  })
})

describe("createOrchestra: a call's arguments", () => {
  it("are read when the call is made, also while the manager is still being built: a later change is not sent", async () => {
    const made = Effect.runSync(
      Mock.make({ name: `facade-defects-${++mocks}`, respond: (r) => `${r.messages?.length}` })
    )
    // A manager that takes a moment to build (a provider checking its endpoint, a local model loading).
    const slow = Layer.effect(ModelProvider, Effect.as(Effect.sleep("20 millis"), made.provider))
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: slow }, breakers: false }))
    try {
      const messages = [{ role: "user" as const, content: "one" }]
      const domains = ["support"]
      const texts = ["a"]
      const answer = orchestra.execute({ messages })
      const fallback = orchestra.executeWithFallback({ messages }, domains)
      const vectors = orchestra.embed(texts)
      const parts = orchestra.stream({ messages })[Symbol.asyncIterator]()
      const first = parts.next()
      // The caller goes on with its conversation (or reuses its arrays) before the answers come.
      messages.push({ role: "user", content: "two" })
      domains[0] = "nowhere"
      texts.push("b")
      assert.strictEqual((await answer).response.text, "1")
      const fell = await fallback
      assert.deepStrictEqual([fell.domain, fell.response.text], ["support", "1"])
      assert.strictEqual((await vectors).vectors.length, 1)
      const part = await first
      assert.strictEqual(!part.done && part.value._tag === "TextDelta" && part.value.text, "1")
      await parts.return!()
    } finally {
      await orchestra.dispose()
    }
  })
})
