/**
 * The field table of `ExecutionStats` (issue 13, item 29) is the documentation of a shape:
 * the table in docs/orchestration.md and the one at the top of src/Stats.ts must both name
 * every field a real snapshot has, and nothing else, and must say the same thing.
 */
import { readFileSync } from "node:fs"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { setup } from "./utils/executor.js"

const rowsOf = (text: string): ReadonlyArray<string> => {
  const start = text.indexOf("| field | unit | meaning |")
  assert.isAbove(start, -1, "the table is there")
  const rows: Array<string> = []
  for (const line of text.slice(start).split("\n").slice(2)) {
    const row = line.replace(/^ \* /, "").trim()
    if (!row.startsWith("|")) break
    rows.push(row)
  }
  return rows
}

/** The field names of a table's first column (`a`, `b` in "`a`, `b`"). */
const fieldsOf = (rows: ReadonlyArray<string>): ReadonlyArray<string> =>
  rows.flatMap((row) => [...row.split("|")[1]!.matchAll(/`(\w+)`/g)].map((m) => m[1]!)).sort()

describe("ExecutionStats documentation", () => {
  it.effect("both tables list exactly the fields of a snapshot, and are the same table", () =>
    Effect.gen(function* () {
      const { executor } = yield* setup()
      yield* executor.execute({ prompt: "x" })
      const fields = Object.keys(yield* executor.stats()).sort()
      const docs = rowsOf(readFileSync(new URL("../docs/orchestration.md", import.meta.url), "utf8"))
      const source = rowsOf(readFileSync(new URL("../src/Stats.ts", import.meta.url), "utf8"))
      assert.deepStrictEqual(fieldsOf(docs), fields, "docs/orchestration.md")
      assert.deepStrictEqual(fieldsOf(source), fields, "src/Stats.ts")
      assert.deepStrictEqual(source, docs, "the two tables say the same")
    }).pipe(Effect.scoped)
  )
})
