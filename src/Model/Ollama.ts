/**
 * Ollama's native API over `effect/http`'s `HttpClient`: `/api/chat` (tools, JSON formats),
 * `/api/generate` for plain prompts when asked, NDJSON streaming, and `/api/embed`.
 *
 * The layer needs an `HttpClient` (`NodeHttpClient.layerUndici` from `@effect/platform-node`,
 * or `FetchHttpClient.layer`). Every call is bounded (`timeout`), every stream has an idle
 * deadline (`streamIdleTimeout`), every body a size bound (`maxResponseBytes`).
 *
 * @since 0.1.0
 */
import { Config, Effect, Layer, type Redacted, Stream } from "effect"
import type { HttpClient } from "effect/http"
import { HttpClientRequest } from "effect/http"
import type { AiError, ModelError } from "../AiError.js"
import * as Input from "../Input.js"
import * as Model from "../Model.js"
import * as Assemble from "./http/assemble.js"
import * as Client from "./http/client.js"
import * as Decode from "./http/decode.js"
import * as Errors from "./http/errors.js"
import * as Wire from "./http/ollamaWire.js"
import * as Http from "./http/options.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options extends Http.Options {
  /**
   * Server URL; the scheme may be left out (`127.0.0.1:11434`, as `OLLAMA_HOST` often is), and then the port
   * too (`0.0.0.0` is `http://0.0.0.0:11434`, as the ollama CLI reads it). Default `http://127.0.0.1:11434`.
   */
  readonly host?: string | undefined
  /** Default model. Default `llama3.2`. */
  readonly model?: string | undefined
  /** Default embedding model. Default `nomic-embed-text`. */
  readonly embeddingModel?: string | undefined
  /**
   * The length of the vectors asked for, sent as `dimensions` (Ollama truncates each vector to
   * it; a server older than 0.11 ignores it). A positive integer; an answer whose vectors have
   * another length is `Decode` on `embeddings[0]`. Default: none sent, the model's own length.
   *
   * @since 0.3.0
   */
  readonly embeddingDimensions?: number | undefined
  /**
   * `chat` (default) sends every request to `/api/chat`; `generate` sends plain-prompt
   * requests without tools to `/api/generate` (conversations still go to `/api/chat`).
   */
  readonly api?: "chat" | "generate" | undefined
  /**
   * How long the server keeps the model loaded after a call (`keep_alive`): a duration
   * (`"10 minutes"`, `600000` milliseconds, or Ollama's own `"10m"`), `0` to unload at once, or
   * `"forever"` (also Ollama's own `-1` or `"-1m"`, or `Infinity`). Another negative value, or a
   * positive one under a millisecond, is an `OptionError`. The server's default when absent.
   */
  readonly keepAlive?: Input.DurationInput | `${number}${"ms" | "s" | "m" | "h"}` | "forever" | undefined
  /** A bearer token, for Ollama behind an authenticating proxy or ollama.com. */
  readonly apiKey?: Redacted.Redacted<string> | undefined
  /** Provider name in errors, metrics and provenance. Default `ollama`. */
  readonly name?: string | undefined
  /**
   * Extra headers on every request. A header that carries a secret takes a `Redacted` value: it
   * is then scrubbed from errors and shown redacted when middleware logs a request.
   */
  readonly headers?: Http.HeadersOption | undefined
  /**
   * Bounds on requests (`maxInputChars`, `maxMessages`, `maxEmbedTexts`, positive integers),
   * checked before any call. Default `Model.defaultRequestLimits`.
   *
   * @since 0.3.0
   */
  readonly requestLimits?: Partial<Model.RequestLimits> | undefined
  /**
   * Sends the key (and `Redacted` headers) over a plain `http` URL off loopback: for a network
   * that is the application's own (a service mesh that encrypts between services, a private
   * link). Default false: such a provider is refused when built (an `OptionError` naming the
   * secret's option and the host), since the key would travel in clear text. `http` on loopback
   * (127.0.0.0/8, `::1`, `localhost`, `0.0.0.0`) and `https` need nothing.
   *
   * @since 0.3.0
   */
  readonly allowPlainHttpSecrets?: boolean | undefined
}

/**
 * Ollama's `done_reason` as ours.
 *
 * @since 0.1.0
 * @category utils
 */
export const finishReasonOf = (reason: string | null | undefined): Model.FinishReason => {
  switch (reason) {
    case "stop":
      return "stop"
    case "length":
      return "length"
    default:
      return "unknown"
  }
}

const EMBED_BATCH = Wire.embedBatch

const decodeChat = Decode.valueDecoder(Wire.ChatAnswer)
const decodeGenerate = Decode.valueDecoder(Wire.GenerateAnswer)
const decodeChatLine = Decode.valueDecoder(Wire.ChatLine)
const decodeGenerateLine = Decode.valueDecoder(Wire.GenerateLine)
const decodeEmbed = Decode.valueDecoder(Wire.EmbedAnswer)

/**
 * `OLLAMA_HOST` as the ollama CLI reads it: often without a scheme, which is then `http`, and
 * then without a port too, which is Ollama's 11434 (`0.0.0.0` is `http://0.0.0.0:11434`, a
 * bare IPv6 address is bracketed), or without a host (`:8080` is this machine's port 8080).
 * With a scheme, the scheme's port.
 */
// Anything but a string goes to the URL check as it is, which names `host`.
const hostUrl = (host: string): string => {
  if (typeof host !== "string" || /^[a-z][a-z0-9+.-]*:\/\//i.test(host.trim())) return host
  const bare = host.trim()
  const slash = bare.indexOf("/")
  const authority = slash === -1 ? bare : bare.slice(0, slash)
  const path = slash === -1 ? "" : bare.slice(slash)
  // `user:pass@host` keeps its credentials, for the URL check to refuse them by name (not as an IPv6 address).
  const at = authority.lastIndexOf("@")
  const userinfo = at === -1 ? "" : authority.slice(0, at + 1)
  // A port alone (`:8080`) is this machine's, as the CLI dials it.
  const given = authority.slice(at + 1)
  const hostPort = /^:\d+$/.test(given) ? `127.0.0.1${given}` : given
  const withPort = /^(?:\[[^\]]*\]|[^:]*):\d+$/.test(hostPort)
    ? hostPort
    : hostPort.includes(":") && !hostPort.startsWith("[")
      ? `[${hostPort}]:11434`
      : `${hostPort}:11434`
  return `http://${userinfo}${withPort}${path}`
}

const optionKeys = Http.knownKeys<Options>({
  host: true,
  model: true,
  embeddingModel: true,
  embeddingDimensions: true,
  api: true,
  keepAlive: true,
  apiKey: true,
  name: true,
  headers: true,
  requestLimits: true,
  allowPlainHttpSecrets: true
})

const checkOptions = (options: Options) =>
  Input.all([
    Http.settings(options),
    Http.rootUrl("host", hostUrl(Input.orDefault(options.host, "http://127.0.0.1:11434"))),
    Http.nonEmpty("name", Input.orDefault(options.name, "ollama")),
    Http.nonEmpty("model", Input.orDefault(options.model, "llama3.2")),
    Http.nonEmpty("embeddingModel", Input.orDefault(options.embeddingModel, "nomic-embed-text")),
    Input.oneOf("api", Input.orDefault(options.api, "chat"), ["chat", "generate"]),
    Input.optional(options.keepAlive, (input) => Wire.keepAlive("keepAlive", input)),
    Http.headers("headers", options.headers),
    Http.optionalBearerKey("apiKey", "OLLAMA_API_KEY", options.apiKey),
    // No answer may hold a longer vector: past it, every call would be refused after the round trip.
    Input.optional(options.embeddingDimensions, (d) =>
      Input.positiveInt("embeddingDimensions", d, Decode.maxDimensions)
    ),
    Model.requestLimits(options.requestLimits)
  ])

/**
 * Builds the provider from an `HttpClient` in context. Options are checked here: a bad one
 * fails with an `OptionError` naming it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function* (given: Options = {}) {
  yield* Input.orOptionError(optionKeys(given))
  // Read once: a getter that throws is an OptionError naming its field, not a defect out of the layer.
  const options = (yield* Input.orOptionError(Input.readFields(given))) as Options
  const [settings, host, name, defaultModel, embeddingModel, api, keepAlive, headerSet, , dimensions, limits] =
    yield* Input.orOptionError(checkOptions(options))
  yield* Input.orOptionError(
    Http.ownedHeaders("headers", headerSet.given, options.apiKey === undefined ? [] : [["authorization", "apiKey"]])
  )
  yield* Input.orOptionError(
    Http.plainHttpSecrets(
      host,
      [["apiKey", options.apiKey], ...Http.secretHeaders(headerSet.given)],
      options.allowPlainHttpSecrets
    )
  )
  const client = yield* Client.make(settings, options.transformClient, headerSet.secretNames)
  const apiKey = options.apiKey
  const secrets = apiKey === undefined ? headerSet.secrets : [apiKey, ...headerSet.secrets]

  const post = (path: string, body: unknown, accept: string): HttpClientRequest.HttpClientRequest => {
    const request = HttpClientRequest.post(Http.joinUrl(host, path)).pipe(
      HttpClientRequest.setHeaders(headerSet.values),
      HttpClientRequest.setHeader("accept", accept),
      HttpClientRequest.bodyJsonUnsafe(body)
    )
    return apiKey === undefined ? request : HttpClientRequest.bearerToken(request, apiKey)
  }

  // On /api/chat and /api/generate a 404 with an error body can only mean a model that is not pulled.
  const ctxOf = (model: string): Errors.CallContext => ({ provider: name, model, secrets, notFoundField: "model" })

  const prepare = (request: Model.GenerateRequest, stream: boolean) =>
    Effect.flatMap(Model.validateGenerate(request, limits), (valid) => {
      const model = valid.model ?? defaultModel
      // A tool choice /api/chat refuses goes there to be refused, not to /api/generate to be ignored.
      const choice = valid.toolChoice
      const viaGenerate =
        api === "generate" &&
        valid.prompt !== undefined &&
        (valid.tools === undefined || valid.tools.length === 0) &&
        (choice === undefined || choice === "auto" || choice === "none")
      const body = viaGenerate
        ? Effect.succeed(Wire.generateBody(valid, { model, stream, keepAlive }))
        : Wire.chatBody(valid, { model, stream, keepAlive, provider: name })
      return Effect.map(body, (body) => ({ valid, model, body, viaGenerate, ctx: ctxOf(model) }))
    })

  const generate = Client.operation(
    "Ollama.generate",
    Effect.fnUntraced(function* (request: Model.GenerateRequest) {
      const { valid, model, body, viaGenerate, ctx } = yield* prepare(request, false)
      yield* Effect.annotateCurrentSpan(Client.spanAttributes(name, "chat", model))
      const answer: Wire.Line = viaGenerate
        ? Wire.fromGenerate(yield* client.json(post("api/generate", body, "application/json"), decodeGenerate, ctx))
        : Wire.fromChat(yield* client.json(post("api/chat", body, "application/json"), decodeChat, ctx))
      const toolCalls =
        answer.toolCalls.length === 0 ? answer.toolCalls : Assemble.callIds().give(answer.toolCalls, (i) => i)
      const repeated = Assemble.repeatedId(toolCalls)
      if (repeated !== undefined) return yield* Effect.fail(repeatedIdError(ctx, toolCalls, repeated))
      const response: Model.GenerateResponse = {
        text: answer.text,
        finishReason: finishOf(answer.done_reason, toolCalls.length),
        usage: Wire.usageOf(answer, valid, answer.text.length + Assemble.callChars(toolCalls)),
        provider: name,
        model: Decode.answeredModel(answer.model, model),
        ...(toolCalls.length > 0 ? { toolCalls } : {})
      }
      return response
    })
  )

  const stream = (request: Model.GenerateRequest): Stream.Stream<Model.StreamPart, AiError> =>
    Client.streamOperation(
      "Ollama.stream",
      name,
      Stream.unwrap(
        Effect.map(prepare(request, true), ({ valid, model, body, viaGenerate, ctx }) =>
          Stream.suspend(() => {
            let outputChars = 0
            let toolCalls = 0
            // The ids of the stream's calls so far: made at the first call, as most streams carry none.
            let ids: Map<string, number> | undefined
            let callIds: Assemble.CallIds | undefined
            const step = (payload: unknown): Effect.Effect<ReadonlyArray<Model.StreamPart>, ModelError> => {
              if (Errors.isErrorPayload(payload)) return Effect.fail(Errors.errorFromPayload(payload, ctx))
              const line: Effect.Effect<Wire.Line, ModelError> = viaGenerate
                ? Effect.map(decodeGenerateLine(payload, ctx), Wire.fromGenerate)
                : Effect.map(decodeChatLine(payload, ctx), Wire.fromChat)
              return Effect.flatMap(line, (wire) => {
                const l =
                  wire.toolCalls.length === 0
                    ? wire
                    : {
                        ...wire,
                        toolCalls: (callIds ??= Assemble.callIds()).give(wire.toolCalls, (i) => toolCalls + i)
                      }
                // One line's calls are bounded by its schema; the stream's, which come a line at a time, here.
                if (toolCalls + l.toolCalls.length > Assemble.maxToolCalls) {
                  return Effect.fail(
                    Errors.malformed(ctx, "message.tool_calls", `more than ${Assemble.maxToolCalls} tool calls`)
                  )
                }
                if (l.toolCalls.length > 0) {
                  ids ??= new Map()
                  const repeated = Assemble.repeatedId(l.toolCalls, ids, toolCalls)
                  if (repeated !== undefined) return Effect.fail(repeatedIdError(ctx, l.toolCalls, repeated))
                }
                const parts: Array<Model.StreamPart> = []
                if (l.text.length > 0) {
                  outputChars += l.text.length
                  parts.push({ _tag: "TextDelta", text: l.text })
                }
                for (const call of l.toolCalls) parts.push({ _tag: "ToolCall", call })
                toolCalls += l.toolCalls.length
                if (l.toolCalls.length > 0) outputChars += Assemble.callChars(l.toolCalls)
                if (l.done) {
                  parts.push({
                    _tag: "Finish",
                    finishReason: finishOf(l.done_reason, toolCalls),
                    usage: Wire.usageOf(l, valid, outputChars),
                    provider: name,
                    model: Decode.answeredModel(l.model, model)
                  })
                }
                return Effect.succeed(parts)
              })
            }
            const path = viaGenerate ? "api/generate" : "api/chat"
            return Assemble.assemble(client.ndjson(post(path, body, "application/x-ndjson"), ctx), {
              ctx,
              idleTimeout: settings.streamIdleTimeout,
              step,
              // The last line says `done: true`; a body that ends before it broke off.
              onEnd: () => Effect.succeed([])
            })
          })
        )
      )
    )

  const embed = Client.operation(
    "Ollama.embed",
    Effect.fnUntraced(function* (request: Model.EmbedRequest) {
      const valid = yield* Model.validateEmbed(request, limits)
      const model = valid.model ?? embeddingModel
      yield* Effect.annotateCurrentSpan(Client.spanAttributes(name, "embeddings", model))
      const ctx = ctxOf(model)
      const batches: Array<ReadonlyArray<string>> = []
      for (let i = 0; i < valid.texts.length; i += EMBED_BATCH) batches.push(valid.texts.slice(i, i + EMBED_BATCH))
      const answers = yield* Effect.forEach(batches, (texts) => {
        const body = {
          model,
          input: texts,
          ...(keepAlive === undefined ? {} : { keep_alive: keepAlive }),
          ...(dimensions === undefined ? {} : { dimensions })
        }
        return Effect.flatMap(client.json(post("api/embed", body, "application/json"), decodeEmbed, ctx), (answer) =>
          answer.embeddings.length === texts.length
            ? Effect.succeed(answer)
            : Effect.fail(
                Errors.malformed(
                  ctx,
                  "embeddings",
                  `expected ${texts.length} embeddings, got ${answer.embeddings.length}`
                )
              )
        )
      }).pipe(
        // Each batch is bounded by the client; `timeout` bounds the call as a whole too.
        Effect.timeoutOrElse({
          duration: settings.timeout,
          orElse: () => Effect.fail(Errors.requestTimeout(ctx, settings.timeout))
        })
      )
      const vectors = answers.length === 1 ? answers[0]!.embeddings : answers.flatMap((a) => a.embeddings)
      const uneven = Errors.unevenVectors(vectors, ctx, "embeddings", EMBED_BATCH)
      if (uneven !== undefined) return yield* Effect.fail(uneven)
      // All of one length now: a server that ignored `dimensions` shows in the first.
      const unasked = Errors.unaskedDimensions(ctx, "embeddings[0]", vectors[0]!.length, dimensions)
      if (unasked !== undefined) return yield* Effect.fail(unasked)
      let inputTokens: number | undefined = 0
      for (const answer of answers) {
        const counted = Decode.tokenCount(answer.prompt_eval_count)
        inputTokens = counted === undefined || inputTokens === undefined ? undefined : inputTokens + counted
      }
      const response: Model.EmbedResponse = {
        vectors,
        usage: inputTokens === undefined ? undefined : Model.usage(inputTokens, 0),
        provider: name,
        model: Decode.answeredModel(answers[0]!.model, model)
      }
      return response
    })
  )

  return { name, defaultModel, generate, stream, embed } satisfies Model.Service
})

// A tool message names its call by id: two calls of one id could not both be answered.
const repeatedIdError = (
  ctx: Errors.CallContext,
  calls: ReadonlyArray<Model.ToolCall>,
  [at, first]: readonly [number, number]
) =>
  Errors.malformed(
    ctx,
    `message.tool_calls[${at}].id`,
    `the id "${calls[at]!.id}" is given twice (first at the answer's call ${first})`
  )

/** Ollama says `stop` when the model called tools. */
const finishOf = (reason: string | null | undefined, toolCalls: number): Model.FinishReason =>
  Assemble.withToolCalls(finishReasonOf(reason), toolCalls)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<Model.ModelProvider, Input.OptionError, HttpClient.HttpClient> =>
  Layer.effect(Model.ModelProvider)(make(options))

/**
 * Options from `Config`: `OLLAMA_HOST` (a URL, the scheme may be left out; default
 * `http://127.0.0.1:11434`), `OLLAMA_MODEL`, `OLLAMA_EMBEDDING_MODEL`, `OLLAMA_API_KEY`
 * (optional).
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  host: Http.optionalString("OLLAMA_HOST"),
  model: Http.optionalString("OLLAMA_MODEL"),
  embeddingModel: Http.optionalString("OLLAMA_EMBEDDING_MODEL"),
  apiKey: Http.optionalRedacted("OLLAMA_API_KEY")
})

/**
 * The provider with options from `Config`. Without arguments it reads {@link config}; when
 * options are given, only what they name is read (no key is picked up implicitly).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Wrap<Options> = config
): Layer.Layer<Model.ModelProvider, Config.ConfigError | Input.OptionError, HttpClient.HttpClient> =>
  Layer.unwrap(Effect.map(Config.unwrap(options), layer))
