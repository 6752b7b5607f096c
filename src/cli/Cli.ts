/**
 * The `orchestra` command: `test`, `bench`, `start`, `stats` and `serve` (the gateway), and
 * the mapping of every outcome to an exit code.
 *
 * @since 0.1.0
 */
import { Cause, Console, Effect, Layer, Option, Stdio } from "effect"
import { CliError, CliOutput, Command } from "effect/cli"
import * as Bench from "./Bench.js"
import { ExitCode, exitCodes, printError } from "./Common.js"
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
 * Help asked for goes to stdout; a usage error's help and messages go to stderr, so that
 * stdout stays empty for a `--json` consumer. `orchestra` alone is one: it names no command
 * (effect/cli shows that help as if asked for, on stdout and without a message).
 *
 * @since 0.2.0
 * @category layers
 */
export const presenter: Layer.Layer<never> = Layer.succeed(CliOutput.Presenter, {
  present: (event) => {
    if (event._tag === "Version" || (event._tag === "Help" && event.reason === "Requested")) {
      return CliOutput.defaultPresenter.present(event)
    }
    const errors =
      event._tag === "InvalidInvocation"
        ? event.errors
        : [
            new CliError.ValidationError({
              message: `Missing command: give one of ${subcommands.map((c) => c.name).join(", ")}`
            })
          ]
    return Effect.gen(function* () {
      const formatter = yield* CliOutput.Formatter
      yield* Console.error(formatter.formatHelpDoc(event.helpDoc))
      yield* Console.error(formatter.formatErrors(errors))
    })
  }
})

const cli = Command.runWith(command, { version })

/** The flags that take text (a prompt, a name, a path), by every name they have: the long one for each. */
const textFlags: Readonly<Record<string, string>> = {
  "-p": "--prompt",
  "--prompt": "--prompt",
  "--prompts": "--prompts",
  "-f": "--file",
  "--file": "--file",
  "-d": "--domain",
  "--domain": "--domain",
  "--fallback": "--fallback",
  "--config": "--config",
  "--gateway": "--gateway",
  "--host": "--host"
}

const flagName = /^--?[A-Za-z][\w-]*$/

/**
 * The command line with a text flag's value that starts with a dash (`-p "-5 degrees in F?"`,
 * `--prompt "- a list item"`) joined to its flag (`--prompt=-5 degrees in F?`): effect/cli
 * would read it as more flags and refuse them, where getopt takes it as the value. A value
 * shaped like a flag name (`-p --json`) is left alone: that is a missing value.
 *
 * @since 0.3.0
 * @category run
 */
export const joinDashValues = (argv: ReadonlyArray<string>): ReadonlyArray<string> => {
  const out: Array<string> = []
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!
    if (token === "--") return [...out, ...argv.slice(i)]
    const flag = Object.hasOwn(textFlags, token) ? textFlags[token] : undefined
    const next = argv[i + 1]
    if (flag !== undefined && next !== undefined && next.startsWith("-") && next !== "--" && !flagName.test(next)) {
      out.push(`${flag}=${next}`)
      i++
    } else out.push(token)
  }
  return out
}

// effect/cli's wizard asks on stdin: off a terminal it gives up at once ("Wizard cancelled.", on
// stdout) and exits with 0, though nothing ran.
const wizardOffTerminal = (argv: ReadonlyArray<string>): Effect.Effect<boolean> => {
  const end = argv.indexOf("--")
  if (!(end < 0 ? argv : argv.slice(0, end)).includes("--wizard")) return Effect.succeed(false)
  return Effect.flatMap(Effect.serviceOption(Stdio.Stdio), (stdio) =>
    Option.isSome(stdio) ? Effect.map(stdio.value.stdinIsTerminal, (terminal) => !terminal) : Effect.succeed(false)
  )
}

const wizardRefused = Effect.andThen(
  printError("orchestra: --wizard asks its questions on a terminal: run it in one, or give the flags (see --help)"),
  new ExitCode({ code: exitCodes.usage })
)

/**
 * Runs the command line and gives the exit code: 0 ok, 1 a call failed, 2 bad usage or a
 * bad config (already reported). An interruption is not caught: the runtime's teardown
 * makes it 130.
 *
 * @since 0.1.0
 * @category run
 */
export const run = (argv: ReadonlyArray<string>) =>
  Effect.flatMap(wizardOffTerminal(argv), (refused) => (refused ? wizardRefused : cli(joinDashValues(argv)))).pipe(
    Effect.as(exitCodes.ok as number),
    Effect.catch((error) => {
      if (error instanceof ExitCode) return Effect.succeed(error.code)
      if (CliError.isCliError(error)) return Effect.succeed(exitCodes.usage as number)
      return Effect.as(printError(`orchestra: ${String(error)}`), exitCodes.failed as number)
    }),
    // A defect is a bug: report it on stderr (stdout may be a JSON consumer's) and exit with 1.
    Effect.catchCause((cause) =>
      Cause.hasInterruptsOnly(cause)
        ? Effect.failCause(cause)
        : Effect.as(printError(`orchestra: unexpected failure\n${Cause.pretty(cause)}`), exitCodes.failed as number)
    ),
    Effect.provide(presenter)
  )
