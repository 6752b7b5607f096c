/**
 * The handler of `orchestra bench`: the same prompts one at a time and `--concurrency`
 * at once, and a table comparing the two. A warm-up call per domain runs first and is
 * not counted (a model's first call loads it); then sequential and concurrent runs
 * alternate round by round (seq, conc, conc, seq, ...) so that a machine getting busier
 * or quieter weighs on both alike, and each side's wall time is the median of its rounds.
 *
 * @since 0.2.0
 */
import { Console, Effect, Option } from "effect"
import type { BatchResult, Item, ItemResult } from "../../Batch.js"
import { percent, successRate } from "../../stats/figures.js"
import { type Args, maxRounds } from "../Bench.js"
import {
  type Common,
  errorJson,
  errorText,
  ExitCode,
  exitCodes,
  failWith,
  fallbackOf,
  formatMs,
  printError,
  printJson,
  positiveIntOf,
  printText,
  stdoutClosed
} from "../Common.js"
import {
  checkDomains,
  checkSplitFlags,
  library,
  maxItemsOf,
  prepare,
  progressBar,
  provideOrchestra
} from "../Manager.js"
import * as Prompts from "../Prompts.js"
import { domainNames } from "../Setup.js"
import { Latencies, type Summary } from "./latencies.js"

/**
 * The figures of one side (sequential or concurrent) over every round.
 *
 * @since 0.2.0
 * @category models
 */
export interface Side {
  /** Median wall time of the rounds. */
  readonly elapsedMs: number
  /** Wall time of each round, in the order they ran. */
  readonly rounds: ReadonlyArray<number>
  readonly successes: number
  readonly failures: number
  /**
   * Percent of every item of every round, to 2 decimals as `Stats`' own, but never 100 while an
   * item failed nor 0 while one succeeded.
   */
  readonly successRate: number
  /**
   * Item latencies over every round, from each item's own duration: exact up to
   * `maxExactLatencies` durations a side, then p50 and p95 within 1% (`exact: false`).
   */
  readonly latency: Summary
}

const round2 = (n: number): number => Math.round(n * 100) / 100

/**
 * The q-quantile of sorted values, interpolated between the closest ranks.
 *
 * @since 0.2.0
 * @category utils
 */
export const quantile = (sorted: ArrayLike<number>, q: number): number => {
  if (sorted.length === 0) return 0
  const at = (sorted.length - 1) * q
  const low = Math.floor(at)
  const high = Math.min(low + 1, sorted.length - 1)
  return sorted[low]! + (sorted[high]! - sorted[low]!) * (at - low)
}

/**
 * What the report needs of one run, taken from its result as the run ends so that the result
 * (every item's answer) is not kept for the rounds after it: its wall time, its items' durations
 * and how many succeeded.
 *
 * @since 0.3.0
 * @category models
 */
export interface RunFigures {
  readonly elapsedMs: number
  readonly durations: Float64Array
  readonly successes: number
}

/**
 * @since 0.3.0
 * @category utils
 */
export const figuresOf = (result: BatchResult): RunFigures => {
  const durations = new Float64Array(result.results.length)
  let successes = 0
  result.results.forEach((r, i) => {
    durations[i] = r.durationMs
    if (r.status === "success") successes++
  })
  return { elapsedMs: result.elapsedMs, durations, successes }
}

/**
 * The figures of one side as its rounds end: their wall times and success counts, and their
 * durations folded into its {@link Latencies} (bounded), never kept run by run.
 *
 * @since 0.3.0
 * @category models
 */
export class SideFigures {
  readonly walls: Array<number> = []
  successes = 0
  readonly latencies: Latencies

  constructor(maxExact?: number) {
    this.latencies = new Latencies(maxExact)
  }

  add(run: RunFigures): void {
    this.walls.push(run.elapsedMs)
    this.successes += run.successes
    this.latencies.addAll(run.durations)
  }

  summary(): Side {
    const count = this.latencies.count
    return {
      elapsedMs: round2(
        quantile(
          [...this.walls].sort((a, b) => a - b),
          0.5
        )
      ),
      rounds: this.walls.map(round2),
      successes: this.successes,
      failures: count - this.successes,
      successRate: successRate(this.successes, count),
      latency: this.latencies.summary(round2)
    }
  }
}

/**
 * @since 0.2.0
 * @category utils
 */
export const summarise = (runs: ReadonlyArray<RunFigures>, maxExact?: number): Side => {
  const side = new SideFigures(maxExact)
  for (const run of runs) side.add(run)
  return side.summary()
}

interface Failure {
  readonly run: "sequential" | "concurrent"
  readonly round: number
  /** Numbered from 1, as the prompts are everywhere else. */
  readonly item: number
  readonly prompt: string
  readonly status: string
  readonly error?: Record<string, unknown> | undefined
  readonly text: string
}

const failureOf = (run: Failure["run"], round: number, r: ItemResult, prompts: ReadonlyArray<string>): Failure => ({
  run,
  round,
  item: r.index + 1,
  prompt: prompts[r.index] ?? "",
  status: r.status,
  ...(r.error === undefined ? {} : { error: errorJson(r.error) }),
  text: r.error === undefined ? r.status : errorText(r.error)
})

/** How many failed items the text report names; it counts the rest. */
const shownFailures = 20

/**
 * The table `bench` prints.
 *
 * @since 0.1.0
 * @category output
 */
export const formatTable = (title: string, sequential: Side, concurrent: Side, speedup: number, ideal: string) => {
  const header = ["run", "wall time", "p50 latency", "p95 latency", "success"]
  const row = (name: string, s: Side) => [
    name,
    formatMs(s.elapsedMs),
    formatMs(s.latency.p50),
    formatMs(s.latency.p95),
    `${percent(s.successRate)} %`
  ]
  const rows = [header, row("sequential", sequential), row("concurrent", concurrent)]
  const widths = header.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)))
  const render = (r: ReadonlyArray<string>) =>
    r.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join("   ")
  const line = "─".repeat(widths.reduce((a, b) => a + b, 0) + 3 * (widths.length - 1))
  return [
    title,
    line,
    ...rows.map(render),
    line,
    `${"speedup".padEnd(widths[0]!)}   ${speedup.toFixed(2)}×  (${ideal})`
  ].join("\n")
}

/**
 * The side that runs first in each round alternates (seq, conc, conc, seq, ...), so that a
 * machine growing busier or quieter during the benchmark weighs on both sides alike.
 *
 * @since 0.2.0
 * @category utils
 */
export const roundOrder = (round: number): ReadonlyArray<"sequential" | "concurrent"> =>
  round % 2 === 1 ? ["sequential", "concurrent"] : ["concurrent", "sequential"]

/**
 * One item per domain the prompts run on (or the default provider), for the warm-up. A prompt
 * without a `domain:` prefix runs on `--domain`'s, so it is keyed as one naming that domain.
 */
const warmUpItems = (items: ReadonlyArray<Item>, domain: string | undefined): ReadonlyArray<Item> => {
  const seen = new Set<string>()
  return items.filter((item) => {
    const key = (typeof item === "object" ? item.domain : undefined) ?? domain ?? ""
    if (seen.has(key)) return false
    seen.add(key)
    return true
  })
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`

/**
 * @since 0.2.0
 * @category handlers
 */
export const run = Effect.fnUntraced(function* (args: Args) {
  const common: Common = { json: args.json, config: args.config }
  const { concurrency, maxTokens } = yield* Prompts.checkRunFlags(common, args)
  const rounds = Option.isNone(args.rounds) ? 3 : yield* positiveIntOf(common, "--rounds", args.rounds.value, maxRounds)
  const fallback = yield* fallbackOf(common, args.fallback)
  yield* Prompts.checkSource(common, args.prompts, args.file, true)
  const checked = yield* prepare(common)
  const prompts = yield* Prompts.read(common, args.prompts, args.file, true, maxItemsOf(checked))
  const domain = Option.getOrUndefined(args.domain)
  yield* checkSplitFlags(common, checked, args)
  yield* checkDomains(common, checked, [...Option.toArray(args.domain), ...fallback])
  const items = yield* Prompts.toItems(common, prompts, domainNames(checked.loaded), maxTokens)
  const cache = checked.loaded.config.policies?.cache
  if (cache !== undefined && cache !== false) {
    yield* Console.error("orchestra: note: policies.cache is on, so repeated prompts are answered from the cache")
  }

  const services = yield* library
  const program = Effect.gen(function* () {
    const batch = yield* services.Batch
    const options = { domain, fallback }
    const warmUp = yield* batch.run(warmUpItems(items, domain), { ...options, concurrency: 1 })
    // Folded as each run ends: a run's result holds every answer, and 1,000,000 prompts kept for six runs took gigabytes.
    // A round's runs join their sides once both ended, so that an interrupted report has whole rounds only.
    const sequential = new SideFigures()
    const concurrent = new SideFigures()
    let pending: RunFigures | undefined
    let done = 0
    // Every failure under --json, whose document lists them; else the first few, which the text names (a million
    // prompts failing in three rounds were six million objects for 20 lines), and a count for each round.
    const failures: Array<Failure> = []
    const failedIn: Array<number> = Array.from({ length: rounds }, () => 0)
    const fold = (run: Failure["run"], round: number, result: BatchResult): void => {
      const figures = figuresOf(result)
      if (pending === undefined) {
        pending = figures
      } else {
        const [seq, conc] = run === "sequential" ? [figures, pending] : [pending, figures]
        pending = undefined
        sequential.add(seq)
        concurrent.add(conc)
        done++
      }
      for (const r of result.results) {
        if (r.status === "success") continue
        failedIn[round - 1]!++
        if (common.json || failures.length < shownFailures) failures.push(failureOf(run, round, r, prompts))
      }
    }
    // The result is folded in a callback, never held by the loop below: a generator's frame keeps a local it
    // no longer reads (V8 does not clear it), so a run's answers stayed alive through the whole next run.
    const runOnce = (run: Failure["run"], round: number, label: string) =>
      Effect.gen(function* () {
        const bar = yield* progressBar(label, items.length)
        // Interrupted (Ctrl-C) too: what comes next starts on a line of its own.
        yield* batch
          .run(items, { ...options, concurrency: run === "sequential" ? 1 : concurrency, onEvent: bar.onEvent })
          .pipe(
            Effect.ensuring(bar.end),
            Effect.map((result) => fold(run, round, result))
          )
      })
    let round = 1
    const runRounds = Effect.gen(function* () {
      for (; round <= rounds; round++) {
        const suffix = rounds === 1 ? "" : ` ${round}/${rounds}`
        for (const run of roundOrder(round)) yield* runOnce(run, round, `${run}${suffix}`)
      }
    })
    const failureText = (f: Failure) => `${rounds === 1 ? f.run : `${f.run} round ${f.round}`} #${f.item}: ${f.text}`
    // The figures of the `done` rounds that ended; `interrupted`, they are all there is (Ctrl-C, SIGTERM).
    const report = (interrupted: boolean) =>
      Effect.gen(function* () {
        const seq = sequential.summary()
        const conc = concurrent.summary()
        // Failures are kept in the order of their rounds: the first ones of the first `done` rounds are among them.
        const counted = failures.filter((f) => f.round <= done)
        const failed = failedIn.slice(0, done).reduce((a, b) => a + b, 0)
        const speedup = conc.elapsedMs === 0 ? 0 : seq.elapsedMs / conc.elapsedMs
        const waves = Math.ceil(items.length / Math.min(concurrency, items.length))
        const idealSpeedup = items.length / waves
        const warmUpFailures = warmUp.results.filter((r) => r.status !== "success").length
        const ok = failed === 0 && !interrupted
        if (common.json) {
          yield* printJson(common, {
            ok,
            prompts: items.length,
            concurrency,
            rounds,
            ...(interrupted ? { roundsDone: done } : {}),
            domain: domain ?? null,
            maxTokens: maxTokens ?? null,
            warmUp: { calls: warmUp.results.length, elapsedMs: round2(warmUp.elapsedMs), failures: warmUpFailures },
            sequential: seq,
            concurrent: conc,
            speedup: round2(speedup),
            idealSpeedup: round2(idealSpeedup),
            failures: counted.map(({ text: _, ...rest }) => rest),
            ...(interrupted ? { error: { message: "interrupted", kind: "interrupted" } } : {})
          })
        } else {
          const roundsText = interrupted
            ? `${done} of ${plural(rounds, "round")} (interrupted)`
            : plural(rounds, "round")
          const title = `Benchmark: ${plural(items.length, "prompt")}, concurrency ${concurrency}, ${roundsText}${
            domain === undefined ? "" : `, domain ${domain}`
          }`
          const ideal = `ideal ${idealSpeedup.toFixed(2)}× with equal latencies: ${plural(items.length, "call")} in ${plural(waves, "wave")}`
          const warm = `warm-up: ${plural(warmUp.results.length, "call")} in ${formatMs(warmUp.elapsedMs)}, not counted${
            warmUpFailures > 0 ? ` (${warmUpFailures} failed)` : ""
          }`
          const shown = counted.slice(0, shownFailures).map((f) => `  ${failureText(f)}`)
          yield* printText(
            [
              formatTable(title, seq, conc, speedup, ideal),
              warm,
              ...(failed === 0
                ? []
                : [
                    "",
                    `${plural(failed, "failed item")}:`,
                    ...shown,
                    ...(failed > shown.length ? [`  ... and ${failed - shown.length} more`] : [])
                  ])
            ].join("\n")
          )
        }
        if (failed > 0) {
          // Said on stderr too, with --json or without, as every failure is: stdout holds the data.
          const total = items.length * done * 2
          yield* printError(
            `orchestra: ${failed} of ${plural(total, "item")} failed; the first: ${failureText(counted[0]!)}`
          )
        }
        return ok
      })
    // Interrupted, the rounds that finished are still measured: said, not thrown away. A reader gone hears nothing.
    const interrupted = Effect.gen(function* () {
      if (yield* stdoutClosed) return
      const where = `interrupted in round ${Math.min(round, rounds)} of ${rounds}`
      if (done === 0) return yield* printError(`orchestra: ${where}, before any round finished: nothing to compare`)
      yield* report(true)
      yield* printError(
        `orchestra: ${where}; the figures are those of ${done === 1 ? "round 1" : `rounds 1 to ${done}`}`
      )
    })
    yield* runRounds.pipe(Effect.onInterrupt(() => interrupted))
    if (!(yield* report(false))) return yield* new ExitCode({ code: exitCodes.failed })
  })
  yield* program.pipe(
    // A batch fails as a whole only on options the checks above already passed; should one slip through, it is usage.
    Effect.catchTag("ModelError", (error) => failWith(common, exitCodes.usage, error.message, { kind: "usage" })),
    provideOrchestra(common, checked, { maxConcurrent: concurrency })
  )
})
