/**
 * The mock's options, checked once when it is built: every number and duration through
 * `Input`, unknown keys refused, outcomes compiled to plans with their delays in millis.
 *
 * @internal
 */
import { Duration, type Effect, Result, Schema } from "effect"
import { Reason } from "../../AiError.js"
import * as Input from "../../Input.js"
import type { OptionError } from "../../Input.js"
import { FinishReason, ToolCall } from "../../Model.js"
import type { Fail, Hang, Latency, Options, Outcome, RandomMix, Succeed } from "../Mock.js"

/** @internal */
export interface Span {
  readonly min: number
  readonly max: number
}

/** @internal */
export type Planned =
  | (Omit<Succeed, "latency" | "chunkDelay"> & Delays)
  | (Omit<Fail, "latency" | "chunkDelay" | "retryAfter"> & Delays & { readonly retryAfter?: Duration.Duration })
  | (Omit<Hang, "latency" | "chunkDelay"> & Delays)

/** @internal */
export interface Delays {
  readonly latency?: Span | undefined
  readonly chunkDelay?: Span | undefined
}

/** @internal */
export interface Compiled {
  readonly name: string
  readonly defaultModel: string
  readonly seed: number
  readonly dimensions: number
  readonly logSize: number
  readonly maxConcurrency: number | undefined
  readonly latency: Span | undefined
  readonly chunkDelay: Span | undefined
  readonly script: ReadonlyArray<Planned>
  readonly random: ((random: () => number) => Planned) | undefined
  readonly respond: Options["respond"]
}

const optionKeys: ReadonlySet<string> = new Set([
  "name",
  "model",
  "script",
  "random",
  "seed",
  "latency",
  "chunkDelay",
  "respond",
  "dimensions",
  "maxConcurrency",
  "requestLogSize"
])
const outcomeKeys: Readonly<Record<Outcome["_tag"], ReadonlySet<string>>> = {
  Succeed: new Set(["_tag", "text", "chunks", "toolCalls", "finishReason", "latency", "chunkDelay"]),
  Fail: new Set(["_tag", "reason", "message", "status", "retryAfter", "latency", "afterChunks", "chunkDelay", "text"]),
  Hang: new Set(["_tag", "afterChunks", "latency", "chunkDelay", "text"])
}
const randomKeys: ReadonlySet<string> = new Set(["success", "hang", "failures"])
const isReason = Schema.is(Reason)
const isFinishReason = Schema.is(FinishReason)
const isToolCall = Schema.is(ToolCall)

const issue = (path: string, message: string): Input.Checked<never> => Result.fail({ path, message })

// An outcome's `_tag`, read once; a getter that throws is an issue naming it.
const tagOf = (path: string, outcome: object): Input.Checked<unknown> => {
  try {
    return Result.succeed((outcome as { readonly _tag?: unknown })._tag)
  } catch (error) {
    return Result.fail({
      path: `${path}._tag`,
      message: `reading it threw: ${Input.thrownMessage(error)}`,
      cause: error
    })
  }
}

// Options may come from a file (`orchestra serve`): a null or a string where an object goes is an
// issue naming the field, not a TypeError thrown out of `make`.
const known = (path: string, value: unknown, keys: ReadonlySet<string>): Input.Checked<void> => {
  const notObject = Input.notAnObject(path === "" ? "options" : path, value)
  if (notObject !== undefined) return Result.fail(notObject)
  const unknown = Input.misspeltKey(value as object, keys, path === "" ? "" : `${path}.`)
  return unknown === undefined ? Result.succeed(undefined) : Result.fail(unknown)
}

const text = (path: string, input: unknown): Input.Checked<string> =>
  typeof input === "string" && input.trim().length > 0
    ? Result.succeed(input)
    : issue(path, `expected a non-empty string, got ${Input.shown(input)}`)

const millis = (path: string, input: unknown): Input.Checked<number> =>
  Result.map(Input.duration(path, input, { allowZero: true }), Duration.toMillis)

const latencyOf = (path: string, input: Latency | undefined): Input.Checked<Span | undefined> =>
  Result.gen(function* () {
    if (input === undefined) return undefined
    if (typeof input === "object" && input !== null && !Duration.isDuration(input) && "uniform" in input) {
      const bounds: unknown = input.uniform
      if (!Array.isArray(bounds) || bounds.length !== 2) {
        return yield* issue(`${path}.uniform`, "expected two durations [min, max]")
      }
      const min = yield* millis(`${path}.uniform[0]`, bounds[0])
      const max = yield* millis(`${path}.uniform[1]`, bounds[1])
      if (max < min) return yield* issue(`${path}.uniform`, `min ${min} ms is above max ${max} ms`)
      return { min, max }
    }
    const fixed = yield* millis(path, input)
    return { min: fixed, max: fixed }
  })

// Each field read once, into a copy (and its arrays copied): a getter answering another value on a second read
// would otherwise be checked as one value and run as another.
const planOf = (path: string, given: Outcome): Input.Checked<Planned> =>
  Result.gen(function* () {
    const tag = typeof given === "object" && given !== null ? yield* tagOf(path, given) : undefined
    if (typeof tag !== "string" || !Object.hasOwn(outcomeKeys, tag)) {
      return yield* issue(`${path}._tag`, "expected Succeed, Fail or Hang (use Mock.Outcome.succeed/fail/hang)")
    }
    yield* known(path, given, outcomeKeys[tag as Outcome["_tag"]])
    const read = (yield* Input.readFields(given, undefined, path)) as Record<string, unknown>
    const outcome = { ...read, _tag: tag } as Outcome
    if (outcome._tag === "Succeed") {
      const copied = outcome as { chunks?: unknown; toolCalls?: unknown }
      if (Array.isArray(copied.chunks)) copied.chunks = [...copied.chunks]
      if (Array.isArray(copied.toolCalls)) copied.toolCalls = copied.toolCalls.map((call) => ({ ...call }))
    }
    const latency = yield* latencyOf(`${path}.latency`, outcome.latency)
    const chunkDelay = yield* latencyOf(`${path}.chunkDelay`, outcome.chunkDelay)
    if (outcome.text !== undefined && typeof outcome.text !== "string") {
      return yield* issue(`${path}.text`, `expected a string, got ${Input.kindOf(outcome.text)}`)
    }
    if (outcome._tag === "Fail" && outcome.message !== undefined && typeof outcome.message !== "string") {
      return yield* issue(`${path}.message`, `expected a string, got ${Input.kindOf(outcome.message)}`)
    }
    switch (outcome._tag) {
      case "Succeed": {
        if (outcome.chunks !== undefined) {
          if (!Array.isArray(outcome.chunks)) {
            return yield* issue(`${path}.chunks`, `expected an array of strings, got ${Input.kindOf(outcome.chunks)}`)
          }
          if (outcome.text !== undefined) return yield* issue(`${path}.chunks`, "give `text` or `chunks`, not both")
          const i = outcome.chunks.findIndex((chunk) => typeof chunk !== "string")
          if (i >= 0) return yield* issue(`${path}.chunks[${i}]`, "expected a string")
        }
        if (outcome.finishReason !== undefined && !isFinishReason(outcome.finishReason)) {
          return yield* issue(`${path}.finishReason`, `unknown finish reason ${Input.shown(outcome.finishReason)}`)
        }
        if (outcome.toolCalls !== undefined && !Array.isArray(outcome.toolCalls)) {
          return yield* issue(`${path}.toolCalls`, `expected an array, got ${Input.kindOf(outcome.toolCalls)}`)
        }
        const bad = (outcome.toolCalls ?? []).findIndex((call) => !isToolCall(call))
        if (bad >= 0) return yield* issue(`${path}.toolCalls[${bad}]`, "expected { id, name, arguments } strings")
        return { ...outcome, latency, chunkDelay }
      }
      case "Fail": {
        if (!isReason(outcome.reason))
          return yield* issue(`${path}.reason`, `unknown reason ${Input.shown(outcome.reason)}`)
        yield* Input.optional(outcome.status, (status) => Input.int(`${path}.status`, status, { min: 100, max: 599 }))
        yield* Input.optional(outcome.afterChunks, (n) => Input.int(`${path}.afterChunks`, n, { min: 0 }))
        const retryAfter = yield* Input.optional(outcome.retryAfter, (d) =>
          Input.duration(`${path}.retryAfter`, d, { allowZero: true })
        )
        const { retryAfter: _, ...rest } = outcome
        return { ...rest, latency, chunkDelay, ...(retryAfter === undefined ? {} : { retryAfter }) }
      }
      case "Hang": {
        yield* Input.optional(outcome.afterChunks, (n) => Input.int(`${path}.afterChunks`, n, { min: 0 }))
        return { ...outcome, latency, chunkDelay }
      }
    }
  })

const randomOf = (given: RandomMix): Input.Checked<(random: () => number) => Planned> =>
  Result.gen(function* () {
    yield* known("random", given, randomKeys)
    const mix = (yield* Input.readFields(given, undefined, "random")) as unknown as RandomMix
    const success = yield* Input.number("random.success", mix.success, { min: 0, max: 1 })
    const hang = yield* Input.number("random.hang", mix.hang ?? 0, { min: 0, max: 1 })
    if (success + hang > 1) return yield* issue("random.hang", `success ${success} + hang ${hang} exceed 1`)
    const weights: Array<readonly [Reason, number]> = []
    let total = 0
    const failures = mix.failures ?? { Overloaded: 1 }
    // null is a wrong value, not the default.
    if (mix.failures === null || typeof failures !== "object" || Array.isArray(failures)) {
      return yield* issue(
        "random.failures",
        `expected an object of weights by reason, got ${Input.shown(mix.failures)}`
      )
    }
    for (const [reason, weight] of Object.entries(failures)) {
      if (!isReason(reason)) return yield* issue(`random.failures.${reason}`, "unknown reason")
      total += yield* Input.number(`random.failures.${reason}`, weight, { min: 0 })
      weights.push([reason, total])
    }
    if (total === 0 && success + hang < 1) {
      return yield* issue("random.failures", "calls fail with probability above 0, but no reason has a weight")
    }
    return (random) => {
      const u = random()
      if (u < success) return { _tag: "Succeed" }
      if (u < success + hang) return { _tag: "Hang" }
      const point = random() * total
      return { _tag: "Fail", reason: (weights.find(([, upTo]) => point < upTo) ?? weights[weights.length - 1]!)[0] }
    }
  })

/**
 * Checks every option once, when the mock is built: an `OptionError` naming the first bad field.
 *
 * @internal
 */
export const compile = (given: Options): Effect.Effect<Compiled, OptionError> =>
  Input.orOptionError(
    Result.gen(function* () {
      yield* known("", given, optionKeys)
      // Read once: what is checked here is what the mock runs with (`respond` included).
      const options = (yield* Input.readFields(given)) as Options
      const name = yield* text("name", Input.orDefault(options.name, "mock"))
      const defaultModel = yield* text("model", Input.orDefault(options.model, "mock-model"))
      // The draws mix the seed as 32 bits: any other would repeat one of these (2^32 + 3 as 3, -1 as 2^32-1).
      const seed = yield* Input.int("seed", Input.orDefault(options.seed, 0), { min: 0, max: 2 ** 32 - 1 })
      const dimensions = yield* Input.positiveInt("dimensions", Input.orDefault(options.dimensions, 8), 65_536)
      const logSize = yield* Input.int("requestLogSize", Input.orDefault(options.requestLogSize, 1_000), {
        min: 0,
        max: 10_000_000
      })
      const maxConcurrency = yield* Input.optional(options.maxConcurrency, (n) =>
        Input.positiveInt("maxConcurrency", n)
      )
      const latency = yield* latencyOf("latency", options.latency)
      const chunkDelay = yield* latencyOf("chunkDelay", options.chunkDelay)
      if (options.respond !== undefined && typeof options.respond !== "function") {
        return yield* issue("respond", "expected a function")
      }
      if (options.script !== undefined && !Array.isArray(options.script)) {
        return yield* issue("script", "expected an array of outcomes")
      }
      const script: Array<Planned> = []
      for (const [i, outcome] of (options.script ?? []).entries()) script.push(yield* planOf(`script[${i}]`, outcome))
      const random = options.random === undefined ? undefined : yield* randomOf(options.random)
      const respond = options.respond
      return {
        name,
        defaultModel,
        seed,
        dimensions,
        logSize,
        maxConcurrency,
        latency,
        chunkDelay,
        script,
        random,
        respond
      }
    })
  )
