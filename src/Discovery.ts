/**
 * Agent discovery: an HTTP agent task may name what it needs (a `concept` and an
 * `intent`) instead of a URL; the {@link Discovery} service resolves it, per task, to the
 * agents that serve it (the first is called, the others are its fallbacks).
 *
 * Three layers: a static map ({@link layerStatic}), a lookup against a discovery endpoint
 * over HTTP ({@link layerHttp}), or your own effect ({@link layer}). The last two put the
 * lookups behind their own circuit breaker, a deadline and a cache (answers are kept for
 * `ttl`, and serve `staleFor` longer while lookups fail; concurrent lookups of one query
 * share one call). When nothing is found or
 * discovery is down, the task ends with a `service_unavailable` record.
 *
 * @since 0.2.0
 */
import { Context, type Effect, Layer, type Scope } from "effect"
import type { HttpClient } from "effect/http"
import type * as CircuitBreaker from "./CircuitBreaker.js"
import type * as Input from "./Input.js"
import type { DiscoveryError } from "./discovery/errors.js"
import * as Http from "./discovery/http.js"
import * as Lookup from "./discovery/lookup.js"
import * as Static from "./discovery/static.js"

/**
 * What a task needs.
 *
 * @since 0.2.0
 * @category models
 */
export interface Query {
  readonly concept: string
  readonly intent: string
}

/**
 * An agent discovery found: where it lives, its name in records and stats (default: the
 * URL), and its per-request timeout.
 *
 * @since 0.2.0
 * @category models
 */
export interface Endpoint {
  readonly url: string
  readonly name?: string | undefined
  readonly timeout?: Input.DurationInput | undefined
}

export {
  /**
   * Discovery found no agent for the query (`NotFound`), or could not answer (`Unavailable`:
   * the lookup failed, threw, timed out, or its breaker is open). `cause`, when `Unavailable`:
   * what the lookup failed with or threw, or else the library's error (a `TimeoutError`, the
   * breaker's `CircuitOpenError`, a `ModelError` for an invalid answer). A query whose `concept`
   * or `intent` is no string of 1 to 1,000 characters is `NotFound`, its message naming the field
   * (`invalid query.concept: ...`).
   *
   * @since 0.2.0
   * @category errors
   */
  DiscoveryError,
  /**
   * @since 0.2.0
   * @category models
   */
  DiscoveryErrorReason
} from "./discovery/errors.js"

/**
 * @since 0.2.0
 * @category models
 */
export interface Service {
  /** The name of this discovery (its breaker key is `discovery:<name>`). */
  readonly name: string
  /** The agents serving the query, best first; never empty. */
  readonly resolve: (query: Query) => Effect.Effect<ReadonlyArray<Endpoint>, DiscoveryError>
}

/**
 * @since 0.2.0
 * @category services
 */
export class Discovery extends Context.Service<Discovery, Service>()("effect-orchestra/Discovery") {}

/**
 * One entry of a static map: the agents of a (concept, intent); `intent: "*"` serves every
 * intent of the concept that has no entry of its own.
 *
 * @since 0.2.0
 * @category models
 */
export interface Entry {
  readonly concept: string
  readonly intent: string
  readonly agents: Endpoint | ReadonlyArray<Endpoint>
}

/**
 * Options of the lookups behind a breaker and a cache ({@link layer}, {@link layerHttp}).
 *
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /**
   * Name in errors and the breaker key `discovery:<name>` (also the agent of its tasks' records): at most 246
   * characters, so that `discovery:<name>` labels series of its own. Default `"discovery"`.
   */
  readonly name?: string | undefined
  /** How long an answer is kept. Default 1 minute. Failures and empty answers are not kept. */
  readonly ttl?: Input.DurationInput | undefined
  /**
   * Past its `ttl`, an answer still serves a query while lookups fail (the service is down,
   * the lookups' breaker is open) for this long: stale-if-error. Default 10 minutes; `0`
   * turns it off. A query never answered, or last answered with no agent, is `Unavailable`.
   */
  readonly staleFor?: Input.DurationInput | undefined
  /** Queries kept at most (least recently used go first). Default 1,000. */
  readonly capacity?: number | undefined
  /** Deadline of one lookup. Default 5 seconds. */
  readonly timeout?: Input.DurationInput | undefined
  /** The lookups' own breaker (in this process). Default: 5 consecutive failures, open 30 seconds. */
  readonly breaker?: CircuitBreaker.Options | undefined
  /**
   * Agents kept of an answer, best first (the rest are dropped): each is a fallback a task may
   * try in turn, and a series in the agents' stats. Default 10.
   *
   * @since 0.3.0
   */
  readonly maxAgents?: number | undefined
  /**
   * Lookups in flight at once (of distinct queries: the callers of one query share its lookup).
   * More wait their turn, then go through the breaker (which an outage has opened meanwhile).
   * Default 10, as an agent host's connections.
   *
   * @since 0.3.0
   */
  readonly maxConcurrentLookups?: number | undefined
}

/**
 * @since 0.2.0
 * @category models
 */
export interface HttpOptions extends Options {
  /**
   * `GET <url>?concept=...&intent=...` answers `{ "agents": [{ "url", "name"?, "timeout"? }] }`; 404 is "not found".
   * The URL is asked as given (a trailing slash and a query string of its own are kept).
   */
  readonly url: string
  /** Bound of an answer's body. Default 1 MiB. */
  readonly maxResponseBytes?: number | undefined
}

/**
 * A static map of (concept, intent) to agents. Every entry is checked (an `OptionError`
 * names the field, e.g. `entries[1].agents[0].url`).
 *
 * @example
 * ```ts
 * import * as Discovery from "effect-orchestra/Discovery"
 *
 * export const discovery = Discovery.layerStatic([
 *   { concept: "weather", intent: "forecast", agents: [{ url: "http://127.0.0.1:8001/task", name: "meteo" }] },
 *   { concept: "weather", intent: "*", agents: { url: "http://127.0.0.1:8002/task" } }
 * ])
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layerStatic = (
  entries: ReadonlyArray<Entry>,
  options: { readonly name?: string | undefined } = {}
): Layer.Layer<Discovery, Input.OptionError> => Layer.effect(Discovery, Static.make(entries, options))

type Found = ReadonlyArray<Endpoint> | Endpoint | undefined | null

/**
 * Discovery on your own lookup (a registry client, a database query): behind its own
 * breaker, deadline and cache. A lookup that fails, throws (or dies), answers something
 * other than an Effect or answers an invalid endpoint is `Unavailable`, with what it failed
 * with or threw as the `cause` (and counts on the breaker, unless it failed with an
 * `InvalidRequest`: that query's fault); one that answers nothing is `NotFound`.
 *
 * @since 0.2.0
 * @category constructors
 */
export const make = <E>(
  lookup: (query: Query) => Effect.Effect<Found, E>,
  options: Options = {}
): Effect.Effect<Service, Input.OptionError, Scope.Scope> => Lookup.make(lookup, options)

/**
 * {@link make} as a layer.
 *
 * @since 0.2.0
 * @category layers
 */
export const layer = <E>(
  lookup: (query: Query) => Effect.Effect<Found, E>,
  options: Options = {}
): Layer.Layer<Discovery, Input.OptionError> => Layer.effect(Discovery, make(lookup, options))

/**
 * Discovery against an HTTP endpoint: `GET <url>?concept=...&intent=...` answering
 * `{ "agents": [{ "url", "name"?, "timeout"? }] }` (an empty list or a 404: not found). The
 * answer's body is bounded; everything else fails `Unavailable` and counts on the breaker, but
 * for a query the registry refuses as invalid (a 400, a 414: that query's fault).
 *
 * @since 0.2.0
 * @category layers
 */
export const layerHttp = (options: HttpOptions): Layer.Layer<Discovery, Input.OptionError, HttpClient.HttpClient> =>
  Layer.effect(Discovery, Http.make(options))
