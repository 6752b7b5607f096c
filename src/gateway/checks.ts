/**
 * What the gateway's readers of OpenAI requests share: a result that fails with a 400 naming
 * the OpenAI parameter, and how a client's value is said back in it.
 *
 * @internal
 */
import { Result } from "effect"
import * as Input from "../Input.js"
import { maxSchemaDepth } from "../Model/validate.js"
import { type GatewayError, gatewayError } from "./errors.js"

/**
 * A value read from a request, or the 400 naming what was wrong in it.
 *
 * @internal
 */
export type Checked<A> = Result.Result<A, GatewayError>

/**
 * The 400 `invalid <param>: <message>` naming an OpenAI parameter.
 *
 * @internal
 */
export const invalid = (param: string, message: string): Checked<never> =>
  Result.fail(gatewayError("InvalidRequest", `invalid ${param}: ${message}`, { param }))

/**
 * The 400 of an OpenAI parameter (or value) the gateway cannot honour: `invalid <param>: <message>`
 * with OpenAI's own code for it, `unsupported_parameter`, so that a client can tell a feature the
 * gateway lacks from a mistake in its request without reading the message.
 *
 * @internal
 */
export const unsupported = (param: string, message: string): Checked<never> =>
  Result.fail(gatewayError("InvalidRequest", `invalid ${param}: ${message}`, { param, code: "unsupported_parameter" }))

/**
 * A name or a string the client made up, as said back: at most 64 characters of it (a body of
 * megabytes would otherwise come back in the error, and in every log line that quotes it).
 *
 * @internal
 */
export const clip = (text: string): string => (text.length > 64 ? `${text.slice(0, 64)}...` : text)

/**
 * A client's value in a message: a scalar as written, anything else by its kind (it may nest
 * too deep for JSON.stringify, or be large).
 *
 * @internal
 */
export const shown = (u: unknown): string =>
  typeof u === "string"
    ? JSON.stringify(clip(u))
    : typeof u === "number" || typeof u === "boolean"
      ? String(u)
      : u === undefined
        ? "nothing"
        : Input.kindOf(u)

/**
 * The 400 of a value nested deeper than the providers take.
 *
 * @internal
 */
export const tooDeep = (param: string): Checked<never> =>
  invalid(param, `nests arrays and objects more than ${maxSchemaDepth} levels deep`)

/**
 * Whether a JSON value is an object (not `null`, not an array).
 *
 * @internal
 */
export const isObject = (u: unknown): u is Record<string, unknown> =>
  typeof u === "object" && u !== null && !Array.isArray(u)

/**
 * OpenAI's nullable fields (of a request or a message) the gateway cannot honour: null says
 * nothing (clients that write every field, replayed answers), anything else is refused.
 *
 * @internal
 */
export const nullable: ReadonlySet<string> = new Set([
  "audio",
  "function_call",
  "functions",
  "modalities",
  "prediction",
  "reasoning_effort",
  "verbosity",
  "web_search_options"
])
