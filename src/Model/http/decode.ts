/**
 * Decoding answers: JSON text or parsed values against a wire schema, failing with a
 * `Decode` `ModelError` that names the field (`choices[0].message.content`, `(root)` for
 * text that is not JSON).
 *
 * @since 0.2.0
 */
import { Effect, Result, Schema, SchemaTransformation } from "effect"
import type { ModelError } from "../../AiError.js"
import * as Input from "../../Input.js"
import { maxSchemaDepth, nestsDeeper } from "../validate.js"
import { type CallContext, malformed } from "./errors.js"

/**
 * Decodes an answer (JSON text or an already-parsed value) in a call's context.
 *
 * @since 0.2.0
 * @category models
 */
export type Decoder<A, I = string> = (input: I, ctx: CallContext) => Effect.Effect<A, ModelError>

/**
 * Options of {@link jsonDecoder} and {@link valueDecoder}.
 *
 * @since 0.2.0
 * @category models
 */
export interface DecodeOptions {
  /** Name only the field, not the value or the schema's message (for bodies that carry secrets, such as tokens). */
  readonly quiet?: boolean | undefined
  /**
   * A check of the schema's common shape written by hand, for answers read per call or per
   * chunk: a value it accepts is passed on as it is (the schema's decoding would copy it,
   * ~3-4 µs a chunk); any other goes through the schema, whose errors name the field. It may
   * refuse what the schema takes, never take what the schema refuses, and the caller reads
   * only the schema's fields of what it passes.
   *
   * @since 0.3.0
   */
  readonly accept?: ((value: unknown) => boolean) | undefined
}

const failure = (
  error: Schema.SchemaError,
  input: unknown,
  ctx: CallContext,
  options: DecodeOptions | undefined
): ModelError => {
  const issue = Input.answerIssueOf(error, input)
  return malformed(ctx, issue.path, options?.quiet === true ? "unexpected value" : issue.message)
}

// Where V8 says a text stopped being JSON, without its message's excerpt of the text
// (`Unexpected token 's', "sk-secret-"... is not valid JSON`): an answer may carry a token.
const whereInvalid = (error: unknown): string => {
  const message = error instanceof SyntaxError ? error.message : ""
  const at = /at position (\d+)/.exec(message)
  if (at !== null) return `invalid JSON (at position ${at[1]})`
  return message === "Unexpected end of JSON input" ? "invalid JSON (the text ends too soon)" : "invalid JSON"
}

/**
 * Parses a JSON text, failing with `Decode` at `(root)`. No part of the text is quoted in the
 * error, only where it stopped being JSON.
 *
 * @since 0.2.0
 * @category decoding
 */
export const parseJson = (text: string, ctx: CallContext): Effect.Effect<unknown, ModelError> => {
  try {
    return Effect.succeed(JSON.parse(text) as unknown)
  } catch (error) {
    return Effect.fail(malformed(ctx, "(root)", whereInvalid(error)))
  }
}

/**
 * A decoder of parsed values for a wire schema that answers a `Result`: for a hot path (one
 * stream chunk) that goes on to compute from the value without another Effect.
 *
 * @since 0.3.0
 * @category decoding
 */
export const resultDecoder = <S extends Schema.ConstraintDecoder<unknown>>(
  schema: S,
  options?: DecodeOptions
): ((value: unknown, ctx: CallContext) => Result.Result<S["Type"], ModelError>) => {
  const decode = Schema.decodeUnknownResult(schema)
  const accept = options?.accept
  return (value, ctx) => {
    if (accept?.(value)) return Result.succeed(value as S["Type"])
    const result = decode(value)
    // A success carries no failure: passed on as it is, not copied, once per chunk.
    return Result.isSuccess(result)
      ? (result as unknown as Result.Result<S["Type"], ModelError>)
      : Result.fail(failure(result.failure, value, ctx, options))
  }
}

/**
 * A decoder of parsed values for a wire schema.
 *
 * @since 0.2.0
 * @category decoding
 */
export const valueDecoder = <S extends Schema.ConstraintDecoder<unknown>>(
  schema: S,
  options?: DecodeOptions
): Decoder<S["Type"], unknown> => {
  const decode = resultDecoder(schema, options)
  return (value, ctx) => {
    const result = decode(value, ctx)
    return Result.isSuccess(result) ? Effect.succeed(result.success) : Effect.fail(result.failure)
  }
}

/**
 * A decoder of JSON texts for a wire schema.
 *
 * @since 0.2.0
 * @category decoding
 */
export const jsonDecoder = <S extends Schema.ConstraintDecoder<unknown>>(
  schema: S,
  options?: DecodeOptions
): Decoder<S["Type"]> => {
  const decode = valueDecoder(schema, options)
  return (text, ctx) => Effect.flatMap(parseJson(text, ctx), (value) => decode(value, ctx))
}

/**
 * A token count as a server reported it, when it is one: a non-negative safe integer.
 * Anything else (absent, `null`, negative, fractional) is `undefined`, for the caller to
 * estimate instead of summing a bogus count into budgets and metrics.
 *
 * @since 0.3.0
 * @category decoding
 */
export const tokenCount = (value: number | null | undefined): number | undefined =>
  typeof value === "number" && Number.isSafeInteger(value) && value >= 0 ? value : undefined

/**
 * The model an answer names, when it names one: an absent or empty name (a server answering
 * `"model": ""`) is the model asked for, which stats and the gateway's answers then name.
 *
 * @since 0.3.0
 * @category decoding
 */
export const answeredModel = (answered: string | null | undefined, asked: string): string =>
  typeof answered === "string" && answered.length > 0 ? answered : asked

/**
 * A check for a JSON value of an answer that is serialised again (tool-call arguments): it
 * nests arrays and objects at most as deeply as a tool's parameters may, since
 * `JSON.stringify` overflows the stack on a value a server nested some thousands deep.
 *
 * @since 0.3.0
 * @category decoding
 */
export const shallow = Schema.makeFilter<unknown>((value) =>
  nestsDeeper(value, maxSchemaDepth) ? `nests arrays and objects more than ${maxSchemaDepth} levels deep` : undefined
)

/**
 * Where the first number that is not finite sits in a parsed JSON value (`[]` for the value
 * itself), or `undefined` when there is none. `JSON.parse` reads a literal too large for a
 * double (`1e400`) as `Infinity`, which `JSON.stringify` writes back as `null`. Walked with a
 * stack of its own, since a server may nest values some thousands deep; a container met again
 * below itself (not JSON) is not walked twice.
 *
 * @since 0.3.0
 * @category decoding
 */
export const nonFinitePath = (value: unknown): ReadonlyArray<PropertyKey> | undefined => {
  if (typeof value === "number") return Number.isFinite(value) ? undefined : []
  if (typeof value !== "object" || value === null) return undefined
  const containers: Array<object> = [value]
  // An object's keys, or `undefined` for an array; `next` is the index of the child to read next.
  const keyLists: Array<ReadonlyArray<string> | undefined> = [Array.isArray(value) ? undefined : Object.keys(value)]
  const next: Array<number> = [0]
  const onPath = new Set<object>([value])
  while (containers.length > 0) {
    const top = containers.length - 1
    const container = containers[top]!
    const keys = keyLists[top]
    const i = next[top]!
    next[top] = i + 1
    if (i >= (keys === undefined ? (container as ReadonlyArray<unknown>).length : keys.length)) {
      onPath.delete(container)
      containers.pop()
      keyLists.pop()
      next.pop()
      continue
    }
    const child =
      keys === undefined ? (container as ReadonlyArray<unknown>)[i] : (container as Record<string, unknown>)[keys[i]!]
    if (typeof child === "number") {
      if (!Number.isFinite(child)) {
        return containers.map((_, f) => (keyLists[f] === undefined ? next[f]! - 1 : keyLists[f]![next[f]! - 1]!))
      }
    } else if (typeof child === "object" && child !== null && !onPath.has(child)) {
      onPath.add(child)
      containers.push(child)
      keyLists.push(Array.isArray(child) ? undefined : Object.keys(child))
      next.push(0)
    }
  }
  return undefined
}

/**
 * A check that a parsed JSON value holds only finite numbers, naming where one is not.
 *
 * @since 0.3.0
 * @category decoding
 */
export const finite = Schema.makeFilter<unknown>((value) => {
  const path = nonFinitePath(value)
  return path === undefined ? undefined : { path, issue: "a number too large for JSON (read as Infinity)" }
})

/**
 * An array of at most `max` items, its length checked before any item is decoded: an answer
 * of a million items (tool calls) fails at once, naming the array, instead of being decoded
 * whole and refused after (a length check of `Schema.Array` runs after its items).
 *
 * @since 0.3.0
 * @category decoding
 */
export const boundedArray = <S extends Schema.Top>(max: number, item: S) =>
  atMost(max).pipe(Schema.decodeTo(Schema.Array(item), SchemaTransformation.passthroughSupertype()))

/**
 * {@link boundedArray} of at least one item.
 *
 * @since 0.3.0
 * @category decoding
 */
export const boundedNonEmptyArray = <S extends Schema.Top>(max: number, item: S) =>
  atMost(max).pipe(Schema.decodeTo(Schema.NonEmptyArray(item), SchemaTransformation.passthroughSupertype()))

const atMost = (max: number) =>
  Schema.Unknown.check(
    Schema.makeFilter((value: unknown) =>
      Array.isArray(value) && value.length > max ? `expected at most ${max} items, got ${value.length}` : undefined
    )
  )

/**
 * The dimensions an embedding vector may have: far beyond any model's (3,072 for OpenAI's largest,
 * 4,096 to 8,192 for the largest open ones). Counted before any value is decoded, so that a 32 MiB
 * vector is refused at once.
 *
 * @since 0.3.0
 * @category constants
 */
export const maxDimensions = 65_536

/**
 * One embedding vector as a JSON array of at most {@link maxDimensions} numbers, counted before any
 * is decoded.
 *
 * @since 0.3.0
 * @category decoding
 */
export const Vector = boundedArray(maxDimensions, Schema.Number)

/**
 * The choices (candidates, results) an answer or stream event may hold: OpenAI's `n` goes up to
 * 128, Gemini's `candidateCount` to 8, and a call asks for one. Only the first is read; the count
 * is checked before any is decoded, so that a 32 MiB answer of tiny entries is refused at once.
 *
 * @since 0.3.0
 * @category constants
 */
export const maxChoices = 128
