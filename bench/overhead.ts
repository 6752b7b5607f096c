/**
 * Per-call overhead of the executor beside what a TypeScript user would write instead,
 * measured side by side in one run.
 *
 *   npm run bench -- overhead            all parts, bundled and run with plain node (bench/run.ts)
 *   npm run bench -- overhead --quick    fewer rounds
 *
 * Part A: 100,000 calls to an instant provider at concurrency 64, the full path: a deadline,
 *         a retry policy, a circuit breaker and the metrics.
 * Part B: 2,000 calls of 20 ms at concurrency 100 (ideal 400 ms).
 * Part C: 100,000 calls of 50 ms at concurrency 10,000 (ideal 500 ms), each variant in its
 *         own process so that peak RSS is its own.
 *
 * Wall time and CPU time (user + system of this process) are both reported: on a shared
 * machine wall time also counts other processes' turns, CPU time mostly does not.
 */
import {
  ConsecutiveBreaker,
  circuitBreaker,
  ExponentialBackoff,
  handleAll,
  retry,
  TimeoutStrategy,
  timeout,
  wrap
} from "cockatiel"
import { Duration, Effect, Exit, Layer, Metric, Schedule, Scope } from "effect"
import { CircuitBreaker as EffectBreaker } from "effect/persistence"
import { spawnSync } from "node:child_process"
import { loadavg } from "node:os"
import { fileURLToPath } from "node:url"
import pLimit from "p-limit"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import * as Policy from "../src/Policy.js"
import * as Deadline from "../src/policy/deadline.js"
import type { GenerateRequest, GenerateResponse, Service } from "../src/Model.js"
import { ModelProvider, usage } from "../src/Model.js"
import { measure, median, printTable } from "./util.js"

const quick = process.argv.includes("--quick")
const response: GenerateResponse = {
  text: "ok",
  finishReason: "stop",
  usage: usage(1, 1),
  provider: "bench",
  model: "bench-model"
}

const providerWith = (generate: Service["generate"]): Service => ({
  name: "bench",
  defaultModel: "bench-model",
  generate,
  stream: () => {
    throw new Error("not used")
  },
  embed: () => Effect.die("not used")
})

const instant = providerWith(() => Effect.succeed(response))
const instantAsync = providerWith(() => Effect.as(Effect.yieldNow, response))
const sleeping = (ms: number) => providerWith(() => Effect.as(Effect.sleep(Duration.millis(ms)), response))
const sleepP = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

// The full path: the executor with a shared breaker (picked up from context), its deadline and metrics.
const runExecutor = <A, E>(provider: Service, f: (executor: Executor.Service) => Effect.Effect<A, E>): Promise<A> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.flatMap(Executor.Executor, f).pipe(
        Effect.provide(
          Executor.layerWithStats().pipe(
            Layer.provide(Layer.succeed(ModelProvider, provider)),
            Layer.provide(CircuitBreaker.layerMemory())
          )
        )
      )
    )
  ) as Promise<A>

// An executor built once, as an application builds its layers once, for runs whose setup
// (~1.3 ms) would otherwise be counted in every measured run (part B).
const executorOnce = async (provider: Service) => {
  const scope = Effect.runSync(Scope.make())
  const context = await Effect.runPromise(
    Layer.buildWithScope(
      Executor.layerWithStats().pipe(
        Layer.provide(Layer.succeed(ModelProvider, provider)),
        Layer.provide(CircuitBreaker.layerMemory())
      ),
      scope
    )
  )
  return {
    run: <A, E>(f: (executor: Executor.Service) => Effect.Effect<A, E>): Promise<A> =>
      Effect.runPromise(Effect.flatMap(Executor.Executor, f).pipe(Effect.provide(context))) as Promise<A>,
    close: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

const requests = (n: number): Array<GenerateRequest> => Array.from({ length: n }, (_, i) => ({ prompt: `q${i}` }))

const cockatielPolicy = () =>
  wrap(
    retry(handleAll, { maxAttempts: 2, backoff: new ExponentialBackoff({ initialDelay: 200, maxDelay: 10_000 }) }),
    circuitBreaker(handleAll, { halfOpenAfter: 30_000, breaker: new ConsecutiveBreaker(5) }),
    timeout(30_000, TimeoutStrategy.Aggressive)
  )

const requestsTotal = Metric.withAttributes(Metric.counter("bench_requests_total", { incremental: true }), {
  provider: "bench"
})
const latencyMs = Metric.withAttributes(
  Metric.histogram("bench_latency_ms", {
    boundaries: Metric.exponentialBoundaries({ start: 0.05, factor: 1.1, count: 176 })
  }),
  { provider: "bench" }
)

const perCall = { retry: true, timeout: "30 seconds" } as const

// ---------------------------------------------------------------- part A
const partA = async () => {
  const n = 100_000
  const reqs = requests(n)
  // Each call under a 30 s deadline on the lanes, as the executor's attempts and a provider's requests run.
  const onLanes = (provider: Service) =>
    Effect.runPromise(
      Effect.scoped(
        Effect.flatMap(Deadline.make, (lanes) =>
          Effect.forEach(
            reqs,
            (r) =>
              lanes.attempt(provider.generate(r), Duration.seconds(30), (_: void, exit) => exit as never, undefined),
            { concurrency: 64, discard: true }
          )
        )
      )
    )
  const reference = "p-limit + cockatiel (timeout + retry + breaker)"
  const variants: Record<string, () => Promise<unknown>> = {
    "Effect.forEach (bare)": () =>
      Effect.runPromise(Effect.forEach(reqs, (r) => instant.generate(r), { concurrency: 64, discard: true })),
    "Effect 4 stock: timeout + retry + persistence breaker + Metric.update": () =>
      Effect.runPromise(
        Effect.gen(function* () {
          const breaker = yield* EffectBreaker.make({
            tripPolicy: EffectBreaker.consecutive(5),
            openDuration: "30 seconds"
          })
          const schedule = Schedule.max([Schedule.exponential("200 millis"), Schedule.recurs(2)])
          yield* Effect.forEach(
            reqs,
            (r) =>
              instant.generate(r).pipe(
                Effect.timeout("30 seconds"),
                breaker.execute({ key: "bench" }),
                Effect.retry({ schedule, while: () => true }),
                Effect.tap(() => Metric.update(requestsTotal, 1)),
                Effect.tap(() => Metric.update(latencyMs, 0.1))
              ),
            { concurrency: 64, discard: true }
          )
        }).pipe(Effect.scoped, Effect.provide(EffectBreaker.layerStoreMemory()))
      ),
    "building block: Effect.forEach + Effect.timeout(30 s)": () =>
      Effect.runPromise(
        Effect.forEach(reqs, (r) => Effect.timeout(instant.generate(r), "30 seconds"), {
          concurrency: 64,
          discard: true
        })
      ),
    "building block: Effect.forEach + deadline lanes (ours)": () => onLanes(instant),
    // A call that suspends once (as an HTTP call does): Effect.timeout races it against a sleep (two
    // fibers and a timer); a provider's request timeout runs on the lanes.
    "building block: Effect.forEach + Effect.timeout(30 s), provider suspends once": () =>
      Effect.runPromise(
        Effect.forEach(reqs, (r) => Effect.timeout(instantAsync.generate(r), "30 seconds"), {
          concurrency: 64,
          discard: true
        })
      ),
    "building block: Effect.forEach + deadline lanes (ours), provider suspends once": () => onLanes(instantAsync),
    "building block: Effect.forEach + Effect.retry(Policy.schedule), first attempt succeeds": () =>
      Effect.runPromise(
        Effect.forEach(reqs, (r) => Effect.retry(instant.generate(r), Policy.schedule(Policy.defaultRetry)), {
          concurrency: 64,
          discard: true
        })
      ),
    "p-limit (plain Promises)": () => {
      const limit = pLimit(64)
      return Promise.all(reqs.map((r) => limit(async () => (r ? response : response))))
    },
    [reference]: () => {
      const limit = pLimit(64)
      const policy = cockatielPolicy()
      return Promise.all(reqs.map((r) => limit(() => policy.execute(async () => (r ? response : response)))))
    },
    "orchestra executeMany (deadline + retry + breaker + metrics)": () =>
      runExecutor(instant, (ex) => ex.executeMany(reqs, { concurrency: 64, ...perCall })),
    "orchestra executeMany, no retry policy": () =>
      runExecutor(instant, (ex) => ex.executeMany(reqs, { concurrency: 64, timeout: "30 seconds" })),
    "orchestra executeMany, provider suspends once": () =>
      runExecutor(instantAsync, (ex) => ex.executeMany(reqs, { concurrency: 64, ...perCall })),
    "orchestra execute in Effect.forEach": () =>
      runExecutor(instant, (ex) =>
        Effect.forEach(reqs, (r) => Effect.result(ex.execute(r, perCall)), { concurrency: 64, discard: true })
      ),
    "orchestra execute in Effect.forEach, provider suspends once": () =>
      runExecutor(instantAsync, (ex) =>
        Effect.forEach(reqs, (r) => Effect.result(ex.execute(r, perCall)), { concurrency: 64, discard: true })
      )
  }
  const rounds = quick ? 3 : 7
  const wall = new Map<string, Array<number>>()
  const cpu = new Map<string, Array<number>>()
  for (let round = 0; round < rounds; round++) {
    for (const [name, run] of Object.entries(variants)) {
      const m = await measure(run)
      // round 0 warms the JIT up
      if (round === 0) continue
      wall.set(name, [...(wall.get(name) ?? []), (m.wallMs * 1000) / n])
      cpu.set(name, [...(cpu.get(name) ?? []), (m.cpuMs * 1000) / n])
    }
  }
  const refWall = median(wall.get(reference)!)
  const refCpu = median(cpu.get(reference)!)
  printTable(
    `A. ${n.toLocaleString()} calls, instant provider, concurrency 64 (median of ${rounds - 1} rounds, interleaved)`,
    ["variant", "wall µs/call", "vs (c)", "CPU µs/call", "vs (c)"],
    Array.from(wall.keys()).map((name) => {
      const w = median(wall.get(name)!)
      const c = median(cpu.get(name)!)
      return [name, w.toFixed(2), `${(w / refWall).toFixed(2)}x`, c.toFixed(2), `${(c / refCpu).toFixed(2)}x`]
    })
  )
}

// ---------------------------------------------------------------- part B
const partB = async () => {
  const n = 2_000
  const concurrency = 100
  const ideal = Math.ceil(n / concurrency) * 20
  const reqs = requests(n)
  const rounds = quick ? 4 : 6
  const executor = await executorOnce(sleeping(20))
  const variants: Record<string, () => Promise<unknown>> = {
    "orchestra executeMany (deadline + retry + breaker + metrics)": () =>
      executor.run((ex) => ex.executeMany(reqs, { concurrency, retry: true })),
    "Effect.forEach (bare)": () =>
      Effect.runPromise(Effect.forEach(reqs, (r) => sleeping(20).generate(r), { concurrency, discard: true })),
    "p-limit (plain Promises)": () => {
      const limit = pLimit(concurrency)
      return Promise.all(reqs.map(() => limit(() => sleepP(20))))
    }
  }
  const times = new Map<string, Array<number>>()
  for (let round = 0; round < rounds; round++) {
    for (const [name, run] of Object.entries(variants)) {
      const m = await measure(run)
      // round 0 warms the JIT up
      if (round > 0) times.set(name, [...(times.get(name) ?? []), m.wallMs])
    }
  }
  await executor.close()
  printTable(
    `B. ${n} calls of 20 ms, concurrency ${concurrency} (ideal ${ideal} ms; median and best of ${rounds - 1} rounds after a warm-up round; the executor built once before)`,
    ["variant", "median ms", "efficiency", "best ms", "best efficiency"],
    Array.from(times.entries()).map(([name, t]) => {
      const m = median(t)
      const best = Math.min(...t)
      return [name, m.toFixed(0), (ideal / m).toFixed(3), best.toFixed(0), (ideal / best).toFixed(3)]
    })
  )
}

// ---------------------------------------------------------------- part C
const partCVariants = [
  "orchestra executeMany",
  "orchestra execute in Effect.forEach",
  "Effect.forEach (bare)",
  "p-limit (plain Promises)"
] as const

const partCVariant = async (variant: string) => {
  const n = 100_000
  const concurrency = 10_000
  const reqs = requests(n)
  const provider = sleeping(50)
  const m = await measure(async () => {
    switch (variant) {
      case "orchestra executeMany":
        return runExecutor(provider, (ex) => ex.executeMany(reqs, { concurrency, retry: true }))
      case "orchestra execute in Effect.forEach":
        return runExecutor(provider, (ex) =>
          Effect.forEach(reqs, (r) => Effect.result(ex.execute(r, { retry: true })), { concurrency, discard: true })
        )
      case "Effect.forEach (bare)":
        return Effect.runPromise(Effect.forEach(reqs, (r) => provider.generate(r), { concurrency, discard: true }))
      case "p-limit (plain Promises)": {
        const limit = pLimit(concurrency)
        return Promise.all(reqs.map(() => limit(() => sleepP(50))))
      }
      default:
        throw new Error(`unknown variant ${variant}`)
    }
  })
  const rssMb = process.resourceUsage().maxRSS / 1024
  process.stdout.write(JSON.stringify({ ...m, rssMb }))
}

const partC = () => {
  const self = fileURLToPath(import.meta.url)
  const rounds = quick ? 1 : 3
  const runs = new Map<string, Array<{ wallMs: number; cpuMs: number; rssMb: number }>>()
  // Rounds interleave the variants, so a burst of load from elsewhere hits all of them.
  for (let i = 0; i < rounds; i++) {
    for (const variant of partCVariants) {
      const args = self.endsWith(".ts") ? ["--import", "tsx", self] : [self]
      const child = spawnSync(process.execPath, [...args, "--part-c", variant], { encoding: "utf8" })
      if (child.status !== 0) throw new Error(`part C ${variant} failed: ${child.stderr}`)
      runs.set(variant, [...(runs.get(variant) ?? []), JSON.parse(child.stdout.trim().split("\n").pop()!)])
    }
  }
  printTable(
    `C. 100,000 calls of 50 ms, concurrency 10,000 (ideal 500 ms), one process per run, median of ${rounds}`,
    ["variant", "wall ms", "CPU ms", "peak RSS MB", "efficiency"],
    partCVariants.map((variant) => {
      const r = runs.get(variant)!
      const wall = median(r.map((x) => x.wallMs))
      return [
        variant,
        wall.toFixed(0),
        median(r.map((x) => x.cpuMs)).toFixed(0),
        median(r.map((x) => x.rssMb)).toFixed(0),
        (500 / wall).toFixed(2)
      ]
    })
  )
}

const partCIndex = process.argv.indexOf("--part-c")
if (partCIndex >= 0) {
  await partCVariant(process.argv[partCIndex + 1]!)
} else {
  const load = () =>
    loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")
  console.log(`node ${process.version}, ${new Date().toISOString()}, load average ${load()}`)
  await partA()
  console.log(`\nload average ${load()}`)
  await partB()
  console.log(`\nload average ${load()}`)
  partC()
  console.log(`\nload average ${load()}`)
}
