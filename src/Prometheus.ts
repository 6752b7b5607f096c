/**
 * The library's metrics (`Metrics.ts`: calls, retries, fallbacks, hedges, latencies,
 * breaker states and transitions, cache lookups, rate-limit decisions, agent tasks) in the
 * Prometheus text format, read from the `Metric.MetricRegistry` of the context with
 * `effect/observability`'s `PrometheusMetrics`: a string to print or serve
 * ({@link text}, {@link format}), or a `GET /metrics` route for an `effect/http` router
 * ({@link layerHttp}). The Promise facade offers the same text as `metrics()`.
 *
 * Series appear once something records them: a provider's call series after its first
 * call, a breaker's `orchestra_breaker_state{breaker=...}` after the first call through
 * it. Closing a layer removes its series.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Prometheus from "effect-orchestra/Prometheus"
 *
 * export const printMetrics = Effect.flatMap(Prometheus.text, (text) => Effect.log(text))
 * ```
 *
 * @since 0.2.0
 */
import { Context, Effect, Layer, Metric, Result } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import { PrometheusMetrics } from "effect/observability"
import * as Input from "./Input.js"

/**
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /** Every metric of the registry, not only the library's `orchestra_*` ones. Default false. */
  readonly all?: boolean | undefined
}

/**
 * The content type of the Prometheus text format.
 *
 * @since 0.2.0
 * @category constants
 */
export const contentType = "text/plain; version=0.0.4; charset=utf-8"

const prefix = "orchestra_"

/**
 * The metrics of a context's registry as Prometheus text, synchronously.
 *
 * @since 0.2.0
 * @category formatting
 */
export const formatUnsafe = (context: Context.Context<never>, options: Options = {}): string => {
  if (options.all === true) return PrometheusMetrics.formatUnsafe(context)
  const registry = Context.get(context, Metric.MetricRegistry)
  const ours: Metric.MetricRegistry = new Map()
  for (const [key, metadata] of registry) if (metadata.id.startsWith(prefix)) ours.set(key, metadata)
  return PrometheusMetrics.formatUnsafe(Context.add(context, Metric.MetricRegistry, ours))
}

/**
 * The metrics of the current context's registry as Prometheus text.
 *
 * @since 0.2.0
 * @category formatting
 */
export const format = (options?: Options): Effect.Effect<string> =>
  Effect.map(Effect.context<never>(), (context) => formatUnsafe(context, options))

/**
 * The library's metrics as Prometheus text.
 *
 * @since 0.2.0
 * @category formatting
 */
export const text: Effect.Effect<string> = format()

/**
 * Options of {@link layerHttp}.
 *
 * @since 0.3.0
 * @category models
 */
export interface HttpOptions extends Options {
  /**
   * Path of the route. Default `"/metrics"`. A path such as `"/internal/metrics"` (letters,
   * digits, `.` `_` `~` `-` `/`; no query string, no trailing `/`), or `"*"` for every `GET`.
   */
  readonly path?: HttpRouter.PathInput | undefined
}

const httpFields: ReadonlySet<string> = new Set(["all", "path"])

const checkHttp = (options: HttpOptions): Input.Checked<HttpRouter.PathInput> => {
  const issue =
    Input.notAnObject("(options)", options) ??
    Input.unknownKey(options, httpFields) ??
    Input.notABoolean(options, ["all"])
  if (issue !== undefined) return Result.fail(issue)
  const path = Input.orDefault(options.path, "/metrics")
  return path === "*" ? Result.succeed(path) : Input.routePath("path", path, "/metrics")
}

/**
 * Adds `GET /metrics` (or `path`) to the `HttpRouter`, answering the Prometheus text of the
 * server's context registry. Invalid options fail the layer with an `OptionError` naming the
 * field.
 *
 * @example
 * ```ts
 * import { createServer } from "node:http"
 * import { NodeHttpServer } from "@effect/platform-node"
 * import { Layer } from "effect"
 * import { HttpRouter } from "effect/http"
 * import * as Prometheus from "effect-orchestra/Prometheus"
 *
 * export const metricsServer = HttpRouter.serve(Prometheus.layerHttp()).pipe(
 *   Layer.provide(NodeHttpServer.layer(createServer, { port: 9464 }))
 * )
 * ```
 *
 * @since 0.2.0
 * @category layers
 */
export const layerHttp = (options: HttpOptions = {}): Layer.Layer<never, Input.OptionError, HttpRouter.HttpRouter> =>
  Layer.unwrap(
    Effect.map(Input.orOptionError(checkHttp(options)), (path) =>
      HttpRouter.add(
        "GET",
        path,
        Effect.map(format({ all: options.all }), (body) => HttpServerResponse.text(body, { contentType }))
      )
    )
  )
