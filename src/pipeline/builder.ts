/**
 * The pipeline value and its construction: `make` and `fromSteps`, and the builder's
 * `.step`, which checks each step where it is added and keeps the first refusal as the
 * pipeline's `PipelineError` (so `run` and `validate` fail with it; nothing throws).
 *
 * @internal
 */
import * as Input from "../Input.js"
import { Effect, Pipeable, Result as R } from "effect"
import { identity } from "effect/Function"
import type { Pipeline, PipelineError, RunOptions, StepSpec, TypeId as TypeIdType } from "../Pipeline.js"
import * as Internal from "./definition.js"
import * as Errors from "./errors.js"
import { isConcurrencyRelated } from "./run.js"

/** `Pipeline.TypeId`, defined here so that the builder needs nothing from the public module at runtime. */
export const TypeId: TypeIdType = Symbol.for("effect-orchestra/Pipeline") as TypeIdType

const proto = {
  pipe() {
    // biome-ignore lint/complexity/noArguments: Pipeable's own implementation pattern
    return Pipeable.pipeArguments(this, arguments)
  }
}

/**
 * The steps of a builder pipeline and of those built from it, appended in place: each pipeline
 * holds the first `length`. A step added to a pipeline that already has a successor (the
 * pipeline branches) copies its prefix first, so no pipeline ever sees another's steps.
 */
interface Chain {
  readonly steps: Array<Internal.StepDef>
  readonly index: Map<string, number>
}

const append = (chain: Chain, length: number, def: Internal.StepDef): Chain => {
  if (chain.steps.length !== length) {
    const steps = chain.steps.slice(0, length)
    chain = { steps, index: new Map(steps.map((step, i) => [step.name, i])) }
  }
  chain.index.set(def.name, length)
  chain.steps.push(def)
  return chain
}

// Each `.step` checks only what its step adds (`Internal.checkAdded`); the graph and its
// topological order are built once, when `definition` or `names` is first read (by `run`,
// `toMermaid`): a builder of n steps costs O(n) checks, not n graph builds.
const fromChain = <I, O, E, R>(
  chain: Chain,
  length: number,
  defaults: RunOptions,
  issue: PipelineError | undefined,
  built?: Internal.Definition,
  // Refused defaults fail every run, but define nothing: the steps added after them are still checked and drawn.
  defaultsIssue?: PipelineError
): Pipeline<I, O, E, R> => {
  const self = Object.create(proto) as { -readonly [K in keyof Pipeline<I, O, E, R>]: Pipeline<I, O, E, R>[K] }
  let definition = built
  let names: Array<keyof O & string> | undefined
  // The per-step checks refuse everything `build` refuses, so it cannot fail here.
  const definitionOf = () => (definition ??= R.getOrThrow(Internal.build(chain.steps.slice(0, length))))
  self[TypeId] = { _I: identity, _O: identity, _E: identity, _R: identity }
  Object.defineProperties(self, {
    names: {
      enumerable: true,
      get: () => (names ??= definitionOf().order.map((def) => def.name) as Array<keyof O & string>)
    },
    definition: { enumerable: true, get: definitionOf }
  })
  self.defaults = defaults
  self.issue = defaultsIssue ?? issue
  self.definitionIssue = issue
  const has = (name: string) => {
    const i = chain.index.get(name)
    return i !== undefined && i < length
  }
  self.step = ((name: unknown, dependsOn: unknown, run: unknown, options?: unknown) => {
    if (issue !== undefined) return self
    const at = `steps[${length}]`
    const next = R.flatMap(Internal.checkSpec({ name, dependsOn, run }, at), (def) =>
      R.flatMap(Internal.checkPolicies(options, at, def.name), (policies) => {
        const merged = { ...def, ...policies }
        return Internal.checkSeries({ ...merged, governed: Internal.isGoverned(merged) }, at)
      })
    )
    if (R.isFailure(next)) return fromChain(chain, length, defaults, next.failure, definition, defaultsIssue)
    const refused = Internal.checkAdded(next.success, has)
    return refused === undefined
      ? fromChain(append(chain, length, next.success), length + 1, defaults, undefined, undefined, defaultsIssue)
      : fromChain(chain, length, defaults, refused, definition, defaultsIssue)
  }) as Pipeline<I, O, E, R>["step"]
  return self as Pipeline<I, O, E, R>
}

// The defaults kept are the copy that was checked: a run merges its options over them, and the
// caller's object (a class's getters on its prototype, fields changed later) is not read again.
const checkDefaults = (given: RunOptions): { readonly defaults: RunOptions; readonly issue?: PipelineError } => {
  const read = Internal.optionsOf(given)
  if (R.isFailure(read)) return { defaults: given, issue: read.failure }
  const checked = Internal.checkRunOptions(read.success, isConcurrencyRelated as (f: Internal.Failure) => boolean)
  return R.isFailure(checked) ? { defaults: given, issue: checked.failure } : { defaults: { ...read.success } }
}

export const make = <I = void>(given: RunOptions = {}): Pipeline<I, {}> => {
  const { defaults, issue } = checkDefaults(given)
  return fromChain<I, {}, never, never>({ steps: [], index: new Map() }, 0, defaults, undefined, undefined, issue)
}

const unreadable = (field: string, what: string, error: unknown): PipelineError =>
  Errors.invalidStep(field, `${what} threw: ${Input.thrownMessage(error)}`, undefined)

export const fromSteps = <I, A, E, R>(
  steps: ReadonlyArray<StepSpec<I, A, E, R>>,
  given: RunOptions = {}
): Effect.Effect<Pipeline<I, Record<string, A>, E, R>, PipelineError> =>
  Effect.suspend(() => {
    if (!Array.isArray(steps)) {
      return Effect.fail(
        Errors.invalidStep("steps", `expected an array of steps, got ${Input.shown(steps)}`, undefined)
      )
    }
    // Read once, each element in a `try`: a length or an element whose reading throws (a `Proxy`'s
    // trap) is a `PipelineError` naming it, not a defect of `fromSteps`.
    let length: number
    try {
      length = steps.length
    } catch (error) {
      return Effect.fail(unreadable("steps", "reading its length", error))
    }
    const defs: Array<Internal.StepDef> = []
    for (let i = 0; i < length; i++) {
      let spec: unknown
      try {
        spec = steps[i]
      } catch (error) {
        return Effect.fail(unreadable(`steps[${i}]`, "reading it", error))
      }
      const checked = Internal.checkSpec(spec, `steps[${i}]`)
      if (R.isFailure(checked)) return Effect.fail(checked.failure)
      defs.push(checked.success)
    }
    const { defaults, issue } = checkDefaults(given)
    if (issue !== undefined) return Effect.fail(issue)
    const definition = Internal.build(defs)
    return R.isSuccess(definition)
      ? Effect.succeed(
          fromChain<I, Record<string, A>, E, R>(
            { steps: [...defs], index: new Map(definition.success.index) },
            defs.length,
            defaults,
            undefined,
            definition.success
          )
        )
      : Effect.fail(definition.failure)
  })
