/**
 * `orchestra_gateway_budget_remaining`: what is left of each budget a key was charged to,
 * as this process last saw it in the budget's current period (the whole limit once a new
 * period has begun), one series per key, scope, unit (and model for the `model` scope),
 * registered in the metric registry of the layer that built the store and removed with it.
 *
 * @internal
 */
import { type Context, Metric } from "effect"
import * as Metrics from "../../Metrics.js"
import { type Counter, type Level, shown, windowEnd } from "./ledger.js"

/**
 * @internal
 */
export interface Gauges {
  readonly set: (keyId: string, counter: Counter, level: Level) => void
  /** A level read (a lease may have ended since): to the series of its budget, if any; none is made. */
  readonly refresh: (counter: Counter, level: Level) => void
  readonly remove: () => void
}

interface Series {
  value: number
  full: number
  /** The period window `value` was read in, and when it ends (none without a period). */
  window: number | undefined
  endsAt: number | undefined
}

/**
 * @internal
 */
export const make = (context: Context.Context<never>, now: () => number): Gauges => {
  const series = new Map<string, Series>()
  // The series of every key charged to one budget: a team's, shared by its keys, shows one level.
  const byBudget = new Map<string, Array<Series>>()
  const registrations: Array<Metric.Registration> = []

  let removed = false

  const budgetOf = (counter: Counter) =>
    `${counter.scope}\u0000${counter.scopeId}\u0000${counter.unit}\u0000${counter.model ?? ""}`

  const set = (keyId: string, counter: Counter, level: Level) => {
    // Removed with the store: a settle that ends after that leaves no series behind.
    if (removed) return
    const budget = budgetOf(counter)
    const name = `${keyId}\u0000${counter.scope}\u0000${counter.unit}\u0000${counter.model ?? ""}`
    if (!series.has(name)) {
      const created: Series = { value: 0, full: 0, window: undefined, endsAt: undefined }
      // Not `unit`: Prometheus exporters drop an attribute of that name.
      const attributes: Record<string, string> = { key: keyId, scope: counter.scope, budget_unit: counter.unit }
      if (counter.model !== undefined) attributes.model = counter.model
      registrations.push(
        Metric.registerUnsafe(Metric.withAttributes(Metrics.gatewayBudgetRemaining, attributes), context, {
          // Nothing is spent yet of a period begun since the last level.
          get: () => ({
            value: created.endsAt !== undefined && now() >= created.endsAt ? created.full : created.value
          }),
          update: () => {},
          modify: () => {}
        })
      )
      series.set(name, created)
      const sharing = byBudget.get(budget)
      if (sharing === undefined) byBudget.set(budget, [created])
      else sharing.push(created)
    }
    update(byBudget.get(budget)!, counter, level)
  }

  const refresh = (counter: Counter, level: Level) => {
    const sharing = removed ? undefined : byBudget.get(budgetOf(counter))
    if (sharing !== undefined) update(sharing, counter, level)
  }

  const update = (sharing: ReadonlyArray<Series>, counter: Counter, level: Level) => {
    // A level of an earlier window (a request settled after its period rolled) says nothing of a later one.
    const value = shown(counter.unit, Math.max(0, counter.limit - level.spent - level.held))
    const full = shown(counter.unit, counter.limit)
    const endsAt = windowEnd(counter)
    // Every series of the budget (a key's own among them once it was charged).
    for (const each of sharing) {
      if (each.window !== undefined && counter.window !== undefined && counter.window < each.window) continue
      each.value = value
      each.full = full
      each.window = counter.window
      each.endsAt = endsAt
    }
  }

  const remove = () => {
    removed = true
    for (const registration of registrations) registration.remove()
    registrations.length = 0
    series.clear()
    byBudget.clear()
  }

  return { set, refresh, remove }
}
