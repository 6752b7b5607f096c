/**
 * Decoding answers: JSON text or parsed values against a wire schema, failing with a
 * `Decode` `ModelError` that names the field (`choices[0].message.content`, `(root)` for
 * text that is not JSON).
 *
 * @since 0.2.0
 */
import { Effect, Result, Schema } from "effect"
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
}

const failure = (error: Schema.SchemaError, ctx: CallContext, options: DecodeOptions | undefined): ModelError => {
  const issue = Input.issueOf(error)
  return malformed(ctx, issue.path, options?.quiet === true ? "unexpected value" : issue.message)
}

/**
 * Parses a JSON text, failing with `Decode` at `(root)`. The text is not quoted in the error.
 *
 * @since 0.2.0
 * @category decoding
 */
export const parseJson = (text: string, ctx: CallContext): Effect.Effect<unknown, ModelError> => {
  try {
    return Effect.succeed(JSON.parse(text) as unknown)
  } catch (error) {
    const why = error instanceof SyntaxError ? error.message : "not JSON"
    return Effect.fail(malformed(ctx, "(root)", `invalid JSON (${why})`))
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
  const decode = Schema.decodeUnknownResult(schema)
  return (value, ctx) => {
    const result = decode(value)
    return Result.isSuccess(result)
      ? Effect.succeed(result.success)
      : Effect.fail(failure(result.failure, ctx, options))
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
