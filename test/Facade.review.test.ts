/**
 * The Promise facade as a demanding TypeScript caller uses it: options held in the exported
 * option types, not only written as literals. A Promise API on the real clock, as
 * `Facade.test.ts`: no timing assertions.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { type Answer, createOrchestra, type DomainOutcome, type ParallelOptions } from "../src/Facade.js"
import { ModelProvider } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"

let mocks = 0
const mock = (options: Mock.Options = {}) => {
  const { control, provider } = Effect.runSync(Mock.make({ name: `facade-review-${++mocks}`, ...options }))
  return { control, name: control.name, layer: Layer.succeed(ModelProvider, provider) }
}

describe("createOrchestra: executeParallelDomains with options of type ParallelOptions", () => {
  it("a mode known only at run time type-checks, and answers as that mode does", async () => {
    await using orchestra = createOrchestra(Orchestra.layer({ providers: { main: mock().layer } }))
    const domains = ["support", "technical"]
    const asked: Array<ReadonlyArray<DomainOutcome> | Answer> = []
    for (const mode of ["all", "first"] as const) {
      // Before: no overload took a `ParallelOptions` value (only a literal mode), a compile error.
      const options: ParallelOptions = { mode }
      asked.push(await orchestra.executeParallelDomains("q", domains, options))
    }
    const [all, first] = asked
    assert.isTrue(Array.isArray(all))
    assert.lengthOf(all as ReadonlyArray<DomainOutcome>, 2)
    assert.isFalse(Array.isArray(first))
    assert.strictEqual((first as Answer).response.text, "mock answer to: q")
  })
})
