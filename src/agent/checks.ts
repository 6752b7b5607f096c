/**
 * A task's fields read once and checked: each issue names the field (a record, never a defect).
 *
 * @internal
 */
import { Result } from "effect"
import type { Task } from "../HttpAgent.js"
import * as Input from "../Input.js"
import { checkDependsOn } from "../pipeline/definition.js"
import { isAgentRef } from "./names.js"

export interface Invalid {
  readonly field: string
  readonly message: string
}

const notAgent = (field: string, ref: unknown): Invalid => ({
  field,
  message: `expected an agent (HttpAgent.agent) or its URL, got ${Input.kindOf(ref)}`
})

const taskKeys: ReadonlySet<string> = new Set([
  "id",
  "agent",
  "fallback",
  "intent",
  "concept",
  "args",
  "dependsOn",
  "timeout",
  "cacheKey"
])

/** The longest `id`, `intent`, `concept` or `cacheKey` a task may have. */
export const maxNameLength = 1_000

/** A refused id as its record names the task: a number as it reads, anything else by its kind (`String` may throw). */
export const shownId = (id: unknown): string =>
  typeof id === "number" || typeof id === "boolean" || id === undefined ? String(id) : Input.kindOf(id)

export const checkTask = (task: Task): Invalid | undefined => {
  if (typeof task !== "object" || task === null)
    return { field: "task", message: "expected a task { id, intent, concept }" }
  // A misspelt `timout` left the default deadline; a `dependOn` ran the task before its dependency.
  const misspelt = Input.misspeltKey(task, taskKeys, "", "field")
  if (misspelt !== undefined) return { field: misspelt.path, message: misspelt.message }
  for (const field of ["id", "intent", "concept"] as const) {
    const value = task[field]
    if (typeof value !== "string") return { field, message: `expected a string, got ${Input.kindOf(value)}` }
    // A concept or intent is a registry query (its URL, the discovery cache's key); an id names the task.
    if (value.length === 0 || value.length > maxNameLength)
      return { field, message: `expected 1 to ${maxNameLength} characters, got ${value.length}` }
  }
  if (task.agent !== undefined && !isAgentRef(task.agent)) return notAgent("agent", task.agent)
  if (task.fallback !== undefined && !Array.isArray(task.fallback)) {
    return { field: "fallback", message: "expected an array of agents" }
  }
  for (const [i, ref] of (task.fallback ?? []).entries()) {
    if (!isAgentRef(ref)) return notAgent(`fallback[${i}]`, ref)
  }
  if (task.cacheKey !== undefined) {
    if (typeof task.cacheKey !== "string") return { field: "cacheKey", message: "expected a string" }
    // Kept as part of a cache key in memory or on Redis: as bounded as the names of the default key.
    if (task.cacheKey.length === 0 || task.cacheKey.length > maxNameLength) {
      return { field: "cacheKey", message: `expected 1 to ${maxNameLength} characters, got ${task.cacheKey.length}` }
    }
  }
  // Unused outside a batch, but refused as a batch refuses it (`null` ran a batch task at once).
  const dependsOn = checkDependsOn(task.dependsOn)
  return Result.isFailure(dependsOn) ? { field: dependsOn.failure.path, message: dependsOn.failure.message } : undefined
}

/**
 * The task's fields read once, into a plain copy: a getter (or `Proxy` trap) that throws is the
 * issue of that field, not a defect of a call that promises a record; the field is then absent
 * from the copy, which the record is made from.
 */
export const readTask = (given: Task): { readonly task: Task; readonly issue?: Invalid | undefined } => {
  if (typeof given !== "object" || given === null) return { task: given }
  const { copy, issue } = Input.readOwnFields(given, "task")
  return {
    task: copy as unknown as Task,
    issue: issue === undefined ? undefined : { field: issue.path, message: issue.message }
  }
}
