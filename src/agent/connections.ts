/**
 * The connection limit shared by every HTTP agent: at most `total` requests in flight, at
 * most `perHost` to one host (`host:port`). Two `Semaphore`s per request, the host's first:
 * a request waiting for a free total slot already holds its host's, so a busy host never
 * keeps another host's requests from the total pool. Effect 4's semaphore serves waiters
 * in arrival order and wakes only as many as there are free permits. A host's semaphore
 * lives while requests use it; its peak outlives it among the {@link maxIdleHosts} hosts
 * used last, so a process that talks to many hosts keeps a bounded table.
 *
 * @internal
 */
import { Effect, Semaphore } from "effect"

/**
 * Connection-limit figures, for tests and dashboards. `peakByHost` holds the hosts in use and
 * the 1,000 idle ones used last.
 *
 * @since 0.1.0
 * @category models
 */
export interface ConnectionStats {
  /** Requests holding a connection slot now. */
  readonly active: number
  /** Requests waiting for a slot now. */
  readonly waiting: number
  /** Most requests in flight at once so far. */
  readonly peak: number
  readonly activeByHost: Readonly<Record<string, number>>
  /**
   * Most requests in flight at once to each host: the hosts in use now, and the
   * {@link maxIdleHosts} used last (an older idle host's figure is dropped).
   */
  readonly peakByHost: Readonly<Record<string, number>>
}

/** How many idle hosts keep their figure in `peakByHost`, besides the hosts in use. */
export const maxIdleHosts = 1000

export interface Connections {
  readonly withPermit: (host: string) => <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  readonly stats: Effect.Effect<ConnectionStats>
}

interface Host {
  readonly semaphore: Semaphore.Semaphore
  users: number
  active: number
  peak: number
}

/** Builds a limiter; `total` and `perHost` are checked by the caller. */
export const make = (options: { readonly total: number; readonly perHost: number }): Connections => {
  const total = Semaphore.makeUnsafe(options.total)
  const hosts = new Map<string, Host>()
  // Peaks of the hosts no request uses, oldest first (a Map keeps insertion order).
  const idlePeaks = new Map<string, number>()
  let active = 0
  let waiting = 0
  let peak = 0

  const withPermit =
    (host: string) =>
    <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
      Effect.suspend(() => {
        let entry = hosts.get(host)
        if (entry === undefined) {
          entry = {
            semaphore: Semaphore.makeUnsafe(options.perHost),
            users: 0,
            active: 0,
            peak: idlePeaks.get(host) ?? 0
          }
          idlePeaks.delete(host)
          hosts.set(host, entry)
        }
        const own = entry
        own.users++
        waiting++
        let queued = true
        const leaveQueue = () => {
          if (!queued) return
          queued = false
          waiting--
        }
        const inFlight = Effect.suspend(() => {
          leaveQueue()
          active++
          own.active++
          if (active > peak) peak = active
          if (own.active > own.peak) own.peak = own.active
          return Effect.ensuring(
            effect,
            Effect.sync(() => {
              active--
              own.active--
            })
          )
        })
        return own.semaphore.withPermit(total.withPermit(inFlight)).pipe(
          Effect.ensuring(
            Effect.sync(() => {
              leaveQueue()
              own.users--
              if (own.users === 0 && hosts.get(host) === own) {
                hosts.delete(host)
                if (own.peak > 0) idlePeaks.set(host, own.peak)
                if (idlePeaks.size > maxIdleHosts) idlePeaks.delete(idlePeaks.keys().next().value!)
              }
            })
          )
        )
      })

  const stats = Effect.sync((): ConnectionStats => {
    const activeByHost: Record<string, number> = Object.create(null)
    for (const [host, entry] of hosts) if (entry.active > 0) activeByHost[host] = entry.active
    const peaks: Record<string, number> = Object.create(null)
    for (const [host, n] of idlePeaks) peaks[host] = n
    for (const [host, entry] of hosts) if (entry.peak > 0) peaks[host] = entry.peak
    return { active, waiting, peak, activeByHost, peakByHost: peaks }
  })

  return { withPermit, stats }
}
