/**
 * A scripted model provider for tests, examples and benchmarks: outcomes in order or a
 * seeded random mix, latencies fixed or drawn from a distribution, failures of every
 * reason, hangs, and chunked streams. Time passes only through `Effect.sleep`, so
 * `TestClock` drives it.
 *
 * @since 0.1.0
 */
import { Context, Duration, Effect, Exit, Layer, Random, Ref, Stream } from "effect"
import { type AiError, ModelError, type Reason } from "../AiError.js"
import {
  type EmbedRequest,
  type EmbedResponse,
  estimateTokens,
  type FinishReason,
  type GenerateRequest,
  type GenerateResponse,
  ModelProvider,
  type Service,
  type StreamPart,
  toMessages,
  usage
} from "../Model.js"

/**
 * A latency: a fixed duration, or a distribution sampled with the mock's seeded random.
 *
 * @since 0.1.0
 * @category models
 */
export type Latency =
  | Duration.DurationInput
  | { readonly uniform: readonly [Duration.DurationInput, Duration.DurationInput] }
  | { readonly exponential: Duration.DurationInput }
  | { readonly normal: { readonly mean: Duration.DurationInput; readonly stddev: Duration.DurationInput } }

/**
 * What one call does.
 *
 * @since 0.1.0
 * @category models
 */
export type Outcome =
  | {
      readonly _tag: "Succeed"
      readonly text?: string | undefined
      readonly latency?: Latency | undefined
      readonly finishReason?: FinishReason | undefined
    }
  | {
      readonly _tag: "Fail"
      readonly reason: Reason
      readonly status?: number | undefined
      readonly retryAfter?: Duration.DurationInput | undefined
      readonly latency?: Latency | undefined
      /** For streams: how many chunks are delivered before the failure. */
      readonly afterChunks?: number | undefined
    }
  | {
      readonly _tag: "Hang"
      /** For streams: how many chunks are delivered before it stalls. */
      readonly afterChunks?: number | undefined
    }

/**
 * @since 0.1.0
 * @category constructors
 */
export const Outcome = {
  succeed: (
    text?: string,
    options?: { readonly latency?: Latency; readonly finishReason?: FinishReason }
  ): Outcome => ({ _tag: "Succeed", text, latency: options?.latency, finishReason: options?.finishReason }),
  fail: (
    reason: Reason,
    options?: {
      readonly status?: number
      readonly retryAfter?: Duration.DurationInput
      readonly latency?: Latency
      readonly afterChunks?: number
    }
  ): Outcome => ({ _tag: "Fail", reason, ...options }),
  hang: (options?: { readonly afterChunks?: number }): Outcome => ({ _tag: "Hang", ...options })
} as const

/**
 * Weights of a seeded random mix of outcomes.
 *
 * @since 0.1.0
 * @category models
 */
export interface RandomMix {
  readonly seed: number
  readonly succeed: number
  readonly fail?: Partial<Record<Reason, number>> | undefined
  readonly hang?: number | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Provider name (default `"mock"`). */
  readonly name?: string | undefined
  readonly model?: string | undefined
  /** Outcomes for the 1st, 2nd, ... call (by start order). */
  readonly script?: ReadonlyArray<Outcome> | undefined
  /** After the script (or without one): a seeded random mix. Otherwise every call succeeds. */
  readonly random?: RandomMix | undefined
  /** Default latency of a call (a stream's time to first chunk). Default 0. */
  readonly latency?: Latency | undefined
  /** Delay between stream chunks. Default 0. */
  readonly chunkDelay?: Latency | undefined
  /** The answer text for a request (default: echoes the last message). */
  readonly respond?: ((request: GenerateRequest) => string) | undefined
  /** Dimensions of the deterministic embedding vectors. Default 8. */
  readonly dimensions?: number | undefined
}

/**
 * What a test can observe of a mock.
 *
 * @since 0.1.0
 * @category models
 */
export interface Control {
  readonly name: string
  /** Calls started (generate, stream and embed). */
  readonly calls: Effect.Effect<number>
  /** Calls that ended with a success or a failure. */
  readonly completed: Effect.Effect<number>
  /** Calls interrupted before they ended. */
  readonly interrupted: Effect.Effect<number>
  /** Calls currently running. */
  readonly inFlight: Effect.Effect<number>
  /** Highest number of calls running at once. */
  readonly peak: Effect.Effect<number>
  readonly requests: Effect.Effect<ReadonlyArray<GenerateRequest | EmbedRequest>>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class MockControl extends Context.Tag("effect-orchestra/Model/Mock/MockControl")<MockControl, Control>() {}

const defaultRespond = (request: GenerateRequest): string => {
  const messages = toMessages(request)
  const last = messages[messages.length - 1]
  return `mock answer to: ${last?.content ?? ""}`
}

const sampleLatency = (latency: Latency | undefined, random: Random.Random): Effect.Effect<Duration.Duration> => {
  if (latency === undefined) return Effect.succeed(Duration.zero)
  if (typeof latency === "object" && latency !== null && !Duration.isDuration(latency) && !Array.isArray(latency)) {
    if ("uniform" in latency) {
      const [min, max] = latency.uniform
      const lo = Duration.toMillis(min)
      const hi = Duration.toMillis(max)
      return Effect.map(random.next, (u) => Duration.millis(lo + u * (hi - lo)))
    }
    if ("exponential" in latency) {
      const mean = Duration.toMillis(latency.exponential)
      return Effect.map(random.next, (u) => Duration.millis(-mean * Math.log(1 - u)))
    }
    if ("normal" in latency) {
      const mean = Duration.toMillis(latency.normal.mean)
      const sd = Duration.toMillis(latency.normal.stddev)
      return Effect.zipWith(random.next, random.next, (u1, u2) => {
        const z = Math.sqrt(-2 * Math.log(1 - u1)) * Math.cos(2 * Math.PI * u2)
        return Duration.millis(Math.max(0, mean + z * sd))
      })
    }
  }
  return Effect.succeed(Duration.decode(latency as Duration.DurationInput))
}

const pickRandom = (mix: RandomMix, random: Random.Random): Effect.Effect<Outcome> =>
  Effect.map(random.next, (u) => {
    const entries: Array<readonly [Outcome, number]> = [[{ _tag: "Succeed" }, mix.succeed]]
    for (const [reason, weight] of Object.entries(mix.fail ?? {})) {
      entries.push([{ _tag: "Fail", reason: reason as Reason }, weight ?? 0])
    }
    if (mix.hang) entries.push([{ _tag: "Hang" }, mix.hang])
    const total = entries.reduce((sum, [, w]) => sum + w, 0)
    let point = u * total
    for (const [outcome, weight] of entries) {
      if (point < weight) return outcome
      point -= weight
    }
    return entries[0]![0]
  })

const statusOf: Partial<Record<Reason, number>> = {
  RateLimited: 429,
  Overloaded: 503,
  Unauthorized: 401,
  InvalidRequest: 400,
  Unavailable: 503,
  Timeout: 504
}

/**
 * Splits a text into stream chunks: one word (with its following space) a chunk.
 *
 * @since 0.1.0
 * @category utils
 */
export const chunksOf = (text: string): ReadonlyArray<string> => text.match(/\S+\s*|\s+/g) ?? []

/**
 * Deterministic unit vectors from a text (a hash spread over the dimensions).
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
  const norm = Math.sqrt(vector.reduce((s, x) => s + x * x, 0)) || 1
  return vector.map((x) => (text.length === 0 ? (x === 0 ? 1 / Math.sqrt(dimensions) : x) : x / norm))
}

/**
 * Builds a mock provider and its control.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (options: Options = {}) {
  const name = options.name ?? "mock"
  const defaultModel = options.model ?? "mock-model"
  const script = options.script ?? []
  const random = Random.make(options.random?.seed ?? 0)
  const respond = options.respond ?? defaultRespond
  const dimensions = options.dimensions ?? 8
  const latencyIsZero =
    options.latency === undefined ||
    (!(typeof options.latency === "object" && options.latency !== null && !Duration.isDuration(options.latency)) &&
      Duration.toMillis(Duration.decode(options.latency as Duration.DurationInput)) === 0)

  const started = yield* Ref.make(0)
  const completed = yield* Ref.make(0)
  const interrupted = yield* Ref.make(0)
  const inFlight = yield* Ref.make(0)
  const peak = yield* Ref.make(0)
  const requests = yield* Ref.make<Array<GenerateRequest | EmbedRequest>>([])

  const nextOutcome = (index: number): Effect.Effect<Outcome> => {
    const scripted = script[index]
    if (scripted !== undefined) return Effect.succeed(scripted)
    if (options.random !== undefined) return pickRandom(options.random, random)
    return Effect.succeed({ _tag: "Succeed" })
  }

  const begin = (request: GenerateRequest | EmbedRequest): Effect.Effect<Outcome> =>
    Effect.flatMap(
      Ref.modify(started, (n) => [n, n + 1] as const),
      (index) =>
        Effect.zipRight(
          Effect.zipRight(
            Ref.update(requests, (all) => {
              all.push(request)
              return all
            }),
            Effect.flatMap(
              Ref.updateAndGet(inFlight, (n) => n + 1),
              (now) => Ref.update(peak, (p) => Math.max(now, p))
            )
          ),
          nextOutcome(index)
        )
    )

  const end = (wasInterrupted: boolean): Effect.Effect<void> =>
    Effect.zipRight(
      Ref.update(inFlight, (n) => n - 1),
      Ref.update(wasInterrupted ? interrupted : completed, (n) => n + 1)
    )

  const track = <A, E>(
    request: GenerateRequest | EmbedRequest,
    body: (outcome: Outcome) => Effect.Effect<A, E>
  ): Effect.Effect<A, E> =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(begin(request), (outcome) =>
        restore(body(outcome)).pipe(Effect.onExit((exit) => end(Exit.isInterrupted(exit))))
      )
    )

  const failure = (outcome: Extract<Outcome, { _tag: "Fail" }>, model: string): ModelError =>
    new ModelError({
      reason: outcome.reason,
      message: `mock ${name} failed: ${outcome.reason}`,
      provider: name,
      model,
      status: outcome.status ?? statusOf[outcome.reason],
      retryAfter: outcome.retryAfter === undefined ? undefined : Duration.decode(outcome.retryAfter)
    })

  const wait = (latency: Latency | undefined): Effect.Effect<void> =>
    latency === undefined && latencyIsZero
      ? Effect.void
      : Effect.flatMap(sampleLatency(latency ?? options.latency, random), (d) =>
          Duration.toMillis(d) === 0 ? Effect.void : Effect.sleep(d)
        )

  const generate = (request: GenerateRequest): Effect.Effect<GenerateResponse, AiError> =>
    track(request, (outcome) => {
      const model = request.model ?? defaultModel
      switch (outcome._tag) {
        case "Hang":
          return Effect.never
        case "Fail":
          return Effect.zipRight(wait(outcome.latency), Effect.fail(failure(outcome, model)))
        case "Succeed":
          // Lazily, so that a throwing `respond` is a defect of this call, tracked like any end.
          return Effect.zipRight(
            wait(outcome.latency),
            Effect.sync(() => responseOf(request, outcome, model))
          )
      }
    })

  const responseOf = (
    request: GenerateRequest,
    outcome: Extract<Outcome, { _tag: "Succeed" }>,
    model: string
  ): GenerateResponse => {
    const text = outcome.text ?? respond(request)
    const input = toMessages(request).reduce((n, m) => n + estimateTokens(m.content), 0)
    return {
      text,
      finishReason: outcome.finishReason ?? "stop",
      usage: usage(input, estimateTokens(text)),
      provider: name,
      model
    }
  }

  const chunkStream = (
    request: GenerateRequest,
    outcome: Outcome,
    model: string
  ): Stream.Stream<StreamPart, AiError> => {
    const succeedOutcome: Extract<Outcome, { _tag: "Succeed" }> =
      outcome._tag === "Succeed" ? outcome : { _tag: "Succeed" }
    const response = responseOf(request, succeedOutcome, model)
    const chunks = chunksOf(response.text)
    const limit = outcome._tag === "Succeed" ? chunks.length : Math.min(outcome.afterChunks ?? 0, chunks.length)
    const deltas = Stream.fromIterable(chunks.slice(0, limit).map((text, i) => [text, i] as const)).pipe(
      Stream.mapEffect(([text, i]) =>
        Effect.as(i === 0 ? wait(outcome._tag === "Hang" ? undefined : outcome.latency) : waitChunk(), {
          _tag: "TextDelta",
          text
        } as StreamPart)
      )
    )
    const ending: Stream.Stream<StreamPart, AiError> =
      outcome._tag === "Succeed"
        ? Stream.succeed({
            _tag: "Finish",
            finishReason: response.finishReason,
            usage: response.usage,
            provider: name,
            model
          })
        : outcome._tag === "Fail"
          ? Stream.fromEffect(
              Effect.zipRight(limit === 0 ? wait(outcome.latency) : waitChunk(), Effect.fail(failure(outcome, model)))
            )
          : Stream.fromEffect(Effect.zipRight(limit === 0 ? Effect.void : waitChunk(), Effect.never))
    return Stream.concat(deltas, ending)
  }

  const waitChunk = (): Effect.Effect<void> =>
    options.chunkDelay === undefined
      ? Effect.void
      : Effect.flatMap(sampleLatency(options.chunkDelay, random), (d) =>
          Duration.toMillis(d) === 0 ? Effect.void : Effect.sleep(d)
        )

  const streamTracked = (request: GenerateRequest): Stream.Stream<StreamPart, AiError> =>
    Stream.unwrapScoped(
      Effect.gen(function* () {
        const model = request.model ?? defaultModel
        const ended = yield* Ref.make(false)
        // In flight for as long as the stream's scope is open: a consumer that leaves early
        // (or a timeout) closes it before the stream ended, which counts as an interruption.
        const outcome = yield* Effect.acquireRelease(begin(request), () =>
          Effect.flatMap(Ref.get(ended), (done) => end(!done))
        )
        return chunkStream(request, outcome, model).pipe(
          Stream.onEnd(Ref.set(ended, true)),
          Stream.tapErrorCause(() => Ref.set(ended, true))
        )
      })
    )

  const embed = (request: EmbedRequest): Effect.Effect<EmbedResponse, AiError> =>
    track(request, (outcome) => {
      const model = request.model ?? defaultModel
      switch (outcome._tag) {
        case "Hang":
          return Effect.never
        case "Fail":
          return Effect.zipRight(wait(outcome.latency), Effect.fail(failure(outcome, model)))
        case "Succeed":
          return Effect.as(wait(outcome.latency), {
            vectors: request.texts.map((t) => embedText(t, dimensions)),
            usage: usage(
              request.texts.reduce((n, t) => n + estimateTokens(t), 0),
              0
            ),
            provider: name,
            model
          })
      }
    })

  const provider: Service = { name, defaultModel, generate, stream: streamTracked, embed }
  const control: Control = {
    name,
    calls: Ref.get(started),
    completed: Ref.get(completed),
    interrupted: Ref.get(interrupted),
    inFlight: Ref.get(inFlight),
    peak: Ref.get(peak),
    requests: Effect.map(Ref.get(requests), (all) => all.slice())
  }
  return { provider, control } as const
})

/**
 * A layer with a mock `ModelProvider` and its `MockControl`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<ModelProvider | MockControl> =>
  Layer.effectContext(
    Effect.map(make(options), ({ control, provider }) =>
      Context.make(ModelProvider, provider).pipe(Context.add(MockControl, control))
    )
  )
