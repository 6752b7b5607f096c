/**
 * What a failed Redis call was: the {@link StoreError} a guarded call fails with, the Redis error
 * text inside the wrappers, and, told apart by node-redis's error classes, whether the client's
 * own deadline cut it and whether it certainly never reached Redis.
 *
 * @internal
 */
import { Cause, Predicate, Schema } from "effect"

/** @internal */
export class StoreError extends Schema.TaggedError<StoreError>("effect-orchestra/StoreError")("StoreError", {
  store: Schema.String,
  operation: Schema.String,
  reason: Schema.Literals(["Failed", "Timeout", "Unavailable"]),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect())
}) {}

/** @internal */
export const errorText = (failure: unknown): string => {
  let current: unknown = failure
  let text = ""
  for (let depth = 0; depth < 8 && current !== undefined && current !== null; depth++) {
    if (typeof current === "string") return current
    if (Predicate.hasProperty(current, "message") && typeof current.message === "string" && current.message !== "") {
      text = current.message
    }
    if (Predicate.hasProperty(current, "reason") && typeof current.reason === "object") current = current.reason
    else if (Predicate.hasProperty(current, "cause")) current = current.cause
    else break
  }
  if (text !== "") return text
  return Predicate.hasProperty(failure, "_tag") ? String(failure._tag) : String(failure)
}

// Whether a class named in `names` is somewhere in the chain of causes (node-redis's errors
// are told apart by class). Effect's `Cause.TimeoutError` shares the name of node-redis's `TimeoutError`
// (a command never written): it is a timeout, but says nothing of whether a command was written.
const hasCause = (failure: unknown, names: ReadonlySet<string>, effectTimeout: boolean): boolean => {
  let current: unknown = failure
  for (let depth = 0; depth < 8 && typeof current === "object" && current !== null; depth++) {
    const name = (current as { readonly constructor?: { readonly name?: unknown } }).constructor?.name
    if (typeof name === "string" && names.has(name) && (effectTimeout || !Cause.isTimeoutError(current))) return true
    current =
      Predicate.hasProperty(current, "reason") && typeof current.reason === "object"
        ? current.reason
        : Predicate.hasProperty(current, "cause")
          ? current.cause
          : undefined
  }
  return false
}

// node-redis's own deadline (`TimeoutError`: never sent, `TimeoutReadError`: no reply), and evalWithin's.
const clientTimeouts: ReadonlySet<string> = new Set(["TimeoutError", "TimeoutReadError", "EvalTimeoutError"])
// node-redis's classes of a Redis error reply.
const errorReplies: ReadonlySet<string> = new Set(["ErrorReply", "SimpleError", "BlobError"])

/**
 * Whether Redis answered the call with an error (OOM, READONLY, a script's error): Redis is there.
 *
 * @internal
 */
export const isErrorReply = (failure: unknown): boolean => hasCause(failure, errorReplies, false)

/** @internal */
export const isClientTimeout = (failure: unknown): boolean => hasCause(failure, clientTimeouts, true)

// node-redis refused the command before writing it: offline (commands are not queued), closed, or its
// deadline passed while still queued.
const unsent: ReadonlySet<string> = new Set([
  "ClientOfflineError",
  "ClientClosedError",
  "TimeoutError",
  "NotConnectedError"
])

/** @internal */
export const neverSent = (error: StoreError): boolean =>
  error.reason === "Unavailable" || (error.cause !== undefined && hasCause(error.cause, unsent, false))

/**
 * Whether Redis refused the call as a replica (`READONLY`): a primary turned replica by a failover. A Redis error
 * reply's first word is its code.
 *
 * @internal
 */
export const isReadOnly = (failure: unknown): boolean => errorText(failure).startsWith("READONLY ")

/**
 * Whether Redis refused the call by an ACL (`NOPERM`): a command or a channel the user may not use, until an
 * administrator changes it. A Redis error reply's first word is its code.
 *
 * @internal
 */
export const isNoPerm = (failure: unknown): boolean => isErrorReply(failure) && errorText(failure).startsWith("NOPERM ")

/**
 * Whether Redis refused the connection's credentials (`WRONGPASS`: a wrong user or password; `NOAUTH`: none given to a
 * Redis that asks for one). A Redis error reply's first word is its code.
 *
 * @internal
 */
export const isCredentialRefusal = (failure: unknown): boolean => {
  let current: unknown = failure
  // A connection given up by its reconnectStrategy fails with node-redis's ReconnectStrategyError, which holds the
  // reply as its `originalError`.
  for (let depth = 0; depth < 8 && typeof current === "object" && current !== null; depth++) {
    if (isErrorReply(current)) {
      const text = errorText(current)
      return text.startsWith("WRONGPASS ") || text.startsWith("NOAUTH ")
    }
    current = Predicate.hasProperty(current, "originalError")
      ? current.originalError
      : Predicate.hasProperty(current, "reason") && typeof current.reason === "object"
        ? current.reason
        : Predicate.hasProperty(current, "cause")
          ? current.cause
          : undefined
  }
  return false
}
