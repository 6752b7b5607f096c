/**
 * The `provider` and `domain` labels a call's options may give its series: each must be a
 * name the metrics can tell apart and Prometheus can print.
 *
 * @internal
 */
import type { Issue } from "../Input.js"
import { agentDomain, noDomain, otherSeries, pipelineDomain } from "../Metrics.js"

// Domains that label other series (as `Domain.check` refuses them for a domain's name). The
// pipelines' and agents' own calls set theirs on their steps, which this check never sees.
const reserved: ReadonlyMap<string, string> = new Map([
  [noDomain, "it labels the calls made without a domain (leave domain out)"],
  [pipelineDomain, "it labels the steps of pipelines"],
  [agentDomain, "it labels the calls of HTTP agents"],
  [otherSeries, "it labels the calls past the series bound (Stats.maxSeries)"]
])

/**
 * The issue of a `domain` or `provider` option the metrics could not tell apart or name:
 * `"none"` labels the calls made without a domain (`Metrics.noDomain`), `"pipeline"` and
 * `"agent"` the pipelines' steps and the HTTP agents' calls, an empty label is no label to
 * Prometheus, a provider without a name has no `provider` label, and one named `"(other)"`
 * ({@link providerNameIssue}) would count in the overflow series. Their kinds (a string, an
 * object) are checked before.
 *
 * @internal
 */
export const labelIssue = (options: { readonly domain?: unknown; readonly provider?: unknown }): Issue | undefined => {
  const { domain, provider } = options
  const why = typeof domain === "string" ? reserved.get(domain) : undefined
  if (why !== undefined) return { path: "domain", message: `"${domain}" is reserved: ${why}` }
  if (domain === "") return { path: "domain", message: "expected a domain name, got an empty string" }
  if (typeof provider === "object" && provider !== null) {
    if (!isNamed(provider)) {
      return {
        path: "provider",
        message: "expected a provider (a ModelProvider service with a name), got an object without a name"
      }
    }
    return providerNameIssue(provider.name, "provider.name")
  }
  return undefined
}

/**
 * The issue of a provider's name that is `Metrics.otherSeries`: the series bounds count the
 * names past them under it (breaker keys, rate-limit keys, the HTTP agents' `Stats` series),
 * so a provider of that name would have no breaker gauge and its figures would add up with
 * theirs. Checked where a provider enters: an executor's, an orchestra's `providers`, a
 * call's `provider` option.
 *
 * @internal
 */
export const providerNameIssue = (name: string, path: string): Issue | undefined =>
  name === otherSeries
    ? { path, message: `"${name}" is reserved: the names past a series bound count together under it` }
    : undefined

/**
 * Whether a value may label a call's series as its provider: named, and not the reserved
 * `Metrics.otherSeries`.
 *
 * @internal
 */
export const isProviderLabel = (target: unknown): target is { readonly name: string } =>
  isNamed(target) && target.name !== otherSeries

/**
 * Whether a value is an object with a non-empty `name`, as a provider is.
 *
 * @internal
 */
export const isNamed = (target: unknown): target is { readonly name: string } =>
  typeof target === "object" &&
  target !== null &&
  typeof (target as { readonly name?: unknown }).name === "string" &&
  (target as { readonly name: string }).name !== ""

/**
 * Whether a value may label a call's series as its domain: a non-empty string other than the
 * reserved ones.
 *
 * @internal
 */
export const isDomainLabel = (domain: unknown): domain is string =>
  typeof domain === "string" && domain !== "" && !reserved.has(domain)
