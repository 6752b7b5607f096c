import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { readdirSync } from "node:fs"
import { fileURLToPath } from "node:url"

// Every program in examples/ runs offline as a child process, exits 0 on its own, and
// prints its key line. A new example without an entry here still has to run and exit 0.
const root = fileURLToPath(new URL("..", import.meta.url))

const expected: Readonly<Record<string, RegExp>> = {
  "batch-progress.ts": /batch batch-\d+ done: 24 items, \d+ succeeded/,
  "fallback-chain.ts": /answered by domain "local" \(provider local\) after 3 domains, fallback used: true/,
  "parallel-domains.ts": /mode "first" \(\d+ ms\): support answered first[\s\S]*slow-model calls still running: 0/,
  "hedging.ts": /hedged after 150 ms[\s\S]*still running after the race: 0/,
  "graceful-shutdown.ts":
    /every caller got an outcome: 6 callers, \d answered, \d refused or interrupted; calls still running: 0/,
  "promise-facade.ts": /after dispose: OrchestraError\(ShuttingDownError\)/,
  "main.ts": /answered by support \(local\) after 2 domains, fallback used: true/,
  "pipeline.ts": /parallel: succeeded/,
  "http-agents.ts": /peak requests in flight: \d+; now 0/,
  "quickstart.ts": /one call: mock answer to: Summarise the release notes/,
  "streaming.ts": /remote: 1 call interrupted, none left running[\s\S]*TimeoutError\(limit: idle\)/
}

const examples = readdirSync(new URL("../examples/", import.meta.url))
  .filter((file) => file.endsWith(".ts"))
  .sort()

const run = (
  file: string
): Promise<{ readonly code: number | null; readonly stdout: string; readonly stderr: string }> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", `examples/${file}`], {
      cwd: root,
      env: { ...process.env, NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 60_000
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString()
    })
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString()
    })
    child.on("error", reject)
    child.on("close", (code) => resolve({ code, stdout, stderr }))
  })

describe.concurrent("examples", () => {
  it("every example has an expected key line", () => {
    assert.includeMembers(examples, Object.keys(expected), "an expected example is missing from examples/")
  })

  for (const file of examples) {
    it(`${file} runs offline, exits 0 and prints its key line`, { timeout: 90_000 }, async () => {
      const { code, stdout, stderr } = await run(file)
      assert.strictEqual(code, 0, `exit code ${code}\n${stderr.slice(-2000)}`)
      const key = expected[file]
      if (key === undefined) assert.isAbove(stdout.trim().length, 0, "prints something")
      else assert.match(stdout, key)
    })
  }
})
