/**
 * `reserve`'s connections: each opened within connectTimeout, and checked still connected as it is
 * handed out of the pool.
 *
 * @internal
 */
import { Duration, Effect, Exit, Scope } from "effect"
import { Redis } from "effect/persistence"
import { type Client, destroy, type Socket } from "./client.js"
import type { Settings } from "./settings.js"

const sendOn =
  (connection: Client) =>
  <A = unknown>(command: string, ...args: ReadonlyArray<string>): Effect.Effect<A, Redis.RedisError> =>
    Effect.tryPromise({
      try: () => connection.sendCommand([command, ...args]) as Promise<A>,
      catch: (cause) => new Redis.RedisError({ cause })
    })

// A connection of reserve's pool, its handshake included, within connectTimeout; else it is closed. NodeRedis opens
// them in the pool's own fiber, which a reserve timing out does not interrupt: one left in its handshake with a Redis
// that stopped answering stayed open, and held the pool (it opens one connection at a time), so every reserve after
// it failed its deadline until that handshake ended, if ever. Reserved connections do not reconnect (as NodeRedis's).
export const reservedConnection = (s: Settings, socket: Socket, client: Client) =>
  Effect.interruptible(
    Effect.tryPromise({
      try: async (signal) => {
        // The signal closes a socket still connecting; destroy, one that has connected. (node-redis's TLS options
        // type omits `signal`, which `tls.connect` takes as `net.connect` does.)
        const options = { ...socket, reconnectStrategy: false as const, signal }
        const connection = client.duplicate({ socket: options as Socket })
        // Failures reach the command that meets them; without a listener node-redis would throw the event.
        connection.on("error", () => {})
        signal.addEventListener("abort", () => destroy(connection), { once: true })
        try {
          await connection.connect()
          return connection
        } catch (cause) {
          destroy(connection)
          throw cause
        }
      },
      catch: (cause) => new Redis.RedisError({ cause })
    }).pipe(
      Effect.timeoutOrElse({
        duration: Duration.millis(s.connectTimeout),
        orElse: () =>
          Effect.fail(
            new Redis.RedisError({
              cause: new ConnectionTimeoutError(
                `no connection reserved within ${s.connectTimeout} ms from Redis at ${s.address}`
              )
            })
          )
      })
    )
  ).pipe(
    Effect.map((connection) => {
      const send = sendOn(connection)
      return {
        // The liveness check (see reserveLive) is answered here, with no round trip.
        send: <A = unknown>(command: string, ...args: ReadonlyArray<string>): Effect.Effect<A, Redis.RedisError> =>
          command !== liveness
            ? send<A>(command, ...args)
            : connection.isReady
              ? (Effect.void as Effect.Effect<A>)
              : Effect.fail(
                  new Redis.RedisError({ cause: new ClosedConnectionError("the reserved connection closed") })
                ),
        // Fails the commands in flight instead of waiting for their replies, as the pool requires.
        close: Effect.sync(() => destroy(connection))
      }
    })
  )

// Not a Redis command: what a reserved connection's `send` answers with whether it is still connected (see
// reservedConnection), without sending anything.
const liveness = "\u0000orchestra:liveness"

// A reserved connection found closed before it was handed out (see reserveLive).
class ClosedConnectionError extends Error {}

// A connection the pool holds idle does not reconnect (none does that a caller reserved), and the pool does not see
// it close: after a Redis restart (or a proxy's idle timeout) it handed out each idle connection closed with the old
// server, whose first command then failed ("The client is closed") although Redis was back. Each is checked as it is
// reserved (no round trip: the client knows its socket closed): one closed is given back, and failed, as the pool
// then drops it, and another reserved; at most the pool's size (10) of them, then a new one.
export const reserveLive = (
  reserve: Effect.Effect<Redis.Connection, Redis.RedisError, Scope.Scope>,
  left = 10
): Effect.Effect<Redis.Connection, Redis.RedisError, Scope.Scope> =>
  Effect.flatMap(Effect.scope, (scope) =>
    Effect.flatMap(Scope.fork(scope), (child) =>
      Effect.flatMap(Scope.provide(reserve, child), (connection) =>
        Effect.matchEffect(connection.send(liveness), {
          onSuccess: () => Effect.succeed(connection),
          onFailure: (error) =>
            Effect.andThen(
              Scope.close(child, Exit.void),
              left > 0 ? reserveLive(reserve, left - 1) : Effect.fail(error)
            )
        })
      )
    )
  )

// A new connection (reserve's, a subscription's) that was not ready in time: its handshake, or the pool's wait.
export class ConnectionTimeoutError extends Error {}
