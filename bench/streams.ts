/**
 * Target E: what the streaming pipeline costs over draining the provider's stream directly.
 *
 *   npm run bench -- streams            bundled and run with plain node (bench/run.ts)
 *   npm run bench -- streams --quick    fewer rounds
 *
 * 1,000 concurrent streams of 50 text chunks and a Finish (v0.1's bench/stream.ts workload,
 * where v0.1 measured 2.0x). Two providers: an instant one (51 pre-built one-part chunks, no
 * suspension: the pure cost of the machinery, the worst case for the ratio) and the mock
 * provider pacing its chunks 2 ms apart (a timer wait per chunk, as a network stream has).
 * Beside the direct drain, `executor.stream` with all three deadlines (first chunk, idle,
 * total), the default retry policy and a breaker, and the same without the breaker. Rounds
 * are interleaved in one process, the first discarded; medians of CPU time (user + system).
 */
import { Cause, Channel, Effect, Layer, type Scope, Stream } from "effect"
import { loadavg } from "node:os"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import * as Mock from "../src/Model/Mock.js"
import type { Service, StreamPart } from "../src/Model.js"
import { ModelProvider, usage } from "../src/Model.js"
import { measure, median, printTable } from "./util.js"

const quick = process.argv.includes("--quick")
const STREAMS = 1_000
const CHUNKS = 50

const parts: ReadonlyArray<StreamPart> = [
  ...Array.from({ length: CHUNKS }, (_, i): StreamPart => ({ _tag: "TextDelta", text: `t${i} ` })),
  { _tag: "Finish", finishReason: "stop", usage: usage(1, CHUNKS), provider: "bench", model: "bench-model" }
]

const providerWith = (stream: Service["stream"]): Service => ({
  name: "bench",
  defaultModel: "bench-model",
  generate: () => Effect.die("not used"),
  stream,
  embed: () => Effect.die("not used")
})

const chunks = parts.map((part) => [part] as const)
const ready = providerWith(() => Stream.fromArrays(...chunks))
const text = parts.map((part) => (part._tag === "TextDelta" ? part.text : "")).join("")
// The mock streams its answer word by word: CHUNKS words, 2 ms apart.
const paced = Effect.runSync(Mock.make({ name: "bench", respond: () => text, chunkDelay: "2 millis" })).provider

const deadlines = { firstChunkTimeout: "30 seconds", idleTimeout: "10 seconds", totalTimeout: "2 minutes" } as const
const indices = Array.from({ length: STREAMS }, (_, i) => i)

const direct = (provider: Service) => () =>
  Effect.runPromise(
    Effect.forEach(indices, (i) => Stream.runDrain(provider.stream({ prompt: `q${i}` })), {
      concurrency: "unbounded",
      discard: true
    })
  )

// Effect's own read-ahead: a producer fiber filling a queue the consumer drains, the same
// hand-over between two fibers as the executor's (which reads ahead so that a deadline can
// stop waiting on an upstream without a fiber or a race per chunk). No deadline, no policy.
const buffered = (provider: Service) => () =>
  Effect.runPromise(
    Effect.forEach(
      indices,
      (i) => Stream.runDrain(Stream.buffer(provider.stream({ prompt: `q${i}` }), { capacity: 64 })),
      { concurrency: "unbounded", discard: true }
    )
  )

// The floor of any read-ahead in Effect 4: a producer fiber pulls the provider's stream and hands
// each chunk to the consumer by resuming it, with nothing else (no deadline, no policy, no bound
// on the buffer). A deadline that can stop a wait on the upstream without a fiber or a race per
// chunk needs this second fiber; what the executor costs above this row is its own.
const handedOver = (upstream: Stream.Stream<StreamPart, unknown>): Stream.Stream<StreamPart, unknown> =>
  Stream.fromChannel(
    Channel.fromTransform((_: unknown, scope: Scope.Scope) =>
      Effect.flatMap(Channel.toPullScoped(Stream.toChannel(upstream), scope), (pull) => {
        const buffer: Array<StreamPart> = []
        let done = false
        let wake: ((effect: Effect.Effect<void>) => void) | undefined
        const signal = () => {
          const w = wake
          wake = undefined
          w?.(Effect.void)
        }
        const produce: Effect.Effect<void> = Effect.matchCauseEffect(pull, {
          onSuccess: (chunk) => {
            for (const part of chunk) buffer.push(part)
            signal()
            return produce
          },
          onFailure: () => {
            done = true
            signal()
            return Effect.void
          }
        })
        const wait = Effect.callback<void>((resume) => {
          if (buffer.length > 0 || done) resume(Effect.void)
          else wake = resume
        })
        const take: Effect.Effect<readonly [StreamPart, ...Array<StreamPart>], Cause.Done> = Effect.suspend(() => {
          if (buffer.length > 0)
            return Effect.succeed(buffer.splice(0) as unknown as readonly [StreamPart, ...Array<StreamPart>])
          if (done) return Cause.done()
          return Effect.andThen(wait, take)
        })
        return Effect.as(Effect.forkIn(produce, scope, { startImmediately: true }), take)
      })
    ) as never
  )

const handOver = (provider: Service) => () =>
  Effect.runPromise(
    Effect.forEach(indices, (i) => Stream.runDrain(handedOver(provider.stream({ prompt: `q${i}` }))), {
      concurrency: "unbounded",
      discard: true
    })
  )

const throughExecutor = (provider: Service, breaker: boolean) => () =>
  Effect.runPromise(
    Effect.scoped(
      Effect.flatMap(Executor.Executor, (executor) =>
        Effect.forEach(indices, (i) => Stream.runDrain(executor.stream({ prompt: `q${i}` }, deadlines)), {
          concurrency: "unbounded",
          discard: true
        })
      ).pipe(
        Effect.provide(
          Executor.layerWithStats().pipe(
            Layer.provide(Layer.succeed(ModelProvider, provider)),
            Layer.provide(breaker ? CircuitBreaker.layerMemory() : Layer.empty)
          )
        )
      )
    )
  ) as Promise<unknown>

const groups: ReadonlyArray<{ readonly title: string; readonly variants: Record<string, () => Promise<unknown>> }> = [
  {
    title: "instant provider: 51 one-part chunks, no suspension",
    variants: {
      "provider stream drained directly": direct(ready),
      "reference: Stream.buffer(64), no policy": buffered(ready),
      "floor: a bare hand-over between two fibers": handOver(ready),
      "executor.stream, 3 deadlines + retry + breaker": throughExecutor(ready, true),
      "executor.stream, 3 deadlines + retry, no breaker": throughExecutor(ready, false)
    }
  },
  {
    title: "mock provider, chunks 2 ms apart",
    variants: {
      "provider stream drained directly": direct(paced),
      "reference: Stream.buffer(64), no policy": buffered(paced),
      "floor: a bare hand-over between two fibers": handOver(paced),
      "executor.stream, 3 deadlines + retry + breaker": throughExecutor(paced, true)
    }
  }
]

const main = async () => {
  const rounds = quick ? 3 : 7
  console.log(
    `${STREAMS} concurrent streams x ${CHUNKS} chunks; ${rounds} rounds (first discarded); node ${process.version}; load ${loadavg()[0]!.toFixed(2)}`
  )
  for (const group of groups) {
    const names = Object.keys(group.variants)
    const cpu: Record<string, Array<number>> = Object.fromEntries(names.map((n) => [n, []]))
    const wall: Record<string, Array<number>> = Object.fromEntries(names.map((n) => [n, []]))
    for (let round = 0; round < rounds; round++) {
      for (const name of names) {
        globalThis.gc?.()
        const m = await measure(group.variants[name]!)
        if (round > 0) {
          cpu[name]!.push(m.cpuMs)
          wall[name]!.push(m.wallMs)
        }
      }
    }
    const base = median(cpu[names[0]!]!)
    printTable(
      `E. ${group.title} (load ${loadavg()[0]!.toFixed(2)})`,
      ["variant", "CPU ms", "wall ms", "CPU µs per chunk", "× direct (CPU)"],
      names.map((name) => {
        const c = median(cpu[name]!)
        return [
          name,
          c.toFixed(0),
          median(wall[name]!).toFixed(0),
          ((c * 1000) / (STREAMS * CHUNKS)).toFixed(2),
          (c / base).toFixed(2)
        ]
      })
    )
  }
  console.log("\ntarget E: executor.stream with all three deadlines at most 1.5x the CPU of the direct drain")
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
