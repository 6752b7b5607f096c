/**
 * The DAG of a pipeline's steps, validated with `effect/Graph`: duplicate names, unknown
 * dependencies, cycles named in order; and its topological order.
 *
 * @internal
 */
import { Graph, Option, Result } from "effect"
import * as Input from "../Input.js"
import type { Definition, StepDef } from "./definition.js"
import { PipelineError } from "./errors.js"
import type { Checked } from "./fields.js"

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
    message: `${noun} ${Input.shown(name)} is defined twice`
  })

// Names a message shows: `steps` holds them all, a message (logged, shown) stays short when
// a generated pipeline has thousands.
const SHOWN = 10

const unknownDependency = (name: string, missing: ReadonlyArray<string>, noun = "step"): PipelineError => {
  const shown = missing.slice(0, SHOWN).map(Input.shown)
  if (missing.length > SHOWN) shown.push(`and ${missing.length - SHOWN} more`)
  return new PipelineError({
    reason: "UnknownDependency",
    steps: [name, ...missing],
    message: `${noun} ${Input.shown(name)} depends on unknown ${noun}${missing.length > 1 ? "s" : ""} ${shown.join(", ")}`
  })
}

// A name in a cycle's path is written bare (`a -> b -> a`), so it is cut here as `Input.shown`
// cuts a quoted one: ten names of 1,000 characters would be a 10,000-character message.
const SHOWN_CHARS = 80

const bare = (name: string): string =>
  name.length <= SHOWN_CHARS
    ? name
    : `${Input.wholePrefix(name, SHOWN_CHARS)}… (${name.length.toLocaleString("en-US")} characters)`

/** `cycle` ends where it starts: `[a, b, a]`. */
const cycleError = (cycle: ReadonlyArray<string>): PipelineError => {
  const steps = cycle.slice(0, -1)
  const path =
    steps.length > SHOWN
      ? `${steps.slice(0, SHOWN).map(bare).join(" -> ")} -> … (${steps.length - SHOWN} more) -> ${bare(steps[0]!)}`
      : cycle.map(bare).join(" -> ")
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
