/**
 * The gateway's options and their checks: every number and duration through `Input.ts`
 * (an `OptionError` naming the field), every path a route path, unknown fields refused.
 *
 * @internal
 */
import { Duration, Redacted, Result } from "effect"
import type { Options } from "../Gateway.js"
import * as Input from "../Input.js"
import { checkBuckets } from "../input/buckets.js"
import { decodeRetry, type RetryPolicy } from "../Policy.js"
import { hash } from "./keys/secret.js"

/**
 * The options after their checks.
 *
 * @internal
 */
export interface Resolved {
  readonly prefix: `/${string}` | ""
  readonly maxBodyBytes: number
  readonly providerModels: boolean
  /** `"executor"`: the executor's own policy. */
  readonly retry: RetryPolicy | false | "executor"
  readonly defaultMaxTokens: number
  readonly stream: {
    readonly firstChunkTimeout: Duration.Duration | "none" | undefined
    readonly idleTimeout: Duration.Duration | "none" | undefined
    readonly totalTimeout: Duration.Duration | "none" | undefined
  }
  readonly drainTimeout: Duration.Duration
  readonly drainDelay: Duration.Duration
  readonly metricsPath: `/${string}` | undefined
  /** The SHA-256 (hex) of the token `metricsPath` needs, `undefined` for an open route: the token itself is not kept. */
  readonly metricsTokenSha256: string | undefined
  readonly metricsBuckets: "all" | "coarse"
  readonly livePath: `/${string}` | undefined
  readonly readyPath: `/${string}` | undefined
  readonly allowAnonymous: boolean
  readonly provenanceHeaders: boolean
}

const streamKeys: ReadonlySet<string> = new Set(["firstChunkTimeout", "idleTimeout", "totalTimeout"])
const known: ReadonlySet<string> = new Set([
  "prefix",
  "maxBodyBytes",
  "providerModels",
  "retry",
  "defaultMaxTokens",
  "stream",
  "drainTimeout",
  "drainDelay",
  "metricsPath",
  "metricsToken",
  "metricsBuckets",
  "healthPaths",
  "allowAnonymous",
  "provenanceHeaders"
])

// `""`: the OpenAI routes at the root.
const routePrefix = (field: string, input: unknown): Input.Checked<`/${string}` | ""> =>
  input === "" ? Result.succeed("") : Input.routePath(field, input, "/v1")

// The default shows what a good path looks like.
const optionalPath = (field: string, input: unknown, fallback: `/${string}`) =>
  input === false ? Result.succeed(undefined) : Input.routePath(field, Input.orDefault(input, fallback), fallback)

const deadline = (field: string, input: Duration.Input | "none" | undefined) =>
  input === undefined || input === "none" ? Result.succeed(input) : Input.duration(field, input)

// What `Authorization: Bearer <token>` carries as sent: Node reads header bytes as latin1, and a
// space would split the token. A check naming the value would print the secret: none does.
const visibleAscii = /^[\x21-\x7e]+$/

const metricsToken = (
  field: string,
  input: unknown,
  metricsPath: `/${string}` | undefined
): Input.Checked<string | undefined> => {
  if (input === undefined) return Result.succeed(undefined)
  const fail = (message: string) => Result.fail({ path: field, message })
  if (!Redacted.isRedacted(input)) return fail("expected a Redacted token (Redacted.make, Config.Redacted)")
  const token = Redacted.value(input)
  if (typeof token !== "string") return fail("expected a Redacted token (Redacted.make, Config.Redacted)")
  if (metricsPath === undefined) return fail("there is no metrics route to protect (metricsPath: false)")
  if (token.trim() === "") return fail("expected a token, got an empty one")
  if (!visibleAscii.test(token)) {
    return fail("expected visible ASCII characters only, without spaces or line breaks (it is sent in a header)")
  }
  return token.length >= 16 ? Result.succeed(hash(token)) : fail("expected a token of at least 16 characters")
}

const boolean = (field: string, input: unknown, fallback: boolean): Input.Checked<boolean> =>
  input === undefined
    ? Result.succeed(fallback)
    : typeof input === "boolean"
      ? Result.succeed(input)
      : Result.fail({ path: field, message: `expected true or false, got ${Input.kindOf(input)}` })

// A section with many wrong fields (unknown ones, say) tells the first of them, and counts the rest.
const maxIssues = 20

/** One issue telling all of `issues` (the first, the others found with it): one alone reads as it always did. */
const together = (issues: ReadonlyArray<Input.Issue>): Input.Issue => {
  const [first, ...rest] = issues
  if (rest.length === 0) return first!
  const others = [
    ...(first!.others?.shown ?? []),
    ...rest.flatMap((issue) => [{ path: issue.path, message: issue.message }, ...(issue.others?.shown ?? [])])
  ]
  const uncounted = issues.reduce((sum, issue) => sum + (issue.others?.unshown ?? 0), 0)
  const shown = others.slice(0, maxIssues - 1)
  return { ...first!, others: { shown, unshown: others.length - shown.length + uncounted } }
}

/** The values of `checks`, or `undefined` when one failed: each failure is added to `issues`. */
const each = <const T extends ReadonlyArray<Input.Checked<unknown>>>(
  issues: Array<Input.Issue>,
  checks: T
): { -readonly [K in keyof T]: T[K] extends Input.Checked<infer A> ? A : never } | undefined => {
  const values: Array<unknown> = []
  for (const check of checks) {
    if (Result.isFailure(check)) issues.push(check.failure)
    else values.push(check.success)
  }
  return values.length === checks.length ? (values as never) : undefined
}

/**
 * The first of `paths` (field, path) that is an earlier one's or a path of the OpenAI routes under `prefix` (a model's
 * `{prefix}/models/{id}` included): the router refuses a route declared twice with a defect, and a static path under
 * `{prefix}/models/` would answer for that model.
 */
const collides = (
  prefix: string,
  paths: ReadonlyArray<readonly [string, `/${string}` | undefined]>
): Input.Issue | undefined => {
  const taken = new Map<string, string>()
  for (const [field, path] of paths) {
    if (path === undefined) continue
    const earlier = taken.get(path)
    if (earlier !== undefined)
      return { path: field, message: `expected a path of its own, got "${path}", ${earlier}'s` }
    if (
      path === `${prefix}/chat/completions` ||
      path === `${prefix}/embeddings` ||
      path === `${prefix}/models` ||
      path.startsWith(`${prefix}/models/`)
    ) {
      return { path: field, message: `expected a path of its own, got "${path}", a path of the OpenAI routes` }
    }
    taken.set(path, field)
  }
  return undefined
}

/**
 * Checks the options; every wrong field is named: the `OptionError` names the first, and tells
 * the others found with it (a gateway file's `gateway` section is said with the file's other mistakes).
 *
 * @internal
 */
export const check = (options: Options, at = ""): Input.Checked<Resolved> => {
  const p = (field: string) => `${at}${field}`
  if (typeof options !== "object" || options === null)
    return Result.fail({ path: p("(options)"), message: "expected an object" })
  const issues: Array<Input.Issue> = Input.misspeltKeys(options, known, at)
  // A field of the wrong shape is told once: what is under it is not read.
  let health = options.healthPaths
  if (health !== undefined && health !== false && (typeof health !== "object" || health === null)) {
    issues.push({ path: p("healthPaths"), message: "expected { live, ready } or false" })
    health = undefined
  }
  let stream = options.stream ?? {}
  if (options.stream !== undefined && (typeof options.stream !== "object" || options.stream === null)) {
    issues.push({ path: p("stream"), message: "expected { firstChunkTimeout, idleTimeout, totalTimeout }" })
    stream = {}
  }
  const buckets = checkBuckets(p("metricsBuckets"), options.metricsBuckets)
  if (buckets !== undefined) issues.push(buckets)
  else if (options.metricsBuckets !== undefined && options.metricsPath === false) {
    issues.push({ path: p("metricsBuckets"), message: "there is no metrics route (metricsPath: false)" })
  }
  for (const issue of Input.misspeltKeys(stream, streamKeys, p("stream."))) issues.push(issue)
  const retry: Input.Checked<RetryPolicy | false | undefined> =
    options.retry === false
      ? Result.succeed(false)
      : options.retry === undefined || options.retry === true
        ? Result.succeed(undefined)
        : decodeRetry(options.retry, p("retry"))
  const metricsPath = optionalPath(p("metricsPath"), options.metricsPath, "/metrics")
  const values = each(issues, [
    routePrefix(p("prefix"), Input.orDefault(options.prefix, "/v1")),
    Input.int(p("maxBodyBytes"), Input.orDefault(options.maxBodyBytes, 4 * 1024 * 1024), {
      min: 1024,
      max: 1024 * 1024 * 1024
    }),
    boolean(p("providerModels"), options.providerModels, true),
    retry,
    Input.positiveInt(p("defaultMaxTokens"), Input.orDefault(options.defaultMaxTokens, 4096), 1_000_000),
    deadline(p("stream.firstChunkTimeout"), stream.firstChunkTimeout),
    deadline(p("stream.idleTimeout"), stream.idleTimeout),
    deadline(p("stream.totalTimeout"), stream.totalTimeout),
    Input.duration(p("drainTimeout"), Input.orDefault(options.drainTimeout, Duration.seconds(10)), {
      allowZero: true
    }),
    Input.duration(p("drainDelay"), Input.orDefault(options.drainDelay, Duration.zero), { allowZero: true }),
    metricsPath,
    optionalPath(p("healthPaths.live"), health === false ? false : health?.live, "/healthz"),
    optionalPath(p("healthPaths.ready"), health === false ? false : health?.ready, "/readyz"),
    boolean(p("allowAnonymous"), options.allowAnonymous, false),
    boolean(p("provenanceHeaders"), options.provenanceHeaders, true)
  ])
  // After the paths: a token needs a metrics route (a wrong one leaves the token unchecked).
  const metricsTokenSha256 = Result.isSuccess(metricsPath)
    ? metricsToken(p("metricsToken"), options.metricsToken, metricsPath.success)
    : Result.succeed(undefined)
  if (Result.isFailure(metricsTokenSha256)) issues.push(metricsTokenSha256.failure)
  if (values === undefined || Result.isFailure(metricsTokenSha256) || issues.length > 0) {
    return Result.fail(together(issues))
  }
  const [
    prefix,
    maxBodyBytes,
    providerModels,
    retryPolicy,
    defaultMaxTokens,
    firstChunkTimeout,
    idleTimeout,
    totalTimeout,
    drainTimeout,
    drainDelay,
    metricsPathChecked,
    livePath,
    readyPath,
    allowAnonymous,
    provenanceHeaders
  ] = values
  const collision = collides(prefix, [
    [p("healthPaths.live"), livePath],
    [p("healthPaths.ready"), readyPath],
    [p("metricsPath"), metricsPathChecked]
  ])
  if (collision !== undefined) return Result.fail(collision)
  return Result.succeed({
    prefix,
    maxBodyBytes,
    providerModels,
    retry: retryPolicy ?? "executor",
    defaultMaxTokens,
    stream: { firstChunkTimeout, idleTimeout, totalTimeout },
    drainTimeout,
    drainDelay,
    metricsPath: metricsPathChecked,
    metricsTokenSha256: metricsTokenSha256.success,
    metricsBuckets: Input.orDefault(options.metricsBuckets, "all"),
    livePath,
    readyPath,
    allowAnonymous,
    provenanceHeaders
  })
}
