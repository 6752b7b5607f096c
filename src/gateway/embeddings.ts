/**
 * `POST /v1/embeddings`: key, body, model, budget reservation (input tokens only), the
 * embedding through the pipeline, vectors back in input order as floats or base64.
 *
 * @internal
 */
import { Effect, Exit } from "effect"
import type { HttpServerRequest } from "effect/http"
import type { AiError, ModelError } from "../AiError.js"
import { type EmbedRequest, type EmbedResponse, estimateTokens, validateEmbed } from "../Model.js"
import type { Entry } from "./lifecycle.js"
import {
  answered,
  authenticate,
  checkAllowed,
  cuttable,
  draining,
  type Env,
  errorOf,
  failure,
  handler,
  json,
  onRequestEnd,
  readJson,
  type RequestSpan,
  traced,
  logWithheld
} from "./routes.js"
import { CurrentTracker, makeTracker, type Target, type Tracker } from "./upstream.js"
import { type EmbedCall, parseEmbed } from "./request.js"
import { withParam } from "./errors.js"
import * as Wire from "./response.js"

/** A request's budget reservation: made (`held`), then released or settled once (`closed`). */
interface Held {
  reservation: unknown
  held: boolean
  closed: boolean
}

// A refusal names the library's field (`texts`, `texts[2]`), the gateway's limits' or a provider's own: the client
// sent `input`.
const asInput = <E extends AiError>(error: E): E | ModelError => {
  if (error._tag !== "ModelError" || error.reason !== "InvalidRequest") return error
  const field = error.field
  if (field === undefined || !(field === "texts" || field.startsWith("texts["))) return error
  return withParam(error, `input${field.slice("texts".length)}`)
}

/**
 * @internal
 */
export const make = (env: Env) => {
  const { executor, upstream, metrics } = env

  const embed = (target: Target, request: EmbedRequest): Effect.Effect<EmbedResponse, AiError> =>
    target._tag === "Domain"
      ? upstream.router.embed(request, target.domain.name)
      : executor.embed({ ...request, model: target.model }, { provider: target.provider, retry: env.retry ?? false })

  const keys = env.keys

  // As a chat answer's: a domain's names it, its provider and attempts (an embedding has neither fallback nor
  // cache: one step, its retries counted by the tracker); `provider/model`'s its provider alone.
  const provenance = (target: Target, response: EmbedResponse, tracker: Tracker): Record<string, string> | undefined =>
    !env.options.provenanceHeaders
      ? undefined
      : target._tag === "Domain"
        ? {
            "x-orchestra-domain": target.domain.name,
            "x-orchestra-provider": response.provider,
            "x-orchestra-attempts": String(tracker.calls),
            "x-orchestra-fallback": "false",
            "x-orchestra-source": "provider"
          }
        : { "x-orchestra-provider": response.provider }

  // Generator functions made once, not per request (a generator function made per call gets a
  // map of its own in the old generation, which keeps the request through every young collection).
  const respond = Effect.fnUntraced(function* (
    span: RequestSpan | undefined,
    entry: Entry,
    started: number,
    call: EmbedCall,
    target: Target,
    valid: EmbedRequest,
    inputTokens: number,
    held: Held
  ) {
    const tracker = makeTracker()
    const exit = yield* cuttable(entry, Effect.provideService(embed(target, valid), CurrentTracker, tracker))
    if (Exit.isFailure(exit)) {
      span?.end(exit)
      if (entry.cut) return answered(env, "embeddings", started, draining(env), tracker.upstreamMs)
      const error = asInput(yield* errorOf(exit.cause))
      const id = env.nextId("req_")
      yield* logWithheld(error, id)
      return answered(env, "embeddings", started, failure(env, error), tracker.upstreamMs, id)
    }
    // No text embeds in 0 tokens: a provider that says 0 (or nothing) did not count, and the estimate is charged.
    const reported = exit.value.usage?.inputTokens
    const usage = {
      inputTokens: reported !== undefined && reported > 0 && Number.isFinite(reported) ? reported : inputTokens,
      outputTokens: 0
    }
    if (span !== undefined) {
      span.span.attribute("gen_ai.provider.name", exit.value.provider)
      span.span.attribute("gen_ai.response.model", exit.value.model)
      span.span.attribute("gen_ai.usage.input_tokens", usage.inputTokens)
      span.end(exit)
    }
    // Closed and told to the store in one uninterruptible step (as the chat route's).
    yield* Effect.uninterruptible(
      Effect.suspend(() => {
        if (!held.held || held.closed || keys === undefined) return Effect.void
        held.closed = true
        env.held.delete(held.reservation)
        return keys.settle(held.reservation, usage)
      })
    )
    metrics.tokens(usage.inputTokens, 0)
    const text = Wire.embeddings(call.model, exit.value, call.encoding, usage.inputTokens)
    return answered(
      env,
      "embeddings",
      started,
      json(200, text, provenance(target, exit.value, tracker)),
      tracker.upstreamMs
    )
  })

  const handle = Effect.fnUntraced(function* (
    request: HttpServerRequest.HttpServerRequest,
    started: number,
    entry: Entry
  ) {
    const key = yield* authenticate(env, request)
    const body = yield* readJson(env, request)
    const parsed = parseEmbed(body)
    if (parsed._tag === "Failure") return yield* Effect.fail(parsed.failure)
    const call = parsed.success
    const target = yield* upstream.resolve(call.model, key?.allowedModels)
    yield* checkAllowed(key, call.model)
    const valid = yield* Effect.mapError(validateEmbed(call.request, executor.limits), asInput)
    let inputTokens = 0
    for (const text of valid.texts) inputTokens += estimateTokens(text)
    const held: Held = { reservation: undefined, held: false, closed: false }
    if (key !== undefined && keys !== undefined) {
      const hold = (made: unknown) => {
        if (held.held) return
        held.held = true
        held.reservation = made
        env.held.add(made)
      }
      // Its release registered first, the reservation handed over as the store holds it (as the chat route's).
      yield* onRequestEnd(
        Effect.suspend(() => {
          if (!held.held || held.closed) return Effect.void
          held.closed = true
          env.held.delete(held.reservation)
          return keys.release(held.reservation)
        })
      )
      yield* Effect.uninterruptibleMask((restore) =>
        Effect.map(restore(keys.reserve(key, call.model, { inputTokens, maxOutputTokens: 0 }, hold)), hold)
      )
    }
    const attributes = {
      "gen_ai.operation.name": "embeddings",
      "gen_ai.request.model": call.model,
      ...(key === undefined ? {} : { "orchestra.key.id": key.id })
    }
    return yield* traced(`embeddings ${call.model}`, attributes, (span) =>
      respond(span, entry, started, call, target, valid, inputTokens, held)
    )
  })

  return handler(env, "embeddings", handle)
}
