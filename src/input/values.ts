/**
 * Checks of one value's kind or form: an object where options belong, a boolean, a function, one
 * of a set of strings, a route's path; and a default that stands in only for an absent field.
 *
 * @internal
 */
import { Result } from "effect"
import type { Checked, Issue } from "./issues.js"
import { kindNames, shown } from "./shown.js"

/**
 * What an object given for options is when it cannot be options: a class instance without fields
 * of its own (a signal passed bare instead of `{ signal }`, a `Map`), whose keys would be none, so
 * the call would run as if given no options. `undefined`: a plain object, or one with fields.
 *
 * @since 0.3.0
 * @category checks
 */
export const notOptions = (input: object): string | undefined => {
  try {
    if (input instanceof AbortSignal) return "an AbortSignal (pass it as { signal })"
    const proto: unknown = Object.getPrototypeOf(input)
    if (proto === Object.prototype || proto === null || Object.keys(input).length > 0) return undefined
    const maker: unknown = (proto as { readonly constructor?: unknown }).constructor
    const name = typeof maker === "function" ? maker.name : ""
    return name === "" ? "an object without fields of its own" : `an instance of ${name}`
  } catch {
    // A `Proxy` whose trap throws: reading its fields names it.
    return undefined
  }
}

/**
 * A user's value, or `fallback` when the field is absent (`undefined`). Unlike `??`, a `null`
 * is kept, so the field's check refuses it instead of the default standing in silently.
 *
 * @since 0.3.0
 * @category checks
 */
export const orDefault = <A, B>(input: A | undefined, fallback: B): A | B => (input === undefined ? fallback : input)

const routePathPattern = /^\/[A-Za-z0-9._~\-/]*$/

/**
 * Checks the path of a route a layer adds (`"/metrics"`, `"/v1"`): a leading `/`, then
 * letters, digits and `.` `_` `~` `-` `/`, without `//`, a `.` or `..` segment, nor a trailing
 * `/` (`"/"` itself is one). An empty path, a relative one, a query string or whitespace would be a route no
 * request reaches. `example` shows a good one in the message.
 *
 * @since 0.3.0
 * @category checks
 */
export const routePath = (path: string, input: unknown, example: `/${string}`): Checked<`/${string}`> => {
  const expected = `expected a path such as ${JSON.stringify(example)}, got ${shown(input)}`
  if (
    typeof input !== "string" ||
    !routePathPattern.test(input) ||
    input.includes("//") ||
    (input.length > 1 && input.endsWith("/"))
  ) {
    return Result.fail({ path, message: expected })
  }
  // A URL resolves these segments ("/metrics/.." is "/"): fetch, curl or a browser never sends them.
  return dotSegment.test(input)
    ? Result.fail({
        path,
        message: `${expected}: a "." or ".." segment is resolved away by clients, no request reaches it`
      })
    : Result.succeed(input as `/${string}`)
}

const dotSegment = /\/\.\.?(?:\/|$)/

/**
 * The issue of a call's options (or another argument, `path`) that is not an object: `null`
 * where an options object belongs must be refused, not read (a `TypeError` out of the call).
 *
 * @since 0.3.0
 * @category checks
 */
export const notAnObject = (path: string, input: unknown): Issue | undefined =>
  typeof input === "object" && input !== null ? undefined : { path, message: `expected an object, got ${shown(input)}` }

/**
 * The issue of the first of `fields` in `options` that is given but not a boolean
 * (`cache: 0` or `cache: "false"` would otherwise read as "on": only `false` turns it off).
 *
 * @since 0.3.0
 * @category checks
 */
export const notABoolean = (options: object, fields: ReadonlyArray<string>): Issue | undefined => {
  for (const field of fields) {
    const value = (options as Record<string, unknown>)[field]
    if (value !== undefined && typeof value !== "boolean") {
      return { path: field, message: `expected true or false, got ${shown(value)}` }
    }
  }
  return undefined
}

/**
 * The issue of the first `[field, kind]` of `fields` whose value in `options` is given but not
 * of that kind (`null` included): an `onRetry: null` would throw on the first retry, a
 * `domain: 5` would label the metrics `"5"`, a `provider: "openai"` would fail as a defect.
 *
 * @since 0.3.0
 * @category checks
 */
export const notOfKind = (
  options: object,
  fields: ReadonlyArray<readonly [field: string, kind: "function" | "string" | "object"]>
): Issue | undefined => {
  for (const [field, kind] of fields) {
    const value = (options as Record<string, unknown>)[field]
    if (value !== undefined && (typeof value !== kind || value === null)) {
      return { path: field, message: `expected ${kindNames[kind]}, got ${shown(value)}` }
    }
  }
  return undefined
}

/**
 * One of `values`, exactly; anything else (`null` included) is an issue listing them.
 *
 * @since 0.3.0
 * @category checks
 */
export const oneOf = <const A extends string>(path: string, input: unknown, values: ReadonlyArray<A>): Checked<A> =>
  values.includes(input as A)
    ? Result.succeed(input as A)
    : Result.fail({
        path,
        message: `expected one of ${values.map((v) => `"${v}"`).join(", ")}, got ${shown(input)}`
      })
