/**
 * What Node's HTTP server answers on its own, before any route sees the request (a request
 * slower than `requestTimeout`, a head over `maxHeaderBytes`, bytes that are not HTTP, chunk
 * extensions over Node's limit, an `Expect` other than `100-continue`, an HTTP/1.1 request without
 * `Host`, a `CONNECT`, which it would drop unanswered), answered as every
 * other refusal of the gateway: an OpenAI-shaped JSON body with the right status, the
 * connection closed after it, and counted in the gateway's metrics (route `other`).
 *
 * @internal
 */
import { type IncomingMessage, type Server, type ServerResponse, STATUS_CODES } from "node:http"
import type { Duplex } from "node:stream"
import { fromGatewayError, type GatewayError, gatewayError } from "./errors.js"
import type { GatewayMetrics } from "./metrics.js"
import { requestIdHeader } from "./routes.js"
import { makeIds } from "./server.js"

/**
 * The server's limits, as its refusals name them.
 *
 * @internal
 */
export interface Limits {
  readonly requestTimeoutMs: number
  readonly headersTimeoutMs: number
  readonly maxHeaderBytes: number
}

interface Answer {
  readonly status: number
  readonly reason: string
  readonly body: string
  /** The whole HTTP/1.1 response for the socket, up to its request id's value. */
  readonly head: string
  /** The rest of it, after the request id. */
  readonly rest: string
}

const answerOf = (error: GatewayError): Answer => {
  const wire = fromGatewayError(error)
  const body = JSON.stringify(wire.body)
  const head =
    `HTTP/1.1 ${wire.status} ${STATUS_CODES[wire.status]}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n${requestIdHeader}: `
  return { status: wire.status, reason: wire.reason, body, head, rest: `\r\n\r\n${body}` }
}

interface ClientError extends Error {
  readonly code?: string | undefined
  readonly reason?: unknown
}

// Any other parse error: llhttp's own words for it are a constant text, never the request's bytes.
const invalid = (code: string, reason: unknown): Answer =>
  answerOf(
    gatewayError(
      "InvalidRequest",
      `the request is not valid HTTP/1.1: ${typeof reason === "string" && reason.length > 0 ? `${reason} (${code})` : code}`,
      { code: "invalid_http" }
    )
  )

// The response of the request in flight on the socket (one a route is answering), as Node itself reads it.
const inFlight = (socket: Duplex): ServerResponse | null | undefined =>
  (socket as Duplex & { readonly _httpMessage?: ServerResponse | null })._httpMessage

/**
 * Answers on `server` what Node would answer itself. `metrics` is read at each refusal: the
 * gateway's, once it is built.
 *
 * @internal
 */
export const install = (server: Server, limits: Limits, metrics: () => GatewayMetrics | undefined): void => {
  // Named as every answer of the gateway is (`x-request-id`), by ids of the server's own.
  const nextId = makeIds()
  const headers =
    limits.headersTimeoutMs < limits.requestTimeoutMs ? ` (its headers within ${limits.headersTimeoutMs} ms)` : ""
  const timeout = answerOf(
    gatewayError(
      "InvalidRequest",
      `the request did not arrive in full within the gateway's request timeout of ${limits.requestTimeoutMs} ms${headers}`,
      { status: 408, code: "client_timeout" }
    )
  )
  const headTooLarge = answerOf(
    gatewayError(
      "TooLarge",
      `the request's head (request line and headers) is over the gateway's limit of ${limits.maxHeaderBytes} bytes`,
      { status: 431, code: "headers_too_large" }
    )
  )
  const extensionsTooLarge = answerOf(
    gatewayError("TooLarge", "the request body's chunk extensions are over Node's limit of 16 KiB", {
      code: "request_too_large"
    })
  )
  const expectation = answerOf(
    gatewayError("InvalidRequest", 'the request\'s Expect header cannot be met: only "100-continue" is', {
      status: 417,
      code: "expectation_failed"
    })
  )
  const missingHost = answerOf(
    gatewayError("InvalidRequest", "the request has no Host header, which every HTTP/1.1 request must send", {
      code: "missing_host_header"
    })
  )
  const connect = answerOf(
    gatewayError("MethodNotAllowed", "CONNECT is not allowed: this is an OpenAI-compatible API, not a proxy", {
      status: 405
    })
  )
  const answers: Readonly<Record<string, Answer>> = {
    ERR_HTTP_REQUEST_TIMEOUT: timeout,
    HPE_HEADER_OVERFLOW: headTooLarge,
    HPE_CHUNK_EXTENSIONS_OVERFLOW: extensionsTooLarge
  }

  // With a listener, Node neither answers nor destroys the socket: both are ours now.
  server.on("clientError", (error: ClientError, socket: Duplex) => {
    const code = error.code ?? ""
    const response = inFlight(socket)
    // A connection reset or broken pipe (any error not of the request itself) has no one to answer; nor
    // has a response whose head is sent (a second status line would corrupt it), as Node decides too.
    if (
      !socket.writable ||
      response?.headersSent === true ||
      (code !== "ERR_HTTP_REQUEST_TIMEOUT" && !code.startsWith("HPE_"))
    ) {
      socket.destroy()
      return
    }
    const answer = answers[code] ?? invalid(code, error.reason)
    // A request a route is answering (its body late) is counted by that route, which sees its connection
    // close (499): counted here too, it would be counted twice.
    if (response == null) metrics()?.refused(answer.status, answer.reason)
    // Destroyed once flushed, as Node's own answer is, so that a client that keeps its side open holds nothing.
    socket.end(`${answer.head}${nextId("req_")}${answer.rest}`, () => socket.destroy())
  })

  // Without a listener, Node drops a CONNECT's connection without a word; `head` (what came after it) is not read.
  server.on("connect", (_request: IncomingMessage, socket: Duplex) => {
    metrics()?.refused(connect.status, connect.reason)
    socket.on("error", () => socket.destroy())
    socket.end(`${connect.head}${nextId("req_")}${connect.rest}`, () => socket.destroy())
  })

  const refuse = (answer: Answer, response: ServerResponse) => {
    metrics()?.refused(answer.status, answer.reason)
    response.writeHead(answer.status, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(answer.body),
      connection: "close",
      [requestIdHeader]: nextId("req_")
    })
    response.end(answer.body)
  }

  server.on("checkExpectation", (_request: IncomingMessage, response: ServerResponse) => refuse(expectation, response))

  // Node's own refusal of an HTTP/1.1 request without Host (`requireHostHeader`) is a bare 400 that no
  // event tells: the server is made without it (see `Gateway.serve`), and such a request is answered
  // here before any listener sees it, with `Expect: 100-continue` or not. No allocation: `arguments` passed on.
  const emit = server.emit
  server.emit = function (this: Server, event: string | symbol): boolean {
    if (event === "request" || event === "checkContinue") {
      // biome-ignore lint/complexity/noArguments: forwarded as they came, without an array per event.
      const request = arguments[1] as IncomingMessage
      if (request.headers.host === undefined && request.httpVersionMajor === 1 && request.httpVersionMinor === 1) {
        // biome-ignore lint/complexity/noArguments: as above.
        refuse(missingHost, arguments[2] as ServerResponse)
        return true
      }
    }
    // biome-ignore lint/complexity/noArguments: as above.
    return emit.apply(this, arguments as never)
  } as Server["emit"]
}
