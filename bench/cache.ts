/**
 * Response-cache and Redis-guard benchmark (real time; Redis on a private loopback port).
 *
 *   npx tsx bench/cache.ts
 *
 * A. In-memory cache, side by side: this library's cache on `effect`'s core `Cache` vs a
 *    hand-written map + flights table (the v0.1 design, kept here only as the reference):
 *    hit latency one call at a time (p50 / p99 / mean), and 100,000 calls over 1,000 keys at
 *    concurrency 64 (µs per call).
 * B. Redis: a hit through the cache (guard + MGET + Schema decode) vs a bare `MGET`, one at a
 *    time and at concurrency 100; and the guard's deadline alone: `redis.send` with and
 *    without `Effect.timeoutOrElse`.
 * C. 1,000 requests, 50% repeats, provider 20 ms, concurrency 50: no cache / memory / Redis;
 *    wall time and provider calls.
 *
 * D. Not a timing: the delays the Redis rate-limit stores hand out for a burst of 3,600
 *    requests at 3,500 per minute (window / limit = 17.14 ms), `effect`'s
 *    `RateLimiter.layerStoreRedis` against `RateLimit/Redis.ts` and the memory store.
 *
 * Each part runs its variants interleaved, one warm-up round then 5 counted rounds; medians.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Context, Deferred, Duration, Effect, Exit, Layer, Option, Ref, type Scope } from "effect"
import { Redis as PersistenceRedis, RateLimiter } from "effect/persistence"
import type { GenerateResponse } from "../src/Model.js"
import * as RateLimitRedis from "../src/RateLimit/Redis.js"
import * as Redis from "../src/Redis.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as RedisCache from "../src/ResponseCache/Redis.js"
import { redisServerPath, startRedis } from "../test/utils/redis.js"

const ROUNDS = 5

const answer = (text: string): GenerateResponse => ({
  text,
  finishReason: "stop",
  usage: { inputTokens: 3, outputTokens: 12, totalTokens: 15 },
  provider: "bench",
  model: "bench-model"
})

interface Cache {
  readonly getOrCompute: (key: string, compute: Effect.Effect<GenerateResponse>) => Effect.Effect<unknown>
}

/** The v0.1 design: an LRU map of entries and a map of running computations (Deferreds). */
const handWritten = (capacity: number, ttl: number): Effect.Effect<Cache, never, Scope.Scope> =>
  Effect.gen(function* () {
    const scope = yield* Effect.scope
    const entries = new Map<string, { readonly value: GenerateResponse; readonly expiresAt: number }>()
    const flights = new Map<string, Deferred.Deferred<GenerateResponse>>()
    const getOrCompute = (key: string, compute: Effect.Effect<GenerateResponse>) =>
      Effect.clockWith((clock) => {
        const now = clock.currentTimeMillisUnsafe()
        const entry = entries.get(key)
        if (entry !== undefined && now < entry.expiresAt) {
          entries.delete(key)
          entries.set(key, entry)
          return Effect.succeed(entry.value)
        }
        const running = flights.get(key)
        if (running !== undefined) return Deferred.await(running)
        const deferred = Deferred.makeUnsafe<GenerateResponse>()
        flights.set(key, deferred)
        return Effect.andThen(
          Effect.forkIn(
            compute.pipe(
              Effect.onExit((exit) =>
                Effect.sync(() => {
                  flights.delete(key)
                  if (Exit.isSuccess(exit)) {
                    entries.set(key, { value: exit.value, expiresAt: clock.currentTimeMillisUnsafe() + ttl })
                    if (entries.size > capacity) entries.delete(entries.keys().next().value!)
                  }
                })
              ),
              Effect.exit,
              Effect.flatMap((exit) => Deferred.done(deferred, exit))
            ),
            scope
          ),
          Deferred.await(deferred)
        )
      })
    return { getOrCompute }
  })

const now = () => performance.now()
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!

/** One call at a time on a cached key: µs per call. */
const hitLatency = (cache: Cache, samples: number) =>
  Effect.gen(function* () {
    const compute = Effect.succeed(answer("cached"))
    yield* cache.getOrCompute("hot", compute)
    yield* Effect.sleep("20 millis")
    for (let i = 0; i < 500; i++) yield* cache.getOrCompute("hot", compute)
    const times: Array<number> = []
    for (let i = 0; i < samples; i++) {
      const start = now()
      yield* cache.getOrCompute("hot", compute)
      times.push((now() - start) * 1000)
    }
    times.sort((a, b) => a - b)
    return {
      p50: percentile(times, 50),
      p99: percentile(times, 99),
      mean: times.reduce((s, t) => s + t, 0) / times.length
    }
  })

/** `calls` calls over `keys` keys at `concurrency`, instant computations: µs per call. */
const throughput = (cache: Cache, calls: number, keys: number, concurrency: number) =>
  Effect.gen(function* () {
    const compute = Effect.succeed(answer("x"))
    const start = now()
    yield* Effect.forEach(
      Array.from({ length: calls }, (_, i) => `k${i % keys}`),
      (k) => cache.getOrCompute(k, compute),
      {
        concurrency,
        discard: true
      }
    )
    return ((now() - start) * 1000) / calls
  })

// The bench's keys and computations are valid: the InvalidRequest of a bad one cannot happen here.
const ours = (cache: ResponseCache.Service): Cache => ({
  getOrCompute: (k, c) => Effect.orDie(cache.getOrCompute(k, c))
})

const memoryCache = Effect.map(
  Layer.build(ResponseCache.layerMemory({ capacity: 10_000, name: "bench-memory" })),
  (context) => ours(Context.get(context, ResponseCache.ResponseCache))
)

const row = (cells: ReadonlyArray<string | number>) => console.log(`| ${cells.join(" | ")} |`)
const us = (x: number) => `${x.toFixed(1)} µs`

const partA = Effect.gen(function* () {
  console.log("\nA. In-memory cache: effect's core Cache (this library) vs a hand-written map + flights\n")
  const runs: Record<string, Array<{ p50: number; p99: number; mean: number; bulk: number }>> = {
    "core Cache (ResponseCache.layerMemory)": [],
    "hand-written map + flights (v0.1 design)": []
  }
  for (let round = 0; round <= ROUNDS; round++) {
    for (const name of Object.keys(runs)) {
      const result = yield* Effect.scoped(
        Effect.gen(function* () {
          const cache = name.startsWith("core") ? yield* memoryCache : yield* handWritten(10_000, 3_600_000)
          const hit = yield* hitLatency(cache, 20_000)
          const bulk = yield* throughput(cache, 100_000, 1_000, 64)
          return { ...hit, bulk }
        })
      )
      if (round > 0) runs[name]!.push(result)
    }
  }
  row(["variant", "hit p50", "hit p99", "hit mean", "100k calls, 1k keys, concurrency 64: per call"])
  row(["---", "---:", "---:", "---:", "---:"])
  for (const [name, results] of Object.entries(runs)) {
    row([
      name,
      us(median(results.map((r) => r.p50))),
      us(median(results.map((r) => r.p99))),
      us(median(results.map((r) => r.mean))),
      us(median(results.map((r) => r.bulk)))
    ])
  }
})

const partB = (url: string) =>
  Effect.gen(function* () {
    console.log("\nB. Redis on loopback: a hit through the cache vs a bare MGET; the guard's deadline\n")
    const context = yield* Layer.build(Redis.layer({ url }))
    const redis = Context.get(context, PersistenceRedis.Redis)
    const cache = Context.get(
      yield* Layer.build(
        RedisCache.layerRedis({ name: "bench-redis", prefix: "bench" }).pipe(
          Layer.provide(Layer.succeedContext(context))
        )
      ),
      ResponseCache.ResponseCache
    )
    // A guard deadline shorter than the client's (500 ms) needs a timer of its own per call.
    const timed = Context.get(
      yield* Layer.build(
        RedisCache.layerRedis({ name: "bench-redis-timer", prefix: "bench", redis: { timeout: "400 millis" } }).pipe(
          Layer.provide(Layer.succeedContext(context))
        )
      ),
      ResponseCache.ResponseCache
    )
    yield* cache.setMany([{ key: "hot", value: answer("cached") }])
    const variants: Record<string, (i: number) => Effect.Effect<unknown, unknown>> = {
      "cache hit, deadline left to the client (default)": () => cache.getOrCompute("hot", Effect.succeed(answer("x"))),
      "cache hit, the guard's own timer per call": () => timed.getOrCompute("hot", Effect.succeed(answer("x"))),
      "bare MGET (Redis service)": () => redis.send("MGET", "bench:r:hot"),
      "bare MGET + Effect.timeoutOrElse (the guard's deadline)": () =>
        redis
          .send("MGET", "bench:r:hot")
          .pipe(Effect.timeoutOrElse({ duration: "500 millis", orElse: () => Effect.fail("timeout") }))
    }
    const runs: Record<string, { sequential: Array<number>; concurrent: Array<number> }> = {}
    for (let round = 0; round <= ROUNDS; round++) {
      for (const [name, call] of Object.entries(variants)) {
        let start = now()
        for (let i = 0; i < 2000; i++) yield* call(i)
        const sequential = ((now() - start) * 1000) / 2000
        start = now()
        yield* Effect.forEach(Array.from({ length: 20_000 }), (_, i) => call(i), { concurrency: 100, discard: true })
        const concurrent = ((now() - start) * 1000) / 20_000
        if (round > 0) {
          runs[name] ??= { sequential: [], concurrent: [] }
          runs[name].sequential.push(sequential)
          runs[name].concurrent.push(concurrent)
        }
      }
    }
    row(["variant", "one at a time: per call", "20k at concurrency 100: per call"])
    row(["---", "---:", "---:"])
    for (const [name, r] of Object.entries(runs)) row([name, us(median(r.sequential)), us(median(r.concurrent))])
  })

const partC = (url: string | undefined) =>
  Effect.gen(function* () {
    console.log("\nC. 1,000 requests, 50% repeats (seeded order), provider 20 ms, concurrency 50\n")
    const prompts = Array.from({ length: 1000 }, (_, i) => `question ${i % 500}`)
    let seed = 42
    for (let i = prompts.length - 1; i > 0; i--) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      const j = seed % (i + 1)
      ;[prompts[i], prompts[j]] = [prompts[j]!, prompts[i]!]
    }
    const batch = (cache: ResponseCache.Service | undefined) =>
      Effect.gen(function* () {
        const calls = yield* Ref.make(0)
        const provider = (prompt: string) =>
          Effect.as(
            Effect.andThen(
              Ref.update(calls, (n) => n + 1),
              Effect.sleep("20 millis")
            ),
            answer(prompt)
          )
        const start = now()
        yield* Effect.forEach(
          prompts,
          (prompt) =>
            cache === undefined
              ? Effect.asVoid(provider(prompt))
              : Effect.asVoid(
                  cache.getOrCompute(cache.key({ provider: "bench", request: { prompt } }), provider(prompt))
                ),
          { concurrency: 50, discard: true }
        )
        return { wall: now() - start, calls: yield* Ref.get(calls) }
      })
    const variants: Record<string, Effect.Effect<{ wall: number; calls: number }, unknown, Scope.Scope>> = {
      "no cache": batch(undefined),
      "memory cache": Effect.flatMap(
        Layer.build(ResponseCache.layerMemory({ name: "bench-batch-memory" })),
        (context) => batch(Context.get(context, ResponseCache.ResponseCache))
      )
    }
    if (url !== undefined) {
      // A fresh prefix every round: each round starts with an empty cache.
      variants["Redis cache"] = Effect.suspend(() =>
        Effect.flatMap(
          Layer.build(
            RedisCache.layerRedis({
              name: "bench-batch-redis",
              prefix: `batch-${Math.random().toString(36).slice(2)}`
            }).pipe(Layer.provide(Redis.layer({ url })))
          ),
          (context) => batch(Context.get(context, ResponseCache.ResponseCache))
        )
      )
    }
    const runs: Record<string, Array<{ wall: number; calls: number }>> = {}
    for (let round = 0; round <= ROUNDS; round++) {
      for (const [name, run] of Object.entries(variants)) {
        const result = yield* Effect.scoped(run)
        if (round > 0) (runs[name] ??= []).push(result)
      }
    }
    row(["variant", "median wall time", "best", "provider calls (each round)"])
    row(["---", "---:", "---:", "---:"])
    for (const [name, r] of Object.entries(runs)) {
      row([
        name,
        `${median(r.map((x) => x.wall)).toFixed(0)} ms`,
        `${Math.min(...r.map((x) => x.wall)).toFixed(0)} ms`,
        [...new Set(r.map((x) => x.calls))].join(", ")
      ])
    }
  })

const partD = (url: string) =>
  Effect.gen(function* () {
    console.log("\nD. Delays handed out for a burst of 3,600 requests at 3,500 per minute (not a timing)\n")
    const redis = Redis.layer({ url })
    const stores: Record<string, Layer.Layer<RateLimiter.RateLimiterStore, unknown>> = {
      "memory (effect's layerStoreMemory)": RateLimiter.layerStoreMemory,
      "Redis, effect's layerStoreRedis": RateLimiter.layerStoreRedis({ prefix: "bench-effect:" }).pipe(
        Layer.provide(redis)
      ),
      "Redis, RateLimit/Redis.ts": RateLimitRedis.layerStore({ prefix: "bench-ours:" }).pipe(Layer.provide(redis))
    }
    row(["store", "1st", "2nd", "1,000th", "3,500th", "3,501st", "delayed within the first 3,500"])
    row(["---", "---:", "---:", "---:", "---:", "---:", "---:"])
    for (const [name, store] of Object.entries(stores)) {
      const limiter = Context.get(
        yield* Layer.build(RateLimiter.layer.pipe(Layer.provide(store))),
        RateLimiter.RateLimiter
      )
      const delays = yield* Effect.forEach(
        Array.from({ length: 3600 }),
        () =>
          Effect.map(limiter.consume({ key: "burst", limit: 3500, window: "1 minute", onExceeded: "delay" }), (r) =>
            Duration.toMillis(r.delay)
          ),
        { concurrency: 20 }
      )
      const ms = (x: number) => `${x.toFixed(x < 10 ? 2 : 0)} ms`
      row([
        name,
        ms(delays[0]!),
        ms(delays[1]!),
        ms(delays[999]!),
        ms(delays[3499]!),
        ms(delays[3500]!),
        delays.slice(0, 3500).filter((d) => d >= 0.01).length
      ])
    }
  })

const program = Effect.gen(function* () {
  const os = yield* Effect.promise(() => import("node:os"))
  console.log(
    `node ${process.version}, ${os.cpus().length} cores, load average ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(" ")}`
  )
  yield* partA
  if (redisServerPath === undefined) {
    console.log("\nB, C (Redis): skipped: redis-server is not installed (apt-get install -y redis-server)")
    yield* partC(undefined)
  } else {
    const server = yield* startRedis
    yield* partB(server.url)
    yield* partC(server.url)
    yield* partD(server.url)
  }
  console.log(
    `\nload average at the end ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(" ")}`
  )
}).pipe(
  Effect.scoped,
  Effect.map(() => Option.none())
)

NodeRuntime.runMain(program)
