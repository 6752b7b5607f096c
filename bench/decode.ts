/**
 * Decoding an OpenAI answer and a streamed chunk (the provider's work per call and per
 * event): the wire schema's decoding against the check by hand that lets the common shape
 * skip it (`DecodeOptions.accept`), side by side in one run (interleaved rounds, medians of
 * CPU time). `JSON.parse` of the text is included in both, as a provider does it.
 *
 *   npm run bench -- decode            (--quick: fewer rounds)
 */
import { loadavg } from "node:os"
import { Result } from "effect"
import * as Decode from "../src/Model/http/decode.js"
import * as Wire from "../src/Model/http/openAiWire.js"
import { median, printTable } from "./util.js"

const quick = process.argv.includes("--quick")
const rounds = quick ? 3 : 7
const n = quick ? 50_000 : 200_000

const completion = JSON.stringify({
  id: "chatcmpl-1",
  object: "chat.completion",
  created: 1_700_000_000,
  model: "gpt-4o-mini",
  choices: [{ index: 0, message: { role: "assistant", content: "Paris." }, logprobs: null, finish_reason: "stop" }],
  usage: { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 }
})
const chunk = JSON.stringify({
  id: "chatcmpl-1",
  object: "chat.completion.chunk",
  created: 1_700_000_000,
  model: "gpt-4o-mini",
  choices: [{ index: 0, delta: { content: "tok " }, logprobs: null, finish_reason: null }]
})

type Variant = {
  readonly name: string
  readonly text: string
  readonly decode: ((value: unknown, ctx: { readonly provider: string }) => Result.Result<unknown, unknown>) | undefined
}

const variants: ReadonlyArray<Variant> = [
  { name: "answer: schema", text: completion, decode: Decode.resultDecoder(Wire.ChatCompletion) },
  {
    name: "answer: check by hand",
    text: completion,
    decode: Decode.resultDecoder(Wire.ChatCompletion, { accept: Wire.isChatCompletion })
  },
  { name: "chunk: schema", text: chunk, decode: Decode.resultDecoder(Wire.ChatChunk) },
  {
    name: "chunk: check by hand",
    text: chunk,
    decode: Decode.resultDecoder(Wire.ChatChunk, { accept: Wire.isChatChunk })
  },
  // What any decoding costs at least: the parse alone.
  { name: "answer: JSON.parse alone", text: completion, decode: undefined },
  { name: "chunk: JSON.parse alone", text: chunk, decode: undefined }
]

const ctx = { provider: "bench" }
const perCall = new Map<string, Array<number>>()
const load0 = loadavg()[0]!
for (let round = 0; round < rounds; round++) {
  for (const variant of variants) {
    const cpu0 = process.cpuUsage()
    for (let i = 0; i < n; i++) {
      const value: unknown = JSON.parse(variant.text)
      if (variant.decode !== undefined && !Result.isSuccess(variant.decode(value, ctx))) throw new Error(variant.name)
    }
    const cpu = process.cpuUsage(cpu0)
    perCall.set(variant.name, [...(perCall.get(variant.name) ?? []), ((cpu.user + cpu.system) * 1000) / n])
  }
}
printTable(
  `Decoding (${rounds} interleaved rounds of ${n.toLocaleString("en-US")}, medians; load ${load0.toFixed(2)} → ${loadavg()[0]!.toFixed(2)})`,
  ["variant", "ns a value", "over the parse"],
  variants.map((v) => {
    const ns = median(perCall.get(v.name)!)
    const parse = median(perCall.get(v.text === chunk ? "chunk: JSON.parse alone" : "answer: JSON.parse alone")!)
    return [v.name, ns.toFixed(0), v.decode === undefined ? "" : (ns - parse).toFixed(0)]
  })
)
