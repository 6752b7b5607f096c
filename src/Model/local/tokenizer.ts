/**
 * What a tokenizer's vocabulary says about a prompt before it is tokenized: the most
 * characters one token can stand for, when that is bounded.
 *
 * @internal
 */

/** The parts of a transformers.js 2.x tokenizer read here (each named by its class). */
export interface TokenizerParts {
  readonly normalizer?: unknown
  readonly pre_tokenizer?: unknown
  readonly model?: unknown
  readonly added_tokens?: unknown
  readonly remove_space?: unknown
  readonly do_lowercase_and_remove_accent?: unknown
}

// transformers.js's parts are callable objects (functions with the class's prototype).
const isPart = (part: unknown): part is Record<string, unknown> =>
  (typeof part === "object" && part !== null) || typeof part === "function"

const kindOf = (part: unknown): string | undefined =>
  isPart(part) ? Object.getPrototypeOf(part)?.constructor?.name : undefined

const field = (part: unknown, key: string): unknown => (isPart(part) ? part[key] : undefined)

/** Normalizers that never make the text shorter: they only add characters or replace one string by one as long. */
const keepsLength = (normalizer: unknown): boolean => {
  if (normalizer === null || normalizer === undefined) return true
  switch (kindOf(normalizer)) {
    case "Prepend":
      return true
    case "Replace": {
      const config = field(normalizer, "config")
      const pattern = field(field(config, "pattern"), "String")
      const content = field(config, "content")
      return typeof pattern === "string" && typeof content === "string" && content.length >= pattern.length
    }
    case "NormalizerSequence": {
      const parts = field(normalizer, "normalizers")
      return Array.isArray(parts) && parts.every(keepsLength)
    }
    default:
      return false
  }
}

/** Pre-tokenizers that split the text without dropping any of it (whitespace splitters drop the spaces). */
const keepsText = (preTokenizer: unknown): boolean => {
  if (preTokenizer === null || preTokenizer === undefined) return true
  switch (kindOf(preTokenizer)) {
    case "ByteLevelPreTokenizer":
    case "MetaspacePreTokenizer":
    case "DigitsPreTokenizer":
      return true
    case "SplitPreTokenizer": {
      // An inverted split keeps only what its pattern matches.
      const config = field(preTokenizer, "config")
      return field(config, "invert") !== true && field(preTokenizer, "pattern") instanceof RegExp
    }
    case "PreTokenizerSequence": {
      const parts = field(preTokenizer, "tokenizers")
      return Array.isArray(parts) && parts.every(keepsText)
    }
    default:
      return false
  }
}

/**
 * The most characters of a prompt one token can stand for, or `undefined` when the tokenizer
 * gives no such bound. A BPE model's token is a vocabulary entry, or the unknown token or a
 * byte for a single character: it spells at most its entry's length in characters (a byte-level
 * entry has a character per byte, and a character is at least a byte). That holds for the prompt
 * when nothing before the model shortens it: no normalizer that removes or composes characters,
 * no pre-tokenizer that drops whitespace, no added token that swallows the spaces around it
 * (`lstrip`/`rstrip`). Other tokenizers (WordPiece, Unigram, BERT's and T5's whitespace
 * splitting) can read any number of characters as one token: they get no bound.
 */
export const charsPerToken = (tokenizer: TokenizerParts): number | undefined => {
  // Marian's tokenizer trims the text before it encodes it.
  if (kindOf(tokenizer) === "MarianTokenizer") return undefined
  if (tokenizer.remove_space === true || tokenizer.do_lowercase_and_remove_accent === true) return undefined
  if (!keepsLength(tokenizer.normalizer) || !keepsText(tokenizer.pre_tokenizer)) return undefined
  const model = tokenizer.model
  const vocab = field(model, "vocab")
  if (kindOf(model) !== "BPE" || !Array.isArray(vocab)) return undefined
  const added = tokenizer.added_tokens
  if (
    !Array.isArray(added) ||
    added.some((token) => field(token, "lstrip") === true || field(token, "rstrip") === true)
  )
    return undefined
  let longest = 1
  for (const token of vocab) if (typeof token === "string" && token.length > longest) longest = token.length
  const unknown = field(model, "unk_token")
  if (typeof unknown === "string" && unknown.length > longest) longest = unknown.length
  return longest
}
