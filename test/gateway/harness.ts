/**
 * A gateway on 127.0.0.1 port 0 over OpenAI-compatible upstreams (loopback servers the
 * test writes with `test/utils/httpServer.ts`), built in the test's scope with a private
 * metric registry, and the official `openai` client pointed at it.
 */
import { Context, Effect, Exit, Layer, Logger, Metric, Redacted, Scope, Tracer } from "effect"
import { type HttpClient, HttpServer } from "effect/http"
import OpenAI from "openai"
import * as CircuitBreaker from "../../src/CircuitBreaker.js"
import type * as Domain from "../../src/Domain.js"
import type * as Executor from "../../src/Executor.js"
import * as Gateway from "../../src/Gateway.js"
import type { ModelProvider } from "../../src/Model.js"
import * as OpenAiCompat from "../../src/Model/OpenAiCompat.js"
import * as Orchestra from "../../src/Orchestra.js"
import * as Prometheus from "../../src/Prometheus.js"
import type * as RateLimit from "../../src/RateLimit.js"
import type * as ResponseCache from "../../src/ResponseCache.js"
import * as UndiciHttpClient from "../../src/UndiciHttpClient.js"

export const UPSTREAM_KEY = "sk-upstream-7c1d9e2f4a6b8c0d-SECRET"

export interface HarnessOptions {
  /** Upstream base URLs (without `/v1`) by provider name. */
  readonly upstreams: Readonly<Record<string, string>>
  readonly domains?: ReadonlyArray<Domain.DomainInput> | undefined
  readonly executor?: Executor.Options | undefined
  readonly breakers?: CircuitBreaker.Options | false | undefined
  readonly rateLimits?: RateLimit.Options | undefined
  readonly cache?: ResponseCache.MemoryOptions | undefined
  readonly gateway?: Gateway.ServeOptions | undefined
  readonly keys?: Gateway.KeyStoreService | undefined
  /** A key store layer (the real one of `gateway/keys`), instead of `keys`. */
  readonly keyLayer?: Layer.Layer<Gateway.KeyStore, unknown> | undefined
  readonly provider?: Partial<OpenAiCompat.Options> | undefined
  /** Providers beside the upstreams' (an in-process model), by name. */
  readonly localProviders?: Readonly<Record<string, Layer.Layer<ModelProvider, unknown>>> | undefined
  /** A tracer for the whole stack (the server's request spans included). */
  readonly tracer?: Tracer.Tracer | undefined
  /** Every log record of the stack (the server's included), as a JSON line, goes here instead of the console. */
  readonly logs?: Array<string> | undefined
}

export interface Harness {
  /** `http://127.0.0.1:<port>` */
  readonly url: string
  readonly gateway: Gateway.Service
  /** An official client with this key (default `sk-client`), no retries. */
  readonly client: (apiKey?: string, options?: { readonly timeout?: number }) => OpenAI
  readonly metrics: Effect.Effect<string>
  readonly registry: Metric.MetricRegistry
  /** Closes the gateway and the manager (drain first). */
  readonly close: Effect.Effect<void>
}

export const make = (options: HarnessOptions): Effect.Effect<Harness, never, Scope.Scope> =>
  Effect.gen(function* () {
    const providers: Record<string, Layer.Layer<ModelProvider, unknown, HttpClient.HttpClient>> = {
      ...Object.fromEntries(
        Object.entries(options.upstreams).map(([name, url]) => [
          name,
          OpenAiCompat.layer({
            baseUrl: `${url}/v1`,
            apiKey: Redacted.make(UPSTREAM_KEY),
            name,
            model: `${name}-model`,
            ...options.provider
          })
        ])
      ),
      ...options.localProviders
    }
    const manager = Orchestra.layer({
      providers,
      domains: options.domains ?? Object.keys(providers).map((name) => ({ name: `d-${name}`, provider: name })),
      executor: options.executor,
      breakers: options.breakers,
      rateLimits: options.rateLimits,
      cache: options.cache
    })
    const logs = options.logs
    const keys =
      options.keyLayer ?? (options.keys === undefined ? undefined : Layer.succeed(Gateway.KeyStore, options.keys))
    const app = Gateway.serve({
      port: 0,
      allowAnonymous: keys === undefined,
      ...options.gateway
    }).pipe(
      Layer.provide(keys ?? Layer.empty),
      Layer.provide(manager),
      Layer.provide(UndiciHttpClient.layer),
      Layer.provide(logs === undefined ? Layer.empty : Logger.layer([Logger.map(Logger.formatJson, record(logs))]))
    )
    const registry: Metric.MetricRegistry = new Map()
    const scope = yield* Scope.make()
    const build = Layer.buildWithScope(app, scope).pipe(Effect.provideService(Metric.MetricRegistry, registry))
    const context = yield* (
      options.tracer === undefined ? build : build.pipe(Effect.provideService(Tracer.Tracer, options.tracer))
    ).pipe(Effect.orDie)
    const close = Scope.close(scope, Exit.void)
    yield* Effect.addFinalizer(() => close)
    const address = Context.get(context, HttpServer.HttpServer).address
    const port = address._tag === "UnixPathAddress" ? 0 : address.port
    const url = `http://127.0.0.1:${port}`
    return {
      url,
      gateway: Context.get(context, Gateway.Gateway),
      client: (apiKey = "sk-client", clientOptions = {}) =>
        new OpenAI({ apiKey, baseURL: `${url}/v1`, maxRetries: 0, timeout: clientOptions.timeout ?? 15_000 }),
      metrics: Effect.sync(() =>
        Prometheus.formatUnsafe(Context.add(Context.empty(), Metric.MetricRegistry, registry) as Context.Context<never>)
      ),
      registry,
      close
    } satisfies Harness
  })

const record =
  (lines: Array<string>) =>
  (line: string): void => {
    lines.push(line)
  }

/** A promise of the client as an Effect; its rejection is the error value. */
export const call = <A>(f: () => Promise<A>): Effect.Effect<A, unknown> =>
  Effect.tryPromise({ try: f, catch: (error) => error })

export { CircuitBreaker }

/** What a test key store saw. */
export interface KeyLog {
  readonly reserved: Array<{
    readonly key: string
    readonly model: string
    readonly inputTokens: number
    readonly maxOutputTokens: number
  }>
  readonly settled: Array<{ readonly id: number; readonly inputTokens: number; readonly outputTokens: number }>
  readonly released: Array<number>
}

/**
 * A key store double: secrets to key contexts; `refuse` decides a reservation's refusal.
 * Records every reservation, settlement and release.
 */
export const keyStore = (
  keys: Readonly<Record<string, Gateway.KeyContext>>,
  refuse: (key: Gateway.KeyContext, model: string) => Gateway.GatewayError | undefined = () => undefined
): { readonly service: Gateway.KeyStoreService; readonly log: KeyLog } => {
  const log: KeyLog = { reserved: [], settled: [], released: [] }
  let next = 0
  const service: Gateway.KeyStoreService = {
    authenticate: (bearer) => {
      if (bearer === undefined) {
        return Effect.fail(Gateway.gatewayError("Unauthorized", "missing API key: send Authorization: Bearer <key>"))
      }
      const found = Object.hasOwn(keys, Redacted.value(bearer)) ? keys[Redacted.value(bearer)] : undefined
      return found === undefined
        ? Effect.fail(Gateway.gatewayError("Unauthorized", "invalid API key"))
        : Effect.succeed(found)
    },
    reserve: (key, model, estimate) =>
      Effect.suspend(() => {
        const refusal = refuse(key, model)
        if (refusal !== undefined) return Effect.fail(refusal)
        log.reserved.push({ key: key.id, model, ...estimate })
        return Effect.succeed({ id: next++ })
      }),
    settle: (reservation, usage) =>
      Effect.sync(() => {
        log.settled.push({ id: (reservation as { id: number }).id, ...usage })
      }),
    release: (reservation) =>
      Effect.sync(() => {
        log.released.push((reservation as { id: number }).id)
      })
  }
  return { service, log }
}

/** An `APIError` of the official client, as plain data. */
export interface ClientError {
  readonly status: number | undefined
  readonly code: string | null | undefined
  readonly type: string | undefined
  readonly param: string | null | undefined
  readonly message: string
  readonly body: unknown
  readonly headers: Headers | undefined
}

export const clientError = (error: unknown): ClientError => {
  if (!(error instanceof OpenAI.APIError)) throw error
  return {
    status: error.status,
    code: error.code,
    type: error.type,
    param: error.param,
    message: error.message,
    body: error.error,
    headers: error.headers as Headers | undefined
  }
}

/** Runs a client call that must fail, as plain data. */
export const failing = <A>(f: () => Promise<A>): Effect.Effect<ClientError> =>
  Effect.matchEffect(call(f), {
    onSuccess: () => Effect.die(new Error("expected the call to fail")),
    onFailure: (error) => Effect.sync(() => clientError(error))
  })

/** Waits (real time, polling every 5 ms, at most 10 s) until `condition` holds; for effects of I/O a test cannot await. */
export const eventually = (condition: () => boolean): Effect.Effect<void> =>
  Effect.promise(async () => {
    for (let i = 0; i < 2000 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 5))
    if (!condition()) throw new Error("condition not met within 10 s")
  })
