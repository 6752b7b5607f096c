/**
 * A key's `rpm`/`tpm` limits on `RateLimit`: one limiter per distinct pair, built by the first request
 * of a key with that pair, and the 429 (or, failing closed, the 503) a refusal is answered with.
 *
 * @internal
 */
import { Duration, Effect, Exit, Scope } from "effect"
import type { RateLimiter } from "effect/persistence"
import type { ModelError } from "../../AiError.js"
import * as RateLimit from "../../RateLimit.js"
import type { Guard } from "../../Redis.js"
import { type GatewayError, gatewayError } from "../errors.js"
import type { KeyRecord } from "./options.js"

/**
 * How many rate limiters (one per distinct `rpm`/`tpm` pair) the store keeps; past it, the least recently
 * used is closed (its counts live in the limits' store, so a rebuilt one goes on from them).
 *
 * @internal
 */
export const maxLimiters = 1024

/**
 * The names of a key's windows in the limits' store: `RateLimit` names those of `key:<id>` (see below)
 * `<key>:rpm` and `<key>:tpm`.
 *
 * @internal
 */
export const windowsOf = (id: string): ReadonlyArray<string> => [`key:${id}:rpm`, `key:${id}:tpm`]

/**
 * The limits' store and how it fails.
 *
 * @internal
 */
export interface Options {
  readonly store: RateLimiter.RateLimiterStore["Service"]
  readonly guard?: Guard | undefined
  readonly onStoreError: "allow" | "reject"
}

/**
 * A key's limits, its limiters' series kept in `scope` (they leave the registry when a limiter is evicted
 * or the store closes). `unavailable`: the answer of a limit whose store refused for being down.
 *
 * @internal
 */
export const make = (
  scope: Scope.Scope,
  limits: Options,
  rateLimitWait: Duration.Duration,
  unavailable: () => GatewayError
) => {
  // By last use (a Map keeps insertion order): admin-created keys may bring any number of pairs, and
  // the least recently used limiter is closed past maxLimiters (a request holding it still completes).
  const limiters = new Map<string, { readonly service: RateLimit.Service; readonly scope: Scope.Closeable }>()
  const limiterFor = (
    rpm: number | undefined,
    tpm: number | undefined
  ): Effect.Effect<RateLimit.Service, GatewayError> => {
    const name = `${rpm ?? 0}/${tpm ?? 0}`
    const found = limiters.get(name)
    if (found !== undefined) {
      limiters.delete(name)
      limiters.set(name, found)
      return Effect.succeed(found.service)
    }
    // Built by a request, its series kept by the key store: they leave the registry when the limiter is
    // evicted or the store closes (at once for one built after: a request still running then).
    const own = Scope.forkUnsafe(scope)
    return RateLimit.makeScoped(
      { default: { requestsPerMinute: rpm, tokensPerMinute: tpm }, maxWait: rateLimitWait },
      limits.store,
      { onStoreError: limits.onStoreError, guard: limits.guard }
    ).pipe(
      Scope.provide(own),
      Effect.flatMap((made) => {
        const existing = limiters.get(name)
        if (existing !== undefined) return Effect.as(Scope.close(own, Exit.void), existing.service)
        limiters.set(name, { service: made, scope: own })
        if (limiters.size <= maxLimiters) return Effect.succeed(made)
        const [oldest, evicted] = limiters.entries().next().value!
        limiters.delete(oldest)
        return Effect.as(Scope.close(evicted.scope, Exit.void), made)
      }),
      Effect.onError(() => Scope.close(own, Exit.void)),
      Effect.mapError((error) => gatewayError("Internal", `the rate limit of a key cannot be built: ${error.message}`))
    )
  }

  const limitError = (record: KeyRecord, tokens: number) => (error: ModelError) => {
    // Failing closed, a limit whose store did not answer refused the request: an outage, not a limit reached.
    if (RateLimit.isStoreRefusal(error)) return unavailable()
    const retryAfter = error.retryAfter === undefined ? {} : { retryAfter: error.retryAfter }
    if (error.rateLimit !== undefined && error.limit !== undefined) {
      const per = error.rateLimit === "requests" ? "requests per min (RPM)" : "tokens per min (TPM)"
      const requested = error.rateLimit === "requests" ? 1 : tokens
      const wait =
        error.retryAfter === undefined
          ? ""
          : ` Please try again in ${Math.ceil(Duration.toMillis(error.retryAfter) / 1000)}s.`
      return gatewayError(
        "RateLimited",
        `Rate limit reached for key "${record.id}" on ${per}: Limit ${error.limit}, Requested ${requested}.${wait}`,
        { code: "rate_limit_exceeded", rateLimit: error.rateLimit, limit: error.limit, ...retryAfter }
      )
    }
    const limitsText = [
      record.rpm === undefined ? undefined : `${record.rpm} requests`,
      record.tpm === undefined ? undefined : `${record.tpm} tokens`
    ]
      .filter((part) => part !== undefined)
      .join(" and ")
    const wait =
      error.retryAfter === undefined ? "" : `; retry after ${Math.ceil(Duration.toMillis(error.retryAfter) / 1000)} s`
    return gatewayError("RateLimited", `Rate limit reached for key "${record.id}": ${limitsText} per minute${wait}`, {
      code: "rate_limit_exceeded",
      ...retryAfter
    })
  }

  return (record: KeyRecord, tokens: number): Effect.Effect<void, GatewayError> =>
    record.rpm === undefined && record.tpm === undefined
      ? Effect.void
      : Effect.flatMap(limiterFor(record.rpm, record.tpm), (limiter) =>
          Effect.mapError(limiter.acquire(`key:${record.id}`, { tokens }), limitError(record, tokens))
        )
}
