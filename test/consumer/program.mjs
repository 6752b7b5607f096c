// A consumer of the published package: plain JavaScript, no TypeScript loader.
import { Effect, Layer, Result } from "effect"
import { Executor, Mock, Stats } from "effect-orchestra"

const program = Effect.gen(function* () {
  const executor = yield* Executor.Executor
  const results = yield* executor.executeMany(
    Array.from({ length: 20 }, (_, i) => ({ prompt: `question ${i + 1}` })),
    { concurrency: 5, retry: true }
  )
  const ok = results.filter(Result.isSuccess).length
  const stats = yield* executor.stats()
  console.log(`consumer: ${ok}/${results.length} answered on node ${process.version}`)
  console.log(Stats.format(stats))
  if (stats.total !== 20 || ok !== 20) throw new Error("unexpected figures")
})

await Effect.runPromise(
  program.pipe(Effect.scoped, Effect.provide(Executor.layerWithStats().pipe(Layer.provide(Mock.layer({ latency: 5 })))))
)
