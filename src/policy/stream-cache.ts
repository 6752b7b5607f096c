/**
 * A stream's cache (`StreamCache`): its parts read before the stream opens, under the total
 * deadline, and written once it ends whole. A cache never fails a stream.
 *
 * @internal
 */
import { Cause, Duration, Effect, Option } from "effect"
import { type AiError, TimeoutError } from "../AiError.js"
import type { StreamPart } from "../Model.js"
import { notAnEffect } from "./callback.js"
import type { Lanes } from "./deadline.js"
import { cutByShutdown } from "./failure.js"
import type { StreamCache } from "./stream-plan.js"

// A cache never fails a stream: a read that fails or dies is a miss, a write that does keeps
// nothing (a custom cache may do either). An interruption is not the cache's answer: it goes on.
// A custom cache's getParts or setParts that throws or returns no Effect is taken as one that died
// (a miss, a write not kept): it threw out of the stream's set-up, or handed the run loop no Effect.
const readParts = (store: StreamCache, key: string): ReturnType<StreamCache["getParts"]> => {
  try {
    const read = store.getParts(key)
    return Effect.isEffect(read) ? read : notAnEffect("the cache's getParts", read)
  } catch (defect) {
    return Effect.die(defect)
  }
}
export const writeParts = (
  store: StreamCache,
  key: string,
  parts: ReadonlyArray<StreamPart>
): ReturnType<StreamCache["setParts"]> => {
  try {
    const written = store.setParts(key, parts)
    return Effect.isEffect(written) ? written : notAnEffect("the cache's setParts", written)
  } catch (defect) {
    return Effect.die(defect)
  }
}

const missOnFailure = (cause: Cause.Cause<unknown>) =>
  Cause.hasInterrupts(cause) ? Effect.failCause(cause as Cause.Cause<never>) : Effect.succeed(Option.none())
export const keptOrNot = (cause: Cause.Cause<unknown>) =>
  Cause.hasInterrupts(cause) ? Effect.failCause(cause as Cause.Cause<never>) : Effect.void

/**
 * The parts `cache` holds for its key (`None`: a miss, or a read that failed or died). Under the total
 * deadline, as a call's lookup is: a custom cache's read that never ends held the stream for good (its
 * deadline is armed once the stream is open).
 *
 * @internal
 */
export const readCached = (
  lanes: Lanes,
  cache: { readonly store: StreamCache; readonly key: string },
  totalTimeout: Duration.Duration | undefined
): Effect.Effect<Option.Option<ReadonlyArray<StreamPart>>, AiError> =>
  Effect.flatMap(
    lanes.run(Effect.catchCause(readParts(cache.store, cache.key), missOnFailure), totalTimeout),
    (read): Effect.Effect<Option.Option<ReadonlyArray<StreamPart>>, AiError> => {
      if (read === "shutdown") return Effect.fail(cutByShutdown())
      if (read === "timeout") {
        return Effect.fail(
          new TimeoutError({ limit: "total", timeout: totalTimeout ?? Duration.zero, partialText: "" })
        )
      }
      return read
    }
  )
