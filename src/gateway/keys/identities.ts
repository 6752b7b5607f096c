/**
 * Who a request is: a bearer secret to its key's record through a short cache (Redis), the refusals
 * of a key (none, disabled, shadowed by the configuration, unreadable), and the record a `KeyContext`
 * spends by now.
 *
 * @internal
 */
import { Effect, Redacted, Result } from "effect"
import type * as Gateway from "../../Gateway.js"
import type { StoreError } from "../../Redis.js"
import { type GatewayError, gatewayError } from "../errors.js"
import { notFound, unreadable, unreadableBudget } from "./failures.js"
import type { KeyContext } from "./KeyStore.js"
import type { Backend, Budgets, UnreadableCounter, UnreadableRecord } from "./ledger.js"
import { id as checkId, type KeyRecord, type Resolved } from "./options.js"
import { hash } from "./secret.js"

const cacheCapacity = 10_000
/** How long past its cache's life a record read from Redis still lets a KeyContext made from it spend. */
const spendGraceMs = 1000

/**
 * @internal
 */
export const make = (deps: {
  readonly resolved: Resolved
  readonly backend: Backend
  readonly now: () => number
  readonly configById: ReadonlyMap<string, KeyRecord>
  readonly configByHash: ReadonlyMap<string, KeyRecord>
  readonly unavailable: (what: "key" | "budget") => GatewayError
}) => {
  const { resolved, backend, now, configById, configByHash, unavailable } = deps
  const contexts = new WeakMap<KeyRecord, KeyContext>()
  const records = new WeakMap<object, KeyRecord>()
  const budgetsOf = (record: KeyRecord): Budgets => ({
    key: record.budget,
    team: record.team === undefined ? undefined : resolved.teams.get(record.team),
    models: record.modelBudgets
  })
  const contextOf = (record: KeyRecord): KeyContext => {
    let found = contexts.get(record)
    if (found === undefined) {
      found = {
        id: record.id,
        name: record.name,
        team: record.team,
        allowedModels: record.allowedModels,
        rpm: record.rpm,
        tpm: record.tpm,
        budgets: budgetsOf(record)
      }
      contexts.set(record, found)
      records.set(found, record)
    }
    return found
  }

  // Keys found and tokens found to be no key are remembered apart: a flood of wrong tokens (each
  // one a store read) evicts only earlier wrong tokens, never a key that stays usable from here
  // while the store is down.
  type Cached = { readonly record: KeyRecord | undefined; readonly until: number }
  const cache = new Map<string, Cached>()
  const unknown = new Map<string, Cached>()
  const forget = (sha256: string) => {
    cache.delete(sha256)
    unknown.delete(sha256)
  }
  const remember = (sha256: string, record: KeyRecord | undefined) => {
    cache.delete(sha256)
    unknown.delete(sha256)
    const into = record === undefined ? unknown : cache
    if (into.size >= cacheCapacity) {
      const oldest = into.keys().next()
      if (!oldest.done) into.delete(oldest.value)
    }
    into.set(sha256, { record, until: now() + resolved.cacheTtlMs })
  }

  const unauthorized = () => gatewayError("Unauthorized", "Incorrect API key provided", { code: "invalid_api_key" })

  const disabledKey = (record: KeyRecord) =>
    gatewayError("Unauthorized", `The API key "${record.prefix ?? record.id}" is disabled`, { code: "key_disabled" })

  // A created key whose id the configuration defines since: admins can neither see nor disable it, and
  // it would spend on the configured key's counters by its own budgets. Refused, and said in the log once.
  const shadowed = (record: KeyRecord): Effect.Effect<never, GatewayError> => {
    const failure = Effect.fail(disabledKey(record))
    const name = `shadowed\u0000${record.id}`
    if (reported.has(name) || reported.size >= 1000) return failure
    reported.add(name)
    return Effect.andThen(
      Effect.logError(
        `gateway: the key store holds a created key "${record.id}" whose id the configuration now defines; its secret is refused until the configuration's key is renamed`
      ),
      failure
    )
  }
  const isShadowed = (record: KeyRecord) => {
    const configured = configById.get(record.id)
    return configured !== undefined && configured !== record
  }

  // Why a record may not be used (no such key, disabled, shadowed by the configuration), or undefined.
  const refusalOf = (record: KeyRecord | undefined): Effect.Effect<never, GatewayError> | undefined =>
    record === undefined
      ? Effect.fail(unauthorized())
      : record.disabled
        ? Effect.fail(disabledKey(record))
        : isShadowed(record)
          ? shadowed(record)
          : undefined

  const accept = (record: KeyRecord | undefined): Effect.Effect<KeyContext, GatewayError> =>
    refusalOf(record) ?? Effect.succeed(contextOf(record!))

  const usable = (record: KeyRecord | undefined): Effect.Effect<KeyRecord, GatewayError> =>
    refusalOf(record) ?? Effect.succeed(record!)

  // The record of a secret's hash as this store has it now: Redis is asked once the cache's is older than cacheTtl.
  const byHash = <A>(
    sha256: string,
    then: (record: KeyRecord | undefined) => Effect.Effect<A, GatewayError>
  ): Effect.Effect<A, GatewayError> => {
    const cached = backend.local ? undefined : (cache.get(sha256) ?? unknown.get(sha256))
    if (cached !== undefined && cached.until > now()) return then(cached.record)
    return Effect.matchEffect(backend.byHash(sha256), {
      onSuccess: (record) => {
        if (!backend.local) remember(sha256, record)
        return then(record)
      },
      // A key seen before stays usable while the store is down; an unknown one cannot be told from a wrong one.
      onFailure: (error) =>
        error._tag !== "UnreadableRecord" && cached?.record !== undefined
          ? then(cached.record)
          : directoryFailure(error)
    })
  }

  const authenticate = (bearer: Redacted.Redacted<string> | undefined): Effect.Effect<KeyContext, GatewayError> => {
    if (bearer === undefined) {
      return Effect.fail(
        gatewayError("Unauthorized", "Missing API key: send it as 'Authorization: Bearer <key>'", {
          code: "missing_api_key"
        })
      )
    }
    const secret = Redacted.value(bearer)
    if (secret.length === 0 || secret.length > 1024) return Effect.fail(unauthorized())
    const sha256 = hash(secret)
    const configured = configByHash.get(sha256)
    if (configured !== undefined) return accept(configured)
    return byHash(sha256, accept)
  }

  // Said once per id in the log (a client retrying its key would repeat it for ever), and to every caller.
  const reported = new Set<string>()
  const failUnreadable = (error: UnreadableRecord): Effect.Effect<never, GatewayError> => {
    const failure = Effect.fail(unreadable(error.id))
    const id = error.id ?? "(no id)"
    if (reported.has(id) || reported.size >= 1000) return failure
    reported.add(id)
    return Effect.andThen(
      Effect.logError(
        `gateway: the key store holds a record for the key "${id}" that this version cannot read (edited by hand, or written by a newer version); its holder is answered 500 until it is replaced`
      ),
      failure
    )
  }
  const directoryFailure = (error: StoreError | UnreadableRecord): Effect.Effect<never, GatewayError> =>
    error._tag === "UnreadableRecord" ? failUnreadable(error) : Effect.fail(unavailable("key"))

  // A budget counter that cannot be read: said once per counter in the log, with where it is kept.
  const reportCounter = (error: UnreadableCounter): Effect.Effect<void> => {
    const name = `budget\u0000${error.key}`
    if (reported.has(name) || reported.size >= 1000) return Effect.void
    reported.add(name)
    const { scope, scopeId } = error.counter
    return Effect.logError(
      `gateway: the key store holds the budget of the ${scope} "${scopeId}" (${error.key}) with a spent or held amount that is not a whole number of 0 or more, or of another type (edited by hand, or written by another version); the requests charged to it are answered 500 until it is mended or removed`
    )
  }
  // Refused, whatever onStoreError says: a budget that cannot be read is no outage, and is not read as unspent.
  const failCounter = (error: UnreadableCounter): Effect.Effect<never, GatewayError> =>
    Effect.andThen(reportCounter(error), Effect.fail(unreadableBudget(error.counter.scope, error.counter.scopeId)))
  const budgetFailure = (error: StoreError | UnreadableCounter): Effect.Effect<never, GatewayError> =>
    error._tag === "UnreadableCounter" ? failCounter(error) : Effect.fail(unavailable("budget"))

  const findById = (id: string): Effect.Effect<KeyRecord, GatewayError> => {
    if (Result.isFailure(checkId("id", id))) return Effect.fail(notFound(String(id).slice(0, 64)))
    const configured = configById.get(id)
    if (configured !== undefined) return Effect.succeed(configured)
    return backend.byId(id).pipe(
      Effect.catch(directoryFailure),
      Effect.flatMap((record) => (record === undefined ? Effect.fail(notFound(id)) : Effect.succeed(record)))
    )
  }

  // Whether the record a KeyContext was made from is still the key's: one of the configuration never
  // changes; a local store's is its record now; one read from Redis, while it is the last read of its
  // key here (a disable through this store forgets it at once) and at most cacheTtl + spendGraceMs old,
  // so that the gateway's own authenticate -> reserve never asks Redis twice, even with cacheTtl 0.
  const current = (record: KeyRecord): boolean => {
    // By identity, not `source`: a stored record may say anything of itself (edited by hand).
    if (configById.get(record.id) === record) return true
    if (backend.local) return backend.current !== undefined && backend.current(record.sha256) === record
    const cached = cache.get(record.sha256)
    return cached !== undefined && cached.record === record && now() < cached.until + spendGraceMs
  }

  // A KeyContext spends by its key's record now: the gateway hands back what `authenticate` gave (its
  // record current), but an application may build its own, or keep one across a disable of its key.
  const recordOf = (key: Gateway.KeyContext): Effect.Effect<KeyRecord, GatewayError> => {
    const found = records.get(key)
    if (found !== undefined) return current(found) ? usable(found) : byHash(found.sha256, usable)
    // Only a key the store does not have is a wrong one: a store that did not answer is an outage.
    return Effect.flatMap(
      Effect.mapError(findById(key.id), (error) => (error.reason === "NotFound" ? unauthorized() : error)),
      usable
    )
  }

  return {
    records,
    budgetsOf,
    contextOf,
    forget,
    unauthorized,
    disabledKey,
    authenticate,
    failUnreadable,
    directoryFailure,
    reportCounter,
    failCounter,
    budgetFailure,
    findById,
    recordOf
  }
}
