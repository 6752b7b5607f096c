import { assert, describe, it } from "@effect/vitest"
import { ModelError } from "../src/AiError.js"
import * as EffectAi from "../src/Model/EffectAi.js"

const unauthorized = (status: number | undefined) =>
  new ModelError({ reason: "Unauthorized", message: "denied", provider: "openai", model: "gpt", status })

describe("EffectAi.toAiError: an account's refusal as effect/ai says it", () => {
  it("a quota exhausted (402, or OpenAI's 429 insufficient_quota) is a QuotaExhaustedError; a refused key stays one", () => {
    for (const status of [402, 429]) {
      const error = EffectAi.toAiError(unauthorized(status), "generateText")
      assert.strictEqual(error.reason._tag, "QuotaExhaustedError", `${status}`)
      assert.isFalse(error.isRetryable)
      assert.strictEqual(
        error.reason._tag === "QuotaExhaustedError" ? error.reason.http?.response?.status : undefined,
        status
      )
      // Back across the bridge, it is the error it was made from.
      const back = EffectAi.fromAiError(error, { provider: "openai", model: "gpt" })
      assert.deepStrictEqual([back.reason, back.status], ["Unauthorized", status])
    }
    for (const [status, kind] of [
      [401, "InvalidKey"],
      [403, "InsufficientPermissions"],
      [undefined, "Unknown"]
    ] as const) {
      const error = EffectAi.toAiError(unauthorized(status), "generateText")
      assert.deepStrictEqual(
        [error.reason._tag, error.reason._tag === "AuthenticationError" ? error.reason.kind : undefined],
        ["AuthenticationError", kind]
      )
    }
  })
})
