/**
 * The worker pool under `executeMany` and `Batch.run`: one outcome per item in input order,
 * and an interruption that completes however many items are in flight.
 *
 * Why the second matters: in effect 4.1.5, interrupting an `Effect.forEach` that is at its
 * numeric `concurrency` limit with ~800 or more fibers in flight recurses once per fiber
 * (each child's exit observer re-enters the loop that interrupts the next), the stack
 * overflows, the overflow is swallowed and the interruption never completes. The pool runs
 * its workers under `concurrency: "unbounded"`, which never takes that path; these tests
 * keep it that way.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber } from "effect"
import { TestClock } from "effect/testing"
import type { Sink } from "../src/policy/fused.js"
import { forEachPool, runStarted } from "../src/policy/pool.js"
import { setup } from "./utils/executor.js"

const IN_FLIGHT = 3_000

/** Yields until `done()` holds (at most `limit` turns). */
const until = (done: () => boolean, limit = 10_000) =>
  Effect.gen(function* () {
    for (let i = 0; i < limit && !done(); i++) yield* Effect.yieldNow
    assert.isTrue(done(), "the condition was reached")
  })

describe("forEachPool", () => {
  it.effect("one outcome per item, in input order, with at most `concurrency` running", () =>
    Effect.gen(function* () {
      let running = 0
      let peak = 0
      const items = Array.from({ length: 50 }, (_, i) => i)
      const out = yield* forEachPool(items, 7, (item, index) =>
        Effect.gen(function* () {
          running++
          peak = Math.max(peak, running)
          yield* Effect.sleep(`${(item * 7) % 5} millis`)
          running--
          return `${item}@${index}`
        })
      ).pipe(
        Effect.forkChild,
        Effect.tap(() => Effect.yieldNow)
      )
      yield* TestClock.adjust("1 second")
      const result = yield* Fiber.join(out)
      assert.deepStrictEqual(
        result,
        items.map((i) => `${i}@${i}`)
      )
      assert.strictEqual(peak, 7)
    })
  )

  it.effect(
    `interrupting ${IN_FLIGHT} items in flight completes, and every item's finalizer runs`,
    () =>
      Effect.gen(function* () {
        let started = 0
        let finalized = 0
        const items = Array.from({ length: IN_FLIGHT + 500 }, (_, i) => i)
        const fiber = yield* Effect.forkChild(
          forEachPool(items, IN_FLIGHT, () =>
            Effect.sync(() => started++).pipe(
              Effect.andThen(Effect.never),
              Effect.ensuring(Effect.sync(() => finalized++))
            )
          )
        )
        yield* until(() => started === IN_FLIGHT)
        yield* Fiber.interrupt(fiber)
        assert.strictEqual(finalized, IN_FLIGHT)
        assert.strictEqual(started, IN_FLIGHT, "no item starts after the interruption")
      }),
    20_000
  )

  it.effect("a defect in one item interrupts the others and is the pool's defect", () =>
    Effect.gen(function* () {
      let finalized = 0
      const exit = yield* Effect.exit(
        forEachPool(
          Array.from({ length: 100 }, (_, i) => i),
          100,
          (i) =>
            i === 50
              ? Effect.andThen(Effect.yieldNow, Effect.die(new Error("boom")))
              : Effect.ensuring(
                  Effect.never,
                  Effect.sync(() => finalized++)
                )
        )
      )
      assert.isTrue(exit._tag === "Failure")
      assert.include(String(exit._tag === "Failure" ? exit.cause : ""), "boom")
      assert.strictEqual(finalized, 99)
    })
  )
})

describe("executeMany and the pool", () => {
  it.effect(
    `interrupting executeMany with ${IN_FLIGHT} calls in flight completes; no call is left running`,
    () =>
      Effect.gen(function* () {
        const { executor, control } = yield* setup({ latency: "1 hour" })
        const requests = Array.from({ length: IN_FLIGHT }, (_, i) => ({ prompt: `q${i}` }))
        const fiber = yield* Effect.forkChild(
          executor.executeMany(requests, { concurrency: IN_FLIGHT, timeout: "2 hours" })
        )
        let inFlight = 0
        for (let i = 0; i < 10_000 && inFlight < IN_FLIGHT; i++) {
          yield* Effect.yieldNow
          inFlight = (yield* control.counts).inFlight
        }
        assert.strictEqual(inFlight, IN_FLIGHT)
        yield* Fiber.interrupt(fiber)
        const counts = yield* control.counts
        assert.strictEqual(counts.inFlight, 0)
        assert.strictEqual(counts.interrupted, IN_FLIGHT)
      }).pipe(Effect.scoped),
    30_000
  )
})

describe("runStarted", () => {
  it.effect("interrupted from inside an item's start: that item is cancelled too, nothing more starts", () =>
    Effect.gen(function* () {
      const started: Array<number> = []
      const cancelled: Array<number> = []
      let pool: Fiber.Fiber<void> | undefined
      let sinkOf0: Sink | undefined
      const fiber = yield* Effect.forkChild(
        runStarted({
          total: 10,
          concurrency: 1,
          done: () => undefined,
          start: (index, sink) => {
            started.push(index)
            if (index === 0) sinkOf0 = sink
            // Item 1 interrupts its own pool synchronously, while item 0's end is starting it.
            if (index === 1) pool?.interruptUnsafe()
            return {
              cancel: () => {
                cancelled.push(index)
                return undefined
              }
            }
          }
        })
      )
      pool = fiber
      yield* until(() => sinkOf0 !== undefined)
      yield* Effect.yieldNow
      sinkOf0!.done(0, Exit.void)
      yield* Fiber.await(fiber)
      assert.deepStrictEqual(started, [0, 1])
      assert.deepStrictEqual(cancelled, [1])
    })
  )
})
