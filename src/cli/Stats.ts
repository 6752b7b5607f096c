/**
 * `orchestra stats`: the execution statistics of this process. A fresh process has made
 * no calls, so on its own it prints an empty window (and checks the config); with
 * `--prompts` / `--file` it runs them first (concurrently) and reports their figures. The
 * live statistics of a session are `stats` inside `orchestra start`.
 *
 * @since 0.1.0
 */
import * as Command from "@effect/cli/Command"
import { Console, Effect, Option } from "effect"
import { Batch } from "../Batch.js"
import * as Stats from "../Stats.js"
import { promptOptions, readPrompts, toItems } from "./Bench.js"
import {
  type Common,
  checkDomains,
  config,
  ExitCode,
  exitCodes,
  failWith,
  json,
  loadConfig,
  provideOrchestra,
  splitList
} from "./Common.js"
import { domainNames } from "./Setup.js"

const print = (common: Common, stats: Stats.ExecutionStats, extra: Record<string, unknown>, title: string) =>
  common.json ? Console.log(JSON.stringify({ ...extra, stats }, null, 2)) : Console.log(Stats.format(stats, title))

/**
 * @since 0.1.0
 * @category commands
 */
export const command = Command.make("stats", { ...promptOptions, json, config }, (args) => {
  const common: Common = { json: args.json, config: args.config }
  return Effect.gen(function* () {
    if (args.concurrency < 1) {
      return yield* failWith(common, exitCodes.usage, "--concurrency must be at least 1", { kind: "usage" })
    }
    const prompts = yield* readPrompts(common, args.prompts, args.file, false)
    const loaded = yield* loadConfig(common)
    if (prompts.length === 0) {
      // Nothing to run: only the statistics service, no provider is built.
      const stats = yield* Stats.snapshot().pipe(Effect.provide(Stats.layer))
      if (!common.json) {
        yield* Console.error(
          "orchestra: this process has made no calls yet, so the window is empty. Use `stats` inside `orchestra start`\n" +
            "for a live session's figures, or pass --prompts / --file to run prompts first."
        )
      }
      return yield* print(
        common,
        stats,
        { ok: true, prompts: 0, config: loaded.file ?? null },
        "Execution stats (empty)"
      )
    }
    const fallback = Option.match(args.fallback, { onNone: () => [], onSome: splitList })
    yield* checkDomains(common, loaded, [...Option.toArray(args.domain), ...fallback])
    const items = toItems(prompts, domainNames(loaded))
    const program = Effect.gen(function* () {
      const batch = yield* Batch
      const result = yield* batch.run(items, {
        domain: Option.getOrUndefined(args.domain),
        fallback,
        concurrency: args.concurrency
      })
      const stats = yield* Stats.snapshot()
      const ok = result.results.every((r) => r.status === "success")
      yield* print(
        common,
        stats,
        { ok, prompts: items.length, config: loaded.file ?? null },
        `Execution stats (${items.length} prompt${items.length === 1 ? "" : "s"}, concurrency ${args.concurrency})`
      )
      if (!ok) return yield* Effect.fail(new ExitCode({ code: exitCodes.failed }))
    })
    yield* program.pipe(provideOrchestra(common, loaded, { maxConcurrent: args.concurrency }))
  })
}).pipe(
  Command.withDescription(
    "Execution statistics of this process (empty unless --prompts/--file run first; `stats` inside `start` is live)"
  )
)
