/**
 * Reconnection: the backoff between attempts, the socket options of the layer's client and of each
 * subscription's connection, and the refusals a reconnection meets, said once per connection.
 *
 * @internal
 */
import { Effect } from "effect"
import * as Input from "../Input.js"
import type { Socket, State } from "./client.js"
import { isCredentialRefusal, isErrorReply, isNoPerm } from "./errors.js"
import { minReconnectMillis, type Settings } from "./settings.js"

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

export const backoff = (retries: number, max: number): number =>
  Math.min(minReconnectMillis * 2 ** Math.min(retries, 16), max)

/** The layer's client's socket options, and a subscription's (its own reconnection's refusals). */
export interface Sockets {
  readonly client: Socket
  readonly subscription: (channel: string) => SubscriptionSocket
}

/** A subscription's socket options, and what tells them its first connection is made. */
export interface SubscriptionSocket {
  readonly socket: Socket
  readonly connected: () => void
}

/**
 * The socket options of the layer's client and of each subscription's connection: their reconnection backoff and
 * the refusals each says. `runSync` runs their warnings in the layer's context.
 */
export const sockets = (s: Settings, state: State, runSync: (effect: Effect.Effect<void>) => void): Sockets => {
  const layerRefusal: Refusal = { message: undefined, of: "" }
  const socket: Socket = {
    ...(s.tls === undefined ? {} : { tls: true as const, ...s.tls }),
    connectTimeout: s.connectTimeout,
    reconnectStrategy: (retries: number, cause: Error) => {
      state.lastError = cause
      if (state.connected) runSync(refused(s, layerRefusal, retries, cause))
      // Before the first connection, refused credentials end the attempt: its caller decides (start.ts).
      if (!state.connected && isCredentialRefusal(cause)) return cause
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
  return { client: socket, subscription: subscriptionSocket }
}
