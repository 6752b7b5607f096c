/**
 * Checks breaker options where they enter (a layer or constructor) and resolves the
 * defaults: every refusal is an `OptionError` naming the field, never a schema error later.
 *
 * @internal
 */
import { Duration, Predicate, Result } from "effect"
import type { TripPolicy } from "effect/persistence/CircuitBreaker"
import type { AiError } from "../AiError.js"
import type { Options } from "../CircuitBreaker.js"
import * as Input from "../Input.js"
import { maxOwnLabelChars, textIssue } from "../stats/labels.js"
import { defaultIsFailure } from "./classify.js"

/**
 * Checked options with their defaults.
 *
 * @internal
 */
export interface Config {
  readonly tripPolicy: TripPolicy
  /** Milliseconds. */
  readonly resetTimeout: number
  /** Milliseconds; equal to `resetTimeout` when the open time does not grow. */
  readonly resetTimeoutMax: number
  readonly multiplier: number
  readonly isFailure: (error: AiError) => boolean
  /** Milliseconds. */
  readonly idleTimeToLive: number
  readonly maxKeys: number
  /** The `breakers` attribute of every series, when the layer is named. */
  readonly name: string | undefined
}

/** Longest open time or idle time accepted: a year (the Redis store keeps times below 2^50 ms). */
const maxDuration = Duration.days(365)

const knownKeys: ReadonlySet<string> = new Set([
  "failMax",
  "rolling",
  "resetTimeout",
  "resetTimeoutMax",
  "resetTimeoutMultiplier",
  "halfOpenMax",
  "successThreshold",
  "isFailure",
  "idleTimeToLive",
  "maxKeys",
  "name"
])

const fail = (path: string, message: string): Input.Checked<never> => Result.fail({ path, message })

/**
 * A positive duration of at most a year, in milliseconds.
 *
 * @internal
 */
export const millis = (path: string, input: unknown): Input.Checked<number> =>
  Result.flatMap(Input.duration(path, input), (d) =>
    Duration.isGreaterThan(d, maxDuration)
      ? fail(path, `expected at most 365 days, got ${Duration.format(d)}`)
      : Result.succeed(Math.max(1, Math.ceil(Duration.toMillis(d))))
  )

const rollingFields: ReadonlySet<string> = new Set(["size", "minimumCalls", "failureRate"])

const tripPolicy = (options: Options): Input.Checked<TripPolicy> => {
  const rolling = options.rolling
  if (rolling === undefined) {
    return Result.map(Input.positiveInt("failMax", Input.orDefault(options.failMax, 5)), (failures) => ({
      _tag: "Consecutive" as const,
      failures
    }))
  }
  if (options.failMax !== undefined) {
    return fail("failMax", "give failMax or rolling, not both: the store applies one trip policy per breaker")
  }
  if (!Predicate.isObject(rolling)) return fail("rolling", "expected an object { size, minimumCalls, failureRate }")
  if ("window" in rolling) {
    return fail(
      "rolling.window",
      "a time-based window is not offered: the store counts the last `size` calls (give rolling.size)"
    )
  }
  const unknown = Input.misspeltKey(rolling, rollingFields, "rolling.")
  if (unknown !== undefined) return Result.fail(unknown)
  return Result.flatMap(
    Input.all([
      Input.positiveInt("rolling.size", rolling.size, 10_000),
      Input.number("rolling.failureRate", rolling.failureRate, { min: 0, minExclusive: true, max: 1 })
    ]),
    ([size, threshold]) =>
      Result.map(
        Input.int("rolling.minimumCalls", Input.orDefault(rolling.minimumCalls, size), { min: 1, max: size }),
        (minimumCalls) => ({ _tag: "Rate" as const, threshold, minimumCalls, size })
      )
  )
}

// Its own fields and the known ones it has (a getter of its class included), each read once: listing
// fields that throws is left to `Input.readFields`, which names it.
const fieldsOf = (input: object, known: Iterable<string>, prefix?: string) => {
  let own: ReadonlyArray<string>
  try {
    own = Object.keys(input)
  } catch {
    return Input.readFields(input, undefined, prefix)
  }
  return Input.readFields(input, [...new Set([...own, ...known])], prefix)
}

const rollingKeys: ReadonlyArray<string> = ["size", "minimumCalls", "failureRate", "window"]

/**
 * The options' fields (and `rolling`'s) read once into plain copies, before any check: a getter
 * (or a `Proxy` trap) that throws is an issue naming its field, never a defect out of the layer,
 * and a getter read again cannot answer other than what was checked. Anything but an object
 * passes as it is, for `check` to refuse.
 *
 * @internal
 */
export const read = <O extends Options>(options: O, extraKeys: ReadonlySet<string> = new Set()): Input.Checked<O> => {
  if (Input.kindOf(options) !== "an object") return Result.succeed(options)
  return Result.flatMap(fieldsOf(options, [...knownKeys, ...extraKeys]), (fields) => {
    const rolling = fields.rolling
    if (Input.kindOf(rolling) !== "an object") return Result.succeed(fields as O)
    return Result.map(
      fieldsOf(rolling as object, rollingKeys, "rolling"),
      (copy) => ({ ...fields, rolling: copy }) as unknown as O
    )
  })
}

/**
 * Checks the options common to every breaker layer.
 *
 * @internal
 */
export const check = (options: Options, extraKeys: ReadonlySet<string> = new Set()): Input.Checked<Config> => {
  if (!Predicate.isObject(options)) return fail("(root)", "expected an object of breaker options")
  const unknown = Input.misspeltKey(options, extraKeys.size === 0 ? knownKeys : new Set([...knownKeys, ...extraKeys]))
  if (unknown !== undefined) return Result.fail(unknown)
  const halfOpenMax = Input.positiveInt("halfOpenMax", Input.orDefault(options.halfOpenMax, 1))
  if (Result.isFailure(halfOpenMax)) return Result.fail(halfOpenMax.failure)
  if (halfOpenMax.success > 1) {
    return fail("halfOpenMax", "the store admits one probe at a time while half-open; halfOpenMax must be 1")
  }
  const successThreshold = Input.positiveInt("successThreshold", Input.orDefault(options.successThreshold, 1))
  if (Result.isFailure(successThreshold)) return Result.fail(successThreshold.failure)
  if (successThreshold.success > 1) {
    return fail("successThreshold", "the store closes the circuit on the probe's first success; it must be 1")
  }
  if (options.isFailure !== undefined && typeof options.isFailure !== "function") {
    return fail("isFailure", `expected a function (error) => boolean, got ${Input.kindOf(options.isFailure)}`)
  }
  if (options.name !== undefined && (typeof options.name !== "string" || options.name.length === 0)) {
    return fail("name", `expected a non-empty string, got ${Input.shown(options.name)}`)
  }
  // The `breakers` label of the layer's series: without a UTF-8 form, another such layer's.
  const name = options.name === undefined ? undefined : textIssue(options.name, "name")
  if (name !== undefined) return Result.fail(name)
  // Written whole in each of the layer's series on every scrape: bounded as a provider's name or a cache's is.
  if (options.name !== undefined && options.name.length > maxOwnLabelChars) {
    return fail(
      "name",
      `expected at most ${maxOwnLabelChars} characters (it labels the layer's metric series), got ${options.name.length.toLocaleString("en-US")}`
    )
  }
  if (options.resetTimeoutMultiplier !== undefined && options.resetTimeoutMax === undefined) {
    return fail(
      "resetTimeoutMultiplier",
      "give resetTimeoutMax with it: an open time that grows without a bound keeps a flapping provider out for ever"
    )
  }
  return Result.flatMap(
    Input.all([
      tripPolicy(options),
      millis("resetTimeout", Input.orDefault(options.resetTimeout, "30 seconds")),
      Input.optional(options.resetTimeoutMax, (input) => millis("resetTimeoutMax", input)),
      Input.number("resetTimeoutMultiplier", Input.orDefault(options.resetTimeoutMultiplier, 2), { min: 1, max: 100 }),
      millis("idleTimeToLive", Input.orDefault(options.idleTimeToLive, "1 hour")),
      Input.positiveInt("maxKeys", Input.orDefault(options.maxKeys, 10_000), 10_000_000)
    ]),
    ([policy, resetTimeout, resetTimeoutMax, multiplier, idleTimeToLive, maxKeys]): Input.Checked<Config> =>
      resetTimeoutMax !== undefined && resetTimeoutMax < resetTimeout
        ? fail("resetTimeoutMax", `expected at least resetTimeout (${resetTimeout} ms), got ${resetTimeoutMax} ms`)
        : Result.succeed({
            tripPolicy: policy,
            resetTimeout,
            resetTimeoutMax: resetTimeoutMax ?? resetTimeout,
            multiplier,
            isFailure: (options.isFailure as ((error: AiError) => boolean) | undefined) ?? defaultIsFailure,
            idleTimeToLive,
            maxKeys,
            name: options.name as string | undefined
          })
  )
}

/**
 * The open time of the n-th consecutive opening (1 for the first): `resetTimeout ×
 * multiplier^(n-1)`, capped at `resetTimeoutMax`.
 *
 * @internal
 */
export const openTime = (config: Config, opening: number): number => {
  if (config.resetTimeoutMax === config.resetTimeout || opening <= 1) return config.resetTimeout
  return Math.min(config.resetTimeoutMax, config.resetTimeout * config.multiplier ** (opening - 1))
}
