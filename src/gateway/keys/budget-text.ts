/**
 * How budget amounts and refusals are told: dollars to the nano-dollar, tokens, and the 429s of a
 * budget spent or held by requests in flight.
 *
 * @internal
 */
import { Duration } from "effect"
import { type GatewayError, gatewayError } from "../errors.js"
import type { Held } from "./held.js"
import { type Charge, type Counter, type Level, nano, shown, windowEnd } from "./ledger.js"

/** The `Retry-After` of a budget refused only for what requests in flight hold: most settle within seconds. */
const heldRetryAfter = Duration.seconds(1)

// Every nano-dollar shown: a budget may be as small as $0.000000001, and six decimals would
// print "$0 of $0" for one under a micro-dollar.
const usd = (amount: number): string => {
  const nanos = amount % nano
  const whole = (amount - nanos) / nano
  const fraction = String(nanos).padStart(9, "0").replace(/0+$/, "")
  return fraction === "" ? `$${whole}` : `$${whole}.${fraction}`
}

/**
 * @internal
 */
export const amountText = (counter: Counter, amount: number): string =>
  counter.unit === "tokens" ? `${amount} tokens` : usd(amount)

/**
 * The 429 of a reservation `charge` refused at `level` (at `at`): held by requests in flight (retry in a
 * second), or spent (retry when the budget's period starts again, never when the request alone needs more).
 *
 * @internal
 */
export const exceeded = (charge: Charge, level: Level, at: number): GatewayError => {
  const { counter, amount } = charge
  const used = level.spent + level.held
  // Refused only for what requests in flight hold: the request fits once they settle (unless what they
  // report spends it), seconds later in general; a retryable 429, not the spent budget's.
  if (level.held > 0 && level.spent < counter.limit && level.spent + amount <= counter.limit) {
    return gatewayError(
      "BudgetExceeded",
      `Budget held for ${counter.scope} "${counter.scopeId}": ${amountText(counter, used)} of ${amountText(counter, counter.limit)} spent, ${amountText(counter, level.held)} of it held by requests in flight; this request may need up to ${amountText(counter, amount)}, which fits once enough of them settle: try again in ${Duration.format(heldRetryAfter)}`,
      {
        code: "budget_held",
        scope: counter.scope,
        scopeId: counter.scopeId,
        unit: counter.unit,
        spent: shown(counter.unit, used),
        held: shown(counter.unit, level.held),
        limit: shown(counter.unit, counter.limit),
        retryAfter: heldRetryAfter
      }
    )
  }
  // A request that needs more than the whole limit never fits, not even after the reset: no time to come back.
  const never = amount > counter.limit
  const end = never ? undefined : windowEnd(counter)
  const held = level.held > 0 ? ` (${amountText(counter, level.held)} of it held by requests in flight)` : ""
  const resets = end === undefined ? "" : `; it starts again at ${new Date(end).toISOString()}`
  const need = never
    ? `this request alone may need up to ${amountText(counter, amount)}, more than the budget's limit: lower max_tokens or the input`
    : `this request may need up to ${amountText(counter, amount)}${resets}`
  return gatewayError(
    "BudgetExceeded",
    `Budget exceeded for ${counter.scope} "${counter.scopeId}": ${amountText(counter, used)} of ${amountText(counter, counter.limit)} spent${held}; ${need}`,
    {
      code: "budget_exceeded",
      scope: counter.scope,
      scopeId: counter.scopeId,
      unit: counter.unit,
      spent: shown(counter.unit, used),
      ...(level.held > 0 ? { held: shown(counter.unit, level.held) } : {}),
      limit: shown(counter.unit, counter.limit),
      ...(end === undefined ? {} : { retryAfter: Duration.millis(Math.max(1, end - at)) })
    }
  )
}

/**
 * The warning of a request charged what it used past what it held: the budget may end over its limit by the
 * difference, and its next requests are refused. Said, so that a provider that does not keep to max_tokens is seen.
 *
 * @internal
 */
export const overrun = (held: Held, actual: ReadonlyArray<number>): string =>
  `gateway: a request of the key "${held.keyId}" on the model "${held.model}" used more than it reserved ` +
  "(its provider did not keep to max_tokens, or its input was longer in tokens than estimated), and is " +
  `charged what it used: ${held.charges
    .map(({ counter, amount }, i) =>
      actual[i]! > amount
        ? `${amountText(counter, actual[i]!)} to the ${counter.scope} "${counter.scopeId}" (${amountText(counter, amount)} reserved)`
        : undefined
    )
    .filter((text) => text !== undefined)
    .join(", ")}`
