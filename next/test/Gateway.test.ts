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

interface OpenAIChunk {
  readonly object: string
  readonly model: string
  readonly choices: ReadonlyArray<{
    readonly delta?: { readonly content?: string | null; readonly role?: string }
    readonly finish_reason?: string | null
  }>
  readonly usage?: unknown
}
