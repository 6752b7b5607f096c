/**
 * A facade stream (`orchestra.stream`): an async iterator over `Calls.stream` that reads its
 * options and prompt at the first `next()`, waits for a manager still being built, listens to
 * its `signal` only while a part is awaited, and cancels its upstream when closed or dropped.
 *
 * @internal
 */
// Node's own listener, as a call's (`run.ts`): another listener cannot silence it.
import { addAbortListener } from "node:events"
import { Result, Stream } from "effect"
import { ShuttingDownError, TimeoutError } from "../AiError.js"
import type { FacadeError, PartStream, Prompt, StreamOptions } from "../Facade.js"
import type { StreamPart } from "../Model.js"
import { CurrentCut, type Cut } from "../policy/plan.js"
import * as Calls from "./calls.js"
import { Keys, requestOf } from "./input.js"
import type { Rejections } from "./rejection.js"
import { checkOptions, timeLeft, untilBuilt } from "./run.js"
import { elapsedMillis, type Manager, monotonicMillis } from "./runtime.js"

/**
 * What a stream's `return()` reaches past a `next()` that waits: an async generator queues it behind that `next()`.
 *
 * @internal
 */
export interface Closing {
  closed: boolean
  close: (() => Promise<unknown>) | undefined
  /** Ends the wait for a manager still being built. */
  wake: (() => void) | undefined
  /** The stream's entry in `Manager.streams`, while it runs. */
  ended: (() => void) | undefined
}

/** Cancels a stream whose iterator is closed (or dropped): the upstream first, then a wait for the manager. */
const closeStream = (closing: Closing): void => {
  closing.closed = true
  closing.wake?.()
  closing.close?.().catch(() => undefined)
}

/**
 * `orchestra.stream` of one manager: made once per `createOrchestra`, not per call.
 *
 * @internal
 */
export const makeStream = (
  rejections: Rejections,
  manager: Manager
): ((prompt: Prompt, options?: StreamOptions) => PartStream) => {
  const { OrchestraError, abortError, asGiven, shuttingDown } = rejections
  const clock = manager.clock
  const since = (started: number) => elapsedMillis(clock, started)
  // A stream's iterator dropped without `return()` (a `next()` result read, the loop left by a
  // function that never resumes it) would hold its upstream and provider slot up to the stream's
  // total deadline: it is cancelled once the garbage collector reclaims it. An iterator with a
  // `next()` waiting is kept in `pulling`, so the part a caller awaits is never cut away under it.
  // The registry holds only the stream's `Closing`, never the iterator.
  const abandoned = new FinalizationRegistry<Closing>((closing) => {
    // Never resumed, its generator never reaches its `finally`: its entry goes with it.
    if (closing.ended !== undefined) manager.streams.delete(closing.ended)
    closeStream(closing)
  })
  const pulling = new Set<AsyncIterator<StreamPart>>()

  const streamParts = async function* (prompt: Prompt, options: StreamOptions | undefined, closing: Closing) {
    if (manager.disposing !== undefined) throw shuttingDown()
    const read = checkOptions(options, Keys.stream)
    if (Result.isFailure(read)) throw new OrchestraError(read.failure)
    const signal = read.success.signal
    if (signal?.aborted) throw new OrchestraError(abortError(signal, 0))
    // Read at the first `next()`, before the wait for a manager still being built.
    const request = requestOf(prompt, read.success.context)
    if (Result.isFailure(request)) throw new OrchestraError(request.failure)
    const built = manager.services
    // Read only when needed: by a signal's error, or to take the wait for the build from the timeout.
    const started = built === undefined || signal !== undefined ? monotonicMillis(clock) : 0
    const context =
      built ??
      (await untilBuilt(rejections, clock, manager.servicesOf(), signal, read.success.timeout, started, closing))
    // Closed while the manager was being built: the stream never starts, and `return()` does not wait for the build.
    if (context === undefined || closing.closed) return
    const left = built === undefined ? timeLeft(read.success, since(started)) : read.success
    if (left === undefined)
      throw new OrchestraError(new TimeoutError({ limit: "total", timeout: read.success.timeout! }))
    const shortened = left === read.success ? undefined : asGiven(read.success.timeout!, left.timeout!)
    const cut: Cut = { error: undefined }
    const parts = Calls.stream(request.success, left).pipe(
      Stream.provideService(CurrentCut, cut),
      Stream.mapError((error) => new OrchestraError(error))
    )
    const iterator = Stream.toAsyncIterableWith(parts, context)[Symbol.asyncIterator]()
    const close = () => iterator.return!()
    closing.close = close
    let delivered = ""
    let aborted: FacadeError | undefined
    // Closing the iterator interrupts the pull it is waiting for: the pull ends, and the loop rejects.
    const onAbort = () => {
      aborted = abortError(signal!, since(started), delivered)
      // Set before the interruption, so the cut steps are counted as what the caller sees.
      if (aborted._tag !== "AbortedError") cut.error = aborted
      close().catch(() => undefined)
    }
    // After the Finish part nothing is left to cut: the last pull only ends the stream, and an
    // abort in between (a server's client leaving once the last chunk was written) is no failure.
    let finished = false
    // `dispose()`'s bound passed with the stream still running: it ends now, as a call still running does.
    const ended = () => {
      if (!finished) {
        aborted ??= new ShuttingDownError({
          message: "the stream was still running when dispose() ended it (its disposeTimeout passed)"
        })
      }
      close().catch(() => undefined)
    }
    closing.ended = ended
    manager.streams.add(ended)
    // The signal is listened to only while a part is awaited, never between two: a loop left
    // without `return()` (or never resumed) keeps nothing on a signal that may outlive it.
    const pull = async (): Promise<IteratorResult<StreamPart>> => {
      if (signal === undefined || finished) return iterator.next()
      let listening: Disposable | undefined
      if (signal.aborted) onAbort()
      else listening = addAbortListener(signal, onAbort)
      try {
        return await iterator.next()
      } catch (error) {
        if (aborted === undefined) throw error
        return { done: true, value: undefined }
      } finally {
        listening?.[Symbol.dispose]()
      }
    }
    try {
      for (;;) {
        const next = shortened === undefined ? await pull() : await pull().catch(shortened)
        if (aborted !== undefined) throw new OrchestraError(aborted)
        if (next.done) return
        // Only an abort's error carries the text: without a signal, none is kept (a long stream's whole answer).
        if (next.value._tag === "TextDelta") {
          if (signal !== undefined) delivered += next.value.text
        } else if (next.value._tag === "Finish") finished = true
        yield next.value
      }
    } finally {
      manager.streams.delete(ended)
      abandoned.unregister(closing)
      await close()
    }
  }

  return (prompt: Prompt, options?: StreamOptions): PartStream => ({
    [Symbol.asyncIterator]() {
      const closing: Closing = { closed: false, close: undefined, wake: undefined, ended: undefined }
      const parts = streamParts(prompt, options, closing)
      // Closing the upstream first ends a `next()` still waiting for a part (it answers done),
      // so that `return()` cancels the call now rather than after the provider's next chunk.
      const closeFirst = () => {
        abandoned.unregister(closing)
        closeStream(closing)
      }
      let waiting = 0
      const iterator: AsyncIterableIterator<StreamPart> & AsyncDisposable = {
        next: () => {
          if (waiting++ === 0) pulling.add(iterator)
          return parts.next().finally(() => {
            if (--waiting === 0) pulling.delete(iterator)
          })
        },
        return: (value?: unknown) => {
          closeFirst()
          return parts.return(value as undefined)
        },
        throw: (error?: unknown) => {
          closeFirst()
          return parts.throw(error)
        },
        [Symbol.asyncIterator]() {
          return this
        },
        // `await using parts = stream[Symbol.asyncIterator]()`: leaving the block is `return()`, as for
        // Node's own async generators.
        [Symbol.asyncDispose]: async () => {
          await iterator.return!()
        }
      }
      abandoned.register(iterator, closing, closing)
      return iterator
    }
  })
}
