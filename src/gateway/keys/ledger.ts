/**
 * What a key store keeps, whatever holds it (memory or Redis): the key directory, and a
 * ledger of budget counters. A counter is one budget of one scope in one unit (tokens, or
 * nano-dollars so that money adds up exactly in integers) for one period window; it holds
 * `spent` (settled) and `held` (reserved by requests in flight). A reservation checks and
 * holds its amount on every counter at once, or on none.
 *
 * @internal
 */
import { Data, type Effect } from "effect"
import type { Models } from "../../Gateway.js"
import type { StoreError } from "../../Redis.js"
import type { BudgetScope } from "../errors.js"
import { sharesUpstream } from "../models.js"
import type { KeyRecord, Price, ResolvedBudget } from "./options.js"

/**
 * @internal
 */
export type Unit = "tokens" | "usd"

/**
 * One budget counter.
 *
 * @internal
 */
export interface Counter {
  readonly scope: BudgetScope
  readonly scopeId: string
  /** The model of a `model` scope. */
  readonly model: string | undefined
  readonly unit: Unit
  /** In tokens, or in nano-dollars. */
  readonly limit: number
  readonly periodMs: number | undefined
  /** Index of the period window (`floor(now / period)`); `undefined` without a period. */
  readonly window: number | undefined
  /** The counter's name in its store (scope, id, unit and window). */
  readonly name: string
  /** Its name without the window: a store that takes the window from its own clock (Redis) adds it. */
  readonly base: string
}

/**
 * The created key a counter belongs to (its own budget, or one by model), by its id and its secret's
 * hash: a key deleted and created again under the same id has another secret, so a request of the
 * deleted one (reserved before the delete, or by a replica that still caches it) is told apart.
 *
 * @internal
 */
export interface Owner {
  readonly id: string
  readonly sha256: string
}

/**
 * An amount to hold on a counter. With an `owner`, the store holds it, and adds what was spent, only
 * while that key is stored (a key of the configuration, and a team, have none: they are never removed).
 *
 * @internal
 */
export interface Charge {
  readonly counter: Counter
  readonly amount: number
  readonly owner?: Owner | undefined
}

/**
 * A counter's state.
 *
 * @internal
 */
export interface Level {
  readonly spent: number
  readonly held: number
}

/**
 * @internal
 */
export type ReserveResult =
  | {
      readonly _tag: "Reserved"
      readonly levels: ReadonlyArray<Level>
      /** The store's own time it took the windows at (Redis), when not the caller's `now`: see {@link retime}. */
      readonly now?: number | undefined
    }
  | {
      readonly _tag: "Exceeded"
      readonly index: number
      readonly level: Level
      /** The levels of the counters before `index`, as the refused reserve read them (ended leases given back). */
      readonly before: ReadonlyArray<Level>
      readonly now?: number | undefined
    }
  /** The key that owns a charge was deleted (or deleted and created again): nothing was held. */
  | { readonly _tag: "Gone"; readonly now?: number | undefined }
  /** The created key the request is of was disabled (on a shared store, perhaps by another replica): nothing was held. */
  | { readonly _tag: "Disabled"; readonly now?: number | undefined }

/**
 * What a give-back found on one counter (see `Ledger.giveBack`).
 *
 * @internal
 */
export type GivenBack = { readonly counter: Counter; readonly level: Level } | UnreadableCounter | undefined

/**
 * The levels of counters, and the store's own time it took their windows at (Redis), when
 * not the caller's `now`.
 *
 * @internal
 */
export interface Reading {
  readonly levels: ReadonlyArray<Level>
  readonly now?: number | undefined
}

/**
 * What a settle left: per charge the level of its counter, the counter that cannot be read, or
 * `undefined` for one whose owner is gone (nothing added to it); and whether it added the amounts
 * (see `Ledger.settle`).
 *
 * @internal
 */
export interface Settled {
  readonly levels: ReadonlyArray<Level | UnreadableCounter | undefined>
  readonly applied: boolean
}

/**
 * A stored budget counter this gateway cannot read: a `spent` or `held` that is not a whole
 * number, or a key of another type (edited by hand, or written by another version). Not an
 * empty counter, which would let its budget be spent again from zero, nor an outage: the
 * requests charged to it are refused (500) until it is mended, and the rest are served.
 *
 * @internal
 */
export class UnreadableCounter extends Data.TaggedError("UnreadableCounter")<{
  readonly counter: Counter
  /** Where the store keeps it (the Redis key), for the operator to mend. */
  readonly key: string
}> {}

/**
 * @internal
 */
export interface Ledger {
  /**
   * Holds every charge, or none when one would go over its limit (the first such is reported),
   * cannot be read, or belongs to an owner that is no longer stored (`Gone`; nothing is written
   * then). A store shared by replicas (Redis) holds them
   * in the windows of its own time, which it returns (`now`): the replicas' clocks may differ.
   * `key`, the created key the request is of (none for a key of the configuration): a shared store
   * checks it in the same step, `Gone` once it is no longer stored and `Disabled` once disabled, so
   * that a replica whose cache still holds it holds nothing for it (a local store's records are always current).
   */
  readonly reserve: (
    id: string,
    charges: ReadonlyArray<Charge>,
    leaseMs: number,
    now: number,
    key?: Owner | undefined
  ) => Effect.Effect<ReserveResult, StoreError | UnreadableCounter>
  /**
   * Gives back what `id` held on each counter (once) and adds `actual[i]` to its spent amount. With
   * `once`, the amounts are added only by the first settle of `id` to run: one tried again after a
   * failure that may have reached the store, or one of a reservation that holds nothing. A
   * counter that cannot be read is left as it is, the others settled: it is told in its place. A
   * counter whose owner is no longer stored gets nothing added (it would be created again, or charge
   * a new key of the id): only what `id` still holds on it is given back.
   * `applied` is false when `once` found `id` settled already (or its lease ended and swept): nothing added.
   */
  readonly settle: (
    id: string,
    charges: ReadonlyArray<Charge>,
    actual: ReadonlyArray<number>,
    now: number,
    once: boolean
  ) => Effect.Effect<Settled, StoreError>
  /**
   * Gives back what `id` may hold after a reserve whose answer never came (it may have run, late),
   * adding nothing spent: per charge, its counter in the window the store held it in and the level
   * left, `undefined` when `id` holds nothing on it, or the counter that cannot be read (left as it
   * is). A store that takes windows from its own time (Redis) finds that window from its time now
   * and the reserve's lease, `leaseMs`: a reserve older than that holds nothing any more.
   */
  readonly giveBack: (
    id: string,
    charges: ReadonlyArray<Charge>,
    leaseMs: number,
    now: number
  ) => Effect.Effect<ReadonlyArray<GivenBack>, StoreError>
  /**
   * Moves the end of what `id` still holds on each counter to `leaseMs` after `now` (Redis: its
   * own time). A lease that has ended, or was settled, is not taken again.
   */
  readonly renew: (
    id: string,
    charges: ReadonlyArray<Charge>,
    leaseMs: number,
    now: number
  ) => Effect.Effect<void, StoreError>
  /**
   * The levels at `now` (Redis: at its own time, in the windows of its time): a lease that has
   * ended holds nothing.
   */
  readonly read: (
    counters: ReadonlyArray<Counter>,
    now: number
  ) => Effect.Effect<Reading, StoreError | UnreadableCounter>
}

/**
 * @internal
 */
export type InsertResult = "inserted" | "id-taken" | "secret-taken" | "full"

/**
 * A stored key this gateway cannot read (edited by hand, or written by a newer version):
 * not the same as no key at all, which would answer its holder "incorrect API key" and an
 * admin "not found" while the id is taken.
 *
 * @internal
 */
export class UnreadableRecord extends Data.TaggedError("UnreadableRecord")<{
  /** The record's id as stored, when the key's hash names one. */
  readonly id: string | undefined
  /** The record as stored (read by its id), for a delete to remove exactly what it read. */
  readonly json?: string | undefined
}> {}

/**
 * @internal
 */
export interface Page {
  readonly records: ReadonlyArray<KeyRecord>
  readonly unreadable: ReadonlyArray<string>
  readonly last: string | undefined
  readonly more: boolean
  /** The store's index of ids did not hold every key: some may be missing from the page. */
  readonly incomplete?: boolean | undefined
}

/**
 * @internal
 */
export interface Directory {
  readonly byHash: (sha256: string) => Effect.Effect<KeyRecord | undefined, StoreError | UnreadableRecord>
  readonly byId: (id: string) => Effect.Effect<KeyRecord | undefined, StoreError | UnreadableRecord>
  /**
   * Adds a key, unless its id or its secret's hash is taken or the store holds `maxKeys`. What is left of
   * an earlier key of its id on `counters` (the new key's budgets: their current windows) and on its rate
   * limits is cleared with it: a key removed without `remove` (by hand, by an older version), or a request
   * of a removed key that settled after it, would have left its spend to the new key.
   */
  readonly insert: (
    record: KeyRecord,
    maxKeys: number,
    counters: ReadonlyArray<Counter>
  ) => Effect.Effect<InsertResult, StoreError>
  /**
   * Removes the key `id` if it is still the one read (of the secret `sha256`, or stored as `json` when it could
   * not be read), with its budgets on `counters` (the key's own and by model: their current windows; older ones
   * expire) and its rate limits: `"changed"` when the id holds another key now (removed and created again since
   * it was read), `"missing"` when none.
   */
  readonly remove: (
    id: string,
    read: { readonly sha256: string } | { readonly json: string },
    counters: ReadonlyArray<Counter>
  ) => Effect.Effect<"removed" | "missing" | "changed", StoreError>
  /**
   * Up to `count` stored keys by id, from the first after `after` (from the first without it):
   * the readable records and the ids of those that are not, the last id looked at, and whether
   * there are more after it.
   */
  readonly page: (after: string | undefined, count: number) => Effect.Effect<Page, StoreError>
  /** The record after the change; `undefined` when there is no such key. */
  readonly setDisabled: (
    id: string,
    disabled: boolean
  ) => Effect.Effect<KeyRecord | undefined, StoreError | UnreadableRecord>
}

/**
 * A store: directory and ledger, and whether its calls are local (no deadline, no cache).
 *
 * @internal
 */
export interface Backend extends Directory, Ledger {
  readonly local: boolean
  /** A local store's record of a secret's hash now, read at once (a KeyContext spends by it). */
  readonly current?: ((sha256: string) => KeyRecord | undefined) | undefined
  /**
   * A shared store's ids among `ids` no longer stored or disabled (by any replica): their budget gauges go.
   * A local store forgets them as it deletes or disables them, and has none.
   */
  readonly retired?: ((ids: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<string>, StoreError>) | undefined
}

/**
 * Nano-dollars per dollar.
 *
 * @internal
 */
export const nano = 1e9

// Same escaping as the rate-limit stores: distinct ids never share a counter.
/**
 * Escapes `%` and `:` in a part of a counter's name.
 *
 * @internal
 */
export const escapePart = (part: string): string => part.replace(/%/g, "%25").replace(/:/g, "%3A")

const counter = (
  scope: BudgetScope,
  scopeId: string,
  model: string | undefined,
  unit: Unit,
  limit: number,
  periodMs: number | undefined,
  now: number
): Counter => {
  const window = periodMs === undefined ? undefined : Math.floor(now / periodMs)
  const base = `${scope}:${escapePart(scopeId)}:${unit}`
  return {
    scope,
    scopeId,
    model,
    unit,
    limit,
    periodMs,
    window,
    name: window === undefined ? base : `${base}:${periodMs}:${window}`,
    base
  }
}

/**
 * The same counter at the time `now` (its window then); itself when that is its window.
 *
 * @internal
 */
export const retime = (c: Counter, now: number): Counter =>
  c.periodMs === undefined || Math.floor(now / c.periodMs) === c.window
    ? c
    : counter(c.scope, c.scopeId, c.model, c.unit, c.limit, c.periodMs, now)

/**
 * The counters of one budget.
 *
 * @internal
 */
export const countersOf = (
  scope: BudgetScope,
  scopeId: string,
  model: string | undefined,
  budget: ResolvedBudget,
  now: number
): ReadonlyArray<Counter> => {
  const out: Array<Counter> = []
  if (budget.tokens !== undefined)
    out.push(counter(scope, scopeId, model, "tokens", budget.tokens, budget.periodMs, now))
  if (budget.usd !== undefined) {
    out.push(counter(scope, scopeId, model, "usd", nanoLimit(budget.usd), budget.periodMs, now))
  }
  return out
}

/**
 * The budgets of a key: its own, its team's, and its own per model.
 *
 * @internal
 */
export interface Budgets {
  readonly key?: ResolvedBudget | undefined
  readonly team?: ResolvedBudget | undefined
  readonly models?: Readonly<Record<string, ResolvedBudget>> | undefined
}

/**
 * One budget by model of a key, with the id of its counters.
 *
 * @internal
 */
export interface ModelBudget {
  readonly name: string
  /** `<key>/<name>`. */
  readonly scopeId: string
  readonly budget: ResolvedBudget
}

/**
 * A key's budgets by model, by each name a request may give that they apply to on the
 * gateways serving `models` ({@link sharesUpstream}), in the key's order: a request looks its
 * model up once, where scanning every budget (up to 1,000) cost each request of the key.
 *
 * @internal
 */
export interface ModelBudgetIndex {
  /** What the gateways served when it was built: another value needs another index. */
  readonly models: Models | undefined
  readonly byModel: ReadonlyMap<string, ReadonlyArray<ModelBudget>>
}

/**
 * Indexes a key's budgets by model for the gateways serving `models`.
 *
 * @internal
 */
export const indexModelBudgets = (
  id: string,
  budgets: Readonly<Record<string, ResolvedBudget>>,
  models: Models | undefined
): ModelBudgetIndex => {
  // The names whose chains may call each upstream model.
  const callers = new Map<string, Array<string>>()
  const upstreams = models?.upstreams
  if (upstreams !== undefined) {
    for (const name of Object.keys(upstreams)) {
      for (const upstream of upstreams[name]!) {
        const names = callers.get(upstream)
        if (names === undefined) callers.set(upstream, [name])
        else names.push(name)
      }
    }
  }
  const byModel = new Map<string, Array<ModelBudget>>()
  for (const name of Object.keys(budgets)) {
    const entry: ModelBudget = { name, scopeId: `${id}/${name}`, budget: budgets[name]! }
    // Every name sharesUpstream may accept for this budget: itself, its upstream models, and their callers.
    const candidates = new Set<string>([name])
    const own = upstreams !== undefined && Object.hasOwn(upstreams, name) ? upstreams[name]! : undefined
    for (const caller of callers.get(name) ?? []) candidates.add(caller)
    if (own !== undefined) {
      for (const upstream of own) {
        candidates.add(upstream)
        for (const caller of callers.get(upstream) ?? []) candidates.add(caller)
      }
    }
    for (const model of candidates) {
      if (!sharesUpstream(models, name, model)) continue
      const list = byModel.get(model)
      if (list === undefined) byModel.set(model, [entry])
      else list.push(entry)
    }
  }
  return { models, byModel }
}

/**
 * Every counter a request of key `id` on `model` is charged to: the key's budget, its
 * team's, and the key's budgets by model that apply to `model`, looked up in `byModel`
 * ({@link indexModelBudgets}; none without it). `model` undefined: every budget by model.
 *
 * @internal
 */
export const countersFor = (
  id: string,
  team: string | undefined,
  budgets: Budgets,
  model: string | undefined,
  now: number,
  byModel?: ModelBudgetIndex["byModel"] | undefined
): ReadonlyArray<Counter> => {
  const out: Array<Counter> = []
  if (budgets.key !== undefined) out.push(...countersOf("key", id, undefined, budgets.key, now))
  if (budgets.team !== undefined && team !== undefined) {
    out.push(...countersOf("team", team, undefined, budgets.team, now))
  }
  if (budgets.models !== undefined) {
    if (model !== undefined) {
      const applying = byModel?.get(model)
      if (applying !== undefined) {
        for (let i = 0; i < applying.length; i++) {
          const { name, scopeId, budget } = applying[i]!
          out.push(...countersOf("model", scopeId, name, budget, now))
        }
      }
    } else {
      for (const [name, budget] of Object.entries(budgets.models)) {
        out.push(...countersOf("model", `${id}/${name}`, name, budget, now))
      }
    }
  }
  return out
}

// A number as the decimal it was written as: its shortest representation (`String`) as an
// integer and a count of decimals: 0.07 -> [7n, 2], 1.5e-7 -> [15n, 8], 2e21 -> [2n * 10n ** 21n, 0].
const decimal = (n: number): readonly [bigint, number] => {
  const [mantissa = "0", exponent = "0"] = String(n).split("e")
  const [whole = "0", fraction = ""] = mantissa.split(".")
  const decimals = fraction.length - Number(exponent)
  const digits = BigInt(whole + fraction)
  return decimals < 0 ? [digits * 10n ** BigInt(-decimals), 0] : [digits, decimals]
}

// A dollar limit in whole nano-dollars, rounded down from the decimal it was written as: rounded to
// the nearest, $0.0000000015 was a limit of 2 nano-dollars, over the budget given; and in floats
// 3e-8 * 1e9 is 29.999999999999996, which `Math.floor` makes a nano-dollar short. Per request: a
// whole number of nano-dollars (the usual budget) takes no BigInt.
const nanoLimit = (usd: number): number => {
  const nearest = Math.round(usd * nano)
  if (nearest / nano === usd) return nearest
  const [digits, decimals] = decimal(usd)
  return Number((digits * BigInt(nano)) / 10n ** BigInt(decimals))
}

/** A price as exact fractions: nano-dollars per token, `input / scale` and `output / scale`. */
interface ExactPrice {
  readonly input: bigint
  readonly output: bigint
  readonly scale: bigint
}

const exactPrices = new WeakMap<Price, ExactPrice>()

// Per million tokens in dollars is per token in thousandths of a nano-dollar: 0.07 $/M is 70 nano-dollars a token.
const exactOf = (price: Price): ExactPrice => {
  let exact = exactPrices.get(price)
  if (exact === undefined) {
    const [input, inputDecimals] = decimal(price.input)
    const [output, outputDecimals] = decimal(price.output)
    const decimals = Math.max(inputDecimals, outputDecimals)
    exact = {
      input: input * 10n ** BigInt(decimals - inputDecimals + 3),
      output: output * 10n ** BigInt(decimals - outputDecimals + 3),
      scale: 10n ** BigInt(decimals)
    }
    exactPrices.set(price, exact)
  }
  return exact
}

/**
 * The price of a request in nano-dollars, rounded up once over the whole request. Prices
 * are read as the decimals they were written as and multiplied in integers: in floats
 * `100 * 0.07 * 1000` is `7000.000000000001`, which rounds up to a nano-dollar too many.
 *
 * @internal
 */
export const nanoDollarsOf = (price: Price, inputTokens: number, outputTokens: number): number => {
  if (!Number.isSafeInteger(inputTokens) || !Number.isSafeInteger(outputTokens)) {
    return Math.ceil(inputTokens * price.input * 1000 + outputTokens * price.output * 1000)
  }
  const { input, output, scale } = exactOf(price)
  const total = BigInt(inputTokens) * input + BigInt(outputTokens) * output
  const nanos = (total + scale - 1n) / scale
  return nanos > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(nanos)
}

/**
 * The amount of a request on a counter: tokens in and out, or their price in nano-dollars
 * (rounded up, {@link nanoDollarsOf}). A reservation and its settlement both count with it.
 *
 * @internal
 */
export const amountOf = (unit: Unit, price: Price | undefined, inputTokens: number, outputTokens: number): number =>
  // Amounts stay exact integers (in JavaScript and in Redis's HINCRBY) however large the request.
  Math.min(
    Number.MAX_SAFE_INTEGER,
    unit === "tokens"
      ? inputTokens + outputTokens
      : price === undefined
        ? 0
        : nanoDollarsOf(price, inputTokens, outputTokens)
  )

/**
 * A counter's amount in its unit as users read it (tokens, or dollars).
 *
 * @internal
 */
export const shown = (unit: Unit, amount: number): number => (unit === "tokens" ? amount : amount / nano)

/**
 * When a counter's window ends (ms since the epoch), if it has one.
 *
 * @internal
 */
export const windowEnd = (counter: Counter): number | undefined =>
  counter.periodMs === undefined || counter.window === undefined ? undefined : (counter.window + 1) * counter.periodMs
