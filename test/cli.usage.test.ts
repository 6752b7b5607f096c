/**
 * `orchestra` usage errors in a child process (node with the tsx loader on src/cli/bin.ts),
 * as CI runs it (stdin closed, CI=true): a mistyped command is named with a suggestion, and
 * nothing else is blamed.
 */
import { execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import * as NodePath from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
const ENTRY = NodePath.join(ROOT, "src/cli/bin.ts")
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href

const run = (args: ReadonlyArray<string>) =>
  Effect.callback<{ readonly code: number | null; readonly stdout: string; readonly stderr: string }>((resume) => {
    const child = spawn(process.execPath, ["--import", TSX, ENTRY, ...args], {
      cwd: tmpdir(),
      env: { ...process.env, CI: "true", NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => void (stdout += chunk))
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => void (stderr += chunk))
    child.on("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
    return Effect.sync(() => child.kill("SIGKILL"))
  }).pipe(Effect.timeout("60 seconds"))

describe("orchestra with a mistyped command", { timeout: 180_000 }, () => {
  it.live("suggests the command and blames none of the flags meant for it (exit 2)", () =>
    Effect.gen(function* () {
      const [text, json] = yield* Effect.all([run(["tset", "-p", "hi"]), run(["tset", "-p", "hi", "--json"])], {
        concurrency: 2
      })
      assert.strictEqual(text.code, 2)
      assert.include(text.stderr, 'Unknown subcommand "tset" for "orchestra"')
      assert.include(text.stderr, "Did you mean this?\n    test")
      assert.notInclude(text.stderr, "Unrecognized flag")
      assert.strictEqual(json.code, 2)
      const document = JSON.parse(json.stdout) as {
        readonly error: { readonly message: string; readonly kind: string }
      }
      assert.strictEqual(document.error.kind, "usage")
      assert.include(document.error.message, 'Unknown subcommand "tset"')
      assert.notInclude(document.error.message, "Unrecognized flag")
    })
  )
})

describe("orchestra given a named pipe (FIFO) no one writes to", { timeout: 180_000 }, () => {
  it.live("as --config or --file, ends at once as an empty file would (it waited forever, deaf to SIGTERM)", () =>
    Effect.gen(function* () {
      const dir = mkdtempSync(NodePath.join(tmpdir(), "orchestra-cli-fifo-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const fifo = NodePath.join(dir, "fifo")
      execFileSync("mkfifo", [fifo])
      const config = NodePath.join(dir, "mock.json")
      writeFileSync(config, JSON.stringify({ providers: { m: { type: "mock" } } }))
      const [asConfig, asFile] = yield* Effect.all(
        [run(["stats", "--config", fifo]), run(["bench", "--file", fifo, "--config", config])],
        { concurrency: 2 }
      )
      assert.strictEqual(asConfig.code, 2, asConfig.stderr)
      assert.include(asConfig.stderr, "not valid JSON at line 1, column 1: expected a value, found end of input")
      assert.strictEqual(asFile.code, 2, asFile.stderr)
      assert.include(asFile.stderr, "no prompts given")
    }).pipe(Effect.scoped)
  )
})
