/**
 * The real `orchestra` binary (bin/orchestra.mjs via tsx) in child processes: against the
 * bundled local model, a scripted mock provider, and an OpenAI-compatible server on
 * 127.0.0.1 started here. Each process costs about a second of tsx start-up, so each test
 * runs as few as it can.
 */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import type { ServerResponse } from "node:http"
import { tmpdir } from "node:os"
import * as NodePath from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Either } from "effect"
import * as CliConfig from "../src/cli/Config.js"
import { domainNames } from "../src/cli/Setup.js"
import * as Server from "./utils/httpServer.js"

const BIN = fileURLToPath(new URL("../bin/orchestra.mjs", import.meta.url))
const dir = mkdtempSync(NodePath.join(tmpdir(), "orchestra-cli-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

/** The environment without anything that could configure a provider or the CLI. */
const baseEnv = (): Record<string, string> => {
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || /^(OPENAI|GEMINI|WATSONX|OLLAMA|ORCHESTRA)_/.test(k)) continue
    env[k] = v
  }
  return env
}

interface CliResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

interface Spawned {
  readonly child: ChildProcessWithoutNullStreams
  readonly output: () => { readonly stdout: string; readonly stderr: string }
  /** Completes with the first stdout text that contains `text`. */
  readonly waitFor: (text: string) => Effect.Effect<void>
  readonly exit: Effect.Effect<CliResult>
}

const start = (
  args: ReadonlyArray<string>,
  options: { readonly env?: Record<string, string>; readonly cwd?: string } = {}
): Effect.Effect<Spawned> =>
  Effect.gen(function* () {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: options.cwd ?? dir,
      env: { ...baseEnv(), ...options.env },
      stdio: ["pipe", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    const watchers: Array<{ readonly text: string; readonly done: Deferred.Deferred<void> }> = []
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk
      for (const w of watchers) if (stdout.includes(w.text)) Deferred.unsafeDone(w.done, Effect.void)
    })
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk
    })
    const closed = yield* Deferred.make<number | null>()
    child.on("close", (code) => Deferred.unsafeDone(closed, Effect.succeed(code)))
    return {
      child,
      output: () => ({ stdout, stderr }),
      waitFor: (text) =>
        Effect.gen(function* () {
          const done = yield* Deferred.make<void>()
          watchers.push({ text, done })
          if (stdout.includes(text)) yield* Deferred.succeed(done, undefined)
          yield* Effect.raceFirst(
            Deferred.await(done),
            Effect.flatMap(Deferred.await(closed), (code) =>
              Effect.dieMessage(`exited with ${code} before printing ${JSON.stringify(text)}: ${stdout}\n${stderr}`)
            )
          )
        }),
      exit: Effect.map(Deferred.await(closed), (code) => ({ code, stdout, stderr }))
    }
  })

/** Runs the binary to completion (killed after 100 s), with `stdin` written then closed. */
const run = (
  args: ReadonlyArray<string>,
  options: { readonly env?: Record<string, string>; readonly cwd?: string; readonly stdin?: string } = {}
): Effect.Effect<CliResult> =>
  Effect.acquireUseRelease(
    start(args, options),
    (p) =>
      Effect.zipRight(
        Effect.sync(() => p.child.stdin.end(options.stdin ?? "")),
        p.exit.pipe(
          Effect.timeoutFail({
            duration: Duration.seconds(100),
            onTimeout: () => new Error(`orchestra ${args.join(" ")} did not exit: ${JSON.stringify(p.output())}`)
          }),
          Effect.orDie
        )
      ),
    (p) => Effect.sync(() => p.child.exitCode === null && p.child.kill("SIGKILL"))
  )

const writeConfig = (name: string, config: unknown): string => {
  const file = NodePath.join(dir, name)
  writeFileSync(file, typeof config === "string" ? config : JSON.stringify(config, null, 2))
  return file
}

const parse = (result: CliResult): Record<string, unknown> => {
  try {
    return JSON.parse(result.stdout) as Record<string, unknown>
  } catch {
    throw new Error(`not one JSON document (exit ${result.code}): ${result.stdout}\nstderr: ${result.stderr}`)
  }
}

const completion = (content: string) => ({
  id: "chatcmpl-cli",
  object: "chat.completion",
  created: 1_700_000_000,
  model: "served-model",
  choices: [{ index: 0, message: { role: "assistant", content }, logprobs: null, finish_reason: "stop" }],
  usage: { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10 }
})

/** `/ok/v1` answers with the last user message echoed; `/down/v1` is overloaded; `/hang/v1` never answers. */
const handler: Server.Handler = (request, res: ServerResponse) => {
  if (request.path.startsWith("/hang/")) return Server.hang(res)
  if (request.path.startsWith("/down/")) {
    return Server.json(res, 503, { error: { message: "overloaded", type: "server_error" } })
  }
  const body = request.json as { readonly messages: ReadonlyArray<{ readonly role: string; readonly content: string }> }
  const last = body.messages[body.messages.length - 1]?.content ?? ""
  return Server.json(res, 200, completion(`served: ${last}`))
}

const remoteConfig = (url: string) => ({
  providers: {
    remote: { type: "openai-compatible", baseUrl: `${url}/ok/v1`, model: "cli-model", apiKeyEnv: "CLI_TEST_KEY" },
    down: { type: "openai-compatible", baseUrl: `${url}/down/v1` },
    hang: { type: "openai-compatible", baseUrl: `${url}/hang/v1` }
  },
  defaultProvider: "remote",
  extraDomains: [
    { name: "primary", provider: "down", retry: { maxAttempts: 1 } },
    { name: "slow", provider: "hang", timeout: "30 seconds" }
  ],
  policies: { breakers: false }
})

const SECRET = "sk-cli-test-0123456789-SECRET"

// One test at a time (each runs at most three processes at once): the machine has two cores.
describe("orchestra CLI", { timeout: 120_000 }, () => {
  it.live("--help works with no config, no keys, and a broken ORCHESTRA_CONFIG it never reads", () =>
    Effect.gen(function* () {
      const broken = writeConfig("never-read.json", "{ not json")
      const [root, sub] = yield* Effect.all(
        [
          run(["--help"], { env: { ORCHESTRA_CONFIG: broken } }),
          run(["test", "--help"], { env: { ORCHESTRA_CONFIG: broken } })
        ],
        { concurrency: 2 }
      )
      assert.strictEqual(root.code, 0, root.stderr)
      for (const name of ["test", "bench", "start", "stats"]) assert.include(root.stdout, `- ${name}`)
      assert.strictEqual(sub.code, 0, sub.stderr)
      assert.include(sub.stdout, "--prompt")
      assert.include(sub.stdout, "--domain")
      assert.notInclude(sub.stderr, "config")
    })
  )

  it.live("a usage error exits with 2", () =>
    Effect.gen(function* () {
      const missing = yield* run(["test"])
      assert.strictEqual(missing.code, 2)
      assert.include(missing.stderr, "--prompt")
    })
  )

  it.live("test against the bundled local model (no config file): answer, latency, provenance", () =>
    Effect.gen(function* () {
      const result = yield* run(["test", "--prompt", "hello there", "--domain", "support", "--max-tokens", "6"])
      assert.strictEqual(result.code, 0, result.stderr)
      const [answer, blank, ...rows] = result.stdout.trimEnd().split("\n")
      assert.isAbove(answer!.trim().length, 0)
      assert.strictEqual(blank, "")
      assert.match(rows[0]!, /^latency\s+[\d.]+ m?s$/)
      assert.deepStrictEqual(rows.slice(1), [
        "domain    support",
        "provider  local (model tiny-gpt2)",
        "attempts  1 domain, 0 retries",
        "fallback  not used",
        "source    provider",
        "finish    length"
      ])
    })
  )

  it.scopedLive("test against an OpenAI-compatible server: answer, key from env, fallback, failure exit 1", () =>
    Effect.gen(function* () {
      const server = yield* Server.make(handler)
      const config = writeConfig("remote-test.json", remoteConfig(server.url))
      const env = { CLI_TEST_KEY: SECRET }
      const [direct, fallback, failed] = yield* Effect.all(
        [
          run(["test", "-p", "what is 2+2?", "--domain", "support", "--json", "--config", config], { env }),
          run(
            ["test", "-p", "fall over", "--domain", "primary", "--fallback", "support", "--json", "--config", config],
            {
              env
            }
          ),
          run(["test", "-p", "no luck", "--domain", "primary", "--json", "--config", config], { env })
        ],
        { concurrency: 3 }
      )
      assert.strictEqual(direct.code, 0, direct.stderr)
      assert.deepInclude(parse(direct), {
        ok: true,
        answer: "served: what is 2+2?",
        domain: "support",
        provider: "remote",
        model: "served-model",
        attempts: 1,
        retries: 0,
        fallbackUsed: false,
        source: "provider",
        finishReason: "stop"
      })

      assert.strictEqual(fallback.code, 0, fallback.stderr)
      const answer = parse(fallback)
      assert.strictEqual(answer["answer"], "served: fall over")
      assert.strictEqual(answer["domain"], "support")
      assert.strictEqual(answer["fallbackUsed"], true)
      assert.strictEqual(answer["attempts"], 2)

      assert.strictEqual(failed.code, 1)
      const failure = parse(failed)
      assert.strictEqual(failure["ok"], false)
      assert.deepInclude(failure["error"] as object, { _tag: "ModelError", reason: "Overloaded", status: 503 })

      const requests = yield* server.requests
      const ok = requests.filter((r) => r.path === "/ok/v1/chat/completions")
      assert.strictEqual(ok.length, 2)
      for (const r of ok) {
        assert.strictEqual(r.headers.authorization, `Bearer ${SECRET}`)
        const body = r.json as { model: string; messages: ReadonlyArray<{ role: string; content: string }> }
        assert.strictEqual(body.model, "cli-model")
        assert.strictEqual(body.messages[0]?.role, "system")
        assert.include(body.messages[0]?.content, "customer support")
      }
      assert.strictEqual(requests.filter((r) => r.path.startsWith("/down/")).length, 2)
      for (const r of requests.filter((r) => r.path.startsWith("/down/"))) {
        assert.isUndefined(r.headers.authorization, "a key named for one provider is not sent to another")
      }
      for (const out of [direct, fallback, failed]) assert.notInclude(out.stdout + out.stderr, SECRET)
    })
  )

  it.live("a bad config prints every wrong field with its path and exits with 2", () =>
    Effect.gen(function* () {
      const config = writeConfig("bad.json", {
        providers: { local: { type: "local" }, odd: { type: "nope" } },
        domains: [
          { name: "a", provider: "local" },
          { name: "b", provider: "local", retry: { maxAttempts: 0 } }
        ],
        policies: { maxConcurrent: "many" }
      })
      const missingKey = writeConfig("nokey.json", { providers: { g: { type: "gemini" } } })
      const [asJson, noKey] = yield* Effect.all(
        [
          run(["bench", "--prompts", "x", "--json"], { env: { ORCHESTRA_CONFIG: config } }),
          run(["test", "-p", "x", "--config", missingKey])
        ],
        { concurrency: 2 }
      )
      assert.strictEqual(asJson.code, 2)
      assert.include(asJson.stderr, `invalid config ${config}`)
      assert.include(asJson.stderr, "domains[1].retry.maxAttempts: Expected a number between 1 and 100, actual 0")
      assert.include(asJson.stderr, "providers.odd.type:")
      assert.include(asJson.stderr, 'policies.maxConcurrent: Expected number, actual "many"')
      const error = parse(asJson)["error"] as { kind: string; issues: ReadonlyArray<{ path: string }> }
      assert.strictEqual(error.kind, "config")
      assert.deepStrictEqual(error.issues.map((i) => i.path).sort(), [
        "domains[1].retry.maxAttempts",
        "policies.maxConcurrent",
        "providers.odd.type"
      ])

      assert.strictEqual(noKey.code, 2)
      assert.include(noKey.stderr, 'provider "g"')
      assert.include(noKey.stderr, "GEMINI_API_KEY")
      assert.strictEqual(noKey.stdout, "")
    })
  )

  it.live("bench: sequential then concurrent on a mock provider, failures listed, exit 1 when an item failed", () =>
    Effect.gen(function* () {
      const config = writeConfig("bench.json", {
        providers: {
          fast: { type: "mock", latency: 150 },
          broken: { type: "mock", random: { seed: 1, succeed: 0, fail: { InvalidRequest: 1 } } }
        },
        extraDomains: [{ name: "broken", provider: "broken" }]
      })
      const prompts = NodePath.join(dir, "prompts.txt")
      writeFileSync(prompts, "# six prompts\none\ntwo\n\nthree\nfour\nfive\nbroken: six\n")
      const [json, table] = yield* Effect.all(
        [
          run(["bench", "--file", prompts, "--concurrency", "3", "--json", "--config", config]),
          run(["bench", "--prompts", "a,b,c,d", "-c", "4", "--config", config])
        ],
        { concurrency: 2 }
      )
      assert.strictEqual(json.code, 1, json.stderr)
      const out = parse(json) as {
        ok: boolean
        prompts: number
        concurrency: number
        speedup: number
        sequential: { elapsedMs: number; successes: number; successRate: number }
        concurrent: { elapsedMs: number; successes: number; latency: { p50: number; p95: number } }
        failures: ReadonlyArray<{ run: string; index: number; status: string }>
      }
      assert.strictEqual(out.ok, false)
      assert.strictEqual(out.prompts, 6)
      assert.strictEqual(out.sequential.successes, 5)
      assert.strictEqual(out.concurrent.successes, 5)
      assert.strictEqual(out.sequential.successRate, 83.3)
      // 5 calls of 150 ms one after another, then at most 3 at once: 2 rounds.
      assert.isAtLeast(out.sequential.elapsedMs, 5 * 150)
      assert.isAbove(out.speedup, 1.5)
      assert.isAtLeast(out.concurrent.latency.p50, 140)
      assert.deepStrictEqual(
        out.failures.map((f) => [f.run, f.index, f.status]),
        [
          ["sequential", 5, "error"],
          ["concurrent", 5, "error"]
        ]
      )

      assert.strictEqual(table.code, 0, table.stderr)
      assert.include(table.stdout, "Benchmark: 4 prompts, concurrency 4")
      assert.match(table.stdout, /sequential\s+\d/)
      assert.match(table.stdout, /concurrent\s+\d/)
      assert.match(table.stdout, /speedup\s+\d+\.\d\d×/)
      assert.include(table.stdout, "100.0 %")
      assert.strictEqual(table.stderr, "", "no progress bar when stderr is not a terminal")
    })
  )

  it.live("stats: an empty window on its own, the figures of --prompts when given", () =>
    Effect.gen(function* () {
      const config = writeConfig("stats.json", { providers: { m: { type: "mock", latency: 20 } } })
      const [empty, ran] = yield* Effect.all(
        [
          run(["stats", "--json"]),
          run(["stats", "--prompts", "a,b,c", "--domain", "technical", "--json", "--config", config])
        ],
        { concurrency: 2 }
      )
      assert.strictEqual(empty.code, 0, empty.stderr)
      const none = parse(empty) as { stats: { total: number }; config: string | null }
      assert.strictEqual(none.stats.total, 0)
      assert.isNull(none.config)
      assert.strictEqual(ran.code, 0, ran.stderr)
      const some = parse(ran) as { stats: { total: number; successes: number; successRate: number } }
      assert.strictEqual(some.stats.total, 3)
      assert.strictEqual(some.stats.successes, 3)
      assert.strictEqual(some.stats.successRate, 100)
    })
  )

  it.live("start on the local model, driven through stdin: an answer, stats, exit (later lines ignored)", () =>
    Effect.gen(function* () {
      const result = yield* run(["start"], { stdin: "support: hello\n\nstats\nexit\ntechnical: never asked\n" })
      assert.strictEqual(result.code, 0, result.stderr)
      assert.match(result.stdout, /\[support · local\/tiny-gpt2 · [\d.]+ m?s · 0 retries\]/)
      assert.notInclude(result.stdout, "technical")
      assert.include(result.stdout, "Session stats")
      assert.match(result.stdout, /total\s+1\n/)
      assert.match(result.stdout, /successes\s+1\n/)
      assert.notInclude(result.stdout, "orchestra>", "no prompt when stdin is a pipe")
    })
  )

  it.scopedLive("start --json: one JSON line per answer, error and stats; EOF ends the session with 0", () =>
    Effect.gen(function* () {
      const server = yield* Server.make(handler)
      const config = writeConfig("remote-start.json", remoteConfig(server.url))
      const result = yield* run(["start", "--json", "--config", config], {
        env: { CLI_TEST_KEY: SECRET },
        stdin: "support: first question\nnot-a-domain: second\nprimary: fails\nstats\n"
      })
      assert.strictEqual(result.code, 0, result.stderr)
      const lines = result.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as Record<string, unknown>)
      assert.deepStrictEqual(
        lines.map((l) => l["type"]),
        ["answer", "answer", "error", "stats"]
      )
      assert.deepInclude(lines[0]!, { answer: "served: first question", domain: "support", provider: "remote" })
      // An unknown prefix is part of the query, sent to the default provider without a domain.
      assert.deepInclude(lines[1]!, { answer: "served: not-a-domain: second", domain: null })
      assert.deepInclude(lines[2]!["error"] as object, { reason: "Overloaded" })
      const stats = lines[3]!["stats"] as { total: number; successes: number; failures: number }
      assert.deepStrictEqual([stats.total, stats.successes, stats.failures], [3, 2, 1])
    })
  )

  it.scopedLive("start: Ctrl-C (SIGINT) during a call interrupts it, closes its connection and exits with 130", () =>
    Effect.gen(function* () {
      const server = yield* Server.make(handler)
      const config = writeConfig("remote-sigint.json", remoteConfig(server.url))
      const p = yield* Effect.acquireRelease(
        start(["start", "--config", config], { env: { CLI_TEST_KEY: SECRET } }),
        (p) => Effect.sync(() => p.child.exitCode === null && p.child.kill("SIGKILL"))
      )
      p.child.stdin.write("support: warm up\n")
      yield* p.waitFor("served: warm up").pipe(Effect.timeout("100 seconds"))
      p.child.stdin.write("slow: this one hangs\n")
      yield* Effect.repeat(Effect.delay(server.requests, "20 millis"), {
        until: (rs) => rs.some((r) => r.path.startsWith("/hang/"))
      }).pipe(Effect.timeout("30 seconds"))
      p.child.kill("SIGINT")
      const result = yield* p.exit.pipe(Effect.timeout("30 seconds"))
      assert.strictEqual(result.code, 130, result.stderr)
      assert.include(result.stderr, "interrupted")
      yield* server.awaitAborted(1).pipe(Effect.timeout("5 seconds"))
    })
  )
})

describe("orchestra config (in process)", () => {
  const issues = (input: unknown) =>
    Either.match(CliConfig.validate(input), { onLeft: (e) => e.issues, onRight: () => [] })

  it("the example config at the repository root is valid", () => {
    const text = readFileSync(new URL("../orchestra.config.example.json", import.meta.url), "utf8")
    const result = CliConfig.parse(text)
    assert.isTrue(Either.isRight(result), Either.isLeft(result) ? result.left.message : "")
    const loaded = { file: "example", dir: ".", config: Either.getOrThrow(result) }
    assert.deepStrictEqual(domainNames(loaded), [
      "support",
      "technical",
      "finance",
      "offline",
      "selfhosted",
      "ollama",
      "demo"
    ])
  })

  it("no file means the bundled local model with the predefined domains", () => {
    assert.deepStrictEqual(domainNames({ file: undefined, dir: ".", config: {} }), ["support", "technical", "finance"])
  })

  it("references between sections are checked: unknown providers and duplicate domains", () => {
    assert.deepStrictEqual(
      issues({
        providers: { a: { type: "mock" } },
        defaultProvider: "b",
        domains: [
          { name: "x", provider: "a" },
          { name: "y", provider: "c" }
        ],
        extraDomains: [{ name: "x", provider: "a" }]
      }),
      [
        { path: "defaultProvider", message: 'unknown provider "b" (declared: a)' },
        { path: "domains[1].provider", message: 'unknown provider "c" (declared: a)' },
        { path: "extraDomains[0].name", message: 'duplicate domain "x" (first at domains[0])' }
      ]
    )
    assert.deepStrictEqual(
      issues({ providers: {} }).map((i) => i.path),
      ["providers"]
    )
  })

  it("wrong values are reported once each, at their own path, without the optional-field noise", () => {
    assert.deepStrictEqual(
      issues({
        providers: {
          p: { type: "mock", latency: -5 },
          "my key": { type: "openai-compatible", apiKeyEnv: "not a name" }
        },
        domains: [{ name: "d", provider: "p", temperature: 3 }]
      }),
      [
        {
          path: "providers.p.latency",
          message: 'Expected a duration (milliseconds, or a string such as "150 millis") or { "uniform": [min, max] }'
        },
        { path: 'providers["my key"].apiKeyEnv', message: "Expected an environment variable name such as MY_KEY" },
        { path: "domains[0].temperature", message: "Expected a number between 0 and 2, actual 3" }
      ]
    )
    assert.deepStrictEqual(issues([]), [{ path: "(root)", message: "Expected a JSON object, actual an array" }])
    const notJson = CliConfig.parse("{ nope", "f.json")
    assert.isTrue(Either.isLeft(notJson))
    if (Either.isLeft(notJson))
      assert.match(notJson.left.message, /^invalid config f\.json\n {2}\(root\): not valid JSON/)
  })
})
