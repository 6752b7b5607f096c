/**
 * `orchestra_gateway_budget_remaining`: what is left of each budget a key was charged to,
 * as this process last saw it in the budget's current period (the whole limit once a new
 * period has begun), one series per key, scope, unit (and model for the `model` scope),
 * registered in the metric registry of the layer that built the store and removed with it.
 * Two stores of one registry (two gateways, or one rebuilt while the other drains) export one
 * series per key: the lowest remaining either reports. Of one shared budget (Redis) spend only
 * grows within a period, so the lowest is the latest level read; of budgets kept apart (two
 * memory stores) it is the one that refuses first, what an alert on the gauge is for. A store
 * closing or forgetting its key leaves the other's level.
 *
 * Bounded as the library's other per-name series: the first {@link maxSeries} (key, scope,
 * unit, model) charged get a series; a later one gets none (a sum of other keys' remaining
 * budgets would mean nothing; its level is read with the admin's spend). A key's series are
 * removed when it is disabled or deleted here, or found so on a shared store (at a reserve of it, or
 * by the store's lookup of its gauges' keys every 30 s), which frees their places.
 *
 * @internal
 */
import { type Context, Duration, Effect, type Metric } from "effect"
import type { StoreError } from "../../Redis.js"
import * as Metrics from "../../Metrics.js"
import { registrationContext } from "../../stats/counters.js"
import { type Combine, join } from "../../stats/series.js"
import { type Counter, type Level, shown, windowEnd } from "./ledger.js"

/**
 * The most series of `orchestra_gateway_budget_remaining` a store makes.
 *
 * @internal
 */
export const maxSeries = 1000

// Keys remembered as disabled or deleted (see `forget`): one of an older one may show again if a request of it settles.
const maxForgotten = 100_000

/**
 * @internal
 */
export interface Gauges {
  readonly set: (keyId: string, counter: Counter, level: Level) => void
  /** A level read (a lease may have ended since): to the series of its budget, if any; none is made. */
  readonly refresh: (counter: Counter, level: Level) => void
  /**
   * Removes the series of a key (disabled, deleted): they hold places of the bound. A request of it still running
   * makes none again when it settles, until {@link remember}.
   */
  readonly forget: (keyId: string) => void
  /** A key enabled or created again: its requests show it again. */
  readonly remember: (keyId: string) => void
  /** The keys that have a series now. */
  readonly keys: () => ReadonlyArray<string>
  readonly remove: () => void
}

interface Series {
  value: number
  full: number
  /** The period window `value` was read in, and when it ends (none without a period). */
  window: number | undefined
  endsAt: number | undefined
}

interface Entry {
  readonly series: Series
  readonly budget: string
  readonly registration: { readonly remove: () => void }
}

// A gauge's levels are not added up: the lowest is the level nearest its refusal.
const lowest: Combine<Metric.GaugeState<number>> = (states) => {
  let value = states[0]!.value
  for (const state of states) if (state.value < value) value = state.value
  return { value }
}

/**
 * @internal
 */
export const make = (caller: Context.Context<never>, now: () => number): Gauges => {
  // The registry and metric attributes only: a series another store still reads outlives this
  // store, and would keep its layer's whole context alive.
  const context = registrationContext(caller)
  const series = new Map<string, Entry>()
  // The series of every key charged to one budget: a team's, shared by its keys, shows one level.
  const byBudget = new Map<string, Array<Series>>()
  // The series' names of each key, to remove them when it is disabled.
  const byKey = new Map<string, Array<string>>()

  let removed = false
  // Keys whose series were removed (disabled, deleted), most recent last: a settle of a request that ran on makes no
  // series of its key again, which would show a deleted key's whole budget left. The oldest go past the bound.
  const forgotten = new Set<string>()

  const budgetOf = (counter: Counter) =>
    `${counter.scope}\u0000${counter.scopeId}\u0000${counter.unit}\u0000${counter.model ?? ""}`

  const set = (keyId: string, counter: Counter, level: Level) => {
    // Removed with the store: a settle that ends after that leaves no series behind.
    if (removed) return
    const budget = budgetOf(counter)
    const name = `${keyId}\u0000${counter.scope}\u0000${counter.unit}\u0000${counter.model ?? ""}`
    if (!series.has(name)) {
      if (series.size >= maxSeries || forgotten.has(keyId)) {
        // The series of other keys of the budget (a team's) still show its level.
        const sharing = byBudget.get(budget)
        if (sharing !== undefined) update(sharing, counter, level)
        return
      }
      const created: Series = { value: 0, full: 0, window: undefined, endsAt: undefined }
      // Not `unit`: Prometheus exporters drop an attribute of that name.
      const attributes: Record<string, string> = { key: keyId, scope: counter.scope, budget_unit: counter.unit }
      if (counter.model !== undefined) attributes.model = counter.model
      const registration = join(
        Metrics.gatewayBudgetRemaining,
        attributes,
        context,
        // Nothing is spent yet of a period begun since the last level.
        () => ({ value: created.endsAt !== undefined && now() >= created.endsAt ? created.full : created.value }),
        lowest
      )
      series.set(name, { series: created, budget, registration })
      const sharing = byBudget.get(budget)
      if (sharing === undefined) byBudget.set(budget, [created])
      else sharing.push(created)
      const names = byKey.get(keyId)
      if (names === undefined) byKey.set(keyId, [name])
      else names.push(name)
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

  const forget = (keyId: string) => {
    forgotten.delete(keyId)
    forgotten.add(keyId)
    if (forgotten.size > maxForgotten) forgotten.delete(forgotten.values().next().value!)
    const names = byKey.get(keyId)
    if (names === undefined) return
    byKey.delete(keyId)
    for (const name of names) {
      const entry = series.get(name)!
      series.delete(name)
      entry.registration.remove()
      const sharing = byBudget.get(entry.budget)!
      const left = sharing.filter((each) => each !== entry.series)
      if (left.length === 0) byBudget.delete(entry.budget)
      else byBudget.set(entry.budget, left)
    }
  }

  const remove = () => {
    removed = true
    for (const entry of series.values()) entry.registration.remove()
    series.clear()
    byBudget.clear()
    byKey.clear()
  }

  return {
    set,
    refresh,
    forget,
    remember: (keyId) => {
      forgotten.delete(keyId)
    },
    keys: () => [...byKey.keys()],
    remove
  }
}

/** How often {@link retire} looks the keys of the series up. */
const retireEvery = Duration.seconds(30)

/**
 * Every 30 s, removes the series of the keys `retired` finds no longer stored or disabled on a shared store
 * (through another replica), but those `configured` (never removed); forked by the store, for its life.
 *
 * @internal
 */
export const retire = (
  gauges: Gauges,
  retired: (ids: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<string>, StoreError>,
  configured: (id: string) => boolean
): Effect.Effect<never> => {
  const check = Effect.suspend(() => {
    const ids = gauges.keys().filter((id) => !configured(id))
    return ids.length === 0
      ? Effect.void
      : Effect.map(retired(ids), (gone) => {
          for (const id of gone) gauges.forget(id)
        })
  })
  return Effect.forever(Effect.andThen(Effect.sleep(retireEvery), Effect.ignore(check)))
}
