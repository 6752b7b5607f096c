/**
 * Ollama's native wire format: `/api/chat` and `/api/generate` bodies from a
 * `GenerateRequest` (options, tools, JSON formats, tool messages, `keep_alive`), answer and
 * NDJSON line schemas, tool calls (arguments as JSON objects, ids made up when absent), and
 * usage from the eval counts.
 *
 * @since 0.2.0
 */
import { Duration, Effect, Result, Schema } from "effect"
import { invalidRequest, type ModelError } from "../../AiError.js"
import * as Input from "../../Input.js"
import * as Model from "../../Model.js"
import { argumentsOrEmpty, maxToolCalls } from "./assemble.js"
import { boundedArray, finite, shallow, tokenCount, Vector } from "./decode.js"
import { asksOneToolCall, oneToolCallRefused } from "../validate.js"
import { toolsBody } from "./openAiWire.js"

const Text = Schema.optional(Schema.NullOr(Schema.String))
const Count = Schema.optional(Schema.NullOr(Schema.Number))

const Counts = {
  done_reason: Text,
  prompt_eval_count: Count,
  eval_count: Count
}

const isObject = (value: unknown): boolean => typeof value === "object" && value !== null && !Array.isArray(value)

// Ollama's `arguments` is an object; a string holding an object's JSON text (as some compatible servers send) is
// kept. Anything else would only be refused when the call is sent back in the next turn.
const objectArguments = Schema.makeFilter<unknown>((value) =>
  value === null || (typeof value === "string" ? isObject(parseArguments(value)) : isObject(value))
    ? undefined
    : "expected an object (or the JSON text of one)"
)

// As many as a stream may carry (an OpenAI-compatible one's bound): a million calls are refused before they are read.
const ToolCalls = Schema.optional(
  Schema.NullOr(
    boundedArray(
      maxToolCalls,
      Schema.Struct({
        id: Text,
        function: Schema.Struct({
          // A call without a name cannot be dispatched: Decode naming it, as on the other providers.
          name: Schema.NonEmptyString,
          // Written again with JSON.stringify: 1e400 (Infinity) it would write as null.
          arguments: Schema.optional(Schema.Unknown.check(shallow, objectArguments, finite))
        })
      })
    )
  )
)

/**
 * @since 0.2.0
 * @category schemas
 */
export const ChatAnswer = Schema.Struct({
  model: Text,
  message: Schema.Struct({ role: Text, content: Text, tool_calls: ToolCalls }),
  done: Schema.optional(Schema.Boolean),
  ...Counts
})

/**
 * @since 0.2.0
 * @category schemas
 */
export const GenerateAnswer = Schema.Struct({
  model: Text,
  response: Schema.String,
  done: Schema.optional(Schema.Boolean),
  ...Counts
})

/**
 * @since 0.2.0
 * @category schemas
 */
export const ChatLine = Schema.Struct({
  model: Text,
  message: Schema.optional(Schema.NullOr(Schema.Struct({ content: Text, tool_calls: ToolCalls }))),
  done: Schema.Boolean,
  ...Counts
})

/**
 * @since 0.2.0
 * @category schemas
 */
export const GenerateLine = Schema.Struct({
  model: Text,
  response: Text,
  done: Schema.Boolean,
  ...Counts
})

/**
 * Texts a request embeds at most, so that an answer of long vectors stays within `maxResponseBytes`.
 *
 * @since 0.3.0
 * @category constants
 */
export const embedBatch = 256

/**
 * The answer of `/api/embed`: at most {@link embedBatch} vectors, counted before any is read.
 *
 * @since 0.2.0
 * @category schemas
 */
export const EmbedAnswer = Schema.Struct({
  model: Text,
  embeddings: boundedArray(embedBatch, Vector),
  prompt_eval_count: Count
})

/**
 * An answer or a stream line of either API, in one shape.
 *
 * @since 0.2.0
 * @category models
 */
export interface Line {
  readonly text: string
  readonly done: boolean
  readonly model?: string | null | undefined
  readonly done_reason?: string | null | undefined
  readonly prompt_eval_count?: number | null | undefined
  readonly eval_count?: number | null | undefined
  readonly toolCalls: ReadonlyArray<Model.ToolCall>
}

type WireToolCalls = (typeof ChatAnswer.Type)["message"]["tool_calls"]

// Ollama's own ids are `call_` and 8 random letters or digits: an all-digit one is not taken for a made-up one.
const MADE_UP_ID = /^call_\d{1,7}$/

/** The id of a call as sent back: Ollama's own, not one made up here for a call that came without. */
const wireId = (id: string | undefined): string | undefined =>
  id === undefined || id.length === 0 || MADE_UP_ID.test(id) ? undefined : id

// A call without an id has id "": the provider makes one up that no call of the answer has (Assemble.callIds).
const toolCallsOf = (calls: WireToolCalls): ReadonlyArray<Model.ToolCall> =>
  (calls ?? []).map((call) => ({
    // Ollama leaves an empty id out; an empty one would be no id to answer.
    id: call.id || "",
    name: call.function.name,
    arguments: argumentsText(call.function.arguments)
  }))

const argumentsText = (args: unknown): string =>
  typeof args === "string" ? argumentsOrEmpty(args) : JSON.stringify(args ?? {})

/**
 * A `/api/chat` answer or line. A tool call that came without an id has the id `""`, for the
 * provider to make one up that none of the answer's calls has.
 *
 * @since 0.2.0
 * @category decoding
 */
export const fromChat = (answer: typeof ChatAnswer.Type | typeof ChatLine.Type): Line => ({
  ...answer,
  done: answer.done ?? true,
  text: answer.message?.content ?? "",
  toolCalls: toolCallsOf(answer.message?.tool_calls)
})

/**
 * A `/api/generate` answer or line.
 *
 * @since 0.2.0
 * @category decoding
 */
export const fromGenerate = (answer: typeof GenerateAnswer.Type | typeof GenerateLine.Type): Line => ({
  ...answer,
  done: answer.done ?? true,
  text: answer.response ?? "",
  toolCalls: []
})

/**
 * Usage from the eval counts, estimated where the server reports none.
 *
 * @since 0.2.0
 * @category utils
 */
export const usageOf = (line: Line, request: Model.GenerateRequest, outputChars: number): Model.Usage =>
  Model.usage(
    tokenCount(line.prompt_eval_count) ?? Model.estimateInputTokens(request),
    tokenCount(line.eval_count) ?? Math.ceil(outputChars / 4)
  )

// Go's `time.ParseDuration` (unsigned): units in a row, `"10m"`, `"1h30m"`.
const GO_DURATION = /^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$/
const GO_PART = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g
const GO_UNIT_NANOS: Readonly<Record<string, number>> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 6e10, h: 3.6e12 }
/** Go's `time.Duration` is int64 nanoseconds: Ollama answers 400 to a longer `keep_alive`. */
const GO_MAX_NANOS = 2 ** 63 - 1

/** Ollama's "keep loaded" as its docs write it: `-1`, or `-1` with a Go duration unit (`"-1m"`). */
const GO_FOREVER = /^-1(?:ns|us|µs|ms|s|m|h)?$/

/**
 * Checks a `keepAlive` option into what `keep_alive` takes: `"forever"`, Ollama's own `-1` (or
 * `"-1m"`) and a duration without bound (`Infinity`) are `-1`; Ollama's own durations (`"10m"`,
 * `"1h30m"`) pass as they are, any other duration becomes milliseconds (`"600000ms"`); zero (unload at
 * once) is accepted. Refused: another negative value, a positive time under a millisecond
 * (it would unload as 0 does), and a duration Go cannot hold (about 292 years).
 *
 * @since 0.2.0
 * @category checks
 */
export const keepAlive = (path: string, input: unknown): Input.Checked<string | number> => {
  if (input === "forever" || input === -1) return Result.succeed(-1)
  const text = typeof input === "string" ? input.trim() : undefined
  if (text !== undefined && GO_FOREVER.test(text)) return Result.succeed(-1)
  if (text === "0") return Result.succeed("0ms")
  if ((typeof input === "number" && input < 0) || text?.startsWith("-")) {
    return Result.fail({
      path,
      message: `a negative keepAlive other than -1 means nothing here: use -1 or "forever" to keep the model loaded, got ${Input.shown(input)}`
    })
  }
  const tooLong = Result.fail({ path, message: 'Ollama keeps a model loaded at most ~292 years; use "forever"' })
  const tooShort = Result.fail({
    path,
    message: `expected 0 (unload at once) or at least a millisecond, got ${Input.shown(input)}`
  })
  if (text !== undefined && GO_DURATION.test(text)) {
    let nanos = 0
    for (const part of text.matchAll(GO_PART)) nanos += Number(part[1]) * GO_UNIT_NANOS[part[2]!]!
    return nanos > GO_MAX_NANOS ? tooLong : nanos > 0 && nanos < 1e6 ? tooShort : Result.succeed(text)
  }
  return Result.flatMap(
    Input.duration(path, input, { allowZero: true, allowInfinite: true }),
    (d): Input.Checked<string | number> => {
      if (!Duration.isFinite(d)) return Result.succeed(-1)
      const millis = Duration.toMillis(d)
      return millis * 1e6 > GO_MAX_NANOS
        ? tooLong
        : millis > 0 && millis < 1
          ? tooShort
          : Result.succeed(`${Math.round(millis)}ms`)
    }
  )
}

/**
 * What the request bodies need besides the request.
 *
 * @since 0.2.0
 * @category models
 */
export interface BodyOptions {
  readonly model: string
  readonly stream: boolean
  readonly keepAlive?: string | number | undefined
}

const modelOptions = (request: Model.GenerateRequest): Record<string, unknown> | undefined => {
  const out: Record<string, unknown> = {}
  if (request.maxTokens !== undefined) out["num_predict"] = request.maxTokens
  if (request.temperature !== undefined) out["temperature"] = request.temperature
  if (request.topP !== undefined) out["top_p"] = request.topP
  if (request.stop !== undefined) out["stop"] = request.stop
  if (request.seed !== undefined) out["seed"] = request.seed
  return Object.keys(out).length === 0 ? undefined : out
}

const common = (request: Model.GenerateRequest, options: BodyOptions, body: Record<string, unknown>) => {
  body["stream"] = options.stream
  const modelOpts = modelOptions(request)
  if (modelOpts !== undefined) body["options"] = modelOpts
  if (request.responseFormat !== undefined && request.responseFormat.type !== "text") {
    body["format"] = request.responseFormat.type === "json_object" ? "json" : request.responseFormat.schema
  }
  if (options.keepAlive !== undefined) body["keep_alive"] = options.keepAlive
  return body
}

/**
 * The body of a `/api/generate` request (a plain prompt, no tools).
 *
 * @since 0.2.0
 * @category encoding
 */
export const generateBody = (request: Model.GenerateRequest, options: BodyOptions): Record<string, unknown> =>
  common(request, options, {
    model: options.model,
    prompt: request.prompt,
    ...(request.system === undefined ? {} : { system: request.system })
  })

const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

// Blank is no arguments: OpenAI answers a call of a tool without parameters with "" and takes it back so.
const parseArguments = (text: string): unknown => {
  if (text.trim().length === 0) return {}
  const value = parseJson(text)
  return isObject(value) ? value : undefined
}

/**
 * The body of a `/api/chat` request. Ollama has no `tool_choice`: `auto` is its behaviour,
 * `none` sends no tools, `required` or a named tool is refused (`InvalidRequest` on
 * `toolChoice`), and so is `parallelToolCalls: false` with tools (`InvalidRequest` on
 * `parallelToolCalls`). Tool-call arguments sent back must be JSON objects (blank is `{}`); a tool message names
 * the tool it answers (`tool_name`), found from the call it answers, and its id (`tool_call_id`),
 * which goes back on the call too (not an id made up for a call that came without one). A tool
 * message naming a call no earlier assistant message made is refused (`InvalidRequest` on its
 * `toolCallId`); one naming none goes as the answer of the turn.
 *
 * @since 0.2.0
 * @category encoding
 */
export const chatBody = (
  request: Model.GenerateRequest,
  options: BodyOptions & { readonly provider: string }
): Effect.Effect<Record<string, unknown>, ModelError> => {
  const refuse = (field: string, message: string) => Effect.fail(invalidRequest(field, message, options.provider))
  const choice = request.toolChoice
  if (choice !== undefined && choice !== "auto" && choice !== "none") {
    return refuse("toolChoice", 'Ollama has no tool choice: only "auto" and "none" can be honoured')
  }
  if (asksOneToolCall(request)) return refuse("parallelToolCalls", oneToolCallRefused("Ollama"))
  const names = new Map<string, string>()
  const messages: Array<unknown> = []
  const conversation = Model.toMessages(request)
  for (let i = 0; i < conversation.length; i++) {
    const message = conversation[i]!
    const index = request.system === undefined ? i : i - 1
    if (message.role === "assistant" && message.toolCalls !== undefined && message.toolCalls.length > 0) {
      const calls: Array<unknown> = []
      for (let j = 0; j < message.toolCalls.length; j++) {
        const call = message.toolCalls[j]!
        const args = parseArguments(call.arguments)
        if (args === undefined) {
          return refuse(`messages[${index}].toolCalls[${j}].arguments`, "expected the JSON text of an object")
        }
        names.set(call.id, call.name)
        const id = wireId(call.id)
        const fn = { name: call.name, arguments: args }
        calls.push(id === undefined ? { function: fn } : { id, function: fn })
      }
      messages.push({ role: "assistant", content: message.content, tool_calls: calls })
    } else if (message.role === "tool") {
      const toolName = message.toolCallId === undefined ? undefined : names.get(message.toolCallId)
      // Without an id it is the answer of the turn, as Ollama reads it; an id of no call is a conversation mixed up.
      if (message.toolCallId !== undefined && toolName === undefined) {
        return refuse(
          `messages[${index}].toolCallId`,
          `the tool message answers the call "${message.toolCallId}", which no earlier assistant message made`
        )
      }
      const id = wireId(message.toolCallId)
      messages.push({
        role: "tool",
        content: message.content,
        ...(toolName === undefined ? {} : { tool_name: toolName }),
        ...(id === undefined ? {} : { tool_call_id: id })
      })
    } else {
      messages.push({ role: message.role, content: message.content })
    }
  }
  const body: Record<string, unknown> = { model: options.model, messages }
  if (request.tools !== undefined && request.tools.length > 0 && choice !== "none") {
    body["tools"] = toolsBody(request.tools)
  }
  return Effect.succeed(common(request, options, body))
}
