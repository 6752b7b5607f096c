import { assert, describe, it } from "@effect/vitest"
import {
  Context,
  Deferred,
  type Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Logger,
  Metric,
  MutableHashMap,
  Option,
  Ref
} from "effect"
import { TestClock } from "effect/testing"
import { type AiError, modelError } from "../src/AiError.js"
import type { OptionError } from "../src/Input.js"
import * as Metrics from "../src/Metrics.js"
import {
  type GenerateRequest,
  GenerateRequest as GenerateRequestSchema,
  type GenerateResponse,
  type StreamPart
} from "../src/Model.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as Table from "../src/ResponseCache/table.js"
import { captureLogs } from "./utils/logs.js"

let counter = 0
const uniqueName = (label: string) => `rc-${label}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

/** Builds the memory cache in the test's scope, with its own metric name. */
const makeCache = (options: ResponseCache.MemoryOptions = {}) =>
  Effect.map(
    Layer.build(ResponseCache.layerMemory({ name: uniqueName("memory"), ...options })),
    Context.get(ResponseCache.ResponseCache)
  )

const response = (text: string): GenerateResponse => ({
  text,
  finishReason: "stop",
  usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
  provider: "scripted",
  model: "m"
})

/** A scripted provider call: counts calls, started and interrupted ones; answers after `latency`. */
const scripted = (options: { readonly latency?: Duration.Input; readonly fail?: boolean } = {}) =>
  Effect.gen(function* () {
    const calls = yield* Ref.make(0)
    const interrupted = yield* Ref.make(0)
    const call = (text: string): Effect.Effect<GenerateResponse, AiError> =>
      Ref.updateAndGet(calls, (n) => n + 1).pipe(
        Effect.flatMap((n) =>
          Effect.sleep(options.latency ?? "100 millis").pipe(
            Effect.andThen(
              options.fail === true
                ? Effect.fail(modelError("Overloaded", "busy"))
                : Effect.succeed(response(`${text} #${n}`))
            )
          )
        ),
        Effect.onInterrupt(() => Ref.update(interrupted, (n) => n + 1))
      )
    return { call, calls: Ref.get(calls), interrupted: Ref.get(interrupted) }
  })

const lookups = (name: string) =>
  Effect.gen(function* () {
    const count = (outcome: string) =>
      Effect.map(Metric.value(Metric.withAttributes(Metrics.cacheLookups, { cache: name, outcome })), (s) => s.count)
    return {
      hit: yield* count("hit"),
      miss: yield* count("miss"),
      stale: yield* count("stale"),
      shared: yield* count("shared")
    }
  })

const errorsOf = (name: string) =>
  Effect.map(Metric.value(Metric.withAttributes(Metrics.cacheErrors, { cache: name })), (s) => s.count)

const request: GenerateRequest = { prompt: "hello", temperature: 0 }

const finishPart: StreamPart = {
  _tag: "Finish",
  finishReason: "stop",
  usage: { inputTokens: 1, outputTokens: 2, totalTokens: 3 },
  provider: "p",
  model: "m"
}

describe("ResponseCache.key", () => {
  it("is stable across field order; changes with anything that changes the answer", () => {
    const base = ResponseCache.key({ provider: "p", request: { prompt: "hi", temperature: 0.5, maxTokens: 10 } })
    assert.match(base, /^[0-9a-f]{64}$/)
    assert.strictEqual(
      ResponseCache.key({ provider: "p", request: { maxTokens: 10, temperature: 0.5, prompt: "hi" } }),
      base
    )
    const variants: ReadonlyArray<readonly [string, GenerateRequest]> = [
      ["q", { prompt: "hi", temperature: 0.5, maxTokens: 10 }],
      ["p", { prompt: "hi!", temperature: 0.5, maxTokens: 10 }],
      ["p", { prompt: "hi", temperature: 0.6, maxTokens: 10 }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 11 }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, topP: 0.9 }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, seed: 1 }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, stop: ["\n"] }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, model: "other" }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, system: "be brief" }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, tools: [{ name: "search" }] }],
      ["p", { prompt: "hi", temperature: 0.5, maxTokens: 10, responseFormat: { type: "json_object" } }]
    ]
    const keys = new Set(variants.map(([provider, r]) => ResponseCache.key({ provider, request: r })))
    assert.strictEqual(keys.size, variants.length)
    assert.isFalse(keys.has(base))
  })

  const keyOf = (request: GenerateRequest) => ResponseCache.key({ provider: "p", request })

  it("a message's name is part of the key; a conversation without names keys as it did before names", () => {
    const conversation = (names: ReadonlyArray<string | undefined>): GenerateRequest => ({
      messages: [
        { role: "system", content: "s" },
        { role: "user", content: "hi" },
        { role: "assistant", content: "yo" }
      ].map((m, i) => (names[i] === undefined ? m : { ...m, name: names[i] })) as GenerateRequest["messages"]
    })
    // The key of this conversation before messages had names: entries kept then still answer.
    assert.strictEqual(keyOf(conversation([])), "712ba81c13cd7193e7cf97079d38439111fb2a5147c89a2a29471a2c36dec4a1")
    const keys = new Set(
      [[], [undefined, "alice"], [undefined, "bob"], ["alice"], [undefined, undefined, "alice"]].map((names) =>
        keyOf(conversation(names))
      )
    )
    assert.strictEqual(keys.size, 5)
  })

  it("a prompt and the same text as one user message do not share a key: providers send them differently", () => {
    // watsonx's `api: "generation"` sends a prompt as it is and a conversation as `User: hi`, Ollama's
    // `api: "generate"` a prompt to /api/generate and a conversation to /api/chat: one is not the other's answer.
    const pairs: ReadonlyArray<readonly [GenerateRequest, GenerateRequest]> = [
      [{ prompt: "hi" }, { messages: [{ role: "user", content: "hi" }] }],
      [
        { prompt: "hi", system: "s" },
        { system: "s", messages: [{ role: "user", content: "hi" }] }
      ],
      [
        { prompt: "hi", system: "s" },
        {
          messages: [
            { role: "system", content: "s" },
            { role: "user", content: "hi" }
          ]
        }
      ]
    ]
    for (const [a, b] of pairs) assert.notStrictEqual(keyOf(a), keyOf(b), JSON.stringify(a))
    // The system prompt and a first system message of a conversation are sent alike by every provider: one key.
    assert.strictEqual(
      keyOf({ system: "s", messages: [{ role: "user", content: "hi" }] }),
      keyOf({
        messages: [
          { role: "system", content: "s" },
          { role: "user", content: "hi" }
        ]
      })
    )
  })
  const tool = { name: "search", parameters: { type: "object", properties: { q: { type: "string" } } } }
  const schema = { type: "object", properties: { a: { type: "string" }, b: { type: "number" } } }

  it("requests that mean the same share a key: empty lists, defaults, undefined fields, the order of stop sequences", () => {
    const call = { id: "c1", name: "search", arguments: "{}" }
    const same: ReadonlyArray<readonly [GenerateRequest, GenerateRequest]> = [
      [{ prompt: "hi", tools: [] }, { prompt: "hi" }],
      [{ prompt: "hi", stop: [] }, { prompt: "hi" }],
      [
        { prompt: "hi", stop: ["b", "a"] },
        { prompt: "hi", stop: ["a", "b"] }
      ],
      [
        { prompt: "hi", stop: ["a", "a"] },
        { prompt: "hi", stop: ["a"] }
      ],
      [{ prompt: "hi", model: undefined, temperature: undefined, tools: undefined }, { prompt: "hi" }],
      [{ prompt: "hi", responseFormat: { type: "text" } }, { prompt: "hi" }],
      [
        { prompt: "hi", tools: [tool], toolChoice: "auto" },
        { prompt: "hi", tools: [tool] }
      ],
      [
        { prompt: "hi", tools: [{ ...tool, strict: false }] },
        { prompt: "hi", tools: [tool] }
      ],
      [
        { prompt: "hi", tools: [tool], parallelToolCalls: true },
        { prompt: "hi", tools: [tool] }
      ],
      [
        {
          prompt: "hi",
          tools: [{ parameters: { properties: { q: { type: "string" } }, type: "object" }, name: "search" }]
        },
        { prompt: "hi", tools: [tool] }
      ],
      [
        { prompt: "hi", responseFormat: { type: "json_schema", name: "s", schema, strict: false } },
        { prompt: "hi", responseFormat: { type: "json_schema", name: "s", schema } }
      ],
      [{ messages: [{ role: "user", content: "hi", toolCalls: [] }] }, { messages: [{ role: "user", content: "hi" }] }],
      [
        { messages: [{ role: "assistant", content: "", toolCalls: [call], toolCallId: undefined }] },
        { messages: [{ role: "assistant", content: "", toolCalls: [{ arguments: "{}", name: "search", id: "c1" }] }] }
      ]
    ]
    for (const [a, b] of same) assert.strictEqual(keyOf(a), keyOf(b), JSON.stringify(a))
  })

  it("requests that differ in meaning never share a key; every request field is part of it", () => {
    const base: GenerateRequest = { prompt: "hi" }
    // One variant per field of the request schema (a field added later without a variant fails here).
    const changed: Record<keyof GenerateRequest, GenerateRequest> = {
      prompt: { prompt: "ho" },
      messages: {
        messages: [
          { role: "user", content: "hi" },
          { role: "assistant", content: "x" }
        ]
      },
      system: { prompt: "hi", system: "be brief" },
      model: { prompt: "hi", model: "m2" },
      maxTokens: { prompt: "hi", maxTokens: 5 },
      temperature: { prompt: "hi", temperature: 0 },
      topP: { prompt: "hi", topP: 0.5 },
      stop: { prompt: "hi", stop: [""] },
      seed: { prompt: "hi", seed: 0 },
      tools: { prompt: "hi", tools: [tool] },
      toolChoice: { prompt: "hi", toolChoice: "none" },
      parallelToolCalls: { prompt: "hi", tools: [tool], parallelToolCalls: false },
      responseFormat: { prompt: "hi", responseFormat: { type: "json_object" } }
    }
    assert.deepStrictEqual(Object.keys(changed).sort(), Object.keys(GenerateRequestSchema.fields).sort())
    const different: ReadonlyArray<GenerateRequest> = [
      base,
      ...Object.values(changed),
      // Order matters in tools and messages; a tool choice without tools is not the default.
      { prompt: "hi", tools: [tool, { name: "fetch" }] },
      { prompt: "hi", tools: [{ name: "fetch" }, tool] },
      { prompt: "hi", toolChoice: "auto" },
      { prompt: "hi", tools: [tool], toolChoice: "required" },
      { prompt: "hi", tools: [tool], toolChoice: { name: "search" } },
      { prompt: "hi", tools: [{ ...tool, strict: true }] },
      { prompt: "hi", tools: [{ ...tool, description: "" }] },
      { prompt: "hi", responseFormat: { type: "json_schema", name: "s", schema } },
      { prompt: "hi", responseFormat: { type: "json_schema", name: "s", schema, strict: true } },
      { prompt: "hi", responseFormat: { type: "json_schema", name: "t", schema } },
      { prompt: "hi", responseFormat: { type: "json_schema", name: "s", schema, description: "a place" } },
      { prompt: "hi", responseFormat: { type: "json_schema", name: "s", schema, description: "a person" } },
      { prompt: "hi", stop: ["a"] },
      { prompt: "hi", stop: ["a", "b"] },
      {
        messages: [
          { role: "user", content: "hi" },
          { role: "user", content: "ho" }
        ]
      },
      {
        messages: [
          { role: "user", content: "ho" },
          { role: "user", content: "hi" }
        ]
      },
      { messages: [{ role: "tool", content: "hi", toolCallId: "c1" }] },
      { messages: [{ role: "assistant", content: "hi", toolCalls: [{ id: "c1", name: "f", arguments: "{}" }] }] },
      // A call's signature (Gemini's thought signature) is sent back with it: another signature, another answer.
      {
        messages: [
          { role: "assistant", content: "hi", toolCalls: [{ id: "c1", name: "f", arguments: "{}", signature: "s1" }] }
        ]
      },
      {
        messages: [
          { role: "assistant", content: "hi", toolCalls: [{ id: "c1", name: "f", arguments: "{}", signature: "s2" }] }
        ]
      },
      // A "__proto__" key of a schema (JSON.parse makes one) is a key like any other.
      { prompt: "hi", tools: [{ name: "search", parameters: JSON.parse('{"__proto__":{"type":"string"}}') }] },
      { prompt: "hi", tools: [{ name: "search", parameters: {} }] },
      // A string that looks like the encoding of another field does not collide with it.
      { prompt: 'hi","model":"m2' },
      { prompt: "hi", model: "m2", temperature: 1 },
      { prompt: "hi", temperature: 1, model: "m3" }
    ]
    const keys = new Set(different.map(keyOf))
    assert.strictEqual(keys.size, different.length)
    assert.notStrictEqual(
      ResponseCache.key({ provider: "p", request: base }),
      ResponseCache.key({ provider: "q", request: base })
    )
  })

  it("a value with its own JSON form (a Date) keys as the JSON sent for it, not as an empty object", () => {
    const withDefault = (value: unknown) =>
      ResponseCache.key({
        provider: "p",
        request: { prompt: "hi", tools: [{ name: "book", parameters: { type: "object", default: value } }] }
      })
    const january = withDefault(new Date("2026-01-01T00:00:00Z"))
    assert.notStrictEqual(january, withDefault(new Date("2026-02-01T00:00:00Z")))
    assert.strictEqual(january, withDefault("2026-01-01T00:00:00.000Z"), "the same JSON is the same request")
    // A toJSON that answers itself is read by its keys, as JSON.stringify does, not called for ever.
    const selfish = (n: number) => ({
      n,
      toJSON() {
        return this
      }
    })
    assert.notStrictEqual(withDefault(selfish(1)), withDefault(selfish(2)))
  })

  it("a request or provider that is not one throws an InvalidRequest naming it, not a TypeError", () => {
    const cases: ReadonlyArray<readonly [unknown, string]> = [
      [{ provider: "p", request: null }, "request"],
      [{ provider: "p" }, "request"],
      [{ provider: 5, request: { prompt: "hi" } }, "provider"],
      [{ request: { prompt: "hi" } }, "provider"],
      [null, "input"],
      [{ provider: "p", request: { messages: 5 } }, "request"],
      [
        {
          provider: "p",
          get request(): never {
            throw new Error("boom")
          }
        },
        "request"
      ]
    ]
    for (const [input, field] of cases) {
      let thrown: unknown
      try {
        ResponseCache.key(input as never)
      } catch (error) {
        thrown = error
      }
      const error = thrown as { readonly _tag?: string; readonly reason?: string; readonly field?: string }
      assert.strictEqual(`${error?._tag}/${error?.reason}/${error?.field}`, `ModelError/InvalidRequest/${field}`)
    }
  })
})

describe("ResponseCache (memory)", () => {
  it.effect("single-flight: 10 concurrent identical requests make one call and share it; then a hit", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const provider = yield* scripted()
      const key = cache.key({ provider: "p", request })
      const fiber = yield* Effect.forkChild(
        Effect.all(
          Array.from({ length: 10 }, () => cache.getOrCompute(key, provider.call("hello"))),
          { concurrency: "unbounded" }
        )
      )
      yield* TestClock.adjust("100 millis")
      const results = yield* Fiber.join(fiber)
      assert.strictEqual(yield* provider.calls, 1)
      assert.strictEqual(new Set(results.map((r) => r.value)).size, 1, "every waiter gets the same answer")
      assert.deepStrictEqual(results.map((r) => r.source).sort(), ["miss", ...Array(9).fill("shared")].sort())
      const again = yield* cache.getOrCompute(key, provider.call("hello"))
      assert.strictEqual(again.source, "hit")
      assert.strictEqual(yield* provider.calls, 1)
      assert.deepStrictEqual(yield* lookups(cache.name), { hit: 1, miss: 1, stale: 0, shared: 9 })
    })
  )

  it.effect("failures reach every waiter of the flight and are never cached", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const failing = yield* scripted({ fail: true, latency: "10 millis" })
      const fiber = yield* Effect.forkChild(
        Effect.all(
          Array.from({ length: 5 }, () => Effect.flip(cache.getOrCompute("k", failing.call("x")))),
          { concurrency: "unbounded" }
        )
      )
      yield* TestClock.adjust("10 millis")
      const errors = yield* Fiber.join(fiber)
      assert.strictEqual(yield* failing.calls, 1)
      for (const error of errors) assert.strictEqual(error._tag === "ModelError" ? error.reason : "", "Overloaded")
      assert.isTrue(Option.isNone((yield* cache.getMany(["k"]))[0]!))
      const working = yield* scripted({ latency: "10 millis" })
      const retry = yield* Effect.forkChild(cache.getOrCompute("k", working.call("x")))
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual(yield* Fiber.join(retry), { value: response("x #1"), source: "miss" })
    })
  )

  it.effect("an interrupted waiter leaves the flight to the others; when every waiter leaves, it stops", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const provider = yield* scripted()
      const first = yield* Effect.forkChild(cache.getOrCompute("k", provider.call("a")))
      const second = yield* Effect.forkChild(cache.getOrCompute("k", provider.call("a")))
      yield* TestClock.adjust("50 millis")
      yield* Fiber.interrupt(first)
      yield* TestClock.adjust("50 millis")
      assert.strictEqual((yield* Fiber.join(second)).value.text, "a #1")
      assert.strictEqual(yield* provider.interrupted, 0)

      const a = yield* Effect.forkChild(cache.getOrCompute("other", provider.call("b")))
      const b = yield* Effect.forkChild(cache.getOrCompute("other", provider.call("b")))
      yield* TestClock.adjust("10 millis")
      yield* Fiber.interrupt(a)
      yield* Fiber.interrupt(b)
      yield* Effect.yieldNow
      assert.strictEqual(yield* provider.interrupted, 1, "the provider call was cancelled")
      // A new caller starts a new flight rather than joining the cancelled one.
      const c = yield* Effect.forkChild(cache.getOrCompute("other", provider.call("b")))
      yield* TestClock.adjust("100 millis")
      assert.deepStrictEqual(yield* Fiber.join(c), { value: response("b #3"), source: "miss" })
    })
  )

  it.effect("entries expire after their TTL on the Clock", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ ttl: "10 seconds" })
      yield* cache.setMany([{ key: "a", value: response("A") }])
      yield* TestClock.adjust("9 seconds")
      assert.isTrue(Option.isSome((yield* cache.getMany(["a"]))[0]!))
      yield* TestClock.adjust("1 second")
      assert.isTrue(Option.isNone((yield* cache.getMany(["a"]))[0]!))
      const computed = yield* cache.getOrCompute("a", Effect.succeed(response("A2")))
      assert.strictEqual(computed.source, "miss")
      yield* TestClock.adjust("9 seconds")
      assert.strictEqual((yield* cache.getOrCompute("a", Effect.succeed(response("A3")))).value.text, "A2")
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* cache.getOrCompute("a", Effect.succeed(response("A3")))).value.text, "A3")
    })
  )

  it.effect(
    "a ttl or staleFor below a nanosecond is rounded up to 1 ms as 0.2 is, not refused as zero (or no grace)",
    () =>
      Effect.gen(function* () {
        const cache = yield* makeCache({ ttl: 1e-9, staleFor: 1e-9 })
        yield* cache.setMany([{ key: "a", value: response("A") }])
        assert.isTrue(Option.isSome((yield* cache.getMany(["a"]))[0]!))
        yield* TestClock.adjust("1 millis")
        assert.isTrue(Option.isNone((yield* cache.getMany(["a"]))[0]!))
        // Within its grace of 1 ms, a failed computation is answered stale.
        const stale = yield* cache.getOrCompute("a", Effect.fail(modelError("Overloaded", "busy")), {
          allowStale: true
        })
        assert.strictEqual(stale.source, "stale")
      })
  )

  it.effect("stale-if-error: an expired entry within its grace answers a failed computation, again and again", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ ttl: "10 seconds", staleFor: "5 seconds" })
      yield* cache.setMany([{ key: "k", value: response("old") }])
      yield* TestClock.adjust("12 seconds")
      assert.isTrue(Option.isNone((yield* cache.getMany(["k"]))[0]!), "expired entries are not fresh")
      const failing = Effect.fail(modelError("Overloaded", "down"))
      const refused = yield* Effect.flip(cache.getOrCompute("k", failing))
      assert.strictEqual(refused.reason, "Overloaded", "without allowStale the failure stands")
      for (let i = 0; i < 3; i++) {
        assert.deepStrictEqual(yield* cache.getOrCompute("k", failing, { allowStale: true }), {
          value: response("old"),
          source: "stale"
        })
      }
      yield* TestClock.adjust("3 seconds")
      assert.strictEqual(
        (yield* Effect.flip(cache.getOrCompute("k", failing, { allowStale: true }))).reason,
        "Overloaded"
      )
      assert.deepStrictEqual(yield* lookups(cache.name), { hit: 0, miss: 3, stale: 3, shared: 0 })
    })
  )

  it.effect(
    "stale-if-error answers within the grace only: a refresh failing after the grace ended fails its callers",
    () =>
      Effect.gen(function* () {
        const cache = yield* makeCache({ ttl: "10 seconds", staleFor: "5 seconds" })
        yield* cache.setMany([{ key: "k", value: response("old") }])
        yield* TestClock.adjust("12 seconds")
        // The refresh starts 3 seconds before the grace ends and fails 2 seconds after it.
        const slow = yield* scripted({ fail: true, latency: "5 seconds" })
        const leader = yield* Effect.forkChild(
          Effect.flip(cache.getOrCompute("k", slow.call("k"), { allowStale: true }))
        )
        yield* TestClock.adjust("1 second")
        const joined = yield* Effect.forkChild(
          Effect.flip(cache.getOrCompute("k", slow.call("k"), { allowStale: true }))
        )
        yield* TestClock.adjust("4 seconds")
        const reason = (error: AiError) => (error._tag === "ModelError" ? error.reason : error._tag)
        assert.strictEqual(reason(yield* Fiber.join(leader)), "Overloaded", "not an answer 2 s past its grace")
        assert.strictEqual(reason(yield* Fiber.join(joined)), "Overloaded")
        assert.strictEqual(yield* slow.calls, 1)
        assert.deepStrictEqual(yield* lookups(cache.name), { hit: 0, miss: 1, stale: 0, shared: 1 })
      })
  )

  it.effect("stale-if-error reaches callers that joined the refresh; a successful refresh replaces the entry", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ ttl: "10 seconds", staleFor: "1 minute" })
      yield* cache.setMany([{ key: "k", value: response("old") }])
      yield* TestClock.adjust("11 seconds")
      const failing = yield* scripted({ fail: true })
      const fiber = yield* Effect.forkChild(
        Effect.all(
          Array.from({ length: 3 }, () => cache.getOrCompute("k", failing.call("k"), { allowStale: true })),
          { concurrency: "unbounded" }
        )
      )
      yield* TestClock.adjust("100 millis")
      const results = yield* Fiber.join(fiber)
      assert.strictEqual(yield* failing.calls, 1)
      assert.deepStrictEqual(
        results.map((r) => r.source),
        ["stale", "stale", "stale"]
      )
      const working = yield* scripted()
      const refresh = yield* Effect.forkChild(cache.getOrCompute("k", working.call("new"), { allowStale: true }))
      yield* TestClock.adjust("100 millis")
      assert.deepStrictEqual(yield* Fiber.join(refresh), { value: response("new #1"), source: "miss" })
      assert.strictEqual((yield* cache.getOrCompute("k", working.call("new"))).source, "hit")
    })
  )

  it.effect("a refresh that fails after invalidate or setMany does not put the entry it replaced back", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ ttl: "10 seconds", staleFor: "1 minute" })
      const down = modelError("Overloaded", "down")
      const failing = Effect.andThen(Effect.sleep("1 second"), Effect.fail(down))
      // invalidate while the refresh runs: the invalidated answer never comes back, not even as stale
      yield* cache.setMany([{ key: "gone", value: response("old") }])
      yield* TestClock.adjust("11 seconds")
      const refresh = yield* Effect.forkChild(Effect.flip(cache.getOrCompute("gone", failing)))
      yield* TestClock.adjust("100 millis")
      yield* cache.invalidate("gone")
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* Fiber.join(refresh), down)
      const after = yield* Effect.flip(cache.getOrCompute("gone", Effect.fail(down), { allowStale: true }))
      assert.strictEqual(after, down, "the invalidated answer was served as stale")
      // setMany while the refresh runs: its fresh answer stands
      yield* cache.setMany([{ key: "set", value: response("old") }])
      yield* TestClock.adjust("11 seconds")
      const refresh2 = yield* Effect.forkChild(Effect.flip(cache.getOrCompute("set", failing)))
      yield* TestClock.adjust("100 millis")
      yield* cache.setMany([{ key: "set", value: response("new") }])
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* Fiber.join(refresh2), down)
      assert.deepStrictEqual(yield* cache.getMany(["set"]), [Option.some(response("new"))])
    })
  )

  it.effect("a refresh with allowStale that fails after invalidate is not answered with the invalidated entry", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ ttl: "10 seconds", staleFor: "1 minute" })
      const down = modelError("Overloaded", "down")
      const failing = Effect.andThen(Effect.sleep("1 second"), Effect.fail(down))
      yield* cache.setMany([{ key: "gone", value: response("old") }])
      yield* TestClock.adjust("11 seconds")
      const leader = yield* Effect.forkChild(Effect.flip(cache.getOrCompute("gone", failing, { allowStale: true })))
      yield* TestClock.adjust("100 millis")
      const joiner = yield* Effect.forkChild(Effect.flip(cache.getOrCompute("gone", failing, { allowStale: true })))
      yield* TestClock.adjust("100 millis")
      // Removed for good once invalidate returns: a caller that was waiting meanwhile is not answered with it.
      yield* cache.invalidate("gone")
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* Fiber.join(leader), down, "the leader was answered with the invalidated entry")
      assert.strictEqual(yield* Fiber.join(joiner), down, "a joiner was answered with the invalidated entry")
      // setMany meanwhile: the value set stands, and the entry it replaced is not answered either.
      yield* cache.setMany([{ key: "set", value: response("old") }])
      yield* TestClock.adjust("11 seconds")
      const refresh = yield* Effect.forkChild(Effect.flip(cache.getOrCompute("set", failing, { allowStale: true })))
      yield* TestClock.adjust("100 millis")
      yield* cache.setMany([{ key: "set", value: response("new") }])
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* Fiber.join(refresh), down)
      // Without an invalidate, a failed refresh is still answered stale.
      yield* cache.setMany([{ key: "kept", value: response("old") }])
      yield* TestClock.adjust("11 seconds")
      const stale = yield* Effect.forkChild(cache.getOrCompute("kept", failing, { allowStale: true }))
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* Fiber.join(stale), { value: response("old"), source: "stale" })
    })
  )

  it.effect("a refresh whose only caller leaves before its computation starts keeps the stale entry", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ ttl: "10 seconds", staleFor: "1 minute" })
      yield* cache.setMany([{ key: "k", value: response("old") }])
      yield* TestClock.adjust("11 seconds")
      const slow = yield* scripted({ latency: "1 second" })
      // Interrupted at once: the computation was forked, and ended before its first step.
      const refresh = yield* Effect.forkChild(cache.getOrCompute("k", slow.call("new"), { allowStale: true }), {
        startImmediately: true
      })
      yield* Fiber.interrupt(refresh)
      assert.strictEqual(yield* slow.calls, 0, "the computation had not started")
      // The entry is still within its grace: a failure is answered with it, as after a refresh that started.
      const down = modelError("Overloaded", "down")
      assert.deepStrictEqual(yield* cache.getOrCompute("k", Effect.fail(down), { allowStale: true }), {
        value: response("old"),
        source: "stale"
      })
    })
  )

  it.effect(
    "bound: a caller's bound cuts its own wait (stale with allowStale); the computation goes on for the rest",
    () =>
      Effect.gen(function* () {
        const cache = yield* makeCache({ ttl: "10 seconds", staleFor: "1 minute" })
        yield* cache.getOrCompute("k", Effect.succeed(response("old")))
        yield* TestClock.adjust("11 seconds")
        const slow = yield* scripted({ latency: "5 seconds" })
        const cut = modelError("Timeout", "the caller's deadline")
        const bound = <A>(wait: Effect.Effect<A, AiError>) =>
          Effect.timeoutOrElse(wait, { duration: "1 second", orElse: () => Effect.fail(cut) })
        const leader = yield* Effect.forkChild(cache.getOrCompute("k", slow.call("new")))
        const staleJoiner = yield* Effect.forkChild(
          cache.getOrCompute("k", slow.call("new"), { allowStale: true, bound })
        )
        const strictJoiner = yield* Effect.forkChild(Effect.flip(cache.getOrCompute("k", slow.call("new"), { bound })))
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(yield* Fiber.join(staleJoiner), { value: response("old"), source: "stale" })
        assert.strictEqual(yield* Fiber.join(strictJoiner), cut)
        assert.isUndefined(leader.pollUnsafe())
        yield* TestClock.adjust("4 seconds")
        assert.deepStrictEqual(yield* Fiber.join(leader), { value: response("new #1"), source: "miss" })
        // A leader cut by its bound: stale, and the computation stops once nobody waits for it.
        yield* TestClock.adjust("11 seconds")
        const alone = yield* Effect.forkChild(cache.getOrCompute("k", slow.call("newer"), { allowStale: true, bound }))
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(yield* Fiber.join(alone), { value: response("new #1"), source: "stale" })
        assert.strictEqual(yield* slow.interrupted, 1)
        assert.deepStrictEqual(yield* lookups(cache.name), { hit: 0, miss: 2, stale: 2, shared: 1 })
      })
  )

  it.effect("originOf: who produced an answer is kept with it and handed to every caller it answers", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ ttl: "10 seconds", staleFor: "1 minute" })
      const origin: ResponseCache.Origin = { provider: "b", domain: "d-b" }
      const provider = yield* scripted()
      const leader = yield* Effect.forkChild(cache.getOrCompute("k", provider.call("x"), { originOf: () => origin }))
      const joiner = yield* Effect.forkChild(cache.getOrCompute("k", provider.call("x")))
      yield* TestClock.adjust("100 millis")
      assert.deepStrictEqual(yield* Fiber.join(leader), { value: response("x #1"), source: "miss", origin })
      assert.deepStrictEqual(yield* Fiber.join(joiner), { value: response("x #1"), source: "shared", origin })
      assert.deepStrictEqual(yield* cache.getOrCompute("k", provider.call("x")), {
        value: response("x #1"),
        source: "hit",
        origin
      })
      yield* TestClock.adjust("11 seconds")
      const failing = Effect.fail(modelError("Overloaded", "busy"))
      assert.deepStrictEqual(yield* cache.getOrCompute("k", failing, { allowStale: true }), {
        value: response("x #1"),
        source: "stale",
        origin
      })
      // An answer of the request the key names has no origin.
      assert.deepStrictEqual(
        yield* cache.getOrCompute("j", Effect.succeed(response("j")), { originOf: () => undefined }),
        {
          value: response("j"),
          source: "miss"
        }
      )
    })
  )

  it.effect("keep false: the answer reaches the callers of its computation but is not kept", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ ttl: "10 seconds" })
      const provider = yield* scripted()
      const keep = () => false
      const leader = yield* Effect.forkChild(cache.getOrCompute("k", provider.call("x"), { keep }))
      const joiner = yield* Effect.forkChild(cache.getOrCompute("k", provider.call("x")))
      yield* TestClock.adjust("100 millis")
      assert.deepStrictEqual(yield* Fiber.join(leader), { value: response("x #1"), source: "miss" })
      assert.deepStrictEqual(yield* Fiber.join(joiner), { value: response("x #1"), source: "shared" })
      const next = yield* Effect.forkChild(cache.getOrCompute("k", provider.call("x")))
      yield* TestClock.adjust("100 millis")
      assert.deepStrictEqual(yield* Fiber.join(next), { value: response("x #2"), source: "miss" })
      assert.deepStrictEqual(yield* cache.getOrCompute("k", provider.call("x")), {
        value: response("x #2"),
        source: "hit"
      })
    })
  )

  it.effect(
    "a refresh answered but not kept (keep false, or finished in error) leaves the stale entry for later failures",
    () =>
      Effect.gen(function* () {
        const cache = yield* makeCache({ ttl: "10 seconds", staleFor: "1 minute" })
        const down = Effect.fail(modelError("Overloaded", "down"))
        const broken: GenerateResponse = { ...response("malformed call"), finishReason: "error" }
        yield* cache.setMany([{ key: "k", value: response("old") }])
        yield* TestClock.adjust("11 seconds")
        assert.deepStrictEqual(yield* cache.getOrCompute("k", Effect.succeed(broken), { allowStale: true }), {
          value: broken,
          source: "miss"
        })
        assert.deepStrictEqual(yield* cache.getOrCompute("k", down, { allowStale: true }), {
          value: response("old"),
          source: "stale"
        })
        const fallback = response("from a fallback with cache: false")
        assert.deepStrictEqual(
          yield* cache.getOrCompute("k", Effect.succeed(fallback), { allowStale: true, keep: () => false }),
          { value: fallback, source: "miss" }
        )
        assert.deepStrictEqual(yield* cache.getOrCompute("k", down, { allowStale: true }), {
          value: response("old"),
          source: "stale"
        })
      })
  )

  it.effect("capacity: the least recently used entry is evicted", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ capacity: 2 })
      yield* cache.setMany([{ key: "a", value: response("A") }])
      yield* cache.setMany([{ key: "b", value: response("B") }])
      assert.strictEqual((yield* cache.getOrCompute("a", Effect.succeed(response("A2")))).source, "hit")
      yield* cache.setMany([{ key: "c", value: response("C") }])
      const [a, b, c] = yield* cache.getMany(["a", "b", "c"])
      assert.isTrue(Option.isSome(a!))
      assert.isTrue(Option.isNone(b!), "b was the least recently used")
      assert.isTrue(Option.isSome(c!))
    })
  )

  it.effect("maxBytes: the least recently used entries go until the answers kept fit; one too large is not kept", () =>
    Effect.gen(function* () {
      const big = (c: string) => response(c.repeat(4000))
      // Each answer is ~4.1 KB encoded: two fit in 10,000 bytes, three do not.
      const cache = yield* makeCache({ capacity: 100, maxBytes: 10_000 })
      yield* cache.setMany([{ key: "a", value: big("a") }])
      yield* cache.setMany([{ key: "b", value: big("b") }])
      assert.strictEqual((yield* cache.getOrCompute("a", Effect.succeed(big("x")))).source, "hit")
      // Computed answers count as well.
      const c = yield* cache.getOrCompute("c", Effect.succeed(big("c")))
      assert.strictEqual(c.source, "miss")
      const [a, b, c2] = yield* cache.getMany(["a", "b", "c"])
      assert.isTrue(Option.isSome(a!))
      assert.isTrue(Option.isNone(b!), "b was the least recently used")
      assert.isTrue(Option.isSome(c2!))
      // Stream parts count as well.
      yield* cache.setParts("s", [
        { _tag: "TextDelta", text: "s".repeat(4000) },
        { _tag: "Finish", finishReason: "stop", usage: response("x").usage, provider: "p", model: "m" }
      ])
      assert.isTrue(Option.isSome(yield* cache.getParts("s")))
      assert.isTrue(Option.isNone((yield* cache.getMany(["a"]))[0]!), "a was the least recently used")
      // An answer larger than maxBytes reaches its caller and is not kept (nor does it evict the others).
      const huge = yield* cache.getOrCompute("h", Effect.succeed(response("h".repeat(20_000))))
      assert.strictEqual(huge.value.text.length, 20_000)
      const [h, c3] = yield* cache.getMany(["h", "c"])
      assert.isTrue(Option.isNone(h!))
      assert.isTrue(Option.isSome(c3!))
    })
  )

  it.effect("maxBytes: a setMany scans the table once, not once per entry; what it keeps is as if put one by one", () =>
    Effect.gen(function* () {
      // The work is counted, not timed: every read of an entry the table makes while it puts a batch of n. A scan
      // per entry read each entry of the table again for each one put, n * n / 2 reads (20,000 entries into a
      // table of 20,000 held the event loop ~23 s); one scan reads each a few times.
      const n = 2_000
      const table = yield* Table.makeTable(n, 100_000_000)
      let reads = 0
      const counted = (stored: Table.Stored): Table.Stored =>
        new Proxy(stored, {
          get: (target, field, receiver) => {
            reads++
            return Reflect.get(target, field, receiver)
          }
        })
      yield* table.putMany(
        Array.from({ length: n }, (_, i) => [
          Table.responseKey(`k${i}`),
          counted(Table.storedOf({ _tag: "Response", response: response(`v${i}`) }, 0, 60_000, 0))
        ])
      )
      assert.isAtMost(reads, 10 * n)
      assert.strictEqual(table.peek(Table.responseKey("k0"), 0)._tag, "Done")
      assert.strictEqual(table.peek(Table.responseKey(`k${n - 1}`), 0)._tag, "Done")
      // Over the bounds, the least recently used go first, the batch's own first entries included.
      const small = yield* makeCache({ capacity: 3, maxBytes: 10_000 })
      const big = (c: string) => response(c.repeat(4000))
      yield* small.setMany([{ key: "old", value: response("old") }])
      yield* small.setMany([
        { key: "a", value: big("a") },
        { key: "huge", value: response("h".repeat(20_000)) },
        { key: "b", value: big("b") },
        { key: "c", value: response("c") }
      ])
      assert.deepStrictEqual((yield* small.getMany(["old", "a", "huge", "b", "c"])).map(Option.isSome), [
        false,
        true,
        false,
        true,
        true
      ])
      // The table full, a value larger than maxBytes alone is not kept and pushes none out (it took the oldest with it).
      yield* small.setMany([{ key: "huge", value: response("h".repeat(20_000)) }])
      assert.deepStrictEqual((yield* small.getMany(["a", "b", "c", "huge"])).map(Option.isSome), [
        true,
        true,
        true,
        false
      ])
    })
  )

  it.effect("maxBytes: an entry added below the bound does not scan the table (a running byte total)", () =>
    Effect.gen(function* () {
      // Counted, not timed: every read of a kept entry while n entries are added one at a time (put, and computed).
      // A scan per entry added read every entry held each time: n * n / 2 reads.
      const n = 2_000
      const table = yield* Table.makeTable(2 * n, 100_000_000)
      let reads = 0
      const counted = (stored: Table.Stored): Table.Stored =>
        new Proxy(stored, {
          get: (target, field, receiver) => {
            reads++
            return Reflect.get(target, field, receiver)
          }
        })
      const stored = (i: number) =>
        counted(Table.storedOf({ _tag: "Response", response: response(`v${i}`) }, 0, 60_000, 0))
      for (let i = 0; i < n; i++) yield* table.put(Table.responseKey(`p${i}`), stored(i))
      for (let i = 0; i < n; i++) yield* table.run(Table.responseKey(`c${i}`), Effect.succeed(stored(i)))
      assert.isAtMost(reads, 20 * 2 * n)
      assert.strictEqual(table.peek(Table.responseKey("p0"), 0)._tag, "Done")
      assert.strictEqual(table.peek(Table.responseKey(`c${n - 1}`), 0)._tag, "Done")
    })
  )

  it.effect("maxBytes: a value is measured once, not again for each entry holding it (a stale entry put back)", () =>
    Effect.gen(function* () {
      // A refresh that fails puts back a copy of the entry it replaced, holding the same value: encoding that value
      // again to measure it cost a JSON.stringify of a possibly large answer on every failed refresh.
      const table = yield* Table.makeTable(10, 100_000_000)
      let reads = 0
      const value = new Proxy({ _tag: "Response", response: response("v".repeat(1000)) } as Table.Cached, {
        get: (target, field, receiver) => {
          reads++
          return Reflect.get(target, field, receiver)
        }
      })
      const stored = Table.storedOf(value, 0, 60_000, 60_000)
      yield* table.put(Table.responseKey("k"), stored)
      const first = reads
      assert.isAbove(first, 0)
      yield* table.put(Table.responseKey("k"), { ...stored, keepFor: 30_000 })
      assert.strictEqual(reads, first)
      assert.strictEqual(table.peek(Table.responseKey("k"), 0)._tag, "Done")
    })
  )

  it.effect("maxBytes: the bytes of an entry invalidated, written over or expired no longer count", () =>
    Effect.gen(function* () {
      // ~4.1 KB each: two fit in 10,000 bytes, three do not.
      const big = (c: string) => response(c.repeat(4000))
      const both = (cache: ResponseCache.Service, keys: ReadonlyArray<string>) =>
        Effect.map(cache.getMany(keys), (found) => found.map(Option.isSome))
      const invalidated = yield* makeCache({ capacity: 100, maxBytes: 10_000 })
      yield* invalidated.setMany([{ key: "a", value: big("a") }])
      yield* invalidated.invalidate("a")
      yield* invalidated.setMany([{ key: "b", value: big("b") }])
      yield* invalidated.setMany([{ key: "c", value: big("c") }])
      assert.deepStrictEqual(yield* both(invalidated, ["b", "c"]), [true, true])
      const overwritten = yield* makeCache({ capacity: 100, maxBytes: 10_000 })
      yield* overwritten.setMany([{ key: "a", value: big("a") }])
      yield* overwritten.setMany([{ key: "a", value: big("x") }])
      yield* overwritten.setMany([{ key: "b", value: big("b") }])
      assert.deepStrictEqual(yield* both(overwritten, ["a", "b"]), [true, true])
      // An expired entry a computation of its key replaces.
      const expired = yield* makeCache({ capacity: 100, maxBytes: 10_000, ttl: "10 seconds" })
      yield* expired.setMany([{ key: "a", value: big("a") }])
      yield* TestClock.adjust("11 seconds")
      assert.strictEqual((yield* expired.getOrCompute("a", Effect.succeed(big("x")))).source, "miss")
      yield* expired.setMany([{ key: "b", value: big("b") }])
      assert.deepStrictEqual(yield* both(expired, ["a", "b"]), [true, true])
      // A stale entry a refresh replaces.
      const refreshed = yield* makeCache({ capacity: 100, maxBytes: 10_000, ttl: "10 seconds", staleFor: "1 minute" })
      yield* refreshed.setMany([{ key: "a", value: big("a") }])
      yield* TestClock.adjust("11 seconds")
      assert.strictEqual((yield* refreshed.getOrCompute("a", Effect.succeed(big("x")))).source, "miss")
      yield* refreshed.setMany([{ key: "b", value: big("b") }])
      assert.deepStrictEqual(yield* both(refreshed, ["a", "b"]), [true, true])
    })
  )

  it.effect("maxBytes: 256 MiB by default; Infinity for no byte bound", () =>
    Effect.gen(function* () {
      // An answer of 257 MiB is larger than the default bound on its own: answered, not kept.
      const huge = { ...response("x"), text: "h".repeat(257 * 1024 * 1024) }
      const bounded = yield* makeCache()
      assert.strictEqual((yield* bounded.getOrCompute("h", Effect.succeed(huge))).source, "miss")
      assert.strictEqual((yield* bounded.getOrCompute("h", Effect.succeed(response("again")))).source, "miss")
      const unbounded = yield* makeCache({ maxBytes: Number.POSITIVE_INFINITY })
      assert.strictEqual((yield* unbounded.getOrCompute("h", Effect.succeed(huge))).source, "miss")
      assert.strictEqual((yield* unbounded.getOrCompute("h", Effect.succeed(response("again")))).source, "hit")
    })
  )

  it.effect("capacity and maxBytes: an expired entry goes before a valid one, however recently it was used", () =>
    Effect.gen(function* () {
      // a put at 0 s and used at 9 s (the most recently used), b put at 5 s; at 11 s a has expired, b has not.
      const fill = (cache: ResponseCache.Service, value: (c: string) => GenerateResponse) =>
        Effect.gen(function* () {
          yield* cache.setMany([{ key: "a", value: value("a") }])
          yield* TestClock.adjust("5 seconds")
          yield* cache.setMany([{ key: "b", value: value("b") }])
          yield* TestClock.adjust("4 seconds")
          assert.isTrue(Option.isSome((yield* cache.getMany(["a"]))[0]!))
          yield* TestClock.adjust("2 seconds")
        })
      // Counted: an answer computed into a full table of 2.
      const counted = yield* makeCache({ capacity: 2, ttl: "10 seconds" })
      yield* fill(counted, response)
      assert.strictEqual((yield* counted.getOrCompute("c", Effect.succeed(response("c")))).source, "miss")
      assert.deepStrictEqual((yield* counted.getMany(["a", "b", "c"])).map(Option.isSome), [false, true, true])
      // Bytes: ~4.1 KB each, two fit in 10,000 bytes.
      const big = (c: string) => response(c.repeat(4000))
      const sized = yield* makeCache({ capacity: 100, maxBytes: 10_000, ttl: "10 seconds" })
      yield* fill(sized, big)
      yield* sized.setMany([{ key: "c", value: big("c") }])
      assert.deepStrictEqual((yield* sized.getMany(["a", "b", "c"])).map(Option.isSome), [false, true, true])
    })
  )

  it.effect("capacity: looking for expired entries does not scan a full table on each entry added", () =>
    Effect.gen(function* () {
      // One entry put per millisecond, each kept 1 s, into a table of 1,000: from then on one entry expires as each
      // is added. Each put found an entry past its expiry and scanned the whole table for it (1,000 reads a put);
      // the work is counted as the reads of the entries' expiry.
      const n = 1_000
      const table = yield* Table.makeTable(n)
      let reads = 0
      const put = (i: number) =>
        Effect.gen(function* () {
          const key = `k${i}`
          yield* table.put(key, Table.storedOf({ _tag: "Response", response: response(key) }, 0, 1_000, 0))
          const entry = MutableHashMap.get(table.cache.map, key)
          if (Option.isSome(entry)) {
            MutableHashMap.set(
              table.cache.map,
              key,
              new Proxy(entry.value, {
                get: (target, field, receiver) => {
                  if (field === "expiresAt") reads++
                  return Reflect.get(target, field, receiver)
                }
              })
            )
          }
          yield* TestClock.adjust("1 millis")
        })
      for (let i = 0; i < n; i++) yield* put(i)
      reads = 0
      for (let i = n; i < 3 * n; i++) yield* put(i)
      assert.isAtMost(reads, 50 * 2 * n)
      // Still at most 1,000 entries, the latest ones.
      assert.strictEqual(MutableHashMap.size(table.cache.map), n)
      assert.strictEqual(table.peek(`k${3 * n - 1}`, 3 * n)._tag, "Done")
    })
  )

  it.effect("maxBytes: a computed answer larger than maxBytes alone pushes no entry out of a full table", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ capacity: 2, maxBytes: 10_000 })
      yield* cache.setMany([
        { key: "a", value: response("a") },
        { key: "b", value: response("b") }
      ])
      // It made room for itself as its computation ended (the least recently used went), then was not kept.
      const huge = yield* cache.getOrCompute("huge", Effect.succeed(response("h".repeat(20_000))))
      assert.strictEqual(huge.source, "miss")
      assert.deepStrictEqual((yield* cache.getMany(["a", "b", "huge"])).map(Option.isSome), [true, true, false])
      // One that fits still makes room for itself.
      yield* cache.getOrCompute("c", Effect.succeed(response("c")))
      assert.deepStrictEqual((yield* cache.getMany(["a", "b", "c"])).map(Option.isSome), [false, true, true])
    })
  )

  it.effect("invalidate while the answer is computed: the answer reaches its caller but is not kept", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const gate = yield* Deferred.make<void>()
      const computing = yield* Effect.forkChild(
        cache.getOrCompute("k", Effect.as(Deferred.await(gate), response("before invalidate"))),
        { startImmediately: true }
      )
      yield* cache.invalidate("k")
      yield* Deferred.succeed(gate, undefined)
      assert.strictEqual((yield* Fiber.join(computing)).value.text, "before invalidate")
      assert.deepStrictEqual(yield* cache.getMany(["k"]), [Option.none()])
    })
  )

  it.effect("invalidate or setMany in a computation's first step (its compute wakes the caller): still not kept", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      // The compute wakes the waiting caller before it first waits: the table had no entry yet.
      const across = <E>(key: string, during: Effect.Effect<unknown, E>) =>
        Effect.gen(function* () {
          const gate = yield* Deferred.make<void>()
          const started = yield* Deferred.make<void>()
          const computing = yield* Effect.forkChild(
            cache.getOrCompute(
              key,
              Effect.andThen(
                Deferred.succeed(started, undefined),
                Effect.as(Deferred.await(gate), response("computed"))
              )
            )
          )
          yield* Deferred.await(started)
          yield* during
          yield* Deferred.succeed(gate, undefined)
          return (yield* Fiber.join(computing)).value.text
        })
      assert.strictEqual(yield* across("i", cache.invalidate("i")), "computed")
      assert.deepStrictEqual(yield* cache.getMany(["i"]), [Option.none()])
      assert.strictEqual(yield* across("s", cache.setMany([{ key: "s", value: response("set") }])), "computed")
      assert.deepStrictEqual(yield* cache.getMany(["s"]), [Option.some(response("set"))])
    })
  )

  it.effect("capacity counts no running computation: computations that fail evict nothing", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ capacity: 2 })
      yield* cache.setMany([{ key: "a", value: response("A") }])
      yield* cache.setMany([{ key: "b", value: response("B") }])
      // A provider outage: calls for keys not cached fail. The cached answers must outlive it.
      const failing = yield* scripted({ latency: "1 second", fail: true })
      const fibers = yield* Effect.forEach(["c", "d", "e"], (k) =>
        Effect.forkChild(Effect.exit(cache.getOrCompute(k, failing.call(k))))
      )
      yield* TestClock.adjust("1 second")
      for (const fiber of fibers) assert.isTrue(Exit.isFailure(yield* Fiber.join(fiber)))
      const [a, b] = yield* cache.getMany(["a", "b"])
      assert.isTrue(Option.isSome(a!), "a was evicted by a computation that failed")
      assert.isTrue(Option.isSome(b!), "b was evicted by a computation that failed")
      // Answers that succeed take their places once they are there, least recently used first.
      const slow = yield* scripted({ latency: "1 second" })
      const c = yield* Effect.forkChild(cache.getOrCompute("c", slow.call("c")))
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(c)).source, "miss")
      const [a2, b2, c2] = yield* cache.getMany(["a", "b", "c"])
      assert.isTrue(Option.isNone(a2!), "a was the least recently used")
      assert.isTrue(Option.isSome(b2!))
      assert.isTrue(Option.isSome(c2!))
    })
  )

  it.effect("capacity never evicts a running computation: a caller arriving later still joins it (one call)", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ capacity: 2 })
      const slow = yield* scripted({ latency: "10 seconds" })
      const first = yield* Effect.forkChild(cache.getOrCompute("slow", slow.call("slow")))
      yield* TestClock.adjust("1 second")
      // Two other answers fill the cache meanwhile: the running computation was the oldest entry.
      yield* cache.setMany([{ key: "b", value: response("B") }])
      yield* cache.setMany([{ key: "c", value: response("C") }])
      yield* cache.getOrCompute("d", Effect.succeed(response("D")))
      const second = yield* Effect.forkChild(cache.getOrCompute("slow", slow.call("slow")))
      yield* TestClock.adjust("10 seconds")
      const [a, b] = [yield* Fiber.join(first), yield* Fiber.join(second)]
      assert.strictEqual(yield* slow.calls, 1, "the second caller joined the running call")
      assert.deepStrictEqual([a.source, b.source], ["miss", "shared"])
      assert.strictEqual(b.value, a.value)
    })
  )

  it.effect('an answer that ended in error (finishReason "error") reaches its callers but is not cached', () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const broken: GenerateResponse = { ...response("malformed call"), finishReason: "error" }
      const calls = yield* Ref.make(0)
      const call = Effect.as(
        Ref.update(calls, (n) => n + 1),
        broken
      )
      assert.deepStrictEqual(yield* cache.getOrCompute("k", call), { value: broken, source: "miss" })
      assert.strictEqual(
        (yield* cache.getOrCompute("k", call)).source,
        "miss",
        "asked again, not answered from the cache"
      )
      assert.strictEqual(yield* Ref.get(calls), 2)
      yield* cache.setMany([{ key: "m", value: broken }])
      assert.isTrue(Option.isNone((yield* cache.getMany(["m"]))[0]!))
      const parts: ReadonlyArray<StreamPart> = [
        { _tag: "TextDelta", text: "x" },
        {
          _tag: "Finish",
          finishReason: "error",
          usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
          provider: "p",
          model: "m"
        }
      ]
      yield* cache.setParts("s", parts)
      assert.isTrue(Option.isNone(yield* cache.getParts("s")), "a stream that finished in error is not replayed")
    })
  )

  it.effect("capacity: a stream replay or a getMany hit is a use (least recently used goes first)", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ capacity: 2 })
      const parts: ReadonlyArray<StreamPart> = [
        { _tag: "TextDelta", text: "hi" },
        { _tag: "Finish", finishReason: "stop", usage: response("").usage, provider: "p", model: "m" }
      ]
      yield* cache.setParts("a", parts)
      yield* cache.setMany([{ key: "b", value: response("B") }])
      assert.isTrue(Option.isSome(yield* cache.getParts("a")))
      yield* cache.setMany([{ key: "c", value: response("C") }])
      assert.isTrue(Option.isSome(yield* cache.getParts("a")), "replayed just before: b was the least recently used")
      assert.isTrue(Option.isNone((yield* cache.getMany(["b"]))[0]!))
      assert.isTrue(Option.isSome((yield* cache.getMany(["c"]))[0]!))
      yield* cache.setMany([{ key: "d", value: response("D") }])
      assert.isTrue(Option.isSome((yield* cache.getMany(["c"]))[0]!), "read just before: a was the least recently used")
      assert.isTrue(Option.isNone(yield* cache.getParts("a")))
    })
  )

  it.effect(
    "capacity and maxBytes: a key written again (setMany, setParts) is the most recently used, not evicted first",
    () =>
      Effect.gen(function* () {
        const parts: ReadonlyArray<StreamPart> = [
          { _tag: "TextDelta", text: "hi" },
          { _tag: "Finish", finishReason: "stop", usage: response("").usage, provider: "p", model: "m" }
        ]
        // What maxBytes counts of an answer: the entry's value in JSON.
        const byteSize = (value: GenerateResponse) =>
          Buffer.byteLength(JSON.stringify({ _tag: "Response", response: value }))
        const found = (cache: ResponseCache.Service, key: string) =>
          Effect.map(cache.getMany([key]), ([value]) => Option.isSome(value!))
        for (const options of [{ capacity: 2 }, { capacity: 100, maxBytes: 2 * byteSize(response("A")) + 10 }]) {
          const cache = yield* makeCache(options)
          yield* cache.setMany([{ key: "a", value: response("A") }])
          yield* cache.setMany([{ key: "b", value: response("B") }])
          yield* cache.setMany([{ key: "a", value: response("a") }])
          yield* cache.setMany([{ key: "c", value: response("C") }])
          assert.deepStrictEqual(
            [yield* found(cache, "a"), yield* found(cache, "b"), yield* found(cache, "c")],
            [true, false, true],
            `${JSON.stringify(options)}: a was written after b`
          )
        }
        const streams = yield* makeCache({ capacity: 2 })
        yield* streams.setParts("a", parts)
        yield* streams.setMany([{ key: "b", value: response("B") }])
        yield* streams.setParts("a", parts)
        yield* streams.setMany([{ key: "c", value: response("C") }])
        assert.isTrue(Option.isSome(yield* streams.getParts("a")), "a's parts were written after b")
        assert.isFalse(yield* found(streams, "b"))
      })
  )

  it.effect(
    "capacity: an answer computed is used as it ends, not when its computation started (a slow one is not the first evicted)",
    () =>
      Effect.gen(function* () {
        const cache = yield* makeCache({ capacity: 2 })
        const slow = yield* Effect.forkChild(
          cache.getOrCompute("slow", Effect.as(Effect.sleep("10 seconds"), response("slow"))),
          { startImmediately: true }
        )
        yield* cache.setMany([{ key: "a", value: response("A") }])
        yield* cache.setMany([{ key: "b", value: response("B") }])
        yield* TestClock.adjust("10 seconds")
        assert.strictEqual((yield* Fiber.join(slow)).source, "miss")
        yield* cache.setMany([{ key: "c", value: response("C") }])
        const found = yield* cache.getMany(["slow", "a", "b", "c"])
        assert.deepStrictEqual(found.map(Option.isSome), [true, false, false, true], "b was used before slow's answer")
      })
  )

  it.effect("getMany / setMany keep the order of the keys; hits and misses are counted", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      yield* cache.setMany([
        { key: "x", value: response("X") },
        { key: "y", value: response("Y") }
      ])
      const found = yield* cache.getMany(["y", "missing", "x"])
      assert.deepStrictEqual(
        found.map((o) => Option.map(o, (r) => r.text)),
        [Option.some("Y"), Option.none(), Option.some("X")]
      )
      assert.deepStrictEqual(yield* lookups(cache.name), { hit: 2, miss: 1, stale: 0, shared: 0 })
    })
  )

  it.effect("stream parts: completed streams only, kept apart from answers; invalidate removes both", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const parts: ReadonlyArray<StreamPart> = [
        { _tag: "TextDelta", text: "hi " },
        { _tag: "TextDelta", text: "there" },
        finishPart
      ]
      yield* cache.setParts("unfinished", parts.slice(0, 2))
      assert.isTrue(Option.isNone(yield* cache.getParts("unfinished")), "a stream without its Finish is not cached")
      yield* cache.setParts("k", parts)
      assert.isTrue(Option.isNone((yield* cache.getMany(["k"]))[0]!), "stream parts are not an answer")
      yield* cache.setMany([{ key: "k", value: response("whole") }])
      assert.deepStrictEqual(yield* cache.getParts("k"), Option.some(parts))
      assert.strictEqual(Option.getOrThrow((yield* cache.getMany(["k"]))[0]!).text, "whole")
      yield* cache.invalidate("k")
      assert.isTrue(Option.isNone((yield* cache.getMany(["k"]))[0]!))
      assert.isTrue(Option.isNone(yield* cache.getParts("k")))
    })
  )

  it.effect("closing the layer interrupts the computations still running", () =>
    Effect.gen(function* () {
      const provider = yield* scripted({ latency: "1 minute" })
      const started = yield* Deferred.make<void>()
      const fiber = yield* Effect.scoped(
        Effect.gen(function* () {
          const cache = yield* makeCache()
          const fiber = yield* Effect.forkDetach(cache.getOrCompute("k", provider.call("k")))
          yield* TestClock.adjust("1 second")
          yield* Deferred.succeed(started, undefined)
          return fiber
        })
      )
      yield* Deferred.await(started)
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit))
      assert.strictEqual(yield* provider.interrupted, 1)
    })
  )

  it.effect("closing the layer interrupts a computation invalidate or setMany took out of the table too", () =>
    Effect.gen(function* () {
      const provider = yield* scripted({ latency: "1 minute" })
      const started = yield* Deferred.make<void>()
      const [invalidated, replaced] = yield* Effect.scoped(
        Effect.gen(function* () {
          const cache = yield* makeCache()
          const invalidated = yield* Effect.forkDetach(cache.getOrCompute("a", provider.call("a")))
          const replaced = yield* Effect.forkDetach(cache.getOrCompute("b", provider.call("b")))
          yield* TestClock.adjust("1 second")
          yield* cache.invalidate("a")
          yield* cache.setMany([{ key: "b", value: response("put") }])
          yield* Deferred.succeed(started, undefined)
          return [invalidated, replaced] as const
        })
      )
      yield* Deferred.await(started)
      // Left running, they would answer once the provider does.
      yield* TestClock.adjust("2 minutes")
      assert.isTrue(Exit.isFailure(yield* Fiber.await(invalidated)))
      assert.isTrue(Exit.isFailure(yield* Fiber.await(replaced)))
      assert.strictEqual(yield* provider.interrupted, 2)
    })
  )

  it.effect(
    "invalid options fail the layer with an OptionError naming the field (capacity NaN cached nothing in v0.1)",
    () =>
      Effect.gen(function* () {
        const cases: ReadonlyArray<readonly [ResponseCache.MemoryOptions, string]> = [
          [{ capacity: Number.NaN }, "capacity"],
          [{ capacity: 0 }, "capacity"],
          [{ capacity: 2.5 }, "capacity"],
          [{ maxBytes: Number.NaN }, "maxBytes"],
          [{ maxBytes: 0 }, "maxBytes"],
          [{ maxBytes: -1 }, "maxBytes"],
          [{ maxBytes: 1.5 }, "maxBytes"],
          [{ maxBytes: null } as never, "maxBytes"],
          [{ ttl: 0 }, "ttl"],
          [{ ttl: Number.NaN }, "ttl"],
          [{ ttl: Number.POSITIVE_INFINITY }, "ttl"],
          [{ staleFor: -1 }, "staleFor"],
          [{ name: "" }, "name"],
          [{ capcity: 10 } as ResponseCache.MemoryOptions, "capcity"],
          // null is a wrong value, not an absent one: it was read as the default.
          [{ capacity: null } as never, "capacity"],
          [{ ttl: null } as never, "ttl"],
          [{ staleFor: null } as never, "staleFor"],
          [{ name: null } as never, "name"],
          // The `cache` label: written as U+FFFD, two such names were one series twice on /metrics.
          [{ name: "cache-\uD800" }, "name"],
          // The `cache` label of every lookup, error and oversized series, written whole on every scrape (as a
          // provider's name or a domain, it is bounded at 256 characters).
          [{ name: "c".repeat(257) }, "name"],
          // It died with a TypeError listing null's keys.
          [null as never, "options"],
          [{ ttl: "1 minute", stalefor: "1 minute" } as ResponseCache.MemoryOptions, "stalefor"]
        ]
        for (const [options, path] of cases) {
          const exit = yield* Effect.exit(Layer.build(ResponseCache.layerMemory(options)))
          const error = Exit.findErrorOption(exit)
          assert.isTrue(Option.isSome(error), `${JSON.stringify(options)} must fail with a typed error`)
          assert.strictEqual((Option.getOrThrow(error) as OptionError).path, path, JSON.stringify(options))
        }
      })
  )
})

describe("ResponseCache: metric series and the layer's life", () => {
  it.effect("a closed cache's lookup series leave the registry; a new cache's counts start from zero", () =>
    Effect.gen(function* () {
      const lookups = () =>
        Effect.map(Metric.snapshot, (all) =>
          all
            .filter((m) => m.id === Metrics.cacheLookups.id && (m.state as { count: number }).count > 0)
            .map((m) => [m.attributes?.["outcome"], (m.state as { count: number }).count])
        )
      const answer: GenerateResponse = {
        text: "a",
        finishReason: "stop",
        usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
        provider: "p",
        model: "m"
      }
      const use = Effect.gen(function* () {
        const cache = yield* ResponseCache.ResponseCache
        yield* cache.getOrCompute("k", Effect.succeed(answer))
        yield* cache.getOrCompute("k", Effect.succeed(answer))
        return yield* lookups()
      }).pipe(Effect.provide(ResponseCache.layerMemory()))
      assert.deepStrictEqual((yield* use).sort(), [
        ["hit", 1],
        ["miss", 1]
      ])
      assert.deepStrictEqual(
        (yield* Metric.snapshot).filter((m) => m.id === Metrics.cacheLookups.id),
        [],
        "closing the cache removes its series"
      )
      assert.deepStrictEqual((yield* use).sort(), [
        ["hit", 1],
        ["miss", 1]
      ])
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
  )
})

describe("ResponseCache: its error series leaves with the layer", () => {
  it.effect(
    "a closed cache's orchestra_cache_errors_total leaves the registry; a new cache's counts start from zero",
    () =>
      Effect.gen(function* () {
        const errorSeries = Effect.map(Metric.snapshot, (all) =>
          all.filter((m) => m.id === Metrics.cacheErrors.id).map((m) => (m.state as { count: number }).count)
        )
        const use = Effect.gen(function* () {
          const cache = yield* ResponseCache.ResponseCache
          // A compute answering what is no answer: not kept, counted as an error of the cache.
          yield* cache.getOrCompute("k", Effect.succeed(null as never))
          return yield* errorSeries
        }).pipe(Effect.provide(ResponseCache.layerMemory({ name: "closing" })))
        assert.deepStrictEqual(yield* use, [1])
        assert.deepStrictEqual(yield* errorSeries, [], "closing the cache removes its error series")
        assert.deepStrictEqual(yield* use, [1])
      }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
  )
})

/** The `InvalidRequest` a call failed with, and whether it failed as a defect instead. */
const refusal = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.map(Effect.exit(effect), (exit) => {
    const error = Exit.findErrorOption(exit)
    assert.isTrue(Option.isSome(error), `expected a typed failure, got ${String(exit)}`)
    const found = Option.getOrThrow(error) as { readonly _tag: string; readonly reason: string; readonly field: string }
    assert.strictEqual(found._tag, "ModelError")
    assert.strictEqual(found.reason, "InvalidRequest")
    return found
  })

describe("ResponseCache: inputs", () => {
  it.effect("getOrCompute refuses an options key it does not take, or a value of the wrong kind, naming it", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const provider = yield* scripted({ latency: 0 })
      const cases: ReadonlyArray<readonly [unknown, unknown, unknown, string]> = [
        // A misspelt allowStale was ignored: the caller believed stale-if-error was on.
        ["k", provider.call("x"), { alowStale: true }, "alowStale"],
        ["k", provider.call("x"), { allowStale: "yes" }, "allowStale"],
        ["k", provider.call("x"), { keep: false }, "keep"],
        ["k", provider.call("x"), { originOf: null }, "originOf"],
        ["k", provider.call("x"), { bound: 5 }, "bound"],
        ["k", provider.call("x"), null, "options"],
        [
          "k",
          provider.call("x"),
          {
            get allowStale(): boolean {
              throw new Error("boom")
            }
          },
          "allowStale"
        ],
        [5, provider.call("x"), undefined, "key"],
        ["k", Promise.resolve(response("x")), undefined, "compute"]
      ]
      for (const [key, compute, options, field] of cases) {
        const error = yield* refusal(cache.getOrCompute(key as string, compute as never, options as never))
        assert.strictEqual(error.field, field)
      }
      assert.strictEqual(yield* provider.calls, 0, "nothing was computed")
      assert.deepStrictEqual(yield* lookups(cache.name), { hit: 0, miss: 0, stale: 0, shared: 0 })
    })
  )

  it.effect(
    "getMany, setMany, getParts, setParts and invalidate refuse what is not a key, an answer or parts, naming it",
    () =>
      Effect.gen(function* () {
        const cache = yield* makeCache()
        const bad = cache as unknown as Record<
          string,
          (...args: ReadonlyArray<unknown>) => Effect.Effect<unknown, unknown>
        >
        const cases: ReadonlyArray<readonly [string, ReadonlyArray<unknown>, string]> = [
          ["getMany", [null], "keys"],
          ["getMany", [["a", 5]], "keys[1]"],
          ["setMany", [null], "entries"],
          [
            "setMany",
            [
              [
                { key: "a", value: response("a") },
                { key: 5, value: response("b") }
              ]
            ],
            "entries[1].key"
          ],
          ["setMany", [[{ key: "a", value: null }]], "entries[0].value"],
          ["setMany", [[{ key: "a", value: { ...response("a"), text: 5 } }]], "entries[0].value"],
          ["setMany", [[{ key: "a", value: response("a"), ttl: 5 }]], "entries[0].ttl"],
          ["setMany", [[null]], "entries[0]"],
          ["getParts", [5], "key"],
          ["setParts", [5, [finishPart]], "key"],
          // It threw out of setParts itself (reading null's length), before any Effect ran.
          ["setParts", ["k", null], "parts"],
          ["setParts", ["k", [{ _tag: "Nope" }, finishPart]], "parts[0]"],
          ["invalidate", [null], "key"]
        ]
        for (const [method, args, field] of cases) {
          const error = yield* refusal(Effect.suspend(() => bad[method]!(...args)))
          assert.strictEqual(error.field, field, `${method}(${JSON.stringify(args)})`)
        }
        assert.deepStrictEqual(yield* cache.getMany(["a"]), [Option.none()], "no entry of a refused setMany is stored")
        assert.deepStrictEqual(yield* cache.getParts("k"), Option.none())
      })
  )

  it.effect(
    "a stream's malformed parts: setParts refuses them naming the part, keeps nothing, says and counts it",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        yield* Effect.gen(function* () {
          // A caller's own stream: the executor ignores setParts' failure (the stream is answered), so
          // without the warning and the count nobody learns why its replays never hit.
          const name = uniqueName("parts")
          const cache = yield* makeCache({ name })
          const text: StreamPart = { _tag: "TextDelta", text: "a" }
          const { finishReason: _, ...noReason } = finishPart
          const odd: ReadonlyArray<readonly [string, ReadonlyArray<unknown>, string]> = [
            ["no finishReason", [text, noReason], "parts[1].finishReason"],
            ["a string", [text, "x", finishPart], "parts[1]"],
            ["undefined", [text, undefined, finishPart], "parts[1]"],
            ["null", [null, finishPart], "parts[0]"],
            [
              "NaN usage",
              [text, { ...finishPart, usage: { ...finishPart.usage, totalTokens: Number.NaN } }],
              "parts[1].usage.totalTokens"
            ]
          ]
          for (const [key, parts, field] of odd) {
            assert.isFalse(ResponseCache.isStorable(parts as ReadonlyArray<StreamPart>), key)
            assert.strictEqual(
              (yield* refusal(cache.setParts(key, parts as ReadonlyArray<StreamPart>))).field,
              field,
              key
            )
            assert.deepStrictEqual(yield* cache.getParts(key), Option.none(), key)
          }
          const warnings = logs.lines.filter((line) => line.startsWith("Warn"))
          assert.strictEqual(warnings.length, odd.length, JSON.stringify(logs.lines))
          for (const [i, [, , field]] of odd.entries()) {
            assert.include(warnings[i], `ResponseCache ${name}: stream parts not stored: ${field} `)
          }
          assert.strictEqual(yield* errorsOf(name), odd.length)
          yield* cache.setParts("fine", [text, finishPart])
          assert.deepStrictEqual(yield* cache.getParts("fine"), Option.some([text, finishPart]))
        }).pipe(Effect.provide(logs.layer))
      })
  )

  it.effect("setMany and setParts refuse a usage count that is not a finite number, naming it", () =>
    Effect.gen(function* () {
      // JSON writes NaN and Infinity as null: Redis stored such an answer and never read it back
      // (every lookup a miss counted as a Redis error), while memory kept it.
      const cache = yield* makeCache()
      const usage = response("a").usage
      const cases: ReadonlyArray<readonly [Effect.Effect<unknown, unknown>, string]> = [
        [
          cache.setMany([{ key: "a", value: { ...response("a"), usage: { ...usage, inputTokens: Number.NaN } } }]),
          "entries[0].value.usage.inputTokens"
        ],
        [
          cache.setMany([
            { key: "a", value: response("a") },
            { key: "b", value: { ...response("b"), usage: { ...usage, totalTokens: Number.POSITIVE_INFINITY } } }
          ]),
          "entries[1].value.usage.totalTokens"
        ],
        [
          cache.setParts("k", [
            { _tag: "TextDelta", text: "x" },
            { ...finishPart, usage: { ...finishPart.usage, outputTokens: Number.NaN } } as StreamPart
          ]),
          "parts[1].usage.outputTokens"
        ]
      ]
      for (const [call, field] of cases) assert.strictEqual((yield* refusal(call)).field, field)
      assert.deepStrictEqual(yield* cache.getMany(["a", "b"]), [Option.none(), Option.none()])
      assert.deepStrictEqual(yield* cache.getParts("k"), Option.none())
    })
  )

  it.effect(
    "a bound that returns no Effect is the caller's defect, naming bound (as the executor's callbacks are)",
    () =>
      Effect.gen(function* () {
        const cache = yield* makeCache()
        const exit = yield* Effect.exit(
          cache.getOrCompute("k", Effect.succeed(response("x")), { bound: (() => 42) as never })
        )
        assert.isTrue(Exit.isFailure(exit) && Option.isNone(Exit.findErrorOption(exit)), String(exit))
        assert.include(String(exit), "bound must return an Effect, got a number")
      })
  )

  it.effect("a keep or originOf that throws, or answers what it may not, fails its call naming it, not stale", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ ttl: "10 seconds", staleFor: "1 minute" })
      yield* cache.setMany([{ key: "k", value: response("old") }])
      yield* TestClock.adjust("11 seconds")
      const cases: ReadonlyArray<readonly [ResponseCache.GetOrComputeOptions<never>, string]> = [
        [
          {
            keep: () => {
              throw new Error("boom")
            }
          },
          "keep"
        ],
        [
          {
            originOf: () => {
              throw new Error("boom")
            }
          },
          "originOf"
        ],
        // `keep: () => 0` meant "do not keep" and kept it; an origin that is not one cannot be stored.
        [{ keep: () => 0 as never }, "keep"],
        [{ originOf: () => "b" as never }, "originOf"]
      ]
      for (const [options, field] of cases) {
        const error = yield* refusal(
          cache.getOrCompute("k", Effect.succeed(response("new")), { ...options, allowStale: true })
        )
        assert.strictEqual(error.field, field)
        assert.include((error as unknown as Error).message, field)
      }
      // Nothing was kept: the stale entry is still the one a failure finds.
      assert.deepStrictEqual(
        yield* cache.getOrCompute("k", Effect.fail(modelError("Overloaded", "down")), { allowStale: true }),
        { value: response("old"), source: "stale" }
      )
    })
  )

  it.effect("two computations that each ask for the other's key (a cycle across callers) fail, never hang", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      // a's computation asks for b, and b's (started by another caller meanwhile) asks for a: each waited
      // for the other for good.
      const asking = (other: string): Effect.Effect<GenerateResponse, AiError> =>
        Effect.andThen(Effect.sleep("1 second"), () =>
          Effect.map(cache.getOrCompute(other, asking(other === "a" ? "b" : "a")), (found) => found.value)
        )
      const a = yield* Effect.forkChild(Effect.flip(cache.getOrCompute("a", asking("b"))))
      const b = yield* Effect.forkChild(Effect.flip(cache.getOrCompute("b", asking("a"))))
      yield* TestClock.adjust("1 hour")
      assert.isDefined(a.pollUnsafe(), "a waits for b, which waits for a")
      assert.isDefined(b.pollUnsafe(), "b waits for a, which waits for b")
      for (const error of [yield* Fiber.join(a), yield* Fiber.join(b)]) {
        const { reason, field } = error as Extract<AiError, { readonly _tag: "ModelError" }>
        assert.strictEqual(`${reason}/${field}`, "InvalidRequest/compute")
        assert.include(error.message, "recursion")
      }
      // Both keys are free again.
      assert.strictEqual((yield* cache.getOrCompute("a", Effect.succeed(response("ok")))).source, "miss")
      assert.strictEqual((yield* cache.getOrCompute("b", Effect.succeed(response("ok")))).source, "miss")
      // A computation that asks for another key no one waits on still answers.
      const outer = yield* Effect.forkChild(
        cache.getOrCompute(
          "outer",
          Effect.map(cache.getOrCompute("inner", Effect.succeed(response("inner"))), (found) => found.value)
        )
      )
      assert.strictEqual((yield* Fiber.join(outer)).value.text, "inner")
    })
  )

  it.effect("a compute that asks for its own key fails with an InvalidRequest naming the recursion, never hangs", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache()
      const direct: Effect.Effect<GenerateResponse, AiError> = Effect.suspend(() =>
        Effect.map(cache.getOrCompute("k", direct), (found) => found.value)
      )
      // After a wait, through a child fiber, as a compute calling the executor reaches the same key.
      const forked: Effect.Effect<GenerateResponse, AiError> = Effect.andThen(Effect.sleep("1 second"), () =>
        Effect.map(
          Effect.all([cache.getOrCompute("f", forked), Effect.succeed(1)], { concurrency: "unbounded" }),
          ([found]) => found.value
        )
      )
      for (const [key, compute] of [
        ["k", direct],
        ["f", forked]
      ] as const) {
        const fiber = yield* Effect.forkChild(Effect.flip(cache.getOrCompute(key, compute, { allowStale: true })))
        yield* TestClock.adjust("1 hour")
        const exit = fiber.pollUnsafe()
        assert.isDefined(exit, `getOrCompute of ${key} waits for itself`)
        const error = yield* Fiber.join(fiber)
        assert.strictEqual(error._tag, "ModelError")
        const { reason, field } = error as Extract<AiError, { readonly _tag: "ModelError" }>
        assert.strictEqual(`${reason}/${field}`, "InvalidRequest/compute")
        assert.include(error.message, "recursion")
        // The key is free again: a compute that does not recurse answers.
        assert.strictEqual((yield* cache.getOrCompute(key, Effect.succeed(response("ok")))).source, "miss")
      }
      // A concurrent caller of the same key (not inside the computation) still joins it.
      const gate = yield* Deferred.make<void>()
      const slow = Effect.as(Deferred.await(gate), response("slow"))
      const callers = yield* Effect.forkChild(
        Effect.all([cache.getOrCompute("s", slow), cache.getOrCompute("s", slow)], { concurrency: "unbounded" })
      )
      yield* Effect.yieldNow
      yield* Deferred.succeed(gate, undefined)
      const results = yield* Fiber.join(callers)
      assert.deepStrictEqual(results.map((r) => r.source).sort(), ["miss", "shared"])
    })
  )

  it.effect("a fiber a computation started that asks for the key after the computation ended is no recursion", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ ttl: "1 minute" })
      const later = yield* Deferred.make<Exit.Exit<ResponseCache.Computed, AiError>>()
      // A background job the computation leaves behind (a refresh a minute later, a prefetch): the key's
      // computation is over when it asks, so there is nothing of its own to wait for.
      const compute = Effect.as(
        Effect.forkDetach(
          Effect.sleep("2 minutes").pipe(
            Effect.andThen(Effect.exit(cache.getOrCompute("k", Effect.succeed(response("refreshed"))))),
            Effect.flatMap((exit) => Deferred.succeed(later, exit))
          )
        ),
        response("first")
      )
      assert.strictEqual((yield* cache.getOrCompute("k", compute)).source, "miss")
      // And another key's, asked from there, waits for no computation of the first.
      const other = yield* Deferred.make<Exit.Exit<ResponseCache.Computed, AiError>>()
      const computeOther = Effect.as(
        Effect.forkDetach(
          Effect.sleep("2 minutes").pipe(
            Effect.andThen(Effect.exit(cache.getOrCompute("o", Effect.succeed(response("o"))))),
            Effect.flatMap((exit) => Deferred.succeed(other, exit))
          )
        ),
        response("x")
      )
      assert.strictEqual((yield* cache.getOrCompute("x", computeOther)).source, "miss")
      yield* TestClock.adjust("3 minutes")
      const exit = yield* Deferred.await(later)
      assert.isTrue(Exit.isSuccess(exit), String(exit))
      assert.deepStrictEqual(Exit.isSuccess(exit) ? exit.value : undefined, {
        value: response("refreshed"),
        source: "miss"
      })
      const exitOther = yield* Deferred.await(other)
      assert.isTrue(Exit.isSuccess(exitOther), String(exitOther))
    })
  )
})

describe("ResponseCache (memory): a compute of the caller's own answering what is not an answer", () => {
  const odd: ReadonlyArray<readonly [string, unknown]> = [
    ["undefined", undefined],
    ["null", null],
    ["number", 42],
    ["string", "text"],
    ["no fields", {}],
    ["no usage", { text: "t", finishReason: "stop", provider: "p", model: "m" }]
  ]

  it.effect(
    "every caller of the flight has it as it is, no defect; it is not kept, said by the cache's name, counted",
    () =>
      Effect.gen(function* () {
        const logs = yield* captureLogs
        yield* Effect.gen(function* () {
          const name = uniqueName("odd")
          const cache = yield* makeCache({ name })
          for (const [key, value] of odd) {
            const compute = Effect.as(Effect.sleep("10 millis"), value as GenerateResponse)
            const fiber = yield* Effect.forkChild(
              Effect.all(
                Array.from({ length: 3 }, () =>
                  Effect.exit(cache.getOrCompute(key, compute, { keep: (answer) => answer.text.length > 0 }))
                ),
                { concurrency: "unbounded" }
              )
            )
            yield* TestClock.adjust("10 millis")
            const exits = yield* Fiber.join(fiber)
            for (const exit of exits) {
              assert.isTrue(Exit.isSuccess(exit), `${key}: ${String(exit)}`)
              if (Exit.isSuccess(exit)) assert.strictEqual(exit.value.value, value, key)
            }
            assert.deepStrictEqual(
              exits.map((exit) => (Exit.isSuccess(exit) ? exit.value.source : "")).sort(),
              ["miss", "shared", "shared"],
              key
            )
          }
          assert.isTrue((yield* cache.getMany(odd.map(([key]) => key))).every(Option.isNone))
          const next = yield* cache.getOrCompute("null", Effect.succeed(response("next")))
          assert.deepStrictEqual(next, { value: response("next"), source: "miss" })
          const warnings = logs.lines.filter((line) => line.startsWith("Warn"))
          assert.strictEqual(warnings.length, odd.length, JSON.stringify(logs.lines))
          for (const warning of warnings) assert.include(warning, `ResponseCache ${name}: answer not stored: answer`)
          assert.strictEqual(yield* errorsOf(name), odd.length)
        }).pipe(Effect.provide(logs.layer))
      })
  )

  it.effect("with maxBytes, one JSON cannot encode (a circular object, a bigint) is not measured: no defect", () =>
    Effect.gen(function* () {
      const cache = yield* makeCache({ maxBytes: 10_000 })
      const circular: Record<string, unknown> = { text: "t" }
      circular["self"] = circular
      for (const [key, value] of [
        ["circular", circular],
        ["bigint", 10n]
      ] as const) {
        const answered = yield* cache.getOrCompute(key, Effect.succeed(value as unknown as GenerateResponse))
        assert.strictEqual(answered.value, value, key)
      }
      yield* cache.setMany([{ key: "kept", value: response("kept") }])
      assert.deepStrictEqual((yield* cache.getMany(["kept"]))[0], Option.some(response("kept")))
    }).pipe(Effect.provide(Logger.layer([])))
  )

  it.effect(
    "with maxBytes, an answer with a field JSON cannot encode (a bigint, a cycle) reaches its callers, is not kept, and the cache goes on",
    () =>
      Effect.gen(function* () {
        const cache = yield* makeCache({ maxBytes: 10_000 })
        const bigint = { ...response("bigint"), raw: 10n } as unknown as GenerateResponse
        const cyclic: Record<string, unknown> = { ...response("cyclic") }
        cyclic["self"] = cyclic
        for (const [key, value] of [
          ["bigint", bigint],
          ["cyclic", cyclic as unknown as GenerateResponse]
        ] as const) {
          // It died measuring it, and so did every later computation and setMany (the table scan met it again).
          const answered = yield* cache.getOrCompute(key, Effect.succeed(value))
          assert.strictEqual(answered.value, value, key)
          assert.strictEqual(answered.source, "miss")
          assert.deepStrictEqual(yield* cache.getMany([key]), [Option.none()])
          const next = yield* cache.getOrCompute(`${key}-next`, Effect.succeed(response("next")))
          assert.deepStrictEqual(next, { value: response("next"), source: "miss" })
          assert.deepStrictEqual(yield* cache.getMany([`${key}-next`]), [Option.some(response("next"))])
        }
        yield* cache.setMany([
          { key: "set-odd", value: bigint },
          { key: "set-kept", value: response("kept") }
        ])
        assert.deepStrictEqual((yield* cache.getMany(["set-odd", "set-kept"]))[1], Option.some(response("kept")))
      }).pipe(Effect.provide(Logger.layer([])))
  )
})
