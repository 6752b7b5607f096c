/**
 * Quick start: an executor over a mock provider, one call with retries, ten calls five at
 * a time, and the stats table. Runs offline: `npx tsx examples/quickstart.ts`.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Duration, Effect, Layer, Result } from "effect"
import * as Executor from "effect-orchestra/Executor"
import * as Mock from "effect-orchestra/Model/Mock"
import * as Stats from "effect-orchestra/Stats"

// A provider that answers in 200-600 ms, fails now and then with a retryable error, and sometimes hangs.
const Provider = Mock.layer({
  name: "mock",
  seed: 7,
  latency: { uniform: ["200 millis", "600 millis"] },
  random: { success: 0.75, hang: 0.05, failures: { Overloaded: 2, RateLimited: 1, Transport: 1 } }
})

const program = Effect.gen(function* () {
  const executor = yield* Executor.Executor

  const one = yield* executor.executeWithRetry({ prompt: "Summarise the release notes", maxTokens: 64 })
  yield* Console.log(`one call: ${one.text} (${one.provider}/${one.model})`)

  const questions = Array.from({ length: 10 }, (_, i) => ({ prompt: `question ${i + 1}` }))
  const results = yield* executor.executeMany(questions, {
    concurrency: 5,
    retry: true,
    timeout: "1 second",
    onRetry: (info) =>
      Console.log(
        `   attempt ${info.attempt}: ${info.error.message}; retry in ${Math.round(Duration.toMillis(info.delay))} ms`
      )
  })
  for (const [i, result] of results.entries()) {
    yield* Console.log(
      Result.match(result, {
        onSuccess: (answer) => `#${String(i + 1).padStart(2)} ok    ${answer.text}`,
        onFailure: (error) => `#${String(i + 1).padStart(2)} error ${error._tag}: ${error.message}`
      })
    )
  }
  yield* Console.log(Stats.format(yield* executor.stats({ provider: "mock" })))
})

program.pipe(Effect.provide(Executor.layerWithStats().pipe(Layer.provide(Provider))), NodeRuntime.runMain)
