/**
 * Streams through the gateway, as the official client reads them: a failure after the
 * first chunk raises in the client (never a clean end), a stalled upstream ends at the idle
 * deadline, a failure before the first chunk falls back (or is answered with its status),
 * and a client that leaves cancels the upstream call.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Stream } from "effect"
import { connect, type Socket } from "node:net"
import type OpenAI from "openai"
import * as Model from "../../src/Model.js"
import * as Server from "../utils/httpServer.js"
import * as Harness from "./harness.js"
import * as Up from "./upstream.js"

const hi = [{ role: "user" as const, content: "hi" }]

interface Read {
  readonly text: string
  readonly chunks: number
  readonly error: Harness.ClientError | undefined
}

/** Reads a stream to its end or its error. */
const read = (client: OpenAI, body: Omit<OpenAI.ChatCompletionCreateParamsStreaming, "stream">) =>
  Effect.promise(async (): Promise<Read> => {
    let text = ""
    let chunks = 0
    try {
      const stream = await client.chat.completions.create({ ...body, stream: true })
      for await (const chunk of stream) {
        chunks++
        text += chunk.choices[0]?.delta?.content ?? ""
      }
      return { text, chunks, error: undefined }
    } catch (error) {
      return { text, chunks, error: Harness.clientError(error) }
    }
  })

describe("Gateway: streams", () => {
  it.live("an upstream failure after the first chunk raises in the client, with the text so far delivered", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) =>
        Server.chunked(res, [Server.sse([Up.chunk("Hel"), Up.chunk("lo")])], { end: "destroy", pauseMs: 5 })
      )
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const result = yield* read(gw.client(), { model: "d-a", messages: hi })
      assert.strictEqual(result.text, "Hello")
      assert.isDefined(result.error)
      assert.strictEqual(result.error!.code, "stream_interrupted")
      assert.include(result.error!.message, "stream interrupted after 5 characters")
      const metrics = yield* gw.metrics
      assert.include(metrics, 'orchestra_gateway_errors_total{reason="StreamInterrupted"} 1')
    })
  )

  it.live("a stream cut by its upstream after the first chunk is charged its input estimate and the output sent", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) =>
        Server.chunked(res, [Server.sse([Up.chunk("Hel"), Up.chunk("lo, world")])], { end: "destroy", pauseMs: 5 })
      )
      const { service, log } = Harness.keyStore({ "sk-a": { id: "a" } })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service })
      const result = yield* read(gw.client("sk-a"), { model: "d-a", messages: hi })
      assert.strictEqual(result.text, "Hello, world")
      assert.isDefined(result.error)
      yield* Harness.eventually(() => gw.gateway.inFlight() === 0)
      assert.deepStrictEqual(log.released, [])
      assert.deepStrictEqual(log.settled, [{ id: 0, inputTokens: log.reserved[0]!.inputTokens, outputTokens: 3 }])
      assert.isAbove(log.reserved[0]!.inputTokens, 0)
    })
  )

  it.live("an upstream error event mid-stream raises in the client too, with the upstream's code", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) =>
        Server.chunked(res, [
          Server.sse([
            Up.chunk("partial"),
            {
              event: "error",
              data: { error: { message: "upstream broke", type: "server_error", code: "server_busy" } }
            }
          ])
        ])
      )
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const result = yield* read(gw.client(), { model: "d-a", messages: hi })
      assert.strictEqual(result.text, "partial")
      assert.strictEqual(result.error?.code, "stream_interrupted")
      // What cut it, not the upstream's own words (they are the operator's: the gateway's log has them).
      assert.include(result.error!.message, "stream interrupted after 7 characters")
      assert.notInclude(result.error!.message, "upstream broke")
      // The upstream's own code of what cut it, beside the gateway's, as an answer refused before its first chunk has it.
      assert.strictEqual((result.error!.body as { upstream_code?: unknown }).upstream_code, "server_busy")
    })
  )

  it.live("a stalled upstream ends at the idle deadline: an error in the client, the upstream connection closed", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) =>
        Server.chunked(res, [Server.sse([Up.chunk("first")])], { end: "hang" })
      )
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, gateway: { stream: { idleTimeout: 300 } } })
      const result = yield* read(gw.client(), { model: "d-a", messages: hi })
      assert.strictEqual(result.text, "first")
      assert.strictEqual(result.error?.code, "idle_timeout")
      yield* upstream.awaitAborted(1)
    })
  )

  it.live("a stream ended by an error event counts under its error's status in requests_total, not as a 200", () =>
    Effect.gen(function* () {
      const cut = yield* Server.make((_, res) =>
        Server.chunked(res, [Server.sse([Up.chunk("Hel")])], { end: "destroy", pauseMs: 5 })
      )
      const stalled = yield* Server.make((_, res) =>
        Server.chunked(res, [Server.sse([Up.chunk("first")])], { end: "hang" })
      )
      // 2 s: only the stalled upstream meets it (300 ms could pass on a loaded machine between the cut one's chunk and
      // its end, an idle_timeout where the stream was interrupted).
      const gw = yield* Harness.make({
        upstreams: { a: cut.url, b: stalled.url },
        gateway: { stream: { idleTimeout: "2 seconds" } }
      })
      assert.strictEqual((yield* read(gw.client(), { model: "d-a", messages: hi })).error?.code, "stream_interrupted")
      assert.strictEqual((yield* read(gw.client(), { model: "d-b", messages: hi })).error?.code, "idle_timeout")
      const metrics = yield* gw.metrics
      assert.include(metrics, 'orchestra_gateway_requests_total{route="chat_stream",status="502"} 1')
      assert.include(metrics, 'orchestra_gateway_requests_total{route="chat_stream",status="504"} 1')
      assert.notInclude(metrics, 'orchestra_gateway_requests_total{route="chat_stream",status="200"}')
    })
  )

  it.live("the total deadline ends a stream that keeps going: an error event, not a clean end", () =>
    Effect.gen(function* () {
      // A chunk every 20 ms, for ever: as fast as the gateway read (Server.endless), a quiet machine reached the
      // stream's size bound (stream_interrupted) before the 2 s below; paced, only the total deadline ends it.
      const upstream = yield* Server.make(async (_, res) => {
        res.writeHead(200, { "content-type": "text/event-stream" })
        res.write(Server.sse([Up.chunk("tick")]))
        while (!res.destroyed && !res.writableEnded) {
          await Server.pause(20)
          res.write(Server.sse([Up.chunk(".")]))
        }
      })
      // 2 s: the first chunk comes well within it on a loaded machine (400 ms did not always leave room for it).
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        gateway: { stream: { totalTimeout: "2 seconds" } }
      })
      const result = yield* read(gw.client(), { model: "d-a", messages: hi })
      assert.isTrue(result.text.startsWith("tick"))
      assert.strictEqual(result.error?.code, "total_timeout")
      yield* upstream.awaitAborted(1)
    })
  )

  it.live("falls back before the first chunk: the client sees only the next domain's answer", () =>
    Effect.gen(function* () {
      const failing = yield* Server.make((_, res) => Server.json(res, 503, { error: { message: "down" } }))
      const working = yield* Server.make(Up.openAi(["from ", "b"]))
      const gw = yield* Harness.make({
        upstreams: { a: failing.url, b: working.url },
        domains: [
          { name: "main", provider: "a", fallback: ["backup"] },
          { name: "backup", provider: "b" }
        ]
      })
      const result = yield* read(gw.client(), { model: "main", messages: hi })
      assert.strictEqual(result.error, undefined)
      assert.strictEqual(result.text, "from b")
      assert.strictEqual((yield* failing.requests).length, 1)
    })
  )

  it.live("a failure before the first chunk without a fallback is answered with its status, not a 200 stream", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) => Server.hang(res))
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        gateway: { stream: { firstChunkTimeout: 200 } }
      })
      const result = yield* read(gw.client(), { model: "d-a", messages: hi })
      assert.strictEqual(result.chunks, 0)
      assert.strictEqual(result.error?.status, 504)
      assert.strictEqual(result.error?.code, "first_chunk_timeout")
    })
  )

  it.live("a finished stream is stored in the response cache: the same stream again is replayed, not called", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi(["Hel", "lo", " wörld"]))
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, cache: { ttl: "1 minute" } })
      // `d-a` names no model: its provider's default, `a-model`, which `a/a-model` names: one entry for both.
      for (const [model, calls] of [
        ["d-a", 1],
        ["a/a-model", 0],
        ["a/b-model", 1]
      ] as const) {
        const before = (yield* upstream.requests).length
        const first = yield* read(gw.client(), { model, messages: hi })
        const second = yield* read(gw.client(), { model, messages: hi })
        assert.isUndefined(first.error, model)
        assert.isUndefined(second.error, model)
        assert.strictEqual(first.text, "Hello wörld", model)
        assert.strictEqual(second.text, first.text, model)
        assert.strictEqual((yield* upstream.requests).length - before, calls, `${model}: upstream calls`)
      }
      const metrics = yield* gw.metrics
      assert.match(metrics, /orchestra_cache_lookups_total\{[^}]*outcome="hit"[^}]*\} 4/)
    })
  )

  it.live("a client that leaves mid-stream cancels the upstream call and is charged what it was sent", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) =>
        Server.endless(res, { prefix: Server.sse([Up.chunk("go")]), chunk: Server.sse([Up.chunk("more")]) })
      )
      const { service, log } = Harness.keyStore({ "sk-a": { id: "a" } })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service })
      yield* Effect.promise(async () => {
        const stream = await gw.client("sk-a").chat.completions.create({ model: "d-a", messages: hi, stream: true })
        for await (const _ of stream) break
      })
      yield* upstream.awaitAborted(1)
      yield* Harness.eventually(() => gw.gateway.inFlight() === 0 && log.settled.length > 0)
      // Not released for free: the upstream answered; the input estimate and the output read
      // (at least "go", 4 characters a token) are charged.
      assert.deepStrictEqual(log.released, [])
      assert.strictEqual(log.settled.length, 1)
      const [settled] = log.settled
      assert.strictEqual(settled!.id, 0)
      assert.strictEqual(settled!.inputTokens, log.reserved[0]!.inputTokens)
      assert.isAtLeast(settled!.outputTokens, 1)
      assert.include(yield* gw.metrics, 'orchestra_gateway_requests_total{route="chat_stream",status="499"} 1')
    })
  )

  it.live("a client that leaves before a non-streamed answer cancels the upstream call", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Server.hang)
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const controller = new AbortController()
      yield* Effect.forkChild(
        Harness.call(() =>
          gw.client().chat.completions.create({ model: "d-a", messages: hi }, { signal: controller.signal })
        ),
        { startImmediately: true }
      )
      yield* upstream.awaitRequests(1)
      controller.abort()
      yield* upstream.awaitAborted(1)
      yield* Harness.eventually(() => gw.gateway.inFlight() === 0)
    })
  )
})

/** `orchestra_gateway_tokens_total` of each type in Prometheus text (undefined: no series). */
const tokensTotal = (metrics: string) =>
  (["input", "output"] as const).map((type) => {
    const series = `orchestra_gateway_tokens_total{type="${type}"} `
    const line = metrics.split("\n").find((l) => l.startsWith(series))
    return line === undefined ? undefined : Number(line.slice(series.length))
  })

describe("Gateway: tokens of a stream cut without usage", () => {
  it.live("cut by its upstream: tokens_total counts what its key was charged", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) =>
        Server.chunked(res, [Server.sse([Up.chunk("Hel"), Up.chunk("lo, world")])], { end: "destroy", pauseMs: 5 })
      )
      const { service, log } = Harness.keyStore({ "sk-a": { id: "a" } })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service })
      const result = yield* read(gw.client("sk-a"), { model: "d-a", messages: hi })
      assert.isDefined(result.error)
      yield* Harness.eventually(() => gw.gateway.inFlight() === 0 && log.settled.length > 0)
      const [settled] = log.settled
      assert.deepStrictEqual(tokensTotal(yield* gw.metrics), [settled!.inputTokens, settled!.outputTokens])
    })
  )

  it.live("a client that left: tokens_total counts what its key was charged", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) =>
        Server.endless(res, { prefix: Server.sse([Up.chunk("go")]), chunk: Server.sse([Up.chunk("more")]) })
      )
      const { service, log } = Harness.keyStore({ "sk-a": { id: "a" } })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service })
      yield* Effect.promise(async () => {
        const stream = await gw.client("sk-a").chat.completions.create({ model: "d-a", messages: hi, stream: true })
        for await (const _ of stream) break
      })
      yield* upstream.awaitAborted(1)
      yield* Harness.eventually(() => gw.gateway.inFlight() === 0 && log.settled.length > 0)
      const [settled] = log.settled
      assert.deepStrictEqual(tokensTotal(yield* gw.metrics), [settled!.inputTokens, settled!.outputTokens])
    })
  )

  it.live("without a key: tokens_total counts the same estimate a key would be charged", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) =>
        Server.chunked(res, [Server.sse([Up.chunk("Hel"), Up.chunk("lo, world")])], { end: "destroy", pauseMs: 5 })
      )
      const { service, log } = Harness.keyStore({ "sk-a": { id: "a" } })
      const keyed = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service })
      yield* read(keyed.client("sk-a"), { model: "d-a", messages: hi })
      yield* Harness.eventually(() => keyed.gateway.inFlight() === 0 && log.settled.length > 0)
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const result = yield* read(gw.client(), { model: "d-a", messages: hi })
      assert.isDefined(result.error)
      yield* Harness.eventually(() => gw.gateway.inFlight() === 0)
      assert.deepStrictEqual(tokensTotal(yield* gw.metrics), [log.settled[0]!.inputTokens, 3])
    })
  )
})

describe("Gateway: tools", () => {
  it.live("passes tools and tool_choice through, and the tool calls back, in answers and in streams", () =>
    Effect.gen(function* () {
      const call = { id: "call_1", type: "function", function: { name: "weather", arguments: '{"city":"Oslo"}' } }
      const upstream = yield* Server.make((request, res) => {
        const body = request.json as { stream?: boolean }
        if (body.stream !== true) {
          return Server.json(res, 200, Up.completion(null, { toolCalls: [call], finish: "tool_calls" }))
        }
        return Server.chunked(res, [
          Server.sse([
            {
              ...Up.chunk(null),
              choices: [
                {
                  index: 0,
                  delta: {
                    tool_calls: [
                      { index: 0, id: "call_1", type: "function", function: { name: "weather", arguments: "" } }
                    ]
                  },
                  finish_reason: null
                }
              ]
            },
            {
              ...Up.chunk(null),
              choices: [
                {
                  index: 0,
                  delta: { tool_calls: [{ index: 0, function: { arguments: '{"city":"Oslo"}' } }] },
                  finish_reason: null
                }
              ]
            },
            Up.chunk(null, "tool_calls"),
            "[DONE]"
          ])
        ])
      })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const tools: Array<OpenAI.ChatCompletionTool> = [
        {
          type: "function",
          function: {
            name: "weather",
            description: "the weather",
            parameters: { type: "object", properties: { city: { type: "string" } } }
          }
        }
      ]
      const answer = yield* Harness.call(() =>
        gw.client().chat.completions.create({
          model: "d-a",
          messages: hi,
          tools,
          tool_choice: { type: "function", function: { name: "weather" } }
        })
      )
      assert.strictEqual(answer.choices[0]!.finish_reason, "tool_calls")
      assert.deepStrictEqual(answer.choices[0]!.message.tool_calls, [call as OpenAI.ChatCompletionMessageToolCall])
      const [sent] = yield* upstream.requests
      const body = sent!.json as Record<string, unknown>
      assert.deepStrictEqual(body.tools, tools)
      assert.deepStrictEqual(body.tool_choice, { type: "function", function: { name: "weather" } })
      const streamed = yield* Harness.call(async () => {
        const stream = await gw.client().chat.completions.create({ model: "d-a", messages: hi, tools, stream: true })
        const calls: Array<unknown> = []
        let finish: string | null = null
        for await (const chunk of stream) {
          for (const c of chunk.choices[0]?.delta?.tool_calls ?? []) calls.push(c)
          finish = chunk.choices[0]?.finish_reason ?? finish
        }
        return { calls, finish }
      })
      assert.deepStrictEqual(streamed.calls, [{ index: 0, ...call }])
      assert.strictEqual(streamed.finish, "tool_calls")
      const replied = yield* Harness.call(() =>
        gw.client().chat.completions.create({
          model: "d-a",
          messages: [
            ...hi,
            { role: "assistant", content: null, tool_calls: [call as OpenAI.ChatCompletionMessageToolCall] },
            { role: "tool", tool_call_id: "call_1", content: "sunny" }
          ],
          tools
        })
      )
      assert.strictEqual(replied.object, "chat.completion")
      const third = (yield* upstream.requests)[2]!.json as { messages: unknown }
      assert.deepStrictEqual(third.messages, [
        { role: "user", content: "hi" },
        { role: "assistant", content: null, tool_calls: [call] },
        { role: "tool", tool_call_id: "call_1", content: "sunny" }
      ])
    })
  )
})

describe("Gateway: an answer that ended in error", () => {
  const usage = { inputTokens: 5, outputTokens: 3, totalTokens: 8 }

  it.live("is logged under its request id, streamed or not, as its answer says", () =>
    Effect.gen(function* () {
      const logs: Array<string> = []
      const finished: Model.StreamPart = { _tag: "Finish", finishReason: "error", usage, provider: "g", model: "m" }
      const gw = yield* Harness.make({
        upstreams: {},
        localProviders: {
          g: Layer.succeed(Model.ModelProvider, {
            name: "g",
            defaultModel: "m",
            generate: () =>
              Effect.succeed({ text: "", finishReason: "error" as const, usage, provider: "g", model: "m" }),
            embed: () => Effect.die("not used"),
            stream: () => Stream.fromIterable([finished])
          })
        },
        logs
      })
      for (const stream of [false, true]) {
        const answer = yield* Harness.failing(async () => {
          const result = await gw.client().chat.completions.create({ model: "d-g", messages: hi, stream })
          if (stream) for await (const _ of result as AsyncIterable<unknown>) void _
          return result
        })
        assert.strictEqual(answer.status, 502)
        assert.include(answer.message, "the gateway's log has its message")
        const id = answer.headers?.get("x-request-id")
        assert.isTrue(
          logs.some((line) => line.includes(`"request_id":"${id}"`) && line.includes("ended in error")),
          `${id}: ${logs.join("\n")}`
        )
      }
    })
  )
  // What Gemini says of a malformed function call, or an Effect AI model of an error: the answer ended in error.
  const provider = (parts: ReadonlyArray<Model.StreamPart>) =>
    Layer.succeed(Model.ModelProvider, {
      name: "g",
      defaultModel: "m",
      generate: () => Effect.succeed({ text: "Hel", finishReason: "error" as const, usage, provider: "g", model: "m" }),
      embed: () => Effect.die("not used"),
      stream: () => Stream.fromIterable(parts)
    })
  const finish: Model.StreamPart = { _tag: "Finish", finishReason: "error", usage, provider: "g", model: "m" }

  it.live("is a 502, streamed (an error event, never [DONE]) or not, and is charged what the provider counted", () =>
    Effect.gen(function* () {
      const { service, log } = Harness.keyStore({ "sk-a": { id: "a" } })
      const gw = yield* Harness.make({
        upstreams: {},
        localProviders: { g: provider([{ _tag: "TextDelta", text: "Hel" }, finish]) },
        keys: service
      })
      const client = gw.client("sk-a")
      const answer = yield* Harness.failing(() => client.chat.completions.create({ model: "d-g", messages: hi }))
      assert.strictEqual(answer.status, 502)
      assert.strictEqual(answer.code, "upstream_error")
      const streamed = yield* read(client, { model: "d-g", messages: hi })
      assert.strictEqual(streamed.text, "Hel")
      assert.isDefined(streamed.error)
      assert.strictEqual(streamed.error!.code, "upstream_error")
      yield* Harness.eventually(() => gw.gateway.inFlight() === 0)
      assert.deepStrictEqual(log.released, [])
      assert.deepStrictEqual(
        log.settled.map((s) => [s.inputTokens, s.outputTokens]),
        [
          [5, 3],
          [5, 3]
        ]
      )
      const metrics = yield* gw.metrics
      assert.include(metrics, 'orchestra_gateway_errors_total{reason="Unknown"} 2')
    })
  )

  it.live("before any output, a stream is answered with the failure's status, not a 200 stream", () =>
    Effect.gen(function* () {
      const gw = yield* Harness.make({ upstreams: {}, localProviders: { g: provider([finish]) } })
      const refused = yield* Harness.failing(() =>
        gw.client().chat.completions.create({ model: "d-g", messages: hi, stream: true })
      )
      assert.strictEqual(refused.status, 502)
      assert.strictEqual(refused.code, "upstream_error")
    })
  )
})

describe("Gateway: a client that stops reading", () => {
  // Raw socket: the request sent, the first bytes of the answer read, then no more reads.
  const stopReading = (url: string) =>
    Effect.callback<Socket>((resume) => {
      const { hostname, port } = new URL(url)
      const body = JSON.stringify({ model: "d-a", messages: hi, stream: true })
      const socket = connect({ host: hostname, port: Number(port) }, () => {
        socket.write(
          `POST /v1/chat/completions HTTP/1.1\r\nHost: ${hostname}:${port}\r\nContent-Type: application/json\r\n` +
            `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
        )
      })
      socket.once("data", () => {
        socket.pause()
        resume(Effect.succeed(socket))
      })
      socket.on("error", () => undefined)
    })

  it.live("its connection is closed after writeTimeout, which cancels the upstream call: nothing held for good", () =>
    Effect.gen(function* () {
      // An upstream that streams as fast as it is read, without end.
      const upstream = yield* Server.make((_, res) =>
        Server.endless(res, { chunk: Server.sse([Up.chunk("x".repeat(8 * 1024))]) })
      )
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        gateway: { writeTimeout: "500 millis", stream: { idleTimeout: "1 second" } }
      })
      const socket = yield* stopReading(gw.url)
      yield* Effect.addFinalizer(() => Effect.sync(() => socket.destroy()))
      // Its buffers fill, the stream waits on the client: no stream deadline can fire, only the write timeout.
      yield* upstream.awaitAborted(1).pipe(Effect.timeout("20 seconds"))
      yield* Harness.eventually(() => gw.gateway.inFlight() === 0)
      assert.isTrue(socket.destroyed || socket.readableEnded || (yield* closed(socket)))
    })
  )

  it.live("a client that reads, or waits for an answer longer than writeTimeout, is not cut", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(async (request, res) => {
        const body = request.json as { readonly stream?: boolean }
        if (body.stream === true) return Server.chunked(res, [Server.sse(Up.streamEvents(["a", "b", "c", "d"]))])
        await Server.pause(900)
        return Server.json(res, 200, Up.completion("late"))
      })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, gateway: { writeTimeout: "300 millis" } })
      const result = yield* read(gw.client(), { model: "d-a", messages: hi })
      assert.strictEqual(result.text, "abcd")
      assert.isUndefined(result.error)
      const answer = yield* Harness.call(() => gw.client().chat.completions.create({ model: "d-a", messages: hi }))
      assert.strictEqual(answer.choices[0]?.message.content, "late")
    })
  )
})

const closed = (socket: Socket) =>
  Effect.callback<boolean>((resume) => {
    if (socket.destroyed) return resume(Effect.succeed(true))
    socket.resume()
    socket.once("close", () => resume(Effect.succeed(true)))
  }).pipe(Effect.timeout("5 seconds"))

describe("Gateway: usage a provider could not count", () => {
  // A provider of one's own may report NaN, negative or fractional counts: the executor refuses such an
  // answer (a Decode error naming the count, streamed or not), so no client reads null counts.
  const providerOf = (usage: Model.Usage) =>
    Layer.succeed(Model.ModelProvider, {
      name: "g",
      defaultModel: "m",
      generate: () => Effect.succeed({ text: "ok", finishReason: "stop" as const, usage, provider: "g", model: "m" }),
      embed: () => Effect.die("not used"),
      stream: () =>
        Stream.fromIterable<Model.StreamPart>([
          { _tag: "TextDelta", text: "ok" },
          { _tag: "Finish", finishReason: "stop", usage, provider: "g", model: "m" }
        ])
    })
  const miscounting = providerOf({ inputTokens: Number.NaN, outputTokens: -3, totalTokens: 2.5 })
  const provider = providerOf(Model.usage(1, 1))

  it.live("is refused (a Decode error naming the count), streamed or not: no client reads a null count", () =>
    Effect.gen(function* () {
      const gw = yield* Harness.make({ upstreams: {}, localProviders: { g: miscounting } })
      const raw = (body: unknown) =>
        Effect.promise(() =>
          fetch(`${gw.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json", authorization: "Bearer sk-client" },
            body: JSON.stringify(body)
          }).then((r) => r.text())
        )
      const answer = JSON.parse(yield* raw({ model: "d-g", messages: hi }))
      assert.isUndefined(answer.usage)
      assert.strictEqual(answer.error.code, "upstream_bad_response", JSON.stringify(answer))
      const streamed = yield* raw({ model: "d-g", messages: hi, stream: true, stream_options: { include_usage: true } })
      const chunks = streamed
        .split("\n\n")
        .filter((event) => event.startsWith("data: {"))
        .map((event) => JSON.parse(event.slice(6)))
      // The text came first; the Finish's counts end the stream with an error event, never a null count.
      assert.notInclude(streamed, '_tokens":null')
      assert.notInclude(streamed, "[DONE]")
      assert.strictEqual(chunks.at(-1).error.code, "stream_interrupted", streamed)
      assert.include(chunks.at(-1).error.message, "Decode")
    })
  )

  it.live(
    'with include_usage every chunk but the last has "usage": null, as OpenAI sends; without it none has usage',
    () =>
      Effect.gen(function* () {
        const gw = yield* Harness.make({ upstreams: {}, localProviders: { g: provider } })
        const chunksOf = (body: unknown) =>
          Effect.promise(() =>
            fetch(`${gw.url}/v1/chat/completions`, {
              method: "POST",
              headers: { "content-type": "application/json", authorization: "Bearer sk-client" },
              body: JSON.stringify(body)
            }).then((r) => r.text())
          ).pipe(
            Effect.map((text) =>
              text
                .split("\n\n")
                .filter((event) => event.startsWith("data: {"))
                .map((event) => JSON.parse(event.slice(6)) as Record<string, unknown>)
            )
          )
        const withUsage = yield* chunksOf({
          model: "d-g",
          messages: hi,
          stream: true,
          stream_options: { include_usage: true }
        })
        assert.isAtLeast(withUsage.length, 3)
        for (const chunk of withUsage.slice(0, -1)) {
          assert.isTrue("usage" in chunk && chunk.usage === null, JSON.stringify(chunk))
          assert.strictEqual((chunk.choices as ReadonlyArray<unknown>).length, 1)
        }
        assert.deepStrictEqual(withUsage.at(-1)!.choices, [])
        assert.isObject(withUsage.at(-1)!.usage)
        const without = yield* chunksOf({ model: "d-g", messages: hi, stream: true })
        assert.isAtLeast(without.length, 2)
        for (const chunk of without) assert.isFalse("usage" in chunk, JSON.stringify(chunk))
      })
  )
})
