/**
 * The key store on a backend (memory or Redis): authentication through a short cache
 * (`identities.ts`), per-key limits (`limits.ts`), budget reservations on the ledger (and the
 * gauges of what remains; what is tried again in the background in `settle-later.ts`), with the
 * admin operations of `manage.ts`.
 *
 * @internal
 */
import { Clock, Duration, Effect, Scope } from "effect"
import { identity } from "effect/Function"
import type * as Gateway from "../../Gateway.js"
import * as Input from "../../Input.js"
import { type GatewayError, gatewayError } from "../errors.js"
import { union } from "../models.js"
import { allows, notAllowed } from "../routes.js"
import { unavailable as storeUnavailable } from "./failures.js"
import * as Gauges from "./gauges.js"
import type { Service } from "./KeyStore.js"
import {
  amountOf,
  type Backend,
  type Charge,
  countersFor,
  indexModelBudgets,
  type ModelBudgetIndex,
  retime,
  UnreadableRecord
} from "./ledger.js"
import * as Limits from "./limits.js"
import * as Manage from "./manage.js"
import { configModels, type KeyRecord, type Price, type Resolved } from "./options.js"
import { randomId } from "./secret.js"
import { exceeded, overrun } from "./budget-text.js"
import { Held, nothingHeld } from "./held.js"
import * as Identities from "./identities.js"
import * as SettleLater from "./settle-later.js"

const maxCount = 1e12

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

  const identities = Identities.make({ resolved, backend, now, configById, configByHash, unavailable })
  const {
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
  } = identities

  const gauges = Gauges.make(context, now)
  yield* Effect.addFinalizer(() => Effect.sync(gauges.remove))
  const gauge = gauges.set
  // A key deleted or disabled through another replica loses its series here when a request of it is refused;
  // one never used here again is looked up now and then (a shared store), so that no series shows a budget of no key.
  if (backend.retired !== undefined) {
    yield* Effect.forkIn(
      Gauges.retire(gauges, backend.retired, (id) => configById.has(id)),
      scope
    )
  }

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
  const { settled, settleLater, giveBack } = SettleLater.make({
    resolved,
    backend,
    now,
    scope,
    nextId: () => `${processId}.${(sequence++).toString(36)}`,
    reportCounter,
    gauge
  })

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
        if (actual[i]! > reservation.charges[i]!.amount)
          return Effect.andThen(Effect.logWarning(overrun(reservation, actual)), settled)
      }
      return settled
    })

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
