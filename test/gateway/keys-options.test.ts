import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Result } from "effect"
import { Redis } from "effect/persistence"
import * as Admin from "../../src/gateway/admin.js"
import * as KeyStore from "../../src/gateway/keys/KeyStore.js"
import * as KeyOptions from "../../src/gateway/keys/options.js"

describe("gateway key options", () => {
  it("a misspelt field of a key's policy or budget names the one it is likely a typo of, the key quoted as every other check writes one: it said a bare 'unknown field', the key raw", () => {
    const failure = (checked: Result.Result<unknown, { readonly path: string; readonly message: string }>) =>
      Result.isFailure(checked) ? checked.failure : undefined
    assert.deepStrictEqual(failure(KeyOptions.createRequest({ id: "k1", allowedModel: ["m"] }, "made")), {
      path: "allowedModel",
      message: "unknown field (did you mean allowedModels?)"
    })
    assert.deepStrictEqual(failure(KeyOptions.budget("budget", { token: 5 })), {
      path: "budget.token",
      message: "unknown field (did you mean tokens?)"
    })
    // A key with a line break went raw into the path, which an admin route answers and a log writes.
    assert.deepStrictEqual(failure(KeyOptions.createRequest({ "a\nb": 1 }, "made"))?.path, '"a\\nb"')
  })

  it("a misspelt option of the admin routes names the one it is likely a typo of: it said a bare 'unknown option'", () => {
    const checked = Admin.check({ key: { sha256: "0".repeat(64) }, maxBodyByte: 1024 } as never)
    assert.deepStrictEqual(Result.isFailure(checked) ? checked.failure : undefined, {
      path: "maxBodyByte",
      message: "unknown option (did you mean maxBodyBytes?)"
    })
  })
})

describe("gateway key store options", () => {
  it.effect(
    "a misspelt field of onStoreError names the one it is likely a typo of, quoted and bounded: it listed both, the key raw",
    () =>
      Effect.gen(function* () {
        const refused = (onStoreError: object) =>
          Effect.flip(
            Layer.build(KeyStore.layerRedis({ onStoreError } as never)).pipe(
              Effect.provideService(Redis.Redis, {} as never),
              Effect.scoped
            )
          )
        const typo = yield* refused({ limit: "reject" })
        assert.deepStrictEqual(
          [typo.path, typo.message],
          ["onStoreError.limit", "invalid onStoreError.limit: unknown field (did you mean limits?)"]
        )
        const long = yield* refused({ ["k".repeat(100_000)]: "allow" })
        assert.isBelow(long.path.length, 200)
        assert.include(long.path, "(100,000 characters)")
      })
  )
})

describe("gateway key options: teams", () => {
  it("a key naming an undeclared team lists at most 20 of the declared teams, then how many more: it listed every one, unbounded", () => {
    const teams: Record<string, object> = {}
    for (let i = 0; i < 5000; i++) teams[`team-${String(i).padStart(4, "0")}`] = {}
    const message = KeyOptions.unknownTeam("nope", new Set(Object.keys(teams)))
    assert.isBelow(message.length, 600)
    assert.include(message, "team-0000, team-0001")
    assert.include(message, "and 4980 more")
    assert.notInclude(message, "team-0020")
    const checked = KeyOptions.check({
      teams,
      keys: [{ id: "k1", sha256: "0".repeat(64), team: "nope" }]
    } as never)
    assert.isTrue(Result.isFailure(checked))
    if (Result.isFailure(checked)) {
      assert.include(checked.failure.message, "and 4980 more")
      assert.isBelow(checked.failure.message.length, 1000)
    }
  })
})

describe("gateway key options: names in paths", () => {
  it("a model or team name that is no name goes into the path quoted and bounded: it went raw, a megabyte or a line break whole", () => {
    const huge = `${"x".repeat(100_000)}\n`
    const pathOf = (checked: Result.Result<unknown, { readonly path: string }>) =>
      Result.isFailure(checked) ? checked.failure.path : undefined
    for (const path of [
      pathOf(KeyOptions.createRequest({ modelBudgets: { [huge]: { tokens: 1 } } }, "made")),
      pathOf(KeyOptions.check({ prices: { [huge]: { input: 1, output: 1 } } } as never)),
      pathOf(KeyOptions.check({ teams: { [huge]: {} } } as never))
    ]) {
      assert.isDefined(path)
      assert.isBelow(path!.length, 300)
      assert.notInclude(path!, "\n")
      assert.include(path!, "(100,001 characters)")
    }
    // Nor in the teams a key naming an undeclared one is told of.
    const told = KeyOptions.check({
      teams: { [huge]: {} },
      keys: [{ id: "k", sha256: "0".repeat(64), team: "red" }]
    } as never)
    assert.isTrue(Result.isFailure(told))
    if (Result.isFailure(told)) assert.isBelow(JSON.stringify(told.failure).length, 2000)
    assert.strictEqual(
      pathOf(KeyOptions.createRequest({ modelBudgets: { "a\nb": { tokens: 1 } } }, "made")),
      'modelBudgets."a\\nb"'
    )
    // A name that is one stays as written.
    assert.strictEqual(
      pathOf(KeyOptions.createRequest({ modelBudgets: { "gpt-4o": { tokens: -1 } } }, "made")),
      "modelBudgets.gpt-4o.tokens"
    )
  })
})
