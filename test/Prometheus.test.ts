import { spawnSync } from "node:child_process"
import { fileURLToPath } from "node:url"
import { readFileSync } from "node:fs"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Metric, Result, Scope, Stream } from "effect"
import { TestClock } from "effect/testing"
import { HttpRouter } from "effect/http"
import { type AiError, modelError } from "../src/AiError.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Domain from "../src/Domain.js"
import * as Executor from "../src/Executor.js"
import * as Metrics from "../src/Metrics.js"
import * as Mock from "../src/Model/Mock.js"
import { Outcome } from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import * as Pipeline from "../src/Pipeline.js"
import * as Prometheus from "../src/Prometheus.js"
import * as RateLimit from "../src/RateLimit.js"
import { setup } from "./utils/executor.js"
import { makeManager } from "./utils/manager.js"

describe("Prometheus", () => {
  it.effect("text: the call series by provider and domain, and every breaker's state (issue 13 item 35)", () =>
    Effect.gen(function* () {
      const { router, registry } = yield* makeManager(
        { a: { script: [Outcome.succeed(), Outcome.fail("Overloaded")] }, b: {} },
        { breakers: { failMax: 1, resetTimeout: "1 minute" } }
      )
      yield* router.execute({ prompt: "q" }, "d-a")
      yield* router.execute({ prompt: "q" }, "d-b")
      const text = yield* Prometheus.text.pipe(Effect.provideService(Metric.MetricRegistry, registry))
      assert.include(text, "# TYPE orchestra_requests_total counter")
      assert.include(text, 'orchestra_requests_total{provider="a",domain="d-a"} 1')
      assert.include(text, 'orchestra_requests_total{provider="b",domain="d-b"} 1')
      assert.include(text, "# TYPE orchestra_request_duration_ms histogram")
      assert.include(text, "# TYPE orchestra_breaker_state gauge")
      assert.include(text, 'orchestra_breaker_state{breaker="a"} 0')

      yield* Effect.flip(router.execute({ prompt: "again" }, "d-a"))
      const tripped = yield* Prometheus.text.pipe(Effect.provideService(Metric.MetricRegistry, registry))
      assert.include(tripped, 'orchestra_breaker_state{breaker="a"} 1')
      assert.include(tripped, 'orchestra_breaker_transitions_total{breaker="a",from="closed",to="open"} 1')
      assert.include(tripped, 'orchestra_failures_total{provider="a",domain="d-a",reason="Overloaded"} 1')
    })
  )

  it.effect("orchestra_service_duration_ms counts calls and streams, recorded apart for hedging", () =>
    Effect.gen(function* () {
      const { router, registry } = yield* makeManager({ a: { latency: "40 millis", chunkDelay: "3 seconds" } })
      const call = yield* Effect.forkChild(router.execute({ prompt: "q" }, "d-a"))
      yield* TestClock.adjust("40 millis")
      yield* Fiber.join(call)
      const stream = yield* Effect.forkChild(Stream.runDrain(router.stream({ prompt: "q" }, "d-a")))
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(stream)
      const text = yield* Prometheus.text.pipe(Effect.provideService(Metric.MetricRegistry, registry))
      const line = (name: string) =>
        text.split("\n").find((l) => l.startsWith(`orchestra_service_duration_ms_${name}{provider="a",domain="d-a"}`))
      assert.strictEqual(line("count")?.split(" ")[1], "2")
      // 40 ms for the call; the stream's mock echoes "q" in one word: 40 ms too, plus its Finish after 3 s.
      const sum = Number(line("sum")?.split(" ")[1])
      assert.isAbove(sum, 3_040)
      // Its help says so: a stream's seconds beside a call's milliseconds read as a slow provider.
      assert.match(text, /# HELP orchestra_service_duration_ms .*stream.*to its end/)
    })
  )

  it.effect("only the library's metrics unless all: true", () =>
    Effect.gen(function* () {
      const { router, registry } = yield* makeManager({ a: {} })
      yield* router.execute({ prompt: "q" }, "d-a")
      const provide = Effect.provideService(Metric.MetricRegistry, registry)
      yield* Metric.update(Metric.counter("app_requests_total"), 3).pipe(provide)
      const ours = yield* Prometheus.text.pipe(provide)
      assert.notInclude(ours, "app_requests_total")
      const all = yield* Prometheus.format({ all: true }).pipe(provide)
      assert.include(all, "app_requests_total 3")
      assert.include(all, "orchestra_requests_total")
    })
  )

  it.effect("layerHttp: GET /metrics answers the text with the Prometheus content type", () =>
    Effect.gen(function* () {
      const { router, registry } = yield* makeManager({ a: {} })
      yield* router.execute({ prompt: "q" }, "d-a")
      const web = HttpRouter.toWebHandler(Prometheus.layerHttp({ path: "/internal/metrics" }), { disableLogger: true })
      yield* Effect.addFinalizer(() => Effect.promise(() => web.dispose()))
      const context = Context.make(Metric.MetricRegistry, registry)
      const response = yield* Effect.promise(() =>
        web.handler(new Request("http://localhost/internal/metrics"), context as Context.Context<never>)
      )
      assert.strictEqual(response.status, 200)
      assert.strictEqual(response.headers.get("content-type"), Prometheus.contentType)
      const body = yield* Effect.promise(() => response.text())
      assert.include(body, 'orchestra_requests_total{provider="a",domain="d-a"} 1')
      const missing = yield* Effect.promise(() => web.handler(new Request("http://localhost/metrics"), context))
      assert.strictEqual(missing.status, 404)
    })
  )

  it.effect("layerHttp: a path that is not a route path is an OptionError naming it, not a route never matched", () =>
    Effect.gen(function* () {
      const refused = (options: unknown) =>
        Effect.flip(Layer.build(Prometheus.layerHttp(options as never).pipe(Layer.provide(HttpRouter.layer)))).pipe(
          Effect.scoped
        )
      const cases: ReadonlyArray<readonly [unknown, string, string]> = [
        [{ path: "" }, "path", 'invalid path: expected a path such as "/metrics", got ""'],
        [{ path: "metrics" }, "path", 'invalid path: expected a path such as "/metrics", got "metrics"'],
        [
          { path: "/metrics?format=text" },
          "path",
          'invalid path: expected a path such as "/metrics", got "/metrics?format=text"'
        ],
        [{ path: " /metrics" }, "path", 'invalid path: expected a path such as "/metrics", got " /metrics"'],
        [{ path: "/met rics" }, "path", 'invalid path: expected a path such as "/metrics", got "/met rics"'],
        [{ path: "/metrics/" }, "path", 'invalid path: expected a path such as "/metrics", got "/metrics/"'],
        [{ path: "//metrics" }, "path", 'invalid path: expected a path such as "/metrics", got "//metrics"'],
        // Not a TypeError out of the router, and null is not the default.
        [{ path: 9464 }, "path", 'invalid path: expected a path such as "/metrics", got 9464'],
        [{ path: null }, "path", 'invalid path: expected a path such as "/metrics", got null'],
        [{ all: "yes" }, "all", 'invalid all: expected true or false, got "yes"'],
        [{ pth: "/m" }, "pth", "invalid pth: unknown option (did you mean path?)"],
        [{ buckets: "fine" }, "buckets", 'invalid buckets: expected one of "all", "coarse", got "fine"'],
        [{ buckets: null }, "buckets", 'invalid buckets: expected one of "all", "coarse", got null'],
        [null, "(options)", "invalid (options): expected an object, got null"]
      ]
      for (const [options, path, message] of cases) {
        const error = yield* refused(options)
        assert.strictEqual(error._tag, "OptionError", JSON.stringify(options))
        assert.deepStrictEqual([error.path, error.message], [path, message])
      }
    })
  )

  it.effect("layerHttp: * answers every GET, / the root", () =>
    Effect.gen(function* () {
      const context = Context.make(Metric.MetricRegistry, new Map()) as Context.Context<never>
      for (const [path, url] of [
        ["*", "http://localhost/anything"],
        ["/", "http://localhost/"],
        ["/internal/v1.metrics_x~y-z", "http://localhost/internal/v1.metrics_x~y-z"]
      ] as const) {
        const web = HttpRouter.toWebHandler(Prometheus.layerHttp({ path }), { disableLogger: true })
        const response = yield* Effect.promise(() => web.handler(new Request(url), context))
        yield* Effect.promise(() => web.dispose())
        assert.strictEqual(response.status, 200, path)
        assert.strictEqual(response.headers.get("content-type"), Prometheus.contentType)
      }
    })
  )
  it.effect("buckets: coarse keeps 21 bounds of each latency histogram, with the counts the full text has there", () =>
    Effect.gen(function* () {
      const { router, registry } = yield* makeManager({ a: {} })
      for (let i = 0; i < 5; i++) yield* router.execute({ prompt: `q${i}` }, "d-a")
      const provide = Effect.provideService(Metric.MetricRegistry, registry)
      const full = yield* Prometheus.format().pipe(provide)
      const coarse = yield* Prometheus.format({ buckets: "coarse" }).pipe(provide)
      const series = 'orchestra_request_duration_ms_bucket{provider="a",domain="d-a",'
      const buckets = (text: string) => text.split("\n").filter((line) => line.startsWith(series))
      assert.lengthOf(buckets(full), 176) // 175 bounds and +Inf
      assert.lengthOf(buckets(coarse), 22)
      assert.lengthOf(Prometheus.coarseBuckets, 21)
      // Every kept line is the full text's own line: same le, same count; +Inf last.
      for (const line of buckets(coarse)) assert.include(buckets(full), line)
      assert.match(buckets(coarse).at(-1)!, /le="\+Inf"\} 5$/)
      // The `le` the docs give as an example (the kept bound under 10 ms) is one the text has.
      for (const file of ["../docs/orchestration.md", "../src/Prometheus.ts"]) {
        const documented = /`le="([\d.]+)"`, not|`le="([\d.]+)"` rather/.exec(
          readFileSync(new URL(file, import.meta.url), "utf8")
        )
        const le = documented?.[1] ?? documented?.[2]
        assert.isDefined(le, file)
        assert.isTrue(
          buckets(coarse).some((line) => line.includes(`le="${le}"}`)),
          `${file}: le="${le}"`
        )
      }
      // Nothing but latency buckets is dropped.
      const other = (text: string) => text.split("\n").filter((line) => !/_ms_bucket\{/.test(line))
      assert.deepStrictEqual(other(coarse), other(full))
      const web = HttpRouter.toWebHandler(Prometheus.layerHttp({ buckets: "coarse" }), { disableLogger: true })
      yield* Effect.addFinalizer(() => Effect.promise(() => web.dispose()))
      const response = yield* Effect.promise(() =>
        web.handler(
          new Request("http://localhost/metrics"),
          Context.make(Metric.MetricRegistry, registry) as Context.Context<never>
        )
      )
      assert.lengthOf(buckets(yield* Effect.promise(() => response.text())), 22)
      // A value the type rules out is never the default in silence.
      const exit = yield* Effect.exit(Prometheus.format({ buckets: "Coarse" as never }).pipe(provide))
      assert.include(String(exit), 'invalid buckets: expected one of "all", "coarse", got "Coarse"')
      assert.throws(
        () => Prometheus.formatUnsafe(Context.make(Metric.MetricRegistry, registry) as never, { buckets: 5 as never }),
        /got 5/
      )
    })
  )
})

/**
 * A strict reading of the text exposition format (0.0.4): every line a comment or a sample;
 * names and label names by the spec's rules; label values with only \\, \" and \n escaped;
 * HELP and TYPE at most once per family, before its samples, and a family's samples together;
 * no series twice; histograms with increasing `le`, monotone buckets, `+Inf` equal to
 * `_count`, and a `_sum`. Answers the samples, unescaped.
 */
const parseExposition = (text: string) => {
  const metricName = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
  const labelName = /^[a-zA-Z_][a-zA-Z0-9_]*$/
  assert.isTrue(text === "" || text.endsWith("\n"), "the text ends with a newline")
  const samples: Array<{ name: string; labels: Record<string, string>; value: number }> = []
  const typed = new Map<string, string>()
  const helped = new Set<string>()
  const closed = new Set<string>()
  const seen = new Set<string>()
  let current: string | undefined
  const familyOf = (name: string) => {
    for (const suffix of ["_bucket", "_sum", "_count"]) {
      const base = name.slice(0, -suffix.length)
      if (name.endsWith(suffix) && typed.get(base) === "histogram") return base
    }
    return name
  }
  const enter = (family: string) => {
    if (current === family) return
    assert.isFalse(closed.has(family), `family ${family} is split`)
    if (current !== undefined) closed.add(current)
    current = family
  }
  for (const line of text.split("\n").slice(0, -1)) {
    const comment = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line)
    if (comment !== null) {
      const [, kind, name, rest] = comment as unknown as [string, string, string, string]
      assert.match(name, metricName, line)
      enter(name)
      if (kind === "TYPE") {
        assert.isFalse(typed.has(name), `TYPE ${name} twice`)
        assert.include(["counter", "gauge", "histogram", "summary", "untyped"], rest, line)
        typed.set(name, rest)
      } else {
        assert.isFalse(helped.has(name), `HELP ${name} twice`)
        assert.notMatch(rest.replace(/\\[\\n]/g, ""), /\\/, line)
        helped.add(name)
      }
      continue
    }
    assert.isFalse(line.startsWith("#") || line.trim() === "", `unexpected line ${JSON.stringify(line)}`)
    const head = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line)
    assert.isNotNull(head, line)
    const name = head![1]!
    let at = name.length
    const labels: Record<string, string> = {}
    if (line[at] === "{") {
      at++
      while (line[at] !== "}") {
        const key = /^([^=]*)="/.exec(line.slice(at))
        assert.isNotNull(key, `label at ${at} of ${JSON.stringify(line)}`)
        assert.match(key![1]!, labelName, line)
        assert.isFalse(key![1]! in labels, `label ${key![1]} twice in ${line}`)
        at += key![0].length
        let value = ""
        for (;;) {
          const c = line[at]
          assert.isDefined(c, `unterminated label value in ${JSON.stringify(line)}`)
          if (c === '"') break
          if (c === "\\") {
            const next = line[at + 1]
            assert.include(["\\", '"', "n"], next, `bad escape in ${JSON.stringify(line)}`)
            value += next === "n" ? "\n" : next
            at += 2
          } else {
            value += c
            at++
          }
        }
        labels[key![1]!] = value
        at++
        if (line[at] === ",") at++
      }
      at++
    }
    const rest = /^ (\S+)$/.exec(line.slice(at))
    assert.isNotNull(rest, `value of ${JSON.stringify(line)}`)
    const value = rest![1] === "+Inf" ? Infinity : rest![1] === "-Inf" ? -Infinity : Number(rest![1])
    assert.isFalse(rest![1] !== "NaN" && Number.isNaN(value), line)
    const family = familyOf(name)
    enter(family)
    assert.isTrue(typed.has(family), `no TYPE before ${line}`)
    const id = JSON.stringify([name, Object.entries(labels).sort()])
    assert.isFalse(seen.has(id), `series twice: ${line}`)
    seen.add(id)
    samples.push({ name, labels, value })
  }
  for (const [family, type] of typed) {
    if (type !== "histogram") continue
    const groups = new Map<string, Array<{ le: number; value: number }>>()
    for (const s of samples.filter((s) => s.name === `${family}_bucket`)) {
      const { le, ...rest } = s.labels
      const key = JSON.stringify(Object.entries(rest).sort())
      groups.set(key, [...(groups.get(key) ?? []), { le: le === "+Inf" ? Infinity : Number(le), value: s.value }])
    }
    for (const [key, buckets] of groups) {
      for (let i = 1; i < buckets.length; i++) {
        assert.isAbove(buckets[i]!.le, buckets[i - 1]!.le, `${family}${key} le order`)
        assert.isAtLeast(buckets[i]!.value, buckets[i - 1]!.value, `${family}${key} buckets monotone`)
      }
      assert.strictEqual(buckets.at(-1)!.le, Infinity, `${family}${key} ends with +Inf`)
      const same = (s: { labels: Record<string, string> }) => JSON.stringify(Object.entries(s.labels).sort()) === key
      const count = samples.find((s) => s.name === `${family}_count` && same(s))
      assert.isDefined(count, `${family}${key} _count`)
      assert.strictEqual(buckets.at(-1)!.value, count!.value, `${family}${key} +Inf is _count`)
      assert.isDefined(
        samples.find((s) => s.name === `${family}_sum` && same(s)),
        `${family}${key} _sum`
      )
    }
  }
  return samples
}

describe("Prometheus text format", () => {
  it.effect("buckets: coarse keeps the same 22 buckets of a series whose labels hold a carriage return or U+2028", () =>
    Effect.gen(function* () {
      // A breaker's or rate limit's key is the caller's: the exposition writes these characters as
      // they are (only \\, " and \n are escaped), and the bucket line is still one line.
      const names = ["plain", "car\rreturn", "line\u2028separator", "para\u2029graph", "next\u0085line"]
      for (const name of names) {
        yield* Metric.update(Metric.withAttributes(Metrics.latency, { provider: name, domain: "d-odd" }), 3)
      }
      const text = yield* Prometheus.format({ buckets: "coarse" })
      for (const name of names) {
        const series = `orchestra_request_duration_ms_bucket{provider="${name}",domain="d-odd",`
        const lines = text.split("\n").filter((line) => line.startsWith(series))
        assert.lengthOf(lines, 22, JSON.stringify(name))
        assert.deepStrictEqual(
          lines.map((line) => /le="([^"]+)"\} /s.exec(line)?.[1]),
          [...Prometheus.coarseBuckets.map(String), "+Inf"],
          JSON.stringify(name)
        )
      }
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))
  )
  it.effect("is valid exposition text, whatever the provider, domain and reason names hold", () =>
    Effect.gen(function* () {
      const odd = ['q"uote', "back\\slash", "new\nline", "ünï-çødé 名前", "trailing\\"]
      const mocks = Object.fromEntries(
        odd.map((name, i) => [name, { script: i % 2 === 0 ? [Outcome.succeed()] : [Outcome.fail("Overloaded")] }])
      )
      const { router, registry } = yield* makeManager(mocks, {
        domains: odd.map((name) => ({ name: `dom ${name}`, provider: name })),
        rateLimits: { default: { requestsPerMinute: 100 } },
        cache: {}
      })
      for (const name of odd) yield* Effect.exit(router.execute({ prompt: "q" }, `dom ${name}`))
      for (const name of odd) yield* Effect.exit(router.execute({ prompt: "q" }, `dom ${name}`))
      const provide = Effect.provideService(Metric.MetricRegistry, registry)
      for (const buckets of ["all", "coarse"] as const) {
        const text = yield* Prometheus.format({ buckets }).pipe(provide)
        const samples = parseExposition(text)
        for (const name of odd) {
          const requests = samples.find(
            (s) =>
              s.name === "orchestra_requests_total" && s.labels.provider === name && s.labels.domain === `dom ${name}`
          )
          assert.isDefined(requests, `requests of ${JSON.stringify(name)}`)
          assert.isTrue(samples.some((s) => s.name === "orchestra_breaker_state" && s.labels.breaker === name))
        }
      }
    })
  )

  it.effect(
    "names that differ only by a lone surrogate are refused where they enter: scraped as UTF-8 they were one series twice",
    () =>
      Effect.gen(function* () {
        // What a scraper reads: the text in UTF-8, where each lone surrogate is U+FFFD.
        const scraped = (text: string) => new TextDecoder().decode(new TextEncoder().encode(text))
        const { executor, registry } = yield* setup()
        const lone = ["user-\uD800", "user-\uDC00", "user-\uDBFF\uDBFF"]
        for (const domain of lone) {
          const calls: ReadonlyArray<readonly [string, Effect.Effect<unknown, AiError>]> = [
            ["domain", executor.execute({ prompt: "q" }, { domain })],
            ["domain", Stream.runDrain(executor.stream({ prompt: "q" }, { domain }))],
            [
              "steps[0].domain",
              Stream.runDrain(executor.stream({ prompt: "q" }, { steps: [{ provider: executor.provider, domain }] }))
            ],
            ["provider.name", executor.execute({ prompt: "q" }, { provider: { ...executor.provider, name: domain } })]
          ]
          for (const [field, call] of calls) {
            const error = yield* Effect.flip(call)
            assert.strictEqual(error._tag === "ModelError" && error.field, field, JSON.stringify(domain))
            assert.include(error.message, "surrogate")
          }
        }
        assert.strictEqual(
          yield* executor.execute({ prompt: "q" }, { domain: "paired 😀" }).pipe(Effect.map(() => 1)),
          1
        )
        const samples = parseExposition(
          scraped(yield* Prometheus.text.pipe(Effect.provideService(Metric.MetricRegistry, registry)))
        )
        assert.isFalse(samples.some((s) => Object.values(s.labels).some((v) => v.includes("\uFFFD"))))
        assert.isTrue(samples.some((s) => s.labels.domain === "paired 😀"))

        // Where names enter otherwise: a provider's, a domain's, a pipeline step's series names.
        const built = yield* Effect.flip(Effect.scoped(setup({ name: "p\uD800" })))
        assert.strictEqual(built._tag === "OptionError" && built.path, "provider.name")
        const providers = yield* Effect.flip(
          Layer.build(Orchestra.layer({ providers: { main: Mock.layer({ name: "p\uDC00" }) } })).pipe(Effect.scoped)
        )
        assert.strictEqual(providers._tag === "OptionError" && providers.path, "providers.main.name")
        const domains = Domain.check([{ name: "d\uD800", provider: "main" }])
        assert.strictEqual(Result.isFailure(domains) && domains.failure.path, "domains[0].name")
        const ok = () => Effect.succeed(1)
        for (const [step, field] of [
          [{ name: "a", run: ok, stats: "s\uD800" }, "steps[0].stats"],
          [{ name: "a", run: ok, breaker: "b\uD800" }, "steps[0].breaker"],
          [{ name: "s\uD800", run: ok, timeout: "1 second" }, "steps[0].name"]
        ] as const) {
          const error = yield* Effect.flip(Pipeline.fromSteps([step]))
          assert.strictEqual(error.field, field)
          assert.include(error.message, "surrogate")
        }
      })
  )

  it.effect(
    'breaker and rate-limit keys holding a lone surrogate count under "(other)": scraped as UTF-8 they were one series twice',
    () =>
      Effect.gen(function* () {
        const scraped = (text: string) => new TextDecoder().decode(new TextEncoder().encode(text))
        const registry: Metric.MetricRegistry = new Map()
        const provide = Effect.provideService(Metric.MetricRegistry, registry)
        const breakers = yield* CircuitBreaker.makeMemory({ failMax: 1, resetTimeout: "1 minute" }).pipe(provide)
        const limits = Context.get(
          yield* Layer.build(RateLimit.layerMemory({ default: { requestsPerMinute: 100 } })).pipe(provide),
          RateLimit.RateLimits
        )
        const lone = ["k-\uD800", "k-\uDC00"]
        for (const key of lone) {
          yield* breakers.execute(key, Effect.void)
          yield* Effect.flip(breakers.execute(key, Effect.fail(modelError("Overloaded", "down"))))
          yield* limits.acquire(key)
        }
        // The keys work as keys: each its own circuit.
        for (const key of lone) assert.strictEqual(yield* breakers.state(key), "open")
        yield* breakers.execute("k-fine", Effect.void)
        yield* limits.acquire("k-fine")
        const samples = parseExposition(scraped(yield* Prometheus.text.pipe(provide)))
        assert.isFalse(samples.some((s) => Object.values(s.labels).some((v) => v.includes("\uFFFD"))))
        const value = (name: string, labels: Record<string, string>) =>
          samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value
        assert.strictEqual(
          value("orchestra_breaker_transitions_total", { breaker: "(other)", from: "closed", to: "open" }),
          2
        )
        assert.strictEqual(value("orchestra_breaker_state", { breaker: "k-fine" }), 0)
        assert.strictEqual(
          value("orchestra_rate_limit_acquisitions_total", { limit: "(other)", outcome: "immediate" }),
          2
        )
        assert.strictEqual(
          value("orchestra_rate_limit_acquisitions_total", { limit: "k-fine", outcome: "immediate" }),
          1
        )
      })
  )

  it.effect(
    "a call refused for its provider or domain option leaves the text valid: counted under the executor's provider, no domain",
    () =>
      Effect.gen(function* () {
        // Each of these once made a series whose provider or domain label was no string (`5`,
        // undefined): every scrape of the registry then died with a TypeError.
        const { executor, registry } = yield* setup()
        const refused: ReadonlyArray<Record<string, unknown>> = [
          { domain: 5 },
          { domain: "none" },
          { domain: "" },
          { provider: "openai" },
          { provider: {} },
          { provider: { name: 5 } }
        ]
        for (const options of refused) {
          const error = yield* Effect.flip(executor.execute({ prompt: "q" }, options as never))
          assert.strictEqual(error._tag, "ModelError", JSON.stringify(options))
          yield* Effect.flip(executor.executeMany([{ prompt: "q" }], options as never))
          yield* Effect.flip(executor.embed({ texts: ["q"] }, options as never))
          yield* Effect.flip(Stream.runDrain(executor.stream({ prompt: "q" }, options as never)))
          // A stream step's provider and domain label its series too.
          const step = { provider: executor.provider, ...options }
          const stepError = yield* Effect.flip(
            Stream.runDrain(executor.stream({ prompt: "q" }, { steps: [step as never] }))
          )
          assert.match(
            stepError._tag === "ModelError" ? (stepError.field ?? "") : "",
            /^steps\[0\]\.(domain|provider)$/
          )
        }
        const text = yield* Prometheus.text.pipe(Effect.provideService(Metric.MetricRegistry, registry))
        const requests = parseExposition(text).filter((s) => s.name === "orchestra_requests_total")
        // execute, executeMany, embed, a stream and a stream's step each: every refusal is counted as a call is.
        assert.deepStrictEqual(requests, [
          { name: "orchestra_requests_total", labels: { provider: "mock", domain: "none" }, value: 5 * refused.length }
        ])
      })
  )
})

describe("Prometheus: two Stats in one registry", () => {
  it.effect("series of one provider and domain add up across them, and one closing leaves the other's", () =>
    Effect.gen(function* () {
      const registry: Metric.MetricRegistry = new Map()
      const provide = Effect.provideService(Metric.MetricRegistry, registry)
      const build = (latency: number) =>
        Effect.gen(function* () {
          const scope = yield* Scope.make()
          const context = yield* Layer.buildWithScope(
            Executor.layerWithStats().pipe(Layer.provide(Mock.layer({ name: "shared-p", latency }))),
            scope
          ).pipe(provide)
          return { executor: Context.get(context, Executor.Executor), close: Scope.close(scope, Exit.void) }
        })
      const a = yield* build(10)
      const b = yield* build(30)
      const run = (executor: Executor.Service) =>
        Effect.gen(function* () {
          const call = yield* Effect.forkChild(executor.execute({ prompt: "q" }))
          yield* TestClock.adjust("1 second")
          yield* Fiber.join(call)
        })
      yield* run(a.executor)
      yield* run(b.executor)
      yield* run(b.executor)
      const figures = (samples: ReturnType<typeof parseExposition>) =>
        ["orchestra_requests_total", "orchestra_successes_total", "orchestra_request_duration_ms_count"].map(
          (name) => samples.find((s) => s.name === name && s.labels.provider === "shared-p")?.value
        )
      const both = parseExposition(yield* Prometheus.text.pipe(provide))
      // The counters the two executors made are summed, not the last built's alone.
      assert.deepStrictEqual(figures(both), [3, 3, 3])
      const sum = both.find((s) => s.name === "orchestra_request_duration_ms_sum" && s.labels.provider === "shared-p")
      assert.strictEqual(sum?.value, 70)
      yield* b.close
      // The first's series stay, and keep what the other counted: a counter never goes back.
      assert.deepStrictEqual(figures(parseExposition(yield* Prometheus.text.pipe(provide))), [3, 3, 3])
      yield* run(a.executor)
      assert.deepStrictEqual(figures(parseExposition(yield* Prometheus.text.pipe(provide))), [4, 4, 4])
      yield* a.close
      assert.strictEqual(registry.size, 0)
    })
  )
})

describe("Prometheus options", () => {
  it.effect(
    "format and formatUnsafe check every option as layerHttp does: a typo or a wrong kind was the default",
    () =>
      Effect.gen(function* () {
        const context = Context.make(Metric.MetricRegistry, new Map()) as Context.Context<never>
        const cases: ReadonlyArray<readonly [unknown, string]> = [
          [{ bucket: "coarse" }, "bucket"],
          [{ all: "yes" }, "all"],
          [null, "options"],
          ["coarse", "options"]
        ]
        for (const [options, field] of cases) {
          const exit = yield* Effect.exit(Prometheus.format(options as never).pipe(Effect.provide(context)))
          assert.include(String(exit), `invalid ${field}:`, JSON.stringify(options))
          assert.throws(() => Prometheus.formatUnsafe(context, options as never), `invalid ${field}:`)
        }
      })
  )

  it.effect(
    "options whose getter throws (or a revoked Proxy) are an OptionError naming the field: layerHttp threw out of its call, format died of the getter's error",
    () =>
      Effect.gen(function* () {
        const context = Context.make(Metric.MetricRegistry, new Map()) as Context.Context<never>
        const { proxy, revoke } = Proxy.revocable({}, {})
        revoke()
        const throwing = {
          get all(): boolean {
            throw new Error("all getter")
          }
        }
        for (const [options, field, whole] of [
          [throwing, "all", "all"],
          [proxy, "options", "(options)"]
        ] as const) {
          const layer = yield* Effect.exit(
            Effect.suspend(() =>
              Layer.build(Prometheus.layerHttp(options as Prometheus.HttpOptions).pipe(Layer.provide(HttpRouter.layer)))
            ).pipe(Effect.flip, Effect.scoped)
          )
          assert.isTrue(
            Exit.isSuccess(layer) && layer.value._tag === "OptionError" && layer.value.path === whole,
            String(layer)
          )
          const exit = yield* Effect.exit(Prometheus.format(options as never).pipe(Effect.provide(context)))
          assert.include(String(exit), `invalid ${field}:`)
          assert.throws(() => Prometheus.formatUnsafe(context, options as never), `invalid ${field}:`)
        }
      })
  )
})

describe("Prometheus: latency buckets", () => {
  // Computed as 0.05 × 1.1^i, their last digits came out of V8's Math.pow, which differs between Node 22
  // and 24 (9.452957123563948 and …946): a fleet on both exported two sets of `le` series that no
  // sum by (le) adds up. Each bound is rounded to 6 significant digits: the same on every runtime.
  it("each bound is its own 6-significant-digit rounding, 175 of them rising by ~10%, then Infinity", () => {
    const bounds = Metrics.latencyBoundaries.slice(0, -1)
    assert.lengthOf(bounds, 175)
    assert.strictEqual(Metrics.latencyBoundaries.at(-1), Number.POSITIVE_INFINITY)
    for (const [i, bound] of bounds.entries()) {
      assert.strictEqual(bound, Number(bound.toPrecision(6)), `bound ${i}: ${bound}`)
      if (i > 0) assert.approximately(bound / bounds[i - 1]!, 1.1, 1e-4)
    }
    assert.strictEqual(bounds[56], 10.3983)
  })
})

describe("Prometheus: what checking options loads", () => {
  // A hook records every module the import loads; tsx (its API, by path) loads the TypeScript.
  const loadedBy = (module: string): ReadonlyArray<string> => {
    const script = [
      'import { registerHooks } from "node:module"',
      "const seen = []",
      "registerHooks({ load: (url, context, next) => (seen.push(url), next(url, context)) })",
      'const root = new URL("file://" + process.cwd() + "/")',
      'await (await import(new URL("node_modules/tsx/dist/esm/api/index.mjs", root).href)).register()',
      `await import(new URL(${JSON.stringify(module)}, root).href)`,
      "console.log(JSON.stringify(seen))"
    ].join("\n")
    const run = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
      cwd: fileURLToPath(new URL("..", import.meta.url)),
      encoding: "utf8",
      timeout: 60_000
    })
    assert.strictEqual(run.status, 0, run.stderr)
    return JSON.parse(run.stdout) as ReadonlyArray<string>
  }

  it("the gateway's options check their metricsBuckets without loading effect/http's server or PrometheusMetrics", () => {
    const loaded = loadedBy("src/gateway/options.ts")
    assert.isTrue(loaded.some((url) => url.endsWith("/src/gateway/options.ts")))
    const heavy = loaded.filter((url) =>
      /\/(HttpRouter|HttpServerResponse|HttpServer|PrometheusMetrics)\.js$/.test(url)
    )
    assert.deepStrictEqual(heavy, [])
  })
})
