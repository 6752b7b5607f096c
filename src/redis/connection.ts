/**
 * The connection's lifecycle: the node-redis client built with `Redis.layer`'s settings, its first
 * connection and every handshake bounded by `connectTimeout`, the reconnection backoff, and the
 * start without Redis (`onUnreachableAtStart: "start"`) that connects in the background.
 *
 * @internal
 */
import type * as NodeRedis from "@effect/platform-node/NodeRedis"
import { Context, Deferred, Duration, Effect, Exit, FiberHandle, Layer, Option, Queue, References, Scope } from "effect"
import { Redis } from "effect/persistence"
import * as Input from "../Input.js"
import type { Options } from "../Redis.js"
import { errorText, isErrorReply, isNoPerm, isReadOnly, type StoreError } from "./errors.js"
import { evalWithin } from "./eval.js"
import { minReconnectMillis, type Settings, settings } from "./settings.js"

/** @internal */
export const ClientDeadline: Context.Reference<number | undefined> = Context.Reference<number | undefined>(
  "effect-orchestra/Redis/ClientDeadline",
  { defaultValue: () => undefined }
)

/**
 * What a guard calls with a failed call's error and how long its calls have failed with no success between (see
 * {@link layer}): a primary turned replica (READONLY), or a connection that has carried no reply for connectTimeout,
 * is dropped, so the client connects again, to the Redis its address names now.
 *
 * @internal
 */
export const ConnectionReset: Context.Reference<
  ((error: StoreError, failingFor: number) => Effect.Effect<void>) | undefined
> = Context.Reference<((error: StoreError, failingFor: number) => Effect.Effect<void>) | undefined>(
  "effect-orchestra/Redis/ConnectionReset",
  { defaultValue: () => undefined }
)

// effect's `RedisError` has no message of its own (its schema has only `cause`), so a failed
// connection said "" in a log or a rendering. The layer's errors say what failed and where.
const layerError = (message: string, cause: unknown): Redis.RedisError => {
  const error = new Redis.RedisError({ cause })
  Object.defineProperty(error, "message", { value: message, writable: true, configurable: true, enumerable: false })
  return error
}

const loadNodeRedis = Effect.tryPromise({
  try: () => import("@effect/platform-node/NodeRedis"),
  catch: (cause) => {
    const message = `the redis package could not be loaded (npm install redis): ${errorText(cause)}`
    return layerError(message, new Error(message))
  }
})

/** @internal */
export const layer = (
  options: Options = {}
): Layer.Layer<Redis.Redis | NodeRedis.NodeRedis, Input.OptionError | Redis.RedisError> =>
  Layer.unwrap(
    Effect.gen(function* () {
      const s = yield* Input.orOptionError(settings(options))
      const NodeRedis = yield* loadNodeRedis
      // With "fail", a failure before the first connection fails the layer (a wrong URL should not
      // hang start-up); once connected, or with "start", the client never gives up reconnecting.
      const state: State = {
        connected: false,
        lastError: undefined,
        client: undefined,
        resetAt: Number.NEGATIVE_INFINITY
      }
      const runSync = Effect.runSyncWith(yield* Effect.context<never>())
      const layerRefusal: Refusal = { message: undefined, of: "" }
      const socket: Socket = {
        ...(s.tls === undefined ? {} : { tls: true as const, ...s.tls }),
        connectTimeout: s.connectTimeout,
        reconnectStrategy: (retries: number, cause: Error) => {
          state.lastError = cause
          if (state.connected) runSync(refused(s, layerRefusal, retries, cause))
          return state.connected || s.onUnreachableAtStart === "start" ? backoff(retries, s.reconnectMax) : cause
        }
      }
      // A subscription's connection is made once the layer's has connected: it reconnects for good, and its
      // refusals are its own (see refused). Its first connection refused (a password rotated since the layer's
      // connected) fails the subscription with the refusal: tried again, it failed at its deadline, a timeout that
      // did not say why. A reconnection an ACL refuses (NOPERM: the channel taken from the user, its re-subscribe
      // refused) fails it too, said once naming the channel, as its first SUBSCRIBE refused does: tried again, it
      // was refused for good, the queue receiving nothing and failing never, and the queue is the only caller to tell.
      const subscriptionSocket = (channel: string): SubscriptionSocket => {
        const refusal: Refusal = { message: undefined, of: ` of the subscription to ${Input.shown(channel)}` }
        let connected = false
        return {
          socket: {
            ...socket,
            reconnectStrategy: (retries: number, cause: Error) => {
              if (!connected) return isErrorReply(cause) ? cause : backoff(retries, s.reconnectMax)
              if (isNoPerm(cause)) {
                runSync(
                  Effect.logWarning(
                    `Redis at ${s.address} refused the reconnection${refusal.of}: ${cause.message}; its queue fails`
                  )
                )
                return cause
              }
              runSync(refused(s, refusal, retries, cause))
              return backoff(retries, s.reconnectMax)
            }
          },
          connected: () => {
            connected = true
          }
        }
      }
      const client = NodeRedis.layer({
        url: s.url,
        disableOfflineQueue: true,
        commandOptions: { timeout: s.commandTimeout, rejectInFlight: true },
        socket
      }).pipe(
        // NodeRedis logs a warning with a stack trace on every failed reconnection attempt;
        // the stores' guards report an outage once instead.
        Layer.provide(Layer.succeed(References.MinimumLogLevel, "Error"))
      )
      const sockets: Sockets = { client: socket, subscription: subscriptionSocket }
      const built =
        s.onUnreachableAtStart === "start"
          ? startUnconnected(s, sockets, client, state, NodeRedis.NodeRedis)
          : connect(s, sockets, client, state, NodeRedis.NodeRedis)
      return Layer.effectContext(built).pipe(
        Layer.merge(Layer.succeed(ClientDeadline, s.commandTimeout)),
        Layer.merge(Layer.succeed(ConnectionReset, resetConnection(s, state)))
      )
    })
  )

interface State {
  connected: boolean
  /** The client's last connection error, for the warning of a layer that starts without Redis. */
  lastError: unknown
  /** The client, once connected. */
  client: NodeRedis.NodeRedis["Service"]["client"] | undefined
  /** When the connection was last dropped (see resetConnection; Clock milliseconds). */
  resetAt: number
}

// A connection dropped because its Redis is a replica now, or because it carried no reply (see resetConnection).
class ReadOnlyReplicaError extends Error {}
class SilentConnectionError extends Error {}

// After a failover the connection stays on the old primary, now a replica that refuses every write (READONLY):
// node-redis never reconnects on its own, so the stores failed until the process restarted. A connection that a
// proxy, a NAT or a vanished host lost without closing it carries no reply again, and a command's deadline
// (rejectInFlight) leaves it open: the stores timed out until TCP gave up, if ever (never, through a proxy that
// still answers TCP). Dropping it makes node-redis connect again, to the Redis the address (a DNS name) names now:
// after calls that all timed out for connectTimeout (the wait a new connection's handshake is given). At most
// once per reconnectMax: an address that still names the replica is not reconnected to in a loop.
const resetConnection =
  (s: Settings, state: State) =>
  (error: StoreError, failingFor: number): Effect.Effect<void> => {
    const readOnly = isReadOnly(error)
    return readOnly || (error.reason === "Timeout" && failingFor >= s.connectTimeout)
      ? Effect.clockWith((clock) => {
          const client = state.client
          const now = clock.currentTimeMillisUnsafe()
          // An internal of node-redis (6.x), as in boundHandshakes.
          if (
            client === undefined ||
            !client.isReady ||
            now < state.resetAt + s.reconnectMax ||
            typeof client._resetDesyncedConnection !== "function"
          ) {
            return Effect.void
          }
          state.resetAt = now
          if (!readOnly) {
            const message = `Redis at ${s.address} answered no call for ${failingFor} ms: reconnecting`
            client._resetDesyncedConnection(new SilentConnectionError(message))
            return Effect.logInfo(message)
          }
          const message = `Redis at ${s.address} answered READONLY (a replica now): reconnecting, to the primary its address names`
          client._resetDesyncedConnection(new ReadOnlyReplicaError(message))
          return Effect.logWarning(message)
        })
      : Effect.void
  }

/** One connection's refusals: the error reply last logged since it was lost, and which connection it is. */
interface Refusal {
  message: string | undefined
  readonly of: string
}

// A reconnection that Redis answered with an error (a password rotated: WRONGPASS; a database removed) is tried
// again for good, while the stores only see "The client is offline": one warning per refusal says why. The
// first retry of an outage (`retries` 0) starts it afresh. Socket errors are the outage the stores report. Each
// connection (the layer's, each subscription's) has its own: shared, one connection's first retry cleared what the
// other had said, and each refusal was said once for both, or again for each, never saying which was refused.
const refused = (s: Settings, refusal: Refusal, retries: number, cause: Error): Effect.Effect<void> => {
  if (retries === 0) refusal.message = undefined
  if (!isErrorReply(cause) || cause.message === refusal.message) return Effect.void
  refusal.message = cause.message
  return Effect.logWarning(
    `Redis at ${s.address} refused the reconnection${refusal.of}: ${cause.message}; trying again at most ${s.reconnectMax} ms apart`
  )
}

const backoff = (retries: number, max: number): number => Math.min(minReconnectMillis * 2 ** Math.min(retries, 16), max)

type Services = Context.Context<Redis.Redis | NodeRedis.NodeRedis>

type Client = NodeRedis.NodeRedis["Service"]["client"]

/** The client's socket options (TLS, connectTimeout, the reconnection backoff). */
type Socket = NonNullable<NonNullable<Parameters<Client["duplicate"]>[0]>["socket"]>

/** The layer's client's socket options, and a subscription's (its own reconnection's refusals). */
interface Sockets {
  readonly client: Socket
  readonly subscription: (channel: string) => SubscriptionSocket
}

/** A subscription's socket options, and what tells them its first connection is made. */
interface SubscriptionSocket {
  readonly socket: Socket
  readonly connected: () => void
}

const destroy = (connection: Client): void => {
  try {
    connection.destroy()
  } catch {
    // node-redis before 6.3 throws when destroying a client whose connection has failed.
  }
}

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
const reservedConnection = (s: Settings, socket: Socket, client: Client) =>
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
const reserveLive = (
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
class ConnectionTimeoutError extends Error {}

// A subscription's failures come through its queue: one that ends at once with `error`.
const failedQueue = (error: Redis.RedisError): Effect.Effect<Queue.Dequeue<Redis.RedisMessage, Redis.RedisError>> =>
  Effect.flatMap(Queue.make<Redis.RedisMessage, Redis.RedisError>(), (queue) =>
    Effect.as(Queue.fail(queue, error), queue)
  )

// A subscription's connection (see NodeRedis's): it reconnects with the layer's backoff and re-subscribes, each
// reconnection's handshake bounded by connectTimeout as the layer's client's are (see boundHandshakes). Under
// NodeRedis's, one reconnecting to a server that accepted and never answered (a Redis restarting behind a proxy)
// waited on it for ever: the subscription delivered nothing again, and said nothing.
const subscriber =
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

// effect's service over node-redis, bounded as the commands are. `eval`: one deadline (see evalWithin), on the
// shared connection and on a reserved one. `reserve` and `subscribe` open a connection of their own, whose
// handshake node-redis does not bound: on a Redis that stopped answering they waited for ever. Their connections
// are this one's (see reservedConnection, subscriber), the pool in the scope the services are built in.
const bounded = Effect.fnUntraced(function* (
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

// node-redis bounds only the socket's connection by connectTimeout, not the handshake after
// it: a hung Redis (or another server on the port) that accepts the connection and never
// answered held the build for ever. The build's scope is the layer's: giving up closes the client.
const connect = (
  s: Settings,
  sockets: Sockets,
  client: Layer.Layer<Redis.Redis | NodeRedis.NodeRedis, Redis.RedisError>,
  state: State,
  tag: typeof NodeRedis.NodeRedis
): Effect.Effect<Services, Redis.RedisError, Scope.Scope> =>
  Layer.build(client).pipe(
    Effect.mapError((error) =>
      layerError(`Redis at ${s.address}: connection failed: ${errorText(error)}`, error.cause)
    ),
    Effect.flatMap((context) => bounded(s, sockets, context, tag)),
    Effect.timeoutOrElse({
      duration: Duration.millis(s.connectTimeout),
      orElse: () => {
        const message = `Redis at ${s.address} did not answer the connection's handshake within ${s.connectTimeout} ms`
        return Effect.fail(layerError(message, new Error(message)))
      }
    }),
    Effect.tap((context) =>
      Effect.andThen(
        Effect.sync(() => {
          state.connected = true
          state.client = Context.get(context, tag).client
        }),
        boundHandshakes(s, Context.get(context, tag).client)
      )
    )
  )

// A reconnection's handshake that did not end within connectTimeout (see boundHandshakes).
class HandshakeTimeoutError extends Error {}

// node-redis bounds a reconnection's TCP connection by connectTimeout, not the handshake after it: a server that
// accepted it and never answered (a Redis restarting behind a proxy) held the client for ever, commands refused,
// the Redis that answered later never tried. Each handshake gets connectTimeout; then node-redis drops that
// connection as after any socket error and tries again after the usual backoff. Only connection events: no cost per
// command. Set up once the client has connected: its first handshake is bounded by whoever waits for it.
const boundHandshakes = Effect.fnUntraced(function* (s: Settings, client: Client) {
  const run = yield* FiberHandle.makeRuntime<never>()
  const expired = Effect.sleep(Duration.millis(s.connectTimeout)).pipe(
    Effect.andThen(
      Effect.sync(() => {
        // An internal of node-redis (6.x): without it, the handshake stays unbounded as before.
        if (!client.isReady && typeof client._resetDesyncedConnection === "function") {
          client._resetDesyncedConnection(
            new HandshakeTimeoutError(
              `Redis at ${s.address} did not answer the handshake within ${s.connectTimeout} ms`
            )
          )
        }
      })
    )
  )
  // Each event replaces the fiber of the one before it.
  client.on("connect", () => run(expired))
  client.on("ready", () => run(Effect.void))
})

// Refused by the layer before its client has ever connected: never sent (see neverSent), as an offline client's.
class NotConnectedError extends Error {}

// onUnreachableAtStart "start": the client is built in the background (node-redis keeps trying to connect, and
// a build that fails, an AUTH refused, is tried again), and the services answer for it meanwhile: every
// command fails at once, as an offline client's do, until it has connected; then they are its own.
const startUnconnected = Effect.fnUntraced(function* (
  s: Settings,
  sockets: Sockets,
  client: Layer.Layer<Redis.Redis | NodeRedis.NodeRedis, Redis.RedisError>,
  state: State,
  tag: typeof NodeRedis.NodeRedis
) {
  const scope = yield* Effect.scope
  let redis: Redis.Redis["Service"] | undefined
  let node: NodeRedis.NodeRedis["Service"] | undefined
  let warned = false
  const connected = yield* Deferred.make<void>()
  // node-redis's connectTimeout ends at the socket's connection: a server that accepts it and never answers the
  // handshake held the attempt, and the client with it, for ever. Each attempt gets connectTimeout, then another.
  const timedOut = layerError(
    `Redis at ${s.address}: no connection within ${s.connectTimeout} ms (its handshake included)`,
    new Error(`no connection within ${s.connectTimeout} ms`)
  )
  const attempt = (retries: number): Effect.Effect<void> =>
    Effect.flatMap(Scope.fork(scope), (child) =>
      Effect.matchEffect(
        Effect.timeoutOrElse(
          Effect.flatMap(Layer.buildWithScope(client, child), (context) =>
            Scope.provide(bounded(s, sockets, context, tag), child)
          ),
          {
            duration: Duration.millis(s.connectTimeout),
            orElse: () => Effect.fail(timedOut)
          }
        ),
        {
          onSuccess: (services) => {
            redis = Context.get(services, Redis.Redis)
            node = Context.get(services, tag)
            state.connected = true
            state.client = node.client
            const said = warned ? Effect.logInfo(`Redis at ${s.address} connected: the stores use it`) : Effect.void
            return Deferred.succeed(connected, undefined).pipe(
              Effect.andThen(Scope.provide(boundHandshakes(s, node.client), child)),
              Effect.andThen(said)
            )
          },
          onFailure: (error) => {
            // The client's own error (a refused connection) says more than the deadline that cut it short.
            if (error !== timedOut || state.lastError === undefined) state.lastError = error
            return Scope.close(child, Exit.fail(error)).pipe(
              Effect.andThen(Effect.sleep(Duration.millis(backoff(retries, s.reconnectMax)))),
              Effect.andThen(Effect.suspend(() => attempt(retries + 1)))
            )
          }
        }
      )
    )
  yield* Effect.forkIn(attempt(0), scope)
  const first = yield* Effect.timeoutOption(Deferred.await(connected), Duration.millis(s.connectTimeout))
  if (Option.isNone(first) && redis === undefined) {
    warned = true
    const why = state.lastError === undefined ? `no answer within ${s.connectTimeout} ms` : errorText(state.lastError)
    yield* Effect.logWarning(
      `Redis at ${s.address} unreachable at start (${why}): started without it (onUnreachableAtStart: "start"); until it connects the stores fail open or closed as during an outage`
    )
  }
  const refusal = new Redis.RedisError({ cause: new NotConnectedError(`not connected to Redis at ${s.address} yet`) })
  const notConnected = Effect.fail(refusal)
  const send = <A = unknown>(command: string, ...args: ReadonlyArray<string>): Effect.Effect<A, Redis.RedisError> =>
    redis === undefined ? notConnected : redis.send<A>(command, ...args)
  const service: Redis.Redis["Service"] = {
    send,
    eval: evalWithin(send, s.commandTimeout),
    // A subscription's failures come through its queue: one that ends at once with the refusal.
    subscribe: (channel) =>
      Effect.suspend(() => (redis === undefined ? failedQueue(refusal) : redis.subscribe(channel))),
    reserve: Effect.suspend(() => (redis === undefined ? notConnected : redis.reserve))
  }
  const nodeService: NodeRedis.NodeRedis["Service"] = {
    get client() {
      if (node === undefined) throw new NotConnectedError(`not connected to Redis at ${s.address} yet`)
      return node.client
    },
    use: (f) => Effect.suspend(() => (node === undefined ? notConnected : node.use(f)))
  }
  return Context.make(tag, nodeService).pipe(Context.add(Redis.Redis, service))
})
