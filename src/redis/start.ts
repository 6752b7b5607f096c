/**
 * How the layer starts: connected within connectTimeout (`onUnreachableAtStart: "fail"`), or at once,
 * connecting in the background (`"start"`), and the errors the layer fails with.
 *
 * @internal
 */
import type * as NodeRedis from "@effect/platform-node/NodeRedis"
import { Context, Deferred, Duration, Effect, Exit, Layer, Option, Scope } from "effect"
import { Redis } from "effect/persistence"
import type { Services, State } from "./client.js"
import { errorText, isCredentialRefusal } from "./errors.js"
import { evalWithin } from "./eval.js"
import { boundHandshakes } from "./handshake.js"
import { backoff, type Sockets } from "./reconnect.js"
import { bounded } from "./services.js"
import type { Settings } from "./settings.js"
import { failedQueue } from "./subscribe.js"

// effect's `RedisError` has no message of its own (its schema has only `cause`), so a failed
// connection said "" in a log or a rendering. The layer's errors say what failed and where.
export const layerError = (message: string, cause: unknown): Redis.RedisError => {
  const error = new Redis.RedisError({ cause })
  Object.defineProperty(error, "message", { value: message, writable: true, configurable: true, enumerable: false })
  return error
}

// Its message is the whole story, so a rendering that reads the innermost cause (errorText) says where it was refused;
// the reply itself stays readable.
class CredentialsRefusedError extends Error {
  constructor(
    message: string,
    readonly reply: unknown
  ) {
    super(message)
  }
}

// Redis refused the credentials of the URL: no outage, and waiting does not put it right. The address never holds the
// password (settings.ts), nor does Redis's reply.
const credentialsRefused = (s: Settings, reply: unknown): Redis.RedisError => {
  const message = `Redis at ${s.address} refused the credentials of its URL: ${errorText(reply)}`
  return layerError(message, new CredentialsRefusedError(message, reply))
}

// node-redis bounds only the socket's connection by connectTimeout, not the handshake after
// it: a hung Redis (or another server on the port) that accepts the connection and never
// answered held the build for ever. The build's scope is the layer's: giving up closes the client.
export const connect = (
  s: Settings,
  sockets: Sockets,
  client: Layer.Layer<Redis.Redis | NodeRedis.NodeRedis, Redis.RedisError>,
  state: State,
  tag: typeof NodeRedis.NodeRedis
): Effect.Effect<Services, Redis.RedisError, Scope.Scope> =>
  Layer.build(client).pipe(
    Effect.mapError((error) =>
      isCredentialRefusal(error)
        ? credentialsRefused(s, error)
        : layerError(`Redis at ${s.address}: connection failed: ${errorText(error)}`, error.cause)
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

// Refused by the layer before its client has ever connected: never sent (see neverSent), as an offline client's.
class NotConnectedError extends Error {}

// onUnreachableAtStart "start": the client is built in the background (node-redis keeps trying to connect, and
// a build that fails is tried again), and the services answer for it meanwhile: every command fails at once, as an
// offline client's do, until it has connected; then they are its own. Credentials refused while the build waits fail
// it at once: Redis is there, and no wait puts a wrong password right. Refused after the build (Redis came up later),
// they are tried again as any failure, reported as the outage's cause.
export const startUnconnected = Effect.fnUntraced(function* (
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
  let starting = true
  let refusedWith: string | undefined
  const connected = yield* Deferred.make<void, Redis.RedisError>()
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
            const refusal = isCredentialRefusal(error)
            // Said once per refusal (the attempts' other failures between, a deadline, do not say it again): otherwise
            // the stores' "not connected to Redis yet" was all a user saw.
            const again = Effect.suspend(() => {
              const text = refusal ? errorText(error) : undefined
              const said =
                text === undefined || text === refusedWith
                  ? Effect.void
                  : Effect.logWarning(
                      `${credentialsRefused(s, error).message}; trying again at most ${s.reconnectMax} ms apart`
                    )
              if (text !== undefined) refusedWith = text
              return said.pipe(
                Effect.andThen(Effect.sleep(Duration.millis(backoff(retries, s.reconnectMax)))),
                Effect.andThen(Effect.suspend(() => attempt(retries + 1)))
              )
            })
            // Whether the build still waits is read once the client is closed: a start that ended meanwhile
            // reads no failure any more, and the attempts go on (the layer started without Redis).
            return Scope.close(child, Exit.fail(error)).pipe(
              Effect.andThen(
                Effect.suspend(() =>
                  starting && refusal ? Deferred.fail(connected, credentialsRefused(s, error)) : again
                )
              )
            )
          }
        }
      )
    )
  yield* Effect.forkIn(attempt(0), scope)
  const first = yield* Effect.timeoutOption(Deferred.await(connected), Duration.millis(s.connectTimeout)).pipe(
    Effect.ensuring(
      Effect.sync(() => {
        starting = false
      })
    )
  )
  // A refusal that completed `connected` as the deadline passed (before `starting` was cleared) is still the
  // build's: awaited now, it fails it rather than being read by nobody while the attempts have stopped.
  if (Option.isNone(first) && Deferred.isDoneUnsafe(connected)) yield* Deferred.await(connected)
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
