/**
 * Helpers for the streams `Executor.stream` and `Router.stream` return: fold a stream into
 * its text, or into its text, tool calls and `Finish`. The streaming pipeline itself (the
 * before/after-first-chunk rule, the three deadlines, resumption) is described in
 * `docs/streaming.md` and runs in `src/policy/stream.ts` and the `stream-*.ts` beside it.
 *
 * @since 0.1.0
 */
import { Effect, Stream } from "effect"
import type { AiError } from "./AiError.js"
import { ModelError } from "./AiError.js"
import type { Finish, StreamPart, ToolCall } from "./Model.js"

/**
 * What a completed stream delivered.
 *
 * @since 0.1.0
 * @category models
 */
export interface Collected {
  readonly text: string
  readonly toolCalls: ReadonlyArray<ToolCall>
  readonly finish: Finish
}

/**
 * The text of a stream.
 *
 * @since 0.1.0
 * @category destructors
 */
export const collectText = <E, R>(stream: Stream.Stream<StreamPart, E, R>): Effect.Effect<string, E, R> =>
  Stream.runFold(
    stream,
    () => "",
    (text, part) => (part._tag === "TextDelta" ? text + part.text : text)
  )

/**
 * The text, tool calls and `Finish` of a stream. A stream that ends without its `Finish`
 * fails with a `ModelError` (`Transport`).
 *
 * @since 0.1.0
 * @category destructors
 */
export const collect = <E, R>(stream: Stream.Stream<StreamPart, E, R>): Effect.Effect<Collected, E | AiError, R> =>
  Effect.flatMap(
    Stream.runFold(
      stream,
      () => ({ text: "", toolCalls: [] as Array<ToolCall>, finish: undefined as Finish | undefined }),
      (acc, part) => {
        if (part._tag === "TextDelta") acc.text += part.text
        else if (part._tag === "ToolCall") acc.toolCalls.push(part.call)
        else acc.finish = part
        return acc
      }
    ),
    (acc) =>
      acc.finish === undefined
        ? Effect.fail(new ModelError({ reason: "Transport", message: "the stream ended before its final event" }))
        : Effect.succeed({ text: acc.text, toolCalls: acc.toolCalls, finish: acc.finish })
  )
