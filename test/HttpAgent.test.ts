import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Metric, Schema } from "effect"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as AgentServer from "./utils/agentServer.js"

const agentsLayer = (options: HttpAgent.Options = {}) =>
  HttpAgent.layer(options).pipe(Layer.provide(NodeHttpClient.layerUndici), Layer.provide(CircuitBreaker.layer()))

const withAgents = <A, E, R>(options: HttpAgent.Options, f: (agents: HttpAgent.Service) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(HttpAgent.HttpAgents, f).pipe(Effect.provide(agentsLayer(options)))

const task = (id: string, agent: HttpAgent.Agent | string, extra: Partial<HttpAgent.Task> = {}): HttpAgent.Task => ({
  id,
  agent,
  intent: "analyze",
  concept: "weather",
  args: { city: "Oslo", days: [1, 2] },
  ...extra
})

describe("HttpAgent", () => {
  it.scopedLive("success: posts the task and decodes the answer", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const record = yield* withAgents({}, (agents) => agents.call(task("t1", server.url)))
      assert.strictEqual(record.status, "success")
      assert.strictEqual(record.taskId, "t1")
      assert.strictEqual(record.agent, server.url)
      assert.deepStrictEqual(record.result, {
        echo: { task_id: "t1", intent: "analyze", concept: "weather", args: { city: "Oslo", days: [1, 2] } }
      })
      assert.isAtLeast(record.durationMs, 0)
      assert.strictEqual(server.requests(), 1)
    })
  )

  it.scopedLive("a user schema decodes the whole answer", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) => ({ json: { task_id: t.task_id, score: "0.75" } }))
      const scorer = HttpAgent.agent({
        url: server.url,
        name: "scorer",
        answer: Schema.Struct({ task_id: Schema.String, score: Schema.NumberFromString })
      })
      const record = yield* withAgents({}, (agents) => agents.call({ ...task("s", scorer), agent: scorer }))
      assert.strictEqual(record.status, "success")
      assert.strictEqual(record.agent, "scorer")
      const score: number | undefined = record.result?.score
      assert.strictEqual(score, 0.75)
    })
  )

  it.scopedLive("HTTP 500 is an error record with the status and the message", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make(() => ({ status: 500, json: { error: { message: "agent crashed" } } }))
      const record = yield* withAgents({}, (agents) => agents.call(task("t1", server.url)))
      assert.strictEqual(record.status, "error")
      assert.strictEqual(record.error?.httpStatus, 500)
      assert.include(record.error?.message, "agent crashed")
      assert.isUndefined(record.result)
    })
  )

  it.scopedLive("a hanging agent times out after the request's own timeout", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make(() => ({ hang: true }))
      const [fast, slower] = yield* withAgents({ timeout: "5 seconds" }, (agents) =>
        Effect.all(
          [
            agents.call(task("a", server.url, { timeout: "100 millis" })),
            agents.call(task("b", server.url, { timeout: "300 millis" }))
          ],
          {
            concurrency: 2
          }
        )
      )
      assert.strictEqual(fast.status, "timeout")
      assert.strictEqual(slower.status, "timeout")
      assert.include(fast.error?.message, "100ms")
      assert.isAtLeast(fast.durationMs, 95)
      assert.isBelow(fast.durationMs, 280)
      assert.isAtLeast(slower.durationMs, 295)
      assert.strictEqual(server.inFlight(), 0, "the timed-out requests were aborted")
    })
  )

  it.scopedLive("malformed JSON and a missing field are Decode errors naming the field", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) =>
        t.task_id === "garbage"
          ? { raw: "{not json" }
          : t.task_id === "missing"
            ? { json: { task_id: t.task_id, status: "success" } }
            : { json: { task_id: "someone-else", result: 1 } }
      )
      const [garbage, missing, wrongId] = yield* withAgents({}, (agents) =>
        Effect.all([
          agents.call(task("garbage", server.url)),
          agents.call(task("missing", server.url)),
          agents.call(task("wrong", server.url))
        ])
      )
      assert.strictEqual(garbage.status, "error")
      assert.strictEqual(garbage.error?.reason, "Decode")
      assert.strictEqual(missing.status, "error")
      assert.strictEqual(missing.error?.reason, "Decode")
      assert.strictEqual(missing.error?.field, "result")
      assert.include(missing.error?.message, "result")
      assert.strictEqual(wrongId.error?.field, "task_id")
    })
  )

  it.scopedLive("a refused connection is an error record, not a failure", () =>
    Effect.gen(function* () {
      const closedUrl = yield* Effect.scoped(Effect.map(AgentServer.make(), (s) => s.url))
      const record = yield* withAgents({}, (agents) => agents.call(task("t", closedUrl)))
      assert.strictEqual(record.status, "error")
      assert.strictEqual(record.error?.reason, "Transport")
      const invalid = yield* withAgents({}, (agents) => agents.call(task("u", "not a url")))
      assert.strictEqual(invalid.status, "error")
      assert.strictEqual(invalid.error?.field, "url")
    })
  )

  it.scopedLive("args that are not JSON (a BigInt, a cycle) are an error record naming args, cache on or off", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const circular: Record<string, unknown> = { city: "Oslo" }
      circular["self"] = circular
      for (const options of [{}, { cache: true }] satisfies ReadonlyArray<HttpAgent.Options>) {
        const records = yield* withAgents(options, (agents) =>
          Effect.all([
            agents.call(task("big", server.url, { args: { n: 1n } })),
            agents.call(task("cycle", server.url, { args: circular }))
          ])
        )
        for (const record of records) {
          assert.strictEqual(record.status, "error")
          assert.strictEqual(record.error?.reason, "InvalidRequest")
          assert.strictEqual(record.error?.field, "args")
          assert.include(record.error?.message, `task "${record.taskId}": args are not JSON`)
        }
      }
      assert.strictEqual(server.requests(), 0)
    })
  )

  it.scopedLive("the breaker opens after repeated failures, serves the cache, and closes after the reset", () =>
    Effect.gen(function* () {
      // request 0 succeeds, 1-3 fail, later ones succeed
      const server = yield* AgentServer.make((t, i) =>
        i >= 1 && i <= 3 ? { status: 503 } : { json: { task_id: t.task_id, result: `answer ${i}` } }
      )
      const options: HttpAgent.Options = { breaker: { failMax: 3, resetTimeout: "200 millis" }, cache: true }
      yield* withAgents(options, (agents) =>
        Effect.gen(function* () {
          const same = task("t", server.url)
          assert.strictEqual((yield* agents.call(same)).status, "success")
          for (let i = 0; i < 3; i++) assert.strictEqual((yield* agents.call(same)).error?.httpStatus, 503)
          const refused = yield* agents.call(same)
          assert.strictEqual(refused.status, "service_unavailable")
          assert.strictEqual(refused.fromCache, true)
          assert.strictEqual(refused.result, "answer 0")
          const other = yield* agents.call(task("other", server.url, { args: { city: "Bergen" } }))
          assert.strictEqual(other.status, "service_unavailable")
          assert.isUndefined(other.fromCache)
          assert.strictEqual(server.requests(), 4, "an open breaker sends nothing")
          yield* Effect.sleep("250 millis")
          const probe = yield* agents.call(same)
          assert.strictEqual(probe.status, "success")
          assert.strictEqual(probe.result, "answer 4")
          assert.strictEqual((yield* agents.call(same)).status, "success")
          assert.strictEqual(server.requests(), 6)
        })
      )
    })
  )

  it.scopedLive("connection limits: per host and in total", () =>
    Effect.gen(function* () {
      const slow = () => ({ delayMs: 40 })
      const one = yield* AgentServer.make((t) => ({ ...slow(), ...AgentServer.defaultReply(t) }))
      const two = yield* AgentServer.make((t) => ({ ...slow(), ...AgentServer.defaultReply(t) }))
      const tasks = [
        ...Array.from({ length: 12 }, (_, i) => task(`one-${i}`, one.url)),
        ...Array.from({ length: 12 }, (_, i) => task(`two-${i}`, two.url))
      ]
      const { records, stats } = yield* withAgents({ maxConnections: 5, maxConnectionsPerHost: 3 }, (agents) =>
        Effect.zip(agents.dispatch(tasks), agents.connections).pipe(
          Effect.map(([records, stats]) => ({ records, stats }))
        )
      )
      assert.isTrue(records.every((r) => r.status === "success"))
      assert.strictEqual(one.peak(), 3)
      assert.strictEqual(two.peak(), 3)
      assert.strictEqual(stats.peak, 5)
      assert.deepStrictEqual(stats.peakByHost, { [one.host]: 3, [two.host]: 3 })
      assert.strictEqual(stats.active, 0)
      assert.strictEqual(stats.waiting, 0)
    })
  )

  it.scopedLive("permits are handed over in arrival order", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) => ({ delayMs: 5, ...AgentServer.defaultReply(t) }))
      const ids = Array.from({ length: 8 }, (_, i) => `q${i}`)
      const records = yield* withAgents({ maxConnectionsPerHost: 1 }, (agents) =>
        agents.dispatch(ids.map((id) => task(id, server.url)))
      )
      assert.isTrue(records.every((r) => r.status === "success"))
      assert.deepStrictEqual(
        server.received().map((t) => t.task_id),
        ids
      )
      assert.strictEqual(server.peak(), 1)
    })
  )

  it.scopedLive("interrupting a batch frees every connection slot and queue place", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make(() => ({ hang: true }))
      const stats = yield* withAgents({ maxConnectionsPerHost: 2 }, (agents) =>
        Effect.gen(function* () {
          const tasks = Array.from({ length: 6 }, (_, i) => task(`h${i}`, server.url))
          const outcome = yield* agents.dispatch(tasks).pipe(Effect.timeoutOption("150 millis"))
          assert.isTrue(outcome._tag === "None")
          return yield* agents.connections
        })
      )
      assert.strictEqual(stats.peak, 2)
      assert.strictEqual(stats.active, 0)
      assert.strictEqual(stats.waiting, 0)
      assert.strictEqual(server.requests(), 2)
    })
  )

  it.scopedLive("dispatch: dependent tasks wait for their dependencies and get their results", () =>
    Effect.gen(function* () {
      const good = yield* AgentServer.make((t) => ({
        delayMs: 30,
        json: { task_id: t.task_id, result: `${t.task_id}!` }
      }))
      const bad = yield* AgentServer.make(() => ({ status: 500 }))
      const records = yield* withAgents({}, (agents) =>
        agents.dispatch([
          task("fetch", good.url),
          task("recall", good.url),
          task("combine", good.url, { dependsOn: ["fetch", "recall"] }),
          task("broken", bad.url),
          task("needsBroken", good.url, { dependsOn: ["broken"] }),
          task("chain", good.url, { dependsOn: ["needsBroken"] })
        ])
      )
      assert.deepStrictEqual(
        records.map((r) => [r.taskId, r.status]),
        [
          ["fetch", "success"],
          ["recall", "success"],
          ["combine", "success"],
          ["broken", "error"],
          ["needsBroken", "skipped"],
          ["chain", "skipped"]
        ]
      )
      const [fetch, recall, combine] = records
      assert.isAtLeast(
        combine!.startedAt,
        Math.max(fetch!.startedAt + fetch!.durationMs, recall!.startedAt + recall!.durationMs)
      )
      assert.isBelow(Math.abs(fetch!.startedAt - recall!.startedAt), 25, "independent tasks start together")
      const sent = good.received().find((t) => t.task_id === "combine")
      assert.deepStrictEqual(sent?.dependencies, { fetch: "fetch!", recall: "recall!" })
      assert.strictEqual(records[4]!.error?.dependency, "broken")
      assert.include(records[4]!.error?.message, '"broken"')
      assert.strictEqual(records[5]!.error?.dependency, "needsBroken")
      assert.include(records[5]!.error?.message, '"broken"')
      assert.isFalse(good.received().some((t) => t.task_id === "needsBroken"))
    })
  )

  it.scopedLive("the taskRecords metric counts every record of a batch, skipped ones included", () =>
    Effect.gen(function* () {
      const bad = yield* AgentServer.make(() => ({ status: 500 }))
      const good = yield* AgentServer.make()
      const failing = HttpAgent.agent({ url: bad.url, name: "metric-skip-bad" })
      const fine = HttpAgent.agent({ url: good.url, name: "metric-skip-good" })
      const count = (status: HttpAgent.TaskRecord["status"], agent: string) =>
        Effect.map(
          Metric.value(HttpAgent.taskRecords.pipe(Metric.tagged("status", status), Metric.tagged("agent", agent))),
          (state) => state.count
        )
      const records = yield* withAgents({}, (agents) =>
        agents.dispatch([
          task("root", failing),
          task("child", fine, { dependsOn: ["root"] }),
          task("grandchild", fine, { dependsOn: ["child"] }),
          task("alone", fine)
        ])
      )
      assert.deepStrictEqual(
        records.map((r) => r.status),
        ["error", "skipped", "skipped", "success"]
      )
      assert.strictEqual(yield* count("error", "metric-skip-bad"), 1)
      assert.strictEqual(yield* count("skipped", "metric-skip-good"), 2)
      assert.strictEqual(yield* count("success", "metric-skip-good"), 1)
    })
  )

  it.scopedLive("dispatch rejects an invalid batch with the names", () =>
    Effect.gen(function* () {
      const error = yield* withAgents({}, (agents) =>
        Effect.flip(agents.dispatch([task("a", "http://127.0.0.1:1/x", { dependsOn: ["ghost"] })]))
      )
      assert.strictEqual(error.reason, "UnknownDependency")
      assert.deepStrictEqual(error.steps, ["a", "ghost"])
    })
  )

  it.scopedLive("dispatch refuses concurrency 0 or NaN with a PipelineError naming it; nothing is sent", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      for (const concurrency of [0, Number.NaN, -2]) {
        const error = yield* withAgents({}, (agents) =>
          Effect.flip(agents.dispatch([task("a", server.url)], { concurrency }))
        )
        assert.strictEqual(error.reason, "InvalidOption")
        assert.strictEqual(error.option, "concurrency")
      }
      assert.strictEqual(server.requests(), 0)
      const records = yield* withAgents({}, (agents) => agents.dispatch([task("a", server.url)], { concurrency: 1 }))
      assert.strictEqual(records[0]?.status, "success")
    })
  )
})
