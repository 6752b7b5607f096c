/**
 * Discovery on a lookup (`Discovery.make`): its options checked, then each query's lookup
 * behind a breaker of its own, a deadline and a cache, with stale-if-error from the last good
 * answers and a bound on the lookups in flight.
 *
 * @internal
 */
import { Cache, Clock, Duration, Effect, Exit, Result, Semaphore } from "effect"
import { type AiError, isAiError, ModelError, TimeoutError } from "../AiError.js"
import * as CircuitBreaker from "../CircuitBreaker.js"
import type { Endpoint, Options, Query, Service } from "../Discovery.js"
import * as Input from "../Input.js"
import {
  checkEndpoint,
  checkName,
  checkQuery,
  defaultMaxAgents,
  keyOf,
  optionKeys,
  optionsIssue,
  ownService
} from "./checks.js"
import { type DiscoveryError, fail, notFound } from "./errors.js"

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
 * `lookup` is the user's: whatever it answers (`Discovery.make` types it as agents, one agent or
 * none) is checked here, so it is taken as `unknown`.
 *
 * @internal
 */
export const make = Effect.fnUntraced(function* <E>(
  lookup: (query: Query) => Effect.Effect<unknown, E>,
  options: Options
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
      checkName(options.name, "discovery"),
      Input.duration("ttl", Input.orDefault(options.ttl, "1 minute")),
      Input.positiveInt("capacity", Input.orDefault(options.capacity, 1000)),
      Input.duration("timeout", Input.orDefault(options.timeout, "5 seconds")),
      Input.duration("staleFor", Input.orDefault(options.staleFor, "10 minutes"), { allowZero: true }),
      Input.positiveInt("maxAgents", Input.orDefault(options.maxAgents, defaultMaxAgents)),
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
    Effect.suspend((): Effect.Effect<unknown, ModelError> => {
      const answer: unknown = lookup(query)
      if (Effect.isEffect(answer)) {
        return Effect.mapError(answer as Effect.Effect<unknown, E>, (error) => lookupError("failed", error))
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
        Effect.flatMap((found) => (found.length === 0 ? Effect.fail(notFound(q)) : Effect.succeed(found)))
      )
    })

  const service: Service = ownService({ name, resolve: Effect.fn("Discovery.resolve")(resolve) })
  return service
})
