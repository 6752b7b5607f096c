/**
 * The `orchestra` executable: the only `runMain` of the package. SIGINT / SIGTERM
 * interrupt the command; the manager it provided then drains and releases everything,
 * and the process exits with 130 (at once on a second signal). A signal that comes while
 * the modules still load is heard too: nothing runs, the command says it was interrupted
 * (as JSON under `--json`), and the exit code is 130. A reader that closes stdout early
 * (`| head`) ends the command the same way, but with 0.
 *
 * @since 0.1.0
 */

// Listened for before anything is loaded: loading takes a second or more (more on a busy machine, or through a
// TypeScript loader), and a signal without a listener ends the process at once, with 143 and not a word.
let early = 0
const onEarlySignal = () => {
  if (++early < 2) return
  process.stderr.write("\norchestra: interrupted again: exiting now\n")
  process.exit(130)
}
process.on("SIGINT", onEarlySignal)
process.on("SIGTERM", onEarlySignal)

const [NodeRuntime, NodeServices, { Cause, Console, Deferred, Effect, Exit, Layer, Logger }, { run }, Common] =
  await Promise.all([
    import("@effect/platform-node/NodeRuntime"),
    import("@effect/platform-node/NodeServices"),
    import("effect"),
    import("./Cli.js"),
    import("./Common.js")
  ])
const { exitCodes, stdoutFailed } = Common

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

// Under `--json`, what the command still owes stdout if a second signal ends the process before the drain.
const exiting: { lastWords?: (() => string | undefined) | undefined } = {}
Common.exitOnSecondSignal(process, early, () => exiting.lastWords?.())

Effect.raceFirst(
  Effect.tap(run(process.argv.slice(2), { interrupted: early > 0, exiting }), () => flushStdout),
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

// The runtime listens now. Removed only after it is there: a signal not yet dispatched (the loading keeps the main
// thread busy) would be dropped with the last listener, and the process would go on as if it never came.
process.off("SIGINT", onEarlySignal)
process.off("SIGTERM", onEarlySignal)
