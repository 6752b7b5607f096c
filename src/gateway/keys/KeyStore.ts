/**
 * Virtual keys for the gateway: who may call it, which models each key may use, its
 * per-minute limits, and its budgets in tokens and in money, kept in this process
 * ({@link layerMemory}) or shared by every replica through Redis ({@link layerRedis}).
 * Both layers provide the gateway's `Gateway.KeyStore` and {@link KeyAdmin} (create, list,
 * disable and delete keys and read their spend; the admin routes of `gateway/admin` serve it).
 *
 * - Secrets are never stored: a key is found by the SHA-256 of its bearer token. Keys of
 *   the config file give that hash (`sha256`, see {@link hashSecret}); keys created by an
 *   admin get a fresh `sk-orch-...` secret, returned once, and keep its first 12
 *   characters (`prefix`) for admins to tell keys apart.
 * - Before a call, `reserve` holds the request's largest cost (its input estimate plus
 *   `max_tokens`, in tokens and, through the price table, in dollars) on every budget that
 *   applies: the key's, its team's and the key's budget for the model. All at once or not at
 *   all (one Lua script on Redis), so concurrent first requests cannot overspend. Then it takes
 *   one request and its estimated tokens from the key's `rpm`/`tpm` limits (on `RateLimit`, so
 *   replicas share one count; `tpm` counts the estimate, as OpenAI counts `max_tokens`): a
 *   request refused by a budget spends no slot, and one refused by the limit holds
 *   nothing. After the call `settle` gives back the unused part and records the real usage
 *   (what was reserved, for the part of it the provider does not report); `release` gives it all back.
 *   While its request runs, the gateway renews a reservation (`renew`), so a request longer
 *   than `reservationTtl` keeps its hold. A reservation never settled (its gateway died) is
 *   given back after `reservationTtl`; a
 *   settle Redis does not answer is tried again in the background until it does (within
 *   `reservationTtl`), and counts once (one whose lease ended meanwhile, after an attempt that
 *   may have reached Redis, cannot tell whether it counted: it says so in the log).
 * - An exceeded budget is a 429 `GatewayError` (`BudgetExceeded`) naming the scope, its
 *   id, the unit, the amount spent (with what requests in flight hold), of it `held`, and the
 *   limit; one that only requests in flight hold (the request fits once they settle) has the code
 *   `budget_held` and a `retryAfter` of 1 second, and is answered as retryable; a
 *   limit reached is a 429 `RateLimited` with `Retry-After`, naming which (`rateLimit`:
 *   `requests` or `tokens` per minute) and its `limit`.
 * - When Redis fails or is too slow (every call has a deadline, see `Redis.GuardOptions`):
 *   budgets fail closed by default (503, nothing spent unaccounted), limits fail open (the
 *   providers' own limits still apply), keys already seen stay usable from the cache.
 *
 * @since 0.2.0
 */
import { Context, Effect, Layer, type Redacted } from "effect"
import { RateLimiter, type Redis } from "effect/persistence"
import type { BudgetScope, GatewayError } from "../errors.js"
// The gateway's key store contract, from the module Gateway.ts shares with it: no import cycle.
import * as Gateway from "../contract.js"
import * as Input from "../../Input.js"
import { withAlignedFixedWindow } from "../../RateLimit/memory.js"
import * as RateLimitRedis from "../../RateLimit/Redis.js"
import * as SharedRedis from "../../Redis.js"
import type { Budgets } from "./ledger.js"
import * as Limits from "./limits.js"
import * as Memory from "./memory.js"
import * as KeyOptions from "./options.js"
import * as RedisBackend from "./redis.js"
import { hash } from "./secret.js"
import { make } from "./store.js"

export type {
  /**
   * A budget as configured: `tokens`, `usd` (through the price table), or both; with
   * `period` it starts again at every multiple of the period since the Unix epoch.
   *
   * @since 0.2.0
   * @category models
   */
  Budget,
  /**
   * A key of the config file: its `id`, the `sha256` of its secret, and its policy.
   *
   * @since 0.2.0
   * @category models
   */
  KeyDefinition,
  /**
   * What a key may do: `allowedModels`, `rpm`, `tpm`, `budget`, `modelBudgets`, `team`. A budget
   * in `modelBudgets` caps the upstream models behind its name whichever name a request reaches
   * them by: `{ support: ... }` is charged for `openai/gpt-4o-mini` when the `support` domain's
   * chain may call it, and for another domain calling it.
   *
   * @since 0.2.0
   * @category models
   */
  KeyPolicy,
  /**
   * A model's price in US dollars per million tokens, `input` and `output`.
   *
   * @since 0.2.0
   * @category models
   */
  Price,
  /**
   * A budget after its checks (`periodMs` for the period).
   *
   * @since 0.2.0
   * @category models
   */
  ResolvedBudget
} from "./options.js"

/**
 * Options of {@link layerMemory}. Every value is checked when the layer is built (a
 * `OptionError` naming the field).
 *
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /** Keys of the configuration (read-only to admins). */
  readonly keys?: ReadonlyArray<KeyOptions.KeyDefinition> | undefined
  /** Team budgets, by team id; a key's `team` names one. */
  readonly teams?: { readonly [team: string]: { readonly budget?: KeyOptions.Budget | undefined } } | undefined
  /**
   * Prices by model (the request's `model`: a domain or `provider/model`; `"*"` for every
   * other). A key with a budget in `usd` cannot use a model without a price (403).
   */
  readonly prices?: { readonly [model: string]: KeyOptions.Price } | undefined
  /** How long a request may wait for a slot of its key's `rpm`/`tpm`. Default 0: 429 at once. */
  readonly rateLimitWait?: Input.DurationInput | undefined
  /**
   * How long a reservation is held without its gateway: one not settled by then (its gateway
   * died) is given back. A running request's reservation is renewed by its gateway every quarter
   * of it ({@link Service.renew}), so a request or stream may run longer. Default 15 minutes;
   * rounded up to whole milliseconds, at least 100 ms, at most 2^50 ms (about 35,678 years: a lease's end is a
   * time on Redis).
   */
  readonly reservationTtl?: Input.DurationInput | undefined
  /**
   * How long a key read from Redis is used without asking again (so a disabled or deleted key
   * stops working on other replicas within this time; a `KeyContext` a program keeps from
   * `authenticate` and hands to `reserve`, within this time + 1 s). A request the key has a budget
   * on is refused at once, whatever this time: its reserve checks the key on Redis in the same
   * script. Default 2 seconds; 0: ask every time.
   */
  readonly cacheTtl?: Input.DurationInput | undefined
  /** Most keys an admin may create. Default 100,000. */
  readonly maxKeys?: number | undefined
}

/**
 * Options of {@link layerRedis}.
 *
 * @since 0.2.0
 * @category models
 */
export interface RedisOptions extends Options {
  /** Prefix of every Redis key, at most 90 characters. Default `"orchestra:gateway:"`. */
  readonly prefix?: string | undefined
  /**
   * When Redis fails or is too slow: `budgets` `"reject"` (default: the request is
   * answered 503) or `"allow"` (it goes through unreserved; its usage is still recorded
   * when Redis answers again); `limits` `"allow"` (default) or `"reject"` (503 as well: the
   * store is unavailable, not the key's limit reached). Each 503 is `store_unavailable`, its
   * `Retry-After` `redis.probeInterval`.
   */
  readonly onStoreError?:
    | { readonly budgets?: "reject" | "allow" | undefined; readonly limits?: "allow" | "reject" | undefined }
    | undefined
  /** Deadline of each Redis call and when an outage is reported. See `Redis.GuardOptions`. */
  readonly redis?: SharedRedis.GuardOptions | undefined
}

/**
 * A request's key as the key store gives it: the gateway's `KeyContext` and the policy.
 *
 * @since 0.2.0
 * @category models
 */
export interface KeyContext extends Gateway.KeyContext {
  readonly name: string
  readonly rpm?: number | undefined
  readonly tpm?: number | undefined
  readonly budgets: Budgets
}

/**
 * A key as admins see it: never its secret nor its hash.
 *
 * @since 0.2.0
 * @category models
 */
export interface KeyInfo {
  readonly id: string
  readonly name: string
  /** The first characters of the secret (`sk-orch-ab12`), when known. */
  readonly prefix: string | undefined
  readonly team: string | undefined
  readonly allowedModels: ReadonlyArray<string> | undefined
  readonly rpm: number | undefined
  readonly tpm: number | undefined
  readonly budget: KeyOptions.ResolvedBudget | undefined
  readonly modelBudgets: Readonly<Record<string, KeyOptions.ResolvedBudget>> | undefined
  readonly disabled: boolean
  /** ISO time of creation; `undefined` for keys of the configuration. */
  readonly createdAt: string | undefined
  readonly source: "config" | "store"
}

/**
 * A page of the keys ({@link Service.list}): the configuration's first, in its order, then the
 * created ones by id.
 *
 * @since 0.3.0
 * @category models
 */
export interface KeyPage {
  readonly data: ReadonlyArray<KeyInfo>
  /** Whether keys follow the page's last: ask again with `after` its id. */
  readonly hasMore: boolean
  /**
   * `true` when the Redis store's index of ids does not hold every stored key yet (keys created
   * by 0.2.0, or by its replicas still running): keys may be missing from the
   * page. Each listing adds a bounded part of them; list again from the start once it is gone.
   */
  readonly incomplete?: boolean | undefined
}

/**
 * What {@link Service.list} takes, unchecked as an admin sends it.
 *
 * @since 0.3.0
 * @category models
 */
export interface ListOptions {
  /** The most keys of the page: a whole number from 1 to 1,000. Default 100. */
  readonly limit?: unknown
  /** The id of the last key of the page before (`undefined` for the first page). */
  readonly after?: unknown
}

/**
 * One budget of a key now: tokens, or dollars.
 *
 * @since 0.2.0
 * @category models
 */
export interface SpendLine {
  readonly scope: BudgetScope
  /** The key's id, its team, or `<key>/<model>`. */
  readonly id: string
  readonly unit: "tokens" | "usd"
  /** Settled usage in this period. */
  readonly spent: number
  /** Held by requests in flight. */
  readonly held: number
  readonly limit: number
  readonly remaining: number
  /** When this period's budget starts again (ISO), for budgets with a period. */
  readonly resetsAt: string | undefined
}

/**
 * What an admin gets back when a key is created: the key, and its secret (shown once).
 *
 * @since 0.2.0
 * @category models
 */
export interface Created {
  readonly key: KeyInfo
  readonly secret: Redacted.Redacted<string>
}

/**
 * The key store: the gateway's seam (`authenticate`, `reserve`, `settle`, `release`) and
 * the admin operations. Admin operations fail with a `GatewayError`: `InvalidRequest`
 * naming the field (400), `NotFound` (404), `Forbidden` for keys of the configuration
 * (403), `Unavailable` when the store cannot be reached (503), `Internal` for a stored key or
 * budget this version cannot read (500 `key_record_unreadable`: a budget is never read as unspent).
 *
 * @since 0.2.0
 * @category models
 */
export interface Service extends Gateway.KeyStoreService {
  readonly authenticate: (bearer: Redacted.Redacted<string> | undefined) => Effect.Effect<KeyContext, GatewayError>
  /**
   * Checks the configuration's keys (`allowedModels`, `modelBudgets`) and prices against the
   * names a gateway serves (an `OptionError` naming the field), and from then on refuses an
   * admin's new key naming none of them. The gateway calls it as it starts.
   */
  readonly useModels: (models: Gateway.Models) => Effect.Effect<void, Input.OptionError>
  /**
   * Whether one of the key's budgets by model is charged for a request on `model` (any name of the same upstream
   * model, on any gateway using this store), looked up as `reserve` does; `undefined` for a `KeyContext` that
   * `authenticate` did not give. The gateway sends such a request without `max_tokens` with the output it reserved.
   *
   * @since 0.3.0
   */
  readonly chargesModel: (key: Gateway.KeyContext, model: string) => boolean | undefined
  /** Creates a key from its policy (`id` optional), unchecked input as an admin sends it. */
  readonly create: (input: unknown) => Effect.Effect<Created, GatewayError>
  /**
   * A page of the keys (a stored key this version cannot read is left out, and said in the log);
   * `InvalidRequest` naming `limit` or `after` for a wrong one.
   */
  readonly list: (options?: ListOptions) => Effect.Effect<KeyPage, GatewayError>
  readonly get: (id: string) => Effect.Effect<KeyInfo, GatewayError>
  /**
   * Disables (or enables again) a created key: its requests get 401 at once here, and on the other replicas of
   * a Redis store at once for a request it has a budget on (its reserve checks the key on Redis), otherwise
   * within `cacheTtl` (a `KeyContext` kept from `authenticate` and handed to `reserve`: within `cacheTtl` + 1 s).
   */
  readonly setDisabled: (id: string, disabled: boolean) => Effect.Effect<KeyInfo, GatewayError>
  /**
   * Deletes a created key: its record, its secret (401 `invalid_api_key` from then on, at once here, within
   * `cacheTtl` elsewhere, as a disable), its budgets (its own and by model, not its team's) and its rate-limit
   * windows, so that its id may be created again from nothing; a stored record this version cannot read as
   * well. A request of it still running settles on its team's budget only (never on a later key of its id),
   * and a budgeted request of it reserves nothing from then on (401), wherever its secret is still cached.
   * `NotFound` for no such key, `Forbidden` for one of the configuration.
   *
   * @since 0.3.0
   */
  readonly delete: (id: string) => Effect.Effect<void, GatewayError>
  /** Each budget of a key in its current period. */
  readonly spend: (id: string) => Effect.Effect<ReadonlyArray<SpendLine>, GatewayError>
  /**
   * Keeps the reservations of running requests held past `reservationTtl`: every quarter of it
   * the gateway hands back those of its requests still running, and each whose lease started a
   * quarter of it ago or more is held a whole `reservationTtl` again (a renewal that fails is
   * tried at the next). One settled, released, or whose lease has ended is not held again.
   *
   * @since 0.3.0
   */
  readonly renew: NonNullable<Gateway.KeyStoreService["renew"]>
}

/**
 * The key store with its admin operations (the same service as `Gateway.KeyStore`).
 *
 * @since 0.2.0
 * @category services
 */
export class KeyAdmin extends Context.Service<KeyAdmin, Service>()("effect-orchestra/gateway/KeyAdmin") {}

/**
 * The SHA-256 of a secret in hex, as a config file's `sha256` wants it.
 *
 * @since 0.2.0
 * @category utils
 */
export const hashSecret: (secret: Redacted.Redacted<string> | string) => string = hash

const both = (service: Service): Context.Context<KeyAdmin | Gateway.KeyStore> =>
  Context.add(Context.make(KeyAdmin, service), Gateway.KeyStore, service)

/**
 * Keys, limits and budgets in this process: for one gateway, or tests. Keys created by an
 * admin last as long as the layer.
 *
 * @example
 * ```ts
 * import * as Gateway from "effect-orchestra/Gateway"
 *
 * export const keys = Gateway.Keys.layerMemory({
 *   keys: [{ id: "team-a", sha256: Gateway.Keys.hashSecret("sk-team-a-secret"), rpm: 60, budget: { usd: 50, period: "30 days" } }],
 *   prices: { "*": { input: 0.15, output: 0.6 } }
 * })
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layerMemory = (options: Options = {}): Layer.Layer<KeyAdmin | Gateway.KeyStore, Input.OptionError> =>
  Layer.effectContext(
    Effect.gen(function* () {
      const resolved = yield* Input.orOptionError(KeyOptions.check(options))
      // Effect's store under the fixed windows (whose token buckets a limit of another algorithm would use): built in
      // the layer's scope, which its sweep of ended entries needs; provided to one effect, it closed at once.
      const limiter = Context.get(yield* Layer.build(RateLimiter.layerStoreMemory), RateLimiter.RateLimiterStore)
      // A window for each key's rpm and one for its tpm: room for every key the store may hold. The table's
      // default (100,000 windows) was full past 50,000 keys in a minute, and the first request of the next
      // key was refused as a 429 naming its own limit, which it had not used.
      const store = withAlignedFixedWindow(limiter, 2 * (resolved.maxKeys + resolved.keys.length))
      const backend = Memory.make((id) => {
        for (const key of Limits.windowsOf(id)) store.forget(key)
      })
      return both(yield* make(resolved, backend, { store, onStoreError: "allow" }, "reject"))
    })
  )

const limitsPrefix = "ratelimit:"

const onStoreErrorKeys: ReadonlySet<string> = new Set(["budgets", "limits"])

/**
 * Keys, limits and budgets shared by every gateway on the same Redis and prefix (keys of
 * the configuration stay in each process). Needs `effect/persistence`'s `Redis` service
 * (`Redis.layer` of this library builds one); not for Redis Cluster.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerRedis = (
  options: RedisOptions = {}
): Layer.Layer<KeyAdmin | Gateway.KeyStore, Input.OptionError, Redis.Redis> =>
  Layer.effectContext(
    Effect.gen(function* () {
      const resolved = yield* Input.orOptionError(KeyOptions.check(options, KeyOptions.redisFields))
      const prefix = yield* Input.orOptionError(SharedRedis.prefixOf(options.prefix, "orchestra:gateway:"))
      // The keys' limits are kept under `<prefix>ratelimit:`, a prefix of the rate-limit store bounded as this one.
      if (prefix.length + limitsPrefix.length > SharedRedis.maxPrefixChars) {
        return yield* Effect.fail(
          Input.toOptionError({
            path: "prefix",
            message: `expected a string of 1 to ${SharedRedis.maxPrefixChars - limitsPrefix.length} characters (the keys' rate limits are kept under it and "${limitsPrefix}", at most ${SharedRedis.maxPrefixChars}), got ${prefix.length} characters`
          })
        )
      }
      const onStoreError: RedisOptions["onStoreError"] & object = Input.orDefault(options.onStoreError, {})
      if (typeof onStoreError !== "object" || onStoreError === null || Array.isArray(onStoreError)) {
        return yield* Effect.fail(
          Input.toOptionError({ path: "onStoreError", message: "expected an object { budgets, limits }" })
        )
      }
      // A misspelt field (`limit`) would leave its default: limits meant to fail closed would fail open.
      const unknown = Input.misspeltKey(onStoreError, onStoreErrorKeys, "onStoreError.", "field")
      if (unknown !== undefined) return yield* Effect.fail(Input.toOptionError(unknown))
      const budgets = Input.orDefault(onStoreError.budgets, "reject")
      const limits = Input.orDefault(onStoreError.limits, "allow")
      if (budgets !== "reject" && budgets !== "allow") {
        return yield* Effect.fail(
          Input.toOptionError({ path: "onStoreError.budgets", message: `expected "reject" or "allow"` })
        )
      }
      if (limits !== "reject" && limits !== "allow") {
        return yield* Effect.fail(
          Input.toOptionError({ path: "onStoreError.limits", message: `expected "allow" or "reject"` })
        )
      }
      const settings = yield* Input.orOptionError(SharedRedis.guardSettings(options.redis, "redis."))
      const keysGuard = yield* SharedRedis.makeGuard({ store: "gateway-keys", settings })
      const limitsGuard = yield* SharedRedis.makeGuard({ store: "gateway-ratelimit", settings })
      const backend = yield* RedisBackend.make({
        prefix,
        guard: keysGuard,
        leaseMs: resolved.reservationTtlMs,
        limitKeys: (id) =>
          Limits.windowsOf(id).map((key) => RateLimitRedis.windowKeyOf(`${prefix}${limitsPrefix}`, key))
      })
      const limiter = yield* RateLimitRedis.makeStore({ prefix: `${prefix}${limitsPrefix}` })
      return both(
        yield* make(
          resolved,
          backend,
          { store: limiter, guard: limitsGuard, onStoreError: limits },
          budgets,
          settings.probeInterval
        )
      )
    })
  )
