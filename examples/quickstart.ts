/**
 * Quick start: an executor over a mock provider, one call with retries, ten calls five at
 * a time, and the stats table. Runs offline: `npx tsx examples/quickstart.ts`.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Either, Layer } from "effect"
import { Executor, Mock, Stats } from "effect-orchestra"

// A provider that answers in ~1.5 s and fails now and then with a retryable error.
const Provider = Mock.layer({
  name: "mock",
  latency: { uniform: ["1200 millis", "1800 millis"] },
  random: { seed: 7, succeed: 0.85, fail: { Overloaded: 0.15 } }
})

const program = Effect.gen(function* () {
  const executor = yield* Executor.Executor

  const one = yield* executor.executeWithRetry({ prompt: "Summarise the release notes", maxTokens: 64 })
  yield* Console.log(`one call: ${one.text} (${one.provider}/${one.model})`)

  const questions = Array.from({ length: 10 }, (_, i) => ({ prompt: `question ${i + 1}` }))
  const results = yield* executor.executeMany(questions, { concurrency: 5, retry: true, timeout: "5 seconds" })
  for (const [i, result] of results.entries()) {
    yield* Console.log(
      Either.match(result, {
        onRight: (answer) => `#${i + 1} ok    ${answer.text}`,
        onLeft: (error) => `#${i + 1} error ${error._tag}: ${error.message}`
      })
    )
  }
  yield* Console.log(Stats.format(yield* executor.stats({ provider: "mock" })))
})

program.pipe(Effect.provide(Executor.layerWithStats().pipe(Layer.provide(Provider))), NodeRuntime.runMain)
