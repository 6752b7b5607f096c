/**
 * Discovery against an HTTP registry (`Discovery.layerHttp`): the lookup is a bounded
 * `GET <url>?concept=...&intent=...` whose answer is decoded (a 404: no agent), behind
 * the breaker, deadline and cache of `lookup.ts`.
 *
 * @internal
 */
import { Effect, Result, Schema } from "effect"
import { HttpClientRequest, UrlParams } from "effect/http"
import type { Endpoint, HttpOptions, Query } from "../Discovery.js"
import * as Input from "../Input.js"
import { querySecrets } from "../agent/define.js"
import * as Client from "../Model/http/client.js"
import * as Decode from "../Model/http/decode.js"
import * as Http from "../Model/http/options.js"
import { httpKeys, optionsIssue } from "./checks.js"
import * as Lookup from "./lookup.js"

/** Every query parameter name (`UrlParams.CurrentRedactedNames`). */
const everyName: ReadonlyArray<RegExp> = [/^/]

const Answer = Schema.Struct({
  agents: Schema.Array(
    Schema.Struct({
      url: Schema.String,
      name: Schema.optional(Schema.String),
      timeout: Schema.optional(Schema.Union([Schema.Number, Schema.String]))
    })
  )
})

/** @internal */
export const make = Effect.fnUntraced(function* (options: HttpOptions) {
  if (typeof options !== "object" || options === null) {
    return yield* Input.orOptionError(Result.fail({ path: "options", message: "expected { url }" }))
  }
  const wrong = optionsIssue(options, httpKeys)
  if (wrong !== undefined) return yield* Input.orOptionError(Result.fail(wrong))
  // Checked as a base URL is, but asked as given: a base URL loses its trailing slash (paths are
  // appended to it), and `/discover/` is another route than `/discover` to many servers.
  yield* Input.orOptionError(Http.baseUrl("url", options.url, "the registry is asked without credentials"))
  const url = options.url.trim()
  const [timeout, maxResponseBytes] = yield* Input.orOptionError(
    Input.all([
      Input.duration("timeout", Input.orDefault(options.timeout, "5 seconds")),
      Input.positiveInt("maxResponseBytes", Input.orDefault(options.maxResponseBytes, 1024 * 1024))
    ])
  )
  const name = Input.orDefault(options.name, "discovery")
  const client = yield* Client.make({
    timeout,
    streamIdleTimeout: timeout,
    maxResponseBytes,
    maxEventBytes: maxResponseBytes
  })
  const decode = Decode.valueDecoder(Answer)
  // A registry takes no header: a token it needs is in the URL's query, which is a secret as an
  // agent URL's is (scrubbed from errors, every query value redacted in spans).
  const ctx = { provider: name, secrets: querySecrets(url) }
  const hasQuery = /\?[^#]/.test(url)
  const lookup = (query: Query) => {
    const exchange = client.json(
      HttpClientRequest.get(url).pipe(
        HttpClientRequest.setUrlParams({ concept: query.concept, intent: query.intent }),
        HttpClientRequest.acceptJson
      ),
      decode,
      ctx
    )
    return (hasQuery ? Effect.provideService(exchange, UrlParams.CurrentRedactedNames, everyName) : exchange).pipe(
      // Each endpoint is checked by `Lookup.make` (a bad duration is an invalid answer).
      Effect.map((answer): ReadonlyArray<Endpoint> => answer.agents as ReadonlyArray<Endpoint>),
      Effect.catchIf(
        (error) => error._tag === "ModelError" && error.status === 404,
        () => Effect.succeed<ReadonlyArray<Endpoint>>([])
      )
    )
  }
  const { url: _url, maxResponseBytes: _max, ...rest } = options
  return yield* Lookup.make(lookup, rest)
})
