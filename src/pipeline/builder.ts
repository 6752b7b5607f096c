/**
 * The pipeline value and its construction: `make` and `fromSteps`, and the builder's
 * `.step`, which checks each step where it is added and keeps the first refusal as the
 * pipeline's `PipelineError` (so `run` and `validate` fail with it; nothing throws).
 *
 * @internal
 */
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

const empty = R.getOrThrow(Internal.build([]))

const fromDefinition = <I, O, E, R>(
  definition: Internal.Definition,
  defaults: RunOptions,
  issue: PipelineError | undefined
): Pipeline<I, O, E, R> => {
  const self = Object.create(proto) as { -readonly [K in keyof Pipeline<I, O, E, R>]: Pipeline<I, O, E, R>[K] }
  self[TypeId] = { _I: identity, _O: identity, _E: identity, _R: identity }
  self.names = definition.order.map((def) => def.name) as Array<keyof O & string>
  self.defaults = defaults
  self.definition = definition
  self.issue = issue
  self.step = ((name: unknown, dependsOn: unknown, run: unknown, options?: unknown) => {
    if (issue !== undefined) return self
    const at = `steps[${definition.steps.length}]`
    const next = R.flatMap(
      R.flatMap(Internal.checkSpec({ name, dependsOn, run }, at), (def) =>
        R.map(Internal.checkPolicies(options, at, def.name), (policies) => {
          const merged = { ...def, ...policies }
          return { ...merged, governed: Internal.isGoverned(merged) }
        })
      ),
      (def) => Internal.build([...definition.steps, def])
    )
    return R.isSuccess(next)
      ? fromDefinition(next.success, defaults, undefined)
      : fromDefinition(definition, defaults, next.failure)
  }) as Pipeline<I, O, E, R>["step"]
  return self as Pipeline<I, O, E, R>
}

const checkDefaults = (defaults: unknown): PipelineError | undefined => {
  const checked = Internal.checkRunOptions(defaults, isConcurrencyRelated as (f: Internal.Failure) => boolean)
  return R.isFailure(checked) ? checked.failure : undefined
}

export const make = <I = void>(defaults: RunOptions = {}): Pipeline<I, {}> =>
  fromDefinition<I, {}, never, never>(empty, defaults, checkDefaults(defaults))

export const fromSteps = <I, A, E, R>(
  steps: ReadonlyArray<StepSpec<I, A, E, R>>,
  defaults: RunOptions = {}
): Effect.Effect<Pipeline<I, Record<string, A>, E, R>, PipelineError> =>
  Effect.suspend(() => {
    if (!Array.isArray(steps)) {
      return Effect.fail(
        Errors.invalidStep("steps", `expected an array of steps, got ${Errors.show(steps)}`, undefined)
      )
    }
    const defs: Array<Internal.StepDef> = []
    for (const [i, spec] of steps.entries()) {
      const checked = Internal.checkSpec(spec, `steps[${i}]`)
      if (R.isFailure(checked)) return Effect.fail(checked.failure)
      defs.push(checked.success)
    }
    const invalid = checkDefaults(defaults)
    if (invalid !== undefined) return Effect.fail(invalid)
    const definition = Internal.build(defs)
    return R.isSuccess(definition)
      ? Effect.succeed(fromDefinition<I, Record<string, A>, E, R>(definition.success, defaults, undefined))
      : Effect.fail(definition.failure)
  })
