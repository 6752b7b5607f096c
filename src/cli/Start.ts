/**
 * `orchestra start`: an interactive session over stdin. Each line is a query
 * (`domain: query` picks a domain); `stats`, `reset`, `domains`, `help` and `exit` are
 * commands. End of input leaves cleanly; Ctrl-C interrupts, and the manager drains.
 * Works the same when stdin is a pipe (no prompt is printed then).
 *
 * @since 0.1.0
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as Readline from "node:readline"
import { Clock, Console, Effect, Either, Option, Stream } from "effect"
import { Domains } from "../Domain.js"
import { Executor } from "../Executor.js"
import { Router } from "../Router.js"
import * as Stats from "../Stats.js"
import {
  type Common,
  checkDomains,
  config,
  errorJson,
  errorText,
  formatMs,
  json,
  loadConfig,
  parseQuery,
  provideOrchestra
} from "./Common.js"
import { callChain } from "./Test.js"

/**
 * The lines of stdin, read with `node:readline` (a pipe or a terminal); ends at EOF.
 *
 * @since 0.1.0
 * @category utils
 */
export const stdinLines: Stream.Stream<string> = Stream.unwrapScoped(
  Effect.map(
    Effect.acquireRelease(
      Effect.sync(() => Readline.createInterface({ input: process.stdin, terminal: false, crlfDelay: Infinity })),
      (rl) => Effect.sync(() => rl.close())
    ),
    (rl) => Stream.orDie(Stream.fromAsyncIterable(rl, (error) => error))
  )
)

const help = [
  "Type a question and press Enter. Commands:",
  "  domain: question   ask through a domain (e.g. `support: my card was charged twice`)",
  "  stats              the statistics of this session",
  "  reset              start a new statistics window",
  "  domains            list the domains",
  "  help               this text",
  "  exit               leave (also: quit, Ctrl-D; Ctrl-C interrupts)"
].join("\n")

/**
 * @since 0.1.0
 * @category commands
 */
export const command = Command.make(
  "start",
  {
    domain: Options.text("domain").pipe(
      Options.withAlias("d"),
      Options.withDescription("Domain of lines without a `domain:` prefix (default: the default provider)"),
      Options.optional
    ),
    json,
    config
  },
  (args) => {
    const common: Common = { json: args.json, config: args.config }
    const interactive = process.stdin.isTTY === true && !args.json
    const session = Effect.gen(function* () {
      const router = yield* Router
      const executor = yield* Executor
      const domains = yield* Domains
      const stats = yield* Stats.Stats
      const names = domains.all.map((d) => d.name)
      const prompt = interactive ? Effect.sync(() => void process.stdout.write("orchestra> ")) : Effect.void

      const ask = (line: string) =>
        Effect.gen(function* () {
          const parsed = parseQuery(line, names)
          const domain = parsed.domain ?? Option.getOrUndefined(args.domain)
          const chain = domain === undefined ? [] : [domain]
          let retries = 0
          const start = yield* Clock.currentTimeMillis
          const result = yield* Effect.either(
            callChain(router, executor, { prompt: parsed.query }, chain, () => Effect.sync(() => void retries++))
          )
          const latencyMs = (yield* Clock.currentTimeMillis) - start
          if (Either.isLeft(result)) {
            const error = result.left
            return yield* common.json
              ? Console.log(
                  JSON.stringify({
                    type: "error",
                    prompt: parsed.query,
                    domain: domain ?? null,
                    latencyMs,
                    retries,
                    error: errorJson(error)
                  })
                )
              : Console.error(`error after ${formatMs(latencyMs)}: ${errorText(error)}`)
          }
          const answer = result.right
          if (common.json) {
            return yield* Console.log(
              JSON.stringify({
                type: "answer",
                prompt: parsed.query,
                answer: answer.response.text,
                latencyMs,
                domain: domain === undefined ? null : answer.domain,
                provider: answer.provider,
                model: answer.response.model,
                attempts: answer.attempts,
                retries,
                fallbackUsed: answer.fallbackUsed,
                source: answer.source,
                finishReason: answer.response.finishReason
              })
            )
          }
          const where = domain === undefined ? "(default provider)" : answer.domain
          yield* Console.log(
            `${answer.response.text.trim()}\n  [${where} · ${answer.provider}/${answer.response.model} · ${formatMs(latencyMs)} · ${retries} retr${retries === 1 ? "y" : "ies"}${answer.fallbackUsed ? " · fallback used" : ""}]`
          )
        })

      const handle = (raw: string): Effect.Effect<boolean> => {
        const line = raw.trim()
        const command = line.toLowerCase()
        const next = (effect: Effect.Effect<void>) => Effect.as(Effect.zipRight(effect, prompt), true)
        if (line === "") return next(Effect.void)
        if (command === "exit" || command === "quit") return Effect.succeed(false)
        if (command === "stats") {
          return next(
            Effect.flatMap(stats.snapshot(), (snapshot) =>
              common.json
                ? Console.log(JSON.stringify({ type: "stats", stats: snapshot }))
                : Console.log(Stats.format(snapshot, "Session stats"))
            )
          )
        }
        if (command === "reset") {
          return next(
            Effect.zipRight(
              stats.reset,
              common.json ? Console.log(JSON.stringify({ type: "reset" })) : Console.log("statistics reset")
            )
          )
        }
        if (command === "domains") {
          return next(
            common.json
              ? Console.log(
                  JSON.stringify({
                    type: "domains",
                    domains: domains.all.map((d) => ({
                      name: d.name,
                      provider: d.provider,
                      description: d.description ?? null
                    }))
                  })
                )
              : Console.log(
                  domains.all
                    .map((d) => `  ${d.name.padEnd(12)} ${d.provider.padEnd(10)} ${d.description ?? ""}`.trimEnd())
                    .join("\n")
                )
          )
        }
        if (command === "help")
          return next(common.json ? Console.log(JSON.stringify({ type: "help", help })) : Console.log(help))
        return next(ask(line))
      }

      if (interactive) {
        yield* Console.log(
          `orchestra session: domains ${names.join(", ")}. Type \`help\` for commands, \`exit\` to leave.`
        )
      }
      yield* prompt
      yield* Stream.runForEachWhile(stdinLines, handle)
      if (interactive) yield* Console.log("")
    }).pipe(Effect.onInterrupt(() => Console.error("\norchestra: interrupted; shutting down")))
    return Effect.gen(function* () {
      const loaded = yield* loadConfig(common, { jsonLines: true })
      yield* checkDomains(common, loaded, Option.toArray(args.domain), { jsonLines: true })
      yield* session.pipe(provideOrchestra(common, loaded, {}, { jsonLines: true }))
    })
  }
).pipe(
  Command.withDescription(
    "Interactive session: one query per line (`domain: query`), `stats`, `domains`, `exit`; reads stdin, so it also works in a pipe"
  )
)
