/**
 * Local provider throughput.
 *
 *   npx tsx bench/local.ts
 *
 * Embeddings/second for 256 short texts: (a) one call at a time through the provider,
 * (b) 32 concurrent callers through the provider (automatic batching), (c) one batched
 * call straight to transformers.js; on the bundled tiny-bert and on a MiniLM-sized encoder
 * (384 hidden, 6 layers, random weights, generated into a temp dir) whose compute per text
 * is close to a real sentence-embedding model. Generation tokens/second on tiny-gpt2:
 * through the provider (generate and stream) and straight to transformers.js. Each figure
 * is the median of several runs after a warm-up.
 */
import { mkdtemp, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { NodeRuntime } from "@effect/platform-node"
import { AutoModelForCausalLM, AutoTokenizer, env, pipeline } from "@xenova/transformers"
import { Effect, Stream } from "effect"
import { buildEncoderFiles, generateModels } from "../scripts/generate-models.js"
import type { Service } from "../src/Model.js"
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

/**
 * Median wall time (ms) of each variant over `runs` rounds, after a warm-up round. Variants
 * alternate within every round, so drift on a shared machine hits them alike.
 */
const medians = <E, R>(variants: ReadonlyArray<Effect.Effect<unknown, E, R>>, runs = RUNS) =>
  Effect.gen(function* () {
    for (const variant of variants) yield* variant
    const times = variants.map(() => [] as Array<number>)
    for (let i = 0; i < runs; i++) {
      for (const [k, variant] of variants.entries()) {
        const start = yield* now
        yield* variant
        times[k]!.push((yield* now) - start)
      }
    }
    return times.map((t) => t.sort((a, b) => a - b)[Math.floor(t.length / 2)]!)
  })

interface Row {
  readonly label: string
  readonly ms: number
  readonly rate: number
  readonly unit: string
}

const MINILM = { hidden: 384, heads: 12, ffn: 1536, layers: 6, positions: 128 }

const writeFiles = (dir: string, files: ReadonlyMap<string, Uint8Array>) =>
  Effect.promise(async () => {
    const { mkdir, writeFile } = await import("node:fs/promises")
    for (const [file, contents] of files) {
      await mkdir(path.dirname(path.join(dir, file)), { recursive: true })
      await writeFile(path.join(dir, file), contents)
    }
  })

const embeddingRows = (label: string, model: Service, modelPath: string, modelId: string, runs: number) =>
  Effect.gen(function* () {
    env.allowRemoteModels = false
    env.localModelPath = `${modelPath}${path.sep}`
    const extractor = yield* Effect.promise(() => pipeline("feature-extraction", modelId))
    const row = (work: string, ms: number): Row => ({
      label: `${work} [${label}]`,
      ms,
      rate: (TEXTS / ms) * 1000,
      unit: "texts/s"
    })
    const [a, b, c] = yield* medians(
      [
        Effect.forEach(texts, (text) => model.embed({ texts: [text], model: modelId }), { discard: true }),
        Effect.forEach(texts, (text) => model.embed({ texts: [text], model: modelId }), {
          concurrency: CALLERS,
          discard: true
        }),
        Effect.promise(() => extractor(texts, { pooling: "mean", normalize: true }))
      ],
      runs
    )
    const one = row("(a) embed: one call at a time, provider", a!)
    const many = row(`(b) embed: ${CALLERS} concurrent callers, provider (batched)`, b!)
    const direct = row(`(c) embed: one batched call of ${TEXTS}, transformers.js direct`, c!)
    yield* Effect.promise(() => extractor.dispose())
    return [one, many, direct] as const
  })

const program = Effect.gen(function* () {
  const dir = yield* Effect.acquireRelease(
    Effect.promise(() => mkdtemp(path.join(tmpdir(), "orchestra-bench-"))),
    (d) => Effect.promise(() => rm(d, { recursive: true, force: true }))
  )
  yield* Effect.promise(() => generateModels(dir))
  yield* writeFiles(dir, buildEncoderFiles("minilm-sized-bert", MINILM))
  const bundledPath = fileURLToPath(Local.defaultModelPath)
  const model = yield* Local.make({ maxBatchSize: 32 })
  const sized = yield* Local.make({
    modelPath: dir,
    embeddingModel: "minilm-sized-bert",
    maxBatchSize: 32
  })

  const rows: Array<Row> = []
  const tiny = yield* embeddingRows("tiny-bert", model, bundledPath, "tiny-bert", RUNS)
  const big = yield* embeddingRows("MiniLM-sized", sized, dir, "minilm-sized-bert", 3)
  rows.push(...tiny, ...big)

  env.allowRemoteModels = false
  env.localModelPath = `${bundledPath}${path.sep}`
  const tokenizer = yield* Effect.promise(() => AutoTokenizer.from_pretrained("tiny-gpt2"))
  const decoder = yield* Effect.promise(() => AutoModelForCausalLM.from_pretrained("tiny-gpt2"))
  const tokenRow = (label: string, ms: number) =>
    rows.push({ label, ms, rate: ((GENERATIONS * NEW_TOKENS) / ms) * 1000, unit: "tokens/s" })

  const [viaGenerate, viaStream, direct] = yield* medians(
    [
      Effect.forEach(prompts, (prompt) => model.generate({ prompt, maxTokens: NEW_TOKENS }), { discard: true }),
      Effect.forEach(prompts, (prompt) => Stream.runDrain(model.stream({ prompt, maxTokens: NEW_TOKENS })), {
        discard: true
      }),
      Effect.forEach(
        prompts,
        (prompt) => Effect.promise(() => decoder.generate(tokenizer(prompt).input_ids, { max_new_tokens: NEW_TOKENS })),
        { discard: true }
      )
    ],
    5
  )
  tokenRow(`generate: ${GENERATIONS} x ${NEW_TOKENS} tokens, provider`, viaGenerate!)
  tokenRow(`stream: ${GENERATIONS} x ${NEW_TOKENS} tokens, provider`, viaStream!)
  tokenRow(`generate: ${GENERATIONS} x ${NEW_TOKENS} tokens, transformers.js direct`, direct!)
  yield* Effect.promise(() => decoder.dispose())

  console.log(`| work | median ms | rate |\n|---|---:|---:|`)
  for (const row of rows) console.log(`| ${row.label} | ${row.ms.toFixed(1)} | ${row.rate.toFixed(0)} ${row.unit} |`)
  for (const [label, [a, b, c]] of [
    ["tiny-bert", tiny],
    ["MiniLM-sized", big]
  ] as const) {
    console.log(
      `${label}: (b) / (a) = ${(b.rate / a.rate).toFixed(2)}x, (b) / (c) = ${((b.rate / c.rate) * 100).toFixed(0)}%`
    )
  }
})

NodeRuntime.runMain(Effect.scoped(program))
