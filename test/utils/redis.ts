/**
 * Starts a private `redis-server` for tests and benchmarks: loopback only, a free port, no
 * persistence, stopped when the scope closes. `kill` / `start` simulate an outage and a
 * recovery on the same port.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { delimiter, join } from "node:path"
import { Effect } from "effect"
import type { Scope } from "effect"

const findRedisServer = (): string | undefined => {
  const dirs = [...(process.env.PATH ?? "").split(delimiter), "/usr/bin", "/usr/local/bin", "/usr/sbin"]
  for (const dir of dirs) {
    if (dir === "") continue
    const candidate = join(dir, "redis-server")
    if (existsSync(candidate)) return candidate
  }
  return undefined
}

/** Path of `redis-server`, if installed. */
export const redisServerPath: string | undefined = findRedisServer()

/** Under CI the Redis tests must run (and fail if `redis-server` is missing), never skip. */
export const isCI: boolean = process.env.CI === "true" || process.env.CI === "1"

/** Skip the Redis tests: only on a machine without `redis-server` outside CI. */
export const skipRedis: boolean = redisServerPath === undefined && !isCI

/** The reason shown when the Redis tests are skipped. */
export const skipReason = "skipped: redis-server is not installed (install it with `apt-get install -y redis-server`)"

/**
 * The deadline of a Redis call meant to succeed (the client's `commandTimeout` and `connectTimeout`, a store's
 * `redis.timeout`). CI runs the suite on a shared 2-core machine under load, where a healthy command can wait
 * seconds for a core: the defaults (500 ms) cut it there, and a test of a healthy path failed. A test about a
 * deadline sets its own, short, against a Redis that never answers (SIGSTOP), or on `TestClock`.
 */
export const healthyDeadline = "30 seconds"

/** `Redis.layer` options for a Redis meant to answer: the client's deadlines at {@link healthyDeadline}. */
export const healthyClient = { commandTimeout: healthyDeadline, connectTimeout: healthyDeadline } as const

/** A free TCP port on 127.0.0.1 (the OS picks it; released right away for redis-server to take). */
export const freePort: Effect.Effect<number, Error> = Effect.callback<number, Error>((resume) => {
  const server = createServer()
  server.once("error", (error) => resume(Effect.fail(error)))
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(port === 0 ? Effect.fail(new Error("no free port")) : Effect.succeed(port)))
  })
})

export interface RedisServer {
  readonly port: number
  readonly url: string
  /** SIGKILL: the server vanishes as in a crash. */
  readonly kill: Effect.Effect<void>
  /** Starts it again on the same port (after `kill`). */
  readonly start: Effect.Effect<void, Error>
  readonly running: Effect.Effect<boolean>
  /** SIGSTOP: the server keeps its connections but answers nothing (a "slow" Redis). */
  readonly pause: Effect.Effect<void>
  /** SIGCONT after `pause`. */
  readonly resume: Effect.Effect<void>
}

const spawnRedis = (
  binary: string,
  port: number,
  dir: string,
  args: ReadonlyArray<string>
): Effect.Effect<ChildProcess, Error> =>
  Effect.callback<ChildProcess, Error>((resume) => {
    const child = spawn(
      binary,
      [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir,
        "--daemonize",
        "no",
        "--loglevel",
        "notice",
        ...args
      ],
      { stdio: ["ignore", "pipe", "pipe"] }
    )
    let output = ""
    let settled = false
    const timer = setTimeout(() => finish(new Error(`redis-server did not start within 10 s:\n${output}`)), 10_000)
    const finish = (error?: Error) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (error !== undefined) {
        child.kill("SIGKILL")
        resume(Effect.fail(error))
      } else {
        resume(Effect.succeed(child))
      }
    }
    child.stdout?.on("data", (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes("Ready to accept connections")) finish()
    })
    child.stderr?.on("data", (chunk: Buffer) => {
      output += chunk.toString()
    })
    child.once("error", (error) => finish(new Error(`cannot start ${binary}: ${error.message}`)))
    child.once("exit", (code) => finish(new Error(`redis-server exited with code ${code}:\n${output}`)))
  })

const killChild = (child: ChildProcess): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
    child.once("exit", () => resume(Effect.void))
    child.kill("SIGKILL")
  })

/**
 * Starts `redis-server` on loopback `port` (one a test held free until now: a client already
 * trying it), with `args` added to its command line; stops it (and removes its directory) when the scope closes. Fails with a message
 * naming the apt package when it is not installed.
 */
export const startRedisAt = Effect.fnUntraced(function* (port: number, args: ReadonlyArray<string> = []) {
  const binary = redisServerPath
  if (binary === undefined) {
    return yield* Effect.fail(new Error("redis-server is not installed: apt-get install -y redis-server"))
  }
  const dir = yield* Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), "orchestra-redis-"))),
    (path) => Effect.sync(() => rmSync(path, { recursive: true, force: true }))
  )
  let current: ChildProcess | undefined
  yield* Effect.addFinalizer(() => (current === undefined ? Effect.void : killChild(current)))
  const start = Effect.map(spawnRedis(binary, port, dir, args), (child) => {
    current = child
  })
  yield* start
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill: Effect.suspend(() => (current === undefined ? Effect.void : killChild(current))),
    start,
    running: Effect.sync(() => current !== undefined && current.exitCode === null && current.signalCode === null),
    pause: Effect.sync(() => {
      current?.kill("SIGSTOP")
    }),
    resume: Effect.sync(() => {
      current?.kill("SIGCONT")
    })
  }
})

/** redis-server could not bind its port: another process took it between `freePort` and the start. */
const portTaken = (error: Error): boolean => error.message.includes("Address already in use")

/**
 * {@link startRedisAt} a free loopback port; another one when the port was taken before redis-server bound it (on
 * a machine running other suites, another process's socket took it now and then).
 */
export const startRedis: Effect.Effect<RedisServer, Error, Scope.Scope> = Effect.flatMap(freePort, startRedisAt).pipe(
  Effect.retry({ times: 5, while: portTaken })
)

/**
 * A `redis-server` speaking TLS only on a free loopback port, whose certificate (for 127.0.0.1) a CA of its own
 * signed, and which asks every client for a certificate of that CA: `dir` holds `ca.crt`, and `client.crt` and
 * `client.key` for a client. Stopped, and its files removed, when the scope closes.
 */
export const startTlsRedis = Effect.gen(function* () {
  const binary = redisServerPath
  if (binary === undefined) {
    return yield* Effect.fail(new Error("redis-server is not installed: apt-get install -y redis-server"))
  }
  const dir = yield* Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), "orchestra-redis-tls-"))),
    (path) => Effect.sync(() => rmSync(path, { recursive: true, force: true }))
  )
  const file = (name: string) => join(dir, name)
  const openssl = (...args: ReadonlyArray<string>) => execFileSync("openssl", args, { stdio: "ignore" })
  const signed = (name: string, subject: string, ext?: string) => {
    openssl(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      subject,
      "-keyout",
      file(`${name}.key`),
      "-out",
      file(`${name}.csr`)
    )
    openssl(
      "x509",
      "-req",
      "-in",
      file(`${name}.csr`),
      "-CA",
      file("ca.crt"),
      "-CAkey",
      file("ca.key"),
      "-CAcreateserial",
      "-days",
      "1",
      ...(ext === undefined ? [] : ["-extfile", ext]),
      "-out",
      file(`${name}.crt`)
    )
  }
  yield* Effect.try(() => {
    writeFileSync(file("san.ext"), "subjectAltName=IP:127.0.0.1\n")
    openssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=orchestra test CA",
      "-keyout",
      file("ca.key"),
      "-out",
      file("ca.crt")
    )
    signed("server", "/CN=127.0.0.1", file("san.ext"))
    signed("client", "/CN=orchestra test client")
  })
  // A port picked free, then bound by redis-server: another process may take it between the two (TLS has no port 0
  // of its own, `--tls-port 0` turning TLS off), so a start that found it taken is tried on another.
  const port = yield* Effect.flatMap(freePort, (port) =>
    Effect.as(
      Effect.acquireRelease(
        Effect.callback<ChildProcess, Error>((resume) => {
          const child = spawn(
            binary,
            [
              ...["--port", "0", "--tls-port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
              ...["--dir", dir, "--tls-cert-file", file("server.crt"), "--tls-key-file", file("server.key")],
              ...["--tls-ca-cert-file", file("ca.crt"), "--tls-auth-clients", "yes"]
            ],
            { stdio: ["ignore", "pipe", "pipe"] }
          )
          let output = ""
          child.stdout?.on("data", (chunk: Buffer) => {
            output += chunk.toString()
            if (output.includes("Ready to accept connections")) resume(Effect.succeed(child))
          })
          child.stderr?.on("data", (chunk: Buffer) => {
            output += chunk.toString()
          })
          child.once("exit", (code) => resume(Effect.fail(new Error(`redis-server exited with ${code}: ${output}`))))
        }),
        killChild
      ),
      port
    )
  ).pipe(Effect.retry({ times: 5, while: portTaken }))
  return { url: `rediss://127.0.0.1:${port}`, dir }
})
