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

/** How much of the text is safe to emit: never a possible start of a stop sequence. */
export const emittable = (text: string, stop: ReadonlyArray<string>): number => {
  let end = text.length
  for (const s of stop) {
    // Bounded by the text's length, not by `end`: a longer stop sequence the whole text may start
    // has to hold back more than a shorter one already did.
    for (let k = Math.min(s.length - 1, text.length); k > 0; k--) {
      if (text.endsWith(s.slice(0, k)) && text.length - k < end) {
        end = text.length - k
        break
      }
    }
  }
  return end
}

/** Where the first stop sequence starts at or after `from`, or -1. */
export const firstStop = (text: string, stop: ReadonlyArray<string>, from: number): number => {
  let at = -1
  for (const s of stop) {
    if (s.length === 0) continue
    const i = text.indexOf(s, from)
    if (i >= 0 && (at < 0 || i < at)) at = i
  }
  return at
}
