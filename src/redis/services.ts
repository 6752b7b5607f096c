/**
 * effect's Redis service over the node-redis client, with deadlines on `eval`, `reserve` and
 * `subscribe`.
 *
 * @internal
 */
import type * as NodeRedis from "@effect/platform-node/NodeRedis"
import { Context, Duration, Effect, Exit, Scope } from "effect"
import { Redis } from "effect/persistence"
import type { Services } from "./client.js"
import { evalWithin } from "./eval.js"
import type { Sockets } from "./reconnect.js"
import { ConnectionTimeoutError, reservedConnection, reserveLive } from "./reserve.js"
import type { Settings } from "./settings.js"
import { failedQueue, subscriber } from "./subscribe.js"

// effect's service over node-redis, bounded as the commands are. `eval`: one deadline (see evalWithin), on the
// shared connection and on a reserved one. `reserve` and `subscribe` open a connection of their own, whose
// handshake node-redis does not bound: on a Redis that stopped answering they waited for ever. Their connections
// are this one's (see reservedConnection, subscriber), the pool in the scope the services are built in.
export const bounded = Effect.fnUntraced(function* (
  s: Settings,
  sockets: Sockets,
  context: Services,
  tag: typeof NodeRedis.NodeRedis
) {
  const redis = Context.get(context, Redis.Redis)
  const client = Context.get(context, tag).client
  const own = yield* Redis.make({
    send: redis.send,
    connect: reservedConnection(s, sockets.client, client),
    subscribe: subscriber(s, sockets, client)
  })
  const reserveTimedOut = Effect.fail(
    new Redis.RedisError({
      cause: new ConnectionTimeoutError(
        `no connection reserved within ${s.connectTimeout} ms from Redis at ${s.address}`
      )
    })
  )
  const subscribeMillis = s.connectTimeout + s.commandTimeout
  const subscribeTimedOut = failedQueue(
    new Redis.RedisError({
      cause: new ConnectionTimeoutError(`not subscribed within ${subscribeMillis} ms to Redis at ${s.address}`)
    })
  )
  return Context.add(context, Redis.Redis, {
    send: redis.send,
    eval: evalWithin(redis.send, s.commandTimeout),
    reserve: Effect.map(
      Effect.timeoutOrElse(reserveLive(own.reserve), {
        duration: Duration.millis(s.connectTimeout),
        orElse: () => reserveTimedOut
      }),
      (connection): Redis.Connection => ({ send: connection.send, eval: evalWithin(connection.send, s.commandTimeout) })
    ),
    // In a scope of its own, closed when it gives up: the subscriber is the caller's scope's, so one left in its
    // handshake (or retrying a refused connection) subscribed once Redis answered, into a queue nobody read.
    subscribe: (channel) =>
      Effect.flatMap(Effect.scope, (scope) =>
        Effect.flatMap(Scope.fork(scope), (child) =>
          Effect.timeoutOrElse(Scope.provide(own.subscribe(channel), child), {
            duration: Duration.millis(subscribeMillis),
            orElse: () => Effect.andThen(Scope.close(child, Exit.void), subscribeTimedOut)
          })
        )
      )
  })
})
