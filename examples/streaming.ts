/**
 * Streaming, fully offline:
 *
 * 1. the bundled local model (transformers.js) prints its answer token by token;
 * 2. a "remote" provider that never sends its first chunk misses `firstChunkTimeout`, is
 *    interrupted, and the local model takes over;
 * 3. a provider that stalls mid-answer trips `idleTimeout`: the typed error carries the text
 *    already delivered, and nothing is restarted.
 *
 *   npx tsx examples/streaming.ts
 *
 * The bundled models have random weights (they exist so that everything runs offline): the
 * words are noise, the streaming is real. Point `Local.make({ generationModel })` at a real
 * model folder for meaningful text (docs/local-model.md).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Clock, Console, Effect, Stream } from "effect"
import type { AiError } from "../src/AiError.js"
import * as Local from "../src/Model/Local.js"
import * as Mock from "../src/Model/Mock.js"
import type { StreamPart } from "../src/Model.js"
import * as Stats from "../src/Stats.js"
import * as Streaming from "../src/Streaming.js"

const print = (stream: Stream.Stream<StreamPart, AiError>) =>
  Effect.gen(function* () {
    const start = yield* Clock.currentTimeMillis
    yield* Stream.runForEach(stream, (part) =>
      part._tag === "TextDelta"
        ? Effect.sync(() => process.stdout.write(part.text))
        : Effect.flatMap(Clock.currentTimeMillis, (now) =>
            Console.log(
              `\n   [${part.provider}: ${part.finishReason}, ${part.usage.outputTokens} tokens, ${now - start} ms]`
            )
          )
    )
  })

const program = Effect.gen(function* () {
  const stats = yield* Stats.Stats
  const local = yield* Local.make({ maxTokens: 24 })
  const streaming = Streaming.makeWith({ stats, provider: local })

  yield* Console.log("1. The local model, token by token:\n")
  yield* print(streaming.stream({ prompt: "In the morning" }, { firstChunkTimeout: "30 seconds" }))

  yield* Console.log("\n2. A remote provider that never answers; first-chunk timeout 1 s, then the local model:\n")
  const stalled = yield* Mock.make({ name: "remote", script: [Mock.Outcome.hang()] })
  yield* print(
    streaming.stream(
      { prompt: "The river" },
      {
        steps: [{ provider: stalled.provider }, { provider: local }],
        firstChunkTimeout: "1 second"
      }
    )
  )
  yield* Console.log(`   remote: ${yield* stalled.control.interrupted} call interrupted, none left running`)

  yield* Console.log("\n3. A provider that stalls after 4 chunks; idle timeout 500 ms:\n")
  const flaky = yield* Mock.make({
    name: "flaky",
    respond: () => "Streams that stall are typed failures here, never a silent hang.",
    chunkDelay: "80 millis",
    script: [Mock.Outcome.hang({ afterChunks: 4 })]
  })
  yield* print(streaming.stream({ prompt: "x" }, { provider: flaky.provider, idleTimeout: "500 millis" })).pipe(
    Effect.catchTag("TimeoutError", (error) =>
      Console.log(`\n   -> TimeoutError(limit: ${error.limit}), partialText: ${JSON.stringify(error.partialText)}`)
    )
  )

  yield* Console.log(`\n${Stats.format(yield* stats.snapshot(), "Streams")}`)
})

program.pipe(Effect.scoped, Effect.provide(Stats.layer), NodeRuntime.runMain)
