/**
 * The gateway through the official `openai` client: chat, streams (exact text, usage
 * chunk), embeddings (float and base64, input order), tools passed through, models.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Harness from "./gateway/harness.js"
import * as Up from "./gateway/upstream.js"
import * as Server from "./utils/httpServer.js"

describe("Gateway: chat", () => {
  it.live("answers a chat completion through a domain, as the official client reads it", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi(["Hello", " there"]))
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const answer = yield* Harness.call(() =>
        gw.client().chat.completions.create({
          model: "d-a",
          messages: [
            { role: "system", content: "be brief" },
            { role: "user", content: "hi" }
          ],
          max_tokens: 20,
          temperature: 0.3,
          stop: ["\n\n"]
        })
      )
      assert.strictEqual(answer.object, "chat.completion")
      assert.strictEqual(answer.model, "d-a")
      assert.strictEqual(answer.choices[0]!.message.content, "Hello there")
      assert.strictEqual(answer.choices[0]!.finish_reason, "stop")
      assert.deepStrictEqual(answer.usage, { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 })
      const [sent] = yield* upstream.requests
      const body = sent!.json as Record<string, unknown>
      assert.deepStrictEqual(body.messages, [
        { role: "system", content: "be brief" },
        { role: "user", content: "hi" }
      ])
      assert.strictEqual(body.max_tokens, 20)
      assert.strictEqual(body.temperature, 0.3)
      assert.deepStrictEqual(body.stop, ["\n\n"])
      assert.strictEqual(sent!.headers.authorization, `Bearer ${Harness.UPSTREAM_KEY}`)
    })
  )

  it.live("streams the exact text, then the usage chunk, then [DONE]", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi(["Hel", "lo", " wörld", "!"]))
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const stream = yield* Harness.call(() =>
        gw.client().chat.completions.create({
          model: "d-a",
          messages: [{ role: "user", content: "hi" }],
          stream: true,
          stream_options: { include_usage: true }
        })
      )
      const chunks: Array<OpenAIChunk> = []
      yield* Harness.call(async () => {
        for await (const chunk of stream) chunks.push(chunk as OpenAIChunk)
      })
      const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("")
      assert.strictEqual(text, "Hello wörld!")
      assert.strictEqual(chunks[0]!.choices[0]!.delta!.role, "assistant")
      const finish = chunks.find((c) => c.choices[0]?.finish_reason != null)
      assert.strictEqual(finish?.choices[0]?.finish_reason, "stop")
      const last = chunks[chunks.length - 1]!
      assert.deepStrictEqual(last.choices, [])
      assert.deepStrictEqual(last.usage, { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13 })
      assert.isTrue(chunks.every((c) => c.model === "d-a" && c.object === "chat.completion.chunk"))
    })
  )
})

describe("Gateway: embeddings", () => {
  it.live("answers floats and base64 in input order (the upstream answered out of order)", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const input = ["one", "two", "three"]
      const floats = yield* Harness.call(() =>
        gw.client().embeddings.create({ model: "d-a", input, encoding_format: "float" })
      )
      assert.deepStrictEqual(
        floats.data.map((d) => [d.index, d.embedding]),
        [
          [0, [0, 0.5, -1]],
          [1, [1, 1.5, -2]],
          [2, [2, 2.5, -3]]
        ]
      )
      assert.deepStrictEqual(floats.usage, { prompt_tokens: 9, total_tokens: 9 })
      // The official client asks for base64 by default and decodes it.
      const decoded = yield* Harness.call(() => gw.client().embeddings.create({ model: "d-a", input }))
      assert.deepStrictEqual(
        decoded.data.map((d) => d.embedding),
        [
          [0, 0.5, -1],
          [1, 1.5, -2],
          [2, 2.5, -3]
        ]
      )
      const [first] = yield* upstream.requests
      assert.deepStrictEqual((first!.json as { input: unknown }).input, input)
    })
  )
})

describe("Gateway: models and routing", () => {
  it.live("routes provider/model to that provider with that model, and lists domains and providers", () =>
    Effect.gen(function* () {
      const a = yield* Server.make(Up.openAi(["from a"]))
      const b = yield* Server.make(Up.openAi(["from b"]))
      const gw = yield* Harness.make({ upstreams: { a: a.url, b: b.url } })
      const answer = yield* Harness.call(() =>
        gw.client().chat.completions.create({ model: "b/custom-7b", messages: [{ role: "user", content: "hi" }] })
      )
      assert.strictEqual(answer.choices[0]!.message.content, "from b")
      assert.strictEqual(answer.model, "b/custom-7b")
      assert.strictEqual(((yield* b.requests)[0]!.json as { model: string }).model, "custom-7b")
      assert.strictEqual((yield* a.requests).length, 0)
      const listed = yield* Harness.call(() => gw.client().models.list())
      assert.deepStrictEqual(
        listed.data.map((m) => [m.id, m.owned_by]),
        [
          ["d-a", "orchestra"],
          ["d-b", "orchestra"],
          ["a/a-model", "a"],
          ["b/b-model", "b"]
        ]
      )
      const one = yield* Harness.call(() => gw.client().models.retrieve("a/a-model"))
      assert.strictEqual(one.id, "a/a-model")
      const missing = yield* Harness.failing(() => gw.client().models.retrieve("nope"))
      assert.strictEqual(missing.status, 404)
      // A provider model chat serves is found too, though no list names it; an unknown provider's is not.
      const custom = yield* Harness.call(() => gw.client().models.retrieve("b/custom-7b"))
      assert.deepStrictEqual([custom.id, custom.owned_by], ["b/custom-7b", "b"])
      const unknown = yield* Harness.failing(() => gw.client().models.retrieve("z/custom-7b"))
      assert.strictEqual(unknown.status, 404)
    })
  )

  it.live("providerModels: false routes domains only", () =>
    Effect.gen(function* () {
      const a = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: a.url }, gateway: { providerModels: false } })
      const refused = yield* Harness.failing(() =>
        gw.client().chat.completions.create({ model: "a/x", messages: [{ role: "user", content: "hi" }] })
      )
      assert.strictEqual(refused.status, 404)
      const listed = yield* Harness.call(() => gw.client().models.list())
      assert.deepStrictEqual(
        listed.data.map((m) => m.id),
        ["d-a"]
      )
    })
  )

  it.live("answers with provenance headers: the domain and provider that answered, and whether it fell back", () =>
    Effect.gen(function* () {
      const down = yield* Server.make((_, res) => Server.json(res, 503, { error: { message: "down" } }))
      const up = yield* Server.make(Up.openAi(["ok"]))
      const gw = yield* Harness.make({
        upstreams: { a: down.url, b: up.url },
        domains: [
          { name: "main", provider: "a", fallback: ["backup"] },
          { name: "backup", provider: "b" }
        ]
      })
      const response = yield* Effect.promise(() =>
        fetch(`${gw.url}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "main", messages: [{ role: "user", content: "hi" }] })
        })
      )
      assert.strictEqual(response.status, 200)
      assert.strictEqual(response.headers.get("x-orchestra-domain"), "backup")
      assert.strictEqual(response.headers.get("x-orchestra-provider"), "b")
      assert.strictEqual(response.headers.get("x-orchestra-fallback"), "true")
      assert.strictEqual(response.headers.get("x-orchestra-attempts"), "2")
    })
  )
  it.live(
    "embeddings answer with the provenance headers too: the domain and provider, and the upstream calls made",
    () =>
      Effect.gen(function* () {
        let calls = 0
        const flaky = yield* Server.make((request, res) => {
          calls += 1
          if (calls === 1) return Server.json(res, 503, { error: { message: "busy" } })
          return Up.openAi()(request, res)
        })
        const gw = yield* Harness.make({
          upstreams: { a: flaky.url },
          domains: [{ name: "vectors", provider: "a", retry: { maxAttempts: 2, initialDelay: 1 } }],
          gateway: { providerModels: true }
        })
        const ask = (model: string) =>
          Effect.promise(() =>
            fetch(`${gw.url}/v1/embeddings`, {
              method: "POST",
              headers: { "content-type": "application/json" },
              body: JSON.stringify({ model, input: ["hi"] })
            })
          )
        const byDomain = yield* ask("vectors")
        assert.strictEqual(byDomain.status, 200)
        assert.deepStrictEqual(
          ["domain", "provider", "attempts", "fallback", "source"].map((name) =>
            byDomain.headers.get(`x-orchestra-${name}`)
          ),
          ["vectors", "a", "2", "false", "provider"]
        )
        // `provider/model`, as a chat answer: the provider alone (no domain was asked).
        const byProvider = yield* ask("a/embed-model")
        assert.strictEqual(byProvider.status, 200)
        assert.deepStrictEqual(
          [byProvider.headers.get("x-orchestra-provider"), byProvider.headers.get("x-orchestra-domain")],
          ["a", null]
        )
      })
  )
})

interface OpenAIChunk {
  readonly object: string
  readonly model: string
  readonly choices: ReadonlyArray<{
    readonly delta?: { readonly content?: string | null; readonly role?: string }
    readonly finish_reason?: string | null
  }>
  readonly usage?: unknown
}

describe("Gateway: request bounds", () => {
  it.live("a tool's parameters or a response schema nested thousands deep is a 400 naming it, not a 500", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      // A key store, so that the budget estimate (which serializes tools and schemas) runs.
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        keys: Harness.keyStore({ "sk-client": { id: "c" } }).service
      })
      const deep = "[".repeat(5000) + "]".repeat(5000)
      const post = (extra: string) =>
        Effect.promise(async () => {
          const response = await fetch(`${gw.url}/v1/chat/completions`, {
            method: "POST",
            headers: { authorization: "Bearer sk-client", "content-type": "application/json" },
            body: `{"model":"d-a","messages":[{"role":"user","content":"hi"}],${extra}}`
          })
          return {
            status: response.status,
            body: (await response.json()) as { error: { param: string; message: string } }
          }
        })
      const schema = yield* post(
        `"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"a":${deep}}}}`
      )
      assert.strictEqual(schema.status, 400)
      assert.strictEqual(schema.body.error.param, "response_format.json_schema.schema")
      assert.include(schema.body.error.message, "more than 64 levels deep")
      const tools = yield* post(`"tools":[{"type":"function","function":{"name":"f","parameters":{"a":${deep}}}}]`)
      assert.strictEqual(tools.status, 400)
      assert.strictEqual(tools.body.error.param, "tools[0].function.parameters")
      assert.lengthOf(yield* upstream.requests, 0)
    })
  )
})
