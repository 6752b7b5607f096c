/**
 * `POST /v1/chat/completions`: key, body, model, budget reservation, then the call (or
 * the stream) through the pipeline, then the settlement with the real usage (or the
 * release of the reservation on failure, cancellation or shutdown).
 *
 * A stream's first part is read before the answer starts: until then, retries and
 * fallbacks happen inside the pipeline and a failure is answered with its real status
 * (429, 503, 504...); after it, the answer is `200 text/event-stream` and a failure ends
 * it with an error event. A client that leaves interrupts the request, which cancels the
 * upstream call.
 *
 * @internal
 */
import { type Cause, Effect, Exit, Pull, Stream } from "effect"
import type { HttpServerRequest } from "effect/http"
import { HttpServerResponse } from "effect/http"
import { type AiError, ModelError, reasonOf } from "../AiError.js"
import type { ExecuteOptions, StreamOptions } from "../Executor.js"
import { applyTo } from "../Domain.js"
import { type GenerateRequest, type GenerateResponse, reserveInputTokens, validateGenerate } from "../Model.js"
import type { Answer } from "../Router.js"
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
  type KeyIdentity,
  type Keys,
  onRequestEnd,
  readJson,
  type RequestSpan,
  requestIdHeader,
  traced,
  logWithheld
} from "./routes.js"
import { toWire, withParam } from "./errors.js"
import { sharesUpstream } from "./models.js"
import * as Sse from "./sse.js"
import { CurrentTracker, makeTracker, millis, type Target } from "./upstream.js"
import { CurrentCut, type Cut, stopStreams } from "../policy/plan.js"
import { type ChatCall, openAiParam, parseChat, upstreamParam } from "./request.js"
import * as Wire from "./response.js"

// A refusal names the library's field (`toolChoice`, `messages[1]` after hoisted system
// messages): the client is told the parameter it sent instead. One an upstream answered (with its
// HTTP status) names the upstream's parameter, its messages counted from the system prompt it was sent.
const named = (error: AiError, call: ChatCall, target?: Target): AiError => {
  if (error._tag !== "ModelError" || error.reason !== "InvalidRequest" || error.field === undefined) return error
  const param =
    error.status === undefined
      ? openAiParam(error.field, call.hoisted)
      : upstreamParam(error.field, call.hoisted, systemSent(call, target, error.provider))
  return param === error.field ? error : withParam(error, param)
}

// Whether the request went upstream behind a system prompt: the client's, or else the domain's of the provider that
// answered (a domain adds its own only to a request without one).
const systemSent = (call: ChatCall, target: Target | undefined, provider: string | undefined): boolean => {
  if (call.hoisted > 0) return true
  if (target?._tag !== "Domain" || call.request.messages?.some((message) => message.role === "system")) return false
  return target.chain.find((domain) => domain.provider === provider)?.system !== undefined
}

/** A request's reservation, settled or released exactly once (the request scope's finalizer releases it). */
interface Ticket {
  /** What the store holds, once it holds it (`held`). */
  reservation: unknown
  held: boolean
  /** The input tokens it was reserved with: what a stream cut after its first chunk is charged. */
  readonly inputTokens: number
  closed: boolean
}

interface ChainCaps {
  readonly allCapped: boolean
  readonly shared: number | undefined
  readonly largest: number
}

// The answer's attributes, then the span's end: a success.
const answeredWith = (
  request: RequestSpan,
  provider: string,
  model: string,
  finishReason: string,
  usage: { readonly inputTokens: number; readonly outputTokens: number }
) => {
  const span = request.span
  span.attribute("gen_ai.provider.name", provider)
  span.attribute("gen_ai.response.model", model)
  span.attribute("gen_ai.response.finish_reasons", [finishReason])
  span.attribute("gen_ai.usage.input_tokens", usage.inputTokens)
  span.attribute("gen_ai.usage.output_tokens", usage.outputTokens)
  request.end(Exit.void)
}

/**
 * @internal
 */
export const make = (env: Env) => {
  const { executor, upstream, lifecycle, metrics, clock, options } = env
  // A provider target's call options, one object each for calls and streams (with the gateway's
  // deadlines) made once per target: the executor checks options once per options object.
  const providerOptions = new WeakMap<Target, { readonly execute: ExecuteOptions; readonly stream: StreamOptions }>()
  const optionsOf = (target: Extract<Target, { _tag: "Provider" }>) => {
    let found = providerOptions.get(target)
    if (found === undefined) {
      const execute = { provider: target.provider, retry: env.retry ?? false }
      found = { execute, stream: { ...execute, ...options.stream } }
      providerOptions.set(target, found)
    }
    return found
  }

  // Closed once and told to the store in one uninterruptible step (the store's call is bounded by
  // its deadline): a client leaving as its answer is settled would otherwise close the ticket with
  // the store never told, its usage uncharged and its amount held until the lease ends.
  const release = (ticket: Ticket | undefined) =>
    Effect.uninterruptible(
      Effect.suspend(() => {
        if (ticket === undefined || !ticket.held || ticket.closed || env.keys === undefined) return Effect.void
        ticket.closed = true
        env.held.delete(ticket.reservation)
        return env.keys.release(ticket.reservation)
      })
    )

  const settle = (ticket: Ticket | undefined, usage: { inputTokens: number; outputTokens: number }) =>
    Effect.uninterruptible(
      Effect.suspend(() => {
        if (ticket === undefined || !ticket.held || ticket.closed || env.keys === undefined) return Effect.void
        ticket.closed = true
        env.held.delete(ticket.reservation)
        return env.keys.settle(ticket.reservation, usage)
      })
    )

  // A stream cut after its first chunk (an upstream failure, a deadline, a client that left)
  // was answered upstream: it is charged its input estimate and the output read so far (4
  // characters a token), never released for free, or a client could stream and leave. The
  // gateway's token series count the same, with a key or without, so they add up to what the
  // keys' budgets were charged. (The executor's count only the usage a provider reported.)
  const settleCut = (ticket: Ticket | undefined, target: Target, request: GenerateRequest, outputChars: number) => {
    const inputTokens = ticket?.inputTokens ?? estimateOf(target, request).inputTokens
    const outputTokens = Math.ceil(outputChars / 4)
    metrics.tokens(inputTokens, outputTokens)
    return settle(ticket, { inputTokens, outputTokens })
  }

  // The most any step may be charged: a domain's step sends the request with that domain's system
  // prompt and max_tokens applied, and a fallback's may be larger than the first's.
  const estimateOf = (target: Target, request: GenerateRequest) => {
    if (target._tag === "Provider") {
      return {
        inputTokens: reserveInputTokens(request),
        maxOutputTokens: request.maxTokens ?? options.defaultMaxTokens
      }
    }
    let inputTokens = 0
    for (const domain of target.chain) inputTokens = Math.max(inputTokens, reserveInputTokens(applyTo(domain, request)))
    return { inputTokens, maxOutputTokens: request.maxTokens ?? capsOf(target).largest }
  }

  // The output caps of a domain's chain, read once per target: whether every step has its own
  // `maxTokens`, the one they share (if they do), and the largest a step may be sent with.
  const chainCaps = new WeakMap<Target, ChainCaps>()
  const capsOf = (target: Extract<Target, { _tag: "Domain" }>): ChainCaps => {
    let found = chainCaps.get(target)
    if (found === undefined) {
      const caps = target.chain.map((domain) => domain.maxTokens)
      const first = caps[0]
      found = {
        allCapped: caps.every((cap) => cap !== undefined),
        shared: caps.every((cap) => cap === first) ? first : undefined,
        largest: Math.max(...caps.map((cap) => cap ?? options.defaultMaxTokens))
      }
      chainCaps.set(target, found)
    }
    return found
  }

  // Whether one of a key's budgets by model is charged for `model`: the store's answer (one lookup in its index, by
  // the names every gateway using it serves), else its rule (any name of the same upstream model) on this gateway's.
  const byModel = (keys: Keys, key: KeyIdentity, budgets: Readonly<Record<string, unknown>>, model: string) => {
    const charged = keys.chargesModel?.(key, model)
    if (charged !== undefined) return charged
    for (const name in budgets)
      if (Object.hasOwn(budgets, name) && sharesUpstream(upstream.models, name, model)) return true
    return false
  }

  // A budget holds the output reserved, so the answer may not be longer: a request sent without
  // max_tokens (by it or a domain of its chain) could be charged far past the budget's limit.
  const bounded = (key: KeyIdentity | undefined, model: string, target: Target, request: GenerateRequest) => {
    if (key === undefined || env.keys === undefined || request.maxTokens !== undefined) return request
    const budgets = key.budgets
    const charged =
      budgets !== undefined &&
      (budgets.key !== undefined ||
        budgets.team !== undefined ||
        (budgets.models !== undefined && byModel(env.keys, key, budgets.models, model)))
    if (!charged) return request
    if (target._tag === "Provider") return { ...request, maxTokens: options.defaultMaxTokens }
    // A chain whose every domain sets its own max_tokens sends each its own, none above the largest
    // (reserved). One where a step has none is sent with the largest: one value is every step's, and
    // a step left without it would be sent uncapped.
    const caps = capsOf(target)
    return caps.allCapped ? request : { ...request, maxTokens: caps.largest }
  }

  // What a call is sent with as its max_tokens, for its span: the request's, or its domains' when they agree.
  const sentMaxTokens = (target: Target, sent: GenerateRequest): number | undefined =>
    sent.maxTokens !== undefined || target._tag === "Provider" ? sent.maxTokens : capsOf(target).shared

  const reserve = (key: KeyIdentity | undefined, model: string, target: Target, request: GenerateRequest) =>
    key === undefined || env.keys === undefined
      ? Effect.succeed(undefined)
      : Effect.suspend(() => {
          const keys = env.keys!
          const estimate = estimateOf(target, request)
          const ticket: Ticket = {
            reservation: undefined,
            held: false,
            inputTokens: estimate.inputTokens,
            closed: false
          }
          const hold = (reservation: unknown) => {
            if (ticket.held) return
            ticket.held = true
            ticket.reservation = reservation
            env.held.add(reservation)
          }
          // Its release is registered first, and the store hands the reservation over as soon as it
          // holds it (`onHeld`): an interruption (a client that leaves) landing at any step after the
          // hold was made still releases it, rather than leaving it held until its lease ends. A
          // store that does not call `onHeld` hands it back on its answer, before an interruption can land.
          // Whatever happens next (an answer, a failure, a stream body never started), the request
          // scope's end releases what was not settled.
          return Effect.andThen(
            onRequestEnd(release(ticket)),
            Effect.uninterruptibleMask((restore) =>
              Effect.map(restore(keys.reserve(key, model, estimate, hold)), (reservation) => {
                hold(reservation)
                return ticket
              })
            )
          )
        })

  const provenance = (answer: Answer): Record<string, string> =>
    options.provenanceHeaders
      ? {
          "x-orchestra-domain": answer.domain,
          "x-orchestra-provider": answer.provider,
          "x-orchestra-attempts": String(answer.attempts),
          "x-orchestra-fallback": String(answer.fallbackUsed),
          "x-orchestra-source": answer.source
        }
      : {}

  const call = (
    target: Target,
    request: GenerateRequest
  ): Effect.Effect<{ readonly response: GenerateResponse; readonly headers: Record<string, string> }, AiError> =>
    target._tag === "Domain"
      ? Effect.map(upstream.router.execute(request, target.domain.name), (answer) => ({
          response: answer.response,
          headers: provenance(answer)
        }))
      : Effect.map(executor.execute({ ...request, model: target.model }, optionsOf(target).execute), (response) => ({
          response,
          headers: options.provenanceHeaders ? { "x-orchestra-provider": response.provider } : {}
        }))

  const complete = Effect.fnUntraced(function* (
    entry: Entry,
    started: number,
    chatCall: ChatCall,
    target: Target,
    request: GenerateRequest,
    reserved: Ticket | undefined,
    span: RequestSpan | undefined
  ) {
    const tracker = makeTracker()
    const exit = yield* cuttable(entry, Effect.provideService(call(target, request), CurrentTracker, tracker))
    if (Exit.isFailure(exit)) {
      span?.end(exit)
      yield* release(reserved)
      if (entry.cut) return answered(env, "chat", started, draining(env), tracker.upstreamMs)
      const error = named(yield* errorOf(exit.cause), chatCall, target)
      const id = env.nextId("req_")
      yield* logWithheld(error, id)
      return answered(env, "chat", started, failure(env, error), tracker.upstreamMs, id)
    }
    const { response, headers } = exit.value
    yield* settle(reserved, { inputTokens: response.usage.inputTokens, outputTokens: response.usage.outputTokens })
    metrics.tokens(response.usage.inputTokens, response.usage.outputTokens)
    if (response.finishReason === "error") {
      const error = Sse.endedInError(response)
      span?.end(Exit.fail(error))
      const id = env.nextId("req_")
      yield* logWithheld(error, id)
      return answered(env, "chat", started, failure(env, error), tracker.upstreamMs, id)
    }
    if (span !== undefined) {
      answeredWith(span, response.provider, response.model, response.finishReason, response.usage)
    }
    const body = Wire.chatCompletion(env.nextId("chatcmpl-"), created(), chatCall.model, response)
    return answered(env, "chat", started, json(200, body, headers), tracker.upstreamMs)
  })

  const created = () => Math.floor(clock.currentTimeMillisUnsafe() / 1000)

  const streamed = Effect.fnUntraced(function* (
    entry: Entry,
    started: number,
    call: ChatCall,
    target: Target,
    request: GenerateRequest,
    reserved: Ticket | undefined,
    span: RequestSpan | undefined
  ) {
    const tracker = makeTracker()
    const parts =
      target._tag === "Domain"
        ? upstream.router.stream(request, target.domain.name, options.stream)
        : executor.stream({ ...request, model: target.model }, optionsOf(target).stream)
    // The drain's cut ends the stream through the pipeline (an error event, never `[DONE]`).
    const cut: Cut = { error: undefined }
    lifecycle.onCut(entry, (error) => stopStreams(cut, error))
    // Provided to the pull's making, whose context every pull runs with: `Stream.provideService`
    // added both to the context again on each pull.
    const pull = yield* Stream.toPull(parts).pipe(
      Effect.provideService(CurrentTracker, tracker),
      Effect.provideService(CurrentCut, cut)
    )
    const first = yield* Effect.exit(pull)
    if (Exit.isFailure(first)) {
      yield* release(reserved)
      lifecycle.leave(entry)
      const error: AiError = Pull.isDoneCause(first.cause)
        ? new ModelError({ reason: "Transport", message: "the stream ended before its first event" })
        : named(yield* errorOf(first.cause as Cause.Cause<AiError>), call, target)
      span?.end(Exit.fail(error))
      const id = env.nextId("req_")
      yield* logWithheld(error, id)
      return answered(env, "chat_stream", started, failure(env, error), tracker.upstreamMs, id)
    }
    // Finished in error before any output: answered with its status, as a failure before the first chunk is.
    const finish = first.value.find((part) => part._tag === "Finish")
    if (finish?.finishReason === "error" && Sse.outputCharsOf(first.value) === 0) {
      lifecycle.leave(entry)
      yield* settle(reserved, { inputTokens: finish.usage.inputTokens, outputTokens: finish.usage.outputTokens })
      metrics.tokens(finish.usage.inputTokens, finish.usage.outputTokens)
      const error = Sse.endedInError(finish)
      span?.end(Exit.fail(error))
      const id = env.nextId("req_")
      yield* logWithheld(error, id)
      return answered(env, "chat_stream", started, failure(env, error), tracker.upstreamMs, id)
    }
    let ended = false
    const requestId = env.nextId("req_")
    const end = (ending: Sse.Ending) =>
      Effect.suspend(() => {
        if (ended) return Effect.void
        ended = true
        lifecycle.leave(entry)
        const elapsed = millis(clock) - started
        switch (ending._tag) {
          case "Finished": {
            const usage = ending.finish.usage
            const finish = ending.finish
            if (span !== undefined) answeredWith(span, finish.provider, finish.model, finish.finishReason, usage)
            metrics.tokens(usage.inputTokens, usage.outputTokens)
            metrics.answered("chat_stream", 200, elapsed, undefined)
            return settle(reserved, { inputTokens: usage.inputTokens, outputTokens: usage.outputTokens })
          }
          case "Failed": {
            span?.end(Exit.fail(ending.error))
            metrics.failed(reasonOf(ending.error))
            // Counted under the status its error event carries (502, 504...), as a client's leaving under 499:
            // under 200 a cut stream would pass for a whole answer in a status-based error rate.
            metrics.answered("chat_stream", toWire(ending.error).status, elapsed, undefined)
            const usage = ending.usage
            if (usage === undefined) {
              return Effect.andThen(
                logWithheld(ending.error, requestId),
                settleCut(reserved, target, request, ending.outputChars)
              )
            }
            metrics.tokens(usage.inputTokens, usage.outputTokens)
            return Effect.andThen(
              logWithheld(ending.error, requestId),
              settle(reserved, { inputTokens: usage.inputTokens, outputTokens: usage.outputTokens })
            )
          }
          case "Cancelled":
            span?.end(Exit.interrupt())
            metrics.failed("ClientClosed")
            metrics.answered("chat_stream", 499, elapsed, undefined)
            return settleCut(reserved, target, request, ending.outputChars)
        }
      })
    // A client gone before the body starts: the server never runs it, the request scope still ends.
    yield* onRequestEnd(end({ _tag: "Cancelled", outputChars: Sse.outputCharsOf(first.value) }))
    const body = Sse.body(first.value, pull, {
      id: env.nextId("chatcmpl-"),
      created: created(),
      model: call.model,
      includeUsage: call.includeUsage,
      onFirstBytes: () => {
        const at = millis(clock) - started
        metrics.timeToFirstToken.record(at)
        metrics.streamOverhead(at - tracker.upstreamMs)
      },
      onEnd: end
    })
    return HttpServerResponse.stream(body, {
      contentType: "text/event-stream",
      headers: { "cache-control": "no-cache", "x-accel-buffering": "no", [requestIdHeader]: requestId }
    })
  })

  const handle = Effect.fnUntraced(function* (
    request: HttpServerRequest.HttpServerRequest,
    started: number,
    entry: Entry
  ) {
    const key = yield* authenticate(env, request)
    const body = yield* readJson(env, request)
    const parsed = parseChat(body)
    if (parsed._tag === "Failure") return yield* Effect.fail(parsed.failure)
    const chatCall = parsed.success
    const target = yield* upstream.resolve(chatCall.model, key?.allowedModels)
    yield* checkAllowed(key, chatCall.model)
    const valid = yield* Effect.mapError(validateGenerate(chatCall.request, executor.limits), (error) =>
      named(error, chatCall)
    )
    const reserved = yield* reserve(key, chatCall.model, target, valid)
    const sent = bounded(key, chatCall.model, target, valid)
    const maxTokens = sentMaxTokens(target, sent)
    const attributes = {
      "gen_ai.operation.name": "chat",
      "gen_ai.request.model": chatCall.model,
      ...(maxTokens === undefined ? {} : { "gen_ai.request.max_tokens": maxTokens }),
      ...(valid.temperature === undefined ? {} : { "gen_ai.request.temperature": valid.temperature }),
      ...(key === undefined ? {} : { "orchestra.key.id": key.id })
    }
    return yield* traced(`chat ${chatCall.model}`, attributes, (span) =>
      chatCall.stream
        ? streamed(entry, started, chatCall, target, sent, reserved, span)
        : complete(entry, started, chatCall, target, sent, reserved, span)
    )
  })

  return handler(env, "chat", handle)
}
