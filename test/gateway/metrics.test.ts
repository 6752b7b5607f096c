/**
 * What the gateway tells: `/metrics` in the Prometheus text format (its own series and the
 * pipeline's: fallbacks, retries, cache, breakers), the overhead histogram that excludes
 * upstream waits, spans with `gen_ai.*` attributes when a tracer is provided, and no
 * secret anywhere.
 */
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Metric, Redacted, type Tracer } from "effect"
import * as Gauges from "../../src/gateway/keys/gauges.js"
import * as Prometheus from "../../src/Prometheus.js"
import { GatewayMetrics } from "../../src/gateway/metrics.js"
import * as Server from "../utils/httpServer.js"
import * as Harness from "./harness.js"
import * as Up from "./upstream.js"
import { recording } from "../utils/tracer.js"

const hi = [{ role: "user" as const, content: "hi" }]

setFlagsFromString("--expose-gc")
const gc = runInNewContext("gc") as () => void

/** The value of a series line `name{labels} value` in Prometheus text. */
const seriesValue = (text: string, series: string): number | undefined => {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

describe("Gateway: /metrics", () => {
  it.live("serves the gateway's series and the pipeline's (fallbacks, retries, cache hits, breaker state)", () =>
    Effect.gen(function* () {
      let calls = 0
      const flaky = yield* Server.make((_, res) => {
        calls++
        return calls === 1
          ? Server.json(res, 503, { error: { message: "busy" } })
          : Server.json(res, 200, Up.completion("ok"))
      })
      const down = yield* Server.make((_, res) => Server.json(res, 503, { error: { message: "down" } }))
      const { service } = Harness.keyStore({ "sk-m": { id: "m" } })
      const gw = yield* Harness.make({
        upstreams: { a: flaky.url, b: down.url },
        domains: [
          { name: "retrying", provider: "a", retry: { maxAttempts: 2, initialDelay: 1, jitter: 0 } },
          { name: "main", provider: "b", fallback: ["retrying"] }
        ],
        cache: { ttl: "1 minute" },
        keys: service
      })
      const client = gw.client("sk-m")
      yield* Harness.call(() => client.chat.completions.create({ model: "retrying", messages: hi }))
      yield* Harness.call(() => client.chat.completions.create({ model: "retrying", messages: hi }))
      yield* Harness.call(() =>
        client.chat.completions.create({ model: "main", messages: [{ role: "user", content: "other" }] })
      )
      yield* Harness.failing(() => client.chat.completions.create({ model: "nope", messages: hi }))
      const text = yield* Effect.promise(() => fetch(`${gw.url}/metrics`).then((r) => r.text()))
      assert.strictEqual(seriesValue(text, 'orchestra_gateway_requests_total{route="chat",status="200"}'), 3)
      assert.strictEqual(seriesValue(text, 'orchestra_gateway_requests_total{route="chat",status="404"}'), 1)
      assert.strictEqual(seriesValue(text, 'orchestra_gateway_errors_total{reason="NotFound"}'), 1)
      assert.strictEqual(seriesValue(text, 'orchestra_gateway_request_duration_ms_count{route="chat"}'), 4)
      assert.strictEqual(seriesValue(text, 'orchestra_gateway_overhead_ms_count{route="chat"}'), 4)
      assert.strictEqual(seriesValue(text, "orchestra_gateway_in_flight"), 0)
      assert.strictEqual(seriesValue(text, 'orchestra_gateway_tokens_total{type="input"}'), 33)
      assert.strictEqual(seriesValue(text, 'orchestra_gateway_tokens_total{type="output"}'), 21)
      assert.strictEqual(seriesValue(text, 'orchestra_retries_total{provider="a",domain="retrying"}'), 1)
      assert.strictEqual(seriesValue(text, 'orchestra_fallbacks_total{provider="a",domain="retrying"}'), 1)
      assert.strictEqual(seriesValue(text, 'orchestra_cache_lookups_total{cache="memory",outcome="hit"}'), 1)
      assert.isDefined(seriesValue(text, 'orchestra_breaker_state{breaker="a"}'))
      assert.notInclude(text, "sk-m")
      assert.notInclude(text, Harness.UPSTREAM_KEY)
    })
  )

  it.live("the overhead histogram leaves out the time spent waiting on the upstream", () =>
    Effect.gen(function* () {
      // The upstream answers after at least 50 ms: that much of each request is not the gateway's.
      const slow = yield* Server.make(async (_, res) => {
        await Server.pause(50)
        Server.json(res, 200, Up.completion("ok"))
      })
      const gw = yield* Harness.make({ upstreams: { a: slow.url } })
      for (let i = 0; i < 3; i++) {
        yield* Harness.call(() => gw.client().chat.completions.create({ model: "d-a", messages: hi }))
      }
      const text = yield* gw.metrics
      const total = seriesValue(text, 'orchestra_gateway_request_duration_ms_sum{route="chat"}')!
      const overhead = seriesValue(text, 'orchestra_gateway_overhead_ms_sum{route="chat"}')!
      assert.isAtLeast(overhead, 0)
      assert.isAtLeast(total - overhead, 3 * 45)
    })
  )

  it.live("a stream's overhead leaves out its wait for the upstream's first part", () =>
    Effect.gen(function* () {
      // The upstream's first byte comes at least 50 ms after the request: not the gateway's share.
      const slow = yield* Server.make(async (_, res) => {
        await Server.pause(50)
        Server.chunked(res, [Server.sse(Up.streamEvents(["a", "b"]))], { pauseMs: 0 })
      })
      const gw = yield* Harness.make({ upstreams: { a: slow.url } })
      for (let i = 0; i < 3; i++) {
        yield* Harness.call(async () => {
          const stream = await gw.client().chat.completions.create({ model: "d-a", messages: hi, stream: true })
          for await (const _ of stream) {
          }
        })
      }
      const text = yield* gw.metrics
      const total = seriesValue(text, 'orchestra_gateway_request_duration_ms_sum{route="chat_stream"}')!
      const overhead = seriesValue(text, 'orchestra_gateway_overhead_ms_sum{route="chat_stream"}')!
      assert.isAtLeast(overhead, 0)
      assert.isAtLeast(total - overhead, 3 * 45)
    })
  )

  it.live("a hedged call's upstream time is the time some upstream call ran, not the sum of its racing calls", () =>
    Effect.gen(function* () {
      // The primary answers after 400 ms; its backup, started 50 ms in, after 100 ms: ~150 ms upstream,
      // of which 100 ms with two calls running. Counted twice, the gateway's share came out negative (0).
      const primary = yield* Server.make(async (_, res) => {
        await Server.pause(400)
        Server.json(res, 200, Up.completion("primary"))
      })
      const backup = yield* Server.make(async (_, res) => {
        await Server.pause(100)
        Server.json(res, 200, Up.completion("backup"))
      })
      const gw = yield* Harness.make({
        upstreams: { a: primary.url, b: backup.url },
        domains: [
          { name: "hedged", provider: "a", fallback: ["spare"], hedgeAfter: 50 },
          { name: "spare", provider: "b" }
        ]
      })
      const answer = yield* Harness.call(() => gw.client().chat.completions.create({ model: "hedged", messages: hi }))
      assert.strictEqual(answer.choices[0]!.message.content, "backup")
      const text = yield* gw.metrics
      const total = seriesValue(text, 'orchestra_gateway_request_duration_ms_sum{route="chat"}')!
      const overhead = seriesValue(text, 'orchestra_gateway_overhead_ms_sum{route="chat"}')!
      assert.strictEqual(seriesValue(text, 'orchestra_hedges_total{provider="b",domain="spare",outcome="won"}'), 1)
      // The gateway's own work (reading the body, the key, writing the answer) is more than nothing.
      assert.isAbove(overhead, 0)
      assert.isAtLeast(total - overhead, 140)
    })
  )

  it.live("an answer without usage is counted in the token series by estimate, and their HELP says so", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make((_, res) => {
        const { usage: _usage, ...answer } = Up.completion("twelve chars")
        return Server.json(res, 200, answer)
      })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      yield* Harness.call(() => gw.client().chat.completions.create({ model: "d-a", messages: hi }))
      const text = yield* gw.metrics
      // No provider reported these: 12 characters at 4 a token.
      assert.strictEqual(seriesValue(text, 'orchestra_gateway_tokens_total{type="output"}'), 3)
      assert.strictEqual(seriesValue(text, 'orchestra_output_tokens_total{provider="a",domain="d-a"}'), 3)
      for (const name of ["orchestra_gateway_tokens_total", "orchestra_output_tokens_total"]) {
        const help = text.split("\n").find((line) => line.startsWith(`# HELP ${name} `))
        assert.include(help, "estimated where a provider reports none", name)
      }
    })
  )

  it.live("counts a stream's time to first token and its gateway share up to its first byte", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi(["a", "b"]))
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      yield* Harness.call(async () => {
        const stream = await gw.client().chat.completions.create({ model: "d-a", messages: hi, stream: true })
        for await (const _ of stream) {
        }
      })
      const text = yield* gw.metrics
      assert.strictEqual(seriesValue(text, "orchestra_gateway_time_to_first_token_ms_count"), 1)
      assert.strictEqual(seriesValue(text, 'orchestra_gateway_overhead_ms_count{route="chat_stream"}'), 1)
      assert.strictEqual(seriesValue(text, 'orchestra_gateway_requests_total{route="chat_stream",status="200"}'), 1)
      assert.strictEqual(seriesValue(text, 'orchestra_time_to_first_token_ms_count{provider="a",domain="d-a"}'), 1)
    })
  )
  it.live("a client that leaves before its answer is counted as 499 ClientClosed, streamed or not", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Server.hang)
      const gw = yield* Harness.make({ upstreams: { a: upstream.url } })
      const series = (text: string, name: string) => seriesValue(text, name) ?? 0
      for (const [n, stream] of [
        [1, false],
        [2, true]
      ] as const) {
        const controller = new AbortController()
        yield* Effect.forkChild(
          Harness.call(() =>
            gw.client().chat.completions.create({ model: "d-a", messages: hi, stream }, { signal: controller.signal })
          ),
          { startImmediately: true }
        )
        yield* upstream.awaitRequests(n)
        controller.abort()
        yield* upstream.awaitAborted(n)
        yield* Harness.eventually(() => gw.gateway.inFlight() === 0)
        const text = yield* gw.metrics
        assert.strictEqual(series(text, 'orchestra_gateway_requests_total{route="chat",status="499"}'), n, `${n}`)
        assert.strictEqual(series(text, 'orchestra_gateway_errors_total{reason="ClientClosed"}'), n, `${n}`)
      }
    })
  )
})

const METRICS_TOKEN = "mt-4b7e0c9a2d5f8136-SECRET"

interface Scraped {
  readonly status: number
  readonly headers: Headers
  readonly text: string
}

const get = (url: string, authorization?: string): Effect.Effect<Scraped> =>
  Effect.promise(async () => {
    const response = await fetch(url, { headers: authorization === undefined ? {} : { authorization } })
    return { status: response.status, headers: response.headers, text: await response.text() }
  })

describe("Gateway: metricsBuckets", () => {
  it.live('"coarse" serves 21 bounds of each latency histogram, with the counts "all" has there', () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const { service } = Harness.keyStore({ "sk-buckets": { id: "b" } })
      const gateways = {
        all: yield* Harness.make({ upstreams: { a: upstream.url }, keys: service }),
        coarse: yield* Harness.make({
          upstreams: { a: upstream.url },
          keys: service,
          gateway: { metricsBuckets: "coarse" }
        })
      }
      const counts: Record<string, number> = {}
      for (const [name, gw] of Object.entries(gateways)) {
        yield* Harness.call(() => gw.client("sk-buckets").chat.completions.create({ model: "d-a", messages: hi }))
        const text = yield* Effect.promise(() => fetch(`${gw.url}/metrics`).then((r) => r.text()))
        const lines = text
          .split("\n")
          .filter((l) => l.startsWith('orchestra_gateway_request_duration_ms_bucket{route="chat",'))
        counts[name] = lines.length
        assert.match(lines.at(-1)!, /le="\+Inf"\} 1$/, name)
      }
      assert.deepStrictEqual(counts, { all: 176, coarse: 22 })
    })
  )
})

describe("Gateway: /metrics behind metricsToken", () => {
  it.live(
    "without the token, or with a wrong one, /metrics is a 401 with the gateway's error body and WWW-Authenticate",
    () =>
      Effect.gen(function* () {
        const upstream = yield* Server.make(Up.openAi())
        const { service } = Harness.keyStore({ "sk-metrics-client-1": { id: "client" } })
        const logs: Array<string> = []
        const gw = yield* Harness.make({
          upstreams: { a: upstream.url },
          keys: service,
          gateway: { metricsToken: Redacted.make(METRICS_TOKEN), logRequests: true },
          logs
        })
        const metrics = `${gw.url}/metrics`
        const refusal = {
          error: {
            message: "This route needs the metrics token: 'Authorization: Bearer <metrics token>'",
            type: "authentication_error",
            param: null,
            code: "invalid_metrics_token"
          }
        }
        const missing = yield* get(metrics)
        assert.strictEqual(missing.status, 401)
        assert.deepStrictEqual(JSON.parse(missing.text), refusal)
        assert.strictEqual(missing.headers.get("content-type"), "application/json")
        // RFC 6750: no error code for a request that sent no credentials.
        assert.strictEqual(missing.headers.get("www-authenticate"), 'Bearer realm="metrics"')
        const wrongs = [
          `Bearer ${METRICS_TOKEN}x`,
          `Bearer ${METRICS_TOKEN.slice(0, -1)}`,
          `Bearer ${METRICS_TOKEN.toLowerCase()}`,
          // A client's API key is not the metrics token.
          "Bearer sk-metrics-client-1",
          `Basic ${METRICS_TOKEN}`,
          METRICS_TOKEN,
          "Bearer"
        ]
        const answers: Array<Scraped> = [missing]
        for (const authorization of wrongs) {
          const wrong = yield* get(metrics, authorization)
          answers.push(wrong)
          assert.strictEqual(wrong.status, 401, authorization)
          assert.deepStrictEqual(JSON.parse(wrong.text), refusal, authorization)
          assert.strictEqual(wrong.headers.get("www-authenticate"), 'Bearer realm="metrics", error="invalid_token"')
        }
        // The liveness and readiness checks stay open: load balancers call them without credentials.
        assert.strictEqual((yield* get(`${gw.url}/healthz`)).status, 200)
        assert.strictEqual((yield* get(`${gw.url}/readyz`)).status, 200)
        // The API is the key store's, untouched.
        const models = yield* Harness.call(() => gw.client("sk-metrics-client-1").models.list())
        assert.isAbove(models.data.length, 0)

        const ok = yield* get(metrics, `Bearer ${METRICS_TOKEN}`)
        answers.push(ok)
        assert.strictEqual(ok.status, 200)
        assert.strictEqual(ok.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8")
        assert.isNull(ok.headers.get("www-authenticate"))
        // The refused scrapes are counted like every other answer.
        assert.strictEqual(seriesValue(ok.text, 'orchestra_gateway_requests_total{route="metrics",status="401"}'), 8)
        assert.strictEqual(seriesValue(ok.text, 'orchestra_gateway_errors_total{reason="Unauthorized"}'), 8)
        // The scheme is case-insensitive (RFC 7235), as for API keys.
        const lower = yield* get(metrics, `bearer ${METRICS_TOKEN}`)
        answers.push(lower)
        assert.strictEqual(lower.status, 200)
        assert.strictEqual(seriesValue(lower.text, 'orchestra_gateway_requests_total{route="metrics",status="200"}'), 1)

        for (const answer of answers) {
          assert.notInclude(answer.text, METRICS_TOKEN)
          for (const [name, value] of answer.headers) assert.notInclude(value, METRICS_TOKEN, name)
        }
        // The server logged every request (logRequests), and never the token.
        assert.isAtLeast(logs.filter((line) => line.includes("/metrics")).length, 10)
        for (const line of logs) assert.notInclude(line, METRICS_TOKEN)
      })
  )

  it.live("without metricsToken, /metrics stays open to every client, as before", () =>
    Effect.gen(function* () {
      const upstream = yield* Server.make(Up.openAi())
      const { service } = Harness.keyStore({ "sk-metrics-client-2": { id: "client" } })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service })
      for (const authorization of [undefined, "Bearer anything-at-all", "Basic Zm9vOmJhcg=="]) {
        const answer = yield* get(`${gw.url}/metrics`, authorization)
        assert.strictEqual(answer.status, 200, authorization)
        assert.isNull(answer.headers.get("www-authenticate"))
        assert.include(answer.text, "orchestra_gateway_in_flight")
      }
    })
  )
})

describe("Gateway: traces", () => {
  it.live("a provided tracer gets a span per call with gen_ai.* attributes, and no key in any span", () =>
    Effect.gen(function* () {
      const { spans, tracer } = recording()
      const upstream = yield* Server.make(Up.openAi(["traced"]))
      const { service } = Harness.keyStore({ "sk-traced-key-55": { id: "kid" } })
      const gw = yield* Harness.make({ upstreams: { a: upstream.url }, keys: service, tracer })
      yield* Harness.call(() =>
        gw.client("sk-traced-key-55").chat.completions.create({ model: "d-a", messages: hi, max_tokens: 12 })
      )
      yield* Harness.eventually(() => spans.some((s) => s.name === "chat d-a" && s.status._tag === "Ended"))
      const chat = spans.find((s) => s.name === "chat d-a")!
      assert.strictEqual(chat.attributes.get("gen_ai.operation.name"), "chat")
      assert.strictEqual(chat.attributes.get("gen_ai.request.model"), "d-a")
      assert.strictEqual(chat.attributes.get("gen_ai.request.max_tokens"), 12)
      assert.strictEqual(chat.attributes.get("orchestra.key.id"), "kid")
      assert.strictEqual(chat.attributes.get("gen_ai.response.model"), "upstream-model")
      assert.strictEqual(chat.attributes.get("gen_ai.provider.name"), "a")
      assert.strictEqual(chat.attributes.get("gen_ai.usage.input_tokens"), 11)
      assert.strictEqual(chat.attributes.get("gen_ai.usage.output_tokens"), 7)
      const dump = JSON.stringify(
        spans.map((s) => ({ name: s.name, attributes: Object.fromEntries(s.attributes) })),
        (_, v) => (typeof v === "bigint" ? String(v) : v)
      )
      assert.notInclude(dump, "sk-traced-key-55")
      assert.notInclude(dump, Harness.UPSTREAM_KEY)
    })
  )

  it.live("gen_ai.request.max_tokens is the cap sent upstream: a budget's reserved output, or the domain's own", () =>
    Effect.gen(function* () {
      const { spans, tracer } = recording()
      const upstream = yield* Server.make(Up.openAi(["capped"]))
      // A key of gateway/keys: its budgets make the gateway cap what it sends.
      const budgeted = { id: "budgeted", budgets: { key: { tokens: 10_000 } } }
      const { service } = Harness.keyStore({ "sk-budgeted-span-1": budgeted, "sk-free-span-1": { id: "free" } })
      const gw = yield* Harness.make({
        upstreams: { a: upstream.url },
        domains: [
          { name: "d-a", provider: "a" },
          { name: "short", provider: "a", maxTokens: 30 }
        ],
        keys: service,
        tracer,
        gateway: { defaultMaxTokens: 100 }
      })
      const maxTokensOf = (key: string, model: string) =>
        Effect.gen(function* () {
          spans.length = 0
          yield* Harness.call(() => gw.client(key).chat.completions.create({ model, messages: hi }))
          yield* Harness.eventually(() => spans.some((s) => s.name === `chat ${model}` && s.status._tag === "Ended"))
          const sent = (yield* upstream.requests).at(-1)!.json as { readonly max_tokens?: number }
          const span = spans.find((s) => s.name === `chat ${model}`)!
          return [span.attributes.get("gen_ai.request.max_tokens"), sent.max_tokens]
        })
      assert.deepStrictEqual(yield* maxTokensOf("sk-budgeted-span-1", "d-a"), [100, 100])
      assert.deepStrictEqual(yield* maxTokensOf("sk-budgeted-span-1", "short"), [30, 30])
      assert.deepStrictEqual(yield* maxTokensOf("sk-free-span-1", "short"), [30, 30])
      assert.deepStrictEqual(yield* maxTokensOf("sk-free-span-1", "d-a"), [undefined, undefined])
    })
  )

  it.live("a stream's span covers the stream and has the chat's attributes; a failed request's span is an error", () =>
    Effect.gen(function* () {
      const { spans, tracer } = recording()
      // Each event 40 ms after the last: the stream takes ~240 ms after its first event.
      const slow = yield* Server.make((request, response) =>
        (request.json as { readonly stream?: boolean }).stream === true
          ? Server.chunked(
              response,
              [...Up.streamEvents(["a", "b", "c"])].map((e) => Server.sse([e])),
              {
                pauseMs: 40
              }
            )
          : Server.json(response, 200, Up.completion("ok"))
      )
      const down = yield* Server.make((_, res) => Server.json(res, 503, { error: { message: "down" } }))
      const gw = yield* Harness.make({ upstreams: { a: slow.url, b: down.url }, tracer })
      const client = gw.client()
      const chunks = yield* Harness.call(async () => {
        const stream = await client.chat.completions.create({
          model: "d-a",
          messages: hi,
          stream: true,
          stream_options: { include_usage: true }
        })
        let n = 0
        for await (const _ of stream) n++
        return n
      })
      assert.isAbove(chunks, 3)
      yield* Harness.failing(() => client.chat.completions.create({ model: "d-b", messages: hi }))
      yield* Harness.failing(() => client.chat.completions.create({ model: "d-b", messages: hi, stream: true }))
      yield* Harness.failing(() => client.embeddings.create({ model: "d-b", input: ["x"] }))
      yield* Harness.eventually(
        () => spans.filter((s) => s.name.endsWith(" d-b") && s.status._tag === "Ended").length === 3
      )
      const [streamed, failed, failedStream] = spans.filter((s) => s.name.startsWith("chat "))
      const ended = (span: Tracer.NativeSpan) => {
        assert(span.status._tag === "Ended")
        return span.status
      }

      assert.strictEqual(streamed!.name, "chat d-a")
      const streamEnd = ended(streamed!)
      assert.isTrue(Exit.isSuccess(streamEnd.exit))
      assert.isAtLeast(Number(streamEnd.endTime - streamEnd.startTime) / 1e6, 150)
      assert.strictEqual(streamed!.attributes.get("gen_ai.operation.name"), "chat")
      assert.strictEqual(streamed!.attributes.get("gen_ai.provider.name"), "a")
      assert.strictEqual(streamed!.attributes.get("gen_ai.response.model"), "upstream-model")
      assert.deepStrictEqual(streamed!.attributes.get("gen_ai.response.finish_reasons"), ["stop"])
      assert.strictEqual(streamed!.attributes.get("gen_ai.usage.input_tokens"), 9)
      assert.strictEqual(streamed!.attributes.get("gen_ai.usage.output_tokens"), 4)

      const failedEmbed = spans.find((s) => s.name === "embeddings d-b")!
      for (const span of [failed!, failedStream!, failedEmbed]) {
        assert.isTrue(Exit.isFailure(ended(span).exit))
        assert.strictEqual(span.attributes.get("error.type"), "Unavailable")
        assert.isUndefined(span.attributes.get("gen_ai.response.model"))
      }
    })
  )
})

describe("Gateway: series after their layer closed", () => {
  it("a request answered, or a budget level read, once the series were removed registers nothing to leave behind", () => {
    const registry: Metric.MetricRegistry = new Map()
    const context = Context.make(Metric.MetricRegistry, registry) as Context.Context<never>
    const metrics = new GatewayMetrics(context)
    metrics.answered("chat", 200, 5, 1)
    const gauges = Gauges.make(context, () => 0)
    const counter = {
      scope: "key",
      scopeId: "k",
      model: undefined,
      unit: "tokens",
      limit: 100,
      periodMs: undefined,
      window: undefined,
      name: "key:k:tokens",
      base: "key:k:tokens"
    } as const
    gauges.set("k", counter, { spent: 1, held: 0 })
    assert.isAbove(registry.size, 0)
    metrics.remove()
    gauges.remove()
    assert.strictEqual(registry.size, 0)
    // A request refused by the drain (a status not seen before), an error, a settle that came late.
    metrics.answered("chat", 503, 1, 1)
    metrics.answered("embeddings", 200, 1, 1)
    metrics.failed("ShuttingDown")
    gauges.set("late", { ...counter, scopeId: "late" }, { spent: 1, held: 0 })
    assert.deepStrictEqual(
      [...registry.values()].map((m) => `${m.id} ${JSON.stringify(m.attributes)}`),
      []
    )
  })
})

describe("Gateway: two gateways in one registry", () => {
  it("each one's requests, errors, tokens, latencies and in-flight add up in one series; one closing leaves the other's", () => {
    const registry: Metric.MetricRegistry = new Map()
    const context = Context.make(Metric.MetricRegistry, registry) as Context.Context<never>
    const a = new GatewayMetrics(context)
    const b = new GatewayMetrics(context)
    a.answered("chat", 200, 5, 1)
    b.answered("chat", 200, 7, 2)
    b.answered("chat", 200, 9, 3)
    a.failed("NotFound")
    b.failed("NotFound")
    a.tokens(10, 1)
    b.tokens(20, 2)
    a.inFlight = 1
    b.inFlight = 2
    const figures = () => {
      const text = Prometheus.formatUnsafe(context)
      return [
        'orchestra_gateway_requests_total{route="chat",status="200"}',
        'orchestra_gateway_errors_total{reason="NotFound"}',
        'orchestra_gateway_tokens_total{type="input"}',
        'orchestra_gateway_request_duration_ms_count{route="chat"}',
        'orchestra_gateway_request_duration_ms_sum{route="chat"}',
        'orchestra_gateway_overhead_ms_count{route="chat"}',
        "orchestra_gateway_in_flight"
      ].map((series) => seriesValue(text, series))
    }
    // Both gateways' figures, not the last built's alone.
    assert.deepStrictEqual(figures(), [3, 2, 30, 3, 21, 3, 3])
    b.remove()
    // The counters keep what the closed one counted (a counter never goes back); in flight is now's only.
    assert.deepStrictEqual(figures(), [3, 2, 30, 3, 21, 3, 1])
    a.answered("chat", 200, 1, 1)
    assert.deepStrictEqual(figures(), [4, 2, 30, 4, 22, 4, 1])
    a.remove()
    assert.strictEqual(registry.size, 0)
  })
})

describe("Gateway: a closed gateway's series", () => {
  it("do not keep its layer's context alive while another gateway of the registry reads them", async () => {
    const registry: Metric.MetricRegistry = new Map()
    class Heavy extends Context.Service<Heavy, { readonly bytes: Uint8Array }>()("test/Heavy") {}
    let first: GatewayMetrics | undefined
    // The first gateway's context (its router, executor, server in an application), made in a frame of its own.
    const closed = (() => {
      const heavy = { bytes: new Uint8Array(1024) }
      const context = Context.make(Metric.MetricRegistry, registry).pipe(
        Context.add(Heavy, heavy)
      ) as Context.Context<never>
      first = new GatewayMetrics(context)
      first.answered("chat", 200, 5, 1)
      first.failed("NotFound")
      return new WeakRef(heavy)
    })()
    // A second gateway joins the first's series, which outlive the first.
    const other = new GatewayMetrics(Context.make(Metric.MetricRegistry, registry) as Context.Context<never>)
    other.answered("chat", 200, 5, 1)
    first!.remove()
    first = undefined
    // Collected between turns: a WeakRef read keeps its target until the turn ends.
    for (let i = 0; i < 5; i++) {
      await new Promise((resolve) => setImmediate(resolve))
      gc()
    }
    await new Promise((resolve) => setImmediate(resolve))
    assert.isUndefined(closed.deref(), "the closed gateway's context is still reachable from the registry")
    assert.strictEqual(
      seriesValue(
        Prometheus.formatUnsafe(Context.make(Metric.MetricRegistry, registry) as Context.Context<never>),
        'orchestra_gateway_requests_total{route="chat",status="200"}'
      ),
      2
    )
    other.remove()
  })
})

describe("Gateway: two key stores in one registry", () => {
  const counter = {
    scope: "key",
    scopeId: "shared",
    model: undefined,
    unit: "tokens",
    limit: 100,
    periodMs: undefined,
    window: undefined,
    name: "key:shared:tokens",
    base: "key:shared:tokens"
  } as const
  const remaining = 'orchestra_gateway_budget_remaining{key="shared",scope="key",budget_unit="tokens"}'

  it("show one budget_remaining series per key, the lowest either reports; one closing or forgetting leaves the other's", () => {
    const registry: Metric.MetricRegistry = new Map()
    const context = Context.make(Metric.MetricRegistry, registry) as Context.Context<never>
    const read = () => seriesValue(Prometheus.formatUnsafe(context), remaining)
    const a = Gauges.make(context, () => 0)
    const b = Gauges.make(context, () => 0)
    a.set("shared", counter, { spent: 10, held: 0 })
    b.set("shared", counter, { spent: 30, held: 0 })
    assert.strictEqual(read(), 70)
    // The first store's level falls below the second's: it is the one shown, not the last registered's.
    a.set("shared", counter, { spent: 50, held: 0 })
    assert.strictEqual(read(), 50)
    b.remove()
    assert.strictEqual(read(), 50)
    const c = Gauges.make(context, () => 0)
    c.set("shared", counter, { spent: 20, held: 0 })
    c.forget("shared")
    assert.strictEqual(read(), 50)
    a.remove()
    assert.strictEqual(registry.size, 0)
    c.remove()
  })

  it("a closed store's series do not keep its layer's context alive while another store reads them", async () => {
    const registry: Metric.MetricRegistry = new Map()
    class Heavy extends Context.Service<Heavy, { readonly bytes: Uint8Array }>()("test/HeavyStore") {}
    let first: Gauges.Gauges | undefined
    const closed = (() => {
      const heavy = { bytes: new Uint8Array(1024) }
      const context = Context.make(Metric.MetricRegistry, registry).pipe(
        Context.add(Heavy, heavy)
      ) as Context.Context<never>
      first = Gauges.make(context, () => 0)
      first.set("shared", counter, { spent: 10, held: 0 })
      return new WeakRef(heavy)
    })()
    const context = Context.make(Metric.MetricRegistry, registry) as Context.Context<never>
    const other = Gauges.make(context, () => 0)
    other.set("shared", counter, { spent: 40, held: 0 })
    first!.remove()
    first = undefined
    for (let i = 0; i < 5; i++) {
      await new Promise((resolve) => setImmediate(resolve))
      gc()
    }
    await new Promise((resolve) => setImmediate(resolve))
    assert.isUndefined(closed.deref(), "the closed store's context is still reachable from the registry")
    assert.strictEqual(seriesValue(Prometheus.formatUnsafe(context), remaining), 60)
    other.remove()
  })
})
