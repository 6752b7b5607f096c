/**
 * The `orchestra` command as a new user meets it, in process (the command's own `run`,
 * over a test console and test stdio): what a config supplies is shown escaped on a
 * terminal, bad flags and files are clear usage errors.
 */
import { execFileSync, spawn } from "node:child_process"
import { EventEmitter } from "node:events"
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as NodePath from "node:path"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { afterAll, assert, describe, it, vi } from "@effect/vitest"
import {
  ByteSize,
  ConfigProvider,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  FileSystem,
  Console,
  Layer,
  Option,
  PlatformError,
  Stdio,
  Stream
} from "effect"
import { CircuitOpenError, ModelError, TimeoutError } from "../src/AiError.js"
import { errorJson, exitOnSecondSignal, readAtMost } from "../src/cli/Common.js"
import * as CliConfig from "../src/cli/Config.js"
import * as Cli from "../src/cli/Cli.js"
import * as Setup from "../src/cli/Setup.js"
import { inProcess } from "./utils/cli.js"

const dir = mkdtempSync(NodePath.join(tmpdir(), "orchestra-cli-defects-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const writeConfig = (name: string, config: unknown): string => {
  const file = NodePath.join(dir, name)
  writeFileSync(file, typeof config === "string" ? config : JSON.stringify(config, null, 2))
  return file
}

// ESC ] 0 ; title BEL (sets the window title), CSI 2 J (clears the screen), a C1 CSI.
const evil = "x\u001b]0;pwned\u0007\u001b[2J\u009b31m"
const shown = "x\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m"
const noControls = (text: string) =>
  assert.isFalse(
    [...text].some((c) => "\u001b\u0007\u009b\r\u007f".includes(c)),
    JSON.stringify(text)
  )

describe("orchestra prints what a config supplies escaped on a terminal", () => {
  const config = () =>
    writeConfig("evil-names.json", {
      providers: { [`p${evil}`]: { type: "mock", reply: "fine", model: `m${evil}` } },
      extraDomains: [{ name: `d${evil}`, provider: `p${evil}`, description: `about ${evil}` }]
    })

  it.live("start's banner and `domains` list show domain and provider names escaped", () =>
    Effect.gen(function* () {
      const session = yield* inProcess(["start", "--config", config()], {
        stdinIsTerminal: true,
        stdin: `domains\nd${evil}: hi\nexit\n`
      })
      assert.strictEqual(session.code, 0, session.err)
      assert.include(session.err, `orchestra session: domains support, technical, finance, d${shown}`)
      assert.include(session.out, `p${shown}/m${shown}`)
      noControls(session.out)
      noControls(session.err)
    })
  )
})

describe("orchestra prints what a config supplies escaped on a terminal, in every command", () => {
  it.live("test, bench, stats and config errors show names, models and paths escaped", () =>
    Effect.gen(function* () {
      const config = writeConfig("evil-every.json", {
        providers: { [`p${evil}`]: { type: "mock", reply: "fine", model: `m${evil}` } },
        extraDomains: [{ name: `d${evil}`, provider: `p${evil}` }]
      })
      const outputs = [
        yield* inProcess(["test", "-p", "hi", "--domain", `d${evil}`, "--config", config]),
        yield* inProcess(["bench", "--prompts", "a", "--rounds", "1", "--domain", `d${evil}`, "--config", config]),
        yield* inProcess(["stats", "--prompts", `d${evil}: a`, "--config", config])
      ]
      for (const { code, out, err } of outputs) {
        assert.strictEqual(code, 0, err)
        noControls(out)
        noControls(err)
      }
      assert.include(outputs[0]!.out, `p${shown} (model m${shown})`)
      assert.include(outputs[1]!.out, `domain d${shown}`)

      const wrong = writeConfig("evil-wrong.json", {
        providers: { m: { type: "mock" } },
        extraDomains: [{ name: "x", provider: `p${evil}` }]
      })
      const failures = [
        yield* inProcess(["test", "-p", "hi", "--config", wrong]),
        yield* inProcess(["test", "-p", "hi", "--config", NodePath.join(dir, `missing${evil}.json`)]),
        yield* inProcess(["test", "-p", "hi", "--domain", `nope${evil}`, "--config", config])
      ]
      // A config file's issue quotes a name as every check shows a value (Input.shown: JSON's escapes, bounded).
      const quoted = "x\\u001b]0;pwned\\u0007\\u001b[2J\\x9b31m"
      for (const [i, { code, out, err }] of failures.entries()) {
        assert.strictEqual(code, 2, err)
        assert.include(err, i === 0 ? quoted : shown)
        noControls(out)
        noControls(err)
      }
    })
  )
})

/** A file system error as Node's file system gives it (`code` on the cause). */
const systemError = (tag: "NotFound" | "PermissionDenied" | "BadResource", code: string, method: string) =>
  PlatformError.systemError({
    _tag: tag,
    module: "FileSystem",
    method,
    pathOrDescriptor: "/somewhere/orchestra.config.json",
    cause: Object.assign(new Error(`${code}: ${method}`), { code })
  })

describe("orchestra says why a config file cannot be read", () => {
  it.live("a path through a file or a symbolic link loop is named as such, not as a missing file", () =>
    Effect.gen(function* () {
      const file = writeConfig("plain.json", { providers: { m: { type: "mock" } } })
      const loop = NodePath.join(dir, "loop-a.json")
      symlinkSync(NodePath.join(dir, "loop-b.json"), loop)
      symlinkSync(loop, NodePath.join(dir, "loop-b.json"))
      const [underFile, looping] = [
        yield* inProcess(["stats", "--config", NodePath.join(file, "x.json")], { terminal: false }),
        yield* inProcess(["stats", "--config", loop, "--json"], { terminal: false })
      ]
      assert.strictEqual(underFile.code, 2, underFile.err)
      assert.include(underFile.err, "(file): no such file (a part of the path is not a folder)")
      assert.strictEqual(looping.code, 2, looping.err)
      assert.deepInclude((JSON.parse(looping.out) as { error: { issues: unknown } }).error.issues, {
        path: "(file)",
        message: "too many levels of symbolic links"
      })
    })
  )

  it.effect("a path from ORCHESTRA_CONFIG that is not a usable file says where it came from, whatever is wrong", () =>
    Effect.gen(function* () {
      const loop = NodePath.join(dir, "env-loop-a.json")
      symlinkSync(NodePath.join(dir, "env-loop-b.json"), loop)
      symlinkSync(loop, NodePath.join(dir, "env-loop-b.json"))
      for (const [path, why] of [
        [dir, "not a file (directory)"],
        [loop, "too many levels of symbolic links"]
      ] as const) {
        const error = yield* CliConfig.load(Option.none(), Option.some(path)).pipe(
          Effect.flip,
          Effect.provide(NodeServices.layer)
        )
        assert.deepStrictEqual(error.issues, [
          { path: "(file)", message: `${why} (named by the environment variable ORCHESTRA_CONFIG)` }
        ])
      }
    })
  )

  it.live('ORCHESTRA_CONFIG of spaces is a usage error naming it, as `--config " "` is; set to "" it is not set', () =>
    Effect.gen(function* () {
      const withEnv = (value: string) =>
        Effect.provideService(
          ConfigProvider.ConfigProvider,
          ConfigProvider.fromEnv({ env: { ORCHESTRA_CONFIG: value } })
        )
      for (const value of [" ", "  \t "]) {
        const result = yield* inProcess(["stats", "--json"], { terminal: false }).pipe(withEnv(value))
        assert.strictEqual(result.code, 2, JSON.stringify(value))
        const message = "ORCHESTRA_CONFIG is empty: set it to a config file's path, or unset it"
        assert.strictEqual(result.err, `orchestra: ${message}`)
        assert.deepStrictEqual(JSON.parse(result.out), { ok: false, error: { message, kind: "usage" } })
      }
      // Effect's config reads an empty variable as one not set (so does every variable the config names).
      const unset = yield* inProcess(["stats", "--json"], { terminal: false }).pipe(withEnv(""))
      assert.strictEqual(unset.code, 0, unset.err)
      assert.deepInclude(JSON.parse(unset.out) as object, { ok: true })
    })
  )

  it.live("a config from a pipe (`--config <(make-config)`) is read as a file is", () =>
    Effect.gen(function* () {
      const fifo = NodePath.join(dir, "config.fifo")
      execFileSync("mkfifo", [fifo])
      const config = JSON.stringify({ providers: { piped: { type: "mock", reply: "from the pipe" } } })
      // The writer blocks until the command opens the pipe: a process of its own, killed if it never does.
      const writer = spawn("sh", ["-c", 'printf "%s" "$1" > "$2"', "sh", config, fifo], { stdio: "ignore" })
      yield* Effect.addFinalizer(() => Effect.sync(() => writer.kill("SIGKILL")))
      const result = yield* inProcess(["test", "-p", "hi", "--config", fifo, "--json"], { terminal: false })
      assert.strictEqual(result.code, 0, result.err)
      assert.deepInclude(JSON.parse(result.out) as object, { provider: "piped", answer: "from the pipe" })
    }).pipe(Effect.scoped)
  )

  it.live("./orchestra.config.json that cannot be read is an error, not a silent switch to the bundled model", () =>
    Effect.gen(function* () {
      const denied = FileSystem.layerNoop({
        stat: () => Effect.fail(systemError("PermissionDenied", "EACCES", "stat"))
      })
      const result = yield* inProcess(["stats", "--json"], { terminal: false, fs: denied })
      assert.strictEqual(result.code, 2, result.err)
      assert.include(result.err, "orchestra.config.json")
      assert.include(result.err, "(file): permission denied")
      assert.deepInclude(JSON.parse(result.out) as object, { ok: false })
    })
  )

  it.live("a config file that cannot be read says why in words, not the platform's `PermissionDenied: ...`", () =>
    Effect.gen(function* () {
      const unreadable = FileSystem.layerNoop({
        stat: () => Effect.succeed({ type: "File", size: ByteSize.bytes(10) } as FileSystem.File.Info),
        // It is read as a stream of at most its bound (not whole): reading it is what fails.
        stream: () => Stream.fail(systemError("PermissionDenied", "EACCES", "open"))
      })
      const result = yield* inProcess(["stats", "--config", "/somewhere/orchestra.config.json"], {
        terminal: false,
        fs: unreadable
      })
      assert.strictEqual(result.code, 2, result.err)
      assert.strictEqual(
        result.err,
        "orchestra: invalid config /somewhere/orchestra.config.json\n  (file): permission denied"
      )
    })
  )
})

describe("orchestra --help", () => {
  it.live("names every command in its summary, and says the defaults and limits of the number flags", () =>
    Effect.gen(function* () {
      const root = yield* inProcess(["--help"], { terminal: false })
      assert.strictEqual(root.code, 0, root.err)
      const summary = root.out.split("\n").find((line) => line.includes("Run AI-model calls")) ?? ""
      for (const name of ["test", "bench", "start", "stats", "serve"]) assert.include(summary, name)
      const bench = yield* inProcess(["bench", "--help"], { terminal: false })
      const flag = (name: string) => bench.out.split("\n").find((line) => line.trimStart().startsWith(name)) ?? ""
      assert.match(flag("--concurrency"), /default 5\b/)
      assert.match(flag("--concurrency"), /at most 10000\b/)
      assert.match(flag("--rounds"), /default 3\b/)
      assert.match(flag("--rounds"), /at most 100\b/)
      assert.match(flag("--max-tokens"), /at most 1000000\b/)
      // A prompt with a comma in it is two prompts: the help says where such prompts go.
      assert.include(flag("--prompts"), "--file")
      // effect/cli marks no flag as required: the descriptions say it.
      assert.include(bench.out.split("\n")[1] ?? "", "--prompts or --file")
      const test = yield* inProcess(["test", "--help"], { terminal: false })
      assert.include(test.out.split("\n").find((line) => line.trimStart().startsWith("--prompt")) ?? "", "required")
      const serve = yield* inProcess(["serve", "--help"], { terminal: false })
      const serveFlag = (name: string) => serve.out.split("\n").find((line) => line.trimStart().startsWith(name)) ?? ""
      assert.match(serveFlag("--port"), /default 4000\b/)
      assert.match(serveFlag("--port"), /at most 65535\b/)
      assert.include(serveFlag("--host"), "default 127.0.0.1")
    })
  )
})

describe("orchestra interrupted (Ctrl-C, SIGTERM)", () => {
  it("a second Ctrl-C or SIGTERM while the first drains exits at once with 130, saying so", () => {
    for (const [first, second] of [
      ["SIGINT", "SIGINT"],
      ["SIGTERM", "SIGINT"],
      ["SIGINT", "SIGTERM"]
    ] as const) {
      const exits: Array<number | undefined> = []
      const written: Array<string> = []
      const target = Object.assign(new EventEmitter(), {
        exit: (code?: number) => void exits.push(code),
        stderr: { write: (text: string) => written.push(text) }
      })
      exitOnSecondSignal(target)
      target.emit(first)
      assert.deepStrictEqual(exits, [], "the first is the runtime's: it interrupts and drains")
      target.emit(second)
      assert.deepStrictEqual(exits, [130])
      assert.include(written.join(""), "interrupted again")
    }
  })

  it.live(
    "a second Ctrl-C under --json still leaves the JSON error on stdout (the first one's comes after the drain)",
    () =>
      Effect.gen(function* () {
        const config = writeConfig("second-signal.json", {
          providers: { m: { type: "mock", script: [{ _tag: "Hang" }] } },
          policies: { executor: { timeout: "none" } }
        })
        const last = (argv: ReadonlyArray<string>) =>
          Effect.gen(function* () {
            const exiting: { lastWords?: (() => string | undefined) | undefined } = {}
            // stdin stays open, as a person's who has not typed yet: `start` waits on it.
            const stdin = Stdio.layerTest({ stdin: Stream.never })
            const fiber = yield* Cli.run([...argv, "--config", config], { exiting }).pipe(
              Effect.provide(Layer.merge(NodeServices.layer, stdin)),
              Effect.provideService(Console.Console, { ...globalThis.console, log: () => {}, error: () => {} }),
              Effect.forkChild
            )
            // The call hangs: what a second signal would leave on stdout, asked for while it runs.
            yield* Effect.sleep("1 second")
            const words = exiting.lastWords?.()
            yield* Fiber.interrupt(fiber)
            return words
          })
        const document = yield* last(["test", "-p", "hi", "--json"])
        assert.deepStrictEqual(JSON.parse(document ?? "null"), {
          ok: false,
          error: {
            message: "interrupted: exited at a second signal, without waiting for the drain",
            kind: "interrupted"
          }
        })
        const line = yield* last(["start", "--json"])
        assert.deepStrictEqual(JSON.parse(line ?? "null"), {
          type: "error",
          error: {
            message: "interrupted: exited at a second signal, without waiting for the drain",
            kind: "interrupted"
          }
        })
        assert.isUndefined(yield* last(["test", "-p", "hi"]))
        // exitOnSecondSignal writes them before it exits.
        const written: Array<string> = []
        const target = Object.assign(new EventEmitter(), {
          exit: () => {},
          stderr: { write: () => true },
          stdout: { write: (text: string) => written.push(text) }
        })
        exitOnSecondSignal(target, 1, () => "{}")
        target.emit("SIGINT")
        assert.deepStrictEqual(written, ["{}\n"])
      })
  )

  it.live("bench ends its progress line and says it was interrupted", () =>
    Effect.gen(function* () {
      // The warm-up and the first prompt answer; the second hangs until the interruption.
      const config = writeConfig("interrupted.json", {
        providers: { m: { type: "mock", script: [{ _tag: "Succeed" }, { _tag: "Succeed" }, { _tag: "Hang" }] } },
        policies: { executor: { timeout: "none" } }
      })
      const drawn = yield* Deferred.make<void>()
      const written: Array<string> = []
      const draw = (text: string) => {
        written.push(text)
        if (text.includes("1/2")) Deferred.doneUnsafe(drawn, Exit.void)
      }
      const err: Array<string> = []
      const argv = ["bench", "--prompts", "a,b", "--rounds", "1", "--config", config]
      const fiber = yield* inProcess(argv, { err, drawn: draw }).pipe(
        Effect.provide(ConfigProvider.layer(ConfigProvider.fromUnknown({ TERM: "xterm" }))),
        Effect.forkChild
      )
      yield* Deferred.await(drawn)
      const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
      assert.isTrue(Exit.hasInterrupts(exit))
      assert.isTrue(written.join("").endsWith("\n"), JSON.stringify(written.join("")))
      assert.deepStrictEqual(err, [
        "orchestra: interrupted in round 1 of 1, before any round finished: nothing to compare",
        "\norchestra: interrupted; shutting down"
      ])
    }).pipe(Effect.scoped)
  )
})

describe("orchestra in CI (CI=true)", () => {
  it.live("bench draws no progress bar, even when CI gives stderr a terminal (each redraw would be a log line)", () =>
    Effect.gen(function* () {
      const config = writeConfig("ci.json", { providers: { m: { type: "mock" } } })
      const written: Array<string> = []
      const bench = (env: Record<string, string>) =>
        inProcess(["bench", "--prompts", "a,b", "--rounds", "1", "--config", config], {
          drawn: (text) => void written.push(text)
        }).pipe(Effect.provide(ConfigProvider.layer(ConfigProvider.fromUnknown({ TERM: "xterm", ...env }))))
      const drawn = yield* bench({ CI: "false" })
      assert.strictEqual(drawn.code, 0, drawn.err)
      assert.include(written.join(""), "2/2", "a terminal without CI gets the bar")
      written.length = 0
      for (const ci of ["true", "1"]) {
        const result = yield* bench({ CI: ci })
        assert.strictEqual(result.code, 0, result.err)
        assert.deepStrictEqual(written, [])
      }
    }).pipe(Effect.scoped)
  )
})

describe("orchestra config messages", () => {
  it.effect("every issue reads the same way: lower case, and a long echoed value cut short", () =>
    Effect.gen(function* () {
      // The executor's check stops at its first wrong option: one config each.
      for (const executor of [{ retry: { maxAttempts: 2, backof: 5 } }, { timeout: `${"9".repeat(400)} fortnights` }]) {
        const config = { providers: { m: { type: "mock" } }, policies: { executor } }
        const error = yield* Setup.check({ file: "t.json", dir, ...CliConfig.inspect(config) }).pipe(Effect.flip)
        assert.isNotEmpty(error.issues)
        for (const issue of error.issues) {
          assert.match(issue.message, /^[^A-Z]/, `${issue.path}: ${issue.message}`)
          assert.isAtMost(issue.message.length, 240, issue.path)
        }
      }
    })
  )
})

describe("orchestra flags whose value starts with a dash", () => {
  it.live("a prompt, prompts or a path starting with '-' is taken as the flag's value, as getopt does", () =>
    Effect.gen(function* () {
      const config = writeConfig("dash.json", { providers: { m: { type: "mock" } } })
      const one = yield* inProcess(["test", "-p", "-5 degrees in F?", "--config", config, "--json"], {
        terminal: false
      })
      assert.strictEqual(one.code, 0, one.err)
      assert.strictEqual((JSON.parse(one.out) as { prompt: string }).prompt, "-5 degrees in F?")
      const long = yield* inProcess(["test", "--prompt", "- a list item", "--config", config, "--json"], {
        terminal: false
      })
      assert.strictEqual(long.code, 0, long.err)
      assert.strictEqual((JSON.parse(long.out) as { prompt: string }).prompt, "- a list item")
      const many = yield* inProcess(["stats", "--prompts", "-1 + 1?, -2", "--config", config, "--json"], {
        terminal: false
      })
      assert.strictEqual(many.code, 0, many.err)
      assert.strictEqual((JSON.parse(many.out) as { prompts: number }).prompts, 2)
      // A flag name after a flag is still a flag: the value is missing, as before.
      const missing = yield* inProcess(["test", "-p", "--json", "--config", config], { terminal: false })
      assert.strictEqual(missing.code, 2)
    })
  )
})

describe("orchestra short flags glued to their value", () => {
  it.live(
    "`-phello`, `-c3`, `-dsupport` are the flag and its value, as getopt reads them (`-phi` showed the help, exit 0)",
    () =>
      Effect.gen(function* () {
        const config = writeConfig("glued.json", { providers: { m: { type: "mock", reply: "glued" } } })
        const one = yield* inProcess(["test", "-phello", "-dsupport", "--config", config, "--json"], {
          terminal: false
        })
        assert.strictEqual(one.code, 0, one.err)
        assert.deepInclude(JSON.parse(one.out) as object, {
          ok: true,
          prompt: "hello",
          domain: "support",
          answer: "glued"
        })
        // `h` in the value is no `-h`: the command runs rather than answering with its help page.
        const help = yield* inProcess(["test", "-phi", "--config", config, "--json"], { terminal: false })
        assert.strictEqual(help.code, 0, help.err)
        assert.deepInclude(JSON.parse(help.out) as object, { ok: true, prompt: "hi" })
        const many = yield* inProcess(["stats", "-c3", "-fnone.txt", "--config", config, "--json"], { terminal: false })
        assert.strictEqual(many.code, 2, many.err)
        assert.strictEqual(many.err, "orchestra: cannot read none.txt: no such file")
        const concurrency = yield* inProcess(["stats", "-c0", "--prompts", "a", "--config", config], {
          terminal: false
        })
        assert.strictEqual(concurrency.err, "orchestra: --concurrency: expected a value of at least 1, got 0")
      })
  )
})

describe("orchestra --wizard", () => {
  it.live("off a terminal it is a usage error (exit 2), not 'Wizard cancelled.' with exit 0 and nothing run", () =>
    Effect.gen(function* () {
      const result = yield* inProcess(["test", "--wizard"], { terminal: false }).pipe(Effect.timeout("30 seconds"))
      assert.strictEqual(result.code, 2, result.out)
      assert.include(result.err, "--wizard")
      assert.strictEqual(result.out, "")
    })
  )
})

describe("orchestra prompts from a pipe", () => {
  it.live("a pipe holding more than a prompts file may (16 MiB) is refused, without reading it whole", () =>
    Effect.gen(function* () {
      const config = writeConfig("pipe-prompts.json", { providers: { m: { type: "mock" } } })
      const fifo = NodePath.join(dir, "prompts.fifo")
      execFileSync("mkfifo", [fifo])
      const max = 16 * 1024 * 1024
      // A runaway writer that never ends: read whole, it would exhaust memory (or never end).
      const writer = spawn("sh", ["-c", 'yes a > "$1"', "sh", fifo], { stdio: "ignore" })
      yield* Effect.addFinalizer(() => Effect.sync(() => writer.kill("SIGKILL")))
      const result = yield* inProcess(["stats", "--file", fifo, "--config", config], { terminal: false })
      assert.strictEqual(result.code, 2, result.err)
      assert.strictEqual(result.err, `orchestra: cannot read ${fifo}: more than ${max} bytes (at most ${max})`)
    }).pipe(Effect.scoped)
  )
})

describe("readAtMost from a pipe written in small pieces", () => {
  it.live("keeps each read in a buffer of its own size, not a slice of a 64 KB one (which would hold it all)", () =>
    Effect.gen(function* () {
      const fifo = NodePath.join(dir, "pieces.fifo")
      execFileSync("mkfifo", [fifo])
      const piece = "p".repeat(49)
      const writer = spawn(
        "sh",
        ["-c", 'for i in 1 2 3 4 5 6 7 8 9 10; do echo "$1"; done > "$2"', "sh", piece, fifo],
        {
          stdio: "ignore"
        }
      )
      yield* Effect.addFinalizer(() => Effect.sync(() => writer.kill("SIGKILL")))
      const concat = vi.spyOn(Buffer, "concat")
      yield* Effect.addFinalizer(() => Effect.sync(() => concat.mockRestore()))
      const read = yield* readAtMost(fifo, 16 * 1024 * 1024)
      assert.strictEqual(Buffer.from(read).toString(), `${piece}\n`.repeat(10))
      const kept = concat.mock.calls.flatMap(([chunks]) => [...chunks])
      assert.isAbove(kept.length, 0)
      for (const chunk of kept) assert.strictEqual(chunk.buffer.byteLength, chunk.byteLength)
    }).pipe(Effect.scoped)
  )
})

describe("config messages cut to 240 characters", () => {
  it("are never cut inside a character (a lone surrogate would print as garbage or break JSON consumers)", () => {
    const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/
    for (let at = 234; at <= 238; at++) {
      const cut = CliConfig.tidy(`${"x".repeat(at)}${"😀".repeat(10)}`)
      assert.isAtMost(cut.length, 240)
      assert.isTrue(cut.endsWith("..."))
      assert.notMatch(cut, loneSurrogate, `emoji from ${at}`)
    }
  })
})

describe("orchestra test --json when the call fails", () => {
  it.live("stdout holds one JSON document, and stderr the same line as without --json, as other failures do", () =>
    Effect.gen(function* () {
      const config = writeConfig("test-fails.json", {
        providers: { down: { type: "mock", random: { success: 0, failures: { Unavailable: 1 } } } },
        defaultProvider: "down",
        policies: { breakers: false, executor: { retry: { maxAttempts: 1 } } }
      })
      const plain = yield* inProcess(["test", "-p", "hi", "--config", config], { terminal: false })
      const json = yield* inProcess(["test", "-p", "hi", "--config", config, "--json"], { terminal: false })
      assert.strictEqual(plain.code, 1)
      assert.strictEqual(json.code, 1)
      const document = JSON.parse(json.out) as { ok: boolean; error: { _tag: string; reason: string } }
      assert.strictEqual(document.ok, false)
      assert.strictEqual(document.error.reason, "Unavailable")
      assert.match(plain.err, /^orchestra: the call failed after .+: ModelError\(Unavailable\)/m)
      assert.match(json.err, /^orchestra: the call failed after .+: ModelError\(Unavailable\)/m)
      // A usage failure under --json already said it on both.
      const usage = yield* inProcess(["test", "-p", " ", "--config", config, "--json"], { terminal: false })
      assert.strictEqual(usage.code, 2)
      assert.include(usage.err, "orchestra: --prompt is empty")
      assert.strictEqual((JSON.parse(usage.out) as { ok: boolean }).ok, false)
    })
  )
})

describe("orchestra test --fallback", () => {
  it.live("a domain listed twice is tried once, with --domain or without (it was tried twice without)", () =>
    Effect.gen(function* () {
      const config = writeConfig("test-fallback-twice.json", {
        providers: { flaky: { type: "mock", random: { success: 0, failures: { Overloaded: 1 } } } },
        defaultProvider: "flaky",
        domains: [
          { name: "dead", provider: "flaky", retry: { maxAttempts: 1 } },
          { name: "gone", provider: "flaky", retry: { maxAttempts: 1 } }
        ],
        policies: { breakers: false, executor: { retry: { maxAttempts: 1 } } }
      })
      const stepsOf = (out: string) =>
        (JSON.parse(out) as { error: { attempts: ReadonlyArray<{ domain?: string }> } }).error.attempts.map(
          (a) => a.domain ?? null
        )
      const without = yield* inProcess(
        ["test", "-p", "hi", "--fallback", "dead,gone,dead", "--config", config, "--json"],
        { terminal: false }
      )
      assert.strictEqual(without.code, 1)
      assert.deepStrictEqual(stepsOf(without.out), [null, "dead", "gone"])
      const withDomain = yield* inProcess(
        ["test", "-p", "hi", "--domain", "gone", "--fallback", "dead,gone,dead", "--config", config, "--json"],
        { terminal: false }
      )
      assert.strictEqual(withDomain.code, 1)
      assert.deepStrictEqual(stepsOf(withDomain.out), ["gone", "dead"])
    })
  )
})

describe("--json errors carry what a script retries by", () => {
  // errorJson left out a rate limit's Retry-After, which limit refused, a breaker's name and state and a
  // timeout's limit: a script had to parse the message to know when to come back.
  it("retryAfterMs, rateLimit and limit; a breaker's name, state and retryAfterMs; a timeout's limit and timeoutMs", () => {
    assert.deepStrictEqual(
      errorJson(
        new ModelError({
          reason: "RateLimited",
          message: "full",
          provider: "p",
          retryAfter: Duration.seconds(3),
          rateLimit: "requests",
          limit: 60
        })
      ),
      {
        _tag: "ModelError",
        reason: "RateLimited",
        message: "full",
        provider: "p",
        retryAfterMs: 3000,
        rateLimit: "requests",
        limit: 60
      }
    )
    assert.deepStrictEqual(
      errorJson(new CircuitOpenError({ breaker: "b", state: "open", retryAfter: Duration.millis(1500) })),
      {
        _tag: "CircuitOpenError",
        reason: "CircuitOpen",
        message: 'circuit "b" is open',
        breaker: "b",
        state: "open",
        retryAfterMs: 1500
      }
    )
    const timeout = errorJson(new TimeoutError({ limit: "idle", timeout: Duration.seconds(2), provider: "p" }))
    assert.deepStrictEqual([timeout.limit, timeout.timeoutMs, timeout.provider], ["idle", 2000, "p"])
  })
})
