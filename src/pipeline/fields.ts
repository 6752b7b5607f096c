/**
 * Reading an object given as a step or as options: its fields read once into a copy, any key it
 * does not know refused, a getter or `Proxy` trap that throws its field's issue.
 *
 * @internal
 */
import { Result } from "effect"
import * as Input from "../Input.js"
import type { PipelineError } from "./errors.js"

export type Checked<A> = Result.Result<A, PipelineError>

/** The fields a check knows: a set, to refuse the others, and a list, to read them. */
export interface Known {
  readonly set: ReadonlySet<string>
  readonly list: ReadonlyArray<string>
}

export const known = (list: ReadonlyArray<string>): Known => ({ set: new Set(list), list })

export const isRecord = (u: unknown): u is Record<string, unknown> =>
  typeof u === "object" && u !== null && !Array.isArray(u)

/**
 * The fields of an object given as a step or as options, read once into a copy: each of its own
 * keys must be `fields`' (the first other one is the issue, an unknown `noun`), and those are
 * read where they are, a class's getters and methods on its prototype included. A getter or
 * `Proxy` trap that throws is its field's issue, not a throw out of `.step` or a defect; an
 * object with none of the fields, own or inherited (a `Map`, a signal), is not taken as none.
 * `at` names the object (`steps[2]`; absent: its fields are named bare, the whole `options`).
 */
export const readKnown = (
  input: object,
  fields: Known,
  at: string | undefined,
  noun: "field" | "option"
): Input.Checked<Readonly<Record<string, unknown>>> => {
  const whole = at ?? "options"
  let own: ReadonlyArray<string>
  let unknown: Input.Issue | undefined
  try {
    own = Object.keys(input)
    unknown = Input.misspeltKey(input, fields.set, at === undefined ? "" : `${at}.`, noun)
  } catch (error) {
    return Result.fail({ path: whole, message: `listing its fields threw: ${Input.thrownMessage(error)}` })
  }
  if (unknown !== undefined) return Result.fail(unknown)
  const read = Input.readFields(input, fields.list, at)
  if (Result.isFailure(read) || own.length > 0) return read
  const foreign = Object.keys(read.success).length > 0 ? undefined : Input.notOptions(input)
  return foreign === undefined ? read : Result.fail({ path: whole, message: `expected an object, got ${foreign}` })
}
