/**
 * The gateway's modules load without a runtime import cycle: a cycle works only while every use of
 * the other module stays inside functions, and breaks (an `undefined` at load) on the first that does not.
 */
import { readFileSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"

const src = resolve(dirname(fileURLToPath(import.meta.url)), "../../src")

// An `import`/`export ... from` statement (this code has no semicolons, and a clause holds no quote),
// or a bare `import "..."`.
const statement = /^(?:import|export)\s+(type\s+)?(?:[^;"]*?\sfrom\s+)?"(\.[^"]+)"/gm

/** The relative modules a file loads at run time (`import type` and `export type` are erased). */
const runtimeImports = (file: string): ReadonlyArray<string> =>
  Array.from(readFileSync(file, "utf8").matchAll(statement))
    .filter((match) => match[1] === undefined)
    .map((match) => resolve(dirname(file), match[2]!.replace(/\.js$/, ".ts")))

/** Every relative module `start` loads at run time, itself included (dynamic imports are not followed). */
const closure = (start: string): ReadonlySet<string> => {
  const seen = new Set([start])
  const walk = (file: string): void => {
    for (const next of runtimeImports(file)) {
      if (seen.has(next)) continue
      seen.add(next)
      walk(next)
    }
  }
  walk(start)
  return seen
}

/** The first runtime cycle through `start`, as the files along it, or `undefined`. */
const cycleThrough = (start: string): ReadonlyArray<string> | undefined => {
  const seen = new Set<string>()
  const walk = (file: string, path: ReadonlyArray<string>): ReadonlyArray<string> | undefined => {
    for (const next of runtimeImports(file)) {
      if (next === start) return [...path, next]
      if (seen.has(next)) continue
      seen.add(next)
      const found = walk(next, [...path, next])
      if (found !== undefined) return found
    }
    return undefined
  }
  return walk(start, [start])
}

describe("Gateway: imports", () => {
  it("Gateway.ts and the key store load without a runtime cycle", () => {
    for (const file of ["Gateway.ts", "gateway/keys/KeyStore.ts"]) {
      const cycle = cycleThrough(resolve(src, file))
      assert.isUndefined(cycle, cycle?.map((f) => f.slice(src.length + 1)).join(" -> "))
    }
  })

  it("orchestra serve checks its flags and files without loading the gateway: it loads it only to start it", () => {
    const loaded = [...closure(resolve(src, "gateway/command.ts"))].map((f) => f.slice(src.length + 1))
    for (const heavy of ["Gateway.ts", "gateway/server.ts", "gateway/keys/KeyStore.ts", "gateway/admin.ts"]) {
      assert.notInclude(loaded, heavy)
    }
    assert.include(loaded, "gateway/file.ts")
  })
})
