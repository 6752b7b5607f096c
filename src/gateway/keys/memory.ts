/**
 * The key store in this process: a directory of created keys and a ledger of budget
 * counters. Every operation is one synchronous step, so a reservation on several counters
 * is atomic. A counter of a past window is dropped when the window after its next one is first
 * used; leases not settled by their end are given back at their end (no longer counted by a read or a reserve).
 *
 * @internal
 */
import { Effect } from "effect"
import type { Backend, Charge, Counter, GivenBack, Ledger, Level, Owner } from "./ledger.js"
import { escapePart, retime } from "./ledger.js"
import type { KeyRecord } from "./options.js"

interface MemoryCounter {
  spent: number
  held: number
  /** Reservation id -> amount held and lease end. */
  readonly leases: Map<string, { readonly amount: number; readonly expires: number }>
  nextSweep: number
}

/**
 * `forgetLimits`: drops a key's rate-limit windows (by its id) from the limits' store beside it.
 *
 * @internal
 */
export const make = (forgetLimits: (id: string) => void = () => {}): Backend => {
  const byId = new Map<string, KeyRecord>()
  const byHash = new Map<string, KeyRecord>()
  const counters = new Map<string, MemoryCounter>()
  // The ids, for a page of the listing without sorting every key each time. A create appends
  // (a sorted insert moved up to maxKeys ids per create); the next listing sorts them again, in
  // about one pass over the sorted run (the engine's sort merges runs).
  const ids: Array<string> = []
  let sorted = true
  // The index of the first id after `id` (`orEqual`: at or after it), in sorted `ids`.
  const firstAfter = (id: string, orEqual: boolean): number => {
    let low = 0
    let high = ids.length
    while (low < high) {
      const middle = (low + high) >>> 1
      const at = ids[middle]!
      if (at < id || (!orEqual && at === id)) low = middle + 1
      else high = middle
    }
    return low
  }
  // Base name (without window) -> its latest two windows' counters, oldest first. The one before
  // the latest is kept for the requests reserved in it and settled after it ended, and for a
  // reserve that read the clock before the boundary and came after a reserve of the new window:
  // both count in their own window, as on Redis (where a window's counter outlives it by the
  // longest lease), and never replace the new window's counter with an empty one.
  const windows = new Map<string, Array<{ readonly window: number; readonly name: string }>>()

  // The latest time a reserve or a read was given. A clock set back two windows or more (or a
  // request that read it that long ago) met no counter of its window and opened an empty one for
  // each request, each spending the whole budget again: such a step goes on at this time, in the
  // latest window, which it tells as the store's `now` (as Redis tells its own time).
  let latest = Number.NEGATIVE_INFINITY
  const behind = (c: Counter): boolean => {
    if (c.window === undefined) return false
    const kept = windows.get(c.base)
    return kept !== undefined && c.window < kept[kept.length - 1]!.window - 1
  }
  const timeOf = (counters: ReadonlyArray<Counter | Charge>, now: number): number => {
    if (now >= latest) {
      latest = now
      return now
    }
    for (let i = 0; i < counters.length; i++) {
      const each = counters[i]!
      if (behind("counter" in each ? each.counter : each)) return latest
    }
    return now
  }

  const baseOf = (c: Counter) => `${c.scope}:${escapePart(c.scopeId)}:${c.unit}`

  const get = (c: Counter, create: boolean): MemoryCounter | undefined => {
    const found = counters.get(c.name)
    if (found !== undefined || !create) return found
    const made: MemoryCounter = { spent: 0, held: 0, leases: new Map(), nextSweep: 0 }
    if (c.window !== undefined) {
      const base = baseOf(c)
      const kept = windows.get(base) ?? []
      // Older than both windows kept (it waited past two boundaries): counted apart, kept nowhere.
      if (kept.length >= 2 && c.window < kept[0]!.window) return made
      kept.push({ window: c.window, name: c.name })
      kept.sort((a, b) => a.window - b.window)
      while (kept.length > 2) counters.delete(kept.shift()!.name)
      windows.set(base, kept)
    }
    counters.set(c.name, made)
    return made
  }

  // A lease ends exactly at its end, for reads and reserves alike. Leases are kept in the order
  // they were taken, which is the order they end (one lease length per store): the expired ones
  // are at the front, so the check stops at the first live lease. `all` looks at every lease, as
  // the sweep does now and then, to give back one out of order (the clock went back).
  const expire = (state: MemoryCounter, now: number, all = false) => {
    for (const [id, lease] of state.leases) {
      if (lease.expires > now) {
        if (all) continue
        return
      }
      state.held -= lease.amount
      state.leases.delete(id)
    }
  }

  const sweep = (state: MemoryCounter, now: number, leaseMs: number) => {
    const all = now >= state.nextSweep
    if (all) state.nextSweep = now + Math.max(1000, Math.floor(leaseMs / 4))
    expire(state, now, all)
  }

  // Every window of each counter's budget, and the key's rate limits.
  const clear = (id: string, list: ReadonlyArray<Counter>) => {
    for (const c of list) {
      counters.delete(c.base)
      for (const { name } of windows.get(c.base) ?? []) counters.delete(name)
      windows.delete(c.base)
    }
    forgetLimits(id)
  }

  // Whether the key a charge belongs to is still the one stored (none: a team's, or the configuration's key).
  const owns = (owner: Owner | undefined): boolean => owner === undefined || byId.get(owner.id)?.sha256 === owner.sha256

  const reserve: Ledger["reserve"] = (id, charges, leaseMs, asked) =>
    Effect.sync(() => {
      for (let i = 0; i < charges.length; i++) if (!owns(charges[i]!.owner)) return { _tag: "Gone" } as const
      const now = timeOf(charges, asked)
      const told = now === asked ? undefined : now
      const states: Array<MemoryCounter> = []
      for (let i = 0; i < charges.length; i++) {
        const { counter, amount } = charges[i]!
        const c = told === undefined ? counter : retime(counter, now)
        const state = get(c, true)!
        sweep(state, now, leaseMs)
        const used = state.spent + state.held
        if (used + amount > c.limit || used >= c.limit) {
          const before = states.map(({ spent, held }) => ({ spent, held }))
          return {
            _tag: "Exceeded",
            index: i,
            level: { spent: state.spent, held: state.held },
            before,
            now: told
          } as const
        }
        states.push(state)
      }
      const levels: Array<Level> = []
      for (let i = 0; i < charges.length; i++) {
        const state = states[i]!
        const amount = charges[i]!.amount
        if (amount > 0) {
          state.held += amount
          state.leases.set(id, { amount, expires: now + leaseMs })
        }
        levels.push({ spent: state.spent, held: state.held })
      }
      return { _tag: "Reserved", levels, now: told } as const
    })

  const settle: Ledger["settle"] = (id, charges, actual) =>
    Effect.sync(() => {
      const levels: Array<Level | undefined> = []
      for (let i = 0; i < charges.length; i++) {
        const charge = charges[i]!
        const state = get(charge.counter, false)
        // Its key deleted (and perhaps created again since): what the request held is given back, nothing added.
        const owned = owns(charge.owner)
        if (state === undefined) {
          levels.push(owned ? { spent: 0, held: 0 } : undefined)
          continue
        }
        const lease = state.leases.get(id)
        if (lease !== undefined) {
          state.leases.delete(id)
          state.held -= lease.amount
        }
        if (!owned) {
          levels.push(undefined)
          continue
        }
        state.spent += Math.max(0, actual[i] ?? 0)
        levels.push({ spent: state.spent, held: state.held })
      }
      // Never fails: no settle is tried again, and each is the first.
      return { levels, applied: true }
    })

  // Its windows are the caller's: the reserve's charges name them.
  const giveBack: Ledger["giveBack"] = (id, charges) =>
    Effect.sync(() =>
      charges.map(({ counter }): GivenBack => {
        const state = get(counter, false)
        const lease = state?.leases.get(id)
        if (state === undefined || lease === undefined) return undefined
        state.leases.delete(id)
        state.held -= lease.amount
        return { counter, level: { spent: state.spent, held: state.held } }
      })
    )

  // Taken out and put back at the end: leases stay in the order they end.
  const renew: Ledger["renew"] = (id, charges, leaseMs, now) =>
    Effect.sync(() => {
      for (const { counter } of charges) {
        const state = get(counter, false)
        if (state === undefined) continue
        expire(state, now)
        const lease = state.leases.get(id)
        if (lease === undefined) continue
        state.leases.delete(id)
        state.leases.set(id, { amount: lease.amount, expires: Math.max(lease.expires, now + leaseMs) })
      }
    })

  const read: Ledger["read"] = (list, asked) =>
    Effect.sync(() => {
      const now = timeOf(list, asked)
      return {
        levels: list.map((counter) => {
          const state = get(now === asked ? counter : retime(counter, now), false)
          if (state === undefined) return { spent: 0, held: 0 }
          expire(state, now)
          return { spent: state.spent, held: state.held }
        }),
        now: now === asked ? undefined : now
      }
    })

  return {
    local: true,
    reserve,
    settle,
    giveBack,
    renew,
    read,
    current: (sha256) => byHash.get(sha256),
    byHash: (sha256) => Effect.sync(() => byHash.get(sha256)),
    byId: (id) => Effect.sync(() => byId.get(id)),
    insert: (record, maxKeys, list) =>
      Effect.sync(() => {
        if (byId.has(record.id)) return "id-taken"
        if (byHash.has(record.sha256)) return "secret-taken"
        if (byId.size >= maxKeys) return "full"
        clear(record.id, list)
        byId.set(record.id, record)
        if (sorted && ids.length > 0 && ids[ids.length - 1]! > record.id) sorted = false
        ids.push(record.id)
        byHash.set(record.sha256, record)
        return "inserted"
      }),
    page: (after, count) =>
      Effect.sync(() => {
        if (!sorted) {
          ids.sort()
          sorted = true
        }
        const from = after === undefined ? 0 : firstAfter(after, false)
        const slice = ids.slice(from, from + count)
        return {
          records: slice.map((id) => byId.get(id)!),
          unreadable: [],
          last: slice.at(-1),
          more: from + count < ids.length
        }
      }),
    // Every record here is readable: one read as `json` is never asked for.
    remove: (id, read, list) =>
      Effect.sync(() => {
        const found = byId.get(id)
        if (found === undefined) return "missing"
        if (!("sha256" in read) || found.sha256 !== read.sha256) return "changed"
        byId.delete(id)
        byHash.delete(found.sha256)
        ids.splice(sorted ? firstAfter(id, true) : ids.indexOf(id), 1)
        clear(id, list)
        return "removed"
      }),
    setDisabled: (id, disabled) =>
      Effect.sync(() => {
        const found = byId.get(id)
        if (found === undefined) return undefined
        const updated = { ...found, disabled }
        byId.set(id, updated)
        byHash.set(updated.sha256, updated)
        return updated
      })
  }
}
