/**
 * The `orchestra` command under a demanding user: every field the library takes is in the
 * config file, every failure is said on stderr (and, under `--json`, as JSON on stdout), and
 * a wrong flag value is one line naming the flag.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as NodePath from "node:path"
import { fileURLToPath } from "node:url"
import * as v8 from "node:v8"
import * as vm from "node:vm"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { afterAll, assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, FileSystem, Layer } from "effect"
import * as CliConfig from "../src/cli/Config.js"
import * as Providers from "../src/cli/Providers.js"
import * as Setup from "../src/cli/Setup.js"
import { ModelProvider } from "../src/Model.js"
import { inProcess as run } from "./utils/cli.js"
import * as Server from "./utils/httpServer.js"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
const dir = mkdtempSync(NodePath.join(tmpdir(), "orchestra-cli-review-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const writeConfig = (name: string, config: unknown): string => {
  const file = NodePath.join(dir, name)
  writeFileSync(file, JSON.stringify(config, null, 2))
  return file
}

const withEnv = (env: Record<string, string>) =>
  Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env }))
const loaded = (config: unknown): CliConfig.Loaded => ({ file: "test.json", dir: ROOT, ...CliConfig.inspect(config) })

/** The command run in process, off a terminal, with stdin given. */
const inProcess = (argv: ReadonlyArray<string>, stdin = "", fs?: Layer.Layer<FileSystem.FileSystem>) =>
  run(argv, { stdin, fs, terminal: false })

describe("config: the openai-compatible provider's sendThoughtSignatures", () => {
  it.effect(
    "is a field of the file (a proxy in front of Gemini's OpenAI endpoint needs it), a boolean named by its path",
    () =>
      Effect.gen(function* () {
        const check = (sendThoughtSignatures: unknown) =>
          Setup.check(
            loaded({
              providers: { o: { type: "openai-compatible", baseUrl: "http://127.0.0.1:1/v1", sendThoughtSignatures } }
            })
          ).pipe(withEnv({}))
        const good = yield* check(true)
        assert.strictEqual(good.defaultProvider, "o")
        const [issue, ...rest] = (yield* Effect.flip(check("yes"))).issues
        assert.strictEqual(rest.length, 0)
        assert.strictEqual(issue!.path, "providers.o.sendThoughtSignatures")
        assert.notInclude(issue!.message, "unknown field")
      })
  )
})

describe("config: a key over plain http off loopback", () => {
  it.effect(
    "is refused at apiKeyEnv unless the provider says allowPlainHttpSecrets (a boolean of the file); no key, no refusal",
    () =>
      Effect.gen(function* () {
        const check = (provider: Record<string, unknown>) =>
          Setup.check(loaded({ providers: { o: provider } })).pipe(withEnv({ CLI_PLAIN_KEY: "k-123456" }))
        const vllm = { type: "openai-compatible", baseUrl: "http://10.0.0.5:8000/v1" }
        // Without apiKeyEnv no key is sent: nothing to refuse.
        assert.strictEqual((yield* check(vllm)).defaultProvider, "o")
        assert.strictEqual((yield* check({ type: "ollama", host: "gpu-box.lan" })).defaultProvider, "o")
        const [issue, ...rest] = (yield* Effect.flip(check({ ...vllm, apiKeyEnv: "CLI_PLAIN_KEY" }))).issues
        assert.strictEqual(rest.length, 0)
        assert.strictEqual(issue!.path, "providers.o.apiKeyEnv")
        assert.include(issue!.message, "10.0.0.5:8000")
        assert.include(issue!.message, "allowPlainHttpSecrets")
        const allowed = { ...vllm, apiKeyEnv: "CLI_PLAIN_KEY", allowPlainHttpSecrets: true }
        assert.strictEqual((yield* check(allowed)).defaultProvider, "o")
        const [notBoolean] = (yield* Effect.flip(check({ ...allowed, allowPlainHttpSecrets: "yes" }))).issues
        assert.strictEqual(notBoolean!.path, "providers.o.allowPlainHttpSecrets")
        const gemini = { type: "gemini", baseUrl: "http://10.0.0.6", apiKeyEnv: "CLI_PLAIN_KEY" }
        assert.strictEqual((yield* Effect.flip(check(gemini))).issues[0]!.path, "providers.o.baseUrl")
        assert.strictEqual((yield* check({ ...gemini, allowPlainHttpSecrets: true })).defaultProvider, "o")
      })
  )
})

describe("config: the ollama provider's embeddingDimensions", () => {
  it.effect("is a field of the file, checked by the library and named by its path", () =>
    Effect.gen(function* () {
      const issues = (embeddingDimensions: unknown) =>
        Effect.map(
          Effect.flip(
            Setup.check(loaded({ providers: { o: { type: "ollama", embeddingDimensions } } })).pipe(withEnv({}))
          ),
          (e) => e.issues
        )
      for (const bad of [0, -3, 2.5, Number.NaN]) {
        const [issue, ...rest] = yield* issues(bad)
        assert.strictEqual(rest.length, 0)
        assert.strictEqual(issue!.path, "providers.o.embeddingDimensions")
        assert.notInclude(issue!.message, "unknown field")
      }
      const good = yield* Setup.check(loaded({ providers: { o: { type: "ollama", embeddingDimensions: 256 } } })).pipe(
        withEnv({})
      )
      assert.strictEqual(good.defaultProvider, "o")
    })
  )

  it.live("is sent to the server as `dimensions`", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* Server.make((_request, response) =>
          Server.json(response, 200, { model: "e", embeddings: [[0.1, 0.2, 0.3]] })
        )
        const checked = yield* Setup.check(
          loaded({ providers: { o: { type: "ollama", host: server.url, embeddingDimensions: 3 } } })
        ).pipe(withEnv({}))
        const spec = checked.providers.o!
        const response = yield* Effect.gen(function* () {
          const provider = yield* ModelProvider
          return yield* provider.embed({ texts: ["hi"] })
        }).pipe(Effect.provide(Providers.layer("o", spec, ROOT, undefined)))
        assert.strictEqual(response.vectors[0]!.length, 3)
        const [request] = yield* server.requests
        assert.strictEqual((request!.json as { dimensions?: number }).dimensions, 3)
      })
    )
  )
})

describe("config: the openai-compatible provider's requestLimits", () => {
  it.live("is a field of the file, checked by the library and named by its path", () =>
    Effect.gen(function* () {
      const issues = (requestLimits: unknown) =>
        Effect.map(
          Effect.flip(
            Setup.check(
              loaded({
                providers: { c: { type: "openai-compatible", baseUrl: "http://127.0.0.1:9/v1", requestLimits } }
              })
            ).pipe(withEnv({}))
          ),
          (e) => e.issues
        )
      const [zero, ...rest] = yield* issues({ maxInputChars: 0 })
      assert.strictEqual(rest.length, 0)
      assert.strictEqual(zero!.path, "providers.c.requestLimits.maxInputChars")
      assert.notInclude(zero!.message, "unknown field")
      const [misspelt] = yield* issues({ maxInputChar: 10 })
      assert.include(misspelt!.path, "maxInputChar")
      const good = yield* Setup.check(
        loaded({
          providers: {
            c: { type: "openai-compatible", baseUrl: "http://127.0.0.1:9/v1", requestLimits: { maxMessages: 8 } }
          }
        })
      ).pipe(withEnv({}))
      assert.strictEqual(good.defaultProvider, "c")
    })
  )
})

describe("a failure is said on stderr, with --json too (stdout then holds the JSON)", () => {
  const failing = () =>
    writeConfig("down.json", {
      providers: { down: { type: "mock", random: { success: 0, failures: { Unavailable: 1 } } } },
      defaultProvider: "down",
      policies: { breakers: false, executor: { retry: { maxAttempts: 1 } } }
    })

  it.live("bench with failed items", () =>
    Effect.gen(function* () {
      const config = failing()
      for (const json of [false, true]) {
        const run = yield* inProcess([
          "bench",
          "--prompts",
          "a,b",
          "--rounds",
          "1",
          "--config",
          config,
          ...(json ? ["--json"] : [])
        ])
        assert.strictEqual(run.code, 1)
        assert.match(run.err, /^orchestra: 4 of 4 items failed; the first: sequential #1: ModelError\(Unavailable\)/m)
        if (json) assert.strictEqual((JSON.parse(run.out) as { ok: boolean }).ok, false)
      }
    })
  )

  it.live("stats --prompts with failed items", () =>
    Effect.gen(function* () {
      const config = failing()
      for (const json of [false, true]) {
        const run = yield* inProcess(["stats", "--prompts", "a,b,c", "--config", config, ...(json ? ["--json"] : [])])
        assert.strictEqual(run.code, 1)
        assert.match(run.err, /^orchestra: 3 of 3 prompts failed; the first: #1: ModelError\(Unavailable\)/m)
        if (json) assert.strictEqual((JSON.parse(run.out) as { ok: boolean }).ok, false)
      }
    })
  )

  it.live("start --json: a failed query and an empty one are error lines on stdout and lines on stderr", () =>
    Effect.gen(function* () {
      const config = failing()
      const plain = yield* inProcess(["start", "--config", config], "hi\nsupport: \n")
      const json = yield* inProcess(["start", "--config", config, "--json"], "hi\nsupport: \n")
      assert.strictEqual(plain.code, 0)
      assert.strictEqual(json.code, 0)
      const errors = json.out.split("\n").map((line) => JSON.parse(line) as { type: string })
      assert.deepStrictEqual(
        errors.map((e) => e.type),
        ["error", "error"]
      )
      for (const run of [plain, json]) {
        assert.match(run.err, /^error after .+: ModelError\(Unavailable\)/m)
        assert.match(run.err, /^empty query after "support:"/m)
      }
    })
  )
})

const mockConfig = () => writeConfig("mock.json", { providers: { m: { type: "mock", reply: "fine" } } })

describe("--fallback with no domain in it is a usage error, as an empty --config or --file is", () => {
  it.live('test, bench and stats refuse `--fallback ""` and `--fallback " , "` naming the flag', () =>
    Effect.gen(function* () {
      const config = mockConfig()
      const commands = [
        ["test", "-p", "hi"],
        ["bench", "--prompts", "a", "--rounds", "1"],
        ["stats", "--prompts", "a"],
        ["stats"]
      ]
      for (const command of commands) {
        for (const value of ["", " , ", ","]) {
          const run = yield* inProcess([...command, "--fallback", value, "--config", config])
          assert.strictEqual(run.code, 2, `${command.join(" ")} --fallback ${JSON.stringify(value)}: ${run.err}`)
          assert.strictEqual(run.err, "orchestra: --fallback names no domain: give domain names separated by commas")
          assert.strictEqual(run.out, "")
        }
        const json = yield* inProcess([...command, "--fallback", "", "--config", config, "--json"])
        assert.strictEqual(json.code, 2)
        assert.deepStrictEqual(JSON.parse(json.out), {
          ok: false,
          error: { message: "--fallback names no domain: give domain names separated by commas", kind: "usage" }
        })
      }
    })
  )
})

describe("an integer flag's wrong value is one line naming the flag and the value, not the help page", () => {
  const cases: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
    [["test", "-p", "hi"], "--max-tokens"],
    [["bench", "--prompts", "a"], "--max-tokens"],
    [["bench", "--prompts", "a"], "--concurrency"],
    [["bench", "--prompts", "a"], "--rounds"],
    [["stats", "--prompts", "a"], "--max-tokens"],
    [["stats", "--prompts", "a"], "--concurrency"],
    [["stats"], "--concurrency"]
  ]

  it.live("1.5, abc, an empty value, 1e400 and NaN: exit 2, one line on stderr, JSON under --json", () =>
    Effect.gen(function* () {
      const config = mockConfig()
      for (const [command, flag] of cases) {
        for (const [value, got] of [
          ["1.5", "1.5"],
          ["abc", '"abc"'],
          ["", '""'],
          ["1e400", '"1e400"'],
          ["NaN", '"NaN"'],
          ["0x10", '"0x10"']
        ] as const) {
          const what = `${command.join(" ")} ${flag} ${JSON.stringify(value)}`
          const run = yield* inProcess([...command, flag, value, "--config", config])
          assert.strictEqual(run.code, 2, `${what}: ${run.err}`)
          assert.strictEqual(run.err, `orchestra: ${flag}: expected an integer, got ${got}`, what)
          assert.strictEqual(run.out, "")
        }
        const json = yield* inProcess([...command, `${flag}=2.5`, "--config", config, "--json"])
        assert.strictEqual(json.code, 2)
        assert.deepStrictEqual(JSON.parse(json.out), {
          ok: false,
          error: { message: `${flag}: expected an integer, got 2.5`, kind: "usage" }
        })
      }
    })
  )

  it.live("a good value still runs, and the help still says integer", () =>
    Effect.gen(function* () {
      const config = mockConfig()
      const ran = yield* inProcess([
        "bench",
        "--prompts",
        "a,b",
        "-c",
        "2",
        "--rounds",
        " 1 ",
        "--max-tokens",
        "+8",
        "--config",
        config,
        "--json"
      ])
      assert.strictEqual(ran.code, 0, ran.err)
      const out = JSON.parse(ran.out) as { concurrency: number; rounds: number; maxTokens: number }
      assert.deepStrictEqual([out.concurrency, out.rounds, out.maxTokens], [2, 1, 8])
      const defaults = yield* inProcess(["bench", "--prompts", "a", "--config", config, "--json"])
      const got = JSON.parse(defaults.out) as { concurrency: number; rounds: number; maxTokens: number | null }
      assert.deepStrictEqual([got.concurrency, got.rounds, got.maxTokens], [5, 3, null])
      const help = yield* inProcess(["bench", "--help"])
      assert.match(help.out, /--concurrency, -c integer/)
      assert.match(help.out, /--rounds integer/)
      assert.match(help.out, /--max-tokens integer/)
    })
  )
})

describe("bench with many failed items", () => {
  it.live(
    "200,000 failed prompts in a round: the figures and every failure, exit 1 (it was a RangeError, exit 1)",
    () =>
      Effect.gen(function* () {
        const config = writeConfig("refuses.json", {
          providers: { down: { type: "mock", random: { success: 0, failures: { InvalidRequest: 1 } } } },
          policies: { breakers: false }
        })
        const file = NodePath.join(dir, "many.txt")
        writeFileSync(file, Array.from({ length: 200_000 }, (_, i) => `p${i}`).join("\n"))
        const run = yield* inProcess([
          "bench",
          "--file",
          file,
          "--rounds",
          "1",
          "-c",
          "1000",
          "--config",
          config,
          "--json"
        ])
        assert.strictEqual(run.code, 1)
        assert.notInclude(run.err, "unexpected failure")
        assert.match(run.err, /^orchestra: 400000 of 400000 items failed; the first: sequential #1: /m)
        const out = JSON.parse(run.out) as { failures: ReadonlyArray<unknown>; sequential: { failures: number } }
        assert.strictEqual(out.sequential.failures, 200_000)
        assert.strictEqual(out.failures.length, 400_000)
      }),
    // Generous: 400,000 calls, one at a time for half of them, on a CI machine sharing its two cores with other test files.
    { timeout: 300_000 }
  )
})

describe("a provider that cannot start", () => {
  it.live('is named once: `provider "l": model …`, not `provider "l": l: model …`', () =>
    Effect.gen(function* () {
      const config = writeConfig("no-model.json", {
        providers: { l: { type: "local", modelPath: "./no-such-models", cacheDir: "./model-cache" } }
      })
      const result = yield* inProcess(["test", "-p", "x", "--json", "--config", config])
      assert.strictEqual(result.code, 1, result.err)
      assert.match(result.err, /^orchestra: provider "l": model "tiny-(gpt2|bert)" not found: no config\.json in /)
      const error = (JSON.parse(result.out) as { error: { message: string; kind: string; provider: string } }).error
      assert.match(error.message, /^provider "l": model "tiny-(gpt2|bert)" not found/)
      assert.deepInclude(error, { kind: "provider", provider: "l" })
    })
  )
})

describe("bench's memory", () => {
  v8.setFlagsFromString("--expose-gc")
  const gc = vm.runInNewContext("gc") as () => void
  // The end of each run is seen by its progress bar, which is not drawn in CI (CI=true, as .ci/run sets it).
  const noCi = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.provideService(effect, ConfigProvider.ConfigProvider, ConfigProvider.fromUnknown({}))

  it.live(
    "each run is folded into the figures the report needs as it ends: the answers of the rounds before are not kept",
    () =>
      Effect.gen(function* () {
        const config = writeConfig("memory.json", { providers: { m: { type: "mock" } }, policies: { breakers: false } })
        const file = NodePath.join(dir, "memory.txt")
        writeFileSync(file, Array.from({ length: 10_000 }, (_, i) => `p${i}`).join("\n"))
        // The live heap (after a full collection) each time a run's progress bar ends: the six runs of three rounds.
        const heaps: Array<number> = []
        const result = yield* run(
          ["bench", "--file", file, "--rounds", "3", "-c", "100", "--json", "--config", config],
          {
            drawn: (text) => {
              if (text !== "\n") return
              gc()
              heaps.push(process.memoryUsage().heapUsed)
            }
          }
        ).pipe(noCi)
        assert.strictEqual(result.code, 0, result.err)
        assert.strictEqual(heaps.length, 6)
        const out = JSON.parse(result.out) as { sequential: { successes: number }; concurrent: { successes: number } }
        assert.strictEqual(out.sequential.successes, 30_000)
        assert.strictEqual(out.concurrent.successes, 30_000)
        // Every result kept, the heap grew by ~3.5 MB a run of 10,000 items; folded, by what the report needs of it (a
        // duration an item: 80 kB). Held by the rounds' loop until the next run replaced it, the run before's result
        // (its answers) was alive at each later run's end: 3.5 MB more than at the first's, on Node 22 and 24.
        const grown = (Math.max(...heaps) - heaps[0]!) / 1e6
        assert.isBelow(grown, 1.5, `${grown.toFixed(1)} MB more at a run's end than at the first's`)
      }),
    { timeout: 120_000 }
  )

  it.live(
    "without --json, the failures the text does not show are counted, not kept",
    () =>
      Effect.gen(function* () {
        const config = writeConfig("memory-failing.json", {
          providers: { down: { type: "mock", random: { success: 0, failures: { InvalidRequest: 1 } } } },
          policies: { breakers: false }
        })
        const file = NodePath.join(dir, "memory-failing.txt")
        writeFileSync(file, Array.from({ length: 10_000 }, (_, i) => `p${i}`).join("\n"))
        const heaps: Array<number> = []
        const result = yield* run(["bench", "--file", file, "--rounds", "3", "-c", "100", "--config", config], {
          drawn: (text) => {
            if (text !== "\n") return
            gc()
            heaps.push(process.memoryUsage().heapUsed)
          }
        }).pipe(noCi)
        assert.strictEqual(result.code, 1)
        assert.strictEqual(heaps.length, 6)
        const lines = result.out.split("\n")
        const listed = lines.indexOf("60000 failed items:")
        assert.isAbove(listed, 0, result.out)
        assert.match(lines[listed + 1]!, /^ {2}sequential round 1 #1: ModelError\(InvalidRequest\): /)
        assert.match(lines[listed + 20]!, /^ {2}(sequential|concurrent) round 1 #\d+: ModelError\(InvalidRequest\): /)
        assert.strictEqual(lines[listed + 21], "  ... and 59980 more")
        assert.match(result.err, /^orchestra: 60000 of 60000 items failed; the first: sequential round 1 #1: /m)
        // Kept, the failures of the runs before took ~3.5 MB a run of 10,000 items; as above, the run before's result is
        // not alive at a run's end either.
        const grown = (Math.max(...heaps) - heaps[0]!) / 1e6
        assert.isBelow(grown, 1.5, `${grown.toFixed(1)} MB more at a run's end than at the first's`)
      }),
    { timeout: 120_000 }
  )
})

describe("a prompts file that is a device", () => {
  it.live("is read up to its bound, as a pipe is, not whole: --file /dev/zero is too large, not 2 GiB read", () =>
    Effect.gen(function* () {
      // The real file system, but a device read whole is a failure of the test (it used to allocate until 2 GiB).
      const guarded = Layer.effect(
        FileSystem.FileSystem,
        Effect.gen(function* () {
          const fs = yield* FileSystem.FileSystem
          return FileSystem.FileSystem.of({
            ...fs,
            readFile: (path) => (path.startsWith("/dev/") ? Effect.die(`${path} read whole`) : fs.readFile(path))
          })
        })
      ).pipe(Layer.provide(NodeServices.layer))
      const run = yield* inProcess(["bench", "--file", "/dev/zero", "--config", mockConfig()], "", guarded)
      assert.strictEqual(run.code, 2, run.err)
      assert.strictEqual(run.err, "orchestra: cannot read /dev/zero: more than 16777216 bytes (at most 16777216)")
    })
  )
})

describe("prompts with an empty query", () => {
  it.live("are named up to five, then counted: a file of 50,000 is one short line, not a line of megabytes", () =>
    Effect.gen(function* () {
      const file = NodePath.join(dir, "empty-queries.txt")
      writeFileSync(file, ["fine", ...Array.from({ length: 50_000 }, () => "support: ")].join("\n"))
      const run = yield* inProcess(["bench", "--file", file, "--config", mockConfig()])
      assert.strictEqual(run.code, 2)
      assert.strictEqual(
        run.err,
        'orchestra: empty queries after the domain in prompt #2 ("support:"), #3 ("support:"), #4 ("support:"), ' +
          '#5 ("support:"), #6 ("support:") and 49995 more: write the question after "domain:"'
      )
    })
  )
})

describe("more prompts than policies.maxItems", () => {
  it.live("is refused before anything runs, naming policies.maxItems (it ran the warm-up, then named `items`)", () =>
    Effect.gen(function* () {
      const config = writeConfig("max-items.json", {
        providers: { m: { type: "mock", reply: "fine" } },
        policies: { maxItems: 2 }
      })
      for (const command of [["bench", "--rounds", "1"], ["stats"]]) {
        const run = yield* inProcess([...command, "--prompts", "a,b,c", "--config", config])
        assert.strictEqual(run.code, 2, run.err)
        assert.strictEqual(run.err, "orchestra: 3 prompts: more than a batch takes (policies.maxItems: 2)")
        assert.strictEqual(run.out, "")
      }
      const fits = yield* inProcess(["stats", "--prompts", "a,b", "--config", config])
      assert.strictEqual(fits.code, 0, fits.err)
    })
  )

  it.live("are refused as they are counted, before each is parsed into an item (a 16 MiB file holds 8 million)", () =>
    Effect.gen(function* () {
      const config = writeConfig("max-items-file.json", {
        providers: { m: { type: "mock", reply: "fine" } },
        policies: { maxItems: 2 }
      })
      // The third prompt's empty query would be found by parsing it: the count is refused first, so none is parsed.
      const file = NodePath.join(dir, "max-items.txt")
      writeFileSync(file, "a\n# a comment\n\nb\nsupport: \n")
      for (const command of [["bench", "--rounds", "1"], ["stats"]]) {
        const run = yield* inProcess([...command, "--file", file, "--config", config])
        assert.strictEqual(run.code, 2, run.err)
        assert.strictEqual(run.err, "orchestra: 3 prompts: more than a batch takes (policies.maxItems: 2)")
      }
    })
  )
})

describe("a config with a great many issues", () => {
  it.live(
    "prints the first 50 and counts the rest, on stderr and in the JSON (a line and an object each, 100,000 times)",
    () =>
      Effect.gen(function* () {
        const provider: Record<string, unknown> = { type: "mock" }
        for (let i = 0; i < 100_000; i++) provider[`f${i.toString(36)}`] = 0
        const config = NodePath.join(dir, "many-issues.json")
        writeFileSync(config, JSON.stringify({ providers: { p: provider } }))
        const run = yield* inProcess(["stats", "--json", "--config", config])
        assert.strictEqual(run.code, 2)
        const lines = run.err.split("\n")
        assert.strictEqual(lines.length, 52, run.err.slice(0, 500))
        assert.strictEqual(lines[0], `orchestra: invalid config ${config}`)
        assert.match(lines[1]!, /^ {2}providers\.p\.f0: unknown field \(expected one of type, /)
        assert.strictEqual(lines[51], "  ... and 99950 more")
        const error = (JSON.parse(run.out) as { error: { issues: Array<unknown>; moreIssues: number } }).error
        assert.strictEqual(error.issues.length, 50)
        assert.deepStrictEqual(error.issues[0], {
          path: "providers.p.f0",
          message: lines[1]!.slice("  providers.p.f0: ".length)
        })
        assert.strictEqual(error.moreIssues, 99_950)
        // At the bound, nothing is counted.
        const few = NodePath.join(dir, "fifty-issues.json")
        writeFileSync(
          few,
          JSON.stringify({ providers: { p: { ...Object.fromEntries(Object.entries(provider).slice(0, 51)) } } })
        )
        const fifty = yield* inProcess(["stats", "--json", "--config", few])
        assert.strictEqual(fifty.err.split("\n").length, 51)
        assert.notInclude(fifty.err, "more")
        assert.notProperty((JSON.parse(fifty.out) as { error: object }).error, "moreIssues")
      })
  )

  it.effect(
    "is checked in time proportional to the file: 100,000 wrong domains or 20,000 wrong providers take seconds, not hours",
    () =>
      Effect.gen(function* () {
        const domains = yield* Effect.flip(
          Setup.check(loaded({ domains: Array.from({ length: 100_000 }, () => 1) })).pipe(withEnv({}))
        )
        assert.strictEqual(domains.issues.length, 100_000)
        assert.strictEqual(domains.issues[99_999]!.path, "domains[99999]")
        const providers = Object.fromEntries(
          Array.from({ length: 20_000 }, (_, i) => [`p${i}`, { type: "mock", odd: 0 }] as const)
        )
        const many = yield* Effect.flip(Setup.check(loaded({ providers })).pipe(withEnv({})))
        assert.strictEqual(many.issues.length, 20_000)
        assert.strictEqual(many.issues[19_999]!.path, "providers.p19999.odd")
        assert.match(many.issues[19_999]!.message, /^unknown field \(expected one of type, /)
      }),
    30_000
  )

  it.effect(
    "naming an undeclared provider lists some declared ones, not all: 28,000 such domains of 5,000 providers took 40 s and 4 GB",
    () =>
      Effect.gen(function* () {
        const providers = Object.fromEntries(
          Array.from({ length: 5_000 }, (_, i) => [`p${i}`, { type: "mock" }] as const)
        )
        const extraDomains = Array.from({ length: 28_000 }, (_, i) => ({ name: `d${i}`, provider: "z" }))
        const limits = { providers: { z: { requestsPerMinute: 1 } } }
        const error = yield* Effect.flip(
          Setup.check(loaded({ providers, extraDomains, policies: { rateLimits: limits } })).pipe(withEnv({}))
        )
        assert.strictEqual(error.issues.length, 28_001)
        const declared = Array.from({ length: 20 }, (_, i) => `"p${i}"`).join(", ")
        assert.deepStrictEqual(error.issues[0], {
          path: "extraDomains[0].provider",
          message: `unknown provider "z" (declared: ${declared}, and 4980 more)`
        })
        assert.deepStrictEqual(error.issues[28_000], {
          path: "policies.rateLimits.providers.z",
          message: `unknown provider "z" (declared: ${declared}, and 4980 more)`
        })
      }),
    20_000
  )

  it.effect(
    // Each issue's top-level field was once looked up in a list of every key: 150,000 unknown fields took 15 s on a quiet
    // machine (a second since). The timeout is no speed check (shared CI machines are no clock): it ends a run that
    // would take minutes.
    "is put in file order: 150,000 unknown top-level fields, each named, the field after them too",
    () =>
      Effect.gen(function* () {
        const config: Record<string, unknown> = {}
        for (let i = 0; i < 150_000; i++) config[i.toString(36)] = 0
        config.policies = { maxConcurrent: 0 }
        const error = yield* Effect.flip(Setup.check(loaded(config)).pipe(withEnv({})))
        assert.strictEqual(error.issues.length, 150_001)
        assert.match(error.issues[0]!.message, /^unknown field \(expected one of /)
        assert.isTrue(error.issues.some((issue) => issue.path === "policies.maxConcurrent"))
      }),
    60_000
  )
})

describe("stats without prompts", () => {
  it.live("refuses --concurrency and --max-tokens, which apply to prompts it would run, naming them (exit 2)", () =>
    Effect.gen(function* () {
      const config = mockConfig()
      for (const [flags, named] of [
        [["-c", "8"], "--concurrency applies"],
        [["--concurrency", "8"], "--concurrency applies"],
        [["--max-tokens", "100"], "--max-tokens applies"],
        [["-c", "8", "--max-tokens", "100"], "--concurrency and --max-tokens apply"]
      ] as const) {
        const run = yield* inProcess(["stats", ...flags, "--config", config])
        assert.strictEqual(run.code, 2, run.err)
        assert.strictEqual(
          run.err,
          `orchestra: ${named} to prompts run: give --prompts or --file (without them, stats runs nothing)`
        )
        assert.strictEqual(run.out, "")
        const json = yield* inProcess(["stats", "--json", ...flags, "--config", config])
        assert.strictEqual(json.code, 2)
        assert.strictEqual((JSON.parse(json.out) as { error: { kind: string } }).error.kind, "usage")
      }
      // A wrong value is still named as such; the flags with prompts, and the checks without, still run.
      assert.include((yield* inProcess(["stats", "-c", "0", "--config", config])).err, "--concurrency")
      assert.strictEqual((yield* inProcess(["stats", "--config", config])).code, 0)
      assert.strictEqual((yield* inProcess(["stats", "--domain", "support", "--config", config])).code, 0)
      const run = yield* inProcess(["stats", "--prompts", "a,b", "-c", "2", "--max-tokens", "10", "--config", config])
      assert.strictEqual(run.code, 0, run.err)
    })
  )
})

describe("a config's long names in its issues", () => {
  it.live("are cut short on each line and in the JSON: a key of 100,000 characters, and 2,000 providers listed", () =>
    Effect.gen(function* () {
      const long = "k".repeat(100_000)
      const providers = Object.fromEntries(
        Array.from({ length: 2_000 }, (_, i) => [`provider-${i}`, { type: "mock" }] as const)
      )
      const config = NodePath.join(dir, "long-names.json")
      writeFileSync(
        config,
        JSON.stringify({
          providers: { ...providers, [long]: { type: "mock", odd: 0 } },
          defaultProvider: "nope",
          extraDomains: [{ name: "x", provider: "nope" }]
        })
      )
      const run = yield* inProcess(["stats", "--json", "--config", config])
      assert.strictEqual(run.code, 2)
      const lines = run.err.split("\n")
      assert.isAtLeast(lines.length, 4)
      for (const line of lines.slice(1)) assert.isAtMost(line.length, 600, line.slice(0, 300))
      const issues = (JSON.parse(run.out) as { error: { issues: Array<{ path: string; message: string }> } }).error
        .issues
      for (const issue of issues) assert.isAtMost(issue.path.length + issue.message.length, 600)
      assert.include(run.err, 'defaultProvider: unknown provider "nope" (declared: "provider-0", "provider-1"')
      assert.include(run.err, "unknown field")
    })
  )
})

describe("an unknown --domain in a config of many domains", () => {
  it.live("names the first known domains and counts the rest: one short line, not every name", () =>
    Effect.gen(function* () {
      const config = writeConfig("many-domains.json", {
        providers: { m: { type: "mock", reply: "fine" } },
        extraDomains: Array.from({ length: 3_000 }, (_, i) => ({ name: `domain-${i}`, provider: "m" }))
      })
      const run = yield* inProcess(["stats", "--domain", "nope", "--config", config])
      assert.strictEqual(run.code, 2, run.err.slice(0, 500))
      assert.isAtMost(run.err.length, 600, run.err.slice(0, 600))
      assert.include(run.err, 'orchestra: unknown domain "nope" (known: support, technical, finance, domain-0')
      assert.include(run.err, "and 2983 more)")
      const long = yield* inProcess(["stats", "--domain", "x".repeat(100_000), "--config", config])
      assert.strictEqual(long.code, 2)
      assert.isAtMost(long.err.length, 600)
      const few = yield* inProcess(["stats", "--fallback", "nope", "--config", mockConfig()])
      assert.strictEqual(few.err, 'orchestra: unknown domain "nope" (known: support, technical, finance)')
    })
  )
})

describe("an integer flag's long wrong value", () => {
  it.live("is cut short in its one line (a value of 100,000 characters was said back whole)", () =>
    Effect.gen(function* () {
      for (const value of ["9".repeat(100_000), "x".repeat(100_000)]) {
        const run = yield* inProcess(["stats", "--prompts", "a", "--concurrency", value, "--config", mockConfig()])
        assert.strictEqual(run.code, 2)
        assert.strictEqual(run.err, `orchestra: --concurrency: expected an integer, got "${value.slice(0, 64)}..."`)
      }
    })
  )
})

describe("a single-value flag given twice is one line naming the flag, not effect/cli's help page", () => {
  it.live("--domain, -d, --max-tokens and --port twice: exit 2, one line, JSON under --json", () =>
    Effect.gen(function* () {
      const config = mockConfig()
      for (const [argv, flag] of [
        [["test", "-p", "hi", "--domain", "a", "--domain", "b"], "--domain"],
        [["test", "-p", "hi", "-d", "a", "--domain=b"], "--domain"],
        [["test", "-p", "hi", "--max-tokens", "5", "--max-tokens", "6"], "--max-tokens"],
        [["serve", "--port", "1", "--port", "2"], "--port"]
      ] as const) {
        const what = argv.join(" ")
        const twice = yield* inProcess([...argv, "--config", config])
        assert.strictEqual(twice.code, 2, `${what}: ${twice.err}`)
        assert.strictEqual(twice.err, `orchestra: ${flag} is given twice: give it once`, what)
        assert.strictEqual(twice.out, "", what)
        const json = yield* inProcess([...argv, "--config", config, "--json"])
        assert.strictEqual(json.code, 2, what)
        assert.deepStrictEqual(JSON.parse(json.out), {
          ok: false,
          error: { message: `${flag} is given twice: give it once`, kind: "usage" }
        })
      }
      const thrice = yield* inProcess(["test", "-p", "a", "-p", "b", "-p", "c", "--config", config])
      assert.strictEqual(thrice.err, "orchestra: --prompt is given 3 times: give it once")
      // start writes its errors as JSON lines.
      const start = yield* inProcess(["start", "--domain", "a", "--domain", "b", "--json", "--config", config])
      assert.strictEqual(start.code, 2, start.err)
      assert.deepStrictEqual(JSON.parse(start.out), {
        type: "error",
        error: { message: "--domain is given twice: give it once", kind: "usage" }
      })
    })
  )
})

describe("bench's warm-up", () => {
  it.live("is one call per domain the prompts run on: a prompt without a prefix runs on --domain's", () =>
    Effect.gen(function* () {
      const config = writeConfig("warm.json", {
        providers: { m: { type: "mock" } },
        domains: [
          { name: "support", provider: "m" },
          { name: "finance", provider: "m" }
        ]
      })
      const run = yield* inProcess([
        "bench",
        "--prompts",
        "a,support: b,finance: c",
        "--domain",
        "support",
        "--rounds",
        "1",
        "--json",
        "--config",
        config
      ])
      assert.strictEqual(run.code, 0, run.err)
      // `a` and `support: b` both run on support: one warm-up call for it, one for finance (it made three).
      assert.strictEqual((JSON.parse(run.out) as { warmUp: { calls: number } }).warmUp.calls, 2)
    })
  )
})
