/**
 * Runs a pipeline's steps: in parallel (each step as soon as its own dependencies
 * succeeded, at most `concurrency` at once), in topological order one at a time, or in
 * parallel and then the failures again one at a time; and sums up the run.
 *
 * @internal
 */
import { type Cause, Clock, Duration, Effect, Exit, Fiber, Queue } from "effect"
import * as Input from "../Input.js"
import type { Result, StepOutcome, Strategy } from "../Pipeline.js"
import { isThenable } from "../policy/callback.js"
import {
  type Context,
  type Definition,
  depsOf,
  type Failure,
  type RunSettings,
  record,
  type StepDef
} from "./definition.js"
import { monotonicMillis } from "../stats/clock.js"
import { briefOf, messageOf, type Runner } from "./step.js"

type Outcome = StepOutcome<unknown, unknown>

/**
 * One line saying how a step ended.
 *
 * @internal
 */
export const describe = (outcome: Outcome): string => {
  switch (outcome.status) {
    case "succeeded":
      return outcome.fallback === undefined
        ? `${outcome.step}: succeeded`
        : `${outcome.step}: succeeded with the fallback ${outcome.fallback.kind} (${outcome.fallback.failure._tag === "TimedOut" ? `timed out after ${Duration.format(outcome.fallback.failure.timeout)}` : `failed: ${briefOf(outcome.fallback.failure.error)}`})`
    case "failed":
      return `${outcome.step}: failed (${outcome.message})`
    case "timedOut":
      return `${outcome.step}: timed out after ${Duration.format(outcome.timeout)}`
    case "interrupted":
    case "skipped":
      return `${outcome.step}: ${outcome.status} (${outcome.reason})`
  }
}

const isFailure = (outcome: Outcome): boolean =>
  outcome.status === "failed" || outcome.status === "timedOut" || outcome.status === "interrupted"

const rootOf = (dependency: string, outcomes: ReadonlyMap<string, Outcome>): string => {
  const outcome = outcomes.get(dependency)
  return outcome?.status === "skipped" ? outcome.failedStep : dependency
}

const skipped = (step: string, blocked: string, outcomes: ReadonlyMap<string, Outcome>, at: number): Outcome => {
  const failedStep = rootOf(blocked, outcomes)
  return {
    status: "skipped",
    step,
    reason:
      blocked === failedStep
        ? `dependency ${Input.shown(blocked)} ${outcomes.get(blocked)!.status}`
        : `dependency ${Input.shown(blocked)} skipped (step ${Input.shown(failedStep)} did not succeed)`,
    dependency: blocked,
    failedStep,
    at
  }
}

const stopped = (step: string, stoppedBy: string, outcomes: ReadonlyMap<string, Outcome>, at: number): Outcome => ({
  status: "skipped",
  step,
  reason: `pipeline stopped: step ${Input.shown(stoppedBy)} ${outcomes.get(stoppedBy)!.status}`,
  dependency: stoppedBy,
  failedStep: stoppedBy,
  at
})

/**
 * The outcome of a step whose fiber ended without giving one. The runner turns every failure into an
 * outcome, but Effect's run loop ends a fiber at once, skipping every handler on its stack, when it is
 * handed something that is not an Effect (a step's `flatMap` returning `42`): only the fiber's exit
 * says so. A step that interrupted its own fiber ends here too.
 */
const lost = (
  def: StepDef,
  cause: Cause.Cause<unknown>,
  startedAt: number,
  since: number,
  clock: Clock.Clock
): Outcome => ({
  status: "failed",
  step: def.name,
  cause,
  message: messageOf(cause),
  attempts: 1,
  startedAt,
  endedAt: clock.currentTimeMillisUnsafe(),
  durationMs: monotonicMillis(clock) - since
})

/** A step on a fiber of its own, so that a fiber its effect ends (see {@link lost}) is not the run's. */
const isolated = (
  runStep: Runner,
  def: StepDef,
  context: Context,
  startedAt: number,
  since: number
): Effect.Effect<Outcome> =>
  Effect.flatMap(Effect.forkChild(runStep(def, context, startedAt, since), { startImmediately: true }), (fiber) =>
    // Interrupted, the run waits for the step to stop, as a parallel run does.
    Effect.flatMap(
      Effect.onInterrupt(Fiber.await(fiber), () => Fiber.interrupt(fiber)),
      (exit) =>
        Exit.isSuccess(exit)
          ? Effect.succeed(exit.value)
          : Effect.clockWith((clock) => Effect.succeed(lost(def, exit.cause, startedAt, since, clock)))
    )
  )

interface Run {
  readonly outcomes: Map<string, Outcome>
  readonly started: Array<string>
}

/** Each step starts as soon as its last dependency succeeds; at most `concurrency` run at once. */
const runParallel = Effect.fnUntraced(function* (
  definition: Definition,
  input: unknown,
  options: RunSettings,
  runStep: Runner
) {
  const outcomes = new Map<string, Outcome>()
  const outputs = new Map<string, unknown>()
  const started: Array<string> = []
  const dependents = new Map<string, Array<StepDef>>()
  const waiting = new Map<string, number>()
  for (const def of definition.order) {
    waiting.set(def.name, def.deps.length)
    for (const dep of def.deps) {
      const list = dependents.get(dep)
      if (list === undefined) dependents.set(dep, [def])
      else list.push(def)
    }
  }
  // Ready steps wait as ranks (their place in the definition), not as parked fibers: only
  // `concurrency` fibers exist. A binary heap, least rank first, so that steps start in definition
  // order, and adding one or taking the next costs O(log n) whatever order they became ready in:
  // a sorted array took the next with `shift()` and placed one out of order with `splice()`, each
  // O(n), which made 200,000 independent steps (a batch's tasks) take 45 s, the event loop blocked.
  const ready: Array<number> = []
  const markReady = (def: StepDef) => {
    const rank = definition.index.get(def.name)!
    let i = ready.push(rank) - 1
    while (i > 0) {
      const parent = (i - 1) >>> 1
      if (ready[parent]! <= rank) break
      ready[i] = ready[parent]!
      i = parent
    }
    ready[i] = rank
  }
  const takeReady = (): StepDef => {
    const first = ready[0]!
    const last = ready.pop()!
    const size = ready.length
    if (size > 0) {
      let i = 0
      while (true) {
        let child = 2 * i + 1
        if (child >= size) break
        if (child + 1 < size && ready[child + 1]! < ready[child]!) child++
        if (ready[child]! >= last) break
        ready[i] = ready[child]!
        i = child
      }
      ready[i] = last
    }
    return definition.steps[first]!
  }
  // In rank order already: a sorted array is a heap.
  for (let rank = 0; rank < definition.steps.length; rank++) {
    if (definition.steps[rank]!.deps.length === 0) ready.push(rank)
  }
  const running = new Map<string, Fiber.Fiber<void>>()
  const startedAt = new Map<string, number>()
  // Each running step's start on the monotonic clock, which its duration is read on.
  const startedSince = new Map<string, number>()
  const done = yield* Queue.unbounded<Outcome>()
  const clock = yield* Clock.Clock
  let stoppedBy: string | undefined
  // Set while a fail-fast run interrupts its running steps: those interruptions are ours, not outcomes.
  let stopping = false

  // Arrows, not a generator made at each run (see `execute`).
  const start = (def: StepDef) =>
    Effect.suspend(() => {
      const now = clock.currentTimeMillisUnsafe()
      const since = monotonicMillis(clock)
      started.push(def.name)
      startedAt.set(def.name, now)
      startedSince.set(def.name, since)
      return Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(restore(runStep(def, { input, deps: depsOf(def, outputs) }, now, since)), (outcome) =>
          Queue.offer(done, outcome)
        )
      ).pipe(
        Effect.forkScoped({ startImmediately: true }),
        Effect.flatMap((fiber) =>
          Effect.sync(() => {
            running.set(def.name, fiber as Fiber.Fiber<void>)
            // A fiber that ended without offering its outcome (see `lost`): its exit is the outcome.
            fiber.addObserver((exit) => {
              if (!stopping && Exit.isFailure(exit)) {
                Queue.offerUnsafe(done, lost(def, exit.cause, now, since, clock))
              }
            })
          })
        )
      )
    })

  const settle = (outcome: Outcome, now: number) => {
    outcomes.set(outcome.step, outcome)
    running.delete(outcome.step)
    if (outcome.status === "succeeded") {
      outputs.set(outcome.step, outcome.output)
      if (stoppedBy !== undefined) return
      for (const next of dependents.get(outcome.step) ?? []) {
        const left = waiting.get(next.name)! - 1
        waiting.set(next.name, left)
        if (left === 0 && !outcomes.has(next.name)) markReady(next)
      }
      return
    }
    if (options.onFailure === "failFast") {
      stoppedBy ??= outcome.step
      return
    }
    // Walked with an index: `shift()` is O(n), which made the walk over n dependents quadratic.
    const queue: Array<string> = [outcome.step]
    for (let head = 0; head < queue.length; head++) {
      const failed = queue[head]!
      for (const next of dependents.get(failed) ?? []) {
        if (outcomes.has(next.name)) continue
        outcomes.set(next.name, skipped(next.name, failed, outcomes, now))
        queue.push(next.name)
      }
    }
  }

  while (true) {
    while (stoppedBy === undefined && ready.length > 0 && running.size < options.concurrency) {
      yield* start(takeReady())
    }
    if (running.size === 0) break
    const outcome = yield* Queue.take(done)
    settle(outcome, yield* Clock.currentTimeMillis)
    if (stoppedBy !== undefined && running.size > 0) {
      stopping = true
      yield* Fiber.interruptAll(Array.from(running.values()))
      // Steps that finished while we interrupted keep their real outcome.
      for (const finished of yield* Queue.clear(done)) settle(finished, yield* Clock.currentTimeMillis)
      const now = clock.currentTimeMillisUnsafe()
      const until = monotonicMillis(clock)
      for (const name of running.keys()) {
        const durationMs = until - startedSince.get(name)!
        outcomes.set(name, {
          status: "interrupted",
          step: name,
          reason: `pipeline stopped: step ${Input.shown(stoppedBy)} ${outcomes.get(stoppedBy)!.status}`,
          failedStep: stoppedBy,
          startedAt: startedAt.get(name)!,
          endedAt: now,
          durationMs
        })
      }
      running.clear()
    }
  }
  if (stoppedBy !== undefined) {
    const now = yield* Clock.currentTimeMillis
    for (const def of definition.order) {
      if (!outcomes.has(def.name)) outcomes.set(def.name, stopped(def.name, stoppedBy, outcomes, now))
    }
  }
  return { outcomes, started } satisfies Run
}, Effect.scoped)

/** Topological order, one step at a time; outcomes in `kept` are not run again. */
const runSequential = Effect.fnUntraced(function* (
  definition: Definition,
  input: unknown,
  options: RunSettings,
  kept: ReadonlyMap<string, Outcome>,
  runStep: Runner
) {
  const outcomes = new Map(kept)
  const outputs = new Map<string, unknown>()
  for (const [name, outcome] of kept) if (outcome.status === "succeeded") outputs.set(name, outcome.output)
  const started: Array<string> = []
  const clock = yield* Clock.Clock
  let stoppedBy: string | undefined
  for (const def of definition.order) {
    if (outcomes.has(def.name)) continue
    const now = clock.currentTimeMillisUnsafe()
    if (stoppedBy !== undefined) {
      outcomes.set(def.name, stopped(def.name, stoppedBy, outcomes, now))
      continue
    }
    const blocked = def.deps.find((dep) => outcomes.get(dep)?.status !== "succeeded")
    if (blocked !== undefined) {
      outcomes.set(def.name, skipped(def.name, blocked, outcomes, now))
      continue
    }
    started.push(def.name)
    const outcome = yield* isolated(runStep, def, { input, deps: depsOf(def, outputs) }, now, monotonicMillis(clock))
    outcomes.set(def.name, outcome)
    if (outcome.status === "succeeded") outputs.set(def.name, outcome.output)
    else if (options.onFailure === "failFast") stoppedBy = def.name
  }
  return { outcomes, started } satisfies Run
})

const failureOf = (outcome: Outcome): Failure | undefined => {
  if (outcome.status === "timedOut") return { _tag: "TimedOut", timeout: outcome.timeout }
  if (outcome.status === "failed" && outcome.error !== undefined) {
    return outcome.primary ?? { _tag: "Failed", error: outcome.error }
  }
  return undefined
}

const durationOf = (outcome: Outcome | undefined): number =>
  outcome === undefined || outcome.status === "skipped" ? 0 : outcome.durationMs

const summarize = (
  definition: Definition,
  run: Run,
  startedAt: number,
  endedAt: number,
  wallMs: number,
  strategy: Strategy,
  parallelAttempt: ReadonlyMap<string, Outcome> | undefined,
  replaced: ReadonlyMap<string, Outcome>
): Result<Record<string, unknown>, unknown> => {
  const steps = record<Outcome>()
  const outputs = record<unknown>()
  const failedSteps: Array<string> = []
  const finish = new Map<string, number>()
  let busyMs = 0
  let criticalPathMs = 0
  let succeeded = true
  for (const def of definition.order) {
    const outcome = run.outcomes.get(def.name)
    if (outcome === undefined) {
      succeeded = false
      continue
    }
    steps[def.name] = outcome
    if (outcome.status === "succeeded") outputs[def.name] = outcome.output
    else succeeded = false
    if (isFailure(outcome)) failedSteps.push(def.name)
    // A step kept from the parallel attempt ran once: count it once.
    const own = durationOf(outcome) + durationOf(replaced.get(def.name))
    busyMs += own
    // A loop, not `Math.max(...deps)`: a step with ~130,000 dependencies overflowed the stack.
    let longest = 0
    for (const dep of def.deps) longest = Math.max(longest, finish.get(dep) ?? 0)
    const chain = own + longest
    finish.set(def.name, chain)
    criticalPathMs = Math.max(criticalPathMs, chain)
  }
  let attempt: Record<string, Outcome> | undefined
  if (parallelAttempt !== undefined) {
    attempt = record<Outcome>()
    for (const [name, outcome] of parallelAttempt) attempt[name] = outcome
  }
  return {
    status: succeeded ? "succeeded" : "failed",
    strategy,
    steps,
    outputs,
    started: run.started,
    failedSteps,
    startedAt,
    endedAt,
    wallMs,
    busyMs,
    parallelism: wallMs === 0 ? 0 : busyMs / wallMs,
    criticalPathMs,
    parallelAttempt: attempt
  }
}

/**
 * Runs a validated pipeline with checked options; never fails.
 *
 * The generators of a run are made once, here and in the steps (`step.ts`): a generator
 * function made at each run gets a V8 map of its own, in the old generation, which keeps
 * everything the function reaches (the run's objects) through young collections until a
 * full one.
 *
 * @internal
 */
export const execute = Effect.fnUntraced(
  function* (definition: Definition, input: unknown, options: RunSettings, runStep: Runner) {
    const clock = yield* Clock.Clock
    const startedAt = clock.currentTimeMillisUnsafe()
    const since = monotonicMillis(clock)
    let strategy: Strategy = options.mode
    let run: Run
    let parallelAttempt: Map<string, Outcome> | undefined
    // Parallel outcomes the sequential pass ran again: their time counts too.
    const replaced = new Map<string, Outcome>()
    if (options.mode === "sequential") {
      run = yield* runSequential(definition, input, options, new Map(), runStep)
    } else {
      run = yield* runParallel(definition, input, options, runStep)
      const retryable = options.fallbackToSequential
      // The predicate is the user's: one that throws (reading `failure.error` of a timeout) says
      // no for that failure, with a warning, rather than losing the run's every outcome. So does one
      // that answers no boolean: an async predicate's Promise is truthy, whatever it resolves to, and
      // would run every failed step again (its rejection is handled: left alone, it is an unhandled one).
      let wrong: { readonly why: string; readonly error?: unknown } | undefined
      const again =
        retryable !== undefined &&
        Array.from(run.outcomes.values()).some((o) => {
          const failure = failureOf(o)
          if (failure === undefined) return false
          let answer: unknown
          try {
            answer = retryable(failure)
          } catch (error) {
            wrong ??= { why: "threw", error }
            return false
          }
          if (typeof answer === "boolean") return answer
          if (isThenable(answer)) answer.then(undefined, () => undefined)
          wrong ??= { why: `answered ${isThenable(answer) ? "a Promise" : Input.kindOf(answer)}, not a boolean` }
          return false
        })
      if (wrong !== undefined) {
        const message = `the fallbackToSequential predicate ${wrong.why}; it counts as false`
        yield* "error" in wrong ? Effect.logWarning(message, wrong.error) : Effect.logWarning(message)
      }
      if (again) {
        parallelAttempt = run.outcomes
        const kept = new Map(Array.from(run.outcomes).filter(([, o]) => o.status === "succeeded"))
        for (const [name, outcome] of run.outcomes) if (!kept.has(name)) replaced.set(name, outcome)
        const second = yield* runSequential(definition, input, options, kept, runStep)
        run = { outcomes: second.outcomes, started: [...run.started, ...second.started] }
        strategy = "parallelThenSequential"
      }
    }
    const endedAt = clock.currentTimeMillisUnsafe()
    const wallMs = monotonicMillis(clock) - since
    const result = summarize(definition, run, startedAt, endedAt, wallMs, strategy, parallelAttempt, replaced)
    yield* Effect.annotateCurrentSpan({
      "pipeline.status": result.status,
      "pipeline.strategy": result.strategy,
      "pipeline.parallelism": result.parallelism
    })
    return result
  },
  (effect, definition: Definition, _input: unknown, options: RunSettings) =>
    Effect.withSpan(effect, "Pipeline.run", {
      attributes: { "pipeline.steps": definition.steps.length, "pipeline.mode": options.mode }
    })
)
