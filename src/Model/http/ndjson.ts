/**
 * Newline-delimited JSON values of a response body, parsed by `effect/encoding`'s `Ndjson`
 * decoder: lines split across reads are joined, `\n`, `\r\n` and `\r` end a line, blank
 * lines are skipped, and one line is bounded.
 *
 * @since 0.2.0
 */
import { Stream } from "effect"
import { Ndjson } from "effect/encoding"
import { ModelError } from "../../AiError.js"
import { type CallContext, endedEarly, malformed, tooLarge } from "./errors.js"

/**
 * Options of {@link values}.
 *
 * @since 0.2.0
 * @category models
 */
export interface ValuesOptions {
  /** Bound of one line, in bytes. */
  readonly maxEventBytes: number
}

/**
 * The parsed JSON values of a byte stream. A line past `maxEventBytes` fails `TooLarge` as
 * soon as the bound is passed; a line that is not JSON (or not UTF-8) fails `Decode`; a body
 * that ends inside a line fails `Transport`, as ended early.
 *
 * @since 0.2.0
 * @category streaming
 */
export const values = (
  bytes: Stream.Stream<Uint8Array, ModelError>,
  ctx: CallContext,
  options: ValuesOptions
): Stream.Stream<unknown, ModelError> =>
  bytes.pipe(
    Stream.pipeThroughChannel(
      Ndjson.decode<ModelError>({ ignoreEmptyLines: true, maxLineBytes: options.maxEventBytes })
    ),
    Stream.mapError((error): ModelError => {
      if (error instanceof ModelError) return error
      switch (error.reason) {
        case "LineTooLarge":
          return tooLarge(ctx, "one stream line", options.maxEventBytes, "maxEventBytes")
        case "InvalidUtf8":
          return malformed(ctx, "(root)", "a stream line is not valid UTF-8")
        default:
          // A body that ends inside a line broke off (as an SSE stream ending inside an event does): Transport.
          return error.unterminated === true ? endedEarly(ctx) : malformed(ctx, "(root)", "a stream line is not JSON")
      }
    })
  )
