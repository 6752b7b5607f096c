/**
 * The OpenAI `/embeddings` answer: its schema (at most {@link embedBatch} vectors, as floats or
 * base64 little-endian float32), its usage, and its vectors put back in input order by `index`.
 *
 * @since 0.3.0
 */
import { Effect, Result, Schema } from "effect"
import { Base64 } from "effect/encoding"
import type { ModelError } from "../../AiError.js"
import * as Model from "../../Model.js"
import { boundedArray, maxDimensions, tokenCount, Vector } from "./decode.js"
import { type CallContext, malformed, unaskedDimensions, unevenVectors } from "./errors.js"

const Text = Schema.optional(Schema.NullOr(Schema.String))
const Count = Schema.optional(Schema.NullOr(Schema.Number))

/**
 * Texts a request embeds at most: OpenAI pretty-prints ~28 bytes a float, so 256 vectors of
 * 3072 dimensions are ~22 MB, within the default `maxResponseBytes` where 2048 would be ~176 MB.
 *
 * @since 0.3.0
 * @category constants
 */
export const embedBatch = 256

/**
 * The answer of `/embeddings`: each vector as floats or as base64; at most {@link embedBatch}
 * of them, counted before any is read.
 *
 * @since 0.2.0
 * @category schemas
 */
export const Embeddings = Schema.Struct({
  model: Text,
  data: boundedArray(
    embedBatch,
    Schema.Struct({
      index: Schema.Number,
      embedding: Schema.Union([Vector, Schema.String])
    })
  ),
  usage: Schema.optional(Schema.NullOr(Schema.Struct({ prompt_tokens: Count, total_tokens: Count })))
})

/**
 * The input tokens of an embeddings answer (`prompt_tokens`, else `total_tokens`: an
 * embedding has no output), `undefined` when the server counted none.
 *
 * @since 0.3.0
 * @category utils
 */
export const embedUsageOf = (
  wire:
    | { readonly prompt_tokens?: number | null | undefined; readonly total_tokens?: number | null | undefined }
    | null
    | undefined
): Model.Usage | undefined => {
  const input = tokenCount(wire?.prompt_tokens) ?? tokenCount(wire?.total_tokens)
  return input === undefined ? undefined : Model.usage(input, 0)
}

const maxBase64Chars = Math.ceil((maxDimensions * 4) / 3) * 4

/**
 * Embedding values sent as base64 little-endian float32, or `undefined` when the text is not
 * base64 of a whole number of float32s.
 *
 * @since 0.2.0
 * @category decoding
 */
export const decodeBase64Floats = (text: string): ReadonlyArray<number> | undefined => {
  const bytes = Base64.decode(text)
  if (Result.isFailure(bytes) || bytes.success.byteLength % 4 !== 0) return undefined
  const view = new DataView(bytes.success.buffer, bytes.success.byteOffset, bytes.success.byteLength)
  const out: Array<number> = new Array(bytes.success.byteLength / 4)
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true)
  return out
}

/**
 * The vectors of an embeddings answer in input order, by their `index` (not their position):
 * every index present once, none out of range, base64 decoded, each of `dimensions` values
 * when that many were asked for (`embeddingDimensions`); else `Decode` on `data`.
 *
 * @since 0.2.0
 * @category decoding
 */
export const vectorsByIndex = (
  data: ReadonlyArray<{ readonly index: number; readonly embedding: ReadonlyArray<number> | string }>,
  expected: number,
  ctx: CallContext,
  dimensions?: number | undefined
): Effect.Effect<ReadonlyArray<ReadonlyArray<number>>, ModelError> => {
  if (data.length !== expected) {
    return Effect.fail(malformed(ctx, "data", `expected ${expected} embeddings, got ${data.length}`))
  }
  const vectors: Array<ReadonlyArray<number> | undefined> = new Array(expected).fill(undefined)
  for (let i = 0; i < data.length; i++) {
    const item = data[i]!
    if (!Number.isInteger(item.index) || item.index < 0 || item.index >= expected) {
      return Effect.fail(malformed(ctx, `data[${i}].index`, `index ${item.index} out of range 0..${expected - 1}`))
    }
    if (vectors[item.index] !== undefined) {
      return Effect.fail(malformed(ctx, "data", `index ${item.index} appears twice`))
    }
    // Base64 float32 is 4 bytes a value: its length bounds the vector before it is decoded, as the array's does.
    if (typeof item.embedding === "string" && item.embedding.length > maxBase64Chars) {
      return Effect.fail(
        malformed(
          ctx,
          `data[${i}].embedding`,
          `expected at most ${maxDimensions} values, got some ${Math.floor((item.embedding.length * 3) / 16)}`
        )
      )
    }
    const values = typeof item.embedding === "string" ? decodeBase64Floats(item.embedding) : item.embedding
    if (values === undefined) {
      return Effect.fail(malformed(ctx, `data[${i}].embedding`, "neither a float array nor base64 float32"))
    }
    const unasked = unaskedDimensions(ctx, `data[${i}].embedding`, values.length, dimensions)
    if (unasked !== undefined) return Effect.fail(unasked)
    vectors[item.index] = values
  }
  const uneven = unevenVectors(vectors as ReadonlyArray<ReadonlyArray<number>>, ctx, "data")
  return uneven === undefined ? Effect.succeed(vectors as ReadonlyArray<ReadonlyArray<number>>) : Effect.fail(uneven)
}
