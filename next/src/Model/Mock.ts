/**
 * A model provider for tests, examples, benchmarks and the CLI's offline mode: outcomes
 * scripted call by call or drawn from a seeded random mix, latencies fixed or uniform,
 * failures of every reason, hangs, and streams that pace, stall or drop. Time passes only
 * through `Effect.sleep`, so `TestClock` drives it. `MockControl` counts calls and keeps
 * the last requests.
 *
 * @since 0.1.0
 */
import {
  type Array as Arr,
  Cause,
  Channel,
  Context,
  Duration,
  Effect,
  Exit,
  Layer,
  Result,
  Schema,
  Scope,
  Stream
} from "effect"
import { type AiError, ModelError, Reason } from "../AiError.js"
import * as Input from "../Input.js"
import type { ConfigError } from "../Input.js"
import {
  type EmbedRequest,
  type EmbedResponse,
  estimateInputTokens,
  estimateTokens,
  FinishReason,
  type GenerateRequest,
  type GenerateResponse,
  ModelProvider,
  type Service,
  type StreamPart,
  ToolCall,
  toMessages,
  usage,
  validateEmbed,
  validateGenerate
} from "../Model.js"

/**
 * A latency: a fixed duration (`150`, `"150 millis"`), or a duration drawn uniformly
 * between two bounds with the mock's seeded random (`{ uniform: [100, 300] }`).
 *
 * @since 0.1.0
 * @category models
 */
export type Latency = Duration.Input | { readonly uniform: readonly [min: Duration.Input, max: Duration.Input] }

/**
 * The call answers. For streams, the text arrives in `chunks` (default: one word a
 * chunk), the first after `latency`, the next ones `chunkDelay` apart, then the tool
 * calls and the `Finish`.
 *
 * @since 0.2.0
 * @category models
 */
export interface Succeed {
  readonly _tag: "Succeed"
  /** The answer. Default: `respond(request)`. Give `text` or `chunks`, not both. */
  readonly text?: string | undefined
  /** The stream's chunks, in order; the answer of `generate` is their concatenation. */
  readonly chunks?: ReadonlyArray<string> | undefined
  readonly toolCalls?: ReadonlyArray<ToolCall> | undefined
  /** Default `tool_calls` when there are tool calls, else `stop`. */
  readonly finishReason?: FinishReason | undefined
  readonly latency?: Latency | undefined
  readonly chunkDelay?: Latency | undefined
}

/**
 * The call fails with a `ModelError` of this `reason`, after `latency`. A stream first
 * delivers `afterChunks` chunks of the answer, then drops.
 *
 * @since 0.2.0
 * @category models
 */
export interface Fail {
  readonly _tag: "Fail"
  readonly reason: Reason
  /** The error's message. Default: `mock <name> failed: <reason>`. */
  readonly message?: string | undefined
  /** Default: the status a real provider sends for the reason (429, 503, 401, ...). */
  readonly status?: number | undefined
  readonly retryAfter?: Duration.Input | undefined
  readonly latency?: Latency | undefined
  /** For streams: chunks delivered before the failure. Default 0. */
  readonly afterChunks?: number | undefined
  readonly chunkDelay?: Latency | undefined
  /** For streams: the answer whose first chunks are delivered. Default: `respond(request)`. */
  readonly text?: string | undefined
}

/**
 * The call never answers (until interrupted). A stream first delivers `afterChunks`
 * chunks, then stalls.
 *
 * @since 0.2.0
 * @category models
 */
export interface Hang {
  readonly _tag: "Hang"
  /** For streams: chunks delivered before the stall. Default 0. */
  readonly afterChunks?: number | undefined
  readonly latency?: Latency | undefined
  readonly chunkDelay?: Latency | undefined
  readonly text?: string | undefined
}

/**
 * What one call does.
 *
 * @since 0.1.0
 * @category models
 */
export type Outcome = Succeed | Fail | Hang

/**
 * @since 0.1.0
 * @category constructors
 */
export const Outcome = {
  succeed: (text?: string, options?: Omit<Succeed, "_tag" | "text">): Outcome => ({
    _tag: "Succeed",
    text,
    ...options
  }),
  fail: (reason: Reason, options?: Omit<Fail, "_tag" | "reason">): Outcome => ({ _tag: "Fail", reason, ...options }),
  hang: (options?: Omit<Hang, "_tag">): Outcome => ({ _tag: "Hang", ...options })
} as const

/**
 * A seeded random mix of outcomes, for the calls the script does not cover. A call
 * succeeds with probability `success`, hangs with probability `hang`, and fails
 * otherwise, with a reason drawn by the `failures` weights.
 *
 * @since 0.1.0
 * @category models
 */
export interface RandomMix {
  /** In [0, 1]. */
  readonly success: number
  /** In [0, 1]; `success + hang` at most 1. Default 0. */
  readonly hang?: number | undefined
  /** Relative weights of the failure reasons. Default `{ Overloaded: 1 }`. */
  readonly failures?: Partial<Record<Reason, number>> | undefined
}

/**
 * Options of {@link make}. Every number is checked when the mock is built: a bad one
 * fails the layer with a `ConfigError` naming the field.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Provider name (default `"mock"`). */
  readonly name?: string | undefined
  /** The model reported when a request names none (default `"mock-model"`). */
  readonly model?: string | undefined
  /** Outcomes of the 1st, 2nd, ... valid call (generate, stream and embed, by start order). */
  readonly script?: ReadonlyArray<Outcome> | undefined
  /** After the script (or without one): a seeded random mix. Otherwise every call succeeds. */
  readonly random?: RandomMix | undefined
  /** Seeds every random draw (outcomes, uniform latencies). Call n draws the same numbers in every run. Default 0. */
  readonly seed?: number | undefined
  /** Default latency of a call (a stream's time to its first chunk). Default 0. */
  readonly latency?: Latency | undefined
  /** Default delay between stream chunks. Default 0. */
  readonly chunkDelay?: Latency | undefined
  /** The answer to a request. Default: `mock answer to: <last message>`. */
  readonly respond?: ((request: GenerateRequest) => string) | undefined
  /** Dimensions of the deterministic embedding vectors. Default 8. */
  readonly dimensions?: number | undefined
  /** Declared on the service: calls the provider serves at once (the executor queues the rest). */
  readonly maxConcurrency?: number | undefined
  /** Requests kept for `MockControl.requests`: the last N. Default 1,000; 0 keeps none. Counts are kept apart. */
  readonly requestLogSize?: number | undefined
}

/**
 * A request as the mock saw it, numbered by start order from 0.
 *
 * @since 0.2.0
 * @category models
 */
export type LoggedRequest =
  | { readonly index: number; readonly kind: "generate" | "stream"; readonly request: GenerateRequest }
  | { readonly index: number; readonly kind: "embed"; readonly request: EmbedRequest }

/**
 * Counts since the mock was built. `calls = succeeded + failed + interrupted + inFlight`.
 *
 * @since 0.2.0
 * @category models
 */
export interface Counts {
  readonly calls: number
  readonly generate: number
  readonly stream: number
  readonly embed: number
  readonly succeeded: number
  readonly failed: number
  readonly interrupted: number
  readonly inFlight: number
  /** Highest number of calls running at once. */
  readonly peak: number
}

/**
 * What a test can observe of a mock.
 *
 * @since 0.1.0
 * @category models
 */
export interface Control {
  readonly name: string
  /** Calls started (generate, stream and embed), refused requests included. */
  readonly calls: Effect.Effect<number>
  /** Calls that ended with a success or a failure. */
  readonly completed: Effect.Effect<number>
  /** Calls interrupted (or streams left by their consumer) before they ended. */
  readonly interrupted: Effect.Effect<number>
  readonly inFlight: Effect.Effect<number>
  readonly peak: Effect.Effect<number>
  readonly counts: Effect.Effect<Counts>
  /** The last `requestLogSize` requests, oldest first. */
  readonly requests: Effect.Effect<ReadonlyArray<LoggedRequest>>
}

/**
 * @since 0.1.0
 * @category services
 */
export class MockControl extends Context.Service<MockControl, Control>()("effect-orchestra/Model/Mock/MockControl") {}

/**
 * Splits a text into stream chunks: one word (with the spaces after it) a chunk.
 *
 * @since 0.1.0
 * @category utils
 */
export const chunksOf = (text: string): ReadonlyArray<string> => text.match(/\S+\s*|\s+/g) ?? []

/**
 * A deterministic unit vector for a text (a hash spread over the dimensions): equal
 * texts get equal vectors, in every run.
 *
 * @since 0.1.0
 * @category utils
 */
export const embedText = (text: string, dimensions: number): ReadonlyArray<number> => {
  const vector = new Array<number>(dimensions).fill(0)
  let h = 2166136261
  for (let i = 0; i < text.length; i++) {
    h = Math.imul(h ^ text.charCodeAt(i), 16777619)
    vector[i % dimensions]! += ((h >>> 0) % 1000) / 1000 - 0.5
  }
  let norm = 0
  for (const x of vector) norm += x * x
  if (norm === 0) return vector.map(() => 1 / Math.sqrt(dimensions))
  norm = Math.sqrt(norm)
  return vector.map((x) => x / norm)
}

// Numbers of call n depend only on (seed, n), never on how concurrent calls interleave.
const randomFor = (seed: number, index: number): (() => number) => {
  let state = (Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b)) >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const statusOf: Partial<Record<Reason, number>> = {
  RateLimited: 429,
  Overloaded: 503,
  Unavailable: 503,
  Timeout: 504,
  Unauthorized: 401,
  InvalidRequest: 400,
  TooLarge: 413
}

const defaultRespond = (request: GenerateRequest): string => {
  const messages = toMessages(request)
  return `mock answer to: ${messages[messages.length - 1]?.content ?? ""}`
}

// ---- options, checked once when the mock is built ----

interface Span {
  readonly min: number
  readonly max: number
}

type Planned =
  | (Omit<Succeed, "latency" | "chunkDelay"> & Delays)
  | (Omit<Fail, "latency" | "chunkDelay" | "retryAfter"> & Delays & { readonly retryAfter?: Duration.Duration })
  | (Omit<Hang, "latency" | "chunkDelay"> & Delays)

interface Delays {
  readonly latency?: Span | undefined
  readonly chunkDelay?: Span | undefined
}

interface Compiled {
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

const known = (path: string, value: object, keys: ReadonlySet<string>): Input.Checked<void> => {
  for (const key of Object.keys(value)) {
    if (!keys.has(key))
      return issue(path === "" ? key : `${path}.${key}`, `unknown option (expected one of ${[...keys].join(", ")})`)
  }
  return Result.succeed(undefined)
}

const text = (path: string, input: unknown): Input.Checked<string> =>
  typeof input === "string" && input.trim().length > 0
    ? Result.succeed(input)
    : issue(
        path,
        `expected a non-empty string, got ${typeof input === "string" ? JSON.stringify(input) : typeof input}`
      )

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

const planOf = (path: string, outcome: Outcome): Input.Checked<Planned> =>
  Result.gen(function* () {
    if (typeof outcome !== "object" || outcome === null || !(outcome._tag in outcomeKeys)) {
      return yield* issue(`${path}._tag`, "expected Succeed, Fail or Hang (use Mock.Outcome.succeed/fail/hang)")
    }
    yield* known(path, outcome, outcomeKeys[outcome._tag])
    const latency = yield* latencyOf(`${path}.latency`, outcome.latency)
    const chunkDelay = yield* latencyOf(`${path}.chunkDelay`, outcome.chunkDelay)
    if (outcome.text !== undefined && typeof outcome.text !== "string") {
      return yield* issue(`${path}.text`, `expected a string, got ${typeof outcome.text}`)
    }
    switch (outcome._tag) {
      case "Succeed": {
        if (outcome.chunks !== undefined) {
          if (outcome.text !== undefined) return yield* issue(`${path}.chunks`, "give `text` or `chunks`, not both")
          const i = outcome.chunks.findIndex((chunk) => typeof chunk !== "string")
          if (i >= 0) return yield* issue(`${path}.chunks[${i}]`, "expected a string")
        }
        if (outcome.finishReason !== undefined && !isFinishReason(outcome.finishReason)) {
          return yield* issue(`${path}.finishReason`, `unknown finish reason ${JSON.stringify(outcome.finishReason)}`)
        }
        const bad = (outcome.toolCalls ?? []).findIndex((call) => !isToolCall(call))
        if (bad >= 0) return yield* issue(`${path}.toolCalls[${bad}]`, "expected { id, name, arguments } strings")
        return { ...outcome, latency, chunkDelay }
      }
      case "Fail": {
        if (!isReason(outcome.reason))
          return yield* issue(`${path}.reason`, `unknown reason ${JSON.stringify(outcome.reason)}`)
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

const randomOf = (mix: RandomMix): Input.Checked<(random: () => number) => Planned> =>
  Result.gen(function* () {
    yield* known("random", mix, randomKeys)
    const success = yield* Input.number("random.success", mix.success, { min: 0, max: 1 })
    const hang = yield* Input.number("random.hang", mix.hang ?? 0, { min: 0, max: 1 })
    if (success + hang > 1) return yield* issue("random.hang", `success ${success} + hang ${hang} exceed 1`)
    const weights: Array<readonly [Reason, number]> = []
    let total = 0
    for (const [reason, weight] of Object.entries(mix.failures ?? { Overloaded: 1 })) {
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

const compile = (options: Options): Effect.Effect<Compiled, ConfigError> =>
  Input.orConfigError(
    Result.gen(function* () {
      yield* known("", options, optionKeys)
      const name = yield* text("name", options.name ?? "mock")
      const defaultModel = yield* text("model", options.model ?? "mock-model")
      const seed = yield* Input.int("seed", options.seed ?? 0)
      const dimensions = yield* Input.positiveInt("dimensions", options.dimensions ?? 8, 65_536)
      const logSize = yield* Input.int("requestLogSize", options.requestLogSize ?? 1_000, { min: 0, max: 10_000_000 })
      const maxConcurrency = yield* Input.optional(options.maxConcurrency, (n) =>
        Input.positiveInt("maxConcurrency", n)
      )
      const latency = yield* latencyOf("latency", options.latency)
      const chunkDelay = yield* latencyOf("chunkDelay", options.chunkDelay)
      if (options.respond !== undefined && typeof options.respond !== "function") {
        return yield* issue("respond", "expected a function")
      }
      const script: Array<Planned> = []
      for (const [i, outcome] of (options.script ?? []).entries()) script.push(yield* planOf(`script[${i}]`, outcome))
      const random = options.random === undefined ? undefined : yield* randomOf(options.random)
      return { name, defaultModel, seed, dimensions, logSize, maxConcurrency, latency, chunkDelay, script, random }
    })
  )

type Kind = LoggedRequest["kind"]
type Ending = "succeeded" | "failed" | "interrupted"

/**
 * Builds a mock provider and its control. Fails with a `ConfigError` naming the first
 * bad option.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: Options = {}
): Effect.Effect<{ readonly provider: Service; readonly control: Control }, ConfigError> =>
  Effect.map(compile(options), (config) => build(options, config))

const build = (options: Options, config: Compiled): { readonly provider: Service; readonly control: Control } => {
  const { name, defaultModel, dimensions, logSize } = config
  const respond = options.respond ?? defaultRespond
  const counts = { calls: 0, generate: 0, stream: 0, embed: 0, succeeded: 0, failed: 0, interrupted: 0, inFlight: 0 }
  let peak = 0
  let slots = 0
  const log: Array<LoggedRequest> = []
  let logNext = 0

  const begin = (kind: Kind, request: GenerateRequest | EmbedRequest): void => {
    const index = counts.calls++
    counts[kind]++
    if (++counts.inFlight > peak) peak = counts.inFlight
    if (logSize === 0) return
    const entry = { index, kind, request } as LoggedRequest
    if (log.length < logSize) log.push(entry)
    else log[logNext] = entry
    logNext = (logNext + 1) % logSize
  }

  const end = (ending: Ending): void => {
    counts.inFlight--
    counts[ending]++
  }

  const endingOf = (exit: Exit.Exit<unknown, unknown>): Ending =>
    Exit.isSuccess(exit) ? "succeeded" : Exit.hasInterrupts(exit) && !Exit.hasFails(exit) ? "interrupted" : "failed"

  // A valid call takes the next outcome, with its own random numbers.
  const plan = (): { readonly outcome: Planned; readonly random: () => number } => {
    const slot = slots++
    const random = randomFor(config.seed, slot)
    const scripted = config.script[slot]
    if (scripted !== undefined) return { outcome: scripted, random }
    if (config.random === undefined) return { outcome: { _tag: "Succeed" }, random }
    return { outcome: config.random(random), random }
  }

  const delay = (span: Span | undefined, random: () => number): number =>
    span === undefined ? 0 : span.max === span.min ? span.min : span.min + random() * (span.max - span.min)

  const sleep = (millis: number): Effect.Effect<void> => (millis === 0 ? Effect.void : Effect.sleep(millis))

  const failure = (outcome: Extract<Planned, { _tag: "Fail" }>, model: string): ModelError =>
    new ModelError({
      reason: outcome.reason,
      message: outcome.message ?? `mock ${name} failed: ${outcome.reason}`,
      provider: name,
      model,
      status: outcome.status ?? statusOf[outcome.reason],
      retryAfter: outcome.retryAfter
    })

  const chunksFor = (request: GenerateRequest, outcome: Planned): ReadonlyArray<string> =>
    outcome._tag === "Succeed" && outcome.chunks !== undefined
      ? outcome.chunks
      : chunksOf(outcome.text ?? respond(request))

  const answer = (request: GenerateRequest, outcome: Extract<Planned, { _tag: "Succeed" }>) => {
    const text = outcome.chunks?.join("") ?? outcome.text ?? respond(request)
    const toolCalls = outcome.toolCalls
    const finishReason: FinishReason =
      outcome.finishReason ?? (toolCalls !== undefined && toolCalls.length > 0 ? "tool_calls" : "stop")
    const model = request.model ?? defaultModel
    return {
      text,
      finishReason,
      usage: usage(estimateInputTokens(request), estimateTokens(text)),
      provider: name,
      model,
      ...(toolCalls === undefined ? {} : { toolCalls })
    } satisfies GenerateResponse
  }

  const tracked = <A>(kind: Kind, request: GenerateRequest | EmbedRequest, body: Effect.Effect<A, AiError>) =>
    Effect.acquireUseRelease(
      Effect.sync(() => begin(kind, request)),
      () => body,
      (_, exit) => Effect.sync(() => end(endingOf(exit)))
    )

  const generate = (request: GenerateRequest): Effect.Effect<GenerateResponse, AiError> =>
    tracked(
      "generate",
      request,
      Effect.flatMap(validateGenerate(request), (valid) =>
        Effect.suspend(() => {
          const { outcome, random } = plan()
          if (outcome._tag === "Hang") return Effect.never
          const wait = sleep(delay(outcome.latency ?? config.latency, random))
          if (outcome._tag === "Fail")
            return Effect.andThen(wait, Effect.fail(failure(outcome, valid.model ?? defaultModel)))
          return Effect.andThen(
            wait,
            Effect.sync(() => answer(valid, outcome))
          )
        })
      )
    )

  const embed = (request: EmbedRequest): Effect.Effect<EmbedResponse, AiError> =>
    tracked(
      "embed",
      request,
      Effect.flatMap(validateEmbed(request), (valid) =>
        Effect.suspend(() => {
          const { outcome, random } = plan()
          if (outcome._tag === "Hang") return Effect.never
          const model = valid.model ?? defaultModel
          const wait = sleep(delay(outcome.latency ?? config.latency, random))
          if (outcome._tag === "Fail") return Effect.andThen(wait, Effect.fail(failure(outcome, model)))
          let input = 0
          for (const text of valid.texts) input += estimateTokens(text)
          return Effect.as(wait, {
            vectors: valid.texts.map((text) => embedText(text, dimensions)),
            usage: usage(input, 0),
            provider: name,
            model
          } satisfies EmbedResponse)
        })
      )
    )

  // One part per pull, so each chunk's delay paces the consumer. The call is in flight
  // until the stream's scope closes: a consumer that leaves before the end interrupts it.
  const stream = (request: GenerateRequest): Stream.Stream<StreamPart, AiError> =>
    Stream.fromChannel(
      Channel.fromTransform((_, scope: Scope.Scope) =>
        Effect.gen(function* () {
          let ending: Ending = "interrupted"
          begin("stream", request)
          yield* Scope.addFinalizer(
            scope,
            Effect.sync(() => end(ending))
          )
          const validated = yield* Effect.result(validateGenerate(request))
          if (validated._tag === "Failure") {
            ending = "failed"
            return Effect.fail(validated.failure)
          }
          const valid = validated.success
          const { outcome, random } = plan()
          const model = valid.model ?? defaultModel
          const chunks = chunksFor(valid, outcome)
          const limit = outcome._tag === "Succeed" ? chunks.length : Math.min(outcome.afterChunks ?? 0, chunks.length)
          const gap = outcome.chunkDelay ?? config.chunkDelay
          let sent = 0
          let done = false
          const nextDelay = () => sleep(delay(sent === 0 ? (outcome.latency ?? config.latency) : gap, random))
          return Effect.suspend((): Effect.Effect<Arr.NonEmptyReadonlyArray<StreamPart>, AiError | Cause.Done> => {
            if (done) return Cause.done()
            if (sent < limit) {
              const delta: StreamPart = { _tag: "TextDelta", text: chunks[sent]! }
              return Effect.map(nextDelay(), () => {
                sent++
                return [delta]
              })
            }
            done = true
            switch (outcome._tag) {
              case "Hang":
                return Effect.never
              case "Fail":
                return Effect.flatMap(nextDelay(), () => {
                  ending = "failed"
                  return Effect.fail(failure(outcome, model))
                })
              case "Succeed": {
                const response = answer(valid, outcome)
                const parts: Array<StreamPart> = (response.toolCalls ?? []).map((call) => ({ _tag: "ToolCall", call }))
                parts.push({
                  _tag: "Finish",
                  finishReason: response.finishReason,
                  usage: response.usage,
                  provider: name,
                  model
                })
                return Effect.map(limit === 0 ? nextDelay() : Effect.void, () => {
                  ending = "succeeded"
                  return parts as unknown as Arr.NonEmptyReadonlyArray<StreamPart>
                })
              }
            }
          })
        })
      )
    )

  const provider: Service = {
    name,
    defaultModel,
    generate,
    stream,
    embed,
    ...(config.maxConcurrency === undefined ? {} : { maxConcurrency: config.maxConcurrency })
  }
  const snapshot = (): Counts => ({ ...counts, peak })
  const control: Control = {
    name,
    calls: Effect.sync(() => counts.calls),
    completed: Effect.sync(() => counts.succeeded + counts.failed),
    interrupted: Effect.sync(() => counts.interrupted),
    inFlight: Effect.sync(() => counts.inFlight),
    peak: Effect.sync(() => peak),
    counts: Effect.sync(snapshot),
    requests: Effect.sync(() =>
      log.length < logSize ? log.slice() : [...log.slice(logNext), ...log.slice(0, logNext)]
    )
  }
  return { provider, control }
}

/**
 * A layer with a mock `ModelProvider` and its `MockControl`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<ModelProvider | MockControl, ConfigError> =>
  Layer.effectContext(
    Effect.map(make(options), ({ control, provider }) =>
      Context.make(ModelProvider, provider).pipe(Context.add(MockControl, control))
    )
  )
