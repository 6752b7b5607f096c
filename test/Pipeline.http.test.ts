/**
 * Pipelines whose steps call HTTP agents on 127.0.0.1: every started step's request is closed
 * when the step ends however it ends (fail fast, a cancelled run, a step's deadline), and every
 * step has exactly one outcome.
 */
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, Metric } from "effect"
import { TestClock } from "effect/testing"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as Mock from "../src/Model/Mock.js"
import * as Pipeline from "../src/Pipeline.js"
import * as AgentServer from "./utils/agentServer.js"

const services = Layer.build(
  HttpAgent.layer().pipe(
    Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
    Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}))),
    Layer.provide(NodeHttpClient.layerUndici)
  )
).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))

const ask = (id: string, agent: string) =>
  Effect.flatMap(HttpAgent.call({ id, agent, intent: "analyze", concept: "weather" }), (record) =>
    record.status === "success" ? Effect.succeed(record.result) : Effect.fail(record)
  )

describe("Pipeline steps over HTTP agents", () => {
  it.effect("fail fast: a sibling's request in flight is closed; each step has one outcome", () =>
    Effect.gen(function* () {
      const hanging = yield* AgentServer.make(() => ({ hang: true }))
      const down = yield* AgentServer.make(() => ({ status: 500, delayMs: 20 }))
      const context = yield* services
      const p = Pipeline.make()
        .step("slow", [], () => ask("slow", hanging.url))
        .step("broken", [], () => ask("broken", down.url))
        .step("after", ["slow"], () => Effect.succeed(1))
      const result = yield* Pipeline.run(p, undefined).pipe(Effect.provide(context))
      assert.deepStrictEqual(
        [result.steps.slow.status, result.steps.broken.status, result.steps.after.status],
        ["interrupted", "failed", "skipped"]
      )
      yield* hanging.awaitAborted(1)
      assert.strictEqual(hanging.inFlight(), 0)
      const connections = yield* Context.get(context, HttpAgent.HttpAgents).connections
      assert.deepStrictEqual([connections.active, connections.waiting], [0, 0])
    })
  )

  it.effect("a cancelled run closes the requests of its running steps", () =>
    Effect.gen(function* () {
      const hanging = yield* AgentServer.make(() => ({ hang: true }))
      const context = yield* services
      const p = Pipeline.make()
        .step("a", [], () => ask("a", hanging.url))
        .step("b", [], () => ask("b", hanging.url))
        .step("c", ["a"], () => ask("c", hanging.url))
      const fiber = yield* Effect.forkChild(Pipeline.run(p, undefined).pipe(Effect.provide(context)))
      yield* hanging.awaitRequests(2)
      yield* Fiber.interrupt(fiber)
      yield* hanging.awaitAborted(2)
      assert.deepStrictEqual([hanging.requests(), hanging.inFlight()], [2, 0])
      const connections = yield* Context.get(context, HttpAgent.HttpAgents).connections
      assert.deepStrictEqual([connections.active, connections.waiting], [0, 0])
    })
  )

  it.effect("a step's deadline closes its request, then its fallback answers", () =>
    Effect.gen(function* () {
      const hanging = yield* AgentServer.make(() => ({ hang: true }))
      const context = yield* services
      const p = Pipeline.make().step("a", [], () => ask("a", hanging.url), {
        timeout: "1 second",
        fallback: { value: "spare" }
      })
      const fiber = yield* Effect.forkChild(Pipeline.run(p, undefined).pipe(Effect.provide(context)))
      yield* hanging.awaitRequests(1)
      yield* TestClock.adjust("1 second")
      const result = yield* Fiber.join(fiber)
      const a = result.steps.a
      assert.deepStrictEqual([a.status, a.status === "succeeded" && a.output], ["succeeded", "spare"])
      assert.strictEqual(a.status === "succeeded" && a.fallback?.failure._tag, "TimedOut")
      yield* hanging.awaitAborted(1)
      assert.strictEqual(hanging.inFlight(), 0)
    })
  )
})
