/**
 * The end of a stream's attempt: its span ended, its watch disposed, its producer interrupted, its
 * outcome recorded on its breaker permit, its scopes closed, each wait on a provider's or a user's
 * cleanup bounded by `RELEASE_GRACE`.
 *
 * @internal
 */
import { Cause, type Clock, Duration, Effect, Exit, Scope, type Tracer } from "effect"
import type { AiError } from "../AiError.js"
import { notAnEffectError } from "./callback.js"
import type { Lanes } from "./deadline.js"
import { guardDefect, guardThrew } from "./failure.js"
import { type BreakerGuard, type BreakerPermit, selfBounded } from "./plan.js"
import { answerAttributes, endSpan } from "./span.js"
import type { Attempt } from "./stream-attempt-types.js"

/**
 * How long the end of an attempt waits for its upstream's own cleanup (a connection's release) to end:
 * one that does not end by then goes on in the background, as a call's attempt that ignores its
 * interruption does, and the consumer gets its outcome (nothing hangs on a provider's finalizer).
 *
 * @internal
 */
export const RELEASE_GRACE = Duration.seconds(1)

// Closes `scope` on a fiber of its own, waited for up to `RELEASE_GRACE` (not at all once the lanes are
// closed: the shutdown). A close that ends without suspending (the usual case) costs no timer. Its
// failure (a finalizer's) is no outcome of the stream: its consumer's outcome is decided already.
const closeWithin = (scope: Scope.Closeable, lanes: Lanes): Effect.Effect<void> =>
  endWithin(Scope.close(scope, Exit.void), lanes)

// `effect` on a fiber of its own, waited for as `closeWithin` waits for a close.
const endWithin = (effect: Effect.Effect<unknown, unknown>, lanes: Lanes): Effect.Effect<void> =>
  Effect.flatMap(Effect.forkDetach(Effect.exit(effect), { startImmediately: true }), (fiber) =>
    fiber.pollUnsafe() === undefined
      ? Effect.callback<void>((resume) => {
          const watch = lanes.watch(() => resume(Effect.void))
          const removeObserver = fiber.addObserver(() => {
            watch.dispose()
            resume(Effect.void)
          })
          watch.arm(RELEASE_GRACE)
          return Effect.sync(() => {
            removeObserver()
            watch.dispose()
          })
        })
      : Effect.void
  )

/**
 * The consumer waits for an attempt whose Finish it holds: its producer is closing the upstream, which
 * it waits for up to `RELEASE_GRACE` (the attempt's watch then ends it complete).
 *
 * @internal
 */
export const graceRelease = (attempt: Attempt): void => {
  if (attempt.finish !== undefined && attempt.end === undefined) attempt.watch.arm(RELEASE_GRACE)
}

/**
 * Ends an attempt: its span ended (with `left`, the stream's end, when the consumer left it),
 * its watch disposed, its producer interrupted, its outcome recorded on its breaker permit
 * (`"ignored"`: left by the consumer, or never served: cut while it queued for the provider's
 * slot), its scope closed: waited for up to `RELEASE_GRACE`, then left to end in the background.
 *
 * @internal
 */
export const closeAttempt = (
  attempt: Attempt,
  outcome: Exit.Exit<void, AiError> | "ignored",
  clock: Clock.Clock,
  lanes: Lanes,
  left?: Exit.Exit<void, AiError> | undefined
) =>
  Effect.suspend(() => {
    if (attempt.span !== undefined) endAttemptSpan(attempt, attempt.span, outcome === "ignored" ? left : outcome, clock)
    attempt.watch.dispose()
    attempt.fiber?.interruptUnsafe()
    const permit = attempt.permit
    attempt.permit = undefined
    if (permit === undefined) return closeScopes(attempt, lanes)
    const record = recordOf(permit, attempt.served ? outcome : "ignored", attempt.step.name)
    // One that threw or returned no Effect: the stream's defect naming it, its scopes closed all the same.
    if (!Effect.isEffect(record)) return Effect.andThen(closeScopes(attempt, lanes), Effect.die(record))
    // A user's breaker whose record does not end would hold the stream's end (and its next attempt) for ever.
    const breaker = attempt.step.breaker!
    const bounded = selfBounded.has(breaker)
      ? record
      : endWithin(
          Effect.catchCause(record, (cause) => recordFailed(breaker, attempt.step.name, cause)),
          lanes
        )
    // Closed whatever the record does: one that failed, died or was cut held the upstream and the attempt's
    // scope (its permit, its slot when its producer does not end) until the stream's own scope closed.
    return Effect.ensuring(
      bounded,
      Effect.suspend(() => closeScopes(attempt, lanes))
    )
  })

// A permit's record of `outcome`, or the defect of a user's record that threw or returned no Effect (named as a
// call's breaker's execute is, `step.ts`).
const recordOf = (
  permit: BreakerPermit,
  outcome: Exit.Exit<void, AiError> | "ignored",
  step: string
): Effect.Effect<void> | Error => {
  try {
    const record = permit.record(outcome)
    return Effect.isEffect(record) ? record : guardDefect(notAnEffectError("the circuit breaker's record", record))
  } catch (defect) {
    return guardDefect(guardThrew("the circuit breaker's record", step, defect))
  }
}

const recordWarned = new WeakSet<object>()

// A user's record that fails (its store down) leaves its breaker without that outcome: the stream's outcome
// stands, and the failure is logged once per breaker (a store that is down would log a line per stream).
const recordFailed = (breaker: BreakerGuard, step: string, cause: Cause.Cause<unknown>): Effect.Effect<void> => {
  if (recordWarned.has(breaker) || Cause.hasInterruptsOnly(cause)) return Effect.void
  recordWarned.add(breaker)
  return Effect.logWarning(
    `the circuit breaker's record failed (step ${step}); the stream's outcome stands, unrecorded (later failures of this breaker's record are not logged)`,
    Cause.squash(cause)
  )
}

// The upstream's scope first, bounded (unless the producer closed it at its Finish: no fiber then), then
// the attempt's own, which holds only what the attempt itself put there (its slot, its breaker permit).
const closeScopes = (attempt: Attempt, lanes: Lanes): Effect.Effect<void> =>
  attempt.upstream.state._tag === "Open"
    ? Effect.andThen(closeWithin(attempt.upstream, lanes), Scope.close(attempt.scope, Exit.void))
    : Scope.close(attempt.scope, Exit.void)

// An attempt its consumer left ends as the stream did (cancelled, cut), not as its producer
// (interrupted when the stream closed).
const endAttemptSpan = (
  attempt: Attempt,
  span: Tracer.Span,
  outcome: Exit.Exit<void, AiError> | undefined,
  clock: Clock.Clock
): void => {
  const exit = outcome ?? Exit.interrupt()
  if (Exit.isSuccess(exit) && attempt.finish !== undefined) {
    for (const [key, value] of Object.entries(answerAttributes(attempt.finish))) span.attribute(key, value)
  }
  endSpan(span, clock, exit)
}
