/**
 * A subscription's connection: its own reconnection and handshake deadline, its failures through its
 * queue.
 *
 * @internal
 */
import { Deferred, Effect, Exit, Queue } from "effect"
import { Redis } from "effect/persistence"
import { type Client, destroy, type Socket } from "./client.js"
import { boundHandshakes } from "./handshake.js"
import type { Sockets } from "./reconnect.js"
import type { Settings } from "./settings.js"

// A subscription's failures come through its queue: one that ends at once with `error`.
export const failedQueue = (
  error: Redis.RedisError
): Effect.Effect<Queue.Dequeue<Redis.RedisMessage, Redis.RedisError>> =>
  Effect.flatMap(Queue.make<Redis.RedisMessage, Redis.RedisError>(), (queue) =>
    Effect.as(Queue.fail(queue, error), queue)
  )

// A subscription's connection (see NodeRedis's): it reconnects with the layer's backoff and re-subscribes, each
// reconnection's handshake bounded by connectTimeout as the layer's client's are (see boundHandshakes). Under
// NodeRedis's, one reconnecting to a server that accepted and never answered (a Redis restarting behind a proxy)
// waited on it for ever: the subscription delivered nothing again, and said nothing.
export const subscriber =
  (s: Settings, sockets: Sockets, client: Client) =>
  (channel: string, onMessage: (message: Redis.RedisMessage) => void) =>
    Effect.gen(function* () {
      const terminal = yield* Deferred.make<void, Redis.RedisError>()
      // node-redis cannot destroy a socket still connecting: the signal closes it.
      const abort = new AbortController()
      const own = sockets.subscription(channel)
      const connection = yield* Effect.acquireRelease(
        Effect.sync(() => client.duplicate({ socket: { ...own.socket, signal: abort.signal } as Socket })),
        (connection) =>
          Effect.sync(() => {
            destroy(connection)
            abort.abort()
          })
      )
      connection.on("error", (cause) => {
        if (!abort.signal.aborted && !connection.isOpen) {
          Deferred.doneUnsafe(terminal, Exit.fail(new Redis.RedisError({ cause })))
        }
      })
      yield* Effect.tryPromise({
        try: async () => {
          try {
            await connection.connect()
            own.connected()
            await connection.subscribe(channel, (message, channel) => onMessage({ channel, message }))
          } catch (cause) {
            // A subscription refused (an ACL's NOPERM) fails its queue: its connection goes now, not with the scope.
            destroy(connection)
            abort.abort()
            throw cause
          }
        },
        catch: (cause) => new Redis.RedisError({ cause })
      })
      yield* boundHandshakes(s, connection)
      return Deferred.await(terminal)
    })
