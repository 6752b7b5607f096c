/**
 * The Effect program behind each facade call: the same router, executor and batch
 * entry points Effect code uses, so a domain's breaker, rate limit, cache and fallback
 * chain apply to every call, streams included.
 *
 * @internal
 */
import { addAbortListener } from "node:events"
import { Deferred, Duration, Effect, Exit, Stream } from "effect"
import type { AiError } from "../AiError.js"
import { Batch, type BatchResult, type Item, type RunOptions } from "../Batch.js"
import { Executor } from "../Executor.js"
import type { EmbedRequest, GenerateRequest, StreamPart } from "../Model.js"
import type { Services } from "../Orchestra.js"
import { type Answer, type CallOptions, type DomainOutcome, type HedgeOptions, Router } from "../Router.js"
import { tracedStream } from "../policy/span.js"
import type { Checked } from "./input.js"

const callOptions = (checked: Checked): CallOptions => ({
  timeout: checked.timeout,
  cache: checked.raw.cache as boolean | undefined,
  allowStale: checked.raw.allowStale as boolean | undefined
})

/**
 * A domain through `Router.execute`, or the default provider as the lead step of `Router.plan`.
 *
 * @internal
 */
export const execute = Effect.fn("Facade.execute")(function* (request: GenerateRequest, checked: Checked) {
  const router = yield* Router
  const domain = checked.raw.domain as string | undefined
  if (domain !== undefined) return yield* router.execute(request, domain, callOptions(checked))
  // No domain: the default provider with the executor's retry policy, through the same pipeline
  // (its breaker, rate limit and cache), answering with the attempts it really made.
  const executor = yield* Executor
  const { retry } = yield* executor.resolve({ retry: true })
  const routed = yield* router.plan(request, [], {
    ...callOptions(checked),
    lead: executor.stepFor(executor.provider, { retry: retry ?? false })
  })
  return routed.answer(yield* executor.run(routed.plan, routed.call))
})

/** @internal */
export const executeWithFallback = Effect.fn("Facade.executeWithFallback")(function* (
  request: GenerateRequest,
  domains: ReadonlyArray<string>,
  checked: Checked
) {
  return yield* (yield* Router).executeWithFallback(request, domains, callOptions(checked))
})

/** @internal */
export const executeParallelDomains = Effect.fn("Facade.executeParallelDomains")(function* (
  request: GenerateRequest,
  domains: ReadonlyArray<string>,
  checked: Checked
): Effect.fn.Return<ReadonlyArray<DomainOutcome> | Answer, AiError, Router> {
  const router = yield* Router
  // The router refuses any other mode (`null` included), naming the field.
  const mode = (checked.raw.mode === undefined ? "all" : checked.raw.mode) as "all"
  return yield* router.executeParallelDomains(request, domains, mode, callOptions(checked))
})

/** `given`: whether the caller passed options at all (the router names `options` when not). @internal */
export const hedge = Effect.fn("Facade.hedge")(function* (
  request: GenerateRequest,
  domains: ReadonlyArray<string>,
  given: boolean,
  checked: Checked
) {
  const options: HedgeOptions | undefined = given
    ? {
        ...callOptions(checked),
        after: checked.raw.after as HedgeOptions["after"],
        defaultAfter: checked.raw.defaultAfter as Duration.Input | undefined
      }
    : undefined
  // Without options the router refuses the call, naming `options`.
  return yield* (yield* Router).hedge(request, domains, options as HedgeOptions)
})

/** A domain through `Router.embed`, or the executor with its retry policy. @internal */
export const embed = Effect.fn("Facade.embed")(function* (request: EmbedRequest, checked: Checked) {
  const domain = checked.raw.domain as string | undefined
  if (domain !== undefined) return yield* (yield* Router).embed(request, domain, { timeout: checked.timeout })
  return yield* (yield* Executor).embed(request, { retry: true, totalTimeout: checked.timeout })
})

/** @internal */
export const stream = (request: GenerateRequest, checked: Checked): Stream.Stream<StreamPart, AiError, Services> =>
  // A span only when traced: `Stream.withSpan` costs every stream a span, a stack and effect's bracket.
  tracedStream("Facade.stream", Stream.unwrap(streamOf(request, checked)))

// Made once, not per call (a generator function made per call gets an old-generation map of its own).
const streamOf = Effect.fnUntraced(function* (request: GenerateRequest, checked: Checked) {
  const raw = checked.raw
  const options = {
    totalTimeout: checked.timeout,
    firstChunkTimeout: raw.firstChunkTimeout as Duration.Input | "none" | undefined,
    idleTimeout: raw.idleTimeout as Duration.Input | "none" | undefined,
    cache: raw.cache as boolean | undefined
  }
  // With a domain: Router.stream, so the domain's breaker, rate limit, cache and chain apply.
  if (raw.domain === undefined) return (yield* Executor).stream(request, { ...options, retry: true })
  return (yield* Router).stream(request, raw.domain as string | ReadonlyArray<string>, options)
})

/**
 * A batch that `signal` or `timeout` cancels: the result names the items that never ran. `ended` (the
 * manager's, aborted once `dispose()`'s bound has passed) cancels it too: its running items end then. @internal
 */
export const batch = Effect.fn("Facade.batch")(function* (
  items: ReadonlyArray<Item>,
  checked: Checked,
  ended: AbortSignal
) {
  const runner = yield* Batch
  const {
    signal: _signal,
    timeout: _timeout,
    ...options
  } = checked.raw as RunOptions & {
    readonly signal?: unknown
    readonly timeout?: unknown
  }
  const signal = checked.signal
  const cancelled = yield* Deferred.make<void>()
  const onAbort = () => Deferred.doneUnsafe(cancelled, Exit.void)
  // A zero timeout: the call's timeout passed while the manager was being built.
  let listening: Disposable | undefined
  let ending: Disposable | undefined
  if (signal?.aborted || (checked.timeout !== undefined && Duration.isZero(checked.timeout))) onAbort()
  else {
    if (signal !== undefined) listening = addAbortListener(signal, onAbort)
    ending = addAbortListener(ended, onAbort)
  }
  const deadline = checked.timeout === undefined ? undefined : Effect.sleep(checked.timeout)
  // An abort (from `onProgress`, say) completes the cancel inside the abort: the batch stops
  // starting items then (`batch/runner.ts`), not once its loop yields.
  const cancel =
    deadline === undefined ? Deferred.await(cancelled) : Effect.raceFirst(Deferred.await(cancelled), deadline)
  return yield* runner.run(items, { ...options, cancel }).pipe(
    Effect.ensuring(
      Effect.sync(() => {
        listening?.[Symbol.dispose]()
        ending?.[Symbol.dispose]()
      })
    )
  )
}) as (items: ReadonlyArray<Item>, checked: Checked, ended: AbortSignal) => Effect.Effect<BatchResult, AiError, Batch>
