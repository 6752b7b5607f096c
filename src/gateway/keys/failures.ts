/**
 * The key store's refusals shared by its parts.
 *
 * @internal
 */
import type { Duration } from "effect"
import { type BudgetScope, gatewayError } from "../errors.js"

/**
 * The store of keys, budgets or rate limits could not be reached in time (503), its
 * `Retry-After` when the store is probed again (`redis.probeInterval`).
 *
 * @internal
 */
export const unavailable = (what: "key" | "budget" | "rate limit", retryAfter: Duration.Duration) =>
  gatewayError("Unavailable", `The ${what} store is unavailable; try again shortly`, {
    code: "store_unavailable",
    retryAfter
  })

/**
 * No key with this id (404).
 *
 * @internal
 */
export const notFound = (id: string) =>
  gatewayError("NotFound", `No key with the id "${id}"`, { param: "id", code: "key_not_found" })

/**
 * A stored key this gateway cannot read (500): edited by hand, or written by a newer version.
 *
 * @internal
 */
export const unreadable = (id: string | undefined) =>
  gatewayError(
    "Internal",
    `The key store holds a record${id === undefined ? "" : ` for the key "${id}"`} that this gateway cannot read`,
    { code: "key_record_unreadable" }
  )

/**
 * A stored budget counter this gateway cannot read (500): edited by hand, or written by another version.
 *
 * @internal
 */
export const unreadableBudget = (scope: BudgetScope, scopeId: string) =>
  gatewayError(
    "Internal",
    `The key store holds the budget of the ${scope} "${scopeId}" in a form this gateway cannot read`,
    { code: "key_record_unreadable" }
  )
