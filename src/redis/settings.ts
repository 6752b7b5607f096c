/**
 * The options of `Redis.layer` checked where they enter: every refusal names the field, and no
 * URL that node-redis would throw on (a defect, not a failure) gets past.
 *
 * @internal
 */
import { Redacted, Result } from "effect"
import * as Input from "../Input.js"
import type { Options } from "../Redis.js"

/** @internal */
export interface Settings {
  readonly url: string
  /** `host:port` of the URL, for messages: never its user or password. */
  readonly address: string
  readonly connectTimeout: number
  readonly commandTimeout: number
  readonly reconnectMax: number
  readonly onUnreachableAtStart: "fail" | "start"
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

const optionKeys: ReadonlySet<string> = new Set([
  "url",
  "connectTimeout",
  "commandTimeout",
  "reconnectMax",
  "onUnreachableAtStart"
])

/** @internal */
export const settings = (options: Options): Input.Checked<Settings> => {
  // `null` (a JSON config's) would fail reading its first field; a misspelt `urll` would connect to the default.
  const issue = Array.isArray(options)
    ? { path: "options", message: "expected an object, got an array" }
    : (Input.notAnObject("options", options) ?? Input.unknownKey(options, optionKeys))
  if (issue !== undefined) return Result.fail(issue)
  const url = options.url === undefined ? "redis://127.0.0.1:6379" : options.url
  const plain = Redacted.isRedacted(url) ? Redacted.value(url) : url
  // node-redis parses it with `new URL`, which throws (a defect, not a failure) on one it cannot parse.
  if (typeof plain !== "string" || !/^rediss?:\/\//.test(plain) || !URL.canParse(plain)) {
    // Never echo the value: it may carry a password.
    return Result.fail({ path: "url", message: "expected a redis:// or rediss:// URL" })
  }
  // What node-redis reads of it next and throws on (a defect again): the database number in the
  // path, and the percent-decoded user and password. Redis refuses a database that is negative or
  // not whole only once connected.
  const parsed = new URL(plain)
  if (parsed.pathname.length > 1 && !/^\/\d+$/.test(parsed.pathname)) {
    return Result.fail({ path: "url", message: "expected a database number (a whole number) as the path" })
  }
  if (!decodes(parsed.username) || !decodes(parsed.password)) {
    return Result.fail({
      path: "url",
      message: "expected a user and password percent-encoded (a literal % is %25)"
    })
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
      wholeMillis("reconnectMax", options.reconnectMax, "2 seconds")
    ]),
    ([connectTimeout, commandTimeout, reconnectMax]) => ({
      url: plain,
      address: `${parsed.hostname}:${parsed.port === "" ? "6379" : parsed.port}`,
      connectTimeout,
      commandTimeout,
      reconnectMax,
      onUnreachableAtStart
    })
  )
}
