/**
 * A scripted HTTP agent on 127.0.0.1 (port 0) for tests, examples and benchmarks. It counts
 * requests, the ones in flight and their peak, and answers each task with what `respond`
 * says: JSON, raw text, a status, after a delay, or never.
 */
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { Effect } from "effect"

export interface Reply {
  readonly status?: number
  /** A JSON answer (default: `{ task_id, status: "success", result: { echo: body } }`). */
  readonly json?: unknown
  /** A raw body instead of JSON. */
  readonly raw?: string
  readonly delayMs?: number
  /** Never answer (until the server closes). */
  readonly hang?: boolean
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
}

export const defaultReply = (task: ReceivedTask): Reply => ({
  json: { task_id: task.task_id, status: "success", result: { echo: task } }
})

/** Starts a server for the scope; `respond` gets the task and its 0-based request number. */
export const make = (respond: (task: ReceivedTask, index: number) => Reply = defaultReply) =>
  Effect.acquireRelease(
    Effect.async<{ server: http.Server; handle: AgentServer }>((resume) => {
      let count = 0
      let inFlight = 0
      let peak = 0
      const received: Array<ReceivedTask> = []
      const server = http.createServer((req, res) => {
        inFlight++
        peak = Math.max(peak, inFlight)
        const index = count++
        let done = false
        const finish = () => {
          if (done) return
          done = true
          inFlight--
        }
        res.on("close", finish)
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
          const send = () => {
            const body = reply.raw ?? JSON.stringify(reply.json ?? defaultReply(task).json)
            // no longer in flight once the answer is written: the client may reuse the slot at once
            finish()
            res.writeHead(reply.status ?? 200, {
              "content-type": reply.raw === undefined ? "application/json" : "text/plain"
            })
            res.end(body)
          }
          if (reply.delayMs !== undefined && reply.delayMs > 0) setTimeout(send, reply.delayMs)
          else send()
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as AddressInfo
        resume(
          Effect.succeed({
            server,
            handle: {
              url: `http://127.0.0.1:${port}/task`,
              host: `127.0.0.1:${port}`,
              requests: () => count,
              inFlight: () => inFlight,
              peak: () => peak,
              received: () => received.slice()
            }
          })
        )
      })
    }),
    ({ server }) =>
      Effect.async<void>((resume) => {
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ handle }) => handle))
