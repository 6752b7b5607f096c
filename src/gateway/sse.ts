/**
 * The SSE body of a streamed chat completion, written from the pipeline's parts: text
 * deltas (the first one carries the assistant role), complete tool calls, the finishing
 * chunk, the usage chunk when `stream_options.include_usage` asked for it (and then
 * `"usage": null` on every chunk before it, as OpenAI sends), then
 * `data: [DONE]`. A failure after the first chunk ends the body with an OpenAI-style error
 * event (`data: {"error": {...}}`, which the official clients raise) and never with
 * `[DONE]`. Each read of the pipeline becomes one write; after the Finish, one more read
 * lets the pipeline end (and store the stream in the response cache).
 *
 * @internal
 */
import { Cause, Effect, Pull, Stream } from "effect"
import type * as Arr from "effect/Array"
import { type AiError, ModelError } from "../AiError.js"
import type { Finish, StreamPart, Usage } from "../Model.js"
import { toWire } from "./errors.js"
import * as Wire from "./response.js"

/**
 * How a stream ended.
 *
 * @internal
 */
export type Ending =
  | { readonly _tag: "Finished"; readonly finish: Finish }
  | {
      readonly _tag: "Failed"
      readonly error: AiError
      readonly outputChars: number
      /** What the provider counted, when it finished (in error): what the request is charged. */
      readonly usage?: Usage | undefined
    }
  | { readonly _tag: "Cancelled"; readonly outputChars: number }

/**
 * The failure of an answer its provider finished in error (`finishReason: "error"`: Gemini's
 * malformed function call, an Effect AI model's error): OpenAI has no such finish reason, and
 * "stop" would tell the client its answer was whole.
 *
 * @internal
 */
export const endedInError = (finish: { readonly provider: string; readonly model: string }): AiError =>
  new ModelError({
    reason: "Unknown",
    message: `the model's answer ended in error (${finish.provider}, ${finish.model})`,
    provider: finish.provider,
    model: finish.model
  })

/**
 * @internal
 */
export interface Options {
  readonly id: string
  readonly created: number
  readonly model: string
  readonly includeUsage: boolean
  /** Called when the first bytes are handed to the server. */
  readonly onFirstBytes: () => void
  /** Called once, however the body ends (the client leaving included). */
  readonly onEnd: (ending: Ending) => Effect.Effect<void>
}

const encoder = new TextEncoder()

type Parts = Arr.NonEmptyReadonlyArray<StreamPart>

/**
 * The characters of output in parts (text, and tool calls' names and arguments): what a
 * stream cut before its Finish is charged for, since the upstream produced them.
 *
 * @internal
 */
export const outputCharsOf = (parts: ReadonlyArray<StreamPart>): number => {
  let chars = 0
  for (const part of parts) {
    if (part._tag === "TextDelta") chars += part.text.length
    else if (part._tag === "ToolCall") chars += part.call.name.length + part.call.arguments.length
  }
  return chars
}

/**
 * The body: `first` (already read, to decide the status) and then the rest of `pull`.
 *
 * @internal
 */
export const body = (first: Parts, pull: Pull.Pull<Parts, AiError>, options: Options): Stream.Stream<Uint8Array> => {
  const base = Wire.chunkPrefix(options.id, options.created, options.model)
  // With include_usage OpenAI's chunks say `"usage": null` until the last: once in the prefix, nothing per chunk.
  const prefix = options.includeUsage ? `${base}"usage":null,` : base
  let pending: Parts | undefined = first
  let roleSent = false
  let toolIndex = 0
  let done = false
  let drained = false
  let ending: Ending | undefined
  // The output read from the pipeline so far (see `outputCharsOf`).
  let outputChars = outputCharsOf(first)
  const counted = (parts: Parts): Parts => {
    outputChars += outputCharsOf(parts)
    return parts
  }

  const delta = (fields: Record<string, unknown>): string => {
    if (!roleSent) {
      roleSent = true
      return Wire.chunkEvent(prefix, Wire.deltaChoices({ role: "assistant", ...fields }))
    }
    return Wire.chunkEvent(prefix, Wire.deltaChoices(fields))
  }

  const encode = (parts: Parts): string => {
    let out = ""
    let text = ""
    for (const part of parts) {
      if (done) break
      switch (part._tag) {
        case "TextDelta":
          text += part.text
          break
        case "ToolCall":
          if (text.length > 0) {
            out += delta({ content: text })
            text = ""
          }
          out += delta(Wire.toolCallDelta(toolIndex++, part.call))
          break
        case "Finish":
          if (text.length > 0) {
            out += delta({ content: text })
            text = ""
          }
          if (part.finishReason === "error") {
            out += fail(endedInError(part), part.usage)
            break
          }
          if (part.refusal !== undefined) out += delta({ refusal: part.refusal })
          if (!roleSent) out += delta({ content: "" })
          out += Wire.chunkEvent(prefix, Wire.finishChoices(part.finishReason))
          if (options.includeUsage) {
            out += Wire.chunkEvent(base, `"choices":[],"usage":${JSON.stringify(Wire.usageOf(part.usage))}`)
          }
          out += "data: [DONE]\n\n"
          done = true
          ending = { _tag: "Finished", finish: part }
          break
      }
    }
    if (text.length > 0) out += delta({ content: text })
    return out
  }

  const fail = (error: AiError, usage?: Usage): string => {
    done = true
    ending = { _tag: "Failed", error, outputChars, usage }
    return `data: ${JSON.stringify(toWire(error).body)}\n\n`
  }

  const emit = (text: string): Pull.Pull<Arr.NonEmptyReadonlyArray<Uint8Array>, never> =>
    text.length === 0 ? next : Effect.succeed([encoder.encode(text)])

  // After the Finish, one more read lets the pipeline end its attempt as a success (which is
  // when it stores the stream in the response cache); what it answers is not sent.
  const drain: Pull.Pull<never, never> = Effect.suspend(() => {
    drained = true
    return Effect.flatMap(Effect.exit(pull), () => Cause.done())
  })

  const next: Pull.Pull<Arr.NonEmptyReadonlyArray<Uint8Array>, never> = Effect.suspend(() => {
    if (done) return ending?._tag === "Finished" && !drained ? drain : Cause.done()
    if (pending !== undefined) {
      const parts = pending
      pending = undefined
      options.onFirstBytes()
      return emit(encode(parts))
    }
    return Effect.matchCauseEffect(pull, {
      onSuccess: (parts) => emit(encode(counted(parts))),
      onFailure: (cause) => {
        if (Pull.isDoneCause(cause)) {
          // The pipeline always ends a stream with its Finish; an end without one is a cut.
          return emit(fail(new ModelError({ reason: "Transport", message: "the stream ended before its final event" })))
        }
        const error = Cause.findErrorOption(cause)
        if (error._tag === "Some") return emit(fail(error.value as AiError))
        return Effect.failCause(cause as Cause.Cause<never>)
      }
    })
  })

  return Stream.fromPull(Effect.succeed(next)).pipe(
    Stream.onExit(() => Effect.suspend(() => options.onEnd(ending ?? { _tag: "Cancelled", outputChars })))
  )
}
