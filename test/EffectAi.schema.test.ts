import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Stream } from "effect"
import { AiError as Ai, LanguageModel } from "effect/ai"
import type { ModelError } from "../src/AiError.js"
import type * as Model from "../src/Model.js"
import * as EffectAi from "../src/Model/EffectAi.js"

// An effect/ai provider package that cannot represent a schema (Anthropic and unions, OpenAI's
// strict mode and open objects) fails the call with an UnsupportedSchemaError naming no field.
const refusingSchemas = Effect.gen(function* () {
  const refusal = Ai.make({
    module: "AnthropicLanguageModel",
    method: "generateText",
    reason: new Ai.UnsupportedSchemaError({ description: "Unions are not supported" })
  })
  const service = yield* LanguageModel.make({
    generateText: () => Effect.fail(refusal),
    streamText: () => Stream.fail(refusal)
  })
  return Layer.succeed(LanguageModel.LanguageModel, service)
})

const failure = (provider: Model.Service, request: Model.GenerateRequest) =>
  Effect.all([Effect.flip(provider.generate(request)), Effect.flip(Stream.runDrain(provider.stream(request)))]).pipe(
    Effect.map((errors): ReadonlyArray<Partial<ModelError>> => errors.map((error) => error as Partial<ModelError>))
  )

describe("EffectAi.make: a schema the effect/ai provider cannot represent", () => {
  it.effect(
    "a tool's parameters it refuses are InvalidRequest naming tools, not responseFormat (generate and stream)",
    () =>
      Effect.gen(function* () {
        const withTools = yield* EffectAi.make().pipe(Effect.provide(yield* refusingSchemas))
        const request: Model.GenerateRequest = {
          prompt: "q",
          tools: [{ name: "pick", parameters: { type: "object", properties: { v: { anyOf: [{ type: "string" }] } } } }]
        }
        for (const error of yield* failure(withTools, request)) {
          assert.strictEqual(error._tag, "ModelError")
          assert.strictEqual(error.reason, "InvalidRequest")
          assert.strictEqual(error.field, "tools")
        }
        // Sent with `context`, a JSON response format is the schema it refused when there are no tools.
        const withFormat = yield* EffectAi.make({ context: () => undefined as never }).pipe(
          Effect.provide(yield* refusingSchemas)
        )
        const format: Model.GenerateRequest = {
          prompt: "q",
          responseFormat: { type: "json_schema", name: "answer", schema: { type: "object", properties: {} } }
        }
        for (const error of yield* failure(withFormat, format)) {
          assert.strictEqual(error.field, "responseFormat")
        }
      })
  )
})
