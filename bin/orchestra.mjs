#!/usr/bin/env node
// The `orchestra` command. It runs the bundled JavaScript in dist/cli-bundle/ (`npm run build`
// writes it, and `npm pack` runs it): no TypeScript loader at run time, and one small chunk to load
// for `--help`. From a checkout without a build, `node --import tsx src/cli/bin.ts` runs the sources.
import { existsSync } from "node:fs"

const entry = new URL("../dist/cli-bundle/bin.js", import.meta.url)
if (!existsSync(entry)) {
  process.stderr.write("orchestra: the compiled CLI is missing (dist/cli-bundle/bin.js): run `npm run build` first\n")
  process.exit(1)
}
await import(entry.href)
