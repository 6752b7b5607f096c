/**
 * A facade call as a Promise: its options checked and its arguments read at the call, its
 * program (`calls.ts`) run on the built manager as a fiber of its own, its `signal` turned into
 * that fiber's interruption and its typed error, and its `timeout` counting the wait for a
 * manager still being built.
 *
 * @internal
 */
// Node's own way to listen to a caller's signal: another listener's `stopImmediatePropagation()` cannot
// silence it (an addEventListener listener it would, leaving the call running).
import { addAbortListener } from "node:events"
import { type Clock, type Context, Duration, Effect, Exit, Result } from "effect"
import { type ModelError, TimeoutError } from "../AiError.js"
import type { FacadeError } from "../Facade.js"
import * as Input from "../Input.js"
import type { Services } from "../Orchestra.js"
import { CurrentCut, type Cut } from "../policy/plan.js"
import { type Checked, check, none } from "./input.js"
import type { Rejections } from "./rejection.js"
import { elapsedMillis, type Manager, monotonicMillis } from "./runtime.js"
import type { Closing } from "./stream.js"

/**
 * `promise` (a manager still being built), or the abort's error if the signal aborts first, or
 * the call's total `TimeoutError` once its `timeout` has passed: waiting for the build is part
 * of the call. A stream's wait also ends, with `undefined`, when its iterator is closed. `clock` is
 * the manager's; `started`, its monotonic milliseconds when the call was made.
 *
 * @internal
 */
export const untilBuilt = <A>(
  rejections: Rejections,
  clock: Clock.Clock,
  promise: Promise<A>,
  signal: AbortSignal | undefined,
  timeout: Duration.Duration | undefined,
  started: number,
  closing?: Closing
): Promise<A | undefined> =>
  signal === undefined && timeout === undefined && closing === undefined
    ? promise
    : new Promise<A | undefined>((resolve, reject) => {
        const { OrchestraError, abortError } = rejections
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
          reject(new OrchestraError(abortError(signal!, elapsedMillis(clock, started))))
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

/**
 * The call's options once the manager is built: what is left of its `timeout` (`undefined`: nothing).
 *
 * @internal
 */
export const timeLeft = (checked: Checked, elapsedMillis: number): Checked | undefined => {
  if (checked.timeout === undefined || elapsedMillis <= 0) return checked
  const left = Duration.toMillis(checked.timeout) - elapsedMillis
  return left > 0 ? { ...checked, timeout: Duration.millis(left) } : undefined
}

/**
 * A call's options checked; whatever the check itself throws (it should throw nothing: every
 * read of the caller's objects is guarded) is the options' InvalidRequest, a rejection, never
 * an exception out of a call that returns a Promise.
 *
 * @internal
 */
export const checkOptions = (options: unknown, keys: ReadonlySet<string>): Result.Result<Checked, ModelError> => {
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

/**
 * Runs a call's program on the manager; its signal interrupts it unless it is a batch (which it
 * cancels). `read` reads the call's arguments now, at the call, for the program to run on.
 *
 * @internal
 */
export type Run = <I, A>(
  given: unknown,
  keys: ReadonlySet<string> | undefined,
  read: (checked: Checked) => Result.Result<I, ModelError>,
  program: (input: I, checked: Checked) => Effect.Effect<A, unknown, Services>,
  batch?: boolean
) => Promise<A>

/**
 * The calls of one manager: made once per `createOrchestra`, not per call.
 *
 * @internal
 */
export const makeRun = (rejections: Rejections, manager: Manager): Run => {
  const { OrchestraError, abortError, asError, asGiven, rejectionOf, shuttingDown } = rejections
  const { clock, running } = manager
  const since = (started: number) => elapsedMillis(clock, started)

  /**
   * Starts a call's program on the built manager as a fiber of its own; `signal` (none for a batch)
   * interrupts it. Made once, not per call: the built manager's hot path allocates only the call's promise.
   * `started` is read only for a call that can need it (one with a signal, or waiting for the build).
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
        else reject(rejectionOf(exit.cause, aborted, manager.disposing !== undefined))
      })
    })

  return <I, A>(
    given: unknown,
    keys: ReadonlySet<string> | undefined,
    read: (checked: Checked) => Result.Result<I, ModelError>,
    program: (input: I, checked: Checked) => Effect.Effect<A, unknown, Services>,
    batch = false
  ): Promise<A> => {
    if (manager.disposing !== undefined) return Promise.reject(shuttingDown())
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
      return Promise.reject(asError(error))
    }
    if (Result.isFailure(input)) return Promise.reject(new OrchestraError(input.failure))
    // A built manager starts the call now: a `.then` would start it a microtask later, after a
    // `dispose()` made in the same tick, which would refuse a call made before it.
    const services = manager.services
    if (services !== undefined) {
      const started = signal === undefined ? 0 : monotonicMillis(clock)
      return start(services, program, input.success, checked, signal, batch, started)
    }
    const started = monotonicMillis(clock)
    const value = input.success
    // Still building: admitted all the same. A `dispose()` meanwhile either cuts the build (the
    // call is rejected with it) or closes the executor, which admits and drains it or refuses it.
    // The build's wait counts in the call's timeout (a batch's: it is cancelled at once when none is left).
    // A batch has no result without a manager: one whose signal aborts or whose timeout passes
    // before the manager is built rejects as a call does, instead of waiting for the build for ever.
    return untilBuilt(rejections, clock, manager.servicesOf(), checked.signal, checked.timeout, started).then(
      (built) => {
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
      }
    )
  }
}
