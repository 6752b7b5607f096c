/**
 * What every command shares: the `--json` and `--config` flags, exit codes, output (JSON,
 * errors), and loading a handler only when its command runs, so that `--help` imports
 * neither the library nor its providers. Everything a command prints for people goes to
 * stdout, diagnostics to stderr; with `--json`, stdout holds only JSON. Text that may hold a
 * provider's words (answers, model ids, error messages) goes through {@link printText} and
 * {@link printError}: on a terminal its control characters are shown escaped, not obeyed.
 *
 * @since 0.1.0
 */
import * as NodeFs from "node:fs/promises"
import {
  Console,
  Deferred,
  Duration,
  Effect,
  Exit,
  type FileSystem,
  Option,
  type PlatformError,
  Result,
  Schema,
  Stdio
} from "effect"
import { Flag } from "effect/cli"
import { type AiError, reasonOf } from "../AiError.js"
import * as Input from "../Input.js"

/**
 * The exit codes: 0 ok, 1 a call (or a benchmark item) failed or a provider could not
 * start, 2 bad usage or a bad config, 130 interrupted.
 *
 * @since 0.1.0
 * @category constants
 */
export const exitCodes = { ok: 0, failed: 1, usage: 2, interrupted: 130 } as const

/**
 * Ends a command with an exit code; what went wrong was already printed.
 *
 * @since 0.1.0
 * @category errors
 */
export class ExitCode extends Schema.TaggedError<ExitCode>("effect-orchestra/cli/ExitCode")("ExitCode", {
  code: Schema.Number
}) {}

/**
 * The first error of writing to stdout: EPIPE once the reader went away (`orchestra start |
 * head -1`). `bin.ts` ends the command when it completes; process.stdout is one per process,
 * and so is this. Without a listener, such an error is an unhandled 'error' event: a stack
 * trace and exit 1. The listener stays for the whole process, so writes made while the
 * command winds down cannot raise it again; only the first error counts.
 *
 * @since 0.3.0
 * @category output
 */
export const stdoutFailed: Deferred.Deferred<NodeJS.ErrnoException> = Deferred.makeUnsafe()
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  Deferred.doneUnsafe(stdoutFailed, Exit.succeed(error))
})

/**
 * Whether stdout's reader went away (then the command is interrupted and nothing it says
 * about that is news to anyone).
 *
 * @since 0.3.0
 * @category output
 */
export const stdoutClosed: Effect.Effect<boolean> = Deferred.isDone(stdoutFailed)

/**
 * What `exitOnSecondSignal` needs of `process`.
 *
 * @since 0.3.0
 * @category models
 */
export interface SignalTarget {
  readonly on: (signal: "SIGINT" | "SIGTERM", listener: () => void) => unknown
  readonly exit: (code: number) => void
  readonly stderr: { readonly write: (text: string) => unknown }
  readonly stdout?: { readonly write: (text: string) => unknown } | undefined
}

/**
 * The first SIGINT or SIGTERM is the runtime's: it interrupts the command, which drains
 * (calls finish or are cancelled, a local model stops, connections close). A second one
 * while that takes its time means the user will not wait: the process exits at once with
 * 130, saying so. `received`: the signals that came before (while the modules loaded).
 * `lastWords`: what stdout still needs before the exit (under `--json`, the error the drain would
 * have printed once over), written there first.
 *
 * @since 0.3.0
 * @category run
 */
export const exitOnSecondSignal = (
  target: SignalTarget,
  received = 0,
  lastWords?: (() => string | undefined) | undefined
): void => {
  let signals = received
  const onSignal = () => {
    signals++
    if (signals < 2) return
    target.stderr.write("\norchestra: interrupted again: exiting now\n")
    const words = lastWords?.()
    if (words !== undefined) target.stdout?.write(`${words}\n`)
    target.exit(exitCodes.interrupted)
  }
  target.on("SIGINT", onSignal)
  target.on("SIGTERM", onSignal)
}

/**
 * @since 0.1.0
 * @category flags
 */
export const json = Flag.Boolean("json").pipe(
  Flag.withDescription("Machine-readable output on stdout (one JSON document; JSON lines for `start`)"),
  Flag.withDefault(false)
)

/**
 * @since 0.1.0
 * @category flags
 */
export const config = Flag.String("config").pipe(
  Flag.withDescription(
    "Config file (default: $ORCHESTRA_CONFIG, else ./orchestra.config.json if present, else the bundled local model)"
  ),
  Flag.optional
)

/**
 * The flags every command has.
 *
 * @since 0.1.0
 * @category models
 */
export interface Common {
  readonly json: boolean
  readonly config: Option.Option<string>
  /** JSON lines (`start`) rather than one document. */
  readonly jsonLines?: boolean | undefined
}

// C0 controls but tab and newline, DEL, and C1 controls (0x9b is a CSI on its own for some terminals).
const isControl = (code: number): boolean =>
  (code < 0x20 && code !== 0x09 && code !== 0x0a) || (code >= 0x7f && code <= 0x9f)

/**
 * Text for a terminal: its control characters (ESC sequences that set the title, move the
 * cursor or clear the screen; a carriage return that overwrites the line; C1 controls) shown
 * as `\x1b`, `\r`, ..., so that a model or an upstream error cannot rewrite the user's
 * terminal. Tabs and newlines are kept (a CRLF is a newline).
 *
 * @since 0.3.0
 * @category output
 */
export const forTerminal = (text: string): string =>
  replaceWhere(text, isControl, (code, next) =>
    code === 0x0d ? (next === 0x0a ? "" : "\\r") : `\\x${code.toString(16).padStart(2, "0")}`
  )

// `text` with each character `test` picks replaced by `by` (given its code and the next one's); no copy when none is.
const replaceWhere = (
  text: string,
  test: (code: number) => boolean,
  by: (code: number, next: number) => string
): string => {
  let out = ""
  let from = 0
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if (!test(code)) continue
    out += text.slice(from, i) + by(code, text.charCodeAt(i + 1))
    from = i + 1
  }
  return from === 0 ? text : out + text.slice(from)
}

const isTerminal = (which: "stdoutIsTerminal" | "stderrIsTerminal"): Effect.Effect<boolean> =>
  Effect.flatMap(Effect.serviceOption(Stdio.Stdio), (stdio) =>
    Option.isSome(stdio) ? stdio.value[which] : Effect.succeed(false)
  )

/**
 * Prints a line for people on stdout: {@link forTerminal} when stdout is a terminal, the
 * text as it is when it goes to a file or a pipe.
 *
 * @since 0.3.0
 * @category output
 */
export const printText = (text: string): Effect.Effect<void> =>
  Effect.flatMap(isTerminal("stdoutIsTerminal"), (terminal) => Console.log(terminal ? forTerminal(text) : text))

/**
 * {@link printText} on stderr.
 *
 * @since 0.3.0
 * @category output
 */
export const printError = (text: string): Effect.Effect<void> =>
  Effect.flatMap(isTerminal("stderrIsTerminal"), (terminal) => Console.error(terminal ? forTerminal(text) : text))

/**
 * Prints one JSON document (pretty), or one JSON line with `jsonLines`, on stdout.
 *
 * @since 0.1.0
 * @category output
 */
export const printJson = (common: Pick<Common, "jsonLines">, value: unknown): Effect.Effect<void> =>
  Console.log(jsonText(common, value))

/**
 * The text {@link printJson} prints (without its newline).
 *
 * @since 0.3.0
 * @category output
 */
export const jsonText = (common: Pick<Common, "jsonLines">, value: unknown): string =>
  asciiControls(common.jsonLines === true ? JSON.stringify(value) : JSON.stringify(value, null, 2))

// JSON.stringify escapes C0 controls but writes DEL and C1 controls (0x9b, a CSI) as they are; as
// `\u` escapes they are the same data, and no terminal a JSON document is shown on obeys them.
const asciiControls = (json: string): string =>
  replaceWhere(
    json,
    (code) => code >= 0x7f && code <= 0x9f,
    (code) => `\\u00${code.toString(16)}`
  )

/**
 * An `AiError` as plain data: what failed and why, never a cause (which may hold a request).
 *
 * @since 0.1.0
 * @category output
 */
export const errorJson = (error: AiError): Record<string, unknown> => {
  const out: Record<string, unknown> = { _tag: error._tag, reason: reasonOf(error), message: error.message }
  switch (error._tag) {
    case "ModelError":
      if (error.provider !== undefined) out.provider = error.provider
      if (error.status !== undefined) out.status = error.status
      if (error.field !== undefined) out.field = error.field
      if (error.retryAfter !== undefined) out.retryAfterMs = Duration.toMillis(error.retryAfter)
      if (error.rateLimit !== undefined) out.rateLimit = error.rateLimit
      if (error.limit !== undefined) out.limit = error.limit
      break
    case "TimeoutError":
      if (error.provider !== undefined) out.provider = error.provider
      out.limit = error.limit
      out.timeoutMs = Duration.toMillis(error.timeout)
      break
    case "StreamInterruptedError":
      if (error.provider !== undefined) out.provider = error.provider
      break
    case "CircuitOpenError":
      out.breaker = error.breaker
      out.state = error.state
      if (error.retryAfter !== undefined) out.retryAfterMs = Duration.toMillis(error.retryAfter)
      break
    case "FallbackExhaustedError":
      out.attempts = error.attempts.map((a) => ({
        ...(a.domain === undefined ? {} : { domain: a.domain }),
        provider: a.provider,
        error: errorJson(a.error)
      }))
      break
  }
  return out
}

/**
 * @since 0.1.0
 * @category output
 */
export const errorText = (error: AiError): string => `${error._tag}(${reasonOf(error)}): ${error.message}`

/**
 * A file or stdin that could not be read, in words (`no such file`, `permission denied`,
 * `not a file (directory)`), else the system's own message (`EIO: i/o error, read`): never
 * the platform's `NotFound: FileSystem.stat (…)`.
 *
 * @since 0.3.0
 * @category output
 */
export const platformErrorText = (error: PlatformError.PlatformError): string =>
  systemErrorText(error.reason.cause) ?? error.reason.description ?? error.message

/**
 * What a path is when it is not a file, in words: `directory`, `character device` (`/dev/null`,
 * a terminal), `block device`, `socket`, `symbolic link`.
 *
 * @since 0.3.0
 * @category output
 */
export const fileTypeText = (type: FileSystem.File.Type): string =>
  type === "Unknown" ? "of an unknown type" : type.replace(/(?<=[a-z])(?=[A-Z])/g, " ").toLowerCase()

// What a Node system error (its `code`) means for a file a user named, else its message.
const systemErrorText = (cause: unknown): string | undefined => {
  const code = typeof cause === "object" && cause !== null && "code" in cause ? cause.code : undefined
  switch (code) {
    case "ENOENT":
      return "no such file"
    case "EACCES":
    case "EPERM":
      return "permission denied"
    case "EISDIR":
      return "not a file (directory)"
    case "ENOTDIR":
      return "no such file (a part of the path is not a folder)"
    case "ELOOP":
      return "too many levels of symbolic links"
  }
  return cause instanceof Error && cause.message.length > 0 ? cause.message : undefined
}

/**
 * At most `limit + 1` bytes of a file or a pipe (`<(make-config)`, `/dev/stdin`), read in order
 * (effect's `FileSystem` reads at positions, which a pipe refuses), so that a runaway pipe is
 * found too large without being read whole; fails with what went wrong, in words.
 *
 * @since 0.3.0
 * @category input
 */
export const readAtMost = (file: string, limit: number): Effect.Effect<Uint8Array, string> =>
  Effect.tryPromise({
    // Opened non-blocking: a blocking open or read of a pipe no one writes to parks a thread of
    // libuv's pool for good, which no signal ends (even `process.exit` waits for that thread). Not
    // blocking, a named pipe without a writer reads as empty, and one that is slow is waited for here,
    // where an interruption (Ctrl-C, SIGTERM) stops the wait.
    try: async (signal) => {
      const handle = await NodeFs.open(file, NodeFs.constants.O_RDONLY | NodeFs.constants.O_NONBLOCK)
      try {
        const chunks: Array<Uint8Array> = []
        // One buffer to read into; each read is copied out at its size: a slice of it would keep it
        // whole (a pipe written 50 bytes at a time would hold 64 KB per 50 bytes).
        const into = Buffer.allocUnsafe(Math.min(65_536, limit + 1))
        let total = 0
        while (total <= limit && !signal.aborted) {
          const read = await handle
            .read(into, 0, Math.min(into.length, limit + 1 - total), null)
            .catch((error: unknown) => {
              if ((error as NodeJS.ErrnoException).code === "EAGAIN") return undefined
              throw error
            })
          if (read === undefined) {
            await new Promise<void>((resolve) => setTimeout(resolve, 10))
            continue
          }
          if (read.bytesRead === 0) break
          chunks.push(new Uint8Array(into.subarray(0, read.bytesRead)))
          total += read.bytesRead
        }
        return Buffer.concat(chunks)
      } finally {
        await handle.close()
      }
    },
    catch: (cause) => systemErrorText(cause) ?? String(cause)
  })

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
  common: Pick<Common, "json" | "jsonLines">,
  code: number,
  message: string,
  details: Record<string, unknown> = {}
): Effect.Effect<never, ExitCode> =>
  Effect.gen(function* () {
    yield* printError(`orchestra: ${message}`)
    if (common.json) {
      yield* printJson(
        common,
        common.jsonLines
          ? { type: "error", error: { message, ...details } }
          : { ok: false, error: { message, ...details } }
      )
    }
    return yield* new ExitCode({ code })
  })

/**
 * A command-line value checked with the library's checks: a wrong one ends the command
 * with exit code 2, naming the flag.
 *
 * @since 0.2.0
 * @category combinators
 */
export const checkFlag = <A>(common: Common, checked: Input.Checked<A>): Effect.Effect<A, ExitCode> =>
  Result.isSuccess(checked)
    ? Effect.succeed(checked.success)
    : failWith(common, exitCodes.usage, `${checked.failure.path}: ${checked.failure.message}`, { kind: "usage" })

/**
 * A flag whose value is an integer, read as text for {@link positiveIntOf}: effect/cli's own
 * integer parsing answers `--max-tokens 1.5` with the command's whole help page, where a
 * value out of range (`0`) gets one line naming the flag. The help still says `integer`.
 *
 * @since 0.3.0
 * @category flags
 */
export const integerFlag = (name: string): Flag.Flag<string> => Flag.String(name).pipe(Flag.withMetavar("integer"))

// A number in decimal (`+8`, `1e3`, ` 5 `): `Number` alone takes `""` as 0 and `0x10` as 16.
const decimal = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?$/i

/**
 * The value of an {@link integerFlag}, checked as the library checks a positive integer (at
 * most `max`): anything else ends the command with exit code 2 and one line naming the flag
 * and the value (`--max-tokens: expected an integer, got 1.5`).
 *
 * @since 0.3.0
 * @category combinators
 */
export const positiveIntOf = (
  common: Common,
  flag: string,
  text: string,
  max?: number
): Effect.Effect<number, ExitCode> => integerOf(common, flag, text, (value) => Input.positiveInt(flag, value, max))

/**
 * The value of an {@link integerFlag} whose range is checked later, where the value is used
 * (`serve --port` by the gateway, which names `--port` or the file's `server.port`), however
 * large it is; a value that is no integer ends the command as {@link positiveIntOf} does.
 *
 * @since 0.3.0
 * @category combinators
 */
export const integerOf = (
  common: Common,
  flag: string,
  text: string,
  // No bound here, not even the safe integers': past it, `--port 1e23` was said to be above 9007199254740991, not 65535.
  check: (value: number) => Input.Checked<number> = (value) => Input.int(flag, value, { max: Number.POSITIVE_INFINITY })
): Effect.Effect<number, ExitCode> => {
  const trimmed = text.trim()
  const value = decimal.test(trimmed) ? Number(trimmed) : Number.NaN
  return checkFlag(
    common,
    Number.isFinite(value)
      ? check(value)
      : Result.fail({
          path: flag,
          message: `expected an integer, got ${JSON.stringify(text.length > 64 ? `${Input.wholePrefix(text, 64)}...` : text)}`
        })
  )
}

/**
 * The domains of `--fallback`, in order. A value that names none (`--fallback ""`, `" , "`)
 * ends the command with exit code 2, as an empty `--config` or `--file` does, rather than
 * running without the fallback it was meant to add.
 *
 * @since 0.3.0
 * @category combinators
 */
export const fallbackOf = (
  common: Common,
  flag: Option.Option<string>
): Effect.Effect<ReadonlyArray<string>, ExitCode> => {
  if (Option.isNone(flag)) return Effect.succeed([])
  const domains = splitList(flag.value)
  return domains.length > 0
    ? Effect.succeed(domains)
    : failWith(common, exitCodes.usage, "--fallback names no domain: give domain names separated by commas", {
        kind: "usage"
      })
}

/**
 * Splits `domain: query` when `domain` is a known domain (any name a domain may have:
 * `customer care`, `soporte-técnico`, `finance:eu`); otherwise the whole line is the
 * query. The query is trimmed and may be empty (`"finance: "`): callers refuse that.
 *
 * @since 0.1.0
 * @category utils
 */
export const parseQuery = (
  line: string,
  domains: ReadonlyArray<string>
): { readonly domain: string | undefined; readonly query: string } => {
  const text = line.trimStart()
  let found: { readonly domain: string; readonly query: string } | undefined
  // The longest name wins (`finance:eu: …` over `finance: eu: …`); each name is looked up once, so a long line costs
  // one pass per domain.
  for (const name of domains) {
    if (!text.startsWith(name) || (found !== undefined && found.domain.length >= name.length)) continue
    let i = name.length
    while (i < text.length && text[i]!.trim() === "") i++
    if (text[i] === ":") found = { domain: name, query: text.slice(i + 1).trim() }
  }
  return found ?? { domain: undefined, query: line.trim() }
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
 * A command's handler from a module loaded when the command runs (not when `--help` is
 * asked for, nor when another command runs).
 *
 * @since 0.2.0
 * @category combinators
 */
export const lazy =
  <A, E, R>(load: () => Promise<{ readonly run: (args: A) => Effect.Effect<void, E, R> }>) =>
  (args: A): Effect.Effect<void, E, R> =>
    Effect.flatMap(
      Effect.promise(() => load()),
      (handler) => handler.run(args)
    )
