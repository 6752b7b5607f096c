/**
 * A call refused before it runs (a bad option, a request over the limits): still counted
 * under the provider it was meant for, as a request and a failure with its reason, and its
 * error names that provider.
 *
 * @internal
 */
import { Effect } from "effect"
import { invalidRequest, ModelError } from "../AiError.js"
import type * as Input from "../Input.js"
import type { Service as ProviderService } from "../Model.js"
import { withProvider } from "../policy/failure.js"
import type { Service as StatsService } from "../Stats.js"
import { isDomainLabel, isProviderLabel } from "../stats/labels.js"

/**
 * Builds the refusals of an executor, counted in its `Stats`.
 *
 * @internal
 */
export const make = (stats: StatsService, provider: ProviderService) => {
  const refuse = (error: ModelError, target: ProviderService, domain: string | undefined): ModelError => {
    // A call refused for its `provider` or `domain` option (`provider: "openai"`, `domain: 5`) is
    // counted under the executor's provider and no domain: a label that is no name would end
    // every Prometheus scrape of the registry with a TypeError, for as long as the series lives.
    const named = isProviderLabel(target) ? target : provider
    const series = stats.series(named.name, isDomainLabel(domain) ? domain : undefined)
    series.requests++
    series.fail(error.reason)
    return error.provider === undefined ? withProvider(error, named.name) : error
  }
  const refused = (error: ModelError, target: ProviderService, domain: string | undefined) =>
    Effect.suspend(() => Effect.fail(refuse(error, target, domain)))

  return { refuse, refused }
}

/**
 * The `InvalidRequest` of an issue, keeping what was thrown (a getter of the options) as its cause.
 *
 * @internal
 */
export const issueError = (issue: Input.Issue): ModelError => {
  const error = invalidRequest(issue.path, issue.message)
  return issue.cause === undefined
    ? error
    : new ModelError({ reason: error.reason, message: error.message, field: error.field, cause: issue.cause })
}

/**
 * The counted refusal of a call, as its error.
 *
 * @internal
 */
export type Refuse = ReturnType<typeof make>["refuse"]

/**
 * The counted refusal of a call, as an Effect.
 *
 * @internal
 */
export type Refused = ReturnType<typeof make>["refused"]
