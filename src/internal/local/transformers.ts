/**
 * The boundary with transformers.js 2.x: loading models, running generation and
 * embeddings, and turning its Promises into interruptible Effects.
 *
 * @internal
 */
import { access } from "node:fs/promises"
import * as path from "node:path"
import { setImmediate as nextMacrotask } from "node:timers/promises"
import * as Transformers from "@xenova/transformers"
import { Effect } from "effect"
import { ModelError } from "../../AiError.js"
import type { Message } from "../../Model.js"

// ---------------------------------------------------------------------------------------
// The parts of transformers.js used here, typed structurally

interface TensorLike {
  readonly data: ArrayLike<number> | BigInt64Array
  readonly dims: ReadonlyArray<number>
  normalize(p: number, dim: number): TensorLike
}

interface Encoded {
  readonly input_ids: TensorLike
  readonly attention_mask: TensorLike
  readonly token_type_ids?: TensorLike | undefined
}

interface TokenizerLike {
  (
    text: string | ReadonlyArray<string>,
    options?: { readonly padding?: boolean; readonly truncation?: boolean; readonly add_special_tokens?: boolean }
  ): Encoded
  decode(ids: ReadonlyArray<number>, options?: { readonly skip_special_tokens?: boolean }): string
  apply_chat_template(
    messages: ReadonlyArray<Message>,
    options: { readonly tokenize: false; readonly add_generation_prompt: boolean }
  ): string
  readonly chat_template: unknown
}

interface Beam {
  readonly output_token_ids: ReadonlyArray<number>
}

interface GenerationConfigLike {
  readonly max_new_tokens: number
  readonly do_sample: false
  readonly num_beams: 1
  readonly callback_function: (beams: ReadonlyArray<Beam>) => void
}

type LogitsProcessor = (inputIds: ReadonlyArray<number>, logits: { readonly data: Float32Array }) => void

interface PretrainedModelLike {
  readonly config: {
    readonly is_encoder_decoder?: boolean
    readonly eos_token_id?: number | ReadonlyArray<number> | null
    readonly bos_token_id?: number | null
  }
  readonly generation_config?: { readonly eos_token_id?: number | ReadonlyArray<number> | null }
  (inputs: Encoded): Promise<{ readonly last_hidden_state?: TensorLike }>
  generate(
    inputIds: TensorLike,
    config: GenerationConfigLike,
    logitsProcessor: ReadonlyArray<LogitsProcessor> | null
  ): Promise<ReadonlyArray<ReadonlyArray<number | bigint>>>
  runBeam(beam: unknown): Promise<unknown>
  dispose(): Promise<unknown>
}

interface PretrainedOptions {
  readonly quantized: boolean
  readonly local_files_only: boolean
  readonly cache_dir?: string | undefined
}

interface AutoClass<A> {
  from_pretrained(id: string, options: PretrainedOptions): Promise<A>
}

const lib = Transformers as unknown as {
  readonly env: {
    allowRemoteModels: boolean
    allowLocalModels: boolean
    localModelPath: string
    cacheDir: string | null
    remoteHost: string
  }
  readonly AutoConfig: AutoClass<{ readonly is_encoder_decoder?: boolean; readonly model_type?: string }>
  readonly AutoTokenizer: AutoClass<TokenizerLike>
  readonly AutoModel: AutoClass<PretrainedModelLike>
  readonly AutoModelForCausalLM: AutoClass<PretrainedModelLike>
  readonly AutoModelForSeq2SeqLM: AutoClass<PretrainedModelLike>
  readonly mean_pooling: (hidden: TensorLike, mask: TensorLike) => TensorLike
}

// ---------------------------------------------------------------------------------------
// Public (internal) shapes

/** What a loaded model is used for. */
export type Task = "text-generation" | "text2text-generation" | "feature-extraction"

/** What a model is loaded for: generation models are causal or encoder-decoder by their config. */
export type Purpose = "generation" | "embedding"

export interface GenerationInput {
  readonly messages: ReadonlyArray<Message>
  readonly maxNewTokens: number
  /** Greedy when absent or 0. */
  readonly temperature?: number | undefined
  readonly topP?: number | undefined
  /** Seed of the sampler (used only when sampling). */
  readonly seed: number
  readonly stop: ReadonlyArray<string>
}

export interface GenerationOutput {
  readonly text: string
  readonly finishReason: "stop" | "length"
  readonly inputTokens: number
  readonly outputTokens: number
}

export interface EmbeddingOutput {
  /** One unit-length vector per text, in order. */
  readonly vectors: ReadonlyArray<ReadonlyArray<number>>
  /** Tokens of each text (after truncation). */
  readonly tokens: ReadonlyArray<number>
}

/** One loaded model: a pool item. */
export interface Instance {
  readonly modelId: string
  readonly task: Task
  /**
   * Runs one generation. Interrupting the effect stops the generation at its next decoding
   * step and waits for it to stop. `onDelta` receives the decoded text as it grows.
   */
  readonly generate: (
    input: GenerationInput,
    onDelta?: ((text: string) => void) | undefined
  ) => Effect.Effect<GenerationOutput, ModelError>
  /** Mean-pooled, L2-normalised embeddings of a batch of texts. */
  readonly embed: (texts: ReadonlyArray<string>) => Effect.Effect<EmbeddingOutput, ModelError>
  /** Releases the model's sessions. */
  readonly dispose: Effect.Effect<void>
}

/** Loads one instance of a model for a purpose. */
export type Loader = (modelId: string, purpose: Purpose) => Effect.Effect<Instance, ModelError>

export interface LoadOptions {
  readonly provider: string
  /** Directory holding one folder per local model id. */
  readonly modelPath: string
  readonly allowRemoteModels: boolean
  readonly cacheDir?: string | undefined
  readonly remoteHost?: string | undefined
  readonly quantized: boolean
}

const HUGGING_FACE = "https://huggingface.co/"

// ---------------------------------------------------------------------------------------
// Environment

/**
 * transformers.js keeps its settings in one module-level `env` object: they apply to the
 * whole process, not to one provider.
 */
export const configureEnvironment = (options: LoadOptions): void => {
  lib.env.allowLocalModels = true
  lib.env.allowRemoteModels = options.allowRemoteModels
  lib.env.localModelPath = options.modelPath.endsWith(path.sep) ? options.modelPath : `${options.modelPath}${path.sep}`
  lib.env.remoteHost = options.remoteHost ?? HUGGING_FACE
  if (options.cacheDir !== undefined) lib.env.cacheDir = options.cacheDir
}

const messageOf = (u: unknown): string => (u instanceof Error ? u.message : String(u))

const unavailable = (options: LoadOptions, modelId: string, message: string, cause?: unknown): ModelError =>
  new ModelError({
    reason: "Unavailable",
    message,
    provider: options.provider,
    model: modelId,
    ...(cause === undefined ? {} : { cause })
  })

// ---------------------------------------------------------------------------------------
// Loading

/** The transformers.js loader: every instance gets its own sessions. */
export const transformersLoader =
  (options: LoadOptions): Loader =>
  (modelId, purpose) =>
    Effect.gen(function* () {
      const folder = path.join(options.modelPath, modelId)
      const cacheDir = options.cacheDir ?? lib.env.cacheDir ?? undefined
      if (!options.allowRemoteModels) {
        // Offline, a model is either in modelPath or downloaded earlier into the cache.
        const candidates = [folder, ...(cacheDir === undefined ? [] : [path.join(cacheDir, modelId)])]
        yield* Effect.firstSuccessOf(
          candidates.map((dir) => Effect.tryPromise(() => access(path.join(dir, "config.json"))))
        ).pipe(
          Effect.mapError((cause) =>
            unavailable(
              options,
              modelId,
              `model "${modelId}" not found: no config.json in ${candidates.join(" or ")} (remote models are disabled; set allowRemoteModels or modelPath)`,
              cause
            )
          )
        )
      }
      // Settings are process-wide and read during loading: assert ours for this load.
      configureEnvironment(options)
      const pretrained: PretrainedOptions = {
        quantized: options.quantized,
        local_files_only: !options.allowRemoteModels,
        cache_dir: options.cacheDir
      }
      const where = options.allowRemoteModels
        ? `${folder} or ${options.remoteHost ?? HUGGING_FACE}${modelId} (cache: ${cacheDir ?? "none"})`
        : folder
      return yield* Effect.tryPromise({
        try: () => loadInstance(modelId, purpose, pretrained),
        catch: (cause) =>
          unavailable(options, modelId, `cannot load model "${modelId}" from ${where}: ${messageOf(cause)}`, cause)
      })
    })

const loadInstance = async (modelId: string, purpose: Purpose, options: PretrainedOptions): Promise<Instance> => {
  const [config, tokenizer] = await Promise.all([
    lib.AutoConfig.from_pretrained(modelId, options),
    lib.AutoTokenizer.from_pretrained(modelId, options)
  ])
  if (purpose === "embedding") {
    const model = await lib.AutoModel.from_pretrained(modelId, options)
    return makeInstance(modelId, "feature-extraction", tokenizer, model)
  }
  if (config.is_encoder_decoder === true) {
    const model = await lib.AutoModelForSeq2SeqLM.from_pretrained(modelId, options)
    return makeInstance(modelId, "text2text-generation", tokenizer, model)
  }
  const model = await lib.AutoModelForCausalLM.from_pretrained(modelId, options)
  return makeInstance(modelId, "text-generation", tokenizer, model)
}

// ---------------------------------------------------------------------------------------
// Running

class Aborted extends Error {}
class StopSequence extends Error {}

/**
 * Runs a Promise-returning job as an Effect that, when interrupted, aborts the job and
 * waits until it has settled (so the model instance is idle before it goes back to the pool).
 */
const abortable = <A>(
  run: (signal: AbortSignal) => Promise<A>,
  onError: (error: unknown) => ModelError
): Effect.Effect<A, ModelError> =>
  Effect.async<A, ModelError>((resume) => {
    const controller = new AbortController()
    const settled = run(controller.signal).then(
      (value) => resume(Effect.succeed(value)),
      (error: unknown) => resume(Effect.fail(onError(error)))
    )
    return Effect.async<void>((done) => {
      controller.abort()
      void settled.then(() => done(Effect.void))
    })
  })

const toNumbers = (ids: ReadonlyArray<number | bigint>): Array<number> => ids.map(Number)

const eosIds = (model: PretrainedModelLike): ReadonlySet<number> => {
  const raw = model.generation_config?.eos_token_id ?? model.config.eos_token_id
  if (raw === null || raw === undefined) return new Set()
  return new Set(typeof raw === "number" ? [raw] : raw)
}

/** The prompt text: the model's chat template when it has one, a plain transcript otherwise. */
const promptOf = (tokenizer: TokenizerLike, messages: ReadonlyArray<Message>): string => {
  if (tokenizer.chat_template !== null && tokenizer.chat_template !== undefined) {
    return tokenizer.apply_chat_template(messages, { tokenize: false, add_generation_prompt: true })
  }
  const only = messages[0]
  if (messages.length === 1 && only !== undefined && only.role === "user") return only.content
  const lines = messages.map(
    (m) => `${m.role === "system" ? "System" : m.role === "user" ? "User" : "Assistant"}: ${m.content}`
  )
  return `${lines.join("\n")}\nAssistant:`
}

const mulberry32 = (seed: number): (() => number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * Seeded sampling as a logits processor: it draws the token itself (temperature, top-p)
 * and leaves only that one finite, so transformers.js's greedy step picks it. Its own
 * sampler uses `Math.random` and cannot be seeded.
 */
const seededSampler = (temperature: number, topP: number, seed: number): LogitsProcessor => {
  const random = mulberry32(seed)
  return (_inputIds, logits) => {
    const data = logits.data
    let max = Number.NEGATIVE_INFINITY
    for (let i = 0; i < data.length; i++) if (data[i]! > max) max = data[i]!
    const order: Array<number> = []
    const weights = new Float64Array(data.length)
    let total = 0
    for (let i = 0; i < data.length; i++) {
      const w = Math.exp((data[i]! - max) / temperature)
      weights[i] = w
      total += w
      if (w > 0) order.push(i)
    }
    order.sort((a, b) => weights[b]! - weights[a]!)
    let kept = 0
    let mass = 0
    for (const i of order) {
      kept += 1
      mass += weights[i]! / total
      if (mass >= topP) break
    }
    let draw = random() * mass * total
    let chosen = order[0] ?? 0
    for (let k = 0; k < kept; k++) {
      const i = order[k]!
      draw -= weights[i]!
      if (draw <= 0) {
        chosen = i
        break
      }
    }
    data.fill(Number.NEGATIVE_INFINITY)
    data[chosen] = 0
  }
}

/**
 * Incremental decoding, as text-generation-inference does it: decode the new tokens with a
 * few tokens of left context (so tokenizers that drop a leading space keep it) and return
 * what the context did not already produce; return nothing while the text ends in a partial
 * UTF-8 character. `start` is where the generated tokens begin in the sequences passed in.
 */
export const makeDetokenizer = (
  decode: (ids: ReadonlyArray<number>) => string,
  start: number,
  context: number
): ((ids: ReadonlyArray<number>) => string) => {
  let prefixOffset = Math.max(0, start - context)
  let readOffset = start
  return (ids) => {
    const prefixText = decode(ids.slice(prefixOffset, readOffset))
    const newText = decode(ids.slice(prefixOffset))
    if (newText.length <= prefixText.length || newText.endsWith("\uFFFD")) return ""
    prefixOffset = readOffset
    readOffset = ids.length
    return newText.slice(prefixText.length)
  }
}

/** How much of the text is safe to emit: never a possible start of a stop sequence. */
const emittable = (text: string, stop: ReadonlyArray<string>): number => {
  let end = text.length
  for (const s of stop) {
    for (let k = Math.min(s.length - 1, end); k > 0; k--) {
      if (text.endsWith(s.slice(0, k)) && text.length - k < end) {
        end = text.length - k
        break
      }
    }
  }
  return end
}

const firstStop = (text: string, stop: ReadonlyArray<string>, from: number): number => {
  let at = -1
  for (const s of stop) {
    const i = text.indexOf(s, from)
    if (i >= 0 && (at < 0 || i < at)) at = i
  }
  return at
}

const makeInstance = (modelId: string, task: Task, tokenizer: TokenizerLike, model: PretrainedModelLike): Instance => {
  const eos = eosIds(model)
  const seq2seq = task === "text2text-generation"

  const runGeneration = async (
    input: GenerationInput,
    signal: AbortSignal,
    onDelta: ((text: string) => void) | undefined
  ): Promise<GenerationOutput> => {
    const prompt = promptOf(tokenizer, input.messages)
    const encoded = tokenizer(prompt, { add_special_tokens: seq2seq })
    const inputTokens = encoded.input_ids.dims.at(-1) ?? 0
    // Decoder-only output repeats the prompt; encoder-decoder output starts with the decoder start token.
    const skip = seq2seq ? 1 : inputTokens
    let generated: ReadonlyArray<number> = []
    const track = input.stop.length > 0 || onDelta !== undefined
    const longestStop = input.stop.reduce((n, s) => Math.max(n, s.length), 0)
    const detokenizer = makeDetokenizer(
      (ids) => tokenizer.decode(ids, { skip_special_tokens: true }),
      skip,
      seq2seq ? 0 : 5
    )
    let text = ""
    let emitted = 0
    let stoppedAt = -1

    // ONNX Runtime runs each step synchronously inside process.nextTick: without a macrotask
    // yield, no timer (hence no timeout) can fire until the whole generation has ended.
    const view: PretrainedModelLike = Object.create(model)
    Object.defineProperty(view, "runBeam", {
      value: async (beam: unknown) => {
        await nextMacrotask()
        if (signal.aborted) throw new Aborted()
        return model.runBeam(beam)
      }
    })
    const config: GenerationConfigLike = {
      max_new_tokens: input.maxNewTokens,
      do_sample: false,
      num_beams: 1,
      callback_function: (beams) => {
        const beam = beams[0]
        if (beam === undefined) return
        const ids = toNumbers(beam.output_token_ids)
        generated = ids.slice(skip)
        if (!track) return
        const delta = detokenizer(ids)
        if (delta.length === 0) return
        const searchFrom = Math.max(0, text.length - longestStop)
        text += delta
        const stopAt = firstStop(text, input.stop, searchFrom)
        if (stopAt >= 0) {
          stoppedAt = stopAt
          if (onDelta !== undefined && stopAt > emitted) onDelta(text.slice(emitted, stopAt))
          emitted = Math.max(emitted, stopAt)
          throw new StopSequence()
        }
        const end = emittable(text, input.stop)
        if (onDelta !== undefined && end > emitted) {
          onDelta(text.slice(emitted, end))
          emitted = end
        }
      }
    }
    const processors =
      input.temperature !== undefined && input.temperature > 0
        ? [seededSampler(input.temperature, input.topP ?? 1, input.seed)]
        : null
    let stopped = false
    try {
      const sequences = await model.generate.call(view, encoded.input_ids, config, processors)
      const first = sequences[0]
      if (first !== undefined) generated = toNumbers(first.slice(skip))
    } catch (error) {
      if (!(error instanceof StopSequence)) throw error
      stopped = true
    }
    // The whole decode is authoritative; the incremental one is its prefix in practice.
    const full = tokenizer.decode(generated, { skip_special_tokens: true })
    const final = stopped ? text.slice(0, stoppedAt) : full.startsWith(text) ? full : text
    if (onDelta !== undefined && final.length > emitted) onDelta(final.slice(emitted))
    const last = generated[generated.length - 1]
    const endedOnEos = last !== undefined && eos.has(last)
    return {
      text: final,
      finishReason: stopped || endedOnEos ? "stop" : "length",
      inputTokens,
      outputTokens: generated.length
    }
  }

  const runEmbedding = async (texts: ReadonlyArray<string>): Promise<EmbeddingOutput> => {
    const encoded = tokenizer(texts, { padding: true, truncation: true })
    const output = await model(encoded)
    const hidden = output.last_hidden_state
    if (hidden === undefined) throw new Error(`model "${modelId}" returned no last_hidden_state`)
    const pooled = lib.mean_pooling(hidden, encoded.attention_mask).normalize(2, -1)
    const [rows = 0, dimensions = 0] = pooled.dims
    const data = pooled.data as Float32Array
    const vectors: Array<Array<number>> = []
    for (let r = 0; r < rows; r++) vectors.push(Array.from(data.subarray(r * dimensions, (r + 1) * dimensions)))
    const mask = encoded.attention_mask
    const width = mask.dims[1] ?? 0
    const tokens: Array<number> = []
    for (let r = 0; r < rows; r++) {
      let n = 0
      for (let c = 0; c < width; c++) n += Number(mask.data[r * width + c])
      tokens.push(n)
    }
    return { vectors, tokens }
  }

  const failure = (what: string) => (error: unknown) =>
    new ModelError({
      reason: "Unknown",
      message: `${what} failed on model "${modelId}": ${messageOf(error)}`,
      model: modelId,
      cause: error
    })

  return {
    modelId,
    task,
    generate: (input, onDelta) =>
      task === "feature-extraction"
        ? Effect.fail(
            new ModelError({
              reason: "InvalidRequest",
              message: `model "${modelId}" is loaded for embeddings, not generation`,
              model: modelId,
              field: "model"
            })
          )
        : abortable((signal) => runGeneration(input, signal, onDelta), failure("generation")),
    embed: (texts) =>
      task !== "feature-extraction"
        ? Effect.fail(
            new ModelError({
              reason: "InvalidRequest",
              message: `model "${modelId}" is loaded for generation, not embeddings`,
              model: modelId,
              field: "model"
            })
          )
        : abortable(() => runEmbedding(texts), failure("embedding")),
    dispose: Effect.promise(() => model.dispose()).pipe(Effect.asVoid)
  }
}
