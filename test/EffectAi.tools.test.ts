import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Schema, Stream } from "effect"
import { LanguageModel, type Response, Tool, Toolkit } from "effect/ai"
import type * as Model from "../src/Model.js"
import * as EffectAi from "../src/Model/EffectAi.js"
import * as Mock from "../src/Model/Mock.js"

const Lookup = Tool.make("Lookup", {
  description: "Weather by city",
  parameters: Schema.Struct({ city: Schema.String }),
  success: Schema.String
})

describe("EffectAi: tools across the bridge", () => {
  it.effect("Tool.Strict reaches the target as the tool's strict, and a strict tool reaches effect/ai annotated", () =>
    Effect.gen(function* () {
      // effect/ai -> target
      const { provider, control } = yield* Mock.make({
        script: [Mock.Outcome.succeed("ok"), Mock.Outcome.succeed("ok"), Mock.Outcome.succeed("ok")]
      })
      const ask = (tool: typeof Lookup) => {
        const toolkit = Toolkit.make(tool)
        return LanguageModel.generateText({ prompt: "x", toolkit, disableToolCallResolution: true }).pipe(
          Effect.provide(toolkit.toLayer({ Lookup: () => Effect.succeed("sunny") })),
          Effect.provide(EffectAi.layerLanguageModel(provider))
        )
      }
      const strictOf = Effect.map(control.requests, (log) => {
        const request = log[log.length - 1]?.request as Model.GenerateRequest | undefined
        return request?.tools?.map((tool) => tool.strict)
      })
      yield* ask(Lookup.annotate(Tool.Strict, true))
      assert.deepStrictEqual(yield* strictOf, [true])
      yield* ask(Lookup.annotate(Tool.Strict, false))
      assert.deepStrictEqual(yield* strictOf, [false])
      yield* ask(Lookup)
      assert.deepStrictEqual(yield* strictOf, [undefined])

      // target -> effect/ai
      const seen: Array<LanguageModel.ProviderOptions> = []
      const lm = yield* LanguageModel.make({
        generateText: (options) =>
          Effect.sync(() => {
            seen.push(options)
            return [
              { type: "text", text: "ok" },
              { type: "finish", reason: "stop", usage: { inputTokens: {}, outputTokens: {} } }
            ] satisfies Array<Response.PartEncoded>
          }),
        streamText: () => Stream.empty
      })
      const bridged = yield* EffectAi.make().pipe(Effect.provide(Layer.succeed(LanguageModel.LanguageModel, lm)))
      yield* bridged.generate({
        prompt: "x",
        tools: [{ name: "strict_one", strict: true }, { name: "loose_one", strict: false }, { name: "unsaid" }]
      })
      assert.deepStrictEqual(
        seen[0]?.tools.map((tool) => [tool.name, Tool.getStrictMode(tool)]),
        [
          ["strict_one", true],
          ["loose_one", false],
          ["unsaid", undefined]
        ]
      )
    })
  )

  it.effect("a Schema.Class (an identified schema) reaches the target as an object schema, not a root $ref", () =>
    Effect.gen(function* () {
      class Person extends Schema.Class<Person>("Person")({ name: Schema.String, age: Schema.Int }) {}
      class Args extends Schema.Class<Args>("Args")({ city: Schema.String }) {}
      const Find = Tool.make("Find", { parameters: Args, success: Schema.String })
      const { provider, control } = yield* Mock.make({
        script: [Mock.Outcome.succeed('{"name":"Ada","age":36}'), Mock.Outcome.succeed("ok")]
      })
      const layer = EffectAi.layerLanguageModel(provider)
      const last = Effect.map(control.requests, (log) => log[log.length - 1]?.request as Model.GenerateRequest)
      // OpenAI's structured outputs and function parameters take an object at the root, never a $ref.
      const person = yield* LanguageModel.generateObject({ prompt: "who?", schema: Person }).pipe(Effect.provide(layer))
      assert.deepStrictEqual([person.value.name, person.value.age], ["Ada", 36])
      const format = (yield* last).responseFormat
      const schema = format?.type === "json_schema" ? format.schema : {}
      assert.strictEqual(schema["type"], "object")
      assert.isUndefined(schema["$ref"])
      assert.deepStrictEqual(Object.keys(schema["properties"] as object), ["name", "age"])
      const toolkit = Toolkit.make(Find)
      yield* LanguageModel.generateText({ prompt: "x", toolkit, disableToolCallResolution: true }).pipe(
        Effect.provide(toolkit.toLayer({ Find: () => Effect.succeed("found") })),
        Effect.provide(layer)
      )
      const parameters = (yield* last).tools?.[0]?.parameters ?? {}
      assert.strictEqual(parameters["type"], "object")
      assert.isUndefined(parameters["$ref"])
      assert.deepStrictEqual(Object.keys(parameters["properties"] as object), ["city"])
    })
  )

  it.effect(
    "generateObject's name (the schema's identifier) is made one OpenAI takes: a namespaced class still works",
    () =>
      Effect.gen(function* () {
        class User extends Schema.Class<User>("@app/User")({ name: Schema.String }) {}
        const { provider, control } = yield* Mock.make({ respond: () => '{"name":"Ada"}' })
        const last = Effect.map(control.requests, (log) => log[log.length - 1]?.request as Model.GenerateRequest)
        const nameOf = Effect.map(last, (request) =>
          request.responseFormat?.type === "json_schema" ? request.responseFormat.name : undefined
        )
        const layer = EffectAi.layerLanguageModel(provider)
        const user = yield* LanguageModel.generateObject({ prompt: "who?", schema: User }).pipe(Effect.provide(layer))
        assert.strictEqual(user.value.name, "Ada")
        assert.strictEqual(yield* nameOf, "_app_User")
        yield* LanguageModel.generateObject({ prompt: "who?", schema: User, objectName: "x".repeat(80) }).pipe(
          Effect.provide(layer)
        )
        assert.strictEqual(yield* nameOf, "x".repeat(64))
        yield* LanguageModel.generateObject({ prompt: "who?", schema: User, objectName: "user_record" }).pipe(
          Effect.provide(layer)
        )
        assert.strictEqual(yield* nameOf, "user_record")
      })
  )
})
