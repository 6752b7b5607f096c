/**
 * A real HTTP server on 127.0.0.1, port 0, for tests of anything that speaks HTTP.
 *
 * - `make(handler)` starts it inside a `Scope`; closing the scope destroys every open
 *   connection and closes the server.
 * - Every request is recorded (`requests`): method, path, query, headers, body text and
 *   parsed JSON. `awaitRequests(n)` waits until `n` arrived.
 * - The handler scripts the answer: `json`, `text`, `chunked` (raw byte writes with pauses,
 *   then end, cut or stall), `endless` (writes forever, honouring backpressure), `hang`
 *   (never answers). `script(...)` answers the n-th request with the n-th handler.
 * - `aborted` counts responses whose connection closed before the server ended them (what a
 *   client that is interrupted or stops reading does); `awaitAborted(n)` waits for them.
 *   `bytesSent` is the total of bytes written on all connections; `connections` counts the
 *   connections accepted (a client that reuses its connection opens one).
 * - `splitBytes` / `splitAwkward` cut a text at awkward places (inside CRLF pairs and
 *   multi-byte characters); `sse` and `ndjson` build bodies.
 *
 * ```ts
 * const server = yield* Server.make((request, response) =>
 *   request.path === "/v1/chat/completions"
 *     ? Server.chunked(response, Server.splitAwkward(Server.sse([{ a: 1 }, "[DONE]"])))
 *     : Server.json(response, 404, { error: "no" })
 * )
 * // ... call `${server.url}/v1`
 * const [first] = yield* server.requests
 * ```
 *
 * Pauses use real timers: this is a test double for real I/O, not library code.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo, Socket } from "node:net"
import { Effect, type Scope } from "effect"

/** One request as the server received it. */
export interface Recorded {
  readonly method: string
  readonly path: string
  readonly search: URLSearchParams
  readonly headers: IncomingMessage["headers"]
  readonly body: string
  /** The body parsed as JSON, or `undefined` when it is not JSON. */
  readonly json: unknown
}

/** Answers one request. A handler that throws or rejects destroys the connection. */
export type Handler = (request: Recorded, response: ServerResponse) => void | Promise<void>

export interface TestServer {
  /** `http://127.0.0.1:<port>` */
  readonly url: string
  readonly port: number
  /** The requests received so far, in order. */
  readonly requests: Effect.Effect<ReadonlyArray<Recorded>>
  /** Waits until at least `n` requests arrived. */
  readonly awaitRequests: (n?: number) => Effect.Effect<void>
  /** Responses whose connection closed before the server ended them. */
  readonly aborted: Effect.Effect<number>
  /** Waits until at least `n` responses were aborted by the client. */
  readonly awaitAborted: (n?: number) => Effect.Effect<void>
  /** Bytes written on every connection so far (headers included). */
  readonly bytesSent: Effect.Effect<number>
  /** Connections accepted so far. */
  readonly connections: Effect.Effect<number>
  /** Replaces the handler for the requests that follow. */
  readonly setHandler: (handler: Handler) => Effect.Effect<void>
}

const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

interface Waiter {
  readonly ready: () => boolean
  readonly resume: () => void
}

/** Starts a server on 127.0.0.1:0 that answers with `handler`; closed with the scope. */
export const make = (handler: Handler): Effect.Effect<TestServer, never, Scope.Scope> =>
  Effect.gen(function* () {
    const requests: Array<Recorded> = []
    let current = handler
    let aborted = 0
    let closedBytes = 0
    let connections = 0
    let waiters: Array<Waiter> = []
    const sockets = new Set<Socket>()
    const notify = () => {
      const ready = waiters.filter((w) => w.ready())
      waiters = waiters.filter((w) => !w.ready())
      for (const waiter of ready) waiter.resume()
    }
    const waitFor = (ready: () => boolean): Effect.Effect<void> =>
      Effect.callback<void>((resume) => {
        if (ready()) return resume(Effect.void)
        const waiter: Waiter = { ready, resume: () => resume(Effect.void) }
        waiters.push(waiter)
        return Effect.sync(() => {
          waiters = waiters.filter((w) => w !== waiter)
        })
      })
    const server = createServer((req, res) => {
      const chunks: Array<Buffer> = []
      req.on("data", (chunk: Buffer) => chunks.push(chunk))
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8")
        const url = new URL(req.url ?? "/", "http://127.0.0.1")
        const recorded: Recorded = {
          method: req.method ?? "GET",
          path: url.pathname,
          search: url.searchParams,
          headers: req.headers,
          body,
          json: parseJson(body)
        }
        requests.push(recorded)
        res.on("close", () => {
          if (!res.writableFinished) {
            aborted++
            notify()
          }
        })
        notify()
        Promise.resolve()
          .then(() => current(recorded, res))
          .catch(() => res.destroy())
      })
    })
    server.on("connection", (socket) => {
      connections++
      socket.setNoDelay(true)
      sockets.add(socket)
      socket.on("close", () => {
        closedBytes += socket.bytesWritten
        sockets.delete(socket)
      })
    })
    yield* Effect.acquireRelease(
      Effect.callback<void>((resume) => {
        server.listen(0, "127.0.0.1", () => resume(Effect.void))
      }),
      () =>
        Effect.callback<void>((resume) => {
          for (const socket of sockets) socket.destroy()
          server.close(() => resume(Effect.void))
        })
    )
    const { port } = server.address() as AddressInfo
    return {
      url: `http://127.0.0.1:${port}`,
      port,
      requests: Effect.sync(() => requests.slice()),
      awaitRequests: (n = 1) => waitFor(() => requests.length >= n),
      aborted: Effect.sync(() => aborted),
      awaitAborted: (n = 1) => waitFor(() => aborted >= n),
      bytesSent: Effect.sync(() => {
        let open = 0
        for (const socket of sockets) open += socket.bytesWritten
        return closedBytes + open
      }),
      connections: Effect.sync(() => connections),
      setHandler: (next) =>
        Effect.sync(() => {
          current = next
        })
    }
  })

// ---------------------------------------------------------------------------------------
// Answers

/** Answers with a JSON body (a string body is sent as is, for broken JSON). */
export const json = (
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Readonly<Record<string, string>> = {}
): void => {
  const text = typeof body === "string" ? body : JSON.stringify(body)
  res.writeHead(status, { "content-type": "application/json", ...headers })
  res.end(text)
}

/** Answers with a text body of any content type. */
export const text = (
  res: ServerResponse,
  status: number,
  body: string,
  headers: Readonly<Record<string, string>> = { "content-type": "text/plain" }
): void => {
  res.writeHead(status, headers)
  res.end(body)
}

/** Waits `ms` milliseconds of real time. */
export const pause = (ms: number): Promise<void> => new Promise<void>((resolve) => setTimeout(resolve, ms))

const write = (res: ServerResponse, chunk: Uint8Array | string): Promise<void> =>
  new Promise<void>((resolve) => {
    if (res.destroyed) return resolve()
    res.write(chunk, () => resolve())
  })

/** Options of {@link chunked}. */
export interface ChunkedOptions {
  /** Default 200. */
  readonly status?: number | undefined
  /** Default `text/event-stream`. */
  readonly contentType?: string | undefined
  readonly headers?: Readonly<Record<string, string>> | undefined
  /** After the last part: `end` the body (default), `destroy` the connection (a cut), or `hang` (a stall). */
  readonly end?: "end" | "destroy" | "hang" | undefined
  /** Real pause after each part, so that each arrives in its own read. Default 3 ms. */
  readonly pauseMs?: number | undefined
}

/**
 * Writes `parts` one by one with a pause after each, then ends, cuts (`destroy`) or stalls
 * (`hang`: the connection stays open, nothing more is written).
 */
export const chunked = async (
  res: ServerResponse,
  parts: ReadonlyArray<Uint8Array | string>,
  options: ChunkedOptions = {}
): Promise<void> => {
  res.writeHead(options.status ?? 200, {
    "content-type": options.contentType ?? "text/event-stream",
    "cache-control": "no-cache",
    ...options.headers
  })
  res.flushHeaders()
  for (const part of parts) {
    if (res.destroyed) return
    await write(res, part)
    await pause(options.pauseMs ?? 3)
  }
  switch (options.end ?? "end") {
    case "end":
      res.end()
      return
    case "destroy":
      res.socket?.destroy()
      return
    case "hang":
      return
  }
}

/** Options of {@link endless}. */
export interface EndlessOptions {
  readonly status?: number | undefined
  /** Default `text/event-stream`. */
  readonly contentType?: string | undefined
  readonly headers?: Readonly<Record<string, string>> | undefined
  /** Written before the endless part. */
  readonly prefix?: string | undefined
  /** The text written again and again. Default 16 KiB of `x` (one line without an end). */
  readonly chunk?: string | undefined
}

/**
 * Writes a body that never ends: `prefix`, then `chunk` again and again, as fast as the
 * client reads (it waits for `drain` when the socket buffer is full). It stops when the
 * client closes the connection.
 */
export const endless = async (res: ServerResponse, options: EndlessOptions = {}): Promise<void> => {
  res.writeHead(options.status ?? 200, {
    "content-type": options.contentType ?? "text/event-stream",
    ...options.headers
  })
  res.flushHeaders()
  const chunk = Buffer.from(options.chunk ?? "x".repeat(16 * 1024))
  if (options.prefix !== undefined) res.write(options.prefix)
  while (!res.destroyed && !res.writableEnded) {
    if (!res.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          res.off("drain", done)
          res.off("close", done)
          resolve()
        }
        res.on("drain", done)
        res.on("close", done)
      })
    }
  }
}

/**
 * Accepts the request and never answers (the connection stays open until the client leaves).
 * A handler itself (`Server.make(Server.hang)`), or called from one (`Server.hang(res)`).
 */
export const hang = (..._ignored: ReadonlyArray<unknown>): void => undefined

/**
 * Answers the n-th request with the n-th handler; the last handler answers every request
 * after it.
 */
export const script = (...handlers: ReadonlyArray<Handler>): Handler => {
  let next = 0
  return (request, response) => {
    const handler = handlers[Math.min(next, handlers.length - 1)]!
    next++
    return handler(request, response)
  }
}

// ---------------------------------------------------------------------------------------
// Bodies

/**
 * An SSE body: a string starting with `:` is a comment, another string is sent as the data
 * as is (`"[DONE]"`), an object as JSON data, `{ event, data }` as a named event.
 */
export const sse = (events: ReadonlyArray<unknown>, eol: "\n" | "\r\n" | "\r" = "\r\n"): string =>
  events
    .map((e) => {
      if (typeof e === "string") return e.startsWith(":") ? `${e}${eol}${eol}` : `data: ${e}${eol}${eol}`
      if (typeof e === "object" && e !== null && "event" in e && "data" in e) {
        const named = e as { readonly event: string; readonly data: unknown }
        const data = typeof named.data === "string" ? named.data : JSON.stringify(named.data)
        return `event: ${named.event}${eol}data: ${data}${eol}${eol}`
      }
      return `data: ${JSON.stringify(e)}${eol}${eol}`
    })
    .join("")

/** An NDJSON body: one JSON value a line. */
export const ndjson = (lines: ReadonlyArray<unknown>, eol: "\n" | "\r\n" = "\n"): string =>
  lines.map((line) => `${JSON.stringify(line)}${eol}`).join("")

/**
 * Splits a text into byte chunks of `size` bytes, so cuts land inside lines, CRLF pairs and
 * multi-byte UTF-8 characters.
 */
export const splitBytes = (text: string, size: number): ReadonlyArray<Uint8Array> => {
  const bytes = Buffer.from(text, "utf8")
  const out: Array<Uint8Array> = []
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size))
  return out
}

/** Splits a text right after every `\r` (each CRLF pair lands in two reads) and after every multi-byte lead byte. */
export const splitAwkward = (text: string): ReadonlyArray<Uint8Array> => {
  const bytes = Buffer.from(text, "utf8")
  const out: Array<Uint8Array> = []
  let start = 0
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!
    if (byte === 0x0d || byte >= 0xc0) {
      out.push(bytes.subarray(start, i + 1))
      start = i + 1
    }
  }
  if (start < bytes.length) out.push(bytes.subarray(start))
  return out
}
