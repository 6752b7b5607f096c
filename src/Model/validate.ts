/**
 * The checks every request passes before any provider sees it: its shape (the common
 * shapes by hand, everything else through the schema), a non-empty conversation, and the
 * size limits (and their defaults). Each refusal is an `InvalidRequest` naming the field.
 *
 * @internal
 */
import { Effect, Result, Schema, SchemaIssue } from "effect"
import { invalidRequest, type ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import type { EmbedRequest, GenerateRequest, RequestLimits } from "../Model.js"
import * as Schemas from "./schemas.js"

export const defaultRequestLimits: RequestLimits = {
  maxInputChars: 1_000_000,
  maxMessages: 1_000,
  maxEmbedTexts: 2_048
}

const decodeGenerate = Schema.decodeUnknownResult(Schemas.GenerateRequest, { onExcessProperty: "error" })
const decodeEmbed = Schema.decodeUnknownResult(Schemas.EmbedRequest, { onExcessProperty: "error" })
const isGenerate = Schema.is(Schemas.GenerateRequest)
const isEmbed = Schema.is(Schemas.EmbedRequest)
const generateKeys: ReadonlySet<string> = new Set(Object.keys(Schemas.GenerateRequest.fields))
const embedKeys: ReadonlySet<string> = new Set(Object.keys(Schemas.EmbedRequest.fields))

const hasOnlyKeys = (value: object, keys: ReadonlySet<string>): boolean => {
  for (const key in value) if (!keys.has(key)) return false
  return true
}

const roles: ReadonlySet<string> = new Set(["system", "user", "assistant"])
const optionalString = (v: unknown) => v === undefined || typeof v === "string"
const inRange = (v: unknown, min: number, max: number) =>
  v === undefined || (typeof v === "number" && v >= min && v <= max)

// The common request shapes, checked by hand: `Schema.is` costs ~1.5 us a request on the hot
// path. Conservative: anything unusual (tools, tool messages, stop lists...) goes to the Schema,
// which stays the definition (a property test checks that this never accepts what it refuses).
const isPlainGenerate = (r: Record<string, unknown>): boolean => {
  for (const key in r) {
    const v = r[key]
    switch (key) {
      case "prompt":
      case "system":
        if (typeof v !== "string") return false
        break
      case "messages": {
        if (!Array.isArray(v)) return false
        for (const m of v) {
          if (typeof m !== "object" || m === null || !roles.has(m.role) || typeof m.content !== "string") return false
          for (const k in m) {
            if (k === "name") {
              if (typeof m.name !== "string" || !Schemas.participantNamePattern.test(m.name)) return false
            } else if (k !== "role" && k !== "content") return false
          }
        }
        break
      }
      case "model":
        if (typeof v !== "string" || v.length === 0 || v.trim() !== v) return false
        break
      case "maxTokens":
        if (!Number.isInteger(v) || !inRange(v, 1, 1_000_000)) return false
        break
      case "temperature":
        if (!inRange(v, 0, 2) || Number.isNaN(v)) return false
        break
      case "topP":
        if (!inRange(v, 0, 1) || Number.isNaN(v)) return false
        break
      case "seed":
        // Schema.Int's check: past 2^53 integers are no longer exact (2^53 + 1 reads as 2^53).
        if (!Number.isSafeInteger(v)) return false
        break
      default:
        return false
    }
  }
  return optionalString(r.prompt)
}

/**
 * How deeply a tool's parameters or a response schema may nest arrays and objects: far
 * beyond any real schema, and far below what `JSON.stringify` and the providers' encoders
 * can recurse through (a few thousand levels overflow the stack).
 *
 * @internal
 */
export const maxSchemaDepth = 64

/**
 * Whether a value nests arrays and objects deeper than `max`, found without recursion (the
 * value may be nested too deeply to recurse through; a cycle counts as too deep).
 *
 * @internal
 */
export const nestsDeeper = (value: unknown, max: number): boolean => {
  const values: Array<unknown> = [value]
  const depths: Array<number> = [1]
  while (values.length > 0) {
    const current = values.pop()
    const depth = depths.pop()!
    if (typeof current !== "object" || current === null) continue
    if (depth > max) return true
    for (const child of Array.isArray(current) ? current : Object.values(current)) {
      if (typeof child === "object" && child !== null) {
        values.push(child)
        depths.push(depth + 1)
      }
    }
  }
  return false
}

const tooDeep = (field: string) => invalid(field, `nests arrays and objects more than ${maxSchemaDepth} levels deep`)

// In the words of every other check: `unknown field (did you mean maxTokens?)`, `missing (required)`, and a wrong
// value's `expected ..., got 3` (shown bounded: a prompt may be long). Only on the refusal path.
const shapeError = (error: Schema.SchemaError, what: string, input: unknown): ModelError => {
  const issue = Input.issueOf(error, "", Input.leafHook)
  let message = issue.message
  if (message.startsWith("Expected ")) {
    message = `e${message.slice(1)}`
    const got = valueAt(input, error)
    if (got !== undefined) message = `${message}, got ${Input.shown(got.value)}`
  }
  return invalidRequest(issue.path, `${message} (in the ${what})`)
}

// The value at the first issue's path, when it can be read (a getter may throw).
const valueAt = (input: unknown, error: Schema.SchemaError): { readonly value: unknown } | undefined => {
  const first = SchemaIssue.makeFormatterStandardSchemaV1()(error.issue).issues[0]
  let value = input
  try {
    for (const segment of first?.path ?? []) {
      const key = typeof segment === "object" && segment !== null ? segment.key : segment
      if (typeof value !== "object" || value === null || !Object.hasOwn(value, key)) return undefined
      value = (value as Record<PropertyKey, unknown>)[key]
    }
  } catch {
    return undefined
  }
  return { value }
}

const invalid = (field: string, message: string) => invalidRequest(field, message)
const refuse = (field: string, message: string) => Effect.fail(invalid(field, message))

export const validateGenerate = (
  request: GenerateRequest,
  limits: RequestLimits = defaultRequestLimits
): Effect.Effect<GenerateRequest, ModelError> => {
  const error = checkGenerate(request, limits)
  return error === undefined ? Effect.succeed(request) : Effect.fail(error)
}

// A request that throws when read (a getter, a `Proxy` trap) is the caller's refused request, named by its field
// when a reading of its own finds it; never a throw out of a check, nor out of a function that answers an Effect.
const unreadable = (request: unknown, error: unknown): ModelError => {
  const located = Input.snapshot(request, "", "request")
  return Result.isFailure(located)
    ? invalid(located.failure.path, located.failure.message)
    : invalid("request", `reading it threw: ${Input.thrownMessage(error)}`)
}

export const checkGenerate = (
  request: GenerateRequest,
  limits: RequestLimits = defaultRequestLimits
): ModelError | undefined => {
  try {
    return checkReadable(request, limits)
  } catch (error) {
    return unreadable(request, error)
  }
}

const checkReadable = (request: GenerateRequest, limits: RequestLimits): ModelError | undefined => {
  if (typeof request !== "object" || request === null) {
    return invalid("request", `expected an object, got ${Input.kindOf(request)}`)
  }
  if (
    !isPlainGenerate(request as Record<string, unknown>) &&
    (!isGenerate(request) || !hasOnlyKeys(request, generateKeys))
  ) {
    const decoded = decodeGenerate(request)
    if (Result.isFailure(decoded)) return shapeError(decoded.failure, "request", request)
  }
  if (request.tools !== undefined) {
    const tools = request.tools
    for (let i = 0; i < tools.length; i++) {
      if (nestsDeeper(tools[i]!.parameters, maxSchemaDepth)) return tooDeep(`tools[${i}].parameters`)
      // OpenAI and Gemini refuse a name given twice after a call; a server that takes it cannot say which was called.
      // At most 128 tools: comparing each with those before costs less than a Set a request.
      for (let j = 0; j < i; j++) {
        if (tools[j]!.name === tools[i]!.name) {
          return invalid(`tools[${i}].name`, `the name "${tools[i]!.name}" is given twice (first at tools[${j}])`)
        }
      }
    }
  }
  if (request.responseFormat?.type === "json_schema" && nestsDeeper(request.responseFormat.schema, maxSchemaDepth)) {
    return tooDeep("responseFormat.schema")
  }
  if (request.prompt === undefined && request.messages === undefined) {
    return invalid("prompt", "give either `prompt` or `messages`")
  }
  if (request.prompt !== undefined && request.messages !== undefined) {
    return invalid("messages", "give either `prompt` or `messages`, not both")
  }
  let chars = request.system?.length ?? 0
  if (request.prompt !== undefined) {
    if (request.prompt.trim().length === 0) return invalid("prompt", "the prompt is empty")
    chars += request.prompt.length
  } else {
    const messages = request.messages!
    if (messages.length === 0) return invalid("messages", "`messages` must not be empty")
    if (messages.length > limits.maxMessages) {
      return invalid("messages", `${messages.length} messages exceed the limit of ${limits.maxMessages}`)
    }
    let anyContent = false
    for (let i = 0; i < messages.length; i++) {
      const message = messages[i]!
      chars += message.content.length + (message.toolCallId?.length ?? 0) + (message.name?.length ?? 0)
      if (message.content.trim().length > 0 || message.toolCalls !== undefined) anyContent = true
      if (message.toolCalls !== undefined) {
        const calls = message.toolCalls
        for (let j = 0; j < calls.length; j++) {
          const call = calls[j]!
          // A call of no tool: OpenAI and Gemini refuse it after a round trip, Ollama sent it on; no answer carries one.
          if (call.name.length === 0)
            return invalid(`messages[${i}].toolCalls[${j}].name`, "a tool call without a name")
          chars +=
            toolCallOverhead + call.id.length + call.name.length + call.arguments.length + (call.signature?.length ?? 0)
        }
      }
    }
    if (!anyContent) return invalid("messages", "every message is empty")
  }
  if (chars > limits.maxInputChars)
    return overLimit(request.prompt !== undefined ? "prompt" : "messages", chars, limits)
  if (request.tools !== undefined) {
    for (let i = 0; i < request.tools.length; i++) {
      const tool = request.tools[i]!
      const parameters = jsonChars(tool.parameters)
      if (parameters === undefined) return invalid(`tools[${i}].parameters`, "not JSON (JSON.stringify fails on it)")
      chars += tool.name.length + (tool.description?.length ?? 0) + parameters
    }
    if (chars > limits.maxInputChars) return overLimit("tools", chars, limits)
  }
  if (request.responseFormat?.type === "json_schema") {
    const schema = jsonChars(request.responseFormat.schema)
    if (schema === undefined) return invalid("responseFormat.schema", "not JSON (JSON.stringify fails on it)")
    chars += schema + request.responseFormat.name.length + (request.responseFormat.description?.length ?? 0)
    if (chars > limits.maxInputChars) return overLimit("responseFormat", chars, limits)
  }
  if (request.stop !== undefined) {
    for (let i = 0; i < request.stop.length; i++) {
      const stop = request.stop[i]!
      // Found at the start of any text: Ollama and vLLM would cut every answer to nothing.
      if (stop.length === 0) return invalid(`stop[${i}]`, "an empty stop sequence would stop every answer at its start")
      chars += stop.length
    }
    if (chars > limits.maxInputChars) return overLimit("stop", chars, limits)
  }
  return undefined
}

/**
 * Whether a request asks for at most one tool call (`parallelToolCalls: false`) where a call may
 * come: what a provider without that setting refuses rather than ignores.
 *
 * @internal
 */
export const asksOneToolCall = (request: GenerateRequest): boolean =>
  request.parallelToolCalls === false &&
  request.tools !== undefined &&
  request.tools.length > 0 &&
  request.toolChoice !== "none"

/** @internal */
export const oneToolCallRefused = (provider: string) =>
  `${provider} has no setting for at most one tool call a turn: leave parallelToolCalls out, or use a provider that has one`

// What a tool call costs on the wire with every field empty, at least (Gemini's and Ollama's shapes; OpenAI's
// is ~65): without it, a conversation of empty calls counts as nothing however many it has.
const toolCallOverhead = 32

const overLimit = (field: string, chars: number, limits: RequestLimits) =>
  invalid(field, `the input has ${chars} characters, over the limit of ${limits.maxInputChars}`)

/** The characters of a value as JSON text (`undefined` when JSON cannot write it); depth was checked before. */
const jsonChars = (value: unknown): number | undefined => {
  if (value === undefined) return 0
  try {
    return JSON.stringify(value)?.length ?? 0
  } catch {
    return undefined
  }
}

export const validateEmbed = (
  request: EmbedRequest,
  limits: RequestLimits = defaultRequestLimits
): Effect.Effect<EmbedRequest, ModelError> => {
  try {
    return validateReadable(request, limits)
  } catch (error) {
    return Effect.fail(unreadable(request, error))
  }
}

const validateReadable = (request: EmbedRequest, limits: RequestLimits): Effect.Effect<EmbedRequest, ModelError> => {
  if (typeof request !== "object" || request === null) {
    return refuse("request", `expected an object, got ${Input.kindOf(request)}`)
  }
  if (Array.isArray((request as { readonly texts?: unknown }).texts) && request.texts.length === 0) {
    return refuse("texts", "expected at least one text")
  }
  if (!isEmbed(request) || !hasOnlyKeys(request, embedKeys)) {
    const decoded = decodeEmbed(request)
    if (Result.isFailure(decoded)) return Effect.fail(shapeError(decoded.failure, "embedding request", request))
  }
  if (request.texts.length > limits.maxEmbedTexts) {
    return refuse("texts", `${request.texts.length} texts exceed the limit of ${limits.maxEmbedTexts}`)
  }
  let chars = 0
  for (let i = 0; i < request.texts.length; i++) {
    const text = request.texts[i]!
    // OpenAI refuses an empty input (after a call), Ollama gives it no vector: every provider fails on it.
    if (text.length === 0) return refuse(`texts[${i}]`, "expected a non-empty text: an empty one has no embedding")
    chars += text.length
  }
  if (chars > limits.maxInputChars) {
    return refuse("texts", `the input has ${chars} characters, over the limit of ${limits.maxInputChars}`)
  }
  return Effect.succeed(request)
}
