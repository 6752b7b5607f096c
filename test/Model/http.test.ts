import { inspect } from "node:util"
import { gzipSync } from "node:zlib"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it, layer } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Fiber, Redacted, Result, type Scope, Stream, Tracer } from "effect"
import { FetchHttpClient, HttpClient, HttpClientError, HttpClientRequest } from "effect/http"
import { TestClock } from "effect/testing"
import { isRetryable, ModelError, shouldFallback, TimeoutError } from "../../src/AiError.js"
import type * as Input from "../../src/Input.js"
import * as Model from "../../src/Model.js"
import * as Assemble from "../../src/Model/http/assemble.js"
import * as Body from "../../src/Model/http/body.js"
import * as Client from "../../src/Model/http/client.js"
import * as Errors from "../../src/Model/http/errors.js"
import * as Ndjson from "../../src/Model/http/ndjson.js"
import * as Options from "../../src/Model/http/options.js"
import * as Sse from "../../src/Model/http/sse.js"
import * as Server from "../utils/httpServer.js"
import { recording } from "../utils/tracer.js"

const ctx: Errors.CallContext = { provider: "t", model: "m" }
const encoder = new TextEncoder()
const bytes = (...parts: ReadonlyArray<string>): Stream.Stream<Uint8Array, ModelError> =>
  Stream.fromIterable(parts.map((p) => encoder.encode(p)))

const modelError = (u: unknown): ModelError => {
  assert.instanceOf(u, ModelError)
  return u as ModelError
}

const settings = (options: Options.Options = {}): Options.Settings => {
  const checked = Options.settings(options)
  if (Result.isFailure(checked)) throw new Error(checked.failure.message)
  return checked.success
}

describe("SSE framing", () => {
  it.effect("CRLF split across reads keeps the event name; data lines join; comments and retry are skipped", () =>
    Effect.gen(function* () {
      const events = yield* Stream.runCollect(
        Sse.events(
          bytes("retry: 3000\r\nevent: error\r", "\ndata: a\r", "\ndata: b\r\n\r", "\n: comment\r\n\r\ndata: c\r\r"),
          ctx,
          { maxEventBytes: 1024 }
        )
      )
      assert.deepStrictEqual(
        events.map((e) => [e.event, e.data]),
        [
          ["error", "a\nb"],
          ["message", "c"]
        ]
      )
    })
  )

  it.effect("a multi-byte character split across reads is decoded whole", () =>
    Effect.gen(function* () {
      const encoded = encoder.encode("data: 🌍 日本\n\n")
      const chunks = Array.from(encoded, (_, i) => encoded.subarray(i, i + 1))
      const events = yield* Stream.runCollect(Sse.events(Stream.fromIterable(chunks), ctx, { maxEventBytes: 1024 }))
      assert.deepStrictEqual(
        events.map((e) => e.data),
        ["🌍 日本"]
      )
    })
  )

  it.effect(
    "characters of 2, 3 and 4 bytes split at every offset of every read come out whole; a cut one is U+FFFD",
    () =>
      Effect.gen(function* () {
        const texts = ["é🌍日本 ", "ok", "👩‍👩‍👧 Grüße 𝄞", "末尾€"]
        const encoded = encoder.encode(texts.map((t) => `data: ${t}\r\n\r\n`).join(""))
        for (let first = 1; first <= 8; first++) {
          for (let size = 1; size <= 5; size++) {
            const chunks: Array<Uint8Array> = [encoded.subarray(0, first)]
            for (let i = first; i < encoded.length; i += size) chunks.push(encoded.subarray(i, i + size))
            const events = yield* Stream.runCollect(
              Sse.events(Stream.fromIterable(chunks), ctx, { maxEventBytes: 1024 })
            )
            assert.deepStrictEqual(
              events.map((e) => e.data),
              texts,
              `first read ${first}, then ${size}`
            )
          }
        }
        // A character cut short (a line end where its last byte should be) is U+FFFD, as a streaming decoder gives.
        const cut = encoder.encode("data: a€\n\ndata: b")
        const tail = [...cut.subarray(0, cut.length), ...encoder.encode("€").subarray(0, 2), 10, 10]
        const broken = yield* Stream.runCollect(
          Sse.events(Stream.make(new Uint8Array(tail)), ctx, { maxEventBytes: 1024 })
        )
        assert.deepStrictEqual(
          broken.map((e) => e.data),
          ["a€", "b\uFFFD"]
        )
      })
  )

  it.effect("a U+FEFF that starts a later read is text; only the stream's first is a byte order mark", () =>
    Effect.gen(function* () {
      const events = yield* Stream.runCollect(
        Sse.events(bytes("\uFEFFdata: a", "\uFEFFb\n\n"), ctx, { maxEventBytes: 1024 })
      )
      assert.deepStrictEqual(
        events.map((e) => e.data),
        ["a\uFEFFb"]
      )
    })
  )

  it.effect(
    "a last event whose lines ended but no blank line followed is delivered; one cut inside a line is not",
    () =>
      Effect.gen(function* () {
        for (const end of ["\n", "\r\n", "\r"]) {
          const events = yield* Stream.runCollect(
            Sse.events(bytes(`data: a${end}${end}event: last${end}data: b${end}`), ctx, { maxEventBytes: 1024 })
          )
          assert.deepStrictEqual(
            events.map((e) => [e.event, e.data]),
            [
              ["message", "a"],
              ["last", "b"]
            ],
            JSON.stringify(end)
          )
        }
        // A CR that ends the body is a whole line end, not half of a CRLF still to come.
        const cr = yield* Stream.runCollect(Sse.events(bytes("data: a\r\ndata: b\r"), ctx, { maxEventBytes: 1024 }))
        assert.deepStrictEqual(
          cr.map((e) => e.data),
          ["a\nb"]
        )
        // Ended inside a line: the text may be cut anywhere, so that event is not delivered.
        const cut = yield* Stream.runCollect(Sse.events(bytes('data: a\n\ndata: {"b'), ctx, { maxEventBytes: 1024 }))
        assert.deepStrictEqual(
          cut.map((e) => e.data),
          ["a"]
        )
      })
  )

  it.effect("an endless event fails TooLarge at its bound", () =>
    Effect.gen(function* () {
      const endless = Stream.concat(bytes("data: "), Stream.forever(bytes("x".repeat(1000))))
      const error = yield* Effect.flip(Stream.runDrain(Sse.events(endless, ctx, { maxEventBytes: 64 * 1024 })))
      assert.strictEqual(modelError(error).reason, "TooLarge")
      assert.include(error.message, "maxEventBytes")
    })
  )

  it.effect("an event's data past maxEventBytes is TooLarge however the body is split into reads", () =>
    Effect.gen(function* () {
      // 1,024 characters of data on 4 lines (their line ends counted), then one more character.
      const line = "x".repeat(255)
      const fits = `event: big\r\ndata: ${line}\r\ndata: ${line}\r\ndata: ${line}\r\ndata: ${line}x\r\n\r\n`
      const over = `data: ${"y".repeat(1025)}\n\ndata: after\n\n`
      const splits = (text: string): ReadonlyArray<ReadonlyArray<Uint8Array>> => {
        const encoded = encoder.encode(text)
        return [1, 7, 100, encoded.length].map((size) =>
          Array.from({ length: Math.ceil(encoded.length / size) }, (_, i) => encoded.subarray(i * size, (i + 1) * size))
        )
      }
      for (const chunks of splits(fits)) {
        const events = yield* Stream.runCollect(Sse.events(Stream.fromIterable(chunks), ctx, { maxEventBytes: 1024 }))
        assert.deepStrictEqual(
          events.map((e) => e.data.length),
          [1024],
          `reads of ${chunks[0]!.length}`
        )
      }
      for (const chunks of splits(over)) {
        const error = yield* Effect.flip(
          Stream.runCollect(Sse.events(Stream.fromIterable(chunks), ctx, { maxEventBytes: 1024 }))
        )
        assert.strictEqual(modelError(error).reason, "TooLarge", `reads of ${chunks[0]!.length}`)
        assert.include(error.message, "maxEventBytes")
      }
    })
  )

  it.effect("a body that is not an event stream is Decode on content-type; a body of comments only is empty", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(Stream.runDrain(Sse.events(bytes('{"choices": ['), ctx, { maxEventBytes: 99 })))
      assert.strictEqual(modelError(error).reason, "Decode")
      assert.strictEqual(modelError(error).field, "content-type")
      assert.isFalse(isRetryable(modelError(error)))
      const none = yield* Stream.runCollect(Sse.events(bytes(": ping\n\n", ": ping\n\n"), ctx, { maxEventBytes: 99 }))
      assert.lengthOf(none, 0)
    })
  )
})

describe("NDJSON framing", () => {
  it.effect("lines split across reads and CRLF, blank lines skipped", () =>
    Effect.gen(function* () {
      const values = yield* Stream.runCollect(
        Ndjson.values(bytes('{"a":"é', '"}\r', '\n\r\n{"b":', "2}\n"), ctx, { maxEventBytes: 99 })
      )
      assert.deepStrictEqual(values, [{ a: "é" }, { b: 2 }])
    })
  )

  it.effect("an endless line fails TooLarge; a line that is not JSON fails Decode", () =>
    Effect.gen(function* () {
      const endless = Stream.forever(bytes("x".repeat(1000)))
      const large = yield* Effect.flip(Stream.runDrain(Ndjson.values(endless, ctx, { maxEventBytes: 10_000 })))
      assert.strictEqual(modelError(large).reason, "TooLarge")
      const broken = yield* Effect.flip(
        Stream.runDrain(Ndjson.values(bytes('{"a":1}\n{nope\n'), ctx, { maxEventBytes: 99 }))
      )
      assert.strictEqual(modelError(broken).reason, "Decode")
    })
  )
})

describe("Assemble", () => {
  const text = (t: string): Model.StreamPart => ({ _tag: "TextDelta", text: t })
  const finish: Model.StreamPart = {
    _tag: "Finish",
    finishReason: "stop",
    usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 },
    provider: "t",
    model: "m"
  }
  const options = (overrides: Partial<Assemble.AssembleOptions<string>> = {}): Assemble.AssembleOptions<string> => ({
    ctx,
    idleTimeout: Duration.seconds(60),
    step: (chunk) => Effect.succeed(chunk === "end" ? [finish] : [text(chunk)]),
    onEnd: () => Effect.succeed([]),
    ...overrides
  })

  it.effect("a stream that stalls after two chunks fails with an idle TimeoutError carrying the text", () =>
    Effect.gen(function* () {
      const seen: Array<Model.StreamPart> = []
      const fiber = yield* Assemble.assemble(Stream.concat(Stream.make("a", "b"), Stream.never), options()).pipe(
        Stream.runForEach((part) => Effect.sync(() => seen.push(part))),
        Effect.flip,
        Effect.forkChild
      )
      // The fork starts on a later turn: the deadline counts from its first pull.
      while (seen.length < 2) yield* Effect.yieldNow
      yield* TestClock.adjust("59 seconds")
      assert.lengthOf(seen, 2)
      assert.isUndefined(fiber.pollUnsafe())
      yield* TestClock.adjust("1 second")
      const error = yield* Fiber.join(fiber)
      assert.instanceOf(error, TimeoutError)
      if (!(error instanceof TimeoutError)) return
      assert.strictEqual(error.limit, "idle")
      assert.strictEqual(error.provider, "t")
      assert.strictEqual(error.partialText, "ab")
      assert.isFalse(isRetryable(error))
    })
  )

  it.effect(
    "a reader that bounds the wait between chunks as strictly (Model.ChunkDeadline) replaces the own idle timer",
    () =>
      Effect.gen(function* () {
        // The stalled stream, read under a given outer bound (undefined: none); answers whether it
        // failed on its own idle deadline within 5 s (the outer bound is the reader's to enforce).
        const ownTimerFired = (outer: number | undefined) =>
          Effect.gen(function* () {
            const fiber = yield* Assemble.assemble(
              Stream.concat(Stream.make("a"), Stream.never),
              options({ idleTimeout: Duration.seconds(1) })
            ).pipe(Stream.runDrain, Effect.provideService(Model.ChunkDeadline, outer), Effect.flip, Effect.forkChild)
            yield* Effect.yieldNow
            yield* TestClock.adjust("5 seconds")
            const exit = fiber.pollUnsafe()
            yield* Fiber.interrupt(fiber)
            if (exit === undefined) return false
            assert.isTrue(Exit.isSuccess(exit) && exit.value instanceof TimeoutError && exit.value.limit === "idle")
            return true
          })
        assert.isTrue(yield* ownTimerFired(undefined), "no outer bound: the provider's own")
        assert.isTrue(yield* ownTimerFired(1001), "a looser outer bound: the provider's own, which is stricter")
        assert.isFalse(yield* ownTimerFired(1000), "as strict: the reader's")
        assert.isFalse(yield* ownTimerFired(500), "stricter: the reader's")
      })
  )

  it.effect("exactly one Finish: the stream stops at the first; no Finish at all is a failure", () =>
    Effect.gen(function* () {
      const parts = yield* Stream.runCollect(Assemble.assemble(Stream.make("a", "end", "b", "end"), options()))
      assert.deepStrictEqual(parts, [text("a"), finish])
      const error = yield* Effect.flip(Stream.runDrain(Assemble.assemble(Stream.make("a"), options())))
      assert.strictEqual(modelError(error).reason, "Transport")
      assert.include(error.message, "ended before")
      const fromEnd = yield* Stream.runCollect(
        Assemble.assemble(Stream.make("a"), options({ onEnd: () => Effect.succeed([finish]) }))
      )
      assert.deepStrictEqual(fromEnd, [text("a"), finish])
    })
  )

  it.effect("a failing chunk ends the stream after the parts of the chunks before it, even within one read", () =>
    Effect.gen(function* () {
      const failing = options({
        step: (chunk) =>
          chunk === "bad" ? Effect.fail(Errors.malformed(ctx, "x", "bad chunk")) : Effect.succeed([text(chunk)])
      })
      const seen: Array<Model.StreamPart> = []
      const error = yield* Assemble.assemble(Stream.make("a", "b", "bad", "c"), failing).pipe(
        Stream.runForEach((part) => Effect.sync(() => seen.push(part))),
        Effect.flip
      )
      assert.deepStrictEqual(seen, [text("a"), text("b")])
      assert.strictEqual(modelError(error).field, "x")
      const onEnd = yield* Effect.flip(
        Stream.runDrain(
          Assemble.assemble(
            Stream.make("a"),
            options({ onEnd: () => Effect.fail(Errors.endedEarly({ provider: "end" })) })
          )
        )
      )
      assert.strictEqual(modelError(onEnd).provider, "end")
    })
  )

  it.effect("tool call deltas become one ToolCall each, in index order", () =>
    Effect.gen(function* () {
      const calls = Assemble.toolCallAssembler()
      calls.add({ index: 1, id: "b", name: "lookup", arguments: "" })
      calls.add({ index: 0, id: "a", name: "get_", arguments: '{"ci' })
      calls.add({ index: 0, name: "weather", arguments: 'ty":"Paris"}' })
      calls.add({ index: 1, arguments: "{}" })
      assert.deepStrictEqual(yield* calls.parts(ctx), [
        { _tag: "ToolCall", call: { id: "a", name: "get_weather", arguments: '{"city":"Paris"}' } },
        { _tag: "ToolCall", call: { id: "b", name: "lookup", arguments: "{}" } }
      ])
      const nameless = Assemble.toolCallAssembler()
      nameless.add({ index: 0, arguments: "{}" })
      assert.strictEqual(modelError(yield* Effect.flip(nameless.parts(ctx))).reason, "Decode")
    })
  )
})

describe("tool calls of one index", () => {
  it.effect("a new id at an index already taken opens another call (servers that number every call 0)", () =>
    Effect.gen(function* () {
      const calls = Assemble.toolCallAssembler()
      calls.add({ index: 0, id: "call_a", name: "add", arguments: "" })
      calls.add({ index: 0, arguments: '{"a":' })
      calls.add({ index: 0, id: "call_a", arguments: "1}" })
      calls.add({ index: 0, id: "call_b", name: "get_weather", arguments: '{"city":' })
      calls.add({ index: 0, arguments: '"Paris"}' })
      // A genuine index 1 after them is a third call, not the second one's continuation.
      calls.add({ index: 1, id: "call_c", name: "get_time" })
      assert.deepStrictEqual(yield* calls.parts(ctx), [
        { _tag: "ToolCall", call: { id: "call_a", name: "add", arguments: '{"a":1}' } },
        { _tag: "ToolCall", call: { id: "call_b", name: "get_weather", arguments: '{"city":"Paris"}' } },
        { _tag: "ToolCall", call: { id: "call_c", name: "get_time", arguments: "{}" } }
      ])
      // Poolside sends the fragments after a call's first under another id, without a name: still that call.
      const renamed = Assemble.toolCallAssembler()
      renamed.add({ index: 0, id: "call_a", name: "add", arguments: '{"a":' })
      renamed.add({ index: 0, id: "call_x", arguments: "1}" })
      assert.deepStrictEqual(yield* renamed.parts(ctx), [
        { _tag: "ToolCall", call: { id: "call_x", name: "add", arguments: '{"a":1}' } }
      ])
    })
  )
})

describe("errors", () => {
  it("status -> reason from data", () => {
    const info = (fields: Partial<Errors.ErrorInfo> = {}): Errors.ErrorInfo => ({ reasons: [], ...fields })
    const expected: ReadonlyArray<[number, string]> = [
      [429, "RateLimited"],
      [401, "Unauthorized"],
      [403, "Unauthorized"],
      // A proxy on the way refused our credentials: this route's failure, not the request's.
      [407, "Unauthorized"],
      [400, "InvalidRequest"],
      [422, "InvalidRequest"],
      [404, "InvalidRequest"],
      [413, "TooLarge"],
      // A conflict with a request in flight (OpenAI's and Anthropic's clients retry it): transient.
      [409, "Unavailable"],
      [408, "Timeout"],
      [504, "Timeout"],
      [500, "Overloaded"],
      [529, "Overloaded"],
      [502, "Unavailable"],
      [503, "Unavailable"]
    ]
    for (const [status, reason] of expected) assert.strictEqual(Errors.classify(status, info()), reason, String(status))
    assert.strictEqual(Errors.classify(429, info({ code: "insufficient_quota" })), "Unauthorized")
    assert.strictEqual(Errors.classify(503, info({ type: "overloaded_error" })), "Overloaded")
    // OpenAI's answer to a conversation over the model's context: a 400 with this code.
    assert.strictEqual(Errors.classify(400, info({ code: "context_length_exceeded" })), "TooLarge")
    assert.strictEqual(Errors.classify(undefined, info({ message: "rate limit exceeded" })), "Unknown")
  })

  it("Retry-After in seconds, milliseconds or as an HTTP date relative to the given time", () => {
    const now = Date.parse("2026-01-01T00:00:00Z")
    assert.deepStrictEqual(Errors.parseRetryAfter({ "retry-after": "120" }, now), Duration.seconds(120))
    assert.deepStrictEqual(
      Errors.parseRetryAfter({ "retry-after-ms": "250", "retry-after": "9" }, now),
      Duration.millis(250)
    )
    assert.deepStrictEqual(
      Errors.parseRetryAfter({ "retry-after": "Thu, 01 Jan 2026 00:00:30 GMT" }, now),
      Duration.seconds(30)
    )
    assert.deepStrictEqual(
      Errors.parseRetryAfter({ "retry-after": "Wed, 31 Dec 2025 23:00:00 GMT" }, now),
      Duration.zero
    )
    assert.isUndefined(Errors.parseRetryAfter({ "retry-after": "soon" }, now))
    assert.isUndefined(Errors.parseRetryAfter({ "retry-after": "-5" }, now))
    // A delay past what a number holds is still a (very long) finite wait, never an infinite one.
    for (const name of ["retry-after", "retry-after-ms"]) {
      const huge = Errors.parseRetryAfter({ [name]: "9".repeat(400) }, now)
      assert.isTrue(huge !== undefined && Duration.isFinite(huge), name)
      assert.isAbove(Duration.toMillis(huge!), 1e15, name)
    }
    const google = Errors.errorInfo({ error: { details: [{ retryDelay: `${"9".repeat(400)}s` }] } }).retryDelay
    assert.isTrue(google !== undefined && Duration.isFinite(google))
  })

  it("Retry-After is read strictly (RFC 9110): delay-seconds or one of the three HTTP-date forms, nothing else", () => {
    const now = Date.parse("2026-01-01T00:00:00Z")
    const retryAfter = (value: string) => Errors.parseRetryAfter({ "retry-after": value }, now)
    // The three forms of an HTTP-date, all GMT.
    assert.deepStrictEqual(retryAfter("Thu, 01 Jan 2026 00:01:00 GMT"), Duration.minutes(1))
    assert.deepStrictEqual(retryAfter("Thursday, 01-Jan-26 00:01:00 GMT"), Duration.minutes(1))
    assert.deepStrictEqual(retryAfter("Thu Jan  1 00:01:00 2026"), Duration.minutes(1))
    // An RFC 850 year more than 50 years ahead is the last century's.
    assert.deepStrictEqual(retryAfter("Sunday, 06-Nov-94 08:49:37 GMT"), Duration.zero)
    // What Date.parse takes but is no HTTP-date: a day name with a number (read as 2001), a date that is not in the
    // calendar (31 Feb, read as 3 March), another zone, a fraction of a second, a loose form.
    for (const value of [
      "Mon 1",
      "Thu 5",
      "Mon 12 12:00",
      "Sat, 31 Feb 2026 00:01:00 GMT",
      "Thu, 01 Jan 2026 00:01:00 PST",
      "Thu, 01 Jan 2026 00:01:00 +0000",
      "Thu, 01 Jan 2026 24:01:00 GMT",
      "Thu, 1 Jan 2026 00:01:00 GMT",
      "Thu, 01 January 2026 00:01:00 GMT",
      "2026-01-01T00:01:00Z",
      "Thu 01 Jan 2026 00:01:00 GMT",
      "1.5",
      "+5",
      "0x10",
      "1e3"
    ]) {
      assert.isUndefined(retryAfter(value), value)
    }
  })

  it("an error object in a 200 answer or a stream names its field as the same body of a status error does", () => {
    const notFound = { error: { message: "no such model", type: "invalid_request_error", code: "model_not_found" } }
    for (const where of ["answer", "stream"] as const) {
      const error = Errors.errorFromPayload(notFound, ctx, where)
      assert.deepStrictEqual([error.reason, error.field], ["InvalidRequest", "model"], where)
      assert.isTrue(shouldFallback(error), where)
      const param = Errors.errorFromPayload(
        { error: { message: "bad", type: "invalid_request_error", param: "stop" } },
        ctx
      )
      assert.deepStrictEqual([param.reason, param.field], ["InvalidRequest", "stop"], where)
    }
    const status = Errors.errorFromStatus(400, {}, JSON.stringify(notFound), 0, ctx)
    assert.deepStrictEqual([status.reason, status.field], ["InvalidRequest", "model"])
  })

  it("an error body's code is kept on the error (bounded, a token of the provider's vocabulary, no secret)", () => {
    const secret = "sk-live-0123456789"
    const withSecret: Errors.CallContext = { provider: "p", secrets: [Redacted.make(secret)] }
    const status = (code: unknown) =>
      Errors.errorFromStatus(429, {}, JSON.stringify({ error: { message: "no", code } }), 0, withSecret).code
    assert.strictEqual(status("insufficient_quota"), "insufficient_quota")
    assert.strictEqual(status("rate_limit_exceeded"), "rate_limit_exceeded")
    assert.strictEqual(status(`a${"x".repeat(63)}`), `a${"x".repeat(63)}`)
    // Not a code: too long, a sentence, a secret echoed, a number (Google's code is the HTTP status).
    for (const code of ["x".repeat(65), "not a code at all", `key_${secret}`, 429, null]) {
      assert.isUndefined(status(code), String(code))
    }
    // OpenAI's 400 of the context's bound, watsonx's errors[0].code, an error event inside a stream.
    const context = Errors.errorFromStatus(
      400,
      {},
      JSON.stringify({
        error: { message: "too long", type: "invalid_request_error", code: "context_length_exceeded" }
      }),
      0,
      ctx
    )
    assert.deepStrictEqual([context.reason, context.code], ["TooLarge", "context_length_exceeded"])
    const watsonx = Errors.errorFromStatus(
      400,
      {},
      JSON.stringify({ errors: [{ code: "model_not_supported", message: "no" }], status_code: 400 }),
      0,
      ctx
    )
    assert.strictEqual(watsonx.code, "model_not_supported")
    const event = Errors.errorFromPayload(
      { error: { message: "busy", type: "server_error", code: "server_busy" } },
      ctx
    )
    assert.strictEqual(event.code, "server_busy")
    assert.isUndefined(Errors.errorFromStatus(500, {}, "<html>oops</html>", 0, ctx).code)
  })

  it("Gemini's 400 FAILED_PRECONDITION (no service in this region, no free tier) falls back, never retries", () => {
    for (const message of [
      "User location is not supported for the API use.",
      "Gemini API free tier is not available in your country. Please enable billing on your project in Google AI Studio."
    ]) {
      const body = JSON.stringify({ error: { code: 400, message, status: "FAILED_PRECONDITION" } })
      const error = Errors.errorFromStatus(400, {}, body, 0, ctx)
      assert.strictEqual(error.reason, "Unauthorized", message)
      assert.isTrue(shouldFallback(error), message)
      assert.isFalse(isRetryable(error), message)
    }
    // Inside a stream (no status), the same.
    const inStream = Errors.errorFromPayload(
      [{ error: { code: 400, message: "User location is not supported", status: "FAILED_PRECONDITION" } }],
      ctx
    )
    assert.strictEqual(inStream.reason, "Unauthorized")
  })

  it("a 404 names the model only with a JSON error body, falls back either way; secrets are scrubbed from the provider's message", () => {
    const secret = Redacted.make("sk-live-0123456789")
    const ollama: Errors.CallContext = { provider: "ollama", notFoundField: "model", secrets: [secret] }
    const json = Errors.errorFromStatus(404, {}, '{"error":"model \\"x\\" not found, try pulling it first"}', 0, ollama)
    assert.strictEqual(json.field, "model")
    assert.include(json.message, "try pulling it first")
    // A 404 page or none at all (a wrong base URL, a proxy in front): this provider's, not the request's, so another
    // provider may serve the call; not retried. It names no field: the gateway answers it as a bad gateway.
    for (const body of ["404 page not found", "", "<html><body>Not Found</body></html>"]) {
      const page = Errors.errorFromStatus(404, {}, body, 0, ollama)
      assert.deepStrictEqual([page.reason, page.field], ["InvalidRequest", undefined], body)
      assert.isTrue(shouldFallback(page), body)
      assert.isFalse(isRetryable(page), body)
    }
    // A refusal of the request itself stays final.
    assert.isFalse(shouldFallback(Errors.errorFromStatus(400, {}, "", 0, ollama)))
    assert.isFalse(
      shouldFallback(Errors.errorFromStatus(422, {}, '{"error":{"message":"bad","param":"tools"}}', 0, ollama))
    )
    const echoed = Errors.errorFromStatus(401, {}, '{"error":{"message":"bad key sk-live-0123456789"}}', 0, ollama)
    assert.notInclude(echoed.message, "sk-live-0123456789")
    assert.include(echoed.message, "<redacted>")
  })

  it("a 501 is permanent for this provider: not retried, falls back to another", () => {
    // llama.cpp's server without `--embeddings`: a 501 of type `not_supported_error`.
    const body =
      '{"error":{"code":501,"message":"This server does not support embeddings.","type":"not_supported_error"}}'
    const error = Errors.errorFromStatus(501, {}, body, 0, ctx)
    assert.strictEqual(error.reason, "InvalidRequest")
    assert.strictEqual(error.field, "model")
    assert.strictEqual(error.status, 501)
    assert.include(error.message, "does not support embeddings")
    assert.isFalse(isRetryable(error))
    assert.isTrue(shouldFallback(error))
    const inStream = Errors.errorFromPayload(JSON.parse(body), ctx)
    assert.isFalse(isRetryable(inStream))
    assert.isTrue(shouldFallback(inStream))
    // Other 5xx stay transient.
    assert.isTrue(isRetryable(Errors.errorFromStatus(505, {}, "", 0, ctx)))
  })

  it("an error body's param is scrubbed of secrets and bounded before it becomes the error's field", () => {
    const secret = "sk-live-0123456789"
    const withSecret: Errors.CallContext = { provider: "p", secrets: [Redacted.make(secret)] }
    const echoed = Errors.errorFromStatus(
      400,
      {},
      JSON.stringify({ error: { message: "bad", type: "invalid_request_error", param: `key ${secret}` } }),
      0,
      withSecret
    )
    assert.strictEqual(echoed.reason, "InvalidRequest")
    assert.notInclude(echoed.field ?? "", secret)
    assert.strictEqual(echoed.field, "key <redacted>")
    const huge = Errors.errorFromStatus(
      400,
      {},
      JSON.stringify({ error: { message: "bad", param: "x".repeat(100_000) } }),
      0,
      withSecret
    )
    assert.isAtMost(huge.field?.length ?? 0, 200)
    assert.isTrue(huge.field?.startsWith("xxxx"))
    // A secret cut by the bound leaves no part of it behind.
    const straddling = Errors.errorFromStatus(
      400,
      {},
      JSON.stringify({ error: { message: "bad", param: `${"y".repeat(195)}${secret}` } }),
      0,
      withSecret
    )
    assert.notInclude(straddling.field ?? "", secret.slice(0, 5))
    // An ordinary param is kept as it came.
    const plain = Errors.errorFromStatus(400, {}, '{"error":{"message":"bad","param":"messages"}}', 0, ctx)
    assert.strictEqual(plain.field, "messages")
  })
})

describe("options", () => {
  it("refuses NaN, negative and zero durations, fractional byte bounds and bad URLs, naming the field", () => {
    const failure = (checked: Result.Result<unknown, { readonly path: string }>) =>
      Result.isFailure(checked) ? checked.failure.path : "ok"
    assert.strictEqual(failure(Options.settings({ timeout: Number.NaN })), "timeout")
    assert.strictEqual(failure(Options.settings({ streamIdleTimeout: -1 })), "streamIdleTimeout")
    assert.strictEqual(failure(Options.settings({ streamIdleTimeout: 0 })), "streamIdleTimeout")
    assert.strictEqual(failure(Options.settings({ maxResponseBytes: 1.5 })), "maxResponseBytes")
    assert.strictEqual(failure(Options.settings({ maxEventBytes: 0 })), "maxEventBytes")
    assert.strictEqual(failure(Options.settings({ timeout: "soon" as Options.Options["timeout"] })), "timeout")
    assert.strictEqual(failure(Options.baseUrl("baseUrl", "not a url")), "baseUrl")
    assert.strictEqual(failure(Options.baseUrl("baseUrl", "ftp://x")), "baseUrl")
    assert.strictEqual(failure(Options.baseUrl("baseUrl", "http://user:pw@x")), "baseUrl")
    assert.deepStrictEqual(Options.baseUrl("baseUrl", "http://x:1/v1/"), Result.succeed("http://x:1/v1"))
    const ok = settings({ maxResponseBytes: 1000 })
    assert.strictEqual(ok.maxEventBytes, 1000)
    assert.deepStrictEqual(ok.timeout, Duration.minutes(10))
  })
})

describe("a base URL that is refused", () => {
  const message = (input: unknown): string => {
    const checked = Options.baseUrl("baseUrl", input)
    assert.isTrue(Result.isFailure(checked))
    return Result.isFailure(checked) ? checked.failure.message : ""
  }

  it("shows what it got, so that the mistake can be seen", () => {
    assert.include(message("not a url"), 'got "not a url"')
    assert.include(message("localhost:8080/v1"), '"localhost:8080/v1"')
    const long = `http//${"h".repeat(500)}`
    assert.isBelow(message(long).length, 300)
  })

  it("a long value is shown bounded, and read only as far as it is shown (no pattern backtracks over all of it)", () => {
    const text = message(`x?${"key".repeat(300_000)}`)
    assert.include(text, "(900,002 characters)")
    assert.isBelow(text.length, 300)
  })

  it("never shows a secret in it: userinfo, a key-like query parameter, a value that is a key", () => {
    const cases: ReadonlyArray<readonly [string, string]> = [
      ["http//user:s3cret-pw@127.0.0.1:8080/v1", "127.0.0.1:8080/v1"],
      ["user:s3cret-pw@127.0.0.1:8080/v1", "127.0.0.1:8080/v1"],
      ["http://[::1/v1?api_key=s3cret-pw&x=1", "x=1"],
      ["localhost:8080/v1?key=s3cret-pw", "localhost:8080/v1"],
      ["localhost:8080/v1?access_token=s3cret-pw", "localhost:8080/v1"],
      ["sk-proj-s3cret-pwAbCdEf0123456789abcdef", "***"],
      ["Bearer s3cret-pwAbCdEf0123456789abcdefgh", "***"]
    ]
    for (const [input, kept] of cases) {
      const text = message(input)
      assert.notInclude(text, "s3cret", input)
      assert.include(text, kept, input)
    }
  })
})

describe("options that throw when listed", () => {
  it.effect(
    "a Proxy whose ownKeys throws is an OptionError naming options, at the check and at a provider's layer",
    () =>
      Effect.gen(function* () {
        const options = new Proxy(
          { baseUrl: "http://127.0.0.1:1/v1" },
          {
            ownKeys: () => {
              throw new Error("ownKeys trap")
            }
          }
        )
        const checked = Options.knownKeys<Options.Options>({})(options)
        assert.isTrue(Result.isFailure(checked))
        assert.strictEqual(Result.isFailure(checked) ? checked.failure.path : "", "options")
        const modules = yield* Effect.promise(() =>
          Promise.all([
            import("../../src/Model/OpenAiCompat.js"),
            import("../../src/Model/Ollama.js"),
            import("../../src/Model/Gemini.js"),
            import("../../src/Model/WatsonX.js")
          ])
        )
        for (const { make } of modules) {
          const made = (
            make as (o: unknown) => Effect.Effect<unknown, Input.OptionError, HttpClient.HttpClient | Scope.Scope>
          )(options)
          const error = yield* Effect.flip(Effect.scoped(made))
          assert.strictEqual(error._tag, "OptionError")
          assert.strictEqual(error.path, "options")
          assert.include(error.message, "ownKeys trap")
        }
      }).pipe(Effect.provide(FetchHttpClient.layer))
  )
})

describe("a header that is refused", () => {
  const issue = (input: unknown) => {
    const checked = Options.headers("headers", input)
    assert.isTrue(Result.isFailure(checked))
    return Result.isFailure(checked) ? checked.failure : { path: "", message: "" }
  }

  it("a name that holds a header line is named by its valid start, never with the value pasted into it", () => {
    const refused = issue({ "Authorization: Bearer sk-s3cret0123456789abcdef": "x" })
    assert.strictEqual(refused.path, 'headers["Authorization"…]')
    assert.include(refused.message, "Authorization")
    assert.include(refused.message, "character 14")
    assert.notInclude(`${refused.path} ${refused.message}`, "s3cret")
    const pasted = issue({ "Bearer sk-s3cret0123456789abcdefgh": "x" })
    assert.notInclude(`${pasted.path} ${pasted.message}`, "s3cret")
    assert.strictEqual(issue({ "bad name": "x" }).path, 'headers["bad name"]')
  })

  it("a Map or a fetch Headers is refused naming its kind, not taken as no headers at all", () => {
    for (const [input, kind] of [
      [new Map([["x-team", "a"]]), "a Map"],
      [new Headers({ "x-team": "a" }), "a Headers"]
    ] as const) {
      const refused = issue(input)
      assert.strictEqual(refused.path, "headers")
      assert.include(refused.message, kind)
    }
    const bare: Record<string, string> = Object.create(null)
    bare["x-team"] = "a"
    assert.deepStrictEqual(
      Result.map(Options.headers("headers", bare), (set) => set.values),
      Result.succeed(bare)
    )
  })

  it("a long name is shown bounded, in the path and the message", () => {
    for (const input of [{ [`${"x".repeat(5000)} y`]: "v" }, { ["x".repeat(5000)]: "a\nb" }]) {
      const refused = issue(input)
      assert.isBelow(refused.path.length, 200)
      assert.isBelow(refused.message.length, 300)
    }
    const [entry] = Options.secretHeaders({ ["x".repeat(5000)]: Redacted.make("k") })
    assert.isBelow(entry?.[0].length ?? 0, 200)
  })
})

layer(NodeHttpClient.layerUndici)("Client over a real server", (it) => {
  const post = (server: Server.TestServer, path = "/x") =>
    HttpClientRequest.post(`${server.url}${path}`).pipe(HttpClientRequest.bodyJsonUnsafe({ hi: 1 }))
  const anything = (value: unknown) => Effect.succeed(value)

  it.effect("an endless 200 JSON body fails TooLarge and the connection is closed", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) => Server.endless(res, { contentType: "application/json" }))
      const client = yield* Client.make(settings({ maxResponseBytes: 256 * 1024 }))
      const error = yield* Effect.flip(client.json(post(server), anything, ctx))
      assert.strictEqual(modelError(error).reason, "TooLarge")
      yield* server.awaitAborted(1)
    })
  )

  it.effect("a 404 or 405 names the URL it answered (no query), with a hint when the path lacks /v1", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((req, res) =>
        req.path.includes("model")
          ? Server.json(res, 404, { error: { message: "The model `x` does not exist", code: "model_not_found" } })
          : Server.text(res, req.path.includes("nope") ? 405 : 404, "Not Found")
      )
      const client = yield* Client.make(settings())
      const failed = (path: string) =>
        Effect.map(Effect.flip(client.json(post(server, path), anything, ctx)), (e) => modelError(e).message)
      const missing = yield* failed("/chat/completions?api-version=s3cret")
      assert.include(missing, `HTTP 404 for POST ${server.url}/chat/completions`)
      assert.include(missing, "/v1")
      assert.include(missing, "Not Found")
      assert.notInclude(missing, "s3cret")
      const wrongModel = yield* failed("/v1/chat/completions")
      assert.include(wrongModel, `HTTP 404 for POST ${server.url}/v1/chat/completions: Not Found`)
      const method = yield* failed("/v1/nope")
      assert.include(method, `HTTP 405 for POST ${server.url}/v1/nope`)
      // An API's own error says what was not found: the upstream's address is no business of a gateway's client.
      const model = yield* failed("/v1/model/chat/completions")
      assert.strictEqual(model, "t answered HTTP 404: The model `x` does not exist")
      const long = yield* failed(`/${"p".repeat(5000)}`)
      assert.isBelow(long.length, 400)
      const stream = yield* Effect.flip(Stream.runDrain(client.sse(post(server, "/embeddings"), ctx)))
      assert.include(modelError(stream).message, `${server.url}/embeddings`)
    })
  )

  it.effect("a declared content-length over the bound fails before the body is read", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) =>
        Server.text(res, 200, JSON.stringify({ a: "x".repeat(5000) }), { "content-type": "application/json" })
      )
      const client = yield* Client.make(settings({ maxResponseBytes: 1000 }))
      assert.strictEqual(modelError(yield* Effect.flip(client.json(post(server), anything, ctx))).reason, "TooLarge")
    })
  )

  it.effect(
    "a declared content-length within the bound is read whole, multi-byte text included; a short body is Transport",
    () =>
      Effect.gen(function* () {
        const value = { text: "Grüß 🌍 ".repeat(200), n: 7 }
        const body = JSON.stringify(value)
        const server = yield* Server.make((req, res) => {
          if (req.path === "/short") {
            // Declares more than it sends, then closes the connection.
            res.writeHead(200, { "content-type": "application/json", "content-length": "5000" })
            res.write(body.slice(0, 100))
            res.socket?.destroy()
            return
          }
          Server.text(res, 200, body, { "content-type": "application/json" })
        })
        const client = yield* Client.make(settings({ maxResponseBytes: Buffer.byteLength(body) }))
        assert.deepStrictEqual(yield* client.json(post(server), anything, ctx), value)
        const short = yield* Effect.flip(client.json(post(server, "/short"), anything, ctx))
        assert.strictEqual(modelError(short).reason, "Transport")
      })
  )

  it.effect("a compressed answer is bounded by what it inflates to, not by its declared length (fetch inflates)", () =>
    Effect.gen(function* () {
      const big = JSON.stringify({ text: "a".repeat(2_000_000) })
      const compressed = gzipSync(big)
      assert.isBelow(compressed.byteLength, 10_000)
      const server = yield* Server.make((_, res) => {
        res.writeHead(200, {
          "content-type": "application/json",
          "content-encoding": "gzip",
          "content-length": String(compressed.byteLength)
        })
        res.end(compressed)
      })
      const client = yield* Client.make(settings({ maxResponseBytes: 1_000_000 }))
      const error = yield* Effect.flip(client.json(post(server), anything, ctx))
      assert.strictEqual(modelError(error).reason, "TooLarge")
      // The same answer within the bound is read.
      const roomy = yield* Client.make(settings({ maxResponseBytes: 3_000_000 }))
      const read = (yield* roomy.json(post(server), anything, ctx)) as { readonly text: string }
      assert.strictEqual(read.text.length, 2_000_000)
    }).pipe(Effect.provide(FetchHttpClient.layer))
  )

  it.effect("a 200 HTML page is Decode on content-type; a 200 error object is the provider's error", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((req, res) =>
        req.path === "/html"
          ? Server.text(res, 200, "<html>login</html>", { "content-type": "text/html" })
          : req.path === "/long"
            ? Server.json(res, 200, { error: { message: "too long", code: "context_length_exceeded" } })
            : Server.json(res, 200, { error: { message: "Upstream overloaded", type: "overloaded_error" } })
      )
      const client = yield* Client.make(settings())
      const html = modelError(yield* Effect.flip(client.json(post(server, "/html"), anything, ctx)))
      assert.strictEqual(html.reason, "Decode")
      assert.strictEqual(html.field, "content-type")
      const payload = modelError(yield* Effect.flip(client.json(post(server), anything, ctx)))
      assert.strictEqual(payload.reason, "Overloaded")
      assert.include(payload.message, "answered with an error: Upstream overloaded", "not a stream")
      const tooLong = modelError(yield* Effect.flip(client.json(post(server, "/long"), anything, ctx)))
      assert.strictEqual(tooLong.reason, "InvalidRequest", "OpenAI's code context_length_exceeded")
    })
  )

  it.effect("a call that hangs ends with a request TimeoutError at its timeout, and its connection is closed", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) => Server.hang(res))
      const client = yield* Client.make(settings({ timeout: "30 seconds" }))
      const fiber = yield* Effect.forkChild(Effect.flip(client.json(post(server), anything, ctx)))
      yield* server.awaitRequests(1)
      yield* TestClock.adjust("30 seconds")
      const error = yield* Fiber.join(fiber)
      assert.instanceOf(error, TimeoutError)
      assert.strictEqual((error as TimeoutError).limit, "request")
      yield* server.awaitAborted(1)
    })
  )

  it.effect("an error answer whose body stalls after its head fails with its status's error, not a timeout", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) =>
        Server.chunked(res, ['{"error":{"message":"Incorrect API key"'], {
          status: 401,
          contentType: "application/json",
          end: "hang"
        })
      )
      const client = yield* Client.make(settings({ timeout: "30 seconds" }))
      const fiber = yield* Effect.forkChild(Effect.flip(client.json(post(server), anything, ctx)))
      // The request's deadline is one sleep; the error body's read, once the head arrived, another
      // (the test clock's pending sleeps: the head arrives over real I/O, at no test-clock time).
      const sleeping = TestClock.testClockWith((clock) =>
        Effect.sync(() => (clock as unknown as { readonly sleeps: ReadonlyArray<unknown> }).sleeps.length)
      )
      while ((yield* sleeping) < 2) yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
      yield* TestClock.adjust(Body.errorBodyTimeout)
      const error = modelError(yield* Fiber.join(fiber))
      assert.strictEqual(error.reason, "Unauthorized")
      assert.isFalse(isRetryable(error))
    })
  )

  it.effect("a stream answered 200 with a JSON document is Decode on content-type, not retryable", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) =>
        Server.json(res, 200, { choices: [{ message: { content: "hi" } }] })
      )
      const client = yield* Client.make(settings())
      const error = modelError(yield* Effect.flip(Stream.runDrain(client.sse(post(server), ctx))))
      assert.strictEqual(error.reason, "Decode")
      assert.strictEqual(error.field, "content-type")
      assert.include(error.message, "application/json")
      assert.isFalse(isRetryable(error))
    })
  )

  it.effect("an endless event stream fails TooLarge at maxResponseBytes, and its connection is closed", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) =>
        Server.endless(res, { chunk: Server.sse([{ a: "x".repeat(500) }]) })
      )
      const client = yield* Client.make(settings({ maxResponseBytes: 512 * 1024 }))
      const error = modelError(yield* Effect.flip(Stream.runDrain(client.sse(post(server), ctx))))
      assert.strictEqual(error.reason, "TooLarge")
      assert.include(error.message, "maxResponseBytes")
      yield* server.awaitAborted(1)
    })
  )

  it.effect("spans record allow-listed headers and nothing else in clear, even with capture of every header on", () =>
    Effect.gen(function* () {
      const key = "sk-span-secret-4242"
      const server = yield* Server.make((_, res) =>
        Server.json(res, 200, { ok: true }, { "x-request-id": "req-7", "x-echo-key": key, "set-cookie": `k=${key}` })
      )
      const { spans, tracer } = recording()
      const client = yield* Client.make(settings())
      const request = post(server).pipe(
        HttpClientRequest.setHeader("x-custom-key", key),
        HttpClientRequest.bearerToken(Redacted.make(key))
      )
      const call = client.json(request, anything, ctx)
      yield* call.pipe(Effect.withSpan("default capture"), Effect.provideService(Tracer.Tracer, tracer))
      yield* call.pipe(
        Effect.withSpan("capture everything"),
        Effect.provideService(HttpClient.TracerHeaderFilter, () => true),
        Effect.provideService(Tracer.Tracer, tracer)
      )
      const http = spans.filter((s) => s.name === "POST")
      assert.lengthOf(http, 2)
      const [byDefault, everything] = http.map((s) => Object.fromEntries(s.attributes))
      assert.strictEqual(byDefault?.["http.response.header.x-request-id"], "req-7")
      assert.strictEqual(byDefault?.["http.request.header.content-type"], "application/json")
      assert.isUndefined(byDefault?.["http.response.header.x-echo-key"])
      assert.strictEqual(everything?.["http.response.header.x-echo-key"], "<redacted>")
      assert.strictEqual(everything?.["http.request.header.x-custom-key"], "<redacted>")
      assert.strictEqual(everything?.["http.request.header.authorization"], "<redacted>")
      assert.strictEqual(everything?.["http.response.header.x-request-id"], "req-7")
      for (const span of spans) assert.notInclude(inspect(Object.fromEntries(span.attributes), { depth: 5 }), key)
    })
  )

  it.effect(
    "a middleware failure that repeats the key reaches no span: the client span ends with our scrubbed error",
    () =>
      Effect.gen(function* () {
        const key = "sk-middleware-secret-5151"
        const server = yield* Server.make((_, res) => Server.json(res, 200, { ok: true }))
        const { spans, tracer } = recording()
        const seen: Array<HttpClientRequest.HttpClientRequest> = []
        // A proxy layer that fails and repeats the request's headers (the key with them) in its error.
        const leaky = (): HttpClient.HttpClient =>
          HttpClient.make((request) => {
            seen.push(request)
            const headers = Object.entries(request.headers).map(([name, value]) => `${name}=${value}`)
            return Effect.fail(
              new HttpClientError.HttpClientError({
                reason: new HttpClientError.TransportError({
                  request,
                  description: `proxy refused ${headers.join(" ")}`,
                  cause: new Error(`upstream: ${key}`, { cause: new Error(key) })
                })
              })
            )
          })
        const secrets = [Redacted.make(key)]
        const client = yield* Client.make(settings(), leaky)
        const request = post(server).pipe(
          HttpClientRequest.setHeader("x-api-key", key),
          HttpClientRequest.bearerToken(Redacted.make(key))
        )
        const error = yield* client.json(request, anything, { ...ctx, secrets }).pipe(
          Effect.flip,
          Effect.withSpan("call"),
          Effect.provideService(HttpClient.TracerHeaderFilter, () => true),
          Effect.provideService(Tracer.Tracer, tracer)
        )
        assert.strictEqual(modelError(error).reason, "Transport")
        const streamed = yield* Stream.runDrain(client.sse(request, { ...ctx, secrets })).pipe(
          Effect.flip,
          Effect.provideService(Tracer.Tracer, tracer)
        )
        assert.strictEqual(modelError(streamed).reason, "Transport")
        // What an exporter sends (OtlpTracer): attributes, events, and the pretty errors of a failed exit.
        for (const span of spans) {
          assert.notInclude(inspect(Object.fromEntries(span.attributes), { depth: 10 }), key, span.name)
          assert.notInclude(inspect(span.events, { depth: 10 }), key, span.name)
          if (span.status._tag === "Ended" && Exit.isFailure(span.status.exit)) {
            for (const rendered of Cause.prettyErrors(span.status.exit.cause)) {
              assert.notInclude(`${rendered.message}\n${rendered.stack}`, key, span.name)
            }
          }
        }
        // One client span per call, ended with the typed error, and still propagated to the request.
        const http = spans.filter((s) => s.name === "POST")
        assert.lengthOf(http, 2)
        const [first] = http
        assert.strictEqual(first?.kind, "client")
        assert.strictEqual(first?.attributes.get("http.request.method"), "POST")
        assert.strictEqual(first?.attributes.get("url.full"), `${server.url}/x`)
        assert.strictEqual(first?.attributes.get("gen_ai.provider.name"), "t")
        assert.strictEqual(first?.attributes.get("http.request.header.authorization"), "<redacted>")
        assert.strictEqual(first?.attributes.get("http.request.header.content-type"), "application/json")
        assert.strictEqual(first?.status._tag, "Ended")
        if (first?.status._tag === "Ended") {
          const failure = Cause.findErrorOption(
            first.status.exit._tag === "Failure" ? first.status.exit.cause : Cause.empty
          )
          assert.isTrue(failure._tag === "Some" && failure.value instanceof ModelError)
        }
        assert.strictEqual(seen[0]?.headers["traceparent"], `00-${first?.traceId}-${first?.spanId}-01`)
      })
  )

  it.effect("a Retry-After date in asctime form is GMT, as every HTTP date, whatever the local time zone", () =>
    Effect.gen(function* () {
      const zone = process.env.TZ
      process.env.TZ = "America/New_York"
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          if (zone === undefined) delete process.env.TZ
          else process.env.TZ = zone
        })
      )
      yield* TestClock.setTime(Date.UTC(2026, 0, 1))
      const server = yield* Server.make((_, res) =>
        Server.json(res, 503, { error: { message: "later" } }, { "retry-after": "Thu Jan  1 00:00:30 2026" })
      )
      const client = yield* Client.make(settings())
      const error = modelError(yield* Effect.flip(client.json(post(server), anything, ctx)))
      assert.deepStrictEqual(error.retryAfter, Duration.seconds(30))
    })
  )

  it.effect('a Retry-After sent twice (joined as "120, 120") is its first value, in seconds or as a date', () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(Date.UTC(2026, 0, 1))
      const values: Record<string, ReadonlyArray<string>> = {
        seconds: ["120", "120"],
        ms: ["250", "250"],
        date: ["Thu, 01 Jan 2026 00:00:30 GMT", "Thu, 01 Jan 2026 00:00:30 GMT"]
      }
      const server = yield* Server.make((req, res) => {
        const kind = req.search.get("kind") ?? "seconds"
        res.setHeader(kind === "ms" ? "retry-after-ms" : "retry-after", [...values[kind]!])
        res.writeHead(429, { "content-type": "application/json" })
        res.end(JSON.stringify({ error: { message: "slow down" } }))
      })
      const client = yield* Client.make(settings())
      const retryAfter = (kind: string) =>
        Effect.map(
          Effect.flip(client.json(post(server, `/x?kind=${kind}`), anything, ctx)),
          (error) => modelError(error).retryAfter
        )
      assert.deepStrictEqual(yield* retryAfter("seconds"), Duration.seconds(120))
      assert.deepStrictEqual(yield* retryAfter("ms"), Duration.millis(250))
      assert.deepStrictEqual(yield* retryAfter("date"), Duration.seconds(30))
      const now = Date.UTC(2026, 0, 1)
      assert.deepStrictEqual(Errors.parseRetryAfter({ "retry-after": "120,60" }, now), Duration.seconds(120))
      assert.isUndefined(Errors.parseRetryAfter({ "retry-after": "-5, 120" }, now))
    })
  )

  it.effect("a status error ends the client span with our error and its status; no span when tracing is off", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) =>
        Server.json(res, 429, { error: { message: "slow down" } }, { "retry-after": "3" })
      )
      const { spans, tracer } = recording()
      const client = yield* Client.make(settings())
      const error = yield* client
        .json(post(server), anything, ctx)
        .pipe(Effect.flip, Effect.provideService(Tracer.Tracer, tracer))
      assert.strictEqual(modelError(error).reason, "RateLimited")
      const [span] = spans.filter((s) => s.name === "POST")
      assert.strictEqual(span?.attributes.get("http.response.status_code"), 429)
      assert.strictEqual(span?.attributes.get("error.type"), "429")
      assert.strictEqual(span?.attributes.get("http.response.header.retry-after"), "3")
      assert.isTrue(span?.status._tag === "Ended" && Exit.isFailure(span.status.exit))
      const before = spans.length
      yield* client.json(post(server), anything, ctx).pipe(
        Effect.flip,
        Effect.provideService(HttpClient.TracerDisabledWhen, () => true),
        Effect.provideService(Tracer.Tracer, tracer)
      )
      assert.strictEqual(spans.length, before)
    })
  )
})

describe("credentials in a base URL", () => {
  it.effect("every provider refuses them at its URL option, saying to use apiKey, never repeating the password", () =>
    Effect.gen(function* () {
      const { make: openAi } = yield* Effect.promise(() => import("../../src/Model/OpenAiCompat.js"))
      const { make: ollama } = yield* Effect.promise(() => import("../../src/Model/Ollama.js"))
      const { make: gemini } = yield* Effect.promise(() => import("../../src/Model/Gemini.js"))
      const { make: watsonX } = yield* Effect.promise(() => import("../../src/Model/WatsonX.js"))
      const url = "http://user:s3cret-pw@127.0.0.1:1/v1"
      const key = Redacted.make("k")
      const cases = [
        [openAi({ baseUrl: url }), "baseUrl"],
        [ollama({ host: url }), "host"],
        [gemini({ apiKey: key, baseUrl: url }), "baseUrl"],
        [watsonX({ apiKey: key, projectId: "p", url }), "url"],
        [watsonX({ apiKey: key, projectId: "p", iamUrl: url }), "iamUrl"]
      ] as const
      for (const [made, path] of cases) {
        const error = yield* Effect.flip(
          Effect.scoped(made as Effect.Effect<unknown, Input.OptionError, HttpClient.HttpClient | Scope.Scope>)
        )
        assert.strictEqual(error.path, path)
        assert.include(error.message, "credentials in the URL are refused")
        assert.include(error.message, "apiKey")
        assert.notInclude(inspect(error, { depth: 10 }), "s3cret-pw")
      }
    }).pipe(Effect.provide(FetchHttpClient.layer))
  )
})

describe("secretUrl: which plain-http hosts are loopback", () => {
  it("takes every spelling of a loopback address and refuses a host that only looks like one", () => {
    for (const url of [
      "http://localhost:8000/v1",
      "http://LOCALHOST/v1",
      "http://localhost.:8000/v1",
      "http://127.0.0.1/v1",
      "http://127.1/v1",
      "http://2130706433/v1",
      "http://127.255.0.9/v1",
      "http://[::1]/v1",
      "http://[0:0:0:0:0:0:0:1]/v1",
      "http://[::ffff:127.0.0.1]:8000/v1",
      "http://[::ffff:127.9.8.7]/v1",
      "http://0.0.0.0/v1",
      "http://[::]/v1",
      "http://[::ffff:0.0.0.0]/v1"
    ]) {
      assert.isTrue(Result.isSuccess(Options.secretUrl("apiKey", url)), url)
    }
    for (const url of [
      "http://127.0.0.1.nip.io/v1",
      "http://localhost.example.com/v1",
      "http://[::2]/v1",
      "http://[::ffff:10.0.0.1]/v1",
      "http://[::ffff:128.0.0.1]/v1",
      "http://[::127.0.0.1]/v1",
      "http://128.0.0.1/v1"
    ]) {
      const refused = Options.secretUrl("apiKey", url)
      assert.isTrue(Result.isFailure(refused), url)
    }
  })
})
