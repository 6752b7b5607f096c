/**
 * `execute` and `executeWithRetry`: one generate call, its options and request checked
 * synchronously (a refusal is counted, `refusal.ts`), then its plan (`plan.ts`) run on the
 * caller's fiber by the engine, under a span only when the caller is traced.
 *
 * @internal
 */
import { Effect, Result } from "effect"
import { invalidRequest, type ModelError } from "../AiError.js"
import type { ExecuteOptions } from "../Executor.js"
import {
  checkGenerate,
  type GenerateRequest,
  type GenerateResponse,
  type RequestLimits,
  type Service as ProviderService
} from "../Model.js"
import type { Engine } from "../policy/engine.js"
import { describeDefect } from "../policy/failure.js"
import type { Telemetry } from "../policy/plan.js"
import { answerAttributes, isTraced } from "../policy/span.js"
import type { StreamStep } from "../policy/stream-plan.js"
import { executeKeys, type ResolveSync } from "./options.js"
import type { PlanOf } from "./plan.js"
import { issueError, type Refused } from "./refusal.js"

/**
 * The call of a generate plan's step.
 *
 * @internal
 */
export const generateOf = (request: GenerateRequest) => (p: ProviderService) => p.generate(request)

/**
 * `checkGenerate`, with a request that throws when read (a getter, a `Proxy`) refused as an
 * `InvalidRequest` naming `request`: that call's typed error, never a defect of the caller
 * (of a whole `executeMany`).
 *
 * @internal
 */
export const checkRequest = (request: GenerateRequest, limits: RequestLimits): ModelError | undefined => {
  try {
    return checkGenerate(request, limits)
  } catch (defect) {
    return invalidRequest("request", `reading it threw: ${describeDefect(defect)}`)
  }
}

// A provider breaking its contract (no response) is its caller's to see, not a defect of the span's annotation.
const responseAttributes = (response: GenerateResponse) =>
  typeof response === "object" && response !== null ? answerAttributes(response) : {}

/**
 * What a generate call's attempts tell in their spans: the model each step asks for (a
 * domain's step may set it), the answer's model, usage and finish reason.
 *
 * @internal
 */
export const chatTelemetry = (request: GenerateRequest): Telemetry<ProviderService, GenerateResponse> => ({
  operation: "chat",
  requestModel: (step) => ((step as StreamStep).prepare?.(request) ?? request).model ?? step.target.defaultModel,
  response: responseAttributes
})

/**
 * The attributes of an `Executor.execute` span (a traced `executeMany` gives each request one).
 *
 * @internal
 */
export const executeAttributes = (target: ProviderService, request: GenerateRequest, domain: string | undefined) => ({
  "gen_ai.operation.name": "chat",
  "gen_ai.provider.name": target.name,
  "gen_ai.request.model": request.model ?? target.defaultModel,
  "orchestra.domain": domain ?? "none"
})

/**
 * Builds an executor's generate calls.
 *
 * @internal
 */
export const make = (env: {
  readonly provider: ProviderService
  readonly limits: RequestLimits
  readonly engine: Engine
  readonly resolveSync: ResolveSync
  readonly refused: Refused
  readonly planOf: PlanOf
}) => {
  const { provider, limits, engine, resolveSync, refused, planOf } = env

  const noOptions: ExecuteOptions = {}

  // `retryByDefault`: options without `retry` take the executor's policy (`executeWithRetry`).
  const run = (request: GenerateRequest, callOptions: ExecuteOptions, retryByDefault: boolean) =>
    Effect.withFiber((fiber) => {
      const resolved = resolveSync(callOptions, executeKeys, retryByDefault)
      if (Result.isFailure(resolved)) {
        const error = issueError(resolved.failure)
        // Options that threw when read are not read again to find the call's provider and domain.
        return resolved.failure.cause === undefined
          ? refused(error, callOptions?.provider ?? provider, callOptions?.domain)
          : refused(error, provider, undefined)
      }
      const target = callOptions.provider ?? provider
      const error = checkRequest(request, limits)
      if (error !== undefined) return refused(error, target, callOptions.domain)
      const plan = planOf(target, request, callOptions, resolved.success)
      // A span only for a traced caller (a span costs more than an instant call).
      if (!isTraced(fiber)) return engine.runValueIn(fiber, plan, generateOf(request))
      return Effect.withSpan(
        engine.runValueIn(fiber, { ...plan, telemetry: chatTelemetry(request) }, generateOf(request)),
        "Executor.execute",
        { attributes: executeAttributes(target, request, callOptions.domain) }
      )
    })

  const execute = (request: GenerateRequest, callOptions: ExecuteOptions = noOptions) =>
    run(request, callOptions, false)

  // Not a copy of the options with `retry: true` per call: the caller's own options object keeps
  // its checks and plan from one call to the next, as with `execute`. Without options, an object
  // apart from `execute`'s, so that both keep theirs.
  const withRetry: ExecuteOptions = {}
  const executeWithRetry = (request: GenerateRequest, callOptions: ExecuteOptions = withRetry) =>
    run(request, callOptions, true)

  return { execute, executeWithRetry }
}
