/**
 * Batches through the whole manager (`Orchestra.layer` -> `Batch.run`: the shared
 * semaphore, the worker pool, `Router.plan`, the breaker, `executor.run`, progress and
 * per-item results), beside `Effect.forEach` and `p-limit` in the same run, on the Mock
 * provider with a fixed latency as the work.
 *
 *   npx tsx bench/batch.ts                 every part
 *   npx tsx bench/batch.ts --quick         fewer rounds
 *   npx tsx bench/batch.ts --only C        one part (B, C, D or E)
 *
 * tsx compiles with esbuild's `keepNames` (every closure of this repository's code is
 * wrapped in `__name`); for figures as a build would see them, bundle first:
 *
 *   node_modules/.bin/esbuild bench/batch.ts --bundle --platform=node --format=esm \
 *     --packages=external --outfile=.scratch/batch.mjs && node .scratch/batch.mjs
 *
 * B. 2,000 calls of 20 ms at concurrency 100 (ideal 400 ms): efficiency = ideal / wall.
 *    Interleaved rounds in one process, the first one discarded.
 * C. 100,000 calls of 50 ms at concurrency 10,000 (ideal 500 ms): wall time and peak RSS,
 *    one process per variant and round (so each peak RSS is its own).
 * D. A limit shared by many callers: 2,000 callers at once, each with one 20 ms call,
 *    behind a limit of 100, against `Effect.forEach({ concurrency: 100 })` over the same
 *    calls (interleaved rounds); then 100,000 callers at once behind a limit of 10,000,
 *    peak RSS against p-limit (one process per variant).
 * E. Where the cost is, layer by layer: CPU per 20 ms call at concurrency 100 for the timer
 *    alone, the mock, `executor.execute`, `router.execute` and `Batch.run`; and the heap each
 *    call holds while in flight, or each caller while queued (a full GC before each reading,
 *    children run with `--expose-gc`).
 */
import { Context, Duration, Effect, Exit, Fiber, Layer, Metric, Scope, Semaphore, Stream } from "effect"
import { spawnSync } from "node:child_process"
import { cpus, loadavg } from "node:os"
import { fileURLToPath } from "node:url"
import pLimit from "p-limit"
import * as Batch from "../src/Batch.js"
import type { Domain } from "../src/Domain.js"
import { Executor } from "../src/Executor.js"
import { ModelProvider } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { Router } from "../src/Router.js"
import { median, printTable } from "./util.js"

const quick = process.argv.includes("--quick")
const onlyIndex = process.argv.indexOf("--only")
const only = onlyIndex >= 0 ? process.argv[onlyIndex + 1] : undefined

const sleepP = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))
const prompts = (n: number): ReadonlyArray<string> => Array.from({ length: n }, (_, i) => `q${i}`)
const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(" ")

interface Manager {
  readonly batch: Batch.Service
  readonly executor: Executor["Service"]
  readonly router: Router["Service"]
  readonly mock: ModelProvider["Service"]
  readonly latencyMs: number
  readonly close: Effect.Effect<void>
}

/**
 * A provider that is only a timer and a constant answer: the work `p-limit + setTimeout`
 * and `bench/overhead.ts` part C measure, so the manager's own cost is compared with
 * theirs (the Mock provider's bookkeeping costs more than the orchestration around it).
 */
const timerProvider = (latencyMs: number): ModelProvider["Service"] => {
  const answer = {
    text: "ok",
    finishReason: "stop",
    usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
    provider: "p",
    model: "timer"
  } as const
  return {
    name: "p",
    defaultModel: "timer",
    generate: () => Effect.as(Effect.sleep(Duration.millis(latencyMs)), answer),
    stream: () => Stream.die("not used"),
    embed: () => Effect.die("not used")
  }
}

/** The whole manager over one provider (`p`, domain `bench`; the Mock unless `timer`), default breakers on. */
const manager = (latencyMs: number, maxConcurrent: number, provider_: "mock" | "timer" = "mock") =>
  Effect.gen(function* () {
    const domains: ReadonlyArray<Domain> = [{ name: "bench", provider: "p" }]
    const scope = yield* Scope.make()
    const provider =
      provider_ === "timer"
        ? timerProvider(latencyMs)
        : (yield* Mock.make({ name: "p", latency: Duration.millis(latencyMs) })).provider
    const context = yield* Layer.buildWithScope(
      Orchestra.layer({ providers: { p: Layer.succeed(ModelProvider, provider) }, domains, maxConcurrent }),
      scope
    ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
    return {
      batch: Context.get(context, Batch.Batch),
      executor: Context.get(context, Executor),
      router: Context.get(context, Router),
      mock: provider,
      latencyMs,
      close: Scope.close(scope, Exit.void)
    } satisfies Manager
  })

const timed = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.gen(function* () {
    const start = performance.now()
    const value = yield* effect
    return { ms: performance.now() - start, value }
  })

const withManager = (
  latencyMs: number,
  maxConcurrent: number,
  f: (m: Manager) => Effect.Effect<number, unknown>,
  provider: "mock" | "timer" = "mock"
) =>
  Effect.runPromise(
    Effect.gen(function* () {
      const m = yield* manager(latencyMs, maxConcurrent, provider)
      const ms = yield* f(m)
      yield* m.close
      return ms
    }) as Effect.Effect<number>
  )

const allSucceeded = (result: Batch.BatchResult, n: number) =>
  result.results.length === n && result.results.every((r) => r.status === "success")

const check = (ok: boolean, what: string) => (ok ? Effect.void : Effect.die(new Error(`bad run: ${what}`)))

// ---------------------------------------------------------------- B
const partB = async () => {
  const n = 2_000
  const concurrency = 100
  const ideal = (n / concurrency) * 20
  const list = prompts(n)
  const rounds = quick ? 4 : 8
  const variants: Record<string, () => Promise<number>> = {
    "Batch.run, domain": () =>
      withManager(20, concurrency, (m) =>
        Effect.gen(function* () {
          const { ms, value } = yield* timed(m.batch.run(list, { domain: "bench" }))
          yield* check(allSucceeded(value, n), "B domain")
          return ms
        })
      ),
    "Batch.run, domain, onProgress": () =>
      withManager(20, concurrency, (m) =>
        Effect.gen(function* () {
          let events = 0
          const { ms, value } = yield* timed(m.batch.run(list, { domain: "bench", onProgress: () => events++ }))
          yield* check(allSucceeded(value, n) && events === 2 * n, "B progress")
          return ms
        })
      ),
    "Batch.run, no domain (executor's provider)": () =>
      withManager(20, concurrency, (m) =>
        Effect.gen(function* () {
          const { ms, value } = yield* timed(m.batch.run(list))
          yield* check(allSucceeded(value, n), "B no domain")
          return ms
        })
      ),
    "Batch.stream, domain, every event consumed": () =>
      withManager(20, concurrency, (m) =>
        Effect.gen(function* () {
          let events = 0
          const { ms } = yield* timed(
            Stream.runForEach(m.batch.stream(list, { domain: "bench" }), () => Effect.sync(() => events++))
          )
          yield* check(events === 2 * n + 1, "B stream")
          return ms
        })
      ),
    "Effect.forEach over router.execute (no Batch)": () =>
      withManager(20, concurrency, (m) =>
        Effect.map(
          timed(
            Effect.forEach(list, (prompt) => Effect.result(m.router.execute({ prompt }, "bench")), { concurrency })
          ),
          ({ ms }) => ms
        )
      ),
    "Effect.forEach over the mock's generate (no pipeline)": () =>
      withManager(20, concurrency, (m) =>
        Effect.map(
          timed(Effect.forEach(list, (prompt) => Effect.result(m.mock.generate({ prompt })), { concurrency })),
          ({ ms }) => ms
        )
      ),
    "p-limit + setTimeout(20)": async () => {
      const limit = pLimit(concurrency)
      const start = performance.now()
      await Promise.all(list.map(() => limit(() => sleepP(20))))
      return performance.now() - start
    }
  }
  const samples = new Map<string, Array<{ readonly ms: number; readonly cpuMs: number }>>()
  for (let round = 0; round < rounds; round++) {
    for (const [name, run] of Object.entries(variants)) {
      const cpu = process.cpuUsage()
      const ms = await run()
      const used = process.cpuUsage(cpu)
      if (round > 0) samples.set(name, [...(samples.get(name) ?? []), { ms, cpuMs: (used.user + used.system) / 1000 }])
    }
  }
  const rows = [...samples].map(([name, s]) => {
    const m = median(s.map((x) => x.ms))
    const cpu = median(s.map((x) => x.cpuMs))
    return [
      name,
      m.toFixed(0),
      Math.min(...s.map((x) => x.ms)).toFixed(0),
      ((cpu * 1000) / n).toFixed(1),
      (ideal / m).toFixed(3)
    ]
  })
  printTable(
    `B. ${n.toLocaleString()} calls of 20 ms at concurrency ${concurrency} (ideal ${ideal} ms), median of ${rounds - 1} interleaved rounds`,
    ["variant", "median ms", "best ms", "CPU µs/call", "efficiency"],
    rows
  )
}

// ---------------------------------------------------------------- C and D (memory): one process per variant
interface ChildResult {
  readonly ms: number
  readonly cpuMs: number
  readonly rssMb: number
}

const report = (ms: number, cpu: NodeJS.CpuUsage) => {
  const used = process.cpuUsage(cpu)
  const result: ChildResult = {
    ms,
    cpuMs: (used.user + used.system) / 1000,
    rssMb: process.resourceUsage().maxRSS / 1024
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
}

const childVariants: Record<string, () => Promise<number>> = {
  // C: one batch of 100k items at concurrency 10,000
  "C Batch.run, domain": () =>
    withManager(50, 10_000, (m) =>
      Effect.gen(function* () {
        const list = prompts(100_000)
        const { ms, value } = yield* timed(m.batch.run(list, { domain: "bench" }))
        yield* check(allSucceeded(value, 100_000), "C domain")
        return ms
      })
    ),
  "C Batch.run, domain, a provider that is only a timer": () =>
    withManager(
      50,
      10_000,
      (m) =>
        Effect.gen(function* () {
          const list = prompts(100_000)
          const { ms, value } = yield* timed(m.batch.run(list, { domain: "bench" }))
          yield* check(allSucceeded(value, 100_000), "C domain timer")
          return ms
        }),
      "timer"
    ),
  "C Batch.run, domain, onProgress": () =>
    withManager(50, 10_000, (m) =>
      Effect.gen(function* () {
        const list = prompts(100_000)
        let events = 0
        const { ms, value } = yield* timed(m.batch.run(list, { domain: "bench", onProgress: () => events++ }))
        yield* check(allSucceeded(value, 100_000) && events === 200_000, "C progress")
        return ms
      })
    ),
  "C Batch.run, no domain": () =>
    withManager(50, 10_000, (m) =>
      Effect.gen(function* () {
        const list = prompts(100_000)
        const { ms, value } = yield* timed(m.batch.run(list))
        yield* check(allSucceeded(value, 100_000), "C no domain")
        return ms
      })
    ),
  "C Effect.forEach over router.execute": () =>
    withManager(50, 10_000, (m) =>
      Effect.map(
        timed(
          Effect.forEach(prompts(100_000), (prompt) => Effect.result(m.router.execute({ prompt }, "bench")), {
            concurrency: 10_000
          })
        ),
        ({ ms }) => ms
      )
    ),
  "C Effect.forEach over the mock's generate": () =>
    withManager(50, 10_000, (m) =>
      Effect.map(
        timed(
          Effect.forEach(prompts(100_000), (prompt) => Effect.result(m.mock.generate({ prompt })), {
            concurrency: 10_000
          })
        ),
        ({ ms }) => ms
      )
    ),
  "C p-limit + the mock's generate (runPromise)": async () => {
    const { provider } = await Effect.runPromise(Mock.make({ name: "p", latency: Duration.millis(50) }))
    const limit = pLimit(10_000)
    const start = performance.now()
    await Promise.all(prompts(100_000).map((prompt) => limit(() => Effect.runPromise(provider.generate({ prompt })))))
    return performance.now() - start
  },
  "C p-limit + setTimeout(50)": async () => {
    const limit = pLimit(10_000)
    const start = performance.now()
    await Promise.all(prompts(100_000).map(() => limit(() => sleepP(50))))
    return performance.now() - start
  },
  // D (memory): 100k callers at once behind a limit of 10,000
  "D p-limit(10,000) + setTimeout(50)": async () => {
    const limit = pLimit(10_000)
    const start = performance.now()
    await Promise.all(prompts(100_000).map(() => limit(() => sleepP(50))))
    return performance.now() - start
  },
  "D p-limit(10,000) around the mock (runPromise)": async () => {
    const { provider } = await Effect.runPromise(Mock.make({ name: "p", latency: Duration.millis(50) }))
    const limit = pLimit(10_000)
    const start = performance.now()
    await Promise.all(prompts(100_000).map((prompt) => limit(() => Effect.runPromise(provider.generate({ prompt })))))
    return performance.now() - start
  },
  "D a fiber per caller, Semaphore(10,000) around the mock": () =>
    withManager(50, 10_000, (m) =>
      Effect.gen(function* () {
        const permits = yield* Semaphore.make(10_000)
        const { ms } = yield* timed(
          Effect.forEach(prompts(100_000), (prompt) => permits.withPermit(Effect.result(m.mock.generate({ prompt }))), {
            concurrency: "unbounded"
          })
        )
        return ms
      })
    ),
  "D a fiber per caller, Semaphore(10,000) around router.execute": () =>
    withManager(50, 10_000, (m) =>
      Effect.gen(function* () {
        const permits = yield* Semaphore.make(10_000)
        const { ms } = yield* timed(
          Effect.forEach(
            prompts(100_000),
            (prompt) => permits.withPermit(Effect.result(m.router.execute({ prompt }, "bench"))),
            { concurrency: "unbounded" }
          )
        )
        return ms
      })
    ),
  "D a fiber per caller, one Batch.run([item]) each (maxConcurrent 10,000)": () =>
    withManager(50, 10_000, (m) =>
      Effect.gen(function* () {
        const { ms, value } = yield* timed(
          Effect.forEach(prompts(100_000), (prompt) => m.batch.run([prompt], { domain: "bench" }), {
            concurrency: "unbounded"
          })
        )
        yield* check(
          value.every((r) => allSucceeded(r, 1)),
          "D callers"
        )
        return ms
      })
    )
}

const inChildren = (title: string, prefix: string, ideal: number) => {
  const self = fileURLToPath(import.meta.url)
  const names = Object.keys(childVariants).filter((name) => name.startsWith(prefix))
  const rounds = quick ? 1 : 3
  const runs = new Map<string, Array<ChildResult>>()
  for (let round = 0; round < rounds; round++) {
    for (const name of names) {
      const args = self.endsWith(".ts") ? ["--import", "tsx", self, "--child", name] : [self, "--child", name]
      const child = spawnSync(process.execPath, args, { encoding: "utf8", maxBuffer: 1 << 24 })
      if (child.status !== 0) throw new Error(`${name} failed: ${child.stderr}`)
      const last = child.stdout.trim().split("\n").pop()!
      runs.set(name, [...(runs.get(name) ?? []), JSON.parse(last) as ChildResult])
    }
  }
  const rows = names.map((name) => {
    const r = runs.get(name)!
    const ms = median(r.map((x) => x.ms))
    return [
      name.slice(2),
      ms.toFixed(0),
      median(r.map((x) => x.cpuMs)).toFixed(0),
      median(r.map((x) => x.rssMb)).toFixed(0),
      (ideal / ms).toFixed(2)
    ]
  })
  printTable(
    `${title}, median of ${rounds} (one process per run)`,
    ["variant", "wall ms", "CPU ms", "peak RSS MB", "efficiency"],
    rows
  )
}

// ---------------------------------------------------------------- D (time): in one process
const partDTime = async () => {
  const n = 2_000
  const limit = 100
  const ideal = (n / limit) * 20
  const list = prompts(n)
  const rounds = quick ? 4 : 8
  const variants: Record<string, () => Promise<number>> = {
    "2,000 callers at once, one Batch.run each (shared limit 100)": () =>
      withManager(20, limit, (m) =>
        Effect.gen(function* () {
          const { ms, value } = yield* timed(
            Effect.forEach(list, (prompt) => m.batch.run([prompt], { domain: "bench" }), { concurrency: "unbounded" })
          )
          yield* check(
            value.every((r) => allSucceeded(r, 1)),
            "D callers"
          )
          return ms
        })
      ),
    "2,000 callers at once, Semaphore(100) around router.execute": () =>
      withManager(20, limit, (m) =>
        Effect.gen(function* () {
          const permits = yield* Semaphore.make(limit)
          const fibers = yield* Effect.forEach(list, (prompt) =>
            Effect.forkChild(permits.withPermit(Effect.result(m.router.execute({ prompt }, "bench"))))
          )
          const start = performance.now()
          yield* Fiber.joinAll(fibers)
          return performance.now() - start
        })
      ),
    "Effect.forEach({ concurrency: 100 }) over router.execute": () =>
      withManager(20, limit, (m) =>
        Effect.map(
          timed(
            Effect.forEach(list, (prompt) => Effect.result(m.router.execute({ prompt }, "bench")), {
              concurrency: limit
            })
          ),
          ({ ms }) => ms
        )
      ),
    "Effect.forEach({ concurrency: 100 }) over the mock's generate": () =>
      withManager(20, limit, (m) =>
        Effect.map(
          timed(Effect.forEach(list, (prompt) => Effect.result(m.mock.generate({ prompt })), { concurrency: limit })),
          ({ ms }) => ms
        )
      )
  }
  const samples = new Map<string, Array<number>>()
  for (let round = 0; round < rounds; round++) {
    for (const [name, run] of Object.entries(variants)) {
      const ms = await run()
      if (round > 0) samples.set(name, [...(samples.get(name) ?? []), ms])
    }
  }
  const base = median(samples.get("Effect.forEach({ concurrency: 100 }) over router.execute")!)
  printTable(
    `D. ${n.toLocaleString()} calls of 20 ms behind a limit of ${limit} (ideal ${ideal} ms), median of ${rounds - 1} interleaved rounds`,
    ["variant", "median ms", "best ms", "efficiency", "vs forEach over router.execute"],
    [...samples].map(([name, s]) => [
      name,
      median(s).toFixed(0),
      Math.min(...s).toFixed(0),
      (ideal / median(s)).toFixed(3),
      (median(s) / base).toFixed(3)
    ])
  )
}

// ---------------------------------------------------------------- E: the cost layer by layer
const layers = (m: Manager, list: ReadonlyArray<string>, concurrency: number) => {
  const each = <A, E>(f: (prompt: string) => Effect.Effect<A, E>) =>
    Effect.forEach(list, (prompt) => Effect.result(f(prompt)), { concurrency, discard: true })
  return {
    "Effect.sleep alone (the timer)": each(() => Effect.sleep(Duration.millis(m.latencyMs))),
    "the mock's generate": each((prompt) => m.mock.generate({ prompt })),
    "executor.execute (deadline, breaker, metrics)": each((prompt) => m.executor.execute({ prompt })),
    "router.execute (+ the domain's plan)": each((prompt) => m.router.execute({ prompt }, "bench")),
    "Batch.run, domain (+ permit, progress state, result)": m.batch.run(list, { domain: "bench" }),
    "Batch.run, no domain": m.batch.run(list)
  } as Record<string, Effect.Effect<unknown, unknown>>
}

const partECpu = async () => {
  const n = 6_000
  const concurrency = 100
  const rounds = quick ? 4 : 8
  const list = prompts(n)
  const samples = await Effect.runPromise(
    Effect.gen(function* () {
      const m = yield* manager(20, concurrency)
      const out = new Map<string, Array<number>>()
      for (let round = 0; round < rounds; round++) {
        for (const [name, run] of Object.entries(layers(m, list, concurrency))) {
          const cpu = process.cpuUsage()
          yield* Effect.ignore(run)
          const used = process.cpuUsage(cpu)
          if (round > 0) out.set(name, [...(out.get(name) ?? []), (used.user + used.system) / n])
        }
      }
      yield* m.close
      return out
    })
  )
  printTable(
    `E1. CPU per call, ${n.toLocaleString()} calls of 20 ms at concurrency ${concurrency}, median of ${rounds - 1} interleaved rounds (one manager)`,
    ["what runs per call", "CPU µs/call"],
    [...samples].map(([name, s]) => [name, median(s).toFixed(1)])
  )
}

const heapVariants: Record<string, () => Promise<number>> = {
  ...Object.fromEntries(
    [
      "Effect.sleep alone (the timer)",
      "the mock's generate",
      "executor.execute (deadline, breaker, metrics)",
      "router.execute (+ the domain's plan)",
      "Batch.run, domain (+ permit, progress state, result)"
    ].map((name) => [`in flight: ${name}`, () => heldBy(10_000, (m, list) => layers(m, list, 10_000)[name]!)])
  ),
  "queued: p-limit + setTimeout": async () => {
    gc()
    const before = process.memoryUsage().heapUsed
    const limit = pLimit(10_000)
    void Promise.all(prompts(100_000).map(() => limit(() => sleepP(5_000))))
    await sleepP(1_500)
    gc()
    return (process.memoryUsage().heapUsed - before) / 100_000
  },
  "queued: a fiber per caller on Semaphore(10,000), Effect.sleep": () =>
    heldBy(100_000, (_m, list) =>
      Effect.flatMap(Semaphore.make(10_000), (permits) =>
        Effect.forEach(list, () => permits.withPermit(Effect.sleep(5_000)), { concurrency: "unbounded" })
      )
    ),
  "queued: a fiber per caller, one Batch.run([item]) each": () =>
    heldBy(100_000, (m, list) =>
      Effect.forEach(list, (prompt) => m.batch.run([prompt], { domain: "bench" }), { concurrency: "unbounded" })
    ),
  "queued: one Batch.run of all the items (worker pool)": () =>
    heldBy(100_000, (m, list) => m.batch.run(list, { domain: "bench" }))
}

const gc = () => {
  const collect = (globalThis as { gc?: () => void }).gc
  if (collect === undefined) throw new Error("run with --expose-gc")
  collect()
  collect()
}

/**
 * Heap held per caller while `n` callers run 5 s calls behind a limit of 10,000 (after a
 * full GC). The calls are left running (detached; the child process exits): interrupting
 * an `Effect.forEach` whose numeric concurrency is this high never completes on effect
 * 4.1.5 (see docs/benchmarks/batch.md).
 */
const heldBy = (n: number, start: (m: Manager, list: ReadonlyArray<string>) => Effect.Effect<unknown, unknown>) =>
  Effect.runPromise(
    Effect.gen(function* () {
      const m = yield* manager(5_000, 10_000)
      const list = prompts(n)
      gc()
      const before = process.memoryUsage().heapUsed
      yield* Effect.forkDetach(start(m, list))
      yield* Effect.promise(() => sleepP(1_500))
      gc()
      return (process.memoryUsage().heapUsed - before) / n
    })
  )

const partEHeap = () => {
  const self = fileURLToPath(import.meta.url)
  const rows = Object.keys(heapVariants).map((name) => {
    const args = self.endsWith(".ts") ? ["--import", "tsx", self] : [self]
    const child = spawnSync(process.execPath, ["--expose-gc", ...args, "--heap", name], { encoding: "utf8" })
    if (child.status !== 0) throw new Error(`${name} failed: ${child.stderr}`)
    return [name, Number(child.stdout.trim().split("\n").pop()).toFixed(0)]
  })
  printTable(
    "E2. Heap held per call after a full GC: 10,000 calls in flight, or 100,000 callers behind a limit of 10,000 (one process each)",
    ["what", "bytes per call or caller"],
    rows
  )
}

const childIndex = process.argv.indexOf("--child")
const heapIndex = process.argv.indexOf("--heap")
if (heapIndex >= 0) {
  const held = await heapVariants[process.argv[heapIndex + 1]!]!()
  process.stdout.write(`${held}\n`)
  process.exit(0)
} else if (childIndex >= 0) {
  const name = process.argv[childIndex + 1]!
  const cpu = process.cpuUsage()
  const ms = await childVariants[name]!()
  report(ms, cpu)
} else {
  console.log(`node ${process.version}, ${new Date().toISOString()}, ${cpus().length} CPUs, load average ${load()}`)
  if (only === undefined || only === "B") {
    await partB()
    console.log(`\nload average: ${load()}`)
  }
  if (only === undefined || only === "C") {
    inChildren("C. 100,000 calls of 50 ms at concurrency 10,000 (ideal 500 ms)", "C ", 500)
    console.log(`\nload average: ${load()}`)
  }
  if (only === undefined || only === "D") {
    await partDTime()
    inChildren("D. 100,000 callers at once behind a shared limit of 10,000, 50 ms calls (ideal 500 ms)", "D ", 500)
    console.log(`\nload average: ${load()}`)
  }
  if (only === undefined || only === "E") {
    await partECpu()
    partEHeap()
    console.log(`\nload average at the end: ${load()}`)
  }
}
