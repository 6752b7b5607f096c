/**
 * A step as given to `fromSteps` or the builder, checked field by field: its name, its `dependsOn`,
 * its `run` and its policies (a typed `PipelineError` naming the field, never a throw).
 *
 * @internal
 */
import { type Duration, Result } from "effect"
import * as Input from "../Input.js"
import { otherSeries } from "../Metrics.js"
import { decodeRetry, type RetryPolicy } from "../Policy.js"
import { textIssue } from "../stats/labels.js"
import type { FallbackDef, Policies, StepDef } from "./definition.js"
import { invalidStep, type PipelineError } from "./errors.js"
import { type Checked, isRecord, type Known, known, readKnown } from "./fields.js"

const optionFields = known([
  "timeout",
  "totalTimeout",
  "retry",
  "fallback",
  "breaker",
  "rateLimit",
  "stats",
  "description"
])
const specFields = known([...optionFields.list, "name", "dependsOn", "run"])

const fieldsOf = (
  input: object,
  fields: Known,
  at: string,
  step: string | undefined
): Checked<Readonly<Record<string, unknown>>> =>
  Result.mapError(readKnown(input, fields, at, "field"), (issue) => fromIssue(issue, step))

const label = (at: string, field: string): string => `${at}.${field}`

const fromIssue = (issue: Input.Issue, step: string | undefined, prefix = ""): PipelineError =>
  invalidStep(`${prefix}${issue.path}`, issue.message, step)

const threw = (path: string, what: string, error: unknown): Input.Issue => ({
  path,
  message: `${what} threw: ${Input.thrownMessage(error)}`,
  cause: error
})

/**
 * The longest step name (and name in a `dependsOn`), as an HTTP agent's task id (`agent/checks.ts`): a name
 * is in the reason of each dependent it skips, in every outcome and log line, and a governed step's is
 * its series' label.
 */
export const maxNameLength = 1_000

const counted = (n: number): string => n.toLocaleString("en-US")

/**
 * A step's (or a batch task's) `dependsOn`: absent is none; anything but an array of
 * non-empty names is refused, `null` included (as every other field refuses it). The path
 * is `dependsOn` or `dependsOn[i]`. Read once, into a list of its own: an element or a length
 * whose reading throws (a `Proxy`'s trap) is its issue.
 */
export const checkDependsOn = (input: unknown): Input.Checked<ReadonlyArray<string>> => {
  if (input === undefined) return Result.succeed([])
  if (!Array.isArray(input)) {
    return Result.fail({ path: "dependsOn", message: `expected an array of step names, got ${Input.shown(input)}` })
  }
  let length: number
  try {
    length = input.length
  } catch (error) {
    return Result.fail(threw("dependsOn", "reading its length", error))
  }
  const names: Array<string> = []
  for (let i = 0; i < length; i++) {
    let dep: unknown
    try {
      dep = input[i]
    } catch (error) {
      return Result.fail(threw(`dependsOn[${i}]`, "reading it", error))
    }
    if (typeof dep !== "string" || dep.length === 0) {
      return Result.fail({ path: `dependsOn[${i}]`, message: `expected a step name, got ${Input.shown(dep)}` })
    }
    if (dep.length > maxNameLength) {
      return Result.fail({
        path: `dependsOn[${i}]`,
        message: `expected a step name of at most ${counted(maxNameLength)} characters, got ${counted(dep.length)}`
      })
    }
    names.push(dep)
  }
  return Result.succeed(names)
}

const nonEmptyString = (
  at: string,
  field: string,
  input: unknown,
  step: string | undefined
): Checked<string | undefined> =>
  input === undefined || (typeof input === "string" && input.length > 0)
    ? Result.succeed(input)
    : Result.fail(invalidStep(label(at, field), `expected a non-empty string, got ${Input.shown(input)}`, step))

// A step's breaker key, limit key and stats name label series: the reserved overflow name would
// have no series of its own (a breaker without a gauge) or add its figures to the overflow's. Each is
// bounded as a step name is: it is in the step's span, its breaker's and limit's errors and log lines.
const seriesName = (
  at: string,
  field: string,
  input: unknown,
  step: string | undefined
): Checked<string | undefined> =>
  input === otherSeries
    ? Result.fail(
        invalidStep(label(at, field), `"${input}" is reserved: the names past a series bound count under it`, step)
      )
    : Result.flatMap(nonEmptyString(at, field, input, step), (name) => {
        if (name !== undefined && name.length > maxNameLength) {
          return Result.fail(
            invalidStep(
              label(at, field),
              `expected at most ${counted(maxNameLength)} characters, got ${counted(name.length)}`,
              step
            )
          )
        }
        const text = name === undefined ? undefined : textIssue(name, label(at, field))
        return text === undefined ? Result.succeed(name) : Result.fail(fromIssue(text, step))
      })

// Its fields are read once, each in a `try`: a getter or `Proxy` trap that throws is the field's issue.
const checkFallback = (at: string, input: unknown, step: string | undefined): Checked<FallbackDef | undefined> => {
  if (input === undefined) return Result.succeed(undefined)
  const path = label(at, "fallback")
  if (isRecord(input)) {
    let keys: ReadonlyArray<string>
    try {
      keys = Object.keys(input)
    } catch (error) {
      return Result.fail(fromIssue(threw(path, "listing its fields", error), step))
    }
    const key = keys.length === 1 ? keys[0] : undefined
    if (key === "value" || key === "step") {
      let field: unknown
      try {
        field = input[key]
      } catch (error) {
        return Result.fail(fromIssue(threw(label(path, key), "reading it", error), step))
      }
      if (key === "value") return Result.succeed({ _tag: "Value", value: field })
      if (typeof field === "function") {
        return Result.succeed({ _tag: "Step", run: field as Extract<FallbackDef, { _tag: "Step" }>["run"] })
      }
    }
  }
  return Result.fail(
    invalidStep(path, `expected { value } or { step: (context) => Effect }, got ${Input.shown(input)}`, step)
  )
}

const checkDuration = (
  at: string,
  field: string,
  input: unknown,
  step: string | undefined
): Checked<Duration.Duration | undefined> => {
  if (input === undefined) return Result.succeed(undefined)
  const checked = Input.duration(label(at, field), input)
  return Result.isSuccess(checked) ? Result.succeed(checked.success) : Result.fail(fromIssue(checked.failure, step))
}

const checkRetry = (
  at: string,
  input: unknown,
  step: string | undefined
): Checked<RetryPolicy | "executor" | undefined> => {
  if (input === undefined || input === false) return Result.succeed(undefined)
  if (input === true) return Result.succeed("executor")
  if (!isRecord(input)) {
    return Result.fail(
      invalidStep(
        label(at, "retry"),
        `expected true, false or a retry policy such as { maxAttempts: 3 }, got ${Input.shown(input)}`,
        step
      )
    )
  }
  const decoded = decodeRetry(input, label(at, "retry"))
  return Result.isSuccess(decoded) ? Result.succeed(decoded.success) : Result.fail(fromIssue(decoded.failure, step))
}

/**
 * Checks a step's options (`at` is the step's path, `steps[2]`), refusing unknown fields.
 */
export const checkPolicies = (input: unknown, at: string, step: string | undefined): Checked<Policies> => {
  if (input === undefined) return policiesOf({}, at, step)
  if (!isRecord(input)) return Result.fail(invalidStep(at, `expected an object, got ${Input.shown(input)}`, step))
  return Result.flatMap(fieldsOf(input, optionFields, at, step), (fields) => policiesOf(fields, at, step))
}

// Plain checks in turn, not a `Result.gen`: a generated pipeline (an agent batch's 200,000 tasks)
// checks every step, and a generator per step was most of that time.
const policiesOf = (
  fields: Readonly<Record<string, unknown>>,
  at: string,
  step: string | undefined
): Checked<Policies> => {
  const timeout = checkDuration(at, "timeout", fields.timeout, step)
  if (Result.isFailure(timeout)) return Result.fail(timeout.failure)
  const totalTimeout = checkDuration(at, "totalTimeout", fields.totalTimeout, step)
  if (Result.isFailure(totalTimeout)) return Result.fail(totalTimeout.failure)
  const retry = checkRetry(at, fields.retry, step)
  if (Result.isFailure(retry)) return Result.fail(retry.failure)
  const fallback = checkFallback(at, fields.fallback, step)
  if (Result.isFailure(fallback)) return Result.fail(fallback.failure)
  const breaker = seriesName(at, "breaker", fields.breaker, step)
  if (Result.isFailure(breaker)) return Result.fail(breaker.failure)
  const rateLimit = seriesName(at, "rateLimit", fields.rateLimit, step)
  if (Result.isFailure(rateLimit)) return Result.fail(rateLimit.failure)
  const stats = seriesName(at, "stats", fields.stats, step)
  if (Result.isFailure(stats)) return Result.fail(stats.failure)
  const description = nonEmptyString(at, "description", fields.description, step)
  if (Result.isFailure(description)) return Result.fail(description.failure)
  return Result.succeed({
    timeout: timeout.success,
    totalTimeout: totalTimeout.success,
    retry: retry.success,
    fallback: fallback.success,
    breaker: breaker.success,
    rateLimit: rateLimit.success,
    stats: stats.success,
    description: description.success
  })
}

export const isGoverned = (p: Policies): boolean =>
  p.timeout !== undefined ||
  p.totalTimeout !== undefined ||
  p.retry !== undefined ||
  p.fallback !== undefined ||
  p.breaker !== undefined ||
  p.rateLimit !== undefined ||
  p.stats !== undefined

/**
 * Checks one step as given to `fromSteps` (or the builder): a non-empty `name`, `dependsOn`
 * an array of names, `run` a function, and its options.
 */
export const checkSpec = (given: unknown, at: string): Checked<StepDef> => {
  if (!isRecord(given))
    return Result.fail(
      invalidStep(at, `expected a step { name, dependsOn, run }, got ${Input.shown(given)}`, undefined)
    )
  const read = fieldsOf(given, specFields, at, undefined)
  if (Result.isFailure(read)) return Result.fail(read.failure)
  const spec = read.success
  const name = spec.name
  if (typeof name !== "string" || name.length === 0) {
    return Result.fail(
      invalidStep(label(at, "name"), `expected a non-empty string, got ${Input.shown(name)}`, undefined)
    )
  }
  if (name.length > maxNameLength) {
    return Result.fail(
      invalidStep(
        label(at, "name"),
        `expected at most ${counted(maxNameLength)} characters, got ${counted(name.length)}`,
        undefined
      )
    )
  }
  const dependsOn = checkDependsOn(spec.dependsOn)
  if (Result.isFailure(dependsOn)) return Result.fail(fromIssue(dependsOn.failure, name, `${at}.`))
  if (typeof spec.run !== "function") {
    return Result.fail(
      invalidStep(label(at, "run"), `expected a function returning an Effect, got ${Input.shown(spec.run)}`, name)
    )
  }
  const run = spec.run as StepDef["run"]
  return Result.flatMap(policiesOf(spec, at, name), (policies) =>
    checkSeries(
      { ...policies, name, deps: Array.from(new Set(dependsOn.success)), run, governed: isGoverned(policies) },
      at
    )
  )
}

/**
 * Checks the name a governed step's series takes when it has no `stats` name: its own, as the
 * series' provider, which must not be the overflow's (`"(other)"`) nor hold a lone surrogate,
 * as `stats` must not.
 */
export const checkSeries = (def: StepDef, at: string): Checked<StepDef> => {
  if (!def.governed || def.stats !== undefined) return Result.succeed(def)
  if (def.name === otherSeries) {
    return Result.fail(
      invalidStep(
        label(at, "name"),
        `"${def.name}" is reserved: a governed step counts under its name, and the names past a series bound count under this one; give the step a stats name or another name`,
        def.name
      )
    )
  }
  const text = textIssue(def.name, label(at, "name"))
  return text === undefined ? Result.succeed(def) : Result.fail(fromIssue(text, def.name))
}
