/**
 * The per-key metrics of the rate limits (`orchestra_rate_limit_acquisitions_total` by
 * outcome, `orchestra_rate_limit_wait_ms`): plain counters and a histogram per limit key,
 * registered once per metric registry, and a limiter's view of them by key: every listed key,
 * and the first {@link maxUnlistedKeys} keys under `default`, the others counted together.
 *
 * @internal
 */
import { Context, Metric } from "effect"
import * as Metrics from "../Metrics.js"
import * as Counters from "../stats/counters.js"
import { isOwnSeriesLabel } from "../stats/labels.js"
import { Histogram } from "../stats/series.js"

// A limit's metrics as plain counters, registered once per metric registry and limit key
// (`Metric.registerUnsafe` hooks, as the call metrics are): `Metric.update` on an attributed
// metric copies the caller's whole context per update (~5 KB a request in the gateway).
// Shared by every limiter on one registry with the same metric attributes, so a key's series
// adds up across them as the registry's own series did.
export class KeyMetrics implements Counters.Shared {
  immediate = 0
  delayed = 0
  rejected = 0
  readonly wait = new Histogram()
  users = 0
  readonly series: Array<{ readonly remove: () => void }> = []
}

const noUpdate = { update: () => {}, modify: () => {} }

const register = (context: Context.Context<never>, key: string): KeyMetrics => {
  const made = new KeyMetrics()
  const counter = (outcome: string, get: () => number) =>
    made.series.push(
      Metric.registerUnsafe(Metric.withAttributes(Metrics.rateLimitAcquisitions, { limit: key, outcome }), context, {
        get: () => ({ count: get(), incremental: true }),
        ...noUpdate
      })
    )
  counter("immediate", () => made.immediate)
  counter("delayed", () => made.delayed)
  counter("rejected", () => made.rejected)
  made.series.push(
    Metric.registerUnsafe(Metric.withAttributes(Metrics.rateLimitWait, { limit: key }), context, {
      get: () => made.wait.state(),
      ...noUpdate
    })
  )
  return made
}

/**
 * How many keys under `default` (providers not listed, users, virtual keys: as many as the
 * callers) a limiter gives series of their own; the ones after count in {@link otherKeys}.
 *
 * @internal
 */
export const maxUnlistedKeys = 32

/**
 * The `limit` of the series that keys under `default` past {@link maxUnlistedKeys} count in.
 *
 * @internal
 */
export const otherKeys = Metrics.otherSeries

/**
 * A limiter's metrics by key, each key's looked up once. Registers in `caller`'s metric
 * registry under its metric attributes. A key `listed` (in `providers`) has series of its own;
 * of the others, the first `maxUnlistedKeys` do, and the rest count in one `limit="(other)"`,
 * so that limiting per user neither grows the registry (and `/metrics`) with the users nor
 * holds an entry here for each.
 *
 * @internal
 */
export const make = (
  caller: Context.Context<never>,
  listed: (key: string) => boolean
): { readonly metricsOf: (key: string) => KeyMetrics; readonly release: () => void } => {
  // Only what registering a series reads: a limiter built inside a request (the gateway's key
  // store does) must not keep that request's context alive.
  const context = Counters.registrationContext(caller)
  const registry = Context.get(context, Metric.MetricRegistry)
  const attributes = Context.get(context, Metric.CurrentMetricAttributes)
  const attributesId = JSON.stringify(Object.entries(attributes).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
  const idOf = (key: string) => `rate-limit\u0000${attributesId}\u0000${key}`
  const metricsByKey = new Map<string, KeyMetrics>()
  // Once released, a key first used (a call still running when the layer closed) counts
  // without entering the registry: nothing would remove its series, and exporters would show it for good.
  let released = false
  let unlisted = 0
  const metricsOf = (key: string): KeyMetrics => {
    let metrics = metricsByKey.get(key)
    if (metrics === undefined) {
      if (!listed(key) && key !== otherKeys) {
        if (unlisted >= maxUnlistedKeys || !isOwnSeriesLabel(key)) return metricsOf(otherKeys)
        unlisted++
      }
      metrics = released ? new KeyMetrics() : Counters.acquire(registry, idOf(key), () => register(context, key))
      metricsByKey.set(key, metrics)
    }
    return metrics
  }
  // When the limiter's layer closes: its keys' series leave the registry unless another
  // limiter on it still uses them (so a new manager's figures do not add onto a closed one's).
  const release = () => {
    if (released) return
    released = true
    for (const [key, metrics] of metricsByKey) Counters.release(registry, idOf(key), metrics)
    metricsByKey.clear()
  }
  return { metricsOf, release }
}
