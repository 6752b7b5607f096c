/**
 * The `provider` and `domain` labels a call's options may give its series: each must be a
 * name the metrics can tell apart and Prometheus can print.
 *
 * @internal
 */
import { Result } from "effect"
import type { Checked, Issue } from "../Input.js"
import * as Input from "../Input.js"
import { agentDomain, noDomain, otherSeries, pipelineDomain } from "../Metrics.js"

// Domains that label other series (as `Domain.check` refuses them for a domain's name). The
// pipelines' and agents' own calls set theirs on their steps, which this check never sees.
const reserved: ReadonlyMap<string, string> = new Map([
  [noDomain, "it labels the calls made without a domain (leave domain out)"],
  [pipelineDomain, "it labels the steps of pipelines"],
  [agentDomain, "it labels the calls of HTTP agents"],
  [otherSeries, "it labels the calls past the series bound (Stats.maxSeries)"]
])

// With the `u` flag, a surrogate pair is one code point: this matches unpaired halves only.
const loneSurrogate = /[\uD800-\uDFFF]/u

/**
 * The issue of a name holding an unpaired surrogate (`"\uD800"`), which has no UTF-8 form: the
 * exposition (as any UTF-8 exporter), a Redis command or a log line writes U+FFFD in its place,
 * so two names differing only there would label one series twice, or share one Redis key.
 * Checked where a name enters, as the reserved ones are: domains, providers, pipeline steps,
 * rate-limit keys, HTTP agents, the gateway's keys, breaker layers, caches, discoveries, Redis prefixes.
 *
 * @internal
 */
export const textIssue = (name: string, path: string): Issue | undefined => {
  const lone = loneSurrogate.exec(name)
  if (lone === null) return undefined
  const shown = Input.shown(name)
  // Bounded as `shown` bounds a value (a user id of a megabyte was written whole); past its 80
  // characters, the surrogate may be in what it leaves out.
  const at = name.length > 80 ? ` (a lone surrogate at index ${lone.index.toLocaleString("en-US")})` : ""
  return {
    path,
    message: `expected well-formed Unicode, got ${shown}${at}: a lone surrogate has no UTF-8 form, and would be written as in any other such name (U+FFFD)`
  }
}

/**
 * The longest name met at run time that labels series of its own (see {@link isOwnSeriesLabel}).
 *
 * @internal
 */
export const maxOwnLabelChars = 256

/**
 * Whether a name met at run time (a breaker key, a rate-limit key under `default`) may label
 * series of its own: not empty (Prometheus reads an empty label value as no label: the series
 * lost its key), not `Metrics.otherSeries`, nor holding a lone surrogate, which the
 * exposition writes as U+FFFD (two such keys were one series twice, and Prometheus refuses a
 * scrape holding one), nor longer than {@link maxOwnLabelChars} (a user id of a megabyte was
 * written whole in each of its series on every scrape). The others count under `"(other)"`;
 * their keys work as any other.
 *
 * @internal
 */
export const isOwnSeriesLabel = (name: string): boolean =>
  name !== "" && name.length <= maxOwnLabelChars && name !== otherSeries && !loneSurrogate.test(name)

/**
 * The issue of a configured name (a domain's, a provider's) longer than {@link maxOwnLabelChars}:
 * `Stats` counts its calls under `"(other)"`, so the figures of a name one configured could be
 * read by no one, with no word said.
 *
 * @internal
 */
export const lengthIssue = (name: string, path: string): Issue | undefined =>
  name.length > maxOwnLabelChars
    ? {
        path,
        message: `expected at most ${maxOwnLabelChars} characters, got ${name.length.toLocaleString("en-US")}: a longer name labels no series of its own in stats and metrics`
      }
    : undefined

/**
 * A name checked by {@link textIssue}, as `Input`'s checks answer: for a name that enters as an
 * option (a breaker layer's, a discovery's, a Redis prefix), after its own checks.
 *
 * @internal
 */
export const wellFormed = (name: string, path: string): Checked<string> => {
  const issue = textIssue(name, path)
  return issue === undefined ? Result.succeed(name) : Result.fail(issue)
}

/**
 * The issue of a `domain` or `provider` option the metrics could not tell apart or name:
 * `"none"` labels the calls made without a domain (`Metrics.noDomain`), `"pipeline"` and
 * `"agent"` the pipelines' steps and the HTTP agents' calls, an empty label is no label to
 * Prometheus, a provider without a name has no `provider` label, one named `"(other)"`
 * ({@link providerNameIssue}) would count in the overflow series, and a name holding a lone
 * surrogate ({@link textIssue}) would print as another. Their kinds (a string, an object) are
 * checked before.
 *
 * @internal
 */
export const labelIssue = (options: { readonly domain?: unknown; readonly provider?: unknown }): Issue | undefined => {
  const { domain, provider } = options
  if (typeof domain === "string") {
    const why = reserved.get(domain)
    if (why !== undefined) return { path: "domain", message: `"${domain}" is reserved: ${why}` }
    if (domain === "") return { path: "domain", message: "expected a domain name, got an empty string" }
    const text = textIssue(domain, "domain")
    if (text !== undefined) return text
  }
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
 * The issue of a provider's name that is no non-empty string, or is `Metrics.otherSeries` (or is no
 * well-formed Unicode, {@link textIssue}, or is longer than {@link maxOwnLabelChars},
 * {@link lengthIssue}): the series bounds count the names past them under it (breaker keys,
 * rate-limit keys, the HTTP agents' `Stats` series), so a provider of that name would have no
 * breaker gauge and its figures would add up with theirs. Checked where a provider enters: an
 * executor's, an orchestra's `providers`, a call's `provider` option, the CLI's config.
 *
 * @internal
 */
export const providerNameIssue = (name: string, path: string): Issue | undefined =>
  // A provider written in JavaScript may have none: `undefined` or a number labelling its series made
  // every later Prometheus scrape of the registry die with a TypeError.
  typeof name !== "string" || name === ""
    ? { path, message: `expected a non-empty string, got ${Input.shown(name)}` }
    : name === otherSeries
      ? { path, message: `"${name}" is reserved: the names past a series bound count together under it` }
      : (textIssue(name, path) ?? lengthIssue(name, path))

/**
 * Whether a value may label a call's series as its provider: named, not the reserved
 * `Metrics.otherSeries`, no longer than {@link maxOwnLabelChars}, no lone surrogate in the name.
 *
 * @internal
 */
export const isProviderLabel = (target: unknown): target is { readonly name: string } =>
  isNamed(target) &&
  target.name !== otherSeries &&
  target.name.length <= maxOwnLabelChars &&
  !loneSurrogate.test(target.name)

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
 * reserved ones, without a lone surrogate.
 *
 * @internal
 */
export const isDomainLabel = (domain: unknown): domain is string =>
  typeof domain === "string" && domain !== "" && !reserved.has(domain) && !loneSurrogate.test(domain)
