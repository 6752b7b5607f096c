// A strict TypeScript consumer: type-checked with moduleResolution nodenext and bundler.
import { Effect, Layer, type Result } from "effect"
import { type AiError, Executor, Mock, Orchestra, Router } from "effect-orchestra"
import * as CircuitBreaker from "effect-orchestra/CircuitBreaker"
import * as HttpAgent from "effect-orchestra/HttpAgent"
import * as Pipeline from "effect-orchestra/Pipeline"
import type { GenerateResponse } from "effect-orchestra/Model"

export const answer: Effect.Effect<GenerateResponse, AiError.AiError, Executor.Executor> = Executor.execute({
  prompt: "hello"
})

export const routed = Effect.gen(function* () {
  const router = yield* Router.Router
  const a = yield* router.execute({ prompt: "reset my password" }, "support")
  return `${a.domain}/${a.provider}: ${a.response.text}`
}).pipe(
  Effect.provide(
    Orchestra.layer({ providers: { mock: Mock.layer() }, breakers: { failMax: 3, resetTimeout: "10 seconds" } })
  )
)

export const many = (
  executor: Executor.Service
): Effect.Effect<ReadonlyArray<Result.Result<GenerateResponse, AiError.AiError>>, AiError.ModelError> =>
  executor.executeMany([{ prompt: "a" }], { concurrency: 2 })

export const breakers = CircuitBreaker.layerMemory({ failMax: 5 })
export const layer = Executor.layerWithStats().pipe(Layer.provide(Mock.layer()), Layer.provide(breakers))

// Values whose inferred types hold the library's error and plan types: a consumer that emits
// declaration files must be able to name them through the package's public modules (TS2883).
export const pipeline = Pipeline.make<{ readonly q: string }>().step("a", [], () => Effect.succeed(1))
export const piped = Pipeline.run(pipeline, { q: "x" })
export const sent = HttpAgent.dispatch([])
export const connections = Effect.flatMap(HttpAgent.HttpAgents, (agents) => agents.connections)
export const step = Effect.map(Executor.Executor, (executor) => executor.stepFor(executor.provider))
