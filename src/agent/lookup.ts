/**
 * Asking a Discovery service for a task's agents: a service of the application's own may answer
 * what is no Effect, fail with anything, or answer an unbounded list; each is the lookup's failure
 * or bound here, not a defect of the call.
 *
 * @internal
 */
import { Effect } from "effect"
import type { Service as DiscoveryService, Endpoint } from "../Discovery.js"
import { defaultMaxAgents } from "../discovery/checks.js"
import type { Task } from "../HttpAgent.js"
import * as Input from "../Input.js"

/**
 * The endpoints a Discovery service answered, each read once into a plain `{ url, name, timeout }`
 * (the library's own are sound already), or what is wrong with them: not an array, an entry that
 * is no object, a field that throws when read. Of a service of the application's own, only the
 * first `defaultMaxAgents` are read, as the library's discoveries keep by default: each is a
 * fallback a task may try in turn (a task walked all of an unfiltered list of thousands). The
 * library's own are bounded already (`maxAgents`, or what a static map was given).
 */
export const readEndpoints = (answer: unknown, own: boolean): ReadonlyArray<Endpoint> | string => {
  if (!Array.isArray(answer)) return "no array of endpoints"
  const out: Array<Endpoint> = []
  const kept = own ? answer.length : Math.min(answer.length, defaultMaxAgents)
  for (let i = 0; i < kept; i++) {
    const entry: unknown = answer[i]
    if (typeof entry !== "object" || entry === null) return `an endpoint [${i}] that is no object`
    try {
      const { url, name, timeout } = entry as Endpoint
      out.push({ url, name, timeout })
    } catch (cause) {
      return `an endpoint [${i}] whose field threw when read: ${Input.thrownMessage(cause)}`
    }
  }
  return out
}

/** The longest part of a failure's own message a record keeps. */
const failureChars = 300

/**
 * What a lookup failed with, as a record shows it: a `DiscoveryError` as it is; anything else a
 * Discovery service of the application's own failed with (an `Error`, a string, `null`) is
 * `Unavailable` with its message (bounded) or its kind, not a record of reason
 * `Discoveryundefined` and no message.
 */
const lookupFailure = (
  discovery: DiscoveryService,
  failure: unknown
): { readonly reason: string; readonly message: string } => {
  let detail: unknown = failure
  try {
    if (typeof failure === "object" && failure !== null) {
      const { reason, message } = failure as { readonly reason?: unknown; readonly message?: unknown }
      if (typeof message === "string" && (reason === "NotFound" || reason === "Unavailable")) return { reason, message }
      detail = message
    }
  } catch {
    detail = undefined
  }
  const message =
    typeof detail === "string"
      ? `resolve failed: ${detail.length > failureChars ? `${Input.wholePrefix(detail, failureChars)}…` : detail}`
      : `resolve failed with ${Input.kindOf(failure)}`
  return { reason: "Unavailable", message: `${discovery.name}: ${message}` }
}

/**
 * Asks discovery for a task's agents. A Discovery service of the application's own may answer
 * what is no Effect (a Promise, `undefined`): the call died with "Not a valid effect", which no
 * handler of the lookup's could catch; it is the lookup's failure, naming what it answered.
 */
export const resolveOwn = (
  discovery: DiscoveryService,
  task: Task
): Effect.Effect<ReadonlyArray<Endpoint>, { readonly reason: string; readonly message: string }> =>
  Effect.suspend(() => {
    const answer: unknown = discovery.resolve({ concept: task.concept, intent: task.intent })
    if (Effect.isEffect(answer)) {
      return Effect.mapError(answer as Effect.Effect<ReadonlyArray<Endpoint>, unknown>, (failure) =>
        lookupFailure(discovery, failure)
      )
    }
    const thenable = typeof (answer as PromiseLike<unknown> | null)?.then === "function"
    // Its rejection would otherwise be unhandled: the answer is refused either way.
    if (thenable) Promise.resolve(answer).catch(() => undefined)
    const what = thenable ? "a Promise (wrap it in Effect.tryPromise)" : Input.kindOf(answer)
    return Effect.fail({ reason: "Unavailable", message: `${discovery.name}: resolve answered ${what}, not an Effect` })
  })
