/**
 * The breaker of an attempt that queues for a slot before it reaches its upstream (the
 * provider's `maxConcurrency` slot, or a step's own `slot`: the HTTP agents' connection slot). The
 * attempt's deadline covers the wait, but an attempt it cut there never reached the
 * upstream, and its circuit breaker must not count it: a burst queued behind a slow call
 * opened the circuit of an upstream that had failed nothing. Such an attempt reaches the
 * breaker as an interruption (ignored), and its caller still gets its `TimeoutError`.
 *
 * @internal
 */
import { Cause, Effect } from "effect"
import type { AiError, CircuitOpenError } from "../AiError.js"
import { notAnEffect } from "./callback.js"
import { executeOf, isGuardDefect } from "./failure.js"
import type { BreakerGuard } from "./plan.js"

/**
 * An attempt that queues for a slot: its owner sets `reached` to false as the attempt starts
 * and to true once the attempt holds its slot (its upstream sees it from then on). A step's
 * attempts run one after another, so one such record can serve them all.
 *
 * @internal
 */
export interface Queued {
  reached: boolean
}

// The TimeoutError of an attempt its deadline cut, if that is how it failed.
const timedOut = <E extends AiError>(cause: Cause.Cause<E>): E | undefined => {
  if (Cause.hasDies(cause)) return undefined
  const error = Cause.findErrorOption(cause)
  return error._tag === "Some" && error.value._tag === "TimeoutError" ? error.value : undefined
}

/**
 * `attempt` (queueing for its slot included, under its deadline) under `breaker`'s `key`,
 * except a `TimeoutError` (or its slot's own defect) that struck before `queued.reached`: the breaker sees it as an
 * interruption, and the caller gets it back as it was.
 *
 * @internal
 */
export const breakered = <A, E extends AiError>(
  breaker: BreakerGuard,
  key: string,
  queued: Queued,
  attempt: Effect.Effect<A, E>
): Effect.Effect<A, E | CircuitOpenError> => {
  let cut: Cause.Cause<E> | undefined
  const unseen = Effect.catchCause(attempt, (cause) => {
    // Its slot's own defect (a user's slot that threw) is no failure of the provider either.
    if (!queued.reached && (timedOut(cause) !== undefined || isGuardDefect(cause))) {
      cut = cause
      return Effect.interrupt
    }
    return Effect.failCause(cause)
  })
  const executed = executeOf(breaker, key, unseen)
  // A user's breaker that returns no Effect: named, as `step.ts` names it without a slot.
  if (!Effect.isEffect(executed)) return notAnEffect("the circuit breaker's execute", executed)
  return Effect.catchCause(executed, (cause) =>
    cut !== undefined && Cause.hasInterruptsOnly(cause) ? Effect.failCause(cut) : Effect.failCause(cause)
  )
}
