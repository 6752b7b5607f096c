/**
 * One batch run. Each item holds a permit of the manager's shared limit (`gate.ts`) while it
 * runs through the pipeline (its route's `Router.prepare`d plan, then the executor's
 * engine); every item ends with exactly one outcome, written at its index.
 *
 * - A silent batch (no `onProgress`, no `onEvent`) starts its items from JavaScript, as
 *   `executeMany` does (`startedPool` below): no worker fiber and no Effect per item, only
 *   each call's own fiber; an item that ends starts the next at once.
 * - A batch with callbacks runs `min(concurrency, limit, items)` worker fibers that take the
 *   items by index (`policy/pool.ts`), so that each event is an Effect in order.
 *
 * Either way a batch of 100k items never parks 100k fibers.
 *
 * @internal
 */
import { Cause, Clock, Duration, Effect, Exit, Fiber } from "effect"
import { type AiError, ModelError } from "../AiError.js"
import type { BatchResult, ItemResult, ProgressEvent, RunOptions, Status } from "../Batch.js"
import { type RetryInfo, type Service as ExecutorService, startedBy } from "../Executor.js"
import { type Answer, type Prepared, preparedNow, type Service as RouterService } from "../Router.js"
import type { Running, Sink } from "../policy/fused.js"
import { forEachPool } from "../policy/pool.js"
import type { Gate } from "./gate.js"
import { check, parse } from "./items.js"
import { statsOf } from "./stats.js"

/**
 * What every run of a manager shares.
 */
export interface Deps {
  readonly executor: ExecutorService
  readonly router: RouterService
  /** The manager's limit: one permit per running item, across every batch. */
  readonly gate: Gate
  readonly limit: number
  readonly nextId: () => string
  /**
   * Routes without a batch `fallback`, resolved once per manager (keys: the domain names
   * that resolved, and `""` for the executor's provider; so at most one per domain).
   */
  readonly routes: Map<string, Prepared>
}

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

const describe = (defect: unknown): string =>
  defect instanceof Error ? `${defect.name}: ${defect.message}` : typeof defect === "string" ? defect : String(defect)

// Our own interruptions never reach the item's continuation: what gets here is the call's own doing.
const errorOf = (cause: Cause.Cause<AiError>): AiError => {
  const found = Cause.findErrorOption(cause)
  if (found._tag === "Some") return found.value
  const died = cause.reasons.find((reason) => reason._tag === "Die")
  if (died === undefined) return new ModelError({ reason: "Unknown", message: "the call interrupted itself" })
  return new ModelError({
    reason: "Unknown",
    message: `unexpected defect: ${describe(died.defect)}`,
    cause: died.defect
  })
}

const retryOnly = { retry: true } as const

/**
 * Runs a batch; fails only when the batch as a whole is invalid (see `Batch.Service.run`).
 */
export const run = (deps: Deps, rawItems: unknown, rawOptions: RunOptions | undefined) =>
  Effect.gen(function* () {
    const { executor, router, gate, limit } = deps
    const { items, options } = yield* check(rawItems, rawOptions === undefined ? {} : rawOptions, router, deps.routes)
    const id = options.id ?? deps.nextId()
    const total = items.length
    yield* Effect.annotateCurrentSpan({ "orchestra.batch.id": id, "orchestra.batch.items": total })
    const clock = yield* Clock.Clock
    const start = clock.currentTimeMillisUnsafe()

    const results: Array<ItemResult> = new Array(total)
    // Plain arrays: a typed array's fixed cost dominates the many one-item batches.
    const startedAt: Array<number> = new Array(total).fill(Number.NaN)
    const waits: Array<number> = new Array(total).fill(Number.NaN)
    const retries: Array<number> = new Array(total).fill(0)
    let done = 0
    let running = 0
    let peak = 0
    let cancelled = false

    const { onProgress, onEvent, fallback } = options
    const silent = onProgress === undefined && onEvent === undefined
    const warned = { onProgress: false, onEvent: false }
    // A failing callback is the caller's bug, not the batch's: logged once, then ignored.
    const warn = (callback: "onProgress" | "onEvent", cause: unknown): Effect.Effect<void> => {
      if (warned[callback]) return Effect.void
      warned[callback] = true
      return Effect.logWarning(`Batch ${id}: the ${callback} callback failed; later failures are not logged`, cause)
    }
    const emit = (event: ProgressEvent): Effect.Effect<void> => {
      let effect: Effect.Effect<void> = Effect.void
      if (onProgress !== undefined) {
        try {
          onProgress(event)
        } catch (error) {
          effect = warn("onProgress", error)
        }
      }
      if (onEvent === undefined) return effect
      const guarded = Effect.flatMap(
        Effect.exit(Effect.suspend(() => onEvent(event))),
        (exit): Effect.Effect<void> => (Exit.isSuccess(exit) ? Effect.void : warn("onEvent", Cause.squash(exit.cause)))
      )
      return Effect.andThen(effect, guarded)
    }

    const started = (index: number, takenAt: number): Effect.Effect<void> => {
      const now = clock.currentTimeMillisUnsafe()
      startedAt[index] = now
      waits[index] = now - takenAt
      if (++running > peak) peak = running
      return silent ? Effect.void : emit({ _tag: "Started", index, done, total, elapsedMs: now - start })
    }

    const settle = (index: number, exit: Exit.Exit<Answer, AiError>): Effect.Effect<void> => {
      const now = clock.currentTimeMillisUnsafe()
      running--
      done++
      const durationMs = now - startedAt[index]!
      const elapsedMs = now - start
      if (Exit.isSuccess(exit)) {
        results[index] = {
          index,
          status: "success",
          answer: exit.value,
          ran: true,
          durationMs,
          retries: retries[index]!
        }
        return silent ? Effect.void : emit({ _tag: "Succeeded", index, done, total, elapsedMs, durationMs })
      }
      const error = errorOf(exit.cause)
      const status = statusOf(error)
      results[index] = { index, status, error, ran: true, durationMs, retries: retries[index]! }
      return silent ? Effect.void : emit({ _tag: "Failed", index, status, error, done, total, elapsedMs, durationMs })
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
          elapsedMs: clock.currentTimeMillisUnsafe() - start
        })
      }

    // The chain of an item: its domain (and the domain's own fallbacks, or the batch's),
    // or, without a domain, the executor's provider then the batch's fallbacks. Resolved
    // once per batch and domain; each item then only gets its plan.
    const routes = fallback.length === 0 ? deps.routes : new Map<string, Prepared>()
    const routeOf = (domain: string | undefined): Effect.Effect<Prepared, ModelError> => {
      const key = domain ?? ""
      const known = routes.get(key)
      if (known !== undefined) return Effect.succeed(known)
      const names = domain === undefined ? fallback : fallback.length === 0 ? domain : [domain, ...fallback]
      const prepared =
        domain !== undefined
          ? router.prepare(names)
          : Effect.flatMap(executor.resolve(retryOnly), (defaults) =>
              // Items that name no domain start on the executor's provider, with its retry policy.
              router.prepare(names, {
                lead: executor.stepFor(executor.provider, {
                  retry: defaults.retry ?? false,
                  timeout: defaults.timeout ?? "none"
                })
              })
            )
      return Effect.map(prepared, (route) => {
        routes.set(key, route)
        return route
      })
    }

    const callOf = (index: number): Effect.Effect<Answer, AiError> => {
      const parsed = parse(items[index], index)
      if (parsed instanceof ModelError) return Effect.fail(parsed)
      const domain = parsed.domain ?? options.domain
      const callOptions = { onRetry: onRetryFor(index) }
      const known = routes.get(domain ?? "")
      const routed =
        known !== undefined
          ? known(parsed.request, callOptions)
          : Effect.flatMap(routeOf(domain), (prepared) => prepared(parsed.request, callOptions))
      return Effect.flatMap(routed, (r) => Effect.map(executor.run(r.plan, r.call), r.answer))
    }

    const runItem = (index: number): Effect.Effect<void> => {
      const takenAt = clock.currentTimeMillisUnsafe()
      return gate.withPermit(
        Effect.flatMap(
          Effect.suspend(() => started(index, takenAt)),
          () => Effect.flatMap(Effect.exit(callOf(index)), (exit) => settle(index, exit))
        )
      )
    }

    const concurrency = Math.min(options.concurrency ?? limit, limit)
    const startCall = silent ? startedBy.get(executor) : undefined

    // The items of a silent batch, started from JavaScript on the batch's fiber: a permit is
    // taken at once when free, else the batch's fiber queues for it; `sink.done` settles an
    // item, gives its permit back and starts the next. Interrupted (cancel, shutdown), the
    // calls in flight are cancelled and their permits given back once they have ended.
    const startedPool = (begin: NonNullable<typeof startCall>): Effect.Effect<void> =>
      Effect.withFiber((fiber) => {
        const handles: Array<Running | undefined> = new Array(total)
        const answers: Array<((value: never) => Answer) | undefined> = new Array(total)
        let next = 0
        let inFlight = 0
        let finished = 0
        let pumping = false
        let blocked = false
        let wake: (() => void) | undefined
        const canStart = () => inFlight < concurrency && next < total

        const sink: Sink = {
          done: (index, exit) => {
            if (results[index] !== undefined) return
            const answer = answers[index]
            answers[index] = undefined
            handles[index] = undefined
            const outcome =
              Exit.isSuccess(exit) && answer !== undefined ? Exit.succeed(answer(exit.value as never)) : exit
            settle(index, outcome as Exit.Exit<Answer, AiError>)
            inFlight--
            finished++
            gate.release()
            if (pumping) return
            if (wake !== undefined) pump(64)
            const w = wake
            if (w !== undefined && (finished === total || canStart())) {
              wake = undefined
              w()
            }
          }
        }

        // Starts one item, a permit held (given back by its `sink.done`).
        const startItem = (index: number, takenAt: number): void => {
          inFlight++
          started(index, takenAt)
          const parsed = parse(items[index], index)
          if (parsed instanceof ModelError) {
            sink.done(index, Exit.fail(parsed))
            return
          }
          const domain = parsed.domain ?? options.domain
          const prepared = routes.get(domain ?? "")
          const now = prepared === undefined ? undefined : preparedNow.get(prepared)
          let handle: Running | undefined
          if (now === undefined) {
            // The item's chain is not resolved yet: this one call resolves it on a fiber of its own.
            const child = Effect.runForkWith(fiber.context)(Effect.exit(callOf(index)))
            const exit = child.pollUnsafe()
            if (exit !== undefined) {
              sink.done(index, Exit.isSuccess(exit) ? exit.value : exit)
              return
            }
            let cancelled = false
            child.addObserver((end) => {
              if (!cancelled) sink.done(index, Exit.isSuccess(end) ? end.value : end)
            })
            handle = {
              cancel: () => {
                cancelled = true
                child.interruptUnsafe()
                return child
              }
            }
          } else {
            const routed = now(parsed.request, { onRetry: onRetryFor(index) })
            if (routed instanceof ModelError) {
              sink.done(index, Exit.fail(routed))
              return
            }
            answers[index] = routed.answer as (value: never) => Answer
            handle = begin(fiber, routed.plan, routed.call, sink, index, true)
          }
          if (handle !== undefined && results[index] === undefined) handles[index] = handle
        }

        // Starts items while there is room and a free permit, at most `budget` of them.
        const pump = (budget: number): void => {
          pumping = true
          try {
            while (canStart() && budget-- > 0) {
              if (!gate.tryTake()) {
                blocked = true
                return
              }
              startItem(next++, clock.currentTimeMillisUnsafe())
            }
          } finally {
            pumping = false
          }
        }

        // No permit free: queue for one (in arrival order, behind other batches), then start
        // the next item with it. Uninterruptible once granted, so the permit reaches the item.
        const queued: Effect.Effect<void> = Effect.suspend(() => {
          const takenAt = clock.currentTimeMillisUnsafe()
          return Effect.uninterruptibleMask((restore) =>
            Effect.map(restore(gate.take), () => {
              pumping = true
              try {
                startItem(next++, takenAt)
              } finally {
                pumping = false
              }
            })
          )
        })

        const loop: Effect.Effect<void> = Effect.suspend(() => {
          blocked = false
          pump(1024)
          if (finished === total) return Effect.void
          if (canStart()) return Effect.flatMap(blocked ? queued : Effect.yieldNow, () => loop)
          return Effect.flatMap(
            Effect.callback<void>((resume) => {
              if (canStart() || finished === total) return resume(Effect.void)
              wake = () => resume(Effect.void)
            }),
            () => loop
          )
        })

        return Effect.onInterrupt(loop, () =>
          Effect.suspend(() => {
            wake = undefined
            const ending: Array<Fiber.Fiber<unknown, unknown>> = []
            let cancelled = 0
            for (let index = 0; index < next; index++) {
              const handle = handles[index]
              if (handle === undefined) continue
              handles[index] = undefined
              cancelled++
              const fiber = handle.cancel()
              if (fiber !== undefined) ending.push(fiber)
            }
            const giveBack = Effect.sync(() => {
              for (let i = 0; i < cancelled; i++) gate.release()
            })
            return ending.length === 0 ? giveBack : Effect.andThen(Fiber.awaitAll(ending), giveBack)
          })
        )
      })

    // One worker runs on the batch's own fiber: a one-item batch forks nothing.
    const pool =
      startCall === undefined
        ? forEachPool(items, concurrency, (_item, index) => runItem(index))
        : startedPool(startCall)

    if (options.cancel === undefined) {
      yield* pool
    } else {
      // Started before the pool fiber runs: a cancel that has already happened interrupts it before its first item.
      const poolFiber = yield* Effect.forkChild(pool)
      const watcher = yield* Effect.forkChild(
        Effect.andThen(
          options.cancel,
          Effect.sync(() => {
            if (poolFiber.pollUnsafe() !== undefined) return
            cancelled = true
            poolFiber.interruptUnsafe()
          })
        ),
        { startImmediately: true }
      )
      yield* Fiber.await(poolFiber)
      yield* Fiber.interrupt(watcher)
    }

    const end = clock.currentTimeMillisUnsafe()
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
      stats: statsOf(results, { elapsedMs, peak, waits })
    } satisfies BatchResult
  })
