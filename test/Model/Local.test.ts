import { execFile } from "node:child_process"
import { cp, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { setImmediate as nextMacrotask } from "node:timers/promises"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import * as Transformers from "@xenova/transformers"
import { AutoTokenizer, env } from "@xenova/transformers"
import {
  Config,
  ConfigProvider,
  Context,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Ref,
  Scope,
  Stream,
  SubscriptionRef
} from "effect"
import { TestClock } from "effect/testing"
import { ModelError } from "../../src/AiError.js"
import * as CircuitBreaker from "../../src/CircuitBreaker.js"
import * as Executor from "../../src/Executor.js"
import type * as Model from "../../src/Model.js"
import { ModelProvider } from "../../src/Model.js"
import * as Local from "../../src/Model/Local.js"
import * as Mock from "../../src/Model/Mock.js"
import { makeBatcher } from "../../src/Model/local/batcher.js"
import { makeDetokenizer, makeStopMatcher } from "../../src/Model/local/decoding.js"
import { decoderOf, type Instance } from "../../src/Model/local/instance.js"
import { BUFFERED, type Internals, makeWith } from "../../src/Model/local/provider.js"
import type { Loader } from "../../src/Model/local/runtime.js"
import { spellingOf } from "../../src/Model/local/tokenizer.js"
import { captureLogs } from "../utils/logs.js"

const modelPath = fileURLToPath(Local.defaultModelPath)
const root = fileURLToPath(new URL("../../", import.meta.url))

const waitFor = <A>(ref: SubscriptionRef.SubscriptionRef<A>, done: (a: A) => boolean) =>
  SubscriptionRef.changes(ref).pipe(Stream.filter(done), Stream.take(1), Stream.runDrain)

/** Real event-loop turns (a generation decodes between them). */
const turns = (n: number) =>
  Effect.promise(async () => {
    for (let i = 0; i < n; i++) await nextMacrotask()
  })

/**
 * The real transformers.js loader, counting loads, disposals, running generations, decoded
 * pieces and batches. With `rendezvous`, a generation starts decoding only once that many
 * are running (so concurrent calls really hold that many instances at once).
 */
const instrumentedWith = (rendezvous: number) =>
  Effect.gen(function* () {
    const loaded = yield* SubscriptionRef.make(0)
    const disposed = yield* SubscriptionRef.make(0)
    const generating = yield* SubscriptionRef.make(0)
    const decoded = { pieces: 0 }
    const batches: Array<number> = []
    const instrument =
      (real: Loader): Loader =>
      (modelId, purpose) =>
        real(modelId, purpose).pipe(
          Effect.tap(() => SubscriptionRef.update(loaded, (n) => n + 1)),
          Effect.map(
            (instance): Instance => ({
              ...instance,
              generate: (input, options) =>
                Effect.acquireUseRelease(
                  SubscriptionRef.update(generating, (n) => n + 1),
                  () =>
                    Effect.andThen(
                      waitFor(generating, (n) => n >= rendezvous),
                      instance.generate(input, {
                        ...options,
                        onDelta: (text) => {
                          decoded.pieces += 1
                          options?.onDelta?.(text)
                        }
                      })
                    ),
                  () => SubscriptionRef.update(generating, (n) => n - 1)
                ),
              embed: (texts) =>
                Effect.andThen(
                  Effect.sync(() => batches.push(texts.length)),
                  instance.embed(texts)
                ),
              dispose: Effect.andThen(
                instance.dispose,
                SubscriptionRef.update(disposed, (n) => n + 1)
              )
            })
          )
        )
    return { instrument, loaded, disposed, generating, decoded, batches }
  })

const instrumented = instrumentedWith(1)

/** Builds a provider in its own scope (closed by the test, or with the test's scope). */
const build = (options: Local.Options, internals: Internals = {}) =>
  Effect.gen(function* () {
    const outer = yield* Effect.scope
    const scope = yield* Scope.fork(outer)
    const model = yield* makeWith({ ...options, modelPath: options.modelPath ?? modelPath }, internals).pipe(
      Scope.provide(scope)
    )
    return { scope, model }
  })

/** Two generations running at the same time (so a pool of two loads a second decoder), and an embedding. */
const twoGenerationsAndAnEmbedding = (
  model: Model.Service,
  counted: { readonly generating: SubscriptionRef.SubscriptionRef<number> }
) =>
  Effect.gen(function* () {
    const calls = yield* Effect.forkChild(
      Effect.all(
        [
          model.generate({ prompt: "the river", maxTokens: 20 }),
          model.generate({ prompt: "a lantern", maxTokens: 20 }),
          model.embed({ texts: ["x"] })
        ],
        { concurrency: "unbounded" }
      )
    )
    yield* waitFor(counted.generating, (n) => n === 2)
    yield* Fiber.join(calls)
  })

const norm = (v: ReadonlyArray<number>) => Math.hypot(...v)

const assertClose = (actual: ReadonlyArray<number>, expected: ReadonlyArray<number>) => {
  assert.strictEqual(actual.length, expected.length)
  for (let k = 0; k < actual.length; k++) assert.closeTo(actual[k]!, expected[k]!, 1e-5)
}

const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.promise(() => mkdtemp(path.join(tmpdir(), prefix))),
    (dir) => Effect.promise(() => rm(dir, { recursive: true, force: true }))
  )

/** A stand-in for the Hugging Face hub on 127.0.0.1: /<model>/resolve/main/<file>, or a hub that never answers. */
const fakeHub = (behaviour: "serve" | "stall") =>
  Effect.gen(function* () {
    const requests: Array<string> = []
    const server = yield* Effect.acquireRelease(
      Effect.callback<Server>((resume) => {
        const s = createServer((req, res) => {
          requests.push(req.url ?? "")
          if (behaviour === "stall") return
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
        Effect.callback<void>((resume) => {
          s.closeAllConnections()
          s.close(() => resume(Effect.void))
        })
    )
    return { requests, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/` }
  })

/**
 * The real transformers.js with its causal-LM loads from the `from`-th on held until `open()`
 * (a slow download, say), counting the loads begun and the decoders disposed; `reached` waits
 * (on those events, not on time) until the counts satisfy a predicate.
 */
const gatedLoads = (from: number) => {
  let open = () => {}
  const gate = new Promise<void>((resolve) => {
    open = resolve
  })
  const counts = { started: 0, loaded: 0, disposed: 0 }
  const waiters = new Set<() => void>()
  const changed = () => {
    for (const waiter of waiters) waiter()
  }
  const reached = (done: (c: typeof counts) => boolean) =>
    Effect.callback<void>((resume) => {
      const check = () => {
        if (!done(counts)) return
        waiters.delete(check)
        resume(Effect.void)
      }
      waiters.add(check)
      check()
      return Effect.sync(() => waiters.delete(check))
    })
  const real = Transformers.AutoModelForCausalLM
  const AutoModelForCausalLM = Object.assign(() => {}, {
    from_pretrained: async (id: string, options: object) => {
      counts.started += 1
      changed()
      if (counts.started >= from) await gate
      const model = await real.from_pretrained(id, options)
      counts.loaded += 1
      const dispose = model.dispose.bind(model)
      model.dispose = () => {
        counts.disposed += 1
        changed()
        return dispose()
      }
      changed()
      return model
    }
  })
  const internals: Internals = { importer: async () => ({ ...Transformers, AutoModelForCausalLM }) }
  return { internals, counts, reached, open: () => open() }
}

/** A test holding loads with `gatedLoads`: the gate opens when it ends, pass or fail, so nothing is left waiting. */
const withGate = <A, E, R>(from: number, body: (gated: ReturnType<typeof gatedLoads>) => Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    const gated = gatedLoads(from)
    return Effect.ensuring(
      body(gated),
      Effect.sync(() => gated.open())
    )
  })

/**
 * Whether the fiber has ended within `n` real event-loop turns (no clock involved): for a
 * close that must not wait on something that will not happen by itself (a held load).
 */
const endsWithin = (fiber: Fiber.Fiber<unknown, unknown>, n: number) =>
  Effect.gen(function* () {
    for (let i = 0; i < n && fiber.pollUnsafe() === undefined; i++) yield* turns(1)
    return fiber.pollUnsafe() !== undefined
  })

describe("Local provider", () => {
  it.effect("loads the bundled models offline through the layer; greedy generation is reproducible", () =>
    Effect.gen(function* () {
      const context = yield* Layer.build(Local.layer({ poolSize: 2 }))
      const model = Context.get(context, ModelProvider)
      assert.strictEqual(model.name, "local")
      assert.strictEqual(model.defaultModel, "tiny-gpt2")
      assert.strictEqual(model.maxConcurrency, 2)
      const first = yield* model.generate({ prompt: "the river", maxTokens: 12 })
      const second = yield* model.generate({ prompt: "the river", maxTokens: 12 })
      assert.strictEqual(first.text, second.text)
      assert.strictEqual(first.model, "tiny-gpt2")
      assert.strictEqual(first.provider, "local")
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

  it.effect("layerConfig reads its options from Config", () =>
    Effect.gen(function* () {
      const layer = Local.layerConfig({
        generationModel: Config.String("LOCAL_GENERATION_MODEL"),
        maxTokens: Config.Int("LOCAL_MAX_TOKENS")
      })
      const withEnv = (env: Record<string, string>) =>
        Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnvRecord(env))
      const context = yield* Layer.build(layer).pipe(
        withEnv({ LOCAL_GENERATION_MODEL: "tiny-bart", LOCAL_MAX_TOKENS: "3" })
      )
      const model = Context.get(context, ModelProvider)
      assert.strictEqual(model.defaultModel, "tiny-bart")
      const answer = yield* model.generate({ prompt: "river" })
      assert.strictEqual(answer.model, "tiny-bart")
      assert.strictEqual(answer.usage.outputTokens, 3)
      // a variable that is not set is effect's own Config.ConfigError; a wrong value is ours
      const missing = yield* Effect.flip(Layer.build(layer).pipe(withEnv({})))
      assert.strictEqual(missing._tag, "ConfigError")
      const wrong = yield* Effect.flip(
        Layer.build(layer).pipe(withEnv({ LOCAL_GENERATION_MODEL: "tiny-gpt2", LOCAL_MAX_TOKENS: "0" }))
      )
      assert.strictEqual(wrong._tag, "OptionError")
      assert.isTrue("path" in wrong && wrong.path === "maxTokens")
    })
  )

  it.effect("every numeric option is checked when the provider is built: an OptionError naming the field", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [Local.Options, string]> = [
        [{ poolSize: 0 }, "poolSize"],
        [{ poolSize: 1.5 }, "poolSize"],
        [{ poolSize: Number.NaN }, "poolSize"],
        [{ minInstances: -1 }, "minInstances"],
        [{ minInstances: 3, poolSize: 2 }, "minInstances"],
        [{ idleTimeToLive: 0 }, "idleTimeToLive"],
        [{ idleTimeToLive: "soon" as Duration.Input }, "idleTimeToLive"],
        [{ maxBatchSize: 0 }, "maxBatchSize"],
        [{ maxBatchSize: Number.POSITIVE_INFINITY }, "maxBatchSize"],
        [{ batchWindow: -5 }, "batchWindow"],
        [{ shutdownDeadline: Number.NaN }, "shutdownDeadline"],
        [{ loadTimeout: "-1 seconds" }, "loadTimeout"],
        [{ maxTokens: 0 }, "maxTokens"],
        [{ maxTokens: 2.5 }, "maxTokens"],
        [{ remoteHost: "ftp://mirror.example" }, "remoteHost"],
        [{ generationModel: "" }, "generationModel"],
        [{ models: { embedding: [" x"] } }, "models.embedding[0]"],
        // null is a wrong value, not the default.
        [{ poolSize: null as never }, "poolSize"],
        [{ loadTimeout: null as never }, "loadTimeout"],
        [{ remoteHost: null as never }, "remoteHost"],
        [{ modelPath: null as never }, "modelPath"],
        // A misspelt key would leave its default in place unseen.
        [{ poolsize: 2 } as never, "poolsize"],
        [{ models: "tiny-bart" as never }, "models"],
        [{ models: null as never }, "models"],
        [{ models: { generaton: ["tiny-bart"] } as never }, "models.generaton"],
        // A value JSON cannot write: its message names its type (building it used to throw a TypeError).
        [{ generationModel: 1n as never }, "generationModel"],
        [{ remoteHost: 1n as never }, "remoteHost"],
        [{ allowRemoteModels: 1n as never }, "allowRemoteModels"],
        [{ requestLimits: { maxEmbedTexts: 0 } }, "requestLimits.maxEmbedTexts"],
        [{ requestLimits: { maxInputChars: 1.5 } }, "requestLimits.maxInputChars"],
        [{ requestLimits: { maxMesages: 3 } as never }, "requestLimits.maxMesages"],
        [{ requestLimits: null as never }, "requestLimits"]
      ]
      for (const [options, field] of cases) {
        const error = yield* Effect.flip(Effect.scoped(Local.make(options)))
        assert.strictEqual(error._tag, "OptionError", `${field}: ${error.message}`)
        if (error._tag === "OptionError") assert.strictEqual(error.path, field)
      }
      // No options object at all (a JavaScript caller, a config that yields null).
      const none = yield* Effect.flip(Effect.scoped(Local.make(null as never)))
      assert.strictEqual(none._tag === "OptionError" && none.path, "options")
    })
  )

  it.effect("a remoteHost with credentials, a query or a fragment is refused, without echoing the credentials", () =>
    Effect.gen(function* () {
      // fetch refuses a URL with credentials, and transformers.js appends the file's path after
      // the host as text: a query or fragment would swallow it. Each would only fail on first download.
      for (const remoteHost of [
        "https://user:s3cret-token@mirror.example/",
        "https://s3cret-token@mirror.example/",
        "https://mirror.example/hub?token=s3cret-token",
        "https://mirror.example/hub#s3cret-token"
      ]) {
        const error = yield* Effect.flip(Effect.scoped(Local.make({ remoteHost, allowRemoteModels: true })))
        assert.strictEqual(error._tag, "OptionError", remoteHost)
        if (error._tag === "OptionError") assert.strictEqual(error.path, "remoteHost")
        assert.notInclude(error.message, "s3cret-token")
      }
    })
  )

  it.effect("requestLimits are the user's: 3,000 texts pass a raised bound, a lowered one refuses by field", () =>
    Effect.gen(function* () {
      const raised = (yield* build({ requestLimits: { maxEmbedTexts: 3_000 } })).model
      const texts = Array.from({ length: 3_000 }, (_, i) => `text ${i}`) as unknown as readonly [
        string,
        ...Array<string>
      ]
      assert.strictEqual((yield* raised.embed({ texts })).vectors.length, 3_000)
      const lowered = (yield* build({ requestLimits: { maxInputChars: 10, maxMessages: 2, maxEmbedTexts: 1 } })).model
      const refused = [
        yield* Effect.flip(lowered.generate({ prompt: "a prompt of 24 characters", maxTokens: 2 })),
        yield* Effect.flip(Stream.runDrain(lowered.stream({ prompt: "a prompt of 24 characters", maxTokens: 2 }))),
        yield* Effect.flip(
          lowered.generate({
            messages: [
              { role: "user", content: "a" },
              { role: "assistant", content: "b" },
              { role: "user", content: "c" }
            ]
          })
        ),
        yield* Effect.flip(lowered.embed({ texts: ["a", "b"] }))
      ]
      assert.deepStrictEqual(
        refused.map((error) => (error._tag === "ModelError" ? [error.reason, error.field, error.provider] : [])),
        [
          ["InvalidRequest", "prompt", "local"],
          ["InvalidRequest", "prompt", "local"],
          ["InvalidRequest", "messages", "local"],
          ["InvalidRequest", "texts", "local"]
        ]
      )
    })
  )

  it.effect("a top-level option whose getter throws is an OptionError naming it, not an exception out of make", () =>
    Effect.gen(function* () {
      for (const field of ["poolSize", "modelPath"]) {
        const options = Object.defineProperty({}, field, {
          enumerable: true,
          get: () => {
            throw new Error("not readable")
          }
        }) as Local.Options
        const error = yield* Effect.flip(Effect.scoped(Effect.suspend(() => Local.make(options))))
        assert.strictEqual(error._tag, "OptionError", field)
        if (error._tag === "OptionError") {
          assert.strictEqual(error.path, field)
          assert.include(error.message, "not readable")
        }
      }
    })
  )

  it.effect("a models field whose getter throws is an OptionError naming it, not a defect", () =>
    Effect.gen(function* () {
      const models = {
        get generation(): ReadonlyArray<string> {
          throw new Error("not readable")
        }
      }
      const error = yield* Effect.flip(Effect.scoped(Local.make({ models })))
      assert.strictEqual(error._tag, "OptionError")
      if (error._tag === "OptionError") {
        assert.strictEqual(error.path, "models.generation")
        assert.include(error.message, "not readable")
      }
    })
  )

  it.effect(
    "a prompt longer than the model's context is InvalidRequest before the prompt pass; the instance serves on",
    () =>
      Effect.gen(function* () {
        const { model } = yield* build({ poolSize: 1 })
        // ~5 tokens a word: 2,500 tokens, past tiny-gpt2's 2,048 positions (the prompt pass
        // would block the process for seconds, and a real GPT-2 would fail inside ONNX).
        const error = yield* Effect.flip(model.generate({ prompt: "word ".repeat(500), maxTokens: 5 }))
        assert.strictEqual(error._tag, "ModelError")
        if (error._tag === "ModelError") {
          assert.strictEqual(error.reason, "InvalidRequest")
          assert.match(error.message, /the prompt has \d+ tokens; model "tiny-gpt2" reads at most 2048/)
        }
        const after = yield* model.generate({ prompt: "Tell me a story: once", maxTokens: 5 })
        assert.strictEqual(after.text, " upon a time")
      })
  )

  it.effect("a prompt with more characters than the context's tokens can spell is refused before it is tokenized", () =>
    Effect.gen(function* () {
      const { model } = yield* build({ models: { generation: ["tiny-bart"] } })
      // tiny-gpt2's longest token has 13 characters ("<|endoftext|>"): 2,047 tokens (a position
      // is left for the answer) spell at most 26,611 characters. Tokenizing a million blocked the
      // process for ~2 s, where no deadline can fire.
      const huge = "x".repeat(1_000_000)
      const refused = [
        yield* Effect.flip(model.generate({ prompt: huge, maxTokens: 2 })),
        yield* Effect.flip(Stream.runDrain(model.stream({ prompt: huge, maxTokens: 2 }))),
        yield* Effect.flip(model.generate({ prompt: "x".repeat(26_612), maxTokens: 2 })),
        // tiny-bart: 1,024 positions, its longest token 11 characters ("Ġeverywhere", the Ġ a space)
        yield* Effect.flip(model.generate({ prompt: huge, model: "tiny-bart", maxTokens: 2 }))
      ]
      assert.deepStrictEqual(
        refused.map((error) => (error._tag === "ModelError" ? [error.reason, error.field, error.message] : [])),
        [
          ...Array.from({ length: 2 }, () => [
            "InvalidRequest",
            "messages",
            'the prompt has 1000000 characters, more than the 2047 tokens model "tiny-gpt2" reads (its answer included) can spell: its longest token has 13 characters'
          ]),
          [
            "InvalidRequest",
            "messages",
            'the prompt has 26612 characters, more than the 2047 tokens model "tiny-gpt2" reads (its answer included) can spell: its longest token has 13 characters'
          ],
          [
            "InvalidRequest",
            "messages",
            'the prompt has 1000000 characters, more than the 1024 tokens model "tiny-bart" reads can spell: its longest token has 11 characters'
          ]
        ]
      )
      // One character fewer is tokenized, and refused by its count of tokens.
      const counted = yield* Effect.flip(model.generate({ prompt: `${"x ".repeat(13_305)}x`, maxTokens: 2 }))
      assert.match(counted.message, /^the prompt has \d+ tokens; model "tiny-gpt2" reads at most 2048/)
    })
  )

  it.effect(
    "with an added token that strips the spaces before it (BART's <mask>), only the spaces it may swallow are discounted",
    () =>
      Effect.gen(function* () {
        // tiny-gpt2 with "<|endoftext|>" stripping the spaces on its left, as BART's and RoBERTa's <mask> does.
        const dir = yield* tempDir("orchestra-strip-")
        yield* Effect.promise(async () => {
          await cp(path.join(modelPath, "tiny-bert"), path.join(dir, "tiny-bert"), { recursive: true })
          await cp(path.join(modelPath, "tiny-gpt2"), path.join(dir, "strip-gpt2"), { recursive: true })
          const file = path.join(dir, "strip-gpt2", "tokenizer.json")
          const tokenizer = JSON.parse(await readFile(file, "utf8"))
          for (const token of tokenizer.added_tokens) token.lstrip = true
          await writeFile(file, JSON.stringify(tokenizer))
        })
        const { model } = yield* build({ modelPath: dir, generationModel: "strip-gpt2" })
        // transformers.js looks for the token after every space of a run (~1 s for 20,000 spaces, growing
        // with their square): a run no token follows is spelled by its own tokens, and counted.
        const spaces = `x${" ".repeat(30_000)}x`
        const error = yield* Effect.flip(model.generate({ prompt: spaces, maxTokens: 2 }))
        assert.deepStrictEqual(error._tag === "ModelError" ? [error.reason, error.field, error.message] : [], [
          "InvalidRequest",
          "messages",
          'the prompt has 30002 characters, more than the 2047 tokens model "strip-gpt2" reads (its answer included) can spell: its longest token has 13 characters'
        ])
        // The run before the token is swallowed with it: the prompt has the tokens it has without the run.
        const swallowed = yield* model.generate({ prompt: `${" ".repeat(30_000)}<|endoftext|>the river`, maxTokens: 2 })
        const bare = yield* model.generate({ prompt: "<|endoftext|>the river", maxTokens: 2 })
        assert.strictEqual(swallowed.usage.inputTokens, bare.usage.inputTokens)
      })
  )

  it.effect("an encoder-decoder model reads a prompt as long as its positions; one token more is refused", () =>
    Effect.gen(function* () {
      const { model } = yield* build({ generationModel: "tiny-bart" })
      // One token per "a", and the encoder's two special tokens: tiny-bart's 1,024 positions exactly.
      const fits = yield* model.generate({ prompt: "a".repeat(1_022), maxTokens: 2 })
      assert.strictEqual(fits.usage.inputTokens, 1_024)
      const error = yield* Effect.flip(model.generate({ prompt: "a".repeat(1_023), maxTokens: 2 }))
      assert.deepStrictEqual(error._tag === "ModelError" ? [error.reason, error.field, error.message] : [], [
        "InvalidRequest",
        "messages",
        'the prompt has 1025 tokens; model "tiny-bart" reads at most 1024'
      ])
    })
  )

  it.effect(
    "an encoder-decoder model's answer is cut at its decoder's positions, as a decoder-only's at its context",
    () =>
      Effect.gen(function* () {
        const { model } = yield* build({ generationModel: "tiny-bart" })
        // tiny-bart's decoder has 1,024 positions, its start token takes the first: 1,023 new tokens at most.
        const answer = yield* model.generate({ prompt: "river", maxTokens: 1_100 })
        assert.deepStrictEqual([answer.usage.outputTokens, answer.finishReason], [1_023, "length"])
        const streamed = yield* Stream.runCollect(model.stream({ prompt: "river", maxTokens: 1_100 }))
        const finish = streamed.at(-1)
        assert.deepStrictEqual(finish?._tag === "Finish" && [finish.usage.outputTokens, finish.finishReason], [
          1_023,
          "length"
        ])
      })
  )

  it.effect("an encoder-decoder config naming its encoder's and decoder's positions apart (LED's) is read", () =>
    Effect.gen(function* () {
      // tiny-bart, its config saying its positions as LED's does: 1,024 for the encoder, 64 for the decoder.
      const dir = yield* tempDir("orchestra-led-")
      yield* Effect.promise(async () => {
        await cp(path.join(modelPath, "tiny-bert"), path.join(dir, "tiny-bert"), { recursive: true })
        await cp(path.join(modelPath, "tiny-bart"), path.join(dir, "led-bart"), { recursive: true })
        const file = path.join(dir, "led-bart", "config.json")
        const { max_position_embeddings: _, ...config } = JSON.parse(await readFile(file, "utf8"))
        await writeFile(
          file,
          JSON.stringify({ ...config, max_encoder_position_embeddings: 1_024, max_decoder_position_embeddings: 64 })
        )
      })
      const { model } = yield* build({ modelPath: dir, generationModel: "led-bart" })
      const answer = yield* model.generate({ prompt: "river", maxTokens: 100 })
      assert.deepStrictEqual([answer.usage.outputTokens, answer.finishReason], [63, "length"])
      const fits = yield* model.generate({ prompt: "a".repeat(1_022), maxTokens: 2 })
      assert.strictEqual(fits.usage.inputTokens, 1_024)
      const error = yield* Effect.flip(model.generate({ prompt: "a".repeat(1_023), maxTokens: 2 }))
      assert.strictEqual(error.message, 'the prompt has 1025 tokens; model "led-bart" reads at most 1024')
    })
  )

  it.effect(
    "a conversation the model's chat template refuses is InvalidRequest on messages, not a provider failure",
    () =>
      Effect.gen(function* () {
        // tiny-gpt2 with a chat template that, as Gemma's, refuses a system message.
        const dir = yield* tempDir("orchestra-chat-")
        yield* Effect.promise(async () => {
          await cp(path.join(modelPath, "tiny-bert"), path.join(dir, "tiny-bert"), { recursive: true })
          await cp(path.join(modelPath, "tiny-gpt2"), path.join(dir, "chat-gpt2"), { recursive: true })
          const file = path.join(dir, "chat-gpt2", "tokenizer_config.json")
          const config = JSON.parse(await readFile(file, "utf8"))
          config.chat_template =
            "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" +
            "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}" +
            "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
          await writeFile(file, JSON.stringify(config))
        })
        const { model } = yield* build({ modelPath: dir, generationModel: "chat-gpt2" })
        const answer = yield* model.generate({ messages: [{ role: "user", content: "hi" }], maxTokens: 3 })
        assert.strictEqual(answer.usage.outputTokens, 3)
        const request = { system: "be brief", prompt: "hi", maxTokens: 3 }
        const refused = [
          yield* Effect.flip(model.generate(request)),
          yield* Effect.flip(Stream.runDrain(model.stream(request)))
        ]
        for (const error of refused) {
          assert.deepStrictEqual(
            error._tag === "ModelError" ? [error.reason, error.field, error.provider] : [error._tag],
            ["InvalidRequest", "messages", "local"]
          )
          assert.include(error.message, "System role not supported")
        }
      })
  )

  it.effect("ends with finishReason stop at the end-of-sequence token and at a stop sequence", () =>
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

  it.effect("seeded sampling is reproducible, and differs from greedy", () =>
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

  it.effect("a seed the sampler cannot tell apart from another (past 2^32-1, negative) is refused, naming seed", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const sampled = (seed: number) => ({ prompt: "the river", maxTokens: 16, temperature: 1.8, seed })
      const top = yield* model.generate(sampled(2 ** 32 - 1))
      assert.notStrictEqual(top.text, (yield* model.generate(sampled(0))).text)
      // 2^32 + 7 read as 7 and -1 as 2^32-1: two seeds, one output.
      for (const seed of [2 ** 32, 2 ** 32 + 7, Number.MAX_SAFE_INTEGER, -1, -(2 ** 32) + 7]) {
        const error = yield* Effect.flip(model.generate(sampled(seed)))
        assert.isTrue(error._tag === "ModelError" && error.reason === "InvalidRequest", `${seed}: ${error.message}`)
        assert.deepStrictEqual(error._tag === "ModelError" && [error.field, error.provider], ["seed", "local"])
        assert.include(error.message, "4294967295")
        const streamed = yield* Effect.flip(Stream.runDrain(model.stream(sampled(seed))))
        assert.strictEqual(streamed._tag === "ModelError" && streamed.field, "seed")
      }
      // A seed is checked even where it is not used (greedy), so a request does not pass or fail by its temperature.
      const greedy = yield* Effect.flip(model.generate({ prompt: "the river", maxTokens: 2, seed: 2 ** 32 }))
      assert.strictEqual(greedy._tag === "ModelError" && greedy.field, "seed")
      for (const seed of [Number.NaN, 1.5, Number.POSITIVE_INFINITY]) {
        const error = yield* Effect.flip(model.generate(sampled(seed)))
        assert.strictEqual(error._tag === "ModelError" && error.field, "seed", String(seed))
      }
    })
  )

  it.effect("text2text generation with an encoder-decoder (BART-style) model; messages become a transcript", () =>
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
      const chat = yield* model.generate({
        system: "be brief",
        messages: [
          { role: "user", content: "river" },
          { role: "assistant", content: "stone" },
          { role: "user", content: "river" }
        ],
        maxTokens: 4
      })
      // "System: ...\nUser: ...\nAssistant: ..." is longer than the prompt alone
      assert.isTrue(chat.usage.inputTokens > a.usage.inputTokens)
    })
  )

  it.effect("refuses a model that is not configured and a malformed request, naming the field and the provider", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const error = yield* Effect.flip(model.generate({ prompt: "x", model: "tiny-bart" }))
      assert.isTrue(error._tag === "ModelError" && error.reason === "InvalidRequest" && error.field === "model")
      const embedError = yield* Effect.flip(model.embed({ texts: ["x"], model: "tiny-gpt2" }))
      assert.isTrue(embedError._tag === "ModelError" && embedError.reason === "InvalidRequest")
      const zero = yield* Effect.flip(model.generate({ prompt: "x", maxTokens: 0 }))
      assert.isTrue(zero._tag === "ModelError" && zero.field === "maxTokens" && zero.provider === "local")
      const streamed = yield* Effect.flip(Stream.runDrain(model.stream({ prompt: "x", maxTokens: 0 })))
      assert.isTrue(streamed._tag === "ModelError" && streamed.field === "maxTokens")
    })
  )

  it.effect("refuses tools, tool messages and a JSON response format by field instead of ignoring them", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const tool = { name: "lookup", description: "look up", parameters: { type: "object", properties: {} } }
      const cases: ReadonlyArray<readonly [Model.GenerateRequest, string]> = [
        [{ prompt: "x", tools: [tool] }, "tools"],
        [{ prompt: "x", toolChoice: "auto" }, "toolChoice"],
        [{ prompt: "x", responseFormat: { type: "json_object" } }, "responseFormat"],
        [
          {
            messages: [
              { role: "user", content: "x" },
              { role: "tool", content: "42", toolCallId: "c1" }
            ]
          },
          "messages"
        ]
      ]
      for (const [request, field] of cases) {
        const error = yield* Effect.flip(model.generate(request))
        assert.isTrue(error._tag === "ModelError" && error.reason === "InvalidRequest", field)
        assert.strictEqual(error._tag === "ModelError" && error.field, field)
        const streamed = yield* Effect.flip(Stream.runDrain(model.stream(request)))
        assert.strictEqual(streamed._tag === "ModelError" && streamed.field, field)
      }
      // a plain-text response format is what the model does anyway
      const text = yield* model.generate({ prompt: "x", maxTokens: 2, responseFormat: { type: "text" } })
      assert.isTrue(text.text.length >= 0 && text.usage.outputTokens <= 2)
    })
  )

  it.effect("embeddings have the model's dimensions and unit norm (no timer involved: works under TestClock)", () =>
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

  it.effect("concurrent embed calls are batched into one inference, each caller gets its own vectors", () =>
    Effect.gen(function* () {
      const texts = Array.from({ length: 12 }, (_, i) => `the ${i} quiet river carries ${"stone ".repeat(i % 4)}home`)
      const unbatched = yield* instrumented
      const single = yield* build({ maxBatchSize: 1 }, unbatched)
      const alone = yield* Effect.forEach(texts, (text) => single.model.embed({ texts: [text] }))
      assert.deepStrictEqual(
        unbatched.batches,
        texts.map(() => 1)
      )

      const counted = yield* instrumented
      const { model } = yield* build({ maxBatchSize: 32 }, counted)
      const together = yield* Effect.forEach(texts, (text) => model.embed({ texts: [text] }), {
        concurrency: "unbounded"
      })
      // one caller with several texts joins the same kind of batch
      const multi = yield* model.embed({ texts: [texts[3]!, texts[1]!] })
      assert.deepStrictEqual(counted.batches, [12, 2])
      together.forEach((response, i) => {
        assert.strictEqual(response.vectors.length, 1)
        assertClose(response.vectors[0]!, alone[i]!.vectors[0]!)
      })
      assertClose(multi.vectors[0]!, alone[3]!.vectors[0]!)
      assertClose(multi.vectors[1]!, alone[1]!.vectors[0]!)
    })
  )

  it.effect("a request larger than maxBatchSize is split over several batches", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented
      const { model } = yield* build({ maxBatchSize: 4 }, counted)
      const texts = Array.from({ length: 10 }, (_, i) => `text ${i}`) as [string, ...Array<string>]
      const response = yield* model.embed({ texts })
      assert.strictEqual(response.vectors.length, 10)
      assert.deepStrictEqual(counted.batches, [4, 4, 2])
      const one = yield* model.embed({ texts: [texts[9]!] })
      assertClose(response.vectors[9]!, one.vectors[0]!)
    })
  )

  it.effect(
    "a tokenizer whose model_max_length is missing or past the model's positions truncates at the positions; a long text does not fail its batch",
    () =>
      Effect.gen(function* () {
        const long = "the quiet river carries stone ".repeat(60)
        const bundled = yield* build({})
        const expected = yield* bundled.model.embed({ texts: ["short", long] })
        // Hub tokenizers often say nothing, or 1e30 (transformers' VERY_LARGE_INTEGER).
        for (const maxLength of [undefined, 1e30]) {
          const dir = yield* tempDir("orchestra-maxlength-")
          yield* Effect.promise(async () => {
            await cp(path.join(modelPath, "tiny-bert"), path.join(dir, "tiny-bert"), { recursive: true })
            await cp(path.join(modelPath, "tiny-gpt2"), path.join(dir, "tiny-gpt2"), { recursive: true })
            const file = path.join(dir, "tiny-bert", "tokenizer_config.json")
            const config = JSON.parse(await readFile(file, "utf8")) as Record<string, unknown>
            config.model_max_length = maxLength
            await writeFile(file, JSON.stringify(config))
          })
          const { model } = yield* build({ modelPath: dir })
          // Two callers in one batch: the long text of one must not fail the other.
          const [short, longer] = yield* Effect.all(
            [model.embed({ texts: ["short"] }), model.embed({ texts: [long] })],
            { concurrency: "unbounded" }
          )
          assertClose(short.vectors[0]!, expected.vectors[0]!)
          assertClose(longer.vectors[0]!, expected.vectors[1]!)
          assert.strictEqual(longer.usage?.inputTokens, 128, `model_max_length ${maxLength}`)
        }
      })
  )
})

describe("Local provider: loading", () => {
  it.effect("a missing model fails when the provider is built, naming the path it looked in", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(Effect.scoped(Local.make({ generationModel: "no-such-model" })))
      assert.isTrue(error._tag === "ModelError" && error.reason === "Unavailable")
      assert.include(error.message, path.join(modelPath, "no-such-model"))
      const elsewhere = yield* Effect.flip(Effect.scoped(Local.make({ modelPath: "/nonexistent/models" })))
      assert.isTrue(elsewhere._tag === "ModelError" && elsewhere.reason === "Unavailable")
      // Both default models are looked for at once: whichever is missed first names its path.
      const looked = ["tiny-gpt2", "tiny-bert"].map((name) => path.join("/nonexistent/models", name))
      assert.isTrue(
        looked.some((p) => elsewhere.message.includes(p)),
        `${elsewhere.message} names one of ${looked.join(", ")}`
      )
      // modelPath was given: the message says what is missing there, not to set it.
      assert.notInclude(elsewhere.message, "set allowRemoteModels or modelPath")
      assert.match(
        elsewhere.message,
        /not found: no config\.json in \/nonexistent\/models\/tiny-(gpt2|bert) \(modelPath\) or .+ \(cache\), and remote models are disabled \(allowRemoteModels: false\), so it is not downloaded$/
      )
    })
  )

  it.effect("a model id that leaves modelPath (absolute, .., a URL) is an OptionError naming the field", () =>
    Effect.gen(function* () {
      // A real model outside modelPath, where "../outside/tiny-gpt2" would find it.
      const dir = yield* tempDir("orchestra-escape-")
      yield* Effect.promise(async () => {
        await cp(path.join(modelPath, "tiny-gpt2"), path.join(dir, "outside", "tiny-gpt2"), { recursive: true })
        await cp(path.join(modelPath, "tiny-bert"), path.join(dir, "models", "tiny-bert"), { recursive: true })
      })
      const models = path.join(dir, "models")
      const cases: ReadonlyArray<readonly [Local.Options, string]> = [
        [{ generationModel: "../outside/tiny-gpt2" }, "generationModel"],
        [{ generationModel: path.join(dir, "outside", "tiny-gpt2") }, "generationModel"],
        [{ embeddingModel: "org/../../outside/tiny-gpt2" }, "embeddingModel"],
        [{ embeddingModel: "..\\outside\\tiny-gpt2" }, "embeddingModel"],
        [{ models: { generation: ["tiny-gpt2", "https://example.com/m"] } }, "models.generation[1]"],
        [{ models: { embedding: ["C:/models/x"] } }, "models.embedding[0]"],
        [{ models: { embedding: ["org//name"] } }, "models.embedding[0]"],
        [{ models: { generation: ["./tiny-gpt2"] } }, "models.generation[0]"]
      ]
      for (const [options, field] of cases) {
        const error = yield* Effect.flip(Effect.scoped(Local.make({ modelPath: models, ...options })))
        assert.strictEqual(error._tag, "OptionError", `${field}: ${error.message}`)
        if (error._tag === "OptionError") assert.strictEqual(error.path, field)
        assert.notInclude(error.message, "config.json")
      }
      // org/name ids are folders under modelPath, as on the hub.
      yield* Effect.promise(() =>
        cp(path.join(modelPath, "tiny-gpt2"), path.join(models, "org", "tiny-gpt2"), { recursive: true })
      )
      const { model } = yield* build({ modelPath: models, generationModel: "org/tiny-gpt2" })
      const answer = yield* model.generate({ prompt: "the river", maxTokens: 3 })
      assert.strictEqual(answer.model, "org/tiny-gpt2")
      assert.strictEqual(answer.usage.outputTokens, 3)
    })
  )

  it.effect("a long model id outside modelPath is shown bounded in the OptionError", () =>
    Effect.gen(function* () {
      const id = `../${"x".repeat(5_000)}`
      const error = yield* Effect.flip(Effect.scoped(Local.make({ modelPath, generationModel: id })))
      assert.strictEqual(error._tag, "OptionError")
      if (error._tag === "OptionError") assert.strictEqual(error.path, "generationModel")
      // Its first 80 characters and its length (Input.shown), not the whole id in every log line.
      assert.include(error.message, `"../${"x".repeat(77)}"… (5,003 characters): it has a ".." segment`)
      assert.isBelow(error.message.length, 300)
    })
  )

  it.effect("a call's model that is not configured is named bounded and escaped in its InvalidRequest", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const long = `tiny-gpt2\n${"x".repeat(5_000)}`
      for (const error of [
        yield* Effect.flip(model.generate({ prompt: "x", model: long })),
        yield* Effect.flip(model.embed({ texts: ["x"], model: long }))
      ]) {
        assert.deepStrictEqual(error._tag === "ModelError" ? [error.reason, error.field] : [], [
          "InvalidRequest",
          "model"
        ])
        // As every check shows a value (Input.shown): a line break cannot forge a log line, a long id is cut.
        assert.notInclude(error.message, "\n")
        assert.include(error.message, `model "tiny-gpt2\\n${"x".repeat(70)}"… (5,010 characters) is not configured`)
        assert.isBelow(error.message.length, 300)
      }
    })
  )

  it.effect("two providers with their own modelPath, built at once, each load their own models", () =>
    Effect.gen(function* () {
      // transformers.js reads its process-wide env (localModelPath) throughout a load: one
      // provider's settings must not apply to the other's load in progress.
      const dir = yield* tempDir("orchestra-other-")
      yield* Effect.promise(async () => {
        await cp(path.join(modelPath, "tiny-bert"), path.join(dir, "tiny-bert"), { recursive: true })
        await cp(path.join(modelPath, "tiny-gpt2"), path.join(dir, "tiny-gpt2"), { recursive: true })
        await writeFile(path.join(dir, "tiny-gpt2", "onnx", "decoder_model_merged_quantized.onnx"), "not an onnx graph")
      })
      const [bundled, broken] = yield* Effect.all(
        [Effect.exit(build({ poolSize: 2, minInstances: 2 })), Effect.flip(build({ modelPath: dir }))],
        { concurrency: "unbounded" }
      )
      assert.isTrue(Exit.isSuccess(bundled), String(Exit.isFailure(bundled) && bundled.cause))
      if (Exit.isSuccess(bundled)) {
        const answer = yield* bundled.value.model.generate({ prompt: "Tell me a story: once", maxTokens: 5 })
        assert.strictEqual(answer.text, " upon a time")
      }
      assert.isTrue(broken._tag === "ModelError" && broken.reason === "Unavailable")
      assert.include(broken.message, path.join(dir, "tiny-gpt2"))
    })
  )

  it.effect("a provider without cacheDir does not read the cacheDir another provider set", () =>
    Effect.gen(function* () {
      const empty = yield* tempDir("orchestra-empty-")
      const cache = yield* tempDir("orchestra-cache-")
      yield* Effect.promise(async () => {
        await cp(path.join(modelPath, "tiny-bert"), path.join(cache, "tiny-bert"), { recursive: true })
        await cp(path.join(modelPath, "tiny-gpt2"), path.join(cache, "tiny-gpt2"), { recursive: true })
      })
      yield* build({ modelPath: empty, cacheDir: cache })
      // transformers.js keeps cacheDir process-wide: the first provider's must not become everyone's default.
      const error = yield* Effect.flip(build({ modelPath: empty }))
      assert.isTrue(error._tag === "ModelError" && error.reason === "Unavailable", error.message)
      assert.notInclude(error.message, cache)
    })
  )

  it.effect("a corrupt model file fails when the provider is built, naming the model and the path", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir("orchestra-corrupt-")
      yield* Effect.promise(async () => {
        await cp(path.join(modelPath, "tiny-bert"), path.join(dir, "tiny-bert"), { recursive: true })
        await cp(path.join(modelPath, "tiny-gpt2"), path.join(dir, "tiny-gpt2"), { recursive: true })
        await writeFile(path.join(dir, "tiny-bert", "onnx", "model_quantized.onnx"), "not an onnx graph")
      })
      const error = yield* Effect.flip(Effect.scoped(Local.make({ modelPath: dir })))
      assert.isTrue(error._tag === "ModelError" && error.reason === "Unavailable")
      assert.include(error.message, "tiny-bert")
      assert.include(error.message, dir)
    })
  )

  it.effect(
    "without @xenova/transformers the build fails with Unavailable, naming the package and the install command",
    () =>
      Effect.gen(function* () {
        // A real resolution failure of Node's loader, as a missing optional peer produces it.
        const importer = () => import(["@xenova", "transformers-not-installed"].join("/"))
        const error = yield* Effect.flip(build({}, { importer }))
        assert.isTrue(error._tag === "ModelError" && error.reason === "Unavailable")
        assert.include(error.message, "@xenova/transformers")
        assert.include(error.message, "npm install @xenova/transformers")
        assert.include(error.message, "ERR_MODULE_NOT_FOUND")
        const wrong = yield* Effect.flip(build({}, { importer: () => Promise.resolve({ env: {} }) }))
        assert.isTrue(wrong._tag === "ModelError" && wrong.reason === "Unavailable")
      })
  )

  it.effect(
    "a missing package is said in words, not as Node's message cut in the middle of the path it was imported from",
    () =>
      Effect.gen(function* () {
        // What `npx orchestra test` showed right after `npm install effect-orchestra effect`:
        // "Cannot find package '@xenova/transformers' imported from /home/…/node_modul… (133 characters)".
        const notFound = (name: string) => () =>
          Promise.reject(
            Object.assign(
              new Error(
                `Cannot find package '${name}' imported from /home/someone/projects/app/node_modules/effect-orchestra/dist/Model/local/runtime.js`
              ),
              { code: "ERR_MODULE_NOT_FOUND" }
            )
          )
        const missing = yield* Effect.flip(build({}, { importer: notFound("@xenova/transformers") }))
        assert.strictEqual(
          missing.message,
          "local: cannot load the optional peer dependency @xenova/transformers (ERR_MODULE_NOT_FOUND): it is not installed. Install it with `npm install @xenova/transformers`"
        )
        const dependency = yield* Effect.flip(build({}, { importer: notFound("onnxruntime-node") }))
        assert.strictEqual(
          dependency.message,
          "local: cannot load the optional peer dependency @xenova/transformers (ERR_MODULE_NOT_FOUND): its dependency 'onnxruntime-node' is not installed. Install it with `npm install @xenova/transformers`"
        )
      })
  )

  it.live(
    "importing the package root never loads transformers.js; only building a provider does (a child process without it)",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir("orchestra-peer-")
        const hook = path.join(dir, "no-transformers.mjs")
        yield* Effect.promise(() =>
          writeFile(
            hook,
            `import { registerHooks } from "node:module"
registerHooks({
  resolve(specifier, context, next) {
    if (specifier === "@xenova/transformers" || specifier.startsWith("@xenova/transformers/")) {
      const error = new Error("Cannot find package '" + specifier + "' imported from " + context.parentURL)
      error.code = "ERR_MODULE_NOT_FOUND"
      throw error
    }
    return next(specifier, context)
  }
})
`
          )
        )
        const script = `
const { Effect } = await import("effect")
const root = await import("./src/index.ts")
const Local = await import("./src/Model/Local.ts")
console.log("imported " + typeof root.Local.layer + " " + typeof Local.layer)
const error = await Effect.runPromise(Effect.flip(Effect.scoped(Local.make())))
console.log(JSON.stringify({ tag: error._tag, reason: error.reason, message: error.message }))
`
        const output = yield* Effect.callback<string, Error>((resume) => {
          const child = execFile(
            process.execPath,
            ["--import", hook, "--import", "tsx", "--input-type=module", "-e", script],
            { cwd: root, timeout: 60_000 },
            (error, stdout, stderr) =>
              resume(error ? Effect.fail(new Error(`${error.message}\n${stderr}`)) : Effect.succeed(stdout))
          )
          return Effect.sync(() => child.kill())
        })
        const lines = output.trim().split("\n")
        assert.strictEqual(lines[0], "imported function function")
        const result = JSON.parse(lines[1]!) as { tag: string; reason: string; message: string }
        assert.strictEqual(result.tag, "ModelError")
        assert.strictEqual(result.reason, "Unavailable")
        assert.include(result.message, "npm install @xenova/transformers")
      })
  )

  it.live(
    "with allowRemoteModels, models are downloaded from the hub (loopback) into cacheDir, then served offline",
    () =>
      Effect.gen(function* () {
        const hub = yield* fakeHub("serve")
        const empty = yield* tempDir("orchestra-empty-")
        const cache = yield* tempDir("orchestra-cache-")
        const online = yield* build({ modelPath: empty, allowRemoteModels: true, remoteHost: hub.url, cacheDir: cache })
        const answer = yield* online.model.generate({ prompt: "the river", maxTokens: 4 })
        assert.strictEqual(answer.usage.outputTokens, 4)
        assert.include(hub.requests, "/tiny-bert/resolve/main/onnx/model_quantized.onnx")
        assert.include(hub.requests, "/tiny-gpt2/resolve/main/onnx/decoder_model_merged_quantized.onnx")
        const cached = yield* Effect.promise(() => stat(path.join(cache, "tiny-gpt2", "config.json")))
        assert.isTrue(cached.isFile())
        // offline now: the cache serves the model, the (empty) model path does not matter
        const before = hub.requests.length
        const offline = yield* build({ modelPath: empty, cacheDir: cache })
        const again = yield* offline.model.generate({ prompt: "the river", maxTokens: 4 })
        assert.strictEqual(again.text, answer.text)
        assert.strictEqual(hub.requests.length, before)
      })
  )

  it.effect("a hub that never answers fails the build at loadTimeout (Timeout, naming the model)", () =>
    Effect.gen(function* () {
      const hub = yield* fakeHub("stall")
      const empty = yield* tempDir("orchestra-empty-")
      const cache = yield* tempDir("orchestra-cache-")
      const building = yield* build({
        modelPath: empty,
        allowRemoteModels: true,
        remoteHost: hub.url,
        cacheDir: cache,
        loadTimeout: "30 seconds"
      }).pipe(Effect.flip, Effect.forkChild)
      yield* Effect.promise(async () => {
        while (hub.requests.length === 0) await nextMacrotask()
      })
      yield* TestClock.adjust("30 seconds")
      const error = yield* Fiber.join(building)
      assert.isTrue(error._tag === "ModelError" && error.reason === "Timeout" && error.model === "tiny-gpt2")
      // The abandoned load still waits on the hub: it does not hold back a provider with other settings.
      const { model } = yield* build({})
      const answer = yield* model.generate({ prompt: "Tell me a story: once", maxTokens: 5 })
      assert.strictEqual(answer.text, " upon a time")
    })
  )
})

describe("Local provider: pools and shutdown", () => {
  it.effect(
    "closing the scope while a model loads does not wait for the load; the instance is disposed when it arrives",
    () =>
      withGate(1, (gated) =>
        Effect.gen(function* () {
          const scope = yield* Scope.make()
          const building = yield* makeWith({ modelPath }, gated.internals).pipe(Scope.provide(scope), Effect.forkChild)
          yield* gated.reached((c) => c.started === 1)
          yield* Fiber.interrupt(building)
          const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
          // loadTimeout (10 minutes) has not passed, nor has the load ended: the close does not wait for it
          assert.isTrue(yield* endsWithin(closing, 5_000), "the close waited for the load")
          assert.strictEqual(gated.counts.loaded, 0)
          gated.open()
          yield* gated.reached((c) => c.disposed === 1)
          assert.strictEqual(gated.counts.loaded, 1)
        })
      )
  )

  it.effect("a load past loadTimeout fails the build, and its instance is disposed when it arrives", () =>
    withGate(1, (gated) =>
      Effect.gen(function* () {
        const building = yield* build({ loadTimeout: "30 seconds" }, gated.internals).pipe(
          Effect.flip,
          Effect.forkChild
        )
        yield* gated.reached((c) => c.started === 1)
        yield* TestClock.adjust("30 seconds")
        const error = yield* Fiber.join(building)
        assert.isTrue(error._tag === "ModelError" && error.reason === "Timeout" && error.model === "tiny-gpt2")
        gated.open()
        yield* gated.reached((c) => c.disposed === 1)
      })
    )
  )

  it.effect("past the deadline, a call waiting for an instance that is still loading is stopped (ShuttingDown)", () =>
    withGate(2, (gated) =>
      Effect.gen(function* () {
        const counted = yield* instrumented
        const { scope, model } = yield* build(
          { shutdownDeadline: "1 second", poolSize: 2 },
          { ...gated.internals, instrument: counted.instrument }
        )
        const running = yield* Effect.forkChild(
          Effect.flip(model.generate({ prompt: "the river", maxTokens: 1_000_000 }))
        )
        yield* waitFor(counted.generating, (n) => n === 1)
        const waiting = yield* Effect.forkChild(Effect.flip(model.generate({ prompt: "a lantern", maxTokens: 4 })))
        yield* gated.reached((c) => c.started === 2)
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
        yield* TestClock.adjust("1 second")
        assert.isTrue(yield* endsWithin(closing, 5_000), "the close waited for the load")
        assert.strictEqual((yield* Fiber.join(running))._tag, "ShuttingDownError")
        assert.strictEqual((yield* Fiber.join(waiting))._tag, "ShuttingDownError")
        assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), yield* SubscriptionRef.get(counted.loaded))
        gated.open()
        yield* gated.reached((c) => c.disposed === 2)
        assert.strictEqual(gated.counts.loaded, 2)
      })
    )
  )

  it.effect("closing the scope disposes every instance, then refuses calls", () =>
    Effect.gen(function* () {
      const counted = yield* instrumentedWith(2)
      const { scope, model } = yield* build({ poolSize: 2 }, counted)
      yield* twoGenerationsAndAnEmbedding(model, counted)
      const loaded = yield* SubscriptionRef.get(counted.loaded)
      assert.strictEqual(loaded, 3)
      assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), 0)
      yield* Scope.close(scope, Exit.void)
      assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), loaded)
      const after = yield* Effect.flip(model.generate({ prompt: "late" }))
      assert.strictEqual(after._tag, "ShuttingDownError")
      const afterEmbed = yield* Effect.flip(model.embed({ texts: ["late"] }))
      assert.strictEqual(afterEmbed._tag, "ShuttingDownError")
    })
  )

  it.effect("closing the scope lets calls in flight finish within the deadline", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented
      const { scope, model } = yield* build({ shutdownDeadline: "10 seconds" }, counted)
      const call = yield* Effect.forkChild(model.generate({ prompt: "the river", maxTokens: 60 }))
      yield* waitFor(counted.generating, (n) => n === 1)
      yield* Scope.close(scope, Exit.void)
      const answer = yield* Fiber.join(call)
      assert.strictEqual(answer.usage.outputTokens, 60)
      assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), yield* SubscriptionRef.get(counted.loaded))
    })
  )

  it.effect("past the deadline, calls in flight are stopped (ShuttingDown), then the instances released", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented
      const { scope, model } = yield* build({ shutdownDeadline: "1 second", poolSize: 2 }, counted)
      const call = yield* Effect.forkChild(Effect.flip(model.generate({ prompt: "the river", maxTokens: 1_000_000 })))
      const parts = yield* Ref.make(0)
      const stream = yield* Effect.forkChild(
        Effect.flip(
          Stream.runForEach(model.stream({ prompt: "a lantern", maxTokens: 1_000_000 }), () =>
            Ref.update(parts, (n) => n + 1)
          )
        )
      )
      yield* waitFor(counted.generating, (n) => n === 2)
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
      // calls are still running while the deadline has not passed
      yield* turns(5)
      assert.strictEqual(yield* SubscriptionRef.get(counted.generating), 2)
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(closing)
      const error = yield* Fiber.join(call)
      const streamError = yield* Fiber.join(stream)
      assert.strictEqual(error._tag, "ShuttingDownError")
      // the stream had delivered text: it ends with what it delivered, the cause is the shutdown
      assert.isTrue(yield* Effect.map(Ref.get(parts), (n) => n > 0))
      assert.isTrue(
        streamError._tag === "StreamInterruptedError" &&
          streamError.reason === "ShuttingDown" &&
          streamError.partialText.length > 0
      )
      assert.strictEqual(yield* SubscriptionRef.get(counted.generating), 0)
      assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), yield* SubscriptionRef.get(counted.loaded))
    })
  )

  it.effect("a deadline interrupts a long generation between tokens: it stops, and the pool slot is free again", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented
      const { model } = yield* build({ poolSize: 1 }, counted)
      const call = yield* model
        .generate({ prompt: "the river", maxTokens: 1_000_000 })
        .pipe(Effect.timeout("2 seconds"), Effect.flip, Effect.forkChild)
      yield* waitFor(counted.generating, (n) => n === 1)
      yield* TestClock.adjust("2 seconds")
      const timedOut = yield* Fiber.join(call)
      assert.strictEqual(timedOut._tag, "TimeoutError")
      // the generation itself stopped: nothing is decoded once the interruption has returned
      assert.strictEqual(yield* SubscriptionRef.get(counted.generating), 0)
      const produced = counted.decoded.pieces
      assert.isTrue(produced > 0 && produced < 1_000_000)
      yield* turns(20)
      assert.strictEqual(counted.decoded.pieces, produced)
      // the only instance is back in the pool
      const next = yield* model.generate({ prompt: "the river", maxTokens: 5 })
      assert.strictEqual(next.usage.outputTokens, 5)
    })
  )

  it.effect(
    "past the deadline, a generation that never stops is abandoned after 5 s: the close returns, and says so",
    () => {
      // Let go when the test ends, pass or fail, so nothing is left waiting.
      const stuck = Deferred.makeUnsafe<void>()
      return Effect.gen(function* () {
        // A fake runtime: no model is loaded; a generation is a native call that ignores the shutdown.
        const started = yield* Deferred.make<void>()
        const disposed = yield* Ref.make(0)
        const instrument =
          (_real: Loader): Loader =>
          (modelId) =>
            Effect.succeed<Instance>({
              modelId,
              task: "text-generation",
              prepare: (input) => Effect.succeed({ input, inputIds: {} as never, inputTokens: 1 }),
              generate: () =>
                Effect.uninterruptible(
                  Deferred.succeed(started, undefined).pipe(
                    Effect.andThen(Deferred.await(stuck)),
                    Effect.as({ text: "late", finishReason: "stop" as const, inputTokens: 1, outputTokens: 1 })
                  )
                ),
              embed: () => Effect.die("unused"),
              dispose: Ref.update(disposed, (n) => n + 1)
            })
        const logs = yield* captureLogs
        const { scope, model } = yield* build({ shutdownDeadline: "1 second" }, { instrument })
        const call = yield* Effect.forkChild(model.generate({ prompt: "the river" }))
        yield* Deferred.await(started)
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void).pipe(Effect.provide(logs.layer)))
        yield* TestClock.adjust("1 second")
        assert.isFalse(yield* endsWithin(closing, 20), "the close did not wait for the stopped calls")
        yield* TestClock.adjust("5 seconds")
        assert.isTrue(yield* endsWithin(closing, 100), "the close waited for ever for a generation that never stops")
        assert.isTrue(
          logs.lines.some((line) => /^Warn: .*1 call.* abandoned/.test(line)),
          `no warning about the abandoned call: ${JSON.stringify(logs.lines)}`
        )
        // the idle instances were released; the stuck one is released if its call ever returns
        assert.strictEqual(yield* Ref.get(disposed), 1)
        yield* Deferred.succeed(stuck, undefined)
        yield* Fiber.join(call)
        assert.strictEqual(yield* Ref.get(disposed), 2)
      }).pipe(Effect.ensuring(Deferred.succeed(stuck, undefined)))
    }
  )

  it.effect(
    "idle instances above minInstances are released after the TTL, in their own scope (no leaked releases)",
    () =>
      Effect.gen(function* () {
        const counted = yield* instrumentedWith(2)
        const { scope, model } = yield* build({ poolSize: 2, minInstances: 0, idleTimeToLive: "1 minute" }, counted)
        assert.strictEqual(yield* SubscriptionRef.get(counted.loaded), 2)
        assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), 0)
        // each cycle loads instances, lets them idle past the TTL, and sees them disposed while the provider is open
        for (let cycle = 1; cycle <= 3; cycle++) {
          if (cycle > 1) {
            yield* twoGenerationsAndAnEmbedding(model, counted)
          }
          const loaded = yield* SubscriptionRef.get(counted.loaded)
          yield* TestClock.adjust(Duration.minutes(2))
          yield* waitFor(counted.disposed, (n) => n === loaded)
        }
        assert.strictEqual(yield* SubscriptionRef.get(counted.loaded), 2 + 3 + 3)
        // closing finds nothing left to release: no release was deferred to the provider's scope
        yield* Scope.close(scope, Exit.void)
        assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), 8)
      })
  )

  it.effect("minInstances keep instances loaded past the TTL", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented
      yield* build({ poolSize: 2, minInstances: 1, idleTimeToLive: "1 minute" }, counted)
      yield* TestClock.adjust(Duration.minutes(5))
      yield* turns(5)
      assert.strictEqual(yield* SubscriptionRef.get(counted.disposed), 0)
      assert.strictEqual(yield* SubscriptionRef.get(counted.loaded), 2)
    })
  )
})

describe("Local provider: streaming", () => {
  it.effect("streams token by token, then one Finish with usage", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const parts = yield* Stream.runCollect(model.stream({ prompt: "the river", maxTokens: 8 }))
      const whole = yield* model.generate({ prompt: "the river", maxTokens: 8 })
      assert.strictEqual(parts.length, 9)
      const deltas = parts.slice(0, 8)
      for (const part of deltas) {
        assert.strictEqual(part._tag, "TextDelta")
        if (part._tag === "TextDelta") assert.match(part.text, /^ \w+$/)
      }
      assert.strictEqual(deltas.map((p) => (p._tag === "TextDelta" ? p.text : "")).join(""), whole.text)
      const finish = parts[8]!
      assert.isTrue(finish._tag === "Finish")
      if (finish._tag === "Finish") {
        assert.strictEqual(finish.finishReason, "length")
        assert.deepStrictEqual(finish.usage, whole.usage)
        assert.strictEqual(finish.model, "tiny-gpt2")
        assert.strictEqual(finish.provider, "local")
      }
    })
  )

  it.effect("an encoder-decoder model streams the same text it generates, piece by piece", () =>
    Effect.gen(function* () {
      const { model } = yield* build({ generationModel: "tiny-bart" })
      const request = { prompt: "a silver compass", maxTokens: 40 }
      const parts = yield* Stream.runCollect(model.stream(request))
      const whole = yield* model.generate(request)
      const deltas = parts.filter((p) => p._tag === "TextDelta")
      assert.strictEqual(deltas.length, whole.usage.outputTokens)
      assert.strictEqual(deltas.map((p) => (p._tag === "TextDelta" ? p.text : "")).join(""), whole.text)
    })
  )

  it.effect("a stream never emits a partial stop sequence, and stops before it", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const full = yield* model.generate({ prompt: "the river", maxTokens: 10 })
      const words = full.text.split(" ")
      const stop = ` ${words[4]} ${words[5]}`
      const parts = yield* Stream.runCollect(model.stream({ prompt: "the river", maxTokens: 10, stop: [stop] }))
      const text = parts.map((p) => (p._tag === "TextDelta" ? p.text : "")).join("")
      assert.strictEqual(text, words.slice(0, 4).join(" "))
      const last = parts[parts.length - 1]!
      assert.isTrue(last._tag === "Finish" && last.finishReason === "stop")
    })
  )

  it.effect("with several stop sequences, a stream holds back the text a longer one may still start with", () =>
    Effect.gen(function* () {
      const { model } = yield* build({})
      const full = yield* model.generate({ prompt: "the river", maxTokens: 10 })
      const words = full.text.split(" ")
      // The answer from its start is a stop sequence; another's first character ends the third word.
      const stop = [`${words[3]!.slice(-1)}%`, words.slice(0, 6).join(" ")]
      const request = { prompt: "the river", maxTokens: 10, stop }
      const parts = yield* Stream.runCollect(model.stream(request))
      const text = parts.map((p) => (p._tag === "TextDelta" ? p.text : "")).join("")
      const whole = yield* model.generate(request)
      assert.deepStrictEqual([text, whole.text, whole.finishReason], ["", "", "stop"])
    })
  )

  it.effect(
    "a consumer that lags holds the generation back (a bounded buffer); it goes on when the consumer reads",
    () =>
      Effect.gen(function* () {
        const counted = yield* instrumented
        const { model } = yield* build({}, counted)
        const scope = yield* Scope.make()
        const pull = yield* Stream.toPull(model.stream({ prompt: "the river", maxTokens: 1_000_000 })).pipe(
          Scope.provide(scope)
        )
        let read = (yield* pull).length
        // a turn decodes up to 32 tokens under a TestClock: unbounded, this decodes to the end of
        // the model's context (2,044 tokens), twice BUFFERED
        yield* turns(1_000)
        const held = counted.decoded.pieces
        assert.isTrue(held <= BUFFERED + 32, `decoded ${held} ahead of a consumer that read ${read}`)
        yield* turns(50)
        assert.strictEqual(counted.decoded.pieces, held)
        while (read < held + 100) read += (yield* pull).length
        assert.isTrue(counted.decoded.pieces > held)
        // held back or not, leaving stops the generation and frees its instance
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
        yield* turns(300)
        const leaving = counted.decoded.pieces
        assert.isTrue(yield* endsWithin(closing, 5_000))
        assert.strictEqual(yield* SubscriptionRef.get(counted.generating), 0)
        yield* turns(20)
        assert.strictEqual(counted.decoded.pieces, leaving)
      })
  )

  it.effect("a generation held back by a lagging consumer is still stopped by the provider's shutdown", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented
      const { scope: provider, model } = yield* build({ shutdownDeadline: "1 second" }, counted)
      const scope = yield* Scope.make()
      const pull = yield* Stream.toPull(model.stream({ prompt: "the river", maxTokens: 1_000_000 })).pipe(
        Scope.provide(scope)
      )
      let read = (yield* pull).length
      yield* turns(1_000)
      const closing = yield* Effect.forkChild(Scope.close(provider, Exit.void))
      yield* TestClock.adjust("1 second")
      assert.isTrue(yield* endsWithin(closing, 5_000), "the shutdown waited for the consumer")
      assert.strictEqual(yield* SubscriptionRef.get(counted.generating), 0)
      // the consumer reads what was decoded, then the shutdown
      const error = yield* Effect.flip(Effect.forever(Effect.map(pull, (parts) => (read += parts.length))))
      assert.isTrue(error._tag === "StreamInterruptedError" && error.reason === "ShuttingDown")
      assert.isTrue(read > 0 && read <= counted.decoded.pieces)
      yield* Scope.close(scope, Exit.void)
    })
  )

  it.effect("a consumer leaving early interrupts the generation and frees the pool slot", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented
      const { model } = yield* build({ poolSize: 1 }, counted)
      const first = yield* Stream.runCollect(
        model.stream({ prompt: "the river", maxTokens: 1_000_000 }).pipe(Stream.take(3))
      )
      assert.strictEqual(first.length, 3)
      assert.strictEqual(yield* SubscriptionRef.get(counted.generating), 0)
      const produced = counted.decoded.pieces
      assert.isTrue(produced >= 3 && produced < 1_000_000, `decoded ${produced}`)
      yield* turns(20)
      assert.strictEqual(counted.decoded.pieces, produced)
      const next = yield* model.generate({ prompt: "the river", maxTokens: 5 })
      assert.strictEqual(next.usage.outputTokens, 5)
      assert.strictEqual(yield* SubscriptionRef.get(counted.loaded), 2)
    })
  )
})

/** A loader whose generations throw (as a failing ONNX step would) once they have decoded `pieces` pieces. */
const breakingAfter = (pieces: number): Internals => ({
  instrument:
    (real: Loader): Loader =>
    (modelId, purpose) =>
      real(modelId, purpose).pipe(
        Effect.map(
          (instance): Instance => ({
            ...instance,
            generate: (input, options) => {
              let n = 0
              return instance.generate(input, {
                ...options,
                onDelta: (text) => {
                  if (n === pieces) throw new Error("onnxruntime: the session failed")
                  n += 1
                  options?.onDelta?.(text)
                }
              })
            }
          })
        )
      )
})

describe("Local provider: a stream that breaks", () => {
  it.effect(
    "a generation that fails after text was delivered fails its stream with the provider's own ModelError, as every provider does",
    () =>
      Effect.gen(function* () {
        const { model } = yield* build({}, breakingAfter(2))
        const seen: Array<string> = []
        const error = yield* Effect.flip(
          Stream.runForEach(model.stream({ prompt: "the river", maxTokens: 20 }), (p) =>
            Effect.sync(() => {
              if (p._tag === "TextDelta") seen.push(p.text)
            })
          )
        )
        assert.strictEqual(seen.length, 2)
        // Not a StreamInterruptedError of its own: that is the executor's (it carries what the
        // consumer received, and refuses resumption); HTTP providers and Mock fail with the ModelError.
        assert.strictEqual(error._tag, "ModelError")
        if (error._tag === "ModelError") {
          assert.strictEqual(error.reason, "Unknown")
          assert.strictEqual(error.provider, "local")
          assert.strictEqual(error.model, "tiny-gpt2")
          assert.include(error.message, "onnxruntime: the session failed")
        }
      })
  )
})

describe("Local provider: through the executor", () => {
  it.effect("through the executor, a mid-stream failure of the local model resumes on the next step", () =>
    Effect.gen(function* () {
      const { model } = yield* build({}, breakingAfter(2))
      const mock = yield* Mock.make({ script: [Mock.Outcome.succeed("kept going")] })
      const context = yield* Layer.build(
        Executor.layerWithStats().pipe(Layer.provideMerge(Layer.succeed(ModelProvider, mock.provider)))
      )
      const executor = Context.get(context, Executor.Executor)
      const parts = yield* Stream.runCollect(
        executor.stream(
          { prompt: "the river", maxTokens: 100 },
          { steps: [{ provider: model }, { provider: mock.provider }], resume: true }
        )
      )
      const text = parts.map((p) => (p._tag === "TextDelta" ? p.text : "")).join("")
      const local = yield* Stream.runCollect((yield* build({})).model.stream({ prompt: "the river", maxTokens: 2 }))
      const delivered = local.map((p) => (p._tag === "TextDelta" ? p.text : "")).join("")
      assert.strictEqual(text, `${delivered}kept going`)
      const finish = parts.at(-1)
      assert.strictEqual(finish?._tag === "Finish" && finish.provider, "mock")
      // counted under the provider's own reason, as for an HTTP provider's drop
      assert.deepStrictEqual((yield* executor.stats({ provider: "local" })).failuresByReason, { Unknown: 1 })
    })
  )

  it.effect(
    "through the executor without resume: a StreamInterruptedError with the text and the provider's error as cause",
    () =>
      Effect.gen(function* () {
        const { model } = yield* build({}, breakingAfter(2))
        const context = yield* Layer.build(
          Executor.layerWithStats().pipe(Layer.provideMerge(Layer.succeed(ModelProvider, model)))
        )
        const executor = Context.get(context, Executor.Executor)
        const seen: Array<string> = []
        const error = yield* Effect.flip(
          Stream.runForEach(executor.stream({ prompt: "the river", maxTokens: 100 }, { retry: true }), (p) =>
            Effect.sync(() => {
              if (p._tag === "TextDelta") seen.push(p.text)
            })
          )
        )
        assert.strictEqual(error._tag, "StreamInterruptedError")
        if (error._tag === "StreamInterruptedError") {
          assert.strictEqual(error.partialText, seen.join(""))
          assert.strictEqual(error.provider, "local")
          assert.strictEqual(error.reason, "Unknown")
          assert.include(error.detail ?? "", "onnxruntime: the session failed")
          // the provider's own failure is the cause, naming the provider as its generate would
          const cause = error.cause
          assert.isTrue(cause instanceof ModelError)
          if (cause instanceof ModelError) {
            assert.strictEqual(cause.provider, "local")
            assert.strictEqual(cause.reason, "Unknown")
          }
        }
      })
  )

  it.effect("resumed on the local model, then cut by its shutdown: partialText is the whole text delivered", () =>
    Effect.gen(function* () {
      const { scope, model } = yield* build({ shutdownDeadline: 0 })
      const mock = yield* Mock.make({
        script: [Mock.Outcome.fail("Overloaded", { afterChunks: 2, text: "alpha beta gamma" })]
      })
      const context = yield* Layer.build(
        Executor.layerWithStats().pipe(Layer.provideMerge(Layer.succeed(ModelProvider, mock.provider)))
      )
      const executor = Context.get(context, Executor.Executor)
      const seen: Array<string> = []
      const fiber = yield* Effect.forkChild(
        Effect.flip(
          Stream.runForEach(
            executor.stream(
              { prompt: "the river", maxTokens: 1_000 },
              { steps: [{ provider: mock.provider }, { provider: model }], resume: true }
            ),
            (p) =>
              Effect.sync(() => {
                if (p._tag === "TextDelta") seen.push(p.text)
              })
          )
        )
      )
      while (seen.length < 4) yield* turns(1)
      yield* Scope.close(scope, Exit.void)
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error._tag, "StreamInterruptedError")
      assert.isTrue(seen.join("").startsWith("alpha beta "))
      if (error._tag === "StreamInterruptedError") {
        assert.strictEqual(error.reason, "ShuttingDown")
        assert.strictEqual(error.partialText, seen.join(""))
      }
    })
  )
  it.effect("a stream cut by the local provider's shutdown does not count against its breaker", () =>
    Effect.gen(function* () {
      const { scope, model } = yield* build({ shutdownDeadline: 0 })
      const context = yield* Layer.build(
        Executor.layerWithStats().pipe(
          Layer.provideMerge(Layer.succeed(ModelProvider, model)),
          Layer.provideMerge(CircuitBreaker.layerMemory({ failMax: 1, resetTimeout: "1 minute" }))
        )
      )
      const executor = Context.get(context, Executor.Executor)
      const breakers = Context.get(context, CircuitBreaker.Breakers)
      const seen: Array<string> = []
      const fiber = yield* Effect.forkChild(
        Effect.flip(
          Stream.runForEach(executor.stream({ prompt: "the river", maxTokens: 100_000 }), (p) =>
            Effect.sync(() => {
              if (p._tag === "TextDelta") seen.push(p.text)
            })
          )
        )
      )
      while (seen.length < 2) yield* turns(1)
      yield* Scope.close(scope, Exit.void)
      const error = yield* Fiber.join(fiber)
      assert.isTrue(error._tag === "StreamInterruptedError" && error.reason === "ShuttingDown")
      // a failure would have opened it (failMax 1): the shutdown was not the provider's fault
      assert.strictEqual(yield* breakers.state("local"), "closed")
      // counted as the executor's own shutdown is, not as a stream the provider dropped
      const stats = yield* executor.stats()
      assert.deepStrictEqual(stats.failuresByReason, { ShuttingDown: 1 })
    })
  )
})

describe("Local provider: time to first token", () => {
  it.effect("a stream delivers its first text right after the first decoding step, not at the end of a slice", () =>
    Effect.gen(function* () {
      const counted = yield* instrumented
      const { model } = yield* build({}, counted)
      const first = yield* Stream.runCollect(
        model.stream({ prompt: "the river", maxTokens: 1_000_000 }).pipe(Stream.take(1))
      )
      assert.strictEqual(first.length, 1)
      // a slice is 32 steps under a TestClock: the consumer had the first piece long before
      assert.isTrue(counted.decoded.pieces <= 3, `decoded ${counted.decoded.pieces}`)
    })
  )
})

describe("embedding batcher", () => {
  it.effect("gathers concurrent callers for the window, skips callers that left, splits at maxBatchSize", () =>
    Effect.gen(function* () {
      const runs: Array<ReadonlyArray<number>> = []
      const batcher = yield* makeBatcher({
        maxBatchSize: 4,
        window: Duration.seconds(1),
        run: (items: ReadonlyArray<number>) =>
          Effect.sync(() => {
            runs.push(items)
            return items.map((n) => n * 10)
          })
      })
      const left = yield* Effect.forkChild(batcher.submit([1]))
      const a = yield* Effect.forkChild(batcher.submit([2]))
      const b = yield* Effect.forkChild(batcher.submit([3]))
      yield* Effect.yieldNow
      yield* Fiber.interrupt(left)
      assert.deepStrictEqual(runs, [])
      yield* TestClock.adjust(Duration.seconds(1))
      assert.deepStrictEqual(yield* Fiber.join(a), [20])
      assert.deepStrictEqual(yield* Fiber.join(b), [30])
      assert.deepStrictEqual(runs, [[2, 3]])
      // a full batch runs at once, without waiting for the window; the rest waits for it
      const big = yield* Effect.forkChild(batcher.submit([5, 6, 7, 8, 9, 10]))
      yield* turns(2)
      assert.deepStrictEqual(runs.slice(1), [[5, 6, 7, 8]])
      yield* TestClock.adjust(Duration.seconds(1))
      assert.deepStrictEqual(yield* Fiber.join(big), [50, 60, 70, 80, 90, 100])
      assert.deepStrictEqual(runs.slice(1), [
        [5, 6, 7, 8],
        [9, 10]
      ])
    })
  )

  it.effect("callers arriving while a batch runs form the next batch; a failed batch fails only its callers", () =>
    Effect.gen(function* () {
      const runs: Array<ReadonlyArray<number>> = []
      const gate = yield* Ref.make(true)
      const batcher = yield* makeBatcher<number, number, string>({
        maxBatchSize: 8,
        window: Duration.zero,
        run: (items) =>
          Effect.gen(function* () {
            runs.push(items)
            if (items.includes(0)) return yield* Effect.fail("bad item")
            if (yield* Ref.get(gate)) yield* Effect.sleep("1 second")
            return items
          })
      })
      const first = yield* Effect.forkChild(batcher.submit([1]))
      yield* turns(2)
      const queued = yield* Effect.forEach([2, 3, 4], (n) => Effect.forkChild(batcher.submit([n])))
      yield* turns(2)
      assert.deepStrictEqual(runs, [[1]])
      yield* Ref.set(gate, false)
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* Fiber.join(first), [1])
      assert.deepStrictEqual(yield* Effect.forEach(queued, Fiber.join), [[2], [3], [4]])
      assert.deepStrictEqual(runs, [[1], [2, 3, 4]])
      const failed = yield* Effect.flip(batcher.submit([0]))
      assert.strictEqual(failed, "bad item")
      assert.deepStrictEqual(yield* batcher.submit([7]), [7])
    })
  )

  it.effect("abort fails the callers of the running batch and of the queue, and refuses new ones", () =>
    Effect.gen(function* () {
      const batcher = yield* makeBatcher<number, number, string>({
        maxBatchSize: 2,
        window: Duration.millis(1),
        run: () => Effect.never
      })
      const running = yield* Effect.forkChild(batcher.submit([1, 2]))
      yield* turns(2)
      const queued = yield* Effect.forkChild(batcher.submit([3]))
      yield* turns(2)
      yield* batcher.abort("closing")
      assert.strictEqual(yield* Effect.flip(Fiber.join(running)), "closing")
      assert.strictEqual(yield* Effect.flip(Fiber.join(queued)), "closing")
      assert.strictEqual(yield* Effect.flip(batcher.submit([4])), "closing")
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
      // the context moves on after every piece (window 1), now and then, or never in this text
      for (const window of [1, 3, 16, 1_000]) {
        const next = makeDetokenizer(decode, promptIds.length, 5, window)
        const deltas: Array<string> = []
        for (let i = 1; i <= answerIds.length; i++) {
          const delta = next([...promptIds, ...answerIds.slice(0, i)])
          if (delta.length > 0) deltas.push(delta)
        }
        assert.strictEqual(deltas.join(""), answer, `window ${window}`)
        for (const delta of deltas) assert.notInclude(delta, "\uFFFD")
        assert.isTrue(deltas.length > 8)
      }
    })
  )

  it.effect(
    "with a tokenizer that cleans up spaces (GPT-2's clean_up_tokenization_spaces), the pieces still add up to the whole text",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir("orchestra-cleanup-")
        yield* Effect.promise(async () => {
          await cp(path.join(modelPath, "tiny-gpt2"), path.join(dir, "tiny-gpt2"), { recursive: true })
          const file = path.join(dir, "tiny-gpt2", "tokenizer_config.json")
          const config = JSON.parse(await readFile(file, "utf8")) as Record<string, unknown>
          config.clean_up_tokenization_spaces = true
          await writeFile(file, JSON.stringify(config))
        })
        env.allowRemoteModels = false
        env.localModelPath = `${dir}${path.sep}`
        const tokenizer = yield* Effect.promise(() => AutoTokenizer.from_pretrained("tiny-gpt2"))
        const decode = decoderOf(tokenizer as never)
        const promptIds = Array.from(tokenizer("Say:").input_ids.data as BigInt64Array, Number)
        // Tokens a model may well produce: a space, then punctuation (cleanup would drop that space).
        const answer = " the river , and . it 's here ! ok"
        const answerIds = Array.from(tokenizer(answer).input_ids.data as BigInt64Array, Number)
        const whole = decode(answerIds)
        assert.strictEqual(whole, answer)
        for (const window of [1, 16]) {
          const next = makeDetokenizer(decode, promptIds.length, 5, window)
          let text = ""
          for (let i = 1; i <= answerIds.length; i++) text += next([...promptIds, ...answerIds.slice(0, i)])
          assert.strictEqual(text, whole, `window ${window}`)
        }
      })
  )
})

describe("the characters a token can stand for", () => {
  it.effect("a byte-level BPE token's entry bounds them; a tokenizer that drops characters gives no bound", () =>
    Effect.gen(function* () {
      env.allowRemoteModels = false
      env.localModelPath = `${modelPath}${path.sep}`
      const load = (id: string) => Effect.promise(() => AutoTokenizer.from_pretrained(id))
      const gpt2 = yield* load("tiny-gpt2")
      assert.strictEqual(spellingOf(gpt2)?.perToken, 13)
      // Every character is spelled: the bound holds for any text.
      for (const text of ["x".repeat(500), " ".repeat(500), "🙂".repeat(200), "<|endoftext|>".repeat(40)]) {
        const tokens = gpt2(text).input_ids.dims.at(-1)!
        assert.isAtLeast(tokens * 13, text.length, JSON.stringify(text.slice(0, 13)))
      }
      // BERT's WordPiece drops whitespace and reads a long unknown word as one token: no bound.
      const bert = yield* load("tiny-bert")
      assert.strictEqual(bert(" ".repeat(500)).input_ids.dims.at(-1), 2)
      assert.isUndefined(spellingOf(bert))
      const parts = { normalizer: null, pre_tokenizer: gpt2.pre_tokenizer, model: gpt2.model }
      const plain = spellingOf({ ...parts, added_tokens: [{ content: "<mask>", lstrip: false }] })
      assert.strictEqual(plain?.spelled("a  <mask>  b"), 12)
      // Spaces next to a token that strips them on that side may be swallowed: they are not counted.
      const left = spellingOf({ ...parts, added_tokens: [{ content: "<mask>", lstrip: true }] })
      assert.deepStrictEqual([left?.perToken, left?.spelled("a  <mask>  b"), left?.spelled("  a  ")], [13, 10, 5])
      const right = spellingOf({ ...parts, added_tokens: [{ content: "<mask>", rstrip: true }] })
      assert.strictEqual(right?.spelled("<mask>  <mask>  b"), 13)
    })
  )
})

describe("stop sequences", () => {
  it.effect("the first stop sequence completed wins by where it starts; a possible start is held back", () =>
    Effect.sync(() => {
      const read = (stop: ReadonlyArray<string>, pieces: ReadonlyArray<string>) => {
        const matcher = makeStopMatcher(stop)
        // What is emitted after a stop sequence does not matter: generation ends there.
        return pieces.map((piece) => {
          const stopAt = matcher.push(piece)
          return [stopAt, stopAt >= 0 ? null : matcher.emittable()]
        })
      }
      // "ab" may start "abcdef"; "bcd" completes first, "abcdef" (starting earlier) only later.
      assert.deepStrictEqual(read(["bcd", "abcdef"], ["ab", "cd"]), [
        [-1, 0],
        [1, null]
      ])
      // Both complete in the same piece: the one starting first wins.
      assert.deepStrictEqual(read(["bcd", "abcd"], ["xabcdy"])[0]![0], 1)
      // A failed partial match that overlaps the next one ("aa" then "aab"); an empty stop sequence never matches.
      assert.deepStrictEqual(read(["aab", ""], ["a", "a", "a", "b"]), [
        [-1, 0],
        [-1, 0],
        [-1, 1],
        [1, null]
      ])
      assert.deepStrictEqual(read(["\n\n"], ["one\n", "two", "\n", "\nthree"]), [
        [-1, 3],
        [-1, 7],
        [-1, 7],
        [7, null]
      ])
    })
  )

  it.effect("each piece costs what it adds, however long the text and the stop sequences (16, ~1M characters)", () =>
    Effect.sync(() => {
      const stop = Array.from({ length: 16 }, (_, i) => `${"zq".repeat(30_000)}${i}`)
      const matcher = makeStopMatcher(stop)
      // Wall time of pure CPU work, no timer: each piece rescanned the text for every stop sequence,
      // ~6 s for these 2,000 pieces (the generation's own steps took less); now a few ms.
      const started = performance.now()
      let text = ""
      for (let i = 0; i < 2_000; i++) {
        const piece = i % 3 === 0 ? " zqzq" : ` w${i}`
        text += piece
        assert.strictEqual(matcher.push(piece), -1)
        matcher.emittable()
      }
      assert.isBelow(performance.now() - started, 1_000)
      assert.strictEqual(matcher.emittable(), text.length)
    })
  )
})

/** The real transformers.js, its tokenizers recording the length of every text they are given. */
const recordingTokenizers = () => {
  const seen: Array<number> = []
  const AutoTokenizer = Object.assign(() => {}, {
    from_pretrained: async (id: string, options: object) => {
      const tokenizer = await Transformers.AutoTokenizer.from_pretrained(id, options)
      const call = tokenizer._call.bind(tokenizer)
      tokenizer._call = (text: string | Array<string>, options?: Parameters<typeof call>[1]) => {
        for (const t of [text].flat()) seen.push(t.length)
        return call(text, options)
      }
      return tokenizer
    }
  })
  const internals: Internals = { importer: async () => ({ ...Transformers, AutoTokenizer }) }
  return { seen, internals }
}

describe("Local provider: checks before and after the model", () => {
  it.effect(
    "a vector with NaN or Infinity is a Decode error naming it; the other caller of the batch gets its vector",
    () =>
      Effect.gen(function* () {
        // A model whose output for "poison" is not a number (a broken export, an fp16 overflow).
        const instrument =
          (real: Loader): Loader =>
          (modelId, purpose) =>
            Effect.map(
              real(modelId, purpose),
              (instance): Instance => ({
                ...instance,
                embed: (texts) =>
                  Effect.map(instance.embed(texts), (output) => ({
                    ...output,
                    vectors: output.vectors.map((vector, i) =>
                      texts[i] === "poison"
                        ? vector.map((x, j) => (j === 3 ? Number.NaN : x))
                        : texts[i] === "inf"
                          ? vector.map((x, j) => (j === 0 ? Number.POSITIVE_INFINITY : x))
                          : vector
                    )
                  }))
              })
            )
        const { model } = yield* build({}, { instrument })
        const [bad, good, infinite] = yield* Effect.all(
          [
            Effect.flip(model.embed({ texts: ["fine", "poison"] })),
            model.embed({ texts: ["fine"] }),
            Effect.flip(model.embed({ texts: ["inf"] }))
          ],
          { concurrency: "unbounded" }
        )
        assert.deepStrictEqual(
          [bad, infinite].map((error) =>
            error._tag === "ModelError" ? [error.reason, error.field, error.provider] : []
          ),
          [
            ["Decode", "vectors[1]", "local"],
            ["Decode", "vectors[0]", "local"]
          ]
        )
        assert.match(bad.message, /vectors\[1\]\[3\] = NaN, not a finite number/)
        assert.strictEqual(good.vectors.length, 1)
        assert.isTrue(good.vectors[0]!.every(Number.isFinite))
      })
  )

  it.effect("a prompt too long for the context is refused before an instance is taken: it does not wait for one", () =>
    Effect.gen(function* () {
      // A generation holds the only instance until a second one runs (which a pool of one never lets happen).
      const counted = yield* instrumentedWith(2)
      const { model } = yield* build({ poolSize: 1, shutdownDeadline: 0 }, counted)
      const busy = yield* model.generate({ prompt: "the river", maxTokens: 5 }).pipe(Effect.forkChild)
      yield* waitFor(counted.generating, (n) => n === 1)
      // Refused by its count of tokens (~2,500, past 2,048 positions), and by its characters, without waiting.
      const calls = yield* Effect.forkChild(
        Effect.all([
          Effect.flip(model.generate({ prompt: "word ".repeat(500), maxTokens: 5 })),
          Effect.flip(Stream.runDrain(model.stream({ prompt: "x".repeat(30_000), maxTokens: 5 })))
        ])
      )
      const ended = yield* endsWithin(calls, 1_000)
      if (!ended) yield* Fiber.interrupt(calls).pipe(Effect.andThen(Fiber.interrupt(busy)))
      assert.isTrue(ended, "the refused calls waited for the busy instance")
      const [byTokens, byChars] = yield* Fiber.join(calls)
      assert.deepStrictEqual(
        [byTokens, byChars].map((error) =>
          error._tag === "ModelError" ? [error.reason, error.field, error.provider] : []
        ),
        [
          ["InvalidRequest", "messages", "local"],
          ["InvalidRequest", "messages", "local"]
        ]
      )
      assert.match(byTokens.message, /the prompt has \d+ tokens; model "tiny-gpt2" reads at most 2048/)
      assert.match(byChars.message, /the prompt has 30000 characters, more than the 2047 tokens/)
      assert.strictEqual(yield* SubscriptionRef.get(counted.generating), 1)
      yield* Fiber.interrupt(busy)
      assert.strictEqual(yield* SubscriptionRef.get(counted.generating), 0)
    })
  )

  it.effect(
    "a huge text is cut to a bound of characters before it is tokenized, with the vector of its first tokens",
    () =>
      Effect.gen(function* () {
        const { seen, internals } = recordingTokenizers()
        const { model } = yield* build({ requestLimits: { maxInputChars: 20_000_000 } }, internals)
        // 5 million characters each: prose, and one word (BERT reads a word past 100 characters as [UNK]).
        const prose = "the quiet river carries stone home. ".repeat(140_000)
        const word = "x".repeat(5_000_000)
        const huge = yield* model.embed({ texts: [prose, "short", word] })
        // tiny-bert reads 128 positions: a text is tokenized at most 256 characters a position.
        assert.isAtMost(Math.max(...seen), 128 * 256)
        // Truncation as before: the vectors of the first tokens, which a few thousand characters hold.
        const expected = yield* model.embed({ texts: [prose.slice(0, 4_000), "short", "x".repeat(1_000)] })
        for (const [i, vector] of huge.vectors.entries()) assertClose(vector, expected.vectors[i]!)
        assert.strictEqual(huge.usage?.inputTokens, expected.usage?.inputTokens)
      })
  )

  it.effect(
    "a prompt whose tokenizer bounds no token's characters is refused by the tokens of its first characters, not tokenized whole",
    () =>
      Effect.gen(function* () {
        // tiny-gpt2 behind an NFC normalizer (as Qwen2's): it may compose characters, so no bound.
        const dir = yield* tempDir("orchestra-nfc-")
        yield* Effect.promise(async () => {
          await cp(path.join(modelPath, "tiny-bert"), path.join(dir, "tiny-bert"), { recursive: true })
          await cp(path.join(modelPath, "tiny-gpt2"), path.join(dir, "nfc-gpt2"), { recursive: true })
          const file = path.join(dir, "nfc-gpt2", "tokenizer.json")
          const tokenizer = JSON.parse(await readFile(file, "utf8"))
          tokenizer.normalizer = { type: "NFC" }
          await writeFile(file, JSON.stringify(tokenizer))
        })
        const { seen, internals } = recordingTokenizers()
        const { model } = yield* build({ modelPath: dir, generationModel: "nfc-gpt2" }, internals)
        const error = yield* Effect.flip(model.generate({ prompt: "word ".repeat(200_000), maxTokens: 2 }))
        assert.deepStrictEqual(error._tag === "ModelError" ? [error.reason, error.field] : [], [
          "InvalidRequest",
          "messages"
        ])
        assert.match(
          error.message,
          /^the prompt's first \d+ characters have \d+ tokens; model "nfc-gpt2" reads at most 2048/
        )
        // 16 characters for each of the 2,047 tokens it reads (a position is left for the answer), at most.
        assert.isAtMost(Math.max(...seen), 2_047 * 16)
        // A prompt that fits is read as before.
        const fits = yield* model.generate({ prompt: "Tell me a story: once", maxTokens: 5 })
        assert.strictEqual(fits.text, " upon a time")
      })
  )

  it.effect(
    "a batch answered with a vector too few fails each of its callers, rather than handing one another's vector",
    () =>
      Effect.gen(function* () {
        // A model that loses the first row of a batch of several texts.
        const instrument =
          (real: Loader): Loader =>
          (modelId, purpose) =>
            Effect.map(
              real(modelId, purpose),
              (instance): Instance => ({
                ...instance,
                embed: (texts) =>
                  Effect.map(instance.embed(texts), (output) =>
                    texts.length > 1 ? { vectors: output.vectors.slice(1), tokens: output.tokens.slice(1) } : output
                  )
              })
            )
        const { model } = yield* build({}, { instrument })
        const exits = yield* Effect.all(
          [model.embed({ texts: ["alpha"] }), model.embed({ texts: ["beta"] })].map((call) => Effect.exit(call)),
          { concurrency: "unbounded" }
        )
        assert.deepStrictEqual(
          exits.map((exit) =>
            Exit.isFailure(exit) && exit.cause.reasons[0]?._tag === "Fail"
              ? (exit.cause.reasons[0].error as ModelError).reason
              : "success"
          ),
          ["Decode", "Decode"]
        )
        // Alone, a text is answered.
        assert.strictEqual((yield* model.embed({ texts: ["alpha"] })).vectors.length, 1)
      })
  )
})
