import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Metric } from "effect"
import { HttpRouter } from "effect/http"
import { Outcome } from "../src/Model/Mock.js"
import * as Prometheus from "../src/Prometheus.js"
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
        [{ pth: "/m" }, "pth", "invalid pth: unknown option (expected one of all, buckets, path)"],
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
