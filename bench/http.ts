/**
 * The HTTP path of a provider beside what a TypeScript user would write by hand, side by
 * side in one run (interleaved rounds, medians). The server is a child process on
 * 127.0.0.1, so the CPU time reported (user + system of this process) is the client's alone.
 *
 *   node_modules/.bin/esbuild bench/http.ts --bundle --platform=node --format=esm \
 *     --packages=external --outfile=.cache/bench/http.mjs && node .cache/bench/http.mjs
 *   npx tsx bench/http.ts            the same from source (tsx's keepNames wraps every
 *                                    closure of this repository's code: slower)
 *   ... --quick                      fewer rounds and events
 *
 * Variants: raw `fetch` with hand parsing (SSE split on blank lines, `JSON.parse` per
 * event), `OpenAiCompat` over `FetchHttpClient` (Node's `fetch`) and over
 * `@effect/platform-node`'s `NodeHttpClient.layerUndici` and over this package's
 * `UndiciHttpClient.layer` (undici's `dispatch`, no `Readable`), and under each of those the
 * floor: the same request on the same `effect/http` client with its body drained, unparsed.
 *
 * A. One streamed answer of many events written in one go (reads of ~64 KB): per-event CPU.
 * B. One streamed answer whose events are written one at a time (a write per event, the
 *    way a model server sends tokens): per-event CPU when reads are small.
 * C. Sequential `generate` calls (one JSON answer each, keep-alive): CPU per call; with
 *    the tracer off as well, for the cost of the spans.
 */
import { NodeHttpClient } from "@effect/platform-node"
import { Effect, Layer, ManagedRuntime, References, Stream } from "effect"
import { FetchHttpClient, HttpClient, HttpClientRequest } from "effect/http"
import { spawn } from "node:child_process"
import { cpus, loadavg } from "node:os"
import * as Model from "../src/Model.js"
import * as OpenAiCompat from "../src/Model/OpenAiCompat.js"
import * as UndiciHttpClient from "../src/UndiciHttpClient.js"
import { measure, median, printTable } from "./util.js"

const quick = process.argv.includes("--quick")
const rounds = quick ? 3 : 7
const bulkEvents = quick ? 5_000 : 20_000
const pacedEvents = quick ? 1_000 : 4_000
const calls = quick ? 500 : 2_000

// Plain JavaScript run with `node -e`, so it needs no loader whether this file runs compiled or under tsx.
const serverSource = `
const { createServer } = require("node:http")
const [bulkEvents, pacedEvents] = process.argv.slice(1).map(Number)
const chunk = (content, finish = null) => JSON.stringify({
  id: "chatcmpl-1", object: "chat.completion.chunk", created: 1700000000, model: "gpt-4o-mini",
  choices: [{ index: 0, delta: content === null ? {} : { content }, logprobs: null, finish_reason: finish }]
})
const events = (n) => {
  const out = []
  for (let i = 0; i < n; i++) out.push("data: " + chunk("tok" + (i % 10) + " ") + "\\r\\n\\r\\n")
  out.push("data: " + chunk(null, "stop") + "\\r\\n\\r\\n")
  out.push('data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":' + n + ',"total_tokens":' + (n + 3) + '}}\\r\\n\\r\\n')
  out.push("data: [DONE]\\r\\n\\r\\n")
  return out.map((e) => Buffer.from(e))
}
const bulk = Buffer.concat(events(bulkEvents))
const paced = events(pacedEvents)
const json = Buffer.from(JSON.stringify({
  id: "chatcmpl-2", object: "chat.completion", model: "gpt-4o-mini",
  choices: [{ index: 0, message: { role: "assistant", content: "Paris." }, finish_reason: "stop" }],
  usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }
}))
const server = createServer((req, res) => {
  req.resume()
  req.on("end", () => {
    if (req.headers.accept !== "text/event-stream") {
      res.writeHead(200, { "content-type": "application/json", "content-length": json.length })
      return res.end(json)
    }
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" })
    if (req.url.startsWith("/bulk/")) return res.end(bulk)
    let i = 0
    const next = () => {
      if (i === paced.length) return res.end()
      res.write(paced[i++])
      setImmediate(next)
    }
    next()
  })
})
server.listen(0, "127.0.0.1", () => process.stdout.write(server.address().port + "\\n"))
`

const child = spawn(process.execPath, ["-e", serverSource, String(bulkEvents), String(pacedEvents)], {
  stdio: ["ignore", "pipe", "inherit"]
})
// Also when a variant throws: the server must not outlive the benchmark.
process.once("exit", () => child.kill())
const port = await new Promise<number>((resolve, reject) => {
  child.once("error", reject)
  child.stdout.once("data", (data) => resolve(Number(String(data).trim())))
})
const origin = `http://127.0.0.1:${port}`
const load0 = loadavg()

// ---- raw fetch, parsed by hand ----

// Reads the raw client saw in its last stream of each mode: how the events were framed on the wire.
const reads = { bulk: 0, paced: 0 }

const rawStream = async (mode: "bulk" | "paced"): Promise<number> => {
  const response = await fetch(`${origin}/${mode}/v1/chat/completions`, {
    method: "POST",
    headers: { accept: "text/event-stream", "content-type": "application/json" },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }], stream: true })
  })
  if (response.body === null) throw new Error("no body")
  const decoder = new TextDecoder()
  let buffer = ""
  let deltas = 0
  let count = 0
  for await (const bytes of response.body) {
    reads[mode] = ++count
    buffer += decoder.decode(bytes, { stream: true })
    let end = buffer.indexOf("\r\n\r\n")
    while (end !== -1) {
      const data = buffer.slice(6, end)
      buffer = buffer.slice(end + 4)
      if (data === "[DONE]") return deltas
      const parsed = JSON.parse(data) as { choices: Array<{ delta?: { content?: string } }> }
      if (parsed.choices[0]?.delta?.content) deltas++
      end = buffer.indexOf("\r\n\r\n")
    }
  }
  return deltas
}

const rawCalls = async (): Promise<number> => {
  let ok = 0
  for (let i = 0; i < calls; i++) {
    const response = await fetch(`${origin}/json/v1/chat/completions`, {
      method: "POST",
      headers: { accept: "application/json", "content-type": "application/json" },
      body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] })
    })
    const parsed = JSON.parse(await response.text()) as { choices: Array<{ message: { content: string } }> }
    if (parsed.choices[0]?.message.content === "Paris.") ok++
  }
  return ok
}

// ---- OpenAiCompat over an effect/http client ----

type Mode = "bulk" | "paced"

// One provider per client and server mode, built once (the mode is the URL's first segment).
const ours = (client: Layer.Layer<HttpClient.HttpClient>, mode: Mode | "json") => {
  const runtime = ManagedRuntime.make(
    OpenAiCompat.layer({ baseUrl: `${origin}/${mode}/v1` }).pipe(Layer.provideMerge(client))
  )
  const stream = () =>
    runtime.runPromise(
      Effect.gen(function* () {
        const provider = yield* Model.ModelProvider
        let deltas = 0
        yield* Stream.runForEach(provider.stream({ prompt: "hi" }), (part) =>
          Effect.sync(() => {
            if (part._tag === "TextDelta") deltas++
          })
        )
        return deltas
      })
    )
  const generate = (traced: boolean) => () =>
    runtime.runPromise(
      Effect.gen(function* () {
        const provider = yield* Model.ModelProvider
        let ok = 0
        for (let i = 0; i < calls; i++) {
          const answer = yield* provider.generate({ prompt: "hi" })
          if (answer.text === "Paris.") ok++
        }
        return ok
      }).pipe(Effect.provideService(References.TracerEnabled, traced))
    )
  // effect/http alone, the floor under the provider: the same request, the body drained, nothing parsed.
  const request = HttpClientRequest.post(`${origin}/${mode}/v1/chat/completions`).pipe(
    HttpClientRequest.setHeader("accept", mode === "json" ? "application/json" : "text/event-stream"),
    HttpClientRequest.bodyJsonUnsafe({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] })
  )
  const drain = Effect.fnUntraced(function* () {
    const response = yield* HttpClient.withScope(yield* HttpClient.HttpClient).execute(request)
    let bytes = 0
    yield* Stream.runForEach(response.stream, (chunk) =>
      Effect.sync(() => {
        bytes += chunk.byteLength
      })
    )
    return bytes
  }, Effect.scoped)
  const floor = (times: number, expect: number) => () =>
    runtime.runPromise(
      Effect.gen(function* () {
        let ok = 0
        for (let i = 0; i < times; i++) if ((yield* drain()) > 0) ok++
        return ok === times ? expect : ok
      })
    )
  return { runtime, stream, generate, floor }
}

const clients = [
  ["FetchHttpClient", FetchHttpClient.layer],
  ["NodeHttpClient.layerUndici", NodeHttpClient.layerUndici],
  ["UndiciHttpClient.layer", UndiciHttpClient.layer]
] as const
const built = clients.map(([name, layer]) => ({
  name,
  bulk: ours(layer, "bulk"),
  paced: ours(layer, "paced"),
  json: ours(layer, "json")
}))

interface Variant {
  readonly part: "A" | "B" | "C"
  readonly name: string
  readonly per: number
  readonly expect: number
  readonly run: () => Promise<number>
}

const variants: ReadonlyArray<Variant> = [
  { part: "A", name: "raw fetch + hand parsing", per: bulkEvents, expect: bulkEvents, run: () => rawStream("bulk") },
  ...built.flatMap(
    (b): ReadonlyArray<Variant> => [
      {
        part: "A",
        name: `effect/http over ${b.name} alone (bytes drained)`,
        per: bulkEvents,
        expect: bulkEvents,
        run: b.bulk.floor(1, bulkEvents)
      },
      { part: "A", name: `OpenAiCompat over ${b.name}`, per: bulkEvents, expect: bulkEvents, run: b.bulk.stream }
    ]
  ),
  {
    part: "B",
    name: "raw fetch + hand parsing",
    per: pacedEvents,
    expect: pacedEvents,
    run: () => rawStream("paced")
  },
  ...built.flatMap(
    (b): ReadonlyArray<Variant> => [
      {
        part: "B",
        name: `effect/http over ${b.name} alone (bytes drained)`,
        per: pacedEvents,
        expect: pacedEvents,
        run: b.paced.floor(1, pacedEvents)
      },
      { part: "B", name: `OpenAiCompat over ${b.name}`, per: pacedEvents, expect: pacedEvents, run: b.paced.stream }
    ]
  ),
  { part: "C", name: "raw fetch + JSON.parse", per: calls, expect: calls, run: rawCalls },
  ...built.flatMap(
    (b): ReadonlyArray<Variant> => [
      {
        part: "C",
        name: `effect/http over ${b.name} alone (body drained)`,
        per: calls,
        expect: calls,
        run: b.json.floor(calls, calls)
      },
      { part: "C", name: `OpenAiCompat over ${b.name}`, per: calls, expect: calls, run: b.json.generate(true) },
      {
        part: "C",
        name: `OpenAiCompat over ${b.name}, tracer off`,
        per: calls,
        expect: calls,
        run: b.json.generate(false)
      }
    ]
  )
]

const samples = new Map<Variant, Array<{ wallMs: number; cpuMs: number }>>()
for (const variant of variants) {
  const got = await variant.run() // warm-up, and a check that it reads every event
  if (got !== variant.expect) throw new Error(`${variant.name}: ${got}, expected ${variant.expect}`)
}
for (let round = 0; round < rounds; round++) {
  for (const variant of variants) {
    let got = 0
    const sample = await measure(async () => {
      got = await variant.run()
    })
    if (got !== variant.expect) throw new Error(`${variant.name}: ${got}, expected ${variant.expect}`)
    samples.set(variant, [...(samples.get(variant) ?? []), sample])
  }
}
child.kill()
for (const b of built)
  await Promise.all([b.bulk.runtime.dispose(), b.paced.runtime.dispose(), b.json.runtime.dispose()])

console.log(
  `Node ${process.version}, ${cpus().length} cores (${cpus()[0]?.model.trim()}), load ${load0.map((x) => x.toFixed(2)).join(" ")}, ${rounds} rounds`
)
for (const [part, title, unit] of [
  [
    "A",
    `A. One streamed answer of ${bulkEvents.toLocaleString("en")} events written in one go (${reads.bulk} reads)`,
    "event"
  ],
  [
    "B",
    `B. One streamed answer of ${pacedEvents.toLocaleString("en")} events, one write per event (${reads.paced} reads)`,
    "event"
  ],
  ["C", `C. ${calls.toLocaleString("en")} sequential generate calls`, "call"]
] as const) {
  const rows = variants
    .filter((v) => v.part === part)
    .map((v) => {
      const all = samples.get(v) ?? []
      const wall = median(all.map((s) => s.wallMs))
      const cpu = median(all.map((s) => s.cpuMs))
      return [v.name, wall.toFixed(0), ((wall * 1000) / v.per).toFixed(1), ((cpu * 1000) / v.per).toFixed(1)]
    })
  printTable(title, ["variant", "wall ms", `wall µs / ${unit}`, `client CPU µs / ${unit}`], rows)
}
console.log(
  `\nload after: ${loadavg()
    .map((x) => x.toFixed(2))
    .join(" ")}`
)
