/**
 * `stream`: the stream engine (`policy/stream.ts`) given what the executor adds to a
 * stream's options: its provider by default, the request checks under its limits, its
 * steps (`plan.ts`), its retry policy for `retry: true`, and the shared cache.
 *
 * @internal
 */
import { Stream } from "effect"
import { type AiError, invalidRequest, type ModelError } from "../AiError.js"
import type { Guards, Service, StreamOptions } from "../Executor.js"
import * as Input from "../Input.js"
import type { GenerateRequest, RequestLimits, Service as ProviderService, StreamPart } from "../Model.js"
import type { RetryPolicy } from "../Policy.js"
import { type Engine, slotLimitIssue } from "../policy/engine.js"
import type { Streams } from "../policy/stream.js"
import { labelIssue } from "../stats/labels.js"
import { checkRequest } from "./generate.js"
import { kinds, providerSlotIssue, thrownIssue } from "./options.js"
import { tokensOf } from "./plan.js"
import { issueError, type Refuse, type Refused } from "./refusal.js"

/**
 * Builds an executor's `stream`.
 *
 * @internal
 */
const streamKeys: ReadonlySet<string> = new Set([
  "provider",
  "steps",
  "domain",
  "retry",
  "firstChunkTimeout",
  "idleTimeout",
  "totalTimeout",
  "resume",
  "cache",
  "onRetry"
])

const resumeKeys: ReadonlySet<string> = new Set(["maxResumes", "instruction", "minOverlap"])

// `cache: "no"` is a mistake, not "on".
const flags = ["cache"] as const

const noOptions: StreamOptions = {}

// A refused stream is counted on its first step, as a call's refusal is on its provider.
const firstOf = (options: StreamOptions) => (Array.isArray(options.steps) ? options.steps[0] : undefined)

export const make = (env: {
  readonly streams: Streams
  readonly provider: ProviderService
  readonly limits: RequestLimits
  readonly basePolicy: RetryPolicy
  readonly guards: Guards
  readonly stepFor: Service["stepFor"]
  readonly refuse: Refuse
  readonly refused: Refused
  /** The engine's check of a provider's limit against its name's (`policy/engine.ts`). */
  readonly claimSlot: Engine["claimSlot"]
}) => {
  const { streams, provider, limits, basePolicy, guards, stepFor, refuse, refused, claimSlot } = env

  // A provider's `maxConcurrency` checked as `execute` checks its `provider` option: one limit per
  // name, else two streams of one name would share the slots of the first limit seen.
  const slotsIssue = (options: StreamOptions): Input.Issue | undefined => {
    const target = options.provider
    return (
      stepSlotsIssue(options.steps) ??
      (target?.maxConcurrency === undefined
        ? undefined
        : providerSlotIssue(claimSlot, target, "provider.maxConcurrency"))
    )
  }

  // A step's field whose getter throws is left to the stream's plan, which names it (`steps[0].provider`).
  const stepSlotsIssue = (steps: unknown): Input.Issue | undefined => {
    if (!Array.isArray(steps)) return undefined
    try {
      for (let i = 0; i < steps.length; i++) {
        const step: unknown = steps[i]
        if (typeof step !== "object" || step === null) continue
        const target = (step as { readonly provider?: unknown }).provider
        if (typeof target !== "object" || target === null) continue
        if ((target as ProviderService).maxConcurrency === undefined) continue
        const path = `steps[${i}].provider.maxConcurrency`
        const issue =
          providerSlotIssue(claimSlot, target, path) ?? earlierIssue(steps, i, target as ProviderService, path)
        if (issue !== undefined) return issue
      }
    } catch {
      return undefined
    }
    return undefined
  }

  // A step's provider named by an earlier step with another limit (the engine holds a name's limit only while
  // its streams run, and the steps do not all run at once). Read after the earlier steps were: they are objects.
  const earlierIssue = (
    steps: ReadonlyArray<unknown>,
    i: number,
    target: ProviderService,
    path: string
  ): Input.Issue | undefined => {
    for (let k = 0; k < i; k++) {
      const earlier = (steps[k] as { readonly provider?: ProviderService } | null | undefined)?.provider
      if (typeof earlier !== "object" || earlier === null || earlier.name !== target.name) continue
      if (earlier.maxConcurrency === undefined) continue
      return slotLimitIssue(target.name, earlier.maxConcurrency, target.maxConcurrency!, path)
    }
    return undefined
  }

  // Made once, not per stream: the stream engine hands them the request.
  const validate = (request: GenerateRequest) => checkRequest(request, limits)
  const stepOf = (target: ProviderService, domain: string | undefined, request: GenerateRequest) =>
    stepFor(target, { domain, tokens: tokensOf(request) })
  const refuseStream = (error: ModelError, options: StreamOptions | undefined) => {
    if (options === undefined) return refuse(error, provider, undefined)
    const first = firstOf(options)
    return refuse(error, first?.provider ?? options.provider ?? provider, first?.domain ?? options.domain)
  }

  const stream = (
    request: GenerateRequest,
    streamOptions: StreamOptions = noOptions
  ): Stream.Stream<StreamPart, AiError> => {
    try {
      return streamUnsafe(request, streamOptions)
    } catch (thrown) {
      // A getter (or a `Proxy` trap) of the options that throws: refused naming it, not thrown at the
      // caller, and counted on the executor's provider (the options are not read again to find theirs).
      return Stream.fromEffect(refused(issueError(thrownIssue(streamOptions, thrown)), provider, undefined))
    }
  }

  const streamUnsafe = (request: GenerateRequest, streamOptions: StreamOptions) => {
    const unknown =
      Input.notAnObject("options", streamOptions) ??
      Input.unknownKey(streamOptions, streamKeys) ??
      Input.notOfKind(streamOptions, kinds) ??
      Input.notABoolean(streamOptions, flags) ??
      labelIssue(streamOptions) ??
      (typeof streamOptions.resume === "object" && streamOptions.resume !== null
        ? Input.unknownKey(streamOptions.resume, resumeKeys, "resume.")
        : undefined) ??
      slotsIssue(streamOptions)
    if (unknown !== undefined) {
      const error = invalidRequest(unknown.path, unknown.message)
      // Options that are no object name no provider: counted on the executor's.
      if (typeof streamOptions !== "object" || streamOptions === null) {
        return Stream.fromEffect(refused(error, provider, undefined))
      }
      const first = firstOf(streamOptions)
      return Stream.fromEffect(
        refused(error, first?.provider ?? streamOptions.provider ?? provider, first?.domain ?? streamOptions.domain)
      )
    }
    return streams.stream(request, {
      ...streamOptions,
      provider: streamOptions.provider ?? provider,
      validate,
      refuse: refuseStream,
      stepFor: stepOf,
      basePolicy,
      cacheStore: guards.cache
    })
  }

  return stream
}
