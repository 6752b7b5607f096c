/**
 * What the rate-limit tests share: the memory layer built in the test's scope, an acquire's
 * wait on the TestClock, a refusal, and the placements a store makes for a script of calls.
 */
import { Clock, Context, Duration, Effect, Fiber, Layer } from "effect"
import { RateLimiter } from "effect/persistence"
import { TestClock } from "effect/testing"
import type { ModelError } from "../../src/AiError.js"
import * as RateLimit from "../../src/RateLimit.js"
import type * as RateLimitRedis from "../../src/RateLimit/Redis.js"

/** Builds the memory layer in the test's scope. */
export const service = (options: RateLimit.Options) =>
  Effect.map(Layer.build(RateLimit.layerMemory(options)), Context.get(RateLimit.RateLimits))

/** effect's own memory store, built in the test's scope. */
export const effectMemoryStore = Effect.map(Layer.build(RateLimiter.layerStoreMemory), (context) =>
  Context.get(context, RateLimiter.RateLimiterStore)
)

/** Forks an acquire and returns the virtual time it took to be admitted, stepping the clock by `step`. */
export const waitOf = (limits: RateLimit.Service, key: string, tokens?: number, step: Duration.Input = "1 second") =>
  Effect.gen(function* () {
    const start = yield* Clock.currentTimeMillis
    const fiber = yield* Effect.forkChild(limits.acquire(key, { tokens }))
    yield* Effect.yieldNow
    for (let i = 0; i < 10_000 && fiber.pollUnsafe() === undefined; i++) {
      yield* TestClock.adjust(step)
      yield* Effect.yieldNow
    }
    yield* Fiber.join(fiber)
    return (yield* Clock.currentTimeMillis) - start
  })

/** The refusal of an acquire (`cost`: its tokens, or the whole cost). */
export const rejection = (limits: RateLimit.Service, key: string, cost?: number | RateLimit.AcquireCost) =>
  Effect.flip(limits.acquire(key, typeof cost === "number" ? { tokens: cost } : cost)) as Effect.Effect<ModelError>

/** What a script asks of a store with aligned fixed windows of a minute. */
export interface Placing {
  /** Places `tokens` under `limit`: `"<window index>@<minutes until it starts>"`. */
  readonly place: (key: string, tokens: number, limit: number) => Effect.Effect<string, unknown>
  /** Gives back the tokens of the `i`-th placement: `"-"`. */
  readonly giveBack: (key: string, tokens: number, i: number) => Effect.Effect<string, unknown>
}

/** Runs `script` on `store`: each placement and give-back, in order (compare two stores' runs). */
export const placements = (
  store: RateLimitRedis.AlignedFixedWindow,
  script: (placing: Placing) => Effect.Effect<Array<string>, unknown>
) =>
  Effect.suspend(() => {
    const window = Duration.minutes(1)
    const placed: Array<readonly [number, number]> = []
    return script({
      place: (key, tokens, limit) =>
        Effect.map(store.fixedWindowAligned({ key, tokens, window, limit }), ([delay, start, index]) => {
          placed.push([start, index])
          return `${index}@${Math.round(delay / 60_000)}`
        }),
      giveBack: (key, tokens, i) =>
        Effect.as(store.fixedWindowRelease({ key, tokens, start: placed[i]![0], index: placed[i]![1] }), "-")
    })
  })
