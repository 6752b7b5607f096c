/**
 * `orchestra` interrupted by SIGTERM in a child process (node with the tsx loader on
 * src/cli/bin.ts), against an OpenAI-compatible server on 127.0.0.1 that answers some
 * prompts and never answers the others: what finished is reported, the exit code is 130.
 */
import { spawn } from "node:child_process"
import { existsSync, mkdtempSync, rmSync, watch, writeFileSync } from "node:fs"
import type { ServerResponse } from "node:http"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import * as NodePath from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit } from "effect"
import * as Server from "./utils/httpServer.js"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
const ENTRY = NodePath.join(ROOT, "src/cli/bin.ts")
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href
const HOLD = pathToFileURL(NodePath.join(ROOT, "test/utils/holdImport.mjs")).href
const dir = mkdtempSync(NodePath.join(tmpdir(), "orchestra-cli-interrupt-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const env = (): Record<string, string> => {
  const out: Record<string, string> = { CI: "true" }
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || /^(OPENAI|GEMINI|WATSONX|OLLAMA|ORCHESTRA)_|^(NO_COLOR|FORCE_COLOR|TERM|CI)$/.test(k))
      continue
    out[k] = v
  }
  return out
}

/** `hang` prompts are never answered; the others are echoed. */
const handler: Server.Handler = (request, res: ServerResponse) => {
  const body = request.json as { readonly messages: ReadonlyArray<{ readonly content: string }> }
  const last = body.messages[body.messages.length - 1]?.content ?? ""
  if (last.startsWith("hang")) return Server.hang(res)
  return Server.json(res, 200, {
    id: "chatcmpl-cli",
    object: "chat.completion",
    created: 1_700_000_000,
    model: "served-model",
    choices: [{ index: 0, message: { role: "assistant", content: `served: ${last}` }, finish_reason: "stop" }],
    usage: { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10 }
  })
}

/** Runs `orchestra <args>` with stdin closed, SIGTERM once the server has seen `requests` requests. */
const terminated = (args: ReadonlyArray<string>, server: Server.TestServer, requests: number) =>
  Effect.gen(function* () {
    const child = spawn(process.execPath, ["--import", TSX, ENTRY, ...args], {
      cwd: dir,
      env: env(),
      stdio: ["ignore", "pipe", "pipe"]
    })
    yield* Effect.addFinalizer(() => Effect.sync(() => child.exitCode === null && child.kill("SIGKILL")))
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => void (stdout += chunk))
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => void (stderr += chunk))
    const closed = yield* Deferred.make<number | null>()
    child.on("close", (code) => Deferred.doneUnsafe(closed, Exit.succeed(code)))
    yield* server.awaitRequests(requests).pipe(Effect.timeout("100 seconds"))
    child.kill("SIGTERM")
    const code = yield* Deferred.await(closed).pipe(Effect.timeout("30 seconds"))
    return { code, stdout, stderr }
  })

const writeConfig = (name: string, url: string): string => {
  const file = NodePath.join(dir, name)
  writeFileSync(
    file,
    JSON.stringify({
      providers: { remote: { type: "openai-compatible", baseUrl: `${url}/v1`, model: "m" } },
      policies: { breakers: false, executor: { timeout: "none", retry: { maxAttempts: 1 } } }
    })
  )
  return file
}

describe("orchestra stats --prompts interrupted (SIGTERM)", { timeout: 180_000 }, () => {
  it.live("reports the figures of the prompts that finished, says how many did, and exits with 130", () =>
    Effect.gen(function* () {
      const server = yield* Server.make(handler)
      const config = writeConfig("stats.json", server.url)
      const args = ["stats", "--prompts", "one,two,hang", "--concurrency", "1", "--config", config]
      const [text, json] = [yield* terminated(args, server, 3), yield* terminated([...args, "--json"], server, 6)]
      assert.strictEqual(text.code, 130, text.stderr)
      assert.include(text.stdout, "Execution stats")
      assert.match(text.stdout, /successes\s+2\b/)
      assert.include(text.stderr, "orchestra: interrupted after 2 of 3 prompts")
      assert.strictEqual(json.code, 130, json.stderr)
      const document = JSON.parse(json.stdout) as {
        readonly ok: boolean
        readonly prompts: number
        readonly finished: number
        readonly error: unknown
        readonly stats: { readonly successes: number }
      }
      assert.deepInclude(document, { ok: false, prompts: 3, finished: 2 })
      assert.deepStrictEqual(document.error, { message: "interrupted", kind: "interrupted" })
      assert.strictEqual(document.stats.successes, 2)
    }).pipe(Effect.scoped)
  )
})

describe("orchestra bench interrupted (SIGTERM)", { timeout: 180_000 }, () => {
  it.live("reports the rounds that finished, says where it stopped, and exits with 130", () =>
    Effect.gen(function* () {
      // The warm-up (1 request) and round 1 (2 sequential, 2 concurrent) are answered; round 2 never is.
      const answered = Array.from({ length: 5 }, () => handler)
      const bench = (name: string) =>
        Effect.gen(function* () {
          const server = yield* Server.make(Server.script(...answered, Server.hang))
          const config = writeConfig(name, server.url)
          const args = ["bench", "--prompts", "one,two", "--rounds", "2", "--concurrency", "2", "--config", config]
          return yield* terminated(name.endsWith("json.json") ? [...args, "--json"] : args, server, 6)
        })
      const text = yield* bench("bench-text.json")
      assert.strictEqual(text.code, 130, text.stderr)
      assert.include(text.stdout, "Benchmark: 2 prompts, concurrency 2, 1 of 2 rounds (interrupted)")
      assert.match(text.stdout, /sequential .* 100\.0 %/)
      assert.include(text.stderr, "orchestra: interrupted in round 2 of 2; the figures are those of round 1")
      const json = yield* bench("bench-json.json")
      assert.strictEqual(json.code, 130, json.stderr)
      const document = JSON.parse(json.stdout) as {
        readonly ok: boolean
        readonly rounds: number
        readonly roundsDone: number
        readonly error: unknown
        readonly sequential: { readonly rounds: ReadonlyArray<number>; readonly successes: number }
      }
      assert.deepInclude(document, { ok: false, rounds: 2, roundsDone: 1 })
      assert.deepStrictEqual(document.error, { message: "interrupted", kind: "interrupted" })
      assert.strictEqual(document.sequential.rounds.length, 1)
      assert.strictEqual(document.sequential.successes, 2)
    }).pipe(Effect.scoped)
  )

  it.live("interrupted before a round finished, it says there is nothing to compare", () =>
    Effect.gen(function* () {
      const server = yield* Server.make(Server.script(handler, handler, Server.hang))
      const config = writeConfig("bench-early.json", server.url)
      const result = yield* terminated(["bench", "--prompts", "one,two", "--config", config], server, 3)
      assert.strictEqual(result.code, 130, result.stderr)
      assert.strictEqual(result.stdout, "")
      assert.include(
        result.stderr,
        "orchestra: interrupted in round 1 of 3, before any round finished: nothing to compare"
      )
    }).pipe(Effect.scoped)
  )
})

/**
 * Runs `orchestra <args>` with its first import of effect held (test/utils/holdImport.mjs), sends
 * SIGTERM while it is, then lets the loading go on.
 */
const signalledWhileLoading = (name: string, args: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const hold = mkdtempSync(NodePath.join(dir, `${name}-`))
    const child = spawn(process.execPath, ["--import", TSX, "--import", HOLD, ENTRY, ...args], {
      cwd: dir,
      env: { ...env(), HOLD_IMPORT_DIR: hold },
      stdio: ["pipe", "pipe", "pipe"]
    })
    yield* Effect.addFinalizer(() => Effect.sync(() => child.exitCode === null && child.kill("SIGKILL")))
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => void (stdout += chunk))
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => void (stderr += chunk))
    const closed = yield* Deferred.make<{ readonly code: number | null; readonly signal: string | null }>()
    child.on("close", (code, signal) => Deferred.doneUnsafe(closed, Exit.succeed({ code, signal })))
    const holding = yield* Deferred.make<void>()
    const watcher = watch(
      hold,
      () => existsSync(NodePath.join(hold, "holding")) && Deferred.doneUnsafe(holding, Exit.void)
    )
    yield* Effect.addFinalizer(() => Effect.sync(() => watcher.close()))
    if (existsSync(NodePath.join(hold, "holding"))) Deferred.doneUnsafe(holding, Exit.void)
    yield* Deferred.await(holding).pipe(Effect.timeout("60 seconds"))
    // A process that does not listen for the signal yet is gone at once: the loading going on cannot save it.
    child.kill("SIGTERM")
    writeFileSync(NodePath.join(hold, "release"), "")
    const { code, signal } = yield* Deferred.await(closed).pipe(Effect.timeout("60 seconds"))
    return { code, signal, stdout, stderr }
  })

describe("orchestra signalled while its modules load (SIGTERM before the command runs)", { timeout: 180_000 }, () => {
  it.live("runs nothing, says it was interrupted (a JSON error under --json), and exits with 130, not 143", () =>
    Effect.gen(function* () {
      const config = NodePath.join(dir, "loading.json")
      writeFileSync(config, JSON.stringify({ providers: { m: { type: "mock", reply: "ran anyway" } } }))
      const [bench, start] = yield* Effect.all(
        [
          signalledWhileLoading("bench", ["bench", "--prompts", "a,b", "--json", "--config", config]),
          signalledWhileLoading("start", ["start", "--json", "--config", config])
        ],
        { concurrency: 2 }
      )
      assert.strictEqual(bench.signal, null, "the process handled the signal")
      assert.strictEqual(bench.code, 130, bench.stderr)
      assert.deepStrictEqual(JSON.parse(bench.stdout), {
        ok: false,
        error: { message: "interrupted", kind: "interrupted" }
      })
      assert.strictEqual(start.code, 130, start.stderr)
      assert.deepStrictEqual(JSON.parse(start.stdout), {
        type: "error",
        error: { message: "interrupted", kind: "interrupted" }
      })
    }).pipe(Effect.scoped)
  )
})
