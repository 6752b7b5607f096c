/**
 * Discovery's error, and the two ways every discovery fails a query with it.
 *
 * @internal
 */
import { Schema } from "effect"
import type { Query } from "../Discovery.js"

/**
 * @since 0.2.0
 * @category models
 */
export const DiscoveryErrorReason = Schema.Literals(["NotFound", "Unavailable"])

/**
 * Discovery found no agent for the query (`NotFound`), or could not answer (`Unavailable`:
 * the lookup failed, threw, timed out, or its breaker is open). `cause`, when `Unavailable`:
 * what the lookup failed with or threw, or else the library's error (a `TimeoutError`, the
 * breaker's `CircuitOpenError`, a `ModelError` for an invalid answer). A query whose `concept`
 * or `intent` is no string of 1 to 1,000 characters is `NotFound`, its message naming the field
 * (`invalid query.concept: ...`).
 *
 * @since 0.2.0
 * @category errors
 */
export class DiscoveryError extends Schema.TaggedError<DiscoveryError>("effect-orchestra/DiscoveryError")(
  "DiscoveryError",
  {
    reason: DiscoveryErrorReason,
    concept: Schema.String,
    intent: Schema.String,
    message: Schema.String,
    cause: Schema.optional(Schema.Defect())
  }
) {}

/** @internal */
export const fail = (query: Query, reason: "NotFound" | "Unavailable", message: string, cause?: unknown) =>
  new DiscoveryError({
    reason,
    concept: String(query.concept),
    intent: String(query.intent),
    message,
    ...(cause === undefined ? {} : { cause })
  })

/**
 * No agent serves the query. Quoted as JSON, as a task's record says it: a quote or a line break
 * of the caller's cannot forge it.
 *
 * @internal
 */
export const notFound = (query: Query): DiscoveryError => {
  const { concept, intent } = query
  return fail(query, "NotFound", `no agent for concept ${JSON.stringify(concept)} and intent ${JSON.stringify(intent)}`)
}
