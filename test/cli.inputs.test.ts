/**
 * The `orchestra` command's inputs, as a demanding user gives them: config and domain errors
 * read one way (the path, then what is wrong, lower case), a prompts file is bounded before
 * any work, and prompts meet domains the way the help says.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as NodePath from "node:path"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { afterAll, assert, describe, it } from "@effect/vitest"
import { ByteSize, Effect, FileSystem, Layer, Result } from "effect"
import * as Domain from "../src/Domain.js"
import { inProcess } from "./utils/cli.js"

const dir = mkdtempSync(NodePath.join(tmpdir(), "orchestra-cli-inputs-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const writeConfig = (name: string, config: unknown): string => {
  const file = NodePath.join(dir, name)
  writeFileSync(file, JSON.stringify(config, null, 2))
  return file
}

const run = (argv: ReadonlyArray<string>) => inProcess(argv, { terminal: false })

/**
 * The file system, but `file`'s size is what it was when looked at (`size` bytes: it grew
 * since), and reading it whole fails the test.
 */
const grownSince = (file: string, size: number) =>
  Layer.effect(
    FileSystem.FileSystem,
    Effect.gen(function* () {
      const fs = yield* FileSystem.FileSystem
      return FileSystem.FileSystem.of({
        ...fs,
        stat: (path) =>
          Effect.map(fs.stat(path), (info) => (path === file ? { ...info, size: ByteSize.bytes(size) } : info)),
        readFile: (path) => (path === file ? Effect.die(`${path} read whole`) : fs.readFile(path))
      })
    })
  ).pipe(Layer.provide(NodeServices.layer))

describe("a config or domain error reads one way: the path, then what is wrong, lower case", () => {
  it.live("a domain missing its provider (it said `domains[0].provider: Missing key`)", () =>
    Effect.gen(function* () {
      const config = writeConfig("no-provider.json", {
        providers: { m: { type: "mock" } },
        domains: [{ name: "a" }]
      })
      const result = yield* run(["stats", "--config", config])
      assert.strictEqual(result.code, 2)
      assert.strictEqual(result.err, `orchestra: invalid config ${config}\n  domains[0].provider: missing (required)`)
    })
  )

  it.live("no provider declared is said once, not again as the predefined domains' provider (given: nothing)", () =>
    Effect.gen(function* () {
      const config = writeConfig("no-providers.json", { providers: {} })
      const result = yield* run(["stats", "--config", config])
      assert.strictEqual(result.code, 2)
      assert.strictEqual(
        result.err,
        `orchestra: invalid config ${config}\n  providers: declare at least one provider (or leave \`providers\` out to use the bundled local model)`
      )
    })
  )

  it.live("an unknown field names the known one it is likely a typo of, else the known fields (bounded)", () =>
    Effect.gen(function* () {
      const config = writeConfig("typo.json", {
        providers: { l: { type: "local", poolsize: 2, zzz: 1 }, m: { type: "mock", latncy: "1 second" } }
      })
      const result = yield* run(["stats", "--config", config])
      assert.strictEqual(result.code, 2)
      const lines = result.err.split("\n")
      assert.include(lines, "  providers.l.poolsize: unknown field (did you mean poolSize?)")
      assert.include(lines, "  providers.m.latncy: unknown field (did you mean latency?)")
      const far = lines.find((line) => line.startsWith("  providers.l.zzz: "))
      assert.match(
        far!,
        /^ {2}providers\.l\.zzz: unknown field \(expected one of type, name, generationModel, .+, and \d+ others\)$/
      )
    })
  )

  it("Domain.check says it as the config checks do", () => {
    const issue = (input: unknown) => {
      const checked = Domain.check(input)
      assert.isTrue(Result.isFailure(checked))
      return Result.isFailure(checked) ? checked.failure : undefined
    }
    assert.deepStrictEqual(issue([{ name: "a" }]), { path: "domains[0].provider", message: "missing (required)" })
    assert.deepStrictEqual(issue([{ name: "a", provider: "m", sytem: "x" }]), {
      path: "domains[0].sytem",
      message: "unknown field (did you mean system?)"
    })
    for (const input of [[{ name: "a", provider: "m", temperature: "hot" }], [{ name: " a", provider: "m" }]]) {
      const { path, message } = issue(input)!
      assert.match(message, /^[a-z]/, `${path}: ${message}`)
    }
  })
})

describe("a prompts file over the bound (16 MiB)", () => {
  const max = 16 * 1024 * 1024

  it.live(
    "whose size the file system does not say (a growing log, a /proc file) is read up to the bound, not whole",
    () =>
      Effect.gen(function* () {
        const config = writeConfig("bound.json", { providers: { m: { type: "mock" } } })
        const file = NodePath.join(dir, "growing.txt")
        writeFileSync(file, "what is the time?\n".repeat(Math.ceil((max + 1) / 18)))
        const grew = grownSince(file, 18)
        for (const command of ["stats", "bench"]) {
          const result = yield* inProcess([command, "--file", file, "--config", config], { terminal: false, fs: grew })
          assert.strictEqual(result.code, 2, result.err)
          assert.strictEqual(result.err, `orchestra: cannot read ${file}: more than ${max} bytes (at most ${max})`)
          assert.strictEqual(result.out, "")
        }
      })
  )
})

describe("prompts and domains given together", () => {
  const config = () =>
    writeConfig("comma.json", {
      providers: { m: { type: "mock" } },
      domains: [
        { name: "a", provider: "m" },
        { name: "b", provider: "m" },
        { name: "a,b", provider: "m" }
      ]
    })

  it.live(
    "a domain with a comma in its name, which --prompts and --fallback split, is a usage error naming the flag",
    () =>
      Effect.gen(function* () {
        const file = config()
        // It ran two prompts, `a` on no domain and `q` on domain b, for the one prompt `a,b: q` (and bench, four rounds' worth).
        for (const command of [["stats"], ["bench", "--rounds", "1"]]) {
          const result = yield* run([...command, "--prompts", "a,b: q", "--config", file, "--json"])
          assert.strictEqual(result.code, 2, result.out)
          assert.strictEqual(
            result.err,
            'orchestra: --prompts is split at commas, and the domain "a,b" has one in its name: give these prompts with --file'
          )
          assert.deepInclude(JSON.parse(result.out) as object, { ok: false })
        }
        for (const command of [
          ["stats", "--prompts", "q"],
          ["bench", "--prompts", "q", "--rounds", "1"],
          ["test", "-p", "q"]
        ]) {
          const result = yield* run([...command, "--fallback", "a,b", "--config", file])
          assert.strictEqual(result.code, 2, result.out)
          assert.strictEqual(
            result.err,
            'orchestra: --fallback is split at commas, and the domain "a,b" has one in its name: it cannot be named there'
          )
        }
        // The same prompt from a file is one prompt, on its domain; other prompts are as they were.
        const prompts = NodePath.join(dir, "comma.txt")
        writeFileSync(prompts, "a,b: q\n")
        const one = yield* run(["stats", "--file", prompts, "--config", file, "--json"])
        assert.strictEqual(one.code, 0, one.err)
        assert.strictEqual((JSON.parse(one.out) as { prompts: number }).prompts, 1)
        const two = yield* run(["stats", "--prompts", "a: x,b: y", "--fallback", "b", "--config", file, "--json"])
        assert.strictEqual(two.code, 0, two.err)
        assert.strictEqual((JSON.parse(two.out) as { prompts: number }).prompts, 2)
      })
  )
})

describe("a config file over the bound (1 MiB)", () => {
  it.live("whose size the file system does not say (a file still growing) is read up to the bound, not whole", () =>
    Effect.gen(function* () {
      const max = 1024 * 1024
      const file = NodePath.join(dir, "growing.json")
      writeFileSync(file, `{"providers":{"m":{"type":"mock"}}}${" ".repeat(2 * max)}`)
      const grew = grownSince(file, 36)
      const result = yield* inProcess(["stats", "--config", file], { terminal: false, fs: grew })
      assert.strictEqual(result.code, 2, result.err)
      assert.strictEqual(
        result.err,
        `orchestra: invalid config ${file}\n  (file): more than ${max} bytes: a config file is at most ${max} bytes`
      )
    })
  )
})

describe("a gateway file over the bound (1 MiB)", () => {
  it.live("whose size the file system does not say (a file still growing) is read up to the bound, not whole", () =>
    Effect.gen(function* () {
      const max = 1024 * 1024
      const file = NodePath.join(dir, "growing.gateway.json")
      writeFileSync(file, `{}${" ".repeat(2 * max)}`)
      const grew = grownSince(file, 2)
      const result = yield* inProcess(["serve", "--gateway", file, "--port", "0"], { terminal: false, fs: grew })
      assert.strictEqual(result.code, 2, result.err)
      assert.include(result.err, `more than ${max} bytes: a gateway file is at most ${max} bytes`)
    })
  )
})

describe("a gateway file with several mistakes", () => {
  it.live("names every one, each by its path in the file (it said only the first, in the schema's words)", () =>
    Effect.gen(function* () {
      const file = writeConfig("several.gateway.json", {
        server: { port: "4000", host: 5 },
        redis: { onUnreachableAtStart: "later" },
        admin: { keyEnv: "sk-live-0123456789abcdef" },
        metrics: { tokenEnv: "TOKEN", token: "x" },
        keys: {}
      })
      const result = yield* inProcess(["serve", "--json", "--gateway", file, "--port", "0"], { terminal: false })
      assert.strictEqual(result.code, 2, result.err)
      const issues = [
        // In the schema's order of the fields, not the file's.
        { path: "server.host", message: "expected string, got 5" },
        { path: "server.port", message: 'expected number, got "4000"' },
        { path: "redis.onUnreachableAtStart", message: 'expected "fail" | "start", got "later"' },
        {
          path: "admin.keyEnv",
          message:
            "expected the name of an environment variable such as MY_SECRET (the secret itself never goes in the file)"
        },
        { path: "metrics.token", message: "unknown field (did you mean tokenEnv?)" }
      ]
      const message = `${file}: ${issues.length} mistakes\n${issues.map((i) => `  ${i.path}: ${i.message}`).join("\n")}`
      assert.strictEqual(result.err, `orchestra: ${message}`)
      assert.deepStrictEqual(JSON.parse(result.out), { ok: false, error: { message, kind: "config", file, issues } })
      // A secret written in place of a variable's name is refused, never repeated.
      assert.notInclude(result.out + result.err, "sk-live")
    })
  )

  it.live(
    "shows the first 20 (as the key store says its keys' mistakes), then how many more: a file may hold thousands",
    () =>
      Effect.gen(function* () {
        const fields = Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`extra${i}`, i]))
        const file = writeConfig("many.gateway.json", { ...fields, allowAnonymous: true })
        const result = yield* inProcess(["serve", "--json", "--gateway", file, "--port", "0"], { terminal: false })
        assert.strictEqual(result.code, 2, result.err)
        const lines = result.err.split("\n")
        assert.strictEqual(lines[0], `orchestra: ${file}: 60 mistakes`)
        assert.match(lines[1]!, /^ {2}extra0: unknown field \(expected one of /)
        assert.match(lines[20]!, /^ {2}extra19: unknown field \(expected one of /)
        assert.strictEqual(lines[21], "  ... and 40 more")
        assert.strictEqual(lines.length, 22)
        const error = JSON.parse(result.out).error as { issues: ReadonlyArray<unknown>; moreIssues: number }
        assert.strictEqual(error.issues.length, 20)
        assert.strictEqual(error.moreIssues, 40)
      })
  )
})

describe("a gateway file whose mistakes only the command sees", () => {
  it.live(
    "says them all at once too: unset variables, a secret in the file, admin without keys, a wrong redis.timeout",
    () =>
      Effect.gen(function* () {
        const token = "metrics-token-in-the-file-0123456789"
        const file = writeConfig("command-mistakes.gateway.json", {
          gateway: { metricsToken: token },
          redis: { urlEnv: "TEST_UNSET_GATEWAY_REDIS_URL", timeout: 0 },
          admin: { keyEnv: "TEST_UNSET_GATEWAY_ADMIN_KEY" },
          metrics: { tokenEnv: "TEST_UNSET_GATEWAY_METRICS_TOKEN" }
        })
        const result = yield* inProcess(["serve", "--json", "--gateway", file, "--port", "0"], { terminal: false })
        assert.strictEqual(result.code, 2, result.err)
        const issues = [
          { path: "redis.urlEnv", message: "set the environment variable TEST_UNSET_GATEWAY_REDIS_URL" },
          { path: "admin.keyEnv", message: "set the environment variable TEST_UNSET_GATEWAY_ADMIN_KEY" },
          {
            path: "gateway.metricsToken",
            message: "a secret is not written in the gateway file: name its environment variable in metrics.tokenEnv"
          },
          { path: "metrics.tokenEnv", message: "set the environment variable TEST_UNSET_GATEWAY_METRICS_TOKEN" },
          { path: "admin", message: "the admin routes manage keys: add a `keys` section" },
          { path: "redis.timeout", message: "expected a duration above zero, got 0" }
        ]
        const message = `${file}: ${issues.length} mistakes\n${issues.map((i) => `  ${i.path}: ${i.message}`).join("\n")}`
        assert.strictEqual(result.err, `orchestra: ${message}`)
        assert.deepStrictEqual(JSON.parse(result.out), { ok: false, error: { message, kind: "config", file, issues } })
        assert.notInclude(result.out + result.err, token)
      })
  )
})

describe("a gateway file with mistakes in several sections' values", () => {
  it.live("says each section's at once (it said the first layer's to fail, one start each)", () =>
    Effect.gen(function* () {
      const sha256 = "0".repeat(64)
      const file = writeConfig("values.gateway.json", {
        gateway: { maxBodyBytes: -1 },
        keys: {
          keys: [
            { id: "a", sha256, rpm: -1 },
            { id: "b", sha256, rpm: 1.5 }
          ]
        },
        metrics: { tokenEnv: "TEST_UNSET_GATEWAY_METRICS_TOKEN" }
      })
      const result = yield* inProcess(["serve", "--json", "--gateway", file, "--port", "0"], { terminal: false })
      assert.strictEqual(result.code, 2, result.err)
      const issues = [
        { path: "metrics.tokenEnv", message: "set the environment variable TEST_UNSET_GATEWAY_METRICS_TOKEN" },
        { path: "gateway.maxBodyBytes", message: "expected a value of at least 1024, got -1" },
        { path: "keys.keys[0].rpm", message: "expected a value of at least 1, got -1" },
        { path: "keys.keys[1].rpm", message: "expected an integer, got 1.5" }
      ]
      const message = `${file}: ${issues.length} mistakes\n${issues.map((i) => `  ${i.path}: ${i.message}`).join("\n")}`
      assert.strictEqual(result.err, `orchestra: ${message}`)
      assert.deepStrictEqual(JSON.parse(result.out), { ok: false, error: { message, kind: "config", file, issues } })
    })
  )

  it.live("says each wrong value of the gateway section, each naming its field (it said the first)", () =>
    Effect.gen(function* () {
      const file = writeConfig("gateway-values.gateway.json", {
        gateway: {
          maxBody: 5,
          maxBodyBytes: -1,
          defaultMaxTokens: 0,
          stream: { idleTimeout: 0 },
          drainTimeout: "soon",
          drainDelay: -1
        },
        keys: { keys: [] }
      })
      const result = yield* inProcess(["serve", "--json", "--gateway", file, "--port", "0"], { terminal: false })
      assert.strictEqual(result.code, 2, result.err)
      const { issues } = JSON.parse(result.out).error as { issues: ReadonlyArray<{ path: string; message: string }> }
      assert.deepStrictEqual(
        issues.map((issue) => issue.path),
        [
          "gateway.maxBody",
          "gateway.maxBodyBytes",
          "gateway.defaultMaxTokens",
          "gateway.stream.idleTimeout",
          "gateway.drainTimeout",
          "gateway.drainDelay"
        ]
      )
      assert.strictEqual(issues[0]!.message, "unknown option (did you mean maxBodyBytes?)")
      assert.strictEqual(issues[1]!.message, "expected a value of at least 1024, got -1")
      for (const issue of issues) assert.notInclude(issue.message, "problems in all", issue.path)
      const lines = result.err.split("\n")
      assert.strictEqual(lines[0], `orchestra: ${file}: 6 mistakes`)
      assert.deepStrictEqual(
        lines.slice(1),
        issues.map((issue) => `  ${issue.path}: ${issue.message}`)
      )
    })
  )

  it.live("a section's many mistakes count in the bound of 20, those its check did not keep counted too", () =>
    Effect.gen(function* () {
      const keys = Array.from({ length: 30 }, (_, i) => ({ id: `k${i}`, sha256: "0".repeat(64), rpm: -1 }))
      const file = writeConfig("many-keys.gateway.json", { gateway: { maxBodyBytes: -1 }, keys: { keys } })
      const result = yield* inProcess(["serve", "--json", "--gateway", file, "--port", "0"], { terminal: false })
      assert.strictEqual(result.code, 2, result.err)
      const lines = result.err.split("\n")
      assert.strictEqual(lines[0], `orchestra: ${file}: 31 mistakes`)
      assert.strictEqual(lines[1], "  gateway.maxBodyBytes: expected a value of at least 1024, got -1")
      assert.strictEqual(lines[20], "  keys.keys[18].rpm: expected a value of at least 1, got -1")
      assert.strictEqual(lines[21], "  ... and 11 more")
      assert.strictEqual(JSON.parse(result.out).error.moreIssues, 11)
    })
  )
})

describe("serve --port out of range", () => {
  it.live("is said with the range of a port, however large (it said at most 9007199254740991 past that)", () =>
    Effect.gen(function* () {
      const config = writeConfig("port.json", { providers: { m: { type: "mock" } } })
      for (const [value, shown] of [
        ["70000", "70000"],
        ["9007199254740992", "9007199254740992"],
        ["99999999999999999999999", "1e+23"],
        ["1e300", "1e+300"]
      ] as const) {
        const result = yield* run(["serve", "--port", value, "--config", config])
        assert.strictEqual(result.code, 2, result.err)
        assert.strictEqual(result.err, `orchestra: --port: expected a value of at most 65535, got ${shown}`)
      }
      const below = yield* run(["serve", "--port", "-99999999999999999999999", "--config", config])
      assert.strictEqual(below.err, "orchestra: --port: expected a value of at least 0, got -1e+23")
      // Past a double's range it is no number at all. Said in one form with the range (and every
      // command's flags): `--port 70000` said "invalid --port: ...", `--port abc` "--port: ...".
      const infinite = yield* run(["serve", "--port", "1e400", "--config", config])
      assert.strictEqual(infinite.err, 'orchestra: --port: expected an integer, got "1e400"')
    })
  )
})

describe("--file - reads the prompts from stdin", () => {
  const mock = () => writeConfig("stdin-mock.json", { providers: { m: { type: "mock", reply: "ok" } } })

  it.live("stats --file - runs the lines piped in (it said `cannot read -: no such file`)", () =>
    Effect.gen(function* () {
      const result = yield* inProcess(["stats", "--json", "--file", "-", "--config", mock()], {
        terminal: false,
        stdin: "# prompts\nfirst\n\nsecond\n"
      })
      assert.strictEqual(result.code, 0, result.err)
      const out = JSON.parse(result.out)
      assert.strictEqual(out.prompts, 2)
      assert.strictEqual(out.stats.successes, 2)
    })
  )

  it.live("stdin is checked as a file is: UTF-8, not empty, named `stdin`", () =>
    Effect.gen(function* () {
      const empty = yield* inProcess(["bench", "--file", "-", "--config", mock()], { terminal: false, stdin: "\n#\n" })
      assert.strictEqual(empty.code, 2)
      assert.strictEqual(empty.err, "orchestra: no prompts given: stdin has only blank lines and # comments")
      const big = yield* inProcess(["stats", "--file", "-", "--config", mock()], {
        terminal: false,
        stdin: "q\n".repeat(9 * 1024 * 1024)
      })
      assert.strictEqual(big.code, 2)
      assert.strictEqual(
        big.err,
        `orchestra: cannot read stdin: more than ${16 * 1024 * 1024} bytes (at most ${16 * 1024 * 1024})`
      )
    })
  )
})
