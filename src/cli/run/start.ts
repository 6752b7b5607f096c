/**
 * The handler of `orchestra start`: an interactive session over stdin. Each line is a
 * query (`domain: query` picks a domain); `stats`, `reset`, `domains`, `help` and `exit`
 * are commands. End of input leaves cleanly; Ctrl-C interrupts, and the manager drains.
 * Works the same when stdin is a pipe (no prompt or banner is printed then). The prompt and
 * banner go to stderr, so that stdout holds only the answers even when redirected; with
 * stderr redirected too, they are not shown.
 *
 * @since 0.2.0
 */
import { Clock, Effect, Option, Result, Stdio, Stream } from "effect"
import { Domains } from "../../Domain.js"
import * as Stats from "../../Stats.js"
import {
  type Common,
  errorJson,
  errorText,
  exitCodes,
  failWith,
  formatMs,
  parseQuery,
  platformErrorText,
  printError,
  printJson,
  printText
} from "../Common.js"
import { checkDomains, library, prepare, provideOrchestra } from "../Manager.js"
import type { Args } from "../Start.js"
import { callChain } from "./test.js"

/** Longest line read; a longer one is refused whole (a paste gone wrong), not buffered without end. */
const maxLineChars = 1_000_000
/** UTF-8 takes at most 4 bytes a character: past this many bytes a line is too long whatever it says. */
const maxLineBytes = 4 * maxLineChars

/**
 * A line that is not a query: longer than a million characters, or not UTF-8 text.
 *
 * @since 0.3.0
 * @category models
 */
export interface Refused {
  readonly refused: string
}

/**
 * @since 0.3.0
 * @category constants
 */
export const tooLong: Refused = { refused: `line longer than ${maxLineChars} characters: ignored` }

/**
 * @since 0.3.0
 * @category constants
 */
export const notUtf8: Refused = { refused: "line not in UTF-8 (set the terminal or the file to UTF-8): ignored" }

interface LineState {
  /**
   * The bytes of the line being read, so far: added to in place, this stream's own (a line that comes a byte at a
   * time, copied at each byte, took time in the square of its length).
   */
  readonly pending: Array<Uint8Array>
  readonly size: number
  /** The line being read is already too long: the rest of it is dropped. */
  readonly tooLong: boolean
}

/** One line's bytes as text, without its `\r`. */
const decodeLine = (parts: ReadonlyArray<Uint8Array>): string | Refused => {
  const bytes = Buffer.concat(parts)
  const end = bytes.length > 0 && bytes[bytes.length - 1] === 0x0d ? bytes.length - 1 : bytes.length
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(0, end))
    return text.length > maxLineChars ? tooLong : text
  } catch {
    return notUtf8
  }
}

/**
 * Lines of text from a stream of bytes, split before they are decoded: a line that is not
 * UTF-8 comes out as {@link notUtf8} (it would otherwise be read with U+FFFD in place of what
 * it says, and sent), one longer than `maxLineChars` as {@link tooLong}, in its place.
 *
 * @since 0.2.0
 * @category utils
 */
export const lines = <E, R>(bytes: Stream.Stream<Uint8Array, E, R>): Stream.Stream<string | Refused, E, R> =>
  bytes.pipe(
    Stream.mapAccum(
      (): LineState => ({ pending: [], size: 0, tooLong: false }),
      (state: LineState, chunk: Uint8Array): readonly [LineState, ReadonlyArray<string | Refused>] => {
        const out: Array<string | Refused> = []
        let { pending, size, tooLong: dropping } = state
        let start = 0
        for (let newline = chunk.indexOf(0x0a); newline >= 0; newline = chunk.indexOf(0x0a, start)) {
          const part = chunk.subarray(start, newline)
          if (!dropping && size + part.length <= maxLineBytes) pending.push(part)
          out.push(dropping || size + part.length > maxLineBytes ? tooLong : decodeLine(pending))
          pending = []
          size = 0
          dropping = false
          start = newline + 1
        }
        const rest = chunk.slice(start)
        if (dropping || size + rest.length > maxLineBytes) return [{ pending: [], size: 0, tooLong: true }, out]
        if (rest.length > 0) pending.push(rest)
        return [{ pending, size: size + rest.length, tooLong: false }, out]
      },
      {
        onHalt: (state) => (state.tooLong ? [tooLong] : state.size > 0 ? [decodeLine(state.pending)] : [])
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
  // A banner and a prompt are for a person typing who can see them: not in a pipe, not into a log (`2> errors.log`).
  const interactive = (yield* stdio.stdinIsTerminal) && (yield* stdio.stderrIsTerminal) && !args.json
  const checked = yield* prepare(common)
  yield* checkDomains(common, checked, Option.toArray(args.domain))
  const services = yield* library

  const session = Effect.gen(function* () {
    const router = yield* services.Router
    const executor = yield* services.Executor
    const domains = yield* Domains
    const stats = yield* Stats.Stats
    const names = domains.all.map((d) => d.name)
    // What asks for input goes where the person typing sees it, not into a redirected stdout
    // (`orchestra start > answers.txt`), which holds the answers only.
    const toTerminal = (text: string) => Stream.run(Stream.make(text), stdio.stderr()).pipe(Effect.ignore)
    const prompt = interactive ? toTerminal("orchestra> ") : Effect.void
    // An error is said on stderr with or without --json (as every command's failures are); --json adds its line.
    const say = (value: Record<string, unknown>, text: string, isError = false) =>
      isError
        ? Effect.andThen(printError(text), common.json ? printJson(common, value) : Effect.void)
        : common.json
          ? printJson(common, value)
          : printText(text)

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

    const handle = (raw: string | Refused): Effect.Effect<boolean> => {
      const next = (effect: Effect.Effect<void>) => Effect.as(Effect.andThen(effect, prompt), true)
      if (typeof raw !== "string") {
        const message = raw.refused
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
      yield* printError(
        `orchestra session: domains ${names.join(", ")}. Type \`help\` for commands, \`exit\` to leave.`
      )
    }
    yield* prompt
    // Input that cannot be read did not end: the session failed (exit 1), it was not left.
    yield* Stream.runForEachWhile(lines(stdio.stdin), handle).pipe(
      Effect.catch((error) =>
        failWith(common, exitCodes.failed, `cannot read stdin: ${platformErrorText(error)}`, { kind: "stdin" })
      )
    )
    if (interactive) yield* toTerminal("\n")
  })

  yield* session.pipe(provideOrchestra(common, checked))
})
