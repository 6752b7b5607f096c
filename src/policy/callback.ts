/**
 * Callbacks a user gives that return Effects (`onRetry`, a batch's `onEvent`, a pipeline
 * step's `run` and `fallback`), called so that a mistake in one is a named defect of that
 * call and never a fiber that dies in Effect's run loop.
 *
 * Why: a value that is not an Effect, handed to the run loop (`Effect.suspend(() => 42)`),
 * ends the fiber at once with the string "Not a valid effect", skipping every handler on
 * its stack: an `Effect.exit` around it never returns, so a pipeline waiting for that step's
 * outcome waited for ever, and a batch rejected with a string instead of an outcome per item.
 *
 * @internal
 */
import { Cause, type Duration, Effect, Exit } from "effect"
import type { AiError } from "../AiError.js"
import * as Input from "../Input.js"
import type { RetryEvent } from "./plan.js"

/**
 * Whether a callback's result is a Promise (or another thenable): an `async` callback given
 * where a plain or an Effect one is expected.
 *
 * @internal
 */
export const isThenable = (value: unknown): value is PromiseLike<unknown> =>
  typeof value === "object" && value !== null && typeof (value as { then?: unknown }).then === "function"

const describe = (value: unknown): string =>
  isThenable(value) ? "a Promise (wrap it in Effect.promise or Effect.tryPromise)" : Input.kindOf(value)

/**
 * The Effect `run` returns; a `run` that throws is a defect, and one that returns anything
 * else is a defect with a `TypeError` naming the callback (`name`) and what it returned.
 *
 * @internal
 */
export const userEffect = <A, E, R>(name: string, run: () => Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.suspend(() => {
    const effect: unknown = run()
    return Effect.isEffect(effect) ? (effect as Effect.Effect<A, E, R>) : notAnEffect(name, effect)
  })

/**
 * The defect of a callback (`name`) that returned `value`, which is not an Effect: a
 * `TypeError` saying what it returned. A Promise's own rejection is handled here: it would
 * otherwise be an unhandled one, which ends a Node process.
 *
 * @internal
 */
export const notAnEffect = (name: string, value: unknown): Effect.Effect<never> =>
  Effect.die(notAnEffectError(name, value))

/**
 * The `TypeError` of {@link notAnEffect}, a Promise's rejection handled.
 *
 * @internal
 */
export const notAnEffectError = (name: string, value: unknown): TypeError => {
  if (isThenable(value)) value.then(undefined, () => undefined)
  return new TypeError(`${name} must return an Effect, got ${describe(value)}`)
}

const warned = new WeakSet<object>()

/**
 * An observer's callback (`onRetry`): what it does is the caller's business, and its failure
 * (a throw, a defect, something not an Effect) must not fail the call it observes. It is
 * logged as a warning once per callback and ignored, an interruption of its own included.
 *
 * @internal
 */
export const observe = (name: string, callback: object, run: () => Effect.Effect<void>): Effect.Effect<void> =>
  Effect.flatMap(Effect.exit(userEffect(name, run)), (exit): Effect.Effect<void> => {
    // An interruption of the caller's fiber never gets here (it skips this continuation): an
    // interruption seen here is the callback's own (`Effect.interrupt`), a failure of it like any.
    if (Exit.isSuccess(exit)) return exit
    if (warned.has(callback)) return Effect.void
    warned.add(callback)
    return Effect.logWarning(
      `the ${name} callback failed; the call goes on (later failures of this callback are not logged)`,
      Cause.squash(exit.cause)
    )
  })

/**
 * A bookkeeping callback's throw (`name`: a plan's `telemetry.response`), which must not fail the
 * call it describes: logged as a warning once per callback, later ones ignored.
 *
 * @internal
 */
export const threwOnce = (name: string, callback: object, defect: unknown): Effect.Effect<void> => {
  if (warned.has(callback)) return Effect.void
  warned.add(callback)
  return Effect.logWarning(
    `the ${name} callback threw; the call goes on (later throws of this callback are not logged)`,
    defect
  )
}

/**
 * What a caller's `onRetry` is told of a retry (`Executor.RetryInfo`).
 *
 * @internal
 */
export interface RetryNotice {
  readonly provider: string
  readonly domain?: string | undefined
  readonly attempt: number
  readonly error: AiError
  readonly delay: Duration.Duration
}

type RetryHook = (event: RetryEvent<unknown>) => Effect.Effect<void>

// One hook per callback in the process, whatever the executors, routers and plans it is given to:
// its failure is logged once per hook (`observe`), which a hook per plan (a plan per call, with a
// cache or a rate limit) made once per call.
const retryHooks = new WeakMap<(notice: RetryNotice) => Effect.Effect<void>, RetryHook>()

/**
 * A caller's `onRetry` as a plan's hook: one per callback.
 *
 * @internal
 */
export const retryHookOf = <T>(
  onRetry: (notice: RetryNotice) => Effect.Effect<void>
): ((event: RetryEvent<T>) => Effect.Effect<void>) => {
  let hook = retryHooks.get(onRetry)
  if (hook === undefined) {
    hook = (event) =>
      onRetry({
        provider: event.step.name,
        domain: event.step.domain,
        attempt: event.attempt,
        error: event.error,
        delay: event.delay
      })
    retryHooks.set(onRetry, hook)
  }
  return hook
}
