/**
 * An HTTP agent task's request body, written within `maxRequestBytes`: its bytes are counted
 * while JSON.stringify writes it, so a body past the bound is refused before it is whole.
 *
 * @internal
 */
import { Buffer } from "node:buffer"
import type { Task } from "../HttpAgent.js"
import * as Input from "../Input.js"
import type { Invalid } from "./checks.js"

/** Thrown by the args' replacer: where a number JSON would write as `null` sits. */
class NotFinite {
  constructor(
    readonly key: string,
    readonly value: number
  ) {}
}

/** Thrown by a {@link measured} replacer: the body is past its bound already. */
class OverBound {}

/** The bytes of a body counted so far while it is written, and its bound (`maxRequestBytes`). */
interface Budget {
  used: number
  readonly max: number
}

/**
 * A replacer that counts, as JSON.stringify writes, a lower bound of the bytes written (strings and
 * keys with their quotes and colon, one byte for anything else; a string's UTF-8 form is no shorter
 * than its UTF-16 one) and stops it past the bound: a body of hundreds of MB is refused before it
 * is built, and not as "not JSON" when it is past what a string can hold. `finite` refuses what JSON
 * writes as `null` (an agent got `temperature: null` for NaN).
 */
const measured = (budget: Budget, finite: boolean) =>
  function (this: unknown, key: string, value: unknown): unknown {
    let size: number
    switch (typeof value) {
      case "string":
        size = value.length + 2
        break
      case "number":
        if (finite && !Number.isFinite(value)) throw new NotFinite(key, value)
        size = 1
        break
      // Written as nothing (or `null` in an array).
      case "undefined":
      case "function":
      case "symbol":
        return value
      default:
        size = 1
    }
    if (key !== "" && !Array.isArray(this)) size += key.length + 3
    budget.used += size
    if (budget.used > budget.max) throw new OverBound()
    return value
  }

/**
 * A body past `maxRequestBytes`: its size, or (`atLeast`) what was counted when writing it stopped.
 *
 * @internal
 */
export interface TooLarge {
  readonly size: number
  readonly atLeast: boolean
}

/** What JSON.stringify threw, on one line (a circular structure's message goes on with its path). */
const thrownLine = (thrown: unknown): string => Input.thrownMessage(thrown).split("\n", 1)[0]!

/**
 * Writes the request body: the task's args, and its dependencies' results. Made once per service,
 * its replacers with it; the writing is synchronous, so one budget serves every task in turn.
 *
 * @internal
 */
export const makeBody = (maxBytes: number) => {
  const budget: Budget = { used: 0, max: maxBytes }
  const argsReplacer = measured(budget, true)
  const dependenciesReplacer = measured(budget, false)
  return (task: Task, dependencies: Record<string, unknown> | undefined): string | Invalid | TooLarge => {
    const id = JSON.stringify(task.id)
    budget.used = 0
    let args: string | undefined
    try {
      // A function or a symbol is written as nothing at all.
      args = JSON.stringify(task.args ?? null, argsReplacer)
    } catch (error) {
      if (error instanceof OverBound) return { size: budget.used, atLeast: true }
      if (error instanceof NotFinite) {
        const at = error.key === "" ? "" : ` at ${JSON.stringify(error.key)}`
        return { field: "args", message: `task ${id}: args hold ${error.value}${at}, which JSON writes as null` }
      }
      return { field: "args", message: `task ${id}: args are not JSON (${thrownLine(error)})` }
    }
    if (args === undefined) return { field: "args", message: `task ${id}: args are not JSON` }
    const head = `{"task_id":${id},"intent":${JSON.stringify(task.intent)},"concept":${JSON.stringify(task.concept)},"args":${args}`
    let body: string
    if (dependencies === undefined) {
      body = `${head}}`
    } else {
      try {
        body = `${head},"dependencies":${JSON.stringify(dependencies, dependenciesReplacer)}}`
      } catch (error) {
        if (error instanceof OverBound) return { size: budget.used, atLeast: true }
        return {
          field: "dependencies",
          message: `task ${id}: its dependencies' results are not JSON (${thrownLine(error)})`
        }
      }
    }
    // UTF-8 takes at most 3 bytes for a UTF-16 unit, and at least 1.
    if (body.length * 3 <= maxBytes) return body
    const size = Buffer.byteLength(body, "utf8")
    return size > maxBytes ? { size, atLeast: false } : body
  }
}
