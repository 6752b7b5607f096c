/**
 * Metrics of the resilience components (circuit breakers, response caches, rate limits).
 * Defined here until they move into `Metrics.ts` with every other metric.
 *
 * @since 0.1.0
 */
import { Metric } from "effect"

/**
 * Current state of a breaker (tag `breaker`): 0 closed, 1 open, 2 half-open, 3 isolated.
 *
 * @since 0.1.0
 * @category circuit breaker
 */
export const circuitState = Metric.gauge("orchestra_circuit_state", {
  description: "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 isolated"
})

/**
 * Calls a breaker refused (tag `breaker`).
 *
 * @since 0.1.0
 * @category circuit breaker
 */
export const circuitRejected = Metric.counter("orchestra_circuit_rejected_total", {
  description: "Calls refused by a circuit breaker",
  incremental: true
})

/**
 * State transitions of a breaker (tags `breaker`, `to`).
 *
 * @since 0.1.0
 * @category circuit breaker
 */
export const circuitTransitions = Metric.counter("orchestra_circuit_transitions_total", {
  description: "Circuit breaker state transitions",
  incremental: true
})

/**
 * Cache lookups answered from the cache (tag `cache`: the backend name).
 *
 * @since 0.1.0
 * @category cache
 */
export const cacheHits = Metric.counter("orchestra_cache_hits_total", {
  description: "Response cache hits",
  incremental: true
})

/**
 * Cache lookups that found nothing usable (tag `cache`).
 *
 * @since 0.1.0
 * @category cache
 */
export const cacheMisses = Metric.counter("orchestra_cache_misses_total", {
  description: "Response cache misses",
  incremental: true
})

/**
 * Expired entries served within their grace period (tag `cache`).
 *
 * @since 0.1.0
 * @category cache
 */
export const cacheStale = Metric.counter("orchestra_cache_stale_total", {
  description: "Stale response cache entries served",
  incremental: true
})

/**
 * Cache backend failures and timeouts; the call went on without the cache (tag `cache`).
 *
 * @since 0.1.0
 * @category cache
 */
export const cacheErrors = Metric.counter("orchestra_cache_errors_total", {
  description: "Response cache backend errors (the call went on without the cache)",
  incremental: true
})

/**
 * Time spent waiting for a rate-limit slot, in milliseconds (tags `provider`, `limit`).
 *
 * @since 0.1.0
 * @category rate limit
 */
export const rateLimitWait = Metric.counter("orchestra_rate_limit_wait_ms_total", {
  description: "Milliseconds spent waiting for rate-limit slots"
})

/**
 * Calls that had to wait for a rate-limit slot (tags `provider`, `limit`).
 *
 * @since 0.1.0
 * @category rate limit
 */
export const rateLimitDelayed = Metric.counter("orchestra_rate_limit_delayed_total", {
  description: "Calls delayed by a rate limit",
  incremental: true
})
