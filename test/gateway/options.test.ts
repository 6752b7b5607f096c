/**
 * The gateway's options are checked when its layer is built (an `OptionError` naming the
 * field), and the real key store of `gateway/keys` behind it end to end.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Duration, Effect, Layer, Redacted } from "effect"
import { HttpRouter, HttpServer } from "effect/http"
import * as Domain from "../../src/Domain.js"
import * as Executor from "../../src/Executor.js"
import * as Gateway from "../../src/Gateway.js"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import * as Input from "../../src/Input.js"
import { ModelProvider } from "../../src/Model.js"
import * as Mock from "../../src/Model/Mock.js"
import * as Stats from "../../src/Stats.js"
import * as Server from "../utils/httpServer.js"
import * as Harness from "./harness.js"
import * as Up from "./upstream.js"

/** The services a gateway needs, over one Mock provider `m` and a domain `d` (with a router for `Gateway.layer`). */
const mockServices = Effect.map(Mock.make({ name: "m" }), (mock) =>
  Executor.layer().pipe(
    Layer.provideMerge(Stats.layer),
    Layer.provideMerge(Layer.succeed(ModelProvider, mock.provider)),
    Layer.provideMerge(Layer.effect(Domain.Providers, Domain.makeProviders({ m: mock.provider }))),
    Layer.provideMerge(Domain.layerDomains([{ name: "d", provider: "m" }]))
  )
)

const buildError = (options: Gateway.Options) =>
  Effect.gen(function* () {
    const services = (yield* mockServices).pipe(Layer.provideMerge(HttpRouter.layer))
    const error = yield* Effect.flip(Layer.build(Gateway.layer(options).pipe(Layer.provide(services))))
    return error._tag === "OptionError" ? error.path : `${error._tag}: ${String(error)}`
  }).pipe(Effect.scoped)

describe("Gateway options", () => {
  it.effect(
    "a key store's renew.every of zero, negative or NaN is an OptionError naming it, not a loop that spins",
    () =>
      Effect.gen(function* () {
        const { service } = Harness.keyStore({})
        for (const every of [Duration.zero, Duration.millis(-5), Duration.millis(Number.NaN), "often" as never]) {
          const keys = { ...service, renew: { every, run: () => Effect.void } }
          const services = (yield* mockServices).pipe(
            Layer.provideMerge(HttpRouter.layer),
            Layer.provideMerge(Layer.succeed(Gateway.KeyStore, keys))
          )
          const error = yield* Effect.flip(Layer.build(Gateway.layer({}).pipe(Layer.provide(services))))
          assert.strictEqual(error._tag === "OptionError" ? error.path : error._tag, "keys.renew.every", String(every))
        }
      }).pipe(Effect.scoped)
  )

  it.effect(
    "a health or metrics path that is another's, or a path of the OpenAI routes, is an OptionError naming it, not the router's defect",
    () =>
      Effect.gen(function* () {
        const refused = (options: Gateway.Options) => buildError({ allowAnonymous: true, ...options })
        assert.strictEqual(yield* refused({ healthPaths: { live: "/same", ready: "/same" } }), "healthPaths.ready")
        assert.strictEqual(yield* refused({ metricsPath: "/healthz" }), "metricsPath")
        assert.strictEqual(yield* refused({ metricsPath: "/up", healthPaths: { ready: "/up" } }), "metricsPath")
        assert.strictEqual(yield* refused({ healthPaths: { live: "/v1/models" } }), "healthPaths.live")
        assert.strictEqual(yield* refused({ healthPaths: { ready: "/v1/chat/completions" } }), "healthPaths.ready")
        assert.strictEqual(yield* refused({ metricsPath: "/v1/embeddings" }), "metricsPath")
        // A model's own path (`GET /v1/models/{id}`) would answer for that model.
        assert.strictEqual(yield* refused({ metricsPath: "/v1/models/gpt-4o" }), "metricsPath")
        assert.strictEqual(yield* refused({ prefix: "", healthPaths: { live: "/models" } }), "healthPaths.live")
        assert.strictEqual(yield* refused({ prefix: "/api", metricsPath: "/api/models" }), "metricsPath")
        // Beside the OpenAI routes, under the prefix, a path is the option's own.
        const services = (yield* mockServices).pipe(Layer.provideMerge(HttpRouter.layer))
        yield* Layer.build(
          Gateway.layer({
            allowAnonymous: true,
            metricsPath: "/v1/metrics",
            healthPaths: { live: "/v1/models-up" }
          }).pipe(Layer.provide(services))
        )
      }).pipe(Effect.scoped)
  )

  it.effect("every wrong option is an OptionError naming it", () =>
    Effect.gen(function* () {
      assert.strictEqual(yield* buildError({}), "keys")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, maxBodyBytes: Number.NaN }), "maxBodyBytes")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, maxBodyBytes: 10 }), "maxBodyBytes")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, drainTimeout: -1 }), "drainTimeout")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, drainTimeout: "soon" as never }), "drainTimeout")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, drainDelay: -1 }), "drainDelay")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, drainDelay: Number.NaN }), "drainDelay")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, drainDelay: "soon" as never }), "drainDelay")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, drainDelay: null } as never), "drainDelay")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, defaultMaxTokens: 0 }), "defaultMaxTokens")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, defaultMaxTokens: 1.5 }), "defaultMaxTokens")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, prefix: "v1" }), "prefix")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, metricsPath: "/a//b" }), "metricsPath")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, stream: { idleTimeout: 0 } }), "stream.idleTimeout")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, stream: { idle: 5 } as never }), "stream.idle")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, retry: { maxAttempts: 0 } }), "retry.maxAttempts")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, maxBody: 5 } as never), "maxBody")
      assert.strictEqual(yield* buildError({ allowAnonymous: "yes" } as never), "allowAnonymous")
      // null is a wrong value, not an absent one (it was read as the default, or threw for stream).
      assert.strictEqual(yield* buildError({ allowAnonymous: true, drainTimeout: null } as never), "drainTimeout")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, maxBodyBytes: null } as never), "maxBodyBytes")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, prefix: null } as never), "prefix")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, stream: null } as never), "stream")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, metricsBuckets: "fine" } as never), "metricsBuckets")
      assert.strictEqual(yield* buildError({ allowAnonymous: true, metricsBuckets: null } as never), "metricsBuckets")
      assert.strictEqual(
        yield* buildError({ allowAnonymous: true, metricsBuckets: "coarse", metricsPath: false }),
        "metricsBuckets"
      )
    })
  )

  it.effect("several wrong options: the OptionError names the first and tells every other, each by its field", () =>
    Effect.gen(function* () {
      const services = (yield* mockServices).pipe(Layer.provideMerge(HttpRouter.layer))
      const options = {
        allowAnonymous: true,
        maxBody: 5,
        maxBodyBytes: 10,
        defaultMaxTokens: 0,
        healthPaths: 5,
        stream: { idleTimeout: 0, idle: 5 },
        metricsBuckets: "fine",
        provenanceHeaders: "yes"
      } as never
      const error = yield* Effect.flip(Layer.build(Gateway.layer(options).pipe(Layer.provide(services))))
      assert.instanceOf(error, Input.OptionError)
      const refused = error as Input.OptionError
      assert.strictEqual(refused.path, "maxBody")
      assert.deepStrictEqual(
        refused.others?.shown.map((issue) => issue.path),
        [
          "healthPaths",
          "metricsBuckets",
          "stream.idle",
          "maxBodyBytes",
          "defaultMaxTokens",
          "stream.idleTimeout",
          "provenanceHeaders"
        ]
      )
      assert.strictEqual(refused.others?.unshown, 0)
      assert.include(
        refused.message,
        "invalid maxBody: unknown option (did you mean maxBodyBytes?) (8 problems in all; also healthPaths: "
      )
      // Many: the first 20 told, the rest counted.
      const many = Object.fromEntries(Array.from({ length: 30 }, (_, i) => [`typo${i}`, i]))
      const bounded = yield* Effect.flip(
        Layer.build(Gateway.layer({ allowAnonymous: true, ...many } as never).pipe(Layer.provide(services)))
      )
      assert.strictEqual((bounded as Input.OptionError).others?.shown.length, 19)
      assert.strictEqual((bounded as Input.OptionError).others?.unshown, 10)
      assert.include(
        bounded.message,
        "(30 problems in all; also typo1: unknown option (expected one of prefix, maxBodyBytes,"
      )
    }).pipe(Effect.scoped)
  )

  it.effect(
    "every misspelt key names the option it is likely a typo of, quoted and bounded: each said a bare 'unknown option', the key raw",
    () =>
      Effect.gen(function* () {
        const services = (yield* mockServices).pipe(Layer.provideMerge(HttpRouter.layer))
        const long = "k".repeat(100_000)
        const options = {
          allowAnonymous: true,
          maxBody: 5,
          stream: { idle: 5 },
          [long]: 1,
          "pre\nfix": "/v1"
        } as never
        const error = (yield* Effect.flip(
          Layer.build(Gateway.layer(options).pipe(Layer.provide(services)))
        )) as Input.OptionError
        const issues = [{ path: error.path, message: "" }, ...(error.others?.shown ?? [])]
        assert.strictEqual(error.path, "maxBody")
        assert.include(error.message, "invalid maxBody: unknown option (did you mean maxBodyBytes?)")
        const byPath = new Map(error.others?.shown.map((issue) => [issue.path, issue.message]))
        assert.strictEqual(byPath.get("stream.idle"), "unknown option (did you mean idleTimeout?)")
        assert.isTrue(byPath.has('"pre\\nfix"'), [...byPath.keys()].join(" | "))
        const longPath = issues.find((issue) => issue.path.includes("(100,000 characters)"))?.path
        assert.isDefined(longPath)
        assert.isBelow(longPath!.length, 200)
        assert.isBelow(error.message.length, 2_000)
      }).pipe(Effect.scoped)
  )

  it.effect("metricsToken: a Redacted token of 16+ visible ASCII characters, for a metrics route; never echoed", () =>
    Effect.gen(function* () {
      const refused = (metricsToken: unknown, more: Gateway.Options = {}) =>
        Effect.gen(function* () {
          const services = (yield* mockServices).pipe(Layer.provideMerge(HttpRouter.layer))
          const options = { allowAnonymous: true, metricsToken, ...more } as Gateway.Options
          const error = yield* Effect.flip(Layer.build(Gateway.layer(options).pipe(Layer.provide(services))))
          assert.strictEqual(error._tag, "OptionError")
          return `${(error as Input.OptionError).path}: ${error.message}`
        }).pipe(Effect.scoped)
      const valid = "mt-0123456789abcdef"
      const cases: ReadonlyArray<readonly [unknown, Gateway.Options, string]> = [
        [Redacted.make(""), {}, "expected a token, got an empty one"],
        [Redacted.make("   \t\n "), {}, "expected a token, got an empty one"],
        [Redacted.make("short-token"), {}, "expected a token of at least 16 characters"],
        [Redacted.make(" mt-0123456789abcdef"), {}, "expected visible ASCII characters only"],
        [Redacted.make("mt-0123456789abcdef\n"), {}, "expected visible ASCII characters only"],
        [Redacted.make("mt-0123 456789abcdef"), {}, "expected visible ASCII characters only"],
        [Redacted.make("mt-0123456789abcdéf"), {}, "expected visible ASCII characters only"],
        [valid, {}, "expected a Redacted token"],
        [Redacted.make(42), {}, "expected a Redacted token"],
        [null, {}, "expected a Redacted token"],
        [Redacted.make(valid), { metricsPath: false }, "there is no metrics route to protect (metricsPath: false)"]
      ]
      for (const [token, more, message] of cases) {
        const said = yield* refused(token, more)
        assert.include(said, `metricsToken: invalid metricsToken: ${message}`)
        assert.notInclude(said, "0123456789abcd")
        assert.notInclude(said, "short-token")
      }
    })
  )

  it.effect("serve's own options too", () =>
    Effect.gen(function* () {
      const pathOf = (options: Gateway.ServeOptions) =>
        Effect.gen(function* () {
          const services = yield* mockServices
          const error = yield* Effect.flip(Layer.build(Gateway.serve(options).pipe(Layer.provide(services))))
          return error._tag === "OptionError" ? error.path : error._tag
        }).pipe(Effect.scoped)
      assert.strictEqual(yield* pathOf({ allowAnonymous: true, port: 70000 }), "port")
      assert.strictEqual(yield* pathOf({ allowAnonymous: true, port: 1.5 }), "port")
      assert.strictEqual(yield* pathOf({ allowAnonymous: true, host: "" }), "host")
      assert.strictEqual(yield* pathOf({ allowAnonymous: true, maxHeaderBytes: 10 }), "maxHeaderBytes")
      assert.strictEqual(yield* pathOf({ allowAnonymous: true, requestTimeout: 0 }), "requestTimeout")
      assert.strictEqual(yield* pathOf({ allowAnonymous: true, requestTimeout: null } as never), "requestTimeout")
      assert.strictEqual(yield* pathOf({ allowAnonymous: true, port: null } as never), "port")
      // Not read as false unsaid: "true" from an environment variable would turn request logs off.
      assert.strictEqual(yield* pathOf({ allowAnonymous: true, logRequests: "true" } as never), "logRequests")
      assert.strictEqual(yield* pathOf({ allowAnonymous: true, logRequests: null } as never), "logRequests")
      // A JavaScript caller's null or array: the options named, not a TypeError thrown as a defect.
      assert.strictEqual(yield* pathOf(null as never), "(options)")
      assert.strictEqual(yield* pathOf([] as never), "(options)")
    })
  )

  it.effect("a host refused is shown as given: a stray space or an empty one is seen, not 'got a string'", () =>
    Effect.gen(function* () {
      const messageOf = (host: unknown) =>
        Effect.gen(function* () {
          const services = yield* mockServices
          const error = yield* Effect.flip(
            Layer.build(Gateway.serve({ allowAnonymous: true, host } as never).pipe(Layer.provide(services)))
          )
          return error.message
        }).pipe(Effect.scoped)
      assert.strictEqual(
        yield* messageOf(" 0.0.0.0"),
        'invalid host: expected a host name or address such as "127.0.0.1", got " 0.0.0.0"'
      )
      assert.strictEqual(
        yield* messageOf(""),
        'invalid host: expected a host name or address such as "127.0.0.1", got ""'
      )
      assert.strictEqual(
        yield* messageOf(4000),
        'invalid host: expected a host name or address such as "127.0.0.1", got 4000'
      )
      assert.isBelow((yield* messageOf(` ${"h".repeat(10_000)}`)).length, 200)
    })
  )

  it.live("serve's timeouts are whole milliseconds below Node's timer limit", () =>
    Effect.gen(function* () {
      const serveWith = (options: Gateway.ServeOptions) =>
        Effect.gen(function* () {
          const services = yield* mockServices
          const built = yield* Layer.build(
            Gateway.serve({ allowAnonymous: true, port: 0, ...options }).pipe(Layer.provide(services))
          ).pipe(Effect.exit)
          if (built._tag === "Failure") {
            const error = Cause.squash(built.cause)
            return error instanceof Input.OptionError ? `${error.path}: ${error.message}` : String(error)
          }
          const address = Context.get(built.value, HttpServer.HttpServer).address
          const port = address._tag === "UnixPathAddress" ? 0 : address.port
          const response = yield* Effect.promise(() => fetch(`http://127.0.0.1:${port}/healthz`))
          return `status ${response.status}`
        }).pipe(Effect.scoped)
      // A fraction of a millisecond is rounded up: Node's server takes only whole milliseconds.
      assert.strictEqual(yield* serveWith({ requestTimeout: 5000.5, keepAliveTimeout: "1500500 micros" }), "status 200")
      // 1 ms to receive a request: Node's own deadline answers 408 (or the request makes it in time).
      assert.include(["status 200", "status 408"], yield* serveWith({ requestTimeout: 0.5 }))
      // Above 2^31-1 ms, Node refuses the value or fires the timer at once: refused, naming the field.
      const tooLong = "expected at most 2147483647 ms (about 24.9 days)"
      assert.strictEqual(
        yield* serveWith({ requestTimeout: 1e308 }),
        `requestTimeout: invalid requestTimeout: ${tooLong}, got 1e+308`
      )
      assert.strictEqual(
        yield* serveWith({ requestTimeout: "100 weeks" }),
        `requestTimeout: invalid requestTimeout: ${tooLong}, got "100 weeks"`
      )
      // A write timeout of nothing would close every connection with a byte queued.
      for (const writeTimeout of [0, Number.NaN, -1, "soon", 1e308] as ReadonlyArray<Duration.Input>) {
        assert.match(yield* serveWith({ writeTimeout }), /^writeTimeout: invalid writeTimeout: /, String(writeTimeout))
      }
      assert.strictEqual(yield* serveWith({ writeTimeout: 0.5 }), "status 200")
      // Node's idle timer is keepAliveTimeout plus 1 second: that sum is what must fit.
      assert.strictEqual(
        yield* serveWith({ keepAliveTimeout: 2 ** 31 - 1 }),
        "keepAliveTimeout: invalid keepAliveTimeout: expected at most 2147482647 ms (about 24.9 days), got 2147483647"
      )
      const warnings: Array<string> = []
      const onWarning = (warning: Error) => warnings.push(warning.name)
      process.on("warning", onWarning)
      assert.strictEqual(
        yield* serveWith({ requestTimeout: 2 ** 31 - 1, keepAliveTimeout: 2 ** 31 - 1001 }),
        "status 200"
      )
      yield* Effect.sleep("20 millis")
      process.off("warning", onWarning)
      assert.notInclude(warnings, "TimeoutOverflowWarning")
    })
  )
})

describe("Gateway with the key store of gateway/keys", () => {
  it.live("a key's token budget refuses the request that could exceed it, naming scope, spend and limit", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const secret = "sk-budget-test-0a1b2c3d4e5f"
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        keyLayer: KeyStore.layerMemory({
          keys: [{ id: "small", sha256: KeyStore.hashSecret(secret), budget: { tokens: 100 } }]
        })
      })
      const client = gw.client(secret)
      const ok = yield* Harness.call(() =>
        client.chat.completions.create({ model: "d-a", messages: [{ role: "user", content: "hi" }], max_tokens: 20 })
      )
      assert.strictEqual(ok.choices[0]!.message.content, "Hello wörld!")
      const refused = yield* Harness.failing(() =>
        client.chat.completions.create({ model: "d-a", messages: [{ role: "user", content: "hi" }], max_tokens: 500 })
      )
      assert.strictEqual(refused.status, 429)
      assert.strictEqual(refused.code, "budget_exceeded")
      const budget = (
        refused.body as { budget: { scope: string; id: string; unit: string; spent: number; limit: number } }
      ).budget
      assert.deepStrictEqual([budget.scope, budget.id, budget.unit, budget.limit], ["key", "small", "tokens", 100])
      // The first call settled at its real usage (18 tokens), not its reservation.
      assert.strictEqual(budget.spent, 18)
      assert.strictEqual((yield* upstream.requests).length, 1)
      const unknown = yield* Harness.failing(() => gw.client("sk-nope").models.list())
      assert.strictEqual(unknown.status, 401)
      // /metrics shows what is left of the key's budget (its id, never its secret).
      const metrics = yield* Effect.promise(() => fetch(`${gw.url}/metrics`).then((r) => r.text()))
      assert.match(metrics, /orchestra_gateway_budget_remaining\{[^}]*key="small"[^}]*\} 82/)
      assert.notInclude(metrics, secret)
    })
  )
})
