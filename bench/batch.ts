/**
 * Batches through the whole manager (`Orchestra.layer` -> `Batch.run`: shared FIFO limiter,
 * router, breaker, executor, metrics, progress events), beside p-limit in the same run.
 *
 *   npx tsx bench/batch.ts            both parts
 *   npx tsx bench/batch.ts --quick    fewer rounds
 *
 * Part A: 2,000 calls of 20 ms at concurrency 100 with progress on (ideal 400 ms),
 *         on the scripted mock provider (its per-call bookkeeping included).
 * Part B: 100,000 calls of 50 ms at concurrency 10,000 (ideal 500 ms), on a minimal
 *         provider (`Effect.as(Effect.sleep(50), response)`), each variant in its own
 *         process so that peak RSS is its own.
 */
import { Context, Duration, Effect, Exit, Layer, Scope, Stream } from "effect"
import { spawnSync } from "node:child_process"
import { cpus, loadavg } from "node:os"
import { fileURLToPath } from "node:url"
import pLimit from "p-limit"
import * as Batch from "../src/Batch.js"
import * as Executor from "../src/Executor.js"
import type { Domain } from "../src/Domain.js"
import { type GenerateResponse, ModelProvider, type Service, usage } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { median, printTable } from "./util.js"

const quick = process.argv.includes("--quick")

const response: GenerateResponse = {
  text: "ok",
  finishReason: "stop",
  usage: usage(1, 1),
  provider: "bench",
  model: "bench-model"
}

const minimal = (ms: number): Service => ({
  name: "bench",
  defaultModel: "bench-model",
  generate: () => Effect.as(Effect.sleep(Duration.millis(ms)), response),
  stream: () => Effect.dieMessage("not used") as never,
  embed: () => Effect.dieMessage("not used")
})

const sleepP = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** A manager over one provider; `run` gets its Batch service, the manager is closed afterwards. */
const withManager = async <A>(
  provider: Layer.Layer<ModelProvider>,
  maxConcurrent: number,
  f: (batch: Batch.Service) => Effect.Effect<A, never, Executor.Executor>
): Promise<A> => {
  const domains: ReadonlyArray<Domain> = [{ name: "bench", provider: "p" }]
  return Effect.runPromise(
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Orchestra.layer({ providers: { p: provider }, domains, maxConcurrent }),
        scope
      )
      const result = yield* Effect.provide(f(Context.get(context, Batch.Batch)), context)
      yield* Scope.close(scope, Exit.void)
      return result
    })
  )
}

const items = (n: number): ReadonlyArray<string> => Array.from({ length: n }, (_, i) => `q${i}`)

// ---------------------------------------------------------------- part A
const partA = async () => {
  const n = 2_000
  const concurrency = 100
  const ideal = Math.ceil(n / concurrency) * 20
  const list = items(n)
  const rounds = quick ? 3 : 7
  const rows: Array<Array<string>> = []
  const variants: Record<string, () => Promise<number>> = {
    "Batch.run, domain (router + breaker + executor call), onProgress": () =>
      withManager(Mock.layer({ latency: "20 millis" }), concurrency, (batch) => {
        let events = 0
        return Effect.gen(function* () {
          const start = performance.now()
          const result = yield* batch.run(list, { domain: "bench", onProgress: () => events++ })
          const ms = performance.now() - start
          if (result.results.some((r) => r.status !== "success") || events !== 2 * n) {
            return yield* Effect.dieMessage(`bad run: ${events} events`)
          }
          return ms
        })
      }),
    "Batch.run, no domain (executor pool), onProgress": () =>
      withManager(Mock.layer({ latency: "20 millis" }), concurrency, (batch) => {
        let events = 0
        return Effect.gen(function* () {
          const start = performance.now()
          yield* batch.run(list, { onProgress: () => events++ })
          const ms = performance.now() - start
          if (events !== 2 * n) return yield* Effect.dieMessage(`bad run: ${events} events`)
          return ms
        })
      }),
    "Batch.stream, domain, every event consumed": () =>
      withManager(Mock.layer({ latency: "20 millis" }), concurrency, (batch) =>
        Effect.gen(function* () {
          let events = 0
          const start = performance.now()
          yield* Stream.runForEach(batch.stream(list, { domain: "bench" }), () =>
            Effect.sync(() => {
              events++
            })
          )
          const ms = performance.now() - start
          if (events !== 2 * n + 1) return yield* Effect.dieMessage(`bad run: ${events} events`)
          return ms
        })
      ),
    "executor.executeMany, no Batch (same mock, no progress)": () =>
      withManager(Mock.layer({ latency: "20 millis" }), concurrency, () =>
        Effect.gen(function* () {
          const executor = yield* Executor.Executor
          const start = performance.now()
          yield* executor.executeMany(
            list.map((prompt) => ({ prompt })),
            { concurrency, retry: true }
          )
          return performance.now() - start
        })
      ),
    "Effect.forEach over the mock's generate (no executor)": () =>
      Effect.runPromise(
        Effect.gen(function* () {
          const { provider } = yield* Mock.make({ latency: "20 millis" })
          const start = performance.now()
          yield* Effect.forEach(list, (prompt) => Effect.either(provider.generate({ prompt })), { concurrency })
          return performance.now() - start
        })
      ),
    "Effect.forEach over Effect.sleep(20 ms) (the runtime's floor)": () =>
      Effect.runPromise(
        Effect.gen(function* () {
          const provider = minimal(20)
          const start = performance.now()
          yield* Effect.forEach(list, (prompt) => Effect.either(provider.generate({ prompt })), { concurrency })
          return performance.now() - start
        })
      ),
    "p-limit + setTimeout (no timeout, retry, metrics)": async () => {
      const limit = pLimit(concurrency)
      const start = performance.now()
      let events = 0
      await Promise.all(
        list.map(() =>
          limit(async () => {
            events++
            await sleepP(20)
            events++
          })
        )
      )
      if (events !== 2 * n) throw new Error("bad run")
      return performance.now() - start
    }
  }
  const samples = new Map<string, Array<{ readonly ms: number; readonly cpuMs: number }>>()
  for (let round = 0; round < rounds; round++) {
    for (const [name, run] of Object.entries(variants)) {
      // CPU time includes building and closing the manager (well under a millisecond).
      const cpu = process.cpuUsage()
      const ms = await run()
      const used = process.cpuUsage(cpu)
      const cpuMs = (used.user + used.system) / 1000
      if (round > 0) samples.set(name, [...(samples.get(name) ?? []), { ms, cpuMs }])
    }
  }
  for (const [name, s] of samples) {
    const m = median(s.map((x) => x.ms))
    const best = Math.min(...s.map((x) => x.ms))
    const cpu = median(s.map((x) => x.cpuMs))
    rows.push([
      name,
      m.toFixed(0),
      best.toFixed(0),
      cpu.toFixed(0),
      ((cpu * 1000) / n).toFixed(0),
      (ideal / m).toFixed(3)
    ])
  }
  printTable(
    `A. ${n.toLocaleString()} calls of 20 ms, concurrency ${concurrency} (ideal ${ideal} ms), median of ${rounds - 1} interleaved rounds after a warm-up`,
    ["variant", "median ms", "best ms", "CPU ms", "CPU µs/call", "efficiency"],
    rows
  )
}

// ---------------------------------------------------------------- part B
const partBVariant = async (variant: string) => {
  const n = 100_000
  const concurrency = 10_000
  const list = items(n)
  let ms = 0
  const cpu = process.cpuUsage()
  if (variant.startsWith("orchestra Batch.run")) {
    const domain = variant.includes("no domain") ? undefined : "bench"
    ms = await withManager(Layer.succeed(ModelProvider, minimal(50)), concurrency, (batch) =>
      Effect.gen(function* () {
        let events = 0
        const start = performance.now()
        const result = yield* batch.run(list, { domain, onProgress: () => events++ })
        const elapsed = performance.now() - start
        if (result.results.length !== n || events !== 2 * n || result.results.some((r) => r.status !== "success")) {
          return yield* Effect.dieMessage("bad run")
        }
        return elapsed
      })
    )
  } else if (variant === "p-limit") {
    const start = performance.now()
    const limit = pLimit(concurrency)
    await Promise.all(list.map(() => limit(() => sleepP(50))))
    ms = performance.now() - start
  } else if (variant === "Effect.forEach") {
    const provider = minimal(50)
    const start = performance.now()
    await Effect.runPromise(Effect.forEach(list, (prompt) => provider.generate({ prompt }), { concurrency }))
    ms = performance.now() - start
  }
  const used = process.cpuUsage(cpu)
  const rssMb = process.resourceUsage().maxRSS / 1024
  process.stdout.write(JSON.stringify({ ms, cpuMs: (used.user + used.system) / 1000, rssMb }))
}

const partB = () => {
  const self = fileURLToPath(import.meta.url)
  const rows: Array<Array<string>> = []
  const rounds = quick ? 1 : 3
  const variants = [
    "orchestra Batch.run, no domain (executor pool)",
    "orchestra Batch.run, domain (router, fiber per call)",
    "p-limit",
    "Effect.forEach"
  ]
  const runs = new Map<string, Array<{ ms: number; cpuMs: number; rssMb: number }>>()
  for (let i = 0; i < rounds; i++) {
    for (const variant of variants) {
      const child = spawnSync(process.execPath, ["--import", "tsx", self, "--part-b", variant], { encoding: "utf8" })
      if (child.status !== 0) throw new Error(`part B ${variant} failed: ${child.stderr}`)
      runs.set(variant, [...(runs.get(variant) ?? []), JSON.parse(child.stdout.trim().split("\n").pop()!)])
    }
  }
  for (const variant of variants) {
    const r = runs.get(variant)!
    const ms = median(r.map((x) => x.ms))
    rows.push([
      variant,
      ms.toFixed(0),
      median(r.map((x) => x.cpuMs)).toFixed(0),
      median(r.map((x) => x.rssMb)).toFixed(0),
      (500 / ms).toFixed(2)
    ])
  }
  printTable(
    `B. 100,000 calls of 50 ms, concurrency 10,000 (ideal 500 ms), one process per run, median of ${rounds}`,
    ["variant", "wall ms", "CPU ms", "peak RSS MB", "efficiency"],
    rows
  )
}

const partBIndex = process.argv.indexOf("--part-b")
if (partBIndex >= 0) {
  await partBVariant(process.argv[partBIndex + 1]!)
} else {
  const load = () =>
    loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")
  console.log(`node ${process.version}, ${new Date().toISOString()}, ${cpus().length} CPUs, load average ${load()}`)
  await partA()
  console.log(`\nload average after part A: ${load()}`)
  partB()
  console.log(`\nload average at the end: ${load()}`)
}
