/**
 * Pipelines of agents: named steps with dependencies (a DAG on `effect/Graph`), checked
 * when built, run with every step starting as soon as its own dependencies are done.
 *
 * A step with policies (`timeout`, `totalTimeout`, `retry`, `fallback`, `breaker`,
 * `rateLimit`, `stats`) runs through the executor's one policy pipeline (see `Policy.ts`),
 * so its deadline, retries, breaker, rate limit and fallback behave as a model call's do,
 * and its calls are counted in `Stats` under its name (domain `"pipeline"`). A step that
 * calls a model goes through the `Router` or the `Executor` ({@link route},
 * {@link generate}), so a domain keeps its own policies inside the step.
 *
 * @since 0.1.0
 */
import type { Cause, Duration, Graph, Pipeable, Types } from "effect"
import { Effect } from "effect"
import { dual } from "effect/Function"
import type { AiError } from "./AiError.js"
import { type ExecuteOptions, Executor } from "./Executor.js"
import type { DurationInput } from "./Input.js"
import type { GenerateRequest, GenerateResponse } from "./Model.js"
import * as Builder from "./pipeline/builder.js"
import * as Internal from "./pipeline/definition.js"
import * as Errors from "./pipeline/errors.js"
import { PipelineError, PipelineFailedError } from "./pipeline/errors.js"
import * as Mermaid from "./pipeline/mermaid.js"
import * as Run from "./pipeline/run.js"
import { describe } from "./pipeline/scheduler.js"
import type { RetryPolicy, RetryPolicyInput } from "./Policy.js"
import * as Router from "./Router.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Builder.TypeId

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * Why a pipeline definition or run was refused.
 *
 * @since 0.1.0
 * @category models
 */
export const PipelineErrorReason = Errors.PipelineErrorReason

// Re-exported by name, not as `const` + `type` aliases: a type an application infers from them
// (a declaration file it emits) must name them through this module, not `pipeline/errors.js`.
export { PipelineError, PipelineFailedError }

/**
 * What a step (or its fallback) receives: the pipeline's input and the outputs of the
 * steps it depends on (a record without a prototype: any name is a key).
 *
 * @since 0.1.0
 * @category models
 */
export interface StepContext<I, D> {
  readonly input: I
  readonly deps: D
}

/**
 * Why a step's own effect did not produce an output: its error (or the pipeline's own:
 * an open breaker, a refused rate limit), or its deadline.
 *
 * @since 0.1.0
 * @category models
 */
export type Failure<E> =
  | { readonly _tag: "Failed"; readonly error: E | AiError }
  | { readonly _tag: "TimedOut"; readonly timeout: Duration.Duration }

/**
 * What replaces a failed or timed-out step: a fixed value, or another effect (which may
 * use the failure). Defects and invalid requests never fall back.
 *
 * @since 0.1.0
 * @category models
 */
export type Fallback<I, D, A, E, E2, R2> =
  | { readonly value: A }
  | { readonly step: (context: StepContext<I, D> & { readonly failure: Failure<E> }) => Effect.Effect<A, E2, R2> }

/**
 * Per-step policies; any of them runs the step through the executor's policy pipeline.
 * Durations are checked (`"soon"`, `-1`, `NaN` are refused with a `PipelineError`).
 *
 * @since 0.1.0
 * @category models
 */
export interface StepOptions<I, D, A2, E, E2 = never, R2 = never> {
  /** Deadline of each attempt of the step's effect (a `TimeoutError` that is retried). */
  readonly timeout?: DurationInput | undefined
  /** Deadline of the whole step: attempts, retries and the fallback. */
  readonly totalTimeout?: DurationInput | undefined
  /**
   * Retries of the step's effect on `Policy.schedule`: `true` for the executor's policy, or
   * a policy. Only retryable `AiError`s are retried (timeouts, rate limits, overloads).
   */
  readonly retry?: boolean | RetryPolicy | RetryPolicyInput | undefined
  /** Used when the step failed (when `shouldFallback` says so) or timed out. Joins the output type (`A | A2`). */
  readonly fallback?: Fallback<I, D, A2, E, E2, R2> | undefined
  /** A key of the executor's shared breakers: every attempt goes through that circuit. */
  readonly breaker?: string | undefined
  /**
   * A key of the executor's rate limits: every attempt takes a request slot. A key with no
   * `requestsPerMinute` (nor a default) is refused when the run starts: it would limit nothing.
   */
  readonly rateLimit?: string | undefined
  /** The name the step's calls are counted under in `Stats` (default: the step's name). */
  readonly stats?: string | undefined
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
  /** Read on the monotonic clock: a wall clock stepped back while the step ran leaves it as it was. */
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
  /**
   * Runs of the step's own effect: one per try that ran it (1 + retries). A try its breaker or
   * rate limit refused never ran it and is not counted: 0 when every try was refused (an output
   * from the fallback, whose run is not counted either).
   */
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
  readonly error?: E | AiError | undefined
  readonly cause: Cause.Cause<unknown>
  readonly message: string
  /** Runs of the step's own effect, as `Succeeded.attempts`: 0 when its breaker or rate limit refused every try. */
  readonly attempts: number
  /** When the fallback failed too: what made the step fall back. */
  readonly primary?: Failure<E> | undefined
}

/**
 * A deadline ended the step: its attempts' (`timeout`, no fallback left) or its `totalTimeout`,
 * the fallback's run included (a fallback cut by it did not fail: the step timed out).
 *
 * @since 0.1.0
 * @category models
 */
export interface TimedOut extends Timing {
  readonly status: "timedOut"
  readonly step: string
  readonly timeout: Duration.Duration
  /** Runs of the step's own effect, as `Succeeded.attempts`: 0 when no try ran it. */
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
 * `parallel`, `sequential`, or a parallel run whose failures were run again one at a time
 * (`parallelThenSequential`, see `fallbackToSequential`).
 *
 * @since 0.1.0
 * @category models
 */
export type Strategy = "parallel" | "sequential" | "parallelThenSequential"

/**
 * Every step's outcome, and the figures of the run. `steps` and `outputs` are records
 * without a prototype, so every step name is present, `__proto__` included.
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
  /** From `startedAt` to `endedAt`, read on the monotonic clock (as every duration of a run is). */
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
 * Checked when the run starts (a `PipelineError` of reason `InvalidOption` naming it).
 *
 * - `mode`: `parallel` (default) or `sequential` (topological order, one at a time).
 * - `concurrency`: most steps running at once in parallel mode (default
 *   {@link defaultConcurrency}, 100): a whole number of at least 1, or `Infinity` for no bound.
 * - `onFailure`: `failFast` (default; interrupt running steps, skip the rest) or
 *   `continue` (skip only the dependents of a failed step).
 * - `fallbackToSequential`: after a parallel run in which a step failed for a reason that
 *   concurrency can cause ({@link isConcurrencyRelated}), run the steps that did not
 *   succeed again, one at a time, keeping the outputs that succeeded. A function replaces
 *   the predicate (synchronous: one that throws or answers no boolean, a Promise included,
 *   counts as `false`, with a warning).
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
 * The most steps running at once in parallel mode when neither the run's options nor the
 * pipeline's defaults give a `concurrency`: 100, as many requests as an `HttpAgent` has in
 * flight by default (`maxConnections`). Steps past it wait as entries of a queue, not as
 * fibers. `concurrency: Infinity` starts every ready step at once.
 *
 * @since 0.3.0
 * @category constants
 */
export const defaultConcurrency: number = Internal.defaultConcurrency

/**
 * The untyped form of a step, for pipelines defined from data (`fromSteps`).
 *
 * @since 0.1.0
 * @category models
 */
export interface StepSpec<I, A, E, R> extends StepOptions<I, Record<string, unknown>, A, E, E, R> {
  /** 1 to 1,000 characters (as an HTTP agent's task id), and so is each name in `dependsOn`. */
  readonly name: string
  readonly dependsOn?: ReadonlyArray<string> | undefined
  readonly run: (context: StepContext<I, Record<string, unknown>>) => Effect.Effect<A, E, R>
}

type DepsOf<O, D extends ReadonlyArray<PropertyKey>> = { readonly [K in D[number] & keyof O]: O[K] }

/**
 * A DAG of steps. `I` is the input, `O` the outputs by step name, `E` and `R` the union of
 * the steps' errors and requirements (`Executor` once a step has policies).
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
  readonly definition: Internal.Definition
  /** @internal The defaults' error, else the first definition error; `run` fails with it. */
  readonly issue: PipelineError | undefined
  /** @internal The first definition error (not the defaults'): `toMermaid` throws it. */
  readonly definitionIssue: PipelineError | undefined
  /**
   * Adds a step. It may depend only on steps already added (so names are checked and
   * cycles are impossible by construction); `deps` is typed from their outputs. With names
   * widened to `string`, a duplicate or unknown name (or an invalid option) is kept as the
   * pipeline's `PipelineError`: `run` and {@link validate} fail with it; nothing throws.
   */
  step<const N extends string, const D extends ReadonlyArray<keyof O & string>, A, E1 = never, R1 = never>(
    name: N extends keyof O ? never : N,
    dependsOn: D,
    run: (context: StepContext<I, DepsOf<O, D>>) => Effect.Effect<A, E1, R1>
  ): Pipeline<I, Types.Simplify<O & { readonly [K in N]: A }>, E | E1, R | R1>
  /**
   * A step with options that set no policy (only its diagram `description`): it runs as it is,
   * so it adds no `Executor` to the requirements.
   *
   * @since 0.3.0
   */
  step<const N extends string, const D extends ReadonlyArray<keyof O & string>, A, E1 = never, R1 = never>(
    name: N extends keyof O ? never : N,
    dependsOn: D,
    run: (context: StepContext<I, DepsOf<O, D>>) => Effect.Effect<A, E1, R1>,
    options: {
      readonly description?: string | undefined
      readonly timeout?: undefined
      readonly totalTimeout?: undefined
      readonly retry?: false | undefined
      readonly fallback?: undefined
      readonly breaker?: undefined
      readonly rateLimit?: undefined
      readonly stats?: undefined
    }
  ): Pipeline<I, Types.Simplify<O & { readonly [K in N]: A }>, E | E1, R | R1>
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
    options: StepOptions<I, DepsOf<O, D>, A2, NoInfer<E1>, E2, R2>
  ): Pipeline<I, Types.Simplify<O & { readonly [K in N]: A | A2 }>, E | E1 | E2, R | R1 | R2 | Executor>
}

/**
 * The outputs of a pipeline, by step name.
 *
 * @since 0.1.0
 * @category type-level
 */
export type Outputs<P> = P extends Pipeline<infer _I, infer O, infer _E, infer _R> ? O : never

/**
 * The failures `fallbackToSequential: true` runs again: timeouts and retryable `AiError`s.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isConcurrencyRelated: (failure: Failure<unknown>) => boolean = Run.isConcurrencyRelated

/**
 * An empty pipeline taking `I`; add steps with `.step(name, dependsOn, run, options?)`.
 * `defaults` are the run options every run starts from (checked: a bad one is the
 * pipeline's `PipelineError`).
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
export const make: <I = void>(defaults?: RunOptions) => Pipeline<I, {}> = Builder.make

/**
 * A pipeline from steps known only at runtime (configuration, task lists). Every field is
 * checked: a wrong one, an unknown dependency, a cycle or a duplicate name fails with a
 * `PipelineError` naming it; nothing throws. Steps with policies need the `Executor` in
 * the run's context (types cannot see it here: the run fails with a `PipelineError`
 * naming the step when it is missing).
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromSteps: <I, A, E, R>(
  steps: ReadonlyArray<StepSpec<I, A, E, R>>,
  defaults?: RunOptions
) => Effect.Effect<Pipeline<I, Record<string, A>, E, R>, PipelineError> = Builder.fromSteps

/**
 * The pipeline if its definition holds, or its `PipelineError`.
 *
 * @since 0.2.0
 * @category constructors
 */
export const validate = <I, O, E, R>(self: Pipeline<I, O, E, R>): Effect.Effect<Pipeline<I, O, E, R>, PipelineError> =>
  self.issue === undefined ? Effect.succeed(self) : Effect.fail(self.issue)

/**
 * Runs a pipeline. Every step's outcome is in the result: a step that fails does not fail
 * the run. The run fails only when the pipeline or its options are invalid (a
 * `PipelineError`), before any step starts. In parallel mode each step starts as soon as
 * its own dependencies succeeded, at most `concurrency` at once.
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
} = dual((args) => typeof args[0] === "object" && args[0] !== null && TypeId in args[0], Run.run)

const OUTCOMES_SHOWN = 10

/**
 * All outputs of a run, or a `PipelineFailedError` naming the steps that did not succeed
 * (`failedSteps`: all that failed, timed out or were interrupted; the message: how the first
 * 10 ended, failures before skips, and how many more did not succeed).
 *
 * @since 0.1.0
 * @category getters
 */
export const outputs = <O, E>(result: Result<O, E>): Effect.Effect<O, PipelineFailedError> => {
  if (result.status === "succeeded") return Effect.succeed(result.outputs as O)
  const notDone = Object.values<StepOutcome<unknown, E>>(result.steps).filter((o) => o.status !== "succeeded")
  // The steps that failed first, then those skipped for it; some of them, not thousands.
  const ordered = [...notDone.filter((o) => o.status !== "skipped"), ...notDone.filter((o) => o.status === "skipped")]
  const shown = ordered.slice(0, OUTCOMES_SHOWN).map(describeOutcome)
  if (ordered.length > OUTCOMES_SHOWN) shown.push(`and ${ordered.length - OUTCOMES_SHOWN} more`)
  return Effect.fail(new Errors.PipelineFailedError({ failedSteps: result.failedSteps, message: shown.join("; ") }))
}

/**
 * One line saying how a step ended (`"reason: failed (model overloaded)"`).
 *
 * @since 0.1.0
 * @category rendering
 */
export const describeOutcome: (outcome: StepOutcome<unknown, unknown>) => string = describe

/**
 * @since 0.1.0
 * @category models
 */
export interface MermaidOptions<O = unknown, E = unknown> {
  /** `"TB"`, `"TD"`, `"BT"`, `"RL"` or `"LR"` (the default); anything else is refused. */
  readonly direction?: Graph.MermaidDirection | undefined
  /** Annotates each step with its outcome and duration. */
  readonly result?: Result<O, E> | undefined
}

/**
 * The pipeline as a Mermaid flowchart (edges point from a dependency to its dependent).
 * `null` options, like absent ones, draw it without annotations. Labels are escaped: a
 * step's name or description cannot break the diagram or add lines to it. A wrong option
 * throws a `PipelineError` (`reason: "InvalidOption"`) whose `field` names it: a `direction`
 * other than Mermaid's, an unknown option (`dirction`), a `result` that is not a run's, or
 * options that are no object (`"options"`). A pipeline whose definition was refused throws
 * that `PipelineError` (the one `validate` fails with), rather than draw the steps before it;
 * one whose defaults were refused (`make({ concurrency: 0 })`) is drawn, as they define no step
 * (its runs and `validate` still fail with their error). Backticks are escaped too (`#96;`):
 * a name in backticks is drawn as written, not as Mermaid markdown.
 *
 * @since 0.1.0
 * @category rendering
 */
export const toMermaid: <I, O, E, R>(self: Pipeline<I, O, E, R>, options?: MermaidOptions<O, E>) => string =
  Mermaid.toMermaid

/**
 * A step that calls a model through the `Router`: one domain (with its own fallback
 * chain) or an explicit chain of domains, each with its policies (deadlines, retries, its
 * provider's breaker, rate limit and cache). The output is the `Router.Answer`.
 *
 * @example
 * ```ts
 * import * as Pipeline from "effect-orchestra/Pipeline"
 *
 * const triage = Pipeline.make<string>().step(
 *   "answer",
 *   [],
 *   Pipeline.route("support", ({ input }) => ({ prompt: input }))
 * )
 * ```
 *
 * @since 0.2.0
 * @category steps
 */
export const route =
  <I, D>(
    domains: string | ReadonlyArray<string>,
    request: (context: StepContext<I, D>) => GenerateRequest,
    options?: Router.CallOptions
  ) =>
  (context: StepContext<I, D>): Effect.Effect<Router.Answer, AiError, Router.Router> =>
    // Arrows: a generator function made at each run of the step gets a V8 map of its own, in the old
    // generation, which keeps the run's objects through young collections until a full one.
    Effect.flatMap(Router.Router, (router) => {
      const built = request(context)
      return typeof domains === "string"
        ? router.execute(built, domains, options)
        : router.executeWithFallback(built, domains, options)
    })

/**
 * A step that calls the executor's model (`Executor.execute` with its options).
 *
 * @since 0.2.0
 * @category steps
 */
export const generate =
  <I, D>(request: (context: StepContext<I, D>) => GenerateRequest, options?: ExecuteOptions) =>
  (context: StepContext<I, D>): Effect.Effect<GenerateResponse, AiError, Executor> =>
    Effect.flatMap(Executor, (executor) => executor.execute(request(context), options))
