/**
 * What a facade call rejects with: its signal's abort as its typed error, a failure of its fiber
 * (or of the manager's build) as an `OrchestraError`, and a `ShuttingDownError` once `dispose()`
 * has been called.
 *
 * @internal
 */
import { Cause, Duration } from "effect"
import { type AiError, isAiError, ModelError, ShuttingDownError, TimeoutError } from "../AiError.js"
import type { AbortedError, FacadeError, OrchestraError } from "../Facade.js"
import * as Input from "../Input.js"
import { describeDefect } from "../policy/failure.js"
import { isTimeoutReason } from "./input.js"

/**
 * What `createOrchestra` takes from `Facade.ts`: its error classes.
 *
 * @internal
 */
export interface Env {
  readonly AbortedError: typeof AbortedError
  readonly OrchestraError: typeof OrchestraError
}

/**
 * The facade's rejections over its error classes; made once, at load.
 *
 * @internal
 */
export const makeRejections = (env: Env) => {
  const { AbortedError, OrchestraError } = env

  /** What an aborted signal means: a timeout when its reason says so, otherwise a cancellation. */
  const abortError = (signal: AbortSignal, elapsedMillis: number, partialText?: string): AiError | AbortedError => {
    let reason: unknown
    let why = ""
    // Reading the reason may throw (a `Proxy` of a signal, a reason's getter): it runs in the signal's listener,
    // where a throw would be an uncaught exception and leave the call running. Such a reason is a cancellation.
    try {
      reason = signal.reason
      if (isAiError(reason)) return reason
      if (isTimeoutReason(reason)) {
        return new TimeoutError({
          limit: "total",
          timeout: Duration.millis(Math.max(0, elapsedMillis)),
          // A stream's text delivered before the signal fired, as a total deadline's error carries it.
          ...(partialText ? { partialText } : {})
        })
      }
      // An Error of another realm (a vm context, an iframe) is no `instanceof Error`: its `message` names it all the same.
      // Shown as a caller's value is in any message (`Input.shown`): a reason of a megabyte, or with line breaks,
      // went whole into the error's message and every log line of it.
      if (typeof reason === "object" && reason !== null) {
        const message = (reason as { readonly message?: unknown }).message
        if (typeof message === "string" && message !== "") why = `: ${Input.shown(message)}`
      } else if (typeof reason === "string") {
        if (reason !== "") why = `: ${Input.shown(reason)}`
      } else if (typeof reason === "number" || typeof reason === "boolean") {
        why = `: ${reason}`
      } else if (typeof reason === "bigint") {
        const digits = String(reason)
        why = digits.length <= 80 ? `: ${digits}` : `: a bigint of ${digits.length.toLocaleString("en-US")} characters`
      }
    } catch {
      why = ""
    }
    return new AbortedError({ message: `the call was aborted by its signal${why}`, cause: reason })
  }

  /**
   * A call's `timeout` shortened by the wait for the build (`left`) fires in the pipeline as a total
   * `TimeoutError` of `left`: the caller is told the timeout it gave, which is what passed.
   */
  const asGiven =
    (given: Duration.Duration, left: Duration.Duration) =>
    (error: unknown): never => {
      const timedOut = error instanceof OrchestraError ? error.error : undefined
      if (timedOut?._tag === "TimeoutError" && timedOut.limit === "total" && Duration.equals(timedOut.timeout, left)) {
        throw new OrchestraError(
          new TimeoutError({
            limit: "total",
            timeout: given,
            ...(timedOut.provider === undefined ? {} : { provider: timedOut.provider }),
            ...(timedOut.partialText === undefined ? {} : { partialText: timedOut.partialText })
          })
        )
      }
      throw error
    }

  const isFacadeError = (u: unknown): u is FacadeError =>
    isAiError(u) || u instanceof AbortedError || u instanceof Input.OptionError

  const shuttingDown = (message = "the orchestra has been disposed and admits no new calls") =>
    new OrchestraError(new ShuttingDownError({ message }))

  /**
   * An Error (of any realm) as it is; any other value (a layer's `Effect.fail("redis down")`, a
   * defect `{ code: 42 }`) as an `OrchestraError` carrying it: a caller's `catch` reads `.message`.
   */
  const asError = (value: unknown): unknown =>
    value instanceof Error || Object.prototype.toString.call(value) === "[object Error]"
      ? value
      : new OrchestraError(
          new ModelError({
            reason: "Unknown",
            message: `failed with a value that is no Error: ${describeDefect(value)}`,
            cause: value
          })
        )

  /** What a failed call (or build) rejects with; `disposed`: whether `dispose()` has been called. */
  const rejectionOf = (cause: Cause.Cause<unknown>, aborted: FacadeError | undefined, disposed: boolean): unknown => {
    const failure = Cause.findErrorOption(cause)
    if (failure._tag === "Some") {
      return isFacadeError(failure.value) ? new OrchestraError(failure.value) : asError(failure.value)
    }
    if (aborted !== undefined) return new OrchestraError(aborted)
    if (Cause.hasInterruptsOnly(cause)) {
      // Only `dispose()` interrupts a call once it has begun (its bound passed): the call had been admitted.
      return disposed
        ? shuttingDown("the call was still running when dispose() ended it (its disposeTimeout passed)")
        : new OrchestraError(new AbortedError({ message: "the call was interrupted" }))
    }
    return asError(Cause.squash(cause))
  }

  return { OrchestraError, abortError, asError, asGiven, shuttingDown, rejectionOf }
}

/**
 * The facade's rejections, as `makeRejections` makes them.
 *
 * @internal
 */
export type Rejections = ReturnType<typeof makeRejections>
