/**
 * `Retry-After` (delay-seconds or an HTTP-date in any of RFC 9110's three forms) and OpenAI's
 * `retry-after-ms`, read strictly as a duration relative to the `Clock`'s time.
 *
 * @since 0.3.0
 */
import { Duration } from "effect"

/**
 * A delay in milliseconds as a Duration: one past what a number holds (`9` four hundred times)
 * is a very long wait, not an infinite one.
 *
 * @internal
 */
export const delay = (millis: number): Duration.Duration =>
  Duration.millis(Math.min(Math.round(millis), Number.MAX_SAFE_INTEGER))

const DELAY_SECONDS = /^\d+$/
const MS = /^\d+(?:\.\d+)?$/
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
const MONTH = "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
const TIME = "(\\d\\d):(\\d\\d):(\\d\\d)"
// RFC 9110 5.6.7: IMF-fixdate, then the obsolete RFC 850 and asctime forms, which a recipient must read too.
const IMF_FIXDATE = new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\\d\\d) ${MONTH} (\\d{4}) ${TIME} GMT$`)
const RFC_850 = new RegExp(
  `^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\\d\\d)-${MONTH}-(\\d\\d) ${TIME} GMT$`
)
const ASCTIME = new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ${MONTH} ( \\d|\\d\\d) ${TIME} (\\d{4})$`)

/** The time of a day of the calendar, or `undefined` for one that is not (31 February, 24:00:00). */
const utc = (year: number, month: number, day: number, hour: number, minute: number, second: number) => {
  // A leap second (60) is one past 59; nothing else past 59 is a time.
  if (hour > 23 || minute > 59 || second > 60) return undefined
  const midnight = new Date(Date.UTC(year, month, day))
  return midnight.getUTCFullYear() === year && midnight.getUTCMonth() === month && midnight.getUTCDate() === day
    ? midnight.getTime() + ((hour * 60 + minute) * 60 + second) * 1000
    : undefined
}

/**
 * An HTTP-date (RFC 9110 5.6.7) in any of its three forms, as milliseconds since the epoch; `undefined` for anything
 * else. `Date.parse` took far more: "Mon 1" (as 2001), 31 February (as 3 March), other zones.
 */
const httpDate = (value: string, nowMillis: number): number | undefined => {
  const fix = IMF_FIXDATE.exec(value)
  if (fix !== null) {
    return utc(Number(fix[3]), MONTHS.indexOf(fix[2]!), Number(fix[1]), Number(fix[4]), Number(fix[5]), Number(fix[6]))
  }
  const old = RFC_850.exec(value)
  if (old !== null) {
    // A two-digit year more than 50 years ahead is the most recent past year of those digits.
    const current = new Date(nowMillis).getUTCFullYear()
    let year = current - (current % 100) + Number(old[3])
    if (year > current + 50) year -= 100
    return utc(year, MONTHS.indexOf(old[2]!), Number(old[1]), Number(old[4]), Number(old[5]), Number(old[6]))
  }
  const asc = ASCTIME.exec(value)
  if (asc !== null) {
    return utc(
      Number(asc[6]),
      MONTHS.indexOf(asc[1]!),
      Number(asc[2]!.trim()),
      Number(asc[3]),
      Number(asc[4]),
      Number(asc[5])
    )
  }
  return undefined
}

/**
 * `Retry-After` as a duration: delay-seconds (digits only), or an HTTP-date relative to
 * `nowMillis` (the `Clock`'s time; a date in the past is zero), read strictly as RFC 9110
 * writes them: anything else is ignored. `retry-after-ms` (OpenAI's, milliseconds, a
 * fraction allowed) wins when present; a Google `RetryInfo` detail is the last resort.
 *
 * @since 0.2.0
 * @category utils
 */
export const parseRetryAfter = (
  headers: Readonly<Record<string, string | undefined>>,
  nowMillis: number,
  info?: { readonly retryDelay?: Duration.Duration | undefined } | undefined
): Duration.Duration | undefined => {
  const ms = firstValue(headers["retry-after-ms"])
  if (ms !== undefined && MS.test(ms)) return delay(Number(ms))
  const value = firstValue(headers["retry-after"])
  if (value !== undefined && value.length > 0) {
    if (DELAY_SECONDS.test(value)) return delay(Number(value) * 1000)
    const date = httpDate(value, nowMillis)
    if (date !== undefined) return Duration.millis(Math.max(0, date - nowMillis))
  }
  return info?.retryDelay
}

// A header sent twice reaches us joined by ", " (undici, node): "120, 120". The first value is the one taken; an
// IMF-fixdate ("Thu, 01 Jan 2026 00:00:30 GMT") and an RFC 850 date hold a comma of their own, after the day's name.
const JOINED = /^(\d+(?:\.\d+)?|[A-Za-z]{3,9}, [^,]*|[^,]*)\s*,/

const firstValue = (header: string | undefined): string | undefined => {
  const value = header?.trim()
  if (value === undefined || !value.includes(",")) return value
  if (/^[A-Za-z]{3,9}, [^,]*$/.test(value)) return value
  return JOINED.exec(value)?.[1]?.trim() ?? value
}
