/**
 * The call metrics of one (provider, domain) pair as plain counters, updated synchronously
 * on the call path (no Effect, no attribute hashing per update), registered in a
 * `Metric.MetricRegistry` through `Metric.registerUnsafe` hooks so exporters read them, and
 * read back by `Stats` for its windows. The series of one pair in two `Stats` of one registry
 * (two orchestras, an executor beside an orchestra) are one registered series whose figures
 * add up (a closed one's counts stay in it, so counters never go back): the registry keeps one
 * entry per metric and attributes, and the last registered would hide the other's figures (its
 * counters seen going back), then take them all away with it. The series registered on first
 * use (a failure reason, ignored durations) are registered by every holder of the pair at once, so
 * they stay with the pair's other series when the holder that first counted them closes.
 *
 * @internal
 */
import { Context, Metric } from "effect"
import * as Metrics from "../Metrics.js"
import { acquire, release, type Shared } from "./counters.js"

const START = 0.05
const LOG_FACTOR = Math.log(1.1)
const BOUNDS = Metrics.latencyBoundaries
const SIZE = BOUNDS.length

/**
 * A histogram over `Metrics.latencyBoundaries`; bucket i counts values in (bound[i-1], bound[i]].
 * The last bound is `Infinity`, so the last bucket holds every value past the last finite one.
 * A value that is no finite number (a clock that read `NaN` or `Infinity`) is not recorded, only
 * counted in `ignored` (which snapshots and `orchestra_ignored_durations_total` show): one made the
 * sum, the average and the max `Infinity` (or `NaN`) for good. A negative one (a clock set back)
 * records 0.
 */
export class Histogram {
  readonly buckets = new Float64Array(SIZE)
  count = 0
  sum = 0
  min = Number.POSITIVE_INFINITY
  max = 0
  /** Min and max since the window began (cumulative ones stay for exporters). */
  windowMin = Number.POSITIVE_INFINITY
  windowMax = 0
  /** Values refused for not being finite numbers. */
  ignored = 0

  /** `firstIgnored`: called once, on the first value refused (to register its exported counter then). */
  constructor(private readonly firstIgnored?: () => void) {}

  record(value: number): void {
    if (!Number.isFinite(value)) {
      if (this.ignored++ === 0) this.firstIgnored?.()
      return
    }
    const v = Math.max(value, 0)
    let i = v <= START ? 0 : Math.ceil(Math.log(v / START) / LOG_FACTOR - 1e-9)
    if (i < 0) i = 0
    if (i < SIZE && v > BOUNDS[i]!) i++
    if (i > 0 && i <= SIZE && v <= BOUNDS[i - 1]!) i--
    this.buckets[Math.min(i, SIZE - 1)]! += 1
    this.count++
    this.sum += v
    if (v < this.min) this.min = v
    if (v > this.max) this.max = v
    if (v < this.windowMin) this.windowMin = v
    if (v > this.windowMax) this.windowMax = v
  }

  state(): Metric.HistogramState {
    const buckets: Array<[number, number]> = new Array(SIZE)
    let cumulative = 0
    for (let i = 0; i < SIZE; i++) {
      cumulative += this.buckets[i]!
      buckets[i] = [BOUNDS[i]!, cumulative]
    }
    return {
      buckets,
      count: this.count,
      sum: this.sum,
      min: this.count === 0 ? 0 : this.min,
      max: this.max
    }
  }
}

/**
 * What one registered series reads when several holders (two `Series`, two gateways) hold it.
 *
 * @internal
 */
export type Combine<S> = (states: ReadonlyArray<S>) => S

/** @internal */
export const sumCounts: Combine<Metric.CounterState<number>> = (states) => {
  let count = 0
  for (const state of states) count += state.count
  return { count, incremental: true }
}

/** @internal */
export const sumValues: Combine<Metric.GaugeState<number>> = (states) => {
  let value = 0
  for (const state of states) value += state.value
  return { value }
}

// Each peak was reached at its own time: the joint peak is at least the largest, not their sum.
const maxValues: Combine<Metric.GaugeState<number>> = (states) => {
  let value = 0
  for (const state of states) if (state.value > value) value = state.value
  return { value }
}

/** @internal */
export const mergeStates: Combine<Metric.HistogramState> = (states) => {
  const first = states[0]!
  const buckets = first.buckets.map(([bound, n]) => [bound, n] as [number, number])
  let count = first.count
  let sum = first.sum
  let min = first.count === 0 ? Number.POSITIVE_INFINITY : first.min
  let max = first.max
  for (let k = 1; k < states.length; k++) {
    const state = states[k]!
    if (state.count === 0) continue
    for (let i = 0; i < buckets.length; i++) buckets[i]![1] += state.buckets[i]![1]
    count += state.count
    sum += state.sum
    if (state.min < min) min = state.min
    if (state.max > max) max = state.max
  }
  return { buckets, count, sum, min: count === 0 ? 0 : min, max }
}

interface Joint<S> extends Shared {
  readonly parts: Array<() => S>
  /** What the parts removed while others stayed had counted (counters and histograms only). */
  retired: S | undefined
}

// Counters and histograms keep a removed part's figures while the series lives, so the
// exported counts never go back; a gauge's value is now's only.
const cumulative: ReadonlySet<unknown> = new Set<unknown>([sumCounts, mergeStates])

/**
 * Registers `get` as one part of the series of `metric` with `attributes` in the context's
 * registry: one registration per series, reading `combine` of its parts (and, for counters and
 * histograms, of the parts removed before). Removing the last part removes the series.
 *
 * @internal
 */
export const join = <I, S>(
  metric: Metric.Metric<I, S>,
  attributes: Readonly<Record<string, string>>,
  context: Context.Context<never>,
  get: () => S,
  combine: Combine<S>
): { readonly remove: () => void } => {
  const registry = Context.get(context, Metric.MetricRegistry)
  const extra = Context.get(context, Metric.CurrentMetricAttributes)
  const id = JSON.stringify([metric.id, Object.entries({ ...extra, ...attributes }).sort()])
  const joint = acquire<Joint<S>>(registry, id, () => {
    const made: Joint<S> = { users: 0, series: [], parts: [], retired: undefined }
    const read = (): S => {
      if (made.parts.length === 1 && made.retired === undefined) return made.parts[0]!()
      const states = made.parts.map((part) => part())
      if (made.retired !== undefined) states.push(made.retired)
      return combine(states)
    }
    made.series.push(
      Metric.registerUnsafe(Metric.withAttributes(metric, attributes), context, {
        get: read,
        update: () => {},
        modify: () => {}
      })
    )
    return made
  })
  joint.parts.push(get)
  let removed = false
  return {
    remove: () => {
      if (removed) return
      removed = true
      // The last part stays: a reader that kept the registration (the facade's final metrics) reads its figures.
      if (joint.parts.length > 1) {
        joint.parts.splice(joint.parts.indexOf(get), 1)
        if (cumulative.has(combine)) {
          joint.retired = joint.retired === undefined ? get() : combine([joint.retired, get()])
        }
      }
      release(registry, id, joint)
    }
  }
}

// One exported histogram of two recorded apart (calls' and streams' service times).
const mergedState = (a: Histogram, b: Histogram): Metric.HistogramState =>
  b.count === 0 ? a.state() : mergeStates([a.state(), b.state()])

/** A histogram's figures at a window start. */
export interface HistogramBase {
  readonly buckets: Float64Array
  readonly count: number
  readonly sum: number
}

/** Counters of a window start, subtracted from the cumulative ones. */
export interface Baseline {
  readonly requests: number
  readonly successes: number
  readonly reasons: ReadonlyMap<string, number>
  readonly staleAnswers: number
  readonly timeouts: number
  readonly retries: number
  readonly fallbacks: number
  readonly hedgesStarted: number
  readonly hedgesWon: number
  readonly hedgesLost: number
  readonly inputTokens: number
  readonly outputTokens: number
  readonly ignoredDurations: number
  readonly latency: HistogramBase
  readonly service: HistogramBase
  readonly streamService: HistogramBase
  readonly queueWait: HistogramBase
  readonly timeToFirstToken: HistogramBase
}

/** In-flight and queued attempts with their peak; shared by several series at one aggregation level. */
export class Gauge {
  inFlight = 0
  queued = 0
  peak = 0
  enter(): void {
    this.inFlight++
    if (this.inFlight > this.peak) this.peak = this.inFlight
  }
  exit(): void {
    this.inFlight--
  }
}

/**
 * A token count as the counters take it: a provider's count that is negative, NaN or
 * infinite (a proxy's `prompt_tokens: -1`, a provider's own estimate gone wrong) adds
 * nothing, so a `_total` counter never goes down nor turns `NaN` for good.
 *
 * @internal
 */
export const tokenCount = (n: number): number => (n > 0 && Number.isFinite(n) ? n : 0)

const zeroBase = (): HistogramBase => ({ buckets: new Float64Array(SIZE), count: 0, sum: 0 })

const baseOf = (h: Histogram): HistogramBase => ({ buckets: h.buckets.slice(), count: h.count, sum: h.sum })

/** A series registered on first use: `r:` and a failure reason, or `i:` and the histogram whose durations were ignored. */
type LazyKey = `r:${string}` | `i:${string}`

const ignoredKey = (metric: string): LazyKey => `i:${metric}`

// The `Series` of each pair in each registry (two `Stats` of one registry share a pair's series).
const membersByRegistry = new WeakMap<object, Map<string, Set<Series>>>()

/** The series of one (provider, domain) pair. */
export class Series {
  requests = 0
  successes = 0
  readonly reasons = new Map<string, number>()
  /** Calls of this pair answered from an expired cache entry after their steps failed. */
  staleAnswers = 0
  timeouts = 0
  retries = 0
  fallbacks = 0
  hedgesStarted = 0
  hedgesWon = 0
  hedgesLost = 0
  inputTokens = 0
  outputTokens = 0
  readonly latency = new Histogram(() => this.lazily(ignoredKey(Metrics.latency.id)))
  /** The service time of calls (generate, embed): what `after: "p95"` reads. */
  readonly service = new Histogram(() => this.lazily(ignoredKey(Metrics.serviceTime.id)))
  /** The service time of streams, from their start to their end: seconds where a call takes milliseconds. */
  readonly streamService = new Histogram(() => this.lazily(ignoredKey(Metrics.serviceTime.id)))
  readonly queueWait = new Histogram(() => this.lazily(ignoredKey(Metrics.queueWait.id)))
  readonly timeToFirstToken = new Histogram(() => this.lazily(ignoredKey(Metrics.timeToFirstToken.id)))
  baseline: Baseline
  private readonly registrations: Array<{ readonly remove: () => void }> = []
  /** The series registered on first use (a failure reason, a histogram's ignored durations), by {@link LazyKey}. */
  private readonly lazy = new Set<LazyKey>()
  /** The series of this pair in this registry, this one included: they register the lazy series together. */
  private members: Set<Series> | undefined
  private removed = false
  private readonly attributes: Readonly<Record<string, string>>

  constructor(
    readonly provider: string,
    readonly domain: string | undefined,
    /** This pair's gauge, then its provider's, its domain's and the global one. */
    readonly gauges: ReadonlyArray<Gauge>,
    private readonly context: Context.Context<never> | undefined
  ) {
    this.attributes = { provider, domain: domain ?? Metrics.noDomain }
    this.baseline = {
      requests: 0,
      successes: 0,
      reasons: new Map(),
      staleAnswers: 0,
      timeouts: 0,
      retries: 0,
      fallbacks: 0,
      hedgesStarted: 0,
      hedgesWon: 0,
      hedgesLost: 0,
      inputTokens: 0,
      outputTokens: 0,
      ignoredDurations: 0,
      latency: zeroBase(),
      service: zeroBase(),
      streamService: zeroBase(),
      queueWait: zeroBase(),
      timeToFirstToken: zeroBase()
    }
    if (context === undefined) return
    const counter = (metric: Metric.Counter<number>, get: () => number, extra?: Record<string, string>) =>
      this.register(metric, () => ({ count: get(), incremental: true }), sumCounts, extra)
    const own = gauges[0]!
    counter(Metrics.requests, () => this.requests)
    counter(Metrics.successes, () => this.successes)
    counter(Metrics.staleAnswers, () => this.staleAnswers)
    counter(Metrics.timeouts, () => this.timeouts)
    counter(Metrics.retries, () => this.retries)
    counter(Metrics.fallbacks, () => this.fallbacks)
    counter(Metrics.hedges, () => this.hedgesWon, { outcome: "won" })
    counter(Metrics.hedges, () => this.hedgesLost, { outcome: "lost" })
    counter(Metrics.inputTokens, () => this.inputTokens)
    counter(Metrics.outputTokens, () => this.outputTokens)
    this.register(Metrics.latency, () => this.latency.state(), mergeStates)
    this.register(Metrics.serviceTime, () => mergedState(this.service, this.streamService), mergeStates)
    this.register(Metrics.queueWait, () => this.queueWait.state(), mergeStates)
    this.register(Metrics.timeToFirstToken, () => this.timeToFirstToken.state(), mergeStates)
    this.register(Metrics.inFlight, () => ({ value: own.inFlight }), sumValues)
    this.register(Metrics.queued, () => ({ value: own.queued }), sumValues)
    this.register(Metrics.inFlightPeak, () => ({ value: own.peak }), maxValues)
    // A lazy series another holder of the pair registered gets this one's part too: else it would be that
    // holder's alone, and leave the registry (its counts with it) when that holder closed.
    const registry = Context.get(context, Metric.MetricRegistry)
    const extra = Context.get(context, Metric.CurrentMetricAttributes)
    const pairId = JSON.stringify(Object.entries({ ...extra, ...this.attributes }).sort())
    let pairs = membersByRegistry.get(registry)
    if (pairs === undefined) {
      pairs = new Map()
      membersByRegistry.set(registry, pairs)
    }
    let members = pairs.get(pairId)
    if (members === undefined) {
      members = new Set()
      pairs.set(pairId, members)
    }
    for (const member of members) for (const key of member.lazy) this.registerLazy(key)
    members.add(this)
    this.members = members
    const pairsOfRegistry = pairs
    this.leave = () => {
      members.delete(this)
      if (members.size === 0 && pairsOfRegistry.get(pairId) === members) pairsOfRegistry.delete(pairId)
    }
  }

  private register<I, S>(
    metric: Metric.Metric<I, S>,
    get: () => S,
    combine: Combine<S>,
    extra?: Record<string, string>
  ): void {
    // Removed (its owner closed): a failure of a new reason after that registers nothing to leave behind.
    if (this.removed) return
    const attributes = extra === undefined ? this.attributes : { ...this.attributes, ...extra }
    this.registrations.push(join(metric, attributes, this.context!, get, combine))
  }

  /** Takes this series out of its pair's members (set when it registers). */
  private leave: () => void = () => {}

  // Registered with the first failure of a reason, or the first duration a histogram refuses, by every holder
  // of the pair: pairs that never fail so, or whose providers report no bogus duration, add no series.
  private lazily(key: LazyKey): void {
    if (this.lazy.has(key) || this.removed) return
    if (this.members === undefined) {
      this.registerLazy(key)
      return
    }
    for (const member of this.members) member.registerLazy(key)
  }

  private registerLazy(key: LazyKey): void {
    if (this.lazy.has(key) || this.removed) return
    this.lazy.add(key)
    if (this.context === undefined) return
    const name = key.slice(2)
    if (key.startsWith("r:")) {
      this.register(Metrics.failures, () => ({ count: this.reasons.get(name) ?? 0, incremental: true }), sumCounts, {
        reason: name
      })
    } else {
      this.register(Metrics.ignoredDurations, () => ({ count: this.ignoredOf(name), incremental: true }), sumCounts, {
        metric: name
      })
    }
  }

  private ignoredOf(metric: string): number {
    switch (metric) {
      case Metrics.latency.id:
        return this.latency.ignored
      case Metrics.serviceTime.id:
        return this.service.ignored + this.streamService.ignored
      case Metrics.queueWait.id:
        return this.queueWait.ignored
      default:
        return this.timeToFirstToken.ignored
    }
  }

  /** Durations the histograms refused (see {@link Histogram}). */
  ignoredDurations(): number {
    return (
      this.latency.ignored +
      this.service.ignored +
      this.streamService.ignored +
      this.queueWait.ignored +
      this.timeToFirstToken.ignored
    )
  }

  /** A call's usage as its provider reported it; see {@link tokenCount}. */
  addUsage(usage: { readonly inputTokens: number; readonly outputTokens: number }): void {
    this.inputTokens += tokenCount(usage.inputTokens)
    this.outputTokens += tokenCount(usage.outputTokens)
  }

  fail(reason: string): void {
    const previous = this.reasons.get(reason)
    if (previous === undefined) {
      this.reasons.set(reason, 1)
      this.lazily(`r:${reason}`)
    } else {
      this.reasons.set(reason, previous + 1)
    }
  }

  failures(): number {
    let n = 0
    for (const count of this.reasons.values()) n += count
    return n
  }

  /** Starts a new window: later reads subtract today's figures. */
  resetWindow(): void {
    this.baseline = {
      requests: this.requests,
      successes: this.successes,
      reasons: new Map(this.reasons),
      staleAnswers: this.staleAnswers,
      timeouts: this.timeouts,
      retries: this.retries,
      fallbacks: this.fallbacks,
      hedgesStarted: this.hedgesStarted,
      hedgesWon: this.hedgesWon,
      hedgesLost: this.hedgesLost,
      inputTokens: this.inputTokens,
      outputTokens: this.outputTokens,
      ignoredDurations: this.ignoredDurations(),
      latency: baseOf(this.latency),
      service: baseOf(this.service),
      streamService: baseOf(this.streamService),
      queueWait: baseOf(this.queueWait),
      timeToFirstToken: baseOf(this.timeToFirstToken)
    }
    for (const h of [this.latency, this.service, this.streamService, this.queueWait, this.timeToFirstToken]) {
      h.windowMin = Number.POSITIVE_INFINITY
      h.windowMax = 0
    }
  }

  /** Removes this series from the registry (its owner closed). */
  remove(): void {
    this.removed = true
    this.leave()
    for (const registration of this.registrations) registration.remove()
    this.registrations.length = 0
  }
}

/** Bucket counts of a window: the cumulative ones minus the baseline's, summed over series. */
export class WindowHistogram {
  readonly buckets = new Float64Array(SIZE)
  count = 0
  sum = 0
  min = Number.POSITIVE_INFINITY
  max = 0

  add(h: Histogram, base: HistogramBase): void {
    const n = h.count - base.count
    if (n <= 0) return
    for (let i = 0; i < SIZE; i++) this.buckets[i]! += h.buckets[i]! - base.buckets[i]!
    this.count += n
    this.sum += h.sum - base.sum
    if (h.windowMin < this.min) this.min = h.windowMin
    if (h.windowMax > this.max) this.max = h.windowMax
  }

  /**
   * The nearest-rank quantile: the window's min or max for the first or last call, else the
   * geometric middle of the bucket holding that call (the last bucket: its lower bound), clamped
   * to the window's min and max. Within ~4.9% of the call
   * wherever it is in its 10% bucket; read by linear interpolation, a bucket's one call was read
   * at the bucket's top (two calls' median 10% off).
   */
  quantile(q: number): number {
    if (this.count === 0) return 0
    const rank = q * this.count
    // 1e-9: 0.95 * 20 is 19.000000000000004, which named the 20th call.
    const nth = Math.ceil(rank - 1e-9)
    // The first and the last call are known exactly.
    if (nth <= 1) return this.min
    if (nth >= this.count) return this.max
    let cumulative = 0
    for (let i = 0; i < SIZE; i++) {
      const inBucket = this.buckets[i]!
      if (inBucket > 0 && cumulative + inBucket >= nth) {
        // The last bucket has no upper bound: reading up to the window's max would make one very
        // slow call everyone's percentile, so (as Prometheus does) read its lower bound.
        const value =
          i === SIZE - 1 ? BOUNDS[i - 1]! : i === 0 ? BOUNDS[0]! / 2 : Math.sqrt(BOUNDS[i - 1]! * BOUNDS[i]!)
        return Math.min(this.max, Math.max(this.min, value))
      }
      cumulative += inBucket
    }
    return this.max
  }
}
