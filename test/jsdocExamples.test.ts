/**
 * The `@example` blocks of the JSDoc are what a user sees on hover and copies: each import of
 * this package must name an entry point of package.json's `exports`. An internal path
 * (`effect-orchestra/gateway/admin`) resolves in a checkout through tsconfig's `paths`, so
 * the docs check compiles it, but an installed package refuses it (ERR_PACKAGE_PATH_NOT_EXPORTED).
 */
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { exports: Record<string, unknown> }
const exported = new Set(Object.keys(pkg.exports).map((key) => key.replace(/^\./, "effect-orchestra")))

/** The ```ts blocks of a file's `@example` tags, comment stars removed. */
const examples = (text: string): ReadonlyArray<string> =>
  [
    ...text.matchAll(
      /@example[^\n]*\n(?:\s*\*[^\n]*\n)*?\s*\*\s*```(?:ts|typescript)?\s*\n((?:\s*\*[^\n]*\n)*?)\s*\*\s*```/g
    )
  ].map((match) => match[1]!.replace(/^\s*\* ?/gm, ""))

describe("JSDoc examples", () => {
  it("import only the package's exported entry points", () => {
    const files = readdirSync(join(ROOT, "src"), { recursive: true, encoding: "utf8" })
      .filter((file) => file.endsWith(".ts"))
      .map((file) => `src/${file.split("\\").join("/")}`)
    const wrong: Array<string> = []
    let imports = 0
    for (const file of files) {
      for (const code of examples(readFileSync(join(ROOT, file), "utf8"))) {
        for (const [, specifier] of code.matchAll(/from\s+"(effect-orchestra(?:\/[^"]*)?)"/g)) {
          imports++
          if (!exported.has(specifier!)) wrong.push(`${file}: ${specifier}`)
        }
      }
    }
    assert.isAbove(imports, 10, "the examples were found")
    assert.deepStrictEqual(wrong, [])
  })
})
