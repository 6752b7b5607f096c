/**
 * A pipeline as a Mermaid flowchart, its steps annotated with a run's outcomes.
 *
 * @internal
 */
import { Graph } from "effect"
import type { MermaidOptions, Pipeline, StepOutcome } from "../Pipeline.js"

// A renderer has no error channel, and a diagram without annotations is a sound answer: `null` is no options.
export const toMermaid = <I, O, E, R>(
  self: Pipeline<I, O, E, R>,
  given?: MermaidOptions<O, E> | null | undefined
): string => {
  const options: MermaidOptions<O, E> = given ?? {}
  const outcomes = options.result?.steps as Record<string, StepOutcome<unknown, unknown>> | undefined
  const byName = new Map(self.definition.steps.map((s) => [s.name, s]))
  return Graph.toMermaid(self.definition.graph, {
    direction: options.direction ?? "LR",
    nodeLabel: (name) => {
      const label = byName.get(name)?.description ?? name
      const outcome = outcomes === undefined || !Object.hasOwn(outcomes, name) ? undefined : outcomes[name]
      if (outcome === undefined) return label
      return outcome.status === "skipped" ? `${label}: skipped` : `${label}: ${outcome.status} ${outcome.durationMs} ms`
    },
    edgeLabel: () => ""
  })
}
