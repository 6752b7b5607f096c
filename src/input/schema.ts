/**
 * A Schema failure as an issue in the library's words: for config files, and for answers (a
 * server's, an agent's).
 *
 * @internal
 */
import { Option, type Schema, type SchemaAST, SchemaIssue } from "effect"
import type { Issue } from "./issues.js"
import { unknownFieldMessage } from "./keys.js"
import { kindOf } from "./shown.js"

/**
 * A Schema `LeafHook` wording a missing key and an excess one as the library's own messages and
 * the config file's checks do: `missing (required)`, `unknown field` (the schema's own words are
 * `Missing key`, `Expected no excess property`); other leaves as the schema says them.
 *
 * @since 0.3.0
 * @category conversions
 */
export const leafHook: SchemaIssue.LeafHook = (issue) =>
  issue._tag === "MissingKey"
    ? "missing (required)"
    : issue._tag === "UnexpectedKey"
      ? "unknown field"
      : SchemaIssue.defaultLeafHook(issue)

/**
 * The first issue of a Schema failure as a path (`domains[1].retry.maxAttempts`) and a
 * message, for config files. `leafHook` words the issues that are not checks (a missing key,
 * a wrong type) in place of the schema's own `Missing key`, `Expected number`.
 *
 * @since 0.2.0
 * @category conversions
 */
export const issueOf = (error: Schema.SchemaError, prefix = "", leafHook?: SchemaIssue.LeafHook): Issue => {
  const formatted = SchemaIssue.makeFormatterStandardSchemaV1({ leafHook })(error.issue)
  const first = formatted.issues[0]
  const keys = (first?.path ?? []).map((p) =>
    typeof p === "object" && p !== null && "key" in p ? (p as { key: PropertyKey }).key : p
  ) as ReadonlyArray<PropertyKey>
  const segments = keys.map((key) => (typeof key === "number" ? `[${key}]` : `.${String(key)}`))
  const joined = `${prefix}${segments.join("")}`.replace(/^\./, "")
  // `leafHook`'s unknown field, with the field it is likely a typo of (or the known ones), as the config file says it.
  const message =
    first?.message === "unknown field"
      ? unknownFieldMessage(keys.at(-1), knownFields(error.issue)(keys))
      : (first?.message ?? error.message)
  return { path: joined === "" ? "(root)" : joined, message }
}

// `Expected number` as the library says it.
const lowerFirst = (message: string): string =>
  message.startsWith("Expected ") || message.startsWith("Invalid ")
    ? `${message[0]!.toLowerCase()}${message.slice(1)}`
    : message

// What a type expects, as the schema's formatter says it (`number`, `{ readonly "n": number }`).
const expectedOf = (ast: SchemaAST.AST): string =>
  lowerFirst(
    SchemaIssue.makeFormatterStandardSchemaV1()(new SchemaIssue.InvalidType(ast, Option.none())).issues[0]!.message
  )

// A leaf of an answer as the library words it; a missing field's type is found by `answerIssueOf`.
const answerLeaf: SchemaIssue.LeafHook = (issue) =>
  issue._tag === "MissingKey" ? "missing" : lowerFirst(SchemaIssue.defaultLeafHook(issue))

// The value at `path` of a decoded input, when it is there.
const present = (input: unknown, path: ReadonlyArray<PropertyKey>): { readonly value: unknown } | undefined => {
  let value = input
  for (const key of path) {
    if (typeof value !== "object" || value === null || !Object.hasOwn(value, key)) return undefined
    value = (value as Record<PropertyKey, unknown>)[key]
  }
  return { value }
}

/**
 * The first issue of a Schema failure decoding `input` (an answer: a server's, an agent's), in
 * the library's words: its path (`data.items[2].n`, `(root)`) and `missing (expected number)`
 * for a missing field, `expected number, got a string` for a value of another type (its kind,
 * never the value: an answer may carry a token). Effect Schema says `Missing key`, `Expected
 * number`.
 *
 * @since 0.3.0
 * @category conversions
 */
export const answerIssueOf = (error: Schema.SchemaError, input: unknown): Issue => {
  const issue = issueOf(error, "", answerLeaf)
  if (issue.message === "missing") {
    const expected = missingTypes(error.issue).get(issue.path)
    return { path: issue.path, message: expected === undefined ? "missing (required)" : `missing (${expected})` }
  }
  if (!issue.message.startsWith("expected ") || issue.message.includes(", got ")) return issue
  const first = SchemaIssue.makeFormatterStandardSchemaV1({ leafHook: answerLeaf })(error.issue).issues[0]
  const keys = (first?.path ?? []).map((p) =>
    typeof p === "object" && p !== null && "key" in p ? (p as { key: PropertyKey }).key : p
  ) as ReadonlyArray<PropertyKey>
  const at = present(input, keys)
  return at === undefined ? issue : { path: issue.path, message: `${issue.message}, got ${kindOf(at.value)}` }
}

// The type each missing field of a failure was to have, by the field's path as `issueOf` writes it.
const missingTypes = (issue: SchemaIssue.Issue): ReadonlyMap<string, string> => {
  const found = new Map<string, string>()
  const walk = (issue: SchemaIssue.Issue, path: string): void => {
    switch (issue._tag) {
      case "Pointer":
        walk(
          issue.issue,
          `${path}${issue.path.map((key) => (typeof key === "number" ? `[${key}]` : `.${String(key)}`)).join("")}`
        )
        return
      case "Filter":
      case "Encoding":
        walk(issue.issue, path)
        return
      case "Composite":
        if (issue.ast._tag === "Objects") {
          for (const inner of issue.issues) {
            if (inner._tag !== "Pointer" || inner.issue._tag !== "MissingKey" || inner.path.length !== 1) continue
            const field = issue.ast.propertySignatures.find((p) => p.name === inner.path[0])
            if (field !== undefined)
              found.set(`${path}.${String(field.name)}`.replace(/^\./, ""), expectedOf(field.type))
          }
        }
        for (const inner of issue.issues) walk(inner, path)
        return
      case "AnyOf":
        for (const inner of issue.issues) walk(inner, path)
        return
    }
  }
  walk(issue, "")
  return found
}

const pathKey = (path: ReadonlyArray<PropertyKey>): string => path.map(String).join("\u0000")

/**
 * The fields of the object each unknown field of a Schema failure was found in, by the unknown
 * field's path (the path of the failure's issue, as its formatter gives it).
 *
 * @since 0.3.0
 * @category conversions
 */
export const knownFields = (
  issue: SchemaIssue.Issue
): ((path: ReadonlyArray<PropertyKey>) => ReadonlyArray<string> | undefined) => {
  const found = new Map<string, ReadonlyArray<string>>()
  const walk = (issue: SchemaIssue.Issue, path: ReadonlyArray<PropertyKey>): void => {
    switch (issue._tag) {
      case "Pointer":
        walk(issue.issue, [...path, ...issue.path])
        return
      case "Filter":
      case "Encoding":
        walk(issue.issue, path)
        return
      case "Composite":
      case "AnyOf":
        for (const inner of issue.issues) walk(inner, path)
        return
      case "UnexpectedKey":
        if (issue.ast._tag === "Objects") {
          found.set(
            pathKey(path),
            issue.ast.propertySignatures.map((field) => String(field.name))
          )
        }
        return
    }
  }
  walk(issue, [])
  return (path) => found.get(pathKey(path))
}
