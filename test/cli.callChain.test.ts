/**
 * `orchestra test`'s call: with `--domain` and `--fallback`, the domain's own fallback chain
 * comes first, then the `--fallback` domains, each once (as a batch's fallback does).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { callChain } from "../src/cli/run/test.js"
import { Outcome } from "../src/Model/Mock.js"
import { makeManager } from "./utils/manager.js"

describe("orchestra test's call chain", () => {
  it.effect("--domain A --fallback B tries A, then A's own fallbacks, then B", () =>
    Effect.gen(function* () {
      const { router, executor, controls } = yield* makeManager(
        {
          a: { script: [Outcome.fail("Overloaded")] },
          a2: { respond: () => "from a2" },
          b: { respond: () => "from b" }
        },
        {
          breakers: false,
          domains: [
            { name: "A", provider: "a", fallback: ["A2"] },
            { name: "A2", provider: "a2" },
            { name: "B", provider: "b" }
          ]
        }
      )
      const answer = yield* callChain(router, executor, { prompt: "hi" }, "A", ["B", "A2"], () => Effect.void)
      assert.strictEqual(answer.response.text, "from a2")
      assert.deepStrictEqual([answer.domain, answer.domainsTried], ["A2", 2])
      assert.strictEqual(yield* controls.b!.calls, 0)
    })
  )
})
