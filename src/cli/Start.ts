/**
 * `orchestra start`: an interactive session over stdin, one query per line. The handler
 * is `run/start.ts`.
 *
 * @since 0.1.0
 */
import { Command, Flag } from "effect/cli"
import { config, json, lazy } from "./Common.js"

/**
 * @since 0.2.0
 * @category flags
 */
export const flags = {
  domain: Flag.String("domain").pipe(
    Flag.withAlias("d"),
    Flag.withDescription("Domain of lines without a `domain:` prefix (default: the default provider)"),
    Flag.optional
  ),
  json,
  config
}

/**
 * @since 0.2.0
 * @category models
 */
export type Args = Command.Command.Config.Infer<typeof flags>

/**
 * @since 0.1.0
 * @category commands
 */
export const command = Command.make(
  "start",
  flags,
  lazy(() => import("./run/start.js"))
).pipe(
  Command.withDescription(
    "Interactive session: one query per line (`domain: query`), `stats`, `domains`, `exit`; reads stdin, so it also works in a pipe"
  )
)
