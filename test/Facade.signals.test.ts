/**
 * The facade's `signal` against code that aborts it while the call is being started: whatever aborts
 * it, and whenever, the call ends with the abort's error (a call that is never cancelled never settles
 * when its provider hangs). Real clock, a scripted provider.
 */
import { getEventListeners } from "node:events"
import { runInNewContext } from "node:vm"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Stream } from "effect"
import { AbortedError, createOrchestra } from "../src/Facade.js"
import { ModelProvider, type StreamPart } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { typed } from "./utils/facade.js"

const unhandled: Array<unknown> = []
process.on("unhandledRejection", (reason) => unhandled.push(reason))

/** Settles with `"pending"` when `promise` has not settled within `millis` (a bound on a hang, not a timing). */
const within = <A>(promise: Promise<A>, millis: number) =>
  Promise.race([promise, new Promise<"pending">((resolve) => setTimeout(() => resolve("pending"), millis).unref())])

describe("createOrchestra: a signal aborted while its call starts", () => {
  it("aborted by the provider's own synchronous code, the hanging call is cancelled, not left pending for ever", async () => {
    const controller = new AbortController()
    const { provider } = Effect.runSync(Mock.make({ name: "facade-signals-sync", script: [Mock.Outcome.hang()] }))
    // A provider that aborts the caller's signal as it is called, then hangs: the abort happens inside
    // the call's start, before anything waits.
    const aborting = Layer.succeed(ModelProvider, {
      ...provider,
      generate: (request) =>
        Effect.suspend(() => {
          controller.abort(new Error("the user left"))
          return provider.generate(request)
        })
    })
    const orchestra = createOrchestra(
      Orchestra.layer({ providers: { main: aborting }, executor: { shutdownDeadline: "100 millis" } })
    )
    try {
      // Built first, so that the call starts at once, in `execute` itself.
      await orchestra.metrics()
      const call = orchestra.execute("q", { signal: controller.signal })
      const settled = await within(
        typed(call).then((error) => error),
        2000
      )
      assert.notStrictEqual(settled, "pending", "the call settled")
      assert.instanceOf(settled, AbortedError)
      assert.include((settled as AbortedError).message, "the user left")
      assert.deepStrictEqual(unhandled, [])
    } finally {
      await orchestra.dispose()
    }
  })
})

describe("createOrchestra: what an abort's error says of its reason", () => {
  it("an Error of another realm, a DOMException-like object or a number is named in the message, the reason kept as cause", async () => {
    const { provider } = Effect.runSync(Mock.make({ name: "facade-signals-reasons", random: { success: 0, hang: 1 } }))
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: Layer.succeed(ModelProvider, provider) } }))
    try {
      // An Error made in another realm (a vm context, an iframe, a test environment) is no `instanceof Error` here.
      const foreign: unknown = runInNewContext(`new Error("the tab was closed")`)
      assert.isFalse(foreign instanceof Error)
      const reasons: ReadonlyArray<readonly [unknown, string]> = [
        [foreign, '"the tab was closed"'],
        [{ name: "AbortError", message: "client disconnected" }, '"client disconnected"'],
        [499, "499"],
        // Shown as any caller's value in a message: quoted, line breaks escaped, a megabyte cut to 80 characters.
        ["line one\nline two", '"line one\\nline two"'],
        [new Error(`${"x".repeat(1_000_000)}\n`), `"${"x".repeat(80)}"… (1,000,001 characters)`]
      ]
      for (const [reason, named] of reasons) {
        // Already aborted (refused before anything runs) and aborted while the call waits on its provider.
        const before = await typed(orchestra.execute("q", { signal: AbortSignal.abort(reason) }))
        const controller = new AbortController()
        const call = typed(orchestra.execute("q", { signal: controller.signal }))
        controller.abort(reason)
        const during = await call
        for (const error of [before, during]) {
          assert.instanceOf(error, AbortedError)
          assert.strictEqual(error.message, `the call was aborted by its signal: ${named}`)
          assert.strictEqual((error as AbortedError).cause, reason)
        }
      }
      assert.deepStrictEqual(unhandled, [])
    } finally {
      await orchestra.dispose()
    }
  })
})

describe("createOrchestra: one long-lived signal across many calls", () => {
  it("10,000 calls of every kind, answered, refused or timed out, leave no listener on it", async () => {
    const { provider } = Effect.runSync(Mock.make({ name: "facade-signals-many" }))
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: Layer.succeed(ModelProvider, provider) } }))
    const signal = new AbortController().signal
    try {
      for (let i = 0; i < 10_000; i++) {
        switch (i % 5) {
          case 0:
            await orchestra.execute("q", { signal })
            break
          case 1:
            await orchestra.execute("q", { signal, timeout: "1 minute" })
            break
          case 2:
            await typed(orchestra.execute({ prompt: "" }, { signal }))
            break
          case 3:
            await orchestra.embed("q", { signal })
            break
          default:
            await orchestra.batch(["q"], { signal })
        }
      }
      assert.strictEqual(getEventListeners(signal, "abort").length, 0)
      assert.deepStrictEqual(unhandled, [])
    } finally {
      await orchestra.dispose()
    }
  }, 60_000)
})

describe("createOrchestra: a signal whose other listener stops the abort event", () => {
  it("a listener calling stopImmediatePropagation() still lets the abort cancel every kind of call", async () => {
    const { provider } = Effect.runSync(
      Mock.make({ name: "facade-signals-stop", random: { success: 0, hang: 1 }, chunkDelay: "1 millis" })
    )
    const streaming = Layer.succeed(ModelProvider, {
      ...provider,
      // Hangs after its first part: the loop is waiting for the second when the signal aborts.
      stream: () => Stream.concat(Stream.make<Array<StreamPart>>({ _tag: "TextDelta", text: "a" }), Stream.never)
    })
    const slowBuild = Layer.effect(ModelProvider, Effect.as(Effect.sleep("50 millis"), provider))
    const executor = { shutdownDeadline: "50 millis" } as const
    const built = createOrchestra(Orchestra.layer({ providers: { main: streaming }, executor }))
    const building = createOrchestra(Orchestra.layer({ providers: { main: slowBuild }, executor }))
    /** A signal that a listener registered before the call's stops: the call's own would never hear it. */
    const stopped = () => {
      const controller = new AbortController()
      controller.signal.addEventListener("abort", (event) => event.stopImmediatePropagation())
      return controller
    }
    try {
      await built.metrics()
      const execute = stopped()
      const streamed = stopped()
      const waiting = stopped()
      const batched = stopped()
      const calls = [
        typed(built.execute("q", { signal: execute.signal })).then((error) => error._tag),
        (async () => {
          const parts = built.stream("q", { signal: streamed.signal })[Symbol.asyncIterator]()
          await parts.next()
          const next = typed(parts.next())
          streamed.abort("stop")
          return (await next)._tag
        })(),
        typed(building.execute("q", { signal: waiting.signal })).then((error) => error._tag),
        // A batch is cancelled, not rejected: its items that had not started never run.
        built
          .batch(["q", "q", "q"], { signal: batched.signal, concurrency: 1 })
          .then((result) => (result.cancelled && result.notRun.length >= 2 ? "cancelled" : "not cancelled"))
      ]
      execute.abort("stop")
      waiting.abort("stop")
      batched.abort("stop")
      assert.deepStrictEqual(await within(Promise.all(calls), 2000), [
        "AbortedError",
        "AbortedError",
        "AbortedError",
        "cancelled"
      ])
      assert.deepStrictEqual(unhandled, [])
    } finally {
      await Promise.all([built.dispose(), building.dispose()])
    }
  })
})
