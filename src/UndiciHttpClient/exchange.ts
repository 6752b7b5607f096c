/**
 * One request's exchange with undici (its `DispatchHandler`): the head, then the body's chunks,
 * as they come, with the socket paused past a bound; and the wait of a body's reader.
 *
 * @internal
 */
import { Effect } from "effect"
import type { Readable } from "node:stream"
import type * as Undici from "undici"

/** Bytes a response body may hold unread before the socket is paused. */
const highWaterMark = 64 * 1024

/** A body's reader's wake-up: the next chunk arrived, the body ended or failed. */
type Wake = () => void

const noop = () => {}

/** Is this request body a Node stream (a `Stream` body's, or a `Raw` one)? */
export const isReadable = (body: unknown): body is Readable =>
  typeof body === "object" && body !== null && typeof (body as Readable).pipe === "function"

/**
 * Releases a Node stream body of a request that failed before undici was done with it: an
 * Effect stream's fiber is interrupted (its finalizers run), a file's descriptor closed. undici
 * destroys a body it was writing, not one it never started or only peeked at (`read(0)`).
 */
export const release = (body: Readable): void => {
  if (body.destroyed) return
  body.on("error", noop)
  body.destroy()
}

/**
 * One request's exchange with undici: the head, then the body's chunks, as they come. It
 * listens to the request's signal (its scope closed, its response was collected unread) until
 * the answer ended or failed.
 */
export class Exchange implements Undici.Dispatcher.DispatchHandler, EventListenerObject {
  controller: Undici.Dispatcher.DispatchController | undefined = undefined
  status = 0
  headers: Record<string, string | Array<string> | undefined> = {}
  chunks: Array<Uint8Array> = []
  queued = 0
  ended = false
  error: Error | undefined = undefined
  /** The request was given up (interrupted, its scope closed): why, for undici. */
  aborted: Error | undefined = undefined
  onHead: ((error: Error | undefined) => void) | undefined
  /** Readers waiting for the body to move (one, unless a body is read twice at once). */
  waiters: Array<Wake> = []
  /** A wake-up of the readers is queued. */
  scheduled = false

  /**
   * The signal of `HttpClient.make`'s path; none on the scoped path, where the scope's finalizer
   * aborts (until a redirect's answer is handed to `HttpClient.make`, see `listen`).
   */
  signal: AbortSignal | undefined
  /** The request's body when it is a Node stream, released if the request fails. */
  readonly body: Readable | undefined

  constructor(signal: AbortSignal | undefined, body: Readable | undefined, onHead: (error: Error | undefined) => void) {
    this.signal = signal
    this.body = body
    this.onHead = onHead
  }

  handleEvent(): void {
    this.abort(this.signal?.reason instanceof globalThis.Error ? this.signal.reason : interrupted)
  }

  /** Listens to `signal` from now on: an answer already under way is given up when it fires. */
  listen(signal: AbortSignal): void {
    if (this.ended || this.error !== undefined) return
    this.signal = signal
    if (signal.aborted) this.handleEvent()
    else signal.addEventListener("abort", this)
  }

  abort(reason: Error): void {
    if (this.ended || this.error !== undefined) return
    this.aborted ??= reason
    if (this.controller !== undefined) {
      this.controller.abort(reason)
      return
    }
    // Still queued for a connection: undici drops it only as one frees (a long stream's may
    // take minutes), and neither its body nor its caller (whose scope closed, not interrupted:
    // effect's client fails it then) need wait until then.
    if (this.body !== undefined) release(this.body)
    const onHead = this.onHead
    this.onHead = undefined
    if (onHead !== undefined) onHead(reason)
  }

  onRequestStart(controller: Undici.Dispatcher.DispatchController): void {
    // Given up while it waited for a connection: `controller.abort` would close the connection
    // it was just given, while a throw (undici fails the request with it) leaves it to the next.
    if (this.aborted !== undefined) throw this.aborted
    this.controller = controller
  }

  onResponseStart(
    _controller: Undici.Dispatcher.DispatchController,
    statusCode: number,
    headers: Record<string, string | Array<string> | undefined>
  ): void {
    // 1xx heads (100 Continue, 103 Early Hints) are not the answer.
    if (statusCode < 200) return
    this.status = statusCode
    this.headers = headers
    const onHead = this.onHead
    this.onHead = undefined
    // Resumed once undici has parsed the whole read, not inside its parser's callback: the
    // fiber then finds the body's first bytes of the same read already here, and the caller's
    // continuation does not run inside llhttp (that cost a gateway stream's first byte ~1.2 ms).
    if (onHead !== undefined) queueMicrotask(() => onHead(undefined))
  }

  onResponseData(controller: Undici.Dispatcher.DispatchController, chunk: Uint8Array): void {
    this.chunks.push(chunk)
    this.queued += chunk.byteLength
    if (this.queued >= highWaterMark) controller.pause()
    this.notify()
  }

  onResponseEnd(): void {
    this.ended = true
    this.signal?.removeEventListener("abort", this)
    this.notify()
  }

  onResponseError(_controller: Undici.Dispatcher.DispatchController, error: Error): void {
    this.error = error
    this.signal?.removeEventListener("abort", this)
    if (this.body !== undefined) release(this.body)
    const onHead = this.onHead
    this.onHead = undefined
    if (onHead !== undefined) onHead(error)
    else this.notify()
  }

  /** Wakes the readers once the current read is parsed: every chunk of it comes in one pull. */
  notify(): void {
    if (this.waiters.length === 0 || this.scheduled) return
    this.scheduled = true
    queueMicrotask(() => {
      this.scheduled = false
      const waiters = this.waiters
      this.waiters = []
      for (const wake of waiters) wake()
    })
  }

  /** The chunks read so far, handed over; the socket resumes if it was paused. */
  take(): Array<Uint8Array> {
    const chunks = this.chunks
    this.chunks = []
    this.queued = 0
    if (this.controller?.paused === true) this.controller.resume()
    return chunks
  }
}

export const interrupted = new globalThis.Error("The request was interrupted")
export const scopeClosed = new globalThis.Error("The request's scope was closed")
export const released = new globalThis.Error("The response body was released before it was read")

/**
 * Waits for the exchange to move (a chunk, its end or its failure); interruption aborts it.
 * It looks again as it registers: the fiber may have yielded to the event loop between its
 * reader's look and this wait (every `maxOpsBeforeYield` instructions), and a move that came
 * then woke nobody.
 */
export const awaitMove = (exchange: Exchange): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    if (exchange.chunks.length > 0 || exchange.ended || exchange.error !== undefined) return resume(Effect.void)
    const wake = () => resume(Effect.void)
    exchange.waiters.push(wake)
    return Effect.sync(() => {
      const at = exchange.waiters.indexOf(wake)
      if (at >= 0) exchange.waiters.splice(at, 1)
      exchange.abort(interrupted)
    })
  })
