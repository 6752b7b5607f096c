// Bundles the compiled CLI (dist/cli/bin.js) into dist/cli-bundle/: one small entry chunk for
// `orchestra --help` and a chunk per command, loaded when that command runs. Loading hundreds
// of ESM modules cost ~2.5x the start-up time of the bundle (docs/benchmarks.md, package).
// The optional peers stay external: they are imported only when a local model or Redis is built.
// undici stays external too: @effect/platform-node's Undici module is `export * from "undici"`
// (CommonJS), and esbuild's ESM chunks re-export only its `default` from it, so a bundled
// undici has no `Agent` and every HTTP provider failed at its first call. Node's own import of
// the installed package gives the named exports (undici is a dependency of this package).
import { build } from "esbuild"
import { rmSync } from "node:fs"
import { fileURLToPath } from "node:url"

// `node scripts/bundle-cli.mjs [DIST]`: DIST defaults to this package's dist/.
const dist = process.argv[2] ?? fileURLToPath(new URL("../dist", import.meta.url))
rmSync(`${dist}/cli-bundle`, { recursive: true, force: true })
await build({
  entryPoints: [`${dist}/cli/bin.js`],
  outdir: `${dist}/cli-bundle`,
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node22",
  sourcemap: true,
  // Positions only: the sources themselves were 17 MB of the package (effect's among them), and
  // `node --enable-source-maps` needs only the mappings to print a stack in the original files.
  sourcesContent: false,
  logLevel: "warning",
  external: ["@xenova/transformers", "onnxruntime-node", "sharp", "redis", "undici"],
  banner: {
    js: "import { createRequire as __orchestraRequire } from 'node:module'; const require = __orchestraRequire(import.meta.url);"
  }
})
