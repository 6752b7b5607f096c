import { getEventListeners } from "node:events"
import { Readable } from "node:stream"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it as live, layer, type Vitest } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Option, References, Scheduler, Scope, Stream } from "effect"
import { HttpBody, HttpClient, HttpClientError, HttpClientRequest, HttpClientResponse } from "effect/http"
import type * as Undici from "undici"
import * as UndiciHttpClient from "../src/UndiciHttpClient.js"
import * as Server from "./utils/httpServer.js"

const reasonOf = (exit: Exit.Exit<unknown, unknown>): string | undefined => {
  if (Exit.isSuccess(exit)) return undefined
  const error = exit.cause.reasons.find((r) => r._tag === "Fail")
  return error !== undefined && HttpClientError.isHttpClientError(error.error) ? error.error.reason._tag : "other"
}

const bytes = (n: number, fill = 97): Uint8Array => new Uint8Array(n).fill(fill)

/** `n` bytes that are not all alike, so a lost or moved chunk shows. */
const pattern = (n: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 7 + (i >> 12)) & 255)

/** The Dispatcher of an undici `Agent` of these options, counting the requests dispatched to it. */
const countingDispatcher = (options?: Undici.Agent.Options) =>
  Effect.map(NodeHttpClient.makeDispatcherOptions(options), (agent) => {
    const counted = { dispatched: 0, dispatcher: agent }
    counted.dispatcher = new Proxy(agent, {
      get: (target, key) =>
        key === "dispatch"
          ? (opts: Undici.Dispatcher.DispatchOptions, handler: Undici.Dispatcher.DispatchHandler) => {
              counted.dispatched++
              return target.dispatch(opts, handler)
            }
          : Reflect.get(target, key)
    })
    return counted
  })

/**
 * Every test (and every live one below) runs twice: traced (effect's default), where a request goes through
 * `HttpClient.make`, and untraced, where one under `HttpClient.withScope` takes the client's
 * scoped path (what the providers send: they turn effect/http's span off).
 */
const tests = (it: Vitest.MethodsNonLive<HttpClient.HttpClient>) => {
  it.effect("sends the method, path, query, headers and body; reads the status, headers and body", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((req, res) => {
        res.setHeader("set-cookie", ["a=1; Path=/", "b=2; Path=/"])
        Server.json(res, 201, { echo: req.json, query: req.search.get("q"), auth: req.headers["x-test"] })
      })
      const client = yield* HttpClient.HttpClient
      const response = yield* client.execute(
        HttpClientRequest.post(`${server.url}/v1/things`, { urlParams: { q: "é 1" } }).pipe(
          HttpClientRequest.setHeader("x-test", "yes"),
          HttpClientRequest.bodyJsonUnsafe({ hello: "wörld" })
        )
      )
      assert.strictEqual(response.status, 201)
      assert.strictEqual(response.headers["content-type"], "application/json")
      assert.deepStrictEqual(yield* response.json, { echo: { hello: "wörld" }, query: "é 1", auth: "yes" })
      // A body is read once and kept: every reader gets it.
      assert.deepStrictEqual(JSON.parse(yield* response.text), { echo: { hello: "wörld" }, query: "é 1", auth: "yes" })
      assert.deepStrictEqual(
        [...Object.keys(response.cookies.cookies)].sort(),
        ["a", "b"],
        "both set-cookie headers are read"
      )
      const [recorded] = yield* server.requests
      assert.strictEqual(recorded!.method, "POST")
      assert.strictEqual(recorded!.path, "/v1/things")
    })
  )

  it.effect("sends bytes, a string, a stream and form data as bodies", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((req, res) =>
        Server.json(res, 200, { body: req.body, type: req.headers["content-type"] ?? null })
      )
      const client = yield* HttpClient.HttpClient
      const send = (body: HttpBody.HttpBody) =>
        Effect.flatMap(
          client.execute(HttpClientRequest.post(server.url).pipe(HttpClientRequest.setBody(body))),
          (response) => response.json
        ) as Effect.Effect<{ body: string; type: string | null }, HttpClientError.HttpClientError>
      assert.strictEqual((yield* send(HttpBody.uint8Array(new TextEncoder().encode("bytés")))).body, "bytés")
      assert.strictEqual((yield* send(HttpBody.text("a string", "text/plain"))).body, "a string")
      const streamed = yield* send(
        HttpBody.stream(Stream.make("one ", "two ", "three").pipe(Stream.encodeText), "text/plain")
      )
      assert.strictEqual(streamed.body, "one two three")
      const form = new FormData()
      form.append("field", "valué")
      const sent = yield* send(HttpBody.formData(form))
      assert.match(sent.type ?? "", /^multipart\/form-data; boundary=/)
      assert.include(sent.body, 'name="field"')
      assert.include(sent.body, "valué")
    })
  )

  it.effect("streams a large body in order, reading it at the reader's pace", () =>
    Effect.gen(function* () {
      const parts = Array.from({ length: 64 }, (_, i) => bytes(16 * 1024, 65 + (i % 26)))
      const server = yield* Server.make((_, res) => Server.chunked(res, parts))
      const client = yield* HttpClient.HttpClient
      const response = yield* client.get(server.url)
      let total = 0
      let inOrder = true
      let expected = 0
      yield* Stream.runForEach(response.stream, (chunk) =>
        Effect.sync(() => {
          for (const byte of chunk) {
            // Each 16 KiB part is one letter, the next part the next one.
            if (byte !== 65 + (Math.floor(expected / (16 * 1024)) % 26)) inOrder = false
            expected++
          }
          total += chunk.byteLength
        })
      )
      assert.strictEqual(total, 64 * 16 * 1024)
      assert.isTrue(inOrder)
    })
  )

  it.effect("a reader that stops early closes the connection instead of reading the rest", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) => Server.endless(res))
      const client = yield* HttpClient.HttpClient
      const response = yield* client.get(server.url)
      const first = yield* Stream.runCollect(Stream.take(response.stream, 1))
      assert.lengthOf(first, 1)
      yield* server.awaitAborted(1)
    })
  )

  it.effect("an unreachable server is a TransportError", () =>
    Effect.gen(function* () {
      const port = yield* Effect.scoped(Effect.map(Server.make(Server.hang), (server) => server.port))
      const client = yield* HttpClient.HttpClient
      const exit = yield* Effect.exit(client.get(`http://127.0.0.1:${port}/`))
      assert.strictEqual(reasonOf(exit), "TransportError")
    })
  )

  it.effect("a body cut by the server fails the reader with a DecodeError, text and stream alike", () =>
    Effect.gen(function* () {
      const server = yield* Server.make((_, res) => Server.chunked(res, [bytes(100)], { end: "destroy" }))
      const client = yield* HttpClient.HttpClient
      const text = yield* Effect.exit(Effect.flatMap(client.get(server.url), (response) => response.text))
      assert.strictEqual(reasonOf(text), "DecodeError")
      const streamed = yield* Effect.exit(
        Effect.flatMap(client.get(server.url), (response) => Stream.runDrain(response.stream))
      )
      assert.strictEqual(reasonOf(streamed), "DecodeError")
    })
  )

  it.effect("a request asking for an upgrade is refused, saying so", () =>
    Effect.gen(function* () {
      const client = yield* HttpClient.HttpClient
      const exit = yield* Effect.exit(
        client.execute(HttpClientRequest.upgrade(HttpClientRequest.get("http://127.0.0.1:9/"), "websocket"))
      )
      assert.strictEqual(reasonOf(exit), "TransportError")
      assert.include(String(Exit.isFailure(exit) ? exit.cause : ""), "does not upgrade")
    })
  )
}

const liveTests = (name: string, untraced: boolean) =>
  describe(name, () => {
    const it = {
      live: (title: string, self: Parameters<typeof live.live>[1]) =>
        live.live(
          title,
          untraced ? (context) => Effect.provideService(self(context), References.TracerEnabled, false) : self
        )
    }

    it.live("interrupting a request waiting for its answer closes the connection", () =>
      Effect.gen(function* () {
        const server = yield* Server.make(Server.hang)
        const client = yield* HttpClient.HttpClient
        const fiber = yield* Effect.forkChild(client.get(server.url))
        yield* server.awaitRequests(1)
        yield* Fiber.interrupt(fiber)
        yield* server.awaitAborted(1).pipe(Effect.timeout("5 seconds"))
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("interrupting a reader waiting for the body closes the connection", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.chunked(res, [bytes(10)], { end: "hang" }))
        const client = yield* HttpClient.HttpClient
        const response = yield* client.get(server.url)
        const fiber = yield* Effect.forkChild(response.text)
        yield* Effect.sleep("20 millis")
        yield* Fiber.interrupt(fiber)
        yield* server.awaitAborted(1).pipe(Effect.timeout("5 seconds"))
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("a body nobody reads pauses the socket: the server cannot push more than the buffers hold", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.endless(res))
        const client = yield* HttpClient.HttpClient
        const response = yield* client.get(server.url)
        yield* Effect.sleep("300 millis")
        // Unpaused, the client would take the endless body as fast as loopback carries it (GBs a second).
        const sent = yield* server.bytesSent
        // Paused, ~4 MB (the socket buffers of both ends) was measured here.
        assert.isBelow(sent, 16 * 1024 * 1024)
        const first = yield* Stream.runCollect(Stream.take(response.stream, 1))
        assert.lengthOf(first, 1)
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("with HttpClient.withScope, closing the scope gives an unread body up", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.chunked(res, [bytes(10)], { end: "hang" }))
        const client = HttpClient.withScope(yield* HttpClient.HttpClient)
        const scope = yield* Scope.make()
        const response = yield* client.get(server.url).pipe(Scope.provide(scope))
        assert.strictEqual(response.status, 200)
        yield* Scope.close(scope, Exit.void)
        yield* server.awaitAborted(1).pipe(Effect.timeout("5 seconds"))
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("a body read after it ended is the whole body, after the socket went back to the pool", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, { ok: true }))
        const client = yield* HttpClient.HttpClient
        const response = yield* client.get(server.url)
        yield* Effect.sleep("20 millis")
        assert.deepStrictEqual(yield* response.json, { ok: true })
        // The connection is reused for the next request.
        assert.deepStrictEqual(yield* Effect.flatMap(client.get(server.url), (r) => r.json), { ok: true })
        assert.strictEqual(yield* server.aborted, 0)
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("undici options from NodeHttpClient.UndiciOptions apply to each request", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, {}))
        const client = yield* HttpClient.HttpClient
        yield* client.get(server.url)
        yield* client.get(server.url).pipe(Effect.provideService(NodeHttpClient.UndiciOptions, { reset: true }))
        const [plain, reset] = yield* server.requests
        assert.notStrictEqual(plain!.headers.connection, "close")
        assert.strictEqual(reset!.headers.connection, "close")
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("headersTimeout and bodyTimeout given in NodeHttpClient.UndiciOptions bound the request", () =>
      Effect.gen(function* () {
        const stalled = yield* Server.make((_, res) => Server.chunked(res, [bytes(10)], { end: "hang" }))
        const silent = yield* Server.make(Server.hang)
        const client = yield* HttpClient.HttpClient
        const body = yield* Effect.exit(
          Effect.flatMap(client.get(stalled.url), (response) => response.text).pipe(
            Effect.provideService(NodeHttpClient.UndiciOptions, { bodyTimeout: 100 }),
            Effect.timeout("3 seconds")
          )
        )
        assert.strictEqual(reasonOf(body), "DecodeError", String(body))
        const head = yield* Effect.exit(
          client
            .get(silent.url)
            .pipe(
              Effect.provideService(NodeHttpClient.UndiciOptions, { headersTimeout: 100 }),
              Effect.timeout("3 seconds")
            )
        )
        assert.strictEqual(reasonOf(head), "TransportError", String(head))
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("layerNoDispatcher uses the Dispatcher given", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, { ok: 1 }))
        const client = yield* HttpClient.HttpClient
        const response = yield* client.get(server.url)
        assert.deepStrictEqual(yield* HttpClientResponse.filterStatusOk(response).pipe(Effect.flatMap((r) => r.json)), {
          ok: 1
        })
      }).pipe(
        Effect.provide(
          UndiciHttpClient.layerNoDispatcher.pipe(
            Layer.provide(NodeHttpClient.layerDispatcherOptions({ connections: 1 }))
          )
        )
      )
    )

    it.live("a body read whole after it paused the socket is every byte of it, neither cut nor stuck", () =>
      Effect.gen(function* () {
        const client = yield* HttpClient.HttpClient
        for (const size of [150 * 1024, 300 * 1024, 1024 * 1024]) {
          const body = pattern(size)
          const server = yield* Server.make((_, res) => {
            res.writeHead(200, { "content-length": String(size) })
            res.end(body)
          })
          const response = yield* client.get(server.url)
          // Unread, 64 KiB of it pause the socket with the rest buffered: taking them resumes the
          // socket, and the buffered rest (up to the end) arrives before the reader looks again.
          yield* Effect.sleep("50 millis")
          const read = yield* response.arrayBuffer.pipe(Effect.timeout("2 seconds"))
          assert.strictEqual(read.byteLength, size, `a body of ${size} bytes`)
          assert.isTrue(Buffer.from(read).equals(body), `the bytes of a body of ${size} bytes`)
        }
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("a body whose last bytes come while its reader's fiber has yielded to the scheduler is still read", () =>
      Effect.gen(function* () {
        // The reader looks for chunks, then waits: a fiber that yielded between the two (every
        // `maxOpsBeforeYield` instructions; here every one) let undici deliver the end meanwhile,
        // which woke nobody, and the read hung (~25% of these reads).
        let n = 0
        const server = yield* Server.make((_, res) => {
          const i = n++
          res.writeHead(200, { "content-type": "text/plain" })
          res.write("a")
          setTimeout(() => {
            res.write("b")
            setImmediate(() => res.end("c"))
          }, i % 3)
        })
        const client = yield* HttpClient.HttpClient
        const read = (text: boolean) =>
          Effect.scoped(
            Effect.flatMap(client.get(server.url), (response) =>
              text ? response.text : Stream.mkString(Stream.decodeText(response.stream))
            )
          ).pipe(Effect.timeoutOption("1 second"), Effect.provideService(Scheduler.MaxOpsBeforeYield, 1))
        for (const text of [true, false]) {
          const answers = yield* Effect.forEach(Array.from({ length: 100 }), () => read(text))
          const hung = answers.filter(Option.isNone).length
          assert.strictEqual(hung, 0, `${hung} of 100 reads (${text ? "text" : "stream"}) hung`)
          assert.isTrue(answers.every((a) => Option.getOrUndefined(a) === "abc"))
        }
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("a request whose scope already closed fails at once, without being dispatched", () =>
      Effect.gen(function* () {
        // A connect that never completes: a request dispatched would wait for it.
        const counted = yield* countingDispatcher({ connect: () => undefined })
        const client = HttpClient.withScope(
          yield* UndiciHttpClient.make.pipe(Effect.provideService(NodeHttpClient.Dispatcher, counted.dispatcher))
        )
        const scope = yield* Scope.make()
        yield* Scope.close(scope, Exit.void)
        const exit = yield* Effect.exit(
          client.get("http://127.0.0.1:9/").pipe(Scope.provide(scope), Effect.timeout("2 seconds"))
        )
        assert.strictEqual(reasonOf(exit), "TransportError")
        assert.strictEqual(counted.dispatched, 0)
      })
    )

    it.live("a request given up while it waits for a connection leaves that connection to the next one", () =>
      Effect.gen(function* () {
        const server = yield* Server.make(async (req, res) => {
          if (req.path === "/slow") await Server.pause(100)
          Server.text(res, 200, req.path)
        })
        const client = yield* HttpClient.HttpClient
        const slow = yield* Effect.forkChild(Effect.flatMap(client.get(`${server.url}/slow`), (r) => r.text))
        yield* server.awaitRequests(1)
        // One connection, busy: this one waits in undici's queue, then is interrupted.
        const queued = yield* Effect.forkChild(client.get(`${server.url}/queued`))
        yield* Effect.sleep("20 millis")
        yield* Fiber.interrupt(queued)
        assert.strictEqual(yield* Fiber.join(slow), "/slow")
        assert.strictEqual(yield* Effect.flatMap(client.get(`${server.url}/next`), (r) => r.text), "/next")
        assert.deepStrictEqual(
          (yield* server.requests).map((r) => r.path),
          ["/slow", "/next"]
        )
        assert.strictEqual(yield* server.connections, 1, "the connection was kept")
      }).pipe(
        Effect.provide(
          UndiciHttpClient.layerNoDispatcher.pipe(
            Layer.provide(NodeHttpClient.layerDispatcherOptions({ connections: 1 }))
          )
        )
      )
    )

    it.live(
      "a request whose scope closes while it waits for a connection fails then, as effect's client does, and leaves the connection to the next",
      () =>
        Effect.gen(function* () {
          // The one connection stays busy until the test lets its answer go.
          let release: () => void = () => undefined
          const held = new Promise<void>((resolve) => {
            release = resolve
          })
          const server = yield* Server.make(async (req, res) => {
            if (req.path === "/held") await held
            Server.text(res, 200, req.path)
          })
          const pool = yield* HttpClient.HttpClient
          const first = yield* Effect.forkChild(Effect.flatMap(pool.get(`${server.url}/held`), (r) => r.text))
          yield* server.awaitRequests(1)
          // Closed from outside (a scope handed to the request), its fiber not interrupted: it waited
          // in undici's queue until the connection freed, however long that took.
          const scope = yield* Scope.make()
          const queued = yield* Effect.forkChild(
            HttpClient.withScope(pool).get(`${server.url}/queued`).pipe(Scope.provide(scope))
          )
          yield* Effect.sleep("20 millis")
          yield* Scope.close(scope, Exit.void)
          const exit = yield* Fiber.await(queued).pipe(Effect.timeoutOption("5 seconds"))
          release()
          assert.isTrue(Option.isSome(exit), "the request waited for the connection to free")
          assert.strictEqual(reasonOf(exit.pipe(Option.getOrThrow)), "TransportError")
          assert.strictEqual(yield* Fiber.join(first), "/held")
          assert.strictEqual(yield* Effect.flatMap(pool.get(`${server.url}/next`), (r) => r.text), "/next")
          assert.deepStrictEqual(
            (yield* server.requests).map((r) => r.path),
            ["/held", "/next"]
          )
          assert.strictEqual(yield* server.connections, 1, "the connection was kept")
        }).pipe(
          Effect.provide(
            UndiciHttpClient.layerNoDispatcher.pipe(
              Layer.provide(NodeHttpClient.layerDispatcherOptions({ connections: 1 }))
            )
          )
        )
    )

    it.live("a body read as a stream is not then read whole: the read fails instead of giving the rest", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.chunked(res, ["hel", "lo"]))
        const client = yield* HttpClient.HttpClient
        const whole = yield* client.get(server.url)
        assert.deepStrictEqual(yield* Stream.runCollect(Stream.decodeText(whole.stream)), ["hel", "lo"])
        assert.strictEqual(reasonOf(yield* Effect.exit(whole.text)), "DecodeError")
        const part = yield* client.get(server.url)
        yield* Effect.sleep("50 millis")
        assert.deepStrictEqual(yield* Stream.runCollect(Stream.take(Stream.decodeText(part.stream), 1)), ["hel"])
        assert.strictEqual(reasonOf(yield* Effect.exit(part.text)), "DecodeError")
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("a body read whole is what a stream of it reads later; a body streamed once is not streamed again", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.chunked(res, ["hel", "lo"]))
        const client = yield* HttpClient.HttpClient
        const read = yield* client.get(server.url)
        assert.strictEqual(yield* read.text, "hello")
        // A middleware that logs the text, then a caller that streams it: not an empty body.
        assert.strictEqual(yield* Stream.mkString(Stream.decodeText(read.stream)), "hello")
        // Read whole while a stream of it waits: both get every byte.
        const racing = yield* client.get(server.url)
        const [text, streamed] = yield* Effect.all([racing.text, Stream.mkString(Stream.decodeText(racing.stream))], {
          concurrency: 2
        })
        assert.deepStrictEqual([text, streamed], ["hello", "hello"])
        const twice = yield* client.get(server.url)
        assert.strictEqual(yield* Stream.mkString(Stream.decodeText(twice.stream)), "hello")
        assert.strictEqual(reasonOf(yield* Effect.exit(Stream.runDrain(twice.stream))), "DecodeError")
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("a request's abort listener is removed once its answer ended or failed", () =>
      Effect.gen(function* () {
        const signals: Array<AbortSignal> = []
        yield* Effect.acquireRelease(
          Effect.sync(() => {
            const add = EventTarget.prototype.addEventListener
            AbortSignal.prototype.addEventListener = function (this: AbortSignal, ...args: Parameters<typeof add>) {
              signals.push(this)
              return add.apply(this, args)
            }
          }),
          () => Effect.sync(() => delete (AbortSignal.prototype as { addEventListener?: unknown }).addEventListener)
        )
        const server = yield* Server.make((req, res) =>
          req.path === "/cut" ? Server.chunked(res, [bytes(10)], { end: "destroy" }) : Server.json(res, 200, { ok: 1 })
        )
        const client = HttpClient.withScope(yield* HttpClient.HttpClient)
        const scope = yield* Scope.make()
        assert.deepStrictEqual(
          yield* Effect.flatMap(client.get(server.url), (r) => r.json).pipe(Scope.provide(scope)),
          {
            ok: 1
          }
        )
        yield* Effect.exit(Effect.flatMap(client.get(`${server.url}/cut`), (r) => r.text).pipe(Scope.provide(scope)))
        // The scoped path listens to no signal: its scope's finalizer gives the request up.
        if (untraced) assert.lengthOf(signals, 0)
        else assert.isAtLeast(signals.length, 2)
        for (const signal of signals) assert.lengthOf(getEventListeners(signal, "abort"), 0)
        yield* Scope.close(scope, Exit.void)
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("followRedirects releases each discarded redirect's connection before the next hop", () =>
      Effect.gen(function* () {
        // Each redirect's body never ends: held, its connection (the pool's only one) would keep
        // the next hop waiting for a connection forever.
        const server = yield* Server.make((req, res) => {
          const n = Number(req.path.slice(2))
          if (n === 0) return Server.text(res, 200, "done")
          return Server.chunked(res, [bytes(10)], { status: 302, headers: { location: `/r${n - 1}` }, end: "hang" })
        })
        const client = yield* UndiciHttpClient.make.pipe(
          Effect.provideServiceEffect(
            NodeHttpClient.Dispatcher,
            NodeHttpClient.makeDispatcherOptions({ connections: 1 })
          )
        )
        const following = HttpClient.followRedirects(HttpClient.withScope(client), 10)
        const text = yield* Effect.flatMap(following.get(`${server.url}/r5`), (r) => r.text).pipe(
          Effect.timeout("5 seconds")
        )
        assert.strictEqual(text, "done")
        assert.deepStrictEqual(
          (yield* server.requests).map((r) => r.path),
          ["/r5", "/r4", "/r3", "/r2", "/r1", "/r0"]
        )
        // Every discarded answer was given up as the next hop went out, not when the scope closes.
        assert.strictEqual(yield* server.aborted, 5)
      })
    )

    it.live("a redirect's answer not followed is the caller's to read whole, however large its body", () =>
      Effect.gen(function* () {
        const body = pattern(300 * 1024)
        const server = yield* Server.make((_, res) =>
          Server.chunked(res, [body], { status: 302, headers: { location: "/" } })
        )
        const client = HttpClient.withScope(yield* HttpClient.HttpClient)
        const response = yield* client.get(server.url)
        assert.strictEqual(response.status, 302)
        const read = yield* response.arrayBuffer.pipe(Effect.timeout("5 seconds"))
        assert.isTrue(Buffer.from(read).equals(body))
        assert.strictEqual(yield* server.aborted, 0)
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("followRedirects stops at its limit with the last redirect's answer", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) => {
          const n = Number(req.path.slice(2))
          if (n === 0) return Server.text(res, 200, "done")
          return Server.text(res, 302, `to ${n - 1}`, { location: `/r${n - 1}` })
        })
        const client = HttpClient.followRedirects(HttpClient.withScope(yield* HttpClient.HttpClient), 2)
        const response = yield* client.get(`${server.url}/r5`)
        assert.strictEqual(response.status, 302)
        assert.strictEqual(response.headers.location, "/r2")
        assert.strictEqual(yield* response.text, "to 2")
        assert.lengthOf(yield* server.requests, 3)
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("followRedirects keeps Authorization within an origin and drops it (and Cookie) across origins", () =>
      Effect.gen(function* () {
        const other = yield* Server.make((_, res) => Server.text(res, 200, "other"))
        const server = yield* Server.make((req, res) =>
          req.path === "/same"
            ? Server.text(res, 302, "", { location: `${other.url}/cross` })
            : Server.text(res, 302, "", { location: "/same" })
        )
        const client = HttpClient.followRedirects(HttpClient.withScope(yield* HttpClient.HttpClient))
        const response = yield* client.execute(
          HttpClientRequest.get(`${server.url}/start`).pipe(
            HttpClientRequest.bearerToken("secret"),
            HttpClientRequest.setHeader("cookie", "session=1"),
            HttpClientRequest.setHeader("x-kept", "yes")
          )
        )
        assert.strictEqual(yield* response.text, "other")
        const [start, same] = yield* server.requests
        assert.strictEqual(start!.headers.authorization, "Bearer secret")
        assert.strictEqual(same!.headers.authorization, "Bearer secret", "same origin")
        assert.strictEqual(same!.headers.cookie, "session=1")
        const [cross] = yield* other.requests
        assert.strictEqual(cross!.path, "/cross")
        assert.isUndefined(cross!.headers.authorization, "another origin")
        assert.isUndefined(cross!.headers.cookie)
        assert.strictEqual(cross!.headers["x-kept"], "yes")
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("a request body stream that fails mid-way fails the request with a TransportError carrying its error", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.text(res, 200, "read"))
        const client = HttpClient.withScope(yield* HttpClient.HttpClient)
        const failure = new Error("the body's source broke")
        const body = HttpBody.stream(
          Stream.concat(Stream.make(new TextEncoder().encode("part one")), Stream.fail(failure)),
          "text/plain"
        )
        const exit = yield* Effect.exit(
          client
            .execute(HttpClientRequest.post(server.url).pipe(HttpClientRequest.setBody(body)))
            .pipe(Effect.timeout("5 seconds"))
        )
        assert.strictEqual(reasonOf(exit), "TransportError", String(exit))
        assert.include(String(Exit.isFailure(exit) ? exit.cause : ""), "the body's source broke")
        // The server never got a whole request to answer.
        assert.lengthOf(yield* server.requests, 0)
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("a header value with a line break is refused, not sent as a second header", () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.text(res, 200, "ok"))
        const client = HttpClient.withScope(yield* HttpClient.HttpClient)
        for (const value of ["a\r\nx-injected: 1", "a\nx-injected: 1", "a\rx-injected: 1"]) {
          const exit = yield* Effect.exit(
            client.execute(HttpClientRequest.get(server.url).pipe(HttpClientRequest.setHeader("x-test", value)))
          )
          assert.strictEqual(reasonOf(exit), "TransportError", JSON.stringify(value))
        }
        const exit = yield* Effect.exit(
          client.execute(HttpClientRequest.get(server.url).pipe(HttpClientRequest.setHeader("x bad", "1")))
        )
        assert.strictEqual(reasonOf(exit), "TransportError", "a header name with a space")
        assert.lengthOf(yield* server.requests, 0)
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )

    it.live("a request given up while it waits for a connection releases its body stream at once", () =>
      Effect.gen(function* () {
        let open!: () => void
        const gate = new Promise<void>((resolve) => {
          open = resolve
        })
        const server = yield* Server.make(async (req, res) => {
          if (req.path === "/busy") await gate
          Server.text(res, 200, req.path)
        })
        const counted = yield* countingDispatcher({ connections: 1 })
        const client = HttpClient.withScope(
          yield* UndiciHttpClient.make.pipe(Effect.provideService(NodeHttpClient.Dispatcher, counted.dispatcher))
        )
        const busy = yield* Effect.forkChild(
          Effect.scoped(Effect.flatMap(client.get(`${server.url}/busy`), (r) => r.text))
        )
        yield* server.awaitRequests(1)
        const state = { destroyed: false }
        const body = new Readable({
          read() {
            this.push("x")
            this.push(null)
          },
          destroy(error, callback) {
            state.destroyed = true
            callback(error)
          }
        })
        const queued = yield* Effect.forkChild(
          Effect.scoped(
            client.execute(
              HttpClientRequest.post(`${server.url}/queued`).pipe(HttpClientRequest.setBody(HttpBody.raw(body)))
            )
          )
        )
        while (counted.dispatched < 2) yield* Effect.yieldNow
        yield* Fiber.interrupt(queued)
        // The connection stays busy (a long stream's would be for minutes): the body is not kept for it.
        assert.isTrue(state.destroyed, "released as the request was given up")
        open()
        assert.strictEqual(yield* Fiber.join(busy), "/busy")
        assert.strictEqual(
          yield* Effect.scoped(Effect.flatMap(client.get(`${server.url}/next`), (r) => r.text)),
          "/next"
        )
        assert.deepStrictEqual(
          (yield* server.requests).map((r) => r.path),
          ["/busy", "/next"]
        )
      })
    )

    it.live("a request body stream is released when its request fails before it was sent", () =>
      Effect.gen(function* () {
        /** A Node stream body, as a file's would be, that tells whether it was released. */
        const readable = () => {
          const state = { destroyed: false }
          const body = new Readable({
            read() {
              this.push("x")
            },
            destroy(error, callback) {
              state.destroyed = true
              callback(error)
            }
          })
          return { state, body: HttpBody.raw(body) }
        }
        /** An Effect stream body that never ends, telling whether it started and was finalized. */
        const endless = () => {
          const state = { started: false, finalized: false }
          const body = HttpBody.stream(
            Stream.fromEffect(Effect.sync(() => (state.started = true))).pipe(
              Stream.flatMap(() => Stream.never),
              Stream.ensuring(Effect.sync(() => (state.finalized = true)))
            )
          )
          return { state, body }
        }
        const send = <R>(
          client: HttpClient.HttpClient.With<HttpClientError.HttpClientError, R>,
          url: string,
          body: HttpBody.HttpBody
        ) => client.execute(HttpClientRequest.post(url).pipe(HttpClientRequest.setBody(body)))

        const refusing = yield* Effect.scoped(Effect.map(Server.make(Server.hang), (server) => server.url))
        const refused = readable()
        assert.strictEqual(
          reasonOf(yield* Effect.exit(send(yield* HttpClient.HttpClient, refusing, refused.body))),
          "TransportError"
        )
        assert.isTrue(refused.state.destroyed, "a connection refused")

        const scope = yield* Scope.make()
        yield* Scope.close(scope, Exit.void)
        const closed = readable()
        const scoped = HttpClient.withScope(yield* HttpClient.HttpClient)
        assert.strictEqual(
          reasonOf(yield* Effect.exit(send(scoped, refusing, closed.body).pipe(Scope.provide(scope)))),
          "TransportError"
        )
        assert.isTrue(closed.state.destroyed, "a scope already closed")

        const server = yield* Server.make(async (req, res) => {
          if (req.path === "/slow") await Server.pause(100)
          Server.text(res, 200, req.path)
        })
        const pool = yield* UndiciHttpClient.make.pipe(
          Effect.provideServiceEffect(
            NodeHttpClient.Dispatcher,
            NodeHttpClient.makeDispatcherOptions({ connections: 1 })
          )
        )
        const slow = yield* Effect.forkChild(Effect.flatMap(pool.get(`${server.url}/slow`), (r) => r.text))
        yield* server.awaitRequests(1)
        const queued = endless()
        const fiber = yield* Effect.forkChild(send(pool, `${server.url}/queued`, queued.body))
        yield* Effect.sleep("20 millis")
        yield* Fiber.interrupt(fiber)
        yield* Fiber.join(slow)
        yield* Effect.sleep("50 millis")
        assert.isTrue(!queued.state.started || queued.state.finalized, "given up while it waited for a connection")
      }).pipe(Effect.provide(UndiciHttpClient.layer))
    )
  })

const untraced = Layer.succeed(References.TracerEnabled, false)
layer(UndiciHttpClient.layer)("UndiciHttpClient", tests)
layer(Layer.merge(UndiciHttpClient.layer, untraced))("UndiciHttpClient, untraced (the scoped path)", tests)
liveTests("UndiciHttpClient (live)", false)
liveTests("UndiciHttpClient (live), untraced (the scoped path)", true)

describe("UndiciHttpClient's scoped path", () => {
  live.live(
    "an untraced request under withScope makes no AbortController: its scope's finalizer gives it up; a traced one goes through HttpClient.make",
    () =>
      Effect.gen(function* () {
        const server = yield* Server.make((_, res) => Server.json(res, 200, { ok: 1 }))
        let made = 0
        yield* Effect.acquireRelease(
          Effect.sync(() => {
            const Base = globalThis.AbortController
            globalThis.AbortController = class extends Base {
              constructor() {
                super()
                made++
              }
            }
            return Base
          }),
          (Base) =>
            Effect.sync(() => {
              globalThis.AbortController = Base
            })
        )
        const client = HttpClient.withScope(yield* HttpClient.HttpClient)
        const get = Effect.scoped(Effect.flatMap(client.get(server.url), (response) => response.json))
        for (let i = 0; i < 5; i++) {
          assert.deepStrictEqual(yield* get.pipe(Effect.provideService(References.TracerEnabled, false)), { ok: 1 })
        }
        // effect's HttpClient.make aborts each request's controller as its scope closes: a
        // DOMException with its stack a request, kept through young collections.
        assert.strictEqual(made, 0, "no AbortController on the scoped path")
        for (let i = 0; i < 5; i++) assert.deepStrictEqual(yield* get, { ok: 1 })
        assert.strictEqual(made, 5, "traced: one a request, through HttpClient.make")
        // A query string (whose parameters effect redacts in errors) goes through HttpClient.make too.
        yield* Effect.scoped(client.get(`${server.url}?key=1`)).pipe(
          Effect.provideService(References.TracerEnabled, false)
        )
        assert.strictEqual(made, 6)
      }).pipe(Effect.provide(UndiciHttpClient.layer))
  )

  live.live(
    "each request goes where its own URL says, across more URLs than the path keeps parsed, and one that does not parse fails as effect's does",
    () =>
      Effect.gen(function* () {
        const server = yield* Server.make((req, res) => Server.json(res, 200, { path: req.path }))
        const client = HttpClient.withScope(yield* HttpClient.HttpClient)
        const get = (url: string) =>
          Effect.scoped(Effect.flatMap(client.get(url), (response) => response.json)).pipe(
            Effect.provideService(References.TracerEnabled, false)
          )
        // 600 distinct URLs (the path keeps 256 parsed), each asked twice: once parsed, once from what it kept.
        for (let round = 0; round < 2; round++) {
          for (let i = 0; i < 600; i++) assert.deepStrictEqual(yield* get(`${server.url}/p/${i}`), { path: `/p/${i}` })
        }
        // An origin's answer comes from that origin: the same path on another server is not the first's.
        const other = yield* Server.make((_, res) => Server.json(res, 200, { other: true }))
        assert.deepStrictEqual(yield* get(`${other.url}/p/1`), { other: true })
        assert.deepStrictEqual(yield* get(`${server.url}/p/1`), { path: "/p/1" })
        // The answer's URL is the request's, without a fragment.
        const response = yield* Effect.scoped(client.get(`${server.url}/p/x`)).pipe(
          Effect.provideService(References.TracerEnabled, false)
        )
        assert.strictEqual(response.request.url, `${server.url}/p/x`)
        for (let i = 0; i < 2; i++) {
          const exit = yield* Effect.exit(get("http://[not-a-host/x"))
          assert.strictEqual(reasonOf(exit), "InvalidUrlError")
        }
      }).pipe(Effect.provide(UndiciHttpClient.layer))
  )
})
