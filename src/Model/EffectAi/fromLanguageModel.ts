/**
 * An `effect/ai` `LanguageModel` (and optional `EmbeddingModel`) in context as a
 * `ModelProvider`: tools declared, never run; every call bounded (timeout, idle deadline,
 * answer size); errors mapped by {@link fromAiError}.
 *
 * @internal
 */
import { Context, Effect, Option, Result, Stream } from "effect"
import { AiError as Ai, EmbeddingModel, LanguageModel, Model as AiModel, type Response } from "effect/ai"
import { type AiError, invalidRequest, ModelError, type ShuttingDownError } from "../../AiError.js"
import * as Input from "../../Input.js"
import * as Model from "../../Model.js"
import type { Options } from "../EffectAi.js"
import { assemble } from "../http/assemble.js"
import { tokenCount } from "../http/decode.js"
import * as Client from "../http/client.js"
import { type CallContext, malformed, requestTimeout, unevenVectors } from "../http/errors.js"
import { defaults } from "../http/options.js"
import {
  type AnyTools,
  argumentsText,
  finishReasonOf,
  nonEmpty,
  refusalCollector,
  signatureOf,
  toolkitOf,
  toPrompt,
  usageOf
} from "./convert.js"
import { withToolCalls } from "../http/assemble.js"
import { asksOneToolCall, oneToolCallRefused } from "../validate.js"
import { fromBridged, fromFailure } from "./errors.js"

const settingKeys = ["temperature", "maxTokens", "topP", "stop", "seed", "responseFormat", "parallelToolCalls"] as const

/**
 * Builds the provider from the `LanguageModel` (and, when present, `EmbeddingModel`) in
 * context.
 *
 * @internal
 */
const OPTIONS = new Set([
  "name",
  "model",
  "embeddingModel",
  "context",
  "timeout",
  "streamIdleTimeout",
  "maxOutputChars",
  "maxConcurrency",
  "requestLimits"
])

// A misspelt option (`streamIdelTimeout`) would otherwise leave its default in place unseen.
const knownOptions = (options: object): Input.Checked<void> => {
  if (typeof options !== "object" || options === null) {
    return Result.fail({
      path: "options",
      message: `expected an object, got ${Input.kindOf(options)}`
    })
  }
  const unknown = Input.misspeltKey(options, OPTIONS)
  return unknown === undefined ? Result.succeed(undefined) : Result.fail(unknown)
}

export const make = Effect.fnUntraced(function* (given: Options = {}) {
  const lm = yield* LanguageModel.LanguageModel
  const embedder = yield* Effect.serviceOption(EmbeddingModel.EmbeddingModel)
  // The vector size its provider package declares beside it, which effect/ai never compares with the vectors.
  const dimensions = yield* Effect.serviceOption(EmbeddingModel.Dimensions)
  const providerName = yield* Effect.serviceOption(AiModel.ProviderName)
  const modelName = yield* Effect.serviceOption(AiModel.ModelName)
  yield* Input.orOptionError(knownOptions(given))
  // Read once: a getter that throws is an OptionError naming its field, not a defect out of the layer.
  const options = (yield* Input.orOptionError(Input.readFields(given))) as Options
  const checked = yield* Input.orOptionError(
    Input.all([
      options.context === undefined || typeof options.context === "function"
        ? Result.succeed(undefined)
        : Result.fail({
            path: "context",
            message: `expected a function from the request to a Context, got ${Input.kindOf(options.context)}`
          }),
      Input.duration("timeout", Input.orDefault(options.timeout, defaults.timeout)),
      Input.duration("streamIdleTimeout", Input.orDefault(options.streamIdleTimeout, defaults.streamIdleTimeout)),
      Input.positiveInt("maxOutputChars", Input.orDefault(options.maxOutputChars, 1_000_000)),
      Input.optional(options.maxConcurrency, (n) => Input.positiveInt("maxConcurrency", n)),
      nonEmpty(
        "name",
        Input.orDefault(
          options.name,
          Option.getOrElse(providerName, () => "effect-ai")
        )
      ),
      nonEmpty(
        "model",
        Input.orDefault(
          options.model,
          Option.getOrElse(modelName, () => "unknown")
        )
      ),
      nonEmpty(
        "embeddingModel",
        Input.orDefault(
          options.embeddingModel,
          Input.orDefault(
            options.model,
            Option.getOrElse(modelName, () => "unknown")
          )
        )
      ),
      Model.requestLimits(options.requestLimits)
    ])
  )
  const [, timeout, streamIdleTimeout, maxOutputChars, maxConcurrency, name, defaultModel, embeddingModel, limits] =
    checked
  const servedKnown = options.model !== undefined || Option.isSome(modelName)
  const isModelName = (model: string) => Option.isSome(modelName) && model === modelName.value

  // The user's function runs on every call: what it throws, or a value that is no Context, is a
  // refusal naming the option, not a defect that would skip every fallback.
  const contextOf = (valid: Model.GenerateRequest): Result.Result<Context.Context<never> | undefined, ModelError> => {
    if (options.context === undefined) return Result.succeed(undefined)
    let extra: unknown
    try {
      extra = options.context(valid)
    } catch (cause) {
      return Result.fail(invalidRequest("context", `the context option threw: ${Input.thrownMessage(cause)}`, name))
    }
    return extra === undefined || Context.isContext(extra)
      ? Result.succeed(extra)
      : Result.fail(
          invalidRequest("context", `the context option answered ${Input.kindOf(extra)}, not a Context`, name)
        )
  }

  /** What every call needs: the prompt, the toolkit, the added services, and the model to report. */
  const prepare = Effect.fnUntraced(function* (request: Model.GenerateRequest) {
    const valid = yield* Model.validateGenerate(request, limits)
    if (options.context === undefined) {
      // The model is not sent: whatever the LanguageModel serves answers, so a request for another
      // (or for any, when which one is unknown) was answered by it and reported as the one asked for.
      if (valid.model !== undefined && valid.model !== defaultModel && !isModelName(valid.model)) {
        return yield* invalidRequest(
          "model",
          servedKnown
            ? `${name} serves ${Option.getOrElse(modelName, () => defaultModel)}, not ${valid.model}`
            : `${name} cannot tell which model its effect/ai LanguageModel serves, so it cannot serve ${valid.model}: give the model option (or Model.ModelName), or context to send the request's model`,
          name
        )
      }
      // A cap on the answer (and its cost) that cannot be sent is refused, not dropped: a caller counting
      // on it (a gateway's budget is reserved from max_tokens) would be answered uncapped.
      if (valid.maxTokens !== undefined) {
        return yield* invalidRequest(
          "maxTokens",
          `${name} cannot send maxTokens: an effect/ai LanguageModel carries no such setting; give context to hand it to your provider package's config`,
          name
        )
      }
      // LanguageModel carries no such setting: only `context` can hand it to the provider's config.
      if (asksOneToolCall(valid)) {
        return yield* invalidRequest(
          "parallelToolCalls",
          `${oneToolCallRefused("effect/ai LanguageModel")} (or give context to send it)`,
          name
        )
      }
      if (valid.responseFormat !== undefined && valid.responseFormat.type !== "text") {
        return yield* invalidRequest(
          "responseFormat",
          "effect/ai generateText has no JSON mode; use generateObject",
          name
        )
      }
    }
    const prompt = toPrompt(valid, name)
    if (Result.isFailure(prompt)) return yield* Effect.fail(prompt.failure)
    const extra = contextOf(valid)
    if (Result.isFailure(extra)) return yield* Effect.fail(extra.failure)
    const ignored = settingKeys.filter((key) => valid[key] !== undefined)
    const model = valid.model ?? defaultModel
    yield* Effect.annotateCurrentSpan({
      "gen_ai.provider.name": name,
      "gen_ai.request.model": model,
      ...(options.context === undefined && ignored.length > 0 ? { "orchestra.settings_not_sent": ignored } : {})
    })
    const tools = valid.tools ?? []
    const choice = valid.toolChoice
    // Without tools no toolkit is sent, so a choice that asks for a call would be dropped (a text
    // answer to "required"); a name no tool has would reach the provider. Refused, as over HTTP.
    if (typeof choice === "object" && !tools.some((tool) => tool.name === choice.name)) {
      return yield* invalidRequest(
        "toolChoice",
        tools.length === 0
          ? `{ name: "${choice.name}" } asks for a tool call, but the request has no tools`
          : `no tool is named "${choice.name}"`,
        name
      )
    }
    if (choice === "required" && tools.length === 0) {
      return yield* invalidRequest("toolChoice", '"required" asks for a tool call, but the request has no tools', name)
    }
    // The schema an UnsupportedSchemaError (which names none) is about: the tools, unless a JSON format was sent.
    const schemaField =
      tools.length > 0 && (valid.responseFormat === undefined || valid.responseFormat.type === "text")
        ? ("tools" as const)
        : ("responseFormat" as const)
    const toolChoice = choice === undefined || typeof choice === "string" ? (choice ?? "auto") : { tool: choice.name }
    return {
      valid,
      extra: extra.success,
      ctx: { provider: name, model },
      schemaField,
      prompt: prompt.success,
      toolkit: tools.length === 0 ? undefined : toolkitOf(tools),
      toolChoice
    }
  })

  const tooLarge = (ctx: CallContext) =>
    new ModelError({
      reason: "TooLarge",
      field: "response",
      message: `${ctx.provider}: the answer exceeded ${maxOutputChars} characters (maxOutputChars)`,
      provider: ctx.provider,
      model: ctx.model
    })

  // A hand-made LanguageModel service need not check its parts as LanguageModel.make does.
  const decodeError = (ctx: CallContext, field: string, message: string) =>
    new ModelError({
      reason: "Decode",
      field,
      message: `${ctx.provider}: ${message}`,
      provider: ctx.provider,
      model: ctx.model
    })

  /** A tool-call part as our call: its params as JSON text, its signature from the part's metadata. */
  const toolCallOf = (
    part: { readonly id: string; readonly name: string; readonly params: unknown; readonly metadata?: unknown },
    index: number,
    ctx: CallContext
  ): Result.Result<Model.ToolCall, ModelError> => {
    if (typeof part.id !== "string") {
      return Result.fail(decodeError(ctx, `toolCalls[${index}].id`, "a tool call without a string id"))
    }
    if (typeof part.name !== "string") {
      return Result.fail(decodeError(ctx, `toolCalls[${index}].name`, "a tool call without a string name"))
    }
    const args = argumentsText(part.params)
    if (Result.isFailure(args)) {
      return Result.fail(
        decodeError(ctx, `toolCalls[${index}].arguments`, `the arguments of a tool call are not JSON (${args.failure})`)
      )
    }
    const signature = signatureOf(part.metadata)
    if (Result.isFailure(signature)) {
      return Result.fail(
        decodeError(ctx, `toolCalls[${index}].signature`, `the signature of a tool call: ${signature.failure}`)
      )
    }
    return Result.succeed(
      signature.success === undefined
        ? { id: part.id, name: part.name, arguments: args.success }
        : { id: part.id, name: part.name, arguments: args.success, signature: signature.success }
    )
  }

  const callChars = (call: Model.ToolCall): number => call.arguments.length + (call.signature?.length ?? 0)

  // Files (an image model's output) are not carried by our answers: one made only of them would read as an
  // empty "stop", the model saying nothing. Not retried (the model would answer so again); another may not.
  const onlyFiles = (ctx: CallContext, mediaTypes: ReadonlySet<string>) =>
    decodeError(
      ctx,
      "content",
      `the answer held only files (${[...mediaTypes].join(", ")}), which effect-orchestra answers do not carry: no text, tool call or refusal`
    )
  const addFile = (mediaTypes: Set<string>, part: { readonly mediaType?: unknown }): void => {
    if (mediaTypes.size >= 4) return
    mediaTypes.add(typeof part.mediaType === "string" ? part.mediaType.slice(0, 100) : "of no media type")
  }

  const generate = Client.operation(
    "EffectAi.generate",
    Effect.fnUntraced(function* (request: Model.GenerateRequest) {
      const { valid, extra, ctx, schemaField, prompt, toolkit, toolChoice } = yield* prepare(request)
      // The toolkit only declares tools (no handlers), so both calls answer the same part shapes.
      const call = (toolkit === undefined
        ? lm.generateText({ prompt })
        : lm.generateText({
            prompt,
            toolkit,
            toolChoice,
            disableToolCallResolution: true
          })) as unknown as Effect.Effect<LanguageModel.GenerateTextResponse<AnyTools, "encoded">, Ai.AiError>
      const response = yield* (
        extra === undefined ? call : Effect.updateContext(call, (c: Context.Context<never>) => Context.merge(c, extra))
      ).pipe(
        Effect.mapError((error) => fromFailure(error, ctx, schemaField)),
        Effect.timeoutOrElse({ duration: timeout, orElse: () => Effect.fail(requestTimeout(ctx, timeout)) })
      )
      const text = response.text
      let chars = text.length
      if (chars > maxOutputChars) return yield* tooLarge(ctx)
      let answered: string | undefined
      const toolCalls: Array<Model.ToolCall> = []
      const refusals = refusalCollector()
      const files = new Set<string>()
      for (const part of response.content) {
        chars += refusals.add(part)
        if (chars > maxOutputChars) return yield* tooLarge(ctx)
        if (part.type === "response-metadata" && typeof part.modelId === "string") answered = part.modelId
        if (part.type === "file") addFile(files, part)
        // effect/ai's `text` joins them as they come: a number would be our text, a missing one none.
        if (part.type === "text" && typeof part.text !== "string") {
          return yield* decodeError(ctx, "text", "a text part without a string text")
        }
        if (part.type === "tool-call" && !part.providerExecuted) {
          const call = toolCallOf(part, toolCalls.length, ctx)
          if (Result.isFailure(call)) return yield* call.failure
          chars += callChars(call.success)
          if (chars > maxOutputChars) return yield* tooLarge(ctx)
          toolCalls.push(call.success)
        }
      }
      const refusal = refusals.value()
      if (files.size > 0 && text.length === 0 && toolCalls.length === 0 && refusal === undefined) {
        return yield* onlyFiles(ctx, files)
      }
      return {
        text,
        finishReason: withToolCalls(finishReasonOf(response.finishReason), toolCalls.length),
        usage: usageOf(
          response.usage,
          Model.estimateInputTokens(valid),
          Model.estimateTokens(refusal === undefined ? text : text + refusal)
        ),
        provider: name,
        model: answered ?? ctx.model,
        ...(toolCalls.length === 0 ? {} : { toolCalls }),
        ...(refusal === undefined ? {} : { refusal })
      } satisfies Model.GenerateResponse
    })
  )

  const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, AiError> =>
    Client.streamOperation(
      "EffectAi.stream",
      name,
      Stream.unwrap(
        Effect.map(prepare(request), ({ valid, extra, ctx, schemaField, prompt, toolkit, toolChoice }) => {
          let answered: string | undefined
          let chars = 0
          let calls = 0
          let texted = false
          const files = new Set<string>()
          const refusals = refusalCollector()
          const raw = (toolkit === undefined
            ? lm.streamText({ prompt })
            : lm.streamText({
                prompt,
                toolkit,
                toolChoice,
                disableToolCallResolution: true
              })) as unknown as Stream.Stream<Response.StreamPart<AnyTools, "encoded">, Ai.AiError>
          const parts = (
            extra === undefined
              ? raw
              : Stream.updateContext(raw, (c: Context.Context<never>) => Context.merge(c, extra))
          ).pipe(Stream.mapError((error) => fromFailure(error, ctx, schemaField)))
          return assemble(parts, {
            ctx,
            idleTimeout: streamIdleTimeout,
            step: (part): Effect.Effect<ReadonlyArray<Model.StreamPart>, ModelError | ShuttingDownError> => {
              if ("metadata" in part) {
                chars += refusals.add(part)
                if (chars > maxOutputChars) return Effect.fail(tooLarge(ctx))
              }
              switch (part.type) {
                case "text-delta":
                  if (typeof part.delta !== "string") {
                    return Effect.fail(decodeError(ctx, "text", "a text-delta part without a string delta"))
                  }
                  if (part.delta.length === 0) return Effect.succeed([])
                  texted = true
                  chars += part.delta.length
                  if (chars > maxOutputChars) return Effect.fail(tooLarge(ctx))
                  return Effect.succeed([{ _tag: "TextDelta", text: part.delta }])
                case "tool-call": {
                  if (part.providerExecuted) return Effect.succeed([])
                  const call = toolCallOf(part, calls, ctx)
                  if (Result.isFailure(call)) return Effect.fail(call.failure)
                  calls++
                  chars += callChars(call.success)
                  if (chars > maxOutputChars) return Effect.fail(tooLarge(ctx))
                  return Effect.succeed([{ _tag: "ToolCall", call: call.success }])
                }
                case "response-metadata":
                  if (typeof part.modelId === "string") answered = part.modelId
                  return Effect.succeed([])
                case "file":
                  addFile(files, part)
                  return Effect.succeed([])
                case "finish": {
                  const refusal = refusals.value()
                  if (files.size > 0 && !texted && calls === 0 && refusal === undefined) {
                    return Effect.fail(onlyFiles(ctx, files))
                  }
                  return Effect.succeed([
                    {
                      _tag: "Finish",
                      finishReason: withToolCalls(finishReasonOf(part.reason), calls),
                      usage: usageOf(part.usage, Model.estimateInputTokens(valid), Math.ceil(chars / 4)),
                      provider: name,
                      model: answered ?? ctx.model,
                      ...(refusal === undefined ? {} : { refusal })
                    }
                  ])
                }
                case "error":
                  return Effect.fail(
                    Ai.isAiError(part.error)
                      ? fromBridged(part.error, ctx, schemaField)
                      : new ModelError({
                          reason: "Unknown",
                          message: `${name}: the stream sent an error part`,
                          provider: name,
                          model: ctx.model
                        })
                  )
                default:
                  return Effect.succeed([])
              }
            },
            onEnd: () => Effect.succeed([])
          })
        })
      )
    )

  const embed = Client.operation(
    "EffectAi.embed",
    Effect.fnUntraced(function* (request: Model.EmbedRequest) {
      const valid = yield* Model.validateEmbed(request, limits)
      const ctx = { provider: name, model: embeddingModel }
      // The EmbeddingModel in context serves one model: vectors of another are not comparable,
      // so a request for it is refused rather than answered under the name asked for.
      if (valid.model !== undefined && valid.model !== embeddingModel) {
        return yield* invalidRequest("model", `${name} embeds with ${embeddingModel}, not ${valid.model}`, name)
      }
      if (Option.isNone(embedder)) {
        return yield* invalidRequest("texts", `no effect/ai EmbeddingModel was provided to ${name}`, name)
      }
      const response = yield* embedder.value.embedMany(valid.texts).pipe(
        Effect.mapError((error) => fromFailure(error, ctx)),
        Effect.timeoutOrElse({ duration: timeout, orElse: () => Effect.fail(requestTimeout(ctx, timeout)) })
      )
      // EmbeddingModel.make checks the count; a hand-made service need not, and vectors would then pair with the wrong texts.
      if (response.embeddings.length !== valid.texts.length) {
        return yield* Effect.fail(
          malformed(ctx, "embeddings", `expected ${valid.texts.length} embeddings, got ${response.embeddings.length}`)
        )
      }
      const vectors = response.embeddings.map((embedding) => embedding.vector)
      const uneven = unevenVectors(vectors, ctx, "embeddings")
      if (uneven !== undefined) return yield* Effect.fail(uneven)
      // One length throughout: the first names it.
      if (Option.isSome(dimensions) && vectors[0]!.length !== dimensions.value) {
        return yield* Effect.fail(
          malformed(
            ctx,
            "embeddings[0]",
            `${vectors[0]!.length} dimensions where EmbeddingModel.Dimensions is ${dimensions.value}`
          )
        )
      }
      let estimate = 0
      for (const text of valid.texts) estimate += Model.estimateTokens(text)
      return {
        vectors,
        // A count that is not a whole number of tokens is estimated, as generate's and the HTTP providers' are.
        usage: Model.usage(tokenCount(response.usage.inputTokens) ?? estimate, 0),
        provider: name,
        model: ctx.model
      } satisfies Model.EmbedResponse
    })
  )

  return {
    name,
    defaultModel,
    generate,
    stream,
    embed,
    ...(maxConcurrency === undefined ? {} : { maxConcurrency })
  } satisfies Model.Service
})
