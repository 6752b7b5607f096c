/**
 * Checks rate-limit options where they enter (`make` and the layers): every refusal is an
 * `OptionError` naming the field; the limits of each key resolved with their defaults. Also
 * the check of an acquire's `tokens`.
 *
 * @internal
 */
import { Duration, Result } from "effect"
import * as Input from "../Input.js"
import * as Metrics from "../Metrics.js"
import type { Limits, Options, ResolvedLimits } from "../RateLimit.js"
import { textIssue } from "../stats/labels.js"

const limitFields: ReadonlySet<string> = new Set(["requestsPerMinute", "tokensPerMinute", "window", "algorithm"])

// The Redis store's scripts add the window to Redis's clock and PEXPIRE the difference; above
// 2^50 ms it is no longer an exact integer in Lua and is written with an exponent PEXPIRE refuses.
// The window itself is kept as given (the limits divide it); only its bounds are checked in milliseconds.
// Below 1 ms the limiter (effect's, and the stores') counts a window of 1 ms: 10 per 0.5 ms was 10 per 1 ms.
const windowOf = (path: string, input: unknown): Input.Checked<Duration.Duration> =>
  Result.flatMap(Input.wholeMillis(path, input, Input.maxRedisMillis), () =>
    Result.flatMap(Input.duration(path, input), (window) =>
      Duration.toMillis(window) < 1
        ? Result.fail({ path, message: `expected at least 1 millisecond, got ${Input.shown(input)}` })
        : Result.succeed(window)
    )
  )

const checkLimits = (input: unknown, path: string): Input.Checked<ResolvedLimits> => {
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    return Result.fail({ path, message: "expected an object" })
  }
  const unknown = Input.misspeltKey(input, limitFields, `${path}.`, "field")
  if (unknown !== undefined) return Result.fail(unknown)
  const limits = input as Limits
  const algorithm = Input.orDefault(limits.algorithm, "fixed-window")
  if (algorithm !== "fixed-window" && algorithm !== "token-bucket") {
    return Result.fail({
      path: `${path}.algorithm`,
      message: `expected "fixed-window" or "token-bucket", got ${Input.shown(algorithm)}`
    })
  }
  return Result.map(
    Input.all([
      Input.optional(limits.requestsPerMinute, (n) => Input.positiveInt(`${path}.requestsPerMinute`, n)),
      Input.optional(limits.tokensPerMinute, (n) => Input.positiveInt(`${path}.tokensPerMinute`, n)),
      windowOf(`${path}.window`, Input.orDefault(limits.window, "1 minute"))
    ]),
    ([requestsPerMinute, tokensPerMinute, window]) => ({ requestsPerMinute, tokensPerMinute, window, algorithm })
  )
}

/**
 * Checked options: each listed key's limits, the default's, and `maxWait`.
 *
 * @internal
 */
export interface Config {
  readonly providers: ReadonlyMap<string, ResolvedLimits>
  readonly fallback: ResolvedLimits | undefined
  readonly maxWait: Duration.Duration
}

/**
 * The fields `make` takes.
 *
 * @internal
 */
export const optionFields: ReadonlySet<string> = new Set(["providers", "default", "maxWait"])

/**
 * The fields `layerMemory` takes (`make` refuses `maxKeys`: a store given to it bounds itself).
 *
 * @internal
 */
export const memoryFields: ReadonlySet<string> = new Set([...optionFields, "maxKeys"])

/**
 * `layerMemory`'s `maxKeys`, a positive integer (default `defaultMaxKeys`).
 *
 * @internal
 */
export const checkMaxKeys = (input: unknown, fallback: number): Input.Checked<number> =>
  Input.positiveInt("maxKeys", Input.orDefault(input, fallback))

/**
 * The fields `layerRedis` takes (`make` checks against them too).
 *
 * @internal
 */
export const redisFields: ReadonlySet<string> = new Set([...optionFields, "prefix", "onStoreError", "redis"])

/**
 * Checks options, `fields` being the known ones (default: those of `layerMemory`).
 *
 * @internal
 */
export const checkOptions = (options: Options, fields: ReadonlySet<string> = optionFields): Input.Checked<Config> => {
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    return Result.fail({ path: "options", message: "expected an object" })
  }
  const unknown = Input.misspeltKey(options, fields)
  if (unknown !== undefined) return Result.fail(unknown)
  const providersGiven = options.providers
  if (
    providersGiven !== undefined &&
    (typeof providersGiven !== "object" || providersGiven === null || Array.isArray(providersGiven))
  ) {
    return Result.fail({ path: "providers", message: "expected an object of limits by key" })
  }
  const providers = new Map<string, ResolvedLimits>()
  for (const [key, limits] of Object.entries(options.providers ?? {})) {
    if (key === Metrics.otherSeries) {
      return Result.fail({
        path: `providers.${key}`,
        message: `reserved: the keys past the series bound count as ${key}`
      })
    }
    // A metric label and a Redis key: one without a UTF-8 form would be another such key there.
    const text = textIssue(key, `providers.${key}`)
    if (text !== undefined) return Result.fail(text)
    const checked = checkLimits(limits, `providers.${key}`)
    if (Result.isFailure(checked)) return Result.fail(checked.failure)
    providers.set(key, checked.success)
  }
  return Result.map(
    Input.all([
      Input.optional(options.default, (limits) => checkLimits(limits, "default")),
      Input.duration("maxWait", Input.orDefault(options.maxWait, "30 seconds"), {
        allowZero: true,
        allowInfinite: true
      })
    ]),
    ([fallback, maxWait]) => ({ providers, fallback, maxWait })
  )
}

/**
 * An acquire's `tokens`, rounded up (0 when absent).
 *
 * @internal
 */
export const checkTokens = (tokens: number | undefined): Input.Checked<number> =>
  tokens === undefined ? Result.succeed(0) : Result.map(Input.number("tokens", tokens, { min: 0 }), Math.ceil)

/**
 * An acquire's `waitUntil`: an instant in `Clock` milliseconds, `Infinity` for none. A `NaN`
 * compared false with every wait and was read as no deadline at all.
 *
 * @internal
 */
export const checkWaitUntil = (waitUntil: unknown): Input.Checked<number> => {
  if (typeof waitUntil === "number" && !Number.isNaN(waitUntil)) return Result.succeed(waitUntil)
  const got = typeof waitUntil === "number" ? "NaN" : Input.kindOf(waitUntil)
  return Result.fail({ path: "waitUntil", message: `expected an instant in Clock milliseconds, got ${got}` })
}

/**
 * `make`'s `onStoreError` (default `"allow"`).
 *
 * @internal
 */
export const checkOnStoreError = (input: unknown): Input.Checked<"allow" | "reject"> =>
  Input.oneOf("onStoreError", Input.orDefault(input, "allow"), ["allow", "reject"])

const policyFields: ReadonlySet<string> = new Set(["onStoreError", "guard", "retryAfter"])

/**
 * `make`'s store policy, checked as its options are: a misspelt key (`onStoreErorr: "reject"`) left
 * the limiter failing open unseen, and a policy that is no object was a `TypeError`.
 *
 * @internal
 */
export const checkPolicy = (policy: unknown): Input.Checked<void> => {
  if (typeof policy !== "object" || policy === null || Array.isArray(policy)) {
    return Result.fail({
      path: "policy",
      message: `expected an object { onStoreError, retryAfter }, got ${Input.kindOf(policy)}`
    })
  }
  const unknown = Input.unknownKey(policy, policyFields)
  if (unknown !== undefined) return Result.fail(unknown)
  const guard: unknown = (policy as Record<string, unknown>).guard
  if (
    guard !== undefined &&
    (typeof guard !== "object" || guard === null || typeof (guard as Record<string, unknown>).call !== "function")
  ) {
    return Result.fail({ path: "guard.call", message: "expected a function" })
  }
  return Result.void
}
