/**
 * The `orchestra` command under a demanding user, in process: what a mistake in the config or
 * on the command line says, and what it must never say (a key).
 */
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { ConfigProvider, Console, Effect, FileSystem, Option, Result } from "effect"
import * as CliConfig from "../src/cli/Config.js"
import * as Json from "../src/cli/json.js"
import { provideOrchestra } from "../src/cli/Manager.js"
import * as Providers from "../src/cli/Providers.js"
import * as Setup from "../src/cli/Setup.js"
import { ModelProvider } from "../src/Model.js"
import { inProcess } from "./utils/cli.js"
import * as Server from "./utils/httpServer.js"

const ROOT = fileURLToPath(new URL("..", import.meta.url))

const withEnv = (env: Record<string, string>) =>
  Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env }))
const loaded = (config: unknown): CliConfig.Loaded => ({ file: "test.json", dir: ROOT, ...CliConfig.inspect(config) })

describe("a key pasted into apiKeyEnv", () => {
  // A Gemini key without a "-" is a valid variable name: it was said back as "environment variable AIza… is not set".
  const KEY = "AIzaSyD3xAmpLe9KeyThatLooksReal0123456"

  it.effect("is refused without being said back, on stderr or in the JSON", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        Setup.check(loaded({ providers: { g: { type: "gemini", apiKeyEnv: KEY } } })).pipe(withEnv({}))
      )
      assert.strictEqual(error.issues.length, 1)
      assert.strictEqual(error.issues[0]!.path, "providers.g.apiKeyEnv")
      assert.include(error.issues[0]!.message, "is not set")
      assert.include(error.issues[0]!.message, "the key itself never goes in the file")
      assert.notInclude(JSON.stringify(error.issues), KEY.slice(8))
      assert.notInclude(error.message, KEY.slice(8))
    })
  )

  it.effect("a variable of that shape which is set is read, and a usual name is still said back", () =>
    Effect.gen(function* () {
      const config = {
        providers: {
          g: { type: "gemini", apiKeyEnv: KEY },
          o: { type: "openai-compatible", baseUrl: "http://127.0.0.1:1/v1", apiKeyEnv: "MY_Service_Key_2024" }
        }
      }
      const unset = yield* Effect.flip(Setup.check(loaded(config)).pipe(withEnv({ [KEY]: "k" })))
      assert.deepStrictEqual(unset.issues, [
        { path: "providers.o.apiKeyEnv", message: "environment variable MY_Service_Key_2024 is not set" }
      ])
    })
  )
})

describe("a --config that is not a file", () => {
  it.effect("says what it is in words (it said `not a file (characterdevice)`)", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(CliConfig.load(Option.some("/dev/null"), Option.none()))
      assert.deepStrictEqual(error.issues, [{ path: "(file)", message: "not a file (character device)" }])
      const folder = yield* Effect.flip(CliConfig.load(Option.some(ROOT), Option.none()))
      assert.deepStrictEqual(folder.issues, [{ path: "(file)", message: "not a file (directory)" }])
    }).pipe(Effect.provide(NodeServices.layer))
  )
})

describe("providers of one name", () => {
  // `stats` said such a config was valid (exit 0), and `test` refused it as `provider "(manager)": …`, without a path.
  it.effect("are refused by the config check, naming the field where the second takes the name", () =>
    Effect.gen(function* () {
      const check = (providers: unknown) =>
        Effect.flip(Setup.check(loaded({ providers })).pipe(withEnv({}))).pipe(Effect.map((error) => error.issues))
      const shared =
        "two providers of one name would share its breaker, rate limits, cache entries and stats; give each its own name"
      assert.deepStrictEqual(
        yield* check({ a: { type: "mock" }, b: { type: "mock", name: "a" }, c: { type: "mock", name: "a" } }),
        [
          { path: "providers.b.name", message: `"a" is already the name of providers.a: ${shared}` },
          { path: "providers.c.name", message: `"a" is already the name of providers.a: ${shared}` }
        ]
      )
      assert.deepStrictEqual(yield* check({ m: { type: "mock", name: "x" }, x: { type: "mock" } }), [
        { path: "providers.x", message: `"x" is already the name of providers.m: ${shared}` }
      ])
      const reserved = '"(other)" is reserved: the names past a series bound count together under it'
      assert.deepStrictEqual(yield* check({ m: { type: "mock", name: "(other)" }, "(other)": { type: "mock" } }), [
        { path: "providers.m.name", message: reserved },
        { path: 'providers["(other)"]', message: reserved }
      ])
      // Its calls would count under "(other)" in stats and metrics, as a long domain name's.
      assert.deepStrictEqual(yield* check({ m: { type: "mock", name: "n".repeat(257) } }), [
        {
          path: "providers.m.name",
          message:
            "expected at most 256 characters, got 257: a longer name labels no series of its own in stats and metrics"
        }
      ])
    })
  )
})

describe("a config key in an issue's path", () => {
  it("is bounded as every other check bounds a key: a provider key of 100,000 characters went whole into the path", () => {
    const long = "k".repeat(100_000)
    for (const key of [long, `a/${long}`]) {
      const path = CliConfig.formatPath(["providers", key, "type"])
      assert.isBelow(path.length, 200, path.slice(0, 300))
      assert.include(path, "(100,00")
      assert.isTrue(path.startsWith('providers["'), path.slice(0, 300))
    }
    assert.strictEqual(CliConfig.formatPath(["providers", "a/b", "type"]), 'providers["a/b"].type')
    assert.strictEqual(CliConfig.formatPath(["providers", "m", 2]), "providers.m[2]")
    const { issues } = CliConfig.inspect({ providers: { [long]: { type: "mock", latncy: 1 } } })
    assert.isAbove(issues.length, 0)
    for (const issue of issues) assert.isBelow(issue.path.length, 200, issue.path.slice(0, 300))
  })
})

describe("what the manager refuses when it is built", () => {
  // `stats` said these configs were valid (exit 0); `test` refused them as `provider "(manager)": …`.
  const check = (config: unknown) =>
    Effect.flip(Setup.check(loaded(config)).pipe(withEnv({}))).pipe(Effect.map((error) => error.issues))

  it.effect('a provider key with a "/" (a gateway reads provider/model) is refused by the config check', () =>
    Effect.gen(function* () {
      assert.deepStrictEqual(yield* check({ providers: { "a/b": { type: "mock" } } }), [
        {
          path: 'providers["a/b"]',
          message: 'a provider name is non-empty, without surrounding spaces or a "/" (a gateway reads provider/model)'
        }
      ])
    })
  )

  it.effect("a domain named like a provider's model (`m/fast`) is refused by the config check, where written", () =>
    Effect.gen(function* () {
      const providers = { m: { type: "mock" } }
      const message =
        '"m/fast" reads as the model "fast" of provider "m" (a gateway\'s provider/model name): give the domain a name that does not start with "m/"'
      assert.deepStrictEqual(yield* check({ providers, domains: [{ name: "m/fast", provider: "m" }] }), [
        { path: "domains[0].name", message }
      ])
      assert.deepStrictEqual(yield* check({ providers, extraDomains: [{ name: "m/fast", provider: "m" }] }), [
        { path: "extraDomains[0].name", message }
      ])
    })
  )
})

describe("a secret in a provider's headers in the config file", () => {
  // An Authorization (or api-key) header written in the file went out as a plain string: a server quoting it back
  // in an error had it printed on stderr and in the --json document.
  it.live("is scrubbed from an upstream error that quotes it, as a key from apiKeyEnv is", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* Server.make((request, response) =>
          Server.json(response, 401, {
            error: { message: `bad credentials ${request.headers.authorization} ${request.headers["api-key"]}` }
          })
        )
        const checked = yield* Setup.check(
          loaded({
            providers: {
              o: {
                type: "openai-compatible",
                baseUrl: `${server.url}/v1`,
                model: "m",
                headers: { Authorization: "Bearer sk-HEADER-SECRET-1", "api-key": "AZURE-SECRET-2", "X-Title": "app" }
              }
            }
          })
        ).pipe(withEnv({}))
        const error = yield* Effect.gen(function* () {
          const provider = yield* ModelProvider
          return yield* Effect.flip(provider.generate({ prompt: "hi" }))
        }).pipe(Effect.provide(Providers.layer("o", checked.providers.o!, ROOT, undefined)))
        assert.strictEqual(error._tag, "ModelError")
        assert.include(error.message, "bad credentials")
        assert.notInclude(error.message, "sk-HEADER-SECRET-1")
        assert.notInclude(error.message, "AZURE-SECRET-2")
        const [request] = yield* server.requests
        assert.strictEqual(request!.headers.authorization, "Bearer sk-HEADER-SECRET-1")
        assert.strictEqual(request!.headers["api-key"], "AZURE-SECRET-2")
        assert.strictEqual(request!.headers["x-title"], "app")
      })
    )
  )
})

describe("a YAML config", () => {
  // It was said as a JSON syntax error alone (`expected a value, found "p"`), as if the file were broken JSON.
  it.effect("is refused saying the config file is JSON", () =>
    Effect.gen(function* () {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped()
      const file = `${dir}/orchestra.config.yaml`
      yield* fs.writeFileString(file, "providers:\n  local:\n    type: local\n")
      const error = yield* Effect.flip(CliConfig.load(Option.some(file), Option.none()))
      assert.deepStrictEqual(error.issues, [
        {
          path: "(file)",
          message:
            'not valid JSON at line 1, column 1: expected a value, found "p" (a config file is JSON; YAML is not read)'
        }
      ])
    }).pipe(Effect.scoped, Effect.provide(NodeServices.layer))
  )
})

describe("config: the ollama provider's requestLimits", () => {
  // Ollama.Options takes it as the other HTTP providers do; the file refused it as an unknown field.
  it.live("is a field of the file, checked by the library, reaches the provider, and is named by its path", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* Server.make((_request, response) =>
          Server.json(response, 200, { model: "m", message: { role: "assistant", content: "ok" }, done: true })
        )
        const check = (requestLimits: unknown) =>
          Setup.check(
            loaded({ providers: { o: { type: "ollama", host: server.url, model: "m", requestLimits } } })
          ).pipe(withEnv({}))
        const [zero, ...rest] = (yield* Effect.flip(check({ maxInputChars: 0 }))).issues
        assert.strictEqual(rest.length, 0)
        assert.strictEqual(zero!.path, "providers.o.requestLimits.maxInputChars")
        assert.notInclude(zero!.message, "unknown field")
        const checked = yield* check({ maxInputChars: 5 })
        const error = yield* Effect.gen(function* () {
          const provider = yield* ModelProvider
          return yield* Effect.flip(provider.generate({ prompt: "longer than five" }))
        }).pipe(Effect.provide(Providers.layer("o", checked.providers.o!, ROOT, undefined)))
        assert.strictEqual(error._tag, "ModelError")
        assert.lengthOf(yield* server.requests, 0, "refused before any request")
      })
    )
  )
})

describe("config: the local provider's requestLimits", () => {
  // Local.Options takes it as Ollama's do; the file refused it as an unknown field.
  it.effect("is a field of the file, checked by the library and named by its path", () =>
    Effect.gen(function* () {
      const check = (requestLimits: unknown) =>
        Setup.check(loaded({ providers: { l: { type: "local", requestLimits } } })).pipe(withEnv({}))
      const [zero, ...rest] = (yield* Effect.flip(check({ maxEmbedTexts: 0 }))).issues
      assert.strictEqual(rest.length, 0)
      assert.strictEqual(zero!.path, "providers.l.requestLimits.maxEmbedTexts")
      assert.notInclude(zero!.message, "unknown field")
      const checked = yield* check({ maxEmbedTexts: 3000 })
      assert.deepStrictEqual((checked.providers.l as { readonly requestLimits?: unknown }).requestLimits, {
        maxEmbedTexts: 3000
      })
    })
  )
})

describe("stats alone on a valid config", () => {
  // It said "the config is valid" without saying which: one found through ORCHESTRA_CONFIG or in the working
  // directory is easy to mistake for another.
  it.effect("names the config file it checked", () =>
    Effect.gen(function* () {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped()
      const file = `${dir}/checked.json`
      yield* fs.writeFileString(file, JSON.stringify({ providers: { m: { type: "mock" } } }))
      const result = yield* inProcess(["stats", "--config", file], { terminal: false })
      assert.strictEqual(result.code, 0)
      assert.include(result.err, `orchestra: the config ${file} is valid.`)
    }).pipe(Effect.scoped, Effect.provide(NodeServices.layer))
  )
})

describe("a config with a comment in it", () => {
  // Many editors and tools write JSON with comments (JSONC): it was said as `found "/"` alone.
  it("says JSON has no comments, at the comment", () => {
    const at = (text: string) => Result.match(Json.parse(text), { onSuccess: () => undefined, onFailure: (i) => i })
    assert.deepStrictEqual(at('{\n  // the providers\n  "providers": {}\n}'), {
      line: 2,
      column: 3,
      message: 'expected a property name in quotes, found "/" (JSON has no comments: remove it)'
    })
    assert.deepStrictEqual(at('{ "a": 1 /* one */ }'), {
      line: 1,
      column: 10,
      message: 'expected "," or "}", found "/" (JSON has no comments: remove it)'
    })
    assert.deepStrictEqual(at('{ "a": 1 / 2 }'), { line: 1, column: 10, message: 'expected "," or "}", found "/"' })
  })
})

describe("a config value only the manager refuses", () => {
  // Should one pass the config check, it was said as `provider "(manager)": invalid providers.b.name: …`: a provider
  // that does not exist, and neither the file nor the field's path as every other config issue has them.
  it.effect("is said as a config issue of the file, at its path (exit 2, JSON with the issue)", () =>
    Effect.gen(function* () {
      const config = { providers: { a: { type: "mock" }, b: { type: "mock", name: "a" } } }
      const unchecked: Setup.Checked = {
        loaded: loaded(config),
        providers: config.providers as never,
        keys: {},
        defaultProvider: "a"
      }
      const err: Array<string> = []
      const out: Array<string> = []
      const console: Console.Console = {
        ...globalThis.console,
        log: (...args: ReadonlyArray<unknown>) => void out.push(args.join(" ")),
        error: (...args: ReadonlyArray<unknown>) => void err.push(args.join(" "))
      }
      const error = yield* Effect.flip(
        Effect.void.pipe(
          provideOrchestra({ json: true, config: Option.none() }, unchecked),
          Effect.provideService(Console.Console, console)
        )
      )
      assert.strictEqual(error.code, 2)
      const issue = {
        path: "providers.b.name",
        message:
          '"a" is already the name of providers.a: two providers of one name would share its breaker, rate limits, cache entries and stats; give each its own name'
      }
      assert.deepStrictEqual(err, [`orchestra: invalid config test.json\n  ${issue.path}: ${issue.message}`])
      const json = JSON.parse(out.join("\n")) as { readonly error: Record<string, unknown> }
      assert.deepInclude(json.error, { kind: "config", file: "test.json", issues: [issue] })
    })
  )
})
