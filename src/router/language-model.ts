/**
 * The router as an `effect/ai` `LanguageModel`: a generate call on one domain runs as
 * `execute` (the domain's own fallback chain included), on a chain as
 * `executeWithFallback`, and answers with the response; a stream runs as `stream`.
 *
 * @internal
 */
import { Effect, type Layer } from "effect"
import type { LanguageModel, Model as AiModel } from "effect/ai"
import type { OptionError } from "../Input.js"
import * as EffectAi from "../Model/EffectAi.js"
import type { CallOptions, Service, StreamOptions } from "../Router.js"

/** `Router.layerLanguageModel`'s options. */
export type Options = EffectAi.LanguageModelOptions & {
  readonly call?: CallOptions | undefined
  readonly stream?: StreamOptions | undefined
}

/** The `LanguageModel` layer over a router; `domains` checked, an array copied (`Router.layerLanguageModel`). */
export const languageModelLayer = (
  router: Service,
  domains: string | ReadonlyArray<string>,
  options: Options
): Layer.Layer<LanguageModel.LanguageModel | AiModel.ProviderName, OptionError> => {
  return EffectAi.layerLanguageModel(
    {
      generate: (request) =>
        Effect.map(
          typeof domains === "string"
            ? router.execute(request, domains, options.call)
            : router.executeWithFallback(request, domains, options.call),
          (answer) => answer.response
        ),
      stream: (request) => router.stream(request, domains, options.stream)
    },
    {
      name: options.name ?? (typeof domains === "string" ? domains : domains.join(",")),
      settings: options.settings,
      requestLimits: options.requestLimits,
      limits: options.limits
    }
  )
}
