import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { inspect } from "node:util"
import { assert, describe, it } from "@effect/vitest"
import { Cause, Config, ConfigProvider, Context, Duration, Effect, Exit, Fiber, Layer, Metric, Schedule } from "effect"
import { TestClock } from "effect/testing"
import { RateLimiter, Redis as PersistenceRedis } from "effect/persistence"
import type { ModelError } from "../src/AiError.js"
import * as Input from "../src/Input.js"
import * as Metrics from "../src/Metrics.js"
import * as RateLimit from "../src/RateLimit.js"
import { withAlignedFixedWindow } from "../src/RateLimit/memory.js"
import * as RateLimitRedis from "../src/RateLimit/Redis.js"
import * as Redis from "../src/Redis.js"
import { placements } from "./utils/rateLimit.js"
import { healthyClient, healthyDeadline, type RedisServer, skipRedis, skipReason, startRedis } from "./utils/redis.js"
import { captureLogs } from "./utils/logs.js"

let counter = 0
const uniqueName = (label: string) => `rlr-${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

/**
 * The service and the Redis client it uses, built in the test's scope. Its deadlines (`redis.timeout` and the
 * client's) are ones a healthy Redis meets on a loaded machine unless the test gives its own: with the defaults
 * (500 ms) a call that waited for a core went through unlimited (fail open). `deadlines: "default"` keeps the
 * library's, for a test about them.
 */
const build = (server: RedisServer, options: RateLimit.RedisOptions, deadlines: "healthy" | "default" = "healthy") =>
  Effect.gen(function* () {
    // Anything but an object (null, a string) goes as given, for the option checks.
    const redis: Redis.GuardOptions | undefined =
      deadlines === "default"
        ? options.redis
        : options.redis === undefined
          ? { timeout: healthyDeadline }
          : typeof options.redis === "object" && options.redis !== null
            ? { timeout: healthyDeadline, ...options.redis }
            : options.redis
    const connection = deadlines === "default" ? {} : healthyClient
    const context = yield* Layer.build(
      RateLimit.layerRedis({ ...options, redis }).pipe(
        Layer.provideMerge(Redis.layer({ url: server.url, ...connection }))
      )
    )
    return { limits: Context.get(context, RateLimit.RateLimits), redis: Context.get(context, PersistenceRedis.Redis) }
  })

const memory = (options: RateLimit.Options) =>
  Effect.map(Layer.build(RateLimit.layerMemory(options)), Context.get(RateLimit.RateLimits))

/** Fires `calls` acquires at once; the ones admitted and the errors of the others. */
const burst = (limits: RateLimit.Service, key: string, calls: number, tokens?: number) =>
  Effect.map(
    Effect.forEach(Array.from({ length: calls }), () => Effect.result(limits.acquire(key, { tokens })), {
      concurrency: 20
    }),
    (results) => ({
      admitted: results.filter((r) => r._tag === "Success").length,
      errors: results.flatMap((r) => (r._tag === "Failure" ? [r.failure as ModelError] : []))
    })
  )

/** How many acquires of `key`'s limit ended with `outcome` (immediate, delayed, rejected). */
const acquisitions = (key: string, outcome: string) =>
  Effect.map(
    Metric.value(Metric.withAttributes(Metrics.rateLimitAcquisitions, { limit: key, outcome })),
    (s) => s.count
  )

const storeErrors = Effect.map(
  Metric.value(Metric.withAttributes(Metrics.storeErrors, { store: "ratelimit" })),
  (s) => s.count
)

// Redis Cluster's slot of a key: CRC16 (XMODEM) of its hash tag (the text between the first "{" and the
// first "}" after it, when not empty), else of the whole key, modulo 16384.
const keySlot = (key: string): number => {
  const open = key.indexOf("{")
  const close = open === -1 ? -1 : key.indexOf("}", open + 1)
  const hashed = close > open + 1 ? key.slice(open + 1, close) : key
  let crc = 0
  for (const byte of Buffer.from(hashed, "utf8")) {
    crc ^= byte << 8
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
  }
  return crc % 16384
}

const fixture = fileURLToPath(new URL("./fixtures/ratelimit-process.ts", import.meta.url))
const projectRoot = fileURLToPath(new URL("..", import.meta.url))

/** Runs the fixture in a child `node --import tsx` process; its one-line JSON answer. */
const otherProcess = (args: ReadonlyArray<string>) =>
  Effect.callback<{ readonly admitted: number; readonly refused: number }, Error>((resume) => {
    const child = spawn(process.execPath, ["--import", "tsx", fixture, ...args], {
      cwd: projectRoot,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    let err = ""
    child.stdout.on("data", (chunk: Buffer) => {
      out += chunk.toString()
    })
    child.stderr.on("data", (chunk: Buffer) => {
      err += chunk.toString()
    })
    child.once("error", (error) => resume(Effect.fail(error)))
    child.once("exit", (code) => {
      const line = out.trim().split("\n").pop() ?? ""
      if (code !== 0 || !line.startsWith("{")) {
        resume(Effect.fail(new Error(`child exited with ${code}: ${out}\n${err}`)))
      } else {
        resume(Effect.succeed(JSON.parse(line)))
      }
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

describe.skipIf(skipRedis)(`RateLimit (Redis store; ${skipRedis ? skipReason : "needs redis-server"})`, () => {
  it.live("fractional rates hold on Redis exactly as in memory (v0.1 let every call through)", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cases: ReadonlyArray<{
          readonly limits: RateLimit.Limits
          readonly calls: number
          readonly tokens?: number
          readonly admitted: number
        }> = [
          // window / limit = 2857.14 ms: v0.1's script answered "ERR value is not an integer" and failed open. (A
          // window of 2 s let a burst slowed by a loaded machine reach the next one, admitting more.)
          { limits: { requestsPerMinute: 7, window: "20 seconds" }, calls: 14, admitted: 7 },
          // 17.14 ms: effect's own Redis store rounds each admission up and refuses nearly all of these.
          { limits: { requestsPerMinute: 3500 }, calls: 3600, admitted: 3500 },
          { limits: { tokensPerMinute: 3000, window: "7 seconds" }, calls: 12, tokens: 300, admitted: 10 }
        ]
        for (const { admitted, calls, limits: keyLimits, tokens } of cases) {
          const key = uniqueName("fraction")
          const options = { providers: { [key]: keyLimits }, maxWait: 0 }
          const { limits } = yield* build(server, { ...options, prefix: `${uniqueName("p")}:` })
          const inRedis = yield* burst(limits, key, calls, tokens)
          const inMemory = yield* burst(yield* memory(options), key, calls, tokens)
          assert.strictEqual(inRedis.admitted, admitted, JSON.stringify(keyLimits))
          assert.strictEqual(inMemory.admitted, admitted, JSON.stringify(keyLimits))
          for (const error of inRedis.errors) {
            assert.strictEqual(error.reason, "RateLimited")
            const retryAfter = Duration.toMillis(error.retryAfter!)
            assert.isTrue(
              retryAfter > 0 &&
                retryAfter <= Duration.toMillis(Duration.fromInputUnsafe(keyLimits.window ?? "1 minute"))
            )
          }
        }
      })
    )
  )

  it.live("tokens per window on Redis: a call straddling a window boundary is charged in the window it runs in", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const key = uniqueName("straddle")
        const { limits } = yield* build(server, {
          // 3 s: the second call must be asked for before the first's window ends (1 s was close on a loaded machine).
          providers: { [key]: { tokensPerMinute: 100, window: "3 seconds" } },
          maxWait: "10 seconds"
        })
        // One after the other: 60 tokens fit once in a 100-token window, so only the first goes
        // at once. The third went at once too when the second left 40 of its tokens counted in
        // the window before the one it ran in (120 tokens in one window).
        for (let i = 0; i < 3; i++) yield* limits.acquire(key, { tokens: 60 })
        assert.strictEqual(yield* acquisitions(key, "immediate"), 1)
        assert.strictEqual(yield* acquisitions(key, "delayed"), 2)
      })
    )
  )

  it.live("tokens per window on Redis hold under concurrent calls: no two 60-token calls in one 100-token window", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const key = uniqueName("straddle-concurrent")
        const { limits } = yield* build(server, {
          providers: { [key]: { tokensPerMinute: 100, window: "4 seconds" } },
          maxWait: "40 seconds"
        })
        // Each call's window told from when it resumed: windows of 4 s leave a resume delayed by a loaded machine
        // 2 s before it reads as the next window (2 s windows left 1 s, 500 ms windows 250, 200 ms windows 100: flaky
        // on a shared machine). The sixth call waits five windows: maxWait 40 s.
        const windows: Array<number> = []
        let start: number | undefined
        yield* Effect.forEach(
          Array.from({ length: 6 }),
          () =>
            Effect.flatMap(limits.acquire(key, { tokens: 60 }), () =>
              Effect.sync(() => {
                const now = performance.now()
                start ??= now
                windows.push(Math.round((now - start) / 4000))
              })
            ),
          { concurrency: "unbounded" }
        )
        // Each call goes at the start of a window of its own. Two went in one window when another
        // call's tokens landed between the two parts of a straddling call (two round trips).
        windows.sort((a, b) => a - b)
        assert.deepStrictEqual(windows, [...new Set(windows)], `windows of the calls: ${windows.join(", ")}`)
      })
    )
  )

  it.live("a window on Redis lasts its whole length however little was used (requests and tokens)", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const requests = uniqueName("window-requests")
        const tokens = uniqueName("window-tokens")
        const { limits } = yield* build(server, {
          providers: {
            [requests]: { requestsPerMinute: 100, window: "10 seconds" },
            [tokens]: { tokensPerMinute: 100, window: "10 seconds" }
          },
          maxWait: "20 seconds"
        })
        assert.strictEqual((yield* burst(limits, requests, 60)).admitted, 60)
        yield* limits.acquire(tokens, { tokens: 60 })
        // Redis's clock (TIME) moves on its own: past 60% of the window (6 s), 3.7 s before its end (a 2 s window
        // left a loaded machine 500 ms for the bursts around this sleep, a 4 s one a second, a 6 s one 2.2 s).
        yield* Effect.sleep("6300 millis")
        assert.strictEqual((yield* burst(limits, requests, 40)).admitted, 40)
        assert.strictEqual(yield* acquisitions(requests, "immediate"), 100)
        const started = performance.now()
        // Both at once: asked after the first's wait, the second could find its window ended.
        yield* Effect.all([limits.acquire(requests), limits.acquire(tokens, { tokens: 60 })], { concurrency: 2 })
        const waited = performance.now() - started
        // Both went at once when the window ended after the share of it its calls had used: 120 in one window.
        assert.strictEqual(yield* acquisitions(requests, "delayed"), 1)
        assert.strictEqual(yield* acquisitions(tokens, "delayed"), 1)
        // The next window starts about 3.7 s on, the one after it 13.7 s on: 8.5 s tells them apart with 4.8 s to
        // spare for a loaded machine (a bound between two windows, not a measure of the wait).
        assert.isTrue(waited < 8500, `they went at the next window, after ${waited} ms`)
      })
    )
  )

  it.live("on Redis a call refused for its wait gives its tokens back to its own window", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const key = uniqueName("give-back")
        const { limits } = yield* build(server, { providers: { [key]: { tokensPerMinute: 100 } }, maxWait: 0 })
        yield* limits.acquire(key, { tokens: 50 })
        assert.strictEqual((yield* Effect.flip(limits.acquire(key, { tokens: 60 }))).reason, "RateLimited")
        // The refused call took the next window and gave it back: the rest of this one is still free.
        yield* limits.acquire(key, { tokens: 50 })
        assert.strictEqual((yield* Effect.flip(limits.acquire(key, { tokens: 1 }))).reason, "RateLimited")
        assert.strictEqual(yield* acquisitions(key, "immediate"), 2)
      })
    )
  )

  it.live("the Redis store's windows make the memory store's decisions: places, give-backs, the tail moving back", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const context = yield* Layer.build(Redis.layer({ url: server.url, ...healthyClient }))
        const redisStore = yield* RateLimitRedis.makeStore({ prefix: `${uniqueName("p")}:` }).pipe(
          Effect.provide(context)
        )
        const memoryStore = withAlignedFixedWindow(
          Context.get(yield* Layer.build(RateLimiter.layerStoreMemory), RateLimiter.RateLimiterStore)
        )
        // Each operation's window index (or "-" for a give-back), with 2 per minute and 100 tokens per minute.
        const run = (store: RateLimitRedis.AlignedFixedWindow) =>
          placements(store, ({ place, giveBack }) =>
            Effect.gen(function* () {
              const steps: Array<string> = []
              for (let i = 0; i < 5; i++) steps.push(yield* place("r", 1, 2))
              steps.push(yield* giveBack("r", 1, 2), yield* place("r", 1, 2), yield* place("r", 1, 2))
              steps.push(yield* place("t", 50, 100), yield* place("t", 60, 100), yield* giveBack("t", 60, 8))
              steps.push(yield* place("t", 50, 100), yield* place("t", 1, 100), yield* place("t", 100, 100))
              return steps
            })
          )
        const inRedis = yield* run(redisStore)
        assert.deepStrictEqual(inRedis, yield* run(memoryStore))
        assert.deepStrictEqual(inRedis, [
          ...["0@0", "0@0", "1@1", "1@1", "2@2"],
          ...["-", "1@1", "2@2"],
          ...["0@0", "1@1", "-", "0@0", "1@1", "2@2"]
        ])
      })
    )
  )

  it.live("callers beyond the window wait for it, as in memory: 14 calls at 7 per 4 seconds", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const key = uniqueName("wait")
        const { limits } = yield* build(server, {
          providers: { [key]: { requestsPerMinute: 7, window: "4 seconds" } },
          maxWait: "10 seconds"
        })
        const result = yield* burst(limits, key, 14)
        assert.strictEqual(result.admitted, 14)
        assert.strictEqual(yield* acquisitions(key, "immediate"), 7)
        assert.strictEqual(yield* acquisitions(key, "delayed"), 7)
        const wait = yield* Metric.value(Metric.withAttributes(Metrics.rateLimitWait, { limit: key }))
        // The burst is placed within 2 s (4 s windows: a loaded machine's slow burst left 2 s windows below 1 s).
        assert.isTrue(wait.max > 2000 && wait.max <= 4000, `the 8th call waited for the next window: ${wait.max} ms`)
      })
    )
  )

  it("Redis Cluster's slot rule: a key's hash tag alone decides its slot", () => {
    assert.strictEqual(keySlot("123456789"), 12739, "the CRC16 of Redis Cluster's specification")
    assert.strictEqual(keySlot("{user1000}.following"), keySlot("user1000"))
  })

  it.live("the keys one script touches share a hash tag, so they hash to one Redis Cluster slot", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const windowed = uniqueName("slot-window")
        const bucket = uniqueName("slot-bucket")
        const prefix = `${uniqueName("p")}:`
        const { limits, redis } = yield* build(server, {
          prefix,
          providers: {
            [windowed]: { requestsPerMinute: 5, tokensPerMinute: 100 },
            [bucket]: { requestsPerMinute: 5, algorithm: "token-bucket" }
          },
          maxWait: 0,
          // Failing closed, each reservation records what it took under a key of its own, in the same script.
          onStoreError: "reject"
        })
        yield* limits.acquire(windowed, { tokens: 10 })
        yield* limits.acquire(bucket)
        const keys = ((yield* redis.send("KEYS", `${prefix}*`)) as ReadonlyArray<string>).slice().sort()
        assert.deepStrictEqual(
          keys.map((k) => k.replace(/:r:.*$/, ":r:<id>")),
          [
            `${prefix}{${bucket}%3Arpm}:bucket`,
            `${prefix}{${bucket}%3Arpm}:bucket:r:<id>`,
            `${prefix}{${windowed}%3Arpm}:window`,
            `${prefix}{${windowed}%3Arpm}:window:r:<id>`,
            `${prefix}{${windowed}%3Atpm}:window`,
            `${prefix}{${windowed}%3Atpm}:window:r:<id>`
          ].sort()
        )
        for (const key of keys) {
          const state = key.replace(/:r:.*$/, "")
          assert.strictEqual(keySlot(key), keySlot(state), `${key} and ${state} in one slot`)
        }
      })
    )
  )

  it.live("keys holding braces still share one hash tag with their records: one Redis Cluster slot", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const prefix = `${uniqueName("p")}:`
        // "}x" closed the hash tag at once: "{}" is no tag, so the state and its record hashed whole,
        // to two slots (CROSSSLOT on a cluster: every call a store error).
        const keys = ["}x", "{y", "a}b", "{}", "}"]
        const { limits, redis } = yield* build(server, {
          prefix,
          default: { requestsPerMinute: 5, tokensPerMinute: 100 },
          maxWait: 0,
          onStoreError: "reject"
        })
        for (const key of keys) yield* limits.acquire(key, { tokens: 10 })
        const stored = (yield* redis.send("KEYS", `${prefix}*`)) as ReadonlyArray<string>
        assert.strictEqual(stored.length, keys.length * 4)
        for (const key of stored) {
          const state = key.replace(/:r:.*$/, "")
          assert.strictEqual(keySlot(key), keySlot(state), `${key} and ${state} in one slot`)
        }
        // Each key is its own: one request left of five after four more.
        for (const key of keys) {
          for (let i = 0; i < 4; i++) yield* limits.acquire(key)
          assert.strictEqual((yield* Effect.flip(limits.acquire(key))).reason, "RateLimited", key)
        }
      })
    )
  )

  it.live("a Redis error fails open with a warning that shows the Redis error text; onStoreError reject refuses", () =>
    Effect.gen(function* () {
      const logs = yield* captureLogs
      yield* Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const key = uniqueName("wrongtype")
          const prefix = `${uniqueName("p")}:`
          const options: RateLimit.RedisOptions = {
            prefix,
            providers: { [key]: { requestsPerMinute: 1 } },
            maxWait: 0,
            redis: { reportAfter: 0 }
          }
          const { limits, redis } = yield* build(server, options)
          // The key's state is a hash; a string under its name makes every script call fail.
          yield* redis.send("SET", `${prefix}{${key}%3Arpm}:window`, "not a hash")
          const before = yield* storeErrors
          const result = yield* burst(limits, key, 3)
          assert.strictEqual(result.admitted, 3, "fail open: the calls go through")
          assert.strictEqual((yield* storeErrors) - before, 3)
          const warnings = logs.lines.filter((l) => l.startsWith("Warn"))
          assert.strictEqual(warnings.length, 1, JSON.stringify(logs.lines))
          assert.include(warnings[0], "WRONGTYPE")

          const closed = yield* build(server, {
            ...options,
            onStoreError: "reject",
            redis: { reportAfter: "1 minute" }
          })
          const refused = yield* burst(closed.limits, key, 2)
          assert.strictEqual(refused.admitted, 0)
          assert.strictEqual(refused.errors[0]?.reason, "RateLimited")
          // Try again once Redis is probed again (probeInterval, default 1 second).
          assert.deepStrictEqual(refused.errors[0]?.retryAfter, Duration.seconds(1))
          const probed = yield* build(server, {
            ...options,
            onStoreError: "reject",
            redis: { reportAfter: "1 minute", probeInterval: "3 seconds" }
          })
          assert.deepStrictEqual((yield* burst(probed.limits, key, 1)).errors[0]?.retryAfter, Duration.seconds(3))
        })
      ).pipe(Effect.provide(logs.layer))
    })
  )

  it.live("orchestra_store_errors_total leaves the registry with the store's layer, as every other series does", () =>
    Effect.gen(function* () {
      const registry: Metric.MetricRegistry = new Map()
      const storeSeries = () =>
        [...registry.values()].filter((m) => m.id === Metrics.storeErrors.id).map((m) => m.hooks.get(Context.empty()))
      const logs = yield* captureLogs
      yield* Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const key = uniqueName("leaves")
          const prefix = `${uniqueName("p")}:`
          yield* Effect.scoped(
            Effect.gen(function* () {
              const { limits, redis } = yield* build(server, {
                prefix,
                providers: { [key]: { requestsPerMinute: 1 } },
                maxWait: 0
              })
              yield* redis.send("SET", `${prefix}{${key}%3Arpm}:window`, "not a hash")
              assert.strictEqual((yield* burst(limits, key, 2)).admitted, 2, "fail open")
              assert.deepStrictEqual(storeSeries(), [{ count: 2, incremental: true }])
            })
          )
          assert.deepStrictEqual(storeSeries(), [], "closing the store's layer removes its series")
        })
      ).pipe(Effect.provide(logs.layer), Effect.provideService(Metric.MetricRegistry, registry))
    })
  )

  it.live("Redis killed: calls fail open without waiting, one warning; restarted: limits apply again", () =>
    Effect.gen(function* () {
      const logs = yield* captureLogs
      yield* Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const key = uniqueName("down")
          const { limits, redis } = yield* build(server, {
            providers: { [key]: { requestsPerMinute: 1 } },
            maxWait: 0,
            redis: { reportAfter: 0, probeInterval: "100 millis" }
          })
          assert.strictEqual((yield* burst(limits, key, 2)).admitted, 1)
          // The refused call's give-back runs in the background: answered before this PING, sent after it.
          yield* redis.send("PING")
          yield* server.kill
          const before = yield* storeErrors
          // Nothing may wait on the dead Redis: 50 calls finish long before this bound.
          const during = yield* burst(limits, key, 50).pipe(Effect.timeout("10 seconds"))
          assert.strictEqual(during.admitted, 50)
          assert.strictEqual((yield* storeErrors) - before, 50)
          assert.strictEqual(logs.lines.filter((l) => l.startsWith("Warn")).length, 1, JSON.stringify(logs.lines))

          yield* server.start
          // The client reconnects in the background; a probe finds Redis back and the limit holds again.
          yield* Effect.suspend(() => burst(limits, key, 1)).pipe(
            Effect.flatMap((r) => (r.errors[0]?.reason === "RateLimited" ? Effect.void : Effect.fail("not yet"))),
            Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: "15 seconds" })))
          )
          assert.isTrue(
            logs.lines.some((l) => l.startsWith("Info") && l.includes("is back")),
            JSON.stringify(logs.lines)
          )
        })
      ).pipe(Effect.provide(logs.layer))
    })
  )

  // The guard's deadline is TestClock's (the client's a day), so the healthy Redis never misses it: the first call is
  // seen waiting until the clock passes it, and the later ones end with no time passing (real time between polls is
  // a bound, not a measure).
  it.effect("Redis hung: each call is bounded by redis.timeout, then calls skip Redis while it is reported down", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const key = uniqueName("hung")
        const context = yield* Layer.build(
          RateLimit.layerRedis({
            providers: { [key]: { requestsPerMinute: 1 } },
            maxWait: 0,
            redis: { timeout: "200 millis", reportAfter: 0, probeInterval: "1 minute" }
          }).pipe(Layer.provide(Redis.layer({ url: server.url, commandTimeout: "1 day" })))
        )
        const limits = Context.get(context, RateLimit.RateLimits)
        yield* limits.acquire(key)
        yield* server.pause
        yield* Effect.addFinalizer(() => server.resume)
        const before = yield* storeErrors
        const ended = (fiber: Fiber.Fiber<unknown, unknown>) =>
          Effect.gen(function* () {
            for (let i = 0; i < 100 && fiber.pollUnsafe() === undefined; i++) {
              yield* TestClock.withLive(Effect.sleep("10 millis"))
            }
            return fiber.pollUnsafe() !== undefined
          })
        const first = yield* Effect.forkChild(Effect.exit(limits.acquire(key)), { startImmediately: true })
        assert.isFalse(yield* ended(first), "the first call waits for redis.timeout")
        yield* TestClock.adjust("200 millis")
        assert.isTrue(Exit.isSuccess(yield* Fiber.join(first)), "fail open after the deadline")
        const rest = yield* Effect.forkChild(burst(limits, key, 20), { startImmediately: true })
        assert.isTrue(yield* ended(rest), "a call waited on the hung Redis reported down")
        assert.strictEqual((yield* Fiber.join(rest)).admitted, 20)
        yield* server.resume
        assert.strictEqual((yield* storeErrors) - before, 21)
      })
    )
  )

  it.live(
    "Redis hung, default settings: the client's own command deadline ends each call, and the outage is reported once",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const key = uniqueName("hung-default")
            const { limits } = yield* build(
              server,
              { providers: { [key]: { requestsPerMinute: 1 } }, maxWait: 0 },
              "default"
            )
            yield* limits.acquire(key)
            yield* server.pause
            const before = yield* storeErrors
            // 500 ms each until failures have lasted a second, then skipped: a bound, not a timing assertion.
            const results = yield* burst(limits, key, 1).pipe(Effect.repeat({ times: 4 }), Effect.timeout("20 seconds"))
            yield* server.resume
            assert.strictEqual(results.admitted, 1)
            assert.isTrue((yield* storeErrors) - before >= 5)
            const warnings = logs.lines.filter((l) => l.startsWith("Warn"))
            assert.strictEqual(warnings.length, 1, JSON.stringify(logs.lines))
            assert.include(warnings[0], "timed out")
          })
        ).pipe(Effect.provide(logs.layer))
      })
  )

  // Windows of 10 minutes: a child process starts in tens of seconds on a loaded machine, and a window of a minute
  // could end before it made its calls (the limit then held twice).
  it.live(
    "two processes sharing one Redis: the limit holds in total",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const key = uniqueName("shared")
          const prefix = `${uniqueName("p")}:`
          const window = "10 minutes"
          const { limits } = yield* build(server, {
            prefix,
            providers: { [key]: { requestsPerMinute: 5, window } },
            maxWait: 0
          })
          assert.strictEqual((yield* burst(limits, key, 3)).admitted, 3)
          const child = yield* otherProcess([server.url, prefix, key, "5", "10", window])
          assert.deepStrictEqual(child, { admitted: 2, refused: 8 }, "the other process got what was left")
          assert.strictEqual((yield* burst(limits, key, 5)).admitted, 0)

          // Both at once: 40 calls against a limit of 15, shared.
          const both = uniqueName("both")
          const shared = yield* build(server, {
            prefix,
            providers: { [both]: { requestsPerMinute: 15, window } },
            maxWait: 0
          })
          const [mine, theirs] = yield* Effect.all(
            [burst(shared.limits, both, 20), otherProcess([server.url, prefix, both, "15", "20", window])],
            {
              concurrency: 2
            }
          )
          assert.strictEqual(mine.admitted + theirs.admitted, 15)
          // Another prefix has its own counters.
          const other = yield* build(server, {
            prefix: `${prefix}other:`,
            providers: { [key]: { requestsPerMinute: 5 } },
            maxWait: 0
          })
          assert.strictEqual((yield* burst(other.limits, key, 5)).admitted, 5)
        })
      ),
    // Each child process starts tsx: tens of seconds on a loaded machine.
    120_000
  )

  it.live("Redis.layerConfig takes a redacted URL; a password in it reaches no error, log or rendering", () =>
    Effect.gen(function* () {
      const logs = yield* captureLogs
      const secret = "s3cr3t-pa55word"
      yield* Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          // Redis without a password accepts AUTH-less clients; the URL's password is still sent and refused.
          const config = (url: string) =>
            Redis.layerConfig({ url: Config.Redacted("REDIS_URL") }).pipe(
              Layer.provide(ConfigProvider.layer(ConfigProvider.fromUnknown({ REDIS_URL: url })))
            )
          const ok = yield* Effect.exit(Layer.build(config(server.url)))
          assert.isTrue(Exit.isSuccess(ok), "a URL from configuration connects")
          for (const url of [
            `redis://user:${secret}@127.0.0.1:1`,
            `redis://user:${secret}@${server.url.slice(8)}`,
            `http://user:${secret}@x`
          ]) {
            const exit = yield* Effect.exit(Layer.build(config(url)))
            assert.isTrue(Exit.isFailure(exit), url)
            if (Exit.isFailure(exit)) {
              const rendered = [
                Cause.pretty(exit.cause),
                JSON.stringify(exit.cause),
                String(Cause.squash(exit.cause)),
                inspect(exit.cause, { depth: 10 })
              ]
              for (const text of rendered) assert.notInclude(text, secret)
            }
          }
        })
      ).pipe(Effect.provide(logs.layer))
      for (const line of logs.lines) assert.notInclude(line, secret)
    })
  )

  it.live("invalid Redis options fail the layer with an OptionError naming the field", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cases: ReadonlyArray<readonly [RateLimit.RedisOptions, string]> = [
          [{ redis: { timeout: Number.NaN } }, "redis.timeout"],
          [{ redis: { timeout: 0 } }, "redis.timeout"],
          [{ redis: { probeInterval: -1 } }, "redis.probeInterval"],
          [{ onStoreError: "ignore" as "allow" }, "onStoreError"],
          [{ storeTimeout: "1 second" } as RateLimit.RedisOptions, "storeTimeout"],
          [{ default: { requestsPerMinute: 1, window: 0 } }, "default.window"],
          // null is a wrong value, not the default; a prefix that is not a string would be written into every key.
          [{ prefix: null as never }, "prefix"],
          [{ prefix: 5 as never }, "prefix"],
          // Part of every Redis key and sent with every call, bounded as the key store's and the breakers'.
          [{ prefix: "p".repeat(101) }, "prefix"],
          [{ prefix: "" }, "prefix"],
          // A misspelt guard option was ignored (the default 500 ms deadline applied); null threw a TypeError.
          [{ redis: { timout: "100 millis" } as Redis.GuardOptions }, "redis.timout"],
          [{ redis: null as never }, "redis"],
          [{ redis: "fast" as never }, "redis"]
        ]
        for (const [options, path] of cases) {
          const exit = yield* Effect.exit(build(server, options))
          const error = Exit.findErrorOption(exit)
          assert.isTrue(error._tag === "Some" && error.value._tag === "OptionError", JSON.stringify(options))
          if (error._tag === "Some" && error.value._tag === "OptionError") assert.strictEqual(error.value.path, path)
        }
        const badUrl = yield* Effect.exit(Layer.build(Redis.layer({ url: "http://localhost" })))
        const urlError = Exit.findErrorOption(badUrl)
        assert.isTrue(urlError._tag === "Some" && urlError.value._tag === "OptionError")
      })
    )
  )

  it.live("durations bound for a Node timer or Redis are refused above what those take; the longest still work", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const refusal = <A, E, R>(layer: Layer.Layer<A, E, R>) =>
          Effect.map(Effect.exit(Layer.build(layer)), (exit) => {
            const error = Exit.findErrorOption(exit)
            return error._tag === "Some" && error.value instanceof Input.OptionError
              ? error.value.message
              : `built: ${exit._tag}`
          })
        const timer = "at most 2147483647 ms (about 24.9 days)"
        // Above 2^32-1 ms node-redis's AbortSignal.timeout threw on every command (a store that
        // fails open then let every call through); above 2^31-1 ms its timers overflow.
        assert.strictEqual(
          yield* refusal(Redis.layer({ url: server.url, commandTimeout: "50 days" })),
          `invalid commandTimeout: expected ${timer}, got "50 days"`
        )
        assert.strictEqual(
          yield* refusal(Redis.layer({ url: server.url, connectTimeout: "30 days" })),
          `invalid connectTimeout: expected ${timer}, got "30 days"`
        )
        assert.strictEqual(
          yield* refusal(Redis.layer({ url: server.url, reconnectMax: 1e308 })),
          `invalid reconnectMax: expected ${timer}, got 1e+308`
        )
        assert.strictEqual(
          yield* refusal(
            RateLimit.layerRedis({ default: { requestsPerMinute: 1, window: 1e308 } }).pipe(
              Layer.provide(Redis.layer({ url: server.url }))
            )
          ),
          "invalid default.window: expected at most 1125899906842624 ms (about 35,678 years), got 1e+308"
        )
        // The longest accepted: every command still answers, and a window of 2^50 ms still limits.
        const key = uniqueName("longest")
        const context = yield* Layer.build(
          RateLimit.layerRedis({
            providers: { [key]: { requestsPerMinute: 1, window: 2 ** 50 } },
            maxWait: 0,
            // A healthy Redis on a loaded machine could miss the default 500 ms: the call went through (fail open).
            redis: { timeout: healthyDeadline }
          }).pipe(
            Layer.provideMerge(
              Redis.layer({ url: server.url, commandTimeout: 2 ** 31 - 1, connectTimeout: 2 ** 31 - 1 })
            )
          )
        )
        const errorsBefore = yield* storeErrors
        const { admitted, errors } = yield* burst(Context.get(context, RateLimit.RateLimits), key, 3)
        assert.strictEqual(admitted, 1)
        assert.deepStrictEqual(
          errors.map((e) => e.reason),
          ["RateLimited", "RateLimited"]
        )
        assert.strictEqual(yield* storeErrors, errorsBefore)
      })
    )
  )

  it.live("keys under default holding lone surrogates, %, : or } are distinct keys on Redis, as in memory", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        // In a Redis command each lone surrogate is U+FFFD: these four were one key, one limit for all.
        // And the escapes' own text: each key keeps a limit of its own.
        const keys = ["u-\uD800", "u-\uD801", "u-\uDC00", "u-\uFFFD", "u-%uD800", "u-:", "u-%3A", "u-}", "u-%7D", "u"]
        const options = { default: { requestsPerMinute: 1 }, maxWait: 0 }
        const { limits } = yield* build(server, { ...options, prefix: `${uniqueName("p")}:` })
        for (const key of keys) {
          const { admitted } = yield* burst(limits, key, 2)
          assert.strictEqual(admitted, 1, JSON.stringify(key))
        }
      })
    )
  )
})
