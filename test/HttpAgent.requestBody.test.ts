import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as AgentServer from "./utils/agentServer.js"
import { agents, build, task } from "./utils/httpAgents.js"

/** The bytes of the body a task of id `id` with `{ text }` args is sent as. */
const bodyBytes = (id: string, text: string) =>
  Buffer.byteLength(JSON.stringify({ task_id: id, intent: "i", concept: "c", args: { text } }))

describe("HttpAgent: a task's request body is bounded (maxRequestBytes)", () => {
  it.effect("maxRequestBytes is checked: zero, negative, NaN, fractional, Infinity and null are refused by name", () =>
    Effect.gen(function* () {
      for (const value of [0, -1, Number.NaN, 2.5, Number.POSITIVE_INFINITY, null, "1000"]) {
        const error = yield* Effect.flip(build({ maxRequestBytes: value as never }))
        assert.strictEqual(error._tag, "OptionError", String(value))
        assert.strictEqual((error as { readonly path: string }).path, "maxRequestBytes", String(value))
      }
    })
  )

  it.effect(
    "a body at the bound goes; one byte over is a TooLarge record naming the option and size, nothing sent",
    () =>
      Effect.gen(function* () {
        const server = yield* AgentServer.make()
        const bound = 4096
        const service = yield* agents({ maxRequestBytes: bound })
        // "é" is two bytes: the bound counts bytes, not characters.
        const fits = `${"é".repeat(100)}${"x".repeat(bound - bodyBytes("t", "") - 200)}`
        assert.strictEqual(bodyBytes("t", fits), bound)
        const sent = yield* service.call(task("t", server.url, { text: fits }))
        assert.strictEqual(sent.status, "success", JSON.stringify(sent.error))
        assert.strictEqual(server.requests(), 1)
        const over = yield* service.call(task("t", server.url, { text: `${fits}x` }))
        assert.deepStrictEqual([over.status, over.error?.reason, over.attempts], ["error", "TooLarge", 0])
        assert.include(over.error?.message, "maxRequestBytes")
        assert.include(over.error?.message, String(bound + 1))
        assert.strictEqual(server.requests(), 1, "nothing was sent")
      })
  )

  it.effect("the default bound holds: a body of hundreds of MB is TooLarge before it is built, not 'not JSON'", () =>
    Effect.gen(function* () {
      const server = yield* AgentServer.make()
      const service = yield* agents()
      // 600 references to one MiB: 600 MiB of JSON, past what a JavaScript string can hold.
      const mib = "x".repeat(1024 * 1024)
      const huge = yield* service.call(
        task(
          "huge",
          server.url,
          Array.from({ length: 600 }, () => mib)
        )
      )
      assert.deepStrictEqual([huge.status, huge.error?.reason], ["error", "TooLarge"], JSON.stringify(huge.error))
      assert.include(huge.error?.message, "maxRequestBytes")
      // A body that cannot be built is another thing: invalid args, its cause named.
      const circular: Record<string, unknown> = {}
      circular.self = circular
      const cyclic = yield* service.call(task("cyclic", server.url, circular))
      assert.deepStrictEqual(
        [cyclic.status, cyclic.error?.reason, cyclic.error?.field],
        ["error", "InvalidRequest", "args"]
      )
      assert.include(cyclic.error?.message, "circular")
      assert.strictEqual(server.requests(), 0)
    })
  )

  it.effect("a dependent task whose dependencies' results make its body too large is TooLarge, not sent", () =>
    Effect.gen(function* () {
      const big = "y".repeat(300 * 1024)
      const server = yield* AgentServer.make((t) =>
        t.task_id === "a" ? { json: { task_id: "a", result: big } } : AgentServer.defaultReply(t)
      )
      const service = yield* agents({ maxRequestBytes: 256 * 1024 })
      const [a, b] = yield* service.dispatch([task("a", server.url), { ...task("b", server.url), dependsOn: ["a"] }])
      assert.strictEqual(a?.status, "success")
      assert.deepStrictEqual([b?.status, b?.error?.reason], ["error", "TooLarge"], JSON.stringify(b?.error))
      assert.include(b?.error?.message, "maxRequestBytes")
      assert.notInclude(b?.error?.message, "not JSON")
      assert.strictEqual(server.requests(), 1)
    })
  )
})
