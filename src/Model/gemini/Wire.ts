/**
 * The Generative Language API as the Gemini provider speaks it: the request body of
 * `generateContent` (conversation, tools, tool calls and results, generation config), the
 * body of `batchEmbedContents`, the schemas of the answers, and their reading. Pure: no HTTP.
 *
 * @since 0.2.0
 */
import { Result, Schema } from "effect"
import { invalidRequest, ModelError } from "../../AiError.js"
import * as Input from "../../Input.js"
import * as Model from "../../Model.js"
import { maxToolCalls, withToolCalls } from "../http/assemble.js"
import { boundedArray, finite, maxChoices, shallow, tokenCount, Vector } from "../http/decode.js"
import { malformed } from "../http/errors.js"
import { asksOneToolCall, oneToolCallRefused } from "../validate.js"

const Part = Schema.Struct({
  text: Schema.optional(Schema.String),
  thought: Schema.optional(Schema.Boolean),
  functionCall: Schema.optional(
    Schema.Struct({
      id: Schema.optional(Schema.String),
      // A call without a name cannot be dispatched: Decode naming it, as on the other providers.
      name: Schema.NonEmptyString,
      // Written again as the call's `arguments`: too deep overflows JSON.stringify; 1e400 (Infinity) it writes as null.
      args: Schema.optional(Schema.Record(Schema.String, Schema.Unknown).check(shallow, finite))
    })
  ),
  // Bounded, as every string of an answer, by maxResponseBytes (maxEventBytes in a stream).
  thoughtSignature: Schema.optional(Schema.String)
})

/**
 * The parts one answer or stream event may carry: as many function calls as a stream may carry
 * (`maxToolCalls`), each with room for a text or thought part beside it, and more. Counted before
 * any part is decoded, so that a million parts are refused at once.
 */
const maxParts = 4 * maxToolCalls

/**
 * @since 0.2.0
 * @category schemas
 */
export const UsageMetadata = Schema.Struct({
  promptTokenCount: Schema.optional(Schema.Number),
  candidatesTokenCount: Schema.optional(Schema.Number),
  thoughtsTokenCount: Schema.optional(Schema.Number),
  totalTokenCount: Schema.optional(Schema.Number)
})

/**
 * The answer of `generateContent`, and each event of `streamGenerateContent`.
 *
 * @since 0.2.0
 * @category schemas
 */
export const GenerateContentResponse = Schema.Struct({
  candidates: Schema.optional(
    boundedArray(
      maxChoices,
      Schema.Struct({
        content: Schema.optional(Schema.Struct({ parts: Schema.optional(boundedArray(maxParts, Part)) })),
        finishReason: Schema.optional(Schema.String)
      })
    )
  ),
  promptFeedback: Schema.optional(Schema.Struct({ blockReason: Schema.optional(Schema.String) })),
  usageMetadata: Schema.optional(UsageMetadata),
  modelVersion: Schema.optional(Schema.String)
})

/**
 * @since 0.2.0
 * @category models
 */
export type GenerateContentResponse = typeof GenerateContentResponse.Type

/**
 * `batchEmbedContents` takes at most 100 requests.
 *
 * @since 0.3.0
 * @category constants
 */
export const embedBatch = 100

/**
 * The answer of `batchEmbedContents`: at most {@link embedBatch} embeddings, counted before any is read.
 *
 * @since 0.2.0
 * @category schemas
 */
export const BatchEmbedResponse = Schema.Struct({
  embeddings: boundedArray(embedBatch, Schema.Struct({ values: Vector }))
})

/**
 * Gemini's `finishReason` as ours. A malformed or unexpected function call, a malformed
 * response or a missing thought signature is an `error`: the answer carries no usable call.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = (reason: string | undefined): Model.FinishReason => {
  switch (reason) {
    case "STOP":
      return "stop"
    case "MAX_TOKENS":
      return "length"
    case "SAFETY":
    case "RECITATION":
    case "BLOCKLIST":
    case "PROHIBITED_CONTENT":
    case "SPII":
    case "IMAGE_SAFETY":
    case "IMAGE_PROHIBITED_CONTENT":
    case "IMAGE_RECITATION":
      return "content_filter"
    case "MALFORMED_FUNCTION_CALL":
    case "UNEXPECTED_TOOL_CALL":
    case "TOO_MANY_TOOL_CALLS":
    case "MALFORMED_RESPONSE":
    // A conversation that sent a function call back without its thought signature (Gemini 3).
    case "MISSING_THOUGHT_SIGNATURE":
      return "error"
    default:
      return "unknown"
  }
}

/**
 * A model id as a URL path: `gemini-2.5-flash` is `models/gemini-2.5-flash`; tuned models
 * keep their prefix; every segment is escaped.
 *
 * @since 0.2.0
 * @category utils
 */
export const modelPath = (model: string): string =>
  (model.startsWith("models/") || model.startsWith("tunedModels/") ? model : `models/${model}`)
    .split("/")
    .map(encodeURIComponent)
    .join("/")

/**
 * Why a model id cannot be a URL path, or `undefined` when it can: a `.` or `..` segment,
 * which the URL resolves (`models/../../x` would post the key to `/x:generateContent`).
 *
 * @since 0.3.0
 * @category utils
 */
export const modelPathIssue = (model: string): string | undefined => {
  for (const segment of model.split("/")) {
    if (segment === "." || segment === "..") {
      return `a "${segment}" segment would take the request out of models/ (${Input.shown(model)})`
    }
  }
  return undefined
}

const isPlainObject = (u: unknown): u is Record<string, unknown> =>
  typeof u === "object" && u !== null && !Array.isArray(u)

const parseJson = (text: string): Result.Result<unknown, undefined> => {
  try {
    return Result.succeed(JSON.parse(text))
  } catch {
    return Result.fail(undefined)
  }
}

// Blank is no arguments: OpenAI answers a call of a tool without parameters with "" and takes it back so.
const callArguments = (text: string): Result.Result<unknown, undefined> =>
  text.trim().length === 0 ? Result.succeed({}) : parseJson(text)

type Content = { readonly role: "user" | "model"; readonly parts: Array<Record<string, unknown>> }

const MADE_UP_ID = /^call_\d+$/

/**
 * The call's id as sent back, or `undefined` for an id made up here (`call_<n>`, given by
 * `Assemble.callIds` to a call Gemini gave none): Gemini would read it as one of its own.
 */
const wireId = (id: string | undefined): string | undefined =>
  id === undefined || id.length === 0 || MADE_UP_ID.test(id) ? undefined : id

// `offset`: how many messages came before the request's own (its `system`), so refusals name them as the caller wrote.
const contentsOf = (
  messages: ReadonlyArray<Model.Message>,
  offset: number,
  provider: string
): Result.Result<{ readonly system: ReadonlyArray<string>; readonly contents: ReadonlyArray<Content> }, ModelError> => {
  const system: Array<string> = []
  const contents: Array<Content> = []
  const callNames = new Map<string, string>()
  const refuse = (field: string, message: string) => Result.fail(invalidRequest(field, message, provider))
  for (let i = 0; i < messages.length; i++) {
    const message = messages[i]!
    const index = i - offset
    switch (message.role) {
      case "system":
        system.push(message.content)
        break
      // Gemini refuses an empty text part (OpenAI takes an empty message): a turn with nothing in it is left out.
      case "user":
        if (message.content.length > 0) contents.push({ role: "user", parts: [{ text: message.content }] })
        break
      case "assistant": {
        const parts: Array<Record<string, unknown>> = message.content.length > 0 ? [{ text: message.content }] : []
        const calls = message.toolCalls ?? []
        for (let j = 0; j < calls.length; j++) {
          const call = calls[j]!
          // Gemini refuses a functionCall of no name after a call; no answer carries one (each is Decode there).
          if (call.name.length === 0)
            return refuse(`messages[${index}].toolCalls[${j}].name`, "a tool call without a name")
          const args = callArguments(call.arguments)
          if (Result.isFailure(args) || !isPlainObject(args.success)) {
            return refuse(
              `messages[${index}].toolCalls[${j}].arguments`,
              `the arguments of tool call "${call.id}" are not a JSON object`
            )
          }
          callNames.set(call.id, call.name)
          const id = wireId(call.id)
          const functionCall =
            id === undefined ? { name: call.name, args: args.success } : { id, name: call.name, args: args.success }
          parts.push(
            call.signature === undefined ? { functionCall } : { functionCall, thoughtSignature: call.signature }
          )
        }
        if (parts.length > 0) contents.push({ role: "model", parts })
        break
      }
      case "tool": {
        const name = message.toolCallId === undefined ? undefined : callNames.get(message.toolCallId)
        if (name === undefined) {
          return refuse(
            `messages[${index}].toolCallId`,
            `a tool message answers no earlier tool call (toolCallId ${message.toolCallId ?? "missing"})`
          )
        }
        const parsed = parseJson(message.content)
        const response =
          Result.isSuccess(parsed) && isPlainObject(parsed.success) ? parsed.success : { output: message.content }
        const id = wireId(message.toolCallId)
        const part = { functionResponse: id === undefined ? { name, response } : { id, name, response } }
        // The answers to one turn's parallel calls travel together in one user turn.
        const last = contents[contents.length - 1]
        if (last !== undefined && last.role === "user" && last.parts.every((p) => "functionResponse" in p)) {
          last.parts.push(part)
        } else {
          contents.push({ role: "user", parts: [part] })
        }
        break
      }
    }
  }
  // Gemini refuses a request without contents (a 400 after a call): system messages alone, or
  // only turns with nothing in them, are no conversation.
  if (contents.length === 0) {
    return refuse("messages", "no turn to answer: system messages alone, or turns with nothing in them")
  }
  return Result.succeed({ system, contents })
}

const toolConfigOf = (
  choice: NonNullable<Model.GenerateRequest["toolChoice"]>,
  tools: ReadonlyArray<Model.ToolDefinition>,
  provider: string
): Result.Result<Record<string, unknown>, ModelError> => {
  if (typeof choice === "object") {
    if (!tools.some((tool) => tool.name === choice.name)) {
      return Result.fail(invalidRequest("toolChoice", `no tool is named "${choice.name}"`, provider))
    }
    return Result.succeed({ functionCallingConfig: { mode: "ANY", allowedFunctionNames: [choice.name] } })
  }
  if (choice === "required" && tools.length === 0) {
    return Result.fail(
      invalidRequest("toolChoice", '"required" asks for a tool call, but the request has no tools', provider)
    )
  }
  const mode = choice === "auto" ? "AUTO" : choice === "none" ? "NONE" : "ANY"
  return Result.succeed({ functionCallingConfig: { mode } })
}

/**
 * The most stop sequences Gemini's `generationConfig.stopSequences` takes.
 *
 * @since 0.3.0
 * @category constants
 */
export const MAX_STOP_SEQUENCES = 5

/**
 * The request body of `generateContent`: system messages become `systemInstruction`,
 * assistant turns are role `model`, tools `functionDeclarations`, a JSON response format
 * `responseMimeType` (with `responseJsonSchema`). A tool call's id goes back on its
 * `functionCall` and on the `functionResponse` answering it (not an id `call_<n>` made up
 * for a call Gemini gave none); blank arguments (`""`, as OpenAI answers a tool without
 * parameters) are `args: {}`. A turn with nothing in it (no text, no calls) is left out: Gemini
 * refuses an empty text part. Fails with `InvalidRequest` for what cannot be sent (a tool
 * message answering no earlier call, arguments that are not a JSON object, more than
 * {@link MAX_STOP_SEQUENCES} stop sequences, a seed outside 32 bits, `parallelToolCalls: false`
 * with tools).
 *
 * @since 0.1.0
 * @category utils
 */
export const requestBody = (
  request: Model.GenerateRequest,
  provider = "gemini"
): Result.Result<Record<string, unknown>, ModelError> => {
  const conversation = contentsOf(Model.toMessages(request), request.system === undefined ? 0 : 1, provider)
  if (Result.isFailure(conversation)) return conversation
  const { contents, system } = conversation.success
  const body: Record<string, unknown> = { contents }
  if (system.length > 0) body["systemInstruction"] = { parts: [{ text: system.join("\n\n") }] }
  const tools = request.tools ?? []
  if (tools.length > 0) {
    body["tools"] = [
      {
        functionDeclarations: tools.map((tool) => ({
          name: tool.name,
          ...(tool.description === undefined ? {} : { description: tool.description }),
          ...(tool.parameters === undefined ? {} : { parametersJsonSchema: tool.parameters })
        }))
      }
    ]
  }
  // functionCallingConfig has modes and allowed names, nothing that bounds the number of calls.
  if (asksOneToolCall(request)) {
    return Result.fail(invalidRequest("parallelToolCalls", oneToolCallRefused("Gemini"), provider))
  }
  const choice = request.toolChoice
  // Without tools, "auto" and "none" are what Gemini does anyway: no config for functions that are not there.
  if (choice !== undefined && (tools.length > 0 || (choice !== "auto" && choice !== "none"))) {
    const config = toolConfigOf(choice, tools, provider)
    if (Result.isFailure(config)) return config
    body["toolConfig"] = config.success
  }
  const config: Record<string, unknown> = {}
  if (request.maxTokens !== undefined) config["maxOutputTokens"] = request.maxTokens
  if (request.temperature !== undefined) config["temperature"] = request.temperature
  if (request.topP !== undefined) config["topP"] = request.topP
  if (request.stop !== undefined) {
    // Gemini answers more with a 400 of its own, after a network call a retry may repeat.
    if (request.stop.length > MAX_STOP_SEQUENCES) {
      return Result.fail(
        invalidRequest(
          "stop",
          `Gemini takes at most ${MAX_STOP_SEQUENCES} stop sequences, got ${request.stop.length}`,
          provider
        )
      )
    }
    config["stopSequences"] = request.stop
  }
  if (request.seed !== undefined) {
    // Gemini's seed is an int32: a larger one is a 400 of its own, after a network call.
    if (request.seed < -(2 ** 31) || request.seed > 2 ** 31 - 1) {
      return Result.fail(
        invalidRequest("seed", `Gemini takes a 32-bit seed (-2^31 to 2^31 - 1), got ${request.seed}`, provider)
      )
    }
    config["seed"] = request.seed
  }
  const format = request.responseFormat
  if (format !== undefined && format.type !== "text") {
    config["responseMimeType"] = "application/json"
    if (format.type === "json_schema") config["responseJsonSchema"] = format.schema
  }
  if (Object.keys(config).length > 0) body["generationConfig"] = config
  return Result.succeed(body)
}

/**
 * The body of `batchEmbedContents` for some texts.
 *
 * @since 0.2.0
 * @category utils
 */
export const embedBody = (
  texts: ReadonlyArray<string>,
  model: string,
  dimensions: number | undefined
): Record<string, unknown> => ({
  requests: texts.map((text) => ({
    model: modelPath(model),
    content: { parts: [{ text }] },
    ...(dimensions === undefined ? {} : { outputDimensionality: dimensions })
  }))
})

/**
 * Usage from `usageMetadata`; thinking tokens are billed as output.
 *
 * @since 0.2.0
 * @category utils
 */
export const usageOf = (
  metadata: typeof UsageMetadata.Type | undefined,
  fallbackInput: number,
  fallbackOutput: number
): Model.Usage => {
  if (metadata === undefined) return Model.usage(fallbackInput, fallbackOutput)
  const input = tokenCount(metadata.promptTokenCount) ?? fallbackInput
  const output =
    (tokenCount(metadata.candidatesTokenCount) ?? fallbackOutput) + (tokenCount(metadata.thoughtsTokenCount) ?? 0)
  const total = tokenCount(metadata.totalTokenCount)
  return {
    inputTokens: input,
    outputTokens: output,
    totalTokens: total !== undefined && total >= input + output ? total : input + output
  }
}

/**
 * The `ContentFilter` failure of an answer whose prompt was blocked (no candidates).
 *
 * @since 0.2.0
 * @category utils
 */
export const blocked = (answer: GenerateContentResponse, provider: string, model: string): ModelError | undefined => {
  const reason = answer.promptFeedback?.blockReason
  if (reason === undefined || (answer.candidates !== undefined && answer.candidates.length > 0)) return undefined
  return new ModelError({
    reason: "ContentFilter",
    message: `${provider} blocked the prompt: ${reason}`,
    provider,
    model
  })
}

/**
 * Reads one answer or stream event: its text (thought parts left out), its tool calls (ids
 * from `nextId` where Gemini gives none, or an empty one), its finish reason. A blocked prompt is a
 * `ContentFilter` failure; more than `maxToolCalls` calls, with the `earlierCalls` of the stream so
 * far, `Decode` on the parts.
 *
 * @since 0.2.0
 * @category utils
 */
export const readAnswer = (
  answer: GenerateContentResponse,
  provider: string,
  model: string,
  nextId: () => string,
  earlierCalls = 0
): Result.Result<
  { readonly text: string; readonly toolCalls: ReadonlyArray<Model.ToolCall>; readonly finishReason?: string },
  ModelError
> => {
  const refused = blocked(answer, provider, model)
  if (refused !== undefined) return Result.fail(refused)
  const candidate = answer.candidates?.[0]
  let text = ""
  const toolCalls: Array<Model.ToolCall> = []
  for (const part of candidate?.content?.parts ?? []) {
    if (part.functionCall !== undefined) {
      if (earlierCalls + toolCalls.length >= maxToolCalls) {
        return Result.fail(
          malformed({ provider, model }, "candidates[0].content.parts", `more than ${maxToolCalls} function calls`)
        )
      }
      const call = part.functionCall
      const id = call.id || nextId()
      const args = JSON.stringify(call.args ?? {})
      toolCalls.push(
        part.thoughtSignature === undefined
          ? { id, name: call.name, arguments: args }
          : { id, name: call.name, arguments: args, signature: part.thoughtSignature }
      )
    } else if (part.thought !== true && part.text !== undefined) {
      text += part.text
    }
  }
  return Result.succeed(
    candidate?.finishReason === undefined
      ? { text, toolCalls }
      : { text, toolCalls, finishReason: candidate.finishReason }
  )
}

/**
 * The finish reason of a turn. Gemini says STOP after function calls too (and may say OTHER, or a
 * reason not known here): for the caller, the turn ended in tool calls (`withToolCalls`).
 *
 * @since 0.2.0
 * @category utils
 */
export const finalReason = (reason: string | undefined, sawToolCalls: boolean): Model.FinishReason =>
  withToolCalls(finishReasonOf(reason), sawToolCalls ? 1 : 0)
