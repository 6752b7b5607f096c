/**
 * The Promise facade's manager (`createOrchestra`): the manager built on a `ManagedRuntime`
 * on first use, each call's program run on it as a fiber of its own (its options checked
 * first, `input.ts`; the programs in `calls.ts`), a call's `signal` turned into its
 * interruption and its typed error, and the graceful `dispose`.
 *
 * @internal
 */
// Node's own way to listen to a caller's signal: another listener's `stopImmediatePropagation()` cannot
// silence it (an addEventListener listener it would, leaving the call running).
import { addAbortListener } from "node:events"
import {
  Cause,
  Clock,
  Context,
  Duration,
  Effect,
  Exit,
  type Fiber,
  Layer,
  ManagedRuntime,
  Metric,
  Result,
  Stream
} from "effect"
import { type AiError, isAiError, ModelError, ShuttingDownError, TimeoutError } from "../AiError.js"
import type {
  AbortedError,
  FacadeError,
  FacadeOptions,
  Orchestra,
  OrchestraError,
  ParallelOptions,
  PartStream,
  Prompt,
  StreamOptions
} from "../Facade.js"
import * as Input from "../Input.js"
import type { GenerateRequest, StreamPart } from "../Model.js"
import type { Services } from "../Orchestra.js"
import { describeDefect } from "../policy/failure.js"
import { CurrentCut, type Cut } from "../policy/plan.js"
import * as Prometheus from "../Prometheus.js"
import * as Stats from "../Stats.js"
import { checkFilter } from "../stats/filter.js"
import * as Calls from "./calls.js"
import { type Checked, check, domainsOf, embedRequestOf, isTimeoutReason, Keys, none, requestOf } from "./input.js"

/** What `createOrchestra` takes from `Facade.ts`: its error classes. */
export interface Env {
  readonly AbortedError: typeof AbortedError
  readonly OrchestraError: typeof OrchestraError
}

// The facade's own clock, read before the manager (and its context) exists.
const clock = Context.get(Context.empty() as Context.Context<never>, Clock.Clock)

const notALayer = (given: unknown): Layer.Layer<Services, Input.OptionError> =>
  Layer.effectContext(
    Effect.fail(
      Input.toOptionError({
        path: "layer",
        message: `expected a Layer such as Orchestra.layer({ providers }), got ${Input.kindOf(given)}`
      })
    )
  )

/** Milliseconds since `started`, on the facade's clock. */
const since = (started: number): number => clock.currentTimeMillisUnsafe() - started

const defaults = { rebuildAfter: Duration.seconds(1), disposeTimeout: Duration.seconds(30) }

// The longest wait between two builds of a manager that keeps failing (unless `rebuildAfter` is longer).
const maxRebuildAfterMillis = 60_000

const facadeKeys: ReadonlySet<string> = new Set(["rebuildAfter", "disposeTimeout"])

/** `createOrchestra`'s own options, checked: a failure names the field, as a layer's options do. */
const readOptions = (
  options: unknown
): Result.Result<
  { readonly rebuildAfter: Duration.Duration; readonly disposeTimeout: Duration.Duration },
  Input.OptionError
> => {
  if (options === undefined) return Result.succeed(defaults)
  const refuse = (path: string, message: string) => Result.fail(Input.toOptionError({ path, message }))
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    return refuse("options", `expected an object of options, got ${Input.kindOf(options)}`)
  }
  try {
    const given = options as FacadeOptions
    for (const key of Object.keys(given)) {
      if (!facadeKeys.has(key)) return refuse(key, `unknown option (expected one of ${[...facadeKeys].join(", ")})`)
    }
    const rebuildAfter = Input.duration("rebuildAfter", given.rebuildAfter ?? defaults.rebuildAfter, {
      allowZero: true,
      allowInfinite: true
    })
    if (Result.isFailure(rebuildAfter)) return Result.fail(Input.toOptionError(rebuildAfter.failure))
    const disposeTimeout = Input.duration("disposeTimeout", given.disposeTimeout ?? defaults.disposeTimeout, {
      allowInfinite: true
    })
    if (Result.isFailure(disposeTimeout)) return Result.fail(Input.toOptionError(disposeTimeout.failure))
    return Result.succeed({ rebuildAfter: rebuildAfter.success, disposeTimeout: disposeTimeout.success })
  } catch (error) {
    return refuse("options", `reading them threw: ${Input.thrownMessage(error)}`)
  }
}

const timedOut: unique symbol = Symbol("timedOut")

/** `promise`, or `timedOut` once `bound` has passed first (the facade's clock; no timer left behind). */
const within = <A>(promise: Promise<A>, bound: Duration.Duration): Promise<A | typeof timedOut> =>
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

/** What a stream's `return()` reaches past a `next()` that waits: an async generator queues it behind that `next()`. */
interface Closing {
  closed: boolean
  close: (() => Promise<unknown>) | undefined
  /** Ends the wait for a manager still being built. */
  wake: (() => void) | undefined
}

/** A call's request and its domains, read in that order. */
const withDomains = (
  prompt: unknown,
  domains: unknown,
  checked: Checked
): Result.Result<readonly [GenerateRequest, ReadonlyArray<string>], ModelError> =>
  Result.flatMap(requestOf(prompt, checked.context), (request) =>
    Result.map(domainsOf(domains), (names) => [request, names] as const)
  )

/** Cancels a stream whose iterator is closed (or dropped): the upstream first, then a wait for the manager. */
const closeStream = (closing: Closing): void => {
  closing.closed = true
  closing.wake?.()
  closing.close?.().catch(() => undefined)
}

/**
 * Builds `createOrchestra` over the facade's error classes; `Facade.ts` calls it once, at load.
 *
 * @internal
 */
export const makeCreateOrchestra = (env: Env) => {
  const { AbortedError, OrchestraError } = env

  /** What an aborted signal means: a timeout when its reason says so, otherwise a cancellation. */
  const abortError = (signal: AbortSignal, elapsedMillis: number, partialText?: string): AiError | AbortedError => {
    const reason: unknown = signal.reason
    let why = ""
    // Reading the reason may throw (a `Proxy`, a getter): it runs in the signal's listener, where a
    // throw would be an uncaught exception and leave the call running. Such a reason is a cancellation.
    try {
      if (isAiError(reason)) return reason
      if (isTimeoutReason(reason)) {
        return new TimeoutError({
          limit: "total",
          timeout: Duration.millis(Math.max(0, elapsedMillis)),
          // A stream's text delivered before the signal fired, as a total deadline's error carries it.
          ...(partialText ? { partialText } : {})
        })
      }
      // An Error of another realm (a vm context, an iframe) is no `instanceof Error`: its `message` names it all the same.
      if (typeof reason === "object" && reason !== null) {
        const message = (reason as { readonly message?: unknown }).message
        if (typeof message === "string" && message !== "") why = `: ${message}`
      } else if (typeof reason === "string") {
        if (reason !== "") why = `: ${reason}`
      } else if (typeof reason === "number" || typeof reason === "bigint" || typeof reason === "boolean") {
        why = `: ${reason}`
      }
    } catch {
      why = ""
    }
    return new AbortedError({ message: `the call was aborted by its signal${why}`, cause: reason })
  }

  /**
   * `promise` (a manager still being built), or the abort's error if the signal aborts first, or
   * the call's total `TimeoutError` once its `timeout` has passed: waiting for the build is part
   * of the call. A stream's wait also ends, with `undefined`, when its iterator is closed.
   */
  const untilBuilt = <A>(
    promise: Promise<A>,
    signal: AbortSignal | undefined,
    timeout: Duration.Duration | undefined,
    started: number,
    closing?: Closing
  ): Promise<A | undefined> =>
    signal === undefined && timeout === undefined && closing === undefined
      ? promise
      : new Promise<A | undefined>((resolve, reject) => {
          // Whichever settles the call first releases the others: a build that takes long
          // (or never ends) keeps neither a listener on a signal that outlives the call nor a timer.
          let listening: Disposable | undefined
          const settled = () => {
            listening?.[Symbol.dispose]()
            deadline?.interruptUnsafe()
            if (closing !== undefined) closing.wake = undefined
          }
          if (closing !== undefined) {
            closing.wake = () => {
              settled()
              resolve(undefined)
            }
          }
          const onAbort = () => {
            settled()
            reject(new OrchestraError(abortError(signal!, since(started))))
          }
          const deadline = timeout === undefined ? undefined : Effect.runFork(clock.sleep(timeout))
          deadline?.addObserver((exit) => {
            if (Exit.isFailure(exit)) return
            settled()
            reject(new OrchestraError(new TimeoutError({ limit: "total", timeout: timeout! })))
          })
          promise.then(
            (value) => {
              settled()
              resolve(value)
            },
            (error: unknown) => {
              settled()
              reject(error)
            }
          )
          // Already aborted (a batch's signal, which the call does not refuse first): no event will come.
          if (signal?.aborted) onAbort()
          else if (signal !== undefined) listening = addAbortListener(signal, onAbort)
        })

  /** The call's options once the manager is built: what is left of its `timeout` (`undefined`: nothing). */
  const timeLeft = (checked: Checked, elapsedMillis: number): Checked | undefined => {
    if (checked.timeout === undefined || elapsedMillis <= 0) return checked
    const left = Duration.toMillis(checked.timeout) - elapsedMillis
    return left > 0 ? { ...checked, timeout: Duration.millis(left) } : undefined
  }

  /**
   * A call's `timeout` shortened by the wait for the build (`left`) fires in the pipeline as a total
   * `TimeoutError` of `left`: the caller is told the timeout it gave, which is what passed.
   */
  const asGiven =
    (given: Duration.Duration, left: Duration.Duration) =>
    (error: unknown): never => {
      const timedOut = error instanceof OrchestraError ? error.error : undefined
      if (timedOut?._tag === "TimeoutError" && timedOut.limit === "total" && Duration.equals(timedOut.timeout, left)) {
        throw new OrchestraError(
          new TimeoutError({
            limit: "total",
            timeout: given,
            ...(timedOut.provider === undefined ? {} : { provider: timedOut.provider }),
            ...(timedOut.partialText === undefined ? {} : { partialText: timedOut.partialText })
          })
        )
      }
      throw error
    }

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
   * A call's options checked; whatever the check itself throws (it should throw nothing: every
   * read of the caller's objects is guarded) is the options' InvalidRequest, a rejection, never
   * an exception out of a call that returns a Promise.
   */
  const checkOptions = (options: unknown, keys: ReadonlySet<string>): Result.Result<Checked, ModelError> => {
    try {
      return check(options, keys)
    } catch (error) {
      return Result.fail(
        Input.toInvalidRequest({
          path: "options",
          message: `checking them threw: ${Input.thrownMessage(error)}`,
          cause: error
        })
      )
    }
  }

  const isFacadeError = (u: unknown): u is FacadeError =>
    isAiError(u) || u instanceof AbortedError || u instanceof Input.OptionError

  const shuttingDown = (message = "the orchestra has been disposed and admits no new calls") =>
    new OrchestraError(new ShuttingDownError({ message }))

  const createOrchestra = <E>(layer: Layer.Layer<Services, E, never>, options?: FacadeOptions): Orchestra => {
    const read = readOptions(options)
    const { rebuildAfter, disposeTimeout } = Result.isSuccess(read) ? read.success : defaults
    // Code without types may hand over the manager's options themselves: a manager that cannot be built.
    // So is one given wrong facade options: every call is told the OptionError naming the field.
    const given: Layer.Layer<Services, unknown> = !Layer.isLayer(layer)
      ? notALayer(layer)
      : Result.isFailure(read)
        ? Layer.effectContext(Effect.fail(read.failure))
        : layer
    let runtime = ManagedRuntime.make(given)
    // The last failed build: refused again until its backoff has passed, for ever when it is an OptionError.
    let failed: { readonly error: unknown; readonly at: number; readonly final: boolean } | undefined
    let failures = 0
    // A failed build's runtime being released (what the build had acquired), before the next build starts.
    let releasing: Promise<void> | undefined
    let services: Context.Context<Services> | undefined
    let statsService: Stats.Service | undefined
    let building: Promise<Context.Context<Services>> | undefined
    let disposing: Promise<void> | undefined
    let emptyStats: Stats.ExecutionStats | undefined
    // Call fibers run outside the runtime's own fiber scope, so that dispose drains them
    // through the executor's shutdown instead of interrupting them at once. A batch is not
    // among them: once the executor has closed it refuses the batch's items, which gives each
    // its outcome, and the batch returns them; interrupted, it would lose them all.
    const running = new Set<Fiber.Fiber<unknown, unknown>>()
    // A stream's iterator dropped without `return()` (a `next()` result read, the loop left by a
    // function that never resumes it) would hold its upstream and provider slot up to the stream's
    // total deadline: it is cancelled once the garbage collector reclaims it. An iterator with a
    // `next()` waiting is kept in `pulling`, so the part a caller awaits is never cut away under it.
    // The registry holds only the stream's `Closing`, never the iterator.
    const abandoned = new FinalizationRegistry<Closing>(closeStream)
    const pulling = new Set<AsyncIterator<StreamPart>>()

    const rejectionOf = (cause: Cause.Cause<unknown>, aborted: FacadeError | undefined): unknown => {
      const failure = Cause.findErrorOption(cause)
      if (failure._tag === "Some") {
        return isFacadeError(failure.value) ? new OrchestraError(failure.value) : failure.value
      }
      if (aborted !== undefined) return new OrchestraError(aborted)
      if (Cause.hasInterruptsOnly(cause)) {
        return disposing !== undefined
          ? shuttingDown()
          : new OrchestraError(new AbortedError({ message: "the call was interrupted" }))
      }
      return Cause.squash(cause)
    }

    const cutBuild = () => shuttingDown("the orchestra was disposed before the manager was built: the call never ran")

    const backoffMillis = () =>
      Math.min(
        Duration.toMillis(rebuildAfter) * 2 ** (failures - 1),
        Math.max(maxRebuildAfterMillis, Duration.toMillis(rebuildAfter))
      )

    const servicesOf = (): Promise<Context.Context<Services>> => {
      if (services !== undefined) return Promise.resolve(services)
      if (building !== undefined) return building
      if (failed !== undefined) {
        if (failed.final || since(failed.at) < backoffMillis()) return Promise.reject(failed.error)
        runtime = ManagedRuntime.make(given)
      }
      const current = runtime
      // `dispose()` while a failed build's runtime was being released: this build never starts.
      const build = () =>
        disposing !== undefined ? Promise.reject(cutBuild()) : Effect.runPromiseExit(current.contextEffect)
      building = (releasing === undefined ? build() : releasing.then(build)).then((exit) => {
        if (Exit.isFailure(exit)) {
          // Cut by `dispose()`: the calls waiting for the build were made before it, not refused as new ones.
          if (disposing !== undefined && Cause.hasInterruptsOnly(exit.cause)) throw cutBuild()
          const error = rejectionOf(exit.cause, undefined)
          const failure = Cause.findErrorOption(exit.cause)
          const final = failure._tag === "Some" && failure.value instanceof Input.OptionError
          failed = { error, at: clock.currentTimeMillisUnsafe(), final }
          failures++
          building = undefined
          if (!final && disposing === undefined) {
            // Its release failing or hanging does not stop the next build for longer than dispose()'s own bound.
            releasing = within(Effect.runPromiseExit(current.disposeEffect), disposeTimeout).then(() => {
              releasing = undefined
            })
          }
          throw error
        }
        failed = undefined
        services = exit.value
        statsService = Context.get(services, Stats.Stats)
        return services
      })
      return building
    }

    /**
     * Starts a call's program on the built manager as a fiber of its own; `signal` (none for a batch)
     * interrupts it. Made once, not per call: the built manager's hot path allocates only the call's promise.
     */
    const start = <I, A>(
      context: Context.Context<Services>,
      program: (input: I, checked: Checked) => Effect.Effect<A, unknown, Services>,
      input: I,
      checked: Checked,
      signal: AbortSignal | undefined,
      batch: boolean,
      started: number
    ): Promise<A> =>
      new Promise<A>((resolve, reject) => {
        if (signal?.aborted) return reject(new OrchestraError(abortError(signal, since(started))))
        const cut: Cut = { error: undefined }
        let aborted: FacadeError | undefined
        const fiber = Effect.runForkWith(context)(Effect.provideService(program(input, checked), CurrentCut, cut))
        const onAbort = () => {
          const error = abortError(signal!, since(started))
          aborted = error
          // Set before the interruption, so the cut steps are counted as what the caller sees.
          if (error._tag !== "AbortedError") cut.error = error
          fiber.interruptUnsafe()
        }
        if (!batch) running.add(fiber)
        // The fiber ran up to its first wait already: code it ran (a provider's) may have aborted the signal.
        let listening: Disposable | undefined
        if (signal?.aborted) onAbort()
        else if (signal !== undefined) listening = addAbortListener(signal, onAbort)
        fiber.addObserver((exit) => {
          running.delete(fiber)
          listening?.[Symbol.dispose]()
          if (Exit.isSuccess(exit)) resolve(exit.value)
          else reject(rejectionOf(exit.cause, aborted))
        })
      })

    /**
     * Runs a call's program on the manager; its signal interrupts it unless it is a batch (which it
     * cancels). `read` reads the call's arguments now, at the call, for the program to run on.
     */
    const run = <I, A>(
      given: unknown,
      keys: ReadonlySet<string> | undefined,
      read: (checked: Checked) => Result.Result<I, ModelError>,
      program: (input: I, checked: Checked) => Effect.Effect<A, unknown, Services>,
      batch = false
    ): Promise<A> => {
      if (disposing !== undefined) return Promise.reject(shuttingDown())
      const options = keys === undefined ? Result.succeed(none) : checkOptions(given, keys)
      if (Result.isFailure(options)) return Promise.reject(new OrchestraError(options.failure))
      const checked = options.success
      const signal = batch ? undefined : checked.signal
      if (signal?.aborted) return Promise.reject(new OrchestraError(abortError(signal, 0)))
      let input: Result.Result<I, ModelError>
      try {
        input = read(checked)
      } catch (error) {
        // Every read of the caller's objects is guarded: what throws anyway is a defect, rejected as one.
        return Promise.reject(error)
      }
      if (Result.isFailure(input)) return Promise.reject(new OrchestraError(input.failure))
      const started = clock.currentTimeMillisUnsafe()
      // A built manager starts the call now: a `.then` would start it a microtask later, after a
      // `dispose()` made in the same tick, which would refuse a call made before it.
      if (services !== undefined) return start(services, program, input.success, checked, signal, batch, started)
      const value = input.success
      // Still building: admitted all the same. A `dispose()` meanwhile either cuts the build (the
      // call is rejected with it) or closes the executor, which admits and drains it or refuses it.
      // The build's wait counts in the call's timeout (a batch's: it is cancelled at once when none is left).
      // A batch has no result without a manager: one whose signal aborts or whose timeout passes
      // before the manager is built rejects as a call does, instead of waiting for the build for ever.
      return untilBuilt(servicesOf(), checked.signal, checked.timeout, started).then((built) => {
        // Only a stream's wait (given its `Closing`) ends without a manager.
        const context = built!
        const left = timeLeft(checked, since(started))
        if (left === checked) return start(context, program, value, left, signal, batch, started)
        if (left !== undefined) {
          return start(context, program, value, left, signal, batch, started).catch(
            asGiven(checked.timeout!, left.timeout!)
          )
        }
        if (batch) return start(context, program, value, { ...checked, timeout: Duration.zero }, signal, batch, started)
        return Promise.reject(new OrchestraError(new TimeoutError({ limit: "total", timeout: checked.timeout! })))
      })
    }

    const streamParts = async function* (prompt: Prompt, options: StreamOptions | undefined, closing: Closing) {
      if (disposing !== undefined) throw shuttingDown()
      const read = checkOptions(options, Keys.stream)
      if (Result.isFailure(read)) throw new OrchestraError(read.failure)
      const signal = read.success.signal
      if (signal?.aborted) throw new OrchestraError(abortError(signal, 0))
      // Read at the first `next()`, before the wait for a manager still being built.
      const request = requestOf(prompt, read.success.context)
      if (Result.isFailure(request)) throw new OrchestraError(request.failure)
      const started = clock.currentTimeMillisUnsafe()
      const context = services ?? (await untilBuilt(servicesOf(), signal, read.success.timeout, started, closing))
      // Closed while the manager was being built: the stream never starts, and `return()` does not wait for the build.
      if (context === undefined || closing.closed) return
      const left = timeLeft(read.success, since(started))
      if (left === undefined)
        throw new OrchestraError(new TimeoutError({ limit: "total", timeout: read.success.timeout! }))
      const shortened = left === read.success ? undefined : asGiven(read.success.timeout!, left.timeout!)
      const cut: Cut = { error: undefined }
      const parts = Calls.stream(request.success, left).pipe(
        Stream.provideService(CurrentCut, cut),
        Stream.mapError((error) => new OrchestraError(error))
      )
      const iterator = Stream.toAsyncIterableWith(parts, context)[Symbol.asyncIterator]()
      const close = () => iterator.return!()
      closing.close = close
      let delivered = ""
      let aborted: FacadeError | undefined
      // Closing the iterator interrupts the pull it is waiting for: the pull ends, and the loop rejects.
      const onAbort = () => {
        aborted = abortError(signal!, since(started), delivered)
        // Set before the interruption, so the cut steps are counted as what the caller sees.
        if (aborted._tag !== "AbortedError") cut.error = aborted
        close().catch(() => undefined)
      }
      // The signal is listened to only while a part is awaited, never between two: a loop left
      // without `return()` (or never resumed) keeps nothing on a signal that may outlive it.
      // After the Finish part nothing is left to cut: the last pull only ends the stream, and an
      // abort in between (a server's client leaving once the last chunk was written) is no failure.
      let finished = false
      const pull = async (): Promise<IteratorResult<StreamPart>> => {
        if (signal === undefined || finished) return iterator.next()
        let listening: Disposable | undefined
        if (signal.aborted) onAbort()
        else listening = addAbortListener(signal, onAbort)
        try {
          return await iterator.next()
        } catch (error) {
          if (aborted === undefined) throw error
          return { done: true, value: undefined }
        } finally {
          listening?.[Symbol.dispose]()
        }
      }
      try {
        for (;;) {
          const next = shortened === undefined ? await pull() : await pull().catch(shortened)
          if (aborted !== undefined) throw new OrchestraError(aborted)
          if (next.done) return
          // Only an abort's error carries the text: without a signal, none is kept (a long stream's whole answer).
          if (next.value._tag === "TextDelta") {
            if (signal !== undefined) delivered += next.value.text
          } else if (next.value._tag === "Finish") finished = true
          yield next.value
        }
      } finally {
        abandoned.unregister(closing)
        await close()
      }
    }

    const stream = (prompt: Prompt, options?: StreamOptions): PartStream => ({
      [Symbol.asyncIterator]() {
        const closing: Closing = { closed: false, close: undefined, wake: undefined }
        const parts = streamParts(prompt, options, closing)
        // Closing the upstream first ends a `next()` still waiting for a part (it answers done),
        // so that `return()` cancels the call now rather than after the provider's next chunk.
        const closeFirst = () => {
          abandoned.unregister(closing)
          closeStream(closing)
        }
        let waiting = 0
        const iterator: AsyncIterableIterator<StreamPart> & AsyncDisposable = {
          next: () => {
            if (waiting++ === 0) pulling.add(iterator)
            return parts.next().finally(() => {
              if (--waiting === 0) pulling.delete(iterator)
            })
          },
          return: (value?: unknown) => {
            closeFirst()
            return parts.return(value as undefined)
          },
          throw: (error?: unknown) => {
            closeFirst()
            return parts.throw(error)
          },
          [Symbol.asyncIterator]() {
            return this
          },
          // `await using parts = stream[Symbol.asyncIterator]()`: leaving the block is `return()`, as for
          // Node's own async generators.
          [Symbol.asyncDispose]: async () => {
            await iterator.return!()
          }
        }
        abandoned.register(iterator, closing, closing)
        return iterator
      }
    })

    // The metrics as `dispose()` left them (none when no manager was built): its layers take their
    // series out of the registry when they close, so the series there when it started are kept with
    // those still there after. Their counters are live: what the drained calls did is in them.
    let seriesAtDispose: Metric.MetricRegistry | undefined
    const finalMetrics = (): string => {
      if (services === undefined) return ""
      const registry = Context.get(services, Metric.MetricRegistry)
      const all: Metric.MetricRegistry = new Map(seriesAtDispose)
      for (const [key, hooks] of registry) all.set(key, hooks)
      return Prometheus.formatUnsafe(Context.add(services, Metric.MetricRegistry, all))
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
      if (disposing !== undefined) return disposing
      if (services !== undefined) seriesAtDispose = new Map(Context.get(services, Metric.MetricRegistry))
      const closed = Effect.runPromiseExit(runtime.disposeEffect)
      const released = releasing === undefined ? closed : Promise.all([closed, releasing]).then(([exit]) => exit)
      disposing = within(released, disposeTimeout).then((exit) => {
        const calls = running.size
        // Nothing should be left once the executor has drained; anything that is ends now.
        for (const fiber of running) fiber.interruptUnsafe()
        if (exit === timedOut) throw new OrchestraError(unfinished(calls))
        // The scope ran every finalizer whatever one of them did: only then is a failure told.
        if (Exit.isFailure(exit)) throw new OrchestraError(releaseFailure(exit.cause))
      })
      return disposing
    }

    return {
      execute: (prompt, options) => run(options, Keys.execute, (c) => requestOf(prompt, c.context), Calls.execute),
      executeWithFallback: (prompt, domains, options) =>
        run(
          options,
          Keys.fallback,
          (c) => withDomains(prompt, domains, c),
          ([r, d], c) => Calls.executeWithFallback(r, d, c)
        ),
      executeParallelDomains: ((prompt: Prompt, domains: ReadonlyArray<string>, options?: ParallelOptions) =>
        run(
          options,
          Keys.parallel,
          (c) => withDomains(prompt, domains, c),
          ([r, d], c) => Calls.executeParallelDomains(r, d, c)
        )) as Orchestra["executeParallelDomains"],
      hedge: (prompt, domains, options) =>
        run(
          options,
          Keys.hedge,
          (c) => withDomains(prompt, domains, c),
          ([r, d], c) => Calls.hedge(r, d, options !== undefined, c)
        ),
      // The signal and the timeout cancel the batch (its result names the items that never ran), not the
      // promise. Its items are read as the batch reaches them (a batch of 100k reads one at a time).
      batch: (items, options) => run(options, Keys.batch, () => Result.succeed(items), Calls.batch, true),
      stream,
      embed: (input, options) => run(options, Keys.embed, () => embedRequestOf(input), Calls.embed),
      stats: (filter) => {
        // The check `Stats.snapshot` makes; its fields as it read them (a getter is not read again).
        const checked = checkFilter(filter)
        if (Result.isFailure(checked)) throw new OrchestraError(checked.failure)
        if (statsService !== undefined) return statsService.snapshotUnsafe(checked.success)
        emptyStats ??= Effect.runSync(Effect.scoped(Effect.map(Stats.make, (s) => s.snapshotUnsafe())))
        return emptyStats
      },
      resetStats: () => {
        // As every call after `dispose()` is refused: the final figures `stats()` answers are kept.
        if (disposing !== undefined) {
          throw shuttingDown("the orchestra has been disposed: resetStats() is refused, the final figures are kept")
        }
        if (statsService !== undefined) Effect.runSync(statsService.reset)
      },
      metrics: () => {
        // After `dispose()` (or during it: once it is over) the final metrics, as `stats()` gives the final figures.
        if (disposing !== undefined) return disposing.then(finalMetrics, finalMetrics)
        return run(
          undefined,
          undefined,
          () => Result.succeed(undefined),
          () => Prometheus.text
        )
      },
      dispose,
      [Symbol.asyncDispose]: dispose
    }
  }

  return createOrchestra
}
