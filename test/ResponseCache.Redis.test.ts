import { monitorEventLoopDelay } from "node:perf_hooks"
import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  Context,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Metric,
  Option,
  Ref,
  Schedule,
  Scope
} from "effect"
import { Redis as PersistenceRedis } from "effect/persistence"
import { TestClock } from "effect/testing"
import { type AiError, modelError } from "../src/AiError.js"
import * as Metrics from "../src/Metrics.js"
import type { GenerateResponse, StreamPart } from "../src/Model.js"
import * as Redis from "../src/Redis.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as RedisCache from "../src/ResponseCache/Redis.js"
import { type RedisServer, skipRedis, skipReason, startRedis } from "./utils/redis.js"
import { captureLogs } from "./utils/logs.js"

let counter = 0
const uniqueName = (label: string) => `rcr-${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

const response = (text: string): GenerateResponse => ({
  text,
  finishReason: "stop",
  usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
  provider: "scripted",
  model: "m"
})

/** A client of its own to look inside the server (a minute per command: a healthy Redis on a loaded machine meets it). */
const admin = (server: RedisServer) =>
  Effect.map(
    Layer.build(Redis.layer({ url: server.url, commandTimeout: "1 minute" })),
    Context.get(PersistenceRedis.Redis)
  )

/**
 * The cache, built in the test's scope, with its own name and prefix. Its deadlines are generous (the client's a
 * day, the guard's `redis.timeout` a minute unless the test gives one): a healthy Redis on a loaded machine meets
 * them, where the defaults (500 ms each) cut a command that merely waited for a core. A test about the client's
 * deadline gives `commandTimeout`.
 */
const build = (server: RedisServer, options: RedisCache.Options = {}, commandTimeout: Duration.Input = "1 day") =>
  Effect.gen(function* () {
    const name = options.name ?? uniqueName("cache")
    const redis = { timeout: "1 minute", ...options.redis } satisfies RedisCache.Options["redis"]
    const context = yield* Layer.build(
      RedisCache.layerRedis({ prefix: name, ...options, name, redis }).pipe(
        Layer.provide(Redis.layer({ url: server.url, commandTimeout }))
      )
    )
    return Context.get(context, ResponseCache.ResponseCache)
  })

/**
 * The cache with the client's deadline a day: the guard's deadline (`redis.timeout`) is then the only one, and under
 * `it.effect` it is TestClock's, so a healthy Redis on a loaded machine never misses it.
 */
const buildOnTestClock = (server: RedisServer, options: RedisCache.Options = {}) =>
  Effect.gen(function* () {
    const name = options.name ?? uniqueName("cache")
    const context = yield* Layer.build(
      RedisCache.layerRedis({ prefix: name, ...options, name }).pipe(
        Layer.provide(Redis.layer({ url: server.url, commandTimeout: "1 day" }))
      )
    )
    return Context.get(context, ResponseCache.ResponseCache)
  })

/**
 * The cache as {@link buildOnTestClock} builds it, and how many of its reads Redis has answered (its script calls,
 * counted as each reply reaches the cache).
 */
const buildCountingReads = (server: RedisServer, options: RedisCache.Options = {}) =>
  Effect.gen(function* () {
    const name = options.name ?? uniqueName("cache")
    let replies = 0
    const client = yield* Layer.build(Redis.layer({ url: server.url, commandTimeout: "1 day" }))
    const redis = Context.get(client, PersistenceRedis.Redis)
    const counting: PersistenceRedis.Redis["Service"] = {
      ...redis,
      eval: (script) => {
        const run = redis.eval(script)
        return (...args) =>
          Effect.tap(
            run(...args),
            Effect.sync(() => {
              replies++
            })
          )
      }
    }
    const context = yield* Layer.build(
      RedisCache.layerRedis({ prefix: name, ...options, name }).pipe(
        Layer.provide(Layer.succeedContext(Context.add(client, PersistenceRedis.Redis, counting)))
      )
    )
    return { cache: Context.get(context, ResponseCache.ResponseCache), reads: () => replies }
  })

/** Moves TestClock on until `fiber` ends (real time between steps for Redis's replies: a bound, not a measure). */
const settle = <A, E>(fiber: Fiber.Fiber<A, E>, step: Duration.Input = "100 millis") =>
  Effect.gen(function* () {
    for (let i = 0; i < 500 && fiber.pollUnsafe() === undefined; i++) {
      yield* TestClock.adjust(step)
      yield* TestClock.withLive(Effect.sleep("5 millis"))
    }
    return yield* Fiber.join(fiber)
  })

/** Whether `effect` ends with no time passing: forked, given one turn, then polled. */
const endsAtOnce = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.gen(function* () {
    const fiber = yield* Effect.forkChild(effect, { startImmediately: true })
    yield* Effect.yieldNow
    const ended = fiber.pollUnsafe() !== undefined
    return [ended, yield* settle(fiber)] as const
  })

const scripted = (latency: Duration.Input = "20 millis") =>
  Effect.gen(function* () {
    const calls = yield* Ref.make(0)
    const call = (text: string): Effect.Effect<GenerateResponse, AiError> =>
      Effect.flatMap(
        Ref.updateAndGet(calls, (n) => n + 1),
        (n) => Effect.as(Effect.sleep(latency), response(`${text} #${n}`))
      )
    return { call, calls: Ref.get(calls) }
  })

const errorsOf = (name: string) =>
  Effect.map(Metric.value(Metric.withAttributes(Metrics.cacheErrors, { cache: name })), (s) => s.count)

/**
 * Under `it.live`: until `n` values are counted as not stored (10 s at most: a bound, not a measure). A value is refused
 * where it would be written, so no write of it follows: what Redis holds then is final, where a fixed sleep of 100 ms
 * could end before a loaded machine counted it.
 */
const untilErrors = (name: string, n: number) =>
  Effect.gen(function* () {
    for (let i = 0; i < 1000 && (yield* errorsOf(name)) < n; i++) yield* Effect.sleep("10 millis")
  })

const ask = (
  cache: ResponseCache.Service,
  provider: { readonly call: (text: string) => Effect.Effect<GenerateResponse, AiError> },
  prompt: string
) => cache.getOrCompute(cache.key({ provider: "p", request: { prompt } }), provider.call(prompt))

describe.skipIf(skipRedis)(`ResponseCache.Redis (${skipRedis ? skipReason : "needs redis-server"})`, () => {
  it.live(
    "round trip: Schema-encoded values, expiry by PEXPIRE (ttl + staleFor), invalidate; an undecodable value is a counted miss",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const name = uniqueName("round")
          // A minute and 30 s: the PTTL read below is more than ttl on a loaded machine (2 s and 1 s left it a second).
          const cache = yield* build(server, { name, ttl: "1 minute", staleFor: "30 seconds" })
          const redis = yield* admin(server)
          yield* cache.setMany([{ key: "k", value: response("hello") }])
          assert.deepStrictEqual(yield* cache.getMany(["k"]), [Option.some(response("hello"))])
          const ttl = yield* redis.send<number>("PTTL", `${name}:r:k`)
          assert.isTrue(ttl > 60_000 && ttl <= 90_000, `PEXPIRE covers ttl + staleFor, got ${ttl}`)
          const raw = yield* redis.send<string>("GET", `${name}:r:k`)
          assert.strictEqual(JSON.parse(raw).value.response.text, "hello")
          yield* cache.invalidate("k")
          assert.deepStrictEqual(yield* cache.getMany(["k"]), [Option.none()])
          assert.strictEqual(yield* errorsOf(name), 0)
          // Another version wrote something else under a key: a miss, counted as an error.
          yield* redis.send("SET", `${name}:r:bad`, JSON.stringify({ value: { _tag: "Response" } }))
          assert.deepStrictEqual(yield* cache.getMany(["bad"]), [Option.none()])
          assert.strictEqual(yield* errorsOf(name), 1)
          // Not JSON at all: a miss counted alike.
          yield* redis.send("SET", `${name}:r:text`, "{not json")
          assert.deepStrictEqual(yield* cache.getMany(["text"]), [Option.none()])
          assert.strictEqual(yield* errorsOf(name), 2)
        })
      )
  )

  it.live("a valid entry of the other kind under a key (stream parts under an answer's) is a counted miss", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const name = uniqueName("kind")
        const cache = yield* build(server, { name })
        const redis = yield* admin(server)
        const far = Date.now() + 3_600_000
        const parts = JSON.stringify({ value: { _tag: "Stream", parts: [] }, freshUntil: far, staleUntil: far })
        yield* redis.send("SET", `${name}:r:k`, parts)
        assert.deepStrictEqual(yield* cache.getMany(["k"]), [Option.none()])
        assert.strictEqual(yield* errorsOf(name), 1)
        const computed = yield* cache.getOrCompute("k", Effect.succeed(response("computed")))
        assert.deepStrictEqual(computed, { value: response("computed"), source: "miss" })
        const answer = JSON.stringify({
          value: { _tag: "Response", response: response("a") },
          freshUntil: far,
          staleUntil: far
        })
        yield* redis.send("SET", `${name}:s:p`, answer)
        assert.deepStrictEqual(yield* cache.getParts("p"), Option.none())
      })
    )
  )

  it.live(
    "an entry that decodes but that no cache keeps (stream parts not a completed stream, an answer that finished in error) is a counted miss",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const name = uniqueName("unkept")
          const cache = yield* build(server, { name })
          const redis = yield* admin(server)
          const far = Date.now() + 3_600_000
          const entry = (value: unknown) => JSON.stringify({ value, freshUntil: far, staleUntil: far })
          const finish = { _tag: "Finish", finishReason: "stop", usage: response("").usage, provider: "p", model: "m" }
          yield* redis.send("SET", `${name}:s:empty`, entry({ _tag: "Stream", parts: [] }))
          yield* redis.send(
            "SET",
            `${name}:s:cut`,
            entry({ _tag: "Stream", parts: [{ _tag: "TextDelta", text: "hal" }] })
          )
          yield* redis.send(
            "SET",
            `${name}:s:twice`,
            entry({ _tag: "Stream", parts: [finish, { _tag: "TextDelta", text: "more" }, finish] })
          )
          yield* redis.send(
            "SET",
            `${name}:s:failed`,
            entry({ _tag: "Stream", parts: [{ ...finish, finishReason: "error" }] })
          )
          for (const key of ["empty", "cut", "twice", "failed"]) {
            assert.deepStrictEqual(yield* cache.getParts(key), Option.none(), key)
          }
          assert.strictEqual(yield* errorsOf(name), 4)
          yield* redis.send(
            "SET",
            `${name}:r:error`,
            entry({ _tag: "Response", response: { ...response("x"), finishReason: "error" } })
          )
          assert.deepStrictEqual(yield* cache.getMany(["error"]), [Option.none()])
          const computed = yield* cache.getOrCompute("error", Effect.succeed(response("computed")))
          assert.deepStrictEqual(computed, { value: response("computed"), source: "miss" })
          assert.strictEqual(yield* errorsOf(name), 6)
          // A complete stream written as this library writes it is still read.
          yield* redis.send(
            "SET",
            `${name}:s:whole`,
            entry({ _tag: "Stream", parts: [{ _tag: "TextDelta", text: "hi" }, finish] })
          )
          assert.isTrue(Option.isSome(yield* cache.getParts("whole")))
        })
      )
  )

  it.live("a value longer than maxValueBytes (in UTF-8 bytes) is not stored but counted; a shorter one is", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const name = uniqueName("large")
        const cache = yield* build(server, { name, maxValueBytes: 2000 })
        const redis = yield* admin(server)
        const oversized = Effect.map(
          Metric.value(Metric.withAttributes(Metrics.cacheOversized, { cache: name })),
          (s) => s.count
        )
        yield* cache.setMany([
          { key: "small", value: response("x".repeat(100)) },
          { key: "large", value: response("x".repeat(3000)) },
          // 1,000 characters but 2,000 bytes: the bound is on bytes.
          { key: "wide", value: response("é".repeat(1000)) }
        ])
        assert.deepStrictEqual((yield* cache.getMany(["small", "large", "wide"])).map(Option.isSome), [
          true,
          false,
          false
        ])
        assert.strictEqual(yield* redis.send<number>("EXISTS", `${name}:r:large`, `${name}:r:wide`), 0)
        assert.strictEqual(yield* oversized, 2)
        // Computed through getOrCompute: answered, not written.
        const computed = yield* cache.getOrCompute("big", Effect.succeed(response("y".repeat(3000))))
        assert.strictEqual(computed.source, "miss")
        yield* Effect.suspend(() => oversized).pipe(
          Effect.flatMap((n) => (n === 3 ? Effect.void : Effect.fail(`${n} oversized`))),
          Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
        )
        assert.strictEqual(yield* redis.send<number>("EXISTS", `${name}:r:big`), 0)
        assert.strictEqual(yield* errorsOf(name), 0)
      })
    )
  )

  it.live("a setMany of a value too long to store removes the key's value: the next lookup misses, as in memory", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const name = uniqueName("replaced")
        const cache = yield* build(server, { name, maxValueBytes: 2000 })
        const redis = yield* admin(server)
        yield* cache.setMany([
          { key: "a", value: response("old a") },
          { key: "b", value: response("old b") }
        ])
        assert.strictEqual(yield* redis.send<number>("EXISTS", `${name}:r:a`, `${name}:r:b`), 2)
        // The old value of a stayed in Redis and answered every lookup in place of the one set.
        yield* cache.setMany([
          { key: "a", value: response("x".repeat(3000)) },
          { key: "b", value: response("new b") }
        ])
        const [a, b] = yield* cache.getMany(["a", "b"])
        assert.isTrue(Option.isNone(a!))
        assert.strictEqual(Option.getOrThrow(b!).text, "new b")
        assert.strictEqual(yield* redis.send<number>("EXISTS", `${name}:r:a`), 0)
        // In one batch, the last value set under a key is the one that counts, as in memory.
        yield* cache.setMany([
          { key: "c", value: response("x".repeat(3000)) },
          { key: "c", value: response("last c") },
          { key: "d", value: response("first d") },
          { key: "d", value: response("x".repeat(3000)) }
        ])
        const [c, d] = yield* cache.getMany(["c", "d"])
        assert.strictEqual(Option.getOrThrow(c!).text, "last c")
        assert.isTrue(Option.isNone(d!))
        // Stream parts alike (written in the background).
        const oversized = Effect.map(
          Metric.value(Metric.withAttributes(Metrics.cacheOversized, { cache: name })),
          (s) => s.count
        )
        const { text: _, ...rest } = response("")
        const finish: StreamPart = { _tag: "Finish", ...rest }
        yield* cache.setParts("p", [{ _tag: "TextDelta", text: "old" }, finish])
        yield* Effect.suspend(() => redis.send<number>("EXISTS", `${name}:s:p`)).pipe(
          Effect.flatMap((n) => (n === 1 ? Effect.void : Effect.fail("not written yet"))),
          Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
        )
        const before = yield* oversized
        yield* cache.setParts("p", [{ _tag: "TextDelta", text: "y".repeat(3000) }, finish])
        yield* Effect.suspend(() => Effect.zip(redis.send<number>("EXISTS", `${name}:s:p`), oversized)).pipe(
          Effect.flatMap(([n, o]) => (n === 0 && o > before ? Effect.void : Effect.fail("not settled yet"))),
          Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
        )
        // The memory cache alike.
        const memory = yield* Effect.map(
          Layer.build(ResponseCache.layerMemory({ name: uniqueName("memory"), maxBytes: 2000 })),
          Context.get(ResponseCache.ResponseCache)
        )
        yield* memory.setMany([{ key: "a", value: response("old a") }])
        yield* memory.setMany([{ key: "a", value: response("x".repeat(3000)) }])
        assert.isTrue(Option.isNone((yield* memory.getMany(["a"]))[0]!))
      })
    )
  )

  it.live(
    "maxValueBytes bounds the value as documented (its JSON), not the entry around it: one of exactly it is stored",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const name = uniqueName("exact")
          const limit = 2000
          const cache = yield* build(server, { name, maxValueBytes: limit })
          const redis = yield* admin(server)
          const sized = (bytes: number) => {
            const shell = JSON.stringify(response("")).length
            return response("x".repeat(bytes - shell))
          }
          assert.strictEqual(JSON.stringify(sized(limit)).length, limit)
          yield* cache.setMany([
            { key: "exact", value: sized(limit) },
            { key: "over", value: sized(limit + 1) }
          ])
          assert.deepStrictEqual((yield* cache.getMany(["exact", "over"])).map(Option.isSome), [true, false])
          assert.strictEqual(yield* redis.send<number>("EXISTS", `${name}:r:exact`), 1)
          // Stream parts alike: their JSON, the array the caller gave.
          const { text: _, ...rest } = response("")
          const finish: StreamPart = { _tag: "Finish", ...rest }
          const partsOf = (bytes: number): ReadonlyArray<StreamPart> => {
            const shell = JSON.stringify([{ _tag: "TextDelta", text: "" }, finish]).length
            return [{ _tag: "TextDelta", text: "y".repeat(bytes - shell) }, finish]
          }
          assert.strictEqual(JSON.stringify(partsOf(limit)).length, limit)
          yield* cache.setParts("p-exact", partsOf(limit))
          yield* cache.setParts("p-over", partsOf(limit + 1))
          yield* Effect.suspend(() => redis.send<number>("EXISTS", `${name}:s:p-exact`)).pipe(
            Effect.flatMap((n) => (n === 1 ? Effect.void : Effect.fail("not written yet"))),
            Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
          )
          assert.strictEqual(yield* redis.send<number>("EXISTS", `${name}:s:p-over`), 0)
        })
      )
  )

  it.live(
    "an entry is written only if it can be read back: an origin too long for the entry around a value is not written, counted",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const prefix = uniqueName("origin")
            const name = uniqueName("writer")
            const writer = yield* build(server, { name, prefix, maxValueBytes: 2000 })
            const reader = yield* build(server, { name: uniqueName("reader"), prefix, maxValueBytes: 2000 })
            const redis = yield* admin(server)
            const oversized = Effect.map(
              Metric.value(Metric.withAttributes(Metrics.cacheOversized, { cache: name })),
              (s) => s.count
            )
            // A value just under maxValueBytes; the read allows 4 KiB more for the entry around it.
            const value = response("x".repeat(1800))
            const written = (key: string) =>
              Effect.suspend(() => Effect.zip(redis.send<number>("EXISTS", `${prefix}:r:${key}`), oversized)).pipe(
                Effect.flatMap(([exists, n]) => (exists + n > 0 ? Effect.void : Effect.fail("not written yet"))),
                Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
              )
            // An origin of 3,000 bytes fits: written, and another process reads it back.
            const fitting = { provider: "p".repeat(3000) }
            yield* writer.getOrCompute("fits", Effect.succeed(value), { originOf: () => fitting })
            yield* written("fits")
            assert.strictEqual(yield* oversized, 0)
            const hit = yield* reader.getOrCompute("fits", Effect.succeed(response("computed")))
            assert.strictEqual(hit.source, "hit")
            assert.isTrue(hit.value.text === value.text && hit.origin?.provider === fitting.provider)
            // One of 5,000 bytes does not: it was written and then missed by every lookup, blamed on another bound.
            const long = { provider: "p".repeat(5000) }
            const answered = yield* writer.getOrCompute("long", Effect.succeed(value), { originOf: () => long })
            assert.isTrue(answered.source === "miss" && answered.value.text === value.text)
            yield* written("long")
            assert.strictEqual(yield* redis.send<number>("EXISTS", `${prefix}:r:long`), 0)
            assert.strictEqual(yield* oversized, 1)
            const missed = yield* reader.getOrCompute("long", Effect.succeed(response("computed")))
            assert.strictEqual(missed.source, "miss")
            assert.deepStrictEqual(
              logs.lines.filter((l) => l.includes("written by a process with a larger bound")),
              []
            )
          })
        ).pipe(Effect.provide(logs.layer))
      })
  )

  it.live(
    "a value read back longer than maxValueBytes (another process's, a larger bound) is a miss, counted and said once, not a failure",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const prefix = uniqueName("read-bound")
            const writer = yield* build(server, { name: uniqueName("writer"), prefix, maxValueBytes: 100_000 })
            const name = uniqueName("reader")
            const reader = yield* build(server, { name, prefix, maxValueBytes: 2000 })
            const oversized = Effect.map(
              Metric.value(Metric.withAttributes(Metrics.cacheOversized, { cache: name })),
              (s) => s.count
            )
            const { text: _, ...rest } = response("")
            const finish: StreamPart = { _tag: "Finish", ...rest }
            yield* writer.setMany([
              { key: "large", value: response("x".repeat(50_000)) },
              { key: "small", value: response("s") }
            ])
            yield* writer.setParts("parts", [{ _tag: "TextDelta", text: "y".repeat(50_000) }, finish])
            yield* Effect.suspend(() => writer.getParts("parts")).pipe(
              Effect.flatMap((o) => (Option.isSome(o) ? Effect.void : Effect.fail("not written yet"))),
              Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
            )
            assert.deepStrictEqual((yield* reader.getMany(["large", "small"])).map(Option.isSome), [false, true])
            assert.deepStrictEqual(yield* reader.getParts("parts"), Option.none())
            const computed = yield* reader.getOrCompute("large", Effect.succeed(response("computed")))
            assert.deepStrictEqual(computed, { value: response("computed"), source: "miss" })
            assert.strictEqual(yield* oversized, 3)
            assert.strictEqual(yield* errorsOf(name), 0)
            const warnings = logs.lines.filter((l) => l.startsWith("Warn"))
            assert.strictEqual(warnings.length, 1, JSON.stringify(logs.lines))
            assert.include(warnings[0], "maxValueBytes")
          })
        ).pipe(Effect.provide(logs.layer))
      })
  )

  it.live(
    "maxBatchBytes bounds a batch: setMany over it is refused and stores none; getMany reads at most it, the rest misses",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const name = uniqueName("batch")
            const cache = yield* build(server, { name, maxValueBytes: 2000, maxBatchBytes: 5000 })
            const redis = yield* admin(server)
            const oversized = Effect.map(
              Metric.value(Metric.withAttributes(Metrics.cacheOversized, { cache: name })),
              (s) => s.count
            )
            // Values of exactly 1,000 bytes of JSON each.
            const sized = (key: string) => {
              const shell = JSON.stringify(response("")).length
              return { key, value: response(key.padEnd(1000 - shell, "x")) }
            }
            assert.strictEqual(JSON.stringify(sized("a").value).length, 1000)
            // Six values of 1,000 bytes (about 1,100 with the entry around each), each under maxValueBytes: one
            // call wrote them whole, and one getMany read them whole, whatever their number.
            const six = ["a", "b", "c", "d", "e", "f"].map(sized)
            const exit = yield* Effect.exit(cache.setMany(six))
            const error = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.findErrorOption(exit.cause)) : undefined
            const e = error as { readonly reason?: string; readonly field?: string; readonly message?: string }
            assert.strictEqual(`${e?.reason}/${e?.field}`, "InvalidRequest/entries", String(exit))
            assert.include(e.message, "maxBatchBytes (5000)")
            // Refused as a whole, before Redis: none stored.
            assert.deepStrictEqual(yield* redis.send<Array<string>>("KEYS", `${name}:*`), [])
            // Four fit, and are read back whole by one getMany.
            yield* cache.setMany(six.slice(0, 4))
            const strlen = yield* redis.send<number>("STRLEN", `${name}:r:a`)
            assert.isTrue(strlen > 1000 && strlen < 1250, `an entry of ${strlen} bytes`)
            assert.deepStrictEqual((yield* cache.getMany(["a", "b", "c", "d"])).map(Option.isSome), [
              true,
              true,
              true,
              true
            ])
            yield* cache.setMany(six.slice(4))
            assert.strictEqual(yield* oversized, 0)
            // Six in Redis (two calls): one getMany of all is sent at most the bound, the rest are misses.
            const found = yield* cache.getMany(["a", "b", "c", "d", "e", "f"])
            assert.deepStrictEqual(found.map(Option.isSome), [true, true, true, true, false, false])
            assert.strictEqual(yield* oversized, 2)
            // A getMany of one key reads it whatever the bound (one value is bounded by maxValueBytes).
            assert.deepStrictEqual((yield* cache.getMany(["f"])).map(Option.isSome), [true])
            // A bound of exactly maxValueBytes: one value of that size, in an entry a little longer, is taken.
            const tight = yield* build(server, {
              prefix: name,
              name: uniqueName("tight"),
              maxValueBytes: 1000,
              maxBatchBytes: 1000
            })
            yield* tight.setMany([sized("g")])
            assert.deepStrictEqual((yield* tight.getMany(["g"])).map(Option.isSome), [true])
            assert.strictEqual(yield* errorsOf(name), 0)
            yield* cache.getMany(["f", "a", "b", "c", "d", "e"])
            const warnings = logs.lines.filter((l) => l.startsWith("Warn"))
            assert.strictEqual(warnings.length, 1, JSON.stringify(logs.lines))
            assert.include(warnings[0], "maxBatchBytes")
          })
        ).pipe(Effect.provide(logs.layer))
      })
  )

  it.live("maxBatchBytes bounds the keys of a batch too: a getMany of more bytes of keys is refused naming keys", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const name = uniqueName("batch-keys")
        const cache = yield* build(server, { name, maxValueBytes: 1000, maxBatchBytes: 1000 })
        // 20 keys of 100 bytes: 2,000 bytes of command before any value (a million keys sent ~100 MB).
        const keys = Array.from({ length: 20 }, (_, i) => `${i}`.padEnd(100, "k"))
        const exit = yield* Effect.exit(cache.getMany(keys))
        const error = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.findErrorOption(exit.cause)) : undefined
        const e = error as { readonly reason?: string; readonly field?: string; readonly message?: string }
        assert.strictEqual(`${e?.reason}/${e?.field}`, "InvalidRequest/keys", String(exit))
        assert.include(e.message, "maxBatchBytes (1000)")
        // A setMany counts its keys with its entries.
        const entries = keys.slice(0, 8).map((key) => ({ key, value: response("v") }))
        const refused = yield* Effect.flip(cache.setMany(entries))
        assert.strictEqual(
          `${refused.reason}/${(refused as { readonly field?: string }).field}`,
          "InvalidRequest/entries"
        )
        // Fewer fit; one key alone is always read.
        assert.deepStrictEqual(
          yield* cache.getMany(keys.slice(0, 5)),
          keys.slice(0, 5).map(() => Option.none())
        )
        assert.deepStrictEqual(yield* cache.getMany(["x".repeat(2000)]), [Option.none()])
      })
    )
  )

  it.live(
    "an answer with a field JSON cannot encode (a bigint) reaches its caller; later computations are not failed",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const cache = yield* build(server)
          const odd = { ...response("odd"), raw: 10n } as unknown as GenerateResponse
          // The process table measured it for its byte bound and died, and so did every computation after it.
          const answered = yield* cache.getOrCompute("odd", Effect.succeed(odd))
          assert.strictEqual(answered.value, odd)
          for (const key of ["a", "b"]) {
            const next = yield* cache.getOrCompute(key, Effect.succeed(response(key)))
            assert.deepStrictEqual(next, { value: response(key), source: "miss" })
          }
        })
      )
  )

  it.live("the answers kept in the process while they are written hold at most 16 × maxValueBytes bytes", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server, {
          maxValueBytes: 1000,
          redis: { timeout: "1 second", reportAfter: 0, probeInterval: "1 minute" }
        })
        // Redis hung: every answer found later is one the process keeps.
        yield* server.pause
        yield* Effect.addFinalizer(() => server.resume)
        const keys = Array.from({ length: 40 }, (_, i) => `big-${i}`)
        // ~850 bytes each, under maxValueBytes: 40 of them are twice the bound of 16,000.
        for (const key of keys) {
          const computed = yield* cache.getOrCompute(key, Effect.succeed(response(`${key} ${"x".repeat(700)}`)))
          assert.strictEqual(computed.source, "miss")
        }
        const kept = (yield* cache.getMany(keys)).map(Option.isSome)
        const count = kept.filter((found) => found).length
        assert.isAtMost(count, Math.floor(16_000 / 800), `${count} answers of ~850 bytes kept`)
        assert.isTrue(kept[keys.length - 1], "the answer computed last is kept")
      })
    )
  )

  it.live("ttl and staleFor reach Redis's PX as whole milliseconds up to 2^50 each; longer ones are refused", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const refused = (options: RedisCache.Options) =>
          Effect.map(Effect.flip(build(server, options)), (error) => error.message)
        // 1e308 was taken, and every write's PEXPIRE failed silently: the entries never expired.
        assert.strictEqual(
          yield* refused({ ttl: 1e308 }),
          "invalid ttl: expected at most 1125899906842624 ms (about 35,678 years), got 1e+308"
        )
        assert.strictEqual(
          yield* refused({ staleFor: 2 ** 50 + 1 }),
          "invalid staleFor: expected at most 1125899906842624 ms (about 35,678 years), got 1125899906842625"
        )
        const name = uniqueName("longest")
        const cache = yield* build(server, { name, ttl: 2 ** 50, staleFor: 2 ** 50 })
        const redis = yield* admin(server)
        yield* cache.setMany([{ key: "k", value: response("x") }])
        const pttl = yield* redis.send<number>("PTTL", `${name}:r:k`)
        assert.isTrue(pttl > 2 ** 51 - 60_000 && pttl <= 2 ** 51, `PTTL ${pttl}`)
      })
    )
  )

  it.live("keys as documented: ':' and '%' in the prefix are escaped (%3A, %25)", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const name = uniqueName("prefix")
        const cache = yield* build(server, { name, prefix: `${name}:app%1` })
        const redis = yield* admin(server)
        yield* cache.setMany([{ key: "k", value: response("x") }])
        const keys = yield* redis.send<ReadonlyArray<string>>("KEYS", `${name}*`)
        assert.deepStrictEqual(keys, [`${name}%3Aapp%251:r:k`])
      })
    )
  )

  it.live("keys differing only in a lone surrogate (which UTF-8 writes as U+FFFD) do not share an entry", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const name = uniqueName("lone")
        const [high, low, replaced] = ["k\ud800", "k\udc00", "k\ufffd"]
        // Closing the layer waits for its writes in the background; then every lookup is Redis's alone.
        yield* Effect.scoped(
          Effect.gen(function* () {
            const cache = yield* build(server, { name })
            yield* cache.setMany([{ key: high, value: response("high") }])
            assert.deepStrictEqual(yield* cache.getMany([high, low, replaced]), [
              Option.some(response("high")),
              Option.none(),
              Option.none()
            ])
            const computed = yield* cache.getOrCompute(low, Effect.succeed(response("low")))
            assert.deepStrictEqual(computed, { value: response("low"), source: "miss" })
            const { text: _, ...rest } = response("r")
            yield* cache.setParts(replaced, [
              { _tag: "TextDelta", text: "r" },
              { _tag: "Finish", ...rest }
            ])
          })
        )
        const other = yield* build(server, { name })
        assert.deepStrictEqual(yield* other.getMany([high, low, replaced]), [
          Option.some(response("high")),
          Option.some(response("low")),
          Option.none()
        ])
        assert.isTrue(Option.isNone(yield* other.getParts(high)))
        assert.isTrue(Option.isSome(yield* other.getParts(replaced)))
        yield* other.invalidate(high)
        assert.deepStrictEqual(yield* other.getMany([high, low]), [Option.none(), Option.some(response("low"))])
        // A key starting with NUL (what a lone surrogate's key is written under begins with) stays its own.
        yield* other.setMany([{ key: '\u0000"k\\ud800"', value: response("nul") }])
        assert.deepStrictEqual(yield* other.getMany([high, '\u0000"k\\ud800"']), [
          Option.none(),
          Option.some(response("nul"))
        ])
      })
    )
  )

  it.live("batches: one script call for many lookups, one for many writes", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server)
        const redis = yield* admin(server)
        // Loads the scripts first so the counts below are the batch's own.
        yield* cache.setMany([{ key: "warm", value: response("w") }])
        yield* cache.getMany(["warm"])
        yield* redis.send("CONFIG", "RESETSTAT")
        yield* cache.setMany(Array.from({ length: 20 }, (_, i) => ({ key: `k${i}`, value: response(`v${i}`) })))
        const found = yield* cache.getMany(["k3", "nope", "k0", "k19"])
        assert.deepStrictEqual(
          found.map((o) => Option.map(o, (r) => r.text)),
          [Option.some("v3"), Option.none(), Option.some("v0"), Option.some("v19")]
        )
        const stats = yield* redis.send<string>("INFO", "commandstats")
        assert.match(stats, /cmdstat_evalsha:calls=2,/)
        assert.notMatch(stats, /cmdstat_eval:/)
      })
    )
  )

  it.live("single-flight per process; the answer is written after the callers have it, and the next caller hits", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server)
        const provider = yield* scripted("30 millis")
        const results = yield* Effect.all(
          Array.from({ length: 10 }, () => ask(cache, provider, "same")),
          { concurrency: "unbounded" }
        )
        assert.strictEqual(yield* provider.calls, 1)
        assert.deepStrictEqual(results.map((r) => r.source).sort(), ["miss", ...Array(9).fill("shared")].sort())
        // Right after, the write may be under way: the caller joins the finished computation or reads Redis.
        assert.include(["hit", "shared"], (yield* ask(cache, provider, "same")).source)
        const redis = yield* admin(server)
        const written = `${cache.name}:r:${cache.key({ provider: "p", request: { prompt: "same" } })}`
        yield* redis.send<number>("EXISTS", written).pipe(
          Effect.flatMap((n) => (n === 1 ? Effect.void : Effect.fail("not written yet"))),
          Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
        )
        const other = yield* build(server, { name: `${cache.name}-2`, prefix: cache.name })
        assert.strictEqual((yield* ask(other, provider, "same")).source, "hit")
        assert.strictEqual(yield* provider.calls, 1, "a second cache on the same prefix finds the answer in Redis")
      })
    )
  )

  it.live('an answer or a stream that finished in error (finishReason "error") is not written nor kept', () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server)
        const broken: GenerateResponse = { ...response("malformed call"), finishReason: "error" }
        const calls = yield* Ref.make(0)
        const call = Effect.as(
          Ref.update(calls, (n) => n + 1),
          broken
        )
        assert.deepStrictEqual(yield* cache.getOrCompute("k", call), { value: broken, source: "miss" })
        yield* cache.setMany([{ key: "m", value: broken }])
        yield* cache.setParts("s", [
          { _tag: "TextDelta", text: "x" },
          { _tag: "Finish", finishReason: "error", usage: broken.usage, provider: "p", model: "m" }
        ])
        yield* Effect.sleep("100 millis")
        const redis = yield* admin(server)
        assert.deepStrictEqual(yield* redis.send<Array<string>>("KEYS", `${cache.name}:*`), [])
        assert.strictEqual((yield* cache.getOrCompute("k", call)).source, "miss", "asked again")
        assert.strictEqual(yield* Ref.get(calls), 2)
      })
    )
  )

  it.live("an answer kept in the process while its write is under way is not served past its ttl", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        // The process keeps an answer at least a second (2 x redis.timeout) after computing it.
        const cache = yield* build(server, { ttl: "100 millis" })
        const provider = yield* scripted("1 millis")
        assert.strictEqual((yield* ask(cache, provider, "q")).source, "miss")
        yield* Effect.sleep("300 millis")
        const again = yield* ask(cache, provider, "q")
        assert.strictEqual(again.source, "miss", "expired: the provider is asked again")
        assert.strictEqual(again.value.text, "q #2")
        assert.strictEqual(yield* provider.calls, 2)
      })
    )
  )

  it.live('an answer this process computed and still keeps is a hit, not "shared" (no computation joined)', () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server)
        const provider = yield* scripted("1 millis")
        assert.strictEqual((yield* ask(cache, provider, "q")).source, "miss")
        yield* Effect.sleep("50 millis")
        const again = yield* ask(cache, provider, "q")
        assert.deepStrictEqual(again, { value: response("q #1"), source: "hit" })
        const count = (outcome: string) =>
          Effect.map(
            Metric.value(Metric.withAttributes(Metrics.cacheLookups, { cache: cache.name, outcome })),
            (s) => s.count
          )
        assert.deepStrictEqual([yield* count("hit"), yield* count("shared")], [1, 0])
      })
    )
  )

  // The guard's deadline is TestClock's: whether getMany waited on the hung Redis is whether it ended with no time
  // passing, not a wall-clock measure a loaded machine could miss.
  it.effect("getMany finds an answer this process keeps while its write is under way, without waiting on Redis", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* buildOnTestClock(server, { redis: { timeout: "300 millis", reportAfter: "1 minute" } })
        const provider = yield* scripted("1 millis")
        yield* server.pause
        yield* Effect.addFinalizer(() => server.resume)
        const asked = yield* Effect.forkChild(ask(cache, provider, "q"), { startImmediately: true })
        assert.strictEqual((yield* settle(asked)).source, "miss")
        const key = cache.key({ provider: "p", request: { prompt: "q" } })
        const [ended, found] = yield* endsAtOnce(cache.getMany([key]))
        assert.deepStrictEqual(found, [Option.some(response("q #1"))])
        assert.isTrue(ended, "waited on the hung Redis for what the process holds")
      })
    )
  )

  it.live("setMany right after an answer: lookups find the value set, not the answer the process still keeps", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server)
        const provider = yield* scripted("1 millis")
        assert.strictEqual((yield* ask(cache, provider, "q")).source, "miss")
        const key = cache.key({ provider: "p", request: { prompt: "q" } })
        yield* cache.setMany([{ key, value: response("set") }])
        assert.deepStrictEqual(yield* ask(cache, provider, "q"), { value: response("set"), source: "hit" })
        assert.deepStrictEqual(yield* cache.getMany([key]), [Option.some(response("set"))])
      })
    )
  )

  it.live("a redis.timeout longer than the client's commandTimeout does not lengthen it (as documented)", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        // The guard's deadline a minute, the client's 500 ms: a bound of 20 s tells them apart on any machine.
        const cache = yield* build(server, { redis: { timeout: "1 minute", reportAfter: "1 minute" } }, "500 millis")
        yield* server.pause
        yield* Effect.addFinalizer(() => server.resume)
        const [elapsed, found] = yield* Effect.timed(cache.getMany(["k"]))
        assert.deepStrictEqual(found, [Option.none()])
        assert.isBelow(Duration.toMillis(elapsed), 20_000, "cut by the client's 500 ms commandTimeout")
      })
    )
  )

  it.live("invalidate right after an answer: the write still under way does not bring it back", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server)
        const provider = yield* scripted("1 millis")
        assert.strictEqual((yield* ask(cache, provider, "q")).source, "miss")
        yield* cache.invalidate(cache.key({ provider: "p", request: { prompt: "q" } }))
        yield* Effect.sleep("200 millis")
        const redis = yield* admin(server)
        assert.deepStrictEqual(yield* redis.send<Array<string>>("KEYS", `${cache.name}:*`), [])
        assert.strictEqual((yield* ask(cache, provider, "q")).source, "miss")
        assert.strictEqual(yield* provider.calls, 2)
      })
    )
  )

  // An answer `text` computed across `during`: its computation starts, `during` runs while it
  // waits, then it ends; what its caller got.
  const computedAcross = <E>(
    cache: ResponseCache.Service,
    key: string,
    text: string,
    during: Effect.Effect<unknown, E>
  ) =>
    Effect.gen(function* () {
      const gate = yield* Deferred.make<void>()
      const started = yield* Deferred.make<void>()
      const computing = yield* Effect.forkChild(
        cache.getOrCompute(
          key,
          Effect.andThen(Deferred.succeed(started, undefined), Effect.as(Deferred.await(gate), response(text)))
        )
      )
      // Once the computation runs (its read of Redis comes first): a fixed sleep let a loaded
      // machine run `during` before it, and an invalidate before a computation does not stop its write.
      yield* Deferred.await(started)
      yield* during
      yield* Deferred.succeed(gate, undefined)
      return yield* Fiber.join(computing)
    })

  it.live("invalidate while the answer is computed: the answer reaches its caller but is not written back", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server)
        const key = cache.key({ provider: "p", request: { prompt: "q" } })
        const answered = yield* computedAcross(cache, key, "before invalidate", cache.invalidate(key))
        assert.strictEqual(answered.value.text, "before invalidate")
        yield* Effect.sleep("200 millis")
        const redis = yield* admin(server)
        assert.deepStrictEqual(yield* redis.send<Array<string>>("KEYS", `${cache.name}:*`), [])
        assert.deepStrictEqual(yield* cache.getMany([key]), [Option.none()])
      })
    )
  )

  it.live("setMany while the answer is computed: the value set stays, the answer does not replace it", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server)
        const key = cache.key({ provider: "p", request: { prompt: "q" } })
        const answered = yield* computedAcross(cache, key, "computed", cache.setMany([{ key, value: response("set") }]))
        assert.strictEqual(answered.value.text, "computed")
        yield* Effect.sleep("200 millis")
        assert.deepStrictEqual(yield* cache.getMany([key]), [Option.some(response("set"))])
      })
    )
  )

  // The guard's deadline is TestClock's (the client's a day): the clock says how many deadlines invalidate and setMany
  // waited, where a wall-clock bound of "one deadline and a half" was a second's margin on a loaded machine.
  it.effect(
    "invalidate and setMany while an answer's write is under way: one Redis deadline each, not the write's and then their own",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const cache = yield* buildOnTestClock(server, { redis: { timeout: "1 second", reportAfter: "1 minute" } })
          const provider = yield* scripted("0 millis")
          const keyA = cache.key({ provider: "p", request: { prompt: "a" } })
          const keyB = cache.key({ provider: "p", request: { prompt: "b" } })
          /** Polls (real time, a bound) until `done`, at most `limit` times 10 ms. */
          const until = (done: () => boolean, limit: number) =>
            Effect.gen(function* () {
              for (let i = 0; i < limit && !done(); i++) yield* TestClock.withLive(Effect.sleep("10 millis"))
            })
          // Loads the write script: a NOSCRIPT answered after the pause would drop the writes below.
          yield* cache.setMany([{ key: "warm", value: response("w") }])
          yield* server.pause
          yield* Effect.addFinalizer(() => server.resume)
          // Both lookups time out after one deadline; both answers' writes start then and hang for a deadline.
          const asked = yield* Effect.forkChild(
            Effect.all([ask(cache, provider, "a"), ask(cache, provider, "b")], { concurrency: 2 }),
            { startImmediately: true }
          )
          yield* until(() => false, 20)
          yield* TestClock.adjust("1 second")
          yield* until(() => asked.pollUnsafe() !== undefined, 1000)
          assert.deepStrictEqual(
            (yield* Fiber.join(asked)).map((r) => r.source),
            ["miss", "miss"]
          )
          // The writes are sent (their deadlines set) in the real time a turn of the runtime takes.
          yield* until(() => false, 20)
          const invalidating = yield* Effect.forkChild(Effect.exit(cache.invalidate(keyA)), { startImmediately: true })
          const setting = yield* Effect.forkChild(cache.setMany([{ key: keyB, value: response("set") }]), {
            startImmediately: true
          })
          const both = () => invalidating.pollUnsafe() !== undefined && setting.pollUnsafe() !== undefined
          // Quarter-deadline steps, real time between them: one deadline each ends them by the fourth step (the sixth if
          // a deadline was set a step late); waiting for the writes' deadline and then their own takes eight.
          let steps = 0
          while (!both() && steps < 12) {
            steps++
            yield* TestClock.adjust("250 millis")
            yield* until(both, 30)
          }
          assert.isAtMost(steps, 6, "invalidate or setMany waited for the write, then for its own command")
          const exit = yield* Fiber.join(invalidating)
          yield* Fiber.join(setting)
          assert.isTrue(Exit.isFailure(exit), "Redis did not answer the DEL")
          // Redis back: it runs what it was sent in order, so the answers' writes do not land last.
          yield* server.resume
          const redis = yield* admin(server)
          const settled = <A>(read: Effect.Effect<A, unknown>, ok: (a: A) => boolean) =>
            read.pipe(
              Effect.flatMap((a) => (ok(a) ? Effect.succeed(a) : Effect.fail("not yet"))),
              Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" }))),
              TestClock.withLive,
              Effect.orElseSucceed(() => undefined)
            )
          assert.strictEqual(
            yield* settled(redis.send<number>("EXISTS", `${cache.name}:r:${keyA}`), (n) => n === 0),
            0,
            "the answer's write brought back what invalidate removed"
          )
          const raw = yield* settled(
            redis.send<string | null>("GET", `${cache.name}:r:${keyB}`),
            (v) => v !== null && JSON.parse(v).value.response.text === "set"
          )
          assert.strictEqual(raw === undefined || raw === null ? undefined : JSON.parse(raw).value.response.text, "set")
        })
      ),
    30_000
  )

  // The guard's deadline is TestClock's (the client's a day), so the healthy Redis of the other calls never misses it:
  // invalidate on the hung Redis is seen waiting until the clock passes the deadline, and failing then.
  it.effect(
    "invalidate while Redis does not answer fails with a StoreError, within the deadline, instead of passing",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const cache = yield* buildOnTestClock(server, { redis: { timeout: "200 millis", reportAfter: "1 minute" } })
          // No time passes on TestClock but the deadline's: a healthy Redis is polled for, never cut.
          const provider = yield* scripted("0 millis")
          const key = cache.key({ provider: "p", request: { prompt: "q" } })
          const asked = yield* Effect.forkChild(ask(cache, provider, "q"), { startImmediately: true })
          assert.strictEqual((yield* settle(asked, "0 millis")).source, "miss")
          // Until its write landed (the real time a healthy Redis takes; 5 s at most: a bound, not a measure).
          const redis = yield* admin(server)
          yield* redis.send<number>("EXISTS", `${cache.name}:r:${key}`).pipe(
            Effect.flatMap((n) => (n === 1 ? Effect.void : Effect.fail("not written yet"))),
            Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" }))),
            TestClock.withLive
          )
          yield* server.pause
          yield* Effect.addFinalizer(() => server.resume)
          const invalidating = yield* Effect.forkChild(Effect.exit(cache.invalidate(key)), { startImmediately: true })
          yield* TestClock.withLive(Effect.sleep("100 millis"))
          assert.isUndefined(invalidating.pollUnsafe(), "invalidate waits for its deadline")
          yield* TestClock.adjust("200 millis")
          const exit = yield* settle(invalidating, "0 millis")
          yield* server.resume
          assert.isTrue(Exit.isFailure(exit), "the answer is still in Redis: invalidate must not say it is gone")
          const error = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.findErrorOption(exit.cause)) : undefined
          assert.strictEqual(error?._tag, "StoreError")
          assert.strictEqual(error?._tag === "StoreError" ? error.operation : undefined, "DEL")
          // Redis back: invalidate goes through.
          yield* cache.invalidate(key)
          const again = yield* Effect.forkChild(ask(cache, provider, "q"), { startImmediately: true })
          assert.strictEqual((yield* settle(again, "0 millis")).source, "miss")
        })
      )
  )

  // The guard's deadline is TestClock's: whether a caller waited on the hung Redis is whether it ended with no time
  // passing, not a wall-clock measure a loaded machine could miss.
  it.effect(
    "a stream's parts are written in the background: a hung Redis holds no caller, the failure is counted",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const cache = yield* buildOnTestClock(server, { redis: { timeout: "400 millis", reportAfter: "1 minute" } })
          const parts: ReadonlyArray<StreamPart> = [
            { _tag: "TextDelta", text: "streamed" },
            { _tag: "Finish", finishReason: "stop", usage: response("x").usage, provider: "p", model: "m" }
          ]
          yield* server.pause
          yield* Effect.addFinalizer(() => server.resume)
          const [written] = yield* endsAtOnce(cache.setParts("s", parts))
          assert.isTrue(written, "setParts waited for the Redis write")
          // Until the write has ended, a replay finds the parts in the process.
          const [replayed, found] = yield* endsAtOnce(cache.getParts("s"))
          assert.deepStrictEqual(found, Option.some(parts))
          assert.isTrue(replayed, "getParts waited on the hung Redis for what the process holds")
          // The write the hung Redis cut is not lost silently: the cache's errors count it.
          yield* TestClock.adjust("400 millis")
          yield* errorsOf(cache.name).pipe(
            Effect.flatMap((n) => (n >= 1 ? Effect.void : Effect.fail("not counted yet"))),
            Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo({ duration: "5 seconds" }))),
            TestClock.withLive
          )
          yield* server.resume
          // With Redis back, parts written in the background land, and invalidate waits for a write under way.
          yield* cache.setParts("t", parts)
          yield* cache.invalidate("t")
          yield* TestClock.withLive(Effect.sleep("100 millis"))
          const redis = yield* admin(server)
          assert.deepStrictEqual(yield* redis.send<Array<string>>("KEYS", `${cache.name}:s:t`), [])
          yield* cache.setParts("u", parts)
          yield* redis.send<number>("EXISTS", `${cache.name}:s:u`).pipe(
            Effect.flatMap((n) => (n === 1 ? Effect.void : Effect.fail("not written yet"))),
            Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" }))),
            TestClock.withLive
          )
        })
      )
  )

  // The guard's deadline is TestClock's (the client's a day), so the healthy Redis of the writes never misses it:
  // closing with Redis hung is seen waiting until the clock passes the deadline, and ending then.
  it.effect("writes under way when the layer closes still land: an answer's, a stream's parts", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const name = uniqueName("close")
        const parts: ReadonlyArray<StreamPart> = [
          { _tag: "TextDelta", text: "streamed" },
          { _tag: "Finish", finishReason: "stop", usage: response("x").usage, provider: "p", model: "m" }
        ]
        yield* Effect.scoped(
          Effect.gen(function* () {
            const cache = yield* buildOnTestClock(server, { name })
            yield* cache.getOrCompute("k", Effect.succeed(response("answer")))
            yield* cache.setParts("s", parts)
          })
        )
        const redis = yield* admin(server)
        assert.deepStrictEqual((yield* redis.send<Array<string>>("KEYS", `${name}:*`)).sort(), [
          `${name}:r:k`,
          `${name}:s:s`
        ])
        // With Redis hung, closing waits for a write under way no longer than the Redis deadline.
        const layerScope = yield* Scope.make()
        const cache = yield* buildOnTestClock(server, {
          redis: { timeout: "300 millis", reportAfter: "1 minute" }
        }).pipe(Scope.provide(layerScope))
        yield* server.pause
        yield* Effect.addFinalizer(() => server.resume)
        yield* cache.setParts("t", parts)
        const closing = yield* Effect.forkChild(Scope.close(layerScope, Exit.void), { startImmediately: true })
        yield* TestClock.withLive(Effect.sleep("100 millis"))
        assert.isUndefined(closing.pollUnsafe(), "closing waits for the write under way")
        yield* TestClock.adjust("300 millis")
        yield* settle(closing, "0 millis")
        assert.isDefined(closing.pollUnsafe(), "closing waited past the Redis deadline")
      })
    )
  )

  it.live("stale-if-error through Redis", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server, { ttl: "300 millis", staleFor: "1 minute" })
        yield* cache.setMany([{ key: "k", value: response("old") }])
        yield* Effect.sleep("400 millis")
        const failing = Effect.fail(modelError("Overloaded", "down"))
        assert.strictEqual((yield* Effect.flip(cache.getOrCompute("k", failing))).reason, "Overloaded")
        assert.deepStrictEqual(yield* cache.getOrCompute("k", failing, { allowStale: true }), {
          value: response("old"),
          source: "stale"
        })
      })
    )
  )

  it.live("a refresh with allowStale that fails after invalidate is not answered with the invalidated entry", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server, { ttl: "300 millis", staleFor: "1 minute" })
        yield* cache.setMany([{ key: "k", value: response("old") }])
        yield* Effect.sleep("400 millis")
        const down = modelError("Overloaded", "down")
        const started = yield* Deferred.make<void>()
        const gate = yield* Deferred.make<void>()
        const failing = Deferred.succeed(started, undefined).pipe(
          Effect.andThen(Deferred.await(gate)),
          Effect.andThen(Effect.fail(down))
        )
        const caller = yield* Effect.forkChild(Effect.flip(cache.getOrCompute("k", failing, { allowStale: true })))
        yield* Deferred.await(started)
        // Removed for good once invalidate returns: the caller waiting meanwhile is not answered with it.
        yield* cache.invalidate("k")
        yield* Deferred.succeed(gate, undefined)
        assert.strictEqual(yield* Fiber.join(caller), down, "answered with the invalidated entry")
        // Without an invalidate, a failed refresh is still answered stale.
        yield* cache.setMany([{ key: "kept", value: response("old") }])
        yield* Effect.sleep("400 millis")
        assert.deepStrictEqual(yield* cache.getOrCompute("kept", Effect.fail(down), { allowStale: true }), {
          value: response("old"),
          source: "stale"
        })
      })
    )
  )

  it.effect(
    "stale-if-error through Redis answers within the grace only: a refresh failing after it fails its caller",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const cache = yield* build(server, { ttl: "10 seconds", staleFor: "5 seconds" })
          yield* cache.setMany([{ key: "k", value: response("old") }])
          yield* TestClock.adjust("12 seconds")
          const started = yield* Deferred.make<void>()
          // Found within its grace (3 seconds left), the entry's grace ends while the provider is asked.
          const slow = Deferred.succeed(started, undefined).pipe(
            Effect.andThen(Effect.sleep("5 seconds")),
            Effect.andThen(Effect.fail(modelError("Overloaded", "down")))
          )
          const caller = yield* Effect.forkChild(Effect.flip(cache.getOrCompute("k", slow, { allowStale: true })))
          yield* Deferred.await(started)
          yield* TestClock.adjust("5 seconds")
          assert.strictEqual((yield* Fiber.join(caller)).reason, "Overloaded")
        })
      )
  )

  // The ttl passes on TestClock (the entry stays in Redis for its staleFor), and the gate opens once Redis has answered
  // every caller's read, counted as the replies reach the cache: a fixed sleep let a loaded machine open it before a
  // caller had read, and that caller then found the new answer (a hit).
  it.effect("single-flight holds for an entry past its ttl: callers that all read it from Redis make one call", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const { cache, reads } = yield* buildCountingReads(server, { ttl: "300 millis", staleFor: "1 minute" })
        yield* cache.setMany([{ key: "k", value: response("old") }])
        yield* TestClock.adjust("400 millis")
        const before = reads()
        const calls = yield* Ref.make(0)
        const gate = yield* Deferred.make<void>()
        const refresh = Effect.andThen(
          Ref.update(calls, (n) => n + 1),
          Effect.as(Deferred.await(gate), response("new"))
        )
        const callers = yield* Effect.forkChild(
          Effect.all(
            Array.from({ length: 5 }, () => cache.getOrCompute("k", refresh, { allowStale: true })),
            { concurrency: "unbounded" }
          )
        )
        // Every caller has read the stale entry from Redis (a bound, not a measure), then started or joined the
        // refresh: what follows its reply runs without waiting on anything, in the turns given here.
        for (let i = 0; i < 1000 && reads() - before < 5; i++) yield* TestClock.withLive(Effect.sleep("10 millis"))
        assert.strictEqual(reads() - before, 5, "each caller read Redis")
        for (let i = 0; i < 100; i++) yield* Effect.yieldNow
        yield* Deferred.succeed(gate, undefined)
        const results = yield* Fiber.join(callers)
        assert.strictEqual(yield* Ref.get(calls), 1, "a caller's refresh took the running one out of the table")
        assert.deepStrictEqual(results.map((r) => r.source).sort(), ["miss", "shared", "shared", "shared", "shared"])
        assert.isTrue(results.every((r) => r.value.text === "new"))
      })
    )
  )

  it.live("keep false: the answer reaches its caller but is neither kept in the process nor written", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server, { ttl: "1 minute" })
        assert.deepStrictEqual(
          yield* cache.getOrCompute("k", Effect.succeed(response("not kept")), { keep: () => false }),
          { value: response("not kept"), source: "miss" }
        )
        assert.deepStrictEqual(yield* cache.getOrCompute("k", Effect.succeed(response("kept"))), {
          value: response("kept"),
          source: "miss"
        })
        const redis = yield* admin(server)
        yield* redis.send<number>("EXISTS", `${cache.name}:r:k`).pipe(
          Effect.flatMap((n) => (n === 1 ? Effect.void : Effect.fail("not written yet"))),
          Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
        )
        const other = yield* build(server, { name: `${cache.name}-2`, prefix: cache.name, ttl: "1 minute" })
        assert.deepStrictEqual(yield* other.getOrCompute("k", Effect.die("not called")), {
          value: response("kept"),
          source: "hit"
        })
      })
    )
  )

  it.live(
    "getOrCompute refuses bad options naming them; a keep or originOf that throws fails its call, not stale",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const cache = yield* build(server, { ttl: "300 millis", staleFor: "1 minute" })
          const field = (effect: Effect.Effect<unknown, unknown>) =>
            Effect.map(Effect.flip(effect), (error) => {
              const e = error as { readonly _tag: string; readonly reason: string; readonly field: string }
              assert.strictEqual(`${e._tag}/${e.reason}`, "ModelError/InvalidRequest")
              return e.field
            })
          const answer = Effect.succeed(response("new"))
          assert.strictEqual(yield* field(cache.getOrCompute("k", answer, { alowStale: true } as never)), "alowStale")
          assert.strictEqual(yield* field(cache.getOrCompute("k", answer, { keep: 1 } as never)), "keep")
          assert.strictEqual(yield* field(cache.getOrCompute(null as never, answer)), "key")
          yield* cache.setMany([{ key: "k", value: response("old") }])
          yield* Effect.sleep("400 millis")
          const throwing = () => {
            throw new Error("boom")
          }
          assert.strictEqual(
            yield* field(cache.getOrCompute("k", answer, { allowStale: true, keep: throwing })),
            "keep"
          )
          assert.strictEqual(
            yield* field(cache.getOrCompute("k", answer, { allowStale: true, originOf: throwing })),
            "originOf"
          )
          // An origin that is not one was written as one, and the write died encoding it.
          assert.strictEqual(
            yield* field(cache.getOrCompute("k", answer, { originOf: () => ({ provider: 5 }) as never })),
            "originOf"
          )
          assert.deepStrictEqual(yield* cache.getMany(["k"]), [Option.none()], "nothing new was kept or written")
        })
      )
  )

  it.live("getMany, setMany, getParts, setParts and invalidate refuse what is not a key, an answer or parts", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server)
        const bad = cache as unknown as Record<
          string,
          (...args: ReadonlyArray<unknown>) => Effect.Effect<unknown, unknown>
        >
        const cases: ReadonlyArray<readonly [string, ReadonlyArray<unknown>, string]> = [
          ["getMany", [null], "keys"],
          ["getMany", [[5]], "keys[0]"],
          // The write died encoding it (a defect of setMany); the memory cache served it back as an answer.
          ["setMany", [[{ key: "a", value: { text: "no usage" } }]], "entries[0].value"],
          ["setMany", [[{ key: 5, value: response("a") }]], "entries[0].key"],
          ["getParts", [null], "key"],
          ["setParts", ["k", null], "parts"],
          ["setParts", ["k", [{ _tag: "TextDelta", text: 5 }]], "parts[0].text"],
          ["invalidate", [5], "key"]
        ]
        for (const [method, args, field] of cases) {
          const exit = yield* Effect.exit(Effect.suspend(() => bad[method]!(...args)))
          const error = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.findErrorOption(exit.cause)) : undefined
          const e = error as { readonly _tag?: string; readonly reason?: string; readonly field?: string } | undefined
          assert.strictEqual(
            `${e?._tag}/${e?.reason}/${e?.field}`,
            `ModelError/InvalidRequest/${field}`,
            `${method}(${JSON.stringify(args)}): ${String(exit)}`
          )
        }
        assert.deepStrictEqual(yield* cache.getMany(["a"]), [Option.none()])
      })
    )
  )

  it.live("a stream's malformed parts: setParts refuses them, writes nothing, says and counts it", () =>
    Effect.gen(function* () {
      const logs = yield* captureLogs
      yield* Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const cache = yield* build(server, { ttl: "1 minute" })
          const redis = yield* admin(server)
          const text: StreamPart = { _tag: "TextDelta", text: "a" }
          const finish: StreamPart = {
            _tag: "Finish",
            finishReason: "stop",
            usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
            provider: "p",
            model: "m"
          }
          const { finishReason: _, ...noReason } = finish
          const odd: ReadonlyArray<readonly [string, ReadonlyArray<unknown>, string]> = [
            ["no-reason", [text, noReason], "parts[1].finishReason"],
            ["string", [text, "x", finish], "parts[1]"],
            ["undefined", [text, undefined, finish], "parts[1]"]
          ]
          for (const [key, parts, field] of odd) {
            const exit = yield* Effect.exit(cache.setParts(key, parts as ReadonlyArray<StreamPart>))
            const error = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.findErrorOption(exit.cause)) : undefined
            assert.strictEqual(
              (error as { readonly field?: string } | undefined)?.field,
              field,
              `${key}: ${String(exit)}`
            )
            assert.deepStrictEqual(yield* cache.getParts(key), Option.none(), key)
          }
          yield* untilErrors(cache.name, odd.length)
          assert.strictEqual(yield* redis.send<number>("EXISTS", ...odd.map(([key]) => `${cache.name}:s:${key}`)), 0)
          assert.strictEqual(yield* errorsOf(cache.name), odd.length)
          const warnings = logs.lines.filter((l) => l.startsWith("Warn"))
          assert.strictEqual(warnings.length, odd.length, JSON.stringify(logs.lines))
          for (const [i, [, , field]] of odd.entries()) {
            assert.include(warnings[i], `ResponseCache ${cache.name}: stream parts not stored: ${field} `)
          }
          yield* cache.setParts("fine", [text, finish])
          assert.deepStrictEqual(yield* cache.getParts("fine"), Option.some([text, finish]))
        })
      ).pipe(Effect.provide(logs.layer))
    })
  )

  it.live("a caller's bound cuts its wait and is answered stale; an answer's origin is kept in Redis", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        // A ttl of 3 s, the other process built before the answer: it reads the answer fresh on a loaded machine (300 ms
        // was not always, nor 2 s with its layer built in them).
        const cache = yield* build(server, { ttl: "3 seconds", staleFor: "1 minute" })
        const other = yield* build(server, { name: `${cache.name}-2`, prefix: cache.name, ttl: "3 seconds" })
        const origin: ResponseCache.Origin = { provider: "b", domain: "d-b" }
        assert.deepStrictEqual(
          yield* cache.getOrCompute("k", Effect.succeed(response("old")), { originOf: () => origin }),
          { value: response("old"), source: "miss", origin }
        )
        const redis = yield* admin(server)
        yield* redis.send<number>("EXISTS", `${cache.name}:r:k`).pipe(
          Effect.flatMap((n) => (n === 1 ? Effect.void : Effect.fail("not written yet"))),
          Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
        )
        // Another process on the same prefix reads the answer and who produced it.
        assert.deepStrictEqual(yield* other.getOrCompute("k", Effect.die("not called")), {
          value: response("old"),
          source: "hit",
          origin
        })
        // Past the ttl: a refresh that never ends.
        yield* Effect.sleep("3100 millis")
        const cut = modelError("Timeout", "the caller's deadline")
        const bound = <A>(wait: Effect.Effect<A, AiError>) =>
          Effect.timeoutOrElse(wait, { duration: "100 millis", orElse: () => Effect.fail(cut) })
        const [elapsed, stale] = yield* Effect.timed(cache.getOrCompute("k", Effect.never, { allowStale: true, bound }))
        assert.deepStrictEqual(stale, { value: response("old"), source: "stale", origin })
        // The refresh never ends: only the 100 ms bound ends the wait (10 s: a bound a loaded machine meets).
        assert.isBelow(Duration.toMillis(elapsed), 10_000)
        assert.strictEqual(yield* Effect.flip(cache.getOrCompute("k", Effect.never, { bound })), cut)
      })
    )
  )

  // A reply that reaches the socket while this process is not running its event loop (the host
  // descheduled it, a GC pause) is read after the client's timers fire: the call times out although
  // Redis answered in time. That is not the deadline flapping, so a run with such a stall (half the
  // deadline or more, when a call in flight still had the other half for Redis) proves nothing either
  // way: it is run again, and the test is skipped, saying so, when no run is free of stalls.
  it.live(
    "under load with Redis up: no error, no warning, no 'unavailable' / 'is back' pairs (v0.1's 50 ms deadline flapped)",
    (ctx) =>
      Effect.gen(function* () {
        const server = yield* startRedis
        const stalls: Array<number> = []
        for (let attempt = 0; attempt < 3; attempt++) {
          const logs = yield* captureLogs
          const { errors, stall, warm } = yield* Effect.scoped(
            Effect.gen(function* () {
              const cache = yield* build(server)
              const provider = yield* scripted("1 millis")
              // Warm up at low concurrency: the first calls compile code paths and schemas (a
              // stall of hundreds of ms on a loaded host) that the burst below would wait on.
              yield* Effect.forEach(
                Array.from({ length: 200 }, (_, i) => `w${i}`),
                (p) => ask(cache, provider, p),
                { concurrency: 4 }
              )
              const before = yield* errorsOf(cache.name)
              const delay = monitorEventLoopDelay({ resolution: 5 })
              delay.enable()
              const prompts = Array.from({ length: 2000 }, (_, i) => `q${i % 700}`)
              const results = yield* Effect.forEach(prompts, (p) => ask(cache, provider, p), { concurrency: 100 })
              delay.disable()
              assert.strictEqual(results.length, 2000)
              return { errors: (yield* errorsOf(cache.name)) - before, stall: delay.max / 1e6, warm: before }
            })
          ).pipe(Effect.provide(logs.layer))
          // A warm-up the host stalled (its errors) may have logged: that run proves nothing either.
          if (stall < 250 && warm === 0) {
            assert.strictEqual(errors, 0)
            assert.deepStrictEqual(logs.lines, [])
            return
          }
          stalls.push(Math.round(stall))
        }
        ctx.skip(`the event loop stalled ${stalls.join(", ")} ms in each run: the host is too loaded to measure`)
      }).pipe(Effect.scoped)
  )

  it.live(
    "Redis killed mid-run: calls still answer without waiting, one warning naming the Redis error; back on restart",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const cache = yield* build(server, { redis: { reportAfter: 0, probeInterval: "100 millis" } })
            const provider = yield* scripted("5 millis")
            assert.strictEqual((yield* ask(cache, provider, "a")).source, "miss")
            yield* server.kill
            const during = yield* Effect.forEach(["b", "c", "d", "e", "f"], (p) => ask(cache, provider, p)).pipe(
              Effect.timeout("10 seconds")
            )
            for (const result of during) assert.strictEqual(result.source, "miss", "every call goes to the provider")
            assert.isTrue((yield* errorsOf(cache.name)) >= 5)
            const warnings = logs.lines.filter((l) => l.startsWith("Warn"))
            assert.strictEqual(warnings.length, 1, JSON.stringify(logs.lines))
            assert.match(warnings[0]!, /offline|closed|ECONNREFUSED|ECONNRESET/i)
            assert.notInclude(warnings[0]!, "unknown error")

            yield* server.start
            yield* Effect.suspend(() => cache.setMany([{ key: "probe", value: response("p") }])).pipe(
              Effect.andThen(cache.getMany(["probe"])),
              Effect.flatMap(([found]) =>
                found !== undefined && Option.isSome(found) ? Effect.void : Effect.fail("not yet")
              ),
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

  // The guard's deadline is TestClock's (the client's a day): the three calls end once the clock has passed one
  // deadline, which they would not if each waited its own (real time between polls is a bound, not a measure).
  it.effect("a hung Redis costs a call at most one deadline, and nothing once the outage is reported", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* buildOnTestClock(server, {
          redis: { timeout: "200 millis", reportAfter: 0, probeInterval: "1 minute" }
        })
        const provider = yield* scripted("0 millis")
        yield* server.pause
        yield* Effect.addFinalizer(() => server.resume)
        const calls = yield* Effect.forkChild(
          Effect.forEach(["a", "b", "c"], (p) => ask(cache, provider, p)),
          { startImmediately: true }
        )
        // Each step passes one deadline, with real time for the client between: the first lookup's, and one more at
        // most in case its deadline was not yet set when the clock moved. Each call waiting its own takes three.
        let steps = 0
        while (calls.pollUnsafe() === undefined && steps < 10) {
          steps++
          yield* TestClock.adjust("200 millis")
          for (let i = 0; i < 100 && calls.pollUnsafe() === undefined; i++) {
            yield* TestClock.withLive(Effect.sleep("10 millis"))
          }
        }
        assert.isAtMost(steps, 2, "a call after the first waited on the hung Redis")
        const results = yield* Fiber.join(calls)
        yield* server.resume
        assert.deepStrictEqual(
          results.map((r) => r.source),
          ["miss", "miss", "miss"]
        )
        assert.strictEqual(yield* provider.calls, 3)
        // The first lookup timed out, the rest (lookups and writes) skipped Redis.
        assert.isTrue((yield* errorsOf(cache.name)) >= 4)
      })
    )
  )

  // The guard's deadline is TestClock's (the client's is a day): whether a lookup waited on the hung Redis is whether
  // it answered with no time passing, not a wall-clock measure a loaded machine could miss.
  it.effect(
    "once a hung Redis is reported, no call waits on it: the probe runs in the background, even for slow traffic",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const name = uniqueName("cache")
          const context = yield* Layer.build(
            RedisCache.layerRedis({
              prefix: name,
              name,
              redis: { timeout: "600 millis", reportAfter: 0, probeInterval: "50 millis" }
            }).pipe(Layer.provide(Redis.layer({ url: server.url, commandTimeout: "1 day" })))
          )
          const cache = Context.get(context, ResponseCache.ResponseCache)
          yield* cache.setMany([{ key: "k", value: response("kept") }])
          yield* server.pause
          yield* Effect.addFinalizer(() => server.resume)
          // The first call pays the deadline and reports the outage.
          const first = yield* Effect.forkChild(cache.getMany(["k"]), { startImmediately: true })
          yield* Effect.yieldNow
          assert.isUndefined(first.pollUnsafe(), "the first lookup waits for its deadline")
          yield* TestClock.adjust("600 millis")
          assert.deepStrictEqual(yield* Fiber.join(first), [Option.none()])
          // Each lookup comes after probeInterval has passed: each used to be the probe and wait 600 ms.
          for (let i = 0; i < 5; i++) {
            yield* TestClock.adjust("100 millis")
            const lookup = yield* Effect.forkChild(cache.getMany(["k"]), { startImmediately: true })
            yield* Effect.yieldNow
            assert.isDefined(lookup.pollUnsafe(), `lookup ${i} waited on the hung Redis`)
            assert.deepStrictEqual(yield* Fiber.join(lookup), [Option.none()])
          }
          yield* server.resume
          // The background probe finds Redis back (polled, real time for its reply: a bound, not a measure).
          let back: ReadonlyArray<Option.Option<GenerateResponse>> = [Option.none()]
          for (let i = 0; i < 200 && Option.isNone(back[0]!); i++) {
            yield* TestClock.withLive(Effect.sleep("20 millis"))
            yield* TestClock.adjust("50 millis")
            back = yield* cache.getMany(["k"])
          }
          assert.deepStrictEqual(back, [Option.some(response("kept"))])
        })
      )
  )

  it.live(
    "invalid options fail the layer with an OptionError naming the field; closing the scope releases the client",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const server = yield* startRedis
          const cases: ReadonlyArray<readonly [RedisCache.Options, string]> = [
            [{ ttl: 0 }, "ttl"],
            [{ staleFor: Number.NaN }, "staleFor"],
            [{ prefix: "" }, "prefix"],
            [{ prefix: "p".repeat(101) }, "prefix"],
            [{ redis: { timeout: Number.NaN } }, "redis.timeout"],
            [{ redis: { reportAfter: -1 } }, "redis.reportAfter"],
            [{ timeout: "50 millis" } as RedisCache.Options, "timeout"],
            [{ maxValueBytes: Number.NaN }, "maxValueBytes"],
            [{ maxValueBytes: -1 }, "maxValueBytes"],
            [{ maxValueBytes: 1.5 }, "maxValueBytes"],
            [{ maxBatchBytes: Number.NaN }, "maxBatchBytes"],
            [{ maxBatchBytes: 0 }, "maxBatchBytes"],
            [{ maxBatchBytes: 2.5 }, "maxBatchBytes"],
            // Smaller than one value: a setMany of one value it allows was refused.
            [{ maxValueBytes: 2000, maxBatchBytes: 1999 }, "maxBatchBytes"]
          ]
          for (const [options, path] of cases) {
            const exit = yield* Effect.exit(build(server, options))
            const error = Exit.findErrorOption(exit)
            assert.isTrue(Option.isSome(error), JSON.stringify(options))
            assert.strictEqual((Option.getOrThrow(error) as { readonly path: string }).path, path)
          }
          const redis = yield* admin(server)
          const clients = Effect.map(redis.send<string>("CLIENT", "LIST"), (list) => list.trim().split("\n").length)
          const before = yield* clients
          yield* Effect.scoped(
            Effect.gen(function* () {
              const cache = yield* build(server)
              yield* cache.setMany([{ key: "k", value: response("x") }])
              assert.strictEqual(yield* clients, before + 1)
            })
          )
          yield* Effect.suspend(() => clients).pipe(
            Effect.flatMap((n) => (n === before ? Effect.void : Effect.fail(`${n} clients`))),
            Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "5 seconds" })))
          )
        })
      )
  )

  // The gate opens once Redis has answered both callers' reads, counted as the replies reach the cache: a fixed sleep
  // of 200 ms let a loaded machine open it before the second caller had read, and that caller then computed on its own.
  it.live("a caller that joins a computation after its Redis read counts as shared when it fails, as in memory", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const { cache, reads } = yield* buildCountingReads(server, { redis: { timeout: "1 minute" } })
        const gate = yield* Deferred.make<void>()
        const failing = Effect.andThen(Deferred.await(gate), Effect.fail(modelError("Overloaded", "down")))
        const before = reads()
        // Both callers find nothing running before their Redis reads; the second to read joins the first.
        const callers = yield* Effect.forkChild(
          Effect.all(
            Array.from({ length: 2 }, () => Effect.flip(cache.getOrCompute("k", failing))),
            { concurrency: "unbounded" }
          )
        )
        // Both callers have read Redis (10 s at most: a bound, not a measure), then started or joined the computation:
        // what follows the reply runs without waiting on anything, in the turns given here.
        for (let i = 0; i < 1000 && reads() - before < 2; i++) yield* Effect.sleep("10 millis")
        assert.strictEqual(reads() - before, 2, "each caller read Redis")
        for (let i = 0; i < 100; i++) yield* Effect.yieldNow
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(callers)
        const count = (outcome: string) =>
          Effect.map(
            Metric.value(Metric.withAttributes(Metrics.cacheLookups, { cache: cache.name, outcome })),
            (s) => s.count
          )
        assert.deepStrictEqual([yield* count("miss"), yield* count("shared")], [1, 1])
      })
    )
  )

  it.live(
    "a compute answering a usage count that is not finite: its callers have it, it is not written, counted and said",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const cache = yield* build(server, { ttl: "1 minute" })
            const odd = { ...response("odd"), usage: { inputTokens: 1, outputTokens: Number.NaN, totalTokens: 2 } }
            assert.deepStrictEqual(yield* cache.getOrCompute("k", Effect.succeed(odd)), { value: odd, source: "miss" })
            yield* untilErrors(cache.name, 1)
            const redis = yield* admin(server)
            assert.strictEqual(yield* redis.send<number>("EXISTS", `${cache.name}:r:k`), 0)
            assert.strictEqual(yield* errorsOf(cache.name), 1)
            const warnings = logs.lines.filter((l) => l.startsWith("Warn"))
            assert.strictEqual(warnings.length, 1, JSON.stringify(logs.lines))
            assert.include(warnings[0]!, "usage.outputTokens")
            // Not kept in the process either: the next caller computes (no entry that Redis lacks).
            const next = yield* cache.getOrCompute("k", Effect.succeed(response("next")))
            assert.deepStrictEqual(next, { value: response("next"), source: "miss" })
          })
        ).pipe(Effect.provide(logs.layer))
      })
  )

  it.live(
    "a compute answering no usage, or one that is not an answer (a caller's own): its callers have it, it is not written",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            const cache = yield* build(server, { ttl: "1 minute" })
            const redis = yield* admin(server)
            const { usage: _, ...noUsage } = response("no usage")
            const odd: ReadonlyArray<readonly [string, unknown, string]> = [
              ["none", noUsage, "answer.usage"],
              ["null", { ...response("null usage"), usage: null }, "answer.usage"],
              ["text", { ...response("t"), text: 42 }, "answer.text"]
            ]
            for (const [key, value] of odd) {
              const answered = yield* cache.getOrCompute(key, Effect.succeed(value as GenerateResponse))
              assert.deepStrictEqual(answered, { value: value as GenerateResponse, source: "miss" })
            }
            yield* untilErrors(cache.name, odd.length)
            assert.strictEqual(yield* redis.send<number>("EXISTS", ...odd.map(([key]) => `${cache.name}:r:${key}`)), 0)
            assert.strictEqual(yield* errorsOf(cache.name), odd.length)
            const warnings = logs.lines.filter((l) => l.startsWith("Warn"))
            assert.strictEqual(warnings.length, odd.length, JSON.stringify(logs.lines))
            for (const [i, [, , path]] of odd.entries()) {
              assert.include(warnings[i], `answer not stored: ${path} `)
            }
            const next = yield* cache.getOrCompute("none", Effect.succeed(response("next")))
            assert.deepStrictEqual(next, { value: response("next"), source: "miss" })
          })
        ).pipe(Effect.provide(logs.layer))
      })
  )

  it.live(
    "a compute answering undefined, null or a number: every caller of the flight has it as it is, no defect",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startRedis
            // Live, with deadlines a healthy Redis never misses (the client's a day, the guard's a minute): a lookup
            // cut on a loaded machine was an error more than the test counts.
            const cache = yield* buildOnTestClock(server, { ttl: "1 minute", redis: { timeout: "1 minute" } })
            const redis = yield* admin(server)
            const odd: ReadonlyArray<readonly [string, unknown]> = [
              ["undefined", undefined],
              ["null", null],
              ["number", 42]
            ]
            for (const [key, value] of odd) {
              const compute = Effect.as(Effect.sleep("20 millis"), value as GenerateResponse)
              const exits = yield* Effect.all(
                Array.from({ length: 3 }, () =>
                  Effect.exit(
                    cache.getOrCompute(
                      key,
                      compute,
                      key === "number" ? { originOf: (answer) => answer.provider as never } : {}
                    )
                  )
                ),
                { concurrency: "unbounded" }
              )
              for (const exit of exits) {
                assert.isTrue(Exit.isSuccess(exit), `${key}: ${String(exit)}`)
                if (Exit.isSuccess(exit)) assert.strictEqual(exit.value.value, value, key)
              }
            }
            yield* untilErrors(cache.name, odd.length)
            assert.strictEqual(yield* redis.send<number>("EXISTS", ...odd.map(([key]) => `${cache.name}:r:${key}`)), 0)
            assert.strictEqual(yield* errorsOf(cache.name), odd.length)
            const warnings = logs.lines.filter((l) => l.startsWith("Warn"))
            assert.strictEqual(warnings.length, odd.length, JSON.stringify(logs.lines))
            for (const warning of warnings) assert.include(warning, "answer not stored: answer ")
            const next = yield* cache.getOrCompute("null", Effect.succeed(response("next")))
            assert.deepStrictEqual(next, { value: response("next"), source: "miss" })
          })
        ).pipe(Effect.provide(logs.layer))
      })
  )

  // The cache's clock and the guard's deadline are TestClock's (the client's a day), so the healthy Redis never misses
  // the deadline: with Redis killed, the answer ends once the clock has passed one deadline at most.
  it.effect("Redis stopped: a stale entry this process still holds answers a failing refresh within its grace", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* buildOnTestClock(server, {
          ttl: "300 millis",
          staleFor: "1 minute",
          redis: { timeout: "200 millis", reportAfter: "1 minute" }
        })
        yield* cache.setMany([{ key: "k", value: response("old") }])
        yield* TestClock.adjust("400 millis")
        const failing = Effect.fail(modelError("Overloaded", "down"))
        // A refresh that fails puts the stale entry back in the process.
        assert.strictEqual((yield* cache.getOrCompute("k", failing, { allowStale: true })).source, "stale")
        yield* server.kill
        const asked = yield* Effect.forkChild(cache.getOrCompute("k", failing, { allowStale: true }), {
          startImmediately: true
        })
        yield* TestClock.adjust("200 millis")
        for (let i = 0; i < 500 && asked.pollUnsafe() === undefined; i++)
          yield* TestClock.withLive(Effect.sleep("10 millis"))
        assert.isDefined(asked.pollUnsafe(), "waited past the Redis deadline")
        assert.deepStrictEqual(yield* Fiber.join(asked), { value: response("old"), source: "stale" })
      })
    )
  )

  it.live("a compute that asks for its own key fails with an InvalidRequest naming the recursion, never hangs", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const cache = yield* build(server)
        const own: Effect.Effect<GenerateResponse, AiError> = Effect.andThen(Effect.sleep("10 millis"), () =>
          Effect.map(cache.getOrCompute("k", own), (found) => found.value)
        )
        const error = yield* Effect.flip(cache.getOrCompute("k", own, { allowStale: true })).pipe(
          Effect.timeout("5 seconds")
        )
        assert.strictEqual(error._tag, "ModelError")
        const { reason, field } = error as Extract<AiError, { readonly _tag: "ModelError" }>
        assert.strictEqual(`${reason}/${field}`, "InvalidRequest/compute")
      })
    )
  )
})
