/**
 * A pipeline as a Mermaid flowchart, its steps annotated with a run's outcomes.
 *
 * @internal
 */
import { Graph, Result } from "effect"
import * as Input from "../Input.js"
import type { MermaidOptions, Pipeline } from "../Pipeline.js"
import { known, optionsOf } from "./definition.js"
import * as Errors from "./errors.js"

const directions: ReadonlySet<unknown> = new Set<Graph.MermaidDirection>(["TB", "TD", "BT", "RL", "LR"])

// The direction is written into the diagram's first line as given: anything but Mermaid's own would break
// the diagram, or (a line break) add lines to it.
const directionOf = (input: unknown): Graph.MermaidDirection => {
  const direction = input ?? "LR"
  if (directions.has(direction)) return direction as Graph.MermaidDirection
  throw Errors.invalidOption("direction", `expected "TB", "TD", "BT", "RL" or "LR", got ${Input.shown(direction)}`)
}

const optionFields = known(["direction", "result"])

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

// Options that are no object, a misspelt key (`dirction`) or a result that is no run's would draw the plain
// diagram as if asked for it: each is refused by name.
const checked = (given: unknown): MermaidOptions<unknown, unknown> => {
  if (given === undefined || given === null) return {}
  const options = Result.getOrThrow(optionsOf(given, optionFields))
  const result = options.result
  if (result !== undefined && result !== null && !(isRecord(result) && isRecord(result.steps))) {
    throw Errors.invalidOption("result", `expected the result of Pipeline.run, got ${Input.shown(result)}`)
  }
  return options
}

const timed: ReadonlySet<unknown> = new Set(["succeeded", "failed", "timedOut", "interrupted"])

// A step's outcome as drawn: one of a run's, else `result` is no run's (null read `.status` and threw a TypeError,
// another drew "undefined undefined ms").
const outcomeLabel = (name: string, outcome: unknown): string => {
  if (isRecord(outcome)) {
    if (outcome.status === "skipped") return "skipped"
    const ms = outcome.durationMs
    if (timed.has(outcome.status) && typeof ms === "number" && Number.isFinite(ms) && ms >= 0) {
      return `${outcome.status} ${ms} ms`
    }
  }
  throw Errors.invalidOption(
    "result.steps",
    `expected the outcome of a run's step for ${Input.shown(name)}, got ${Input.shown(outcome)}`
  )
}

// A renderer has no error channel, and a diagram without annotations is a sound answer: `null` is no options.
// A wrong option has no sound answer: it throws the `PipelineError` a run's wrong option fails with.
export const toMermaid = <I, O, E, R>(
  self: Pipeline<I, O, E, R>,
  given?: MermaidOptions<O, E> | null | undefined
): string => {
  // Its definition holds only the steps before the one refused: drawn, it looked whole.
  if (self.definitionIssue !== undefined) throw self.definitionIssue
  const options = checked(given)
  const outcomes = options.result?.steps as Record<string, unknown> | undefined
  const byName = new Map(self.definition.steps.map((s) => [s.name, s]))
  // `Graph.toMermaid` escapes a label's other marks, not backticks: a label in them is Mermaid markdown (`**b**`
  // drawn bold). The diagram holds no backtick of its own, and a label's `#` is already `#35;`: this adds no
  // entity a label could have spelt.
  return Graph.toMermaid(self.definition.graph, {
    direction: directionOf(options.direction),
    nodeLabel: (name) => {
      const label = byName.get(name)?.description ?? name
      const outcome = outcomes === undefined || !Object.hasOwn(outcomes, name) ? undefined : outcomes[name]
      return outcome === undefined ? label : `${label}: ${outcomeLabel(name, outcome)}`
    },
    edgeLabel: () => ""
  }).replaceAll("`", "#96;")
}
