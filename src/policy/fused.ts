/**
 * The fused path of a call: the engine's most common plan (one step, no total deadline,
 * cache, hedge, rate limit, provider slot or span; the memory breaker's consecutive policy
 * or none) run as plain JavaScript around one fiber per attempt, instead of a dozen
 * combinators on the caller's fiber around a second one.
 *
 * It does what `engine.ts` does for the same plan, in the same order: admission by the
 * breaker, the attempt on its own fiber under its deadline lane, the attempt's outcome
 * (`settle`), the breaker's record, the retry driver (from the second attempt on, the
 * engine's own Effect code in `step.ts` takes over), the step's metrics, one outcome. A call can be
 * awaited from a fiber (`runValueIn`, `run`: it starts inside an `Effect.callback`'s
 * registration, with its cancellation) or started from JavaScript (`start`, for the bounded
 * pools of `executeMany`): a pool of 10,000 calls in flight then holds 10,000 fibers, not
 * 20,000. Measured in `bench/overhead.ts` (docs/benchmarks/overhead.md).
 *
 * What is left of a call after its first attempt (a retry, or a failure taken to the
 * breaker's store) runs on a fiber of its own whose end is observed here, never on the
 * caller's: the in-flight count and the step's record are then kept from JavaScript, and
 * no interruption of the caller, wherever it falls, can skip them.
 *
 * @internal
 */
import { Cause, type Clock, Effect, Exit, Fiber } from "effect"
import { type AiError, reasonOf } from "../AiError.js"
import type { Series } from "../stats/series.js"
import { notAnEffect } from "./callback.js"
import * as Deadline from "./deadline.js"
import type { Cut, Plan, Step } from "./plan.js"

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
  /** `now` is the caller's reading of `clock`; a breaker on another clock reads its own. */
  readonly enter: (key: string, clock: Clock.Clock, now: number) => FastTicket | undefined
  readonly leave: (
    ticket: FastTicket,
    exit: Exit.Exit<unknown, unknown> | undefined,
    clock: Clock.Clock,
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
   * attempt (the step's outcome is recorded when it ends, from JavaScript); `undefined` when
   * it does not retry.
   */
  readonly rest: (call: Fused, error: AiError) => Effect.Effect<unknown, AiError> | undefined
  /** Records the step's outcome (`undefined`: interrupted). */
  readonly ended: (call: Fused, exit: Exit.Exit<unknown, AiError> | undefined, now: number) => void
  readonly leave: () => void
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
  steps = 1
  readonly traced = false
  phase = ATTEMPT
  ticket: FastTicket | undefined = undefined
  fiber: Fiber.Fiber<unknown, unknown> | undefined = undefined
  resume: ((exit: Exit.Exit<unknown, AiError>) => void) | undefined = undefined
  sink: Sink | undefined = undefined
  index = 0

  constructor(
    readonly env: Env,
    readonly parent: Fiber.Fiber<unknown, unknown>,
    /** A plan of one step (`Engine` checks it). */
    readonly plan: Plan<unknown, unknown>,
    readonly call: (target: unknown, step: Step<unknown>) => Effect.Effect<unknown, AiError>,
    readonly series: Series,
    readonly started: number,
    readonly fast: FastBreaker | undefined,
    /** Where the caller says why it cut the call (`CurrentCut`). */
    readonly external: Cut | undefined
  ) {
    super()
    this.step = plan.steps[0]
  }

  readonly step: Step<unknown>

  /** Why the call was cut, read when it is interrupted (no total deadline on this path). */
  cut(): string | undefined {
    const error = this.external?.error
    return error === undefined ? undefined : reasonOf(error)
  }

  /**
   * Starts the first attempt. Answers the call's exit when it ends at once, or `undefined`
   * while it runs (its attempt, or the rest of it on a fiber of its own); then its exit goes
   * to `resume` or to the sink.
   */
  begin(): Exit.Exit<unknown, AiError> | undefined {
    const step = this.step
    for (const g of this.series.gauges) g.enter()
    let call: Effect.Effect<unknown, AiError>
    try {
      call = this.call(step.target, step)
    } catch (defect) {
      // A provider that throws instead of returning an Effect: that attempt's defect, as on the full path.
      call = Effect.die(defect)
    }
    // As on the full path (`step.ts`): its typed error, not "Not a valid effect" from the run loop.
    if (!Effect.isEffect(call)) call = notAnEffect("the provider call", call)
    const fiber = Effect.runForkWith(this.parent.context)(call)
    this.fiber = fiber
    const done = fiber.pollUnsafe()
    if (done !== undefined) return this.ended(done as Exit.Exit<unknown, AiError>, this.served(done))
    // The attempt started with the call: its deadline counts from then (one clock read fewer).
    this.env.lanes.link(this, step.timeout, this.started)
    fiber.addObserver((exit) => this.observe(exit))
    // Linked after the lanes closed: cut as shutdown now, as `expire` would have.
    if (this.ending !== undefined) {
      fiber.interruptUnsafe()
      return this.ended(this.ending, this.env.clock.currentTimeMillisUnsafe())
    }
    return undefined
  }

  // The provider's call ended (its time of service, unless its caller's race cut it); answers the time.
  private served(exit: Exit.Exit<unknown, unknown>): number {
    const now = this.env.clock.currentTimeMillisUnsafe()
    for (const g of this.series.gauges) g.exit()
    if (exit._tag === "Success" || this.external?.lost !== true) this.series.service.record(now - this.started)
    return now
  }

  private observe(exit: Exit.Exit<unknown, unknown>): void {
    // The provider's slot in the gauges is held until its fiber really ends, even past a deadline.
    const now = this.served(exit)
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
  // Answers the call's exit, or undefined while the rest of it runs on its own fiber.
  private ended(
    result: Exit.Exit<unknown, AiError> | Deadline.Ending,
    now: number
  ): Exit.Exit<unknown, AiError> | undefined {
    const env = this.env
    const exit = env.settle(this, result)
    const recorded = this.ticket === undefined ? undefined : this.fast!.leave(this.ticket, exit, env.clock, now)
    this.ticket = undefined
    // The breaker's record is never cut short, as on the full path (it runs in an `onExit`).
    const late = recorded === undefined ? undefined : Effect.uninterruptible(recorded)
    if (Exit.isFailure(exit)) {
      const error = Cause.findErrorOption(exit.cause)
      const rest = error._tag === "Some" ? env.rest(this, error.value) : undefined
      if (rest !== undefined) return this.runRest(late === undefined ? rest : Effect.andThen(late, rest), true)
    }
    env.ended(this, exit, now)
    if (late === undefined) {
      this.phase = DONE
      env.leave()
      return exit
    }
    return this.runRest(Effect.andThen(late, exit), false)
  }

  // The rest of the call (a retry, or the breaker's record taken to its store) runs on a fiber
  // of its own, whatever awaits the call: its end is observed from here, so the call leaves
  // the in-flight count exactly once even if its caller is interrupted at any point.
  // `record`: the step's outcome is recorded from the rest's exit (a retry: its last
  // attempt, or Interrupted when cancelled), else it was recorded already.
  private runRest(rest: Effect.Effect<unknown, AiError>, record: boolean): Exit.Exit<unknown, AiError> | undefined {
    this.phase = REST
    const fiber = Effect.runForkWith(this.parent.context)(rest)
    this.fiber = fiber
    const done = fiber.pollUnsafe()
    if (done !== undefined) {
      this.phase = DONE
      this.restEnded(done as Exit.Exit<unknown, AiError>, record)
      return done as Exit.Exit<unknown, AiError>
    }
    fiber.addObserver((exit) => {
      this.restEnded(exit as Exit.Exit<unknown, AiError>, record)
      if (this.phase !== REST) return
      this.phase = DONE
      this.deliver(exit as Exit.Exit<unknown, AiError>)
    })
    return undefined
  }

  private restEnded(exit: Exit.Exit<unknown, AiError>, record: boolean): void {
    if (record) this.env.ended(this, exit, this.env.clock.currentTimeMillisUnsafe())
    this.env.leave()
  }

  private deliver(exit: Exit.Exit<unknown, AiError> | undefined): void {
    if (exit === undefined) return
    const resume = this.resume
    if (resume !== undefined) {
      this.resume = undefined
      resume(exit)
    } else {
      this.sink?.done(this.index, exit)
    }
  }

  /**
   * Awaited from a fiber, inside an `Effect.callback`'s registration (so that the call starts
   * and its cancellation is in place with no interruption possible between the two): starts
   * the call and answers at once if it ends at once; otherwise `resume` is called when it
   * ends, and the returned cleanup (for an interrupted caller) cancels it and waits for what
   * is still ending.
   */
  register(resume: (exit: Exit.Exit<unknown, AiError>) => void): Effect.Effect<void> | undefined {
    const exit = this.begin()
    if (exit !== undefined) {
      resume(exit)
      return undefined
    }
    this.resume = resume
    return Effect.suspend(() => {
      const ending = this.cancel()
      return ending === undefined ? Effect.void : Effect.asVoid(Fiber.await(ending))
    })
  }

  /**
   * Interrupts the call: its attempt (recorded as interrupted), or the rest of it (whose
   * fiber records and leaves as it ends; answered so that the canceller can wait for it).
   */
  cancel(): Fiber.Fiber<unknown, unknown> | undefined {
    if (this.phase === REST) {
      this.phase = DONE
      this.resume = undefined
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
      this.fast!.leave(this.ticket, undefined, env.clock, now)
      this.ticket = undefined
    }
    env.ended(this, undefined, now)
    env.leave()
    return undefined
  }
}
