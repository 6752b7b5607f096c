/**
 * Calls through named domains: one domain, a fallback chain (on `ExecutionPlan`), every
 * domain in parallel, or a hedged race. Each answer says where it came from.
 *
 * Optional services are used when present in context: a `CircuitBreaker.Registry`
 * (one shared breaker per provider), a `ResponseCache` (answers, and a fallback when a
 * breaker is open) and `RateLimits` (waiting for a slot is outside the call's deadline).
 *
 * @since 0.1.0
 */
import { Context, Deferred, Duration, Effect, type Either, ExecutionPlan, Layer, Option } from "effect"
import { type AiError, isAiError, ModelError, shouldFallback } from "./AiError.js"
import * as CircuitBreaker from "./CircuitBreaker.js"
import { applyTo, type Domain, Domains, Providers } from "./Domain.js"
import { Executor, type ExecuteOptions, type RetryInfo } from "./Executor.js"
import * as Metrics from "./Metrics.js"
import { estimateTokens, type GenerateRequest, type GenerateResponse, toMessages } from "./Model.js"
import type { Service as ProviderService } from "./Model.js"
import { RateLimits } from "./RateLimit.js"
import * as ResponseCache from "./ResponseCache.js"
import { Stats } from "./Stats.js"

/**
 * Where an answer came from.
 *
 * @since 0.1.0
 * @category models
 */
export interface Answer {
  readonly response: GenerateResponse
  readonly domain: string
  readonly provider: string
  /** Domains tried, the answering one included. */
  readonly attempts: number
  readonly fallbackUsed: boolean
  readonly source: "provider" | "cache" | "stale-cache"
  /** Set by `hedge`: whether the backup call answered. */
  readonly hedgeWon?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface CallOptions {
  /** Extra metric tags (e.g. a batch id). */
  readonly tags?: Readonly<Record<string, string>> | undefined
  readonly onRetry?: ((info: RetryInfo & { readonly domain: string }) => Effect.Effect<void>) | undefined
  /** Use the response cache when one is in context (default true). */
  readonly cache?: boolean | undefined
  /** When the call fails (an open breaker included), answer from an expired cache entry within its grace (default false). */
  readonly allowStale?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface HedgeOptions extends CallOptions {
  /** When to start the backup: a duration, or `"p95"` of the primary's latency so far. */
  readonly after: Duration.DurationInput | "p95"
  /** Used by `"p95"` until the primary has answered 20 calls. Default 2 seconds. */
  readonly defaultAfter?: Duration.DurationInput | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface DomainOutcome {
  readonly domain: string
  readonly result: Either.Either<Answer, AiError>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly execute: (request: GenerateRequest, domain: string, options?: CallOptions) => Effect.Effect<Answer, AiError>
  /**
   * Tries the domains in order, moving on only when `shouldFallback` says so; each domain
   * uses its own timeout and retry policy.
   */
  readonly executeWithFallback: (
    request: GenerateRequest,
    domains: ReadonlyArray<string>,
    options?: CallOptions
  ) => Effect.Effect<Answer, AiError>
  /** Every domain's outcome, in the order given. */
  readonly executeParallelDomains: {
    (
      request: GenerateRequest,
      domains: ReadonlyArray<string>,
      mode: "all",
      options?: CallOptions
    ): Effect.Effect<ReadonlyArray<DomainOutcome>>
    /** The first success; the other calls are interrupted. Fails only when all fail. */
    (
      request: GenerateRequest,
      domains: ReadonlyArray<string>,
      mode: "first",
      options?: CallOptions
    ): Effect.Effect<Answer, AiError>
  }
  /**
   * Calls the first domain; if it has not answered after `after` (or failed in a way that
   * falls back), starts the next one. The first success wins; the loser is interrupted
   * and counted in `orchestra_hedges_total`.
   */
  readonly hedge: (
    request: GenerateRequest,
    domains: ReadonlyArray<string>,
    options: HedgeOptions
  ) => Effect.Effect<Answer, AiError>
  /** The provider and domain a name resolves to. */
  readonly resolve: (
    domain: string
  ) => Effect.Effect<{ readonly domain: Domain; readonly provider: ProviderService }, ModelError>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Router extends Context.Tag("effect-orchestra/Router")<Router, Service>() {}

interface Step {
  readonly domain: Domain
  readonly provider: ProviderService
}

class PlanStep extends Context.Tag("effect-orchestra/Router/PlanStep")<PlanStep, Step>() {}

const noDomains = new ModelError({ reason: "InvalidRequest", field: "domains", message: "give at least one domain" })

/**
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.gen(function* () {
  const executor = yield* Executor
  const domains = yield* Domains
  const providers = yield* Providers
  const stats = yield* Stats
  const breakers = yield* Effect.serviceOption(CircuitBreaker.Registry)
  const cache = yield* Effect.serviceOption(ResponseCache.ResponseCache)
  const limits = yield* Effect.serviceOption(RateLimits)

  const resolve = (name: string) =>
    Effect.flatMap(domains.get(name), (domain) =>
      Effect.map(providers.get(domain.provider), (provider) => ({ domain, provider }))
    )

  const cacheKey = (step: Step, request: GenerateRequest) =>
    ResponseCache.key({ provider: step.provider.name, request: applyTo(step.domain, request) })

  const callStep = (
    step: Step,
    request: GenerateRequest,
    options: CallOptions
  ): Effect.Effect<Omit<Answer, "attempts" | "fallbackUsed">, AiError> => {
    const { domain, provider } = step
    const applied = applyTo(domain, request)
    const executeOptions: ExecuteOptions = {
      provider,
      domain: domain.name,
      tags: options.tags,
      timeout: domain.timeout,
      retry: domain.retry ?? false,
      onRetry: options.onRetry === undefined ? undefined : (info) => options.onRetry!({ ...info, domain: domain.name })
    }
    let call: Effect.Effect<GenerateResponse, AiError> = executor.execute(applied, executeOptions)
    if (Option.isSome(breakers)) {
      const registry = breakers.value
      const inner = call
      call = Effect.flatMap(registry.get(provider.name), (breaker) => breaker.run(inner))
    }
    if (Option.isSome(limits)) {
      const tokens = toMessages(applied).reduce((n, m) => n + estimateTokens(m.content), 0)
      call = Effect.zipRight(limits.value.acquire(provider.name, tokens), call)
    }
    let source: Answer["source"] = "provider"
    if (Option.isSome(cache) && options.cache !== false) {
      const inner = call
      // With `allowStale`, an expired entry within its grace answers when the call fails,
      // an open breaker included (stale-if-error).
      call = Effect.map(
        cache.value.getOrComputeDetailed(cacheKey(step, request), inner, { allowStale: options.allowStale ?? false }),
        (r) => {
          source = r.source === "hit" ? "cache" : r.source === "stale" ? "stale-cache" : "provider"
          return r.value
        }
      )
    }
    return Effect.map(call, (response) => ({ response, domain: domain.name, provider: provider.name, source }))
  }

  const countFallback = (step: Step, options: CallOptions) =>
    Effect.sync(() =>
      Metrics.fallbacks.unsafeUpdate(
        1,
        stats.labels({ provider: step.provider.name, domain: step.domain.name, tags: options.tags }).exact
      )
    )

  const execute = (request: GenerateRequest, domain: string, options: CallOptions = {}) =>
    Effect.flatMap(resolve(domain), (step) =>
      Effect.map(callStep(step, request, options), (a): Answer => ({ ...a, attempts: 1, fallbackUsed: false }))
    )

  const executeWithFallback = (
    request: GenerateRequest,
    names: ReadonlyArray<string>,
    options: CallOptions = {}
  ): Effect.Effect<Answer, AiError> =>
    Effect.gen(function* () {
      if (names.length === 0) return yield* Effect.fail(noDomains)
      const steps = yield* Effect.forEach(names, resolve)
      let attempts = 0
      let stepIndex = -1
      const attempt = Effect.flatMap(PlanStep, (step) => {
        attempts++
        stepIndex = steps.indexOf(step)
        return callStep(step, request, options)
      })
      const [first, ...rest] = steps.map((step, i) => ({
        provide: Context.make(PlanStep, step),
        ...(i > 0 ? { while: (error: AiError) => Effect.succeed(isAiError(error) && shouldFallback(error)) } : {})
      }))
      const plan = ExecutionPlan.make(first!, ...rest)
      // The plan's steps only provide contexts, so every failure is one of `attempt`'s.
      const answer = yield* Effect.withExecutionPlan(attempt, plan) as Effect.Effect<
        Omit<Answer, "attempts" | "fallbackUsed">,
        AiError
      >
      if (stepIndex > 0) yield* countFallback(steps[stepIndex]!, options)
      const result: Answer = { ...answer, attempts, fallbackUsed: stepIndex > 0 }
      return result
    })

  const executeParallelDomains = ((
    request: GenerateRequest,
    names: ReadonlyArray<string>,
    mode: "all" | "first",
    options: CallOptions = {}
  ) => {
    if (mode === "all") {
      return Effect.forEach(
        names,
        (domain) => Effect.map(Effect.either(execute(request, domain, options)), (result) => ({ domain, result })),
        { concurrency: "unbounded" }
      )
    }
    if (names.length === 0) return Effect.fail(noDomains)
    return Effect.raceAll(names.map((domain) => execute(request, domain, options)))
  }) as Service["executeParallelDomains"]

  const hedgeLabels = (step: Step, options: CallOptions, outcome: string) =>
    stats
      .labels({ provider: step.provider.name, domain: step.domain.name, tags: options.tags })
      .with("outcome", outcome)

  const hedgeDelay = (step: Step, options: HedgeOptions): Effect.Effect<Duration.Duration> => {
    if (options.after !== "p95") return Effect.succeed(Duration.decode(options.after))
    const fallback = Duration.decode(options.defaultAfter ?? Duration.seconds(2))
    return Effect.map(stats.snapshot({ provider: step.provider.name, domain: step.domain.name }), (s) =>
      s.successes >= 20 ? Duration.millis(s.latency.p95) : fallback
    )
  }

  const hedge = (
    request: GenerateRequest,
    names: ReadonlyArray<string>,
    options: HedgeOptions
  ): Effect.Effect<Answer, AiError> =>
    Effect.gen(function* () {
      if (names.length === 0) return yield* Effect.fail(noDomains)
      const steps = yield* Effect.forEach(names, resolve)
      if (steps.length === 1) return yield* execute(request, names[0]!, options)
      const delay = yield* hedgeDelay(steps[0]!, options)
      // Backup i starts `delay` after backup i-1 started, or at once when i-1 failed in a way
      // that falls back. A failure that does not fall back (a bad request) ends the hedge.
      const started = yield* Effect.forEach(steps, () => Deferred.make<void>())
      const failed = yield* Effect.forEach(steps, () => Deferred.make<void>())
      const fatal = yield* Deferred.make<never, AiError>()
      const didStart = steps.map(() => false)
      const racers = steps.map((step, i) => {
        const run = callStep(step, request, options).pipe(
          Effect.map((a): Answer => ({ ...a, attempts: i + 1, fallbackUsed: i > 0, hedgeWon: i > 0 })),
          Effect.tapError((error) =>
            shouldFallback(error) ? Deferred.succeed(failed[i]!, undefined) : Deferred.fail(fatal, error)
          )
        )
        const start = Effect.suspend(() => {
          didStart[i] = true
          if (i > 0) Metrics.hedges.unsafeUpdate(1, hedgeLabels(step, options, "started"))
          return Effect.zipRight(Deferred.succeed(started[i]!, undefined), run)
        })
        if (i === 0) return start
        const wait = Effect.raceFirst(
          Effect.zipRight(Deferred.await(started[i - 1]!), Effect.sleep(delay)),
          Deferred.await(failed[i - 1]!)
        )
        return Effect.zipRight(wait, start)
      })
      const answer = yield* Effect.raceFirst(Effect.raceAll(racers), Deferred.await(fatal))
      const winner = steps.findIndex((s) => s.domain.name === answer.domain)
      if (didStart.slice(1).some(Boolean)) {
        steps.forEach((step, i) => {
          if (didStart[i]) Metrics.hedges.unsafeUpdate(1, hedgeLabels(step, options, i === winner ? "won" : "lost"))
        })
      }
      return answer
    })

  return {
    execute,
    executeWithFallback,
    executeParallelDomains,
    hedge,
    resolve
  } satisfies Service
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Router, never, Executor | Domains | Providers | Stats> = Layer.effect(Router, make)
