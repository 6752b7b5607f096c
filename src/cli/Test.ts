/**
 * `orchestra test --prompt "..." [--domain support] [--fallback a,b]`: one call, the answer,
 * its latency and where it came from.
 *
 * @since 0.1.0
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { Clock, Console, Effect, Either, Option } from "effect"
import type { AiError } from "../AiError.js"
import { Executor } from "../Executor.js"
import type { GenerateRequest } from "../Model.js"
import { type Answer, Router } from "../Router.js"
import {
  type Common,
  config,
  errorJson,
  errorText,
  ExitCode,
  exitCodes,
  checkDomains,
  formatMs,
  json,
  loadConfig,
  provideOrchestra,
  splitList
} from "./Common.js"

const options = {
  prompt: Options.text("prompt").pipe(Options.withAlias("p"), Options.withDescription("The prompt to send")),
  domain: Options.text("domain").pipe(
    Options.withAlias("d"),
    Options.withDescription("Domain to call (default: the default provider, no domain policy)"),
    Options.optional
  ),
  fallback: Options.text("fallback").pipe(
    Options.withDescription("Comma-separated domains tried in order when the call fails in a way that falls back"),
    Options.optional
  ),
  maxTokens: Options.integer("max-tokens").pipe(Options.withDescription("Most tokens to generate"), Options.optional),
  json,
  config
}

/**
 * What `test --json` prints.
 *
 * @since 0.1.0
 * @category models
 */
export interface TestOutput {
  readonly ok: boolean
  readonly prompt: string
  readonly answer?: string | undefined
  readonly latencyMs: number
  readonly domain: string | null
  readonly provider?: string | undefined
  readonly model?: string | undefined
  /** Domains tried, the answering one included. */
  readonly attempts?: number | undefined
  /** Retries of the same domain (across all attempts). */
  readonly retries: number
  readonly fallbackUsed?: boolean | undefined
  readonly source?: string | undefined
  readonly finishReason?: string | undefined
  readonly usage?: unknown
  readonly error?: Record<string, unknown> | undefined
}

const report = (common: Common, out: TestOutput, failure: AiError | undefined): Effect.Effect<void, ExitCode> => {
  if (common.json) {
    return Effect.zipRight(
      Console.log(JSON.stringify(out, null, 2)),
      out.ok ? Effect.void : Effect.fail(new ExitCode({ code: exitCodes.failed }))
    )
  }
  if (failure !== undefined) {
    return Effect.zipRight(
      Console.error(`orchestra: the call failed after ${formatMs(out.latencyMs)}: ${errorText(failure)}`),
      Effect.fail(new ExitCode({ code: exitCodes.failed }))
    )
  }
  const rows: Array<readonly [string, string]> = [
    ["latency", formatMs(out.latencyMs)],
    ["domain", out.domain ?? "(none: default provider)"],
    ["provider", `${out.provider} (model ${out.model})`],
    [
      "attempts",
      `${out.attempts} domain${out.attempts === 1 ? "" : "s"}, ${out.retries} retr${out.retries === 1 ? "y" : "ies"}`
    ],
    ["fallback", out.fallbackUsed === true ? "used" : "not used"],
    ["source", out.source ?? "provider"],
    ["finish", String(out.finishReason)]
  ]
  return Console.log([(out.answer ?? "").trim(), "", ...rows.map(([k, v]) => `${k.padEnd(9)} ${v}`)].join("\n"))
}

/**
 * One call: on the default provider (no domain), one domain, or a fallback chain.
 *
 * @since 0.1.0
 * @category utils
 */
export const callChain = (
  router: Router["Type"],
  executor: Executor["Type"],
  request: GenerateRequest,
  chain: ReadonlyArray<string>,
  onRetry: () => Effect.Effect<void>
): Effect.Effect<Answer, AiError> =>
  chain.length === 0
    ? Effect.map(
        executor.execute(request, { retry: true, onRetry }),
        (response): Answer => ({
          response,
          domain: "",
          provider: response.provider,
          attempts: 1,
          fallbackUsed: false,
          source: "provider"
        })
      )
    : chain.length === 1
      ? router.execute(request, chain[0]!, { onRetry })
      : router.executeWithFallback(request, chain, { onRetry })

/**
 * @since 0.1.0
 * @category commands
 */
export const command = Command.make("test", options, (args) => {
  const common: Common = { json: args.json, config: args.config }
  const chain = [
    ...Option.toArray(args.domain),
    ...Option.match(args.fallback, { onNone: () => [], onSome: splitList })
  ]
  const program = Effect.gen(function* () {
    const router = yield* Router
    const executor = yield* Executor
    const request: GenerateRequest = {
      prompt: args.prompt,
      ...Option.match(args.maxTokens, { onNone: () => ({}), onSome: (maxTokens) => ({ maxTokens }) })
    }
    let retries = 0
    const call = callChain(router, executor, request, chain, () => Effect.sync(() => void retries++))
    const start = yield* Clock.currentTimeMillis
    const result = yield* Effect.either(call)
    const latencyMs = (yield* Clock.currentTimeMillis) - start
    const out: TestOutput = Either.match(result, {
      onLeft: (error) => ({
        ok: false,
        prompt: args.prompt,
        latencyMs,
        domain: chain[0] ?? null,
        retries,
        error: errorJson(error)
      }),
      onRight: (answer) => ({
        ok: true,
        prompt: args.prompt,
        answer: answer.response.text,
        latencyMs,
        domain: chain.length === 0 ? null : answer.domain,
        provider: answer.provider,
        model: answer.response.model,
        attempts: answer.attempts,
        retries,
        fallbackUsed: answer.fallbackUsed,
        source: answer.source,
        finishReason: answer.response.finishReason,
        usage: answer.response.usage
      })
    })
    yield* report(common, out, Either.getLeft(result).pipe(Option.getOrUndefined))
  })
  return Effect.gen(function* () {
    const loaded = yield* loadConfig(common)
    yield* checkDomains(common, loaded, chain)
    yield* program.pipe(provideOrchestra(common, loaded))
  })
}).pipe(Command.withDescription("Send one prompt and print the answer, its latency and provenance"))
