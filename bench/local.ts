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
 * random weights, written into a temp dir by a child process). Generation tokens/second
 * on tiny-gpt2, 8 prompts x 64 new tokens: (e) `generate` and (f) `stream` through a
 * provider running on the very session that (g) calls with `model.generate` directly,
 * (h) direct calls on a second session of the same model (the spread between two identical
 * variants: this machine's noise floor) and (i) the provider on its own session; with the
 * GC time that landed in each. Then how late a 50 ms deadline stops an endless generation.
 * Variants rotate within each round (so drift on a shared machine hits them alike), each
 * followed by an untimed event-loop turn; every ratio is given paired (the median of the
 * per-round ratios) and from the medians. The load average is printed before and after.
 */
import { execFile } from "node:child_process"
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises"
import { loadavg, tmpdir } from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { PerformanceObserver } from "node:perf_hooks"
import { NodeRuntime } from "@effect/platform-node"
import * as Transformers from "@xenova/transformers"
import { AutoModel, AutoModelForCausalLM, AutoTokenizer, env, mean_pooling, pipeline } from "@xenova/transformers"
import { Clock, Effect, Stream } from "effect"
import type { Service } from "../src/Model.js"
import * as Local from "../src/Model/Local.js"
import { makeInstance, type PretrainedModelLike } from "../src/Model/local/instance.js"
import { makeWith } from "../src/Model/local/provider.js"
import type { TokenizerLike, Transformers as Lib } from "../src/Model/local/runtime.js"
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
    const gc = variants.map(() => 0)
    for (let i = 0; i < runs; i++) {
      for (let j = 0; j < variants.length; j++) {
        const k = (i + j) % variants.length
        const gcBefore = gcMillis
        const start = yield* now
        yield* variants[k]!
        times[k]!.push((yield* now) - start)
        // An event-loop turn (untimed) after every variant: work a variant deferred (GC tasks)
        // runs here rather than inside the next one, and the GC entries of this one arrive.
        yield* turn
        gc[k]! += gcMillis - gcBefore
      }
    }
    return Object.assign(times, { gc })
  })

let gcMillis = 0
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) gcMillis += entry.duration
}).observe({ entryTypes: ["gc"] })
const turn = Effect.promise(() => new Promise<void>((resolve) => setImmediate(resolve)))

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

const writeFiles = async (dir: string, files: ReadonlyMap<string, Uint8Array>) => {
  for (const [file, contents] of files) {
    await mkdir(path.dirname(path.join(dir, file)), { recursive: true })
    await writeFile(path.join(dir, file), contents)
  }
}

/**
 * Writes the tiny models and the MiniLM-sized encoder into `dir` in a child process. Built
 * here, its ~100 MB of weights left garbage in this process's heap, and the major GCs it
 * caused ran whenever a variant returned to the event loop (the provider does, direct calls
 * do not): 0.7-1.2 s of GC landed on the provider's rounds against 0.06-0.14 s on direct's.
 */
const writeModels = (dir: string) =>
  Effect.callback<void, Error>((resume) => {
    const child = execFile(
      process.execPath,
      [...process.execArgv, fileURLToPath(import.meta.url), "--write-models", dir],
      (error) => resume(error ? Effect.fail(error) : Effect.void)
    )
    return Effect.sync(() => child.kill())
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
  yield* writeModels(dir)
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
  // A second session of the same model: two sessions of one model, called the same way, ran
  // up to 1.4x apart (the first one loaded here being the fast one, at any load), so (e)
  // and (f) run on the very session (g) calls, and (h) shows the spread between sessions.
  const control = yield* Effect.promise(() => AutoModelForCausalLM.from_pretrained("tiny-gpt2"))
  const clock = yield* Clock.Clock
  const onDecoder = yield* makeWith(
    { modelPath: bundledPath, name: "local-shared-session" },
    {
      instrument: (real) => (modelId, purpose) =>
        purpose === "generation"
          ? Effect.succeed(
              makeInstance({
                lib: Transformers as unknown as Lib,
                modelId,
                task: "text-generation",
                tokenizer: tokenizer as unknown as TokenizerLike,
                model: decoder as unknown as PretrainedModelLike,
                clock
              })
            )
          : real(modelId, purpose)
    }
  )
  const tokenRow = (label: string, ms: number) =>
    rows.push({ label, ms, rate: ((GENERATIONS * NEW_TOKENS) / ms) * 1000, unit: "tokens/s" })
  const direct = (session: typeof decoder) =>
    Effect.forEach(
      prompts,
      (prompt) => Effect.promise(() => session.generate(tokenizer(prompt).input_ids, { max_new_tokens: NEW_TOKENS })),
      { discard: true }
    )
  const generation = yield* rounds(
    [
      Effect.forEach(prompts, (prompt) => onDecoder.generate({ prompt, maxTokens: NEW_TOKENS }), { discard: true }),
      Effect.forEach(prompts, (prompt) => Stream.runDrain(onDecoder.stream({ prompt, maxTokens: NEW_TOKENS })), {
        discard: true
      }),
      direct(decoder),
      direct(control),
      Effect.forEach(prompts, (prompt) => model.generate({ prompt, maxTokens: NEW_TOKENS }), { discard: true })
    ],
    quick ? 7 : 21
  )
  const [viaGenerate, viaStream, viaDirect, viaControl, viaOwn] = generation.map(median)
  const run = `${GENERATIONS} x ${NEW_TOKENS} tokens`
  tokenRow(`(e) generate: ${run}, provider, on the session (g) uses`, viaGenerate!)
  tokenRow(`(f) stream: ${run}, provider, on the session (g) uses`, viaStream!)
  tokenRow(`(g) generate: ${run}, transformers.js direct`, viaDirect!)
  tokenRow(`(h) generate: ${run}, transformers.js direct, a second session`, viaControl!)
  tokenRow(`(i) generate: ${run}, provider, its own session`, viaOwn!)
  yield* Effect.promise(() => control.dispose())
  const deadline = yield* deadlineRows(model)

  console.log(`\n| work | median ms | rate |\n|---|---:|---:|`)
  for (const row of rows) console.log(`| ${row.label} | ${row.ms.toFixed(1)} | ${row.rate.toFixed(0)} ${row.unit} |`)
  console.log(`tiny-bert: ${tiny.summary}`)
  console.log(`MiniLM-sized: ${big.summary}`)
  console.log(
    `generation: (e)/(g) = ${ratio(generation[0]!, generation[2]!)}, stream (f)/(e) = ${ratio(generation[1]!, generation[0]!)}; sessions: (h)/(g) = ${ratio(generation[3]!, generation[2]!)}, (i)/(g) = ${ratio(generation[4]!, generation[2]!)}, (i)/(h) = ${ratio(generation[4]!, generation[3]!)}`
  )
  console.log(
    `GC during the generation rounds: ${generation.gc.map((ms, k) => `(${"efghi"[k]}) ${ms.toFixed(0)} ms`).join(", ")}`
  )
  console.log(
    `deadline of 50 ms on an endless generation: returned ${deadline.median.toFixed(1)} ms late (median), ${deadline.max.toFixed(1)} ms (max)`
  )
  console.log(`load average after: ${load()}`)
})

const writeTo = process.argv.indexOf("--write-models")
if (writeTo >= 0) {
  const dir = process.argv[writeTo + 1]!
  await generateModels(dir)
  await writeFiles(
    dir,
    buildEncoderFiles("minilm-sized-bert", { hidden: 384, heads: 12, ffn: 1536, layers: 6, positions: 128 })
  )
} else {
  NodeRuntime.runMain(Effect.scoped(program))
}
