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
import type { Streams } from "../policy/stream.js"
import { labelIssue } from "../stats/labels.js"
import { checkRequest } from "./generate.js"
import { kinds, thrownIssue } from "./options.js"
import { tokensOf } from "./plan.js"
import type { Refuse, Refused } from "./refusal.js"

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
}) => {
  const { streams, provider, limits, basePolicy, guards, stepFor, refuse, refused } = env

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
      const issue = thrownIssue(streamOptions, thrown)
      return Stream.fromEffect(refused(invalidRequest(issue.path, issue.message), provider, undefined))
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
        : undefined)
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
