import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Metric } from "effect"
import { NodeHttpClient } from "@effect/platform-node"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as Mock from "../src/Model/Mock.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as AgentServer from "./utils/agentServer.js"
import * as HttpAgents from "./utils/httpAgents.js"

/** The URL of `path` on the server as written another way: the scheme upper case, a dot segment. */
const spelledOtherwise = (server: AgentServer.AgentServer, path: string) =>
  `${server.url.replace(/^http:/, "HTTP:")}/x/..${path}`

const withCache = Layer.build(
  HttpAgent.layer().pipe(
    Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
    Layer.provideMerge(
      Layer.mergeAll(
        Mock.layer(),
        CircuitBreaker.layerMemory({ failMax: 1, resetTimeout: "1 minute" }),
        ResponseCache.layerMemory()
      )
    ),
    Layer.provide(NodeHttpClient.layerUndici)
  )
).pipe(
  Effect.map((context) => Context.get(context, HttpAgent.HttpAgents)),
  Effect.provideService(Metric.MetricRegistry, new Map())
)

describe("HttpAgent: one agent however its URL is written", () => {
  it.effect("the last good result kept under one spelling is served under another (their breaker is one)", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t, i) =>
        i === 0 ? { json: { task_id: t.task_id, result: "kept" } } : { status: 503 }
      )
      const service = yield* withCache
      const written = `${server.url}/a`
      const other = spelledOtherwise(server, "/a")
      assert.strictEqual((yield* service.call(HttpAgents.task("t", written, { n: 1 }))).status, "success")
      assert.strictEqual((yield* service.call(HttpAgents.task("t", other, { n: 1 }))).error?.httpStatus, 503)
      const refused = yield* service.call(HttpAgents.task("t", other, { n: 1 }))
      assert.deepStrictEqual([refused.status, refused.fromCache, refused.result], ["service_unavailable", true, "kept"])
      assert.strictEqual(server.requests(), 2)
    })
  )

  it.effect("its tasks are counted in one series, read back under either spelling", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* HttpAgents.agents()
      const written = `${server.url}/a`
      const other = spelledOtherwise(server, "/a")
      const first = yield* service.call(HttpAgents.task("t1", written))
      const second = yield* service.call(HttpAgents.task("t2", other))
      const third = yield* service.call(HttpAgents.task("t3", HttpAgent.agent({ url: other })))
      assert.deepStrictEqual(
        [first, second, third].map((record) => [record.status, record.agent, record.url]),
        [
          ["success", written, written],
          ["success", written, written],
          ["success", written, written]
        ]
      )
      for (const ref of [written, other]) {
        const stats = yield* service.stats(ref)
        assert.deepStrictEqual([stats.agent, stats.statuses.success, stats.calls.total], [written, 3, 3], ref)
      }
    })
  )
})
