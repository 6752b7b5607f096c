/**
 * A batch of HTTP agent tasks with dependencies, on the pipeline scheduler: each task is a
 * step named by its id (its calls are counted under its agent's name, not its id); a task
 * that did not end usable skips its dependents, whose records say which task was at the
 * root. One record per task, in input order.
 *
 * @internal
 */
import * as Input from "../Input.js"
import { Effect, Result } from "effect"
import type { DispatchOptions, Task, TaskRecord } from "../HttpAgent.js"
import * as Definition from "../pipeline/definition.js"
import { invalidOption, invalidStep, type PipelineError } from "../pipeline/errors.js"
import { describe, execute } from "../pipeline/scheduler.js"
import { makeRunner } from "../pipeline/step.js"
import type { AgentMetrics } from "./metrics.js"
import { readTask } from "./checks.js"
import { type Call, count } from "./task.js"

export interface Env {
  readonly call: Call
  /** The agent and URL of a record for a task that sent nothing (`task.ts`'s `labelOf`). */
  readonly labelOf: (task: Task) => { readonly agent: string; readonly url: string }
  readonly metrics: AgentMetrics
  /** The series name a record of `task` that sent nothing is counted under (`task.ts`'s `seriesOf`, bounded). */
  readonly seriesOf: (task: Task, agent: string) => string
  /** Tasks running at once when the caller gives no `concurrency`: the connections there are. */
  readonly defaultConcurrency: number
}

/** Usable by dependents: an answer, or a cached one while the agent's breaker is open. */
const usable = (record: TaskRecord): boolean =>
  record.status === "success" || (record.status === "service_unavailable" && record.fromCache === true)

const resultsOf = (deps: Record<string, unknown>): Record<string, unknown> => {
  const results = Definition.record<unknown>()
  for (const id of Object.keys(deps)) results[id] = (deps[id] as TaskRecord).result
  return results
}

// The fields the batch itself reads: one that throws when read is the batch's issue, naming it.
const batchFields: ReadonlySet<string> = new Set(["task", "id", "dependsOn"])

const stepsOf = (
  tasks: ReadonlyArray<Task>,
  read: ReadonlyArray<ReturnType<typeof readTask>>,
  env: Env
): Result.Result<ReadonlyArray<Definition.StepDef>, PipelineError> => {
  const steps: Array<Definition.StepDef> = []
  for (const [i, given] of tasks.entries()) {
    const { task, issue } = read[i]!
    if (issue !== undefined && batchFields.has(issue.field)) {
      return Result.fail(
        invalidStep(issue.field === "task" ? `tasks[${i}]` : `tasks[${i}].${issue.field}`, issue.message, undefined)
      )
    }
    const checked = Definition.checkSpec(
      { name: task?.id, dependsOn: task?.dependsOn, run: () => undefined },
      `tasks[${i}]`
    )
    if (Result.isFailure(checked)) {
      const error = checked.failure
      const field = error.field?.replace(/\.name$/, ".id")
      return Result.fail(
        invalidStep(field ?? `tasks[${i}]`, error.message.replace(/^invalid \S+: /, ""), error.steps[0])
      )
    }
    const hasDeps = checked.success.deps.length > 0
    steps.push({
      ...checked.success,
      // The task as given: the call reads it again, and a field of its own that throws is its record's issue.
      run: ({ deps }) =>
        Effect.filterOrFail(env.call(given, hasDeps ? resultsOf(deps) : undefined), usable, (record) => record)
    })
  }
  return Result.succeed(steps)
}

const dispatchFields = Definition.known(["concurrency"])

/**
 * The options read once, as a run's are (a getter that throws is an issue naming its field, not a
 * defect); their `concurrency` is then checked as a run's, so `null` is refused as `0` is, not
 * taken for the default.
 */
const checkOptions = (options: unknown): Result.Result<unknown, PipelineError> => {
  if (options === undefined) return Result.succeed(undefined)
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    return Result.fail(invalidOption("options", `expected { concurrency }, got ${Input.shown(options)}`))
  }
  return Result.map(Definition.optionsOf(options, dispatchFields), (read) => read.concurrency)
}

/** Runs a batch; fails only when the batch itself is invalid. */
export const dispatch = Effect.fnUntraced(function* (
  tasks: ReadonlyArray<Task>,
  options: DispatchOptions | undefined,
  env: Env
): Effect.fn.Return<ReadonlyArray<TaskRecord>, PipelineError> {
  if (!Array.isArray(tasks)) {
    return yield* Effect.fail(invalidStep("tasks", `expected an array of tasks, got ${Input.shown(tasks)}`, undefined))
  }
  // Read once: what the batch reads of a task (its id, its dependencies, its agent for a skipped
  // record) cannot throw out of it later.
  const read = tasks.map(readTask)
  const steps = stepsOf(tasks, read, env)
  if (Result.isFailure(steps)) return yield* Effect.fail(steps.failure)
  const definition = Definition.build(steps.success, "task")
  if (Result.isFailure(definition)) return yield* Effect.fail(definition.failure)
  const concurrency = checkOptions(options)
  if (Result.isFailure(concurrency)) return yield* Effect.fail(concurrency.failure)
  const settings = Definition.checkRunOptions(
    { onFailure: "continue", concurrency: concurrency.success },
    () => false,
    // A task started beyond the connections waits on a slot as a fiber (and its deadline runs): a
    // batch of 200,000 made 200,000 fibers at once. Unstarted, it is a slot of the batch's array.
    env.defaultConcurrency
  )
  if (Result.isFailure(settings)) return yield* Effect.fail(settings.failure)
  const result = yield* execute(definition.success, undefined, settings.success, makeRunner(undefined))
  return read.map(({ task }): TaskRecord => {
    const outcome = result.steps[task.id]!
    switch (outcome.status) {
      case "succeeded":
        return outcome.output as TaskRecord
      case "failed":
        if (outcome.error !== undefined) return outcome.error as TaskRecord
        break
      case "skipped": {
        const root = result.steps[outcome.failedStep]
        const rootStatus =
          root?.status === "failed" && root.error !== undefined
            ? (root.error as TaskRecord).status
            : (root?.status ?? "error")
        const record: TaskRecord = {
          taskId: task.id,
          ...env.labelOf(task),
          status: "skipped",
          error: {
            message:
              outcome.dependency === outcome.failedStep
                ? `dependency ${JSON.stringify(outcome.dependency)} did not succeed (${rootStatus})`
                : `dependency ${JSON.stringify(outcome.dependency)} was skipped (task ${JSON.stringify(outcome.failedStep)}: ${rootStatus})`,
            reason: "DependencyFailed",
            dependency: outcome.dependency
          },
          startedAt: outcome.at,
          durationMs: 0,
          attempts: 0
        }
        count(record, env.seriesOf(task, record.agent), env.metrics)
        return record
      }
    }
    // A call never fails: reaching here means it died; say so rather than lose the task.
    const record: TaskRecord = {
      taskId: task.id,
      ...env.labelOf(task),
      status: "error",
      error: { message: describe(outcome), reason: "Unknown" },
      startedAt: "startedAt" in outcome ? outcome.startedAt : 0,
      durationMs: "durationMs" in outcome ? outcome.durationMs : 0,
      attempts: 0
    }
    count(record, env.seriesOf(task, record.agent), env.metrics)
    return record
  })
})
