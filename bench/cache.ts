/**
 * Response-cache benchmark (real time; Redis on a private loopback port).
 *
 *   npx tsx bench/cache.ts
 *
 * 1. Cache-hit latency of `getOrCompute` on a cached key: p50 / p99 / mean in microseconds,
 *    in memory and through Redis (one MGET round trip on loopback).
 * 2. A batch of 1,000 requests, 50% of them repeats (500 distinct prompts, each twice, in a
 *    seeded shuffled order), against a mock provider that answers after 20 ms, with
 *    concurrency 50: no cache vs the memory cache vs Redis. Wall time and provider calls.
 *
 * The Redis parts start their own `redis-server` and are skipped with a message if it is
 * not installed (`apt-get install -y redis-server`).
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Effect, Random } from "effect"
import type { GenerateRequest, GenerateResponse } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as RedisCache from "../src/ResponseCache/Redis.js"
import { redisServerPath, startRedis } from "../test/utils/redis.js"

const HIT_SAMPLES_MEMORY = 20_000
const HIT_SAMPLES_REDIS = 5_000
const WARMUP = 500
const BATCH = 1_000
const CONCURRENCY = 50
const LATENCY = "20 millis"
const RUNS = 5

const percentile = (sorted: ReadonlyArray<number>, p: number): number =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!

const nowMicros = Effect.sync(() => Number(process.hrtime.bigint()) / 1000)

const hitLatency = (cache: ResponseCache.Service, samples: number) =>
  Effect.gen(function* () {
    const { provider } = yield* Mock.make()
    const request: GenerateRequest = { prompt: "cached prompt" }
    const key = ResponseCache.key({ provider: provider.name, request })
    const compute = provider.generate(request)
    yield* cache.getOrCompute(key, compute)
    // Let the cache write land (the answer is delivered before it is written).
    yield* Effect.sleep("50 millis")
    for (let i = 0; i < WARMUP; i++) yield* cache.getOrCompute(key, compute)
    const times: Array<number> = []
    for (let i = 0; i < samples; i++) {
      const start = yield* nowMicros
      const result = yield* cache.getOrComputeDetailed(key, compute)
      times.push((yield* nowMicros) - start)
      if (result.source !== "hit") return yield* Effect.dieMessage(`expected a hit, got ${result.source}`)
    }
    times.sort((a, b) => a - b)
    const mean = times.reduce((s, t) => s + t, 0) / times.length
    return { p50: percentile(times, 50), p99: percentile(times, 99), mean, samples }
  })

const prompts = Effect.gen(function* () {
  const random = Random.make(42)
  const all = Array.from({ length: BATCH }, (_, i) => `question ${i % (BATCH / 2)}`)
  for (let i = all.length - 1; i > 0; i--) {
    const j = yield* random.nextIntBetween(0, i + 1)
    ;[all[i], all[j]] = [all[j]!, all[i]!]
  }
  return all
})

const batch = (cache: ResponseCache.Service | undefined) =>
  Effect.gen(function* () {
    const { control, provider } = yield* Mock.make({ latency: LATENCY })
    const list = yield* prompts
    const call = (prompt: string): Effect.Effect<GenerateResponse, unknown> => {
      const request: GenerateRequest = { prompt }
      const generate = provider.generate(request)
      return cache === undefined
        ? generate
        : cache.getOrCompute(ResponseCache.key({ provider: provider.name, request }), generate)
    }
    const start = yield* nowMicros
    const answers = yield* Effect.forEach(list, call, { concurrency: CONCURRENCY })
    const wallMs = ((yield* nowMicros) - start) / 1000
    if (answers.length !== BATCH) return yield* Effect.dieMessage("lost answers")
    return { wallMs, calls: yield* control.calls }
  })

const us = (x: number) => `${x.toFixed(1)} µs`
const ms = (x: number) => `${x.toFixed(0)} ms`

const program = Effect.gen(function* () {
  const lines: Array<string> = []
  const out = (line: string) => {
    lines.push(line)
    console.log(line)
  }
  out(`node ${process.version}, ${process.platform}/${process.arch}`)
  out("")
  out("| cache hit (getOrCompute on a cached key) | samples | p50 | p99 | mean |")
  out("|---|---:|---:|---:|---:|")
  const memoryHit = yield* Effect.scoped(
    Effect.flatMap(
      Effect.flatMap(ResponseCache.makeMemoryStore({ name: "bench-memory" }), (store) => ResponseCache.make(store)),
      (cache) => hitLatency(cache, HIT_SAMPLES_MEMORY)
    )
  )
  out(`| memory | ${memoryHit.samples} | ${us(memoryHit.p50)} | ${us(memoryHit.p99)} | ${us(memoryHit.mean)} |`)

  const withRedis = <A, E>(use: (cache: ResponseCache.Service) => Effect.Effect<A, E>) =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        const store = yield* RedisCache.makeStore({ url: server.url, name: "bench-redis", timeout: "1 second" })
        const cache = yield* ResponseCache.make(store)
        return yield* use(cache)
      })
    )

  const redisAvailable = redisServerPath !== undefined
  if (redisAvailable) {
    const redisHit = yield* withRedis((cache) => hitLatency(cache, HIT_SAMPLES_REDIS))
    out(`| Redis (loopback) | ${redisHit.samples} | ${us(redisHit.p50)} | ${us(redisHit.p99)} | ${us(redisHit.mean)} |`)
  } else {
    out("| Redis | skipped: redis-server is not installed (apt-get install -y redis-server) | | | |")
  }

  out("")
  out(
    `| ${BATCH} requests, 50% repeats, provider ${LATENCY}, concurrency ${CONCURRENCY} (${RUNS} runs) | median wall time | best | provider calls |`
  )
  out("|---|---:|---:|---:|")
  // Interleaved runs, median and best: the machine is shared, one run is noise.
  const runs: Record<"none" | "memory" | "redis", Array<{ wallMs: number; calls: number }>> = {
    none: [],
    memory: [],
    redis: []
  }
  // Run 0 warms the JIT up and is not counted.
  for (let i = 0; i <= RUNS; i++) {
    const keep = <A>(list: Array<A>, value: A) => {
      if (i > 0) list.push(value)
    }
    keep(runs.none, yield* batch(undefined))
    keep(
      runs.memory,
      yield* Effect.scoped(
        Effect.flatMap(
          Effect.flatMap(ResponseCache.makeMemoryStore({ name: "bench-memory-batch" }), (store) =>
            ResponseCache.make(store)
          ),
          (cache) => batch(cache)
        )
      )
    )
    if (redisAvailable) keep(runs.redis, yield* withRedis((cache) => batch(cache)))
  }
  const row = (label: string, results: ReadonlyArray<{ wallMs: number; calls: number }>) => {
    const times = results.map((r) => r.wallMs).sort((a, b) => a - b)
    const calls = [...new Set(results.map((r) => r.calls))].join(" / ")
    out(`| ${label} | ${ms(percentile(times, 50))} | ${ms(times[0]!)} | ${calls} |`)
  }
  row("no cache", runs.none)
  row("memory cache (single-flight)", runs.memory)
  if (redisAvailable) row("Redis cache (single-flight per process)", runs.redis)
  else out("| Redis cache | skipped: redis-server is not installed (apt-get install -y redis-server) | | |")
  out("")
  out(`ideal without cache: ceil(${BATCH} / ${CONCURRENCY}) x 20 ms = ${Math.ceil(BATCH / CONCURRENCY) * 20} ms`)
})

NodeRuntime.runMain(program)
