/**
 * What every command shares: the `--json` and `--config` options, exit codes, loading the
 * config and providing the manager, and output helpers (JSON, errors, the progress bar).
 *
 * @since 0.1.0
 */
import * as Options from "@effect/cli/Options"
import type * as FileSystem from "@effect/platform/FileSystem"
import type * as Path from "@effect/platform/Path"
import { Console, Data, Effect, Layer, type Option } from "effect"
import { type AiError, reasonOf } from "../AiError.js"
import type { ProgressEvent } from "../Batch.js"
import type * as Orchestra from "../Orchestra.js"
import * as CliConfig from "./Config.js"
import { domainNames, orchestraLayer, type Overrides } from "./Setup.js"

/**
 * The process exit code a command ends with: 0 ok, 1 a call (or a benchmark item)
 * failed or a provider could not start, 2 bad usage or a bad config, 130 interrupted.
 *
 * @since 0.1.0
 * @category errors
 */
export class ExitCode extends Data.TaggedError("ExitCode")<{ readonly code: number }> {}

/**
 * @since 0.1.0
 * @category constants
 */
export const exitCodes = { ok: 0, failed: 1, usage: 2, interrupted: 130 } as const

/**
 * @since 0.1.0
 * @category options
 */
export const json = Options.boolean("json").pipe(
  Options.withDescription("Machine-readable output on stdout (one JSON document; JSON lines for `start`)")
)

/**
 * @since 0.1.0
 * @category options
 */
export const config = Options.text("config").pipe(
  Options.withDescription(
    "Config file (default: $ORCHESTRA_CONFIG, else ./orchestra.config.json if present, else the bundled local model)"
  ),
  Options.optional
)

/**
 * @since 0.1.0
 * @category models
 */
export interface Common {
  readonly json: boolean
  readonly config: Option.Option<string>
}

/**
 * Prints one JSON document (pretty) or one JSON line (`line: true`) on stdout.
 *
 * @since 0.1.0
 * @category output
 */
export const printJson = (value: unknown, line = false): Effect.Effect<void> =>
  Console.log(line ? JSON.stringify(value) : JSON.stringify(value, null, 2))

/**
 * An `AiError` as plain data (no causes, no secrets).
 *
 * @since 0.1.0
 * @category output
 */
export const errorJson = (error: AiError): Record<string, unknown> => {
  const out: Record<string, unknown> = { _tag: error._tag, reason: reasonOf(error), message: error.message }
  if (error._tag === "ModelError") {
    if (error.provider !== undefined) out["provider"] = error.provider
    if (error.status !== undefined) out["status"] = error.status
    if (error.field !== undefined) out["field"] = error.field
  }
  return out
}

/**
 * @since 0.1.0
 * @category output
 */
export const errorText = (error: AiError): string => `${error._tag}(${reasonOf(error)}): ${error.message}`

/**
 * Milliseconds for people: `812.3 ms`, `1.52 s`.
 *
 * @since 0.1.0
 * @category output
 */
export const formatMs = (ms: number): string => (ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`)

/**
 * Reports a usage or setup problem (stderr; with `--json` also a JSON document on stdout)
 * and ends the command with `code`.
 *
 * @since 0.1.0
 * @category output
 */
export const failWith = (
  common: Pick<Common, "json">,
  code: number,
  message: string,
  details: Record<string, unknown> = {},
  line = false
): Effect.Effect<never, ExitCode> =>
  Effect.zipRight(
    Effect.zipRight(
      Console.error(`orchestra: ${message}`),
      common.json ? printJson({ ok: false, error: { message, ...details } }, line) : Effect.void
    ),
    Effect.fail(new ExitCode({ code }))
  )

/**
 * Runs `program` with the manager a config declares. The manager's scope closes when
 * `program` ends: in-flight calls drain, providers are released. A provider that cannot
 * start ends the command (exit code 2 for a missing key, 1 otherwise).
 *
 * @since 0.1.0
 * @category combinators
 */
export const provideOrchestra =
  (
    common: Common,
    loaded: CliConfig.Loaded,
    overrides: Overrides = {},
    options: { readonly jsonLines?: boolean } = {}
  ) =>
  <A, E, R>(program: Effect.Effect<A, E, R>): Effect.Effect<A, E | ExitCode, Exclude<R, Orchestra.Services>> =>
    Effect.provide(
      program,
      orchestraLayer(loaded, overrides).pipe(
        Layer.catchAll((error) => {
          const reported: Effect.Effect<Layer.Layer<Orchestra.Services>, ExitCode> = failWith(
            common,
            error.kind === "config" ? exitCodes.usage : exitCodes.failed,
            error.message,
            { kind: error.kind, provider: error.provider },
            options.jsonLines
          )
          return Layer.unwrapEffect(reported)
        })
      )
    )

/**
 * Fails with exit code 2 when a name is not a domain of the config (checked before any
 * provider is built).
 *
 * @since 0.1.0
 * @category combinators
 */
export const checkDomains = (
  common: Common,
  loaded: CliConfig.Loaded,
  names: ReadonlyArray<string>,
  options: { readonly jsonLines?: boolean } = {}
): Effect.Effect<void, ExitCode> => {
  const known = domainNames(loaded)
  const unknown = names.find((name) => !known.includes(name))
  return unknown === undefined
    ? Effect.void
    : failWith(
        common,
        exitCodes.usage,
        `unknown domain "${unknown}" (known: ${known.join(", ")})`,
        { kind: "usage" },
        options.jsonLines
      )
}

/**
 * Loads the config; a bad one is reported with every wrong field and ends the command
 * with exit code 2.
 *
 * @since 0.1.0
 * @category combinators
 */
export const loadConfig = (
  common: Common,
  options: { readonly jsonLines?: boolean } = {}
): Effect.Effect<CliConfig.Loaded, ExitCode, FileSystem.FileSystem | Path.Path> =>
  CliConfig.load(common.config).pipe(
    Effect.catchTag("ConfigFileError", (error) =>
      failWith(
        common,
        exitCodes.usage,
        error.message,
        { kind: "config", file: error.file, issues: error.issues },
        options.jsonLines
      )
    )
  )

/**
 * Splits `domain: query` when `domain` is a known domain; otherwise the whole line is the query.
 *
 * @since 0.1.0
 * @category utils
 */
export const parseQuery = (
  line: string,
  domains: ReadonlyArray<string>
): { readonly domain: string | undefined; readonly query: string } => {
  const match = /^\s*([\w.-]+)\s*:\s*([\s\S]*)$/.exec(line)
  if (match !== null && domains.includes(match[1]!)) return { domain: match[1]!, query: match[2]!.trim() }
  return { domain: undefined, query: line.trim() }
}

/**
 * Comma-separated values, trimmed, empty ones dropped.
 *
 * @since 0.1.0
 * @category utils
 */
export const splitList = (text: string): ReadonlyArray<string> =>
  text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0)

/**
 * A progress bar on stderr, drawn only when stderr is a terminal.
 *
 * @since 0.1.0
 * @category output
 */
export const progressBar = (label: string, total: number) => {
  const enabled = process.stderr.isTTY === true
  let failed = 0
  const draw = (done: number, elapsedMs: number) => {
    const width = 28
    const filled = total === 0 ? width : Math.round((width * done) / total)
    const failures = failed > 0 ? `, ${failed} failed` : ""
    process.stderr.write(
      `\r${label.padEnd(11)} [${"█".repeat(filled)}${"░".repeat(width - filled)}] ${done}/${total}${failures}  ${formatMs(elapsedMs)}\u001b[K`
    )
  }
  return {
    onEvent: (event: ProgressEvent): Effect.Effect<void> =>
      Effect.sync(() => {
        if (!enabled) return
        if (event._tag === "Failed") failed++
        draw(event.done, event.elapsedMs)
      }),
    end: Effect.sync(() => {
      if (enabled) process.stderr.write("\n")
    })
  }
}
