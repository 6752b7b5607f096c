/**
 * Numbers checked: finite, an integer, within a range.
 *
 * @internal
 */
import { Result } from "effect"
import type { Checked } from "./issues.js"
import { shown } from "./shown.js"

/**
 * Options of {@link int} and {@link number}.
 *
 * @since 0.2.0
 * @category models
 */
export interface RangeOptions {
  readonly min?: number | undefined
  /** Default `Number.MAX_SAFE_INTEGER`. */
  readonly max?: number | undefined
  /** `min` itself is refused. */
  readonly minExclusive?: boolean | undefined
}

// Without a `max` of its own, a number is bounded by the largest exact integer: a limit, a count or
// a size of 1e300 is a mistake, and the arithmetic on it (a rate's refill, a window's count) is not exact.
const range = (path: string, input: number, options: RangeOptions): Checked<number> => {
  if (options.min !== undefined) {
    if (options.minExclusive ? input <= options.min : input < options.min) {
      return Result.fail({
        path,
        message: `expected a value ${options.minExclusive ? "above" : "of at least"} ${options.min}, got ${input}`
      })
    }
  }
  const max = options.max ?? Number.MAX_SAFE_INTEGER
  if (input > max) return Result.fail({ path, message: `expected a value of at most ${max}, got ${input}` })
  return Result.succeed(input)
}

/**
 * Checks a finite number within a range.
 *
 * @since 0.2.0
 * @category checks
 */
export const number = (path: string, input: unknown, options: RangeOptions = {}): Checked<number> => {
  if (typeof input !== "number" || !Number.isFinite(input)) {
    return Result.fail({ path, message: `expected a finite number, got ${shown(input)}` })
  }
  return range(path, input, options)
}

/**
 * Checks an integer within a range.
 *
 * @since 0.2.0
 * @category checks
 */
export const int = (path: string, input: unknown, options: RangeOptions = {}): Checked<number> => {
  if (typeof input !== "number" || !Number.isInteger(input)) {
    return Result.fail({ path, message: `expected an integer, got ${shown(input)}` })
  }
  return range(path, input, options)
}

/**
 * Checks an integer of at least 1 (a concurrency, a count of attempts, a capacity).
 *
 * @since 0.2.0
 * @category checks
 */
export const positiveInt = (path: string, input: unknown, max?: number): Checked<number> =>
  int(path, input, { min: 1, max })
