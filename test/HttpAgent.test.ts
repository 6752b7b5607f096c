import { inspect } from "node:util"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  Clock,
  Context,
  Deferred,
  Effect,
  Exit,
  Fiber,
  Layer,
  Metric,
  Redacted,
  Schema,
  Scope,
  Tracer
} from "effect"
import { FetchHttpClient, HttpClient, HttpClientResponse } from "effect/http"
import { TestClock } from "effect/testing"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import * as Connections from "../src/agent/connections.js"
import { agentsKept, makeService } from "../src/agent/service.js"
import * as Discovery from "../src/Discovery.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as Metrics from "../src/Metrics.js"
import * as Mock from "../src/Model/Mock.js"
import * as OpenAiCompat from "../src/Model/OpenAiCompat.js"
import * as RateLimit from "../src/RateLimit.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as AgentServer from "./utils/agentServer.js"
import { recording } from "./utils/tracer.js"

interface Setup {
  readonly options?: HttpAgent.Options
  readonly breakers?: CircuitBreaker.Options
  readonly cache?: boolean
  readonly rateLimits?: RateLimit.Options
  /** The metric registry (default: a private one). */
  readonly registry?: Map<string, never>
  /** The HTTP client (default: undici). */
  readonly client?: Layer.Layer<HttpClient.HttpClient>
}

/** The service over an executor (own Stats, a mock model, shared breakers), a real HTTP client and a private metric registry. */
const build = (setup: Setup = {}) =>
  Layer.build(
    HttpAgent.layer(setup.options).pipe(
      Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
      Layer.provideMerge(
        Layer.mergeAll(
          Mock.layer(),
          CircuitBreaker.layerMemory(setup.breakers ?? {}),
          setup.cache === true ? ResponseCache.layerMemory() : Layer.empty,
          setup.rateLimits === undefined ? Layer.empty : RateLimit.layerMemory(setup.rateLimits)
        )
      ),
      Layer.provide(setup.client ?? NodeHttpClient.layerUndici)
    )
  ).pipe(Effect.provideService(Metric.MetricRegistry, setup.registry ?? new Map()))

const agents = (setup: Setup = {}) => Effect.map(build(setup), (context) => Context.get(context, HttpAgent.HttpAgents))

const task = (
  id: string,
  agent: HttpAgent.Agent | string | undefined,
  extra: Partial<HttpAgent.Task> = {}
): HttpAgent.Task => ({
  id,
  agent,
  intent: "analyze",
  concept: "weather",
  args: { city: "Oslo", days: [1, 2] },
  ...extra
})

/** A copy of `base` whose `key` throws when read. */
const throwing = <O extends object>(base: O, key: string): O =>
  Object.defineProperty({ ...base }, key, {
    enumerable: true,
    get: () => {
      throw new Error(`no ${key}`)
    }
  })

describe("HttpAgent.call", () => {
  it.effect("success: posts the task and decodes the answer", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      const record = yield* service.call(task("t1", server.url))
      assert.strictEqual(record.status, "success")
      assert.strictEqual(record.taskId, "t1")
      assert.strictEqual(record.agent, server.url)
      assert.strictEqual(record.attempts, 1)
      assert.deepStrictEqual(record.result, {
        echo: { task_id: "t1", intent: "analyze", concept: "weather", args: { city: "Oslo", days: [1, 2] } }
      })
      assert.strictEqual(server.requests(), 1)
    })
  )

  it.effect("a user schema decodes the whole answer", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) => ({ json: { task_id: t.task_id, score: "0.75" } }))
      const scorer = HttpAgent.agent({
        url: server.url,
        name: "scorer",
        answer: Schema.Struct({ task_id: Schema.String, score: Schema.NumberFromString })
      })
      const service = yield* agents()
      const record = yield* service.call({ id: "s", agent: scorer, intent: "score", concept: "weather" })
      assert.strictEqual(record.status, "success")
      assert.strictEqual(record.agent, "scorer")
      const score: number | undefined = record.result?.score
      assert.strictEqual(score, 0.75)
    })
  )

  it.effect("an answer with an `error` field of its own is the answer, not a failure (no fallback runs)", () =>
    Effect.gen(function* () {
      const weather = yield* AgentServer.make((t) => ({
        json: { task_id: t.task_id, status: "success", result: { n: 1 }, error: false }
      }))
      const finder = yield* AgentServer.make((t) => ({
        json: { task_id: t.task_id, found: false, error: "no such city" }
      }))
      const mirror = yield* AgentServer.make()
      const service = yield* agents()
      const plain = yield* service.call(task("e1", weather.url))
      assert.strictEqual(plain.status, "success", JSON.stringify(plain.error))
      assert.deepStrictEqual(plain.result, { n: 1 })
      const typed = HttpAgent.agent({
        url: finder.url,
        name: "finder",
        answer: Schema.Struct({ task_id: Schema.String, found: Schema.Boolean, error: Schema.optional(Schema.String) })
      })
      const record = yield* service.call(task("e2", typed, { fallback: [mirror.url] }))
      assert.strictEqual(record.status, "success", JSON.stringify(record.error))
      assert.strictEqual(record.agent, "finder")
      assert.deepStrictEqual(record.result, { task_id: "e2", found: false, error: "no such city" })
      assert.strictEqual(mirror.requests(), 0, "the fallback agent was not asked")
      // An answer its schema refuses that is an error object is still read as the agent's error.
      const failing = yield* AgentServer.make(() => ({ json: { error: { message: "quota exhausted" } } }))
      const refused = yield* service.call(task("e3", failing.url))
      assert.strictEqual(refused.status, "error")
      assert.include(refused.error?.message, "quota exhausted")
    })
  )

  it.effect("a number JSON cannot hold (1e400) in the default answer is a Decode error naming where it is", () =>
    Effect.gen(function* () {
      const results: Record<string, string> = {
        top: "1e400",
        nested: '{"a":[1,{"b":-1e400}]}',
        fine: '{"a":[1,{"b":-1e300}]}'
      }
      const server = yield* AgentServer.make((t) => ({
        raw: `{"task_id":${JSON.stringify(t.task_id)},"status":"success","result":${results[t.task_id]}}`,
        contentType: "application/json"
      }))
      const service = yield* agents({ cache: true })
      const top = yield* service.call(task("top", server.url))
      assert.deepStrictEqual([top.status, top.error?.reason, top.error?.field], ["error", "Decode", "result"])
      const nested = yield* service.call(task("nested", server.url))
      assert.deepStrictEqual(
        [nested.status, nested.error?.reason, nested.error?.field],
        ["error", "Decode", "result.a[1].b"]
      )
      const fine = yield* service.call(task("fine", server.url))
      assert.strictEqual(fine.status, "success")
      assert.deepStrictEqual(fine.result, { a: [1, { b: -1e300 }] })
      // Nothing changed value on its way to the cache either.
      assert.deepStrictEqual((yield* service.call(task("top", server.url))).status, "error")
    })
  )

  it.effect("HTTP 500 is an error record with the status and the message", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make(() => ({ status: 500, json: { error: { message: "agent crashed" } } }))
      const record = yield* (yield* agents()).call(task("t1", server.url))
      assert.strictEqual(record.status, "error")
      assert.strictEqual(record.error?.httpStatus, 500)
      assert.include(record.error?.message, "agent crashed")
      assert.isUndefined(record.result)
    })
  )

  it.effect(
    "a task's durationMs is read on the monotonic clock: a wall clock stepped back mid-task left it minus an hour",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make(() => ({ hang: true }))
        const service = yield* agents({ options: { timeout: "5 seconds" } })
        const clock = yield* Clock.Clock
        let offset = 0
        // The wall clock an NTP step moves; the monotonic one goes on.
        const stepped: Clock.Clock = {
          ...clock,
          currentTimeMillisUnsafe: () => clock.currentTimeMillisUnsafe() + offset,
          currentTimeMillis: Effect.sync(() => clock.currentTimeMillisUnsafe() + offset),
          currentTimeNanosUnsafe: () => clock.currentTimeNanosUnsafe() + BigInt(offset) * 1_000_000n,
          currentTimeNanos: Effect.sync(() => clock.currentTimeNanosUnsafe() + BigInt(offset) * 1_000_000n)
        }
        const fiber = yield* Effect.forkChild(
          Effect.provideService(service.call(task("a", server.url, { timeout: "100 millis" })), Clock.Clock, stepped)
        )
        yield* server.awaitRequests(1)
        offset = -3_600_000
        yield* TestClock.adjust("100 millis")
        const record = yield* Fiber.join(fiber)
        assert.deepStrictEqual([record.status, record.durationMs], ["timeout", 100])
        // startedAt stays a date: the wall clock's, read before the step.
        assert.strictEqual(record.startedAt, 0)
      })
  )

  it.effect("a hanging agent times out after the request's own timeout, and the request is aborted", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make(() => ({ hang: true }))
      const service = yield* agents({ options: { timeout: "5 seconds" } })
      const fast = yield* Effect.forkChild(service.call(task("a", server.url, { timeout: "100 millis" })))
      const slower = yield* Effect.forkChild(service.call(task("b", server.url, { timeout: "300 millis" })))
      yield* server.awaitRequests(2)
      yield* TestClock.adjust("100 millis")
      const first = yield* Fiber.join(fast)
      assert.strictEqual(first.status, "timeout")
      assert.include(first.error?.message, "100")
      assert.strictEqual(first.durationMs, 100)
      assert.isUndefined(slower.pollUnsafe())
      yield* TestClock.adjust("200 millis")
      const second = yield* Fiber.join(slower)
      assert.deepStrictEqual([second.status, second.durationMs], ["timeout", 300])
      yield* server.awaitAborted(2)
      assert.strictEqual(server.inFlight(), 0)
    })
  )

  it.effect(
    "dispatch runs at most maxConnections tasks at once by default: the others wait unstarted, not on a slot",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make(() => ({ hang: true }))
        const service = yield* agents({
          options: { maxConnections: 2, maxConnectionsPerHost: 2 },
          breakers: { failMax: 100 }
        })
        const ids = Array.from({ length: 10 }, (_, i) => `t${i}`)
        const run = yield* Effect.forkChild(
          service.dispatch(ids.map((id) => task(id, server.url, { timeout: "1 second" })))
        )
        yield* server.awaitRequests(2)
        yield* Effect.yieldNow
        // Read now, checked once every task has ended (the executor's close waits for calls in flight).
        const waiting = (yield* service.connections).waiting
        for (let wave = 0; wave < 5; wave++) {
          yield* TestClock.adjust("1 second")
          for (let i = 0; i < 10; i++) yield* Effect.yieldNow
        }
        const records = yield* Fiber.join(run)
        assert.deepStrictEqual(
          records.map((record) => record.status),
          ids.map(() => "timeout")
        )
        assert.strictEqual(server.requests(), 10)
        // 10 tasks on 2 connections: 8 fibers waited on the slots (200,000 tasks, 200,000 fibers).
        assert.strictEqual(waiting, 0)
      })
  )

  it.effect("attempts counts a try as it starts to wait for a connection slot: one cut there sent no request", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make(() => ({ hang: true }))
      const service = yield* agents({ options: { maxConnections: 1, timeout: "5 seconds" } })
      const holding = yield* Effect.forkChild(service.call(task("a", server.url, { timeout: "1 second" })))
      yield* server.awaitRequests(1)
      const queued = yield* Effect.forkChild(service.call(task("b", server.url, { timeout: "100 millis" })))
      yield* TestClock.adjust("100 millis")
      const cut = yield* Fiber.join(queued)
      assert.deepStrictEqual([cut.status, cut.attempts], ["timeout", 1])
      assert.strictEqual(server.requests(), 1, "the task cut while it waited for the slot sent nothing")
      yield* TestClock.adjust("900 millis")
      const held = yield* Fiber.join(holding)
      assert.deepStrictEqual([held.status, held.attempts], ["timeout", 1])
      assert.strictEqual(server.requests(), 1)
    })
  )

  it.effect("malformed JSON, a missing field and a wrong task id are Decode errors naming the field", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) =>
        t.task_id === "garbage"
          ? { raw: "{not json", contentType: "application/json" }
          : t.task_id === "missing"
            ? { json: { task_id: t.task_id, status: "success" } }
            : { json: { task_id: "someone-else", result: 1 } }
      )
      const service = yield* agents()
      const [garbage, missing, wrongId] = yield* Effect.all([
        service.call(task("garbage", server.url)),
        service.call(task("missing", server.url)),
        service.call(task("wrong", server.url))
      ])
      assert.deepStrictEqual(
        [garbage!.status, garbage!.error?.reason, garbage!.error?.field],
        ["error", "Decode", "(root)"]
      )
      assert.deepStrictEqual([missing!.error?.reason, missing!.error?.field], ["Decode", "result"])
      assert.strictEqual(wrongId!.error?.field, "task_id")
    })
  )

  it.effect("an agent that reports a failed task gives an error record and trips no breaker", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) => ({
        json: { task_id: t.task_id, status: "error", result: "no data" }
      }))
      const service = yield* agents({ breakers: { failMax: 2 } })
      for (let i = 0; i < 4; i++) {
        const record = yield* service.call(task(`r${i}`, server.url))
        assert.strictEqual(record.status, "error")
        assert.include(record.error?.message, "no data")
      }
      assert.strictEqual(server.requests(), 4, "the breaker stayed closed")
    })
  )

  it.effect("an agent's status is read whatever its case: ERROR and Failed are error records; others are results", () =>
    Effect.gen(function* () {
      // The task id is the status the agent answers.
      const server = yield* AgentServer.make((t) => ({
        json: { task_id: t.task_id, status: t.task_id.replace(/^\d+:/, ""), result: "no data" }
      }))
      const service = yield* agents()
      const statuses = ["ERROR", "Failed", "FAILED", "Error", " error "]
      for (const [i, status] of statuses.entries()) {
        const record = yield* service.call(task(`${i}:${status}`, server.url))
        assert.strictEqual(record.status, "error", status)
        assert.include(record.error?.message, "no data", status)
      }
      for (const [i, status] of ["success", "OK", "done", "completed"].entries()) {
        const record = yield* service.call(task(`${i}:${status}`, server.url))
        assert.strictEqual(record.status, "success", status)
        assert.strictEqual(record.result, "no data", status)
      }
    })
  )

  it.effect("an agent's failure report whose result is an error object keeps its message in the record", () =>
    Effect.gen(function* () {
      const results: Record<string, unknown> = {
        a: { message: "quota exhausted" },
        b: { error: { message: "no such city", code: "not_found" } },
        c: { error: "rate limited upstream" }
      }
      const server = yield* AgentServer.make((t) => ({
        json: { task_id: t.task_id, status: "failed", result: results[t.task_id] }
      }))
      const service = yield* agents()
      for (const [id, words] of [
        ["a", "quota exhausted"],
        ["b", "no such city"],
        ["c", "rate limited upstream"]
      ]) {
        const record = yield* service.call(task(id!, server.url))
        assert.strictEqual(record.status, "error")
        assert.strictEqual(record.error?.message, `${server.url} reported status "failed": ${words}`)
      }
    })
  )

  it.effect("an agent's report of a failed task is scrubbed of secret headers and bounded in the record", () =>
    Effect.gen(function* () {
      const SECRET = "agent-token-4b7e2a9c1d"
      const server = yield* AgentServer.make((t) => ({
        json: {
          task_id: t.task_id,
          status: "error",
          result: t.task_id === "echo" ? `rejected token ${SECRET}` : `stack: ${"x".repeat(1024 * 1024)}`
        }
      }))
      const secured = HttpAgent.agent({
        url: server.url,
        headers: { authorization: Redacted.make(`Bearer ${SECRET}`) }
      })
      const service = yield* agents()
      const echoed = yield* service.call(task("echo", secured))
      assert.strictEqual(echoed.status, "error")
      assert.include(echoed.error?.message, "rejected token <redacted>")
      assert.notInclude(JSON.stringify(echoed), SECRET)
      // A 1 MiB report made a 1 MiB message; the agent's other errors are cut at 500 characters.
      const long = yield* service.call(task("long", secured))
      assert.strictEqual(long.status, "error")
      assert.include(long.error?.message, "stack: xxx")
      assert.isBelow(long.error!.message.length, 1000)
    })
  )

  it.effect("an answer for another task id names it without secrets, cut short", () =>
    Effect.gen(function* () {
      const SECRET = "agent-token-9c3d5e7f1a"
      const server = yield* AgentServer.make((t) => ({
        json: { task_id: t.task_id === "echo" ? `Bearer ${SECRET}` : "y".repeat(1024 * 1024), result: 1 }
      }))
      const secured = HttpAgent.agent({
        url: server.url,
        headers: { authorization: Redacted.make(`Bearer ${SECRET}`) }
      })
      const service = yield* agents()
      for (const id of ["echo", "long"]) {
        const record = yield* service.call(task(id, secured))
        assert.deepStrictEqual(
          [record.status, record.error?.reason, record.error?.field],
          ["error", "Decode", "task_id"]
        )
        assert.notInclude(JSON.stringify(record), SECRET)
        assert.isBelow(record.error!.message.length, 1000)
      }
    })
  )

  it.effect(
    "a header value that is not a string is refused as a provider refuses it: naming the header and its type",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make()
        const service = yield* agents()
        const given: ReadonlyArray<unknown> = [5, Redacted.make(5), null]
        for (const value of given) {
          const headers = { "x-n": value } as never
          const record = yield* service.call(task("hv", HttpAgent.agent({ url: server.url, headers })))
          const provider = yield* Effect.flip(OpenAiCompat.make({ headers }))
          assert.strictEqual(record.status, "error")
          assert.strictEqual(record.error?.field, 'agent.headers["x-n"]')
          assert.strictEqual(provider.path, 'headers["x-n"]')
          const expected = `expected a string or a Redacted string, got ${value === null ? "null" : "a number"}`
          assert.include(provider.message, expected)
          assert.include(record.error?.message, expected)
        }
        assert.strictEqual(server.requests(), 0)
      }).pipe(Effect.provide(FetchHttpClient.layer))
  )

  it.effect(
    "a Redacted header over plain http off loopback is refused naming it, as Gemini's and watsonx's keys are",
    () =>
      Effect.gen(function* () {
        const service = yield* agents({ client: echoClient })
        for (const url of [
          "http://agents.test/task",
          "HTTP://10.0.0.7:8080/task?k=v",
          "http://127.0.0.1.example/task"
        ]) {
          const agent = HttpAgent.agent({
            url,
            name: "remote",
            headers: { "x-tenant": "t1", "X-Api-Key": Redacted.make("agent-s3cret") }
          })
          assert.strictEqual(agent.issue?.path, 'agent.headers["X-Api-Key"]', url)
          assert.include(agent.issue?.message, "plain http is refused off loopback", url)
          const record = yield* service.call(task("h", agent))
          assert.deepStrictEqual(
            [record.status, record.error?.reason, record.error?.field, record.agent, record.attempts],
            ["error", "InvalidRequest", 'agent.headers["X-Api-Key"]', "remote", 0],
            url
          )
          assert.notInclude(JSON.stringify(record), "agent-s3cret")
        }
        // https anywhere, loopback over http, and plain (not Redacted) headers are sent.
        for (const [url, headers] of [
          ["https://agents.test/task", { authorization: Redacted.make("Bearer t") }],
          ["http://127.0.0.1:1/task", { authorization: Redacted.make("Bearer t") }],
          ["http://localhost:1/task", { authorization: Redacted.make("Bearer t") }],
          ["http://[::1]:1/task", { authorization: Redacted.make("Bearer t") }],
          ["http://agents.test/task", { "x-tenant": "t1" }]
        ] as const) {
          assert.isUndefined(HttpAgent.agent({ url, headers }).issue, url)
        }
        // A network the application says is its own: sent, still scrubbed from what the agent prints.
        const meshed = HttpAgent.agent({
          url: "http://search.mesh.internal:8080/task",
          headers: { "X-Api-Key": Redacted.make("agent-s3cret") },
          allowPlainHttpSecrets: true
        })
        assert.isUndefined(meshed.issue)
        assert.notInclude(JSON.stringify(meshed), "agent-s3cret")
        const notBoolean = HttpAgent.agent({
          url: "http://search.mesh.internal:8080/task",
          allowPlainHttpSecrets: "yes" as unknown as boolean
        })
        assert.strictEqual(notBoolean.issue?.path, "agent.allowPlainHttpSecrets")
      })
  )

  it.effect(
    "a Redacted header over plain http with a very long name is refused naming it bounded, as every other header issue",
    () =>
      Effect.sync(() => {
        const name = `x-${"k".repeat(10_000)}`
        const agent = HttpAgent.agent({
          url: "http://agents.test/task",
          name: "remote",
          headers: { [name]: Redacted.make("agent-s3cret") }
        })
        assert.include(agent.issue?.message, "plain http is refused off loopback")
        // The name as any header issue shows it: its first 80 characters, an ellipsis and its length.
        assert.strictEqual(agent.issue?.path, `agent.headers["x-${"k".repeat(78)}"… (10,002 characters)]`)
        assert.isBelow(agent.issue?.path.length ?? Infinity, 200)
        assert.notInclude(JSON.stringify(agent), "agent-s3cret")
      })
  )

  it.effect(
    "an agent URL that is no string (one String() throws on) is its issue naming agent.url, not an exception",
    () =>
      Effect.gen(function* () {
        const urls: ReadonlyArray<unknown> = [
          Object.create(null),
          {
            toString: () => {
              throw new Error("no string")
            }
          },
          5
        ]
        const service = yield* agents()
        for (const url of urls) {
          const agent = HttpAgent.agent({ url: url as string })
          assert.strictEqual(agent.issue?.path, "agent.url")
          assert.deepStrictEqual([agent.name, agent.url], ["unknown", ""])
          const record = yield* service.call(task("u", agent))
          assert.deepStrictEqual(
            [record.status, record.error?.field, record.agent, record.url],
            ["error", "agent.url", "unknown", ""]
          )
          // Given a name, the records name it.
          assert.strictEqual(HttpAgent.agent({ url: url as string, name: "named" }).name, "named")
        }
        // An endpoint of a Discovery service of the application's own: a record, not a defect.
        const discovery = Layer.succeed(Discovery.Discovery, {
          name: "own",
          resolve: () => Effect.succeed([{ url: Object.create(null) }])
        })
        const context = yield* Layer.build(
          HttpAgent.layer().pipe(
            Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
            Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}), discovery)),
            Layer.provide(NodeHttpClient.layerUndici)
          )
        ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
        const exit = yield* Effect.exit(Context.get(context, HttpAgent.HttpAgents).call(task("d", undefined)))
        assert.isTrue(Exit.isSuccess(exit))
        const record = (exit as Exit.Success<HttpAgent.TaskRecord>).value
        // The registry's invalid agent, as the library's discoveries refuse one.
        assert.deepStrictEqual([record.status, record.error?.reason], ["service_unavailable", "DiscoveryUnavailable"])
        assert.include(record.error?.message, "invalid agent [0].url")
      })
  )

  it.effect("an agent whose field throws when read is refused as no agent: call, dispatch and stats do not die", () =>
    Effect.gen(function* () {
      const decode = HttpAgent.agent({ url: "http://127.0.0.1:1/x" }).decode
      const throwing = (field: string) =>
        Object.defineProperty({ url: "http://127.0.0.1:1/x", name: "x", decode }, field, {
          enumerable: true,
          get: () => {
            throw new Error(`no ${field}`)
          }
        }) as HttpAgent.Agent
      const service = yield* agents({ client: echoClient })
      for (const field of ["url", "name", "decode", "issue"]) {
        const agent = throwing(field)
        const own = yield* Effect.exit(service.call(task("t", agent)))
        assert.isTrue(Exit.isSuccess(own), field)
        assert.deepStrictEqual(
          Exit.isSuccess(own) ? [own.value.status, own.value.error?.field, own.value.agent] : [],
          ["error", "agent", "unknown"],
          field
        )
        const fallback = yield* Effect.exit(service.call(task("f", "http://agents.test/a", { fallback: [agent] })))
        assert.deepStrictEqual(Exit.isSuccess(fallback) ? fallback.value.error?.field : "died", "fallback[0]", field)
        const records = yield* Effect.exit(
          service.dispatch([task("a", null as never), task("b", agent, { dependsOn: ["a"] })])
        )
        assert.deepStrictEqual(
          Exit.isSuccess(records) ? records.value.map((r) => [r.status, r.agent]) : "died",
          [
            ["error", "unknown"],
            ["skipped", "unknown"]
          ],
          field
        )
        const stats = yield* Effect.exit(service.stats(agent))
        assert.deepStrictEqual(Exit.isSuccess(stats) ? stats.value.agent : "died", "unknown", field)
      }
    })
  )

  it.effect("an agent URL with credentials is refused, saying what to use instead, and never shows the password", () =>
    Effect.gen(function* () {
      const service = yield* agents()
      for (const url of [
        "http://user:s3cret-pw@127.0.0.1:1/x",
        "http://s3cret-pw@127.0.0.1:1/x?k=v",
        // Forms the URL parser reads as http://user:s3cret-pw@127.0.0.1:1/x: records and names showed them whole.
        "http:user:s3cret-pw@127.0.0.1:1/x",
        "http:/user:s3cret-pw@127.0.0.1:1/x",
        "http:\\\\user:s3cret-pw@127.0.0.1:1/x",
        "HTTP:\\/user:s3cret-pw@127.0.0.1:1/x"
      ]) {
        const record = yield* service.call(task("c", url))
        assert.strictEqual(record.status, "error")
        assert.strictEqual(record.error?.field, "agent.url")
        assert.include(record.error?.message, "headers")
        assert.notInclude(inspect(record, { depth: 10 }), "s3cret-pw")
        assert.notInclude(JSON.stringify(record), "s3cret-pw")
        const agent = HttpAgent.agent({ url })
        assert.notInclude(agent.name, "s3cret-pw")
        assert.strictEqual(agent.name, "http://127.0.0.1:1/x", url)
        assert.strictEqual(record.url, "http://127.0.0.1:1/x", url)
        assert.notInclude(inspect(agent), "s3cret-pw")
      }
      // Refused agents take no series of their own: their records count with the tasks naming no valid agent.
      assert.strictEqual((yield* service.stats("http://127.0.0.1:1/x")).statuses.error, 0)
      assert.strictEqual((yield* service.stats("unknown")).statuses.error, 6)
    })
  )

  it.effect("an agent URL with surrounding spaces or a control character is refused naming agent.url", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      // The URL parser drops them without a word: the request went to another URL than the one given.
      for (const url of [
        `  ${server.url}`,
        `${server.url}\n`,
        `${server.url}\nHost: evil`,
        `${server.url}?k=s3cret\t`
      ]) {
        assert.strictEqual(HttpAgent.agent({ url }).issue?.path, "agent.url", JSON.stringify(url))
        const record = yield* service.call(task("c", url))
        assert.deepStrictEqual([record.status, record.error?.field], ["error", "agent.url"], JSON.stringify(url))
        assert.notInclude(JSON.stringify(record), "s3cret")
      }
      assert.strictEqual(server.requests(), 0)
    })
  )

  it.effect("a refused connection is a Transport error record, not a failure", () =>
    Effect.gen(function* () {
      const closedUrl = yield* Effect.scoped(Effect.map(AgentServer.make(), (s) => s.url))
      const record = yield* (yield* agents()).call(task("t", closedUrl))
      assert.strictEqual(record.status, "error")
      assert.strictEqual(record.error?.reason, "Transport")
    })
  )

  it.effect("an agent name JSON cannot write (a BigInt) is the agent's issue naming it, not an exception", () =>
    Effect.gen(function* () {
      const agent = HttpAgent.agent({ url: "http://127.0.0.1:1/task", name: 1n as never })
      assert.strictEqual(agent.issue?.path, "agent.name")
      const record = yield* (yield* agents()).call(task("n", agent))
      assert.deepStrictEqual([record.status, record.error?.field], ["error", "agent.name"])
    })
  )

  it.effect("an agent header whose getter throws is the agent's issue naming the header, not an exception", () =>
    Effect.gen(function* () {
      const headers = Object.defineProperty({}, "x-key", {
        enumerable: true,
        get: () => {
          throw new Error("no key")
        }
      }) as Record<string, string>
      const agent = HttpAgent.agent({ url: "http://127.0.0.1:1/task", headers })
      assert.strictEqual(agent.issue?.path, 'agent.headers["x-key"]')
      const record = yield* (yield* agents()).call(task("h", agent))
      assert.deepStrictEqual([record.status, record.error?.field], ["error", 'agent.headers["x-key"]'])
    })
  )

  it.effect("a task or option whose field throws when read is a record or OptionError naming it, not a defect", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      const record = yield* service.call(throwing(task("g", server.url), "timeout"))
      assert.deepStrictEqual(
        [record.status, record.error?.reason, record.error?.field],
        ["error", "InvalidRequest", "timeout"]
      )
      assert.include(record.error?.message, "no timeout")
      assert.strictEqual(server.requests(), 0)
      // HttpAgent.agent threw it out of the constructor; it is the agent's issue, as a bad value is.
      const made = HttpAgent.agent(throwing({ url: server.url }, "timeout"))
      assert.strictEqual(made.issue?.path, "agent.timeout")
      const viaAgent = yield* service.call(task("ga", made))
      assert.deepStrictEqual([viaAgent.status, viaAgent.error?.field], ["error", "agent.timeout"])
      assert.strictEqual(server.requests(), 0)
      const exit = yield* Effect.exit(agents({ options: throwing({}, "maxConnections") }))
      const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : undefined
      const failure =
        error?._tag === "Some" ? (error.value as { readonly _tag: string; readonly path: string }) : undefined
      assert.deepStrictEqual([failure?._tag, failure?.path], ["OptionError", "maxConnections"])
    })
  )

  it.effect(
    "a task id that throws when read or written as text is a record naming id; spans keep only a valid id",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make()
        const { spans, tracer } = recording()
        const service = yield* agents()
        const unreadable = yield* service.call(throwing(task("g", server.url), "id"))
        const unwritable = yield* service.call(
          task({ toString: () => assert.fail("written as text") } as never, server.url)
        )
        for (const record of [unreadable, unwritable]) {
          assert.deepStrictEqual(
            [record.status, record.error?.reason, record.error?.field],
            ["error", "InvalidRequest", "id"]
          )
        }
        assert.strictEqual(unwritable.taskId, "an object")
        // Refused at 1,000 characters: a span showed all five million.
        const long = yield* service
          .call(task("x".repeat(5_000_000), server.url))
          .pipe(Effect.provideService(Tracer.Tracer, tracer))
        assert.strictEqual(long.error?.field, "id")
        yield* service.call(task("fine", server.url)).pipe(Effect.provideService(Tracer.Tracer, tracer))
        assert.deepStrictEqual(
          spans.filter((span) => span.name === "HttpAgent.call").map((span) => span.attributes.get("agent.task_id")),
          [undefined, "fine"]
        )
        assert.strictEqual(server.requests(), 1)
      })
  )

  it.effect("args holding a number JSON cannot write (NaN, Infinity) or no JSON at all are refused naming args", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      // JSON.stringify wrote each number as null: the agent got `temperature: null` for NaN.
      const cases: ReadonlyArray<readonly [unknown, string]> = [
        [{ temperature: Number.NaN }, '"temperature"'],
        [{ days: [1, Number.POSITIVE_INFINITY] }, '"1"'],
        [Number.NEGATIVE_INFINITY, "-Infinity"],
        [() => 1, "not JSON"]
      ]
      for (const [args, shown] of cases) {
        const record = yield* service.call(task("n", server.url, { args }))
        assert.deepStrictEqual(
          [record.status, record.error?.reason, record.error?.field],
          ["error", "InvalidRequest", "args"],
          shown
        )
        assert.include(record.error?.message, shown)
      }
      assert.strictEqual(server.requests(), 0)
      // What JSON writes as it is still goes: a Date as its string, a missing field left out.
      const sent = yield* service.call(task("ok", server.url, { args: { at: new Date(0), gone: undefined, n: 1.5 } }))
      assert.strictEqual(sent.status, "success")
      assert.deepStrictEqual(server.received()[0]?.args, { at: "1970-01-01T00:00:00.000Z", n: 1.5 })
    })
  )

  it.effect("invalid agents and tasks are error records naming the field; nothing is sent (issue 10)", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      const circular: Record<string, unknown> = { city: "Oslo" }
      circular.self = circular
      const cases: ReadonlyArray<readonly [HttpAgent.Task, string]> = [
        [task("u", "not a url"), "agent.url"],
        [task("c", "http://user:pw@127.0.0.1:1/x"), "agent.url"],
        [task("n", HttpAgent.agent({ url: server.url, timeout: Number.NaN })), "agent.timeout"],
        [task("m", HttpAgent.agent({ url: server.url, timeout: -1 })), "agent.timeout"],
        [task("s", HttpAgent.agent({ url: server.url, timeout: "-5 seconds" as never })), "agent.timeout"],
        [task("z", HttpAgent.agent({ url: server.url, timeout: 0 })), "agent.timeout"],
        [task("r", HttpAgent.agent({ url: server.url, retry: { maxAttempts: 0 } })), "agent.retry.maxAttempts"],
        [task("o", HttpAgent.agent({ url: server.url, timout: "1 second" } as never)), "agent.timout"],
        // The name of the series the agents past the bound share.
        [task("on", HttpAgent.agent({ url: server.url, name: "(other)" })), "agent.name"],
        [task("o2", HttpAgent.agent({ url: server.url, answr: Schema.String } as never)), "agent.answr"],
        // A string's characters were sent as headers "0", "1", ...; null read as no headers.
        [task("hs", HttpAgent.agent({ url: server.url, headers: "abc" as never })), "agent.headers"],
        [task("hn", HttpAgent.agent({ url: server.url, headers: null as never })), "agent.headers"],
        [task("ha", HttpAgent.agent({ url: server.url, headers: ["x"] as never })), "agent.headers"],
        // These threw out of HttpAgent.agent.
        [task("an", HttpAgent.agent({ url: server.url, answer: null as never })), "agent.answer"],
        [task("a5", HttpAgent.agent({ url: server.url, answer: 5 as never })), "agent.answer"],
        [task("h", HttpAgent.agent({ url: server.url, headers: { "x-a": "b\nc" } })), 'agent.headers["x-a"]'],
        [
          task("k", HttpAgent.agent({ url: server.url, headers: { authorization: Redacted.make("Bearer a\r\nb") } })),
          'agent.headers["authorization"]'
        ],
        [task("t", server.url, { timeout: "soon" as never }), "timeout"],
        [task("big", server.url, { args: { n: 1n } }), "args"],
        [task("cycle", server.url, { args: circular }), "args"],
        [{ ...task("i", server.url), intent: 3 as never }, "intent"],
        // A huge concept became a huge registry URL and cache key; an empty one matched nothing useful.
        [{ ...task("ci", server.url), concept: "x".repeat(1_001) }, "concept"],
        [{ ...task("ce", server.url), concept: "" }, "concept"],
        [{ ...task("ie", server.url), intent: "" }, "intent"],
        // Part of a cache key kept in memory or on Redis: unbounded, one task could store a key of any size.
        [task("kl", server.url, { cacheKey: "k".repeat(1_001) }), "cacheKey"],
        [task("ke", server.url, { cacheKey: "" }), "cacheKey"],
        [{ ...task("", server.url) }, "id"],
        [task("none", undefined), "agent"],
        // Misspelt: the default timeout stood in, the dependency was dropped.
        [task("tt", server.url, { timout: "1 second" } as never), "timout"],
        [task("dd", server.url, { dependOn: ["a"] } as never), "dependOn"],
        // Ignored outside a batch, but refused as a batch refuses it.
        [task("dn", server.url, { dependsOn: null as never }), "dependsOn"],
        [task("ds", server.url, { dependsOn: "a" as never }), "dependsOn"],
        [task("d1", server.url, { dependsOn: [1] as never }), "dependsOn[0]"]
      ]
      for (const [t, field] of cases) {
        const record = yield* service.call(t)
        assert.strictEqual(record.status, "error", field)
        assert.strictEqual(record.error?.reason, "InvalidRequest", field)
        assert.strictEqual(record.error?.field, field)
      }
      assert.strictEqual(server.requests(), 0)
    })
  )

  it.effect(
    "an agent name holding a lone surrogate is refused naming it (or the URL it defaults to); no series is labelled with it",
    () =>
      Effect.gen(function* () {
        const registry = new Map<string, never>()
        const service = yield* agents({ registry, client: echoClient })
        // In UTF-8 (a scrape, a log line) each lone surrogate is U+FFFD: these were one agent's series.
        const cases: ReadonlyArray<readonly [HttpAgent.Agent, string]> = [
          [HttpAgent.agent({ url: "http://agents.test/a", name: "agent-\uD800" }), "agent.name"],
          [HttpAgent.agent({ url: "http://agents.test/a", name: "agent-\uDC00" }), "agent.name"],
          // No name: the URL (without its query) is the name.
          [HttpAgent.agent({ url: "http://agents.test/b-\uD800" }), "agent.url"]
        ]
        for (const [agent, field] of cases) {
          assert.strictEqual(agent.issue?.path, field)
          assert.include(agent.issue?.message, "surrogate")
          const record = yield* service.call(task("lone", agent))
          assert.deepStrictEqual([record.status, record.error?.field, record.attempts], ["error", field, 0])
          assert.isFalse(/[\uD800-\uDFFF]/u.test(record.agent), `the record's agent: ${JSON.stringify(record.agent)}`)
        }
        const snapshot = yield* Effect.provideService(Metric.snapshot, Metric.MetricRegistry, registry)
        const labels = snapshot.flatMap((m) => Object.values(m.attributes ?? {}))
        assert.isFalse(
          labels.some((label) => typeof label === "string" && /[\uD800-\uDFFF]/u.test(label)),
          JSON.stringify(labels)
        )
        // A pair is one character, with its UTF-8 form.
        const paired = yield* service.call(task("pair", HttpAgent.agent({ url: "http://agents.test/a", name: "😀" })))
        assert.deepStrictEqual([paired.status, paired.agent], ["success", "😀"])
      })
  )

  it.effect(
    "an agent or fallback that is neither an agent nor a URL is an error record naming it, in a batch too",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make()
        const service = yield* agents()
        const cases: ReadonlyArray<readonly [Partial<HttpAgent.Task>, string]> = [
          [{ agent: 5 as never }, "agent"],
          [{ agent: { url: server.url } as never }, "agent"],
          [{ agent: null as never }, "agent"],
          [{ agent: server.url, fallback: [null as never] }, "fallback[0]"],
          [{ agent: server.url, fallback: [server.url, { url: server.url } as never] }, "fallback[1]"]
        ]
        for (const [extra, field] of cases) {
          const record = yield* service.call(task("bad", undefined, extra))
          assert.deepStrictEqual(
            [record.status, record.error?.reason, record.error?.field, record.attempts],
            ["error", "InvalidRequest", field, 0],
            field
          )
        }
        const records = yield* service.dispatch([
          task("root", 5 as never),
          task("child", { url: server.url } as never, { dependsOn: ["root"] }),
          // No agent and no Discovery service: as invalid as the others.
          task("orphan", undefined, { dependsOn: ["root"] })
        ])
        // The skipped tasks name no agent, as the invalid one does: it was their agent that was wrong
        // (they were labelled "discovery", which had nothing to do with it).
        assert.deepStrictEqual(
          records.map((r) => [r.taskId, r.status, r.error?.field, r.agent, r.url]),
          [
            ["root", "error", "agent", "unknown", ""],
            ["child", "skipped", undefined, "unknown", ""],
            ["orphan", "skipped", undefined, "unknown", ""]
          ]
        )
        assert.deepStrictEqual((yield* service.stats("unknown")).statuses.skipped, 2)
        assert.strictEqual((yield* service.stats("discovery")).tasks, 0)
        assert.strictEqual(server.requests(), 0)
      })
  )

  it.effect("a redirect is the agent's error, never followed: not even by fetch, which follows them itself", () =>
    Effect.gen(function* () {
      const elsewhere = yield* AgentServer.make()
      const redirecting = yield* AgentServer.make(() => ({ status: 307, headers: { location: elsewhere.url } }))
      const service = yield* Layer.build(
        HttpAgent.layer().pipe(
          Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
          Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}))),
          Layer.provide(FetchHttpClient.layer)
        )
      ).pipe(
        Effect.provideService(Metric.MetricRegistry, new Map()),
        Effect.map((context) => Context.get(context, HttpAgent.HttpAgents))
      )
      const agent = HttpAgent.agent({ url: redirecting.url, headers: { "x-api-key": Redacted.make("agent-secret") } })
      const record = yield* service.call(task("moved", agent))
      assert.deepStrictEqual([record.status, record.error?.httpStatus], ["error", 307])
      assert.strictEqual(elsewhere.requests(), 0, "the task and its secret header went nowhere else")
    })
  )

  it.effect("an agent named by a URL with a query shows it without the query in records, errors and stats", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make(() => ({ status: 500, json: { error: "down" } }))
      const service = yield* agents()
      const url = `${server.url}?token=s3cret-token`
      const record = yield* service.call(task("q", url))
      assert.strictEqual(record.status, "error")
      assert.notInclude(JSON.stringify(record), "s3cret")
      assert.deepStrictEqual([record.agent, record.url], [server.url, server.url])
      assert.strictEqual((yield* service.stats(server.url)).statuses.error, 1)
    })
  )

  it.effect("a token in an agent URL's query reaches the agent but no span; its fragment is not sent", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make(() => ({ status: 500, json: { error: "down" } }))
      const { spans, tracer } = recording()
      const service = yield* agents()
      const record = yield* service
        .call(task("q", `${server.url}?token=s3cret-token&region=eu#frag-s3cret`))
        .pipe(Effect.provideService(Tracer.Tracer, tracer))
      assert.strictEqual(record.error?.httpStatus, 500)
      assert.deepStrictEqual(server.paths(), ["/task?token=s3cret-token&region=eu"])
      const http = spans.find((s) => s.name === "POST")!
      assert.strictEqual(http.attributes.get("url.query"), "token=REDACTED&region=REDACTED")
      for (const span of spans) {
        assert.notInclude(inspect(Object.fromEntries(span.attributes), { depth: 10 }), "s3cret", span.name)
        if (span.status._tag === "Ended" && Exit.isFailure(span.status.exit)) {
          assert.notInclude(Cause.pretty(span.status.exit.cause), "s3cret")
        }
      }
    })
  )

  it.effect("a token of an agent URL's query that the agent echoes is scrubbed from records and spans", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) =>
        t.task_id === "reported"
          ? { json: { task_id: t.task_id, status: "error", result: "key s3cret-token has no quota" } }
          : { status: 401, json: { error: { message: "bad key s3cret-token (as a%20b)" } } }
      )
      const { spans, tracer } = recording()
      const service = yield* agents()
      const url = `${server.url}?token=s3cret-token&other=a%20b`
      const refused = yield* service.call(task("q", url)).pipe(Effect.provideService(Tracer.Tracer, tracer))
      assert.strictEqual(refused.error?.httpStatus, 401)
      assert.include(refused.error?.message, "bad key <redacted>")
      const reported = yield* service.call(task("reported", url)).pipe(Effect.provideService(Tracer.Tracer, tracer))
      assert.strictEqual(reported.status, "error")
      assert.include(reported.error?.message, "key <redacted> has no quota")
      for (const record of [refused, reported]) {
        assert.notInclude(JSON.stringify(record), "s3cret")
        assert.notInclude(JSON.stringify(record), "a%20b")
      }
      for (const span of spans) {
        if (span.status._tag === "Ended" && Exit.isFailure(span.status.exit)) {
          assert.notInclude(Cause.pretty(span.status.exit.cause), "s3cret", span.name)
        }
      }
    })
  )

  it.effect(
    "an endless 200 body ends in a TooLarge error record at the bound; the connection is closed (issue 13.15)",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make(() => ({ endless: true }))
        const service = yield* agents({ options: { maxResponseBytes: 1024 * 1024 } })
        const record = yield* service.call(task("flood", server.url))
        assert.strictEqual(record.status, "error")
        assert.strictEqual(record.error?.reason, "TooLarge")
        assert.include(record.error?.message, "maxResponseBytes")
        yield* server.awaitAborted(1)
        assert.isBelow(server.bytesSent(), 32 * 1024 * 1024, "reading stopped near the bound")
      })
  )

  it.effect("an agent's headers are made plain once per agent, not on every request; each request carries them", () =>
    Effect.gen(function* () {
      const SECRET = "agent-token-2b8e"
      const server = yield* AgentServer.make()
      const built = HttpAgent.agent({
        url: server.url,
        name: "counted",
        headers: { authorization: Redacted.make(`Bearer ${SECRET}`), "x-tenant": "t1" }
      })
      let reads = 0
      const counted: HttpAgent.Agent = {
        ...built,
        headers: new Proxy(built.headers, {
          ownKeys: (target) => {
            reads++
            return Reflect.ownKeys(target)
          }
        })
      }
      const service = yield* agents()
      for (const id of ["a", "b", "c"]) assert.strictEqual((yield* service.call(task(id, counted))).status, "success")
      assert.strictEqual(reads, 1)
      const seen = server.headers()
      assert.deepStrictEqual(
        seen.map((h) => [h.authorization, h["x-tenant"]]),
        [
          [`Bearer ${SECRET}`, "t1"],
          [`Bearer ${SECRET}`, "t1"],
          [`Bearer ${SECRET}`, "t1"]
        ]
      )
      assert.notInclude(inspect(counted, { depth: 10 }), SECRET)
    })
  )

  it.effect("a secret header reaches the agent but no span, error or record", () =>
    Effect.gen(function* () {
      const SECRET = "agent-token-7f3c9e1d5b"
      const server = yield* AgentServer.make(() => ({
        status: 401,
        json: { error: { message: `bad token ${SECRET}` } },
        headers: { "x-echo": SECRET, "x-request-id": "req-9" }
      }))
      const { spans, tracer } = recording()
      const secured = HttpAgent.agent({
        url: server.url,
        name: "secured",
        headers: { authorization: Redacted.make(`Bearer ${SECRET}`) }
      })
      const service = yield* agents()
      const record = yield* service.call(task("s", secured)).pipe(
        Effect.provideService(HttpClient.TracerHeaderFilter, () => true),
        Effect.provideService(Tracer.Tracer, tracer)
      )
      assert.strictEqual(server.headers()[0]?.authorization, `Bearer ${SECRET}`)
      assert.strictEqual(record.error?.httpStatus, 401)
      assert.notInclude(JSON.stringify(record), SECRET)
      assert.notInclude(inspect(secured, { depth: 10 }), SECRET)
      assert.isAbove(spans.length, 1)
      for (const span of spans) {
        assert.notInclude(inspect(Object.fromEntries(span.attributes), { depth: 10 }), SECRET, span.name)
        if (span.status._tag === "Ended" && Exit.isFailure(span.status.exit)) {
          assert.notInclude(Cause.pretty(span.status.exit.cause), SECRET)
        }
      }
      const http = spans.find((s) => s.name === "POST")!
      assert.strictEqual(http.attributes.get("http.request.header.authorization"), "<redacted>")
      assert.strictEqual(http.attributes.get("http.response.header.x-request-id"), "req-9")
    })
  )

  it.effect(
    "layer options are checked: maxConnections 0 or NaN, maxConnectionsPerHost -1, bad durations (issue 7)",
    () =>
      Effect.gen(function* () {
        const cases: ReadonlyArray<readonly [HttpAgent.Options, string]> = [
          [{ maxConnections: 0 }, "maxConnections"],
          [{ maxConnections: Number.NaN }, "maxConnections"],
          [{ maxConnectionsPerHost: -1 }, "maxConnectionsPerHost"],
          [{ maxConnectionsPerHost: 2.5 }, "maxConnectionsPerHost"],
          [{ timeout: -1 }, "timeout"],
          [{ timeout: Number.NaN }, "timeout"],
          [{ timeout: "-5 seconds" as never }, "timeout"],
          [{ maxResponseBytes: 0 }, "maxResponseBytes"],
          [{ retry: { maxAttempts: 0 } }, "retry.maxAttempts"],
          [{ maxConnection: 5 } as HttpAgent.Options, "maxConnection"],
          // null is a wrong value, not the default.
          [{ timeout: null as never }, "timeout"],
          [{ maxConnections: null as never }, "maxConnections"],
          [{ maxResponseBytes: null as never }, "maxResponseBytes"],
          // It turned on the default policy: three requests of a task that need not be idempotent.
          [{ retry: null as never }, "retry"],
          // Each of these kept the cache on.
          [{ cache: 0 as never }, "cache"],
          [{ cache: "false" as never }, "cache"],
          [{ cache: null as never }, "cache"],
          // Breakers of the service's own with their defaults, instead of the shared ones.
          [{ breaker: null as never }, "breaker"],
          [{ breaker: 5 as never }, "breaker"],
          [{ breaker: { failMax: 0 } }, "breaker.failMax"],
          [null as never, "options"]
        ]
        for (const [options, path] of cases) {
          const error = yield* Effect.flip(build({ options }))
          assert.strictEqual(error._tag, "OptionError", path)
          assert.strictEqual((error as { readonly path: string }).path, path)
        }
      })
  )

  it.effect("an agent's retry: null is refused by name, not three requests", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make(() => ({ status: 503 }))
      const service = yield* agents()
      const record = yield* service.call(task("once", HttpAgent.agent({ url: server.url, retry: null as never })))
      assert.deepStrictEqual(
        [record.status, record.error?.reason, record.error?.field],
        ["error", "InvalidRequest", "agent.retry"]
      )
      assert.strictEqual(server.requests(), 0)
    })
  )
})

describe("HttpAgent: an agent's accept header", () => {
  it.effect("a user's accept (any case) is sent as given, the answer read as JSON; without one, application/json", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      const vendor = "application/vnd.agent.v2+json"
      for (const [i, headers] of [{ accept: vendor }, { Accept: vendor }, undefined].entries()) {
        const agent = HttpAgent.agent({ url: server.url, name: `accepting-${i}`, headers })
        const record = yield* service.call(task(`accept-${i}`, agent))
        assert.strictEqual(record.status, "success")
        assert.strictEqual(server.headers()[i]?.accept, headers === undefined ? "application/json" : vendor)
      }
    })
  )
})

describe("HttpAgent: an agent's content-type header", () => {
  it.effect("a user's content-type (any case) labels the JSON body as given; without one, application/json", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      const vendor = "application/vnd.api+json"
      for (const [i, headers] of [{ "content-type": vendor }, { "Content-Type": vendor }, undefined].entries()) {
        const agent = HttpAgent.agent({ url: server.url, name: `typed-${i}`, headers })
        const record = yield* service.call(task(`type-${i}`, agent))
        assert.strictEqual(record.status, "success")
        assert.strictEqual(server.headers()[i]?.["content-type"], headers === undefined ? "application/json" : vendor)
        assert.deepStrictEqual(server.received()[i]?.args, { city: "Oslo", days: [1, 2] })
      }
    })
  )
})

describe("HttpAgent: breakers, cache and fallback through the executor's pipeline", () => {
  it.effect(
    "the agent's breaker opens after repeated failures, serves the cached result, and closes after the reset",
    () =>
      Effect.gen(function* () {
        // request 0 succeeds, 1-3 fail, later ones succeed
        const server = yield* AgentServer.make((t, i) =>
          i >= 1 && i <= 3 ? { status: 503 } : { json: { task_id: t.task_id, result: `answer ${i}` } }
        )
        const service = yield* agents({ breakers: { failMax: 3, resetTimeout: "200 millis" }, cache: true })
        const same = task("t", server.url)
        assert.strictEqual((yield* service.call(same)).status, "success")
        for (let i = 0; i < 3; i++) assert.strictEqual((yield* service.call(same)).error?.httpStatus, 503)
        const refused = yield* service.call(same)
        assert.strictEqual(refused.status, "service_unavailable")
        assert.strictEqual(refused.fromCache, true)
        assert.strictEqual(refused.result, "answer 0")
        const other = yield* service.call(task("other", server.url, { args: { city: "Bergen" } }))
        assert.strictEqual(other.status, "service_unavailable")
        assert.isUndefined(other.fromCache)
        assert.strictEqual(server.requests(), 4, "an open breaker sends nothing")
        yield* TestClock.adjust("200 millis")
        const probe = yield* service.call(same)
        assert.deepStrictEqual([probe.status, probe.result], ["success", "answer 4"])
        assert.strictEqual(server.requests(), 5)
      })
  )

  it.effect(
    "an agent URL's query (a token) names neither its breaker nor its metrics; two queries are two breakers",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make((t) =>
          t.intent === "fail" ? { status: 503 } : AgentServer.defaultReply(t)
        )
        const registry = new Map()
        const service = yield* Effect.map(
          build({ breakers: { failMax: 1, resetTimeout: "1 minute" } }).pipe(
            Effect.provideService(Metric.MetricRegistry, registry)
          ),
          (context) => Context.get(context, HttpAgent.HttpAgents)
        ).pipe(Effect.provideService(Metric.MetricRegistry, registry))
        const secret = `${server.url}/x?key=s3cret-token`
        assert.strictEqual((yield* service.call(task("a", secret, { intent: "fail" }))).error?.httpStatus, 503)
        const refused = yield* service.call(task("b", secret))
        assert.strictEqual(refused.status, "service_unavailable")
        // Another query is another agent (a tenant, a key): its breaker is its own.
        assert.strictEqual((yield* service.call(task("c", `${server.url}/x?key=other`))).status, "success")
        const seen = `${inspect(refused, { depth: 10 })}${JSON.stringify(refused)}${inspect([...registry.keys()], { depth: 10 })}`
        assert.notInclude(seen, "s3cret-token")
        assert.include(seen, `${server.url}/x`)
      })
  )

  it.effect("a cached result of an agent with its own answer schema comes back as that schema decodes it", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t, i) =>
        i === 0 ? { json: { task_id: t.task_id, at: "2026-01-02T03:04:05.000Z", n: "7" } } : { status: 503 }
      )
      const dated = HttpAgent.agent({
        url: server.url,
        name: "dated",
        answer: Schema.Struct({ task_id: Schema.String, at: Schema.DateFromString, n: Schema.NumberFromString })
      })
      const service = yield* agents({ breakers: { failMax: 1, resetTimeout: "1 minute" }, cache: true })
      const dateTask = { id: "d", agent: dated, intent: "analyze", concept: "weather" }
      const fresh = yield* service.call(dateTask)
      assert.strictEqual(fresh.status, "success")
      assert.instanceOf(fresh.result?.at, Date)
      assert.strictEqual((yield* service.call(dateTask)).error?.httpStatus, 503)
      const cached = yield* service.call(dateTask)
      assert.deepStrictEqual([cached.status, cached.fromCache], ["service_unavailable", true])
      // It came back as the JSON of the decoded value: a string where the type says Date.
      assert.instanceOf(cached.result?.at, Date)
      assert.strictEqual(cached.result?.at.getTime(), Date.UTC(2026, 0, 2, 3, 4, 5))
      assert.strictEqual(cached.result?.n, 7)
    })
  )

  it.effect("an answer too deeply nested to keep in the cache is still the task's answer", () =>
    Effect.gen(function* () {
      // 200 KB, well within the body bound; writing it as JSON for the cache overflowed the stack.
      const depth = 100_000
      const server = yield* AgentServer.make((t) => ({
        raw: `{"task_id":${JSON.stringify(t.task_id)},"result":${"[".repeat(depth)}${"]".repeat(depth)}}`,
        contentType: "application/json"
      }))
      const service = yield* agents({ cache: true })
      const record = yield* service.call(task("deep", server.url))
      assert.strictEqual(record.status, "success")
      assert.isTrue(Array.isArray(record.result))
      const [batched, dependent] = yield* service.dispatch([
        task("deep", server.url),
        task("next", server.url, { dependsOn: ["deep"] })
      ])
      assert.strictEqual(batched?.status, "success")
      // Its args are fine: what cannot be sent is the result it depends on.
      assert.deepStrictEqual(
        [dependent?.status, dependent?.error?.reason, dependent?.error?.field],
        ["error", "InvalidRequest", "dependencies"]
      )
    })
  )

  it.effect("a task falls back to its next agent when the first one's breaker is open (entry point)", () =>
    Effect.gen(function* () {
      const down = yield* AgentServer.make(() => ({ status: 503 }))
      const spare = yield* AgentServer.make()
      const primary = HttpAgent.agent({ url: down.url, name: "primary-agent" })
      const backup = HttpAgent.agent({ url: spare.url, name: "backup-agent" })
      const service = yield* agents({ breakers: { failMax: 1, resetTimeout: "1 minute" } })
      const first = yield* service.call(task("a", primary, { fallback: [backup] }))
      const second = yield* service.call(task("b", primary, { fallback: [backup] }))
      for (const record of [first, second]) {
        assert.deepStrictEqual([record.status, record.agent, record.fallbackUsed], ["success", "backup-agent", true])
      }
      assert.strictEqual(first.attempts, 2)
      assert.strictEqual(second.attempts, 1, "the open breaker refused the primary without a request")
      assert.strictEqual(down.requests(), 1)
      assert.strictEqual(spare.requests(), 2)
    })
  )

  it.effect("an agent URL listed again with another fragment (never sent) is asked once, behind one breaker", () =>
    Effect.gen(function* () {
      const down = yield* AgentServer.make(() => ({ status: 503 }))
      const spare = yield* AgentServer.make()
      const service = yield* agents({ breakers: { failMax: 1 } })
      const record = yield* service.call(
        task("frag", `${down.url}?k=1#a`, { fallback: [`${down.url}?k=1#b`, `${down.url}?k=1`, spare.url] })
      )
      assert.deepStrictEqual([record.status, record.agent, record.attempts], ["success", spare.url, 2])
      assert.deepStrictEqual([down.requests(), spare.requests()], [1, 1])
      // Its breaker opened for the URL, whatever fragment names it.
      const again = yield* service.call(task("frag2", `${down.url}?k=1#c`))
      assert.deepStrictEqual([again.status, again.error?.reason], ["service_unavailable", "CircuitOpen"])
      assert.strictEqual(down.requests(), 1)
    })
  )

  it.effect(
    "an agent URL written two ways (scheme or host case, default port, one slash) is one agent, one breaker",
    () =>
      Effect.gen(function* () {
        const down = yield* AgentServer.make(() => ({ status: 503 }))
        const spare = yield* AgentServer.make()
        const service = yield* agents({ breakers: { failMax: 1 } })
        const port = new URL(down.url).port
        const shouting = `HTTP://127.0.0.1:${port}/task`
        // Listed twice, written two ways: one request, the second spelling not asked again.
        const record = yield* service.call(task("case", shouting, { fallback: [down.url, spare.url] }))
        assert.deepStrictEqual([record.status, record.agent, record.attempts], ["success", spare.url, 2])
        assert.deepStrictEqual([down.requests(), spare.requests()], [1, 1])
        // Its breaker opened for the endpoint, however the URL is written.
        for (const url of [down.url, `http:/127.0.0.1:${port}/task`, `http://127.0.0.1:${port}/./task`]) {
          const again = yield* service.call(task(`again-${url}`, url))
          assert.deepStrictEqual([again.status, again.error?.reason], ["service_unavailable", "CircuitOpen"], url)
        }
        assert.strictEqual(down.requests(), 1)
        // Another host's port 80 spelt out or left to the scheme is one breaker too.
        const open = yield* service.call(task("port-a", "http://127.0.0.2:80/x", { timeout: "50 millis" }))
        const again = yield* service.call(task("port-b", "HTTP://127.0.0.2/x"))
        assert.notStrictEqual(open.status, "success")
        assert.deepStrictEqual([again.status, again.error?.reason], ["service_unavailable", "CircuitOpen"])
      })
  )

  it.effect("an agent listed again among a task's fallbacks is asked once", () =>
    Effect.gen(function* () {
      const down = yield* AgentServer.make(() => ({ status: 503 }))
      const spare = yield* AgentServer.make()
      const service = yield* agents()
      // The same URL as a string, and as an agent: the second request was a retry nobody asked for.
      const record = yield* service.call(
        task("once", down.url, { fallback: [HttpAgent.agent({ url: down.url, name: "again" }), down.url, spare.url] })
      )
      assert.deepStrictEqual([record.status, record.agent, record.attempts], ["success", spare.url, 2])
      assert.deepStrictEqual([down.requests(), spare.requests()], [1, 1])
    })
  )

  it.effect(
    "rate limit per agent: out of slots, a task goes to its next agent or ends RateLimited, unsent (entry point)",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make()
        const spare = yield* AgentServer.make()
        const limited = HttpAgent.agent({ url: server.url, name: "limited-agent" })
        const backup = HttpAgent.agent({ url: spare.url, name: "spare-agent" })
        const service = yield* agents({
          rateLimits: { providers: { "limited-agent": { requestsPerMinute: 1 } }, maxWait: 0 }
        })
        assert.strictEqual((yield* service.call(task("1", limited))).status, "success")
        const refused = yield* service.call(task("2", limited))
        assert.deepStrictEqual([refused.status, refused.error?.reason, refused.attempts], ["error", "RateLimited", 0])
        const handedOver = yield* service.call(task("3", limited, { fallback: [backup] }))
        assert.deepStrictEqual([handedOver.status, handedOver.agent], ["success", "spare-agent"])
        assert.deepStrictEqual([server.requests(), spare.requests()], [1, 1])
      })
  )

  it.effect("an agent named as a model provider shares that provider's limit: one key of RateLimits (documented)", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const context = yield* build({ rateLimits: { providers: { mock: { requestsPerMinute: 1 } }, maxWait: 0 } })
      const executor = Context.get(context, Executor.Executor)
      const service = Context.get(context, HttpAgent.HttpAgents)
      yield* executor.execute({ prompt: "hi" })
      const record = yield* service.call(task("shared", HttpAgent.agent({ url: server.url, name: "mock" })))
      assert.deepStrictEqual([record.status, record.error?.reason, record.attempts], ["error", "RateLimited", 0])
      // Named apart, it has a limit of its own (here none).
      const apart = yield* service.call(task("apart", HttpAgent.agent({ url: server.url, name: "mock-agent" })))
      assert.strictEqual(apart.status, "success")
      assert.strictEqual(server.requests(), 1)
    })
  )

  it.effect("retries follow the agent's policy on Policy.schedule, then answer", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t, i) => (i < 2 ? { status: 503 } : AgentServer.defaultReply(t)))
      const flaky = HttpAgent.agent({ url: server.url, retry: { maxAttempts: 3, initialDelay: 1000, jitter: 0 } })
      const service = yield* agents()
      const fiber = yield* Effect.forkChild(service.call(task("f", flaky)))
      yield* server.awaitRequests(1)
      yield* TestClock.adjust("1 second")
      yield* server.awaitRequests(2)
      yield* TestClock.adjust("2 seconds")
      const record = yield* Fiber.join(fiber)
      assert.deepStrictEqual([record.status, record.attempts, record.durationMs], ["success", 3, 3000])
    })
  )

  it.effect("HttpAgent.stats: statuses from the agent metrics, success rate and latency from Stats (issue 34)", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) =>
        t.task_id.startsWith("bad") ? { status: 500 } : AgentServer.defaultReply(t)
      )
      const weather = HttpAgent.agent({ url: server.url, name: "weather-agent" })
      const service = yield* agents()
      yield* service.call(task("ok1", weather))
      yield* service.call(task("ok2", weather))
      yield* service.call(task("ok3", weather))
      yield* service.call(task("bad1", weather))
      const stats = yield* service.stats(weather)
      assert.strictEqual(stats.agent, "weather-agent")
      assert.strictEqual(stats.tasks, 4)
      assert.deepStrictEqual(stats.statuses, { success: 3, error: 1, timeout: 0, service_unavailable: 0, skipped: 0 })
      assert.strictEqual(stats.successRate, 75)
      assert.strictEqual(stats.calls.total, 4)
      assert.deepStrictEqual(stats.calls.failuresByReason, { Overloaded: 1 })
      assert.strictEqual((yield* service.stats("nobody")).tasks, 0)
    })
  )
})

describe("HttpAgent.dispatch", () => {
  it.effect("dependent tasks wait for their dependencies and get their results; failures skip dependents", () =>
    Effect.gen(function* () {
      const good = yield* AgentServer.make((t) => ({ json: { task_id: t.task_id, result: `${t.task_id}!` } }))
      const bad = yield* AgentServer.make(() => ({ status: 500 }))
      const service = yield* agents()
      const records = yield* service.dispatch([
        task("fetch", good.url),
        task("recall", good.url),
        task("combine", good.url, { dependsOn: ["fetch", "recall"] }),
        task("broken", bad.url),
        task("needsBroken", good.url, { dependsOn: ["broken"] }),
        task("chain", good.url, { dependsOn: ["needsBroken"] })
      ])
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
      const sent = good.received().find((t) => t.task_id === "combine")
      assert.deepStrictEqual(sent?.dependencies, { fetch: "fetch!", recall: "recall!" })
      assert.strictEqual(records[4]!.error?.dependency, "broken")
      assert.strictEqual(records[5]!.error?.dependency, "needsBroken")
      assert.include(records[5]!.error?.message, '"broken"')
      assert.isFalse(good.received().some((t) => t.task_id === "needsBroken"))
    })
  )

  it.effect("a dependent task's cached result is one for the same dependencies' results, not another's", () =>
    Effect.gen(function* () {
      const fetcher = yield* AgentServer.make((t) => ({
        json: { task_id: t.task_id, result: `doc ${(t.args as { doc: string }).doc}` }
      }))
      let down = false
      const summarizer = yield* AgentServer.make((t) =>
        down ? { status: 503 } : { json: { task_id: t.task_id, result: `summary of ${t.dependencies?.fetch}` } }
      )
      const service = yield* agents({ breakers: { failMax: 1, resetTimeout: "1 minute" }, cache: true })
      const batch = (doc: string) =>
        Effect.map(
          service.dispatch([
            task("fetch", fetcher.url, { args: { doc } }),
            task("sum", summarizer.url, { args: null, dependsOn: ["fetch"] }),
            task("next", fetcher.url, { args: { doc: "next" }, dependsOn: ["sum"] })
          ]),
          (records) => records[1]!
        )
      assert.strictEqual((yield* batch("A")).result, "summary of doc A")
      down = true
      assert.strictEqual((yield* batch("B")).error?.httpStatus, 503)
      // The breaker is open: doc B's summary was never made, and doc A's is no answer for it.
      const other = yield* batch("B")
      assert.deepStrictEqual(
        [other.status, other.fromCache, other.result],
        ["service_unavailable", undefined, undefined]
      )
      const same = yield* batch("A")
      assert.deepStrictEqual(
        [same.status, same.fromCache, same.result],
        ["service_unavailable", true, "summary of doc A"]
      )
      assert.strictEqual(summarizer.requests(), 2)
    })
  )

  it.effect("a batch's tasks go through the same breaker and rate limit as calls (entry point)", () =>
    Effect.gen(function* () {
      const down = yield* AgentServer.make(() => ({ status: 503 }))
      const limitedServer = yield* AgentServer.make()
      const spare = yield* AgentServer.make()
      const primary = HttpAgent.agent({ url: down.url, name: "batch-primary" })
      const limited = HttpAgent.agent({ url: limitedServer.url, name: "batch-limited" })
      const backup = HttpAgent.agent({ url: spare.url, name: "batch-spare" })
      const service = yield* agents({
        breakers: { failMax: 1, resetTimeout: "1 minute" },
        rateLimits: { providers: { "batch-limited": { requestsPerMinute: 1 } }, maxWait: 0 }
      })
      const records = yield* service.dispatch(
        [
          task("b1", primary, { fallback: [backup] }),
          task("b2", primary, { fallback: [backup] }),
          task("l1", limited),
          task("l2", limited, { fallback: [backup] }),
          task("l3", limited)
        ],
        { concurrency: 1 }
      )
      assert.deepStrictEqual(
        records.map((r) => [r.taskId, r.status, r.agent, r.attempts]),
        [
          ["b1", "success", "batch-spare", 2],
          ["b2", "success", "batch-spare", 1],
          ["l1", "success", "batch-limited", 1],
          ["l2", "success", "batch-spare", 1],
          ["l3", "error", "batch-limited", 0]
        ]
      )
      assert.strictEqual(records[4]!.error?.reason, "RateLimited")
      assert.deepStrictEqual([down.requests(), limitedServer.requests(), spare.requests()], [1, 1, 3])
    })
  )

  it.effect("connection limits hold per host and in total; every slot is free afterwards", () =>
    Effect.gen(function* () {
      const one = yield* AgentServer.make((t) => ({ delayMs: 30, ...AgentServer.defaultReply(t) }))
      const two = yield* AgentServer.make((t) => ({ delayMs: 30, ...AgentServer.defaultReply(t) }))
      const service = yield* agents({ options: { maxConnections: 5, maxConnectionsPerHost: 3 } })
      const records = yield* service.dispatch([
        ...Array.from({ length: 12 }, (_, i) => task(`one-${i}`, one.url)),
        ...Array.from({ length: 12 }, (_, i) => task(`two-${i}`, two.url))
      ])
      const stats = yield* service.connections
      assert.isTrue(records.every((r) => r.status === "success"))
      assert.strictEqual(one.peak(), 3)
      assert.strictEqual(two.peak(), 3)
      assert.strictEqual(stats.peak, 5)
      assert.deepStrictEqual({ ...stats.peakByHost }, { [one.host]: 3, [two.host]: 3 })
      assert.deepStrictEqual([stats.active, stats.waiting], [0, 0])
    })
  )

  it.effect(
    "peakByHost keeps the hosts in use and the most recent idle ones: many hosts do not grow it without bound",
    () =>
      Effect.gen(function* () {
        const limiter = Connections.make({ total: 10, perHost: 2 })
        const held = yield* Deferred.make<void>()
        const busy = yield* Effect.forkChild(
          Effect.all(
            [limiter.withPermit("busy:1")(Deferred.await(held)), limiter.withPermit("busy:1")(Deferred.await(held))],
            {
              concurrency: "unbounded"
            }
          )
        )
        yield* Effect.yieldNow
        const hosts = Array.from({ length: Connections.maxIdleHosts + 50 }, (_, i) => `h${i}:80`)
        for (const host of hosts) yield* limiter.withPermit(host)(Effect.void)
        const during = yield* limiter.stats
        assert.strictEqual(Object.keys(during.peakByHost).length, Connections.maxIdleHosts + 1)
        assert.strictEqual(during.peakByHost["busy:1"], 2)
        assert.isUndefined(during.peakByHost["h0:80"])
        assert.strictEqual(during.peakByHost[hosts.at(-1)!], 1)
        // A host used again is recent again, its peak kept.
        yield* limiter.withPermit("h60:80")(Effect.void)
        yield* Deferred.succeed(held, undefined)
        yield* Fiber.join(busy)
        const after = yield* limiter.stats
        assert.strictEqual(Object.keys(after.peakByHost).length, Connections.maxIdleHosts)
        assert.strictEqual(after.peakByHost["busy:1"], 2)
        assert.strictEqual(after.peakByHost["h60:80"], 1)
        assert.isUndefined(after.peakByHost["h50:80"])
        assert.deepStrictEqual([after.active, after.waiting, after.peak], [0, 0, 3])
      })
  )

  it.effect("tasks that time out waiting for a connection slot count on no breaker: the agent never saw them", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) =>
        t.task_id === "busy" ? { hang: true } : AgentServer.defaultReply(t)
      )
      const service = yield* agents({
        options: { maxConnectionsPerHost: 1 },
        breakers: { failMax: 3, resetTimeout: "1 hour" }
      })
      const busy = yield* Effect.forkChild(service.call(task("busy", server.url, { timeout: "1 minute" })))
      yield* server.awaitRequests(1)
      const queued = yield* Effect.forkChild(
        Effect.forEach(["q1", "q2", "q3"], (id) => service.call(task(id, server.url, { timeout: "1 second" })), {
          concurrency: "unbounded"
        })
      )
      yield* Effect.yieldNow
      assert.strictEqual((yield* service.connections).waiting, 3)
      yield* TestClock.adjust("1 second")
      for (const record of yield* Fiber.join(queued)) assert.strictEqual(record.status, "timeout")
      assert.strictEqual(server.requests(), 1)
      yield* Fiber.interrupt(busy)
      // Three timeouts with failMax 3 opened the agent's circuit, though the agent answered nothing wrong.
      const after = yield* service.call(task("after", server.url))
      assert.deepStrictEqual([after.status, after.result === undefined], ["success", false])
      // Sent and unanswered in time, they do count.
      for (let i = 1; i <= 3; i++) {
        const sent = yield* Effect.forkChild(service.call(task("busy", server.url, { timeout: "1 second" })))
        yield* server.awaitRequests(2 + i)
        yield* TestClock.adjust("1 second")
        assert.strictEqual((yield* Fiber.join(sent)).status, "timeout")
      }
      assert.strictEqual((yield* service.call(task("refused", server.url))).status, "service_unavailable")
    })
  )

  it.effect("the per-host limit is per host:port: http and https of one host (ports 80 and 443) are two hosts", () =>
    Effect.gen(function* () {
      const service = yield* agents({ client: echoClient })
      for (const url of ["http://agents.test/a", "https://agents.test/a", "http://agents.test:8080/a"]) {
        assert.strictEqual((yield* service.call(task("h", url))).status, "success", url)
      }
      const stats = yield* service.connections
      assert.deepStrictEqual(Object.keys(stats.peakByHost).sort(), [
        "agents.test:443",
        "agents.test:80",
        "agents.test:8080"
      ])
    })
  )

  it.effect("permits are handed over in arrival order", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) => ({ delayMs: 5, ...AgentServer.defaultReply(t) }))
      const ids = Array.from({ length: 8 }, (_, i) => `q${i}`)
      const service = yield* agents({ options: { maxConnectionsPerHost: 1 } })
      const records = yield* service.dispatch(ids.map((id) => task(id, server.url)))
      assert.isTrue(records.every((r) => r.status === "success"))
      assert.deepStrictEqual(
        server.received().map((t) => t.task_id),
        ids
      )
      assert.strictEqual(server.peak(), 1)
    })
  )

  it.effect("interrupting a batch frees every connection slot and queue place", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make(() => ({ hang: true }))
      const service = yield* agents({ options: { maxConnectionsPerHost: 2 } })
      const fiber = yield* Effect.forkChild(
        service.dispatch(Array.from({ length: 6 }, (_, i) => task(`h${i}`, server.url)))
      )
      yield* server.awaitRequests(2)
      const during = yield* service.connections
      assert.deepStrictEqual([during.active, during.waiting], [2, 4])
      yield* Fiber.interrupt(fiber)
      const after = yield* service.connections
      assert.deepStrictEqual([after.peak, after.active, after.waiting], [2, 0, 0])
      yield* server.awaitAborted(2)
      assert.strictEqual(server.requests(), 2)
    })
  )

  it.effect("the agent metrics count every record of a batch, skipped ones included", () =>
    Effect.gen(function* () {
      const bad = yield* AgentServer.make(() => ({ status: 500 }))
      const good = yield* AgentServer.make()
      const failing = HttpAgent.agent({ url: bad.url, name: "skip-bad" })
      const fine = HttpAgent.agent({ url: good.url, name: "skip-good" })
      const service = yield* agents()
      const records = yield* service.dispatch([
        task("root", failing),
        task("child", fine, { dependsOn: ["root"] }),
        task("grandchild", fine, { dependsOn: ["child"] }),
        task("alone", fine)
      ])
      assert.deepStrictEqual(
        records.map((r) => r.status),
        ["error", "skipped", "skipped", "success"]
      )
      assert.deepStrictEqual((yield* service.stats("skip-bad")).statuses.error, 1)
      const fineStats = yield* service.stats(fine)
      assert.deepStrictEqual([fineStats.statuses.skipped, fineStats.statuses.success], [2, 1])
    })
  )

  it.effect("an invalid batch is a PipelineError naming the task or field; nothing is sent", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      const unknown = yield* Effect.flip(service.dispatch([task("a", server.url, { dependsOn: ["ghost"] })]))
      assert.deepStrictEqual([unknown.reason, unknown.steps], ["UnknownDependency", ["a", "ghost"]])
      const noId = yield* Effect.flip(service.dispatch([{ ...task("x", server.url), id: undefined as never }]))
      assert.deepStrictEqual([noId.reason, noId.field], ["InvalidStep", "tasks[0].id"])
      const depString = yield* Effect.flip(
        service.dispatch([task("a", server.url), task("b", server.url, { dependsOn: "a" as never })])
      )
      assert.strictEqual(depString.field, "tasks[1].dependsOn")
      // It ran the task at once, as if it had no dependencies.
      const depNull = yield* Effect.flip(
        service.dispatch([task("a", server.url), task("b", server.url, { dependsOn: null as never })])
      )
      assert.deepStrictEqual(
        [depNull.reason, depNull.field, depNull.steps],
        ["InvalidStep", "tasks[1].dependsOn", ["b"]]
      )
      const notArray = yield* Effect.flip(service.dispatch(null as never))
      assert.strictEqual(notArray.field, "tasks")
      // `null` ran the batch at the default concurrency, as if it were not given.
      for (const concurrency of [0, Number.NaN, -2, 1.5, null]) {
        const error = yield* Effect.flip(
          service.dispatch([task("a", server.url)], { concurrency: concurrency as never })
        )
        assert.deepStrictEqual([error.reason, error.option], ["InvalidOption", "concurrency"], String(concurrency))
      }
      // A getter that throws was a defect out of dispatch, which fails only with a PipelineError.
      const throwingOptions = yield* Effect.flip(service.dispatch([task("a", server.url)], throwing({}, "concurrency")))
      assert.deepStrictEqual([throwingOptions.reason, throwingOptions.option], ["InvalidOption", "concurrency"])
      assert.include(throwingOptions.message, "no concurrency")
      const typo = yield* Effect.flip(service.dispatch([task("a", server.url)], { concurency: 1 } as never))
      assert.deepStrictEqual([typo.reason, typo.option], ["InvalidOption", "concurency"])
      for (const options of [null, "sequential", 2]) {
        const error = yield* Effect.flip(service.dispatch([task("a", server.url)], options as never))
        assert.deepStrictEqual([error.reason, error.option], ["InvalidOption", "options"])
      }
      assert.strictEqual(server.requests(), 0)
    })
  )

  it.effect("an invalid batch speaks of tasks, not steps: a repeated id, an unknown dependency", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      const twice = yield* Effect.flip(service.dispatch([task("a", server.url), task("a", server.url)]))
      assert.deepStrictEqual([twice.reason, twice.steps], ["DuplicateStep", ["a"]])
      assert.strictEqual(twice.message, 'task "a" is defined twice')
      const unknown = yield* Effect.flip(service.dispatch([task("a", server.url, { dependsOn: ["ghost"] })]))
      assert.strictEqual(unknown.message, 'task "a" depends on unknown task "ghost"')
      assert.strictEqual(server.requests(), 0)
    })
  )

  it.effect("a batch task whose field throws when read: a PipelineError for its id, else its own record", () =>
    Effect.gen(function* () {
      const bad = yield* AgentServer.make(() => ({ status: 500 }))
      const good = yield* AgentServer.make()
      const service = yield* agents()
      const noId = yield* Effect.flip(service.dispatch([throwing(task("a", good.url), "id")]))
      assert.deepStrictEqual([noId.reason, noId.field], ["InvalidStep", "tasks[0].id"])
      const noDeps = yield* Effect.flip(service.dispatch([throwing(task("a", good.url), "dependsOn")]))
      assert.deepStrictEqual([noDeps.reason, noDeps.field], ["InvalidStep", "tasks[0].dependsOn"])
      const records = yield* service.dispatch([
        task("root", bad.url),
        throwing(task("child", good.url, { dependsOn: ["root"] }), "agent"),
        throwing(task("alone", good.url), "timeout")
      ])
      assert.deepStrictEqual(
        records.map((r) => [r.taskId, r.status, r.error?.field]),
        [
          ["root", "error", undefined],
          ["child", "skipped", undefined],
          ["alone", "error", "timeout"]
        ]
      )
      assert.strictEqual(good.requests(), 0)
    })
  )

  it.effect("a task named __proto__ runs, is in the records and feeds its dependents", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) => ({ json: { task_id: t.task_id, result: t.task_id } }))
      const service = yield* agents()
      const records = yield* service.dispatch([
        task("__proto__", server.url),
        task("after", server.url, { dependsOn: ["__proto__"] })
      ])
      assert.deepStrictEqual(
        records.map((r) => [r.taskId, r.status]),
        [
          ["__proto__", "success"],
          ["after", "success"]
        ]
      )
      const sent = server.received().find((t) => t.task_id === "after")
      assert.strictEqual(
        JSON.stringify(sent?.dependencies),
        JSON.stringify(Object.fromEntries([["__proto__", "__proto__"]]))
      )
    })
  )
})

describe("HttpAgent: agents named by URL", () => {
  /** The service with an `agent` that counts how often each URL is made an agent. */
  const counted = (discovery: Layer.Layer<Discovery.Discovery, unknown> = Layer.empty as never) =>
    Effect.gen(function* () {
      const built = new Map<string, number>()
      const agent = (options: HttpAgent.AgentOptions) => {
        built.set(String(options.url), (built.get(String(options.url)) ?? 0) + 1)
        return HttpAgent.agent(options)
      }
      const context = yield* Layer.build(
        Layer.effect(HttpAgent.HttpAgents, makeService({}, { agent, statsDomain: HttpAgent.statsDomain })).pipe(
          Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
          Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}), discovery)),
          Layer.provide(NodeHttpClient.layerUndici)
        )
      ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
      return { service: Context.get(context, HttpAgent.HttpAgents), built }
    })

  it.effect("a URL is made an agent once, and the agents kept for URLs are bounded", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const { service, built } = yield* counted()
      for (let i = 0; i < 3; i++) assert.strictEqual((yield* service.call(task(`t${i}`, server.url))).status, "success")
      assert.strictEqual(built.get(server.url), 1)
      assert.strictEqual(server.requests(), 3)
      // As many other URLs as are kept: the least recently used (server.url) goes, the others stay.
      for (let i = 0; i < agentsKept; i++) {
        assert.strictEqual((yield* service.call(task(`u${i}`, `not a url ${i}`))).status, "error")
      }
      assert.strictEqual((yield* service.call(task("t3", `not a url ${agentsKept - 1}`))).status, "error")
      assert.strictEqual(built.get(`not a url ${agentsKept - 1}`), 1)
      assert.strictEqual((yield* service.call(task("t4", server.url))).status, "success")
      assert.strictEqual(built.get(server.url), 2)
    })
  )

  it.effect("a discovered endpoint is made an agent once", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const { service, built } = yield* counted(
        Discovery.layerStatic([
          { concept: "weather", intent: "analyze", agents: [{ url: server.url, name: "meteo", timeout: "5 seconds" }] }
        ])
      )
      for (let i = 0; i < 3; i++) {
        const record = yield* service.call(task(`t${i}`, undefined))
        assert.deepStrictEqual([record.status, record.agent], ["success", "meteo"])
      }
      assert.strictEqual(built.get(server.url), 1)
    })
  )
})

describe("HttpAgent: a Discovery service of the application's own", () => {
  it.effect("an endpoint that is no object, or whose field throws when read, is an error record, not a defect", () =>
    Effect.gen(function* () {
      const throwing = Object.defineProperty({}, "url", {
        enumerable: true,
        get: () => {
          throw new Error("no url")
        }
      })
      for (const endpoint of [null, 5, throwing]) {
        const discovery = Layer.succeed(Discovery.Discovery, {
          name: "own",
          resolve: () => Effect.succeed([endpoint as never])
        })
        const context = yield* Layer.build(
          HttpAgent.layer().pipe(
            Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
            Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}), discovery)),
            Layer.provide(NodeHttpClient.layerUndici)
          )
        ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
        const record = yield* Context.get(context, HttpAgent.HttpAgents).call(task("d", undefined))
        assert.strictEqual(record.status, "service_unavailable", JSON.stringify(record))
        assert.strictEqual(record.error?.reason, "DiscoveryUnavailable")
      }
    })
  )
})

describe("HttpAgent: a Discovery service of the application's own answering no Effect", () => {
  it.effect("resolve answering a Promise or undefined is a service_unavailable record naming it, not a defect", () =>
    Effect.gen(function* () {
      const answers: ReadonlyArray<readonly [() => unknown, string]> = [
        [() => Promise.resolve([]), "a Promise (wrap it in Effect.tryPromise)"],
        [() => Promise.reject(new Error("down")), "a Promise (wrap it in Effect.tryPromise)"],
        [() => undefined, "undefined"]
      ]
      for (const [resolve, what] of answers) {
        const discovery = Layer.succeed(Discovery.Discovery, { name: "own", resolve: resolve as never })
        const context = yield* Layer.build(
          HttpAgent.layer().pipe(
            Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
            Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}), discovery)),
            Layer.provide(NodeHttpClient.layerUndici)
          )
        ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
        const exit = yield* Effect.exit(Context.get(context, HttpAgent.HttpAgents).call(task("d", undefined)))
        assert.isTrue(Exit.isSuccess(exit), what)
        const record = (exit as Exit.Success<HttpAgent.TaskRecord>).value
        assert.deepStrictEqual(
          [record.status, record.agent, record.error?.reason],
          ["service_unavailable", "discovery:own", "DiscoveryUnavailable"],
          what
        )
        assert.include(record.error?.message, `own: resolve answered ${what}, not an Effect`)
      }
    })
  )
})

describe("HttpAgent: a Discovery service of the application's own named what no label can hold", () => {
  it.effect("its records count under (other): a lone surrogate (no UTF-8 form) labels no series", () =>
    Effect.gen(function* () {
      const registry = new Map<string, never>()
      const discovery = Layer.succeed(Discovery.Discovery, {
        name: "reg-\uD800",
        resolve: (q) => Effect.fail(new Discovery.DiscoveryError({ reason: "Unavailable", ...q, message: "down" }))
      })
      const context = yield* Layer.build(
        HttpAgent.layer().pipe(
          Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
          Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}), discovery)),
          Layer.provide(NodeHttpClient.layerUndici)
        )
      ).pipe(Effect.provideService(Metric.MetricRegistry, registry))
      const service = Context.get(context, HttpAgent.HttpAgents)
      const record = yield* service.call(task("d", undefined))
      assert.deepStrictEqual([record.status, record.agent], ["service_unavailable", "discovery:reg-\uD800"])
      assert.strictEqual((yield* service.stats("(other)")).statuses.service_unavailable, 1)
      const snapshot = yield* Effect.provideService(Metric.snapshot, Metric.MetricRegistry, registry)
      const labels = snapshot.flatMap((m) => Object.values(m.attributes ?? {}).map(String))
      assert.isFalse(
        labels.some((label) => /[\uD800-\uDFFF]/u.test(label)),
        "no label holds a lone surrogate"
      )
    })
  )
})

describe("HttpAgent: a Discovery service of the application's own failing with no DiscoveryError", () => {
  it.effect("an Error, a string or null is DiscoveryUnavailable with a message naming it, not undefined", () =>
    Effect.gen(function* () {
      const failures: ReadonlyArray<readonly [unknown, string]> = [
        [new Error("registry down"), "own: resolve failed: registry down"],
        ["down", "own: resolve failed: down"],
        [null, "own: resolve failed with null"],
        [{ reason: "NotFound", message: "nothing for weather" }, "nothing for weather"]
      ]
      for (const [failure, message] of failures) {
        const discovery = Layer.succeed(Discovery.Discovery, {
          name: "own",
          resolve: () => Effect.fail(failure as never)
        })
        const context = yield* Layer.build(
          HttpAgent.layer().pipe(
            Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
            Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}), discovery)),
            Layer.provide(NodeHttpClient.layerUndici)
          )
        ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
        const exit = yield* Effect.exit(Context.get(context, HttpAgent.HttpAgents).call(task("d", undefined)))
        assert.isTrue(Exit.isSuccess(exit), message)
        const record = (exit as Exit.Success<HttpAgent.TaskRecord>).value
        const reason = message === "nothing for weather" ? "DiscoveryNotFound" : "DiscoveryUnavailable"
        assert.deepStrictEqual(
          [record.status, record.error?.reason, record.error?.message],
          ["service_unavailable", reason, message]
        )
      }
    })
  )
})

describe("HttpAgent: a Discovery service of the application's own answering thousands", () => {
  it.effect(
    "only its first 10 endpoints are tried, as the library's discoveries keep (maxAgents), then the task's fallback",
    () =>
      Effect.gen(function* () {
        const down = yield* AgentServer.make(() => ({ status: 503, json: { error: "down" } }))
        const good = yield* AgentServer.make()
        // Past the bound, an entry is not even read: one that is no object refuses nothing.
        const endpoints = Array.from({ length: 1_000 }, (_, i) => (i === 500 ? null : { url: `${down.url}/a${i}` }))
        const discovery = Layer.succeed(Discovery.Discovery, {
          name: "unfiltered",
          resolve: () => Effect.succeed(endpoints as never)
        })
        const context = yield* Layer.build(
          HttpAgent.layer().pipe(
            Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
            Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}), discovery)),
            Layer.provide(NodeHttpClient.layerUndici)
          )
        ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
        const record = yield* Context.get(context, HttpAgent.HttpAgents).call(
          task("d", undefined, { fallback: [good.url] })
        )
        assert.strictEqual(record.status, "success", JSON.stringify(record))
        assert.deepStrictEqual([record.agent, record.fallbackUsed, record.attempts], [good.url, true, 11])
        assert.strictEqual(down.requests(), 10)
        assert.deepStrictEqual(
          down.paths().map((path) => path.slice(path.lastIndexOf("/") + 1)),
          Array.from({ length: 10 }, (_, i) => `a${i}`)
        )
      })
  )
})

describe("HttpAgent: the library's discoveries keep their own bound", () => {
  it.effect("a static map's 12 agents and a lookup's maxAgents: 12 are all tried, not cut at 10", () =>
    Effect.gen(function* () {
      const down = yield* AgentServer.make(() => ({ status: 503, json: { error: "down" } }))
      const good = yield* AgentServer.make()
      const endpoints = [...Array.from({ length: 11 }, (_, i) => ({ url: `${down.url}/s${i}` })), { url: good.url }]
      for (const discovery of [
        Discovery.layerStatic([{ concept: "weather", intent: "*", agents: endpoints }]),
        Discovery.layer(() => Effect.succeed(endpoints), { maxAgents: 12 })
      ]) {
        const context = yield* Layer.build(
          HttpAgent.layer().pipe(
            Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
            Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}), discovery)),
            Layer.provide(NodeHttpClient.layerUndici)
          )
        ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
        const record = yield* Context.get(context, HttpAgent.HttpAgents).call(task("d", undefined))
        assert.deepStrictEqual([record.status, record.agent, record.attempts], ["success", good.url, 12])
      }
      assert.strictEqual(down.requests(), 22)
    })
  )
})

describe("HttpAgent: a Discovery service that never answers", () => {
  it.effect("the lookup is cut at the service's timeout: the task ends service_unavailable, it does not hang", () =>
    Effect.gen(function* () {
      const discovery = Layer.succeed(Discovery.Discovery, { name: "stuck", resolve: () => Effect.never })
      const context = yield* Layer.build(
        HttpAgent.layer({ timeout: "5 seconds" }).pipe(
          Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
          Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}), discovery)),
          Layer.provide(NodeHttpClient.layerUndici)
        )
      ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
      const service = Context.get(context, HttpAgent.HttpAgents)
      const fiber = yield* Effect.forkChild(service.call(task("d", undefined)))
      yield* TestClock.adjust("5 seconds")
      const record = yield* Fiber.join(fiber)
      assert.deepStrictEqual(
        [record.status, record.agent, record.error?.reason],
        ["service_unavailable", "discovery:stuck", "DiscoveryUnavailable"]
      )
      assert.include(record.error?.message, "did not answer within 5s")
      assert.strictEqual(record.durationMs, 5_000)
    })
  )

  it.effect(
    "a task with an invalid timeout or body is refused before discovery is asked: it neither waits for it nor reads as unavailable",
    () =>
      Effect.gen(function* () {
        let lookups = 0
        const discovery = Layer.succeed(Discovery.Discovery, {
          name: "stuck",
          resolve: () =>
            Effect.suspend(() => {
              lookups++
              return Effect.never
            })
        })
        const context = yield* Layer.build(
          HttpAgent.layer({ timeout: "5 seconds", maxRequestBytes: 32 }).pipe(
            Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
            Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory({}), discovery)),
            Layer.provide(NodeHttpClient.layerUndici)
          )
        ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
        const service = Context.get(context, HttpAgent.HttpAgents)
        for (const timeout of [Number.NaN, -1, "soon"]) {
          const record = yield* service.call(task("d", undefined, { timeout: timeout as HttpAgent.Task["timeout"] }))
          assert.deepStrictEqual(
            [record.status, record.error?.reason, record.error?.field, record.durationMs, record.agent, record.url],
            ["error", "InvalidRequest", "timeout", 0, "discovery:stuck", ""],
            JSON.stringify(record)
          )
        }
        // Nor can a body that is no JSON, or past maxRequestBytes, be sent to whatever agent discovery finds.
        for (const [args, reason, field] of [
          [{ t: Number.NaN }, "InvalidRequest", "args"],
          [{ n: 1n }, "InvalidRequest", "args"],
          ["x".repeat(64), "TooLarge", undefined]
        ] as const) {
          const record = yield* service.call(task("d", undefined, { args }))
          assert.deepStrictEqual(
            [record.status, record.error?.reason, record.error?.field, record.durationMs, record.agent, record.url],
            ["error", reason, field, 0, "discovery:stuck", ""],
            JSON.stringify(record)
          )
        }
        // Nor a task whose own fallback agent is refused: it is named, as it is after the agents discovery found.
        const fallback = yield* service.call(task("d", undefined, { args: null, fallback: ["not a url"] }))
        assert.deepStrictEqual(
          [fallback.status, fallback.error?.reason, fallback.error?.field, fallback.agent],
          ["error", "InvalidRequest", "agent.url", "not a url"],
          JSON.stringify(fallback)
        )
        assert.strictEqual(lookups, 0)
      })
  )
})

/** An agent answering every task in memory, as the default answer schema expects. */
const echoClient = Layer.succeed(
  HttpClient.HttpClient,
  HttpClient.make((request) =>
    Effect.sync(() => {
      const body = request.body._tag === "Uint8Array" ? new TextDecoder().decode(request.body.body) : "{}"
      const { task_id } = JSON.parse(body) as { readonly task_id: string }
      const answer = JSON.stringify({ task_id, status: "success", result: null })
      return HttpClientResponse.fromWeb(
        request,
        new Response(answer, { status: 200, headers: { "content-type": "application/json" } })
      )
    })
  )
)

describe("HttpAgent: metric series and stats per agent name", () => {
  it.effect("the agent series count every record and leave the registry when the service closes", () =>
    Effect.gen(function* () {
      const registry = new Map<string, never>()
      const scope = yield* Scope.make()
      const service = yield* agents({ registry, client: echoClient }).pipe(Scope.provide(scope))
      const url = "http://agents.test/closing"
      yield* service.call(task("c1", url))
      yield* service.call(task("c2", url))
      const agentSeries = Effect.map(Effect.provideService(Metric.snapshot, Metric.MetricRegistry, registry), (all) =>
        all.filter((m) => m.id === Metrics.agentTasks.id || m.id === Metrics.agentLatency.id)
      )
      const tasks = (yield* agentSeries).find((m) => m.id === Metrics.agentTasks.id)
      assert.deepStrictEqual([tasks?.attributes?.["agent"], tasks?.attributes?.["status"]], [url, "success"])
      assert.strictEqual((tasks?.state as { count: number } | undefined)?.count, 2)
      assert.strictEqual((yield* service.stats(url)).tasks, 2)
      yield* Scope.close(scope, Exit.void)
      assert.deepStrictEqual(yield* agentSeries, [])
    })
  )

  it.effect(
    "10,000 agents named by URL do not make 10,000 series: the first 100 names have theirs, the rest one",
    () =>
      Effect.gen(function* () {
        const registry = new Map<string, never>()
        // 10,000 requests in memory: the transport is not what is under test.
        const service = yield* agents({ registry, client: echoClient })
        const urls = Array.from({ length: 10_000 }, (_, i) => `http://agents.test/task/${i}`)
        const records = yield* service.dispatch(urls.map((url, i) => task(`t${i}`, url)))
        assert.isTrue(records.every((r) => r.status === "success"))
        // Records keep each task's own agent.
        assert.strictEqual(records[9_999]!.agent, urls[9_999])
        const snapshot = yield* Effect.provideService(Metric.snapshot, Metric.MetricRegistry, registry)
        const labels = (id: string, key: string) =>
          new Set(snapshot.filter((m) => m.id === id).map((m) => m.attributes?.[key]))
        const first = urls.slice(0, 100)
        assert.deepStrictEqual([...labels(Metrics.agentTasks.id, "agent")].sort(), [...first, "(other)"].sort())
        assert.deepStrictEqual([...labels(Metrics.agentLatency.id, "agent")].sort(), [...first, "(other)"].sort())
        assert.deepStrictEqual([...labels(Metrics.requests.id, "provider")].sort(), [...first, "(other)"].sort())
        const own = yield* service.stats(urls[99]!)
        assert.deepStrictEqual([own.agent, own.tasks, own.calls.total], [urls[99], 1, 1])
        const other = yield* service.stats(urls[100]!)
        assert.deepStrictEqual([other.agent, other.tasks, other.calls.total], ["(other)", 9_900, 9_900])
        assert.deepStrictEqual((yield* service.stats("(other)")).statuses.success, 9_900)
        // A name with series keeps them; a new one counts with the others.
        yield* service.call(task("again", urls[0]!))
        yield* service.call(task("new", "http://agents.test/task/new"))
        assert.strictEqual((yield* service.stats(urls[0]!)).tasks, 2)
        assert.strictEqual((yield* service.stats("http://agents.test/task/new")).tasks, 9_901)
      }),
    60_000
  )

  it.effect(
    "refused agents (typo'd URLs) take no series: their records count as unknown, later agents keep theirs",
    () =>
      Effect.gen(function* () {
        const registry = new Map<string, never>()
        const service = yield* agents({ registry, client: echoClient })
        const refused = Array.from({ length: 150 }, (_, i) => `htp://agents.test/typo/${i}`)
        for (const [i, url] of refused.entries()) {
          const record = yield* service.call(task(`r${i}`, url))
          assert.deepStrictEqual([record.status, record.error?.field, record.agent], ["error", "agent.url", url])
        }
        // In a batch too: a task refused, and one skipped after it whose agent is refused as well.
        const bad = HttpAgent.agent({ url: "http://agents.test/bad", name: "bad-timeout", timeout: Number.NaN })
        const records = yield* service.dispatch([
          task("a", HttpAgent.agent({ url: "http://agents.test/bad", name: "bad-retry", retry: null as never })),
          task("b", bad, { dependsOn: ["a"] })
        ])
        assert.deepStrictEqual(
          records.map((r) => [r.status, r.agent]),
          [
            ["error", "bad-retry"],
            ["skipped", "bad-timeout"]
          ]
        )
        const real = "http://agents.test/real"
        assert.strictEqual((yield* service.call(task("real", real))).status, "success")
        const own = yield* service.stats(real)
        assert.deepStrictEqual([own.agent, own.tasks, own.calls.total], [real, 1, 1])
        const unknown = yield* service.stats(bad)
        assert.deepStrictEqual([unknown.agent, unknown.statuses.error, unknown.statuses.skipped], ["unknown", 151, 1])
        // A refused URL given as a string reads them too; a name that is no URL reads its own.
        assert.strictEqual((yield* service.stats(refused[0]!)).agent, "unknown")
        assert.strictEqual((yield* service.stats("search")).agent, "search")
        const snapshot = yield* Effect.provideService(Metric.snapshot, Metric.MetricRegistry, registry)
        const labels = new Set(
          snapshot.filter((m) => m.id === Metrics.agentTasks.id).map((m) => m.attributes?.["agent"])
        )
        assert.deepStrictEqual([...labels].sort(), [real, "unknown"])
      })
  )

  it.effect(
    "an agent name past 256 characters (a long URL path) counts under (other), not written whole in series",
    () =>
      Effect.gen(function* () {
        const registry = new Map<string, never>()
        const service = yield* agents({ registry, client: echoClient })
        const long = `http://agents.test/${"p".repeat(100_000)}`
        const record = yield* service.call(task("long", long))
        assert.deepStrictEqual([record.status, record.agent], ["success", long])
        const stats = yield* service.stats(long)
        assert.deepStrictEqual([stats.agent, stats.tasks, stats.calls.total], ["(other)", 1, 1])
        // At the bound, a name has its series.
        const edge = `http://agents.test/${"e".repeat(256 - "http://agents.test/".length)}`
        assert.strictEqual(edge.length, 256)
        yield* service.call(task("edge", edge))
        assert.strictEqual((yield* service.stats(edge)).agent, edge)
        const snapshot = yield* Effect.provideService(Metric.snapshot, Metric.MetricRegistry, registry)
        const labels = snapshot.flatMap((m) => Object.values(m.attributes ?? {}).map(String))
        assert.isFalse(
          labels.some((label) => label.length > 256),
          "no metric label holds the long name"
        )
      })
  )

  it.effect(
    "stats of something that is no agent (null, {}) reads the figures of records without one, not a defect",
    () =>
      Effect.gen(function* () {
        const service = yield* agents()
        yield* service.call(task("n", null as never))
        for (const ref of [null, undefined, {}, 5]) {
          const stats = yield* service.stats(ref as never)
          assert.deepStrictEqual([stats.agent, stats.statuses.error], ["unknown", 1], String(ref))
        }
      })
  )

  it.effect("stats of a URL with a query (a token) reads the series its records are counted in", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const registry = new Map<string, never>()
      const service = yield* agents({ registry })
      const url = `${server.url}?token=s3cret-token#frag-s3cret`
      assert.strictEqual((yield* service.call(task("q1", url))).status, "success")
      const stats = yield* service.stats(url)
      assert.deepStrictEqual([stats.agent, stats.tasks, stats.calls.total], [server.url, 1, 1])
      assert.strictEqual((yield* service.stats(HttpAgent.agent({ url }))).tasks, 1)
      const named = HttpAgent.agent({ url, name: url })
      assert.strictEqual((yield* service.call(task("q2", named))).agent, server.url)
      assert.strictEqual((yield* service.stats(url)).tasks, 2)
      const snapshot = yield* Effect.provideService(Metric.snapshot, Metric.MetricRegistry, registry)
      const labels = snapshot.flatMap((m) => Object.values(m.attributes ?? {}))
      assert.isFalse(
        labels.some((label) => String(label).includes("s3cret")),
        "no metric label holds the query or fragment"
      )
    })
  )
})
