/**
 * `orchestra serve` in a child process (node with the tsx loader on src/cli/bin.ts): keys
 * from the gateway file, SIGTERM drains (a running stream finishes with `[DONE]`, then the
 * process exits), and a bad gateway file is refused with exit code 2 naming the field.
 */
import { type ChildProcessWithoutNullStreams, execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { type AddressInfo, connect as connectTo, createServer } from "node:net"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import * as NodePath from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { afterAll, assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Deferred, Effect, Exit, Schedule } from "effect"
import OpenAI from "openai"
import { hashSecret } from "../../src/gateway/keys/KeyStore.js"
import { inProcess } from "../utils/cli.js"
import { freePort, skipRedis, skipReason, startRedis, startRedisAt, startTlsRedis } from "../utils/redis.js"

const ROOT = fileURLToPath(new URL("../..", import.meta.url))
const ENTRY = NodePath.join(ROOT, "src/cli/bin.ts")
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href
const dir = mkdtempSync(NodePath.join(tmpdir(), "orchestra-serve-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const SECRET = "sk-serve-test-5f4e3d2c1b0a-SECRET"

const write = (name: string, value: unknown): string => {
  const file = NodePath.join(dir, name)
  writeFileSync(file, JSON.stringify(value, null, 2))
  return file
}

interface Serving {
  readonly child: ChildProcessWithoutNullStreams
  readonly url: Effect.Effect<string>
  readonly exit: Effect.Effect<{ readonly code: number | null; readonly stdout: string; readonly stderr: string }>
}

const env = (): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !/^ORCHESTRA_/.test(k)) out[k] = v
  return out
}

const serve = (args: ReadonlyArray<string>, extraEnv: Record<string, string> = {}) =>
  Effect.acquireRelease(
    Effect.gen(function* () {
      const child = spawn(process.execPath, ["--import", TSX, ENTRY, "serve", "--json", ...args], {
        cwd: dir,
        env: { ...env(), ...extraEnv },
        stdio: ["pipe", "pipe", "pipe"]
      })
      let stdout = ""
      let stderr = ""
      const listening = yield* Deferred.make<string>()
      const closed = yield* Deferred.make<number | null>()
      child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
        stdout += chunk
        // One JSON document on one line (a supervisor reads the first line for the URL).
        const end = stdout.indexOf("\n")
        if (end === -1) return
        const first = stdout.slice(0, end)
        try {
          const { ok, url } = JSON.parse(first) as { readonly ok: boolean; readonly url: string }
          Deferred.doneUnsafe(listening, ok ? Exit.succeed(url) : Exit.die(new Error(first)))
        } catch {
          Deferred.doneUnsafe(listening, Exit.die(new Error(`not one JSON line: ${first}`)))
        }
      })
      child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
        stderr += chunk
      })
      child.on("close", (code) => {
        Deferred.doneUnsafe(closed, Exit.succeed(code))
        Deferred.doneUnsafe(listening, Exit.die(new Error(`exited with ${code}: ${stdout}\n${stderr}`)))
      })
      return {
        child,
        url: Deferred.await(listening),
        exit: Effect.map(Deferred.await(closed), (code) => ({ code, stdout, stderr }))
      } satisfies Serving
    }),
    (serving) => Effect.sync(() => serving.child.exitCode === null && serving.child.kill("SIGKILL"))
  )

const config = write("orchestra.config.json", {
  providers: { mock: { type: "mock", reply: "one two three four five six", chunkDelay: 150 } }
})

describe("orchestra serve", () => {
  it.live(
    "serves with keys from the gateway file, and SIGTERM drains: a running stream ends with [DONE], then the process exits",
    () =>
      Effect.gen(function* () {
        const gateway = write("gateway.json", {
          server: { host: "127.0.0.1", port: 0 },
          gateway: { drainTimeout: "20 seconds" },
          keys: { keys: [{ id: "k1", sha256: hashSecret(SECRET) }] }
        })
        const serving = yield* serve(["--config", config, "--gateway", gateway])
        const url = yield* serving.url
        const client = new OpenAI({ apiKey: SECRET, baseURL: `${url}/v1`, maxRetries: 0 })
        const refused = yield* Effect.promise(() =>
          new OpenAI({ apiKey: "sk-wrong", baseURL: `${url}/v1`, maxRetries: 0 }).models.list().then(
            () => 200,
            (e: { status?: number }) => e.status
          )
        )
        assert.strictEqual(refused, 401)
        const text = yield* Effect.promise(async () => {
          const stream = await client.chat.completions.create({
            model: "support",
            messages: [{ role: "user", content: "hi" }],
            stream: true
          })
          let out = ""
          let signalled = false
          for await (const chunk of stream) {
            out += chunk.choices[0]?.delta?.content ?? ""
            if (!signalled) {
              signalled = true
              serving.child.kill("SIGTERM")
            }
          }
          return out
        })
        assert.strictEqual(text, "one two three four five six")
        const { code, stderr } = yield* serving.exit
        assert.strictEqual(code, 130)
        assert.notInclude(stderr, SECRET)
      }),
    120_000
  )

  it.live(
    "refuses a bad gateway file with exit code 2 naming the field, and an open gateway off loopback",
    () =>
      Effect.gen(function* () {
        const bad = write("bad.json", { gateway: { maxBodyBytes: -1 }, allowAnonymous: true })
        const refused = yield* serve(["--config", config, "--gateway", bad, "--port", "0"])
        const result = yield* refused.exit
        assert.strictEqual(result.code, 2)
        assert.include(result.stderr, "gateway.maxBodyBytes")
        // A key's model the gateway does not serve is named where the file has it, under keys.
        const misspelt = write("misspelt-model.json", {
          server: { port: 0 },
          keys: { keys: [{ id: "k1", sha256: hashSecret(SECRET), allowedModels: ["support", "gtp-4"] }] }
        })
        const locked = yield* (yield* serve(["--config", config, "--gateway", misspelt])).exit
        assert.strictEqual(locked.code, 2, locked.stderr)
        assert.include(
          locked.stderr,
          'invalid keys.keys[0].allowedModels[1]: unknown model "gtp-4": expected a domain ('
        )
        assert.notInclude(locked.stderr, "gateway.keys")
        // A file without keys nor allowAnonymous names the top-level section, not `gateway.keys`
        // (a field the gateway section refuses as unknown).
        const keyless = write("keyless.json", { server: { port: 0 } })
        const noKeys = yield* (yield* serve(["--config", config, "--gateway", keyless])).exit
        assert.strictEqual(noKeys.code, 2, noKeys.stderr)
        assert.include(noKeys.stderr, "keys: the gateway file has no `keys` section")
        assert.notInclude(noKeys.stderr, "gateway.keys")
        // A file saved in another encoding is refused, not read with U+FFFD in its key ids.
        const latin1 = NodePath.join(dir, "latin1.json")
        const text = `{\n  "server": { "port": 0 },\n  "keys": { "keys": [{ "id": "\xe9quipe", "sha256": "${hashSecret(SECRET)}" }] }\n}`
        writeFileSync(latin1, Buffer.from(text, "latin1"))
        const encoded = yield* (yield* serve(["--config", config, "--gateway", latin1])).exit
        assert.strictEqual(encoded.code, 2, encoded.stderr)
        assert.include(encoded.stderr, `${latin1}: line 3 is not UTF-8 text (save the file as UTF-8)`)
        // An empty path (an unset variable), a folder and an empty host are said in words, exit 2.
        for (const [flags, said] of [
          [["--gateway", ""], "--gateway is empty"],
          [["--gateway", dir], `${dir}: not a file (directory)`],
          [["--gateway", "/dev/null"], "/dev/null: not a file (character device)"],
          // The address as given, quoted: it read "not not a host", and a line break in it forged a line.
          [["--host", "not a host"], 'loopback only, not "not a host";'],
          [["--gateway", keyless, "--host", " "], "--host is empty"]
        ] as const) {
          const refusedFlag = yield* (yield* serve(["--config", config, ...flags])).exit
          assert.strictEqual(refusedFlag.code, 2, refusedFlag.stderr)
          assert.include(refusedFlag.stderr, said)
          assert.notInclude(refusedFlag.stderr, "FileSystem")
        }
        const open = yield* serve(["--config", config, "--host", "0.0.0.0", "--port", "0"])
        const openResult = yield* open.exit
        assert.strictEqual(openResult.code, 2)
        assert.include(openResult.stderr, "loopback")
      }),
    // Ten processes one after the other: at a load of 15 (a shared machine) they took over 120 s.
    300_000
  )
})

/** `GET path` on a raw connection with this `Host` header (fetch will not send another): the status, head and body. */
const withHost = (port: number, host: string, path = "/v1/models") =>
  Effect.callback<{ readonly status: number; readonly head: string; readonly body: string }>((resume) => {
    const socket = connectTo(port, "127.0.0.1", () =>
      socket.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`)
    )
    let answer = ""
    socket.setEncoding("utf8")
    socket.on("data", (chunk: string) => {
      answer += chunk
    })
    socket.on("close", () =>
      resume(
        Effect.succeed({
          status: Number(answer.slice(9, 12)),
          head: answer.slice(0, answer.indexOf("\r\n\r\n")).toLowerCase(),
          body: answer.slice(answer.indexOf("\r\n\r\n") + 4)
        })
      )
    )
    return Effect.sync(() => socket.destroy())
  })

describe("orchestra serve, an open gateway on loopback", () => {
  it.live(
    "answers only its loopback names: a request for another host (a web page's, its name pointed at 127.0.0.1) is a 403",
    () =>
      Effect.gen(function* () {
        const serving = yield* serve(["--config", config, "--port", "0"])
        const port = Number(new URL(yield* serving.url).port)
        const ids = new Set<string | undefined>()
        for (const host of [
          `evil.example:${port}`,
          "evil.example",
          `localhost.evil.example:${port}`,
          "127.0.0.1.nip.io"
        ]) {
          const refused = yield* withHost(port, host)
          assert.strictEqual(refused.status, 403, host)
          const error = (JSON.parse(refused.body) as { error: { code: string; type: string } }).error
          assert.deepStrictEqual([error.code, error.type], ["host_not_allowed", "permission_error"], host)
          ids.add(/\r\nx-request-id: (req_[0-9a-z]+)\r\n/.exec(`\r\n${refused.head}\r\n`)?.[1])
        }
        // Named and counted as every other refusal of the gateway.
        assert.strictEqual(ids.size, 4)
        assert.isFalse(ids.has(undefined))
        const metrics = (yield* withHost(port, `localhost:${port}`, "/metrics")).body
        assert.include(metrics, 'orchestra_gateway_requests_total{route="other",status="403"} 4')
        assert.include(metrics, 'orchestra_gateway_errors_total{reason="Forbidden"} 4')
        for (const host of [
          `127.0.0.1:${port}`,
          `localhost:${port}`,
          "localhost",
          `[::1]:${port}`,
          `LocalHost:${port}`
        ]) {
          assert.strictEqual((yield* withHost(port, host)).status, 200, host)
        }
        serving.child.kill("SIGTERM")
        yield* serving.exit
      }),
    120_000
  )

  it.live(
    "with a gateway file, a request for any host is the keys' to answer, or allowAnonymous's to serve",
    () =>
      Effect.gen(function* () {
        const gateway = write("keys-any-host.json", {
          server: { port: 0 },
          keys: { keys: [{ id: "k1", sha256: hashSecret(SECRET) }] }
        })
        const serving = yield* serve(["--config", config, "--gateway", gateway])
        const port = Number(new URL(yield* serving.url).port)
        assert.strictEqual((yield* withHost(port, "gateway.internal")).status, 401)
        serving.child.kill("SIGTERM")
        yield* serving.exit
        // An open gateway the file asks for, behind the operator's own proxy (which may send its public name).
        const open = write("anonymous-any-host.json", { server: { port: 0 }, allowAnonymous: true })
        const anonymous = yield* serve(["--config", config, "--gateway", open])
        const openPort = Number(new URL(yield* anonymous.url).port)
        assert.strictEqual((yield* withHost(openPort, "llm.example.com")).status, 200)
        anonymous.child.kill("SIGTERM")
        yield* anonymous.exit
      }),
    120_000
  )
})

describe("orchestra serve, start-up failures", () => {
  it.live(
    "a port in use is a sentence naming the address (exit 1); a bad port names --port or server.port, once",
    () =>
      Effect.gen(function* () {
        const taken = createServer()
        yield* Effect.acquireRelease(
          Effect.callback<void>((resume) => {
            taken.listen(0, "127.0.0.1", () => resume(Effect.void))
          }),
          () =>
            Effect.callback<void>((resume) => {
              taken.close(() => resume(Effect.void))
            })
        )
        const port = (taken.address() as AddressInfo).port
        const fromFile = write("bad-port.json", { server: { port: 70_000 }, allowAnonymous: true })
        const exitOf = (args: ReadonlyArray<string>) => Effect.flatMap(serve(args), (started) => started.exit)
        const [inUse, flag, file] = yield* Effect.all(
          [
            exitOf(["--config", config, "--port", String(port)]),
            exitOf(["--config", config, "--port", "-1"]),
            exitOf(["--config", config, "--gateway", fromFile])
          ],
          { concurrency: 3 }
        )
        assert.strictEqual(inUse.code, 1, inUse.stderr)
        assert.deepStrictEqual(JSON.parse(inUse.stdout), {
          ok: false,
          error: { message: `cannot listen on 127.0.0.1:${port}: the address is already in use`, kind: "start" }
        })
        assert.strictEqual(flag.code, 2, flag.stderr)
        assert.include(flag.stderr, "orchestra: --port: expected a value of at least 0, got -1")
        // A flag's value is a usage error, as `--port abc` and every other command's flags are.
        assert.deepStrictEqual(JSON.parse(flag.stdout).error, {
          message: "--port: expected a value of at least 0, got -1",
          kind: "usage"
        })
        assert.strictEqual(file.code, 2, file.stderr)
        assert.include(file.stderr, "invalid server.port: expected a value of at most 65535, got 70000")
        assert.deepStrictEqual(JSON.parse(file.stdout).error, {
          message: `${fromFile}: invalid server.port: expected a value of at most 65535, got 70000`,
          kind: "config",
          file: fromFile,
          issues: [{ path: "server.port", message: "expected a value of at most 65535, got 70000" }]
        })
        for (const result of [flag, file]) assert.notInclude(result.stderr, "gateway.port")
      }),
    120_000
  )

  it.live(
    "an unreachable Redis is a sentence naming its variable (exit 1); a REDIS_URL that is no URL names redis.urlEnv (exit 2); no password printed",
    () =>
      Effect.gen(function* () {
        const gateway = write("redis-gateway.json", { server: { port: 0 }, allowAnonymous: true, redis: {} })
        const exitOf = (url: string) =>
          Effect.flatMap(serve(["--config", config, "--gateway", gateway], { REDIS_URL: url }), (s) => s.exit)
        const [down, malformed] = yield* Effect.all(
          [exitOf(`redis://user:${SECRET}@127.0.0.1:1/0`), exitOf(`redis://user:${SECRET}@127.0.0.1:1:2/0`)],
          { concurrency: 2 }
        )
        assert.strictEqual(down.code, 1, down.stderr)
        const error = (JSON.parse(down.stdout) as { error: { message: string; kind: string } }).error
        assert.strictEqual(error.kind, "start")
        assert.match(error.message, /^cannot connect to Redis \(REDIS_URL\): .*ECONNREFUSED/)
        assert.strictEqual(malformed.code, 2, malformed.stderr)
        assert.include(malformed.stderr, "invalid redis.urlEnv: expected a redis:// or rediss:// URL")
        assert.notInclude(malformed.stderr, "unexpected failure")
        for (const result of [down, malformed]) assert.notInclude(result.stdout + result.stderr, SECRET)
      }),
    120_000
  )
  it.live(
    "a wrong redis.commandTimeout is named as itself, not as redis.timeout (which the file did not give)",
    () =>
      Effect.gen(function* () {
        const exitOf = (name: string, redis: Record<string, unknown>) =>
          Effect.flatMap(
            serve(
              ["--config", config, "--gateway", write(name, { server: { port: 0 }, allowAnonymous: true, redis })],
              {
                REDIS_URL: "redis://127.0.0.1:1/0"
              }
            ),
            (started) => started.exit
          )
        const [zero, negative, both] = yield* Effect.all(
          [
            exitOf("command-timeout-zero.json", { commandTimeout: 0 }),
            exitOf("command-timeout-negative.json", { commandTimeout: -5 }),
            exitOf("command-timeout-both.json", { timeout: 0, commandTimeout: "1 second" })
          ],
          { concurrency: 3 }
        )
        for (const [result, path, message] of [
          [zero, "redis.commandTimeout", "expected a duration above zero, got 0"],
          [negative, "redis.commandTimeout", "a duration cannot be negative, got -5"],
          [both, "redis.timeout", "expected a duration above zero, got 0"]
        ] as const) {
          assert.strictEqual(result.code, 2, result.stderr)
          const error = JSON.parse(result.stdout).error as { message: string; issues: ReadonlyArray<unknown> }
          assert.include(error.message, `invalid ${path}: ${message}`)
          assert.deepStrictEqual(error.issues, [{ path, message }])
        }
      }),
    120_000
  )

  it.live(
    "redis.connectTimeout and redis.reconnectMax are taken from the file and checked, naming them",
    () =>
      Effect.gen(function* () {
        // A server that takes connections and never answers: the handshake waits out connectTimeout.
        const silent = createServer((socket) => socket.on("error", () => {}))
        yield* Effect.acquireRelease(
          Effect.callback<void>((resume) => {
            silent.listen(0, "127.0.0.1", () => resume(Effect.void))
          }),
          () => Effect.sync(() => silent.close())
        )
        const port = (silent.address() as AddressInfo).port
        const exitOf = (name: string, redis: Record<string, unknown>) =>
          Effect.flatMap(
            serve(
              ["--config", config, "--gateway", write(name, { server: { port: 0 }, allowAnonymous: true, redis })],
              { REDIS_URL: `redis://127.0.0.1:${port}/0` }
            ),
            (started) => started.exit
          )
        const [zero, fast, short] = yield* Effect.all(
          [
            exitOf("connect-timeout-zero.json", { connectTimeout: 0 }),
            exitOf("reconnect-max-fast.json", { reconnectMax: 10 }),
            exitOf("connect-timeout-short.json", { connectTimeout: "300 millis" })
          ],
          { concurrency: 3 }
        )
        assert.strictEqual(zero.code, 2, zero.stderr)
        assert.include(zero.stderr, "invalid redis.connectTimeout: expected a duration above zero, got 0")
        assert.strictEqual(fast.code, 2, fast.stderr)
        assert.include(fast.stderr, "invalid redis.reconnectMax: expected at least 50 ms")
        assert.strictEqual(short.code, 1, short.stderr)
        assert.include(short.stderr, "within 300 ms")
      }),
    120_000
  )

  it.live(
    "an unset variable a *Env field names, or a value that is no variable's name, is said after the gateway file's path",
    () =>
      Effect.gen(function* () {
        const adminFile = write("unset-admin.json", {
          server: { port: 0 },
          keys: { keys: [] },
          admin: { keyEnv: "TEST_UNSET_ADMIN_KEY" }
        })
        const redisFile = write("unset-redis.json", {
          server: { port: 0 },
          allowAnonymous: true,
          redis: { urlEnv: "TEST_UNSET_REDIS_URL" }
        })
        // The secret itself written where its variable's name goes: refused as no name, in the words of apiKeyEnv's.
        const inFile = write("secret-in-env-field.json", {
          server: { port: 0 },
          keys: { keys: [] },
          admin: { keyEnv: "admin-Secret-0123456789abcdef" }
        })
        const exitOf = (file: string) =>
          Effect.flatMap(serve(["--config", config, "--gateway", file]), (started) => started.exit)
        const [admin, redis, secretInFile] = yield* Effect.all([exitOf(adminFile), exitOf(redisFile), exitOf(inFile)], {
          concurrency: 3
        })
        assert.strictEqual(secretInFile.code, 2, secretInFile.stderr)
        assert.include(
          secretInFile.stderr,
          `${inFile}: admin.keyEnv: expected the name of an environment variable such as MY_SECRET`
        )
        assert.notInclude(secretInFile.stdout + secretInFile.stderr, "RegExp")
        assert.notInclude(secretInFile.stdout + secretInFile.stderr, "admin-Secret-0123456789abcdef")
        for (const [result, file, path, name] of [
          [admin, adminFile, "admin.keyEnv", "TEST_UNSET_ADMIN_KEY"],
          [redis, redisFile, "redis.urlEnv", "TEST_UNSET_REDIS_URL"]
        ] as const) {
          assert.strictEqual(result.code, 2, result.stderr)
          const message = `${path}: set the environment variable ${name}`
          assert.include(result.stderr, `${file}: ${message}`)
          assert.deepStrictEqual(JSON.parse(result.stdout).error, {
            message: `${file}: ${message}`,
            kind: "config",
            file,
            issues: [{ path, message: `set the environment variable ${name}` }]
          })
        }
      }),
    120_000
  )

  it.live(
    "redis.reportAfter and redis.probeInterval, which the docs name, are taken from the file and checked, naming them",
    () =>
      Effect.gen(function* () {
        const good = write("redis-guard.json", {
          server: { port: 0 },
          allowAnonymous: true,
          redis: { reportAfter: 0, probeInterval: "2 seconds" }
        })
        const bad = write("redis-bad-guard.json", {
          server: { port: 0 },
          allowAnonymous: true,
          redis: { probeInterval: 0 }
        })
        // Nothing listens on port 1: a file that is taken gets as far as connecting.
        const exitOf = (file: string) =>
          Effect.flatMap(
            serve(["--config", config, "--gateway", file], { REDIS_URL: "redis://127.0.0.1:1/0" }),
            (s) => s.exit
          )
        const [taken, refused] = yield* Effect.all([exitOf(good), exitOf(bad)], { concurrency: 2 })
        assert.strictEqual(taken.code, 1, taken.stderr)
        assert.match(JSON.parse(taken.stdout).error.message, /^cannot connect to Redis \(REDIS_URL\)/)
        assert.strictEqual(refused.code, 2, refused.stderr)
        assert.include(refused.stderr, `${bad}: invalid redis.probeInterval: `)
      }),
    120_000
  )

  it.live(
    "keys.prefix and keys.redis, which the redis section sets for the key store, are refused rather than silently replaced",
    () =>
      Effect.gen(function* () {
        const exitOf = (name: string, keys: Record<string, unknown>) =>
          Effect.flatMap(
            serve(["--config", config, "--gateway", write(name, { server: { port: 0 }, redis: {}, keys })], {
              REDIS_URL: "redis://127.0.0.1:1/0"
            }),
            (s) => s.exit
          )
        const [prefix, redis] = yield* Effect.all(
          [
            exitOf("keys-prefix.json", { keys: [], prefix: "mine:" }),
            exitOf("keys-redis.json", { keys: [], redis: { timeout: "3 seconds" } })
          ],
          { concurrency: 2 }
        )
        assert.strictEqual(prefix.code, 2, prefix.stderr)
        assert.include(prefix.stderr, "keys.prefix: ")
        assert.include(prefix.stderr, "redis.prefix")
        assert.strictEqual(redis.code, 2, redis.stderr)
        assert.include(redis.stderr, "keys.redis: ")
        assert.include(redis.stderr, "redis.timeout")
      }),
    120_000
  )

  it.live(
    "a missing gateway file named by ORCHESTRA_GATEWAY says the variable named it, as ORCHESTRA_CONFIG's does",
    () =>
      Effect.gen(function* () {
        const missing = NodePath.join(dir, "no-such-gateway.json")
        const result = yield* Effect.flatMap(serve(["--config", config], { ORCHESTRA_GATEWAY: missing }), (s) => s.exit)
        assert.strictEqual(result.code, 2, result.stderr)
        assert.include(result.stderr, `${missing}: no such file (named by the environment variable ORCHESTRA_GATEWAY)`)
      }),
    120_000
  )

  it.live(
    'ORCHESTRA_GATEWAY of spaces is a usage error naming it, as `--gateway " "` is (and ORCHESTRA_CONFIG of spaces)',
    () =>
      Effect.gen(function* () {
        for (const value of [" ", "  \t "]) {
          const result = yield* inProcess(["serve", "--json", "--config", config], { terminal: false }).pipe(
            Effect.provideService(
              ConfigProvider.ConfigProvider,
              ConfigProvider.fromEnv({ env: { ORCHESTRA_GATEWAY: value } })
            )
          )
          assert.strictEqual(result.code, 2, JSON.stringify(value))
          const message = "ORCHESTRA_GATEWAY is empty: set it to a gateway file's path, or unset it"
          assert.strictEqual(result.err, `orchestra: ${message}`)
          assert.deepStrictEqual(JSON.parse(result.out), { ok: false, error: { message, kind: "usage" } })
        }
      })
  )

  it.live(
    "redis.prefix is checked where the file gives it (0 to 90 characters, room left for breaker:, ratelimit:, gateway:), naming redis.prefix",
    () =>
      Effect.gen(function* () {
        const long = write("redis-long-prefix.json", {
          server: { port: 0 },
          allowAnonymous: true,
          redis: { prefix: "p".repeat(91) }
        })
        // Refused before any connection: the URL names a port nothing listens on.
        const result = yield* Effect.flatMap(
          serve(["--config", config, "--gateway", long], { REDIS_URL: "redis://127.0.0.1:1/0" }),
          (s) => s.exit
        )
        assert.strictEqual(result.code, 2, result.stderr)
        const error = (JSON.parse(result.stdout) as { error: { message: string; issues?: ReadonlyArray<unknown> } })
          .error
        assert.include(error.message, "redis.prefix")
        assert.include(error.message, "at most 90 characters")
        assert.notInclude(result.stderr, "invalid prefix")
      }),
    120_000
  )
})

describe("orchestra serve, redis.tls files", () => {
  it.live(
    "a file redis.tls names that is missing or unreadable, or a certificate without its key, is named with the file's other mistakes; nothing is connected",
    () =>
      Effect.gen(function* () {
        writeFileSync(NodePath.join(dir, "tls-ca.pem"), "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
        const gateway = write("redis-tls-missing.json", {
          server: { port: 0 },
          redis: { tls: { caFile: ["tls-ca.pem", "no-such-ca.pem"], certFile: "tls-ca.pem" } },
          keys: { keys: [] },
          gateway: { maxBodyBytes: -1 }
        })
        const result = yield* Effect.flatMap(
          serve(["--config", config, "--gateway", gateway], { REDIS_URL: "rediss://127.0.0.1:1/0" }),
          (s) => s.exit
        )
        assert.strictEqual(result.code, 2, result.stderr)
        const error = JSON.parse(result.stdout).error as {
          file: string
          issues: ReadonlyArray<{ path: string; message: string }>
        }
        assert.strictEqual(error.file, gateway)
        const byPath = Object.fromEntries(error.issues.map((issue) => [issue.path, issue.message]))
        assert.include(byPath["redis.tls.caFile[1]"], "no such file")
        assert.include(byPath["redis.tls.caFile[1]"], NodePath.join(dir, "no-such-ca.pem"))
        assert.include(byPath["redis.tls.keyFile"], "certFile")
        assert.isDefined(byPath["gateway.maxBodyBytes"])
        assert.isUndefined(byPath["redis.tls.caFile[0]"])
        // A directory is no PEM file either.
        const folder = write("redis-tls-folder.json", {
          server: { port: 0 },
          redis: { tls: { caFile: "." } },
          keys: { keys: [] }
        })
        const refused = yield* Effect.flatMap(
          serve(["--config", config, "--gateway", folder], { REDIS_URL: "rediss://127.0.0.1:1/0" }),
          (s) => s.exit
        )
        assert.strictEqual(refused.code, 2, refused.stderr)
        assert.include(refused.stderr, "redis.tls.caFile: ")
        assert.include(refused.stderr, "not a file (directory)")
      }),
    120_000
  )
})

describe("orchestra serve, the keys of the gateway file", () => {
  it.live(
    "every mistake in the keys, however found, is said one way: the file, then each entry's path under keys",
    () =>
      Effect.gen(function* () {
        const sha = hashSecret(SECRET)
        const entries = write("keys-entries.json", {
          server: { port: 0 },
          keys: {
            teams: {},
            keys: [
              { id: "k0", sha256: "not-a-hash" },
              { id: "k1", sha256: sha, budget: { usd: -1 } },
              { id: "k2", sha256: hashSecret(`${SECRET}-2`), team: "nope" }
            ]
          }
        })
        // Found as the gateway starts: the models the keys and prices name.
        const models = write("keys-models.json", {
          server: { port: 0 },
          keys: {
            keys: [{ id: "k0", sha256: sha, allowedModels: ["gtp-4"] }],
            prices: { "gtp-5": { input: 1, output: 1 } }
          }
        })
        const adminless = write("keys-admin.json", { server: { port: 0 }, admin: { keyEnv: "TEST_ADMIN_KEY" } })
        // Written escaped ("\ud800"), read back a lone surrogate: one name with any other such in UTF-8.
        const lone = write("keys-lone.json", {
          server: { port: 0 },
          keys: { keys: [{ id: "k0", sha256: sha, name: "k\uD800" }] }
        })
        const exitOf = (file: string) =>
          Effect.flatMap(
            serve(["--config", config, "--gateway", file], { TEST_ADMIN_KEY: "admin-key-0123456789abcdef" }),
            (started) => started.exit
          )
        const [badEntries, badModels, noKeys, loneName] = yield* Effect.all(
          [exitOf(entries), exitOf(models), exitOf(adminless), exitOf(lone)],
          {
            concurrency: 4
          }
        )
        const unknownModel = (name: string, what: string) =>
          `unknown model "${name}": expected a domain (support, technical, finance), provider/model or provider/* with a provider of mock${what}`
        const expected: ReadonlyArray<readonly [typeof badEntries, string, string]> = [
          [
            badEntries,
            entries,
            // Found before the start and at it alike: one a line, as the file's other mistakes.
            "3 mistakes\n  keys.keys[0].sha256: expected the SHA-256 of the secret as 64 lowercase hex characters\n" +
              "  keys.keys[1].budget.usd: expected a value above 0, got -1\n" +
              '  keys.keys[2].team: unknown team "nope": declare it under the key store\'s teams (none is declared; a team without a budget is {})'
          ],
          [
            badModels,
            models,
            `2 mistakes\n  keys.keys[0].allowedModels[0]: ${unknownModel("gtp-4", ", or *")}\n  keys.prices.gtp-5: `
          ],
          [noKeys, adminless, "admin: the admin routes manage keys: add a `keys` section"],
          [loneName, lone, 'invalid keys.keys[0].name: expected well-formed Unicode, got "k\\ud800"']
        ]
        for (const [result, file, message] of expected) {
          assert.strictEqual(result.code, 2, result.stderr)
          const error = JSON.parse(result.stdout).error
          assert.strictEqual(error.kind, "config")
          assert.strictEqual(error.file, file)
          assert.isTrue(error.message.startsWith(`${file}: ${message}`), error.message)
          assert.include(result.stderr, `orchestra: ${file}: ${message}`)
        }
        // With --json, each field refused by its path in the file.
        assert.deepStrictEqual(
          JSON.parse(badEntries.stdout).error.issues.map((issue: { readonly path: string }) => issue.path),
          ["keys.keys[0].sha256", "keys.keys[1].budget.usd", "keys.keys[2].team"]
        )
      }),
    120_000
  )
})

describe("orchestra serve, an unreachable Redis", () => {
  it.live(
    "is a sentence naming Redis and its error (exit 1), never the URL's password",
    () =>
      Effect.gen(function* () {
        // A closed port: the connection is refused at once.
        const closed = createServer()
        yield* Effect.callback<void>((resume) => {
          closed.listen(0, "127.0.0.1", () => resume(Effect.void))
        })
        const port = (closed.address() as AddressInfo).port
        yield* Effect.callback<void>((resume) => {
          closed.close(() => resume(Effect.void))
        })
        const gateway = write("unreachable-redis.json", {
          server: { host: "127.0.0.1", port: 0 },
          redis: { urlEnv: "TEST_REDIS_URL" },
          keys: { keys: [] }
        })
        const started = yield* serve(["--config", config, "--gateway", gateway], {
          TEST_REDIS_URL: `redis://user:pa55-word-secret@127.0.0.1:${port}`
        })
        const result = yield* started.exit
        assert.strictEqual(result.code, 1, result.stderr)
        assert.deepStrictEqual(JSON.parse(result.stdout), {
          ok: false,
          error: {
            message: `cannot connect to Redis (TEST_REDIS_URL): connect ECONNREFUSED 127.0.0.1:${port}`,
            kind: "start"
          }
        })
        assert.notInclude(result.stdout + result.stderr, "pa55-word-secret")
      }),
    120_000
  )
})

describe.skipIf(skipRedis)(
  `orchestra serve, redis.onUnreachableAtStart (${skipRedis ? skipReason : "needs redis-server"})`,
  () => {
    it.live(
      '"start": the gateway starts without Redis (a warning naming it), limits fail open and budgets closed, then hold once Redis is up',
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const port = yield* freePort
            const capped = "sk-serve-capped-0123456789abcdef"
            const gateway = write("redis-later.json", {
              server: { host: "127.0.0.1", port: 0 },
              redis: {
                urlEnv: "TEST_REDIS_URL",
                onUnreachableAtStart: "start",
                reportAfter: 0,
                probeInterval: "200 millis"
              },
              keys: {
                keys: [
                  { id: "limited", sha256: hashSecret(SECRET), rpm: 1 },
                  { id: "capped", sha256: hashSecret(capped), budget: { tokens: 100000 } }
                ]
              }
            })
            const serving = yield* serve(["--config", config, "--gateway", gateway], {
              TEST_REDIS_URL: `redis://127.0.0.1:${port}`
            })
            const url = yield* serving.url
            const status = (secret: string) =>
              Effect.promise(() =>
                new OpenAI({ apiKey: secret, baseURL: `${url}/v1`, maxRetries: 0 }).chat.completions
                  .create({ model: "support", messages: [{ role: "user", content: "hi" }] })
                  .then(
                    () => 200,
                    (e: { status?: number }) => e.status
                  )
              )
            // Redis down: the key's 1 rpm cannot be checked and lets both through; a budget cannot be reserved: 503.
            assert.deepStrictEqual([yield* status(SECRET), yield* status(SECRET)], [200, 200])
            assert.strictEqual(yield* status(capped), 503)
            const ready = yield* Effect.promise(() => fetch(`${url}/readyz`).then((r) => r.status))
            assert.strictEqual(ready, 200)
            yield* startRedisAt(port)
            // The same process connects: the budget is reserved, and the limit holds again.
            yield* Effect.suspend(() => status(capped)).pipe(
              Effect.flatMap((code) => (code === 200 ? Effect.void : Effect.fail(code))),
              Effect.retry(Schedule.spaced("200 millis").pipe(Schedule.upTo({ duration: "20 seconds" })))
            )
            yield* Effect.suspend(() => Effect.all([status(SECRET), status(SECRET)])).pipe(
              Effect.flatMap((codes) => (codes.includes(429) ? Effect.void : Effect.fail(codes))),
              Effect.retry(Schedule.spaced("200 millis").pipe(Schedule.upTo({ duration: "20 seconds" })))
            )
            serving.child.kill("SIGTERM")
            const { stderr } = yield* serving.exit
            assert.include(stderr, `Redis at 127.0.0.1:${port} unreachable at start`)
            assert.include(stderr, "ECONNREFUSED")
          })
        ),
      120_000
    )

    it.live(
      "a value other than fail or start is refused with exit code 2 naming redis.onUnreachableAtStart",
      () =>
        Effect.gen(function* () {
          const gateway = write("redis-unreachable-wrong.json", {
            server: { port: 0 },
            redis: { urlEnv: "TEST_REDIS_URL", onUnreachableAtStart: "later" },
            keys: { keys: [] }
          })
          const started = yield* serve(["--config", config, "--gateway", gateway], {
            TEST_REDIS_URL: "redis://127.0.0.1:1"
          })
          const result = yield* started.exit
          assert.strictEqual(result.code, 2, result.stderr)
          assert.include(JSON.parse(result.stdout).error.message, "redis.onUnreachableAtStart")
        }),
      120_000
    )
  }
)

describe("orchestra serve, the admin routes' options", () => {
  it.live(
    "a wrong admin path, or one colliding with the gateway's routes, is refused with exit code 2 naming admin.path",
    () =>
      Effect.gen(function* () {
        const exitOf = (file: string) =>
          Effect.flatMap(
            serve(["--config", config, "--gateway", file], { TEST_ADMIN_KEY: "admin-key-0123456789abcdef" }),
            (started) => started.exit
          )
        const [relative, taken] = yield* Effect.all(
          [
            // Port 0: the default 4000 may be held by another test running at the same time.
            exitOf(
              write("admin-relative.json", {
                server: { port: 0 },
                admin: { keyEnv: "TEST_ADMIN_KEY", path: "admin" },
                keys: {}
              })
            ),
            exitOf(
              write("admin-taken.json", {
                server: { port: 0 },
                admin: { keyEnv: "TEST_ADMIN_KEY", path: "/v1" },
                keys: {}
              })
            )
          ],
          { concurrency: 2 }
        )
        assert.strictEqual(relative.code, 2, relative.stderr)
        assert.include(relative.stderr, 'invalid admin.path: expected a path such as "/admin"')
        assert.notInclude(relative.stderr, "gateway.path")
        assert.strictEqual(taken.code, 2, taken.stderr)
        assert.deepStrictEqual(JSON.parse(taken.stdout).error.kind, "config")
        assert.include(taken.stderr, 'invalid admin.path: expected a path of the admin routes\' own: "/v1" collides')
      }),
    120_000
  )
})

describe("orchestra serve, the admin key", () => {
  it.live("a short admin key is said with the file's other mistakes, naming admin.keyEnv, before anything starts", () =>
    Effect.gen(function* () {
      const gateway = write("admin-short-key.json", {
        server: { port: 0 },
        gateway: { maxBodyBytes: -1 },
        admin: { keyEnv: "TEST_ADMIN_KEY" },
        keys: {}
      })
      const result = yield* inProcess(["serve", "--json", "--config", config, "--gateway", gateway], {
        terminal: false
      }).pipe(
        Effect.provideService(
          ConfigProvider.ConfigProvider,
          ConfigProvider.fromEnv({ env: { TEST_ADMIN_KEY: "short" } })
        )
      )
      assert.strictEqual(result.code, 2, result.err)
      // It was found only once the others were fixed: a start for each.
      assert.deepStrictEqual(
        JSON.parse(result.out).error.issues.map((issue: { readonly path: string }) => issue.path),
        ["gateway.maxBodyBytes", "admin.keyEnv"]
      )
      assert.include(
        result.err,
        "admin.keyEnv: expected an admin key of at least 16 visible ASCII characters (no space or line break)"
      )
      assert.notInclude(result.out + result.err, 'short"')
    })
  )
})

describe("orchestra serve, the metrics token", () => {
  const TOKEN = "mt-serve-9e8d7c6b5a41-SECRET"

  it.live(
    "metrics.tokenEnv puts /metrics behind the token from the environment; health stays open; the token is never printed",
    () =>
      Effect.gen(function* () {
        const gateway = write("metrics-token.json", {
          server: { host: "127.0.0.1", port: 0, logRequests: true },
          keys: { keys: [{ id: "k1", sha256: hashSecret(SECRET) }] },
          metrics: { tokenEnv: "TEST_METRICS_TOKEN" }
        })
        const serving = yield* serve(["--config", config, "--gateway", gateway], { TEST_METRICS_TOKEN: TOKEN })
        const url = yield* serving.url
        const get = (path: string, authorization?: string) =>
          Effect.promise(async () => {
            const response = await fetch(`${url}${path}`, {
              headers: authorization === undefined ? {} : { authorization }
            })
            return { status: response.status, headers: response.headers, text: await response.text() }
          })
        const missing = yield* get("/metrics")
        assert.strictEqual(missing.status, 401)
        assert.strictEqual(missing.headers.get("www-authenticate"), 'Bearer realm="metrics"')
        assert.strictEqual(JSON.parse(missing.text).error.code, "invalid_metrics_token")
        // The client's API key does not open the metrics.
        const apiKey = yield* get("/metrics", `Bearer ${SECRET}`)
        assert.strictEqual(apiKey.status, 401)
        assert.strictEqual(apiKey.headers.get("www-authenticate"), 'Bearer realm="metrics", error="invalid_token"')
        const scraped = yield* get("/metrics", `Bearer ${TOKEN}`)
        assert.strictEqual(scraped.status, 200)
        assert.include(scraped.text, 'orchestra_gateway_requests_total{route="metrics",status="401"} 2')
        assert.strictEqual((yield* get("/healthz")).status, 200)
        assert.strictEqual((yield* get("/readyz")).status, 200)
        serving.child.kill("SIGTERM")
        const { code, stdout, stderr } = yield* serving.exit
        assert.strictEqual(code, 130)
        // The requests were logged (logRequests), the token nowhere.
        assert.include(stdout + stderr, "/metrics")
        for (const text of [stdout, stderr, missing.text, apiKey.text, scraped.text]) assert.notInclude(text, TOKEN)
      }),
    120_000
  )

  it.live(
    "an unset or empty token variable, a bad token, a token in the file, or one without a metrics route: exit 2 naming the field",
    () =>
      Effect.gen(function* () {
        const exitOf = (name: string, file: Record<string, unknown>, environment: Record<string, string> = {}) =>
          Effect.flatMap(
            serve(
              ["--config", config, "--gateway", write(name, { server: { port: 0 }, allowAnonymous: true, ...file })],
              environment
            ),
            (started) => started.exit
          )
        const [unset, empty, blank, short, inFile, noRoute] = yield* Effect.all(
          [
            // The default variable, ORCHESTRA_METRICS_TOKEN, which the test's environment never has.
            exitOf("metrics-unset.json", { metrics: {} }),
            exitOf("metrics-empty.json", { metrics: { tokenEnv: "TEST_METRICS_TOKEN" } }, { TEST_METRICS_TOKEN: "" }),
            exitOf("metrics-blank.json", { metrics: { tokenEnv: "TEST_METRICS_TOKEN" } }, { TEST_METRICS_TOKEN: "  " }),
            exitOf(
              "metrics-short.json",
              { metrics: { tokenEnv: "TEST_METRICS_TOKEN" } },
              { TEST_METRICS_TOKEN: "short-Xq7" }
            ),
            exitOf("metrics-in-file.json", { gateway: { metricsToken: TOKEN } }),
            exitOf(
              "metrics-no-route.json",
              { gateway: { metricsPath: false }, metrics: { tokenEnv: "TEST_METRICS_TOKEN" } },
              { TEST_METRICS_TOKEN: TOKEN }
            )
          ],
          { concurrency: 2 }
        )
        const expected: ReadonlyArray<readonly [{ code: number | null; stderr: string; stdout: string }, string]> = [
          [unset, "metrics.tokenEnv: set the environment variable ORCHESTRA_METRICS_TOKEN"],
          [empty, "metrics.tokenEnv: set the environment variable TEST_METRICS_TOKEN"],
          [blank, "invalid metrics.tokenEnv: expected a token, got an empty one"],
          [short, "invalid metrics.tokenEnv: expected a token of at least 16 characters"],
          [
            inFile,
            "gateway.metricsToken: a secret is not written in the gateway file: name its environment variable in metrics.tokenEnv"
          ],
          [noRoute, "invalid metrics.tokenEnv: there is no metrics route to protect (metricsPath: false)"]
        ]
        for (const [result, message] of expected) {
          assert.strictEqual(result.code, 2, result.stderr)
          assert.include(result.stderr, message)
          assert.strictEqual(JSON.parse(result.stdout).error.kind, "config")
          assert.notInclude(result.stderr, "invalid gateway.metricsToken")
          for (const text of [result.stdout, result.stderr]) {
            assert.notInclude(text, TOKEN)
            assert.notInclude(text, "short-Xq7")
          }
        }
      }),
    180_000
  )
})

describe.skipIf(skipRedis)(`orchestra serve on Redis${skipRedis ? ` (${skipReason})` : ""}`, () => {
  it.live(
    "redis.tls: a Redis of a private CA that asks for a client certificate is reached with the CA, certificate and key read from files, relative to the gateway file",
    () =>
      Effect.gen(function* () {
        const redis = yield* startTlsRedis
        const relative = (name: string) => NodePath.relative(dir, NodePath.join(redis.dir, name))
        const gateway = write("redis-tls.json", {
          server: { port: 0 },
          redis: {
            urlEnv: "TEST_REDIS_URL",
            tls: { caFile: relative("ca.crt"), certFile: relative("client.crt"), keyFile: relative("client.key") }
          },
          keys: { keys: [{ id: "app", sha256: hashSecret(SECRET) }] }
        })
        // onUnreachableAtStart "fail" (the default): listening means the TLS connection was made.
        const serving = yield* serve(["--config", config, "--gateway", gateway], { TEST_REDIS_URL: redis.url })
        const url = yield* serving.url
        const models = yield* Effect.promise(() =>
          fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${SECRET}` } })
        )
        assert.strictEqual(models.status, 200)
        // Without the client certificate, this Redis refuses the connection: the start fails.
        const bare = write("redis-tls-ca-only.json", {
          server: { port: 0 },
          redis: { urlEnv: "TEST_REDIS_URL", tls: { caFile: relative("ca.crt") } },
          keys: { keys: [] }
        })
        const refused = yield* Effect.flatMap(
          serve(["--config", config, "--gateway", bare], { TEST_REDIS_URL: redis.url }),
          (s) => s.exit
        )
        assert.strictEqual(refused.code, 1, refused.stderr)
        assert.include(refused.stderr, "cannot connect to Redis (TEST_REDIS_URL)")
        serving.child.kill("SIGTERM")
        assert.strictEqual((yield* serving.exit).code, 130)
      }),
    120_000
  )

  it.live(
    "redis.tls.passphraseEnv: a client key encrypted with a passphrase is used with the passphrase of the variable it names; the variable unset, or no keyFile, is said naming the field",
    () =>
      Effect.gen(function* () {
        const redis = yield* startTlsRedis
        const relative = (name: string) => NodePath.relative(dir, NodePath.join(redis.dir, name))
        execFileSync(
          "openssl",
          ["pkey", "-in", NodePath.join(redis.dir, "client.key"), "-aes256", "-passout", "pass:pass-s3cret"].concat([
            "-out",
            NodePath.join(redis.dir, "client.enc.key")
          ]),
          { stdio: "ignore" }
        )
        const tls = {
          caFile: relative("ca.crt"),
          certFile: relative("client.crt"),
          keyFile: relative("client.enc.key")
        }
        const gateway = write("redis-tls-passphrase.json", {
          server: { port: 0 },
          redis: { urlEnv: "TEST_REDIS_URL", tls: { ...tls, passphraseEnv: "TEST_REDIS_PASSPHRASE" } },
          keys: { keys: [{ id: "app", sha256: hashSecret(SECRET) }] }
        })
        // onUnreachableAtStart "fail" (the default): listening means the TLS connection was made.
        const serving = yield* serve(["--config", config, "--gateway", gateway], {
          TEST_REDIS_URL: redis.url,
          TEST_REDIS_PASSPHRASE: "pass-s3cret"
        })
        const url = yield* serving.url
        const models = yield* Effect.promise(() =>
          fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${SECRET}` } })
        )
        assert.strictEqual(models.status, 200)
        serving.child.kill("SIGTERM")
        assert.strictEqual((yield* serving.exit).code, 130)
        const unset = yield* Effect.flatMap(
          serve(["--config", config, "--gateway", gateway], { TEST_REDIS_URL: redis.url }),
          (s) => s.exit
        )
        assert.strictEqual(unset.code, 2, unset.stderr)
        assert.include(unset.stderr, "redis.tls.passphraseEnv: set the environment variable TEST_REDIS_PASSPHRASE")
        const keyless = write("redis-tls-passphrase-keyless.json", {
          server: { port: 0 },
          redis: { urlEnv: "TEST_REDIS_URL", tls: { caFile: tls.caFile, passphraseEnv: "TEST_REDIS_PASSPHRASE" } },
          keys: { keys: [] }
        })
        const alone = yield* Effect.flatMap(
          serve(["--config", config, "--gateway", keyless], {
            TEST_REDIS_URL: redis.url,
            TEST_REDIS_PASSPHRASE: "pass-s3cret"
          }),
          (s) => s.exit
        )
        assert.strictEqual(alone.code, 2, alone.stderr)
        assert.include(alone.stderr, "redis.tls.passphraseEnv")
        for (const out of [unset, alone]) assert.notInclude(out.stderr + out.stdout, "pass-s3cret")
      }),
    120_000
  )

  it.live(
    "a wrong redis.timeout is named redis.timeout, not keys.redis.timeout",
    () =>
      Effect.gen(function* () {
        const redis = yield* startRedis
        const gateway = write("redis-bad-timeout.json", {
          server: { port: 0 },
          redis: { urlEnv: "TEST_REDIS_URL", timeout: 0 },
          keys: { keys: [] }
        })
        const result = yield* Effect.flatMap(
          serve(["--config", config, "--gateway", gateway], { TEST_REDIS_URL: redis.url }),
          (s) => s.exit
        )
        assert.strictEqual(result.code, 2, result.stderr)
        assert.include(result.stderr, "invalid redis.timeout")
        assert.notInclude(result.stderr, "keys.redis")
      }),
    120_000
  )

  it.live(
    "two replicas on one Redis share a key's budget and see a key an admin created through the other",
    () =>
      Effect.gen(function* () {
        const redis = yield* startRedis
        const admin = "admin-key-0123456789abcdef"
        const gateway = write("redis-gateway.json", {
          server: { host: "127.0.0.1", port: 0 },
          redis: { urlEnv: "TEST_REDIS_URL", prefix: "serve-test:" },
          keys: { keys: [{ id: "shared", sha256: hashSecret(SECRET), budget: { tokens: 120 } }], cacheTtl: 0 },
          admin: { keyEnv: "TEST_ADMIN_KEY" }
        })
        const environment = { TEST_REDIS_URL: redis.url, TEST_ADMIN_KEY: admin }
        const [one, two] = yield* Effect.all(
          [
            serve(["--config", config, "--gateway", gateway], environment),
            serve(["--config", config, "--gateway", gateway], environment)
          ],
          { concurrency: 2 }
        )
        const [urlOne, urlTwo] = yield* Effect.all([one.url, two.url], { concurrency: 2 })
        const ask = (url: string, key: string, maxTokens: number) =>
          Effect.promise(() =>
            new OpenAI({ apiKey: key, baseURL: `${url}/v1`, maxRetries: 0 }).chat.completions
              .create({ model: "support", messages: [{ role: "user", content: "hi" }], max_tokens: maxTokens })
              .then(
                () => 200,
                (e: { status?: number; code?: string }) => `${e.status} ${e.code}`
              )
          )
        // The first call (through one) settles its real usage; the budget left is then too
        // small for a call that may need 100 tokens, through either replica.
        assert.strictEqual(yield* ask(urlOne, SECRET, 10), 200)
        assert.strictEqual(yield* ask(urlTwo, SECRET, 100), "429 budget_exceeded")
        assert.strictEqual(yield* ask(urlOne, SECRET, 100), "429 budget_exceeded")
        // A key created through one replica's admin routes works through the other.
        const created = yield* Effect.promise(() =>
          fetch(`${urlOne}/admin/keys`, {
            method: "POST",
            headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
            body: JSON.stringify({ id: "fresh" })
          }).then((r) => r.json() as Promise<{ secret: string }>)
        )
        assert.strictEqual(yield* ask(urlTwo, created.secret, 10), 200)
        one.child.kill("SIGTERM")
        two.child.kill("SIGTERM")
        const exits = yield* Effect.all([one.exit, two.exit], { concurrency: 2 })
        assert.deepStrictEqual(
          exits.map((e) => e.code),
          [130, 130]
        )
        for (const e of exits) assert.notInclude(e.stderr, admin)
      }),
    180_000
  )
})
