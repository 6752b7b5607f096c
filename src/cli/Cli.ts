/**
 * The `orchestra` command: `test`, `bench`, `start`, `stats` and `serve` (the gateway), and
 * the mapping of every outcome to an exit code.
 *
 * @since 0.1.0
 */
import { Cause, Console, Effect, Layer } from "effect"
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

/**
 * Runs the command line and gives the exit code: 0 ok, 1 a call failed, 2 bad usage or a
 * bad config (already reported). An interruption is not caught: the runtime's teardown
 * makes it 130.
 *
 * @since 0.1.0
 * @category run
 */
export const run = (argv: ReadonlyArray<string>) =>
  cli(argv).pipe(
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
