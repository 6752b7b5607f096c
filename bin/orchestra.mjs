#!/usr/bin/env node
// The `orchestra` command. It runs the bundled JavaScript in dist/cli-bundle/ (`npm run build`
// writes it, and `npm pack` runs it): no TypeScript loader at run time, and one small chunk to load
// for `--help`. From a checkout without a build, `node --import tsx src/cli/bin.ts` runs the sources.
import { existsSync } from "node:fs"

// package.json's "engines": on an older Node the CLI half works (help, the mock) and its HTTP providers die in undici
// with a stack trace. Said once, up front. (A test keeps this in step with "engines".)
const required = [22, 19]
const [major, minor] = process.versions.node.split(".").map(Number)
if (major < required[0] || (major === required[0] && minor < required[1])) {
  process.stderr.write(
    `orchestra: needs Node.js ${required.join(".")} or later (this is ${process.versions.node}): install a newer Node.js\n`
  )
  process.exit(1)
}

const entry = new URL("../dist/cli-bundle/bin.js", import.meta.url)
if (!existsSync(entry)) {
  process.stderr.write("orchestra: the compiled CLI is missing (dist/cli-bundle/bin.js): run `npm run build` first\n")
  process.exit(1)
}
await import(entry.href)
