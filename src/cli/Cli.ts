/**
 * The `orchestra` command: `test`, `bench`, `start`, `stats` and `serve` (the gateway), and
 * the mapping of every outcome to an exit code.
 *
 * @since 0.1.0
 */
import { Cause, Console, Effect, Layer, Option, Stdio, Stream, Terminal } from "effect"
import { CliError, CliOutput, Command, CommandSpec, type Flag, Prompt } from "effect/cli"
import { asksJson, commandAt, commandFirst, flagsOf, joinDashValues, wizardOf } from "./Argv.js"
import * as Bench from "./Bench.js"
import { ExitCode, exitCodes, jsonText, printError, stdoutClosed } from "./Common.js"
import * as Serve from "./Serve.js"
import * as Start from "./Start.js"
import * as Stats from "./Stats.js"
import * as Test from "./Test.js"

/**
 * @since 0.1.0
 * @category constants
 */
export const version = "0.2.0"

/**
 * The subcommands, in the order `--help` lists them.
 *
 * @since 0.2.0
 * @category commands
 */
export const subcommands = [Test.command, Bench.command, Start.command, Stats.command, Serve.command] as const

/**
 * @since 0.1.0
 * @category commands
 */
export const command = Command.make("orchestra").pipe(
  Command.withDescription(
    "Run AI-model calls as Effect programs: test, bench, start (interactive), stats, serve (the OpenAI-compatible gateway)"
  ),
  Command.withSubcommands(subcommands)
)

/**
 * Where a failure's JSON goes under `--json`: one document, or for `start` (whose output is
 * JSON lines) one line.
 *
 * @since 0.3.0
 * @category models
 */
export type JsonOutput = "none" | "document" | "lines"

const failureJson = (json: JsonOutput, kind: string, message: string): string =>
  jsonText(
    { jsonLines: json === "lines" },
    json === "lines" ? { type: "error", error: { message, kind } } : { ok: false, error: { message, kind } }
  )

/** A failure as a `--json` consumer reads every other one: `{ ok: false, error }`, or an error line. */
const printFailure = (json: JsonOutput, kind: string, message: string): Effect.Effect<void> =>
  json === "none" ? Effect.void : Console.log(failureJson(json, kind, message))

/**
 * A single-value flag given more than once, as effect/cli refuses it (an `InvalidValue` whose
 * value is "<n> occurrences", its only sign): one line naming the flag, or `undefined` for
 * another error.
 */
const repeatedFlag = (error: CliError.CliError): string | undefined => {
  if (error._tag !== "InvalidValue" || error.kind !== "flag" || error.expected !== "at most 1 value") return undefined
  const times = /^(\d+) occurrences$/.exec(error.value)?.[1]
  return times === undefined
    ? undefined
    : `--${error.option} is given ${times === "2" ? "twice" : `${times} times`}: give it once`
}

/**
 * A mistyped command (`orchestra tset -p hi`): effect/cli also calls every flag after it
 * unrecognized by `orchestra`, though they were meant for the command and are fine there.
 * Only the unknown command, with its suggestion, is said.
 */
const withoutStrayFlags = (errors: ReadonlyArray<CliError.CliError>): ReadonlyArray<CliError.CliError> =>
  errors.some((error) => error._tag === "UnknownSubcommand")
    ? errors.filter((error) => error._tag !== "UnrecognizedOption")
    : errors

/**
 * Help asked for goes to stdout; a usage error's help and messages go to stderr, so that
 * stdout stays empty for a `--json` consumer, which gets the error as JSON (`{ ok: false,
 * error: { message, kind: "usage" } }`, a `{ type: "error", ... }` line for `start`), as it
 * does every other failure. `orchestra` alone is one: it names no command (effect/cli shows
 * that help as if asked for, on stdout and without a message). A single-value flag given
 * twice is one line naming it (`orchestra: --domain is given twice: give it once`), as the
 * commands' own usage errors are: the help page would not say which value counts.
 *
 * @since 0.2.0
 * @category layers
 */
export const presenter = (json: boolean): Layer.Layer<never> =>
  Layer.succeed(CliOutput.Presenter, {
    present: (event) => {
      if (event._tag === "Version" || (event._tag === "Help" && event.reason === "Requested")) {
        return CliOutput.defaultPresenter.present(event)
      }
      const output = !json ? "none" : event.commandPath[1] === Start.command.name ? "lines" : "document"
      if (event._tag === "InvalidInvocation") {
        const repeated = event.errors.map(repeatedFlag)
        if (repeated.length > 0 && repeated.every((message) => message !== undefined)) {
          const message = repeated.join("; ")
          return Effect.andThen(printError(`orchestra: ${message}`), printFailure(output, "usage", message))
        }
      }
      const errors =
        event._tag === "InvalidInvocation"
          ? withoutStrayFlags(event.errors)
          : [
              new CliError.ValidationError({
                message: `Missing command: give one of ${subcommands.map((c) => c.name).join(", ")}`
              })
            ]
      return Effect.gen(function* () {
        const formatter = yield* CliOutput.Formatter
        yield* Console.error(formatter.formatHelpDoc(event.helpDoc))
        yield* Console.error(formatter.formatErrors(errors))
        yield* printFailure(output, "usage", errors.map((error) => error.message).join("; "))
      })
    }
  })

const cli = Command.runWith(command, { version })

const stdinIsTerminal: Effect.Effect<boolean> = Effect.flatMap(Effect.serviceOption(Stdio.Stdio), (stdio) =>
  Option.isSome(stdio) ? stdio.value.stdinIsTerminal : Effect.succeed(false)
)

/** The subcommand a command line names, if any. */
const subcommandOf = (argv: ReadonlyArray<string>) => {
  const at = commandAt(argv)
  return at < 0 ? undefined : subcommands.find((c) => c.name === argv[at])
}

const jsonOutput = (argv: ReadonlyArray<string>): JsonOutput =>
  !asksJson(argv) ? "none" : subcommandOf(argv)?.name === Start.command.name ? "lines" : "document"

// effect/cli's wizard asks on stdin: off a terminal it gives up at once ("Wizard cancelled.", on
// stdout) and exits with 0, though nothing ran.
const wizardRefused = (json: JsonOutput) => {
  const message = "--wizard asks its questions on a terminal: run it in one, or give the flags (see --help)"
  return printError(`orchestra: ${message}`).pipe(
    Effect.andThen(printFailure(json, "usage", message)),
    Effect.andThen(new ExitCode({ code: exitCodes.usage }))
  )
}

/** A word as a shell reads it back: quoted when it holds anything but plain characters. */
const shellWord = (word: string): string =>
  /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`

/** The flags of each command, by the command's name: what `--wizard` asks for. */
const commandFlags: Readonly<Record<string, Readonly<Record<string, Flag.Flag<unknown>>>>> = {
  [Test.command.name]: Test.flags,
  [Bench.command.name]: Bench.flags,
  [Start.command.name]: Start.flags,
  [Stats.command.name]: Stats.flags,
  [Serve.command.name]: Serve.flags
}

/** A flag's long name (`max-tokens`), as effect/cli describes it. */
const longName = (flag: Flag.Flag<unknown>): string | undefined =>
  Option.getOrUndefined(CommandSpec.resolve(Command.make("flag", { flag }), ["flag"], { builtIns: [] }))?.flags[0]?.name

const negativeNumber = /^-(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?$/i

/**
 * The long names of the flags of `name` that a command line gives (`-c 3` gives
 * `concurrency`), or the first flag that is none of that command's (nor effect/cli's own).
 */
const givenFlags = (name: string, tokens: ReadonlyArray<string>): Set<string> | { readonly unknown: string } => {
  const spec = Option.getOrUndefined(CommandSpec.resolve(command, [command.name, name]))
  const byName = new Map<string, CommandSpec.Flag>()
  for (const flag of spec?.flags ?? []) {
    byName.set(`--${flag.name}`, flag)
    for (const alias of flag.aliases) byName.set(alias.length === 1 ? `-${alias}` : `--${alias}`, flag)
    if (flag.negation !== undefined) byName.set(`--${flag.negation}`, flag)
  }
  const given = new Set<string>()
  for (const token of flagsOf(tokens)) {
    // A value (a flag's value that starts with a dash is joined to it already: `--prompt=-5 degrees`).
    if (!token.startsWith("-") || token === "-" || negativeNumber.test(token)) continue
    const bare = token.includes("=") ? token.slice(0, token.indexOf("=")) : token
    const names = bare.startsWith("--") ? [bare] : Array.from(bare.slice(1), (c) => `-${c}`)
    for (const flagName of names) {
      const flag = byName.get(flagName)
      if (flag === undefined) return { unknown: flagName }
      if (flag.scope._tag === "Local") given.add(flag.name)
    }
  }
  return given
}

/**
 * `--wizard`: the questions for the command named (first which command, when none is), then
 * the command line they make, run once confirmed. The flags given with `--wizard` are kept
 * as they are and not asked again (`orchestra bench --wizard -c 3` asks for the prompts, not
 * the concurrency); a flag the command does not have is a usage error before any question.
 * effect/cli's own wizard writes its questions to stdout (the console's log and the
 * terminal's display), where `orchestra stats --wizard --json > out.json` keeps its data:
 * here they go to stderr, as the prompts of `start` do, and only the command itself writes
 * on stdout. Cancelled (Ctrl-C, Esc, or "Run this command?" answered no), nothing runs, it says so (as JSON
 * too under `--json`) and the exit code is 130.
 */
const wizard = (argv: ReadonlyArray<string>, json: JsonOutput) =>
  Effect.gen(function* () {
    const stdio = yield* Stdio.Stdio
    const terminal = yield* Terminal.Terminal
    const console = yield* Console.Console
    const toStderr = (text: string) => Stream.run(Stream.make(text), stdio.stderr()).pipe(Effect.ignore)
    const asking = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      effect.pipe(
        Effect.provideService(Terminal.Terminal, Terminal.make({ ...terminal, display: toStderr })),
        Effect.provideService(Console.Console, { ...console, log: console.error })
      )
    const at = commandAt(argv)
    const named = subcommandOf(argv)
    // What the command line gives besides the command and `--wizard`, kept as it is.
    const given = joinDashValues(argv.filter((_, i) => i !== at))
    const notAFlag = (unknown: string, name: string) => {
      const message = `${unknown} is not a flag of ${name} (see ${command.name} ${name} --help)`
      // Asked in the middle of the questions: the JSON goes to stdout all the same.
      return printError(`orchestra: ${message}`).pipe(
        Effect.andThen(Effect.provideService(printFailure(json, "usage", message), Console.Console, console)),
        Effect.andThen(new ExitCode({ code: exitCodes.usage }))
      )
    }
    const questions = Effect.gen(function* () {
      yield* Console.log(`orchestra ${version} · command wizard (Ctrl-C cancels)\n`)
      const name =
        named?.name ??
        (yield* Prompt.run(
          Prompt.Select({
            message: "Command",
            choices: subcommands.map((c) => ({
              title: c.name,
              value: c.name,
              ...(c.description === undefined ? {} : { description: c.description })
            }))
          })
        ))
      const flags = commandFlags[name] ?? {}
      const kept = givenFlags(name, given)
      if (!(kept instanceof Set)) return yield* notAFlag(kept.unknown, name)
      const asked = Object.fromEntries(
        Object.entries(flags).filter(([, flag]) => {
          const long = longName(flag)
          return long === undefined || !kept.has(long)
        })
      )
      const args = yield* Command.wizard(Command.make(name, asked), { prefix: [command.name, name, ...given] })
      yield* Console.log(`Command ready:\n  ${args.map(shellWord).join(" ")}\n`)
      const go = yield* Prompt.run(
        Prompt.Toggle({ message: "Run this command?", initial: true, active: "yes", inactive: "no" })
      )
      yield* Console.log("")
      return go ? Option.some(args.slice(1)) : Option.none()
    })
    // "Run this command?" answered no is a cancel as Ctrl-C is: exit 0 would tell a script the command ran.
    const cancelled = (newline: string) => {
      const message = "--wizard cancelled: nothing ran"
      return printError(`${newline}orchestra: ${message}`).pipe(
        Effect.andThen(printFailure(json, "interrupted", message)),
        Effect.andThen(new ExitCode({ code: exitCodes.interrupted }))
      )
    }
    const answered = yield* asking(questions).pipe(Effect.catchTag("QuitError", () => cancelled("\n")))
    if (Option.isNone(answered)) return yield* cancelled("")
    yield* cli(answered.value)
  })

/**
 * Runs the command line and gives the exit code: 0 ok, 1 a call failed, 2 bad usage or a
 * bad config (already reported), 130 a cancelled `--wizard`. An interruption is not caught:
 * the runtime's teardown makes it 130. Under `--json` every failure, a command line that
 * cannot be parsed and an interruption included, also puts its JSON on stdout. `interrupted`:
 * a signal came before the command could run (while the modules loaded); nothing runs, and it
 * ends as an interruption. `exiting.lastWords` is set to what stdout still needs if the process
 * exits at once (a second signal, while the first one's drain runs): under `--json`, the error
 * the interruption would print after the drain, unless a document or an error is out already.
 *
 * @since 0.1.0
 * @category run
 */
export const run = (
  argv: ReadonlyArray<string>,
  options?: {
    readonly interrupted?: boolean | undefined
    readonly exiting?: { lastWords?: (() => string | undefined) | undefined } | undefined
  }
) =>
  Console.consoleWith((console) => {
    const json = jsonOutput(argv)
    const { asked, rest } = wizardOf(argv)
    // Whether the command wrote on stdout: then its JSON document is out, and a second one would
    // make the output no JSON at all (JSON lines may go on).
    let wrote = false
    // Whether its failure was printed already (an error line for `start`).
    let failed = false
    const watched: Console.Console = {
      ...console,
      log: (...args: ReadonlyArray<unknown>) => {
        wrote = true
        console.log(...args)
      }
    }
    const said = (kind: string, message: string) =>
      Effect.andThen(
        Effect.sync(() => {
          failed = true
        }),
        printFailure(json, kind, message)
      )
    const failure = (kind: string, message: string) =>
      Effect.suspend(() => (json === "document" && wrote ? Effect.void : said(kind, message)))
    if (options?.exiting !== undefined) {
      options.exiting.lastWords = () =>
        json === "none" || failed || (json === "document" && wrote) || subcommandOf(argv)?.name === Serve.command.name
          ? undefined
          : failureJson(json, "interrupted", "interrupted: exited at a second signal, without waiting for the drain")
    }
    // What was not reported yet: said on stderr, and as JSON under `--json`.
    const unreported = (message: string, detail = message) =>
      Effect.as(
        Effect.andThen(printError(`orchestra: ${detail}`), failure("internal", message)),
        exitCodes.failed as number
      )
    return Effect.suspend(() =>
      options?.interrupted === true
        ? Effect.andThen(printError("orchestra: interrupted before the command ran: nothing ran"), Effect.interrupt)
        : asked
          ? Effect.flatMap(stdinIsTerminal, (terminal) => (terminal ? wizard(rest, json) : wizardRefused(json)))
          : cli(commandFirst(joinDashValues(rest)))
    ).pipe(
      Effect.as(exitCodes.ok as number),
      Effect.catch((error) => {
        if (error instanceof ExitCode) return Effect.succeed(error.code)
        if (CliError.isCliError(error)) return Effect.succeed(exitCodes.usage as number)
        return unreported(String(error))
      }),
      // A defect is a bug: report it on stderr (stdout may be a JSON consumer's) and exit with 1.
      Effect.catchCause((cause) =>
        Cause.hasInterruptsOnly(cause)
          ? Effect.failCause(cause)
          : unreported(
              `unexpected failure: ${String(Cause.squash(cause))}`,
              `unexpected failure\n${Cause.pretty(cause)}`
            )
      ),
      // Under `--json` an interruption is a failure like the others; `serve`'s normal end is one, and its output
      // was the listening line. Nothing is said to a reader that went away.
      Effect.onInterrupt(() =>
        json === "none" || subcommandOf(argv)?.name === Serve.command.name
          ? Effect.void
          : Effect.flatMap(stdoutClosed, (closed) => (closed ? Effect.void : failure("interrupted", "interrupted")))
      ),
      Effect.provideService(Console.Console, watched),
      Effect.provide(presenter(json !== "none")),
      // Ended, it owes stdout nothing more.
      Effect.ensuring(
        Effect.sync(() => {
          if (options?.exiting !== undefined) options.exiting.lastWords = undefined
        })
      )
    )
  })
