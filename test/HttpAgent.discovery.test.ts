/**
 * What the agents discovery finds are sent: no headers of the application's (a registry may name
 * any URL), the registry's token neither; an agent the task describes itself at a URL discovery
 * found is sent as the task describes it.
 */
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Redacted } from "effect"
import * as Discovery from "../src/Discovery.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as AgentServer from "./utils/agentServer.js"
import * as HttpAgents from "./utils/httpAgents.js"
import * as Server from "./utils/httpServer.js"

const agents = (discovery: Layer.Layer<Discovery.Discovery, unknown>) =>
  HttpAgents.agents(undefined, undefined, discovery)

describe("HttpAgent: the agents discovery finds", () => {
  it.effect("are sent no headers of the application's nor the registry's token", () =>
    Effect.gen(function* () {
      const agent = yield* AgentServer.make()
      const registry = yield* Server.make((_request, response) =>
        Server.json(response, 200, { agents: [{ url: agent.url, name: "meteo" }] })
      )
      const service = yield* agents(
        Discovery.layerHttp({ url: `${registry.url}/agents?token=registry-s3cret` }).pipe(
          Layer.provide(NodeHttpClient.layerUndici)
        )
      )
      // An agent of the task's own, at another URL, keeps its headers to itself.
      const other = HttpAgent.agent({
        url: `${agent.url}/other`,
        headers: { authorization: Redacted.make("Bearer agent-s3cret") }
      })
      const record = yield* service.call({ id: "d", intent: "i", concept: "c", fallback: [other] })
      assert.deepStrictEqual([record.status, record.agent], ["success", "meteo"])
      const [sent] = agent.headers()
      assert.isUndefined(sent?.authorization)
      assert.notInclude(JSON.stringify(sent), "s3cret")
      assert.notInclude(agent.paths()[0], "s3cret")
      const [asked] = yield* registry.requests
      assert.strictEqual(asked?.search.get("token"), "registry-s3cret")
    })
  )

  it.effect("one the task describes itself (its fallback) at the same URL is sent as described: its headers", () =>
    Effect.gen(function* () {
      const agent = yield* AgentServer.make()
      const mirror = yield* AgentServer.make()
      const service = yield* agents(
        Discovery.layerStatic([
          { concept: "c", intent: "i", agents: [{ url: agent.url, name: "meteo" }, { url: mirror.url }] }
        ])
      )
      const described = HttpAgent.agent({
        url: agent.url,
        name: "meteo-auth",
        headers: { authorization: Redacted.make("Bearer agent-token") }
      })
      const record = yield* service.call({ id: "d", intent: "i", concept: "c", fallback: [described] })
      // Asked once, first (where discovery put it), with the task's headers.
      assert.deepStrictEqual([record.status, record.agent, record.attempts], ["success", "meteo-auth", 1])
      assert.isUndefined(record.fallbackUsed)
      assert.strictEqual(agent.requests(), 1)
      assert.strictEqual(agent.headers()[0]?.authorization, "Bearer agent-token")
      assert.strictEqual(mirror.requests(), 0)
      // A fallback given as a bare URL describes nothing: the discovered endpoint's name stays.
      const bare = yield* service.call({ id: "b", intent: "i", concept: "c", fallback: [agent.url] })
      assert.deepStrictEqual([bare.status, bare.agent], ["success", "meteo"])
    })
  )

  it.effect("an invalid endpoint a Discovery service built by hand answers is DiscoveryUnavailable naming it", () =>
    Effect.gen(function* () {
      const agent = yield* AgentServer.make()
      const port = new URL(agent.url).port
      const endpoints: ReadonlyArray<readonly [Discovery.Endpoint, string]> = [
        [{ url: `http://user:pw-s3cret@127.0.0.1:${port}/task` }, "[1].url"],
        [{ url: "ftp://127.0.0.1/task" }, "[1].url"],
        [{ url: agent.url, timeout: "soon" as never }, "[1].timeout"],
        [{ url: agent.url, name: "" }, "[1].name"]
      ]
      for (const [endpoint, at] of endpoints) {
        const service = yield* agents(
          Layer.succeed(Discovery.Discovery, {
            name: "own",
            resolve: () => Effect.succeed([{ url: agent.url }, endpoint])
          })
        )
        const record = yield* service.call({ id: "d", intent: "i", concept: "c" })
        assert.deepStrictEqual(
          [record.status, record.agent, record.error?.reason, record.attempts],
          ["service_unavailable", "discovery:own", "DiscoveryUnavailable", 0],
          JSON.stringify(record.error)
        )
        assert.include(record.error?.message, `own: resolve answered an invalid agent ${at}`)
        assert.notInclude(record.error?.message, "s3cret")
      }
      assert.strictEqual(agent.requests(), 0)
    })
  )
})
