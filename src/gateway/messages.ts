/**
 * The conversation of an OpenAI chat-completion request: its messages read into the library's
 * `Message`s (leading system and developer messages hoisted into the system prompt), their
 * content parts, tool calls (Gemini's thought signatures included) and the tool messages that
 * answer them, each mistake a 400 naming the parameter (`messages[2].tool_calls[0].id`).
 *
 * @internal
 */
import { Result } from "effect"
import * as Input from "../Input.js"
import type * as Model from "../Model.js"
import { participantNamePattern } from "../Model/schemas.js"
import { type Checked, clip, invalid, isObject, nullable, shown, unsupported } from "./checks.js"

// OpenAI's content parts other than text: a part the gateway cannot send on, not a mistake.
const mediaParts: ReadonlySet<string> = new Set(["image_url", "input_audio", "file"])

// `refusal`: an assistant's content may carry refusal parts (its answers replayed); OpenAI refuses them in any other role.
const textOf = (content: unknown, at: string, nullable: boolean, refusal = false): Checked<string> => {
  if (typeof content === "string") return Result.succeed(content)
  if (content === null || content === undefined) {
    return nullable
      ? Result.succeed("")
      : invalid(at, `expected a string or an array of text parts, got ${Input.kindOf(content)}`)
  }
  if (!Array.isArray(content))
    return invalid(at, `expected a string or an array of text parts, got ${Input.kindOf(content)}`)
  let text = ""
  for (let i = 0; i < content.length; i++) {
    const part = content[i]
    if (!isObject(part) || (part.type !== "text" && part.type !== "refusal")) {
      const type = isObject(part) ? shown(part.type) : Input.kindOf(part)
      const refuse =
        isObject(part) && typeof part.type === "string" && mediaParts.has(part.type) ? unsupported : invalid
      return refuse(`${at}[${i}].type`, `only text parts are supported, got ${type}`)
    }
    if (part.type === "refusal" && !refusal) {
      return invalid(`${at}[${i}].type`, `a "refusal" part is only allowed in an assistant message`)
    }
    const value = part.type === "text" ? part.text : part.refusal
    if (typeof value !== "string") return invalid(`${at}[${i}].${String(part.type)}`, "expected a string")
    text += value
  }
  return Result.succeed(text)
}

/**
 * The longest Gemini thought signature read back from a client (`extra_content.google.thought_signature`):
 * an opaque base64 text of a few kilobytes, kept with its call and sent on to the provider.
 *
 * @internal
 */
export const maxSignatureLength = 1_048_576

// Gemini's OpenAI-compatible wire carries a call's thought signature as `extra_content.google.thought_signature`;
// a client sends it back with the call, and Gemini refuses the next turn without it.
const signatureOf = (extra: unknown, at: string): Checked<string | undefined> => {
  if (extra === undefined || extra === null) return Result.succeed(undefined)
  if (!isObject(extra)) return invalid(at, `expected an object, got ${Input.kindOf(extra)}`)
  const google = extra.google
  if (google === undefined || google === null) return Result.succeed(undefined)
  if (!isObject(google)) return invalid(`${at}.google`, `expected an object, got ${Input.kindOf(google)}`)
  const signature = google.thought_signature
  if (signature === undefined || signature === null) return Result.succeed(undefined)
  if (typeof signature !== "string" || signature.length === 0 || signature.length > maxSignatureLength) {
    return invalid(
      `${at}.google.thought_signature`,
      `expected the signature the gateway sent (a string of 1 to ${maxSignatureLength} characters), got ${
        typeof signature === "string" ? `${signature.length} characters` : Input.kindOf(signature)
      }`
    )
  }
  return Result.succeed(signature)
}

const toolCallsOf = (calls: unknown, at: string): Checked<ReadonlyArray<Model.ToolCall>> => {
  if (!Array.isArray(calls)) return invalid(at, `expected an array, got ${Input.kindOf(calls)}`)
  const out: Array<Model.ToolCall> = []
  for (let i = 0; i < calls.length; i++) {
    const call = calls[i]
    const fn = isObject(call) ? call.function : undefined
    if (!isObject(call) || typeof call.id !== "string" || !isObject(fn) || typeof fn.name !== "string") {
      return invalid(`${at}[${i}]`, "expected { id, type: 'function', function: { name, arguments } }")
    }
    if (call.type !== "function") return invalid(`${at}[${i}].type`, `expected "function", got ${shown(call.type)}`)
    const args = fn.arguments ?? ""
    if (typeof args !== "string") return invalid(`${at}[${i}].function.arguments`, "expected a JSON string")
    const signature = signatureOf(call.extra_content, `${at}[${i}].extra_content`)
    if (Result.isFailure(signature)) return Result.fail(signature.failure)
    out.push(
      signature.success === undefined
        ? { id: call.id, name: fn.name, arguments: args }
        : { id: call.id, name: fn.name, arguments: args, signature: signature.success }
    )
  }
  return Result.succeed(out)
}

// OpenAI's pattern for a participant's name, sent on with its message (a name OpenAI refuses is refused).
const nameOf = (name: unknown, at: string): Checked<string | undefined> =>
  name === undefined || name === null
    ? Result.succeed(undefined)
    : typeof name === "string" && participantNamePattern.test(name)
      ? Result.succeed(name)
      : invalid(
          at,
          `expected a name of 1 to 256 characters without spaces or <, |, \\, /, >, got ${
            typeof name === "string" && name.length > 256 ? `${name.length} characters` : shown(name)
          }`
        )

// OpenAI's message fields the gateway cannot send on (given as null, they say nothing).
const messageFields: ReadonlySet<string> = new Set(["audio", "function_call"])

const messageKeys: ReadonlySet<string> = new Set([
  "role",
  "content",
  "name",
  "tool_calls",
  "tool_call_id",
  "refusal",
  "annotations"
])

// A tool message's name is read and left out: OpenAI's tool messages have none (the call's id names what it answers).
const named = (message: Model.Message, name: string | undefined): Model.Message =>
  name === undefined ? message : { ...message, name }

interface Awaited {
  readonly at: number
  readonly ids: ReadonlySet<string>
  readonly answered: Set<string>
}

const unansweredOf = (awaited: Awaited, where: string): Checked<void> => {
  for (const id of awaited.ids) {
    if (!awaited.answered.has(id)) {
      return invalid(`messages[${awaited.at}].tool_calls`, `no tool message answers the call ${shown(id)} ${where}`)
    }
  }
  return Result.succeed(undefined)
}

/**
 * A request's messages read: the hoisted system prompt, the rest, and how many were hoisted (to
 * name a library error's `messages[i]` as the client counted them).
 *
 * @internal
 */
export interface Conversation {
  readonly system: string | undefined
  readonly messages: ReadonlyArray<Model.Message>
  readonly hoisted: number
}

/**
 * Reads `messages`. Leading system (or developer) messages become the request's system prompt, so
 * that a domain's own system prompt applies only when the client gives none (`Domain.applyTo`); their
 * names are not sent (the system prompt is one text), unless the conversation has no other message
 * (they are then its messages). Every other message keeps its `name`.
 *
 * @internal
 */
export const conversationOf = (input: unknown): Checked<Conversation> => {
  if (!Array.isArray(input)) return invalid("messages", `expected an array of messages, got ${Input.kindOf(input)}`)
  if (input.length === 0) return invalid("messages", "expected at least one message")
  const system: Array<Model.Message> = []
  const messages: Array<Model.Message> = []
  // The calls the latest assistant message made (and which are answered yet), while only tool messages follow it:
  // OpenAI refuses a tool message that answers no call of it, and a conversation that goes on with a call unanswered.
  let awaited: Awaited | undefined
  for (let i = 0; i < input.length; i++) {
    const at = `messages[${i}]`
    const m = input[i]
    if (!isObject(m)) return invalid(at, `expected a message object, got ${Input.kindOf(m)}`)
    for (const key in m) {
      if (!messageKeys.has(key) && !(m[key] === null && nullable.has(key))) {
        return messageFields.has(key)
          ? unsupported(`${at}.${key}`, "not supported by this gateway")
          : invalid(`${at}.${clip(key)}`, "unsupported field")
      }
    }
    const name = nameOf(m.name, `${at}.name`)
    if (Result.isFailure(name)) return Result.fail(name.failure)
    const role = m.role
    const refusal = m.refusal
    if (refusal !== undefined && refusal !== null) {
      if (role !== "assistant") return invalid(`${at}.refusal`, "only an assistant message carries a refusal")
      if (typeof refusal !== "string")
        return invalid(`${at}.refusal`, `expected a string, got ${Input.kindOf(refusal)}`)
    }
    // OpenAI's answers carry their citations (`annotations: []` mostly), and its guides send the answer back as it
    // came: they say what the assistant cited, nothing the model is asked to do, so they are read and left out.
    const annotations = m.annotations
    if (annotations !== undefined && annotations !== null) {
      if (role !== "assistant") return invalid(`${at}.annotations`, "only an assistant message carries annotations")
      if (!Array.isArray(annotations))
        return invalid(`${at}.annotations`, `expected an array, got ${Input.kindOf(annotations)}`)
    }
    if (role !== "tool" && awaited !== undefined) {
      const unanswered = unansweredOf(awaited, `before ${at}`)
      if (Result.isFailure(unanswered)) return Result.fail(unanswered.failure)
      awaited = undefined
    }
    switch (role) {
      case "system":
      case "developer": {
        const text = textOf(m.content, `${at}.content`, false)
        if (Result.isFailure(text)) return Result.fail(text.failure)
        if (messages.length === 0) system.push(named({ role: "system", content: text.success }, name.success))
        else messages.push(named({ role: "system", content: text.success }, name.success))
        break
      }
      case "user": {
        const text = textOf(m.content, `${at}.content`, false)
        if (Result.isFailure(text)) return Result.fail(text.failure)
        messages.push(named({ role: "user", content: text.success }, name.success))
        break
      }
      case "assistant": {
        const read = textOf(m.content, `${at}.content`, true, true)
        if (Result.isFailure(read)) return Result.fail(read.failure)
        // An answer replayed as it came (`content: null, refusal`): what the assistant said is its refusal.
        const content = read.success.length === 0 && typeof refusal === "string" ? refusal : read.success
        if (m.tool_calls === undefined || m.tool_calls === null) {
          messages.push(named({ role: "assistant", content }, name.success))
          break
        }
        const calls = toolCallsOf(m.tool_calls, `${at}.tool_calls`)
        if (Result.isFailure(calls)) return Result.fail(calls.failure)
        const ids = new Set<string>()
        for (let j = 0; j < calls.success.length; j++) {
          const id = calls.success[j]!.id
          if (ids.has(id)) {
            return invalid(
              `${at}.tool_calls[${j}].id`,
              `two calls of id ${shown(id)}: their answers could not be told apart`
            )
          }
          ids.add(id)
        }
        messages.push(named({ role: "assistant", content, toolCalls: calls.success }, name.success))
        awaited = { at: i, ids, answered: new Set() }
        break
      }
      case "tool": {
        const text = textOf(m.content, `${at}.content`, false)
        if (Result.isFailure(text)) return Result.fail(text.failure)
        if (typeof m.tool_call_id !== "string") {
          return invalid(`${at}.tool_call_id`, "a tool message names the call it answers")
        }
        if (awaited === undefined || !awaited.ids.has(m.tool_call_id)) {
          return invalid(
            `${at}.tool_call_id`,
            `no tool call ${shown(m.tool_call_id)} in the assistant message before it (a tool message answers one)`
          )
        }
        if (awaited.answered.has(m.tool_call_id)) {
          return invalid(`${at}.tool_call_id`, `the call ${shown(m.tool_call_id)} is answered already`)
        }
        awaited.answered.add(m.tool_call_id)
        messages.push({ role: "tool", content: text.success, toolCallId: m.tool_call_id })
        break
      }
      default:
        return invalid(
          `${at}.role`,
          `expected "system", "developer", "user", "assistant" or "tool", got ${shown(role)}`
        )
    }
  }
  // Ending on its calls, none answered yet, is a conversation replayed up to them; some answered, it went on without the rest.
  if (awaited !== undefined && awaited.answered.size > 0) {
    const unanswered = unansweredOf(awaited, "at the end of the conversation")
    if (Result.isFailure(unanswered)) return Result.fail(unanswered.failure)
  }
  // A conversation of system messages only is one OpenAI answers: they stay its messages, names and all.
  if (messages.length === 0) return Result.succeed({ system: undefined, messages: system, hoisted: 0 })
  let prompt: string | undefined
  for (const message of system) prompt = prompt === undefined ? message.content : `${prompt}\n\n${message.content}`
  return Result.succeed({ system: prompt, messages, hoisted: system.length })
}
