import { Deferred, Effect, Ref } from "effect"

/**
 * A connection limit shared by every HTTP agent: at most `total` requests in flight, at
 * most `perHost` to one host. Permits are handed over in FIFO order: a release completes
 * the oldest waiter that may proceed (its host has room) directly, so a release wakes
 * exactly one fiber, never the whole queue. One fiber waits per queued request.
 *
 * @internal
 */
export interface ConnectionLimiter {
  readonly withPermit: (host: string) => <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  readonly stats: Effect.Effect<ConnectionStats>
}

/** @internal */
export interface ConnectionStats {
  readonly active: number
  readonly waiting: number
  readonly peak: number
  readonly activeByHost: Readonly<Record<string, number>>
  readonly peakByHost: Readonly<Record<string, number>>
}

interface Waiter {
  readonly host: string
  readonly seq: number
  readonly deferred: Deferred.Deferred<void>
  granted: boolean
}

interface State {
  active: number
  peak: number
  seq: number
  waiting: number
  readonly byHost: Map<string, number>
  readonly peakByHost: Map<string, number>
  readonly queues: Map<string, Array<Waiter>>
}

/** @internal */
export const make = (options: { readonly total: number; readonly perHost: number }) =>
  Effect.gen(function* () {
    const { total, perHost } = options
    // The maps are mutated only inside `Ref.modify`, which runs without interleaving.
    const state = yield* Ref.make<State>({
      active: 0,
      peak: 0,
      seq: 0,
      waiting: 0,
      byHost: new Map(),
      peakByHost: new Map(),
      queues: new Map()
    })

    const grant = (s: State, host: string) => {
      s.active++
      s.peak = Math.max(s.peak, s.active)
      const now = (s.byHost.get(host) ?? 0) + 1
      s.byHost.set(host, now)
      s.peakByHost.set(host, Math.max(s.peakByHost.get(host) ?? 0, now))
    }

    /** Frees one permit of `host` and hands it to the oldest waiter that may use it. */
    const free = (s: State, host: string): Waiter | undefined => {
      s.active--
      const left = (s.byHost.get(host) ?? 1) - 1
      if (left === 0) s.byHost.delete(host)
      else s.byHost.set(host, left)
      let next: Waiter | undefined
      for (const [queueHost, queue] of s.queues) {
        const head = queue[0]
        if (head === undefined || (s.byHost.get(queueHost) ?? 0) >= perHost) continue
        if (next === undefined || head.seq < next.seq) next = head
      }
      if (next === undefined) return undefined
      const queue = s.queues.get(next.host)!
      queue.shift()
      if (queue.length === 0) s.queues.delete(next.host)
      s.waiting--
      next.granted = true
      grant(s, next.host)
      return next
    }

    const handOff = (waiter: Waiter | undefined): Effect.Effect<void> =>
      waiter === undefined ? Effect.void : Deferred.succeed(waiter.deferred, undefined)

    const release = (host: string): Effect.Effect<void> =>
      Effect.flatMap(
        Ref.modify(state, (s) => [free(s, host), s] as const),
        handOff
      )

    const take = (host: string, deferred: Deferred.Deferred<void>): Effect.Effect<Waiter | undefined> =>
      Ref.modify(state, (s) => {
        if (s.active < total && (s.byHost.get(host) ?? 0) < perHost) {
          grant(s, host)
          return [undefined, s] as const
        }
        const waiter: Waiter = { host, seq: s.seq++, deferred, granted: false }
        const queue = s.queues.get(host)
        if (queue === undefined) s.queues.set(host, [waiter])
        else queue.push(waiter)
        s.waiting++
        return [waiter, s] as const
      })

    /** A waiter that gives up: leave the queue, or pass on a permit granted meanwhile. */
    const cancel = (waiter: Waiter): Effect.Effect<void> =>
      Effect.flatMap(
        Ref.modify(state, (s) => {
          if (waiter.granted) return [free(s, waiter.host), s] as const
          const queue = s.queues.get(waiter.host)
          const at = queue?.indexOf(waiter) ?? -1
          if (queue !== undefined && at >= 0) {
            queue.splice(at, 1)
            if (queue.length === 0) s.queues.delete(waiter.host)
            s.waiting--
          }
          return [undefined, s] as const
        }),
        handOff
      )

    const withPermit =
      (host: string) =>
      <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
        Effect.uninterruptibleMask((restore) =>
          Effect.gen(function* () {
            const deferred = yield* Deferred.make<void>()
            const waiter = yield* take(host, deferred)
            if (waiter !== undefined) {
              yield* restore(Deferred.await(deferred)).pipe(Effect.onInterrupt(() => cancel(waiter)))
            }
            return yield* restore(effect).pipe(Effect.ensuring(release(host)))
          })
        )

    const stats = Effect.map(
      Ref.get(state),
      (s): ConnectionStats => ({
        active: s.active,
        waiting: s.waiting,
        peak: s.peak,
        activeByHost: Object.fromEntries(s.byHost),
        peakByHost: Object.fromEntries(s.peakByHost)
      })
    )

    return { withPermit, stats } satisfies ConnectionLimiter
  })
