/**
 * The canonical form of a request that `ResponseCache.key` hashes, where requests that mean
 * the same are written alike (see its doc), and the request a call is keyed by.
 *
 * @internal
 */
import { hash } from "node:crypto"
import {
  type GenerateRequest,
  type Message,
  type ResponseFormat,
  type ToolCall,
  type ToolDefinition,
  toMessages
} from "../Model.js"

// Free-form JSON (a tool's parameters, a response schema): object keys sorted, so their order does not
// count. No prototype: a `__proto__` key (JSON.parse makes one) stays a key instead of vanishing.
const sortedJson = (value: unknown, own = true): unknown => {
  if (typeof value !== "object" || value === null) return value
  // What JSON.stringify sends for it (a Date's ISO text), as it does: once, not again on what it gives.
  // Read by its keys, every Date keyed alike.
  if (own && typeof (value as { readonly toJSON?: unknown }).toJSON === "function") {
    return sortedJson((value as { readonly toJSON: () => unknown }).toJSON(), false)
  }
  if (Array.isArray(value)) return value.map((item) => sortedJson(item))
  const out: Record<string, unknown> = Object.create(null)
  for (const k of Object.keys(value).sort()) out[k] = sortedJson((value as Record<string, unknown>)[k])
  return out
}

// A signature goes back to the provider with its call (Gemini's thought signature) and may change the answer. A call
// without one keys as it did before signatures existed, so entries kept then still answer.
const callForm = (c: ToolCall): unknown =>
  c.signature === undefined ? [c.id, c.name, c.arguments] : [c.id, c.name, c.arguments, c.signature]

// A name is sent to the provider and may change the answer. Last and only when set, so that a message without one
// keys as it did before names existed.
const messageForm = (m: Message): unknown => {
  const form = [
    m.role,
    m.content,
    m.toolCallId ?? null,
    m.toolCalls === undefined || m.toolCalls.length === 0 ? null : m.toolCalls.map(callForm)
  ]
  return m.name === undefined ? form : [...form, m.name]
}

// `strict: false` is every provider's default, so it is the same tool as no `strict`.
const toolForm = (t: ToolDefinition): unknown => [
  t.name,
  t.description ?? null,
  t.parameters === undefined ? null : sortedJson(t.parameters),
  t.strict === true
]

// Stop sequences are a set: generation stops where any of them first occurs, in whatever order they are given.
const stopForm = (stop: ReadonlyArray<string> | undefined): unknown => {
  if (stop === undefined || stop.length === 0) return null
  return stop.length === 1 ? stop : Array.from(new Set(stop)).sort()
}

const formatForm = (format: ResponseFormat | undefined): unknown => {
  if (format === undefined || format.type === "text") return null
  if (format.type === "json_object") return format.type
  const form = [format.type, format.name, sortedJson(format.schema), format.strict === true]
  // Last and only when set, so that the keys of every format without one stay what they were.
  return format.description === undefined ? form : [...form, format.description]
}

/**
 * The key of a request read and checked by `ResponseCache.key`; throws what reading it throws.
 *
 * @internal
 */
export const keyOf = (provider: string, r: GenerateRequest): string => {
  const tools = r.tools === undefined || r.tools.length === 0 ? undefined : r.tools
  const choice = r.toolChoice === undefined || (r.toolChoice === "auto" && tools !== undefined) ? null : r.toolChoice
  const form = [
    "v3",
    provider,
    toMessages(r).map(messageForm),
    r.model ?? null,
    r.maxTokens ?? null,
    r.temperature ?? null,
    r.topP ?? null,
    stopForm(r.stop),
    r.seed ?? null,
    tools === undefined ? null : tools.map(toolForm),
    choice === null || typeof choice === "string" ? choice : [choice.name],
    formatForm(r.responseFormat),
    // Last and only when set, so that the keys of every other request stay what they were.
    ...(r.parallelToolCalls === false && tools !== undefined ? [false] : []),
    // A prompt is not a conversation of one user message to every provider: watsonx's text generation sends it as
    // it is (a conversation as `User: ...`), Ollama's `api: "generate"` to another endpoint. Last, and only for a
    // prompt, so that the keys of conversations (every gateway call) stay what they were.
    ...(r.messages === undefined ? ["prompt"] : [])
  ]
  return hash("sha256", JSON.stringify(form), "hex")
}

/**
 * The request a call's cache key is made of: a request naming no model keys as one naming the
 * provider's default model, the model that answers it, so a provider redeployed with another
 * default does not answer from the old model's entries. Copied only when it names none.
 *
 * @internal
 */
export const keyedRequest = (request: GenerateRequest, defaultModel: string): GenerateRequest =>
  request.model === undefined ? { ...request, model: defaultModel } : request
