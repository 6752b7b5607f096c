/**
 * The plans of the executor's own calls: a step on a provider with the executor's default
 * deadline and the shared breaker and rate limit (`stepFor`), and a call's one-step plan
 * with its resolved options, cache entry and `onRetry` (`planOf`), shared between calls when
 * nothing in it depends on the request.
 *
 * @internal
 */
import { Duration, Result } from "effect"
import type { ExecuteOptions, Guards, Plan, ResolvedOptions, Service, StreamPlan } from "../Executor.js"
import * as Input from "../Input.js"
import {
  estimateInputTokens,
  type GenerateRequest,
  type GenerateResponse,
  type Service as ProviderService
} from "../Model.js"
import { generateAnswerIssue } from "../Model/answers.js"
import { decodeRetry } from "../Policy.js"
import { retryHookOf } from "../policy/callback.js"
import { cacheKeyOf } from "../policy/failure.js"
import { type Engine, slotLimitIssue } from "../policy/engine.js"
import { keyedRequest } from "../ResponseCache/key.js"
import { slotIssue } from "./options.js"

/**
 * The plan of one call of a provider.
 *
 * @internal
 */
export type PlanOf = (
  target: ProviderService,
  request: GenerateRequest,
  callOptions: ExecuteOptions,
  resolved: ResolvedOptions
) => Plan<ProviderService, GenerateResponse>

/**
 * What the rate limit counts for a request: its estimated input and its output bound.
 *
 * @internal
 */
export const tokensOf = (request: GenerateRequest): number => estimateInputTokens(request) + (request.maxTokens ?? 0)

const usageOf = (response: GenerateResponse) => response.usage

/**
 * What is wrong with a provider's `generate` answer: no object (`null`, `undefined`: a provider
 * written in JavaScript, an adapter that returns nothing), or a field that breaks
 * `GenerateResponse` (`Model/answers.ts`): its caller would read `.text` of it.
 *
 * @internal
 */
export const providerAnswerIssue: (value: unknown) => string | undefined = generateAnswerIssue

/**
 * A deadline's issue: no Duration, or one that cuts at once (negative, zero, `NaN` which
 * `Duration.millis` makes zero). Infinite is no deadline. Read without allocating when valid.
 *
 * @internal
 */
export const durationIssue = (path: string, value: unknown, allowZero: boolean): Input.Issue | undefined => {
  if (value === undefined) return undefined
  if (!Duration.isDuration(value)) return { path, message: `expected a Duration, got ${Input.kindOf(value)}` }
  if (!Duration.isFinite(value)) return undefined
  const millis = Duration.toMillis(value)
  if (millis > 0 || (allowZero && millis === 0)) return undefined
  return { path, message: `expected a ${allowZero ? "non-negative" : "positive"} duration, got ${millis} ms` }
}

// Each guard a step may carry, with the methods the engine calls at each attempt.
const stepGuards = [
  ["breaker", ["execute", "admit"]],
  ["rateLimit", ["acquire"]],
  ["slot", ["withPermit"]]
] as const

// Walked by index, without allocating while valid: it runs for every call of a router.
const guardIssue = (i: number, step: object): Input.Issue | undefined => {
  for (let g = 0; g < stepGuards.length; g++) {
    const name = stepGuards[g]![0]
    const methods = stepGuards[g]![1]
    const guard: unknown = (step as Record<string, unknown>)[name]
    if (guard === undefined) continue
    if (typeof guard !== "object" || guard === null) {
      return { path: `steps[${i}].${name}`, message: `expected an object with ${methods.join(", ")}` }
    }
    for (let m = 0; m < methods.length; m++) {
      if (typeof (guard as Record<string, unknown>)[methods[m]!] !== "function") {
        return { path: `steps[${i}].${name}.${methods[m]}`, message: "expected a function" }
      }
    }
  }
  return undefined
}

const labelValueIssue = (path: string, value: unknown, optional: boolean): Input.Issue | undefined =>
  (optional && value === undefined) || (typeof value === "string" && value !== "")
    ? undefined
    : { path, message: `expected a non-empty string, got ${Input.shown(value)}` }

/**
 * The issue of a plan built in code (`Executor.run`): a step that is no object, a step's `name`,
 * `domain` or `statsName` that is no non-empty string, a step's `breaker`, `rateLimit` or `slot`
 * without the methods the engine calls, a hook (`onRetry`, `onEnded`, `usageOf`) that
 * is no function, a `cache` without its guard and key, a step's `timeout`, `tokens` or `retry`,
 * the plan's `totalTimeout` or `hedgeAfter` that is no valid value, or a step's `maxConcurrency`
 * other than the one its provider name has (`claimSlot`), named by its path (`steps[1].timeout`). Walked at each run without allocating while valid (the plans of a
 * router are built per call): a policy this library checked (frozen) is not checked again.
 *
 * @internal
 */
export const planIssue = (plan: Plan<unknown, unknown>, claimSlot: Engine["claimSlot"]): Input.Issue | undefined =>
  stepsIssue(plan, claimSlot) ?? callHooksIssue(plan)

const callHooks = ["onRetry", "onEnded", "usageOf"] as const

// The hooks and the cache the engine calls: one that is no function was a defect of the call (or,
// a `call` of `run`, a failure of every attempt counted as its provider's, tripping its breaker).
const callHooksIssue = (plan: Plan<unknown, unknown>): Input.Issue | undefined => {
  // Indexed: this runs for every call of a router.
  for (let i = 0; i < callHooks.length; i++) {
    const key = callHooks[i]!
    const hook = plan[key]
    if (hook !== undefined && typeof hook !== "function") {
      return { path: key, message: `expected a function, got ${Input.kindOf(hook)}` }
    }
  }
  const cache: unknown = plan.cache
  if (cache === undefined) return undefined
  const { guard, key } = (typeof cache === "object" && cache !== null ? cache : {}) as Record<string, unknown>
  return typeof key === "string" &&
    typeof guard === "object" &&
    guard !== null &&
    typeof (guard as Record<string, unknown>).getOrCompute === "function"
    ? undefined
    : { path: "cache", message: "expected { guard: { getOrCompute }, key, allowStale }" }
}

// A step naming a provider an earlier step of the plan names with another limit: the engine holds a name's
// limit only while its calls run, and the plan's steps may not all run at once.
const earlierLimitIssue = (
  steps: ReadonlyArray<Plan<unknown, unknown>["steps"][0]>,
  i: number
): Input.Issue | undefined => {
  const step = steps[i]!
  for (let k = 0; k < i; k++) {
    const earlier = steps[k]!
    if (earlier.name !== step.name || earlier.slot !== undefined || earlier.maxConcurrency === undefined) continue
    return slotLimitIssue(step.name, earlier.maxConcurrency, step.maxConcurrency!, `steps[${i}].maxConcurrency`)
  }
  return undefined
}

// What plans of calls and of streams share: their steps, total deadline and hedge delay.
const stepsIssue = (plan: Plan<unknown, unknown>, claimSlot: Engine["claimSlot"]): Input.Issue | undefined => {
  const steps: unknown = plan?.steps
  if (!Array.isArray(steps) || steps.length === 0) {
    return { path: "steps", message: "expected a non-empty array of steps" }
  }
  const total = durationIssue("totalTimeout", plan.totalTimeout, false)
  if (total !== undefined) return total
  // Zero starts the backups with the first step: a race, not a deadline that cuts.
  const hedge = durationIssue("hedgeAfter", plan.hedgeAfter, true)
  if (hedge !== undefined) return hedge
  for (let i = 0; i < steps.length; i++) {
    const step = steps[i] as Plan<unknown, unknown>["steps"][0]
    // Read below and by the engine (its name labels the step's series): a hole or `null` was a
    // TypeError thrown out of `run` itself, not even its Effect's failure.
    if (typeof step !== "object" || step === null) {
      return { path: `steps[${i}]`, message: `expected a step, got ${Input.kindOf(step)}` }
    }
    // The labels of its series: one that is no string ended every Prometheus scrape of the registry
    // with a TypeError, for as long as the series lived.
    const label =
      labelValueIssue(`steps[${i}].name`, step.name, false) ??
      labelValueIssue(`steps[${i}].domain`, step.domain, true) ??
      labelValueIssue(`steps[${i}].statsName`, step.statsName, true)
    if (label !== undefined) return label
    const guard = guardIssue(i, step)
    if (guard !== undefined) return guard
    // Called where each attempt settles, in plain JavaScript on the fused path: a throw there left the call hanging.
    if (step.answerIssue !== undefined && typeof step.answerIssue !== "function") {
      return { path: `steps[${i}].answerIssue`, message: `expected a function, got ${Input.kindOf(step.answerIssue)}` }
    }
    const timeout = durationIssue(`steps[${i}].timeout`, step.timeout, false)
    if (timeout !== undefined) return timeout
    const tokens = step.tokens
    if (tokens !== undefined && !(typeof tokens === "number" && Number.isFinite(tokens) && tokens >= 0)) {
      return { path: `steps[${i}].tokens`, message: `expected a non-negative number, got ${Input.shown(tokens)}` }
    }
    if (step.slot === undefined && step.maxConcurrency !== undefined) {
      // Checked before it is claimed as its name's limit: 0 or -1 queued every call of the name for ever after.
      const slot =
        slotIssue(step, `steps[${i}].maxConcurrency`) ??
        claimSlot(step.name, step.maxConcurrency, `steps[${i}].maxConcurrency`) ??
        earlierLimitIssue(steps as ReadonlyArray<Plan<unknown, unknown>["steps"][0]>, i)
      if (slot !== undefined) return slot
    }
    const retry = step.retry
    // A primitive is frozen too: only an object may be a policy checked before.
    if (retry !== undefined && (typeof retry !== "object" || retry === null || !Object.isFrozen(retry))) {
      const checked = decodeRetry(retry, `steps[${i}].retry`)
      if (Result.isFailure(checked)) return checked.failure
    }
  }
  return undefined
}

const resumeFields = [
  ["maxResumes", 1],
  ["minOverlap", 1]
] as const

/**
 * The issue of a stream plan built in code (`Executor.runStream`): what {@link planIssue} finds
 * in its steps and total deadline, a first-chunk or idle deadline that is no valid value, a step's
 * `prepare` or the plan's `validate` or `onRetry` that is no function, a `resume` whose counts
 * are no positive integers or whose `instruction` is no string, a `cache` without its store and key.
 *
 * @internal
 */
export const streamPlanIssue = (plan: StreamPlan, claimSlot: Engine["claimSlot"]): Input.Issue | undefined => {
  const issue = stepsIssue(plan as unknown as Plan<unknown, unknown>, claimSlot)
  if (issue !== undefined) return issue
  const deadline =
    durationIssue("firstChunkTimeout", plan.firstChunkTimeout, false) ??
    durationIssue("idleTimeout", plan.idleTimeout, false)
  if (deadline !== undefined) return deadline
  for (let i = 0; i < plan.steps.length; i++) {
    const prepare = plan.steps[i]!.prepare
    if (prepare !== undefined && typeof prepare !== "function") {
      return { path: `steps[${i}].prepare`, message: `expected a function, got ${Input.kindOf(prepare)}` }
    }
  }
  for (const key of ["validate", "onRetry"] as const) {
    const hook = plan[key]
    if (hook !== undefined && typeof hook !== "function") {
      return { path: key, message: `expected a function, got ${Input.kindOf(hook)}` }
    }
  }
  const resume: unknown = plan.resume
  if (resume !== undefined) {
    if (typeof resume !== "object" || resume === null) {
      return {
        path: "resume",
        message: `expected { maxResumes, minOverlap, instruction }, got ${Input.kindOf(resume)}`
      }
    }
    for (const [key, min] of resumeFields) {
      const checked = Input.int(`resume.${key}`, (resume as Record<string, unknown>)[key], { min })
      if (Result.isFailure(checked)) return checked.failure
    }
    const instruction = (resume as Record<string, unknown>).instruction
    if (typeof instruction !== "string") {
      return { path: "resume.instruction", message: `expected a string, got ${Input.kindOf(instruction)}` }
    }
  }
  const cache: unknown = plan.cache
  if (cache !== undefined) {
    const { store, key } = (typeof cache === "object" && cache !== null ? cache : {}) as Record<string, unknown>
    const parts = (typeof store === "object" && store !== null ? store : {}) as Record<string, unknown>
    if (typeof key !== "string" || typeof parts.getParts !== "function" || typeof parts.setParts !== "function") {
      return { path: "cache", message: "expected { store: { getParts, setParts }, key }" }
    }
  }
  return undefined
}

interface Shared {
  readonly target: ProviderService
  readonly plan: Plan<ProviderService, GenerateResponse>
  readonly resolved: ResolvedOptions
  readonly domain: string | undefined
  readonly onRetry: ExecuteOptions["onRetry"]
}

/**
 * Builds an executor's plans over its default deadline and shared guards.
 *
 * @internal
 */
export const make = (env: { readonly defaultTimeout: Duration.Duration | undefined; readonly guards: Guards }) => {
  const { defaultTimeout, guards } = env

  const stepFor: Service["stepFor"] = (target, stepOptions = {}) => ({
    target,
    name: target.name,
    domain: stepOptions.domain,
    timeout: stepOptions.timeout === "none" ? undefined : (stepOptions.timeout ?? defaultTimeout),
    retry: stepOptions.retry === false ? undefined : stepOptions.retry,
    breaker: guards.breaker,
    rateLimit: guards.rateLimit,
    tokens: stepOptions.tokens,
    maxConcurrency: target.maxConcurrency,
    answerIssue: providerAnswerIssue
  })

  const planFor = (
    target: ProviderService,
    request: GenerateRequest,
    callOptions: ExecuteOptions,
    resolved: ResolvedOptions
  ): Plan<ProviderService, GenerateResponse> => {
    const cache = guards.cache
    return {
      steps: [
        {
          ...stepFor(target, { domain: callOptions.domain, tokens: tokensOf(request) }),
          timeout: resolved.timeout,
          retry: resolved.retry
        }
      ],
      totalTimeout: resolved.totalTimeout,
      cache:
        cache === undefined || callOptions.cache === false
          ? undefined
          : {
              guard: cache,
              key: cacheKeyOf(
                cache,
                { provider: target.name, request: keyedRequest(request, target.defaultModel) },
                target.name
              ),
              allowStale: callOptions.allowStale ?? false
            },
      onRetry: callOptions.onRetry === undefined ? undefined : retryHookOf(callOptions.onRetry),
      usageOf
    }
  }

  // The plan of a call depends on its request only through the rate limit's token estimate
  // and the cache key: without those, calls with the same options share one plan.
  // With what each plan was built from: options changed since (another provider, domain or onRetry, a
  // deadline checked again) build another plan instead of answering the first call's. One plan an options
  // object: kept by target, an object given a provider per call (per tenant) kept every provider it was ever given.
  const plans = new WeakMap<ExecuteOptions, Shared>()
  const sharedPlan = guards.rateLimit === undefined && guards.cache === undefined
  const planOf = (
    target: ProviderService,
    request: GenerateRequest,
    callOptions: ExecuteOptions,
    resolved: ResolvedOptions
  ): Plan<ProviderService, GenerateResponse> => {
    if (!sharedPlan) return planFor(target, request, callOptions, resolved)
    const domain = callOptions.domain
    const onRetry = callOptions.onRetry
    const shared = plans.get(callOptions)
    if (
      shared !== undefined &&
      shared.target === target &&
      shared.resolved === resolved &&
      shared.domain === domain &&
      shared.onRetry === onRetry
    ) {
      return shared.plan
    }
    const plan = planFor(target, request, callOptions, resolved)
    plans.set(callOptions, { target, plan, resolved, domain, onRetry })
    return plan
  }

  return { stepFor, planOf }
}
