/**
 * The model names of a key store's configuration (a key's `allowedModels` and
 * `modelBudgets`, the price table) and of an admin's new key are checked against what the
 * gateway serves: its domains and `provider/model` of its providers. A misspelt name would
 * lock a key out of a model, or leave a budget or price that never applies.
 */
import { createServer } from "node:http"
import { NodeHttpServer } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Redacted } from "effect"
import { HttpRouter, HttpServer } from "effect/http"
import * as Gateway from "../../src/Gateway.js"
import * as Admin from "../../src/gateway/admin.js"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import * as Mock from "../../src/Model/Mock.js"
import * as Orchestra from "../../src/Orchestra.js"

const secret = "sk-models-test-0123456789abcdef"
const adminSecret = "admin-secret-models-0123456789"

// Domains d-a and d-b on the providers a and b.
const manager = Orchestra.layer({
  providers: { a: Mock.layer({ name: "a", respond: () => "a" }), b: Mock.layer({ name: "b", respond: () => "b" }) },
  domains: [
    { name: "d-a", provider: "a" },
    { name: "d-b", provider: "b" }
  ]
})

const key = (policy: KeyStore.KeyPolicy): KeyStore.KeyDefinition => ({
  id: "k",
  sha256: KeyStore.hashSecret(secret),
  ...policy
})

/** The OptionError of a gateway built over a key store of these options, or "built". */
const startWith = (keys: KeyStore.Options, gateway: Gateway.Options = {}, how: "serve" | "layer" = "serve") =>
  Effect.gen(function* () {
    const store = KeyStore.layerMemory(keys)
    const app =
      how === "serve"
        ? Gateway.serve({ port: 0, ...gateway }).pipe(Layer.provide(Layer.merge(manager, store)))
        : Gateway.layer(gateway).pipe(Layer.provide(Layer.mergeAll(manager, store, HttpRouter.layer)))
    const exit = yield* Effect.exit(Layer.build(app))
    if (exit._tag === "Success") return "built"
    const error = yield* Effect.flip(Effect.suspend(() => exit))
    return error._tag === "OptionError" ? { path: error.path, message: error.message } : String(error)
  }).pipe(Effect.scoped)

describe("Gateway: model names of the key store's configuration", () => {
  it.effect("a key's allowedModels or modelBudgets naming no domain nor provider/model refuses the start", () =>
    Effect.gen(function* () {
      for (const how of ["serve", "layer"] as const) {
        const allowed = yield* startWith({ keys: [key({ allowedModels: ["d-a", "gtp-4"] })] }, {}, how)
        assert.deepStrictEqual(
          allowed,
          {
            path: "keys[0].allowedModels[1]",
            message:
              'invalid keys[0].allowedModels[1]: unknown model "gtp-4": expected a domain (d-a, d-b), provider/model or provider/* with a provider of a, b, or *'
          },
          how
        )
        const budget = yield* startWith({ keys: [key({ modelBudgets: { "gtp-4": { tokens: 1000 } } })] }, {}, how)
        assert.deepStrictEqual(
          budget,
          {
            path: "keys[0].modelBudgets.gtp-4",
            message:
              'invalid keys[0].modelBudgets.gtp-4: unknown model "gtp-4": expected a domain (d-a, d-b) or provider/model with a provider of a, b'
          },
          how
        )
      }
      const cases: ReadonlyArray<readonly [KeyStore.Options, string]> = [
        // An unknown provider, and provider/model with nothing after the slash.
        [{ keys: [key({ allowedModels: ["openai/gpt-4o"] })] }, "keys[0].allowedModels[0]"],
        [{ keys: [key({ allowedModels: ["a/"] })] }, "keys[0].allowedModels[0]"],
        [{ keys: [key({ allowedModels: ["zz/*"] })] }, "keys[0].allowedModels[0]"],
        // A budget by model is one model's: neither "*" nor "a/*" is a wildcard there, it would never apply.
        [{ keys: [key({ modelBudgets: { "*": { tokens: 10 } } })] }, "keys[0].modelBudgets.*"],
        [{ keys: [key({ modelBudgets: { "a/*": { tokens: 10 } } })] }, "keys[0].modelBudgets.a/*"],
        [
          {
            keys: [key({}), { ...key({ modelBudgets: { "d-c": { tokens: 10 } } }), id: "k2", sha256: "0".repeat(64) }]
          },
          "keys[1].modelBudgets.d-c"
        ]
      ]
      for (const [options, path] of cases) {
        const found = yield* startWith(options)
        assert.strictEqual(typeof found === "object" ? found.path : found, path)
      }
    })
  )

  it.effect("a price naming no domain nor provider/model refuses the start; * is every other model's", () =>
    Effect.gen(function* () {
      const price = { input: 1, output: 2 }
      assert.deepStrictEqual(yield* startWith({ prices: { "d-a": price, "gtp-4": price } }), {
        path: "prices.gtp-4",
        message:
          'invalid prices.gtp-4: unknown model "gtp-4": expected a domain (d-a, d-b), provider/model with a provider of a, b, or * (every other model)'
      })
      const wildcard = yield* startWith({ prices: { "b/*": price } })
      assert.strictEqual(typeof wildcard === "object" ? wildcard.path : wildcard, "prices.b/*")
      assert.include(typeof wildcard === "object" ? wildcard.message : wildcard, "not a wildcard")
    })
  )

  it.effect("every name the gateway serves is accepted", () =>
    Effect.gen(function* () {
      assert.strictEqual(
        yield* startWith({
          keys: [
            key({
              allowedModels: ["d-a", "a/a-model", "b/*", "*"],
              modelBudgets: { "d-b": { tokens: 10 }, "a/any-model": { usd: 1 } }
            })
          ],
          prices: { "d-a": { input: 1, output: 1 }, "b/b-model": { input: 1, output: 1 }, "*": { input: 1, output: 1 } }
        }),
        "built"
      )
    })
  )

  it.effect("without providerModels, provider/model names are refused", () =>
    Effect.gen(function* () {
      const found = yield* startWith({ keys: [key({ allowedModels: ["a/*"] })] }, { providerModels: false })
      assert.deepStrictEqual(found, {
        path: "keys[0].allowedModels[0]",
        message:
          'invalid keys[0].allowedModels[0]: unknown model "a/*": expected a domain (d-a, d-b), or * (provider/model names are off: the gateway\'s providerModels is false)'
      })
    })
  )
})

describe("Admin routes: model names of a new key", () => {
  it.live("a new key naming no domain nor provider/model is a 400 naming the field; the rest are created", () =>
    Effect.gen(function* () {
      const server = NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })
      const context = yield* Layer.build(
        HttpRouter.serve(
          Layer.provideMerge(Admin.layer({ key: Redacted.make(adminSecret) }), Gateway.layer({ drainTimeout: 0 })),
          { disableLogger: true, disableListenLog: true }
        ).pipe(Layer.provideMerge(server), Layer.provide(Layer.merge(manager, KeyStore.layerMemory({}))))
      )
      const address = Context.get(context, HttpServer.HttpServer).address as { readonly port: number }
      const create = (body: unknown) =>
        Effect.promise(async () => {
          const response = await fetch(`http://127.0.0.1:${address.port}/admin/keys`, {
            method: "POST",
            headers: { authorization: `Bearer ${adminSecret}`, "content-type": "application/json" },
            body: JSON.stringify(body)
          })
          // biome-ignore lint/suspicious/noExplicitAny: the test reads whatever JSON the route answers
          return { status: response.status, body: (await response.json()) as any }
        })

      const allowed = yield* create({ allowedModels: ["d-a", "gtp-4"] })
      assert.strictEqual(allowed.status, 400)
      assert.deepStrictEqual(allowed.body, {
        error: {
          message:
            'invalid allowedModels[1]: unknown model "gtp-4": expected a domain (d-a, d-b), provider/model or provider/* with a provider of a, b, or *',
          type: "invalid_request_error",
          param: "allowedModels[1]",
          code: "invalid_request"
        }
      })
      const budget = yield* create({ id: "typo", modelBudgets: { "d-a": { tokens: 5 }, "gtp-4": { tokens: 5 } } })
      assert.strictEqual(budget.status, 400)
      assert.strictEqual(budget.body.error.param, "modelBudgets.gtp-4")
      assert.include(budget.body.error.message, 'unknown model "gtp-4"')
      // Nothing was created by the refused requests.
      assert.strictEqual((yield* create({ id: "typo" })).status, 201)

      const created = yield* create({ allowedModels: ["d-b", "a/*"], modelBudgets: { "b/b-model": { tokens: 5 } } })
      assert.strictEqual(created.status, 201)
      assert.deepStrictEqual(created.body.allowedModels, ["d-b", "a/*"])
    }).pipe(Effect.scoped)
  )
})

describe("Admin routes: a path with a trailing slash", () => {
  it.live("is the route's (which the router serves): a wrong method on it is a 405 with Allow, not a 404", () =>
    Effect.gen(function* () {
      const server = NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })
      const context = yield* Layer.build(
        HttpRouter.serve(
          Layer.provideMerge(Admin.layer({ key: Redacted.make(adminSecret) }), Gateway.layer({ drainTimeout: 0 })),
          { disableLogger: true, disableListenLog: true }
        ).pipe(Layer.provideMerge(server), Layer.provide(Layer.merge(manager, KeyStore.layerMemory({}))))
      )
      const address = Context.get(context, HttpServer.HttpServer).address as { readonly port: number }
      const send = (method: string, path: string) =>
        Effect.promise(async () => {
          const response = await fetch(`http://127.0.0.1:${address.port}${path}`, {
            method,
            headers: { authorization: `Bearer ${adminSecret}` }
          })
          return [response.status, response.headers.get("allow")] as const
        })
      assert.deepStrictEqual(yield* send("GET", "/admin/keys/"), [200, null])
      for (const [method, path, allow] of [
        ["DELETE", "/admin/keys/", "GET, HEAD, POST"],
        ["PUT", "/admin/keys/k1/", "GET, HEAD, DELETE"],
        ["GET", "/admin/keys/k1/disable/", "POST"],
        ["POST", "/admin/keys/k1/spend/?x=1", "GET, HEAD"]
      ] as const) {
        assert.deepStrictEqual(yield* send(method, path), [405, allow], `${method} ${path}`)
      }
      assert.deepStrictEqual(yield* send("PUT", "/admin/keys/k1/rename/"), [404, null])
      // A long path is said back clipped.
      const long = yield* Effect.promise(() =>
        fetch(`http://127.0.0.1:${address.port}/admin/keys/${"z".repeat(8000)}`, {
          method: "PUT",
          headers: { authorization: `Bearer ${adminSecret}` }
        }).then(
          async (response) =>
            [response.status, ((await response.json()) as { error: { message: string } }).error.message] as const
        )
      )
      assert.strictEqual(long[0], 405)
      assert.isBelow(long[1].length, 200)
      // An id longer than the router's parameters (100 characters) is no key's: a 404, not a 405 that says to use GET.
      for (const [method, suffix] of [
        ["GET", ""],
        ["HEAD", ""],
        ["GET", "/spend"],
        ["POST", "/disable"]
      ] as const) {
        const path = `/admin/keys/${"k".repeat(101)}${suffix}`
        assert.deepStrictEqual((yield* send(method, path))[0], 404, `${method} ${path}`)
      }
      // Without the admin key: the Bearer challenge HTTP requires of a 401.
      const refused = yield* Effect.promise(() => fetch(`http://127.0.0.1:${address.port}/admin/keys`))
      assert.strictEqual(refused.status, 401)
      assert.strictEqual(refused.headers.get("www-authenticate"), 'Bearer realm="admin"')
    }).pipe(Effect.scoped)
  )
})
