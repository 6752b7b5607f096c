/**
 * The options every HTTP provider takes (deadlines, body bounds, client middleware), their
 * checks at layer build, and small config helpers.
 *
 * @since 0.2.0
 */
import { Config, type Duration, Option, Redacted, Result } from "effect"
import type { HttpClient } from "effect/http"
import * as Input from "../../Input.js"

/**
 * Deadlines, bounds and middleware shared by every HTTP provider.
 *
 * @since 0.2.0
 * @category models
 */
export interface Options {
  /**
   * Bound of one `generate` or `embed` call, from sending the request to the last byte of
   * the answer (`TimeoutError` limit `request`). Default 10 minutes.
   */
  readonly timeout?: Input.DurationInput | undefined
  /**
   * Longest wait for the next event of a stream, the first one included (`TimeoutError`
   * limit `idle`). SSE comments (keep-alive pings) do not count as events. Default 60 seconds.
   */
  readonly streamIdleTimeout?: Input.DurationInput | undefined
  /** Bound of a JSON answer's body, and of all the bytes of one stream. Default 32 MiB. */
  readonly maxResponseBytes?: number | undefined
  /** Bound of one SSE event or NDJSON line. Default 8 MiB (never more than `maxResponseBytes`). */
  readonly maxEventBytes?: number | undefined
  /**
   * Middleware for the provider's `HttpClient` (a proxy, logging, retries of your own):
   * applied once, when the layer is built.
   *
   * The provider's key headers (`authorization`, `x-goog-api-key`, `api-key`, `x-api-key`, a
   * `headers` entry given `Redacted`) never leave for another origin than the request's: a
   * response redirecting elsewhere fails the call (`ModelError`, the 3xx status) even when the
   * middleware follows redirects (`HttpClient.followRedirects` drops only `authorization`,
   * `proxy-authorization` and `cookie`). A redirect within the origin is followed. A middleware
   * that points the request at a proxy (`HttpClient.mapRequest(...)` changing its URL) sends the
   * keys there, by choice: the origin is the one the request reaches the wire with.
   */
  readonly transformClient?: ((client: HttpClient.HttpClient) => HttpClient.HttpClient) | undefined
}

/**
 * {@link Options} checked, with the defaults filled in.
 *
 * @since 0.2.0
 * @category models
 */
export interface Settings {
  readonly timeout: Duration.Duration
  readonly streamIdleTimeout: Duration.Duration
  readonly maxResponseBytes: number
  readonly maxEventBytes: number
}

/**
 * The defaults of {@link Options}.
 *
 * @since 0.2.0
 * @category constants
 */
export const defaults = {
  timeout: "10 minutes",
  streamIdleTimeout: "60 seconds",
  maxResponseBytes: 32 * 1024 * 1024,
  maxEventBytes: 8 * 1024 * 1024
} as const

/**
 * Checks the shared options (durations above zero, byte bounds positive integers), filling
 * in the defaults.
 *
 * @since 0.2.0
 * @category checks
 */
export const settings = (options: Options): Input.Checked<Settings> =>
  Result.map(
    Input.all([
      Input.duration("timeout", Input.orDefault(options.timeout, defaults.timeout)),
      Input.duration("streamIdleTimeout", Input.orDefault(options.streamIdleTimeout, defaults.streamIdleTimeout)),
      Input.positiveInt("maxResponseBytes", Input.orDefault(options.maxResponseBytes, defaults.maxResponseBytes)),
      Input.positiveInt("maxEventBytes", Input.orDefault(options.maxEventBytes, defaults.maxEventBytes)),
      options.transformClient === undefined || typeof options.transformClient === "function"
        ? Result.succeed(undefined)
        : Result.fail({
            path: "transformClient",
            message: `expected a function, got ${Input.kindOf(options.transformClient)}`
          })
    ]),
    ([timeout, streamIdleTimeout, maxResponseBytes, maxEventBytes]) => ({
      timeout,
      streamIdleTimeout,
      maxResponseBytes,
      maxEventBytes: Math.min(maxEventBytes, maxResponseBytes)
    })
  )

const sharedKeys: { readonly [K in keyof Options]-?: true } = {
  timeout: true,
  streamIdleTimeout: true,
  maxResponseBytes: true,
  maxEventBytes: true,
  transformClient: true
}

/**
 * A check that a provider's options are an object holding only the keys it reads (its own,
 * every one listed in `keys`, which the compiler holds to its options type, and the shared
 * {@link Options}): `null` options are refused naming `options` instead of failing with a
 * `TypeError`, and a misspelt key (`embedingModel`) naming it instead of leaving its default
 * in place unseen.
 *
 * @since 0.3.0
 * @category checks
 */
export const knownKeys = <O extends Options>(
  keys: {
    readonly [K in Exclude<keyof O, keyof Options>]-?: true
  }
): ((options: unknown) => Input.Checked<void>) => {
  const known: ReadonlySet<string> = new Set([...Object.keys(keys), ...Object.keys(sharedKeys)])
  return (options) => {
    let issue: Input.Issue | undefined
    try {
      issue = Input.notAnObject("options", options) ?? Input.unknownKey(options as object, known)
    } catch (error) {
      // A `Proxy` whose trap throws: the options' issue, not a defect of the layer.
      issue = { path: "options", message: `listing its fields threw: ${Input.thrownMessage(error)}`, cause: error }
    }
    return issue === undefined ? Result.succeed(undefined) : Result.fail(issue)
  }
}

// A URL option as a refusal shows it, which may hold a secret it should not (`http//user:pw@host`, `?api_key=`,
// or a key given where the URL belongs): what sits before an `@`, the value of a query parameter named like a
// credential, and any run of 24 or more token characters (a key, a JWT's part) are masked, then bounded.
const secretParam = /([?&;][^=&#;]*(?:key|token|secret|passw|pwd|sig|auth|credential|session|code)[^=&#;]*=)[^&#;]*/gi
// Masked over its first 1,000 characters only, a bound of the patterns' work (a megabyte of `?key` took minutes):
// past the 80 that are shown, nothing is written out but the length.
const MASKED_CHARS = 1_000
const maskedUrl = (text: string): string => {
  const head = text
    .slice(0, MASKED_CHARS)
    .replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)?.*@/s, "$1***@")
    .replace(secretParam, "$1***")
    .replace(/[A-Za-z0-9_\-+=~]{24,}/g, "***")
  return text.length <= MASKED_CHARS
    ? Input.shown(head)
    : `${JSON.stringify(Input.wholePrefix(head, 80))}… (${text.length.toLocaleString("en-US")} characters)`
}

/**
 * Checks a base URL: it parses, and its scheme is `http` or `https`. Gives it without
 * trailing slashes. Credentials in it (`http://user:pass@host/`) are refused, never
 * repeated: they would land in logs, spans and error messages; `instead` says where they go
 * (default: the `apiKey` option).
 *
 * @since 0.2.0
 * @category checks
 */
export const baseUrl = (
  path: string,
  input: unknown,
  instead = "give the key as the apiKey option instead (apiKeyEnv in the CLI's config)"
): Input.Checked<string> => {
  if (typeof input !== "string" || input.trim().length === 0) {
    return Result.fail({
      path,
      message: `expected a URL such as "http://127.0.0.1:8080/v1", got ${Input.kindOf(input)}`
    })
  }
  let url: URL
  try {
    url = new URL(input.trim())
  } catch {
    return Result.fail({
      path,
      message: `expected a URL such as "http://127.0.0.1:8080/v1", got ${maskedUrl(input.trim())}`
    })
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    // `localhost:8080` parses, as the scheme `localhost:`: the whole value shows what is missing.
    return Result.fail({ path, message: `expected an http or https URL, got ${maskedUrl(input.trim())}` })
  }
  if (url.username !== "" || url.password !== "") {
    return Result.fail({
      path,
      message: `credentials in the URL are refused (they would land in logs and spans): ${instead}`
    })
  }
  return Result.succeed(input.trim().replace(/\/+$/, ""))
}

// 0.0.0.0 and :: reach this machine as a destination (the ollama CLI's `OLLAMA_HOST=0.0.0.0`): no network either.
// The hostname is WHATWG's, already normalized: `127.1` and `2130706433` read as 127.0.0.1, `[0:0::1]` as `[::1]`,
// and an IPv4-mapped address (`[::ffff:127.0.0.1]`) as hex groups, `[::ffff:7f00:1]`. `localhost.` is the
// fully-qualified `localhost`.
const ipv4Loopback = /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/
const mappedLoopback = /^\[::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}\]$/
const isLoopbackHost = (hostname: string): boolean => {
  const host = hostname.toLowerCase()
  return (
    host === "localhost" ||
    host === "localhost." ||
    host === "[::1]" ||
    host === "0.0.0.0" ||
    host === "[::]" ||
    host === "[::ffff:0:0]" ||
    ipv4Loopback.test(host) ||
    mappedLoopback.test(host)
  )
}

/**
 * For a checked URL a secret is sent to (a key, a bearer token): plain `http` is refused unless
 * its host is a loopback address (127.0.0.0/8, also mapped into IPv6 as `[::ffff:127.0.0.1]`,
 * `::1`, `localhost`, or `0.0.0.0`), where nothing crosses a network; elsewhere the secret would travel in clear text. The message names the
 * URL's host and the `allowPlainHttpSecrets` option that allows it.
 *
 * @since 0.3.0
 * @category checks
 */
export const secretUrl = (path: string, url: string): Input.Checked<string> => {
  const parsed = new URL(url)
  return parsed.protocol === "http:" && !isLoopbackHost(parsed.hostname)
    ? Result.fail({
        path,
        message: `plain http is refused off loopback (the credentials would travel in clear text): use https, got ${parsed.protocol}//${parsed.host} (allowPlainHttpSecrets: true sends them, for a network of the application's own)`
      })
    : Result.succeed(url)
}

/**
 * For a provider whose secrets (an API key, a `Redacted` header) go to a checked `url`: the
 * first secret given (`secrets`, each its option's path and value, in order) is refused on
 * plain `http` off loopback (see {@link secretUrl}), naming its option and the URL's host,
 * unless `allowPlainHttpSecrets` is true (a checked boolean: anything else is refused naming it).
 * Gives the URL back.
 *
 * @since 0.3.0
 * @category checks
 */
export const plainHttpSecrets = (
  url: string,
  secrets: ReadonlyArray<readonly [path: string, value: unknown]>,
  allowPlainHttpSecrets: unknown
): Input.Checked<string> => {
  if (allowPlainHttpSecrets !== undefined && typeof allowPlainHttpSecrets !== "boolean") {
    return Result.fail({
      path: "allowPlainHttpSecrets",
      message: `expected true or false, got ${Input.shown(allowPlainHttpSecrets)}`
    })
  }
  if (allowPlainHttpSecrets === true) return Result.succeed(url)
  const secret = secrets.find(([, value]) => Redacted.isRedacted(value))
  return secret === undefined ? Result.succeed(url) : secretUrl(secret[0], url)
}

/**
 * The `Redacted` entries of a `headers` option as {@link plainHttpSecrets} reads them.
 *
 * @since 0.3.0
 * @category checks
 */
export const secretHeaders = (given: HeadersOption): ReadonlyArray<readonly [string, unknown]> =>
  Object.keys(given).map((name) => [headerPath("headers", name), given[name]] as const)

/**
 * {@link baseUrl} for a URL the provider appends API paths to ({@link joinUrl}): a query or a
 * fragment is refused too, since every path would land inside it (`/v1?k=x/chat/completions`).
 *
 * @since 0.3.0
 * @category checks
 */
export const rootUrl = (path: string, input: unknown): Input.Checked<string> =>
  Result.flatMap(baseUrl(path, input), (url) =>
    /[?#]/.test(url)
      ? Result.fail({ path, message: "a query or fragment is refused: the API's paths are appended to this URL" })
      : Result.succeed(url)
  )

/**
 * Checks a non-empty string option (a provider name, a model id).
 *
 * @since 0.2.0
 * @category checks
 */
export const nonEmpty = (path: string, input: unknown): Input.Checked<string> =>
  typeof input === "string" && input.trim().length > 0 && input.trim() === input
    ? Result.succeed(input)
    : Result.fail({
        path,
        message: `expected a non-empty string without surrounding spaces, got ${Input.shown(input)}`
      })

// RFC 9110: a field name is a token; a value holds tab, visible ASCII and obs-text bytes only
// (no CR, LF or NUL, so no header can be injected), as undici checks it at each request.
const headerName = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const headerValue = /^[\t\x20-\x7e\x80-\xff]*$/
const notToken = /[^!#$%&'*+\-.^_`|~0-9A-Za-z]/

// A header name as paths and messages write it, bounded. A name that is no token is often a header line pasted whole
// (`Authorization: Bearer sk-...`): it is cut at its first colon, and a run of 24 or more token characters (a key)
// is masked, so that no secret given there is written out.
const shownName = (name: string): string => {
  if (!notToken.test(name)) return Input.shown(name)
  const colon = name.indexOf(":")
  const kept = (colon === -1 ? name : name.slice(0, colon)).replace(/[A-Za-z0-9_\-+=~./]{24,}/g, "***")
  return colon === -1 ? Input.shown(kept) : `${Input.shown(kept)}…`
}

// The path of a header entry of the option at `path` (`headers["x-team"]`).
const headerPath = (path: string, name: string): string => `${path}[${shownName(name)}]`
// Connection-level headers undici refuses on every request; `connection` only takes these values.
const clientHeaders: ReadonlySet<string> = new Set(["transfer-encoding", "keep-alive", "upgrade", "expect"])
const connectionValues: ReadonlySet<string> = new Set(["close", "keep-alive"])

/**
 * Checks a header for a request: its name is an HTTP token and not one the HTTP client sets
 * itself (`transfer-encoding`, `keep-alive`, `upgrade`, `expect`, `connection` other than
 * `close` or `keep-alive`), and its value holds no control character (CR, LF, NUL...) or
 * character above U+00FF. Checked when the layer is built, so that a bad header is an
 * `OptionError` naming it instead of a failure of every call. The value is never quoted (it
 * may be a secret).
 *
 * @since 0.3.0
 * @category checks
 */
export const header = (path: string, name: string, value: string): Input.Checked<void> => {
  if (!headerName.test(name)) {
    const bad = name.search(notToken)
    return Result.fail({
      path,
      message:
        bad === -1
          ? "an empty header name is not a valid one (an HTTP token)"
          : `${shownName(name)} is not a valid header name (an HTTP token): ${JSON.stringify(name[bad])} at character ${bad + 1}`
    })
  }
  const lower = name.toLowerCase()
  if (clientHeaders.has(lower) || (lower === "connection" && !connectionValues.has(value.trim().toLowerCase()))) {
    return Result.fail({ path, message: `${shownName(name)} is set by the HTTP client, not by a request` })
  }
  if (!headerValue.test(value)) {
    return Result.fail({
      path,
      message: "a header value cannot hold control characters (CR, LF, NUL...) or characters above U+00FF"
    })
  }
  return Result.succeed(undefined)
}

/**
 * Checks an optional API key sent as a bearer token: absent (no `Authorization` header), or a
 * `Redacted` key that is not empty or blank. A key variable set but empty (`env`) would go as
 * `Bearer `, refused at every call; a server without keys wants the key absent, not blank.
 *
 * @since 0.3.0
 * @category checks
 */
export const optionalBearerKey = (path: string, env: string, input: unknown): Input.Checked<void> => {
  if (input === undefined) return Result.succeed(undefined)
  if (!Redacted.isRedacted(input)) {
    return Result.fail({ path, message: "expected a Redacted value (Redacted.make(key) or Config.Redacted)" })
  }
  const key = Redacted.value(input)
  if (typeof key === "string" && key.trim().length === 0) {
    return Result.fail({
      path,
      message: `expected a non-empty key (is ${env} set but empty? unset it for a server without keys)`
    })
  }
  return headerOption(path, "authorization", input)
}

/**
 * Checks an option sent as a header: absent, a string or a `Redacted` one; anything else
 * (`null`, a number) is an issue naming the option, not a header of its `String()`.
 *
 * @since 0.3.0
 * @category checks
 */
export const headerOption = (path: string, name: string, input: unknown): Input.Checked<void> => {
  if (input === undefined) return Result.succeed(undefined)
  const value = Redacted.isRedacted(input) ? Redacted.value(input) : input
  // Anything else would be sent as its String(): `organization: 5` as "5", `project: null` as "null".
  return typeof value === "string"
    ? header(path, name, value)
    : Result.fail({ path, message: `expected a string, got ${Input.kindOf(value)}` })
}

/**
 * {@link headerOption} for a header that an empty value makes meaningless (`OpenAI-Organization`):
 * an empty or blank one, the variable `env` set but empty, is refused instead of sent as an empty
 * header on every call.
 *
 * @since 0.3.0
 * @category checks
 */
export const nonBlankHeaderOption = (path: string, env: string, name: string, input: unknown): Input.Checked<void> => {
  const value = Redacted.isRedacted(input) ? Redacted.value(input) : input
  return typeof value === "string" && value.trim().length === 0
    ? Result.fail({ path, message: `expected a non-empty value (is ${env} set but empty? unset it to send none)` })
    : headerOption(path, name, input)
}

/**
 * A provider's `headers` option: each value a string, or a `Redacted` one for a header that
 * carries a secret (Azure's `api-key`, a proxy's token).
 *
 * @since 0.3.0
 * @category models
 */
export type HeadersOption = Readonly<Record<string, string | Redacted.Redacted<string>>>

/**
 * A checked `headers` option.
 *
 * @since 0.3.0
 * @category models
 */
export interface HeaderSet {
  /** Every header as sent. */
  readonly values: Readonly<Record<string, string>>
  /**
   * Every header as given, `Redacted` values still redacted: for a holder that shows its headers
   * (an HTTP agent), and reveals them only when it builds a request.
   *
   * @since 0.3.0
   */
  readonly given: HeadersOption
  /** The `Redacted` values (and the credentials of a `Bearer <token>` one): scrubbed from every error. */
  readonly secrets: ReadonlyArray<Redacted.Redacted>
  /** The names of the `Redacted` headers (lowercase): rendered redacted when middleware logs a request. */
  readonly secretNames: ReadonlyArray<string>
}

// `a Map`, `a Headers`: the class of an iterable given where a plain object belongs, when it has a plain name.
const iterableKind = (input: object): string => {
  const name: unknown = (input as { readonly constructor?: { readonly name?: unknown } }).constructor?.name
  return typeof name === "string" && /^[A-Za-z_$][\w$]{0,40}$/.test(name) ? `a ${name}` : "an iterable object"
}

/**
 * Checks a `headers` option, a provider's or an HTTP agent's (an object of strings or
 * `Redacted` strings; see {@link header}).
 *
 * @since 0.3.0
 * @category checks
 */
export const headers = (path: string, input: unknown): Input.Checked<HeaderSet> => {
  if (input === undefined) return Result.succeed({ values: {}, given: {}, secrets: [], secretNames: [] })
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    return Result.fail({ path, message: `expected an object of header names to strings, got ${Input.kindOf(input)}` })
  }
  const values: Record<string, string> = {}
  const given: Record<string, string | Redacted.Redacted<string>> = {}
  const secrets: Array<Redacted.Redacted> = []
  const secretNames: Array<string> = []
  // Read once, each in turn: a getter (or `Proxy` trap) that throws is an issue naming the header, not a defect.
  let names: ReadonlyArray<string>
  try {
    // A `Map` or a fetch `Headers` holds its entries where `Object.keys` does not look: they would all be dropped, unsaid.
    if (Symbol.iterator in input) {
      return Result.fail({
        path,
        message: `expected an object of header names to strings, got ${iterableKind(input)} (give Object.fromEntries(...) of it)`
      })
    }
    names = Object.keys(input)
  } catch (error) {
    return Result.fail({ path, message: `listing its headers threw: ${Input.thrownMessage(error)}`, cause: error })
  }
  // Names are not case-sensitive: of `X-Team` and `x-team`, the request would carry one, the other dropped unsaid.
  const lower = new Map<string, string>()
  for (const name of names) {
    const at = headerPath(path, name)
    const same = lower.get(name.toLowerCase())
    if (same !== undefined) {
      return Result.fail({
        path: at,
        message: `the header ${shownName(same)} is given already (names are not case-sensitive)`
      })
    }
    lower.set(name.toLowerCase(), name)
    let entry: unknown
    try {
      entry = (input as Record<string, unknown>)[name]
    } catch (error) {
      return Result.fail({ path: at, message: `reading it threw: ${Input.thrownMessage(error)}`, cause: error })
    }
    const value: unknown = Redacted.isRedacted(entry) ? Redacted.value(entry) : entry
    if (typeof value !== "string") {
      return Result.fail({ path: at, message: `expected a string or a Redacted string, got ${Input.kindOf(value)}` })
    }
    const checked = header(at, name, value)
    if (Result.isFailure(checked)) return Result.fail(checked.failure)
    values[name] = value
    if (Redacted.isRedacted(entry)) {
      const secret = entry as Redacted.Redacted<string>
      given[name] = secret
      secrets.push(secret)
      secretNames.push(name.toLowerCase())
      // "Bearer <token>": a server that echoes the token alone must not leak it either.
      const credentials = /^\S+\s+(\S{4,})$/.exec(value)?.[1]
      if (credentials !== undefined) secrets.push(Redacted.make(credentials))
    } else {
      given[name] = value
    }
  }
  return Result.succeed({ values, given, secrets, secretNames })
}

// Set by the provider on each request: `accept` from the answer it reads (JSON, or an event stream),
// `content-type` and `content-length` from its body.
const requestHeaders: ReadonlySet<string> = new Set(["accept", "content-type", "content-length"])

/**
 * A `headers` entry naming a header the provider sets: one it sets on every request (`accept`,
 * `content-type`, `content-length`), or one it sets from one of its options (`authorization`
 * from `apiKey`). Refused naming the entry (and the option), since the request would carry the
 * provider's and drop the one given, unsaid. `owned` lists each header name (lowercase) with
 * its option, only for the options given.
 *
 * @since 0.3.0
 * @category checks
 */
export const ownedHeaders = (
  path: string,
  given: HeadersOption,
  owned: ReadonlyArray<readonly [header: string, option: string]>
): Input.Checked<void> => {
  for (const name of Object.keys(given)) {
    if (requestHeaders.has(name.toLowerCase())) {
      return Result.fail({
        path: headerPath(path, name),
        message: "the provider sets this header on each request, from what it sends and reads: leave it out"
      })
    }
    const option = owned.find(([header]) => header === name.toLowerCase())?.[1]
    if (option !== undefined) {
      return Result.fail({
        path: headerPath(path, name),
        message: `the ${option} option sets this header: give it there, not twice`
      })
    }
  }
  return Result.succeed(undefined)
}

/**
 * Joins a base URL and a path with exactly one slash.
 *
 * @since 0.2.0
 * @category utils
 */
export const joinUrl = (base: string, path: string): string => `${base.replace(/\/+$/, "")}/${path.replace(/^\/+/, "")}`

/**
 * An optional secret from `Config`: absent is `undefined`, present is `Redacted`.
 *
 * @since 0.2.0
 * @category config
 */
export const optionalRedacted = (name: string): Config.Config<Redacted.Redacted<string> | undefined> =>
  Config.Redacted(name).pipe(Config.option, Config.map(Option.getOrUndefined))

/**
 * An optional string from `Config`.
 *
 * @since 0.2.0
 * @category config
 */
export const optionalString = (name: string): Config.Config<string | undefined> =>
  Config.String(name).pipe(Config.option, Config.map(Option.getOrUndefined))
