import type { Socket } from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Layer, Option } from "effect"
import type { OptionError } from "../src/Input.js"
import * as Redis from "../src/Redis.js"
import { skipRedis, skipReason, startRedis } from "./utils/redis.js"

/** Sockets of this process still open to `port`. */
const openSockets = (port: number): number =>
  (process as unknown as { _getActiveHandles(): ReadonlyArray<unknown> })
    ._getActiveHandles()
    .filter((handle) => (handle as Socket).remotePort === port && !(handle as Socket).destroyed).length

describe.skipIf(skipRedis)(`Redis.layer (${skipRedis ? skipReason : "needs redis-server"})`, () => {
  it.live("a Redis that accepts the connection but never answers (SIGSTOP) fails the layer after connectTimeout", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const server = yield* startRedis
        // The kernel still accepts connections for a stopped server: only its handshake hangs.
        yield* server.pause
        yield* Effect.addFinalizer(() => server.resume)
        const started = Date.now()
        const exit = yield* Effect.scoped(
          Layer.build(Redis.layer({ url: server.url, connectTimeout: "300 millis" }))
        ).pipe(Effect.exit, Effect.timeoutOption("5 seconds"))
        const elapsed = Date.now() - started
        assert.isTrue(Option.isSome(exit), "the layer's build ended")
        if (Option.isSome(exit)) {
          assert.isTrue(Exit.isFailure(exit.value), "the layer failed")
          const error = Exit.findErrorOption(exit.value)
          assert.isTrue(Option.isSome(error) && error.value._tag === "RedisError", String(exit.value))
        }
        assert.isTrue(elapsed < 2000, `failed after ${elapsed} ms`)
        // The client given up is closed, not left connected to the hung server.
        assert.strictEqual(openSockets(server.port), 0)
      })
    )
  )
})

describe("Redis.layer options", () => {
  it.effect("a URL node-redis cannot read (a database that is not a number, a stray %) is an OptionError on url", () =>
    Effect.gen(function* () {
      for (const url of [
        "redis://127.0.0.1:1/abc",
        "redis://127.0.0.1:1/1.5",
        "redis://127.0.0.1:1/-1",
        "redis://:s3cr%et@127.0.0.1:1",
        "redis://us%er@127.0.0.1:1"
      ]) {
        const exit = yield* Effect.exit(Effect.scoped(Layer.build(Redis.layer({ url }))))
        const error = Exit.isFailure(exit) ? Exit.findErrorOption(exit) : Option.none()
        assert.isTrue(Option.isSome(error) && error.value._tag === "OptionError", `${url}: ${String(exit)}`)
        if (Option.isSome(error)) {
          assert.strictEqual((error.value as OptionError).path, "url")
          // Never the value: it may carry a password.
          assert.notInclude(error.value.message, "s3cr")
        }
      }
    })
  )

  it.effect("options that are not an object, or with a misspelt key, are an OptionError naming it", () =>
    Effect.gen(function* () {
      for (const [options, path] of [
        [null, "options"],
        ["redis://127.0.0.1:1", "options"],
        [[], "options"],
        [{ urll: "redis://127.0.0.1:1" }, "urll"],
        [{ url: "redis://127.0.0.1:1", commandTimout: 100 }, "commandTimout"]
      ] as const) {
        const exit = yield* Effect.exit(Effect.scoped(Layer.build(Redis.layer(options as never))))
        const error = Exit.isFailure(exit) ? Exit.findErrorOption(exit) : Option.none()
        assert.isTrue(Option.isSome(error) && error.value._tag === "OptionError", `${String(options)}: ${String(exit)}`)
        if (Option.isSome(error)) assert.strictEqual((error.value as OptionError).path, path)
      }
    })
  )
})
