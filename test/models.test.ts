import { mkdtemp, readdir, readFile, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { generateModels } from "../scripts/generate-models.js"
import type { Service } from "../src/Model.js"
import * as Local from "../src/Model/Local.js"

const committed = fileURLToPath(Local.defaultModelPath)

const listFiles = async (root: string): Promise<Array<string>> => {
  const entries = await readdir(root, { recursive: true, withFileTypes: true })
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(root, path.join(e.parentPath, e.name)))
    .sort()
}

const tempModels = Effect.acquireRelease(
  Effect.promise(async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "orchestra-models-"))
    await generateModels(dir)
    return dir
  }),
  (dir) => Effect.promise(() => rm(dir, { recursive: true, force: true }))
)

describe("bundled tiny models", () => {
  it.effect("regenerate byte for byte from scripts/generate-models.ts", () =>
    Effect.gen(function* () {
      const dir = yield* tempModels
      const fresh = yield* Effect.promise(() => listFiles(dir))
      const bundled = yield* Effect.promise(() => listFiles(committed))
      assert.deepStrictEqual(fresh, bundled)
      assert.includeMembers(fresh, [
        path.join("tiny-gpt2", "onnx", "decoder_model_merged_quantized.onnx"),
        path.join("tiny-bert", "onnx", "model_quantized.onnx"),
        path.join("tiny-bart", "onnx", "encoder_model_quantized.onnx"),
        path.join("tiny-bart", "onnx", "decoder_model_merged_quantized.onnx")
      ])
      for (const file of fresh) {
        const [a, b] = yield* Effect.promise(() =>
          Promise.all([readFile(path.join(dir, file)), readFile(path.join(committed, file))])
        )
        assert.isTrue(a.equals(b), `${file} differs from the committed copy`)
      }
    })
  )

  it.effect("the regenerated models load offline and answer exactly like the committed ones", () =>
    Effect.gen(function* () {
      const dir = yield* tempModels
      const options = { models: { generation: ["tiny-bart"] } }
      const fresh = yield* Local.make({ ...options, modelPath: dir })
      const bundled = yield* Local.make(options)
      const ask = (model: Service) =>
        Effect.all([
          model.generate({ prompt: "the river", maxTokens: 16 }),
          model.generate({ prompt: "a quiet stone", model: "tiny-bart", maxTokens: 8 }),
          model.embed({ texts: ["hello world", "the quiet river"] })
        ])
      const [a, b] = yield* Effect.all([ask(fresh), ask(bundled)])
      assert.strictEqual(a[0].text, b[0].text)
      assert.strictEqual(a[1].text, b[1].text)
      assert.deepStrictEqual(a[2].vectors, b[2].vectors)
      assert.strictEqual(a[0].usage.outputTokens, 16)
      assert.strictEqual(a[2].vectors[0]!.length, 32)
    })
  )
})
