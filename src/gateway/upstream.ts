/**
 * Where a request's `model` goes, and the time it spends there. A `model` names a domain
 * (its fallback chain and policies, through a `Router`) or `provider/model` (one provider
 * with the executor's defaults); either way the call runs through the executor's one
 * pipeline (deadlines, retries, breaker, rate limit, cache, fallback, hedging).
 *
 * The gateway's router runs over the same providers wrapped once at build: each call,
 * stream and embedding adds the time it waited on its provider to the request's
 * {@link Tracker} (found in the fiber's context, so the pipeline needs no change), which
 * is how the gateway's own overhead is told apart from upstream time.
 *
 * @internal
 */
import { type Clock, Context, Effect, Stream } from "effect"
import type { AiError } from "../AiError.js"
import { type Domain, Domains, makeProviders, Providers } from "../Domain.js"
import type { Executor } from "../Executor.js"
import type { Models } from "../Gateway.js"
import type { Service as ProviderService } from "../Model.js"
import * as Router from "../Router.js"
import type { Stats } from "../Stats.js"
import * as Input from "../Input.js"
import { type GatewayError, gatewayError } from "./errors.js"
import { describe } from "./models.js"

/**
 * Time a request waited on upstream providers: whole calls, and for streams the wait up to
 * each attempt's first part. The time some call ran, not the sum of the calls' times: a hedge's
 * calls race (two at once for a while), and summed they came to more than the request took,
 * which left the gateway's own share at 0.
 *
 * @internal
 */
export interface Tracker {
  upstreamMs: number
  /** Upstream calls running now, and when the first of them started. */
  running: number
  since: number
  /** Upstream calls made (an embedding's attempts, retries included: it has no fallback or cache). */
  calls: number
}

/**
 * A request's tracker, before any upstream call.
 *
 * @internal
 */
export const makeTracker = (): Tracker => ({ upstreamMs: 0, running: 0, since: 0, calls: 0 })

const enter = (tracker: Tracker, clock: Clock.Clock): void => {
  tracker.calls++
  if (tracker.running++ === 0) tracker.since = millis(clock)
}

const leave = (tracker: Tracker, clock: Clock.Clock): void => {
  if (--tracker.running === 0) tracker.upstreamMs += millis(clock) - tracker.since
}

/**
 * The tracker of the request being served, if any.
 *
 * @internal
 */
export const CurrentTracker = Context.Reference<Tracker | undefined>("effect-orchestra/gateway/CurrentTracker", {
  defaultValue: () => undefined
})

/**
 * Milliseconds with sub-millisecond precision from a `Clock` (TestClock included).
 *
 * @internal
 */
export const millis = (clock: Clock.Clock): number => Number(clock.currentTimeNanosUnsafe()) / 1e6

const timed = (clock: Clock.Clock, provider: ProviderService): ProviderService => {
  const around = <A>(effect: Effect.Effect<A, AiError>): Effect.Effect<A, AiError> =>
    Effect.withFiber((fiber) => {
      const tracker = fiber.getRef(CurrentTracker)
      if (tracker === undefined) return effect
      enter(tracker, clock)
      return Effect.onExit(effect, () => {
        leave(tracker, clock)
        return Effect.void
      })
    })
  return {
    name: provider.name,
    defaultModel: provider.defaultModel,
    maxConcurrency: provider.maxConcurrency,
    generate: (request) => around(provider.generate(request)),
    embed: (request) => around(provider.embed(request)),
    stream: (request) =>
      Stream.unwrap(
        Effect.withFiber((fiber) => {
          const tracker = fiber.getRef(CurrentTracker)
          const upstream = provider.stream(request)
          if (tracker === undefined) return Effect.succeed(upstream)
          enter(tracker, clock)
          let counted = false
          const count = () => {
            if (counted) return
            counted = true
            leave(tracker, clock)
          }
          return Effect.succeed(
            upstream.pipe(
              Stream.mapArray((parts) => {
                count()
                return parts
              }),
              Stream.onExit(() => Effect.sync(count))
            )
          )
        })
      )
  }
}

/**
 * What a `model` resolved to.
 *
 * @internal
 */
export type Target =
  | {
      readonly _tag: "Domain"
      readonly domain: Domain
      /** The domain and its fallbacks: any of them may answer, with its own system prompt and defaults. */
      readonly chain: ReadonlyArray<Domain>
    }
  | { readonly _tag: "Provider"; readonly provider: ProviderService; readonly model: string }

/**
 * @internal
 */
export interface Upstream {
  readonly router: Router.Service
  readonly domains: ReadonlyArray<Domain>
  /** Provider names reachable as `provider/model` (none when that routing is off). */
  readonly providers: ReadonlyArray<ProviderService>
  /** The names a `model` may take. */
  readonly models: Models
  /** The target of `model`; `allowed`: the names the request's key may use, which a 404 lists instead of every model. */
  readonly resolve: (model: string, allowed?: ReadonlyArray<string> | undefined) => Effect.Effect<Target, GatewayError>
}

/**
 * Builds the gateway's router over timed providers. `providerModels`: whether a `model`
 * may name `provider/model` directly (besides the domains).
 *
 * @internal
 */
export const make = Effect.fnUntraced(function* (clock: Clock.Clock, providerModels: boolean) {
  const registry = yield* Providers
  const domains = yield* Domains
  const wrapped: Record<string, ProviderService> = {}
  for (const name of registry.names) {
    const provider = yield* registry
      .get(name)
      .pipe(Effect.mapError((error) => Input.toOptionError({ path: `providers.${name}`, message: error.message })))
    wrapped[name] = timed(clock, provider)
  }
  const timedRegistry = yield* makeProviders(wrapped)
  const router = yield* Router.make.pipe(Effect.provideService(Providers, timedRegistry))
  const byName = new Map(domains.all.map((domain) => [domain.name, domain] as const))
  const targets = new Map<string, Target>()
  for (const domain of domains.all) {
    const chain = yield* Effect.orElseSucceed(router.chain(domain.name), () => [domain])
    targets.set(domain.name, { _tag: "Domain", domain, chain })
  }

  const upstreams: Record<string, ReadonlyArray<string>> = {}
  for (const [name, target] of targets) {
    if (target._tag !== "Domain") continue
    const names = new Set<string>()
    for (const step of target.chain) {
      const provider = Object.hasOwn(wrapped, step.provider) ? wrapped[step.provider] : undefined
      const model = step.model ?? provider?.defaultModel
      if (model !== undefined) names.add(`${step.provider}/${model}`)
    }
    upstreams[name] = [...names]
  }
  const models: Models = {
    domains: [...byName.keys()],
    providers: providerModels ? registry.names : [],
    upstreams
  }
  // A key limited to some models is told those: the gateway's other domains and providers are not its to know.
  const notFound = (model: string, allowed: ReadonlyArray<string> | undefined) =>
    gatewayError(
      "NotFound",
      `The model "${model}" does not exist: use ${allowed === undefined || allowed.includes("*") ? describe(models) : allowedText(allowed)}`,
      { param: "model", code: "model_not_found" }
    )

  const resolve = (model: string, allowed?: ReadonlyArray<string> | undefined): Effect.Effect<Target, GatewayError> => {
    const known = targets.get(model)
    if (known !== undefined) return Effect.succeed(known)
    const slash = model.indexOf("/")
    // A wildcard is `allowedModels`' (`provider/*`), never a model: a key allowed `a/*` would find "a/*" itself.
    if (!providerModels || slash <= 0 || slash === model.length - 1 || model.includes("*", slash)) {
      return Effect.fail(notFound(model, allowed))
    }
    const provider = Object.hasOwn(wrapped, model.slice(0, slash)) ? wrapped[model.slice(0, slash)] : undefined
    if (provider === undefined) return Effect.fail(notFound(model, allowed))
    const target: Target = { _tag: "Provider", provider, model: model.slice(slash + 1) }
    // Names that resolved are kept (bounded: only provider/model pairs clients actually use, up to 1,000).
    if (targets.size < byName.size + 1_000) targets.set(model, target)
    return Effect.succeed(target)
  }

  return {
    router,
    domains: domains.all,
    providers: providerModels ? Object.values(wrapped) : [],
    models,
    resolve
  } satisfies Upstream
})

const maxListed = 20

const allowedText = (allowed: ReadonlyArray<string>): string => {
  if (allowed.length === 0) return "none: this key may use no model"
  const listed = allowed.slice(0, maxListed).join(", ")
  return `one this key may use (${allowed.length > maxListed ? `${listed} and ${allowed.length - maxListed} more` : listed})`
}

/**
 * What {@link make} needs.
 *
 * @internal
 */
export type Requirements = Executor | Domains | Providers | Stats
