/**
 * The request and response schemas every provider speaks. `Model.ts` publishes them (with
 * their documentation and types); they are defined here so that the request checks
 * (`validate.ts`) can build on them without importing the public module.
 *
 * @internal
 */
import { Schema } from "effect"

export const Role = Schema.Literals(["system", "user", "assistant", "tool"])

export const ToolCall = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  arguments: Schema.String,
  /**
   * Opaque, provider-specific data the provider needs back with this call in the next turn
   * (Gemini's `thoughtSignature`). Keep it as it came; other providers ignore it.
   *
   * @since 0.3.0
   */
  signature: Schema.optional(Schema.String)
})

/**
 * OpenAI's rule for a participant's name (what its API answers with a 400 otherwise), bounded:
 * no spaces and none of `< | \ / >`, 1 to 256 characters.
 */
export const participantNamePattern = /^[^\s<|\\/>]{1,256}$/

export const Message = Schema.Struct({
  role: Role,
  content: Schema.String,
  /**
   * The participant who wrote a system, user or assistant message (OpenAI's `name`), to tell apart
   * participants of one role. Sent where the API has the field (OpenAI-compatible servers, watsonx's
   * chat API); left out where it has none (Gemini, Ollama, watsonx's text API, effect/ai models) and
   * of tool messages; the local model's chat template is given it with the message (most templates
   * ignore it). Part of the response cache's key.
   *
   * @since 0.3.0
   */
  name: Schema.optional(
    Schema.String.check(
      Schema.isPattern(participantNamePattern, {
        message: "a name is 1 to 256 characters without spaces or <, |, \\, /, >"
      })
    )
  ),
  /** For `tool` messages: the id of the call answered. */
  toolCallId: Schema.optional(Schema.String),
  /** For `assistant` messages: the tool calls it made. */
  toolCalls: Schema.optional(Schema.Array(ToolCall))
})

/**
 * The tool names every provider takes: OpenAI's `^[a-zA-Z0-9_-]{1,64}$` and Gemini's (a letter
 * or underscore first). One rule for all, so a request that one provider takes is not refused by
 * its fallback.
 */
export const toolNamePattern = /^[A-Za-z_][A-Za-z0-9_-]{0,63}$/

/**
 * OpenAI's rule for a response format's name (`json_schema.name`), which the servers of its API
 * (and watsonx's chat API) refuse otherwise; providers that send no name (Gemini, Ollama) take any.
 */
export const responseFormatNamePattern = /^[a-zA-Z0-9_-]{1,64}$/

export const ToolDefinition = Schema.Struct({
  name: Schema.String.check(
    Schema.isPattern(toolNamePattern, {
      message: "a tool name is 1 to 64 of A-Z a-z 0-9 _ -, starting with a letter or underscore"
    })
  ),
  description: Schema.optional(Schema.String),
  parameters: Schema.optional(Schema.Record(Schema.String, Schema.Unknown)),
  /** Arguments must match `parameters` exactly (OpenAI's structured outputs); providers without it ignore it. */
  strict: Schema.optional(Schema.Boolean)
})

export const ResponseFormat = Schema.Union([
  Schema.Struct({ type: Schema.Literal("text") }),
  Schema.Struct({ type: Schema.Literal("json_object") }),
  Schema.Struct({
    type: Schema.Literal("json_schema"),
    name: Schema.String,
    /**
     * What the answer is for, which the model reads (OpenAI's `json_schema.description`); providers without a
     * place for it (Gemini, Ollama) leave it out.
     */
    description: Schema.optional(Schema.String),
    schema: Schema.Record(Schema.String, Schema.Unknown),
    strict: Schema.optional(Schema.Boolean)
  })
])

const Temperature = Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 2 }))
const TopP = Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 1 }))
const MaxTokens = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1_000_000 }))
const ModelId = Schema.String.check(Schema.isTrimmed(), Schema.isMinLength(1))

export const GenerateRequest = Schema.Struct({
  /** A plain prompt; sent as one user message. Give `prompt` or `messages`. */
  prompt: Schema.optional(Schema.String),
  messages: Schema.optional(Schema.Array(Message)),
  /** A system prompt, placed before the messages. */
  system: Schema.optional(Schema.String),
  /** Provider-specific model id; the provider's default when absent. */
  model: Schema.optional(ModelId),
  maxTokens: Schema.optional(MaxTokens),
  temperature: Schema.optional(Temperature),
  topP: Schema.optional(TopP),
  stop: Schema.optional(Schema.Array(Schema.String).check(Schema.isMaxLength(16))),
  seed: Schema.optional(Schema.Int),
  tools: Schema.optional(Schema.Array(ToolDefinition).check(Schema.isMaxLength(128))),
  toolChoice: Schema.optional(
    Schema.Union([Schema.Literals(["auto", "none", "required"]), Schema.Struct({ name: Schema.String })])
  ),
  /**
   * `false`: at most one tool call a turn (OpenAI's `parallel_tool_calls`). A provider that cannot
   * ask for that refuses `false` with tools (`InvalidRequest` on `parallelToolCalls`). Default: as many as the model makes.
   */
  parallelToolCalls: Schema.optional(Schema.Boolean),
  responseFormat: Schema.optional(ResponseFormat)
})

export const FinishReason = Schema.Literals(["stop", "length", "content_filter", "tool_calls", "error", "unknown"])

export const Usage = Schema.Struct({
  inputTokens: Schema.Number,
  outputTokens: Schema.Number,
  totalTokens: Schema.Number
})

export const GenerateResponse = Schema.Struct({
  text: Schema.String,
  finishReason: FinishReason,
  usage: Usage,
  provider: Schema.String,
  model: Schema.String,
  toolCalls: Schema.optional(Schema.Array(ToolCall)),
  /** The model declined to answer (OpenAI's `refusal`): why, in its words. */
  refusal: Schema.optional(Schema.String)
})

export const StreamPart = Schema.Union([
  Schema.TaggedStruct("TextDelta", { text: Schema.String }),
  Schema.TaggedStruct("ToolCall", { call: ToolCall }),
  Schema.TaggedStruct("Finish", {
    finishReason: FinishReason,
    usage: Usage,
    provider: Schema.String,
    model: Schema.String,
    /** The model declined to answer (OpenAI's `refusal`, whole): why, in its words. */
    refusal: Schema.optional(Schema.String)
  })
])

export const EmbedRequest = Schema.Struct({
  texts: Schema.NonEmptyArray(Schema.String),
  model: Schema.optional(ModelId)
})

export const EmbedResponse = Schema.Struct({
  /** One vector per input text, in input order. */
  vectors: Schema.Array(Schema.Array(Schema.Number)),
  usage: Schema.optional(Usage),
  provider: Schema.String,
  model: Schema.String
})
