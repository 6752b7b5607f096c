/**
 * Pipeline definitions: every step field and run option checked where it enters (a typed
 * `PipelineError` naming the field, never a throw), and the DAG validated with
 * `effect/Graph` (unknown dependencies, duplicate names, cycles named in order).
 *
 * Names are kept in `Map`s and records without a prototype, so any string, `__proto__`
 * included, is a step name like any other.
 *
 * @internal
 */
import { type Duration, type Effect, Graph, Option, Result } from "effect"
import * as Input from "../Input.js"
import { otherSeries } from "../Metrics.js"
import { textIssue } from "../stats/labels.js"
import { decodeRetry, type RetryPolicy } from "../Policy.js"
import { invalidOption, invalidStep, PipelineError } from "./errors.js"

/** What a step's effect receives. */
export interface Context {
  readonly input: unknown
  readonly deps: Record<string, unknown>
}

/** Why a step's own effect produced no output (see `Pipeline.Failure`). */
export type Failure =
  | { readonly _tag: "Failed"; readonly error: unknown }
  | { readonly _tag: "TimedOut"; readonly timeout: Duration.Duration }

export type FallbackDef =
  | { readonly _tag: "Value"; readonly value: unknown }
  | {
      readonly _tag: "Step"
      readonly run: (context: Context & { readonly failure: Failure }) => Effect.Effect<unknown, unknown, unknown>
    }

/** A step's policies, checked. */
export interface Policies {
  readonly timeout: Duration.Duration | undefined
  readonly totalTimeout: Duration.Duration | undefined
  /** `"executor"`: the executor's own policy (`retry: true`). */
  readonly retry: RetryPolicy | "executor" | undefined
  readonly fallback: FallbackDef | undefined
  readonly breaker: string | undefined
  readonly rateLimit: string | undefined
  readonly stats: string | undefined
  readonly description: string | undefined
}

export interface StepDef extends Policies {
  readonly name: string
  readonly deps: ReadonlyArray<string>
  readonly run: (context: Context) => Effect.Effect<unknown, unknown, unknown>
  /** Runs through the executor's policy pipeline (some policy was given). */
  readonly governed: boolean
}

export interface Definition {
  readonly steps: ReadonlyArray<StepDef>
  /** Topological order. */
  readonly order: ReadonlyArray<StepDef>
  readonly graph: Graph.DirectedGraph<string, void>
  /** Position of each step in `steps`. */
  readonly index: ReadonlyMap<string, number>
}

export interface RunSettings {
  readonly mode: "parallel" | "sequential"
  readonly concurrency: number
  readonly onFailure: "failFast" | "continue"
  readonly fallbackToSequential: ((failure: Failure) => boolean) | undefined
}

type Checked<A> = Result.Result<A, PipelineError>

/** The fields a check knows: a set, to refuse the others, and a list, to read them. */
export interface Known {
  readonly set: ReadonlySet<string>
  readonly list: ReadonlyArray<string>
}

export const known = (list: ReadonlyArray<string>): Known => ({ set: new Set(list), list })

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
const runFields = known(["mode", "concurrency", "onFailure", "fallbackToSequential"])

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

/**
 * The fields of an object given as a step or as options, read once into a copy: each of its own
 * keys must be `fields`' (the first other one is the issue, an unknown `noun`), and those are
 * read where they are, a class's getters and methods on its prototype included. A getter or
 * `Proxy` trap that throws is its field's issue, not a throw out of `.step` or a defect; an
 * object with none of the fields, own or inherited (a `Map`, a signal), is not taken as none.
 * `at` names the object (`steps[2]`; absent: its fields are named bare, the whole `options`).
 */
const readKnown = (
  input: object,
  fields: Known,
  at: string | undefined,
  noun: "field" | "option"
): Input.Checked<Readonly<Record<string, unknown>>> => {
  const whole = at ?? "options"
  let own: ReadonlyArray<string>
  let unknown: Input.Issue | undefined
  try {
    own = Object.keys(input)
    unknown = Input.misspeltKey(input, fields.set, at === undefined ? "" : `${at}.`, noun)
  } catch (error) {
    return Result.fail({ path: whole, message: `listing its fields threw: ${Input.thrownMessage(error)}` })
  }
  if (unknown !== undefined) return Result.fail(unknown)
  const read = Input.readFields(input, fields.list, at)
  if (Result.isFailure(read) || own.length > 0) return read
  const foreign = Object.keys(read.success).length > 0 ? undefined : Input.notOptions(input)
  return foreign === undefined ? read : Result.fail({ path: whole, message: `expected an object, got ${foreign}` })
}

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

const cycleIn = (component: ReadonlyArray<number>, graph: Graph.DirectedGraph<string, void>): Array<string> => {
  const members = new Set(component)
  const path: Array<number> = []
  const seen = new Map<number, number>()
  let node = component[0]!
  while (!seen.has(node)) {
    seen.set(node, path.length)
    path.push(node)
    node = Graph.successors(graph, node).find((n) => members.has(n))!
  }
  return [...path.slice(seen.get(node)), node].map((i) => Option.getOrThrow(Graph.getNode(graph, i)))
}

const duplicateStep = (name: string, noun = "step"): PipelineError =>
  new PipelineError({
    reason: "DuplicateStep",
    steps: [name],
    message: `${noun} ${JSON.stringify(name)} is defined twice`
  })

// Names a message shows: `steps` holds them all, a message (logged, shown) stays short when
// a generated pipeline has thousands.
const SHOWN = 10

const unknownDependency = (name: string, missing: ReadonlyArray<string>, noun = "step"): PipelineError => {
  const shown = missing.slice(0, SHOWN).map((m) => JSON.stringify(m))
  if (missing.length > SHOWN) shown.push(`and ${missing.length - SHOWN} more`)
  return new PipelineError({
    reason: "UnknownDependency",
    steps: [name, ...missing],
    message: `${noun} ${JSON.stringify(name)} depends on unknown ${noun}${missing.length > 1 ? "s" : ""} ${shown.join(", ")}`
  })
}

/** `cycle` ends where it starts: `[a, b, a]`. */
const cycleError = (cycle: ReadonlyArray<string>): PipelineError => {
  const steps = cycle.slice(0, -1)
  const path =
    steps.length > SHOWN
      ? `${steps.slice(0, SHOWN).join(" -> ")} -> … (${steps.length - SHOWN} more) -> ${steps[0]}`
      : cycle.join(" -> ")
  return new PipelineError({ reason: "Cycle", steps, message: `dependency cycle: ${path}` })
}

/**
 * Checks a step added after `has`'s steps, refusing what {@link build} would refuse for the
 * whole list. It can depend only on steps already there or on itself, so the only cycle it can
 * close is its own.
 */
export const checkAdded = (step: StepDef, has: (name: string) => boolean): PipelineError | undefined => {
  if (has(step.name)) return duplicateStep(step.name)
  const missing = step.deps.filter((dep) => dep !== step.name && !has(dep))
  if (missing.length > 0) return unknownDependency(step.name, missing)
  return step.deps.includes(step.name) ? cycleError([step.name, step.name]) : undefined
}

/**
 * Validates the DAG: duplicate names, unknown dependencies, cycles. `noun` is what the messages
 * call a step (a batch of `HttpAgent.dispatch` has tasks).
 */
export const build = (steps: ReadonlyArray<StepDef>, noun = "step"): Checked<Definition> => {
  const index = new Map<string, number>()
  for (const step of steps) {
    if (index.has(step.name)) return Result.fail(duplicateStep(step.name, noun))
    index.set(step.name, index.size)
  }
  for (const step of steps) {
    const missing = step.deps.filter((dep) => !index.has(dep))
    if (missing.length > 0) return Result.fail(unknownDependency(step.name, missing, noun))
  }
  const graph = Graph.directed<string, void>((mutable) => {
    for (const step of steps) Graph.addNode(mutable, step.name)
    for (const step of steps) {
      for (const dep of step.deps) Graph.addEdge(mutable, index.get(dep)!, index.get(step.name)!, undefined)
    }
  })
  if (!Graph.isAcyclic(graph)) {
    const component =
      Graph.stronglyConnectedComponents(graph).find(
        (c) => c.length > 1 || (c.length === 1 && Graph.hasEdge(graph, c[0]!, c[0]!))
      ) ?? []
    return Result.fail(cycleError(cycleIn(component, graph)))
  }
  const order = Array.from(Graph.indices(Graph.topo(graph)), (i) => steps[i]!)
  return Result.succeed({ steps, order, graph, index })
}

/** An empty record without a prototype: `__proto__`, `constructor` are keys like any other. */
export const record = <A>(): Record<string, A> => Object.create(null) as Record<string, A>

/** The outputs of a step's dependencies, by name. */
export const depsOf = (def: StepDef, outputs: ReadonlyMap<string, unknown>): Record<string, unknown> => {
  const deps = record<unknown>()
  for (const dep of def.deps) deps[dep] = outputs.get(dep)
  return deps
}
