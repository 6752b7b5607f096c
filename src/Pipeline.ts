/**
 * Pipelines of agents: named steps with dependencies (a DAG), validated when built,
 * run with every step starting as soon as its dependencies are done.
 *
 * @since 0.1.0
 */
import type { Cause, Schedule, Types } from "effect"
import { Duration, Effect, Either, Graph, Option, Pipeable, Schema } from "effect"
import { dual, identity } from "effect/Function"
import { type AiError, isAiError, isRetryable } from "./AiError.js"
import * as internal from "./internal/pipeline.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("effect-orchestra/Pipeline")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * Why a pipeline definition was refused.
 *
 * @since 0.1.0
 * @category models
 */
export const PipelineErrorReason = Schema.Literal("UnknownDependency", "Cycle", "DuplicateStep", "InvalidOption")

/**
 * A pipeline definition is invalid: a step depends on a step that does not exist, the
 * dependencies form a cycle, or two steps share a name. `steps` names the offending
 * steps (for a cycle: in cycle order). Or a run option is invalid (`InvalidOption`):
 * `option` names it and `steps` is empty.
 *
 * @since 0.1.0
 * @category errors
 */
export class PipelineError extends Schema.TaggedError<PipelineError>("effect-orchestra/PipelineError")(
  "PipelineError",
  {
    reason: PipelineErrorReason,
    steps: Schema.Array(Schema.String),
    option: Schema.optional(Schema.String),
    message: Schema.String
  }
) {}

/**
 * `Pipeline.outputs` found steps that did not succeed.
 *
 * @since 0.1.0
 * @category errors
 */
export class PipelineFailedError extends Schema.TaggedError<PipelineFailedError>(
  "effect-orchestra/PipelineFailedError"
)("PipelineFailedError", {
  failedSteps: Schema.Array(Schema.String),
  message: Schema.String
}) {}

/**
 * What a step (or its fallback) receives: the pipeline's input and the outputs of the
 * steps it depends on.
 *
 * @since 0.1.0
 * @category models
 */
export interface StepContext<I, D> {
  readonly input: I
  readonly deps: D
}

/**
 * Why a step's own effect did not produce an output.
 *
 * @since 0.1.0
 * @category models
 */
export type Failure<E> =
  | { readonly _tag: "Failed"; readonly error: E }
  | { readonly _tag: "TimedOut"; readonly timeout: Duration.Duration }

/**
 * What replaces a failed or timed-out step: a fixed value, or another effect (which may
 * use the failure). Defects never fall back.
 *
 * @since 0.1.0
 * @category models
 */
export type Fallback<I, D, A, E, E2, R2> =
  | { readonly value: A }
  | { readonly step: (context: StepContext<I, D> & { readonly failure: Failure<E> }) => Effect.Effect<A, E2, R2> }

/**
 * Per-step policies.
 *
 * - `timeout`: a deadline for the whole step, retries included (a per-attempt deadline
 *   belongs inside the step's effect). The fallback step is not under it.
 * - `retry`: a `Schedule` fed with the step's typed errors; retries the step's effect.
 * - `fallback`: used when the step failed with a typed error or timed out.
 *
 * @since 0.1.0
 * @category models
 */
export interface StepOptions<I, D, A2, E, E2 = never, R2 = never> {
  readonly timeout?: Duration.DurationInput | undefined
  readonly retry?: Schedule.Schedule<unknown, E, never> | undefined
  /** The fallback's output type joins the step's (`A | A2`). */
  readonly fallback?: Fallback<I, D, A2, E, E2, R2> | undefined
  /** A label for diagrams (default: the step name). */
  readonly description?: string | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Timing {
  /** Clock millis when the step started. */
  readonly startedAt: number
  /** Clock millis when it ended (fallback included). */
  readonly endedAt: number
  readonly durationMs: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Succeeded<A, E> extends Timing {
  readonly status: "succeeded"
  readonly step: string
  readonly output: A
  /** Runs of the step's own effect (1 + retries). */
  readonly attempts: number
  /** Present when the output came from the fallback. */
  readonly fallback?: { readonly kind: "value" | "step"; readonly failure: Failure<E> } | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Failed<E> extends Timing {
  readonly status: "failed"
  readonly step: string
  /** The typed error (absent for a defect). */
  readonly error?: E | undefined
  readonly cause: Cause.Cause<E>
  readonly message: string
  readonly attempts: number
  /** When the fallback step failed too: what made the step fall back. */
  readonly primary?: Failure<E> | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface TimedOut extends Timing {
  readonly status: "timedOut"
  readonly step: string
  readonly timeout: Duration.Duration
  readonly attempts: number
}

/**
 * A step that was running when a fail-fast pipeline stopped.
 *
 * @since 0.1.0
 * @category models
 */
export interface Interrupted extends Timing {
  readonly status: "interrupted"
  readonly step: string
  readonly reason: string
  readonly failedStep: string
}

/**
 * A step that never ran: a dependency did not succeed (`continue`), or the pipeline
 * stopped (`failFast`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Skipped {
  readonly status: "skipped"
  readonly step: string
  readonly reason: string
  /** The dependency that did not succeed (for a stopped pipeline: the failed step). */
  readonly dependency: string
  /** The step whose failure caused the skip (the root of a chain of skips). */
  readonly failedStep: string
  /** Clock millis when the skip was decided. */
  readonly at: number
}

/**
 * @since 0.1.0
 * @category models
 */
export type StepOutcome<A, E> = Succeeded<A, E> | Failed<E> | TimedOut | Interrupted | Skipped

/**
 * How a run went about it: `parallel`, `sequential`, or a parallel run whose failures
 * were retried one at a time (`parallelThenSequential`, see `fallbackToSequential`).
 *
 * @since 0.1.0
 * @category models
 */
export type Strategy = "parallel" | "sequential" | "parallelThenSequential"

/**
 * Every step's outcome, and the figures of the run.
 *
 * @since 0.1.0
 * @category models
 */
export interface Result<O, E> {
  /** `succeeded` when every step succeeded (fallbacks included). */
  readonly status: "succeeded" | "failed"
  readonly strategy: Strategy
  readonly steps: { readonly [K in keyof O]: StepOutcome<O[K], E> }
  readonly outputs: Partial<O>
  /** Steps in the order they started. */
  readonly started: ReadonlyArray<keyof O & string>
  /** Steps that failed, timed out or were interrupted. */
  readonly failedSteps: ReadonlyArray<keyof O & string>
  readonly startedAt: number
  readonly endedAt: number
  readonly wallMs: number
  /** Sum of the durations of the steps that ran. */
  readonly busyMs: number
  /** `busyMs / wallMs` (0 when no time passed). */
  readonly parallelism: number
  /** Longest dependency chain by measured durations: no schedule can beat it. */
  readonly criticalPathMs: number
  /** With `parallelThenSequential`: the parallel attempt's outcomes. */
  readonly parallelAttempt?: { readonly [K in keyof O]: StepOutcome<O[K], E> } | undefined
}

/**
 * - `mode`: `parallel` (default) or `sequential` (topological order, one at a time).
 * - `concurrency`: most steps running at once in parallel mode (default: unbounded): a
 *   whole number of at least 1, or `Infinity`; anything else (0, negative, fractional,
 *   `NaN`) makes `run` fail with a `PipelineError` of reason `InvalidOption`.
 * - `onFailure`: `failFast` (default; interrupt running steps, skip the rest) or
 *   `continue` (skip only the dependents of a failed step).
 * - `fallbackToSequential`: after a parallel run in which a step failed for a reason that
 *   concurrency can cause (a timeout, or a retryable `AiError`: rate limited, overloaded,
 *   transport, unavailable), run the steps that did not succeed again, one at a time in
 *   topological order, keeping the outputs that succeeded. `true` uses that predicate;
 *   a function replaces it.
 *
 * @since 0.1.0
 * @category models
 */
export interface RunOptions {
  readonly mode?: "parallel" | "sequential" | undefined
  readonly concurrency?: number | undefined
  readonly onFailure?: "failFast" | "continue" | undefined
  readonly fallbackToSequential?: boolean | ((failure: Failure<unknown>) => boolean) | undefined
}

/**
 * The untyped form of a step, for pipelines defined from data (`fromSteps`).
 *
 * @since 0.1.0
 * @category models
 */
export interface StepSpec<I, A, E, R> extends StepOptions<I, Record<string, unknown>, A, E, E, R> {
  readonly name: string
  readonly dependsOn?: ReadonlyArray<string> | undefined
  readonly run: (context: StepContext<I, Record<string, unknown>>) => Effect.Effect<A, E, R>
}

type DepsOf<O, D extends ReadonlyArray<PropertyKey>> = { readonly [K in D[number] & keyof O]: O[K] }

/**
 * A validated DAG of steps. `I` is the input, `O` the outputs by step name, `E` and `R`
 * the union of the steps' errors and requirements.
 *
 * @since 0.1.0
 * @category models
 */
export interface Pipeline<I, O, E = never, R = never> extends Pipeable.Pipeable {
  readonly [TypeId]: {
    readonly _I: Types.Invariant<I>
    readonly _O: Types.Covariant<O>
    readonly _E: Types.Covariant<E>
    readonly _R: Types.Covariant<R>
  }
  /** Step names in topological order. */
  readonly names: ReadonlyArray<keyof O & string>
  readonly defaults: RunOptions
  /** @internal */
  readonly definition: internal.Definition
  /**
   * Adds a step. It may depend only on steps already added (so names are checked and
   * cycles are impossible by construction); `deps` is typed from their outputs. With names
   * widened to `string` the types cannot check them: a duplicate or unknown name then
   * throws the `PipelineError` (a defect). Build such pipelines with `fromSteps`.
   */
  step<
    const N extends string,
    const D extends ReadonlyArray<keyof O & string>,
    A,
    E1 = never,
    R1 = never,
    A2 = never,
    E2 = never,
    R2 = never
  >(
    name: N extends keyof O ? never : N,
    dependsOn: D,
    run: (context: StepContext<I, DepsOf<O, D>>) => Effect.Effect<A, E1, R1>,
    options?: StepOptions<I, DepsOf<O, D>, A2, NoInfer<E1>, E2, R2>
  ): Pipeline<I, Types.Simplify<O & { readonly [K in N]: A | A2 }>, E | E1 | E2, R | R1 | R2>
}

/**
 * The outputs of a pipeline, by step name.
 *
 * @since 0.1.0
 * @category type-level
 */
export type Outputs<P> = P extends Pipeline<infer _I, infer O, infer _E, infer _R> ? O : never

const proto = {
  pipe() {
    // biome-ignore lint/complexity/noArguments: Pipeable's own implementation pattern
    return Pipeable.pipeArguments(this, arguments)
  }
}

const fromDefinition = <I, O, E, R>(definition: internal.Definition, defaults: RunOptions): Pipeline<I, O, E, R> => {
  const self = Object.create(proto) as {
    -readonly [K in keyof Pipeline<I, O, E, R>]: Pipeline<I, O, E, R>[K]
  }
  self[TypeId] = {
    _I: identity,
    _O: identity,
    _E: identity,
    _R: identity
  }
  self.names = definition.order.map((def) => def.name) as Array<keyof O & string>
  self.defaults = defaults
  self.definition = definition
  self.step = ((name: string, dependsOn: ReadonlyArray<string>, run: internal.StepDef["run"], options?) => {
    const defs = [
      ...definition.steps,
      toDef({ ...(options ?? {}), name, dependsOn, run } as StepSpec<unknown, unknown, unknown, unknown>)
    ]
    const next = validate(defs)
    // The types rule this out; reaching it means the names were widened to `string`.
    if (Either.isLeft(next)) throw next.left
    return fromDefinition(next.right, defaults)
  }) as Pipeline<I, O, E, R>["step"]
  return self as Pipeline<I, O, E, R>
}

const toDef = (spec: StepSpec<unknown, unknown, unknown, unknown>): internal.StepDef => ({
  name: spec.name,
  deps: spec.dependsOn ?? [],
  run: spec.run as internal.StepDef["run"],
  timeout: spec.timeout === undefined ? undefined : Duration.decode(spec.timeout),
  retry: spec.retry,
  fallback:
    spec.fallback === undefined
      ? undefined
      : "step" in spec.fallback
        ? { _tag: "Step", run: spec.fallback.step as internal.FallbackStep }
        : { _tag: "Value", value: spec.fallback.value },
  description: spec.description
})

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
  const cycle = path.slice(seen.get(node))
  return [...cycle, node].map((i) => Option.getOrThrow(Graph.getNode(graph, i)))
}

const validate = (steps: ReadonlyArray<internal.StepDef>): Either.Either<internal.Definition, PipelineError> => {
  const index = new Map<string, number>()
  for (const step of steps) {
    if (index.has(step.name)) {
      return Either.left(
        new PipelineError({
          reason: "DuplicateStep",
          steps: [step.name],
          message: `step "${step.name}" is defined twice`
        })
      )
    }
    index.set(step.name, index.size)
  }
  for (const step of steps) {
    const missing = step.deps.filter((dep) => !index.has(dep))
    if (missing.length > 0) {
      return Either.left(
        new PipelineError({
          reason: "UnknownDependency",
          steps: [step.name, ...missing],
          message: `step "${step.name}" depends on unknown step${missing.length > 1 ? "s" : ""} ${missing.map((m) => `"${m}"`).join(", ")}`
        })
      )
    }
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
    const cycle = cycleIn(component, graph)
    return Either.left(
      new PipelineError({
        reason: "Cycle",
        steps: cycle.slice(0, -1),
        message: `dependency cycle: ${cycle.join(" -> ")}`
      })
    )
  }
  const order = Array.from(Graph.indices(Graph.topo(graph)), (i) => steps[i]!)
  return Either.right({ steps, order, graph, index })
}

/**
 * An empty pipeline taking `I`; add steps with `.step(name, dependsOn, run, options?)`.
 * `defaults` are run options every run starts from.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Pipeline from "effect-orchestra/Pipeline"
 *
 * const research = Pipeline.make<{ readonly question: string }>()
 *   .step("retrieve", [], ({ input }) => Effect.succeed([`doc about ${input.question}`]))
 *   .step("recall", [], () => Effect.succeed(["a memory"]))
 *   .step("reason", ["retrieve", "recall"], ({ deps }) => Effect.succeed(deps.retrieve.length + deps.recall.length))
 *
 * const program = Pipeline.run(research, { question: "why?" })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <I = void>(defaults: RunOptions = {}): Pipeline<I, {}> =>
  fromDefinition<I, {}, never, never>(Either.getOrThrow(validate([])), defaults)

/**
 * A pipeline from steps known only at runtime (configuration, task lists). Unknown
 * dependencies, cycles and duplicate names fail with a `PipelineError` naming the steps.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromSteps = <I, A, E, R>(
  steps: ReadonlyArray<StepSpec<I, A, E, R>>,
  defaults: RunOptions = {}
): Effect.Effect<Pipeline<I, Record<string, A>, E, R>, PipelineError> =>
  Effect.map(
    Either.match(validate(steps.map((s) => toDef(s as StepSpec<unknown, unknown, unknown, unknown>))), {
      onLeft: Effect.fail,
      onRight: Effect.succeed
    }),
    (definition) => fromDefinition<I, Record<string, A>, E, R>(definition, defaults)
  )

/**
 * The failures `fallbackToSequential: true` re-runs: timeouts and retryable `AiError`s.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isConcurrencyRelated = (failure: Failure<unknown>): boolean =>
  failure._tag === "TimedOut" || (isAiError(failure.error) && isRetryable(failure.error as AiError))

const invalidOption = (options: RunOptions): PipelineError | undefined => {
  const concurrency = options.concurrency
  if (
    concurrency === undefined ||
    concurrency === Number.POSITIVE_INFINITY ||
    (Number.isInteger(concurrency) && concurrency >= 1)
  ) {
    return undefined
  }
  return new PipelineError({
    reason: "InvalidOption",
    steps: [],
    option: "concurrency",
    message: `concurrency must be a whole number of at least 1 (or Infinity), got ${concurrency}`
  })
}

/**
 * Runs a pipeline. Every step's outcome is in the result: a step that fails does not fail
 * the run. The run fails only when its options are invalid (`PipelineError` with reason
 * `InvalidOption`, e.g. `concurrency: 0`), before any step starts. In parallel mode each
 * step starts as soon as its dependencies succeeded, at most `concurrency` at once.
 *
 * @since 0.1.0
 * @category running
 */
export const run: {
  <I, O, E, R>(
    self: Pipeline<I, O, E, R>,
    input: I,
    options?: RunOptions
  ): Effect.Effect<Result<O, E>, PipelineError, R>
  <I>(
    input: I,
    options?: RunOptions
  ): <O, E, R>(self: Pipeline<I, O, E, R>) => Effect.Effect<Result<O, E>, PipelineError, R>
} = dual(
  (args) => typeof args[0] === "object" && args[0] !== null && TypeId in args[0],
  <I, O, E, R>(
    self: Pipeline<I, O, E, R>,
    input: I,
    options?: RunOptions
  ): Effect.Effect<Result<O, E>, PipelineError, R> => {
    const merged = { ...self.defaults, ...options }
    const invalid = invalidOption(merged)
    if (invalid !== undefined) return Effect.fail(invalid)
    const predicate =
      merged.fallbackToSequential === true
        ? isConcurrencyRelated
        : typeof merged.fallbackToSequential === "function"
          ? merged.fallbackToSequential
          : undefined
    return internal.execute(self.definition, input, {
      mode: merged.mode ?? "parallel",
      concurrency: merged.concurrency ?? Number.POSITIVE_INFINITY,
      onFailure: merged.onFailure ?? "failFast",
      fallbackToSequential: predicate
    }) as Effect.Effect<Result<O, E>, never, R>
  }
)

/**
 * All outputs of a run, or a `PipelineFailedError` naming the steps that did not succeed.
 *
 * @since 0.1.0
 * @category getters
 */
export const outputs = <O, E>(result: Result<O, E>): Effect.Effect<O, PipelineFailedError> => {
  if (result.status === "succeeded") return Effect.succeed(result.outputs as O)
  const notDone = Object.values<StepOutcome<unknown, E>>(result.steps).filter((o) => o.status !== "succeeded")
  return Effect.fail(
    new PipelineFailedError({
      failedSteps: result.failedSteps,
      message: notDone.map(describeOutcome).join("; ")
    })
  )
}

/**
 * One line saying how a step ended (`"reason: failed (model overloaded)"`).
 *
 * @since 0.1.0
 * @category rendering
 */
export const describeOutcome: (outcome: StepOutcome<unknown, unknown>) => string = internal.describe

/**
 * @since 0.1.0
 * @category models
 */
export interface MermaidOptions<O = unknown, E = unknown> {
  readonly direction?: Graph.MermaidDirection | undefined
  /** Annotates each step with its outcome and duration. */
  readonly result?: Result<O, E> | undefined
}

/**
 * The pipeline as a Mermaid flowchart (edges point from a dependency to its dependent).
 *
 * @since 0.1.0
 * @category rendering
 */
export const toMermaid = <I, O, E, R>(self: Pipeline<I, O, E, R>, options: MermaidOptions<O, E> = {}): string => {
  const outcomes = options.result?.steps as Record<string, StepOutcome<unknown, unknown>> | undefined
  const byName = new Map(self.definition.steps.map((s) => [s.name, s]))
  return Graph.toMermaid(self.definition.graph, {
    direction: options.direction ?? "LR",
    nodeLabel: (name) => {
      const label = byName.get(name)?.description ?? name
      const outcome = outcomes?.[name]
      if (outcome === undefined) return label
      return outcome.status === "skipped" ? `${label}: skipped` : `${label}: ${outcome.status} ${outcome.durationMs} ms`
    },
    edgeLabel: () => ""
  })
}
