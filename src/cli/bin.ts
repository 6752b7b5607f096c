/**
 * The `orchestra` executable: the only `runMain` of the package. SIGINT / SIGTERM
 * interrupt the command; the manager it provided then drains and releases everything,
 * and the process exits with 130.
 *
 * @since 0.1.0
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { Cause, Effect, Exit, Layer, Logger } from "effect"
import { run } from "./Cli.js"
import { exitCodes } from "./Common.js"

// Logs go to stderr so that `--json` output on stdout stays parseable.
const environment = Layer.merge(NodeServices.layer, Layer.succeed(Logger.LogToStderr, true))

run(process.argv.slice(2)).pipe(
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
