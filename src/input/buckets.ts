/**
 * The check of a `buckets` option (`Prometheus.Options.buckets`, the gateway's
 * `metricsBuckets`), apart from `Prometheus.ts`: checking options must not load the HTTP
 * router and server, or `PrometheusMetrics`, that serving the text needs.
 *
 * @internal
 */
import { Result } from "effect"
import type { Issue } from "./issues.js"
import { oneOf } from "./values.js"

/**
 * The issue of a `buckets` option that is neither absent, `"all"` nor `"coarse"`.
 *
 * @internal
 */
export const checkBuckets = (field: string, input: unknown): Issue | undefined => {
  if (input === undefined) return undefined
  const checked = oneOf(field, input, ["all", "coarse"])
  return Result.isFailure(checked) ? checked.failure : undefined
}
