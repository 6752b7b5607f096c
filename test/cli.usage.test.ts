/**
 * `orchestra` usage errors in a child process (node with the tsx loader on src/cli/bin.ts),
 * as CI runs it (stdin closed, CI=true): a mistyped command is named with a suggestion, and
 * nothing else is blamed.
 */
import { spawn } from "node:child_process"
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
  }).pipe(Effect.timeout("100 seconds"))

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
