/**
 * How an HTTP agent is named where it shows: records, spans, metric series, breakers. A URL
 * without its query, fragment or credentials; the breaker key of a URL; the label of a record
 * for a task that sent nothing.
 *
 * @internal
 */
import { createHash } from "node:crypto"
import type { Service as DiscoveryService } from "../Discovery.js"
import type { Agent, Task } from "../HttpAgent.js"
import { otherSeries } from "../Metrics.js"

/** How the service finds the agent of a reference (an agent, or its URL). */
export type AgentOf = (ref: Agent<unknown> | string) => Agent<unknown>

/**
 * A URL as records and spans show it: as the URL parser writes it ({@link endpointOf}: `HTTP://H/x/../a`
 * is `http://h/a`), without its query string, fragment nor credentials (a refused URL is shown too). An
 * agent's name, its series in metrics and `Stats`, and its records' URL are this: an agent written two
 * ways was one breaker but two series.
 */
export const display = (given: string): string => {
  const url = isUrl(given) ? endpointOf(given) : given
  const at = url.search(/[?#]/)
  const bare = at === -1 ? url : url.slice(0, at)
  if (!bare.includes("@")) return bare
  // The URL parser reads `http:user:pw@host`, `http:\\user:pw@host` or ` http://user:pw@host` as credentials
  // too (such a URL is refused): shown as the parser reads it, without them, not as given.
  if (URL.canParse(url)) {
    const parsed = new URL(url)
    if (parsed.username !== "" || parsed.password !== "") return `${parsed.protocol}//${parsed.host}${parsed.pathname}`
  }
  return bare.replace(credentials, "$1")
}

/** The userinfo of a URL, however many slashes (or backslashes) follow its scheme. */
const credentials = /^(\s*[a-z][a-z0-9+.-]*:[\\/]*)[^/\\?#]*@/i

/**
 * An agent's name as records, metrics and stats key it: one that is a URL (`scheme://...`)
 * without its query, fragment and credentials, as the default name (the agent's URL) is.
 */
export const agentName = (name: string): string => (isUrl(name) ? display(name) : name)

/** Whether an agent reference or name is a URL (`scheme://...`), not a name. */
export const isUrl = (name: string): boolean => /^[a-z][a-z0-9+.-]*:\/\//i.test(name)

/** A URL as it is sent: without its fragment. */
export const withoutFragment = (url: string): string => {
  const hash = url.indexOf("#")
  return hash === -1 ? url : url.slice(0, hash)
}

/**
 * The endpoint a URL is sent to, as the URL parser writes it (WHATWG `href`), without its fragment: one
 * string however the URL is written. `HTTP://H/x`, `http://h:80/x` and `http:/h/x` are the request
 * `http://h/x` is, and each had a breaker of its own (one endpoint, its failures counted apart).
 */
export const endpointOf = (given: string): string => {
  if (!URL.canParse(given)) return withoutFragment(given)
  const url = new URL(given)
  url.hash = ""
  return url.href
}

/**
 * The breaker of an agent URL: one per endpoint ({@link endpointOf}), named as records show URLs
 * (no query), with a digest of the query so that two queries (two tenants, two keys) keep two
 * breakers. The name is in `CircuitOpenError` messages, records and the `breaker` metric
 * attribute, where a token of the query must not appear.
 */
export const breakerKey = (given: string): string => {
  // The fragment is never sent: `#a` and `#b` are one agent.
  const url = endpointOf(given)
  const at = url.indexOf("?")
  return at === -1
    ? display(url)
    : `${display(url)}?#${createHash("sha256").update(url.slice(at)).digest("hex").slice(0, 12)}`
}

/**
 * An agent made by `HttpAgent.agent`, or a URL; anything else (`{ url }`, a number) is refused by
 * name, as is an object whose field throws when read (a `Proxy`): `call`, `dispatch` and `stats`
 * died of it.
 */
export const isAgentRef = (ref: unknown): ref is Agent<unknown> | string => {
  if (typeof ref === "string") return true
  if (typeof ref !== "object" || ref === null) return false
  try {
    const agent = ref as Agent<unknown>
    const issue: unknown = agent.issue
    return (
      typeof agent.url === "string" &&
      typeof agent.name === "string" &&
      typeof agent.decode === "function" &&
      (issue === undefined || (typeof issue === "object" && issue !== null))
    )
  } catch {
    return false
  }
}

/** The agent and URL of a record that names no agent of its own. */
export type Label = { readonly agent: string; readonly url: string }

/** The agent of a record for a task that names no valid agent (an invalid task's, and its dependents' in a batch). */
export const noAgent = "unknown"

/** What the agent of the records discovery decides starts with: `discovery:<name>`. */
export const discoveryPrefix = "discovery:"

/**
 * Why an agent's name is reserved, if it is: the names the records and series of the service use for
 * themselves. An agent given one added its figures to theirs.
 */
export const reservedName = (name: string): string | undefined =>
  name === otherSeries
    ? `the agents past the series bound count as ${name}`
    : name === noAgent
      ? `the tasks that name no valid agent count as ${name}`
      : name.startsWith(discoveryPrefix)
        ? `the tasks discovery answers for count as ${discoveryPrefix}<its name>`
        : undefined

/** The agent of the records discovery decides: nothing found, discovery down. */
export const discoveryAgent = (discovery: DiscoveryService): string => `${discoveryPrefix}${discovery.name}`

/**
 * The agent and URL of a record for a task that sent nothing (skipped in a batch): its
 * agent; for a task without one, discovery's label (or none without a Discovery service);
 * for an agent that is not one, none, as the invalid task's own record says.
 */
export const labelOf = (
  task: Task,
  agentOf: AgentOf,
  discovery: DiscoveryService | undefined
): { readonly agent: string; readonly url: string } => {
  if (isAgentRef(task.agent)) {
    const agent = agentOf(task.agent)
    return { agent: agent.name, url: display(agent.url) }
  }
  return { agent: task.agent === undefined && discovery !== undefined ? discoveryAgent(discovery) : noAgent, url: "" }
}

/**
 * The series a record of `task` that sent nothing is counted in: its agent's (`agent`, the
 * record's), or `unknown` for an agent that was refused (a typo'd URL), which takes none of the
 * bounded series: a hundred of them left every real agent after them in `(other)`.
 */
export const seriesOf = (task: Task, agent: string, agentOf: AgentOf): string =>
  isAgentRef(task.agent) && agentOf(task.agent).issue !== undefined ? noAgent : agent
