/**
 * A facade's figures: `stats()`, `resetStats()` and `metrics()`, read from the built manager's
 * `Stats` service and metric registry, and kept as `dispose()` left them.
 *
 * @internal
 */
import { Context, Effect, Metric, Result } from "effect"
import type { Orchestra } from "../Facade.js"
import * as Prometheus from "../Prometheus.js"
import * as Stats from "../Stats.js"
import { checkFilter } from "../stats/filter.js"
import type { Rejections } from "./rejection.js"
import type { Run } from "./run.js"
import type { Manager } from "./runtime.js"

/**
 * `stats`, `resetStats` and `metrics` of one manager.
 *
 * @internal
 */
export const makeStats = (
  rejections: Rejections,
  manager: Manager,
  run: Run
): Pick<Orchestra, "stats" | "resetStats" | "metrics"> => {
  const { OrchestraError, shuttingDown } = rejections
  let emptyStats: Stats.ExecutionStats | undefined

  // The metrics as `dispose()` left them (none when no manager was built): its layers take their
  // series out of the registry when they close, so the series there when it started are kept with
  // those still there after. Their counters are live: what the drained calls did is in them.
  const finalMetrics = (): string => {
    const services = manager.services
    if (services === undefined) return ""
    const registry = Context.get(services, Metric.MetricRegistry)
    const all: Metric.MetricRegistry = new Map(manager.seriesAtDispose)
    for (const [key, hooks] of registry) all.set(key, hooks)
    return Prometheus.formatUnsafe(Context.add(services, Metric.MetricRegistry, all))
  }

  return {
    stats: (filter) => {
      // The check `Stats.snapshot` makes; its fields as it read them (a getter is not read again).
      const checked = checkFilter(filter)
      if (Result.isFailure(checked)) throw new OrchestraError(checked.failure)
      if (manager.statsService !== undefined) return manager.statsService.snapshotUnsafe(checked.success)
      emptyStats ??= Effect.runSync(Effect.scoped(Effect.map(Stats.make, (s) => s.snapshotUnsafe())))
      // Zeros of the series asked for (`series` names it, as a built manager's snapshot does), in a copy
      // of the caller's own: one changed from JavaScript changed every later answer.
      const { provider, domain } = checked.success
      return {
        ...structuredClone(emptyStats),
        series:
          provider === undefined
            ? domain === undefined
              ? {}
              : { domain }
            : domain === undefined
              ? { provider }
              : { provider, domain }
      }
    },
    resetStats: () => {
      // As every call after `dispose()` is refused: the final figures `stats()` answers are kept.
      if (manager.disposing !== undefined) {
        throw shuttingDown("the orchestra has been disposed: resetStats() is refused, the final figures are kept")
      }
      if (manager.statsService !== undefined) Effect.runSync(manager.statsService.reset)
    },
    metrics: () => {
      // After `dispose()` (or during it: once it is over) the final metrics, as `stats()` gives the final figures.
      if (manager.disposing !== undefined) return manager.disposing.then(finalMetrics, finalMetrics)
      return run(
        undefined,
        undefined,
        () => Result.succeed(undefined),
        () => Prometheus.text
      )
    }
  }
}
