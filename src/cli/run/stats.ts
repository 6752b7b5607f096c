/**
 * The handler of `orchestra stats`: the config checked as every command checks it, then
 * an empty window, or the figures of the prompts given.
 *
 * @since 0.2.0
 */
import { Effect, Option } from "effect"
import type { ProgressEvent } from "../../Batch.js"
import * as Stats from "../../Stats.js"
import {
  type Common,
  errorText,
  ExitCode,
  exitCodes,
  failWith,
  fallbackOf,
  printError,
  printJson,
  printText,
  stdoutClosed
} from "../Common.js"
import { checkDomains, checkSplitFlags, library, maxItemsOf, prepare, provideOrchestra } from "../Manager.js"
import * as Prompts from "../Prompts.js"
import { domainNames } from "../Setup.js"
import type { Args } from "../Stats.js"

const print = (common: Common, stats: Stats.ExecutionStats, extra: Record<string, unknown>, title: string) =>
  common.json ? printJson(common, { ...extra, stats }) : printText(Stats.format(stats, title))

/**
 * @since 0.2.0
 * @category handlers
 */
export const run = Effect.fnUntraced(function* (args: Args) {
  const common: Common = { json: args.json, config: args.config }
  const { concurrency, maxTokens } = yield* Prompts.checkRunFlags(common, args)
  // Checked with or without prompts: `stats` is the cheap check, so it refuses what `test` refuses.
  const fallback = yield* fallbackOf(common, args.fallback)
  yield* Prompts.checkSource(common, args.prompts, args.file, false)
  const checked = yield* prepare(common)
  const prompts = yield* Prompts.read(common, args.prompts, args.file, false, maxItemsOf(checked))
  const file = checked.loaded.file ?? null
  yield* checkSplitFlags(common, checked, args)
  yield* checkDomains(common, checked, [...Option.toArray(args.domain), ...fallback])
  if (prompts.length === 0) {
    // They would be checked and then apply to nothing: a user who gave them meant prompts to run.
    const given = [
      ...(Option.isSome(args.concurrency) ? ["--concurrency"] : []),
      ...(Option.isSome(args.maxTokens) ? ["--max-tokens"] : [])
    ]
    if (given.length > 0) {
      return yield* failWith(
        common,
        exitCodes.usage,
        `${given.join(" and ")} appl${given.length === 1 ? "ies" : "y"} to prompts run: give --prompts or --file ` +
          "(without them, stats runs nothing)",
        { kind: "usage" }
      )
    }
    // Nothing to run: the config is checked, but only the statistics service is built.
    const stats = yield* Stats.snapshot().pipe(Effect.provide(Stats.layer))
    if (!common.json) {
      // Which config: one found through ORCHESTRA_CONFIG or in the working directory is easy to mistake for another.
      const which =
        file === null
          ? "the built-in config (the bundled local model: no --config, ORCHESTRA_CONFIG or ./orchestra.config.json)"
          : `the config ${file}`
      yield* printError(
        `orchestra: ${which} is valid. This process has made no calls, so the window is empty: use \`stats\` inside\n` +
          "`orchestra start` for a live session's figures, or pass --prompts / --file to run prompts first."
      )
    }
    return yield* print(common, stats, { ok: true, prompts: 0, config: file }, "Execution stats (empty)")
  }
  const items = yield* Prompts.toItems(common, prompts, domainNames(checked.loaded), maxTokens)
  // Prompts answered or failed so far: what an interruption (Ctrl-C, SIGTERM) reports.
  let finished = 0
  const onProgress = (event: ProgressEvent) => {
    if (event._tag === "Succeeded" || event._tag === "Failed") finished = event.done
  }
  const interrupted = Effect.gen(function* () {
    const stats = yield* Stats.snapshot()
    const of = `${finished} of ${items.length} prompt${items.length === 1 ? "" : "s"}`
    yield* print(
      common,
      stats,
      {
        ok: false,
        prompts: items.length,
        finished,
        config: file,
        error: { message: "interrupted", kind: "interrupted" }
      },
      `Execution stats (interrupted: ${of} finished, concurrency ${concurrency})`
    )
    yield* printError(`orchestra: interrupted after ${of} finished (calls cut short count as Interrupted)`)
  })
  const services = yield* library
  const program = Effect.gen(function* () {
    const batch = yield* services.Batch
    const result = yield* batch
      .run(items, { domain: Option.getOrUndefined(args.domain), fallback, concurrency, onProgress })
      .pipe(Effect.onInterrupt(() => Effect.flatMap(stdoutClosed, (closed) => (closed ? Effect.void : interrupted))))
    const stats = yield* Stats.snapshot()
    const ok = result.results.every((r) => r.status === "success")
    yield* print(
      common,
      stats,
      { ok, prompts: items.length, config: file },
      `Execution stats (${items.length} prompt${items.length === 1 ? "" : "s"}, concurrency ${concurrency})`
    )
    if (!ok) {
      // Said on stderr too, with --json or without, as every failure is: stdout holds the figures.
      const failed = result.results.filter((r) => r.status !== "success")
      const first = failed[0]!
      yield* printError(
        `orchestra: ${failed.length} of ${items.length} prompt${items.length === 1 ? "" : "s"} failed; the first: #${first.index + 1}: ${
          first.error === undefined ? first.status : errorText(first.error)
        }`
      )
      return yield* new ExitCode({ code: exitCodes.failed })
    }
  })
  yield* program.pipe(
    // A batch fails as a whole only on options the checks above already passed; should one slip through, it is usage.
    Effect.catchTag("ModelError", (error) => failWith(common, exitCodes.usage, error.message, { kind: "usage" })),
    provideOrchestra(common, checked, { maxConcurrent: concurrency })
  )
})
