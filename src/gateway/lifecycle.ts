/**
 * The gateway's shutdown: `/readyz` turns 503, so a load balancer moves away; after `drainDelay`
 * (none by default) stop accepting (new requests get a 503 with `Connection: close`), drain the requests and streams
 * in flight up to a deadline, then cut the rest: a call still running is answered 503
 * (`shutting_down`), a stream still running ends with an error event, never a clean
 * `[DONE]`.
 *
 * @internal
 */
import { Deferred, Duration, Effect, Exit, type Fiber } from "effect"
import { ShuttingDownError } from "../AiError.js"

/**
 * One request in flight.
 *
 * @internal
 */
export interface Entry {
  /**
   * The stage the cut interrupts: the request up to its call (reading its body, its key),
   * then the call of a non-streaming request; none after the call.
   */
  fiber: Fiber.Fiber<unknown, unknown> | undefined
  /**
   * Ends the stream of a streaming request with the cut's error (see {@link Lifecycle.onCut});
   * when set, the cut calls it instead of interrupting `fiber`.
   */
  stop: ((error: ShuttingDownError) => void) | undefined
  /** Set by the cut, so the request answers `shutting_down` rather than as cancelled. */
  cut: boolean
  left: boolean
}

/**
 * @internal
 */
export interface Lifecycle {
  readonly isDraining: () => boolean
  readonly inFlight: () => number
  /** Counts a request in; `undefined` once the drain refuses new requests (answer 503): after its `drainDelay`. */
  readonly enter: () => Entry | undefined
  /** Counts it out (idempotent). */
  readonly leave: (entry: Entry) => void
  /** Calls `stop` with a `ShuttingDownError` when the drain cuts `entry` (at once if it already has): streams stop on it. */
  readonly onCut: (entry: Entry, stop: (error: ShuttingDownError) => void) => void
  /**
   * Drains: turn not ready, after `drainDelay` refuse new requests, wait for the running ones up to the
   * deadline, cut the rest. Idempotent. Interrupted, it is cancelled: ready and admitting again.
   */
  readonly drain: Effect.Effect<void>
}

const cutError = () =>
  new ShuttingDownError({ message: "the gateway is shutting down: its drain deadline passed during this request" })

/**
 * @internal
 */
export const make = (options: {
  readonly drainTimeout: Duration.Duration
  /**
   * How long the drain keeps admitting new requests after it starts (`isDraining`, so `/readyz` 503, from
   * its start): a load balancer polling `/readyz` stops sending before any request is refused. Default none.
   */
  readonly drainDelay?: Duration.Duration | undefined
  /** After the cut, how long cut requests get to send their last bytes. */
  readonly cutGrace?: Duration.Duration | undefined
  readonly onCount?: ((inFlight: number) => void) | undefined
}): Effect.Effect<Lifecycle> =>
  Effect.gen(function* () {
    let draining = false
    let refusing = false
    let count = 0
    let idle: Deferred.Deferred<void> | undefined
    const entries = new Set<Entry>()

    const enter = (): Entry | undefined => {
      if (refusing) return undefined
      const entry: Entry = { fiber: undefined, stop: undefined, cut: false, left: false }
      count++
      entries.add(entry)
      options.onCount?.(count)
      return entry
    }

    const leave = (entry: Entry) => {
      if (entry.left) return
      entry.left = true
      count--
      entries.delete(entry)
      options.onCount?.(count)
      if (count === 0 && idle !== undefined) Deferred.doneUnsafe(idle, Exit.void)
    }

    const waitIdle = (timeout: Duration.Duration) =>
      Effect.suspend(() => {
        if (count === 0) return Effect.void
        idle ??= Deferred.makeUnsafe<void>()
        return Effect.asVoid(Effect.timeoutOption(Deferred.await(idle), timeout))
      })

    // Which run of the drain is the latest: an interrupted one gives readiness back only if no other started since.
    let runs = 0
    const run = Effect.gen(function* () {
      draining = true
      if (options.drainDelay !== undefined && Duration.isGreaterThan(options.drainDelay, Duration.zero)) {
        yield* Effect.sleep(options.drainDelay)
      }
      refusing = true
      yield* waitIdle(options.drainTimeout)
      if (count === 0) return
      for (const entry of Array.from(entries)) {
        entry.cut = true
        // A stream ends through its pipeline (an error event, or before its first chunk the failure's status).
        if (entry.stop !== undefined) entry.stop(cutError())
        else entry.fiber?.interruptUnsafe()
      }
      yield* waitIdle(options.cutGrace ?? Duration.seconds(2))
    })
    const drain = yield* Effect.cached(
      Effect.suspend(() => {
        const mine = ++runs
        // Interrupted (every caller left: `cached` runs it afresh next time), the drain is cancelled: left not ready
        // and admitting, or refusing for good, the gateway would say one thing and do another until the next drain.
        return Effect.onInterrupt(run, () =>
          Effect.sync(() => {
            if (mine !== runs) return
            draining = false
            refusing = false
          })
        )
      })
    )

    return {
      isDraining: () => draining,
      inFlight: () => count,
      enter,
      leave,
      onCut: (entry, stop) => {
        entry.stop = stop
        if (entry.cut) stop(cutError())
      },
      drain
    } satisfies Lifecycle
  })
