/**
 * Every metric of the library, defined in one place. Dimensions are tags only:
 * `provider`, `domain`, `window` (advanced by `Stats.reset`) and any user tags (a batch id).
 * `Stats` reads its figures back from these metrics; nothing is counted twice.
 *
 * @since 0.1.0
 */
import { Metric, MetricBoundaries, MetricLabel } from "effect"

/**
 * Latency buckets: 0.05 ms to ~14 min in steps of 10%, so percentiles read back from the
 * histogram are within ~5% of the true value.
 *
 * @since 0.1.0
 * @category boundaries
 */
export const latencyBoundaries = MetricBoundaries.exponential({ start: 0.05, factor: 1.1, count: 176 })

/**
 * @since 0.1.0
 * @category metrics
 */
export const requests = Metric.counter("orchestra_requests_total", {
  description: "Calls started (one per execute, retries not included)",
  incremental: true
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const successes = Metric.counter("orchestra_successes_total", {
  description: "Calls that ended with an answer",
  incremental: true
})

/**
 * Tagged with `reason` (ModelError reasons, Timeout, CircuitOpen, ShuttingDown, ...).
 *
 * @since 0.1.0
 * @category metrics
 */
export const failures = Metric.counter("orchestra_failures_total", {
  description: "Calls that ended with a failure, by reason",
  incremental: true
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const timeouts = Metric.counter("orchestra_timeouts_total", {
  description: "Attempts interrupted by a deadline",
  incremental: true
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const retries = Metric.counter("orchestra_retries_total", {
  description: "Retries made (attempts after the first)",
  incremental: true
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const fallbacks = Metric.counter("orchestra_fallbacks_total", {
  description: "Calls answered by a fallback step",
  incremental: true
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const hedges = Metric.counter("orchestra_hedges_total", {
  description: "Backup calls started by hedging; tagged outcome=won|lost",
  incremental: true
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const latency = Metric.histogram(
  "orchestra_request_duration_ms",
  latencyBoundaries,
  "Duration of a call including retries, in milliseconds"
)

/**
 * @since 0.1.0
 * @category metrics
 */
export const inFlight = Metric.gauge("orchestra_in_flight", { description: "Calls running now" })

/**
 * @since 0.1.0
 * @category metrics
 */
export const inFlightPeak = Metric.gauge("orchestra_in_flight_peak", {
  description: "Highest number of calls running at once in the window"
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const timeToFirstToken = Metric.histogram(
  "orchestra_time_to_first_token_ms",
  latencyBoundaries,
  "Time from a stream's start to its first text delta, in milliseconds"
)

/**
 * @since 0.1.0
 * @category metrics
 */
export const tokensPerSecond = Metric.histogram(
  "orchestra_stream_tokens_per_second",
  MetricBoundaries.exponential({ start: 0.5, factor: 1.25, count: 60 }),
  "Output tokens per second of completed streams (after the first token)"
)

/**
 * @since 0.1.0
 * @category metrics
 */
export const streamsAborted = Metric.counter("orchestra_streams_aborted_total", {
  description: "Streams that failed or were cancelled after delivering text",
  incremental: true
})

/**
 * The label value standing for "all" in aggregate series (`provider="*"`).
 *
 * @since 0.1.0
 * @category labels
 */
export const ALL = "*"

/**
 * Stable label arrays for one combination of dimensions. Effect caches a metric's hook
 * per label-array identity, so reusing these arrays keeps updates off the registry's
 * hash lookups on the hot path.
 *
 * @since 0.1.0
 * @category labels
 */
export interface Labels {
  readonly dims: Dimensions
  readonly exact: ReadonlyArray<MetricLabel.MetricLabel>
  /** Series whose in-flight gauge and peak are kept: exact, per provider, per domain, per user tags, global. */
  readonly aggregates: ReadonlyArray<ReadonlyArray<MetricLabel.MetricLabel>>
  readonly withReason: (reason: string) => ReadonlyArray<MetricLabel.MetricLabel>
  /** The `reason` series handed out so far. */
  readonly reasons: () => IterableIterator<readonly [string, ReadonlyArray<MetricLabel.MetricLabel>]>
  readonly with: (key: string, value: string) => ReadonlyArray<MetricLabel.MetricLabel>
}

/**
 * Dimensions of a call.
 *
 * @since 0.1.0
 * @category labels
 */
export interface Dimensions {
  readonly provider: string
  readonly domain?: string | undefined
  readonly tags?: Readonly<Record<string, string>> | undefined
}

const label = MetricLabel.make

/**
 * @since 0.1.0
 * @category labels
 */
export const makeLabels = (window: string, dims: Dimensions): Labels => {
  const user = Object.entries(dims.tags ?? {})
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => label(k, v))
  const domain = dims.domain ?? ALL
  const series = (provider: string, d: string, withUser: boolean) => [
    label("window", window),
    label("provider", provider),
    label("domain", d),
    ...(withUser ? user : [])
  ]
  const exact = series(dims.provider, domain, true)
  const aggregates = [
    exact,
    series(dims.provider, ALL, false),
    series(ALL, domain, false),
    series(ALL, ALL, false),
    ...(user.length > 0 ? [series(ALL, ALL, true)] : [])
  ]
  const unique = aggregates.filter(
    (tags, i) => aggregates.findIndex((other) => JSON.stringify(other) === JSON.stringify(tags)) === i
  )
  const byReason = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()
  const byExtra = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()
  return {
    dims,
    exact,
    aggregates: unique,
    reasons: () => byReason.entries(),
    withReason: (reason) => {
      let tags = byReason.get(reason)
      if (tags === undefined) {
        tags = [...exact, label("reason", reason)]
        byReason.set(reason, tags)
      }
      return tags
    },
    with: (key, value) => {
      const id = `${key}\u0000${value}`
      let tags = byExtra.get(id)
      if (tags === undefined) {
        tags = [...exact, label(key, value)]
        byExtra.set(id, tags)
      }
      return tags
    }
  }
}

/**
 * @since 0.1.0
 * @category metrics
 */
export const streamResumes = Metric.counter("orchestra_stream_resumes_total", {
  description: "Streams resumed on another provider after a mid-stream failure (lossy continuations)",
  incremental: true
})
