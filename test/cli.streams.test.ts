/**
 * Where the `orchestra` command writes, in process (the command's own `run` over a test
 * console, test stdio and a scripted terminal): data on stdout, questions and prompts for
 * the person at the terminal on stderr, and under `--json` one JSON document on stdout
 * whatever failed.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as NodePath from "node:path"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { afterAll, assert, describe, it } from "@effect/vitest"
import {
  type Cause,
  ConfigProvider,
  Deferred,
  Exit,
  Fiber,
  FileSystem,
  Console,
  Effect,
  Layer,
  Option,
  Queue,
  Sink,
  Stdio,
  Stream,
  Terminal
} from "effect"
import * as Cli from "../src/cli/Cli.js"
import { StderrColumns } from "../src/cli/Manager.js"

const dir = mkdtempSync(NodePath.join(tmpdir(), "orchestra-cli-streams-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const writeConfig = (name: string, config: unknown): string => {
  const file = NodePath.join(dir, name)
  writeFileSync(file, JSON.stringify(config, null, 2))
  return file
}

const key = (name: string, input?: string): Terminal.UserInput => ({
  input: Option.fromUndefinedOr(input),
  key: { name, ctrl: false, meta: false, shift: false }
})
const enter = key("return")

const decoder = new TextDecoder()
const recordInto = (into: Array<string>) => (chunk: string | Uint8Array) =>
  Effect.sync(() => void into.push(typeof chunk === "string" ? chunk : decoder.decode(chunk)))

interface Session {
  readonly stdin?: string | undefined
  readonly stdinIsTerminal?: boolean | undefined
  /** Default: true (stderr on the terminal, stdout redirected). */
  readonly stderrIsTerminal?: boolean | undefined
  /** Keys typed at the terminal, in order (the wizard's answers). */
  readonly keys?: ReadonlyArray<Terminal.UserInput> | undefined
  /** After the keys, Ctrl-C: the terminal ends its input, as Node's does. */
  readonly quit?: boolean | undefined
  /** In place of the real file system. */
  readonly fs?: Layer.Layer<FileSystem.FileSystem> | undefined
  /** stdin stays open after `stdin` (a person who has not typed the next line yet). */
  readonly stdinOpen?: boolean | undefined
  /** Completed at the first line written to stdout. */
  readonly printed?: Deferred.Deferred<void> | undefined
  /** Where stdout's text goes (read it even when the command is interrupted). */
  readonly stdout?: Array<string> | undefined
  /** Called after each line written to stdout. */
  readonly onPrint?: (() => void) | undefined
  /** A signal came while the modules loaded (bin.ts). */
  readonly interrupted?: boolean | undefined
}

/**
 * Runs the command with stdout redirected (not a terminal) and stderr on a terminal.
 * `stdout` is everything that reached stdout: the console's log and what the terminal
 * service displayed (Node's terminal writes to stdout); `stderr` the console's errors and
 * stdio's stderr.
 */
const inProcess = (argv: ReadonlyArray<string>, session: Session = {}) =>
  Effect.gen(function* () {
    const stdout: Array<string> = session.stdout ?? []
    const stderr: Array<string> = []
    const console: Console.Console = {
      ...globalThis.console,
      log: (...args: ReadonlyArray<unknown>) => {
        stdout.push(`${args.join(" ")}\n`)
        if (session.printed !== undefined) Deferred.doneUnsafe(session.printed, Exit.void)
        session.onPrint?.()
      },
      error: (...args: ReadonlyArray<unknown>) => void stderr.push(`${args.join(" ")}\n`)
    }
    const keys = yield* Queue.unbounded<Terminal.UserInput, Cause.Done>()
    yield* Queue.offerAll(keys, session.keys ?? [])
    if (session.quit === true) yield* Queue.end(keys)
    const terminal = Terminal.make({
      columns: Effect.succeed(80),
      rows: Effect.succeed(24),
      size: Effect.die("unused"),
      readInput: Effect.succeed(keys as never),
      readLine: Effect.die("unused"),
      display: (text) => Effect.sync(() => void stdout.push(text))
    })
    const code = yield* Cli.run(argv, { interrupted: session.interrupted }).pipe(
      session.fs === undefined ? (effect) => effect : Effect.provide(session.fs),
      Effect.provide(
        Layer.mergeAll(
          NodeServices.layer,
          Layer.succeed(Terminal.Terminal, terminal),
          Stdio.layerTest({
            stdin: Stream.make(new TextEncoder().encode(session.stdin ?? "")).pipe(
              Stream.concat(session.stdinOpen === true ? Stream.never : Stream.empty)
            ),
            stdinIsTerminal: Effect.succeed(session.stdinIsTerminal ?? false),
            stdoutIsTerminal: Effect.succeed(false),
            stderrIsTerminal: Effect.succeed(session.stderrIsTerminal ?? true),
            stdout: () => Sink.forEach(recordInto(stdout)),
            stderr: () => Sink.forEach(recordInto(stderr))
          }),
          ConfigProvider.layer(ConfigProvider.fromUnknown({}))
        )
      ),
      Effect.provideService(Console.Console, console)
    )
    return { code, stdout: stdout.join(""), stderr: stderr.join("") }
  })

describe("orchestra asks its questions on the terminal, not into redirected stdout", () => {
  it.live("start: the banner and the `orchestra>` prompt go to stderr, the answers to stdout", () =>
    Effect.gen(function* () {
      const config = writeConfig("start.json", { providers: { m: { type: "mock", reply: "the answer" } } })
      const result = yield* inProcess(["start", "--config", config], {
        stdinIsTerminal: true,
        stdin: "hi\nexit\n"
      })
      assert.strictEqual(result.code, 0, result.stderr)
      assert.match(result.stdout, /^the answer\n {2}\[\(default provider\) · m\/mock-model · .*\]\n$/)
      assert.include(result.stderr, "orchestra session: domains")
      assert.include(result.stderr, "orchestra> ")
    })
  )

  it.live("start with stderr redirected too (`2> errors.log`) shows no banner or prompt: nobody would see them", () =>
    Effect.gen(function* () {
      const config = writeConfig("start-logged.json", { providers: { m: { type: "mock", reply: "the answer" } } })
      const result = yield* inProcess(["start", "--config", config], {
        stdinIsTerminal: true,
        stderrIsTerminal: false,
        stdin: "hi\nexit\n"
      })
      assert.strictEqual(result.code, 0, result.stderr)
      assert.include(result.stdout, "the answer")
      assert.strictEqual(result.stderr, "")
    })
  )

  it.live("--wizard: its questions go to stderr; stdout holds only what the command printed", () =>
    Effect.gen(function* () {
      // Every optional flag declined (Enter), then "Run this command?" accepted (Enter).
      const result = yield* inProcess(["stats", "--wizard"], { stdinIsTerminal: true, keys: Array(12).fill(enter) })
      assert.strictEqual(result.code, 0, result.stderr)
      assert.match(result.stdout, /^Execution stats \(empty\)\n/)
      assert.notInclude(result.stdout, "wizard")
      assert.notInclude(result.stdout, "--concurrency")
      assert.include(result.stderr, "--concurrency")
      assert.include(result.stderr, "orchestra stats")
    })
  )
  it.live("--wizard keeps the flags given with it: they are not asked again, and the command runs with them", () =>
    Effect.gen(function* () {
      const config = writeConfig("wizard-given.json", { providers: { m: { type: "mock", reply: "wizard answer" } } })
      // Asked: --file, --domain, --fallback, --max-tokens (each declined), then "Run this command?" (accepted). One
      // question more and the keys run out: the wizard is cancelled (130).
      const result = yield* inProcess(
        ["bench", "--wizard", "-c", "3", "--prompts", "a,b", "--rounds", "1", "--json", "--config", config],
        { stdinIsTerminal: true, keys: Array(5).fill(enter), quit: true }
      )
      assert.strictEqual(result.code, 0, result.stderr)
      const document = JSON.parse(result.stdout) as {
        ok: boolean
        concurrency: number
        rounds: number
        prompts: number
      }
      assert.deepInclude(document, { ok: true, concurrency: 3, rounds: 1, prompts: 2 })
      assert.include(result.stderr, "(--max-tokens)?")
      for (const flag of ["--concurrency", "--prompts", "--rounds", "--json", "--config"]) {
        assert.notInclude(result.stderr, `(${flag})?`)
      }
      assert.include(result.stderr, `orchestra bench -c 3 --prompts a,b --rounds 1 --json --config ${config}`)
    })
  )

  it.live("--wizard without a command keeps --json and --config for the command chosen", () =>
    Effect.gen(function* () {
      const config = writeConfig("wizard-root.json", { providers: { m: { type: "mock" } } })
      // The command: `stats` (three down from `test`); its six optional flags declined; run it.
      const down = key("down")
      const result = yield* inProcess(["--json", "--wizard", "--config", config], {
        stdinIsTerminal: true,
        keys: [down, down, down, enter, ...Array(7).fill(enter)],
        quit: true
      })
      assert.strictEqual(result.code, 0, result.stderr)
      assert.deepInclude(JSON.parse(result.stdout) as object, { ok: true, prompts: 0, config })
      assert.include(result.stderr, "(--max-tokens)?")
      assert.notInclude(result.stderr, "(--json)?")
    })
  )

  it.live("--wizard with a flag the command does not have says so before asking anything (exit 2)", () =>
    Effect.gen(function* () {
      const result = yield* inProcess(["test", "--wizard", "--rounds", "3", "--json"], {
        stdinIsTerminal: true,
        quit: true
      })
      assert.strictEqual(result.code, 2, result.stderr)
      assert.include(result.stderr, "orchestra: --rounds is not a flag of test")
      assert.notInclude(result.stderr, "Set ")
      assert.deepStrictEqual(JSON.parse(result.stdout), {
        ok: false,
        error: { message: "--rounds is not a flag of test (see orchestra test --help)", kind: "usage" }
      })
    })
  )

  it.live("--wizard cancelled (Ctrl-C) says so on stderr and exits with 130: nothing ran", () =>
    Effect.gen(function* () {
      const result = yield* inProcess(["stats", "--wizard"], { stdinIsTerminal: true, keys: [enter], quit: true })
      assert.strictEqual(result.code, 130, result.stderr)
      assert.strictEqual(result.stdout, "")
      assert.include(result.stderr, "orchestra: --wizard cancelled: nothing ran")
    })
  )
  it.live(
    '--wizard answered no to "Run this command?" is cancelled as Ctrl-C is: said, JSON under --json, exit 130',
    () =>
      Effect.gen(function* () {
        // Every optional flag of stats asked (eight, seven with --json given) declined (Enter), then "Run this
        // command?" turned to no and submitted.
        const declined = (asked: number) => [...Array(asked).fill(enter), key("right"), enter]
        const plain = yield* inProcess(["stats", "--wizard"], { stdinIsTerminal: true, keys: declined(8) })
        assert.strictEqual(plain.code, 130, plain.stderr)
        assert.notInclude(plain.stdout, "Execution stats")
        assert.include(plain.stderr, "orchestra: --wizard cancelled: nothing ran")
        const document = yield* inProcess(["stats", "--wizard", "--json"], { stdinIsTerminal: true, keys: declined(7) })
        assert.strictEqual(document.code, 130, document.stderr)
        assert.deepStrictEqual(JSON.parse(document.stdout), {
          ok: false,
          error: { message: "--wizard cancelled: nothing ran", kind: "interrupted" }
        })
      })
  )
  it.live("--wizard=true is --wizard; --wizard=false, --wizard no and --no-wizard run the command without one", () =>
    Effect.gen(function* () {
      const refused = yield* inProcess(["test", "--wizard=true", "--json"])
      assert.strictEqual(refused.code, 2, refused.stderr)
      assert.include(refused.stderr, "--wizard asks its questions on a terminal")
      assert.deepInclude(JSON.parse(refused.stdout) as object, { ok: false })
      const config = writeConfig("no-wizard.json", { providers: { m: { type: "mock", reply: "no wizard" } } })
      for (const off of [["--wizard=false"], ["--wizard", "no"], ["--no-wizard"]]) {
        const result = yield* inProcess(["test", ...off, "-p", "hi", "--json", "--config", config])
        assert.strictEqual(result.code, 0, result.stderr)
        assert.deepInclude(JSON.parse(result.stdout) as object, { ok: true, answer: "no wizard" }, off.join(" "))
      }
    })
  )
  it.live("--wizard --json cancelled puts its JSON error on stdout, as an interruption does", () =>
    Effect.gen(function* () {
      const document = yield* inProcess(["stats", "--wizard", "--json"], { stdinIsTerminal: true, quit: true })
      assert.strictEqual(document.code, 130, document.stderr)
      assert.deepStrictEqual(JSON.parse(document.stdout), {
        ok: false,
        error: { message: "--wizard cancelled: nothing ran", kind: "interrupted" }
      })
      const line = yield* inProcess(["start", "--wizard", "--json"], { stdinIsTerminal: true, quit: true })
      assert.strictEqual(line.code, 130, line.stderr)
      assert.deepStrictEqual(JSON.parse(line.stdout), {
        type: "error",
        error: { message: "--wizard cancelled: nothing ran", kind: "interrupted" }
      })
    })
  )
})

describe("orchestra bench's progress bar", () => {
  it.live("is drawn on the Stdio service's stderr, as every other write of the command goes through its services", () =>
    Effect.gen(function* () {
      const config = writeConfig("progress.json", { providers: { m: { type: "mock" } } })
      const result = yield* inProcess(["bench", "--prompts", "a,b", "--rounds", "1", "--json", "--config", config])
      assert.strictEqual(result.code, 0, result.stderr)
      // Redrawn in place (a carriage return, the rest of the line cleared), and ended with a newline.
      assert.match(result.stderr, /\r.*\[█+\] 2\/2 .*\[K\n/)
      assert.include(result.stderr, "\u001b[K\n")
      assert.deepInclude(JSON.parse(result.stdout) as object, { ok: true })
    })
  )

  it.live("is redrawn a few times a second, not at every item (a write each cost the batch more than the call)", () =>
    Effect.gen(function* () {
      const config = writeConfig("progress-many.json", { providers: { m: { type: "mock" } } })
      const prompts = Array.from({ length: 300 }, (_, i) => `p${i}`).join(",")
      const result = yield* inProcess(["bench", "--prompts", prompts, "--rounds", "1", "--json", "--config", config])
      assert.strictEqual(result.code, 0, result.stderr)
      const draws = result.stderr.split("\r").length - 1
      // 600 items answered in two runs, each run well under a second: its first and last state, and few between.
      assert.isAtMost(draws, 60, `${draws} redraws`)
      assert.include(result.stderr, "300/300")
    })
  )
})

describe("orchestra bench's progress bar on a narrow terminal", () => {
  const clearLine = "\u001b[K"
  // Each redraw's visible text: what a carriage return starts, without the clearing of the line's rest.
  const draws = (stderr: string) =>
    stderr
      .split("\r")
      .slice(1)
      .map((draw) => draw.replace(/\n$/, "").replace(clearLine, ""))

  it.live("is cut to stderr's width: a line wider than the terminal wraps, and each redraw then leaves a line", () =>
    Effect.gen(function* () {
      const config = writeConfig("progress-narrow.json", { providers: { m: { type: "mock" } } })
      const bench = (columns: number | undefined) =>
        inProcess(["bench", "--prompts", "a,b", "--rounds", "2", "--json", "--config", config]).pipe(
          Effect.provideService(StderrColumns, () => columns)
        )
      const wide = yield* bench(undefined)
      assert.strictEqual(wide.code, 0, wide.stderr)
      const full = draws(wide.stderr)
      assert.isNotEmpty(full)
      // "sequential 1/2 [████████████████████████████] 2/2  1.2 ms": 57 columns and more.
      for (const draw of full) assert.isAtLeast(draw.length, 57, draw)
      for (const columns of [80, 50, 30, 12, 1]) {
        const result = yield* bench(columns)
        assert.strictEqual(result.code, 0, result.stderr)
        const drawn = draws(result.stderr)
        assert.strictEqual(drawn.length, full.length)
        // Short of the last column, where some terminals wrap already.
        for (const draw of drawn) assert.isAtMost(draw.length, Math.max(columns - 1, 0), `${columns}: ${draw}`)
        if (columns >= 30) for (const draw of drawn) assert.match(draw, / [12]\/2 /, `${columns}: ${draw}`)
      }
      // Wide enough, the line is as it was.
      const roomy = yield* bench(200)
      assert.deepStrictEqual(
        draws(roomy.stderr).map((draw) => draw.replace(/ [\d.]+ m?s$/, "")),
        full.map((draw) => draw.replace(/ [\d.]+ m?s$/, ""))
      )
    })
  )
})

describe("orchestra --json: a command line that cannot be parsed is one JSON error on stdout", () => {
  const usage = (result: { readonly code: number; readonly stdout: string; readonly stderr: string }) => {
    assert.strictEqual(result.code, 2, result.stderr)
    // The help and the message stay on stderr, for the person reading it.
    assert.include(result.stderr, "USAGE")
    const document = JSON.parse(result.stdout) as { ok: boolean; error: { kind: string; message: string } }
    assert.strictEqual(document.ok, false)
    assert.strictEqual(document.error.kind, "usage")
    return document.error.message
  }

  it.live("an unknown flag, a bad number, a missing flag, no command", () =>
    Effect.gen(function* () {
      assert.include(usage(yield* inProcess(["test", "-p", "hi", "--bogus", "--json"])), "--bogus")
      // (test, bench and stats read their numbers themselves: one line naming the flag, in cli.review.test.ts.)
      // serve reads its port itself too: one line naming the flag, not the help page.
      for (const [value, shown] of [
        ["many", '"many"'],
        ["1.5", "1.5"],
        ["", '""']
      ] as const) {
        const port = yield* inProcess(["serve", "--json", "--port", value])
        assert.strictEqual(port.code, 2, port.stderr)
        assert.notInclude(port.stderr, "USAGE")
        assert.strictEqual(port.stderr, `orchestra: --port: expected an integer, got ${shown}\n`)
        assert.deepStrictEqual(JSON.parse(port.stdout).error.kind, "usage")
      }
      assert.include(usage(yield* inProcess(["test", "--json"])), "--prompt")
      assert.include(usage(yield* inProcess(["stats", "--json=true", "--rounds", "3"])), "--rounds")
      // No command: --json is for the command, and the error is the missing one.
      assert.include(usage(yield* inProcess(["--json"])), "Missing command: give one of test, bench")
    })
  )

  it.live("--json and --config before the command are the command's (`orchestra --json test`)", () =>
    Effect.gen(function* () {
      const config = writeConfig("before.json", { providers: { m: { type: "mock", reply: "before" } } })
      const answered = yield* inProcess(["--json", "test", "-p", "hi", "--config", config])
      assert.strictEqual(answered.code, 0, answered.stderr)
      assert.deepInclude(JSON.parse(answered.stdout) as object, { ok: true, answer: "before" })
      assert.include(usage(yield* inProcess(["--json", "test"])), "Missing required flag: --prompt")
      const stats = yield* inProcess(["--config", config, "--json=yes", "stats"])
      assert.strictEqual(stats.code, 0, stats.stderr)
      assert.deepInclude(JSON.parse(stats.stdout) as object, { ok: true, config })
      const session = yield* inProcess(["--json", "--config", config, "start"], { stdin: "hi\n" })
      assert.strictEqual(session.code, 0, session.stderr)
      assert.deepInclude(JSON.parse(session.stdout) as object, { type: "answer", answer: "before" })
      // A --config named like a command is its value: the command is `stats`, whose error is a document.
      const named = yield* inProcess(["--config", "start", "stats", "--json"])
      assert.strictEqual(named.code, 2, named.stderr)
      assert.deepInclude(JSON.parse(named.stdout) as object, { ok: false })
      // A mistyped command is the one named, not the value of a --config before it.
      const mistyped = usage(yield* inProcess(["--config", config, "--json", "tset"]))
      assert.include(mistyped, 'Unknown subcommand "tset"')
    })
  )

  it.live("--json false and --no-json ask for no JSON: a usage error is not one on stdout", () =>
    Effect.gen(function* () {
      for (const argv of [
        ["test", "--json", "false"],
        ["test", "--json", "no"],
        ["test", "--no-json"]
      ]) {
        const result = yield* inProcess(argv)
        assert.strictEqual(result.code, 2, result.stderr)
        assert.include(result.stderr, "Missing required flag: --prompt")
        assert.strictEqual(result.stdout, "", argv.join(" "))
      }
    })
  )

  it.live("start --json writes it as one JSON line, as its other errors", () =>
    Effect.gen(function* () {
      const result = yield* inProcess(["start", "--json", "--nope"])
      assert.strictEqual(result.code, 2, result.stderr)
      assert.strictEqual(result.stdout.split("\n").length, 2, result.stdout)
      const line = JSON.parse(result.stdout) as { type: string; error: { kind: string; message: string } }
      assert.strictEqual(line.type, "error")
      assert.strictEqual(line.error.kind, "usage")
      assert.include(line.error.message, "--nope")
    })
  )

  it.live("--wizard off a terminal, and --json after `--` is a value, not the flag", () =>
    Effect.gen(function* () {
      const wizard = yield* inProcess(["test", "--wizard", "--json"])
      assert.strictEqual(wizard.code, 2, wizard.stderr)
      assert.deepInclude(JSON.parse(wizard.stdout) as object, { ok: false })
      const operand = yield* inProcess(["test", "--bogus", "--", "--json"])
      assert.strictEqual(operand.code, 2, operand.stderr)
      assert.strictEqual(operand.stdout, "")
    })
  )
  it.live("a bug (a defect) is a JSON error too, exit 1", () =>
    Effect.gen(function* () {
      const fs = FileSystem.layerNoop({ stat: () => Effect.die(new Error("boom")) })
      const result = yield* inProcess(["stats", "--json", "--file", "prompts.txt"], { fs })
      assert.strictEqual(result.code, 1, result.stderr)
      assert.include(result.stderr, "orchestra: unexpected failure")
      assert.deepStrictEqual(JSON.parse(result.stdout), {
        ok: false,
        error: { message: "unexpected failure: Error: boom", kind: "internal" }
      })
    })
  )
})

describe("orchestra --json interrupted (Ctrl-C, SIGTERM)", () => {
  it.live("start --json ends its lines with an error line saying so", () =>
    Effect.gen(function* () {
      const config = writeConfig("interrupted.json", {
        providers: { m: { type: "mock", script: [{ _tag: "Succeed", text: "first" }, { _tag: "Hang" }] } },
        policies: { executor: { timeout: "none" } }
      })
      const printed = yield* Deferred.make<void>()
      const stdout: Array<string> = []
      const fiber = yield* inProcess(["start", "--json", "--config", config], {
        stdin: "a\nb\n",
        stdinOpen: true,
        printed,
        stdout
      }).pipe(Effect.forkChild)
      yield* Deferred.await(printed)
      const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
      assert.isTrue(Exit.hasInterrupts(exit))
      const lines = stdout
        .join("")
        .trimEnd()
        .split("\n")
        .map((line) => JSON.parse(line) as Record<string, unknown>)
      assert.deepStrictEqual(
        lines.map((line) => line.type),
        ["answer", "error"]
      )
      assert.deepStrictEqual(lines[1]!.error, { message: "interrupted", kind: "interrupted" })
    })
  )
  it.live("signalled before the command ran (while the modules loaded): nothing runs, and it ends interrupted", () =>
    Effect.gen(function* () {
      const config = writeConfig("early.json", { providers: { m: { type: "mock", reply: "ran anyway" } } })
      const stdout: Array<string> = []
      const exit = yield* inProcess(["--json", "test", "-p", "hi", "--config", config], {
        interrupted: true,
        stdout
      }).pipe(Effect.exit)
      assert.isTrue(Exit.hasInterrupts(exit))
      assert.deepStrictEqual(JSON.parse(stdout.join("")), {
        ok: false,
        error: { message: "interrupted", kind: "interrupted" }
      })
    })
  )
  it.live("a document already printed is not followed by a second one (Ctrl-C while the command winds down)", () =>
    Effect.gen(function* () {
      const config = writeConfig("printed.json", { providers: { m: { type: "mock", reply: "done" } } })
      const stdout: Array<string> = []
      let fiber: Fiber.Fiber<unknown, unknown> | undefined
      fiber = yield* inProcess(["test", "-p", "hi", "--json", "--config", config], {
        stdout,
        onPrint: () => fiber?.interruptUnsafe()
      }).pipe(Effect.forkChild)
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.hasInterrupts(exit), "interrupted once the answer was printed")
      assert.deepInclude(JSON.parse(stdout.join("")) as object, { ok: true, answer: "done" })
    })
  )
})
