import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { connect as connectTo, createServer, type Socket } from "node:net"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  Context,
  Effect,
  Exit,
  Fiber,
  Layer,
  Option,
  Queue,
  Redacted,
  Ref,
  Result,
  Schedule,
  type Scope
} from "effect"
import { TestClock } from "effect/testing"
import { Redis as PersistenceRedis } from "effect/persistence"
import type { ModelError } from "../src/AiError.js"
import * as Gateway from "../src/Gateway.js"
import * as KeyStore from "../src/gateway/keys/KeyStore.js"
import type { OptionError } from "../src/Input.js"
import type { GenerateResponse } from "../src/Model.js"
import * as RateLimit from "../src/RateLimit.js"
import * as Redis from "../src/Redis.js"
import * as ResponseCache from "../src/ResponseCache.js"
import { settings } from "../src/redis/settings.js"
import * as RedisCache from "../src/ResponseCache/Redis.js"
import { captureLogs } from "./utils/logs.js"
import {
  freePort,
  healthyClient,
  skipRedis,
  skipReason,
  startRedis,
  startRedisAt,
  startTlsRedis
} from "./utils/redis.js"

/** Sockets of this process still open to `port`. */
const openSockets = (port: number): number =>
  (process as unknown as { _getActiveHandles(): ReadonlyArray<unknown> })
    ._getActiveHandles()
    .filter((handle) => (handle as Socket).remotePort === port && !(handle as Socket).destroyed).length

/** A loopback server on `port` that accepts every connection and says nothing; its sockets stay open until the scope closes. */
const silentServerAt = (port: number) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly server: ReturnType<typeof createServer>; readonly sockets: Set<Socket> }, Error>(
      (resume) => {
        const sockets = new Set<Socket>()
        const server = createServer((socket) => {
          sockets.add(socket)
          socket.on("error", () => {})
        })
        server.once("error", (error) => resume(Effect.fail(error)))
        server.listen(port, "127.0.0.1", () => resume(Effect.succeed({ server, sockets })))
      }
    ),
    ({ server, sockets }) =>
      Effect.sync(() => {
        server.close()
        for (const socket of sockets) socket.destroy()
      })
  )

describe.skipIf(skipRedis)(`Redis.layer (${skipRedis ? skipReason : "needs redis-server"})`, () => {
  it.live("a Redis that accepts the connection but never answers (SIGSTOP) fails the layer after connectTimeout", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        // The kernel still accepts connections for a stopped server: only its handshake hangs.
        yield* server.pause
        yield* Effect.addFinalizer(() => server.resume)
        // The layer loads the redis package when built: loaded first, a busy machine's import is not timed.
        yield* Effect.promise(() => import("@effect/platform-node/NodeRedis"))
        // The build ends (a bound, not a measure), failed by connectTimeout: its error names it.
        const exit = yield* Effect.scoped(
          Layer.build(Redis.layer({ url: server.url, connectTimeout: "300 millis" }))
        ).pipe(Effect.exit, Effect.timeoutOption("15 seconds"))
        assert.isTrue(Option.isSome(exit), "the layer's build ended")
        if (Option.isSome(exit)) {
          assert.isTrue(Exit.isFailure(exit.value), "the layer failed")
          const error = Exit.findErrorOption(exit.value)
          assert.isTrue(Option.isSome(error) && error.value._tag === "RedisError", String(exit.value))
          if (Option.isSome(error)) assert.include(Redis.errorText(error.value), "within 300 ms")
        }
        // The client given up is closed, not left connected to the hung server.
        assert.strictEqual(openSockets(server.port), 0)
      })
    )
  )
})

describe.skipIf(skipRedis)(`Redis.layer's eval (${skipRedis ? skipReason : "needs redis-server"})`, () => {
  it.live("runs a script the server does not hold yet, and again after SCRIPT FLUSH (NOSCRIPT: EVAL loads it)", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const redis = Context.get(
          yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
          PersistenceRedis.Redis
        )
        const add = redis.eval(
          PersistenceRedis.script((key: string, by: number) => [key, by], {
            numberOfKeys: 1,
            lua: `return redis.call("INCRBY", KEYS[1], ARGV[1])`
          }).withReturnType<number>()
        )
        assert.strictEqual(yield* add("n", 2), 2)
        assert.strictEqual(yield* add("n", 3), 5)
        yield* redis.send("SCRIPT", "FLUSH")
        assert.strictEqual(yield* add("n", 4), 9)
        // A script error is the script's, not a NOSCRIPT taken for one.
        const broken = redis.eval(
          PersistenceRedis.script(() => [], { numberOfKeys: 0, lua: "return redis.call('NOPE')" })
        )
        const error = yield* Effect.flip(broken())
        assert.include(Redis.errorText(error), "Unknown Redis command")
      })
    )
  )
})

describe.skipIf(skipRedis)(`Redis.layer: the URL's scheme (${skipRedis ? skipReason : "needs redis-server"})`, () => {
  it.live(
    "a scheme in upper or mixed case (REDIS://, Rediss://) is taken: schemes are case-insensitive (RFC 3986)",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          for (const scheme of ["REDIS", "Redis"]) {
            const url = server.url.replace("redis", scheme)
            const redis = Context.get(
              yield* Layer.build(Redis.layer({ url, ...healthyClient })),
              PersistenceRedis.Redis
            )
            assert.strictEqual(yield* redis.send<string>("PING"), "PONG", url)
          }
          // TLS settings take a rediss:// URL in any case; nothing listens on port 1, so the connection fails.
          const exit = yield* Effect.exit(
            Effect.scoped(Layer.build(Redis.layer({ url: "Rediss://127.0.0.1:1", tls: { servername: "redis" } })))
          )
          const error = Exit.isFailure(exit) ? Exit.findErrorOption(exit) : Option.none()
          assert.isTrue(Option.isSome(error) && error.value._tag === "RedisError", String(exit))
        })
      )
  )
})

describe("Redis.layer: why the connection failed", () => {
  it.live("a closed port fails the layer with a RedisError saying what failed and where, without credentials", () =>
    Effect.gen(function* () {
      const port = yield* freePort
      for (const host of ["127.0.0.1", "localhost"]) {
        const exit = yield* Effect.exit(
          Effect.scoped(Layer.build(Redis.layer({ url: `redis://admin:s3cret@${host}:${port}/2` })))
        )
        const error = Exit.isFailure(exit) ? Exit.findErrorOption(exit) : Option.none()
        assert.isTrue(Option.isSome(error) && error.value._tag === "RedisError", String(exit))
        if (Option.isSome(error)) {
          const message = error.value.message
          // It was "": a log or an HTTP 500 said nothing of what failed.
          assert.include(message, `${host}:${port}`)
          assert.include(message, "ECONNREFUSED")
          assert.include(String(error.value), `${host}:${port}`)
          for (const secret of ["s3cret", "admin"]) assert.notInclude(message, secret)
        }
      }
    })
  )

  it.live("a Redis that never answers the handshake: the message names it and the address", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const fake = yield* scriptedRedis(() => undefined)
        const exit = yield* Effect.exit(
          Effect.scoped(Layer.build(Redis.layer({ url: fake.url, connectTimeout: "200 millis" })))
        )
        const error = Exit.isFailure(exit) ? Exit.findErrorOption(exit) : Option.none()
        assert.isTrue(Option.isSome(error) && error.value._tag === "RedisError", String(exit))
        if (Option.isSome(error)) {
          assert.include(error.value.message, fake.url.slice("redis://".length))
          assert.include(error.value.message, "200 ms")
        }
      })
    )
  )
})

describe.skipIf(skipRedis)(
  `Redis.layer, onUnreachableAtStart (${skipRedis ? skipReason : "needs redis-server"})`,
  () => {
    it.live(
      '"start" with no Redis listening: the layer builds, the stores fail open or closed as in an outage, then work once Redis starts',
      () =>
        Effect.gen(function* () {
          const logs = yield* captureLogs
          yield* Effect.scoped(
            Effect.gen(function* () {
              const port = yield* freePort
              const tag = `unreachable${Math.random().toString(36).slice(2, 8)}`
              const secret = `sk-${tag}-0123456789abcdef`
              // The guards' deadline is a minute: a call that waited on the down Redis would hold the test past its
              // bound below by far, and a healthy Redis on a loaded machine never misses it.
              const guard = { timeout: "1 minute", reportAfter: 0, probeInterval: "100 millis" } as const
              const stores = Layer.mergeAll(
                RedisCache.layerRedis({ prefix: `${tag}cache`, name: tag, redis: guard }),
                RateLimit.layerRedis({
                  providers: { [tag]: { requestsPerMinute: 1 } },
                  maxWait: 0,
                  prefix: `${tag}:rl:`,
                  redis: guard
                }),
                KeyStore.layerRedis({
                  prefix: `${tag}:gw:`,
                  keys: [{ id: "b", sha256: KeyStore.hashSecret(secret), budget: { tokens: 1000 } }],
                  redis: guard
                })
              ).pipe(
                Layer.provideMerge(
                  Redis.layer({
                    url: `redis://127.0.0.1:${port}`,
                    // Long enough for the refusal to arrive first on a loaded machine: with 300 ms the warning
                    // said "no answer within 300 ms" about 1 run in 4 at load 10 (true, but not what is tested).
                    connectTimeout: "1 second",
                    // As the guards': a command queued while offline, not refused, would wait past the bound below.
                    commandTimeout: "1 minute",
                    reconnectMax: "100 millis",
                    onUnreachableAtStart: "start"
                  })
                )
              )
              // Built with no Redis listening: a build that waited for it never ended (Redis starts only below).
              const context = yield* Layer.build(stores).pipe(Effect.timeout("10 seconds"))
              const cache = Context.get(context, ResponseCache.ResponseCache)
              const limits = Context.get(context, RateLimit.RateLimits)
              const keys = Context.get(context, KeyStore.KeyAdmin)
              const calls = yield* Ref.make(0)
              const compute = Effect.map(
                Ref.updateAndGet(calls, (n) => n + 1),
                (n): GenerateResponse => ({
                  text: `answer ${n}`,
                  finishReason: "stop",
                  usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
                  provider: "p",
                  model: "m"
                })
              )
              const ask = (key: string) => cache.getOrCompute(key, compute)
              const acquireAll = (n: number) =>
                Effect.forEach(Array.from({ length: n }), () => Effect.result(limits.acquire(tag)))
              const key = yield* keys.authenticate(Redacted.make(secret))
              const estimate = { inputTokens: 10, maxOutputTokens: 10 }

              // Redis down: the cache computes (a miss each time), the limit of 1 rpm lets 3 through, the budget is a 503.
              // No call waits on the down Redis: each is refused at once (a deadline of a minute would pass the bound).
              yield* Effect.gen(function* () {
                assert.strictEqual((yield* ask("a")).source, "miss")
                assert.strictEqual((yield* ask("b")).source, "miss")
                assert.strictEqual(yield* Ref.get(calls), 2)
                assert.isTrue((yield* acquireAll(3)).every((r) => r._tag === "Success"))
                const refused = yield* Effect.flip(keys.reserve(key, "m", estimate))
                assert.strictEqual(refused.reason, "Unavailable", refused.message)
                assert.strictEqual(Gateway.toWire(refused).status, 503)
              }).pipe(Effect.timeout("10 seconds"))
              const warning = logs.lines.find((l) => l.startsWith("Warn") && l.includes(`127.0.0.1:${port}`))
              assert.isDefined(warning, JSON.stringify(logs.lines))
              assert.include(warning, "ECONNREFUSED")

              // Redis starts on that port: the same layer's client connects, and every store works.
              const server = yield* startRedisAt(port)
              yield* Effect.suspend(() => acquireAll(2)).pipe(
                Effect.flatMap((results) =>
                  results.some((r) => r._tag === "Failure" && (r.failure as ModelError).reason === "RateLimited")
                    ? Effect.void
                    : Effect.fail("the limit does not hold yet")
                ),
                Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: "15 seconds" })))
              )
              yield* Effect.suspend(() => keys.reserve(key, "m", estimate)).pipe(
                Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: "15 seconds" }))),
                Effect.flatMap(keys.release)
              )
              // The cache's guard has its own view of the outage (its probe finds Redis back on its own beat): a
              // write made before that is skipped, as in an outage, so the write is made until it lands.
              const admin = Context.get(
                yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
                PersistenceRedis.Redis
              )
              const value = (yield* ask("c")).value
              yield* Effect.suspend(() => cache.setMany([{ key: "c", value }])).pipe(
                Effect.andThen(admin.send<number>("EXISTS", `${tag}cache:r:c`)),
                Effect.flatMap((exists) =>
                  exists === 1 ? Effect.void : Effect.fail("the cache's write has not landed")
                ),
                Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: "15 seconds" })))
              )
              assert.isTrue(logs.lines.some((l) => l.startsWith("Info") && l.includes(`127.0.0.1:${port}`)))
            })
          ).pipe(Effect.provide(logs.layer))
        }),
      30_000
    )

    it.live('"start": closing the layer before Redis came up stops its client; none connects after', () =>
      Effect.gen(function* () {
        const port = yield* freePort
        const url = `redis://127.0.0.1:${port}`
        yield* Effect.scoped(
          Effect.andThen(
            Layer.build(
              Redis.layer({
                url,
                connectTimeout: "200 millis",
                reconnectMax: "50 millis",
                onUnreachableAtStart: "start"
              })
            ),
            // Attempts under way, some failed and tried again.
            Effect.sleep("300 millis")
          )
        )
        yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedisAt(port)
            yield* Effect.sleep("500 millis")
            const admin = Context.get(
              yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
              PersistenceRedis.Redis
            )
            const clients = yield* admin.send<string>("CLIENT", "LIST")
            assert.strictEqual(clients.trim().split("\n").length, 1, clients)
            assert.strictEqual(openSockets(port), 1)
          })
        )
      })
    )

    // A refused credential is no outage: waiting for Redis does not put it right. The build waited the whole
    // connectTimeout (an hour here: the test's own timeout ends a wait) and then started, warning "unreachable".
    for (const [name, credential] of [
      ["a wrong password (WRONGPASS)", ":wrong-s3cret@"],
      ["no password (NOAUTH)", ""]
    ] as const) {
      it.live(
        `"start" with a Redis that refuses ${name}: the build fails at once, naming the address and the refusal`,
        () =>
          Effect.scoped(
            Effect.gen(function* () {
              const server = yield* Effect.flatMap(freePort, (port) =>
                startRedisAt(port, ["--requirepass", "right-s3cret"])
              )
              const url = server.url.replace("redis://", `redis://${credential}`)
              const error = yield* Effect.flip(
                Effect.scoped(
                  Layer.build(
                    Redis.layer({
                      url,
                      connectTimeout: "1 hour",
                      reconnectMax: "50 millis",
                      onUnreachableAtStart: "start"
                    })
                  )
                )
              )
              assert.strictEqual(error._tag, "RedisError")
              const text = Redis.errorText(error)
              assert.include(text, `127.0.0.1:${server.port}`)
              assert.include(text, "refused the credentials")
              assert.include(text, credential === "" ? "NOAUTH" : "WRONGPASS")
              assert.notInclude(text, "wrong-s3cret")
              assert.notInclude(text, "right-s3cret")
              // The client given up is closed, not left trying again.
              assert.strictEqual(openSockets(server.port), 0)
            })
          ),
        30_000
      )
    }

    // Redis came up after the build and refuses the password: the stores said only "not connected to Redis yet", and
    // nothing said why it never connected.
    it.live(
      '"start", Redis coming up later and refusing the password: one warning names the refusal (never the password); a password put right is found',
      () =>
        Effect.gen(function* () {
          const logs = yield* captureLogs
          yield* Effect.scoped(
            Effect.gen(function* () {
              const port = yield* freePort
              yield* Layer.build(
                Redis.layer({
                  url: `redis://:wrong-s3cret@127.0.0.1:${port}`,
                  connectTimeout: "200 millis",
                  reconnectMax: "50 millis",
                  onUnreachableAtStart: "start"
                })
              )
              const server = yield* startRedisAt(port, ["--requirepass", "right-s3cret"])
              const refusals = () => logs.lines.filter((l) => l.startsWith("Warn") && l.includes("WRONGPASS"))
              // Waited for (15 s at most, a bound): attempts go on at most 50 ms apart.
              for (let i = 0; i < 300 && refusals().length === 0; i++) yield* Effect.sleep("50 millis")
              const [warning] = refusals()
              assert.isDefined(warning, JSON.stringify(logs.lines))
              assert.include(warning, `127.0.0.1:${port}`)
              assert.include(warning, "refused the credentials")
              assert.notInclude(warning, "wrong-s3cret")
              // Tried again, said once.
              const admin = Context.get(
                yield* Layer.build(Redis.layer({ url: `redis://:right-s3cret@127.0.0.1:${port}`, ...healthyClient })),
                PersistenceRedis.Redis
              )
              const attempts = (info: string) => Number(/total_connections_received:(\d+)/.exec(info)?.[1] ?? 0)
              const before = attempts(yield* admin.send<string>("INFO", "stats"))
              for (let i = 0; i < 300 && attempts(yield* admin.send<string>("INFO", "stats")) < before + 3; i++) {
                yield* Effect.sleep("50 millis")
              }
              assert.strictEqual(refusals().length, 1, JSON.stringify(refusals()))
              // The password put right on the server: the layer connects, and says so.
              yield* admin.send("CONFIG", "SET", "requirepass", "wrong-s3cret")
              const connected = () => logs.lines.some((l) => l.startsWith("Info") && l.includes("connected"))
              for (let i = 0; i < 300 && !connected(); i++) yield* Effect.sleep("50 millis")
              assert.isTrue(connected(), JSON.stringify(logs.lines))
              assert.isTrue(yield* server.running)
            })
          ).pipe(Effect.provide(logs.layer))
        }),
      40_000
    )

    it.live(
      '"fail" with a Redis that refuses the password: the build fails at once the same way',
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* Effect.flatMap(freePort, (port) =>
              startRedisAt(port, ["--requirepass", "right-s3cret"])
            )
            const url = server.url.replace("redis://", "redis://:wrong-s3cret@")
            const error = yield* Effect.flip(Effect.scoped(Layer.build(Redis.layer({ url, connectTimeout: "1 hour" }))))
            const text = Redis.errorText(error)
            assert.include(text, `127.0.0.1:${server.port}`)
            assert.include(text, "WRONGPASS")
            assert.notInclude(text, "wrong-s3cret")
          })
        ),
      30_000
    )

    it.live(
      '"start" with a server that accepts and never answers: each attempt ends after connectTimeout and another begins; a Redis taking over the port is connected',
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            // A loopback server that accepts every connection and says nothing; its sockets stay open.
            const silent = yield* Effect.acquireRelease(
              Effect.callback<{ readonly server: ReturnType<typeof createServer>; readonly sockets: Set<Socket> }>(
                (resume) => {
                  const sockets = new Set<Socket>()
                  const server = createServer((socket) => {
                    sockets.add(socket)
                    socket.on("error", () => {})
                  })
                  server.listen(0, "127.0.0.1", () => resume(Effect.succeed({ server, sockets })))
                }
              ),
              ({ sockets }) =>
                Effect.sync(() => {
                  for (const socket of sockets) socket.destroy()
                })
            )
            const port = (silent.server.address() as { readonly port: number }).port
            const redis = Context.get(
              yield* Layer.build(
                Redis.layer({
                  url: `redis://127.0.0.1:${port}`,
                  connectTimeout: "200 millis",
                  reconnectMax: "50 millis",
                  onUnreachableAtStart: "start"
                })
              ),
              PersistenceRedis.Redis
            )
            // Three attempts, waited for (10 s at most, a bound): a second of real time held fewer on a loaded machine.
            for (let i = 0; i < 200 && silent.sockets.size < 3; i++) yield* Effect.sleep("50 millis")
            assert.isAtLeast(silent.sockets.size, 3, "a new connection after each attempt's connectTimeout")
            assert.isAtMost(openSockets(port), 1, "an attempt given up closes its connection")
            // Refused by the layer, never sent: at once, not at a deadline.
            assert.include(Redis.errorText(yield* Effect.flip(redis.send("GET", "k"))), "not connected")

            // The silent server stops listening (its accepted sockets stay open, silent) and Redis takes the port.
            yield* Effect.callback<void>((resume) => {
              silent.server.close(() => resume(Effect.void))
            }).pipe(Effect.timeout("100 millis"), Effect.ignore)
            yield* startRedisAt(port)
            const pong = yield* Effect.suspend(() => redis.send<string>("PING")).pipe(
              Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
            )
            assert.strictEqual(pong, "PONG")
            assert.strictEqual(openSockets(port), 1)
          })
        ),
      20_000
    )

    for (const mode of ["fail", "start"] as const) {
      it.live(
        `"${mode}": connected, then Redis restarts behind a server that accepts and never answers: each reconnection's handshake ends after connectTimeout, and the stores work again once Redis answers`,
        () =>
          Effect.scoped(
            Effect.gen(function* () {
              const server = yield* startRedis
              const tag = `rehandshake${mode}${Math.random().toString(36).slice(2, 8)}`
              const guard = { timeout: "1 second", reportAfter: 0, probeInterval: "100 millis" } as const
              const context = yield* Layer.build(
                RateLimit.layerRedis({
                  providers: { [tag]: { requestsPerMinute: 1 } },
                  maxWait: 0,
                  prefix: `${tag}:rl:`,
                  redis: guard
                }).pipe(
                  Layer.provideMerge(
                    Redis.layer({
                      url: server.url,
                      connectTimeout: "300 millis",
                      reconnectMax: "100 millis",
                      onUnreachableAtStart: mode
                    })
                  )
                )
                // A first handshake over 300 ms (a loaded machine) fails "fail"'s build: the test is of reconnections.
              ).pipe(Effect.retry({ times: 4 }))
              const redis = Context.get(context, PersistenceRedis.Redis)
              const limits = Context.get(context, RateLimit.RateLimits)
              // The limit of 1 rpm holds only while Redis answers (the store fails open).
              const limited = Effect.suspend(() =>
                Effect.forEach(Array.from({ length: 2 }), () => Effect.result(limits.acquire(tag)))
              ).pipe(
                Effect.flatMap((results) =>
                  results.some((r) => r._tag === "Failure" && (r.failure as ModelError).reason === "RateLimited")
                    ? Effect.void
                    : Effect.fail("the limit does not hold")
                )
              )
              yield* limited.pipe(
                Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
              )

              // Redis dies and a server that accepts every connection and says nothing takes its port.
              yield* server.kill
              const silent = yield* silentServerAt(server.port)
              yield* Effect.sleep("2 seconds")
              assert.isAtLeast(silent.sockets.size, 3, "a new connection after each handshake's connectTimeout")
              assert.isAtMost(openSockets(server.port), 1, "a handshake given up closes its connection")
              // Commands fail at once meanwhile: refused by the offline client, not cut at their deadline.
              const offline = yield* Effect.flip(redis.send("GET", "k"))
              assert.include(Redis.errorText(offline), "offline")

              // It stops listening (its accepted sockets stay open, silent) and Redis takes the port back.
              yield* Effect.callback<void>((resume) => {
                silent.server.close(() => resume(Effect.void))
              }).pipe(Effect.timeout("100 millis"), Effect.ignore)
              yield* server.start
              // A reconnection left on a silent handshake never ended: the stores never worked again.
              yield* limited.pipe(
                Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo({ duration: "10 seconds" })))
              )
              assert.strictEqual(yield* redis.send<string>("PING"), "PONG")
            })
          ),
        30_000
      )
    }

    it.live('"fail", the default: no Redis listening fails the layer at once, naming the address', () =>
      Effect.gen(function* () {
        const port = yield* freePort
        for (const options of [{}, { onUnreachableAtStart: "fail" as const }]) {
          const exit = yield* Effect.exit(
            Effect.scoped(Layer.build(Redis.layer({ url: `redis://127.0.0.1:${port}`, ...options })))
          )
          const error = Exit.isFailure(exit) ? Exit.findErrorOption(exit) : Option.none()
          assert.isTrue(Option.isSome(error) && error.value._tag === "RedisError", String(exit))
          if (Option.isSome(error)) assert.include(error.value.message, `127.0.0.1:${port}`)
        }
      })
    )

    it.effect('a value other than "fail" or "start" is an OptionError naming onUnreachableAtStart', () =>
      Effect.gen(function* () {
        for (const value of ["later", null, true]) {
          const layer = Redis.layer({ url: "redis://127.0.0.1:1", onUnreachableAtStart: value as never })
          const error = yield* Effect.flip(Effect.scoped(Layer.build(layer)))
          assert.strictEqual(error._tag, "OptionError", String(value))
          assert.strictEqual((error as OptionError).path, "onUnreachableAtStart")
        }
      })
    )
  }
)

describe("Redis.layer options", () => {
  it("the address messages name is the one node-redis connects to: localhost when the URL names no host", () => {
    const addressOf = (url: string) => {
      const checked = settings({ url })
      return Result.isSuccess(checked) ? checked.success.address : `refused: ${checked.failure.message}`
    }
    assert.strictEqual(addressOf("redis://"), "localhost:6379")
    assert.strictEqual(addressOf("redis:///2"), "localhost:6379")
    assert.strictEqual(addressOf("redis://10.0.0.7"), "10.0.0.7:6379")
    assert.strictEqual(addressOf("rediss://[::1]:6380"), "[::1]:6380")
  })

  it.effect(
    "a reconnectMax below the backoff's first pause (50 ms) is an OptionError naming it: a busy loop on a down Redis",
    () =>
      Effect.gen(function* () {
        for (const reconnectMax of ["1 millis", 49, "0.5 millis"] as const) {
          const exit = yield* Effect.exit(
            Effect.scoped(Layer.build(Redis.layer({ url: "redis://127.0.0.1:1", reconnectMax })))
          )
          const error = Exit.isFailure(exit) ? Exit.findErrorOption(exit) : Option.none()
          assert.isTrue(Option.isSome(error) && error.value._tag === "OptionError", `${reconnectMax}: ${String(exit)}`)
          if (Option.isSome(error)) {
            assert.strictEqual((error.value as OptionError).path, "reconnectMax")
            assert.include(error.value.message, "50 ms")
          }
        }
      })
  )

  it.effect("tls: checked where it enters, naming the field and never echoing a key", () =>
    Effect.gen(function* () {
      const key = Redacted.make("-----BEGIN PRIVATE KEY-----s3cret")
      for (const [options, path] of [
        // With redis:// the settings would be ignored and the connection go in clear.
        [{ url: "redis://127.0.0.1:1", tls: { ca: "PEM" } }, "tls"],
        [{ url: "rediss://127.0.0.1:1", tls: null }, "tls"],
        [{ url: "rediss://127.0.0.1:1", tls: { rejectUnauthorized: false } }, "tls.rejectUnauthorized"],
        [{ url: "rediss://127.0.0.1:1", tls: { ca: [] } }, "tls.ca"],
        [{ url: "rediss://127.0.0.1:1", tls: { ca: 42 } }, "tls.ca"],
        [{ url: "rediss://127.0.0.1:1", tls: { key } }, "tls.cert"],
        [{ url: "rediss://127.0.0.1:1", tls: { cert: "PEM" } }, "tls.key"],
        [{ url: "rediss://127.0.0.1:1", tls: { servername: "" } }, "tls.servername"],
        // The passphrase of tls.key: alone it would decrypt nothing.
        [{ url: "rediss://127.0.0.1:1", tls: { passphrase: Redacted.make("s3cret") } }, "tls.passphrase"],
        [{ url: "rediss://127.0.0.1:1", tls: { cert: "PEM", key, passphrase: "" } }, "tls.passphrase"],
        [{ url: "rediss://127.0.0.1:1", tls: { cert: "PEM", key, passphrase: 42 } }, "tls.passphrase"]
      ] as const) {
        const exit = yield* Effect.exit(Effect.scoped(Layer.build(Redis.layer(options as never))))
        const error = Exit.isFailure(exit) ? Exit.findErrorOption(exit) : Option.none()
        assert.isTrue(Option.isSome(error) && error.value._tag === "OptionError", `${path}: ${String(exit)}`)
        if (Option.isSome(error)) {
          assert.strictEqual((error.value as OptionError).path, path)
          assert.notInclude(String(error.value), "s3cret")
        }
      }
    })
  )

  it.effect("a URL node-redis cannot read (a database that is not a number, a stray %) is an OptionError on url", () =>
    Effect.gen(function* () {
      for (const url of [
        "redis://127.0.0.1:1/abc",
        "redis://127.0.0.1:1/1.5",
        "redis://127.0.0.1:1/-1",
        // Past what Redis takes as a database index (an int): refused only once connected, or read as 1e20.
        "redis://127.0.0.1:1/2147483648",
        "redis://127.0.0.1:1/99999999999999999999",
        "redis://:s3cr%et@127.0.0.1:1",
        "redis://us%er@127.0.0.1:1"
      ]) {
        const exit = yield* Effect.exit(Effect.scoped(Layer.build(Redis.layer({ url }))))
        const error = Exit.isFailure(exit) ? Exit.findErrorOption(exit) : Option.none()
        assert.isTrue(Option.isSome(error) && error.value._tag === "OptionError", `${url}: ${String(exit)}`)
        if (Option.isSome(error)) {
          assert.strictEqual((error.value as OptionError).path, "url")
          // Never the value: it may carry a password.
          assert.notInclude(error.value.message, "s3cr")
        }
      }
    })
  )

  it.effect("options that are not an object, or with a misspelt key, are an OptionError naming it", () =>
    Effect.gen(function* () {
      for (const [options, path] of [
        [null, "options"],
        ["redis://127.0.0.1:1", "options"],
        [[], "options"],
        [{ urll: "redis://127.0.0.1:1" }, "urll"],
        [{ url: "redis://127.0.0.1:1", commandTimout: 100 }, "commandTimout"]
      ] as const) {
        const exit = yield* Effect.exit(Effect.scoped(Layer.build(Redis.layer(options as never))))
        const error = Exit.isFailure(exit) ? Exit.findErrorOption(exit) : Option.none()
        assert.isTrue(Option.isSome(error) && error.value._tag === "OptionError", `${String(options)}: ${String(exit)}`)
        if (Option.isSome(error)) assert.strictEqual((error.value as OptionError).path, path)
      }
    })
  )
})

/**
 * A server on 127.0.0.1 that speaks just enough RESP for node-redis: `answer` gets each
 * command (its words) and returns the raw reply, a delay and a reply, or `undefined` for none
 * (a Redis that hangs on it). Closed with the scope.
 */
const scriptedRedis = (
  answer: (command: ReadonlyArray<string>) => string | readonly [number, string] | undefined
): Effect.Effect<{ readonly url: string; readonly commands: Array<string> }, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<{
      readonly server: ReturnType<typeof createServer>
      readonly sockets: Set<Socket>
      readonly url: string
      readonly commands: Array<string>
    }>((resume) => {
      const commands: Array<string> = []
      const sockets = new Set<Socket>()
      const server = createServer((socket) => {
        sockets.add(socket)
        socket.on("close", () => sockets.delete(socket))
        let buffer = ""
        socket.on("error", () => {})
        socket.on("data", (chunk) => {
          buffer += chunk.toString("latin1")
          for (;;) {
            const words: Array<string> = []
            const head = /^\*(\d+)\r\n/.exec(buffer)
            if (head === null) return
            let at = head[0].length
            let complete = true
            for (let i = 0; i < Number(head[1]); i++) {
              const size = /^\$(\d+)\r\n/.exec(buffer.slice(at))
              if (size === null || buffer.length < at + size[0].length + Number(size[1]) + 2) {
                complete = false
                break
              }
              at += size[0].length
              words.push(buffer.slice(at, at + Number(size[1])))
              at += Number(size[1]) + 2
            }
            if (!complete) return
            buffer = buffer.slice(at)
            commands.push(words.join(" ").slice(0, 40))
            const reply = answer(words)
            if (typeof reply === "string") socket.write(reply)
            else if (reply !== undefined) setTimeout(() => socket.writable && socket.write(reply[1]), reply[0])
          }
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const address = server.address() as { readonly port: number }
        resume(Effect.succeed({ server, sockets, url: `redis://127.0.0.1:${address.port}`, commands }))
      })
    }),
    ({ server, sockets }) =>
      Effect.callback<void>((resume) => {
        server.close(() => resume(Effect.void))
        for (const socket of sockets) socket.destroy()
      })
  ).pipe(Effect.map(({ url, commands }) => ({ url, commands })))

describe("Redis.prefixOf", () => {
  it.effect(
    "a prefix whose first hash tag is empty ({}) is refused naming prefix: Redis Cluster hashes such keys whole",
    () =>
      Effect.sync(() => {
        for (const prefix of ["{}", "gw{}:", "a}{}b", "{}{tag}:"]) {
          const checked = Redis.prefixOf(prefix, "fallback:")
          assert.isTrue(Result.isFailure(checked), prefix)
          if (Result.isFailure(checked)) {
            assert.strictEqual(checked.failure.path, "prefix")
            assert.include(checked.failure.message, "empty hash tag")
          }
        }
        // A tag that holds something puts every key of the store in its slot: refused by nothing.
        for (const prefix of ["{gw}:", "gw{a}{}:", "gw:", "a}b", "gw{"]) {
          assert.deepStrictEqual(Redis.prefixOf(prefix, "fallback:"), Result.succeed(prefix), prefix)
        }
      })
  )
})

describe("Redis guard: a script's NOSCRIPT retry", () => {
  it.live(
    "shares the call's one deadline: a Redis that said NOSCRIPT late and then hangs is cut by what is left of it, not a second deadline",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const sha = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
          let loads = 0
          const fake = yield* scriptedRedis(([command]) => {
            switch (command?.toUpperCase()) {
              case "SCRIPT":
                // The first load answers; after the script cache was flushed, Redis hangs.
                return loads++ === 0 ? `$40\r\n${sha}\r\n` : undefined
              case "EVALSHA":
                return [300, "-NOSCRIPT No matching script. Please use EVAL.\r\n"]
              case "EVAL":
                return undefined
              default:
                return "+OK\r\n"
            }
          })
          const context = yield* Layer.build(Redis.layer({ url: fake.url, commandTimeout: "2 seconds" }))
          const redis = Context.get(context, PersistenceRedis.Redis)
          const guard = yield* Redis.makeGuard({
            store: "noscript-test",
            settings: yield* Effect.fromResult(Redis.guardSettings({ timeout: "1 minute", reportAfter: "1 minute" }))
          }).pipe(Effect.provideContext(context))
          const run = redis.eval(PersistenceRedis.script(() => [], { numberOfKeys: 0, lua: "return 1" }))
          const error = yield* Effect.flip(guard.call("eval", run()))
          assert.strictEqual(error.reason, "Timeout", error.message)
          // One EVALSHA, then the EVAL cut by what was left of the first command's deadline (effect's own eval loaded
          // the script again, SCRIPT LOAD and EVALSHA each with a deadline of its own): no command after it.
          assert.include(error.message, "EVAL did not answer within 2000 ms", fake.commands.join(", "))
          assert.deepStrictEqual(
            fake.commands
              .map((c) => c.split(" ")[0]?.toUpperCase())
              .filter((c) => c === "EVALSHA" || c === "EVAL" || c === "SCRIPT"),
            ["EVALSHA", "EVAL"]
          )
        })
      )
  )
})

describe("Redis.neverSent", () => {
  it("only a call skipped in an outage or refused by the client before writing it", () => {
    class ClientOfflineError extends Error {}
    class ClientClosedError extends Error {}
    class TimeoutError extends Error {}
    class TimeoutReadError extends Error {}
    class SocketClosedUnexpectedlyError extends Error {}
    const failed = (reason: "Failed" | "Timeout" | "Unavailable", cause?: Error) =>
      new Redis.StoreError({
        store: "s",
        operation: "o",
        reason,
        message: "m",
        ...(cause === undefined ? {} : { cause: new PersistenceRedis.RedisError({ cause }) })
      })
    assert.isTrue(Redis.neverSent(failed("Unavailable")))
    assert.isTrue(Redis.neverSent(failed("Failed", new ClientOfflineError("offline"))))
    assert.isTrue(Redis.neverSent(failed("Failed", new ClientClosedError("closed"))))
    assert.isTrue(Redis.neverSent(failed("Timeout", new TimeoutError("queued"))))
    // Written, perhaps run.
    assert.isFalse(Redis.neverSent(failed("Timeout", new TimeoutReadError("no reply"))))
    assert.isFalse(Redis.neverSent(failed("Failed", new SocketClosedUnexpectedlyError("dropped"))))
    assert.isFalse(Redis.neverSent(failed("Failed", new Error("ERR wrong"))))
    // The guard's own deadline: the command may be on its way.
    assert.isFalse(Redis.neverSent(failed("Timeout")))
    // Effect's own TimeoutError (a Redis service of the application's, bounded by Effect.timeout) shares the
    // name of node-redis's queued-command one: the command may be on its way all the same.
    assert.isFalse(Redis.neverSent(failed("Timeout", new Cause.TimeoutError("deadline"))))
  })
})

describe.skipIf(skipRedis)(
  `Redis.layer: reserve and subscribe (${skipRedis ? skipReason : "needs redis-server"})`,
  () => {
    it.live(
      "a Redis that stops answering (SIGSTOP): reserve and subscribe fail within their deadline, and work again once it answers",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            yield* Effect.addFinalizer(() => server.resume)
            // Deadlines a healthy Redis meets on a loaded machine (300 and 200 ms were not always): the stopped one is
            // still cut by them, each in a few seconds.
            const redis = Context.get(
              yield* Layer.build(
                Redis.layer({ url: server.url, connectTimeout: "2 seconds", commandTimeout: "1 second" })
              ),
              PersistenceRedis.Redis
            )
            const reserved = Effect.scoped(
              Effect.flatMap(redis.reserve, (connection) => connection.send<string>("PING"))
            )
            assert.strictEqual(yield* reserved, "PONG")
            yield* server.pause
            // The pool's connection: its command's deadline drops it.
            yield* Effect.flip(reserved)
            // Each a new connection whose handshake the stopped server never answers: they waited for ever.
            // Each ends (a bound, not a measure), failed by its deadline: its error names it.
            for (let i = 0; i < 2; i++) {
              const exit = yield* reserved.pipe(Effect.exit, Effect.timeoutOption("10 seconds"))
              assert.isTrue(Option.isSome(exit) && Exit.isFailure(exit.value), `reserve ${i} ended: ${String(exit)}`)
              if (Option.isSome(exit)) {
                const error = Exit.findErrorOption(exit.value)
                assert.isTrue(Option.isSome(error) && error.value._tag === "RedisError", String(exit.value))
                if (Option.isSome(error)) assert.include(Redis.errorText(error.value), "within 2000 ms")
              }
            }
            const subscribed = yield* Effect.scoped(
              Effect.flatMap(redis.subscribe("orchestra-test"), (queue) => Effect.flip(Queue.take(queue)))
            ).pipe(Effect.timeoutOption("10 seconds"))
            assert.isTrue(Option.isSome(subscribed), "the subscription ended")
            if (Option.isSome(subscribed)) {
              assert.strictEqual(subscribed.value._tag, "RedisError")
              assert.include(Redis.errorText(subscribed.value), "within 3000 ms")
            }

            yield* server.resume
            const again = yield* Effect.suspend(() => reserved).pipe(
              Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
            )
            assert.strictEqual(again, "PONG")
            // A reserved connection's script: one EVALSHA, one EVAL after a NOSCRIPT, as on the shared connection.
            const script = PersistenceRedis.script(() => [], {
              numberOfKeys: 0,
              lua: "return 7"
            }).withReturnType<number>()
            yield* redis.send("SCRIPT", "FLUSH")
            assert.strictEqual(yield* Effect.scoped(Effect.flatMap(redis.reserve, (c) => c.eval(script)())), 7)
          })
        ),
      40_000
    )

    it.live(
      "Redis restarted: a reserve once it is back gets a live connection, not the pool's idle one that died with the old server",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const redis = Context.get(
              yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
              PersistenceRedis.Redis
            )
            const reserved = Effect.scoped(Effect.flatMap(redis.reserve, (c) => c.send<string>("PING")))
            // Two connections left idle in the pool.
            const both = Effect.scoped(
              Effect.all([redis.reserve, redis.reserve]).pipe(
                Effect.flatMap(([a, b]) => Effect.all([a.send<string>("PING"), b.send<string>("PING")]))
              )
            )
            assert.deepStrictEqual(yield* both, ["PONG", "PONG"])
            yield* server.kill
            yield* server.start
            // Back: the shared connection has reconnected.
            yield* Effect.suspend(() => redis.send<string>("PING")).pipe(
              Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
            )
            // Each reserve answers, the first included: the idle connections closed with the old server are not handed out.
            assert.strictEqual(yield* reserved, "PONG")
            assert.deepStrictEqual(yield* both, ["PONG", "PONG"])
          })
        ),
      20_000
    )

    it.live(
      "a blocking pop on a reserved connection waits past commandTimeout for its own timeout and loses no element",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const redis = Context.get(
              yield* Layer.build(Redis.layer({ url: server.url, commandTimeout: "200 millis" })),
              PersistenceRedis.Redis
            )
            // The element is pushed and counted by a client of the test's own: 200 ms is for the pop alone.
            const admin = Context.get(
              yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
              PersistenceRedis.Redis
            )
            // node-redis keeps a command that blocks on the server out of the client's deadline once sent: cut at
            // 200 ms, the element Redis popped later would have been answered to nobody.
            const pop = yield* Effect.forkChild(
              Effect.scoped(
                Effect.flatMap(redis.reserve, (connection) =>
                  connection.send<ReadonlyArray<string> | null>("BLPOP", "orchestra-jobs", "5")
                )
              )
            )
            yield* Effect.sleep("600 millis")
            yield* admin.send("RPUSH", "orchestra-jobs", "job-1")
            assert.deepStrictEqual(yield* Fiber.join(pop), ["orchestra-jobs", "job-1"])
            assert.strictEqual(yield* admin.send<number>("LLEN", "orchestra-jobs"), 0)
          })
        ),
      20_000
    )

    it.live(
      "a subscribe that times out closes its connection at once, not when the caller's scope closes: none subscribes later",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            yield* Effect.addFinalizer(() => server.resume)
            // Deadlines a healthy Redis meets on a loaded machine (300 and 200 ms were not always): the stopped one is
            // still cut by them, each in a few seconds.
            const redis = Context.get(
              yield* Layer.build(
                Redis.layer({ url: server.url, connectTimeout: "2 seconds", commandTimeout: "1 second" })
              ),
              PersistenceRedis.Redis
            )
            yield* server.pause
            // In the scope the test goes on in: the subscription's failure comes through its queue.
            const queue = yield* redis.subscribe("orchestra-late")
            assert.strictEqual((yield* Effect.flip(Queue.take(queue)))._tag, "RedisError")
            // Its connection, left in its handshake, subscribed once Redis answered again and filled a queue
            // nobody reads, for as long as the caller's scope lived.
            assert.strictEqual(openSockets(server.port), 1)
            yield* server.resume
            const admin = Context.get(
              yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
              PersistenceRedis.Redis
            )
            yield* Effect.sleep("300 millis")
            assert.strictEqual(yield* admin.send<number>("PUBLISH", "orchestra-late", "m"), 0)
            // A subscription that does not time out stays with the caller's scope, and is delivered to.
            const live = yield* redis.subscribe("orchestra-live")
            assert.strictEqual(yield* admin.send<number>("PUBLISH", "orchestra-live", "hello"), 1)
            assert.deepStrictEqual(yield* Queue.take(live), { channel: "orchestra-live", message: "hello" })
          })
        ),
      40_000
    )

    it.live("a subscription Redis refuses (an ACL's NOPERM) fails its queue and closes its connection then", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const admin = Context.get(
            yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
            PersistenceRedis.Redis
          )
          yield* admin.send("ACL", "SETUSER", "limited", "on", ">pw", "~*", "resetchannels", "&allowed", "+@all")
          const redis = Context.get(
            yield* Layer.build(
              Redis.layer({ url: server.url.replace("redis://", "redis://limited:pw@"), ...healthyClient })
            ),
            PersistenceRedis.Redis
          )
          const before = openSockets(server.port)
          const queue = yield* redis.subscribe("forbidden")
          assert.include(Redis.errorText(yield* Effect.flip(Queue.take(queue))), "NOPERM")
          assert.strictEqual(openSockets(server.port), before)
        })
      )
    )

    it.live(
      "a reserve that times out on a Redis that stops answering closes the connection it was opening: none is left pending",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            yield* Effect.addFinalizer(() => server.resume)
            // Deadlines a healthy Redis meets on a loaded machine (300 and 200 ms were not always): the stopped one is
            // still cut by them, each in a few seconds.
            const redis = Context.get(
              yield* Layer.build(
                Redis.layer({ url: server.url, connectTimeout: "2 seconds", commandTimeout: "1 second" })
              ),
              PersistenceRedis.Redis
            )
            const reserved = Effect.scoped(
              Effect.flatMap(redis.reserve, (connection) => connection.send<string>("PING"))
            )
            assert.strictEqual(yield* reserved, "PONG")
            yield* server.pause
            // The pool's connection: its command's deadline drops it.
            yield* Effect.flip(reserved)
            for (let i = 0; i < 3; i++) yield* Effect.flip(reserved)
            // The layer's own connection stays; every connection a reserve opened is closed, not left in its
            // handshake (where it held the pool: each reserve after it waited for it, until its deadline).
            const open = yield* Effect.suspend(() => Effect.succeed(openSockets(server.port))).pipe(
              Effect.flatMap((n) => (n === 1 ? Effect.succeed(n) : Effect.fail(n))),
              Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" }))),
              Effect.orElseSucceed(() => openSockets(server.port))
            )
            assert.strictEqual(open, 1)
            yield* server.resume
            const again = yield* Effect.suspend(() => reserved).pipe(
              Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
            )
            assert.strictEqual(again, "PONG")
          })
        ),
      40_000
    )
  }
)

describe.skipIf(skipRedis)(`Redis.layer over TLS (${skipRedis ? skipReason : "needs redis-server"})`, () => {
  it.live("rediss:// to a Redis whose certificate a CA of its own signed: trusted through tls.ca", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startTlsRedis.pipe(Effect.orDie)
        const pem = (name: string) => readFileSync(join(server.dir, name), "utf8")
        // It asks for a client certificate as well.
        const client = { cert: pem("client.crt"), key: Redacted.make(pem("client.key")) }
        // Node's default CAs do not know it: refused, naming why.
        const refused = yield* Effect.flip(Effect.scoped(Layer.build(Redis.layer({ url: server.url, tls: client }))))
        assert.strictEqual(refused._tag, "RedisError")
        assert.include(refused.message, "certificate")
        const redis = Context.get(
          yield* Layer.build(Redis.layer({ url: server.url, tls: { ca: pem("ca.crt"), ...client } })),
          PersistenceRedis.Redis
        )
        assert.strictEqual(yield* redis.send<string>("PING"), "PONG")
        // A reserved connection is a TLS one as well.
        const reserved = Effect.flatMap(redis.reserve, (connection) => connection.send<string>("PING"))
        assert.strictEqual(yield* Effect.scoped(reserved), "PONG")
      })
    )
  )

  it.live(
    "a client key encrypted with a passphrase: used with tls.passphrase; without it, or a wrong one, a RedisError",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startTlsRedis.pipe(Effect.orDie)
          const file = (name: string) => join(server.dir, name)
          execFileSync(
            "openssl",
            [
              "pkey",
              "-in",
              file("client.key"),
              "-aes256",
              "-passout",
              "pass:pass-s3cret",
              "-out",
              file("client.enc.key")
            ],
            { stdio: "ignore" }
          )
          const tls = {
            ca: readFileSync(file("ca.crt"), "utf8"),
            cert: readFileSync(file("client.crt"), "utf8"),
            key: Redacted.make(readFileSync(file("client.enc.key"), "utf8"))
          }
          assert.include(Redacted.value(tls.key), "ENCRYPTED")
          const redis = Context.get(
            yield* Layer.build(
              Redis.layer({ url: server.url, tls: { ...tls, passphrase: Redacted.make("pass-s3cret") } })
            ),
            PersistenceRedis.Redis
          )
          assert.strictEqual(yield* redis.send<string>("PING"), "PONG")
          assert.strictEqual(yield* Effect.scoped(Effect.flatMap(redis.reserve, (c) => c.send<string>("PING"))), "PONG")
          for (const passphrase of [undefined, Redacted.make("wrong-s3cret")]) {
            const refused = yield* Effect.flip(
              Effect.scoped(
                Layer.build(
                  Redis.layer({
                    url: server.url,
                    connectTimeout: "2 seconds",
                    tls: passphrase === undefined ? tls : { ...tls, passphrase }
                  })
                )
              )
            )
            assert.strictEqual(refused._tag, "RedisError", String(refused))
            assert.notInclude(String(refused), "s3cret")
          }
        })
      ),
    // Three keys and certificates made by openssl first: 20 s was not enough at load 15.
    60_000
  )
})

describe.skipIf(skipRedis)(
  `Redis.layer: a reconnection refused (${skipRedis ? skipReason : "needs redis-server"})`,
  () => {
    it.live(
      "a Redis that refuses the password once reconnecting: one warning names the refusal (not the password); it connects once the password is right again",
      () =>
        Effect.gen(function* () {
          const logs = yield* captureLogs
          yield* Effect.scoped(
            Effect.gen(function* () {
              const server = yield* startRedis
              const admin = Context.get(
                yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
                PersistenceRedis.Redis
              )
              const admin2 = Context.get(
                yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
                PersistenceRedis.Redis
              )
              yield* admin.send("CONFIG", "SET", "requirepass", "old-s3cret")
              const redis = Context.get(
                yield* Layer.build(
                  Redis.layer({
                    url: server.url.replace("redis://", "redis://:old-s3cret@"),
                    ...healthyClient,
                    reconnectMax: "50 millis"
                  })
                ),
                PersistenceRedis.Redis
              )
              const id = yield* redis.send<number>("CLIENT", "ID")
              // The password is rotated and the connection dropped: every reconnection is refused.
              yield* admin2.send("AUTH", "old-s3cret")
              yield* admin2.send("CONFIG", "SET", "requirepass", "new-s3cret")
              yield* admin2.send("CLIENT", "KILL", "ID", String(id))
              // Once a reconnection was refused (10 s at most, a bound: 600 ms of real time did not always hold one
              // on a loaded machine), and a little more for another warning, should one come.
              const said = () =>
                logs.lines.filter((l) => l.startsWith("Warn") && l.includes(`127.0.0.1:${server.port}`))
              for (let i = 0; i < 200 && said().length === 0; i++) yield* Effect.sleep("50 millis")
              yield* Effect.sleep("300 millis")
              assert.include(Redis.errorText(yield* Effect.flip(redis.send("PING"))), "offline")
              const warnings = said()
              assert.strictEqual(warnings.length, 1, JSON.stringify(logs.lines))
              assert.include(warnings[0], "WRONGPASS")
              for (const line of logs.lines) assert.notInclude(line, "s3cret")

              yield* admin2.send("CONFIG", "SET", "requirepass", "old-s3cret")
              const pong = yield* Effect.suspend(() => redis.send<string>("PING")).pipe(
                Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
              )
              assert.strictEqual(pong, "PONG")
            })
          ).pipe(Effect.provide(logs.layer))
        }),
      20_000
    )

    it.live(
      "a subscription whose first connection Redis refuses (a password rotated) fails its queue with the refusal, not a timeout",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const admin = Context.get(
              yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
              PersistenceRedis.Redis
            )
            yield* admin.send("CONFIG", "SET", "requirepass", "old-s3cret")
            const redis = Context.get(
              yield* Layer.build(
                Redis.layer({
                  url: server.url.replace("redis://", "redis://:old-s3cret@"),
                  ...healthyClient,
                  // A subscription that timed out instead would say so within the test's 20 s.
                  connectTimeout: "10 seconds",
                  reconnectMax: "50 millis"
                })
              ),
              PersistenceRedis.Redis
            )
            yield* admin.send("AUTH", "old-s3cret")
            yield* admin.send("CONFIG", "SET", "requirepass", "new-s3cret")
            const queue = yield* redis.subscribe("orchestra-first-refused")
            const refused = Redis.errorText(yield* Effect.flip(Queue.take(queue)))
            assert.include(refused, "WRONGPASS")
            assert.notInclude(refused, "s3cret")
            yield* admin.send("CONFIG", "SET", "requirepass", "")
          })
        ),
      20_000
    )

    it.live(
      "a subscription whose re-subscribe Redis refuses after a reconnection (an ACL changed: NOPERM) says so once, naming its channel, and fails its queue",
      () =>
        Effect.gen(function* () {
          const logs = yield* captureLogs
          yield* Effect.scoped(
            Effect.gen(function* () {
              const server = yield* startRedis
              const admin = Context.get(
                yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
                PersistenceRedis.Redis
              )
              yield* admin.send("ACL", "SETUSER", "limited", "on", ">pw", "~*", "resetchannels", "&allowed", "+@all")
              const redis = Context.get(
                yield* Layer.build(
                  Redis.layer({
                    url: server.url.replace("redis://", "redis://limited:pw@"),
                    ...healthyClient,
                    reconnectMax: "50 millis"
                  })
                ),
                PersistenceRedis.Redis
              )
              const before = openSockets(server.port)
              const queue = yield* redis.subscribe("allowed")
              yield* admin.send("PUBLISH", "allowed", "before")
              assert.deepStrictEqual(yield* Queue.take(queue), { channel: "allowed", message: "before" })
              // The channel is taken from the user: Redis drops the subscription's connection, which reconnects
              // (its AUTH is accepted) and has its SUBSCRIBE refused.
              yield* admin.send("ACL", "SETUSER", "limited", "resetchannels", "&other")
              const refused = yield* Effect.flip(Queue.take(queue)).pipe(Effect.timeout("10 seconds"))
              assert.include(Redis.errorText(refused), "NOPERM")
              assert.strictEqual(openSockets(server.port), before, "the refused subscription's connection is closed")
              // Tried again meanwhile, the refusal is said once.
              yield* Effect.sleep("300 millis")
              const warnings = logs.lines.filter((l) => l.startsWith("Warn") && l.includes("NOPERM"))
              assert.strictEqual(warnings.length, 1, JSON.stringify(logs.lines))
              assert.include(warnings[0]!, `"allowed"`)
              for (const line of logs.lines) assert.notInclude(line, ">pw")
            })
          ).pipe(Effect.provide(logs.layer))
        }),
      20_000
    )

    it.live(
      "a reconnection refused on the layer's connection and on a subscription's: each connection's refusal is said once, naming which",
      () =>
        Effect.gen(function* () {
          const logs = yield* captureLogs
          yield* Effect.scoped(
            Effect.gen(function* () {
              const server = yield* startRedis
              const admin = Context.get(
                yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
                PersistenceRedis.Redis
              )
              yield* admin.send("CONFIG", "SET", "requirepass", "old-s3cret")
              const redis = Context.get(
                yield* Layer.build(
                  Redis.layer({
                    url: server.url.replace("redis://", "redis://:old-s3cret@"),
                    ...healthyClient,
                    reconnectMax: "50 millis"
                  })
                ),
                PersistenceRedis.Redis
              )
              yield* redis.subscribe("orchestra-refused")
              // The password is rotated and both connections dropped: every reconnection of each is refused.
              yield* admin.send("CONFIG", "SET", "requirepass", "new-s3cret")
              yield* admin.send("CLIENT", "KILL", "TYPE", "pubsub")
              yield* admin.send("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
              yield* Effect.sleep("800 millis")
              const warnings = logs.lines.filter((l) => l.startsWith("Warn") && l.includes("refused the reconnection"))
              const subscription = warnings.filter((l) => l.includes(`"orchestra-refused"`))
              assert.strictEqual(subscription.length, 1, JSON.stringify(logs.lines))
              assert.strictEqual(warnings.length - subscription.length, 1, JSON.stringify(logs.lines))
              for (const line of warnings) assert.include(line, "WRONGPASS")
              for (const line of logs.lines) assert.notInclude(line, "s3cret")
              yield* admin.send("CONFIG", "SET", "requirepass", "")
            })
          ).pipe(Effect.provide(logs.layer))
        }),
      20_000
    )
  }
)

describe("Redis guard: the outage probe", () => {
  it.effect(
    "a Redis that answers PING but refuses the store's calls (OOM): one warning, no 'is back' until a call of the store succeeds, one call let through per probeInterval",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        // node-redis's class of an error reply.
        class SimpleError extends Error {}
        const up = {
          send: () => Effect.succeed("PONG")
        } as unknown as PersistenceRedis.Redis["Service"]
        const settings = yield* Effect.fromResult(
          Redis.guardSettings({ timeout: "10 seconds", reportAfter: 0, probeInterval: "1 second" })
        )
        let sent = 0
        let full = true
        const write = Effect.suspend(() => {
          sent++
          return full
            ? Effect.fail(
                new PersistenceRedis.RedisError({
                  cause: new SimpleError("OOM command not allowed when used memory > 'maxmemory'.")
                })
              )
            : Effect.void
        })
        yield* Effect.scoped(
          Effect.gen(function* () {
            const guard = yield* Redis.makeGuard({ store: `oom-${Math.random()}`, settings }).pipe(
              Effect.provideService(PersistenceRedis.Redis, up)
            )
            // A call every 100 ms for 10 seconds.
            for (let i = 0; i < 100; i++) {
              yield* Effect.ignore(guard.call("write", write))
              yield* TestClock.adjust("100 millis")
            }
            const warnings = logs.lines.filter((l) => l.startsWith("Warn"))
            assert.strictEqual(warnings.length, 1, JSON.stringify(logs.lines))
            assert.include(warnings[0], "OOM")
            assert.isFalse(
              logs.lines.some((l) => l.includes("is back")),
              JSON.stringify(logs.lines)
            )
            assert.isFalse(yield* guard.available)
            // The first call, then one a second: the rest skip Redis.
            assert.isAtMost(sent, 12)
            assert.isAtLeast(sent, 9)
            full = false
            yield* TestClock.adjust("1 second")
            yield* guard.call("write", write)
            assert.isTrue(yield* guard.available)
            assert.isTrue(logs.lines.some((l) => l.includes("is back")))
          })
        ).pipe(Effect.provide(logs.layer))
      })
  )

  it.effect(
    "an outage reported again after a late success: still one PING per probeInterval, not one more per flap",
    () =>
      Effect.gen(function* () {
        let pings = 0
        const down = {
          send: (command: string) =>
            Effect.suspend(() => {
              if (command === "PING") pings++
              return Effect.fail(new PersistenceRedis.RedisError({ cause: new Error("The client is offline") }))
            })
        } as unknown as PersistenceRedis.Redis["Service"]
        const settings = yield* Effect.fromResult(
          Redis.guardSettings({ timeout: "10 seconds", reportAfter: 0, probeInterval: "1 second" })
        )
        yield* Effect.scoped(
          Effect.gen(function* () {
            const guard = yield* Redis.makeGuard({ store: `probe-${Math.random()}`, settings }).pipe(
              Effect.provideService(PersistenceRedis.Redis, down)
            )
            const failing = Effect.fail(new PersistenceRedis.RedisError({ cause: new Error("The client is offline") }))
            // Three times: a call fails (an outage reported) and one sent before it answers late.
            for (let i = 0; i < 3; i++) {
              const late = yield* Effect.forkChild(guard.call("late", Effect.sleep("10 millis")))
              yield* Effect.yieldNow
              yield* Effect.flip(guard.call("fails", failing))
              assert.isFalse(yield* guard.available)
              yield* TestClock.adjust("10 millis")
              yield* Fiber.join(late)
              assert.isTrue(yield* guard.available)
            }
            yield* Effect.flip(guard.call("fails", failing))
            const before = pings
            yield* TestClock.adjust("5 seconds")
            assert.strictEqual(pings - before, 5, "one PING a second")
          })
        )
      })
  )
})

/** A loopback TCP proxy to `target()` (read at each new connection: a DNS name moved by a failover). */
const proxyTo = (target: () => number) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly server: ReturnType<typeof createServer>; readonly sockets: Set<Socket> }>((resume) => {
      const sockets = new Set<Socket>()
      const server = createServer((client) => {
        const upstream = connectTo(target(), "127.0.0.1")
        for (const socket of [client, upstream]) {
          sockets.add(socket)
          socket.on("error", () => {})
          socket.on("close", () => {
            client.destroy()
            upstream.destroy()
          })
        }
        client.pipe(upstream).pipe(client)
      })
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed({ server, sockets })))
    }),
    ({ server, sockets }) =>
      Effect.sync(() => {
        server.close()
        for (const socket of sockets) socket.destroy()
      })
  ).pipe(Effect.map(({ server }) => `redis://127.0.0.1:${(server.address() as { readonly port: number }).port}`))

describe.skipIf(skipRedis)(
  `Redis.layer: a subscription's reconnection (${skipRedis ? skipReason : "needs redis-server"})`,
  () => {
    it.live(
      "a subscriber reconnecting to a server that never answers its handshake tries again after connectTimeout, as the layer's client does, and is delivered to once Redis answers",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const silentPort = yield* freePort
            yield* silentServerAt(silentPort)
            let target = server.port
            const url = yield* proxyTo(() => target)
            const redis = Context.get(
              // The first connection, to the healthy Redis, is made again should a loaded machine miss the 300 ms.
              yield* Layer.build(Redis.layer({ url, connectTimeout: "300 millis", reconnectMax: "100 millis" })).pipe(
                Effect.retry({ times: 5 })
              ),
              PersistenceRedis.Redis
            )
            const admin = Context.get(
              yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient })),
              PersistenceRedis.Redis
            )
            const queue = yield* redis.subscribe("orchestra-news")
            assert.strictEqual(yield* admin.send<number>("PUBLISH", "orchestra-news", "1"), 1)
            assert.deepStrictEqual(yield* Queue.take(queue), { channel: "orchestra-news", message: "1" })
            // The subscriber's connection drops, and its address names, for a while, a server that accepts and never
            // answers (a Redis restarting behind a proxy): its reconnection waited on that handshake for ever.
            target = silentPort
            yield* admin.send("CLIENT", "KILL", "TYPE", "pubsub")
            yield* Effect.sleep("400 millis")
            target = server.port
            const delivered = yield* Effect.suspend(() => admin.send<number>("PUBLISH", "orchestra-news", "2")).pipe(
              Effect.flatMap((n) => (n === 1 ? Effect.void : Effect.fail(n))),
              Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: "20 seconds" }))),
              Effect.exit
            )
            assert.isTrue(Exit.isSuccess(delivered), "the subscriber is back")
            assert.deepStrictEqual(yield* Queue.take(queue), { channel: "orchestra-news", message: "2" })
          })
        ),
      // Each handshake has 300 ms: on a loaded machine a few are missed before one is made.
      60_000
    )
  }
)

/** A loopback TCP proxy to `port` whose `freeze` stops carrying the connections open then, without closing them. */
const freezableProxyTo = (port: number) =>
  Effect.acquireRelease(
    Effect.callback<{
      readonly server: ReturnType<typeof createServer>
      readonly pairs: Set<readonly [Socket, Socket]>
    }>((resume) => {
      const pairs = new Set<readonly [Socket, Socket]>()
      const server = createServer((client) => {
        const upstream = connectTo(port, "127.0.0.1")
        const pair = [client, upstream] as const
        pairs.add(pair)
        for (const socket of pair) {
          socket.on("error", () => {})
          socket.on("close", () => {
            pairs.delete(pair)
            client.destroy()
            upstream.destroy()
          })
        }
        client.pipe(upstream).pipe(client)
      })
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed({ server, pairs })))
    }),
    ({ server, pairs }) =>
      Effect.sync(() => {
        server.close()
        for (const pair of pairs) for (const socket of pair) socket.destroy()
      })
  ).pipe(
    Effect.map(({ server, pairs }) => ({
      url: `redis://127.0.0.1:${(server.address() as { readonly port: number }).port}`,
      freeze: Effect.sync(() => {
        for (const [client, upstream] of pairs) {
          client.unpipe(upstream)
          upstream.unpipe(client)
        }
      })
    }))
  )

describe.skipIf(skipRedis)(
  `Redis.layer: a connection gone silent (${skipRedis ? skipReason : "needs redis-server"})`,
  () => {
    it.live(
      "a connection that no longer carries replies (a proxy or NAT lost it without closing it) is dropped once its calls have timed out for connectTimeout, and made again",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const proxy = yield* freezableProxyTo(server.port)
            // The first connection is made again should a loaded machine miss the 300 ms.
            const context = yield* Layer.build(
              Redis.layer({
                url: proxy.url,
                connectTimeout: "300 millis",
                commandTimeout: "100 millis",
                reconnectMax: "100 millis"
              })
            ).pipe(Effect.retry({ times: 5 }))
            const redis = Context.get(context, PersistenceRedis.Redis)
            const guard = yield* Redis.makeGuard({
              store: `silent-${Math.random()}`,
              settings: yield* Effect.fromResult(Redis.guardSettings({ reportAfter: "1 minute" }))
            }).pipe(Effect.provideContext(context))
            const ping = Effect.suspend(() => guard.call("PING", redis.send<string>("PING")))
            // A busy machine may take longer than the deadline once.
            assert.strictEqual(yield* ping.pipe(Effect.retry(Schedule.recurs(5))), "PONG")
            yield* proxy.freeze
            const failed = yield* Effect.flip(ping)
            assert.strictEqual(failed.reason, "Timeout")
            // TCP to the proxy stays up: the client waited on the lost connection for good.
            const back = yield* ping.pipe(
              Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: "20 seconds" }))),
              Effect.exit
            )
            assert.isTrue(Exit.isSuccess(back), String(back))
          })
        ),
      // Each handshake has 300 ms and each PING 100: on a loaded machine a few are missed before one is made.
      60_000
    )
  }
)

describe.skipIf(skipRedis)(`Redis.layer: a failover (${skipRedis ? skipReason : "needs redis-server"})`, () => {
  it.live(
    "connected to a primary that became a replica (READONLY) while its address now names the new primary: the stores reconnect to it",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        yield* Effect.scoped(
          Effect.gen(function* () {
            const a = yield* startRedis
            const b = yield* startRedis
            let primary = a.port
            const url = yield* proxyTo(() => primary)
            const context = yield* Layer.build(Redis.layer({ url, reconnectMax: "100 millis" }))
            const redis = Context.get(context, PersistenceRedis.Redis)
            const guard = yield* Redis.makeGuard({
              store: `failover-${Math.random()}`,
              settings: yield* Effect.fromResult(Redis.guardSettings({ reportAfter: "1 minute" }))
            }).pipe(Effect.provideContext(context))
            const set = (value: string) => guard.call("SET", redis.send("SET", "k", value))
            yield* set("1")

            // The failover: the old primary follows the new one, and the address names the new one.
            const old = Context.get(yield* Layer.build(Redis.layer({ url: a.url })), PersistenceRedis.Redis)
            yield* old.send("REPLICAOF", "127.0.0.1", String(b.port))
            primary = b.port
            const first = yield* Effect.flip(set("2"))
            assert.include(first.message, "READONLY")
            // It stayed on the replica for good: every write refused until the process restarted.
            yield* Effect.suspend(() => set("2")).pipe(
              Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo({ duration: "3 seconds" })))
            )
            const fresh = Context.get(yield* Layer.build(Redis.layer({ url: b.url })), PersistenceRedis.Redis)
            assert.strictEqual(yield* fresh.send<string>("GET", "k"), "2")
            const warning = logs.lines.find((l) => l.startsWith("Warn") && l.includes("READONLY"))
            assert.isDefined(warning, JSON.stringify(logs.lines))
          })
        ).pipe(Effect.provide(logs.layer))
      }),
    20_000
  )
})
