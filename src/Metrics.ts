/**
 * Every metric of the library, defined in one place, snake_case with the `orchestra_`
 * prefix. Dimensions are attributes only: `provider`, `domain` (`"none"` for calls without
 * one, {@link noDomain}: no domain may take that name), and per component `breaker`,
 * `cache`, `limit`, `agent`, `reason`, `outcome`, `metric` (the histogram of {@link ignoredDurations}).
 *
 * The call metrics (`orchestra_requests_total` ... `orchestra_queue_wait_ms`) are served by
 * `Stats`: each (provider, domain) pair has one series object whose plain counters the
 * call path updates, registered in the `Metric.MetricRegistry` of the layer that built it
 * (`Metric.registerUnsafe`). Exporters (`PrometheusMetrics`, OTLP) read them like any metric,
 * `Stats.snapshot` reads the same objects, and closing the layer removes its series.
 *
 * @since 0.1.0
 */
import { Metric } from "effect"

/**
 * The `domain` of the calls made without one, in metrics, `Stats` filters and answers. It is
 * reserved: a domain of that name (`Domain.check`, `Orchestra.layer`'s `domains`,
 * `extraDomains` and `overrideDomains`, the CLI's and gateway's config files) is an
 * `OptionError` at its `name`, and an executor call's `domain: "none"` an `InvalidRequest`
 * naming `domain`, so the series of calls without a domain is theirs alone.
 *
 * @since 0.3.0
 * @category attributes
 */
export const noDomain = "none"

/**
 * The `domain` a pipeline's steps are counted under (`provider` is the step's stats name).
 * Reserved as {@link noDomain} is: no domain may take that name, so that a domain's figures
 * and the steps' never add up in one series, `Stats` filter or metric.
 *
 * @since 0.3.0
 * @category attributes
 */
export const pipelineDomain = "pipeline"

/**
 * The `domain` the HTTP agents' calls are counted under (`provider` is the agent's name),
 * `HttpAgent.statsDomain`. Reserved as {@link noDomain} is.
 *
 * @since 0.3.0
 * @category attributes
 */
export const agentDomain = "agent"

/**
 * The `limit`, `agent` (and `provider` of the agents' `Stats` series), `breaker`, and `provider`
 * and `domain` (past `Stats.maxSeries` pairs) of the one series that the names past a
 * component's series bound count in together. Reserved, so that it
 * only ever means those: a domain of that name (`Domain.check`: an `OptionError`; a call's
 * `domain`: an `InvalidRequest`), a provider of that name (an executor's, one of an orchestra's
 * `providers`: an `OptionError` at its `name`; a call's `provider` option: an `InvalidRequest`
 * naming `provider.name`), a rate-limit key of that name in `providers` and an HTTP agent's
 * `name` of that name are refused at that field; a key of that name met at run time (a
 * rate-limit key under `default`, a breaker key) never has series of its own and counts in it,
 * as does one holding a lone surrogate (the exposition writes U+FFFD for it: two such keys were
 * one series twice), and a call's domain or a provider's name past 256 characters in `Stats`'
 * series.
 *
 * @since 0.3.0
 * @category attributes
 */
export const otherSeries = "(other)"

/**
 * Latency buckets in milliseconds: 0.05 ms to ~13 minutes (796,704 ms; `+Inf` past it) in steps of 10%, so percentiles
 * read back from a histogram are within ~5% of the true value. Each is rounded to 6 significant digits
 * (`le="0.055"`, `le="9.45296"`): computed as powers, their last digits differ between Node 22 and 24, and a
 * fleet running both would export two sets of `le` series.
 *
 * @since 0.1.0
 * @category boundaries
 */
export const latencyBoundaries: ReadonlyArray<number> = Metric.exponentialBoundaries({
  start: 0.05,
  factor: 1.1,
  count: 176
}).map((bound) => Number(bound.toPrecision(6)))

/**
 * @since 0.1.0
 * @category calls
 */
export const requests = Metric.counter("orchestra_requests_total", {
  description: "Calls started on a provider (one per call and fallback step; retries not included)",
  incremental: true
})

/**
 * @since 0.1.0
 * @category calls
 */
export const successes = Metric.counter("orchestra_successes_total", {
  description: "Calls that ended with an answer",
  incremental: true
})

/**
 * Attribute `reason`: a `ModelError` reason, `Timeout`, `CircuitOpen`, `ShuttingDown` (a
 * stream its provider's own shutdown cut after text included), `StreamInterrupted`,
 * `FallbackExhausted` or `Interrupted`.
 *
 * @since 0.1.0
 * @category calls
 */
export const failures = Metric.counter("orchestra_failures_total", {
  description: "Calls that ended with a failure, by reason",
  incremental: true
})

/**
 * Counted on the first step of the call (the provider and domain its answer names). The
 * failures that led to it stay in `orchestra_failures_total` (and in the breakers): the
 * provider did fail, the caller was answered all the same.
 *
 * @since 0.3.0
 * @category calls
 */
export const staleAnswers = Metric.counter("orchestra_stale_answers_total", {
  description: "Calls answered from an expired cache entry (allowStale) after their provider calls failed",
  incremental: true
})

/**
 * @since 0.1.0
 * @category calls
 */
export const timeouts = Metric.counter("orchestra_timeouts_total", {
  description: "Attempts ended by one of our deadlines",
  incremental: true
})

/**
 * @since 0.1.0
 * @category calls
 */
export const retries = Metric.counter("orchestra_retries_total", {
  description: "Retries made (attempts after the first)",
  incremental: true
})

/**
 * Counted on the step that took over (in a hedge too, when the step before failed).
 *
 * @since 0.1.0
 * @category calls
 */
export const fallbacks = Metric.counter("orchestra_fallbacks_total", {
  description: "Hand-overs to the next step of a fallback chain",
  incremental: true
})

/**
 * Attribute `outcome`: `won` (the backup answered first) or `lost` (another step answered
 * first, or the call failed or was cut), counted when the hedge ends, each hedge once: the sum
 * over `outcome` is the hedges made (`Stats`' `hedges.started` also counts those still running).
 * A backup started because the delay passed with the step before still running; one started
 * because that step failed is a fallback.
 *
 * @since 0.1.0
 * @category calls
 */
export const hedges = Metric.counter("orchestra_hedges_total", {
  description: "Backup calls started by hedging (the delay passed), counted when they end, by outcome: won or lost",
  incremental: true
})

/**
 * @since 0.1.0
 * @category calls
 */
export const latency = Metric.histogram("orchestra_request_duration_ms", {
  description: "Duration of a call as its caller saw it (queueing and retries included), in milliseconds",
  boundaries: latencyBoundaries
})

/**
 * Calls and streams together: a stream's attempt is served from its start to its end (seconds
 * where a call takes milliseconds).
 *
 * @since 0.2.0
 * @category calls
 */
export const serviceTime = Metric.histogram("orchestra_service_duration_ms", {
  description: "Time a provider spent serving one attempt (a stream: from its start to its end), in milliseconds",
  boundaries: latencyBoundaries
})

/**
 * @since 0.2.0
 * @category calls
 */
export const queueWait = Metric.histogram("orchestra_queue_wait_ms", {
  description: "Time an attempt waited for a free slot of its provider, in milliseconds",
  boundaries: latencyBoundaries
})

/**
 * Durations left out of a call histogram for being no finite number (`NaN`, `Infinity`: a
 * provider's or a clock's bogus reading); attribute `metric` names the histogram
 * (`orchestra_request_duration_ms`, `orchestra_service_duration_ms`, `orchestra_queue_wait_ms`,
 * `orchestra_time_to_first_token_ms`). A series appears with the first one.
 *
 * @since 0.3.0
 * @category calls
 */
export const ignoredDurations = Metric.counter("orchestra_ignored_durations_total", {
  description: "Durations left out of the histogram named by metric for being no finite number (NaN, Infinity)",
  incremental: true
})

/**
 * @since 0.1.0
 * @category calls
 */
export const inFlight = Metric.gauge("orchestra_in_flight", {
  description: "Attempts being served by their provider now"
})

/**
 * @since 0.2.0
 * @category calls
 */
export const queued = Metric.gauge("orchestra_queued", {
  description: "Attempts waiting for a free slot of their provider now"
})

/**
 * @since 0.1.0
 * @category calls
 */
export const inFlightPeak = Metric.gauge("orchestra_in_flight_peak", {
  description: "Most attempts served at once since the stats window began"
})

/**
 * @since 0.1.0
 * @category streams
 */
export const timeToFirstToken = Metric.histogram("orchestra_time_to_first_token_ms", {
  description: "Time from a stream's start to its first text, in milliseconds",
  boundaries: latencyBoundaries
})

/**
 * @since 0.2.0
 * @category calls
 */
export const inputTokens = Metric.counter("orchestra_input_tokens_total", {
  description: "Input tokens reported by providers (estimated where a provider reports none)",
  incremental: true
})

/**
 * @since 0.2.0
 * @category calls
 */
export const outputTokens = Metric.counter("orchestra_output_tokens_total", {
  description: "Output tokens reported by providers (estimated where a provider reports none)",
  incremental: true
})

/**
 * Value per state: 0 closed, 1 open, 2 half-open, 3 isolated. Attribute `breaker` (and
 * `breakers`, the layer's `name`, when it has one). Only the first 100 keys a layer holds at
 * once have series (this gauge and their counters); the others have no gauge and count their
 * transitions and rejections under `breaker="(other)"`.
 *
 * @since 0.1.0
 * @category breakers
 */
export const breakerState = Metric.gauge("orchestra_breaker_state", {
  description: "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 isolated"
})

/**
 * Attributes `breaker`, `from`, `to` (and `breakers` for a named layer); `breaker` bounded as
 * in {@link breakerState}.
 *
 * @since 0.1.0
 * @category breakers
 */
export const breakerTransitions = Metric.counter("orchestra_breaker_transitions_total", {
  description: "Circuit breaker state changes",
  incremental: true
})

/**
 * Attribute `breaker` (and `breakers` for a named layer). Counts the refusals of a store
 * that could not be read (`onStoreError: "reject"`) as well.
 *
 * @since 0.1.0
 * @category breakers
 */
export const breakerRejections = Metric.counter("orchestra_breaker_rejections_total", {
  description: "Calls refused by an open, half-open or isolated breaker",
  incremental: true
})

/**
 * Attributes `cache`, `outcome` (`hit`, `miss`, `stale`, `shared`).
 *
 * @since 0.1.0
 * @category caches
 */
export const cacheLookups = Metric.counter("orchestra_cache_lookups_total", {
  description: "Response cache lookups by outcome",
  incremental: true
})

/**
 * Attribute `cache` (the backend). Counts the backend's failures (a Redis call that failed or
 * timed out) and what a cache refused to keep: a caller's own compute answering something that
 * is not an answer, a stream's malformed parts, an answer JSON cannot carry.
 *
 * @since 0.1.0
 * @category caches
 */
export const cacheErrors = Metric.counter("orchestra_cache_errors_total", {
  description:
    "Cache backend failures, and answers or stream parts not kept because they were malformed (the call went on without the cache)",
  incremental: true
})

/**
 * Attribute `cache`. Values not stored because their encoding is longer than the cache's
 * `maxValueBytes`: one such write would stall every store sharing the Redis connection. Also those
 * found in Redis longer than it allows (another process's, with a larger bound): not read, a miss;
 * and those a Redis `getMany` left unread because the batch had reached `maxBatchBytes`: misses.
 *
 * @since 0.3.0
 * @category caches
 */
export const cacheOversized = Metric.counter("orchestra_cache_oversized_total", {
  description:
    "Cache values not stored, or found in Redis and not read, because they exceed maxValueBytes (or a batch's maxBatchBytes)",
  incremental: true
})

/**
 * Attributes `limit` (the key: each listed in `providers`, and the first 32 under `default`
 * of each limiter; the later ones under `default` count together as `"(other)"`), `outcome`
 * (`immediate`, `delayed`, `rejected`).
 *
 * @since 0.1.0
 * @category rate limits
 */
export const rateLimitAcquisitions = Metric.counter("orchestra_rate_limit_acquisitions_total", {
  description: "Rate limit decisions by outcome",
  incremental: true
})

/**
 * Attribute `limit`, as `rateLimitAcquisitions`.
 *
 * @since 0.1.0
 * @category rate limits
 */
export const rateLimitWait = Metric.histogram("orchestra_rate_limit_wait_ms", {
  description: "Time a call waited for a rate limit slot, in milliseconds",
  boundaries: latencyBoundaries
})

/**
 * Attribute `store`.
 *
 * @since 0.2.0
 * @category rate limits
 */
export const storeErrors = Metric.counter("orchestra_store_errors_total", {
  description: "Shared-state store failures (Redis down or slow) handled by the store's failure policy",
  incremental: true
})

/**
 * Attributes `agent`, `status` (`success`, `error`, `timeout`, `service_unavailable`,
 * `skipped`). An `HttpAgents` service gives the first 100 agent names it counts an `agent`
 * of their own and counts later ones under `agent="(other)"` (as their `Stats` series, under
 * `provider`), so agents named per URL do not make a series each; a name that is a URL is
 * shown without its query.
 *
 * @since 0.1.0
 * @category agents
 */
export const agentTasks = Metric.counter("orchestra_agent_tasks_total", {
  description: "HTTP agent tasks by status",
  incremental: true
})

/**
 * Attribute `agent`, bounded as in {@link agentTasks}.
 *
 * @since 0.2.0
 * @category agents
 */
export const agentLatency = Metric.histogram("orchestra_agent_duration_ms", {
  description: "Duration of an HTTP agent task, in milliseconds",
  boundaries: latencyBoundaries
})

/**
 * Attributes `route` (`chat`, `chat_stream`, `embeddings`, `models`, `health`, `metrics`,
 * `other`) and `status` (the HTTP status code). The admin routes (`gateway/admin`, a layer of
 * their own beside the gateway) are counted in {@link gatewayAdminRequests}. Under
 * `Gateway.serve`, the requests its Node server refuses before any route (408, 400, 413, 417,
 * 431) are `other`, and counted in {@link gatewayErrors} (`InvalidRequest`, `TooLarge`); one
 * whose body came too late had reached its route, which counts it as a client that left (499).
 *
 * @since 0.2.0
 * @category gateway
 */
export const gatewayRequests = Metric.counter("orchestra_gateway_requests_total", {
  description: "Requests answered by the gateway, by route and status",
  incremental: true
})

/**
 * Attributes `route` (`keys_create`, `keys_list`, `key`, `key_delete`, `key_disable`, `key_enable`,
 * `key_spend`, and `other` for any other path or method under the admin path) and `status`
 * (the HTTP status code; 401 for a missing or wrong admin key, 499 when the client left).
 *
 * @since 0.3.0
 * @category gateway
 */
export const gatewayAdminRequests = Metric.counter("orchestra_gateway_admin_requests_total", {
  description: "Requests answered by the gateway's admin routes (gateway/admin), by route and status",
  incremental: true
})

/**
 * Attribute `route`.
 *
 * @since 0.2.0
 * @category gateway
 */
export const gatewayLatency = Metric.histogram("orchestra_gateway_request_duration_ms", {
  description: "Time from a request's arrival to its answer (for streams: to the last byte), in milliseconds",
  boundaries: latencyBoundaries
})

/**
 * Attribute `route`. For a stream, up to its first byte.
 *
 * @since 0.2.0
 * @category gateway
 */
export const gatewayOverhead = Metric.histogram("orchestra_gateway_overhead_ms", {
  description: "Time a request spent in the gateway itself, waits on upstream providers excluded, in milliseconds",
  boundaries: latencyBoundaries
})

/**
 * @since 0.2.0
 * @category gateway
 */
export const gatewayTimeToFirstToken = Metric.histogram("orchestra_gateway_time_to_first_token_ms", {
  description: "Time from a streamed request's arrival to its first content byte sent to the client, in milliseconds",
  boundaries: latencyBoundaries
})

/**
 * Attribute `reason`: a `GatewayError` reason (`Unauthorized`, `BudgetExceeded`, ...) or
 * the label of a model-call failure (`AiError.reasonOf`), for answers and for streams
 * ended by an error event.
 *
 * @since 0.2.0
 * @category gateway
 */
export const gatewayErrors = Metric.counter("orchestra_gateway_errors_total", {
  description: "Requests the gateway answered with an error (or streams it ended with one), by reason",
  incremental: true
})

/**
 * @since 0.2.0
 * @category gateway
 */
export const gatewayInFlight = Metric.gauge("orchestra_gateway_in_flight", {
  description: "Requests (and streams) the gateway is serving now"
})

/**
 * Attribute `type`: `input` or `output`.
 *
 * @since 0.2.0
 * @category gateway
 */
export const gatewayTokens = Metric.counter("orchestra_gateway_tokens_total", {
  description:
    "Tokens of the gateway's answered requests, as the providers reported them (estimated where a provider reports none)",
  incremental: true
})

/**
 * Attributes `key` (the key's id, never its secret), `scope` (`key`, `team`, `model`),
 * `budget_unit` (`tokens`, `usd`; not `unit`, which Prometheus exporters drop) and, for the
 * `model` scope, `model`. At most 1,000 series in a process: the first (key, scope, unit,
 * model) charged get one, later ones none; a disabled key's are removed, freeing their places.
 *
 * @since 0.2.0
 * @category gateway
 */
export const gatewayBudgetRemaining = Metric.gauge("orchestra_gateway_budget_remaining", {
  description: "What is left of a virtual key's budget, by scope and unit"
})
