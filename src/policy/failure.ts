/**
 * The errors the pipeline makes itself, in one place so that every path names them the
 * same way: a provider that died or interrupted itself becomes that call's typed
 * `ModelError` (never a defect of the caller), and a call whose every step failed over
 * becomes a `FallbackExhaustedError` listing them.
 *
 * @internal
 */
import type { Cause, Effect } from "effect"
import {
  type AiError,
  type CircuitOpenError,
  type FailedAttempt,
  FallbackExhaustedError,
  isAiError,
  ModelError,
  ShuttingDownError,
  shouldFallback
} from "../AiError.js"
import * as Input from "../Input.js"
import type { BreakerGuard } from "./plan.js"

/**
 * `error` with its stack trace (and those of its `cause`, and of a fallback's attempts) written out now.
 * Until a stack trace is read, V8 keeps the functions on the stack where its error was made, with their
 * closures: an error made inside a batch's pool (a request refused, a provider that failed at once) and
 * kept by its caller as one item's outcome kept the whole batch, its requests and every answer, alive.
 * Called where an error becomes an item's outcome: on the failure path only.
 *
 * @internal
 */
export const detached = <E>(error: E): E => {
  let next: unknown = error
  // Bounded: a cause chain may be long, or loop.
  for (let depth = 0; depth < 8 && typeof next === "object" && next !== null; depth++) {
    if (next instanceof Error) next.stack
    if (next instanceof FallbackExhaustedError) for (const attempt of next.attempts) detached(attempt.error)
    next = (next as { readonly cause?: unknown }).cause
  }
  return error
}

/**
 * The error of a call or stream refused because the executor is closing.
 *
 * @internal
 */
export const shuttingDown = () =>
  new ShuttingDownError({ message: "the executor is shutting down and admits no new calls" })

/**
 * The error of a call, stream or wait cut by the executor's shutdown deadline.
 *
 * @internal
 */
export const cutByShutdown = () =>
  new ShuttingDownError({ message: "interrupted: the executor's shutdown deadline passed" })

/**
 * A defect as one line: `Name: message` for an `Error`, the value itself otherwise, each bounded as
 * `Input.thrownMessage` bounds it (a message holding a response body went whole into every error
 * message). Never a throw: describing what a provider died with must not become a second defect
 * where the first is handled.
 *
 * @internal
 */
export const describeDefect = (defect: unknown): string => {
  try {
    if (defect instanceof Error) return `${Input.thrownMessage(defect.name)}: ${Input.thrownMessage(defect)}`
  } catch {
    // A `name` or `message` getter that throws: shown as any other value is.
  }
  return Input.thrownMessage(defect)
}

/**
 * A provider call (or stream) that died or interrupted itself: its typed error, with the
 * defect as its `cause`.
 *
 * @internal
 */
export const unexpected = (
  cause: Cause.Cause<unknown>,
  provider: string,
  what: "call" | "stream" = "call"
): AiError => {
  const died = cause.reasons.find((reason) => reason._tag === "Die")
  if (died === undefined) {
    return new ModelError({ reason: "Unknown", message: `the provider ${what} was interrupted`, provider })
  }
  return new ModelError({
    reason: "Unknown",
    message: `the provider ${what} failed unexpectedly: ${describeDefect(died.defect)}`,
    provider,
    cause: died.defect
  })
}

/**
 * The defect of a caller's guard (`what`: "the slot's withPermit", "the cache's key") that threw
 * `defect` for the step `step`: an `Error` naming both, the thrown value as its `cause`.
 *
 * @internal
 */
export const guardThrew = (what: string, step: string, defect: unknown): Error =>
  new Error(`${what} threw (step ${step}): ${describeDefect(defect)}`, { cause: defect })

const guardDefects = new WeakSet<object>()

/**
 * `defect` marked as a caller's guard's (a slot's), which an attempt's end passes on as the
 * call's defect instead of making it its provider's failure (`isGuardDefect`).
 *
 * @internal
 */
export const guardDefect = <E extends Error>(defect: E): E => {
  guardDefects.add(defect)
  return defect
}

/**
 * Whether `cause` is a defect of a caller's guard (`guardDefect`).
 *
 * @internal
 */
export const isGuardDefect = (cause: Cause.Cause<unknown>): boolean =>
  cause.reasons.some((reason) => reason._tag === "Die" && guardDefects.has(reason.defect as object))

/**
 * `breaker.execute(key, effect)`; its throw rethrown naming it and the step (`guardThrew`).
 *
 * @internal
 */
export const executeOf = <A, E extends AiError>(
  breaker: BreakerGuard,
  key: string,
  effect: Effect.Effect<A, E>
): Effect.Effect<A, E | CircuitOpenError> => {
  try {
    return breaker.execute(key, effect)
  } catch (defect) {
    throw guardThrew("the circuit breaker's execute", key, defect)
  }
}

/**
 * A caller's cache's key of `request` for the step `step`; its throw is rethrown naming the
 * cache's key and the step (`guardThrew`), the call's (or stream's) defect as before.
 *
 * @internal
 */
export const cacheKeyOf = <R>(cache: { readonly key: (request: R) => string }, request: R, step: string): string => {
  try {
    return cache.key(request)
  } catch (defect) {
    throw guardThrew("the cache's key", step, defect)
  }
}

/**
 * The error of a call or stream whose user's guard (`what`: "the rate limit") interrupted itself: nobody else
 * did (a caller's interruption never gets here), and the call ends with a typed error naming it, as a
 * provider that interrupts itself does (`unexpected`), not with a bare interruption.
 *
 * @internal
 */
export const guardInterrupted = (what: string, provider: string): ModelError =>
  new ModelError({ reason: "Unknown", message: `${what} was interrupted`, provider })

/**
 * The error of an attempt whose target answered something that is no answer (`Step.answerIssue`).
 *
 * @internal
 */
export const malformedAnswer = (provider: string, issue: string): ModelError =>
  new ModelError({ reason: "Decode", message: `the provider ${provider} ${issue}`, provider, field: "response" })

/**
 * A provider call's typed failure as the call's error: an `AiError` as is; anything else (a
 * provider that breaks its contract: a plain `Error`, a string, `undefined`) becomes a
 * `ModelError` of reason `Unknown` with the value as its `cause`, so that the retry and
 * fallback predicates, the stats and the callers only ever see an `AiError`. `undefined`
 * when `failure` is an `AiError`. `what` names who failed so (a user's guard: "the cache").
 *
 * @internal
 */
export const notAnAiError = (failure: unknown, provider: string, what = "the provider call"): AiError | undefined => {
  try {
    if (isAiError(failure)) return undefined
  } catch {
    // A `_tag` getter that throws: not an AiError.
  }
  return new ModelError({
    reason: "Unknown",
    message: `${what} failed with a value that is not an AiError: ${describeDefect(failure)}`,
    provider,
    cause: failure
  })
}

/**
 * The error of a call after its last step failed with `error`: `FallbackExhaustedError`
 * when every one of its `steps` (two or more) was tried and failed over, else `error`.
 *
 * @internal
 */
export const exhaustedOr = (failures: ReadonlyArray<FailedAttempt>, steps: number, error: AiError): AiError =>
  steps > 1 && failures.length === steps && shouldFallback(error)
    ? new FallbackExhaustedError({ attempts: failures })
    : error

/**
 * An `InvalidRequest` naming `named` instead of its own field (`prompt` of the third request
 * of a batch is `requests[2].prompt`), its message too; everything else kept.
 *
 * @internal
 */
export const renamed = <E extends AiError>(error: E, named: string): E => {
  if (error._tag !== "ModelError" || error.reason !== "InvalidRequest") return error
  const field = error.field
  const message =
    field !== undefined && error.message.startsWith(`invalid ${field}:`)
      ? `invalid ${named}:${error.message.slice(`invalid ${field}:`.length)}`
      : error.message
  return new ModelError({
    reason: error.reason,
    message,
    field: named,
    provider: error.provider,
    model: error.model,
    status: error.status,
    retryAfter: error.retryAfter,
    code: error.code,
    cause: error.cause
  }) as E
}

/**
 * `error` named after `provider`, every other field kept (a rate limit's `limit`, a `cause`).
 *
 * @internal
 */
export const withProvider = (error: ModelError, provider: string): ModelError =>
  new ModelError({
    reason: error.reason,
    message: error.message,
    provider,
    model: error.model,
    status: error.status,
    retryAfter: error.retryAfter,
    field: error.field,
    rateLimit: error.rateLimit,
    limit: error.limit,
    code: error.code,
    cause: error.cause
  })
