/**
 * The deadline lanes (src/policy/deadline.ts): one lane per distinct timeout, kept only while
 * it tracks something.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Exit, Scope } from "effect"
import { TestClock } from "effect/testing"
import * as Deadline from "../src/policy/deadline.js"

describe("deadline lanes", () => {
  it.effect("an emptied lane is dropped: distinct durations (jittered backoffs) leave nothing", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const lanes = yield* Deadline.make.pipe(Scope.provide(scope))
      const ended: Array<Deadline.Ending> = []
      // Streams' retry backoffs are jittered: each wait is a duration of its own.
      for (let i = 0; i < 500; i++) {
        lanes.watch((ending) => ended.push(ending)).arm(Duration.millis(100 + i * 0.37))
      }
      assert.strictEqual(lanes.lanes(), 500)
      yield* TestClock.adjust("1 second")
      assert.strictEqual(ended.length, 500)
      assert.deepStrictEqual(new Set(ended), new Set(["timeout"]))
      assert.strictEqual(lanes.size(), 0)
      assert.strictEqual(lanes.lanes(), 0, "no lane kept for a duration nothing uses any more")

      // A duration used again after its lane was dropped gets a lane that still works.
      const again: Array<Deadline.Ending> = []
      const watch = lanes.watch((ending) => again.push(ending))
      watch.arm(Duration.millis(100))
      yield* TestClock.adjust("99 millis")
      assert.deepStrictEqual(again, [])
      yield* TestClock.adjust("1 millis")
      assert.deepStrictEqual(again, ["timeout"])
      yield* Scope.close(scope, Exit.void)
    })
  )

  it.effect("a lane emptied by disposal is dropped once its sleeper wakes, and reused while it waits", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const lanes = yield* Deadline.make.pipe(Scope.provide(scope))
      const first = lanes.watch(() => {})
      first.arm(Duration.millis(50))
      first.dispose()
      assert.strictEqual(lanes.lanes(), 1, "its sleeper still waits for the deadline it last saw")
      const ended: Array<Deadline.Ending> = []
      yield* TestClock.adjust("10 millis")
      // Linked into the same lane before its sleeper woke: the lane is kept and expires it.
      lanes.watch((ending) => ended.push(ending)).arm(Duration.millis(50))
      yield* TestClock.adjust("40 millis")
      assert.deepStrictEqual(ended, [])
      assert.strictEqual(lanes.lanes(), 1)
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual(ended, ["timeout"])
      assert.strictEqual(lanes.lanes(), 0)
      yield* Scope.close(scope, Exit.void)
    })
  )
})
