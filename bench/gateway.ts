/**
 * The gateway under an open-loop, fixed-rate load, beside a direct call to the upstream
 * and beside a plain Node `http` proxy with a keep-alive agent (the floor).
 *
 *   npm run bench -- gateway                  # bundled with esbuild, run with plain node
 *   npm run bench -- gateway --quick          # shorter runs, one round
 *   npm run bench -- gateway --only E         # one part (A, B, C, D, E or G)
 *
 * Four processes: this one (the load generator), a mock upstream answering
 * `/v1/chat/completions` after 20 ms, and the target (the gateway or the proxy; none for
 * direct calls). The generator sends request i at t0 + i/rate whatever happened before
 * (open loop: a slow target does not slow the sender) and measures each latency from that
 * scheduled time, so queueing shows (autocannon -R does not hold its rate, and measures
 * from the actual send).
 *
 * The gateway has every policy on: key check (an in-memory key store with a key, its rpm
 * and a token budget reserved and settled per request), attempt deadline, retry policy,
 * breaker, rate limit, metrics; no response cache (every request is the same, a cache would
 * answer them all).
 *
 * Parts: A. added latency p50/p99, CPU per request and RSS at 500 and 1,000 requests/s
 * (interleaved rounds, medians); B. the highest rate held with p99 under 100 ms; C. stream
 * time to first byte added; D. RSS across 100k requests; E. CPU per request with parts of
 * the gateway left out (`BENCH_GATEWAY=http|bare|mock20|mock|nokeys|full` for the gateway role),
 * and over `NodeHttpClient.layerUndici` instead of `UndiciHttpClient` (`BENCH_CLIENT=effect-undici`;
 * also `node` or `fetch`); G. what each request leaves promoted to the old generation and the
 * young collections' pauses (`node --trace-gc-nvp` on the gateway), with V8's pretenuring on and off.
 *
 * The gateway role turns V8's allocation-site pretenuring off as `orchestra serve` does
 * (`Gateway.disableAllocationSitePretenuring`); `BENCH_PRETENURING=on` leaves V8's default, to
 * compare.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import http from "node:http"
import { cpus, loadavg } from "node:os"
import { fileURLToPath } from "node:url"

const role = process.argv[2] === "--role" ? process.argv[3] : "driver"
const quick = process.argv.includes("--quick")
const onlyIndex = process.argv.indexOf("--only")
const only = onlyIndex >= 0 ? process.argv[onlyIndex + 1] : undefined
const runs = (part: string): boolean => only === undefined || only === part
const UPSTREAM_DELAY_MS = 20
const KEY = "sk-bench-0123456789abcdef"

const completion = JSON.stringify({
  id: "chatcmpl-bench",
  object: "chat.completion",
  created: 1_700_000_000,
  model: "upstream",
  choices: [{ index: 0, message: { role: "assistant", content: "benchmark answer" }, finish_reason: "stop" }],
  usage: { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 }
})

const chunk = (content: string | null, finish: string | null = null) =>
  `data: ${JSON.stringify({
    id: "c",
    object: "chat.completion.chunk",
    created: 1,
    model: "upstream",
    choices: [{ index: 0, delta: content === null ? {} : { content }, finish_reason: finish }]
  })}\n\n`

/** Prints `{"port":n}` once listening. */
const listen = (server: http.Server) =>
  server.listen(0, "127.0.0.1", () => {
    const address = server.address() as { port: number }
    process.stdout.write(`${JSON.stringify({ port: address.port })}\n`)
  })

// ---------------------------------------------------------------------------------------
// The mock upstream: 20 ms, then the answer (or a stream: first chunk at 20 ms).

const upstream = () => {
  const server = http.createServer({ keepAliveTimeout: 65_000, noDelay: true }, (req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      const stream = Buffer.concat(chunks).includes('"stream":true')
      setTimeout(() => {
        if (!stream) {
          res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(completion) })
          res.end(completion)
          return
        }
        res.writeHead(200, { "content-type": "text/event-stream" })
        res.write(chunk("first"))
        res.end(`${chunk(" second")}${chunk(null, "stop")}data: [DONE]\n\n`)
      }, UPSTREAM_DELAY_MS)
    })
  })
  listen(server)
}

// ---------------------------------------------------------------------------------------
// The floor: a plain proxy with a keep-alive agent.

const proxy = (upstreamPort: number) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 })
  const server = http.createServer({ keepAliveTimeout: 65_000, noDelay: true }, (req, res) => {
    const out = http.request(
      { host: "127.0.0.1", port: upstreamPort, path: req.url, method: req.method, headers: req.headers, agent },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers)
        answer.pipe(res)
      }
    )
    out.on("error", () => {
      res.writeHead(502)
      res.end()
    })
    req.pipe(out)
  })
  listen(server)
}

// ---------------------------------------------------------------------------------------
// The gateway, every policy on.

const gateway = async (upstreamPort: number) => {
  // BENCH_GATEWAY=http|bare|mock20|raw|nokeys|mock|full (default full): parts left out, to see what each costs.
  const variant = process.env.BENCH_GATEWAY ?? "full"
  const { NodeHttpClient } = await import("@effect/platform-node")
  const { Context, Effect, Layer, Redacted } = await import("effect")
  const { HttpServer } = await import("effect/http")
  // Loaded here, in the gateway's process only (the bundle keeps a literal dynamic import lazy).
  const Gateway = await import("../src/Gateway.js")
  const Orchestra = await import("../src/Orchestra.js")
  const OpenAiCompat = await import("../src/Model/OpenAiCompat.js")
  const KeyStore = await import("../src/gateway/keys/KeyStore.js")
  const Mock = await import("../src/Model/Mock.js")
  if (process.env.BENCH_PRETENURING !== "on") Effect.runSync(Gateway.disableAllocationSitePretenuring)
  // BENCH_GATEWAY=raw: the upstream call made by hand (undici's `request` and `JSON.parse`) inside
  // a provider: the floor of the provider's HTTP path, everything else as in `nokeys`.
  const raw = async () => {
    const { Pool } = await import("undici")
    const Model = await import("../src/Model.js")
    const pool = new Pool(`http://127.0.0.1:${upstreamPort}`, { connections: 256 })
    const generate = (request: { readonly messages: ReadonlyArray<unknown>; readonly model?: string | undefined }) =>
      Effect.tryPromise({
        try: async () => {
          const answer = await pool.request({
            path: "/v1/chat/completions",
            method: "POST",
            headers: { "content-type": "application/json", authorization: "Bearer sk-up" },
            body: JSON.stringify({ model: request.model ?? "m", messages: request.messages })
          })
          const body = (await answer.body.json()) as {
            choices: Array<{ message: { content: string } }>
            usage: { prompt_tokens: number; completion_tokens: number }
          }
          return {
            text: body.choices[0]!.message.content,
            finishReason: "stop" as const,
            usage: {
              inputTokens: body.usage.prompt_tokens,
              outputTokens: body.usage.completion_tokens,
              totalTokens: body.usage.prompt_tokens + body.usage.completion_tokens
            },
            provider: "up",
            model: request.model ?? "m"
          }
        },
        catch: (cause) => new Error(String(cause))
      })
    return Layer.succeed(Model.ModelProvider, { name: "up", defaultModel: "m", generate } as never)
  }
  const manager = Orchestra.layer({
    providers: {
      up:
        variant === "raw"
          ? ((await raw()) as never)
          : variant === "mock" || variant === "bare" || variant === "mock20"
            ? (Mock.layer({
                name: "up",
                respond: () => "benchmark answer",
                latency: variant === "mock20" ? UPSTREAM_DELAY_MS : 0
              }) as never)
            : OpenAiCompat.layer({
                baseUrl: `http://127.0.0.1:${upstreamPort}/v1`,
                name: "up",
                apiKey: Redacted.make("sk-up")
              })
    },
    domains: [{ name: "bench", provider: "up", timeout: "5 seconds", retry: { maxAttempts: 2, initialDelay: 50 } }],
    executor: { timeout: "5 seconds" },
    breakers: { failMax: 1000 },
    rateLimits: { default: { requestsPerMinute: 100_000_000 }, maxWait: 0 }
  })
  const keys = KeyStore.layerMemory({
    keys: [{ id: "bench", sha256: KeyStore.hashSecret(KEY), rpm: 100_000_000, budget: { tokens: 1e15 } }]
  })
  if (variant === "http") {
    // effect/http alone: the route answers a constant.
    const { HttpRouter, HttpServerResponse } = await import("effect/http")
    const { NodeHttpServer } = await import("@effect/platform-node")
    const route = HttpRouter.add("POST", "/v1/chat/completions", (request) =>
      Effect.map(request.arrayBuffer, () => HttpServerResponse.text(completion, { contentType: "application/json" }))
    )
    const server = HttpRouter.serve(route, { disableLogger: true, disableListenLog: true }).pipe(
      Layer.provideMerge(NodeHttpServer.layer(() => http.createServer(), { host: "127.0.0.1", port: 0 }))
    )
    await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const context = yield* Layer.build(server)
          const address = Context.get(context, HttpServer.HttpServer).address as { readonly port: number }
          process.stdout.write(`${JSON.stringify({ port: address.port })}\n`)
          return yield* Effect.never
        })
      )
    )
  }
  const withKeys = variant === "full" || variant === "mock"
  const app = Gateway.serve({ host: "127.0.0.1", port: 0, drainTimeout: "1 second", allowAnonymous: !withKeys }).pipe(
    Layer.provide(withKeys ? Layer.merge(manager, keys) : manager),
    Layer.provide(
      // BENCH_CLIENT: the gateway's own client by default (as `orchestra serve` provides it).
      process.env.BENCH_CLIENT === "node"
        ? NodeHttpClient.layerNodeHttp
        : process.env.BENCH_CLIENT === "effect-undici"
          ? NodeHttpClient.layerUndici
          : process.env.BENCH_CLIENT === "fetch"
            ? (await import("effect/http")).FetchHttpClient.layer
            : (await import("../src/UndiciHttpClient.js")).layer
    )
  )
  await Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const context = yield* Layer.build(app)
        const address = Context.get(context, HttpServer.HttpServer).address as { readonly port: number }
        process.stdout.write(`${JSON.stringify({ port: address.port })}\n`)
        return yield* Effect.never
      })
    )
  )
}

// ---------------------------------------------------------------------------------------
// The driver: processes, the load generator, the figures.

interface Child {
  readonly process: ChildProcess
  readonly port: number
}

/** The gateway's heap (MB) after a full collection (it answers SIGUSR2). */
const heapAfterGc = (child: Child): Promise<number> =>
  new Promise((resolve) => {
    const onData = (text: string) => {
      const match = /\{"heapMb":([\d.]+)\}/.exec(text)
      if (match === null) return
      child.process.stdout!.off("data", onData)
      resolve(Number(match[1]))
    }
    child.process.stdout!.on("data", onData)
    child.process.kill("SIGUSR2")
  })

const self = fileURLToPath(import.meta.url)

const startChild = (
  args: ReadonlyArray<string>,
  env: Record<string, string> = {},
  nodeFlags: ReadonlyArray<string> = []
): Promise<Child> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeFlags, "--expose-gc", self, "--role", ...args], {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, ...env }
    })
    let out = ""
    child.stdout!.setEncoding("utf8").on("data", (text: string) => {
      out += text
      const match = /\{"port":(\d+)\}/.exec(out)
      if (match !== null) resolve({ process: child, port: Number(match[1]) })
    })
    child.on("exit", (code, signal) => {
      if (signal === null) reject(new Error(`${args.join(" ")} exited with ${code}`))
    })
  })

/** RSS (MB) and CPU time (ms, user + system) of a process, from /proc. */
const usage = (pid: number) => {
  const status = readFileSync(`/proc/${pid}/status`, "utf8")
  const rss = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  const ticks = Number(fields[11]) + Number(fields[12])
  return { rssMb: rss, cpuMs: (ticks * 1000) / 100 }
}

interface Run {
  readonly p50: number
  readonly p99: number
  readonly errors: number
  /** Errors by kind: an HTTP status, or a socket error's code (`timeout`: 15 s without an answer). */
  readonly kinds: ReadonlyMap<string, number>
  readonly sent: number
}

const errorText = (runs: ReadonlyArray<Run>): string => {
  const kinds = new Map<string, number>()
  for (const run of runs) for (const [kind, n] of run.kinds) kinds.set(kind, (kinds.get(kind) ?? 0) + n)
  const total = [...kinds.values()].reduce((a, b) => a + b, 0)
  return total === 0 ? "0" : `${total} (${[...kinds].map(([k, n]) => `${k}×${n}`).join(", ")})`
}

const percentile = (sorted: Float64Array, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!

const agent = new http.Agent({ keepAlive: true, maxSockets: 4096 })
const chatBody = JSON.stringify({ model: "bench", messages: [{ role: "user", content: "hello" }], max_tokens: 16 })
const upstreamBody = JSON.stringify({
  model: "upstream",
  messages: [{ role: "user", content: "hello" }],
  max_tokens: 16
})

/** Open loop: request i goes at t0 + i/rate; its latency counts from then (to the last byte, or the first with `firstByte`). */
const load = (port: number, body: string, rate: number, count: number, firstByte = false): Promise<Run> =>
  new Promise((resolve) => {
    const latencies = new Float64Array(count).fill(Number.NaN)
    let errors = 0
    const kinds = new Map<string, number>()
    const failed = (kind: string) => {
      errors++
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1)
    }
    let finished = 0
    let next = 0
    const t0 = performance.now() + 20
    const finish = () => {
      if (++finished < count) return
      const ok = latencies.filter((x) => !Number.isNaN(x)).sort()
      resolve({ p50: percentile(ok, 0.5), p99: percentile(ok, 0.99), errors, kinds, sent: count })
    }
    const send = (i: number, at: number) => {
      const req = http.request(
        {
          host: "127.0.0.1",
          port,
          path: "/v1/chat/completions",
          method: "POST",
          agent,
          headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` }
        },
        (res) => {
          let first = true
          res.on("data", () => {
            if (first && firstByte) latencies[i] = performance.now() - at
            first = false
          })
          res.on("end", () => {
            if (!firstByte) latencies[i] = performance.now() - at
            if (res.statusCode !== 200) {
              failed(String(res.statusCode))
              latencies[i] = Number.NaN
            }
            finish()
          })
        }
      )
      req.setTimeout(15_000, () => req.destroy(Object.assign(new Error("timeout"), { code: "timeout" })))
      req.on("error", (error: Error & { code?: string }) => {
        failed(error.code ?? "error")
        latencies[i] = Number.NaN
        finish()
      })
      req.end(body)
    }
    const tick = () => {
      const now = performance.now()
      while (next < count && t0 + (next * 1000) / rate <= now) {
        send(next, t0 + (next * 1000) / rate)
        next++
      }
      if (next < count) setTimeout(tick, Math.max(0, t0 + (next * 1000) / rate - performance.now()))
    }
    setTimeout(tick, 20)
  })

/** `count` requests, `concurrency` at a time (closed loop: for CPU per request, not latency). */
const closedLoop = (port: number, body: string, count: number, concurrency: number): Promise<void> =>
  new Promise((resolve) => {
    let sent = 0
    let done = 0
    const one = () => {
      if (sent >= count) return
      sent++
      const req = http.request(
        {
          host: "127.0.0.1",
          port,
          path: "/v1/chat/completions",
          method: "POST",
          agent,
          headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` }
        },
        (res) => {
          res.resume()
          res.on("end", () => (++done === count ? resolve() : one()))
        }
      )
      req.on("error", () => (++done === count ? resolve() : one()))
      req.end(body)
    }
    for (let i = 0; i < concurrency; i++) one()
  })

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

const fmt = (n: number, digits = 2) => n.toFixed(digits)

const table = (title: string, header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: ReadonlyArray<string>) =>
    `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`
  console.log(`\n${title}\n\n${line(header)}`)
  console.log(`|${widths.map((w, i) => (i === 0 ? ` ${"-".repeat(w)} ` : ` ${"-".repeat(w - 1)}: `)).join("|")}|`)
  for (const row of rows) console.log(line(row))
}

const driver = async () => {
  console.log(
    `# bench/gateway.ts ${quick ? "--quick " : ""}on ${cpus().length} cores, load ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`
  )
  const up = await startChild(["upstream"])
  const px = await startChild(["proxy", String(up.port)])
  const gw = await startChild(["gateway", String(up.port)])
  const targets = [
    { name: "direct", port: up.port, body: upstreamBody, pid: undefined as number | undefined },
    { name: "node proxy", port: px.port, body: upstreamBody, pid: px.process.pid },
    { name: "gateway", port: gw.port, body: chatBody, pid: gw.process.pid }
  ]
  const seconds = quick ? 4 : 10
  const rounds = quick ? 1 : 3
  // Warm up every path (JIT, connection pools).
  for (const t of targets) await load(t.port, t.body, 500, quick ? 1000 : 3000)

  // A. Added latency at 500 and 1,000 requests/s.
  const rowsA: Array<Array<string>> = []
  for (const rate of runs("A") ? [500, 1000] : []) {
    const byTarget = new Map<string, Array<Run & { cpuPerReq: number; rss: number }>>()
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? targets : [...targets].reverse()
      for (const t of order) {
        const before = t.pid === undefined ? undefined : usage(t.pid)
        const run = await load(t.port, t.body, rate, rate * seconds)
        const after = t.pid === undefined ? undefined : usage(t.pid)
        const cpuPerReq = before === undefined || after === undefined ? 0 : (after.cpuMs - before.cpuMs) / run.sent
        const list = byTarget.get(t.name) ?? []
        list.push({ ...run, cpuPerReq, rss: after?.rssMb ?? 0 })
        byTarget.set(t.name, list)
      }
    }
    const direct = byTarget.get("direct")!
    for (const t of targets) {
      const runs = byTarget.get(t.name)!
      const added = (p: "p50" | "p99") => median(runs.map((r, i) => r[p] - direct[i]![p]))
      rowsA.push([
        `${t.name} @ ${rate}/s`,
        fmt(median(runs.map((r) => r.p50))),
        fmt(median(runs.map((r) => r.p99))),
        t.name === "direct" ? "-" : fmt(added("p50")),
        t.name === "direct" ? "-" : fmt(added("p99")),
        t.pid === undefined ? "-" : fmt(median(runs.map((r) => r.cpuPerReq)) * 1000, 0),
        t.pid === undefined ? "-" : fmt(runs[runs.length - 1]!.rss, 0),
        errorText(runs)
      ])
    }
  }
  if (runs("A"))
    table(
      `A. Latency from the scheduled send (ms; ${rounds} interleaved round(s) of ${seconds} s, medians; upstream answers in ${UPSTREAM_DELAY_MS} ms)`,
      ["target", "p50", "p99", "added p50", "added p99", "CPU µs/req", "RSS MB", "errors"],
      rowsA
    )

  // B. The highest rate held with p99 under 100 ms and no errors (5 s per step).
  const rowsB: Array<Array<string>> = []
  for (const t of runs("B") ? targets.slice(1) : []) {
    let held = 0
    let last = ""
    for (const rate of [1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000]) {
      const run = await load(t.port, t.body, rate, rate * (quick ? 3 : 5))
      last = `${rate}/s: p50 ${fmt(run.p50)} p99 ${fmt(run.p99)} errors ${errorText([run])}`
      if (run.p99 >= 100 || run.errors > 0) break
      held = rate
    }
    rowsB.push([t.name, String(held), last])
  }
  if (runs("B"))
    table(
      "B. Highest rate held with p99 < 100 ms and no errors",
      ["target", "requests/s", "first step that failed (or last)"],
      rowsB
    )

  // C. Stream time to first byte, 200 streams/s.
  const streamBody = (body: string) => body.replace('"max_tokens":16', '"max_tokens":16,"stream":true')
  const rowsC: Array<Array<string>> = []
  const firstBytes = new Map<string, Array<Run>>()
  for (let round = 0; round < (runs("C") ? rounds : 0); round++) {
    for (const t of round % 2 === 0 ? targets : [...targets].reverse()) {
      const run = await load(t.port, streamBody(t.body), 200, 200 * seconds, true)
      firstBytes.set(t.name, [...(firstBytes.get(t.name) ?? []), run])
    }
  }
  const directFirst = firstBytes.get("direct") ?? []
  for (const t of runs("C") ? targets : []) {
    const runs = firstBytes.get(t.name)!
    rowsC.push([
      t.name,
      fmt(median(runs.map((r) => r.p50))),
      fmt(median(runs.map((r) => r.p99))),
      t.name === "direct" ? "-" : fmt(median(runs.map((r, i) => r.p50 - directFirst[i]!.p50))),
      errorText(runs)
    ])
  }
  if (runs("C"))
    table("C. Stream: time to first byte at 200 streams/s (ms)", ["target", "p50", "p99", "added p50", "errors"], rowsC)

  // D. RSS of the gateway across 100k requests at 1,000/s.
  const total = runs("D") ? (quick ? 20_000 : 100_000) : 0
  const step = total / 10
  const rowsD: Array<Array<string>> = runs("D")
    ? [["0", fmt(usage(gw.process.pid!).rssMb, 1), fmt(await heapAfterGc(gw), 1), "-", "-"]]
    : []
  for (let sent = step; total > 0 && sent <= total; sent += step) {
    const run = await load(gw.port, chatBody, 1000, step)
    const heap = await heapAfterGc(gw)
    rowsD.push([String(sent), fmt(usage(gw.process.pid!).rssMb, 1), fmt(heap, 1), fmt(run.p99), errorText([run])])
  }
  if (runs("D"))
    table(
      `D. Gateway RSS across ${total.toLocaleString("en")} requests at 1,000/s`,
      ["requests", "RSS MB", "heap after GC MB", "p99 ms", "errors"],
      rowsD
    )

  // E. Where the CPU goes: the same requests, closed loop at concurrency 16, through the
  // gateway with parts left out (each in its own process).
  const rowsE: Array<Array<string>> = []
  const perVariant = quick ? 2000 : 6000
  const variants: ReadonlyArray<readonly [string, string, string?]> = [
    ["http", "effect/http route answering a constant (no gateway)"],
    ["bare", "gateway, Mock provider, no key store"],
    ["mock20", `gateway, Mock provider answering in ${UPSTREAM_DELAY_MS} ms, no key store`],
    ["mock", "gateway, Mock provider, key store"],
    ["nokeys", "gateway, OpenAiCompat over UndiciHttpClient, no key store"],
    ["full", "gateway, every policy on (as in A-D)"],
    ["full", "the same over NodeHttpClient.layerUndici", "effect-undici"]
  ]
  for (const [variant, label, client] of runs("E") ? variants : []) {
    const target = await startChild(["gateway", String(up.port)], {
      BENCH_GATEWAY: variant,
      ...(client === undefined ? {} : { BENCH_CLIENT: client })
    })
    await closedLoop(target.port, chatBody, 1000, 16)
    const before = usage(target.process.pid!)
    await closedLoop(target.port, chatBody, perVariant, 16)
    const after = usage(target.process.pid!)
    rowsE.push([label, fmt(((after.cpuMs - before.cpuMs) * 1000) / perVariant, 0), fmt(after.rssMb, 0)])
    target.process.kill("SIGTERM")
  }
  if (runs("E")) {
    const pxBefore = usage(px.process.pid!)
    await closedLoop(px.port, upstreamBody, perVariant, 16)
    const pxAfter = usage(px.process.pid!)
    rowsE.push([
      "node proxy (for scale)",
      fmt(((pxAfter.cpuMs - pxBefore.cpuMs) * 1000) / perVariant, 0),
      fmt(pxAfter.rssMb, 0)
    ])
  }
  if (runs("E"))
    table(
      "E. CPU per request by configuration (closed loop, concurrency 16)",
      ["configuration", "CPU µs/req", "RSS MB"],
      rowsE
    )

  // G. Young collections: what each request leaves promoted to the old generation, and the
  // pauses, at 1,000/s (open loop) after a warm-up, read from `node --trace-gc-nvp`.
  const rowsG: Array<Array<string>> = []
  const configurations: ReadonlyArray<readonly [string, string, Record<string, string>]> = [
    ["mock", "gateway, Mock provider, key store; V8's default pretenuring", { BENCH_PRETENURING: "on" }],
    ["mock", "the same, pretenuring off (as orchestra serve runs)", {}],
    ["full", "gateway, every policy on; V8's default pretenuring", { BENCH_PRETENURING: "on" }],
    ["full", "the same, pretenuring off (as orchestra serve runs)", {}],
    ["full", "the same over NodeHttpClient.layerUndici", { BENCH_CLIENT: "effect-undici" }]
  ]
  const measured = quick ? 4 : 8
  for (const [variant, label, env] of runs("G") ? configurations : []) {
    const target = await startChild(["gateway", String(up.port)], { BENCH_GATEWAY: variant, ...env }, [
      "--trace-gc-nvp"
    ])
    let trace = ""
    target.process.stdout!.on("data", (text: string) => {
      trace += text
    })
    await load(target.port, chatBody, 1000, 2000)
    trace = ""
    const run = await load(target.port, chatBody, 1000, 1000 * measured)
    const lines = trace.split("\n")
    const scavenges = lines.filter((line) => / gc=s /.test(line))
    const promoted = scavenges.reduce((sum, line) => sum + Number(/promoted=(\d+)/.exec(line)?.[1] ?? 0), 0)
    const pauses = Float64Array.from(scavenges.map((line) => Number(/pause=([\d.]+)/.exec(line)?.[1] ?? 0))).sort()
    const full = lines.filter((line) => / gc=(mc|ms|mmc) /.test(line)).length
    rowsG.push([
      label,
      String(scavenges.length),
      fmt(promoted / 1024 / run.sent, 2),
      fmt(pauses.length === 0 ? 0 : percentile(pauses, 0.5), 1),
      fmt(pauses.length === 0 ? 0 : pauses[pauses.length - 1]!, 1),
      String(full),
      fmt(run.p99)
    ])
    target.process.kill("SIGTERM")
  }
  if (runs("G"))
    table(
      `G. Young collections at 1,000/s for ${measured} s after a 2 s warm-up (node --trace-gc-nvp)`,
      ["configuration", "scavenges", "KB promoted/req", "pause p50 ms", "pause max ms", "full GCs", "p99 ms"],
      rowsG
    )

  console.log(
    `\nload at the end ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`
  )
  for (const child of [gw, px, up]) child.process.kill("SIGTERM")
  agent.destroy()
}

switch (role) {
  case "upstream":
    upstream()
    break
  case "proxy":
    proxy(Number(process.argv[4]))
    break
  case "gateway":
    // Exit on a signal (a profile given by --cpu-prof is written on exit).
    for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => process.exit(0))
    // SIGUSR2: collect garbage (the process runs with --expose-gc) and print the heap left, for part D.
    process.on("SIGUSR2", () => {
      ;(globalThis as { gc?: () => void }).gc?.()
      process.stdout.write(`${JSON.stringify({ heapMb: process.memoryUsage().heapUsed / 1048576 })}\n`)
    })
    await gateway(Number(process.argv[4]))
    break
  default:
    await driver()
}
