/**
 * Local provider throughput, side by side with transformers.js called directly.
 *
 *   npx tsx bench/local.ts [--quick]
 *
 * Embeddings/second for 256 short texts: (a) one call at a time through the provider,
 * (b) 32 concurrent callers through the provider (automatic batching), (c) one batched
 * call straight to the transformers.js `feature-extraction` pipeline, (d) 8 batches of 32
 * straight to the model (tokenizer, model, mean pooling: the work (b) does without the
 * library); on the bundled tiny-bert and on a MiniLM-sized encoder (384 hidden, 6 layers,
 * random weights, generated into a temp dir). Generation tokens/second on tiny-gpt2:
 * through the provider (generate, and stream drained), straight to `model.generate`, and
 * straight to a second session of the same model (an A/A control: the spread between two
 * identical variants is this machine's noise floor for every ratio printed). Then how late
 * a 50 ms deadline stops an endless generation. Variants alternate within each round
 * (so drift on a shared machine hits them alike); each figure is the median of the rounds
 * after a warm-up. The load average is printed before and after.
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises"
import { loadavg, tmpdir } from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { NodeRuntime } from "@effect/platform-node"
import { AutoModel, AutoModelForCausalLM, AutoTokenizer, env, mean_pooling, pipeline } from "@xenova/transformers"
import { Effect, Stream } from "effect"
import type { Service } from "../src/Model.js"
import * as Local from "../src/Model/Local.js"
import { buildEncoderFiles, generateModels } from "../scripts/generate-models.js"

const quick = process.argv.includes("--quick")
const RUNS = quick ? 5 : 11
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
const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}
const load = () =>
  loadavg()
    .map((n) => n.toFixed(2))
    .join(" ")

/**
 * Wall times (ms) of each variant over `runs` rounds, after a warm-up round. Every round
 * runs each variant once, starting from a different one each round (so drift and the cost
 * of following another variant hit them alike).
 */
const rounds = <E, R>(variants: ReadonlyArray<Effect.Effect<unknown, E, R>>, runs = RUNS) =>
  Effect.gen(function* () {
    for (const variant of variants) yield* variant
    const times = variants.map(() => [] as Array<number>)
    for (let i = 0; i < runs; i++) {
      for (let j = 0; j < variants.length; j++) {
        const k = (i + j) % variants.length
        const start = yield* now
        yield* variants[k]!
        times[k]!.push((yield* now) - start)
      }
    }
    return times
  })

const pct = (ratio: number) => `${(ratio * 100).toFixed(0)}%`

/** Rate of `x` relative to `y` (same work), the median over rounds of the paired ratios. */
const paired = (x: ReadonlyArray<number>, y: ReadonlyArray<number>): number => median(x.map((t, i) => y[i]! / t))

/** Rate of `x` relative to `y`: paired (the median of per-round ratios) and from the two medians. */
const ratio = (x: ReadonlyArray<number>, y: ReadonlyArray<number>): string =>
  `${pct(paired(x, y))} (medians: ${pct(median(y) / median(x))})`

interface Row {
  readonly label: string
  readonly ms: number
  readonly rate: number
  readonly unit: string
}

const writeFiles = (dir: string, files: ReadonlyMap<string, Uint8Array>) =>
  Effect.promise(async () => {
    for (const [file, contents] of files) {
      await mkdir(path.dirname(path.join(dir, file)), { recursive: true })
      await writeFile(path.join(dir, file), contents)
    }
  })

const useModels = (modelPath: string) => {
  env.allowRemoteModels = false
  env.localModelPath = `${modelPath}${path.sep}`
}

const embeddingRows = (label: string, model: Service, modelPath: string, modelId: string, runs: number) =>
  Effect.gen(function* () {
    useModels(modelPath)
    const extractor = yield* Effect.promise(() => pipeline("feature-extraction", modelId))
    const tokenizer = yield* Effect.promise(() => AutoTokenizer.from_pretrained(modelId))
    const encoder = yield* Effect.promise(() => AutoModel.from_pretrained(modelId))
    const manual = async (batch: Array<string>) => {
      const encoded = tokenizer(batch, { padding: true, truncation: true })
      const output = await encoder(encoded)
      return mean_pooling(output.last_hidden_state, encoded.attention_mask).normalize(2, -1)
    }
    const row = (work: string, ms: number): Row => ({
      label: `${work} [${label}]`,
      ms,
      rate: (TEXTS / ms) * 1000,
      unit: "texts/s"
    })
    const times = yield* rounds(
      [
        Effect.forEach(texts, (text) => model.embed({ texts: [text], model: modelId }), { discard: true }),
        Effect.forEach(texts, (text) => model.embed({ texts: [text], model: modelId }), {
          concurrency: CALLERS,
          discard: true
        }),
        Effect.promise(() => extractor(texts, { pooling: "mean", normalize: true })),
        Effect.promise(async () => {
          for (let i = 0; i < TEXTS; i += CALLERS) await manual(texts.slice(i, i + CALLERS))
        })
      ],
      runs
    )
    yield* Effect.promise(() => Promise.all([extractor.dispose(), encoder.dispose()]))
    const [a, b, c, d] = times.map(median)
    return {
      rows: [
        row("(a) embed: one call at a time, provider", a!),
        row(`(b) embed: ${CALLERS} concurrent callers, provider (batched)`, b!),
        row(`(c) embed: one batched call of ${TEXTS}, transformers.js pipeline`, c!),
        row(`(d) embed: ${TEXTS / CALLERS} batches of ${CALLERS}, transformers.js model direct`, d!)
      ],
      summary: `(b)/(a) = ${paired(times[1]!, times[0]!).toFixed(2)}x, (b)/(c) = ${ratio(times[1]!, times[2]!)}, (b)/(d) = ${ratio(times[1]!, times[3]!)}`
    }
  })

/** How long after its deadline a long generation returns, and whether it decoded anything after. */
const deadlineRows = (model: Service) =>
  Effect.gen(function* () {
    const lags: Array<number> = []
    for (let i = 0; i < (quick ? 5 : 15); i++) {
      const start = yield* now
      yield* model
        .generate({ prompt: "the river", maxTokens: 1_000_000 })
        .pipe(Effect.timeout("50 millis"), Effect.flip)
      lags.push((yield* now) - start - 50)
    }
    const sorted = [...lags].sort((x, y) => x - y)
    return { median: median(lags), max: sorted[sorted.length - 1]! }
  })

const program = Effect.gen(function* () {
  console.log(`load average before: ${load()} (Node ${process.version})`)
  const dir = yield* Effect.acquireRelease(
    Effect.promise(() => mkdtemp(path.join(tmpdir(), "orchestra-bench-"))),
    (d) => Effect.promise(() => rm(d, { recursive: true, force: true }))
  )
  yield* Effect.promise(() => generateModels(dir))
  yield* writeFiles(
    dir,
    buildEncoderFiles("minilm-sized-bert", { hidden: 384, heads: 12, ffn: 1536, layers: 6, positions: 128 })
  )
  const bundledPath = fileURLToPath(Local.defaultModelPath)
  const model = yield* Local.make({ maxBatchSize: 32 })
  const sized = yield* Local.make({ modelPath: dir, embeddingModel: "minilm-sized-bert", maxBatchSize: 32 })

  const rows: Array<Row> = []
  const tiny = yield* embeddingRows("tiny-bert", model, bundledPath, "tiny-bert", RUNS)
  const big = yield* embeddingRows("MiniLM-sized", sized, dir, "minilm-sized-bert", quick ? 3 : 5)
  rows.push(...tiny.rows, ...big.rows)

  useModels(bundledPath)
  const tokenizer = yield* Effect.promise(() => AutoTokenizer.from_pretrained("tiny-gpt2"))
  const decoder = yield* Effect.promise(() => AutoModelForCausalLM.from_pretrained("tiny-gpt2"))
  // The same direct call on a second session of the same model: an A/A control, how far two
  // identical variants drift apart on this machine in the same run.
  const control = yield* Effect.promise(() => AutoModelForCausalLM.from_pretrained("tiny-gpt2"))
  const tokenRow = (label: string, ms: number) =>
    rows.push({ label, ms, rate: ((GENERATIONS * NEW_TOKENS) / ms) * 1000, unit: "tokens/s" })
  const generation = yield* rounds(
    [
      Effect.forEach(prompts, (prompt) => model.generate({ prompt, maxTokens: NEW_TOKENS }), { discard: true }),
      Effect.forEach(prompts, (prompt) => Stream.runDrain(model.stream({ prompt, maxTokens: NEW_TOKENS })), {
        discard: true
      }),
      Effect.forEach(
        prompts,
        (prompt) => Effect.promise(() => decoder.generate(tokenizer(prompt).input_ids, { max_new_tokens: NEW_TOKENS })),
        { discard: true }
      ),
      Effect.forEach(
        prompts,
        (prompt) => Effect.promise(() => control.generate(tokenizer(prompt).input_ids, { max_new_tokens: NEW_TOKENS })),
        { discard: true }
      )
    ],
    quick ? 7 : 21
  )
  const [viaGenerate, viaStream, direct, again] = generation.map(median)
  tokenRow(`(e) generate: ${GENERATIONS} x ${NEW_TOKENS} tokens, provider`, viaGenerate!)
  tokenRow(`(f) stream: ${GENERATIONS} x ${NEW_TOKENS} tokens, provider`, viaStream!)
  tokenRow(`(g) generate: ${GENERATIONS} x ${NEW_TOKENS} tokens, transformers.js direct`, direct!)
  tokenRow(`(h) generate: ${GENERATIONS} x ${NEW_TOKENS} tokens, transformers.js direct, second session`, again!)
  yield* Effect.promise(() => Promise.all([decoder.dispose(), control.dispose()]))
  const deadline = yield* deadlineRows(model)

  console.log(`\n| work | median ms | rate |\n|---|---:|---:|`)
  for (const row of rows) console.log(`| ${row.label} | ${row.ms.toFixed(1)} | ${row.rate.toFixed(0)} ${row.unit} |`)
  console.log(`tiny-bert: ${tiny.summary}`)
  console.log(`MiniLM-sized: ${big.summary}`)
  console.log(
    `generation: (e)/(g) = ${ratio(generation[0]!, generation[2]!)}, stream (f)/(e) = ${ratio(generation[1]!, generation[0]!)}; A/A control (h)/(g) = ${ratio(generation[3]!, generation[2]!)}`
  )
  console.log(
    `deadline of 50 ms on an endless generation: returned ${deadline.median.toFixed(1)} ms late (median), ${deadline.max.toFixed(1)} ms (max)`
  )
  console.log(`load average after: ${load()}`)
})

NodeRuntime.runMain(Effect.scoped(program))
