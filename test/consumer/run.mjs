// The consumer test (issue 14): pack this package, install the tarball into a fresh project whose
// only other dependency is `effect`, then run a plain .mjs program, type-check a strict .ts consumer
// with moduleResolution nodenext and bundler, and run the `orchestra` bin. Run it with each Node to
// test (`.ci/run` runs it on 22 and 24 with the same `--dir`).
import { execFileSync, spawnSync } from "node:child_process"
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"

const here = fileURLToPath(new URL(".", import.meta.url))
const root = join(here, "..", "..")
const sh = (cmd, args, cwd, extra = {}) => {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8", env: { ...process.env, ...extra } })
  return { code: r.status, out: `${r.stdout}${r.stderr}`, stdout: r.stdout }
}
const must = (cond, what, detail = "") => {
  if (!cond) {
    console.error(`consumer test FAILED: ${what}\n${detail}`)
    process.exit(1)
  }
  console.log(`ok - ${what}`)
}

// `--dir DIR`: the consumer project's folder; a second run with the same folder (another Node)
// reuses the installed project.
const dirArg = process.argv.indexOf("--dir")
let dir = dirArg >= 0 ? process.argv[dirArg + 1] : undefined
if (dir !== undefined && existsSync(join(dir, "node_modules", "effect-orchestra"))) {
  console.log(`reusing consumer project: ${dir}`)
} else {
  const packed = JSON.parse(
    execFileSync("npm", ["pack", "--json", "--pack-destination", tmpdir()], { cwd: root, encoding: "utf8" })
  )
  const tarball = join(tmpdir(), packed[0].filename)
  const files = packed[0].files.map((f) => f.path)
  must(
    files.every((f) => !/^(test|bench|examples|scripts|\.scratch|docs)\//.test(f)),
    "the tarball holds no tests, benches, examples or scratch files",
    files.filter((f) => /^(test|bench)\//.test(f)).join("\n")
  )
  must(
    files.includes("dist/index.js") && files.includes("dist/index.d.ts") && files.includes("bin/orchestra.mjs"),
    "the tarball holds dist/ and the bin"
  )
  dir ??= mkdtempSync(join(tmpdir(), "orchestra-consumer-"))
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }, null, 2))
  const install = sh("npm", ["install", "--no-audit", "--no-fund", tarball, "effect@^4.1.5"], dir)
  must(install.code === 0, "npm install of the tarball and effect", install.out)
  must(!/install-scripts/.test(install.out), "the install prints no install-script warnings", install.out)
  cpSync(join(here, "program.mjs"), join(dir, "program.mjs"))
  cpSync(join(here, "mock.config.json"), join(dir, "mock.config.json"))
  console.log(`consumer project: ${dir}`)
}

cpSync(join(here, "consumer.ts"), join(dir, "consumer.ts"))
const pkg = JSON.parse(readFileSync(join(dir, "node_modules/effect-orchestra/package.json"), "utf8"))
must(pkg.version !== undefined, `installed effect-orchestra ${pkg.version}`)
must(
  sh(process.execPath, ["-e", "import('@xenova/transformers').then(()=>process.exit(3),()=>process.exit(0))"], dir)
    .code === 0,
  "the optional local-model peer is not installed in the consumer"
)

const program = sh(process.execPath, ["program.mjs"], dir)
must(
  program.code === 0 && /consumer: 20\/20 answered/.test(program.out),
  `a plain .mjs program runs on node ${process.version}`,
  program.out
)

// The README's programs, copied as they are: they import the package as an application does.
for (const [example, key] of [
  ["quickstart.ts", /one call: mock answer to: Summarise the release notes/],
  ["promise-facade.ts", /after dispose: OrchestraError\(ShuttingDownError\)/]
]) {
  cpSync(join(root, "examples", example), join(dir, example))
  const ran = sh(process.execPath, [example], dir)
  must(
    ran.code === 0 && key.test(ran.out),
    `examples/${example} copied as is runs on node ${process.version} (its types stripped) against the published build`,
    ran.out
  )
}

for (const resolution of ["nodenext", "bundler"]) {
  const module = resolution === "nodenext" ? "nodenext" : "esnext"
  writeFileSync(
    join(dir, `tsconfig.${resolution}.json`),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        noEmit: true,
        target: "es2022",
        module,
        moduleResolution: resolution,
        exactOptionalPropertyTypes: true,
        skipLibCheck: false,
        types: []
      },
      files: ["consumer.ts"]
    })
  )
  const tsc = sh(
    process.execPath,
    [join(root, "node_modules/typescript/bin/tsc"), "-p", `tsconfig.${resolution}.json`],
    dir
  )
  must(tsc.code === 0, `a strict .ts consumer type-checks with moduleResolution ${resolution}`, tsc.out)
}

// A library or composite project emits declaration files: every type its values infer from this
// package must be nameable through the package's public modules (TS2883 otherwise).
writeFileSync(
  join(dir, "tsconfig.declaration.json"),
  JSON.stringify({
    compilerOptions: {
      strict: true,
      target: "es2022",
      module: "nodenext",
      moduleResolution: "nodenext",
      declaration: true,
      emitDeclarationOnly: true,
      outDir: "types-out",
      skipLibCheck: true,
      types: []
    },
    files: ["consumer.ts"]
  })
)
const declarations = sh(
  process.execPath,
  [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.declaration.json"],
  dir
)
must(declarations.code === 0, "a consumer emitting declaration files can name the package's types", declarations.out)

const bin = join(dir, "node_modules/.bin/orchestra")
const help = sh(process.execPath, [bin, "--help"], dir, { NO_COLOR: "" })
must(
  help.code === 0 && /orchestra/.test(help.out) && !help.out.includes("\u001b["),
  "npx orchestra --help prints usage without ANSI codes into a pipe",
  help.out
)
const test = sh(process.execPath, [bin, "test", "--json", "--prompt", "hello", "--config", "mock.config.json"], dir)
const parsed = (() => {
  try {
    return JSON.parse(test.stdout)
  } catch {
    return undefined
  }
})()
must(
  test.code === 0 && parsed?.source === "provider",
  "npx orchestra test --json --config (mock) answers one JSON document",
  test.out
)
const local = sh(process.execPath, [bin, "test", "--json", "--prompt", "hello"], dir)
must(
  local.code !== 0 && /@xenova\/transformers/.test(local.out) && /npm install/.test(local.out),
  "without a config and without the local-model peer, test fails naming the package and the install command",
  local.out
)
console.log("consumer test passed")
