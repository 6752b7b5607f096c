/**
 * One attempt of a stream: one step's upstream, read by one producer fiber up to `PREFETCH`
 * parts ahead of the consumer (`stream.ts`), which takes everything buffered at once. No
 * fiber, race or timer per chunk: the first-chunk and idle deadlines are one re-armable
 * watch per attempt on the deadline lanes (relinked in O(1) per chunk, disarmed while the
 * buffer is full, so a slow consumer never trips it). The shutdown finds every attempt
 * through it.
 *
 * Per attempt, as for calls: rate limit, breaker (admitted at the start, the stream's own
 * outcome recorded at its end, a provider that cuts streams counts as failing), provider
 * slot, then the upstream.
 *
 * This module starts an attempt and runs its producer; the attempt's shape is in
 * `stream-attempt-types.ts`, its end in `stream-attempt-close.ts`, the checks of its parts in
 * `stream-parts.ts`.
 *
 * @internal
 */
import { Cause, Channel, Context, Duration, Effect, Exit, type Fiber, Option, Pull, Scope, Stream } from "effect"
import { type AiError, ModelError, TimeoutError } from "../AiError.js"
import * as Input from "../Input.js"
import { ChunkDeadline, estimateInputTokens, type GenerateRequest } from "../Model.js"
import type { Ending } from "./deadline.js"
import {
  cutByShutdown,
  guardDefect,
  guardInterrupted,
  guardThrew,
  isGuardDefect,
  notAnAiError,
  unexpected
} from "./failure.js"
import { notAnEffectError } from "./callback.js"
import type { BreakerGuard, BreakerPermit, LimitGuard } from "./plan.js"
import { attemptAttributes } from "./step.js"
import type { Attempt, AttemptHost } from "./stream-attempt-types.js"
import { malformed, NoFinish, partIssue } from "./stream-parts.js"
import { prepareRefusal, type StreamPlan, type StreamStep } from "./stream-plan.js"
import type { Dedupe } from "./stream-resume.js"

const PREFETCH = 64

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

const noMore = Effect.succeed(undefined)

// An upstream's end (`Done`) as `undefined`; any other failure as it is.
const doneAsUndefined = (cause: Cause.Cause<unknown>): Effect.Effect<undefined, AiError> =>
  Pull.isDoneCause(cause) ? noMore : Effect.failCause(cause as Cause.Cause<AiError>)

/**
 * The `startAttempt` of one stream: starts the producer of an attempt on `plan.steps[index]`
 * with `upstream` (adapted by the step's `prepare`), its continuation deduplicated by
 * `dedupe` when it resumes.
 *
 * @internal
 */
export const attemptStarter =
  (host: AttemptHost) =>
  (index: number, upstream: GenerateRequest, dedupe: Dedupe | undefined): Effect.Effect<void> =>
    startAttempt(host, index, upstream, dedupe)

// A step's own first-chunk deadline (a fallback domain's timeout), else the stream's.
const firstChunkOf = (plan: StreamPlan, step: StreamStep): Duration.Duration | undefined =>
  step.timeout ?? plan.firstChunkTimeout

// What the watches below bound between two chunks (the first included), for the
// provider's own idle timer (`Model.ChunkDeadline`): none unless both are set.
const chunkDeadlineOf = (plan: StreamPlan, step: StreamStep): number | undefined => {
  const first = firstChunkOf(plan, step)
  return first === undefined || plan.idleTimeout === undefined
    ? undefined
    : Math.max(Duration.toMillis(first), Duration.toMillis(plan.idleTimeout))
}

// The generators below are made once, not per stream or attempt: V8 gives a generator function
// made per call its own map, in the old generation, which keeps the function's closure (the
// stream's whole state) alive through every young collection until the next full one.
// A user's rate limit or breaker that throws or returns no Effect: the stream's defect naming it,
// which the attempt's end passes on (not its provider's failure), as a call's (`step.ts`).
const acquireOf = (
  limit: LimitGuard,
  key: string,
  options: Parameters<LimitGuard["acquire"]>[1]
): ReturnType<LimitGuard["acquire"]> => {
  try {
    const acquired = limit.acquire(key, options)
    return Effect.isEffect(acquired)
      ? acquired
      : Effect.die(guardDefect(notAnEffectError("the rate limit's acquire", acquired)))
  } catch (defect) {
    return Effect.die(guardDefect(guardThrew("the rate limit's acquire", key, defect)))
  }
}
const admitOf = (breaker: BreakerGuard, key: string): ReturnType<BreakerGuard["admit"]> => {
  try {
    const admitted = breaker.admit(key)
    return Effect.isEffect(admitted)
      ? admitted
      : Effect.die(guardDefect(notAnEffectError("the circuit breaker's admit", admitted)))
  } catch (defect) {
    return Effect.die(guardDefect(guardThrew("the circuit breaker's admit", key, defect)))
  }
}

const isPermit = (permit: unknown): permit is BreakerPermit =>
  typeof permit === "object" && permit !== null && typeof (permit as BreakerPermit).record === "function"

const noPermitError = (step: string, permit: unknown): TypeError =>
  new TypeError(
    `the circuit breaker's admit must answer a permit { record } (step ${step}), got ${
      typeof permit === "object" && permit !== null ? "an object without a record function" : Input.kindOf(permit)
    }`
  )

// How an attempt its user's guard (`what`) failed ends, as a call's guard's failure ends the call (`step.ts`):
// a failure that is no AiError is a ModelError naming the guard, a defect the stream's (not retried, no other
// step), the guard's own interruption a ModelError naming it (an interruption from outside set the attempt's
// end first, or its consumer is gone): never its provider's failure.
const guardEnd = (cause: Cause.Cause<unknown>, what: string, step: string): Exit.Exit<void, AiError> => {
  const error = Cause.findErrorOption(cause)
  if (error._tag === "Some") return Exit.fail(notAnAiError(error.value, step, what) ?? (error.value as AiError))
  return Cause.hasDies(cause) ? Exit.failCause(cause as Cause.Cause<AiError>) : Exit.fail(guardInterrupted(what, step))
}

const produce = Effect.fnUntraced(function* (host: AttemptHost, attempt: Attempt, upstream: GenerateRequest) {
  const { engine, plan, now, signal } = host
  const step = attempt.step
  if (step.rateLimit !== undefined) {
    const at = host.totalAt()
    // The step's estimate is of the caller's request: what the attempt sends (a `prepare`'s system
    // prompt and token budget, a resumed step's continuation) is estimated on its own.
    const tokens =
      step.tokens === undefined || (attempt.dedupe === undefined && step.prepare === undefined)
        ? step.tokens
        : estimateInputTokens(upstream) + (upstream.maxTokens ?? 0)
    attempt.guard = "the rate limit"
    yield* acquireOf(step.rateLimit, step.name, { tokens, waitUntil: at === Infinity ? undefined : at })
  }
  if (step.breaker !== undefined) {
    attempt.guard = "the circuit breaker"
    const permit: unknown = yield* Scope.provide(admitOf(step.breaker, step.name), attempt.scope)
    // One that answers no permit would leave the attempt's outcome unrecorded, without a word.
    if (!isPermit(permit)) return yield* Effect.die(guardDefect(noPermitError(step.name, permit)))
    attempt.permit = permit
  }
  attempt.guard = undefined
  // The first chunk's deadline covers the wait for the provider's slot, as an attempt's deadline
  // covers a call's: a stream queued behind a local model's pool waited up to its total deadline.
  attempt.watch.arm(firstChunkOf(plan, step))
  if (engine.slotLimit(step.name, step.maxConcurrency) !== undefined) {
    // Taken and its release registered in one step: a deadline striking in between would leave
    // the slot taken for ever. Given back when the upstream is done, not when a slow consumer
    // has read the buffer. The name's slots are held from the wait on (`ProviderSlots`).
    yield* Effect.uninterruptibleMask((restore) =>
      Effect.suspend(() => {
        const slots = engine.slot(step.name, step.maxConcurrency)
        if (slots === undefined) return Effect.void
        const queuedAt = now()
        for (const g of attempt.series.gauges) g.queued++
        return Effect.flatMap(
          Effect.onExit(restore(slots.semaphore.take(1)), (exit) =>
            Effect.sync(() => {
              for (const g of attempt.series.gauges) g.queued--
              attempt.series.queueWait.record(now() - queuedAt)
              if (exit._tag === "Failure") slots.leave()
            })
          ),
          () => {
            let held = true
            const release = Effect.suspend(() => {
              if (!held) return Effect.void
              held = false
              slots.leave()
              return slots.semaphore.release(1)
            })
            attempt.release = release
            return Scope.addFinalizer(attempt.scope, release)
          }
        )
      })
    )
  }
  attempt.serving = true
  attempt.served = true
  attempt.started = now()
  for (const g of attempt.series.gauges) g.enter()
  // The upstream's pull as is: `Stream.toPull` wraps every pull in a merge of its context
  // into the caller's and a semaphore (~1 µs and a copy of the context a chunk); this
  // fiber is its only reader and runs in that very context.
  // In a scope of its own, closed at its Finish: not when a slow consumer reads that far.
  const upstreamScope = attempt.upstream
  const pull = yield* Channel.toPullScoped(Stream.toChannel(step.target.stream(upstream)), upstreamScope)
  // Built once per attempt, not once per chunk.
  const next = Effect.catchCause(pull, doneAsUndefined)
  let position = 0
  while (true) {
    const chunk = yield* next
    if (chunk === undefined) break
    // A stream ends at its Finish: an upstream that goes on (more parts, a stall, a late
    // failure) is not read further, and closes with the attempt.
    for (const part of chunk) {
      position++
      const issue = partIssue(part)
      if (issue !== undefined) return yield* malformed(step.name, position, issue)
      attempt.buffer.push(part)
      if (part._tag === "Finish") {
        attempt.finish = part
        break
      }
    }
    signal()
    if (attempt.finish !== undefined) break
    if (attempt.buffer.length >= PREFETCH) {
      attempt.watch.arm(undefined)
      yield* Effect.callback<void>((resume) => {
        // Looked at again: the consumer may have taken the buffer while this fiber yielded
        // to the scheduler between the look above and this wait, and found no one to wake.
        if (attempt.buffer.length < PREFETCH) return resume(Effect.void)
        attempt.space = () => resume(Effect.void)
        return Effect.sync(() => {
          attempt.space = undefined
        })
      })
    }
    attempt.limit = "idle"
    attempt.watch.arm(plan.idleTimeout)
  }
  attempt.watch.arm(undefined)
  if (attempt.finish === undefined) return yield* NoFinish(step.name)
  // The answer is whole: a finalizer of the upstream's that fails (its connection's release) is no
  // outcome of the stream, whose consumer may already hold the Finish, nor a failure of its provider.
  // One that does not end is waited for up to `RELEASE_GRACE`, armed by a consumer that waits for it
  // (`graceRelease`): a close that ends at once, the usual one, arms no timer.
  yield* Effect.exit(Scope.close(upstreamScope, Exit.void))
})

const producer = (host: AttemptHost, attempt: Attempt, upstream: GenerateRequest): Effect.Effect<void, AiError> =>
  produce(host, attempt, upstream).pipe(
    // The reader's chunk deadline, and the upstream's scope for whatever its pulls open: added,
    // not merged (`Context.merge` copies the caller's whole context, twice).
    Effect.updateContext((context: Context.Context<never>) =>
      Context.add(
        Context.add(context, ChunkDeadline, chunkDeadlineOf(host.plan, attempt.step)),
        Scope.Scope,
        attempt.upstream
      )
    )
  ) as Effect.Effect<void, AiError>

const startAttempt = Effect.fnUntraced(function* (
  host: AttemptHost,
  index: number,
  upstream: GenerateRequest,
  dedupe: Dedupe | undefined
) {
  const { engine, plan, scope: streamScope, now, signal } = host
  const step = plan.steps[index]!
  const series = engine.series(step)
  const scope = yield* Scope.fork(streamScope)
  const upstreamScope = yield* Scope.fork(scope)
  let prepared = upstream
  let refused: AiError | undefined
  if (step.prepare !== undefined) {
    try {
      prepared = step.prepare(upstream)
    } catch (thrown) {
      refused = prepareRefusal(step, thrown)
    }
  }
  const span =
    host.span === undefined
      ? undefined
      : yield* Effect.makeSpan("Policy.attempt", {
          parent: host.span.span,
          kind: "internal",
          attributes: attemptAttributes(step, "chat", prepared.model ?? step.target.defaultModel)
        })
  const attempt: Attempt = {
    step,
    series,
    scope,
    upstream: upstreamScope,
    watch: engine.lanes.watch((ending: Ending) => {
      if (attempt.end !== undefined) return
      // The answer is whole, its upstream closing (`RELEASE_GRACE` passed, or the shutdown): it ends
      // complete now, its upstream's close going on in the background.
      if (attempt.finish !== undefined) {
        attempt.end = Exit.void
        return signal()
      }
      if (ending === "timeout") series.timeouts++
      const limit = attempt.limit
      attempt.end = Exit.fail(
        ending === "shutdown"
          ? cutByShutdown()
          : new TimeoutError({
              limit,
              timeout: (limit === "idle" ? plan.idleTimeout : firstChunkOf(plan, step)) ?? Duration.zero,
              provider: step.name
            })
      )
      attempt.fiber?.interruptUnsafe()
      signal()
    }),
    limit: "firstChunk",
    buffer: [],
    started: now(),
    fiber: undefined,
    end: undefined,
    permit: undefined,
    release: undefined,
    finish: undefined,
    serving: false,
    served: false,
    guard: undefined,
    space: undefined,
    dedupe,
    span
  }
  host.begin(attempt)
  // A `prepare` that threw: the attempt ends with its refusal, as an attempt that failed at once.
  if (refused !== undefined) {
    attempt.end = Exit.fail(refused)
    signal()
    return
  }
  const produced = producer(host, attempt, prepared)
  const forked = Effect.forkDetach(
    (span === undefined ? produced : Effect.withParentSpan(produced, span, { captureStackTrace: false })).pipe(
      Effect.onExit((exit) =>
        Effect.suspend(() => {
          if (attempt.serving) {
            attempt.serving = false
            for (const g of attempt.series.gauges) g.exit()
            attempt.series.streamService.record(now() - attempt.started)
          }
          if (attempt.end === undefined) {
            attempt.end = Exit.isSuccess(exit)
              ? exit
              : isGuardDefect(exit.cause)
                ? (exit as Exit.Exit<void, AiError>)
                : attempt.guard !== undefined
                  ? guardEnd(exit.cause as Cause.Cause<unknown>, attempt.guard, step.name)
                  : Exit.fail(
                      Option.match(Cause.findErrorOption(exit.cause), {
                        // A provider's stream that failed with what is not an AiError: its ModelError.
                        onSome: (error) => notAnAiError(error, step.name) ?? error,
                        onNone: () =>
                          Cause.hasInterruptsOnly(exit.cause)
                            ? interruptedError(step.name, attempt.finish !== undefined)
                            : unexpected(exit.cause, step.name, "stream")
                      })
                    )
          }
          signal()
          return attempt.release ?? Effect.void
        })
      )
    ),
    { startImmediately: true }
  )
  // Started and its stop put in the attempt's scope in one step, as `forkIn` does; but its stop does
  // not wait for the producer, as `forkIn`'s does: a deadline, the shutdown or the consumer lets it
  // go at once, as a call's attempt is let go (an upstream that does not yield to its interruption
  // ends in the background). Its upstream's own finalizers are in the scope and run at its close.
  yield* Effect.uninterruptible(
    Effect.flatMap(forked, (fiber) => {
      attempt.fiber = fiber as Fiber.Fiber<void, AiError>
      return Scope.addFinalizer(
        scope,
        Effect.sync(() => fiber.interruptUnsafe())
      )
    })
  )
})
