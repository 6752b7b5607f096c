/**
 * `stream`: the stream engine (`policy/stream.ts`) given what the executor adds to a
 * stream's options: its provider by default, the request checks under its limits, its
 * steps (`plan.ts`), its retry policy for `retry: true`, and the shared cache.
 *
 * @internal
 */
import { Effect, Stream } from "effect"
import { type AiError, invalidRequest } from "../AiError.js"
import type { Guards, Service, StreamOptions } from "../Executor.js"
import * as Input from "../Input.js"
import type { GenerateRequest, RequestLimits, Service as ProviderService, StreamPart } from "../Model.js"
import type { RetryPolicy } from "../Policy.js"
import type { Streams } from "../policy/stream.js"
import { labelIssue } from "../stats/labels.js"
import { checkRequest } from "./generate.js"
import { kinds, thrownIssue } from "./options.js"
import { tokensOf } from "./plan.js"
import type { Refuse } from "./refusal.js"

// The request checked (`checkRequest`: one that throws when read is refused, not a defect).
const validated = (request: GenerateRequest, limits: RequestLimits) => {
  const error = checkRequest(request, limits)
  return error === undefined ? Effect.succeed(request) : Effect.fail(error)
}

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

export const make = (env: {
  readonly streams: Streams
  readonly provider: ProviderService
  readonly limits: RequestLimits
  readonly basePolicy: RetryPolicy
  readonly guards: Guards
  readonly stepFor: Service["stepFor"]
  readonly refuse: Refuse
}) => {
  const { streams, provider, limits, basePolicy, guards, stepFor, refuse } = env

  const stream = (request: GenerateRequest, streamOptions: StreamOptions = {}): Stream.Stream<StreamPart, AiError> => {
    try {
      return streamUnsafe(request, streamOptions)
    } catch (thrown) {
      // A getter (or a `Proxy` trap) of the options that throws: refused naming it, not thrown at the caller.
      const issue = thrownIssue(streamOptions, thrown)
      return Stream.fail(invalidRequest(issue.path, issue.message))
    }
  }

  const streamUnsafe = (request: GenerateRequest, streamOptions: StreamOptions) => {
    const unknown =
      Input.notAnObject("options", streamOptions) ??
      Input.unknownKey(streamOptions, streamKeys) ??
      Input.notOfKind(streamOptions, kinds) ??
      labelIssue(streamOptions) ??
      (typeof streamOptions.resume === "object" && streamOptions.resume !== null
        ? Input.unknownKey(streamOptions.resume, resumeKeys, "resume.")
        : undefined)
    if (unknown !== undefined) return Stream.fail(invalidRequest(unknown.path, unknown.message))
    return streams.stream(request, {
      ...streamOptions,
      provider: streamOptions.provider ?? provider,
      // A request refused is counted on its first step, as a call's is.
      validate: (r) =>
        Effect.mapError(validated(r, limits), (error) => {
          const first = Array.isArray(streamOptions.steps) ? streamOptions.steps[0] : undefined
          return refuse(
            error,
            first?.provider ?? streamOptions.provider ?? provider,
            first?.domain ?? streamOptions.domain
          )
        }),
      stepFor: (target, domain) => stepFor(target, { domain, tokens: tokensOf(request) }),
      basePolicy,
      cacheStore: guards.cache
    })
  }

  return stream
}
