import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Scheduler, Stream } from "effect"
import { paced } from "../../src/Model/local/paced.js"

describe("local/paced", () => {
  it.effect("a consumer that yields to the scheduler between its look and its wait misses no part and no end", () =>
    Effect.gen(function* () {
      // The producer pushes a part every scheduler turn. A consumer fiber that yielded (every
      // `maxOpsBeforeYield` instructions) between finding nothing and registering its wait
      // missed the wake-up sent meanwhile: a missed last one (the end) hung the stream.
      for (const ops of [1, 2, 3, 4, 5]) {
        for (const turns of [1, 2, 3]) {
          const stream = paced<number, never>(64, (push) =>
            Effect.gen(function* () {
              for (let i = 0; i < 5; i++) {
                for (let t = 0; t < turns; t++) yield* Effect.yieldNow
                push(i)
              }
            })
          )
          const fiber = yield* Effect.forkChild(
            Stream.runCollect(stream).pipe(Effect.provideService(Scheduler.MaxOpsBeforeYield, ops))
          )
          for (let i = 0; i < 10_000 && fiber.pollUnsafe() === undefined; i++) yield* Effect.yieldNow
          assert.isDefined(fiber.pollUnsafe(), `every ${ops} operations, a part every ${turns} turns: the stream hung`)
          assert.deepStrictEqual(yield* Fiber.join(fiber), [0, 1, 2, 3, 4])
        }
      }
    })
  )
})
