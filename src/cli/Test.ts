/**
 * `orchestra test --prompt "..." [--domain support] [--fallback a,b]`: one call, the
 * answer, its latency and where it came from. The handler is `run/test.ts`.
 *
 * @since 0.1.0
 */
import { Command, Flag } from "effect/cli"
import { config, json, lazy } from "./Common.js"
import { maxTokensFlag } from "./Prompts.js"

/**
 * @since 0.2.0
 * @category flags
 */
export const flags = {
  prompt: Flag.String("prompt").pipe(
    Flag.withAlias("p"),
    Flag.withDescription("The prompt to send (required, not empty)")
  ),
  domain: Flag.String("domain").pipe(
    Flag.withAlias("d"),
    Flag.withDescription("Domain to call (default: the default provider, with the executor's retry policy)"),
    Flag.optional
  ),
  fallback: Flag.String("fallback").pipe(
    Flag.withDescription("Comma-separated domains tried in order when the call fails in a way that falls back"),
    Flag.optional
  ),
  maxTokens: maxTokensFlag(""),
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
  "test",
  flags,
  lazy(() => import("./run/test.js"))
).pipe(Command.withDescription("Send one prompt and print the answer, its latency and where it came from"))
