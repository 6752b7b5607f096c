/**
 * The pipeline for streams. Before its first chunk reaches the consumer a stream is an
 * ordinary call: retried on its step (`Policy.schedule`), then handed to the next step
 * when `shouldFallback`. After it, text the consumer holds is never taken back or sent
 * twice: a failure ends the stream with a `TimeoutError` (one of our deadlines) or a
 * `StreamInterruptedError` (the provider failed), both carrying the partial text, unless
 * `resume` continues on the next step (lossy, `stream-resume.ts`).
 *
 * This file runs a plan (`stream-plan.ts`) from the consumer's side: its pull, which takes
 * at once everything the current attempt (`stream-attempt.ts`: the producer fiber, the
 * first-chunk and idle deadlines) has buffered; the retry, fallback and resume decisions
 * when an attempt ends; the steps' metrics; the total deadline, one watch per stream on the
 * deadline lanes, through which the shutdown finds every stream.
 *
 * @internal
 */
import { Cause, Channel, Duration, Effect, Exit, Fiber, Option, Schedule, Scope, Stream } from "effect"
import { observe } from "./callback.js"
import {
  type AiError,
  type FailedAttempt,
  isRetryable,
  reasonOf,
  shouldFallback,
  StreamInterruptedError,
  TimeoutError
} from "../AiError.js"
import type { GenerateRequest, StreamPart } from "../Model.js"
import { schedule as retrySchedule } from "../Policy.js"
import type { Ending, Watch } from "./deadline.js"
import type { Engine } from "./engine.js"
import { cutByShutdown, exhaustedOr, isGuardDefect, shuttingDown } from "./failure.js"
import { CurrentCut } from "./plan.js"
import { endSpan, isTraced } from "./span.js"
import { attemptStarter } from "./stream-attempt.js"
import { keptOrNot, readCached, writeParts } from "./stream-cache.js"
import { closeAttempt, graceRelease } from "./stream-attempt-close.js"
import type { Attempt, StreamSpan } from "./stream-attempt-types.js"
import { isWholeStream } from "./stream-parts.js"
import {
  type ExecutorStreamOptions,
  type StreamDefaults,
  type StreamPlan,
  type StreamStep,
  streamFromOptions
} from "./stream-plan.js"
import { Dedupe, resumable, resumeRequest } from "./stream-resume.js"

/**
 * @internal
 */
export interface Streams {
  readonly run: (plan: StreamPlan, request: GenerateRequest) => Stream.Stream<StreamPart, AiError>
  readonly stream: (request: GenerateRequest, options: ExecutorStreamOptions) => Stream.Stream<StreamPart, AiError>
}

// The model the first step asks for; a `prepare` that throws ends the attempt, not the span's making.
const preparedModel = (step: StreamStep, request: GenerateRequest): string | undefined => {
  try {
    return (step.prepare?.(request) ?? request).model
  } catch {
    return request.model
  }
}

// An attempt that ended on its first-chunk or idle deadline: its watch counted that timeout.
const ownTimeout = (attempt: Attempt | undefined): boolean => {
  const end = attempt?.end
  if (end === undefined || end._tag === "Success") return false
  const error = Cause.findErrorOption(end.cause)
  return error._tag === "Some" && error.value._tag === "TimeoutError" && error.value.limit !== "total"
}

// A retry schedule's step (`Schedule.toStep`), made at a stream's first retry.
type Stepper = (now: number, error: AiError) => Effect.Effect<[Duration.Duration, Duration.Duration], unknown>

// A stream's span attributes: as `Executor.execute`'s, for its first step.
const streamAttributes = (plan: StreamPlan, request: GenerateRequest): Record<string, unknown> => {
  const first = plan.steps[0]
  return {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": first.name,
    "gen_ai.request.model": preparedModel(first, request) ?? first.target.defaultModel,
    "orchestra.domain": first.domain ?? "none"
  }
}

/**
 * @internal
 */
export const make = (env: { readonly engine: Engine; readonly defaults: StreamDefaults }): Streams => {
  const { engine } = env

  // Made once per executor, as `onEnd` below is made of arrows: a generator function made per
  // stream gets a map of its own from V8, in the old generation, which keeps the stream's
  // whole state alive through every young collection until the next full one.
  const open = Effect.fnUntraced(function* (plan: StreamPlan, request: GenerateRequest, streamScope: Scope.Scope) {
    if (engine.isClosing()) {
      return yield* shuttingDown()
    }
    const clock = yield* Effect.clockWith(Effect.succeed)
    const now = () => clock.currentTimeMillisUnsafe()
    const cut = yield* CurrentCut
    if (cut?.stopped !== undefined) return yield* Effect.fail(cut.stopped)
    // How the stream ended: set once by its consumer's side (below), read by its span's end.
    let terminal: Exit.Exit<void, AiError> | undefined
    const fiber = Fiber.getCurrent()
    const span: StreamSpan | undefined =
      fiber !== undefined && isTraced(fiber)
        ? { span: yield* Effect.makeSpan("Executor.stream", { attributes: streamAttributes(plan, request) }), clock }
        : undefined
    if (span !== undefined) {
      // Added first, so it runs last: after the finalizer below has ended the stream's last attempt.
      yield* Scope.addFinalizerExit(streamScope, (exit) =>
        Effect.sync(() => endSpan(span.span, clock, terminal ?? exit))
      )
    }
    if (plan.cache !== undefined) {
      const cached = yield* readCached(engine.lanes, plan.cache, plan.totalTimeout)
      // A cut while the cache was read (a Redis call): no replay, no attempt.
      if (cut?.stopped !== undefined) return yield* Effect.fail(cut.stopped)
      // What is not a whole stream (a custom cache's answer) is a miss: replayed, a stream without
      // its Finish would end as if complete.
      if (Option.isSome(cached) && isWholeStream(cached.value)) {
        const parts = cached.value
        span?.span.attribute("orchestra.cache", "hit")
        let replayed = false
        return Effect.suspend(() => {
          if (replayed) return Cause.done()
          replayed = true
          return Effect.succeed(parts)
        })
      }
    }

    // Everything the consumer and the producers share (the producers through the host of
    // `attemptStarter` below). Mutated synchronously only.
    let current: Attempt | undefined
    // The attempt of the step still open (`current` is cleared while the consumer decides
    // what follows an attempt, e.g. during a retry's backoff): a cut then ends that step.
    let stepAttempt: Attempt | undefined
    let delivered = ""
    let anyDelivered = false
    // A continuation cannot be asked for past a tool call (its assistant message would need the
    // call's result), and would make the call again: such a stream is not resumed.
    let toolCallDelivered = false
    let finishDelivered = false
    // The consumer's resume while it waits for its attempt (below); called with `Effect.void`.
    let wake: ((effect: Effect.Effect<void>) => void) | undefined
    let stepIndex = 0
    let stepStarted = 0
    let attemptsOnStep = 0
    let stepper: Stepper | undefined
    let backoff: Watch | undefined
    // A retry's onRetry hook while it runs.
    let hook: Fiber.Fiber<void> | undefined
    let resumes = 0
    let request_ = request
    let firstTextAt: number | undefined
    const failures: Array<FailedAttempt> = []
    const collected: Array<StreamPart> = []
    const streamStarted = now()

    const signal = () => {
      const w = wake
      wake = undefined
      w?.(Effect.void)
    }

    const endStream = (exit: Exit.Exit<void, AiError>) => {
      if (terminal !== undefined) return
      terminal = exit
      signal()
    }

    // The attempt `cutShort` ended: its end is the stream's cut, not its provider's outcome.
    let cutAttempt: Attempt | undefined
    // Ends the stream with `error` now: its running attempt stops, its step counts the error.
    // A stream whose Finish the consumer holds is complete: it ends as such at its next pull.
    const cutShort = (error: AiError, timedOut: boolean) => {
      if (finishDelivered) return
      // The step's timeout, as a call's cut step counts one: between two attempts or with its upstream
      // ended (read ahead) too, unless that attempt's own deadline already counted it.
      const open = current ?? stepAttempt
      if (timedOut && open !== undefined && !stepClosed && !ownTimeout(current)) open.series.timeouts++
      if (current !== undefined && current.end === undefined) {
        current.end = Exit.fail(error)
        cutAttempt = current
        current.fiber?.interruptUnsafe()
      }
      finishStep(current ?? stepAttempt, Exit.fail(error))
      endStream(Exit.fail(error))
    }

    // The engine counts a stream until its consumer closes it. Cut by the shutdown, nothing of
    // it runs any more (its producer is interrupted): the shutdown stops waiting for it then,
    // since a consumer that dropped its stream without closing it never will.
    let left = false
    const leave = () => {
      if (left) return
      left = true
      engine.leave()
    }

    const onTotal = (ending: Ending) => {
      // The provider's whole answer is read ahead (its Finish buffered, its upstream closed): nothing is
      // left to wait for but the consumer's reading of what is in memory. Cut, the caller lost an answer
      // its provider gave in time (its breaker records that success, and its tokens were spent).
      if (ending === "timeout" && current?.finish !== undefined) return
      cutShort(
        ending === "shutdown"
          ? cutByShutdown()
          : new TimeoutError({
              limit: "total",
              timeout: plan.totalTimeout ?? Duration.zero,
              // Between two attempts (a retry's backoff, its hook) the step's: `current` is unset then.
              provider: (current ?? stepAttempt)?.step.name,
              partialText: delivered
            }),
        ending === "timeout"
      )
      if (ending === "shutdown") leave()
    }
    let total: Watch | undefined
    // When the total deadline passes (armed below): no retry's backoff waits past it.
    let totalAt = Number.POSITIVE_INFINITY
    const stop = (error: AiError) => cutShort(error, false)

    // Set when the stream's scope closes: the hook's end then arms no retry.
    let closing = false
    let stepClosed = false
    const finishStep = (attempt: Attempt | undefined, exit: Exit.Exit<void, AiError>) => {
      if (stepClosed || attempt === undefined) return
      stepClosed = true
      const series = attempt.series
      series.latency.record(now() - stepStarted)
      if (Exit.isSuccess(exit)) {
        series.successes++
        const usage = attempt.finish?.usage
        if (usage !== undefined) series.addUsage(usage)
      } else {
        const error = Cause.findErrorOption(exit.cause)
        // A defect (a user guard's) is counted as a call's is: Unknown, not Interrupted.
        series.fail(
          error._tag === "Some" ? reasonOf(error.value) : Cause.hasDies(exit.cause) ? "Unknown" : "Interrupted"
        )
      }
    }

    // Run as the stream's scope closes, with the exit it closes with.
    const finalizer = (exit: Exit.Exit<unknown, unknown>): Effect.Effect<unknown> => {
      closing = true
      total?.dispose()
      cut?.stops?.delete(stop)
      // Interrupted, the hook ends at once, arming no backoff (`closing`): on lanes already closed, a
      // backoff's immediate "shutdown" ending would end the stream before its step is counted below.
      hook?.interruptUnsafe()
      backoff?.dispose()
      leave()
      const attempt = current
      // Closed once the consumer had the Finish, without a last pull nor a cut: the stream is complete.
      if (
        terminal === undefined &&
        finishDelivered &&
        cut?.error === undefined &&
        attempt !== undefined &&
        attempt.end?._tag !== "Failure"
      ) {
        attempt.end ??= Exit.void
        return onEnd(attempt)
      }
      if (terminal === undefined) {
        // Left by its consumer: cancelled, or cut by the caller's deadline (counted as the timeout it is); or
        // ended by a user guard's defect out of its pull (a breaker's record that threw), counted Unknown as a
        // call's is (not a defect of the consumer's own, downstream: it left the stream).
        const error = cut?.error
        terminal =
          error !== undefined
            ? Exit.fail(error)
            : Exit.isFailure(exit) && isGuardDefect(exit.cause)
              ? (exit as Exit.Exit<void, AiError>)
              : Exit.interrupt()
        const open = attempt ?? stepAttempt
        if (error?._tag === "TimeoutError" && open !== undefined && !stepClosed) open.series.timeouts++
        // An end its provider reached, read ahead (a whole answer, its tokens spent), counts as its
        // breaker records it below; the stream itself ends as its consumer left it.
        const own = error === undefined && attempt?.end !== undefined && attempt !== cutAttempt
        finishStep(open, own ? attempt.end! : terminal)
      }
      if (attempt === undefined) return Effect.void
      // The breaker counts nothing of a stream its consumer left or the stream's deadline cut, but
      // what its provider did before: its end read ahead, not yet read (a failure, a whole answer).
      const own = attempt.end !== undefined && attempt !== cutAttempt ? attempt.end : "ignored"
      return closeAttempt(attempt, own, clock, engine.lanes, terminal)
    }
    // The attempts' scopes are forked from this one, made before the finalizer below is added so
    // that it closes after it (last added, first run): the attempt the finalizer ends is still open,
    // its breaker permit not yet closed unrecorded (ignored: a probe left half-open).
    const attempts = yield* Scope.fork(streamScope)
    // Counted, watched and its finalizer in place in one uninterruptible step: a consumer
    // interrupted in between left the stream counted for ever (the shutdown waited its whole
    // deadline for it) and its total deadline armed.
    yield* Effect.uninterruptible(
      Effect.suspend(() => {
        engine.enter()
        total = engine.lanes.watch(onTotal)
        total.arm(plan.totalTimeout)
        if (plan.totalTimeout !== undefined) totalAt = now() + Duration.toMillis(plan.totalTimeout)
        if (cut !== undefined) (cut.stops ??= new Set()).add(stop)
        return Scope.addFinalizerExit(streamScope, finalizer)
      })
    )

    const startAttempt = attemptStarter({
      engine,
      plan,
      scope: attempts,
      now,
      signal,
      begin: (attempt) => {
        current = attempt
        stepAttempt = attempt
      },
      span,
      totalAt: () => totalAt
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
      Effect.suspend(() => {
        const exit = attempt.end!
        current = undefined
        if (Exit.isSuccess(exit)) {
          return Effect.flatMap(closeAttempt(attempt, exit, clock, engine.lanes), () => {
            finishStep(attempt, exit)
            if (plan.cache !== undefined && resumes === 0 && attempt.step.cacheable !== false) {
              // A stream that completed is answered whether or not the cache could keep its parts.
              // Up to the total deadline (the shutdown cuts it too): past it, the write is abandoned.
              const left =
                totalAt === Number.POSITIVE_INFINITY ? undefined : Duration.millis(Math.max(0, totalAt - now()))
              return Effect.flatMap(
                engine.lanes.run(
                  Effect.catchCause(writeParts(plan.cache.store, plan.cache.key, collected), keptOrNot),
                  left
                ),
                (kept) =>
                  typeof kept === "string"
                    ? Effect.sync(() => endStream(Exit.void))
                    : Effect.map(kept, () => endStream(Exit.void))
              )
            }
            endStream(Exit.void)
            return Effect.void
          })
        }
        const found = Cause.findErrorOption(exit.cause)
        if (found._tag === "None") {
          // A user guard's defect (`stream-attempt.ts`): the stream's, not retried, no other step.
          return Effect.flatMap(closeAttempt(attempt, exit, clock, engine.lanes), () => {
            finishStep(attempt, exit)
            endStream(exit)
            return Effect.void
          })
        }
        const error = found.value
        return Effect.flatMap(closeAttempt(attempt, exit, clock, engine.lanes), () => onFailure(attempt, exit, error))
      })

    // An attempt that failed, closed: retried, handed to the next step, resumed, or the stream's end.
    const onFailure = (attempt: Attempt, exit: Exit.Failure<void, AiError>, error: AiError): Effect.Effect<void> => {
      if (terminal !== undefined) return Effect.void
      if (error._tag === "ShuttingDownError") {
        finishStep(attempt, exit)
        endStream(exit)
        return Effect.void
      }
      if (anyDelivered) return midStream(attempt, exit, error)
      const policy = attempt.step.retry
      if (policy !== undefined && isRetryable(error) && !engine.isClosing()) {
        if (stepper !== undefined) return retryOrGiveUp(stepper, attempt, exit, error)
        return Effect.flatMap(Schedule.toStep(retrySchedule(policy)), (made) => {
          const step: Stepper = made as never
          stepper = step
          return retryOrGiveUp(step, attempt, exit, error)
        })
      }
      return giveUp(attempt, exit, error)
    }

    const retryOrGiveUp = (
      step: Stepper,
      attempt: Attempt,
      exit: Exit.Failure<void, AiError>,
      error: AiError
    ): Effect.Effect<void> => {
      const decidedAt = now()
      return Effect.flatMap(Effect.exit(step(decidedAt, error)), (decision) => {
        // A backoff the total deadline would cut (a long Retry-After) is not waited for: the
        // step fails with its error now, and the next step gets the time that is left.
        if (!(Exit.isSuccess(decision) && decidedAt + Duration.toMillis(decision.value[1]) < totalAt)) {
          return giveUp(attempt, exit, error)
        }
        const delay = decision.value[1]
        const wait = () => {
          backoff = engine.lanes.watch((ending) => {
            backoff = undefined
            if (ending === "shutdown") {
              endStream(Exit.fail(cutByShutdown()))
            } else {
              retryDue = true
              signal()
            }
          })
          backoff.arm(delay)
        }
        if (plan.onRetry === undefined) {
          wait()
          return Effect.void
        }
        // Run beside the consumer, which waits for the backoff meanwhile: waited for in its pull, a
        // hook still running when the total deadline passed held the stream past it (a call's
        // deadline cuts its hook). The stream's end interrupts it.
        const event = { step: attempt.step, attempt: attemptsOnStep, error, delay }
        // Started and kept in one step: a consumer interrupted in between would leave it running.
        return Effect.uninterruptible(
          Effect.map(
            Effect.forkDetach(
              Effect.onExit(
                observe("onRetry", plan.onRetry, () => plan.onRetry!(event)),
                () =>
                  Effect.sync(() => {
                    hook = undefined
                    if (terminal === undefined && !closing) wait()
                  })
              ),
              { startImmediately: true }
            ),
            (fiber) => {
              if (fiber.pollUnsafe() === undefined) hook = fiber
            }
          )
        )
      })
    }

    // No retry (left): the next step when the error falls back, else the stream's end.
    const giveUp = (attempt: Attempt, exit: Exit.Failure<void, AiError>, error: AiError): Effect.Effect<void> => {
      finishStep(attempt, exit)
      failures.push({ domain: attempt.step.domain, provider: attempt.step.name, error })
      const next = stepIndex + 1
      if (shouldFallback(error) && next < plan.steps.length) {
        beginStep(next)
        attemptsOnStep++
        return startAttempt(next, request_, undefined)
      }
      endStream(Exit.fail(exhaustedOr(failures, plan.steps.length, error)))
      return Effect.void
    }

    // Mid-stream: never restarted silently.
    const midStream = (attempt: Attempt, exit: Exit.Failure<void, AiError>, error: AiError): Effect.Effect<void> => {
      finishStep(attempt, exit)
      const next = stepIndex + 1
      const resume = plan.resume
      if (
        resume !== undefined &&
        !toolCallDelivered &&
        resumes < resume.maxResumes &&
        next < plan.steps.length &&
        resumable(error)
      ) {
        const resumed = resumeRequest(request, delivered, resume.instruction)
        // Checked as the stream's request was (a step's `prepare` checks its own answer): a continuation
        // the limits refuse is not sent, and the stream ends with the failure it would have resumed.
        if (plan.validate?.(resumed) === undefined) {
          resumes++
          beginStep(next)
          attemptsOnStep++
          request_ = resumed
          return startAttempt(next, request_, new Dedupe(delivered, resume.minOverlap))
        }
      }
      endStream(
        Exit.fail(
          // Only tool calls delivered: a TimeoutError without text would read as retryable (`isRetryable`),
          // and an outer retry would deliver the calls again.
          error._tag === "TimeoutError" && delivered.length > 0
            ? new TimeoutError({
                limit: error.limit,
                timeout: error.timeout,
                provider: error.provider ?? attempt.step.name,
                partialText: delivered
              })
            : error._tag === "StreamInterruptedError"
              ? // The provider's partialText is its own text: not what a resumed stream delivered before it.
                new StreamInterruptedError({
                  partialText: delivered,
                  provider: error.provider ?? attempt.step.name,
                  reason: error.reason,
                  detail: error.detail,
                  cause: error.cause
                })
              : new StreamInterruptedError({
                  partialText: delivered,
                  provider: attempt.step.name,
                  reason: reasonOf(error),
                  detail: error.message,
                  cause: error
                })
        )
      )
      return Effect.void
    }

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
          toolCallDelivered = true
        } else {
          finishDelivered = true
        }
        if (plan.cache !== undefined) collected.push(part)
      }
      return parts.length === 0 ? undefined : (parts as unknown as readonly [StreamPart, ...Array<StreamPart>])
    }

    // Whether `pull` has something to do now (what it looks at before it waits).
    const moved = (): boolean =>
      terminal !== undefined ||
      retryDue ||
      (current !== undefined && (current.buffer.length > 0 || current.end !== undefined))

    const pull: Effect.Effect<readonly [StreamPart, ...Array<StreamPart>], AiError | Cause.Done> = Effect.suspend(
      () => {
        // A cut (total deadline, shutdown) carries the text delivered when it struck: parts
        // read ahead of a slow consumer then are not delivered after it.
        if (terminal !== undefined && Exit.isFailure(terminal)) return terminal as Exit.Exit<never, AiError>
        if (retryDue) {
          retryDue = false
          attemptsOnStep++
          // Counted when it starts: a deadline that cuts the backoff leaves no retry made.
          engine.series(plan.steps[stepIndex]!).retries++
          return Effect.andThen(startAttempt(stepIndex, request_, undefined), pull)
        }
        const attempt = current
        if (attempt !== undefined && attempt.buffer.length > 0) {
          const parts = take(attempt)
          if (parts !== undefined) return Effect.succeed(parts)
          return pull
        }
        if (terminal !== undefined) return Cause.done()
        if (attempt !== undefined && attempt.end !== undefined) return Effect.andThen(onEnd(attempt), pull)
        return waitThenPull
      }
    )
    // One wait per chunk on a paced upstream, built once: its register keeps the resume
    // itself and returns no cleanup, so a wait allocates neither a closure nor a finalizer
    // (a resume called after an interruption is a no-op in effect's callback). It looks again
    // as it registers: the consumer's fiber may have yielded to the scheduler between `pull`'s
    // look and this wait (every `maxOpsBeforeYield` instructions), and a signal sent then
    // found no one to wake.
    const waitThenPull = Effect.andThen(
      Effect.callback<void>((resume) => {
        if (moved()) return resume(Effect.void)
        wake = resume
        if (current !== undefined) graceRelease(current)
      }),
      pull
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

  return { run, stream: streamFromOptions(env.defaults, run) }
}
