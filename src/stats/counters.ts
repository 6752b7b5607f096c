/**
 * Counters kept as plain numbers and exposed in the metric registry through a hook
 * (`Metric.registerUnsafe`), as the call metrics are: `Metric.update` on an attributed
 * metric copies the caller's context per update. Counters of one metric with the same
 * attributes on one registry are shared (their series adds up across the layers using it,
 * as the registry's own counter did); the series leaves the registry when the scope of the
 * last layer using it closes, so a new layer's figures do not add onto a closed one's.
 *
 * @internal
 */
import { Context, Effect, Metric, type Scope } from "effect"

/**
 * @internal
 */
export interface Counter {
  /** Adds `n` (a whole number of events). */
  readonly add: (n: number) => void
}

class Shared implements Counter {
  count = 0
  users = 0
  registration: { readonly remove: () => void } | undefined = undefined
  readonly add = (n: number): void => {
    this.count += n
  }
}

const byRegistry = new WeakMap<object, Map<string, Shared>>()
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
  Effect.context<never>().pipe(
    Effect.flatMap((caller) => {
      const registry = Context.get(caller, Metric.MetricRegistry)
      const extra = Context.get(caller, Metric.CurrentMetricAttributes)
      // Only what registering reads, so the series does not keep the caller's context alive.
      const context = Context.make(Metric.MetricRegistry, registry).pipe(
        Context.add(Metric.CurrentMetricAttributes, extra)
      ) as Context.Context<never>
      const id = JSON.stringify([metric.id, Object.entries({ ...extra, ...attributes }).sort()])
      let counters = byRegistry.get(registry)
      if (counters === undefined) {
        counters = new Map()
        byRegistry.set(registry, counters)
      }
      let shared = counters.get(id)
      if (shared === undefined) {
        const made = new Shared()
        made.registration = Metric.registerUnsafe(Metric.withAttributes(metric, attributes), context, {
          get: () => ({ count: made.count, incremental: true }) as never,
          update: noop,
          modify: noop
        })
        counters.set(id, made)
        shared = made
      }
      const counter = shared
      counter.users++
      const table = counters
      return Effect.as(
        Effect.addFinalizer(() =>
          Effect.sync(() => {
            if (--counter.users > 0) return
            counter.registration?.remove()
            if (table.get(id) === counter) table.delete(id)
          })
        ),
        counter as Counter
      )
    })
  )
