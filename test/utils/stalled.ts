/**
 * Drives a provider stream whose server stalls after its final event (the connection left
 * open, no `[DONE]`): the test clock steps a second at a time, far from the idle deadline the
 * tests set (20 seconds), until the stream ends.
 */
import { assert } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, Stream } from "effect"
import { TestClock } from "effect/testing"
import type { AiError } from "../../src/AiError.js"
import type { StreamPart } from "../../src/Model.js"
import { pause } from "./httpServer.js"

/** The stream's parts; it must have ended successfully within 10 steps of the clock. */
export const drainStalled = (
  stream: Stream.Stream<StreamPart, AiError>,
  label = ""
): Effect.Effect<ReadonlyArray<StreamPart>> =>
  Effect.gen(function* () {
    const parts: Array<StreamPart> = []
    const fiber = yield* stream.pipe(
      Stream.runForEach((part) => Effect.sync(() => parts.push(part))),
      Effect.exit,
      Effect.forkChild
    )
    while (parts.length < 1 && fiber.pollUnsafe() === undefined) yield* Effect.promise(() => pause(5))
    // The final event may come in a later read: step the clock, never near the idle deadline.
    let waited = 0
    while (fiber.pollUnsafe() === undefined && waited < 10) {
      yield* Effect.promise(() => pause(20))
      yield* TestClock.adjust("1 second")
      waited++
    }
    assert.isBelow(waited, 10, label)
    const exit = yield* Fiber.join(fiber)
    assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? `${label} ${Cause.pretty(exit.cause)}` : "")
    return parts
  })
