/**
 * Should the local provider run inference on worker threads? Measures the bundled tiny
 * models in-process against two `worker_threads` workers (each with its own models), for
 * batched embeddings and for greedy generation, on this machine.
 *
 * Run: `npx tsx scripts/measure-workers.ts`. The figures and the decision are recorded in
 * docs/benchmarks/local.md.
 */
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { isMainThread, parentPort, Worker } from "node:worker_threads"
import { AutoModelForCausalLM, AutoTokenizer, env, pipeline } from "@xenova/transformers"

const here = path.dirname(fileURLToPath(import.meta.url))
env.allowRemoteModels = false
env.localModelPath = path.join(here, "..", "models") + path.sep

type Job =
  | { readonly kind: "embed"; readonly texts: Array<string> }
  | { readonly kind: "generate"; readonly prompt: string }

const GENERATE_TOKENS = 48

const load = async () => {
  const extractor = await pipeline("feature-extraction", "tiny-bert")
  const tokenizer = await AutoTokenizer.from_pretrained("tiny-gpt2")
  const model = await AutoModelForCausalLM.from_pretrained("tiny-gpt2")
  const run = async (job: Job): Promise<number> => {
    if (job.kind === "embed") {
      const out = await extractor(job.texts, { pooling: "mean", normalize: true })
      return out.dims[0] ?? 0
    }
    const { input_ids } = tokenizer(job.prompt)
    const out = (await model.generate(input_ids, {
      max_new_tokens: GENERATE_TOKENS,
      min_new_tokens: GENERATE_TOKENS
    })) as Array<Array<number>>
    return out[0]!.length
  }
  return run
}

if (!isMainThread) {
  const run = await load()
  parentPort!.on("message", async (message: { readonly id: number; readonly job: Job }) => {
    parentPort!.postMessage({ id: message.id, result: await run(message.job) })
  })
  parentPort!.postMessage({ ready: true })
} else {
  const texts = Array.from({ length: 256 }, (_, i) => `short text number ${i} about the quiet river and stone`)
  const embedJobs: Array<Job> = []
  for (let i = 0; i < texts.length; i += 32) embedJobs.push({ kind: "embed", texts: texts.slice(i, i + 32) })
  const generateJobs: Array<Job> = Array.from({ length: 16 }, (_, i) => ({
    kind: "generate",
    prompt: `story ${i}: the river`
  }))

  const timeIt = async (
    label: string,
    jobs: ReadonlyArray<Job>,
    runAll: (jobs: ReadonlyArray<Job>) => Promise<void>
  ) => {
    await runAll(jobs.slice(0, 2))
    const times: Array<number> = []
    for (let r = 0; r < 5; r++) {
      const start = performance.now()
      await runAll(jobs)
      times.push(performance.now() - start)
    }
    times.sort((a, b) => a - b)
    return { label, medianMs: times[2]! }
  }

  const inProcess = await load()
  const inProcessAll = async (jobs: ReadonlyArray<Job>) => {
    // two concurrent callers, as a pool of two in-process instances would allow
    let next = 0
    const worker = async () => {
      while (next < jobs.length) await inProcess(jobs[next++]!)
    }
    await Promise.all([worker(), worker()])
  }

  const workers = await Promise.all(
    [0, 1].map(
      () =>
        new Promise<Worker>((resolve) => {
          // Workers do not inherit tsx's loader: register it before importing this file.
          const bootstrap = `import(${JSON.stringify(import.meta.resolve("tsx/esm/api"))}).then((tsx) => {
            tsx.register()
            return import(${JSON.stringify(import.meta.url)})
          })`
          const w = new Worker(bootstrap, { eval: true })
          w.once("message", () => resolve(w))
        })
    )
  )
  let ids = 0
  const callWorker = (w: Worker, job: Job) =>
    new Promise<number>((resolve) => {
      const id = ids++
      const onMessage = (message: { readonly id: number; readonly result: number }) => {
        if (message.id !== id) return
        w.off("message", onMessage)
        resolve(message.result)
      }
      w.on("message", onMessage)
      w.postMessage({ id, job })
    })
  const workersAll = async (jobs: ReadonlyArray<Job>) => {
    let next = 0
    await Promise.all(
      workers.map(async (w) => {
        while (next < jobs.length) await callWorker(w, jobs[next++]!)
      })
    )
  }

  const rows = [
    await timeIt("embed 256 texts (8 batches of 32), in-process", embedJobs, inProcessAll),
    await timeIt("embed 256 texts (8 batches of 32), 2 worker threads", embedJobs, workersAll),
    await timeIt(`generate 16 x ${GENERATE_TOKENS} tokens, in-process`, generateJobs, inProcessAll),
    await timeIt(`generate 16 x ${GENERATE_TOKENS} tokens, 2 worker threads`, generateJobs, workersAll)
  ]
  console.log("| work | median of 5 (ms) |\n|---|---:|")
  for (const row of rows) console.log(`| ${row.label} | ${row.medianMs.toFixed(1)} |`)
  await Promise.all(workers.map((w) => w.terminate()))
}
