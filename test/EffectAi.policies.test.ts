import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Metric, Scope, Stream } from "effect"
import { type AiError as Ai, LanguageModel, type Response } from "effect/ai"
import { TestClock } from "effect/testing"
import { ModelProvider } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import * as Router from "../src/Router.js"

/**
 * A domain over one scripted mock, offered as an effect/ai LanguageModel; the mock's control
 * counts what reached the provider.
 */
const languageModelOver = (
  mock: Mock.Options,
  options: Pick<Orchestra.Options<Record<string, never>>, "breakers" | "rateLimits" | "cache"> = {},
  layerOptions: Parameters<typeof Router.layerLanguageModel>[1] = {}
) =>
  Effect.gen(function* () {
    const made = yield* Mock.make({ name: "eai-main", ...mock })
    const scope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    const context = yield* Layer.buildWithScope(
      Router.layerLanguageModel("eai", layerOptions).pipe(
        Layer.provide(
          Orchestra.layer({
            ...options,
            providers: { "eai-main": Layer.succeed(ModelProvider, made.provider) },
            domains: [{ name: "eai", provider: "eai-main" }]
          })
        )
      ),
      scope
    ).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
    const lm = Context.get(context, LanguageModel.LanguageModel)
    return {
      control: made.control,
      generate: (prompt: string) =>
        LanguageModel.generateText({ prompt }).pipe(Effect.provideService(LanguageModel.LanguageModel, lm)),
      stream: (prompt: string) =>
        LanguageModel.streamText({ prompt }).pipe(
          Stream.provideService(LanguageModel.LanguageModel, lm),
          Stream.runCollect,
          Effect.map((parts) => textOf(parts))
        ),
      streamParts: (prompt: string) =>
        LanguageModel.streamText({ prompt }).pipe(Stream.provideService(LanguageModel.LanguageModel, lm))
    }
  })

const textOf = (parts: ReadonlyArray<Response.StreamPart<{}>>): string =>
  parts.map((part) => (part.type === "text-delta" ? part.delta : "")).join("")

const ours = (error: Ai.AiError): Record<string, unknown> =>
  (error.reason as { readonly metadata?: Record<string, Record<string, unknown>> }).metadata?.["effect-orchestra"] ?? {}

describe("Router.layerLanguageModel: the domain's policies apply to generateText and streamText", () => {
  it.effect("breaker: after failMax failures the circuit opens; the provider is not called again (both)", () =>
    Effect.gen(function* () {
      for (const entry of ["generate", "stream"] as const) {
        const model = yield* languageModelOver(
          { script: [Mock.Outcome.fail("Overloaded")] },
          { breakers: { failMax: 1, resetTimeout: "1 minute" } }
        )
        const call = () =>
          entry === "generate" ? Effect.asVoid(model.generate("q")) : Effect.asVoid(model.stream("q"))
        const first = yield* Effect.flip(call())
        assert.strictEqual(first.reason._tag, "InternalProviderError", entry)
        const second = yield* Effect.flip(call())
        assert.strictEqual(ours(second)["error"], "CircuitOpenError", entry)
        assert.strictEqual(yield* model.control.calls, 1, entry)
      }
    }).pipe(Effect.scoped)
  )

  it.effect("rate limit: a call past the provider's limit is a RateLimitError and never reaches it (both)", () =>
    Effect.gen(function* () {
      for (const entry of ["generate", "stream"] as const) {
        const model = yield* languageModelOver(
          {},
          { rateLimits: { providers: { "eai-main": { requestsPerMinute: 1 } }, maxWait: 0 }, breakers: false }
        )
        const call = () =>
          entry === "generate" ? Effect.asVoid(model.generate("q")) : Effect.asVoid(model.stream("q"))
        yield* call()
        const limited = yield* Effect.flip(call())
        assert.strictEqual(limited.reason._tag, "RateLimitError", entry)
        assert.strictEqual(limited.isRetryable, true, entry)
        assert.strictEqual(yield* model.control.calls, 1, entry)
      }
    }).pipe(Effect.scoped)
  )

  it.effect("cache: the same generateText is answered from the cache, the provider called once", () =>
    Effect.gen(function* () {
      const model = yield* languageModelOver({}, { cache: {} })
      const first = yield* model.generate("cached?")
      const second = yield* model.generate("cached?")
      assert.strictEqual(second.text, first.text)
      assert.strictEqual(yield* model.control.calls, 1)
      yield* model.generate("another")
      assert.strictEqual(yield* model.control.calls, 2)
    }).pipe(Effect.scoped)
  )

  it.effect("deadline: a generateText that hangs fails at the call timeout with a retryable AiError", () =>
    Effect.gen(function* () {
      const model = yield* languageModelOver(
        { script: [Mock.Outcome.hang()] },
        { breakers: false },
        { call: { timeout: "5 seconds" } }
      )
      const fiber = yield* Effect.forkChild(Effect.flip(model.generate("q")))
      yield* TestClock.adjust("6 seconds")
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(ours(error)["error"], "TimeoutError")
      assert.strictEqual(yield* model.control.interrupted, 1)
    }).pipe(Effect.scoped)
  )

  it.effect("deadline: a streamText whose provider stalls fails at its idle timeout; the provider is interrupted", () =>
    Effect.gen(function* () {
      const model = yield* languageModelOver(
        { script: [Mock.Outcome.hang({ afterChunks: 1 })] },
        { breakers: false },
        { stream: { idleTimeout: "5 seconds" } }
      )
      const fiber = yield* Effect.forkChild(Effect.flip(model.stream("q")))
      yield* TestClock.adjust("6 seconds")
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(ours(error)["error"], "TimeoutError")
      assert.strictEqual(yield* model.control.inFlight, 0)
    }).pipe(Effect.scoped)
  )

  it.effect("a streamText consumer that stops reading interrupts the provider's stream", () =>
    Effect.gen(function* () {
      const model = yield* languageModelOver({ chunkDelay: "1 second" }, { breakers: false })
      const fiber = yield* Effect.forkChild(
        model.streamParts("a long answer to read").pipe(
          Stream.filter((part) => part.type === "text-delta"),
          Stream.take(1),
          Stream.runCollect
        )
      )
      yield* TestClock.adjust("1 minute")
      const parts = yield* Fiber.join(fiber)
      assert.strictEqual(parts.length, 1)
      assert.strictEqual(yield* model.control.inFlight, 0)
      assert.strictEqual(yield* model.control.interrupted, 1)
    }).pipe(Effect.scoped)
  )
})
