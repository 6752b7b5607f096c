/**
 * Shutdown: stop accepting (503 and `/readyz` 503), drain what is running up to the
 * deadline, then cut: a call answered 503 `shutting_down`, a stream ended with an error
 * event, never a clean `[DONE]`. Closing `Gateway.serve`'s layer drains before the server
 * stops.
 */
import { connect, type Socket } from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import * as Lifecycle from "../../src/gateway/lifecycle.js"
import * as Server from "../utils/httpServer.js"
import * as Harness from "./harness.js"
import * as Up from "./upstream.js"

const hi = [{ role: "user" as const, content: "hi" }]

const status = (url: string, init?: RequestInit) =>
  Effect.promise(async () => {
    const response = await fetch(url, init)
    return { status: response.status, body: await response.text(), connection: response.headers.get("connection") }
  })

const post = (url: string, body: unknown) =>
  status(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body)
  })

describe("Gateway: drain", () => {
  it.live("refuses new requests with 503 while draining and lets a running stream finish", () =>
    Effect.gen(function* () {
      // Each chunk 60 ms apart: the stream outlives the start of the drain, not its deadline.
      const upstream = yield* Server.make(async (_, res) => {
        const events = Up.streamEvents(["a", "b", "c", "d", "e", "f"]).map((e) => Server.sse([e]))
        await Server.chunked(res, events, { pauseMs: 60 })
      })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, gateway: { drainTimeout: "10 seconds" } })
      assert.strictEqual((yield* status(`${gw.url}/readyz`)).status, 200)
      const reading = yield* Effect.forkChild(
        Harness.call(async () => {
          const stream = await gw.client().chat.completions.create({ model: "d-a", messages: hi, stream: true })
          let text = ""
          for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? ""
          return text
        }),
        { startImmediately: true }
      )
      yield* upstream.awaitRequests(1)
      const draining = yield* Effect.forkChild(gw.gateway.drain, { startImmediately: true })
      yield* Harness.eventually(() => gw.gateway.isDraining())
      const ready = yield* status(`${gw.url}/readyz`)
      assert.strictEqual(ready.status, 503)
      const refused = yield* post(gw.url, { model: "d-a", messages: hi })
      assert.strictEqual(refused.status, 503)
      assert.strictEqual(refused.connection, "close")
      assert.include(refused.body, "shutting_down")
      assert.strictEqual(yield* Fiber.join(reading), "abcdef")
      yield* Fiber.join(draining)
      assert.strictEqual(gw.gateway.inFlight(), 0)
      assert.strictEqual((yield* upstream.requests).length, 1)
    })
  )

  it.live(
    "after the deadline: a running call answers 503 shutting_down, a running stream ends with an error event",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make((request, res) =>
          (request.json as { stream?: boolean }).stream === true
            ? Server.chunked(res, [Server.sse([Up.chunk("started")])], { end: "hang" })
            : Server.hang(res)
        )
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, gateway: { drainTimeout: 300 } })
        const client = gw.client()
        const call = yield* Effect.forkChild(
          Harness.failing(() => client.chat.completions.create({ model: "d-a", messages: hi })),
          { startImmediately: true }
        )
        const stream = yield* Effect.forkChild(
          Effect.promise(async () => {
            let text = ""
            try {
              const s = await client.chat.completions.create({ model: "d-a", messages: hi, stream: true })
              for await (const chunk of s) text += chunk.choices[0]?.delta?.content ?? ""
              return { text, error: undefined }
            } catch (error) {
              return { text, error: Harness.clientError(error) }
            }
          }),
          { startImmediately: true }
        )
        yield* upstream.awaitRequests(2)
        yield* Harness.eventually(() => gw.gateway.inFlight() === 2)
        yield* gw.gateway.drain
        const answered = yield* Fiber.join(call)
        assert.deepStrictEqual([answered.status, answered.code], [503, "shutting_down"])
        const streamed = yield* Fiber.join(stream)
        assert.strictEqual(streamed.text, "started")
        assert.strictEqual(streamed.error?.code, "shutting_down")
        assert.strictEqual(gw.gateway.inFlight(), 0)
        yield* upstream.awaitAborted(2)
      })
  )

  it.live(
    "closing the served layer drains before the server stops: new requests get 503, not a refused connection",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(async (_, res) => {
          const events = Up.streamEvents(["x", "y", "z"]).map((e) => Server.sse([e]))
          await Server.chunked(res, events, { pauseMs: 80 })
        })
        const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
        const reading = yield* Effect.forkChild(
          Harness.call(async () => {
            const stream = await gw.client().chat.completions.create({ model: "d-a", messages: hi, stream: true })
            let text = ""
            for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? ""
            return text
          }),
          { startImmediately: true }
        )
        yield* upstream.awaitRequests(1)
        const closing = yield* Effect.forkChild(gw.close, { startImmediately: true })
        yield* Harness.eventually(() => gw.gateway.isDraining())
        const refused = yield* post(gw.url, { model: "d-a", messages: hi })
        assert.strictEqual(refused.status, 503)
        assert.strictEqual(yield* Fiber.join(reading), "xyz")
        yield* Fiber.join(closing)
        const after = yield* Effect.promise(() =>
          fetch(`${gw.url}/healthz`).then(
            () => "answered",
            () => "refused"
          )
        )
        assert.strictEqual(after, "refused")
      })
  )
})

/** A raw connection to the gateway: what it received, and when the server closed it. */
const rawSocket = (url: string, bytes: string) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly received: () => string; readonly closed: () => boolean }>((resume) => {
      let received = ""
      let closed = false
      const socket = connect(Number(new URL(url).port), "127.0.0.1", () => {
        socket.write(bytes)
        resume(Effect.succeed({ received: () => received, closed: () => closed, socket }))
      })
      socket.setEncoding("utf8")
      socket.on("data", (chunk: string) => {
        received += chunk
      })
      socket.on("error", () => {})
      socket.on("close", () => {
        closed = true
      })
    }),
    (raw) => Effect.sync(() => (raw as unknown as { socket: Socket }).socket.destroy())
  )

describe("Gateway: shutdown is bounded", () => {
  it.live(
    "a request still sending its body is cut at the deadline, and half-sent heads or idle connections hold nothing",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, gateway: { drainTimeout: 300 } })
        const body = yield* rawSocket(
          gw.url,
          'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model":'
        )
        const head = yield* rawSocket(gw.url, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
        const idle = yield* rawSocket(gw.url, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        yield* Harness.eventually(() => gw.gateway.inFlight() === 1 && idle.received().includes('"ok"'))
        const started = Date.now()
        yield* gw.close
        const elapsed = Date.now() - started
        // drainTimeout (300 ms), then at most the cut's grace (2 s) and the connections' (1 s): 3.3 s at
        // most (~1.3 s here: the cut request leaves at once, only the half-sent head waits out the
        // connections' grace). The bound is checked with room for a loaded machine; before the fix the
        // half-sent body held the close for ~10 s.
        assert.isBelow(elapsed, 5_000)
        assert.isAtLeast(elapsed, 300)
        // The cut request's body can no longer be read: its connection is closed with it.
        yield* Harness.eventually(() => body.closed() && head.closed() && idle.closed())
        assert.strictEqual(body.received(), "")
        assert.strictEqual(head.received(), "")
        assert.lengthOf(yield* upstream.requests, 0)
      }),
    20_000
  )
})

describe("Gateway: drainDelay, /readyz turning 503 before requests are refused", () => {
  it.effect("the lifecycle: during the delay requests are still admitted, then refused, then drained (TestClock)", () =>
    Effect.gen(function* () {
      const lifecycle = yield* Lifecycle.make({ drainTimeout: Duration.seconds(10), drainDelay: Duration.seconds(5) })
      const drain = yield* Effect.forkChild(lifecycle.drain, { startImmediately: true })
      assert.isTrue(lifecycle.isDraining())
      const late = lifecycle.enter()
      assert.isDefined(late)
      yield* TestClock.adjust("4999 millis")
      assert.isDefined(lifecycle.enter())
      yield* TestClock.adjust("1 millis")
      assert.isUndefined(lifecycle.enter())
      // The requests admitted during the delay are drained as any other: the drain waits for them.
      assert.strictEqual(lifecycle.inFlight(), 2)
      lifecycle.leave(late!)
      assert.isUndefined(drain.pollUnsafe())
    })
  )

  it.effect(
    "a drain interrupted gives readiness back (not ready while admitting, nor refusing for good); the next drain starts anew (TestClock)",
    () =>
      Effect.gen(function* () {
        const lifecycle = yield* Lifecycle.make({ drainTimeout: Duration.seconds(10), drainDelay: Duration.seconds(5) })
        // Interrupted within its delay: /readyz said 503 while every request was still admitted.
        const first = yield* Effect.forkChild(lifecycle.drain, { startImmediately: true })
        yield* TestClock.adjust("1 second")
        assert.isTrue(lifecycle.isDraining())
        yield* Fiber.interrupt(first)
        assert.isFalse(lifecycle.isDraining())
        // Interrupted while it waits for a running request: it refused new ones.
        const running = lifecycle.enter()!
        const second = yield* Effect.forkChild(lifecycle.drain, { startImmediately: true })
        yield* TestClock.adjust("5 seconds")
        assert.isUndefined(lifecycle.enter())
        yield* Fiber.interrupt(second)
        assert.isFalse(lifecycle.isDraining())
        const admitted = lifecycle.enter()
        assert.isDefined(admitted)
        lifecycle.leave(admitted!)
        // A drain after it is a whole one: not ready at once, refusing after its delay, done once the request left.
        const third = yield* Effect.forkChild(lifecycle.drain, { startImmediately: true })
        assert.isTrue(lifecycle.isDraining())
        yield* TestClock.adjust("5 seconds")
        assert.isUndefined(lifecycle.enter())
        lifecycle.leave(running)
        yield* Fiber.join(third)
        assert.isTrue(lifecycle.isDraining())
      })
  )

  it.effect("without a delay (the default) requests are refused as /readyz turns", () =>
    Effect.gen(function* () {
      const lifecycle = yield* Lifecycle.make({ drainTimeout: Duration.seconds(10) })
      yield* Effect.forkChild(lifecycle.drain, { startImmediately: true })
      assert.isTrue(lifecycle.isDraining())
      assert.isUndefined(lifecycle.enter())
    })
  )

  it.effect("the gateway: /readyz is 503 while a request is still answered, then requests get 503 (TestClock)", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi(["one", "two", "three"]))
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        gateway: { drainDelay: "5 seconds", drainTimeout: "1 second" }
      })
      const draining = yield* Effect.forkChild(gw.gateway.drain, { startImmediately: true })
      yield* Harness.eventually(() => gw.gateway.isDraining())
      const ready = yield* status(`${gw.url}/readyz`)
      assert.strictEqual(ready.status, 503)
      const served = yield* post(gw.url, { model: "d-a", messages: hi })
      assert.strictEqual(served.status, 200, served.body)
      yield* TestClock.adjust("5 seconds")
      const refused = yield* post(gw.url, { model: "d-a", messages: hi })
      assert.strictEqual(refused.status, 503)
      assert.include(refused.body, "shutting_down")
      yield* Fiber.join(draining)
    })
  )
})

describe("Gateway: health", () => {
  it.live("healthz answers while the process is up; readyz says ready with the requests in flight", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const live = yield* status(`${gw.url}/healthz`)
      assert.deepStrictEqual([live.status, JSON.parse(live.body)], [200, { status: "ok" }])
      const ready = yield* status(`${gw.url}/readyz`)
      assert.deepStrictEqual([ready.status, JSON.parse(ready.body)], [200, { status: "ready", inFlight: 0 }])
    })
  )
})
