/**
 * Writes the tiny bundled models under `models/`: a GPT-2-style decoder (text generation
 * with a key/value cache), a BERT-style encoder (feature extraction) and a BART-style
 * encoder-decoder (text2text generation), each with a tokenizer transformers.js 2.x loads.
 *
 * The weights are seeded random numbers, not trained: the output is NOT meaningful text.
 * They are shaped so greedy decoding walks a fixed chain of English words (the logit head
 * maps each word's embedding to the next word of a seeded cycle), which reads like words
 * in a demo and makes every output reproducible. Matrices are stored as int8 with a
 * per-tensor scale (`DequantizeLinear`), hence the `*_quantized.onnx` file names.
 *
 * Run: `npx tsx scripts/generate-models.ts [outDir]` (default `models/`). The output is
 * byte-for-byte deterministic; test/models.test.ts regenerates and compares.
 */
import { mkdir, writeFile } from "node:fs/promises"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import onnxProto from "onnx-proto"

const { onnx } = onnxProto
type INodeProto = onnxProto.onnx.INodeProto
type ITensorProto = onnxProto.onnx.ITensorProto
type IValueInfoProto = onnxProto.onnx.IValueInfoProto
type IAttributeProto = onnxProto.onnx.IAttributeProto

const DataType = onnx.TensorProto.DataType
const AttrType = onnx.AttributeProto.AttributeType

// ---------------------------------------------------------------------------------------
// Seeded randomness

const mulberry32 = (seed: number) => {
  let a = seed >>> 0
  return (): number => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

class Rng {
  private readonly next: () => number
  constructor(seed: number) {
    this.next = mulberry32(seed)
  }
  uniform(): number {
    return this.next()
  }
  normal(std = 1): number {
    const u = Math.max(this.next(), 1e-12)
    const v = this.next()
    return std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v)
  }
  normals(count: number, std: number): Float32Array {
    const out = new Float32Array(count)
    for (let i = 0; i < count; i++) out[i] = this.normal(std)
    return out
  }
  shuffle<A>(items: ReadonlyArray<A>): Array<A> {
    const out = items.slice()
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1))
      const tmp = out[i]!
      out[i] = out[j]!
      out[j] = tmp
    }
    return out
  }
}

// ---------------------------------------------------------------------------------------
// A small ONNX graph builder

type Dim = number | string

class Graph {
  readonly nodes: Array<INodeProto> = []
  readonly initializers: Array<ITensorProto> = []
  readonly inputs: Array<IValueInfoProto> = []
  readonly outputs: Array<IValueInfoProto> = []
  private counter = 0
  private readonly constants = new Map<string, string>()

  private fresh(hint: string): string {
    this.counter += 1
    return `${hint}_${this.counter}`
  }

  input(name: string, elemType: number, dims: ReadonlyArray<Dim>): string {
    this.inputs.push(valueInfo(name, elemType, dims))
    return name
  }

  output(name: string, elemType: number, dims: ReadonlyArray<Dim>): void {
    this.outputs.push(valueInfo(name, elemType, dims))
  }

  op(
    opType: string,
    inputs: ReadonlyArray<string>,
    attributes: ReadonlyArray<IAttributeProto> = [],
    output?: string
  ): string {
    const out = output ?? this.fresh(opType.toLowerCase())
    this.nodes.push({
      opType,
      input: [...inputs],
      output: [out],
      name: this.fresh(`n_${opType}`),
      attribute: [...attributes]
    })
    return out
  }

  floatInit(name: string, data: Float32Array, dims: ReadonlyArray<number>): string {
    this.initializers.push({
      name,
      dataType: DataType.FLOAT,
      dims: [...dims],
      rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    })
    return name
  }

  int64Const(values: ReadonlyArray<number>, scalar = false): string {
    const key = `i64:${scalar}:${values.join(",")}`
    const cached = this.constants.get(key)
    if (cached !== undefined) return cached
    const name = this.fresh("const_i64")
    const data = new BigInt64Array(values.map((v) => BigInt(v)))
    this.initializers.push({
      name,
      dataType: DataType.INT64,
      dims: scalar ? [] : [values.length],
      rawData: new Uint8Array(data.buffer)
    })
    this.constants.set(key, name)
    return name
  }

  floatConst(value: number): string {
    const key = `f32:${value}`
    const cached = this.constants.get(key)
    if (cached !== undefined) return cached
    const name = this.fresh("const_f32")
    this.floatInit(name, new Float32Array([value]), [])
    this.constants.set(key, name)
    return name
  }

  /** A weight stored as int8 with a per-tensor scale, dequantized in the graph. */
  quantized(name: string, data: Float32Array, dims: ReadonlyArray<number>): string {
    let maxAbs = 0
    for (const v of data) maxAbs = Math.max(maxAbs, Math.abs(v))
    const scale = maxAbs === 0 ? 1 : maxAbs / 127
    const q = new Int8Array(data.length)
    for (let i = 0; i < data.length; i++) q[i] = Math.max(-127, Math.min(127, Math.round(data[i]! / scale)))
    this.initializers.push({
      name: `${name}_q`,
      dataType: DataType.INT8,
      dims: [...dims],
      rawData: new Uint8Array(q.buffer)
    })
    this.floatInit(`${name}_scale`, new Float32Array([scale]), [])
    this.initializers.push({ name: `${name}_zero`, dataType: DataType.INT8, dims: [], rawData: new Uint8Array([0]) })
    return this.op("DequantizeLinear", [`${name}_q`, `${name}_scale`, `${name}_zero`], [], name)
  }

  weight(name: string, data: Float32Array, dims: ReadonlyArray<number>, quantize: boolean): string {
    return quantize ? this.quantized(name, data, dims) : this.floatInit(name, data, dims)
  }

  encode(producer: string): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: producer,
      producerVersion: "1",
      opsetImport: [{ domain: "", version: 17 }],
      graph: {
        name: producer,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs
      }
    })
    return onnx.ModelProto.encode(model).finish()
  }
}

const valueInfo = (name: string, elemType: number, dims: ReadonlyArray<Dim>): IValueInfoProto => ({
  name,
  type: {
    tensorType: {
      elemType,
      shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) }
    }
  }
})

const intAttr = (name: string, i: number): IAttributeProto => ({ name, type: AttrType.INT, i })
const intsAttr = (name: string, ints: ReadonlyArray<number>): IAttributeProto => ({
  name,
  type: AttrType.INTS,
  ints: [...ints]
})
const floatAttr = (name: string, f: number): IAttributeProto => ({ name, type: AttrType.FLOAT, f })

// ---------------------------------------------------------------------------------------
// Transformer pieces

interface Dims {
  readonly hidden: number
  readonly heads: number
  readonly ffn: number
}

class Blocks {
  constructor(
    readonly g: Graph,
    readonly rng: Rng,
    readonly dims: Dims,
    readonly quantize: boolean
  ) {}

  linear(prefix: string, x: string, inDim: number, outDim: number, std: number): string {
    const w = this.g.weight(`${prefix}.weight`, this.rng.normals(inDim * outDim, std), [inDim, outDim], this.quantize)
    const b = this.g.floatInit(`${prefix}.bias`, this.rng.normals(outDim, std * 0.1), [outDim])
    return this.g.op("Add", [this.g.op("MatMul", [x, w]), b])
  }

  layerNorm(prefix: string, x: string): string {
    const { hidden } = this.dims
    const gamma = this.g.floatInit(`${prefix}.weight`, new Float32Array(hidden).fill(1), [hidden])
    const beta = this.g.floatInit(`${prefix}.bias`, new Float32Array(hidden), [hidden])
    return this.g.op("LayerNormalization", [x, gamma, beta], [intAttr("axis", -1), floatAttr("epsilon", 1e-5)])
  }

  /** [b, n, H] -> [b, heads, n, d] */
  splitHeads(x: string): string {
    const { hidden, heads } = this.dims
    const r = this.g.op("Reshape", [x, this.g.int64Const([0, 0, heads, hidden / heads])])
    return this.g.op("Transpose", [r], [intsAttr("perm", [0, 2, 1, 3])])
  }

  /** [b, heads, n, d] -> [b, n, H] */
  mergeHeads(x: string): string {
    const t = this.g.op("Transpose", [x], [intsAttr("perm", [0, 2, 1, 3])])
    return this.g.op("Reshape", [t, this.g.int64Const([0, 0, this.dims.hidden])])
  }

  /** Scaled dot-product attention; `bias` is added to the scores, `allowed` (bool) masks them. */
  attend(q: string, k: string, v: string, mask: { readonly bias?: string; readonly allowed?: string }): string {
    const d = this.dims.hidden / this.dims.heads
    const kt = this.g.op("Transpose", [k], [intsAttr("perm", [0, 1, 3, 2])])
    let scores = this.g.op("Mul", [this.g.op("MatMul", [q, kt]), this.g.floatConst(1 / Math.sqrt(d))])
    if (mask.bias !== undefined) scores = this.g.op("Add", [scores, mask.bias])
    if (mask.allowed !== undefined) scores = this.g.op("Where", [mask.allowed, scores, this.g.floatConst(-1e9)])
    const probs = this.g.op("Softmax", [scores], [intAttr("axis", -1)])
    return this.g.op("MatMul", [probs, v])
  }

  /** Feed-forward with a sigmoid-approximated GELU (x * sigmoid(1.702 x)). */
  mlp(prefix: string, x: string, outStd: number): string {
    const { hidden, ffn } = this.dims
    const h = this.linear(`${prefix}.fc1`, x, hidden, ffn, 0.2)
    const act = this.g.op("Mul", [h, this.g.op("Sigmoid", [this.g.op("Mul", [h, this.g.floatConst(1.702)])])])
    return this.linear(`${prefix}.fc2`, act, ffn, hidden, outStd)
  }

  /** Additive key-padding bias [b, 1, 1, n] from an int64 mask [b, n]. */
  paddingBias(mask: string): string {
    const f = this.g.op("Cast", [mask], [intAttr("to", DataType.FLOAT)])
    const inverted = this.g.op("Sub", [this.g.floatConst(1), f])
    const bias = this.g.op("Mul", [inverted, this.g.floatConst(-10000)])
    return this.g.op("Unsqueeze", [bias, this.g.int64Const([1, 2])])
  }

  /** `Shape(x)[axis]` as a 1-element int64 tensor. */
  dim(x: string, axis: number): string {
    return this.g.op("Shape", [x], [intAttr("start", axis), intAttr("end", axis + 1)])
  }

  scalar(x: string): string {
    return this.g.op("Squeeze", [x, this.g.int64Const([0])])
  }
}

// ---------------------------------------------------------------------------------------
// Vocabulary

const CATEGORIES: ReadonlyArray<ReadonlyArray<string>> = [
  // adjectives
  [
    "quiet",
    "bright",
    "gentle",
    "ancient",
    "silver",
    "golden",
    "hidden",
    "distant",
    "warm",
    "cold",
    "small",
    "vast",
    "green",
    "calm",
    "wild",
    "soft",
    "old",
    "young",
    "hollow",
    "patient",
    "clever",
    "simple",
    "strange",
    "early",
    "late",
    "open",
    "narrow",
    "heavy",
    "light",
    "steady"
  ],
  // nouns
  [
    "river",
    "stone",
    "forest",
    "garden",
    "lantern",
    "harbor",
    "mountain",
    "window",
    "village",
    "meadow",
    "bridge",
    "candle",
    "valley",
    "island",
    "letter",
    "morning",
    "evening",
    "market",
    "library",
    "orchard",
    "shadow",
    "thunder",
    "compass",
    "kettle",
    "pebble",
    "feather",
    "engine",
    "signal",
    "melody",
    "journey"
  ],
  // verbs
  [
    "carries",
    "follows",
    "remembers",
    "gathers",
    "watches",
    "holds",
    "finds",
    "builds",
    "crosses",
    "answers",
    "keeps",
    "opens",
    "turns",
    "waits",
    "hums",
    "drifts",
    "lifts",
    "shapes",
    "guards",
    "greets",
    "counts",
    "paints",
    "reads",
    "moves",
    "warms",
    "calls",
    "brings",
    "tells",
    "hears",
    "wanders"
  ],
  // adverbs and prepositions
  [
    "slowly",
    "softly",
    "quickly",
    "gladly",
    "beneath",
    "beyond",
    "along",
    "across",
    "toward",
    "inside",
    "nearby",
    "again",
    "together",
    "forever",
    "upward",
    "outside",
    "around",
    "between",
    "within",
    "today",
    "tonight",
    "often",
    "rarely",
    "always",
    "sometimes",
    "somewhere",
    "everywhere",
    "quietly",
    "warmly",
    "onward"
  ]
]

/** A short chain that ends the text: "... once upon a time" then end of sequence. */
const ENDING = ["once", "upon", "a", "time"] as const

const BYTE_TO_UNICODE: ReadonlyArray<string> = (() => {
  const bs: Array<number> = []
  for (let c = "!".charCodeAt(0); c <= "~".charCodeAt(0); c++) bs.push(c)
  for (let c = "¡".charCodeAt(0); c <= "¬".charCodeAt(0); c++) bs.push(c)
  for (let c = "®".charCodeAt(0); c <= "ÿ".charCodeAt(0); c++) bs.push(c)
  const cs = bs.slice()
  let n = 0
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b)
      cs.push(256 + n)
      n += 1
    }
  }
  const table = new Array<string>(256)
  bs.forEach((b, i) => {
    table[b] = String.fromCharCode(cs[i]!)
  })
  return table
})()

const SPACE = BYTE_TO_UNICODE[32]!

interface ByteLevelVocab {
  /** Base tokens: the 256 byte symbols, then one token per word (with a leading space). */
  readonly tokens: ReadonlyArray<string>
  readonly ids: ReadonlyMap<string, number>
  /** Token ids of the word cycle, in order: each word's successor is the next one. */
  readonly cycle: ReadonlyArray<number>
  readonly ending: ReadonlyArray<number>
}

const byteLevelVocab = (rng: Rng): ByteLevelVocab => {
  const tokens: Array<string> = [...BYTE_TO_UNICODE]
  const words = [...CATEGORIES.flat(), ...ENDING]
  for (const word of words) tokens.push(`${SPACE}${word}`)
  const ids = new Map(tokens.map((t, i) => [t, i]))
  const idOf = (word: string) => ids.get(`${SPACE}${word}`)!
  const shuffled = CATEGORIES.map((category) => rng.shuffle(category))
  const cycle: Array<number> = []
  for (let i = 0; i < shuffled[0]!.length; i++) for (const category of shuffled) cycle.push(idOf(category[i]!))
  return { tokens, ids, cycle, ending: ENDING.map(idOf) }
}

const byteLevelTokenizerJson = (
  vocab: ByteLevelVocab,
  specials: ReadonlyArray<readonly [string, number]>,
  postProcessor: unknown
) => ({
  version: "1.0",
  truncation: null,
  padding: null,
  added_tokens: specials.map(([content, id]) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true
  })),
  normalizer: null,
  pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: postProcessor,
  decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: {
    type: "BPE",
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: false,
    byte_fallback: false,
    // Whole words are looked up in the vocabulary before merging; anything else falls back
    // to byte tokens, so every string encodes without a merge table.
    ignore_merges: true,
    vocab: Object.fromEntries([...vocab.tokens.map((t, i) => [t, i] as const), ...specials]),
    merges: []
  }
})

const layerNormRow = (row: Float32Array): Float32Array => {
  let mean = 0
  for (const v of row) mean += v
  mean /= row.length
  let variance = 0
  for (const v of row) variance += (v - mean) ** 2
  const std = Math.sqrt(variance / row.length + 1e-5)
  return row.map((v) => (v - mean) / std)
}

/**
 * Token embeddings and an unembedding that maps each chained token to its successor: the
 * logit of `next(t)` is the (normalised) embedding of `t`, so greedy decoding follows the chain.
 */
const chainedEmbeddings = (
  rng: Rng,
  vocabSize: number,
  hidden: number,
  chains: ReadonlyArray<readonly [from: number, to: number]>
): { readonly embedding: Float32Array; readonly unembedding: Float32Array } => {
  const embedding = rng.normals(vocabSize * hidden, 1)
  // [hidden, vocab]: column v is the direction whose embedding predicts v
  const unembedding = rng.normals(hidden * vocabSize, 0.002)
  for (const [from, to] of chains) {
    const row = layerNormRow(embedding.subarray(from * hidden, (from + 1) * hidden))
    let norm = 0
    for (const v of row) norm += v * v
    norm = Math.sqrt(norm)
    for (let k = 0; k < hidden; k++) unembedding[k * vocabSize + to] = row[k]! / norm
  }
  return { embedding, unembedding }
}

/** Pushes byte tokens and specials (except the end of sequence) down, so sampling picks words too. */
const wordBias = (vocab: ByteLevelVocab, vocabSize: number, keep: ReadonlyArray<number>): Float32Array => {
  const bias = new Float32Array(vocabSize).fill(-10)
  for (const id of [...vocab.cycle, ...vocab.ending, ...keep]) bias[id] = 0
  return bias
}

const chainPairs = (vocab: ByteLevelVocab, eos: number): Array<readonly [number, number]> => {
  const pairs: Array<readonly [number, number]> = []
  vocab.cycle.forEach((id, i) => {
    pairs.push([id, vocab.cycle[(i + 1) % vocab.cycle.length]!])
  })
  vocab.ending.forEach((id, i) => {
    pairs.push([id, vocab.ending[i + 1] ?? eos])
  })
  return pairs
}

// ---------------------------------------------------------------------------------------
// GPT-2-style decoder with past key/values

const GPT2 = { hidden: 64, heads: 4, ffn: 128, layers: 2, positions: 64 } as const

const gpt2Decoder = (vocab: ByteLevelVocab, vocabSize: number, eos: number, quantize: boolean): Uint8Array => {
  const rng = new Rng(0x6b7032)
  const g = new Graph()
  const b = new Blocks(g, rng, GPT2, quantize)
  const { hidden, heads, layers, positions } = GPT2
  const d = hidden / heads
  const I64 = DataType.INT64
  const F32 = DataType.FLOAT

  const inputIds = g.input("input_ids", I64, ["batch_size", "sequence_length"])
  const attentionMask = g.input("attention_mask", I64, ["batch_size", "total_sequence_length"])
  const positionIds = g.input("position_ids", I64, ["batch_size", "sequence_length"])
  const past = Array.from({ length: layers }, (_, i) => ({
    key: g.input(`past_key_values.${i}.key`, F32, ["batch_size", heads, "past_sequence_length", d]),
    value: g.input(`past_key_values.${i}.value`, F32, ["batch_size", heads, "past_sequence_length", d])
  }))
  g.output("logits", F32, ["batch_size", "sequence_length", vocabSize])
  for (let i = 0; i < layers; i++) {
    g.output(`present.${i}.key`, F32, ["batch_size", heads, "total_sequence_length", d])
    g.output(`present.${i}.value`, F32, ["batch_size", heads, "total_sequence_length", d])
  }

  const { embedding, unembedding } = chainedEmbeddings(rng, vocabSize, hidden, chainPairs(vocab, eos))
  const wte = g.weight("wte", embedding, [vocabSize, hidden], quantize)
  const wpe = g.weight("wpe", rng.normals(positions * hidden, 0.02), [positions, hidden], quantize)
  // Positions past the table reuse its last row: the tiny model has no real context limit.
  const clamped = g.op("Min", [positionIds, g.int64Const([positions - 1], true)])
  let x = g.op("Add", [g.op("Gather", [wte, inputIds]), g.op("Gather", [wpe, clamped])])

  // allowed[b, 1, q, k]: key k is not padding and not in the future of query q
  const total = b.scalar(b.dim(attentionMask, 1))
  const seq = b.scalar(b.dim(inputIds, 1))
  const pastLen = g.op("Sub", [total, seq])
  const one = g.int64Const([1], true)
  const qIdx = g.op("Unsqueeze", [g.op("Range", [pastLen, total, one]), g.int64Const([1])])
  const kIdx = g.op("Unsqueeze", [g.op("Range", [g.int64Const([0], true), total, one]), g.int64Const([0])])
  const causal = g.op("LessOrEqual", [kIdx, qIdx])
  const keyMask = g.op("Unsqueeze", [
    g.op("Cast", [attentionMask], [intAttr("to", DataType.BOOL)]),
    g.int64Const([1, 2])
  ])
  const allowed = g.op("And", [causal, keyMask])

  for (let i = 0; i < layers; i++) {
    const a = b.layerNorm(`h.${i}.ln_1`, x)
    const q = b.splitHeads(b.linear(`h.${i}.attn.q`, a, hidden, hidden, 0.3))
    const k = b.splitHeads(b.linear(`h.${i}.attn.k`, a, hidden, hidden, 0.3))
    const v = b.splitHeads(b.linear(`h.${i}.attn.v`, a, hidden, hidden, 0.3))
    const layerPast = past[i]!
    const keys = g.op("Concat", [layerPast.key, k], [intAttr("axis", 2)], `present.${i}.key`)
    const values = g.op("Concat", [layerPast.value, v], [intAttr("axis", 2)], `present.${i}.value`)
    const ctx = b.mergeHeads(b.attend(q, keys, values, { allowed }))
    x = g.op("Add", [x, b.linear(`h.${i}.attn.o`, ctx, hidden, hidden, 0.01)])
    x = g.op("Add", [x, b.mlp(`h.${i}.mlp`, b.layerNorm(`h.${i}.ln_2`, x), 0.01)])
  }
  const final = b.layerNorm("ln_f", x)
  const lmHead = g.weight("lm_head", unembedding, [hidden, vocabSize], quantize)
  const logitsBias = g.floatInit("lm_head.bias", wordBias(vocab, vocabSize, [eos]), [vocabSize])
  g.op("Add", [g.op("MatMul", [final, lmHead]), logitsBias], [], "logits")
  return g.encode("effect-orchestra tiny-gpt2")
}

// ---------------------------------------------------------------------------------------
// BERT-style encoder

/** Sizes of a BERT-style encoder. */
export interface EncoderDims {
  readonly hidden: number
  readonly heads: number
  readonly ffn: number
  readonly layers: number
  readonly positions: number
}

const BERT: EncoderDims = { hidden: 32, heads: 4, ffn: 64, layers: 2, positions: 128 }

const BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] as const
const BERT_CHARS = [..."abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"-()"]

const bertVocab = (): ReadonlyArray<string> => {
  const words = CATEGORIES.flat().concat(ENDING, ["the", "and", "of", "to", "in", "is", "it", "that", "for", "with"])
  return [
    ...BERT_SPECIALS,
    ...BERT_CHARS,
    ...BERT_CHARS.filter((c) => /[a-z0-9]/.test(c)).map((c) => `##${c}`),
    ...[...new Set(words)]
  ]
}

const bertEncoder = (vocabSize: number, quantize: boolean, dims: EncoderDims): Uint8Array => {
  const rng = new Rng(0x62657274)
  const g = new Graph()
  const b = new Blocks(g, rng, dims, quantize)
  const { hidden, layers, positions } = dims
  const I64 = DataType.INT64

  const inputIds = g.input("input_ids", I64, ["batch_size", "sequence_length"])
  const attentionMask = g.input("attention_mask", I64, ["batch_size", "sequence_length"])
  const tokenTypeIds = g.input("token_type_ids", I64, ["batch_size", "sequence_length"])
  g.output("last_hidden_state", DataType.FLOAT, ["batch_size", "sequence_length", hidden])

  const we = g.weight("embeddings.word", rng.normals(vocabSize * hidden, 1), [vocabSize, hidden], quantize)
  const pe = g.weight("embeddings.position", rng.normals(positions * hidden, 0.1), [positions, hidden], quantize)
  const te = g.floatInit("embeddings.token_type", rng.normals(2 * hidden, 0.1), [2, hidden])
  const seq = b.scalar(b.dim(inputIds, 1))
  const pos = g.op("Unsqueeze", [
    g.op("Range", [g.int64Const([0], true), seq, g.int64Const([1], true)]),
    g.int64Const([0])
  ])
  let x = g.op("Add", [
    g.op("Add", [g.op("Gather", [we, inputIds]), g.op("Gather", [pe, pos])]),
    g.op("Gather", [te, tokenTypeIds])
  ])
  x = b.layerNorm("embeddings.ln", x)
  const bias = b.paddingBias(attentionMask)
  for (let i = 0; i < layers; i++) {
    const q = b.splitHeads(b.linear(`layer.${i}.q`, x, hidden, hidden, 0.3))
    const k = b.splitHeads(b.linear(`layer.${i}.k`, x, hidden, hidden, 0.3))
    const v = b.splitHeads(b.linear(`layer.${i}.v`, x, hidden, hidden, 0.3))
    const ctx = b.mergeHeads(b.attend(q, k, v, { bias }))
    x = b.layerNorm(`layer.${i}.ln_1`, g.op("Add", [x, b.linear(`layer.${i}.o`, ctx, hidden, hidden, 0.2)]))
    x = b.layerNorm(`layer.${i}.ln_2`, g.op("Add", [x, b.mlp(`layer.${i}.mlp`, x, 0.2)]))
  }
  g.op("Identity", [x], [], "last_hidden_state")
  return g.encode("effect-orchestra tiny-bert")
}

// ---------------------------------------------------------------------------------------
// BART-style encoder-decoder

const BART = { hidden: 64, heads: 4, ffn: 128, layers: 1, positions: 64 } as const

const bartEncoder = (embedding: Float32Array, vocabSize: number, quantize: boolean): Uint8Array => {
  const rng = new Rng(0x62617274)
  const g = new Graph()
  const b = new Blocks(g, rng, BART, quantize)
  const { hidden, layers, positions } = BART
  const inputIds = g.input("input_ids", DataType.INT64, ["batch_size", "encoder_sequence_length"])
  const attentionMask = g.input("attention_mask", DataType.INT64, ["batch_size", "encoder_sequence_length"])
  g.output("last_hidden_state", DataType.FLOAT, ["batch_size", "encoder_sequence_length", hidden])

  const we = g.weight("shared", embedding, [vocabSize, hidden], quantize)
  const pe = g.weight("encoder.positions", rng.normals(positions * hidden, 0.02), [positions, hidden], quantize)
  const seq = b.scalar(b.dim(inputIds, 1))
  const pos = g.op("Min", [
    g.op("Range", [g.int64Const([0], true), seq, g.int64Const([1], true)]),
    g.int64Const([positions - 1], true)
  ])
  let x = g.op("Add", [
    g.op("Gather", [we, inputIds]),
    g.op("Unsqueeze", [g.op("Gather", [pe, pos]), g.int64Const([0])])
  ])
  const bias = b.paddingBias(attentionMask)
  for (let i = 0; i < layers; i++) {
    const q = b.splitHeads(b.linear(`encoder.${i}.q`, x, hidden, hidden, 0.1))
    const k = b.splitHeads(b.linear(`encoder.${i}.k`, x, hidden, hidden, 0.1))
    const v = b.splitHeads(b.linear(`encoder.${i}.v`, x, hidden, hidden, 0.1))
    const ctx = b.mergeHeads(b.attend(q, k, v, { bias }))
    x = b.layerNorm(`encoder.${i}.ln_1`, g.op("Add", [x, b.linear(`encoder.${i}.o`, ctx, hidden, hidden, 0.01)]))
    x = b.layerNorm(`encoder.${i}.ln_2`, g.op("Add", [x, b.mlp(`encoder.${i}.mlp`, x, 0.01)]))
  }
  g.op("Identity", [x], [], "last_hidden_state")
  return g.encode("effect-orchestra tiny-bart encoder")
}

const bartDecoder = (
  vocab: ByteLevelVocab,
  eos: number,
  embedding: Float32Array,
  unembedding: Float32Array,
  vocabSize: number,
  quantize: boolean
): Uint8Array => {
  const rng = new Rng(0x64656331)
  const g = new Graph()
  const b = new Blocks(g, rng, BART, quantize)
  const { hidden, heads, layers, positions } = BART
  const d = hidden / heads
  const I64 = DataType.INT64
  const F32 = DataType.FLOAT

  const inputIds = g.input("input_ids", I64, ["batch_size", "decoder_sequence_length"])
  const encoderMask = g.input("encoder_attention_mask", I64, ["batch_size", "encoder_sequence_length"])
  const encoderStates = g.input("encoder_hidden_states", F32, ["batch_size", "encoder_sequence_length", hidden])
  const past = Array.from({ length: layers }, (_, i) => ({
    key: g.input(`past_key_values.${i}.decoder.key`, F32, ["batch_size", heads, "past_decoder_sequence_length", d]),
    value: g.input(`past_key_values.${i}.decoder.value`, F32, ["batch_size", heads, "past_decoder_sequence_length", d]),
    // Fed by transformers.js on every step; the cross-attention keys are recomputed instead
    // (cheap here), and transformers.js keeps its cached copy after the first step anyway.
    encoderKey: g.input(`past_key_values.${i}.encoder.key`, F32, [
      "batch_size",
      heads,
      "past_encoder_sequence_length",
      d
    ]),
    encoderValue: g.input(`past_key_values.${i}.encoder.value`, F32, [
      "batch_size",
      heads,
      "past_encoder_sequence_length",
      d
    ])
  }))
  g.output("logits", F32, ["batch_size", "decoder_sequence_length", vocabSize])
  for (let i = 0; i < layers; i++) {
    g.output(`present.${i}.decoder.key`, F32, ["batch_size", heads, "total_decoder_sequence_length", d])
    g.output(`present.${i}.decoder.value`, F32, ["batch_size", heads, "total_decoder_sequence_length", d])
    g.output(`present.${i}.encoder.key`, F32, ["batch_size", heads, "encoder_sequence_length", d])
    g.output(`present.${i}.encoder.value`, F32, ["batch_size", heads, "encoder_sequence_length", d])
  }

  const we = g.weight("shared", embedding, [vocabSize, hidden], quantize)
  const pe = g.weight("decoder.positions", rng.normals(positions * hidden, 0.02), [positions, hidden], quantize)
  const pastLen = b.scalar(b.dim(past[0]!.key, 2))
  const seq = b.scalar(b.dim(inputIds, 1))
  const total = g.op("Add", [pastLen, seq])
  const one = g.int64Const([1], true)
  const qRange = g.op("Range", [pastLen, total, one])
  const pos = g.op("Min", [qRange, g.int64Const([positions - 1], true)])
  let x = g.op("Add", [
    g.op("Gather", [we, inputIds]),
    g.op("Unsqueeze", [g.op("Gather", [pe, pos]), g.int64Const([0])])
  ])
  const qIdx = g.op("Unsqueeze", [qRange, g.int64Const([1])])
  const kIdx = g.op("Unsqueeze", [g.op("Range", [g.int64Const([0], true), total, one]), g.int64Const([0])])
  const causal = g.op("LessOrEqual", [kIdx, qIdx])
  const crossBias = b.paddingBias(encoderMask)

  for (let i = 0; i < layers; i++) {
    const layerPast = past[i]!
    const a = b.layerNorm(`decoder.${i}.ln_1`, x)
    const q = b.splitHeads(b.linear(`decoder.${i}.self.q`, a, hidden, hidden, 0.3))
    const k = b.splitHeads(b.linear(`decoder.${i}.self.k`, a, hidden, hidden, 0.3))
    const v = b.splitHeads(b.linear(`decoder.${i}.self.v`, a, hidden, hidden, 0.3))
    const keys = g.op("Concat", [layerPast.key, k], [intAttr("axis", 2)], `present.${i}.decoder.key`)
    const values = g.op("Concat", [layerPast.value, v], [intAttr("axis", 2)], `present.${i}.decoder.value`)
    const selfCtx = b.mergeHeads(b.attend(q, keys, values, { allowed: causal }))
    x = g.op("Add", [x, b.linear(`decoder.${i}.self.o`, selfCtx, hidden, hidden, 0.01)])

    // Cross-attention: near-uniform queries average the encoder states into the residual,
    // so the first decoded word depends on the input text.
    const c = b.layerNorm(`decoder.${i}.ln_2`, x)
    const cq = b.splitHeads(b.linear(`decoder.${i}.cross.q`, c, hidden, hidden, 0.01))
    const ck = g.op(
      "Identity",
      [b.splitHeads(b.linear(`decoder.${i}.cross.k`, encoderStates, hidden, hidden, 0.1))],
      [],
      `present.${i}.encoder.key`
    )
    const identity = new Float32Array(hidden * hidden)
    for (let j = 0; j < hidden; j++) identity[j * hidden + j] = 1
    const cvw = g.weight(`decoder.${i}.cross.v.weight`, identity, [hidden, hidden], quantize)
    const cv = g.op("Identity", [b.splitHeads(g.op("MatMul", [encoderStates, cvw]))], [], `present.${i}.encoder.value`)
    const crossCtx = b.mergeHeads(b.attend(cq, ck, cv, { bias: crossBias }))
    x = g.op("Add", [x, g.op("Mul", [crossCtx, g.floatConst(0.6)])])
    x = g.op("Add", [x, b.mlp(`decoder.${i}.mlp`, b.layerNorm(`decoder.${i}.ln_3`, x), 0.01)])
  }
  const final = b.layerNorm("decoder.ln_f", x)
  const lmHead = g.weight("lm_head", unembedding, [hidden, vocabSize], quantize)
  const logitsBias = g.floatInit("final_logits_bias", wordBias(vocab, vocabSize, [eos]), [vocabSize])
  g.op("Add", [g.op("MatMul", [final, lmHead]), logitsBias], [], "logits")
  return g.encode("effect-orchestra tiny-bart decoder")
}

// ---------------------------------------------------------------------------------------
// Files

const NOTE =
  "Tiny random-weight model generated by scripts/generate-models.ts for offline tests and demos. Its output is NOT meaningful text."

const json = (value: unknown): string => `${JSON.stringify(value, null, 2)}\n`

/**
 * The files of a BERT-style encoder with the bundled WordPiece vocabulary. `tiny-bert` is
 * one; bench/local.ts also builds a MiniLM-sized one (in a temp dir) to measure batching
 * with a realistic amount of compute per text.
 */
export const buildEncoderFiles = (
  name: string,
  dims: EncoderDims,
  options?: { readonly quantize?: boolean }
): ReadonlyMap<string, Uint8Array> => {
  const quantize = options?.quantize ?? true
  const suffix = quantize ? "_quantized" : ""
  const files = new Map<string, Uint8Array>()
  const text = (file: string, value: unknown) => files.set(file, new TextEncoder().encode(json(value)))
  const bertTokens = bertVocab()
  const bertIds = new Map(bertTokens.map((t, i) => [t, i]))
  text(`${name}/config.json`, {
    _note: NOTE,
    model_type: "bert",
    architectures: ["BertModel"],
    vocab_size: bertTokens.length,
    hidden_size: dims.hidden,
    num_attention_heads: dims.heads,
    num_hidden_layers: dims.layers,
    intermediate_size: dims.ffn,
    max_position_embeddings: dims.positions,
    type_vocab_size: 2,
    pad_token_id: 0
  })
  text(`${name}/tokenizer.json`, {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: BERT_SPECIALS.map((content) => ({
      id: bertIds.get(content)!,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true
    })),
    normalizer: {
      type: "BertNormalizer",
      clean_text: true,
      handle_chinese_chars: true,
      strip_accents: null,
      lowercase: true
    },
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: {
      type: "BertProcessing",
      sep: ["[SEP]", bertIds.get("[SEP]")!],
      cls: ["[CLS]", bertIds.get("[CLS]")!]
    },
    decoder: { type: "WordPiece", prefix: "##", cleanup: true },
    model: {
      type: "WordPiece",
      unk_token: "[UNK]",
      continuing_subword_prefix: "##",
      max_input_chars_per_word: 100,
      vocab: Object.fromEntries(bertIds)
    }
  })
  text(`${name}/tokenizer_config.json`, {
    tokenizer_class: "BertTokenizer",
    do_lower_case: true,
    cls_token: "[CLS]",
    sep_token: "[SEP]",
    pad_token: "[PAD]",
    unk_token: "[UNK]",
    mask_token: "[MASK]",
    model_max_length: dims.positions,
    clean_up_tokenization_spaces: true
  })
  files.set(`${name}/onnx/model${suffix}.onnx`, bertEncoder(bertTokens.length, quantize, dims))

  return files
}

/** Relative path -> contents, for every file of the bundled models. */
export const buildModelFiles = (options?: { readonly quantize?: boolean }): ReadonlyMap<string, Uint8Array> => {
  const quantize = options?.quantize ?? true
  const suffix = quantize ? "_quantized" : ""
  const files = new Map<string, Uint8Array>()
  const text = (file: string, value: unknown) => files.set(file, new TextEncoder().encode(json(value)))

  // tiny-gpt2
  const vocab = byteLevelVocab(new Rng(0x766f6361))
  const eos = vocab.tokens.length
  const gptVocabSize = eos + 1
  text("tiny-gpt2/config.json", {
    _note: NOTE,
    model_type: "gpt2",
    architectures: ["GPT2LMHeadModel"],
    vocab_size: gptVocabSize,
    n_embd: GPT2.hidden,
    n_head: GPT2.heads,
    n_layer: GPT2.layers,
    n_inner: GPT2.ffn,
    n_positions: 2048,
    n_ctx: 2048,
    bos_token_id: eos,
    eos_token_id: eos,
    activation_function: "quick_gelu"
  })
  text("tiny-gpt2/generation_config.json", { bos_token_id: eos, eos_token_id: eos, pad_token_id: eos })
  text("tiny-gpt2/tokenizer.json", byteLevelTokenizerJson(vocab, [["<|endoftext|>", eos]], null))
  text("tiny-gpt2/tokenizer_config.json", {
    tokenizer_class: "GPT2Tokenizer",
    bos_token: "<|endoftext|>",
    eos_token: "<|endoftext|>",
    unk_token: "<|endoftext|>",
    pad_token: "<|endoftext|>",
    add_prefix_space: false,
    model_max_length: 2048,
    clean_up_tokenization_spaces: false
  })
  files.set(`tiny-gpt2/onnx/decoder_model_merged${suffix}.onnx`, gpt2Decoder(vocab, gptVocabSize, eos, quantize))

  for (const [file, contents] of buildEncoderFiles("tiny-bert", BERT, { quantize })) files.set(file, contents)

  // tiny-bart: the same byte-level vocabulary with BART's special tokens appended
  const base = vocab.tokens.length
  const [bos, pad, bartEos, unk] = [base, base + 1, base + 2, base + 3]
  const bartVocabSize = base + 4
  const bartRng = new Rng(0x73686172)
  const { embedding, unembedding } = chainedEmbeddings(bartRng, bartVocabSize, BART.hidden, chainPairs(vocab, bartEos))
  // The decoder starts from </s>: a zero embedding leaves the first step to the encoder states.
  embedding.fill(0, bartEos * BART.hidden, (bartEos + 1) * BART.hidden)
  text("tiny-bart/config.json", {
    _note: NOTE,
    model_type: "bart",
    architectures: ["BartForConditionalGeneration"],
    is_encoder_decoder: true,
    vocab_size: bartVocabSize,
    d_model: BART.hidden,
    encoder_layers: BART.layers,
    decoder_layers: BART.layers,
    encoder_attention_heads: BART.heads,
    decoder_attention_heads: BART.heads,
    encoder_ffn_dim: BART.ffn,
    decoder_ffn_dim: BART.ffn,
    max_position_embeddings: 1024,
    bos_token_id: bos,
    pad_token_id: pad,
    eos_token_id: bartEos,
    decoder_start_token_id: bartEos
  })
  text("tiny-bart/generation_config.json", {
    bos_token_id: bos,
    pad_token_id: pad,
    eos_token_id: bartEos,
    decoder_start_token_id: bartEos
  })
  text(
    "tiny-bart/tokenizer.json",
    byteLevelTokenizerJson(
      vocab,
      [
        ["<s>", bos],
        ["<pad>", pad],
        ["</s>", bartEos],
        ["<unk>", unk]
      ],
      {
        type: "RobertaProcessing",
        sep: ["</s>", bartEos],
        cls: ["<s>", bos],
        trim_offsets: true,
        add_prefix_space: false
      }
    )
  )
  text("tiny-bart/tokenizer_config.json", {
    tokenizer_class: "BartTokenizer",
    bos_token: "<s>",
    eos_token: "</s>",
    sep_token: "</s>",
    cls_token: "<s>",
    unk_token: "<unk>",
    pad_token: "<pad>",
    add_prefix_space: false,
    model_max_length: 1024,
    clean_up_tokenization_spaces: false
  })
  files.set(`tiny-bart/onnx/encoder_model${suffix}.onnx`, bartEncoder(embedding, bartVocabSize, quantize))
  files.set(
    `tiny-bart/onnx/decoder_model_merged${suffix}.onnx`,
    bartDecoder(vocab, bartEos, embedding, unembedding, bartVocabSize, quantize)
  )
  return files
}

/** Writes every model file under `outDir`; returns the paths written. */
export const generateModels = async (
  outDir: string,
  options?: { readonly quantize?: boolean }
): Promise<ReadonlyArray<string>> => {
  const written: Array<string> = []
  for (const [file, contents] of buildModelFiles(options)) {
    const target = path.join(outDir, file)
    await mkdir(path.dirname(target), { recursive: true })
    await writeFile(target, contents)
    written.push(target)
  }
  return written
}

const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href

if (isMain) {
  const here = path.dirname(fileURLToPath(import.meta.url))
  const outDir = process.argv.slice(2).find((arg) => !arg.startsWith("--")) ?? path.join(here, "..", "models")
  const quantize = !process.argv.includes("--float")
  const written = await generateModels(outDir, { quantize })
  for (const file of written) console.log(file)
}
