import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as HttpAgent from "../src/HttpAgent.js"
import * as AgentServer from "./utils/agentServer.js"
import * as HttpAgents from "./utils/httpAgents.js"

describe("HttpAgent: a misspelt option or field names the one it is likely a typo of", () => {
  it.effect("an agent's option, a task's field and the service's option, as the config file's check does", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const typo = HttpAgent.agent({ url: server.url, timout: "1 second" } as never)
      assert.deepStrictEqual(typo.issue, { path: "agent.timout", message: "unknown option (did you mean timeout?)" })
      const other = HttpAgent.agent({ url: server.url, zzzzzz: 1 } as never)
      assert.deepStrictEqual(other.issue, {
        path: "agent.zzzzzz",
        message: "unknown option (expected one of url, name, timeout, retry, headers, answer, allowPlainHttpSecrets)"
      })
      const service = yield* HttpAgents.agents()
      const sent = yield* service.call(HttpAgents.task("a", typo))
      assert.deepStrictEqual(
        [sent.status, sent.error?.field, sent.error?.message],
        ["error", "agent.timout", "invalid agent.timout: unknown option (did you mean timeout?)"]
      )
      const misspelt = yield* service.call({ ...HttpAgents.task("t", server.url), dependOn: ["x"] } as never)
      assert.deepStrictEqual(
        [misspelt.status, misspelt.error?.field, misspelt.error?.message],
        ["error", "dependOn", "invalid dependOn: unknown field (did you mean dependsOn?)"]
      )
      assert.strictEqual(server.requests(), 0)
      const refused = yield* Effect.flip(HttpAgents.agents({ maxConnection: 5 } as never))
      assert.deepStrictEqual(
        [refused._tag, refused.path, refused.message],
        ["OptionError", "maxConnection", "invalid maxConnection: unknown option (did you mean maxConnections?)"]
      )
    })
  )
})
