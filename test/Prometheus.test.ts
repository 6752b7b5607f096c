import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Metric } from "effect"
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
})
