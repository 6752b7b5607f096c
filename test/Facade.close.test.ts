/**
 * What a facade call is told when `dispose()` ends it: a call made after `dispose()` is refused as a new
 * call; one made before it and cut (the manager still being built) is told it was cut, not that it came
 * too late. Real clock (a Promise API), a manager whose build takes a while.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { createOrchestra } from "../src/Facade.js"
import { ModelProvider } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { typed } from "./utils/facade.js"

const unhandled: Array<unknown> = []
process.on("unhandledRejection", (reason) => unhandled.push(reason))

describe("createOrchestra: calls that dispose() ends", () => {
  it("a call made before dispose() and cut with the build says so; a call made after it says it came after", async () => {
    const { provider } = Effect.runSync(Mock.make({ name: "facade-close-build" }))
    const slowBuild = Layer.effect(ModelProvider, Effect.as(Effect.sleep("200 millis"), provider))
    const orchestra = createOrchestra(Orchestra.layer({ providers: { main: slowBuild } }))
    const before = [
      typed(orchestra.execute("q")),
      typed(orchestra.execute("q", { signal: new AbortController().signal, timeout: "5 seconds" })),
      typed(orchestra.stream("q")[Symbol.asyncIterator]().next())
    ]
    const disposed = orchestra.dispose()
    const after = await typed(orchestra.execute("q"))
    await disposed
    assert.strictEqual(after._tag, "ShuttingDownError")
    assert.include(after.message, "admits no new calls")
    for (const error of await Promise.all(before)) {
      assert.strictEqual(error._tag, "ShuttingDownError")
      assert.notInclude(error.message, "admits no new calls", "a call made before dispose() was not refused as new")
      assert.include(error.message, "before the manager was built")
    }
    assert.deepStrictEqual(unhandled, [])
  })
})
