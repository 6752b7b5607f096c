/**
 * A stream fed by plain JS callbacks, with backpressure: the producer runs in its own fiber
 * and leaves its parts in an array; each pull takes all of them. Past `max` parts not yet
 * taken, `pace` hands the producer a Promise that settles when the consumer next pulls, so
 * memory stays bounded whatever the consumer's pace, while a consumer that keeps up never
 * makes it wait. No Effect per part: a generation pushes a part per token.
 *
 * @internal
 */
import { Cause, Channel, Effect, Exit, type Scope, Stream } from "effect"
import type * as Arr from "effect/Array"

export const paced = <A, E>(
  max: number,
  produce: (push: (part: A) => void, pace: () => Promise<void> | undefined) => Effect.Effect<void, E>
): Stream.Stream<A, E> =>
  Stream.fromChannel(
    // No generator here: one made per stream gets a map of its own from V8, in the old generation,
    // which keeps the stream's state alive through every young collection until a full one.
    Channel.fromTransform((_upstream: unknown, scope: Scope.Scope) =>
      Effect.suspend(() => {
        const buffer: Array<A> = []
        let end: Exit.Exit<void, E> | undefined
        let wake: (() => void) | undefined
        let space: (() => void) | undefined
        const signal = () => {
          const w = wake
          wake = undefined
          w?.()
        }
        const push = (part: A) => {
          buffer.push(part)
          signal()
        }
        const pace = () =>
          buffer.length < max
            ? undefined
            : new Promise<void>((resolve) => {
                space = resolve
              })
        // It looks again as it registers: the consumer's fiber may have yielded to the scheduler
        // between `pull`'s look and this wait, and a part or the end pushed then woke nobody.
        const waitForParts = Effect.callback<void>((resume) => {
          if (buffer.length > 0 || end !== undefined) return resume(Effect.void)
          wake = () => resume(Effect.void)
          return Effect.sync(() => {
            wake = undefined
          })
        })
        const pull: Effect.Effect<Arr.NonEmptyReadonlyArray<A>, E | Cause.Done> = Effect.suspend(() => {
          if (buffer.length > 0) {
            const parts = buffer.splice(0) as unknown as Arr.NonEmptyReadonlyArray<A>
            const resume = space
            space = undefined
            resume?.()
            return Effect.succeed(parts)
          }
          if (end !== undefined) return Exit.isSuccess(end) ? Cause.done() : (end as Exit.Exit<never, E>)
          return Effect.andThen(waitForParts, pull)
        })
        // Interrupted when the stream's scope closes (its consumer is done with it).
        return Effect.as(
          Effect.forkIn(
            produce(push, pace).pipe(
              Effect.onExit((exit) =>
                Effect.sync(() => {
                  end = exit
                  signal()
                })
              )
            ),
            scope,
            { startImmediately: true }
          ),
          pull
        )
      })
    )
  )
