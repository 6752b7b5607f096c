/**
 * A real HTTP server on 127.0.0.1, port 0, for provider tests: every request is recorded
 * (method, path, headers, body), handlers script the answer, and the server counts
 * connections closed by the client before the answer ended (what an interrupted request
 * does).
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo, Socket } from "node:net"
import { Effect, type Scope } from "effect"

export interface Recorded {
  readonly method: string
  readonly path: string
  readonly search: URLSearchParams
  readonly headers: IncomingMessage["headers"]
  readonly body: string
  readonly json: unknown
}

export type Handler = (request: Recorded, response: ServerResponse) => void | Promise<void>

export interface TestServer {
  readonly url: string
  readonly requests: Effect.Effect<ReadonlyArray<Recorded>>
  /** Responses whose connection closed before the server ended them. */
  readonly aborted: Effect.Effect<number>
  /** Waits until `n` responses were aborted by the client. */
  readonly awaitAborted: (n?: number) => Effect.Effect<void>
  /** Replaces the handler. */
  readonly setHandler: (handler: Handler) => Effect.Effect<void>
}

const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

export const make = (handler: Handler): Effect.Effect<TestServer, never, Scope.Scope> =>
  Effect.gen(function* () {
    const requests: Array<Recorded> = []
    let current = handler
    let aborted = 0
    const waiters: Array<{ readonly n: number; readonly resume: () => void }> = []
    const sockets = new Set<Socket>()
    const notify = () => {
      for (let i = waiters.length - 1; i >= 0; i--) {
        const waiter = waiters[i]!
        if (aborted >= waiter.n) {
          waiters.splice(i, 1)
          waiter.resume()
        }
      }
    }
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
        void Promise.resolve(current(recorded, res)).catch(() => res.destroy())
      })
    })
    server.on("connection", (socket) => {
      socket.setNoDelay(true)
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
    })
    yield* Effect.acquireRelease(
      Effect.async<void>((resume) => {
        server.listen(0, "127.0.0.1", () => resume(Effect.void))
      }),
      () =>
        Effect.async<void>((resume) => {
          for (const socket of sockets) socket.destroy()
          server.close(() => resume(Effect.void))
        })
    )
    const { port } = server.address() as AddressInfo
    return {
      url: `http://127.0.0.1:${port}`,
      requests: Effect.sync(() => requests.slice()),
      aborted: Effect.sync(() => aborted),
      awaitAborted: (n = 1) =>
        Effect.async<void>((resume) => {
          if (aborted >= n) return resume(Effect.void)
          waiters.push({ n, resume: () => resume(Effect.void) })
        }),
      setHandler: (next) =>
        Effect.sync(() => {
          current = next
        })
    }
  })

// ---------------------------------------------------------------------------------------
// Answer helpers

export const json = (
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {}
): void => {
  const text = typeof body === "string" ? body : JSON.stringify(body)
  res.writeHead(status, { "content-type": "application/json", ...headers })
  res.end(text)
}

const pause = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const write = (res: ServerResponse, chunk: Uint8Array | string) =>
  new Promise<void>((resolve) => {
    res.write(chunk, () => resolve())
  })

/**
 * Writes `parts` one by one with a pause between them, so that each arrives in its own TCP
 * read. `end: "destroy"` cuts the connection after the last part; `"hang"` leaves it open.
 */
export const chunked = async (
  res: ServerResponse,
  parts: ReadonlyArray<Uint8Array | string>,
  options: {
    readonly status?: number
    readonly contentType?: string
    readonly end?: "end" | "destroy" | "hang"
    readonly pauseMs?: number
  } = {}
): Promise<void> => {
  res.writeHead(options.status ?? 200, {
    "content-type": options.contentType ?? "text/event-stream",
    "cache-control": "no-cache"
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

/**
 * Splits a text into byte chunks at awkward places: every `size` bytes, so cuts land inside
 * lines, inside CRLF pairs and inside multi-byte UTF-8 characters.
 */
export const splitBytes = (text: string, size: number): ReadonlyArray<Uint8Array> => {
  const bytes = Buffer.from(text, "utf8")
  const out: Array<Uint8Array> = []
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size))
  return out
}

/** Splits a text right after every `\r` (so each CRLF pair is cut in two reads) and inside multi-byte characters. */
export const splitAwkward = (text: string): ReadonlyArray<Uint8Array> => {
  const bytes = Buffer.from(text, "utf8")
  const out: Array<Uint8Array> = []
  let start = 0
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!
    const cutAfterCr = byte === 0x0d
    // inside a multi-byte sequence: cut after the lead byte
    const cutInsideChar = byte >= 0xc0
    if (cutAfterCr || cutInsideChar) {
      out.push(bytes.subarray(start, i + 1))
      start = i + 1
    }
  }
  if (start < bytes.length) out.push(bytes.subarray(start))
  return out
}

/** Accepts the request and never answers. */
export const hang = (res: ServerResponse): void => {
  res.on("close", () => undefined)
}
