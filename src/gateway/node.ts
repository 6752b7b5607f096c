/**
 * The Node HTTP server `Gateway.serve` runs on: its settings checked, its limits, the connections
 * whose writes stall closed, and the connections closed after the drain.
 *
 * @internal
 */
import { createServer, type Server } from "node:http"
import type { Socket } from "node:net"
import { Duration, Effect, Result } from "effect"
import type { ServeOptions } from "../Gateway.js"
import * as Input from "../Input.js"
import * as ClientErrors from "./clientErrors.js"
import type { GatewayMetrics } from "./metrics.js"

// After the drain, what is left of the connections must not hold the shutdown: stop
// listening, close the keep-alive connections as they go idle (a drained request's goes
// idle once its last bytes are written; Node's `close` closes only those idle when it is
// called), and after `closeGrace` destroy the rest: half-sent request heads, slow readers.
/**
 * How long the connections left after the drain may take to close before they are destroyed.
 *
 * @internal
 */
export const closeGrace = Duration.seconds(1)

/**
 * Stops listening and closes the connections: idle ones as they go idle, the rest after `closeGrace`.
 *
 * @internal
 */
export const closeConnections = (server: Server | undefined): Effect.Effect<void> =>
  server === undefined
    ? Effect.void
    : Effect.gen(function* () {
        if (server.listening) server.close()
        const rounds = Duration.toMillis(closeGrace) / 10
        for (let i = 0; i < rounds; i++) {
          server.closeIdleConnections()
          const open = yield* Effect.callback<number>((resume) => {
            server.getConnections((error, count) => resume(Effect.succeed(error ? 0 : count)))
          })
          if (open === 0) return
          yield* Effect.sleep(Duration.millis(10))
        }
        server.closeAllConnections()
      })

/**
 * The options of `serve` that are the server's, not the gateway's.
 *
 * @internal
 */
export const keys: ReadonlySet<string> = new Set([
  "host",
  "port",
  "maxHeaderBytes",
  "requestTimeout",
  "keepAliveTimeout",
  "writeTimeout",
  "logRequests"
])

const host = (input: unknown): Input.Checked<string> =>
  typeof input === "string" && input.trim().length > 0 && input.trim() === input
    ? Result.succeed(input)
    : Result.fail({
        path: "host",
        message: `expected a host name or address such as "127.0.0.1", got ${Input.shown(input)}`
      })

const logRequests = (input: unknown): Input.Checked<boolean> =>
  typeof input === "boolean"
    ? Result.succeed(input)
    : Result.fail({ path: "logRequests", message: `expected true or false, got ${Input.kindOf(input)}` })

/**
 * The server's settings, checked.
 *
 * @internal
 */
export interface Settings {
  readonly host: string
  readonly port: number
  readonly maxHeaderBytes: number
  readonly requestTimeout: number
  readonly keepAliveTimeout: number
  readonly writeTimeout: number
  readonly logRequests: boolean
}

/**
 * Checks the server's options of `serve`, naming the field.
 *
 * @internal
 */
export const check = (options: ServeOptions): Input.Checked<Settings> =>
  typeof options !== "object" || options === null || Array.isArray(options)
    ? Result.fail({ path: "(options)", message: `expected an object, got ${Input.kindOf(options)}` })
    : checkFields(options)

const checkFields = (options: ServeOptions): Input.Checked<Settings> =>
  Result.map(
    Input.all([
      host(Input.orDefault(options.host, "127.0.0.1")),
      Input.int("port", Input.orDefault(options.port, 4000), { min: 0, max: 65535 }),
      Input.int("maxHeaderBytes", Input.orDefault(options.maxHeaderBytes, 16 * 1024), { min: 1024, max: 1024 * 1024 }),
      // Node's server takes whole milliseconds below its timers' limit, and throws a RangeError otherwise.
      Input.wholeMillis(
        "requestTimeout",
        Input.orDefault(options.requestTimeout, Duration.seconds(30)),
        Input.maxTimerMillis
      ),
      // Node's idle timer is keepAliveTimeout plus its keepAliveTimeoutBuffer (1 second).
      Input.wholeMillis(
        "keepAliveTimeout",
        Input.orDefault(options.keepAliveTimeout, Duration.seconds(65)),
        Input.maxTimerMillis - 1000
      ),
      Input.wholeMillis(
        "writeTimeout",
        Input.orDefault(options.writeTimeout, Duration.seconds(30)),
        Input.maxTimerMillis
      ),
      logRequests(Input.orDefault(options.logRequests, false))
    ]),
    ([host, port, maxHeaderBytes, requestTimeout, keepAliveTimeout, writeTimeout, logRequests]) => ({
      host,
      port,
      maxHeaderBytes,
      requestTimeout,
      keepAliveTimeout,
      writeTimeout,
      logRequests
    })
  )

// Closes the connections whose writes have waited `writeTimeoutMs` on a client that takes none
// of them (bytes queued, none handed on since), checked by one timer for the server: nothing a
// request, a Set entry a connection.
const closeStalledWrites = (server: Server, writeTimeoutMs: number): void => {
  const sockets = new Set<Socket>()
  const stalls = new WeakMap<Socket, { sent: number; since: number }>()
  server.on("connection", (socket: Socket) => {
    sockets.add(socket)
    socket.once("close", () => sockets.delete(socket))
  })
  const timer = setInterval(
    () => {
      const now = Date.now()
      for (const socket of sockets) {
        if (socket.writableLength === 0) {
          stalls.delete(socket)
          continue
        }
        const sent = socket.bytesWritten - socket.writableLength
        const stall = stalls.get(socket)
        if (stall === undefined || stall.sent !== sent) stalls.set(socket, { sent, since: now })
        else if (now - stall.since >= writeTimeoutMs) socket.destroy()
      }
    },
    Math.min(1000, Math.max(25, Math.ceil(writeTimeoutMs / 4)))
  )
  timer.unref()
  server.once("close", () => clearInterval(timer))
}

/**
 * The Node server of `serve`: Node's own limits set from `settings`, its own refusals answered as the
 * gateway's (`clientErrors.ts`), and writes that a client takes none of closed after `writeTimeout`.
 *
 * @internal
 */
export const make = (settings: Settings, metrics: () => GatewayMetrics | undefined): Server => {
  const { requestTimeout, maxHeaderBytes } = settings
  const headersTimeout = Math.min(requestTimeout, 60_000)
  const server = createServer({
    maxHeaderSize: maxHeaderBytes,
    requestTimeout,
    // Node checks the request deadlines only this often (30 s by default, whatever the deadline).
    connectionsCheckingInterval: Math.min(1000, Math.max(100, Math.ceil(requestTimeout / 4))),
    headersTimeout,
    keepAliveTimeout: settings.keepAliveTimeout,
    noDelay: true,
    // Node's refusal is a bare 400: `ClientErrors` answers a request without Host as the gateway's.
    requireHostHeader: false
  })
  ClientErrors.install(
    server,
    { requestTimeoutMs: requestTimeout, headersTimeoutMs: headersTimeout, maxHeaderBytes },
    metrics
  )
  closeStalledWrites(server, settings.writeTimeout)
  return server
}
