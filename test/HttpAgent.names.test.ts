import { assert, describe, it } from "@effect/vitest"
import { Effect, type Layer } from "effect"
import * as Discovery from "../src/Discovery.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as AgentServer from "./utils/agentServer.js"
import * as HttpAgents from "./utils/httpAgents.js"

const agents = (discovery: Layer.Layer<Discovery.Discovery, unknown>) =>
  HttpAgents.agents(undefined, undefined, discovery)

describe("HttpAgent: names the library uses itself", () => {
  it.effect("an agent named unknown or discovery:<name> is refused naming agent.name; its figures mix with none", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      // No agent for this query: its tasks are the discovery's records.
      const service = yield* agents(
        Discovery.layerStatic([{ concept: "c", intent: "other", agents: { url: server.url } }], { name: "registry" })
      )
      // A task naming no valid agent is counted under `unknown`, one discovery found none for under `discovery:registry`.
      const none = yield* service.call({ id: "none", agent: "not a url", intent: "i", concept: "c" })
      assert.strictEqual(none.agent, "not a url")
      const unfound = yield* service.call({ id: "unfound", intent: "i", concept: "c" })
      assert.deepStrictEqual([unfound.status, unfound.agent], ["service_unavailable", "discovery:registry"])
      for (const name of ["unknown", "discovery:registry", "discovery:"]) {
        const agent = HttpAgent.agent({ url: server.url, name })
        assert.strictEqual(agent.issue?.path, "agent.name", name)
        assert.include(agent.issue?.message, "reserved", name)
        const record = yield* service.call({ id: `t-${name}`, agent, intent: "i", concept: "c" })
        assert.deepStrictEqual(
          [record.status, record.error?.reason, record.error?.field, record.attempts],
          ["error", "InvalidRequest", "agent.name", 0],
          name
        )
      }
      assert.strictEqual(server.requests(), 0, "nothing was sent")
      // The figures of the library's own names are only their own tasks'.
      const unknown = yield* service.stats("unknown")
      assert.strictEqual(unknown.statuses.success, 0)
      const discovery = yield* service.stats("discovery:registry")
      assert.deepStrictEqual([discovery.statuses.service_unavailable, discovery.statuses.success], [1, 0])
      // Names that merely look alike are the application's own.
      for (const name of ["Unknown", "unknown-agent", "discovery", "my-discovery:x"]) {
        const record = yield* service.call({
          id: `ok-${name}`,
          agent: HttpAgent.agent({ url: server.url, name }),
          intent: "i",
          concept: "c"
        })
        assert.deepStrictEqual([record.status, record.agent], ["success", name])
      }
    })
  )

  it.effect("an endpoint a registry names so is named by its URL: its tasks are sent, counted apart", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const names = ["unknown", "discovery:registry", "(other)"]
      // A static map written so is refused when built (Discovery.test.ts); a registry's answer is its choice.
      const service = yield* agents(
        Discovery.layer(
          ({ intent }) => {
            const i = Number(intent.slice(1))
            return Effect.succeed({ url: `${server.url}/${i}`, name: names[i] })
          },
          { name: "registry" }
        )
      )
      for (const [i, name] of names.entries()) {
        const record = yield* service.call({ id: `t${i}`, intent: `i${i}`, concept: "c" })
        assert.deepStrictEqual([record.status, record.agent], ["success", `${server.url}/${i}`], name)
        assert.strictEqual((yield* service.stats(`${server.url}/${i}`)).statuses.success, 1, name)
        assert.strictEqual((yield* service.stats(name)).statuses.success, 0, name)
      }
      assert.strictEqual(server.requests(), names.length)
    })
  )
})
