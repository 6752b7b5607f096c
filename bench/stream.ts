/**
 * Per-chunk overhead of `Streaming.stream` (first-chunk + idle + total deadlines on) against
 * consuming the provider's stream directly: 1,000 concurrent streams of 50 text chunks.
 *
 *   npx tsx bench/stream.ts            (ROUNDS=7 STREAMS=1000 CHUNKS=50 by default)
 *
 * Two providers: an instant one (50 pre-built one-part chunks, no suspension: the pure cost
 * of the machinery) and the mock provider pacing chunks 2 ms apart (a real timer wait per
 * chunk, as network streams have; there wall time is mostly the pacing). Overhead and ratio
 * are computed on the process's CPU time, which other processes on a shared machine disturb
 * less than wall time.
 */
import { Chunk, Effect, Layer, Stream } from "effect"
import * as Mock from "../src/Model/Mock.js"
import type { GenerateRequest, Service as ProviderService, StreamPart } from "../src/Model.js"
import * as Stats from "../src/Stats.js"
import * as Streaming from "../src/Streaming.js"
import { median, printTable } from "./util.js"

const ROUNDS = Number(process.env.ROUNDS ?? 7)
const STREAMS = Number(process.env.STREAMS ?? 1000)
const CHUNKS = Number(process.env.CHUNKS ?? 50)

const words = Array.from({ length: CHUNKS }, (_, i) => `w${i} `)
const finish: StreamPart = {
  _tag: "Finish",
  finishReason: "stop",
  usage: { inputTokens: 1, outputTokens: CHUNKS, totalTokens: CHUNKS + 1 },
  provider: "instant",
  model: "instant"
}
const instantChunks = [...words.map((text) => Chunk.of<StreamPart>({ _tag: "TextDelta", text })), Chunk.of(finish)]

const instant: ProviderService = {
  name: "instant",
  defaultModel: "instant",
  generate: () => Effect.die("unused"),
  embed: () => Effect.die("unused"),
  stream: () => Stream.fromChunks(...instantChunks)
}

const request: GenerateRequest = { prompt: "bench" }
const timeouts: Streaming.StreamOptions = {
  firstChunkTimeout: "10 seconds",
  idleTimeout: "10 seconds",
  totalTimeout: "1 minute"
}

interface Sample {
  readonly wallUs: number
  readonly cpuUs: number
}

const measure = (run: () => Stream.Stream<StreamPart, unknown>): Effect.Effect<Sample> =>
  Effect.suspend(() => {
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    return Effect.forEach(Array.from({ length: STREAMS }), () => Effect.ignore(Stream.runDrain(run())), {
      concurrency: "unbounded",
      discard: true
    }).pipe(
      Effect.map(() => {
        const cpu = process.cpuUsage(cpu0)
        const chunks = STREAMS * CHUNKS
        return {
          wallUs: ((performance.now() - t0) * 1000) / chunks,
          cpuUs: (cpu.user + cpu.system) / chunks
        }
      })
    )
  })

const program = Effect.gen(function* () {
  const stats = yield* Stats.Stats
  const paced = yield* Mock.make({
    name: "paced",
    respond: () => words.join(""),
    chunkDelay: "2 millis"
  })
  const streaming = Streaming.makeWith({ stats, provider: instant })

  const cases: ReadonlyArray<readonly [string, string, () => Stream.Stream<StreamPart, unknown>]> = [
    ["instant", "provider stream, direct", () => instant.stream(request)],
    ["instant", "Streaming.stream, 3 deadlines", () => streaming.stream(request, timeouts)],
    [
      "instant",
      "Streaming.stream, no deadlines",
      () => streaming.stream(request, { firstChunkTimeout: "none", idleTimeout: "none", totalTimeout: "none" })
    ],
    ["instant", "Stream.timeout per chunk (reference)", () => Stream.timeout(instant.stream(request), "10 seconds")],
    ["paced 2 ms", "provider stream, direct", () => paced.provider.stream(request)],
    [
      "paced 2 ms",
      "Streaming.stream, 3 deadlines",
      () => streaming.stream(request, { ...timeouts, provider: paced.provider })
    ]
  ]

  // warm-up
  for (const [, , run] of cases) yield* measure(run)
  const samples = cases.map(() => [] as Array<Sample>)
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 0; i < cases.length; i++) samples[i]!.push(yield* measure(cases[i]![2]))
  }

  const wall = samples.map((s) => median(s.map((x) => x.wallUs)))
  const cpu = samples.map((s) => median(s.map((x) => x.cpuUs)))
  const baseline = (provider: string) => cases.findIndex(([p, name]) => p === provider && name.endsWith("direct"))
  const rows = cases.map(([provider, name], i) => {
    const base = baseline(provider)
    const value = cpu[i]!
    const ref = cpu[base]!
    return [
      provider,
      name,
      wall[i]!.toFixed(2),
      cpu[i]!.toFixed(2),
      i === base ? "" : `+${(value - ref).toFixed(2)}`,
      i === base ? "1.00" : (value / ref).toFixed(2)
    ]
  })
  printTable(
    `${STREAMS} concurrent streams × ${CHUNKS} chunks, median of ${ROUNDS} rounds (µs per chunk; overhead and ratio on CPU time)`,
    ["provider", "consumer", "wall µs/chunk", "CPU µs/chunk", "overhead µs/chunk", "ratio"],
    rows
  )
})

Effect.runPromise(program.pipe(Effect.provide(Layer.mergeAll(Stats.layer)))).catch((error) => {
  console.error(error)
  process.exitCode = 1
})
