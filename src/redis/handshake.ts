/**
 * Each reconnection's handshake bounded by connectTimeout, which node-redis leaves unbounded.
 *
 * @internal
 */
import { Duration, Effect, FiberHandle } from "effect"
import type { Client } from "./client.js"
import type { Settings } from "./settings.js"

// A reconnection's handshake that did not end within connectTimeout (see boundHandshakes).
class HandshakeTimeoutError extends Error {}

// node-redis bounds a reconnection's TCP connection by connectTimeout, not the handshake after it: a server that
// accepted it and never answered (a Redis restarting behind a proxy) held the client for ever, commands refused,
// the Redis that answered later never tried. Each handshake gets connectTimeout; then node-redis drops that
// connection as after any socket error and tries again after the usual backoff. Only connection events: no cost per
// command. Set up once the client has connected: its first handshake is bounded by whoever waits for it.
export const boundHandshakes = Effect.fnUntraced(function* (s: Settings, client: Client) {
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
