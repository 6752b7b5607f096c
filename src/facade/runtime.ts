/**
 * The Promise facade's manager: its `ManagedRuntime` built on first use, built again after a
 * failure (after `rebuildAfter`, a doubling backoff; an `OptionError` is final), and its
 * graceful `dispose()`, bounded by `disposeTimeout`.
 *
 * @internal
 */
import {
  Cause,
  type Clock,
  Context,
  Duration,
  Effect,
  Exit,
  type Fiber,
  Layer,
  ManagedRuntime,
  Metric,
  Result
} from "effect"
import { ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import type { Services } from "../Orchestra.js"
import { describeDefect } from "../policy/failure.js"
import { realClock } from "../policy/timers.js"
import * as Stats from "../Stats.js"
import type { Rejections } from "./rejection.js"

/**
 * A clock's monotonic time in milliseconds: a wall clock stepped back or on (NTP) moves no wait measured on it.
 *
 * @internal
 */
export const monotonicMillis = (clock: Clock.Clock): number => Number(clock.monotonicTimeNanosUnsafe()) / 1_000_000

/**
 * Whole milliseconds since `started` (`monotonicMillis` of `clock`): a call's elapsed time, on the monotonic
 * clock, so that a wall clock stepped on while it waited does not time it out early, nor one stepped back
 * let it run long.
 *
 * @internal
 */
export const elapsedMillis = (clock: Clock.Clock, started: number): number =>
  Math.floor(monotonicMillis(clock) - started)

const notALayer = (given: unknown): Layer.Layer<Services, Input.OptionError> =>
  Layer.effectContext(
    Effect.fail(
      Input.toOptionError({
        path: "layer",
        message: `expected a Layer such as Orchestra.layer({ providers }), got ${Input.kindOf(given)}`
      })
    )
  )

// `Layer.isLayer` looks into its argument: a revoked `Proxy` throws there, and is no layer either.
const isLayer = (given: unknown): boolean => {
  try {
    return Layer.isLayer(given)
  } catch {
    return false
  }
}

const defaults = { rebuildAfter: Duration.seconds(1), disposeTimeout: Duration.seconds(30) }

// The longest wait between two builds of a manager that keeps failing (unless `rebuildAfter` is longer).
const maxRebuildAfterMillis = 60_000

const facadeKeys: ReadonlySet<string> = new Set(["rebuildAfter", "disposeTimeout"])

/**
 * `createOrchestra`'s own options, checked: a failure names the field, as a layer's options do. Read as a
 * call's options are: own fields only, each once; `null` is no duration (as a call's `timeout: null` is not),
 * and an object without fields of its own (a `Date`, a `Map`, a signal) holds no options.
 */
const readOptions = (
  options: unknown
): Result.Result<
  { readonly rebuildAfter: Duration.Duration; readonly disposeTimeout: Duration.Duration },
  Input.OptionError
> => {
  if (options === undefined) return Result.succeed(defaults)
  const refuse = (path: string, message: string) => Result.fail(Input.toOptionError({ path, message }))
  // `kindOf`, not `Array.isArray`, which throws on a revoked `Proxy`.
  const kind = Input.kindOf(options)
  if (kind !== "an object") return refuse("options", `expected an object of options, got ${kind}`)
  const foreign = Input.notOptions(options as object)
  if (foreign !== undefined) return refuse("options", `expected an object of options, got ${foreign}`)
  const read = Input.readFields(options as object)
  if (Result.isFailure(read)) return Result.fail(Input.toOptionError(read.failure))
  const given = read.success
  const unknown = Input.unknownKey(given, facadeKeys)
  if (unknown !== undefined) return Result.fail(Input.toOptionError(unknown))
  const rebuildAfter = Input.duration("rebuildAfter", Input.orDefault(given.rebuildAfter, defaults.rebuildAfter), {
    allowZero: true,
    allowInfinite: true
  })
  if (Result.isFailure(rebuildAfter)) return Result.fail(Input.toOptionError(rebuildAfter.failure))
  const disposeTimeout = Input.duration(
    "disposeTimeout",
    Input.orDefault(given.disposeTimeout, defaults.disposeTimeout),
    { allowInfinite: true }
  )
  if (Result.isFailure(disposeTimeout)) return Result.fail(Input.toOptionError(disposeTimeout.failure))
  return Result.succeed({ rebuildAfter: rebuildAfter.success, disposeTimeout: disposeTimeout.success })
}

const timedOut: unique symbol = Symbol("timedOut")

/** `promise`, or `timedOut` once `bound` has passed first (on `clock`; no timer left behind). */
const within = <A>(clock: Clock.Clock, promise: Promise<A>, bound: Duration.Duration): Promise<A | typeof timedOut> =>
  !Duration.isFinite(bound)
    ? promise
    : new Promise((resolve, reject) => {
        const deadline = Effect.runFork(clock.sleep(bound))
        deadline.addObserver((exit) => {
          if (Exit.isSuccess(exit)) resolve(timedOut)
        })
        promise.then(
          (value) => {
            deadline.interruptUnsafe()
            resolve(value)
          },
          (error: unknown) => {
            deadline.interruptUnsafe()
            reject(error)
          }
        )
      })

/**
 * What `dispose()` rejects with when releasing the manager failed (a finalizer of a layer died,
 * a provider's connection pool would not close): a `ModelError` of reason `Unknown` naming
 * what failed, its `cause` what the finalizer threw (an `AggregateError` of them all when
 * several did). Every other finalizer has run by then.
 */
const releaseFailure = (cause: Cause.Cause<unknown>): ModelError => {
  const failures: Array<unknown> = []
  for (const reason of cause.reasons) {
    if (reason._tag === "Die") failures.push(reason.defect)
    else if (reason._tag === "Fail") failures.push(reason.error)
  }
  if (failures.length === 0) {
    return new ModelError({ reason: "Unknown", message: "dispose: releasing the manager was interrupted" })
  }
  const what = failures.map(describeDefect).join("; ")
  return new ModelError({
    reason: "Unknown",
    message: `dispose: releasing the manager failed (everything else was released): ${what}`,
    cause:
      failures.length === 1
        ? failures[0]
        : new AggregateError(failures, `dispose: ${failures.length} finalizers failed`)
  })
}

/**
 * One `createOrchestra`'s manager: its state, read by the calls, written only here.
 *
 * @internal
 */
export interface Manager {
  /** Times the manager's waits and its calls' (their timeouts, and the time waited for its build): see `makeManager`. */
  readonly clock: Clock.Clock
  /** The built manager, once built. */
  readonly services: Context.Context<Services> | undefined
  readonly statsService: Stats.Service | undefined
  /** Set by the first `dispose()`: every call after it is refused. */
  readonly disposing: Promise<void> | undefined
  /** The metrics' series when `dispose()` started (its layers take theirs out of the registry as they close). */
  readonly seriesAtDispose: Metric.MetricRegistry | undefined
  /**
   * Call fibers run outside the runtime's own fiber scope, so that dispose drains them
   * through the executor's shutdown instead of interrupting them at once. A batch is not
   * among them: once the executor has closed it refuses the batch's items, which gives each
   * its outcome, and the batch returns them; interrupted, it would lose them all.
   */
  readonly running: Set<Fiber.Fiber<unknown, unknown>>
  /**
   * What ends each stream being read: a stream is no fiber of the facade's, so that `dispose()` ends one
   * still running once its bound has passed as it ends `running`'s calls (it ran on up to the executor's
   * `shutdownDeadline`).
   */
  readonly streams: Set<() => void>
  /**
   * Aborted once `dispose()`'s bound has passed: it cancels the batches still running then (a batch is
   * no fiber of `running`, and interrupted it would lose its items' outcomes), so that each resolves.
   */
  readonly ended: AbortSignal
  /** The built manager, building it (again, once a failed build's backoff has passed) if need be. */
  readonly servicesOf: () => Promise<Context.Context<Services>>
  readonly dispose: () => Promise<void>
}

/**
 * The manager of `layer`, built on first use; `options` are `createOrchestra`'s own. `managerClock`
 * times its rebuild backoff, `dispose()`'s bound and a call's wait for the build (on its monotonic
 * time): the live clock, but for tests (a `TestClock`).
 *
 * @internal
 */
export const makeManager = (
  rejections: Rejections,
  layer: unknown,
  options: unknown,
  managerClock: Clock.Clock = realClock
): Manager => {
  const { OrchestraError, rejectionOf, shuttingDown } = rejections
  const read = readOptions(options)
  const { rebuildAfter, disposeTimeout } = Result.isSuccess(read) ? read.success : defaults
  // Code without types may hand over the manager's options themselves: a manager that cannot be built.
  // So is one given wrong facade options: every call is told the OptionError naming the field.
  const given: Layer.Layer<Services, unknown> = !isLayer(layer)
    ? notALayer(layer)
    : Result.isFailure(read)
      ? Layer.effectContext(Effect.fail(read.failure))
      : (layer as Layer.Layer<Services, unknown>)
  let runtime = ManagedRuntime.make(given)
  // The last failed build (`at`: monotonic milliseconds): refused again until its backoff has passed, for ever
  // when it is an OptionError.
  let failed: { readonly error: unknown; readonly at: number; readonly final: boolean } | undefined
  let failures = 0
  // A failed build's runtime being released (what the build had acquired), before the next build starts.
  let releasing: Promise<void> | undefined
  let building: Promise<Context.Context<Services>> | undefined

  const cutBuild = () => shuttingDown("the orchestra was disposed before the manager was built: the call never ran")

  const backoffMillis = () =>
    Math.min(
      Duration.toMillis(rebuildAfter) * 2 ** (failures - 1),
      Math.max(maxRebuildAfterMillis, Duration.toMillis(rebuildAfter))
    )

  const servicesOf = (): Promise<Context.Context<Services>> => {
    if (manager.services !== undefined) return Promise.resolve(manager.services)
    if (building !== undefined) return building
    if (failed !== undefined) {
      if (failed.final || monotonicMillis(managerClock) - failed.at < backoffMillis())
        return Promise.reject(failed.error)
      runtime = ManagedRuntime.make(given)
    }
    const current = runtime
    // `dispose()` while a failed build's runtime was being released: this build never starts.
    const build = () =>
      manager.disposing !== undefined ? Promise.reject(cutBuild()) : Effect.runPromiseExit(current.contextEffect)
    building = (releasing === undefined ? build() : releasing.then(build)).then((exit) => {
      if (Exit.isFailure(exit)) {
        // Cut by `dispose()`: the calls waiting for the build were made before it, not refused as new ones.
        if (manager.disposing !== undefined && Cause.hasInterruptsOnly(exit.cause)) throw cutBuild()
        const error = rejectionOf(exit.cause, undefined, manager.disposing !== undefined)
        const failure = Cause.findErrorOption(exit.cause)
        const final = failure._tag === "Some" && failure.value instanceof Input.OptionError
        failed = { error, at: monotonicMillis(managerClock), final }
        failures++
        building = undefined
        if (!final && manager.disposing === undefined) {
          // Its release failing or hanging does not stop the next build for longer than dispose()'s own bound.
          releasing = within(managerClock, Effect.runPromiseExit(current.disposeEffect), disposeTimeout).then(() => {
            releasing = undefined
          })
        }
        throw error
      }
      failed = undefined
      manager.services = exit.value
      manager.statsService = Context.get(exit.value, Stats.Stats)
      return exit.value
    })
    return building
  }

  /** What `dispose()` rejects with when its bound passed first: what was still running then. */
  const unfinished = (calls: number): ModelError => {
    const parts = [
      ...(calls > 0 ? [`draining ${calls} running call${calls === 1 ? "" : "s"}`] : []),
      "releasing the manager's layers (a finalizer that has not ended)",
      ...(releasing !== undefined ? ["releasing a failed build"] : [])
    ]
    return new ModelError({
      reason: "Unknown",
      message: `dispose: did not finish within ${Duration.format(disposeTimeout)} (disposeTimeout): still ${parts.join(", ")}; calls still running were ended with ShuttingDownError, the release goes on in the background`
    })
  }

  const dispose = (): Promise<void> => {
    if (manager.disposing !== undefined) return manager.disposing
    const services = manager.services
    if (services !== undefined) manager.seriesAtDispose = new Map(Context.get(services, Metric.MetricRegistry))
    const closed = Effect.runPromiseExit(runtime.disposeEffect)
    const released = releasing === undefined ? closed : Promise.all([closed, releasing]).then(([exit]) => exit)
    const { running, streams } = manager
    manager.disposing = within(managerClock, released, disposeTimeout).then((exit) => {
      const calls = running.size + streams.size
      // Nothing should be left once the executor has drained; anything that is ends now.
      for (const fiber of running) fiber.interruptUnsafe()
      if (exit === timedOut) {
        // Past the bound, what the drain has not ended ends now too; a batch still refusing its queued
        // items after a drain that ended is left to give each its outcome.
        for (const end of streams) end()
        ending.abort()
        throw new OrchestraError(unfinished(calls))
      }
      // The scope ran every finalizer whatever one of them did: only then is a failure told.
      if (Exit.isFailure(exit)) throw new OrchestraError(releaseFailure(exit.cause))
    })
    return manager.disposing
  }

  const ending = new AbortController()
  const manager: { -readonly [K in keyof Manager]: Manager[K] } = {
    clock: managerClock,
    services: undefined,
    statsService: undefined,
    disposing: undefined,
    seriesAtDispose: undefined,
    running: new Set(),
    streams: new Set(),
    ended: ending.signal,
    servicesOf,
    dispose
  }
  return manager
}
