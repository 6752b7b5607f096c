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
import { Cache, Clock, Context, Duration, Effect, Exit, Layer, Result, Schema, Semaphore } from "effect"
import { HttpClientRequest } from "effect/http"
import { type AiError, isAiError, ModelError, TimeoutError } from "./AiError.js"
import * as CircuitBreaker from "./CircuitBreaker.js"
import * as Input from "./Input.js"
import * as Client from "./Model/http/client.js"
import * as Decode from "./Model/http/decode.js"
import * as Http from "./Model/http/options.js"
import { wellFormed } from "./stats/labels.js"

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

/**
 * @since 0.2.0
 * @category models
 */
export const DiscoveryErrorReason = Schema.Literals(["NotFound", "Unavailable"])

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
export class DiscoveryError extends Schema.TaggedError<DiscoveryError>("effect-orchestra/DiscoveryError")(
  "DiscoveryError",
  {
    reason: DiscoveryErrorReason,
    concept: Schema.String,
    intent: Schema.String,
    message: Schema.String,
    cause: Schema.optional(Schema.Defect())
  }
) {}

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
  /** Name in errors and the breaker key `discovery:<name>`. Default `"discovery"`. */
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

const keyOf = (query: Query): string => JSON.stringify([query.concept, query.intent])

const fail = (query: Query, reason: "NotFound" | "Unavailable", message: string, cause?: unknown) =>
  new DiscoveryError({
    reason,
    concept: String(query.concept),
    intent: String(query.intent),
    message,
    ...(cause === undefined ? {} : { cause })
  })

// Quoted as JSON, as a task's record says it: a quote or a line break of the caller's cannot forge it.
const notFoundMessage = (query: Query): string =>
  `no agent for concept ${JSON.stringify(query.concept)} and intent ${JSON.stringify(query.intent)}`

const queryFields = ["concept", "intent"] as const

/** The longest `concept` or `intent` (as a task's): each is a key of the cache and a part of the registry's URL. */
const maxQueryLength = 1_000

// The caller's query, read once into a plain one: a field that is no string (a value without a
// prototype, which `String` threw on at the caller), an empty or a huge one (a million characters
// kept as a cache key, `capacity` times), or a getter that throws is refused, named.
const checkQuery = (query: Query): Effect.Effect<Query, DiscoveryError> => {
  const read = { concept: "", intent: "" }
  const refuse = (message: string) => Effect.fail(fail(read, "NotFound", message))
  if (typeof query !== "object" || query === null) {
    return refuse(`invalid query: expected { concept, intent }, got ${Input.shown(query)}`)
  }
  for (const field of queryFields) {
    let value: unknown
    try {
      value = query[field]
    } catch (thrown) {
      return refuse(`invalid query.${field}: expected a string, but reading it threw: ${Input.thrownMessage(thrown)}`)
    }
    if (typeof value !== "string") return refuse(`invalid query.${field}: expected a string, got ${Input.shown(value)}`)
    if (value.length === 0 || value.length > maxQueryLength) {
      return refuse(`invalid query.${field}: expected 1 to ${maxQueryLength} characters, got ${value.length}`)
    }
    read[field] = value
  }
  return Effect.succeed(read)
}

const endpointKeys: ReadonlySet<string> = new Set(["url", "name", "timeout"])
const entryKeys: ReadonlySet<string> = new Set(["concept", "intent", "agents"])
const optionKeys: ReadonlySet<string> = new Set([
  "name",
  "ttl",
  "staleFor",
  "capacity",
  "timeout",
  "breaker",
  "maxAgents",
  "maxConcurrentLookups"
])
const httpKeys: ReadonlySet<string> = new Set([...optionKeys, "url", "maxResponseBytes"])

/** The options' issue: not an object, or a key `known` lacks (a misspelt `tll`). */
const optionsIssue = (options: unknown, known: ReadonlySet<string>): Input.Issue | undefined =>
  Input.notAnObject("options", options) ?? Input.unknownKey(options as object, known)

/**
 * `strict`: a field of no endpoint's is refused (entries written by hand; a lookup's answer may carry its own).
 * The endpoint is read once into a plain one, which is what is checked and kept: the caller's object
 * (a lookup's catalog entry, updated in place; a getter) changed later changes no answer.
 */
const checkEndpoint = (path: string, input: unknown, strict = false): Input.Checked<Endpoint> => {
  if (typeof input !== "object" || input === null) return Result.fail({ path, message: "expected { url, name? }" })
  const unknown = strict ? Input.unknownKey(input, endpointKeys, `${path}.`) : undefined
  if (unknown !== undefined) return Result.fail(unknown)
  const { url, name, timeout } = input as Endpoint
  return Result.map(
    Input.all([
      Http.baseUrl(`${path}.url`, url, "an endpoint takes none (HttpAgent.agent takes them as a Redacted header)"),
      name === undefined ? Result.succeed(undefined) : Http.nonEmpty(`${path}.name`, name),
      timeout === undefined ? Result.succeed(undefined) : Input.duration(`${path}.timeout`, timeout)
    ]),
    (): Endpoint => ({
      url,
      ...(name === undefined ? {} : { name }),
      ...(timeout === undefined ? {} : { timeout })
    })
  )
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
): Layer.Layer<Discovery, Input.OptionError> =>
  Layer.effect(
    Discovery,
    Effect.gen(function* () {
      if (!Array.isArray(entries)) {
        return yield* Input.orOptionError(Result.fail({ path: "entries", message: "expected an array of entries" }))
      }
      const wrong = optionsIssue(options, new Set(["name"]))
      if (wrong !== undefined) return yield* Input.orOptionError(Result.fail(wrong))
      const name = yield* Input.orOptionError(
        Result.flatMap(Http.nonEmpty("name", Input.orDefault(options.name, "static")), (n) => wellFormed(n, "name"))
      )
      const table = new Map<string, ReadonlyArray<Endpoint>>()
      for (const [i, entry] of entries.entries()) {
        const at = `entries[${i}]`
        const unknown =
          typeof entry === "object" && entry !== null ? Input.unknownKey(entry, entryKeys, `${at}.`) : undefined
        if (unknown !== undefined) return yield* Input.orOptionError(Result.fail(unknown))
        yield* Input.orOptionError(Http.nonEmpty(`${at}.concept`, entry?.concept))
        yield* Input.orOptionError(Http.nonEmpty(`${at}.intent`, entry?.intent))
        const given: unknown = entry.agents
        const agents: ReadonlyArray<unknown> = Array.isArray(given) ? given : [given]
        if (agents.length === 0 || typeof given !== "object" || given === null) {
          return yield* Input.orOptionError(
            Result.fail({
              path: `${at}.agents`,
              message: "expected an agent { url, name? } or a non-empty array of them"
            })
          )
        }
        const checked: Array<Endpoint> = []
        for (const [j, agent] of agents.entries()) {
          checked.push(yield* Input.orOptionError(checkEndpoint(`${at}.agents[${j}]`, agent, true)))
        }
        table.set(keyOf(entry), [...(table.get(keyOf(entry)) ?? []), ...checked])
      }
      const resolve = (query: Query) =>
        Effect.flatMap(checkQuery(query), (q) => {
          const found = table.get(keyOf(q)) ?? table.get(keyOf({ concept: q.concept, intent: "*" }))
          return found === undefined ? Effect.fail(fail(q, "NotFound", notFoundMessage(q))) : Effect.succeed(found)
        })
      return Discovery.of({ name, resolve })
    })
  )

type Found = ReadonlyArray<Endpoint> | Endpoint | undefined | null

const DETAIL_MAX = 300

// What a lookup failed with, for the message: an `Error`'s or an error object's `message`, or a
// string; bounded (it is the user's), and never a throw (a `message` getter that throws).
const detailOf = (cause: unknown): string => {
  let detail: unknown
  try {
    detail =
      typeof cause === "string"
        ? cause
        : typeof cause === "object" && cause !== null && "message" in cause
          ? cause.message
          : undefined
  } catch {
    return ""
  }
  if (typeof detail !== "string" || detail.length === 0) return ""
  return ` (${detail.length > DETAIL_MAX ? `${Input.wholePrefix(detail, DETAIL_MAX)}…` : detail})`
}

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
export const make = Effect.fnUntraced(function* <E>(
  lookup: (query: Query) => Effect.Effect<Found, E>,
  options: Options = {}
) {
  if (typeof lookup !== "function") {
    return yield* Input.orOptionError(
      Result.fail({ path: "lookup", message: "expected a function (query) => Effect of the agents" })
    )
  }
  const wrong = optionsIssue(options, optionKeys)
  if (wrong !== undefined) return yield* Input.orOptionError(Result.fail(wrong))
  const [name, ttl, capacity, timeout, staleFor, maxAgents, maxConcurrentLookups] = yield* Input.orOptionError(
    Input.all([
      // The label `agent="discovery:<name>"` and the breaker key.
      Result.flatMap(Http.nonEmpty("name", Input.orDefault(options.name, "discovery")), (n) => wellFormed(n, "name")),
      Input.duration("ttl", Input.orDefault(options.ttl, "1 minute")),
      Input.positiveInt("capacity", Input.orDefault(options.capacity, 1000)),
      Input.duration("timeout", Input.orDefault(options.timeout, "5 seconds")),
      Input.duration("staleFor", Input.orDefault(options.staleFor, "10 minutes"), { allowZero: true }),
      Input.positiveInt("maxAgents", Input.orDefault(options.maxAgents, 10)),
      Input.positiveInt("maxConcurrentLookups", Input.orDefault(options.maxConcurrentLookups, 10))
    ])
  )
  // A batch of tasks on distinct concepts would otherwise send the registry as many requests at once.
  const lookups = yield* Semaphore.make(maxConcurrentLookups)
  // The last answer of each query and when it came, for stale-if-error (at most `capacity`,
  // the oldest written dropped first).
  const lastGood = new Map<string, { readonly endpoints: ReadonlyArray<Endpoint>; readonly at: number }>()
  const servesStaleFor = Duration.toMillis(ttl) + Duration.toMillis(staleFor)
  const remember = (key: string, endpoints: ReadonlyArray<Endpoint>) =>
    Effect.map(Clock.currentTimeMillis, (at) => {
      lastGood.delete(key)
      lastGood.set(key, { endpoints, at })
      if (lastGood.size > capacity) lastGood.delete(lastGood.keys().next().value!)
      return endpoints
    })
  const breakerOptions: unknown = Input.orDefault(options.breaker, {})
  if (typeof breakerOptions !== "object" || breakerOptions === null || Array.isArray(breakerOptions)) {
    return yield* Input.orOptionError(
      Result.fail({ path: "breaker", message: "expected the breaker's options, such as { failMax: 5 }" })
    )
  }
  const breaker = yield* CircuitBreaker.makeMemory(breakerOptions as CircuitBreaker.Options).pipe(
    // The breaker's own option names, under `breaker.` (Discovery has a `timeout` of its own).
    Effect.mapError((error) => Input.underPath(error, "breaker."))
  )
  const breakerKey = `discovery:${name}`

  const lookupError = (how: string, cause?: unknown) =>
    new ModelError({
      // A query the registry refuses (a 400, a 414 for a huge concept) is that query's fault, not the
      // registry's: as `InvalidRequest` the breaker does not count it, so one caller's bad queries do
      // not open it for every other query.
      reason:
        isAiError(cause) && cause._tag === "ModelError" && cause.reason === "InvalidRequest"
          ? "InvalidRequest"
          : "Unavailable",
      message: `${name}: the lookup ${how}${detailOf(cause)}`,
      provider: name,
      ...(cause === undefined ? {} : { cause })
    })

  const attempt = (query: Query): Effect.Effect<ReadonlyArray<Endpoint>, AiError> =>
    Effect.suspend((): Effect.Effect<Found, ModelError> => {
      const answer: unknown = lookup(query)
      if (Effect.isEffect(answer)) {
        return Effect.mapError(answer as Effect.Effect<Found, E>, (error) => lookupError("failed", error))
      }
      const thenable = typeof (answer as PromiseLike<unknown> | null)?.then === "function"
      // Its rejection would otherwise be unhandled: the answer is refused either way.
      if (thenable) Promise.resolve(answer).catch(() => undefined)
      const what = thenable ? "a Promise (wrap it in Effect.tryPromise)" : Input.kindOf(answer)
      return Effect.fail(lookupError(`answered ${what}, not an Effect`))
    }).pipe(
      Effect.flatMap((found): Effect.Effect<ReadonlyArray<Endpoint>, ModelError> => {
        // Bounded before it is checked: a registry may answer thousands (an unfiltered list).
        const list: ReadonlyArray<unknown> =
          found === undefined || found === null ? [] : Array.isArray(found) ? found.slice(0, maxAgents) : [found]
        const endpoints: Array<Endpoint> = []
        for (const [i, endpoint] of list.entries()) {
          const checked = checkEndpoint(`agents[${i}]`, endpoint)
          if (Result.isFailure(checked)) {
            return Effect.fail(
              new ModelError({
                reason: "Decode",
                message: `${name} answered an invalid agent: ${checked.failure.path}: ${checked.failure.message}`,
                provider: name,
                field: checked.failure.path
              })
            )
          }
          endpoints.push(checked.success)
        }
        return Effect.succeed(endpoints)
      }),
      // User code throwing (the lookup, or a getter of what it answered) is its failure, not ours.
      Effect.catchDefect((defect) => Effect.fail(lookupError("threw", defect))),
      Effect.timeoutOrElse({
        duration: timeout,
        orElse: () => Effect.fail(new TimeoutError({ limit: "request", timeout, provider: name }))
      })
    )

  const cache = yield* Cache.makeWith(
    (key: string) => {
      const [concept, intent] = JSON.parse(key) as [string, string]
      return lookups.withPermit(
        breaker.execute(
          breakerKey,
          Effect.flatMap(attempt({ concept, intent }), (endpoints) => {
            if (endpoints.length > 0 && Duration.toMillis(staleFor) > 0) return remember(key, endpoints)
            // "None" is the last answer now: a later failure must not bring back agents the registry dropped.
            lastGood.delete(key)
            return Effect.succeed(endpoints)
          })
        )
      )
    },
    {
      capacity,
      timeToLive: (exit) => (Exit.isSuccess(exit) && exit.value.length > 0 ? ttl : Duration.zero)
    }
  )

  const resolve = (query: Query): Effect.Effect<ReadonlyArray<Endpoint>, DiscoveryError> =>
    Effect.flatMap(checkQuery(query), (q) => {
      const key = keyOf(q)
      return Cache.get(cache, key).pipe(
        Effect.catch((error) =>
          Effect.flatMap(Clock.currentTimeMillis, (now) => {
            const known = lastGood.get(key)
            return known !== undefined && now - known.at <= servesStaleFor
              ? Effect.succeed(known.endpoints)
              : Effect.fail(
                  fail(
                    q,
                    "Unavailable",
                    `discovery is unavailable: ${error.message}`,
                    error._tag === "ModelError" && error.cause !== undefined ? error.cause : error
                  )
                )
          })
        ),
        Effect.flatMap((found) =>
          found.length === 0 ? Effect.fail(fail(q, "NotFound", notFoundMessage(q))) : Effect.succeed(found)
        )
      )
    })

  return Discovery.of({ name, resolve: Effect.fn("Discovery.resolve")(resolve) })
})

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

const Answer = Schema.Struct({
  agents: Schema.Array(
    Schema.Struct({
      url: Schema.String,
      name: Schema.optional(Schema.String),
      timeout: Schema.optional(Schema.Union([Schema.Number, Schema.String]))
    })
  )
})

/**
 * Discovery against an HTTP endpoint: `GET <url>?concept=...&intent=...` answering
 * `{ "agents": [{ "url", "name"?, "timeout"? }] }` (an empty list or a 404: not found). The
 * answer's body is bounded; everything else fails `Unavailable` and counts on the breaker, but
 * for a query the registry refuses as invalid (a 400, a 414: that query's fault).
 *
 * @since 0.2.0
 * @category layers
 */
export const layerHttp = (options: HttpOptions) =>
  Layer.effect(
    Discovery,
    Effect.gen(function* () {
      if (typeof options !== "object" || options === null) {
        return yield* Input.orOptionError(Result.fail({ path: "options", message: "expected { url }" }))
      }
      const wrong = optionsIssue(options, httpKeys)
      if (wrong !== undefined) return yield* Input.orOptionError(Result.fail(wrong))
      // Checked as a base URL is, but asked as given: a base URL loses its trailing slash (paths are
      // appended to it), and `/discover/` is another route than `/discover` to many servers.
      yield* Input.orOptionError(Http.baseUrl("url", options.url, "the registry is asked without credentials"))
      const url = options.url.trim()
      const [timeout, maxResponseBytes] = yield* Input.orOptionError(
        Input.all([
          Input.duration("timeout", Input.orDefault(options.timeout, "5 seconds")),
          Input.positiveInt("maxResponseBytes", Input.orDefault(options.maxResponseBytes, 1024 * 1024))
        ])
      )
      const name = Input.orDefault(options.name, "discovery")
      const client = yield* Client.make({
        timeout,
        streamIdleTimeout: timeout,
        maxResponseBytes,
        maxEventBytes: maxResponseBytes
      })
      const decode = Decode.valueDecoder(Answer)
      const lookup = (query: Query) =>
        client
          .json(
            HttpClientRequest.get(url).pipe(
              HttpClientRequest.setUrlParams({ concept: query.concept, intent: query.intent }),
              HttpClientRequest.acceptJson
            ),
            decode,
            { provider: name }
          )
          .pipe(
            // Each endpoint is checked by `make` (a bad duration is an invalid answer).
            Effect.map((answer): Found => answer.agents as ReadonlyArray<Endpoint>),
            Effect.catchIf(
              (error) => error._tag === "ModelError" && error.status === 404,
              () => Effect.succeed<Found>([])
            )
          )
      const { url: _url, maxResponseBytes: _max, ...rest } = options
      return yield* make(lookup, rest)
    })
  )
