/**
 * Pipeline definitions: what a step and a checked pipeline are. Every step field and run option is
 * checked where it enters (a typed `PipelineError` naming the field, never a throw): a step's in
 * checks.ts (the object read in fields.ts), the run options in options.ts; the DAG is validated
 * with `effect/Graph` in graph.ts (unknown dependencies, duplicate names, cycles named in order).
 *
 * Names are kept in `Map`s and records without a prototype, so any string, `__proto__`
 * included, is a step name like any other.
 *
 * @internal
 */
import type { Duration, Effect, Graph } from "effect"
import type { RetryPolicy } from "../Policy.js"

export {
  checkDependsOn,
  checkPolicies,
  checkSeries,
  checkSpec,
  isGoverned,
  maxNameLength
} from "./checks.js"
export { type Known, known } from "./fields.js"
export { build, checkAdded } from "./graph.js"
export { checkRunOptions, defaultConcurrency, optionsOf } from "./options.js"

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

/** An empty record without a prototype: `__proto__`, `constructor` are keys like any other. */
export const record = <A>(): Record<string, A> => Object.create(null) as Record<string, A>

/** The outputs of a step's dependencies, by name. */
export const depsOf = (def: StepDef, outputs: ReadonlyMap<string, unknown>): Record<string, unknown> => {
  const deps = record<unknown>()
  for (const dep of def.deps) deps[dep] = outputs.get(dep)
  return deps
}
