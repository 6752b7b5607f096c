/**
 * `ExecutionStats` read back from the call metrics of `Metrics.ts`, filtered by provider
 * or domain, over a window that `reset` restarts.
 *
 * Each (provider, domain) pair has one series (the first {@link maxSeries} pairs; later ones, and
 * those of a domain past 256 characters, count in their provider's `"(other)"` domain when it has series, else,
 * like those of a provider name past 256 characters, under `"(other)"` for both); the metric exporters read the same series
 * (cumulative, so Prometheus counters never go backwards), and a window subtracts the
 * figures it started with. Reading costs the number of series (providers × domains), not
 * the number of calls or batches already run. Closing the `Stats` layer removes its series
 * from the metric registry. Two `Stats` in one registry (two orchestras in one process) that
 * count a pair in common export one series of their figures added up (`orchestra_in_flight_peak`:
 * the larger peak; the counts of one closed before the other stay in it); each one's `snapshot`
 * reads its own.
 *
 * | field | unit | meaning |
 * |---|---|---|
 * | `total` | calls | calls started on a provider (each fallback step is a call; retries are not); a hedge's step cut because the race was decided counts here only |
 * | `successes`, `failures` | calls | calls that ended with an answer / a failure |
 * | `failuresByReason` | calls | failures by reason (`RateLimited`, `Timeout`, `CircuitOpen`, `Interrupted`, ...) |
 * | `successRate` | % | successes over finished calls, to 2 decimals but never 100 while a call failed nor 0 while one succeeded (0 when none finished) |
 * | `staleAnswers` | calls | calls answered from an expired cache entry (`allowStale`) after every step failed or the total deadline cut the call; those failures stay in `failures` |
 * | `latency` | ms | a call as its caller saw it: queueing and retries included (avg, min, max, p50, p95, p99) |
 * | `serviceTime` | ms | one attempt served by the provider, queueing excluded |
 * | `queueWait` | ms | an attempt waiting for a free slot of its provider |
 * | `timeToFirstToken` | ms | a stream's start to its first text |
 * | `concurrencyPeak` | attempts | most attempts served at once in the window (queued ones excluded) |
 * | `inFlight`, `queued` | attempts | attempts served / waiting for a slot now |
 * | `timeouts` | attempts | attempts ended by a deadline (an attempt's, the call's, or the caller's signal timeout) |
 * | `retries` | attempts | attempts after the first, on the same provider |
 * | `fallbacks` | calls | hand-overs to the next step of a fallback chain (or of a hedge, after a step failed before its delay) |
 * | `hedges` | calls | backup calls started by hedging (the delay passed, the step before still running); each is won (it answered first) or lost |
 * | `tokens` | tokens | input and output tokens (estimated where a provider reports none) |
 * | `throughput` | calls/s | finished calls per second over the window (under 1/s, to 3 significant digits: 12 calls an hour are 0.00333) |
 * | `windowMs` | ms | time since the window began (`resetStats()` / `Stats.reset` starts a new one), up to the `Stats` layer's closing (`dispose()`), on the monotonic clock (a wall clock stepped back or on by NTP does not change it) |
 * | `ignoredDurations` | durations | durations left out of `latency`, `serviceTime`, `queueWait` and `timeToFirstToken` for being no finite number (`NaN`, `Infinity`: a provider's or clock's bogus reading); `orchestra_ignored_durations_total` by histogram |
 * | `series` | names | the series the figures are of: the filter's `provider` and `domain` (`{}` for all); when the filter names a pair, provider or domain without a series of its own after calls were counted past `Stats.maxSeries`, the series its calls are among: `domain: "(other)"` (a domain: every provider's pairs past the bound; a pair: its provider's), or both `"(other)"` (a provider without series of its own) |
 *
 * @since 0.1.0
 */
import { Clock, Context, Effect, Layer, Result } from "effect"
import type { Scope } from "effect"
import type { ModelError } from "./AiError.js"
import { noDomain, otherSeries } from "./Metrics.js"
import { registrationContext } from "./stats/counters.js"
import { percent, perSecond, round, successRate } from "./stats/figures.js"
import { checkFilter } from "./stats/filter.js"
import { maxOwnLabelChars } from "./stats/labels.js"
import { Gauge, Series, WindowHistogram } from "./stats/series.js"

/**
 * Milliseconds. Zeros when nothing was recorded.
 *
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
 * The figures of a window (see the module's table for units).
 *
 * @since 0.1.0
 * @category models
 */
export interface ExecutionStats {
  readonly total: number
  readonly successes: number
  readonly failures: number
  readonly failuresByReason: Readonly<Record<string, number>>
  readonly successRate: number
  readonly staleAnswers: number
  readonly latency: LatencyStats
  readonly serviceTime: LatencyStats
  readonly queueWait: LatencyStats
  readonly timeToFirstToken: LatencyStats
  readonly concurrencyPeak: number
  readonly inFlight: number
  readonly queued: number
  readonly timeouts: number
  readonly retries: number
  readonly fallbacks: number
  readonly hedges: { readonly started: number; readonly won: number; readonly lost: number }
  readonly tokens: { readonly input: number; readonly output: number }
  readonly throughput: number
  readonly windowMs: number
  /** Durations the window's histograms left out for being no finite number (a `Stats` snapshot's; none in a batch's). */
  readonly ignoredDurations?: number | undefined
  /**
   * The series the figures are of (a `Stats` snapshot's; a batch's figures have none): the
   * filter's fields, or, when the filter matches no series of its own and calls were counted past
   * {@link maxSeries}, those its calls are among (`domain` `"(other)"`, and `provider` too for a
   * provider without series of its own).
   */
  readonly series?: Filter | undefined
}

/**
 * Which calls to count. Absent (or `null`) fields match everything.
 *
 * @since 0.1.0
 * @category models
 */
export interface Filter {
  readonly provider?: string | undefined
  readonly domain?: string | undefined
}

/**
 * A snapshot: without a filter it cannot fail; with one, a filter from untyped code that
 * would match what it does not mean fails with an `InvalidRequest` naming the field.
 *
 * @since 0.3.0
 * @category models
 */
export interface Snapshot {
  (): Effect.Effect<ExecutionStats>
  (filter: Filter | undefined): Effect.Effect<ExecutionStats, ModelError>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * The series of a (provider, domain) pair, created on first use. The call path updates
   * it directly.
   */
  readonly series: (provider: string, domain: string | undefined) => Series
  /**
   * The series of a (provider, domain) pair if it has one of its own, without creating it: for
   * readers (hedging's `after: "p95"`), so that a pair that served no call takes no series.
   */
  readonly find: (provider: string, domain: string | undefined) => Series | undefined
  /**
   * The figures of the calls `filter` matches. A filter that is no object (or one without
   * fields of its own: a `Map`, a signal), has a key other than `provider` and `domain` (a
   * misspelt one would match everything) or a field that is no name fails with an
   * `InvalidRequest` naming it (`filter.provder`); `null`, as the filter or a field, is no
   * filter. The Promise facade's `stats(filter)` makes the same check. A filter naming a pair,
   * provider or domain without a series of its own, once calls were counted past
   * {@link maxSeries}, answers the `"(other)"` series its calls are in (`series` says which). A
   * provider filter counts every call of the provider.
   */
  readonly snapshot: Snapshot
  /**
   * `snapshot` for synchronous callers (the Promise facade): the time is read from `Date.now`-free
   * `Clock` reads only. Throws `snapshot`'s `InvalidRequest` for a filter it refuses.
   */
  readonly snapshotUnsafe: (filter?: Filter) => ExecutionStats
  /** Starts a new window: later snapshots count only what happens after it. */
  readonly reset: Effect.Effect<void>
}

/**
 * The (provider, domain) pairs a `Stats` gives series of their own, in the order they are
 * first counted; the calls of later pairs (a `domain` per user or per request) count together
 * in their provider's series of domain `"(other)"` (`Metrics.otherSeries`) when the provider has
 * series of its own, else in one series, `provider` and `domain` `"(other)"`, so that such
 * calls do not grow the figures kept in the process and `/metrics` with every name, while a
 * provider's figures still count all its calls (at most one more series per provider with series of its
 * own: as those are among the first `maxSeries` pairs, a `Stats` holds at most `2 * maxSeries + 1` series
 * whatever the number of providers, a provider per tenant included). So do the
 * calls of a pair whose domain name is longer than 256 characters (a prompt given as a domain: it
 * would be written whole in each line of its series on every scrape); those of a provider name that
 * long count in the shared one. A pair keeps its series once given one. Once calls count there, a
 * snapshot whose filter names a pair, provider or domain without a series of its own answers the
 * series its calls are in, `series` naming it.
 *
 * @since 0.3.0
 * @category constants
 */
export const maxSeries = 1_000

/**
 * @since 0.1.0
 * @category services
 */
export class Stats extends Context.Service<Stats, Service>()("effect-orchestra/Stats") {}

// A name past `maxOwnLabelChars` (a prompt or a user record given as a call's domain) would be written whole
// in each line of its series on every scrape, and held in the registry: its calls count under "(other)".
const ownDomain = (domain: string | undefined): boolean => domain === undefined || domain.length <= maxOwnLabelChars

const latencyOf = (h: WindowHistogram): LatencyStats =>
  h.count === 0
    ? { avg: 0, min: 0, max: 0, p50: 0, p95: 0, p99: 0 }
    : {
        avg: round(h.sum / h.count),
        min: round(h.min),
        max: round(h.max),
        p50: round(h.quantile(0.5)),
        p95: round(h.quantile(0.95)),
        p99: round(h.quantile(0.99))
      }

/**
 * Builds a `Stats` whose series register in the `Metric.MetricRegistry` of the context it
 * is built in; closing the scope removes them.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<Service, never, Scope.Scope> = Effect.gen(function* () {
  // The registry and metric attributes only: a series (held by the registry's readers) would keep every service alive.
  const context = registrationContext(yield* Effect.context<never>())
  const clock = yield* Clock.Clock
  const byProvider = new Map<string, Map<string, Series>>()
  const all: Array<Series> = []
  const providerGauges = new Map<string, Gauge>()
  const domainGauges = new Map<string, Gauge>()
  const global = new Gauge()
  // The window is timed on the monotonic clock: a wall clock stepped back (NTP) made `windowMs` negative, and its
  // throughput 0; one stepped on stretched the window.
  const now = (): number => Number(clock.monotonicTimeNanosUnsafe()) / 1_000_000
  let windowStart = now()
  // Once closed, a series first used (a call refused after the executor closed) counts
  // without entering the registry: nothing would remove it, and exporters would show it for good.
  let closed = false
  // Closing ends the window: the final figures (the facade's after `dispose()`) keep their length and throughput.
  let windowEnd: number | undefined

  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      closed = true
      windowEnd = now()
      for (const s of all) s.remove()
    })
  )

  const gaugeIn = (map: Map<string, Gauge>, key: string): Gauge => {
    let gauge = map.get(key)
    if (gauge === undefined) {
      gauge = new Gauge()
      map.set(key, gauge)
    }
    return gauge
  }

  const series = (provider: string, domain: string | undefined): Series =>
    byProvider.get(provider)?.get(domain ?? noDomain) ?? overflow(provider, domain)

  // A pair without a series of its own. A provider with series of its own (or that may still have one) keeps the
  // calls of its pairs past the bound, or of a domain too long to label, in its own "(other)" domain: in the shared
  // series, `snapshot({ provider })` left them out. That adds at most one series per provider with series.
  const overflow = (provider: string, domain: string | undefined): Series => {
    if (provider.length > maxOwnLabelChars) return create(otherSeries, otherSeries)
    if (all.length < maxSeries) return create(provider, ownDomain(domain) ? domain : otherSeries)
    return byProvider.has(provider) ? create(provider, otherSeries) : create(otherSeries, otherSeries)
  }

  const find = (provider: string, domain: string | undefined): Series | undefined =>
    byProvider.get(provider)?.get(domain ?? noDomain)

  const create = (provider: string, domain: string | undefined): Series => {
    let domains = byProvider.get(provider)
    if (domains === undefined) {
      domains = new Map()
      byProvider.set(provider, domains)
    }
    const domainKey = domain ?? noDomain
    let found = domains.get(domainKey)
    if (found === undefined) {
      // The pair's own gauge is the series' own: a key joining the two names would let two pairs
      // share it ("a\u0000b" and "c", "a" and "b\u0000c").
      const gauges = [new Gauge(), gaugeIn(providerGauges, provider), gaugeIn(domainGauges, domainKey), global]
      found = new Series(provider, domain, gauges, closed ? undefined : context)
      domains.set(domainKey, found)
      all.push(found)
    }
    return found
  }

  const gaugeFor = (filter: Filter): Gauge | undefined => {
    if (filter.provider !== undefined && filter.domain !== undefined) {
      return byProvider.get(filter.provider)?.get(filter.domain)?.gauges[0]
    }
    if (filter.provider !== undefined) return providerGauges.get(filter.provider)
    if (filter.domain !== undefined) return domainGauges.get(filter.domain)
    return global
  }

  const snapshotUnsafe = (given?: Filter | null): ExecutionStats => {
    const checked = checkFilter(given)
    if (Result.isFailure(checked)) throw checked.failure
    return read(checked.success)
  }

  const target = (filter: Filter): Filter => {
    const { provider, domain } = filter
    if (provider === undefined && domain === undefined) return {}
    const own =
      provider === undefined
        ? domainGauges.has(domain!)
        : domain === undefined
          ? byProvider.has(provider)
          : byProvider.get(provider)?.has(domain) === true
    const as = (): Filter =>
      provider === undefined ? { domain } : domain === undefined ? { provider } : { provider, domain }
    // An empty name is no call's (providers and domains have names): its zeros are its own.
    // A filter naming none of the first pairs reads the series its calls (if any) went to; a new object
    // each time, as the answer's `series` is the caller's.
    if (own || provider === "" || domain === "") return as()
    const shared = byProvider.get(otherSeries)?.has(otherSeries) === true
    // A domain without a series of its own may have calls in any provider's "(other)" domain.
    if (provider === undefined) return domainGauges.has(otherSeries) ? { domain: otherSeries } : as()
    // A provider's pair past the bound is in the provider's "(other)" domain if it has series, else in the shared one.
    const ofProvider = byProvider.get(provider)
    if (ofProvider !== undefined) return ofProvider.has(otherSeries) ? { provider, domain: otherSeries } : as()
    return shared ? { provider: otherSeries, domain: otherSeries } : as()
  }

  const read = (given: Filter): ExecutionStats => {
    const filter = target(given)
    const windowMs = Math.floor((windowEnd ?? now()) - windowStart)
    let total = 0
    let successes = 0
    let staleAnswers = 0
    let timeouts = 0
    let retries = 0
    let fallbacks = 0
    let hedgesStarted = 0
    let hedgesWon = 0
    let hedgesLost = 0
    let inputTokens = 0
    let outputTokens = 0
    let ignoredDurations = 0
    const byReason: Record<string, number> = {}
    let failures = 0
    const latency = new WindowHistogram()
    const service = new WindowHistogram()
    const queueWait = new WindowHistogram()
    const ttft = new WindowHistogram()
    const providers =
      filter.provider === undefined ? byProvider.values() : [byProvider.get(filter.provider) ?? new Map()]
    for (const domains of providers) {
      const selected =
        filter.domain === undefined ? domains.values() : [domains.get(filter.domain)].filter((s) => s !== undefined)
      for (const s of selected as Iterable<Series>) {
        const b = s.baseline
        total += s.requests - b.requests
        successes += s.successes - b.successes
        staleAnswers += s.staleAnswers - b.staleAnswers
        timeouts += s.timeouts - b.timeouts
        retries += s.retries - b.retries
        fallbacks += s.fallbacks - b.fallbacks
        hedgesStarted += s.hedgesStarted - b.hedgesStarted
        hedgesWon += s.hedgesWon - b.hedgesWon
        hedgesLost += s.hedgesLost - b.hedgesLost
        inputTokens += s.inputTokens - b.inputTokens
        outputTokens += s.outputTokens - b.outputTokens
        ignoredDurations += s.ignoredDurations() - b.ignoredDurations
        for (const [reason, count] of s.reasons) {
          const n = count - (b.reasons.get(reason) ?? 0)
          if (n === 0) continue
          failures += n
          byReason[reason] = (byReason[reason] ?? 0) + n
        }
        latency.add(s.latency, b.latency)
        service.add(s.service, b.service)
        service.add(s.streamService, b.streamService)
        queueWait.add(s.queueWait, b.queueWait)
        ttft.add(s.timeToFirstToken, b.timeToFirstToken)
      }
    }
    const gauge = gaugeFor(filter)
    const finished = successes + failures
    return {
      total,
      successes,
      failures,
      failuresByReason: byReason,
      successRate: successRate(successes, finished),
      staleAnswers,
      latency: latencyOf(latency),
      serviceTime: latencyOf(service),
      queueWait: latencyOf(queueWait),
      timeToFirstToken: latencyOf(ttft),
      concurrencyPeak: gauge?.peak ?? 0,
      inFlight: gauge?.inFlight ?? 0,
      queued: gauge?.queued ?? 0,
      timeouts,
      retries,
      fallbacks,
      hedges: { started: hedgesStarted, won: hedgesWon, lost: hedgesLost },
      tokens: { input: inputTokens, output: outputTokens },
      throughput: perSecond(finished, windowMs),
      windowMs,
      ignoredDurations,
      series: filter
    }
  }

  const reset = Effect.sync(() => {
    windowStart = now()
    if (closed) windowEnd = windowStart
    for (const s of all) s.resetWindow()
    for (const s of all) s.gauges[0]!.peak = s.gauges[0]!.inFlight
    for (const gauges of [providerGauges, domainGauges]) {
      for (const gauge of gauges.values()) gauge.peak = gauge.inFlight
    }
    global.peak = global.inFlight
  })

  return {
    series,
    find,
    snapshot: ((filter?: Filter) =>
      Effect.suspend(() => {
        const checked = checkFilter(filter)
        return Result.isFailure(checked) ? Effect.fail(checked.failure) : Effect.succeed(read(checked.success))
      })) as Snapshot,
    snapshotUnsafe,
    reset
  } satisfies Service
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
export const snapshot: {
  (): Effect.Effect<ExecutionStats, never, Stats>
  (filter: Filter | undefined): Effect.Effect<ExecutionStats, ModelError, Stats>
} = ((filter?: Filter) => Effect.flatMap(Stats, (stats) => stats.snapshot(filter))) as never

/**
 * @since 0.1.0
 * @category accessors
 */
export const reset: Effect.Effect<void, never, Stats> = Effect.flatMap(Stats, (stats) => stats.reset)

const ms = (n: number): string => n.toFixed(1)

// Under one call a second, the significant digits the figure has: `toFixed(2)` read 0.00333 as 0.00. Under one
// a million seconds (12 days), `String` writes an exponent (9.65e-7): those read per day, to 3 significant digits.
const rate = (perSecond: number): string => {
  if (perSecond === 0 || perSecond >= 1) return `${perSecond.toFixed(2)} /s`
  if (!(perSecond > 0 && perSecond < 1e-6)) return `${perSecond} /s`
  const perDay = Number((perSecond * 86_400).toPrecision(3))
  return perDay >= 1e-6 ? `${perDay} /day` : "under 0.000001 /day"
}

/**
 * A fixed-width table of the figures, for terminals. Throughput under one call in a million seconds
 * (12 days) reads per day (`0.0834 /day`), never in exponent form.
 *
 * @since 0.1.0
 * @category formatting
 */
export const format = (stats: ExecutionStats, title = "Execution stats"): string => {
  const reasons = Object.entries(stats.failuresByReason)
    .map(([r, n]) => `${r} ${n}`)
    .join(", ")
  const l = stats.latency
  const rows: Array<readonly [string, string]> = [
    ["total", String(stats.total)],
    ["successes", String(stats.successes)],
    ["failures", reasons.length > 0 ? `${stats.failures} (${reasons})` : String(stats.failures)],
    ["success rate", `${percent(stats.successRate)} %`],
    ["stale answers", String(stats.staleAnswers)],
    ["latency avg / min / max", `${ms(l.avg)} / ${ms(l.min)} / ${ms(l.max)} ms`],
    ["latency p50 / p95 / p99", `${ms(l.p50)} / ${ms(l.p95)} / ${ms(l.p99)} ms`],
    ["service time avg / p95", `${ms(stats.serviceTime.avg)} / ${ms(stats.serviceTime.p95)} ms`],
    ["queue wait avg / p95", `${ms(stats.queueWait.avg)} / ${ms(stats.queueWait.p95)} ms`],
    ["concurrency peak", String(stats.concurrencyPeak)],
    ["timeouts", String(stats.timeouts)],
    ["retries", String(stats.retries)],
    ["fallbacks", String(stats.fallbacks)],
    ["throughput", rate(stats.throughput)]
  ]
  if (stats.ignoredDurations !== undefined && stats.ignoredDurations > 0) {
    rows.push(["ignored durations", `${stats.ignoredDurations} (NaN or Infinity)`])
  }
  if (stats.series?.domain === otherSeries) {
    const of = stats.series.provider
    rows.push([
      "series",
      of === otherSeries
        ? `${otherSeries}: the pairs past Stats.maxSeries`
        : `${of ?? "every provider"} / ${otherSeries}: ${of === undefined ? "the" : "its"} pairs past Stats.maxSeries`
    ])
  }
  const width = Math.max(...rows.map(([k]) => k.length))
  const line = "─".repeat(width + 24)
  return [title, line, ...rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`), line].join("\n")
}
