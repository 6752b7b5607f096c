/**
 * The `orchestra` command run in process: the command's own `run` over a test console and
 * test stdio, what it printed collected line by line.
 */
import * as NodeServices from "@effect/platform-node/NodeServices"
import { Console, Effect, type FileSystem, Layer, Sink, Stdio, Stream } from "effect"
import * as Cli from "../../src/cli/Cli.js"

export interface Terminal {
  readonly stdin?: string | undefined
  /** stdin, stdout and stderr are all terminals (an interactive `start`); default: only stdout and stderr. */
  readonly stdinIsTerminal?: boolean | undefined
  /** stdout and stderr are terminals; default true. */
  readonly terminal?: boolean | undefined
  /** In place of the real file system. */
  readonly fs?: Layer.Layer<FileSystem.FileSystem> | undefined
  /** Where stderr's lines go (read them even when the command is interrupted). */
  readonly err?: Array<string> | undefined
  /** Where what is written to the Stdio service's stderr goes (the progress bar), each write as it came. */
  readonly drawn?: ((text: string) => void) | undefined
}

const decoder = new TextDecoder()
const drawInto = (drawn: ((text: string) => void) | undefined) => (chunk: string | Uint8Array) =>
  Effect.sync(() => drawn?.(typeof chunk === "string" ? chunk : decoder.decode(chunk)))

/** Runs `orchestra <argv>`: its exit code and what it printed on stdout and stderr (lines joined by "\n"). */
export const inProcess = (argv: ReadonlyArray<string>, options: Terminal = {}) =>
  Effect.gen(function* () {
    const out: Array<string> = []
    const err: Array<string> = options.err ?? []
    const console: Console.Console = {
      ...globalThis.console,
      log: (...args: ReadonlyArray<unknown>) => void out.push(args.join(" ")),
      error: (...args: ReadonlyArray<unknown>) => void err.push(args.join(" "))
    }
    const terminal = options.terminal ?? true
    const code = yield* Cli.run(argv).pipe(
      options.fs === undefined ? (effect) => effect : Effect.provide(options.fs),
      Effect.provide(
        Layer.merge(
          NodeServices.layer,
          Stdio.layerTest({
            stdin: Stream.make(new TextEncoder().encode(options.stdin ?? "")),
            stdinIsTerminal: Effect.succeed(options.stdinIsTerminal ?? false),
            stdoutIsTerminal: Effect.succeed(terminal),
            stderrIsTerminal: Effect.succeed(terminal),
            stderr: () => Sink.forEach(drawInto(options.drawn))
          })
        )
      ),
      Effect.provideService(Console.Console, console)
    )
    return { code, out: out.join("\n"), err: err.join("\n") }
  })
