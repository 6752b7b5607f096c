/**
 * The HTTP agents' metrics (`orchestra_agent_tasks_total` by status,
 * `orchestra_agent_duration_ms`) as plain counters and a histogram per agent series name,
 * registered once per metric registry (`Metric.registerUnsafe` hooks, as the rate limits'
 * are): `updateUnsafe` on an attributed metric built the metric and copied the caller's
 * context on every record. A status's series enters the registry at its first task, the
 * duration's at the first task that went out, as before.
 *
 * @internal
 */
import { Context, Metric } from "effect"
import type { Status, TaskRecord } from "../HttpAgent.js"
import * as Metrics from "../Metrics.js"
import * as Counters from "../stats/counters.js"
import { Histogram } from "../stats/series.js"

const noUpdate = { update: () => {}, modify: () => {} }

class AgentSeries implements Counters.Shared {
  readonly tasks: Record<Status, number> = { success: 0, error: 0, timeout: 0, service_unavailable: 0, skipped: 0 }
  readonly latency = new Histogram()
  timed = false
  users = 0
  readonly series: Array<{ readonly remove: () => void }> = []
}

/**
 * A service's agent metrics by series name (bounded by the service: `seriesName`). Shared with
 * every service on the same registry and metric attributes, so a series adds up across them;
 * `release` (the service's scope closing) lets go of them.
 *
 * @internal
 */
export interface AgentMetrics {
  /** Counts a record under `series`: its status, and its duration for the tasks that went out. */
  readonly count: (record: TaskRecord, series: string) => void
  /** The tasks counted under `series` with `status`. */
  readonly tasks: (series: string, status: Status) => number
  readonly release: () => void
}

/** @internal */
export const make = (caller: Context.Context<never>): AgentMetrics => {
  const context = Counters.registrationContext(caller)
  const registry = Context.get(context, Metric.MetricRegistry)
  const attributes = Context.get(context, Metric.CurrentMetricAttributes)
  const attributesId = JSON.stringify(Object.entries(attributes).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
  const idOf = (series: string) => `agent\u0000${attributesId}\u0000${series}`
  const bySeries = new Map<string, AgentSeries>()
  let released = false
  const seriesOf = (name: string): AgentSeries => {
    let found = bySeries.get(name)
    if (found === undefined) {
      found = released ? new AgentSeries() : Counters.acquire(registry, idOf(name), () => new AgentSeries())
      bySeries.set(name, found)
    }
    return found
  }
  const count = (record: TaskRecord, series: string): void => {
    const s = seriesOf(series)
    const status = record.status
    if (s.tasks[status]++ === 0 && !released) {
      s.series.push(
        Metric.registerUnsafe(Metric.withAttributes(Metrics.agentTasks, { agent: series, status }), context, {
          get: () => ({ count: s.tasks[status], incremental: true }),
          ...noUpdate
        })
      )
    }
    if (status === "skipped") return
    s.latency.record(record.durationMs)
    if (!s.timed && !released) {
      s.timed = true
      s.series.push(
        Metric.registerUnsafe(Metric.withAttributes(Metrics.agentLatency, { agent: series }), context, {
          get: () => s.latency.state(),
          ...noUpdate
        })
      )
    }
  }
  const release = () => {
    if (released) return
    released = true
    for (const [name, s] of bySeries) Counters.release(registry, idOf(name), s)
    bySeries.clear()
  }
  return { count, tasks: (series, status) => bySeries.get(series)?.tasks[status] ?? 0, release }
}
