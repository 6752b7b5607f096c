/**
 * The OpenAI chat-completions request body from a `GenerateRequest`: messages (tool turns in
 * the order OpenAI takes them), tools, tool choice, response format, stop sequences and the
 * token bound, with Gemini's thought signatures given back where its endpoint wants them.
 *
 * @since 0.3.0
 */
import { Effect, Result } from "effect"
import { invalidRequest, type ModelError } from "../../AiError.js"
import * as Model from "../../Model.js"
import { responseFormatNamePattern } from "../schemas.js"
import { argumentsOrEmpty } from "./assemble.js"

/**
 * A call's signature as Gemini's OpenAI-compatible API takes it back: `{ extra_content }`, or
 * nothing for a call without one (other servers may refuse a field they do not know).
 *
 * @since 0.3.0
 * @category encoding
 */
export const extraContentOf = (call: Model.ToolCall): { readonly extra_content?: unknown } =>
  call.signature === undefined ? {} : { extra_content: { google: { thought_signature: call.signature } } }

/**
 * What {@link chatBody} needs besides the request.
 *
 * @since 0.2.0
 * @category models
 */
export interface ChatBodyOptions {
  readonly model: string
  readonly stream: boolean
  /** Ask for the final usage chunk of a stream. */
  readonly streamUsage: boolean
  readonly maxTokensField: "max_tokens" | "max_completion_tokens"
  readonly provider: string
  /** Send tool calls' signatures as `extra_content` (only Gemini's endpoint takes them). Default false. */
  readonly sendSignatures?: boolean | undefined
  /** The most stop sequences the server takes (OpenAI's 4); more are refused naming `stop`. Default: any. */
  readonly maxStopSequences?: number | undefined
  /**
   * OpenAI's order of tool turns, which its own API answers with a 400 otherwise: the tool
   * messages answering an assistant message's calls come right after it, one for each call,
   * before any other message. Default false (servers of the protocol take any order).
   *
   * @since 0.3.0
   */
  readonly toolTurnsInOrder?: boolean | undefined
}

/**
 * What is wrong with the tool turns of a conversation, walked a message at a time: a tool
 * message answering a call no earlier assistant message made (every server is then left to
 * guess, and OpenAI answers a 400), and, in OpenAI's order, one that does not follow the
 * calls it answers, or a call left without an answer before the next turn.
 */
const toolTurns = (provider: string, inOrder: boolean) => {
  const made = new Set<string>()
  // In OpenAI's order: the calls of the assistant message the tool messages now follow, and those not yet answered.
  let open: { readonly at: number; readonly ids: ReadonlyArray<string>; readonly unanswered: Set<string> } | undefined
  const closeOpen = (): ModelError | undefined => {
    if (open === undefined) return undefined
    const { at, ids, unanswered } = open
    open = undefined
    const j = ids.findIndex((id) => unanswered.has(id))
    return j === -1
      ? undefined
      : invalidRequest(
          `messages[${at}].toolCalls[${j}]`,
          `the call "${ids[j]}" has no answer: OpenAI takes an assistant message's tool calls only when a tool message answering each follows it, before any other message`,
          provider
        )
  }
  return {
    message: (message: Model.Message, index: number): ModelError | undefined => {
      if (message.role === "tool") {
        const id = message.toolCallId!
        if (!made.has(id)) {
          return invalidRequest(
            `messages[${index}].toolCallId`,
            `the tool message answers the call "${id}", which no earlier assistant message made`,
            provider
          )
        }
        if (inOrder && !(open?.unanswered.delete(id) ?? false)) {
          return invalidRequest(
            `messages[${index}].toolCallId`,
            `the tool message answers the call "${id}" out of OpenAI's order: it takes the answers to an assistant message's calls right after it, one for each call`,
            provider
          )
        }
        return undefined
      }
      const unanswered = inOrder ? closeOpen() : undefined
      if (unanswered !== undefined) return unanswered
      if (message.role === "assistant" && message.toolCalls !== undefined && message.toolCalls.length > 0) {
        const ids = message.toolCalls.map((call) => call.id)
        for (const id of ids) made.add(id)
        if (inOrder) open = { at: index, ids, unanswered: new Set(ids) }
      }
      return undefined
    },
    end: (): ModelError | undefined => (inOrder ? closeOpen() : undefined)
  }
}

const messageOf = (
  message: Model.Message,
  index: number,
  provider: string,
  sendSignatures: boolean
): Result.Result<unknown, ModelError> => {
  switch (message.role) {
    case "tool":
      // An empty id names no call either: OpenAI refuses `tool_call_id: ""`, after a round trip.
      if (message.toolCallId === undefined || message.toolCallId.length === 0) {
        return Result.fail(
          invalidRequest(`messages[${index}].toolCallId`, "a tool message must name the call it answers", provider)
        )
      }
      return Result.succeed({ role: "tool", tool_call_id: message.toolCallId, content: message.content })
    case "assistant":
      if (message.toolCalls !== undefined && message.toolCalls.length > 0) {
        for (let j = 0; j < message.toolCalls.length; j++) {
          const call = message.toolCalls[j]!
          // OpenAI refuses either empty, after a call; no answer carries a call of no name (each is Decode there).
          if (call.id.length === 0 || call.name.length === 0) {
            return Result.fail(
              invalidRequest(
                `messages[${index}].toolCalls[${j}].${call.id.length === 0 ? "id" : "name"}`,
                call.id.length === 0
                  ? "a tool call needs an id for its result to name (OpenAI refuses an empty one)"
                  : "a tool call without a name",
                provider
              )
            )
          }
        }
        return Result.succeed({
          role: "assistant",
          content: message.content.length === 0 ? null : message.content,
          ...(message.name === undefined ? {} : { name: message.name }),
          tool_calls: message.toolCalls.map((call) => ({
            id: call.id,
            type: "function",
            function: { name: call.name, arguments: argumentsOrEmpty(call.arguments) },
            ...(sendSignatures ? extraContentOf(call) : {})
          }))
        })
      }
      return Result.succeed(
        message.name === undefined
          ? { role: "assistant", content: message.content }
          : { role: "assistant", content: message.content, name: message.name }
      )
    default:
      return Result.succeed(
        message.name === undefined
          ? { role: message.role, content: message.content }
          : { role: message.role, content: message.content, name: message.name }
      )
  }
}

/**
 * Tools as OpenAI's `tools` field (Ollama takes the same shape): functions, parameters an
 * empty object schema when none are given.
 *
 * @internal
 */
export const toolsBody = (tools: ReadonlyArray<Model.ToolDefinition>): Array<unknown> =>
  tools.map((tool) => ({
    type: "function",
    function: {
      name: tool.name,
      ...(tool.description === undefined ? {} : { description: tool.description }),
      parameters: tool.parameters ?? { type: "object", properties: {} },
      ...(tool.strict === undefined ? {} : { strict: tool.strict })
    }
  }))

/**
 * The JSON body of a `/chat/completions` request, each message's `name` (since 0.3.0) sent but a
 * tool message's (OpenAI's tool messages have none). A tool message without the id of the call
 * it answers (or with an empty one, or the id of no call an earlier assistant message made),
 * or a tool call with an empty id or name, is refused (`InvalidRequest` naming it), and so are
 * tool turns out of OpenAI's order when `toolTurnsInOrder`, as is a tool choice naming a tool that is
 * not among the tools, or asking for a call (`"required"`, a named tool) of a request without
 * tools (`"auto"` and `"none"` are then not sent), or a response format's name outside OpenAI's
 * `^[a-zA-Z0-9_-]{1,64}$`. A call's blank arguments (`""`, as OpenAI answers a tool without
 * parameters) go as `"{}"`: OpenAI takes either, stricter servers of the protocol only the JSON.
 *
 * @since 0.2.0
 * @category encoding
 */
export const chatBody = (
  request: Model.GenerateRequest,
  options: ChatBodyOptions
): Effect.Effect<Record<string, unknown>, ModelError> => {
  const messages: Array<unknown> = []
  const conversation = Model.toMessages(request)
  const turns = toolTurns(options.provider, options.toolTurnsInOrder === true)
  for (let i = 0; i < conversation.length; i++) {
    // Indices name the request's own messages: the system prompt placed first is not one of them.
    const index = request.system === undefined ? i : i - 1
    const message = conversation[i]!
    const wire = messageOf(message, index, options.provider, options.sendSignatures === true)
    if (Result.isFailure(wire)) return Effect.fail(wire.failure)
    const refused = turns.message(message, index)
    if (refused !== undefined) return Effect.fail(refused)
    messages.push(wire.success)
  }
  const unanswered = turns.end()
  if (unanswered !== undefined) return Effect.fail(unanswered)
  const body: Record<string, unknown> = { model: options.model, messages }
  if (request.maxTokens !== undefined) body[options.maxTokensField] = request.maxTokens
  if (request.temperature !== undefined) body["temperature"] = request.temperature
  if (request.topP !== undefined) body["top_p"] = request.topP
  if (request.stop !== undefined) {
    if (options.maxStopSequences !== undefined && request.stop.length > options.maxStopSequences) {
      return Effect.fail(
        invalidRequest(
          "stop",
          `${options.provider} takes at most ${options.maxStopSequences} stop sequences, got ${request.stop.length}`,
          options.provider
        )
      )
    }
    body["stop"] = request.stop
  }
  if (request.seed !== undefined) body["seed"] = request.seed
  // No tools is sent as no field: OpenAI refuses `tools: []` (an array too short).
  if (request.tools !== undefined && request.tools.length > 0) {
    body["tools"] = toolsBody(request.tools)
    // Only with tools: OpenAI refuses `parallel_tool_calls` without them.
    if (request.parallelToolCalls !== undefined) body["parallel_tool_calls"] = request.parallelToolCalls
  }
  const choice = request.toolChoice
  if (choice !== undefined) {
    if (body["tools"] !== undefined) {
      if (typeof choice === "object" && !request.tools!.some((tool) => tool.name === choice.name)) {
        return Effect.fail(invalidRequest("toolChoice", `no tool is named "${choice.name}"`, options.provider))
      }
      body["tool_choice"] = typeof choice === "string" ? choice : { type: "function", function: { name: choice.name } }
    } else if (choice === "required" || typeof choice === "object") {
      // OpenAI refuses a tool_choice without tools, after a call; "auto" and "none" are what it does without them.
      return Effect.fail(
        invalidRequest(
          "toolChoice",
          `${typeof choice === "string" ? '"required"' : `{ name: "${choice.name}" }`} asks for a tool call, but the request has no tools`,
          options.provider
        )
      )
    }
  }
  if (request.responseFormat !== undefined) {
    const format = request.responseFormat
    if (format.type === "json_schema" && !responseFormatNamePattern.test(format.name)) {
      // OpenAI refuses it with a 400, after a round trip.
      return Effect.fail(
        invalidRequest(
          "responseFormat.name",
          "expected a name of 1 to 64 characters of a-z, A-Z, 0-9, _ or -",
          options.provider
        )
      )
    }
    body["response_format"] =
      format.type === "json_schema"
        ? {
            type: "json_schema",
            json_schema: {
              name: format.name,
              ...(format.description === undefined ? {} : { description: format.description }),
              schema: format.schema,
              ...(format.strict === undefined ? {} : { strict: format.strict })
            }
          }
        : { type: format.type }
  }
  if (options.stream) {
    body["stream"] = true
    if (options.streamUsage) body["stream_options"] = { include_usage: true }
  }
  return Effect.succeed(body)
}
