/**
 * What a command does before and around its calls: load and check the config (the same
 * checks in every command), check the domains it names, provide the manager, and draw
 * progress. Loaded with the command's handler, never for `--help`.
 *
 * @since 0.2.0
 */
import { Config, Console, Context, Effect, type FileSystem, Layer, Option, type Path, Stdio, Stream } from "effect"
import type { ProgressEvent } from "../Batch.js"
import { defaultMaxItems } from "../batch/limits.js"
import * as Input from "../Input.js"
import type * as Orchestra from "../Orchestra.js"
import { type Common, type ExitCode, exitCodes, failWith, formatMs, splitList, stdoutClosed } from "./Common.js"
import * as CliConfig from "./Config.js"
import * as Setup from "./Setup.js"

/**
 * Loads the config and runs every check (the same in every command); a bad one is
 * reported with each wrong field and ends the command with exit code 2. Builds nothing.
 *
 * @since 0.2.0
 * @category combinators
 */
export const prepare = (common: Common): Effect.Effect<Setup.Checked, ExitCode, FileSystem.FileSystem | Path.Path> =>
  Effect.gen(function* () {
    // `--config "$UNSET"`: resolved as it stands, "" would name the working directory.
    if (Option.isSome(common.config) && common.config.value.trim().length === 0) {
      return yield* failWith(common, exitCodes.usage, "--config is empty: give the path of a config file", {
        kind: "usage"
      })
    }
    const fromEnv = yield* Config.option(Config.String("ORCHESTRA_CONFIG")).pipe(
      Effect.orElseSucceed(() => Option.none<string>())
    )
    // As `--config "  "`: resolved, spaces name a file no one can see in the message. ("" is read as not set, as
    // Effect's config reads every empty variable.)
    if (Option.isNone(common.config) && Option.isSome(fromEnv) && fromEnv.value.trim().length === 0) {
      return yield* failWith(
        common,
        exitCodes.usage,
        "ORCHESTRA_CONFIG is empty: set it to a config file's path, or unset it",
        { kind: "usage" }
      )
    }
    const loaded = yield* CliConfig.load(common.config, fromEnv)
    return yield* Setup.check(loaded)
  }).pipe(
    Effect.catchTag("ConfigFileError", (error) =>
      failWith(common, exitCodes.usage, error.message, {
        kind: "config",
        file: error.file,
        issues: CliConfig.shownIssues(error.issues),
        ...(error.issues.length > CliConfig.maxShownIssues
          ? { moreIssues: error.issues.length - CliConfig.maxShownIssues }
          : {})
      })
    )
  )

/**
 * The library's services a command calls (`Executor`, `Router`, `Batch`), loaded when the command
 * is about to call them: after its checks, so that a refusal loads none of them.
 *
 * @since 0.3.0
 * @category combinators
 */
export const library: Effect.Effect<typeof import("./library.js")> = Effect.promise(() => import("./library.js"))

/**
 * Runs `program` with the manager of a checked config. The manager's scope closes when
 * `program` ends: calls in flight drain, providers are released. A provider that cannot
 * start ends the command (exit code 1; 2 for an option a layer refused). Interrupted
 * (Ctrl-C, SIGTERM), it says so on stderr before the manager drains, unless stdout's
 * reader went away (`| head`).
 *
 * @since 0.1.0
 * @category combinators
 */
export const provideOrchestra =
  (common: Common, checked: Setup.Checked, overrides: Setup.Overrides = {}) =>
  <A, E, R>(program: Effect.Effect<A, E, R>): Effect.Effect<A, E | ExitCode, Exclude<R, Orchestra.Services>> =>
    Effect.provide(
      Effect.onInterrupt(program, () =>
        Effect.flatMap(stdoutClosed, (closed) =>
          closed ? Effect.void : Console.error("\norchestra: interrupted; shutting down")
        )
      ),
      Layer.catch(Setup.orchestraLayer(checked, overrides), (error) =>
        Layer.unwrap(
          (error.issue === undefined
            ? failWith(common, error.kind === "config" ? exitCodes.usage : exitCodes.failed, error.message, {
                kind: error.kind,
                provider: error.provider
              })
            : configError(common, checked, error.issue)) as Effect.Effect<Layer.Layer<Orchestra.Services>, ExitCode>
        )
      )
    )

/** An option a layer refused that the checks let through: said as every config issue is, naming the file and the field. */
const configError = (common: Common, checked: Setup.Checked, issue: CliConfig.Issue) => {
  const error = new CliConfig.ConfigFileError({ file: checked.loaded.file ?? "(built-in default)", issues: [issue] })
  return failWith(common, exitCodes.usage, error.message, {
    kind: "config",
    file: error.file,
    issues: CliConfig.shownIssues(error.issues)
  })
}

/**
 * Fails with exit code 2 when a name is not a domain of the config (checked before any
 * provider is built).
 *
 * @since 0.1.0
 * @category combinators
 */
export const checkDomains = (
  common: Common,
  checked: Setup.Checked,
  names: ReadonlyArray<string>
): Effect.Effect<void, ExitCode> => {
  const known = Setup.domainNames(checked.loaded)
  const unknown = names.find((name) => !known.includes(name))
  if (unknown === undefined) return Effect.void
  // As the library says it: some names, not the thousands a config may declare.
  const shown =
    known.length > knownShown ? [...known.slice(0, knownShown), `and ${known.length - knownShown} more`] : known
  const name = unknown.length > 64 ? `${Input.wholePrefix(unknown, 64)}...` : unknown
  return failWith(common, exitCodes.usage, `unknown domain "${name}" (known: ${shown.join(", ")})`, { kind: "usage" })
}

const knownShown = 20

/**
 * Fails with exit code 2, naming the flag, when a comma-separated flag (`--prompts`,
 * `--fallback`) would split a domain whose own name has a comma: `--prompts "a,b: q"` with a
 * domain `a,b` would run two prompts (`a`, and `q` on domain `b`) for the one meant, and
 * `--fallback "a,b"` fall back to other domains than the one named. Which was meant cannot
 * be told, so neither runs.
 *
 * @since 0.3.0
 * @category combinators
 */
export const checkSplitFlags = (
  common: Common,
  checked: Setup.Checked,
  flags: { readonly prompts?: Option.Option<string> | undefined; readonly fallback?: Option.Option<string> | undefined }
): Effect.Effect<void, ExitCode> => {
  const names = Setup.domainNames(checked.loaded)
    .map((name) => ({ name, parts: splitList(name) }))
    .filter(({ parts }) => parts.length > 1)
  if (names.length === 0) return Effect.void
  const given = [
    ["--prompts", flags.prompts, "give these prompts with --file"],
    ["--fallback", flags.fallback, "it cannot be named there"]
  ] as const
  for (const [flag, value, instead] of given) {
    if (value === undefined || Option.isNone(value)) continue
    const pieces = splitList(value.value)
    // In --prompts the name is a prefix (`a,b: q`), in --fallback a whole entry.
    const last = flag === "--prompts" ? startsWithDomain : (piece: string, part: string) => piece === part
    const split = names.find(({ parts }) => {
      for (let i = 0; i + parts.length <= pieces.length; i++) {
        if (parts.every((part, j) => (j < parts.length - 1 ? pieces[i + j] === part : last(pieces[i + j]!, part)))) {
          return true
        }
      }
      return false
    })
    if (split !== undefined) {
      const name = split.name.length > 64 ? `${Input.wholePrefix(split.name, 64)}...` : split.name
      return failWith(
        common,
        exitCodes.usage,
        `${flag} is split at commas, and the domain "${name}" has one in its name: ${instead}`,
        { kind: "usage" }
      )
    }
  }
  return Effect.void
}

const startsWithDomain = (piece: string, name: string): boolean =>
  piece.startsWith(name) && /^\s*:/.test(piece.slice(name.length))

/**
 * The most items one batch of the config's manager takes (`policies.maxItems`): more prompts
 * are refused as they are read (`Prompts.read`), before any provider is built or any call made.
 *
 * @since 0.3.0
 * @category utils
 */
export const maxItemsOf = (checked: Setup.Checked): number =>
  checked.loaded.config.policies?.maxItems ?? defaultMaxItems

const envVar = (name: string) =>
  Config.option(Config.String(name)).pipe(
    Effect.map(Option.getOrUndefined),
    Effect.orElseSucceed(() => undefined)
  )

const failures = (failed: number) => (failed > 0 ? `, ${failed} failed` : "")

/**
 * The width of stderr's terminal in columns, asked at each redraw of a progress bar: `undefined`
 * when it is not known (stderr is no terminal). Node's `process.stderr.columns` unless provided
 * (a test, an embedding that draws stderr elsewhere).
 *
 * @since 0.3.0
 * @category output
 */
export const StderrColumns = Context.Reference<() => number | undefined>("effect-orchestra/cli/StderrColumns", {
  defaultValue: () => () => process.stderr.columns
})

/** The least time between two redraws of a progress bar (its last state is always drawn). */
const redrawMs = 100

/**
 * A progress bar on stderr, drawn only when stderr is a terminal that can redraw a line
 * (not `TERM=dumb`), and not in CI (`CI` set, but not to `false` or `0`): a CI that gives the
 * process a terminal keeps each redraw as a line of its log. Redrawn at most every 100 ms, and at the end;
 * cut to the terminal's width ({@link StderrColumns}), the bar narrowed first.
 *
 * @since 0.1.0
 * @category output
 */
export const progressBar = Effect.fnUntraced(function* (label: string, total: number) {
  const stdio = yield* Stdio.Stdio
  const term = yield* envVar("TERM")
  const ci = yield* envVar("CI")
  const inCi = ci !== undefined && !["", "false", "0"].includes(ci.trim().toLowerCase())
  const enabled = (yield* stdio.stderrIsTerminal) && term !== "dumb" && !inCi
  // Through the Stdio service, as the rest of the command writes: a line that cannot be drawn fails nothing.
  const write = (text: string) => Stream.run(Stream.make(text), stdio.stderr()).pipe(Effect.ignore)
  let failed = 0
  // When the bar was last drawn (the batch's elapsed milliseconds): a redraw per item would cost a batch of fast
  // calls more than its calls, and no one reads a bar redrawn more often than this.
  let drawnAt = Number.NEGATIVE_INFINITY
  const columns = yield* StderrColumns
  const line = (done: number, elapsedMs: number) => {
    const head = `${label.padEnd(11)} `
    const tail = ` ${done}/${total}${failures(failed)}  ${formatMs(elapsedMs)}`
    // Read at each redraw, to follow a resized window. A line as wide as the terminal wraps (some wrap at its last
    // column already), and each redraw, back only to the start of the last line, leaves a line behind.
    const known = columns()
    const room = known !== undefined && Number.isFinite(known) && known > 0 ? known - 1 : Number.POSITIVE_INFINITY
    const width = Math.min(28, room - head.length - tail.length - 2)
    if (width < 5) return `\r${`${head}${tail.slice(1)}`.slice(0, room)}\u001b[K`
    const filled = total === 0 ? width : Math.round((width * done) / total)
    return `\r${head}[${"█".repeat(filled)}${"░".repeat(width - filled)}]${tail}\u001b[K`
  }
  return {
    onEvent: (event: ProgressEvent): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (!enabled || event._tag === "Started" || event._tag === "Retried") return Effect.void
        if (event._tag === "Failed") failed++
        if (event.done < total && event.elapsedMs - drawnAt < redrawMs) return Effect.void
        drawnAt = event.elapsedMs
        return write(line(event.done, event.elapsedMs))
      }),
    end: enabled ? write("\n") : Effect.void
  }
})
