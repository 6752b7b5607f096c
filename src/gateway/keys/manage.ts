/**
 * The key store's admin operations: create a key (its secret made here and returned once),
 * list and read keys (never a secret or a hash), disable, enable or delete a created key, and read
 * each budget of a key in its current period.
 *
 * @internal
 */
import { Effect, Result } from "effect"
import type { Models } from "../../Gateway.js"
import * as Input from "../../Input.js"
import { type GatewayError, gatewayError } from "../errors.js"
import { notFound } from "./failures.js"
import type { Created, KeyInfo, KeyPage, ListOptions, SpendLine } from "./KeyStore.js"
import {
  type Backend,
  type Budgets,
  type Counter,
  countersFor,
  retime,
  type Level,
  shown,
  type UnreadableCounter,
  type UnreadableRecord,
  windowEnd
} from "./ledger.js"
import type { StoreError } from "../../Redis.js"
import { createRequest, id as checkId, type KeyRecord, policyModels, type Resolved, unknownTeam } from "./options.js"
import { generate, randomId } from "./secret.js"

/**
 * What the admin operations share with the rest of the store.
 *
 * @internal
 */
export interface Deps {
  readonly resolved: Resolved
  /** The names the gateways serve (`undefined` until one starts): a new key's must be among them. */
  readonly served: () => Models | undefined
  readonly backend: Backend
  readonly now: () => number
  readonly configById: ReadonlyMap<string, KeyRecord>
  readonly findById: (id: string) => Effect.Effect<KeyRecord, GatewayError>
  /** A directory's failure as the gateway's (a stored record it cannot read is said in the log once). */
  readonly directoryFailure: (error: StoreError | UnreadableRecord) => Effect.Effect<never, GatewayError>
  /** The store could not be reached in time: a 503 whose `Retry-After` is when it is probed again. */
  readonly unavailable: (what: "key") => GatewayError
  /** A ledger's failure as the gateway's (a budget counter it cannot read is said in the log once). */
  readonly budgetFailure: (error: StoreError | UnreadableCounter) => Effect.Effect<never, GatewayError>
  /** Says in the log, once each, the stored keys that cannot be read. */
  readonly reportUnreadable: (ids: ReadonlyArray<string>) => Effect.Effect<void>
  readonly budgetsOf: (record: KeyRecord) => Budgets
  /** Shows a level read on the gauges of its budget (a lease may have ended since they were set). */
  readonly refreshGauge: (counter: Counter, level: Level) => void
  /** Drops what the authentication cache holds for a secret's hash. */
  readonly forget: (sha256: string) => void
  /** Removes a key's series of the remaining budgets (disabled, it is charged no more here). */
  readonly forgetGauges: (keyId: string) => void
  /** A key enabled or created: its requests show it in the series again. */
  readonly rememberGauges: (keyId: string) => void
}

const defaultLimit = 100
const maxLimit = 1000

const invalidLimit = (limit: unknown) =>
  gatewayError(
    "InvalidRequest",
    `invalid limit: expected a whole number from 1 to ${maxLimit}, got ${Input.shown(limit)}`,
    { param: "limit" }
  )

/**
 * @internal
 */
export const make = (deps: Deps) => {
  const { resolved, backend, now, configById, findById, budgetsOf } = deps

  const info = (record: KeyRecord): KeyInfo => ({
    id: record.id,
    name: record.name,
    prefix: record.prefix,
    team: record.team,
    allowedModels: record.allowedModels,
    rpm: record.rpm,
    tpm: record.tpm,
    budget: record.budget,
    modelBudgets: record.modelBudgets,
    disabled: record.disabled,
    createdAt: record.source === "config" ? undefined : new Date(record.createdAt).toISOString(),
    source: record.source
  })

  // The counters of a key's own budgets and of its budgets by model (its team's are its team's).
  const ownCounters = (record: KeyRecord) =>
    countersFor(record.id, undefined, { key: record.budget, models: record.modelBudgets }, undefined, now())

  const inConfiguration = (id: string) =>
    gatewayError("Forbidden", `The key "${id}" is defined in the configuration: change it there`, {
      param: "id",
      code: "key_in_configuration"
    })

  const create = (input: unknown): Effect.Effect<Created, GatewayError> =>
    Effect.suspend(() => {
      const checked = createRequest(input, `key-${randomId(12)}`)
      if (Result.isFailure(checked)) {
        const { path, message } = checked.failure
        return Effect.fail(gatewayError("InvalidRequest", `invalid ${path}: ${message}`, { param: path }))
      }
      const team = checked.success.policy.team
      if (team !== undefined && !resolved.teamNames.has(team)) {
        return Effect.fail(
          gatewayError("InvalidRequest", `invalid team: ${unknownTeam(team, resolved.teamNames)}`, { param: "team" })
        )
      }
      const models = deps.served()
      const unknown = models === undefined ? undefined : policyModels(models, "", checked.success.policy)
      if (unknown !== undefined) {
        return Effect.fail(
          gatewayError("InvalidRequest", `invalid ${unknown.path}: ${unknown.message}`, { param: unknown.path })
        )
      }
      const id = checked.success.id
      const taken = () =>
        gatewayError("InvalidRequest", `A key with the id "${id}" exists`, {
          status: 409,
          param: "id",
          code: "key_exists"
        })
      if (configById.has(id)) return Effect.fail(taken())
      const secret = generate()
      const record: KeyRecord = {
        ...checked.success.policy,
        id,
        sha256: secret.sha256,
        prefix: secret.prefix,
        disabled: false,
        createdAt: now(),
        source: "store"
      }
      return backend.insert(record, resolved.maxKeys, ownCounters(record)).pipe(
        // A timed-out insert may still run (a hung store runs it on resume): the key would then exist
        // with a secret no one was shown, and a retry with its id is a 409. Name the id and the way out.
        Effect.mapError(() => {
          const error = deps.unavailable("key")
          return gatewayError(
            "Unavailable",
            `The key store did not answer in time: the key "${id}" may have been created all the same, its secret ` +
              "shown to no one. Read the key by its id once the store answers: if it exists, delete it and create " +
              "the key again",
            { param: "id", code: error.code, retryAfter: error.retryAfter }
          )
        }),
        Effect.flatMap((result) => {
          switch (result) {
            case "inserted":
              deps.rememberGauges(record.id)
              return Effect.succeed({ key: info(record), secret: secret.secret })
            case "id-taken":
              return Effect.fail(taken())
            // A valid request the store's state refuses (a 409, as an id taken): not the client's
            // mistake (400), and no 5xx that clients and monitors take for a failure to retry.
            case "full":
              return Effect.fail(
                gatewayError(
                  "InvalidRequest",
                  `The store holds its most keys (${resolved.maxKeys}): raise the key store's maxKeys to create more`,
                  { status: 409, code: "too_many_keys" }
                )
              )
            default:
              return Effect.fail(gatewayError("Internal", "a fresh secret collided with a stored one; try again"))
          }
        })
      )
    })

  // A page of the configuration's keys, then of the stored ones by id after them (those the
  // configuration shadows and those that cannot be read are skipped, the latter said in the log).
  const list = (options: ListOptions = {}): Effect.Effect<KeyPage, GatewayError> =>
    Effect.suspend(() => {
      const limit = options.limit ?? defaultLimit
      if (typeof limit !== "number" || !Number.isInteger(limit) || limit < 1 || limit > maxLimit) {
        return Effect.fail(invalidLimit(limit))
      }
      const after = options.after
      if (after !== undefined && Result.isFailure(checkId("after", after))) {
        return Effect.fail(
          gatewayError("InvalidRequest", "invalid after: expected the id of a key (the last of the page before)", {
            param: "after"
          })
        )
      }
      const out: Array<KeyInfo> = []
      // The configuration's keys come first: `after` one of them goes on from it.
      const configured = after === undefined ? 0 : resolved.keys.findIndex((k) => k.id === after) + 1
      const fromStored = after === undefined || configured > 0 ? undefined : (after as string)
      if (after === undefined || configured > 0) {
        for (let i = configured; i < resolved.keys.length && out.length <= limit; i++) out.push(info(resolved.keys[i]!))
      }
      let incomplete = false
      // One more than the page: whether it has more.
      const fill = (cursor: string | undefined): Effect.Effect<void, GatewayError> =>
        out.length > limit
          ? Effect.void
          : backend.page(cursor, limit + 1 - out.length).pipe(
              Effect.mapError(() => deps.unavailable("key")),
              Effect.tap(({ unreadable }) =>
                unreadable.length === 0 ? Effect.void : deps.reportUnreadable(unreadable)
              ),
              Effect.flatMap((page) => {
                const { records, last, more } = page
                if (page.incomplete === true) incomplete = true
                for (const record of records) if (!configById.has(record.id)) out.push(info(record))
                return more && last !== undefined ? fill(last) : Effect.void
              })
            )
      return Effect.map(fill(fromStored), () => ({
        data: out.slice(0, limit),
        hasMore: out.length > limit,
        ...(incomplete ? { incomplete } : {})
      }))
    })

  const setDisabled = (id: string, disabled: boolean): Effect.Effect<KeyInfo, GatewayError> =>
    Effect.suspend(() => {
      if (configById.has(id)) return Effect.fail(inConfiguration(id))
      if (Result.isFailure(checkId("id", id))) return Effect.fail(notFound(String(id).slice(0, 64)))
      return backend.setDisabled(id, disabled).pipe(
        Effect.catch(deps.directoryFailure),
        Effect.flatMap((record) => {
          if (record === undefined) return Effect.fail(notFound(id))
          deps.forget(record.sha256)
          if (disabled) deps.forgetGauges(record.id)
          else deps.rememberGauges(record.id)
          return Effect.succeed(info(record))
        })
      )
    })

  // The store removes the key only while it is the one read (its counters are that key's): one deleted and
  // created again meanwhile is read again, and that one deleted. A record this version cannot read is removed as
  // it is stored (its budgets are left to expire, or to be cleared by the next key of its id).
  const remove = (id: string, attempts = 3): Effect.Effect<void, GatewayError> =>
    Effect.suspend(() => {
      if (configById.has(id)) return Effect.fail(inConfiguration(id))
      if (Result.isFailure(checkId("id", id))) return Effect.fail(notFound(String(id).slice(0, 64)))
      return Effect.matchEffect(backend.byId(id), {
        onFailure: (error) =>
          error._tag === "UnreadableRecord" && error.json !== undefined
            ? removeAs(id, { json: error.json }, [], undefined, attempts)
            : deps.directoryFailure(error),
        onSuccess: (record) =>
          record === undefined
            ? Effect.fail(notFound(id))
            : removeAs(id, { sha256: record.sha256 }, ownCounters(record), record.sha256, attempts)
      })
    })
  const removeAs = (
    id: string,
    read: { readonly sha256: string } | { readonly json: string },
    counters: ReadonlyArray<Counter>,
    sha256: string | undefined,
    attempts: number
  ): Effect.Effect<void, GatewayError> =>
    backend.remove(id, read, counters).pipe(
      Effect.mapError(() => deps.unavailable("key")),
      Effect.flatMap((result) => {
        if (result === "missing") return Effect.fail(notFound(id))
        if (result === "changed") {
          return attempts > 1
            ? remove(id, attempts - 1)
            : Effect.fail(
                gatewayError("InvalidRequest", `The key "${id}" changed while it was deleted; try again`, {
                  status: 409,
                  param: "id",
                  code: "key_changed"
                })
              )
        }
        if (sha256 !== undefined) deps.forget(sha256)
        deps.forgetGauges(id)
        return Effect.void
      })
    )

  const spend = (id: string): Effect.Effect<ReadonlyArray<SpendLine>, GatewayError> =>
    Effect.flatMap(findById(id), (record) => {
      const at = now()
      const counters = countersFor(record.id, record.team, budgetsOf(record), undefined, at)
      if (counters.length === 0) return Effect.succeed([])
      return backend.read(counters, at).pipe(
        Effect.catch(deps.budgetFailure),
        Effect.map(({ levels, now: storeNow }) =>
          counters.map((read, i): SpendLine => {
            const counter = storeNow === undefined ? read : retime(read, storeNow)
            const level = levels[i]!
            deps.refreshGauge(counter, level)
            const end = windowEnd(counter)
            return {
              scope: counter.scope,
              id: counter.scopeId,
              unit: counter.unit,
              spent: shown(counter.unit, level.spent),
              held: shown(counter.unit, level.held),
              limit: shown(counter.unit, counter.limit),
              remaining: shown(counter.unit, Math.max(0, counter.limit - level.spent - level.held)),
              resetsAt: end === undefined ? undefined : new Date(end).toISOString()
            }
          })
        )
      )
    })

  return {
    create,
    list,
    get: (id: string): Effect.Effect<KeyInfo, GatewayError> => Effect.map(findById(id), info),
    setDisabled,
    delete: (id: string) => remove(id),
    spend
  }
}
