/**
 * Every program in examples/ runs offline as a child process (node with the tsx loader),
 * exits 0 on its own and prints its key line. A new example without an entry in `expected`
 * fails the first test: each one says what it proves.
 */
import { spawn } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { fileURLToPath, pathToFileURL } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Semaphore } from "effect"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href
/** Output kept per stream: the key lines come early, a runaway example must not fill the memory. */
const MAX_OUTPUT = 1_000_000

const expected: Readonly<Record<string, RegExp>> = {
  "batch-progress.ts": /batch batch-\d+: 24 items, \d+ succeeded/,
  "fallback-chain.ts": /answered by domain "local" \(provider local\) after 3 domains, fallback used: true/,
  "graceful-shutdown.ts":
    /every caller got an outcome: 6 callers, \d answered, \d refused or interrupted; calls still running: 0/,
  "hedging.ts": /hedged after 150 ms[\s\S]*still running after the race: 0/,
  "http-agents.ts": /wait\s+stuck\s+timeout[\s\S]*rank-4\s+flaky\s+service_unavailable/,
  "main.ts":
    /answered by support \(local\) after 2 domains, fallback used: true[\s\S]*12\/12[\s\S]*#10 success support \(fallback\)[\s\S]*4\. Statistics/,
  "parallel-domains.ts": /mode "first" \(\d+ ms\): support answered first[\s\S]*slow-model calls still running: 0/,
  "pipeline.ts": /== parallel: succeeded/,
  "promise-facade.ts": /after dispose: OrchestraError\(ShuttingDownError\)/,
  "quickstart.ts": /one call: mock answer to: Summarise the release notes[\s\S]*#10 (ok|error)/,
  "streaming.ts":
    /local streams still running: 0[\s\S]*remote: 1 call interrupted, none left running[\s\S]*TimeoutError\(limit: idle\)[\s\S]*TimeoutError\(limit: total\)/
}

const examples = readdirSync(new URL("../examples/", import.meta.url))
  .filter((file) => file.endsWith(".ts"))
  .sort()

interface Ran {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

/** The example in a child process; interrupting the effect kills the process. */
const run = (file: string) =>
  Effect.callback<Ran>((resume) => {
    const child = spawn(process.execPath, ["--import", TSX, `examples/${file}`], {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => {
      if (stdout.length < MAX_OUTPUT) stdout += chunk.toString()
    })
    child.stderr.on("data", (chunk: Buffer) => {
      if (stderr.length < MAX_OUTPUT) stderr += chunk.toString()
    })
    child.on("error", (error) => resume(Effect.die(error)))
    child.on("close", (code, signal) => resume(Effect.succeed({ code, signal, stdout, stderr })))
    return Effect.sync(() => {
      child.kill("SIGKILL")
    })
  })

// Each example starts node, tsx and often transformers.js: three at a time on a 2-core machine.
const slots = Semaphore.makeUnsafe(3)

describe.concurrent("examples", () => {
  it("every example has an expected key line, and each expected example exists", () => {
    assert.deepStrictEqual(examples, Object.keys(expected).sort())
  })

  it("npm start runs examples/main.ts", () => {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
      readonly scripts: Readonly<Record<string, string>>
    }
    assert.strictEqual(pkg.scripts.start, "tsx examples/main.ts")
  })

  for (const file of examples) {
    it.live(
      `${file} runs offline, exits 0 on its own and prints its key line`,
      () =>
        Effect.gen(function* () {
          const ran = yield* run(file).pipe(
            Effect.timeoutOrElse({
              duration: "120 seconds",
              orElse: () => Effect.die(new Error(`${file} did not exit within 120 s`))
            }),
            Semaphore.withPermit(slots)
          )
          assert.strictEqual(ran.code, 0, `exit ${ran.code} (${ran.signal})\n${ran.stderr.slice(-2000)}`)
          const key = expected[file]
          if (key === undefined) assert.fail(`no key line for ${file}: add it to \`expected\``)
          else assert.match(ran.stdout, key, ran.stdout.slice(-3000))
        }),
      300_000
    )
  }
})
