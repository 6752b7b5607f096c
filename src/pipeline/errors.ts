/**
 * The errors of pipeline definitions and runs.
 *
 * @internal
 */
import { Schema } from "effect"

/**
 * Why a pipeline definition or run was refused.
 *
 * @internal
 */
export const PipelineErrorReason = Schema.Literals([
  "UnknownDependency",
  "Cycle",
  "DuplicateStep",
  "InvalidStep",
  "InvalidOption"
])

/**
 * A pipeline definition or run was refused, before any step ran:
 *
 * - `UnknownDependency`, `DuplicateStep`, `Cycle`: `steps` names the steps (for a cycle:
 *   in cycle order).
 * - `InvalidStep`: a step field is wrong (`dependsOn: "a"`, `timeout: "soon"`, a typo such
 *   as `dependOn`); `field` is its path (`steps[2].dependsOn`).
 * - `InvalidOption`: a run option is wrong (`mode: "bogus"`, `concurrency: 0`); `field`
 *   and `option` name it.
 *
 * @since 0.1.0
 * @category errors
 */
export class PipelineError extends Schema.TaggedError<PipelineError>("effect-orchestra/PipelineError")(
  "PipelineError",
  {
    reason: PipelineErrorReason,
    steps: Schema.Array(Schema.String),
    /** The wrong field (`steps[2].dependsOn`, `mode`), for `InvalidStep` and `InvalidOption`. */
    field: Schema.optional(Schema.String),
    /** The run option, for `InvalidOption` (as in v0.1). */
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
 * A step field refused: the path names it.
 *
 * @internal
 */
export const invalidStep = (field: string, message: string, step: string | undefined): PipelineError =>
  new PipelineError({
    reason: "InvalidStep",
    steps: step === undefined ? [] : [step],
    field,
    message: `invalid ${field}: ${message}`
  })

/**
 * A run option refused.
 *
 * @internal
 */
export const invalidOption = (option: string, message: string): PipelineError =>
  new PipelineError({
    reason: "InvalidOption",
    steps: [],
    field: option,
    option,
    message: `invalid ${option}: ${message}`
  })
