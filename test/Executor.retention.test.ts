/**
 * What an executor keeps of its calls once they answered: nothing of a batch's requests or
 * answers, nothing of a provider a call was given.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Result, Scope } from "effect"
import type { GenerateRequest, Service as ProviderService } from "../src/Model.js"
import { setup } from "./utils/executor.js"
import { alive, collect } from "./utils/retention.js"

describe("Executor: what it keeps after a call", () => {
  it("an executeMany batch's requests and results are unreachable once it returned, whatever its concurrency", async () => {
    const scope = Effect.runSync(Scope.make())
    try {
      const { executor } = await Effect.runPromise(Scope.provide(setup({ requestLogSize: 0, latency: 1 }), scope))
      const refs: Array<readonly [string, WeakRef<object>]> = []
      for (const concurrency of [1, 4]) {
        await (async () => {
          const requests: Array<GenerateRequest> = Array.from({ length: 20 }, (_, i) => ({ prompt: `p${i}` }))
          const results = await Effect.runPromise(executor.executeMany(requests, { concurrency }))
          assert.isTrue(results.every(Result.isSuccess))
          refs.push([`requests c=${concurrency}`, new WeakRef(requests)])
          refs.push([`results c=${concurrency}`, new WeakRef(results)])
          refs.push([`a request c=${concurrency}`, new WeakRef(requests[19]!)])
        })()
      }
      await collect()
      assert.deepStrictEqual(alive(refs), [])
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  })

  it("a provider given to calls through one options object is not kept once the object names another", async () => {
    const scope = Effect.runSync(Scope.make())
    try {
      const { executor } = await Effect.runPromise(Scope.provide(setup({ requestLogSize: 0 }), scope))
      // One options object kept for the executor's life, given a provider per tenant.
      const options: { provider?: ProviderService } = {}
      const refs: Array<readonly [string, WeakRef<object>]> = []
      for (let i = 0; i < 3; i++) {
        await (async () => {
          const provider: ProviderService = { ...executor.provider, name: "tenant" }
          options.provider = provider
          const answer = await Effect.runPromise(executor.execute({ prompt: "hi" }, options))
          assert.isString(answer.text)
          const many = await Effect.runPromise(executor.executeMany([{ prompt: "a" }], options))
          assert.isTrue(Result.isSuccess(many[0]!))
          refs.push([`provider ${i}`, new WeakRef(provider)])
        })()
      }
      await collect()
      // The last one is the options' own.
      assert.deepStrictEqual(alive(refs), ["provider 2"])
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  })
})
