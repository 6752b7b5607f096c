/**
 * The `orchestra` executable: the only `runMain` of the package. SIGINT / SIGTERM
 * interrupt the command; the manager it provided then drains and releases everything.
 *
 * @since 0.1.0
 */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Cause, Effect, Exit, Logger } from "effect"
import { run } from "./Cli.js"
import { exitCodes } from "./Common.js"

// Logs go to stderr so that `--json` output on stdout stays parseable.
const logger = Logger.replace(Logger.defaultLogger, Logger.withConsoleError(Logger.prettyLoggerDefault))

run(process.argv).pipe(
  Effect.provide(NodeContext.layer),
  Effect.provide(logger),
  NodeRuntime.runMain({
    disablePrettyLogger: true,
    teardown: (exit, onExit) => {
      const code = Exit.isSuccess(exit)
        ? Number(exit.value)
        : Cause.isInterruptedOnly(exit.cause)
          ? exitCodes.interrupted
          : exitCodes.failed
      onExit(code)
      // Nothing of the command is left running; do not wait on handles a native library may keep.
      process.exit(code)
    }
  })
)
