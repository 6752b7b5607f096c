/**
 * Refusals and failures as the official client sees them: the status, the OpenAI-shaped
 * body, `Retry-After`; the key store's reservation released whenever a call fails.
 */
import { createServer } from "node:http"
import { connect } from "node:net"
import { NodeHttpServer } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Layer, Redacted } from "effect"
import { HttpRouter, HttpServer, HttpServerResponse } from "effect/http"
import OpenAI from "openai"
import { RateLimiter } from "effect/persistence"
import { CircuitOpenError, FallbackExhaustedError, ModelError } from "../../src/AiError.js"
import * as Gateway from "../../src/Gateway.js"
import * as Errors from "../../src/gateway/errors.js"
import * as Local from "../../src/Model/Local.js"
import * as Mock from "../../src/Model/Mock.js"
import * as Ollama from "../../src/Model/Ollama.js"
import * as Orchestra from "../../src/Orchestra.js"
import * as UndiciHttpClient from "../../src/UndiciHttpClient.js"
import * as Server from "../utils/httpServer.js"
import * as Harness from "./harness.js"
import * as Up from "./upstream.js"

const hi = [{ role: "user" as const, content: "hi" }]

const keys = () =>
  Harness.keyStore(
    {
      "sk-alice": { id: "alice", name: "Alice" },
      "sk-bob": { id: "bob", name: "Bob", allowedModels: ["d-b"] },
      "sk-carol": { id: "carol", name: "Carol", allowedModels: ["b/b-large", "a/*", "b/b-model"] },
      "sk-broke": { id: "broke", name: "Broke", team: "t1" },
      "sk-busy": { id: "busy", name: "Busy" },
      "sk-star": { id: "star", name: "Star", allowedModels: ["*"] }
    },
    (key) =>
      key.id === "broke"
        ? Gateway.gatewayError("BudgetExceeded", "the budget of team t1 is spent: 10.02 of 10 USD", {
            scope: "team",
            scopeId: "t1",
            unit: "usd",
            spent: 10.02,
            limit: 10
          })
        : key.id === "busy"
          ? Gateway.gatewayError("RateLimited", "key busy: 60 requests per minute", { retryAfter: Duration.seconds(7) })
          : undefined
  )

describe("Gateway: keys", () => {
  it.live("401 for a missing or unknown key; the key never appears in the answer", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const { service } = keys()
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service })
      const bad = yield* Harness.failing(() =>
        gw.client("sk-wrong-0123456789").chat.completions.create({ model: "d-a", messages: hi })
      )
      assert.strictEqual(bad.status, 401)
      assert.strictEqual(bad.type, "authentication_error")
      assert.strictEqual(bad.code, "invalid_api_key")
      assert.notInclude(JSON.stringify(bad.body), "sk-wrong-0123456789")
      const models = yield* Harness.failing(() => gw.client("sk-nope").models.list())
      assert.strictEqual(models.status, 401)
      const none = yield* Effect.promise(() =>
        fetch(`${gw.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model: "d-a", messages: hi }) })
      )
      assert.strictEqual(none.status, 401)
      assert.strictEqual(
        ((yield* Effect.promise(() => none.json())) as { error: { code: string } }).error.code,
        "invalid_api_key"
      )
      assert.strictEqual((yield* upstream.requests).length, 0)
    })
  )

  it.live("a 401 carries the Bearer challenge (WWW-Authenticate) that HTTP requires of it, as /metrics' does", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const { service } = keys()
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service })
      const client = gw.client("sk-wrong-0123456789")
      for (const refused of [
        yield* Harness.failing(() => client.chat.completions.create({ model: "d-a", messages: hi })),
        yield* Harness.failing(() => client.embeddings.create({ model: "d-a", input: "x" })),
        yield* Harness.failing(() => client.models.list()),
        yield* Harness.failing(() => client.models.retrieve("d-a"))
      ]) {
        assert.strictEqual(refused.status, 401)
        assert.strictEqual(refused.headers?.get("www-authenticate"), 'Bearer realm="orchestra"')
      }
      // Other refusals carry none.
      const forbidden = yield* Harness.failing(() =>
        gw.client("sk-bob").chat.completions.create({ model: "d-a", messages: hi })
      )
      assert.strictEqual(forbidden.status, 403)
      assert.isNull(forbidden.headers?.get("www-authenticate") ?? null)
    })
  )

  it.live("403 for a model the key may not use; the model list shows only what it may use", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const { service } = keys()
      const gw = yield* Harness.make({ upstreams: { a: upstream.url, b: upstream.url }, keys: service })
      const refused = yield* Harness.failing(() =>
        gw.client("sk-bob").chat.completions.create({ model: "d-a", messages: hi })
      )
      assert.strictEqual(refused.status, 403)
      assert.strictEqual(refused.code, "model_not_allowed")
      assert.strictEqual(refused.param, "model")
      const listed = yield* Harness.call(() => gw.client("sk-bob").models.list())
      assert.deepStrictEqual(
        listed.data.map((m) => m.id),
        ["d-b"]
      )
      const all = yield* Harness.call(() => gw.client("sk-alice").models.list())
      assert.deepStrictEqual(
        all.data.map((m) => m.id),
        ["d-a", "d-b", "a/a-model", "b/b-model"]
      )
      // A provider model the key names is one it may use, though not its provider's default: listed, and found.
      const named = yield* Harness.call(() => gw.client("sk-carol").models.list())
      assert.deepStrictEqual(
        named.data.map((m) => [m.id, m.owned_by]),
        [
          ["a/a-model", "a"],
          ["b/b-model", "b"],
          ["b/b-large", "b"]
        ]
      )
      // A model that does not exist is told with the names this key may use, not every domain of the gateway.
      for (const [route, unknown] of [
        ["chat", (): Promise<unknown> => gw.client("sk-bob").chat.completions.create({ model: "gpt-9", messages: hi })],
        ["embeddings", (): Promise<unknown> => gw.client("sk-bob").embeddings.create({ model: "gpt-9", input: "x" })]
      ] as const) {
        const missing = yield* Harness.failing(unknown)
        assert.deepStrictEqual([missing.status, missing.code], [404, "model_not_found"], route)
        assert.include(missing.message, '"gpt-9"', route)
        assert.include(missing.message, "d-b", route)
        assert.notInclude(missing.message, "d-a", route)
      }
      const missingForAll = yield* Harness.failing(() =>
        gw.client("sk-alice").chat.completions.create({ model: "gpt-9", messages: hi })
      )
      assert.include(missingForAll.message, "d-a")
      // A key allowed every model ("*") is told every model, as a key without allowedModels.
      const missingForStar = yield* Harness.failing(() =>
        gw.client("sk-star").chat.completions.create({ model: "gpt-9", messages: hi })
      )
      assert.include(missingForStar.message, "d-a")
      assert.include(missingForStar.message, "d-b")
      const found = yield* Harness.call(() => gw.client("sk-carol").models.retrieve("b/b-large"))
      assert.strictEqual(found.id, "b/b-large")
      const answered = yield* Harness.call(() =>
        gw.client("sk-carol").chat.completions.create({ model: "b/b-large", messages: hi })
      )
      assert.strictEqual(answered.choices[0]!.message.role, "assistant")
    })
  )

  it.live(
    "429 with Retry-After when the key's limit refuses; the budget refusal names its scope, spend and limit",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const { service, log } = keys()
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service })
        const limited = yield* Harness.failing(() =>
          gw.client("sk-busy").chat.completions.create({ model: "d-a", messages: hi })
        )
        assert.strictEqual(limited.status, 429)
        assert.strictEqual(limited.headers?.get("retry-after"), "7")
        assert.strictEqual(limited.code, "rate_limit_exceeded")
        const broke = yield* Harness.failing(() =>
          gw.client("sk-broke").chat.completions.create({ model: "d-a", messages: hi })
        )
        assert.strictEqual(broke.status, 429)
        assert.strictEqual(broke.type, "insufficient_quota")
        assert.strictEqual(broke.code, "budget_exceeded")
        assert.include(broke.message, "team t1")
        assert.deepStrictEqual((broke.body as { budget: unknown }).budget, {
          scope: "team",
          id: "t1",
          unit: "usd",
          spent: 10.02,
          limit: 10
        })
        assert.strictEqual(broke.headers?.get("x-should-retry"), "false")
        assert.strictEqual((yield* upstream.requests).length, 0)
        assert.strictEqual(log.reserved.length, 0)
      })
  )

  it.live(
    "reserves before the call from max_tokens and the input, settles with the real usage, releases on failure",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(
          Server.script(
            (_, res) => Server.json(res, 200, Up.completion("ok")),
            (_, res) => Server.json(res, 400, { error: { message: "bad things", type: "invalid_request_error" } })
          )
        )
        const { service, log } = keys()
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service })
        yield* Harness.call(() =>
          gw.client("sk-alice").chat.completions.create({
            model: "d-a",
            messages: [{ role: "user", content: "12345678" }],
            max_tokens: 50
          })
        )
        // 8 characters at 3 a token, plus 8 for the request and 4 for its one message.
        assert.deepStrictEqual(log.reserved, [{ key: "alice", model: "d-a", inputTokens: 15, maxOutputTokens: 50 }])
        assert.deepStrictEqual(log.settled, [{ id: 0, inputTokens: 11, outputTokens: 7 }])
        const failed = yield* Harness.failing(() =>
          gw.client("sk-alice").chat.completions.create({ model: "d-a", messages: hi })
        )
        assert.strictEqual(failed.status, 400)
        assert.strictEqual(log.reserved[1]!.maxOutputTokens, 4096)
        assert.deepStrictEqual(log.released, [1])
        assert.strictEqual(log.settled.length, 1)
      })
  )
})

describe("Gateway: a bug", () => {
  it.live("a defect (here in a key store) is an OpenAI-shaped 500, and the gateway goes on serving", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const { service } = keys()
      const buggy: Gateway.KeyStoreService = {
        ...service,
        authenticate: (bearer) =>
          bearer !== undefined && Redacted.value(bearer) === "sk-bug"
            ? Effect.die(new Error("a bug"))
            : service.authenticate(bearer)
      }
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: buggy })
      const failed = yield* Harness.failing(() =>
        gw.client("sk-bug").chat.completions.create({ model: "d-a", messages: hi })
      )
      assert.deepStrictEqual([failed.status, failed.type, failed.code], [500, "server_error", "internal_error"])
      const ok = yield* Harness.call(() =>
        gw.client("sk-alice").chat.completions.create({ model: "d-a", messages: hi })
      )
      assert.strictEqual(ok.object, "chat.completion")
      assert.strictEqual(gw.gateway.inFlight(), 0)
    })
  )

  it.live(
    "a defect on the model list or a model is an OpenAI-shaped 500 too, with its request id, logged and counted",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const { service } = keys()
        const buggy: Gateway.KeyStoreService = { ...service, authenticate: () => Effect.die(new Error("a bug")) }
        const logs: Array<string> = []
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: buggy, logs })
        const client = gw.client("sk-alice")
        for (const failed of [
          yield* Harness.failing(() => client.models.list()),
          yield* Harness.failing(() => client.models.retrieve("d-a"))
        ]) {
          assert.deepStrictEqual([failed.status, failed.type, failed.code], [500, "server_error", "internal_error"])
          const id = failed.headers?.get("x-request-id")
          assert.match(id ?? "", /^req_/)
          assert.isTrue(
            logs.some((line) => line.includes("gateway: unexpected failure") && line.includes(id!)),
            logs.join("\n")
          )
        }
        assert.include(yield* gw.metrics, 'orchestra_gateway_requests_total{route="models",status="500"} 2')
      })
  )
})

describe("Gateway: requests refused before any provider", () => {
  it.live(
    "404 for an unknown model or path, 405 for a wrong method, 413 beyond maxBodyBytes, 400 naming the parameter",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, gateway: { maxBodyBytes: 4096 } })
        const client = gw.client()
        const unknown = yield* Harness.failing(() => client.chat.completions.create({ model: "gpt-9", messages: hi }))
        assert.deepStrictEqual([unknown.status, unknown.code, unknown.param], [404, "model_not_found", "model"])
        const noProvider = yield* Harness.failing(() => client.chat.completions.create({ model: "zz/x", messages: hi }))
        assert.strictEqual(noProvider.status, 404)
        const big = yield* Harness.failing(() =>
          client.chat.completions.create({ model: "d-a", messages: [{ role: "user", content: "x".repeat(5000) }] })
        )
        assert.strictEqual(big.status, 413)
        const param = yield* Harness.failing(() =>
          client.chat.completions.create({ model: "d-a", messages: hi, temperature: 3 })
        )
        assert.deepStrictEqual([param.status, param.param, param.type], [400, "temperature", "invalid_request_error"])
        const path = yield* Effect.promise(() => fetch(`${gw.url}/v1/completions`, { method: "POST", body: "{}" }))
        assert.strictEqual(path.status, 404)
        assert.strictEqual(
          ((yield* Effect.promise(() => path.json())) as { error: { code: string } }).error.code,
          "unknown_url"
        )
        // Outside the prefix too (the gateway's own server), and the root itself.
        for (const outside of ["/v2/chat/completions", "/", "/favicon.ico"]) {
          const answer = yield* Effect.promise(() => fetch(`${gw.url}${outside}`))
          assert.strictEqual(answer.status, 404, outside)
          const body = (yield* Effect.promise(() => answer.json())) as { error: { code: string; type: string } }
          assert.deepStrictEqual([body.error.code, body.error.type], ["unknown_url", "invalid_request_error"], outside)
        }
        const method = yield* Effect.promise(() => fetch(`${gw.url}/v1/chat/completions`))
        assert.strictEqual(method.status, 405)
        assert.strictEqual(method.headers.get("allow"), "POST")
        const broken = yield* Effect.promise(() =>
          fetch(`${gw.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: "{not json"
          })
        )
        assert.strictEqual(broken.status, 400)
        assert.strictEqual(
          ((yield* Effect.promise(() => broken.json())) as { error: { code: string } }).error.code,
          "invalid_json"
        )
        assert.strictEqual((yield* upstream.requests).length, 0)
      })
  )
})

describe("Gateway: a path that is not valid percent-encoding", () => {
  it.live("is a 400 naming the path, OpenAI-shaped, with a request id and counted, not the router's empty 404", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      for (const [method, path] of [
        ["POST", "/v1/chat%ZZ"],
        ["GET", "/v1/models/%E0%A4%A"],
        ["GET", "/healthz%"],
        ["HEAD", "/v1/models%zz"]
      ] as const) {
        const answer = yield* Effect.promise(() => fetch(`${gw.url}${path}`, { method }))
        assert.strictEqual(answer.status, 400, path)
        assert.match(answer.headers.get("x-request-id") ?? "", /^req_/, path)
        if (method === "HEAD") continue
        const body = (yield* Effect.promise(() => answer.json())) as {
          error: { code: string; type: string; message: string; param: string | null }
        }
        assert.deepStrictEqual([body.error.type, body.error.code], ["invalid_request_error", "invalid_url"], path)
        assert.include(body.error.message, path)
      }
      // A path with valid escapes is still routed (a model id with a slash, encoded).
      const encoded = yield* Effect.promise(() => fetch(`${gw.url}/v1/models/a%2Fa-model`))
      assert.strictEqual(encoded.status, 200)
      assert.lengthOf(yield* upstream.requests, 0)
      assert.include(yield* gw.metrics, 'orchestra_gateway_requests_total{route="other",status="400"} 4')
    })
  )

  it.live(
    "under Gateway.layer in an application's router: the gateway's paths only (their case ignored, as the router ignores it), the application's 404s its own",
    () =>
      Effect.gen(function* () {
        const mine = Layer.effectDiscard(
          Effect.flatMap(HttpRouter.HttpRouter, (router) =>
            router.add("GET", "/app/hello", HttpServerResponse.text("hello"))
          )
        )
        const manager = Orchestra.layer({
          providers: { a: Mock.layer({ name: "a", respond: () => "a" }) },
          domains: [{ name: "d-a", provider: "a" }]
        })
        const context = yield* Layer.build(
          HttpRouter.serve(Layer.mergeAll(Gateway.layer({ prefix: "/llm/v1", allowAnonymous: true }), mine), {
            disableLogger: true,
            disableListenLog: true
          }).pipe(
            Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })),
            Layer.provide(manager)
          )
        )
        const address = Context.get(context, HttpServer.HttpServer).address as { readonly port: number }
        const get = (path: string) =>
          Effect.promise(async () => {
            const response = await fetch(`http://127.0.0.1:${address.port}${path}`)
            return [response.status, await response.text()] as const
          })
        const [status, body] = yield* get("/llm/v1/models%ZZ")
        assert.strictEqual(status, 400)
        assert.strictEqual((JSON.parse(body) as { error: { code: string } }).error.code, "invalid_url")
        // The router matches `/LLM/V1/models` as `/llm/v1/models`: its undecodable form is the gateway's too.
        assert.strictEqual((yield* get("/LLM/V1/models"))[0], 200)
        const [upper, upperBody] = yield* get("/LLM/V1/models%ZZ")
        assert.strictEqual(upper, 400, upperBody)
        assert.strictEqual((JSON.parse(upperBody) as { error: { code: string } }).error.code, "invalid_url")
        assert.deepStrictEqual(yield* get("/app/hello"), [200, "hello"])
        assert.deepStrictEqual(yield* get("/app/hello%ZZ"), [404, ""])
        assert.deepStrictEqual(yield* get("/llm/v2%ZZ"), [404, ""])
      }).pipe(Effect.scoped)
  )
})

describe("Gateway: a body that is not sent as JSON", () => {
  it.live(
    "is a 415 naming its Content-Type (or Content-Encoding), never sent upstream: a web page can post text/plain or a form to an open gateway without asking first",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
        const body = JSON.stringify({ model: "d-a", messages: hi })
        const post = (headers: Record<string, string>, payload: BodyInit = body) =>
          Effect.promise(async () => {
            const response = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", headers, body: payload })
            return {
              status: response.status,
              body: (await response.json()) as { error: { code: string; message: string } }
            }
          })
        for (const [headers, payload, code, said] of [
          [
            { "content-type": "text/plain;charset=UTF-8" },
            body,
            "unsupported_content_type",
            "text/plain;charset=UTF-8"
          ],
          [
            { "content-type": "application/x-www-form-urlencoded" },
            body,
            "unsupported_content_type",
            "application/x-www-form-urlencoded"
          ],
          // What a browser sends for a Blob without a type: no Content-Type at all.
          [{}, new Blob([body]), "unsupported_content_type", "none"],
          [{ "content-type": "application/jsonx" }, body, "unsupported_content_type", "application/jsonx"],
          [
            { "content-type": "application/json", "content-encoding": "gzip" },
            body,
            "unsupported_content_encoding",
            "gzip"
          ]
        ] as const) {
          const refused = yield* post(headers, payload)
          assert.strictEqual(refused.status, 415, JSON.stringify(headers))
          assert.strictEqual(refused.body.error.code, code, JSON.stringify(headers))
          assert.include(refused.body.error.message, said)
        }
        // Embeddings too.
        const embeddings = yield* Effect.promise(() =>
          fetch(`${gw.url}/v1/embeddings`, {
            method: "POST",
            headers: { "content-type": "text/plain" },
            body: JSON.stringify({ model: "d-a", input: "x" })
          })
        )
        assert.strictEqual(embeddings.status, 415)
        assert.strictEqual((yield* upstream.requests).length, 0)
        // JSON with its parameters, in any case, and an identity encoding, are read.
        for (const type of ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"]) {
          const answered = yield* post({ "content-type": type, "content-encoding": "identity" })
          assert.strictEqual(answered.status, 200, type)
        }
        assert.include(yield* gw.metrics, 'orchestra_gateway_requests_total{route="chat",status="415"} 5')
      })
  )
})

describe("Gateway: wrong methods on the routes that are not the API's", () => {
  it.live(
    "a wrong method on /healthz, /readyz, /metrics or /v1/models/{id} is a 405 with Allow: GET, HEAD, not a 404",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
        for (const path of ["/healthz", "/readyz", "/metrics", "/v1/models/d-a"]) {
          const answer = yield* Effect.promise(() => fetch(`${gw.url}${path}`, { method: "DELETE" }))
          assert.strictEqual(answer.status, 405, path)
          assert.strictEqual(answer.headers.get("allow"), "GET, HEAD", path)
          const body = (yield* Effect.promise(() => answer.json())) as { error: { code: string } }
          assert.strictEqual(body.error.code, "method_not_allowed", path)
        }
        assert.strictEqual((yield* upstream.requests).length, 0)
      })
  )

  it.live(
    "a 404 or 405 says back at most 64 characters of the path, as every other refusal says a client's value",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
        for (const [method, path, status] of [
          ["GET", `/v1/${"x".repeat(8000)}`, 404],
          ["DELETE", `/v1/models/${"y".repeat(8000)}`, 405]
        ] as const) {
          const answer = yield* Effect.promise(() => fetch(`${gw.url}${path}`, { method }))
          assert.strictEqual(answer.status, status)
          const { error } = (yield* Effect.promise(() => answer.json())) as { error: { message: string } }
          assert.isBelow(error.message.length, 200, error.message.slice(0, 100))
          assert.include(error.message, `${path.slice(0, 64)}...`)
        }
      })
  )

  it.live("a model id with a wildcard is no model: GET /v1/models/a/* is a 404, a chat for it a 404 sent nowhere", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      for (const id of ["a/*", "a/a-*", "a/*/x"]) {
        const answer = yield* Effect.promise(() => fetch(`${gw.url}/v1/models/${id}`))
        assert.strictEqual(answer.status, 404, id)
        const { error } = (yield* Effect.promise(() => answer.json())) as { error: { code: string } }
        assert.strictEqual(error.code, "model_not_found", id)
        const chat = yield* Harness.failing(() => gw.client().chat.completions.create({ model: id, messages: hi }))
        assert.deepStrictEqual([chat.status, chat.code], [404, "model_not_found"], id)
      }
      assert.strictEqual((yield* Effect.promise(() => fetch(`${gw.url}/v1/models/a/a-model`))).status, 200)
      assert.strictEqual((yield* upstream.requests).length, 0)
    })
  )

  it.live("HEAD on a GET route answers as GET without a body (uptime monitors probe with HEAD), not a 405", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      for (const path of ["/healthz", "/readyz", "/metrics", "/v1/models", "/v1/models/d-a", "/v1/models/a/a-model"]) {
        const get = yield* Effect.promise(() => fetch(`${gw.url}${path}`))
        const head = yield* Effect.promise(() => fetch(`${gw.url}${path}`, { method: "HEAD" }))
        assert.strictEqual(head.status, 200, path)
        assert.strictEqual(head.headers.get("content-type"), get.headers.get("content-type"), path)
        assert.strictEqual(yield* Effect.promise(() => head.text()), "", path)
      }
      // An unknown model is the same 404 either way.
      const missing = yield* Effect.promise(() => fetch(`${gw.url}/v1/models/nope`, { method: "HEAD" }))
      assert.strictEqual(missing.status, 404)
      // HEAD is no method of the POST routes.
      const chat = yield* Effect.promise(() => fetch(`${gw.url}/v1/chat/completions`, { method: "HEAD" }))
      assert.deepStrictEqual([chat.status, chat.headers.get("allow")], [405, "POST"])
      assert.strictEqual((yield* upstream.requests).length, 0)
    })
  )

  it.live("a wrong method on a route's path with a trailing slash (which the route serves) is a 405 too", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      for (const [path, allow] of [
        ["/v1/chat/completions/", "POST"],
        ["/v1/embeddings/", "POST"],
        ["/healthz/", "GET, HEAD"],
        ["/v1/models/", "GET, HEAD"]
      ] as const) {
        const answer = yield* Effect.promise(() => fetch(`${gw.url}${path}?x=1`, { method: "PUT" }))
        assert.deepStrictEqual([answer.status, answer.headers.get("allow")], [405, allow], path)
      }
      const gone = yield* Effect.promise(() => fetch(`${gw.url}/v1/nowhere/`, { method: "PUT" }))
      assert.strictEqual(gone.status, 404)
    })
  )
})

describe("Gateway: requests the local model refuses", () => {
  it.live("an OpenAI seed the local sampler cannot honour (past 2^32-1, negative) is a 400 naming seed", () =>
    Effect.gen(function* () {
      const gw = yield* Harness.make({ upstreams: {}, localProviders: { local: Local.layer() } })
      const client = gw.client()
      const ask = (seed: number) =>
        client.chat.completions.create({ model: "d-local", messages: hi, max_tokens: 4, temperature: 1, seed })
      const answer = yield* Harness.call(() => ask(2 ** 32 - 1))
      assert.strictEqual(answer.choices[0]?.finish_reason, "length")
      for (const seed of [2 ** 32, 2 ** 32 + 7, -1]) {
        const refused = yield* Harness.failing(() => ask(seed))
        assert.deepStrictEqual([refused.status, refused.param, refused.type], [400, "seed", "invalid_request_error"])
      }
    })
  )
})

/** Writes `payload` on a raw connection; the first bytes answered (the status line) and when they came. */
const raw = (url: string, payload: string) =>
  Effect.callback<{ readonly status: string; readonly ms: number }>((resume) => {
    const started = performance.now()
    const socket = connect(Number(new URL(url).port), "127.0.0.1")
    let answer = ""
    socket.on("data", (data: Buffer) => {
      answer += data.toString("latin1")
      if (answer.includes("\r\n")) {
        resume(Effect.succeed({ status: answer.slice(0, answer.indexOf("\r\n")), ms: performance.now() - started }))
        socket.destroy()
      }
    })
    socket.on("close", () => resume(Effect.succeed({ status: answer, ms: performance.now() - started })))
    socket.write(payload)
    return Effect.sync(() => socket.destroy())
  })

const chatHead = (length: number) =>
  `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n\r\n`

describe("Gateway: slow and oversized bodies", () => {
  it.live("a body that never arrives is a 408 soon after requestTimeout, not at Node's 30 s check", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, gateway: { requestTimeout: "1 second" } })
      const slow = yield* raw(gw.url, `${chatHead(500)}{`)
      assert.strictEqual(slow.status, "HTTP/1.1 408 Request Timeout")
      // Generous: the point is the order of magnitude (Node alone answers at its next 30 s check).
      assert.isBelow(slow.ms, 10_000)
    })
  )

  it.live("a declared Content-Length over maxBodyBytes is a 413 at once, without waiting for the body", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        gateway: { maxBodyBytes: 4096, requestTimeout: "1 minute" }
      })
      const big = yield* raw(gw.url, `${chatHead(100_000)}{`)
      assert.strictEqual(big.status, "HTTP/1.1 413 Payload Too Large")
    })
  )
})

describe("Gateway: upstream failures", () => {
  it.live("an upstream 500 is a 502, its 429 a 429 with its Retry-After, a deadline a 504, an open breaker a 503", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((request, res) => {
        const prompt = (request.json as { messages: Array<{ content: string }> }).messages[0]!.content
        if (prompt === "500") return Server.json(res, 500, { error: { message: "boom" } })
        if (prompt === "429") return Server.json(res, 429, { error: { message: "slow down" } }, { "retry-after": "3" })
        if (prompt === "hang") return Server.hang()
        return Server.json(res, 200, Up.completion("ok"))
      })
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        // Only the hung upstream meets it: 300 ms let a loaded machine answer the healthy 500 and 429 with a 504.
        executor: { timeout: "3 seconds" },
        breakers: { failMax: 3, resetTimeout: "1 minute" }
      })
      const ask = (content: string) =>
        Harness.failing(() =>
          gw.client().chat.completions.create({ model: "d-a", messages: [{ role: "user", content }] })
        )
      const upstream500 = yield* ask("500")
      assert.deepStrictEqual([upstream500.status, upstream500.type], [502, "upstream_error"])
      const upstream429 = yield* ask("429")
      assert.deepStrictEqual([upstream429.status, upstream429.headers?.get("retry-after")], [429, "3"])
      const hung = yield* ask("hang")
      assert.deepStrictEqual([hung.status, hung.code], [504, "request_timeout"])
      const open = yield* ask("ok")
      assert.deepStrictEqual([open.status, open.code], [503, "circuit_open"])
      assert.isString(open.headers?.get("retry-after"))
      assert.notInclude(JSON.stringify([upstream500, upstream429, hung, open].map((e) => e.body)), Harness.UPSTREAM_KEY)
    })
  )

  it.live("a 429's wait goes out in milliseconds too (retry-after-ms), which the official client reads first", () =>
    Effect.gen(function* () {
      let calls = 0
      const upstream = yield* Server.make((_request, res) => {
        calls += 1
        if (calls === 1) {
          return Server.json(res, 429, { error: { message: "slow down" } }, { "retry-after-ms": "200" })
        }
        return Server.json(res, 200, Up.completion("ok"))
      })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const limited = yield* Harness.failing(() => gw.client().chat.completions.create({ model: "d-a", messages: hi }))
      // Retry-After is whole seconds (at least 1): alone, it makes a client wait 1 s for a 200 ms wait.
      assert.deepStrictEqual(
        [limited.status, limited.headers?.get("retry-after"), limited.headers?.get("retry-after-ms")],
        [429, "1", "200"]
      )
      // An open breaker, a shutdown, a key's limit: every Retry-After has its milliseconds beside it.
      const open = Errors.toWire(
        new CircuitOpenError({ breaker: "a", state: "open", retryAfter: Duration.millis(1_500) })
      )
      assert.deepStrictEqual([open.retryAfterSeconds, open.retryAfterMs], [2, 1_500])
      const busy = Errors.toWire(Gateway.gatewayError("RateLimited", "busy", { retryAfter: Duration.millis(59_250.4) }))
      assert.deepStrictEqual([busy.retryAfterSeconds, busy.retryAfterMs], [60, 59_251])
      const bare = Errors.toWire(new ModelError({ reason: "Overloaded", message: "busy", provider: "a" }))
      assert.deepStrictEqual([bare.status, bare.retryAfterSeconds, bare.retryAfterMs], [503, 1, 1_000])
      // No wait, no header: a 400 has neither.
      const bad = Errors.toWire(Gateway.gatewayError("InvalidRequest", "bad"))
      assert.deepStrictEqual([bad.retryAfterSeconds, bad.retryAfterMs], [undefined, undefined])
    })
  )

  it.live("an upstream answer over maxResponseBytes is a 502 (the upstream's fault); an upstream 413 stays a 400", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((request, res) => {
        const prompt = (request.json as { messages: Array<{ content: string }> }).messages[0]!.content
        if (prompt === "413") return Server.json(res, 413, { error: { message: "too long" } })
        return Server.json(res, 200, Up.completion("x".repeat(20_000)))
      })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, provider: { maxResponseBytes: 4_096 } })
      const ask = (content: string) =>
        Harness.failing(() =>
          gw.client().chat.completions.create({ model: "d-a", messages: [{ role: "user", content }] })
        )
      const huge = yield* ask("hi")
      assert.deepStrictEqual([huge.status, huge.type, huge.code], [502, "upstream_error", "upstream_bad_response"])
      assert.include(huge.message, "maxResponseBytes")
      const refused = yield* ask("413")
      assert.deepStrictEqual(
        [refused.status, refused.type, refused.code],
        [400, "invalid_request_error", "context_length_exceeded"]
      )
    })
  )

  it.live("a model the upstream does not have is a 404 model_not_found, as an unknown model of the gateway is", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) =>
        Server.json(res, 404, {
          error: {
            message: "The model `gpt-9` does not exist or you do not have access to it.",
            type: "invalid_request_error",
            param: null,
            code: "model_not_found"
          }
        })
      )
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const missing = yield* Harness.failing(() =>
        gw.client().chat.completions.create({ model: "a/gpt-9", messages: hi })
      )
      assert.deepStrictEqual(
        [missing.status, missing.type, missing.code, missing.param],
        [404, "invalid_request_error", "model_not_found", "model"]
      )
    })
  )

  it.live("an upstream 404 that is no error object (a wrong base URL's page) is a 502, not the client's 400", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) => Server.text(res, 404, "404 page not found"))
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const refused = yield* Harness.failing(() => gw.client().chat.completions.create({ model: "d-a", messages: hi }))
      assert.deepStrictEqual(
        [refused.status, refused.type, refused.code, refused.param],
        [502, "upstream_error", "upstream_not_found", null]
      )
      // The upstream's page is the operator's to read (in the gateway's log), not the client's.
      assert.include(refused.message, "answered HTTP 404")
      assert.notInclude(refused.message, "404 page not found")
    })
  )

  it.live("OpenAI's 400 context_length_exceeded keeps its code, which clients check to shorten the conversation", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) =>
        Server.json(res, 400, {
          error: {
            message:
              "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            type: "invalid_request_error",
            param: "messages",
            code: "context_length_exceeded"
          }
        })
      )
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const refused = yield* Harness.failing(() => gw.client().chat.completions.create({ model: "d-a", messages: hi }))
      assert.deepStrictEqual(
        [refused.status, refused.type, refused.code],
        [400, "invalid_request_error", "context_length_exceeded"]
      )
      assert.include(refused.message, "maximum context length is 8192 tokens")
      assert.strictEqual((yield* upstream.requests).length, 1, "neither retried nor sent elsewhere")
    })
  )
})

describe("Gateway: an upstream's error code", () => {
  it.live("reaches the client as upstream_code beside the gateway's own code, streamed or not; a secret never", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((request, res) => {
        const body = request.json as { messages: Array<{ content: string }>; stream?: boolean }
        const prompt = body.messages[0]!.content
        if (prompt === "quota") {
          return Server.json(res, 429, {
            error: {
              message: "You exceeded your current quota",
              type: "insufficient_quota",
              code: "insufficient_quota"
            }
          })
        }
        if (prompt === "rate") {
          return Server.json(res, 429, {
            error: { message: "Rate limit reached", type: "requests", code: "rate_limit_exceeded" }
          })
        }
        if (prompt === "value") {
          return Server.json(res, 400, {
            error: { message: "bad", type: "invalid_request_error", param: "temperature", code: "invalid_value" }
          })
        }
        if (prompt === "secret") {
          return Server.json(res, 400, { error: { message: "bad", code: `k_${Harness.UPSTREAM_KEY}` } })
        }
        return Server.chunked(res, [
          Server.sse([
            { event: "error", data: { error: { message: "busy", type: "server_error", code: "server_busy" } } }
          ])
        ])
      })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, breakers: false })
      const ask = (content: string, stream = false) =>
        Harness.failing(async () => {
          const answer = await gw
            .client()
            .chat.completions.create({ model: "d-a", messages: [{ role: "user", content }], stream })
          if (stream) for await (const _ of answer as AsyncIterable<unknown>) void _
          return answer
        })
      const upstreamCode = (e: Harness.ClientError) => (e.body as { upstream_code?: unknown }).upstream_code
      const quota = yield* ask("quota")
      assert.deepStrictEqual(
        [quota.status, quota.code, upstreamCode(quota)],
        [502, "upstream_unauthorized", "insufficient_quota"]
      )
      const rate = yield* ask("rate")
      assert.deepStrictEqual(
        [rate.status, rate.code, upstreamCode(rate)],
        [429, "upstream_rate_limited", "rate_limit_exceeded"]
      )
      const value = yield* ask("value")
      assert.deepStrictEqual(
        [value.status, value.code, value.param, upstreamCode(value)],
        [400, "invalid_request", "temperature", "invalid_value"]
      )
      const streamed = yield* ask("event", true)
      assert.strictEqual(upstreamCode(streamed), "server_busy")
      const secret = yield* ask("secret")
      assert.isUndefined(upstreamCode(secret))
      assert.notInclude(JSON.stringify(secret.body), Harness.UPSTREAM_KEY)
    })
  )
})

describe("Gateway: an upstream that refuses the gateway's own key", () => {
  it.live("is a 502 with x-should-retry: false: the official client's retries seconds later cannot cure it", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) =>
        Server.json(res, 401, {
          error: { message: "Incorrect API key provided", type: "invalid_request_error", code: "invalid_api_key" }
        })
      )
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, breakers: false })
      // The client's default: two retries of a 5xx, unless the answer says not to.
      const client = new OpenAI({ apiKey: "sk-client", baseURL: `${gw.url}/v1`, maxRetries: 2, timeout: 15_000 })
      const refused = yield* Harness.failing(() => client.chat.completions.create({ model: "d-a", messages: hi }))
      assert.deepStrictEqual([refused.status, refused.code], [502, "upstream_unauthorized"])
      assert.strictEqual(refused.headers?.get("x-should-retry"), "false")
      assert.strictEqual((yield* upstream.requests).length, 1)
    })
  )

  it.live(
    "after a fallback from a provider that was only busy, no x-should-retry: false: a retry may find it free",
    () =>
      Effect.gen(function* () {
        const busy = yield* Server.make((_, res) => Server.json(res, 503, { error: { message: "busy" } }))
        const refusing = yield* Server.make((_, res) =>
          Server.json(res, 401, { error: { message: "Incorrect API key provided", code: "invalid_api_key" } })
        )
        const gw = yield* Harness.make({
          upstreams: { a: busy.url, b: refusing.url },
          breakers: false,
          domains: [
            { name: "d-a", provider: "a", fallback: ["d-b"] },
            { name: "d-b", provider: "b" },
            { name: "d-b2", provider: "b", fallback: ["d-b3"] },
            { name: "d-b3", provider: "b" }
          ]
        })
        const ask = (model: string) =>
          Harness.failing(() => gw.client().chat.completions.create({ model, messages: hi }))
        const chained = yield* ask("d-a")
        assert.deepStrictEqual([chained.status, chained.code], [502, "upstream_unauthorized"])
        assert.isNull(chained.headers?.get("x-should-retry") ?? null)
        // Every step refused the gateway's key: nothing a retry seconds later can change.
        const refused = yield* ask("d-b2")
        assert.strictEqual(refused.headers?.get("x-should-retry"), "false")
      })
  )
})

describe("Gateway: refusals name what the client sent", () => {
  it.live("embeddings over the request limits are a 400 naming input, the field the client sent", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        executor: { requestLimits: { maxEmbedTexts: 2, maxInputChars: 10 } }
      })
      const client = gw.client()
      const many = yield* Harness.failing(() => client.embeddings.create({ model: "d-a", input: ["a", "b", "c"] }))
      assert.deepStrictEqual([many.status, many.param, many.type], [400, "input", "invalid_request_error"])
      assert.include(many.message, "invalid input: 3 texts exceed the limit of 2")
      const long = yield* Harness.failing(() => client.embeddings.create({ model: "d-a", input: "x".repeat(20) }))
      assert.deepStrictEqual([long.status, long.param], [400, "input"])
      assert.include(long.message, "invalid input: the input has 20 characters")
      assert.strictEqual((yield* upstream.requests).length, 0)
    })
  )

  it.live("a role or a content part's type nested deep is a 400 naming it, not a 500", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const deep = `${"[".repeat(100_000)}${"]".repeat(100_000)}`
      const send = (message: string) =>
        Effect.promise(async () => {
          const response = await fetch(`${gw.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: `{"model":"d-a","messages":[${message}]}`
          })
          return { status: response.status, body: (await response.json()) as { error: { param: string } } }
        })
      const role = yield* send(`{"role":${deep},"content":"x"}`)
      assert.deepStrictEqual([role.status, role.body.error.param], [400, "messages[0].role"])
      const part = yield* send(`{"role":"user","content":[{"type":${deep}}]}`)
      assert.deepStrictEqual([part.status, part.body.error.param], [400, "messages[0].content[0].type"])
      assert.strictEqual((yield* upstream.requests).length, 0)
    })
  )

  it.live("a provider's refusal names the OpenAI parameter at the client's index, not the library's field", () =>
    Effect.gen(function* () {
      const ollama = yield* Server.make((_, res) => Server.json(res, 200, {}))
      const gw = yield* Harness.make({
        upstreams: {},
        localProviders: {
          ollama: Ollama.layer({ host: ollama.url, name: "ollama" }).pipe(Layer.provide(UndiciHttpClient.layer))
        }
      })
      const client = gw.client()
      const tools = [{ type: "function" as const, function: { name: "f", parameters: { type: "object" } } }]
      const choice = yield* Harness.failing(() =>
        client.chat.completions.create({ model: "d-ollama", messages: hi, tools, tool_choice: "required" })
      )
      assert.deepStrictEqual([choice.status, choice.param], [400, "tool_choice"])
      assert.include(choice.message, "invalid tool_choice: ")
      const args = yield* Harness.failing(() =>
        client.chat.completions.create({
          model: "d-ollama",
          messages: [
            { role: "system", content: "be brief" },
            ...hi,
            {
              role: "assistant",
              content: null,
              tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "[]" } }]
            },
            { role: "tool", tool_call_id: "c1", content: "done" }
          ],
          tools
        })
      )
      assert.deepStrictEqual([args.status, args.param], [400, "messages[2].tool_calls[0].function.arguments"])
      assert.strictEqual((yield* ollama.requests).length, 0)
    })
  )
})

describe("Gateway: request ids", () => {
  it.live("every answer carries its own x-request-id: the client's _request_id, on errors and streams too", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const client = gw.client()
      const ids: Array<string | null | undefined> = []
      const answer = yield* Harness.call(() => client.chat.completions.create({ model: "d-a", messages: hi }))
      ids.push(answer._request_id)
      const streamed = yield* Harness.call(() =>
        client.chat.completions.create({ model: "d-a", messages: hi, stream: true }).withResponse()
      )
      yield* Harness.call(async () => {
        for await (const _ of streamed.data) {
        }
      })
      ids.push(streamed.request_id)
      const embedded = yield* Harness.call(() => client.embeddings.create({ model: "d-a", input: "x" }).withResponse())
      ids.push(embedded.request_id)
      const models = yield* Harness.call(() => client.models.list().withResponse())
      ids.push(models.request_id)
      const refused = yield* Harness.failing(() => client.chat.completions.create({ model: "gpt-9", messages: hi }))
      assert.strictEqual(refused.status, 404)
      ids.push(refused.headers?.get("x-request-id"))
      const health = yield* Effect.promise(() => fetch(`${gw.url}/nowhere`))
      ids.push(health.headers.get("x-request-id"))
      for (const id of ids) assert.match(String(id), /^req_[0-9a-z]+$/)
      assert.strictEqual(new Set(ids).size, ids.length, "one id per request")
    })
  )

  it.live("the id a client sends is not echoed: the gateway's own id is the one its logs carry", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const { service } = keys()
      const buggy: Gateway.KeyStoreService = { ...service, authenticate: () => Effect.die(new Error("a bug")) }
      const logs: Array<string> = []
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: buggy, logs })
      const failed = yield* Effect.promise(() =>
        fetch(`${gw.url}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json", "x-request-id": "client-chosen" },
          body: JSON.stringify({ model: "d-a", messages: hi })
        })
      )
      assert.strictEqual(failed.status, 500)
      const id = failed.headers.get("x-request-id")!
      assert.match(id, /^req_[0-9a-z]+$/)
      const logged = logs.filter((line) => line.includes("unexpected failure"))
      assert.strictEqual(logged.length, 1)
      assert.include(logged[0], id, "the failure's log line names the request")
    })
  )
})

describe("Gateway: a provider's rate limit whose store is down", () => {
  it("failing closed because its store did not answer is a 503 rate_limit_store_unavailable, not a 429", () => {
    const storeDown = new ModelError({
      reason: "RateLimited",
      message: `the rate limit of "up" cannot be checked (store unavailable) and onStoreError is "reject"`,
      provider: "up",
      retryAfter: Duration.seconds(3),
      cause: new RateLimiter.RateLimiterError({
        reason: new RateLimiter.RateLimitStoreError({ message: "connection refused" })
      })
    })
    const wire = Errors.toWire(storeDown)
    assert.strictEqual(wire.status, 503)
    assert.strictEqual(wire.body.error.code, "rate_limit_store_unavailable")
    assert.strictEqual(wire.body.error.type, "service_unavailable")
    assert.strictEqual(wire.retryAfterSeconds, 3)
    // A limit reached is still the 429 it was.
    const reached = new ModelError({ reason: "RateLimited", message: "busy", provider: "up" })
    assert.strictEqual(Errors.toWire(reached).status, 429)
    assert.strictEqual(Errors.toWire(reached).body.error.code, "rate_limit_exceeded")
  })
})

describe("Gateway: an upstream's words that are no API error about the request", () => {
  it.live(
    "a rate limit or refusal without a status (an error answer, a stream's error event) and a proxy's 400 page are withheld: the log has them",
    () =>
      Effect.gen(function* () {
        const secret = "org-S3CRETORG"
        const upstream = yield* Server.make((request, res) => {
          const body = request.json as { messages?: Array<{ content: string }>; stream?: boolean }
          const content = body.messages?.[0]?.content
          const limited = {
            error: { message: `Rate limit reached in organization ${secret}`, type: "rate_limit_error" }
          }
          if (content === "page")
            return Server.text(res, 400, `<html><body>400 Bad Request at gw-7.${secret}.internal</body></html>`)
          if (body.stream === true) {
            res.writeHead(200, { "content-type": "text/event-stream" })
            res.write(`data: ${JSON.stringify(limited)}\n\n`)
            return void res.end()
          }
          res.writeHead(200, { "content-type": "application/json" })
          return void res.end(JSON.stringify(limited))
        })
        const logs: Array<string> = []
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, breakers: false, logs })
        const client = gw.client()
        const ask = (content: string, stream = false) =>
          Harness.failing(async () => {
            const answer = await client.chat.completions.create({
              model: "d-a",
              messages: [{ role: "user", content }],
              stream
            })
            if (stream) for await (const _ of answer as AsyncIterable<unknown>) void _
            return answer
          })
        const answers = [yield* ask("hi"), yield* ask("hi", true), yield* ask("page")]
        for (const answer of answers) {
          const text = JSON.stringify(answer.body)
          assert.notInclude(text, secret, text)
          assert.include(answer.message, "the gateway's log has its message", text)
        }
        yield* Harness.eventually(() => logs.some((line) => line.includes(secret)))
      })
  )
})

describe("Gateway: an upstream's address", () => {
  it.live(
    "is never in what a client reads (upstream 404, unreachable, cut mid-stream; chat, stream, embeddings): the log has it",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make((request, res) => {
          const body = request.json as { messages?: Array<{ content: string }>; stream?: boolean }
          if (body.messages?.[0]?.content === "cut") {
            res.writeHead(200, { "content-type": "text/event-stream" })
            res.write(`data: ${JSON.stringify(Up.chunk("partial"))}\n\n`)
            return void res.socket?.destroy()
          }
          return Server.text(res, 404, "404 page not found")
        })
        // A port that refuses: what a Transport failure's message names (host and port).
        const closedUrl = yield* Effect.promise(
          () =>
            new Promise<string>((resolve) => {
              const probe = createServer().listen(0, "127.0.0.1", () => {
                const address = probe.address() as { port: number }
                probe.close(() => resolve(`http://127.0.0.1:${address.port}`))
              })
            })
        )
        const logs: Array<string> = []
        const gw = yield* Harness.make({
          upstreams: { a: upstream.url, z: closedUrl },
          breakers: false,
          logs
        })
        const client = gw.client()
        const ask = (model: string, content = "hi", stream = false) =>
          Harness.failing(async () => {
            const answer = await client.chat.completions.create({
              model,
              messages: [{ role: "user", content }],
              stream
            })
            if (stream) for await (const _ of answer as AsyncIterable<unknown>) void _
            return answer
          })
        const answers = [
          yield* ask("d-a"),
          yield* ask("d-a", "hi", true),
          yield* ask("d-a", "cut", true),
          yield* ask("d-z"),
          yield* ask("d-z", "hi", true),
          yield* Harness.failing(() => client.embeddings.create({ model: "d-a", input: "hi" })),
          yield* Harness.failing(() => client.embeddings.create({ model: "d-z", input: "hi" }))
        ]
        const port = (url: string) => new URL(url).port
        for (const answer of answers) {
          const text = JSON.stringify(answer.body)
          assert.notInclude(text, port(upstream.url), text)
          assert.notInclude(text, port(closedUrl), text)
          assert.notInclude(text, "/v1/", text)
          assert.notInclude(text, "127.0.0.1", text)
        }
        // What the client reads still says which provider failed and how.
        const [notFound] = answers
        assert.deepStrictEqual([notFound!.status, notFound!.code], [502, "upstream_not_found"])
        assert.include(notFound!.message, `"a"`)
        assert.include(notFound!.message, "HTTP 404")
        assert.deepStrictEqual([answers[3]!.status, answers[3]!.code], [502, "upstream_unreachable"])
        assert.include(answers[3]!.message, `"z"`)
        // The operator's log has the whole message, address included.
        yield* Harness.eventually(() => logs.some((line) => line.includes(`${upstream.url}/v1/chat/completions`)))
        yield* Harness.eventually(() => logs.some((line) => line.includes(`${upstream.url}/v1/embeddings`)))
        yield* Harness.eventually(() => logs.some((line) => line.includes(port(closedUrl))))
        // Under the request id the client read, which is what it quotes to the operator.
        for (const answer of [answers[0]!, answers[1]!, answers[5]!]) {
          const id = answer.headers?.get("x-request-id")
          assert.isString(id)
          assert.isTrue(
            logs.some((line) => line.includes(`"request_id":"${id}"`) && line.includes("/v1/")),
            `${id} in ${logs.join("\n")}`
          )
        }
      })
  )

  it("an API's own refusal of the client's request keeps the upstream's message, which says what to change", () => {
    const refused = Errors.toWire(
      new ModelError({
        reason: "InvalidRequest",
        message: "a answered HTTP 400: This model's maximum context length is 8192 tokens.",
        provider: "a",
        status: 400,
        field: "messages"
      })
    )
    assert.include(refused.body.error.message, "maximum context length is 8192 tokens")
    // The library's own refusals (no upstream status) are kept too.
    const own = Errors.toWire(
      new ModelError({ reason: "InvalidRequest", message: "invalid input[2]: empty", provider: "a", field: "input[2]" })
    )
    assert.strictEqual(own.body.error.message, "invalid input[2]: empty")
  })
})

describe("Gateway: an exhausted fallback chain's upstream messages", () => {
  it("are kept from the client and given whole to the log, each step's", () => {
    const step = (provider: string, port: number) =>
      new ModelError({
        reason: "Transport",
        message: `${provider}: the request failed (connect ECONNREFUSED 10.0.0.7:${port})`,
        provider
      })
    const exhausted = new FallbackExhaustedError({
      attempts: [
        { domain: "support", provider: "openai", error: step("openai", 8000) },
        { domain: "support-local", provider: "local", error: step("local", 8001) }
      ]
    })
    const wire = Errors.toWire(exhausted)
    assert.notInclude(wire.body.error.message, "10.0.0.7")
    assert.include(wire.body.error.message, "support-local: ModelError Transport")
    const logged = Errors.withheldMessage(exhausted)
    assert.include(logged, "10.0.0.7:8000")
    assert.include(logged, "10.0.0.7:8001")
  })
})

describe("Gateway.withheldMessage", () => {
  it("gives an application's own log what Gateway.toWire leaves out of the answer", () => {
    const notFound = new ModelError({
      reason: "InvalidRequest",
      message: "a answered HTTP 404 for POST http://10.0.0.7:8000/v1/chat/completions: 404 page not found",
      provider: "a",
      status: 404
    })
    assert.notInclude(Gateway.toWire(notFound).body.error.message, "10.0.0.7")
    assert.include(Gateway.withheldMessage(notFound), "10.0.0.7:8000")
    assert.isUndefined(Gateway.withheldMessage(Gateway.gatewayError("InvalidRequest", "bad")))
  })

  it("names no provider for an error without one (a local model's, a stream the gateway saw end early)", () => {
    const ended = new ModelError({ reason: "Transport", message: "the stream ended before its first event" })
    assert.strictEqual(
      Gateway.toWire(ended).body.error.message,
      "the upstream could not be reached, or broke the connection (upstream_unreachable); the gateway's log has its message"
    )
    assert.strictEqual(Gateway.withheldMessage(ended), "the stream ended before its first event")
  })
})
