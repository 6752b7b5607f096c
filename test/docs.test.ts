/**
 * The code in the docs compiles, and the first example of each provider page runs.
 *
 * Every ```ts block of docs/**\/*.md and README.md becomes a module of its own in a temporary
 * folder inside the package (`.cache/`, so `effect` and `@effect/platform-node` resolve from
 * node_modules), and all of them are type-checked in one run of the project's tsc with the
 * project's compiler options, except the unused-locals checks (a page may show an alternative
 * it does not use). `effect-orchestra` and `effect-orchestra/X` map to `src/` through `paths`.
 * A block fenced ```ts skip-check is left out and must say why in a `skip-check:` comment.
 * One test per document lists its failing blocks as `docs/x.md:line:column TSxxxx message`.
 *
 * The first example of each provider page then runs as a child process (node with the tsx
 * loader, which reads the same `paths`) against a loopback server that speaks the provider's
 * API, with the environment the example reads: it must exit 0 on its own, print what the
 * server answered, and send what the page says it sends.
 *
 * The metric names the pages give (benchmarks aside) are those of src/Metrics.ts, and each of those is named.
 */
import { spawn } from "node:child_process"
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { assert, describe, it, layer } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as Server from "./utils/httpServer.js"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
const require = createRequire(import.meta.url)
const TSC = join(dirname(require.resolve("typescript/package.json")), "bin", "tsc")
const TSX = pathToFileURL(require.resolve("tsx")).href
/** Output kept per stream of a child process: enough for any diagnostic list, bounded for a runaway. */
const MAX_OUTPUT = 4_000_000

// ---------------------------------------------------------------------------------------
// Blocks

interface Block {
  readonly doc: string
  /** Line of the block's first code line in the document (1-based). */
  readonly line: number
  /** Columns of fence indentation removed from each line. */
  readonly indent: number
  readonly code: string
  readonly skip: boolean
  /** Module name in the check folder. */
  readonly file: string
}

const OPEN = /^( {0,3})(`{3,}|~{3,})\s*([^\s`]*)\s*(.*)$/

/** The ```ts blocks of a Markdown text, with the line each starts on. */
const extract = (doc: string, text: string): ReadonlyArray<Block> => {
  const lines = text.split(/\r?\n/)
  const slug = doc.replace(/[^A-Za-z0-9]+/g, "-")
  const blocks: Array<Block> = []
  let open:
    | { fence: string; indent: number; lang: string; flags: string; start: number; body: Array<string> }
    | undefined
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    if (open === undefined) {
      const match = OPEN.exec(line)
      if (match !== null) {
        const [, indent, fence, lang, flags] = match
        open = { fence: fence!, indent: indent!.length, lang: lang!, flags: flags!, start: i + 2, body: [] }
      }
      continue
    }
    const close = line.trim()
    if (close.length >= open.fence.length && close === open.fence[0]!.repeat(close.length)) {
      if (open.lang === "ts" || open.lang === "typescript") {
        blocks.push({
          doc,
          line: open.start,
          indent: open.indent,
          code: open.body.join("\n"),
          skip: open.flags.split(/\s+/).includes("skip-check"),
          file: `${slug}.${blocks.length + 1}.ts`
        })
      }
      open = undefined
      continue
    }
    const strip = Math.min(open.indent, line.length - line.trimStart().length)
    open.body.push(line.slice(strip))
  }
  return blocks
}

const docs: ReadonlyArray<string> = [
  "README.md",
  ...readdirSync(join(ROOT, "docs"), { recursive: true, encoding: "utf8" })
    .filter((file) => file.endsWith(".md"))
    .map((file) => `docs/${file.split("\\").join("/")}`)
    .sort()
]

const blocksByDoc = new Map(docs.map((doc) => [doc, extract(doc, readFileSync(join(ROOT, doc), "utf8"))]))

/** A page of the checker's own, in the same tsc run: proves a broken block is reported at its line. */
const SELF_TEST = "(checker self-test)"
const selfTest = extract(
  SELF_TEST,
  [
    "# self-test",
    "",
    "```ts",
    'import * as Executor from "effect-orchestra/Executor"',
    'import { Mock } from "effect-orchestra"',
    "export const live = Executor.layerWithStats()",
    "export const mock = Mock.layer()",
    "```",
    "",
    "- a list item:",
    "  ```ts",
    '  const broken: number = "text"',
    "  ```"
  ].join("\n")
)

// ---------------------------------------------------------------------------------------
// Child processes

interface Ran {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

/** A child process to its end; interrupting the effect kills it. */
const run = (args: ReadonlyArray<string>, options: { readonly cwd: string; readonly env?: NodeJS.ProcessEnv }) =>
  Effect.callback<Ran>((resume) => {
    const child = spawn(process.execPath, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => {
      if (stdout.length < MAX_OUTPUT) stdout += chunk.toString()
    })
    child.stderr.on("data", (chunk: Buffer) => {
      if (stderr.length < MAX_OUTPUT) stderr += chunk.toString()
    })
    child.on("error", (error) => resume(Effect.die(error)))
    child.on("close", (code, signal) => resume(Effect.succeed({ code, signal, stdout, stderr })))
    return Effect.sync(() => {
      child.kill("SIGKILL")
    })
  })

// ---------------------------------------------------------------------------------------
// The check

interface Problem {
  readonly doc: string
  readonly where: string
  readonly text: string
}

interface Checked {
  readonly dir: string
  readonly blocks: ReadonlyArray<Block>
  /** Diagnostics in blocks, by document. */
  readonly problems: ReadonlyArray<Problem>
  /** Diagnostics of no file (the configuration, tsc itself). Files of src/ are others' work in progress: left out. */
  readonly global: ReadonlyArray<string>
}

class DocsCheck extends Context.Service<DocsCheck, Checked>()("test/docs/DocsCheck") {}

const DIAGNOSTIC = /^(.+?)\((\d+),(\d+)\): error (TS\d+): (.*)$/

const parse = (output: string, dir: string, blocks: ReadonlyArray<Block>) => {
  const byFile = new Map(blocks.map((block) => [join(dir, block.file), block]))
  const problems: Array<Problem> = []
  const global: Array<string> = []
  // The message of a diagnostic may go on over indented lines; those of a diagnostic outside the blocks are dropped.
  let last: { text: string } | undefined
  let continued = false
  for (const line of output.split(/\r?\n/)) {
    if (line.trim().length === 0) continue
    if (/^\s/.test(line) && continued) {
      if (last !== undefined) last.text += ` ${line.trim()}`
      continue
    }
    continued = true
    const match = DIAGNOSTIC.exec(line)
    if (match === null) {
      last = { text: line }
      global.push(line)
      continue
    }
    const [, file, row, column, code, message] = match
    const block = byFile.get(resolve(dir, file!))
    if (block === undefined) {
      last = undefined
      continue
    }
    const problem = {
      doc: block.doc,
      where: `${block.doc}:${block.line + Number(row) - 1}:${Number(column) + block.indent}`,
      text: `${code} ${message}`
    }
    problems.push(problem)
    last = problem
  }
  return { problems, global }
}

const checkAll = Effect.gen(function* () {
  const dir = yield* Effect.acquireRelease(
    Effect.sync(() => {
      mkdirSync(join(ROOT, ".cache"), { recursive: true })
      return mkdtempSync(join(ROOT, ".cache", "docs-check-"))
    }),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
  )
  const blocks = [...[...blocksByDoc.values()].flat(), ...selfTest].filter((block) => !block.skip)
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      extends: "../../tsconfig.json",
      compilerOptions: {
        noUnusedLocals: false,
        noUnusedParameters: false,
        paths: { "effect-orchestra": ["../../src/index.ts"], "effect-orchestra/*": ["../../src/*.ts"] }
      },
      include: ["*.ts"]
    })
  )
  // Each block is a module of its own: its declarations never collide with another block's.
  for (const block of blocks) writeFileSync(join(dir, block.file), `${block.code}\nexport {}\n`)
  const ran = yield* run([TSC, "-p", join(dir, "tsconfig.json"), "--pretty", "false"], { cwd: dir }).pipe(
    Effect.timeout("4 minutes")
  )
  const { global, problems } = parse(`${ran.stdout}\n${ran.stderr}`, dir, blocks)
  if (ran.code !== 0 && ran.code !== 2 && ran.code !== 1) global.push(`tsc exited with ${ran.code ?? ran.signal}`)
  return { dir, blocks, problems, global } satisfies Checked
})

const DocsCheckLive = Layer.effect(DocsCheck, checkAll)

// ---------------------------------------------------------------------------------------
// Provider pages, run

interface RunCase {
  readonly doc: string
  readonly handler: Server.Handler
  readonly env: (url: string) => Readonly<Record<string, string>>
  /** What the program prints from the server's answers. */
  readonly prints: ReadonlyArray<RegExp>
  readonly check: (requests: ReadonlyArray<Server.Recorded>) => void
}

const KEY = "docs-test-key-31415926"
const json = (request: Server.Recorded): Record<string, unknown> => (request.json ?? {}) as Record<string, unknown>
const paths = (requests: ReadonlyArray<Server.Recorded>) => requests.map((r) => `${r.method} ${r.path}`)

const openAiChunk = (content: string | null, finish: string | null = null) => ({
  object: "chat.completion.chunk",
  model: "gpt-4o-mini-2024-07-18",
  choices: [{ index: 0, delta: content === null ? {} : { content }, finish_reason: finish }]
})

const runCases: ReadonlyArray<RunCase> = [
  {
    doc: "docs/providers/openai-compatible.md",
    handler: (req, res) => {
      if (req.path === "/v1/embeddings") {
        const input = json(req)["input"] as ReadonlyArray<string>
        return Server.json(res, 200, {
          data: input.map((_, index) => ({ index, embedding: [index, 0.5] })).reverse(),
          model: "text-embedding-3-small",
          usage: { prompt_tokens: 4, total_tokens: 4 }
        })
      }
      if (json(req)["stream"] !== true) {
        return Server.json(res, 200, {
          model: "gpt-4o-mini-2024-07-18",
          choices: [
            { index: 0, message: { role: "assistant", content: "Hello from the fake OpenAI." }, finish_reason: "stop" }
          ],
          usage: { prompt_tokens: 12, completion_tokens: 6, total_tokens: 18 }
        })
      }
      return Server.chunked(
        res,
        Server.splitAwkward(
          Server.sse([
            ": keep-alive",
            openAiChunk("One, two, "),
            openAiChunk("three, four, five."),
            openAiChunk(null, "stop"),
            { ...openAiChunk(null), choices: [], usage: { prompt_tokens: 9, completion_tokens: 7, total_tokens: 16 } },
            "[DONE]"
          ])
        )
      )
    },
    env: (url) => ({ OPENAI_BASE_URL: `${url}/v1`, OPENAI_API_KEY: KEY }),
    prints: [/Hello from the fake OpenAI\./, /One, two, three, four, five\./, /stop, 7 tokens/, /2 vectors/],
    check: (requests) => {
      assert.deepStrictEqual(paths(requests), [
        "POST /v1/chat/completions",
        "POST /v1/chat/completions",
        "POST /v1/embeddings"
      ])
      for (const request of requests) assert.strictEqual(request.headers.authorization, `Bearer ${KEY}`)
      assert.deepStrictEqual(json(requests[1]!)["stream_options"], { include_usage: true })
    }
  },
  {
    doc: "docs/providers/ollama.md",
    handler: (req, res) => {
      const done = { model: "llama3.2", done: true, done_reason: "stop", prompt_eval_count: 26, eval_count: 8 }
      if (req.path === "/api/embed") {
        const input = json(req)["input"] as ReadonlyArray<string>
        return Server.json(res, 200, { model: "nomic-embed-text", embeddings: input.map(() => [0.1, 0.2, 0.3]) })
      }
      if (json(req)["stream"] !== true) {
        return Server.json(res, 200, { ...done, message: { role: "assistant", content: "Rayleigh scattering." } })
      }
      const line = (content: string) => ({ model: "llama3.2", message: { role: "assistant", content }, done: false })
      return Server.chunked(
        res,
        Server.splitAwkward(Server.ndjson([line("One, two, "), line("three, four, five."), { ...done, message: {} }])),
        { contentType: "application/x-ndjson" }
      )
    },
    env: (url) => ({ OLLAMA_HOST: url.replace("http://", "") }),
    prints: [
      /Rayleigh scattering\. \(26 in, 8 out\)/,
      /One, two, three, four, five\./,
      /stop, 8 tokens/,
      /2 vectors of 3/
    ],
    check: (requests) => {
      assert.deepStrictEqual(paths(requests), ["POST /api/chat", "POST /api/chat", "POST /api/embed"])
      assert.deepStrictEqual(json(requests[0]!)["messages"], [
        { role: "system", content: "Answer in one line." },
        { role: "user", content: "Why is the sky blue?" }
      ])
      assert.isUndefined(requests[0]!.headers.authorization)
    }
  },
  {
    doc: "docs/providers/gemini.md",
    handler: (req, res) => {
      const candidate = (text: string, finishReason?: string) => ({
        candidates: [{ content: { role: "model", parts: [{ text }] }, ...(finishReason ? { finishReason } : {}) }],
        modelVersion: "gemini-2.5-flash"
      })
      const usageMetadata = { promptTokenCount: 8, candidatesTokenCount: 5, totalTokenCount: 13 }
      if (req.path.endsWith(":batchEmbedContents")) {
        const requests = json(req)["requests"] as ReadonlyArray<unknown>
        return Server.json(res, 200, { embeddings: requests.map(() => ({ values: [0.5, 0.25, 0.125, 1] })) })
      }
      if (req.path.endsWith(":generateContent")) {
        return Server.json(res, 200, { ...candidate("2, 3 and 5.", "STOP"), usageMetadata })
      }
      return Server.chunked(
        res,
        Server.splitAwkward(
          Server.sse([candidate("One, two, "), { ...candidate("three, four, five.", "STOP"), usageMetadata }])
        )
      )
    },
    env: (url) => ({ GEMINI_API_KEY: KEY, GEMINI_BASE_URL: url }),
    prints: [
      /2, 3 and 5\. \(gemini-2\.5-flash, 13 tokens\)/,
      /One, two, three, four, five\./,
      /stop, 5 tokens/,
      /2 vectors of 4/
    ],
    check: (requests) => {
      assert.deepStrictEqual(paths(requests), [
        "POST /v1beta/models/gemini-2.5-flash:generateContent",
        "POST /v1beta/models/gemini-2.5-flash:streamGenerateContent",
        "POST /v1beta/models/gemini-embedding-001:batchEmbedContents"
      ])
      for (const request of requests) {
        assert.strictEqual(request.headers["x-goog-api-key"], KEY)
        assert.isNull(request.search.get("key"))
      }
      assert.strictEqual(requests[1]!.search.get("alt"), "sse")
      assert.deepStrictEqual(json(requests[0]!)["systemInstruction"], { parts: [{ text: "Be terse." }] })
    }
  },
  {
    doc: "docs/providers/watsonx.md",
    handler: async (req, res) => {
      if (req.path === "/identity/token") {
        // Slow enough that the three concurrent calls all wait on this one fetch.
        await Server.pause(100)
        return Server.json(res, 200, { access_token: "iam-token-1", token_type: "Bearer", expires_in: 3600 })
      }
      if (req.path === "/ml/v1/text/embeddings") {
        const inputs = json(req)["inputs"] as ReadonlyArray<string>
        return Server.json(res, 200, { results: inputs.map(() => ({ embedding: [1, 2] })), input_token_count: 2 })
      }
      if (req.path === "/ml/v1/text/chat") {
        const messages = json(req)["messages"] as ReadonlyArray<{ content: ReadonlyArray<{ text: string }> }>
        const prompt = messages.at(-1)!.content[0]!.text
        return Server.json(res, 200, {
          model_id: "ibm/granite-3-8b-instruct",
          choices: [
            { index: 0, message: { role: "assistant", content: `granite says ${prompt}` }, finish_reason: "stop" }
          ],
          usage: { prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 }
        })
      }
      const chunk = (content: string, finish: string | null = null) => ({
        model_id: "ibm/granite-3-8b-instruct",
        choices: [{ index: 0, delta: { content }, finish_reason: finish }],
        ...(finish === null ? {} : { usage: { prompt_tokens: 4, completion_tokens: 9, total_tokens: 13 } })
      })
      return Server.chunked(
        res,
        Server.splitAwkward(
          Server.sse([
            { event: "message", data: chunk("One, two, ") },
            { event: "message", data: chunk("three, four, five.", "stop") }
          ])
        )
      )
    },
    env: (url) => ({
      WATSONX_API_KEY: KEY,
      WATSONX_PROJECT_ID: "proj-docs",
      WATSONX_URL: url,
      WATSONX_IAM_URL: `${url}/identity/token`
    }),
    prints: [
      /granite says one\s+granite says two\s+granite says three/,
      /One, two, three, four, five\./,
      /stop, 9 tokens/,
      /2 vectors of 2/
    ],
    check: (requests) => {
      const iam = requests.filter((r) => r.path === "/identity/token")
      assert.lengthOf(iam, 1)
      assert.deepStrictEqual(Object.fromEntries(new URLSearchParams(iam[0]!.body)), {
        grant_type: "urn:ibm:params:oauth:grant-type:apikey",
        apikey: KEY
      })
      const api = requests.filter((r) => r.path.startsWith("/ml/"))
      assert.deepStrictEqual(api.map((r) => r.path).sort(), [
        "/ml/v1/text/chat",
        "/ml/v1/text/chat",
        "/ml/v1/text/chat",
        "/ml/v1/text/chat_stream",
        "/ml/v1/text/embeddings"
      ])
      for (const request of api) {
        assert.strictEqual(request.headers.authorization, "Bearer iam-token-1")
        assert.strictEqual(request.search.get("version"), "2024-05-31")
        assert.strictEqual(json(request)["project_id"], "proj-docs")
      }
    }
  }
]

// ---------------------------------------------------------------------------------------
// Tests

describe("metric names", () => {
  // Pages about the library (benchmarks are measurements, and may name metrics of another version).
  const pages = docs.filter((doc) => !doc.startsWith("docs/benchmarks"))
  const defined = [
    ...readFileSync(join(ROOT, "src", "Metrics.ts"), "utf8").matchAll(/Metric\.\w+\("(orchestra_\w+)"/g)
  ].map((match) => match[1]!)
  const named = new Map<string, string>()
  for (const doc of pages) {
    for (const match of readFileSync(join(ROOT, doc), "utf8").matchAll(/\borchestra_\w+/g)) {
      if (!named.has(match[0])) named.set(match[0], doc)
    }
  }

  it("every metric of src/Metrics.ts is named in the docs", () => {
    assert.isAbove(defined.length, 30)
    assert.deepStrictEqual(
      defined.filter((name) => !named.has(name)),
      []
    )
  })

  it("every metric the docs name is one of src/Metrics.ts", () => {
    const known = new Set(defined)
    assert.deepStrictEqual(
      [...named].filter(([name]) => !known.has(name)).map(([name, doc]) => `${doc}: ${name}`),
      []
    )
  })
})

describe("extract", () => {
  it("finds ts blocks with the line they start on, indented ones too, and the skip-check flag", () => {
    const blocks = extract(
      "x.md",
      [
        "# t",
        "```ts",
        "a",
        "```",
        "```sh",
        "b",
        "```",
        "- item",
        "  ```ts skip-check",
        "  // skip-check: why",
        "  c",
        "  ```"
      ].join("\n")
    )
    assert.deepStrictEqual(
      blocks.map(({ code, indent, line, skip }) => ({ code, indent, line, skip })),
      [
        { code: "a", indent: 0, line: 3, skip: false },
        { code: "// skip-check: why\nc", indent: 2, line: 10, skip: true }
      ]
    )
  })
})

layer(DocsCheckLive, { timeout: "5 minutes", excludeTestServices: true })("docs", (it) => {
  it.effect("tsc ran over every block, and a broken block is reported at its line", () =>
    Effect.gen(function* () {
      const checked = yield* DocsCheck
      assert.deepStrictEqual(checked.global, [])
      const self = checked.problems.filter((problem) => problem.doc === SELF_TEST)
      assert.deepStrictEqual(
        self.map((problem) => problem.where),
        [`${SELF_TEST}:12:9`]
      )
      assert.match(self[0]!.text, /^TS2322 /)
    })
  )

  it.effect("a block left out of the check says why (`skip-check:`)", () =>
    Effect.sync(() => {
      const silent = [...blocksByDoc.values()]
        .flat()
        .filter((block) => block.skip && !/skip-check:\s*\S/.test(block.code))
        .map((block) => `${block.doc}:${block.line}`)
      assert.deepStrictEqual(silent, [])
    })
  )

  describe("every ts block compiles", () => {
    for (const [doc, blocks] of blocksByDoc) {
      if (blocks.every((block) => block.skip)) continue
      it.effect(doc, () =>
        Effect.gen(function* () {
          const checked = yield* DocsCheck
          const problems = checked.problems.filter((problem) => problem.doc === doc)
          assert.deepStrictEqual(
            problems.map((problem) => `${problem.where} ${problem.text}`),
            []
          )
        })
      )
    }
  })

  describe("the first example of each provider page runs", () => {
    for (const example of runCases) {
      it.effect(
        example.doc,
        () =>
          Effect.gen(function* () {
            const checked = yield* DocsCheck
            const block = checked.blocks.find((block) => block.doc === example.doc)
            assert.isDefined(block, `${example.doc} has no checked ts block`)
            const server = yield* Server.make(example.handler)
            const env: NodeJS.ProcessEnv = { NO_COLOR: "1" }
            for (const [name, value] of Object.entries(process.env)) {
              if (!/^(OPENAI|OLLAMA|GEMINI|GOOGLE|WATSONX|IBM)_/.test(name)) env[name] = value
            }
            Object.assign(env, example.env(server.url), { TSX_TSCONFIG_PATH: join(checked.dir, "tsconfig.json") })
            const ran = yield* run(["--import", TSX, join(checked.dir, block!.file)], { cwd: checked.dir, env }).pipe(
              Effect.timeout("2 minutes")
            )
            assert.strictEqual(ran.code, 0, `${ran.stdout}\n${ran.stderr}`)
            for (const expected of example.prints) assert.match(ran.stdout, expected, ran.stderr)
            example.check(yield* server.requests)
          }),
        { timeout: 180_000 }
      )
    }
  })
})
