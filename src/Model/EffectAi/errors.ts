/**
 * Errors across the bridge, both ways, decided from data (the `effect/ai` reason class and
 * HTTP status; our `reason`), never from message text; nothing of a request is copied.
 *
 * @internal
 */
import type { Duration } from "effect"
import { Schema } from "effect"
import { AiError as Ai } from "effect/ai"
import * as Input from "../../Input.js"
import {
  type AiError,
  isRetryable,
  ModelError,
  Reason,
  reasonOf,
  ShuttingDownError,
  withUpstreamWords
} from "../../AiError.js"
import { type CallContext, classify } from "../http/errors.js"

const MAX_MESSAGE = 500

// effect/ai descriptions name the request URL; a query string may carry a key.
const safeText = (text: string): string => {
  const cleaned = text.replace(/(https?:\/\/[^\s?#)]+)\?[^\s)#]*/g, "$1?<redacted>")
  return cleaned.length > MAX_MESSAGE ? `${cleaned.slice(0, MAX_MESSAGE)}…` : cleaned
}

/**
 * What a `LanguageModel` or `EmbeddingModel` failed with, as our error: an `AiError` by
 * {@link fromBridged}; anything else (a hand-made service over another SDK, typed loosely) is
 * `Unknown` with its message, rather than a defect that would skip every fallback.
 *
 * @internal
 */
export const fromFailure = (
  error: unknown,
  ctx: CallContext,
  schemaField: "responseFormat" | "tools" = "responseFormat"
): ModelError | ShuttingDownError =>
  Ai.isAiError(error)
    ? fromBridged(error, ctx, schemaField)
    : new ModelError({
        reason: "Unknown",
        message: safeText(
          `${ctx.provider}: the effect/ai service failed with ${Input.kindOf(error)} that is no AiError: ${Input.thrownMessage(error)}`
        ),
        provider: ctx.provider,
        model: ctx.model
      })

/** The `module` of the `AiError`s we make. @internal */
export const MODULE = "EffectOrchestra"

const isReason = Schema.is(Reason)

// What toAiError wrote in the reason's metadata, only from an AiError of ours.
const ourInfo = (error: Ai.AiError): Record<string, unknown> | undefined => {
  if (error.module !== MODULE) return undefined
  const info: unknown = "metadata" in error.reason ? error.reason.metadata?.["effect-orchestra"] : undefined
  return typeof info === "object" && info !== null ? (info as Record<string, unknown>) : undefined
}

/**
 * {@link fromAiError}, except that a `ShuttingDownError` {@link toAiError} made maps back to
 * one: as an `UnknownError` it would read as `Unknown`, which falls back, where a shutdown
 * admits no more work.
 *
 * @internal
 */
export const fromBridged = (
  error: Ai.AiError,
  ctx: CallContext,
  schemaField: "responseFormat" | "tools" = "responseFormat"
): ModelError | ShuttingDownError =>
  ourInfo(error)?.["error"] === "ShuttingDownError"
    ? new ShuttingDownError({ message: safeText(error.reason.message) })
    : fromAiError(error, ctx, schemaField)

/**
 * The `ModelError` an `AiError` of ours was made from, as {@link toAiError} wrote it in the
 * reason's metadata: read back, a round trip keeps what the reason class cannot say (a
 * `Timeout` is not an `Overloaded`, an answer past its bound (`TooLarge` of `response`) still
 * falls back). Only a `ModelError`'s: another error's reason would change what it means.
 */
const madeFrom = (
  error: Ai.AiError
): { readonly reason: Reason; readonly field: string | undefined; readonly status: number | undefined } | undefined => {
  const info = ourInfo(error)
  if (info === undefined) return undefined
  const { error: tag, reason, field, status } = info
  if (tag !== "ModelError" || !isReason(reason)) return undefined
  return {
    reason,
    field: typeof field === "string" ? field : undefined,
    status: typeof status === "number" ? status : undefined
  }
}

/**
 * Maps an `effect/ai` `AiError` to our `ModelError` from its reason class and HTTP status:
 * rate limits keep `retryAfter`, quota and credentials are `Unauthorized`, provider
 * failures go by status (500 `Overloaded`, 503 `Unavailable`, 504 `Timeout`), malformed
 * answers are `Decode`, bad input `InvalidRequest` with the parameter as `field`, a schema
 * the provider cannot represent `InvalidRequest` of `schemaField` (the tools, when the request
 * sent no response format). One that {@link toAiError} made from a `ModelError` maps back to its
 * reason, field and status. Request details are never copied (the error keeps no cause; URLs
 * lose their query string).
 *
 * @internal
 */
export const fromAiError = (
  error: Ai.AiError,
  ctx: CallContext,
  schemaField: "responseFormat" | "tools" = "responseFormat"
): ModelError => {
  const reason = error.reason
  const ours = madeFrom(error)
  const status = ours !== undefined ? ours.status : "http" in reason ? reason.http?.response?.status : undefined
  // An effect/ai error's words are its provider's (a URL, an account): the gateway keeps them from its
  // clients, unless the error is one this library made (`ours`).
  const make = (
    kind: Reason,
    extra: { readonly field?: string | undefined; readonly retryAfter?: Duration.Duration } = {}
  ) => {
    const made = new ModelError({
      reason: kind,
      message: safeText(`${ctx.provider}: ${error.module}.${error.method}: ${reason.message}`),
      provider: ctx.provider,
      model: ctx.model,
      status,
      ...extra
    })
    return ours === undefined ? withUpstreamWords(made) : made
  }
  if (ours !== undefined) {
    const retryAfter = reason._tag === "RateLimitError" ? reason.retryAfter : undefined
    return make(ours.reason, {
      ...(ours.field === undefined ? {} : { field: ours.field }),
      ...(retryAfter === undefined ? {} : { retryAfter })
    })
  }
  switch (reason._tag) {
    case "RateLimitError":
      return make("RateLimited", reason.retryAfter === undefined ? {} : { retryAfter: reason.retryAfter })
    case "QuotaExhaustedError":
    case "AuthenticationError":
      return make("Unauthorized")
    case "ContentPolicyError":
      return make("ContentFilter")
    case "InvalidRequestError":
      return status === 413 ? make("TooLarge") : make("InvalidRequest", { field: reason.parameter })
    case "InternalProviderError":
    case "UnknownError":
      if (status === undefined) return make(reason._tag === "UnknownError" ? "Unknown" : "Overloaded")
      // A 501 is what this provider does not implement: `InvalidRequest` of the model, so that the
      // next provider is tried, as the HTTP providers answer it.
      // A 404 says no more (effect/ai's reason for every 404): it may be an API's own answer about the
      // request (an id it does not know), so no fallback, as before a bare 404 of an HTTP provider fell back.
      if (status === 404) return make("InvalidRequest", { field: "request" })
      return status === 501 ? make("InvalidRequest", { field: "model" }) : make(classify(status, { reasons: [] }))
    case "NetworkError":
      return reason.reason === "TransportError" ? make("Transport") : make("InvalidRequest", { field: "request" })
    case "InvalidResponseError":
    case "InvalidOutputError":
    case "StructuredOutputError":
      return make("Decode")
    case "ToolNotFoundError":
    case "ToolParameterValidationError":
      return make("Decode", { field: "toolCalls" })
    case "UnsupportedSchemaError":
      // It names no schema: the caller knows which one the request sent.
      return make("InvalidRequest", { field: schemaField })
    case "InvalidUserInputError":
      return make("InvalidRequest", { field: "messages" })
    case "InvalidToolResultError":
    case "ToolResultEncodingError":
    case "ToolConfigurationError":
    case "ToolkitRequiredError":
      return make("InvalidRequest", { field: "tools" })
  }
}

const statusCodes = (status: number | undefined) =>
  status === undefined ? {} : { http: { response: { status, headers: {} } } }

const metadataOf = (error: AiError): Ai.ProviderMetadata => {
  const info: Record<string, string | number> = { error: error._tag, reason: reasonOf(error) }
  if ("provider" in error && error.provider !== undefined) info["provider"] = error.provider
  if (error._tag === "ModelError" && error.status !== undefined) info["status"] = error.status
  if (error._tag === "ModelError" && error.field !== undefined) info["field"] = error.field
  return { "effect-orchestra": info }
}

const reasonOfModelError = (
  kind: Reason,
  error: AiError,
  method: string,
  extra: {
    readonly status?: number | undefined
    readonly field?: string | undefined
    readonly retryAfter?: Duration.Duration | undefined
  }
): Ai.AiErrorReason => {
  const metadata = metadataOf(error)
  const description = error.message
  const http = statusCodes(extra.status)
  switch (kind) {
    case "RateLimited":
      return new Ai.RateLimitError({
        metadata,
        ...http,
        ...(extra.retryAfter === undefined ? {} : { retryAfter: extra.retryAfter })
      })
    case "Overloaded":
    case "Unavailable":
    case "Timeout":
      return new Ai.InternalProviderError({ description, metadata, ...http })
    case "Transport":
      return new Ai.NetworkError({
        reason: "TransportError",
        method,
        url: `effect-orchestra:${"provider" in error ? (error.provider ?? "") : ""}`,
        description
      })
    case "InvalidRequest":
      return new Ai.InvalidRequestError({
        description,
        metadata,
        ...http,
        ...(extra.field === undefined ? {} : { parameter: extra.field })
      })
    case "TooLarge":
      return new Ai.InvalidRequestError({ description, constraint: "too large", metadata, ...http })
    case "Unauthorized":
      // A 402, or a 429 that is no rate limit (OpenAI's insufficient_quota): the account's quota, which
      // effect/ai has its own reason for; a refused key or permission is an AuthenticationError.
      if (extra.status === 402 || extra.status === 429) return new Ai.QuotaExhaustedError({ metadata, ...http })
      return new Ai.AuthenticationError({
        kind: extra.status === 401 ? "InvalidKey" : extra.status === 403 ? "InsufficientPermissions" : "Unknown",
        description,
        metadata,
        ...http
      })
    case "ContentFilter":
      return new Ai.ContentPolicyError({ description, metadata, ...http })
    case "Decode":
      return new Ai.InvalidResponseError({ description, metadata, ...http })
    case "Unknown":
      return new Ai.UnknownError({ description, metadata, ...http })
  }
}

const aiReasonOf = (error: AiError, method: string): Ai.AiErrorReason => {
  switch (error._tag) {
    case "ModelError":
      return reasonOfModelError(error.reason, error, method, error)
    case "TimeoutError":
    case "CircuitOpenError":
      return isRetryable(error) || error._tag === "CircuitOpenError"
        ? new Ai.InternalProviderError({ description: error.message, metadata: metadataOf(error) })
        : new Ai.UnknownError({ description: error.message, metadata: metadataOf(error) })
    case "ShuttingDownError":
      return new Ai.UnknownError({ description: error.message, metadata: metadataOf(error) })
    case "StreamInterruptedError":
      return isReason(error.reason)
        ? reasonOfModelError(error.reason, error, method, {})
        : new Ai.UnknownError({ description: error.message, metadata: metadataOf(error) })
    case "FallbackExhaustedError":
      return aiReasonOf(error.last, method)
  }
}

/**
 * Maps one of our failures to `effect/ai`'s `AiError`, keeping the original as the cause of
 * the reason (`error.reason.cause`): rate limits keep `retryAfter`; `Overloaded`,
 * `Unavailable`, `Timeout`, a retryable `TimeoutError` and an open circuit are
 * `InternalProviderError` (retryable); `Transport` is a `NetworkError`; `InvalidRequest` and
 * `TooLarge` an `InvalidRequestError` (the field as `parameter`); `Unauthorized` an
 * `AuthenticationError` (a `QuotaExhaustedError` with status 402 or 429, an account's quota);
 * `ContentFilter` a `ContentPolicyError`; `Decode` an
 * `InvalidResponseError`; the rest `UnknownError`. An exhausted fallback chain maps its last
 * error. The reason's `metadata["effect-orchestra"]` names our error, reason, provider and status.
 *
 * @internal
 */
export const toAiError = (error: AiError, method: string): Ai.AiError => {
  const reason = aiReasonOf(error, method)
  Object.defineProperty(reason, "cause", { value: error, enumerable: false, configurable: true, writable: true })
  return Ai.make({ module: MODULE, method, reason })
}
