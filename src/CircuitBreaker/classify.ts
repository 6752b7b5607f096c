/**
 * Which outcomes count against a breaker.
 *
 * @internal
 */
import { Cause, Exit } from "effect"
import { type AiError, isAiError, type Reason } from "../AiError.js"

const countedReasons: ReadonlySet<Reason> = new Set<Reason>([
  "RateLimited",
  "Overloaded",
  "Transport",
  "Timeout",
  "Unavailable",
  "Unknown"
])

/** The caller's fault: never the provider's. */
const callersFault: ReadonlySet<string> = new Set(["InvalidRequest", "ContentFilter", "TooLarge"])

/**
 * A stream cut after text by what says nothing about its provider, as `reasonOf` labels it: its
 * own shutdown (`"ShuttingDown"`: the provider was closed, it did not fail), or another breaker's
 * refusal (`"CircuitOpen"`: the executor's stream whose resumption the next step's open circuit
 * refused), which counts for nothing unwrapped either.
 */
const cutByNoFault = (error: AiError): boolean =>
  error._tag === "StreamInterruptedError" && (error.reason === "ShuttingDown" || error.reason === "CircuitOpen")

/**
 * The default classifier (the table in `docs/circuit-breaker.md`): transient provider
 * failures, timeouts and streams the provider cut count; the caller's mistakes
 * (`InvalidRequest`, `ContentFilter`, `TooLarge`) and answers that show the provider is up
 * (`Unauthorized`, `Decode`) do not.
 *
 * @since 0.1.0
 * @category predicates
 */
export const defaultIsFailure = (error: AiError): boolean => {
  switch (error._tag) {
    case "ModelError":
      return countedReasons.has(error.reason)
    case "TimeoutError":
      return true
    case "StreamInterruptedError":
      return !callersFault.has(error.reason) && !cutByNoFault(error)
    case "FallbackExhaustedError":
      // Without a step (never from this library; a hand-made or decoded one) there is no last
      // error to judge: it counts, as a failure that says nothing else does.
      return error.attempts.length === 0 || defaultIsFailure(error.last)
    case "CircuitOpenError":
    case "ShuttingDownError":
      return false
  }
}

/**
 * What the store records.
 *
 * @internal
 */
export type Outcome = "Success" | "Failure" | "Ignored"

/**
 * Classifies a call's exit. Interruption, another breaker's refusal and shutdown (a stream
 * cut by either included) say nothing about the provider (`Ignored`, whatever the classifier
 * says); defects and failures that are not `AiError`s count; a classifier that throws counts
 * the call as a failure.
 *
 * @internal
 */
export const outcomeOf = (exit: Exit.Exit<unknown, unknown>, isFailure: (error: AiError) => boolean): Outcome => {
  if (Exit.isSuccess(exit)) return "Success"
  const cause = exit.cause
  if (Cause.hasInterruptsOnly(cause)) return "Ignored"
  if (Cause.hasDies(cause)) return "Failure"
  const found = Cause.findErrorOption(cause)
  if (found._tag === "None") return "Ignored"
  if (!isAiError(found.value)) return "Failure"
  // Never throws (a throw here would skip the record, and leave a probe's slot held for ever):
  // whatever throws, the unwrapping or the classifier, counts the call as a failure.
  try {
    const error =
      found.value._tag === "FallbackExhaustedError" && found.value.attempts.length > 0 ? found.value.last : found.value
    if (error._tag === "CircuitOpenError" || error._tag === "ShuttingDownError" || cutByNoFault(error)) return "Ignored"
    return isFailure(error) ? "Failure" : "Success"
  } catch {
    return "Failure"
  }
}
