/**
 * Requests Node's HTTP server refuses on its own, before any route sees them (a request too
 * slow, a head too large, bytes that are not HTTP, an `Expect` it cannot meet): answered as
 * every other refusal of the gateway, an OpenAI-shaped JSON body with the right status and
 * `Connection: close`, and counted in the gateway's metrics. Where the official client cannot
 * send the case, a raw socket on 127.0.0.1 does.
 */
import { connect } from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Server from "../utils/httpServer.js"
import * as Harness from "./harness.js"
import * as Up from "./upstream.js"

interface Answer {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  readonly body: string
  readonly json: { readonly error: Record<string, unknown> } | undefined
  /** Whether an interim `100 Continue` came first. */
  readonly continued: boolean
}

/**
 * Writes `parts` to a fresh loopback connection (`pause` ms apart), then reads until the server
 * closes it: the answer's status, headers (lower-cased) and body.
 */
const raw = (url: string, parts: ReadonlyArray<string>, pause = 0) =>
  Effect.callback<Answer>((resume) => {
    const socket = connect(Number(new URL(url).port), "127.0.0.1")
    const chunks: Array<Buffer> = []
    socket.on("data", (data: Buffer) => void chunks.push(data))
    socket.on("error", () => {})
    socket.on("close", () => {
      const all = Buffer.concat(chunks).toString("utf8")
      const continued = all.startsWith("HTTP/1.1 100 Continue\r\n\r\n")
      const text = continued ? all.slice(25) : all
      const end = text.indexOf("\r\n\r\n")
      const [statusLine = "", ...lines] = text.slice(0, end).split("\r\n")
      const headers: Record<string, string> = {}
      for (const line of lines) {
        const colon = line.indexOf(":")
        headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
      }
      const body = text.slice(end + 4)
      let json: Answer["json"]
      try {
        json = JSON.parse(body)
      } catch {
        json = undefined
      }
      resume(Effect.succeed({ status: Number(statusLine.split(" ")[1]), headers, body, json, continued }))
    })
    let i = 0
    const next = () => {
      if (i >= parts.length || socket.destroyed) return
      socket.write(parts[i++]!)
      if (pause === 0) next()
      else setTimeout(next, pause)
    }
    socket.on("connect", next)
    return Effect.sync(() => socket.destroy())
  })

const seen: Array<string> = []

const assertShaped = (answer: Answer, status: number, type: string, code: string) => {
  assert.strictEqual(answer.status, status, answer.body)
  assert.strictEqual(answer.headers["connection"], "close")
  // Named as every other answer of the gateway is, and each its own.
  assert.match(answer.headers["x-request-id"] ?? "", /^req_[0-9a-z]+$/)
  assert.notInclude(seen, answer.headers["x-request-id"])
  seen.push(answer.headers["x-request-id"]!)
  assert.match(answer.headers["content-type"] ?? "", /^application\/json/)
  assert.strictEqual(Number(answer.headers["content-length"]), Buffer.byteLength(answer.body))
  assert.isDefined(answer.json, `not JSON: ${answer.body}`)
  const error = answer.json!.error
  assert.strictEqual(error["type"], type)
  assert.strictEqual(error["code"], code)
  assert.strictEqual(error["param"], null)
  assert.isString(error["message"])
  return String(error["message"])
}

const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"

describe("Gateway: what Node's server answers on its own", () => {
  // Node's request deadline is real time on its own timers (checked every connectionsCheckingInterval):
  // TestClock cannot drive it, so the gateway is given a deadline of 300 ms.
  it.live(
    "a request that does not arrive within requestTimeout is a 408 naming the timeout, its head or its body late",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const gw = yield* Harness.make({ upstreams: { a: upstream.url }, gateway: { requestTimeout: "300 millis" } })
        const headLate = yield* raw(gw.url, [head])
        const message = assertShaped(headLate, 408, "invalid_request_error", "client_timeout")
        assert.include(message, "300 ms")
        const bodyLate = yield* raw(gw.url, [`${head}Content-Length: 100\r\n\r\n{"model":`])
        assertShaped(bodyLate, 408, "invalid_request_error", "client_timeout")
        assert.lengthOf(yield* upstream.requests, 0)
        // Once each: the one whose body was late had reached its route, which counts it as a client that left.
        const metrics = yield* gw.metrics
        assert.include(metrics, 'orchestra_gateway_requests_total{route="other",status="408"} 1')
        assert.include(metrics, 'orchestra_gateway_requests_total{route="chat",status="499"} 1')
        assert.include(metrics, 'orchestra_gateway_errors_total{reason="InvalidRequest"} 1')
      }),
    10_000
  )

  it.live("a head over maxHeaderBytes is a 431 naming the limit, as the official client sees it", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, gateway: { maxHeaderBytes: 2048 } })
      const error = yield* Harness.failing(() =>
        gw
          .client()
          .chat.completions.create(
            { model: "d-a", messages: [{ role: "user", content: "hi" }] },
            { headers: { "x-large": "a".repeat(4096) } }
          )
      )
      assert.strictEqual(error.status, 431)
      assert.strictEqual(error.type, "invalid_request_error")
      assert.strictEqual(error.code, "headers_too_large")
      assert.include(error.message, "2048 bytes")
      assert.strictEqual(error.headers?.get("connection"), "close")
      assert.match(error.headers?.get("x-request-id") ?? "", /^req_/)
      assert.lengthOf(yield* upstream.requests, 0)
      const answer = yield* raw(gw.url, [`${head}x-large: ${"b".repeat(4096)}\r\n\r\n`])
      assertShaped(answer, 431, "invalid_request_error", "headers_too_large")
      const metrics = yield* gw.metrics
      assert.include(metrics, 'orchestra_gateway_requests_total{route="other",status="431"} 2')
      assert.include(metrics, 'orchestra_gateway_errors_total{reason="TooLarge"} 2')
    })
  )

  it.live("bytes that are not HTTP are a 400 saying what the parser refused, never echoing the bytes", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const garbage = yield* raw(gw.url, ["NOT HTTP sk-secret-in-garbage\r\n\r\n"])
      const message = assertShaped(garbage, 400, "invalid_request_error", "invalid_http")
      assert.notInclude(garbage.body, "sk-secret-in-garbage")
      assert.match(message, /HPE_/)
      const badLength = yield* raw(gw.url, [`${head}Content-Length: nope\r\n\r\n`])
      assertShaped(badLength, 400, "invalid_request_error", "invalid_http")
      const metrics = yield* gw.metrics
      assert.include(metrics, 'orchestra_gateway_requests_total{route="other",status="400"} 2')
      assert.include(metrics, 'orchestra_gateway_errors_total{reason="InvalidRequest"} 2')
    })
  )

  it.live("an HTTP/1.1 request without Host is a 400 naming the header, counted; HTTP/1.0 needs none", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi(["ok"]))
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const body = JSON.stringify({ model: "d-a", messages: [{ role: "user", content: "hi" }] })
      const noHost = `POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n`
      const answer = yield* raw(gw.url, [`${noHost}\r\n${body}`])
      const message = assertShaped(answer, 400, "invalid_request_error", "missing_host_header")
      assert.include(message, "Host header")
      // With Expect: 100-continue, Node would ask for the body first: refused the same, never continued.
      const expecting = yield* raw(gw.url, [`${noHost}Expect: 100-continue\r\n\r\n`])
      assert.isFalse(expecting.continued)
      assertShaped(expecting, 400, "invalid_request_error", "missing_host_header")
      assert.lengthOf(yield* upstream.requests, 0)
      const old = yield* raw(gw.url, [`GET /v1/models HTTP/1.0\r\n\r\n`])
      assert.notStrictEqual(old.status, 400, old.body)
      const metrics = yield* gw.metrics
      assert.include(metrics, 'orchestra_gateway_requests_total{route="other",status="400"} 2')
      assert.include(metrics, 'orchestra_gateway_errors_total{reason="InvalidRequest"} 2')
    })
  )

  it.live("chunk extensions over Node's limit are a 413, as a body too large is", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const answer = yield* raw(gw.url, [`${head}Transfer-Encoding: chunked\r\n\r\n1;${"x".repeat(20_000)}\r\n`])
      assertShaped(answer, 413, "invalid_request_error", "request_too_large")
      assert.lengthOf(yield* upstream.requests, 0)
    })
  )

  it.live(
    "an Expect other than 100-continue is a 417, and the connection closes after it",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
        const body = JSON.stringify({ model: "d-a", messages: [{ role: "user", content: "hi" }] })
        const answer = yield* raw(gw.url, [
          `${head}Expect: something-else\r\nContent-Length: ${body.length}\r\n\r\n${body}`
        ])
        assertShaped(answer, 417, "invalid_request_error", "expectation_failed")
        assert.lengthOf(yield* upstream.requests, 0)
        const metrics = yield* gw.metrics
        assert.include(metrics, 'orchestra_gateway_requests_total{route="other",status="417"} 1')
      }),
    // Node's own 417 keeps the connection open: without ours, the read above waits for the test's end.
    10_000
  )

  it.live("a CONNECT (as to a proxy) is a 405, not a connection dropped without a word", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const answer = yield* raw(gw.url, ["CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n"])
      const message = assertShaped(answer, 405, "invalid_request_error", "method_not_allowed")
      assert.include(message, "CONNECT")
      assert.lengthOf(yield* upstream.requests, 0)
      const metrics = yield* gw.metrics
      assert.include(metrics, 'orchestra_gateway_requests_total{route="other",status="405"} 1')
      assert.include(metrics, 'orchestra_gateway_errors_total{reason="MethodNotAllowed"} 1')
    })
  )

  it.live("Expect: 100-continue is still honoured: the body is asked for and the request answered", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi(["ok"]))
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const body = JSON.stringify({ model: "d-a", messages: [{ role: "user", content: "hi" }] })
      const answer = yield* raw(
        gw.url,
        [`${head}Expect: 100-continue\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n`, body],
        100
      )
      assert.isTrue(answer.continued)
      assert.strictEqual(answer.status, 200, answer.body)
      assert.strictEqual(JSON.parse(answer.body).choices[0].message.content, "ok")
    })
  )

  it.live(
    "Expect: 100-continue refused before the body is asked for: no key, a wrong key, or a declared length over maxBodyBytes is answered without 100 Continue",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi(["ok"]))
        const { service } = Harness.keyStore({ "sk-good": { id: "a" } })
        const gw = yield* Harness.make({
          upstreams: { a: upstream.url },
          keys: service,
          gateway: { maxBodyBytes: 4096 }
        })
        const body = JSON.stringify({ model: "d-a", messages: [{ role: "user", content: "hi" }] })
        // The client waits for 100 Continue (or the final answer) before it sends the body: here, never.
        const expecting = (auth: string, length: number) =>
          raw(gw.url, [`${head}${auth}Expect: 100-continue\r\nContent-Length: ${length}\r\n\r\n`])
        for (const [auth, length, status] of [
          ["", body.length, 401],
          ["Authorization: Basic c2stZ29vZA==\r\n", body.length, 401],
          ["Authorization: Bearer sk-wrong\r\n", body.length, 401],
          ["Authorization: Bearer sk-good\r\n", 100_000, 413]
        ] as const) {
          const answer = yield* expecting(auth, length)
          assert.isFalse(answer.continued, `${auth}${length}`)
          assert.strictEqual(answer.status, status, answer.body)
          // Its body never read: the connection is not kept for a next request that would start inside it.
          assert.strictEqual(answer.headers.connection, "close")
        }
        const served = yield* raw(
          gw.url,
          [
            `${head}Authorization: Bearer sk-good\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n`,
            body
          ],
          100
        )
        assert.isTrue(served.continued)
        assert.strictEqual(served.status, 200, served.body)
      })
  )

  it.live("a client that resets its connection mid-head is dropped unanswered, and the gateway goes on serving", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      yield* Effect.callback<void>((resume) => {
        const socket = connect(Number(new URL(gw.url).port), "127.0.0.1", () => {
          socket.write(head)
          setTimeout(() => socket.resetAndDestroy(), 20)
        })
        socket.on("error", () => {})
        socket.on("close", () => resume(Effect.void))
      })
      const answer = yield* Harness.call(() =>
        gw.client().chat.completions.create({ model: "d-a", messages: [{ role: "user", content: "hi" }] })
      )
      assert.isString(answer.choices[0]?.message.content)
      // Nobody to answer: nothing was written, so nothing is counted as refused.
      assert.notInclude(yield* gw.metrics, 'route="other"')
    })
  )
})
