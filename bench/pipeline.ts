/**
 * Pipeline and HTTP-agent benchmark (real time, loopback only).
 *
 *   npx tsx bench/pipeline.ts
 *
 * 1. 10 independent HTTP tasks against a local agent that answers after 100 ms:
 *    `HttpAgent.dispatch` vs one task after the other. Also 50 tasks, where the per-host
 *    limit (10) makes the ideal ceil(50 / 10) x 100 ms.
 * 2. A seeded random 20-step DAG whose steps sleep 20-100 ms: measured parallelism
 *    (sum of step times / wall time) vs the bound sum / critical path, in parallel mode
 *    (unbounded and with concurrency 3) and in sequential mode.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Clock, Effect, Layer } from "effect"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as Pipeline from "../src/Pipeline.js"
import * as AgentServer from "../test/utils/agentServer.js"

const RUNS = 5

const median = (xs: ReadonlyArray<number>): number => {
  const sorted = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const start = yield* Clock.currentTimeMillis
    const value = yield* effect
    return { value, ms: (yield* Clock.currentTimeMillis) - start }
  })

const fmt = (ms: number) => `${ms.toFixed(0)} ms`

const httpTasks = Effect.gen(function* () {
  const server = yield* AgentServer.make((task) => ({ delayMs: 100, ...AgentServer.defaultReply(task) }))
  const agents = yield* HttpAgent.HttpAgents
  const tasks = (n: number) =>
    Array.from(
      { length: n },
      (_, i): HttpAgent.Task => ({ id: `t${i}`, agent: server.url, intent: "lookup", concept: "bench", args: { i } })
    )
  // warm-up: opens the keep-alive connections
  yield* agents.dispatch(tasks(10))

  const rows: Array<string> = []
  for (const n of [10, 50]) {
    const parallel: Array<number> = []
    const sequential: Array<number> = []
    for (let run = 0; run < RUNS; run++) {
      const p = yield* timed(agents.dispatch(tasks(n)))
      if (!p.value.every((r) => r.status === "success")) return yield* Effect.dieMessage("a task failed")
      parallel.push(p.ms)
    }
    if (n === 10) {
      for (let run = 0; run < RUNS; run++) {
        sequential.push((yield* timed(Effect.forEach(tasks(n), (t) => agents.call(t)))).ms)
      }
    }
    const ideal = Math.ceil(n / 10) * 100
    const seq = n === 10 ? median(sequential) : n * 100
    rows.push(
      `| ${n} | ${n === 10 ? fmt(seq) : `(${fmt(seq)} ideal)`} | ${fmt(median(parallel))} (min ${fmt(Math.min(...parallel))}) | ${fmt(ideal)} | ${(seq / median(parallel)).toFixed(1)}x |`
    )
  }
  const stats = yield* agents.connections
  console.log("\n## 1. Independent HTTP tasks (agent answers after 100 ms; limits 100 total / 10 per host)\n")
  console.log(`median of ${RUNS} runs\n`)
  console.log("| tasks | sequential | dispatch | ideal | speed-up |")
  console.log("|---|---|---|---|---|")
  for (const row of rows) console.log(row)
  console.log(`\npeak requests in flight to the agent: ${server.peak()} (limiter peak ${stats.peak})`)
})

/** mulberry32: a small seeded generator, so the DAG is the same on every run. */
const seeded = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const randomDag = (seed: number, size: number) => {
  const next = seeded(seed)
  return Array.from({ length: size }, (_, i) => {
    const deps = new Set<string>()
    const wanted = i === 0 ? 0 : Math.floor(next() * 3)
    for (let k = 0; k < wanted; k++) deps.add(`s${Math.floor(next() * i)}`)
    return { name: `s${i}`, dependsOn: [...deps], sleepMs: 20 + Math.floor(next() * 81) }
  })
}

const dag = Effect.gen(function* () {
  const specs = randomDag(42, 20)
  const pipeline = yield* Pipeline.fromSteps(
    specs.map((s) => ({ name: s.name, dependsOn: s.dependsOn, run: () => Effect.sleep(`${s.sleepMs} millis`) }))
  )
  const planned = specs.reduce((sum, s) => sum + s.sleepMs, 0)
  const finish = new Map<string, number>()
  for (const s of specs) finish.set(s.name, s.sleepMs + Math.max(0, ...s.dependsOn.map((d) => finish.get(d)!)))
  const plannedCritical = Math.max(...finish.values())

  const rows: Array<string> = []
  const configs: ReadonlyArray<readonly [string, Pipeline.RunOptions]> = [
    ["parallel", {}],
    ["parallel, concurrency 3", { concurrency: 3 }],
    ["sequential", { mode: "sequential" }]
  ]
  for (const [label, options] of configs) {
    const results: Array<Pipeline.Result<Record<string, void>, never>> = []
    for (let run = 0; run < RUNS; run++) results.push(yield* Pipeline.run(pipeline, undefined, options))
    const wall = median(results.map((r) => r.wallMs))
    const busy = median(results.map((r) => r.busyMs))
    const critical = median(results.map((r) => r.criticalPathMs))
    const parallelism = median(results.map((r) => r.parallelism))
    rows.push(
      `| ${label} | ${fmt(wall)} | ${fmt(busy)} | ${fmt(critical)} | ${parallelism.toFixed(2)} | ${(busy / critical).toFixed(2)} |`
    )
  }
  console.log(`\n## 2. Random 20-step DAG (seed 42, steps sleep 20-100 ms)\n`)
  console.log(
    `planned: sum of sleeps ${planned} ms, critical path ${plannedCritical} ms, bound ${(planned / plannedCritical).toFixed(2)}; median of ${RUNS} runs\n`
  )
  console.log(
    "| mode | wall | sum of step times | measured critical path | parallelism | bound (sum / critical path) |"
  )
  console.log("|---|---|---|---|---|---|")
  for (const row of rows) console.log(row)
  console.log(`\n\`\`\`mermaid\n${Pipeline.toMermaid(pipeline, { direction: "TD" })}\n\`\`\``)
})

const AgentsLive = HttpAgent.layer().pipe(
  Layer.provide(NodeHttpClient.layerUndici),
  Layer.provide(CircuitBreaker.layer())
)

const main = Effect.gen(function* () {
  console.log(`# bench/pipeline.ts — node ${process.version}, ${process.platform}/${process.arch}`)
  yield* Effect.scoped(httpTasks).pipe(Effect.provide(AgentsLive))
  yield* dag
})

NodeRuntime.runMain(main)
