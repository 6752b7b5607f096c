/**
 * A scripted HTTP agent on 127.0.0.1 (port 0) for tests, examples and benchmarks. It counts
 * requests, the ones in flight and their peak, keeps the tasks and headers it received, and
 * answers each task with what `respond` says: JSON, raw text, a status, after a delay, an
 * endless body, or never. Closing its scope destroys every connection.
 *
 * Delays use real timers: this is a test double for real I/O, not library code.
 */
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { Effect, type Scope } from "effect"

export interface Reply {
  readonly status?: number
  /** A JSON answer (default: `{ task_id, status: "success", result: { echo: body } }`). */
  readonly json?: unknown
  /** A raw body instead of JSON. */
  readonly raw?: string
  readonly contentType?: string
  readonly headers?: Readonly<Record<string, string>>
  readonly delayMs?: number
  /** Never answer (until the client gives up or the server closes). */
  readonly hang?: boolean
  /** A 200 whose body never ends (writes while the client reads). */
  readonly endless?: boolean
}

export interface ReceivedTask {
  readonly task_id: string
  readonly intent: string
  readonly concept: string
  readonly args: unknown
  readonly dependencies?: Record<string, unknown>
}

export interface AgentServer {
  readonly url: string
  readonly host: string
  /** Requests received so far. */
  readonly requests: () => number
  readonly inFlight: () => number
  /** Most requests in flight at once. */
  readonly peak: () => number
  readonly received: () => ReadonlyArray<ReceivedTask>
  readonly headers: () => ReadonlyArray<http.IncomingHttpHeaders>
  /** The path and query of each request received. */
  readonly paths: () => ReadonlyArray<string>
  /** Responses whose connection the client closed before the answer ended. */
  readonly aborted: () => number
  /** Bytes of body written so far. */
  readonly bytesSent: () => number
  /** Waits (real time, polling) until `n` requests arrived. */
  readonly awaitRequests: (n: number) => Effect.Effect<void>
  /** Waits until `n` responses were aborted by the client. */
  readonly awaitAborted: (n: number) => Effect.Effect<void>
}

export const defaultReply = (task: ReceivedTask): Reply => ({
  json: { task_id: task.task_id, status: "success", result: { echo: task } }
})

/** Real time, polling every 2 ms until `ready()`: the server's side of an exchange runs on Node's timers. */
export const poll = (ready: () => boolean): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const timer = setInterval(() => {
      if (ready()) {
        clearInterval(timer)
        resume(Effect.void)
      }
    }, 2)
    if (ready()) {
      clearInterval(timer)
      resume(Effect.void)
    }
    return Effect.sync(() => clearInterval(timer))
  })

/** Starts a server for the scope; `respond` gets the task and its 0-based request number. */
export const make = (
  respond: (task: ReceivedTask, index: number) => Reply = defaultReply
): Effect.Effect<AgentServer, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<{ server: http.Server; handle: AgentServer }>((resume) => {
      let count = 0
      let inFlight = 0
      let peak = 0
      let aborted = 0
      let bytes = 0
      const received: Array<ReceivedTask> = []
      const headers: Array<http.IncomingHttpHeaders> = []
      const paths: Array<string> = []
      const server = http.createServer((req, res) => {
        inFlight++
        peak = Math.max(peak, inFlight)
        const index = count++
        headers.push(req.headers)
        paths.push(req.url ?? "")
        let done = false
        const finish = () => {
          if (done) return
          done = true
          inFlight--
        }
        res.on("close", () => {
          if (!res.writableEnded) aborted++
          finish()
        })
        const chunks: Array<Buffer> = []
        req.on("data", (chunk: Buffer) => chunks.push(chunk))
        req.on("end", () => {
          let task: ReceivedTask
          try {
            task = JSON.parse(Buffer.concat(chunks).toString("utf8")) as ReceivedTask
          } catch {
            res.writeHead(400).end("bad body")
            return
          }
          received.push(task)
          const reply = respond(task, index)
          if (reply.hang === true) return
          if (reply.endless === true) {
            res.writeHead(200, { "content-type": "application/json" })
            const piece = `{"task_id":"${task.task_id}","result":"${"x".repeat(64 * 1024)}`
            const pump = () => {
              while (!res.destroyed && res.write(piece)) bytes += piece.length
              if (!res.destroyed) res.once("drain", pump)
            }
            pump()
            return
          }
          const send = () => {
            if (res.destroyed) return
            const body = reply.raw ?? JSON.stringify(reply.json ?? defaultReply(task).json)
            bytes += Buffer.byteLength(body)
            // no longer in flight once the answer is written: the client may reuse the slot at once
            finish()
            res.writeHead(reply.status ?? 200, {
              "content-type": reply.contentType ?? (reply.raw === undefined ? "application/json" : "text/plain"),
              ...reply.headers
            })
            res.end(body)
          }
          if (reply.delayMs !== undefined && reply.delayMs > 0) setTimeout(send, reply.delayMs)
          else send()
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as AddressInfo
        const handle: AgentServer = {
          url: `http://127.0.0.1:${port}/task`,
          host: `127.0.0.1:${port}`,
          requests: () => count,
          inFlight: () => inFlight,
          peak: () => peak,
          received: () => received.slice(),
          headers: () => headers.slice(),
          paths: () => paths.slice(),
          aborted: () => aborted,
          bytesSent: () => bytes,
          awaitRequests: (n) => poll(() => count >= n),
          awaitAborted: (n) => poll(() => aborted >= n)
        }
        resume(Effect.succeed({ server, handle }))
      })
    }),
    ({ server }) =>
      Effect.callback<void>((resume) => {
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ handle }) => handle))
