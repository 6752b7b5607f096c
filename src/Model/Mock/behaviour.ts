/**
 * What a mock does once its options are checked: which outcome call n gets (script, then
 * the seeded mix), how long it waits (only through `Effect.sleep`), what it answers, how a
 * stream paces, stalls or drops, and the counts and request log behind `MockControl`.
 *
 * @internal
 */
import { type Array as Arr, Cause, Channel, Effect, Exit, Result, Scope, Stream } from "effect"
import { type AiError, invalidRequest, ModelError, type Reason } from "../../AiError.js"
import * as Input from "../../Input.js"
import {
  type EmbedRequest,
  type EmbedResponse,
  estimateInputTokens,
  estimateTokens,
  type FinishReason,
  type GenerateRequest,
  type GenerateResponse,
  type Service,
  type StreamPart,
  toMessages,
  usage,
  validateEmbed,
  validateGenerate
} from "../../Model.js"
import type { Control, Counts, LoggedRequest } from "../Mock.js"
import type { Compiled, Planned, Span } from "./options.js"

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

/**
 * Splits a text into stream chunks: one word (with the spaces after it) a chunk.
 *
 * @internal
 */
export const chunksOf = (text: string): ReadonlyArray<string> => text.match(/\S+\s*|\s+/g) ?? []

/** murmur3's 32-bit finaliser: spreads a hash over all 32 bits (unsigned). */
const mix = (input: number): number => {
  let x = input >>> 0
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b)
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35)
  return (x ^ (x >>> 16)) >>> 0
}

/**
 * A deterministic unit vector for a text (a hash spread over the dimensions): equal
 * texts get equal vectors, in every run.
 *
 * @internal
 */
export const embedText = (text: string, dimensions: number): ReadonlyArray<number> => {
  // The whole text's hash seeds every dimension: spreading each character's running hash over the
  // dimension of its index left a text shorter than the dimensions with the rest at 0, so that
  // one-character texts were one of two vectors (+/- the first axis).
  let h = 2166136261
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619)
  const vector = new Array<number>(dimensions)
  for (let d = 0; d < dimensions; d++) vector[d] = mix(h + Math.imul(d + 1, 0x9e3779b9)) / 4294967296 - 0.5
  let norm = 0
  for (const x of vector) norm += x * x
  if (norm === 0) return vector.map(() => 1 / Math.sqrt(dimensions))
  norm = Math.sqrt(norm)
  return vector.map((x) => x / norm)
}

type Kind = LoggedRequest["kind"]
type Ending = "succeeded" | "failed" | "interrupted"

/**
 * The provider and control of a mock with checked options; its counts and request log live
 * in this closure, one per mock.
 *
 * @internal
 */
export const build = (config: Compiled): { readonly provider: Service; readonly control: Control } => {
  const { name, defaultModel, dimensions, logSize } = config
  const respond = config.respond ?? defaultRespond
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

  // `respond` is the user's function: what it throws, or an answer that is no string, is a refusal
  // naming the option, not a defect nor an answer whose text is not text. It runs once a call.
  const textFor = (request: GenerateRequest, outcome: Planned): Result.Result<string, ModelError> => {
    if (outcome._tag === "Succeed" && outcome.chunks !== undefined) return Result.succeed(outcome.chunks.join(""))
    if (outcome.text !== undefined) return Result.succeed(outcome.text)
    let text: unknown
    try {
      text = respond(request)
    } catch (cause) {
      return Result.fail(invalidRequest("respond", `the respond option threw: ${Input.thrownMessage(cause)}`, name))
    }
    return typeof text === "string"
      ? Result.succeed(text)
      : Result.fail(invalidRequest("respond", `the respond option answered ${Input.shown(text)}, not a string`, name))
  }

  const answer = (request: GenerateRequest, outcome: Extract<Planned, { _tag: "Succeed" }>, text: string) => {
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
            Effect.suspend(() =>
              Effect.map(Effect.fromResult(textFor(valid, outcome)), (text) => answer(valid, outcome, text))
            )
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
  // Made once per Mock, not per stream: a generator function made per call gets a map of its own
  // from V8, in the old generation, which keeps the stream's state alive until a full collection.
  const open = Effect.fnUntraced(function* (request: GenerateRequest, scope: Scope.Scope) {
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
    // A failure or a stall before any chunk needs no answer: `respond` runs for it no more than in `generate`.
    const text =
      outcome._tag !== "Succeed" && (outcome.afterChunks ?? 0) === 0 ? Result.succeed("") : textFor(valid, outcome)
    if (text._tag === "Failure") {
      ending = "failed"
      return Effect.fail(text.failure)
    }
    const chunks = outcome._tag === "Succeed" && outcome.chunks !== undefined ? outcome.chunks : chunksOf(text.success)
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
          const response = answer(valid, outcome, text.success)
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
  const stream = (request: GenerateRequest): Stream.Stream<StreamPart, AiError> =>
    Stream.fromChannel(Channel.fromTransform((_, scope: Scope.Scope) => open(request, scope)))

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
