/**
 * Circuit breakers side by side in one process, interleaved rounds, medians:
 *
 *   node --expose-gc --import tsx bench/breaker.ts           every part
 *   node --expose-gc --import tsx bench/breaker.ts --quick   fewer rounds
 *
 * tsx compiles with esbuild's `keepNames`, which wraps every closure this repository's code
 * creates in a `__name` call (effect's own code comes precompiled without it): up to a
 * third of a breaker call here. For figures as a build would see them, bundle first:
 *
 *   node_modules/.bin/esbuild bench/breaker.ts --bundle --platform=node --format=esm \
 *     --packages=external --outfile=.scratch/breaker.mjs && node --expose-gc .scratch/breaker.mjs
 *
 * A. 100,000 instant calls at concurrency 64 through a closed breaker (one key): this
 *    library's `execute` (memory) and `admit`/`record`, effect's `CircuitBreaker.execute`, a thin
 *    admit/record on the same memory store, cockatiel; with `Effect.forEach` alone as the floor.
 * B. The same calls refused by an open breaker (the cost of a rejection).
 * C. Heap per key: 10,000 keys in this library's registry (gauge series included) and in
 *    effect's memory store alone.
 * D. With a private `redis-server` (skipped without one): 10,000 calls at concurrency 64 on
 *    the Redis store, ours against effect's `execute`.
 */
import { ConsecutiveBreaker, circuitBreaker, handleAll } from "cockatiel"
import { Context, Duration, Effect, Exit, Layer, Metric, Scope } from "effect"
import * as Store from "effect/persistence/CircuitBreaker"
import { cpus, loadavg } from "node:os"
import { modelError } from "../src/AiError.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Redis from "../src/Redis.js"
import { redisServerPath, startRedis } from "../test/utils/redis.js"

const quick = process.argv.includes("--quick")
const rounds = quick ? 3 : 7
const calls = 100_000
const concurrency = 64
const indices = Array.from({ length: calls }, (_, i) => i)

const median = (xs: ReadonlyArray<number>): number => {
  const sorted = [...xs].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

const table = (title: string, header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: ReadonlyArray<string>) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`
  console.log(`\n${title}\n`)
  console.log(line(header))
  console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`)
  for (const row of rows) console.log(line(row))
}

interface Sample {
  readonly wall: number
  readonly cpu: number
}

const measure = async (f: () => Promise<void>): Promise<Sample> => {
  globalThis.gc?.()
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  await f()
  const wall = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  return { wall, cpu: (cpu.user + cpu.system) / 1000 }
}

/** Runs an Effect program with a scope (and its own metric registry) closed afterwards. */
const scoped = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>): Promise<A> =>
  Effect.runPromise(Effect.scoped(effect).pipe(Effect.provideService(Metric.MetricRegistry, new Map())) as never)

const effectForEach = (call: (i: number) => Effect.Effect<unknown, unknown>) =>
  Effect.forEach(indices, (i) => Effect.ignore(call(i)), { concurrency, discard: true })

const promisePool = async (n: number, call: (i: number) => Promise<unknown>) => {
  let next = 0
  const worker = async () => {
    while (next < n) {
      const i = next++
      try {
        await call(i)
      } catch {
        // refusals are the point of part B
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
}

const failure = modelError("Overloaded", "busy")
const tripPolicy = Store.consecutive(5)

type Variant = (open: boolean) => Promise<void>

const variants: Record<string, Variant> = {
  "Effect.forEach alone (floor)": () => scoped(effectForEach(() => Effect.succeed(1))),
  "ours: Breakers.execute (memory)": (open) =>
    scoped(
      Effect.gen(function* () {
        const breakers = yield* CircuitBreaker.makeMemory({ failMax: 5, resetTimeout: "1 hour" })
        if (open) yield* Effect.repeat(Effect.flip(breakers.execute("p", Effect.fail(failure))), { times: 5 })
        yield* effectForEach(() => breakers.execute("p", Effect.succeed(1)))
      })
    ),
  "ours: Breakers.admit + Permit.record": (open) =>
    scoped(
      Effect.gen(function* () {
        const breakers = yield* CircuitBreaker.makeMemory({ failMax: 5, resetTimeout: "1 hour" })
        if (open) yield* Effect.repeat(Effect.flip(breakers.execute("p", Effect.fail(failure))), { times: 5 })
        yield* effectForEach(() =>
          Effect.scoped(Effect.flatMap(breakers.admit("p"), (permit) => permit.record(Exit.succeed(1))))
        )
      })
    ),
  "effect: CircuitBreaker.make(...).execute": (open) =>
    scoped(
      Effect.gen(function* () {
        const breaker = yield* Store.make({ tripPolicy, openDuration: "1 hour" })
        if (open)
          yield* Effect.ignore(
            Effect.repeat(Effect.flip(breaker.execute(Effect.fail(failure), { key: "p" })), { times: 5 })
          )
        yield* effectForEach(() => breaker.execute(Effect.succeed(1), { key: "p" }))
      }).pipe(Effect.provide(Store.layerStoreMemory()))
    ),
  "thin admit/record on effect's memory store": (open) =>
    scoped(
      Effect.gen(function* () {
        const store = yield* Store.CircuitBreakerStore
        const scope = yield* Effect.scope
        const call = <A, E>(effect: Effect.Effect<A, E>) =>
          Effect.uninterruptibleMask((restore) =>
            Effect.flatMap(Scope.provide(store.admit("p"), scope), (admission) =>
              Effect.onExit(restore(effect), (exit) =>
                Effect.ignore(
                  store.record({
                    key: "p",
                    generation: admission.generation,
                    outcome: Exit.isSuccess(exit) ? "Success" : "Failure",
                    tripPolicy,
                    openFor: Duration.hours(1)
                  })
                )
              )
            )
          )
        if (open) yield* Effect.ignore(Effect.repeat(Effect.flip(call(Effect.fail(failure))), { times: 5 }))
        yield* effectForEach(() => call(Effect.succeed(1)))
      }).pipe(Effect.provide(Store.layerStoreMemory()))
    ),
  "cockatiel: circuitBreaker(...).execute": async (open) => {
    const breaker = circuitBreaker(handleAll, { halfOpenAfter: 3_600_000, breaker: new ConsecutiveBreaker(5) })
    const isolation = open ? breaker.isolate() : undefined
    await promisePool(calls, () => breaker.execute(() => Promise.resolve(1)))
    isolation?.dispose()
  }
}

const runPart = async (title: string, open: boolean) => {
  const samples = new Map<string, Array<Sample>>(Object.keys(variants).map((k) => [k, []]))
  for (const variant of Object.values(variants)) await variant(open) // warm-up
  for (let round = 0; round < rounds; round++) {
    for (const [name, variant] of Object.entries(variants)) {
      samples.get(name)!.push(await measure(() => variant(open)))
    }
  }
  const floor = median(samples.get("Effect.forEach alone (floor)")!.map((s) => s.wall))
  const cpuFloor = median(samples.get("Effect.forEach alone (floor)")!.map((s) => s.cpu))
  table(
    title,
    ["variant", "wall ms", "µs / call", "over the floor", "CPU µs / call", "CPU over the floor"],
    [...samples].map(([name, xs]) => {
      const wall = median(xs.map((s) => s.wall))
      const cpu = median(xs.map((s) => s.cpu))
      const effectful = !name.startsWith("cockatiel") && !name.startsWith("Effect.forEach")
      return [
        name,
        wall.toFixed(0),
        ((wall * 1000) / calls).toFixed(2),
        effectful ? (((wall - floor) * 1000) / calls).toFixed(2) : "-",
        ((cpu * 1000) / calls).toFixed(2),
        effectful ? (((cpu - cpuFloor) * 1000) / calls).toFixed(2) : "-"
      ]
    })
  )
}

const heapPerKey = async () => {
  const keys = 10_000
  const heap = () => {
    globalThis.gc?.()
    globalThis.gc?.()
    return process.memoryUsage().heapUsed
  }
  const ours = await scoped(
    Effect.gen(function* () {
      const breakers = yield* CircuitBreaker.makeMemory({ maxKeys: keys * 2 })
      const before = heap()
      yield* Effect.forEach(indices.slice(0, keys), (i) => breakers.execute(`agent-${i}`, Effect.succeed(1)), {
        discard: true
      })
      return (heap() - before) / keys
    })
  )
  const store = await scoped(
    Effect.gen(function* () {
      const context = yield* Layer.build(Store.layerStoreMemory())
      const memory = Context.get(context, Store.CircuitBreakerStore)
      const scope = yield* Effect.scope
      const before = heap()
      yield* Effect.forEach(indices.slice(0, keys), (i) => Scope.provide(memory.admit(`agent-${i}`), scope), {
        discard: true
      })
      return (heap() - before) / keys
    })
  )
  table(
    `C. Heap per key, ${keys.toLocaleString("en")} keys (gc before and after${globalThis.gc ? "" : ": run with --expose-gc"})`,
    ["registry", "bytes / key"],
    [
      ["ours: registry entry + gauge series + effect's store entry", ours.toFixed(0)],
      ["effect's memory store alone", store.toFixed(0)]
    ]
  )
}

const redisPart = async () => {
  if (redisServerPath === undefined) {
    console.log("\nD. skipped: redis-server is not installed")
    return
  }
  const n = 10_000
  const some = indices.slice(0, n)
  const result = await scoped(
    Effect.gen(function* () {
      const server = yield* startRedis
      const redis = yield* Layer.build(Redis.layer({ url: server.url }))
      const samples: Record<string, Array<number>> = { ours: [], effect: [] }
      const ours = yield* CircuitBreaker.makeRedis({ failMax: 5, prefix: "bench:ours:" }).pipe(Effect.provide(redis))
      const theirs = yield* Store.make({ tripPolicy, openDuration: "1 hour" }).pipe(
        Effect.provide(Store.layerStoreRedis({ prefix: "bench:effect:" })),
        Effect.provide(redis)
      )
      const time = (effect: Effect.Effect<void>) =>
        Effect.gen(function* () {
          const t0 = performance.now()
          yield* effect
          return performance.now() - t0
        })
      for (let round = 0; round < rounds; round++) {
        samples.ours!.push(
          yield* time(
            Effect.forEach(some, () => Effect.ignore(ours.execute("p", Effect.succeed(1))), {
              concurrency,
              discard: true
            })
          )
        )
        samples.effect!.push(
          yield* time(
            Effect.forEach(some, () => Effect.ignore(theirs.execute(Effect.succeed(1), { key: "p" })), {
              concurrency,
              discard: true
            })
          )
        )
      }
      return samples
    })
  )
  table(
    `D. Redis store (private redis-server on loopback), ${n.toLocaleString("en")} calls at concurrency ${concurrency}`,
    ["variant", "wall ms", "µs / call"],
    [
      [
        "ours: Breakers.execute (Redis, guarded)",
        median(result.ours!).toFixed(0),
        ((median(result.ours!) * 1000) / n).toFixed(1)
      ],
      [
        "effect: CircuitBreaker.make(...).execute (layerStoreRedis)",
        median(result.effect!).toFixed(0),
        ((median(result.effect!) * 1000) / n).toFixed(1)
      ]
    ]
  )
}

const main = async () => {
  console.log(
    `Node ${process.version}, ${cpus().length} cores (${cpus()[0]?.model ?? "?"}), load ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}, ${rounds} rounds`
  )
  await runPart(`A. ${calls.toLocaleString("en")} instant calls at concurrency ${concurrency}, closed breaker`, false)
  await runPart(`B. ${calls.toLocaleString("en")} calls refused by an open breaker, concurrency ${concurrency}`, true)
  await heapPerKey()
  await redisPart()
  console.log(
    `\nload after: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`
  )
}

void main()
