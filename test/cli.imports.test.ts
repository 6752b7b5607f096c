/**
 * What `orchestra` loads to refuse: a usage error, `--help`, `--version` and a bad config are said
 * without loading the library's executor, router, batches, manager or any provider (the modules of a
 * call, some 250 more). Real processes (node with the tsx loader), each module they load recorded.
 */
import { spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import * as NodePath from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { afterAll, assert, describe, it } from "@effect/vitest"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
const ENTRY = NodePath.join(ROOT, "src/cli/bin.ts")
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href
const LOADED = pathToFileURL(NodePath.join(ROOT, "test/utils/loadedModules.mjs")).href
const dir = mkdtempSync(NodePath.join(tmpdir(), "orchestra-imports-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

let runs = 0

/** Runs `orchestra <args>`: its exit code, output, and the files of src/ it loaded (relative), with effect's. */
const orchestra = (args: ReadonlyArray<string>) =>
  new Promise<{
    code: number | null
    out: string
    err: string
    src: ReadonlyArray<string>
    all: ReadonlyArray<string>
  }>((resolve, reject) => {
    const list = NodePath.join(dir, `loaded-${++runs}.txt`)
    writeFileSync(list, "")
    const child = spawn(process.execPath, ["--import", TSX, "--import", LOADED, ENTRY, ...args], {
      cwd: dir,
      env: { ...process.env, LOADED_MODULES_FILE: list, ORCHESTRA_CONFIG: "" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    let err = ""
    child.stdout.on("data", (chunk) => (out += chunk))
    child.stderr.on("data", (chunk) => (err += chunk))
    child.on("error", reject)
    child.on("close", (code) => {
      const all = readFileSync(list, "utf8")
        .split("\n")
        .filter((line) => line.length > 0)
      const src = pathToFileURL(NodePath.join(ROOT, "src/")).href
      resolve({
        code,
        out,
        err,
        all,
        src: all.filter((url) => url.startsWith(src)).map((url) => url.slice(src.length))
      })
    })
  })

/** What only a call needs: the library's engine and every provider. */
const heavy = [
  "Executor.ts",
  "Router.ts",
  "Batch.ts",
  "Orchestra.ts",
  "CircuitBreaker.ts",
  "RateLimit.ts",
  "ResponseCache.ts",
  "Model/Mock.ts",
  "Model/OpenAiCompat.ts",
  "Model/Ollama.ts",
  "Model/Gemini.ts",
  "Model/WatsonX.ts",
  "Model/Local.ts",
  "Model/EffectAi.ts"
]

const assertLight = (run: { readonly src: ReadonlyArray<string>; readonly all: ReadonlyArray<string> }) => {
  for (const file of heavy) assert.notInclude(run.src, file)
  // effect's HTTP client and AI modules come with the providers only (a few of effect/http's, headers and cookies,
  // come with effect's own platform modules).
  assert.isUndefined(run.all.find((url) => /\/effect\/dist\/(?:http\/HttpClient\.js|ai\/)/.test(url)))
}

const config = (name: string, body: unknown) => {
  const file = NodePath.join(dir, name)
  writeFileSync(file, JSON.stringify(body))
  return file
}

describe("orchestra: what a refusal loads", () => {
  it("a config with an unknown provider kind is refused, as before, without loading a provider or the library", async () => {
    const file = config("kind.json", { providers: { a: { type: "nosuch" } } })
    const run = await orchestra(["test", "-p", "hi", "--config", file])
    assert.strictEqual(run.code, 2)
    assert.include(run.err, `orchestra: invalid config ${file}`)
    assert.include(run.err, 'providers.a.type: expected one of "local", "openai-compatible"')
    assertLight(run)
  }, 60_000)

  it("a provider option the provider's check refuses loads that provider's module, and no other", async () => {
    const file = config("latency.json", { providers: { m: { type: "mock", latency: "soon" } } })
    const run = await orchestra(["stats", "--json", "--config", file])
    assert.strictEqual(run.code, 2)
    const out = JSON.parse(run.out)
    assert.strictEqual(out.error.kind, "config")
    assert.strictEqual(out.error.issues[0].path, "providers.m.latency")
    assert.include(run.src, "Model/Mock.ts")
    for (const file of heavy.filter((f) => f !== "Model/Mock.ts")) assert.notInclude(run.src, file)
  }, 60_000)

  it("a missing config file, a bad flag value, --help and --version load none of it", async () => {
    const missing = await orchestra(["bench", "--prompts", "a,b", "--config", NodePath.join(dir, "nope.json")])
    assert.strictEqual(missing.code, 2)
    assert.include(missing.err, "no such file")
    assertLight(missing)
    const flag = await orchestra(["test", "-p", "hi", "--max-tokens", "NaN"])
    assert.strictEqual(flag.code, 2)
    assert.include(flag.err, "--max-tokens")
    assertLight(flag)
    const help = await orchestra(["--help"])
    assert.strictEqual(help.code, 0)
    assertLight(help)
  }, 120_000)

  it("a config that passes loads what a call needs (the hook sees them)", async () => {
    const file = config("good.json", { providers: { m: { type: "mock", reply: "pong" } } })
    const run = await orchestra(["test", "-p", "hi", "--json", "--config", file])
    assert.strictEqual(run.code, 0)
    assert.strictEqual(JSON.parse(run.out).answer, "pong")
    for (const file of ["Executor.ts", "Router.ts", "Orchestra.ts", "Model/Mock.ts"]) assert.include(run.src, file)
  }, 60_000)
})
