/**
 * The IAM bearer token of the watsonx provider: fetched from the API key once however
 * many calls need it at the same moment, cached until shortly before it expires (by the
 * `Clock`, and never longer than {@link maxTokenLifetime}; a token whose early refresh fails is used until it
 * expires), fetched again after the API refused it, and every fetch bounded in time.
 *
 * The fetch itself (an HTTP request) is given by the provider, so the cache knows nothing
 * of HTTP and its timing is tested on the `TestClock` alone.
 *
 * @since 0.2.0
 */
import { Clock, Deferred, Duration, Effect, Exit, type Redacted, type Scope, Stream } from "effect"
import { ModelError } from "../../AiError.js"

/**
 * A token as the IAM service issued it.
 *
 * @since 0.2.0
 * @category models
 */
export interface Issued {
  readonly token: Redacted.Redacted<string>
  /** The lifetime the service gave it (`expires_in`). */
  readonly expiresIn: Duration.Duration
}

/**
 * A cached token. `generation` counts fetches, so a caller can say which token the API
 * refused without holding the token itself.
 *
 * @since 0.2.0
 * @category models
 */
export interface Token {
  readonly value: Redacted.Redacted<string>
  readonly generation: number
  /** Clock millis after which the token is fetched again. */
  readonly refreshAt: number
  /**
   * Clock millis at which the token expires: until then it is still used when a fetch of the
   * next one fails.
   *
   * @since 0.3.0
   */
  readonly expiresAt: number
}

/**
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /** One token request; its failures reach every caller waiting on it. */
  readonly fetch: Effect.Effect<Issued, ModelError>
  /** Fetch again this long before expiry (at most half the token's lifetime). */
  readonly refreshMargin: Duration.Duration
  /** How long one token request may take; then it fails with `Timeout`. */
  readonly timeout: Duration.Duration
  /** Provider name in errors. */
  readonly provider: string
}

/**
 * @since 0.2.0
 * @category models
 */
export interface TokenCache {
  /**
   * The current token. `rejected` names the generation the API refused (a 401): a cached
   * token of that generation is not used again.
   */
  readonly get: (rejected?: number | undefined) => Effect.Effect<Token, ModelError>
  /** Runs `call` with the current token and, after a 401, once more with a fresh one. */
  readonly authorized: <A, E>(
    call: (token: Redacted.Redacted<string>) => Effect.Effect<A, E>
  ) => Effect.Effect<A, E | ModelError>
  /**
   * Opens a stream with the current token and, when it fails with a 401 before its first
   * element, once more with a fresh one. A failure after an element is never retried.
   */
  readonly authorizedStream: <A, E>(
    open: (token: Redacted.Redacted<string>) => Stream.Stream<A, E>
  ) => Stream.Stream<A, E | ModelError>
}

/**
 * Did the API refuse the token (HTTP 401)?
 *
 * @since 0.2.0
 * @category predicates
 */
export const isUnauthorized = (error: unknown): boolean => error instanceof ModelError && error.status === 401

/**
 * The longest a token is cached, whatever its `expires_in` says: an hour, the lifetime IBM
 * Cloud IAM gives its tokens. A token said to live longer (a wrong or hostile answer) is
 * fetched again as one that lives an hour would be, rather than kept until the API refuses it.
 *
 * @since 0.3.0
 * @category constants
 */
export const maxTokenLifetime: Duration.Duration = Duration.hours(1)

const MAX_LIFETIME_MILLIS = Duration.toMillis(maxTokenLifetime)

type State =
  | { readonly _tag: "Empty"; readonly generation: number }
  | {
      readonly _tag: "Pending"
      readonly generation: number
      readonly deferred: Deferred.Deferred<Token, ModelError>
      /** The cached token the fetch replaces, still used while it has not expired if the fetch fails. */
      readonly previous: Token | undefined
    }
  | { readonly _tag: "Ready"; readonly token: Token }

const generationOf = (state: State): number => (state._tag === "Ready" ? state.token.generation : state.generation)

/**
 * Builds a token cache. Fetches run in the scope of the cache: a caller that is
 * interrupted does not cancel the fetch other callers wait on; closing the scope does.
 *
 * @since 0.2.0
 * @category constructors
 */
export const make: (options: Options) => Effect.Effect<TokenCache, never, Scope.Scope> = Effect.fnUntraced(function* (
  options: Options
) {
  const scope = yield* Effect.scope
  const margin = Duration.toMillis(options.refreshMargin)
  let state: State = { _tag: "Empty", generation: 0 }

  const timedOut = Effect.suspend(() =>
    Effect.fail(
      new ModelError({
        reason: "Timeout",
        provider: options.provider,
        message: `${options.provider} IAM: no token within ${Duration.format(options.timeout)}`
      })
    )
  )

  // The lifetime counts from the request: IAM issues the token before its answer's way back, however slow.
  const fetch = (generation: number): Effect.Effect<Token, ModelError> =>
    Effect.flatMap(Clock.currentTimeMillis, (asked) =>
      options.fetch.pipe(
        Effect.timeoutOrElse({ duration: options.timeout, orElse: () => timedOut }),
        Effect.map((issued) => {
          const lifetime = Math.min(Duration.toMillis(issued.expiresIn), MAX_LIFETIME_MILLIS)
          return {
            value: issued.token,
            generation,
            refreshAt: asked + lifetime - Math.min(margin, lifetime / 2),
            expiresAt: asked + lifetime
          }
        })
      )
    ).pipe(Effect.withSpan("WatsonX.iamToken"))

  const isFresh = (
    current: State,
    now: number,
    rejected: number | undefined
  ): current is Extract<State, { _tag: "Ready" }> =>
    current._tag === "Ready" && current.token.generation !== rejected && now < current.token.refreshAt

  // The newest generation the API refused (a 401): no fallback to it, nor to an older one.
  let refused = 0

  // Refreshed early (within refreshMargin): an IAM outage before the token expires is not yet the calls' failure.
  const fallback = (previous: Token | undefined, now: number): Token | undefined =>
    previous !== undefined && previous.generation > refused && now < previous.expiresAt ? previous : undefined

  const awaitFetch = (
    deferred: Deferred.Deferred<Token, ModelError>,
    previous: Token | undefined
  ): Effect.Effect<Token, ModelError> =>
    Effect.catch(Deferred.await(deferred), (error) =>
      Effect.clockWith((clock) => {
        const kept = fallback(previous, clock.currentTimeMillisUnsafe())
        return kept === undefined ? Effect.fail(error) : Effect.succeed(kept)
      })
    )

  const refresh = (rejected: number | undefined): Effect.Effect<Token, ModelError> =>
    Effect.uninterruptibleMask((restore) =>
      Effect.clockWith((clock) => {
        const now = clock.currentTimeMillisUnsafe()
        if (rejected !== undefined && rejected > refused) refused = rejected
        // Decided and updated synchronously: no other fiber sees a state between the two.
        const current = state
        if (current._tag === "Pending") return restore(awaitFetch(current.deferred, current.previous))
        const previous = fallback(current._tag === "Ready" ? current.token : undefined, now)
        if (isFresh(current, now, rejected)) return Effect.succeed(current.token)
        const generation = generationOf(current) + 1
        const deferred = Deferred.makeUnsafe<Token, ModelError>()
        state = { _tag: "Pending", generation, deferred, previous }
        // On any exit (failure, timeout, interruption) the state leaves Pending, so the next call asks again.
        const settle = (exit: Exit.Exit<Token, ModelError>) =>
          Effect.sync(() => {
            const kept = Exit.isSuccess(exit) ? exit.value : fallback(previous, clock.currentTimeMillisUnsafe())
            state = kept === undefined ? { _tag: "Empty", generation } : { _tag: "Ready", token: kept }
            Deferred.doneUnsafe(deferred, exit)
          })
        return Effect.andThen(
          Effect.forkIn(Effect.onExit(fetch(generation), settle), scope, { startImmediately: true }),
          restore(awaitFetch(deferred, previous))
        )
      })
    )

  // The common case (a fresh token) in one step; anything else decided again, atomically, by `refresh`.
  const get = (rejected?: number): Effect.Effect<Token, ModelError> =>
    Effect.clockWith((clock) => {
      const current = state
      return isFresh(current, clock.currentTimeMillisUnsafe(), rejected)
        ? Effect.succeed(current.token)
        : refresh(rejected)
    })

  const authorized = <A, E>(
    call: (token: Redacted.Redacted<string>) => Effect.Effect<A, E>
  ): Effect.Effect<A, E | ModelError> =>
    Effect.flatMap(get(), (first) =>
      Effect.catchIf(call(first.value), isUnauthorized, () =>
        Effect.flatMap(get(first.generation), (fresh) => call(fresh.value))
      )
    )

  const authorizedStream = <A, E>(
    open: (token: Redacted.Redacted<string>) => Stream.Stream<A, E>
  ): Stream.Stream<A, E | ModelError> =>
    Stream.unwrap(
      Effect.map(get(), (first) => {
        let started = false
        return open(first.value).pipe(
          Stream.map((a) => {
            started = true
            return a
          }),
          Stream.catchIf(
            (error) => !started && isUnauthorized(error),
            () => Stream.unwrap(Effect.map(get(first.generation), (fresh) => open(fresh.value)))
          )
        )
      })
    )

  return { get, authorized, authorizedStream } satisfies TokenCache
})
