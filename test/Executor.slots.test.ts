import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, Stream } from "effect"
import { TestClock } from "effect/testing"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import * as Mock from "../src/Model/Mock.js"

const ask = { prompt: "hello" }

/** An executor over a mock serving one call at once in `latency`, behind a memory breaker opening after `failMax` failures. */
const over = (latency: Mock.Options["latency"], failMax: number) =>
  Effect.gen(function* () {
    const context = yield* Layer.build(
      Executor.layerWithStats().pipe(
        Layer.provideMerge(Mock.layer({ latency, maxConcurrency: 1 })),
        Layer.provideMerge(CircuitBreaker.layerMemory({ failMax, resetTimeout: "1 minute" }))
      )
    )
    return Context.get(context, Executor.Executor)
  })

describe("provider slots and the breaker", () => {
  it.effect(
    "attempts whose deadline struck while they queued for the provider's slot count on no breaker: the provider never saw them",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const executor = yield* over("10 seconds", 2)
          // One call served (it will time out: a real failure of the provider), four queued behind it.
          const fiber = yield* Effect.forkChild(
            Effect.forEach(
              Array.from({ length: 5 }, () => ask),
              (request) => Effect.flip(executor.execute(request, { timeout: "1 second", retry: false })),
              { concurrency: "unbounded" }
            )
          )
          yield* TestClock.adjust("1 second")
          const errors = yield* Fiber.join(fiber)
          // Every caller has its TimeoutError, queued or served.
          assert.deepStrictEqual(
            errors.map((error) => error._tag),
            ["TimeoutError", "TimeoutError", "TimeoutError", "TimeoutError", "TimeoutError"]
          )
          // One failure counted (the call the provider served), under failMax 2: the circuit stays closed.
          yield* TestClock.adjust("10 seconds")
          const next = yield* Effect.forkChild(executor.execute(ask, { timeout: "20 seconds", retry: false }))
          yield* TestClock.adjust("10 seconds")
          const answer = yield* Fiber.join(next)
          assert.isString(answer.text)
        })
      )
  )

  it.effect("attempts the provider served and that timed out still count: two open the circuit", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const executor = yield* over("10 seconds", 2)
        for (let i = 0; i < 2; i++) {
          const call = yield* Effect.forkChild(
            Effect.flip(executor.execute(ask, { timeout: "1 second", retry: false }))
          )
          yield* TestClock.adjust("1 second")
          assert.strictEqual((yield* Fiber.join(call))._tag, "TimeoutError")
          // The provider's slot frees when the cut call has stopped.
          yield* TestClock.adjust("10 seconds")
        }
        const refused = yield* Effect.flip(executor.execute(ask, { timeout: "1 second", retry: false }))
        assert.strictEqual(refused._tag, "CircuitOpenError")
      })
    )
  )
})

describe("provider slots and a stream's first-chunk deadline", () => {
  it.effect(
    "a stream queued for the provider's slot fails at its first-chunk deadline (it covers the wait, as an attempt's covers a call's), and its breaker does not count it",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const executor = yield* over("10 seconds", 1)
          // The first stream holds the only slot, its first chunk 10 s away.
          const holder = yield* Effect.forkChild(
            Stream.runCollect(executor.stream(ask, { firstChunkTimeout: "20 seconds" }))
          )
          yield* TestClock.adjust("10 millis")
          const queued = yield* Effect.forkChild(
            Effect.flip(Stream.runCollect(executor.stream(ask, { firstChunkTimeout: "1 second", retry: false })))
          )
          yield* TestClock.adjust("1 second")
          const error = yield* Fiber.join(queued)
          assert.strictEqual(error._tag, "TimeoutError")
          assert.strictEqual((error as { readonly limit: string }).limit, "firstChunk")
          // failMax 1: had the queued stream counted, the circuit would be open now.
          yield* TestClock.adjust("10 seconds")
          const parts = yield* Fiber.join(holder)
          assert.isAbove(parts.length, 0)
          const after = yield* Effect.forkChild(
            Stream.runCollect(executor.stream(ask, { firstChunkTimeout: "20 seconds" }))
          )
          yield* TestClock.adjust("11 seconds")
          assert.isAbove((yield* Fiber.join(after)).length, 0)
        })
      )
  )
})
