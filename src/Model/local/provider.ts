/**
 * The local provider: a pool of model instances per model id, embeddings coalesced into
 * batches, admission and graceful shutdown.
 *
 * @internal
 */
import { Clock, Deferred, Duration, Effect, Option, Pool, Random, Scope, type Stream } from "effect"
import {
  type AiError,
  invalidRequest,
  ModelError,
  reasonOf,
  ShuttingDownError,
  StreamInterruptedError
} from "../../AiError.js"
import { type OptionError, shown } from "../../Input.js"
import { withProvider as namedAfter } from "../../policy/failure.js"
import * as Model from "../../Model.js"
import { type Batcher, makeBatcher } from "./batcher.js"
import { MAX_SEED } from "./decoding.js"
import { paced } from "./paced.js"
import type { GenerationInput, Instance } from "./instance.js"
import { type ResolvableOptions, resolve } from "./options.js"
import {
  type Importer,
  importTransformers,
  type Loader,
  loadTransformers,
  makeLoader,
  type Purpose
} from "./runtime.js"

/** Hooks for tests: a failing import, or a loader wrapped to count loads and disposals. */
export interface Internals {
  readonly importer?: Importer | undefined
  readonly instrument?: ((loader: Loader) => Loader) | undefined
}

interface Embedded {
  readonly vector: ReadonlyArray<number>
  readonly tokens: number
}

const poolKey = (purpose: Purpose, modelId: string): string => `${purpose}:${modelId}`

/**
 * Parts of a stream decoded ahead of its consumer, at most (then the generation waits). A
 * consumer that keeps up holds at most one slice's parts (the bundled decoder: ~250 in a
 * 50 ms slice), so it never waits.
 */
export const BUFFERED = 1024

/** How long the shutdown waits for the calls it stopped, and a release for its instance, before abandoning them. */
const ABANDON_AFTER = Duration.seconds(5)

/**
 * Builds the provider. Every configured model is loaded once before this returns, so a
 * missing or broken model (or a missing transformers.js) fails here, not on the first request.
 */
export const makeWith = Effect.fnUntraced(function* (
  options: ResolvableOptions,
  internals: Internals = {}
): Effect.fn.Return<Model.Service, ModelError | OptionError, Scope.Scope> {
  const config = yield* resolve(options)
  const provider = config.name
  const lib = yield* loadTransformers(internals.importer ?? importTransformers, provider)
  const clock = yield* Clock.Clock
  // Aborted by the shutdown: running generations stop at their next step, loads in progress are abandoned.
  const halt = new AbortController()
  const late = () => new ShuttingDownError({ message: `${provider}: the provider closed before the call finished` })
  const real = makeLoader(lib, config.load, clock, halt.signal)
  const load = internals.instrument === undefined ? real : internals.instrument(real)

  const loadBounded = (modelId: string, purpose: Purpose) =>
    Effect.timeoutOrElse(load(modelId, purpose), {
      duration: config.loadTimeout,
      orElse: () =>
        Effect.fail(
          new ModelError({
            reason: "Timeout",
            message: `${provider}: loading model "${modelId}" took longer than loadTimeout (${Duration.format(config.loadTimeout)})`,
            provider,
            model: modelId
          })
        )
    })

  // One pool per model; each item is acquired in its own scope (Pool.allocate), so an idle
  // instance past its time to live is disposed then, not when the provider closes.
  // Embedding models hold one instance: inference holds the thread, so batches run one at a time.
  const pools = new Map<string, Pool.Pool<Instance, ModelError | ShuttingDownError>>()
  // The pools live in a scope of their own: closing them waits for every instance in use to
  // be given back, which a call abandoned by the shutdown (below) may never do.
  const poolScope = yield* Scope.make()
  let abandoned = false
  yield* Effect.addFinalizer((exit) =>
    abandoned ? Effect.asVoid(Effect.forkDetach(Scope.close(poolScope, exit))) : Scope.close(poolScope, exit)
  )
  const models: ReadonlyArray<readonly [Purpose, string]> = [
    ...config.generationModels.map((id) => ["generation", id] as const),
    ...config.embeddingModels.map((id) => ["embedding", id] as const)
  ]
  for (const [purpose, modelId] of models) {
    const max = purpose === "generation" ? config.poolSize : 1
    const pool = yield* Pool.makeWithTTL({
      acquire: Effect.acquireRelease(loadBounded(modelId, purpose), (instance) =>
        instance.dispose.pipe(Effect.interruptible, Effect.timeoutOption(ABANDON_AFTER))
      ),
      min: Math.min(config.minInstances, max),
      max,
      timeToLive: config.idleTimeToLive,
      timeToLiveStrategy: "usage"
    }).pipe(Scope.provide(poolScope))
    pools.set(poolKey(purpose, modelId), pool)
  }
  // Registered after the pools, so it runs before their finalizers (which would wait for
  // every load in progress, up to loadTimeout): those loads are abandoned now, and their
  // instances disposed when they arrive. Calls in flight have drained or been stopped by then.
  yield* Effect.addFinalizer(() => Effect.sync(() => halt.abort(late())))
  // Load every model once now (downloads overlap): a missing or broken model fails the
  // layer, not the first request. Stopped by the shutdown, the build was interrupted.
  // A generation model's prompts are prepared with the tokenizer of the instance loaded now
  // (every instance of a model has the same): a prompt the model cannot read is refused before
  // an instance is taken, not after waiting for one, and holds none meanwhile.
  const preparers = new Map<string, Instance["prepare"]>()
  yield* Effect.forEach(
    pools,
    ([key, pool]) => Pool.use(pool, (instance) => Effect.sync(() => preparers.set(key, instance.prepare))),
    { concurrency: "unbounded", discard: true }
  ).pipe(Effect.catchTag("ShuttingDownError", () => Effect.interrupt))
  const poolOf = (purpose: Purpose, modelId: string) => pools.get(poolKey(purpose, modelId))!
  const prepare = (modelId: string, input: GenerationInput) => preparers.get(poolKey("generation", modelId))!(input)

  const batchers = new Map<string, Batcher<string, Embedded, ModelError | ShuttingDownError>>()
  for (const modelId of config.embeddingModels) {
    const pool = poolOf("embedding", modelId)
    const batcher = yield* makeBatcher<string, Embedded, ModelError | ShuttingDownError>({
      maxBatchSize: config.maxBatchSize,
      window: config.batchWindow,
      run: (texts) =>
        Pool.use(pool, (instance) => instance.embed(texts)).pipe(
          // The batcher hands each caller its slice of the answer: with a vector too few or too
          // many, which is whose cannot be told, and every caller of the batch fails.
          Effect.flatMap((output) =>
            output.vectors.length === texts.length
              ? Effect.succeed(output.vectors.map((vector, i): Embedded => ({ vector, tokens: output.tokens[i] ?? 0 })))
              : Effect.fail(
                  new ModelError({
                    reason: "Decode",
                    message: `${provider}: model "${modelId}" gave ${output.vectors.length} vectors for a batch of ${texts.length} texts`,
                    provider,
                    model: modelId
                  })
                )
          ),
          Effect.withSpan("LocalModel.embedBatch", {
            attributes: { "gen_ai.request.model": modelId, "gen_ai.provider.name": provider, batch_size: texts.length }
          })
        )
    })
    batchers.set(modelId, batcher)
  }

  // Admission and shutdown. Registered after the pools and batchers, so it runs before
  // their finalizers: calls drain (up to the deadline), the rest are stopped (the running
  // generations at their next step), then the batchers stop and every instance is released.
  let closing = false
  let inFlight = 0
  const idle = Deferred.makeUnsafe<void>()
  const leave = Effect.sync(() => {
    inFlight -= 1
    if (closing && inFlight === 0) Deferred.doneUnsafe(idle, Effect.void)
  })
  const admitted = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E | ShuttingDownError> =>
    Effect.uninterruptibleMask((restore) =>
      Effect.suspend((): Effect.Effect<A, E | ShuttingDownError> => {
        if (closing) return Effect.fail(new ShuttingDownError({ message: `${provider}: the provider is closing` }))
        inFlight += 1
        return Effect.ensuring(restore(effect), leave)
      })
    )
  yield* Effect.addFinalizer(() =>
    Effect.gen(function* () {
      closing = true
      if (inFlight === 0) Deferred.doneUnsafe(idle, Effect.void)
      const drained = yield* Deferred.await(idle).pipe(
        Effect.interruptible,
        Effect.timeoutOption(config.shutdownDeadline)
      )
      if (Option.isNone(drained)) {
        halt.abort(late())
        yield* Effect.forEach(batchers.values(), (batcher) => batcher.abort(late()), { discard: true })
        // A generation stops at its next step; one whose step never returns (a stuck native call)
        // would hold the close for ever: it is abandoned, as a release is (bounded alike).
        const stopped = yield* Deferred.await(idle).pipe(Effect.interruptible, Effect.timeoutOption(ABANDON_AFTER))
        if (Option.isNone(stopped)) {
          abandoned = true
          yield* Effect.logWarning(
            `${provider}: ${inFlight} call(s) still running ${Duration.format(ABANDON_AFTER)} after the shutdown stopped them were abandoned; their instances are released if they ever return`
          )
        }
      }
    })
  )

  const withProvider = <E>(error: E): E =>
    error instanceof ModelError && error.provider === undefined ? (namedAfter(error, provider) as E) : error

  const modelFor = (requested: string | undefined, purpose: Purpose): Effect.Effect<string, ModelError> => {
    const allowed = purpose === "generation" ? config.generationModels : config.embeddingModels
    const modelId = requested ?? (purpose === "generation" ? config.generationModel : config.embeddingModel)
    return allowed.includes(modelId)
      ? Effect.succeed(modelId)
      : Effect.fail(
          new ModelError({
            reason: "InvalidRequest",
            message: `model ${shown(modelId)} is not configured for ${purpose} on ${provider} (configured: ${allowed.join(", ")})`,
            provider,
            model: modelId,
            field: "model"
          })
        )
  }

  // A small in-process model has no tool calling and no constrained decoding: a request that
  // needs either is refused by name rather than answered as if it had been honoured.
  const unsupported = (field: string, what: string) =>
    Effect.fail(
      new ModelError({
        reason: "InvalidRequest",
        message: `${provider} does not support ${what} (field "${field}")`,
        provider,
        field
      })
    )
  const checkSupported = (request: Model.GenerateRequest): Effect.Effect<void, ModelError> => {
    if (request.tools !== undefined && request.tools.length > 0) return unsupported("tools", "tools")
    if (request.toolChoice !== undefined) return unsupported("toolChoice", "tools")
    if (request.responseFormat !== undefined && request.responseFormat.type !== "text") {
      return unsupported("responseFormat", `a ${request.responseFormat.type} response format`)
    }
    for (const message of request.messages ?? []) {
      if (message.role === "tool" || message.toolCalls !== undefined) {
        return unsupported("messages", "tool calls or tool messages")
      }
    }
    return Effect.void
  }

  // Checked whether or not the request samples, so the same request does not pass or fail by its temperature.
  const checkSeed = (seed: number | undefined): Effect.Effect<void, ModelError> =>
    seed === undefined || (seed >= 0 && seed <= MAX_SEED)
      ? Effect.void
      : Effect.fail(
          invalidRequest(
            "seed",
            `expected an integer from 0 to ${MAX_SEED} (the sampler's seeds are 32 bits: others would repeat one of these), got ${seed}`,
            provider
          )
        )

  const inputOf = (request: Model.GenerateRequest): Effect.Effect<GenerationInput> =>
    Effect.map(request.seed === undefined ? Random.nextInt : Effect.succeed(request.seed), (seed) => ({
      messages: Model.toMessages(request),
      maxNewTokens: request.maxTokens ?? config.maxTokens,
      temperature: request.temperature,
      topP: request.topP,
      seed,
      stop: request.stop ?? []
    }))

  const annotate = (modelId: string, usage: Model.Usage) =>
    Effect.annotateCurrentSpan({
      "gen_ai.provider.name": provider,
      "gen_ai.request.model": modelId,
      "gen_ai.usage.input_tokens": usage.inputTokens,
      "gen_ai.usage.output_tokens": usage.outputTokens
    })

  const generate = Effect.fn("LocalModel.generate")(function* (request: Model.GenerateRequest) {
    const valid = yield* Model.validateGenerate(request, config.limits)
    yield* checkSupported(valid)
    yield* checkSeed(valid.seed)
    const modelId = yield* modelFor(valid.model, "generation")
    const prepared = yield* prepare(modelId, yield* inputOf(valid))
    const output = yield* admitted(
      Pool.use(poolOf("generation", modelId), (instance) => instance.generate(prepared, { halt: halt.signal }))
    )
    const usage = Model.usage(output.inputTokens, output.outputTokens)
    yield* annotate(modelId, usage)
    return {
      text: output.text,
      finishReason: output.finishReason,
      usage,
      provider,
      model: modelId
    } satisfies Model.GenerateResponse
  }, Effect.mapError(withProvider))

  // One stream's generation: its parts go to `push`; `pace` holds it back while the consumer lags.
  const generation = Effect.fnUntraced(
    function* (
      request: Model.GenerateRequest,
      push: (part: Model.StreamPart) => void,
      pace: () => Promise<void> | undefined
    ): Effect.fn.Return<void, AiError> {
      const valid = yield* Model.validateGenerate(request, config.limits)
      yield* checkSupported(valid)
      yield* checkSeed(valid.seed)
      const modelId = yield* modelFor(valid.model, "generation")
      const prepared = yield* prepare(modelId, yield* inputOf(valid))
      let delivered = ""
      const onDelta = (text: string) => {
        delivered += text
        push({ _tag: "TextDelta", text })
      }
      const output = yield* admitted(
        Pool.use(poolOf("generation", modelId), (instance) =>
          instance.generate(prepared, { onDelta, pace, halt: halt.signal })
        )
      ).pipe(
        // A failure after text is the provider's own error, as from every provider (an HTTP
        // stream's mid-stream error, Mock's drop): the executor turns it into a
        // `StreamInterruptedError` with the text its consumer holds, or resumes on its next
        // step; a `StreamInterruptedError` of our own would refuse resumption and count
        // under `StreamInterrupted` instead of the failure's reason. Only a shutdown is
        // wrapped: a `ShuttingDownError` carries no text, and ends an executor's stream as is.
        Effect.mapError(
          (error): AiError =>
            delivered.length === 0 || error._tag !== "ShuttingDownError"
              ? error
              : new StreamInterruptedError({
                  partialText: delivered,
                  provider,
                  reason: reasonOf(error),
                  detail: error.message,
                  cause: error
                })
        )
      )
      const usage = Model.usage(output.inputTokens, output.outputTokens)
      yield* annotate(modelId, usage)
      push({ _tag: "Finish", finishReason: output.finishReason, usage, provider, model: modelId })
    },
    Effect.mapError(withProvider),
    Effect.withSpan("LocalModel.stream")
  )

  const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, AiError> =>
    paced(BUFFERED, (push, pace) => generation(request, push, pace))

  // A span per batch ("LocalModel.embedBatch"), not per call: see docs/benchmarks/local.md.
  const embed = Effect.fnUntraced(function* (request: Model.EmbedRequest) {
    const valid = yield* Model.validateEmbed(request, config.limits)
    const modelId = yield* modelFor(valid.model, "embedding")
    const results = yield* admitted(batchers.get(modelId)!.submit(valid.texts))
    if (results.length !== valid.texts.length) {
      return yield* new ModelError({
        reason: "Decode",
        message: `${provider}: expected ${valid.texts.length} vectors, got ${results.length}`,
        provider,
        model: modelId
      })
    }
    const vectors: Array<ReadonlyArray<number>> = []
    let tokens = 0
    for (const [i, result] of results.entries()) {
      // A broken export or an fp16 overflow gives NaN or Infinity: refused here, for this caller
      // alone, as the HTTP providers refuse theirs, rather than handed on as numbers.
      const at = result.vector.findIndex((x) => !Number.isFinite(x))
      if (at >= 0) {
        return yield* new ModelError({
          reason: "Decode",
          message: `${provider}: model "${modelId}" gave vectors[${i}][${at}] = ${result.vector[at]}, not a finite number`,
          provider,
          model: modelId,
          field: `vectors[${i}]`
        })
      }
      vectors.push(result.vector)
      tokens += result.tokens
    }
    return { vectors, usage: Model.usage(tokens, 0), provider, model: modelId } satisfies Model.EmbedResponse
  }, Effect.mapError(withProvider))

  return {
    name: provider,
    defaultModel: config.generationModel,
    maxConcurrency: config.poolSize,
    generate,
    stream,
    embed
  } satisfies Model.Service
})
