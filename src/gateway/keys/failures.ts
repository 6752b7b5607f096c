/**
 * The key store's refusals shared by its parts.
 *
 * @internal
 */
import { Duration } from "effect"
import { gatewayError } from "../errors.js"

/**
 * The store could not be reached in time (503, `Retry-After: 1`).
 *
 * @internal
 */
export const unavailable = (what: "key" | "budget") =>
  gatewayError("Unavailable", `The ${what} store is unavailable; try again shortly`, {
    code: "store_unavailable",
    retryAfter: Duration.seconds(1)
  })

/**
 * No key with this id (404).
 *
 * @internal
 */
export const notFound = (id: string) =>
  gatewayError("NotFound", `No key with the id "${id}"`, { param: "id", code: "key_not_found" })
