/**
 * `orchestra bench --prompts "a,b,c" | --file prompts.txt [--concurrency 5] [--rounds 3]`:
 * the same prompts one at a time and `--concurrency` at once, after a warm-up, in
 * alternating rounds. The handler is `run/bench.ts`.
 *
 * @since 0.1.0
 */
import { Command, Flag } from "effect/cli"
import { config, integerFlag, json, lazy } from "./Common.js"
import * as Prompts from "./Prompts.js"

/**
 * The most `--rounds` accepts.
 *
 * @since 0.3.0
 * @category constants
 */
export const maxRounds = 100

/**
 * @since 0.2.0
 * @category flags
 */
export const flags = {
  ...Prompts.flags,
  rounds: integerFlag("rounds").pipe(
    Flag.withDescription(
      `Sequential and concurrent runs each, alternated; the wall time is their median (default 3, at most ${maxRounds})`
    ),
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
  "bench",
  flags,
  lazy(() => import("./run/bench.js"))
).pipe(
  Command.withDescription(
    "Run the prompts (give --prompts or --file) one at a time and concurrently, after a warm-up, in alternating rounds: wall time, speedup, p50/p95 latency, success rate"
  )
)
