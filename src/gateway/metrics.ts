/**
 * The gateway's own metrics (`Metrics.gateway*`) as plain counters and histograms updated
 * synchronously on the request path, registered in the `Metric.MetricRegistry` of the layer
 * that built the gateway (as the call series of `stats/series.ts` are), and removed with it.
 * Series appear on first use: a (route, status) pair at its first answer, a reason at its
 * first error. Two gateways of one registry (two `Gateway` layers of one application, or one
 * rebuilt while the other drains) export one series each, their figures added up as a
 * Prometheus client's counter shared by two servers of one process would be: the process
 * exports no label telling them apart, and a series registered apart would hide the other's
 * (then take it away when removed). A closed gateway's counts stay in the series while the
 * other lives, so a counter never goes back; the in-flight gauge is now's.
 *
 * @internal
 */
import type { Context, Metric } from "effect"
import * as Metrics from "../Metrics.js"
import { registrationContext } from "../stats/counters.js"
import { type Combine, Histogram, join, mergeStates, sumCounts, sumValues, tokenCount } from "../stats/series.js"

/**
 * The `route` attribute of the gateway's series.
 *
 * @internal
 */
export type Route = "chat" | "chat_stream" | "embeddings" | "models" | "health" | "metrics" | "other"

interface RouteSeries {
  readonly latency: Histogram
  readonly overhead: Histogram
  readonly statuses: Map<number, { count: number }>
}

/**
 * @internal
 */
export class GatewayMetrics {
  inFlight = 0
  inputTokens = 0
  outputTokens = 0
  readonly timeToFirstToken = new Histogram()
  private readonly routes = new Map<Route, RouteSeries>()
  private readonly reasons = new Map<string, { count: number }>()
  private readonly registrations: Array<{ readonly remove: () => void }> = []
  private removed = false

  // The registry and metric attributes only: a series outlives its first gateway while another
  // reads it, and would keep that gateway's whole context (router, executor, server) alive.
  private readonly context: Context.Context<never>

  constructor(context: Context.Context<never>) {
    this.context = registrationContext(context)
    this.register(Metrics.gatewayInFlight, {}, () => ({ value: this.inFlight }), sumValues)
    this.register(Metrics.gatewayTimeToFirstToken, {}, () => this.timeToFirstToken.state(), mergeStates)
    this.counter(Metrics.gatewayTokens, { type: "input" }, () => this.inputTokens)
    this.counter(Metrics.gatewayTokens, { type: "output" }, () => this.outputTokens)
  }

  private register<I, S>(
    metric: Metric.Metric<I, S>,
    attributes: Record<string, string>,
    get: () => S,
    combine: Combine<S>
  ): void {
    // Removed with the gateway: a request answered after that (refused by the drain) leaves no series behind.
    if (this.removed) return
    this.registrations.push(join(metric, attributes, this.context, get, combine))
  }

  private counter(metric: Metric.Counter<number>, attributes: Record<string, string>, get: () => number): void {
    this.register(metric, attributes, () => ({ count: get(), incremental: true }), sumCounts)
  }

  private route(route: Route): RouteSeries {
    let series = this.routes.get(route)
    if (series === undefined) {
      const created: RouteSeries = { latency: new Histogram(), overhead: new Histogram(), statuses: new Map() }
      this.register(Metrics.gatewayLatency, { route }, () => created.latency.state(), mergeStates)
      this.register(Metrics.gatewayOverhead, { route }, () => created.overhead.state(), mergeStates)
      this.routes.set(route, created)
      series = created
    }
    return series
  }

  /** One answered request: its status, its duration and the part of it spent in the gateway. */
  answered(route: Route, status: number, durationMs: number, overheadMs: number | undefined): void {
    const series = this.route(route)
    this.count(series, route, status)
    series.latency.record(durationMs)
    if (overheadMs !== undefined) series.overhead.record(overheadMs)
  }

  /**
   * A request Node's server refused before any route saw it (`gateway/clientErrors`): counted
   * under route `other` and its reason, without a duration (its start is Node's to know).
   */
  refused(status: number, reason: string): void {
    this.count(this.route("other"), "other", status)
    this.failed(reason)
  }

  private count(series: RouteSeries, route: Route, status: number): void {
    let counter = series.statuses.get(status)
    if (counter === undefined) {
      const created = { count: 0 }
      this.counter(Metrics.gatewayRequests, { route, status: String(status) }, () => created.count)
      series.statuses.set(status, created)
      counter = created
    }
    counter.count++
  }

  /** A stream's gateway share, known at its first byte (its duration comes at its end). */
  streamOverhead(overheadMs: number): void {
    this.route("chat_stream").overhead.record(overheadMs)
  }

  failed(reason: string): void {
    let counter = this.reasons.get(reason)
    if (counter === undefined) {
      const created = { count: 0 }
      this.counter(Metrics.gatewayErrors, { reason }, () => created.count)
      this.reasons.set(reason, created)
      counter = created
    }
    counter.count++
  }

  tokens(input: number, output: number): void {
    this.inputTokens += tokenCount(input)
    this.outputTokens += tokenCount(output)
  }

  remove(): void {
    this.removed = true
    for (const registration of this.registrations) registration.remove()
    this.registrations.length = 0
  }
}
