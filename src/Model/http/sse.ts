/**
 * Server-sent events of a response body, parsed by `effect/encoding`'s `Sse` parser.
 *
 * Real model streams carry comments (keep-alive pings), CRLF line ends, events split across
 * reads (inside multi-byte characters and between the CR and LF of a line end too). Text is
 * decoded a read at a time, a character split across reads kept whole; the
 * parser keeps a CR that ends one read to pair it with an LF that starts the next. `retry:`
 * fields are ignored (a model stream is never reconnected), and one pending event is bounded.
 * A last event whose lines ended, but that no blank line followed, is delivered when the body
 * ends; one that ends inside a line (cut anywhere) is not.
 *
 * @since 0.2.0
 */
import { Cause, Effect, Pull, Stream } from "effect"
import { Sse } from "effect/encoding"
import type { ModelError } from "../../AiError.js"
import { type CallContext, longestSecret, malformed, scrubbedHead, tooLarge } from "./errors.js"

/**
 * One event: its name (`message` when unnamed) and its data lines joined with `\n`.
 *
 * @since 0.2.0
 * @category models
 */
export type Event = Sse.Event

/**
 * Options of {@link events}.
 *
 * @since 0.2.0
 * @category models
 */
export interface EventsOptions {
  /**
   * Bound of one event's data, in characters of text (at most as many as its bytes), however
   * the body is split into reads.
   */
  readonly maxEventBytes: number
}

const HEAD = 200

/** What the parser holds of an event besides its data: the `data: ` of the line it reads, and a line end. */
const eventSlack = 7

/** Bytes of `bytes` that end on a character boundary: a trailing incomplete UTF-8 sequence is left out. */
const completeLength = (bytes: Uint8Array): number => {
  const n = bytes.length
  for (let i = n - 1; i >= 0 && i >= n - 4; i--) {
    const b = bytes[i]!
    if ((b & 0xc0) === 0x80) continue
    const size = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1
    return n - i < size ? i : n
  }
  return n
}

/**
 * A streaming UTF-8 decoder that decodes whole characters in one plain `decode` call and
 * carries a split character's first bytes to the next read. Measured on this parser (20,000
 * events in 64 KB reads, Node 24, medians of 25 interleaved runs): 0.69-0.88 µs of CPU an
 * event, against 1.22-1.47 with `TextDecoder`'s `stream` mode.
 */
const utf8 = () => {
  // Each read is decoded on its own: a default decoder would drop a U+FEFF starting any of them.
  // The parser strips the one byte order mark the stream may start with.
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true })
  let carry: Uint8Array | undefined
  return {
    decode: (chunk: Uint8Array): string => {
      let bytes = chunk
      if (carry !== undefined) {
        bytes = new Uint8Array(carry.length + chunk.length)
        bytes.set(carry)
        bytes.set(chunk, carry.length)
        carry = undefined
      }
      const end = completeLength(bytes)
      if (end < bytes.length) carry = bytes.slice(end)
      return end === 0 ? "" : decoder.decode(end === bytes.length ? bytes : bytes.subarray(0, end))
    },
    end: (): string => {
      const rest = carry
      carry = undefined
      return rest === undefined ? "" : decoder.decode(rest)
    }
  }
}

/**
 * The events of a byte stream. An event past `maxEventBytes` fails `TooLarge`; a body that
 * ends without having carried a single event, but with text that is not an SSE comment,
 * fails `Decode` on `content-type` (it is not an event stream: a JSON answer, an HTML page).
 *
 * @since 0.2.0
 * @category streaming
 */
export const events = (
  bytes: Stream.Stream<Uint8Array, ModelError>,
  ctx: CallContext,
  options: EventsOptions
): Stream.Stream<Event, ModelError> =>
  Stream.transformPull(bytes, (upstream) =>
    Effect.sync(() => {
      const decoder = utf8()
      let out: Array<Event> = []
      let failure: ModelError | undefined
      let ended = false
      let sawEvent = false
      let head = ""
      // A body that is not an event stream is quoted from its start: read on past the cut, to see whole a key across it.
      const headLength = HEAD + longestSecret(ctx.secrets)
      const tooLargeEvent = () => tooLarge(ctx, "one stream event", options.maxEventBytes, "maxEventBytes")
      const parser = Sse.makeParser(
        (event) => {
          if (event._tag !== "Event" || failure !== undefined) return
          if (event.data.length > options.maxEventBytes) failure = tooLargeEvent()
          else out.push(event)
        },
        // The parser checks what it holds of an event only at the end of a read, line prefixes (`data: `) and line
        // ends counted: an event whole within one read passed any bound, and one split across reads could fail within
        // it. It holds at most the bound and one line's prefix and end; an event's data is held to the bound here.
        { maxEventSize: options.maxEventBytes + eventSlack }
      )
      // The last character fed was a line end: the body is not inside a line.
      let atLineEnd = true
      const feed = (text: string): void => {
        if (failure !== undefined || text.length === 0) return
        if (!sawEvent && head.length < headLength) head += text.slice(0, headLength - head.length)
        const last = text.charCodeAt(text.length - 1)
        atLineEnd = last === 10 || last === 13
        if (parser.feed(text) !== undefined) failure ??= tooLargeEvent()
        if (out.length > 0) sawEvent = true
      }
      const finish = (): void => {
        feed(decoder.end())
        // Servers leave out the blank line after the last event (OpenAI's own client delivers it too): its
        // lines are whole, so it is one. A CR ends an empty line even after a CR; a body cut inside a line is not.
        if (atLineEnd) feed("\r")
        const text = head.trim()
        if (!sawEvent && failure === undefined && text.length > 0 && !text.startsWith(":")) {
          const quoted = JSON.stringify(scrubbedHead(text, HEAD, ctx.secrets))
          failure = malformed(ctx, "content-type", `the body is not an event stream: ${quoted}`)
        }
        ended = true
      }
      const pull: Pull.Pull<readonly [Event, ...Array<Event>], ModelError> = Effect.suspend(() => {
        if (out.length > 0) {
          const batch = out as unknown as readonly [Event, ...Array<Event>]
          out = []
          return Effect.succeed(batch)
        }
        if (failure !== undefined) return Effect.fail(failure)
        if (ended) return Cause.done()
        return Pull.matchEffect(upstream, {
          onSuccess: (chunks) => {
            for (const chunk of chunks) feed(decoder.decode(chunk))
            return pull
          },
          onFailure: Effect.failCause,
          onDone: () => {
            finish()
            return pull
          }
        })
      })
      return pull
    })
  )
