/**
 * The check of a `Stats` filter, shared by `Stats.snapshot` and the Promise facade's `stats()`:
 * a filter that would match what it does not mean (a misspelt key, a name that is not a string)
 * is refused naming the field.
 *
 * @internal
 */
import { Result } from "effect"
import { invalidRequest, type ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import type { Filter } from "../Stats.js"

const filterKeys: ReadonlySet<string> = new Set(["provider", "domain"])

const expected = "expected { provider?, domain? }"

/**
 * `undefined` and `null`, as a whole or as a field, match everything. Each field is read once,
 * so a getter that throws is its field's issue and the result is a plain copy nothing reads again.
 *
 * @internal
 */
export const checkFilter = (given: unknown): Result.Result<Filter, ModelError> => {
  if (given === undefined || given === null) return Result.succeed({})
  // `kindOf`, not `Array.isArray`, which throws on a revoked `Proxy`.
  const kind = Input.kindOf(given)
  if (kind !== "an object") return Result.fail(invalidRequest("filter", `${expected}, got ${kind}`))
  // A class instance without fields of its own (a signal, a `Map`) has no keys: it would filter on nothing.
  const foreign = Input.notOptions(given)
  if (foreign !== undefined) return Result.fail(invalidRequest("filter", `${expected}, got ${foreign}`))
  const read = Input.readFields(given, undefined, "filter")
  if (Result.isFailure(read)) return Result.fail(Input.toInvalidRequest(read.failure))
  const unknown = Input.unknownKey(read.success, filterKeys, "filter.")
  if (unknown !== undefined) return Result.fail(Input.toInvalidRequest(unknown))
  const fields = read.success
  for (const key of filterKeys) {
    const value = fields[key]
    if (value !== undefined && value !== null && typeof value !== "string") {
      return Result.fail(invalidRequest(`filter.${key}`, `expected a name, got ${Input.kindOf(value)}`))
    }
  }
  return Result.succeed({ provider: fields.provider ?? undefined, domain: fields.domain ?? undefined } as Filter)
}
