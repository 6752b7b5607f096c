/**
 * Metric series kept as plain numbers and exposed in the metric registry through hooks
 * (`Metric.registerUnsafe`), as the call metrics are: `Metric.update` on an attributed
 * metric copies the caller's context per update. Series of one id on one registry are
 * shared (they add up across the layers using them, as the registry's own series did) and
 * leave the registry when the last layer using them lets go, so a new layer's figures do not
 * add onto a closed one's.
 *
 * @internal
 */
import { Context, Effect, Metric, type Scope } from "effect"

/**
 * What {@link acquire} shares: its registrations, and how many hold it.
 *
 * @internal
 */
export interface Shared {
  users: number
  readonly series: Array<{ readonly remove: () => void }>
}

const byRegistry = new WeakMap<object, Map<string, Shared>>()

/**
 * The series of `id` in `registry`, made (and registered) by `make` when no one holds them;
 * one more holder either way. Each holder calls {@link release} once.
 *
 * @internal
 */
export const acquire = <A extends Shared>(registry: object, id: string, make: () => A): A => {
  let table = byRegistry.get(registry)
  if (table === undefined) {
    table = new Map()
    byRegistry.set(registry, table)
  }
  let shared = table.get(id) as A | undefined
  if (shared === undefined) {
    shared = make()
    table.set(id, shared)
  }
  shared.users++
  return shared
}

/**
 * Lets go of what {@link acquire} gave: the last holder removes the series from the registry.
 *
 * @internal
 */
export const release = (registry: object, id: string, shared: Shared): void => {
  if (--shared.users > 0) return
  for (const series of shared.series) series.remove()
  shared.series.length = 0
  const table = byRegistry.get(registry)
  if (table?.get(id) === shared) table.delete(id)
}

/**
 * The context a series is registered with: the caller's registry and metric attributes
 * only, so that the series does not keep the caller's whole context alive.
 *
 * @internal
 */
export const registrationContext = (caller: Context.Context<never>): Context.Context<never> =>
  Context.make(Metric.MetricRegistry, Context.get(caller, Metric.MetricRegistry)).pipe(
    Context.add(Metric.CurrentMetricAttributes, Context.get(caller, Metric.CurrentMetricAttributes))
  ) as Context.Context<never>

/**
 * @internal
 */
export interface Counter {
  /** Adds `n` (a whole number of events). */
  readonly add: (n: number) => void
}

class SharedCounter implements Counter, Shared {
  count = 0
  users = 0
  readonly series: Array<{ readonly remove: () => void }> = []
  readonly add = (n: number): void => {
    this.count += n
  }
}

const noop = () => {}

/**
 * The counter of `metric` with `attributes` (plus the context's metric attributes) in the
 * context's registry, for the current scope.
 *
 * @internal
 */
export const scoped = (
  metric: Metric.Metric<number, unknown>,
  attributes: Readonly<Record<string, string>>
): Effect.Effect<Counter, never, Scope.Scope> =>
  Effect.flatMap(Effect.context<never>(), (caller) => {
    const context = registrationContext(caller)
    const registry = Context.get(context, Metric.MetricRegistry)
    const extra = Context.get(context, Metric.CurrentMetricAttributes)
    const id = JSON.stringify([metric.id, Object.entries({ ...extra, ...attributes }).sort()])
    const counter = acquire(registry, id, () => {
      const made = new SharedCounter()
      made.series.push(
        Metric.registerUnsafe(Metric.withAttributes(metric, attributes), context, {
          get: () => ({ count: made.count, incremental: true }) as never,
          update: noop,
          modify: noop
        })
      )
      return made
    })
    return Effect.as(
      Effect.addFinalizer(() => Effect.sync(() => release(registry, id, counter))),
      counter as Counter
    )
  })
