/**
 * `embed`: one embeddings call, its options and request checked (a refusal is counted,
 * `refusal.ts`), then a one-step plan run by the engine, under a span when the caller is
 * traced. Unlike a generate call's, its step takes no provider slot.
 *
 * @internal
 */
import { Effect, Result } from "effect"
import { invalidRequest, type ModelError } from "../AiError.js"
import type { ExecuteOptions, Plan, Service, Step } from "../Executor.js"
import {
  type EmbedRequest,
  type EmbedResponse,
  type RequestLimits,
  type Service as ProviderService,
  validateEmbed
} from "../Model.js"
import { embedAnswerIssue as answerIssueOf } from "../Model/answers.js"
import type { Engine } from "../policy/engine.js"
import { describeDefect } from "../policy/failure.js"
import { retryHookOf } from "../policy/callback.js"
import type { Telemetry } from "../policy/plan.js"
import { isTraced } from "../policy/span.js"
import type { ResolveSync } from "./options.js"
import { issueError, type Refused } from "./refusal.js"

// An embedding has no output tokens or finish reason.
const responseAttributes = (response: EmbedResponse): Record<string, unknown> =>
  typeof response !== "object" || response === null
    ? {}
    : response.usage === undefined
      ? { "gen_ai.response.model": response.model }
      : { "gen_ai.response.model": response.model, "gen_ai.usage.input_tokens": response.usage.inputTokens }

/**
 * The tokens of an embeddings answer, for the token metrics (input only; providers may report none).
 *
 * @internal
 */
export const embedUsageOf = (response: EmbedResponse): EmbedResponse["usage"] => response.usage

// One check per text count, made once: embed calls are on the gateway's path. Up to the default
// `maxEmbedTexts`; a larger count (a higher limit) gets its own.
const MEMO_COUNTS = 2048
const vectorChecks: Array<((value: unknown) => string | undefined) | undefined> = []

/**
 * The `answerIssue` of an embeddings step for a request of `count` texts: an answer that is no
 * object, or whose `vectors` are no array of one sound vector per text (`Model/answers.ts`: a
 * JavaScript provider's answer is not decoded).
 *
 * @internal
 */
export const embedAnswerIssue = (count: number): ((value: unknown) => string | undefined) => {
  if (count > MEMO_COUNTS) return (value) => answerIssueOf(value, count)
  let check = vectorChecks[count]
  if (check === undefined) {
    check = (value) => answerIssueOf(value, count)
    vectorChecks[count] = check
  }
  return check
}

/**
 * What an embeddings call's attempts tell in their spans.
 *
 * @internal
 */
export const embedTelemetry = (request: EmbedRequest): Telemetry<ProviderService, EmbedResponse> => ({
  operation: "embeddings",
  requestModel: (step) => request.model ?? step.target.defaultModel,
  response: responseAttributes
})

/**
 * Builds an executor's `embed`.
 *
 * @internal
 */
export const make = (env: {
  readonly provider: ProviderService
  readonly limits: RequestLimits
  readonly engine: Engine
  readonly resolveSync: ResolveSync
  readonly refused: Refused
  readonly stepFor: Service["stepFor"]
}) => {
  const { provider, limits, engine, resolveSync, refused, stepFor } = env

  const embed = (request: EmbedRequest, callOptions: ExecuteOptions = {}) =>
    Effect.suspend(() => {
      const resolved = resolveSync(callOptions)
      if (Result.isFailure(resolved)) {
        const error = issueError(resolved.failure)
        // Options that threw when read are not read again to find the call's provider and domain.
        return resolved.failure.cause === undefined
          ? refused(error, callOptions?.provider ?? provider, callOptions?.domain)
          : refused(error, provider, undefined)
      }
      const target = callOptions.provider ?? provider
      // A request that throws when read (a getter, a `Proxy`) is refused naming it, not a defect.
      let checked: Effect.Effect<EmbedRequest, ModelError>
      try {
        checked = validateEmbed(request, limits)
      } catch (defect) {
        checked = Effect.fail(invalidRequest("request", `reading it threw: ${describeDefect(defect)}`))
      }
      return Effect.matchEffect(checked, {
        onFailure: (error) => refused(error, target, callOptions.domain),
        onSuccess: (valid) =>
          Effect.withFiber((fiber) => {
            // Embeddings skip the provider slot: a provider batches concurrent embed calls itself
            // (the local model gathers them into one inference), which a slot of one would serialise.
            const step: Step<ProviderService> = {
              ...stepFor(target, { domain: callOptions.domain }),
              timeout: resolved.success.timeout,
              retry: resolved.success.retry,
              maxConcurrency: undefined,
              noSlot: true,
              answerIssue: embedAnswerIssue(valid.texts.length)
            }
            const plan: Plan<ProviderService, EmbedResponse> = {
              steps: [step],
              totalTimeout: resolved.success.totalTimeout,
              onRetry: callOptions.onRetry === undefined ? undefined : retryHookOf(callOptions.onRetry),
              usageOf: embedUsageOf
            }
            const call = (p: ProviderService) => p.embed(valid)
            if (!isTraced(fiber)) return engine.runValueIn(fiber, plan, call)
            return Effect.withSpan(
              engine.runValueIn(fiber, { ...plan, telemetry: embedTelemetry(valid) }, call),
              "Executor.embed",
              {
                attributes: {
                  "gen_ai.operation.name": "embeddings",
                  "gen_ai.provider.name": target.name,
                  "gen_ai.request.model": valid.model ?? target.defaultModel,
                  "orchestra.domain": callOptions.domain ?? "none"
                }
              }
            )
          })
      })
    })

  return embed
}
