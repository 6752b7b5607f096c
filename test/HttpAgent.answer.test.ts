/**
 * An agent's own answer schema (`HttpAgent.agent({ answer })`): any `Schema.Codec` decodes the
 * answer, one that decodes asynchronously included; one that throws is the agent's `Decode` error,
 * named, not an `Unknown` failure counted on its breaker.
 */
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Metric, Redacted, Schema, SchemaGetter } from "effect"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Executor from "../src/Executor.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as Mock from "../src/Model/Mock.js"
import * as AgentServer from "./utils/agentServer.js"

const agents = (breakers: CircuitBreaker.Options = {}) =>
  Layer.build(
    HttpAgent.layer().pipe(
      Layer.provideMerge(Executor.layerWithStats({ timeout: "none" })),
      Layer.provideMerge(Layer.mergeAll(Mock.layer(), CircuitBreaker.layerMemory(breakers))),
      Layer.provide(NodeHttpClient.layerUndici)
    )
  ).pipe(
    Effect.provideService(Metric.MetricRegistry, new Map()),
    Effect.map((context) => Context.get(context, HttpAgent.HttpAgents))
  )

/** `{ task_id, score }` whose score decodes through `decode`. */
const scored = (decode: SchemaGetter.Getter<number, number>) =>
  Schema.Struct({
    task_id: Schema.String,
    score: Schema.Number.pipe(Schema.decodeTo(Schema.Number, { decode, encode: SchemaGetter.transform((n) => n) }))
  })

describe("HttpAgent: an agent's own answer schema", () => {
  it.effect("one that decodes asynchronously (an Effect in a transformation) decodes the answer", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) => ({ json: { task_id: t.task_id, score: 2 } }))
      const service = yield* agents()
      const agent = HttpAgent.agent({
        url: server.url,
        name: "scorer",
        answer: scored(SchemaGetter.transformEffect((n: number) => Effect.promise(() => Promise.resolve(n * 10))))
      })
      const record = yield* service.call({ id: "s", agent, intent: "i", concept: "c" })
      assert.deepStrictEqual([record.status, record.error?.message], ["success", undefined])
      assert.deepStrictEqual(record.result, { task_id: "s", score: 20 })
    })
  )

  it.effect(
    "one that throws is a Decode error naming the agent and what it threw, scrubbed; no breaker counts it",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make((t) => ({ json: { task_id: t.task_id, score: 2 } }))
        const service = yield* agents({ failMax: 1 })
        const agent = HttpAgent.agent({
          url: server.url,
          name: "scorer",
          headers: { "x-key": Redacted.make("key-s3cret-value") },
          answer: scored(
            SchemaGetter.transform(() => {
              throw new Error("no score for key-s3cret-value")
            })
          )
        })
        for (const id of ["a", "b"]) {
          const record = yield* service.call({ id, agent, intent: "i", concept: "c" })
          assert.deepStrictEqual([record.status, record.error?.reason, record.attempts], ["error", "Decode", 1], id)
          assert.include(record.error?.message, "scorer")
          assert.include(record.error?.message, "no score for")
          assert.notInclude(record.error?.message, "s3cret")
        }
        // The agent answered: its breaker (one failure opens it) stayed closed.
        assert.strictEqual(server.requests(), 2)
      })
  )
})

describe("HttpAgent: an agent's report of a failed task without a result", () => {
  it.effect(
    "status error with its words in error or message is the agent's report: no breaker, retry nor fallback",
    () =>
      Effect.gen(function* () {
        const answers: ReadonlyArray<readonly [Record<string, unknown>, string]> = [
          [{ status: "error", error: "no data for Oslo" }, 'reported status "error": no data for Oslo'],
          [{ status: "Failed", message: "quota exhausted" }, 'reported status "Failed": quota exhausted'],
          [
            { status: "error", error: { message: "no such city", code: "nf" } },
            'reported status "error": no such city'
          ],
          [{ status: "error" }, 'reported status "error"']
        ]
        for (const [i, [answer, words]] of answers.entries()) {
          const server = yield* AgentServer.make((t) => ({ json: { task_id: t.task_id, ...answer } }))
          const mirror = yield* AgentServer.make()
          const service = yield* agents({ failMax: 1 })
          const agent = HttpAgent.agent({ url: server.url, name: "weather", retry: { maxAttempts: 3 } })
          for (const id of ["a", "b"]) {
            const record = yield* service.call({ id, agent, fallback: [mirror.url], intent: "i", concept: "c" })
            assert.deepStrictEqual(
              [record.status, record.agent, record.error?.reason, record.attempts],
              ["error", "weather", "Unknown", 1],
              `${i} ${id}`
            )
            assert.strictEqual(record.error?.message, `weather ${words}`)
          }
          assert.strictEqual(server.requests(), 2, `${i}: not retried, its breaker (one failure opens it) closed`)
          assert.strictEqual(mirror.requests(), 0, `${i}: no fallback`)
        }
      })
  )
})

describe("HttpAgent: an answer its schema refuses", () => {
  it.effect("is a Decode error naming the agent, the field and what was expected, in the library's words", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make((t) =>
        t.intent === "missing"
          ? { json: { task_id: t.task_id } }
          : t.intent === "type"
            ? { json: { task_id: t.task_id, data: { n: "sk-not-echoed" } } }
            : { json: { task_id: t.task_id, status: "done" } }
      )
      const service = yield* agents()
      const agent = HttpAgent.agent({
        url: server.url,
        name: "counter",
        answer: Schema.Struct({ task_id: Schema.String, data: Schema.Struct({ n: Schema.Number }) })
      })
      const missing = yield* service.call({ id: "m", agent, intent: "missing", concept: "c" })
      assert.deepStrictEqual([missing.status, missing.error?.reason, missing.error?.field], ["error", "Decode", "data"])
      assert.strictEqual(missing.error?.message, "counter sent a malformed response: data: missing (expected object)")
      const type = yield* service.call({ id: "t", agent, intent: "type", concept: "c" })
      assert.deepStrictEqual([type.error?.reason, type.error?.field], ["Decode", "data.n"])
      // Its kind, not the value: an answer may carry a token.
      assert.strictEqual(
        type.error?.message,
        "counter sent a malformed response: data.n: expected number, got a string"
      )
      // The default answer says it so too.
      const plain = yield* service.call({
        id: "p",
        agent: HttpAgent.agent({ url: server.url, name: "plain" }),
        intent: "none",
        concept: "c"
      })
      assert.deepStrictEqual([plain.error?.reason, plain.error?.field], ["Decode", "result"])
      assert.strictEqual(
        plain.error?.message,
        "plain sent a malformed response: result: missing (expected null | string | number | boolean | array | object)"
      )
    })
  )
})
