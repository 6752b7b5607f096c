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
import { checkBuckets } from "./input/buckets.js"
import { latencyBoundaries } from "./Metrics.js"

/**
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /** Every metric of the registry, not only the library's `orchestra_*` ones. Default false. */
  readonly all?: boolean | undefined
  /**
   * The buckets of the library's latency histograms, `+Inf` counted: `"all"` (default: 176, 175
   * bounds in 10% steps, as the stats read them, and `+Inf`) or `"coarse"` (22: the 21 bounds of
   * {@link coarseBuckets} and `+Inf`, 154 series fewer per histogram). Counts are exact either way:
   * a kept bucket keeps its own `le`.
   */
  readonly buckets?: "all" | "coarse" | undefined
}

/**
 * The `le` bounds (milliseconds) `buckets: "coarse"` keeps of each latency histogram: for each
 * of 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500 ms, 1, 2.5, 5, 10, 30 s, 1, 2, 5 and
 * 10 minutes, the largest of `Metrics.latencyBoundaries` not above it (so `le="9.45296"`, not
 * `"10"`: its count is exact), then `+Inf`.
 *
 * @since 0.3.0
 * @category constants
 */
export const coarseBuckets: ReadonlyArray<number> = [
  0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000,
  600_000
].map((target) => latencyBoundaries.reduce((kept, bound) => (bound <= target ? bound : kept), latencyBoundaries[0]!))

const latencyBounds: ReadonlySet<number> = new Set(latencyBoundaries)
const coarseBounds: ReadonlySet<number> = new Set(coarseBuckets)
// `s`: a label value (a breaker's or rate limit's key) may hold \r, U+2028 or U+2029 as they are,
// which `.` does not match otherwise: that series kept every bucket.
const bucketLine = /^orchestra_\w+_bucket\{(?:.*,)?le="([^"]+)"\} /s

/** Drops the bucket lines of the library's latency histograms that `"coarse"` does not keep. */
const coarsen = (text: string): string =>
  text
    .split("\n")
    .filter((line) => {
      const le = bucketLine.exec(line)?.[1]
      if (le === undefined || le === "+Inf") return true
      const bound = Number(le)
      return !latencyBounds.has(bound) || coarseBounds.has(bound)
    })
    .join("\n")

/**
 * The content type of the Prometheus text format.
 *
 * @since 0.2.0
 * @category constants
 */
export const contentType = "text/plain; version=0.0.4; charset=utf-8"

const prefix = "orchestra_"

/**
 * The issue of a `buckets` option that is neither absent, `"all"` nor `"coarse"`.
 *
 * @internal
 */
export { checkBuckets }

/**
 * The metrics of a context's registry as Prometheus text, synchronously. Throws an
 * `OptionError` naming the field for an unknown option, an `all` other than true or false,
 * or a `buckets` other than `"all"` or `"coarse"`.
 *
 * @since 0.2.0
 * @category formatting
 */
export const formatUnsafe = (context: Context.Context<never>, options?: Options): string => {
  const checked = checkOptions(options)
  if (Result.isFailure(checked)) throw Input.toOptionError(checked.failure)
  return render(context, checked.success)
}

const optionFields: ReadonlySet<string> = new Set(["all", "buckets"])

// Absent options are the defaults; given ones are checked whole, as `layerHttp` checks its own:
// a misspelt `bucket` or an `all: "yes"` was the default in silence. Their fields are read once, into
// the copy that is used: a getter (or a `Proxy` trap) that throws is an issue naming it, not an exception.
const checkOptions = (
  options: unknown,
  fields: ReadonlySet<string> = optionFields,
  whole = "options"
): Input.Checked<HttpOptions> => {
  if (options === undefined) return Result.succeed({})
  const notObject = Input.notAnObject(whole, options)
  if (notObject !== undefined) return Result.fail(notObject)
  const { copy, issue } = Input.readOwnFields(options as object, whole)
  const given = copy as HttpOptions
  const found =
    issue ??
    Input.unknownKey(given, fields) ??
    Input.notABoolean(given, ["all"]) ??
    checkBuckets("buckets", given.buckets)
  return found === undefined ? Result.succeed(given) : Result.fail(found)
}

/** The text, options already checked. */
const render = (context: Context.Context<never>, options: Options): string => {
  const text = formatAll(context, options.all === true)
  return options.buckets === "coarse" ? coarsen(text) : text
}

const formatAll = (context: Context.Context<never>, all: boolean): string => {
  if (all) return PrometheusMetrics.formatUnsafe(context)
  const registry = Context.get(context, Metric.MetricRegistry)
  const ours: Metric.MetricRegistry = new Map()
  for (const [key, metadata] of registry) if (metadata.id.startsWith(prefix)) ours.set(key, metadata)
  return PrometheusMetrics.formatUnsafe(Context.add(context, Metric.MetricRegistry, ours))
}

/**
 * The metrics of the current context's registry as Prometheus text (an option its type rules
 * out dies with an `OptionError` naming it; `layerHttp` fails with it).
 *
 * @since 0.2.0
 * @category formatting
 */
export const format = (options?: Options): Effect.Effect<string> =>
  Effect.flatMap(Effect.context<never>(), (context) => {
    const checked = checkOptions(options)
    // A value its type rules out: a defect naming the field, never the default in silence.
    return Result.isFailure(checked)
      ? Effect.die(Input.toOptionError(checked.failure))
      : Effect.succeed(render(context, checked.success))
  })

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
   * digits, `.` `_` `~` `-` `/`; no query string, no `.` or `..` segment, no trailing `/`), or `"*"` for every `GET`.
   */
  readonly path?: HttpRouter.PathInput | undefined
}

const httpFields: ReadonlySet<string> = new Set(["all", "buckets", "path"])

const checkHttp = (
  options: HttpOptions
): Input.Checked<{ readonly path: HttpRouter.PathInput; readonly given: Options }> =>
  Result.flatMap(checkOptions(options, httpFields, "(options)"), (given) => {
    const path = Input.orDefault(given.path, "/metrics")
    const checked = path === "*" ? Result.succeed(path) : Input.routePath("path", path, "/metrics")
    return Result.map(checked, (path) => ({ path, given }))
  })

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
    Effect.map(Input.orOptionError(checkHttp(options)), ({ path, given }) =>
      HttpRouter.add(
        "GET",
        path,
        Effect.map(format({ all: given.all, buckets: Input.orDefault(given.buckets, "all") }), (body) =>
          HttpServerResponse.text(body, { contentType })
        )
      )
    )
  )
