/**
 * Streaming, fully offline, through the executor's stream pipeline and its three deadlines
 * (`firstChunkTimeout`, `idleTimeout`, `totalTimeout`):
 *
 * 1. the bundled local model (transformers.js) prints its answer token by token;
 * 2. a consumer that leaves after three chunks: the local generation stops between two tokens;
 * 3. a "remote" provider that never sends its first chunk misses `firstChunkTimeout`, is
 *    interrupted, and the local model takes over;
 * 4. a provider that stalls mid-answer trips `idleTimeout`: the typed error carries the text
 *    already delivered, and nothing is restarted;
 * 5. a provider that never stalls but goes on too long is cut by `totalTimeout`.
 *
 *   npx tsx examples/streaming.ts
 *
 * The bundled models have random weights (they exist so that everything runs offline): the
 * words are noise, the streaming is real. Point `Local.make({ generationModel })` at a real
 * model folder for meaningful text (docs/local-model.md).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Clock, Console, Effect, Layer, Stream } from "effect"
import type { AiError } from "effect-orchestra/AiError"
import * as Executor from "effect-orchestra/Executor"
import type { StreamPart } from "effect-orchestra/Model"
import * as Local from "effect-orchestra/Model/Local"
import * as Mock from "effect-orchestra/Model/Mock"
import * as Stats from "effect-orchestra/Stats"

const print = (stream: Stream.Stream<StreamPart, AiError>) =>
  Effect.gen(function* () {
    const start = yield* Clock.currentTimeMillis
    yield* Stream.runForEach(stream, (part) =>
      part._tag === "TextDelta"
        ? Effect.sync(() => process.stdout.write(part.text))
        : part._tag === "Finish"
          ? Effect.flatMap(Clock.currentTimeMillis, (now) =>
              Console.log(
                `\n   [${part.provider}: ${part.finishReason}, ${part.usage.outputTokens} tokens, ${now - start} ms]`
              )
            )
          : Effect.void
    )
  })

// Typed stream failures, printed with what they carry.
const report = (error: AiError) =>
  error._tag === "TimeoutError"
    ? Console.log(`\n   -> TimeoutError(limit: ${error.limit}), partialText: ${JSON.stringify(error.partialText)}`)
    : Console.log(`\n   -> ${error._tag}: ${error.message}`)

const program = Effect.gen(function* () {
  const executor = yield* Executor.Executor
  const stats = yield* Stats.Stats

  yield* Console.log("1. The local model, token by token (first chunk 30 s, idle 5 s, total 60 s):\n")
  yield* print(
    executor.stream(
      { prompt: "In the morning" },
      { firstChunkTimeout: "30 seconds", idleTimeout: "5 seconds", totalTimeout: "60 seconds" }
    )
  )

  yield* Console.log("\n2. A consumer that leaves after three chunks:\n")
  const taken = yield* executor
    .stream({ prompt: "Tell me a long story", maxTokens: 64 })
    .pipe(Stream.take(3), Stream.runCollect)
  const text = taken.map((part) => (part._tag === "TextDelta" ? part.text : "")).join("")
  const local = yield* stats.snapshot({ provider: "local" })
  yield* Console.log(
    `   kept ${taken.length} chunks: ${JSON.stringify(text)}; local streams still running: ${local.inFlight}`
  )

  yield* Console.log("\n3. A remote provider that never answers; first-chunk timeout 1 s, then the local model:\n")
  const stalled = yield* Mock.make({ name: "remote", script: [Mock.Outcome.hang()] })
  yield* print(
    executor.stream(
      { prompt: "The river" },
      { steps: [{ provider: stalled.provider }, { provider: executor.provider }], firstChunkTimeout: "1 second" }
    )
  )
  yield* Console.log(
    `   remote: ${yield* stalled.control.interrupted} call interrupted, ${(yield* stalled.control.inFlight) === 0 ? "none" : "some"} left running`
  )

  yield* Console.log("\n4. A provider that stalls after 4 chunks; idle timeout 500 ms:\n")
  const flaky = yield* Mock.make({
    name: "flaky",
    respond: () => "Streams that stall are typed failures here, never a silent hang.",
    chunkDelay: "80 millis",
    script: [Mock.Outcome.hang({ afterChunks: 4 })]
  })
  yield* print(executor.stream({ prompt: "x" }, { provider: flaky.provider, idleTimeout: "500 millis" })).pipe(
    Effect.catch(report)
  )

  yield* Console.log("\n5. A provider that keeps talking, a chunk every 150 ms; total timeout 1 s:\n")
  const chatty = yield* Mock.make({
    name: "chatty",
    respond: () => "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen",
    chunkDelay: "150 millis"
  })
  yield* print(
    executor.stream({ prompt: "x" }, { provider: chatty.provider, idleTimeout: "500 millis", totalTimeout: "1 second" })
  ).pipe(Effect.catch(report))

  yield* Console.log(`\n${Stats.format(yield* stats.snapshot(), "Streams")}`)
})

const Live = Executor.layerWithStats().pipe(Layer.provideMerge(Local.layer({ maxTokens: 24 })))

program.pipe(Effect.provide(Live), NodeRuntime.runMain)
