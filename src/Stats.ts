/**
 * `ExecutionStats` read back from the metrics in `Metrics.ts`, filtered by provider,
 * domain or user tags, and reset by opening a new `window`.
 *
 * @since 0.1.0
 */
import { Clock, Context, Effect, Layer } from "effect"
import type { MetricLabel } from "effect"
import { randomUUID } from "node:crypto"
import * as Metrics from "./Metrics.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface LatencyStats {
  readonly avg: number
  readonly min: number
  readonly max: number
  readonly p50: number
  readonly p95: number
  readonly p99: number
}

/**
 * The figures of a window, in the shape the original executors reported, plus
 * percentiles and failures by reason.
 *
 * @since 0.1.0
 * @category models
 */
export interface ExecutionStats {
  /** Calls started. */
  readonly total: number
  readonly successes: number
  readonly failures: number
  readonly failuresByReason: Readonly<Record<string, number>>
  /** Successes over finished calls, in percent (0 when none finished). */
  readonly successRate: number
  /** Milliseconds; zeros when no call finished. */
  readonly latency: LatencyStats
  readonly concurrencyPeak: number
  readonly inFlight: number
  readonly timeouts: number
  readonly retries: number
  readonly fallbacks: number
  /** Finished calls per second over the window. */
  readonly throughput: number
  readonly windowMs: number
}

/**
 * Which calls to count. Absent fields match everything.
 *
 * @since 0.1.0
 * @category models
 */
export interface Filter {
  readonly provider?: string | undefined
  readonly domain?: string | undefined
  readonly tags?: Readonly<Record<string, string>> | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** The stable metric labels for a call's dimensions in the current window. */
  readonly labels: (dims: Metrics.Dimensions) => Metrics.Labels
  readonly snapshot: (filter?: Filter) => Effect.Effect<ExecutionStats>
  /** Starts a new window: later snapshots count only what happens after it. */
  readonly reset: Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Stats extends Context.Tag("effect-orchestra/Stats")<Stats, Service>() {}

interface Histo {
  count: number
  sum: number
  min: number
  max: number
  buckets: Map<number, number>
}

const quantile = (h: Histo, q: number): number => {
  if (h.count === 0) return 0
  const rank = q * h.count
  let previousBound = 0
  let previousCount = 0
  for (const [bound, cumulative] of Array.from(h.buckets.entries()).sort((a, b) => a[0] - b[0])) {
    if (cumulative >= rank) {
      const upper = Number.isFinite(bound) ? bound : h.max
      const inBucket = cumulative - previousCount
      const fraction = inBucket === 0 ? 1 : (rank - previousCount) / inBucket
      const value = previousBound + (upper - previousBound) * fraction
      return Math.min(h.max, Math.max(h.min, value))
    }
    previousBound = bound
    previousCount = cumulative
  }
  return h.max
}

const round = (n: number): number => Math.round(n * 100) / 100

const matches = (dims: Metrics.Dimensions, filter: Filter): boolean => {
  if (filter.provider !== undefined && dims.provider !== filter.provider) return false
  if (filter.domain !== undefined && (dims.domain ?? Metrics.ALL) !== filter.domain) return false
  for (const [k, v] of Object.entries(filter.tags ?? {})) if (dims.tags?.[k] !== v) return false
  return true
}

/**
 * Aggregates the series of the given call dimensions into `ExecutionStats`. Reads each
 * series directly (no registry scan), so its cost is the number of series of the window.
 *
 * @since 0.1.0
 * @category utils
 */
export const aggregate = (labels: Iterable<Metrics.Labels>, filter: Filter, windowMs: number): ExecutionStats => {
  let requests = 0
  let successes = 0
  let failures = 0
  let timeouts = 0
  let retries = 0
  let fallbacks = 0
  const byReason: Record<string, number> = {}
  const histo: Histo = { count: 0, sum: 0, min: Number.POSITIVE_INFINITY, max: 0, buckets: new Map() }
  // Gauge series are kept per aggregate (exact, per provider, per domain, per user tags,
  // global); the one whose dimensions equal the filter's is exact. Every matching series
  // counts a subset of the filtered calls, so the largest is a lower bound otherwise.
  const wantedProvider = filter.provider ?? Metrics.ALL
  const wantedDomain = filter.domain ?? Metrics.ALL
  const wantedUser = JSON.stringify(Object.entries(filter.tags ?? {}).sort())
  const gauges = new Set<ReadonlyArray<MetricLabel.MetricLabel>>()
  let peak = 0
  let inFlightExact: number | undefined
  let inFlightMax = 0

  for (const l of labels) {
    if (!matches(l.dims, filter)) continue
    requests += Metrics.requests.unsafeValue(l.exact).count
    successes += Metrics.successes.unsafeValue(l.exact).count
    timeouts += Metrics.timeouts.unsafeValue(l.exact).count
    retries += Metrics.retries.unsafeValue(l.exact).count
    fallbacks += Metrics.fallbacks.unsafeValue(l.exact).count
    for (const [reason, tags] of l.reasons()) {
      const n = Metrics.failures.unsafeValue(tags).count
      if (n === 0) continue
      failures += n
      byReason[reason] = (byReason[reason] ?? 0) + n
    }
    const h = Metrics.latency.unsafeValue(l.exact)
    if (h.count > 0) {
      histo.count += h.count
      histo.sum += h.sum
      histo.min = Math.min(histo.min, h.min)
      histo.max = Math.max(histo.max, h.max)
      for (const [bound, cumulative] of h.buckets)
        histo.buckets.set(bound, (histo.buckets.get(bound) ?? 0) + cumulative)
    }
    for (const tags of l.aggregates) {
      if (gauges.has(tags)) continue
      gauges.add(tags)
      if (!isSubsetSeries(tags, filter)) continue
      const user = JSON.stringify(
        tags
          .filter((t) => t.key !== "window" && t.key !== "provider" && t.key !== "domain")
          .map((t) => [t.key, t.value])
          .sort()
      )
      const exact =
        tags.find((t) => t.key === "provider")?.value === wantedProvider &&
        tags.find((t) => t.key === "domain")?.value === wantedDomain &&
        user === wantedUser
      peak = Math.max(peak, Metrics.inFlightPeak.unsafeValue(tags).value)
      const now = Metrics.inFlight.unsafeValue(tags).value
      if (exact) inFlightExact = now
      inFlightMax = Math.max(inFlightMax, now)
    }
  }
  const finished = successes + failures
  return {
    total: requests,
    successes,
    failures,
    failuresByReason: byReason,
    successRate: finished === 0 ? 0 : round((successes / finished) * 100),
    latency:
      histo.count === 0
        ? { avg: 0, min: 0, max: 0, p50: 0, p95: 0, p99: 0 }
        : {
            avg: round(histo.sum / histo.count),
            min: round(histo.min),
            max: round(histo.max),
            p50: round(quantile(histo, 0.5)),
            p95: round(quantile(histo, 0.95)),
            p99: round(quantile(histo, 0.99))
          },
    concurrencyPeak: peak,
    inFlight: inFlightExact ?? inFlightMax,
    timeouts,
    retries,
    fallbacks,
    throughput: windowMs <= 0 ? 0 : round((finished / windowMs) * 1000),
    windowMs
  }
}

// An aggregate series ("*" in some dimension) counts only the filtered calls when every
// dimension the filter fixes is fixed by the series too.
const isSubsetSeries = (tags: ReadonlyArray<MetricLabel.MetricLabel>, filter: Filter): boolean => {
  const get = (key: string) => tags.find((t) => t.key === key)?.value
  if (filter.provider !== undefined && get("provider") !== filter.provider) return false
  if (filter.domain !== undefined && get("domain") !== filter.domain) return false
  for (const [k, v] of Object.entries(filter.tags ?? {})) if (get(k) !== v) return false
  return true
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<Service> = Effect.gen(function* () {
  const instance = randomUUID().slice(0, 8)
  let generation = 0
  let window = `${instance}.${generation}`
  let windowStart = yield* Clock.currentTimeMillis
  let cache = new Map<string, Metrics.Labels>()

  const labels = (dims: Metrics.Dimensions): Metrics.Labels => {
    const key =
      dims.tags === undefined
        ? `${dims.provider}\u0000${dims.domain ?? ""}`
        : `${dims.provider}\u0000${dims.domain ?? ""}\u0000${JSON.stringify(dims.tags)}`
    let found = cache.get(key)
    if (found === undefined) {
      found = Metrics.makeLabels(window, dims)
      cache.set(key, found)
    }
    return found
  }

  const snapshot = (filter: Filter = {}): Effect.Effect<ExecutionStats> =>
    Effect.map(Clock.currentTimeMillis, (now) => aggregate(cache.values(), filter, now - windowStart))

  const reset = Effect.map(Clock.currentTimeMillis, (now) => {
    generation += 1
    window = `${instance}.${generation}`
    windowStart = now
    cache = new Map()
  })

  return { labels, snapshot, reset }
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Stats> = Layer.effect(Stats, make)

/**
 * Snapshot from the `Stats` in context.
 *
 * @since 0.1.0
 * @category accessors
 */
export const snapshot = (filter?: Filter): Effect.Effect<ExecutionStats, never, Stats> =>
  Effect.flatMap(Stats, (stats) => stats.snapshot(filter))

/**
 * @since 0.1.0
 * @category accessors
 */
export const reset: Effect.Effect<void, never, Stats> = Effect.flatMap(Stats, (stats) => stats.reset)

/**
 * A fixed-width table of the figures, for terminals.
 *
 * @since 0.1.0
 * @category formatting
 */
export const format = (stats: ExecutionStats, title = "Execution stats"): string => {
  const reasons = Object.entries(stats.failuresByReason)
    .map(([r, n]) => `${r} ${n}`)
    .join(", ")
  const rows: Array<readonly [string, string]> = [
    ["total", String(stats.total)],
    ["successes", String(stats.successes)],
    ["failures", reasons.length > 0 ? `${stats.failures} (${reasons})` : String(stats.failures)],
    ["success rate", `${stats.successRate.toFixed(1)} %`],
    [
      "latency avg / min / max",
      `${stats.latency.avg.toFixed(1)} / ${stats.latency.min.toFixed(1)} / ${stats.latency.max.toFixed(1)} ms`
    ],
    [
      "latency p50 / p95 / p99",
      `${stats.latency.p50.toFixed(1)} / ${stats.latency.p95.toFixed(1)} / ${stats.latency.p99.toFixed(1)} ms`
    ],
    ["concurrency peak", String(stats.concurrencyPeak)],
    ["timeouts", String(stats.timeouts)],
    ["retries", String(stats.retries)],
    ["fallbacks", String(stats.fallbacks)],
    ["throughput", `${stats.throughput.toFixed(2)} /s`]
  ]
  const width = Math.max(...rows.map(([k]) => k.length))
  const line = "─".repeat(width + 24)
  return [title, line, ...rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`), line].join("\n")
}
