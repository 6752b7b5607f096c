/**
 * Issue 13 item 12's proof: a domain's policies apply at every entry point. Each entry point
 * below is run against the same four checks on a real manager (`Orchestra.layer`, or the
 * Promise facade built on it), two mock providers `a` and `b`, and the domains
 *
 *   main  -> provider a, falls back to spare
 *   spare -> provider b
 *   solo  -> provider a, no fallback
 *
 * - breaker: a's breaker is opened (failMax 1, tripped by a failing call); the next call
 *   falls back to b, or is refused with `CircuitOpenError`; a is not called again.
 * - rate limit: one request per minute per provider, `maxWait: 0`; the second call falls
 *   back to b, or fails `RateLimited` at once; a is called once.
 * - cache: a second identical call is answered from the cache; a is called once.
 * - fallback: a fails `Overloaded`; the call is answered by b (or fails with that error
 *   where the entry point has no chain).
 *
 * Entry points without a chain (`Executor.execute`, `Executor.embed`, `Router.embed`) are
 * single-provider by design; embeddings are neither cached nor handed to another provider
 * (another model's vectors are not comparable), and the checks say so.
 */
import { assert, describe, it } from "@effect/vitest"
import { type Context, Effect, Exit, Layer, Metric, Result, Scope, Stream } from "effect"
import type { AiError } from "../src/AiError.js"
import { Batch, type ItemResult } from "../src/Batch.js"
import { Providers } from "../src/Domain.js"
import { Executor } from "../src/Executor.js"
import * as Facade from "../src/Facade.js"
import { type GenerateRequest, ModelProvider, type StreamPart } from "../src/Model.js"
import * as Mock from "../src/Model/Mock.js"
import * as Orchestra from "../src/Orchestra.js"
import { Router } from "../src/Router.js"

type Route = "chain" | "single"

interface Outcome {
  readonly provider: string
  /** Where the answer came from, when the entry point says. */
  readonly source?: string | undefined
}

interface Env {
  readonly a: Mock.Control
  readonly b: Mock.Control
  readonly services: Context.Context<Orchestra.Services> | undefined
  readonly facade: Facade.Orchestra | undefined
}

interface EntryPoint {
  readonly name: string
  readonly facade: boolean
  /** Has a fallback chain (a domain's, or steps given). */
  readonly fallback: boolean
  /** Answers from the response cache. */
  readonly cache: boolean
  readonly call: (env: Env, prompt: string, route: Route) => Effect.Effect<Outcome, Facade.FacadeError>
}

const domains = [
  { name: "main", provider: "a", fallback: ["spare"] },
  { name: "spare", provider: "b" },
  { name: "solo", provider: "a" }
]

let envs = 0

type Policies = Pick<Orchestra.Options<Record<string, never>>, "breakers" | "rateLimits" | "cache">

const makeEnv = (facade: boolean, a: Mock.Options, options: Policies) =>
  Effect.gen(function* () {
    const n = ++envs
    // Facade managers register in the global metric registry: their providers get names of their own.
    const ma = yield* Mock.make({ ...a, name: facade ? `ep-a-${n}` : "a" })
    const mb = yield* Mock.make({ name: facade ? `ep-b-${n}` : "b" })
    const layer = Orchestra.layer({
      ...options,
      // Calls without a domain use the executor's retry policy: one attempt here, as on the domains.
      executor: { retry: { maxAttempts: 1 } },
      providers: { a: Layer.succeed(ModelProvider, ma.provider), b: Layer.succeed(ModelProvider, mb.provider) },
      domains
    })
    if (facade) {
      const orchestra = Facade.createOrchestra(layer)
      yield* Effect.addFinalizer(() => Effect.promise(() => orchestra.dispose()))
      return { a: ma.control, b: mb.control, services: undefined, facade: orchestra } satisfies Env
    }
    const scope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    const services = yield* Layer.buildWithScope(layer, scope).pipe(
      Effect.provideService(Metric.MetricRegistry, new Map())
    )
    return { a: ma.control, b: mb.control, services, facade: undefined } satisfies Env
  })

const withServices = <A>(env: Env, effect: Effect.Effect<A, AiError, Orchestra.Services>) =>
  Effect.provideContext(effect, env.services!)

const fromPromise = <A>(f: () => Promise<A>): Effect.Effect<A, Facade.FacadeError> =>
  Effect.tryPromise({
    try: f,
    catch: (error) => {
      if (error instanceof Facade.OrchestraError) return error.error
      throw error
    }
  })

const ask = (prompt: string): GenerateRequest => ({ prompt })
const domainOf = (route: Route) => (route === "chain" ? "main" : "solo")
const chainOf = (route: Route) => (route === "chain" ? ["solo", "spare"] : ["solo"])

const answered = (answer: { readonly provider: string; readonly source?: string }): Outcome => ({
  provider: answer.provider,
  source: answer.source
})

const finished = (parts: ReadonlyArray<StreamPart>): Outcome => {
  const finish = parts.find((p) => p._tag === "Finish")
  assert.isDefined(finish, "a stream ends with its Finish")
  return { provider: finish!._tag === "Finish" ? finish!.provider : "" }
}

const fromResult = <A>(result: Result.Result<A, AiError>): Effect.Effect<A, AiError> =>
  Result.isSuccess(result) ? Effect.succeed(result.success) : Effect.fail(result.failure)

const collect = async (iterable: AsyncIterable<StreamPart>) => {
  const parts: Array<StreamPart> = []
  for await (const part of iterable) parts.push(part)
  return parts
}

const itemOutcome = (item: ItemResult) =>
  item.answer !== undefined ? Effect.succeed(answered(item.answer)) : Effect.fail(item.error!)

const entryPoints: ReadonlyArray<EntryPoint> = [
  {
    name: "Executor.execute",
    facade: false,
    fallback: false,
    cache: true,
    call: (env, prompt) =>
      withServices(
        env,
        Effect.flatMap(Executor, (executor) => executor.execute(ask(prompt)))
      )
  },
  {
    name: "Executor.stream",
    facade: false,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      withServices(
        env,
        Effect.gen(function* () {
          const executor = yield* Executor
          const providers = yield* Providers
          const names = route === "chain" ? ["a", "b"] : ["a"]
          const steps = yield* Effect.forEach(names, (name) =>
            Effect.map(providers.get(name), (provider) => ({ provider }))
          )
          return finished(yield* Stream.runCollect(executor.stream(ask(prompt), { steps })))
        })
      )
  },
  {
    name: "Executor.embed",
    facade: false,
    fallback: false,
    cache: false,
    call: (env, prompt) =>
      withServices(
        env,
        Effect.flatMap(Executor, (executor) => executor.embed({ texts: [prompt] }))
      )
  },
  {
    name: "Router.execute",
    facade: false,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      withServices(
        env,
        Effect.flatMap(Router, (router) => Effect.map(router.execute(ask(prompt), domainOf(route)), answered))
      )
  },
  {
    name: "Router.executeWithFallback",
    facade: false,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      withServices(
        env,
        Effect.flatMap(Router, (router) =>
          Effect.map(router.executeWithFallback(ask(prompt), chainOf(route)), answered)
        )
      )
  },
  {
    name: "Router.executeParallelDomains",
    facade: false,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      withServices(
        env,
        Effect.flatMap(Router, (router) =>
          Effect.flatMap(router.executeParallelDomains(ask(prompt), [domainOf(route)], "all"), ([outcome]) =>
            Effect.map(fromResult(outcome!.result), answered)
          )
        )
      )
  },
  {
    name: "Router.hedge",
    facade: false,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      withServices(
        env,
        Effect.flatMap(Router, (router) =>
          Effect.map(router.hedge(ask(prompt), chainOf(route), { after: "1 minute" }), answered)
        )
      )
  },
  {
    name: "Router.stream",
    facade: false,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      withServices(
        env,
        Effect.flatMap(Router, (router) =>
          Effect.map(Stream.runCollect(router.stream(ask(prompt), domainOf(route))), finished)
        )
      )
  },
  {
    name: "Router.embed",
    facade: false,
    fallback: false,
    cache: false,
    call: (env, prompt, route) =>
      withServices(
        env,
        Effect.flatMap(Router, (router) => router.embed({ texts: [prompt] }, domainOf(route)))
      )
  },
  {
    name: "Batch item",
    facade: false,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      withServices(
        env,
        Effect.flatMap(Batch, (batch) =>
          Effect.flatMap(batch.run([{ query: prompt, domain: domainOf(route) }]), (result) =>
            itemOutcome(result.results[0]!)
          )
        )
      )
  },
  {
    name: "Batch item without a domain (the executor's provider, then the batch's fallback)",
    facade: false,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      withServices(
        env,
        Effect.flatMap(Batch, (batch) =>
          Effect.flatMap(batch.run([prompt], route === "chain" ? { fallback: ["spare"] } : {}), (result) =>
            itemOutcome(result.results[0]!)
          )
        )
      )
  },
  {
    name: "facade.execute without a domain (the executor's provider)",
    facade: true,
    fallback: false,
    cache: true,
    call: (env, prompt) =>
      Effect.map(
        fromPromise(() => env.facade!.execute(prompt)),
        answered
      )
  },
  {
    name: "facade.execute",
    facade: true,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      Effect.map(
        fromPromise(() => env.facade!.execute(prompt, { domain: domainOf(route) })),
        answered
      )
  },
  {
    name: "facade.executeWithFallback",
    facade: true,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      Effect.map(
        fromPromise(() => env.facade!.executeWithFallback(prompt, chainOf(route))),
        answered
      )
  },
  {
    name: "facade.executeParallelDomains",
    facade: true,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      Effect.flatMap(
        fromPromise(() => env.facade!.executeParallelDomains(prompt, [domainOf(route)])),
        ([outcome]) => Effect.map(fromResult(outcome!.result), answered)
      )
  },
  {
    name: "facade.hedge",
    facade: true,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      Effect.map(
        fromPromise(() => env.facade!.hedge(prompt, chainOf(route), { after: "1 minute" })),
        answered
      )
  },
  {
    name: "facade.stream",
    facade: true,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      Effect.map(
        fromPromise(() => collect(env.facade!.stream(prompt, { domain: domainOf(route) }))),
        finished
      )
  },
  {
    name: "facade.embed",
    facade: true,
    fallback: false,
    cache: false,
    call: (env, prompt, route) => fromPromise(() => env.facade!.embed(prompt, { domain: domainOf(route) }))
  },
  {
    name: "facade.batch",
    facade: true,
    fallback: true,
    cache: true,
    call: (env, prompt, route) =>
      Effect.flatMap(
        fromPromise(() => env.facade!.batch([{ query: prompt, domain: domainOf(route) }])),
        (result) => itemOutcome(result.results[0]!)
      )
  }
]

/** A failing call on `solo` (a's first outcome fails): with failMax 1, a's breaker opens. */
const trip = (env: Env) =>
  env.facade !== undefined
    ? Effect.flip(fromPromise(() => env.facade!.execute("trip", { domain: "solo" })))
    : Effect.flip(
        withServices(
          env,
          Effect.flatMap(Router, (router) => router.execute(ask("trip"), "solo"))
        )
      )

const reasonOf = (error: Facade.FacadeError) => (error._tag === "ModelError" ? error.reason : error._tag)

for (const entry of entryPoints) {
  describe(`${entry.name}: a domain's policies apply`, () => {
    const route: Route = entry.fallback ? "chain" : "single"

    it.effect(
      entry.fallback
        ? "breaker: an open breaker on the provider hands the call to the next step"
        : "breaker: an open breaker on the provider refuses the call with CircuitOpenError",
      () =>
        Effect.gen(function* () {
          const env = yield* makeEnv(
            entry.facade,
            { script: [Mock.Outcome.fail("Overloaded")] },
            {
              breakers: { failMax: 1, resetTimeout: "1 minute" }
            }
          )
          yield* trip(env)
          assert.strictEqual(yield* env.a.calls, 1)
          const outcome = yield* Effect.result(entry.call(env, "after the trip", route))
          if (entry.fallback) {
            assert.isTrue(Result.isSuccess(outcome), String(Result.isFailure(outcome) && outcome.failure))
            assert.strictEqual(Result.isSuccess(outcome) && outcome.success.provider, env.b.name)
          } else {
            assert.isTrue(Result.isFailure(outcome))
            assert.strictEqual(Result.isFailure(outcome) && outcome.failure._tag, "CircuitOpenError")
          }
          assert.strictEqual(yield* env.a.calls, 1, "the open breaker kept the provider out")
        })
    )

    it.effect(
      entry.fallback
        ? "rate limit: a second call over a limit of 1 per window goes to the next step"
        : "rate limit: a second call over a limit of 1 per window fails RateLimited at once",
      () =>
        Effect.gen(function* () {
          // One request per minute on every provider (b is asked at most once).
          const limited = yield* makeEnv(
            entry.facade,
            {},
            {
              breakers: false,
              rateLimits: { default: { requestsPerMinute: 1 }, maxWait: 0 }
            }
          )
          const first = yield* entry.call(limited, "first", route)
          assert.strictEqual(first.provider, limited.a.name)
          const second = yield* Effect.result(entry.call(limited, "second", route))
          if (entry.fallback) {
            assert.strictEqual(Result.isSuccess(second) && second.success.provider, limited.b.name)
          } else {
            assert.isTrue(Result.isFailure(second))
            if (Result.isFailure(second)) {
              assert.strictEqual(reasonOf(second.failure), "RateLimited")
              assert.isDefined(second.failure._tag === "ModelError" && second.failure.retryAfter)
            }
          }
          assert.strictEqual(yield* limited.a.calls, 1)
        })
    )

    it.effect(
      entry.cache
        ? "cache: a second identical call is answered from the cache without calling the provider"
        : "cache: embeddings are not cached (each call reaches the provider)",
      () =>
        Effect.gen(function* () {
          const env = yield* makeEnv(entry.facade, {}, { cache: { ttl: "1 hour" } })
          const first = yield* entry.call(env, "same question", route)
          const second = yield* entry.call(env, "same question", route)
          assert.strictEqual(first.provider, env.a.name)
          assert.strictEqual(second.provider, env.a.name)
          if (entry.cache) {
            assert.strictEqual(yield* env.a.calls, 1)
            if (second.source !== undefined) assert.strictEqual(second.source, "cache")
          } else {
            assert.strictEqual(yield* env.a.calls, 2)
          }
        })
    )

    it.effect(
      entry.fallback
        ? "fallback: a provider failure that falls back is answered by the next step"
        : "fallback: none by design; the provider's failure is the call's",
      () =>
        Effect.gen(function* () {
          const env = yield* makeEnv(entry.facade, { script: [Mock.Outcome.fail("Overloaded")] }, { breakers: false })
          const outcome = yield* Effect.result(entry.call(env, "q", route))
          if (entry.fallback) {
            assert.strictEqual(Result.isSuccess(outcome) && outcome.success.provider, env.b.name)
          } else {
            assert.strictEqual(Result.isFailure(outcome) && reasonOf(outcome.failure), "Overloaded")
            assert.strictEqual(yield* env.b.calls, 0)
          }
          assert.strictEqual(yield* env.a.calls, 1)
        })
    )
  })
}

// Pipeline steps and HTTP agents go through the same Policy engine; their cases live beside
// them: test/Pipeline.test.ts ("Pipeline.route: ... breaker", "breaker:", "rate limit:",
// "cache:", "fallback:" on a domain step) and test/HttpAgent.test.ts (an agent's breaker,
// rate limit and fallback to the next agent).
