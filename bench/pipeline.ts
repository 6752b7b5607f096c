/**
 * Pipeline and HTTP-agent benchmark (real time, loopback only).
 *
 *   npx tsx bench/pipeline.ts
 *
 * 1. 10 independent HTTP tasks against a local agent that answers after 100 ms:
 *    `HttpAgent.dispatch` vs the same tasks one after the other (ideal 10x), and raw
 *    `effect/http` requests all at once (the floor without any policy). Also 50 tasks,
 *    where the per-host limit (10) makes the ideal ceil(50 / 10) x 100 ms. Variants run
 *    interleaved, round after round, in one process.
 * 2. A seeded random 20-step DAG whose steps sleep 20-100 ms: measured parallelism (sum
 *    of step times / wall time) vs the bound sum / critical path, in parallel mode
 *    (unbounded, with concurrency 3, and with every step through the executor's policy
 *    pipeline) and in sequential mode.
 * 3. The scheduler's own cost as a pipeline grows: n and 16n independent instant steps (a
 *    linear scheduler takes ~16 times as long; the sorted array it had took ~87 times), and,
 *    in continue mode, skipping the 300,000 dependents of a failed step in parallel mode
 *    against sequential mode (about as long; the walk it had took ~8 times as long).
 */
import { NodeHttpClient, NodeRuntime } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { HttpClient, HttpClientRequest } from "effect/http"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as Mock from "../src/Model/Mock.js"
import * as Pipeline from "../src/Pipeline.js"
import * as AgentServer from "../test/utils/agentServer.js"
import { median, printTable } from "./util.js"

const ROUNDS = 7
const ms = (n: number) => `${n.toFixed(0)} ms`

const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const cpu0 = process.cpuUsage()
    const start = performance.now()
    const value = yield* effect
    const wall = performance.now() - start
    const cpu = process.cpuUsage(cpu0)
    return { value, wall, cpu: (cpu.user + cpu.system) / 1000 }
  })

const httpTasks = Effect.gen(function* () {
  const server = yield* AgentServer.make((task) => ({ delayMs: 100, ...AgentServer.defaultReply(task) }))
  const agents = yield* HttpAgent.HttpAgents
  const client = yield* HttpClient.HttpClient
  const tasks = (n: number, tag: string) =>
    Array.from(
      { length: n },
      (_, i): HttpAgent.Task => ({
        id: `${tag}${i}`,
        agent: server.url,
        intent: "lookup",
        concept: "bench",
        args: { i }
      })
    )
  const raw = (n: number) =>
    Effect.forEach(
      tasks(n, "r"),
      (task) =>
        client.execute(HttpClientRequest.post(server.url).pipe(HttpClientRequest.bodyJsonUnsafe(task))).pipe(
          Effect.flatMap((response) => response.json),
          Effect.scoped
        ),
      { concurrency: "unbounded" }
    )
  const ok = (records: ReadonlyArray<HttpAgent.TaskRecord>) =>
    records.every((r) => r.status === "success") ? Effect.void : Effect.die("a task failed")
  // warm-up: opens the keep-alive connections
  yield* Effect.flatMap(agents.dispatch(tasks(10, "w")), ok)
  yield* raw(10)

  const variants: ReadonlyArray<readonly [string, number, Effect.Effect<unknown, unknown>]> = [
    [
      "10: one after the other",
      10,
      Effect.flatMap(
        Effect.forEach(tasks(10, "s"), (t) => agents.call(t)),
        ok
      )
    ],
    ["10: HttpAgent.dispatch", 10, Effect.flatMap(agents.dispatch(tasks(10, "p")), ok)],
    ["10: raw effect/http, all at once", 10, raw(10)],
    ["50: HttpAgent.dispatch (10 per host)", 50, Effect.flatMap(agents.dispatch(tasks(50, "q")), ok)]
  ]
  const walls = variants.map(() => [] as Array<number>)
  const cpus = variants.map(() => [] as Array<number>)
  for (let round = 0; round < ROUNDS; round++) {
    for (const [i, [, , run]] of variants.entries()) {
      const { wall, cpu } = yield* timed(run)
      walls[i]!.push(wall)
      cpus[i]!.push(cpu)
    }
  }
  const sequential = median(walls[0]!)
  printTable(
    `## 1. Independent HTTP tasks (agent answers after 100 ms), medians of ${ROUNDS} interleaved rounds`,
    ["variant", "wall", "min", "CPU", "ideal", "speed-up vs one after the other"],
    variants.map(([label, n], i) => {
      const wall = median(walls[i]!)
      const ideal = i === 0 ? n * 100 : Math.ceil(n / 10) * 100
      return [
        label,
        ms(wall),
        ms(Math.min(...walls[i]!)),
        ms(median(cpus[i]!)),
        ms(ideal),
        i === 0 || n !== 10 ? "" : `${(sequential / wall).toFixed(1)}x`
      ]
    })
  )
  const stats = yield* agents.connections
  console.log(`\npeak requests in flight at the agent: ${server.peak()} (limiter peak ${stats.peak})`)
})

/** What one task costs on top of a raw request: 200 calls, one after the other, to an agent that answers at once. */
const perCall = Effect.gen(function* () {
  const server = yield* AgentServer.make()
  const agents = yield* HttpAgent.HttpAgents
  const client = yield* HttpClient.HttpClient
  const N = 200
  const task = (i: number): HttpAgent.Task => ({ id: `c${i}`, agent: server.url, intent: "lookup", concept: "bench" })
  const raw = Effect.forEach(
    Array.from({ length: N }, (_, i) => task(i)),
    (t) =>
      client.execute(HttpClientRequest.post(server.url).pipe(HttpClientRequest.bodyJsonUnsafe(t))).pipe(
        Effect.flatMap((response) => response.json),
        Effect.scoped
      )
  )
  const viaAgent = Effect.forEach(
    Array.from({ length: N }, (_, i) => task(i)),
    (t) => agents.call(t)
  )
  yield* raw
  yield* viaAgent
  const variants: ReadonlyArray<readonly [string, Effect.Effect<unknown, unknown>]> = [
    ["raw effect/http request", raw],
    ["HttpAgent.call", viaAgent]
  ]
  const walls = variants.map(() => [] as Array<number>)
  const cpus = variants.map(() => [] as Array<number>)
  for (let round = 0; round < ROUNDS; round++) {
    for (const [i, [, run]] of variants.entries()) {
      const { wall, cpu } = yield* timed(run)
      walls[i]!.push(wall / N)
      cpus[i]!.push(cpu / N)
    }
  }
  printTable(
    `## 1b. One task at a time to an agent that answers at once (${N} calls, medians of ${ROUNDS} interleaved rounds; the agent runs in this process)`,
    ["variant", "wall per call", "CPU per call"],
    variants.map(([label], i) => [label, `${median(walls[i]!).toFixed(2)} ms`, `${median(cpus[i]!).toFixed(2)} ms`])
  )
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
  const plain = yield* Pipeline.fromSteps(
    specs.map((s) => ({ name: s.name, dependsOn: s.dependsOn, run: () => Effect.sleep(`${s.sleepMs} millis`) }))
  )
  const governed = yield* Pipeline.fromSteps(
    specs.map((s) => ({
      name: s.name,
      dependsOn: s.dependsOn,
      run: () => Effect.sleep(`${s.sleepMs} millis`),
      timeout: "1 second"
    }))
  )
  const planned = specs.reduce((sum, s) => sum + s.sleepMs, 0)
  const finish = new Map<string, number>()
  for (const s of specs) finish.set(s.name, s.sleepMs + Math.max(0, ...s.dependsOn.map((d) => finish.get(d)!)))
  const plannedCritical = Math.max(...finish.values())

  const configs: ReadonlyArray<readonly [string, typeof plain, Pipeline.RunOptions]> = [
    ["parallel", plain, {}],
    ["parallel, every step through the executor", governed, {}],
    ["parallel, concurrency 3", plain, { concurrency: 3 }],
    ["sequential", plain, { mode: "sequential" }]
  ]
  const results = configs.map(() => [] as Array<Pipeline.Result<Record<string, void>, never>>)
  for (let round = 0; round < ROUNDS; round++) {
    for (const [i, [, pipeline, options]] of configs.entries()) {
      results[i]!.push(yield* Pipeline.run(pipeline, undefined, options))
    }
  }
  console.log(
    `\nplanned: sum of sleeps ${planned} ms, critical path ${plannedCritical} ms, bound ${(planned / plannedCritical).toFixed(2)}`
  )
  printTable(
    `## 2. Random 20-step DAG (seed 42, steps sleep 20-100 ms), medians of ${ROUNDS} interleaved rounds`,
    ["mode", "wall", "sum of step times", "measured critical path", "parallelism", "bound (sum / critical path)"],
    configs.map(([label], i) => {
      const rs = results[i]!
      const busy = median(rs.map((r) => r.busyMs))
      const critical = median(rs.map((r) => r.criticalPathMs))
      return [
        label,
        ms(median(rs.map((r) => r.wallMs))),
        ms(busy),
        ms(critical),
        median(rs.map((r) => r.parallelism)).toFixed(2),
        (busy / critical).toFixed(2)
      ]
    })
  )
  console.log(`\n\`\`\`mermaid\n${Pipeline.toMermaid(plain, { direction: "TD" })}\n\`\`\``)
})

const scaling = Effect.gen(function* () {
  const independent = (n: number) =>
    Effect.gen(function* () {
      const steps = Array.from({ length: n }, (_, i) => ({ name: `s${i}`, run: () => Effect.void }))
      const p = yield* Pipeline.fromSteps<undefined, void, never, never>(steps)
      return (yield* timed(Pipeline.run(p, undefined, { concurrency: 4 }))).wall
    })
  const n = 10_000
  const dependents = 300_000
  const failed = yield* Pipeline.fromSteps<undefined, void, string, never>([
    { name: "root", run: () => Effect.fail("down") },
    ...Array.from({ length: dependents }, (_, i) => ({ name: `s${i}`, dependsOn: ["root"], run: () => Effect.void }))
  ])
  const skipping = (mode: "parallel" | "sequential") =>
    Effect.map(timed(Pipeline.run(failed, undefined, { onFailure: "continue", mode })), (t) => t.wall)
  yield* independent(n)
  const rows: Record<string, Array<number>> = { small: [], large: [], parallel: [], sequential: [] }
  for (let round = 0; round < 3; round++) {
    rows.small!.push(yield* independent(n))
    rows.large!.push(yield* independent(16 * n))
    rows.parallel!.push(yield* skipping("parallel"))
    rows.sequential!.push(yield* skipping("sequential"))
  }
  const at = (name: string) => median(rows[name]!)
  printTable(
    "3. The scheduler as a pipeline grows (3 interleaved rounds, medians)",
    ["run", "wall", "ratio"],
    [
      [`${n.toLocaleString("en-US")} independent steps`, ms(at("small")), ""],
      [
        `${(16 * n).toLocaleString("en-US")} independent steps`,
        ms(at("large")),
        `${(at("large") / at("small")).toFixed(1)}× (linear: ~16)`
      ],
      [`${dependents.toLocaleString("en-US")} dependents skipped, sequential mode`, ms(at("sequential")), ""],
      [
        `${dependents.toLocaleString("en-US")} dependents skipped, parallel mode`,
        ms(at("parallel")),
        `${(at("parallel") / at("sequential")).toFixed(2)}× of sequential`
      ]
    ]
  )
})

const ExecutorLive = Executor.layerWithStats({ timeout: "none" }).pipe(
  Layer.provideMerge(Mock.layer()),
  Layer.provideMerge(CircuitBreaker.layerMemory())
)

const AgentsLive = HttpAgent.layer().pipe(
  Layer.provideMerge(ExecutorLive),
  Layer.provideMerge(NodeHttpClient.layerUndici)
)

const main = Effect.gen(function* () {
  console.log(`# bench/pipeline.ts — node ${process.version}, ${process.platform}/${process.arch}`)
  yield* Effect.scoped(httpTasks)
  yield* Effect.scoped(perCall)
  yield* dag
  yield* scaling
})

NodeRuntime.runMain(main.pipe(Effect.provide(AgentsLive)))
