/**
 * `orchestra_gateway_budget_remaining`: what is left of each budget a key was charged to,
 * as this process last saw it, one series per key, scope, unit (and model for the `model`
 * scope), registered in the metric registry of the layer that built the store and removed
 * with it.
 *
 * @internal
 */
import { type Context, Metric } from "effect"
import * as Metrics from "../../Metrics.js"
import { type Counter, type Level, shown } from "./ledger.js"

/**
 * @internal
 */
export interface Gauges {
  readonly set: (keyId: string, counter: Counter, level: Level) => void
  readonly remove: () => void
}

/**
 * @internal
 */
export const make = (context: Context.Context<never>): Gauges => {
  const series = new Map<string, { value: number }>()
  const registrations: Array<Metric.Registration> = []

  const set = (keyId: string, counter: Counter, level: Level) => {
    const name = `${keyId}\u0000${counter.scope}\u0000${counter.unit}\u0000${counter.model ?? ""}`
    let found = series.get(name)
    if (found === undefined) {
      const created = { value: 0 }
      // Not `unit`: Prometheus exporters drop an attribute of that name.
      const attributes: Record<string, string> = { key: keyId, scope: counter.scope, budget_unit: counter.unit }
      if (counter.model !== undefined) attributes.model = counter.model
      registrations.push(
        Metric.registerUnsafe(Metric.withAttributes(Metrics.gatewayBudgetRemaining, attributes), context, {
          get: () => ({ value: created.value }),
          update: () => {},
          modify: () => {}
        })
      )
      series.set(name, created)
      found = created
    }
    found.value = shown(counter.unit, Math.max(0, counter.limit - level.spent - level.held))
  }

  const remove = () => {
    for (const registration of registrations) registration.remove()
    registrations.length = 0
    series.clear()
  }

  return { set, remove }
}
