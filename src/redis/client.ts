/**
 * The node-redis client as the connection's files see it: its type, its socket options, what the layer
 * knows of it, and how a connection of its own is closed.
 *
 * @internal
 */
import type * as NodeRedis from "@effect/platform-node/NodeRedis"
import type { Context } from "effect"
import type { Redis } from "effect/persistence"

export type Services = Context.Context<Redis.Redis | NodeRedis.NodeRedis>

export type Client = NodeRedis.NodeRedis["Service"]["client"]

/** The client's socket options (TLS, connectTimeout, the reconnection backoff). */
export type Socket = NonNullable<NonNullable<Parameters<Client["duplicate"]>[0]>["socket"]>

export interface State {
  connected: boolean
  /** The client's last connection error, for the warning of a layer that starts without Redis. */
  lastError: unknown
  /** The client, once connected. */
  client: NodeRedis.NodeRedis["Service"]["client"] | undefined
  /** When the connection was last dropped (see resetConnection; Clock milliseconds). */
  resetAt: number
}

export const destroy = (connection: Client): void => {
  try {
    connection.destroy()
  } catch {
    // node-redis before 6.3 throws when destroying a client whose connection has failed.
  }
}
