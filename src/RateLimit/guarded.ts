/**
 * A store's calls bounded and counted by the Redis guard (`Redis.Guard`), their failures as the
 * limiter's (`RateLimiterError`); and whether a call that failed may have run all the same.
 *
 * @internal
 */
import { Effect } from "effect"
import { RateLimiter } from "effect/persistence"
import * as SharedRedis from "../Redis.js"
import type * as RedisStore from "./Redis.js"

/** The store calls of a limiter, each behind the guard when there is one. */
export interface Guarded {
  readonly store: RateLimiter.RateLimiterStore["Service"]
  readonly windows: RedisStore.AlignedFixedWindow | undefined
  readonly revocable: RedisStore.Revocable | undefined
}

// `failClosed`: `onStoreError: "reject"`.
export const guardStore = (
  store: RateLimiter.RateLimiterStore["Service"],
  guard: SharedRedis.Guard | undefined,
  failClosed: boolean
): Guarded => {
  const guarded: RateLimiter.RateLimiterStore["Service"] =
    guard === undefined
      ? store
      : {
          ...store,
          fixedWindow: (o) => Effect.mapError(guard.call("fixedWindow", store.fixedWindow(o)), toLimiterError),
          tokenBucket: (o) => Effect.mapError(guard.call("tokenBucket", store.tokenBucket(o)), toLimiterError)
        }
  // The stores of the layers keep fixed windows of their own (`AlignedFixedWindow`): effect's counter
  // lasts `window / limit` per token taken, so a window used at 60% ended after 60% of its length.
  const windows: RedisStore.AlignedFixedWindow | undefined =
    "fixedWindowAligned" in store && "fixedWindowRelease" in store
      ? guard === undefined
        ? (store as RedisStore.AlignedFixedWindow)
        : {
            fixedWindowAligned: (o) =>
              Effect.mapError(
                guard.call("fixedWindow", (store as RedisStore.AlignedFixedWindow).fixedWindowAligned(o)),
                toLimiterError
              ),
            fixedWindowRelease: (o) =>
              Effect.mapError(
                guard.call("fixedWindow", (store as RedisStore.AlignedFixedWindow).fixedWindowRelease(o)),
                toLimiterError
              )
          }
      : undefined
  // Failing closed, a call refused because its reservation's answer did not come in time took no slot,
  // yet the reservation may have run all the same (its answer only came late): on a store that can
  // revoke (the Redis store), each reservation is tagged, and one that may have run is revoked.
  const revocable: RedisStore.Revocable | undefined =
    failClosed && "revokeReservation" in store && "fixedWindowAlignedTagged" in store && "tokenBucketTagged" in store
      ? guardRevocable(store as unknown as RedisStore.Revocable, guard)
      : undefined
  return { store: guarded, windows, revocable }
}

// A revocable store's calls, each bounded and counted by the guard as the others are.
const guardRevocable = (store: RedisStore.Revocable, guard: SharedRedis.Guard | undefined): RedisStore.Revocable =>
  guard === undefined
    ? store
    : {
        fixedWindowAlignedTagged: (o) =>
          Effect.mapError(guard.call("fixedWindow", store.fixedWindowAlignedTagged(o)), toLimiterError),
        tokenBucketTagged: (o) =>
          Effect.mapError(guard.call("tokenBucket", store.tokenBucketTagged(o)), toLimiterError),
        revokeReservation: (o) =>
          Effect.mapError(
            guard.call(o.algorithm === "fixed-window" ? "fixedWindow" : "tokenBucket", store.revokeReservation(o)),
            toLimiterError
          )
      }

// Whether a failed store call may have reached the store and run: all but one skipped during a
// reported outage or refused by the client before it was written (see `Redis.neverSent`).
export const mayHaveRun = (error: RateLimiter.RateLimiterError): boolean => {
  const cause = error.reason._tag === "RateLimitStoreError" ? error.reason.cause : undefined
  return !SharedRedis.neverSent(
    cause instanceof SharedRedis.StoreError
      ? cause
      : new SharedRedis.StoreError({
          store: "ratelimit",
          operation: "reserve",
          reason: "Failed",
          message: error.message,
          cause: error
        })
  )
}

const toLimiterError = (error: SharedRedis.StoreError): RateLimiter.RateLimiterError =>
  new RateLimiter.RateLimiterError({
    reason: new RateLimiter.RateLimitStoreError({ message: error.message, cause: error })
  })
