/**
 * Wire compatibility with the official client: what it sends reaches the upstream as
 * OpenAI would read it, and what the upstream answers reaches the client, nothing dropped.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import type OpenAI from "openai"
import * as Server from "../utils/httpServer.js"
import * as Harness from "./harness.js"
import * as Up from "./upstream.js"

const hi = [{ role: "user" as const, content: "hi" }]

describe("Gateway: what the client sends", () => {
  it.live("a strict tool stays strict upstream", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const tools: Array<OpenAI.ChatCompletionTool> = [
        {
          type: "function",
          function: {
            name: "weather",
            parameters: {
              type: "object",
              properties: { city: { type: "string" } },
              required: ["city"],
              additionalProperties: false
            },
            strict: true
          }
        }
      ]
      yield* Harness.call(() => gw.client().chat.completions.create({ model: "d-a", messages: hi, tools }))
      const [sent] = yield* upstream.requests
      assert.deepStrictEqual((sent!.json as { tools: unknown }).tools, tools)
    })
  )
})
