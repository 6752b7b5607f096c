import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Layer, Result } from "effect"
import * as Domain from "../src/Domain.js"
import * as HttpAgent from "../src/HttpAgent.js"
import * as Metrics from "../src/Metrics.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import * as Policy from "../src/Policy.js"
import { Router } from "../src/Router.js"

const good = { name: "legal", provider: "main", system: "You are a careful lawyer.", timeout: "20 seconds" }

describe("Domain.fromConfig", () => {
  it.effect("decodes durations and fills the retry policy's defaults", () =>
    Effect.gen(function* () {
      const domains = yield* Domain.fromConfig([
        good,
        { name: "fast", provider: "main", timeout: 1500, totalTimeout: "1 minute", retry: {} }
      ])
      assert.deepStrictEqual(
        domains.map((d) => d.name),
        ["legal", "fast"]
      )
      assert.strictEqual(Duration.toMillis(domains[0]!.timeout!), 20_000)
      assert.strictEqual(Duration.toMillis(domains[1]!.timeout!), 1500)
      assert.strictEqual(Duration.toMillis(domains[1]!.totalTimeout!), 60_000)
      assert.strictEqual(domains[1]!.retry?.maxAttempts, 3)
      assert.strictEqual(Duration.toMillis(domains[1]!.retry!.initialDelay), 200)
    })
  )

  it.effect("a bad field fails with an OptionError naming its path", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        Domain.fromConfig([good, { name: "bad", provider: "main", retry: { maxAttempts: 0 } }])
      )
      assert.strictEqual(error._tag, "OptionError")
      assert.strictEqual(error.path, "domains[1].retry.maxAttempts")
      assert.include(error.message, "domains[1].retry.maxAttempts")
    })
  )

  it.effect("a value out of its range is quoted, as every other option's is", () =>
    Effect.gen(function* () {
      // It said "expected a value between 1 and 100" alone, where poolSize: 0 in the same config
      // file said "expected a value of at least 1, got 0".
      const attempts = yield* Effect.flip(
        Domain.fromConfig([{ name: "bad", provider: "main", retry: { maxAttempts: 0 } }])
      )
      assert.strictEqual(
        attempts.message,
        "invalid domains[0].retry.maxAttempts: expected a value between 1 and 100, got 0"
      )
      const temperature = yield* Effect.flip(Domain.fromConfig([{ name: "hot", provider: "main", temperature: 3 }]))
      assert.strictEqual(temperature.message, "invalid domains[0].temperature: expected a value between 0 and 2, got 3")
      // A misspelt field is an unknown field, as in a domain's retry and every other option (it said
      // "Expected no excess property", and the config file "policies.executor.retry.maxAtempts: expected
      // no excess property").
      const typo = Policy.decodeRetry({ maxAtempts: 2 }, "executor.retry")
      const pasted = Policy.decodeRetry({ apiKey: "sk-pasted-by-mistake" })
      assert.deepStrictEqual(Result.isFailure(pasted) && pasted.failure, {
        path: "retry.apiKey",
        message:
          "unknown field (expected one of maxAttempts, initialDelay, factor, maxDelay, jitter, respectRetryAfter, maxRetryAfter)"
      })
      assert.deepStrictEqual(Result.isFailure(typo) && typo.failure, {
        path: "executor.retry.maxAtempts",
        message: "unknown field (did you mean maxAttempts?)"
      })
      const retry = Policy.decodeRetry({ jitter: 5 })
      assert.deepStrictEqual(Result.isFailure(retry) && retry.failure, {
        path: "retry.jitter",
        message: "Expected a value between 0 and 1, got 5"
      })
    })
  )

  it.effect("names the path of every other kind of mistake", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [unknown, string]> = [
        [[{ provider: "main" }], "domains[0].name"],
        [[{ name: "  ", provider: "main" }], "domains[0].name"],
        [[{ name: "x", provider: 1 }], "domains[0].provider"],
        [
          [good, { name: "y", provider: "main" }, { name: "x", provider: "main", timeout: "soon" }],
          "domains[2].timeout"
        ],
        [[{ name: "x", provider: "main", timeout: -5 }], "domains[0].timeout"],
        [[{ name: "x", provider: "main", timeout: Number.NaN }], "domains[0].timeout"],
        [[{ name: "x", provider: "main", timeout: 0 }], "domains[0].timeout"],
        [[{ name: "x", provider: "main", totalTimeout: "0 seconds" }], "domains[0].totalTimeout"],
        // A zero hedge delay starts every fallback at once: each call costs the whole chain (router.hedge refuses 0 too).
        [
          [
            { name: "x", provider: "main", fallback: ["y"], hedgeAfter: 0 },
            { name: "y", provider: "main" }
          ],
          "domains[0].hedgeAfter"
        ],
        // A hedge starts the next domain of the fallback: without one, hedgeAfter did nothing, silently.
        [[{ name: "x", provider: "main", hedgeAfter: "200 millis" }], "domains[0].hedgeAfter"],
        [[{ name: "x", provider: "main", fallback: [], hedgeAfter: "200 millis" }], "domains[0].hedgeAfter"],
        [[{ name: "x", provider: "main", temperature: 3 }], "domains[0].temperature"],
        [[{ name: "x", provider: "main", maxTokens: 1.5 }], "domains[0].maxTokens"],
        [[{ name: "x", provider: "main", retry: { jitter: 2 } }], "domains[0].retry.jitter"],
        [[{ name: "x", provider: "main", sytem: "typo" }], "domains[0].sytem"],
        [[good, good], "domains[1].name"],
        // The `domain` of calls made without one: a domain of that name would share their series.
        [[good, { name: "none", provider: "main" }], "domains[1].name"],
        // The domains the pipelines' steps and the HTTP agents are counted under: figures would mix with theirs.
        [[good, { name: "pipeline", provider: "main" }], "domains[1].name"],
        [[{ name: "agent", provider: "main" }], "domains[0].name"],
        [[{ name: "x", provider: "main", fallback: ["nowhere"] }], "domains[0].fallback[0]"],
        [[{ name: "x", provider: "main", fallback: ["x"] }], "domains[0].fallback[0]"],
        // A domain named twice would be called twice in one chain.
        [
          [
            { name: "x", provider: "main", fallback: ["y", "y"] },
            { name: "y", provider: "main" }
          ],
          "domains[0].fallback[1]"
        ],
        [[null], "domains[0]"],
        [{ name: "not a list" }, "domains"]
      ]
      for (const [input, path] of cases) {
        const error = yield* Effect.flip(Domain.fromConfig(input))
        assert.strictEqual(error.path, path, JSON.stringify(input))
      }
    })
  )

  it.effect("domains built in code (decoded durations and policies) pass the same checks", () =>
    Effect.gen(function* () {
      const [built] = yield* Domain.fromConfig([good])
      const again = yield* Domain.fromConfig([built, { ...built!, name: "again", timeout: Duration.seconds(5) }])
      assert.strictEqual(Duration.toMillis(again[1]!.timeout!), 5000)
    })
  )

  it.effect("extra domains falling back to predefined ones name them in fallbackTo, and the manager takes them", () =>
    Effect.gen(function* () {
      const config: unknown = [good, { name: "triage", provider: "main", fallback: ["support"] }]
      const alone = yield* Effect.flip(Domain.fromConfig(config))
      assert.strictEqual(alone.path, "domains[1].fallback[0]")
      const domains = yield* Domain.fromConfig(config, { fallbackTo: Domain.predefinedNames })
      assert.deepStrictEqual(domains[1]!.fallback, ["support"])
      const named = yield* Effect.flip(
        Domain.fromConfig([{ name: "x", provider: "main", fallback: ["nowhere"] }], {
          path: "extraDomains",
          fallbackTo: Domain.predefinedNames
        })
      )
      assert.strictEqual(named.path, "extraDomains[0].fallback[0]")
      const answer = yield* Effect.flatMap(Router, (router) => router.execute({ prompt: "q" }, "triage")).pipe(
        Effect.provide(Orchestra.layer({ providers: { main: Mock.layer({ name: "main" }) }, extraDomains: domains }))
      )
      assert.strictEqual(answer.domain, "triage")
    })
  )

  it.effect("the names of the pipelines' and agents' series are refused, saying why", () =>
    Effect.gen(function* () {
      for (const name of [Metrics.pipelineDomain, HttpAgent.statsDomain, Metrics.agentDomain]) {
        const error = yield* Effect.flip(Domain.fromConfig([{ name, provider: "main" }]))
        assert.strictEqual(error._tag, "OptionError")
        assert.strictEqual(error.path, "domains[0].name")
        assert.include(error.message, `"${name}" is reserved`)
      }
    })
  )

  it.effect(
    "options that are neither a path nor an object are an OptionError naming options; null threw a TypeError",
    () =>
      Effect.gen(function* () {
        for (const options of [null, 5, ["domains"]]) {
          const error = yield* Effect.flip(Domain.fromConfig([good], options as never))
          assert.strictEqual(error._tag, "OptionError")
          assert.strictEqual(error.path, "options")
        }
        assert.strictEqual((yield* Domain.fromConfig([good], "extra")).length, 1)
        assert.strictEqual((yield* Domain.fromConfig([good], { path: null, fallbackTo: null } as never)).length, 1)
      })
  )

  it.effect(
    "the options' fields are checked: a string fallbackTo matched parts of names, a misspelt key was ignored",
    () =>
      Effect.gen(function* () {
        const triage = { name: "triage", provider: "main", fallback: ["sup"] }
        const cases: ReadonlyArray<readonly [unknown, string]> = [
          [{ fallbackTo: "support" }, "options.fallbackTo"],
          [{ fallbackTo: ["support", 5] }, "options.fallbackTo[1]"],
          [{ path: 5 }, "options.path"],
          [{ path: "" }, "options.path"],
          [{ pth: "extraDomains" }, "options.pth"]
        ]
        for (const [options, path] of cases) {
          const error = yield* Effect.flip(Domain.fromConfig([triage], options as never))
          assert.strictEqual(error.path, path, JSON.stringify(options))
        }
      })
  )

  it.effect("layerDomainsFromConfig fails to build on a bad config", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(Layer.build(Domain.layerDomainsFromConfig([{ name: "x", provider: 1 }])))
      assert.strictEqual(error.path, "domains[0].provider")
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
    assert.deepStrictEqual(Domain.predefinedNames, ["support", "technical", "finance"])
    for (const d of domains) {
      assert.strictEqual(d.provider, "main")
      assert.isAbove(d.system?.length ?? 0, 20)
      assert.isDefined(d.retry)
    }
    assert.strictEqual(new Set(domains.map((d) => d.system)).size, 3)
    assert.strictEqual(domains[2]!.temperature, 0.2)
  })
})

describe("Domains and Providers registries", () => {
  it.effect("an unknown or non-string domain is an InvalidRequest naming the field and the known names", () =>
    Effect.gen(function* () {
      const domains = yield* Domain.makeDomains(Domain.predefined("main"))
      assert.strictEqual((yield* domains.get("finance")).name, "finance")
      const unknown = yield* Effect.flip(domains.get("legal"))
      assert.strictEqual(unknown.reason, "InvalidRequest")
      assert.strictEqual(unknown.field, "domain")
      assert.include(unknown.message, "support, technical, finance")
      const wrong = yield* Effect.flip(domains.get(null as never))
      assert.strictEqual(wrong.field, "domain")
      assert.include(wrong.message, "got null")
      // A registry of thousands: the message (a gateway's 400 body) names some of them, not all.
      const many = yield* Domain.makeDomains(
        Array.from({ length: 5_000 }, (_, i) => ({ name: `domain-${i}`, provider: "main" }))
      )
      const lost = yield* Effect.flip(many.get("legal"))
      assert.include(lost.message, "domain-0, domain-1")
      assert.include(lost.message, "and 4980 more")
      assert.isBelow(lost.message.length, 400)
    })
  )

  it.effect("an unknown name is quoted as JSON and cut short: a quote or a line break cannot forge the message", () =>
    Effect.gen(function* () {
      const domains = yield* Domain.makeDomains(Domain.predefined("main"))
      const { provider } = yield* Mock.make({ name: "registered" })
      const providers = yield* Domain.makeProviders({ main: provider })
      const forged = 'legal" (known: legal)\nERROR payments down'
      for (const error of [yield* Effect.flip(domains.get(forged)), yield* Effect.flip(providers.get(forged))]) {
        assert.notInclude(error.message, "\n", error.message)
        assert.include(error.message, JSON.stringify(forged))
      }
      // A caller's megabyte of name is not said back whole (a gateway answers the message to its client).
      const long = "x".repeat(100_000)
      for (const error of [yield* Effect.flip(domains.get(long)), yield* Effect.flip(providers.get(long))]) {
        assert.isBelow(error.message.length, 400)
        // As every check shows a value (Input.shown): its first 80 characters, an ellipsis and its length.
        assert.include(error.message, `"${"x".repeat(80)}"… (100,000 characters)`)
      }
      assert.include((yield* Effect.flip(domains.get("legal"))).message, 'unknown domain "legal" (known:')
    })
  )

  it.effect("a field whose getter throws is an OptionError naming it, from every entry point, not an exception", () =>
    Effect.gen(function* () {
      const domains = [
        { name: "ok", provider: "main" },
        {
          name: "legal",
          provider: "main",
          get timeout(): number {
            throw new Error("vault unreachable")
          }
        }
      ]
      const results = [
        Effect.flip(Effect.suspend(() => Domain.fromConfig(domains))),
        Effect.flip(Effect.suspend(() => Domain.makeDomains(domains))),
        Effect.flip(Layer.build(Domain.layerDomainsFromConfig(domains)).pipe(Effect.scoped))
      ]
      for (const result of results) {
        const error = yield* result
        assert.strictEqual(error.path, "domains[1].timeout")
        assert.include(error.message, "vault unreachable")
      }
      const checked = Domain.check(domains)
      assert.strictEqual(Result.isFailure(checked) && checked.failure.path, "domains[1].timeout")
    })
  )

  it.effect("makeDomains checks its domains as fromConfig does: a bad list is an OptionError naming the field", () =>
    Effect.gen(function* () {
      const support = Domain.predefined("main")[0]!
      const cases: ReadonlyArray<readonly [ReadonlyArray<Domain.Domain | Domain.DomainInput>, string]> = [
        // The second "support" replaced the first, unseen.
        [[support, { ...support, system: "other" }], "domains[1].name"],
        [[{ name: "x", provider: "main", temperature: 7 }], "domains[0].temperature"],
        [[{ name: "x", provider: "main", fallback: ["nowhere"] }], "domains[0].fallback[0]"],
        [[{ name: "none", provider: "main" }], "domains[0].name"]
      ]
      for (const [input, path] of cases) {
        const error = yield* Effect.flip(Domain.makeDomains(input))
        assert.strictEqual(error._tag, "OptionError")
        assert.strictEqual(error.path, path, JSON.stringify(input))
      }
      const built = yield* Domain.makeDomains([{ name: "x", provider: "main", timeout: "2 seconds" }])
      assert.strictEqual(Duration.toMillis((yield* built.get("x")).timeout!), 2000)
    })
  )

  it.effect("a provider that is not registered is Unavailable, prototype names included", () =>
    Effect.gen(function* () {
      const { provider } = yield* Mock.make({ name: "registered" })
      const providers = yield* Domain.makeProviders({ main: provider })
      assert.deepStrictEqual(providers.names, ["main"])
      assert.strictEqual((yield* providers.get("main")).name, "registered")
      for (const name of ["other", "toString", "__proto__", "constructor"]) {
        const error = yield* Effect.flip(providers.get(name))
        assert.strictEqual(error.reason, "Unavailable", name)
        assert.include(error.message, "registered: main")
      }
    })
  )

  it.effect("makeProviders checks its providers as layerProviders does: an OptionError naming the field", () =>
    Effect.gen(function* () {
      const { provider } = yield* Mock.make({ name: "main" })
      const { proxy: revoked, revoke } = Proxy.revocable({}, {})
      revoke()
      const cases: ReadonlyArray<readonly [Record<string, unknown>, string]> = [
        // Each call of a router over them failed with `InvalidRequest steps[0].name`, not its build.
        [{ main: { ...provider, name: "" } }, "providers.main.name"],
        [{ main: { ...provider, name: undefined } }, "providers.main.name"],
        [{ main: { ...provider, name: Metrics.otherSeries } }, "providers.main.name"],
        // Two of one name would share its breaker, rate limits, cache entries and stats, unseen.
        [{ main: provider, copy: { ...provider } }, "providers.copy.name"],
        [{ main: null }, "providers.main"],
        [{ main: "mock" }, "providers.main"],
        // Every call of it failed with `InvalidRequest steps[0].maxConcurrency`.
        [{ main: { ...provider, maxConcurrency: 0 } }, "providers.main.maxConcurrency"],
        // A provider of a class whose getter throws (`get name() { return this.config.name }`, no config): its
        // field's OptionError, not a defect of the build (which the facade would build again and again).
        [
          {
            main: {
              ...provider,
              get name(): string {
                throw new Error("no config")
              }
            }
          },
          "providers.main.name"
        ],
        [
          {
            main: {
              ...provider,
              get maxConcurrency(): number {
                throw new Error("no config")
              }
            }
          },
          "providers.main.maxConcurrency"
        ],
        [{ main: revoked }, "providers.main.name"]
      ]
      for (const [providers, path] of cases) {
        const error = yield* Effect.flip(Domain.makeProviders(providers as never))
        assert.deepStrictEqual([error._tag, error.path], ["OptionError", path], path)
      }
      const registry = yield* Domain.makeProviders({ main: provider, other: { ...provider, name: "other" } })
      assert.deepStrictEqual(registry.names, ["main", "other"])
      assert.strictEqual((yield* registry.get("other")).name, "other")
    })
  )

  it.effect("layerProviders builds each provider layer once; a failing one fails the registry, named by its key", () =>
    Effect.gen(function* () {
      const context = yield* Layer.build(
        Domain.layerProviders({ a: Mock.layer({ name: "model-a" }), b: Mock.layer({ name: "model-b" }) })
      )
      const registry = yield* Effect.provideContext(Domain.Providers, context)
      assert.strictEqual((yield* registry.get("b")).name, "model-b")
      const error = yield* Effect.flip(
        Layer.build(Domain.layerProviders({ good: Mock.layer(), bad: Mock.layer({ latency: -1 }) }))
      )
      // With several providers, the key says which one was wrong.
      assert.strictEqual(error.path, "providers.bad.latency")
      assert.include(error.message, "invalid providers.bad.latency:")
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

  it("a system message in the conversation is the request's own system prompt: the domain's is not added", () => {
    const domain: Domain.Domain = { name: "d", provider: "p", system: "S" }
    const messages = [
      { role: "system" as const, content: "mine" },
      { role: "user" as const, content: "q" }
    ]
    assert.deepStrictEqual(Domain.applyTo(domain, { messages }), { messages })
    const userOnly = [{ role: "user" as const, content: "q" }]
    assert.deepStrictEqual(Domain.applyTo(domain, { messages: userOnly }), { messages: userOnly, system: "S" })
  })
})

describe("Domain.check: a misspelt field", () => {
  it("names the field it is likely a typo of, else the known ones, as the config file's check does", () => {
    const issue = (raw: Record<string, unknown>) => {
      const checked = Domain.check([{ name: "a", provider: "main", ...raw }])
      return Result.isFailure(checked) ? checked.failure : undefined
    }
    assert.deepStrictEqual(issue({ temprature: 1 }), {
      path: "domains[0].temprature",
      message: "unknown field (did you mean temperature?)"
    })
    assert.deepStrictEqual(issue({ MaxTokens: 10 }), {
      path: "domains[0].MaxTokens",
      message: "unknown field (did you mean maxTokens?)"
    })
    assert.deepStrictEqual(issue({ retry: { maxAttempt: 2 } }), {
      path: "domains[0].retry.maxAttempt",
      message: "unknown field (did you mean maxAttempts?)"
    })
    assert.match(
      issue({ zzzzzz: 1 })?.message ?? "",
      /^unknown field \(expected one of name, provider, model, .+, and \d+ others\)$/
    )
    // A retry policy checked on its own says the same.
    const retry = Policy.decodeRetry({ maxAtempts: 2 }, "executor.retry")
    assert.deepStrictEqual(Result.isFailure(retry) && retry.failure, {
      path: "executor.retry.maxAtempts",
      message: "unknown field (did you mean maxAttempts?)"
    })
  })
})

describe("Domain.check: a name no series can carry", () => {
  it("a domain name past 256 characters is refused naming it: its calls were counted under (other)", () => {
    const long = "d".repeat(257)
    const checked = Domain.check([{ name: long, provider: "main" }])
    assert.deepStrictEqual(Result.isFailure(checked) && checked.failure.path, "domains[0].name")
    assert.include(Result.isFailure(checked) ? checked.failure.message : "", "at most 256 characters")
    const fits = "d".repeat(256)
    assert.isTrue(Result.isSuccess(Domain.check([{ name: fits, provider: "main" }])))
  })
})
