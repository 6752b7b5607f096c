/**
 * The router's entry points on the planner (`plan.ts`): one domain, an explicit fallback
 * chain, every domain in parallel, a hedged race (after a fixed delay or the first domain's
 * p95), a stream, and an embedding. Each runs through the executor's pipeline; a call's
 * answer says where it came from.
 *
 * @internal
 */
import { Duration, Effect, Fiber, Result, Stream } from "effect"
import { type AiError, type FailedAttempt, FallbackExhaustedError, invalidRequest, ModelError } from "../AiError.js"
import { applyTo, type Domain } from "../Domain.js"
import type { Service as ExecutorService, StreamOptions as ExecutorStreamOptions, Step } from "../Executor.js"
import * as Input from "../Input.js"
import {
  type EmbedRequest,
  type GenerateRequest,
  type GenerateResponse,
  type Service as ProviderService,
  validateEmbed
} from "../Model.js"
import { embedAnswerIssue, embedUsageOf } from "../executor/embed.js"
import { chatTelemetry } from "../executor/generate.js"
import { CurrentCut, type Cut, type Telemetry } from "../policy/plan.js"
import { isTraced, traced } from "../policy/span.js"
import { ownPrepare } from "../policy/stream-plan.js"
import type { Answer, CallOptions, HedgeOptions, Service, StreamOptions } from "../Router.js"
import type { Service as StatsService } from "../Stats.js"
import { WindowHistogram } from "../stats/series.js"
import {
  countedRefusal,
  isList,
  noDomains,
  optionKeys,
  type Planner,
  repeatedDomain,
  requestFor,
  retryHook,
  streamValueIssue,
  unknownOption
} from "./plan.js"

// The model each step asks for is the one of the request it sends (`requestFor`): its domain's, or the caller's.
const routedTelemetry = (request: GenerateRequest): Telemetry<ProviderService, GenerateResponse> => ({
  ...chatTelemetry(request),
  requestModel: (step) => requestFor(step, request).model ?? step.target.defaultModel
})

const notAnArray = invalidRequest("domains", "expected an array of domain names")
const oneHedged = invalidRequest(
  "domains",
  "a hedge starts the next domain after its delay: give at least two domains (router.execute calls one)"
)

/** What the entry points need from the router. */
const streamFlags = ["cache"] as const
// Embeddings are never cached, but a `cache: "no"` is as wrong there as anywhere.
const callFlags = ["cache", "allowStale"] as const

const flagIssue = (options: object, flags: ReadonlyArray<string>): ModelError | undefined => {
  const flag = Input.notABoolean(options, flags)
  return flag === undefined ? undefined : invalidRequest(flag.path, flag.message)
}

export interface Env {
  readonly executor: ExecutorService
  readonly stats: StatsService
  readonly planner: Planner
}

const domainsOf = (names: string | ReadonlyArray<string>) => () => ({
  "orchestra.domains": typeof names === "string" ? names : isList(names) ? names.join(",") : Input.shown(names)
})

interface StreamChain {
  readonly first: Domain
  readonly steps: NonNullable<ExecutorStreamOptions["steps"]>
}

/** Builds the router's entry points, once. */
export const makeCalls = (env: Env) => {
  const { executor, stats } = env
  const { resolve, chain, applyOf, planWith, refusedOn, domainCount } = env.planner

  const run = (
    request: GenerateRequest,
    names: string | ReadonlyArray<string>,
    options: CallOptions,
    hedgeAfter?: Duration.Duration | undefined,
    known: ReadonlySet<string> = optionKeys.call
  ): Effect.Effect<Answer, AiError> => {
    const unknown = unknownOption(options, known)
    if (unknown !== undefined) return refusedOn(names, unknown)
    return Effect.flatMap(planWith(request, names, options, hedgeAfter), (routed) => {
      const fiber = Fiber.getCurrent()
      const plan =
        fiber !== undefined && isTraced(fiber) ? { ...routed.plan, telemetry: routedTelemetry(request) } : routed.plan
      return Effect.map(executor.run(plan, routed.call), routed.answer)
    })
  }

  const execute = (request: GenerateRequest, domain: string, options: CallOptions = {}) =>
    typeof domain === "string"
      ? traced("Router.execute", domainsOf(domain), run(request, domain, options))
      : Effect.fail(invalidRequest("domain", `expected a domain name, got ${Input.kindOf(domain)}`))

  // A string would be one domain (and its own chain) to `run`, silently not the chain the caller meant to give.
  const executeWithFallback = (request: GenerateRequest, names: ReadonlyArray<string>, options: CallOptions = {}) =>
    isList(names)
      ? traced("Router.executeWithFallback", domainsOf(names), run(request, names, options))
      : Effect.fail(notAnArray)

  const executeParallelDomains = ((
    request: GenerateRequest,
    names: ReadonlyArray<string>,
    mode: "all" | "first",
    options: CallOptions = {}
  ) => {
    if (!isList(names)) return Effect.fail(notAnArray)
    if (names.length === 0) return Effect.fail(noDomains)
    const repeated = repeatedDomain(names)
    if (repeated !== undefined) return Effect.fail(repeated)
    // Each name is a fiber and an outcome (an unknown one too): with every name once, a list longer than
    // the registry names unknown domains, and its cost would grow with the caller's list, not the configuration.
    if (names.length > domainCount) {
      return Effect.fail(
        invalidRequest(
          "domains",
          `${names.length} names, more than the ${domainCount} domains there are: name each domain once`
        )
      )
    }
    const unknown = unknownOption(options, optionKeys.call)
    if (unknown !== undefined) return refusedOnce(request, names, options, unknown)
    if (mode !== "all" && mode !== "first") {
      return Effect.fail(invalidRequest("mode", `expected "all" or "first", got ${Input.shown(mode)}`))
    }
    const refused = refusedOnce(request, names, options, undefined)
    return mode === "all"
      ? Effect.andThen(refused, allOutcomes(request, names, options))
      : Effect.andThen(refused, firstSuccess(request, names, options))
  }) as Service["executeParallelDomains"]

  // The request and the option values are the same for every domain: refused, they fail the
  // call once (counted on the first known domain, as a chain's refusal is), not once per domain as
  // an "all" outcome or a "first" FallbackExhaustedError. An unknown domain is its own outcome.
  // `unknown`: the options' refusal found before (a misspelt key), counted there.
  const refusedOnce = (
    request: GenerateRequest,
    names: ReadonlyArray<string>,
    options: CallOptions,
    unknown: ModelError | undefined
  ) => {
    const from = (i: number): Effect.Effect<void, ModelError> =>
      i === names.length
        ? unknown === undefined
          ? Effect.void
          : Effect.fail(unknown)
        : Effect.matchEffect(applyOf(names[i]!, undefined), {
            onFailure: () => from(i + 1),
            onSuccess: (apply) => {
              if (unknown !== undefined) return Effect.fail(apply.refuse(unknown))
              const routed = apply(request, options, undefined)
              return routed instanceof ModelError ? Effect.fail(routed) : Effect.void
            }
          })
    return from(0)
  }

  const allOutcomes = (request: GenerateRequest, names: ReadonlyArray<string>, options: CallOptions) =>
    Effect.forEach(
      names,
      (domain) => Effect.map(Effect.result(execute(request, domain, options)), (result) => ({ domain, result })),
      { concurrency: "unbounded" }
    )

  // The provider a failure names, or its domain's own (an open circuit, a total deadline or the
  // domain's exhausted chain name none); an unknown domain has none but its name.
  const providerOf = (error: AiError, domain: string): Effect.Effect<string> =>
    "provider" in error && typeof error.provider === "string" && error.provider !== ""
      ? Effect.succeed(error.provider)
      : Effect.match(resolve(domain), { onFailure: () => domain, onSuccess: ({ provider }) => provider.name })

  const firstSuccess = (request: GenerateRequest, names: ReadonlyArray<string>, options: CallOptions) =>
    Effect.withFiber((fiber) => {
      // When every domain fails, each one's failure, in the order given (raceAll keeps only one).
      const failures: Array<FailedAttempt | undefined> = names.map(() => undefined)
      // The racers' cut: the caller's own reason read through it (a facade's abort), and
      // `lost` set by the winner before the race cuts the others, which is no failure of
      // their providers (as a hedge's loser is not).
      const outer = fiber.getRef(CurrentCut)
      const race: Cut = {
        get error() {
          return outer?.error
        },
        lost: false
      }
      const won = Effect.sync(() => {
        race.lost = true
      })
      return Effect.raceAll(
        names.map((domain, i) =>
          execute(request, domain, options).pipe(
            Effect.tap(() => won),
            Effect.tapError((error) =>
              Effect.map(providerOf(error, domain), (provider) => {
                failures[i] = { domain, provider, error }
              })
            ),
            Effect.provideService(CurrentCut, race)
          )
        )
      ).pipe(
        // `catch`, not `mapError`: the race's cause holds every domain's failure; the call fails once.
        Effect.catch((error) => {
          const all = failures.filter((f) => f !== undefined)
          return Effect.fail(
            names.length > 1 && all.length === names.length ? new FallbackExhaustedError({ attempts: all }) : error
          )
        })
      )
    })

  // The p95 is read off a millisecond clock: for a first domain that answers in under a few
  // milliseconds (a cache, a local model) it is rounding, often 0, and a backup that early
  // starts on every call, doubling the load on the next domain for no gain.
  const minP95After = Duration.millis(10)

  const hedgeDelay: (first: string, options: HedgeOptions) => Effect.Effect<Duration.Duration, ModelError> =
    Effect.fnUntraced(function* (first: string, options: HedgeOptions) {
      if (options === null || typeof options !== "object") {
        return yield* Effect.fail(invalidRequest("options", "give the hedge options, e.g. { after: 500 }"))
      }
      const after =
        options.after === "p95" ? undefined : yield* Input.orInvalidRequest(Input.duration("after", options.after))
      // Checked whatever `after` is: a bad value is a mistake even where it would not be read.
      const fallback = yield* Input.orInvalidRequest(
        Input.duration("defaultAfter", Input.orDefault(options.defaultAfter, Duration.seconds(2)))
      )
      if (after !== undefined) return after
      const { domain, provider } = yield* resolve(first)
      // Its calls' service time in the window: its streams (seconds long where a call takes
      // milliseconds, and never hedged) are recorded apart.
      // Read, not created: a pair that served no call takes no `Stats.maxSeries` slot, and one past the
      // bound (counted under "(other)", a mixture of other pairs' times) has no estimate of its own.
      const series = stats.find(provider.name, domain.name)
      if (series === undefined) return fallback
      const calls = new WindowHistogram()
      calls.add(series.service, series.baseline.service)
      return calls.count >= 20 ? Duration.max(Duration.millis(calls.quantile(0.95)), minP95After) : fallback
    })

  const hedged = Effect.fnUntraced(function* (
    request: GenerateRequest,
    names: ReadonlyArray<string>,
    options: HedgeOptions
  ) {
    if (!isList(names)) return yield* Effect.fail(notAnArray)
    if (names.length === 0) return yield* Effect.fail(noDomains)
    // A misspelt key (`aftr`) is named as written, before `after` is found missing.
    const unknown =
      typeof options === "object" && options !== null ? unknownOption(options, optionKeys.hedge) : undefined
    if (unknown !== undefined) return yield* refusedOn(names, unknown)
    // Its options refused are counted on the chain, as `run`'s are; an unknown first domain is told as it is.
    const delay = yield* Effect.catch(hedgeDelay(names[0]!, options), (error) => refusedOn(names, error))
    // The delay starts the next domain of the list: on one domain it would do nothing, silently.
    if (names.length === 1) return yield* Effect.fail(oneHedged)
    return yield* run(request, names, options, delay, optionKeys.hedge)
  })

  const hedge = (request: GenerateRequest, names: ReadonlyArray<string>, options: HedgeOptions) =>
    traced("Router.hedge", domainsOf(names), hedged(request, names, options))

  // A chain's stream steps, resolved once per domain name as `execute`'s plans are (the
  // domains and providers are fixed for the router's life; an unknown name fails and is not kept).
  const streamChains = new Map<string, StreamChain>()
  const buildStreamChain = Effect.fnUntraced(function* (names: string | ReadonlyArray<string>) {
    const list = yield* chain(names)
    const steps = yield* Effect.forEach(list, (domain) =>
      Effect.map(resolve(domain.name), ({ provider }) => ({
        provider,
        domain: domain.name,
        retry: domain.retry ?? false,
        firstChunkTimeout: domain.timeout,
        cache: domain.cache,
        prepare: ownPrepare((r: GenerateRequest) => applyTo(domain, r))
      }))
    )
    const found: StreamChain = { first: list[0]!, steps }
    if (typeof names === "string") streamChains.set(names, found)
    return found
  })
  // Each step's first-chunk deadline is its domain's timeout, unless the caller gives one for the stream.
  const streamChain = (names: string | ReadonlyArray<string>): Effect.Effect<StreamChain, ModelError> => {
    const known = typeof names === "string" ? streamChains.get(names) : undefined
    return known !== undefined ? Effect.succeed(known) : buildStreamChain(names)
  }

  // A stream refused for its options, counted on its chain's first step as its request's refusal
  // is (by the executor); on domains that resolve to no chain, the options' error as it is.
  const refusedStream = (names: string | ReadonlyArray<string>, error: ModelError) =>
    Stream.fromEffect(
      Effect.matchEffect(streamChain(names), {
        onFailure: () => Effect.fail(error),
        onSuccess: ({ steps }) => Effect.fail(countedRefusal(stats, error, steps[0]!.provider!.name, steps[0]!.domain))
      })
    )

  // A traced caller's stream is in a `Router.stream` span, around the executor's.
  const stream = (request: GenerateRequest, names: string | ReadonlyArray<string>, options: StreamOptions = {}) => {
    const unknown = unknownOption(options, optionKeys.stream) ?? flagIssue(options, streamFlags)
    if (unknown !== undefined) return refusedStream(names, unknown)
    const value = streamValueIssue(options)
    if (value !== undefined) return refusedStream(names, Input.toInvalidRequest(value))
    return Stream.unwrap(
      Effect.map(streamChain(names), ({ first, steps }) => {
        const parts = executor.stream(request, {
          // The caller's firstChunkTimeout applies to every step; without it, each its domain's timeout.
          steps:
            options.firstChunkTimeout === undefined ? steps : steps.map(({ firstChunkTimeout: _, ...step }) => step),
          firstChunkTimeout: options.firstChunkTimeout,
          idleTimeout: options.idleTimeout,
          totalTimeout: Input.orDefault(options.totalTimeout, first.totalTimeout),
          resume: options.resume,
          // A domain with `cache: false` is not cached, whatever the call asks, as `execute`'s plan decides.
          cache: first.cache === false ? false : options.cache,
          onRetry: options.onRetry
        })
        const fiber = Fiber.getCurrent()
        return fiber !== undefined && isTraced(fiber)
          ? Stream.withSpan(parts, "Router.stream", { attributes: domainsOf(names)() })
          : parts
      })
    )
  }

  const refusedEmbed = (error: ModelError, provider: string, domain: string): ModelError =>
    countedRefusal(stats, error, provider, domain)

  const embed = Effect.fnUntraced(function* (request: EmbedRequest, name: string, options: CallOptions = {}) {
    const unknown = unknownOption(options, optionKeys.call) ?? flagIssue(options, callFlags)
    if (unknown !== undefined) {
      return yield* Effect.matchEffect(resolve(name), {
        onFailure: () => Effect.fail(unknown),
        onSuccess: ({ domain, provider }) => Effect.fail(refusedEmbed(unknown, provider.name, domain.name))
      })
    }
    const { domain, provider } = yield* resolve(name)
    const valid = yield* Effect.mapError(validateEmbed(request, executor.limits), (error) =>
      refusedEmbed(error, provider.name, domain.name)
    )
    const timeout = options.timeout === undefined ? undefined : Input.duration("timeout", options.timeout)
    if (timeout !== undefined && Result.isFailure(timeout)) {
      return yield* Effect.fail(refusedEmbed(Input.toInvalidRequest(timeout.failure), provider.name, domain.name))
    }
    const totalTimeout = timeout === undefined ? domain.totalTimeout : timeout.success
    const step: Step<ProviderService> = {
      ...executor.stepFor(provider, {
        domain: domain.name,
        timeout: domain.timeout,
        retry: domain.retry ?? false
      }),
      maxConcurrency: undefined,
      noSlot: true,
      answerIssue: embedAnswerIssue(valid.texts.length)
    }
    const answer = yield* executor.run(
      { steps: [step], totalTimeout, onRetry: retryHook(options.onRetry), usageOf: embedUsageOf },
      (p) =>
        p.embed(domain.model === undefined || valid.model !== undefined ? valid : { ...valid, model: domain.model })
    )
    return answer.value
  })

  return { execute, executeWithFallback, executeParallelDomains, hedge, stream, embed }
}
