import type { Socket } from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Layer, Option } from "effect"
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
