import { cp, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import { AutoTokenizer, env } from "@xenova/transformers"
import {
  Chunk,
  Clock,
  Config,
  ConfigProvider,
  Context,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  Layer,
  Ref,
  Scope,
  Stream,
  SubscriptionRef,
  TestClock
} from "effect"
import * as Local from "../../src/Model/Local.js"
import { ModelProvider } from "../../src/Model.js"
import { makeBatcher } from "../../src/internal/local/batcher.js"
import { makeWith, resolve } from "../../src/internal/local/provider.js"
import { type Loader, makeDetokenizer, transformersLoader } from "../../src/internal/local/transformers.js"

const modelPath = fileURLToPath(Local.defaultModelPath)

const waitFor = <A>(ref: SubscriptionRef.SubscriptionRef<A>, done: (a: A) => boolean) =>
  ref.changes.pipe(Stream.filter(done), Stream.take(1), Stream.runDrain)

/** The real transformers.js loader, counting loads, disposals, batches and decoded tokens. */
const instrumented = (path_: string = modelPath) =>
  Effect.gen(function* () {
    const loaded = yield* SubscriptionRef.make(0)
    const disposed = yield* SubscriptionRef.make(0)
    const generating = yield* SubscriptionRef.make(0)
    const tokens = yield* Ref.make(0)
    const batches = yield* Ref.make<ReadonlyArray<number>>([])
    const real = transformersLoader(resolve({ modelPath: path_ }).load)
    const loader: Loader = (modelId, purpose) =>
      real(modelId, purpose).pipe(
        Effect.tap(() => SubscriptionRef.update(loaded, (n) => n + 1)),
        Effect.map((instance) => ({
          ...instance,
          generate: (input, onDelta) =>
            Effect.acquireUseRelease(
              SubscriptionRef.update(generating, (n) => n + 1),
              () =>
                instance.generate(input, (text) => {
                  Effect.runSync(Ref.update(tokens, (n) => n + 1))
                  onDelta?.(text)
                }),
              () => SubscriptionRef.update(generating, (n) => n - 1)
            ),
          embed: (texts) =>
            Effect.zipRight(
              Ref.update(batches, (b) => [...b, texts.length]),
              instance.embed(texts)
            ),
          dispose: Effect.zipRight(
            instance.dispose,
            SubscriptionRef.update(disposed, (n) => n + 1)
          )
        }))
      )
    return { loader, loaded, disposed, generating, tokens, batches }
  })

const build = (options: Local.Options, loader?: Loader) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    const model = yield* makeWith({ ...options, modelPath: options.modelPath ?? modelPath }, loader).pipe(
      Scope.extend(scope)
    )
    return { scope, model }
  })

const norm = (v: ReadonlyArray<number>) => Math.hypot(...v)

const assertClose = (actual: ReadonlyArray<number>, expected: ReadonlyArray<number>) => {
  assert.strictEqual(actual.length, expected.length)
  for (let k = 0; k < actual.length; k++) assert.closeTo(actual[k]!, expected[k]!, 1e-5)
}

describe("Local provider", () => {
  it.scoped("loads the bundled models offline through the layer; greedy generation is reproducible", () =>
    Effect.gen(function* () {
      const context = yield* Layer.build(Local.layer())
      const model = Context.get(context, ModelProvider)
      assert.strictEqual(model.name, "local")
      assert.strictEqual(model.defaultModel, "tiny-gpt2")
      const first = yield* model.generate({ prompt: "the river", maxTokens: 12 })
      const second = yield* model.generate({ prompt: "the river", maxTokens: 12 })
      assert.strictEqual(first.text, second.text)
      assert.strictEqual(first.model, "tiny-gpt2")
      assert.strictEqual(first.finishReason, "length")
      assert.strictEqual(first.usage.outputTokens, 12)
      assert.isTrue(first.usage.inputTokens > 0)
      // the tiny decoder walks a chain of distinct words, never one repeated token
      const words = first.text.trim().split(" ")
      assert.strictEqual(words.length, 12)
      assert.strictEqual(new Set(words).size, 12)
      const other = yield* model.generate({ prompt: "a lantern", maxTokens: 12 })
      assert.notStrictEqual(other.text, first.text)
    })
  )

  it.scoped("layerConfig reads its options from Config", () =>
    Effect.gen(function* () {
      const layer = Local.layerConfig({
        generationModel: Config.string("LOCAL_GENERATION_MODEL"),
        maxTokens: Config.integer("LOCAL_MAX_TOKENS")
      })
      const context = yield* Layer.build(layer).pipe(
        Effect.withConfigProvider(
          ConfigProvider.fromMap(
            new Map([
              ["LOCAL_GENERATION_MODEL", "tiny-bart"],
              ["LOCAL_MAX_TOKENS", "3"]
            ])
          )
        )
      )
      const model = Context.get(context, ModelProvider)
      assert.strictEqual(model.defaultModel, "tiny-bart")
      const answer = yield* model.generate({ prompt: "river" })
      assert.strictEqual(answer.model, "tiny-bart")
      assert.strictEqual(answer.usage.outputTokens, 3)
      const missing = yield* Effect.flip(
        Layer.build(layer).pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map())))
      )
      assert.strictEqual(missing._tag, "ConfigError")
    })
  )

  it.scoped("ends with finishReason stop at the end-of-sequence token and at a stop sequence", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const story = yield* model.generate({ prompt: "Tell me a story: once", maxTokens: 50 })
      assert.strictEqual(story.text, " upon a time")
      assert.strictEqual(story.finishReason, "stop")
      const full = yield* model.generate({ prompt: "the river", maxTokens: 10 })
      const cut = full.text.split(" ").slice(0, 5).join(" ")
      const next = ` ${full.text.split(" ")[5]}`
      const stopped = yield* model.generate({ prompt: "the river", maxTokens: 10, stop: [next] })
      assert.strictEqual(stopped.text, cut)
      assert.strictEqual(stopped.finishReason, "stop")
    })
  )

  it.scoped("seeded sampling is reproducible, and differs from greedy", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const request = { prompt: "the river", maxTokens: 16, temperature: 1.8, seed: 7 }
      const a = yield* model.generate(request)
      const b = yield* model.generate(request)
      const greedy = yield* model.generate({ prompt: "the river", maxTokens: 16 })
      assert.strictEqual(a.text, b.text)
      assert.notStrictEqual(a.text, greedy.text)
    })
  )

  it.scoped("text2text generation with an encoder-decoder (BART-style) model", () =>
    Effect.gen(function* () {
      const { model } = yield* build({ models: { generation: ["tiny-bart"] } })
      const a = yield* model.generate({ prompt: "river", model: "tiny-bart", maxTokens: 8 })
      const again = yield* model.generate({ prompt: "river", model: "tiny-bart", maxTokens: 8 })
      const b = yield* model.generate({ prompt: "a silver compass", model: "tiny-bart", maxTokens: 8 })
      assert.strictEqual(a.model, "tiny-bart")
      assert.strictEqual(a.text, again.text)
      assert.strictEqual(a.usage.outputTokens, 8)
      assert.strictEqual(a.text.trim().split(" ").length, 8)
      // the encoder's output steers the decoder
      assert.notStrictEqual(a.text, b.text)
    })
  )

  it.scoped("rejects a model that is not configured, naming the field", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const error = yield* Effect.flip(model.generate({ prompt: "x", model: "tiny-bart" }))
      assert.strictEqual(error._tag, "ModelError")
      if (error._tag === "ModelError") {
        assert.strictEqual(error.reason, "InvalidRequest")
        assert.strictEqual(error.field, "model")
      }
      const embedError = yield* Effect.flip(model.embed({ texts: ["x"], model: "tiny-gpt2" }))
      assert.strictEqual(embedError._tag === "ModelError" && embedError.reason, "InvalidRequest")
    })
  )

  it.scoped("embeddings have the model's dimensions and unit norm (no timer involved: works under TestClock)", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const response = yield* model.embed({ texts: ["hello world", "the quiet river", "hello world"] })
      assert.strictEqual(response.vectors.length, 3)
      assert.strictEqual(response.model, "tiny-bert")
      for (const v of response.vectors) {
        assert.strictEqual(v.length, 32)
        assert.closeTo(norm(v), 1, 1e-5)
      }
      assert.deepStrictEqual(response.vectors[0], response.vectors[2])
      assert.notDeepEqual(response.vectors[0], response.vectors[1])
      assert.isTrue((response.usage?.inputTokens ?? 0) >= 6)
    })
  )

  it.live("concurrent embed calls are batched into one inference, each caller gets its own vectors", () =>
    Effect.gen(function* () {
      const texts = Array.from({ length: 12 }, (_, i) => `the ${i} quiet river carries ${"stone ".repeat(i % 4)}home`)
      const unbatched = yield* instrumented()
      const single = yield* build({ maxBatchSize: 1 }, unbatched.loader)
      const alone = yield* Effect.forEach(texts, (text) => single.model.embed({ texts: [text] }))
      assert.deepStrictEqual(
        yield* Ref.get(unbatched.batches),
        texts.map(() => 1)
      )

      const counted = yield* instrumented()
      const { model } = yield* build({ maxBatchSize: 32 }, counted.loader)
      const together = yield* Effect.forEach(texts, (text) => model.embed({ texts: [text] }), {
        concurrency: "unbounded"
      })
      // one caller with several texts joins the same kind of batch
      const multi = yield* model.embed({ texts: [texts[3]!, texts[1]!] })
      assert.deepStrictEqual(yield* Ref.get(counted.batches), [12, 2])
      together.forEach((response, i) => {
        assert.strictEqual(response.vectors.length, 1)
        assertClose(response.vectors[0]!, alone[i]!.vectors[0]!)
      })
      assertClose(multi.vectors[0]!, alone[3]!.vectors[0]!)
      assertClose(multi.vectors[1]!, alone[1]!.vectors[0]!)
    })
  )

  it.live("a batch larger than maxBatchSize is split", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented()
      const { model } = yield* build({ maxBatchSize: 4 }, counted.loader)
      const texts = Array.from({ length: 10 }, (_, i) => `text ${i}`)
      const response = yield* model.embed({ texts: texts as [string, ...Array<string>] })
      assert.strictEqual(response.vectors.length, 10)
      assert.deepStrictEqual(yield* Ref.get(counted.batches), [4, 4, 2])
    })
  )

  it.effect("a missing model fails when the layer is built, naming the path it looked in", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(Effect.scoped(Local.make({ generationModel: "no-such-model" })))
      assert.strictEqual(error._tag, "ModelError")
      assert.strictEqual(error.reason, "Unavailable")
      assert.include(error.message, path.join(modelPath, "no-such-model"))
      const elsewhere = yield* Effect.flip(Effect.scoped(Local.make({ modelPath: "/nonexistent/models" })))
      assert.strictEqual(elsewhere.reason, "Unavailable")
      assert.include(elsewhere.message, path.join("/nonexistent/models", "tiny-gpt2"))
    })
  )

  it.live(
    "with allowRemoteModels, a model is downloaded on first use into cacheDir (loopback hub), then served offline",
    () =>
      Effect.gen(function* () {
        const requests: Array<string> = []
        // A stand-in for the Hugging Face hub: /<model>/resolve/<revision>/<file>
        const server = yield* Effect.acquireRelease(
          Effect.async<ReturnType<typeof createServer>>((resume) => {
            const s = createServer((req, res) => {
              requests.push(req.url ?? "")
              const match = /^\/([^/]+)\/resolve\/main\/(.+)$/.exec(req.url ?? "")
              if (match === null) {
                res.writeHead(404).end()
                return
              }
              readFile(path.join(modelPath, match[1]!, match[2]!)).then(
                (body) => res.writeHead(200, { "content-length": body.length }).end(body),
                () => res.writeHead(404).end()
              )
            })
            s.listen(0, "127.0.0.1", () => resume(Effect.succeed(s)))
          }),
          (s) =>
            Effect.async<void>((resume) => {
              s.close(() => resume(Effect.void))
            })
        )
        const port = (server.address() as AddressInfo).port
        const dirs = yield* Effect.acquireRelease(
          Effect.promise(async () => ({
            empty: await mkdtemp(path.join(tmpdir(), "orchestra-empty-")),
            cache: await mkdtemp(path.join(tmpdir(), "orchestra-cache-"))
          })),
          (d) => Effect.promise(() => Promise.all([rm(d.empty, { recursive: true }), rm(d.cache, { recursive: true })]))
        )
        const online = yield* Local.make({
          modelPath: dirs.empty,
          allowRemoteModels: true,
          remoteHost: `http://127.0.0.1:${port}/`,
          cacheDir: dirs.cache
        })
        const answer = yield* online.generate({ prompt: "the river", maxTokens: 4 })
        assert.strictEqual(answer.usage.outputTokens, 4)
        assert.include(requests, "/tiny-bert/resolve/main/onnx/model_quantized.onnx")
        assert.include(requests, "/tiny-gpt2/resolve/main/onnx/decoder_model_merged_quantized.onnx")
        const cached = yield* Effect.promise(() => stat(path.join(dirs.cache, "tiny-gpt2", "config.json")))
        assert.isTrue(cached.isFile())
        // offline now: the cache serves the model, the (empty) model path does not matter
        const before = requests.length
        const offline = yield* Local.make({ modelPath: dirs.empty, cacheDir: dirs.cache })
        const again = yield* offline.generate({ prompt: "the river", maxTokens: 4 })
        assert.strictEqual(again.text, answer.text)
        assert.strictEqual(requests.length, before)
      }).pipe(Effect.scoped)
  )

  it.scoped("a corrupt model file fails when the layer is built", () =>
    Effect.gen(function* () {
      const dir = yield* Effect.acquireRelease(
        Effect.promise(() => mkdtemp(path.join(tmpdir(), "orchestra-corrupt-"))),
        (d) => Effect.promise(() => rm(d, { recursive: true, force: true }))
      )
      yield* Effect.promise(() =>
        cp(path.join(modelPath, "tiny-bert"), path.join(dir, "tiny-bert"), { recursive: true })
      )
      yield* Effect.promise(() =>
        cp(path.join(modelPath, "tiny-gpt2"), path.join(dir, "tiny-gpt2"), { recursive: true })
      )
      yield* Effect.promise(() =>
        writeFile(path.join(dir, "tiny-bert", "onnx", "model_quantized.onnx"), "not an onnx graph")
      )
      const error = yield* Effect.flip(Effect.scoped(Local.make({ modelPath: dir })))
      assert.strictEqual(error.reason, "Unavailable")
      assert.include(error.message, "tiny-bert")
      assert.include(error.message, dir)
    })
  )

  it.live("closing the scope disposes every instance", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented()
      const { scope, model } = yield* build({ poolSize: 2 }, counted.loader)
      // two generations at once need a second instance of the decoder
      yield* Effect.all(
        [
          model.generate({ prompt: "the river", maxTokens: 30 }),
          model.generate({ prompt: "a lantern", maxTokens: 30 }),
          model.embed({ texts: ["x"] })
        ],
        { concurrency: "unbounded" }
      )
      const loaded = yield* SubscriptionRef.get(counted.loaded)
      assert.isTrue(loaded >= 3, `loaded ${loaded}`)
      assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), 0)
      yield* Scope.close(scope, Exit.void)
      assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), loaded)
      const after = yield* Effect.flip(model.generate({ prompt: "late" }))
      assert.strictEqual(after._tag, "ShuttingDownError")
    })
  )

  it.live("closing the scope lets in-flight calls finish within the deadline", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented()
      const { scope, model } = yield* build({ shutdownDeadline: "10 seconds" }, counted.loader)
      const call = yield* Effect.fork(model.generate({ prompt: "the river", maxTokens: 60 }))
      yield* waitFor(counted.generating, (n) => n === 1)
      yield* Scope.close(scope, Exit.void)
      const answer = yield* Fiber.join(call)
      assert.strictEqual(answer.usage.outputTokens, 60)
      assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), yield* SubscriptionRef.get(counted.loaded))
    })
  )

  it.live("past the deadline, in-flight calls are interrupted (ShuttingDownError), then instances released", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented()
      const { scope, model } = yield* build({ shutdownDeadline: "100 millis" }, counted.loader)
      const call = yield* Effect.fork(Effect.either(model.generate({ prompt: "the river", maxTokens: 1_000_000 })))
      const stream = yield* Effect.fork(
        Effect.either(Stream.runDrain(model.stream({ prompt: "a lantern", maxTokens: 1_000_000 })))
      )
      yield* waitFor(counted.generating, (n) => n === 1)
      const start = yield* Clock.currentTimeMillis
      yield* Scope.close(scope, Exit.void)
      const took = (yield* Clock.currentTimeMillis) - start
      assert.isTrue(took >= 90 && took < 3_000, `close took ${took} ms`)
      const result = yield* Fiber.join(call)
      const streamResult = yield* Fiber.join(stream)
      assert.isTrue(Either.isLeft(result) && result.left._tag === "ShuttingDownError")
      assert.isTrue(Either.isLeft(streamResult) && streamResult.left._tag === "ShuttingDownError")
      assert.strictEqual(yield* SubscriptionRef.get(counted.generating), 0)
      assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), yield* SubscriptionRef.get(counted.loaded))
    })
  )

  it.live("a timeout interrupts a long generation: it stops, and the pool slot is free again", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented()
      const { model } = yield* build({ poolSize: 1 }, counted.loader)
      const start = yield* Clock.currentTimeMillis
      const timedOut = yield* Effect.flip(
        model.generate({ prompt: "the river", maxTokens: 1_000_000 }).pipe(Effect.timeout("150 millis"))
      )
      const took = (yield* Clock.currentTimeMillis) - start
      assert.strictEqual(timedOut._tag, "TimeoutException")
      assert.isTrue(took < 2_000, `timeout took ${took} ms`)
      // the generation itself stopped: no token is decoded after the interruption returned
      assert.strictEqual(yield* SubscriptionRef.get(counted.generating), 0)
      const produced = yield* Ref.get(counted.tokens)
      assert.isTrue(produced > 0)
      yield* Effect.sleep("100 millis")
      assert.strictEqual(yield* Ref.get(counted.tokens), produced)
      // the only instance is back in the pool
      const next = yield* model.generate({ prompt: "the river", maxTokens: 5 }).pipe(Effect.timeout("5 seconds"))
      assert.strictEqual(next.usage.outputTokens, 5)
    })
  )

  it.live("streams token by token, then one Finish with usage", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const parts = Chunk.toReadonlyArray(yield* Stream.runCollect(model.stream({ prompt: "the river", maxTokens: 8 })))
      const whole = yield* model.generate({ prompt: "the river", maxTokens: 8 })
      assert.strictEqual(parts.length, 9)
      const deltas = parts.slice(0, 8)
      for (const part of deltas) {
        assert.strictEqual(part._tag, "TextDelta")
        if (part._tag === "TextDelta") assert.match(part.text, /^ \w+$/)
      }
      assert.strictEqual(deltas.map((p) => (p._tag === "TextDelta" ? p.text : "")).join(""), whole.text)
      const finish = parts[8]!
      assert.strictEqual(finish._tag, "Finish")
      if (finish._tag === "Finish") {
        assert.strictEqual(finish.finishReason, "length")
        assert.deepStrictEqual(finish.usage, whole.usage)
        assert.strictEqual(finish.model, "tiny-gpt2")
      }
    })
  )

  it.live("a consumer leaving early interrupts the generation and frees the pool slot", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented()
      const { model } = yield* build({ poolSize: 1 }, counted.loader)
      const first = yield* Stream.runCollect(
        model.stream({ prompt: "the river", maxTokens: 1_000_000 }).pipe(Stream.take(3))
      )
      assert.strictEqual(first.length, 3)
      assert.strictEqual(yield* SubscriptionRef.get(counted.generating), 0)
      const produced = yield* Ref.get(counted.tokens)
      assert.isTrue(produced >= 3 && produced < 50, `decoded ${produced}`)
      yield* Effect.sleep("50 millis")
      assert.strictEqual(yield* Ref.get(counted.tokens), produced)
      const next = yield* model.generate({ prompt: "the river", maxTokens: 5 }).pipe(Effect.timeout("5 seconds"))
      assert.strictEqual(next.usage.outputTokens, 5)
    })
  )

  it.scoped("idle instances above minInstances are released after the TTL", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented()
      yield* build({ poolSize: 2, minInstances: 0, idleTimeToLive: "1 minute" }, counted.loader)
      const loaded = yield* SubscriptionRef.get(counted.loaded)
      assert.strictEqual(loaded, 2)
      assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), 0)
      yield* TestClock.adjust(Duration.minutes(2))
      yield* waitFor(counted.disposed, (n) => n === loaded)
    })
  )
})

describe("embedding batcher", () => {
  it.scoped("gathers concurrent callers for the window, skips callers that left, splits at maxBatchSize", () =>
    Effect.gen(function* () {
      const runs = yield* Ref.make<ReadonlyArray<ReadonlyArray<number>>>([])
      const batcher = yield* makeBatcher({
        maxBatchSize: 4,
        window: Duration.seconds(1),
        run: (items: ReadonlyArray<number>) =>
          Effect.as(
            Ref.update(runs, (r) => [...r, items]),
            items.map((n) => n * 10)
          )
      })
      const left = yield* Effect.fork(batcher.submit([1]))
      const a = yield* Effect.fork(batcher.submit([2]))
      const b = yield* Effect.fork(batcher.submit([3]))
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(left)
      assert.deepStrictEqual(yield* Ref.get(runs), [])
      yield* TestClock.adjust(Duration.seconds(1))
      assert.deepStrictEqual(yield* Fiber.join(a), [20])
      assert.deepStrictEqual(yield* Fiber.join(b), [30])
      assert.deepStrictEqual(yield* Ref.get(runs), [[2, 3]])
      // a full batch runs at once, without waiting for the window; the rest waits for it
      const big = yield* Effect.fork(batcher.submit([5, 6, 7, 8, 9, 10]))
      yield* Effect.yieldNow()
      yield* Effect.yieldNow()
      assert.deepStrictEqual((yield* Ref.get(runs)).slice(1), [[5, 6, 7, 8]])
      yield* TestClock.adjust(Duration.seconds(1))
      assert.deepStrictEqual(yield* Fiber.join(big), [50, 60, 70, 80, 90, 100])
      assert.deepStrictEqual((yield* Ref.get(runs)).slice(1), [
        [5, 6, 7, 8],
        [9, 10]
      ])
    })
  )
})

describe("embedding batcher abort", () => {
  it.scoped("fails the callers of the running batch and of the queue, and stops", () =>
    Effect.gen(function* () {
      const batcher = yield* makeBatcher<number, number, string>({
        maxBatchSize: 2,
        window: Duration.millis(1),
        run: () => Effect.never
      })
      const running = yield* Effect.fork(batcher.submit([1, 2]))
      const queued = yield* Effect.fork(batcher.submit([3]))
      yield* TestClock.adjust(Duration.millis(5))
      yield* batcher.abort("closing")
      assert.deepStrictEqual(yield* Effect.flip(Fiber.join(running)), "closing")
      assert.deepStrictEqual(yield* Effect.flip(Fiber.join(queued)), "closing")
    })
  )
})

describe("incremental decoding", () => {
  it.effect("streams multi-byte text token by token without broken characters", () =>
    Effect.gen(function* () {
      env.allowRemoteModels = false
      env.localModelPath = `${modelPath}${path.sep}`
      const tokenizer = yield* Effect.promise(() => AutoTokenizer.from_pretrained("tiny-gpt2"))
      const decode = (ids: ReadonlyArray<number>) => tokenizer.decode([...ids], { skip_special_tokens: true })
      const prompt = "Say:"
      const answer = " the river ünïcödé 🙂 crosses 東京 bridge"
      const promptIds = Array.from(tokenizer(prompt).input_ids.data as BigInt64Array, Number)
      const answerIds = Array.from(tokenizer(answer).input_ids.data as BigInt64Array, Number)
      assert.isTrue(answerIds.length > 20, "byte-level tokens for the non-ASCII characters")
      const next = makeDetokenizer(decode, promptIds.length, 5)
      const deltas: Array<string> = []
      for (let i = 1; i <= answerIds.length; i++) {
        const delta = next([...promptIds, ...answerIds.slice(0, i)])
        if (delta.length > 0) deltas.push(delta)
      }
      assert.strictEqual(deltas.join(""), answer)
      for (const delta of deltas) assert.notInclude(delta, "\uFFFD")
      assert.isTrue(deltas.length > 8)
    })
  )
})
