/**
 * The key store on a backend (memory or Redis): authentication through a short cache,
 * per-key limits (`limits.ts`), budget reservations on the ledger (and the gauges of what
 * remains), with the admin operations of `manage.ts`.
 *
 * @internal
 */
import { Clock, Duration, Effect, Redacted, Result, Schedule, Scope } from "effect"
import { identity } from "effect/Function"
import type * as Gateway from "../../Gateway.js"
import * as Input from "../../Input.js"
import { neverSent, type StoreError } from "../../Redis.js"
import { type GatewayError, gatewayError } from "../errors.js"
import { union } from "../models.js"
import { allows, notAllowed } from "../routes.js"
import { notFound, unavailable as storeUnavailable, unreadable, unreadableBudget } from "./failures.js"
import * as Gauges from "./gauges.js"
import type { KeyContext, Service } from "./KeyStore.js"
import {
  amountOf,
  type Backend,
  type Budgets,
  type Charge,
  type Counter,
  countersFor,
  indexModelBudgets,
  type Level,
  type ModelBudgetIndex,
  nano,
  retime,
  shown,
  UnreadableCounter,
  UnreadableRecord,
  windowEnd
} from "./ledger.js"
import * as Limits from "./limits.js"
import * as Manage from "./manage.js"
import { id as checkId, configModels, type KeyRecord, type Price, type Resolved } from "./options.js"
import { hash, randomId } from "./secret.js"
import * as Unrecorded from "./unrecorded.js"

/** A reservation this store made; settled or released once. */
class Held {
  closed = false
  /** When its lease last started (its reserve, or its last renewal). */
  renewedAt = 0
  /** Unrecorded because the store did not answer its reserve within the deadline. */
  timedOut = false
  constructor(
    readonly id: string,
    readonly keyId: string,
    readonly model: string,
    readonly charges: ReadonlyArray<Charge>,
    readonly price: Price | undefined,
    readonly inputTokens: number,
    readonly maxOutputTokens: number,
    /** False when the store failed and budgets fail open: nothing is held, usage is still recorded. */
    readonly recorded: boolean
  ) {}
}

/** The reservation of a key with no budget on the model: nothing to settle. */
const nothingHeld: unknown = Object.freeze({ _tag: "NothingHeld" })

const cacheCapacity = 10_000
/** How long past its cache's life a record read from Redis still lets a KeyContext made from it spend. */
const spendGraceMs = 1000
const maxCount = 1e12
/** The `Retry-After` of a budget refused only for what requests in flight hold: most settle within seconds. */
const heldRetryAfter = Duration.seconds(1)

// Every nano-dollar shown: a budget may be as small as $0.000000001, and six decimals would
// print "$0 of $0" for one under a micro-dollar.
const usd = (amount: number): string => {
  const nanos = amount % nano
  const whole = (amount - nanos) / nano
  const fraction = String(nanos).padStart(9, "0").replace(/0+$/, "")
  return fraction === "" ? `$${whole}` : `$${whole}.${fraction}`
}

const amountText = (counter: Counter, amount: number): string =>
  counter.unit === "tokens" ? `${amount} tokens` : usd(amount)

// A count a provider reported: a number of 0 or more (an absent, NaN or negative one is not reported).
const isCount = (input: unknown): boolean => typeof input === "number" && Number.isFinite(input) && input >= 0

const count = (input: unknown): number =>
  typeof input === "number" && Number.isFinite(input) && input > 0 ? Math.min(Math.floor(input), maxCount) : 0

/**
 * `storeRetryAfter`: the `Retry-After` of a request refused because the store did not answer,
 * when it is probed again (`redis.probeInterval`).
 *
 * @internal
 */
export const make = Effect.fnUntraced(function* (
  resolved: Resolved,
  backend: Backend,
  limits: Limits.Options,
  onBudgetStoreError: "reject" | "allow",
  storeRetryAfter: Duration.Duration = Duration.seconds(1)
) {
  const clock = yield* Clock.Clock
  const context = yield* Effect.context<never>()
  const scope = yield* Scope.Scope
  const now = () => clock.currentTimeMillisUnsafe()
  const configById = new Map(resolved.keys.map((key) => [key.id, key]))
  const configByHash = new Map(resolved.keys.map((key) => [key.sha256, key]))
  const processId = randomId(8)
  let sequence = 0
  const unavailable = (what: "key" | "budget" | "rate limit") => storeUnavailable(what, storeRetryAfter)

  // --- identities ---

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

  const gauges = Gauges.make(context, now)
  yield* Effect.addFinalizer(() => Effect.sync(gauges.remove))
  const gauge = gauges.set

  // --- limits ---

  const limit = Limits.make(scope, limits, resolved.rateLimitWait, () => unavailable("rate limit"))

  // --- budgets ---

  // What the gateways using this store serve: a budget by model applies to each name of its upstream model.
  let served: Gateway.Models | undefined

  // A key's budgets by model indexed once per record (a record is replaced when the key changes) and per
  // value of `served`: a request looks its model up, never scans them.
  const modelIndexes = new WeakMap<KeyRecord, ModelBudgetIndex>()
  const modelBudgetsOf = (record: KeyRecord): ModelBudgetIndex["byModel"] | undefined => {
    if (record.modelBudgets === undefined) return undefined
    let index = modelIndexes.get(record)
    if (index === undefined || index.models !== served) {
      index = indexModelBudgets(record.id, record.modelBudgets, served)
      modelIndexes.set(record, index)
    }
    return index.byModel
  }

  const chargesModel = (key: Gateway.KeyContext, model: string): boolean | undefined => {
    const record = records.get(key)
    return record === undefined ? undefined : modelBudgetsOf(record)?.has(model) === true
  }

  const priceOf = (model: string): Price | undefined => resolved.prices.get(model) ?? resolved.prices.get("*")

  const exceeded = (charge: Charge, level: Level, at: number): GatewayError => {
    const { counter, amount } = charge
    const used = level.spent + level.held
    // Refused only for what requests in flight hold: the request fits once they settle (unless what they
    // report spends it), seconds later in general; a retryable 429, not the spent budget's.
    if (level.held > 0 && level.spent < counter.limit && level.spent + amount <= counter.limit) {
      return gatewayError(
        "BudgetExceeded",
        `Budget held for ${counter.scope} "${counter.scopeId}": ${amountText(counter, used)} of ${amountText(counter, counter.limit)} spent, ${amountText(counter, level.held)} of it held by requests in flight; this request may need up to ${amountText(counter, amount)}, which fits once enough of them settle: try again in ${Duration.format(heldRetryAfter)}`,
        {
          code: "budget_held",
          scope: counter.scope,
          scopeId: counter.scopeId,
          unit: counter.unit,
          spent: shown(counter.unit, used),
          held: shown(counter.unit, level.held),
          limit: shown(counter.unit, counter.limit),
          retryAfter: heldRetryAfter
        }
      )
    }
    // A request that needs more than the whole limit never fits, not even after the reset: no time to come back.
    const never = amount > counter.limit
    const end = never ? undefined : windowEnd(counter)
    const held = level.held > 0 ? ` (${amountText(counter, level.held)} of it held by requests in flight)` : ""
    const resets = end === undefined ? "" : `; it starts again at ${new Date(end).toISOString()}`
    const need = never
      ? `this request alone may need up to ${amountText(counter, amount)}, more than the budget's limit: lower max_tokens or the input`
      : `this request may need up to ${amountText(counter, amount)}${resets}`
    return gatewayError(
      "BudgetExceeded",
      `Budget exceeded for ${counter.scope} "${counter.scopeId}": ${amountText(counter, used)} of ${amountText(counter, counter.limit)} spent${held}; ${need}`,
      {
        code: "budget_exceeded",
        scope: counter.scope,
        scopeId: counter.scopeId,
        unit: counter.unit,
        spent: shown(counter.unit, used),
        ...(level.held > 0 ? { held: shown(counter.unit, level.held) } : {}),
        limit: shown(counter.unit, counter.limit),
        ...(end === undefined ? {} : { retryAfter: Duration.millis(Math.max(1, end - at)) })
      }
    )
  }

  // The levels a settle left: each to its gauge; a counter that cannot be read (left as it was) is said in the log.
  const settled = (
    keyId: string,
    charges: ReadonlyArray<Charge>,
    levels: ReadonlyArray<Level | UnreadableCounter | undefined>
  ): Effect.Effect<void> =>
    Effect.suspend(() => {
      const unreadable: Array<UnreadableCounter> = []
      for (let i = 0; i < charges.length; i++) {
        const level = levels[i]
        if (level instanceof UnreadableCounter) unreadable.push(level)
        else if (level !== undefined) gauge(keyId, charges[i]!.counter, level)
      }
      return unreadable.length === 0 ? Effect.void : Effect.forEach(unreadable, reportCounter, { discard: true })
    })

  // A settle that failed runs again in the background, in the layer's scope, until Redis answers
  // or the lease is over (reservationTtl).
  const laterSchedule = Schedule.exponential("100 millis").pipe(
    Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.seconds(5)))),
    Schedule.upTo({ duration: Duration.millis(resolved.reservationTtlMs) })
  )
  const chargesText = (charges: ReadonlyArray<Charge>, actual: ReadonlyArray<number>): string =>
    charges
      .map(({ counter }, i) => `${amountText(counter, actual[i] ?? 0)} to the ${counter.scope} "${counter.scopeId}"`)
      .join(", ")
  const lostUsage = (keyId: string, charges: ReadonlyArray<Charge>, actual: ReadonlyArray<number>, why: string) =>
    Effect.logError(
      `gateway: the usage of a request of the key "${keyId}" was not recorded: ${why}; not charged: ${chargesText(charges, actual)}`
    )
  // A settle tried again, its lease perhaps ended and swept meanwhile, that found nothing of the reservation:
  // the earlier attempt that may have reached the store charged it, or none did and it is lost.
  const maybeLostUsage = (keyId: string, charges: ReadonlyArray<Charge>, actual: ReadonlyArray<number>) =>
    Effect.logWarning(
      `gateway: the usage of a request of the key "${keyId}" may not have been recorded: its settle failed after it may have reached the key store, and when the store answered again the reservation's lease (reservationTtl ${resolved.reservationTtlMs} ms) had ended; charged only if that first attempt ran: ${chargesText(charges, actual)}`
    )
  // Usage let through unreserved during an outage (budgets "allow"): summed by counter, settled in batches.
  const addUnrecorded = Unrecorded.make({
    nextId: () => `${processId}.${(sequence++).toString(36)}`,
    settle: backend.settle,
    retryLater: (effect) => Effect.retry(effect, laterSchedule),
    now,
    reservationTtlMs: resolved.reservationTtlMs,
    reportCounter,
    gauge,
    amountText,
    scope
  })

  const settleLater = (
    held: Held,
    charges: ReadonlyArray<Charge>,
    actual: ReadonlyArray<number>,
    error: StoreError
  ): Effect.Effect<void> => {
    if (!held.recorded && neverSent(error)) return addUnrecorded(held.keyId, charges, actual)
    // Counted once, by its lease (or an unrecorded one's mark), only once an attempt may have reached
    // Redis (which runs it late, a hung Redis, or not): one skipped for an outage, or refused by an
    // offline client, never did. A lease that ended meanwhile is swept by the next reserve of its
    // counter, and a settle counted once by it would find nothing to settle: charged, then, whatever
    // its lease, while no attempt was sent.
    let reached = !neverSent(error)
    const leaseEnd = held.renewedAt + resolved.reservationTtlMs
    const charged = actual.some((amount) => amount > 0)
    return Effect.suspend(() => backend.settle(held.id, charges, actual, now(), !held.recorded || reached)).pipe(
      Effect.tapError((failed) =>
        Effect.sync(() => {
          if (!neverSent(failed)) reached = true
        })
      ),
      Effect.retry(laterSchedule),
      Effect.matchEffect({
        // Spend the budgets will never show: said, so that an operator knows they undercount.
        onFailure: () =>
          charged
            ? lostUsage(
                held.keyId,
                charges,
                actual,
                `the key store did not take its settle within reservationTtl (${resolved.reservationTtlMs} ms)`
              )
            : Effect.void,
        onSuccess: ({ levels, applied }) =>
          !applied && held.recorded && now() >= leaseEnd && charged
            ? Effect.andThen(maybeLostUsage(held.keyId, charges, actual), settled(held.keyId, charges, levels))
            : settled(held.keyId, charges, levels)
      }),
      // Closed (the gateway shut down) before the store took it: said as well.
      Effect.onInterrupt(() =>
        charged
          ? lostUsage(held.keyId, charges, actual, "the key store closed before Redis took its settle")
          : Effect.void
      ),
      Effect.forkIn(scope),
      Effect.asVoid
    )
  }

  // A reserve that failed after it may have been sent (a timeout, a dropped connection) can still
  // hold its amounts once Redis runs it, until the lease ends: give them back, in the background until
  // Redis answers or the lease is over. The store finds the window it held them in (Redis: of its own
  // time then, whatever this replica's clock says). Giving back an id that holds nothing changes nothing.
  const giveBack = (id: string, keyId: string, charges: ReadonlyArray<Charge>): Effect.Effect<void> =>
    Effect.suspend(() => backend.giveBack(id, charges, resolved.reservationTtlMs, now())).pipe(
      Effect.retry(laterSchedule),
      Effect.matchEffect({
        onFailure: () => Effect.void,
        onSuccess: (found) =>
          Effect.suspend(() => {
            const unreadable: Array<UnreadableCounter> = []
            for (const back of found) {
              if (back instanceof UnreadableCounter) unreadable.push(back)
              else if (back !== undefined) gauge(keyId, back.counter, back.level)
            }
            return unreadable.length === 0 ? Effect.void : Effect.forEach(unreadable, reportCounter, { discard: true })
          })
      }),
      Effect.forkIn(scope),
      Effect.asVoid
    )

  // A shared store (Redis) holds a reservation in the windows of its own time: the replicas' clocks may differ.
  const inWindowsOf = (charges: ReadonlyArray<Charge>, storeNow: number | undefined): ReadonlyArray<Charge> => {
    if (storeNow === undefined) return charges
    let out: Array<Charge> | undefined
    for (let i = 0; i < charges.length; i++) {
      const charge = charges[i]!
      const counter = retime(charge.counter, storeNow)
      if (counter === charge.counter) continue
      out ??= charges.slice()
      out[i] = { counter, amount: charge.amount, owner: charge.owner }
    }
    return out ?? charges
  }

  const hold = (
    record: KeyRecord,
    model: string,
    inputTokens: number,
    maxOutputTokens: number,
    onHeld: (reservation: Held) => void
  ): Effect.Effect<unknown, GatewayError> => {
    const at = now()
    const counters = countersFor(record.id, record.team, contextOf(record).budgets, model, at, modelBudgetsOf(record))
    if (counters.length === 0) return Effect.succeed(nothingHeld)
    const price = priceOf(model)
    // A created key's own counters are charged only while it is stored: a request of it reserved
    // before its delete, or by a replica that still caches it, never writes them again (a leftover
    // in Redis), nor those of a new key of its id. Its team's are the team's.
    // (The record is its own Owner: no object made per request.)
    const owner = configById.get(record.id) === record ? undefined : record
    const charges: Array<Charge> = []
    for (const counter of counters) {
      if (counter.unit === "usd" && price === undefined) {
        return Effect.fail(
          gatewayError(
            "Forbidden",
            // Named: the team's budget, or one by model, would send an admin to the key's for nothing.
            `The model "${model}" has no price in the gateway's price table, and the budget of the ${counter.scope} "${counter.scopeId}" is in dollars`,
            { param: "model", code: "model_not_priced" }
          )
        )
      }
      const amount = amountOf(counter.unit, price, inputTokens, maxOutputTokens)
      charges.push(counter.scope === "team" ? { counter, amount } : { counter, amount, owner })
    }
    const id = `${processId}.${(sequence++).toString(36)}`
    const held = (recorded: boolean, charged: ReadonlyArray<Charge> = charges) =>
      new Held(id, record.id, model, charged, price, inputTokens, maxOutputTokens, recorded)
    // Handed over (see `reserve`) in the step Redis answers, before an interruption pending since
    // ends the fiber, or one landing at any later step.
    let made: Held | undefined
    const reserved = Effect.map(backend.reserve(id, charges, resolved.reservationTtlMs, at, owner), (result) => {
      if (result._tag === "Reserved") {
        made = held(true, inWindowsOf(charges, result.now))
        made.renewedAt = at
        onHeld(made)
      }
      return result
    })
    // Once sent, the script may hold the amounts: wait for its answer (bounded by the store's deadline)
    // so that what it holds is always handed back to be settled or released.
    return Effect.matchEffect(Effect.uninterruptible(reserved), {
      onFailure: (error) =>
        error._tag === "UnreadableCounter"
          ? // Refused before anything was written.
            failCounter(error)
          : Effect.andThen(
              // Skipped during an outage, it never reached Redis; otherwise a hung Redis may still run it.
              error.reason === "Unavailable" ? Effect.void : giveBack(id, record.id, charges),
              onBudgetStoreError === "reject"
                ? Effect.fail(unavailable("budget"))
                : Effect.sync(() => {
                    const unrecorded = held(false)
                    unrecorded.timedOut = error.reason === "Timeout"
                    return unrecorded
                  })
            ),
      onSuccess: (result) => {
        // Deleted or disabled through another replica since this one cached the key: read again from now on.
        if (result._tag === "Gone" || result._tag === "Disabled") {
          forget(record.sha256)
          gauges.forget(record.id)
          return Effect.fail(result._tag === "Gone" ? unauthorized() : disabledKey(record))
        }
        if (result._tag === "Exceeded") {
          const charged = inWindowsOf(charges, result.now)
          const charge = charged[result.index]!
          // The counters read before the refusal: a lease ended since their last level is given back in them.
          for (let i = 0; i < result.before.length; i++) gauge(record.id, charged[i]!.counter, result.before[i]!)
          gauge(record.id, charge.counter, result.level)
          return Effect.fail(exceeded(charge, result.level, result.now ?? at))
        }
        const charged = made?.charges ?? charges
        // Stored and enabled now (a replica that saw it deleted or disabled forgot its series): shown again.
        if (owner !== undefined) gauges.remember(record.id)
        for (let i = 0; i < charged.length; i++) gauge(record.id, charged[i]!.counter, result.levels[i]!)
        return Effect.succeed(made)
      }
    })
  }

  const badCount = (input: unknown) =>
    typeof input !== "number" || !Number.isInteger(input) || input < 0 || input > maxCount

  const reserve = (
    key: Gateway.KeyContext,
    model: string,
    estimate: { readonly inputTokens: number; readonly maxOutputTokens: number },
    onHeld?: ((reservation: unknown) => void) | undefined
  ): Effect.Effect<unknown, GatewayError> => {
    if (badCount(estimate.inputTokens)) {
      return Effect.fail(
        gatewayError("InvalidRequest", `invalid input token estimate: ${String(estimate.inputTokens)}`, {
          param: "messages"
        })
      )
    }
    if (badCount(estimate.maxOutputTokens)) {
      return Effect.fail(
        gatewayError("InvalidRequest", `invalid max_tokens: expected a whole number from 0 to ${maxCount}`, {
          param: "max_tokens"
        })
      )
    }
    return Effect.flatMap(recordOf(key), (record) => {
      if (!allows(record, model)) return notAllowed(model)
      // Who gives back what this reserve holds when it is interrupted (a client that left while Redis
      // ran it, or while its slot waited), one of two ways by caller:
      // - with `onHeld` (the gateway), the caller: handed the reservation in the step that makes it, so
      //   every later step is covered, up to the one where `reserve`'s answer crosses back into the
      //   caller's interruptible region, which no guard in here can cover (it comes after the guard ends);
      // - without it (an application calling `reserve` directly), `taken` here: interrupted, such a caller
      //   never sees the reservation. It covers interruption inside `reserve`, not that last crossing:
      //   such a caller passes `onHeld`, or runs `reserve` uninterruptibly.
      let taken: Held | undefined
      const held = hold(
        record,
        model,
        estimate.inputTokens,
        estimate.maxOutputTokens,
        onHeld ??
          ((made) => {
            taken = made
          })
      )
      const givenBackIfInterrupted =
        onHeld !== undefined ? identity : Effect.onInterrupt(() => (taken === undefined ? Effect.void : release(taken)))
      if (record.rpm === undefined && record.tpm === undefined) return givenBackIfInterrupted(held)
      // The budget first, then the slot: a request the budget refuses is never sent, and spends no slot of
      // the key's limits (nor waits for one); a reservation beside a refused slot is given back. A budget
      // whose store did not answer within the deadline (let through unreserved) tells that Redis hangs:
      // the slot's store is the same Redis, and the limit's onStoreError decides at once rather than
      // after a second deadline.
      const tokens = estimate.inputTokens + estimate.maxOutputTokens
      return givenBackIfInterrupted(
        Effect.flatMap(held, (reservation) =>
          reservation instanceof Held && reservation.timedOut
            ? limits.onStoreError === "allow"
              ? Effect.succeed(reservation)
              : Effect.andThen(release(reservation), Effect.fail(unavailable("rate limit")))
            : Effect.matchEffect(limit(record, tokens), {
                onFailure: (error) => Effect.andThen(release(reservation), Effect.fail(error)),
                onSuccess: () => Effect.succeed(reservation)
              })
        )
      )
    })
  }

  const uninterruptibleSuspend = (f: () => Effect.Effect<void>): Effect.Effect<void> =>
    Effect.uninterruptible(Effect.suspend(f))

  const finish = (held: Held, actual: ReadonlyArray<number>): Effect.Effect<void> => {
    // Unrecorded (the store failed at reserve): nothing to give back, only usage to record.
    const charges = held.recorded ? held.charges : held.charges.map((charge) => ({ ...charge, amount: 0 }))
    if (!held.recorded && actual.every((amount) => amount === 0)) return Effect.void
    // An unrecorded one holds no lease to tell a second run of it: it is counted once from the start.
    // Run uninterruptibly by `settle` and `release` (bounded by the store's deadline): the reservation is
    // closed already, so a settle cut by its client leaving was never made again, its usage uncharged
    // and its amount held till the lease ended.
    return Effect.matchEffect(backend.settle(held.id, charges, actual, now(), !held.recorded), {
      // Redis down or slow: recorded when it answers again, not lost (nor its amount held till the lease ends).
      onFailure: (error) => settleLater(held, charges, actual, error),
      onSuccess: ({ levels }) => settled(held.keyId, charges, levels)
    })
  }

  // Closing a reservation and telling the store are one step: an interruption landing between them (the
  // store's own release of a reservation its key's limit refused runs in its caller's interruptible
  // region) left it closed, so the caller's release changed nothing, and held until its lease ended.
  const settle = (
    reservation: unknown,
    usage: { readonly inputTokens: number; readonly outputTokens: number }
  ): Effect.Effect<void> =>
    uninterruptibleSuspend(() => {
      if (!(reservation instanceof Held) || reservation.closed) return Effect.void
      reservation.closed = true
      const inputTokens = count(usage.inputTokens)
      const outputTokens = count(usage.outputTokens)
      // A provider that reports no usage is charged what was reserved: a budget is never overrun unseen.
      // Nor one that reports a part only (prompt tokens, no completion tokens): the other is charged as reserved.
      const reported = inputTokens + outputTokens > 0
      const input = !reported || !isCount(usage.inputTokens) ? reservation.inputTokens : inputTokens
      const output = !reported || !isCount(usage.outputTokens) ? reservation.maxOutputTokens : outputTokens
      const actual = reservation.charges.map(({ counter }) => amountOf(counter.unit, reservation.price, input, output))
      const settled = finish(reservation, actual)
      if (!reservation.recorded) return settled
      for (let i = 0; i < actual.length; i++) {
        if (actual[i]! > reservation.charges[i]!.amount) return Effect.andThen(overrun(reservation, actual), settled)
      }
      return settled
    })

  // Charged what it used, past what it held: the budget may end over its limit by the difference, and
  // its next requests are refused. Said, so that a provider that does not keep to max_tokens is seen.
  const overrun = (held: Held, actual: ReadonlyArray<number>): Effect.Effect<void> =>
    Effect.logWarning(
      `gateway: a request of the key "${held.keyId}" on the model "${held.model}" used more than it reserved ` +
        "(its provider did not keep to max_tokens, or its input was longer in tokens than estimated), and is " +
        `charged what it used: ${held.charges
          .map(({ counter, amount }, i) =>
            actual[i]! > amount
              ? `${amountText(counter, actual[i]!)} to the ${counter.scope} "${counter.scopeId}" (${amountText(counter, amount)} reserved)`
              : undefined
          )
          .filter((text) => text !== undefined)
          .join(", ")}`
    )

  const release = (reservation: unknown): Effect.Effect<void> =>
    uninterruptibleSuspend(() => {
      if (!(reservation instanceof Held) || reservation.closed) return Effect.void
      reservation.closed = true
      return finish(
        reservation,
        reservation.charges.map(() => 0)
      )
    })

  // A lease outlived by its request would let other requests spend its budget again: the gateway
  // hands back its running requests' reservations every quarter of the lease, and those whose lease
  // started a quarter ago or more get a whole one again. One that fails is tried at the next call,
  // with a quarter of the lease left at least.
  const renewEvery = Math.max(1, Math.floor(resolved.reservationTtlMs / 4))
  const renewOne = (held: Held, at: number): Effect.Effect<void> =>
    Effect.matchEffect(backend.renew(held.id, held.charges, resolved.reservationTtlMs, at), {
      onFailure: () => Effect.void,
      onSuccess: () =>
        Effect.sync(() => {
          held.renewedAt = at
        })
    })
  const renew = {
    every: Duration.millis(renewEvery),
    run: (reservations: ReadonlyArray<unknown>): Effect.Effect<void> =>
      Effect.suspend(() => {
        const at = now()
        const due = reservations.filter(
          (held): held is Held =>
            held instanceof Held && held.recorded && !held.closed && at - held.renewedAt >= renewEvery
        )
        return due.length === 0
          ? Effect.void
          : Effect.forEach(due, (held) => renewOne(held, at), { concurrency: 16, discard: true })
      })
  }

  // The names of the gateways this store serves (usually one), told as each starts: the
  // configuration is checked against them then, an admin's new key when it is created.
  const useModels = (models: Gateway.Models): Effect.Effect<void, Input.OptionError> =>
    Effect.suspend(() => {
      const issue = configModels(resolved, models)
      if (issue !== undefined) return Effect.fail(Input.toOptionError(issue))
      served = union(served, models)
      return Effect.void
    })

  const manage = Manage.make({
    resolved,
    served: () => served,
    backend,
    now,
    configById,
    findById,
    directoryFailure,
    unavailable,
    budgetFailure,
    reportUnreadable: (ids) =>
      Effect.forEach(ids, (id) => Effect.ignore(failUnreadable(new UnreadableRecord({ id }))), { discard: true }),
    budgetsOf,
    refreshGauge: gauges.refresh,
    forgetGauges: gauges.forget,
    rememberGauges: gauges.remember,
    forget
  })

  return { authenticate, reserve, settle, release, useModels, chargesModel, renew, ...manage } satisfies Service
})
