/**
 * The fused path of a call: the engine's most common plan (one step, no total deadline,
 * cache, hedge, rate limit, provider slot or span; the memory breaker's consecutive policy
 * or none) run as plain JavaScript around one fiber per attempt, instead of a dozen
 * combinators on the caller's fiber around a second one.
 *
 * It does what `engine.ts` does for the same plan, in the same order: admission by the
 * breaker, the attempt on its own fiber under its deadline lane, the attempt's outcome
 * (`settle`), the breaker's record, the retry driver (from the second attempt on, the
 * engine's own Effect code takes over), the step's metrics, one outcome. A call can be
 * awaited from a fiber (`runValueIn`) or started from JavaScript (`start`, for the bounded
 * pools of `executeMany`): a pool of 10,000 calls in flight then holds 10,000 fibers, not
 * 20,000. Measured in `bench/overhead.ts` (docs/benchmarks/overhead.md).
 *
 * @internal
 */
import { Cause, type Clock, Effect, Exit, type Fiber } from "effect"
import { type AiError, reasonOf } from "../AiError.js"
import type { Series } from "../stats/series.js"
import * as Deadline from "./deadline.js"

/**
 * A call admitted by a breaker's fast lane.
 *
 * @internal
 */
export interface FastTicket {
  readonly entry: unknown
  readonly storeKey: string
}

/**
 * A breaker's fast lane (a closed circuit with no failure streak, in this process only):
 * `enter` admits a call or answers `undefined` (take the full path); `leave` records its
 * outcome (`undefined`: interrupted, ignored) and may return an effect to run before the
 * call answers (a failure taken to the store).
 *
 * @internal
 */
export interface FastBreaker {
  readonly clock: Clock.Clock
  readonly enter: (key: string, now: number) => FastTicket | undefined
  readonly leave: (
    ticket: FastTicket,
    exit: Exit.Exit<unknown, unknown> | undefined,
    now: number
  ) => Effect.Effect<void> | undefined
}

/**
 * The fast lanes of the breakers that have one, by service.
 *
 * @internal
 */
export const fastBreakers = new WeakMap<object, FastBreaker>()

/**
 * Where a started call reports its outcome: once, unless it was cancelled first.
 *
 * @internal
 */
export interface Sink {
  readonly done: (index: number, exit: Exit.Exit<unknown, AiError>) => void
}

/**
 * A call started from JavaScript: `cancel` interrupts it (its metrics say so) and returns a
 * fiber still ending, if any.
 *
 * @internal
 */
export interface Running {
  readonly cancel: () => Fiber.Fiber<unknown, unknown> | undefined
}

/**
 * What a fused call needs of its engine.
 *
 * @internal
 */
export interface Env {
  readonly clock: Clock.Clock
  readonly lanes: Deadline.Lanes
  /** An attempt's exit, or the ending that cut it, as the attempt's outcome (a timeout counted). */
  readonly settle: (call: Fused, result: Exit.Exit<unknown, AiError> | Deadline.Ending) => Exit.Exit<unknown, AiError>
  /**
   * The rest of the step after its first attempt failed: the retry driver from the second
   * attempt, with the step's metrics at its end; `undefined` when it does not retry.
   */
  readonly rest: (call: Fused, error: AiError) => Effect.Effect<unknown, AiError> | undefined
  /** Records the step's outcome (`undefined`: interrupted). */
  readonly ended: (call: Fused, exit: Exit.Exit<unknown, AiError> | undefined, now: number) => void
  readonly leave: () => void
  readonly leaveEffect: Effect.Effect<void>
}

const ATTEMPT = 0
const REST = 1
const DONE = 2

/**
 * One call on the fused path; it is its own lane node, counter and handle.
 *
 * @internal
 */
export class Fused extends Deadline.Tracked implements Running {
  attempts = 1
  readonly traced = false
  phase = ATTEMPT
  ticket: FastTicket | undefined = undefined
  fiber: Fiber.Fiber<unknown, unknown> | undefined = undefined
  resume: ((effect: Effect.Effect<unknown, AiError>) => void) | undefined = undefined
  sink: Sink | undefined = undefined
  index = 0
  /** An outcome that came before its caller waited for it (the caller's fiber yielded between). */
  early: Effect.Effect<unknown, AiError> | undefined = undefined

  constructor(
    readonly env: Env,
    readonly parent: Fiber.Fiber<unknown, unknown>,
    readonly step: {
      readonly name: string
      readonly target: unknown
      readonly timeout: import("effect").Duration.Duration | undefined
    },
    readonly call: (target: unknown, step: never) => Effect.Effect<unknown, AiError>,
    readonly series: Series,
    readonly started: number,
    readonly fast: FastBreaker | undefined,
    /** Where the caller says why it cut the call (`CurrentCut`). */
    readonly external: { readonly error: AiError | undefined } | undefined
  ) {
    super()
  }

  /** Why the call was cut, read when it is interrupted (no total deadline on this path). */
  cut(): string | undefined {
    const error = this.external?.error
    return error === undefined ? undefined : reasonOf(error)
  }

  /**
   * Starts the first attempt. Answers the outcome when it is known at once (an exit, the
   * call over; or an effect, the rest of the call, which ends it), or `undefined` while the
   * attempt runs.
   */
  begin(): Effect.Effect<unknown, AiError> | undefined {
    const step = this.step
    for (const g of this.series.gauges) g.enter()
    let call: Effect.Effect<unknown, AiError>
    try {
      call = this.call(step.target, step as never)
    } catch (defect) {
      // A provider that throws instead of returning an Effect: that attempt's defect, as on the full path.
      call = Effect.die(defect)
    }
    const fiber = Effect.runForkWith(this.parent.context)(call)
    this.fiber = fiber
    const done = fiber.pollUnsafe()
    if (done !== undefined) return this.ended(done, this.served())
    // The attempt started with the call: its deadline counts from then (one clock read fewer).
    this.env.lanes.link(this, step.timeout, this.started)
    fiber.addObserver((exit) => this.observe(exit))
    return undefined
  }

  // The provider's call ended (its time of service); answers the time.
  private served(): number {
    const now = this.env.clock.currentTimeMillisUnsafe()
    for (const g of this.series.gauges) g.exit()
    this.series.service.record(now - this.started)
    return now
  }

  private observe(exit: Exit.Exit<unknown, unknown>): void {
    // The provider's slot in the gauges is held until its fiber really ends, even past a deadline.
    const now = this.served()
    if (this.phase !== ATTEMPT || this.ending !== undefined) return
    this.env.lanes.unlink(this)
    this.deliver(this.ended(exit as Exit.Exit<unknown, AiError>, now))
  }

  expire(ending: Deadline.Ending): void {
    this.fiber!.interruptUnsafe()
    if (this.phase !== ATTEMPT) return
    this.deliver(this.ended(ending, this.env.clock.currentTimeMillisUnsafe()))
  }

  // The attempt is over: its outcome, the breaker's record, then a retry or the step's end.
  private ended(result: Exit.Exit<unknown, AiError> | Deadline.Ending, now: number): Effect.Effect<unknown, AiError> {
    const env = this.env
    const exit = env.settle(this, result)
    const late =
      this.ticket === undefined
        ? undefined
        : this.fast!.leave(
            this.ticket,
            exit,
            this.fast!.clock === env.clock ? now : this.fast!.clock.currentTimeMillisUnsafe()
          )
    this.ticket = undefined
    if (Exit.isFailure(exit)) {
      const error = Cause.findErrorOption(exit.cause)
      const rest = error._tag === "Some" ? env.rest(this, error.value) : undefined
      if (rest !== undefined) {
        this.phase = REST
        return Effect.ensuring(late === undefined ? rest : Effect.andThen(late, rest), env.leaveEffect)
      }
    }
    this.phase = DONE
    env.ended(this, exit, now)
    if (late === undefined) {
      env.leave()
      return exit
    }
    this.phase = REST
    return Effect.ensuring(Effect.andThen(late, exit), env.leaveEffect)
  }

  private deliver(outcome: Effect.Effect<unknown, AiError>): void {
    const resume = this.resume
    if (resume !== undefined) {
      this.resume = undefined
      resume(outcome)
      return
    }
    if (this.sink !== undefined) this.report(outcome)
    else this.early = outcome
  }

  /** Awaited from a fiber: waits for the outcome, cancelling the call if the caller is interrupted. */
  wait(): Effect.Effect<unknown, AiError> {
    return Effect.callback<unknown, AiError>((resume) => {
      const early = this.early
      if (early !== undefined) {
        this.early = undefined
        return resume(early)
      }
      this.resume = resume
      return Effect.sync(() => {
        this.cancel()
      })
    })
  }

  /** Started from JavaScript: reports `outcome` to the sink, forking what is left to run. */
  report(outcome: Effect.Effect<unknown, AiError>): boolean {
    if (Exit.isExit(outcome)) {
      this.sink!.done(this.index, outcome as Exit.Exit<unknown, AiError>)
      return true
    }
    const fiber = Effect.runForkWith(this.parent.context)(outcome)
    this.fiber = fiber
    const done = fiber.pollUnsafe()
    if (done !== undefined) {
      this.phase = DONE
      this.sink!.done(this.index, done as Exit.Exit<unknown, AiError>)
      return true
    }
    fiber.addObserver((exit) => {
      if (this.phase !== REST) return
      this.phase = DONE
      this.sink!.done(this.index, exit as Exit.Exit<unknown, AiError>)
    })
    return false
  }

  /** Interrupts the call: its attempt (recorded as interrupted) or the rest of it. */
  cancel(): Fiber.Fiber<unknown, unknown> | undefined {
    if (this.phase === REST) {
      // Only a call started from JavaScript gets here: its rest runs on a fiber of its own.
      this.phase = DONE
      this.fiber!.interruptUnsafe()
      return this.fiber
    }
    if (this.phase !== ATTEMPT) return undefined
    this.phase = DONE
    this.resume = undefined
    const env = this.env
    env.lanes.unlink(this)
    this.fiber!.interruptUnsafe()
    const now = env.clock.currentTimeMillisUnsafe()
    if (this.ticket !== undefined) {
      this.fast!.leave(
        this.ticket,
        undefined,
        this.fast!.clock === env.clock ? now : this.fast!.clock.currentTimeMillisUnsafe()
      )
      this.ticket = undefined
    }
    env.ended(this, undefined, now)
    env.leave()
    return undefined
  }
}
