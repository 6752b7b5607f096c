/**
 * The connection's layer: the node-redis client built with `Redis.layer`'s settings, started as
 * `onUnreachableAtStart` says (start.ts), with the deadline and the reset its guards read. Its
 * concerns are in files of their own: reconnection (reconnect.ts), handshakes (handshake.ts), the
 * connection's reset (reset.ts), reserved connections (reserve.ts), subscriptions (subscribe.ts)
 * and the bounded service over them (services.ts).
 *
 * @internal
 */
import type * as NodeRedis from "@effect/platform-node/NodeRedis"
import { Context, Effect, Layer, References } from "effect"
import type { Redis } from "effect/persistence"
import * as Input from "../Input.js"
import type { Options } from "../Redis.js"
import type { State } from "./client.js"
import { errorText, type StoreError } from "./errors.js"
import { sockets as makeSockets } from "./reconnect.js"
import { resetConnection } from "./reset.js"
import { settings } from "./settings.js"
import { connect, layerError, startUnconnected } from "./start.js"

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
      const sockets = makeSockets(s, state, runSync)
      const client = NodeRedis.layer({
        url: s.url,
        disableOfflineQueue: true,
        commandOptions: { timeout: s.commandTimeout, rejectInFlight: true },
        socket: sockets.client
      }).pipe(
        // NodeRedis logs a warning with a stack trace on every failed reconnection attempt;
        // the stores' guards report an outage once instead.
        Layer.provide(Layer.succeed(References.MinimumLogLevel, "Error"))
      )
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
