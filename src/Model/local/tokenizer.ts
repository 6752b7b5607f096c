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

/** What a tokenizer's vocabulary bounds about the tokens of a text. */
export interface Spelling {
  /** The most characters one token spells. */
  readonly perToken: number
  /**
   * The characters of a text its tokens must spell: all of them, less the spaces an added token
   * that strips them (`lstrip`/`rstrip`, as BART's `<mask>`) may swallow. Linear in the text.
   */
  readonly spelled: (text: string) => number
}

const addedToken = (
  token: unknown
): { readonly content: string; readonly lstrip: boolean; readonly rstrip: boolean } => {
  const content = field(token, "content")
  return {
    content: typeof content === "string" ? content : "",
    lstrip: field(token, "lstrip") === true,
    rstrip: field(token, "rstrip") === true
  }
}

const runs = /\s+/g

/**
 * A bound on the characters a token stands for, or `undefined` when the tokenizer gives none. A
 * BPE model's token is a vocabulary entry, or the unknown token or a byte for a single character:
 * it spells at most its entry's length in characters (a byte-level entry has a character per
 * byte, and a character is at least a byte). That holds for the prompt when nothing before the
 * model shortens it: no normalizer that removes or composes characters, no pre-tokenizer that
 * drops whitespace; an added token that strips the spaces around it swallows only the run of
 * whitespace next to it, which {@link Spelling.spelled} leaves out. Other tokenizers (WordPiece,
 * Unigram, BERT's and T5's whitespace splitting) can read any number of characters as one token:
 * they get no bound.
 */
export const spellingOf = (tokenizer: TokenizerParts): Spelling | undefined => {
  // Marian's tokenizer trims the text before it encodes it.
  if (kindOf(tokenizer) === "MarianTokenizer") return undefined
  if (tokenizer.remove_space === true || tokenizer.do_lowercase_and_remove_accent === true) return undefined
  if (!keepsLength(tokenizer.normalizer) || !keepsText(tokenizer.pre_tokenizer)) return undefined
  const model = tokenizer.model
  const vocab = field(model, "vocab")
  if (kindOf(model) !== "BPE" || !Array.isArray(vocab) || !Array.isArray(tokenizer.added_tokens)) return undefined
  let perToken = 1
  for (const token of vocab) if (typeof token === "string" && token.length > perToken) perToken = token.length
  const unknown = field(model, "unk_token")
  if (typeof unknown === "string" && unknown.length > perToken) perToken = unknown.length
  const added = tokenizer.added_tokens.map(addedToken).filter((token) => token.content.length > 0)
  const before = added.filter((token) => token.lstrip).map((token) => token.content)
  const after = added.filter((token) => token.rstrip).map((token) => token.content)
  if (before.length === 0 && after.length === 0) return { perToken, spelled: (text) => text.length }
  return {
    perToken,
    spelled: (text) => {
      let n = text.length
      for (const run of text.matchAll(runs)) {
        const start = run.index
        const end = start + run[0].length
        if (
          before.some((content) => text.startsWith(content, end)) ||
          after.some((content) => start >= content.length && text.startsWith(content, start - content.length))
        ) {
          n -= run[0].length
        }
      }
      return n
    }
  }
}
