/**
 * Anything with `generate` and `stream` as an `effect/ai` `LanguageModel` (and `embed` as an
 * `EmbeddingModel`): the prompt checked into our request, answers as `effect/ai` parts,
 * failures as `effect/ai` `AiError`s ({@link toAiError}), `gen_ai` span attributes set.
 *
 * @internal
 */
import { Context, Effect, Exit, Option, type Request, RequestResolver, Result, Schema, Stream } from "effect"
import { AiError as Ai, EmbeddingModel, LanguageModel, type Response } from "effect/ai"
import { ModelError } from "../../AiError.js"
import * as Input from "../../Input.js"
import * as Model from "../../Model.js"
import type {
  EmbeddingModelOptions,
  EmbeddingTarget,
  GenerationSettings,
  LanguageModelOptions,
  Target
} from "../EffectAi.js"
import {
  finishOf,
  metadataOf,
  nonEmpty,
  parseArguments,
  partsOf,
  requestOf,
  toolCallPart,
  usageEncoded
} from "./convert.js"
import { withToolCalls } from "../http/assemble.js"
import { tokenCount } from "../http/decode.js"
import { MODULE, toAiError } from "./errors.js"

/**
 * Per-call settings for a {@link languageModel}, the way `effect/ai` provider packages take
 * theirs: `Effect.provideService(EffectAi.GenerationConfig, { temperature: 0 })` around a
 * `LanguageModel.generateText`. Fields given here win over the layer's `settings`; a field
 * set to `undefined` or `null` is one not given.
 *
 * @since 0.2.0
 * @category services
 */
export class GenerationConfig extends Context.Service<GenerationConfig, GenerationSettings>()(
  "effect-orchestra/Model/EffectAi/GenerationConfig"
) {}

const settingKeysOf: ReadonlySet<string> = new Set(["model", "maxTokens", "temperature", "topP", "stop", "seed"])
const decodeRequest = Schema.decodeUnknownResult(Model.GenerateRequest, { onExcessProperty: "error" })

const checkSettings = (path: string, settings: GenerationSettings): Input.Checked<GenerationSettings> => {
  if (typeof settings !== "object" || settings === null || Array.isArray(settings)) {
    return Result.fail({ path, message: "expected an object of generation settings" })
  }
  const unknown = Input.misspeltKey(settings, settingKeysOf, `${path}.`)
  if (unknown !== undefined) return Result.fail(unknown)
  const decoded = decodeRequest({ prompt: "settings", ...settings })
  return Result.isSuccess(decoded) ? Result.succeed(settings) : Result.fail(Input.issueOf(decoded.failure, path))
}

// The per-call settings over the layer's, field by field: a field set to `undefined` or `null` is
// one not given (`{ temperature: options.temperature }` must not drop the layer's temperature, and
// effect/ai provider configs say "not given" with null). What is no object, or throws when read,
// is refused naming the service rather than a defect.
const overlay = (
  defaults: GenerationSettings,
  scoped: unknown
): Result.Result<GenerationSettings, Ai.AiErrorReason> => {
  const refuse = (description: string) =>
    Result.fail(new Ai.InvalidRequestError({ parameter: "GenerationConfig", description }))
  if (typeof scoped !== "object" || scoped === null || Array.isArray(scoped)) {
    return refuse(`expected an object of generation settings, got ${Input.kindOf(scoped)}`)
  }
  const out: Record<string, unknown> = { ...defaults }
  try {
    // Spread into the request, a `messages` or `tools` here would have replaced the prompt's.
    const unknown = Input.misspeltKey(scoped, settingKeysOf, "GenerationConfig.")
    if (unknown !== undefined) {
      return Result.fail(new Ai.InvalidRequestError({ parameter: unknown.path, description: unknown.message }))
    }
    for (const [key, value] of Object.entries(scoped)) {
      if (value !== undefined && value !== null) out[key] = value
    }
  } catch (cause) {
    return refuse(`reading it threw: ${Input.thrownMessage(cause)}`)
  }
  return Result.succeed(out as GenerationSettings)
}

// `null` options, or a misspelt `setings`, would otherwise be a TypeError or a default left in place unseen.
// Read once: a getter that throws is an issue naming its field, not a defect out of the layer.
const readOptions = <O>(options: O, keys: ReadonlySet<string>): Input.Checked<O> => {
  const issue = Input.notAnObject("options", options) ?? Input.unknownKey(options as object, keys)
  return issue === undefined ? (Input.readFields(options as object) as Input.Checked<O>) : Result.fail(issue)
}
const languageModelKeys: ReadonlySet<string> = new Set(["name", "settings", "requestLimits", "limits"])
const embeddingModelKeys: ReadonlySet<string> = new Set(["model", "requestLimits", "limits"])

const sameLimits = (a: Model.RequestLimits, b: Model.RequestLimits): boolean =>
  a.maxInputChars === b.maxInputChars && a.maxMessages === b.maxMessages && a.maxEmbedTexts === b.maxEmbedTexts

/**
 * `requestLimits`, or `limits` (its former name, the rest of the library's options call it
 * `requestLimits`); both given must agree, or which one holds would be a guess.
 */
const limitsOf = (options: {
  readonly requestLimits?: Partial<Model.RequestLimits> | undefined
  readonly limits?: Partial<Model.RequestLimits> | undefined
}): Input.Checked<Model.RequestLimits> => {
  const current = Model.requestLimits(options.requestLimits, "requestLimits")
  if (options.limits === undefined) return current
  const former = Model.requestLimits(options.limits, "limits")
  if (options.requestLimits === undefined || Result.isFailure(current) || Result.isFailure(former)) {
    return Result.isFailure(current) ? current : former
  }
  return sameLimits(current.success, former.success)
    ? current
    : Result.fail({
        path: "limits",
        message: "is the former name of requestLimits, given with other values: give requestLimits alone"
      })
}

type Span = LanguageModel.ProviderOptions["span"]

// Attribute names as effect/ai's Telemetry writes them, set directly: its key conversion costs
// more than the rest of the adapter.
const annotateRequest = (span: Span, name: string, request: Model.GenerateRequest): void => {
  span.attribute("gen_ai.provider.name", name)
  if (request.model !== undefined) span.attribute("gen_ai.request.model", request.model)
  if (request.temperature !== undefined) span.attribute("gen_ai.request.temperature", request.temperature)
  if (request.topP !== undefined) span.attribute("gen_ai.request.top_p", request.topP)
  if (request.maxTokens !== undefined) span.attribute("gen_ai.request.max_tokens", request.maxTokens)
  if (request.seed !== undefined) span.attribute("gen_ai.request.seed", request.seed)
  if (request.stop !== undefined) span.attribute("gen_ai.request.stop_sequences", request.stop)
}

const annotateResponse = (
  span: Span,
  finish: { readonly model: string; readonly finishReason: Model.FinishReason; readonly usage: Model.Usage }
): void => {
  span.attribute("gen_ai.response.model", finish.model)
  span.attribute("gen_ai.response.finish_reasons", [finish.finishReason])
  span.attribute("gen_ai.usage.input_tokens", finish.usage.inputTokens)
  span.attribute("gen_ai.usage.output_tokens", finish.usage.outputTokens)
}

/**
 * An `effect/ai` `LanguageModel` whose calls go to `target`: `effect/ai` code
 * (`LanguageModel.generateText`, `streamText`, `generateObject`, tool calling with a
 * `Toolkit`, `Chat`) runs unchanged and gains the target's policies. The prompt becomes
 * our request (system, user, assistant tool calls, tool results; files are refused), tools
 * their JSON Schemas, `generateObject`'s schema a `json_schema` response format; the
 * request is checked before the target sees it. Answers come back as `effect/ai` parts with
 * the finish reason, usage and model (a refusal as `metadata["effect-orchestra"].refusal` of the
 * `response-metadata` part); failures as `effect/ai` `AiError`s ({@link toAiError}). With the
 * name as checked, for the `ProviderName` beside it (the options are read once).
 *
 * @internal
 */
export const languageModelNamed = Effect.fnUntraced(function* (target: Target, given: LanguageModelOptions = {}) {
  const options = yield* Input.orOptionError(readOptions(given, languageModelKeys))
  const [name, defaults, limits] = yield* Input.orOptionError(
    Input.all([
      nonEmpty("name", Input.orDefault(options.name, "effect-orchestra")),
      checkSettings("settings", Input.orDefault(options.settings, {})),
      limitsOf(options)
    ])
  )

  const prepare = Effect.fnUntraced(function* (method: string, providerOptions: LanguageModel.ProviderOptions) {
    const scoped = yield* Effect.serviceOption(GenerationConfig)
    const settings = Option.isNone(scoped) ? Result.succeed(defaults) : overlay(defaults, scoped.value)
    if (Result.isFailure(settings)) return yield* Ai.make({ module: MODULE, method, reason: settings.failure })
    const built = requestOf(providerOptions, settings.success)
    if (Result.isFailure(built)) return yield* Ai.make({ module: MODULE, method, reason: built.failure })
    const request = yield* Model.validateGenerate(built.success, limits).pipe(
      Effect.mapError((error) => toAiError(error, method))
    )
    annotateRequest(providerOptions.span, name, request)
    return request
  })

  const generateText = Effect.fnUntraced(function* (providerOptions: LanguageModel.ProviderOptions) {
    const request = yield* prepare("generateText", providerOptions)
    const response = yield* Effect.mapError(target.generate(request), (error) => toAiError(error, "generateText"))
    annotateResponse(providerOptions.span, response)
    const parts = partsOf(response)
    if (Result.isFailure(parts))
      return yield* Ai.make({ module: MODULE, method: "generateText", reason: parts.failure })
    return parts.success
  })

  const service = yield* LanguageModel.make({
    generateText,
    streamText: (providerOptions) =>
      Stream.unwrap(
        Effect.map(prepare("streamText", providerOptions), (request) => {
          let open = false
          let blocks = 0
          let calls = 0
          const close = (): Array<Response.StreamPartEncoded> => {
            if (!open) return []
            open = false
            return [{ type: "text-end", id: `text-${blocks}` }]
          }
          const step = (
            part: Model.StreamPart
          ): Effect.Effect<ReadonlyArray<Response.StreamPartEncoded>, Ai.AiError> => {
            switch (part._tag) {
              case "TextDelta": {
                if (part.text.length === 0) return Effect.succeed([])
                const start: Array<Response.StreamPartEncoded> = open
                  ? []
                  : [{ type: "text-start", id: `text-${++blocks}` }]
                open = true
                return Effect.succeed([...start, { type: "text-delta", id: `text-${blocks}`, delta: part.text }])
              }
              case "ToolCall": {
                const params = parseArguments(part.call.arguments)
                if (Result.isFailure(params)) {
                  return Effect.fail(
                    Ai.make({
                      module: MODULE,
                      method: "streamText",
                      reason: new Ai.InvalidOutputError({
                        description: `tool call ${part.call.id} (${part.call.name}): arguments are not JSON`
                      })
                    })
                  )
                }
                calls++
                return Effect.succeed([...close(), toolCallPart(part.call, params.success)])
              }
              case "Finish":
                annotateResponse(providerOptions.span, part)
                return Effect.succeed([
                  ...close(),
                  { type: "response-metadata", modelId: part.model, metadata: metadataOf(part) },
                  {
                    type: "finish",
                    reason: finishOf(withToolCalls(part.finishReason, calls)),
                    usage: usageEncoded(part.usage)
                  }
                ])
            }
          }
          // A target owes exactly one Finish, as every provider here gives it: what comes after
          // it is not passed on, and a stream that ends without one broke off (the HTTP providers'
          // `endedEarly`), rather than reading to effect/ai as a complete, short answer.
          let finished = false
          const brokeOff = Stream.suspend(() =>
            finished
              ? Stream.empty
              : Stream.fail(
                  toAiError(
                    new ModelError({
                      reason: "Transport",
                      message: `${name}: the stream ended before its Finish`,
                      provider: name,
                      model: request.model
                    }),
                    "streamText"
                  )
                )
          )
          return target.stream(request).pipe(
            Stream.takeUntil((part) => {
              if (part._tag === "Finish") finished = true
              return finished
            }),
            Stream.mapError((error) => toAiError(error, "streamText")),
            Stream.mapEffect(step),
            Stream.flattenIterable,
            Stream.concat(brokeOff)
          )
        })
      )
  })
  return { service, name } as const
})

/** {@link languageModelNamed}'s service. @internal */
export const languageModel = (
  target: Target,
  given?: LanguageModelOptions
): Effect.Effect<LanguageModel.LanguageModel, Input.OptionError> =>
  Effect.map(languageModelNamed(target, given), (made) => made.service)

type EmbedEntry = Request.Entry<EmbeddingModel.EmbeddingRequest>

/**
 * The texts of one resolver batch, in order, grouped into requests within the limits: an input
 * the limits refuse on its own fails alone, and many callers' single texts go in several
 * requests rather than failing together as one request over the limits.
 */
const groupWithin = Effect.fnUntraced(function* (
  entries: ReadonlyArray<EmbedEntry>,
  limits: Model.RequestLimits,
  check: (input: string) => Effect.Effect<unknown, Ai.AiError>
) {
  const groups: Array<Array<EmbedEntry>> = []
  let group: Array<EmbedEntry> = []
  let chars = 0
  for (const entry of entries) {
    const input = entry.request.input
    const checked = yield* Effect.exit(check(input))
    if (Exit.isFailure(checked)) {
      entry.completeUnsafe(Exit.failCause(checked.cause))
      continue
    }
    if (group.length === limits.maxEmbedTexts || chars + input.length > limits.maxInputChars) {
      groups.push(group)
      group = []
      chars = 0
    }
    group.push(entry)
    chars += input.length
  }
  if (group.length > 0) groups.push(group)
  return groups
})

/**
 * A target's vector as effect/ai takes it. effect/ai builds its `EmbedResponse`s with
 * `Schema.Finite` vectors, and a schema failure there is thrown: a NaN or infinite entry from
 * the target would end the call as a defect. It is an `InvalidOutputError` naming the entry.
 */
const finiteVector = (vector: ReadonlyArray<number>, i: number): Result.Result<Array<number>, Ai.AiErrorReason> => {
  for (let j = 0; j < vector.length; j++) {
    if (!Number.isFinite(vector[j])) {
      return Result.fail(
        new Ai.InvalidOutputError({ description: `vectors[${i}][${j}] is ${vector[j]}, not a finite number` })
      )
    }
  }
  return Result.succeed([...vector])
}

/**
 * What is wrong with the vectors of one answer as a whole: one empty, or of another length than the
 * first, or than the `EmbeddingModel.Dimensions` declared. Vectors of mixed dimensions are not
 * comparable, and a store sized from `Dimensions` takes no other: no caller gets one of that answer.
 */
const unevenOf = (
  vectors: ReadonlyArray<ReadonlyArray<number>>,
  dimensions: number | undefined
): Ai.AiErrorReason | undefined => {
  const size = vectors[0]?.length
  for (let i = 0; i < vectors.length; i++) {
    const length = vectors[i]!.length
    const description =
      length === 0
        ? `vectors[${i}] is empty`
        : dimensions !== undefined && length !== dimensions
          ? `vectors[${i}] has ${length} dimensions where EmbeddingModel.Dimensions is ${dimensions}`
          : length !== size
            ? `vectors[${i}] has ${length} dimensions where the first has ${size}`
            : undefined
    if (description !== undefined) return new Ai.InvalidOutputError({ description })
  }
  return undefined
}

// Each caller of the group gets its own vector, or the group's failure, or its vector's.
const answerGroup = (
  group: ReadonlyArray<EmbedEntry>,
  exit: Exit.Exit<Model.EmbedResponse, Ai.AiError>,
  dimensions: number | undefined
): void => {
  if (Exit.isFailure(exit)) {
    for (const entry of group) entry.completeUnsafe(Exit.failCause(exit.cause))
    return
  }
  const vectors = exit.value.vectors
  const invalid = (reason: Ai.AiErrorReason) => Exit.fail(Ai.make({ module: MODULE, method: "embed", reason }))
  const uneven = vectors.length === group.length ? unevenOf(vectors, dimensions) : undefined
  const wrong =
    vectors.length !== group.length
      ? invalid(
          new Ai.InvalidOutputError({ description: `expected ${group.length} embeddings, got ${vectors.length}` })
        )
      : uneven === undefined
        ? undefined
        : invalid(uneven)
  for (const [i, entry] of group.entries()) {
    if (wrong !== undefined) {
      entry.completeUnsafe(wrong)
      continue
    }
    const vector = finiteVector(vectors[i]!, i)
    entry.completeUnsafe(
      Result.isSuccess(vector)
        ? Exit.succeed(new EmbeddingModel.EmbedResponse({ vector: vector.success }))
        : invalid(vector.failure)
    )
  }
}

/**
 * A target's answer as effect/ai takes it: every vector finite ({@link finiteVector}); a token
 * count that is not one is left out, as in generate.
 */
const providerResponseOf = (
  response: Model.EmbedResponse,
  dimensions: number | undefined
): Result.Result<EmbeddingModel.ProviderResponse, Ai.AiErrorReason> => {
  const uneven = unevenOf(response.vectors, dimensions)
  if (uneven !== undefined) return Result.fail(uneven)
  const results: Array<Array<number>> = []
  for (let i = 0; i < response.vectors.length; i++) {
    const vector = finiteVector(response.vectors[i]!, i)
    if (Result.isFailure(vector)) return Result.fail(vector.failure)
    results.push(vector.success)
  }
  return Result.succeed({ results, usage: { inputTokens: tokenCount(response.usage?.inputTokens) } })
}

/**
 * An `effect/ai` `EmbeddingModel` whose calls go to `target.embed` (checked first; the
 * model from `model` when given).
 *
 * @internal
 */
export const embeddingModel = (
  target: EmbeddingTarget,
  given: EmbeddingModelOptions = {}
): Effect.Effect<EmbeddingModel.EmbeddingModel, Input.OptionError> =>
  Effect.flatMap(
    Input.orOptionError(
      Result.flatMap(readOptions(given, embeddingModelKeys), (options) =>
        Input.all([Input.optional(options.model, (model) => nonEmpty("model", model)), limitsOf(options)])
      )
    ),
    ([model, limits]) =>
      Effect.flatMap(Effect.serviceOption(EmbeddingModel.Dimensions), (built) => {
        // The size declared where the model was built, or by the caller (a layer beside the model, as
        // effect/ai's provider packages provide it): the caller's wins.
        const dimensionsNow = Effect.map(Effect.serviceOption(EmbeddingModel.Dimensions), (scoped) =>
          Option.isSome(scoped) ? scoped.value : Option.getOrUndefined(built)
        )
        const requestOf = (texts: ReadonlyArray<string>) =>
          ({ texts, ...(model === undefined ? {} : { model }) }) as Model.EmbedRequest
        const embedWith = (method: string) => (inputs: ReadonlyArray<string>) =>
          Model.validateEmbed(requestOf(inputs), limits).pipe(
            Effect.flatMap(target.embed),
            Effect.mapError((error) => toAiError(error, method))
          )
        const embedMany = (inputs: ReadonlyArray<string>) =>
          Effect.flatMap(Effect.zip(embedWith("embedMany")(inputs), dimensionsNow), ([response, dimensions]) => {
            const answer = providerResponseOf(response, dimensions)
            return Result.isSuccess(answer)
              ? Effect.succeed(answer.success)
              : Effect.fail(Ai.make({ module: MODULE, method: "embedMany", reason: answer.failure }))
          })
        const check = (input: string) =>
          Effect.mapError(Model.validateEmbed(requestOf([input]), limits), (error) => toAiError(error, "embed"))
        // Each caller of a group is answered on its own: a vector effect/ai refuses fails its caller alone.
        const embedGroup = embedWith("embed")
        // effect/ai batches concurrent `embed` calls into one `embedMany`: one bad text, or more
        // callers than one request may carry, would fail every caller of the batch.
        const resolver = RequestResolver.make<EmbeddingModel.EmbeddingRequest>((entries) =>
          Effect.flatMap(Effect.zip(groupWithin(entries, limits, check), dimensionsNow), ([groups, dimensions]) =>
            Effect.forEach(
              groups,
              (group) =>
                Effect.map(Effect.exit(embedGroup(group.map((entry) => entry.request.input))), (exit) =>
                  answerGroup(group, exit, dimensions)
                ),
              { concurrency: "unbounded", discard: true }
            )
          )
        )
        return Effect.map(
          EmbeddingModel.make({ embedMany: ({ inputs }) => embedMany(inputs) }),
          (made): EmbeddingModel.EmbeddingModel => ({
            ...made,
            resolver,
            embed: (input) =>
              Effect.request(new EmbeddingModel.EmbeddingRequest({ input }), resolver).pipe(
                Effect.withSpan("EmbeddingModel.embed")
              )
          })
        )
      })
  )
