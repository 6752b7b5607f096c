/**
 * The checks of what discovery is given: a caller's query (refused `NotFound`, naming the
 * field), the options of each layer (a misspelt key), and an endpoint (an entry written by
 * hand, or one a lookup answered), each read once into a plain value that is what is kept.
 *
 * @internal
 */
import { Effect, Result } from "effect"
import type { Endpoint, Query, Service } from "../Discovery.js"
import * as Input from "../Input.js"
import { discoveryPrefix, reservedName } from "../agent/names.js"
import * as Http from "../Model/http/options.js"
import { maxOwnLabelChars, wellFormed } from "../stats/labels.js"
import { type DiscoveryError, fail } from "./errors.js"

/**
 * Agents kept of a discovery's answer unless `maxAgents` says otherwise; a `Discovery` service
 * of the application's own, which has no such option, is held to it by the agents.
 *
 * @internal
 */
export const defaultMaxAgents = 10

/** Marks a service the library made (its answers bounded by its own `maxAgents`, or a static map's). */
const bounded: unique symbol = Symbol("effect-orchestra/Discovery/bounded")

/**
 * A service of the library's own: its answers are bounded already (`maxAgents`, or the agents a
 * static map was given), so the agents take them whole. A copy (`{ ...service }`) is not marked.
 *
 * @internal
 */
export const ownService = <S extends Service>(service: S): S =>
  Object.defineProperty(service, bounded, { value: true, enumerable: false })

/**
 * Whether `service` is one of the library's own ({@link ownService}).
 *
 * @internal
 */
export const isOwnService = (service: Service): boolean => (service as { readonly [bounded]?: true })[bounded] === true

/** The key of a query in a cache or a static map. */
export const keyOf = (query: Query): string => JSON.stringify([query.concept, query.intent])

const queryFields = ["concept", "intent"] as const

/** The longest `concept` or `intent` (as a task's): each is a key of the cache and a part of the registry's URL. */
export const maxQueryLength = 1_000

/**
 * The caller's query, read once into a plain one: a field that is no string (a value without a
 * prototype, which `String` threw on at the caller), an empty or a huge one (a million characters
 * kept as a cache key, `capacity` times), or a getter that throws is refused, named.
 */
export const checkQuery = (query: Query): Effect.Effect<Query, DiscoveryError> => {
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

/** The keys of a static map's entry. */
export const entryKeys: ReadonlySet<string> = new Set(["concept", "intent", "agents"])

/** The longest name of a discovery: `discovery:<name>` labels the series of its tasks' records and of its breaker. */
const maxNameLength = maxOwnLabelChars - discoveryPrefix.length

/**
 * A discovery's `name` (`fallback` when none is given): a longer one than {@link maxNameLength} would count its
 * tasks and its breaker under `"(other)"`, with no word said, as a domain's too long name would.
 */
export const checkName = (given: unknown, fallback: string): Input.Checked<string> =>
  Result.flatMap(Http.nonEmpty("name", Input.orDefault(given, fallback)), (name) =>
    name.length > maxNameLength
      ? Result.fail({
          path: "name",
          message: `expected at most ${maxNameLength} characters, got ${name.length.toLocaleString("en-US")}: ${discoveryPrefix}<name> labels the series of its tasks and of its breaker, and a longer label has none of its own`
        })
      : wellFormed(name, "name")
  )

/** The keys of `Options`. */
export const optionKeys: ReadonlySet<string> = new Set([
  "name",
  "ttl",
  "staleFor",
  "capacity",
  "timeout",
  "breaker",
  "maxAgents",
  "maxConcurrentLookups"
])

/** The keys of `HttpOptions`. */
export const httpKeys: ReadonlySet<string> = new Set([...optionKeys, "url", "maxResponseBytes"])

/** The options' issue: not an object, or a key `known` lacks (a misspelt `tll`). */
export const optionsIssue = (options: unknown, known: ReadonlySet<string>): Input.Issue | undefined =>
  Input.notAnObject("options", options) ?? Input.unknownKey(options as object, known)

/**
 * A name written by hand (a static map's): one the agents' own records and series take (`unknown`, `(other)`,
 * `discovery:...`), which the agent would be named by its URL instead of, or one no label can hold, whose every task
 * would end `service_unavailable`, is refused where it is given. A lookup's answer (a registry's choice) is named by
 * its URL at call time.
 */
const handName = (path: string, name: string): Input.Checked<string> => {
  const reserved = reservedName(name)
  return reserved === undefined ? wellFormed(name, path) : Result.fail({ path, message: `reserved: ${reserved}` })
}

/**
 * `strict`: a field of no endpoint's, or a name no agent may take, is refused (entries written by hand; a lookup's
 * answer may carry fields of its own, and its names are the registry's).
 * The endpoint is read once into a plain one, which is what is checked and kept: the caller's object
 * (a lookup's catalog entry, updated in place; a getter) changed later changes no answer.
 */
export const checkEndpoint = (path: string, input: unknown, strict = false): Input.Checked<Endpoint> => {
  if (typeof input !== "object" || input === null) return Result.fail({ path, message: "expected { url, name? }" })
  const unknown = strict ? Input.unknownKey(input, endpointKeys, `${path}.`) : undefined
  if (unknown !== undefined) return Result.fail(unknown)
  const { url, name, timeout } = input as Endpoint
  return Result.map(
    Input.all([
      Http.baseUrl(`${path}.url`, url, "an endpoint takes none (HttpAgent.agent takes them as a Redacted header)"),
      name === undefined
        ? Result.succeed(undefined)
        : strict
          ? Result.flatMap(Http.nonEmpty(`${path}.name`, name), (n) => handName(`${path}.name`, n))
          : Http.nonEmpty(`${path}.name`, name),
      timeout === undefined ? Result.succeed(undefined) : Input.duration(`${path}.timeout`, timeout)
    ]),
    (): Endpoint => ({
      url,
      ...(name === undefined ? {} : { name }),
      ...(timeout === undefined ? {} : { timeout })
    })
  )
}
