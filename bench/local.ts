/**
 * Local provider throughput on the bundled tiny models.
 *
 *   npx tsx bench/local.ts
 *
 * Embeddings/second for 256 short texts: (a) one call at a time through the provider,
 * (b) 32 concurrent callers through the provider (automatic batching), (c) one batched
 * call straight to transformers.js. Generation tokens/second: through the provider
 * (generate and stream) and straight to transformers.js. Each figure is the median of
 * several runs after a warm-up.
 */
import { fileURLToPath } from "node:url"
import { NodeRuntime } from "@effect/platform-node"
import { AutoModelForCausalLM, AutoTokenizer, env, pipeline } from "@xenova/transformers"
import { Effect, Stream } from "effect"
import * as Local from "../src/Model/Local.js"

const RUNS = 7
const TEXTS = 256
const CALLERS = 32
const GENERATIONS = 8
const NEW_TOKENS = 64

const texts = Array.from(
  { length: TEXTS },
  (_, i) => `note ${i}: the ${["quiet", "bright", "ancient", "silver"][i % 4]} river carries stone number ${i * 7}`
)
const prompts = Array.from({ length: GENERATIONS }, (_, i) => `story ${i}: the river`)

const now = Effect.sync(() => performance.now())

/** Median wall time (ms) of `runs` runs of `effect`, after one warm-up run. */
const median = <E, R>(effect: Effect.Effect<unknown, E, R>, runs = RUNS) =>
  Effect.gen(function* () {
    yield* effect
    const times: Array<number> = []
    for (let i = 0; i < runs; i++) {
      const start = yield* now
      yield* effect
      times.push((yield* now) - start)
    }
    times.sort((a, b) => a - b)
    return times[Math.floor(times.length / 2)]!
  })

interface Row {
  readonly label: string
  readonly ms: number
  readonly rate: number
  readonly unit: string
}

const program = Effect.gen(function* () {
  const model = yield* Local.make({ maxBatchSize: 32, batchWindow: "2 millis" })

  // direct transformers.js, configured like the provider (offline, bundled models)
  env.allowRemoteModels = false
  env.localModelPath = fileURLToPath(Local.defaultModelPath)
  const extractor = yield* Effect.promise(() => pipeline("feature-extraction", "tiny-bert"))
  const tokenizer = yield* Effect.promise(() => AutoTokenizer.from_pretrained("tiny-gpt2"))
  const decoder = yield* Effect.promise(() => AutoModelForCausalLM.from_pretrained("tiny-gpt2"))

  const rows: Array<Row> = []
  const embedRow = (label: string, ms: number) => rows.push({ label, ms, rate: (TEXTS / ms) * 1000, unit: "texts/s" })
  const tokenRow = (label: string, ms: number) =>
    rows.push({ label, ms, rate: ((GENERATIONS * NEW_TOKENS) / ms) * 1000, unit: "tokens/s" })

  embedRow(
    "(a) embed: one call at a time, provider",
    yield* median(Effect.forEach(texts, (text) => model.embed({ texts: [text] }), { discard: true }))
  )
  embedRow(
    `(b) embed: ${CALLERS} concurrent callers, provider (batched)`,
    yield* median(
      Effect.forEach(texts, (text) => model.embed({ texts: [text] }), { concurrency: CALLERS, discard: true })
    )
  )
  embedRow(
    `(c) embed: one batched call of ${TEXTS}, transformers.js direct`,
    yield* median(Effect.promise(() => extractor(texts, { pooling: "mean", normalize: true })))
  )

  tokenRow(
    `generate: ${GENERATIONS} x ${NEW_TOKENS} tokens, provider`,
    yield* median(
      Effect.forEach(prompts, (prompt) => model.generate({ prompt, maxTokens: NEW_TOKENS }), { discard: true }),
      3
    )
  )
  tokenRow(
    `stream: ${GENERATIONS} x ${NEW_TOKENS} tokens, provider`,
    yield* median(
      Effect.forEach(prompts, (prompt) => Stream.runDrain(model.stream({ prompt, maxTokens: NEW_TOKENS })), {
        discard: true
      }),
      3
    )
  )
  tokenRow(
    `generate: ${GENERATIONS} x ${NEW_TOKENS} tokens, transformers.js direct`,
    yield* median(
      Effect.forEach(
        prompts,
        (prompt) => Effect.promise(() => decoder.generate(tokenizer(prompt).input_ids, { max_new_tokens: NEW_TOKENS })),
        { discard: true }
      ),
      3
    )
  )
  yield* Effect.promise(() => Promise.all([extractor.dispose(), decoder.dispose()]))

  const [a, b, c] = rows
  console.log(`| work | median ms | rate |\n|---|---:|---:|`)
  for (const row of rows) console.log(`| ${row.label} | ${row.ms.toFixed(1)} | ${row.rate.toFixed(0)} ${row.unit} |`)
  console.log(
    `\n(b) / (a) = ${(b!.rate / a!.rate).toFixed(2)}x   (b) / (c) = ${((b!.rate / c!.rate) * 100).toFixed(0)}%`
  )
})

NodeRuntime.runMain(Effect.scoped(program))
