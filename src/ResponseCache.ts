/**
 * A cache of model answers keyed by a stable hash of the request, with single-flight:
 * concurrent identical requests make one provider call and share its result. Failures are
 * never cached, nor answers that finished in error (`finishReason: "error"`). Entries expire after `ttl` and may be served for a grace period
 * (`staleFor`) when the provider call fails and the caller allows it (stale-if-error).
 * Completed streams can be cached as their parts, for replay.
 *
 * Memory backend here (`layerMemory`, on `effect`'s core `Cache`); Redis in
 * `ResponseCache/Redis.ts` (`layerRedis`).
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, type Metric, Option, Result, Schema } from "effect"
import type { ModelError } from "./AiError.js"
import * as Input from "./Input.js"
import * as Metrics from "./Metrics.js"
import { maxOwnLabelChars, textIssue } from "./stats/labels.js"
import { type GenerateRequest, GenerateResponse, StreamPart } from "./Model.js"
import type { StoreError } from "./Redis.js"
import * as Checks from "./ResponseCache/checks.js"
import { keyOf } from "./ResponseCache/key.js"
import * as Lookup from "./ResponseCache/lookup.js"
import * as Table from "./ResponseCache/table.js"
import * as Counters from "./stats/counters.js"

/**
 * Where `getOrCompute` found its answer: a fresh entry (`hit`), a computation of its own
 * (`miss`), a computation already running for the same key (`shared`), or an expired entry
 * within its grace because the computation failed (`stale`).
 *
 * @since 0.1.0
 * @category models
 */
export type Source = "hit" | "miss" | "stale" | "shared"

/**
 * Who produced a cached answer when it was not the request its key names (the provider and
 * domain of the fallback step that answered), kept with the answer.
 *
 * @since 0.3.0
 * @category schemas
 */
export const Origin = Schema.Struct({ provider: Schema.String, domain: Schema.optionalKey(Schema.String) })

/**
 * @since 0.3.0
 * @category models
 */
export type Origin = typeof Origin.Type

/**
 * Options of `getOrCompute`.
 *
 * @since 0.3.0
 * @category models
 */
export interface GetOrComputeOptions<E> {
  /** Answer a failure from the expired entry while it is within its grace (`source: "stale"`). */
  readonly allowStale?: boolean | undefined
  /**
   * Bounds what this caller waits for (the lookup, and the computation it runs or joins),
   * e.g. with its deadline. The bound failing is answered as a failed computation is (with
   * `allowStale`, from the stale entry); the computation goes on while other callers wait for it.
   * As the executor's Effect callbacks (`onRetry`), one that throws or returns no Effect is the
   * caller's defect (a `TypeError` naming `bound` for the latter), not a failure of the call.
   */
  readonly bound?: (<A>(wait: Effect.Effect<A, E | ModelError>) => Effect.Effect<A, E | ModelError>) | undefined
  /**
   * Who produced an answer of `compute` when it was not the request the key names (a
   * fallback's provider and domain), kept with the answer and handed to every caller it answers.
   * One that throws, or answers something else than `undefined` or `{ provider, domain? }` (strings),
   * fails the computation with an `InvalidRequest` naming `originOf`.
   */
  readonly originOf?: ((value: GenerateResponse) => Origin | undefined) | undefined
  /**
   * `false` for an answer of `compute` that must not be kept (it came from a domain with
   * `cache: false`, reached as a fallback): it answers the callers of this computation and
   * is neither kept nor written. Default: every answer but one that finished in error is kept.
   * One that throws, or answers something else than a boolean (or `undefined`: kept), fails the
   * computation with an `InvalidRequest` naming `keep`; it is not called on an answer that finished in error.
   *
   * @since 0.3.0
   */
  readonly keep?: ((value: GenerateResponse) => boolean) | undefined
}

/**
 * What `getOrCompute` answers: the value, where it was found, and who produced it when it
 * was not the request the key names.
 *
 * @since 0.3.0
 * @category models
 */
export interface Computed {
  readonly value: GenerateResponse
  readonly source: Source
  readonly origin?: Origin | undefined
}

/**
 * The response cache.
 *
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** The cache name: the `cache` attribute of its metrics. */
  readonly name: string
  /** The key of a request to a provider; see {@link key}. */
  readonly key: (input: { readonly provider: string; readonly request: GenerateRequest }) => string
  /**
   * The cached answer, or the result of `compute` (cached on success, unless it finished in
   * error: `finishReason: "error"`). Concurrent calls for
   * the same key share one computation; its failure reaches every waiter and is not cached.
   * A waiter that is interrupted leaves; the computation stops when every waiter has left.
   * Calls sharing a key must be interchangeable (the first caller's effect runs for all).
   * With `allowStale`, a failed computation is answered with the expired entry if it is
   * within its grace (`source: "stale"`).
   *
   * A `compute` that answers what is not an answer (`undefined`, `null`, an object without
   * `usage`: its type says it may not, a cast or plain JavaScript does) gives it to every caller
   * of its computation as it is, as the call without the cache would have: it is never kept,
   * `keep` and `originOf` are not called with it, and it is counted in
   * `orchestra_cache_errors_total` with a warning naming the cache and the field.
   *
   * Fails with an `InvalidRequest` `ModelError` naming the field, before anything is looked up,
   * for a `key` that is not a string, a `compute` that is not an Effect, or `options` with a key
   * it does not take (a misspelt `alowStale`) or a value of the wrong kind; and, never answered
   * stale, when `keep` or `originOf` throws or answers what it may not (see their docs), and
   * when called for a key from within that key's own computation, or from within a computation of
   * this cache that the key's computation waits for through the keys it asks for (a cycle across
   * callers: each would wait for the other, for good).
   */
  readonly getOrCompute: <E>(
    key: string,
    compute: Effect.Effect<GenerateResponse, E | ModelError>,
    options?: GetOrComputeOptions<E>
  ) => Effect.Effect<Computed, E | ModelError>
  /**
   * Fresh answers of several keys, in the order of `keys` (Redis: one script call).
   *
   * Every method below fails with an `InvalidRequest` `ModelError` naming the field, before the
   * store is used, for a key that is not a string (`keys[1]`, `entries[0].key`, `key`), a value
   * that is not an answer (`entries[0].value`) or parts that are not stream parts (`parts[2]`),
   * a usage count that is not a finite number (`entries[0].value.usage.inputTokens`,
   * `parts[3].usage.totalTokens`), and an entry with a field it does not take (`entries[0].ttl`);
   * a `setMany` so refused stores none. With Redis, a `setMany` of more bytes than its `maxBatchBytes`
   * fails so too (naming `entries`), as does a `getMany` of more bytes of keys (naming `keys`); a `getMany`
   * reads at most that many bytes of values, its other keys misses.
   */
  readonly getMany: (
    keys: ReadonlyArray<string>
  ) => Effect.Effect<ReadonlyArray<Option.Option<GenerateResponse>>, ModelError>
  /** Stores several answers (Redis: one round trip); those that finished in error are left out. */
  readonly setMany: (
    entries: ReadonlyArray<{ readonly key: string; readonly value: GenerateResponse }>
  ) => Effect.Effect<void, ModelError>
  /** The parts of a completed stream cached under `key` (kept apart from the answer of the same key). */
  readonly getParts: (key: string) => Effect.Effect<Option.Option<ReadonlyArray<StreamPart>>, ModelError>
  /**
   * Caches the parts of a stream that completed (ends with its `Finish` part) other than in
   * error (`finishReason: "error"`); others are not stored. Parts that are not stream parts fail
   * it (see above) and are also counted in `orchestra_cache_errors_total` with a warning naming
   * the cache and the part: the executor answers the stream and ignores that failure.
   */
  readonly setParts: (key: string, parts: ReadonlyArray<StreamPart>) => Effect.Effect<void, ModelError>
  /**
   * Removes the answer and the stream parts of `key`: a caller of `getOrCompute` with `allowStale`
   * waiting meanwhile is not answered with the removed answer either. Fails with a `StoreError` when the
   * store could not remove them (Redis down or past its deadline): they may still be served.
   */
  readonly invalidate: (key: string) => Effect.Effect<void, StoreError | ModelError>
}

/**
 * @since 0.1.0
 * @category services
 */
export class ResponseCache extends Context.Service<ResponseCache, Service>()("effect-orchestra/ResponseCache") {}

const keyFields: ReadonlyArray<string> = ["provider", "request"]

const notSuperseded = (): boolean => false

/**
 * The key of a request to a provider: the hex sha256 of the provider name and the request
 * in a canonical form, where requests that mean the same are written alike: the system prompt
 * and a first system message of a conversation; an absent field,
 * one set to `undefined`, and an empty `tools`, `stop` or `toolCalls` list; `stop` sequences
 * in any order or repeated (a set); the defaults `responseFormat: { type: "text" }`,
 * `strict: false`, with tools, `toolChoice: "auto"` and `parallelToolCalls: true`, and any
 * `parallelToolCalls` without tools; the key order of a tool's
 * parameters or a response schema (whose values count as the JSON sent for them: a `Date` as
 * its ISO text). Every field that changes the answer changes the key
 * (model, sampling, tools and their order, messages and their order, a message's name, a tool call's signature, response format, ...),
 * and so does giving a `prompt` rather than `messages`: `prompt: "x"` and one user message `"x"` are two
 * keys, as providers may send them differently (watsonx's text generation, Ollama's `api: "generate"`).
 * A request naming no model keys as "the provider's default": the executor and the router pass
 * the request with the provider's `defaultModel` filled in, so a new default does not answer from
 * the old one's entries; callers of `key` should do the same.
 *
 * Throws an `InvalidRequest` `ModelError` naming `provider` or `request` when one is not a
 * string or an object, or when reading the request throws (a getter, `messages: 5`).
 *
 * @since 0.1.0
 * @category keys
 */
export const key = (input: { readonly provider: string; readonly request: GenerateRequest }): string => {
  let provider: unknown
  let request: unknown
  try {
    provider = input.provider
    request = input.request
  } catch (thrown) {
    // `null`, or a getter that throws: read again one field at a time to name it.
    const read = typeof input === "object" && input !== null ? Input.readFields(input, keyFields) : undefined
    throw Input.toInvalidRequest(
      read !== undefined && Result.isFailure(read)
        ? read.failure
        : (Input.notAnObject("input", input) ?? {
            path: "input",
            message: `reading it threw: ${Input.thrownMessage(thrown)}`,
            cause: thrown
          })
    )
  }
  const issue =
    typeof provider !== "string"
      ? { path: "provider", message: `expected a string, got ${Input.shown(provider)}` }
      : Input.notAnObject("request", request)
  if (issue !== undefined) throw Input.toInvalidRequest(issue)
  try {
    return keyOf(provider as string, request as GenerateRequest)
  } catch (thrown) {
    throw Input.toInvalidRequest({
      path: "request",
      message: `reading it threw: ${Input.thrownMessage(thrown)}`,
      cause: thrown
    })
  }
}

/**
 * A cached value: a whole answer, or the parts of a completed stream.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Cached = Schema.Union([
  Schema.TaggedStruct("Response", { response: GenerateResponse, origin: Schema.optionalKey(Origin) }),
  Schema.TaggedStruct("Stream", { parts: Schema.Array(StreamPart) })
])

/**
 * What the Redis backend stores under a key: the value, fresh until `freshUntil`,
 * servable as stale until `staleUntil` (epoch milliseconds of the writer's `Clock`).
 *
 * @since 0.2.0
 * @category schemas
 */
export const StoredEntry = Schema.Struct({
  value: Cached,
  freshUntil: Schema.Finite,
  staleUntil: Schema.Finite
})

/**
 * Options shared by the backends.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * Time to live of an entry. Default 1 hour. This and `staleFor` are rounded up to whole
   * milliseconds and are at most 2^50 ms (about 35,678 years: what Redis is given stays an exact integer).
   */
  readonly ttl?: Input.DurationInput | undefined
  /** Grace after expiry during which an entry may be served as stale when the computation fails. Default 0. */
  readonly staleFor?: Input.DurationInput | undefined
  /** The `cache` attribute of the metrics, 1 to 256 characters. Default `"memory"` / `"redis"`. */
  readonly name?: string | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface MemoryOptions extends Options {
  /**
   * Most entries kept (answers and stream replays together); expired ones go first (past `ttl + staleFor`,
   * however recently used), then the least recently used.
   * Computations still running are never evicted (nor counted). Default 1,000.
   */
  readonly capacity?: number | undefined
  /**
   * Most bytes of values kept (answers and stream replays, in their JSON encoding, UTF-8):
   * expired ones, then the least recently used, go until the rest fit, and a value larger than this on its own,
   * or one JSON cannot encode (a field of a bigint or a cycle), is not kept and pushes none out (its callers
   * still get it). The bytes held are a running total: an entry added costs the same however large the table.
   * Default 256 MiB ({@link defaultMaxBytes}); `Infinity` for no byte bound (only `capacity` bounds it).
   *
   * @since 0.3.0
   */
  readonly maxBytes?: number | undefined
}

/**
 * The memory cache's default `maxBytes`: 256 MiB. `capacity` alone bounds the entries, not their size (1,000 answers
 * of 32 MiB each held 32 GiB); 256 MiB holds the default 1,000 entries of up to 256 KiB each, far more than a
 * typical answer, while no single process is taken down by a few huge ones.
 *
 * @since 0.3.0
 * @category constants
 */
export const defaultMaxBytes = 256 * 1024 * 1024

/**
 * Options checked, in milliseconds.
 *
 * @since 0.2.0
 * @category models
 */
export interface Settings {
  readonly name: string
  readonly ttl: number
  readonly staleFor: number
}

/**
 * Checks the shared options: `ttl` above zero and finite, `staleFor` finite, a `name` of 1 to
 * 256 characters; fields not in `allowed` are refused (a misspelt option never falls back silently).
 *
 * @since 0.2.0
 * @category constructors
 */
export const settings = (
  options: Options,
  defaultName: string,
  allowed: ReadonlyArray<string> = []
): Input.Checked<Settings> => {
  const misfit =
    Input.notAnObject("options", options) ?? Input.unknownKey(options, new Set(["ttl", "staleFor", "name", ...allowed]))
  if (misfit !== undefined) return Result.fail(misfit)
  const name = Input.orDefault(options.name, defaultName)
  if (typeof name !== "string" || name.length === 0) {
    return Result.fail({ path: "name", message: "expected a non-empty string" })
  }
  const lone = textIssue(name, "name")
  if (lone !== undefined) return Result.fail(lone)
  // The `cache` label of its series, written whole in each of them on every scrape: bounded as a provider's name is.
  if (name.length > maxOwnLabelChars) {
    return Result.fail({
      path: "name",
      message: `expected at most ${maxOwnLabelChars} characters (it labels the cache's metric series), got ${name.length.toLocaleString("en-US")}`
    })
  }
  return Result.map(
    Input.all([
      // Both end up in Redis's PX (their sum) on the Redis backend; the bound is the same for both backends.
      Input.wholeMillis("ttl", Input.orDefault(options.ttl, "1 hour"), Input.maxRedisMillis),
      Input.wholeMillis("staleFor", Input.orDefault(options.staleFor, 0), Input.maxRedisMillis, { allowZero: true })
    ]),
    ([ttl, staleFor]) => ({ name, ttl, staleFor })
  )
}

/**
 * True for the parts of a stream that completed: exactly one `Finish`, at the end.
 *
 * @since 0.2.0
 * @category utils
 */
export const isComplete = (parts: ReadonlyArray<StreamPart>): boolean =>
  parts.length > 0 && parts.findIndex(isFinish) === parts.length - 1

// What is not a part (`undefined` in the array: plain JavaScript) is not a `Finish`, not a TypeError.
const isFinish = (part: StreamPart): boolean => typeof part === "object" && part !== null && part._tag === "Finish"

/**
 * True for the parts of a stream the cache keeps: stream parts (`setParts` refuses others) of a
 * completed stream that did not finish in error (`finishReason: "error"`). A `Finish` without its
 * `finishReason`, or an array holding what is not a part, is not kept (it was, and replayed so).
 *
 * @since 0.3.0
 * @category utils
 */
export const isStorable = (parts: ReadonlyArray<StreamPart>): boolean =>
  Checks.notParts(parts) === undefined && Lookup.keepableParts(parts)

/**
 * The in-process cache: `effect`'s core `Cache` holds the entries and the running
 * computations (LRU by `capacity`, expiry on the `Clock`, so `TestClock` drives it).
 * Invalid options fail the layer with an `OptionError` naming the field. Closing the layer
 * interrupts the computations still running.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (options: MemoryOptions = {}): Layer.Layer<ResponseCache, Input.OptionError> =>
  Layer.effect(ResponseCache, makeMemory(options))

/**
 * Builds the in-process cache (see {@link layerMemory}).
 *
 * @since 0.2.0
 * @category constructors
 */
export const makeMemory = Effect.fnUntraced(function* (options: MemoryOptions = {}) {
  const config = yield* Input.orOptionError(settings(options, "memory", ["capacity", "maxBytes"]))
  const capacity = yield* Input.orOptionError(Input.positiveInt("capacity", Input.orDefault(options.capacity, 1000)))
  const maxBytes =
    options.maxBytes === Number.POSITIVE_INFINITY
      ? undefined
      : yield* Input.orOptionError(Input.positiveInt("maxBytes", Input.orDefault(options.maxBytes, defaultMaxBytes)))
  const table = yield* Table.makeTable(capacity, maxBytes)
  yield* Effect.addFinalizer(() => table.interruptAll)
  const counters = yield* Lookup.lookupCounters(config.name)
  // What a caller's own computation or stream produced and this cache cannot keep, counted as the Redis cache counts it.
  // Held by the layer: closing it removes the series (counted by `Metric.update`, it stayed for good).
  const errors = yield* Counters.scoped(Metrics.cacheErrors as Metric.Metric<number, unknown>, { cache: config.name })
  const unstored = Lookup.notStored(config.name, errors)

  const answer = (stored: Table.Stored): GenerateResponse =>
    stored.value._tag === "Response" ? stored.value.response : (undefined as never)

  // An answer not kept (`Lookup.keepable`: finished in error, or refused by `keep`) reaches the
  // flight's callers, but the table drops it at once (keepFor 0).
  const storeAnswer = (value: GenerateResponse, origin: Origin | undefined, keep: boolean) =>
    Effect.clockWith((clock) =>
      Effect.succeed(
        Table.storedOf(
          Lookup.responseOf(value, origin),
          clock.currentTimeMillisUnsafe(),
          config.ttl,
          config.staleFor,
          keep ? config.ttl + config.staleFor : 0
        )
      )
    )

  const compute = <E>(
    k: string,
    effect: Effect.Effect<GenerateResponse, E | ModelError>,
    found: Table.Peeked,
    options: GetOrComputeOptions<E>
  ): Effect.Effect<Computed, E | ModelError> => {
    const stale = found._tag === "Running" ? table.refreshingOf(k) : found._tag === "Done" ? found.stored : undefined
    const run = table.run(
      k,
      Effect.flatMap(effect, (value) =>
        Lookup.storeWith(value, options, (origin, keep) => storeAnswer(value, origin, keep), unstored)
      ),
      found._tag === "Done" ? stale : undefined
    )
    const answer = (superseded: () => boolean) =>
      Lookup.answerOrStale(
        Effect.map(run, ({ leader, stored }) => Lookup.computed(stored, leader ? "miss" : "shared")),
        options,
        counters,
        () => (superseded() ? undefined : stale),
        () => (found._tag === "Running" ? "shared" : "miss")
      )
    // An entry invalidated (or replaced by setMany) while the caller waited is not answered stale.
    return stale !== undefined && options.allowStale === true ? table.watch(k, answer) : answer(notSuperseded)
  }

  const getOrCompute: Service["getOrCompute"] = (key, effect, options) =>
    Lookup.traced(
      "ResponseCache.getOrCompute",
      Effect.clockWith((clock) => {
        const k = Table.responseKey(key)
        const now = clock.currentTimeMillisUnsafe()
        const found = table.peek(k, now)
        if (found._tag === "Done" && now < found.stored.freshUntil) {
          table.touch(k)
          return Effect.as(Lookup.bump(counters.hit, 1), Lookup.computed(found.stored, "hit"))
        }
        return compute(k, effect, found, options ?? {})
      })
    )

  // A fresh entry, marked as just used (a replay or a batch hit is a use as much as a getOrCompute hit).
  const fresh = (k: string, now: number): Option.Option<Table.Stored> => {
    const found = table.peek(k, now)
    if (found._tag !== "Done" || now >= found.stored.freshUntil) return Option.none()
    table.touch(k)
    return Option.some(found.stored)
  }

  const service: Service = {
    name: config.name,
    key,
    getOrCompute,
    getMany: (keys) =>
      // Arrows, not a generator made at each call: V8 gives such a function a map of its own, in
      // the old generation, which keeps what it reaches through young collections.
      Effect.clockWith((clock) => {
        const now = clock.currentTimeMillisUnsafe()
        const found = keys.map((k) => Option.map(fresh(Table.responseKey(k), now), answer))
        const hits = found.filter(Option.isSome).length
        return Effect.as(
          Effect.andThen(
            hits > 0 ? Lookup.bump(counters.hit, hits) : Effect.void,
            hits < keys.length ? Lookup.bump(counters.miss, keys.length - hits) : Effect.void
          ),
          found
        )
      }),
    setMany: (entries) =>
      Effect.clockWith((clock) => {
        const now = clock.currentTimeMillisUnsafe()
        // Room is made once for the batch: with maxBytes, each entry put scanned the whole table.
        return table.putMany(
          entries.flatMap(({ key: k, value }) =>
            Lookup.keepable(value.finishReason)
              ? [
                  [
                    Table.responseKey(k),
                    Table.storedOf({ _tag: "Response", response: value }, now, config.ttl, config.staleFor)
                  ] as const
                ]
              : []
          )
        )
      }),
    getParts: (key) =>
      Effect.clockWith((clock) => {
        const found = fresh(Table.partsKey(key), clock.currentTimeMillisUnsafe())
        return Effect.as(
          Lookup.bump(Option.isSome(found) ? counters.hit : counters.miss, 1),
          Option.flatMap(found, (s) => (s.value._tag === "Stream" ? Option.some(s.value.parts) : Option.none()))
        )
      }),
    setParts: (key, parts) =>
      Lookup.keepableParts(parts)
        ? Effect.clockWith((clock) =>
            table.put(
              Table.partsKey(key),
              Table.storedOf({ _tag: "Stream", parts }, clock.currentTimeMillisUnsafe(), config.ttl, config.staleFor)
            )
          )
        : Effect.void,
    invalidate: (key) =>
      Effect.sync(() => {
        table.remove(Table.responseKey(key))
        table.remove(Table.partsKey(key))
      })
  }
  return ResponseCache.of(Checks.checked(service, Lookup.notStored(config.name, errors, "stream parts")))
})
