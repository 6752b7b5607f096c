/**
 * The `orchestra` executable: the only `runMain` of the package. SIGINT / SIGTERM
 * interrupt the command; the manager it provided then drains and releases everything,
 * and the process exits with 130 (at once on a second signal). A reader that closes stdout early (`| head`) ends the
 * command the same way, but with 0.
 *
 * @since 0.1.0
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { Cause, Console, Deferred, Effect, Exit, Layer, Logger } from "effect"
import { run } from "./Cli.js"
import { exitCodes, exitOnSecondSignal, stdoutFailed } from "./Common.js"

// Logs go to stderr so that `--json` output on stdout stays parseable.
const environment = Layer.merge(NodeServices.layer, Layer.succeed(Logger.LogToStderr, true))

// The reader went away (`| head`): what it wanted was printed, so stop quietly. Any other
// failure to write loses output: say so once, on stderr.
const stdoutGone = Effect.flatMap(Deferred.await(stdoutFailed), (error) =>
  error.code === "EPIPE"
    ? Effect.succeed(exitCodes.ok as number)
    : Effect.as(Console.error(`orchestra: cannot write to stdout: ${error.message}`), exitCodes.failed as number)
)

// What the command printed, written out: a write that failed (a full disk) fails the command as
// the error event would, which Node emits only after the command has ended. (stdout is
// synchronous on Linux for files, pipes and terminals; `write("")` calls back after the writes
// before it, with the first one's error.)
const flushStdout = Effect.callback<void>((resume) => {
  process.stdout.write("", (error) => {
    if (error === null || error === undefined) return resume(Effect.void)
    // stdoutGone says what it is, and wins the race: this never resumes.
    Deferred.doneUnsafe(stdoutFailed, Exit.succeed(error as NodeJS.ErrnoException))
  })
})

exitOnSecondSignal(process)

Effect.raceFirst(
  Effect.tap(run(process.argv.slice(2)), () => flushStdout),
  stdoutGone
).pipe(
  Effect.provide(environment),
  NodeRuntime.runMain({
    disableErrorReporting: true,
    teardown: (exit, onExit) => {
      const code = Exit.isSuccess(exit)
        ? Number(exit.value)
        : Cause.hasInterruptsOnly(exit.cause)
          ? exitCodes.interrupted
          : exitCodes.failed
      onExit(code)
      // Nothing of the command is left running: do not wait on handles a native library may keep.
      process.exit(code)
    }
  })
)
