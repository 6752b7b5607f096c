import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Layer, Stream } from "effect"
import { LanguageModel, type Prompt } from "effect/ai"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import * as Router from "../src/Router.js"
import * as Stats from "../src/Stats.js"

describe("Router.layerLanguageModel: a domain as an effect/ai LanguageModel", () => {
  const manager = Orchestra.layer({
    providers: {
      down: Mock.layer({ name: "down", random: { success: 0, failures: { Overloaded: 1 } } }),
      up: Mock.layer({ name: "up", respond: () => "answered by the backup" })
    },
    domains: [
      { name: "primary", provider: "down", fallback: ["backup"] },
      { name: "backup", provider: "up" }
    ]
  })

  it.effect("generateText runs through the domain's chain: the fallback answers and is counted", () =>
    Effect.gen(function* () {
      const text = yield* LanguageModel.generateText({ prompt: "hello" }).pipe(Effect.map((response) => response.text))
      assert.strictEqual(text, "answered by the backup")
      const stats = yield* Stats.snapshot({ domain: "backup" })
      assert.strictEqual(stats.fallbacks, 1)
    }).pipe(Effect.provide(Router.layerLanguageModel("primary").pipe(Layer.provideMerge(manager))))
  )

  it.effect("an effect/ai system message replaces the domain's system prompt; without one the domain's applies", () =>
    Effect.gen(function* () {
      const seen: Array<unknown> = []
      const layer = Orchestra.layer({
        providers: {
          echo: Mock.layer({
            name: "echo",
            respond: (request) => {
              seen.push({ system: request.system, roles: (request.messages ?? []).map((m) => m.role) })
              return "ok"
            }
          })
        },
        domains: [{ name: "support", provider: "echo", system: "DOMAIN SYSTEM" }]
      })
      const ask = (prompt: Prompt.RawInput) =>
        LanguageModel.generateText({ prompt }).pipe(
          Effect.provide(Router.layerLanguageModel("support").pipe(Layer.provideMerge(layer)))
        )
      yield* ask([
        { role: "system", content: "MY SYSTEM" },
        { role: "user", content: "hi" }
      ])
      yield* ask("hi")
      assert.deepStrictEqual(seen, [
        { system: undefined, roles: ["system", "user"] },
        { system: "DOMAIN SYSTEM", roles: ["user"] }
      ])
    })
  )

  it.effect("the domains are checked when the layer is built: an empty list or an unknown name names itself", () =>
    Effect.gen(function* () {
      const pathOf = (domains: string | ReadonlyArray<string>) =>
        Effect.flip(Layer.build(Router.layerLanguageModel(domains).pipe(Layer.provide(manager)))).pipe(
          Effect.map((error) => [error.path, error.message])
        )
      const [emptyPath] = yield* pathOf([])
      assert.strictEqual(emptyPath, "domains")
      assert.strictEqual((yield* pathOf(""))[0], "domains")
      const [unknownPath, message] = yield* pathOf(["primary", "nope"])
      assert.strictEqual(unknownPath, "domains[1]")
      assert.include(message, 'unknown domain "nope"')
      assert.strictEqual((yield* pathOf("nope"))[0], "domains")
      // A domain named twice would fail every call (the router refuses the list), so the layer does.
      const [repeatPath, repeat] = yield* pathOf(["primary", "backup", "primary"])
      assert.strictEqual(repeatPath, "domains[2]")
      assert.include(repeat, '"primary" is already in the list')
    }).pipe(Effect.scoped)
  )

  it.effect("a list of a huge length (the domains, one in the options) is refused naming it before it is read", () =>
    Effect.gen(function* () {
      let reads = 0
      // `new Array(2 ** 32 - 1)` costs nothing to make; the layer copied it, holding the event loop for minutes.
      const huge = () =>
        new Proxy([] as Array<never>, {
          get: (target, key) => {
            if (key === "length") return 2 ** 32 - 1
            if (typeof key === "string" && /^\d+$/.test(key)) reads++
            return Reflect.get(target, key)
          }
        })
      for (const [layer, path] of [
        [Router.layerLanguageModel(huge()), "domains"],
        [Router.layerLanguageModel("primary", { settings: { stop: huge() } } as never), "settings.stop"]
      ] as const) {
        const error = yield* Effect.flip(Layer.build(layer.pipe(Layer.provide(manager))))
        assert.deepStrictEqual(
          [error.path, error.message],
          [path, `invalid ${path}: expected at most 1000000 items, got 4294967295`]
        )
      }
      assert.strictEqual(reads, 0)
    }).pipe(Effect.scoped)
  )

  it.effect("the domains checked when the layer is built are the ones its calls use, whatever the array becomes", () =>
    Effect.gen(function* () {
      const domains = ["primary", "backup"]
      const context = yield* Layer.build(Router.layerLanguageModel(domains).pipe(Layer.provideMerge(manager)))
      // Changed after the check: its calls went to an unknown domain, or the domain named twice.
      domains.splice(0, 2, "nope", "backup", "backup")
      const text = yield* LanguageModel.generateText({ prompt: "hello" }).pipe(
        Effect.map((response) => response.text),
        Effect.provideContext(context)
      )
      assert.strictEqual(text, "answered by the backup")
      const stats = yield* Stats.snapshot({ domain: "backup" }).pipe(Effect.provideContext(context))
      assert.strictEqual(stats.fallbacks, 1)
    }).pipe(Effect.scoped)
  )

  it.effect("a misspelt option is an OptionError naming it when the layer is built, not a refusal of every call", () =>
    Effect.gen(function* () {
      const pathOf = (options: unknown) =>
        Effect.flip(Layer.build(Router.layerLanguageModel("primary", options as never).pipe(Layer.provide(manager))))
      const cases: ReadonlyArray<readonly [unknown, string]> = [
        [{ call: { timout: "1 second" } }, "call.timout"],
        [{ stream: { idleTimout: "1 second" } }, "stream.idleTimout"],
        [{ nmae: "x" }, "nmae"],
        [{ call: 5 }, "call"],
        [{ stream: null }, "stream"],
        [null, "options"]
      ]
      for (const [options, path] of cases) {
        const error = yield* pathOf(options)
        assert.strictEqual(error._tag, "OptionError", path)
        assert.strictEqual(error.path, path)
      }
      // A bad value would build and then fail every call: named when the layer is built too.
      const values: ReadonlyArray<readonly [unknown, string]> = [
        [{ call: { timeout: Number.NaN } }, "call.timeout"],
        [{ call: { timeout: null } }, "call.timeout"],
        [{ call: { cache: "no" } }, "call.cache"],
        [{ call: { onRetry: null } }, "call.onRetry"],
        [{ stream: { idleTimeout: -1 } }, "stream.idleTimeout"],
        [{ stream: { firstChunkTimeout: null } }, "stream.firstChunkTimeout"],
        [{ stream: { cache: 1 } }, "stream.cache"],
        [{ stream: { onRetry: "log" } }, "stream.onRetry"],
        // A stream's resume, which every stream would refuse.
        [{ stream: { resume: "yes" } }, "stream.resume"],
        [{ stream: { resume: null } }, "stream.resume"],
        [{ stream: { resume: { maxResumes: 0 } } }, "stream.resume.maxResumes"],
        [{ stream: { resume: { minOverlap: 1.5 } } }, "stream.resume.minOverlap"],
        [{ stream: { resume: { instruction: 5 } } }, "stream.resume.instruction"],
        [{ stream: { resume: { maxResume: 2 } } }, "stream.resume.maxResume"]
      ]
      for (const [options, path] of values) {
        const error = yield* pathOf(options)
        assert.strictEqual(error._tag === "OptionError" && error.path, path, JSON.stringify(options))
      }
      // The router's own keys are accepted.
      yield* Layer.build(
        Router.layerLanguageModel("primary", {
          name: "support",
          call: { timeout: "1 second", allowStale: true },
          stream: { idleTimeout: "1 second", resume: { maxResumes: 1 } }
        } as never).pipe(Layer.provide(manager))
      )
    }).pipe(Effect.scoped)
  )

  it.effect(
    "options whose getter throws are an OptionError naming the field when the layer is built, not a defect",
    () =>
      Effect.gen(function* () {
        const throwing = (field: string) =>
          Object.defineProperty({}, field, {
            enumerable: true,
            get() {
              throw new Error(`${field} getter`)
            }
          })
        const cases: ReadonlyArray<readonly [unknown, string]> = [
          [throwing("call"), "call"],
          [throwing("name"), "name"],
          [{ call: throwing("timeout") }, "call.timeout"],
          [{ stream: throwing("idleTimeout") }, "stream.idleTimeout"]
        ]
        for (const [options, path] of cases) {
          const exit = yield* Effect.exit(
            Layer.build(Router.layerLanguageModel("primary", options as never).pipe(Layer.provide(manager)))
          )
          const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : undefined
          assert.isTrue(error?._tag === "Some", `${path}: a typed failure, not a defect`)
          const value = error?._tag === "Some" ? error.value : undefined
          assert.deepStrictEqual([value?._tag, value?.path], ["OptionError", path])
          assert.include(value?.message, "getter")
        }
      }).pipe(Effect.scoped)
  )

  it.effect("requestLimits (the name EffectAi.LanguageModelOptions gives the bounds) is accepted and holds", () =>
    Effect.gen(function* () {
      const layer = Router.layerLanguageModel("backup", { requestLimits: { maxInputChars: 10 } }).pipe(
        Layer.provideMerge(manager)
      )
      const error = yield* LanguageModel.generateText({ prompt: "a prompt longer than ten characters" }).pipe(
        Effect.provide(layer),
        Effect.flip
      )
      assert.strictEqual(error._tag === "AiError" && error.reason._tag, "InvalidRequestError")
      const text = yield* LanguageModel.generateText({ prompt: "short" }).pipe(
        Effect.provide(layer),
        Effect.map((response) => response.text)
      )
      assert.strictEqual(text, "answered by the backup")
    })
  )

  it.effect("streamText streams through the same chain", () =>
    Effect.gen(function* () {
      const parts = yield* Stream.runCollect(LanguageModel.streamText({ prompt: "hello" }))
      const text = parts.map((p) => (p.type === "text-delta" ? p.delta : "")).join("")
      assert.strictEqual(text, "answered by the backup")
    }).pipe(Effect.provide(Router.layerLanguageModel("primary").pipe(Layer.provideMerge(manager))))
  )
})
