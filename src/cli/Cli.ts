/**
 * The `orchestra` command: `test`, `bench`, `start` and `stats`, and the mapping of every
 * outcome to an exit code.
 *
 * @since 0.1.0
 */
import type * as CliApp from "@effect/cli/CliApp"
import * as Command from "@effect/cli/Command"
import * as ValidationError from "@effect/cli/ValidationError"
import { Cause, Console, Effect } from "effect"
import { exitCodes } from "./Common.js"
import * as Bench from "./Bench.js"
import * as Start from "./Start.js"
import * as Stats from "./Stats.js"
import * as Test from "./Test.js"

/**
 * @since 0.1.0
 * @category constants
 */
export const version = "0.1.0"

/**
 * @since 0.1.0
 * @category commands
 */
export const command = Command.make("orchestra", {}, () =>
  Console.log("orchestra: run AI-model calls with timeouts, retries, fallbacks and batches.\nTry `orchestra --help`.")
).pipe(
  Command.withDescription("Run AI-model calls as Effect programs: test, bench, start (interactive), stats"),
  Command.withSubcommands([Test.command, Bench.command, Start.command, Stats.command])
)

const cli = Command.run(command, { name: "orchestra", version })

/**
 * Runs the command line and returns the exit code: 0 ok, 1 a call failed, 2 bad usage or
 * config. Usage errors were already printed by `@effect/cli`.
 *
 * @since 0.1.0
 * @category run
 */
export const run = (argv: ReadonlyArray<string>): Effect.Effect<number, never, CliApp.CliApp.Environment> =>
  cli(argv).pipe(
    Effect.as(exitCodes.ok),
    Effect.catchAll((error) =>
      ValidationError.isValidationError(error)
        ? Effect.succeed(exitCodes.usage)
        : error._tag === "ExitCode"
          ? Effect.succeed(error.code)
          : Effect.as(Console.error(`orchestra: ${String(error)}`), exitCodes.failed)
    ),
    // A defect is a bug: report it on stderr (stdout may be a JSON consumer's) and exit with 1.
    Effect.catchAllCause((cause) =>
      Cause.isInterruptedOnly(cause)
        ? Effect.failCause(cause)
        : Effect.as(Console.error(`orchestra: unexpected failure\n${Cause.pretty(cause)}`), exitCodes.failed)
    )
  )
