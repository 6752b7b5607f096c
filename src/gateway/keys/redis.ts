/**
 * The key store on Redis, shared by every gateway using the same Redis and prefix.
 *
 * Keys: `<prefix>keys` (hash: id -> the key's JSON, secret hashed), `<prefix>hashes` (hash:
 * SHA-256 -> id), `<prefix>disabled` (hash: id -> 1), `<prefix>ids` (sorted set of the ids, all
 * scored 0: the listing's pages by id; while it holds fewer than `<prefix>keys`, as after keys an
 * earlier version created, each listing adds up to 20 pages of `HSCAN` to it and says it is
 * incomplete). Budgets: per counter a hash
 * `<prefix>budget:<counter>` (`spent`, `held`) and a sorted set `<prefix>budget:<counter>:leases`
 * of the reservations it holds (`<id>|<amount>`, scored by their lease end). Every
 * operation but filling `<prefix>ids` is one Lua script, so a
 * reservation on several counters is atomic across processes: 200 concurrent first
 * requests of a key cannot hold more than its budget. A reservation whose gateway died is
 * given back when its lease ends (the next reservation on the counter sweeps it), with the
 * time from the Redis server's clock. A budget's period windows are taken from that clock too
 * (in the script that reserves, no extra round trip): replicas whose clocks differ charge the
 * same window, and a counter's expiry is set at its window's end (plus the longest lease) in
 * that time, never shortened by a replica whose clock runs ahead. A counter whose `spent` or `held` is not a whole number
 * of 0 or more, or whose key holds another type (edited by hand, written by another version), is read by
 * no script as empty: it is reported (`UnreadableCounter`), and nothing is written to it.
 *
 * Not for Redis Cluster: a reservation touches the counters of several scopes in one script.
 *
 * The scripts: the directory's in `redis-directory.ts`, the counters' in `redis-reserve.ts` (with the
 * Lua they share) and `redis-settle.ts`; this module runs them and reads their replies.
 *
 * @internal
 */
import { Effect, Semaphore } from "effect"
import { Redis } from "effect/persistence"
import type { Guard, StoreError } from "../../Redis.js"
import {
  type Backend,
  type Charge,
  type Counter,
  type GivenBack,
  type InsertResult,
  type Level,
  type Owner,
  type ReserveResult,
  retime,
  UnreadableCounter,
  UnreadableRecord
} from "./ledger.js"
import { encodeRecord, type KeyRecord } from "./options.js"
import {
  byIdScript,
  disableScript,
  fillPages,
  indexScript,
  insertScript,
  lookupScript,
  pageScript,
  record,
  removeScript,
  retiredScript,
  storedId
} from "./redis-directory.js"
import { readScript, reserveScript } from "./redis-reserve.js"
import { giveBackScript, renewScript, settleScript } from "./redis-settle.js"

const levels = (reply: ReadonlyArray<unknown>, from: number, count: number): ReadonlyArray<Level> => {
  const out: Array<Level> = []
  for (let i = 0; i < count; i++) {
    out.push({ spent: Number(reply[from + 2 * i] ?? 0), held: Number(reply[from + 2 * i + 1] ?? 0) })
  }
  return out
}

/**
 * The Redis backend; every call goes through `guard` (its deadline, its outage report).
 *
 * @internal
 */
export const make = Effect.fnUntraced(function* (options: {
  readonly prefix: string
  readonly guard: Guard
  readonly leaseMs: number
  /** The Redis keys of a key's rate-limit windows, by its id (none without it). */
  readonly limitKeys?: ((id: string) => ReadonlyArray<string>) | undefined
}) {
  const redis = yield* Redis.Redis
  const { prefix, guard, leaseMs: longestLease, limitKeys = () => [] } = options
  const keysKey = `${prefix}keys`
  const hashesKey = `${prefix}hashes`
  const disabledKey = `${prefix}disabled`
  const idsKey = `${prefix}ids`
  const directory = [keysKey, hashesKey] as const
  const reserveDirectory = [keysKey, hashesKey, disabledKey] as const
  const lookup = redis.eval(lookupScript)
  const lookupId = redis.eval(byIdScript)
  const insert = redis.eval(insertScript)
  const remove = redis.eval(removeScript)
  const addToIndex = redis.eval(indexScript)
  const pageOf = redis.eval(pageScript)
  const disable = redis.eval(disableScript)
  const reserve = redis.eval(reserveScript)
  const settle = redis.eval(settleScript)
  const giveBack = redis.eval(giveBackScript)
  const read = redis.eval(readScript)
  const renew = redis.eval(renewScript)
  const retired = redis.eval(retiredScript)

  const keyOf = (counter: Counter) => `${prefix}budget:${counter.name}`
  const counterKeys = (counters: ReadonlyArray<Counter>): Array<string> => {
    const keys: Array<string> = []
    for (const counter of counters) {
      const base = keyOf(counter)
      keys.push(base, `${base}:leases`)
    }
    return keys
  }
  const baseKeys = (counters: ReadonlyArray<Counter>): Array<string> => {
    const keys: Array<string> = []
    for (const counter of counters) keys.push(`${prefix}budget:${counter.base}`)
    return keys
  }
  // What a new or removed key's `clear` deletes: its counters without their window, then its rate limits.
  const clearedKeys = (id: string, counters: ReadonlyArray<Counter>): Array<string> => {
    const keys = baseKeys(counters)
    keys.push(...limitKeys(id))
    return keys
  }
  const periodsOf = (counters: ReadonlyArray<Counter>) => counters.map((counter) => counter.periodMs ?? 0)
  const countersOf = (charges: ReadonlyArray<Charge>) => charges.map((charge) => charge.counter)
  // The counter a script's `{ -i, now }` names, in the window of Redis's time.
  const unreadable = (counters: ReadonlyArray<Counter>, reply: ReadonlyArray<unknown>) => {
    const counter = retime(counters[-Number(reply[0]) - 1]!, Number(reply[1]))
    return new UnreadableCounter({ counter, key: keyOf(counter) })
  }

  // A window's counter outlives its window by the longest lease, then expires (ms since the epoch; 0: never).
  const expiryOf = (counter: Counter, leaseMs: number): number =>
    counter.periodMs === undefined || counter.window === undefined
      ? 0
      : (counter.window + 1) * counter.periodMs + leaseMs

  // The ids of keys stored without them in `ids` (by an earlier version, or its replicas still
  // running), added a page of HSCAN at a time (one HKEYS of 10,000,000 keys would hold the server
  // and the shared connection), at most `fillPages` pages by a listing: millions of keys take many
  // listings, each of bounded work, which say they are incomplete until the ids hold every key.
  // The scan goes on from where the last listing left it (a pass ends at cursor "0"); one listing
  // of this process at a time fills, the others answer from the ids as they are.
  let scanCursor = "0"
  const filling = yield* Semaphore.make(1)
  const scan = (cursor: string, pages: number): Effect.Effect<string, StoreError> =>
    Effect.flatMap(
      guard.call(
        "list",
        redis.send<readonly [string, ReadonlyArray<string>]>("HSCAN", keysKey, cursor, "COUNT", "500")
      ),
      ([next, flat]) => {
        const found: Array<string> = []
        for (let i = 0; i + 1 < flat.length; i += 2) found.push(String(flat[i]))
        const added = found.length === 0 ? Effect.void : guard.call("list", addToIndex(keysKey, idsKey, found))
        const after = String(next)
        return Effect.andThen(added, after === "0" || pages <= 1 ? Effect.succeed(after) : scan(after, pages - 1))
      }
    )
  const index = filling.withPermitsIfAvailable(1)(
    Effect.map(
      Effect.suspend(() => scan(scanCursor, fillPages)),
      (next) => {
        scanCursor = next
      }
    )
  )

  const readPage = (after: string | undefined, count: number) =>
    guard.call("list", pageOf(keysKey, disabledKey, idsKey, after ?? "", count))

  // A record that is there but cannot be read is not "no such key".
  const fromJson = (
    json: string,
    disabled: boolean,
    id: string | undefined
  ): Effect.Effect<KeyRecord, UnreadableRecord> => {
    const found = record(json, disabled)
    return found !== undefined
      ? Effect.succeed(found)
      : Effect.fail(new UnreadableRecord({ id: id ?? storedId(json), json }))
  }
  // Read by a secret's hash (`sha256`), the record must be of that secret: the entry of a deleted key's
  // secret left in `hashes` (its record could not be read, so its hash was not known to remove it) would
  // otherwise let that secret in as a later key of its id.
  const fromPair =
    (id: string | undefined, sha256?: string) =>
    (reply: readonly [string, number] | null): Effect.Effect<KeyRecord | undefined, UnreadableRecord> => {
      if (reply === null || !Array.isArray(reply)) return Effect.undefined
      const found = fromJson(String(reply[0]), Number(reply[1]) === 1, id)
      return sha256 === undefined
        ? found
        : Effect.map(found, (record) => (record.sha256 === sha256 ? record : undefined))
    }

  return {
    local: false,
    retired: (ids) =>
      Effect.map(guard.call("retired", retired(keysKey, disabledKey, ids)), (reply) =>
        Array.isArray(reply) ? reply.map(String) : []
      ),
    byHash: (sha256) =>
      Effect.flatMap(
        guard.call("lookup", lookup(hashesKey, keysKey, disabledKey, sha256)),
        fromPair(undefined, sha256)
      ),
    byId: (id) => Effect.flatMap(guard.call("byId", lookupId(keysKey, disabledKey, id)), fromPair(id)),
    insert: (key, maxKeys, counters) =>
      Effect.map(
        guard.call(
          "insert",
          insert(
            keysKey,
            hashesKey,
            idsKey,
            disabledKey,
            clearedKeys(key.id, counters),
            key.id,
            key.sha256,
            encodeRecord(key),
            maxKeys,
            periodsOf(counters)
          )
        ),
        (reply) => String(reply) as InsertResult
      ),
    remove: (id, read, counters) =>
      Effect.map(
        guard.call(
          "remove",
          remove(
            keysKey,
            hashesKey,
            disabledKey,
            idsKey,
            clearedKeys(id, counters),
            id,
            "sha256" in read ? read.sha256 : "",
            "json" in read ? read.json : "",
            periodsOf(counters)
          )
        ),
        (reply) => String(reply) as "removed" | "missing" | "changed"
      ),
    page: (after, count) =>
      readPage(after, count).pipe(
        Effect.flatMap((reply) =>
          Number(reply[1]) === 1 ? Effect.andThen(index, readPage(after, count)) : Effect.succeed(reply)
        ),
        Effect.map((reply) => {
          const records: Array<KeyRecord> = []
          const unreadable: Array<string> = []
          let last: string | undefined
          for (let i = 2; i + 2 < reply.length; i += 3) {
            const id = String(reply[i])
            const json = String(reply[i + 1])
            last = id
            // Gone since the ids were read: not listed.
            if (json === "") continue
            const found = record(json, Number(reply[i + 2]) === 1)
            if (found !== undefined) records.push(found)
            else unreadable.push(id)
          }
          return Number(reply[1]) === 1
            ? { records, unreadable, last, more: Number(reply[0]) === 1, incomplete: true }
            : { records, unreadable, last, more: Number(reply[0]) === 1 }
        })
      ),
    setDisabled: (id, flag) =>
      Effect.flatMap(guard.call("disable", disable(keysKey, disabledKey, id, flag)), (json) =>
        json === null ? Effect.undefined : fromJson(String(json), flag, id)
      ),
    // Redis's own time, not the caller's `now`, sets the windows and the leases.
    // The charges of one request are of one key: its owner is the first charge's that has one.
    reserve: (id, charges: ReadonlyArray<Charge>, leaseMs, _now, key?: Owner) => {
      const args: Array<number> = []
      for (const charge of charges) args.push(charge.counter.limit, charge.amount, charge.counter.periodMs ?? 0)
      const counters = countersOf(charges)
      return Effect.flatMap(
        guard.call("reserve", reserve(baseKeys(counters), reserveDirectory, leaseMs, id, args, key)),
        (reply): Effect.Effect<ReserveResult, UnreadableCounter> => {
          const index = Number(reply[0])
          const now = Number(reply[reply.length - 1])
          if (-index === charges.length + 2) return Effect.succeed({ _tag: "Disabled", now })
          if (-index === charges.length + 1) return Effect.succeed({ _tag: "Gone", now })
          if (index < 0) return Effect.fail(unreadable(counters, reply))
          return Effect.succeed(
            index === 0
              ? { _tag: "Reserved", levels: levels(reply, 1, charges.length), now }
              : {
                  _tag: "Exceeded",
                  index: index - 1,
                  level: { spent: Number(reply[1]), held: Number(reply[2]) },
                  before: levels(reply, 3, index - 1),
                  now
                }
          )
        }
      )
    },
    settle: (id, charges, actual, _now, once) => {
      // Per counter its amounts, then per counter its owner.
      const args: Array<number | string> = []
      for (let i = 0; i < charges.length; i++) {
        const { counter, amount } = charges[i]!
        args.push(amount, Math.max(0, actual[i] ?? 0), expiryOf(counter, longestLease))
      }
      for (const { owner } of charges) args.push(owner?.id ?? "", owner?.sha256 ?? "")
      return Effect.map(
        guard.call("settle", settle(counterKeys(countersOf(charges)), directory, id, once, longestLease, args)),
        (reply) => ({
          levels: charges.map(({ counter }, i): Level | UnreadableCounter | undefined => {
            const found = Number(reply[3 * i])
            return found === 1
              ? { spent: Number(reply[3 * i + 1] ?? 0), held: Number(reply[3 * i + 2] ?? 0) }
              : found === 2
                ? undefined
                : new UnreadableCounter({ counter, key: keyOf(counter) })
          }),
          applied: Number(reply[3 * charges.length]) === 1
        })
      )
    },
    giveBack: (id, charges, leaseMs, _now) => {
      const args: Array<number> = []
      for (const { counter, amount } of charges) args.push(amount, counter.periodMs ?? 0)
      return Effect.map(guard.call("giveBack", giveBack(baseKeys(countersOf(charges)), leaseMs, id, args)), (reply) =>
        charges.map(({ counter }, i): GivenBack => {
          const found = Number(reply[4 * i])
          if (found === 0) return undefined
          const window = Number(reply[4 * i + 3])
          const held =
            counter.periodMs === undefined || window < 0 ? counter : retime(counter, window * counter.periodMs)
          if (found < 0) return new UnreadableCounter({ counter: held, key: keyOf(held) })
          return { counter: held, level: { spent: Number(reply[4 * i + 1]), held: Number(reply[4 * i + 2]) } }
        })
      )
    },
    renew: (id, charges, leaseMs) =>
      Effect.asVoid(
        guard.call(
          "renew",
          renew(
            counterKeys(countersOf(charges)),
            leaseMs,
            id,
            charges.map((charge) => charge.amount)
          )
        )
      ),
    read: (counters, _now) =>
      Effect.flatMap(
        guard.call(
          "read",
          read(
            baseKeys(counters),
            counters.map((counter) => counter.periodMs ?? 0)
          )
        ),
        (reply) =>
          Number(reply[0]) < 0
            ? Effect.fail(unreadable(counters, reply))
            : Effect.succeed({ levels: levels(reply, 1, counters.length), now: Number(reply[reply.length - 1]) })
      )
  } satisfies Backend
})
