/**
 * The pipeline for streams. Before its first chunk reaches the consumer a stream is an
 * ordinary call: retried on its step (`Policy.schedule`), then handed to the next step
 * when `shouldFallback`. After it, text the consumer holds is never taken back or sent
 * twice: a failure ends the stream with a `TimeoutError` (one of our deadlines) or a
 * `StreamInterruptedError` (the provider failed), both carrying the partial text, unless
 * `resume` continues on the next step (lossy).
 *
 * Each attempt's upstream runs in one producer fiber that reads up to `PREFETCH` parts
 * ahead; the consumer takes everything buffered at once. No fiber, race or timer per
 * chunk: the first-chunk and idle deadlines are one re-armable watch per attempt on the
 * deadline lanes (relinked in O(1) per chunk, disarmed while the buffer is full, so a slow
 * consumer never trips it), and the total deadline one watch per stream. The shutdown
 * finds every stream through them.
 *
 * Per attempt, as for calls: rate limit, breaker (admitted at the start, the stream's own
 * outcome recorded at its end, a provider that cuts streams counts as failing), provider
 * slot, then the upstream.
 *
 * @internal
 */
import {
  Cause,
  Channel,
  Duration,
  Effect,
  Exit,
  type Fiber,
  Option,
  Pull,
  Result,
  Schedule,
  Scope,
  Stream
} from "effect"
import {
  type AiError,
  type FailedAttempt,
  FallbackExhaustedError,
  isRetryable,
  ModelError,
  reasonOf,
  ShuttingDownError,
  shouldFallback,
  StreamInterruptedError,
  TimeoutError
} from "../AiError.js"
import * as Input from "../Input.js"
import {
  ChunkDeadline,
  estimateTokens,
  type Finish,
  type GenerateRequest,
  type Message,
  type Service as ProviderService,
  type StreamPart
} from "../Model.js"
import { decodeRetry, type RetryPolicy, type RetryPolicyInput, schedule as retrySchedule } from "../Policy.js"
import type { Service as StatsService } from "../Stats.js"
import type { Series } from "../stats/series.js"
import type { Ending, Watch } from "./deadline.js"
import type { Engine } from "./engine.js"
import { type BreakerPermit, CurrentCut, type RetryEvent, type Step } from "./plan.js"

const PREFETCH = 64

/**
 * Completed streams, replayed on a hit.
 *
 * @internal
 */
export interface StreamCache {
  readonly getParts: (key: string) => Effect.Effect<Option.Option<ReadonlyArray<StreamPart>>>
  readonly setParts: (key: string, parts: ReadonlyArray<StreamPart>) => Effect.Effect<void>
}

/**
 * Resumption after a mid-stream failure. Lossy by nature: the next step receives the
 * conversation plus the partial answer as an assistant message and an instruction to
 * continue exactly where it stopped; text it repeats (the longest suffix of the delivered
 * text, starting at a word boundary and at least `minOverlap` characters long, that the
 * continuation starts with) is removed before delivery.
 *
 * @internal
 */
export interface ResumeOptions {
  /** Resumptions per stream at most. Default 1. */
  readonly maxResumes?: number | undefined
  /** The user message asking to continue. */
  readonly instruction?: string | undefined
  /** Shortest repeated prefix that is removed. Default 4 characters. */
  readonly minOverlap?: number | undefined
}

/**
 * One step of a stream: a provider and its policies, and how the request is adapted to it.
 *
 * @internal
 */
export interface StreamStep extends Step<ProviderService> {
  readonly prepare?: ((request: GenerateRequest) => GenerateRequest) | undefined
}

/**
 * @internal
 */
export interface StreamPlan {
  readonly steps: readonly [StreamStep, ...Array<StreamStep>]
  readonly firstChunkTimeout: Duration.Duration | undefined
  readonly idleTimeout: Duration.Duration | undefined
  readonly totalTimeout: Duration.Duration | undefined
  readonly resume?:
    | { readonly maxResumes: number; readonly instruction: string; readonly minOverlap: number }
    | undefined
  readonly cache?: { readonly store: StreamCache; readonly key: string } | undefined
  readonly onRetry?: ((event: RetryEvent<ProviderService>) => Effect.Effect<void>) | undefined
}

/**
 * Options of `Executor.stream`; every value is checked (an `InvalidRequest` naming it).
 *
 * @internal
 */
export interface StreamOptions {
  /** One provider. Default: the executor's. */
  readonly provider?: ProviderService | undefined
  /** Providers in fallback order; takes precedence over `provider`. */
  readonly steps?:
    | ReadonlyArray<{
        readonly provider: ProviderService
        readonly domain?: string | undefined
        readonly retry?: boolean | RetryPolicy | RetryPolicyInput | undefined
        readonly model?: string | undefined
        readonly prepare?: ((request: GenerateRequest) => GenerateRequest) | undefined
      }>
    | undefined
  /** Domain dimension of the metrics. */
  readonly domain?: string | undefined
  /** Retries before the first chunk: `true` (the executor's policy), a policy, or `false` (default). */
  readonly retry?: boolean | RetryPolicy | RetryPolicyInput | undefined
  /** Deadline for the first chunk of each attempt. Default 30 s. */
  readonly firstChunkTimeout?: Duration.Input | "none" | undefined
  /** Longest wait for the next chunk while the upstream is being read (a slow consumer does not count). Default 30 s. */
  readonly idleTimeout?: Duration.Input | "none" | undefined
  /** Deadline of the whole stream, retries, fallbacks and consumer time included. Default 10 minutes. */
  readonly totalTimeout?: Duration.Input | "none" | undefined
  /** Continue on the next step after a mid-stream failure (lossy). Default off. */
  readonly resume?: boolean | ResumeOptions | undefined
  /** Replay completed streams from the executor's cache (default true when it has one). */
  readonly cache?: boolean | undefined
  readonly onRetry?:
    | ((info: {
        readonly provider: string
        readonly attempt: number
        readonly error: AiError
        readonly delay: Duration.Duration
      }) => Effect.Effect<void>)
    | undefined
}

const defaultInstruction =
  "Your previous answer was cut off. Continue it exactly where it stopped: do not repeat any text already " +
  "written, do not add a preamble, start with the next characters of the answer."

/** Removes from the start of a resumed continuation the text the consumer already has. */
class Dedupe {
  private pending = ""
  private decided = false
  constructor(
    private readonly delivered: string,
    private readonly minOverlap: number
  ) {}

  feed(parts: ReadonlyArray<StreamPart>): Array<StreamPart> {
    if (this.decided) return parts as Array<StreamPart>
    const out: Array<StreamPart> = []
    for (const part of parts) {
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
    return out
  }

  private decide(final: boolean): string | undefined {
    const tail = this.delivered
    const pending = this.pending
    if (!final) {
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

const resumeRequest = (original: GenerateRequest, partial: string, instruction: string): GenerateRequest => {
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

const resumable = (error: AiError): boolean =>
  error._tag === "TimeoutError" ? error.limit !== "total" : shouldFallback(error) || error._tag === "ModelError"

// The producer of a stream whose Finish has arrived is interrupted when the consumer is done
// with it: the error recorded then is never seen by anyone, so it is built without the stack
// trace (~65 µs a stream in profiles of the gateway).
const interruptedError = (provider: string, finished: boolean): ModelError => {
  const limit = Error.stackTraceLimit
  if (finished) Error.stackTraceLimit = 0
  try {
    return new ModelError({ reason: "Unknown", message: "the provider stream was interrupted", provider })
  } finally {
    Error.stackTraceLimit = limit
  }
}

const NoFinish = (provider: string) =>
  new ModelError({ reason: "Transport", message: "the stream ended before its final event", provider })

/** One upstream stream on one step. */
interface Attempt {
  readonly step: StreamStep
  readonly index: number
  readonly series: Series
  readonly scope: Scope.Closeable
  readonly watch: Watch
  readonly buffer: Array<StreamPart>
  readonly started: number
  fiber: Fiber.Fiber<void, AiError> | undefined
  end: Exit.Exit<void, AiError> | undefined
  permit: BreakerPermit | undefined
  finish: Finish | undefined
  serving: boolean
  space: (() => void) | undefined
  dedupe: Dedupe | undefined
}

/**
 * @internal
 */
export interface Streams {
  readonly run: (plan: StreamPlan, request: GenerateRequest) => Stream.Stream<StreamPart, AiError>
  readonly stream: (
    request: GenerateRequest,
    options: StreamOptions & {
      readonly provider: ProviderService
      readonly validate: (request: GenerateRequest) => Effect.Effect<GenerateRequest, ModelError>
      readonly stepFor: (provider: ProviderService, domain: string | undefined) => Step<ProviderService>
      readonly basePolicy: RetryPolicy
      readonly cacheStore?:
        | (Partial<StreamCache> & {
            readonly key: (input: { readonly provider: string; readonly request: GenerateRequest }) => string
          })
        | undefined
    }
  ) => Stream.Stream<StreamPart, AiError>
}

/**
 * @internal
 */
export const make = (env: {
  readonly engine: Engine
  readonly stats: StatsService
  readonly defaults: {
    readonly firstChunkTimeout: Duration.Duration | undefined
    readonly idleTimeout: Duration.Duration | undefined
    readonly totalTimeout: Duration.Duration | undefined
  }
}): Streams => {
  const { engine } = env

  const open = (plan: StreamPlan, request: GenerateRequest, streamScope: Scope.Scope) =>
    Effect.gen(function* () {
      if (engine.isClosing()) {
        return yield* new ShuttingDownError({ message: "the executor is shutting down and admits no new calls" })
      }
      const clock = yield* Effect.clockWith(Effect.succeed)
      const now = () => clock.currentTimeMillisUnsafe()
      const cut = yield* CurrentCut
      if (plan.cache !== undefined) {
        const cached = yield* plan.cache.store.getParts(plan.cache.key)
        if (Option.isSome(cached) && cached.value.length > 0) {
          let replayed = false
          return Effect.suspend(() => {
            if (replayed) return Cause.done()
            replayed = true
            return Effect.succeed(cached.value as unknown as readonly [StreamPart, ...Array<StreamPart>])
          })
        }
      }
      engine.enter()

      // Everything the consumer and the producers share. Mutated synchronously only.
      let current: Attempt | undefined
      let delivered = ""
      let anyDelivered = false
      let terminal: Exit.Exit<void, AiError> | undefined
      let wake: (() => void) | undefined
      let stepIndex = 0
      let stepStarted = 0
      let attemptsOnStep = 0
      let stepper:
        | ((now: number, error: AiError) => Effect.Effect<[Duration.Duration, Duration.Duration], unknown>)
        | undefined
      let backoff: Watch | undefined
      let resumes = 0
      let request_ = request
      let firstTextAt: number | undefined
      const failures: Array<FailedAttempt> = []
      const collected: Array<StreamPart> = []
      const streamStarted = now()

      const signal = () => {
        const w = wake
        wake = undefined
        w?.()
      }

      const endStream = (exit: Exit.Exit<void, AiError>) => {
        if (terminal !== undefined) return
        terminal = exit
        signal()
      }

      const total = engine.lanes.watch((ending) => {
        const error =
          ending === "shutdown"
            ? new ShuttingDownError({ message: "interrupted: the executor's shutdown deadline passed" })
            : new TimeoutError({
                limit: "total",
                timeout: plan.totalTimeout ?? Duration.zero,
                provider: current?.step.name,
                partialText: delivered
              })
        if (current !== undefined && current.end === undefined) {
          if (ending === "timeout") current.series.timeouts++
          current.end = Exit.fail(error)
          current.fiber?.interruptUnsafe()
        }
        finishStep(current, Exit.fail(error))
        endStream(Exit.fail(error))
      })
      total.arm(plan.totalTimeout)

      let stepClosed = false
      const finishStep = (attempt: Attempt | undefined, exit: Exit.Exit<void, AiError>) => {
        if (stepClosed || attempt === undefined) return
        stepClosed = true
        const series = attempt.series
        series.latency.record(now() - stepStarted)
        if (Exit.isSuccess(exit)) {
          series.successes++
          const usage = attempt.finish?.usage
          if (usage !== undefined) {
            series.inputTokens += usage.inputTokens
            series.outputTokens += usage.outputTokens
          }
        } else {
          const error = Cause.findErrorOption(exit.cause)
          series.fail(error._tag === "Some" ? reasonOf(error.value) : "Interrupted")
        }
      }

      const closeAttempt = (attempt: Attempt, outcome: Exit.Exit<void, AiError> | "ignored") =>
        Effect.suspend(() => {
          attempt.watch.dispose()
          attempt.fiber?.interruptUnsafe()
          const permit = attempt.permit
          attempt.permit = undefined
          const record = permit === undefined ? Effect.void : permit.record(outcome)
          return Effect.andThen(record, Scope.close(attempt.scope, Exit.void))
        })

      yield* Scope.addFinalizer(
        streamScope,
        Effect.suspend(() => {
          total.dispose()
          backoff?.dispose()
          engine.leave()
          const attempt = current
          if (terminal === undefined) {
            // Left by its consumer: cancelled, or cut by the caller's deadline (counted as the timeout it is).
            const error = cut?.error
            terminal = error === undefined ? Exit.interrupt() : Exit.fail(error)
            if (error?._tag === "TimeoutError" && attempt !== undefined && !stepClosed) attempt.series.timeouts++
            finishStep(attempt, terminal)
          }
          return attempt === undefined ? Effect.void : closeAttempt(attempt, "ignored")
        })
      )

      // What the watches below bound between two chunks (the first included), for the
      // provider's own idle timer (`Model.ChunkDeadline`): none unless both are set.
      const chunkDeadline =
        plan.firstChunkTimeout === undefined || plan.idleTimeout === undefined
          ? undefined
          : Math.max(Duration.toMillis(plan.firstChunkTimeout), Duration.toMillis(plan.idleTimeout))

      const producer = (attempt: Attempt, upstream: GenerateRequest): Effect.Effect<void, AiError> =>
        Effect.gen(function* () {
          const step = attempt.step
          if (step.rateLimit !== undefined) yield* step.rateLimit.acquire(step.name, { tokens: step.tokens })
          if (step.breaker !== undefined) {
            attempt.permit = yield* Scope.provide(step.breaker.admit(step.name), attempt.scope)
          }
          const semaphore = engine.slot(step.name, step.maxConcurrency)
          if (semaphore !== undefined) {
            const queuedAt = now()
            for (const g of attempt.series.gauges) g.queued++
            yield* Effect.onExit(semaphore.take(1), () =>
              Effect.sync(() => {
                for (const g of attempt.series.gauges) g.queued--
                attempt.series.queueWait.record(now() - queuedAt)
              })
            )
            yield* Scope.addFinalizer(attempt.scope, semaphore.release(1))
          }
          attempt.serving = true
          for (const g of attempt.series.gauges) g.enter()
          attempt.watch.arm(plan.firstChunkTimeout)
          const pull = yield* Scope.provide(Stream.toPull(step.target.stream(upstream)), attempt.scope)
          let gotFirst = false
          while (true) {
            const chunk = yield* Effect.catchCause(pull, (cause) =>
              Pull.isDoneCause(cause) ? Effect.succeed(undefined) : Effect.failCause(cause as Cause.Cause<AiError>)
            )
            if (chunk === undefined) break
            for (const part of chunk) {
              if (part._tag === "Finish") attempt.finish = part
              attempt.buffer.push(part)
            }
            if (!gotFirst) gotFirst = true
            signal()
            if (attempt.buffer.length >= PREFETCH) {
              attempt.watch.arm(undefined)
              yield* Effect.callback<void>((resume) => {
                attempt.space = () => resume(Effect.void)
                return Effect.sync(() => {
                  attempt.space = undefined
                })
              })
            }
            attempt.watch.arm(plan.idleTimeout)
          }
          attempt.watch.arm(undefined)
          if (attempt.finish === undefined) return yield* NoFinish(step.name)
        }).pipe(Effect.provideService(ChunkDeadline, chunkDeadline)) as Effect.Effect<void, AiError>

      const startAttempt = (index: number, upstream: GenerateRequest, dedupe: Dedupe | undefined) =>
        Effect.gen(function* () {
          const step = plan.steps[index]!
          const series = engine.series(step)
          const scope = yield* Scope.fork(streamScope)
          const attempt: Attempt = {
            step,
            index,
            series,
            scope,
            watch: engine.lanes.watch((ending: Ending) => {
              if (attempt.end !== undefined) return
              if (ending === "timeout") series.timeouts++
              const limit = attempt.buffer.length > 0 || anyDelivered || attempt.finish ? "idle" : "firstChunk"
              attempt.end = Exit.fail(
                ending === "shutdown"
                  ? new ShuttingDownError({ message: "interrupted: the executor's shutdown deadline passed" })
                  : new TimeoutError({
                      limit,
                      timeout: (limit === "idle" ? plan.idleTimeout : plan.firstChunkTimeout) ?? Duration.zero,
                      provider: step.name
                    })
              )
              attempt.fiber?.interruptUnsafe()
              signal()
            }),
            buffer: [],
            started: now(),
            fiber: undefined,
            end: undefined,
            permit: undefined,
            finish: undefined,
            serving: false,
            space: undefined,
            dedupe
          }
          current = attempt
          const prepared = step.prepare === undefined ? upstream : step.prepare(upstream)
          const fiber = yield* Effect.forkIn(
            producer(attempt, prepared).pipe(
              Effect.onExit((exit) =>
                Effect.sync(() => {
                  if (attempt.serving) {
                    attempt.serving = false
                    for (const g of attempt.series.gauges) g.exit()
                    attempt.series.service.record(now() - attempt.started)
                  }
                  if (attempt.end === undefined) {
                    attempt.end = Exit.isSuccess(exit)
                      ? exit
                      : Exit.fail(
                          Option.getOrElse(Cause.findErrorOption(exit.cause), () =>
                            Cause.hasInterruptsOnly(exit.cause)
                              ? interruptedError(step.name, attempt.finish !== undefined)
                              : new ModelError({
                                  reason: "Unknown",
                                  message: `the provider stream failed unexpectedly: ${Cause.pretty(exit.cause)}`,
                                  provider: step.name
                                })
                          )
                        )
                  }
                  signal()
                })
              )
            ),
            scope,
            { startImmediately: true }
          )
          attempt.fiber = fiber as Fiber.Fiber<void, AiError>
        })

      const beginStep = (index: number) => {
        stepIndex = index
        stepStarted = now()
        stepClosed = false
        attemptsOnStep = 0
        stepper = undefined
        const series = engine.series(plan.steps[index]!)
        series.requests++
        if (index > 0) series.fallbacks++
      }

      // The consumer's reaction to an attempt that ended; returns the next thing to do.
      const onEnd = (attempt: Attempt): Effect.Effect<void> =>
        Effect.gen(function* () {
          const exit = attempt.end!
          current = undefined
          if (Exit.isSuccess(exit)) {
            yield* closeAttempt(attempt, exit)
            finishStep(attempt, exit)
            if (plan.cache !== undefined && resumes === 0) {
              yield* plan.cache.store.setParts(plan.cache.key, collected)
            }
            endStream(Exit.void)
            return
          }
          const error = Option.getOrThrow(Cause.findErrorOption(exit.cause))
          yield* closeAttempt(attempt, exit)
          if (terminal !== undefined) return
          if (error._tag === "ShuttingDownError") {
            finishStep(attempt, exit)
            endStream(exit)
            return
          }
          if (!anyDelivered) {
            const policy = attempt.step.retry
            if (policy !== undefined && isRetryable(error) && !engine.isClosing()) {
              if (stepper === undefined) stepper = (yield* Schedule.toStep(retrySchedule(policy))) as never
              const decision = yield* Effect.exit(stepper!(now(), error))
              if (Exit.isSuccess(decision)) {
                const delay = decision.value[1]
                attempt.series.retries++
                if (plan.onRetry !== undefined) {
                  yield* plan.onRetry({ step: attempt.step, attempt: attemptsOnStep, error, delay })
                }
                backoff = engine.lanes.watch((ending) => {
                  backoff = undefined
                  if (ending === "shutdown") {
                    endStream(
                      Exit.fail(
                        new ShuttingDownError({ message: "interrupted: the executor's shutdown deadline passed" })
                      )
                    )
                  } else {
                    retryDue = true
                    signal()
                  }
                })
                backoff.arm(delay)
                return
              }
            }
            finishStep(attempt, exit)
            failures.push({ domain: attempt.step.domain, provider: attempt.step.name, error })
            const next = stepIndex + 1
            if (shouldFallback(error) && next < plan.steps.length) {
              beginStep(next)
              attemptsOnStep++
              yield* startAttempt(next, request_, undefined)
              return
            }
            endStream(
              Exit.fail(
                failures.length === plan.steps.length && plan.steps.length > 1 && shouldFallback(error)
                  ? new FallbackExhaustedError({ attempts: failures })
                  : error
              )
            )
            return
          }
          // Mid-stream: never restarted silently.
          finishStep(attempt, exit)
          const next = stepIndex + 1
          const resume = plan.resume
          if (resume !== undefined && resumes < resume.maxResumes && next < plan.steps.length && resumable(error)) {
            resumes++
            beginStep(next)
            attemptsOnStep++
            request_ = resumeRequest(request, delivered, resume.instruction)
            yield* startAttempt(next, request_, new Dedupe(delivered, resume.minOverlap))
            return
          }
          endStream(
            Exit.fail(
              error._tag === "TimeoutError"
                ? new TimeoutError({
                    limit: error.limit,
                    timeout: error.timeout,
                    provider: error.provider ?? attempt.step.name,
                    partialText: delivered
                  })
                : error._tag === "StreamInterruptedError"
                  ? error
                  : new StreamInterruptedError({
                      partialText: delivered,
                      provider: attempt.step.name,
                      reason: reasonOf(error),
                      detail: error.message,
                      cause: error
                    })
            )
          )
        })

      let retryDue = false

      const take = (attempt: Attempt): readonly [StreamPart, ...Array<StreamPart>] | undefined => {
        const raw = attempt.buffer.splice(0, attempt.buffer.length)
        const space = attempt.space
        attempt.space = undefined
        space?.()
        const parts = attempt.dedupe === undefined ? raw : attempt.dedupe.feed(raw)
        for (const part of parts) {
          if (part._tag === "TextDelta") {
            if (part.text.length === 0) continue
            if (firstTextAt === undefined) {
              firstTextAt = now()
              attempt.series.timeToFirstToken.record(firstTextAt - streamStarted)
            }
            delivered += part.text
            anyDelivered = true
          } else if (part._tag === "ToolCall") {
            anyDelivered = true
          }
          if (plan.cache !== undefined) collected.push(part)
        }
        return parts.length === 0 ? undefined : (parts as unknown as readonly [StreamPart, ...Array<StreamPart>])
      }

      const pull: Effect.Effect<readonly [StreamPart, ...Array<StreamPart>], AiError | Cause.Done> = Effect.suspend(
        () => {
          if (retryDue) {
            retryDue = false
            attemptsOnStep++
            return Effect.andThen(startAttempt(stepIndex, request_, undefined), pull)
          }
          const attempt = current
          if (attempt !== undefined && attempt.buffer.length > 0) {
            const parts = take(attempt)
            if (parts !== undefined) return Effect.succeed(parts)
            return pull
          }
          if (terminal !== undefined) {
            return Exit.isSuccess(terminal) ? Cause.done() : (terminal as Exit.Exit<never, AiError>)
          }
          if (attempt !== undefined && attempt.end !== undefined) return Effect.andThen(onEnd(attempt), pull)
          return Effect.andThen(
            Effect.callback<void>((resume) => {
              wake = () => resume(Effect.void)
              return Effect.sync(() => {
                wake = undefined
              })
            }),
            pull
          )
        }
      )

      beginStep(0)
      attemptsOnStep++
      yield* startAttempt(0, request_, undefined)
      return pull
    })

  const run = (plan: StreamPlan, request: GenerateRequest): Stream.Stream<StreamPart, AiError> =>
    Stream.fromChannel(
      Channel.fromTransform(
        (_upstream: unknown, scope: Scope.Scope) =>
          open(plan, request, scope) as Effect.Effect<
            Effect.Effect<readonly [StreamPart, ...Array<StreamPart>], AiError | Cause.Done>,
            AiError
          >
      )
    ) as unknown as Stream.Stream<StreamPart, AiError>

  const resolveRetry = (
    input: boolean | RetryPolicy | RetryPolicyInput | undefined,
    base: RetryPolicy,
    path: string
  ) =>
    input === undefined || input === false
      ? Result.succeed(undefined)
      : input === true
        ? Result.succeed(base)
        : decodeRetry(input, path)

  const stream: Streams["stream"] = (request, options) =>
    Stream.unwrap(
      Effect.gen(function* () {
        const valid = yield* options.validate(request)
        const checks = yield* Input.orInvalidRequest(
          Input.all([
            Input.optionalDuration("firstChunkTimeout", options.firstChunkTimeout, env.defaults.firstChunkTimeout),
            Input.optionalDuration("idleTimeout", options.idleTimeout, env.defaults.idleTimeout),
            Input.optionalDuration("totalTimeout", options.totalTimeout, env.defaults.totalTimeout),
            resolveRetry(options.retry, options.basePolicy, "retry"),
            options.resume === undefined || options.resume === false
              ? Result.succeed(undefined)
              : Result.map(
                  Input.all([
                    Input.int("resume.maxResumes", options.resume === true ? 1 : (options.resume.maxResumes ?? 1), {
                      min: 1
                    }),
                    Input.int("resume.minOverlap", options.resume === true ? 4 : (options.resume.minOverlap ?? 4), {
                      min: 1
                    })
                  ]),
                  ([maxResumes, minOverlap]) => ({
                    maxResumes,
                    minOverlap,
                    instruction:
                      (typeof options.resume === "object" ? options.resume.instruction : undefined) ??
                      defaultInstruction
                  })
                )
          ])
        )
        const [firstChunkTimeout, idleTimeout, totalTimeout, retry, resume] = checks
        const inputs = options.steps ?? [{ provider: options.provider }]
        if (inputs.length === 0) {
          return yield* Effect.fail(
            new ModelError({
              reason: "InvalidRequest",
              field: "steps",
              message: "invalid steps: give at least one step"
            })
          )
        }
        const steps: Array<StreamStep> = []
        for (const [i, input] of inputs.entries()) {
          const stepRetry =
            input.retry === undefined
              ? Result.succeed(retry)
              : resolveRetry(input.retry as never, options.basePolicy, `steps[${i}].retry`)
          const checked = yield* Input.orInvalidRequest(stepRetry)
          const base = options.stepFor(input.provider ?? options.provider, input.domain ?? options.domain)
          const model = input.model
          const prepare = input.prepare
          steps.push({
            ...base,
            timeout: undefined,
            retry: checked,
            prepare:
              model === undefined && prepare === undefined
                ? undefined
                : (r: GenerateRequest) => {
                    const withModel = model === undefined ? r : { ...r, model }
                    return prepare === undefined ? withModel : prepare(withModel)
                  }
          })
        }
        const cache = options.cache === false ? undefined : options.cacheStore
        const plan: StreamPlan = {
          steps: steps as unknown as StreamPlan["steps"],
          firstChunkTimeout,
          idleTimeout,
          totalTimeout,
          resume,
          cache:
            cache === undefined || cache.getParts === undefined || cache.setParts === undefined
              ? undefined
              : {
                  store: { getParts: cache.getParts, setParts: cache.setParts },
                  // Keyed on what the first step sends (a domain's system prompt and model included).
                  key: cache.key({ provider: steps[0]!.name, request: steps[0]!.prepare?.(valid) ?? valid })
                },
          onRetry:
            options.onRetry === undefined
              ? undefined
              : (event) =>
                  options.onRetry!({
                    provider: event.step.name,
                    attempt: event.attempt,
                    error: event.error,
                    delay: event.delay
                  })
        }
        return run(plan, valid)
      })
    )

  return { run, stream }
}
