/**
 * Pure helpers of local generation: the prompt text, seeded sampling, incremental
 * detokenisation and stop sequences.
 *
 * @internal
 */
import type { Message } from "../../Model.js"

/** The tokenizer calls the prompt needs. */
export interface PromptTokenizer {
  apply_chat_template(
    messages: ReadonlyArray<Message>,
    options: { readonly tokenize: false; readonly add_generation_prompt: boolean }
  ): string
  readonly chat_template: unknown
}

/** The prompt text: the model's chat template when it has one, a plain transcript otherwise. */
export const promptOf = (tokenizer: PromptTokenizer, messages: ReadonlyArray<Message>): string => {
  if (tokenizer.chat_template !== null && tokenizer.chat_template !== undefined) {
    return tokenizer.apply_chat_template(messages, { tokenize: false, add_generation_prompt: true })
  }
  const only = messages[0]
  if (messages.length === 1 && only !== undefined && only.role === "user") return only.content
  const lines = messages.map((m) => `${speaker(m.role)}: ${m.content}`)
  return `${lines.join("\n")}\nAssistant:`
}

const speaker = (role: Message["role"]): string => {
  switch (role) {
    case "system":
      return "System"
    case "user":
      return "User"
    case "assistant":
      return "Assistant"
    case "tool":
      return "Tool"
  }
}

/**
 * The largest seed: the sampler's state is 32 bits, so a seed outside 0..2^32-1 would be the
 * same as one inside (2^32 + 7 as 7, -1 as 2^32-1).
 */
export const MAX_SEED = 2 ** 32 - 1

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

/** A transformers.js logits processor: it edits the logits of the next token in place. */
export type LogitsProcessor = (inputIds: ReadonlyArray<number>, logits: { readonly data: Float32Array }) => void

/**
 * Seeded sampling as a logits processor: it draws the token itself (temperature, top-p)
 * and leaves only that one finite, so transformers.js's greedy step picks it. Its own
 * sampler uses `Math.random` and cannot be seeded.
 */
export const seededSampler = (temperature: number, topP: number, seed: number): LogitsProcessor => {
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
 *
 * The context is kept for up to `window` tokens instead of moving on after every emitted
 * piece: the text of the context is then the previous call's text, so a token costs one
 * decode instead of two (the context moves on, with one more decode, once per window).
 */
export const makeDetokenizer = (
  decode: (ids: ReadonlyArray<number>) => string,
  start: number,
  context: number,
  window = 16
): ((ids: ReadonlyArray<number>) => string) => {
  let prefixOffset = Math.max(0, start - context)
  let readOffset = start
  // decode(ids[prefixOffset, readOffset)), when known
  let prefixText: string | undefined
  return (ids) => {
    // transformers.js refuses to decode no tokens (an encoder-decoder's first step has no context)
    if (prefixText === undefined)
      prefixText = readOffset > prefixOffset ? decode(ids.slice(prefixOffset, readOffset)) : ""
    const newText = decode(ids.slice(prefixOffset))
    if (newText.length <= prefixText.length || newText.endsWith("\uFFFD")) return ""
    const delta = newText.slice(prefixText.length)
    if (ids.length - prefixOffset > window) {
      prefixOffset = Math.max(prefixOffset, readOffset)
      prefixText = undefined
    } else {
      prefixText = newText
    }
    readOffset = ids.length
    return delta
  }
}

/** Stop sequences, matched as the text grows. */
export interface StopMatcher {
  /** Reads the next piece of the text; answers where (in the whole text) the first stop sequence it completed starts, or -1. */
  readonly push: (piece: string) => number
  /** How much of the text read so far is safe to emit: never a possible start of a stop sequence. */
  readonly emittable: () => number
}

/**
 * Each stop sequence as a Knuth-Morris-Pratt automaton over the text's UTF-16 units: its state
 * is the longest start of the sequence the text ends with, which is both what must be held back
 * and how far a match has come. A piece costs a step per character per sequence (amortised),
 * however long the text and the sequences: searching the text again for every sequence at each
 * token, and trying every start of each, cost the text's length per sequence per token (seconds
 * over a long answer with 16 long sequences).
 */
export const makeStopMatcher = (stop: ReadonlyArray<string>): StopMatcher => {
  const sequences = stop.filter((s) => s.length > 0)
  // failure[q - 1]: the longest proper start of the sequence that is also an end of its first q units.
  const failures = sequences.map((s) => {
    const failure = new Int32Array(s.length)
    let k = 0
    for (let q = 1; q < s.length; q++) {
      const c = s.charCodeAt(q)
      while (k > 0 && s.charCodeAt(k) !== c) k = failure[k - 1]!
      if (s.charCodeAt(k) === c) k += 1
      failure[q] = k
    }
    return failure
  })
  const states = new Int32Array(sequences.length)
  let length = 0
  return {
    push: (piece) => {
      let first = -1
      for (let i = 0; i < sequences.length; i++) {
        const s = sequences[i]!
        const failure = failures[i]!
        let q = states[i]!
        for (let j = 0; j < piece.length; j++) {
          const c = piece.charCodeAt(j)
          while (q > 0 && s.charCodeAt(q) !== c) q = failure[q - 1]!
          if (s.charCodeAt(q) === c) q += 1
          if (q === s.length) {
            const start = length + j + 1 - s.length
            if (first < 0 || start < first) first = start
            // The first match of this sequence starts before any later one.
            q = failure[q - 1]!
            break
          }
        }
        states[i] = q
      }
      length += piece.length
      return first
    },
    emittable: () => {
      let held = 0
      for (let i = 0; i < states.length; i++) if (states[i]! > held) held = states[i]!
      return length - held
    }
  }
}
