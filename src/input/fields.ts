/**
 * A caller's objects read once, into copies: a getter (or a `Proxy` trap) that throws is an issue
 * naming the field, not an exception out of a check.
 *
 * @internal
 */
import { Result } from "effect"
import type { Checked, Issue } from "./issues.js"
import { threwWhile, thrownMessage } from "./shown.js"

/**
 * The fields of an options object or item read once, into a plain object without a prototype:
 * a getter (or a `Proxy` trap) that throws is an issue naming the field (`prefix.key`), not an
 * exception out of the check. `keys` are the fields to read (those present are copied, an
 * `undefined` value included); without it, the object's own enumerable keys.
 *
 * @since 0.3.0
 * @category checks
 */
export const readFields = (
  input: object,
  keys?: ReadonlyArray<string>,
  prefix?: string
): Checked<Readonly<Record<string, unknown>>> => {
  const named = (key: string) => (prefix === undefined ? key : `${prefix}.${key}`)
  const threw = (path: string, what: string, error: unknown) => Result.fail(threwWhile(path, what, error))
  let names: ReadonlyArray<string>
  try {
    names = keys ?? Object.keys(input)
  } catch (error) {
    return threw(prefix ?? "options", "listing its fields", error)
  }
  const out: Record<string, unknown> = Object.create(null)
  for (const key of names) {
    try {
      if (keys === undefined || key in input) out[key] = (input as Record<string, unknown>)[key]
    } catch (error) {
      return threw(named(key), "reading it", error)
    }
  }
  return Result.succeed(out)
}

/**
 * The own enumerable fields of a caller's object, read once into a plain copy that goes on past
 * a field whose getter (or `Proxy` trap) throws: that field is left out, and the first such one
 * is the `issue` (named bare; `whole` when listing the fields throws, with an empty copy). An own
 * `__proto__` (from `JSON.parse`) stays a field, for a key check to refuse by name. For values
 * whose every readable field still counts (a task's record is made from what could be read).
 *
 * @since 0.3.0
 * @category checks
 */
export const readOwnFields = (
  given: object,
  whole: string
): { readonly copy: Record<string, unknown>; readonly issue?: Issue | undefined } => {
  let keys: ReadonlyArray<string>
  try {
    keys = Object.keys(given)
  } catch (cause) {
    return { copy: {}, issue: { path: whole, message: `listing its fields threw: ${thrownMessage(cause)}` } }
  }
  const copy: Record<string, unknown> = {}
  let issue: Issue | undefined
  for (const key of keys) {
    try {
      const value: unknown = (given as Record<string, unknown>)[key]
      if (key === "__proto__") {
        Object.defineProperty(copy, key, { value, enumerable: true, writable: true, configurable: true })
      } else copy[key] = value
    } catch (cause) {
      issue ??= { path: key, message: `reading it threw: ${thrownMessage(cause)}` }
    }
  }
  return { copy, issue }
}

const isPlainObject = (u: object): boolean => {
  const proto = Object.getPrototypeOf(u)
  return proto === Object.prototype || proto === null
}

// How a read that threw leaves the recursion of `snapshot`, with the issue naming the field.
class Unreadable {
  constructor(readonly issue: Issue) {}
}

const fieldPath = (at: string, key: string): string => (at === "" ? key : `${at}.${key}`)

const copyOf = (
  value: unknown,
  at: string,
  whole: string,
  copies: Map<object, unknown>,
  maxLength: number
): unknown => {
  if (typeof value !== "object" || value === null) return value
  const known = copies.get(value)
  if (known !== undefined) return known
  let length: number | undefined
  let names: ReadonlyArray<string> | undefined
  let what = "listing its fields"
  try {
    if (Array.isArray(value)) {
      what = "reading its length"
      length = (value as ReadonlyArray<unknown>).length
    } else if (isPlainObject(value)) {
      names = Object.keys(value)
    }
  } catch (error) {
    throw new Unreadable(threwWhile(whole, what, error))
  }
  if (length !== undefined) {
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new Unreadable({ path: whole, message: `expected an array, got a length of ${String(length)}` })
    }
    if (length > maxLength)
      throw new Unreadable({ path: whole, message: `expected at most ${maxLength} items, got ${length}` })
    const out: Array<unknown> = []
    copies.set(value, out)
    for (let i = 0; i < length; i++) {
      const path = `${at}[${i}]`
      let element: unknown
      try {
        element = (value as ReadonlyArray<unknown>)[i]
      } catch (error) {
        throw new Unreadable(threwWhile(path, "reading it", error))
      }
      out.push(copyOf(element, path, path, copies, maxLength))
    }
    return out
  }
  // A class instance (a `Duration`, an `AbortSignal`, a `Layer`) is the caller's object, kept as it is.
  if (names === undefined) return value
  const out: Record<string, unknown> = {}
  copies.set(value, out)
  for (const key of names) {
    const path = fieldPath(at, key)
    let field: unknown
    try {
      field = (value as Record<string, unknown>)[key]
    } catch (error) {
      throw new Unreadable(threwWhile(path, "reading it", error))
    }
    const copied = copyOf(field, path, path, copies, maxLength)
    if (key === "__proto__") {
      Object.defineProperty(out, key, { value: copied, enumerable: true, writable: true, configurable: true })
    } else {
      out[key] = copied
    }
  }
  return out
}

/**
 * A copy of a caller's plain data, read once and all of it: arrays, and objects whose
 * prototype is `Object.prototype` or `null` (their own enumerable fields), at every level. A
 * getter (or a `Proxy` trap) that throws anywhere is an issue naming that field
 * (`messages[1].content`, with what it threw as `cause`), not an exception out of a check, and
 * nothing that reads the copy later can throw or see another value. Anything else (strings,
 * numbers, functions, class instances such as a `Duration`, an `AbortSignal` or a `Layer`) is
 * kept as it is; a cycle stays a cycle. `path` is the value's own path (`""`: its fields are
 * named bare, `prompt`, `messages[0].role`); `name` names the value when listing its fields
 * throws, or when it is nested too deep to be read (default: `path`). An array longer than
 * `maxLength` (default: none) is an issue naming it, before any of it is copied: a sparse
 * `messages.length = 2 ** 32 - 1` costs nothing to make and would take the memory to copy.
 *
 * @since 0.3.0
 * @category checks
 */
export const snapshot = <A>(
  input: A,
  path: string,
  name: string = path,
  maxLength: number = Number.POSITIVE_INFINITY
): Checked<A> => {
  if (typeof input !== "object" || input === null) return Result.succeed(input)
  try {
    return Result.succeed(copyOf(input, path, name === "" ? "(root)" : name, new Map(), maxLength) as A)
  } catch (error) {
    if (error instanceof Unreadable) return Result.fail(error.issue)
    // A value nested past the stack's depth (a `RangeError`): the whole value's issue.
    return Result.fail(threwWhile(name === "" ? "(root)" : name, "reading it", error))
  }
}
