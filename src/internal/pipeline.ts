import type { Graph, Schedule } from "effect"
import { Cause, Clock, Duration, Effect, Exit, Fiber, Option, Queue, Ref } from "effect"
import type { Failure, StepOutcome, Strategy } from "../Pipeline.js"

/** @internal */
export type FallbackStep = (context: {
  readonly input: unknown
  readonly deps: Record<string, unknown>
  readonly failure: Failure<unknown>
}) => Effect.Effect<unknown, unknown, unknown>

/** @internal */
export interface StepDef {
  readonly name: string
  readonly deps: ReadonlyArray<string>
  readonly run: (context: {
    readonly input: unknown
    readonly deps: Record<string, unknown>
  }) => Effect.Effect<unknown, unknown, unknown>
  readonly timeout: Duration.Duration | undefined
  readonly retry: Schedule.Schedule<unknown, unknown, never> | undefined
  readonly fallback:
    | { readonly _tag: "Value"; readonly value: unknown }
    | { readonly _tag: "Step"; readonly run: FallbackStep }
    | undefined
  readonly description: string | undefined
}

/** @internal */
export interface Definition {
  readonly steps: ReadonlyArray<StepDef>
  /** Topological order. */
  readonly order: ReadonlyArray<StepDef>
  readonly graph: Graph.DirectedGraph<string, void>
  readonly index: ReadonlyMap<string, number>
}

/** @internal */
export interface Options {
  readonly mode: "parallel" | "sequential"
  readonly concurrency: number
  readonly onFailure: "failFast" | "continue"
  readonly fallbackToSequential: ((failure: Failure<unknown>) => boolean) | undefined
}

type Outcome = StepOutcome<unknown, unknown>

interface ResultData {
  readonly status: "succeeded" | "failed"
  readonly strategy: Strategy
  readonly steps: Record<string, Outcome>
  readonly outputs: Record<string, unknown>
  readonly started: ReadonlyArray<string>
  readonly failedSteps: ReadonlyArray<string>
  readonly startedAt: number
  readonly endedAt: number
  readonly wallMs: number
  readonly busyMs: number
  readonly parallelism: number
  readonly criticalPathMs: number
  readonly parallelAttempt?: Record<string, Outcome> | undefined
}

/** @internal */
export const describe = (outcome: Outcome): string => {
  switch (outcome.status) {
    case "succeeded":
      return outcome.fallback === undefined
        ? `${outcome.step}: succeeded`
        : `${outcome.step}: succeeded with the fallback ${outcome.fallback.kind} (${outcome.fallback.failure._tag === "TimedOut" ? `timed out after ${Duration.format(outcome.fallback.failure.timeout)}` : "failed"})`
    case "failed":
      return `${outcome.step}: failed (${outcome.message})`
    case "timedOut":
      return `${outcome.step}: timed out after ${Duration.format(outcome.timeout)}`
    case "interrupted":
    case "skipped":
      return `${outcome.step}: ${outcome.status} (${outcome.reason})`
  }
}

const messageOf = (cause: Cause.Cause<unknown>): string => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    if (typeof error === "object" && error !== null && "message" in error && typeof error.message === "string") {
      return error.message
    }
    return String(error)
  }
  return Cause.pretty(cause).split("\n")[0] ?? "defect"
}

const depsOf = (def: StepDef, outputs: ReadonlyMap<string, unknown>): Record<string, unknown> => {
  const deps: Record<string, unknown> = {}
  for (const dep of def.deps) deps[dep] = outputs.get(dep)
  return deps
}

const isFailure = (outcome: Outcome): boolean =>
  outcome.status === "failed" || outcome.status === "timedOut" || outcome.status === "interrupted"

/** Runs one step with its policies; never fails (an interruption of the caller still interrupts). */
const runStep = (
  def: StepDef,
  context: { readonly input: unknown; readonly deps: Record<string, unknown> },
  startedAt: number
): Effect.Effect<Outcome, never, unknown> =>
  Effect.gen(function* () {
    const attemptsRef = yield* Ref.make(0)
    const attempt = Effect.zipRight(
      Ref.update(attemptsRef, (n) => n + 1),
      Effect.suspend(() => def.run(context))
    )
    const retried = def.retry === undefined ? attempt : Effect.retry(attempt, def.retry)
    const exit = yield* Effect.exit(
      def.timeout === undefined ? Effect.asSome(retried) : Effect.timeoutOption(retried, def.timeout)
    )
    const attempts = yield* Ref.get(attemptsRef)
    const timing = Effect.map(Clock.currentTimeMillis, (endedAt) => ({
      startedAt,
      endedAt,
      durationMs: endedAt - startedAt
    }))

    if (Exit.isSuccess(exit) && Option.isSome(exit.value)) {
      return { status: "succeeded", step: def.name, output: exit.value.value, attempts, ...(yield* timing) } as Outcome
    }
    let failure: Failure<unknown>
    if (Exit.isSuccess(exit)) {
      failure = { _tag: "TimedOut", timeout: def.timeout ?? Duration.zero }
    } else {
      const error = Cause.failureOption(exit.cause)
      if (Option.isNone(error) || def.fallback === undefined) {
        return {
          status: "failed",
          step: def.name,
          error: Option.getOrUndefined(error),
          cause: exit.cause,
          message: messageOf(exit.cause),
          attempts,
          ...(yield* timing)
        } as Outcome
      }
      failure = { _tag: "Failed", error: error.value }
    }

    const fallback = def.fallback
    if (fallback === undefined) {
      const timeout = failure._tag === "TimedOut" ? failure.timeout : Duration.zero
      return { status: "timedOut", step: def.name, timeout, attempts, ...(yield* timing) } as Outcome
    }
    if (fallback._tag === "Value") {
      return {
        status: "succeeded",
        step: def.name,
        output: fallback.value,
        attempts,
        fallback: { kind: "value", failure },
        ...(yield* timing)
      } as Outcome
    }
    const fallbackExit = yield* Effect.exit(Effect.suspend(() => fallback.run({ ...context, failure })))
    if (Exit.isSuccess(fallbackExit)) {
      return {
        status: "succeeded",
        step: def.name,
        output: fallbackExit.value,
        attempts,
        fallback: { kind: "step", failure },
        ...(yield* timing)
      } as Outcome
    }
    return {
      status: "failed",
      step: def.name,
      error: Option.getOrUndefined(Cause.failureOption(fallbackExit.cause)),
      cause: fallbackExit.cause,
      message: `fallback failed: ${messageOf(fallbackExit.cause)}`,
      attempts,
      primary: failure,
      ...(yield* timing)
    } as Outcome
  }).pipe(Effect.withSpan("Pipeline.step", { attributes: { "pipeline.step": def.name } }))

const rootOf = (dependency: string, outcomes: ReadonlyMap<string, Outcome>): string => {
  const outcome = outcomes.get(dependency)
  return outcome?.status === "skipped" ? outcome.failedStep : dependency
}

interface Run {
  readonly outcomes: Map<string, Outcome>
  readonly started: Array<string>
}

/** Each step starts as soon as its last dependency succeeds; at most `concurrency` run at once. */
const runParallel = (definition: Definition, input: unknown, options: Options): Effect.Effect<Run, never, unknown> =>
  Effect.scoped(
    Effect.gen(function* () {
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
      // Ready steps wait as names, not as parked fibers: only `concurrency` fibers exist.
      const ready: Array<StepDef> = definition.order.filter((def) => def.deps.length === 0)
      const markReady = (def: StepDef) => {
        const rank = definition.index.get(def.name)!
        const at = ready.findIndex((r) => definition.index.get(r.name)! > rank)
        if (at === -1) ready.push(def)
        else ready.splice(at, 0, def)
      }
      const running = new Map<string, Fiber.RuntimeFiber<void>>()
      const startedAt = new Map<string, number>()
      const done = yield* Queue.unbounded<Outcome>()
      let stoppedBy: string | undefined

      const start = (def: StepDef) =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          started.push(def.name)
          startedAt.set(def.name, now)
          const fiber = yield* Effect.uninterruptibleMask((restore) =>
            Effect.flatMap(restore(runStep(def, { input, deps: depsOf(def, outputs) }, now)), (outcome) =>
              Queue.offer(done, outcome)
            )
          ).pipe(Effect.forkScoped)
          running.set(def.name, fiber as Fiber.RuntimeFiber<void>)
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
        const queue: Array<string> = [outcome.step]
        while (queue.length > 0) {
          const failed = queue.shift()!
          for (const next of dependents.get(failed) ?? []) {
            if (outcomes.has(next.name)) continue
            const failedStep = rootOf(failed, outcomes)
            outcomes.set(next.name, {
              status: "skipped",
              step: next.name,
              reason:
                failed === failedStep
                  ? `dependency "${failed}" ${outcomes.get(failed)!.status}`
                  : `dependency "${failed}" skipped (step "${failedStep}" did not succeed)`,
              dependency: failed,
              failedStep,
              at: now
            })
            queue.push(next.name)
          }
        }
      }

      while (true) {
        while (stoppedBy === undefined && ready.length > 0 && running.size < options.concurrency) {
          yield* start(ready.shift()!)
        }
        if (running.size === 0) break
        const outcome = yield* Queue.take(done)
        settle(outcome, yield* Clock.currentTimeMillis)
        if (stoppedBy !== undefined && running.size > 0) {
          yield* Fiber.interruptAll(Array.from(running.values()))
          // Steps that finished while we interrupted keep their real outcome.
          for (const finished of yield* Queue.takeAll(done)) settle(finished, yield* Clock.currentTimeMillis)
          const now = yield* Clock.currentTimeMillis
          for (const name of running.keys()) {
            const from = startedAt.get(name)!
            outcomes.set(name, {
              status: "interrupted",
              step: name,
              reason: `pipeline stopped: step "${stoppedBy}" ${outcomes.get(stoppedBy)!.status}`,
              failedStep: stoppedBy,
              startedAt: from,
              endedAt: now,
              durationMs: now - from
            })
          }
          running.clear()
        }
      }
      if (stoppedBy !== undefined) {
        const now = yield* Clock.currentTimeMillis
        for (const def of definition.order) {
          if (outcomes.has(def.name)) continue
          outcomes.set(def.name, {
            status: "skipped",
            step: def.name,
            reason: `pipeline stopped: step "${stoppedBy}" ${outcomes.get(stoppedBy)!.status}`,
            dependency: stoppedBy,
            failedStep: stoppedBy,
            at: now
          })
        }
      }
      return { outcomes, started }
    })
  )

/** Topological order, one step at a time; outcomes in `kept` are not run again. */
const runSequential = (
  definition: Definition,
  input: unknown,
  options: Options,
  kept: ReadonlyMap<string, Outcome>
): Effect.Effect<Run, never, unknown> =>
  Effect.gen(function* () {
    const outcomes = new Map(kept)
    const outputs = new Map<string, unknown>()
    for (const [name, outcome] of kept) if (outcome.status === "succeeded") outputs.set(name, outcome.output)
    const started: Array<string> = []
    let stoppedBy: string | undefined
    for (const def of definition.order) {
      if (outcomes.has(def.name)) continue
      const now = yield* Clock.currentTimeMillis
      if (stoppedBy !== undefined) {
        outcomes.set(def.name, {
          status: "skipped",
          step: def.name,
          reason: `pipeline stopped: step "${stoppedBy}" ${outcomes.get(stoppedBy)!.status}`,
          dependency: stoppedBy,
          failedStep: stoppedBy,
          at: now
        })
        continue
      }
      const blocked = def.deps.find((dep) => outcomes.get(dep)?.status !== "succeeded")
      if (blocked !== undefined) {
        const failedStep = rootOf(blocked, outcomes)
        outcomes.set(def.name, {
          status: "skipped",
          step: def.name,
          reason:
            blocked === failedStep
              ? `dependency "${blocked}" ${outcomes.get(blocked)!.status}`
              : `dependency "${blocked}" skipped (step "${failedStep}" did not succeed)`,
          dependency: blocked,
          failedStep,
          at: now
        })
        continue
      }
      started.push(def.name)
      const outcome = yield* runStep(def, { input, deps: depsOf(def, outputs) }, now)
      outcomes.set(def.name, outcome)
      if (outcome.status === "succeeded") outputs.set(def.name, outcome.output)
      else if (options.onFailure === "failFast") stoppedBy = def.name
    }
    return { outcomes, started }
  })

const failureOf = (outcome: Outcome): Failure<unknown> | undefined => {
  if (outcome.status === "timedOut") return { _tag: "TimedOut", timeout: outcome.timeout }
  if (outcome.status === "failed" && outcome.error !== undefined) {
    return outcome.primary ?? { _tag: "Failed", error: outcome.error }
  }
  return undefined
}

/** @internal */
export const execute = (
  definition: Definition,
  input: unknown,
  options: Options
): Effect.Effect<ResultData, never, unknown> =>
  Effect.gen(function* () {
    const startedAt = yield* Clock.currentTimeMillis
    let strategy: Strategy = options.mode
    let run: Run
    let parallelAttempt: Map<string, Outcome> | undefined
    // Parallel outcomes the sequential pass ran again: their time counts too.
    const replaced = new Map<string, Outcome>()
    if (options.mode === "sequential") {
      run = yield* runSequential(definition, input, options, new Map())
    } else {
      run = yield* runParallel(definition, input, options)
      const retryable = options.fallbackToSequential
      if (
        retryable !== undefined &&
        Array.from(run.outcomes.values()).some((o) => {
          const failure = failureOf(o)
          return failure !== undefined && retryable(failure)
        })
      ) {
        parallelAttempt = run.outcomes
        const kept = new Map(Array.from(run.outcomes).filter(([, o]) => o.status === "succeeded"))
        for (const [name, outcome] of run.outcomes) if (!kept.has(name)) replaced.set(name, outcome)
        const again = yield* runSequential(definition, input, options, kept)
        run = { outcomes: again.outcomes, started: [...run.started, ...again.started] }
        strategy = "parallelThenSequential"
      }
    }
    const endedAt = yield* Clock.currentTimeMillis
    const result = summarize(definition, run, startedAt, endedAt, strategy, parallelAttempt, replaced)
    yield* Effect.annotateCurrentSpan({
      "pipeline.status": result.status,
      "pipeline.strategy": result.strategy,
      "pipeline.parallelism": result.parallelism
    })
    return result
  }).pipe(
    Effect.withSpan("Pipeline.run", {
      attributes: { "pipeline.steps": definition.steps.length, "pipeline.mode": options.mode }
    })
  )

const durationOf = (outcome: Outcome | undefined): number =>
  outcome === undefined || outcome.status === "skipped" ? 0 : outcome.durationMs

const summarize = (
  definition: Definition,
  run: Run,
  startedAt: number,
  endedAt: number,
  strategy: Strategy,
  parallelAttempt: Map<string, Outcome> | undefined,
  replaced: ReadonlyMap<string, Outcome>
): ResultData => {
  const steps: Record<string, Outcome> = {}
  const outputs: Record<string, unknown> = {}
  const failedSteps: Array<string> = []
  const finish = new Map<string, number>()
  let busyMs = 0
  let criticalPathMs = 0
  let complete = true
  for (const def of definition.order) {
    const outcome = run.outcomes.get(def.name)
    if (outcome === undefined) {
      complete = false
      continue
    }
    steps[def.name] = outcome
    if (outcome.status === "succeeded") outputs[def.name] = outcome.output
    if (isFailure(outcome)) failedSteps.push(def.name)
    // A step kept from the parallel attempt ran once: count it once.
    const own = durationOf(outcome) + durationOf(replaced.get(def.name))
    busyMs += own
    const chain = own + Math.max(0, ...def.deps.map((dep) => finish.get(dep) ?? 0))
    finish.set(def.name, chain)
    criticalPathMs = Math.max(criticalPathMs, chain)
  }
  const wallMs = endedAt - startedAt
  return {
    status: complete && Object.values(steps).every((o) => o.status === "succeeded") ? "succeeded" : "failed",
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
    parallelAttempt: parallelAttempt === undefined ? undefined : Object.fromEntries(parallelAttempt)
  }
}
