/**
 * Dropping the layer's connection so that node-redis connects again: after a failover (READONLY) or
 * after calls that all timed out for connectTimeout.
 *
 * @internal
 */
import { Effect } from "effect"
import type { State } from "./client.js"
import { isReadOnly, type StoreError } from "./errors.js"
import type { Settings } from "./settings.js"

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
export const resetConnection =
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
