/**
 * OpenAI requests on the gateway's side: chat-completion and embedding bodies read into
 * the library's `GenerateRequest` / `EmbedRequest`, checked by hand so that each mistake
 * is a 400 naming the OpenAI parameter (`messages[2].content`, `max_tokens`).
 *
 * Parameters the pipeline cannot honour are refused, not dropped (`n` above 1, penalties,
 * `logit_bias`, `logprobs`); purely informational ones (`user`, `metadata`, `store`, ...)
 * are accepted and ignored. The conversation (`messages`) is read in `messages.ts`, with the
 * checks both share in `checks.ts`.
 *
 * @internal
 */
import { Result } from "effect"
import * as Input from "../Input.js"
import type * as Model from "../Model.js"
import { responseFormatNamePattern, toolNamePattern } from "../Model/schemas.js"
import { maxSchemaDepth, nestsDeeper } from "../Model/validate.js"
import { type Checked, clip, invalid, isObject, nullable, shown, tooDeep, unsupported } from "./checks.js"
import { gatewayError } from "./errors.js"
import { conversationOf } from "./messages.js"

// Fatal: bytes that are not UTF-8 would otherwise become U+FFFD, and the request be answered as if it said that.
const utf8 = new TextDecoder("utf-8", { fatal: true })

/**
 * A request body as JSON: a 400 naming `body` when it is not UTF-8 (as JSON text must be),
 * or not JSON.
 *
 * @internal
 */
export const jsonOf = (bytes: ArrayBuffer | Uint8Array): Checked<unknown> => {
  let text: string
  try {
    text = utf8.decode(bytes)
  } catch {
    return Result.fail(
      gatewayError("InvalidRequest", "the request body is not UTF-8 text (JSON is sent as UTF-8)", {
        param: "body",
        code: "invalid_json"
      })
    )
  }
  const parsed = Result.try(() => JSON.parse(text) as unknown)
  return Result.isSuccess(parsed)
    ? Result.succeed(parsed.success)
    : Result.fail(
        gatewayError("InvalidRequest", "the request body is not valid JSON", { param: "body", code: "invalid_json" })
      )
}

/**
 * A chat-completion request, read.
 *
 * @internal
 */
export interface ChatCall {
  /** A domain name or `provider/model`. */
  readonly model: string
  /** The conversation and sampling options (`model` unset: the routing decides it). */
  readonly request: Model.GenerateRequest
  readonly stream: boolean
  /** `stream_options.include_usage`: a final chunk with the usage and no choices. */
  readonly includeUsage: boolean
  /** The leading system messages read into `request.system`: the request's message `i` is the client's `i + hoisted`. */
  readonly hoisted: number
}

/**
 * An embeddings request, read.
 *
 * @internal
 */
export interface EmbedCall {
  readonly model: string
  readonly request: Model.EmbedRequest
  readonly encoding: "float" | "base64"
}

const ignored: ReadonlySet<string> = new Set([
  "user",
  "metadata",
  "store",
  "service_tier",
  "prompt_cache_key",
  "safety_identifier"
])

// The gateway keeps the provider/model names it resolved and says a name back in its errors:
// a name of megabytes, a thousand times over, would hold gigabytes.
export const maxModelLength = 256

const modelOf = (body: Record<string, unknown>): Checked<string> => {
  const model = body.model
  if (typeof model !== "string" || model.trim().length === 0) {
    return invalid("model", `expected a model name, got ${typeof model === "string" ? '""' : Input.kindOf(model)}`)
  }
  if (model.length > maxModelLength) {
    return invalid("model", `expected a model name of at most ${maxModelLength} characters, got ${model.length}`)
  }
  return Result.succeed(model)
}

const numberIn = (param: string, value: unknown, min: number, max: number): Checked<number> =>
  typeof value === "number" && Number.isFinite(value) && value >= min && value <= max
    ? Result.succeed(value)
    : invalid(
        param,
        `expected a number from ${min} to ${max}, got ${typeof value === "number" ? value : Input.kindOf(value)}`
      )

const positiveInt = (param: string, value: unknown): Checked<number> =>
  typeof value === "number" && Number.isInteger(value) && value >= 1 && value <= 1_000_000
    ? Result.succeed(value)
    : invalid(
        param,
        `expected an integer from 1 to 1000000, got ${typeof value === "number" ? value : Input.kindOf(value)}`
      )

// OpenAI's rule for a response format's name, and the library's for a function's (OpenAI's, starting with a letter or
// `_` as Gemini's): a name a provider would refuse is refused here, not sent on to one that may accept it.
const formatName = responseFormatNamePattern

const toolsOf = (input: unknown): Checked<ReadonlyArray<Model.ToolDefinition>> => {
  if (!Array.isArray(input)) return invalid("tools", `expected an array, got ${Input.kindOf(input)}`)
  if (input.length > 128) return invalid("tools", `at most 128 tools, got ${input.length}`)
  const out: Array<Model.ToolDefinition> = []
  const first = new Map<string, number>()
  for (let i = 0; i < input.length; i++) {
    const tool = input[i]
    const fn = isObject(tool) ? tool.function : undefined
    if (!isObject(tool) || tool.type !== "function" || !isObject(fn)) {
      return invalid(`tools[${i}]`, "expected { type: 'function', function: { name, description?, parameters? } }")
    }
    if (typeof fn.name !== "string" || !toolNamePattern.test(fn.name)) {
      return invalid(
        `tools[${i}].function.name`,
        "expected a name of 1 to 64 characters of a-z, A-Z, 0-9, _ or -, starting with a letter or _"
      )
    }
    const seen = first.get(fn.name)
    if (seen !== undefined) {
      return invalid(`tools[${i}].function.name`, `duplicate function name "${fn.name}" (first at tools[${seen}])`)
    }
    first.set(fn.name, i)
    if (fn.description !== undefined && typeof fn.description !== "string") {
      return invalid(`tools[${i}].function.description`, "expected a string")
    }
    if (fn.parameters !== undefined && !isObject(fn.parameters)) {
      return invalid(`tools[${i}].function.parameters`, "expected a JSON Schema object")
    }
    if (nestsDeeper(fn.parameters, maxSchemaDepth)) return tooDeep(`tools[${i}].function.parameters`)
    if (fn.strict !== undefined && fn.strict !== null && typeof fn.strict !== "boolean") {
      return invalid(`tools[${i}].function.strict`, "expected a boolean")
    }
    out.push({
      name: fn.name,
      ...(fn.description === undefined ? {} : { description: fn.description as string }),
      ...(fn.parameters === undefined ? {} : { parameters: fn.parameters as Record<string, unknown> }),
      ...(typeof fn.strict === "boolean" ? { strict: fn.strict } : {})
    })
  }
  return Result.succeed(out)
}

const toolChoiceOf = (input: unknown): Checked<NonNullable<Model.GenerateRequest["toolChoice"]>> => {
  if (input === "auto" || input === "none" || input === "required") return Result.succeed(input)
  if (isObject(input) && input.type === "function" && isObject(input.function)) {
    const name = input.function.name
    if (typeof name === "string" && name.length > 0) return Result.succeed({ name })
  }
  return invalid("tool_choice", `expected "auto", "none", "required" or { type: "function", function: { name } }`)
}

const responseFormatOf = (input: unknown): Checked<Model.ResponseFormat> => {
  if (!isObject(input)) return invalid("response_format", `expected an object, got ${Input.kindOf(input)}`)
  switch (input.type) {
    case "text":
    case "json_object":
      return Result.succeed({ type: input.type })
    case "json_schema": {
      const spec = input.json_schema
      if (!isObject(spec)) return invalid("response_format.json_schema", "expected { name, schema, strict? }")
      if (typeof spec.name !== "string" || !formatName.test(spec.name)) {
        return invalid(
          "response_format.json_schema.name",
          "expected a name of 1 to 64 characters of a-z, A-Z, 0-9, _ or -"
        )
      }
      if (spec.schema !== undefined && !isObject(spec.schema)) {
        return invalid("response_format.json_schema.schema", "expected a JSON Schema object")
      }
      if (nestsDeeper(spec.schema, maxSchemaDepth)) return tooDeep("response_format.json_schema.schema")
      if (spec.strict !== undefined && spec.strict !== null && typeof spec.strict !== "boolean") {
        return invalid("response_format.json_schema.strict", "expected a boolean")
      }
      if (spec.description !== undefined && spec.description !== null && typeof spec.description !== "string") {
        return invalid("response_format.json_schema.description", "expected a string")
      }
      return Result.succeed({
        type: "json_schema",
        name: spec.name,
        ...(typeof spec.description === "string" ? { description: spec.description } : {}),
        schema: (spec.schema as Record<string, unknown> | undefined) ?? {},
        ...(typeof spec.strict === "boolean" ? { strict: spec.strict } : {})
      })
    }
    default:
      return invalid("response_format.type", `expected "text", "json_object" or "json_schema"`)
  }
}

// OpenAI takes `stop: []` as no stop sequence; an empty one would stop at once, or an upstream refuse it: none either.
const stopOf = (input: unknown): Checked<ReadonlyArray<string> | undefined> => {
  if (input === null || input === "") return Result.succeed(undefined)
  if (typeof input === "string") return Result.succeed([input])
  if (Array.isArray(input) && input.length <= 16 && input.every((s) => typeof s === "string")) {
    const stops = input.includes("") ? input.filter((s) => s !== "") : (input as ReadonlyArray<string>)
    return Result.succeed(stops.length === 0 ? undefined : stops)
  }
  return invalid("stop", "expected a string or an array of at most 16 strings")
}

const refusedUnlessNeutral = (param: string, value: unknown, neutral: (v: unknown) => boolean): Checked<void> =>
  neutral(value) ? Result.succeed(undefined) : unsupported(param, "not supported by this gateway")

/**
 * Reads a chat-completion request body (parsed JSON).
 *
 * @internal
 */
export const parseChat = (body: unknown): Checked<ChatCall> => {
  if (!isObject(body)) return invalid("body", `expected a JSON object, got ${Input.kindOf(body)}`)
  const model = modelOf(body)
  if (Result.isFailure(model)) return Result.fail(model.failure)
  const conversation = conversationOf(body.messages)
  if (Result.isFailure(conversation)) return Result.fail(conversation.failure)
  const request: {
    -readonly [K in keyof Model.GenerateRequest]: Model.GenerateRequest[K]
  } = { messages: conversation.success.messages }
  if (conversation.success.system !== undefined) request.system = conversation.success.system
  let stream = false
  let includeUsage = false
  let streamOptions: unknown
  for (const key in body) {
    const value = body[key]
    if (value === undefined) continue
    let checked: Checked<unknown> = Result.succeed(undefined)
    switch (key) {
      case "model":
      case "messages":
        break
      case "max_tokens":
      case "max_completion_tokens": {
        if (value === null) break
        const max = positiveInt(key, value)
        if (Result.isFailure(max)) return Result.fail(max.failure)
        if (request.maxTokens !== undefined && request.maxTokens !== max.success) {
          return invalid(key, "max_tokens and max_completion_tokens differ: give one")
        }
        request.maxTokens = max.success
        break
      }
      case "temperature":
        if (value === null) break
        checked = numberIn(key, value, 0, 2)
        if (Result.isSuccess(checked)) request.temperature = value as number
        break
      case "top_p":
        if (value === null) break
        checked = numberIn(key, value, 0, 1)
        if (Result.isSuccess(checked)) request.topP = value as number
        break
      case "seed":
        if (value === null) break
        if (!Number.isSafeInteger(value)) {
          return invalid(key, `expected an integer, got ${typeof value === "number" ? value : Input.kindOf(value)}`)
        }
        request.seed = value as number
        break
      case "stop": {
        const stop = stopOf(value)
        if (Result.isFailure(stop)) return Result.fail(stop.failure)
        if (stop.success !== undefined) request.stop = stop.success
        break
      }
      case "n":
        checked = refusedUnlessNeutral(key, value, (v) => v === 1 || v === null)
        break
      case "stream":
        if (value !== null && typeof value !== "boolean")
          return invalid(key, `expected a boolean, got ${Input.kindOf(value)}`)
        stream = value === true
        break
      case "stream_options":
        streamOptions = value
        break
      case "tools": {
        if (value === null) break
        const tools = toolsOf(value)
        if (Result.isFailure(tools)) return Result.fail(tools.failure)
        if (tools.success.length > 0) request.tools = tools.success
        break
      }
      case "tool_choice": {
        if (value === null) break
        const choice = toolChoiceOf(value)
        if (Result.isFailure(choice)) return Result.fail(choice.failure)
        request.toolChoice = choice.success
        break
      }
      case "parallel_tool_calls":
        if (value === null) break
        if (typeof value !== "boolean") return invalid(key, `expected a boolean, got ${Input.kindOf(value)}`)
        request.parallelToolCalls = value
        break
      case "response_format": {
        if (value === null) break
        const format = responseFormatOf(value)
        if (Result.isFailure(format)) return Result.fail(format.failure)
        request.responseFormat = format.success
        break
      }
      case "frequency_penalty":
      case "presence_penalty":
        checked = refusedUnlessNeutral(key, value, (v) => v === 0 || v === null)
        break
      case "logprobs":
        checked = refusedUnlessNeutral(key, value, (v) => v === false || v === null)
        break
      case "top_logprobs":
        checked = refusedUnlessNeutral(key, value, (v) => v === 0 || v === null)
        break
      case "modalities":
        checked = refusedUnlessNeutral(
          key,
          value,
          (v) => v === null || (Array.isArray(v) && v.length === 1 && v[0] === "text")
        )
        break
      case "logit_bias":
        checked = refusedUnlessNeutral(key, value, (v) => v === null || (isObject(v) && Object.keys(v).length === 0))
        break
      default:
        if (nullable.has(key)) {
          if (value !== null) return unsupported(key, "not supported by this gateway")
        } else if (!ignored.has(key)) {
          return invalid(clip(key), "unsupported parameter")
        }
    }
    if (Result.isFailure(checked)) return Result.fail(checked.failure)
  }
  // As OpenAI answers it: a tool call cannot be forced without tools, nor one of a tool not given
  // (a provider that ignores tool_choice would answer as if it had not been asked).
  const choice = request.toolChoice
  if (choice === "required" || typeof choice === "object") {
    if (request.tools === undefined) return invalid("tool_choice", "a forced tool call needs tools")
    if (typeof choice === "object" && !request.tools.some((tool) => tool.name === choice.name)) {
      return invalid("tool_choice.function.name", `no tool named ${shown(choice.name)} in tools`)
    }
  }
  if (streamOptions !== undefined && streamOptions !== null) {
    if (!stream) return invalid("stream_options", "only allowed with stream: true")
    if (!isObject(streamOptions))
      return invalid("stream_options", `expected an object, got ${Input.kindOf(streamOptions)}`)
    for (const key in streamOptions) {
      if (key !== "include_usage" && key !== "include_obfuscation") {
        return invalid(`stream_options.${clip(key)}`, "unsupported field")
      }
    }
    const include = streamOptions.include_usage
    if (include !== undefined && include !== null && typeof include !== "boolean") {
      return invalid("stream_options.include_usage", "expected a boolean")
    }
    includeUsage = include === true
  }
  return Result.succeed({ model: model.success, request, stream, includeUsage, hoisted: conversation.success.hoisted })
}

const renames: ReadonlyArray<readonly [RegExp, string]> = [
  [/^toolChoice/, "tool_choice"],
  [/^parallelToolCalls/, "parallel_tool_calls"],
  [/^responseFormat\.schema/, "response_format.json_schema.schema"],
  [/^responseFormat/, "response_format"],
  [/^maxTokens/, "max_tokens"],
  [/^topP/, "top_p"],
  [/^tools\[(\d+)\]\.(name|description|parameters)/, "tools[$1].function.$2"],
  [/\.toolCalls\[(\d+)\]\.(name|arguments)/, ".tool_calls[$1].function.$2"],
  [/\.toolCalls/, ".tool_calls"],
  [/\.toolCallId/, ".tool_call_id"]
]

/**
 * The chat-completion parameter a field of the library's request stands for (`toolChoice`:
 * `tool_choice`; `messages[1].toolCalls[0].arguments`: `messages[2].tool_calls[0].function.arguments`
 * after one hoisted system message), for a refusal answered to an OpenAI client.
 *
 * @internal
 */
export const openAiParam = (field: string, hoisted: number): string => {
  let param = field.replace(/^messages\[(\d+)\]/, (_, i: string) => `messages[${Number(i) + hoisted}]`)
  for (const [pattern, replacement] of renames) param = param.replace(pattern, replacement)
  return param
}

/**
 * The chat-completion parameter an upstream's own `param` stands for. An OpenAI-compatible
 * upstream counts the messages it was sent: the system prompt first when one was sent
 * (`systemSent`: the client's `hoisted` leading system messages joined, or a domain's own), then
 * the request's. Its `messages[1]` after a system prompt is the client's `messages[hoisted]`; its
 * `messages[0]` then is the client's first message, or, for a domain's system prompt, none of them.
 *
 * @internal
 */
export const upstreamParam = (param: string, hoisted: number, systemSent: boolean): string =>
  param.replace(/^messages\[(\d+)\]/, (_, i: string) => {
    const index = Number(i) - (systemSent ? 1 : 0)
    return index >= 0 ? `messages[${index + hoisted}]` : hoisted > 0 ? "messages[0]" : "messages"
  })

// OpenAI's embedding input as tokens: one array of token ids, or an array of them.
const isToken = (u: unknown): boolean => Number.isInteger(u)
const isTokens = (u: unknown): boolean => isToken(u) || (Array.isArray(u) && u.length > 0 && u.every(isToken))

/**
 * Reads an embeddings request body (parsed JSON).
 *
 * @internal
 */
export const parseEmbed = (body: unknown): Checked<EmbedCall> => {
  if (!isObject(body)) return invalid("body", `expected a JSON object, got ${Input.kindOf(body)}`)
  const model = modelOf(body)
  if (Result.isFailure(model)) return Result.fail(model.failure)
  let encoding: "float" | "base64" = "float"
  let texts: Array<string> | undefined
  for (const key in body) {
    const value = body[key]
    switch (key) {
      case "model":
        break
      case "input":
        if (typeof value === "string") texts = [value]
        else if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === "string")) {
          texts = value as Array<string>
        } else if (Array.isArray(value) && value.length > 0 && value.every(isTokens)) {
          return unsupported("input", "token arrays are not supported: send the texts")
        } else {
          return invalid("input", "expected a string or a non-empty array of strings")
        }
        // As OpenAI: an empty string has no embedding to give back.
        for (let i = 0; i < texts.length; i++) {
          if (texts[i] === "")
            return invalid(typeof value === "string" ? "input" : `input[${i}]`, "expected a non-empty string")
        }
        break
      case "encoding_format":
        if (value !== undefined && value !== null && value !== "float" && value !== "base64") {
          return invalid(key, `expected "float" or "base64"`)
        }
        encoding = value === "base64" ? "base64" : "float"
        break
      case "dimensions":
        if (value !== undefined && value !== null) return unsupported(key, "not supported by this gateway")
        break
      default:
        if (!ignored.has(key)) return invalid(clip(key), "unsupported parameter")
    }
  }
  if (texts === undefined) return invalid("input", "missing (required)")
  return Result.succeed({
    model: model.success,
    request: { texts: texts as unknown as Model.EmbedRequest["texts"] },
    encoding
  })
}
