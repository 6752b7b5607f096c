/**
 * `orchestra bench --prompts "a,b,c" | --file prompts.txt [--concurrency 5]`: the same
 * prompts sequentially, then concurrently, and a table comparing the two.
 *
 * @since 0.1.0
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as FileSystem from "@effect/platform/FileSystem"
import { Console, Effect, Option } from "effect"
import { Batch, type BatchResult, type Item } from "../Batch.js"
import {
  type Common,
  checkDomains,
  config,
  errorJson,
  errorText,
  ExitCode,
  exitCodes,
  failWith,
  formatMs,
  json,
  loadConfig,
  parseQuery,
  progressBar,
  provideOrchestra,
  splitList
} from "./Common.js"
import { domainNames } from "./Setup.js"

/**
 * The prompt sources of `bench` and `stats`.
 *
 * @since 0.1.0
 * @category options
 */
export const promptOptions = {
  prompts: Options.text("prompts").pipe(
    Options.withDescription("Comma-separated prompts; `domain: prompt` picks a domain per prompt"),
    Options.optional
  ),
  file: Options.text("file").pipe(
    Options.withAlias("f"),
    Options.withDescription("A file with one prompt per line (blank lines and lines starting with # are skipped)"),
    Options.optional
  ),
  domain: Options.text("domain").pipe(
    Options.withAlias("d"),
    Options.withDescription("Domain of prompts that name none (default: the default provider)"),
    Options.optional
  ),
  fallback: Options.text("fallback").pipe(
    Options.withDescription("Comma-separated domains tried in order after a prompt's own domain"),
    Options.optional
  ),
  concurrency: Options.integer("concurrency").pipe(
    Options.withAlias("c"),
    Options.withDescription("Calls at once in the concurrent run"),
    Options.withDefault(5)
  )
}

/**
 * Reads the prompts from `--prompts` or `--file` (exactly one of them).
 *
 * @since 0.1.0
 * @category utils
 */
export const readPrompts = (
  common: Common,
  prompts: Option.Option<string>,
  file: Option.Option<string>,
  required: boolean
): Effect.Effect<ReadonlyArray<string>, ExitCode, FileSystem.FileSystem> =>
  Effect.gen(function* () {
    if (Option.isSome(prompts) && Option.isSome(file)) {
      return yield* failWith(common, exitCodes.usage, "give either --prompts or --file, not both", { kind: "usage" })
    }
    if (Option.isSome(prompts)) return splitList(prompts.value)
    if (Option.isNone(file)) {
      return required
        ? yield* failWith(common, exitCodes.usage, 'give the prompts with --prompts "a,b,c" or --file prompts.txt', {
            kind: "usage"
          })
        : []
    }
    const fs = yield* FileSystem.FileSystem
    const text = yield* fs
      .readFileString(file.value)
      .pipe(
        Effect.catchAll((error) =>
          failWith(common, exitCodes.usage, `cannot read ${file.value}: ${error.message}`, { kind: "usage" })
        )
      )
    return text
      .split(/\r?\n/)
      .map((line) => line.trim())
      .filter((line) => line.length > 0 && !line.startsWith("#"))
  })

/**
 * Prompts as batch items, with their `domain:` prefixes resolved.
 *
 * @since 0.1.0
 * @category utils
 */
export const toItems = (prompts: ReadonlyArray<string>, domains: ReadonlyArray<string>): ReadonlyArray<Item> =>
  prompts.map((prompt) => {
    const { domain, query } = parseQuery(prompt, domains)
    return domain === undefined ? { query } : { query, domain }
  })

interface RunSummary {
  readonly elapsedMs: number
  readonly successes: number
  readonly failures: number
  readonly successRate: number
  readonly latency: { readonly p50: number; readonly p95: number; readonly avg: number; readonly max: number }
}

const summary = (result: BatchResult): RunSummary => {
  const successes = result.results.filter((r) => r.status === "success").length
  const failures = result.results.length - successes
  return {
    elapsedMs: result.elapsedMs,
    successes,
    failures,
    successRate: result.results.length === 0 ? 0 : Math.round((successes / result.results.length) * 1000) / 10,
    latency: {
      p50: result.stats.latency.p50,
      p95: result.stats.latency.p95,
      avg: result.stats.latency.avg,
      max: result.stats.latency.max
    }
  }
}

const failuresOf = (run: string, result: BatchResult, prompts: ReadonlyArray<string>) =>
  result.results
    .filter((r) => r.status !== "success")
    .map((r) => ({
      run,
      index: r.index,
      prompt: prompts[r.index],
      status: r.status,
      ...(r.error === undefined ? {} : { error: errorJson(r.error) }),
      text: r.error === undefined ? r.status : errorText(r.error)
    }))

/**
 * @since 0.1.0
 * @category utils
 */
export const formatTable = (
  title: string,
  sequential: RunSummary,
  concurrent: RunSummary,
  speedup: number,
  ideal: string
): string => {
  const header = ["run", "wall time", "p50 latency", "p95 latency", "success"]
  const row = (name: string, s: RunSummary) => [
    name,
    formatMs(s.elapsedMs),
    formatMs(s.latency.p50),
    formatMs(s.latency.p95),
    `${s.successRate.toFixed(1)} %`
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
 * @since 0.1.0
 * @category commands
 */
export const command = Command.make("bench", { ...promptOptions, json, config }, (args) => {
  const common: Common = { json: args.json, config: args.config }
  return Effect.gen(function* () {
    if (args.concurrency < 1) {
      return yield* failWith(common, exitCodes.usage, "--concurrency must be at least 1", { kind: "usage" })
    }
    const prompts = yield* readPrompts(common, args.prompts, args.file, true)
    if (prompts.length === 0) return yield* failWith(common, exitCodes.usage, "no prompts given", { kind: "usage" })
    const loaded = yield* loadConfig(common)
    const domain = Option.getOrUndefined(args.domain)
    const fallback = Option.match(args.fallback, { onNone: () => [], onSome: splitList })
    yield* checkDomains(common, loaded, [...Option.toArray(args.domain), ...fallback])
    const items = toItems(prompts, domainNames(loaded))
    const concurrency = args.concurrency

    const program = Effect.gen(function* () {
      const batch = yield* Batch
      const run = (label: string, limit: number) =>
        Effect.gen(function* () {
          const bar = progressBar(label, items.length)
          const result = yield* batch.run(items, {
            domain,
            fallback,
            concurrency: limit,
            onEvent: bar.onEvent
          })
          yield* bar.end
          return result
        })
      const sequential = yield* run("sequential", 1)
      const concurrent = yield* run("concurrent", concurrency)
      const seq = summary(sequential)
      const conc = summary(concurrent)
      const speedup = conc.elapsedMs === 0 ? 0 : seq.elapsedMs / conc.elapsedMs
      const rounds = Math.ceil(items.length / Math.min(concurrency, items.length))
      const idealSpeedup = items.length / rounds
      const failures = [
        ...failuresOf("sequential", sequential, prompts),
        ...failuresOf("concurrent", concurrent, prompts)
      ]
      const ok = failures.length === 0
      if (common.json) {
        yield* Console.log(
          JSON.stringify(
            {
              ok,
              prompts: items.length,
              concurrency,
              domain: domain ?? null,
              sequential: seq,
              concurrent: conc,
              speedup: Math.round(speedup * 100) / 100,
              idealSpeedup: Math.round(idealSpeedup * 100) / 100,
              failures: failures.map(({ text: _, ...rest }) => rest)
            },
            null,
            2
          )
        )
      } else {
        const title = `Benchmark: ${items.length} prompt${items.length === 1 ? "" : "s"}, concurrency ${concurrency}${
          domain === undefined ? "" : `, domain ${domain}`
        }`
        const ideal = `ideal ${idealSpeedup.toFixed(2)}× with equal latencies: ${items.length} calls in ${rounds} round${rounds === 1 ? "" : "s"}`
        yield* Console.log(formatTable(title, seq, conc, speedup, ideal))
        if (!ok) {
          yield* Console.log(
            [
              "",
              `${failures.length} failed item${failures.length === 1 ? "" : "s"}:`,
              ...failures.slice(0, 20).map((f) => `  ${f.run} #${f.index}: ${f.text}`),
              ...(failures.length > 20 ? [`  ... and ${failures.length - 20} more`] : [])
            ].join("\n")
          )
        }
      }
      if (!ok) return yield* Effect.fail(new ExitCode({ code: exitCodes.failed }))
    })
    yield* program.pipe(provideOrchestra(common, loaded, { maxConcurrent: concurrency }))
  })
}).pipe(
  Command.withDescription(
    "Run prompts sequentially, then concurrently: wall time, speedup, p50/p95 latency and success rate"
  )
)
