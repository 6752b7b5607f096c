/**
 * A pipeline's run options checked: `mode`, `concurrency`, `onFailure`, `fallbackToSequential`.
 *
 * @internal
 */
import { Result } from "effect"
import * as Input from "../Input.js"
import type { Failure, RunSettings } from "./definition.js"
import { invalidOption } from "./errors.js"
import { type Checked, isRecord, type Known, known, readKnown } from "./fields.js"

const runFields = known(["mode", "concurrency", "onFailure", "fallbackToSequential"])

/**
 * A value given for options (`fields` its options, any other key refused as an unknown option),
 * read once, or why it cannot be options: a `PipelineError` naming the field, or `options` for
 * anything but an object (an array included) or an object without any of them (a `Map`).
 */
export const optionsOf = (input: unknown, fields: Known = runFields): Checked<Readonly<Record<string, unknown>>> =>
  isRecord(input)
    ? Result.mapError(readKnown(input, fields, undefined, "option"), (issue) =>
        invalidOption(issue.path, issue.message)
      )
    : Result.fail(invalidOption("options", `expected an object, got ${Input.shown(input)}`))

/**
 * The most steps of a pipeline running at once when its options say nothing: as many as an
 * `HttpAgent` has requests in flight by default (`maxConnections`). Unbounded, a DAG of 200,000
 * independent steps started 200,000 fibers at once.
 */
export const defaultConcurrency = 100

/**
 * Checks run options: `mode`, `concurrency` (a whole number of at least 1, or `Infinity`;
 * `concurrencyDefault` when absent), `onFailure`, `fallbackToSequential`; unknown fields are refused.
 */
export const checkRunOptions = (
  input: unknown,
  isConcurrencyRelated: (failure: Failure) => boolean,
  concurrencyDefault: number = Number.POSITIVE_INFINITY
): Checked<RunSettings> => {
  const checked = optionsOf(input === undefined ? {} : input)
  if (Result.isFailure(checked)) return Result.fail(checked.failure)
  const options = checked.success
  const mode = Input.orDefault(options.mode, "parallel")
  if (mode !== "parallel" && mode !== "sequential") {
    return Result.fail(invalidOption("mode", `expected "parallel" or "sequential", got ${Input.shown(mode)}`))
  }
  const onFailure = Input.orDefault(options.onFailure, "failFast")
  if (onFailure !== "failFast" && onFailure !== "continue") {
    return Result.fail(invalidOption("onFailure", `expected "failFast" or "continue", got ${Input.shown(onFailure)}`))
  }
  const concurrency = Input.orDefault(options.concurrency, concurrencyDefault)
  if (
    typeof concurrency !== "number" ||
    !(concurrency === Number.POSITIVE_INFINITY || (Number.isInteger(concurrency) && concurrency >= 1))
  ) {
    return Result.fail(
      invalidOption(
        "concurrency",
        `expected a whole number of at least 1 (or Infinity), got ${Input.shown(concurrency)}`
      )
    )
  }
  const fallback = options.fallbackToSequential
  if (fallback !== undefined && typeof fallback !== "boolean" && typeof fallback !== "function") {
    return Result.fail(
      invalidOption(
        "fallbackToSequential",
        `expected a boolean or a predicate over the failure, got ${Input.shown(fallback)}`
      )
    )
  }
  return Result.succeed({
    mode,
    onFailure,
    concurrency,
    fallbackToSequential:
      fallback === true
        ? isConcurrencyRelated
        : typeof fallback === "function"
          ? (fallback as (failure: Failure) => boolean)
          : undefined
  })
}
