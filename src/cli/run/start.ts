/**
 * The handler of `orchestra start`: an interactive session over stdin. Each line is a
 * query (`domain: query` picks a domain); `stats`, `reset`, `domains`, `help` and `exit`
 * are commands. End of input leaves cleanly; Ctrl-C interrupts, and the manager drains.
 * Works the same when stdin is a pipe (no prompt or banner is printed then).
 *
 * @since 0.2.0
 */
import { Clock, Console, Effect, Option, Result, Stdio, Stream } from "effect"
import { Domains } from "../../Domain.js"
import { Executor } from "../../Executor.js"
import { Router } from "../../Router.js"
import * as Stats from "../../Stats.js"
import { type Common, errorJson, errorText, formatMs, parseQuery, printJson, stdoutClosed } from "../Common.js"
import { checkDomains, prepare, provideOrchestra } from "../Manager.js"
import type { Args } from "../Start.js"
import { callChain } from "./test.js"

/** Longest line read; a longer one is refused whole (a paste gone wrong), not buffered without end. */
const maxLineChars = 1_000_000

interface LineState {
  readonly pending: string
  /** The line being read is already too long: the rest of it is dropped. */
  readonly tooLong: boolean
}

/**
 * Lines of text from a stream of bytes, each at most `maxLineChars` (a longer one comes
 * out as `undefined`, in its place).
 *
 * @since 0.2.0
 * @category utils
 */
export const lines = <E, R>(bytes: Stream.Stream<Uint8Array, E, R>): Stream.Stream<string | undefined, E, R> =>
  bytes.pipe(
    Stream.decodeText(),
    Stream.mapAccum(
      (): LineState => ({ pending: "", tooLong: false }),
      (state: LineState, chunk: string): readonly [LineState, ReadonlyArray<string | undefined>] => {
        const parts = (state.pending + chunk).split(/\r?\n/)
        const pending = parts.pop()!
        const out: Array<string | undefined> = []
        let tooLong = state.tooLong
        for (const part of parts) {
          out.push(tooLong || part.length > maxLineChars ? undefined : part)
          tooLong = false
        }
        return pending.length > maxLineChars ? [{ pending: "", tooLong: true }, out] : [{ pending, tooLong }, out]
      },
      {
        onHalt: (state) =>
          state.pending.length > 0 || state.tooLong ? [state.tooLong ? undefined : state.pending] : []
      }
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
 * @since 0.2.0
 * @category handlers
 */
export const run = Effect.fnUntraced(function* (args: Args) {
  const common: Common = { json: args.json, config: args.config, jsonLines: true }
  const stdio = yield* Stdio.Stdio
  const interactive = (yield* stdio.stdinIsTerminal) && !args.json
  const checked = yield* prepare(common)
  yield* checkDomains(common, checked, Option.toArray(args.domain))

  const session = Effect.gen(function* () {
    const router = yield* Router
    const executor = yield* Executor
    const domains = yield* Domains
    const stats = yield* Stats.Stats
    const names = domains.all.map((d) => d.name)
    const prompt = interactive ? Effect.sync(() => void process.stdout.write("orchestra> ")) : Effect.void
    const say = (value: Record<string, unknown>, text: string, toStderr = false) =>
      common.json ? printJson(common, value) : toStderr ? Console.error(text) : Console.log(text)

    const ask = (line: string) =>
      Effect.gen(function* () {
        const parsed = parseQuery(line, names)
        const domain = parsed.domain ?? Option.getOrUndefined(args.domain)
        if (parsed.query.length === 0) {
          const message = `empty query after "${parsed.domain}:": write the question after the domain`
          return yield* say({ type: "error", domain: domain ?? null, error: { kind: "usage", message } }, message, true)
        }
        let retries = 0
        const start = yield* Clock.currentTimeMillis
        const result = yield* Effect.result(
          callChain(router, executor, { prompt: parsed.query }, domain, [], () => Effect.sync(() => void retries++))
        )
        const latencyMs = (yield* Clock.currentTimeMillis) - start
        if (Result.isFailure(result)) {
          const error = result.failure
          return yield* say(
            {
              type: "error",
              prompt: parsed.query,
              domain: domain ?? null,
              latencyMs,
              retries,
              error: errorJson(error)
            },
            `error after ${formatMs(latencyMs)}: ${errorText(error)}`,
            true
          )
        }
        const answer = result.success
        const where = domain === undefined ? "(default provider)" : answer.domain
        yield* say(
          {
            type: "answer",
            prompt: parsed.query,
            answer: answer.response.text,
            latencyMs,
            domain: domain === undefined ? null : answer.domain,
            provider: answer.provider,
            model: answer.response.model,
            attempts: answer.domainsTried,
            retries,
            fallbackUsed: answer.fallbackUsed,
            source: answer.source,
            finishReason: answer.response.finishReason
          },
          `${answer.response.text.trim()}\n  [${where} · ${answer.provider}/${answer.response.model} · ${formatMs(latencyMs)} · ${retries} retr${retries === 1 ? "y" : "ies"}${answer.fallbackUsed ? " · fallback used" : ""}]`
        )
      })

    const listDomains = domains.all.map((d) => ({
      name: d.name,
      provider: d.provider,
      description: d.description ?? null
    }))

    const handle = (raw: string | undefined): Effect.Effect<boolean> => {
      const next = (effect: Effect.Effect<void>) => Effect.as(Effect.andThen(effect, prompt), true)
      if (raw === undefined) {
        const message = `line longer than ${maxLineChars} characters: ignored`
        return next(say({ type: "error", error: { kind: "usage", message } }, message, true))
      }
      const line = raw.trim()
      const word = line.toLowerCase()
      if (line === "") return next(Effect.void)
      if (word === "exit" || word === "quit") return Effect.succeed(false)
      if (word === "stats") {
        return next(
          Effect.flatMap(stats.snapshot(), (snapshot) =>
            say({ type: "stats", stats: snapshot }, Stats.format(snapshot, "Session stats"))
          )
        )
      }
      if (word === "reset") return next(Effect.andThen(stats.reset, say({ type: "reset" }, "statistics reset")))
      if (word === "domains") {
        const text = listDomains
          .map((d) => `  ${d.name.padEnd(12)} ${d.provider.padEnd(10)} ${d.description ?? ""}`.trimEnd())
          .join("\n")
        return next(say({ type: "domains", domains: listDomains }, text))
      }
      if (word === "help") return next(say({ type: "help", help }, help))
      return next(ask(line))
    }

    if (interactive) {
      yield* Console.log(
        `orchestra session: domains ${names.join(", ")}. Type \`help\` for commands, \`exit\` to leave.`
      )
    }
    yield* prompt
    yield* Stream.runForEachWhile(lines(stdio.stdin), handle).pipe(
      Effect.catch((error) => Console.error(`orchestra: cannot read stdin: ${error.message}`))
    )
    if (interactive) yield* Console.log("")
  }).pipe(
    Effect.onInterrupt(() =>
      Effect.flatMap(stdoutClosed, (closed) =>
        closed ? Effect.void : Console.error("\norchestra: interrupted; shutting down")
      )
    )
  )

  yield* session.pipe(provideOrchestra(common, checked))
})
