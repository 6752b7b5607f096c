/**
 * What a check found wrong (an {@link Issue}), checks put together, and an issue raised: an
 * `OptionError` out of a constructor or layer, an `InvalidRequest` out of a call.
 *
 * @internal
 */
import { Effect, Result, Schema } from "effect"
import { invalidRequest, ModelError } from "../AiError.js"

/**
 * An option or configuration value was refused. `path` names the field
 * (`"breaker.failMax"`, `"domains[1].retry.maxAttempts"`).
 *
 * @since 0.2.0
 * @category errors
 */
export class OptionError extends Schema.TaggedError<OptionError>("effect-orchestra/OptionError")("OptionError", {
  path: Schema.String,
  message: Schema.String,
  /** What reading the field threw (a getter or a `Proxy` trap), when that is why it was refused. */
  cause: Schema.optional(Schema.Defect()),
  /** The other fields refused with it, when a check tells several at once (`message` says them too). */
  others: Schema.optional(
    Schema.Struct({
      shown: Schema.Array(Schema.Struct({ path: Schema.String, message: Schema.String })),
      unshown: Schema.Number
    })
  )
}) {}

/**
 * What a check found wrong.
 *
 * @since 0.2.0
 * @category models
 */
export interface Issue {
  readonly path: string
  readonly message: string
  /** What was thrown while reading the field (a getter or a `Proxy` trap), when that is the issue. */
  readonly cause?: unknown
  /** The other issues found with it, when a check tells several at once. */
  readonly others?: OtherIssues | undefined
}

/**
 * The issues a check found besides its first: the first few, and how many more it did not keep.
 *
 * @since 0.3.0
 * @category models
 */
export interface OtherIssues {
  readonly shown: ReadonlyArray<{ readonly path: string; readonly message: string }>
  readonly unshown: number
}

/**
 * @since 0.2.0
 * @category models
 */
export type Checked<A> = Result.Result<A, Issue>

/**
 * Checks a value only when it is given.
 *
 * @since 0.2.0
 * @category checks
 */
export const optional = <A, B>(input: A | undefined, check: (input: A) => Checked<B>): Checked<B | undefined> =>
  input === undefined ? Result.succeed(undefined) : check(input)

/**
 * The first failure of several checks, or their values.
 *
 * @since 0.2.0
 * @category checks
 */
export const all = <const T extends ReadonlyArray<Checked<unknown>>>(
  checks: T
): Checked<{ -readonly [K in keyof T]: T[K] extends Checked<infer A> ? A : never }> => {
  const values: Array<unknown> = []
  for (const check of checks) {
    if (Result.isFailure(check)) return Result.fail(check.failure)
    values.push(check.success)
  }
  return Result.succeed(values as never)
}

/**
 * A check's failure as a {@link OptionError}, for constructors and layers.
 *
 * @since 0.2.0
 * @category conversions
 */
export const toOptionError = (issue: Issue): OptionError => {
  const message = `invalid ${issue.path}: ${issue.message}${othersText(issue.others)}`
  return new OptionError({
    path: issue.path,
    message,
    ...("cause" in issue ? { cause: issue.cause } : {}),
    ...(issue.others === undefined ? {} : { others: issue.others })
  })
}

/** What an issue's message says of the others found with it: ` (3 problems in all; also a: ...; b: ...)`. */
const othersText = (others: OtherIssues | undefined): string =>
  others === undefined
    ? ""
    : ` (${1 + others.shown.length + others.unshown} problems in all; also ${others.shown
        .map((issue) => `${issue.path}: ${issue.message}`)
        .join("; ")}${others.unshown > 0 ? `; and ${others.unshown} more not shown` : ""})`

/**
 * The issue with its path, and those of the others found with it, renamed: the same issue
 * where a caller placed the options (a section of a file, a flag).
 *
 * @since 0.3.0
 * @category conversions
 */
export const renamed = (issue: Issue, rename: (path: string) => string): Issue => {
  const path = rename(issue.path)
  const others =
    issue.others === undefined
      ? undefined
      : {
          shown: issue.others.shown.map((other) => ({ path: rename(other.path), message: other.message })),
          unshown: issue.others.unshown
        }
  return others === undefined ? { ...issue, path } : { ...issue, path, others }
}

/**
 * An error with `OptionError`s named under `prefix` (a layer built by another, whose options
 * are a section of the outer one's: `breaker.`, `providers.main.`); any other error as is.
 *
 * @since 0.3.0
 * @category conversions
 */
export const underPath = <E>(error: E, prefix: string): E => {
  if (!(error instanceof OptionError)) return error
  return toOptionError(renamed(issueOfError(error), (path) => `${prefix}${path}`)) as E
}

/**
 * An `OptionError` back as its issue: its path, and its message without the
 * `invalid <path>: ` that {@link toOptionError} put before it.
 *
 * @since 0.3.0
 * @category conversions
 */
export const issueOfError = (error: OptionError): Issue => {
  const own = `invalid ${error.path}: `
  const told = othersText(error.others)
  let message = error.message.startsWith(own) ? error.message.slice(own.length) : error.message
  if (told !== "" && message.endsWith(told)) message = message.slice(0, message.length - told.length)
  return {
    path: error.path,
    message,
    ...(error.cause === undefined ? {} : { cause: error.cause }),
    ...(error.others === undefined ? {} : { others: error.others })
  }
}

/**
 * Runs a check in a constructor or layer: its failure is a {@link OptionError}.
 *
 * @since 0.2.0
 * @category conversions
 */
export const orOptionError = <A>(checked: Checked<A>): Effect.Effect<A, OptionError> =>
  Result.isSuccess(checked) ? Effect.succeed(checked.success) : Effect.fail(toOptionError(checked.failure))

/**
 * Runs a check on a per-call option: its failure is an `InvalidRequest` naming the field.
 *
 * @since 0.2.0
 * @category conversions
 */
export const orInvalidRequest = <A>(checked: Checked<A>, provider?: string): Effect.Effect<A, ModelError> =>
  Result.isSuccess(checked) ? Effect.succeed(checked.success) : Effect.fail(toInvalidRequest(checked.failure, provider))

/**
 * A check's failure as an `InvalidRequest` naming the field, for per-call options; what a
 * getter threw (the issue's `cause`) is the error's `cause`.
 *
 * @since 0.3.0
 * @category conversions
 */
export const toInvalidRequest = (issue: Issue, provider?: string): ModelError =>
  "cause" in issue
    ? new ModelError({
        reason: "InvalidRequest",
        field: issue.path,
        message: `invalid ${issue.path}: ${issue.message}`,
        provider,
        cause: issue.cause
      })
    : invalidRequest(issue.path, issue.message, provider)

/**
 * A check's value, or a thrown `OptionError`; for plain constructors outside Effect code
 * (`Policy.retry({...})`).
 *
 * @since 0.2.0
 * @category conversions
 */
export const getOrThrow = <A>(checked: Checked<A>): A => {
  if (Result.isFailure(checked)) throw toOptionError(checked.failure)
  return checked.success
}
