/**
 * The shapes of both sides, converted both ways: our conversation and an `effect/ai`
 * `Prompt`, our tool definitions and `effect/ai` tools, finish reasons, usage, and an
 * answer as `effect/ai` response parts. Pure functions; failures as `Result`s.
 *
 * @internal
 */
import { Effect, type JsonSchema, Result } from "effect"
import { AiError as Ai, LanguageModel, Prompt, type Response, Tool, type Toolkit } from "effect/ai"
import { invalidRequest, type ModelError } from "../../AiError.js"
import * as Input from "../../Input.js"
import * as Model from "../../Model.js"
import type { GenerationSettings } from "../EffectAi.js"
import { withToolCalls } from "../http/assemble.js"
import { tokenCount } from "../http/decode.js"
import { responseFormatNamePattern } from "../schemas.js"

/** @internal */
export const nonEmpty = (path: string, input: unknown): Input.Checked<string> =>
  typeof input === "string" && input.trim().length > 0
    ? Result.succeed(input)
    : Result.fail({ path, message: "expected a non-empty string" })

/**
 * An `effect/ai` finish reason as ours. `pause` (Anthropic's `pause_turn`) is one `effect/ai`
 * counts a complete answer, as `stop` and `tool-calls` (its tool handlers run): it is `stop`
 * (`tool_calls` with calls, `Assemble.withToolCalls`), which maps back to `stop`; `unknown` is one
 * `effect/ai` and OpenAI clients read as incomplete.
 *
 * @internal
 */
export const finishReasonOf = (reason: Response.FinishReason): Model.FinishReason => {
  switch (reason) {
    case "content-filter":
      return "content_filter"
    case "tool-calls":
      return "tool_calls"
    case "pause":
      return "stop"
    case "stop":
    case "length":
    case "error":
      return reason
    default:
      return "unknown"
  }
}

/** @internal */
export const finishOf = (reason: Model.FinishReason): Response.FinishReason => {
  switch (reason) {
    case "content_filter":
      return "content-filter"
    case "tool_calls":
      return "tool-calls"
    default:
      return reason
  }
}

const count = (n: number): { readonly total?: number } => (Number.isSafeInteger(n) && n >= 0 ? { total: n } : {})

/** @internal */
export const usageEncoded = (usage: Model.Usage): typeof Response.Usage.Encoded => ({
  inputTokens: count(usage.inputTokens),
  outputTokens: count(usage.outputTokens)
})

const textOfParts = (parts: ReadonlyArray<{ readonly type: string; readonly text?: string }>): string =>
  parts.flatMap((part) => (part.type === "text" && part.text !== undefined ? [part.text] : [])).join("\n")

// A result JSON cannot write (a BigInt, a cycle, a throwing toJSON) is the prompt's issue, not a defect.
const resultText = (part: Prompt.ToolResultPart): Result.Result<string, Ai.AiErrorReason> => {
  try {
    return Result.succeed(
      part.modelOutput !== undefined
        ? Prompt.toolModelOutputToText(part.modelOutput)
        : typeof part.result === "string"
          ? part.result
          : (JSON.stringify(part.result) ?? "")
    )
  } catch (cause) {
    return Result.fail(
      unsupported(
        "prompt",
        `the result of tool call ${part.id} (${part.name}) is not JSON: ${Input.thrownMessage(cause)}`
      )
    )
  }
}

/**
 * A tool call's `params` as the JSON text of our `arguments`; what JSON cannot write (a
 * BigInt, a cycle, a throwing `toJSON`, a function) is the thrown message instead.
 */
export const argumentsText = (params: unknown): Result.Result<string, string> => {
  try {
    const text = JSON.stringify(params ?? {})
    return text === undefined ? Result.fail(`got ${Input.kindOf(params)}`) : Result.succeed(text)
  } catch (cause) {
    return Result.fail(Input.thrownMessage(cause))
  }
}

const unsupported = (parameter: string, description: string): Ai.AiErrorReason =>
  new Ai.InvalidRequestError({ parameter, description })

/**
 * The longest tool-call signature taken from `effect/ai` (Gemini's thought signatures are a
 * few kilobytes of base64): a bound on what one part may carry into the next request.
 *
 * @internal
 */
export const maxSignatureChars = 65_536

/**
 * A tool call's signature where `effect/ai` keeps it: the provider metadata of a response's
 * tool-call part, which `Prompt.fromResponseParts` turns into the options of the prompt's
 * part, under `google.thoughtSignature` as the Google provider packages read and write it.
 *
 * @internal
 */
export const signatureSlot = (signature: string): { readonly google: { readonly thoughtSignature: string } } => ({
  google: { thoughtSignature: signature }
})

/**
 * The signature in a tool-call part's options or metadata: `undefined` when there is none,
 * what is wrong with it when it is no string or longer than {@link maxSignatureChars}.
 *
 * @internal
 */
export const signatureOf = (slot: unknown): Result.Result<string | undefined, string> => {
  if (typeof slot !== "object" || slot === null) return Result.succeed(undefined)
  const google: unknown = (slot as Record<string, unknown>)["google"]
  if (typeof google !== "object" || google === null) return Result.succeed(undefined)
  const signature: unknown = (google as Record<string, unknown>)["thoughtSignature"]
  if (signature === undefined || signature === null) return Result.succeed(undefined)
  if (typeof signature !== "string") return Result.fail(`expected a string, got ${Input.kindOf(signature)}`)
  return signature.length > maxSignatureChars
    ? Result.fail(`${signature.length} characters, over the limit of ${maxSignatureChars}`)
    : Result.succeed(signature)
}

/**
 * A tool call's `arguments` as the `params` of an `effect/ai` tool-call part. Blank is no
 * arguments, `{}`: OpenAI answers a call of a tool without parameters with `""` (strict tools;
 * several compatible servers always), takes it back in a conversation, and clients send it so.
 *
 * @internal
 */
export const parseArguments = (text: string): Result.Result<unknown, string> => {
  if (text.trim().length === 0) return Result.succeed({})
  try {
    return Result.succeed(Tool.unsafeSecureJsonParse(text))
  } catch {
    return Result.fail("not JSON")
  }
}

/**
 * Our conversation as an effect/ai Prompt. Tool results need the tool's name: found from the call they answer.
 *
 * @internal
 */
export const toPrompt = (
  request: Model.GenerateRequest,
  provider: string
): Result.Result<Prompt.Prompt, ModelError> => {
  const names = new Map<string, string>()
  const messages: Array<Prompt.Message> = []
  const conversation = Model.toMessages(request)
  const offset = request.system === undefined ? 0 : 1
  for (const [i, message] of conversation.entries()) {
    const path = `messages[${i - offset}]`
    switch (message.role) {
      case "system":
        messages.push(Prompt.makeMessage("system", { content: message.content }))
        break
      case "user":
        messages.push(Prompt.makeMessage("user", { content: [Prompt.makePart("text", { text: message.content })] }))
        break
      case "assistant": {
        const content: Array<Prompt.AssistantMessagePart> = []
        if (message.content.length > 0) content.push(Prompt.makePart("text", { text: message.content }))
        for (const [j, call] of (message.toolCalls ?? []).entries()) {
          const params = parseArguments(call.arguments)
          if (Result.isFailure(params)) {
            return Result.fail(invalidRequest(`${path}.toolCalls[${j}].arguments`, "not JSON", provider))
          }
          names.set(call.id, call.name)
          content.push(
            Prompt.makePart("tool-call", {
              id: call.id,
              name: call.name,
              params: params.success,
              providerExecuted: false,
              ...(call.signature === undefined ? {} : { options: signatureSlot(call.signature) })
            })
          )
        }
        messages.push(Prompt.makeMessage("assistant", { content }))
        break
      }
      case "tool": {
        const name = message.toolCallId === undefined ? undefined : names.get(message.toolCallId)
        if (name === undefined || message.toolCallId === undefined) {
          return Result.fail(
            invalidRequest(`${path}.toolCallId`, "does not answer a tool call of an earlier message", provider)
          )
        }
        const part = Prompt.makePart("tool-result", {
          id: message.toolCallId,
          name,
          isFailure: false,
          result: message.content,
          providerExecuted: false
        })
        messages.push(Prompt.makeMessage("tool", { content: [part] }))
        break
      }
    }
  }
  return Result.succeed(Prompt.fromMessages(messages))
}

/** @internal */
export type AnyTools = Record<string, Tool.Any>
type AnyToolkit = Toolkit.WithHandler<AnyTools>

/**
 * Tool calls are returned to the caller, never run here: the toolkit has no handlers.
 *
 * @internal
 */
export const toolkitOf = (tools: ReadonlyArray<Model.ToolDefinition>): AnyToolkit => {
  const record: Record<string, Tool.Any> = {}
  for (const tool of tools) {
    const declared = Tool.dynamic(tool.name, {
      description: tool.description,
      parameters: (tool.parameters ?? { type: "object", properties: {} }) as JsonSchema.JsonSchema
    })
    // Strict mode is a per-tool annotation there: the provider package sends it as our HTTP providers do.
    record[tool.name] = tool.strict === undefined ? declared : declared.annotate(Tool.Strict, tool.strict)
  }
  return { tools: record, handle: () => Effect.die("effect-orchestra: tool calls are returned, not run") }
}

// A hand-made LanguageModel's finish part is not decoded: its usage, or either count, may be missing.
// Without a total, the parts given are summed (a provider may report uncached and cache reads, or text and
// reasoning, alone): the counts it reported, rather than an estimate.
const totalOf = (counts: unknown, parts: ReadonlyArray<string>): number | undefined => {
  if (typeof counts !== "object" || counts === null) return undefined
  const record = counts as Record<string, number | null | undefined>
  const total = tokenCount(record["total"])
  if (total !== undefined) return total
  let sum: number | undefined
  for (const part of parts) {
    const n = tokenCount(record[part])
    if (n !== undefined) sum = (sum ?? 0) + n
  }
  return sum
}
const inputParts = ["uncached", "cacheRead", "cacheWrite"] as const
const outputParts = ["text", "reasoning"] as const

/** @internal */
export const usageOf = (usage: Response.Usage | undefined, input: number, output: number): Model.Usage => {
  const inputTokens = totalOf(usage?.inputTokens, inputParts) ?? input
  const outputTokens = totalOf(usage?.outputTokens, outputParts) ?? output
  return { inputTokens, outputTokens, totalTokens: inputTokens + outputTokens }
}

/** An effect/ai Prompt as our conversation. */
const toMessages = (prompt: Prompt.Prompt): Result.Result<Array<Model.Message>, Ai.AiErrorReason> => {
  const messages: Array<Model.Message> = []
  for (const message of prompt.content) {
    switch (message.role) {
      case "system":
        messages.push({ role: "system", content: message.content })
        break
      case "user":
        if (message.content.some((part) => part.type === "file")) {
          return Result.fail(unsupported("prompt", "file parts are not supported by effect-orchestra providers"))
        }
        messages.push({ role: "user", content: textOfParts(message.content) })
        break
      case "assistant": {
        if (message.content.some((part) => part.type === "file")) {
          return Result.fail(unsupported("prompt", "file parts are not supported by effect-orchestra providers"))
        }
        const toolCalls: Array<Model.ToolCall> = []
        const results: Array<Model.Message> = []
        for (const part of message.content) {
          if (part.type === "tool-call" && !part.providerExecuted) {
            const args = argumentsText(part.params)
            if (Result.isFailure(args)) {
              return Result.fail(
                unsupported("prompt", `the params of tool call ${part.id} (${part.name}) are not JSON: ${args.failure}`)
              )
            }
            const signature = signatureOf(part.options)
            if (Result.isFailure(signature)) {
              return Result.fail(
                unsupported("prompt", `the signature of tool call ${part.id} (${part.name}): ${signature.failure}`)
              )
            }
            toolCalls.push({
              id: part.id,
              name: part.name,
              arguments: args.success,
              ...(signature.success === undefined ? {} : { signature: signature.success })
            })
          } else if (part.type === "tool-result" && !part.providerExecuted) {
            const content = resultText(part)
            if (Result.isFailure(content)) return Result.fail(content.failure)
            results.push({ role: "tool", toolCallId: part.id, content: content.success })
          }
        }
        const content = textOfParts(message.content)
        if (content.length > 0 || toolCalls.length > 0) {
          messages.push({ role: "assistant", content, ...(toolCalls.length === 0 ? {} : { toolCalls }) })
        }
        messages.push(...results)
        break
      }
      case "tool":
        for (const part of message.content) {
          if (part.type !== "tool-result") continue
          const content = resultText(part)
          if (Result.isFailure(content)) return Result.fail(content.failure)
          messages.push({ role: "tool", toolCallId: part.id, content: content.success })
        }
        break
    }
  }
  return Result.succeed(messages)
}

// The JSON Schemas as effect/ai's provider packages make them (the transformer the LanguageModel decodes with):
// an identified schema (a Schema.Class) has its root resolved to the object, where plain conversion answers a
// root `$ref` that OpenAI's structured outputs and function parameters refuse.
const schemaOptions = { transformer: LanguageModel.defaultCodecTransformer }

// effect/ai names the object after the schema's identifier, which may be namespaced ("@app/User"): OpenAI takes
// 1 to 64 of a-z A-Z 0-9 _ - there, and refuses the call otherwise. The name only labels the answer for the model.
const formatName = (objectName: string): string => {
  if (responseFormatNamePattern.test(objectName)) return objectName
  const cleaned = objectName.replace(/[^a-zA-Z0-9_-]/g, "_").slice(0, 64)
  return cleaned.length === 0 ? "generateObject" : cleaned
}

const toolsOf = (
  options: LanguageModel.ProviderOptions
): Result.Result<Pick<Model.GenerateRequest, "tools" | "toolChoice" | "responseFormat">, Ai.AiErrorReason> => {
  const out: {
    tools?: Array<Model.ToolDefinition>
    toolChoice?: Model.GenerateRequest["toolChoice"]
    responseFormat?: Model.ResponseFormat
  } = {}
  try {
    if (options.tools.length > 0) {
      const tools: Array<Model.ToolDefinition> = []
      for (const tool of options.tools) {
        if (Tool.isProviderDefined(tool)) {
          return Result.fail(
            unsupported(
              "tools",
              `${tool.name} is a provider-defined tool; effect-orchestra targets run user tools only`
            )
          )
        }
        const description = Tool.getDescription(tool)
        // `Tool.Strict` asks for exact arguments (OpenAI's strict mode): our `strict`, which the providers send.
        const strict = Tool.getStrictMode(tool)
        tools.push({
          name: tool.name,
          ...(description === undefined ? {} : { description }),
          parameters: Tool.getJsonSchema(tool, schemaOptions) as Record<string, unknown>,
          ...(strict === undefined ? {} : { strict })
        })
      }
      const choice = options.toolChoice
      out.tools = tools
      out.toolChoice =
        typeof choice === "string"
          ? choice
          : "tool" in choice
            ? { name: choice.tool }
            : choice.mode === "required"
              ? "required"
              : "auto"
    }
    if (options.responseFormat.type === "json") {
      out.responseFormat = {
        type: "json_schema",
        name: formatName(options.responseFormat.objectName),
        schema: Tool.getJsonSchemaFromSchema(options.responseFormat.schema, schemaOptions) as Record<string, unknown>
      }
    }
  } catch (cause) {
    return Result.fail(new Ai.UnsupportedSchemaError({ description: Input.thrownMessage(cause) }))
  }
  return Result.succeed(out)
}

/** @internal */
export const requestOf = (
  options: LanguageModel.ProviderOptions,
  settings: GenerationSettings
): Result.Result<Model.GenerateRequest, Ai.AiErrorReason> =>
  Result.flatMap(toMessages(options.prompt), (messages) =>
    Result.map(toolsOf(options), (tools) => ({ messages, ...settings, ...tools }))
  )

/**
 * What the `response-metadata` part carries of ours: the provider, and the model's refusal
 * (OpenAI's `refusal`), which `effect/ai` has no part for: without it a refused answer came
 * back as an empty text that said nothing.
 *
 * @internal
 */
export const metadataOf = (answer: {
  readonly provider: string
  readonly refusal?: string | undefined
}): Response.ProviderMetadata => ({
  "effect-orchestra":
    answer.refusal === undefined
      ? { provider: answer.provider }
      : { provider: answer.provider, refusal: answer.refusal }
})

/**
 * The refusals said in the metadata of an answer's parts, each once: `@effect/ai-openai` answers a
 * refusal as an empty text part with `metadata.openai.refusal`, {@link metadataOf} as
 * `metadata["effect-orchestra"].refusal`; every namespace is read, so a package that says it the
 * same way under its own name is heard too. Without it a refused answer read as an empty "stop".
 *
 * @internal
 */
export const refusalCollector = () => {
  const seen = new Set<string>()
  let text = ""
  return {
    /** Reads a part's metadata; answers the characters it added. */
    add: (part: { readonly metadata?: unknown }): number => {
      const metadata = part.metadata
      if (typeof metadata !== "object" || metadata === null) return 0
      let added = 0
      for (const key in metadata) {
        const space: unknown = (metadata as Record<string, unknown>)[key]
        if (typeof space !== "object" || space === null) continue
        const refusal: unknown = (space as Record<string, unknown>)["refusal"]
        if (typeof refusal !== "string" || refusal.length === 0 || seen.has(refusal)) continue
        seen.add(refusal)
        text = text.length === 0 ? refusal : `${text}\n${refusal}`
        added += refusal.length
      }
      return added
    },
    value: (): string | undefined => (text.length === 0 ? undefined : text)
  }
}

/**
 * Our tool call as an `effect/ai` tool-call part, its signature in the part's metadata.
 *
 * @internal
 */
export const toolCallPart = (call: Model.ToolCall, params: unknown): Response.ToolCallPartEncoded =>
  call.signature === undefined
    ? { type: "tool-call", id: call.id, name: call.name, params }
    : { type: "tool-call", id: call.id, name: call.name, params, metadata: signatureSlot(call.signature) }

/** @internal */
export const partsOf = (
  response: Model.GenerateResponse
): Result.Result<Array<Response.PartEncoded>, Ai.AiErrorReason> => {
  const parts: Array<Response.PartEncoded> = [
    { type: "response-metadata", modelId: response.model, metadata: metadataOf(response) }
  ]
  if (response.text.length > 0) parts.push({ type: "text", text: response.text })
  for (const call of response.toolCalls ?? []) {
    const params = parseArguments(call.arguments)
    if (Result.isFailure(params)) {
      return Result.fail(
        new Ai.InvalidOutputError({ description: `tool call ${call.id} (${call.name}): arguments are not JSON` })
      )
    }
    parts.push(toolCallPart(call, params.success))
  }
  parts.push({
    type: "finish",
    reason: finishOf(withToolCalls(response.finishReason, response.toolCalls?.length ?? 0)),
    usage: usageEncoded(response.usage)
  })
  return Result.succeed(parts)
}
