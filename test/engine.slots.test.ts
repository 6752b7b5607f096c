/**
 * The engine's provider slots by name: one set of slots and one limit for a name while its calls use
 * them, none kept once they have ended (providers built per tenant or per request).
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import * as Engine from "../src/policy/engine.js"
import * as StatsModule from "../src/Stats.js"
import { Stats } from "../src/Stats.js"

const step = (name: string, maxConcurrency: number | undefined) => ({
  target: "t",
  name,
  timeout: undefined,
  retry: undefined,
  maxConcurrency
})

describe("the engine's provider slots", () => {
  it.effect("a name's slots are shared while its calls run, and let go with the last: none kept per name", () =>
    Effect.gen(function* () {
      const stats = yield* Stats
      const engine = yield* Engine.make({ stats, shutdownDeadline: Duration.seconds(1) })
      engine.pinSlot("own", 3)
      const names = Array.from({ length: 50 }, (_, i) => `tenant-${i}`)
      let inFlight = 0
      let peak = 0
      const call = () =>
        Effect.suspend(() => {
          peak = Math.max(peak, ++inFlight)
          return Effect.ensuring(
            Effect.as(Effect.sleep("1 second"), "answer"),
            Effect.sync(() => inFlight--)
          )
        })
      // Two calls per name, one slot each: the second queues behind the first.
      const fiber = yield* Effect.forkChild(
        Effect.forEach(
          names.flatMap((name) => [name, name]),
          (name) => engine.runValue({ steps: [step(name, 1)] }, call),
          { concurrency: "unbounded" }
        ),
        { startImmediately: true }
      )
      yield* TestClock.adjust("10 millis")
      assert.strictEqual(peak, names.length, "one call per name at once")
      assert.isTrue(names.every((name) => engine.slotLimit(name, undefined) === 1))
      // A caller queued for its slot and interrupted there lets it go too.
      const queued = yield* Effect.forkChild(engine.runValue({ steps: [step("tenant-0", 1)] }, call), {
        startImmediately: true
      })
      yield* Effect.yieldNow
      yield* Fiber.interrupt(queued)
      yield* TestClock.adjust("2 seconds")
      assert.strictEqual((yield* Fiber.join(fiber)).length, 2 * names.length)
      assert.strictEqual(peak, names.length)
      // Nothing kept of the names once their calls ended; the executor's own provider's limit stays.
      assert.deepStrictEqual(
        names.filter((name) => engine.slotLimit(name, undefined) !== undefined),
        []
      )
      assert.strictEqual(engine.slotLimit("own", undefined), 3)
      assert.isUndefined(engine.claimSlot("tenant-0", 5, "maxConcurrency"))
      assert.include(engine.claimSlot("own", 5, "maxConcurrency")?.message, "already has maxConcurrency 3")
    }).pipe(Effect.provide(StatsModule.layer))
  )
})
