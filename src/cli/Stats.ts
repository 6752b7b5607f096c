/**
 * `orchestra stats [--prompts "a,b" | --file prompts.txt]`: checks the config (exactly as
 * every other command does) and prints the statistics of this process, after running the
 * prompts if any are given. The handler is `run/stats.ts`.
 *
 * @since 0.1.0
 */
import { Command } from "effect/cli"
import { config, json, lazy } from "./Common.js"
import * as Prompts from "./Prompts.js"

/**
 * @since 0.2.0
 * @category flags
 */
export const flags = { ...Prompts.flags, json, config }

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
  "stats",
  flags,
  lazy(() => import("./run/stats.js"))
).pipe(
  Command.withDescription(
    "Check the config and print this process's statistics (empty unless --prompts/--file run first; `stats` inside `start` is live)"
  )
)
