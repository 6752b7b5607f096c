/**
 * The streaming engine behind `Streaming.ts`.
 *
 * Before the first chunk, an *acquisition* runs attempts (retries, fallbacks, hedges) until
 * one upstream delivers a chunk; that attempt becomes the stream's *lane*. Each attempt's
 * upstream runs in a producer fiber (started synchronously) that reads up to `PREFETCH`
 * chunks ahead into a buffer; the consumer takes everything buffered at once, or waits for
 * the producer to hand the next chunk over. No fiber, race or timer per chunk.
 *
 * Deadlines live in the shared watchdog (`streamingWatchdog.ts`). When one passes while the
 * consumer waits, the consumer receives the typed `TimeoutError` at once; closing the lane
 * then interrupts the producer, which closes the upstream's scope. The idle deadline is armed
 * only while the consumer waits, so a slow consumer never trips it.
 *
 * @internal
 */
import {
  Cause,
  Channel,
  Chunk,
  type Clock,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  FiberId,
  Option,
  Random,
  Runtime,
  type Scope,
  Stream,
  Tracer
} from "effect"
import {
  type AiError,
  isRetryable,
  ModelError,
  reasonOf,
  shouldFallback,
  StreamInterruptedError,
  TimeoutError
} from "../AiError.js"
import type { CircuitBreaker } from "../CircuitBreaker.js"
import * as Metrics from "../Metrics.js"
import {
  estimateTokens,
  type Finish,
  type GenerateRequest,
  type Message,
  type Service as ProviderService,
  type StreamPart,
  validateGenerate
} from "../Model.js"
import {
  defaultRetry,
  type RetryPolicy,
  type RetryPolicyInput,
  retry as makeRetry,
  retryDelayMillis
} from "../Policy.js"
import { key as cacheKeyOf } from "../ResponseCache.js"
import type { Service as StatsService } from "../Stats.js"
import type * as Api from "../Streaming.js"
import * as Watchdog from "./streamingWatchdog.js"

const NONE = Number.POSITIVE_INFINITY

const millisOf = (input: Duration.DurationInput | "none" | undefined, fallback: number): number =>
  input === undefined ? fallback : input === "none" ? NONE : Duration.toMillis(Duration.decode(input))

const resolveRetry = (
  option: boolean | RetryPolicy | RetryPolicyInput | undefined,
  base: RetryPolicy
): RetryPolicy | undefined => {
  if (option === undefined || option === false) return undefined
  if (option === true) return base
  return "maxAttempts" in option && Duration.isDuration(option.initialDelay) && Duration.isDuration(option.maxDelay)
    ? (option as RetryPolicy)
    : makeRetry(option as RetryPolicyInput)
}

const retryAfterOf = (error: AiError): Duration.Duration | undefined =>
  error._tag === "ModelError" || error._tag === "CircuitOpenError" ? error.retryAfter : undefined

type Recorder = (exit: Exit.Exit<void, AiError>) => Effect.Effect<void>

/** @internal */
export const guardFromBreaker = (breaker: CircuitBreaker): Api.Guard => ({
  // `breaker.run` brackets an effect: admission before it, the outcome after it. The effect
  // run here signals admission and then waits for the stream's end, so the breaker sees one
  // call lasting as long as the stream, and records the stream's own exit.
  admit: Effect.gen(function* () {
    const admitted = yield* Deferred.make<void, AiError>()
    const result = yield* Deferred.make<void, AiError>()
    const fiber = yield* Effect.forkDaemon(
      breaker
        .run(Effect.zipRight(Deferred.succeed(admitted, undefined), Deferred.await(result)))
        .pipe(Effect.onExit((exit) => (Exit.isFailure(exit) ? Deferred.failCause(admitted, exit.cause) : Effect.void)))
    )
    yield* Deferred.await(admitted)
    return (exit: Exit.Exit<void, AiError>) =>
      Effect.zipRight(Deferred.done(result, exit), Effect.asVoid(Fiber.await(fiber)))
  })
})

interface ResolvedStep {
  readonly index: number
  readonly provider: ProviderService
  readonly labels: Metrics.Labels
  readonly retry: RetryPolicy | undefined
  readonly prepare: (request: GenerateRequest) => GenerateRequest
  readonly guards: ReadonlyArray<Api.Guard>
  readonly onOutcome: ((outcome: Api.AttemptOutcome) => Effect.Effect<void>) | undefined
}

type Pull = Effect.Effect<Chunk.Chunk<StreamPart>, Option.Option<AiError>>

interface Lane {
  readonly step: ResolvedStep
  readonly recorders: ReadonlyArray<Recorder>
  /** Deadline of the first chunk (armed from the attempt's start) and of each later wait. */
  readonly firstTimer: Watchdog.Timer | undefined
  readonly idleTimer: Watchdog.Timer | undefined
  /** Drains the upstream into `buffer`. */
  producer: Fiber.RuntimeFiber<void, AiError> | undefined
  /** Chunks received, not yet taken by the consumer (at most `PREFETCH`). */
  buffer: Array<Chunk.Chunk<StreamPart>>
  /** How the upstream ended, once it has. */
  done: PullExit | undefined
  /** The consumer waiting for the next chunk. */
  consumer: ((exit: PullExit) => void) | undefined
  /** The producer waiting for room in the buffer. */
  blocked: (() => void) | undefined
  /** The upstream delivered its first (non-empty) chunk. */
  started: boolean
  /** The upstream ended during acquisition (nothing or only `pending` to deliver). */
  ended: boolean
  pending: Chunk.Chunk<StreamPart> | undefined
  closed: boolean
  dedupe: Dedupe | undefined
  /** Continuation of a delivery pull, built once per lane. */
  onPulled: ((exit: PullExit) => Pull) | undefined
}

type PullExit = Exit.Exit<Chunk.Chunk<StreamPart>, Option.Option<AiError>>

/**
 * Chunks a lane reads ahead of its consumer. Enough that a fast upstream is drained in a few
 * steps; a slow consumer holds the upstream back after this many.
 */
const PREFETCH = 64

const defaultInstruction =
  "Your previous answer was cut off. Continue it exactly where it stopped: do not repeat any text already " +
  "written, do not add a preamble, start with the next characters of the answer."

/**
 * Removes from the start of a resumed continuation the text the consumer already has.
 *
 * @internal
 */
export class Dedupe {
  private pending = ""
  private decided = false
  constructor(
    private readonly delivered: string,
    private readonly minOverlap: number
  ) {}

  feed(chunk: Chunk.Chunk<StreamPart>): Chunk.Chunk<StreamPart> {
    if (this.decided) return chunk
    const out: Array<StreamPart> = []
    for (const part of chunk) {
      if (this.decided) {
        out.push(part)
      } else if (part._tag === "TextDelta") {
        this.pending += part.text
        const text = this.decide(false)
        if (text !== undefined && text.length > 0) out.push({ _tag: "TextDelta", text })
      } else {
        const text = this.decide(true)
        if (text !== undefined && text.length > 0) out.push({ _tag: "TextDelta", text })
        out.push(part)
      }
    }
    return Chunk.unsafeFromArray(out)
  }

  /** What is still held back when the upstream ends without a `Finish`. */
  flush(): string {
    return this.decided ? "" : (this.decide(true) ?? "")
  }

  private decide(final: boolean): string | undefined {
    const tail = this.delivered
    const pending = this.pending
    if (!final) {
      // Still a candidate if the continuation so far occurs in the delivered text with more
      // text after it: it may yet turn out to repeat everything up to the end.
      const at = tail.indexOf(pending)
      if (at !== -1 && at < tail.length - pending.length) return undefined
    }
    this.decided = true
    this.pending = ""
    let overlap = 0
    for (let k = Math.min(pending.length, tail.length); k >= this.minOverlap; k--) {
      const start = tail.length - k
      if ((start === 0 || /\s/.test(tail[start - 1]!)) && tail.endsWith(pending.slice(0, k))) {
        overlap = k
        break
      }
    }
    let rest = pending.slice(overlap)
    if (/\s$/.test(tail) || tail.length === 0) rest = rest.replace(/^\s+/, "")
    return rest
  }
}

/** @internal */
export const resumeRequest = (original: GenerateRequest, partial: string, instruction: string): GenerateRequest => {
  const { messages, prompt, ...rest } = original
  const conversation: ReadonlyArray<Message> = messages ?? [{ role: "user", content: prompt ?? "" }]
  const resumed: GenerateRequest = {
    ...rest,
    messages: [...conversation, { role: "assistant", content: partial }, { role: "user", content: instruction }]
  }
  return rest.maxTokens === undefined
    ? resumed
    : { ...resumed, maxTokens: Math.max(1, rest.maxTokens - estimateTokens(partial)) }
}

const resumable = (error: AiError): boolean => {
  switch (error._tag) {
    case "ModelError":
      return shouldFallback(error)
    case "TimeoutError":
      return error.limit !== "total"
    case "CircuitOpenError":
      return true
    default:
      return false
  }
}

type Outcome = { readonly _tag: "Done" } | { readonly _tag: "Failed"; readonly error: AiError }
const DONE: Outcome = { _tag: "Done" }
const END = Exit.fail(Option.none<AiError>())

// `Stream.repeatEffectChunkOption` costs a map, a catchAll and two allocations per chunk more.
const fromPull = (pull: Pull): Stream.Stream<StreamPart, AiError> => {
  const loop: Channel.Channel<Chunk.Chunk<StreamPart>, unknown, AiError, unknown, void, unknown> = Channel.unwrap(
    Effect.matchCause(pull, {
      onSuccess: (chunk) => Channel.zipRight(Channel.write(chunk), loop),
      onFailure: (cause) =>
        Option.match(Cause.flipCauseOption(cause), {
          onNone: () => Channel.void,
          onSome: (failure) => Channel.failCause(failure)
        })
    })
  )
  return Stream.fromChannel(loop)
}

/** @internal */
export const make = (deps: {
  readonly stats: StatsService
  readonly provider?: ProviderService | undefined
  readonly options?: Api.Options | undefined
}): Api.Service => {
  const { stats } = deps
  const defaults = deps.options ?? {}
  const basePolicy =
    defaults.retry === undefined ? defaultRetry : (resolveRetry(defaults.retry, defaultRetry) ?? defaultRetry)
  const defaultFirst = millisOf(defaults.firstChunkTimeout, 30_000)
  const defaultIdle = millisOf(defaults.idleTimeout, 30_000)
  const defaultTotal = millisOf(defaults.totalTimeout, 600_000)

  // One watchdog per clock: its sleepers serve every stream of this service on that clock.
  const watchdogs = new WeakMap<Clock.Clock, Watchdog.Watchdog>()
  const watchdogFor = (clock: Clock.Clock, runtime: Runtime.Runtime<never>): Watchdog.Watchdog => {
    let found = watchdogs.get(clock)
    if (found === undefined) {
      found = Watchdog.make(clock, runtime)
      watchdogs.set(clock, found)
    }
    return found
  }

  const begin = (labels: Metrics.Labels): void => {
    Metrics.requests.unsafeUpdate(1, labels.exact)
    for (const tags of labels.aggregates) {
      Metrics.inFlight.unsafeModify(1, tags)
      const now = Metrics.inFlight.unsafeValue(tags).value
      if (now > Metrics.inFlightPeak.unsafeValue(tags).value) Metrics.inFlightPeak.unsafeUpdate(now, tags)
    }
  }

  const resolveSteps = (options: Api.StreamOptions): ReadonlyArray<ResolvedStep> | undefined => {
    const input: ReadonlyArray<Api.Step> | undefined =
      options.steps ??
      ((options.provider ?? deps.provider) ? [{ provider: (options.provider ?? deps.provider)! }] : undefined)
    if (input === undefined || input.length === 0) return undefined
    const callRetry = resolveRetry(options.retry, basePolicy)
    return input.map((step, index) => {
      const model = step.model
      const custom = step.prepare
      const prepare =
        model === undefined && custom === undefined
          ? (r: GenerateRequest) => r
          : (r: GenerateRequest) => {
              const withModel = model === undefined ? r : { ...r, model }
              return custom === undefined ? withModel : custom(withModel)
            }
      const guards: Array<Api.Guard> = []
      if (step.breaker !== undefined) guards.push(guardFromBreaker(step.breaker))
      if (step.guard !== undefined) guards.push(step.guard)
      return {
        index,
        provider: step.provider,
        labels: stats.labels({
          provider: step.provider.name,
          domain: step.domain ?? options.domain,
          tags: options.tags
        }),
        retry: step.retry === undefined ? callRetry : resolveRetry(step.retry, basePolicy),
        prepare,
        guards,
        onOutcome: step.onOutcome
      }
    })
  }

  const stream = (request: GenerateRequest, options: Api.StreamOptions = {}): Stream.Stream<StreamPart, AiError> =>
    Stream.unwrapScoped(
      Effect.suspend(() => {
        const steps = resolveSteps(options)
        if (steps === undefined) return Effect.dieMessage("Streaming.stream: no provider (give `provider` or `steps`)")
        // One span for the stream's lifetime, parent of the provider's work, when the caller is
        // traced: untraced hot paths pay nothing (a span and its context cost ~10 µs here). Not
        // `Stream.withSpan`: it provides the span again on every pull (~9 µs a chunk).
        return Effect.flatMap(Effect.serviceOption(Tracer.ParentSpan), (parent) =>
          Option.isNone(parent)
            ? setup(request, options, steps)
            : Effect.flatMap(
                Effect.makeSpanScoped("Streaming.stream", {
                  kind: "client",
                  captureStackTrace: false,
                  attributes: { "gen_ai.system": steps[0]!.provider.name, "gen_ai.request.model": request.model }
                }),
                (span) => Effect.withParentSpan(setup(request, options, steps), span)
              )
        )
      })
    )

  const setup = (
    request: GenerateRequest,
    options: Api.StreamOptions,
    steps: ReadonlyArray<ResolvedStep>
  ): Effect.Effect<Stream.Stream<StreamPart, AiError>, AiError, Scope.Scope> =>
    Effect.suspend(() => {
      const callLabels = steps[0]!.labels
      const refuse = (error: AiError): Effect.Effect<never, AiError> => {
        Metrics.requests.unsafeUpdate(1, callLabels.exact)
        Metrics.failures.unsafeUpdate(1, callLabels.withReason(reasonOf(error)))
        return Effect.fail(error)
      }
      return validateGenerate(request).pipe(
        Effect.catchAll((error) =>
          refuse(
            error.provider === undefined
              ? new ModelError({
                  reason: error.reason,
                  message: error.message,
                  field: error.field,
                  provider: steps[0]!.provider.name
                })
              : error
          )
        ),
        Effect.flatMap((valid) => {
          const cache = options.cache
          const key =
            cache === undefined ? "" : (cache.key ?? cacheKeyOf({ provider: steps[0]!.provider.name, request: valid }))
          const live = () => {
            const started = defaults.admit === undefined ? Effect.void : Effect.catchAll(defaults.admit, refuse)
            return Effect.zipRight(started, start(valid, steps, callLabels, options, key))
          }
          if (cache === undefined) return live()
          return Effect.flatMap(cache.store.get(key), (hit) =>
            Option.isSome(hit) ? Effect.succeed(Stream.fromIterable(hit.value)) : live()
          )
        })
      )
    })

  const start = (
    valid: GenerateRequest,
    steps: ReadonlyArray<ResolvedStep>,
    callLabels: Metrics.Labels,
    options: Api.StreamOptions,
    cacheKey: string
  ): Effect.Effect<Stream.Stream<StreamPart, AiError>, never, Scope.Scope> =>
    Effect.flatMap(Effect.zip(Effect.runtime<never>(), Effect.clock), ([runtime, clock]) => {
      const fork = Runtime.runFork(runtime)
      const firstMs = millisOf(options.firstChunkTimeout, defaultFirst)
      const idleMs = millisOf(options.idleTimeout, defaultIdle)
      const totalMs = millisOf(options.totalTimeout, defaultTotal)
      const hedgeAfter = options.hedge === undefined ? undefined : Duration.decode(options.hedge.after)
      const resumeOptions =
        options.resume === undefined || options.resume === false
          ? undefined
          : options.resume === true
            ? {}
            : options.resume
      const maxResumes = resumeOptions === undefined ? 0 : (resumeOptions.maxResumes ?? 1)
      const instruction = resumeOptions?.instruction ?? defaultInstruction
      const minOverlap = Math.max(1, resumeOptions?.minOverlap ?? 4)
      const store = options.cache?.store
      const onRetry = options.onRetry

      const watchdog = firstMs === NONE && idleMs === NONE && totalMs === NONE ? undefined : watchdogFor(clock, runtime)
      const startNanos = clock.unsafeCurrentTimeNanos()
      let request = valid
      let delivered = ""
      let deliveredAny = false
      let textStarted = false
      let firstTokenAt = 0
      let finish: Finish | undefined
      let outcome: Outcome | undefined
      let current: Lane | undefined
      // An acquisition that may wait outside a lane pull (retry backoff, hedge delay) runs in
      // this fiber, so that the total deadline can interrupt it.
      let waiting: Fiber.RuntimeFiber<unknown, unknown> | undefined
      let totalFired = false
      let resumes = 0
      const lanes = new Set<Lane>()
      const cacheParts: Array<StreamPart> | undefined = store === undefined ? undefined : []

      begin(callLabels)

      const totalTimer =
        watchdog === undefined || totalMs === NONE
          ? undefined
          : watchdog.timer(totalMs, () => {
              totalFired = true
              Metrics.timeouts.unsafeUpdate(1, callLabels.exact)
              if (waiting !== undefined) waiting.unsafeInterruptAsFork(FiberId.none)
              for (const lane of lanes) handOver(lane, Exit.fail(Option.some(totalError())))
            })
      if (totalTimer !== undefined) watchdog!.arm(totalTimer)
      const trackAcquisition =
        totalTimer !== undefined && (hedgeAfter !== undefined || steps.some((step) => step.retry !== undefined))

      const totalError = (): TimeoutError =>
        new TimeoutError({
          limit: "total",
          timeout: Duration.millis(totalMs),
          provider: (current?.step ?? steps[0]!).provider.name,
          partialText: deliveredAny ? delivered : undefined
        })

      const laneTimeout = (lane: Lane, limit: "firstChunk" | "idle"): TimeoutError =>
        new TimeoutError({
          limit,
          timeout: Duration.millis(limit === "idle" ? idleMs : firstMs),
          provider: lane.step.provider.name,
          // An attempt that has not started is an ordinary failed call: it may be retried.
          partialText: lane.started && deliveredAny ? delivered : undefined
        })

      const closeLane = (lane: Lane, exit: Exit.Exit<void, AiError>): Effect.Effect<void> =>
        Effect.suspend(() => {
          if (lane.closed) return Effect.void
          lane.closed = true
          lanes.delete(lane)
          lane.consumer = undefined
          if (lane.firstTimer !== undefined) watchdog!.remove(lane.firstTimer)
          if (lane.idleTimer !== undefined) watchdog!.remove(lane.idleTimer)
          const producer = lane.producer
          let effect: Effect.Effect<void> =
            producer === undefined ? Effect.void : Effect.asVoid(Fiber.interrupt(producer))
          for (const record of lane.recorders) effect = Effect.zipRight(effect, record(exit))
          const observe = lane.step.onOutcome
          if (observe !== undefined) {
            effect = Effect.zipRight(
              effect,
              observe({ provider: lane.step.provider.name, step: lane.step.index, exit, started: lane.started })
            )
          }
          return effect
        })

      const disarmLane = (lane: Lane): void => {
        if (lane.firstTimer !== undefined) watchdog!.disarm(lane.firstTimer)
        if (lane.idleTimer !== undefined) watchdog!.disarm(lane.idleTimer)
      }

      // Hands a result to the waiting consumer, if any.
      const handOver = (lane: Lane, exit: PullExit): boolean => {
        const consumer = lane.consumer
        if (consumer === undefined) return false
        lane.consumer = undefined
        disarmLane(lane)
        consumer(exit)
        return true
      }

      const offer =
        (lane: Lane) =>
        (chunk: Chunk.Chunk<StreamPart>): Effect.Effect<void> => {
          if (chunk.length === 0 || lane.closed) return Effect.void
          if (lane.buffer.length === 0 && handOver(lane, Exit.succeed(chunk))) return Effect.void
          lane.buffer.push(chunk)
          if (lane.buffer.length < PREFETCH) return Effect.void
          return Effect.async<void>((resume) => {
            lane.blocked = () => resume(Effect.void)
            return Effect.sync(() => {
              lane.blocked = undefined
            })
          })
        }

      // The upstream runs in its own fiber, started synchronously on the stream's runtime (same
      // Clock, services and parent span), pulling into the lane's buffer. `toPull` rather than
      // `Stream.runForEachChunk`, which forks yet another fiber and waits on two Deferreds.
      const startProducer = (lane: Lane): void => {
        const upstream = lane.step.provider.stream(lane.step.prepare(request))
        const push = offer(lane)
        const fiber = fork(
          Effect.scoped(
            Effect.flatMap(Stream.toPull(upstream), (pull) => {
              const loop: Effect.Effect<void, AiError> = Effect.matchCauseEffect(pull, {
                onSuccess: (chunk) => Effect.zipRight(push(chunk), loop),
                onFailure: (cause) =>
                  Option.match(Cause.flipCauseOption(cause), {
                    onNone: () => Effect.void,
                    onSome: (failure) => Effect.failCause(failure)
                  })
              })
              return loop
            })
          )
        )
        const onExit = (exit: Exit.Exit<void, AiError>): void => {
          lane.producer = undefined
          const done: PullExit = exit._tag === "Success" ? END : Exit.failCause(Cause.map(exit.cause, Option.some))
          lane.done = done
          if (lane.buffer.length === 0) handOver(lane, done)
        }
        const polled = fiber.unsafePoll()
        if (polled !== null) onExit(polled)
        else {
          lane.producer = fiber
          fiber.addObserver(onExit)
        }
      }

      const takeBuffered = (lane: Lane): Chunk.Chunk<StreamPart> => {
        const buffer = lane.buffer
        let chunk: Chunk.Chunk<StreamPart>
        if (buffer.length === 1) chunk = buffer[0]!
        else {
          const parts: Array<StreamPart> = []
          for (const c of buffer) for (const part of Chunk.toReadonlyArray(c)) parts.push(part)
          chunk = Chunk.unsafeFromArray(parts)
        }
        lane.buffer = []
        const blocked = lane.blocked
        if (blocked !== undefined) {
          lane.blocked = undefined
          blocked()
        }
        return chunk
      }

      // The next chunks of a lane: everything buffered at once, or a wait (with the idle deadline
      // armed while the consumer waits) for the next chunk, the end or a failure.
      const take = <X, Y>(
        lane: Lane,
        k: (exit: PullExit) => Effect.Effect<X, Y>,
        armIdle: boolean
      ): Effect.Effect<X, Y> => {
        if (lane.buffer.length > 0) return k(Exit.succeed(takeBuffered(lane)))
        if (lane.done !== undefined) return k(lane.done)
        if (totalFired) return k(Exit.fail(Option.some(totalError())))
        if (armIdle && lane.started && lane.idleTimer !== undefined) watchdog!.arm(lane.idleTimer)
        return Effect.async<X, Y>((resume) => {
          lane.consumer = (exit) => resume(Effect.suspend(() => k(exit)))
          return Effect.sync(() => {
            lane.consumer = undefined
            if (lane.idleTimer !== undefined) watchdog!.disarm(lane.idleTimer)
          })
        })
      }

      const firstSettled =
        (lane: Lane) =>
        (exit: PullExit): Effect.Effect<Lane, AiError> => {
          if (lane.firstTimer !== undefined) watchdog!.remove(lane.firstTimer)
          if (exit._tag === "Success") {
            lane.started = true
            lane.pending = exit.value
            return Effect.succeed(lane)
          }
          const failure = Cause.failureOption(exit.cause)
          if (Option.isNone(failure)) return Effect.failCause(exit.cause as Cause.Cause<never>)
          if (Option.isNone(failure.value)) {
            lane.ended = true
            return Effect.succeed(lane)
          }
          return Effect.fail(failure.value.value)
        }

      const admitAll = (step: ResolvedStep): Effect.Effect<ReadonlyArray<Recorder>, AiError> => {
        if (step.guards.length === 0) return Effect.succeed([])
        return Effect.suspend(() => {
          const recorders: Array<Recorder> = []
          return Effect.forEach(step.guards, (guard) => Effect.map(guard.admit, (r) => void recorders.push(r)), {
            discard: true
          }).pipe(
            Effect.as(recorders as ReadonlyArray<Recorder>),
            Effect.onError(() =>
              Effect.forEach(recorders, (record) => record(Exit.interrupt(FiberId.none)), { discard: true })
            )
          )
        })
      }

      const attempt = (step: ResolvedStep): Effect.Effect<Lane, AiError> =>
        Effect.uninterruptibleMask((restore) =>
          Effect.flatMap(admitAll(step), (recorders) =>
            Effect.suspend(() => {
              const lane: Lane = {
                step,
                recorders,
                firstTimer: undefined,
                idleTimer: undefined,
                producer: undefined,
                buffer: [],
                done: undefined,
                consumer: undefined,
                blocked: undefined,
                started: false,
                ended: false,
                pending: undefined,
                closed: false,
                dedupe: undefined,
                onPulled: undefined
              }
              if (watchdog !== undefined) {
                const fire = (limit: "firstChunk" | "idle") => () => {
                  if (lane.consumer === undefined) return
                  Metrics.timeouts.unsafeUpdate(1, step.labels.exact)
                  handOver(lane, Exit.fail(Option.some(laneTimeout(lane, limit))))
                }
                const timers = lane as { firstTimer: Watchdog.Timer | undefined; idleTimer: Watchdog.Timer | undefined }
                if (firstMs !== NONE) {
                  timers.firstTimer = watchdog.timer(firstMs, fire("firstChunk"))
                  watchdog.arm(timers.firstTimer)
                }
                if (idleMs !== NONE) timers.idleTimer = watchdog.timer(idleMs, fire("idle"))
              }
              lanes.add(lane)
              startProducer(lane)
              return restore(take(lane, firstSettled(lane), false)).pipe(
                Effect.onExit((exit) =>
                  exit._tag === "Success"
                    ? Effect.void
                    : closeLane(
                        lane,
                        Exit.isInterrupted(exit) ? Exit.interrupt(FiberId.none) : Exit.failCause(exit.cause)
                      )
                )
              )
            })
          )
        )

      const attemptWithRetry = (step: ResolvedStep): Effect.Effect<Lane, AiError> => {
        const policy = step.retry
        if (policy === undefined) return attempt(step)
        const loop = (n: number): Effect.Effect<Lane, AiError> =>
          Effect.catchAll(attempt(step), (error) => {
            if (totalFired || n >= policy.maxAttempts || !isRetryable(error)) return Effect.fail(error)
            return Effect.flatMap(Random.next, (u) => {
              const delay = retryDelayMillis(policy, n, u, retryAfterOf(error))
              if (delay === undefined) return Effect.fail(error)
              Metrics.retries.unsafeUpdate(1, step.labels.exact)
              const wait = Effect.sleep(Duration.millis(delay))
              const before =
                onRetry === undefined
                  ? wait
                  : Effect.zipRight(
                      onRetry({ provider: step.provider.name, attempt: n, error, delay: Duration.millis(delay) }),
                      wait
                    )
              return Effect.zipRight(before, loop(n + 1))
            })
          })
        return loop(1)
      }

      const acquireSeq = (from: number): Effect.Effect<Lane, AiError> => {
        const loop = (i: number): Effect.Effect<Lane, AiError> =>
          Effect.catchAll(attemptWithRetry(steps[i]!), (error) =>
            !totalFired && i + 1 < steps.length && shouldFallback(error) ? loop(i + 1) : Effect.fail(error)
          )
        return loop(from)
      }

      const discard = (fiber: Fiber.Fiber<Lane, AiError>): Effect.Effect<void> =>
        Effect.flatMap(Fiber.interrupt(fiber), (exit) =>
          exit._tag === "Success" ? closeLane(exit.value, Exit.interrupt(FiberId.none)) : Effect.void
        )

      const hedged = (from: number, after: Duration.Duration): Effect.Effect<Lane, AiError> =>
        Effect.flatMap(Deferred.make<void>(), (startNow) => {
          let byTimer = false
          const backup = Effect.raceFirst(
            Effect.as(Effect.sleep(after), true),
            Effect.as(Deferred.await(startNow), false)
          ).pipe(
            Effect.flatMap((timer) => {
              byTimer = timer
              return acquireSeq(from + 1)
            })
          )
          const primary = Effect.tapError(attemptWithRetry(steps[from]!), (error) =>
            shouldFallback(error) ? Deferred.succeed(startNow, undefined) : Effect.void
          )
          const raced = Effect.raceWith(primary, backup, {
            onSelfDone: (exit, rival) =>
              exit._tag === "Success"
                ? Effect.as(discard(rival), exit.value)
                : Option.match(Cause.failureOption(exit.cause), {
                    onSome: (error) =>
                      shouldFallback(error) ? Fiber.join(rival) : Effect.zipRight(discard(rival), Effect.fail(error)),
                    onNone: () => Effect.zipRight(discard(rival), Effect.failCause(exit.cause))
                  }),
            onOtherDone: (exit, rival) =>
              exit._tag === "Success" ? Effect.as(discard(rival), exit.value) : Fiber.join(rival)
          })
          return Effect.onExit(raced, (exit) =>
            Effect.sync(() => {
              if (!byTimer) return
              const won = exit._tag === "Success" && exit.value.step.index > from
              Metrics.hedges.unsafeUpdate(1, callLabels.with("outcome", won ? "won" : "lost"))
            })
          )
        })

      const acquire = (from: number): Effect.Effect<Lane, AiError> => {
        const effect =
          hedgeAfter === undefined || from + 1 >= steps.length ? acquireSeq(from) : hedged(from, hedgeAfter)
        if (!trackAcquisition) return effect
        return Effect.suspend(() => {
          const fiber = fork(effect)
          const polled = fiber.unsafePoll()
          if (polled !== null) return polled
          waiting = fiber
          return Effect.async<Lane, AiError>((resume) => {
            fiber.addObserver((exit) => {
              if (waiting === fiber) waiting = undefined
              resume(exit)
            })
            return Effect.asVoid(Fiber.interrupt(fiber))
          })
        })
      }

      const failVisible = (error: AiError): Effect.Effect<never, Option.Option<AiError>> => {
        outcome = { _tag: "Failed", error }
        return Effect.fail(Option.some(error))
      }

      const afterText = (error: AiError, provider: string): AiError => {
        if (error._tag === "TimeoutError") {
          return new TimeoutError({
            limit: error.limit,
            timeout: error.timeout,
            provider: error.provider ?? provider,
            partialText: delivered
          })
        }
        return new StreamInterruptedError({ partialText: delivered, provider, reason: reasonOf(error), cause: error })
      }

      const deliver = (lane: Lane, input: Chunk.Chunk<StreamPart>): Chunk.Chunk<StreamPart> => {
        const chunk = lane.dedupe === undefined ? input : lane.dedupe.feed(input)
        if (chunk.length === 0) return chunk
        deliveredAny = true
        for (const part of Chunk.toReadonlyArray(chunk)) {
          if (part._tag === "TextDelta") {
            if (!textStarted) {
              textStarted = true
              firstTokenAt = clock.unsafeCurrentTimeMillis()
              Metrics.timeToFirstToken.unsafeUpdate(
                Number(clock.unsafeCurrentTimeNanos() - startNanos) / 1e6,
                lane.step.labels.exact
              )
            }
            delivered += part.text
          } else {
            finish = part
            if (resumes === 0 && textStarted) {
              const seconds = (clock.unsafeCurrentTimeMillis() - firstTokenAt) / 1000
              const tokens = part.usage.outputTokens > 0 ? part.usage.outputTokens : estimateTokens(delivered)
              if (seconds > 0) Metrics.tokensPerSecond.unsafeUpdate(tokens / seconds, lane.step.labels.exact)
            }
          }
          if (cacheParts !== undefined) cacheParts.push(part)
        }
        return chunk
      }

      const finishLane = (lane: Lane): Effect.Effect<Chunk.Chunk<StreamPart>, Option.Option<AiError>> =>
        Effect.zipRight(
          closeLane(lane, Exit.void),
          Effect.suspend(() => {
            current = undefined
            outcome = DONE
            const rest = lane.dedupe?.flush() ?? ""
            return rest.length > 0 ? Exit.succeed(deliver(lane, Chunk.of({ _tag: "TextDelta", text: rest }))) : END
          })
        )

      const midFailure = (lane: Lane, error: AiError): Effect.Effect<Chunk.Chunk<StreamPart>, Option.Option<AiError>> =>
        Effect.zipRight(
          closeLane(lane, Exit.fail(error)),
          Effect.suspend(() => {
            current = undefined
            if (totalFired) return failVisible(totalError())
            const next = lane.step.index + 1
            if (resumes < maxResumes && next < steps.length && resumable(error)) {
              resumes++
              Metrics.streamResumes.unsafeUpdate(1, callLabels.exact)
              request = resumeRequest(valid, delivered, instruction)
              return acquireAndDeliver(next, { error, provider: lane.step.provider.name })
            }
            return failVisible(afterText(error, lane.step.provider.name))
          })
        )

      const delivering =
        (lane: Lane) =>
        (exit: PullExit): Pull => {
          if (exit._tag === "Success") return Exit.succeed(deliver(lane, exit.value))
          const failure = Cause.failureOption(exit.cause)
          if (Option.isNone(failure)) return Effect.failCause(exit.cause)
          if (Option.isNone(failure.value)) return finishLane(lane)
          return midFailure(lane, failure.value.value)
        }

      const acquireAndDeliver = (
        from: number,
        interrupted: { readonly error: AiError; readonly provider: string } | undefined
      ): Pull =>
        Effect.matchCauseEffect(acquire(from), {
          onFailure: (cause) => {
            const failure = Cause.failureOption(cause)
            if (totalFired) return failVisible(totalError())
            if (Option.isNone(failure)) return Effect.failCause(Cause.map(cause, Option.some))
            if (interrupted === undefined) return failVisible(failure.value)
            return failVisible(
              new StreamInterruptedError({
                partialText: delivered,
                provider: interrupted.provider,
                reason: `${reasonOf(interrupted.error)}; resuming failed: ${reasonOf(failure.value)}`,
                cause: failure.value
              })
            )
          },
          onSuccess: (lane) => {
            current = lane
            lane.onPulled = delivering(lane)
            if (interrupted !== undefined) lane.dedupe = new Dedupe(delivered, minOverlap)
            else if (lane.step.index > 0) Metrics.fallbacks.unsafeUpdate(1, callLabels.exact)
            const first = lane.pending
            lane.pending = undefined
            if (first === undefined) return finishLane(lane)
            return Exit.succeed(deliver(lane, first))
          }
        })

      const pull: Pull = Effect.suspend(() => {
        if (outcome !== undefined) return outcome._tag === "Done" ? END : Effect.fail(Option.some(outcome.error))
        if (totalFired) return failVisible(totalError())
        const lane = current
        if (lane === undefined) return acquireAndDeliver(0, undefined)
        return take(lane, lane.onPulled!, true)
      })

      const finalize = Effect.suspend(() => {
        if (totalTimer !== undefined) watchdog!.remove(totalTimer)
        let effect: Effect.Effect<void> = Effect.void
        for (const lane of lanes) effect = Effect.zipRight(effect, closeLane(lane, Exit.interrupt(FiberId.none)))
        return Effect.zipRight(
          effect,
          Effect.suspend(() => {
            for (const tags of callLabels.aggregates) Metrics.inFlight.unsafeModify(-1, tags)
            const elapsed = Number(clock.unsafeCurrentTimeNanos() - startNanos) / 1e6
            const completed = outcome?._tag === "Done" || (outcome === undefined && finish !== undefined)
            if (completed) {
              Metrics.successes.unsafeUpdate(1, callLabels.exact)
              Metrics.latency.unsafeUpdate(elapsed, callLabels.exact)
            } else if (outcome?._tag === "Failed") {
              Metrics.failures.unsafeUpdate(1, callLabels.withReason(reasonOf(outcome.error)))
              Metrics.latency.unsafeUpdate(elapsed, callLabels.exact)
            } else {
              Metrics.failures.unsafeUpdate(1, callLabels.withReason("Interrupted"))
            }
            if (!completed && textStarted) Metrics.streamsAborted.unsafeUpdate(1, callLabels.exact)
            if (completed && store !== undefined && finish !== undefined && resumes === 0) {
              return store.set(cacheKey, cacheParts!)
            }
            return Effect.void
          })
        )
      })

      return Effect.as(
        Effect.addFinalizer(() => finalize),
        fromPull(pull)
      )
    })

  return { stream }
}
