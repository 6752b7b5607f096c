import { assert, describe, it } from "@effect/vitest"
import { NodeHttpClient } from "@effect/platform-node"
import { Context, Duration, Effect, Exit, Layer, Metric, Redacted } from "effect"
import { HttpClient, HttpClientRequest } from "effect/http"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as Mock from "../src/Model/Mock.js"
import * as AgentServer from "./utils/agentServer.js"
import * as HttpAgents from "./utils/httpAgents.js"

const agents = () => HttpAgents.agents()

// The agents service over undici, with `host` sent to 127.0.0.1 (a resolver of the test's own).
const agentsResolving = (host: string) =>
  Layer.build(
    HttpAgent.layer().pipe(
      Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
      Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}))),
      Layer.provide(
        Layer.effect(
          HttpClient.HttpClient,
          Effect.map(HttpClient.HttpClient, (client) =>
            HttpClient.mapRequest(client, (request) =>
              HttpClientRequest.setUrl(request, request.url.replace(`//${host}:`, "//127.0.0.1:"))
            )
          )
        ).pipe(Layer.provide(NodeHttpClient.layerUndici))
      )
    )
  ).pipe(
    Effect.provideService(Metric.MetricRegistry, new Map()),
    Effect.map((context) => Context.get(context, HttpAgent.HttpAgents))
  )

describe("HttpAgent: an agent copied with a field changed, or written by hand", () => {
  it.effect("is checked as HttpAgent.agent checks one: a wrong field is an InvalidRequest record naming it", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      const made = HttpAgent.agent({
        url: server.url,
        name: "weather",
        headers: { authorization: Redacted.make("Bearer agent-s3cret") }
      })
      const port = new URL(server.url).port
      const cases: ReadonlyArray<readonly [unknown, string]> = [
        [{ ...made, url: `http://user:pass-s3cret@127.0.0.1:${port}/task` }, "agent.url"],
        [{ ...made, url: "ftp://127.0.0.1/task" }, "agent.url"],
        [{ ...made, url: "not a url" }, "agent.url"],
        // Off loopback in clear text, the secret header of the agent copied.
        [{ ...made, url: "http://10.0.0.1/task" }, 'agent.headers["authorization"]'],
        [{ ...made, headers: null }, "agent.headers"],
        [{ ...made, headers: { "x-a": "b\r\nc" } }, 'agent.headers["x-a"]'],
        [{ ...made, name: "unknown" }, "agent.name"],
        [{ ...made, timeout: "soon" }, "agent.timeout"],
        [{ ...made, timeout: Duration.zero }, "agent.timeout"],
        [{ ...made, retry: { maxAttempts: 0 } }, "agent.retry.maxAttempts"]
      ]
      for (const [i, [agent, field]] of cases.entries()) {
        const record = yield* service.call({ id: `t${i}`, agent: agent as HttpAgent.Agent, intent: "i", concept: "c" })
        assert.deepStrictEqual(
          [record.status, record.error?.reason, record.error?.field, record.attempts],
          ["error", "InvalidRequest", field, 0],
          `${i}: ${JSON.stringify(record.error)}`
        )
        assert.notInclude(JSON.stringify(record), "s3cret", `${i}`)
      }
      assert.strictEqual(server.requests(), 0, "nothing was sent")
      // Its records count with those of tasks naming no valid agent, and its stats read them.
      assert.strictEqual((yield* service.stats(cases[0]![0] as HttpAgent.Agent)).agent, "unknown")
      // A copy whose fields are sound is sent as the agent it copies: its secret header too.
      const copy = { ...made, timeout: Duration.seconds(5) }
      for (const id of ["ok1", "ok2"]) {
        const record = yield* service.call({ id, agent: copy, intent: "i", concept: "c" })
        assert.deepStrictEqual([record.status, record.agent], ["success", "weather"])
      }
      // Written by hand without headers (it died of reading them): sent with none.
      const byHand = { url: server.url, name: "by-hand", decode: made.decode } as unknown as HttpAgent.Agent
      const record = yield* service.call({ id: "hand", agent: byHand, intent: "i", concept: "c" })
      assert.deepStrictEqual([record.status, record.agent], ["success", "by-hand"])
      assert.deepStrictEqual(
        server.headers().map((h) => h.authorization),
        ["Bearer agent-s3cret", "Bearer agent-s3cret", undefined]
      )
    })
  )

  it.effect("a copy of an agent allowed plain http secrets keeps the allowance", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      // A name off loopback, which this test's client resolves to the server (127.0.0.1): every
      // spelling of a loopback address is loopback to the check, so none reaches the server refused.
      const service = yield* agentsResolving("agents.internal.test")
      const url = `http://agents.internal.test:${new URL(server.url).port}/task`
      const headers = { authorization: Redacted.make("Bearer agent-token") }
      const refused = HttpAgent.agent({ url, headers })
      assert.strictEqual(refused.issue?.path, 'agent.headers["authorization"]')
      const allowed = HttpAgent.agent({ url: server.url, headers, allowPlainHttpSecrets: true })
      const record = yield* service.call({ id: "t", agent: { ...allowed, url }, intent: "i", concept: "c" })
      assert.deepStrictEqual([record.status, record.error], ["success", undefined])
      assert.strictEqual(server.headers()[0]?.authorization, "Bearer agent-token")
    })
  )

  it.effect("a copy with secret headers of its own has them scrubbed from its records, and its own name in them", () =>
    Effect.gen(function* () {
      // The agent reports the task failed, echoing the key it was sent.
      const server = yield* AgentServer.make(() => ({ json: {} }))
      const echoing = yield* AgentServer.make((t) => ({
        json: { task_id: t.task_id, status: "error", result: `bad key ${t.intent}` }
      }))
      const service = yield* agents()
      const made = HttpAgent.agent({ url: server.url, name: "weather" })
      const copy = {
        ...made,
        url: echoing.url,
        name: "weather-eu",
        headers: { "x-key": Redacted.make("copy-s3cret-key") }
      }
      const record = yield* service.call({ id: "t", agent: copy, intent: "copy-s3cret-key", concept: "c" })
      assert.deepStrictEqual([record.status, record.agent], ["error", "weather-eu"])
      assert.strictEqual(echoing.headers()[0]?.["x-key"], "copy-s3cret-key")
      assert.notInclude(record.error?.message, "s3cret")
      assert.match(record.error?.message ?? "", /^weather-eu reported status "error": bad key/)
    })
  )

  it.effect("stats of a copy named by a URL with a token read the series its records are counted in", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      const url = `${server.url}?token=copy-s3cret`
      const copy = { ...HttpAgent.agent({ url: server.url }), url, name: url }
      const record = yield* service.call({ id: "t", agent: copy, intent: "i", concept: "c" })
      assert.deepStrictEqual([record.status, record.agent], ["success", server.url])
      const stats = yield* service.stats(copy)
      assert.deepStrictEqual([stats.agent, stats.tasks], [server.url, 1])
    })
  )

  it.effect(
    "one whose field or prototype throws when read is a record naming it: call, dispatch and stats do not die",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make()
        const service = yield* agents()
        const made = HttpAgent.agent({ url: server.url, name: "weather" })
        const throwing = (field: string) =>
          Object.defineProperty({ ...made }, field, {
            enumerable: true,
            get: () => {
              throw new Error(`no ${field}`)
            }
          }) as HttpAgent.Agent
        const cases: ReadonlyArray<readonly [HttpAgent.Agent, string]> = [
          [throwing("headers"), "agent.headers"],
          [throwing("timeout"), "agent.timeout"],
          [throwing("retry"), "agent.retry"],
          [
            new Proxy(
              { ...made },
              {
                getPrototypeOf: () => {
                  throw new Error("no prototype")
                }
              }
            ),
            ""
          ]
        ]
        for (const [agent, field] of cases) {
          const record = yield* Effect.exit(service.call({ id: "t", agent, intent: "i", concept: "c" }))
          assert.isTrue(Exit.isSuccess(record), field)
          if (Exit.isSuccess(record) && field !== "") {
            assert.deepStrictEqual([record.value.status, record.value.error?.field], ["error", field])
            assert.include(record.value.error?.message, `no ${field.slice("agent.".length)}`)
          }
          assert.isTrue(
            Exit.isSuccess(yield* Effect.exit(service.dispatch([{ id: "b", agent, intent: "i", concept: "c" }])))
          )
          assert.isTrue(Exit.isSuccess(yield* Effect.exit(service.stats(agent))))
        }
        // What reads it sends it as the agent it copies.
        assert.strictEqual(server.requests(), 2)
      })
  )
})
