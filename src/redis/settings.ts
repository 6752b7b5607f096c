/**
 * The options of `Redis.layer` checked where they enter: every refusal names the field, and no
 * URL that node-redis would throw on (a defect, not a failure) gets past.
 *
 * @internal
 */
import { Redacted, Result } from "effect"
import * as Input from "../Input.js"
import type { Options, TlsOptions } from "../Redis.js"

/** @internal */
export interface Settings {
  readonly url: string
  /** `host:port` of the URL, for messages: never its user or password. */
  readonly address: string
  readonly connectTimeout: number
  readonly commandTimeout: number
  readonly reconnectMax: number
  readonly onUnreachableAtStart: "fail" | "start"
  /** For node-redis's TLS socket (the key revealed, for it alone). */
  readonly tls: TlsSettings | undefined
}

/** @internal */
export interface TlsSettings {
  readonly ca?: string | Array<string>
  readonly cert?: string
  readonly key?: string
  readonly passphrase?: string
  readonly servername?: string
}

// node-redis runs each of these on a Node timer (a command's deadline through AbortSignal.timeout,
// which throws above 2^32-1 ms): whole milliseconds within what a timer takes.
const wholeMillis = (path: string, input: unknown, fallback: Input.DurationInput): Input.Checked<number> =>
  Input.wholeMillis(path, Input.orDefault(input, fallback), Input.maxTimerMillis)

const decodes = (component: string): boolean => {
  try {
    decodeURIComponent(component)
    return true
  } catch {
    return false
  }
}

const maxDatabase = 2 ** 31 - 1

/** @internal */
export const minReconnectMillis = 50

const optionKeys: ReadonlySet<string> = new Set([
  "url",
  "connectTimeout",
  "commandTimeout",
  "reconnectMax",
  "onUnreachableAtStart",
  "tls"
])

const tlsKeys: ReadonlySet<string> = new Set(["ca", "cert", "key", "passphrase", "servername"])

const pem = (input: unknown): input is string => typeof input === "string" && input.trim() !== ""

// Never echoes a value: a key is a secret, and a certificate is pages long.
const tlsSettings = (tls: TlsOptions, url: URL): Input.Checked<TlsSettings> => {
  const issue = Array.isArray(tls)
    ? { path: "tls", message: "expected an object, got an array" }
    : (Input.notAnObject("tls", tls) ?? Input.unknownKey(tls, tlsKeys, "tls."))
  if (issue !== undefined) return Result.fail(issue)
  // Given with redis://, they would be ignored: the connection would go in clear.
  if (url.protocol !== "rediss:") return Result.fail({ path: "tls", message: "takes a rediss:// URL (TLS)" })
  const out: { ca?: string | Array<string>; cert?: string; key?: string; passphrase?: string; servername?: string } = {}
  if (tls.ca !== undefined) {
    const ca = typeof tls.ca === "string" ? [tls.ca] : tls.ca
    if (!Array.isArray(ca) || ca.length === 0 || !ca.every(pem)) {
      return Result.fail({ path: "tls.ca", message: "expected a PEM certificate, or a non-empty array of them" })
    }
    out.ca = typeof tls.ca === "string" ? tls.ca : [...ca]
  }
  const key = Redacted.isRedacted(tls.key) ? Redacted.value(tls.key) : tls.key
  if (tls.cert !== undefined || key !== undefined) {
    if (!pem(tls.cert)) return Result.fail({ path: "tls.cert", message: "expected a PEM certificate, with tls.key" })
    if (!pem(key)) return Result.fail({ path: "tls.key", message: "expected a PEM private key, with tls.cert" })
    out.cert = tls.cert
    out.key = key
  }
  const passphrase = Redacted.isRedacted(tls.passphrase) ? Redacted.value(tls.passphrase) : tls.passphrase
  if (passphrase !== undefined) {
    if (key === undefined) {
      return Result.fail({ path: "tls.passphrase", message: "expected the passphrase of tls.key, given with it" })
    }
    if (typeof passphrase !== "string" || passphrase === "") {
      return Result.fail({ path: "tls.passphrase", message: "expected the passphrase of tls.key, a non-empty string" })
    }
    out.passphrase = passphrase
  }
  if (tls.servername !== undefined) {
    if (typeof tls.servername !== "string" || tls.servername === "") {
      return Result.fail({
        path: "tls.servername",
        message: `expected a host name, got ${Input.shown(tls.servername)}`
      })
    }
    out.servername = tls.servername
  }
  return Result.succeed(out)
}

/** @internal */
export const settings = (options: Options): Input.Checked<Settings> => {
  // `null` (a JSON config's) would fail reading its first field; a misspelt `urll` would connect to the default.
  const issue = Array.isArray(options)
    ? { path: "options", message: "expected an object, got an array" }
    : (Input.notAnObject("options", options) ?? Input.unknownKey(options, optionKeys))
  if (issue !== undefined) return Result.fail(issue)
  const url = options.url === undefined ? "redis://127.0.0.1:6379" : options.url
  const plain = Redacted.isRedacted(url) ? Redacted.value(url) : url
  // node-redis parses it with `new URL`, which throws (a defect, not a failure) on one it cannot parse. A scheme is
  // case-insensitive (RFC 3986): `new URL` reads REDIS:// as redis:, and so does node-redis.
  if (typeof plain !== "string" || !/^rediss?:\/\//i.test(plain) || !URL.canParse(plain)) {
    // Never echo the value: it may carry a password.
    return Result.fail({ path: "url", message: "expected a redis:// or rediss:// URL" })
  }
  // What node-redis reads of it next and throws on (a defect again): the database number in the
  // path, and the percent-decoded user and password. Redis refuses a database that is negative or
  // not whole only once connected.
  const parsed = new URL(plain)
  // Redis reads the index as an int: past it, SELECT is refused once connected (a layer that starts without
  // Redis tries it for good), and node-redis writes one past 2^53 rounded (1e+20).
  if (
    parsed.pathname.length > 1 &&
    (!/^\/\d+$/.test(parsed.pathname) || Number(parsed.pathname.slice(1)) > maxDatabase)
  ) {
    return Result.fail({
      path: "url",
      message: `expected a database number (a whole number up to ${maxDatabase}) as the path`
    })
  }
  if (!decodes(parsed.username) || !decodes(parsed.password)) {
    return Result.fail({
      path: "url",
      message: "expected a user and password percent-encoded (a literal % is %25)"
    })
  }
  let tls: TlsSettings | undefined
  if (options.tls !== undefined) {
    const checked = tlsSettings(options.tls, parsed)
    if (Result.isFailure(checked)) return Result.fail(checked.failure)
    tls = checked.success
  }
  const onUnreachableAtStart = Input.orDefault(options.onUnreachableAtStart, "fail")
  if (onUnreachableAtStart !== "fail" && onUnreachableAtStart !== "start") {
    return Result.fail({
      path: "onUnreachableAtStart",
      message: `expected "fail" or "start", got ${Input.shown(onUnreachableAtStart)}`
    })
  }
  return Result.map(
    Input.all([
      wholeMillis("connectTimeout", options.connectTimeout, "2 seconds"),
      wholeMillis("commandTimeout", options.commandTimeout, "500 millis"),
      Result.flatMap(wholeMillis("reconnectMax", options.reconnectMax, "2 seconds"), (ms) =>
        // The backoff starts at 50 ms: a cap below it made every pause the cap, a 1 ms busy loop on a down Redis.
        ms < minReconnectMillis
          ? Result.fail({
              path: "reconnectMax",
              message: `expected at least ${minReconnectMillis} ms (the first pause of the backoff), got ${Input.shown(options.reconnectMax)}`
            })
          : Result.succeed(ms)
      )
    ]),
    ([connectTimeout, commandTimeout, reconnectMax]) => ({
      url: plain,
      // node-redis connects to localhost when the URL names no host (redis://, redis:///2).
      address: `${parsed.hostname === "" ? "localhost" : parsed.hostname}:${parsed.port === "" ? "6379" : parsed.port}`,
      connectTimeout,
      commandTimeout,
      reconnectMax,
      onUnreachableAtStart,
      tls
    })
  )
}
