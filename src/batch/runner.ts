/**
 * One batch run. Each item runs through the pipeline (its route's `Router.prepare`d plan,
 * then the executor's engine) holding a permit of the manager's shared limit (`gate.ts`) until
 * its outcome is decided; every item ends with exactly one outcome, written at its index.
 *
 * - A batch without `onEvent` (silent, or with only the synchronous `onProgress`) starts its
 *   items from JavaScript, as `executeMany` does (`started.ts`): no worker fiber and no
 *   Effect per item, only each call's own fiber; an item that ends starts the next at once.
 * - A batch with `onEvent` runs `min(concurrency, limit, items)` worker fibers that take the
 *   items by index (`policy/pool.ts`), so that each event is an Effect in order.
 *
 * Either way a batch of 100k items never parks 100k fibers.
 *
 * @internal
 */
import { Cause, Clock, Duration, Effect, Exit, Fiber } from "effect"
import { isThenable, userEffect } from "../policy/callback.js"
import { type AiError, ModelError, ShuttingDownError } from "../AiError.js"
import type { BatchResult, ItemResult, ProgressEvent, RunOptions, Status } from "../Batch.js"
import { type RetryInfo, type Service as ExecutorService, startedBy } from "../Executor.js"
import {
  type Answer,
  type CallOptions,
  type Prepared,
  preparedNow,
  type Routed,
  type Service as RouterService
} from "../Router.js"
import { describeDefect, detached } from "../policy/failure.js"
import { forEachPool } from "../policy/pool.js"
import type { Gate } from "./gate.js"
import { check, itemAt, type Parsed, parse, underItem } from "./items.js"
import * as Started from "./started.js"
import { type Steps, statsOf } from "./stats.js"
import { monotonicMillis } from "../stats/clock.js"

/**
 * Backpressure from a consumer of the batch's events (`Batch.stream`'s outbox): while `room` answers false the
 * batch starts no item, waiting in `awaitRoom` (interruptible) instead. The items already running go on.
 */
export interface Room {
  readonly room: () => boolean
  readonly awaitRoom: Effect.Effect<void>
}

/**
 * What every run of a manager shares.
 */
export interface Deps {
  readonly executor: ExecutorService
  readonly router: RouterService
  /** The manager's limit: one permit per running item, across every batch. */
  readonly gate: Gate
  readonly limit: number
  /** The most items one batch takes. */
  readonly maxItems: number
  readonly nextId: () => string
  /**
   * Routes without a batch `fallback`, resolved once per manager (keys: the domain names
   * that resolved, and `undefined` for the executor's provider, which no name can be, not even
   * `""`; so at most one per domain).
   */
  readonly routes: Map<string | undefined, Prepared>
  /**
   * Whether the manager is closing: its scope's close sets it before the executor's (the batch is built on the
   * executor, so closed first), so an item handed over while it is unset is admitted by the executor.
   */
  readonly closing: () => boolean
}

/**
 * The error of an item whose turn came once the manager was closing: refused before its call, it never
 * reached the executor, and its result says `ran: false` (its Started event may have closed the manager).
 */
const refusal = (): ShuttingDownError =>
  new ShuttingDownError({ message: "the batch's manager is shutting down: the item was not started" })

const statusOf = (error: AiError): Status => {
  switch (error._tag) {
    case "TimeoutError":
      return "timeout"
    case "ShuttingDownError":
    case "CircuitOpenError":
      return "rejected"
    case "FallbackExhaustedError":
      return statusOf(error.last)
    default:
      return "error"
  }
}

// Our own interruptions never reach the item's continuation: what gets here is the call's own doing.
const errorOf = (cause: Cause.Cause<AiError>): AiError => {
  const found = Cause.findErrorOption(cause)
  if (found._tag === "Some") return found.value
  const died = cause.reasons.find((reason) => reason._tag === "Die")
  if (died === undefined) return new ModelError({ reason: "Unknown", message: "the call interrupted itself" })
  return new ModelError({
    reason: "Unknown",
    message: `unexpected defect: ${describeDefect(died.defect)}`,
    cause: died.defect
  })
}

const retryOnly = { retry: true } as const

/**
 * The exit of a caller's Effect (`onEvent`'s, `cancel`), run on a fiber of its own. Effect's run loop
 * ends a fiber at once when handed something that is not an Effect deep inside it (a `flatMap`
 * returning `42`), skipping every handler on its stack: on a worker, the batch died with it; on the
 * cancel's watcher, its warning was lost. Interrupted, it interrupts the effect and waits for it.
 */
const isolated = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<Exit.Exit<A, E>> =>
  Effect.flatMap(Effect.forkChild(effect, { startImmediately: true }), (fiber) =>
    Effect.onInterrupt(Fiber.await(fiber), () => Fiber.interrupt(fiber))
  )

/** An item refused by a closing manager before its call: it did not run. */
const notAdmitted = (result: ItemResult): ItemResult => ({ ...result, ran: false })

/** The outcome of an item that ran, from its call's exit. */
const resultOf = (index: number, exit: Exit.Exit<Answer, AiError>, durationMs: number, retries: number): ItemResult => {
  if (Exit.isSuccess(exit)) return { index, status: "success", answer: exit.value, ran: true, durationMs, retries }
  const error = detached(errorOf(exit.cause))
  return { index, status: statusOf(error), error, ran: true, durationMs, retries }
}

/**
 * The chain of an item: its domain (and the domain's own fallbacks, or the batch's), or,
 * without a domain, the executor's provider then the batch's fallbacks. Resolved once per
 * batch and domain (`routes`); each item then only gets its plan.
 */
const routeOf = (
  deps: Deps,
  routes: Map<string | undefined, Prepared>,
  fallback: ReadonlyArray<string>,
  domain: string | undefined
): Effect.Effect<Prepared, ModelError> => {
  const { executor, router } = deps
  const known = routes.get(domain)
  if (known !== undefined) return Effect.succeed(known)
  const prepared =
    domain !== undefined
      ? fallback.length === 0
        ? router.prepare(domain)
        : // A list is taken as the whole chain: the domain's own fallbacks first, then the batch's.
          Effect.flatMap(router.chain(domain), (chain) =>
            router.prepare([...new Set([...chain.map((d) => d.name), ...fallback])])
          )
      : Effect.flatMap(executor.resolve(retryOnly), (defaults) =>
          // Items that name no domain start on the executor's provider, with its retry policy.
          router.prepare(fallback, {
            lead: executor.stepFor(executor.provider, {
              retry: defaults.retry ?? false,
              timeout: defaults.timeout ?? "none"
            })
          })
        )
  return Effect.map(prepared, (route) => {
    routes.set(domain, route)
    return route
  })
}

/** A batch's fallbacks and hedges, told by its items' calls as they end (see `Plan.onEnded`). */
class Tally implements Steps {
  fallbacks = 0
  hedges = 0
  hedgesWon = 0
  readonly ended = (steps: number, hedges: number, won: boolean): void => {
    if (steps > 1) this.fallbacks += steps - 1 - hedges
    this.hedges += hedges
    if (won) this.hedgesWon++
  }
}

// Only a plan of several steps is copied: one of a single step has no fallback nor hedge to tell.
const observed = (routed: Routed, tally: Tally): Routed =>
  routed.plan.steps.length === 1 ? routed : { ...routed, plan: { ...routed.plan, onEnded: tally.ended } }

/** The whole call of item `index` as an Effect: its route, its plan, the executor's run. */
const callOf = (
  deps: Deps,
  routes: Map<string | undefined, Prepared>,
  fallback: ReadonlyArray<string>,
  item: unknown,
  index: number,
  domain: string | undefined,
  onRetry: (info: RetryInfo) => Effect.Effect<void>,
  tally: Tally
): Effect.Effect<Answer, AiError> => {
  const parsed = parse(item, index)
  if (parsed instanceof ModelError) return Effect.fail(parsed)
  const itemDomain = parsed.domain ?? domain
  const callOptions = { onRetry }
  const known = routes.get(itemDomain)
  const routed =
    known !== undefined
      ? routedOn(known, parsed, index, callOptions)
      : Effect.flatMap(
          // The batch's own domain and fallbacks were checked before: an unknown domain here is the item's.
          Effect.mapError(routeOf(deps, routes, fallback, itemDomain), (error) => underItem(error, index, "domain")),
          (prepared) => routedOn(prepared, parsed, index, callOptions)
        )
  return Effect.flatMap(routed, (routed) => {
    const r = observed(routed, tally)
    return Effect.map(deps.executor.run(r.plan, r.call), r.answer)
  })
}

/** The plan of an item on its route, or its request's refusal named under the item. */
const routedOn = (
  prepared: Prepared,
  parsed: Parsed,
  index: number,
  callOptions: CallOptions
): Effect.Effect<Routed, ModelError> => {
  const now = preparedNow.get(prepared)
  if (now === undefined) {
    return Effect.mapError(prepared(parsed.request, callOptions), (error) => underItem(error, index, parsed.via))
  }
  const routed = now(parsed.request, callOptions)
  return routed instanceof ModelError ? Effect.fail(underItem(routed, index, parsed.via)) : Effect.succeed(routed)
}

/**
 * A batch of one item without callbacks or `cancel`, the commonest use of a shared limit
 * (one `Batch.run([item])` per caller): the item's call under a permit, on the batch's own
 * fiber, without the pool and the per-item bookkeeping a batch of many needs.
 */
const runOne = (
  deps: Deps,
  item: unknown,
  options: { readonly domain: string | undefined; readonly fallback: ReadonlyArray<string> },
  id: string,
  clock: Clock.Clock,
  start: number
): Effect.Effect<BatchResult> => {
  const routes = options.fallback.length === 0 ? deps.routes : new Map<string | undefined, Prepared>()
  let retries = 0
  let began = Number.NaN
  const onRetry = (): Effect.Effect<void> => {
    retries++
    return Effect.void
  }
  const tally = new Tally()
  let refused = false
  const call = Effect.suspend(() => {
    began = monotonicMillis(clock)
    if (deps.closing()) {
      refused = true
      return Effect.succeed(Exit.fail(refusal()))
    }
    // Reading the item may throw (a getter): that is the item's defect, not the batch's.
    return Effect.exit(
      Effect.suspend(() => callOf(deps, routes, options.fallback, item, 0, options.domain, onRetry, tally))
    )
  })
  return Effect.map(deps.gate.withPermit(call), (exit) => {
    const end = monotonicMillis(clock)
    const result = resultOf(0, exit, end - began, retries)
    const results = [refused ? notAdmitted(result) : result]
    const elapsedMs = end - start
    return {
      id,
      results,
      elapsedMs,
      cancelled: false,
      notRun: [],
      stats: statsOf(results, { elapsedMs, peak: 1, waits: [began - start], steps: tally })
    } satisfies BatchResult
  })
}

/**
 * Runs a batch; fails only when the batch as a whole is invalid (see `Batch.Service.run`).
 */
export const run = Effect.fnUntraced(function* (
  deps: Deps,
  rawItems: unknown,
  rawOptions: RunOptions | undefined,
  /** Sees every event first (`Batch.stream`'s queue); it must not throw. */
  tap?: ((event: ProgressEvent) => void) | undefined,
  /** Holds the batch back while its consumer's buffer is full (`Batch.stream`). */
  room?: Room | undefined
) {
  const { executor, router, gate, limit } = deps
  const { items, total, options } = yield* check(
    rawItems,
    rawOptions === undefined ? {} : rawOptions,
    router,
    deps.routes,
    deps.maxItems,
    room !== undefined
  )
  const id = options.id ?? deps.nextId()
  yield* Effect.annotateCurrentSpan({ "orchestra.batch.id": id, "orchestra.batch.items": total })
  const clock = yield* Clock.Clock
  const start = monotonicMillis(clock)
  const { onProgress, onEvent, fallback } = options
  const silent = onProgress === undefined && onEvent === undefined && tap === undefined
  if (total === 1 && silent && options.cancel === undefined) {
    return yield* runOne(deps, itemAt(items, 0), options, id, clock, start)
  }

  const results: Array<ItemResult> = new Array(total)
  // Plain arrays: a typed array's fixed cost dominates the many one-item batches.
  const startedAt: Array<number> = new Array(total).fill(Number.NaN)
  const waits: Array<number> = new Array(total).fill(Number.NaN)
  const retries: Array<number> = new Array(total).fill(0)
  const tally = new Tally()
  let done = 0
  let running = 0
  let peak = 0
  let cancelled = false
  // The items refused because the manager was closing when their turn came (none until it closes).
  let refused: Set<number> | undefined
  const refuse = (index: number): ShuttingDownError => {
    refused ??= new Set()
    refused.add(index)
    return refusal()
  }

  const warned = { onProgress: false, onEvent: false }
  // A failing callback is the caller's bug, not the batch's: logged once, then ignored.
  const warn = (callback: "onProgress" | "onEvent", cause: unknown): Effect.Effect<void> => {
    if (warned[callback]) return Effect.void
    warned[callback] = true
    return Effect.logWarning(`Batch ${id}: the ${callback} callback failed; later failures are not logged`, cause)
  }
  // Events of items started from JavaScript are not run by a worker, nor is an async
  // callback's rejection: the only Effect that is not `Effect.void` is the warning of a
  // callback that failed, run on the batch's context.
  const context = yield* Effect.context<never>()
  const runNow = (effect: Effect.Effect<void>): void => {
    if (effect !== Effect.void) Effect.runForkWith(context)(effect)
  }
  const emit = (event: ProgressEvent): Effect.Effect<void> => {
    tap?.(event)
    let effect: Effect.Effect<void> = Effect.void
    if (onProgress !== undefined) {
      try {
        const returned: unknown = onProgress(event)
        // An async callback throws by rejecting: left alone, that is an unhandled rejection.
        if (isThenable(returned)) returned.then(undefined, (error: unknown) => runNow(warn("onProgress", error)))
      } catch (error) {
        effect = warn("onProgress", error)
      }
    }
    if (onEvent === undefined) return effect
    const guarded = Effect.flatMap(
      isolated(userEffect("onEvent", () => onEvent(event))),
      (exit): Effect.Effect<void> => (Exit.isSuccess(exit) ? Effect.void : warn("onEvent", Cause.squash(exit.cause)))
    )
    return Effect.andThen(effect, guarded)
  }

  const started = (index: number, takenAt: number): Effect.Effect<void> => {
    const now = monotonicMillis(clock)
    startedAt[index] = now
    waits[index] = now - takenAt
    if (++running > peak) peak = running
    return silent ? Effect.void : emit({ _tag: "Started", index, done, total, elapsedMs: now - start })
  }

  const settle = (index: number, exit: Exit.Exit<Answer, AiError>): Effect.Effect<void> => {
    const now = monotonicMillis(clock)
    running--
    done++
    const durationMs = now - startedAt[index]!
    const elapsedMs = now - start
    const made = resultOf(index, exit, durationMs, retries[index]!)
    const result = refused?.has(index) === true ? notAdmitted(made) : made
    results[index] = result
    if (silent) return Effect.void
    return result.error === undefined
      ? emit({ _tag: "Succeeded", index, done, total, elapsedMs, durationMs })
      : emit({
          _tag: "Failed",
          index,
          status: result.status,
          error: result.error,
          done,
          total,
          elapsedMs,
          durationMs
        })
  }

  const onRetryFor =
    (index: number) =>
    (info: RetryInfo): Effect.Effect<void> => {
      retries[index]! += 1
      if (silent) return Effect.void
      return emit({
        _tag: "Retried",
        index,
        attempt: info.attempt,
        delayMs: Duration.toMillis(info.delay),
        done,
        total,
        elapsedMs: monotonicMillis(clock) - start
      })
    }

  const routes = fallback.length === 0 ? deps.routes : new Map<string | undefined, Prepared>()
  const callItem = (index: number): Effect.Effect<Answer, AiError> =>
    callOf(deps, routes, fallback, itemAt(items, index), index, options.domain, onRetryFor(index), tally)

  const runItem = (index: number): Effect.Effect<void> => {
    // Cancelled (by an event callback of this very worker, say): no item starts any more; the
    // interruption of the pool that follows the cancellation ends this worker.
    if (cancelled) return Effect.never
    if (room !== undefined && !room.room()) return Effect.flatMap(room.awaitRoom, () => runItem(index))
    const takenAt = monotonicMillis(clock)
    // The outcome is written holding the permit, and its event run once the permit is back: a slow
    // `onEvent` must not keep the manager's shared limit from the other batches' items.
    return Effect.flatten(
      gate.withPermit(
        Effect.flatMap(
          Effect.suspend(() => started(index, takenAt)),
          // Checked after the Started event: its callback may have closed the manager.
          () =>
            deps.closing()
              ? Effect.sync(() => settle(index, Exit.fail(refuse(index))))
              : Effect.map(Effect.exit(Effect.suspend(() => callItem(index))), (exit) => settle(index, exit))
        )
      )
    )
  }

  const concurrency = Math.min(options.concurrency ?? limit, limit)
  // `onProgress` is called synchronously, so a batch with only that callback starts its
  // items from JavaScript too; only `onEvent` (an Effect per event, in order) needs workers.
  const startCall = onEvent === undefined ? startedBy.get(executor) : undefined

  // The items of a batch without `onEvent`, started from JavaScript (`started.ts`).
  const call = (index: number): Routed | ModelError | ShuttingDownError | Effect.Effect<Answer, AiError> => {
    // Called after the item's Started event, whose callback may have closed the manager.
    if (deps.closing()) return refuse(index)
    const parsed = parse(itemAt(items, index), index)
    if (parsed instanceof ModelError) return parsed
    const prepared = routes.get(parsed.domain ?? options.domain)
    const now = prepared === undefined ? undefined : preparedNow.get(prepared)
    // A route not resolved yet: this one call resolves it, on a fiber of its own.
    if (now === undefined) return callItem(index)
    const routed = now(parsed.request, { onRetry: onRetryFor(index) })
    return routed instanceof ModelError ? underItem(routed, index, parsed.via) : observed(routed, tally)
  }
  const startedBatch: Started.Batch = {
    total,
    concurrency,
    gate,
    clock,
    started: (index, takenAt) => runNow(started(index, takenAt)),
    settle: (index, exit) => runNow(settle(index, exit)),
    settled: (index) => results[index] !== undefined,
    halted: () => cancelled,
    room,
    call
  }

  // One worker runs on the batch's own fiber: a one-item batch forks nothing.
  const pool =
    startCall === undefined
      ? // Each worker reads its item when it takes its index (`itemAt`), not through the pool.
        forEachPool({ length: total }, concurrency, (_item, index) => runItem(index))
      : Started.run(startedBatch, startCall)

  if (options.cancel === undefined) {
    yield* pool
  } else {
    // Started before the pool fiber runs: a cancel that has already happened interrupts it before its first item.
    const poolFiber = yield* Effect.forkChild(pool)
    // Detached, and interrupted without waiting once the pool is done: a child fiber is waited for when
    // its parent ends, so a cancel that cannot be interrupted held the batch's result until it fired.
    const watcher = yield* Effect.forkDetach(
      Effect.flatMap(isolated(options.cancel), (exit): Effect.Effect<void> => {
        if (Exit.isSuccess(exit)) {
          if (poolFiber.pollUnsafe() === undefined) {
            cancelled = true
            poolFiber.interruptUnsafe()
          }
          return Effect.void
        }
        // A cancel that fails never completes: the batch runs on, and says why it was not cancelled.
        return Cause.hasInterruptsOnly(exit.cause)
          ? Effect.void
          : Effect.logWarning(
              `Batch ${id}: the cancel Effect failed, so the batch was not cancelled`,
              Cause.squash(exit.cause)
            )
      }),
      { startImmediately: true }
    )
    // The run interrupted, its pool is interrupted and waited for: its caller regains control once the calls it
    // interrupts have ended (their callbacks and providers' work with them), not while they still run.
    yield* Effect.ensuring(
      Effect.onInterrupt(Fiber.await(poolFiber), () => Fiber.interrupt(poolFiber)),
      Effect.sync(() => {
        watcher.interruptUnsafe()
      })
    )
  }

  const end = monotonicMillis(clock)
  const notRun: Array<number> = []
  for (let index = 0; index < total; index++) {
    if (results[index] !== undefined) continue
    const began = startedAt[index]!
    const ran = !Number.isNaN(began)
    if (!ran) notRun.push(index)
    results[index] = { index, status: "cancelled", ran, durationMs: ran ? end - began : 0, retries: retries[index]! }
  }
  const elapsedMs = end - start
  if (cancelled) yield* emit({ _tag: "Cancelled", notRun, done, total, elapsedMs })
  return {
    id,
    results,
    elapsedMs,
    cancelled,
    notRun,
    stats: statsOf(results, { elapsedMs, peak, waits, steps: tally })
  } satisfies BatchResult
})
