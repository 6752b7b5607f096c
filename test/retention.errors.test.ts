/**
 * What the errors of a finished call or batch keep: none of its requests or items. An error's stack
 * trace, until it is read, keeps the functions on the stack where it was made (with the closures
 * they hold): an error kept by its caller must not keep the batch that failed it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Result, Scope } from "effect"
import type { AiError } from "../src/AiError.js"
import type * as Batch from "../src/Batch.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import type { GenerateRequest } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import { managerOver } from "./utils/batch.js"
import { setup } from "./utils/executor.js"
import { alive, collect } from "./utils/retention.js"

describe("errors kept past their call", () => {
  it("executeMany: the errors of failed requests keep neither the requests nor the results", async () => {
    const scope = Effect.runSync(Scope.make())
    try {
      const { executor } = await Effect.runPromise(
        Scope.provide(setup({ requestLogSize: 0, script: [Mock.Outcome.fail("Overloaded")] }), scope)
      )
      const errors: Array<unknown> = []
      const refs: Array<readonly [string, WeakRef<object>]> = []
      for (const concurrency of [1, 4]) {
        await (async () => {
          // A request that fails at the provider, and requests refused for what they are.
          const requests: Array<GenerateRequest> = [
            { prompt: "fails" },
            { prompt: "" },
            { prompt: 5 } as never,
            ...Array.from({ length: 20 }, (_, i) => ({ prompt: `p${i}`, temperature: -1 }))
          ]
          const results = await Effect.runPromise(executor.executeMany(requests, { concurrency, retry: false }))
          for (const result of results) if (Result.isFailure(result)) errors.push(result.failure)
          refs.push([`requests c=${concurrency}`, new WeakRef(requests)])
          refs.push([`results c=${concurrency}`, new WeakRef(results)])
        })()
      }
      assert.isAbove(errors.length, 2)
      await collect()
      assert.deepStrictEqual(alive(refs), [])
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  })

  it("executeMany: the error of a request whose call died keeps neither the requests nor the results", async () => {
    const scope = Effect.runSync(Scope.make())
    try {
      // A user breaker that answers what no attempt answered: the call's defect, the item's Unknown error.
      const breaker: CircuitBreaker.Service = {
        ...(await Effect.runPromise(Scope.provide(CircuitBreaker.makeMemory(), scope))),
        execute: () => Effect.succeed({ text: "not the provider's" } as never)
      }
      const { executor } = await Effect.runPromise(
        Scope.provide(setup({ requestLogSize: 0 }, { guards: { breaker } }), scope)
      )
      const errors: Array<AiError> = []
      const refs: Array<readonly [string, WeakRef<object>]> = []
      for (const concurrency of [1, 4]) {
        await (async () => {
          const requests: Array<GenerateRequest> = Array.from({ length: 20 }, (_, i) => ({ prompt: `p${i}` }))
          const results = await Effect.runPromise(executor.executeMany(requests, { concurrency, retry: false }))
          for (const result of results) if (Result.isFailure(result)) errors.push(result.failure)
          refs.push([`requests c=${concurrency}`, new WeakRef(requests)])
          refs.push([`results c=${concurrency}`, new WeakRef(results)])
        })()
      }
      assert.strictEqual(errors.length, 40)
      assert.isTrue(errors.every((error) => error._tag === "ModelError" && error.reason === "Unknown"))
      await collect()
      assert.deepStrictEqual(alive(refs), [])
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  })

  it("Batch.run: the errors of failed items keep neither the items nor the result", async () => {
    const scope = Effect.runSync(Scope.make())
    try {
      const { provider } = await Effect.runPromise(Mock.make({ name: "p", script: [Mock.Outcome.fail("Overloaded")] }))
      const { batch } = await Effect.runPromise(Scope.provide(managerOver(provider), scope))
      const errors: Array<AiError> = []
      const refs: Array<readonly [string, WeakRef<object>]> = []
      for (const onEvent of [undefined, () => Effect.void]) {
        await (async () => {
          const items: Array<Batch.Item> = [
            "fails",
            "",
            42 as never,
            { query: "x", domain: "nowhere" },
            ...Array.from({ length: 20 }, (_, i) => ({ query: `q${i}`, temperature: -1 }) as never)
          ]
          const result = await Effect.runPromise(batch.run(items, { onEvent }))
          for (const r of result.results) if (r.error !== undefined) errors.push(r.error)
          refs.push([`items ${onEvent === undefined ? "started" : "workers"}`, new WeakRef(items)])
          refs.push([`result ${onEvent === undefined ? "started" : "workers"}`, new WeakRef(result)])
        })()
      }
      assert.isAbove(errors.length, 2)
      await collect()
      assert.deepStrictEqual(alive(refs), [])
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  })
})
