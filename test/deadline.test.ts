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

  it.effect("a watch armed after the lanes closed is cut at once as shutdown, not left to a sleeper that is gone", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const lanes = yield* Deadline.make.pipe(Scope.provide(scope))
      yield* Scope.close(scope, Exit.void)
      const ended: Array<Deadline.Ending> = []
      const watch = lanes.watch((ending) => ended.push(ending))
      assert.deepStrictEqual(ended, [], "not called before its owner armed it")
      watch.arm(Duration.seconds(1))
      assert.deepStrictEqual(ended, ["shutdown"])
      assert.strictEqual(watch.ended(), "shutdown")
      assert.strictEqual(lanes.size(), 0)
      watch.arm(Duration.seconds(1))
      yield* TestClock.adjust("2 seconds")
      assert.deepStrictEqual(ended, ["shutdown"], "called once")
    })
  )

  it.effect("a node linked after the lanes closed is ended at once as shutdown, not tracked for ever", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const lanes = yield* Deadline.make.pipe(Scope.provide(scope))
      yield* Scope.close(scope, Exit.void)
      const expired: Array<Deadline.Ending> = []
      class Node extends Deadline.Tracked {
        expire(ending: Deadline.Ending) {
          expired.push(ending)
        }
      }
      const node = new Node()
      lanes.link(node, Duration.seconds(1))
      // Its caller reads `ending` after linking (it may not be ready to be called back yet).
      assert.strictEqual(node.ending, "shutdown")
      assert.strictEqual(lanes.size(), 0)
      yield* TestClock.adjust("2 seconds")
      assert.deepStrictEqual(expired, [])
    })
  )
})
