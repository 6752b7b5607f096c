/**
 * JSON text to a value, or where it went wrong as a line and a column (1-based) and what
 * was expected there, the same on every Node version (V8's own messages name a character
 * offset, or nothing at all). A key written twice in one object is an error too: JSON.parse
 * would keep the last silently (a provider or a section pasted twice).
 *
 * @since 0.2.0
 */
import { Result } from "effect"

/**
 * Where a JSON text stops being JSON.
 *
 * @since 0.2.0
 * @category models
 */
export interface SyntaxIssue {
  readonly line: number
  readonly column: number
  readonly message: string
}

class Stop {
  constructor(
    readonly offset: number,
    readonly message: string
  ) {}
}

const describeAt = (text: string, i: number): string => {
  if (i >= text.length) return "end of input"
  const char = text[i]!
  const code = char.charCodeAt(0)
  return code < 0x20 || code === 0x7f ? `character U+${code.toString(16).padStart(4, "0")}` : `"${char}"`
}

/** Walks the grammar without building anything; throws a `Stop` at the first error. */
const scan = (text: string): void => {
  let i = 0
  const fail = (expected: string): never => {
    // JSON with comments (JSONC) is what many editors and tools write.
    const comment = text[i] === "/" && (text[i + 1] === "/" || text[i + 1] === "*")
    throw new Stop(
      i,
      `expected ${expected}, found ${describeAt(text, i)}${comment ? " (JSON has no comments: remove it)" : ""}`
    )
  }
  const space = () => {
    while (i < text.length && (text[i] === " " || text[i] === "\t" || text[i] === "\n" || text[i] === "\r")) i++
  }
  const string = () => {
    i++
    for (;;) {
      if (i >= text.length) throw new Stop(i, "unterminated string")
      const c = text.charCodeAt(i)
      if (c === 0x22) {
        i++
        return
      }
      if (c < 0x20) fail('a closing quote (a line break inside a string is written "\\n")')
      if (c === 0x5c) {
        i++
        const e = text[i]
        if (e === "u") {
          for (let k = 1; k <= 4; k++) {
            if (!/[0-9a-fA-F]/.test(text[i + k] ?? "")) {
              i += k
              fail("four hex digits after \\u")
            }
          }
          i += 5
        } else if (e !== undefined && '"\\/bfnrt'.includes(e)) {
          i++
        } else {
          fail('an escape such as \\n, \\" or \\u00e9')
        }
      } else {
        i++
      }
    }
  }
  const digits = () => {
    const start = i
    while (i < text.length && text[i]! >= "0" && text[i]! <= "9") i++
    if (i === start) fail("a digit")
  }
  const number = () => {
    if (text[i] === "-") i++
    if (text[i] === "0") i++
    else digits()
    if (text[i] === ".") {
      i++
      digits()
    }
    if (text[i] === "e" || text[i] === "E") {
      i++
      if (text[i] === "+" || text[i] === "-") i++
      digits()
    }
  }
  const word = (w: string) => {
    for (const c of w) {
      if (text[i] !== c) fail(`"${w}"`)
      i++
    }
  }
  const value = (depth: number): void => {
    if (depth > 512) throw new Stop(i, "nested more than 512 levels deep")
    space()
    const c = text[i]
    if (c === "{") {
      i++
      space()
      if (text[i] === "}") {
        i++
        return
      }
      const keys = new Map<string, number>()
      for (;;) {
        space()
        if (text[i] !== '"')
          fail(text[i] === "}" ? 'a property name (no comma before "}")' : "a property name in quotes")
        const start = i
        string()
        const key = JSON.parse(text.slice(start, i)) as string
        const first = keys.get(key)
        if (first !== undefined) {
          const { line, column } = position(text, first)
          throw new Stop(
            start,
            `duplicate key ${text.slice(start, i)} (first at line ${line}, column ${column}): JSON would keep only the last`
          )
        }
        keys.set(key, start)
        space()
        if (text[i] !== ":") fail('":" after the property name')
        i++
        value(depth + 1)
        space()
        if (text[i] === ",") {
          i++
          continue
        }
        if (text[i] === "}") {
          i++
          return
        }
        fail('"," or "}"')
      }
    }
    if (c === "[") {
      i++
      space()
      if (text[i] === "]") {
        i++
        return
      }
      for (;;) {
        space()
        if (text[i] === "]") fail('a value (no comma before "]")')
        value(depth + 1)
        space()
        if (text[i] === ",") {
          i++
          continue
        }
        if (text[i] === "]") {
          i++
          return
        }
        fail('"," or "]"')
      }
    }
    if (c === '"') string()
    else if (c === "-" || (c !== undefined && c >= "0" && c <= "9")) number()
    else if (c === "t") word("true")
    else if (c === "f") word("false")
    else if (c === "n") word("null")
    else fail("a value")
  }
  if (text.charCodeAt(0) === 0xfeff) i++
  value(0)
  space()
  if (i < text.length) fail("the end of the document")
}

const position = (text: string, offset: number): { readonly line: number; readonly column: number } => {
  let line = 1
  let start = 0
  for (let k = 0; k < offset && k < text.length; k++) {
    if (text[k] === "\n") {
      line++
      start = k + 1
    }
  }
  return { line, column: offset - start + 1 }
}

/**
 * Parses JSON text. A text that is not JSON, or that writes a key twice in one object, gives
 * the line and column of the first error.
 *
 * @since 0.2.0
 * @category parsing
 */
export const parse = (text: string): Result.Result<unknown, SyntaxIssue> => {
  // Scanned first, valid or not: JSON.parse keeps the last of a key written twice without a word.
  try {
    scan(text)
  } catch (stop) {
    if (stop instanceof Stop) return Result.fail({ ...position(text, stop.offset), message: stop.message })
    throw stop
  }
  try {
    // Editors on some systems save a byte-order mark; JSON.parse refuses it.
    return Result.succeed(JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text) as unknown)
  } catch {
    return Result.fail({ line: 1, column: 1, message: "not valid JSON" })
  }
}
