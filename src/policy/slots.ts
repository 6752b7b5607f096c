/**
 * The provider slots of the engine: by provider name, the semaphore that bounds a provider's calls
 * running at once (its `maxConcurrency`), and the one limit each name may have.
 *
 * @internal
 */
import type * as Input from "../Input.js"
import { Semaphore } from "effect"

/**
 * The provider slots of one name, shared by the calls and streams that use them at once: kept by
 * the engine while any does (queued or served), dropped by the last `leave`, so that the names of
 * providers built per tenant or per request are not kept for the engine's life.
 *
 * @internal
 */
export class ProviderSlots {
  users = 0
  readonly semaphore: Semaphore.Semaphore
  constructor(
    readonly name: string,
    readonly limit: number,
    private readonly owner: Map<string, ProviderSlots>
  ) {
    this.semaphore = Semaphore.makeUnsafe(limit)
  }

  /** One use of them ended (its permit, if it took one, given back or about to be). */
  leave(): void {
    if (--this.users === 0 && this.owner.get(this.name) === this) this.owner.delete(this.name)
  }
}

/**
 * The issue (under `path`) of `max` given for a provider `name` that has the limit `known`, if they differ.
 *
 * @internal
 */
export const slotLimitIssue = (name: string, known: number, max: number, path: string): Input.Issue | undefined =>
  known === max
    ? undefined
    : {
        path,
        message: `provider "${name}" already has maxConcurrency ${known}, got ${max}: one name is one provider, with one set of slots (give a provider of another limit a name of its own)`
      }

/**
 * The slots of one engine and the limits of the names it knows, with the operations the engine
 * exposes on them (`Engine.slotLimit`, `slot`, `claimSlot`, `pinSlot`).
 *
 * @internal
 */
export const makeSlots = () => {
  // The provider slots of the names in use (`ProviderSlots`), and the limits of names for the engine's life.
  const slots = new Map<string, ProviderSlots>()
  const pinned = new Map<string, number>()

  // By provider name, as its breaker, rate limit and metrics are: one provider, one set of slots, one
  // limit. A step that states no limit takes its name's (a plan's copy of the provider), and two limits
  // for one name are refused where they enter (`claimSlot`). A name's slots and limit are kept while its
  // calls use them (or for the engine's life, its executor's provider's): a name taken per tenant or per
  // request is let go with its last call. Without any limit known (most executors), a step stating none
  // costs two size reads.
  const slotLimit = (name: string, stated: number | undefined): number | undefined => {
    const max =
      stated ?? (pinned.size === 0 && slots.size === 0 ? undefined : (pinned.get(name) ?? slots.get(name)?.limit))
    return max === undefined || !Number.isFinite(max) ? undefined : max
  }

  const slot = (name: string, stated: number | undefined): ProviderSlots | undefined => {
    let found = slots.get(name)
    if (found === undefined) {
      const max = slotLimit(name, stated)
      if (max === undefined) return undefined
      found = new ProviderSlots(name, pinned.get(name) ?? max, slots)
      slots.set(name, found)
    }
    found.users++
    return found
  }

  const knownLimit = (name: string): number | undefined => pinned.get(name) ?? slots.get(name)?.limit

  const claimSlot = (name: string, max: number | undefined, path: string): Input.Issue | undefined => {
    if (max === undefined || !Number.isFinite(max)) return undefined
    const known = knownLimit(name)
    return known === undefined ? undefined : slotLimitIssue(name, known, max, path)
  }

  const pinSlot = (name: string, max: number | undefined): void => {
    if (max !== undefined && Number.isFinite(max) && !pinned.has(name)) pinned.set(name, max)
  }
  return { slotLimit, slot, claimSlot, pinSlot }
}
