/**
 * One loaded model (a pool item): generation and embeddings over transformers.js, with its
 * Promises turned into interruptible Effects.
 *
 * @internal
 */
import { setImmediate as nextMacrotask } from "node:timers/promises"
import { type Clock, Effect } from "effect"
import { ModelError, ShuttingDownError } from "../../AiError.js"
import * as Input from "../../Input.js"
import type { Message } from "../../Model.js"
import { type LogitsProcessor, makeDetokenizer, makeStopMatcher, promptOf, seededSampler } from "./decoding.js"
import type { Encoded, TokenizerLike, Transformers } from "./runtime.js"
import { spellingOf } from "./tokenizer.js"

export interface TensorLike {
  readonly data: ArrayLike<number> | BigInt64Array
  readonly dims: ReadonlyArray<number>
  normalize(p: number, dim: number): TensorLike
}

interface Beam {
  readonly output_token_ids: ReadonlyArray<number | bigint>
}

interface GenerationConfigLike {
  readonly max_new_tokens: number
  readonly do_sample: false
  readonly num_beams: 1
  readonly callback_function?: ((beams: ReadonlyArray<Beam>) => void) | undefined
}

export interface PretrainedModelLike {
  readonly config: {
    readonly is_encoder_decoder?: boolean
    readonly eos_token_id?: number | ReadonlyArray<number> | null
    readonly n_positions?: number
    readonly n_ctx?: number
    readonly max_position_embeddings?: number
    readonly max_encoder_position_embeddings?: number
    readonly max_decoder_position_embeddings?: number
    readonly max_source_positions?: number
    readonly max_target_positions?: number
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

/** What a loaded model is used for. */
export type Task = "text-generation" | "text2text-generation" | "feature-extraction"

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

/**
 * A generation's input with its prompt tokenized and checked against the model's context: made
 * before an instance is taken, so a prompt the model cannot read is refused without holding one.
 */
export interface PreparedGeneration {
  readonly input: GenerationInput
  readonly inputIds: TensorLike
  readonly inputTokens: number
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

export interface GenerateOptions {
  /** Receives the decoded text as it grows. */
  readonly onDelta?: ((text: string) => void) | undefined
  /** Aborted by the provider's shutdown: the generation stops and fails with the signal's reason. */
  readonly halt?: AbortSignal | undefined
  /**
   * Asked before each decoding step: a Promise while the consumer of `onDelta` lags, which the
   * step waits for (interrupting the generation, or `halt`, still stops it meanwhile).
   */
  readonly pace?: (() => Promise<void> | undefined) | undefined
}

/** One loaded model: a pool item. */
export interface Instance {
  readonly modelId: string
  readonly task: Task
  /**
   * Applies the chat template and tokenizes the prompt, refusing one the model cannot read
   * (`InvalidRequest`, field `messages`). Uses only the tokenizer: callable without holding
   * the instance, and its result runs on any instance of the same model.
   */
  readonly prepare: (input: GenerationInput) => Effect.Effect<PreparedGeneration, ModelError>
  /**
   * Runs one generation. Interrupting the effect stops the generation at its next decoding
   * step and waits for it to stop, so the instance is idle when it goes back to the pool.
   */
  readonly generate: (
    prepared: PreparedGeneration,
    options?: GenerateOptions
  ) => Effect.Effect<GenerationOutput, ModelError | ShuttingDownError>
  /** Mean-pooled, L2-normalised embeddings of a batch of texts. */
  readonly embed: (texts: ReadonlyArray<string>) => Effect.Effect<EmbeddingOutput, ModelError>
  /** Releases the model's sessions. */
  readonly dispose: Effect.Effect<void>
}

/**
 * ONNX Runtime runs each decoding step synchronously (inside `process.nextTick`), so while
 * a generation runs no timer fires and no other fiber is scheduled. The generation yields
 * a macrotask once per slice of steps: that is when a deadline can fire and interrupt it,
 * and when a stream's consumer receives the text decoded so far. A slice is at least
 * `SLICE_MILLIS` (read on Effect's `Clock`), and `YIELD_SHARE` times what a yield has been
 * costing, up to `MAX_SLICE_MILLIS`: on an idle machine a yield costs microseconds, but on
 * an oversubscribed one each yield is a chance for the OS to run another process, and
 * yields measured ~2 ms each (bench/local.ts under load 13 on 2 cores), so fixed 4 ms slices
 * lost a third of the tokens/s there. Under a `TestClock` (time does not move) it yields
 * every `STEPS_PER_YIELD` steps. With a real model a step takes longer than a slice, so it
 * yields between any two tokens.
 */
/**
 * Embeddings read a text's first `model_max_length` tokens, but tokenizing runs synchronously
 * over the whole text first (~0.5 s a million characters, where no deadline can fire). A text
 * longer than `EMBED_FIRST_CHARS` characters a position is cut, before the batch is tokenized,
 * to a prefix whose tokens already fill the positions; searched up to `EMBED_MOST_CHARS` a position.
 */
const EMBED_FIRST_CHARS = 16
const EMBED_MOST_CHARS = 256

/**
 * A prompt longer than `PROMPT_FIRST_CHARS` characters a token the model reads, whose tokenizer
 * bounds no token's characters, has the tokens of its first that many characters counted first.
 */
const PROMPT_FIRST_CHARS = 16

/** A space, tab or line break: where every tokenizer splits words. */
const isSpace = (code: number): boolean => code === 32 || code === 10 || code === 9 || code === 13

/**
 * Where `text` may be cut near `end` without changing the tokens before the cut: before a space,
 * tab or line break in the half before `end`, else at `end` (not inside a surrogate pair).
 */
const cutNear = (text: string, end: number): number => {
  let space = -1
  for (const c of [" ", "\n", "\t", "\r"]) space = Math.max(space, text.lastIndexOf(c, end - 1))
  if (space >= end / 2) return space
  const code = text.charCodeAt(end - 1)
  return code >= 0xd800 && code <= 0xdbff ? end - 1 : end
}

const SLICE_MILLIS = 4
const MAX_SLICE_MILLIS = 50
const YIELD_SHARE = 20
const STEPS_PER_YIELD = 32

class StopSequence extends Error {}
class Aborted extends Error {}
/** A prompt longer than the model's context: refused before the (synchronous) prompt pass. */
class ContextExceeded extends Error {}
/**
 * A conversation the model's chat template refuses (`raise_exception`: a system message to
 * Gemma, roles that do not alternate): the request's fault, which the breaker must not count.
 */
class TemplateRefused extends Error {}

const positive = (n: unknown): number | undefined =>
  typeof n === "number" && Number.isInteger(n) && n > 0 ? n : undefined

/** The positions a model reads (its context), from its config; `undefined` when it does not say. */
const contextOf = (config: PretrainedModelLike["config"]): number | undefined =>
  positive(config.n_positions ?? config.n_ctx ?? config.max_position_embeddings)

/**
 * An encoder-decoder's positions, each side's own where its config names them apart (LED's
 * `max_encoder_position_embeddings`, Marian's `max_source_positions`), else its context.
 */
const sidesOf = (
  config: PretrainedModelLike["config"]
): { readonly encoder: number | undefined; readonly decoder: number | undefined } => {
  const context = contextOf(config)
  return {
    encoder: positive(config.max_encoder_position_embeddings ?? config.max_source_positions) ?? context,
    decoder: positive(config.max_decoder_position_embeddings ?? config.max_target_positions) ?? context
  }
}

/** transformers.js keeps generated ids as numbers; convert only if a model hands back bigints. */
const toNumbers = (ids: ReadonlyArray<number | bigint>): ReadonlyArray<number> =>
  ids.length > 0 && typeof ids[0] === "bigint" ? ids.map(Number) : (ids as ReadonlyArray<number>)

const eosIds = (model: PretrainedModelLike): ReadonlySet<number> => {
  const raw = model.generation_config?.eos_token_id ?? model.config.eos_token_id
  if (raw === null || raw === undefined) return new Set()
  return new Set(typeof raw === "number" ? [raw] : raw)
}

/**
 * A Promise-returning job as an Effect that, when interrupted, aborts the job and waits
 * until it has settled (so the model instance is idle before it goes back to the pool).
 */
const abortable = <A, E>(
  run: (signal: AbortSignal) => Promise<A>,
  onError: (error: unknown) => E
): Effect.Effect<A, E> =>
  Effect.callback<A, E>((resume, signal) => {
    const settled = run(signal).then(
      (value) => resume(Effect.succeed(value)),
      (error: unknown) => resume(Effect.fail(onError(error)))
    )
    return Effect.promise(() => settled)
  })

/**
 * The text of generated ids, as the instance decodes them (whole, and piece by piece while
 * streaming). Without the tokenizer's space clean-up (GPT-2's `clean_up_tokenization_spaces`,
 * which turns " ," into ","): it rewrites text already decoded when the next token arrives,
 * so a stream lost the punctuation (" the river  and") and disagreed with `generate`. The
 * text is what the tokens spell.
 */
export const decoderOf =
  (tokenizer: TokenizerLike) =>
  (ids: ReadonlyArray<number>): string =>
    tokenizer.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false })

export interface InstanceParts {
  readonly lib: Transformers
  readonly modelId: string
  readonly task: Task
  readonly tokenizer: TokenizerLike
  readonly model: PretrainedModelLike
  readonly clock: Clock.Clock
}

export const makeInstance = ({ lib, modelId, task, tokenizer, model, clock }: InstanceParts): Instance => {
  const eos = eosIds(model)
  const seq2seq = task === "text2text-generation"
  const context = contextOf(model.config)
  // The prompt's positions (a decoder-only model's answer shares them) and the answer's.
  const { encoder: promptPositions, decoder: answerPositions } = seq2seq
    ? sidesOf(model.config)
    : { encoder: context, decoder: context }
  // Embeddings truncate at the tokenizer's model_max_length, which hub tokenizers often leave
  // out (transformers.js then truncates to NaN: "Invalid array length") or set to 1e30 (no
  // bound: the model then reads past its positions inside ONNX); either way one long text
  // failed its whole batch. They truncate at the model's positions instead.
  const maxLength = tokenizer.model_max_length
  if (!(typeof maxLength === "number" && maxLength > 0 && maxLength <= (context ?? maxLength))) {
    tokenizer.model_max_length = context ?? Number.POSITIVE_INFINITY
  }
  const decode = decoderOf(tokenizer)
  // Tokens a prompt may have: a decoder-only model needs a position left for its answer.
  const readable = promptPositions === undefined ? undefined : seq2seq ? promptPositions : promptPositions - 1
  // Tokenizing runs synchronously (~2 s for a million characters, with no deadline able to fire):
  // a prompt with more characters than `readable` tokens can spell is refused before it; with a
  // tokenizer that bounds no token's characters, one whose first characters have too many tokens.
  const spelling = readable === undefined ? undefined : spellingOf(tokenizer)
  // What a yield to the event loop has been costing this instance (ms, moving average).
  let yieldCost = 0

  const prepareSync = (input: GenerationInput): PreparedGeneration => {
    let prompt: string
    try {
      prompt = promptOf(tokenizer, input.messages)
    } catch (error) {
      throw new TemplateRefused(
        `the chat template of model "${modelId}" refused the messages: ${Input.thrownMessage(error)}`
      )
    }
    if (spelling !== undefined && readable !== undefined && prompt.length > readable * spelling.perToken) {
      const spelled = spelling.spelled(prompt)
      if (spelled > readable * spelling.perToken) {
        const swallowed = spelled === prompt.length ? "" : ` (${spelled} besides the spaces an added token strips)`
        throw new ContextExceeded(
          `the prompt has ${prompt.length} characters${swallowed}, more than the ${readable} tokens model "${modelId}" reads${seq2seq ? "" : " (its answer included)"} can spell: its longest token has ${spelling.perToken} characters`
        )
      }
    }
    if (spelling === undefined && readable !== undefined && prompt.length > readable * PROMPT_FIRST_CHARS) {
      // No bound on a token's characters: the tokens of the prompt's first characters, cut between
      // words (they are then the whole prompt's first tokens), may already be too many.
      const end = cutNear(prompt, readable * PROMPT_FIRST_CHARS)
      if (isSpace(prompt.charCodeAt(end))) {
        const first = tokenizer(prompt.slice(0, end), { add_special_tokens: false }).input_ids.dims.at(-1) ?? 0
        if (first > readable) {
          throw new ContextExceeded(
            `the prompt's first ${end} characters have ${first} tokens; model "${modelId}" reads at most ${promptPositions}${seq2seq ? "" : ", its answer included"}`
          )
        }
      }
    }
    const encoded = tokenizer(prompt, { add_special_tokens: seq2seq })
    const inputTokens = encoded.input_ids.dims.at(-1) ?? 0
    // The prompt pass is one synchronous step that grows with the square of the prompt, and a
    // model reading past its positions fails inside ONNX: a prompt that does not fit is refused
    // here; a decoder-only model generates at most what is left of its context (so it needs a
    // position left), an encoder reads the prompt alone.
    if (promptPositions !== undefined && (seq2seq ? inputTokens > promptPositions : inputTokens >= promptPositions)) {
      throw new ContextExceeded(
        `the prompt has ${inputTokens} tokens; model "${modelId}" reads at most ${promptPositions}${seq2seq ? "" : ", its answer included"}`
      )
    }
    return { input, inputIds: encoded.input_ids, inputTokens }
  }

  const runGeneration = async (
    { input, inputIds, inputTokens }: PreparedGeneration,
    signal: AbortSignal,
    options: GenerateOptions | undefined
  ): Promise<GenerationOutput> => {
    const onDelta = options?.onDelta
    const halt = options?.halt
    const pace = options?.pace
    if (halt?.aborted) throw halt.reason
    // The answer is cut (finish reason "length") where the positions end: a decoder-only model's
    // at what the prompt left of its context, an encoder-decoder's at its decoder's positions, the
    // first of which its start token takes. Past them the model would read positions it has not got.
    const maxNewTokens =
      answerPositions === undefined
        ? input.maxNewTokens
        : Math.min(input.maxNewTokens, answerPositions - (seq2seq ? 1 : inputTokens))
    // Decoder-only output repeats the prompt; encoder-decoder output starts with the decoder start token.
    const skip = seq2seq ? 1 : inputTokens
    // The ids of the sequence so far (prompt included for decoder-only models), as of the last step.
    let sequence: ReadonlyArray<number | bigint> = []
    const track = input.stop.length > 0 || onDelta !== undefined
    const stops = makeStopMatcher(input.stop)
    const detokenizer = makeDetokenizer(decode, skip, seq2seq ? 0 : 5)
    let text = ""
    let emitted = 0
    let stoppedAt = -1

    let sliceStart = clock.currentTimeMillisUnsafe()
    const slice = () => Math.min(MAX_SLICE_MILLIS, Math.max(SLICE_MILLIS, YIELD_SHARE * yieldCost))
    let sliceMillis = slice()
    let steps = 0
    // The first text goes out at once (a stream's time to first token), not at the end of a slice.
    let yieldNext = false
    // Settles when `wait` does, or when the generation is stopped meanwhile.
    const heldBack = (wait: Promise<void>): Promise<void> =>
      new Promise<void>((resolve) => {
        const done = () => {
          signal.removeEventListener("abort", done)
          halt?.removeEventListener("abort", done)
          resolve()
        }
        // A signal aborted already fires no event.
        if (signal.aborted || halt?.aborted) return resolve()
        signal.addEventListener("abort", done)
        halt?.addEventListener("abort", done)
        wait.then(done)
      })
    const view: PretrainedModelLike = Object.create(model)
    Object.defineProperty(view, "runBeam", {
      value: (beam: unknown): Promise<unknown> => {
        steps += 1
        const wait = pace?.()
        if (wait !== undefined) {
          return heldBack(wait).then(() => {
            // The wait was a yield: a new slice starts.
            yieldNext = false
            sliceStart = clock.currentTimeMillisUnsafe()
            steps = 0
            if (signal.aborted) throw new Aborted()
            if (halt?.aborted) throw halt.reason
            return model.runBeam(beam)
          })
        }
        const now = clock.currentTimeMillisUnsafe()
        if (!yieldNext && now - sliceStart < sliceMillis && steps < STEPS_PER_YIELD) {
          if (signal.aborted) return Promise.reject(new Aborted())
          if (halt?.aborted) return Promise.reject(halt.reason)
          return model.runBeam(beam)
        }
        yieldNext = false
        return nextMacrotask().then(() => {
          sliceStart = clock.currentTimeMillisUnsafe()
          yieldCost = 0.8 * yieldCost + 0.2 * (sliceStart - now)
          sliceMillis = slice()
          steps = 0
          if (signal.aborted) throw new Aborted()
          if (halt?.aborted) throw halt.reason
          return model.runBeam(beam)
        })
      }
    })
    const config: GenerationConfigLike = {
      max_new_tokens: maxNewTokens,
      do_sample: false,
      num_beams: 1,
      callback_function: track
        ? (beams) => {
            const beam = beams[0]
            if (beam === undefined) return
            sequence = beam.output_token_ids
            const delta = detokenizer(toNumbers(sequence))
            if (delta.length === 0) return
            text += delta
            const stopAt = stops.push(delta)
            if (stopAt >= 0) {
              stoppedAt = stopAt
              if (onDelta !== undefined && stopAt > emitted) onDelta(text.slice(emitted, stopAt))
              emitted = Math.max(emitted, stopAt)
              throw new StopSequence()
            }
            const end = stops.emittable()
            if (onDelta !== undefined && end > emitted) {
              if (emitted === 0) yieldNext = true
              onDelta(text.slice(emitted, end))
              emitted = end
            }
          }
        : undefined
    }
    const processors =
      input.temperature !== undefined && input.temperature > 0
        ? [seededSampler(input.temperature, input.topP ?? 1, input.seed)]
        : null
    let stopped = false
    try {
      const sequences = await model.generate.call(view, inputIds, config, processors)
      const first = sequences[0]
      if (first !== undefined) sequence = first
    } catch (error) {
      if (!(error instanceof StopSequence)) throw error
      stopped = true
    }
    const generated = toNumbers(sequence.slice(skip))
    // The whole decode is authoritative; the incremental one is its prefix in practice.
    const full = generated.length === 0 ? "" : decode(generated)
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

  // The prefix of a long text the truncation reads, grown until its tokens fill the positions (then
  // those are the whole text's first tokens, since it ends between words) or it reaches the most
  // characters searched: only there does a text whose first characters hold fewer tokens (runs of
  // whitespace, words of hundreds of characters) lose the tokens after them.
  const readFor = (text: string, positions: number): string => {
    let end = positions * EMBED_FIRST_CHARS
    const most = positions * EMBED_MOST_CHARS
    while (text.length > end) {
      const prefix = text.slice(0, cutNear(text, end))
      if (end >= most) return prefix
      if ((tokenizer(prefix, { add_special_tokens: false }).input_ids.dims.at(-1) ?? 0) >= positions) return prefix
      end = Math.min(end * 4, most)
    }
    return text
  }

  const runEmbedding = async (texts: ReadonlyArray<string>): Promise<EmbeddingOutput> => {
    const positions = tokenizer.model_max_length
    const read =
      positions === undefined || !Number.isFinite(positions) ? texts : texts.map((text) => readFor(text, positions))
    const encoded = tokenizer(read, { padding: true, truncation: true })
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
      message: `${what} failed on model "${modelId}": ${Input.thrownMessage(error)}`,
      model: modelId,
      cause: error
    })

  const generationFailure = failure("generation")
  const wrongTask = (message: string) =>
    Effect.fail(new ModelError({ reason: "InvalidRequest", message, model: modelId, field: "model" }))

  const notForGeneration = () => wrongTask(`model "${modelId}" is loaded for embeddings, not generation`)

  return {
    modelId,
    task,
    prepare: (input) =>
      task === "feature-extraction"
        ? notForGeneration()
        : Effect.try({
            try: () => prepareSync(input),
            catch: (error) =>
              error instanceof ContextExceeded || error instanceof TemplateRefused
                ? new ModelError({
                    reason: "InvalidRequest",
                    message: error.message,
                    model: modelId,
                    field: "messages"
                  })
                : failure("tokenizing the prompt")(error)
          }),
    generate: (prepared, options) =>
      task === "feature-extraction"
        ? notForGeneration()
        : abortable(
            (signal) => runGeneration(prepared, signal, options),
            (error): ModelError | ShuttingDownError =>
              error instanceof ShuttingDownError ? error : generationFailure(error)
          ),
    embed: (texts) =>
      task !== "feature-extraction"
        ? wrongTask(`model "${modelId}" is loaded for generation, not embeddings`)
        : abortable(() => runEmbedding(texts), failure("embedding")),
    dispose: Effect.tryPromise(() => model.dispose()).pipe(Effect.ignore)
  }
}
