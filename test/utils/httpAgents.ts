import { NodeHttpClient } from "@effect/platform-node"
import { Context, Effect, Layer, Metric } from "effect"
import * as CircuitBreaker from "../../src/CircuitBreaker.js"
import type * as Discovery from "../../src/Discovery.js"
import * as Executor from "../../src/Executor.js"
import * as HttpAgent from "../../src/HttpAgent.js"
import * as Mock from "../../src/Model/Mock.js"

/**
 * The HttpAgents service over undici, an executor without a default timeout and a memory breaker
 * (and `discovery`, when given).
 */
export const build = <E = never>(
  options?: HttpAgent.Options,
  breakers: CircuitBreaker.Options = {},
  discovery?: Layer.Layer<Discovery.Discovery, E>
) =>
  Layer.build(
    HttpAgent.layer(options).pipe(
      Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
      Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory(breakers), discovery ?? Layer.empty)),
      Layer.provide(NodeHttpClient.layerUndici)
    )
  ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))

export const agents = <E = never>(
  options?: HttpAgent.Options,
  breakers?: CircuitBreaker.Options,
  discovery?: Layer.Layer<Discovery.Discovery, E>
) => Effect.map(build(options, breakers, discovery), (context) => Context.get(context, HttpAgent.HttpAgents))

export const task = (id: string, agent: HttpAgent.Agent | string, args?: unknown): HttpAgent.Task => ({
  id,
  agent,
  intent: "i",
  concept: "c",
  args
})
