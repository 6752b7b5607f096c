import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Layer, Scope } from "effect"
import * as Domain from "../src/Domain.js"
import { ModelProvider } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { Router } from "../src/Router.js"
import { makeOrchestra } from "./utils/orchestra.js"

const good = { name: "legal", provider: "main", system: "You are a careful lawyer.", timeout: "20 seconds" }

describe("Domain.fromConfig", () => {
  it.effect("decodes durations and fills the retry policy's defaults", () =>
    Effect.gen(function* () {
      const domains = yield* Domain.fromConfig([good, { name: "fast", provider: "main", timeout: 1500, retry: {} }])
      assert.deepStrictEqual(
        domains.map((d) => d.name),
        ["legal", "fast"]
      )
      assert.strictEqual(Duration.toMillis(domains[0]!.timeout!), 20_000)
      assert.strictEqual(Duration.toMillis(domains[1]!.timeout!), 1500)
      assert.strictEqual(domains[1]!.retry?.maxAttempts, 3)
    })
  )

  it.effect("a bad field fails with DomainConfigError naming its path", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        Domain.fromConfig([good, { name: "bad", provider: "main", retry: { maxAttempts: 0 } }])
      )
      assert.strictEqual(error._tag, "DomainConfigError")
      assert.strictEqual(error.path, "[1].retry.maxAttempts")
      assert.include(error.message, "[1].retry.maxAttempts")
    })
  )

  it.effect("names the path of other kinds of mistakes", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [unknown, string]> = [
        [[{ provider: "main" }], "[0].name"],
        [[{ name: "  ", provider: "main" }], "[0].name"],
        [[good, good, { name: "x", provider: "main", timeout: "soon" }], "[2].timeout"],
        [[{ name: "x", provider: "main", temperature: 3 }], "[0].temperature"],
        [[{ name: "x", provider: "main", retry: { jitter: 2 } }], "[0].retry.jitter"],
        [[{ name: "x", provider: "main", sytem: "typo" }], "[0].sytem"],
        [{ name: "not a list" }, "(root)"]
      ]
      for (const [input, path] of cases) {
        const error = yield* Effect.flip(Domain.fromConfig(input))
        assert.strictEqual(error.path, path, JSON.stringify(input))
      }
    })
  )

  it.effect("layerDomainsFromConfig fails to build on a bad config", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        Effect.scoped(Layer.build(Domain.layerDomainsFromConfig([{ name: "x", provider: 1 }])))
      )
      assert.strictEqual(error.path, "[0].provider")
    })
  )
})

describe("predefined domains", () => {
  it("support, technical and finance exist with their own system prompts and policies", () => {
    const domains = Domain.predefined("main")
    assert.deepStrictEqual(
      domains.map((d) => d.name),
      ["support", "technical", "finance"]
    )
    for (const d of domains) {
      assert.strictEqual(d.provider, "main")
      assert.isAbove(d.system?.length ?? 0, 20)
      assert.isDefined(d.retry)
    }
    assert.strictEqual(new Set(domains.map((d) => d.system)).size, 3)
  })

  it.effect("a manager without domains serves the predefined ones on its default provider", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const { provider, control } = yield* Mock.make({ name: "predefined-mock" })
      const context = yield* Layer.buildWithScope(
        Orchestra.layer({ providers: { main: Layer.succeed(ModelProvider, provider) } }),
        scope
      )
      const router = Context.get(context, Router)
      for (const name of ["support", "technical", "finance"]) {
        const answer = yield* router.execute({ prompt: "hi" }, name)
        assert.strictEqual(answer.domain, name)
      }
      const requests = yield* control.requests
      assert.include((requests[0] as { system?: string }).system, "customer support")
      assert.include((requests[2] as { system?: string }).system, "financial analyst")
      assert.strictEqual((requests[2] as { temperature?: number }).temperature, 0.2)
      yield* Scope.close(scope, Exit.void)
    })
  )

  it.effect("extraDomains are added to the predefined ones", () =>
    Effect.gen(function* () {
      const { router } = yield* makeOrchestra(
        { a: {} },
        { domains: undefined, extraDomains: [{ name: "legal", provider: "a", system: "lawyer" }] }
      )
      assert.strictEqual((yield* router.execute({ prompt: "q" }, "support")).domain, "support")
      assert.strictEqual((yield* router.execute({ prompt: "q" }, "legal")).domain, "legal")
    })
  )
})

describe("Domain.applyTo", () => {
  it("adds the domain's system prompt, model and sampling unless the request sets them", () => {
    const domain: Domain.Domain = { name: "d", provider: "p", system: "S", model: "m", temperature: 0.1, maxTokens: 9 }
    assert.deepStrictEqual(Domain.applyTo(domain, { prompt: "q" }), {
      prompt: "q",
      system: "S",
      model: "m",
      temperature: 0.1,
      maxTokens: 9
    })
    assert.deepStrictEqual(
      Domain.applyTo(domain, { prompt: "q", system: "own", model: "x", temperature: 1, maxTokens: 1 }),
      { prompt: "q", system: "own", model: "x", temperature: 1, maxTokens: 1 }
    )
  })
})
